//! The connected devices as the dashboard lists them: client id, address, protocol, since,
//! subscriptions and message counters. Each session registers itself and keeps its entry
//! current; counters are atomics bumped without any lock, the subscription list is replaced
//! on SUBSCRIBE/UNSUBSCRIBE only. The entry goes when the session's [`DeviceGuard`] drops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub struct DeviceInfo {
    pub client_id: String,
    pub peer: Option<SocketAddr>,
    /// `"3.1.1"` or `"5"`.
    pub protocol: &'static str,
    /// Unix milliseconds of the CONNECT.
    pub since_ms: u64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    subscriptions: Mutex<Vec<String>>,
}

impl DeviceInfo {
    /// Replaces the subscription list (after SUBSCRIBE/UNSUBSCRIBE, not per message).
    pub fn set_subscriptions<'a>(&self, filters: impl Iterator<Item = &'a str>) {
        if let Ok(mut s) = self.subscriptions.lock() {
            s.clear();
            s.extend(filters.map(str::to_string));
        }
    }
    pub fn subscriptions(&self) -> Vec<String> {
        self.subscriptions
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
    pub fn received(&self) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
    }
    pub fn sent(&self) {
        self.messages_out.fetch_add(1, Ordering::Relaxed);
    }
}

/// The table of one proxy (held by its registry).
#[derive(Default)]
pub struct Devices {
    inner: Mutex<HashMap<u64, Arc<DeviceInfo>>>,
    next: AtomicU64,
}

/// A session's entry; dropping it removes the device from the list.
pub struct DeviceGuard {
    table: Arc<Devices>,
    key: u64,
    pub info: Arc<DeviceInfo>,
}

impl Devices {
    pub fn add(
        self: &Arc<Self>,
        client_id: &str,
        peer: SocketAddr,
        protocol: &'static str,
    ) -> DeviceGuard {
        let info = Arc::new(DeviceInfo {
            client_id: client_id.to_string(),
            peer: Some(peer),
            protocol,
            since_ms: crate::brokerset::now_ms(),
            ..DeviceInfo::default()
        });
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.inner.lock() {
            m.insert(key, info.clone());
        }
        DeviceGuard {
            table: self.clone(),
            key,
            info,
        }
    }

    /// The connected devices, sorted by client id.
    pub fn list(&self) -> Vec<Arc<DeviceInfo>> {
        let mut v: Vec<_> = self
            .inner
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        v
    }
}

impl Drop for DeviceGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.table.inner.lock() {
            m.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_listed_while_its_guard_lives() {
        let t = Arc::new(Devices::default());
        let g = t.add("b", ([127, 0, 0, 1], 1).into(), "5");
        let _a = t.add("a", ([127, 0, 0, 1], 2).into(), "3.1.1");
        g.info.received();
        g.info.set_subscriptions(["x/#"].into_iter());
        let ids: Vec<_> = t.list().iter().map(|d| d.client_id.clone()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(t.list()[1].messages_in.load(Ordering::Relaxed), 1);
        assert_eq!(t.list()[1].subscriptions(), ["x/#"]);
        drop(g);
        assert_eq!(t.list().len(), 1);
    }
}
