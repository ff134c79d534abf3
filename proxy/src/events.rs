//! The live message feed behind the dashboard's `/api/stream`: the data path publishes one
//! [`MessageEvent`] per device publish (and per message delivered to a device) into a
//! bounded broadcast ring, and each viewer reads it at its own pace. A described device
//! publish then gets one [`OutcomeEvent`] per broker and step (written, acked, dropped with
//! its reason), keyed by the message event's id.
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
//!
//! Outcomes follow only the messages that were described: the session hands each broker's
//! queued copy a [`Trace`] (boxed, so an untraced message carries one null pointer) and the
//! upstream reports through it. Untraced messages — every message while nobody watches —
//! pay one `Option` check per hook and allocate nothing.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use tokio::sync::broadcast;

/// Events buffered per viewer before the slowest starts losing them (a described message
/// brings up to two outcome events per broker).
pub const CAPACITY: usize = 4096;

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

/// What happened to a message at one broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// In the broker's queue (the state a device publish is described in).
    Queued,
    /// Written to the broker's connection (for QoS 0 the last step).
    Written,
    /// Acknowledged by the broker (PUBACK, or PUBREC for QoS 2: the broker owns it then).
    Acked,
    /// Not delivered and never will be, with the reason `mqtt_proxy_messages_dropped_total`
    /// counts it under (`queue_full`, `shutdown`, `rejected`, `expired`, `too_large`, …).
    Dropped(&'static str),
    /// A broker's message handed to the device (direction [`Direction::ToDevice`]).
    Delivered,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Written => "written",
            Self::Acked => "acked",
            Self::Dropped(_) => "dropped",
            Self::Delivered => "delivered",
        }
    }
}

/// The feed's handle on one broker's copy of a described message: reports its outcomes.
#[derive(Debug, Clone)]
pub struct Trace {
    id: u64,
    broker: Arc<str>,
}

impl Trace {
    /// Publishes what just happened to this copy.
    pub fn report(&self, outcome: Outcome) {
        HUB.publish(Event::Outcome(OutcomeEvent {
            id: self.id,
            time_ms: crate::brokerset::now_ms(),
            broker: self.broker.clone(),
            outcome,
            rendered: std::sync::OnceLock::new(),
        }));
    }
}

/// A follow-up to the [`MessageEvent`] with the same `id`.
#[derive(Debug, Clone)]
pub struct OutcomeEvent {
    pub id: u64,
    /// Unix milliseconds.
    pub time_ms: u64,
    pub broker: Arc<str>,
    pub outcome: Outcome,
    /// Rendered once for all viewers, like [`MessageEvent::rendered`].
    pub rendered: std::sync::OnceLock<Bytes>,
}

/// What the feed carries.
#[derive(Debug)]
pub enum Event {
    Message(MessageEvent),
    Outcome(OutcomeEvent),
}

/// One message as the dashboard sees it. Cheap to build: topic and preview are `Bytes`
/// slices of the message itself (reference counts, no copy).
#[derive(Debug, Clone)]
pub struct MessageEvent {
    /// Unique per process; [`OutcomeEvent`]s refer to it.
    pub id: u64,
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
            id: HUB.next_id.fetch_add(1, Ordering::Relaxed),
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

/// A device's publish, about to be queued for `targets` (call only when [`Hub::active`]).
/// When it is described, returns the message event whose [`trace`](Described::trace) each
/// target's queued copy should carry; `None` when the second's budget is spent.
pub fn from_device<'a>(
    client_id: &str,
    msg: &crate::codec::Message,
    targets: impl Iterator<Item = &'a crate::brokerset::Broker>,
) -> Option<Described> {
    if !HUB.admit() {
        return None;
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
    let d = Described {
        id: e.id,
        brokers: e.brokers.iter().map(|(b, _)| b.clone()).collect(),
    };
    // Published before the copies are queued, so a viewer sees a refusal after the message.
    HUB.publish(Event::Message(e));
    Some(d)
}

/// A described device publish: hands out the traces of its copies.
pub struct Described {
    id: u64,
    brokers: Vec<Arc<str>>,
}

impl Described {
    /// The trace for the copy queued for `broker` (`None` for a broker it was not described
    /// for, e.g. one added in between).
    pub fn trace(&self, broker: &crate::brokerset::Broker) -> Option<Box<Trace>> {
        let label = broker.label();
        let b = self.brokers.iter().find(|b| &***b == label)?;
        Some(Box::new(Trace {
            id: self.id,
            broker: b.clone(),
        }))
    }
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
    HUB.publish(Event::Message(e));
}

pub struct Hub {
    tx: broadcast::Sender<Arc<Event>>,
    next_id: AtomicU64,
    viewers: AtomicUsize,
    /// The current tenth of a second (unix time / 100 ms) and the events admitted in it:
    /// the budget is spread over the second so a burst does not overrun the viewers' ring.
    window: AtomicU64,
    admitted: AtomicU32,
    skipped: AtomicU64,
}

/// The process-wide feed.
pub static HUB: LazyLock<Hub> = LazyLock::new(|| Hub {
    tx: broadcast::channel(CAPACITY).0,
    next_id: AtomicU64::new(1),
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
        let slot = crate::brokerset::now_ms() / 100;
        if self.window.swap(slot, Ordering::Relaxed) != slot {
            self.admitted.store(0, Ordering::Relaxed);
        }
        if self.admitted.fetch_add(1, Ordering::Relaxed) < MAX_PER_SECOND / 10 {
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

    pub fn publish(&self, e: Event) {
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
    pub rx: broadcast::Receiver<Arc<Event>>,
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
            HUB.publish(Event::Message(e));
        }
        match v.rx.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert!(n >= 10, "lagged {n}"),
            other => panic!("expected a lag report, got {other:?}"),
        }
        drop(v);
    }

    #[tokio::test]
    async fn outcomes_of_a_described_message_follow_it_keyed_by_its_id() {
        let mut v = HUB.subscribe();
        let m = MessageEvent::new(
            Direction::ToBrokers,
            "dev".into(),
            Bytes::from_static(b"t"),
            &Bytes::new(),
        );
        let id = m.id;
        let d = Described {
            id,
            brokers: vec!["a".into(), "b".into()],
        };
        HUB.publish(Event::Message(m));
        let (a, b) = (d.brokers[0].clone(), d.brokers[1].clone());
        let trace = |broker: Arc<str>| Trace { id, broker };
        trace(a).report(Outcome::Written);
        trace(b).report(Outcome::Dropped("queue_full"));
        let mut seen = Vec::new();
        // Other tests share the feed: skip their events (and any lag they cause).
        while seen.len() < 2 {
            match tokio::time::timeout(std::time::Duration::from_secs(5), v.rx.recv()).await {
                Ok(Ok(e)) => match &*e {
                    Event::Outcome(o) if o.id == id => seen.push((o.broker.clone(), o.outcome)),
                    _ => {}
                },
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                other => panic!("feed ended: {other:?}"),
            }
        }
        assert_eq!(
            seen,
            vec![
                (Arc::from("a"), Outcome::Written),
                (Arc::from("b"), Outcome::Dropped("queue_full")),
            ]
        );
    }
}
