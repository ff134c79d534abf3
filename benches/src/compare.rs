//! `mqtt-load compare`: the same workload as (a) one publisher → one mosquitto,
//! (b) N publishers → N mosquittos (the box's ceiling for 1→N), (c) one publisher →
//! proxy → N mosquittos, (d) one publisher → a mosquitto bridging to N mosquittos.
//! Repeated and interleaved (a,b,c,d per rep) over fresh brokers, so drift on the
//! machine hits every case alike; ratios are taken within a rep, then summarized.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::compare_report::{reduce, summarize, CaseRun, CompareReport};
use crate::mosquitto::{Bridge, BrokerLimits, Mosquitto};
use crate::proxy_proc::ProxyProc;
use crate::summary::new_histogram;
use crate::workload::{self, Sink, Topology, Workload};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Case {
    A,
    B,
    C,
    D,
}

impl Case {
    pub const ALL: [Case; 4] = [Case::A, Case::B, Case::C, Case::D];

    pub fn describe(self, n: usize) -> String {
        match self {
            Case::A => "a: 1 pub -> 1 mosquitto (direct)".into(),
            Case::B => format!("b: {n} pubs -> {n} mosquittos (ceiling)"),
            Case::C => format!("c: 1 pub -> proxy -> {n} mosquittos"),
            Case::D => format!("d: 1 pub -> bridge mosquitto -> {n}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CompareConfig {
    pub workload: Workload,
    pub brokers: usize,
    pub reps: usize,
    pub cases: Vec<Case>,
    pub proxy_bin: PathBuf,
    pub limits: BrokerLimits,
}

/// The cases to run, always in the order a, b, c, d within a rep whatever order they were
/// asked in, and why any was skipped (case c without a proxy binary; printed too).
pub(crate) fn plan_cases(
    asked: impl IntoIterator<Item = Case>,
    proxy_bin: &Path,
) -> (Vec<Case>, Vec<String>) {
    let mut cases: Vec<Case> = asked.into_iter().collect();
    cases.sort();
    cases.dedup();
    let mut skipped = Vec::new();
    if cases.contains(&Case::C) && !proxy_bin.is_file() {
        skipped.push(format!(
            "case c skipped: proxy binary not found at {} (build it with `cargo build --release -p mqtt-proxy` or pass --proxy-bin)",
            proxy_bin.display()
        ));
        cases.retain(|&c| c != Case::C);
    }
    for s in &skipped {
        eprintln!("{s}");
    }
    (cases, skipped)
}

pub async fn compare(cfg: &CompareConfig) -> CompareReport {
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    let (cases, skipped) = plan_cases(cfg.cases.iter().copied(), &cfg.proxy_bin);
    let loadavg_start = loadavg();
    if let Some(l) = &loadavg_start {
        eprintln!("load average before: {l}");
    }
    for rep in 1..=cfg.reps {
        for &case in &cases {
            eprintln!("rep {rep}/{}: {}", cfg.reps, case.describe(cfg.brokers));
            match run_case(cfg, case, rep).await {
                // Without readiness the path never carried a probe: its numbers measure
                // a broken setup, not throughput, and would drag every ratio to 0.
                Ok(run) if !run.report.ready => {
                    let msg = format!(
                        "rep {rep} case {case:?}: path not ready ({}); excluded",
                        run.report.warnings.join("; ")
                    );
                    eprintln!("{msg}");
                    failures.push(msg);
                }
                Ok(run) => runs.push(run),
                Err(e) => {
                    let msg = format!("rep {rep} case {case:?}: {e:#}");
                    eprintln!("{msg}");
                    failures.push(msg);
                }
            }
        }
    }
    let (summaries, ratios) = summarize(&runs, &cases, cfg.brokers, cfg.reps);
    let w = &cfg.workload;
    CompareReport {
        qos: w.qos,
        payload_size: w.payload_size,
        count: w.count,
        rate: w.rate,
        brokers: cfg.brokers,
        reps: cfg.reps,
        loadavg_start,
        loadavg_end: loadavg(),
        runs,
        failures,
        skipped,
        cases: summaries,
        ratios,
    }
}

/// `/proc/loadavg`'s 1/5/15-minute averages: other work on the box skews every case,
/// so the report says how busy it was.
pub fn loadavg() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// What case c or d publishes to in front of the downstream brokers (the proxy, or a
/// mosquitto bridging `<topic_root>/#` to each of them); nothing for cases a and b. Kept
/// alive for the run, then stopped.
pub(crate) enum Front {
    None,
    Proxy(ProxyProc),
    Bridge(Mosquitto),
}

impl Front {
    pub(crate) async fn start(
        case: Case,
        proxy_bin: &Path,
        downstream: &[Mosquitto],
        w: &Workload,
        limits: BrokerLimits,
    ) -> anyhow::Result<Front> {
        Ok(match case {
            Case::A | Case::B => Front::None,
            Case::C => {
                let list: Vec<(String, u16)> = downstream
                    .iter()
                    .map(|b| (b.name.clone(), b.port))
                    .collect();
                Front::Proxy(ProxyProc::start(proxy_bin, &list).await?)
            }
            Case::D => {
                let bridges: Vec<Bridge> = downstream
                    .iter()
                    .map(|b| Bridge {
                        name: b.name.clone(),
                        addr: b.addr(),
                        topic: format!("{}/#", w.topic_root),
                        qos: w.qos,
                    })
                    .collect();
                Front::Bridge(Mosquitto::start("bridge", limits, &bridges).await?)
            }
        })
    }

    /// Where the device publishes (cases c and d).
    pub(crate) fn addr(&self) -> Option<String> {
        match self {
            Front::None => None,
            Front::Proxy(p) => Some(p.addr()),
            Front::Bridge(m) => Some(m.addr()),
        }
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        match self {
            Front::None => None,
            Front::Proxy(p) => p.pid(),
            Front::Bridge(m) => m.pid(),
        }
    }

    /// Stops it; after a failed run, prints the proxy's log tail first.
    pub(crate) async fn stop(self, failed: bool) {
        match self {
            Front::None => {}
            Front::Proxy(p) => {
                if failed {
                    eprintln!("proxy log tail:\n{}", p.log_tail(20));
                }
                p.stop().await;
            }
            Front::Bridge(m) => m.stop().await,
        }
    }
}

pub(crate) async fn start_brokers(
    n: usize,
    limits: BrokerLimits,
) -> anyhow::Result<Vec<Mosquitto>> {
    let mut brokers = Vec::with_capacity(n);
    for i in 1..=n {
        brokers.push(Mosquitto::start(&format!("b{i}"), limits, &[]).await?);
    }
    Ok(brokers)
}

pub(crate) fn sinks(brokers: &[Mosquitto], expects: impl Fn(usize) -> Vec<usize>) -> Vec<Sink> {
    brokers
        .iter()
        .enumerate()
        .map(|(i, b)| Sink {
            name: b.name.clone(),
            addr: b.addr(),
            expects: expects(i),
        })
        .collect()
}

async fn run_case(cfg: &CompareConfig, case: Case, rep: usize) -> anyhow::Result<CaseRun> {
    let mut w = cfg.workload.clone();
    w.topic_root = format!("{}/{case:?}{rep}", cfg.workload.topic_root).to_lowercase();
    let label = format!("rep{rep} {case:?}").to_lowercase();
    let n = if case == Case::A { 1 } else { cfg.brokers };
    let downstream = start_brokers(n, cfg.limits).await?;
    let front = Front::start(case, &cfg.proxy_bin, &downstream, &w, cfg.limits).await?;
    let topo = match (case, front.addr()) {
        (Case::B, _) => Topology {
            devices: downstream.iter().map(Mosquitto::addr).collect(),
            sinks: sinks(&downstream, |i| vec![i]),
        },
        (_, addr) => Topology {
            devices: vec![addr.unwrap_or_else(|| downstream[0].addr())],
            sinks: sinks(&downstream, |_| vec![0]),
        },
    };
    let outcome = workload::run(&w, &topo, &label).await;
    front.stop(outcome.is_err()).await;
    for b in downstream {
        b.stop().await;
    }
    let outcome = outcome?;
    let report = outcome.report;
    let mut merged = new_histogram();
    for h in &outcome.histograms {
        let _ = merged.add(h);
    }
    Ok(reduce(case, rep, report, &merged))
}
