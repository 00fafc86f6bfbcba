# Static and cross builds: each target's toolchain, installed when missing, and the builds.

# Each target: how to get its toolchain, its compiler for ring's C code, its linker.
CROSS_TARGETS = x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf \
	arm-unknown-linux-musleabi
TARGET ?= aarch64-unknown-linux-musl
# Extra cargo flags, e.g. FEATURES=--no-default-features for a build without TLS.
FEATURES ?=
CROSS_DIR = target/cross$(if $(FEATURES),-notls)
UNWIND_DIR = $(CURDIR)/target/armv7-unwind
UNWIND_DIR_ARMV6 = $(CURDIR)/target/armv6-unwind

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
# panic = "abort" a backtrace is never printed usefully on a device, and its symbolizer weighs
# more than the armv7 budget allows (figures in the README's size section). A panic still
# prints its message and file:line. As for ARMv6 below: no position-independent code and rustls
# optimised for size (together 78 KB, which keeps it within 1.5 MB).
APT_armv7-unknown-linux-musleabihf = gcc-arm-linux-gnueabihf libc6-dev-armhf-cross musl-dev:armhf
CC_armv7-unknown-linux-musleabihf = arm-linux-musleabihf-gcc
ENV_armv7-unknown-linux-musleabihf = CC_armv7_unknown_linux_musleabihf=arm-linux-musleabihf-gcc \
	CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_LINKER=arm-linux-musleabihf-gcc \
	CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_RUSTFLAGS="-C link-self-contained=no -L $(UNWIND_DIR) -C relocation-model=static $(ARM_SIZE_FLAGS)"
TOOLCHAIN_armv7-unknown-linux-musleabihf = +nightly
BUILD_STD_armv7-unknown-linux-musleabihf = -Zbuild-std=std,panic_abort -Zbuild-std-features= \
	--config 'profile.release.package.rustls.opt-level="z"'

# Both 32-bit ARM builds (nightly already) leave out what a device never reads, to stay within
# the 1.5 MB budget with the outbound proxy and tunnel_hosts in (ARMv6: 1 574 244 bytes before,
# 1 488 228 after): a panic's file:line (-Zlocation-detail=none, 45 KB; with panic = "abort" a
# panic still prints its message) and the fields of derived Debug output (-Zfmt-debug=shallow,
# 41 KB; the agent's messages are Display, and the Debug the TLS info uses is rustls' own).
ARM_SIZE_FLAGS = -Zlocation-detail=none -Zfmt-debug=shallow

# ARMv6 (Pi Zero, Zero W, Pi 1; runs on every later Pi too): the soft-float musl target, since
# Debian's armhf musl and libgcc are ARMv7 Thumb-2 code an ARMv6 CPU cannot run, while its
# armel ones are ARMv5TE ARM code. A static binary does not care about the userland's float
# ABI, so it runs on 32-bit Raspberry Pi OS (armhf) as well. Built like armv7 (nightly,
# -Zbuild-std, Debian's musl-gcc wrapper, armel's libgcc_eh.a as libunwind), tuned for the
# Pi's ARM1176JZF-S, without position-independent code (the binary is a plain static
# executable, like every other build here), and with rustls optimised for size: together
# that keeps it within the 1.5 MB budget (figures in the README's size section).
APT_arm-unknown-linux-musleabi = gcc-arm-linux-gnueabi libc6-dev-armel-cross musl-dev:armel
CC_arm-unknown-linux-musleabi = arm-linux-musleabi-gcc
ENV_arm-unknown-linux-musleabi = CC_arm_unknown_linux_musleabi=arm-linux-musleabi-gcc \
	CARGO_TARGET_ARM_UNKNOWN_LINUX_MUSLEABI_LINKER=arm-linux-musleabi-gcc \
	CARGO_TARGET_ARM_UNKNOWN_LINUX_MUSLEABI_RUSTFLAGS="-C link-self-contained=no -L $(UNWIND_DIR_ARMV6) -C target-cpu=arm1176jzf-s -C relocation-model=static $(ARM_SIZE_FLAGS)"
TOOLCHAIN_arm-unknown-linux-musleabi = +nightly
BUILD_STD_arm-unknown-linux-musleabi = -Zbuild-std=std,panic_abort -Zbuild-std-features= \
	--config 'profile.release.package.rustls.opt-level="z"'

# Installs what TARGET needs when it is missing: rustup target or rust-src, Debian packages.
cross-setup:
	@case "$(TARGET)" in \
	  armv7-unknown-linux-musleabihf|arm-unknown-linux-musleabi) \
	    rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal; \
	    rustup component list --toolchain nightly --installed | grep -q '^rust-src' \
	      || rustup component add rust-src --toolchain nightly;; \
	  *) rustup target list --installed | grep -qx '$(TARGET)' || rustup target add $(TARGET);; \
	esac
	@# Every package, not only the compiler: a gcc installed without its recommended C library
	@# headers (seen here: --no-install-recommends) fails in ring's C code.
	@command -v $(CC_$(TARGET)) >/dev/null && dpkg -s $(APT_$(TARGET)) >/dev/null 2>&1 || { \
	  case "$(TARGET)" in armv7-*) $(AS_ROOT) dpkg --add-architecture armhf;; \
	    arm-*) $(AS_ROOT) dpkg --add-architecture armel;; esac; \
	  $(AS_ROOT) apt-get update -qq || echo "apt-get update failed in part (mirror sync?); installing from the lists there are"; \
	  $(AS_ROOT) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_$(TARGET)); }
	@case "$(TARGET)" in armv7-*) mkdir -p $(UNWIND_DIR) && \
	  ln -sf "$$(arm-linux-gnueabihf-gcc -print-file-name=libgcc_eh.a)" $(UNWIND_DIR)/libunwind.a;; \
	  arm-*) mkdir -p $(UNWIND_DIR_ARMV6) && \
	  ln -sf "$$(arm-linux-gnueabi-gcc -print-file-name=libgcc_eh.a)" $(UNWIND_DIR_ARMV6)/libunwind.a;; esac

# BIN=meeting-proxy builds the proxy instead (its Debian package).
BIN ?= tunnel-agent
cross: cross-setup
	env $(ENV_$(TARGET)) $(CARGO) $(TOOLCHAIN_$(TARGET)) build --locked --release \
	  --bin $(BIN) --target $(TARGET) $(BUILD_STD_$(TARGET)) $(FEATURES) --target-dir $(CROSS_DIR)
	@ls -l $(CROSS_DIR)/$(TARGET)/release/$(BIN)

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
# the tests' one policy (tests/support/need.rs): under CI a failure, elsewhere a loud
# "skipped:" line for that target. A build or test failure fails.
CROSS_TEST_TARGETS = aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf arm-unknown-linux-musleabi

test-cross:
	@command -v qemu-aarch64 >/dev/null && command -v qemu-arm >/dev/null || { \
	  { $(AS_ROOT) apt-get update -qq || echo "apt-get update failed in part; installing from the lists there are"; } && \
	  $(AS_ROOT) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user; } \
	  || { [ -z "$$CI" ] || { echo "CI is set but qemu-user cannot be installed"; exit 1; }; \
	       echo "skipped: test-cross for every target: needs qemu-user"; }
	@for t in $(CROSS_TEST_TARGETS); do \
	  if ! $(MAKE) -s cross-setup TARGET=$$t; then \
	    [ -z "$$CI" ] || { echo "CI is set but the $$t toolchain cannot be installed"; exit 1; }; \
	    echo "skipped: test-cross $$t: needs its toolchain"; continue; fi; \
	  $(MAKE) cross TARGET=$$t || exit 1; \
	  CROSS_TARGET=$$t CROSS_AGENT=$(CURDIR)/target/cross/$$t/release/tunnel-agent \
	    $(CARGO) test --locked --test cross -- --ignored || exit 1; \
	done
