//! Handshakes in progress, bounded per source address and in total (OpenSSH's `MaxStartups`
//! and `PerSourceMaxStartups`, nginx's `limit_conn`): the accept loop asks for a slot before it
//! starts a thread, so a connection over a bound costs one accept, one short write and a close.
//! A slot is given back when its connection's handshake is decided (or the connection ends).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// The bounds, and who holds a slot now.
pub struct Pending {
    per_address: usize,
    total: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    by_address: HashMap<IpAddr, usize>,
    total: usize,
}

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// Its address already has this many handshakes in progress.
    Address(usize),
    /// The proxy already has this many handshakes in progress.
    Total(usize),
}

impl std::fmt::Display for Over {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Over::Address(n) => write!(f, "{n} handshakes from this address are in progress"),
            Over::Total(n) => write!(f, "{n} handshakes are in progress"),
        }
    }
}

/// A handshake in progress; its slot is given back when dropped.
pub struct Slot {
    pending: Arc<Pending>,
    ip: IpAddr,
}

impl Pending {
    /// At most `per_address` handshakes from one address and `total` in all.
    pub fn new(per_address: usize, total: usize) -> Arc<Pending> {
        Arc::new(Pending {
            per_address,
            total,
            held: Mutex::new(Held::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a connection from `ip`, or the bound it is over.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Over> {
        let mut held = self.lock();
        if held.total >= self.total {
            return Err(Over::Total(held.total));
        }
        let n = held.by_address.entry(ip).or_insert(0);
        if *n >= self.per_address {
            return Err(Over::Address(*n));
        }
        *n += 1;
        held.total += 1;
        Ok(Slot {
            pending: self.clone(),
            ip,
        })
    }

    /// Handshakes in progress.
    #[cfg(test)]
    fn in_progress(&self) -> usize {
        self.lock().total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.pending.lock();
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.by_address.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_per_address_and_in_total_and_slots_come_back() {
        let p = Pending::new(2, 3);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let a1 = p.admit(a).unwrap();
        let _a2 = p.admit(a).unwrap();
        assert_eq!(p.admit(a).err(), Some(Over::Address(2)));
        let _b1 = p.admit(b).unwrap();
        assert_eq!(p.admit(b).err(), Some(Over::Total(3)));
        drop(a1);
        assert_eq!(p.in_progress(), 2);
        let _b2 = p.admit(b).unwrap();
        assert_eq!(p.admit(a).err(), Some(Over::Total(3)));
    }
}
