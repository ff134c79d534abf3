//! Device sessions by client id, for session takeover (MQTT §3.1.4): a second connection
//! with the same client id closes the first, and the new one starts its upstream sessions
//! only after the old ones are gone, so brokers never see two sessions fight over one id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

#[derive(Default)]
pub struct Registry {
    inner: Mutex<HashMap<String, Entry>>,
    next: AtomicU64,
    /// The connected devices as the dashboard lists them.
    pub devices: Arc<crate::devices::Devices>,
}

struct Entry {
    id: u64,
    kick: watch::Sender<bool>,
    done: watch::Receiver<bool>,
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
}

impl Registry {
    /// Claims `client_id` and tells a previous holder to close. Its end is signalled through
    /// [`Claim::previous`]: upstreams wait for it before connecting (so the old session
    /// drains first and brokers never see two sessions with one id), while the device gets
    /// its CONNACK at once.
    pub fn claim(self: &Arc<Self>, client_id: &str) -> Claim {
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
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|m| m.len()).unwrap_or(0)
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
