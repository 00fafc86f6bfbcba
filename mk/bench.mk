# The benchmark (make bench and its parts), the capacity run and the soak; figures go to
# bench/RESULTS.md and bench/CAPACITY.md, never into these files.

# meeting-proxy with 1 000 devices and 5 000 public connections (DEVICES=, PUBLIC=):
# memory, threads and descriptors per device and per connection, into bench/CAPACITY.md.
capacity:
	$(CARGO) build --locked --release --bins --example capacity
	./target/release/examples/capacity

DURATION ?= 30m

# Installs iperf3, socat and tinyproxy when missing; writes bench/RESULTS.md.
bench:
	@command -v iperf3 >/dev/null && command -v socat >/dev/null && command -v tinyproxy >/dev/null || { \
	  $(AS_ROOT) apt-get update -qq && \
	  $(AS_ROOT) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 socat tinyproxy; }
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

# An idle tunnel's CPU time and wake-ups over IDLE_MINUTES (10), agent and proxy, into
# bench/IDLE.md; BEFORE=DIR runs an earlier build's pair (DIR/tunnel-agent, DIR/meeting-proxy)
# at the same time.
IDLE_MINUTES ?= 10
bench-idle:
	$(CARGO) build --locked --release --bins --example idle
	IDLE_MINUTES=$(IDLE_MINUTES) ./target/release/examples/idle

# One stream's speed for each per-stream window and round trip, into bench/WINDOWS.md.
bench-windows:
	$(CARGO) build --locked --release --bins --example windows
	./target/release/examples/windows

bench-latency:
	$(CARGO) build --locked --release --bins --example bench
	BENCH_ONLY=latency ./target/release/examples/bench

soak:
	$(CARGO) build --locked --release --bins --example soak
	DURATION=$(DURATION) ./target/release/examples/soak

# The randomized integrity suite (tests/integrity.rs) for INTEGRITY_MINUTES (10) through the real
# binaries: streams, bytes and the seed reported at the end; INTEGRITY_SEED=<n> replays a run.
INTEGRITY_MINUTES ?= 10
soak-integrity:
	INTEGRITY_MINUTES=$(INTEGRITY_MINUTES) $(CARGO) test --locked --test integrity -- --ignored --nocapture soak_integrity
