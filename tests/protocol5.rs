//! MQTT 5 details on the device side (issue 14, item 9), each also a behaviour Eclipse
//! Paho's interoperability suite checks: reason codes, assigned client ids, the device's
//! Maximum Packet Size, subscription identifiers, topic aliases, request/response
//! properties, Retain As Published and message expiry, through the proxy in front of one
//! bidirectional MQTT 5 mosquitto. Raw clients (`mqtt_proxy_tests::raw`) show exactly what
//! went over the wire.

use std::time::Duration;

use bytes::Bytes;
use mqtt_proxy::broker::MqttVersion;
use mqtt_proxy_tests::bidi::wait_subscribed;
use mqtt_proxy_tests::raw::Raw5;
use mqtt_proxy_tests::{Mosquitto, TestProxy};
use rumqttc::v5::mqttbytes::v5::{self, Filter, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;

const WAIT: Duration = Duration::from_secs(10);

async fn rig() -> (Mosquitto, TestProxy) {
    let broker = Mosquitto::start().await.expect("broker");
    let proxy = TestProxy::start(&[&broker], |_, b| {
        b[0].bidirectional = true;
        b[0].mqtt_version = MqttVersion::V5;
    })
    .await
    .expect("proxy");
    (broker, proxy)
}

fn id(role: &str) -> String {
    format!("p5-{role}-{}", std::process::id())
}

async fn connect(port: u16, role: &str) -> Raw5 {
    Raw5::connect(port, Raw5::connect_packet(&id(role), true, None))
        .await
        .expect("connect")
        .0
}

fn publish(topic: &str, payload: &str, qos: QoS, props: Option<PublishProperties>) -> v5::Packet {
    let mut p = v5::Publish::new(topic, qos, payload.to_owned(), props);
    p.pkid = if qos == QoS::AtMostOnce { 0 } else { 1 };
    v5::Packet::Publish(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsuback_carries_one_reason_code_per_filter() {
    let (_broker, mut proxy) = rig().await;
    let mut dev = connect(proxy.port(), "unsub").await;
    let filters = vec![
        Filter::new("u/a", QoS::AtLeastOnce),
        Filter::new("u/b", QoS::AtLeastOnce),
    ];
    dev.subscribe(1, filters, None).await.expect("suback");
    dev.send(v5::Packet::Unsubscribe(v5::Unsubscribe {
        pkid: 2,
        filters: vec!["u/a".into(), "u/none".into(), "u/b".into()],
        properties: None,
    }))
    .await
    .expect("unsubscribe");
    let ack = loop {
        if let v5::Packet::UnsubAck(a) = dev.recv(WAIT).await.expect("unsuback") {
            break a;
        }
    };
    assert_eq!(
        ack.reasons,
        vec![
            v5::UnsubAckReason::Success,
            v5::UnsubAckReason::NoSubscriptionExisted,
            v5::UnsubAckReason::Success
        ]
    );
    proxy.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_gets_an_assigned_client_identifier() {
    let (_broker, mut proxy) = rig().await;
    let (dev, ack) = Raw5::connect(proxy.port(), Raw5::connect_packet("", true, None))
        .await
        .expect("connect");
    let assigned = ack.properties.and_then(|p| p.assigned_client_identifier);
    assert!(
        assigned.as_deref().is_some_and(|a| !a.is_empty()),
        "Assigned Client Identifier: {assigned:?}"
    );
    dev.disconnect().await.expect("disconnect");
    // MQTT 5 allows an empty id with Clean Start 0 too (Paho test_zero_length_clientid).
    let (dev, _) = Raw5::connect(proxy.port(), Raw5::connect_packet("", false, None))
        .await
        .expect("not refused");
    dev.disconnect().await.expect("disconnect");
    proxy.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_maximum_packet_size_is_respected() {
    let (broker, mut proxy) = rig().await;
    let mut c = Raw5::connect_packet(&id("maxpkt"), true, None);
    c.properties = Some(v5::ConnectProperties {
        max_packet_size: Some(64),
        ..v5::ConnectProperties::new()
    });
    let (mut dev, _) = Raw5::connect(proxy.port(), c).await.expect("connect");
    dev.subscribe(1, vec![Filter::new("mp/#", QoS::AtLeastOnce)], None)
        .await
        .expect("suback");
    wait_subscribed(&broker, "mp/#", 1, WAIT)
        .await
        .expect("upstream");
    let mut other = Raw5::connect(
        broker.port(),
        Raw5::connect_packet(&id("mp-pub"), true, None),
    )
    .await
    .expect("publisher")
    .0;
    other
        .send(publish("mp/x", &".".repeat(64), QoS::AtLeastOnce, None))
        .await
        .expect("big");
    other
        .send(publish("mp/x", "small", QoS::AtLeastOnce, None))
        .await
        .expect("small");
    let got = dev
        .wait_publishes(1, WAIT, true)
        .await
        .expect("the small one");
    assert_eq!(
        &got[0].payload[..],
        b"small",
        "the too-big one was not sent"
    );
    let rest = dev
        .publishes(Duration::from_millis(500), true)
        .await
        .expect("read");
    assert!(rest.is_empty(), "{rest:?}");
    let text = mqtt_proxy::metrics::render();
    assert!(
        text.lines()
            .any(|l| l.contains("device_packet_too_large") && !l.ends_with(" 0")),
        "dropped and counted"
    );
    proxy.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifiers_are_passed_back() {
    let (broker, mut proxy) = rig().await;
    let mut dev = connect(proxy.port(), "subid").await;
    let props = v5::SubscribeProperties {
        id: Some(42),
        user_properties: Vec::new(),
    };
    dev.subscribe(1, vec![Filter::new("sid/#", QoS::AtLeastOnce)], Some(props))
        .await
        .expect("suback");
    wait_subscribed(&broker, "sid/#", 1, WAIT)
        .await
        .expect("upstream");
    let mut other = connect(broker.port(), "sid-pub").await;
    other
        .send(publish("sid/x", "m", QoS::AtLeastOnce, None))
        .await
        .expect("publish");
    let got = dev.wait_publishes(1, WAIT, true).await.expect("delivery");
    let ids = got[0]
        .properties
        .as_ref()
        .map(|p| p.subscription_identifiers.clone());
    assert_eq!(ids, Some(vec![42]));
    proxy.shutdown().await.expect("shutdown");
}

/// Paho `test_client_topic_alias`: the proxy announces a Topic Alias Maximum and resolves
/// the device's aliases; alias 0 is refused with a DISCONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_topic_aliases_are_resolved() {
    let (broker, mut proxy) = rig().await;
    let mut watcher = connect(broker.port(), "alias-watch").await;
    watcher
        .subscribe(1, vec![Filter::new("ta/#", QoS::AtLeastOnce)], None)
        .await
        .expect("suback");
    let (mut dev, ack) =
        Raw5::connect(proxy.port(), Raw5::connect_packet(&id("alias"), true, None))
            .await
            .expect("connect");
    let max = ack.properties.and_then(|p| p.topic_alias_max).unwrap_or(0);
    assert!(max >= 1, "Topic Alias Maximum announced: {max}");
    let alias = |a| {
        Some(PublishProperties {
            topic_alias: Some(a),
            ..Default::default()
        })
    };
    dev.send(publish("ta/x", "first", QoS::AtLeastOnce, alias(1)))
        .await
        .expect("set alias");
    dev.send(publish("", "second", QoS::AtLeastOnce, alias(1)))
        .await
        .expect("use alias");
    let got = watcher
        .wait_publishes(2, WAIT, true)
        .await
        .expect("both arrive");
    let topics: Vec<&[u8]> = got.iter().map(|p| &p.topic[..]).collect();
    assert_eq!(topics, vec![&b"ta/x"[..], b"ta/x"]);
    assert!(
        got.iter().all(|p| p
            .properties
            .as_ref()
            .is_none_or(|pp| pp.topic_alias.is_none())),
        "aliases never travel upstream"
    );
    dev.send(publish("ta/x", "bad", QoS::AtLeastOnce, alias(0)))
        .await
        .expect("alias 0");
    dev.wait_closed(WAIT).await.expect("alias 0: disconnected");
    proxy.shutdown().await.expect("shutdown");
}

/// Paho `test_request_response`: response topic, correlation data, content type and user
/// properties arrive as sent, device → broker and broker → device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_response_properties_are_preserved_end_to_end() {
    let (broker, mut proxy) = rig().await;
    let props = PublishProperties {
        response_topic: Some("rr/reply".into()),
        correlation_data: Some(Bytes::from_static(b"334")),
        content_type: Some("text/plain".into()),
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    let mut responder = connect(broker.port(), "rr-resp").await;
    responder
        .subscribe(1, vec![Filter::new("rr/req", QoS::AtLeastOnce)], None)
        .await
        .expect("suback");
    let mut dev = connect(proxy.port(), "rr-dev").await;
    let mut nolocal = Filter::new("rr/#", QoS::AtLeastOnce);
    nolocal.nolocal = true;
    dev.subscribe(1, vec![nolocal], None).await.expect("suback");
    wait_subscribed(&broker, "rr/#", 1, WAIT)
        .await
        .expect("upstream");
    dev.send(publish(
        "rr/req",
        "request",
        QoS::AtLeastOnce,
        Some(props.clone()),
    ))
    .await
    .expect("request");
    let req = responder
        .wait_publishes(1, WAIT, true)
        .await
        .expect("request arrives");
    let got = req[0].properties.clone().expect("properties");
    assert_eq!(got.response_topic, props.response_topic);
    assert_eq!(got.correlation_data, props.correlation_data);
    assert_eq!(got.content_type, props.content_type);
    assert_eq!(got.user_properties, props.user_properties);
    responder
        .send(publish("rr/reply", "response", QoS::AtLeastOnce, Some(got)))
        .await
        .expect("response");
    let resp = dev
        .wait_publishes(1, WAIT, true)
        .await
        .expect("response arrives");
    assert_eq!(
        &resp[0].payload[..],
        b"response",
        "No Local kept the request away"
    );
    let back = resp[0].properties.clone().expect("properties");
    assert_eq!(back.correlation_data, props.correlation_data);
    assert_eq!(back.user_properties, props.user_properties);
    proxy.shutdown().await.expect("shutdown");
}

/// Retain As Published: a live retained update from the broker reaches the device even
/// right after the retained message it got on SUBSCRIBE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_retain_as_published_updates_are_delivered() {
    let (broker, mut proxy) = rig().await;
    let mut other = connect(broker.port(), "rap-pub").await;
    other
        .send(publish("rap/t", "v1", QoS::AtLeastOnce, None).with_retain())
        .await
        .expect("retained");
    let _ = other.recv(WAIT).await.expect("puback");
    let mut dev = connect(proxy.port(), "rap").await;
    let mut f = Filter::new("rap/t", QoS::AtLeastOnce);
    f.preserve_retain = true;
    dev.subscribe(1, vec![f], None).await.expect("suback");
    let first = dev
        .wait_publishes(1, WAIT, true)
        .await
        .expect("retained on subscribe");
    assert_eq!(&first[0].payload[..], b"v1");
    for v in ["v2", "v3"] {
        other
            .send(publish("rap/t", v, QoS::AtLeastOnce, None).with_retain())
            .await
            .expect("live update");
    }
    let live = dev
        .wait_publishes(2, WAIT, true)
        .await
        .expect("live updates");
    assert!(
        live.iter().all(|p| p.retain),
        "Retain As Published: {live:?}"
    );
    proxy.shutdown().await.expect("shutdown");
}

/// Paho `test_publication_expiry`: messages kept while the device is away expire, and the
/// ones delivered carry the remaining interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_is_honoured_while_the_device_is_away() {
    let (_broker, mut proxy) = rig().await;
    let port = proxy.port();
    let sub_id = id("exp-sub");
    let (mut sub, _) = Raw5::connect(port, Raw5::connect_packet(&sub_id, true, Some(600)))
        .await
        .expect("subscriber");
    sub.subscribe(1, vec![Filter::new("exp/t", QoS::AtLeastOnce)], None)
        .await
        .expect("suback");
    sub.disconnect().await.expect("disconnect");
    let mut publisher = connect(port, "exp-pub").await;
    let expiring = |s| {
        Some(PublishProperties {
            message_expiry_interval: Some(s),
            ..Default::default()
        })
    };
    publisher
        .send(publish("exp/t", "expires", QoS::AtLeastOnce, expiring(1)))
        .await
        .expect("publish");
    publisher
        .send(publish("exp/t", "stays", QoS::AtLeastOnce, expiring(30)))
        .await
        .expect("publish");
    // Expiry is in whole seconds: wait past the first one.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (mut sub, ack) = Raw5::connect(port, Raw5::connect_packet(&sub_id, false, Some(600)))
        .await
        .expect("reconnect");
    assert!(ack.session_present);
    let got = dev_payloads(
        sub.publishes(Duration::from_secs(3), true)
            .await
            .expect("read"),
    );
    assert_eq!(
        got.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        vec!["stays"]
    );
    assert!(
        got[0].1.is_some_and(|e| e < 30),
        "remaining interval: {:?}",
        got[0].1
    );
    proxy.shutdown().await.expect("shutdown");
}

fn dev_payloads(p: Vec<v5::Publish>) -> Vec<(String, Option<u32>)> {
    p.into_iter()
        .map(|p| {
            (
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.properties.and_then(|pp| pp.message_expiry_interval),
            )
        })
        .collect()
}

trait WithRetain {
    fn with_retain(self) -> Self;
}

impl WithRetain for v5::Packet {
    fn with_retain(mut self) -> Self {
        if let v5::Packet::Publish(p) = &mut self {
            p.retain = true;
        }
        self
    }
}
