include $(sort $(wildcard $(BR2_EXTERNAL_TUNNEL_AGENT_PATH)/package/*/*.mk))
