# tunnel-agent: build, test and demo. `make help` lists the targets.

CARGO ?= cargo

.PHONY: help build release test test-notls test-packaging lint fmt demo capacity fuzz soak bench bench-peers bench-latency bench-tls-arm install yocto-crates \
	static cross cross-all cross-setup size test-cross clean

help:
	@echo "make build    debug build of tunnel-agent and meeting-proxy"
	@echo "make release  optimised build (target/release)"
	@echo "make test     the whole suite: unit, end-to-end, real sshd, TLS, a build without TLS"
	@echo "make test-packaging  the Buildroot package and the Yocto layer with Buildroot and BitBake"
	@echo "make lint     cargo fmt --check and clippy -D warnings"
	@echo "make demo     build, then show a real tunnel working on loopback"
	@echo "make capacity meeting-proxy with 1 000 devices and 5 000 public connections: cost of each"
	@echo "make fuzz     cargo-fuzz on the frame decoder and the reply classifier (FUZZ_TIME=60 s each)"
	@echo "make soak     mixed traffic with proxy restarts, every byte checked (DURATION=30m)"
	@echo "make install  binary, init script, systemd unit, example config (DESTDIR=, PREFIX=/usr/local, SYSCONFDIR=/etc)"
	@echo "make install TARGET=armv7-unknown-linux-musleabihf DESTDIR=/mnt/root PREFIX=/usr"
	@echo "              the same with that cross build (built first if needed; FEATURES=--no-default-features: no TLS)"
	@echo "make yocto-crates  regenerate the Yocto crates include from Cargo.lock"
	@echo "make static   fully static x86_64 musl binary"
	@echo "make cross TARGET=aarch64-unknown-linux-musl|armv7-unknown-linux-musleabihf"
	@echo "make cross-all    every target; make size: their stripped sizes, with and without TLS"
	@echo "make test-cross   the cross binaries under qemu-user: --version and a real tunnel"
	@echo "make bench    throughput, CPU/GB, latency, memory vs direct, a socat relay hop and peers"
	@echo "make bench-peers   install rathole and bore (cargo install) so make bench measures them"
	@echo "make bench-latency only the 1-byte round trips (direct, relay hop, agent), nothing written"
	@echo "make bench-tls-arm TLS suites on armv7 under qemu, with and without AES instructions"
	@echo "make clean    remove build output"

build:
	$(CARGO) build --locked --bins

release:
	$(CARGO) build --locked --release --bins

test:
	$(CARGO) test --locked
	$(MAKE) test-notls

# A build without the tls feature, checked for what it does when TLS is asked for.
test-notls:
	$(CARGO) build --locked --no-default-features --bins --target-dir target/notls
	tests/notls.sh target/notls/debug

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

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) clippy --locked --no-default-features --lib --bins --target-dir target/notls -- -D warnings

fmt:
	$(CARGO) fmt

demo:
	$(CARGO) build --locked --release --bins --example demo
	./target/release/examples/demo

# meeting-proxy with 1 000 devices and 5 000 public connections (DEVICES=, PUBLIC=):
# memory, threads and descriptors per device and per connection, into bench/CAPACITY.md.
capacity:
	$(CARGO) build --locked --release --bins --example capacity
	./target/release/examples/capacity

FUZZ_TIME ?= 60
FUZZ_TARGETS = frame_decoder handshake_reply

# Needs the nightly toolchain; installs cargo-fuzz when missing.
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	for t in $(FUZZ_TARGETS); do \
	  $(CARGO) +nightly fuzz run $$t -- -max_total_time=$(FUZZ_TIME) || exit 1; \
	done

DURATION ?= 30m

# Installs iperf3 and socat when missing; writes bench/RESULTS.md.
bench:
	@command -v iperf3 >/dev/null && command -v socat >/dev/null || { \
	  $(AS_ROOT) apt-get update -qq && \
	  $(AS_ROOT) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 socat; }
	$(MAKE) static
	$(CARGO) build --locked --release --bins --example bench
	AGENT_BIN=$(CURDIR)/target/cross/x86_64-unknown-linux-musl/release/tunnel-agent ./target/release/examples/bench

# rathole's own lockfile pins a `time` that no longer builds with current rustc, hence no
# --locked for it; only its plain-TCP client and server are needed.
bench-peers:
	command -v bore >/dev/null || $(CARGO) install --locked bore-cli
	command -v rathole >/dev/null || $(CARGO) install rathole --no-default-features --features server,client

# TLS 1.3 suites encrypting in memory (examples/tls_suites.rs) on armv7 under qemu: a CPU
# without AES instructions (cortex-a7, like a Raspberry Pi 3's BCM2837) and one with them (max),
# then this machine. Emulated figures: the ChaCha20/AES ratio is what carries over.
bench-tls-arm:
	$(MAKE) cross-setup TARGET=armv7-unknown-linux-musleabihf
	@command -v qemu-arm >/dev/null || $(AS_ROOT) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user
	env $(ENV_armv7-unknown-linux-musleabihf) $(CARGO) +nightly build --locked --release \
	  --example tls_suites --target armv7-unknown-linux-musleabihf \
	  $(BUILD_STD_armv7-unknown-linux-musleabihf) --target-dir target/cross
	@echo "armv7, qemu-arm -cpu cortex-a7 (no AES instructions):"
	@qemu-arm -cpu cortex-a7 target/cross/armv7-unknown-linux-musleabihf/release/examples/tls_suites
	@echo "armv7, qemu-arm -cpu max (AES instructions):"
	@qemu-arm -cpu max target/cross/armv7-unknown-linux-musleabihf/release/examples/tls_suites
	@echo "this machine, native:"
	@$(CARGO) run --locked --release -q --example tls_suites

bench-latency:
	$(CARGO) build --locked --release --bins --example bench
	BENCH_ONLY=latency ./target/release/examples/bench

soak:
	$(CARGO) build --locked --release --bins --example soak
	DURATION=$(DURATION) ./target/release/examples/soak

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
	sed 's|/usr/bin/tunnel-agent|$(BINDIR)/tunnel-agent|' $(PKG)/tunnel-agent.service \
	  > $(DESTDIR)$(SYSTEMD_UNIT_DIR)/tunnel-agent.service
	chmod 0644 $(DESTDIR)$(SYSTEMD_UNIT_DIR)/tunnel-agent.service
	install -m 0600 $(PKG)/config.json.example $(DESTDIR)$(SYSCONFDIR)/tunnel-agent/config.json.example

# One implementation: the test that checks the include is in sync also writes it.
yocto-crates:
	YOCTO_CRATES_WRITE=1 $(CARGO) test --locked --test images yocto_crates -- --nocapture

# ---- Static and cross builds -------------------------------------------------------------
# Each target: how to get its toolchain, its compiler for ring's C code, its linker.
CROSS_TARGETS = x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf
TARGET ?= aarch64-unknown-linux-musl
# Extra cargo flags, e.g. FEATURES=--no-default-features for a build without TLS.
FEATURES ?=
CROSS_DIR = target/cross$(if $(FEATURES),-notls)
UNWIND_DIR = $(CURDIR)/target/armv7-unwind

# x86_64: Rust ships musl's C runtime; ring's C is compiled with musl-gcc (musl-tools).
APT_x86_64-unknown-linux-musl = musl-tools
CC_x86_64-unknown-linux-musl = musl-gcc
ENV_x86_64-unknown-linux-musl = CC_x86_64_unknown_linux_musl=musl-gcc

# aarch64 (Pi 3/4/5 on 64-bit OS): Debian's gnu cross gcc compiles and links; std is prebuilt.
APT_aarch64-unknown-linux-musl = gcc-aarch64-linux-gnu libc6-dev-arm64-cross
CC_aarch64-unknown-linux-musl = aarch64-linux-gnu-gcc
ENV_aarch64-unknown-linux-musl = CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc

# armv7 (Pi 2/3/4 on 32-bit Raspberry Pi OS): no prebuilt std can be downloaded here, so
# nightly builds std (-Zbuild-std) against Debian's musl for armhf, linked by its
# arm-linux-musleabihf-gcc wrapper, with the cross gcc's libgcc_eh.a standing in for libunwind.
# std is built without its default "backtrace" feature (-Zbuild-std-features= empty): with
# panic = "abort" a backtrace is never printed usefully on a device, and its symbolizer
# (gimli, addr2line, zlib) weighed 161 KB of the armv7 binary. A panic still prints its message
# and file:line. Measured with the SSH key work in (TLS build): 1 526 376 bytes with the
# backtrace, 1 406 180 without, against a 1.5 MB budget; -Zlocation-detail=none would take
# another 41 KB off, at the price of the panic's file:line, so it is no longer used.
APT_armv7-unknown-linux-musleabihf = gcc-arm-linux-gnueabihf libc6-dev-armhf-cross musl-dev:armhf
CC_armv7-unknown-linux-musleabihf = arm-linux-musleabihf-gcc
ENV_armv7-unknown-linux-musleabihf = CC_armv7_unknown_linux_musleabihf=arm-linux-musleabihf-gcc \
	CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_LINKER=arm-linux-musleabihf-gcc \
	CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_RUSTFLAGS="-C link-self-contained=no -L $(UNWIND_DIR)"
TOOLCHAIN_armv7-unknown-linux-musleabihf = +nightly
BUILD_STD_armv7-unknown-linux-musleabihf = -Zbuild-std=std,panic_abort -Zbuild-std-features=

AS_ROOT = $(if $(filter 0,$(shell id -u)),,sudo)

# Installs what TARGET needs when it is missing: rustup target or rust-src, Debian packages.
cross-setup:
	@case "$(TARGET)" in \
	  armv7-unknown-linux-musleabihf) \
	    rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal; \
	    rustup component list --toolchain nightly --installed | grep -q '^rust-src' \
	      || rustup component add rust-src --toolchain nightly;; \
	  *) rustup target list --installed | grep -qx '$(TARGET)' || rustup target add $(TARGET);; \
	esac
	@# Every package, not only the compiler: a gcc installed without its recommended C library
	@# headers (seen here: --no-install-recommends) fails in ring's C code.
	@command -v $(CC_$(TARGET)) >/dev/null && dpkg -s $(APT_$(TARGET)) >/dev/null 2>&1 || { \
	  case "$(TARGET)" in armv7-*) $(AS_ROOT) dpkg --add-architecture armhf;; esac; \
	  $(AS_ROOT) apt-get update -qq || echo "apt-get update failed in part (mirror sync?); installing from the lists there are"; \
	  $(AS_ROOT) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_$(TARGET)); }
	@case "$(TARGET)" in armv7-*) mkdir -p $(UNWIND_DIR) && \
	  ln -sf "$$(arm-linux-gnueabihf-gcc -print-file-name=libgcc_eh.a)" $(UNWIND_DIR)/libunwind.a;; esac

cross: cross-setup
	env $(ENV_$(TARGET)) $(CARGO) $(TOOLCHAIN_$(TARGET)) build --locked --release \
	  --bin tunnel-agent --target $(TARGET) $(BUILD_STD_$(TARGET)) $(FEATURES) --target-dir $(CROSS_DIR)
	@ls -l $(CROSS_DIR)/$(TARGET)/release/tunnel-agent

static:
	$(MAKE) cross TARGET=x86_64-unknown-linux-musl

cross-all:
	for t in $(CROSS_TARGETS); do $(MAKE) cross TARGET=$$t || exit 1; done

# Stripped sizes (the release profile strips) of every target, with and without TLS.
size:
	@for t in $(CROSS_TARGETS); do \
	  $(MAKE) -s cross TARGET=$$t >/dev/null 2>&1 || { echo "$$t: build failed"; continue; }; \
	  $(MAKE) -s cross TARGET=$$t FEATURES=--no-default-features >/dev/null 2>&1 || { echo "$$t: build without TLS failed"; continue; }; \
	  printf '%-34s with TLS %8d bytes   without TLS %8d bytes\n' $$t \
	    $$(stat -c %s target/cross/$$t/release/tunnel-agent) \
	    $$(stat -c %s target/cross-notls/$$t/release/tunnel-agent); \
	done

# The aarch64 and armv7 agents under qemu-user. A toolchain piece that cannot be installed is
# a loud SKIPPED line for that target; a build or test failure fails.
CROSS_TEST_TARGETS = aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf

test-cross:
	@command -v qemu-aarch64 >/dev/null && command -v qemu-arm >/dev/null || { \
	  { $(AS_ROOT) apt-get update -qq || echo "apt-get update failed in part; installing from the lists there are"; } && \
	  $(AS_ROOT) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user; } \
	  || echo "SKIPPED: test-cross for every target because qemu-user cannot be installed"
	@for t in $(CROSS_TEST_TARGETS); do \
	  if ! $(MAKE) -s cross-setup TARGET=$$t; then \
	    echo "SKIPPED: test-cross $$t because its toolchain cannot be installed here"; continue; fi; \
	  $(MAKE) cross TARGET=$$t || exit 1; \
	  CROSS_TARGET=$$t CROSS_AGENT=$(CURDIR)/target/cross/$$t/release/tunnel-agent \
	    $(CARGO) test --locked --test cross -- --ignored || exit 1; \
	done

clean:
	$(CARGO) clean
