//! A device PUBLISH: topic aliases resolved (MQTT 5, client → proxy), the topic checked,
//! QoS 2 retransmissions recognised, the local loopback, the fan-out to every broker whose
//! rules accept it, and the device's PUBACK/PUBREC (now, or when brokers confirm).

use bytes::{Bytes, BytesMut};

use super::{End, Session};
use crate::codec::{self, Message, Packet, Protocol};
use crate::config::AckPolicy;
use crate::delivery::ToDevice;
use crate::metrics::METRICS;
use crate::queue::{AckTracker, Queued};
use crate::router;
use crate::upstream::{FromBroker, UpstreamHandle};

impl Session {
    pub(super) fn publish(
        &mut self,
        pkid: u16,
        mut msg: Message,
        topic_alias: Option<u16>,
        wbuf: &mut BytesMut,
    ) -> Result<(), End> {
        if let Some(alias) = topic_alias {
            self.resolve_alias(alias, &mut msg, wbuf)?;
        }
        if !router::valid_topic(msg.topic_str()) {
            METRICS.malformed_packets.inc();
            return Err(End::Lost(format!(
                "invalid topic name {:?}",
                msg.topic_str()
            )));
        }
        METRICS.messages_received.inc();
        self.info.received();
        let qos = msg.qos;
        if let Some(code) = self.over_limit(pkid, qos, msg.topic_str(), wbuf)? {
            self.deny_publish(pkid, qos, code, wbuf);
            return Ok(());
        }
        if !self
            .shared
            .auth
            .may_publish(&mut self.grant, msg.topic_str())
        {
            self.deny_publish(pkid, qos, codec::NOT_AUTHORIZED, wbuf);
            return Ok(());
        }
        if qos == 2 && !self.inbound.on_publish_qos2(pkid) {
            // Retransmission before PUBREL: already forwarded; acknowledge again.
            if !self.deferred.contains_key(&pkid) {
                let _ = codec::write(self.proto, &Packet::PubRec { pkid, code: 0 }, wbuf);
            }
            return Ok(());
        }
        self.to_device.loopback(&msg, &self.subs, wbuf);
        let deferred = self.fan_out(pkid, msg);
        match (qos, deferred) {
            (1, false) => codec::write(self.proto, &Packet::PubAck { pkid, code: 0 }, wbuf),
            (2, false) => codec::write(self.proto, &Packet::PubRec { pkid, code: 0 }, wbuf),
            _ => Ok(()),
        }
        .map_err(|e| End::Lost(e.to_string()))
    }

    /// Per-device limits (`crate::limits`): `Some(reason)` drops the publish, `Err` closes
    /// the connection (too many in flight, or over the rate with action `disconnect`).
    fn over_limit(
        &mut self,
        pkid: u16,
        qos: u8,
        topic: &str,
        wbuf: &mut BytesMut,
    ) -> Result<Option<u8>, End> {
        let limits = &self.shared.opts.limits;
        if !limits.topic_ok(topic) {
            crate::limits::hit("topic", "drop");
            return Ok(Some(codec::TOPIC_NAME_INVALID));
        }
        let retransmit = qos == 2 && self.inbound.is_awaiting(pkid);
        let in_flight = self.deferred.len() + self.inbound.pending();
        if qos > 0 && !retransmit && in_flight >= usize::from(self.shared.opts.receive_maximum) {
            crate::limits::hit("inflight", "disconnect");
            self.disconnect_with(0x93, wbuf);
            return Err(End::Lost(format!(
                "more than {in_flight} publishes in flight"
            )));
        }
        if !retransmit && !self.bucket.take(std::time::Instant::now()) {
            if limits.rate_action == crate::limits::RateAction::Disconnect {
                crate::limits::hit("publish_rate", "disconnect");
                self.disconnect_with(0x96, wbuf);
                return Err(End::Lost("publish rate exceeded".into()));
            }
            crate::limits::hit("publish_rate", "drop");
            return Ok(Some(codec::QUOTA_EXCEEDED));
        }
        Ok(None)
    }

    /// A PUBLISH the device's ACL refuses is dropped (the authorizer counted it). MQTT 5
    /// says why in PUBACK/PUBREC (0x87); 3.1.1 cannot, so it gets the normal ack, as
    /// mosquitto does, and its QoS 2 flow completes on PUBREL.
    fn deny_publish(&mut self, pkid: u16, qos: u8, v5_code: u8, wbuf: &mut BytesMut) {
        let v5 = self.proto == Protocol::V5;
        let code = if v5 { v5_code } else { 0 };
        let ack = match qos {
            1 => Packet::PubAck { pkid, code },
            2 => {
                if !v5 {
                    self.inbound.on_publish_qos2(pkid);
                }
                Packet::PubRec { pkid, code }
            }
            _ => return,
        };
        let _ = codec::write(self.proto, &ack, wbuf);
    }

    /// MQTT 5 §3.3.2.3.4: a PUBLISH with a topic and an alias sets the alias; one with an
    /// empty topic uses it. Aliases are per connection and never travel on.
    fn resolve_alias(
        &mut self,
        alias: u16,
        msg: &mut Message,
        wbuf: &mut BytesMut,
    ) -> Result<(), End> {
        let max = self.shared.opts.topic_alias_max;
        if self.proto != Protocol::V5 || alias == 0 || alias > max {
            self.disconnect_with(0x94, wbuf);
            return Err(End::Lost(format!(
                "topic alias {alias} is invalid (maximum {max})"
            )));
        }
        if msg.topic.is_empty() {
            match self.aliases.get(&alias) {
                Some(t) => msg.topic = t.clone(),
                None => {
                    self.disconnect_with(0x82, wbuf);
                    return Err(End::Lost(format!("topic alias {alias} was never set")));
                }
            }
        } else {
            self.aliases
                .insert(alias, Bytes::copy_from_slice(&msg.topic));
        }
        Ok(())
    }

    /// Counts a message from a broker for the device list and shows it in the live feed.
    pub(super) fn observe(&self, m: &FromBroker) {
        self.info.sent();
        if crate::events::HUB.active() {
            crate::events::to_device(&self.connect.client_id, &m.broker, &m.msg);
        }
    }

    /// Queues `msg` for every broker whose rules accept it. Returns `true` when the device's
    /// acknowledgement is deferred until brokers confirm (ack policies `any` and `all`).
    fn fan_out(&mut self, pkid: u16, msg: Message) -> bool {
        let topic = msg.topic_str();
        let accepts = |u: &&UpstreamHandle| u.broker.rule.accepts(topic);
        // Routing runs once per target; counting targets is only needed for `all`.
        let needed = match (msg.qos, self.shared.opts.ack_policy) {
            (0, _) | (_, AckPolicy::Queued) => 0,
            (_, AckPolicy::Any) => usize::from(self.upstreams.iter().any(|u| accepts(&u))),
            (_, AckPolicy::All) => self.upstreams.iter().filter(accepts).count(),
        };
        let tracker = (needed > 0).then(|| AckTracker::new(pkid, needed, self.acks.clone()));
        // Described (and its copies traced) before they are queued, see `crate::events`.
        let described = match crate::events::HUB.active() {
            true => {
                let targets = self.upstreams.iter().filter(accepts).map(|u| &*u.broker);
                crate::events::from_device(&self.connect.client_id, &msg, targets)
            }
            false => None,
        };
        for u in self.upstreams.iter().filter(accepts) {
            let mut item = Queued::new(msg.clone(), u.broker.rule.qos(msg.qos), tracker.clone());
            item.echo =
                !self.subs.is_empty() && ToDevice::expects_echo(&u.broker, topic, &self.subs);
            if let Some(d) = &described {
                item.done.trace = d.trace(&u.broker);
            }
            u.enqueue(item);
        }
        match tracker {
            Some(_) => {
                self.deferred.insert(pkid, msg.qos);
                true
            }
            None => false,
        }
    }
}
