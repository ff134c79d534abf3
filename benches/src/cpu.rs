//! `mqtt-load cpu`: what forwarding costs in CPU time at everyday, fixed rates. For each
//! rate, one device publishes for a fixed duration (a) straight to one mosquitto, (c)
//! through the proxy to N mosquittos, (d) to a mosquitto bridging to N mosquittos; the
//! CPU seconds of the proxy, the bridge and the receiving brokers are read from
//! `/proc/<pid>/stat` (utime + stime, all threads) right before and after the run.
//!
//! CPU time, unlike wall time, is what a process itself used, so the comparison holds on
//! a box shared with other work; the load average is recorded anyway. Cases and rates
//! are interleaved within each rep over fresh brokers, so drift hits every case alike.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::compare::{loadavg, plan_cases, sinks, start_brokers, Case, Front};
use crate::cpu_report::{CpuReport, CpuRun, CpuWindow};
use crate::mosquitto::{BrokerLimits, Mosquitto};
use crate::workload::{self, Topology, Workload};

#[derive(Debug, Clone)]
pub struct CpuConfig {
    /// Messages per second, one device; each rate runs every case.
    pub rates: Vec<u64>,
    /// Publishing time per run (count = rate × duration).
    pub duration: Duration,
    pub brokers: usize,
    pub reps: usize,
    /// Subset of a, c, d (b has no single process to measure).
    pub cases: Vec<Case>,
    pub qos: u8,
    pub payload_size: usize,
    pub proxy_bin: PathBuf,
    pub limits: BrokerLimits,
    pub progress: bool,
}

/// utime + stime of a process (all its threads, live and exited) in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CpuTimes {
    pub user_s: f64,
    pub system_s: f64,
}

impl CpuTimes {
    pub fn total(&self) -> f64 {
        self.user_s + self.system_s
    }

    pub fn since(&self, before: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user_s: self.user_s - before.user_s,
            system_s: self.system_s - before.system_s,
        }
    }

    /// Parses `/proc/<pid>/stat`: fields 14 and 15 (utime, stime) in clock ticks. The
    /// command name (field 2) may contain spaces and parentheses, so fields are counted
    /// from the last `)`.
    pub fn parse_stat(stat: &str, ticks_per_s: f64) -> Option<CpuTimes> {
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3 (state): utime is field 14 → index 11.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(CpuTimes {
            user_s: utime as f64 / ticks_per_s,
            system_s: stime as f64 / ticks_per_s,
        })
    }

    pub fn of_pid(pid: u32) -> Option<CpuTimes> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Self::parse_stat(&stat, clock_ticks())
    }
}

/// `getconf CLK_TCK` (USER_HZ, the unit of /proc's CPU times); 100 on every Linux the
/// tool is likely to meet, used when getconf is missing.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

pub async fn cpu(cfg: &CpuConfig) -> CpuReport {
    let (cases, skipped) = plan_cases(
        cfg.cases.iter().copied().filter(|c| *c != Case::B),
        &cfg.proxy_bin,
    );
    let loadavg_start = loadavg();
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for rep in 1..=cfg.reps {
        for &rate in &cfg.rates {
            for &case in &cases {
                eprintln!(
                    "rep {rep}/{}: {rate} msg/s, {}",
                    cfg.reps,
                    case.describe(cfg.brokers)
                );
                match run_case(cfg, case, rate, rep).await {
                    Ok(run) => runs.push(run),
                    Err(e) => {
                        let msg = format!("rep {rep} {rate} msg/s case {case:?}: {e:#}");
                        eprintln!("{msg}");
                        failures.push(msg);
                    }
                }
            }
        }
    }
    CpuReport::new(
        cfg,
        &cases,
        runs,
        failures,
        skipped,
        loadavg_start,
        loadavg(),
    )
}

fn workload_for(cfg: &CpuConfig, case: Case, rate: u64, rep: usize) -> Workload {
    let count = ((rate as f64) * cfg.duration.as_secs_f64())
        .round()
        .max(1.0) as u64;
    Workload {
        qos: cfg.qos,
        payload_size: cfg.payload_size,
        count,
        rate,
        topic_root: format!("cpu/{case:?}{rate}r{rep}").to_lowercase(),
        fixed_topic: false,
        // Room for connecting, the readiness probe and the drain on a loaded box.
        timeout: cfg.duration * 2 + Duration::from_secs(20),
        drain_silence: Duration::from_secs(3),
        inflight: 1000,
        client: workload::ClientKind::Raw,
        progress: cfg.progress,
    }
}

async fn run_case(cfg: &CpuConfig, case: Case, rate: u64, rep: usize) -> anyhow::Result<CpuRun> {
    let w = workload_for(cfg, case, rate, rep);
    let n = if case == Case::A { 1 } else { cfg.brokers };
    let downstream = start_brokers(n, cfg.limits).await?;
    let front = Front::start(case, &cfg.proxy_bin, &downstream, &w, cfg.limits).await?;
    let target = front.addr().unwrap_or_else(|| downstream[0].addr());
    let front_pid = front.pid();
    let topo = Topology {
        devices: vec![target],
        sinks: sinks(&downstream, |_| vec![0]),
    };
    let broker_pids: Vec<Option<u32>> = downstream.iter().map(Mosquitto::pid).collect();
    let snapshot = || {
        let front = front_pid.and_then(CpuTimes::of_pid);
        let brokers: Vec<Option<CpuTimes>> = broker_pids
            .iter()
            .map(|p| p.and_then(CpuTimes::of_pid))
            .collect();
        (front, brokers)
    };
    let label = format!("rep{rep} {rate}/s {case:?}").to_lowercase();
    let (front0, brokers0) = snapshot();
    let loadavg_before = loadavg();
    let outcome = workload::run(&w, &topo, &label).await;
    let (front1, brokers1) = snapshot();
    let loadavg_after = loadavg();
    front.stop(outcome.is_err()).await;
    for b in downstream {
        b.stop().await;
    }
    let report = outcome?.report;
    let front_cpu = match (front0, front1) {
        (Some(a), Some(b)) => Some(b.since(&a)),
        _ => None,
    };
    anyhow::ensure!(
        case == Case::A || front_cpu.is_some(),
        "could not read /proc/<pid>/stat of the {} process",
        if case == Case::C { "proxy" } else { "bridge" }
    );
    let mut brokers_cpu = Vec::new();
    for (a, b) in brokers0.iter().zip(&brokers1) {
        match (a, b) {
            (Some(a), Some(b)) => brokers_cpu.push(b.since(a)),
            _ => anyhow::bail!("could not read /proc/<pid>/stat of a receiving broker"),
        }
    }
    let window = CpuWindow {
        front_cpu,
        brokers_cpu,
        loadavg_before,
        loadavg_after,
    };
    Ok(CpuRun::new(case, rate, rep, window, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime …
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        let t = CpuTimes::parse_stat(stat, 100.0).expect("parses");
        assert_eq!(t.user_s, 2.5);
        assert_eq!(t.system_s, 0.75);
        assert_eq!(t.total(), 3.25);
        assert!(CpuTimes::parse_stat("42 (short) S 1", 100.0).is_none());
    }

    #[test]
    fn this_process_has_cpu_times() {
        let me = CpuTimes::of_pid(std::process::id()).expect("/proc/self/stat");
        assert!(me.user_s >= 0.0 && me.system_s >= 0.0);
    }
}
