//! Rates and latency quantiles for the dashboard, computed off the data path: once a second
//! a sampler reads each broker's counters and latency histogram and keeps the last minute of
//! samples, so `/api/status` and the stream's snapshots need no Prometheus server and the
//! forwarding code only ever increments counters.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::core::Metric as _;
use serde::Serialize;

use super::Shared;
use crate::brokerset::Broker;
use crate::metrics::METRICS;

/// Samples kept per series: one a second for a minute, plus the one a minute ago.
const HISTORY: usize = 61;

#[derive(Clone)]
struct Sample {
    at: Instant,
    forwarded: u64,
    dropped: u64,
    /// Cumulative bucket counts of the latency histogram.
    buckets: Vec<u64>,
}

/// The derived figures of one broker.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Live {
    pub rate10s: f64,
    pub rate60s: f64,
    /// Forwarding latency over the last minute, seconds; `None` without traffic.
    pub latency_p50: Option<f64>,
    pub latency_p99: Option<f64>,
    pub drop_rate10s: f64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub received: u64,
    pub to_device: u64,
    pub rate_in10s: f64,
    pub rate_out10s: f64,
}

#[derive(Default)]
struct Inner {
    brokers: HashMap<String, VecDeque<Sample>>,
    live: HashMap<String, Live>,
    totals: VecDeque<(Instant, u64, u64)>,
    current: Totals,
}

pub struct Stats {
    inner: Mutex<Inner>,
    pub started: Instant,
}

fn rate(newer: u64, older: u64, dt: Duration) -> f64 {
    let secs = dt.as_secs_f64();
    if secs <= 0.0 {
        0.0
    } else {
        newer.saturating_sub(older) as f64 / secs
    }
}

/// The sample at least `age` older than the newest (or the oldest there is).
fn back<T>(h: &VecDeque<T>, age: Duration, at: impl Fn(&T) -> Instant) -> Option<&T> {
    let newest = at(h.back()?);
    h.iter()
        .rev()
        .find(|s| newest.duration_since(at(s)) >= age)
        .or_else(|| h.front())
}

/// The `q` quantile of the observations between two cumulative bucket snapshots, linearly
/// interpolated inside its bucket (`bounds` are the buckets' upper bounds).
pub fn quantile(bounds: &[f64], newer: &[u64], older: &[u64], q: f64) -> Option<f64> {
    let counts: Vec<u64> = newer
        .iter()
        .zip(older.iter().chain(std::iter::repeat(&0)))
        .map(|(n, o)| n.saturating_sub(*o))
        .collect();
    let total = *counts.last()?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = 0.0;
    let mut below = 0u64;
    for (i, &cum) in counts.iter().enumerate() {
        let upper = bounds.get(i).copied().unwrap_or(lower * 2.0);
        if cum as f64 >= rank {
            let inside = (cum - below).max(1) as f64;
            return Some(
                lower + (upper - lower) * ((rank - below as f64) / inside).clamp(0.0, 1.0),
            );
        }
        lower = upper;
        below = cum;
    }
    Some(lower)
}

fn sample(b: &Broker, at: Instant) -> Sample {
    let h = b.metrics.latency.metric();
    let hist = h.get_histogram();
    let mut buckets: Vec<u64> = hist
        .get_bucket()
        .iter()
        .map(|b| b.cumulative_count())
        .collect();
    buckets.push(hist.get_sample_count());
    Sample {
        at,
        forwarded: b.stats.forwarded.load(Ordering::Relaxed),
        dropped: b.stats.dropped.load(Ordering::Relaxed),
        buckets,
    }
}

impl Stats {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            started: Instant::now(),
        }
    }

    pub fn live(&self, id: &str) -> Live {
        self.inner
            .lock()
            .ok()
            .and_then(|i| i.live.get(id).cloned())
            .unwrap_or_default()
    }

    pub fn totals(&self) -> Totals {
        self.inner
            .lock()
            .map(|i| i.current.clone())
            .unwrap_or_default()
    }

    /// Takes one sample of every broker in `brokers` and recomputes the figures.
    pub fn tick(&self, brokers: &[std::sync::Arc<Broker>]) {
        let now = Instant::now();
        let bounds = crate::metrics::latency_buckets();
        let samples: Vec<(String, Sample)> = brokers
            .iter()
            .map(|b| (b.id().to_string(), sample(b, now)))
            .collect();
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let inner = &mut *inner;
        inner
            .brokers
            .retain(|id, _| samples.iter().any(|(s, _)| s == id));
        inner.live.clear();
        for (id, s) in samples {
            let h = inner.brokers.entry(id.clone()).or_default();
            h.push_back(s);
            while h.len() > HISTORY {
                h.pop_front();
            }
            let Some(newest) = h.back() else { continue };
            let at = |s: &Sample| s.at;
            let (Some(s10), Some(s60)) = (
                back(h, Duration::from_secs(10), at),
                back(h, Duration::from_secs(60), at),
            ) else {
                continue;
            };
            let live = Live {
                rate10s: rate(newest.forwarded, s10.forwarded, newest.at - s10.at),
                rate60s: rate(newest.forwarded, s60.forwarded, newest.at - s60.at),
                drop_rate10s: rate(newest.dropped, s10.dropped, newest.at - s10.at),
                latency_p50: quantile(&bounds, &newest.buckets, &s60.buckets, 0.5),
                latency_p99: quantile(&bounds, &newest.buckets, &s60.buckets, 0.99),
            };
            inner.live.insert(id, live);
        }
        let received = METRICS.messages_received.get();
        let to_device = METRICS.messages_to_device.get();
        inner.totals.push_back((now, received, to_device));
        while inner.totals.len() > HISTORY {
            inner.totals.pop_front();
        }
        if let Some(old) = back(&inner.totals, Duration::from_secs(10), |t| t.0) {
            inner.current = Totals {
                received,
                to_device,
                rate_in10s: rate(received, old.1, now - old.0),
                rate_out10s: rate(to_device, old.2, now - old.0),
            };
        }
    }
}

/// The sampler: one tick a second for as long as the server runs.
pub async fn run(web: Shared) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        web.stats.tick(&web.app.control.brokers().brokers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_window_only() {
        let bounds = [0.001, 0.01, 0.1];
        // Cumulative counts, last entry = total. Older window: 100 slow observations.
        let older = [0, 0, 100, 100];
        // Since then: 98 fast ones (< 1 ms) and 2 in (10 ms, 100 ms].
        let newer = [98, 98, 200, 200];
        let p50 = quantile(&bounds, &newer, &older, 0.5).expect("traffic");
        assert!(p50 <= 0.001, "{p50}");
        let p99 = quantile(&bounds, &newer, &older, 0.99).expect("traffic");
        assert!(p99 > 0.01 && p99 <= 0.1, "{p99}");
        assert_eq!(quantile(&bounds, &older, &older, 0.5), None);
    }

    #[test]
    fn rate_per_second() {
        assert_eq!(rate(150, 50, Duration::from_secs(10)), 10.0);
        assert_eq!(rate(1, 5, Duration::from_secs(1)), 0.0);
    }
}
