//! Reconnect delays, and why a connection attempt failed.
//!
//! The backoff only starts over once a connection has been *stable*: a CONNACK with success
//! followed by [`STABLE_AFTER`] without a failure. Resetting on TCP connect (as this once
//! did) turns a broker that refuses our credentials, or accepts and then drops us, into a
//! reconnect loop at the base delay (127 CONNECTs in 10 s were measured).

use std::time::Duration;

/// How long a connection must last after a successful CONNACK before the backoff resets.
pub const STABLE_AFTER: Duration = Duration::from_secs(5);

/// First delay after a refused CONNACK: repeating a refused login after 100 ms only loads
/// the broker (and its auth backend); a fixed credential or lifted ban can wait a second.
pub const REFUSED_FLOOR: Duration = Duration::from_secs(1);

/// Why an attempt did not end in a stable connection. Each maps to a fixed metric label
/// (`mqtt_proxy_upstream_connect_failures_total{reason}`), so labels stay bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// TCP connect or TLS handshake failed.
    Unreachable,
    /// Connected, but no CONNACK (closed, timed out, or garbage).
    NoConnack,
    /// CONNACK: bad user name or password (3.1.1 code 4, v5 0x86).
    BadCredentials,
    /// CONNACK: not authorised (3.1.1 code 5, v5 0x87).
    NotAuthorized,
    /// CONNACK: server unavailable or busy (3.1.1 code 3, v5 0x88/0x89).
    ServerUnavailable,
    /// CONNACK: banned (v5 0x8A).
    Banned,
    /// Any other refusing CONNACK code.
    Refused,
    /// The connection was accepted and failed before it was stable.
    Dropped,
}

impl FailReason {
    /// The reason a refusing CONNACK return code (3.1.1) or reason code (v5) stands for.
    pub fn from_connack(code: u8) -> Self {
        match code {
            0x04 | 0x86 => Self::BadCredentials,
            0x05 | 0x87 => Self::NotAuthorized,
            0x03 | 0x88 | 0x89 => Self::ServerUnavailable,
            0x8A => Self::Banned,
            _ => Self::Refused,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::NoConnack => "no_connack",
            Self::BadCredentials => "bad_credentials",
            Self::NotAuthorized => "not_authorized",
            Self::ServerUnavailable => "server_unavailable",
            Self::Banned => "banned",
            Self::Refused => "refused",
            Self::Dropped => "dropped",
        }
    }

    pub const ALL: [FailReason; 8] = [
        Self::Unreachable,
        Self::NoConnack,
        Self::BadCredentials,
        Self::NotAuthorized,
        Self::ServerUnavailable,
        Self::Banned,
        Self::Refused,
        Self::Dropped,
    ];

    /// The broker answered and said no: retrying soon will not change its mind.
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            Self::BadCredentials
                | Self::NotAuthorized
                | Self::ServerUnavailable
                | Self::Banned
                | Self::Refused
        )
    }
}

/// Exponential backoff with jitter: each delay is drawn from [d/2, d], d doubling up to `max`.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            current: base,
        }
    }
    pub fn reset(&mut self) {
        self.current = self.base;
    }
    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = d / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// The delay after an attempt that failed for `reason`, given how long the connection
    /// had been up after a successful CONNACK (`None`: it never got one). Only a connection
    /// that stayed up for [`STABLE_AFTER`] starts the backoff over.
    pub fn after_failure(&mut self, reason: FailReason, up_for: Option<Duration>) -> Duration {
        if up_for.is_some_and(|d| d >= STABLE_AFTER) {
            self.reset();
        }
        if reason.is_refusal() && self.current < REFUSED_FLOOR {
            self.current = REFUSED_FLOOR.min(self.max);
        }
        self.next_delay()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(30));
        }
        assert!(
            b.next_delay() >= Duration::from_secs(15),
            "capped at max, jitter keeps >= max/2"
        );
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    fn total(b: &mut Backoff, n: usize, reason: FailReason, up: Option<Duration>) -> Duration {
        (0..n).map(|_| b.after_failure(reason, up)).sum()
    }

    #[test]
    fn refusals_start_at_the_floor_and_grow() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let first = b.after_failure(FailReason::BadCredentials, None);
        assert!(first >= REFUSED_FLOOR / 2, "{first:?}");
        // Ten refusals in a row wait at least 1/2 (1+2+4+8+16+30*5) s = 90 s in total.
        let rest = total(&mut b, 9, FailReason::NotAuthorized, None);
        assert!(
            rest + first >= Duration::from_secs(90),
            "{:?}",
            rest + first
        );
    }

    #[test]
    fn a_drop_before_the_stable_period_does_not_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let short = Some(STABLE_AFTER / 2);
        total(&mut b, 8, FailReason::Dropped, short);
        // 100 ms doubled eight times is 25.6 s: a reset would bring it back to 100 ms.
        let d = b.after_failure(FailReason::Dropped, short);
        assert!(d >= Duration::from_secs(12), "{d:?}");
        let d = b.after_failure(FailReason::Dropped, Some(STABLE_AFTER));
        assert!(
            d <= Duration::from_millis(100),
            "stable connection resets: {d:?}"
        );
    }

    #[test]
    fn connack_codes_map_to_reasons() {
        let cases = [
            (0x04, FailReason::BadCredentials),
            (0x86, FailReason::BadCredentials),
            (0x05, FailReason::NotAuthorized),
            (0x87, FailReason::NotAuthorized),
            (0x03, FailReason::ServerUnavailable),
            (0x88, FailReason::ServerUnavailable),
            (0x89, FailReason::ServerUnavailable),
            (0x8A, FailReason::Banned),
            (0x02, FailReason::Refused),
            (0x85, FailReason::Refused),
        ];
        for (code, want) in cases {
            assert_eq!(FailReason::from_connack(code), want, "code {code:#04x}");
            assert!(want.is_refusal());
        }
        assert!(!FailReason::Dropped.is_refusal());
    }
}
