//! Messages towards the device: from bidirectional brokers and the device's own publishes
//! looped back locally. Owns the device-side outbound QoS state, a backlog for when the
//! device's in-flight window is full (bounded by count *and* bytes, in-flight included),
//! the device's own limits (Maximum Packet Size, message expiry while waiting), and the
//! echo and retained-copy guards.
//!
//! The rule (README, "Loop prevention"): the device sees what it would see with one broker.
//! Its own publish reaches it once, produced here from the local subscription table (as a
//! broker would); every copy a bidirectional broker hands back because the proxy published
//! it there is an echo and is suppressed; a message other clients really sent twice is
//! delivered twice.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tracing::warn;

use crate::brokerset::Broker;
use crate::codec::{self, Message, Packet, Protocol};
use crate::loopguard::message_hash;
use crate::metrics::{RateLimit, METRICS};
use crate::qos::{Kept, Outbound};
use crate::subtable::{Grant, SubTable};
use crate::upstream::FromBroker;

static BACKLOG_LOG: RateLimit = RateLimit::new();

/// How long a retained topic delivered from one broker suppresses the same retained message
/// from the others.
const RETAINED_WINDOW: Duration = Duration::from_secs(10);
const RETAINED_CAP: usize = 10_000;
/// Filters remembered as unsubscribed on this connection (see [`ToDevice::unsubscribed`]).
const UNSUBSCRIBED_CAP: usize = 64;

/// Limits of one device's outbound path.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// In-flight QoS 1/2 window (the device's Receive Maximum, capped).
    pub window: u16,
    /// Messages waiting behind the window.
    pub backlog: usize,
    /// Bytes held for the device: in flight plus waiting.
    pub bytes: usize,
    /// The device's Maximum Packet Size: bigger PUBLISHes are dropped and counted.
    pub max_packet: usize,
}

/// A message waiting for the device, with the time it started waiting (message expiry).
#[derive(Debug, Clone)]
struct Waiting {
    msg: Message,
    since: Instant,
}

/// What a persistent session keeps for the device while it is away.
#[derive(Debug, Default)]
pub struct Pending {
    inflight: Vec<(Kept, Instant)>,
    backlog: Vec<Waiting>,
    bytes: usize,
}

impl Pending {
    pub fn len(&self) -> usize {
        self.inflight.len() + self.backlog.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

pub struct ToDevice {
    proto: Protocol,
    /// Tag: (bytes counted, when the message was first sent) for byte accounting and expiry.
    out: Outbound<(usize, Instant)>,
    backlog: VecDeque<Waiting>,
    limits: Limits,
    /// Bytes in flight plus in the backlog.
    bytes: usize,
    /// Retained deliveries per topic: (broker, payload hash, when), per SUBSCRIBE burst.
    retained: HashMap<String, (Arc<str>, u64, Instant)>,
    /// A persistent session also delivers broker messages no local filter matches: the
    /// broker kept them for the session (e.g. subscriptions the proxy did not know of).
    persistent: bool,
    unsubscribed: VecDeque<String>,
    /// Since when messages have been refused at the bound with no acknowledgement from the
    /// device in between: a device that stopped reading once the kernel's buffers took the
    /// bound is never stuck in a write, so the session disconnects it on this instead.
    full_since: Option<Instant>,
}

impl ToDevice {
    pub fn new(proto: Protocol, limits: Limits, persistent: bool) -> Self {
        Self {
            proto,
            out: Outbound::new(limits.window.max(1)),
            backlog: VecDeque::new(),
            limits: Limits {
                backlog: limits.backlog.max(1),
                ..limits
            },
            bytes: 0,
            retained: HashMap::new(),
            persistent,
            unsubscribed: VecDeque::new(),
            full_since: None,
        }
    }

    /// Since when messages have been refused at the bound without the device acknowledging
    /// anything; `None` while it keeps up.
    pub fn full_since(&self) -> Option<Instant> {
        self.full_since
    }

    /// Can `broker` hand a device publish on `topic` back to this device? Only a 3.1.1
    /// bidirectional broker serving a matching device subscription can (MQTT 5 upstreams are
    /// subscribed with No Local).
    pub fn expects_echo(broker: &Broker, topic: &str, subs: &SubTable) -> bool {
        broker.config.bidirectional
            && broker.config.mqtt_version != crate::broker::MqttVersion::V5
            && broker.rule.delivers(topic)
            && subs.matches_unshared(topic)
    }

    /// The device's own publish, delivered back to it when it is subscribed (what a single
    /// broker would do). Live messages arrive with retain cleared unless the subscription
    /// asked for Retain As Published.
    pub fn loopback(&mut self, msg: &Message, subs: &SubTable, wbuf: &mut BytesMut) {
        if subs.is_empty() {
            return;
        }
        if let Some(g) = subs.grant(msg.topic_str(), true) {
            let mut m = msg.clone();
            m.retain = m.retain && g.retain_as_published;
            self.deliver(m, &g, wbuf);
        }
    }

    /// A message from a bidirectional broker.
    pub fn offer(&mut self, from: FromBroker, subs: &SubTable, wbuf: &mut BytesMut) {
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
        if msg.retain && self.retained_copy(broker.id(), &msg) {
            // Each bidirectional broker holds the same retained message; a device with one
            // broker would get it once per subscription.
            METRICS
                .loop_suppressed
                .with_label_values(&[broker.label(), "retained_copy"])
                .inc();
            return;
        }
        let grant = match subs.grant(msg.topic_str(), false) {
            Some(g) => g,
            // The broker kept this for the session: deliver it as it came.
            None if self.persistent && !self.was_unsubscribed(msg.topic_str()) => Grant {
                qos: msg.qos,
                retain_as_published: true,
                ids: Vec::new(),
            },
            // Unsubscribed while the message was on its way.
            None => return,
        };
        METRICS.messages_to_device.inc();
        self.deliver(msg, &grant, wbuf);
    }

    /// Is this retained message a copy of one another broker already delivered in this
    /// SUBSCRIBE burst? A second retained message from the *same* broker is a live update
    /// (Retain As Published) and is delivered.
    fn retained_copy(&mut self, broker: &str, msg: &Message) -> bool {
        let now = Instant::now();
        if self.retained.len() >= RETAINED_CAP {
            self.retained
                .retain(|_, e| now.duration_since(e.2) < RETAINED_WINDOW);
        }
        let hash = message_hash(&msg.topic, &msg.payload);
        match self.retained.get(msg.topic_str()) {
            Some((b, h, at))
                if now.duration_since(*at) < RETAINED_WINDOW && &**b != broker && *h == hash =>
            {
                true
            }
            _ => {
                self.retained
                    .insert(msg.topic_str().to_owned(), (Arc::from(broker), hash, now));
                false
            }
        }
    }

    /// A new SUBSCRIBE starts a new round of retained deliveries.
    pub fn subscribed(&mut self) {
        self.retained.clear();
    }

    /// The device unsubscribed `filter`: a persistent session stops delivering unmatched
    /// broker messages on it (they are in flight from before the UNSUBSCRIBE).
    pub fn unsubscribed(&mut self, filter: &str) {
        if self.unsubscribed.len() >= UNSUBSCRIBED_CAP {
            self.unsubscribed.pop_front();
        }
        self.unsubscribed.push_back(filter.to_owned());
    }

    fn was_unsubscribed(&self, topic: &str) -> bool {
        self.unsubscribed
            .iter()
            .any(|f| crate::router::matches(crate::router::match_part(f), topic))
    }

    fn deliver(&mut self, mut msg: Message, grant: &Grant, wbuf: &mut BytesMut) {
        msg.qos = msg.qos.min(grant.qos);
        if self.proto == Protocol::V5 && !grant.ids.is_empty() {
            let mut p = msg.props.as_deref().cloned().unwrap_or_default();
            p.subscription_identifiers = grant.ids.clone();
            msg.props = Some(Arc::new(p));
        }
        self.send(msg, wbuf);
    }

    fn send(&mut self, msg: Message, wbuf: &mut BytesMut) {
        if msg.qos == 0 {
            self.write(&msg, 0, false, wbuf);
            return;
        }
        let weight = msg.weight();
        if self.out.has_room()
            && self.backlog.is_empty()
            && self.bytes + weight <= self.limits.bytes
        {
            self.publish(msg, weight, Instant::now(), wbuf);
            return;
        }
        while !self.backlog.is_empty()
            && (self.backlog.len() >= self.limits.backlog
                || self.bytes + weight > self.limits.bytes)
        {
            if let Some(old) = self.backlog.pop_front() {
                self.bytes -= old.msg.weight();
            }
            self.dropped("device_backlog_full");
            self.full_since.get_or_insert_with(Instant::now);
        }
        if self.bytes + weight > self.limits.bytes {
            // In-flight messages alone fill the byte bound: refuse the new one.
            self.dropped("device_backlog_full");
            self.full_since.get_or_insert_with(Instant::now);
            return;
        }
        self.bytes += weight;
        self.backlog.push_back(Waiting {
            msg,
            since: Instant::now(),
        });
    }

    fn dropped(&self, reason: &str) {
        METRICS.dropped.with_label_values(&["device", reason]).inc();
        if let Some(held) = BACKLOG_LOG.allow(10) {
            warn!(
                reason,
                suppressed = held,
                "message for a device dropped (mqtt_proxy_messages_dropped_total{{broker=\"device\"}})"
            );
        }
    }

    /// Encodes a PUBLISH unless it exceeds the device's Maximum Packet Size (MQTT 5
    /// §3.1.2.11.4: the server must not send it; dropped and counted). `false` when dropped.
    fn write(&self, msg: &Message, pkid: u16, dup: bool, wbuf: &mut BytesMut) -> bool {
        let start = wbuf.len();
        codec::encode_publish(self.proto, pkid, dup, msg, None, msg.qos, wbuf);
        if wbuf.len() - start > self.limits.max_packet {
            wbuf.truncate(start);
            self.dropped("device_packet_too_large");
            return false;
        }
        true
    }

    fn publish(&mut self, mut msg: Message, weight: usize, since: Instant, wbuf: &mut BytesMut) {
        if !remaining_expiry(&mut msg, since) {
            self.dropped("expired");
            return;
        }
        let pkid = self.out.peek_pkid();
        if self.write(&msg, pkid, false, wbuf) {
            let qos = msg.qos;
            self.bytes += weight;
            self.out.publish(msg, qos, (weight, since));
        }
    }

    fn pump(&mut self, wbuf: &mut BytesMut) {
        while self.out.has_room() {
            let Some(w) = self.backlog.pop_front() else {
                break;
            };
            let weight = w.msg.weight();
            self.bytes -= weight;
            self.publish(w.msg, weight, w.since, wbuf);
        }
    }

    fn settled(&mut self, tag: Option<(usize, Instant)>) {
        if let Some((w, _)) = tag {
            self.bytes -= w;
            self.full_since = None;
        }
    }

    pub fn on_puback(&mut self, pkid: u16, wbuf: &mut BytesMut) {
        let tag = self.out.on_puback(pkid).ok().flatten();
        self.settled(tag);
        self.pump(wbuf);
    }

    pub fn on_pubrec(&mut self, pkid: u16, wbuf: &mut BytesMut) {
        if let Ok(tag) = self.out.on_pubrec(pkid) {
            self.settled(tag);
            let _ = codec::write(self.proto, &Packet::PubRel { pkid }, wbuf);
        }
    }

    pub fn on_pubcomp(&mut self, pkid: u16, wbuf: &mut BytesMut) {
        let _ = self.out.on_pubcomp(pkid);
        self.pump(wbuf);
    }

    /// Bytes held for the device (in flight and waiting).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Everything not yet acknowledged, for a persistent session that outlives this
    /// connection.
    pub fn keep(&mut self) -> Pending {
        let inflight = self
            .out
            .take_inflight()
            .into_iter()
            .map(|(k, tag)| (k, tag.map_or_else(Instant::now, |t| t.1)))
            .collect();
        let backlog: Vec<Waiting> = self.backlog.drain(..).collect();
        let bytes = std::mem::take(&mut self.bytes);
        Pending {
            inflight,
            backlog,
            bytes,
        }
    }

    /// Resumes a kept session: in-flight messages go out again under their packet ids with
    /// DUP (MQTT §4.4), released QoS 2 ones as PUBREL, then the backlog.
    pub fn resume(&mut self, p: Pending, wbuf: &mut BytesMut) {
        for (k, since) in p.inflight {
            if k.released {
                // Past PUBREC: no payload held, nothing counted.
                let _ = codec::write(self.proto, &Packet::PubRel { pkid: k.pkid }, wbuf);
                self.out.restore(k, (0, since));
                continue;
            }
            let weight = k.msg.weight();
            let mut msg = k.msg.clone();
            if !remaining_expiry(&mut msg, since) {
                self.dropped("expired");
                continue;
            }
            if !self.write(&msg, k.pkid, true, wbuf) {
                continue;
            }
            self.bytes += weight;
            self.out.restore(k, (weight, since));
        }
        for w in p.backlog {
            self.bytes += w.msg.weight();
            self.backlog.push_back(w);
        }
        self.pump(wbuf);
    }
}

/// Applies MQTT 5 message expiry to a message that waited since `since`: `false` when it
/// expired, otherwise its Message Expiry Interval is lowered by the time waited (§3.3.2.3.3).
fn remaining_expiry(msg: &mut Message, since: Instant) -> bool {
    let Some(expiry) = msg.props.as_ref().and_then(|p| p.message_expiry_interval) else {
        return true;
    };
    let waited = since.elapsed().as_secs();
    if waited >= u64::from(expiry) {
        return false;
    }
    if waited > 0 {
        let mut p = msg.props.as_deref().cloned().unwrap_or_default();
        p.message_expiry_interval = Some(expiry - waited as u32);
        msg.props = Some(Arc::new(p));
    }
    true
}

#[cfg(test)]
#[path = "delivery_tests.rs"]
mod tests;
