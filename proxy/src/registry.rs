//! Device sessions by client id, for session takeover (MQTT §3.1.4): a second connection
//! with the same client id closes the first, and the new one starts its upstream sessions
//! only after the old ones are gone, so brokers never see two sessions fight over one id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

#[derive(Default)]
pub struct Registry {
    inner: Mutex<HashMap<String, Entry>>,
    next: AtomicU64,
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
    done: watch::Sender<bool>,
}

impl Registry {
    /// Claims `client_id`, closing and waiting (up to `wait`) for a previous holder.
    pub async fn claim(self: &Arc<Self>, client_id: &str, wait: Duration) -> Claim {
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
        if let Some(prev) = previous {
            let _ = prev.kick.send(true);
            let mut done = prev.done;
            let _ = tokio::time::timeout(wait, done.wait_for(|d| *d)).await;
        }
        Claim {
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

    #[tokio::test]
    async fn second_claim_kicks_the_first_and_waits_for_it() {
        let r = Arc::new(Registry::default());
        let first = r.claim("dev", Duration::from_secs(5)).await;
        let mut kicked = first.kicked.clone();
        let holder = tokio::spawn(async move {
            kicked.wait_for(|k| *k).await.expect("kick");
            drop(first);
        });
        let second = r.claim("dev", Duration::from_secs(5)).await;
        holder.await.expect("first finished");
        assert_eq!(r.len(), 1);
        drop(second);
        assert!(r.is_empty());
    }
}
