//! Destination health end to end: real kube-apiserver, the real operator, three real
//! mosquitto brokers and three real `mqtt-proxy` processes standing in for the pods of one
//! MqttProxy. The test creates the Pod objects (the Deployment's selector labels, a Ready
//! condition and `status.podIP` 127.0.0.2/3/4 through the status subresource) and runs each
//! proxy on its pod's IP and the HTTP port the operator calls, with the operator-rendered
//! brokers file and admin token. The real `kubectl` must then show `Connected 3/3`; a killed
//! broker turns `Connected=False` (reason `Unreachable`) and the proxy `Degraded` naming it;
//! a restarted one recovers; and steady windows (3 brokers, then 1) write no status at all
//! while the pods are asked once per round each.
//!
//! ```text
//!  operator ──GET http://127.0.0.{2,3,4}:<web>/api/status──▶ mqtt-proxy ×3 ──▶ mosquitto ×3
//!     │ (every 10 s, bearer token from fleet-admin)              ▲ one device each
//!     └──status──▶ kube-apiserver ◀── kubectl get mqb / mqp (the test)
//! ```
//!
//! Outside CI this skips (with a message) when `tests/k8s/apiserver.sh build` has not run.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use mqtt_proxy_tests::k8s::bins::workspace_binary;
use mqtt_proxy_tests::k8s::kubectl::{condition, Kubectl};
use mqtt_proxy_tests::k8s::kubelet::{secret_data, SecretDir};
use mqtt_proxy_tests::k8s::operator::{apply_crds, operator, rendered_brokers, rendered_data};
use mqtt_proxy_tests::k8s::process::Process;
use mqtt_proxy_tests::k8s::TestApiServer;
use mqtt_proxy_tests::proxy::three_brokers;
use mqtt_proxy_tests::{free_port, Publisher};
use serde_json::{json, Value};

const NS: &str = "health";
const PROXY: &str = "fleet";
const BROKERS: [&str; 3] = ["alpha", "beta", "gamma"];
/// The poller asks every 10 s and a killed broker's upstream backs off up to 30 s: a loaded
/// 2-core box needs generous bounds (each wait ends as soon as its condition holds).
const WAIT: Duration = Duration::from_secs(120);
/// The steady window over which no status may be written (≥ 3 polling rounds).
const STEADY: Duration = Duration::from_secs(35);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_shows_destination_health_through_an_outage() -> Result<()> {
    let Some(api) = TestApiServer::start().await? else {
        return Ok(());
    };
    let mut brokers = three_brokers().await?;
    let k = api.kubectl();
    apply_crds(&api).await?;
    k.create_namespace(NS).await?;
    let web_port = free_port();
    let ports: Vec<u16> = brokers.iter().map(|b| b.port()).collect();
    k.apply(&objects(&ports, web_port)).await?;
    let mut op = operator(&api, &["--namespace", NS])?;
    op.wait_ok("/readyz").await?;

    rendered_brokers(k, NS, &format!("{PROXY}-brokers"), |b| b.len() == 3).await?;
    let data = rendered_data(k, NS, &format!("{PROXY}-brokers")).await?;
    let admin = k
        .wait_for("secret", &format!("{PROXY}-admin"), NS, WAIT, |s| {
            s.cloned()
        })
        .await?;
    let token = String::from_utf8(
        secret_data(&admin)?
            .remove("token")
            .context("the admin Secret has a token")?,
    )?;
    let volume_dir = tempfile::tempdir()?;
    let mut volume = SecretDir::create(volume_dir.path(), &data)?;
    let brokers_file = volume.path().join("brokers.yaml");

    let mut pods = Vec::new();
    for i in 0..3u8 {
        let ip = Ipv4Addr::new(127, 0, 0, 2 + i);
        let pod = PodProxy::start(&brokers_file, ip, web_port, &token).await?;
        let name = format!("{PROXY}-{i}");
        k.create_pod(
            NS,
            &name,
            &[
                ("app.kubernetes.io/name", "mqtt-proxy"),
                ("app.kubernetes.io/instance", PROXY),
            ],
        )
        .await?;
        k.patch_status("pod", &name, NS, &ready_pod_status(ip))
            .await?;
        pods.push(pod);
    }

    let result = outage_and_recovery(k, &mut brokers, &op, &mut volume).await;
    if result.is_err() {
        eprintln!("--- operator\n{}", op.process.log_tail());
        for p in &pods {
            eprintln!("--- {}\n{}", p.addr, p.process.log_tail());
        }
    }
    op.process.ensure_running()?;
    result
}

async fn outage_and_recovery(
    k: &Kubectl,
    brokers: &mut [mqtt_proxy_tests::Mosquitto; 3],
    op: &mqtt_proxy_tests::k8s::operator::Operator,
    volume: &mut SecretDir,
) -> Result<()> {
    // Healthy: every broker connected from all three pods, as the printer column says.
    wait_columns(k, "mqb", "CONNECTED", |rows| {
        rows.len() == 3 && rows.values().all(|c| c == "3/3")
    })
    .await?;
    wait_columns(k, "mqp", "BROKERS", |rows| {
        rows.get(PROXY).map(String::as_str) == Some("3/3")
    })
    .await?;
    let devices = wait_columns(k, "mqp", "DEVICES", |rows| {
        rows.get(PROXY).map(String::as_str) == Some("3")
    })
    .await;
    devices.context("one device per pod, summed over the pods")?;
    let alpha = get(k, "mqb", "alpha").await?;
    ensure!(
        alpha["status"]["proxies"] == json!([{"name": PROXY, "connected": 3, "total": 3}]),
        "status.proxies: {}",
        alpha["status"]
    );
    ensure!(
        condition(&alpha, "Connected").is_some_and(|c| c["status"] == "True"),
        "alpha Connected: {}",
        alpha["status"]
    );
    let since = condition(&alpha, "Connected").map(|c| c["lastTransitionTime"].clone());
    print_tables(k, "healthy").await?;

    // No write storm: a steady window changes no resourceVersion, yet the pods are asked.
    steady_window(k, op, 3).await?;

    // Outage: beta's broker dies; every pod's upstream to it fails to reconnect.
    brokers[1].kill()?;
    let beta = wait_object(k, "mqb", "beta", |b| {
        condition(b, "Connected")
            .is_some_and(|c| c["status"] == "False" && c["reason"] == "Unreachable")
            && b["status"]["connected"] == "0/3"
    })
    .await?;
    ensure!(
        beta["status"]["lastError"]
            .as_str()
            .is_some_and(|e| e.starts_with(&format!("{PROXY}-"))),
        "lastError names the pod: {}",
        beta["status"]
    );
    let proxy = wait_object(k, "mqp", PROXY, |p| {
        condition(p, "Degraded").is_some_and(|c| {
            c["status"] == "True"
                && c["reason"] == "BrokersDisconnected"
                && c["message"].as_str().is_some_and(|m| m.contains("beta"))
        }) && p["status"]["brokers"] == "2/3"
    })
    .await?;
    let msg = condition(&proxy, "Degraded").map(|c| c["message"].to_string());
    ensure!(
        !msg.unwrap_or_default().contains("alpha"),
        "only beta is named"
    );
    print_tables(k, "beta killed").await?;
    let alpha = get(k, "mqb", "alpha").await?;
    ensure!(
        condition(&alpha, "Connected").map(|c| c["lastTransitionTime"].clone()) == since,
        "alpha's Connected stayed True, so its lastTransitionTime did not move"
    );

    // Recovery: the same port again; the upstreams reconnect after their backoff.
    brokers[1].restart().await?;
    let beta = wait_object(k, "mqb", "beta", |b| {
        condition(b, "Connected").is_some_and(|c| c["status"] == "True")
            && b["status"]["connected"] == "3/3"
    })
    .await?;
    ensure!(
        beta["status"].get("lastError").is_none(),
        "lastError cleared: {}",
        beta["status"]
    );
    wait_object(k, "mqp", PROXY, |p| {
        // Not degraded by brokers any more (with 3 replicas on the 1.20 test API server it
        // stays Degraded for `PodDisruptionBudgetSkipped`: no policy/v1 there).
        condition(p, "Degraded")
            .is_some_and(|c| c["status"] == "False" || c["reason"] != "BrokersDisconnected")
            && p["status"]["brokers"] == "3/3"
    })
    .await?;

    // Fewer brokers, same pods: the same number of requests (one document per pod).
    k.run(&["label", "mqb", "beta", "gamma", "-n", NS, "fleet-"], None)
        .await?;
    rendered_brokers(k, NS, &format!("{PROXY}-brokers"), |b| b.len() == 1).await?;
    volume.update(&rendered_data(k, NS, &format!("{PROXY}-brokers")).await?)?;
    wait_columns(k, "mqb", "CONNECTED", |rows| {
        rows.get("alpha").map(String::as_str) == Some("3/3")
            && rows.get("beta").map(String::as_str) == Some("0/0")
            && rows.get("gamma").map(String::as_str) == Some("0/0")
    })
    .await?;
    wait_columns(k, "mqp", "BROKERS", |rows| {
        rows.get(PROXY).map(String::as_str) == Some("1/1")
    })
    .await?;
    steady_window(k, op, 1).await
}

/// Waits [`STEADY`] and checks that no MqttBroker or MqttProxy was written meanwhile while
/// the 3 pods were asked once per round; prints the measured rates.
async fn steady_window(
    k: &Kubectl,
    op: &mqtt_proxy_tests::k8s::operator::Operator,
    brokers: usize,
) -> Result<()> {
    const ROUNDS: &str = "mqtt_proxy_operator_health_round_seconds_count";
    let polls_before = polls_ok(op)?;
    let rounds_before = metric(op, ROUNDS)?;
    let versions = resource_versions(k).await?;
    let started = Instant::now();
    tokio::time::sleep(STEADY).await;
    let elapsed = started.elapsed();
    let polls = polls_ok(op)? - polls_before;
    let rounds = metric(op, ROUNDS)? - rounds_before;
    ensure!(
        resource_versions(k).await? == versions,
        "a status was written while nothing changed"
    );
    // 3 pods every 10 s: at least one full round per 10 s less one at the edges.
    let min_polls = 3 * (elapsed.as_secs() / 10 - 1);
    ensure!(
        polls >= min_polls,
        "{polls} polls in {elapsed:?} (want ≥ {min_polls})"
    );
    // One request per pod per round, not per broker (a round in flight at either edge of
    // the window may be counted on one side only).
    ensure!(
        polls.abs_diff(3 * rounds) <= 3,
        "{polls} requests in {rounds} rounds of 3 pods"
    );
    let per_round = polls as f64 / rounds.max(1) as f64;
    eprintln!(
        "measured: 3 pods × {brokers} brokers: {polls} /api/status requests in {rounds} rounds \
         over {:.1} s = {per_round:.1} per round (one per pod) = {:.0}/min at the 10 s \
         interval; 0 status writes",
        elapsed.as_secs_f64(),
        per_round * 6.0
    );
    Ok(())
}

/// Three MqttBrokers on the test's mosquittos and a 3-replica MqttProxy selecting them.
fn objects(ports: &[u16], web_port: u16) -> String {
    let mut out = String::new();
    for (name, port) in BROKERS.iter().zip(ports) {
        out.push_str(&format!(
            "apiVersion: mqttproxy.io/v1alpha1\nkind: MqttBroker\n\
             metadata: {{name: {name}, namespace: {NS}, labels: {{fleet: health}}}}\n\
             spec: {{address: 127.0.0.1, port: {port}}}\n---\n"
        ));
    }
    out.push_str(&format!(
        "apiVersion: mqttproxy.io/v1alpha1\nkind: MqttProxy\n\
         metadata: {{name: {PROXY}, namespace: {NS}}}\n\
         spec: {{replicas: 3, allowAnonymous: true, web: {{port: {web_port}}}, \
         brokerSelector: {{matchLabels: {{fleet: health}}}}}}\n"
    ));
    out
}

/// What the kubelet reports for a running, ready pod on `ip`.
fn ready_pod_status(ip: Ipv4Addr) -> Value {
    json!({
        "phase": "Running",
        "podIP": ip.to_string(),
        "podIPs": [{"ip": ip.to_string()}],
        "conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "ContainersReady", "status": "True"}
        ]
    })
}

/// `kubectl get <kind> -n NS`: NAME → the `column` cell, from the real table output.
async fn columns(
    k: &Kubectl,
    kind: &str,
    column: &str,
) -> Result<std::collections::BTreeMap<String, String>> {
    let out = k.run(&["get", kind, "-n", NS], None).await?;
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let at = header
        .iter()
        .position(|h| *h == column)
        .with_context(|| format!("no {column} column in {header:?}"))?;
    Ok(lines
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cells| cells.len() == header.len())
        .map(|cells| (cells[0].to_string(), cells[at].to_string()))
        .collect())
}

async fn wait_columns(
    k: &Kubectl,
    kind: &str,
    column: &str,
    check: impl Fn(&std::collections::BTreeMap<String, String>) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let rows = columns(k, kind, column).await?;
        if check(&rows) {
            eprintln!("kubectl get {kind}: {column} {rows:?}");
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("kubectl get {kind} -n {NS}: {column} never matched; last {rows:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn get(k: &Kubectl, kind: &str, name: &str) -> Result<Value> {
    k.get_json(kind, name, NS)
        .await?
        .with_context(|| format!("{kind} {name} exists"))
}

async fn wait_object(
    k: &Kubectl,
    kind: &str,
    name: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let obj = get(k, kind, name).await?;
        if check(&obj) {
            return Ok(obj);
        }
        if Instant::now() >= deadline {
            bail!(
                "{kind} {name}: status never matched; last {}",
                obj["status"]
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Shows what a user sees (in the test log, for the record).
async fn print_tables(k: &Kubectl, when: &str) -> Result<()> {
    let mqb = k.run(&["get", "mqb", "-n", NS], None).await?;
    let mqp = k.run(&["get", "mqp", "-n", NS], None).await?;
    eprintln!("--- {when}: kubectl get mqb\n{mqb}--- kubectl get mqp\n{mqp}");
    Ok(())
}

/// `metadata.resourceVersion` of every MqttBroker and MqttProxy (a status write bumps it).
async fn resource_versions(k: &Kubectl) -> Result<Vec<String>> {
    let out = k
        .run(
            &[
                "get",
                "mqb,mqp",
                "-n",
                NS,
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}={.metadata.resourceVersion} {end}",
            ],
            None,
        )
        .await?;
    Ok(out.split_whitespace().map(String::from).collect())
}

/// `mqtt_proxy_operator_health_polls_total{result="ok"}` from the operator's `/metrics`.
fn polls_ok(op: &mqtt_proxy_tests::k8s::operator::Operator) -> Result<u64> {
    metric(op, "mqtt_proxy_operator_health_polls_total{result=\"ok\"}")
}

/// One series of the operator's `/metrics` (0 while absent).
fn metric(op: &mqtt_proxy_tests::k8s::operator::Operator, series: &str) -> Result<u64> {
    let (status, body) = op.get("/metrics").context("/metrics answers")?;
    ensure!(status == 200, "/metrics answered {status}");
    let v = body
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .map_or(Ok(0.0), |v| v.trim().parse::<f64>())?;
    Ok(v as u64)
}

/// A real `mqtt-proxy` standing in for one pod: HTTP on the pod's IP and the MqttProxy's
/// web port (where the operator calls), MQTT on a free 127.0.0.1 port with one device.
struct PodProxy {
    process: Process,
    addr: SocketAddr,
    _device: Publisher,
    _data: tempfile::TempDir,
}

impl PodProxy {
    async fn start(brokers_file: &Path, ip: Ipv4Addr, web_port: u16, token: &str) -> Result<Self> {
        let data = tempfile::tempdir()?;
        let mqtt_port = free_port();
        let addr = SocketAddr::from((ip, web_port));
        let mut cmd = std::process::Command::new(workspace_binary("mqtt-proxy", "mqtt-proxy")?);
        cmd.arg("--brokers-file")
            .arg(brokers_file)
            .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt_port}")])
            .args(["--http-listen", &addr.to_string()])
            .arg("--data-dir")
            .arg(data.path())
            .arg("--allow-anonymous")
            .env("MQTT_PROXY_ADMIN_TOKEN", token);
        let mut process = Process::spawn("mqtt-proxy", &mut cmd)?;
        let deadline = Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", mqtt_port))
            .await
            .is_err()
            || tokio::net::TcpStream::connect(addr).await.is_err()
        {
            process.ensure_running()?;
            ensure!(
                Instant::now() < deadline,
                "the proxy on {addr} did not listen\n{}",
                process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        process.ensure_running()?;
        // A device: the proxy connects upstreams per device, so an outage becomes visible.
        let device = Publisher::connect(mqtt_port).await?;
        Ok(Self {
            process,
            addr,
            _device: device,
            _data: data,
        })
    }
}
