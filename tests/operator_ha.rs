//! Operator high availability against a real kube-apiserver: several `mqtt-proxy-operator`
//! processes with `--leader-elect` on one Lease. Only the leader reconciles (the standbys'
//! reconcile counters stay at zero while it leads, so no object is written by two of them),
//! `/readyz` and the `mqtt_proxy_operator_leader` gauge say who leads, a stopped leader
//! (SIGTERM) releases the Lease and a killed one (SIGKILL) loses it after the lease time:
//! either way a standby takes over and reconciles the next change.
//!
//! ```text
//!   A (leader) ──┐                          SIGTERM A: released, B leads within ~retry
//!   B (standby) ─┼── Lease ha/mqtt-proxy-operator ──▶ SIGKILL B: C leads within lease + retry
//!   C (standby) ─┘
//! ```
//!
//! Outside CI this skips (with a message) when `tests/k8s/apiserver.sh build` has not run.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use mqtt_proxy_tests::k8s::operator::{examples_cluster, operator, Operator, WAIT};
use mqtt_proxy_tests::k8s::TestApiServer;
use mqtt_proxy_tests::wait_until;

const NS: &str = "ha";
/// Short lease timing so the test runs in seconds; the rule (renew deadline < lease) holds.
const LEASE_SECS: u64 = 6;
const RETRY_SECS: u64 = 1;
/// Scheduling slack on a loaded 2-core box, on top of the protocol's own bound.
const SLACK: Duration = Duration::from_secs(8);

fn start(api: &TestApiServer) -> Result<Operator> {
    operator(
        api,
        &[
            "--namespace",
            NS,
            "--leader-elect",
            "--leader-election-namespace",
            NS,
            "--leader-lease-secs",
            &LEASE_SECS.to_string(),
            "--leader-renew-deadline-secs",
            "4",
            "--leader-retry-secs",
            &RETRY_SECS.to_string(),
        ],
    )
}

/// Polls `/readyz` until its body starts with `prefix`; returns the body.
async fn wait_readyz(op: &mut Operator, prefix: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = op.get("/readyz");
        if let Some((200, body)) = &last {
            if body.starts_with(prefix) {
                return Ok(body.trim().to_string());
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "/readyz never started with {prefix:?} within {timeout:?} (last {last:?})\n{}",
                op.process.log_tail()
            );
        }
        op.process.ensure_running()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader's identity from its `/readyz` (`ready: leader <identity>`).
async fn wait_leader(op: &mut Operator, timeout: Duration) -> Result<String> {
    let body = wait_readyz(op, "ready: leader ", timeout).await?;
    Ok(body.trim_start_matches("ready: leader ").to_string())
}

fn gauge(op: &Operator, name: &str) -> Result<f64> {
    let (_, body) = op.get("/metrics").context("/metrics did not answer")?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .context(format!("{name} missing"))?
        .trim()
        .parse()
        .context("parsing the gauge")
}

/// Sets `spec.replicas` and waits until the Deployment follows (a reconcile by the leader).
async fn scale_and_wait(api: &TestApiServer, replicas: u32) -> Result<()> {
    let k = api.kubectl();
    let patch = format!(r#"{{"spec":{{"replicas":{replicas}}}}}"#);
    k.merge_patch("mqp", "factory", NS, &patch).await?;
    k.wait_for("deployment", "factory", NS, WAIT, |d| {
        (d?["spec"]["replicas"].as_u64()? == u64::from(replicas)).then_some(())
    })
    .await
}

async fn lease_holder(api: &TestApiServer) -> Result<String> {
    let lease = api
        .kubectl()
        .get_json("lease", "mqtt-proxy-operator", NS)
        .await?
        .context("no Lease")?;
    Ok(lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_reconciles_and_a_standby_takes_over_when_it_stops() -> Result<()> {
    let Some(api) = examples_cluster(NS).await? else {
        return Ok(());
    };
    let k = api.kubectl();

    let mut a = start(&api)?;
    let a_id = wait_leader(&mut a, WAIT).await?;
    let mut b = start(&api)?;
    let standby = wait_readyz(&mut b, "standby: ", WAIT).await?;
    ensure!(
        standby.contains(&a_id),
        "standby names the holder: {standby}"
    );
    k.wait_for("deployment", "factory", NS, WAIT, |d| d.map(|_| ()))
        .await?;
    scale_and_wait(&api, 3).await?;
    ensure!(
        a.reconciles_finished("mqttproxy")? > 0,
        "the leader reconciled"
    );
    ensure!(
        b.reconciles_finished("mqttproxy")? == 0 && b.reconciles_finished("mqttbroker")? == 0,
        "the standby reconciled (wrote) while A led"
    );
    ensure!(gauge(&a, "mqtt_proxy_operator_leader")? == 1.0);
    ensure!(gauge(&b, "mqtt_proxy_operator_leader")? == 0.0);
    let brokers = r#"mqtt_proxy_operator_watched_objects{kind="MqttBroker"}"#;
    ensure!(
        wait_until(WAIT, || gauge(&a, brokers).ok() == Some(2.0)).await,
        "the leader counts the example brokers"
    );

    // SIGTERM: A releases the Lease, so B need not wait for it to expire.
    a.process.signal("TERM")?;
    let stopped = Instant::now();
    let status = a.process.wait_exit(WAIT).await?;
    ensure!(status.success(), "a clean stop exits 0: {status}");
    let b_id = wait_leader(&mut b, WAIT).await?;
    let released_takeover = stopped.elapsed();
    ensure!(
        released_takeover < Duration::from_secs(LEASE_SECS),
        "after a release B took {released_takeover:?}, not less than the lease ({LEASE_SECS} s)"
    );
    ensure!(lease_holder(&api).await? == b_id);

    // SIGKILL: B cannot release; C takes over once the lease expired.
    let mut c = start(&api)?;
    wait_readyz(&mut c, "standby: ", WAIT).await?;
    scale_and_wait(&api, 4).await?;
    ensure!(
        c.reconciles_finished("mqttproxy")? == 0,
        "C reconciled while B led"
    );
    b.process.signal("KILL")?;
    let killed = Instant::now();
    let c_id = wait_leader(&mut c, WAIT).await?;
    let expired_takeover = killed.elapsed();
    let bound = Duration::from_secs(LEASE_SECS + 2 * RETRY_SECS) + SLACK;
    ensure!(
        expired_takeover <= bound,
        "C took {expired_takeover:?} to take over a killed leader's lease (bound {bound:?})"
    );
    ensure!(lease_holder(&api).await? == c_id);
    scale_and_wait(&api, 2).await?;
    ensure!(
        c.reconciles_finished("mqttproxy")? > 0,
        "the new leader reconciles"
    );
    println!(
        "takeover after release: {:.1} s; after kill: {:.1} s (lease {LEASE_SECS} s, retry {RETRY_SECS} s)",
        released_takeover.as_secs_f64(),
        expired_takeover.as_secs_f64()
    );
    Ok(())
}
