//! QoS 1/2 bookkeeping for one direction of one connection, as plain structs without I/O
//! (the shape of rumqttc's `MqttState`): packet-id allocation, the in-flight window, the
//! QoS 2 handshake states, and what must be resent after a reconnect, in order.
//!
//! [`Outbound`] is used where the proxy *sends* PUBLISH (to a broker, or to a device);
//! [`Inbound`] where it *receives* them (QoS 2 duplicate detection until PUBREL).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes packet ids (small integers) with one multiply: std's SipHash was 2.6 % of the
/// proxy's instructions at 2,000 msg/s (callgrind), for keys no peer can choose to collide
/// beyond the 65,535 a window may hold anyway.
#[derive(Debug, Default, Clone, Copy)]
pub struct PkidHasher(u64);

impl Hasher for PkidHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(PKID_MUL);
        }
    }
    fn write_u16(&mut self, n: u16) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(PKID_MUL);
    }
}

/// 2^64 / φ: spreads consecutive ids over both the high bits hashbrown tags with and the
/// low bits it indexes with.
const PKID_MUL: u64 = 0x9E37_79B9_7F4A_7C15;

pub type PkidBuild = BuildHasherDefault<PkidHasher>;
/// A map keyed by packet id.
pub type PkidMap<V> = HashMap<u16, V, PkidBuild>;
/// A set of packet ids.
pub type PkidSet = HashSet<u16, PkidBuild>;

use crate::codec::Message;

/// A peer broke the protocol (e.g. acked a packet id we never used). Closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("{kind} for unknown packet id {pkid}")]
    UnknownPacketId { kind: &'static str, pkid: u16 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// QoS 1 PUBLISH sent, waiting for PUBACK; or QoS 2 PUBLISH sent, waiting for PUBREC.
    Published,
    /// QoS 2 PUBREL sent, waiting for PUBCOMP.
    Released,
}

#[derive(Debug)]
struct Inflight<T> {
    msg: Message,
    qos: u8,
    stage: Stage,
    /// Handed back when the peer has taken responsibility (PUBACK, or PUBREC for QoS 2).
    tag: Option<T>,
}

/// What to put on the wire again after a reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resend {
    Publish { pkid: u16, msg: Message, qos: u8 },
    PubRel { pkid: u16 },
}

/// An in-flight message taken out of an [`Outbound`] to outlive its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub pkid: u16,
    pub msg: Message,
    pub qos: u8,
    /// QoS 2 past PUBREC: only PUBREL is resent.
    pub released: bool,
}

/// Outgoing QoS 1/2 publishes waiting for their acknowledgements.
#[derive(Debug)]
pub struct Outbound<T> {
    next_pkid: u16,
    max_inflight: usize,
    inflight: PkidMap<Inflight<T>>,
    /// Ids lent out for SUBSCRIBE/UNSUBSCRIBE, which share the packet-id space.
    reserved: PkidSet,
    /// Send order, for in-order resends. Acked ids are removed lazily.
    order: VecDeque<u16>,
}

impl<T> Outbound<T> {
    pub fn new(max_inflight: u16) -> Self {
        let max_inflight = usize::from(max_inflight.max(1));
        Self {
            next_pkid: 0,
            max_inflight,
            // Grows on demand: most connections never fill their window, and thousands of
            // idle upstreams must not each reserve it up front.
            inflight: PkidMap::default(),
            reserved: PkidSet::default(),
            order: VecDeque::new(),
        }
    }

    /// Lower the window to what the peer allows (MQTT 5 Receive Maximum).
    pub fn set_max_inflight(&mut self, max: u16) {
        self.max_inflight = usize::from(max.max(1));
    }

    /// Room for one more publish: the window has space and a packet id is free (ids lent to
    /// SUBSCRIBE/UNSUBSCRIBE share the 65,535 ids, so both together can exhaust them).
    pub fn has_room(&self) -> bool {
        self.inflight.len() < self.max_inflight && self.ids_free() > 0
    }

    fn ids_free(&self) -> usize {
        usize::from(u16::MAX).saturating_sub(self.inflight.len() + self.reserved.len())
    }

    pub fn len(&self) -> usize {
        self.inflight.len()
    }

    /// How many more publishes the window takes.
    pub fn room(&self) -> usize {
        self.max_inflight
            .saturating_sub(self.inflight.len())
            .min(self.ids_free())
    }

    /// The id the next [`publish`](Self::publish) will use (lets a caller encode first).
    /// Call only when [`has_room`](Self::has_room) (else 0, which is never a valid id).
    pub fn peek_pkid(&self) -> u16 {
        self.find_free(self.next_pkid).unwrap_or(0)
    }

    /// The first free id after `from`, looking at each id at most once: never spins, even
    /// when every id is taken.
    fn find_free(&self, from: u16) -> Option<u16> {
        let mut p = from;
        for _ in 0..=u16::MAX {
            p = p.wrapping_add(1);
            if p != 0 && !self.inflight.contains_key(&p) && !self.reserved.contains(&p) {
                return Some(p);
            }
        }
        None
    }

    pub fn is_empty(&self) -> bool {
        self.inflight.is_empty()
    }

    /// Registers a QoS 1/2 publish and returns its packet id. Call only when
    /// [`has_room`](Self::has_room); ids still in flight are skipped.
    pub fn publish(&mut self, msg: Message, qos: u8, tag: T) -> u16 {
        debug_assert!(qos > 0);
        // `has_room` guarantees a free id; 0 is never handed out otherwise.
        let pkid = self.next_free_pkid().unwrap_or(0);
        self.inflight.insert(
            pkid,
            Inflight {
                msg,
                qos,
                stage: Stage::Published,
                tag: Some(tag),
            },
        );
        self.order.push_back(pkid);
        pkid
    }

    fn next_free_pkid(&mut self) -> Option<u16> {
        let p = self.find_free(self.next_pkid)?;
        self.next_pkid = p;
        Some(p)
    }

    /// A packet id for a SUBSCRIBE/UNSUBSCRIBE; give it back with [`release`](Self::release)
    /// or [`release_all`](Self::release_all). `None` when all 65,535 ids are taken.
    pub fn reserve(&mut self) -> Option<u16> {
        let p = self.next_free_pkid()?;
        self.reserved.insert(p);
        Some(p)
    }

    pub fn release(&mut self, pkid: u16) -> bool {
        self.reserved.remove(&pkid)
    }

    /// The connection ended: no SUBACK/UNSUBACK will come for the ids lent out on it.
    pub fn release_all(&mut self) {
        self.reserved.clear();
    }

    /// Ids lent to SUBSCRIBE/UNSUBSCRIBE and not yet given back.
    pub fn reserved(&self) -> usize {
        self.reserved.len()
    }

    /// The oldest message still waiting for its first acknowledgement (packet id, message).
    pub fn oldest_unacked(&self) -> Option<(u16, &Message)> {
        self.order.iter().find_map(|pkid| {
            self.inflight
                .get(pkid)
                .filter(|f| f.stage == Stage::Published)
                .map(|f| (*pkid, &f.msg))
        })
    }

    /// Takes a message out of the window without an acknowledgement (set aside as poison,
    /// or expired); its tag is returned.
    pub fn remove(&mut self, pkid: u16) -> Option<T> {
        let entry = self.inflight.remove(&pkid);
        self.compact();
        entry.and_then(|e| e.tag)
    }

    /// PUBACK: the QoS 1 message is delivered; its tag is returned.
    pub fn on_puback(&mut self, pkid: u16) -> Result<Option<T>, ProtocolError> {
        match self.inflight.get(&pkid) {
            Some(f) if f.qos == 1 => {}
            _ => {
                return Err(ProtocolError::UnknownPacketId {
                    kind: "PUBACK",
                    pkid,
                })
            }
        }
        let entry = self.inflight.remove(&pkid);
        self.compact();
        Ok(entry.and_then(|e| e.tag))
    }

    /// PUBREC: the peer owns the QoS 2 message; answer with PUBREL. The tag is returned on
    /// the first PUBREC only (a repeated PUBREC just gets PUBREL again).
    pub fn on_pubrec(&mut self, pkid: u16) -> Result<Option<T>, ProtocolError> {
        match self.inflight.get_mut(&pkid) {
            Some(f) if f.qos == 2 => {
                f.stage = Stage::Released;
                // Only PUBREL is ever resent from here on: the payload is not needed.
                f.msg.payload = bytes::Bytes::new();
                f.msg.props = None;
                Ok(f.tag.take())
            }
            _ => Err(ProtocolError::UnknownPacketId {
                kind: "PUBREC",
                pkid,
            }),
        }
    }

    /// A PUBREC with a failure reason code (MQTT 5): the message is finished, not delivered.
    pub fn on_pubrec_failed(&mut self, pkid: u16) -> Option<T> {
        self.remove(pkid)
    }

    /// PUBCOMP ends the QoS 2 exchange.
    pub fn on_pubcomp(&mut self, pkid: u16) -> Result<(), ProtocolError> {
        match self.inflight.get(&pkid) {
            Some(f) if f.stage == Stage::Released => {
                self.inflight.remove(&pkid);
                self.compact();
                Ok(())
            }
            _ => Err(ProtocolError::UnknownPacketId {
                kind: "PUBCOMP",
                pkid,
            }),
        }
    }

    /// Everything to send again after a reconnect, in the original order (MQTT §4.4:
    /// PUBLISH with DUP for unacknowledged messages, PUBREL for released QoS 2).
    pub fn resend(&self) -> Vec<Resend> {
        self.order
            .iter()
            .filter_map(|pkid| self.inflight.get(pkid).map(|f| (pkid, f)))
            .map(|(&pkid, f)| match f.stage {
                Stage::Published => Resend::Publish {
                    pkid,
                    msg: f.msg.clone(),
                    qos: f.qos,
                },
                Stage::Released => Resend::PubRel { pkid },
            })
            .collect()
    }

    /// Takes everything in flight out, in send order, for a session that outlives its
    /// connection (MQTT §4.4: resent with the same packet ids on reconnect).
    /// Each comes with its tag while it still has one (until PUBACK / PUBREC).
    pub fn take_inflight(&mut self) -> Vec<(Kept, Option<T>)> {
        let mut out = Vec::with_capacity(self.inflight.len());
        for pkid in std::mem::take(&mut self.order) {
            if let Some(f) = self.inflight.remove(&pkid) {
                let kept = Kept {
                    pkid,
                    msg: f.msg,
                    qos: f.qos,
                    released: f.stage == Stage::Released,
                };
                out.push((kept, f.tag));
            }
        }
        self.inflight.clear();
        out
    }

    /// Puts a kept in-flight message back under its packet id (see [`take_inflight`]).
    ///
    /// [`take_inflight`]: Self::take_inflight
    pub fn restore(&mut self, kept: Kept, tag: T) {
        let stage = if kept.released {
            Stage::Released
        } else {
            Stage::Published
        };
        self.inflight.insert(
            kept.pkid,
            Inflight {
                msg: kept.msg,
                qos: kept.qos,
                stage,
                tag: Some(tag),
            },
        );
        self.order.push_back(kept.pkid);
        self.next_pkid = self.next_pkid.max(kept.pkid);
    }

    /// Gives up on everything in flight (the session ends); returns the unresolved tags.
    pub fn drain_tags(&mut self) -> Vec<T> {
        self.order.clear();
        self.inflight.drain().filter_map(|(_, f)| f.tag).collect()
    }

    fn compact(&mut self) {
        while let Some(front) = self.order.front() {
            if self.inflight.contains_key(front) {
                break;
            }
            self.order.pop_front();
        }
        // Out-of-order acks leave holes behind the front; bound them.
        if self.order.len() > self.inflight.len() * 2 + 64 {
            let live = &self.inflight;
            self.order.retain(|p| live.contains_key(p));
        }
        // An empty window lets go of its tables: thousands of upstreams that carry a message
        // now and then would otherwise each keep the largest window they ever had.
        if self.inflight.is_empty() && self.inflight.capacity() > 0 {
            self.inflight = PkidMap::default();
            self.order = VecDeque::new();
        }
    }
}

/// Incoming QoS 2 publishes between PUBREC and PUBREL: a PUBLISH with a packet id that is
/// still here is a retransmission and must not be forwarded again.
#[derive(Debug, Default)]
pub struct Inbound {
    awaiting_rel: PkidSet,
}

impl Inbound {
    /// Returns `true` when the QoS 2 message is new and must be forwarded.
    pub fn on_publish_qos2(&mut self, pkid: u16) -> bool {
        self.awaiting_rel.insert(pkid)
    }
    /// PUBREL releases the id; answer with PUBCOMP either way (MQTT §4.3.3).
    pub fn on_pubrel(&mut self, pkid: u16) {
        self.awaiting_rel.remove(&pkid);
    }
    pub fn pending(&self) -> usize {
        self.awaiting_rel.len()
    }
    /// Is `pkid` a QoS 2 publish still waiting for its PUBREL (a retransmission)?
    pub fn is_awaiting(&self, pkid: u16) -> bool {
        self.awaiting_rel.contains(&pkid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(n: u8) -> Message {
        Message::new("t", vec![n], 1, false)
    }

    #[test]
    fn qos1_window_and_acks() {
        let mut o: Outbound<&str> = Outbound::new(2);
        let a = o.publish(m(1), 1, "a");
        let b = o.publish(m(2), 1, "b");
        assert!(!o.has_room());
        assert_eq!((a, b), (1, 2));
        assert_eq!(o.on_puback(b), Ok(Some("b")));
        assert!(o.has_room());
        assert!(
            o.on_puback(b).is_err(),
            "second PUBACK for the same id is a protocol error"
        );
        assert_eq!(o.on_puback(a), Ok(Some("a")));
        assert!(o.is_empty());
    }

    #[test]
    fn qos2_flow_releases_tag_at_pubrec() {
        let mut o: Outbound<u32> = Outbound::new(10);
        let p = o.publish(m(1), 2, 7);
        assert!(o.on_puback(p).is_err(), "PUBACK is wrong for QoS 2");
        assert_eq!(o.on_pubrec(p), Ok(Some(7)));
        assert_eq!(
            o.on_pubrec(p),
            Ok(None),
            "repeated PUBREC: PUBREL again, no tag"
        );
        assert_eq!(o.resend(), vec![Resend::PubRel { pkid: p }]);
        assert_eq!(o.on_pubcomp(p), Ok(()));
        assert!(o.on_pubcomp(p).is_err());
    }

    #[test]
    fn resend_keeps_original_order() {
        let mut o: Outbound<()> = Outbound::new(100);
        let ids: Vec<u16> = (0..5).map(|i| o.publish(m(i), 1, ())).collect();
        o.on_puback(ids[1]).expect("ack");
        o.on_puback(ids[3]).expect("ack");
        let resent: Vec<u8> = o
            .resend()
            .into_iter()
            .map(|r| match r {
                Resend::Publish { msg, .. } => msg.payload[0],
                Resend::PubRel { .. } => 255,
            })
            .collect();
        assert_eq!(resent, vec![0, 2, 4]);
    }

    #[test]
    fn packet_ids_wrap_and_skip_ids_in_flight() {
        let mut o: Outbound<()> = Outbound::new(u16::MAX);
        let first = o.publish(m(0), 1, ());
        for _ in 0..70_000u32 {
            let p = o.publish(m(1), 1, ());
            assert_ne!(p, 0);
            assert_ne!(p, first, "an id still in flight is never reused");
            o.on_puback(p).expect("ack");
        }
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn kept_inflight_comes_back_with_its_ids_in_order() {
        let mut o: Outbound<()> = Outbound::new(10);
        let a = o.publish(m(1), 1, ());
        let b = o.publish(m(2), 2, ());
        o.on_pubrec(b).expect("pubrec");
        let kept: Vec<Kept> = o.take_inflight().into_iter().map(|k| k.0).collect();
        assert!(o.is_empty());
        let mut n: Outbound<()> = Outbound::new(10);
        for k in kept {
            n.restore(k, ());
        }
        assert_eq!(
            n.resend(),
            vec![
                Resend::Publish {
                    pkid: a,
                    msg: m(1),
                    qos: 1
                },
                Resend::PubRel { pkid: b }
            ]
        );
        assert_ne!(n.publish(m(3), 1, ()), a, "restored ids are not reused");
        assert_eq!(n.on_puback(a), Ok(Some(())));
    }

    #[test]
    fn reserved_ids_are_released_and_exhaustion_does_not_spin() {
        let mut o: Outbound<()> = Outbound::new(u16::MAX);
        for _ in 0..u16::MAX {
            assert!(o.reserve().is_some());
        }
        // Every id is lent out: no spinning, no id, no room to publish.
        assert_eq!(o.reserve(), None);
        assert!(!o.has_room());
        assert_eq!(o.room(), 0);
        o.release_all();
        assert_eq!(o.reserved(), 0);
        assert!(o.has_room());
        assert_ne!(o.publish(m(1), 1, ()), 0);
    }

    #[test]
    fn oldest_unacked_and_remove() {
        let mut o: Outbound<u8> = Outbound::new(10);
        let a = o.publish(m(1), 1, 1);
        let b = o.publish(m(2), 2, 2);
        assert_eq!(o.oldest_unacked().map(|(p, _)| p), Some(a));
        assert_eq!(o.remove(a), Some(1));
        assert_eq!(o.oldest_unacked().map(|(p, _)| p), Some(b));
        o.on_pubrec(b).expect("pubrec");
        assert_eq!(o.oldest_unacked(), None, "released QoS 2 is acknowledged");
    }

    #[test]
    fn inbound_qos2_dedup() {
        let mut i = Inbound::default();
        assert!(i.on_publish_qos2(5));
        assert!(
            !i.on_publish_qos2(5),
            "retransmission before PUBREL is not forwarded"
        );
        i.on_pubrel(5);
        assert!(i.on_publish_qos2(5), "after PUBREL the id is free again");
        assert_eq!(i.pending(), 1);
    }
}
