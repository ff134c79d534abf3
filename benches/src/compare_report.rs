//! The comparison's numbers: each case run reduced to msg/s per broker, loss and merged
//! latency; per case the median and min–max over reps; the ratios between cases taken
//! within a rep. Pure code, plus the stdout table.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::compare::Case;
use crate::report::RunReport;
use crate::summary::{ratio, LatencyMs, Spread};

/// One case in one rep, reduced to what the comparison needs.
#[derive(Debug, Clone, Serialize)]
pub struct CaseRun {
    pub case: Case,
    pub rep: usize,
    /// Mean over the case's downstream brokers of each broker's msg/s.
    pub msgs_per_broker: f64,
    /// Sum of messages lost over the case's brokers.
    pub lost: u64,
    /// Percentiles of all brokers' latencies merged.
    pub latency: LatencyMs,
    pub report: RunReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseSummary {
    pub case: Case,
    pub label: String,
    pub runs: usize,
    pub msgs_per_broker: Option<Spread>,
    pub lost: Option<Spread>,
    pub p50_ms: Option<Spread>,
    pub p99_ms: Option<Spread>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RatioSummary {
    /// e.g. "c/a": case c's msg/s per broker over case a's, same rep.
    pub name: String,
    pub per_rep: Vec<f64>,
    pub spread: Option<Spread>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub qos: u8,
    pub payload_size: usize,
    pub count: u64,
    pub rate: u64,
    pub brokers: usize,
    pub reps: usize,
    /// 1/5/15-minute load averages before and after (Linux).
    pub loadavg_start: Option<String>,
    pub loadavg_end: Option<String>,
    pub runs: Vec<CaseRun>,
    pub failures: Vec<String>,
    pub skipped: Vec<String>,
    pub cases: Vec<CaseSummary>,
    pub ratios: Vec<RatioSummary>,
}

/// The ratios the project is judged by, as (numerator, denominator).
pub const RATIOS: [(Case, Case); 4] = [
    (Case::C, Case::A),
    (Case::C, Case::B),
    (Case::D, Case::B),
    (Case::C, Case::D),
];

/// One run's report → the numbers the comparison uses.
pub fn reduce(case: Case, rep: usize, report: RunReport, merged: &Histogram<u64>) -> CaseRun {
    let per_broker: Vec<f64> = report.brokers.iter().map(|b| b.throughput_msgs).collect();
    let msgs_per_broker = if per_broker.is_empty() {
        0.0
    } else {
        per_broker.iter().sum::<f64>() / per_broker.len() as f64
    };
    CaseRun {
        case,
        rep,
        msgs_per_broker,
        lost: report.total_lost(),
        latency: LatencyMs::from_histogram(merged),
        report,
    }
}

/// Per case: median/min–max over reps. Per ratio: computed within each rep that has
/// both cases, then median/min–max.
pub fn summarize(
    runs: &[CaseRun],
    cases: &[Case],
    brokers: usize,
    reps: usize,
) -> (Vec<CaseSummary>, Vec<RatioSummary>) {
    let of_case = |c: Case| runs.iter().filter(move |r| r.case == c);
    let summaries = cases
        .iter()
        .map(|&c| {
            let pick = |f: fn(&CaseRun) -> f64| Spread::of(&of_case(c).map(f).collect::<Vec<_>>());
            CaseSummary {
                case: c,
                label: c.describe(brokers),
                runs: of_case(c).count(),
                msgs_per_broker: pick(|r| r.msgs_per_broker),
                lost: pick(|r| r.lost as f64),
                p50_ms: pick(|r| r.latency.p50),
                p99_ms: pick(|r| r.latency.p99),
            }
        })
        .collect();
    let ratios = RATIOS
        .iter()
        .map(|&(num, den)| {
            let per_rep: Vec<f64> = (1..=reps)
                .filter_map(|rep| {
                    let get = |c: Case| {
                        runs.iter()
                            .find(|r| r.case == c && r.rep == rep)
                            .map(|r| r.msgs_per_broker)
                    };
                    Some(ratio(get(num)?, get(den)?))
                })
                .collect();
            RatioSummary {
                name: format!("{num:?}/{den:?}").to_lowercase(),
                spread: Spread::of(&per_rep),
                per_rep,
            }
        })
        .collect();
    (summaries, ratios)
}

pub(crate) fn fmt_spread(s: Option<Spread>, decimals: usize) -> String {
    match s {
        None => "-".into(),
        Some(s) if s.n == 1 => format!("{:.*}", decimals, s.median),
        Some(s) => format!(
            "{:.*} [{:.*}-{:.*}]",
            decimals, s.median, decimals, s.min, decimals, s.max
        ),
    }
}

impl CompareReport {
    pub fn render_table(&self) -> String {
        let mut s = String::new();
        let rate = match self.rate {
            0 => "max rate".to_string(),
            r => format!("{r} msg/s"),
        };
        let _ = writeln!(
            s,
            "compare: qos {} | payload {} B | {} msgs per publisher @ {} | N = {} | {} rep(s); median [min-max] over reps",
            self.qos, self.payload_size, self.count, rate, self.brokers, self.reps
        );
        let _ = writeln!(
            s,
            "{:<40} {:>4} {:>26} {:>16} {:>22} {:>22}",
            "case", "runs", "msg/s per broker", "lost", "p50 ms", "p99 ms"
        );
        for c in &self.cases {
            let _ = writeln!(
                s,
                "{:<40} {:>4} {:>26} {:>16} {:>22} {:>22}",
                c.label,
                c.runs,
                fmt_spread(c.msgs_per_broker, 0),
                fmt_spread(c.lost, 0),
                fmt_spread(c.p50_ms, 2),
                fmt_spread(c.p99_ms, 2),
            );
        }
        let _ = writeln!(s, "ratios of msg/s per broker, within a rep:");
        for r in &self.ratios {
            let _ = writeln!(s, "  {:<5} {}", r.name, fmt_spread(r.spread, 3));
        }
        if let (Some(a), Some(b)) = (&self.loadavg_start, &self.loadavg_end) {
            let _ = writeln!(s, "load average before: {a} | after: {b}");
        }
        for line in self.skipped.iter().chain(&self.failures) {
            let _ = writeln!(s, "note: {line}");
        }
        for run in &self.runs {
            for w in &run.report.warnings {
                let _ = writeln!(s, "warning ({}): {w}", run.report.label);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publisher::PubStats;
    use crate::report::{BrokerReport, PublishReport};
    use crate::summary::new_histogram;
    use crate::workload::ClientKind;

    fn report(per_broker: &[(f64, u64)]) -> RunReport {
        RunReport {
            label: "t".into(),
            qos: 0,
            payload_size: 64,
            count_per_device: 100,
            rate_per_device: 0,
            devices: 1,
            ready: true,
            wall_s: 1.0,
            ready_s: 0.1,
            timed_out: false,
            publish: PublishReport {
                client: ClientKind::Raw,
                sent: 100,
                acked: 0,
                send_s: 0.5,
                send_rate: 200.0,
                last_ack_s: None,
            },
            publishers: vec![PubStats::default()],
            brokers: per_broker
                .iter()
                .map(|&(msgs, lost)| BrokerReport {
                    name: "b".into(),
                    addr: "x".into(),
                    sent: 100,
                    received: 100 - lost,
                    lost,
                    duplicates: 0,
                    unexpected: 0,
                    window_s: 1.0,
                    throughput_msgs: msgs,
                    throughput_mb_s: 0.0,
                    latency: LatencyMs::default(),
                })
                .collect(),
            warnings: vec![],
        }
    }

    fn run(case: Case, rep: usize, per_broker: &[(f64, u64)]) -> CaseRun {
        let mut h = new_histogram();
        h.record(2_000_000).expect("in range");
        reduce(case, rep, report(per_broker), &h)
    }

    #[test]
    fn reduce_means_throughput_and_sums_loss() {
        let r = run(Case::B, 1, &[(100.0, 1), (300.0, 2)]);
        assert_eq!(r.msgs_per_broker, 200.0);
        assert_eq!(r.lost, 3);
        assert!((r.latency.p50 - 2.0).abs() < 0.01);
    }

    #[test]
    fn ratios_are_taken_within_a_rep() {
        let runs = vec![
            run(Case::A, 1, &[(1000.0, 0)]),
            run(Case::C, 1, &[(500.0, 0), (500.0, 0)]),
            run(Case::A, 2, &[(2000.0, 0)]),
            run(Case::C, 2, &[(500.0, 0), (500.0, 0)]),
            // rep 3 has no case c: it contributes to a's summary but to no ratio
            run(Case::A, 3, &[(4000.0, 0)]),
        ];
        let (cases, ratios) = summarize(&runs, &[Case::A, Case::C], 2, 3);
        let a = cases[0].msgs_per_broker.expect("three runs");
        assert_eq!((a.median, a.min, a.max, a.n), (2000.0, 1000.0, 4000.0, 3));
        assert_eq!(cases[1].runs, 2);
        let ca = ratios.iter().find(|r| r.name == "c/a").expect("c/a");
        assert_eq!(ca.per_rep, vec![0.5, 0.25]);
        let s = ca.spread.expect("two reps");
        assert_eq!((s.median, s.min, s.max), (0.375, 0.25, 0.5));
        let db = ratios.iter().find(|r| r.name == "d/b").expect("d/b");
        assert!(db.per_rep.is_empty() && db.spread.is_none());
    }

    #[test]
    fn spread_formatting() {
        assert_eq!(fmt_spread(None, 0), "-");
        assert_eq!(fmt_spread(Spread::of(&[1.5]), 1), "1.5");
        assert_eq!(fmt_spread(Spread::of(&[1.0, 3.0, 2.0]), 0), "2 [1-3]");
    }
}
