//! Mirror sessions on exactly one replica: two `mqtt-proxy` processes with the same broker
//! file (a `mirror: true` source, one target) and `--mirror-lease` against a real
//! kube-apiserver. Only the Lease holder opens a mirror session, every message on the
//! source reaches the target once (not once per replica), and when the holder is killed
//! the other replica takes the Lease over and mirrors within the lease time.
//!
//! ```text
//!   src (mirror) ──▶ replica-a (holds Lease) ──▶ dst ──▶ observer
//!                └─▶ replica-b (standby, no mirror session)
//! ```
//!
//! Outside CI this skips (with a message) when `tests/k8s/apiserver.sh build` has not run.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use mqtt_proxy::broker::BrokerConfig;
use mqtt_proxy::store::render_brokers_file;
use mqtt_proxy_tests::k8s::proxy_loop::ProxyProcess;
use mqtt_proxy_tests::k8s::TestApiServer;
use mqtt_proxy_tests::{wait_until, Mosquitto, Publisher, Subscriber};

const LEASE: &str = "mqtt-proxy-mirror";
const LEASE_SECS: u64 = 6;
const WAIT: Duration = Duration::from_secs(60);
/// Scheduling slack on a loaded 2-core box, on top of lease + retry + reconnect.
const SLACK: Duration = Duration::from_secs(10);
const IDS: [&str; 2] = ["replica-a", "replica-b"];

fn mirror_client(id: &str) -> String {
    format!("mqtt-proxy-mirror-{id}")
}

async fn holder(api: &TestApiServer) -> Result<Option<String>> {
    let lease = api.kubectl().get_json("lease", LEASE, "default").await?;
    Ok(lease
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from))
        .filter(|h| !h.is_empty()))
}

/// Publishes `m/<tag>` on `src` until the observer on `dst` has seen it; returns how long.
async fn probe(src: &Publisher, observer: &Subscriber, tag: &str) -> Result<Duration> {
    let started = Instant::now();
    let topic = format!("m/{tag}");
    while started.elapsed() < WAIT {
        src.publish(&topic, "probe", 1, false).await?;
        let seen = wait_until(Duration::from_millis(500), || {
            observer.received().iter().any(|m| m.topic == topic)
        })
        .await;
        if seen {
            return Ok(started.elapsed());
        }
    }
    bail!("{topic} was never mirrored to dst within {WAIT:?}")
}

/// Publishes `n` messages `m/<tag>/<i>` on `src` and checks each reaches `dst` exactly once.
async fn exactly_once(src: &Publisher, observer: &Subscriber, tag: &str, n: usize) -> Result<()> {
    for i in 0..n {
        src.publish(&format!("m/{tag}/{i}"), "x", 1, false).await?;
    }
    src.wait_acked(WAIT).await?;
    let prefix = format!("m/{tag}/");
    let count = || {
        observer
            .received()
            .iter()
            .filter(|m| m.topic.starts_with(&prefix))
            .count()
    };
    ensure!(
        wait_until(WAIT, || count() >= n).await,
        "only {} of {n} mirrored",
        count()
    );
    // A second mirroring replica would deliver its copies within the same moment; give it
    // a generous window to show up.
    let _ = wait_until(Duration::from_secs(2), || count() > n).await;
    ensure!(
        count() == n,
        "{} copies of {n} messages: mirrored twice",
        count()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_replica_mirrors_and_the_other_takes_over() -> Result<()> {
    let Some(api) = TestApiServer::start().await? else {
        return Ok(());
    };
    let (src, dst) = tokio::try_join!(Mosquitto::start(), Mosquitto::start())?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("brokers.yaml");
    let mut source = BrokerConfig::new("src", "127.0.0.1", src.port());
    source.bidirectional = true;
    source.mirror = true;
    source.subscription_topics = vec!["m/#".into()];
    let target = BrokerConfig::new("dst", "127.0.0.1", dst.port());
    std::fs::write(&file, render_brokers_file(&[source, target])?)?;
    let kubeconfig = api
        .kubeconfig()
        .to_str()
        .context("kubeconfig path")?
        .to_string();
    let secs = LEASE_SECS.to_string();
    let mut replicas = Vec::new();
    for id in IDS {
        let args = [
            "--instance-id",
            id,
            "--mirror-lease",
            LEASE,
            "--mirror-lease-namespace",
            "default",
            "--mirror-lease-secs",
            &secs,
        ];
        replicas
            .push(ProxyProcess::start_with(&file, &args, &[("KUBECONFIG", &kubeconfig)]).await?);
    }
    let observer = Subscriber::connect(dst.port(), "m/#", 1).await?;
    let publisher = Publisher::connect(src.port()).await?;

    probe(&publisher, &observer, "first").await?;
    let first = holder(&api).await?.context("nobody holds the Lease")?;
    let idx = IDS
        .iter()
        .position(|i| *i == first)
        .context("holder is a replica")?;
    let other = IDS[1 - idx];
    ensure!(
        src.client_connects(&mirror_client(&first)) == 1
            && src.client_connects(&mirror_client(other)) == 0,
        "exactly the holder {first} opens a mirror session on src\n{}",
        src.log_tail()
    );
    exactly_once(&publisher, &observer, "one-holder", 20).await?;

    replicas[idx].process.signal("KILL")?;
    let killed = Instant::now();
    probe(&publisher, &observer, "after-kill").await?;
    let takeover = killed.elapsed();
    let bound = Duration::from_secs(LEASE_SECS) + SLACK;
    ensure!(
        takeover <= bound,
        "the standby mirrored {takeover:?} after the holder died (bound {bound:?})"
    );
    ensure!(holder(&api).await?.as_deref() == Some(other));
    exactly_once(&publisher, &observer, "new-holder", 20).await?;
    println!(
        "mirror takeover after SIGKILL of the holder: {:.1} s (lease {LEASE_SECS} s)",
        takeover.as_secs_f64()
    );
    Ok(())
}
