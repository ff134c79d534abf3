//! The fleet scenario's result: per-stage RSS, delivery and latency per broker, CPU of the
//! proxy and the brokers, and its plain-text rendering.

use serde::Serialize;

use crate::summary::LatencyMs;

#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub devices: usize,
    /// Seconds from the stage's first CONNECT to its last CONNACK (and SUBACK).
    pub connect_s: f64,
    pub rss_mb: f64,
    pub fds: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SinkReport {
    pub broker: String,
    pub expected: u64,
    pub received: u64,
    pub duplicates: u64,
    /// Device send → sink receive, on this generator's clock.
    pub latency: LatencyMs,
    /// The proxy's own `mqtt_proxy_forward_latency_seconds` for this broker (device
    /// PUBLISH in → broker PUBACK), as the upper bounds (ms) of the buckets holding p50 and
    /// p99: what the proxy and the broker add, without the generator's and sink's queueing.
    pub proxy_p50_le_ms: Option<f64>,
    pub proxy_p99_le_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub devices: usize,
    pub subscribed_devices: usize,
    pub secs: u64,
    pub fd_limit: String,
    pub stages: Vec<Stage>,
    /// (RSS at the largest stage − RSS at the smallest) / device difference, KiB.
    pub kb_per_device: f64,
    pub connect_s: f64,
    pub sent: u64,
    pub acked: u64,
    pub sinks: Vec<SinkReport>,
    pub downlinks_sent: u64,
    pub downlinks_received: u64,
    pub proxy_cpu_s: f64,
    pub broker_cpu_s: Vec<f64>,
    pub proxy_rss_end_mb: f64,
    pub proxy_hwm_mb: f64,
    pub publish_s: f64,
    /// CPU of this load generator (devices and sinks) over the same window.
    pub load_cpu_s: f64,
    /// Seconds each side spent runnable but waiting for a CPU over the same window.
    pub waited_s: CpuWaits,
    /// `/proc/loadavg` before the publish phase and after the drain: a busy box shows here.
    pub loadavg: (String, String),
    pub errors: Vec<String>,
}

/// Run queue delay (schedstat) over the publish phase and drain, in seconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuWaits {
    pub proxy: f64,
    /// The three brokers together.
    pub brokers: f64,
    /// This load generator (devices and sinks).
    pub load: f64,
}

impl FleetReport {
    /// Every message reached every broker, every downlink its device, no device failed.
    pub fn all_delivered(&self) -> bool {
        self.errors.is_empty()
            && self.acked == self.sent
            && self.downlinks_received >= self.downlinks_sent
            && self.sinks.iter().all(|s| s.received == s.expected)
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut line = |l: String| {
            s.push_str(&l);
            s.push('\n');
        };
        line(format!(
            "fleet: {} devices × {} brokers, 1 msg/s QoS 1 for {} s, {} subscribed via b1 (bidirectional)",
            self.devices,
            self.sinks.len(),
            self.secs,
            self.subscribed_devices
        ));
        line(self.fd_limit.clone());
        line("devices   connect s   proxy RSS MB   proxy fds".into());
        for st in &self.stages {
            line(format!(
                "{:>7} {:>11.2} {:>14.1} {:>11}",
                st.devices, st.connect_s, st.rss_mb, st.fds
            ));
        }
        line(format!(
            "slope: {:.1} KiB per device ({:.1} KiB per proxy connection); whole fleet connected in {:.2} s",
            self.kb_per_device,
            self.kb_per_device / (1.0 + self.sinks.len() as f64),
            self.connect_s
        ));
        line(format!(
            "published {} (acked {}) in {:.1} s; downlinks {}/{}",
            self.sent, self.acked, self.publish_s, self.downlinks_received, self.downlinks_sent
        ));
        line(
            "broker   received/expected   dups   p50 ms   p99 ms   max ms   CPU s   proxy-measured p50 / p99 ≤ ms"
                .into(),
        );
        for (i, k) in self.sinks.iter().enumerate() {
            line(format!(
                "{:<6} {:>10}/{:<10} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>7.2}   {} / {}",
                k.broker,
                k.received,
                k.expected,
                k.duplicates,
                k.latency.p50,
                k.latency.p99,
                k.latency.max,
                self.broker_cpu_s.get(i).copied().unwrap_or(0.0),
                bound(k.proxy_p50_le_ms),
                bound(k.proxy_p99_le_ms)
            ));
        }
        let brokers: f64 = self.broker_cpu_s.iter().sum();
        line(format!(
            "proxy CPU {:.2} s vs brokers {:.2} s combined ({:.2}×); proxy RSS {:.1} MB at the end, peak {:.1} MB",
            self.proxy_cpu_s,
            brokers,
            if brokers > 0.0 { self.proxy_cpu_s / brokers } else { f64::NAN },
            self.proxy_rss_end_mb,
            self.proxy_hwm_mb
        ));
        line(format!(
            "mqtt-load CPU {:.2} s; load average before: {} | after: {}",
            self.load_cpu_s, self.loadavg.0, self.loadavg.1
        ));
        let w = &self.waited_s;
        line(format!(
            "waited for a CPU (run queue): proxy {:.2} s, brokers {:.2} s, mqtt-load {:.2} s",
            w.proxy, w.brokers, w.load
        ));
        for e in &self.errors {
            line(format!("error: {e}"));
        }
        line(format!(
            "result: {}",
            if self.all_delivered() {
                "all delivered"
            } else {
                "NOT all delivered"
            }
        ));
        s
    }
}

fn bound(ms: Option<f64>) -> String {
    match ms {
        Some(v) if v.is_finite() => format!("{v:.2}"),
        Some(_) => "> last bucket".into(),
        None => "-".into(),
    }
}
