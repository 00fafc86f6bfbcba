SUMMARY = "Device side of the Meeting reverse tunnel"
DESCRIPTION = "Dials out to the Meeting proxy and carries its tunnels to local \
services such as sshd. One binary, no runtime."
# The project's license has not been chosen yet.
LICENSE = "CLOSED"

inherit cargo cargo-update-recipe-crates update-rc.d systemd

# The recipe builds the repository it lives in (four levels up from here).
FILESEXTRAPATHS:prepend := "${THISDIR}/../../../..:"
SRC_URI = " \
    file://Cargo.toml;subdir=tunnel-agent \
    file://Cargo.lock;subdir=tunnel-agent \
    file://src;subdir=tunnel-agent \
    file://buildroot/package/tunnel-agent;subdir=tunnel-agent \
"
# wrynose unpacks into UNPACKDIR (WORKDIR/sources) and wants S under it; scarthgap has no
# UNPACKDIR and unpacks into WORKDIR.
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}/tunnel-agent"

# Crates from Cargo.lock, with checksums: regenerate with `make yocto-crates`.
require tunnel-agent-crates.inc

# Only the agent; TLS (rustls on ring) unless the tls PACKAGECONFIG is removed. The flag goes in
# CARGO_BUILD_FLAGS, not in PACKAGECONFIG[tls], as scarthgap's cargo class does not pass
# PACKAGECONFIG_CONFARGS to cargo (wrynose's does).
PACKAGECONFIG ??= "tls"
PACKAGECONFIG[tls] = ",,"
CARGO_BUILD_FLAGS:append = " --bin tunnel-agent"
CARGO_BUILD_FLAGS:append = "${@bb.utils.contains('PACKAGECONFIG', 'tls', '', ' --no-default-features', d)}"

do_install:append() {
    install -d ${D}${sysconfdir}/init.d ${D}${sysconfdir}/tunnel-agent ${D}${systemd_system_unitdir}
    install -m 0755 ${S}/buildroot/package/tunnel-agent/S95tunnel-agent ${D}${sysconfdir}/init.d/tunnel-agent
    for u in tunnel-agent.service tunnel-agent-keys.service tunnel-agent-keys.timer; do
        install -m 0644 ${S}/buildroot/package/tunnel-agent/$u ${D}${systemd_system_unitdir}/
    done
    install -m 0600 ${S}/buildroot/package/tunnel-agent/config.json.example ${D}${sysconfdir}/tunnel-agent/
}

INITSCRIPT_NAME = "tunnel-agent"
INITSCRIPT_PARAMS = "defaults 95"
SYSTEMD_SERVICE:${PN} = "tunnel-agent.service tunnel-agent-keys.timer"
