//! Mirror mode: what the proxy receives on a `mirror: true` broker's
//! `subscriptionTopics` is published to the other brokers, through the proxy's
//! own subscription (no device needed), once per proxy, marked with a hop
//! user property on MQTT 5 so that a second proxy does not send it round again.
//!
//! The ring tests put two proxies across the same two brokers, the topology in
//! which a missing loop guard multiplies one message forever. They print the
//! per-broker copy counts over time, and assert that the traffic stops.

use std::time::{Duration, Instant};

use mqtt_proxy::broker::{BrokerConfig, MqttVersion};
use mqtt_proxy_tests::bidi::{
    bidi_broker, start_proxy, unique_name, wait_subscribed, Device, Proto,
};
use mqtt_proxy_tests::{Mosquitto, Subscriber};

use super::{cli_pub, connect_device, payloads, start_brokers, QUIET, WAIT};

/// mosquitto's line when a second connection takes over a client id.
const TAKEOVER: &str = "already connected, closing old connection";

fn mirror_broker(name: &str, broker: &Mosquitto, version: MqttVersion) -> BrokerConfig {
    let mut config = bidi_broker(name, broker, version);
    config.mirror = true;
    config.subscription_topics = vec!["cmd/#".into()];
    config
}

fn plain_broker(name: &str, broker: &Mosquitto, version: MqttVersion) -> BrokerConfig {
    let mut config = BrokerConfig::new(unique_name(name), "127.0.0.1", broker.port());
    config.mqtt_version = version;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_forwards_to_the_other_brokers_once_with_or_without_a_device() {
    let brokers = start_brokers(3).await;
    let (a, b, c) = (&brokers[0], &brokers[1], &brokers[2]);
    // A is an MQTT 5 upstream so its copy can carry the hop marker.
    let a_observer = Device::connect(a.addr(), Proto::V5)
        .await
        .expect("observer");
    assert_eq!(a_observer.subscribe("cmd/#", 1).await.expect("SUBACK"), 1);
    let c_sub = Subscriber::connect(c.port(), "cmd/#", 1)
        .await
        .expect("sub");
    let b_sub = Subscriber::connect(b.port(), "#", 1).await.expect("sub");
    let configs = [
        plain_broker("mirror-a", a, MqttVersion::V5),
        mirror_broker("mirror-b", b, MqttVersion::V311),
        plain_broker("mirror-c", c, MqttVersion::V311),
    ];
    let proxy = start_proxy(&configs).await.expect("proxy");
    // No device: this is the proxy's own subscription.
    wait_subscribed(b, "cmd/#", 1, WAIT)
        .await
        .expect("the proxy subscribed to B's subscriptionTopics by itself");

    cli_pub(b.port(), "cmd/x", "mirrored", 1).await;
    cli_pub(b.port(), "cmd/control", "control", 1).await;
    assert!(a_observer.wait_for_payload("control", 1, WAIT).await);
    assert_eq!(c_sub.wait_for_count(2, WAIT).await.len(), 2);
    a_observer.wait_quiet(QUIET, WAIT).await;
    let on_a = a_observer.received();
    assert_eq!(
        on_a.iter().map(|m| m.topic.as_str()).collect::<Vec<_>>(),
        ["cmd/x", "cmd/control"],
        "A got each message once"
    );
    println!("hop marker on A: {:?}", on_a[0].user_properties);
    assert!(
        !on_a[0].user_properties.is_empty(),
        "a mirrored copy on an MQTT 5 broker carries a hop marker"
    );
    assert_eq!(
        payloads(&c_sub.wait_quiet(QUIET, WAIT).await),
        ["mirrored", "control"]
    );
    assert_eq!(
        payloads(&b_sub.wait_quiet(QUIET, WAIT).await),
        ["mirrored", "control"],
        "nothing was mirrored back to the source"
    );

    // A device subscribed to the same topics: it gets the message once, and
    // A and C still get one copy (per proxy, not per device).
    let device = connect_device(&proxy, Proto::V4).await;
    assert_eq!(device.subscribe("cmd/#", 1).await.expect("SUBACK"), 1);
    cli_pub(b.port(), "cmd/y", "with-device", 1).await;
    cli_pub(b.port(), "cmd/control", "control-2", 1).await;
    assert!(device.wait_for_payload("control-2", 1, WAIT).await);
    assert!(a_observer.wait_for_payload("control-2", 1, WAIT).await);
    assert_eq!(c_sub.wait_for_count(4, WAIT).await.len(), 4);
    device.wait_quiet(QUIET, WAIT).await;
    assert_eq!(
        device.count_payload("with-device"),
        1,
        "{:?}",
        device.received()
    );
    assert_eq!(a_observer.wait_quiet(QUIET, WAIT).await.len(), 4);
    assert_eq!(c_sub.wait_quiet(QUIET, WAIT).await.len(), 4);
    assert_eq!(
        b_sub.received().len(),
        4,
        "{:?}",
        payloads(&b_sub.received())
    );
    proxy.shutdown().await;
}

/// Per-broker copy counts of `cmd/ring`, sampled over `duration`.
async fn sample_counts(observers: &[(&str, &Device)], duration: Duration) -> Vec<usize> {
    let started = Instant::now();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let counts: Vec<String> = observers
            .iter()
            .map(|(name, d)| format!("{name}={}", d.count()))
            .collect();
        println!(
            "t={:>5}ms {}",
            started.elapsed().as_millis(),
            counts.join(" ")
        );
    }
    observers.iter().map(|(_, d)| d.count()).collect()
}

/// Two proxies, both mirroring between brokers X and Y. One message is
/// published on X. Returns the final copy counts on (X, Y), after asserting the
/// traffic stopped (stable for 1 s).
async fn ring(version: MqttVersion) -> (usize, usize) {
    let brokers = start_brokers(2).await;
    let (x, y) = (&brokers[0], &brokers[1]);
    let x_obs = Device::connect(x.addr(), Proto::V5)
        .await
        .expect("observer X");
    let y_obs = Device::connect(y.addr(), Proto::V5)
        .await
        .expect("observer Y");
    assert_eq!(x_obs.subscribe("cmd/#", 1).await.expect("SUBACK"), 1);
    assert_eq!(y_obs.subscribe("cmd/#", 1).await.expect("SUBACK"), 1);
    let p1 = start_proxy(&[
        mirror_broker("ring-p1-x", x, version),
        mirror_broker("ring-p1-y", y, version),
    ])
    .await
    .expect("proxy 1");
    let p2 = start_proxy(&[
        mirror_broker("ring-p2-x", x, version),
        mirror_broker("ring-p2-y", y, version),
    ])
    .await
    .expect("proxy 2");
    // The observers' subscriptions plus one per proxy.
    for broker in [x, y] {
        wait_subscribed(broker, "cmd/#", 3, WAIT)
            .await
            .expect("both proxies subscribed");
    }

    cli_pub(x.port(), "cmd/ring", "ring", 1).await;
    let observers = [("X", &x_obs), ("Y", &y_obs)];
    sample_counts(&observers, Duration::from_secs(3)).await;
    let before = (x_obs.count(), y_obs.count());
    x_obs
        .wait_quiet(Duration::from_secs(1), Duration::from_secs(5))
        .await;
    y_obs
        .wait_quiet(Duration::from_secs(1), Duration::from_secs(5))
        .await;
    let after = (x_obs.count(), y_obs.count());
    println!(
        "{version:?} ring: copies on X={} Y={} (3 s sample: {before:?})",
        after.0, after.1
    );
    for (name, obs) in observers {
        let markers: Vec<_> = obs
            .received()
            .iter()
            .map(|m| m.user_properties.clone())
            .collect();
        println!("{version:?} ring: user properties on {name}: {markers:?}");
    }
    for broker in [x, y] {
        assert_eq!(
            broker.count_in_log(TAKEOVER),
            0,
            "the two proxies' own sessions must not share a client id:\n{}",
            broker.log_tail()
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        (x_obs.count(), y_obs.count()),
        after,
        "traffic stopped: counts stable over a 1 s quiet window"
    );
    p1.shutdown().await;
    p2.shutdown().await;
    after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_of_two_proxies_is_bounded_with_v5_hop_marker() {
    let (x, y) = ring(MqttVersion::V5).await;
    assert!(
        x >= 1 && y >= 1,
        "the message was mirrored at all: X={x} Y={y}"
    );
    assert!(
        x <= 2 && y <= 2,
        "at most one copy per proxy per broker: X={x} Y={y}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_of_two_proxies_stops_with_v311() {
    let (x, y) = ring(MqttVersion::V311).await;
    assert!(
        x >= 1 && y >= 1,
        "the message was mirrored at all: X={x} Y={y}"
    );
}
