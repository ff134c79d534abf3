//! The test Kubernetes API server itself (`mqtt_proxy_tests::k8s`), proven on the API
//! features the operator and the chart rely on, before the end-to-end tests lean on it: a
//! CRD with a schema and a status subresource, schema rejection, server-side apply, status
//! patches, watches, RBAC, Pods standing in for the kubelet, and server-side dry runs; and
//! the kubelet-style Secret volume driving the real proxy binary, without any of it.
//!
//! Outside CI these skip (with a message) when `tests/k8s/apiserver.sh build` has not run.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use mqtt_proxy_tests::k8s::kubectl::condition;
use mqtt_proxy_tests::k8s::kubelet::SecretData;
use mqtt_proxy_tests::k8s::proxy_loop::{drive_proxy, locked_broker, ROTATED_PASSWORD};
use mqtt_proxy_tests::k8s::TestApiServer;
use mqtt_proxy_tests::{wait_until, Mosquitto};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.mqttproxy.io
spec:
  group: smoke.mqttproxy.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wdg]}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
              colour: {type: string}
          status:
            type: object
            properties:
              observedGeneration: {type: integer}
              conditions:
                type: array
                items:
                  type: object
                  x-kubernetes-preserve-unknown-fields: true
"#;

fn widget(size: i64, colour: &str) -> String {
    format!(
        "apiVersion: smoke.mqttproxy.io/v1alpha1\nkind: Widget\nmetadata:\n  name: w1\n  \
         namespace: smoke\nspec:\n  size: {size}\n  colour: {colour}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_server_side_apply_status_and_watch() -> Result<()> {
    let Some(api) = TestApiServer::start().await? else {
        return Ok(());
    };
    let k = api.kubectl();
    k.create_namespace("smoke").await?;
    k.apply(CRD).await?;
    k.wait_condition(
        "crd",
        "widgets.smoke.mqttproxy.io",
        "default",
        ("Established", "True"),
        WAIT,
    )
    .await?;

    // The schema is enforced.
    let rejected = k.apply(&widget(0, "red")).await;
    let message = format!("{:#}", rejected.err().context("size 0 must be rejected")?);
    ensure!(
        message.contains("spec.size"),
        "rejection names the field: {message}"
    );

    // Server-side apply creates, then updates, with a generation bump.
    k.apply(&widget(1, "red")).await?;
    k.apply(&widget(2, "red")).await?;
    // kubectl hides managedFields unless asked.
    let out = k
        .run(
            &[
                "get",
                "wdg",
                "w1",
                "-n",
                "smoke",
                "-o",
                "json",
                "--show-managed-fields",
            ],
            None,
        )
        .await?;
    let w: serde_json::Value = serde_json::from_str(&out)?;
    ensure!(
        w["spec"]["size"] == 2 && w["metadata"]["generation"] == 2,
        "{w}"
    );
    let managers: Vec<&str> = w["metadata"]["managedFields"]
        .as_array()
        .context("managedFields")?
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    ensure!(
        managers == ["mqtt-proxy-tests"],
        "one field manager: {managers:?}"
    );

    // A watch sees the next change.
    let (events, _watch) = watch(&api, "wdg", "smoke")?;
    let listed = watch_saw(&events, 0, |o| {
        o.contains("\"ADDED\"") && o.contains("\"w1\"")
    })
    .await;
    ensure!(listed, "the watch lists w1 first: {}", lock(&events));
    let from = lock(&events).len();
    k.apply(&widget(3, "blue")).await?;
    let modified = watch_saw(&events, from, |o| {
        o.contains("\"MODIFIED\"") && o.contains("\"blue\"")
    })
    .await;
    ensure!(
        modified,
        "the watch reports the change to blue: {}",
        lock(&events)
    );

    // Status goes through its own subresource and leaves the spec and generation alone.
    let status = json!({
        "observedGeneration": 3,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Smoke", "message": "ok"}]
    });
    k.patch_status("wdg", "w1", "smoke", &status).await?;
    let w = k
        .wait_condition("wdg", "w1", "smoke", ("Ready", "True"), WAIT)
        .await?;
    ensure!(w["reason"] == "Smoke", "{w}");
    let w = k
        .get_json("wdg", "w1", "smoke")
        .await?
        .context("w1 exists")?;
    ensure!(
        w["metadata"]["generation"] == 3 && w["spec"]["colour"] == "blue",
        "status patch left the spec alone: {w}"
    );
    // A status in a spec apply is ignored on a resource with a status subresource.
    k.apply(&format!(
        "{}status:\n  observedGeneration: 99\n",
        widget(3, "blue")
    ))
    .await?;
    let w = k.get_json("wdg", "w1", "smoke").await?.context("w1")?;
    ensure!(w["status"]["observedGeneration"] == 3, "{w}");
    ensure!(condition(&w, "Ready").is_some(), "{w}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_rbac_and_server_side_dry_run() -> Result<()> {
    let Some(api) = TestApiServer::start().await? else {
        return Ok(());
    };
    let k = api.kubectl();
    k.create_namespace("smoke").await?;

    // A Pod is admitted (the namespace has its default ServiceAccount) and the test can
    // play kubelet by writing its status.
    k.create_pod("smoke", "p1", &[("app", "smoke")]).await?;
    let status = json!({
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}]
    });
    k.patch_status("pod", "p1", "smoke", &status).await?;
    k.wait_condition("pod", "p1", "smoke", ("Ready", "True"), WAIT)
        .await?;

    // RBAC is on: an unknown user may do nothing, the admin may do everything.
    ensure!(
        !k.can_i("nobody", "list", "secrets", "smoke").await?,
        "an unknown user must not list secrets"
    );
    // A ServiceAccount gets exactly what a Role grants it (as a chart's RBAC would).
    k.apply(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: op, namespace: smoke}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\n\
         metadata: {name: read-pods, namespace: smoke}\n\
         rules: [{apiGroups: [\"\"], resources: [pods], verbs: [get, list, watch]}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
         metadata: {name: op-reads-pods, namespace: smoke}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: read-pods}\n\
         subjects: [{kind: ServiceAccount, name: op, namespace: smoke}]\n",
    )
    .await?;
    let sa = "system:serviceaccount:smoke:op";
    ensure!(
        k.can_i(sa, "list", "pods", "smoke").await?,
        "the Role grants list pods"
    );
    ensure!(
        !k.can_i(sa, "delete", "pods", "smoke").await?,
        "but not delete"
    );
    ensure!(
        !k.can_i(sa, "list", "pods", "default").await?,
        "nor in another namespace"
    );

    // A server-side dry run validates without storing.
    let service = |protocol: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: dry\n  namespace: smoke\nspec:\n  \
             selector: {{app: smoke}}\n  ports:\n  - name: mqtt\n    port: 1883\n{protocol}"
        )
    };
    k.dry_run_server(&service("    protocol: TCP\n")).await?;
    ensure!(
        k.get_json("service", "dry", "smoke").await?.is_none(),
        "a dry run stores nothing"
    );
    // The 1.20 trap the operator and chart must avoid: a list-map key left out.
    let missing = k.dry_run_server(&service("")).await;
    let message = format!(
        "{:#}",
        missing
            .err()
            .context("a port without protocol is refused")?
    );
    ensure!(message.contains("protocol"), "{message}");
    let invalid = k
        .dry_run_server("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: bad\n  namespace: smoke\nspec: {}\n")
        .await;
    ensure!(invalid.is_err(), "an invalid Deployment fails the dry run");
    Ok(())
}

/// The kubelet and proxy stand-ins on their own, with no API server and no operator: a
/// hand-written broker file in a kubelet-style volume drives the real proxy binary through
/// a password rotation. When the operator loop fails, this says whether the harness does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_style_secret_dir_drives_the_real_proxy_binary() -> Result<()> {
    let (open, locked) = tokio::try_join!(Mosquitto::start(), locked_broker("pw-1"))?;
    let data = |pw: &str| -> SecretData {
        let yaml = format!("brokers:\n- id: open\n  address: 127.0.0.1\n  port: {}\n- id: locked\n  address: 127.0.0.1\n  port: {}\n  username: gateway\n  password: {pw}\n", open.port(), locked.port());
        [("brokers.yaml".to_owned(), yaml.into_bytes())]
            .into_iter()
            .collect()
    };
    drive_proxy(&open, &locked, &data("pw-1"), async || {
        Ok(data(ROTATED_PASSWORD))
    })
    .await
}

/// `kubectl get <resource> --watch --output-watch-events -o json` in the background; its
/// output accumulates in the returned buffer. The process dies with the guard.
fn watch(
    api: &TestApiServer,
    resource: &str,
    ns: &str,
) -> Result<(Arc<Mutex<String>>, ChildGuard)> {
    let mut child = Command::new(api.kubectl().bin())
        .arg(format!("--kubeconfig={}", api.kubeconfig().display()))
        .args([
            "get",
            resource,
            "-n",
            ns,
            "--watch",
            "--output-watch-events",
            "-o",
            "json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning kubectl --watch")?;
    let out = Arc::new(Mutex::new(String::new()));
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let out = Arc::clone(&out);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                out.push_str(&line);
                out.push('\n');
            }
        });
    }
    Ok((out, ChildGuard(child)))
}

/// Waits until the watch output (from byte `from` on) satisfies `check`.
async fn watch_saw(out: &Mutex<String>, from: usize, check: impl Fn(&str) -> bool) -> bool {
    wait_until(WAIT, || {
        let out = out.lock().unwrap_or_else(|e| e.into_inner());
        out.get(from..).is_some_and(&check)
    })
    .await
}

/// Kills and reaps a background process when dropped.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lock(out: &Mutex<String>) -> String {
    out.lock().unwrap_or_else(|e| e.into_inner()).clone()
}
