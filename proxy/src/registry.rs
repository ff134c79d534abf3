//! Device sessions by client id: who holds an id now (session takeover, MQTT §3.1.4), and
//! what a persistent session keeps while its device is away (MQTT §4.1: subscriptions,
//! unacknowledged deliveries, QoS 2 state), as a broker would.
//!
//! A second connection with the same client id closes the first; the new one resumes the
//! kept session once the old one has saved it, and starts its upstream sessions only after
//! the old ones are gone, so brokers never see two sessions fight over one id.
//!
//! Kept sessions are bounded: by count and by the bytes of the messages they hold
//! (`--max-kept-sessions`, `--max-kept-session-bytes`); beyond either the session that was
//! kept longest is discarded and counted (`mqtt_proxy_sessions_discarded_total`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::delivery::Pending;
use crate::metrics::METRICS;
use crate::qos::Inbound;
use crate::subtable::SubTable;

#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    next: AtomicU64,
}

#[derive(Default)]
struct Inner {
    live: HashMap<String, Entry>,
    kept: HashMap<String, SessionRecord>,
    kept_bytes: usize,
}

struct Entry {
    id: u64,
    kick: watch::Sender<bool>,
    done: watch::Receiver<bool>,
    saved: watch::Receiver<bool>,
}

/// What a persistent session keeps between connections.
#[derive(Debug, Default)]
pub struct SessionRecord {
    pub subs: SubTable,
    pub pending: Pending,
    /// Device QoS 2 publishes between PUBREC and PUBREL.
    pub inbound: Inbound,
    /// `None`: never expires (MQTT 3.1.1 clean session off; v5 expiry 0xFFFFFFFF).
    pub expires: Option<Instant>,
    /// Storage order, for pushing out the session kept longest.
    seq: u64,
}

impl SessionRecord {
    /// A record that expires `expiry` seconds from now (`u32::MAX` = never).
    pub fn new(subs: SubTable, pending: Pending, inbound: Inbound, expiry: u32) -> Self {
        let now = Instant::now();
        Self {
            subs,
            pending,
            inbound,
            expires: (expiry != u32::MAX).then(|| now + Duration::from_secs(u64::from(expiry))),
            seq: 0,
        }
    }

    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }
}

/// Bounds on the sessions kept for absent devices.
#[derive(Debug, Clone, Copy)]
pub struct KeepLimits {
    pub max_sessions: usize,
    pub max_bytes: usize,
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
    /// Becomes `true` when the previous holder has saved (or dropped) its session.
    previous_saved: Option<watch::Receiver<bool>>,
    done: watch::Sender<bool>,
    saved: watch::Sender<bool>,
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
        let (saved_tx, saved_rx) = watch::channel(false);
        let previous = self.inner.lock().ok().and_then(|mut m| {
            m.live.insert(
                client_id.to_string(),
                Entry {
                    id,
                    kick: kick_tx,
                    done: done_rx,
                    saved: saved_rx,
                },
            )
        });
        let (previous, previous_saved) = match previous {
            Some(prev) => {
                let _ = prev.kick.send(true);
                (Some(prev.done), Some(prev.saved))
            }
            None => (None, None),
        };
        Claim {
            previous,
            previous_saved,
            registry: self.clone(),
            client_id: client_id.to_string(),
            id,
            kicked: kick_rx,
            done: done_tx,
            saved: saved_tx,
        }
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|m| m.live.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions kept for absent devices (expired ones included until they are looked at or
    /// pushed out).
    pub fn kept(&self) -> usize {
        self.inner.lock().map(|m| m.kept.len()).unwrap_or(0)
    }

    fn store(&self, client_id: &str, mut record: SessionRecord, limits: KeepLimits) {
        let Ok(mut m) = self.inner.lock() else {
            return;
        };
        let now = Instant::now();
        record.seq = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(old) = m.kept.remove(client_id) {
            m.kept_bytes -= old.pending.bytes();
        }
        let bytes = record.pending.bytes();
        if bytes > limits.max_bytes || limits.max_sessions == 0 {
            METRICS
                .sessions_discarded
                .with_label_values(&["full"])
                .inc();
            return;
        }
        if m.kept.len() >= limits.max_sessions || m.kept_bytes + bytes > limits.max_bytes {
            // Expired records go first, then the ones kept longest.
            let expired: Vec<String> = m
                .kept
                .iter()
                .filter(|(_, r)| r.expired(now))
                .map(|(k, _)| k.clone())
                .collect();
            for k in expired {
                if let Some(r) = m.kept.remove(&k) {
                    m.kept_bytes -= r.pending.bytes();
                    METRICS
                        .sessions_discarded
                        .with_label_values(&["expired"])
                        .inc();
                }
            }
            while m.kept.len() >= limits.max_sessions || m.kept_bytes + bytes > limits.max_bytes {
                let Some(oldest) = m
                    .kept
                    .iter()
                    .min_by_key(|(_, r)| r.seq)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                if let Some(r) = m.kept.remove(&oldest) {
                    m.kept_bytes -= r.pending.bytes();
                    METRICS
                        .sessions_discarded
                        .with_label_values(&["full"])
                        .inc();
                }
            }
        }
        m.kept_bytes += bytes;
        m.kept.insert(client_id.to_owned(), record);
        METRICS.sessions_kept.set(m.kept.len() as i64);
    }

    fn take(&self, client_id: &str) -> Option<SessionRecord> {
        let mut m = self.inner.lock().ok()?;
        let r = m.kept.remove(client_id)?;
        m.kept_bytes -= r.pending.bytes();
        METRICS.sessions_kept.set(m.kept.len() as i64);
        if r.expired(Instant::now()) {
            METRICS
                .sessions_discarded
                .with_label_values(&["expired"])
                .inc();
            return None;
        }
        Some(r)
    }
}

impl Claim {
    /// The session kept for this client id, if any and not expired, once a previous holder
    /// has saved it (waiting at most `bound`). A clean start discards it (MQTT §3.1.2.4).
    pub async fn resume(&mut self, clean: bool, bound: Duration) -> Option<SessionRecord> {
        if let Some(mut saved) = self.previous_saved.take() {
            let _ = tokio::time::timeout(bound, saved.wait_for(|s| *s)).await;
        }
        let record = self.registry.take(&self.client_id);
        if clean {
            return None;
        }
        record
    }

    /// Keeps `record` for the device's return (`None`: nothing to keep) and tells a
    /// successor it may resume.
    pub fn save(&self, record: Option<SessionRecord>, limits: KeepLimits) {
        if let Some(r) = record {
            self.registry.store(&self.client_id, r, limits);
        }
        let _ = self.saved.send(true);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut m) = self.registry.inner.lock() {
            if m.live.get(&self.client_id).is_some_and(|e| e.id == self.id) {
                m.live.remove(&self.client_id);
            }
        }
        let _ = self.saved.send(true);
        let _ = self.done.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::SubFilter;

    const LIMITS: KeepLimits = KeepLimits {
        max_sessions: 2,
        max_bytes: 1 << 20,
    };

    fn record(filter: &str, expiry: u32) -> SessionRecord {
        let subs = [SubFilter::new(filter, 1)].into_iter().collect();
        SessionRecord::new(subs, Pending::default(), Inbound::default(), expiry)
    }

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

    #[tokio::test]
    async fn a_taken_over_session_is_resumed_after_it_saved() {
        let r = Arc::new(Registry::default());
        let first = r.claim("dev");
        let mut kicked = first.kicked.clone();
        let holder = tokio::spawn(async move {
            kicked.wait_for(|k| *k).await.expect("kick");
            first.save(Some(record("a/#", u32::MAX)), LIMITS);
            // Still draining upstreams: the successor need not wait for this.
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(first);
        });
        let mut second = r.claim("dev");
        let got = second
            .resume(false, Duration::from_secs(5))
            .await
            .expect("kept");
        assert!(got.subs.get("a/#").is_some());
        holder.await.expect("first");
    }

    #[tokio::test]
    async fn clean_start_discards_and_expiry_ends_a_kept_session() {
        let r = Arc::new(Registry::default());
        r.claim("a").save(Some(record("x", u32::MAX)), LIMITS);
        assert!(r.claim("a").resume(true, Duration::ZERO).await.is_none());
        assert!(
            r.claim("a").resume(false, Duration::ZERO).await.is_none(),
            "the clean start removed it"
        );
        r.claim("b").save(Some(record("x", 0)), LIMITS);
        assert!(
            r.claim("b").resume(false, Duration::ZERO).await.is_none(),
            "expired"
        );
    }

    #[tokio::test]
    async fn kept_sessions_are_bounded() {
        let r = Arc::new(Registry::default());
        for id in ["a", "b", "c"] {
            r.claim(id).save(Some(record("x", u32::MAX)), LIMITS);
        }
        assert_eq!(r.kept(), 2, "max_sessions");
        assert!(
            r.claim("a").resume(false, Duration::ZERO).await.is_none(),
            "the oldest was discarded"
        );
        assert!(r.claim("c").resume(false, Duration::ZERO).await.is_some());
    }
}
