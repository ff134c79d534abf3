//! Summary math, free of I/O: latency percentiles from an HDR histogram, and the
//! median / min–max / ratio reductions that `compare` applies across repetitions.

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in nanoseconds, 3 significant digits, growing as needed.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant figures is a valid HDR precision")
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencyMs {
    pub fn from_histogram(h: &Histogram<u64>) -> LatencyMs {
        if h.is_empty() {
            return LatencyMs::default();
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        LatencyMs {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Median and range of one quantity over repetitions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    /// `None` for an empty set; NaNs are ignored (a ratio whose denominator was 0).
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Spread {
            median: median_sorted(&v),
            min: v[0],
            max: v[v.len() - 1],
            n: v.len(),
        })
    }
}

/// Median of sorted values; the mean of the middle two for an even count.
fn median_sorted(v: &[f64]) -> f64 {
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// `num / den`, NaN when the denominator is not positive (so `Spread` skips it).
pub fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else {
        f64::NAN
    }
}

/// Messages per second over `[first, last]` nanoseconds; 0 for an empty window.
pub fn rate_per_sec(count: u64, first_ns: u64, last_ns: u64) -> f64 {
    if last_ns <= first_ns || count == 0 {
        return 0.0;
    }
    count as f64 / ((last_ns - first_ns) as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_odd_even_and_empty() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).expect("non-empty");
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = Spread::of(&[4.0, 1.0, 3.0, 2.0]).expect("non-empty");
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        let s = Spread::of(&[5.0]).expect("non-empty");
        assert_eq!((s.median, s.min, s.max), (5.0, 5.0, 5.0));
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[f64::NAN]), None);
        let s = Spread::of(&[f64::NAN, 2.0, 4.0]).expect("NaN skipped");
        assert_eq!((s.median, s.n), (3.0, 2));
    }

    #[test]
    fn ratio_and_rate() {
        assert_eq!(ratio(50.0, 100.0), 0.5);
        assert!(ratio(1.0, 0.0).is_nan());
        assert_eq!(rate_per_sec(1000, 0, 500_000_000), 2000.0);
        assert_eq!(rate_per_sec(1000, 10, 10), 0.0);
        assert_eq!(rate_per_sec(0, 0, 10), 0.0);
    }

    #[test]
    fn percentiles_from_histogram() {
        let mut h = new_histogram();
        assert_eq!(LatencyMs::from_histogram(&h), LatencyMs::default());
        // 1..=1000 µs, one sample each
        for us in 1..=1000u64 {
            h.record(us * 1000).expect("in range");
        }
        let l = LatencyMs::from_histogram(&h);
        let close = |got: f64, want: f64| (got - want).abs() / want < 0.005;
        assert!(close(l.p50, 0.5), "p50 {}", l.p50);
        assert!(close(l.p90, 0.9), "p90 {}", l.p90);
        assert!(close(l.p99, 0.99), "p99 {}", l.p99);
        assert!(close(l.p999, 0.999), "p999 {}", l.p999);
        assert!(close(l.max, 1.0), "max {}", l.max);
    }
}
