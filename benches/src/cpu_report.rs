//! The numbers of `mqtt-load cpu`: each run reduced to CPU seconds (the front process —
//! proxy or bridge — and the receiving brokers) and whether every broker got every
//! message; per rate and case the median and min–max over reps; proxy/bridge ratios
//! taken within a rep. Pure code, plus the stdout table.

use std::fmt::Write as _;

use serde::Serialize;

use crate::compare::Case;
use crate::compare_report::fmt_spread;
use crate::cpu::{CpuConfig, CpuTimes};
use crate::report::RunReport;
use crate::summary::{ratio, Spread};

/// One case at one rate in one rep.
#[derive(Debug, Clone, Serialize)]
pub struct CpuRun {
    pub case: Case,
    pub rate: u64,
    pub rep: usize,
    /// The proxy (c) or the bridging mosquitto (d); none for direct publishing (a).
    pub front_cpu: Option<CpuTimes>,
    /// Each receiving broker's CPU over the same window.
    pub brokers_cpu: Vec<CpuTimes>,
    /// Messages the device sent.
    pub sent: u64,
    /// Every broker received every message the device sent, exactly once counted.
    pub delivered_all: bool,
    /// Per broker: received of sent.
    pub delivered: Vec<(String, u64, u64)>,
    pub loadavg_before: Option<String>,
    pub loadavg_after: Option<String>,
    pub report: RunReport,
}

/// What was measured around one run: the CPU deltas and the load before and after.
#[derive(Debug, Clone)]
pub struct CpuWindow {
    pub front_cpu: Option<CpuTimes>,
    pub brokers_cpu: Vec<CpuTimes>,
    pub loadavg_before: Option<String>,
    pub loadavg_after: Option<String>,
}

impl CpuRun {
    pub fn new(case: Case, rate: u64, rep: usize, window: CpuWindow, report: RunReport) -> CpuRun {
        let sent = report.publish.sent;
        let delivered: Vec<(String, u64, u64)> = report
            .brokers
            .iter()
            .map(|b| (b.name.clone(), b.received, b.sent))
            .collect();
        let delivered_all = !report.timed_out
            && sent > 0
            && report
                .brokers
                .iter()
                .all(|b| b.sent == sent && b.received == sent && b.lost == 0);
        CpuRun {
            case,
            rate,
            rep,
            front_cpu: window.front_cpu,
            brokers_cpu: window.brokers_cpu,
            sent,
            delivered_all,
            delivered,
            loadavg_before: window.loadavg_before,
            loadavg_after: window.loadavg_after,
            report,
        }
    }

    pub fn front_s(&self) -> Option<f64> {
        self.front_cpu.map(|c| c.total())
    }

    pub fn brokers_s(&self) -> f64 {
        self.brokers_cpu.iter().map(CpuTimes::total).sum()
    }
}

/// One (rate, case) cell over reps.
#[derive(Debug, Clone, Serialize)]
pub struct CpuSummary {
    pub rate: u64,
    pub case: Case,
    pub label: String,
    pub runs: usize,
    /// Runs in which every broker got everything.
    pub delivered_all: usize,
    pub front_s: Option<Spread>,
    /// Front CPU per message the device sent, in microseconds.
    pub front_us_per_msg: Option<Spread>,
    pub brokers_s: Option<Spread>,
}

/// Proxy CPU over bridge CPU at one rate, within each rep.
#[derive(Debug, Clone, Serialize)]
pub struct CpuRatio {
    pub rate: u64,
    pub per_rep: Vec<f64>,
    pub spread: Option<Spread>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    pub qos: u8,
    pub payload_size: usize,
    pub duration_s: f64,
    pub brokers: usize,
    pub reps: usize,
    pub rates: Vec<u64>,
    pub loadavg_start: Option<String>,
    pub loadavg_end: Option<String>,
    pub runs: Vec<CpuRun>,
    pub failures: Vec<String>,
    pub skipped: Vec<String>,
    pub cases: Vec<CpuSummary>,
    /// c/d: the proxy's CPU over the bridge's (the goal is ≤ 0.5 at every rate).
    pub proxy_over_bridge: Vec<CpuRatio>,
}

impl CpuReport {
    pub fn new(
        cfg: &CpuConfig,
        cases: &[Case],
        runs: Vec<CpuRun>,
        failures: Vec<String>,
        skipped: Vec<String>,
        loadavg_start: Option<String>,
        loadavg_end: Option<String>,
    ) -> CpuReport {
        let (summaries, ratios) = summarize(&runs, &cfg.rates, cases, cfg.brokers, cfg.reps);
        CpuReport {
            qos: cfg.qos,
            payload_size: cfg.payload_size,
            duration_s: cfg.duration.as_secs_f64(),
            brokers: cfg.brokers,
            reps: cfg.reps,
            rates: cfg.rates.clone(),
            loadavg_start,
            loadavg_end,
            runs,
            failures,
            skipped,
            cases: summaries,
            proxy_over_bridge: ratios,
        }
    }

    /// Every run delivered everything and none failed.
    pub fn all_delivered(&self) -> bool {
        self.failures.is_empty() && self.runs.iter().all(|r| r.delivered_all)
    }

    pub fn render_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "cpu: qos {} | payload {} B | 1 device | {:.0} s per rate | N = {} | {} rep(s); CPU s (utime+stime) median [min-max] over reps",
            self.qos, self.payload_size, self.duration_s, self.brokers, self.reps
        );
        let _ = writeln!(
            s,
            "{:>6} {:<36} {:>9} {:>22} {:>22} {:>22}",
            "msg/s",
            "case",
            "delivered",
            "proxy|bridge CPU s",
            "us per msg",
            "receiving brokers CPU s"
        );
        for c in &self.cases {
            let _ = writeln!(
                s,
                "{:>6} {:<36} {:>9} {:>22} {:>22} {:>22}",
                c.rate,
                c.label,
                format!("{}/{} all", c.delivered_all, c.runs),
                fmt_spread(c.front_s, 3),
                fmt_spread(c.front_us_per_msg, 1),
                fmt_spread(c.brokers_s, 3),
            );
        }
        let _ = writeln!(
            s,
            "proxy CPU / bridge CPU (c/d), within a rep (goal <= 0.5):"
        );
        for r in &self.proxy_over_bridge {
            let _ = writeln!(s, "  {:>6} msg/s  {}", r.rate, fmt_spread(r.spread, 3));
        }
        if let (Some(a), Some(b)) = (&self.loadavg_start, &self.loadavg_end) {
            let _ = writeln!(s, "load average before: {a} | after: {b}");
        }
        let _ = writeln!(
            s,
            "delivered all: {}",
            if self.all_delivered() { "yes" } else { "NO" }
        );
        for line in self.skipped.iter().chain(&self.failures) {
            let _ = writeln!(s, "note: {line}");
        }
        for run in &self.runs {
            if !run.delivered_all {
                let _ = writeln!(
                    s,
                    "not all delivered ({}): sent {}, received {:?}",
                    run.report.label, run.sent, run.delivered
                );
            }
            for w in &run.report.warnings {
                let _ = writeln!(s, "warning ({}): {w}", run.report.label);
            }
        }
        s
    }
}

fn label(case: Case, n: usize) -> String {
    match case {
        Case::A => "a: direct to 1 mosquitto".into(),
        Case::B => format!("b: {n} pubs -> {n} mosquittos"),
        Case::C => format!("c: proxy -> {n} mosquittos"),
        Case::D => format!("d: bridge mosquitto -> {n}"),
    }
}

pub fn summarize(
    runs: &[CpuRun],
    rates: &[u64],
    cases: &[Case],
    brokers: usize,
    reps: usize,
) -> (Vec<CpuSummary>, Vec<CpuRatio>) {
    let mut summaries = Vec::new();
    for &rate in rates {
        for &case in cases {
            let cell: Vec<&CpuRun> = runs
                .iter()
                .filter(|r| r.rate == rate && r.case == case)
                .collect();
            let fronts: Vec<f64> = cell.iter().filter_map(|r| r.front_s()).collect();
            let per_msg: Vec<f64> = cell
                .iter()
                .filter_map(|r| Some(r.front_s()? * 1e6 / r.sent.max(1) as f64))
                .collect();
            let brokers_s: Vec<f64> = cell.iter().map(|r| r.brokers_s()).collect();
            summaries.push(CpuSummary {
                rate,
                case,
                label: label(case, brokers),
                runs: cell.len(),
                delivered_all: cell.iter().filter(|r| r.delivered_all).count(),
                front_s: Spread::of(&fronts),
                front_us_per_msg: Spread::of(&per_msg),
                brokers_s: Spread::of(&brokers_s),
            });
        }
    }
    let ratios = rates
        .iter()
        .map(|&rate| {
            let per_rep: Vec<f64> = (1..=reps)
                .filter_map(|rep| {
                    let get = |c: Case| {
                        runs.iter()
                            .find(|r| r.case == c && r.rate == rate && r.rep == rep)
                            .and_then(CpuRun::front_s)
                    };
                    Some(ratio(get(Case::C)?, get(Case::D)?))
                })
                .collect();
            CpuRatio {
                rate,
                spread: Spread::of(&per_rep),
                per_rep,
            }
        })
        .collect();
    (summaries, ratios)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publisher::PubStats;
    use crate::report::{BrokerReport, PublishReport};
    use crate::summary::LatencyMs;
    use crate::workload::ClientKind;

    fn report(sent: u64, received: &[u64]) -> RunReport {
        RunReport {
            label: "t".into(),
            qos: 1,
            payload_size: 64,
            count_per_device: sent,
            rate_per_device: 500,
            devices: 1,
            ready: true,
            wall_s: 1.0,
            ready_s: 0.1,
            timed_out: false,
            publish: PublishReport {
                client: ClientKind::Raw,
                sent,
                acked: sent,
                send_s: 1.0,
                send_rate: sent as f64,
                last_ack_s: Some(1.0),
            },
            publishers: vec![PubStats::default()],
            brokers: received
                .iter()
                .map(|&r| BrokerReport {
                    name: "b".into(),
                    addr: "x".into(),
                    sent,
                    received: r,
                    lost: sent - r,
                    duplicates: 0,
                    unexpected: 0,
                    window_s: 1.0,
                    throughput_msgs: r as f64,
                    throughput_mb_s: 0.0,
                    latency: LatencyMs::default(),
                })
                .collect(),
            warnings: vec![],
        }
    }

    fn cpu(s: f64) -> CpuTimes {
        CpuTimes {
            user_s: s / 2.0,
            system_s: s / 2.0,
        }
    }

    fn run(case: Case, rep: usize, front: Option<f64>, received: &[u64]) -> CpuRun {
        let window = CpuWindow {
            front_cpu: front.map(cpu),
            brokers_cpu: received.iter().map(|_| cpu(0.1)).collect(),
            loadavg_before: None,
            loadavg_after: None,
        };
        CpuRun::new(case, 500, rep, window, report(1000, received))
    }

    #[test]
    fn proxy_over_bridge_is_taken_within_a_rep_and_loss_is_flagged() {
        let runs = vec![
            run(Case::A, 1, None, &[1000]),
            run(Case::C, 1, Some(0.2), &[1000, 1000, 1000]),
            run(Case::D, 1, Some(0.4), &[1000, 1000, 1000]),
            run(Case::C, 2, Some(0.3), &[1000, 999, 1000]),
            run(Case::D, 2, Some(0.3), &[1000, 1000, 1000]),
        ];
        assert!(runs[1].delivered_all && !runs[3].delivered_all);
        assert!((runs[1].brokers_s() - 0.3).abs() < 1e-9);
        let (cases, ratios) = summarize(&runs, &[500], &[Case::A, Case::C, Case::D], 3, 2);
        let c = cases.iter().find(|c| c.case == Case::C).expect("case c");
        assert_eq!((c.runs, c.delivered_all), (2, 1));
        let us = c.front_us_per_msg.expect("per message");
        assert!((us.min - 200.0).abs() < 1e-9 && (us.max - 300.0).abs() < 1e-9);
        let a = cases.iter().find(|c| c.case == Case::A).expect("case a");
        assert!(
            a.front_s.is_none(),
            "direct publishing has no front process"
        );
        assert_eq!(ratios.len(), 1);
        assert_eq!(ratios[0].per_rep, vec![0.5, 1.0]);
    }
}
