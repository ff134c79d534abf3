//! The proxy's way back: messages from bidirectional brokers to the device,
//! against real mosquitto brokers and real clients. The rule under test is the
//! loop rule (`proxy/src/delivery.rs`): *the device sees what it would see with
//! one broker*. Its own publish comes back once; brokers' echoes of it are
//! suppressed; messages other clients really sent twice arrive twice; nothing
//! the proxy receives for the device is published back to any broker.
//!
//! Negative checks ("nothing more arrived") are never a bare sleep: a control
//! message is sent *after* the one that must not show up, on a path that keeps
//! order (same broker, same publishing connection), and the check runs once
//! the control message arrived, followed by a short quiet window.
//!
//! This file holds the shared helpers and the loop-rule tests; the modules
//! below cover delivery details, subscriptions, volume and mirror mode.

#[path = "bidirectional/delivery.rs"]
mod delivery;
#[path = "bidirectional/mirror.rs"]
mod mirror;
#[path = "bidirectional/subscriptions.rs"]
mod subscriptions;
#[path = "bidirectional/volume.rs"]
mod volume;

use std::time::Duration;

use mqtt_proxy::broker::{BrokerConfig, MqttVersion};
use mqtt_proxy::ProxyHandle;
use mqtt_proxy_tests::bidi::{bidi_broker, loop_suppressed, start_proxy, Device, Proto};
use mqtt_proxy_tests::{mosquitto_pub, wait_until, Mosquitto, Subscriber};

/// Generous bound for things that normally take milliseconds.
const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing more happens" must hold after a control message.
const QUIET: Duration = Duration::from_millis(300);

/// Starts `n` brokers concurrently.
async fn start_brokers(n: usize) -> Vec<Mosquitto> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        set.spawn(async move { (i, Mosquitto::start().await) });
    }
    let mut brokers: Vec<(usize, Mosquitto)> = Vec::with_capacity(n);
    while let Some(joined) = set.join_next().await {
        let (i, broker) = joined.expect("broker start task");
        brokers.push((i, broker.expect("mosquitto starts")));
    }
    brokers.sort_by_key(|(i, _)| *i);
    brokers.into_iter().map(|(_, b)| b).collect()
}

/// `n` brokers, each configured as bidirectional broker `name` of `version`,
/// behind a freshly started proxy.
async fn start_bidi(
    n: usize,
    name: &str,
    version: MqttVersion,
) -> (Vec<Mosquitto>, Vec<BrokerConfig>, ProxyHandle) {
    let brokers = start_brokers(n).await;
    let configs: Vec<_> = brokers
        .iter()
        .map(|b| bidi_broker(name, b, version))
        .collect();
    let proxy = start_proxy(&configs).await.expect("proxy");
    (brokers, configs, proxy)
}

/// A device of `proto` connected to the proxy.
async fn connect_device(proxy: &ProxyHandle, proto: Proto) -> Device {
    Device::connect(proxy.mqtt_addr(), proto)
        .await
        .expect("device")
}

/// `mosquitto_pub` off the runtime's worker threads (the proxy runs on them).
async fn cli_pub(port: u16, topic: &str, payload: &str, qos: u8) {
    let (topic, payload) = (topic.to_owned(), payload.to_owned());
    tokio::task::spawn_blocking(move || mosquitto_pub(port, &topic, &payload, qos, &[]))
        .await
        .expect("mosquitto_pub task")
        .expect("mosquitto_pub");
}

fn payloads(messages: &[mqtt_proxy_tests::Received]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

/// Waits until every upstream of the (single) device session is connected.
pub(crate) async fn wait_upstreams_connected(proxy: &mqtt_proxy::ProxyHandle, n: usize) {
    assert!(
        wait_until(WAIT, || {
            let status = proxy.status();
            status.len() == n && status.iter().all(|s| s.sessions_connected == 1)
        })
        .await,
        "upstreams connected: {:?}",
        proxy.status()
    );
}

/// Sessions connected to broker `id`, as the proxy reports them.
pub(crate) fn sessions_connected(proxy: &mqtt_proxy::ProxyHandle, id: &str) -> Option<usize> {
    proxy
        .status()
        .iter()
        .find(|s| s.id == id)
        .map(|s| s.sessions_connected)
}

// ---------------------------------------------------------------------------
// 1. The device's own publish
// ---------------------------------------------------------------------------

/// The device publishes the same payload 3× on `t` while subscribed to `t`,
/// through three bidirectional brokers of the given versions.
async fn own_publish_comes_back_once_per_publish(versions: [MqttVersion; 3], proto: Proto) {
    let brokers = start_brokers(3).await;
    let mut subs = Vec::new();
    for b in &brokers {
        subs.push(Subscriber::connect(b.port(), "t", 1).await.expect("sub"));
    }
    let configs: Vec<BrokerConfig> = brokers
        .iter()
        .zip(versions)
        .map(|(b, v)| bidi_broker("own", b, v))
        .collect();
    let proxy = start_proxy(&configs).await.expect("proxy");
    let device = connect_device(&proxy, proto).await;
    assert_eq!(device.subscribe("t", 1).await.expect("SUBACK"), 1);

    for _ in 0..3 {
        device.publish("t", "same", 1).await.expect("publish");
    }
    device
        .wait_acked(WAIT)
        .await
        .expect("device publishes acked");
    for (sub, b) in subs.iter().zip(&brokers) {
        let got = sub.wait_for_count(3, WAIT).await;
        assert_eq!(payloads(&got), ["same"; 3], "broker {}", b.port());
    }
    // Each broker got the 3 publishes (and queued its echoes to the proxy)
    // before this control message, so its arrival bounds the echoes.
    for (i, b) in brokers.iter().enumerate() {
        cli_pub(b.port(), "t", &format!("control-{i}"), 1).await;
    }
    for i in 0..3 {
        assert!(
            device
                .wait_for_payload(&format!("control-{i}"), 1, WAIT)
                .await,
            "control from broker {i} reached the device: {:?}",
            device.received()
        );
    }
    device.wait_quiet(QUIET, WAIT).await;
    assert_eq!(
        device.count_payload("same"),
        3,
        "the device sees its 3 publishes once each, as with one broker: {:?}",
        device.received()
    );
    assert_eq!(
        device.count(),
        6,
        "3 own + 3 controls: {:?}",
        device.received()
    );
    for (sub, b) in subs.iter().zip(&brokers) {
        assert_eq!(
            payloads(&sub.received())
                .iter()
                .filter(|p| *p == "same")
                .count(),
            3,
            "broker {} got no extra copy from the proxy",
            b.port()
        );
    }
    for (config, version) in configs.iter().zip(versions) {
        let echoes = loop_suppressed(&config.name, "echo");
        match version {
            MqttVersion::V311 => assert_eq!(
                echoes, 3,
                "{}: the 3.1.1 broker echoed 3 times, all suppressed",
                config.name
            ),
            MqttVersion::V5 => assert_eq!(
                echoes, 0,
                "{}: No Local, so the MQTT 5 broker echoed nothing",
                config.name
            ),
        }
    }
    assert!(device.error().is_none(), "{:?}", device.error());
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_publish_3x_seen_3x_with_v311_upstreams() {
    own_publish_comes_back_once_per_publish([MqttVersion::V311; 3], Proto::V4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_publish_3x_seen_3x_with_v5_upstreams() {
    own_publish_comes_back_once_per_publish([MqttVersion::V5; 3], Proto::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_publish_3x_seen_3x_with_mixed_upstreams() {
    let versions = [MqttVersion::V311, MqttVersion::V5, MqttVersion::V311];
    own_publish_comes_back_once_per_publish(versions, Proto::V4).await;
}

// ---------------------------------------------------------------------------
// 2-3. Other clients' messages
// ---------------------------------------------------------------------------

/// A client on B publishes `cmd/x`: the device gets it once, and no broker
/// gets a copy from the proxy.
async fn broker_message_reaches_device_once(version: MqttVersion) {
    let brokers = start_brokers(3).await;
    let mut subs = Vec::new();
    for b in &brokers {
        subs.push(
            Subscriber::connect(b.port(), "cmd/#", 1)
                .await
                .expect("sub"),
        );
    }
    let configs: Vec<_> = brokers
        .iter()
        .map(|b| bidi_broker("inbound", b, version))
        .collect();
    let proxy = start_proxy(&configs).await.expect("proxy");
    let device = connect_device(&proxy, Proto::V4).await;
    assert_eq!(device.subscribe("cmd/#", 1).await.expect("SUBACK"), 1);

    let b = &brokers[1];
    cli_pub(b.port(), "cmd/x", "from-b", 1).await;
    assert!(device.wait_for_payload("from-b", 1, WAIT).await);
    cli_pub(b.port(), "cmd/control", "control", 1).await;
    assert!(device.wait_for_payload("control", 1, WAIT).await);
    device.wait_quiet(QUIET, WAIT).await;

    let got = device.received();
    assert_eq!(device.count_payload("from-b"), 1, "{got:?}");
    assert_eq!(got[0].topic, "cmd/x");
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        payloads(&subs[1].wait_quiet(QUIET, WAIT).await),
        ["from-b", "control"],
        "B's other subscriber sees only the originals: nothing came back from the proxy"
    );
    assert!(
        subs[0].received().is_empty(),
        "A got nothing: {:?}",
        subs[0].received()
    );
    assert!(
        subs[2].received().is_empty(),
        "C got nothing: {:?}",
        subs[2].received()
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_message_reaches_device_once_v311() {
    broker_message_reaches_device_once(MqttVersion::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_message_reaches_device_once_v5() {
    broker_message_reaches_device_once(MqttVersion::V5).await;
}

/// Legitimate repeats are never dropped: the same payload twice on B, once on
/// A and once on B, and another client's copy of what the device itself sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legitimate_repeats_are_delivered() {
    let (brokers, _, proxy) = start_bidi(3, "repeat", MqttVersion::V311).await;
    let device = connect_device(&proxy, Proto::V4).await;
    assert_eq!(device.subscribe("cmd/#", 1).await.expect("SUBACK"), 1);
    let (a, b) = (brokers[0].port(), brokers[1].port());

    // Two clients on B, same payload.
    cli_pub(b, "cmd/x", "twice-on-b", 1).await;
    cli_pub(b, "cmd/x", "twice-on-b", 1).await;
    // One on A, one on B.
    cli_pub(a, "cmd/x", "a-and-b", 1).await;
    cli_pub(b, "cmd/x", "a-and-b", 1).await;
    // The device sends "mine" (3 echoes to absorb) and a client on B sends
    // the same bytes: one loopback + one real message.
    device.publish("cmd/x", "mine", 1).await.expect("publish");
    device.wait_acked(WAIT).await.expect("acked");
    cli_pub(b, "cmd/x", "mine", 1).await;

    for (i, broker) in brokers.iter().enumerate() {
        cli_pub(broker.port(), "cmd/control", &format!("control-{i}"), 1).await;
    }
    for i in 0..3 {
        assert!(
            device
                .wait_for_payload(&format!("control-{i}"), 1, WAIT)
                .await
        );
    }
    device.wait_quiet(QUIET, WAIT).await;
    let got = device.received();
    assert_eq!(device.count_payload("twice-on-b"), 2, "{got:?}");
    assert_eq!(device.count_payload("a-and-b"), 2, "{got:?}");
    assert_eq!(device.count_payload("mine"), 2, "{got:?}");
    assert_eq!(got.len(), 9, "{got:?}");
    proxy.shutdown().await;
}

/// An MQTT 5 device subscribed with No Local never gets its own publish back,
/// neither looped back locally nor echoed by a 3.1.1 broker (which cannot be
/// told No Local), while other clients' messages still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_device_never_sees_its_own_publish() {
    let brokers = start_brokers(3).await;
    let versions = [MqttVersion::V311, MqttVersion::V5, MqttVersion::V311];
    let configs: Vec<_> = brokers
        .iter()
        .zip(versions)
        .map(|(b, v)| bidi_broker("nolocal", b, v))
        .collect();
    let proxy = start_proxy(&configs).await.expect("proxy");
    let device = connect_device(&proxy, Proto::V5).await;
    assert_eq!(device.subscribe_no_local("t", 1).await.expect("SUBACK"), 1);
    device.publish("t", "mine", 1).await.expect("publish");
    device.publish("t", "mine", 1).await.expect("publish");
    device.wait_acked(WAIT).await.expect("acked");
    for (i, b) in brokers.iter().enumerate() {
        // Same payload from someone else: that one is delivered.
        cli_pub(b.port(), "t", &format!("control-{i}"), 1).await;
    }
    cli_pub(brokers[0].port(), "t", "mine", 1).await;
    assert!(device.wait_for_payload("mine", 1, WAIT).await);
    for i in 0..3 {
        assert!(
            device
                .wait_for_payload(&format!("control-{i}"), 1, WAIT)
                .await
        );
    }
    let got = device.wait_quiet(QUIET, WAIT).await;
    assert_eq!(
        device.count_payload("mine"),
        1,
        "only the other client's: {got:?}"
    );
    assert_eq!(got.len(), 4, "{got:?}");
    proxy.shutdown().await;
}

/// A retained message the device published earlier is stored by every broker;
/// a later subscription must still deliver it once, as one broker would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_is_delivered_once_on_subscribe() {
    let (brokers, _, proxy) = start_bidi(3, "retained", MqttVersion::V311).await;
    let publisher = connect_device(&proxy, Proto::V4).await;
    publisher
        .publish_with("status/d", "online", 1, true)
        .await
        .expect("publish");
    publisher.wait_acked(WAIT).await.expect("acked");
    for b in &brokers {
        let sub = Subscriber::connect(b.port(), "status/#", 1)
            .await
            .expect("sub");
        assert_eq!(
            sub.wait_for_count(1, WAIT).await.len(),
            1,
            "retained on {}",
            b.port()
        );
    }

    let device = connect_device(&proxy, Proto::V4).await;
    assert_eq!(device.subscribe("status/#", 1).await.expect("SUBACK"), 1);
    for (i, b) in brokers.iter().enumerate() {
        cli_pub(b.port(), "status/control", &format!("control-{i}"), 1).await;
    }
    for i in 0..3 {
        assert!(
            device
                .wait_for_payload(&format!("control-{i}"), 1, WAIT)
                .await
        );
    }
    let got = device.wait_quiet(QUIET, WAIT).await;
    let retained: Vec<_> = got.iter().filter(|m| m.payload == "online").collect();
    assert_eq!(
        retained.len(),
        1,
        "one retained copy, as from one broker: {got:?}"
    );
    assert!(retained[0].retain);
    proxy.shutdown().await;
}
