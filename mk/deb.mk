# Debian packages for Raspberry Pi OS and Debian (mk/deb/: the maintainer scripts and the
# assembly with dpkg-deb), and their test with the real tools.

# Each Debian architecture and the static build it carries. armhf is 32-bit Raspberry Pi OS,
# which runs on ARMv6 Pis (Zero, Zero W, 1) too: it gets the ARMv6 build, which runs on every
# 32-bit Pi (a static binary does not care about the userland's float ABI).
DEB_ARCHES ?= amd64 arm64 armhf
DEB_TARGET_amd64 = x86_64-unknown-linux-musl
DEB_TARGET_arm64 = aarch64-unknown-linux-musl
DEB_TARGET_armhf = arm-unknown-linux-musleabi
# meeting-proxy's package: the servers it runs on.
PROXY_DEB_ARCHES ?= amd64 arm64
DEB_VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
DEB_DIR ?= target/deb
DEB_MAINTAINER ?= tunnel-agent developers <tunnel-agent@meeting.ygsoft.fr>

.PHONY: deb test-deb

deb:
	@command -v dpkg-deb >/dev/null || { $(AS_ROOT) apt-get update -qq || true; \
	  $(AS_ROOT) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg; }
	$(foreach a,$(DEB_ARCHES),$(if $(DEB_TARGET_$(a)),,$(error no build for Debian architecture $(a))))
	$(foreach a,$(DEB_ARCHES),$(MAKE) cross TARGET=$(DEB_TARGET_$(a)) &&) true
	$(foreach a,$(DEB_ARCHES),mk/deb/build $(a) target/cross/$(DEB_TARGET_$(a))/release/tunnel-agent \
	  $(DEB_VERSION) $(DEB_DIR) '$(DEB_MAINTAINER)' &&) true
	$(foreach a,$(PROXY_DEB_ARCHES),$(MAKE) cross TARGET=$(DEB_TARGET_$(a)) BIN=meeting-proxy &&) true
	$(foreach a,$(PROXY_DEB_ARCHES),mk/proxy/build $(a) target/cross/$(DEB_TARGET_$(a))/release/meeting-proxy \
	  $(DEB_VERSION) $(DEB_DIR) '$(DEB_MAINTAINER)' &&) true

# The packages (the agent's, and meeting-proxy's for amd64 and arm64) with dpkg and lintian,
# then installed, upgraded, removed and purged in booted
# Debian roots (systemd-nspawn), amd64 and armhf (under qemu-user, through binfmt_misc), that
# have a stand-in for the Python agent's unit and the web manager's systemctl calls
# (tests/deb.rs). The roots are kept in TEST_ROOTS (default /var/cache/tunnel-agent-tests/roots).
test-deb: deb
	@command -v lintian >/dev/null || { \
	  { $(AS_ROOT) apt-get update -qq || echo "apt-get update failed in part; installing from the lists there are"; } && \
	  $(AS_ROOT) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends lintian; } \
	  || { [ -z "$$CI" ] || { echo "CI is set but lintian cannot be installed"; exit 1; }; }
	@command -v qemu-arm >/dev/null && command -v qemu-aarch64 >/dev/null || { \
	  { $(AS_ROOT) apt-get update -qq || true; } && \
	  $(AS_ROOT) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user; } || true
	$(AS_ROOT) mk/binfmt arm aarch64
	DEB_DIR=$(CURDIR)/$(DEB_DIR) DEB_VERSION=$(DEB_VERSION) $(CARGO) test --locked --test deb -- --ignored
