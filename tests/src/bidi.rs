//! Helpers for the bidirectional-path tests (`tests/bidirectional.rs`):
//! starting the proxy in-process in front of harness brokers, reading its
//! loop-guard metric, knowing when a broker holds a subscription, and (in
//! `bidi/device.rs`) a device client that publishes and subscribes through
//! the proxy.

mod device;

pub use device::{Device, DeviceMessage, Proto, SUBACK_FAILURE};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mqtt_proxy::broker::{BrokerConfig, MqttVersion};
use mqtt_proxy::config::Config;
use mqtt_proxy::ProxyHandle;

use crate::{wait_until, Mosquitto};

/// Starts the proxy on an ephemeral port of 127.0.0.1 with default settings.
pub async fn start_proxy(brokers: &[BrokerConfig]) -> Result<ProxyHandle> {
    let mut config = Config {
        mqtt_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Config::default()
    };
    config.auth.allow_anonymous = true;
    ProxyHandle::start(&config, brokers)
        .await
        .context("starting the proxy")
}

/// A bidirectional broker definition for `broker`. The name is made unique in
/// this process (`{name}-{n}`) because the metrics registry is global and
/// tests read per-broker counters.
pub fn bidi_broker(name: &str, broker: &Mosquitto, version: MqttVersion) -> BrokerConfig {
    let mut config = BrokerConfig::new(unique_name(name), "127.0.0.1", broker.port());
    config.bidirectional = true;
    config.mqtt_version = version;
    config
}

/// `{name}-{n}`, unique within the test process.
pub fn unique_name(name: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{name}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// `mqtt_proxy_loop_suppressed_total{broker, reason}`, 0 when never incremented.
pub fn loop_suppressed(broker: &str, reason: &str) -> u64 {
    counter_value(
        &mqtt_proxy::metrics::render(),
        "mqtt_proxy_loop_suppressed_total",
        &[("broker", broker), ("reason", reason)],
    )
}

/// The value of one counter sample in Prometheus text, 0 when absent.
fn counter_value(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with('{'))
        .find(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Waits until `broker` logged at least `n` subscriptions to exactly `filter`
/// (mosquitto logs each granted filter as `\t<filter> (QoS n)`), e.g. to know
/// the proxy's upstream subscription is in place before publishing.
pub async fn wait_subscribed(
    broker: &Mosquitto,
    filter: &str,
    n: usize,
    timeout: Duration,
) -> Result<()> {
    let needle = format!("\t{filter} (QoS ");
    if wait_until(timeout, || broker.count_in_log(&needle) >= n).await {
        return Ok(());
    }
    bail!(
        "broker on {} logged {} subscriptions to {filter:?}, wanted {n}:\n{}",
        broker.port(),
        broker.count_in_log(&needle),
        broker.log_tail()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_value_reads_one_labelled_sample() {
        let text = "# HELP x\n\
            mqtt_proxy_loop_suppressed_total{broker=\"a-1\",reason=\"echo\"} 3\n\
            mqtt_proxy_loop_suppressed_total{broker=\"a-10\",reason=\"echo\"} 7\n\
            mqtt_proxy_loop_suppressed_total_other{broker=\"a-1\",reason=\"echo\"} 9\n";
        let name = "mqtt_proxy_loop_suppressed_total";
        assert_eq!(
            counter_value(text, name, &[("broker", "a-1"), ("reason", "echo")]),
            3
        );
        assert_eq!(
            counter_value(text, name, &[("broker", "a-10"), ("reason", "echo")]),
            7
        );
        assert_eq!(
            counter_value(text, name, &[("broker", "b"), ("reason", "echo")]),
            0
        );
    }
}
