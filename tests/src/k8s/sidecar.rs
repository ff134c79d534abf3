//! Sidecar mode's test rig: the operator with its webhook on a loopback port and a
//! MutatingWebhookConfiguration dialling it by URL, pods created through it, and a kubelet
//! stand-in for one injected container: the real `mqtt-proxy` binary started
//! exactly as the container the webhook put into an admitted Pod describes it — its
//! `args` and `env`, `secretKeyRef` env resolved from Secrets and `fieldRef` env from the
//! Pod, every `volumeMount` mapped
//! to a local directory — so the test runs what the webhook injected, not a copy of it.
//!
//! One liberty, for the loopback-only rule of these tests: an address on all interfaces
//! (`0.0.0.0:<port>`, the HTTP listener the kubelet probes) binds `127.0.0.1:<port>`; a
//! pod's network namespace is private, this machine's is not.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::bins::workspace_binary;
use super::kubectl::Kubectl;
use super::operator::{operator, Operator};
use super::process::Process;
use super::TestApiServer;

/// Bound of the start-up wait; generous for a loaded 2-core box.
const WAIT: Duration = Duration::from_secs(60);

/// Name of the MutatingWebhookConfiguration the tests create and the operator patches.
pub const WEBHOOK_CONFIG: &str = "mqtt-proxy-operator-webhook";
/// The operator's `--proxy-image` in these tests (nothing pulls it).
pub const PROXY_IMAGE: &str = "registry.invalid/mqtt-proxy:e2e";

/// The chart's webhook, but dialled by URL (no Service, nothing runs in a cluster here)
/// and `failurePolicy: Fail`, so a pod the webhook did not see fails to create instead of
/// silently starting without its proxy: the test then retries rather than misreads.
pub fn webhook_config_yaml(port: u16) -> String {
    format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: {WEBHOOK_CONFIG}
webhooks:
  - name: inject.mqttproxy.io
    admissionReviewVersions: ["v1"]
    sideEffects: None
    failurePolicy: Fail
    timeoutSeconds: 10
    reinvocationPolicy: Never
    clientConfig:
      url: https://127.0.0.1:{port}/mutate-pod
    rules:
      - apiGroups: [""]
        apiVersions: ["v1"]
        operations: ["CREATE"]
        resources: ["pods"]
        scope: Namespaced
    objectSelector:
      matchExpressions:
        - key: mqttproxy.io/inject
          operator: Exists
"#
    )
}

/// Creates the pod, retrying while the API server cannot reach the webhook yet (its
/// caBundle informer lags the patch by a moment).
pub async fn create_pod_retrying(
    k: &Kubectl,
    ns: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        match k.create_pod(ns, name, labels).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                eprintln!("pod {name} not admitted yet: {e:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The containers of `list` (`containers` or `initContainers`) of a Pod.
pub fn containers<'a>(pod: &'a Value, list: &str) -> Vec<&'a Value> {
    pod["spec"][list]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// The injected container in `list`, if any.
pub fn find_sidecar<'a>(pod: &'a Value, list: &str) -> Option<&'a Value> {
    containers(pod, list)
        .into_iter()
        .find(|c| c["name"] == "mqtt-proxy")
}

/// Where the operator must put the proxy on this server: `initContainers` (native sidecar)
/// from 1.28 on, `containers` before.
pub async fn expected_list(k: &Kubectl) -> Result<&'static str> {
    let v: Value = serde_json::from_str(&k.run(&["get", "--raw", "/version"], None).await?)?;
    let num = |f: &str| {
        v[f].as_str()
            .unwrap_or("0")
            .trim_end_matches('+')
            .parse::<u32>()
            .unwrap_or(0)
    };
    println!("API server {}", v["gitVersion"]);
    Ok(if (num("major"), num("minor")) >= (1, 28) {
        "initContainers"
    } else {
        "containers"
    })
}

/// The real operator with its webhook on `port` (127.0.0.1), patching [`WEBHOOK_CONFIG`],
/// its CA Secret in `default`; `extra` appended to its arguments.
pub async fn start_operator(api: &TestApiServer, port: u16, extra: &[&str]) -> Result<Operator> {
    let listen = format!("127.0.0.1:{port}");
    let mut op = operator(
        api,
        &[
            "--proxy-image",
            PROXY_IMAGE,
            "--webhook-listen",
            &listen,
            "--webhook-config",
            WEBHOOK_CONFIG,
            "--webhook-host",
            "127.0.0.1",
            "--webhook-namespace",
            "default",
        ]
        .iter()
        .chain(extra)
        .copied()
        .collect::<Vec<_>>(),
    )?;
    op.wait_ok("/readyz").await?;
    Ok(op)
}

/// SIGTERM, wait for the exit, start again on the same webhook port.
pub async fn restart(
    mut op: Operator,
    api: &TestApiServer,
    port: u16,
    extra: &[&str],
) -> Result<Operator> {
    op.process.signal("TERM")?;
    let status = op.process.wait_exit(WAIT).await?;
    ensure!(
        status.success(),
        "clean exit: {status}\n{}",
        op.process.log_tail()
    );
    start_operator(api, port, extra).await
}

/// The injected proxy, running.
#[derive(Debug)]
pub struct RunningSidecar {
    pub process: Process,
    /// From its `MQTT_PROXY_MQTT_LISTEN` (which must be on 127.0.0.1: the app's localhost).
    pub mqtt_port: u16,
}

/// Starts `container` (JSON of an injected container of `pod`) with `mounts` (mountPath →
/// local directory, one per `volumeMount`) and `secret_env` (env name → value for each
/// `valueFrom.secretKeyRef`); `valueFrom.fieldRef` env comes from `pod` (downward API).
/// Waits until its MQTT listener accepts connections.
pub async fn run_container(
    pod: &Value,
    container: &Value,
    mounts: &BTreeMap<&str, &Path>,
    secret_env: &BTreeMap<&str, String>,
) -> Result<RunningSidecar> {
    let local = |s: &str| -> String {
        for (mount, dir) in mounts {
            if let Some(rest) = s.strip_prefix(mount) {
                return format!("{}{rest}", dir.display());
            }
        }
        s.to_string()
    };
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let path = m["mountPath"].as_str().context("mountPath")?;
        ensure!(
            mounts.contains_key(path),
            "no local directory for mount {path}"
        );
    }
    let bin = workspace_binary("mqtt-proxy", "mqtt-proxy")?;
    let mut cmd = std::process::Command::new(bin);
    cmd.env_clear();
    for a in container["args"].as_array().into_iter().flatten() {
        cmd.arg(local(a.as_str().context("arg is a string")?));
    }
    let mut mqtt_port = None;
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().context("env name")?;
        let value = match (e["value"].as_str(), e.get("valueFrom")) {
            (Some(v), _) => local(v),
            (None, Some(from)) if from.get("secretKeyRef").is_some() => secret_env
                .get(name)
                .with_context(|| format!("no value for secretKeyRef env {name}"))?
                .clone(),
            (None, Some(from)) if from.get("fieldRef").is_some() => {
                let path = from["fieldRef"]["fieldPath"]
                    .as_str()
                    .context("fieldPath")?;
                let field = path
                    .split('.')
                    .try_fold(pod, |v, k| v.get(k))
                    .and_then(Value::as_str)
                    .with_context(|| format!("env {name}: pod has no {path}"))?;
                field.to_string()
            }
            _ => bail!("env {name}: not a value, secretKeyRef or fieldRef: {e}"),
        };
        let value = match value.strip_prefix("0.0.0.0:") {
            Some(port) => format!("127.0.0.1:{port}"),
            None => value,
        };
        if name == "MQTT_PROXY_MQTT_LISTEN" {
            let port = value
                .strip_prefix("127.0.0.1:")
                .with_context(|| format!("the device listener is not on localhost: {value}"))?;
            mqtt_port = Some(port.parse::<u16>()?);
        }
        cmd.env(name, value);
    }
    let mqtt_port = mqtt_port.context("no MQTT_PROXY_MQTT_LISTEN")?;
    let mut process = Process::spawn("sidecar", &mut cmd)?;
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", mqtt_port))
        .await
        .is_err()
    {
        process.ensure_running()?;
        ensure!(
            Instant::now() < deadline,
            "the sidecar did not listen\n{}",
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Whoever answered, it must be ours: a lost port race makes the proxy exit.
    process.ensure_running()?;
    Ok(RunningSidecar { process, mqtt_port })
}
