//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5 §4.8.2) through the proxy: the
//! upstream subscription is shared (a topic prefix goes on the filter part, not in front
//! of `$share`), and deliveries match the filter part.

use std::time::Duration;

use mqtt_proxy::broker::MqttVersion;
use mqtt_proxy_tests::bidi::wait_subscribed;
use mqtt_proxy_tests::{mosquitto_pub, mosquitto_sub, Mosquitto, TestProxy};

use super::persistent::WAIT;

async fn shared_sub_delivers(version: MqttVersion, prefix: Option<&str>) {
    let broker = Mosquitto::start().await.expect("broker");
    let mut proxy = TestProxy::start(&[&broker], |_, b| {
        b[0].bidirectional = true;
        b[0].mqtt_version = version;
        b[0].topic_prefix = prefix.map(str::to_owned);
    })
    .await
    .expect("proxy");
    let port = proxy.port();
    let sub = tokio::task::spawn_blocking(move || {
        mosquitto_sub(
            port,
            &["-V", "5", "-t", "$share/g/t/#", "-v", "-C", "1", "-W", "10"],
            Duration::from_secs(15),
        )
    });
    let upstream = format!("$share/g/{}t/#", prefix.unwrap_or(""));
    wait_subscribed(&broker, &upstream, 1, WAIT)
        .await
        .expect("shared subscription upstream, prefix on the filter part");
    let topic = format!("{}t/x", prefix.unwrap_or(""));
    let bport = broker.port();
    tokio::task::spawn_blocking(move || mosquitto_pub(bport, &topic, "shared", 1, &[]))
        .await
        .expect("join")
        .expect("publish");
    let got = sub.await.expect("join").expect("mosquitto_sub");
    assert_eq!(got, vec!["t/x shared"], "delivered on the device's topic");
    proxy.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_delivers_v5_broker() {
    shared_sub_delivers(MqttVersion::V5, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_delivers_v311_broker() {
    shared_sub_delivers(MqttVersion::V311, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_with_topic_prefix() {
    shared_sub_delivers(MqttVersion::V5, Some("site1/")).await;
}

/// Paho `test_shared_subscriptions`: two devices in one share group, one of them publishes
/// on the shared topic: the message is delivered once in the group (the broker picks the
/// member), not looped back to the publisher on top.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_gets_each_message_once() {
    use mqtt_proxy_tests::raw::Raw5;
    use rumqttc::v5::mqttbytes::{v5, QoS};
    let broker = Mosquitto::start().await.expect("broker");
    let mut proxy = TestProxy::start(&[&broker], |_, b| {
        b[0].bidirectional = true;
        b[0].mqtt_version = MqttVersion::V5;
    })
    .await
    .expect("proxy");
    let mut members = Vec::new();
    for id in ["share-a", "share-b"] {
        let (mut c, _) = Raw5::connect(proxy.port(), Raw5::connect_packet(id, true, None))
            .await
            .expect("connect");
        let filters = vec![
            v5::Filter::new("$share/grp/sh/x", QoS::AtMostOnce),
            v5::Filter::new("sh/control", QoS::AtMostOnce),
        ];
        c.subscribe(1, filters, None).await.expect("suback");
        members.push(c);
    }
    wait_subscribed(&broker, "$share/grp/sh/x", 2, WAIT)
        .await
        .expect("both members upstream");
    let publish =
        |t: &str| v5::Packet::Publish(v5::Publish::new(t, QoS::AtMostOnce, "m".to_owned(), None));
    members[1]
        .send(publish("sh/x"))
        .await
        .expect("publish shared");
    // A control message after it, to both, on the same path: once it is in, so is the rest.
    members[1]
        .send(publish("sh/control"))
        .await
        .expect("publish control");
    let mut shared = 0;
    for m in &mut members {
        let got = m
            .wait_publishes(1, WAIT, false)
            .await
            .expect("control or shared");
        let mut all = got;
        all.extend(
            m.publishes(Duration::from_millis(700), false)
                .await
                .expect("read"),
        );
        shared += all.iter().filter(|p| &p.topic[..] == b"sh/x").count();
        assert!(all.iter().any(|p| &p.topic[..] == b"sh/control"), "{all:?}");
    }
    assert_eq!(shared, 1, "one copy in the share group");
    proxy.shutdown().await.expect("shutdown");
}
