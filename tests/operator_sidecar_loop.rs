//! Sidecar mode through the real proxy: the container the operator's webhook injected
//! into a Pod (admitted by a real kube-apiserver) is run as the kubelet would run it —
//! the real `mqtt-proxy` with that container's args and env, its Secret mount materialised
//! like a kubelet volume — and the "app" reaches it on localhost: a device publishes to
//! `127.0.0.1:<mqtt port>` and a real mosquitto receives. A second MqttBroker re-renders
//! the Secret and reaches the running sidecar by hot reload, with no new pod.
//!
//! Outside CI this skips (with a message) when `tests/k8s/apiserver.sh build` has not run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use mqtt_proxy_tests::k8s::kubelet::{secret_data, SecretDir};
use mqtt_proxy_tests::k8s::operator::{apply_crds, rendered_brokers, rendered_data, WAIT};
use mqtt_proxy_tests::k8s::sidecar::{
    create_pod_retrying, expected_list, find_sidecar, run_container, start_operator,
    webhook_config_yaml, WEBHOOK_CONFIG,
};
use mqtt_proxy_tests::k8s::TestApiServer;
use mqtt_proxy_tests::{free_port, Mosquitto, Publisher, Subscriber};

const NS: &str = "apps";

fn broker_yaml(name: &str, port: u16) -> String {
    format!(
        "apiVersion: mqttproxy.io/v1alpha1\nkind: MqttBroker\nmetadata: {{name: {name}, \
         namespace: {NS}, labels: {{fleet: line}}}}\nspec: {{address: 127.0.0.1, port: {port}}}\n"
    )
}

/// Free ports for the device listener and HTTP: the injected env carries them.
fn proxy_yaml(mqtt: u16, web: u16) -> String {
    format!(
        "apiVersion: mqttproxy.io/v1alpha1\nkind: MqttProxy\nmetadata: {{name: telemetry, \
         namespace: {NS}}}\nspec: {{mode: Sidecar, allowAnonymous: true, brokerSelector: \
         {{matchLabels: {{fleet: line}}}}, mqtt: {{port: {mqtt}}}, web: {{port: {web}}}}}\n"
    )
}

/// Publishes `topic` every 200 ms until every subscriber got it.
async fn probe(device: &Publisher, topic: &str, subs: &[&Subscriber]) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    let got = |s: &&Subscriber| s.received().iter().any(|m| m.topic == topic);
    while !subs.iter().all(got) {
        ensure!(
            Instant::now() < deadline,
            "{topic} did not reach every broker within {WAIT:?}"
        );
        device.publish(topic, "probe", 1, false).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_sidecar_serves_the_app_on_localhost_and_hot_reloads() -> Result<()> {
    let Some(api) = TestApiServer::start().await? else {
        return Ok(());
    };
    let (a, b) = tokio::try_join!(Mosquitto::start(), Mosquitto::start())?;
    let k = api.kubectl();
    apply_crds(&api).await?;
    k.create_namespace(NS).await?;
    let port = free_port();
    let op = start_operator(&api, port, &["--namespace", NS]).await?;
    k.apply(&webhook_config_yaml(port)).await?;
    k.apply(&broker_yaml("a", a.port())).await?;
    k.apply(&proxy_yaml(free_port(), free_port())).await?;
    rendered_brokers(k, NS, "telemetry-brokers", |b| b.len() == 1).await?;
    k.wait_for(
        "mutatingwebhookconfiguration",
        WEBHOOK_CONFIG,
        "default",
        WAIT,
        |c| {
            c?["webhooks"][0]["clientConfig"]["caBundle"]
                .as_str()
                .map(|_| ())
        },
    )
    .await
    .with_context(|| op.process.log_tail())?;
    create_pod_retrying(k, NS, "app", &[("mqttproxy.io/inject", "telemetry")]).await?;
    let pod = k.get_json("pod", "app", NS).await?.context("pod app")?;
    let list = expected_list(k).await?;
    let container = find_sidecar(&pod, list)
        .with_context(|| format!("not injected: {pod}"))?
        .clone();

    // The kubelet's part: the Secret volume, the emptyDir, the secretKeyRef env.
    let volumes = tempfile::tempdir()?;
    let (secret_dir, data_dir) = (volumes.path().join("brokers"), volumes.path().join("data"));
    std::fs::create_dir_all(&secret_dir)?;
    std::fs::create_dir_all(&data_dir)?;
    let mut volume = SecretDir::create(
        &secret_dir,
        &rendered_data(k, NS, "telemetry-brokers").await?,
    )?;
    let admin = k
        .get_json("secret", "telemetry-admin", NS)
        .await?
        .context("admin Secret")?;
    let token = String::from_utf8(secret_data(&admin)?.remove("token").context("token")?)?;
    let mounts = BTreeMap::from([
        ("/etc/mqtt-proxy", volume.path()),
        ("/data", data_dir.as_path()),
    ]);
    let secret_env = BTreeMap::from([("MQTT_PROXY_ADMIN_TOKEN", token)]);
    let sidecar = run_container(&pod, &container, &mounts, &secret_env).await?;

    // The app: a device on localhost, forwarded to broker a.
    let sub_a = Subscriber::connect(a.port(), "line/#", 1).await?;
    let sub_b = Subscriber::connect(b.port(), "line/#", 1).await?;
    let device = Publisher::connect(sidecar.mqtt_port).await?;
    probe(&device, "line/one", &[&sub_a])
        .await
        .with_context(|| sidecar.process.log_tail())?;

    // A second broker: re-rendered Secret, swapped into the volume, picked up live.
    k.apply(&broker_yaml("b", b.port())).await?;
    rendered_brokers(k, NS, "telemetry-brokers", |b| b.len() == 2).await?;
    volume.update(&rendered_data(k, NS, "telemetry-brokers").await?)?;
    probe(&device, "line/two", &[&sub_a, &sub_b])
        .await
        .with_context(|| sidecar.process.log_tail())?;
    ensure!(
        !sub_b.received().iter().any(|m| m.topic == "line/one"),
        "b only gets what was published after it joined"
    );
    Ok(())
}
