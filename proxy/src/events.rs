//! The live message feed behind the dashboard's `/api/stream`: the data path publishes one
//! [`MessageEvent`] per device publish (and per message delivered to a device) into a
//! bounded broadcast ring, and each viewer reads it at its own pace.
//!
//! Why a broadcast ring: forwarding must never wait for a viewer. A viewer that falls more
//! than [`CAPACITY`] events behind loses the oldest ones (tokio reports how many, per
//! viewer, and the stream tells the viewer), and with no viewer connected the data path pays
//! one relaxed atomic load per message ([`Hub::active`]) and builds nothing.
//!
//! The feed also carries at most [`MAX_PER_SECOND`] message events a second: beyond that
//! the data path counts the message instead of describing it ([`Hub::skipped`], shown to
//! viewers as "not shown"). A person cannot read more, the dashboard keeps the last 500,
//! and it keeps the cost of watching a busy proxy flat however fast it forwards.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use tokio::sync::broadcast;

/// Events buffered per viewer before the slowest starts losing them.
pub const CAPACITY: usize = 1024;

/// How many payload bytes a viewer sees (never more: previews, not copies).
pub const PREVIEW_BYTES: usize = 256;

/// Message events the feed carries per second at most (the rest are counted).
pub const MAX_PER_SECOND: u32 = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Published by a device, forwarded to brokers.
    ToBrokers,
    /// Received from a bidirectional broker, delivered to a device.
    ToDevice,
}

/// What happened to a message at one broker when the event was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Queued,
    Dropped,
    Delivered,
}

/// One message as the dashboard sees it. Cheap to build: topic and preview are `Bytes`
/// slices of the message itself (reference counts, no copy).
#[derive(Debug, Clone)]
pub struct MessageEvent {
    /// Unix milliseconds.
    pub time_ms: u64,
    pub direction: Direction,
    pub client_id: Arc<str>,
    pub topic: Bytes,
    pub size: usize,
    pub qos: u8,
    pub retain: bool,
    pub preview: Bytes,
    /// Broker label and what happened there (for `ToDevice`: the broker it came from).
    pub brokers: Vec<(Arc<str>, Outcome)>,
    /// The event as the stream sends it, rendered by the first viewer that needs it and
    /// shared by the others (one serialization per event, not one per viewer).
    pub rendered: std::sync::OnceLock<Bytes>,
}

impl MessageEvent {
    /// An event for `payload`; the preview is its first [`PREVIEW_BYTES`].
    pub fn new(direction: Direction, client_id: Arc<str>, topic: Bytes, payload: &Bytes) -> Self {
        Self {
            time_ms: crate::brokerset::now_ms(),
            direction,
            client_id,
            topic,
            size: payload.len(),
            qos: 0,
            retain: false,
            preview: payload.slice(..payload.len().min(PREVIEW_BYTES)),
            brokers: Vec::new(),
            rendered: std::sync::OnceLock::new(),
        }
    }
}

/// A device's publish, queued for `targets` (call only when [`Hub::active`]).
pub fn from_device<'a>(
    client_id: &str,
    msg: &crate::codec::Message,
    targets: impl Iterator<Item = &'a crate::brokerset::Broker>,
) {
    if !HUB.admit() {
        return;
    }
    let mut e = MessageEvent::new(
        Direction::ToBrokers,
        client_id.into(),
        msg.topic.clone(),
        &msg.payload,
    );
    e.qos = msg.qos;
    e.retain = msg.retain;
    e.brokers = targets
        .map(|b| (Arc::from(b.label()), Outcome::Queued))
        .collect();
    HUB.publish(e);
}

/// A message from `broker` on its way to a device (call only when [`Hub::active`]).
pub fn to_device(client_id: &str, broker: &crate::brokerset::Broker, msg: &crate::codec::Message) {
    if !HUB.admit() {
        return;
    }
    let mut e = MessageEvent::new(
        Direction::ToDevice,
        client_id.into(),
        msg.topic.clone(),
        &msg.payload,
    );
    e.qos = msg.qos;
    e.retain = msg.retain;
    e.brokers = vec![(Arc::from(broker.label()), Outcome::Delivered)];
    HUB.publish(e);
}

pub struct Hub {
    tx: broadcast::Sender<Arc<MessageEvent>>,
    viewers: AtomicUsize,
    /// The current one-second window (unix seconds) and the events admitted in it.
    window: AtomicU64,
    admitted: AtomicU32,
    skipped: AtomicU64,
}

/// The process-wide feed.
pub static HUB: LazyLock<Hub> = LazyLock::new(|| Hub {
    tx: broadcast::channel(CAPACITY).0,
    viewers: AtomicUsize::new(0),
    window: AtomicU64::new(0),
    admitted: AtomicU32::new(0),
    skipped: AtomicU64::new(0),
});

impl Hub {
    /// Whether anyone is watching: the data path checks this before building an event.
    #[inline]
    pub fn active(&self) -> bool {
        self.viewers.load(Ordering::Relaxed) > 0
    }

    /// Whether one more message event fits in this second's budget; counts it otherwise.
    pub fn admit(&self) -> bool {
        let sec = crate::brokerset::now_ms() / 1000;
        if self.window.swap(sec, Ordering::Relaxed) != sec {
            self.admitted.store(0, Ordering::Relaxed);
        }
        if self.admitted.fetch_add(1, Ordering::Relaxed) < MAX_PER_SECOND {
            true
        } else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Messages not described in the feed because of [`MAX_PER_SECOND`], since start.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    pub fn publish(&self, e: MessageEvent) {
        // No receiver left is not an error: the viewer just went away.
        let _ = self.tx.send(Arc::new(e));
    }

    /// A new viewer; the feed stays active while the returned guard lives.
    pub fn subscribe(&self) -> Viewer {
        self.viewers.fetch_add(1, Ordering::Relaxed);
        Viewer {
            rx: self.tx.subscribe(),
        }
    }
}

/// One viewer's end of the feed.
pub struct Viewer {
    pub rx: broadcast::Receiver<Arc<MessageEvent>>,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        HUB.viewers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slow_viewer_loses_the_oldest_and_is_told_how_many() {
        let mut v = HUB.subscribe();
        assert!(HUB.active());
        let payload = Bytes::from(vec![b'x'; 1000]);
        for _ in 0..CAPACITY + 10 {
            let e = MessageEvent::new(
                Direction::ToBrokers,
                "dev".into(),
                Bytes::from_static(b"t"),
                &payload,
            );
            assert_eq!(e.preview.len(), PREVIEW_BYTES);
            HUB.publish(e);
        }
        match v.rx.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert!(n >= 10, "lagged {n}"),
            other => panic!("expected a lag report, got {other:?}"),
        }
        drop(v);
    }
}
