//! Per-device bounds on the session side: the bytes held for a device that does not
//! acknowledge (in flight + backlog) stay under `to_device_max_bytes` whatever the broker
//! sends, with the overflow counted; subscriptions per session are capped, SUBACK failure
//! beyond.

use std::process::{Command, Stdio};
use std::time::Duration;

use mqtt_proxy::broker::MqttVersion;
use mqtt_proxy_tests::bidi::wait_subscribed;
use mqtt_proxy_tests::raw::{Raw4, Raw5};
use mqtt_proxy_tests::{wait_until, Mosquitto, TestProxy};
use rumqttc::v5::mqttbytes::v5::{Filter, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;

use super::persistent::WAIT;

/// Resident set size of this process, bytes (Linux).
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn dropped_backlog_full() -> f64 {
    mqtt_proxy_tests::outage::metric_value(
        &mqtt_proxy::metrics::render(),
        "mqtt_proxy_messages_dropped_total",
        &[("broker", "device"), ("reason", "device_backlog_full")],
    )
    .unwrap_or(0.0)
}

/// A device that reads but never acknowledges its QoS 1 deliveries while the broker sends
/// 128 MiB: the proxy holds at most the configured 4 MiB for it (plus its fixed channel),
/// so the process's RSS levels off far below what the broker sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_held_for_a_device_that_never_acknowledges_are_bounded() {
    const BOUND: usize = 4 << 20;
    let broker = Mosquitto::start().await.expect("broker");
    let mut proxy = TestProxy::start(&[&broker], |c, b| {
        c.session.to_device_max_bytes = BOUND;
        b[0].bidirectional = true;
        b[0].mqtt_version = MqttVersion::V5;
    })
    .await
    .expect("proxy");
    let (mut dev, _) = Raw4::connect(proxy.port(), "never-acks", true)
        .await
        .expect("connect");
    dev.subscribe(1, "mem/#", 1).await.expect("suback");
    wait_subscribed(&broker, "mem/#", 1, WAIT)
        .await
        .expect("upstream");
    let before = rss();
    let dropped_before = dropped_backlog_full();

    let file = tempfile::NamedTempFile::new().expect("payload file");
    std::fs::write(file.path(), vec![b'm'; 64 * 1024]).expect("write payload");
    let path = file.path().to_owned();
    let port = broker.port();
    let publisher = tokio::task::spawn_blocking(move || {
        Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "mem/x",
                "-q",
                "1",
            ])
            .arg("-f")
            .arg(&path)
            .args(["--repeat", "2048"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    });
    // Read (so TCP never pushes back) but never acknowledge.
    let mut received = 0usize;
    let mut peak = before;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !publisher.is_finished() && tokio::time::Instant::now() < deadline {
        if let Ok(rumqttc::mqttbytes::v4::Packet::Publish(_)) =
            dev.recv(Duration::from_millis(200)).await
        {
            received += 1;
        }
        peak = peak.max(rss());
    }
    let status = publisher.await.expect("join").expect("mosquitto_pub ran");
    assert!(status.success(), "mosquitto_pub: {status}");
    assert!(
        wait_until(WAIT, || dropped_backlog_full() > dropped_before).await,
        "overflow counted in mqtt_proxy_messages_dropped_total{{reason=\"device_backlog_full\"}}"
    );
    let growth = peak.saturating_sub(before);
    eprintln!(
        "device got {received} unacknowledged deliveries; RSS before {} MiB, peak {} MiB (+{} MiB) while the broker sent 128 MiB",
        before >> 20,
        peak >> 20,
        growth >> 20
    );
    assert!(
        growth < 40 << 20,
        "RSS grew by {} MiB: the to-device path is not bounded by bytes",
        growth >> 20
    );
    proxy.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_per_session_are_capped() {
    let broker = Mosquitto::start().await.expect("broker");
    let mut proxy = TestProxy::start(&[&broker], |c, b| {
        c.session.max_subscriptions = 2;
        b[0].bidirectional = true;
        b[0].mqtt_version = MqttVersion::V5;
    })
    .await
    .expect("proxy");
    let (mut dev, _) = Raw5::connect(proxy.port(), Raw5::connect_packet("capped", true, None))
        .await
        .expect("connect");
    let filters = ["c/1", "c/2", "c/3"]
        .map(|f| Filter::new(f, QoS::AtLeastOnce))
        .to_vec();
    let (ack, _) = dev.subscribe(1, filters, None).await.expect("suback");
    assert_eq!(
        ack.return_codes,
        vec![
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::QuotaExceeded
        ]
    );
    // Re-subscribing to an existing filter is not a new subscription.
    let (ack, _) = dev
        .subscribe(2, vec![Filter::new("c/1", QoS::AtMostOnce)], None)
        .await
        .expect("suback");
    assert_eq!(
        ack.return_codes,
        vec![SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );
    proxy.shutdown().await.expect("shutdown");
}
