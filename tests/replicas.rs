//! Replicas that don't fight: two `mqtt-proxy` processes with the same broker file, each
//! serving a device with the same client id, in front of one real mosquitto.
//!
//! ```text
//!   dev-1 ──▶ mqtt-proxy --instance-id replica-a ──┐  dev-1@replica-a
//!                                                  ├──▶ mosquitto ──▶ observer
//!   dev-1 ──▶ mqtt-proxy --instance-id replica-b ──┘  dev-1@replica-b
//! ```
//!
//! With `--upstream-client-id instance` both upstream sessions stay connected and both
//! devices' messages keep arriving; the control case (the default `device` ids) shows the
//! kick-off loop the rule exists to prevent, so the first test cannot pass by accident.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use mqtt_proxy::broker::BrokerConfig;
use mqtt_proxy::store::render_brokers_file;
use mqtt_proxy_tests::k8s::proxy_loop::ProxyProcess;
use mqtt_proxy_tests::{wait_until, Mosquitto, Publisher, Subscriber};

/// How long both replicas publish side by side: several upstream keepalive-free seconds,
/// long enough for a kick-off loop to show (the control case sees one within ~1 s).
const SIDE_BY_SIDE: Duration = Duration::from_secs(6);
const WAIT: Duration = Duration::from_secs(60);

struct Pair {
    broker: Mosquitto,
    proxies: [ProxyProcess; 2],
    _dir: tempfile::TempDir,
}

/// One broker, one brokers file, two proxy processes started with `mode` and instance ids
/// `replica-a` / `replica-b`.
async fn pair(mode: &str) -> Result<Pair> {
    let broker = Mosquitto::start().await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("brokers.yaml");
    let config = BrokerConfig::new("shared", "127.0.0.1", broker.port());
    std::fs::write(&file, render_brokers_file(&[config])?)?;
    let start = |id: &'static str| {
        let file = file.clone();
        async move {
            ProxyProcess::start_with(
                &file,
                &["--instance-id", id, "--upstream-client-id", mode],
                &[],
            )
            .await
        }
    };
    let (a, b) = tokio::try_join!(start("replica-a"), start("replica-b"))?;
    Ok(Pair {
        broker,
        proxies: [a, b],
        _dir: dir,
    })
}

/// Publishes `replicas/<i>/<n>` from a `dev-1` on each proxy every 200 ms for
/// [`SIDE_BY_SIDE`]; returns how many each sent.
async fn publish_side_by_side(p: &Pair) -> Result<[usize; 2]> {
    let mut devices = Vec::new();
    for proxy in &p.proxies {
        let device = Publisher::builder(proxy.port)
            .client_id("dev-1")
            .connect()
            .await
            .context("device connect")?;
        devices.push(device);
    }
    let started = Instant::now();
    let mut sent = [0usize; 2];
    while started.elapsed() < SIDE_BY_SIDE {
        for (i, d) in devices.iter().enumerate() {
            d.publish(&format!("replicas/{i}/{}", sent[i]), "x", 1, false)
                .await?;
            sent[i] += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for d in &devices {
        d.wait_acked(WAIT).await?;
    }
    Ok(sent)
}

/// Two replicas in instance mode, the same device id on each: each upstream session
/// connects exactly once and every message of both devices reaches the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_ids_keep_two_replicas_connected_to_one_broker() -> Result<()> {
    let p = pair("instance").await?;
    let observer = Subscriber::connect(p.broker.port(), "replicas/#", 1).await?;
    let sent = publish_side_by_side(&p).await?;
    let expected = sent[0] + sent[1];
    let got = observer.wait_for_count(expected, WAIT).await;
    for (i, n) in sent.iter().enumerate() {
        let prefix = format!("replicas/{i}/");
        let mut seqs: Vec<usize> = got
            .iter()
            .filter_map(|m| m.topic.strip_prefix(&prefix)?.parse().ok())
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        ensure!(
            seqs.len() == *n,
            "replica {i}: {} of {n} messages reached the broker\n{}",
            seqs.len(),
            p.proxies[i].process.log_tail()
        );
    }
    for id in ["dev-1@replica-a", "dev-1@replica-b"] {
        let connects = p.broker.client_connects(id);
        ensure!(
            connects == 1,
            "{id} connected {connects} times (expected once: no kick-off)\n{}",
            p.broker.log_tail()
        );
    }
    ensure!(
        p.broker.client_connects("dev-1") == 0,
        "a replica used the bare device id"
    );
    Ok(())
}

/// The control case: with the default device ids the same two replicas kick each other
/// off the broker over and over (what instance mode prevents).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_ids_on_two_replicas_kick_each_other_off() -> Result<()> {
    let p = pair("device").await?;
    let _ = publish_side_by_side(&p).await;
    let looping = wait_until(WAIT, || p.broker.client_connects("dev-1") >= 4).await;
    ensure!(
        looping,
        "expected a kick-off loop on dev-1, saw {} connects\n{}",
        p.broker.client_connects("dev-1"),
        p.broker.log_tail()
    );
    Ok(())
}
