//! The bounded per-upstream queue between a device session and one broker. (What happens
//! when a queued message is finished — the device's ack, the spool record — is `ack.rs`.)
//!
//! Why not an `mpsc` channel: a full channel can only refuse the *new* message, and the
//! default policy is to evict the *oldest*. The lock is a plain `std` mutex held for a few
//! pointer moves and never across an `.await`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::IntGauge;
use tokio::sync::Notify;

pub use crate::ack::{dropped, reason, AckSink, AckTracker, Completion};
use crate::broker::OverflowPolicy;
use crate::codec::Message;
use crate::spool::Spool;

/// The bytes all queues of one proxy may hold together (`--queue-total-max-bytes`): a queue
/// that would push the total over it applies its own overflow policy.
#[derive(Debug)]
pub struct Budget {
    used: AtomicI64,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Self {
        Self {
            used: AtomicI64::new(0),
            limit,
        }
    }
    /// Bytes currently held by all queues.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed).max(0) as usize
    }
}

/// Limits of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub overflow: OverflowPolicy,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            max_messages: 100_000,
            max_bytes: 64 << 20,
            overflow: OverflowPolicy::DropOldest,
        }
    }
}

/// One queued message for one broker.
pub struct Queued {
    pub msg: Message,
    /// QoS towards this broker (already capped by `maxQos`).
    pub qos: u8,
    pub done: Completion,
    /// The broker can hand this message back (the device is subscribed to it there): the
    /// upstream records it when written so the returning copy is recognised as an echo.
    pub echo: bool,
    /// When its MQTT 5 Message Expiry Interval runs out (counted from when it was queued).
    pub expires_at: Option<std::time::Instant>,
}

impl Queued {
    pub fn new(msg: Message, qos: u8, ack: Option<Arc<AckTracker>>) -> Self {
        // Only messages that carry an expiry pay for reading the clock.
        let expires_at = msg
            .props
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
            .and_then(|s| {
                std::time::Instant::now().checked_add(std::time::Duration::from_secs(s.into()))
            });
        Self {
            msg,
            qos,
            done: Completion {
                ack,
                spool: None,
                received: Some(std::time::Instant::now()),
                trace: None,
            },
            echo: false,
            expires_at,
        }
    }
    /// The message left the proxy's hands (acked, written at QoS 0, or dropped).
    pub fn finish(self) {
        self.done.complete();
    }
}

/// Where a queue reports its size: the broker's metric gauges (labelled by name) and its
/// live stats (per broker instance, for the status API).
pub struct QueueCounters {
    pub messages: IntGauge,
    pub bytes: IntGauge,
    pub stats: Arc<crate::brokerset::BrokerStats>,
    pub budget: Arc<Budget>,
}

/// Result of [`UpstreamQueue::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Accepted,
    /// Accepted after evicting this many older messages.
    Evicted(usize),
    /// Refused (queue full under `dropNewest`, or closed).
    Rejected,
}

struct Inner {
    items: VecDeque<Queued>,
    bytes: usize,
    closed: bool,
    /// Under the lock so a changed broker's new limits apply to the queue it inherits.
    limits: QueueLimits,
}

pub struct UpstreamQueue {
    inner: Mutex<Inner>,
    pub notify: Notify,
    depth: AtomicUsize,
    /// Per-broker totals across all device sessions (metrics gauges and live stats).
    gauges: Option<QueueCounters>,
    /// Disk spool for QoS>=1 messages (`spool: true`), attached once the upstream owns it.
    spool: std::sync::OnceLock<Arc<Spool>>,
}

impl UpstreamQueue {
    pub fn new(limits: QueueLimits) -> Self {
        Self::with_gauges(limits, None)
    }

    /// A queue that keeps the broker's `queue_messages`/`queue_bytes` totals up to date.
    pub fn with_gauges(limits: QueueLimits, gauges: Option<QueueCounters>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                bytes: 0,
                closed: false,
                limits,
            }),
            notify: Notify::new(),
            depth: AtomicUsize::new(0),
            gauges,
            spool: std::sync::OnceLock::new(),
        }
    }

    /// Attaches a disk spool: `recovered` (already spooled) goes in front of what is queued,
    /// and every QoS>=1 message pushed from now on is spooled too. Messages queued before
    /// this point and still queued are spooled now, behind the recovered ones.
    pub fn attach_spool(&self, spool: Arc<Spool>, recovered: Vec<Queued>) {
        let Ok(mut q) = self.inner.lock() else { return };
        for item in q.items.iter_mut() {
            if item.qos > 0 && item.done.spool.is_none() {
                item.done.spool = spool.append(&item.msg);
            }
        }
        let n = recovered.len() as i64;
        let mut bytes = 0;
        for item in recovered.into_iter().rev() {
            bytes += item.msg.weight();
            q.items.push_front(item);
        }
        q.bytes += bytes;
        self.account(n, bytes as i64);
        self.depth.store(q.items.len(), Ordering::Relaxed);
        let _ = self.spool.set(spool);
        drop(q);
        self.notify.notify_one();
    }

    fn account(&self, messages: i64, bytes: i64) {
        if let Some(c) = &self.gauges {
            c.budget.used.fetch_add(bytes, Ordering::Relaxed);
            c.messages.add(messages);
            c.bytes.add(bytes);
            c.stats
                .queue_messages
                .fetch_add(messages, Ordering::Relaxed);
            c.stats.queue_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Adds a message, applying the overflow policy. Evicted or rejected messages are
    /// finished (their ack trackers resolved) by the caller's count, not silently.
    pub fn push(&self, mut item: Queued) -> Pushed {
        let weight = item.msg.weight();
        let mut evicted = Vec::new();
        let result = {
            let Ok(mut q) = self.inner.lock() else {
                return Pushed::Rejected;
            };
            if q.closed {
                drop(q);
                item.done
                    .report(crate::events::Outcome::Dropped(dropped::QUEUE_FULL));
                item.finish();
                return Pushed::Rejected;
            }
            let limits = q.limits;
            // The proxy-wide budget: every queue of every session together.
            let (total, budget) = match &self.gauges {
                Some(c) => (c.budget.used(), c.budget.limit),
                None => (0, usize::MAX),
            };
            if total + weight > budget.saturating_add(q.bytes) {
                // Even emptying this queue would not make room: refuse rather than evict.
                drop(q);
                item.done.fail(reason::QUOTA_EXCEEDED, dropped::QUEUE_FULL);
                return Pushed::Rejected;
            }
            let full = |q: &Inner, freed: usize| {
                q.items.len() >= limits.max_messages
                    || q.bytes + weight > limits.max_bytes
                    || total.saturating_sub(freed) + weight > budget
            };
            if full(&q, 0) && limits.overflow == OverflowPolicy::DropNewest {
                drop(q);
                item.done.fail(reason::QUOTA_EXCEEDED, dropped::QUEUE_FULL);
                return Pushed::Rejected;
            }
            if item.qos > 0 && item.done.spool.is_none() {
                if let Some(sp) = self.spool.get() {
                    item.done.spool = sp.append(&item.msg);
                }
            }
            let mut freed = 0;
            while full(&q, freed) {
                match q.items.pop_front() {
                    Some(old) => {
                        q.bytes -= old.msg.weight();
                        freed += old.msg.weight();
                        evicted.push(old);
                    }
                    None => break,
                }
            }
            let evicted_bytes: usize = evicted.iter().map(|e| e.msg.weight()).sum();
            self.account(
                1 - evicted.len() as i64,
                weight as i64 - evicted_bytes as i64,
            );
            q.bytes += weight;
            q.items.push_back(item);
            self.depth.store(q.items.len(), Ordering::Relaxed);
            // Wake the upstream only on the empty → non-empty edge: it drains everything
            // it finds, so one wakeup serves a whole burst.
            let wake = q.items.len() == 1;
            if evicted.is_empty() {
                (Pushed::Accepted, wake)
            } else {
                (Pushed::Evicted(evicted.len()), wake)
            }
        };
        for e in evicted {
            e.done.fail(reason::QUOTA_EXCEEDED, dropped::QUEUE_FULL);
        }
        if result.1 {
            self.notify.notify_one();
        }
        result.0
    }

    /// Moves up to `max` messages into `out`, oldest first.
    pub fn pop_batch(&self, max: usize, out: &mut Vec<Queued>) {
        let Ok(mut q) = self.inner.lock() else { return };
        let n = max.min(q.items.len());
        let mut bytes = 0;
        for _ in 0..n {
            if let Some(item) = q.items.pop_front() {
                bytes += item.msg.weight();
                out.push(item);
            }
        }
        q.bytes -= bytes;
        // Drained: give the ring back (each of thousands of quiet upstreams would keep its
        // largest backlog's worth of slots).
        if q.items.is_empty() && q.items.capacity() > 0 {
            q.items = VecDeque::new();
        }
        self.account(-(n as i64), -(bytes as i64));
        self.depth.store(q.items.len(), Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// New limits for what is pushed from now on (a changed broker took the queue over).
    pub fn set_limits(&self, limits: QueueLimits) {
        if let Ok(mut q) = self.inner.lock() {
            q.limits = limits;
        }
    }

    pub fn has_spool(&self) -> bool {
        self.spool.get().is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> usize {
        self.inner.lock().map(|q| q.bytes).unwrap_or(0)
    }

    /// Refuses further pushes and returns what was still queued.
    pub fn close(&self) -> Vec<Queued> {
        let Ok(mut q) = self.inner.lock() else {
            return Vec::new();
        };
        q.closed = true;
        self.account(-(q.items.len() as i64), -(q.bytes as i64));
        q.bytes = 0;
        self.depth.store(0, Ordering::Relaxed);
        q.items.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u8) -> Queued {
        Queued::new(Message::new("t", vec![n], 1, false), 1, None)
    }

    fn payloads(q: &UpstreamQueue) -> Vec<u8> {
        let mut out = Vec::new();
        q.pop_batch(usize::MAX, &mut out);
        out.iter().map(|i| i.msg.payload[0]).collect()
    }

    #[test]
    fn drop_oldest_keeps_newest() {
        let q = UpstreamQueue::new(QueueLimits {
            max_messages: 3,
            ..Default::default()
        });
        for n in 0..3 {
            assert_eq!(q.push(item(n)), Pushed::Accepted);
        }
        assert_eq!(q.push(item(3)), Pushed::Evicted(1));
        assert_eq!(payloads(&q), vec![1, 2, 3]);
    }

    #[test]
    fn drop_newest_keeps_oldest() {
        let limits = QueueLimits {
            max_messages: 2,
            overflow: OverflowPolicy::DropNewest,
            ..Default::default()
        };
        let q = UpstreamQueue::new(limits);
        q.push(item(0));
        q.push(item(1));
        assert_eq!(q.push(item(2)), Pushed::Rejected);
        assert_eq!(payloads(&q), vec![0, 1]);
    }

    #[test]
    fn byte_limit_applies() {
        let w = item(0).msg.weight();
        let q = UpstreamQueue::new(QueueLimits {
            max_bytes: w * 2,
            ..Default::default()
        });
        for n in 0..5 {
            q.push(item(n));
        }
        assert_eq!(q.len(), 2);
        assert!(q.bytes() <= w * 2);
        assert_eq!(payloads(&q), vec![3, 4]);
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn the_shared_budget_caps_all_queues_together() {
        let w = item(0).msg.weight();
        let budget = Arc::new(Budget::new(w * 3));
        let counters = || {
            Some(QueueCounters {
                messages: IntGauge::new("m", "m").expect("gauge"),
                bytes: IntGauge::new("b", "b").expect("gauge"),
                stats: Arc::default(),
                budget: budget.clone(),
            })
        };
        let a = UpstreamQueue::with_gauges(QueueLimits::default(), counters());
        let b = UpstreamQueue::with_gauges(QueueLimits::default(), counters());
        a.push(item(0));
        a.push(item(1));
        b.push(item(2));
        assert_eq!(budget.used(), w * 3);
        // B is over the shared budget: it evicts its own oldest, never A's messages.
        assert_eq!(b.push(item(3)), Pushed::Evicted(1));
        assert_eq!(a.len(), 2);
        // A queue holding nothing cannot make room: it refuses.
        let c = UpstreamQueue::with_gauges(QueueLimits::default(), counters());
        assert_eq!(c.push(item(4)), Pushed::Rejected);
        assert_eq!(payloads(&b), vec![3]);
        assert_eq!(budget.used(), w * 2);
    }

    #[test]
    fn eviction_resolves_trackers() {
        let sink = Arc::new(AckSink::default());
        let q = UpstreamQueue::new(QueueLimits {
            max_messages: 1,
            ..Default::default()
        });
        let mut first = item(0);
        first.done.ack = Some(AckTracker::new(1, 1, sink.clone()));
        q.push(first);
        q.push(item(1));
        let mut out = Vec::new();
        sink.take(&mut out);
        assert_eq!(
            out,
            vec![(1, reason::QUOTA_EXCEEDED)],
            "a dropped message still answers the device, with a reason"
        );
    }
}
