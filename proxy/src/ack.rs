//! What must happen once a queued message is finished with: the ack tracker that lets the
//! session answer the device according to the ack policy (with the broker's or the proxy's
//! reason code when it was not delivered), the spool record to acknowledge, and the live
//! feed's trace of a described message (see [`crate::events`]).

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::events::{Outcome, Trace};
use crate::spool::SpoolRef;

/// MQTT 5 PUBACK/PUBREC reason codes the proxy itself gives a device whose message it
/// could not deliver (a broker's own negative code is passed on as it is).
pub mod reason {
    /// Unspecified error: e.g. the message expired while queued.
    pub const UNSPECIFIED: u8 = 0x80;
    /// Implementation specific error: the broker cannot take it (too large, poison).
    pub const IMPLEMENTATION_SPECIFIC: u8 = 0x83;
    /// Quota exceeded: evicted or refused by the queue's limits.
    pub const QUOTA_EXCEEDED: u8 = 0x97;
}

/// Drop reasons the live feed reports, as `mqtt_proxy_messages_dropped_total` labels them
/// (the upstream adds its own: `expired`, `too_large`, `topic_too_long`, `poison`).
pub mod dropped {
    pub const QUEUE_FULL: &str = "queue_full";
    pub const SHUTDOWN: &str = "shutdown";
    pub const REJECTED: &str = "rejected";
}

/// Where a device's PUBACK/PUBREC waits for broker acknowledgements (policies `any`/`all`).
/// Each tracker fires once, when its count reaches zero, with the first failure reason
/// any broker (or the proxy) gave, or 0 when every resolution was a success.
pub struct AckTracker {
    remaining: AtomicUsize,
    pkid: u16,
    code: AtomicU8,
    sink: Arc<AckSink>,
}

impl AckTracker {
    pub fn new(pkid: u16, needed: usize, sink: Arc<AckSink>) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(needed.max(1)),
            pkid,
            code: AtomicU8::new(0),
            sink,
        })
    }
    /// One broker took the message (or it was dropped: the device is answered either way so
    /// it never stalls on a message that can no longer be delivered; drops are counted).
    pub fn resolve(&self) {
        let prev = self
            .remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .unwrap_or(0);
        if prev == 1 {
            self.sink.push(self.pkid, self.code.load(Ordering::Acquire));
        }
    }

    /// One broker refused the message or it could not be delivered: `code` (>= 0x80) is
    /// what an MQTT 5 device is told, unless an earlier failure already set one.
    pub fn reject(&self, code: u8) {
        let _ = self
            .code
            .compare_exchange(0, code.max(0x80), Ordering::AcqRel, Ordering::Acquire);
        self.resolve();
    }
}

/// Packet ids whose device acknowledgement is due, each with its reason code (0 success).
/// Bounded by the 65,535 packet ids a device can have in flight.
#[derive(Default)]
pub struct AckSink {
    ready: Mutex<Vec<(u16, u8)>>,
    pub notify: Notify,
}

impl AckSink {
    fn push(&self, pkid: u16, code: u8) {
        if let Ok(mut v) = self.ready.lock() {
            v.push((pkid, code));
        }
        self.notify.notify_one();
    }
    /// The acknowledgements due: (packet id, reason code).
    pub fn take(&self, out: &mut Vec<(u16, u8)>) {
        if let Ok(mut v) = self.ready.lock() {
            out.append(&mut v);
        }
    }
}

/// What must happen once a message is finished with: answer the device (ack policies
/// `any`/`all`) and mark it done in the disk spool.
#[derive(Default, Clone)]
pub struct Completion {
    pub ack: Option<Arc<AckTracker>>,
    pub spool: Option<SpoolRef>,
    /// When the device's PUBLISH arrived, for `mqtt_proxy_forward_latency_seconds`.
    pub received: Option<std::time::Instant>,
    /// Set only for messages the live feed describes: `None` (no allocation, one pointer
    /// check per hook) for every message while nobody watches.
    pub trace: Option<Box<Trace>>,
}

impl Completion {
    /// Tells the live feed what just happened to this message at its broker, if it is one
    /// the feed describes.
    #[inline]
    pub fn report(&self, outcome: Outcome) {
        if let Some(t) = &self.trace {
            t.report(outcome);
        }
    }
    /// Delivered (acknowledged, or written at QoS 0) or dropped by policy.
    pub fn complete(self) {
        if let Some(a) = self.ack {
            a.resolve();
        }
        if let Some(s) = self.spool {
            s.ack();
        }
    }
    /// [`Self::complete`] for a message the broker took: records the forwarding latency
    /// (an `Instant` read and a lock-free histogram update, nothing allocated).
    pub fn delivered(self, latency: &prometheus::Histogram) {
        if let Some(t) = self.received {
            latency.observe(t.elapsed().as_secs_f64());
        }
        self.complete();
    }
    /// Not delivered and never will be (refused by the broker, too large, expired): the
    /// device is told `code` where it still waits, the spool forgets the message, and the
    /// live feed hears `why` (the `mqtt_proxy_messages_dropped_total` reason).
    pub fn fail(self, code: u8, why: &'static str) {
        self.report(Outcome::Dropped(why));
        if let Some(a) = self.ack {
            a.reject(code);
        }
        if let Some(s) = self.spool {
            s.ack();
        }
    }
    /// Not delivered, but kept in the spool for the next run (shutdown): the device is
    /// answered so it does not wait, and the spool record stays live.
    pub fn abandon(self) {
        if let Some(a) = self.ack {
            a.resolve();
        }
    }
    pub fn is_spooled(&self) -> bool {
        self.spool.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_fires_once_after_all_resolutions() {
        let sink = Arc::new(AckSink::default());
        let t = AckTracker::new(9, 2, sink.clone());
        let mut out = Vec::new();
        t.resolve();
        sink.take(&mut out);
        assert!(out.is_empty());
        t.resolve();
        t.resolve();
        sink.take(&mut out);
        assert_eq!(out, vec![(9, 0)]);
    }

    #[test]
    fn a_rejection_reaches_the_device_with_its_code() {
        let sink = Arc::new(AckSink::default());
        let t = AckTracker::new(4, 2, sink.clone());
        let mut out = Vec::new();
        t.reject(0x87);
        t.resolve();
        sink.take(&mut out);
        assert_eq!(
            out,
            vec![(4, 0x87)],
            "one broker's refusal is not a success"
        );
        let t = AckTracker::new(5, 1, sink.clone());
        Completion {
            ack: Some(t),
            spool: None,
            received: None,
            trace: None,
        }
        .fail(reason::QUOTA_EXCEEDED, dropped::QUEUE_FULL);
        sink.take(&mut out);
        assert_eq!(out[1], (5, 0x97));
    }
}
