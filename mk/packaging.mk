# Packaging: make install, the Buildroot package and the Yocto layer checked with the real tools.

# The packaging with the real tools (tests/packaging-tools.sh; sources from BUILDROOT_SRC,
# OE_CORE_SRC + BITBAKE_SRC, else ../shared/upstream, else clones). It installs the Debian
# packages and the UTF-8 locale they need and creates the unprivileged user BitBake runs as.
# - Buildroot 2026.02.3: check-package (0 warnings); a Pi 4 defconfig with the package, TLS on
#   then off, through olddefconfig, asserting .config; printvars; show-depends. Then the
#   package's own steps: `make tunnel-agent-source` (git archive, cargo vendoring: the only step
#   with network) and `make tunnel-agent` in a network namespace with no network, TLS on and
#   off, each binary within 5 % of `make cross` and run under qemu. Buildroot's host Rust, host
#   tar and toolchain come from the internet, so rustup's Rust, Debian's tar and Debian's
#   aarch64 cross gcc stand in for them (marked built; the script says which).
# - BitBake with oe-core scarthgap (BitBake 2.8) and wrynose (2.18): `bitbake -p` with 0 errors
#   and 0 warnings, the recipe's PACKAGECONFIG and cargo flags read through tinfoil, then
#   `bitbake tunnel-agent -c unpack`: fetch (crates from a DL_DIR seeded by `cargo fetch`, each
#   checked against the recipe's sha256) and unpack. It stops there: do_configure needs the
#   recipe sysroot, about 640 tasks that build quilt, gcc, glibc and Rust from sources on the
#   internet. BITBAKE_TASK=configure (or compile) goes further on a machine with internet.
test-packaging:
	tests/packaging-tools.sh

PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
BINDIR = $(PREFIX)/bin
SYSTEMD_UNIT_DIR ?= $(PREFIX)/lib/systemd/system
PKG = buildroot/package/tunnel-agent
# The binary to install: the host build, or with TARGET=<triple> that cross build (made first
# if needed, FEATURES=--no-default-features for the one without TLS), e.g.
#   make install TARGET=armv7-unknown-linux-musleabihf DESTDIR=/mnt/sdcard PREFIX=/usr
# INSTALL_BIN=path installs a binary built elsewhere.
ifneq ($(filter command line environment,$(origin TARGET)),)
INSTALL_BIN ?= target/cross$(if $(FEATURES),-notls)/$(TARGET)/release/tunnel-agent
INSTALL_DEP = cross
else
INSTALL_BIN ?= target/release/tunnel-agent
INSTALL_DEP = release
endif

install: $(if $(filter file,$(origin INSTALL_BIN)),$(INSTALL_DEP))
	install -D -m 0755 $(INSTALL_BIN) $(DESTDIR)$(BINDIR)/tunnel-agent
	install -d $(DESTDIR)$(SYSCONFDIR)/init.d $(DESTDIR)$(SYSCONFDIR)/tunnel-agent $(DESTDIR)$(SYSTEMD_UNIT_DIR)
	sed -e 's|/usr/bin/|$(BINDIR)/|g' -e 's|/etc/default/|$(SYSCONFDIR)/default/|g' \
	  $(PKG)/S95tunnel-agent > $(DESTDIR)$(SYSCONFDIR)/init.d/S95tunnel-agent
	chmod 0755 $(DESTDIR)$(SYSCONFDIR)/init.d/S95tunnel-agent
	for u in tunnel-agent.service tunnel-agent-keys.service tunnel-agent-keys.timer; do \
	  sed 's|/usr/bin/tunnel-agent|$(BINDIR)/tunnel-agent|' $(PKG)/$$u > $(DESTDIR)$(SYSTEMD_UNIT_DIR)/$$u && \
	  chmod 0644 $(DESTDIR)$(SYSTEMD_UNIT_DIR)/$$u || exit 1; \
	done
	install -m 0600 $(PKG)/config.json.example $(DESTDIR)$(SYSCONFDIR)/tunnel-agent/config.json.example

# One implementation: the test that checks the include is in sync also writes it.
yocto-crates:
	YOCTO_CRATES_WRITE=1 $(CARGO) test --locked --test images yocto_crates -- --nocapture
