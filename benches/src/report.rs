//! What `mqtt-load run` reports: built from what publishers and subscribers counted,
//! as serde types (the `--json` output) and as a table.

use std::fmt::Write as _;

use serde::Serialize;
use tokio::time::Instant;

use crate::publisher::PubStats;
use crate::subscriber::Tally;
use crate::summary::{rate_per_sec, LatencyMs};
use crate::workload::{ClientKind, Topology, Workload};

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
    /// Every subscriber saw a readiness probe from every device it expects before the
    /// measured publish began; when false the numbers include the path's start-up.
    pub ready: bool,
    /// Connect until readiness (or until giving up on it).
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
            match (self.ready, self.timed_out) {
                (_, true) => " | TIMED OUT",
                (false, false) => " | PATH NOT READY",
                (true, false) => "",
            }
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

/// How the run went, apart from what publishers and sinks counted.
pub struct RunMeta<'a> {
    pub label: &'a str,
    pub started: Instant,
    pub ready: bool,
    pub ready_s: f64,
    pub timed_out: bool,
    pub warnings: Vec<String>,
}

/// Reduces what publishers and subscribers counted to the report.
pub fn build_report(
    w: &Workload,
    topo: &Topology,
    meta: RunMeta<'_>,
    pubs: &[PubStats],
    tallies: &[Tally],
) -> RunReport {
    let RunMeta {
        label,
        started,
        ready,
        ready_s,
        timed_out,
        mut warnings,
    } = meta;
    let sent: u64 = pubs.iter().map(|p| p.sent).sum();
    let first_send = pubs
        .iter()
        .map(|p| p.first_send_ns)
        .filter(|&t| t > 0)
        .min()
        .unwrap_or(0);
    let last_send = pubs.iter().map(|p| p.last_send_ns).max().unwrap_or(0);
    let all_acked = w.qos > 0 && pubs.iter().all(|p| p.last_ack_ns.is_some());
    let last_ack = pubs.iter().filter_map(|p| p.last_ack_ns).max();
    let publish = PublishReport {
        client: w.client,
        sent,
        acked: pubs.iter().map(|p| p.acked).sum(),
        send_s: last_send.saturating_sub(first_send) as f64 / 1e9,
        send_rate: rate_per_sec(sent, first_send, last_send),
        last_ack_s: last_ack
            .filter(|_| all_acked)
            .map(|t| t.saturating_sub(first_send) as f64 / 1e9),
    };
    for p in pubs {
        if let Some(e) = &p.error {
            warnings.push(format!("device {}: {e}", p.device));
        }
    }
    let brokers = topo
        .sinks
        .iter()
        .zip(tallies)
        .map(|(sink, t)| {
            let expected: u64 = sink.expects.iter().map(|&d| pubs[d].sent).sum();
            let first = sink
                .expects
                .iter()
                .map(|&d| pubs[d].first_send_ns)
                .filter(|&t| t > 0)
                .min()
                .unwrap_or(0);
            let window_s = t.last_recv_ns.saturating_sub(first) as f64 / 1e9;
            if let Some(e) = &t.error {
                warnings.push(format!("{}: {e}", sink.name));
            }
            BrokerReport {
                name: sink.name.clone(),
                addr: sink.addr.clone(),
                sent: expected,
                received: t.unique,
                lost: expected.saturating_sub(t.unique),
                duplicates: t.duplicates,
                unexpected: t.unexpected,
                window_s,
                throughput_msgs: rate_per_sec(t.unique, first, t.last_recv_ns),
                throughput_mb_s: if window_s > 0.0 {
                    t.unique_bytes as f64 / 1e6 / window_s
                } else {
                    0.0
                },
                latency: LatencyMs::from_histogram(&t.latency),
            }
        })
        .collect();
    RunReport {
        label: label.to_string(),
        qos: w.qos,
        payload_size: w.payload_size,
        count_per_device: w.count,
        rate_per_device: w.rate,
        devices: topo.devices.len(),
        ready,
        wall_s: started.elapsed().as_secs_f64(),
        ready_s,
        timed_out,
        publish,
        publishers: pubs.to_vec(),
        brokers,
        warnings,
    }
}
