//! Broker-to-broker mirroring: for brokers with `mirror: true`, the proxy holds its own
//! session (no device needed), subscribes to their `subscriptionTopics`, and forwards what
//! arrives to the other enabled brokers, with their filters, prefixes and QoS caps.
//!
//! Loop prevention, strongest first (README, "Loop prevention"):
//! 1. MQTT 5 sources are subscribed with No Local: a broker never returns what this
//!    proxy published on that session.
//! 2. Mirrored messages carry a hop-count user property (MQTT 5 targets); a message whose
//!    count reached `max_hops` is not mirrored again, so a ring of proxies stops after one
//!    hop per proxy.
//! 3. For MQTT 3.1.1, which has no properties: each publish to broker B leaves a record
//!    that absorbs exactly one returning copy from B (the echo), and content mirrored from
//!    broker A leaves one record per other 3.1.1 source absorbing the copy another proxy in
//!    a two-proxy ring would bounce back. Records expire after the window; repeats a client
//!    really publishes twice on the same broker are mirrored twice.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use crate::broker::MqttVersion;
use crate::brokerset::{Broker, BrokerSet};
use crate::codec::{Message, SubFilter};
use crate::config::{MirrorOptions, SessionOptions};
use crate::loopguard::{message_hash, LoopGuard};
use crate::metrics::METRICS;
use crate::queue::Queued;
use crate::session::wait_true;
use crate::upstream::{FromBroker, UpstreamHandle, UpstreamParams};

/// The hop count a message carries (0 when it has none).
pub fn hops(msg: &Message, property: &str) -> u32 {
    msg.props
        .as_ref()
        .and_then(|p| p.user_properties.iter().find(|(k, _)| k == property))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// `msg` with its hop count set to `n` (other properties kept).
pub fn with_hops(msg: &Message, property: &str, n: u32) -> Message {
    let mut props = msg.props.as_deref().cloned().unwrap_or_default();
    props.user_properties.retain(|(k, _)| k != property);
    props
        .user_properties
        .push((property.to_string(), n.to_string()));
    Message {
        props: Some(Arc::new(props)),
        ..msg.clone()
    }
}

/// Why a mirrored message was not forwarded (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Forward { hops: u32 },
    HopLimit,
    Echo,
    RingCopy,
}

/// The pure part: decides what to do with a message from `source`.
pub struct MirrorGuard {
    echoes: LoopGuard,
    recent: HashMap<u64, Instant>,
    recent_order: VecDeque<(Instant, u64)>,
    opts: MirrorOptions,
}

/// How long mirrored content from a 3.1.1 source is not mirrored again.
pub const RING_WINDOW: Duration = Duration::from_secs(5);
const RING_CAPACITY: usize = 65_536;

impl MirrorGuard {
    pub fn new(opts: MirrorOptions) -> Self {
        Self {
            echoes: LoopGuard::default(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            opts,
        }
    }

    /// `source_v311`: the source speaks MQTT 3.1.1, so copies carry no hop marker.
    pub fn judge(
        &mut self,
        source: &str,
        source_v311: bool,
        msg: &Message,
        now: Instant,
    ) -> Verdict {
        let n = hops(msg, &self.opts.hop_property);
        if n >= self.opts.max_hops {
            return Verdict::HopLimit;
        }
        let h = message_hash(&msg.topic, &msg.payload);
        if self.echoes.is_echo(source, h, now) {
            return Verdict::Echo;
        }
        if source_v311 && self.recently_mirrored(h, now) {
            return Verdict::RingCopy;
        }
        Verdict::Forward { hops: n + 1 }
    }

    fn recently_mirrored(&mut self, h: u64, now: Instant) -> bool {
        self.prune(now);
        self.recent
            .get(&h)
            .is_some_and(|at| now.duration_since(*at) < RING_WINDOW)
    }

    /// Forgets ingress records older than the window or beyond the capacity. Runs on every
    /// ingress too: with only MQTT 5 sources nothing else would ever prune the table.
    fn prune(&mut self, now: Instant) {
        while let Some(&(at, old)) = self.recent_order.front() {
            if now.duration_since(at) < RING_WINDOW && self.recent_order.len() <= RING_CAPACITY {
                break;
            }
            self.recent_order.pop_front();
            if self.recent.get(&old) == Some(&at) {
                self.recent.remove(&old);
            }
        }
    }

    /// Forwarded `msg` (device-visible topic) from `source` to `target`.
    pub fn sent(&mut self, target: &Broker, msg: &Message, now: Instant) {
        let h = message_hash(&msg.topic, &msg.payload);
        if target.config.mqtt_version != MqttVersion::V5 && target.config.mirror {
            self.echoes.record(target.id(), h, now);
        }
    }

    /// Content arriving from `source` was mirrored: expect one bounced copy from every other
    /// 3.1.1 mirror source (another proxy mirroring the same content back).
    /// `msg` is being mirrored: for `RING_WINDOW`, the same content arriving from a 3.1.1
    /// source is taken for a copy bounced by another proxy (3.1.1 has no hop marker).
    pub fn ingress(&mut self, msg: &Message, now: Instant) {
        let h = message_hash(&msg.topic, &msg.payload);
        self.recent.insert(h, now);
        self.recent_order.push_back((now, h));
        self.prune(now);
    }
}

/// Runs the mirror session until shutdown, while `gate` is true (always, outside
/// Kubernetes; while holding the mirror Lease with several replicas, see `mirror_lease`).
pub async fn run(
    mut brokers: watch::Receiver<Arc<BrokerSet>>,
    session: SessionOptions,
    opts: MirrorOptions,
    mut gate: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::channel::<Box<FromBroker>>(1024);
    let client_id = format!("mqtt-proxy-mirror-{}", opts.instance_id);
    let mut guard = MirrorGuard::new(opts);
    let mut upstreams: Vec<UpstreamHandle> = Vec::new();
    let mut set = brokers.borrow_and_update().clone();
    let mut allowed = *gate.borrow_and_update();
    loop {
        reconcile(&mut upstreams, &set, allowed, &client_id, &session, &tx).await;
        loop {
            tokio::select! {
                Some(m) = rx.recv() => forward(*m, &upstreams, &mut guard),
                r = brokers.changed() => {
                    if r.is_err() { return close_all(upstreams, &session).await; }
                    set = brokers.borrow_and_update().clone();
                    break;
                }
                Ok(()) = gate.changed() => {
                    allowed = *gate.borrow_and_update();
                    break;
                }
                _ = wait_true(&mut shutdown) => return close_all(upstreams, &session).await,
            }
        }
    }
}

async fn close_all(upstreams: Vec<UpstreamHandle>, session: &SessionOptions) {
    let closing: Vec<_> = upstreams
        .into_iter()
        .map(|u| tokio::spawn(u.close(false, session.drain_timeout)))
        .collect();
    for c in closing {
        let _ = c.await;
    }
}

/// Mirroring needs a session on every enabled broker (targets) but only while at least
/// one broker mirrors and the gate allows it; unchanged brokers keep their connection
/// across reloads.
async fn reconcile(
    upstreams: &mut Vec<UpstreamHandle>,
    set: &BrokerSet,
    allowed: bool,
    client_id: &str,
    session: &SessionOptions,
    tx: &mpsc::Sender<Box<FromBroker>>,
) {
    let active = allowed && set.brokers.iter().any(|b| b.config.mirror);
    let old = std::mem::take(upstreams);
    for mut u in old {
        match set.get(u.broker.id()) {
            Some(b) if active && Arc::ptr_eq(b, &u.broker) => upstreams.push(u),
            // Changed: the same upstream continues with the new settings (one connection).
            Some(b) if active => {
                u.handover(b.clone(), mirror_filters(b)).await;
                upstreams.push(u);
            }
            _ => {
                tokio::spawn(u.close(false, session.drain_timeout));
            }
        }
    }
    if !active {
        return;
    }
    for b in &set.brokers {
        if upstreams.iter().any(|u| u.broker.id() == b.id()) {
            continue;
        }
        let h = UpstreamHandle::spawn(UpstreamParams {
            broker: b.clone(),
            device_id: client_id.to_string(),
            // Already unique per instance (`mqtt-proxy-mirror-<instance id>`).
            client_id_suffix: None,
            clean_session: true,
            keep_alive: 30,
            will: None,
            session_expiry: None,
            max_packet_size: session.max_packet_size,
            to_session: tx.clone(),
            spool_dir: None,
            start_after: None,
        });
        let filters = mirror_filters(b);
        if !filters.is_empty() {
            info!(broker = b.label(), ?filters, "mirroring");
            drop(h.subscribe(filters).await);
        }
        upstreams.push(h);
    }
}

/// What the mirror subscribes to on `b` (nothing unless it is a mirror source).
fn mirror_filters(b: &Broker) -> Vec<SubFilter> {
    if !b.config.mirror {
        return Vec::new();
    }
    let no_local = b.config.mqtt_version == MqttVersion::V5;
    b.config
        .subscription_topics
        .iter()
        .map(|f| SubFilter {
            filter: b.rule.outbound_topic(f).unwrap_or_else(|| f.clone()),
            qos: b.rule.qos(2),
            no_local,
            // Keep the retain flag as published so retained state is mirrored.
            retain_as_published: true,
            retain_handling: 0,
            id: None,
        })
        .collect()
}

fn forward(m: FromBroker, upstreams: &[UpstreamHandle], guard: &mut MirrorGuard) {
    let FromBroker {
        broker: source,
        mut msg,
    } = m;
    if !source.config.mirror {
        return;
    }
    let Some(topic) = source.rule.inbound_topic(msg.topic_str()) else {
        return;
    };
    if !source.rule.delivers(topic) {
        return;
    }
    if source.rule.topic_prefix.is_some() {
        msg.topic = bytes::Bytes::copy_from_slice(topic.as_bytes());
    }
    let now = Instant::now();
    let v311 = source.config.mqtt_version != MqttVersion::V5;
    let hops = match guard.judge(source.id(), v311, &msg, now) {
        Verdict::Forward { hops } => hops,
        other => {
            let reason = match other {
                Verdict::HopLimit => "hop_limit",
                Verdict::Echo => "echo",
                _ => "ring_copy",
            };
            METRICS
                .loop_suppressed
                .with_label_values(&[source.label(), reason])
                .inc();
            debug!(broker = source.label(), reason, "mirror: suppressed");
            return;
        }
    };
    guard.ingress(&msg, now);
    let out = with_hops(&msg, &guard.opts.hop_property, hops);
    for u in upstreams
        .iter()
        .filter(|u| u.broker.id() != source.id() && u.broker.rule.accepts(out.topic_str()))
    {
        guard.sent(&u.broker, &out, now);
        let item = Queued::new(out.clone(), u.broker.rule.qos(out.qos), None);
        u.enqueue(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::BrokerConfig;
    use crate::brokerset::Defaults;

    fn opts() -> MirrorOptions {
        MirrorOptions {
            instance_id: "t".into(),
            hop_property: "hop".into(),
            max_hops: 1,
            ..MirrorOptions::default()
        }
    }

    #[test]
    fn hop_marker_round_trip() {
        let m = Message::new("t", &b"x"[..], 1, false);
        assert_eq!(hops(&m, "hop"), 0);
        let m2 = with_hops(&m, "hop", 1);
        assert_eq!(hops(&m2, "hop"), 1);
        assert_eq!(
            hops(&with_hops(&m2, "hop", 2), "hop"),
            2,
            "replaced, not duplicated"
        );
    }

    #[test]
    fn hop_limit_stops_remirroring() {
        let mut g = MirrorGuard::new(opts());
        let now = Instant::now();
        let m = Message::new("t", &b"x"[..], 1, false);
        assert_eq!(g.judge("a", false, &m, now), Verdict::Forward { hops: 1 });
        assert_eq!(
            g.judge("a", false, &with_hops(&m, "hop", 1), now),
            Verdict::HopLimit
        );
    }

    #[test]
    fn v311_two_proxy_ring_absorbs_echoes_and_bounces_in_any_order() {
        let mut y = BrokerConfig::new("y", "127.0.0.1", 2);
        y.bidirectional = true;
        y.mirror = true;
        y.subscription_topics = vec!["#".into()];
        let set = BrokerSet::build(&[y], Defaults::default(), None).expect("valid");
        let mut g = MirrorGuard::new(opts());
        let now = Instant::now();
        let m = Message::new("t", &b"x"[..], 0, false);
        // The original arrives from X and is mirrored to Y.
        assert_eq!(g.judge("x", true, &m, now), Verdict::Forward { hops: 1 });
        g.ingress(&m, now);
        g.sent(&set.brokers[0], &m, now);
        // From Y come our own echo and the other proxy's copy: both absorbed.
        assert_eq!(g.judge("y", true, &m, now), Verdict::Echo);
        assert_eq!(g.judge("y", true, &m, now), Verdict::RingCopy);
        // The other proxy's copy may even come back before the original: still absorbed.
        assert_eq!(g.judge("x", true, &m, now), Verdict::RingCopy);
        // After the window the same content is mirrored again.
        let later = now + RING_WINDOW + Duration::from_millis(1);
        assert_eq!(g.judge("y", true, &m, later), Verdict::Forward { hops: 1 });
        // MQTT 5 sources rely on the hop marker, not on the window.
        assert_eq!(g.judge("v5", false, &m, now), Verdict::Forward { hops: 1 });
    }

    #[test]
    fn ingress_table_is_bounded_with_only_v5_sources() {
        let mut g = MirrorGuard::new(opts());
        let start = Instant::now();
        for i in 0..(RING_CAPACITY as u64 + 10_000) {
            let m = Message::new("t", i.to_le_bytes().to_vec(), 1, false);
            // Only v5 sources: `judge` never takes the 3.1.1 path that used to prune.
            let now = start + Duration::from_micros(i);
            assert!(matches!(
                g.judge("v5", false, &m, now),
                Verdict::Forward { .. }
            ));
            g.ingress(&m, now);
        }
        assert!(g.recent.len() <= RING_CAPACITY + 1, "{}", g.recent.len());
        assert!(g.recent_order.len() <= RING_CAPACITY + 1);
        let later = start + RING_WINDOW * 3;
        g.ingress(&Message::new("t", &b"late"[..], 1, false), later);
        assert_eq!(g.recent.len(), 1, "records older than the window are gone");
    }
}
