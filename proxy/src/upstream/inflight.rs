//! Packets from the broker: acknowledgements of what we sent, and publishes for the device
//! (with the echo check that keeps a device from hearing itself).

use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::admit::Unsendable;
use super::{FromBroker, Upstream};
use crate::codec::{self, Message, Packet};
use crate::events::Outcome;
use crate::loopguard::message_hash;
use crate::metrics::METRICS;
use crate::queue::{dropped, Completion};

impl Upstream {
    pub(super) async fn on_packet(&mut self, p: Packet, wbuf: &mut BytesMut) -> Result<(), String> {
        match p {
            Packet::PubAck { pkid, code } => match self.out.on_puback(pkid) {
                // A negative PUBACK is not a delivery: the device hears the broker's reason.
                Ok(tag) if code >= 0x80 => {
                    self.rejected(code);
                    fail(tag, code);
                }
                Ok(tag) => self.delivered(tag),
                // After a reconnect a broker may ack a resend twice; harmless.
                Err(e) => debug!(broker = self.broker().label(), "{e}"),
            },
            Packet::PubRec { pkid, code } if code >= 0x80 => {
                self.rejected(code);
                fail(self.out.on_pubrec_failed(pkid), code);
            }
            Packet::PubRec { pkid, .. } => {
                match self.out.on_pubrec(pkid) {
                    Ok(tag) => self.delivered(tag),
                    Err(e) => debug!(broker = self.broker().label(), "{e}"),
                }
                let _ = codec::write(self.proto, &Packet::PubRel { pkid }, wbuf);
            }
            Packet::PubComp { pkid } => {
                if let Err(e) = self.out.on_pubcomp(pkid) {
                    debug!(broker = self.broker().label(), "{e}");
                }
            }
            Packet::Publish { pkid, msg, .. } => {
                let qos = msg.qos;
                let fresh = qos < 2 || self.inbound.on_publish_qos2(pkid);
                if fresh && self.is_echo(&msg) {
                    METRICS
                        .loop_suppressed
                        .with_label_values(&[self.broker().label(), "echo"])
                        .inc();
                } else if fresh {
                    let m = Box::new(FromBroker {
                        broker: self.p.broker.clone(),
                        msg,
                    });
                    // Backpressure: a slow device slows this broker's session only.
                    if self.p.to_session.send(m).await.is_err() {
                        return Err("device session ended".into());
                    }
                }
                match qos {
                    1 => codec::write(self.proto, &Packet::PubAck { pkid, code: 0 }, wbuf),
                    2 => codec::write(self.proto, &Packet::PubRec { pkid, code: 0 }, wbuf),
                    _ => Ok(()),
                }
                .map_err(|e| e.to_string())?;
            }
            Packet::PubRel { pkid } => {
                self.inbound.on_pubrel(pkid);
                let _ = codec::write(self.proto, &Packet::PubComp { pkid }, wbuf);
            }
            Packet::SubAck { pkid, codes } => {
                self.out.release(pkid);
                if let Some(i) = self.pending_subacks.iter().position(|(p, _)| *p == pkid) {
                    let (_, reply) = self.pending_subacks.swap_remove(i);
                    let _ = reply.send(codes);
                }
            }
            Packet::UnsubAck { pkid, .. } => {
                self.out.release(pkid);
            }
            Packet::PingResp => {}
            Packet::Disconnect { reason, .. } => {
                return Err(format!("broker sent DISCONNECT (reason {reason:#04x})"));
            }
            other => return Err(format!("unexpected packet from broker: {other:?}")),
        }
        Ok(())
    }

    /// Is `msg` (as received, with this broker's prefix) the echo of a device publish this
    /// upstream wrote? Each record absorbs one copy; others' identical messages pass.
    fn is_echo(&mut self, msg: &Message) -> bool {
        if self.echoes.len("") == 0 {
            return false;
        }
        let Some(topic) = self.p.broker.rule.inbound_topic(msg.topic_str()) else {
            return false;
        };
        let h = message_hash(topic.as_bytes(), &msg.payload);
        self.echoes.is_echo("", h, Instant::now().into_std())
    }

    /// Drops a message this broker cannot take, counted by reason; a device still waiting
    /// for its acknowledgement hears an MQTT 5 reason code.
    pub(super) fn unsendable(&self, why: Unsendable, msg: &Message, done: Completion) {
        let b = self.broker();
        let m = &b.metrics;
        match why {
            Unsendable::Expired => &m.dropped_expired,
            Unsendable::TooLarge => &m.dropped_too_large,
            Unsendable::TopicTooLong => &m.dropped_topic_too_long,
            Unsendable::Poison => &m.dropped_poison,
        }
        .inc();
        b.stats.dropped.fetch_add(1, Ordering::Relaxed);
        if why == Unsendable::Poison {
            b.stats.poisoned.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(held) = self.log_limit.allow(10) {
            warn!(
                broker = b.label(),
                reason = why.label(),
                topic_bytes = msg.topic.len(),
                payload_bytes = msg.payload.len(),
                suppressed = held,
                "message not sent to the broker (mqtt_proxy_messages_dropped_total)"
            );
        }
        done.fail(why.device_code(), why.label());
    }

    fn rejected(&self, code: u8) {
        let b = self.broker();
        b.metrics.dropped_rejected.inc();
        b.stats.dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(held) = self.log_limit.allow(10) {
            warn!(
                broker = b.label(),
                code,
                suppressed = held,
                "broker rejected a message"
            );
        }
    }
}

impl Upstream {
    /// The broker acknowledged a message: finish it and record its forwarding latency.
    fn delivered(&self, tag: Option<Completion>) {
        if let Some(c) = tag {
            c.report(Outcome::Acked);
            c.delivered(&self.broker().metrics.latency);
        }
    }
}

fn fail(tag: Option<Completion>, code: u8) {
    if let Some(c) = tag {
        c.fail(code, dropped::REJECTED);
    }
}
