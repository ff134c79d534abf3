//! Integration-test harness: real mosquitto brokers and real MQTT clients, all
//! in temp dirs on free ports, so tests run in parallel without sharing state.
//!
//! It owns the moving parts every proxy integration test needs, and nothing
//! proxy-specific outside [`proxy`], so the harness can be proven on its own
//! (`tests/harness.rs`) before the proxy tests rely on it:
//!
//! ```text
//!   Publisher / mosquitto_pub ──▶ [ device side ] ──▶ Mosquitto #1 ──▶ Subscriber
//!                                  (the proxy)       ─▶ Mosquitto #2 ──▶ Subscriber
//!                                                    └─▶ Mosquitto #N ──▶ Subscriber
//! ```
//!
//! Every wait is bounded by a deadline ([`wait_until`], `wait_for_count`,
//! `wait_acked`, broker readiness): a test fails with a message, it never hangs
//! and never sleeps hoping something happened.

pub mod bidi;
mod cli;
pub mod client_core;
mod mosquitto;
pub mod proxy;
mod publisher;
mod publisher_v5;
pub mod raw;
pub mod sequence;
mod subscriber;
pub mod tls;

pub mod outage;

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rumqttc::QoS;

pub use cli::{mosquitto_pub, mosquitto_pub_log, mosquitto_sub};
pub use mosquitto::{Mosquitto, MosquittoBuilder};
pub use proxy::{ProxyRig, TestProxy};
pub use publisher::{MqttPublisher, Publisher, PublisherBuilder};
pub use publisher_v5::PublisherV5;
pub use subscriber::{MqttSubscriber, Received, Subscriber, SubscriberV5};

/// How often bounded waits re-check their condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Deadline for a client to get CONNACK (and SUBACK) from a broker.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A port that was free a moment ago on 127.0.0.1.
///
/// Racy by nature: the port is released before the caller binds it, so
/// another test may grab it first. [`MosquittoBuilder::start`] copes by
/// retrying on a fresh port when the broker reports "Address already in use".
pub fn free_port() -> u16 {
    try_free_port().expect("binding 127.0.0.1:0 should always yield an ephemeral port")
}

/// [`free_port`] without the panic.
pub fn try_free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Polls `condition` every [`POLL_INTERVAL`] until it holds or `timeout`
/// passes. Returns whether it held, so callers can `assert!` with context.
pub async fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Runs `fut` with a deadline, turning the timeout into an error naming `what`.
pub(crate) async fn within<T>(
    timeout: Duration,
    what: &str,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => bail!("{what}: no result within {timeout:?}"),
    }
}

/// A client id unique across parallel tests in this process and across
/// processes (brokers kick the older of two clients sharing an id).
pub(crate) fn unique_client_id(role: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("harness-{role}-{}-{n}", std::process::id())
}

pub(crate) fn to_qos(qos: u8) -> Result<QoS> {
    match qos {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        other => bail!("QoS must be 0, 1 or 2, got {other}"),
    }
}

pub(crate) fn from_qos(qos: QoS) -> u8 {
    match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}
