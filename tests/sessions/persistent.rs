//! Persistent sessions (clean session off, MQTT 5 session expiry): what the broker kept for
//! the device while it was away reaches it on reconnect through the proxy, as it would
//! directly; `session present` tells the truth; subscriptions survive without a new
//! SUBSCRIBE; deliveries the device never acknowledged are sent again.

use std::time::Duration;

use mqtt_proxy::broker::MqttVersion;
use mqtt_proxy_tests::bidi::wait_subscribed;
use mqtt_proxy_tests::raw::{Raw4, Raw5};
use mqtt_proxy_tests::{mosquitto_pub, mosquitto_sub, wait_until, Mosquitto, TestProxy};
use rumqttc::v5::mqttbytes::{v5, QoS};

pub const WAIT: Duration = Duration::from_secs(10);

/// One bidirectional broker of `version` behind a proxy.
pub async fn bidi_rig(version: MqttVersion) -> (Mosquitto, TestProxy) {
    let broker = Mosquitto::start().await.expect("broker");
    let proxy = TestProxy::start(&[&broker], |_, b| {
        b[0].bidirectional = true;
        b[0].mqtt_version = version;
    })
    .await
    .expect("proxy");
    (broker, proxy)
}

/// Waits until the proxy holds no upstream session (the device's upstreams closed, so the
/// broker now holds the session on its own).
pub async fn wait_no_upstreams(proxy: &TestProxy) {
    assert!(
        wait_until(WAIT, || proxy.status().iter().all(|s| s.sessions == 0)).await,
        "upstream sessions still open: {:?}",
        proxy.status()
    );
}

async fn publish_on_broker(port: u16, topic: &str, payloads: &[&str], qos: u8, v5: bool) {
    for p in payloads {
        let args: &[&str] = if v5 { &["-V", "mqttv5"] } else { &[] };
        let (topic, p, args) = (topic.to_owned(), (*p).to_owned(), args.to_vec());
        tokio::task::spawn_blocking(move || mosquitto_pub(port, &topic, &p, qos, &args))
            .await
            .expect("join")
            .expect("mosquitto_pub");
    }
}

async fn sub_cli(port: u16, args: &[&str]) -> Vec<String> {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        mosquitto_sub(port, &args, Duration::from_secs(20))
    })
    .await
    .expect("join")
    .expect("mosquitto_sub")
}

/// The reproduction from the issue: `mosquitto_sub -c -i pdev -q 1 -t 'cmd/#'` through the
/// proxy, stop it, 3 QoS 1 messages to the broker, reconnect: all 3 arrive.
async fn mosquitto_sub_c_recovers_offline_messages(version: MqttVersion) {
    let (broker, mut proxy) = bidi_rig(version).await;
    let id = format!("pdev-{}", std::process::id());
    let common = ["-c", "-i", id.as_str(), "-q", "1", "-t", "cmd/#"];
    let mut first = common.to_vec();
    first.push("-E");
    sub_cli(proxy.port(), &first).await;
    wait_no_upstreams(&proxy).await;
    publish_on_broker(broker.port(), "cmd/x", &["m1", "m2", "m3"], 1, false).await;

    let mut again = common.to_vec();
    again.extend(["-C", "3", "-W", "8"]);
    let got = sub_cli(proxy.port(), &again).await;
    assert_eq!(
        got,
        vec!["m1", "m2", "m3"],
        "messages recovered through the proxy"
    );
    proxy.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_c_recovers_offline_messages_v311_broker() {
    mosquitto_sub_c_recovers_offline_messages(MqttVersion::V311).await;
}

/// A 3.1.1 device's persistence is mapped onto MQTT 5 brokers as a session expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_c_recovers_offline_messages_v5_broker() {
    mosquitto_sub_c_recovers_offline_messages(MqttVersion::V5).await;
}

/// `session present` reflects the kept session, and the subscription works without a new
/// SUBSCRIBE: messages the broker kept, and new ones, are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_present_and_subscriptions_survive_a_reconnect() {
    let (broker, mut proxy) = bidi_rig(MqttVersion::V311).await;
    let id = format!("keep-{}", std::process::id());
    let (mut dev, ack) = Raw4::connect(proxy.port(), &id, false)
        .await
        .expect("connect");
    assert!(!ack.session_present, "first connect: no session yet");
    dev.subscribe(1, "cmd/#", 1).await.expect("suback");
    wait_subscribed(&broker, "cmd/#", 1, WAIT)
        .await
        .expect("upstream subscribed");
    dev.disconnect().await.expect("disconnect");
    wait_no_upstreams(&proxy).await;
    publish_on_broker(broker.port(), "cmd/a", &["k1", "k2", "k3"], 1, false).await;

    let (mut dev, ack) = Raw4::connect(proxy.port(), &id, false)
        .await
        .expect("reconnect");
    assert!(ack.session_present, "the session was kept");
    let got = dev
        .wait_publishes(3, WAIT, true)
        .await
        .expect("kept messages");
    let payloads: Vec<&[u8]> = got.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, vec![&b"k1"[..], b"k2", b"k3"]);
    // No SUBSCRIBE on this connection: the kept subscription still delivers.
    proxy
        .wait_upstreams_connected(1, WAIT)
        .await
        .expect("upstream up");
    publish_on_broker(broker.port(), "cmd/b", &["live"], 1, false).await;
    let live = dev
        .wait_publishes(1, WAIT, true)
        .await
        .expect("live message");
    assert_eq!(&live[0].payload[..], b"live");
    dev.disconnect().await.expect("disconnect");

    // A clean session discards it all.
    let (dev, ack) = Raw4::connect(proxy.port(), &id, true).await.expect("clean");
    assert!(!ack.session_present, "clean session: nothing kept");
    dev.disconnect().await.expect("disconnect");
    wait_no_upstreams(&proxy).await;
    let (dev, ack) = Raw4::connect(proxy.port(), &id, false)
        .await
        .expect("again");
    assert!(
        !ack.session_present,
        "the clean session ended the stored one"
    );
    dev.disconnect().await.expect("disconnect");
    proxy.shutdown().await.expect("shutdown");
}

/// Deliveries the device received but never acknowledged are sent again (DUP) when it
/// comes back with its session (Paho `test_redelivery_on_reconnect`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_deliveries_are_resent_on_reconnect() {
    let (broker, mut proxy) = bidi_rig(MqttVersion::V311).await;
    let id = format!("redeliver-{}", std::process::id());
    let (mut dev, _) = Raw4::connect(proxy.port(), &id, false)
        .await
        .expect("connect");
    dev.subscribe(1, "r/#", 2).await.expect("suback");
    wait_subscribed(&broker, "r/#", 1, WAIT)
        .await
        .expect("upstream subscribed");
    publish_on_broker(broker.port(), "r/1", &["q1"], 1, false).await;
    publish_on_broker(broker.port(), "r/2", &["q2"], 2, false).await;
    let first = dev
        .wait_publishes(2, WAIT, false)
        .await
        .expect("delivered, not acked");
    assert_eq!(first.len(), 2);
    dev.disconnect().await.expect("disconnect");

    let (mut dev, ack) = Raw4::connect(proxy.port(), &id, false)
        .await
        .expect("reconnect");
    assert!(ack.session_present);
    let again = dev
        .wait_publishes(2, WAIT, true)
        .await
        .expect("redelivered");
    let mut payloads: Vec<Vec<u8>> = again.iter().map(|p| p.payload.to_vec()).collect();
    payloads.sort();
    assert_eq!(payloads, vec![b"q1".to_vec(), b"q2".to_vec()]);
    assert!(again.iter().all(|p| p.dup), "resent with DUP: {again:?}");
    dev.disconnect().await.expect("disconnect");
    proxy.shutdown().await.expect("shutdown");
}

/// MQTT 5 session expiry (Paho `test_session_expiry`): expiry 0 ends the session at
/// disconnect, expiry N keeps it N seconds, and DISCONNECT may change it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_is_honoured() {
    let (_broker, mut proxy) = bidi_rig(MqttVersion::V5).await;
    let port = proxy.port();
    let id = format!("expiry-{}", std::process::id());
    let connect = |clean, expiry| Raw5::connect(port, Raw5::connect_packet(&id, clean, expiry));

    let (mut c, ack) = connect(true, Some(0)).await.expect("connect");
    assert!(!ack.session_present);
    c.subscribe(1, vec![v5::Filter::new("e/t", QoS::ExactlyOnce)], None)
        .await
        .expect("suback");
    c.disconnect().await.expect("disconnect");
    let (c, ack) = connect(false, Some(0)).await.expect("connect");
    assert!(!ack.session_present, "expiry 0: gone at disconnect");
    c.disconnect().await.expect("disconnect");

    let (mut c, _) = connect(true, Some(2)).await.expect("connect");
    c.subscribe(1, vec![v5::Filter::new("e/t", QoS::ExactlyOnce)], None)
        .await
        .expect("suback");
    c.disconnect().await.expect("disconnect");
    let (c, ack) = connect(false, Some(2)).await.expect("connect");
    assert!(ack.session_present, "within the expiry: kept");
    c.disconnect().await.expect("disconnect");
    // Expired after 2 s (mosquitto checks expiry about once a second): polling with new
    // connections would renew it, so wait it out once.
    tokio::time::sleep(Duration::from_millis(3600)).await;
    let (c, ack) = connect(false, Some(0)).await.expect("connect");
    assert!(!ack.session_present, "expired");
    c.disconnect().await.expect("disconnect");

    // DISCONNECT raises the expiry from 1 s to 30 s, then lowers it to 0.
    let (mut c, _) = connect(true, Some(1)).await.expect("connect");
    c.subscribe(1, vec![v5::Filter::new("e/t", QoS::ExactlyOnce)], None)
        .await
        .expect("suback");
    c.disconnect_with_expiry(30).await.expect("disconnect");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (c, ack) = connect(false, Some(1)).await.expect("connect");
    assert!(ack.session_present, "DISCONNECT set a 30 s expiry");
    c.disconnect_with_expiry(0).await.expect("disconnect");
    let (c, ack) = connect(false, Some(0)).await.expect("connect");
    assert!(!ack.session_present, "DISCONNECT set expiry 0");
    c.disconnect().await.expect("disconnect");
    proxy.shutdown().await.expect("shutdown");
}

/// A SUBACK means the subscription is in force: a message another client publishes on
/// the broker right after it reaches the device (Paho `test_request_response` raced the
/// device's upstream connection, which used to come up only after the device's CONNACK).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_waits_for_the_upstream_and_a_suback_is_in_force() {
    let (broker, mut proxy) = bidi_rig(MqttVersion::V5).await;
    let (mut other, _) =
        Raw5::connect(broker.port(), Raw5::connect_packet("racer-pub", true, None))
            .await
            .expect("publisher on the broker");
    for round in 0..5 {
        let id = format!("racer-{round}");
        let (mut dev, _) = Raw5::connect(proxy.port(), Raw5::connect_packet(&id, true, None))
            .await
            .expect("connect");
        // The device's CONNACK waited for its upstream's.
        assert_eq!(
            broker.client_connects(&id),
            1,
            "upstream connected before CONNACK"
        );
        let topic = format!("race/{round}");
        dev.subscribe(
            1,
            vec![v5::Filter::new(topic.clone(), QoS::AtLeastOnce)],
            None,
        )
        .await
        .expect("suback");
        let mut p = v5::Publish::new(topic, QoS::AtMostOnce, "now".to_owned(), None);
        p.pkid = 0;
        other.send(v5::Packet::Publish(p)).await.expect("publish");
        let got = dev.wait_publishes(1, WAIT, true).await;
        assert!(
            got.is_ok(),
            "round {round}: published right after SUBACK, lost: {got:?}"
        );
        dev.disconnect().await.expect("disconnect");
    }
    proxy.shutdown().await.expect("shutdown");
}

/// `session present` reflects the brokers' sessions: after a proxy restart (the proxy's
/// own record is gone) the broker still holds the device's session, and what it kept is
/// delivered although the device does not subscribe again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_present_comes_from_the_broker_after_a_proxy_restart() {
    let (broker, mut proxy) = bidi_rig(MqttVersion::V5).await;
    let id = format!("restart-{}", std::process::id());
    let (mut dev, _) = Raw4::connect(proxy.port(), &id, false)
        .await
        .expect("connect");
    dev.subscribe(1, "rs/#", 1).await.expect("suback");
    wait_subscribed(&broker, "rs/#", 1, WAIT)
        .await
        .expect("upstream subscribed");
    dev.disconnect().await.expect("disconnect");
    wait_no_upstreams(&proxy).await;
    proxy.shutdown().await.expect("shutdown");
    publish_on_broker(broker.port(), "rs/a", &["kept1", "kept2"], 1, false).await;

    let (_, mut fresh) = bidi_rig_on(&broker, MqttVersion::V5).await;
    let (mut dev, ack) = Raw4::connect(fresh.port(), &id, false)
        .await
        .expect("reconnect");
    assert!(ack.session_present, "the broker kept the session");
    let got = dev
        .wait_publishes(2, WAIT, true)
        .await
        .expect("kept messages");
    let payloads: Vec<&[u8]> = got.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, vec![&b"kept1"[..], b"kept2"]);
    dev.disconnect().await.expect("disconnect");
    fresh.shutdown().await.expect("shutdown");
}

/// A second proxy in front of an existing broker.
async fn bidi_rig_on(broker: &Mosquitto, version: MqttVersion) -> ((), TestProxy) {
    let proxy = TestProxy::start(&[broker], |_, b| {
        b[0].bidirectional = true;
        b[0].mqtt_version = version;
    })
    .await
    .expect("proxy");
    ((), proxy)
}
