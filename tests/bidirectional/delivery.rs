//! How messages from bidirectional brokers reach the device: QoS 1/2
//! handshakes and QoS downgrade, the topic prefix (added upstream, stripped on
//! the way back), and `subscriptionTopics` narrowing what a broker serves.

use std::time::Duration;

use mqtt_proxy::broker::MqttVersion;
use mqtt_proxy_tests::bidi::{bidi_broker, start_proxy, wait_subscribed, Proto};
use mqtt_proxy_tests::{wait_until, Publisher, Subscriber};

use super::{cli_pub, connect_device, start_brokers, QUIET, WAIT};

// ---------------------------------------------------------------------------
// 4. QoS handshakes towards the device
// ---------------------------------------------------------------------------

async fn qos_1_and_2_reach_the_device(proto: Proto, version: MqttVersion) {
    let brokers = start_brokers(2).await;
    let configs: Vec<_> = brokers
        .iter()
        .map(|b| bidi_broker("qos", b, version))
        .collect();
    let proxy = start_proxy(&configs).await.expect("proxy");
    let device = connect_device(&proxy, proto).await;
    assert_eq!(device.subscribe("cmd/#", 2).await.expect("SUBACK"), 2);
    // A second device subscribed at QoS 1 gets QoS 2 messages at QoS 1.
    let capped = connect_device(&proxy, proto).await;
    assert_eq!(capped.subscribe("cmd/#", 1).await.expect("SUBACK"), 1);

    let publisher = Publisher::connect(brokers[1].port())
        .await
        .expect("publisher");
    for qos in 0..=2u8 {
        publisher
            .publish(&format!("cmd/q{qos}"), format!("qos{qos}"), qos, false)
            .await
            .expect("publish");
    }
    publisher.wait_acked(WAIT).await.expect("B acked");
    let got = device.wait_for_count(3, WAIT).await;
    assert_eq!(got.len(), 3, "{got:?}");
    // The proxy has no retransmission timer; a broken handshake would show as
    // a redelivery (DUP) on the next reconnect or a stuck window. Wait anyway.
    let got = device.wait_quiet(Duration::from_millis(500), WAIT).await;
    let mut seen: Vec<(String, u8, bool)> = got
        .iter()
        .map(|m| (m.topic.clone(), m.qos, m.dup))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("cmd/q0".to_owned(), 0, false),
            ("cmd/q1".to_owned(), 1, false),
            ("cmd/q2".to_owned(), 2, false),
        ],
        "each message exactly once, at the QoS it was published with"
    );
    assert!(
        wait_until(WAIT, || device.pubrels() == 1 && device.acks_sent() == 3).await,
        "QoS 2: the proxy answered PUBREC with one PUBREL; the device sent PUBACK, PUBREC, \
         PUBCOMP (pubrels {}, acks {})",
        device.pubrels(),
        device.acks_sent()
    );
    let capped_got = capped.wait_quiet(QUIET, WAIT).await;
    let mut capped_seen: Vec<(String, u8)> = capped_got
        .iter()
        .map(|m| (m.topic.clone(), m.qos))
        .collect();
    capped_seen.sort();
    assert_eq!(
        capped_seen,
        [
            ("cmd/q0".to_owned(), 0),
            ("cmd/q1".to_owned(), 1),
            ("cmd/q2".to_owned(), 1),
        ],
        "delivery QoS is min(published, granted)"
    );
    assert_eq!(capped.pubrels(), 0, "no QoS 2 handshake at QoS 1");
    // The window is free again: a second round flows as well.
    for qos in 1..=2u8 {
        publisher
            .publish(&format!("cmd/again{qos}"), "again", qos, false)
            .await
            .expect("publish");
    }
    assert!(device.wait_for_payload("again", 2, WAIT).await);
    assert!(wait_until(WAIT, || device.pubrels() == 2).await);
    assert!(device.error().is_none(), "{:?}", device.error());
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_1_and_2_reach_a_v4_device_from_v311_brokers() {
    qos_1_and_2_reach_the_device(Proto::V4, MqttVersion::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_1_and_2_reach_a_v5_device_from_v5_brokers() {
    qos_1_and_2_reach_the_device(Proto::V5, MqttVersion::V5).await;
}

// ---------------------------------------------------------------------------
// 5-6. Topic prefix and subscriptionTopics
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_prefix_is_added_upstream_and_stripped_for_the_device() {
    let brokers = start_brokers(2).await;
    let (a, b) = (&brokers[0], &brokers[1]);
    let b_sub = Subscriber::connect(b.port(), "#", 1).await.expect("sub");
    let a_sub = Subscriber::connect(a.port(), "#", 1).await.expect("sub");
    let mut prefixed = bidi_broker("prefix-b", b, MqttVersion::V311);
    prefixed.topic_prefix = Some("site1/".into());
    let configs = [bidi_broker("prefix-a", a, MqttVersion::V311), prefixed];
    let proxy = start_proxy(&configs).await.expect("proxy");
    let device = connect_device(&proxy, Proto::V4).await;
    assert_eq!(device.subscribe("cmd/#", 1).await.expect("SUBACK"), 1);
    wait_subscribed(b, "site1/cmd/#", 1, WAIT)
        .await
        .expect("the proxy subscribed with the prefix on B");

    let publisher = Publisher::connect(b.port()).await.expect("publisher");
    publisher
        .publish("site1/cmd/x", "p1", 1, false)
        .await
        .expect("publish");
    publisher
        .publish("cmd/x", "unprefixed", 1, false)
        .await
        .expect("publish");
    publisher
        .publish("site1/cmd/end", "end", 1, false)
        .await
        .expect("publish");
    assert!(
        device.wait_for_payload("end", 1, WAIT).await,
        "{:?}",
        device.received()
    );
    device.wait_quiet(QUIET, WAIT).await;
    let got: Vec<(String, String)> = device
        .received()
        .iter()
        .map(|m| {
            (
                m.topic.clone(),
                String::from_utf8_lossy(&m.payload).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("cmd/x".into(), "p1".into()),
            ("cmd/end".into(), "end".into())
        ],
        "prefix stripped; B's unprefixed cmd/x is outside the proxy's subscription"
    );

    // The way out: B sees the prefix, A doesn't, and B's echo of the prefixed
    // topic is still recognised after stripping.
    device.publish("cmd/out", "out", 1).await.expect("publish");
    device.wait_acked(WAIT).await.expect("acked");
    let on_b = b_sub.wait_for_count(4, WAIT).await;
    assert_eq!(on_b.last().map(|m| m.topic.as_str()), Some("site1/cmd/out"));
    let on_a = a_sub.wait_for_count(1, WAIT).await;
    assert_eq!(on_a.last().map(|m| m.topic.as_str()), Some("cmd/out"));
    publisher
        .publish("site1/cmd/end2", "end2", 1, false)
        .await
        .expect("publish");
    cli_pub(a.port(), "cmd/end3", "end3", 1).await;
    assert!(device.wait_for_payload("end2", 1, WAIT).await);
    assert!(device.wait_for_payload("end3", 1, WAIT).await);
    device.wait_quiet(QUIET, WAIT).await;
    assert_eq!(device.count_payload("out"), 1, "{:?}", device.received());
    let outs: Vec<_> = device
        .received()
        .into_iter()
        .filter(|m| m.payload == "out")
        .collect();
    assert_eq!(outs[0].topic, "cmd/out");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_topics_limit_what_a_broker_serves() {
    let brokers = start_brokers(1).await;
    let b = &brokers[0];
    let mut config = bidi_broker("subtopics", b, MqttVersion::V311);
    config.subscription_topics = vec!["cmd/#".into()];
    let proxy = start_proxy(&[config]).await.expect("proxy");

    // `#` contains `cmd/#`: the proxy subscribes to `cmd/#` only.
    let everything = connect_device(&proxy, Proto::V4).await;
    assert_eq!(everything.subscribe("#", 1).await.expect("SUBACK"), 1);
    wait_subscribed(b, "cmd/#", 1, WAIT)
        .await
        .expect("narrowed");
    assert_eq!(
        b.count_in_log("\t# (QoS"),
        0,
        "never subscribed to # upstream"
    );
    // `+/x` only overlaps `cmd/#`: the proxy subscribes to `+/x` and filters.
    let overlapping = connect_device(&proxy, Proto::V4).await;
    assert_eq!(overlapping.subscribe("+/x", 1).await.expect("SUBACK"), 1);

    let publisher = Publisher::connect(b.port()).await.expect("publisher");
    publisher
        .publish("telemetry/x", "telemetry", 1, false)
        .await
        .expect("publish");
    publisher
        .publish("cmd/x", "cmd", 1, false)
        .await
        .expect("publish");
    for device in [&everything, &overlapping] {
        assert!(device.wait_for_payload("cmd", 1, WAIT).await);
        let got = device.wait_quiet(QUIET, WAIT).await;
        let topics: Vec<_> = got.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(
            topics,
            ["cmd/x"],
            "telemetry/x is outside subscriptionTopics"
        );
    }
    proxy.shutdown().await;
}
