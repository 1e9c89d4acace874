//! Connections per client address (`[limits.connections] per_client`): counted from
//! accept to close by an RAII guard. A peer in `trusted_proxies` is exempt: its
//! connections carry many clients, whose addresses are known only per request.
//!
//! Locking: `open` is a `std::sync::Mutex` held to change one count, never across an
//! `.await`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::settings::Cidr;

/// Open connections by client address. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ClientConnections {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max: usize,
    trusted: Vec<Cidr>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; dropping it (even on panic) uncounts it.
#[derive(Debug)]
pub struct Counted {
    inner: Arc<Inner>,
    ip: Option<IpAddr>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        let mut open = self.inner.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }
}

impl ClientConnections {
    pub fn new(max: usize, trusted: Vec<Cidr>) -> ClientConnections {
        ClientConnections {
            inner: Arc::new(Inner {
                max,
                trusted,
                open: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Counts a connection from `ip`, or `None` when the address holds `max` already.
    pub fn enter(&self, ip: IpAddr) -> Option<Counted> {
        let ip = ip.to_canonical();
        if self.inner.trusted.iter().any(|block| block.contains(ip)) {
            return Some(Counted {
                inner: self.inner.clone(),
                ip: None,
            });
        }
        let mut open = self.inner.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.inner.max {
            return None;
        }
        *n += 1;
        Some(Counted {
            inner: self.inner.clone(),
            ip: Some(ip),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_max_and_trusted_proxies_are_exempt() {
        let trusted: Cidr = "10.0.0.0/8".parse().expect("cidr");
        let clients = ClientConnections::new(2, vec![trusted]);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        let first = clients.enter(a).expect("first");
        let second = clients.enter(mapped).expect("second: the same client");
        assert!(clients.enter(a).is_none());
        assert!(clients.enter("192.0.2.2".parse().expect("ip")).is_some());
        let proxy: IpAddr = "10.1.2.3".parse().expect("ip");
        let held: Vec<_> = (0..5)
            .map(|_| clients.enter(proxy).expect("exempt"))
            .collect();
        drop(first);
        let third = clients.enter(a).expect("a slot came back");
        drop((second, third, held));
        assert!(clients.inner.open.lock().expect("lock").is_empty());
    }
}
