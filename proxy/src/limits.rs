//! Per-device limits the session enforces at its call sites, as plain functions and a
//! token bucket without I/O: topic length and depth, publish rate (drop or disconnect),
//! in-flight QoS 1/2 publishes, and the idle timeout of devices that asked for no keepalive.
//! Every hit is counted in `mqtt_proxy_device_limit_hits_total{limit, action}`.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use prometheus::{IntCounterVec, Opts};
use serde::Deserialize;

/// What happens to a device over its publish rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RateAction {
    /// Drop the publish (QoS 1/2 are still acknowledged so the device does not resend).
    #[default]
    Drop,
    /// Close the connection (MQTT 5: DISCONNECT 0x96 Message rate too high).
    Disconnect,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DeviceLimits {
    /// Bytes of a topic name or filter.
    pub max_topic_length: usize,
    /// `/`-separated levels of a topic name or filter.
    pub max_topic_levels: usize,
    /// Sustained publishes per second per device (0: unlimited) and the burst above it.
    pub publish_rate: u32,
    pub publish_burst: u32,
    pub rate_action: RateAction,
    /// A device with keepalive 0 that sends nothing for this long is disconnected.
    pub idle_timeout: Duration,
}

impl Default for DeviceLimits {
    fn default() -> Self {
        Self {
            max_topic_length: 1024,
            max_topic_levels: 64,
            // Off by default: one device through the proxy sustains ~76k msg/s (see
            // BENCHMARKS.md), and what a device may send is deployment policy.
            publish_rate: 0,
            publish_burst: 1_000,
            rate_action: RateAction::Drop,
            idle_timeout: Duration::from_secs(3600),
        }
    }
}

pub static LIMIT_HITS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "mqtt_proxy_device_limit_hits_total",
            "Device packets refused or connections closed by a per-device limit",
        ),
        &["limit", "action"],
    )
    .expect("valid metric");
    let _ = crate::metrics::METRICS
        .registry
        .register(Box::new(c.clone()));
    c
});

/// Counts one hit of `limit` (`topic`, `publish_rate`, `inflight`) handled by `action`.
pub fn hit(limit: &'static str, action: &'static str) {
    LIMIT_HITS.with_label_values(&[limit, action]).inc();
}

impl DeviceLimits {
    /// Is a topic name or filter within the length and depth limits?
    pub fn topic_ok(&self, topic: &str) -> bool {
        topic.len() <= self.max_topic_length
            && topic.bytes().filter(|b| *b == b'/').count() < self.max_topic_levels
    }

    /// How long a session may stay silent: 1.5 × keepalive (MQTT §3.1.2.10), or the idle
    /// timeout for a device that asked for none.
    pub fn silence_allowed(&self, keep_alive_secs: u16) -> Duration {
        match keep_alive_secs {
            0 => self.idle_timeout,
            ka => Duration::from_millis(u64::from(ka) * 1500),
        }
    }

    pub fn bucket(&self, now: Instant) -> TokenBucket {
        TokenBucket::new(self.publish_rate, self.publish_burst, now)
    }
}

/// A token bucket refilled continuously at `rate` per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate == 0`: unlimited.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_limits_table() {
        let l = DeviceLimits {
            max_topic_length: 10,
            max_topic_levels: 3,
            ..DeviceLimits::default()
        };
        let cases = [
            ("a/b/c", true),
            ("a/b/c/d", false),
            ("0123456789", true),
            ("0123456789x", false),
            ("a//", true),
            ("a///", false),
        ];
        for (topic, want) in cases {
            assert_eq!(l.topic_ok(topic), want, "{topic}");
        }
    }

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        assert_eq!((0..20).filter(|_| b.take(t0)).count(), 5, "the burst");
        assert!(!b.take(t0));
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(
            (0..20).filter(|_| b.take(t1)).count(),
            5,
            "10/s for 0.5 s, capped at the burst"
        );
        let t2 = t1 + Duration::from_secs(100);
        assert_eq!(
            (0..20).filter(|_| b.take(t2)).count(),
            5,
            "never more than the burst"
        );
        let mut off = TokenBucket::new(0, 1, t0);
        assert!((0..1000).all(|_| off.take(t0)));
    }

    #[test]
    fn silence_allowed_follows_keepalive_or_idle_timeout() {
        let l = DeviceLimits::default();
        assert_eq!(l.silence_allowed(10), Duration::from_secs(15));
        assert_eq!(l.silence_allowed(0), l.idle_timeout);
    }
}
