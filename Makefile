# tunnel-agent: build, test and demo. `make help` lists the targets.

CARGO ?= cargo

.PHONY: help build release test test-notls lint fmt demo fuzz soak install yocto-crates clean

help:
	@echo "make build    debug build of tunnel-agent and meeting-proxy"
	@echo "make release  optimised build (target/release)"
	@echo "make test     the whole suite: unit, end-to-end, real sshd, TLS, a build without TLS"
	@echo "make lint     cargo fmt --check and clippy -D warnings"
	@echo "make demo     build, then show a real tunnel working on loopback"
	@echo "make fuzz     cargo-fuzz on the frame decoder and the reply classifier (FUZZ_TIME=60 s each)"
	@echo "make soak     mixed traffic with proxy restarts, every byte checked (DURATION=30m)"
	@echo "make install  binary, init script, systemd unit, example config (DESTDIR=, PREFIX=/usr/local, SYSCONFDIR=/etc)"
	@echo "make yocto-crates  regenerate the Yocto crates include from Cargo.lock"
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

DURATION ?= 30m

soak:
	$(CARGO) build --locked --release --bins --example soak
	DURATION=$(DURATION) ./target/release/examples/soak

PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
BINDIR = $(PREFIX)/bin
SYSTEMD_UNIT_DIR ?= $(PREFIX)/lib/systemd/system
PKG = buildroot/package/tunnel-agent
# The binary to install (make static or make cross build others).
INSTALL_BIN ?= target/release/tunnel-agent

install: $(if $(filter target/release/tunnel-agent,$(INSTALL_BIN)),release)
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

clean:
	$(CARGO) clean
