//! The operator end to end, against a real kube-apiserver (`mqtt_proxy_tests::k8s`): the
//! generated CRDs and the examples as a user applies them, then the real
//! `mqtt-proxy-operator` binary reconciling them into owned children and following
//! password rotations, selector changes and missing Secrets.
//!
//! The test API server has no controller-manager or kubelet: Deployments get no Pods and
//! no status, and nothing is garbage collected. The tests write the Deployment status a
//! controller would, and check owner references instead of garbage collection. The loop
//! through the real proxy binary is `operator_proxy_loop.rs`.
//!
//! Outside CI these skip (with a message) when `tests/k8s/apiserver.sh build` has not run.

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use mqtt_proxy_tests::k8s::kubectl::condition;
use mqtt_proxy_tests::k8s::kubectl::Kubectl;
use mqtt_proxy_tests::k8s::operator::{
    apply_crds, assert_owned_by, broker_ids as ids, broker_password as password, operator,
    rendered_brokers, stand_in_for_deployment_controller, workspace_path, Operator, WAIT,
};
use mqtt_proxy_tests::k8s::TestApiServer;
use mqtt_proxy_tests::wait_until;
use serde_json::Value;

const NS: &str = "e2e";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_crds_and_examples_are_accepted_by_a_real_api_server() -> Result<()> {
    let Some(api) = TestApiServer::start().await? else {
        return Ok(());
    };
    let k = api.kubectl();
    apply_crds(&api).await?;
    k.create_namespace(NS).await?;
    k.apply_path(&workspace_path("examples"), NS).await?;

    let out = k.run(&["get", "mqb,mqp", "-n", NS], None).await?;
    println!("$ kubectl get mqb,mqp\n{out}");
    for name in [
        "mqttbroker.mqttproxy.io/cloud",
        "mqttbroker.mqttproxy.io/edge",
        "mqttproxy.mqttproxy.io/factory",
    ] {
        ensure!(out.contains(name), "{name} missing:\n{out}");
    }
    // Printer columns come from the CRD: the brief names them.
    for column in [
        "ADDRESS",
        "PORT",
        "BIDIRECTIONAL",
        "REPLICAS",
        "BROKERS",
        "AGE",
    ] {
        ensure!(out.contains(column), "column {column} missing:\n{out}");
    }

    // Defaults from the schema are applied by the server, and the schema rejects nonsense.
    let edge = k
        .get_json("mqb", "edge", NS)
        .await?
        .context("edge exists")?;
    // The example leaves `enabled` out; the schema's default fills it in on the server.
    ensure!(edge["spec"]["enabled"] == true, "{edge}");
    let bad = "apiVersion: mqttproxy.io/v1alpha1\nkind: MqttBroker\nmetadata:\n  name: bad\n  \
               namespace: e2e\nspec:\n  address: x\n  port: 70000\n";
    let rejected = k.apply(bad).await;
    let message = format!(
        "{:#}",
        rejected.err().context("port 70000 must be rejected")?
    );
    ensure!(message.contains("spec.port"), "{message}");

    // `kubectl explain` text comes from the Rust doc comments. The server publishes a new
    // CRD's OpenAPI a moment after it is established: retry until then.
    let deadline = std::time::Instant::now() + WAIT;
    let explain = loop {
        match k
            .run(&["explain", "mqttproxy.spec.brokerSelector"], None)
            .await
        {
            Ok(text) => break text,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("kubectl explain not ready yet: {e:#}");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    };
    ensure!(explain.contains("label selector"), "{explain}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_exits_non_zero_with_a_clear_message_without_crds() -> Result<()> {
    let Some(api) = TestApiServer::start().await? else {
        return Ok(());
    };
    let mut op = operator(&api, &[])?;
    let status = op.process.wait_exit(WAIT).await?;
    let op = op.process;
    ensure!(!status.success(), "exit status {status}\n{}", op.log_tail());
    println!("{}", op.log_tail());
    let log = op.log().to_lowercase();
    ensure!(
        log.contains("crd") && log.contains("mqttproxy.io"),
        "the message names the missing CRDs:\n{}",
        op.log_tail()
    );
    Ok(())
}

/// The examples reconciled by the real operator, then a password rotation, a broker
/// relabelled out of and back into the selector, and a deleted and recreated Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_reconciles_examples_and_follows_changes() -> Result<()> {
    let Some(api) = TestApiServer::start().await? else {
        return Ok(());
    };
    let k = api.kubectl();
    apply_crds(&api).await?;
    k.create_namespace(NS).await?;
    k.apply_path(&workspace_path("examples"), NS).await?;
    let mut op = operator(&api, &[])?;
    let result = reconcile_examples(&api, &mut op).await;
    if result.is_err() {
        eprintln!("{}", op.process.log_tail());
    }
    result
}

async fn reconcile_examples(api: &TestApiServer, op: &mut Operator) -> Result<()> {
    let k = api.kubectl();
    let proxy = k
        .get_json("mqp", "factory", NS)
        .await?
        .context("factory exists")?;
    let uid = proxy["metadata"]["uid"].as_str().context("uid")?.to_owned();

    // Children: the rendered broker Secret, the Deployment, the Service, the admin token.
    let brokers = rendered_brokers(k, NS, "factory-brokers", |b| b.len() == 2).await?;
    let cloud = brokers.iter().find(|b| b.id == "cloud").context("cloud")?;
    ensure!(
        cloud.address == "mqtt.example.com" && cloud.port == 1883,
        "{cloud:?}"
    );
    ensure!(
        cloud.username.as_deref() == Some("device-gateway"),
        "{cloud:?}"
    );
    ensure!(
        password(cloud) == Some("change-me"),
        "cloud's password is rendered"
    );
    let edge = brokers.iter().find(|b| b.id == "edge").context("edge")?;
    ensure!(
        edge.bidirectional && password(edge) == Some("change-me-too"),
        "{edge:?}"
    );

    let secret = k
        .get_json("secret", "factory-brokers", NS)
        .await?
        .context("rendered")?;
    assert_owned_by(&secret, "factory", &uid)?;
    let deployment = k
        .wait_for("deployment", "factory", NS, WAIT, |d| d.cloned())
        .await?;
    assert_owned_by(&deployment, "factory", &uid)?;
    ensure!(
        deployment["spec"]["replicas"] == 2,
        "replicas from the spec"
    );
    check_pod_template(&deployment["spec"]["template"])?;
    let service = k
        .wait_for("service", "factory", NS, WAIT, |s| s.cloned())
        .await?;
    assert_owned_by(&service, "factory", &uid)?;
    let ports = service["spec"]["ports"].as_array().context("ports")?;
    let numbers: BTreeSet<i64> = ports.iter().filter_map(|p| p["port"].as_i64()).collect();
    ensure!(
        numbers == [1883, 3000].into(),
        "MQTT and HTTP ports: {service}"
    );
    ensure!(
        ports
            .iter()
            .all(|p| p["protocol"] == "TCP" && p["name"].is_string()),
        "every port named, protocol set: {service}"
    );
    let admin = k
        .wait_for("secret", "factory-admin", NS, WAIT, |s| s.cloned())
        .await?;
    assert_owned_by(&admin, "factory", &uid)?;
    ensure!(
        admin["data"]["token"]
            .as_str()
            .is_some_and(|t| t.len() >= 16),
        "a token"
    );

    // Stand in for the deployment controller; then the proxy is Ready, with 2 brokers.
    stand_in_for_deployment_controller(k, NS, "factory").await?;
    let ready = k
        .wait_condition("mqp", "factory", NS, ("Ready", "True"), WAIT)
        .await?;
    let proxy = k.get_json("mqp", "factory", NS).await?.context("factory")?;
    // `connected/selected`; no pod runs here, so none is connected.
    let brokers = proxy["status"]["brokers"].as_str().unwrap_or_default();
    ensure!(brokers.ends_with("/2"), "{proxy}");
    ensure!(
        proxy["status"]["observedGeneration"] == proxy["metadata"]["generation"],
        "{proxy}"
    );
    // No ServiceMonitor CRD here: the status says it was skipped, and why.
    let skipped = proxy["status"]["conditions"]
        .as_array()
        .context("conditions")?
        .iter()
        .any(|c| {
            c["message"]
                .as_str()
                .is_some_and(|m| m.contains("ServiceMonitor"))
        });
    ensure!(
        skipped,
        "a condition says the ServiceMonitor was skipped: {proxy}"
    );
    println!("Ready: {ready}");
    let out = k.run(&["get", "mqb,mqp", "-n", NS], None).await?;
    println!("$ kubectl get mqb,mqp\n{out}");
    op.wait_ok("/readyz").await?;
    op.wait_ok("/healthz").await?;

    // 0. A reconcile with nothing to change writes nothing. Touching a referenced Secret
    // maps to a reconcile of factory; the metrics say when it has finished.
    let children = child_versions(k).await?;
    let finished = op.reconciles_finished("mqttproxy")?;
    k.run(
        &[
            "annotate",
            "secret",
            "mqtt-credentials",
            "-n",
            NS,
            "e2e/poke=1",
        ],
        None,
    )
    .await?;
    let reconciled = wait_until(WAIT, || {
        op.reconciles_finished("mqttproxy")
            .is_ok_and(|n| n > finished)
    })
    .await;
    ensure!(
        reconciled,
        "touching a referenced Secret reconciles its proxy"
    );
    ensure!(
        child_versions(k).await? == children,
        "a no-op reconcile rewrote a child (resourceVersions changed)"
    );

    // 1. Rotate a password: only the rendered Secret changes.
    let before = k
        .get_json("deployment", "factory", NS)
        .await?
        .context("deployment")?;
    k.run(
        &[
            "patch",
            "secret",
            "mqtt-credentials",
            "-n",
            NS,
            "--type=merge",
            "-p",
            r#"{"stringData":{"cloud-password":"rotated-1"}}"#,
        ],
        None,
    )
    .await?;
    rendered_brokers(k, NS, "factory-brokers", |b| {
        b.iter()
            .any(|b| b.id == "cloud" && password(b) == Some("rotated-1"))
    })
    .await
    .context("the rotated password is rendered")?;

    // 2. Relabel edge out of the selector and back in; the rendered set follows. Each
    // step's reconcile finishing also proves the previous one did (they are serialized
    // per object), so the Deployment can be compared with what it was before the rotation.
    k.run(
        &["label", "mqb", "edge", "-n", NS, "mqttproxy.io/fleet-"],
        None,
    )
    .await?;
    rendered_brokers(k, NS, "factory-brokers", |b| ids(b) == ["cloud"]).await?;
    k.wait_for("mqp", "factory", NS, WAIT, |p| {
        let brokers = p?["status"]["brokers"].as_str()?;
        brokers.ends_with("/1").then_some(())
    })
    .await?;
    unchanged_pod_template(api, &before)
        .await
        .context("after the rotation")?;
    k.run(
        &[
            "label",
            "mqb",
            "edge",
            "-n",
            NS,
            "mqttproxy.io/fleet=factory",
        ],
        None,
    )
    .await?;
    rendered_brokers(k, NS, "factory-brokers", |b| ids(b) == ["cloud", "edge"]).await?;
    op.process.ensure_running()?;

    // 3. Delete the referenced Secret: Ready=False naming it; the last good config stays.
    k.run(&["delete", "secret", "mqtt-credentials", "-n", NS], None)
        .await?;
    let not_ready = k
        .wait_condition("mqp", "factory", NS, ("Ready", "False"), WAIT)
        .await?;
    let message = not_ready["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains("mqtt-credentials"),
        "names the Secret: {not_ready}"
    );
    let kept = rendered_brokers(k, NS, "factory-brokers", |b| b.len() == 2).await?;
    ensure!(
        kept.iter().any(|b| password(b) == Some("rotated-1")),
        "last good config kept"
    );
    unchanged_pod_template(api, &before)
        .await
        .context("after relabelling")?;

    // Recreate it: Ready again.
    k.apply_path(&workspace_path("examples/secret.yaml"), NS)
        .await?;
    k.wait_condition("mqp", "factory", NS, ("Ready", "True"), WAIT)
        .await?;
    let proxy = k.get_json("mqp", "factory", NS).await?.context("factory")?;
    ensure!(condition(&proxy, "Ready").is_some(), "{proxy}");
    unchanged_pod_template(api, &before)
        .await
        .context("after the Secret came back")?;

    // 4. `kubectl scale` goes through the scale subresource to the Deployment's replicas,
    // and scaling is no reason to roll the pods.
    k.run(&["scale", "mqp", "factory", "-n", NS, "--replicas=3"], None)
        .await?;
    let deployment = k
        .wait_for("deployment", "factory", NS, WAIT, |d| {
            d.filter(|d| d["spec"]["replicas"] == 3).cloned()
        })
        .await?;
    ensure!(
        deployment["spec"]["template"] == before["spec"]["template"],
        "scaling changed the pod template"
    );

    // 5. A change that needs new pods (the image) does roll the pod template.
    k.run(
        &[
            "patch",
            "mqp",
            "factory",
            "-n",
            NS,
            "--type=merge",
            "-p",
            r#"{"spec":{"image":"registry.example/mqtt-proxy:e2e"}}"#,
        ],
        None,
    )
    .await?;
    k.wait_for("deployment", "factory", NS, WAIT, |d| {
        (d?["spec"]["template"]["spec"]["containers"][0]["image"]
            == "registry.example/mqtt-proxy:e2e")
            .then_some(())
    })
    .await
    .context("a new image rolls the Deployment")?;

    // 6. SIGTERM: the operator stops cleanly.
    op.process.signal("TERM")?;
    let status = op.process.wait_exit(WAIT).await?;
    ensure!(
        status.success(),
        "SIGTERM exit {status}\n{}",
        op.process.log_tail()
    );

    // 7. A restarted operator finds everything as it should be and writes nothing (the
    // admin token, say, is not regenerated).
    let children = child_versions(k).await?;
    *op = operator(api, &[])?;
    let reconciled = wait_until(WAIT, || {
        op.reconciles_finished("mqttproxy").is_ok_and(|n| n >= 1)
    })
    .await;
    ensure!(reconciled, "the restarted operator reconciles factory");
    ensure!(
        child_versions(k).await? == children,
        "a restarted operator rewrote a child"
    );
    Ok(())
}

/// The resourceVersion of every child of factory and of its status: what changes on any write.
async fn child_versions(k: &Kubectl) -> Result<Vec<(String, Value)>> {
    let mut versions = Vec::new();
    for (kind, name) in [
        ("secret", "factory-brokers"),
        ("secret", "factory-admin"),
        ("deployment", "factory"),
        ("service", "factory"),
        ("mqp", "factory"),
    ] {
        let object = k
            .get_json(kind, name, NS)
            .await?
            .with_context(|| format!("{kind}/{name}"))?;
        versions.push((
            format!("{kind}/{name}"),
            object["metadata"]["resourceVersion"].clone(),
        ));
    }
    Ok(versions)
}

/// The proxy container as the brief wants it.
fn check_pod_template(template: &Value) -> Result<()> {
    let spec = &template["spec"];
    let container = &spec["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(container["command"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    let joined = args.join(" ");
    ensure!(
        joined.contains("--brokers-file") && joined.contains("/etc/mqtt-proxy/brokers.yaml"),
        "runs on the rendered file: {args:?}"
    );
    let volume = spec["volumes"]
        .as_array()
        .context("volumes")?
        .iter()
        .find(|v| v["secret"]["secretName"] == "factory-brokers")
        .context("a volume of the rendered Secret")?;
    let mount = container["volumeMounts"]
        .as_array()
        .context("volumeMounts")?
        .iter()
        .find(|m| m["name"] == volume["name"])
        .context("the rendered Secret is mounted")?;
    ensure!(
        mount["mountPath"] == "/etc/mqtt-proxy" && mount.get("subPath").is_none(),
        "mounted as a directory, never subPath: {mount}"
    );
    let token = container["env"]
        .as_array()
        .context("env")?
        .iter()
        .find(|e| e["name"] == "MQTT_PROXY_ADMIN_TOKEN")
        .context("MQTT_PROXY_ADMIN_TOKEN")?;
    ensure!(
        token["valueFrom"]["secretKeyRef"]["name"] == "factory-admin"
            && token["valueFrom"]["secretKeyRef"]["key"] == "token",
        "{token}"
    );
    ensure!(
        container["livenessProbe"]["httpGet"]["path"] == "/healthz",
        "{container}"
    );
    ensure!(
        container["readinessProbe"]["httpGet"]["path"] == "/readyz",
        "{container}"
    );
    let image = container["image"].as_str().unwrap_or_default();
    ensure!(
        image.starts_with("ghcr.io/mqtt-proxy/mqtt-proxy:"),
        "default image: {image}"
    );
    ensure!(
        container["resources"]["requests"]["cpu"] == "50m",
        "resources from the spec: {}",
        container["resources"]
    );
    let security = &container["securityContext"];
    ensure!(security["readOnlyRootFilesystem"] == true, "{security}");
    Ok(())
}

/// The Deployment's pod template and generation are what they were in `before`.
async fn unchanged_pod_template(api: &TestApiServer, before: &Value) -> Result<()> {
    let now = api
        .kubectl()
        .get_json("deployment", "factory", NS)
        .await?
        .context("deployment")?;
    ensure!(
        now["spec"]["template"] == before["spec"]["template"],
        "the pod template changed:\nbefore {}\nnow    {}",
        before["spec"]["template"],
        now["spec"]["template"]
    );
    ensure!(
        now["metadata"]["generation"] == before["metadata"]["generation"],
        "the Deployment spec was rewritten"
    );
    Ok(())
}
