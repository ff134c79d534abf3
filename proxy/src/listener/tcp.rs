//! The TCP layer every transport sits on: binding, one accept task per endpoint, and the
//! per-source-address connection limit (a device farm behind one NAT is legitimate; a
//! single host opening thousands of sockets is not).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::error;

/// Accepts on `listener` and hands each connection, tagged with `endpoint`, to the serve
/// loop. Ends when the serve loop is gone.
pub async fn accept_loop(
    listener: TcpListener,
    endpoint: usize,
    to_serve: mpsc::Sender<(TcpStream, SocketAddr, usize)>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                if to_serve.send((stream, peer, endpoint)).await.is_err() {
                    return;
                }
            }
            // Accept errors (EMFILE, ECONNABORTED) are transient: back off briefly.
            Err(e) => {
                error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Open connections per source address, capped.
pub struct AddressLimit {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's share of its address's count; released on drop.
pub struct AddressPermit {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl AddressLimit {
    /// `max == 0`: no per-address limit.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    pub fn try_acquire(&self, ip: IpAddr) -> Option<AddressPermit> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if self.max > 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressPermit {
            ip,
            open: self.open.clone(),
        })
    }
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                // The map holds only addresses with open connections, so it stays bounded
                // by the total connection limit.
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_limit_counts_and_releases() {
        let l = AddressLimit::new(2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let p1 = l.try_acquire(a).expect("first");
        let _p2 = l.try_acquire(a).expect("second");
        assert!(l.try_acquire(a).is_none(), "third from the same address");
        assert!(l.try_acquire(b).is_some(), "another address");
        drop(p1);
        assert!(l.try_acquire(a).is_some(), "released on drop");
        let unlimited = AddressLimit::new(0);
        let held: Vec<_> = (0..100).filter_map(|_| unlimited.try_acquire(a)).collect();
        assert_eq!(held.len(), 100);
        drop(held);
        assert!(unlimited.open.lock().expect("lock").is_empty());
    }
}
