//! Volume through the echo table: a long healthy run, and a backlog deeper
//! than the table flushed after an outage.

use std::time::{Duration, Instant};

use mqtt_proxy::broker::MqttVersion;
use mqtt_proxy_tests::bidi::{bidi_broker, loop_suppressed, start_proxy, Proto};
use mqtt_proxy_tests::{wait_until, Subscriber};

use super::{
    cli_pub, connect_device, sessions_connected, start_brokers, wait_upstreams_connected, QUIET,
    WAIT,
};

// ---------------------------------------------------------------------------
// 10. A long run through the echo table
// ---------------------------------------------------------------------------

/// 20,000 distinct QoS 0 messages through a 3.1.1 bidirectional broker (every
/// one recorded, every echo absorbed): the device gets exactly 20,000 and
/// stays connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_distinct_messages_loop_back_exactly_once() {
    const N: usize = 20_000;
    const BATCH: usize = 1_000;
    let brokers = start_brokers(1).await;
    let b = &brokers[0];
    let sub = Subscriber::connect(b.port(), "load/#", 0)
        .await
        .expect("sub");
    let config = bidi_broker("load", b, MqttVersion::V311);
    let proxy = start_proxy(std::slice::from_ref(&config))
        .await
        .expect("proxy");
    let device = connect_device(&proxy, Proto::V4).await;
    assert_eq!(device.subscribe("load/#", 0).await.expect("SUBACK"), 0);

    let started = Instant::now();
    // Batches well inside the echo table's capacity: the table is bounded by
    // design, and this test is about a long healthy run, not a burst.
    for start in (0..N).step_by(BATCH) {
        for i in start..start + BATCH {
            device
                .publish("load/x", i.to_string(), 0)
                .await
                .expect("publish");
        }
        let reached = sub.wait_for_count(start + BATCH, WAIT).await.len();
        assert_eq!(reached, start + BATCH, "broker got batch at {start}");
    }
    cli_pub(b.port(), "load/end", "end", 0).await;
    assert!(
        device
            .wait_for_payload("end", 1, Duration::from_secs(10))
            .await
    );
    let got = device.wait_quiet(QUIET, WAIT).await;
    println!("{N} messages looped back in {:?}", started.elapsed());
    assert_eq!(got.len(), N + 1, "each message once, plus the end marker");
    let mut seen = vec![false; N];
    for m in &got[..N] {
        let i: usize = std::str::from_utf8(&m.payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .expect("numeric payload");
        assert!(!seen[i], "message {i} delivered twice");
        seen[i] = true;
    }
    assert_eq!(loop_suppressed(&config.name, "echo"), N as u64);
    assert!(device.error().is_none(), "{:?}", device.error());
    assert_eq!(proxy.devices(), 1);
    proxy.shutdown().await;
}

/// The device publishes while its broker is down; when the broker returns,
/// the proxy flushes the backlog and the broker echoes all of it. Each echo
/// must still be absorbed, however deep the backlog was (up to the queue's
/// 10,000 messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoes_of_a_backlog_flushed_after_an_outage_are_suppressed() {
    const N: usize = 5_000;
    let mut brokers = start_brokers(1).await;
    let config = bidi_broker("backlog", &brokers[0], MqttVersion::V311);
    let proxy = start_proxy(std::slice::from_ref(&config))
        .await
        .expect("proxy");
    let device = connect_device(&proxy, Proto::V4).await;
    assert_eq!(device.subscribe("load/#", 0).await.expect("SUBACK"), 0);
    wait_upstreams_connected(&proxy, 1).await;

    brokers[0].kill().expect("kill");
    assert!(wait_until(WAIT, || sessions_connected(&proxy, &config.id) == Some(0)).await);
    for i in 0..N {
        device
            .publish("load/x", i.to_string(), 0)
            .await
            .expect("publish");
    }
    assert_eq!(device.wait_for_count(N, WAIT).await.len(), N, "loopbacks");

    brokers[0].restart().await.expect("restart");
    let flushed = format!("Received PUBLISH from {} ", device.client_id());
    assert!(
        wait_until(Duration::from_secs(10), || brokers[0]
            .count_in_log(&flushed)
            >= N)
        .await,
        "backlog flushed: {} of {N}",
        brokers[0].count_in_log(&flushed)
    );
    cli_pub(brokers[0].port(), "load/end", "end", 0).await;
    assert!(device.wait_for_payload("end", 1, WAIT).await);
    let got = device.wait_quiet(QUIET, WAIT).await;
    println!(
        "backlog of {N}: device received {} (suppressed {})",
        got.len() - 1,
        loop_suppressed(&config.name, "echo")
    );
    assert_eq!(got.len(), N + 1, "each message once, plus the end marker");
    proxy.shutdown().await;
}
