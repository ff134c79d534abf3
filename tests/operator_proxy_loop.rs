//! The loop through the real proxy, driven by the real operator on a real kube-apiserver:
//! the operator's rendered Secret, materialised the way the kubelet mounts it (timestamped
//! dir, `..data` symlink swap), runs `mqtt-proxy --brokers-file` in front of real mosquitto
//! brokers. A password rotated through the API server (and on the broker) reaches the
//! proxy, which reconnects only that broker; a broker relabelled out of the selector is
//! dropped while the other keeps forwarding.
//!
//! Outside CI this skips (with a message) when `tests/k8s/apiserver.sh build` has not run.

use anyhow::Result;
use mqtt_proxy_tests::k8s::operator::{
    apply_crds, broker_ids as ids, broker_password as password, operator, rendered_brokers,
    rendered_data,
};
use mqtt_proxy_tests::k8s::proxy_loop::{drive_proxy, locked_broker, ROTATED_PASSWORD};
use mqtt_proxy_tests::k8s::TestApiServer;
use mqtt_proxy_tests::Mosquitto;

/// The loop through the real proxy: the operator's rendered Secret, materialised like a
/// kubelet volume, drives `mqtt-proxy --brokers-file`; a password rotated through the API
/// server (and on the broker) reaches the proxy, which reconnects that broker only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_secret_drives_the_real_proxy_through_rotation_and_relabel() -> Result<()> {
    let Some(api) = TestApiServer::start().await? else {
        return Ok(());
    };
    let (open, locked) = tokio::try_join!(Mosquitto::start(), locked_broker("pw-1"))?;
    let k = api.kubectl();
    apply_crds(&api).await?;
    k.create_namespace("loop").await?;
    k.apply(&loop_objects(open.port(), locked.port())).await?;
    let op = operator(&api, &["--namespace", "loop"])?;
    let result = proxy_follows_rotation(&api, &open, &locked).await;
    if result.is_err() {
        eprintln!("{}", op.process.log_tail());
    }
    result
}

async fn proxy_follows_rotation(
    api: &TestApiServer,
    open: &Mosquitto,
    locked: &Mosquitto,
) -> Result<()> {
    let k = api.kubectl();
    rendered_brokers(k, "loop", "loop-brokers", |b| b.len() == 2).await?;
    let initial = rendered_data(k, "loop", "loop-brokers").await?;
    let mut rig = drive_proxy(open, locked, &initial, async || {
        k.run(
            &[
                "patch",
                "secret",
                "locked-creds",
                "-n",
                "loop",
                "--type=merge",
                "-p",
                &format!(r#"{{"stringData":{{"password":"{ROTATED_PASSWORD}"}}}}"#),
            ],
            None,
        )
        .await?;
        rendered_brokers(k, "loop", "loop-brokers", |b| {
            b.iter()
                .any(|b| b.id == "locked" && password(b) == Some("pw-2"))
        })
        .await?;
        rendered_data(k, "loop", "loop-brokers").await
    })
    .await?;

    // Relabel `open` out of the selector: the re-rendered set reaches the proxy, which
    // drops that broker and keeps forwarding to the other.
    k.run(&["label", "mqb", "open", "-n", "loop", "fleet-"], None)
        .await?;
    rendered_brokers(k, "loop", "loop-brokers", |b| ids(b) == ["locked"]).await?;
    let without_open = rendered_data(k, "loop", "loop-brokers").await?;
    rig.remove_open(open, &without_open).await
}

/// A Secret, two MqttBrokers on the test's mosquittos (one with credentials), a proxy.
fn loop_objects(open_port: u16, locked_port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: locked-creds, namespace: loop}}\n\
         stringData: {{username: gateway, password: pw-1}}\n---\n\
         apiVersion: mqttproxy.io/v1alpha1\nkind: MqttBroker\n\
         metadata: {{name: open, namespace: loop, labels: {{fleet: loop}}}}\n\
         spec: {{address: 127.0.0.1, port: {open_port}}}\n---\n\
         apiVersion: mqttproxy.io/v1alpha1\nkind: MqttBroker\n\
         metadata: {{name: locked, namespace: loop, labels: {{fleet: loop}}}}\n\
         spec: {{address: 127.0.0.1, port: {locked_port}, credentialsSecretRef: {{name: locked-creds}}}}\n---\n\
         apiVersion: mqttproxy.io/v1alpha1\nkind: MqttProxy\n\
         metadata: {{name: loop, namespace: loop}}\n\
         spec: {{brokerSelector: {{matchLabels: {{fleet: loop}}}}}}\n"
    )
}
