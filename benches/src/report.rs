//! What `mqtt-load run` reports, as serde types (the `--json` output) and as a table.

use std::fmt::Write as _;

use serde::Serialize;

use crate::publisher::PubStats;
use crate::summary::LatencyMs;
use crate::workload::ClientKind;

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub label: String,
    pub qos: u8,
    pub payload_size: usize,
    pub count_per_device: u64,
    /// Messages per second per device; 0 = as fast as possible.
    pub rate_per_device: u64,
    pub devices: usize,
    /// Connect to end of drain.
    pub wall_s: f64,
    /// Connect until every subscriber had seen a readiness probe.
    pub ready_s: f64,
    pub timed_out: bool,
    pub publish: PublishReport,
    pub publishers: Vec<PubStats>,
    pub brokers: Vec<BrokerReport>,
    pub warnings: Vec<String>,
}

/// All devices together.
#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    pub client: ClientKind,
    pub sent: u64,
    /// QoS ≥ 1: measured messages acknowledged by the target.
    pub acked: u64,
    /// First send → last send.
    pub send_s: f64,
    pub send_rate: f64,
    /// QoS ≥ 1: first send → last ack, when every message was acked.
    pub last_ack_s: Option<f64>,
}

/// One downstream broker, as its subscriber saw it.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerReport {
    pub name: String,
    pub addr: String,
    /// Messages sent by the devices this broker should receive.
    pub sent: u64,
    /// Unique messages received.
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Messages that matched the filter but belong to no expected device/sequence.
    pub unexpected: u64,
    /// First send → last receive.
    pub window_s: f64,
    pub throughput_msgs: f64,
    pub throughput_mb_s: f64,
    pub latency: LatencyMs,
}

impl RunReport {
    pub fn total_lost(&self) -> u64 {
        self.brokers.iter().map(|b| b.lost).sum()
    }

    pub fn render_table(&self) -> String {
        let mut s = String::new();
        let rate = match self.rate_per_device {
            0 => "max".to_string(),
            r => format!("{r}/s"),
        };
        let _ = writeln!(
            s,
            "{}: qos {} | payload {} B | {} device(s) x {} msgs @ {} | ready {:.2}s | wall {:.2}s{}",
            self.label,
            self.qos,
            self.payload_size,
            self.devices,
            self.count_per_device,
            rate,
            self.ready_s,
            self.wall_s,
            if self.timed_out { " | TIMED OUT" } else { "" }
        );
        let p = &self.publish;
        let _ = write!(
            s,
            "publish ({:?}): sent {} in {:.3}s = {:.0} msg/s",
            p.client, p.sent, p.send_s, p.send_rate
        );
        if self.qos > 0 {
            let _ = write!(s, " | acked {}", p.acked);
            match p.last_ack_s {
                Some(t) => {
                    let _ = write!(s, " | last ack at {t:.3}s");
                }
                None => s.push_str(" | NOT all acked"),
            }
        }
        s.push('\n');
        let _ = writeln!(
            s,
            "{:<8} {:>9} {:>9} {:>7} {:>5} {:>10} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "broker",
            "sent",
            "recv",
            "lost",
            "dup",
            "msg/s",
            "MB/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms"
        );
        for b in &self.brokers {
            let l = &b.latency;
            let _ = writeln!(
                s,
                "{:<8} {:>9} {:>9} {:>7} {:>5} {:>10.0} {:>7.2} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
                b.name,
                b.sent,
                b.received,
                b.lost,
                b.duplicates,
                b.throughput_msgs,
                b.throughput_mb_s,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max
            );
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        s
    }
}
