//! Prometheus metrics (`mqtt_proxy_*`). Labels are bounded: broker name and a fixed set of
//! reasons, never client ids or topics. Hot paths clone the per-broker handles once
//! ([`BrokerMetrics`]) instead of looking labels up per message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub devices_connected: IntGauge,
    pub device_connections: IntCounter,
    pub device_rejected: IntCounterVec,
    pub malformed_packets: IntCounter,
    pub messages_received: IntCounter,
    pub messages_to_device: IntCounter,
    pub forwarded: IntCounterVec,
    pub dropped: IntCounterVec,
    pub loop_suppressed: IntCounterVec,
    pub upstream_connected: IntGaugeVec,
    pub upstream_reconnects: IntCounterVec,
    pub upstream_connect_failures: IntCounterVec,
    pub spool_failures: IntCounterVec,
    pub queue_messages: IntGaugeVec,
    pub queue_bytes: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    // Device sessions (issue 14, device side).
    pub sessions_kept: IntGauge,
    pub sessions_discarded: IntCounterVec,
    pub device_disconnects: IntCounterVec,
    pub subscriptions_refused: IntCounterVec,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}
fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new();
    let devices_connected = IntGauge::new(
        "mqtt_proxy_devices_connected",
        "Device connections currently open",
    )
    .expect("valid metric");
    r.register(Box::new(devices_connected.clone()))
        .expect("unique metric");
    let device_connections = IntCounter::new(
        "mqtt_proxy_device_connections_total",
        "Device connections accepted",
    )
    .expect("valid metric");
    r.register(Box::new(device_connections.clone()))
        .expect("unique metric");
    let malformed_packets = IntCounter::new(
        "mqtt_proxy_malformed_packets_total",
        "Device sessions closed because of a malformed or oversized packet",
    )
    .expect("valid metric");
    r.register(Box::new(malformed_packets.clone()))
        .expect("unique metric");
    let messages_received = IntCounter::new(
        "mqtt_proxy_messages_received_total",
        "PUBLISH packets received from devices",
    )
    .expect("valid metric");
    r.register(Box::new(messages_received.clone()))
        .expect("unique metric");
    let messages_to_device = IntCounter::new(
        "mqtt_proxy_messages_to_device_total",
        "PUBLISH packets delivered to devices from bidirectional brokers",
    )
    .expect("valid metric");
    r.register(Box::new(messages_to_device.clone()))
        .expect("unique metric");
    Metrics {
        device_rejected: counter_vec(
            &r,
            "mqtt_proxy_device_rejected_total",
            "Device connections refused",
            &["reason"],
        ),
        forwarded: counter_vec(
            &r,
            "mqtt_proxy_messages_forwarded_total",
            "PUBLISH packets written to an upstream broker",
            &["broker"],
        ),
        dropped: counter_vec(
            &r,
            "mqtt_proxy_messages_dropped_total",
            "Messages dropped before reaching a broker (or, inbound_too_large, a device)",
            &["broker", "reason"],
        ),
        loop_suppressed: counter_vec(
            &r,
            "mqtt_proxy_loop_suppressed_total",
            "Messages suppressed by loop prevention",
            &["broker", "reason"],
        ),
        upstream_connected: gauge_vec(
            &r,
            "mqtt_proxy_upstream_connected",
            "Upstream sessions currently connected",
            &["broker"],
        ),
        upstream_reconnects: counter_vec(
            &r,
            "mqtt_proxy_upstream_reconnects_total",
            "Upstream connection attempts after a failure",
            &["broker"],
        ),
        upstream_connect_failures: counter_vec(
            &r,
            "mqtt_proxy_upstream_connect_failures_total",
            "Upstream connection attempts that did not end in a stable connection, by reason",
            &["broker", "reason"],
        ),
        spool_failures: counter_vec(
            &r,
            "mqtt_proxy_spool_append_failures_total",
            "Messages not written to the disk spool (kept in memory only), by reason",
            &["broker", "reason"],
        ),
        queue_messages: gauge_vec(
            &r,
            "mqtt_proxy_queue_messages",
            "Messages queued for a broker",
            &["broker"],
        ),
        queue_bytes: gauge_vec(
            &r,
            "mqtt_proxy_queue_bytes",
            "Bytes queued for a broker",
            &["broker"],
        ),
        config_reloads: counter_vec(
            &r,
            "mqtt_proxy_config_reloads_total",
            "Broker set reloads by result",
            &["result"],
        ),
        sessions_kept: {
            let g = IntGauge::new(
                "mqtt_proxy_sessions_kept",
                "Persistent device sessions kept while their device is away",
            )
            .expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        },
        sessions_discarded: counter_vec(
            &r,
            "mqtt_proxy_sessions_discarded_total",
            "Kept device sessions discarded: expired, or pushed out by the kept-session bounds",
            &["reason"],
        ),
        device_disconnects: counter_vec(
            &r,
            "mqtt_proxy_device_disconnects_total",
            "Device connections the proxy closed, by reason",
            &["reason"],
        ),
        subscriptions_refused: counter_vec(
            &r,
            "mqtt_proxy_subscriptions_refused_total",
            "Device subscriptions refused by the proxy itself, by reason",
            &["reason"],
        ),
        registry: r,
        devices_connected,
        device_connections,
        malformed_packets,
        messages_received,
        messages_to_device,
    }
});

/// Renders the registry in the Prometheus text format.
pub fn render() -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&METRICS.registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// Per-broker handles, resolved once.
#[derive(Clone)]
pub struct BrokerMetrics {
    pub forwarded: IntCounter,
    pub dropped_overflow: IntCounter,
    pub dropped_shutdown: IntCounter,
    pub dropped_rejected: IntCounter,
    pub dropped_expired: IntCounter,
    pub dropped_too_large: IntCounter,
    pub dropped_topic_too_long: IntCounter,
    pub dropped_poison: IntCounter,
    pub dropped_inbound_too_large: IntCounter,
    pub spool_full: IntCounter,
    pub spool_write_errors: IntCounter,
    pub connected: IntGauge,
    pub reconnects: IntCounter,
    pub queue_messages: IntGauge,
    pub queue_bytes: IntGauge,
}

impl BrokerMetrics {
    pub fn new(broker: &str) -> Self {
        let m = &*METRICS;
        Self {
            forwarded: m.forwarded.with_label_values(&[broker]),
            dropped_overflow: m.dropped.with_label_values(&[broker, "queue_full"]),
            dropped_shutdown: m.dropped.with_label_values(&[broker, "shutdown"]),
            dropped_rejected: m.dropped.with_label_values(&[broker, "rejected"]),
            dropped_expired: m.dropped.with_label_values(&[broker, "expired"]),
            dropped_too_large: m.dropped.with_label_values(&[broker, "too_large"]),
            dropped_topic_too_long: m.dropped.with_label_values(&[broker, "topic_too_long"]),
            dropped_poison: m.dropped.with_label_values(&[broker, "poison"]),
            dropped_inbound_too_large: m.dropped.with_label_values(&[broker, "inbound_too_large"]),
            spool_full: m.spool_failures.with_label_values(&[broker, "full"]),
            spool_write_errors: m.spool_failures.with_label_values(&[broker, "write_error"]),
            connected: m.upstream_connected.with_label_values(&[broker]),
            reconnects: m.upstream_reconnects.with_label_values(&[broker]),
            queue_messages: m.queue_messages.with_label_values(&[broker]),
            queue_bytes: m.queue_bytes.with_label_values(&[broker]),
        }
    }
}

/// Lets one warning through per `period_secs` and counts what it held back, so a flood of
/// drops is visible in the logs without drowning them.
#[derive(Debug, Default)]
pub struct RateLimit {
    last: AtomicU64,
    held: AtomicU64,
}

impl RateLimit {
    pub const fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }
    /// `Some(n)` when a log line may be written now; `n` events were held back before it.
    pub fn allow(&self, period_secs: u64) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last.load(Ordering::Relaxed);
        if now >= last + period_secs
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_lets_one_through() {
        let r = RateLimit::new();
        assert_eq!(r.allow(60), Some(0));
        assert_eq!(r.allow(60), None);
        assert_eq!(r.allow(60), None);
    }

    #[test]
    fn names_follow_conventions() {
        BrokerMetrics::new("metrics-test").dropped_overflow.inc();
        let text = render();
        assert!(text.contains(
            "mqtt_proxy_messages_dropped_total{broker=\"metrics-test\",reason=\"queue_full\"} 1"
        ));
    }
}
