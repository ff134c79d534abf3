//! Per-source-address limit on failed CONNECT authentications: after `per_minute`
//! failures in a one-minute window, further attempts from that address are refused
//! without running Argon2 (which would otherwise be a CPU amplifier for an attacker).
//!
//! The table is bounded: when full, expired windows are pruned, and if it is still full
//! the oldest window is evicted, so a spray from many addresses costs memory O(cap).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
const CAP: usize = 4096;

pub struct FailureLimiter {
    per_minute: u32,
    table: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    /// `per_minute == 0` disables the limit.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            table: Mutex::new(HashMap::new()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<IpAddr, (Instant, u32)>) -> R) -> R {
        match self.table.lock() {
            Ok(mut t) => f(&mut t),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Has `peer` used up its failures for the current window?
    pub fn blocked(&self, peer: IpAddr) -> bool {
        self.blocked_at(peer, Instant::now())
    }

    pub fn failed(&self, peer: IpAddr) {
        self.failed_at(peer, Instant::now());
    }

    fn blocked_at(&self, peer: IpAddr, now: Instant) -> bool {
        if self.per_minute == 0 {
            return false;
        }
        self.with(|t| {
            t.get(&peer).is_some_and(|(start, n)| {
                now.duration_since(*start) < WINDOW && *n >= self.per_minute
            })
        })
    }

    fn failed_at(&self, peer: IpAddr, now: Instant) {
        if self.per_minute == 0 {
            return;
        }
        self.with(|t| {
            if t.len() >= CAP && !t.contains_key(&peer) {
                t.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
                if t.len() >= CAP {
                    if let Some(oldest) = t.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k) {
                        t.remove(&oldest);
                    }
                }
            }
            let e = t.entry(peer).or_insert((now, 0));
            if now.duration_since(e.0) >= WINDOW {
                *e = (now, 0);
            }
            e.1 += 1;
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.with(|t| t.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_until_the_window_passes() {
        let l = FailureLimiter::new(3);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(!l.blocked_at(a, t0));
            l.failed_at(a, t0);
        }
        assert!(l.blocked_at(a, t0), "fourth attempt is refused");
        assert!(!l.blocked_at(b, t0), "other addresses are not affected");
        assert!(!l.blocked_at(a, t0 + WINDOW), "a new window starts");
        l.failed_at(a, t0 + WINDOW);
        assert!(!l.blocked_at(a, t0 + WINDOW));
    }

    #[test]
    fn zero_disables_and_the_table_stays_bounded() {
        let off = FailureLimiter::new(0);
        let a: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..10 {
            off.failed(a);
        }
        assert!(!off.blocked(a));
        let l = FailureLimiter::new(1);
        let t0 = Instant::now();
        for i in 0..(CAP as u32 + 100) {
            l.failed_at(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(l.len() <= CAP);
    }
}
