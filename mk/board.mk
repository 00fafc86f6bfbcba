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
