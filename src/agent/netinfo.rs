//! What the heartbeat says of the device's network: the interface that carries the default
//! route (`/proc/net/route`), its IPv4 address (`getifaddrs(3)`) and its MAC
//! (`/sys/class/net/IF/address`). Calls `libc` for the address: std has no interface list.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::net::Ipv4Addr;
use std::path::Path;

/// Environment variable naming a file that stands in for the machine's network, one line
/// `IFACE IPV4 MAC` (for tests: the heartbeat on an address change).
pub const LAN_FILE_ENV: &str = "TUNNEL_AGENT_LAN_FILE";

/// The device's LAN identity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lan {
    /// Interface of the default route, e.g. `eth0`.
    pub iface: String,
    /// Its IPv4 address.
    pub ip: Option<Ipv4Addr>,
    /// Its MAC, upper case with colons.
    pub mac: Option<String>,
}

/// The LAN identity now (`None`: no default route, or nothing readable).
pub fn lan() -> Option<Lan> {
    if let Some(file) = std::env::var_os(LAN_FILE_ENV) {
        return from_file(Path::new(&file));
    }
    let route = std::fs::read_to_string("/proc/net/route").ok()?;
    let iface = default_route(&route)?;
    let mac = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
        .ok()
        .and_then(|m| normalise_mac(&m));
    Some(Lan {
        ip: ipv4_of(&iface),
        iface,
        mac,
    })
}

fn from_file(path: &Path) -> Option<Lan> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut words = text.split_whitespace();
    Some(Lan {
        iface: words.next()?.to_owned(),
        ip: words.next().and_then(|w| w.parse().ok()),
        mac: words.next().and_then(normalise_mac),
    })
}

/// The interface of the default route with the lowest metric, from `/proc/net/route`
/// (columns: Iface Destination Gateway Flags RefCnt Use Metric Mask ...; RTF_UP is 1).
pub fn default_route(table: &str) -> Option<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            let metric: u64 = f.get(6)?.parse().ok()?;
            (*f.get(1)? == "00000000" && *f.get(7)? == "00000000" && flags & 1 == 1)
                .then(|| (metric, f[0].to_owned()))
        })
        .min()
        .map(|(_, iface)| iface)
}

/// `aa:bb:cc:dd:ee:ff` (as sysfs has it) to `AA:BB:CC:DD:EE:FF`; `None` unless six hex pairs.
pub fn normalise_mac(text: &str) -> Option<String> {
    let m = text.trim().to_ascii_uppercase();
    let parts: Vec<&str> = m.split(':').collect();
    (parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit())))
    .then_some(m)
}

/// The first IPv4 address of `iface`.
fn ipv4_of(iface: &str) -> Option<Ipv4Addr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = list;
    while !cur.is_null() && found.is_none() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed; its name is
        // a NUL-terminated string and, when ifa_addr is AF_INET, it points to a sockaddr_in.
        unsafe {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null()
                && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET
                && CStr::from_ptr(ifa.ifa_name).to_bytes() == iface.as_bytes()
            {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
";

    #[test]
    fn default_route_takes_the_lowest_metric() {
        assert_eq!(default_route(ROUTE).as_deref(), Some("eth0"));
        assert_eq!(default_route("Iface\tDestination\n"), None);
    }

    #[test]
    fn macs_are_upper_case_with_colons() {
        assert_eq!(
            normalise_mac("b8:27:eb:12:ab:cd\n").as_deref(),
            Some("B8:27:EB:12:AB:CD")
        );
        assert_eq!(normalise_mac("00:00:00"), None);
        assert_eq!(normalise_mac("zz:27:eb:12:ab:cd"), None);
    }

    #[test]
    fn loopback_has_its_address() {
        assert_eq!(ipv4_of("lo"), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(ipv4_of("no-such-interface"), None);
    }
}
