//! Forwarding through the proxy, against real mosquitto brokers: what a
//! device publishes reaches every matching broker exactly once, with its QoS,
//! retain flag and will, under the broker's client id, topic prefix and QoS
//! cap; many devices at once keep their order; and MQTT 5 works on both
//! sides. (Devices that break the protocol: `bad_devices.rs`.)
//!
//! Negative checks ("never arrives") always follow a positive control message
//! that was sent later on the same path, then a bounded quiet window.

use std::collections::BTreeSet;
use std::time::Duration;

use mqtt_proxy_tests::proxy::{subscribe_each, wait_all_quiet};
use mqtt_proxy_tests::sequence::{numbered, streams};
use mqtt_proxy_tests::{
    mosquitto_pub, wait_until, Mosquitto, ProxyRig, Publisher, PublisherV5, Received, Subscriber,
    SubscriberV5, TestProxy,
};

/// Generous bound for things that normally take milliseconds.
const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing else arrives" must hold after a control message.
const QUIET: Duration = Duration::from_millis(300);

/// (topic, qos, retain, payload) of each message, sorted: a multiset to compare.
fn summary(messages: &[Received]) -> Vec<(String, u8, bool, String)> {
    let mut out: Vec<_> = messages
        .iter()
        .map(|m| {
            (
                m.topic.clone(),
                m.qos,
                m.retain,
                String::from_utf8_lossy(&m.payload).into_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn topics_and_qos(messages: &[Received]) -> BTreeSet<(String, u8)> {
    messages.iter().map(|m| (m.topic.clone(), m.qos)).collect()
}

fn set(items: &[(&str, u8)]) -> BTreeSet<(String, u8)> {
    items.iter().map(|(t, q)| ((*t).to_owned(), *q)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_2_reach_every_broker_exactly_once_with_their_qos() {
    let rig = ProxyRig::start("qos/#", 2, |_, _| {}).await.expect("rig");
    let device = Publisher::connect(rig.port()).await.expect("device");
    const PER_QOS: u64 = 10;
    let mut expected = Vec::new();
    for n in 0..PER_QOS {
        for qos in 0..=2u8 {
            let topic = format!("qos/{qos}");
            let payload = numbered(&format!("q{qos}"), n);
            device
                .publish(&topic, payload.clone(), qos, false)
                .await
                .expect("publish");
            expected.push((topic, qos, false, String::from_utf8_lossy(&payload).into()));
        }
    }
    device
        .wait_acked(WAIT)
        .await
        .expect("the proxy acks QoS 1 and 2");

    // A second, independent client implementation as the device.
    let port = rig.port();
    tokio::task::spawn_blocking(move || {
        (0..=2u8).try_for_each(|qos| {
            mosquitto_pub(
                port,
                &format!("qos/cli/{qos}"),
                &format!("cli{qos}"),
                qos,
                &[],
            )
        })
    })
    .await
    .expect("join")
    .expect("mosquitto_pub through the proxy (exits 0 only after its ack)");
    for qos in 0..=2u8 {
        expected.push((format!("qos/cli/{qos}"), qos, false, format!("cli{qos}")));
    }
    expected.sort();

    for sub in &rig.subs {
        let got = sub.wait_for_count(expected.len(), WAIT).await;
        assert_eq!(got.len(), expected.len(), "all messages arrive: {got:?}");
    }
    for got in wait_all_quiet(&rig.subs, QUIET, WAIT).await {
        assert_eq!(summary(&got), expected, "each exactly once, with its QoS");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_publish_reaches_late_subscribers_on_every_broker() {
    // The early subscribers tell when the brokers have stored the messages.
    let rig = ProxyRig::start("ret/#", 2, |_, _| {}).await.expect("rig");
    let device = Publisher::connect(rig.port()).await.expect("device");
    for qos in 0..=2u8 {
        device
            .publish(&format!("ret/r{qos}"), format!("kept{qos}"), qos, true)
            .await
            .expect("publish retained");
    }
    device
        .publish("ret/plain", "live only", 1, false)
        .await
        .expect("publish");
    device.wait_acked(WAIT).await.expect("acked");
    for sub in &rig.subs {
        assert_eq!(sub.wait_for_count(4, WAIT).await.len(), 4, "live delivery");
    }

    let late = subscribe_each(&rig.brokers, "ret/#", 2)
        .await
        .expect("late subscribers");
    for sub in &late {
        sub.wait_for_count(3, WAIT).await;
    }
    let expected = vec![
        ("ret/r0".to_owned(), 0, true, "kept0".to_owned()),
        ("ret/r1".to_owned(), 1, true, "kept1".to_owned()),
        ("ret/r2".to_owned(), 2, true, "kept2".to_owned()),
    ];
    for got in wait_all_quiet(&late, QUIET, WAIT).await {
        assert_eq!(
            summary(&got),
            expected,
            "only the retained messages, flagged retain"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_reaches_every_broker_on_abrupt_drop_but_not_on_clean_disconnect() {
    let rig = ProxyRig::start("will/#", 2, |_, _| {}).await.expect("rig");

    let polite = rig
        .device_with_will("will/polite", "must not appear", 1)
        .await
        .expect("polite device");
    let polite_id = polite.client_id().to_owned();
    polite.disconnect().await.expect("clean disconnect");
    for broker in &rig.brokers {
        let needle = format!("Received DISCONNECT from {polite_id}");
        assert!(
            wait_until(WAIT, || broker.count_in_log(&needle) == 1).await,
            "the upstream left cleanly:\n{}",
            broker.log_tail()
        );
    }

    // Also the positive control for the polite device: sent after it left.
    let crashing = rig
        .device_with_will("will/crashing", "gone", 1)
        .await
        .expect("crashing device");
    crashing.drop_abruptly().await;

    for sub in &rig.subs {
        assert_eq!(sub.wait_for_count(1, WAIT).await.len(), 1, "will arrives");
    }
    let expected = vec![("will/crashing".to_owned(), 1, false, "gone".to_owned())];
    for got in wait_all_quiet(&rig.subs, QUIET, WAIT).await {
        assert_eq!(summary(&got), expected, "only the vanished device's will");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_filters_prefix_and_qos_cap_apply_per_broker() {
    let rig = ProxyRig::start("#", 2, |_, brokers| {
        brokers[0].topics = vec!["sensors/#".into()];
        brokers[1].topic_prefix = Some("site1/".into());
        brokers[2].max_qos = Some(0);
    })
    .await
    .expect("rig");
    let device = Publisher::connect(rig.port()).await.expect("device");
    // sensors/y is A's control: it follows cmd/x on the same path.
    for (topic, qos) in [("sensors/x", 2), ("cmd/x", 1), ("sensors/y", 1)] {
        device
            .publish(topic, "v", qos, false)
            .await
            .expect("publish");
    }
    device.wait_acked(WAIT).await.expect("acked");

    let expected = [
        set(&[("sensors/x", 2), ("sensors/y", 1)]),
        set(&[
            ("site1/sensors/x", 2),
            ("site1/cmd/x", 1),
            ("site1/sensors/y", 1),
        ]),
        set(&[("sensors/x", 0), ("cmd/x", 0), ("sensors/y", 0)]),
    ];
    for (sub, expected) in rig.subs.iter().zip(&expected) {
        sub.wait_for_count(expected.len(), WAIT).await;
    }
    let got = wait_all_quiet(&rig.subs, QUIET, WAIT).await;
    for (i, (got, expected)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(got.len(), expected.len(), "broker #{i}: {got:?}");
        assert_eq!(&topics_and_qos(got), expected, "broker #{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_follows_each_brokers_topic_rules() {
    let rig = ProxyRig::start("#", 2, |_, brokers| {
        brokers[0].topics = vec!["sensors/#".into()];
        brokers[1].topic_prefix = Some("site1/".into());
        brokers[2].max_qos = Some(0);
    })
    .await
    .expect("rig");
    let device = rig
        .device_with_will("cmd/offline", "gone", 2)
        .await
        .expect("device");
    device.drop_abruptly().await;

    // B and C get it (the positive control for A's quiet window).
    let expected = [
        set(&[]),
        set(&[("site1/cmd/offline", 2)]),
        set(&[("cmd/offline", 0)]),
    ];
    for sub in &rig.subs[1..] {
        assert_eq!(sub.wait_for_count(1, WAIT).await.len(), 1, "will arrives");
    }
    let got = wait_all_quiet(&rig.subs, QUIET, WAIT).await;
    for (i, (got, expected)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(&topics_and_qos(got), expected, "broker #{i}: {got:?}");
        assert_eq!(got.len(), expected.len(), "broker #{i}: once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_payloads_are_all_forwarded() {
    let rig = ProxyRig::start("rep/#", 2, |_, _| {}).await.expect("rig");
    let device = Publisher::connect(rig.port()).await.expect("device");
    for qos in [0, 1] {
        for _ in 0..3 {
            device
                .publish("rep/same", "same payload", qos, false)
                .await
                .expect("publish");
        }
    }
    device.wait_acked(WAIT).await.expect("acked");

    let one = |qos| ("rep/same".to_owned(), qos, false, "same payload".to_owned());
    let expected = vec![one(0), one(0), one(0), one(1), one(1), one(1)];
    for sub in &rig.subs {
        sub.wait_for_count(expected.len(), WAIT).await;
    }
    for got in wait_all_quiet(&rig.subs, QUIET, WAIT).await {
        assert_eq!(summary(&got), expected, "no deduplication of repeats");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_client_id_is_prefix_plus_device_id() {
    let rig = ProxyRig::start("cid/#", 1, |_, brokers| {
        brokers[0].client_id_prefix = "px-a-".into();
        brokers[1].client_id_prefix = "px-b-".into();
    })
    .await
    .expect("rig");
    let device_id = format!("device-{}", std::process::id());
    let device = Publisher::builder(rig.port())
        .client_id(&device_id)
        .connect()
        .await
        .expect("device");
    rig.proxy
        .wait_upstreams_connected(1, WAIT)
        .await
        .expect("upstreams");
    let expected_ids = [
        format!("px-a-{device_id}"),
        format!("px-b-{device_id}"),
        device_id.clone(),
    ];
    for (broker, id) in rig.brokers.iter().zip(&expected_ids) {
        assert!(
            wait_until(WAIT, || broker.client_connects(id) == 1).await,
            "broker saw {id:?} connect once:\n{}",
            broker.log_tail()
        );
    }
    assert_eq!(rig.brokers[0].client_connects(&device_id), 0, "prefixed");
    assert_eq!(rig.brokers[1].client_connects(&device_id), 0, "prefixed");

    // The messages come from that client too.
    device
        .publish("cid/x", "1", 1, false)
        .await
        .expect("publish");
    for sub in &rig.subs {
        assert_eq!(sub.wait_for_count(1, WAIT).await.len(), 1);
    }
    for (broker, id) in rig.brokers.iter().zip(&expected_ids) {
        let needle = format!("Received PUBLISH from {id} ");
        assert!(
            wait_until(WAIT, || broker.count_in_log(&needle) == 1).await,
            "{needle:?} in the log"
        );
    }
    device.disconnect().await.expect("disconnect");

    // An empty device id gets one generated id, the same on every broker.
    let anonymous = Publisher::builder(rig.port())
        .client_id("")
        .connect()
        .await
        .expect("device without client id");
    let generated = " as mqtt-proxy-";
    assert!(
        wait_until(WAIT, || rig.brokers[2].count_in_log(generated) == 1).await,
        "broker #2 saw a generated id:\n{}",
        rig.brokers[2].log_tail()
    );
    let log = rig.brokers[2].log();
    let id = log
        .lines()
        .filter(|l| l.contains("New client connected"))
        .filter_map(|l| l.split(" as ").nth(1)?.split(' ').next())
        .find(|id| id.starts_with("mqtt-proxy-"))
        .expect("generated id in the log")
        .to_owned();
    for (broker, prefix) in rig.brokers[..2].iter().zip(["px-a-", "px-b-"]) {
        let prefixed = format!("{prefix}{id}");
        assert!(
            wait_until(WAIT, || broker.client_connects(&prefixed) == 1).await,
            "{prefixed:?} on the prefixed broker:\n{}",
            broker.log_tail()
        );
    }
    drop(anonymous);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_devices_at_once_keep_per_device_order() {
    const DEVICES: u64 = 5;
    const MESSAGES: u64 = 20;
    let rig = ProxyRig::start("multi/#", 2, |_, _| {}).await.expect("rig");
    let mut devices = Vec::new();
    for _ in 0..DEVICES {
        devices.push(Publisher::connect(rig.port()).await.expect("device"));
    }
    let mut tasks = Vec::new();
    for (d, device) in (0..DEVICES).zip(devices) {
        tasks.push(tokio::spawn(async move {
            let qos = u8::try_from(d % 3).expect("small");
            for n in 0..MESSAGES {
                device
                    .publish(
                        &format!("multi/{d}"),
                        numbered(&format!("dev{d}"), n),
                        qos,
                        false,
                    )
                    .await?;
            }
            device.wait_acked(WAIT).await?;
            anyhow::Ok(device)
        }));
    }
    let mut devices = Vec::new();
    for task in tasks {
        devices.push(task.await.expect("join").expect("device publishes"));
    }

    let total = usize::try_from(DEVICES * MESSAGES).expect("small");
    for sub in &rig.subs {
        sub.wait_for_count(total, WAIT).await;
    }
    let in_order: Vec<u64> = (0..MESSAGES).collect();
    for (i, got) in wait_all_quiet(&rig.subs, QUIET, WAIT)
        .await
        .iter()
        .enumerate()
    {
        assert_eq!(got.len(), total, "broker #{i} got all");
        let streams = streams(got).expect("numbered payloads");
        assert_eq!(streams.len() as u64, DEVICES, "broker #{i}: every device");
        for (device, numbers) in &streams {
            assert_eq!(
                numbers, &in_order,
                "broker #{i}, {device}: complete, in order"
            );
        }
    }
    drop(devices);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_device_and_mqtt5_upstream_both_forward() {
    let (v311, v5) = tokio::try_join!(Mosquitto::start(), Mosquitto::start()).expect("brokers");
    let sub_v311 = Subscriber::connect(v311.port(), "five/#", 2)
        .await
        .expect("3.1.1 subscriber");
    let sub_v5 = SubscriberV5::connect(v5.port(), "five/#", 2)
        .await
        .expect("v5 subscriber");
    let proxy = TestProxy::start(&[&v311, &v5], |_, brokers| {
        brokers[1].mqtt_version = mqtt_proxy::broker::MqttVersion::V5;
    })
    .await
    .expect("proxy");

    let device4 = Publisher::connect(proxy.port())
        .await
        .expect("3.1.1 device");
    let device5 = PublisherV5::connect(proxy.port()).await.expect("v5 device");
    for qos in 0..=2u8 {
        device4
            .publish(&format!("five/d4/{qos}"), "x", qos, false)
            .await
            .expect("publish 3.1.1");
        device5
            .publish(&format!("five/d5/{qos}"), "x", qos, false)
            .await
            .expect("publish v5");
    }
    device4.wait_acked(WAIT).await.expect("3.1.1 device acked");
    device5.wait_acked(WAIT).await.expect("v5 device acked");

    let expected = set(&[
        ("five/d4/0", 0),
        ("five/d4/1", 1),
        ("five/d4/2", 2),
        ("five/d5/0", 0),
        ("five/d5/1", 1),
        ("five/d5/2", 2),
    ]);
    let got = sub_v311.wait_for_count(6, WAIT).await;
    assert_eq!(topics_and_qos(&got), expected, "via the 3.1.1 upstream");
    let got = sub_v5.wait_for_count(6, WAIT).await;
    assert_eq!(topics_and_qos(&got), expected, "via the v5 upstream");
    assert_eq!(sub_v311.wait_quiet(QUIET, WAIT).await.len(), 6);
    assert_eq!(sub_v5.count(), 6);

    // mosquitto logs the protocol: p2 = 3.1.1, p5 = MQTT 5.
    for id in [device4.client_id(), device5.client_id()] {
        assert!(
            v311.log().contains(&format!(" as {id} (p2")),
            "{id} speaks 3.1.1 upstream:\n{}",
            v311.log_tail()
        );
        assert!(
            v5.log().contains(&format!(" as {id} (p5")),
            "{id} speaks MQTT 5 upstream:\n{}",
            v5.log_tail()
        );
    }
}
