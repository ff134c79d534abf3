//! Device sessions by client id, for session takeover (MQTT §3.1.4): a second connection
//! with the same client id closes the first, and the new one starts its upstream sessions
//! only after the old ones are gone, so brokers never see two sessions fight over one id.
//!
//! Each entry also carries a [`DeviceInfo`] the session keeps current (counters are atomics,
//! bumped without the registry lock), which the dashboard's device list reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// What the dashboard shows of one connected device.
#[derive(Debug, Default)]
pub struct DeviceInfo {
    pub client_id: String,
    pub peer: Option<std::net::SocketAddr>,
    /// `"3.1.1"` or `"5"`.
    pub protocol: &'static str,
    /// Unix milliseconds of the CONNECT.
    pub since_ms: u64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    subscriptions: Mutex<Vec<String>>,
}

impl DeviceInfo {
    /// Replaces the subscription list (called after SUBSCRIBE/UNSUBSCRIBE, not per message).
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
}

#[derive(Default)]
pub struct Registry {
    inner: Mutex<HashMap<String, Entry>>,
    next: AtomicU64,
}

struct Entry {
    id: u64,
    kick: watch::Sender<bool>,
    done: watch::Receiver<bool>,
    info: Arc<DeviceInfo>,
}

/// A live session's hold on its client id. Dropping it frees the id and tells a waiting
/// successor that this session is finished.
pub struct Claim {
    registry: Arc<Registry>,
    client_id: String,
    id: u64,
    /// Becomes `true` when another connection takes the client id over.
    pub kicked: watch::Receiver<bool>,
    /// Becomes `true` when the previous holder of the id has finished.
    pub previous: Option<watch::Receiver<bool>>,
    done: watch::Sender<bool>,
    pub info: Arc<DeviceInfo>,
}

impl Registry {
    /// Claims `client_id` and tells a previous holder to close. Its end is signalled through
    /// [`Claim::previous`]: upstreams wait for it before connecting (so the old session
    /// drains first and brokers never see two sessions with one id), while the device gets
    /// its CONNACK at once.
    pub fn claim(self: &Arc<Self>, client_id: &str) -> Claim {
        self.claim_device(client_id, None, "")
    }

    /// [`Self::claim`] for a device connected from `peer` speaking `protocol`.
    pub fn claim_device(
        self: &Arc<Self>,
        client_id: &str,
        peer: Option<std::net::SocketAddr>,
        protocol: &'static str,
    ) -> Claim {
        let info = Arc::new(DeviceInfo {
            client_id: client_id.to_string(),
            peer,
            protocol,
            since_ms: crate::brokerset::now_ms(),
            ..DeviceInfo::default()
        });
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (kick_tx, kick_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(false);
        let previous = self.inner.lock().ok().and_then(|mut m| {
            m.insert(
                client_id.to_string(),
                Entry {
                    id,
                    kick: kick_tx,
                    done: done_rx,
                    info: info.clone(),
                },
            )
        });
        let previous = previous.map(|prev| {
            let _ = prev.kick.send(true);
            prev.done
        });
        Claim {
            previous,
            registry: self.clone(),
            client_id: client_id.to_string(),
            id,
            kicked: kick_rx,
            done: done_tx,
            info,
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// The connected devices, sorted by client id.
    pub fn devices(&self) -> Vec<Arc<DeviceInfo>> {
        let mut v: Vec<_> = self
            .inner
            .lock()
            .map(|m| m.values().map(|e| e.info.clone()).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        v
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut m) = self.registry.inner.lock() {
            if m.get(&self.client_id).is_some_and(|e| e.id == self.id) {
                m.remove(&self.client_id);
            }
        }
        let _ = self.done.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn second_claim_kicks_the_first_and_waits_for_it() {
        let r = Arc::new(Registry::default());
        let first = r.claim("dev");
        let mut kicked = first.kicked.clone();
        let holder = tokio::spawn(async move {
            kicked.wait_for(|k| *k).await.expect("kick");
            drop(first);
        });
        let mut second = r.claim("dev");
        let mut prev = second.previous.take().expect("a previous holder");
        tokio::time::timeout(Duration::from_secs(5), prev.wait_for(|d| *d))
            .await
            .expect("in time")
            .expect("signalled");
        holder.await.expect("first finished");
        assert_eq!(r.len(), 1);
        drop(second);
        assert!(r.is_empty());
    }
}
