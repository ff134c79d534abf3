//! Echo suppression that never drops a legitimate repeat.
//!
//! The proxy records, per broker, an xxh3 hash of each message *it* published there on
//! behalf of the device (only when the device is subscribed to a matching filter, the only
//! case in which that broker can hand the message back). A message arriving from broker B
//! is suppressed only if it consumes one of those records for B: every record absorbs
//! exactly one echo, so when the device sends the same payload three times, three echoes
//! are absorbed and a fourth copy (someone else's) is delivered. Records expire after a
//! window and the table has a hard size cap, so memory does not grow with traffic.
//!
//! The hash covers topic and payload but not QoS or retain: brokers rewrite both on
//! delivery (QoS is downgraded to the subscription's, 3.1.1 clears retain on live
//! messages), so including them would let echoes through.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::Xxh3;

/// Default lifetime of a record: far longer than a broker round trip on a healthy link.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
/// Default cap on records per session and broker.
pub const DEFAULT_CAPACITY: usize = 65_536;

/// Hash identifying a message for echo matching (topic as the device sees it, payload).
pub fn message_hash(topic: &[u8], payload: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&(topic.len() as u64).to_le_bytes());
    h.update(topic);
    h.update(payload);
    h.digest()
}

#[derive(Debug, Default)]
struct Table {
    /// hash -> records still unconsumed
    counts: HashMap<u64, u32>,
    /// insertion order with expiry, for the window and the cap
    order: VecDeque<(Instant, u64)>,
    /// hash -> order entries whose record an echo already consumed (removed lazily, so a
    /// hit costs O(1) instead of a scan of the order queue)
    consumed: HashMap<u64, u32>,
    tombstones: usize,
}

/// Per-session echo records, keyed by broker id.
#[derive(Debug)]
pub struct LoopGuard {
    window: Duration,
    capacity: usize,
    tables: HashMap<String, Table>,
    /// Records evicted by the cap before their echo came back (a duplicate may follow).
    pub evicted: u64,
}

impl Default for LoopGuard {
    fn default() -> Self {
        Self::new(DEFAULT_WINDOW, DEFAULT_CAPACITY)
    }
}

impl LoopGuard {
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity: capacity.max(1),
            tables: HashMap::new(),
            evicted: 0,
        }
    }

    /// The proxy published `hash` to `broker`.
    pub fn record(&mut self, broker: &str, hash: u64, now: Instant) {
        let t = match self.tables.get_mut(broker) {
            Some(t) => t,
            None => self.tables.entry(broker.to_string()).or_default(),
        };
        Self::expire(t, now, self.window);
        while t.order.len() - t.tombstones >= self.capacity {
            match t.order.pop_front() {
                Some((_, old)) => {
                    if !Self::bury(t, old) && Self::consume(t, old) {
                        self.evicted += 1;
                    }
                }
                None => break,
            }
        }
        *t.counts.entry(hash).or_insert(0) += 1;
        t.order.push_back((now, hash));
    }

    /// A message `hash` arrived from `broker`: `true` if it is the echo of one of our own
    /// publishes there (and the record is consumed).
    pub fn is_echo(&mut self, broker: &str, hash: u64, now: Instant) -> bool {
        let Some(t) = self.tables.get_mut(broker) else {
            return false;
        };
        Self::expire(t, now, self.window);
        let hit = Self::consume(t, hash);
        if hit {
            // Its order entry goes when it reaches the front.
            *t.consumed.entry(hash).or_insert(0) += 1;
            t.tombstones += 1;
        }
        hit
    }

    /// Records currently held for `broker`.
    pub fn len(&self, broker: &str) -> usize {
        self.tables
            .get(broker)
            .map_or(0, |t| t.order.len() - t.tombstones)
    }

    fn consume(t: &mut Table, hash: u64) -> bool {
        match t.counts.get_mut(&hash) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                t.counts.remove(&hash);
                true
            }
            None => false,
        }
    }

    /// An order entry leaves: `true` if it was a tombstone (its record already consumed).
    fn bury(t: &mut Table, hash: u64) -> bool {
        match t.consumed.get_mut(&hash) {
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    t.consumed.remove(&hash);
                }
                t.tombstones -= 1;
                true
            }
            None => false,
        }
    }

    fn expire(t: &mut Table, now: Instant, window: Duration) {
        while let Some(&(at, h)) = t.order.front() {
            if now.duration_since(at) < window {
                break;
            }
            t.order.pop_front();
            if !Self::bury(t, h) {
                Self::consume(t, h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_record_absorbs_exactly_one_echo() {
        let mut g = LoopGuard::default();
        let now = Instant::now();
        let h = message_hash(b"t", b"same");
        for _ in 0..3 {
            g.record("a", h, now);
        }
        assert!(g.is_echo("a", h, now));
        assert!(g.is_echo("a", h, now));
        assert!(g.is_echo("a", h, now));
        assert!(
            !g.is_echo("a", h, now),
            "a fourth copy was really sent by someone else"
        );
    }

    #[test]
    fn records_are_per_broker() {
        let mut g = LoopGuard::default();
        let now = Instant::now();
        let h = message_hash(b"t", b"x");
        g.record("a", h, now);
        assert!(
            !g.is_echo("b", h, now),
            "B never got it from us: B's copy is legitimate"
        );
        assert!(g.is_echo("a", h, now));
    }

    #[test]
    fn records_expire() {
        let mut g = LoopGuard::new(Duration::from_secs(1), 100);
        let t0 = Instant::now();
        let h = message_hash(b"t", b"x");
        g.record("a", h, t0);
        assert!(!g.is_echo("a", h, t0 + Duration::from_secs(2)));
        assert_eq!(g.len("a"), 0);
    }

    #[test]
    fn table_is_bounded() {
        let mut g = LoopGuard::new(Duration::from_secs(3600), 1000);
        let now = Instant::now();
        for i in 0..100_000u32 {
            g.record("a", message_hash(b"t", &i.to_le_bytes()), now);
        }
        assert_eq!(g.len("a"), 1000);
        assert_eq!(g.evicted, 99_000);
        let t = g.tables.get("a").expect("table");
        assert_eq!(
            t.counts.len(),
            1000,
            "the hash map shrinks with the order queue"
        );
    }

    #[test]
    fn consumed_records_are_removed_lazily_without_touching_live_ones() {
        let mut g = LoopGuard::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        let h = message_hash(b"t", b"x");
        g.record("a", h, t0);
        assert!(g.is_echo("a", h, t0));
        assert_eq!(g.len("a"), 0);
        // A second record of the same content, later; the first one's entry expires first.
        g.record("a", h, t0 + Duration::from_secs(5));
        assert!(!g.is_echo("a", message_hash(b"t", b"y"), t0 + Duration::from_secs(11)));
        assert!(
            g.is_echo("a", h, t0 + Duration::from_secs(12)),
            "the live record survived"
        );
        assert!(!g.is_echo("a", h, t0 + Duration::from_secs(12)));
    }

    #[test]
    fn hash_separates_topic_and_payload() {
        assert_ne!(message_hash(b"ab", b"c"), message_hash(b"a", b"bc"));
    }
}
