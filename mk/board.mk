# The emulated boards (tests/board.rs): images laid out as Buildroot BusyBox images from Debian's
# packages (tests/board/mkimage.sh), booted under qemu-system-arm / qemu-system-aarch64 -M virt
# inside a network namespace each test makes. Installs what it needs (qemu-system-arm, cpio,
# kmod's depmod, qemu-user for the board's busybox, the armhf and arm64 package lists).
BOARD_DIR = target/board
BOARD_TOOLS = qemu-system-arm:qemu-system-arm cpio:cpio depmod:kmod qemu-aarch64:qemu-user \
  ssh:openssh-client ip:iproute2

test-image:
	@missing=""; for t in $(BOARD_TOOLS); do command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; done; \
	for a in armhf arm64; do dpkg --print-foreign-architectures | grep -qx $$a || { $(AS_ROOT) dpkg --add-architecture $$a; update=1; }; done; \
	apt-cache show linux-image-arm64:arm64 >/dev/null 2>&1 && apt-cache show linux-image-armmp:armhf >/dev/null 2>&1 || update=1; \
	if [ -n "$$missing$$update" ]; then $(AS_ROOT) apt-get update -qq || true; fi; \
	if [ -n "$$missing" ]; then $(AS_ROOT) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi
	$(MAKE) cross TARGET=armv7-unknown-linux-musleabihf
	$(MAKE) cross TARGET=aarch64-unknown-linux-musl
	tests/board/mkimage.sh armhf $(CROSS_DIR)/armv7-unknown-linux-musleabihf/release/tunnel-agent $(BOARD_DIR)/armhf
	tests/board/mkimage.sh arm64 $(CROSS_DIR)/aarch64-unknown-linux-musl/release/tunnel-agent $(BOARD_DIR)/arm64
	$(CARGO) test --locked --test board -- --ignored --test-threads 2

# Dropbear as Buildroot builds it (package/dropbear/dropbear.mk with its defaults:
# BR2_PACKAGE_DROPBEAR_SMALL, reverse DNS on, no PAM, no legacy crypto), for the login tests of
# tests/dropbear.rs next to Debian's dropbear-bin. Buildroot 2026.02.3 takes 2026.91 from
# matt.ucc.asn.au, which this machine cannot reach; the newest upstream release Debian's archive
# carries (its orig tarball, checked by sha256) stands in, built the same way for the host.
DROPBEAR_BR_VERSION = 2025.89
DROPBEAR_BR_SHA256 = 0d1f7ca711cfc336dc8a85e672cab9cfd8223a02fe2da0a4a7aeb58c9e113634
DROPBEAR_BR_DIR = target/dropbear-buildroot

dropbear-buildroot: $(DROPBEAR_BR_DIR)/dropbear

$(DROPBEAR_BR_DIR)/dropbear:
	rm -rf $(DROPBEAR_BR_DIR) && mkdir -p $(DROPBEAR_BR_DIR)/src
	curl -fsSL -o $(DROPBEAR_BR_DIR)/dropbear.tar.bz2 \
	  http://deb.debian.org/debian/pool/main/d/dropbear/dropbear_$(DROPBEAR_BR_VERSION).orig.tar.bz2
	echo "$(DROPBEAR_BR_SHA256)  $(DROPBEAR_BR_DIR)/dropbear.tar.bz2" | sha256sum -c --quiet
	tar -xjf $(DROPBEAR_BR_DIR)/dropbear.tar.bz2 -C $(DROPBEAR_BR_DIR)/src --strip-components=1
	cd $(DROPBEAR_BR_DIR)/src && \
	  printf '%s\n' '#if !HAVE_CRYPT' '#define DROPBEAR_SVR_PASSWORD_AUTH 0' '#endif' \
	    '#define DO_HOST_LOOKUP 1' '#define DEFAULT_PATH "/bin:/sbin:/usr/bin:/usr/sbin"' >> localoptions.h && \
	  ./configure -q --disable-harden --disable-zlib --enable-bundled-libtom >/dev/null && \
	  $(MAKE) -s MULTI=1 SCPPROGRESS=1 PROGRAMS="dropbear dropbearkey dropbearconvert scp" >/dev/null
	cp $(DROPBEAR_BR_DIR)/src/dropbearmulti $(DROPBEAR_BR_DIR)/
	ln -sf dropbearmulti $(DROPBEAR_BR_DIR)/dropbearkey
	ln -sf dropbearmulti $(DROPBEAR_BR_DIR)/dropbear
