//! Device SUBSCRIBE and UNSUBSCRIBE against several brokers: the SUBACK while
//! one broker is dead or hung, the subscription following a broker's restart,
//! and unsubscribing upstream.

use std::time::{Duration, Instant};

use mqtt_proxy::broker::MqttVersion;
use mqtt_proxy_tests::bidi::{bidi_broker, start_proxy, wait_subscribed, Device, Proto};
use mqtt_proxy_tests::{wait_until, Publisher};

use super::{
    cli_pub, connect_device, sessions_connected, start_bidi, start_brokers,
    wait_upstreams_connected, QUIET, WAIT,
};

// ---------------------------------------------------------------------------
// 7. SUBACK with a broker down
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suback_arrives_with_a_killed_broker_and_the_subscription_follows_its_restart() {
    let (mut brokers, configs, proxy) = start_bidi(2, "killed", MqttVersion::V311).await;
    let device = connect_device(&proxy, Proto::V4).await;
    wait_upstreams_connected(&proxy, 2).await;

    brokers[1].kill().expect("kill B");
    assert!(
        wait_until(WAIT, || sessions_connected(&proxy, &configs[1].id)
            == Some(0))
        .await,
        "the proxy noticed: {:?}",
        proxy.status()
    );
    let started = Instant::now();
    let code = device.subscribe("cmd/#", 1).await.expect("SUBACK");
    let took = started.elapsed();
    assert_eq!(code, 1, "granted by the healthy broker");
    assert!(took < Duration::from_secs(2), "SUBACK took {took:?}");

    cli_pub(brokers[0].port(), "cmd/x", "from-a", 1).await;
    assert!(device.wait_for_payload("from-a", 1, WAIT).await);

    // B comes back: the upstream reconnects (backoff) and subscribes for the device.
    brokers[1].restart().await.expect("restart B");
    wait_subscribed(&brokers[1], "cmd/#", 1, Duration::from_secs(10))
        .await
        .expect("subscription restored on B");
    cli_pub(brokers[1].port(), "cmd/x", "from-b", 1).await;
    assert!(
        device.wait_for_payload("from-b", 1, WAIT).await,
        "{:?}",
        device.received()
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suback_arrives_with_a_paused_broker() {
    let (brokers, _, proxy) = start_bidi(2, "paused", MqttVersion::V311).await;
    let device = connect_device(&proxy, Proto::V4).await;
    wait_upstreams_connected(&proxy, 2).await;

    brokers[1].pause().expect("pause B");
    let started = Instant::now();
    let code = device
        .subscribe_within("cmd/#", 1, Duration::from_secs(15))
        .await
        .expect("SUBACK despite the hung broker");
    let took = started.elapsed();
    println!("SUBACK with a paused broker took {took:?}");
    assert_eq!(code, 1, "granted by the healthy broker");

    cli_pub(brokers[0].port(), "cmd/x", "from-a", 1).await;
    assert!(device.wait_for_payload("from-a", 1, WAIT).await);
    assert!(device.error().is_none(), "{:?}", device.error());
    brokers[1].resume().expect("resume B");
    proxy.shutdown().await;
}

/// While one broker holds a SUBACK back, the device is still served: messages
/// from the healthy broker keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_suback_does_not_stall_the_device() {
    let (brokers, _, proxy) = start_bidi(2, "stall", MqttVersion::V311).await;
    let device = connect_device(&proxy, Proto::V4).await;
    assert_eq!(device.subscribe("cmd/#", 1).await.expect("SUBACK"), 1);

    brokers[1].pause().expect("pause B");
    device
        .send_subscribe("other/#", 1)
        .await
        .expect("SUBSCRIBE");
    let started = Instant::now();
    cli_pub(brokers[0].port(), "cmd/x", "during", 1).await;
    let arrived = device
        .wait_for_payload("during", 1, Duration::from_secs(12))
        .await;
    let took = started.elapsed();
    brokers[1].resume().expect("resume B");
    assert!(arrived, "never arrived");
    assert!(
        took < Duration::from_secs(1),
        "a message from the healthy broker waited {took:?} behind B's SUBACK"
    );
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// 8. Unsubscribe
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_unsubscribe_nothing_more_arrives() {
    let brokers = start_brokers(2).await;
    let configs = [
        bidi_broker("unsub-a", &brokers[0], MqttVersion::V311),
        bidi_broker("unsub-b", &brokers[1], MqttVersion::V5),
    ];
    let proxy = start_proxy(&configs).await.expect("proxy");
    let device = connect_device(&proxy, Proto::V4).await;
    assert_eq!(device.subscribe("cmd/#", 1).await.expect("SUBACK"), 1);
    assert_eq!(device.subscribe("ctl/#", 1).await.expect("SUBACK"), 1);
    for (i, b) in brokers.iter().enumerate() {
        cli_pub(b.port(), "cmd/x", &format!("before-{i}"), 1).await;
    }
    assert!(device.wait_for_count(2, WAIT).await.len() == 2);

    device.unsubscribe("cmd/#").await.expect("UNSUBACK");
    let unsubscribed = format!("Received UNSUBSCRIBE from {}", device.client_id());
    for b in &brokers {
        assert!(
            wait_until(WAIT, || b.count_in_log(&unsubscribed) == 1).await,
            "the proxy unsubscribed upstream:\n{}",
            b.log_tail()
        );
    }
    device.publish("cmd/own", "own", 1).await.expect("publish");
    device.wait_acked(WAIT).await.expect("acked");
    for (i, b) in brokers.iter().enumerate() {
        let publisher = Publisher::connect(b.port()).await.expect("publisher");
        publisher
            .publish("cmd/x", format!("after-{i}"), 1, false)
            .await
            .expect("publish");
        publisher
            .publish("ctl/end", format!("end-{i}"), 1, false)
            .await
            .expect("publish");
        publisher.wait_acked(WAIT).await.expect("acked");
    }
    for i in 0..2 {
        assert!(device.wait_for_payload(&format!("end-{i}"), 1, WAIT).await);
    }
    let got = device.wait_quiet(QUIET, WAIT).await;
    let cmd: Vec<_> = got.iter().filter(|m| m.topic.starts_with("cmd/")).collect();
    assert_eq!(cmd.len(), 2, "only the two from before: {got:?}");
    proxy.shutdown().await;
}

/// Two device filters served by one upstream filter (`#` and `cmd/#` both
/// become `cmd/#` under `subscriptionTopics: [cmd/#]`): dropping one must not
/// drop the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_keeps_an_upstream_filter_another_subscription_needs() {
    let brokers = start_brokers(1).await;
    let b = &brokers[0];
    let mut config = bidi_broker("shared-filter", b, MqttVersion::V311);
    config.subscription_topics = vec!["cmd/#".into()];
    let proxy = start_proxy(&[config]).await.expect("proxy");
    let device = connect_device(&proxy, Proto::V4).await;
    assert_eq!(device.subscribe("#", 1).await.expect("SUBACK"), 1);
    assert_eq!(device.subscribe("cmd/#", 1).await.expect("SUBACK"), 1);
    device.unsubscribe("#").await.expect("UNSUBACK");

    cli_pub(b.port(), "cmd/x", "still-subscribed", 1).await;
    assert!(
        device.wait_for_payload("still-subscribed", 1, WAIT).await,
        "the device is still subscribed to cmd/#; broker log:\n{}",
        b.log_tail()
    );
    proxy.shutdown().await;
}

/// The same stall seen from keepalive: a device with a 3 s keepalive sends
/// PINGREQ while its SUBACK waits for a hung broker, and must get PINGRESP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_suback_does_not_cost_a_short_keepalive_device_its_connection() {
    let (brokers, _, proxy) = start_bidi(2, "stall-ka", MqttVersion::V311).await;
    let device =
        Device::connect_with_keep_alive(proxy.mqtt_addr(), Proto::V4, Duration::from_secs(3))
            .await
            .expect("device");
    wait_upstreams_connected(&proxy, 2).await;

    brokers[1].pause().expect("pause B");
    let suback = device
        .subscribe_within("cmd/#", 1, Duration::from_secs(15))
        .await;
    brokers[1].resume().expect("resume B");
    println!("SUBACK: {suback:?}; device error: {:?}", device.error());
    assert!(
        device.error().is_none(),
        "device dropped: {:?}",
        device.error()
    );
    assert_eq!(suback.expect("SUBACK"), 1);
    proxy.shutdown().await;
}
