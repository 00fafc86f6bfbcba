################################################################################
#
# tunnel-agent
#
################################################################################

TUNNEL_AGENT_VERSION = 0.1.0
TUNNEL_AGENT_SITE = $(BR2_EXTERNAL_TUNNEL_AGENT_PATH)/..
TUNNEL_AGENT_SITE_METHOD = local
TUNNEL_AGENT_LICENSE = PROPRIETARY

# Only the agent: the reference proxy stays off the device.
TUNNEL_AGENT_CARGO_BUILD_OPTS = --bin tunnel-agent

ifeq ($(BR2_PACKAGE_TUNNEL_AGENT_TLS),)
TUNNEL_AGENT_CARGO_BUILD_OPTS += --no-default-features
endif

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
endef

$(eval $(cargo-package))
