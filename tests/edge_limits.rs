//! Per-device limits with real clients and a real mosquitto upstream: connections per
//! source address, topic depth, publish rate (drop and disconnect), publishes in flight,
//! and the idle timeout of a keepalive-0 device. Each asserts the behaviour and the
//! counter it names.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use mqtt_proxy_tests::raw::Raw5;
use mqtt_proxy_tests::{mosquitto_pub, Mosquitto, Publisher, Subscriber, TestProxy};
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::QoS;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

fn metric(name_and_labels: &str) -> u64 {
    mqtt_proxy::metrics::render()
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0)
}

fn hits(limit: &str, action: &str) -> u64 {
    metric(&format!(
        "mqtt_proxy_device_limit_hits_total{{action=\"{action}\",limit=\"{limit}\"}}"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_source_address_are_capped() -> Result<()> {
    let broker = Mosquitto::start().await?;
    let proxy = TestProxy::start(&[&broker], |c, _| {
        c.listen.max_connections_per_address = 3;
    })
    .await?;
    let key = "mqtt_proxy_device_rejected_total{reason=\"max_connections_per_address\"}";
    let before = metric(key);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(("127.0.0.1", proxy.port())).await?);
    }
    // The three sockets are accepted asynchronously; the fourth device is refused once
    // they are counted.
    let deadline = Instant::now() + WAIT;
    while mosquitto_pub(proxy.port(), "t", "m", 0, &[]).is_ok() {
        if Instant::now() >= deadline {
            bail!("a fourth connection from 127.0.0.1 was still accepted");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metric(key) > before);
    drop(held.pop());
    let deadline = Instant::now() + WAIT;
    while let Err(e) = mosquitto_pub(proxy.port(), "t", "m", 0, &[]) {
        if Instant::now() >= deadline {
            bail!("a freed slot was not reusable: {e}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_deeper_than_the_limit_are_dropped_and_refused() -> Result<()> {
    let broker = Mosquitto::start().await?;
    let upstream = Subscriber::connect(broker.port(), "#", 1).await?;
    let proxy = TestProxy::start(&[&broker], |c, _| {
        c.session.limits.max_topic_levels = 3;
    })
    .await?;
    let before = hits("topic", "drop");
    mosquitto_pub(proxy.port(), "a/b/c/d", "too-deep", 1, &[])?;
    mosquitto_pub(proxy.port(), "a/b/c", "ok", 1, &[])?;
    let got = upstream.wait_for_count(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].topic, "a/b/c",
        "only the allowed depth arrives: {got:?}"
    );
    assert!(hits("topic", "drop") > before);

    let (mut raw, _) =
        Raw5::connect(proxy.port(), Raw5::connect_packet("deep-sub", true, None)).await?;
    let filter = v5::Filter::new("x/y/z/#", QoS::AtLeastOnce);
    let (ack, _) = raw.subscribe(1, vec![filter], None).await?;
    assert_eq!(
        ack.return_codes,
        [v5::SubscribeReasonCode::TopicFilterInvalid]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rate_over_the_limit_is_dropped_and_counted() -> Result<()> {
    let broker = Mosquitto::start().await?;
    let upstream = Subscriber::connect(broker.port(), "rate/#", 1).await?;
    let proxy = TestProxy::start(&[&broker], |c, _| {
        c.session.limits.publish_rate = 1;
        c.session.limits.publish_burst = 5;
    })
    .await?;
    let before = hits("publish_rate", "drop");
    let device = Publisher::connect(proxy.port()).await?;
    let started = Instant::now();
    for i in 0..30 {
        device.publish("rate/t", format!("m{i}"), 1, false).await?;
    }
    device.wait_acked(WAIT).await?;
    let elapsed = started.elapsed().as_secs() + 1;
    device.publish("rate/t", "last", 1, false).await?;
    device.wait_acked(WAIT).await?;
    // Whatever was let through arrives; the bound follows from burst + rate × time taken.
    let got = upstream.wait_quiet(Duration::from_millis(500), WAIT).await;
    let allowed = 5 + elapsed as usize + 1;
    assert!(
        !got.is_empty() && got.len() <= allowed,
        "{} arrived, at most {allowed} allowed",
        got.len()
    );
    assert!(hits("publish_rate", "drop") >= (31 - allowed) as u64 + before);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rate_with_disconnect_closes_the_device() -> Result<()> {
    let broker = Mosquitto::start().await?;
    let proxy = TestProxy::start(&[&broker], |c, _| {
        c.session.limits.publish_rate = 1;
        c.session.limits.publish_burst = 2;
        c.session.limits.rate_action = mqtt_proxy::limits::RateAction::Disconnect;
    })
    .await?;
    let before = hits("publish_rate", "disconnect");
    let (mut raw, _) =
        Raw5::connect(proxy.port(), Raw5::connect_packet("flooder", true, None)).await?;
    for _ in 0..10 {
        let p = v5::Publish::new("rate/x", QoS::AtMostOnce, Bytes::from_static(b"x"), None);
        if raw.send(v5::Packet::Publish(p)).await.is_err() {
            break;
        }
    }
    raw.wait_closed(WAIT).await?;
    assert!(hits("publish_rate", "disconnect") > before);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_publishes_in_flight_disconnects_with_0x93() -> Result<()> {
    let broker = Mosquitto::start().await?;
    let proxy = TestProxy::start(&[&broker], |c, _| {
        c.session.receive_maximum = 2;
    })
    .await?;
    let before = hits("inflight", "disconnect");
    let (mut raw, ack) =
        Raw5::connect(proxy.port(), Raw5::connect_packet("greedy", true, None)).await?;
    let announced = ack.properties.and_then(|p| p.receive_max);
    assert_eq!(announced, Some(2), "Receive Maximum announced in CONNACK");
    // QoS 2 without PUBREL keeps each one in flight.
    for pkid in 1..=3 {
        let mut p = v5::Publish::new(
            "inflight/x",
            QoS::ExactlyOnce,
            Bytes::from_static(b"x"),
            None,
        );
        p.pkid = pkid;
        raw.send(v5::Packet::Publish(p)).await?;
    }
    // The proxy sends DISCONNECT 0x93 (Receive Maximum exceeded) and closes; rumqttc's
    // reader cannot parse a reason-only DISCONNECT, so the raw client sees the close.
    raw.wait_closed(WAIT).await?;
    assert!(hits("inflight", "disconnect") > before);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_keepalive_0_device_is_closed_after_the_idle_timeout() -> Result<()> {
    let broker = Mosquitto::start().await?;
    let proxy = TestProxy::start(&[&broker], |c, _| {
        c.session.limits.idle_timeout = Duration::from_secs(1);
    })
    .await?;
    let mut connect = Raw5::connect_packet("sleepy", true, None);
    connect.keep_alive = 0;
    let (mut raw, _) = Raw5::connect(proxy.port(), connect).await?;
    let started = Instant::now();
    raw.wait_closed(WAIT).await?;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the idle timeout"
    );
    Ok(())
}

/// One attack against the proxy while a healthy device publishes QoS 1 every 10 ms for
/// 3 s; returns (sent, delivered, largest gap between deliveries at the broker).
async fn healthy_under<F, Fut>(name: &str, attack: F) -> Result<(usize, usize, Duration)>
where
    F: FnOnce(u16) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let broker = Mosquitto::start().await?;
    let upstream = Subscriber::connect(broker.port(), "healthy/#", 1).await?;
    let proxy = TestProxy::start(&[&broker], |c, brokers| {
        // The never-reading attacker subscribes through this broker.
        brokers[0].bidirectional = true;
        c.session.device_write_timeout = Duration::from_secs(2);
    })
    .await?;
    let device = Publisher::connect(proxy.port()).await?;
    let attacker = tokio::spawn(attack(proxy.port()));
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(3) {
        // 4 KiB each: enough for the never-reading subscriber's socket buffers to fill.
        let payload = format!("{sent:>4096}");
        device.publish("healthy/n", payload, 1, false).await?;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    device.wait_acked(WAIT).await?;
    let got = upstream.wait_for_count(sent, WAIT).await;
    attacker.abort();
    let gap = got
        .windows(2)
        .map(|w| w[1].at.saturating_duration_since(w[0].at))
        .max()
        .unwrap_or_default();
    let write_timeouts = metric("mqtt_proxy_device_disconnects_total{reason=\"write_timeout\"}");
    println!(
        "healthy device under {name}: sent {sent}, delivered {}, largest gap {gap:?} \
         (device write timeouts so far: {write_timeouts})",
        got.len()
    );
    Ok((sent, got.len(), gap))
}

/// Slowloris: 200 sockets dribbling a CONNECT one byte every 200 ms, never finishing.
async fn slowloris(port: u16) {
    use tokio::io::AsyncWriteExt;
    let connect = [
        0x10u8, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c,
    ];
    let mut socks = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            socks.push(s);
        }
    }
    for byte in connect.iter().cycle() {
        for s in &mut socks {
            let _ = s.write_all(&[*byte]).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A device that subscribes to the healthy device's topic and then never reads.
async fn never_reads(port: u16) {
    let Ok((mut raw, _)) = mqtt_proxy_tests::raw::Raw4::connect(port, "sloth", true).await else {
        return;
    };
    let _ = raw.subscribe(1, "healthy/#", 1).await;
    let stream = raw.into_stream();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    drop(stream);
}

/// A CONNECT flood from one address: 32 tasks connecting and dropping in a loop.
async fn connect_flood(port: u16) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32 {
        tasks.spawn(async move {
            for n in 0u64.. {
                let id = format!("flood-{i}-{n}");
                let _ = mqtt_proxy_tests::raw::Raw4::connect(port, &id, true).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_do_not_disturb_a_healthy_device() -> Result<()> {
    let bound = Duration::from_secs(2);
    let (sent, got, gap) = healthy_under("slowloris", slowloris).await?;
    assert!(
        got == sent && gap < bound,
        "slowloris: {got}/{sent}, gap {gap:?}"
    );
    let (sent, got, gap) = healthy_under("a never-reading subscriber", never_reads).await?;
    assert!(
        got == sent && gap < bound,
        "never-reading: {got}/{sent}, gap {gap:?}"
    );
    let (sent, got, gap) = healthy_under("a CONNECT flood", connect_flood).await?;
    assert!(
        got == sent && gap < bound,
        "connect flood: {got}/{sent}, gap {gap:?}"
    );
    Ok(())
}
