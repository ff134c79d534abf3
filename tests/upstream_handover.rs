//! Reload of a changed broker and the disk spool: a changed broker hands its queue, spool
//! and in-flight messages over to its new settings (one connection per client id), and
//! every spooled broker of a device resumes after a restart. Real mosquitto brokers on
//! free ports, real clients; every wait is bounded.

use std::time::Duration;

use anyhow::{ensure, Result};
use mqtt_proxy::broker::Secret;
use mqtt_proxy::ProxyHandle;
use mqtt_proxy_tests::outage;
use mqtt_proxy_tests::{wait_until, Mosquitto, Publisher, Subscriber};
use rumqttc::MqttOptions;

/// Generous bound for things that normally take milliseconds.
const WAIT: Duration = Duration::from_secs(10);
/// The brokers-file watcher's poll period in these tests (the binary uses 500 ms).
const RELOAD_POLL: Duration = Duration::from_millis(100);

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
