//! What may be written to this broker, message by message, and what is set aside instead:
//! the limits it announced in CONNACK (MQTT 5 Maximum Packet Size and Maximum QoS), MQTT's
//! 65,535-byte topic length, message expiry while queued, and *poison*: a message after
//! which a 3.1.1 broker (which announces no limit, e.g. mosquitto's `max_packet_size`)
//! closed the connection several times in a row.
//!
//! With the resend-first rule one unsendable message would otherwise block the queue on
//! every reconnect; here it is dropped with a counted reason and, where the device still
//! waits for its acknowledgement, an MQTT 5 reason code. Pure code, no I/O.

use std::sync::Arc;
use std::time::Instant;

use crate::codec::Message;
use crate::queue::reason;

/// Closes in a row after which the oldest unacknowledged message is taken for poison.
pub const POISON_AFTER: u8 = 3;

/// Why a message was not written to a broker. Each is a fixed metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsendable {
    /// Its Message Expiry Interval passed while it was queued.
    Expired,
    /// Prefix + topic longer than the 65,535 bytes MQTT can encode.
    TopicTooLong,
    /// Larger than the broker's Maximum Packet Size.
    TooLarge,
    /// The broker closed the connection after it, [`POISON_AFTER`] times in a row.
    Poison,
}

impl Unsendable {
    pub fn label(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::TopicTooLong => "topic_too_long",
            Self::TooLarge => "too_large",
            Self::Poison => "poison",
        }
    }
    /// What an MQTT 5 device still waiting for its PUBACK/PUBREC is told.
    pub fn device_code(self) -> u8 {
        match self {
            Self::Expired => reason::UNSPECIFIED,
            Self::TopicTooLong | Self::TooLarge | Self::Poison => reason::IMPLEMENTATION_SPECIFIC,
        }
    }
}

/// What the broker announced in its CONNACK (defaults for 3.1.1 brokers: no limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerLimits {
    pub max_packet: Option<usize>,
    pub max_qos: u8,
}

impl Default for BrokerLimits {
    fn default() -> Self {
        Self {
            max_packet: None,
            max_qos: 2,
        }
    }
}

impl BrokerLimits {
    pub fn from_connack(max_packet: Option<u32>, max_qos: Option<u8>) -> Self {
        Self {
            max_packet: max_packet.map(|m| m as usize),
            max_qos: max_qos.unwrap_or(2).min(2),
        }
    }
}

/// Checks made before encoding. Returns the message to write (with its Message Expiry
/// Interval lowered by the time it waited) and the QoS (capped at the broker's maximum).
pub fn admit(
    mut msg: Message,
    qos: u8,
    expires_at: Option<Instant>,
    prefix_len: usize,
    limits: &BrokerLimits,
    now: Instant,
) -> Result<(Message, u8), (Unsendable, Message)> {
    if prefix_len + msg.topic.len() > usize::from(u16::MAX) {
        return Err((Unsendable::TopicTooLong, msg));
    }
    if let Some(at) = expires_at {
        let left = at.saturating_duration_since(now);
        if left.is_zero() {
            return Err((Unsendable::Expired, msg));
        }
        // MQTT 5 §3.3.2.3.3: forward the interval minus the time the message waited.
        let secs =
            u32::try_from(left.as_secs() + u64::from(left.subsec_nanos() > 0)).unwrap_or(u32::MAX);
        if let Some(p) = msg.props.as_mut() {
            if p.message_expiry_interval.is_some_and(|s| s > secs) {
                Arc::make_mut(p).message_expiry_interval = Some(secs);
            }
        }
    }
    Ok((msg, qos.min(limits.max_qos)))
}

/// Counts connections that the broker closed before they were stable with the same
/// oldest unacknowledged message at their head.
#[derive(Debug, Default)]
pub struct PoisonWatch {
    head: Option<(u16, u64)>,
    strikes: u8,
}

impl PoisonWatch {
    /// A connection was lost before it was stable, with `head` (packet id, content hash)
    /// the oldest unacknowledged message. Returns `true` when that message is poison.
    pub fn on_unstable_close(&mut self, head: Option<(u16, u64)>) -> bool {
        if head.is_none() || head != self.head {
            self.head = head;
            self.strikes = u8::from(head.is_some());
            return false;
        }
        self.strikes += 1;
        if self.strikes >= POISON_AFTER {
            *self = Self::default();
            return true;
        }
        false
    }

    /// The connection was stable, or its head was acknowledged: start counting afresh.
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

/// A PUBLISH from the broker larger than the proxy reads (`max`): a 3.1.1 broker cannot
/// be told the limit, and closing the connection over it would make a broker that keeps the
/// session redeliver it forever. It is acknowledged and skipped instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversized {
    pub qos: u8,
    /// 0 for QoS 0.
    pub pkid: u16,
    /// Bytes of the whole packet, to skip.
    pub frame_len: usize,
}

/// Reads the head of an oversized PUBLISH at the start of `buf`: `Ok(None)` when more bytes
/// are needed (at most 5 + 2 + 65,535 + 2), `Err(())` when it is not a PUBLISH.
#[allow(clippy::result_unit_err)]
pub fn oversized_publish(buf: &[u8]) -> Result<Option<Oversized>, ()> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first >> 4 != 3 {
        return Err(());
    }
    let qos = (first >> 1) & 3;
    let (mut remaining, mut shift, mut at) = (0usize, 0, 1);
    loop {
        let Some(&b) = buf.get(at) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7f) << shift;
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(());
        }
    }
    let frame_len = at + remaining;
    let pkid = if qos == 0 {
        0
    } else {
        let Some(t) = buf.get(at..at + 2) else {
            return Ok(None);
        };
        let topic_len = usize::from(u16::from_be_bytes([t[0], t[1]]));
        let Some(p) = buf.get(at + 2 + topic_len..at + 4 + topic_len) else {
            return Ok(None);
        };
        u16::from_be_bytes([p[0], p[1]])
    };
    Ok(Some(Oversized {
        qos,
        pkid,
        frame_len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Queued;
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use std::time::Duration;

    fn with_expiry(secs: u32) -> Message {
        let mut m = Message::new("t", &b"x"[..], 1, false);
        m.props = Some(Arc::new(PublishProperties {
            message_expiry_interval: Some(secs),
            ..Default::default()
        }));
        m
    }

    #[test]
    fn expiry_drops_late_messages_and_lowers_the_interval() {
        let t0 = Instant::now();
        let m = with_expiry(10);
        let at = Queued::new(m.clone(), 1, None).expires_at;
        assert!(at.is_some_and(|at| at >= t0 + Duration::from_secs(10)));
        let l = BrokerLimits::default();
        let (sent, _) =
            admit(m.clone(), 1, at, 0, &l, t0 + Duration::from_millis(3_500)).expect("still live");
        let left = sent.props.as_ref().and_then(|p| p.message_expiry_interval);
        assert_eq!(left, Some(7), "10 s minus 3.5 s waited, rounded up");
        assert_eq!(
            m.props.as_ref().and_then(|p| p.message_expiry_interval),
            Some(10),
            "other brokers' copies keep their own clock"
        );
        let late = admit(m, 1, at, 0, &l, t0 + Duration::from_secs(11));
        assert!(matches!(late, Err((Unsendable::Expired, _))));
    }

    #[test]
    fn topic_limit_and_max_qos() {
        let l = BrokerLimits::from_connack(Some(1000), Some(1));
        let now = Instant::now();
        let topic = "t".repeat(65_535);
        let long = Message::new(&topic, &b"x"[..], 1, false);
        assert!(admit(long.clone(), 1, None, 0, &l, now).is_ok());
        let r = admit(long, 1, None, 1, &l, now);
        assert!(
            matches!(r, Err((Unsendable::TopicTooLong, _))),
            "one prefix byte too many"
        );
        let (_, qos) =
            admit(Message::new("t", &b"x"[..], 2, false), 2, None, 0, &l, now).expect("admitted");
        assert_eq!(qos, 1, "capped at the broker's Maximum QoS");
    }

    #[test]
    fn oversized_publish_head() {
        // QoS 1, remaining length 2,000,000 (varint 80 89 7a), topic "t", packet id 0x1234.
        let head = [0x32, 0x80, 0x89, 0x7a, 0, 1, b't', 0x12, 0x34];
        assert_eq!(
            oversized_publish(&head[..6]),
            Ok(None),
            "packet id not yet read"
        );
        assert_eq!(
            oversized_publish(&head),
            Ok(Some(Oversized {
                qos: 1,
                pkid: 0x1234,
                frame_len: 4 + 2_000_000
            }))
        );
        assert_eq!(
            oversized_publish(&[0x90, 0x02]),
            Err(()),
            "SUBACK is not a PUBLISH"
        );
    }

    #[test]
    fn poison_after_three_closes_with_the_same_head() {
        let mut w = PoisonWatch::default();
        assert!(!w.on_unstable_close(Some((1, 10))));
        assert!(!w.on_unstable_close(Some((2, 20))), "progress: a new head");
        assert!(!w.on_unstable_close(Some((2, 20))));
        assert!(w.on_unstable_close(Some((2, 20))), "third close in a row");
        assert!(!w.on_unstable_close(Some((3, 30))));
        assert!(
            !w.on_unstable_close(None),
            "nothing in flight: nothing to blame"
        );
        assert!(!w.on_unstable_close(Some((3, 30))));
        w.clear();
        assert!(!w.on_unstable_close(Some((3, 30))));
    }
}
