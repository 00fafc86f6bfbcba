# tunnel-agent: build, test and demo. `make help` lists the targets; the cross-build,
# packaging and bench machinery is in mk/.

CARGO ?= cargo
# Package installs run as root: directly, or through sudo.
AS_ROOT = $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: help build release test test-notls test-packaging lint fmt demo capacity fuzz soak soak-integrity bench bench-idle bench-windows bench-peers bench-latency bench-tls-arm install yocto-crates \
	static cross cross-all cross-setup size test-cross test-image dropbear-buildroot deb test-deb clean

help:
	@echo "make build    debug build of tunnel-agent and meeting-proxy"
	@echo "make release  optimised build (target/release)"
	@echo "make test     the whole suite: unit, end-to-end, real sshd, TLS, a build without TLS"
	@echo "make test-packaging  the Buildroot package and the Yocto layer with Buildroot and BitBake"
	@echo "make lint     cargo fmt --check, clippy -D warnings and cargo doc without warnings"
	@echo "make demo     build, then show a real tunnel working on loopback"
	@echo "make capacity meeting-proxy with 1 000 devices and 5 000 public connections: cost of each"
	@echo "make fuzz     cargo-fuzz on the frame decoder and the reply classifier (FUZZ_TIME=60 s each)"
	@echo "make soak     mixed traffic with proxy restarts, every byte checked (DURATION=30m)"
	@echo "make soak-integrity  the randomized integrity suite for 10 minutes (INTEGRITY_MINUTES=, INTEGRITY_SEED=)"
	@echo "make install  binary, init script, systemd unit, example config (DESTDIR=, PREFIX=/usr/local, SYSCONFDIR=/etc)"
	@echo "make install TARGET=armv7-unknown-linux-musleabihf DESTDIR=/mnt/root PREFIX=/usr"
	@echo "              the same with that cross build (built first if needed; FEATURES=--no-default-features: no TLS)"
	@echo "make yocto-crates  regenerate the Yocto crates include from Cargo.lock"
	@echo "make static   fully static x86_64 musl binary"
	@echo "make cross TARGET=aarch64-unknown-linux-musl|armv7-unknown-linux-musleabihf|arm-unknown-linux-musleabi (ARMv6)"
	@echo "make cross-all    every target; make size: their stripped sizes, with and without TLS"
	@echo "make test-cross   the cross binaries under qemu-user: --version and a real tunnel"
	@echo "make deb     tunnel-agent_<version>_{amd64,arm64,armhf}.deb in target/deb (armhf: the ARMv6 build)"
	@echo "make test-deb dpkg and lintian on them, then install, upgrade, remove, purge in a booted Debian"
	@echo "make test-image   emulated Cortex-A7 and A53 boards boot a BusyBox image: Dropbear login, dead link, poweroff"
	@echo "make bench    throughput, CPU/GB, latency, memory vs direct, a socat relay hop and peers"
	@echo "make bench-peers   install rathole and bore (cargo install) so make bench measures them"
	@echo "make bench-idle    an idle tunnel's CPU and wake-ups over 10 min (BEFORE=DIR: an earlier build too)"
	@echo "make bench-windows one stream's speed per window size and round trip (bench/WINDOWS.md)"
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

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) clippy --locked --no-default-features --lib --bins --target-dir target/notls -- -D warnings
	RUSTDOCFLAGS='-D warnings' $(CARGO) doc --locked --no-deps

fmt:
	$(CARGO) fmt

demo:
	$(CARGO) build --locked --release --bins --example demo
	./target/release/examples/demo

FUZZ_TIME ?= 60
FUZZ_TARGETS = frame_decoder handshake_reply

# Needs the nightly toolchain; installs cargo-fuzz when missing.
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	for t in $(FUZZ_TARGETS); do \
	  $(CARGO) +nightly fuzz run $$t -- -max_total_time=$(FUZZ_TIME) || exit 1; \
	done

clean:
	$(CARGO) clean

# The machinery behind the targets above, one folder, one file per job:
# cross and static builds with their toolchains, packaging (install, Buildroot, Yocto),
# and the benchmark and capacity runs.
include mk/cross.mk
include mk/packaging.mk
include mk/bench.mk
include mk/board.mk
include mk/deb.mk
