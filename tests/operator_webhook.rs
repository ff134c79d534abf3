//! Sidecar mode end to end, against a real kube-apiserver (`mqtt_proxy_tests::k8s`): the
//! real operator binary serves its admission webhook on a loopback port, writes its own CA
//! into a Secret and the `caBundle` of a MutatingWebhookConfiguration whose
//! `clientConfig.url` points at it, and the API server then calls it for every labelled Pod
//! created. Then: the Deployment-mode children are pruned on the switch to Sidecar, the CA
//! survives a restart and rotates when expiring (both CAs in the bundle), and with leader
//! election a standby replica answers admission too.
//!
//! The test API server is Kubernetes 1.20: it knows neither `restartPolicy` on init
//! containers nor probes there (native sidecars are 1.28+), and refuses such a pod. The
//! operator reads the server's version and injects a regular container there instead; this
//! test asserts the placement the server's version calls for. The native-sidecar patch,
//! `restartPolicy: Always` included, is covered by the golden tests
//! (`operator/tests/webhook.rs`).
//!
//! Outside CI this skips (with a message) when `tests/k8s/apiserver.sh build` has not run.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use mqtt_proxy_tests::k8s::operator::{apply_crds, WAIT};
use mqtt_proxy_tests::k8s::sidecar::{
    containers, create_pod_retrying, expected_list, find_sidecar, restart, start_operator,
    webhook_config_yaml, PROXY_IMAGE, WEBHOOK_CONFIG,
};
use mqtt_proxy_tests::k8s::{Kubectl, TestApiServer};
use mqtt_proxy_tests::try_free_port;
use serde_json::Value;

const NS: &str = "apps";
const CA_SECRET: &str = "mqtt-proxy-operator-webhook-ca";

fn proxy_yaml(mode: &str) -> String {
    format!(
        "apiVersion: mqttproxy.io/v1alpha1\nkind: MqttProxy\nmetadata:\n  name: telemetry\n  \
         namespace: {NS}\nspec:\n  mode: {mode}\n  brokerSelector: {{}}\n"
    )
}

/// Creates pod `name` (retrying until the webhook admits it) and returns it as stored.
async fn admitted_pod(
    k: &Kubectl,
    name: &str,
    labels: &[(&str, &str)],
    log: impl Fn() -> String,
) -> Result<Value> {
    create_pod_retrying(k, NS, name, labels)
        .await
        .with_context(&log)?;
    k.get_json("pod", name, NS)
        .await?
        .with_context(|| format!("pod {name}"))
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_mode_injects_labelled_pods_through_a_real_api_server() -> Result<()> {
    let Some(api) = TestApiServer::start().await? else {
        return Ok(());
    };
    let k = api.kubectl();
    apply_crds(&api).await?;
    k.create_namespace(NS).await?;
    let port = try_free_port().context("a free port")?;
    // The operator first, the configuration after (Helm may create them in either order):
    // the operator retries the caBundle until the configuration exists.
    let mut op = start_operator(&api, port, &[]).await?;
    k.apply(&webhook_config_yaml(port)).await?;

    // Deployment mode first: the switch to Sidecar must remove what it created.
    k.apply(&proxy_yaml("Deployment")).await?;
    k.wait_for("deployment", "telemetry", NS, WAIT, |d| d.map(|_| ()))
        .await?;
    k.apply(&proxy_yaml("Sidecar")).await?;
    for kind in ["deployment", "service"] {
        k.wait_for(kind, "telemetry", NS, WAIT, |d| d.is_none().then_some(()))
            .await
            .with_context(|| {
                format!("{kind} removed in Sidecar mode\n{}", op.process.log_tail())
            })?;
    }
    for secret in ["telemetry-brokers", "telemetry-admin"] {
        ensure!(
            k.get_json("secret", secret, NS).await?.is_some(),
            "{secret} is still rendered: the sidecars mount it"
        );
    }

    // The operator's PKI: its CA Secret, and the caBundle it patched in.
    let ca = k
        .wait_for("secret", CA_SECRET, "default", WAIT, |s| s.cloned())
        .await?;
    for key in ["ca.crt", "ca.key", "bundle.crt", "not-after"] {
        ensure!(ca["data"][key].is_string(), "CA Secret lacks {key}");
    }
    let bundle = ca["data"]["bundle.crt"].clone();
    k.wait_for(
        "mutatingwebhookconfiguration",
        WEBHOOK_CONFIG,
        "default",
        WAIT,
        |c| (c?["webhooks"][0]["clientConfig"]["caBundle"] == bundle).then_some(()),
    )
    .await
    .with_context(|| op.process.log_tail())?;

    let pod = admitted_pod(
        k,
        "sensor",
        &[("app", "sensor"), ("mqttproxy.io/inject", "telemetry")],
        || op.process.log_tail(),
    )
    .await?;
    let list = expected_list(k).await?;
    let Some(sidecar) = find_sidecar(&pod, list) else {
        bail!("not injected into {list}: {pod}\n{}", op.process.log_tail());
    };
    if list == "initContainers" {
        ensure!(containers(&pod, list)[0] == sidecar, "first: {pod}");
        ensure!(sidecar["restartPolicy"] == "Always", "{sidecar}");
    }
    ensure!(
        sidecar["image"] == PROXY_IMAGE,
        "the operator's --proxy-image: {sidecar}"
    );
    ensure!(
        env(sidecar, "MQTT_PROXY_MQTT_LISTEN").map(|e| &e["value"])
            == Some(&"127.0.0.1:1883".into()),
        "the app reaches it on localhost only: {sidecar}"
    );
    ensure!(
        env(sidecar, "MQTT_PROXY_ADMIN_TOKEN").map(|e| &e["valueFrom"]["secretKeyRef"]["name"])
            == Some(&"telemetry-admin".into()),
        "{sidecar}"
    );
    let volumes = pod["spec"]["volumes"].as_array().context("volumes")?;
    ensure!(
        volumes.iter().any(|v| v["name"] == "mqtt-proxy-brokers"
            && v["secret"]["secretName"] == "telemetry-brokers"),
        "mounts the rendered Secret (hot reload through the kubelet's directory swap): {volumes:?}"
    );
    ensure!(pod["metadata"]["annotations"]["mqttproxy.io/injected"] == "telemetry");
    ensure!(
        pod["spec"]["containers"][0]["name"] == "main",
        "the app is untouched"
    );

    // A pod without the label never reaches the webhook (objectSelector); one naming a
    // proxy that does not exist is admitted unchanged.
    k.create_pod(NS, "web", &[("app", "web")]).await?;
    create_pod_retrying(k, NS, "stray", &[("mqttproxy.io/inject", "nope")]).await?;
    for name in ["web", "stray"] {
        let pod = k.get_json("pod", name, NS).await?.context("pod")?;
        ensure!(
            find_sidecar(&pod, "containers").is_none()
                && find_sidecar(&pod, "initContainers").is_none(),
            "{name} was not to be injected: {pod}"
        );
    }

    let metrics = op.wait_ok("/metrics").await?;
    for line in [
        r#"mqtt_proxy_operator_webhook_admissions_total{result="injected"} 1"#,
        r#"mqtt_proxy_operator_webhook_admissions_total{result="refused"} 1"#,
    ] {
        ensure!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    // Measured, not asserted: the webhook's own time per review (a loaded box).
    let series = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
    };
    if let (Some(sum), Some(count)) = (
        series("mqtt_proxy_operator_webhook_admission_duration_seconds_sum"),
        series("mqtt_proxy_operator_webhook_admission_duration_seconds_count"),
    ) {
        println!(
            "webhook: {count} reviews, mean {:.2} ms each",
            sum / count.max(1.0) * 1e3
        );
    }

    // A restarted operator reuses the CA it finds.
    op = restart(op, &api, port, &[]).await?;
    let again = k
        .get_json("secret", CA_SECRET, "default")
        .await?
        .context("CA")?;
    ensure!(
        again["data"]["ca.crt"] == ca["data"]["ca.crt"],
        "CA kept across restarts"
    );

    // One whose CA is about to expire rotates it: the new CA first in the bundle, the old
    // one still trusted, the caBundle patched, and admission works with the new chain.
    let soon = (std::time::SystemTime::now() + Duration::from_secs(24 * 3600))
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let patch = serde_json::json!({ "data": { "not-after": b64(soon.to_string().as_bytes()) } });
    k.run(
        &[
            "patch",
            "secret",
            CA_SECRET,
            "-n",
            "default",
            "--type=merge",
            "-p",
            &patch.to_string(),
        ],
        None,
    )
    .await?;
    op = restart(op, &api, port, &[]).await?;
    let rotated = k
        .wait_for("secret", CA_SECRET, "default", WAIT, |s| {
            let s = s?;
            (s["data"]["ca.crt"] != ca["data"]["ca.crt"]).then(|| s.clone())
        })
        .await
        .with_context(|| op.process.log_tail())?;
    let text = |v: &Value| -> Result<String> {
        let b = base64::engine::general_purpose::STANDARD.decode(v.as_str().context("base64")?)?;
        Ok(String::from_utf8(b)?)
    };
    let (new_ca, old_ca) = (
        text(&rotated["data"]["ca.crt"])?,
        text(&ca["data"]["ca.crt"])?,
    );
    ensure!(
        text(&rotated["data"]["bundle.crt"])? == format!("{new_ca}{old_ca}"),
        "the bundle is the new CA, then the old one"
    );
    let bundle = rotated["data"]["bundle.crt"].clone();
    k.wait_for(
        "mutatingwebhookconfiguration",
        WEBHOOK_CONFIG,
        "default",
        WAIT,
        |c| (c?["webhooks"][0]["clientConfig"]["caBundle"] == bundle).then_some(()),
    )
    .await
    .with_context(|| op.process.log_tail())?;
    let pod = admitted_pod(
        k,
        "sensor-2",
        &[("mqttproxy.io/inject", "telemetry")],
        || op.process.log_tail(),
    )
    .await?;
    ensure!(
        find_sidecar(&pod, list).is_some(),
        "injected with the rotated certificate: {pod}"
    );

    // Leader election: a standby replica (no Lease, no reconciling) answers admission too.
    let elect = ["--leader-elect", "--leader-election-namespace", "default"];
    op = restart(op, &api, port, &elect).await?;
    let port2 = try_free_port().context("a free port")?;
    let mut standby = start_operator(&api, port2, &elect).await?;
    let ready = standby.wait_ok("/readyz").await?;
    ensure!(
        ready.contains("standby"),
        "second replica is the standby: {ready}"
    );
    let url = format!("https://127.0.0.1:{port2}/mutate-pod");
    let to_standby = serde_json::json!([
        { "op": "replace", "path": "/webhooks/0/clientConfig/url", "value": url }
    ]);
    k.run(
        &[
            "patch",
            "mutatingwebhookconfiguration",
            WEBHOOK_CONFIG,
            "--type=json",
            "-p",
            &to_standby.to_string(),
        ],
        None,
    )
    .await?;
    let pod = admitted_pod(
        k,
        "sensor-3",
        &[("mqttproxy.io/inject", "telemetry")],
        || standby.process.log_tail(),
    )
    .await?;
    ensure!(
        find_sidecar(&pod, list).is_some(),
        "injected by the standby: {pod}"
    );
    let metrics = standby.wait_ok("/metrics").await?;
    let line = r#"mqtt_proxy_operator_webhook_admissions_total{result="injected"} 1"#;
    ensure!(
        metrics.contains(line),
        "the standby answered: {line} missing"
    );
    drop(op);
    Ok(())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
