//! What the operator end-to-end tests share: the workspace's generated CRDs applied and
//! established, the real `mqtt-proxy-operator` binary started against a test API server,
//! the rendered broker Secret read back through the proxy's own loader, owner-reference
//! checks (there is no garbage collector to prove them), and the Deployment status a
//! deployment controller would write.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use mqtt_proxy::broker::BrokerConfig;
use serde_json::{json, Value};

use super::bins::workspace_binary;
use super::kubectl::Kubectl;
use super::kubelet::{secret_data, SecretData, SecretDir};
use super::process::Process;
use super::{http_get, TestApiServer};
use crate::try_free_port;

/// How long the operator may take to react; generous for a loaded 2-core box.
pub const WAIT: Duration = Duration::from_secs(60);

/// A path relative to the workspace root.
pub fn workspace_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(relative), |root| root.join(relative))
}

/// Applies `crds/` and waits until every CRD there is established.
pub async fn apply_crds(api: &TestApiServer) -> Result<()> {
    let k = api.kubectl();
    k.apply_path(&workspace_path("crds"), "default").await?;
    for crd in ["mqttbrokers.mqttproxy.io", "mqttproxies.mqttproxy.io"] {
        k.wait_condition("crd", crd, "default", ("Established", "True"), WAIT)
            .await
            .with_context(|| format!("CRD {crd} established"))?;
    }
    Ok(())
}

/// A test API server with the CRDs established and `examples/` applied in namespace `ns`
/// (`None`: skipped, see [`TestApiServer::start`]).
pub async fn examples_cluster(ns: &str) -> Result<Option<TestApiServer>> {
    let Some(api) = TestApiServer::start().await? else {
        return Ok(None);
    };
    apply_crds(&api).await?;
    api.kubectl().create_namespace(ns).await?;
    api.kubectl()
        .apply_path(&workspace_path("examples"), ns)
        .await?;
    Ok(Some(api))
}

/// The real operator binary running against a test API server.
#[derive(Debug)]
pub struct Operator {
    pub process: Process,
    /// Its `--http-listen` port on 127.0.0.1 (`/metrics`, `/healthz`, `/readyz`).
    pub http_port: u16,
}

/// Starts the real operator binary (built on demand) against `api`, HTTP on a free port.
pub fn operator(api: &TestApiServer, extra_args: &[&str]) -> Result<Operator> {
    let bin = workspace_binary("mqtt-proxy-operator", "mqtt-proxy-operator")?;
    let http_port = try_free_port().context("a free port")?;
    let mut cmd = Command::new(bin);
    cmd.env("KUBECONFIG", api.kubeconfig())
        .env("RUST_LOG", "info,mqtt_proxy_operator=debug")
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .args(extra_args);
    let process = Process::spawn("operator", &mut cmd)?;
    Ok(Operator { process, http_port })
}

impl Operator {
    /// `GET path` on the operator's HTTP port: `(status, body)`.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http_port, path)
    }

    /// Waits until `path` answers 200.
    pub async fn wait_ok(&mut self, path: &str) -> Result<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.get(path) {
                Some((200, body)) => return Ok(body),
                last if Instant::now() >= deadline => {
                    bail!(
                        "operator {path}: not 200 within {WAIT:?} (last {last:?})\n{}",
                        self.process.log_tail()
                    )
                }
                _ => self.process.ensure_running()?,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Finished reconciles of `controller` (`mqttproxy`, `mqttbroker`), from the count of
    /// `mqtt_proxy_operator_reconcile_duration_seconds` on `/metrics`.
    pub fn reconciles_finished(&self, controller: &str) -> Result<u64> {
        let (status, body) = self.get("/metrics").context("/metrics did not answer")?;
        ensure!(status == 200, "/metrics answered {status}");
        let series = format!(
            "mqtt_proxy_operator_reconcile_duration_seconds_count{{controller=\"{controller}\"}}"
        );
        let value = body
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(Ok(0.0), |v| v.trim().parse::<f64>())
            .with_context(|| format!("parsing {series}"))?;
        // A Prometheus counter is a float; ours counts whole reconciles.
        Ok(value as u64)
    }
}

/// The rendered Secret's data, once it exists.
pub async fn rendered_data(k: &Kubectl, ns: &str, name: &str) -> Result<SecretData> {
    let secret = k.wait_for("secret", name, ns, WAIT, |s| s.cloned()).await?;
    secret_data(&secret)
}

/// Waits until the rendered Secret `name`, loaded by the proxy's own `--brokers-file`
/// loader from a kubelet-style directory, satisfies `check`; returns that broker set.
pub async fn rendered_brokers(
    k: &Kubectl,
    ns: &str,
    name: &str,
    mut check: impl FnMut(&[BrokerConfig]) -> bool,
) -> Result<Vec<BrokerConfig>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let last = match k.get_json("secret", name, ns).await? {
            Some(secret) => {
                let brokers = load_rendered(&secret_data(&secret)?)?;
                if check(&brokers) {
                    return Ok(brokers);
                }
                format!("{:?}", brokers.iter().map(|b| &b.id).collect::<Vec<_>>())
            }
            None => "absent".to_owned(),
        };
        if Instant::now() >= deadline {
            bail!("secret {ns}/{name}: the rendered brokers never matched; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Parses rendered Secret data exactly as a pod would: materialised, then loaded with
/// `mqtt_proxy::store::load_brokers_file` (relative `passwordFile`s resolved).
pub fn load_rendered(data: &SecretData) -> Result<Vec<BrokerConfig>> {
    let dir = tempfile::tempdir().context("a temp dir for the rendered Secret")?;
    let volume = SecretDir::create(dir.path(), data)?;
    let file = volume.path().join("brokers.yaml");
    ensure!(
        file.exists(),
        "the rendered Secret has no brokers.yaml: keys {:?}",
        data.keys()
    );
    mqtt_proxy::store::load_brokers_file(&file).context("the proxy's loader rejects brokers.yaml")
}

/// `object` has exactly one controller owner reference: the MqttProxy `name`/`uid`.
pub fn assert_owned_by(object: &Value, name: &str, uid: &str) -> Result<()> {
    let what = format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["name"].as_str().unwrap_or("?")
    );
    let refs = object["metadata"]["ownerReferences"]
        .as_array()
        .with_context(|| format!("{what} has no ownerReferences"))?;
    let controllers: Vec<&Value> = refs.iter().filter(|r| r["controller"] == true).collect();
    ensure!(
        controllers.len() == 1,
        "{what}: one controller reference: {refs:?}"
    );
    let r = controllers[0];
    ensure!(
        r["kind"] == "MqttProxy"
            && r["apiVersion"] == "mqttproxy.io/v1alpha1"
            && r["name"] == name
            && r["uid"] == uid,
        "{what} is owned by MqttProxy {name} ({uid}): {r}"
    );
    let labels = &object["metadata"]["labels"];
    ensure!(
        labels["app.kubernetes.io/name"].is_string()
            && labels["app.kubernetes.io/instance"] == name
            && labels["app.kubernetes.io/managed-by"].is_string(),
        "{what} carries the app.kubernetes.io labels: {labels}"
    );
    Ok(())
}

/// Writes the status the deployment controller and kubelets would once every replica is
/// up (there are none here): `replicas`, `readyReplicas`, … = `spec.replicas`.
pub async fn stand_in_for_deployment_controller(k: &Kubectl, ns: &str, name: &str) -> Result<()> {
    let deployment = k
        .wait_for("deployment", name, ns, WAIT, |d| d.cloned())
        .await?;
    let replicas = deployment["spec"]["replicas"].as_i64().unwrap_or(1);
    let status = json!({
        "observedGeneration": deployment["metadata"]["generation"],
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
        "conditions": [{
            "type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
            "message": "set by the test standing in for the deployment controller"
        }]
    });
    k.patch_status("deployment", name, ns, &status).await
}

/// A broker's password as the proxy will use it.
pub fn broker_password(b: &BrokerConfig) -> Option<&str> {
    b.password.as_ref().map(|p| p.expose())
}

/// The ids of a broker set, sorted.
pub fn broker_ids(brokers: &[BrokerConfig]) -> Vec<&str> {
    let mut ids: Vec<&str> = brokers.iter().map(|b| b.id.as_str()).collect();
    ids.sort_unstable();
    ids
}
