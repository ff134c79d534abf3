//! One bounded run: subscribers first (SUBACKed), then device publishers, a readiness
//! probe until every subscriber sees every device it expects, then the measured
//! publish, a drain, and the per-broker report.
//!
//! The run is generic over a [`Topology`]: which address each device publishes to and
//! which devices each downstream subscriber expects. `run` (all devices → one target,
//! every sink expects all) and each `compare` case are just different topologies.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::payload::TopicScheme;
use crate::publisher::{self, Clock, PubShared, PubStats, PublisherConfig};
use crate::publisher_rumqttc;
use crate::report::{build_report, RunMeta, RunReport};
use crate::subscriber::{self, SinkShared, SubscriberConfig, Tally};

/// Which client implementation the publishers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    /// Hand-encoded MQTT, batched writes (default).
    Raw,
    /// rumqttc `AsyncClient` (one flush per message).
    Rumqttc,
}

/// What every device does, independent of where it connects.
#[derive(Debug, Clone)]
pub struct Workload {
    pub qos: u8,
    pub payload_size: usize,
    /// Messages per device.
    pub count: u64,
    /// Messages per second per device; 0 = as fast as possible.
    pub rate: u64,
    pub topic_root: String,
    pub fixed_topic: bool,
    /// Hard bound for the whole run, connect to drain.
    pub timeout: Duration,
    /// End the drain after this long without a new message.
    pub drain_silence: Duration,
    pub inflight: usize,
    pub client: ClientKind,
    pub progress: bool,
}

#[derive(Debug, Clone)]
pub struct Sink {
    pub name: String,
    pub addr: String,
    /// Devices whose messages this broker should receive.
    pub expects: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct Topology {
    /// Target address of each device, indexed by device.
    pub devices: Vec<String>,
    pub sinks: Vec<Sink>,
}

impl Topology {
    /// `devices` connections to one target; every sink expects all of them.
    pub fn fan_out(target: &str, devices: usize, sinks: &[(String, String)]) -> Topology {
        Topology {
            devices: vec![target.to_string(); devices],
            sinks: sinks
                .iter()
                .map(|(name, addr)| Sink {
                    name: name.clone(),
                    addr: addr.clone(),
                    expects: (0..devices).collect(),
                })
                .collect(),
        }
    }
}

/// A finished run: the report plus each sink's latency histogram (for merging).
pub struct RunOutcome {
    pub report: RunReport,
    pub histograms: Vec<Histogram<u64>>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(10);

fn unique_id(kind: &str, i: usize) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("mqtt-load-{kind}-{}-{nanos:x}-{i}", std::process::id())
}

/// Runs the workload over the topology. Every wait inside is bounded; this adds a
/// last-resort bound on top so no bug can hold a run past `timeout` by much.
pub async fn run(w: &Workload, topo: &Topology, label: &str) -> anyhow::Result<RunOutcome> {
    let slack = CONNECT_TIMEOUT * 2 + Duration::from_secs(5);
    tokio::time::timeout(w.timeout + slack, run_bounded(w, topo, label))
        .await
        .map_err(|_| anyhow::anyhow!("{label}: run exceeded its timeout by {slack:?}"))?
}

async fn run_bounded(w: &Workload, topo: &Topology, label: &str) -> anyhow::Result<RunOutcome> {
    anyhow::ensure!(!topo.devices.is_empty(), "no devices");
    anyhow::ensure!(
        w.payload_size >= crate::payload::HEADER_LEN,
        "payload < 16 bytes"
    );
    let clock = Clock {
        base: std::time::Instant::now(),
    };
    let started = Instant::now();
    let deadline = started + w.timeout;
    let scheme = TopicScheme {
        root: w.topic_root.clone(),
        fixed: w.fixed_topic,
    };
    let ndev = topo.devices.len();

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sink_shared = Vec::new();
    let mut sink_tasks = Vec::new();
    for (i, sink) in topo.sinks.iter().enumerate() {
        let shared = Arc::new(SinkShared::new(ndev));
        let cfg = SubscriberConfig {
            addr: sink.addr.clone(),
            client_id: unique_id("sub", i),
            qos: w.qos,
            scheme: scheme.clone(),
            devices: ndev,
            expects: sink.expects.clone(),
            count: w.count,
            connect_timeout: CONNECT_TIMEOUT,
        };
        let task = subscriber::spawn(cfg, clock.base, shared.clone(), stop_rx.clone())
            .await
            .with_context(|| format!("subscriber {} at {}", sink.name, sink.addr))?;
        sink_shared.push(shared);
        sink_tasks.push(task);
    }

    let (go_tx, go_rx) = watch::channel(false);
    let mut pub_shared = Vec::new();
    let mut pub_tasks = Vec::new();
    for (device, addr) in topo.devices.iter().enumerate() {
        let shared = Arc::new(PubShared::default());
        let cfg = PublisherConfig {
            addr: addr.clone(),
            client_id: unique_id("pub", device),
            device,
            qos: w.qos,
            payload_size: w.payload_size,
            count: w.count,
            rate: w.rate,
            inflight: w.inflight,
            scheme: scheme.clone(),
            connect_timeout: CONNECT_TIMEOUT,
        };
        let spawned = match w.client {
            ClientKind::Raw => {
                publisher::spawn(cfg, clock, shared.clone(), go_rx.clone(), deadline).await
            }
            ClientKind::Rumqttc => {
                publisher_rumqttc::spawn(cfg, clock, shared.clone(), go_rx.clone(), deadline).await
            }
        };
        let task = spawned.with_context(|| format!("device {device} connecting to {addr}"))?;
        pub_shared.push(shared);
        pub_tasks.push(task);
    }

    // Readiness: every sink has seen a probe from every device it expects. Until then a
    // bridge or proxy may still be connecting upstream, and its losses would be ours.
    let mut warnings = Vec::new();
    // Leave at least half the run for measuring even when readiness never comes.
    let probe_deadline = (Instant::now() + PROBE_TIMEOUT).min(started + w.timeout / 2);
    let ready = |s: &SinkShared, sink: &Sink| {
        sink.expects
            .iter()
            .all(|&d| s.probes.get(d).is_some_and(|p| p.load(Ordering::Relaxed)))
    };
    loop {
        let all = topo
            .sinks
            .iter()
            .zip(&sink_shared)
            .all(|(sink, s)| ready(s, sink));
        if all {
            break;
        }
        if Instant::now() >= probe_deadline {
            for (sink, s) in topo.sinks.iter().zip(&sink_shared) {
                if !ready(s, sink) {
                    warnings.push(format!(
                        "{}: no readiness probe from every expected device within {:.1}s; measuring anyway",
                        sink.name,
                        started.elapsed().as_secs_f64()
                    ));
                }
            }
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let ready = warnings.is_empty();
    let ready_s = started.elapsed().as_secs_f64();
    go_tx.send_replace(true);

    // Publish, then drain: stop when every sink has everything its devices sent, after
    // `drain_silence` without a new message, or at the hard deadline.
    let mut next_progress = Instant::now() + Duration::from_secs(1);
    let mut publish_done_at: Option<Instant> = None;
    let mut timed_out = false;
    loop {
        let now = Instant::now();
        if now >= next_progress && w.progress {
            eprintln!(
                "{}",
                progress_line(label, started, &pub_shared, topo, &sink_shared)
            );
            next_progress += Duration::from_secs(1);
        }
        if now >= deadline {
            timed_out = true;
            break;
        }
        if publish_done_at.is_none() && pub_tasks.iter().all(|t| t.is_finished()) {
            publish_done_at = Some(now);
        }
        if let Some(done_at) = publish_done_at {
            let complete = topo.sinks.iter().zip(&sink_shared).all(|(sink, s)| {
                let expected: u64 = sink
                    .expects
                    .iter()
                    .map(|&d| pub_shared[d].sent.load(Ordering::Relaxed))
                    .sum();
                s.unique.load(Ordering::Relaxed) >= expected
            });
            let last_recv = sink_shared
                .iter()
                .map(|s| s.last_recv_ns.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0);
            let last_recv_at = clock.base + Duration::from_nanos(last_recv);
            let quiet_since = Instant::from_std(last_recv_at).max(done_at);
            if complete || now.saturating_duration_since(quiet_since) >= w.drain_silence {
                break;
            }
        }
        tokio::time::sleep(POLL).await;
    }
    stop_tx.send_replace(true);

    let mut pubs: Vec<PubStats> = Vec::new();
    for (device, task) in pub_tasks.into_iter().enumerate() {
        // Publishers stop on their own at the deadline; allow a little slack for that.
        let stats = match tokio::time::timeout(Duration::from_secs(2), task).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => failed_pub(device, format!("publisher task: {e}")),
            Err(_) => failed_pub(device, "publisher did not stop".into()),
        };
        pubs.push(stats);
    }
    let mut tallies: Vec<Tally> = Vec::new();
    for (i, task) in sink_tasks.into_iter().enumerate() {
        let tally = match tokio::time::timeout(Duration::from_secs(2), task).await {
            Ok(Ok(t)) => t,
            _ => {
                let mut t = Tally::new(ndev, &[], w.count);
                t.error = Some(format!("subscriber {} did not stop", topo.sinks[i].name));
                t
            }
        };
        tallies.push(tally);
    }

    let meta = RunMeta {
        label,
        started,
        ready,
        ready_s,
        timed_out,
        warnings,
    };
    let report = build_report(w, topo, meta, &pubs, &tallies);
    Ok(RunOutcome {
        report,
        histograms: tallies.into_iter().map(|t| t.latency).collect(),
    })
}

fn failed_pub(device: usize, error: String) -> PubStats {
    PubStats {
        device,
        error: Some(error),
        ..PubStats::default()
    }
}

fn progress_line(
    label: &str,
    started: Instant,
    pubs: &[Arc<PubShared>],
    topo: &Topology,
    sinks: &[Arc<SinkShared>],
) -> String {
    let sent: u64 = pubs.iter().map(|p| p.sent.load(Ordering::Relaxed)).sum();
    let mut line = format!(
        "[{label} {:5.1}s] sent {sent}",
        started.elapsed().as_secs_f64()
    );
    for (sink, s) in topo.sinks.iter().zip(sinks) {
        line.push_str(&format!(
            " | {} {}",
            sink.name,
            s.received.load(Ordering::Relaxed)
        ));
    }
    line
}
