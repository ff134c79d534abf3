//! Pure summaries of destination health: from what each ready proxy pod's `/api/status`
//! said about its brokers to an MqttBroker's `Connected` condition and counts, and to an
//! MqttProxy's `brokers` / `devices` and the `Degraded` message naming disconnected brokers.
//! No I/O and no clock, so tests can table them, and an unchanged round gives an identical
//! summary (hence an identical status, which is then not written).

use std::collections::{BTreeMap, BTreeSet};

use crate::crd::reason;

/// What one pod said about one of its brokers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerReport {
    /// The proxy's own verdict (`connected` in `/api/status`): every device session's
    /// upstream is up, or none exists and the last attempt succeeded.
    pub connected: bool,
    /// False when the broker is disabled (`enabled: false`): not expected to connect.
    pub enabled: bool,
    pub last_error: Option<String>,
    /// `unreachable`, `bad_credentials`, `not_authorized`, … (the proxy's fixed words).
    pub last_error_reason: Option<String>,
    pub queue_messages: i64,
    pub dropped: u64,
}

/// One pod's answer in one polling round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodPoll {
    Report {
        devices: i64,
        brokers: BTreeMap<String, BrokerReport>,
    },
    /// Its `/api/status` could not be read; the short why.
    Failed(String),
}

/// The latest round for one MqttProxy: ready pod name → answer. Empty: no ready pod.
pub type ProxyPolls = BTreeMap<String, PodPoll>;

/// An MqttProxy's view of its selected brokers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySummary {
    /// Selected brokers every ready pod is connected to; `None` when the pods were not
    /// polled (no admin token), so nothing is known.
    pub connected: Option<i32>,
    pub selected: i32,
    /// Devices connected, summed over the pods that answered.
    pub devices: i64,
    /// `Degraded` reason and message when a selected broker is not connected on some pod.
    pub degraded: Option<(&'static str, String)>,
}

impl ProxySummary {
    /// `status.brokers`: `connected/selected`, `?` when unknown.
    pub fn brokers_column(&self) -> String {
        match self.connected {
            Some(c) => format!("{c}/{}", self.selected),
            None => format!("?/{}", self.selected),
        }
    }
}

fn report<'a>(poll: &'a PodPoll, broker: &str) -> Option<&'a BrokerReport> {
    match poll {
        PodPoll::Report { brokers, .. } => brokers.get(broker),
        PodPoll::Failed(_) => None,
    }
}

/// A pod counts as connected to `broker` only when it answered and said so.
fn pod_connected(poll: &PodPoll, broker: &str) -> bool {
    report(poll, broker).is_some_and(|r| r.connected)
}

/// Whether every pod that reports `broker` has it disabled (then it is not expected to
/// connect and is left out of the counts).
fn disabled(polls: &ProxyPolls, broker: &str) -> bool {
    let mut reports = polls.values().filter_map(|p| report(p, broker)).peekable();
    reports.peek().is_some() && reports.all(|r| !r.enabled)
}

/// `polls` is `None` when the pods could not be polled at all (see [`ProxySummary`]).
pub fn proxy_summary(selected: &BTreeSet<String>, polls: Option<&ProxyPolls>) -> ProxySummary {
    let Some(polls) = polls else {
        return ProxySummary {
            connected: None,
            selected: count(selected.len()),
            devices: 0,
            degraded: None,
        };
    };
    let devices = polls
        .values()
        .map(|p| match p {
            PodPoll::Report { devices, .. } => *devices,
            PodPoll::Failed(_) => 0,
        })
        .sum();
    let expected: Vec<&String> = selected.iter().filter(|b| !disabled(polls, b)).collect();
    let pods = polls.len();
    let mut connected = 0;
    let mut down = Vec::new();
    for b in &expected {
        let up = polls.values().filter(|p| pod_connected(p, b)).count();
        if pods > 0 && up == pods {
            connected += 1;
        } else if pods > 0 {
            down.push(format!("{b} ({up}/{pods} pods)"));
        }
    }
    // No ready pod: `Ready=False` already says so; nothing is disconnected *from a pod*.
    let degraded = (!down.is_empty()).then(|| {
        (
            reason::BROKERS_DISCONNECTED,
            format!("not connected from every ready pod: {}", down.join(", ")),
        )
    });
    ProxySummary {
        connected: Some(connected),
        selected: count(expected.len()),
        devices,
        degraded,
    }
}

/// A broker's health over every MqttProxy that renders it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerSummary {
    /// Ready pods connected, of all ready pods forwarding to it.
    pub connected: i32,
    pub total: i32,
    /// Per MqttProxy: (name, connected, total), sorted by name.
    pub proxies: Vec<(String, i32, i32)>,
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
    /// `pod: error` of the first disconnected pod with an error.
    pub last_error: Option<String>,
    pub queue_depth: i64,
    pub dropped_total: u64,
}

impl BrokerSummary {
    /// The `Connected` printer column, e.g. `3/3`.
    pub fn column(&self) -> String {
        format!("{}/{}", self.connected, self.total)
    }
}

/// The condition reason a proxy's error word stands for. TLS failures happen while
/// connecting, so the proxy files them under `unreachable`; the error text tells them apart.
pub fn reason_for(report: Option<&BrokerReport>) -> &'static str {
    let Some(r) = report else {
        return reason::DISCONNECTED;
    };
    let text = r
        .last_error
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match r.last_error_reason.as_deref() {
        Some("bad_credentials" | "not_authorized") => reason::AUTH_FAILED,
        Some("unreachable")
            if ["tls", "certificate", "handshake"]
                .iter()
                .any(|w| text.contains(w)) =>
        {
            reason::TLS_ERROR
        }
        Some("unreachable") => reason::UNREACHABLE,
        _ => reason::DISCONNECTED,
    }
}

/// `proxies`: (MqttProxy name, its latest round) for every proxy that renders `broker`.
pub fn broker_summary(broker: &str, proxies: &[(String, &ProxyPolls)]) -> BrokerSummary {
    let mut per_proxy = Vec::new();
    let (mut connected, mut total) = (0usize, 0usize);
    let (mut queue_depth, mut dropped_total) = (0i64, 0u64);
    let mut reasons = BTreeSet::new();
    let mut problems = Vec::new();
    let mut last_error = None;
    let mut unreadable = 0usize;
    let mut disabled_pods = 0usize;
    for (name, polls) in proxies {
        let (mut up, mut pods) = (0usize, 0usize);
        for (pod, poll) in polls.iter() {
            let r = report(poll, broker);
            if r.is_some_and(|r| !r.enabled) {
                disabled_pods += 1;
                continue;
            }
            pods += 1;
            if let Some(r) = r {
                queue_depth += r.queue_messages;
                dropped_total += r.dropped;
            }
            if pod_connected(poll, broker) {
                up += 1;
                continue;
            }
            match poll {
                PodPoll::Failed(why) => {
                    unreadable += 1;
                    problems.push(format!("{pod}: status unreadable ({why})"));
                }
                PodPoll::Report { .. } => {
                    reasons.insert(reason_for(r));
                    let err = r.and_then(|r| r.last_error.clone());
                    let err = err.unwrap_or_else(|| match r {
                        Some(_) => "not connected yet".into(),
                        None => "broker not loaded by this pod yet".into(),
                    });
                    let line = format!("{pod}: {err}");
                    if last_error.is_none() && r.is_some_and(|r| r.last_error.is_some()) {
                        last_error = Some(line.clone());
                    }
                    problems.push(line);
                }
            }
        }
        per_proxy.push((name.clone(), count(up), count(pods)));
        connected += up;
        total += pods;
    }
    per_proxy.sort();
    let pods_word = |n: usize| if n == 1 { "pod" } else { "pods" };
    let summary = format!(
        "{connected}/{total} ready proxy {} connected",
        pods_word(total)
    );
    let (status, why) = if total == 0 && disabled_pods > 0 {
        ("False", reason::DISABLED)
    } else if total == 0 {
        ("Unknown", reason::NO_READY_PODS)
    } else if connected == total {
        ("True", reason::CONNECTED)
    } else if unreadable == total - connected && connected == 0 {
        ("Unknown", reason::STATUS_UNAVAILABLE)
    } else if connected > 0 {
        ("False", reason::PARTIALLY_CONNECTED)
    } else if reasons.len() == 1 {
        (
            "False",
            reasons.into_iter().next().unwrap_or(reason::DISCONNECTED),
        )
    } else {
        ("False", reason::DISCONNECTED)
    };
    let message = match (status, total) {
        ("False", 0) => "disabled (spec.enabled is false)".to_string(),
        (_, 0) => "no ready proxy pod forwards to this broker".to_string(),
        _ if problems.is_empty() => summary,
        // Bounded: a condition message is no log.
        _ => format!("{summary}; {}", first_few(&problems, 3)),
    };
    BrokerSummary {
        connected: count(connected),
        total: count(total),
        proxies: per_proxy,
        status,
        reason: why,
        message,
        last_error,
        queue_depth,
        dropped_total,
    }
}

fn first_few(items: &[String], n: usize) -> String {
    let mut s = items.iter().take(n).cloned().collect::<Vec<_>>().join("; ");
    if items.len() > n {
        s.push_str(&format!("; and {} more", items.len() - n));
    }
    s
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
