//! The load payload: a 16-byte header (sequence number, send timestamp) padded to the
//! requested size, and the topic layout that tells a receiver which device sent it.
//!
//! Both ends of a run share one clock (an `Instant` taken when the run starts), so the
//! timestamp is nanoseconds since that instant and latency is a plain subtraction.

use bytes::{BufMut, BytesMut};

/// Bytes at the front of every payload: `seq: u64 BE`, `sent_ns: u64 BE`.
pub const HEADER_LEN: usize = 16;

/// A `seq` that marks a readiness probe, not a measured message.
pub const PROBE_SEQ: u64 = u64::MAX;

/// What the first [`HEADER_LEN`] bytes of a payload carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub seq: u64,
    pub sent_ns: u64,
}

impl Header {
    pub fn is_probe(&self) -> bool {
        self.seq == PROBE_SEQ
    }

    /// Appends the header followed by zero padding up to `payload_size` bytes.
    pub fn write_payload(&self, payload_size: usize, out: &mut BytesMut) {
        out.put_u64(self.seq);
        out.put_u64(self.sent_ns);
        out.put_bytes(0, payload_size.saturating_sub(HEADER_LEN));
    }

    /// Reads the header back; `None` when the payload is too short to carry one.
    pub fn decode(payload: &[u8]) -> Option<Header> {
        let seq = payload.get(0..8)?;
        let ts = payload.get(8..16)?;
        Some(Header {
            seq: u64::from_be_bytes(seq.try_into().ok()?),
            sent_ns: u64::from_be_bytes(ts.try_into().ok()?),
        })
    }
}

/// Topic naming: `<root>/d<device>/<seq>` per message, or `<root>/d<device>` when fixed.
#[derive(Debug, Clone)]
pub struct TopicScheme {
    pub root: String,
    pub fixed: bool,
}

impl TopicScheme {
    /// The filter a subscriber uses to see every device of the run.
    pub fn filter(&self) -> String {
        format!("{}/#", self.root)
    }

    /// The topic a device publishes message `seq` on (probes use `probe` as the last level).
    pub fn topic(&self, device: usize, seq: u64) -> String {
        let mut s = String::new();
        self.write_topic(&mut s, device, seq);
        s
    }

    /// [`Self::topic`] into a reused buffer: the publisher's hot path allocates nothing.
    pub fn write_topic(&self, out: &mut String, device: usize, seq: u64) {
        use std::fmt::Write as _;
        out.clear();
        let _ = match (self.fixed, seq == PROBE_SEQ) {
            (true, _) => write!(out, "{}/d{device}", self.root),
            (false, true) => write!(out, "{}/d{device}/probe", self.root),
            (false, false) => write!(out, "{}/d{device}/{seq}", self.root),
        };
    }

    /// The device index a topic belongs to, parsed without allocating.
    pub fn device_of(&self, topic: &[u8]) -> Option<usize> {
        let rest = topic.strip_prefix(self.root.as_bytes())?;
        let rest = rest.strip_prefix(b"/d")?;
        let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
        let digits = &rest[..end];
        if digits.is_empty() || digits.len() > 9 {
            return None;
        }
        digits.iter().try_fold(0usize, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + usize::from(b - b'0'))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_pads() {
        let h = Header {
            seq: 0x0102_0304_0506_0708,
            sent_ns: 42,
        };
        let mut buf = BytesMut::new();
        h.write_payload(64, &mut buf);
        assert_eq!(buf.len(), 64);
        assert_eq!(&buf[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&buf[8..16], &[0, 0, 0, 0, 0, 0, 0, 42]);
        assert!(buf[16..].iter().all(|&b| b == 0));
        assert_eq!(Header::decode(&buf), Some(h));
    }

    #[test]
    fn header_at_minimum_size_and_too_short() {
        let h = Header {
            seq: PROBE_SEQ,
            sent_ns: u64::MAX - 1,
        };
        let mut buf = BytesMut::new();
        h.write_payload(HEADER_LEN, &mut buf);
        assert_eq!(buf.len(), HEADER_LEN);
        let back = Header::decode(&buf).expect("16 bytes carry a header");
        assert!(back.is_probe());
        assert_eq!(back, h);
        assert_eq!(Header::decode(&buf[..15]), None);
        assert_eq!(Header::decode(&[]), None);
    }

    #[test]
    fn topics_round_trip_to_device() {
        let per_msg = TopicScheme {
            root: "load/x".into(),
            fixed: false,
        };
        let fixed = TopicScheme {
            root: "load/x".into(),
            fixed: true,
        };
        assert_eq!(per_msg.topic(3, 17), "load/x/d3/17");
        assert_eq!(per_msg.topic(3, PROBE_SEQ), "load/x/d3/probe");
        assert_eq!(fixed.topic(12, 17), "load/x/d12");
        assert_eq!(per_msg.filter(), "load/x/#");
        for (topic, want) in [
            ("load/x/d3/17", Some(3)),
            ("load/x/d12", Some(12)),
            ("load/x/d0/probe", Some(0)),
            ("load/x/d/1", None),
            ("load/x/dz/1", None),
            ("load/y/d1/1", None),
            ("load/x", None),
            ("load/x/d1234567890/1", None),
        ] {
            assert_eq!(per_msg.device_of(topic.as_bytes()), want, "{topic}");
        }
    }
}
