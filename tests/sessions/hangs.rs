//! A device that subscribes and then never reads while its broker floods it must not hold
//! anything hostage: it is disconnected within the write timeout (counted), a takeover of
//! its client id works while it is stuck, and the proxy still shuts down in time.

use std::time::{Duration, Instant};

use mqtt_proxy::broker::MqttVersion;
use mqtt_proxy_tests::bidi::wait_subscribed;
use mqtt_proxy_tests::raw::Raw4;
use mqtt_proxy_tests::{wait_until, Mosquitto, Publisher, TestProxy};
use tokio::net::TcpStream;

use super::persistent::WAIT;

const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

async fn rig() -> (Mosquitto, TestProxy) {
    let broker = Mosquitto::start().await.expect("broker");
    let proxy = TestProxy::start(&[&broker], |c, b| {
        c.session.device_write_timeout = WRITE_TIMEOUT;
        b[0].bidirectional = true;
        b[0].mqtt_version = MqttVersion::V5;
    })
    .await
    .expect("proxy");
    (broker, proxy)
}

/// Subscribes `id` to `flood/#` through the proxy and returns the socket, never to be read.
async fn stuck_device(broker: &Mosquitto, proxy: &TestProxy, id: &str) -> TcpStream {
    let (mut dev, _) = Raw4::connect(proxy.port(), id, true)
        .await
        .expect("connect");
    dev.subscribe(1, "flood/#", 0).await.expect("suback");
    wait_subscribed(broker, "flood/#", 1, WAIT)
        .await
        .expect("upstream subscribed");
    dev.into_stream()
}

/// 48 MiB of QoS 0 messages from a client of the broker, far beyond what socket buffers
/// hold; runs until the test ends.
async fn flood(broker: &Mosquitto) -> Publisher {
    let publisher = Publisher::connect(broker.port()).await.expect("publisher");
    let payload = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    for _ in 0..768 {
        publisher
            .publish("flood/x", payload.clone(), 0, false)
            .await
            .expect("publish");
    }
    publisher
}

/// Waits until the broker stopped being able to send to `client_id` (at least 50 messages
/// sent, then none for a second): every buffer between it and the device is full.
async fn wait_stuck(broker: &Mosquitto, client_id: &str) {
    let needle = format!("Sending PUBLISH to {client_id} ");
    let mut last = (0, Instant::now());
    let stuck = wait_until(Duration::from_secs(30), || {
        let n = broker.count_in_log(&needle);
        if n != last.0 {
            last = (n, Instant::now());
        }
        n >= 50 && last.1.elapsed() >= Duration::from_secs(1)
    })
    .await;
    assert!(stuck, "the broker kept sending ({} so far)", last.0);
}

fn upstream_sessions(proxy: &TestProxy) -> usize {
    proxy.status().iter().map(|s| s.sessions).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_never_reads_is_disconnected_and_shutdown_completes() {
    let (broker, mut proxy) = rig().await;
    let _stuck = stuck_device(&broker, &proxy, "never-reads").await;
    let _flood = flood(&broker).await;
    let started = Instant::now();
    let bound = WRITE_TIMEOUT + Duration::from_secs(20);
    assert!(
        wait_until(bound, || upstream_sessions(&proxy) == 0).await,
        "the stuck device's session is still open after {bound:?}: {:?}",
        proxy.status()
    );
    let took = started.elapsed();
    let text = mqtt_proxy::metrics::render();
    assert!(
        text.lines()
            .any(|l| l.starts_with("mqtt_proxy_device_disconnects_total")
                && l.contains("write_timeout")),
        "counted in mqtt_proxy_device_disconnects_total"
    );
    eprintln!("stuck device disconnected after {took:?}");
    proxy.shutdown().await.expect("shutdown in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_and_shutdown_work_while_a_device_is_stuck() {
    let broker = Mosquitto::start().await.expect("broker");
    // A long write timeout: takeover and shutdown must not wait for it.
    let mut proxy = TestProxy::start(&[&broker], |c, b| {
        c.session.device_write_timeout = Duration::from_secs(300);
        b[0].bidirectional = true;
        b[0].mqtt_version = MqttVersion::V5;
    })
    .await
    .expect("proxy");
    let _stuck = stuck_device(&broker, &proxy, "stuck-then-taken").await;
    let _flood = flood(&broker).await;
    wait_stuck(&broker, "stuck-then-taken").await;
    let (mut again, ack) = Raw4::connect(proxy.port(), "stuck-then-taken", true)
        .await
        .expect("takeover CONNACK");
    assert!(!ack.session_present);
    // The stuck session ended: one upstream session left, and it is connected.
    assert!(
        wait_until(WAIT, || proxy
            .status()
            .iter()
            .all(|s| s.sessions == 1 && s.sessions_connected == 1))
        .await,
        "after the takeover: {:?}",
        proxy.status()
    );
    again.subscribe(1, "live/#", 0).await.expect("suback");
    // Shutdown is not held up by a device that never reads (the new one does not either).
    let started = Instant::now();
    proxy.shutdown().await.expect("shutdown in time");
    eprintln!("shutdown took {:?}", started.elapsed());
}
