//! Messages towards the device: from bidirectional brokers and the device's own publishes
//! looped back locally. Owns the device-side outbound QoS state, a bounded backlog for when
//! the device's in-flight window is full, and the echo guard.
//!
//! The rule (README, "Loop prevention"): the device sees what it would see with one broker.
//! Its own publish reaches it once, produced here from the local subscription table (as a
//! broker would); every copy a bidirectional broker hands back because the proxy published
//! it there is an echo and is suppressed; a message other clients really sent twice is
//! delivered twice.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tracing::warn;

use crate::brokerset::Broker;
use crate::codec::{self, Message, Packet, Protocol, SubFilter};
use crate::metrics::{RateLimit, METRICS};
use crate::qos::Outbound;
use crate::router;
use crate::upstream::FromBroker;

static BACKLOG_LOG: RateLimit = RateLimit::new();

pub struct ToDevice {
    proto: Protocol,
    out: Outbound<()>,
    backlog: VecDeque<Message>,
    cap: usize,
    /// Topics whose retained message was delivered recently (per SUBSCRIBE burst).
    retained: HashMap<String, Instant>,
}

/// How long a retained topic delivered from one broker suppresses the same topic's retained
/// copies from the others.
const RETAINED_WINDOW: Duration = Duration::from_secs(10);
const RETAINED_CAP: usize = 10_000;

/// The QoS a device receives `topic` at, given its subscriptions: the highest granted QoS
/// among matching filters (MQTT §3.3.5), or `None` when nothing matches.
pub fn granted_qos(subs: &[SubFilter], topic: &str, own: bool) -> Option<(u8, bool)> {
    subs.iter()
        .filter(|s| router::matches(&s.filter, topic) && !(own && s.no_local))
        .map(|s| (s.qos, s.retain_as_published))
        .reduce(|a, b| (a.0.max(b.0), a.1 || b.1))
}

impl ToDevice {
    pub fn new(proto: Protocol, window: u16, cap: usize) -> Self {
        Self {
            proto,
            out: Outbound::new(window.max(1)),
            backlog: VecDeque::new(),
            cap: cap.max(1),
            retained: HashMap::new(),
        }
    }

    /// Can `broker` hand a device publish on `topic` back to this device? Only a 3.1.1
    /// bidirectional broker serving a matching device subscription can (MQTT 5 upstreams are
    /// subscribed with No Local).
    pub fn expects_echo(broker: &Broker, topic: &str, subs: &[SubFilter]) -> bool {
        broker.config.bidirectional
            && broker.config.mqtt_version != crate::broker::MqttVersion::V5
            && broker.rule.delivers(topic)
            && granted_qos(subs, topic, false).is_some()
    }

    /// The device's own publish, delivered back to it when it is subscribed (what a single
    /// broker would do). Live messages arrive with retain cleared unless the subscription
    /// asked for Retain As Published.
    pub fn loopback(&mut self, msg: &Message, subs: &[SubFilter], wbuf: &mut BytesMut) {
        if subs.is_empty() {
            return;
        }
        if let Some((qos, rap)) = granted_qos(subs, msg.topic_str(), true) {
            let mut m = msg.clone();
            m.qos = m.qos.min(qos);
            m.retain = m.retain && rap;
            self.send(m, wbuf);
        }
    }

    /// A message from a bidirectional broker.
    pub fn offer(&mut self, from: FromBroker, subs: &[SubFilter], wbuf: &mut BytesMut) {
        let FromBroker { broker, mut msg } = from;
        let Some(topic) = broker.rule.inbound_topic(msg.topic_str()) else {
            return;
        };
        if !broker.rule.delivers(topic) {
            return;
        }
        if broker.rule.topic_prefix.is_some() {
            msg.topic = Bytes::copy_from_slice(topic.as_bytes());
        }
        if msg.retain && !self.first_retained(msg.topic_str()) {
            // Each bidirectional broker holds the same retained message; a device with one
            // broker would get it once per subscription.
            METRICS
                .loop_suppressed
                .with_label_values(&[broker.label(), "retained_copy"])
                .inc();
            return;
        }
        let Some((qos, _)) = granted_qos(subs, msg.topic_str(), false) else {
            // Unsubscribed while the message was on its way.
            return;
        };
        msg.qos = msg.qos.min(qos);
        METRICS.messages_to_device.inc();
        self.send(msg, wbuf);
    }

    fn first_retained(&mut self, topic: &str) -> bool {
        let now = Instant::now();
        if self.retained.len() >= RETAINED_CAP {
            self.retained
                .retain(|_, at| now.duration_since(*at) < RETAINED_WINDOW);
        }
        match self.retained.get(topic) {
            Some(at) if now.duration_since(*at) < RETAINED_WINDOW => false,
            _ => {
                self.retained.insert(topic.to_string(), now);
                true
            }
        }
    }

    /// A new SUBSCRIBE starts a new round of retained deliveries.
    pub fn subscribed(&mut self) {
        self.retained.clear();
    }

    fn send(&mut self, msg: Message, wbuf: &mut BytesMut) {
        if msg.qos == 0 {
            codec::encode_publish(self.proto, 0, false, &msg, None, 0, wbuf);
        } else if self.out.has_room() && self.backlog.is_empty() {
            let pkid = self.out.peek_pkid();
            codec::encode_publish(self.proto, pkid, false, &msg, None, msg.qos, wbuf);
            let qos = msg.qos;
            self.out.publish(msg, qos, ());
        } else {
            if self.backlog.len() >= self.cap {
                self.backlog.pop_front();
                METRICS
                    .dropped
                    .with_label_values(&["device", "device_backlog_full"])
                    .inc();
                if let Some(held) = BACKLOG_LOG.allow(10) {
                    warn!(
                        suppressed = held,
                        "device is not acknowledging fast enough: oldest message dropped"
                    );
                }
            }
            self.backlog.push_back(msg);
        }
    }

    fn pump(&mut self, wbuf: &mut BytesMut) {
        while self.out.has_room() {
            let Some(msg) = self.backlog.pop_front() else {
                break;
            };
            let pkid = self.out.peek_pkid();
            codec::encode_publish(self.proto, pkid, false, &msg, None, msg.qos, wbuf);
            let qos = msg.qos;
            self.out.publish(msg, qos, ());
        }
    }

    pub fn on_puback(&mut self, pkid: u16, wbuf: &mut BytesMut) {
        let _ = self.out.on_puback(pkid);
        self.pump(wbuf);
    }

    pub fn on_pubrec(&mut self, pkid: u16, wbuf: &mut BytesMut) {
        if self.out.on_pubrec(pkid).is_ok() {
            let _ = codec::write(self.proto, &Packet::PubRel { pkid }, wbuf);
        }
    }

    pub fn on_pubcomp(&mut self, pkid: u16, wbuf: &mut BytesMut) {
        let _ = self.out.on_pubcomp(pkid);
        self.pump(wbuf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(f: &str, qos: u8) -> SubFilter {
        SubFilter::new(f, qos)
    }

    #[test]
    fn granted_qos_is_the_highest_match() {
        let subs = vec![sub("a/#", 0), sub("a/b", 2), sub("c", 1)];
        assert_eq!(granted_qos(&subs, "a/b", false).map(|g| g.0), Some(2));
        assert_eq!(granted_qos(&subs, "a/x", false).map(|g| g.0), Some(0));
        assert_eq!(granted_qos(&subs, "z", false), None);
        let mut nl = sub("a/b", 1);
        nl.no_local = true;
        assert_eq!(
            granted_qos(&[nl], "a/b", true),
            None,
            "No Local hides the device's own publish"
        );
    }

    #[test]
    fn loopback_downgrades_qos_and_clears_retain() {
        let mut d = ToDevice::new(Protocol::V4, 10, 10);
        let mut w = BytesMut::new();
        d.loopback(
            &Message::new("a/b", &b"x"[..], 2, true),
            &[sub("a/#", 1)],
            &mut w,
        );
        match codec::read(Protocol::V4, &mut w, 1024)
            .expect("read")
            .expect("packet")
        {
            Packet::Publish { msg, pkid, .. } => {
                assert_eq!(msg.qos, 1);
                assert!(!msg.retain);
                assert_ne!(pkid, 0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backlog_waits_for_window_and_is_bounded() {
        let mut d = ToDevice::new(Protocol::V4, 1, 2);
        let mut w = BytesMut::new();
        let subs = [sub("#", 1)];
        for i in 0..4u8 {
            d.loopback(&Message::new("t", vec![i], 1, false), &subs, &mut w);
        }
        assert_eq!(
            d.backlog.len(),
            2,
            "bounded: the oldest waiting message was dropped"
        );
        let first = match codec::read(Protocol::V4, &mut w, 1024).expect("read") {
            Some(Packet::Publish { pkid, msg, .. }) => (pkid, msg.payload[0]),
            other => panic!("{other:?}"),
        };
        assert_eq!(first.1, 0);
        d.on_puback(first.0, &mut w);
        match codec::read(Protocol::V4, &mut w, 1024).expect("read") {
            Some(Packet::Publish { msg, .. }) => assert_eq!(msg.payload[0], 2),
            other => panic!("{other:?}"),
        }
    }
}
