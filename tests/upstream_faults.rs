//! The upstream side where brokers push back: refused logins and flapping connections
//! (backoff), size limits and poison messages, negative acknowledgements, message expiry
//! while queued, reloads of a changed broker, and the spool. Real mosquitto brokers on
//! free ports, real clients; every wait is bounded.
//!
//! Windows that *count* attempts (backoff) are fixed lengths: the assertion is an upper
//! bound, which a slow machine only makes easier to meet.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use mqtt_proxy::broker::{MqttVersion, Secret};
use mqtt_proxy::config::AckPolicy;
use mqtt_proxy::ProxyHandle;
use mqtt_proxy_tests::outage::{self, metric_value, Gate};
use mqtt_proxy_tests::{
    mosquitto_pub, mosquitto_pub_log, wait_until, Mosquitto, Publisher, Subscriber, TestProxy,
};
use rumqttc::MqttOptions;

/// Generous bound for things that normally take milliseconds.
const WAIT: Duration = Duration::from_secs(10);
/// The brokers-file watcher's poll period in these tests (the binary uses 500 ms).
const RELOAD_POLL: Duration = Duration::from_millis(100);
/// The window over which connection attempts are counted.
const WINDOW: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Backoff

/// A broker that refuses our credentials (mosquitto answers CONNACK "not authorised") gets
/// a handful of CONNECTs in 10 s, not one every 100 ms (127 in 10 s were measured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_back_off_exponentially() -> Result<()> {
    let broker = Mosquitto::builder().user("dev", "right").start().await?;
    let proxy = TestProxy::start(&[&broker], |_, b| {
        b[0].username = Some("dev".into());
        b[0].password = Some(Secret::new("wrong"));
    })
    .await?;
    let _device = Publisher::builder(proxy.port())
        .client_id("refused-dev")
        .connect()
        .await?;
    let refusals = || broker.count_in_log("disconnected, not authorised");
    ensure!(
        wait_until(WAIT, || refusals() >= 1).await,
        "the broker never saw a CONNECT\n{}",
        broker.log_tail()
    );
    let before = broker.count_in_log("New connection from");
    tokio::time::sleep(WINDOW).await;
    let attempts = broker.count_in_log("New connection from") - before;
    ensure!(
        attempts <= 6,
        "{attempts} CONNECT attempts in {WINDOW:?} against a refusing broker"
    );
    // Reported per reason: status and metric (mosquitto 2.0 answers code 5 to a bad password).
    let status = proxy.status_of(0)?;
    ensure!(
        status.last_error_reason.as_deref() == Some("not_authorized")
            && status
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("refused")),
        "status: {status:#?}"
    );
    let failures = metric_value(
        &mqtt_proxy::metrics::render(),
        "mqtt_proxy_upstream_connect_failures_total",
        &[("broker", &status.name), ("reason", "not_authorized")],
    );
    ensure!(
        failures.is_some_and(|n| n >= 2.0),
        "failures metric: {failures:?}"
    );
    Ok(())
}

/// A broker that accepts (CONNACK success) and drops the connection at once must not reset
/// the backoff: only a connection that stayed up for the stable period does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_then_drop_does_not_reset_backoff() -> Result<()> {
    let broker = Mosquitto::start().await?;
    let mut gate = Gate::new(broker.port())?;
    gate.open_cutting(Some(4)).await?;
    let gate_port = gate.port();
    let proxy = TestProxy::start(&[&broker], |_, b| b[0].port = gate_port).await?;
    let _device = Publisher::builder(proxy.port())
        .client_id("flappy-dev")
        .connect()
        .await?;
    ensure!(
        wait_until(WAIT, || broker.client_connects("flappy-dev") >= 1).await,
        "no CONNECT reached the broker\n{}",
        broker.log_tail()
    );
    let before = broker.client_connects("flappy-dev");
    tokio::time::sleep(WINDOW).await;
    let connects = broker.client_connects("flappy-dev") - before;
    ensure!(
        connects <= 10,
        "{connects} accepted connections in {WINDOW:?} to a broker that drops each at once"
    );
    // Between a CONNACK and the cut the status is briefly clean: wait for the reason.
    let dropped = || {
        proxy
            .status_of(0)
            .is_ok_and(|s| s.last_error_reason.as_deref() == Some("dropped"))
    };
    ensure!(
        wait_until(WAIT, dropped).await,
        "status: {:#?}",
        proxy.status()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Negative acknowledgements

/// An MQTT 5 broker that refuses a publish (PUBACK 0x87 "not authorised" from mosquitto's
/// ACL) must not look like a delivery: under `ackPolicy: all` an MQTT 5 device gets the
/// broker's reason code, and the drop is counted `reason="rejected"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_puback_reaches_the_device() -> Result<()> {
    let acl_dir = tempfile::tempdir()?;
    let acl = acl_dir.path().join("acl");
    std::fs::write(&acl, "topic readwrite ok/#\n")?;
    let broker = Mosquitto::builder()
        .config_line(&format!("acl_file {}", acl.display()))
        .start()
        .await?;
    let proxy = TestProxy::start(&[&broker], |c, b| {
        c.session.ack_policy = AckPolicy::All;
        b[0].mqtt_version = MqttVersion::V5;
    })
    .await?;
    let port = proxy.port();
    let pub5 = |topic: &'static str| {
        tokio::task::spawn_blocking(move || {
            mosquitto_pub_log(
                port,
                topic,
                "x",
                1,
                &["-d", "-V", "mqttv5", "-i", "nack-dev"],
            )
        })
    };
    let ok = pub5("ok/x").await??;
    ensure!(
        ok.contains("received PUBACK (Mid: 1, RC:0)"),
        "allowed topic: {ok}"
    );
    let denied = pub5("deny/x").await??;
    ensure!(
        denied.contains("received PUBACK (Mid: 1, RC:135)"),
        "the broker's refusal must reach the device: {denied}"
    );
    let rejected = metric_value(
        &mqtt_proxy::metrics::render(),
        "mqtt_proxy_messages_dropped_total",
        &[
            ("broker", &proxy.status_of(0)?.name),
            ("reason", "rejected"),
        ],
    );
    ensure!(rejected == Some(1.0), "rejected: {rejected:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Size limits and poison

/// mosquitto with `max_packet_size 1000` closes a 3.1.1 connection on a larger PUBLISH
/// and announces nothing. The oversized message is resent first after every reconnect, so
/// without poison handling it wedges the queue forever: the messages behind it must get
/// through, and it is set aside, counted `reason="poison"` and shown in status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_is_set_aside_and_the_queue_moves_on() -> Result<()> {
    let broker = Mosquitto::builder()
        .config_line("max_packet_size 1000")
        .start()
        .await?;
    let sub = Subscriber::connect(broker.port(), "p/#", 1).await?;
    let proxy = TestProxy::start(&[&broker], |_, _| {}).await?;
    let device = Publisher::builder(proxy.port()).connect().await?;
    proxy.wait_upstreams_connected(1, WAIT).await?;
    device.publish("p/before", "0", 1, false).await?;
    device.publish("p/big", "x".repeat(2_000), 1, false).await?;
    for i in 1..=5 {
        device.publish("p/after", i.to_string(), 1, false).await?;
    }
    let got = sub.wait_for_count(6, Duration::from_secs(30)).await;
    let payloads: Vec<_> = got.iter().map(|r| r.payload.clone()).collect();
    ensure!(
        got.len() == 6 && got.iter().all(|r| r.topic != "p/big"),
        "the queue behind the oversized message must move on: {payloads:?}\n{:#?}",
        proxy.status()
    );
    let status = proxy.status_of(0)?;
    ensure!(status.poisoned == 1, "status: {status:#?}");
    let poison = metric_value(
        &mqtt_proxy::metrics::render(),
        "mqtt_proxy_messages_dropped_total",
        &[("broker", &status.name), ("reason", "poison")],
    );
    ensure!(poison == Some(1.0), "poison metric: {poison:?}");
    Ok(())
}

/// An MQTT 5 broker announces its Maximum Packet Size in CONNACK: a larger message is
/// dropped before it is sent (`reason="too_large"`), the connection stays up, and an
/// MQTT 5 device waiting under `ackPolicy: all` hears 0x83 instead of success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_maximum_packet_size_is_honoured() -> Result<()> {
    let broker = Mosquitto::builder()
        .config_line("max_packet_size 1000")
        .start()
        .await?;
    let sub = Subscriber::connect(broker.port(), "s/#", 1).await?;
    let proxy = TestProxy::start(&[&broker], |c, b| {
        c.session.ack_policy = AckPolicy::All;
        b[0].mqtt_version = MqttVersion::V5;
    })
    .await?;
    let port = proxy.port();
    let big = "x".repeat(2_000);
    let out = tokio::task::spawn_blocking(move || {
        mosquitto_pub_log(
            port,
            "s/big",
            &big,
            1,
            &["-d", "-V", "mqttv5", "-i", "big-dev"],
        )
    })
    .await??;
    ensure!(
        out.contains("received PUBACK (Mid: 1, RC:131)"),
        "device must hear 0x83: {out}"
    );
    mosquitto_pub(port, "s/small", "ok", 1, &["-V", "mqttv5", "-i", "big-dev"])?;
    let got = sub.wait_for_count(1, WAIT).await;
    ensure!(
        got.len() == 1 && got[0].topic == "s/small",
        "small message: {got:?}"
    );
    let status = proxy.status_of(0)?;
    let too_large = metric_value(
        &mqtt_proxy::metrics::render(),
        "mqtt_proxy_messages_dropped_total",
        &[("broker", &status.name), ("reason", "too_large")],
    );
    ensure!(too_large == Some(1.0), "too_large metric: {too_large:?}");
    ensure!(
        status.reconnects == 0,
        "never sent, so never disconnected: {status:#?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Message expiry while queued

/// Two MQTT 5 messages wait in the queue of an unreachable broker: one with a Message
/// Expiry Interval of 1 s, one with 60 s. When the broker is back, the first is gone
/// (counted `reason="expired"`) and the second arrives with the time it waited deducted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_is_honoured_while_queued() -> Result<()> {
    let broker = Mosquitto::start().await?;
    let mut gate = Gate::new(broker.port())?;
    let gate_port = gate.port();
    let proxy = TestProxy::start(&[&broker], |_, b| {
        b[0].port = gate_port;
        b[0].mqtt_version = MqttVersion::V5;
    })
    .await?;
    // Devices that stay connected (`-l`: one message per stdin line): a device that leaves
    // ends its upstreams, and their queues, after the drain timeout.
    let port = proxy.port().to_string();
    let mut devices = Vec::new();
    for (topic, expiry) in [("e/short", "1"), ("e/long", "60")] {
        let mut child = std::process::Command::new("mosquitto_pub")
            .args(["-p", &port, "-V", "mqttv5", "-q", "1", "-t", topic, "-l"])
            .args(["-D", "publish", "message-expiry-interval", expiry])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("spawning mosquitto_pub")?;
        if let Some(stdin) = child.stdin.as_mut() {
            use std::io::Write;
            stdin.write_all(b"x\n")?;
        }
        devices.push(KillOnDrop(child));
        // In this order: the short one is queued first.
        let queued = devices.len() as i64;
        ensure!(
            wait_until(WAIT, || proxy
                .status_of(0)
                .is_ok_and(|s| s.queue_messages == queued))
            .await,
            "{topic} not queued: {:#?}",
            proxy.status()
        );
    }
    ensure!(
        wait_until(WAIT, || proxy
            .status_of(0)
            .is_ok_and(|s| s.queue_messages == 2))
        .await,
        "both queued: {:#?}",
        proxy.status()
    );
    // The short one's interval must pass while it is queued.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let bport = broker.port().to_string();
    let sub = tokio::task::spawn_blocking(move || {
        std::process::Command::new("mosquitto_sub")
            .args(["-p", &bport, "-V", "mqttv5", "-t", "e/#", "-q", "1"])
            .args(["-F", "%t %E", "-C", "1", "-W", "30"])
            .output()
    });
    ensure!(
        wait_until(WAIT, || broker.count_in_log("Received SUBSCRIBE") >= 1).await,
        "mosquitto_sub did not subscribe"
    );
    gate.open().await?;
    let out = sub.await??;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (topic, left) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
    let left: u32 = left.parse().unwrap_or(u32::MAX);
    ensure!(
        topic == "e/long" && (30..60).contains(&left),
        "first message must be e/long with less than 60 s left: {text:?}"
    );
    let expired = || {
        metric_value(
            &mqtt_proxy::metrics::render(),
            "mqtt_proxy_messages_dropped_total",
            &[("broker", &proxy.brokers()[0].id), ("reason", "expired")],
        ) == Some(1.0)
    };
    ensure!(
        wait_until(WAIT, expired).await,
        "expired not counted: {:#?}\n{}",
        proxy.status(),
        mqtt_proxy::metrics::render()
    );
    Ok(())
}

/// A child process (a device) killed at the end of the test, pass or fail.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Reload of a changed broker

/// Reads every payload `sub` got as a sequence number.
fn seqs_of(sub: &Subscriber) -> Vec<u64> {
    sub.received()
        .iter()
        .filter_map(|r| std::str::from_utf8(&r.payload).ok()?.parse().ok())
        .collect()
}

/// A subscriber that logs in as `user`.
async fn subscriber_as(broker: &Mosquitto, user: &str, password: &str) -> Result<Subscriber> {
    let mut options = MqttOptions::new(format!("sub-{user}"), "127.0.0.1", broker.port());
    options.set_credentials(user, password);
    Subscriber::connect_with(options, "h/#", 1).await
}

/// The broker refuses the proxy's password while a device publishes 20 QoS 1 messages
/// (acknowledged to the device, queued in the proxy). The password is fixed in the
/// `--brokers-file`: all 20 arrive, in order, and the broker never sees two connections
/// with one client id. (Before: the old upstream drained for the drain timeout, was
/// refused, and dropped the 20.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_password_hands_the_queue_over() -> Result<()> {
    let broker = Mosquitto::builder().user("dev", "right").start().await?;
    let sub = subscriber_as(&broker, "dev", "right").await?;
    let id = "handover-down";
    let with_password = |pw: &str| {
        let mut b = outage::broker(id, broker.port());
        b.username = Some("dev".into());
        b.password = Some(Secret::new(pw));
        b
    };
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("brokers.json");
    outage::write_and_rename(&file, &outage::brokers_json(&[with_password("wrong")]))?;
    let proxy = ProxyHandle::start(&outage::proxy_config(), &[with_password("wrong")]).await?;
    let watcher = tokio::spawn(mqtt_proxy::reload::watch(
        file.clone(),
        proxy.control(),
        RELOAD_POLL,
    ));
    let device = Publisher::builder(proxy.mqtt_addr().port())
        .client_id("handover-dev-1")
        .connect()
        .await?;
    for i in 0..20u64 {
        device.publish("h/seq", i.to_string(), 1, false).await?;
    }
    device.wait_acked(WAIT).await?;
    ensure!(
        wait_until(WAIT, || outage::status_of(&proxy.status(), id)
            .is_some_and(|s| s.queue_messages == 20))
        .await,
        "queued while refused: {:#?}",
        proxy.status()
    );
    outage::write_and_rename(&file, &outage::brokers_json(&[with_password("right")]))?;
    let got = sub.wait_for_count(20, Duration::from_secs(20)).await;
    let seqs = seqs_of(&sub);
    ensure!(
        got.len() == 20 && seqs == (0..20).collect::<Vec<_>>(),
        "all 20 in order after the fix: {seqs:?}\n{:#?}",
        proxy.status()
    );
    ensure!(
        broker.count_in_log("already connected") == 0,
        "two connections with one client id\n{}",
        broker.log_tail()
    );
    watcher.abort();
    Ok(())
}

/// Credentials rotate (user `svc-a` to `svc-b`) while a device streams QoS 1 messages to
/// a live broker: every message arrives, and the old and new settings never hold a
/// connection with the same client id at once (mosquitto logs a takeover as "already
/// connected").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_credentials_use_one_connection_at_a_time() -> Result<()> {
    let broker = Mosquitto::builder()
        .user("svc-a", "pa")
        .user("svc-b", "pb")
        .start()
        .await?;
    let sub = subscriber_as(&broker, "svc-a", "pa").await?;
    let id = "handover-live";
    let as_user = |user: &str, pw: &str| {
        let mut b = outage::broker(id, broker.port());
        b.username = Some(user.into());
        b.password = Some(Secret::new(pw));
        b
    };
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("brokers.json");
    outage::write_and_rename(&file, &outage::brokers_json(&[as_user("svc-a", "pa")]))?;
    let proxy = ProxyHandle::start(&outage::proxy_config(), &[as_user("svc-a", "pa")]).await?;
    let watcher = tokio::spawn(mqtt_proxy::reload::watch(
        file.clone(),
        proxy.control(),
        RELOAD_POLL,
    ));
    let device = Publisher::builder(proxy.mqtt_addr().port())
        .client_id("handover-dev-2")
        .connect()
        .await?;
    outage::wait_upstreams(|| proxy.status(), &[id], 1, WAIT).await?;
    const N: u64 = 600;
    for i in 0..N {
        if i == N / 3 {
            outage::write_and_rename(&file, &outage::brokers_json(&[as_user("svc-b", "pb")]))?;
        }
        device.publish("h/seq", i.to_string(), 1, false).await?;
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    device.wait_acked(WAIT).await?;
    // The new credentials are in use once the broker saw svc-b log in.
    ensure!(
        wait_until(WAIT, || broker.count_in_log("u'svc-b'") >= 1).await,
        "the rotated credentials were never used\n{}",
        broker.log_tail()
    );
    sub.wait_for_count(N as usize, Duration::from_secs(20))
        .await;
    let mut seqs = seqs_of(&sub);
    seqs.sort_unstable();
    seqs.dedup();
    ensure!(
        seqs.len() == N as usize,
        "{} of {N} distinct messages arrived",
        seqs.len()
    );
    ensure!(
        broker.count_in_log("already connected") == 0,
        "two connections with one client id\n{}",
        broker.log_tail()
    );
    watcher.abort();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Spool

/// Two spooled brokers are both down while a device publishes, and the proxy restarts:
/// both spools hold the device's messages, and both must resume (each resume claimed the
/// device id on its own, so the second claim stopped the first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spooled_broker_of_a_device_resumes_after_a_restart() -> Result<()> {
    const N: usize = 20;
    let (mut a, mut b) = tokio::try_join!(Mosquitto::start(), Mosquitto::start())?;
    a.kill()?;
    b.kill()?;
    let data = tempfile::tempdir()?;
    let mut config = outage::proxy_config();
    config.session.spool_dir = Some(data.path().to_owned());
    let spooled = |id: &str, port: u16| {
        let mut c = outage::broker(id, port);
        c.spool = true;
        c
    };
    let brokers = [spooled("spool2-a", a.port()), spooled("spool2-b", b.port())];
    let proxy = ProxyHandle::start(&config, &brokers).await?;
    let device = Publisher::builder(proxy.mqtt_addr().port())
        .client_id("spool2-device")
        .connect()
        .await?;
    for seq in 0..N {
        device.publish("s2/x", seq.to_string(), 1, false).await?;
    }
    device.wait_acked(WAIT).await?;
    proxy.shutdown().await;
    drop(device);

    a.restart().await?;
    b.restart().await?;
    let sub_a = Subscriber::connect(a.port(), "s2/#", 1).await?;
    let sub_b = Subscriber::connect(b.port(), "s2/#", 1).await?;
    let proxy = ProxyHandle::start(&config, &brokers).await?;
    let (got_a, got_b) = tokio::join!(
        sub_a.wait_for_count(N, Duration::from_secs(15)),
        sub_b.wait_for_count(N, Duration::from_secs(15))
    );
    ensure!(
        got_a.len() == N && got_b.len() == N,
        "A got {} and B got {} of {N} from their spools",
        got_a.len(),
        got_b.len()
    );
    proxy.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Memory: queue bytes count MQTT 5 properties

/// This process's resident set in bytes (the proxy runs in-process).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A device sends 1-byte payloads that carry 512 KiB of user properties each to a broker
/// that is down, with the queue capped at 8 MiB. The queue must count the properties (it
/// counted ~70 bytes per message, so it held all of them), so its bytes stay under the
/// cap and the process's RSS levels off instead of growing by the ~200 MiB sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_bytes_count_properties_and_rss_levels_off() -> Result<()> {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use rumqttc::v5::mqttbytes::QoS;
    const CAP: usize = 8 << 20;
    const BURSTS: usize = 4;
    const PER_BURST: usize = 100;
    let broker = Mosquitto::start().await?;
    let gate = Gate::new(broker.port())?; // never opened: the broker is unreachable
    let gate_port = gate.port();
    let proxy = TestProxy::start(&[&broker], |_, b| {
        b[0].port = gate_port;
        b[0].queue = Some(mqtt_proxy::broker::QueueLimits {
            max_bytes: Some(CAP),
            ..Default::default()
        });
    })
    .await?;
    let mut options = rumqttc::v5::MqttOptions::new("props-dev", "127.0.0.1", proxy.port());
    options.set_max_packet_size(Some(2 << 20));
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 16);
    let events = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let props = PublishProperties {
        user_properties: (0..64)
            .map(|i| (format!("k{i}"), "v".repeat(8 << 10)))
            .collect(),
        ..Default::default()
    };
    let mut rss = Vec::new();
    let mut sent = 0;
    for _ in 0..BURSTS {
        for _ in 0..PER_BURST {
            client
                .publish_with_properties("m/x", QoS::AtMostOnce, false, "x", props.clone())
                .await?;
            sent += 1;
        }
        // All of this burst reached the proxy: its queue saw every message.
        let arrived = || {
            proxy
                .status_of(0)
                .is_ok_and(|s| s.dropped + s.queue_messages.max(0) as u64 >= sent)
        };
        ensure!(wait_until(WAIT, arrived).await, "burst not received");
        tokio::time::sleep(Duration::from_millis(200)).await;
        rss.push(rss_bytes().unwrap_or(0));
    }
    let status = proxy.status_of(0)?;
    println!(
        "properties case: RSS after each burst of {PER_BURST} x 512 KiB: {:?} MiB; queue {} B / {} msgs",
        rss.iter().map(|b| b >> 20).collect::<Vec<_>>(),
        status.queue_bytes,
        status.queue_messages
    );
    ensure!(
        status.queue_bytes as usize <= CAP && status.queue_messages <= 16,
        "the queue must count properties: {status:#?}"
    );
    let growth = rss.last().copied().unwrap_or(0).saturating_sub(rss[0]);
    ensure!(
        growth < 64 << 20,
        "RSS grew by {} MiB after the first burst (levels off under the cap): {rss:?}",
        growth >> 20
    );
    events.abort();
    Ok(())
}

/// A 3.1.1 broker cannot be told the proxy's 1 MiB inbound limit. A 2 MiB QoS 1 message
/// for a subscribed device is acknowledged to the broker and dropped
/// (`reason="inbound_too_large"`), the connection stays up (closing it would make a broker
/// that keeps the session redeliver it forever), and the next message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_from_a_broker_is_skipped_not_fatal() -> Result<()> {
    let broker = Mosquitto::start().await?;
    let proxy = TestProxy::start(&[&broker], |_, b| b[0].bidirectional = true).await?;
    let device = Subscriber::connect(proxy.port(), "big/#", 1).await?;
    mqtt_proxy_tests::bidi::wait_subscribed(&broker, "big/#", 1, WAIT).await?;
    let publisher = Publisher::builder(broker.port()).connect().await?;
    publisher
        .publish("big/huge", "x".repeat(2 << 20), 1, false)
        .await?;
    publisher.publish("big/small", "ok", 1, false).await?;
    publisher.wait_acked(WAIT).await?;
    let got = device.wait_for_count(1, WAIT).await;
    ensure!(
        got.len() == 1 && got[0].topic == "big/small",
        "the small message after the huge one: {got:?}"
    );
    let status = proxy.status_of(0)?;
    ensure!(status.reconnects == 0, "connection kept: {status:#?}");
    let skipped = metric_value(
        &mqtt_proxy::metrics::render(),
        "mqtt_proxy_messages_dropped_total",
        &[("broker", &status.name), ("reason", "inbound_too_large")],
    );
    ensure!(skipped == Some(1.0), "inbound_too_large: {skipped:?}");
    Ok(())
}
