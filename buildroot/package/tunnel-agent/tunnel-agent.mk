################################################################################
#
# tunnel-agent
#
################################################################################

# The commit checked out in the repository this external tree lives in. The git download
# step archives it (tracked files only: a developer's target/ never enters the build) and the
# cargo-package infrastructure vendors the crates into that archive, so `make source` is the
# only step that needs the network. Uncommitted changes are not built: commit them, or see
# README.md for TUNNEL_AGENT_OVERRIDE_SRCDIR.
TUNNEL_AGENT_VERSION = $(shell git -C $(BR2_EXTERNAL_TUNNEL_AGENT_PATH) rev-parse HEAD)
TUNNEL_AGENT_SITE = $(BR2_EXTERNAL_TUNNEL_AGENT_PATH)/..
TUNNEL_AGENT_SITE_METHOD = git
TUNNEL_AGENT_LICENSE = PROPRIETARY
# With TUNNEL_AGENT_OVERRIDE_SRCDIR (a working tree, see README.md), its build output stays out.
TUNNEL_AGENT_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = --exclude=/target --exclude=/fuzz/target

# Only the agent: the reference proxy stays off the device.
TUNNEL_AGENT_CARGO_BUILD_OPTS = --bin tunnel-agent

ifeq ($(BR2_PACKAGE_TUNNEL_AGENT_TLS),)
TUNNEL_AGENT_CARGO_BUILD_OPTS += --no-default-features
endif

# Buildroot's cargo environment sets the release profile's opt-level, LTO and codegen units
# from BR2_OPTIMIZE_* and BR2_ENABLE_LTO (opt-level 2, no LTO, 16 units by default: 2 822 464
# bytes for aarch64 musl). Unset, the project's own profile in Cargo.toml applies: 2 101 536
# bytes, against 2 036 000 from `make cross` at the time (ring's C code gets Buildroot's -O2, not -Os).
TUNNEL_AGENT_CARGO_ENV = \
	env -u CARGO_PROFILE_RELEASE_OPT_LEVEL -u CARGO_PROFILE_RELEASE_LTO \
	-u CARGO_PROFILE_RELEASE_CODEGEN_UNITS

define TUNNEL_AGENT_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 \
		$(@D)/target/$(RUSTC_TARGET_NAME)/$(if $(BR2_ENABLE_DEBUG),debug,release)/tunnel-agent \
		$(TARGET_DIR)/usr/bin/tunnel-agent
	$(INSTALL) -D -m 0600 $(TUNNEL_AGENT_PKGDIR)/config.json.example \
		$(TARGET_DIR)/etc/tunnel-agent/config.json.example
endef

define TUNNEL_AGENT_INSTALL_INIT_SYSV
	$(INSTALL) -D -m 0755 $(TUNNEL_AGENT_PKGDIR)/S95tunnel-agent \
		$(TARGET_DIR)/etc/init.d/S95tunnel-agent
endef

define TUNNEL_AGENT_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(TUNNEL_AGENT_PKGDIR)/tunnel-agent.service \
		$(TARGET_DIR)/usr/lib/systemd/system/tunnel-agent.service
	$(INSTALL) -D -m 0644 $(TUNNEL_AGENT_PKGDIR)/tunnel-agent-keys.service \
		$(TARGET_DIR)/usr/lib/systemd/system/tunnel-agent-keys.service
	$(INSTALL) -D -m 0644 $(TUNNEL_AGENT_PKGDIR)/tunnel-agent-keys.timer \
		$(TARGET_DIR)/usr/lib/systemd/system/tunnel-agent-keys.timer
endef

$(eval $(cargo-package))
