//! Health test helpers: a broker report that is up or down, a round of pods.

use std::collections::BTreeMap;

use mqtt_proxy_operator::health::summary::BrokerReport;
use mqtt_proxy_operator::health::{PodPoll, ProxyPolls};

pub fn up() -> BrokerReport {
    BrokerReport {
        connected: true,
        enabled: true,
        ..Default::default()
    }
}

pub fn down(reason: &str, error: &str) -> BrokerReport {
    BrokerReport {
        connected: false,
        enabled: true,
        last_error: Some(error.into()),
        last_error_reason: Some(reason.into()),
        queue_messages: 4,
        dropped: 2,
    }
}

/// A round of pods `name-0..` each reporting `broker` as given.
pub fn round(name: &str, broker: &str, reports: Vec<BrokerReport>) -> ProxyPolls {
    reports
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let poll = PodPoll::Report {
                devices: 2,
                brokers: BTreeMap::from([(broker.to_string(), r)]),
            };
            (format!("{name}-{i}"), poll)
        })
        .collect()
}
