//! Send pacing for `--rate`: how many messages are due by now, and when the next one is.
//!
//! Pacing is against the schedule, not the previous send: if the task falls behind
//! (timer granularity is 1 ms, scheduling hiccups), the next wake-up sends every
//! overdue message in one catch-up burst, so the long-run rate stays exact.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    start: Instant,
    /// Messages per second; 0 = as fast as possible.
    rate: u64,
    count: u64,
}

impl Pacer {
    pub fn new(start: Instant, rate: u64, count: u64) -> Pacer {
        Pacer { start, rate, count }
    }

    /// How many messages (in total, since `start`) should have been sent at `now`.
    /// Message `i` is due at `start + i / rate`, so the first is due immediately.
    pub fn due(&self, now: Instant) -> u64 {
        if self.rate == 0 {
            return self.count;
        }
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        let due = elapsed * u128::from(self.rate) / 1_000_000_000 + 1;
        due.min(u128::from(self.count)) as u64
    }

    /// When message `seq` becomes due.
    pub fn due_at(&self, seq: u64) -> Instant {
        if self.rate == 0 {
            return self.start;
        }
        let nanos = u128::from(seq) * 1_000_000_000 / u128::from(self.rate);
        self.start + Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_rate_schedule_with_catch_up() {
        let t0 = Instant::now();
        let p = Pacer::new(t0, 1000, 5000);
        assert_eq!(p.due(t0), 1);
        assert_eq!(p.due(t0 + Duration::from_micros(999)), 1);
        assert_eq!(p.due(t0 + Duration::from_millis(1)), 2);
        // 20 ms late: a burst of everything overdue is allowed
        assert_eq!(p.due(t0 + Duration::from_millis(20)), 21);
        assert_eq!(p.due(t0 + Duration::from_secs(60)), 5000);
        assert_eq!(p.due_at(0), t0);
        assert_eq!(p.due_at(3), t0 + Duration::from_millis(3));
    }

    #[test]
    fn unlimited_rate_is_all_due_now() {
        let t0 = Instant::now();
        let p = Pacer::new(t0, 0, 42);
        assert_eq!(p.due(t0), 42);
        assert_eq!(p.due_at(41), t0);
    }
}
