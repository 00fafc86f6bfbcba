//! Records when the binary was built (`SOURCE_DATE_EPOCH` when the build system sets it, as
//! Yocto and reproducible builds do), so the agent can tell a device clock that was never set
//! (a board without a real-time clock, before NTP) from a certificate that is really not yet
//! valid: a clock that reads a time before the build is certainly wrong.

use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-changed=build.rs");
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    println!("cargo:rustc-env=TUNNEL_AGENT_BUILD_EPOCH={epoch}");
}
