//! Fuzz target: the handshake reply classifier and its diagnoses on arbitrary replies.
#![no_main]

use std::io::BufReader;

use libfuzzer_sys::fuzz_target;
use tunnel_agent::protocol::handshake::{classify_line, read_reply};

fuzz_target!(|data: &[u8]| {
    let mut r = BufReader::with_capacity(1 + data.len() % 97, data);
    if let Err(e) = read_reply(&mut r) {
        let d = tunnel_agent::advice::reply(&e, "3316A52EB08837267BF6BD3E2B2E8DC7", "proxy:9001");
        assert!(!d.is_empty());
        let _ = e.short();
    }
    let _ = classify_line(data);
});
