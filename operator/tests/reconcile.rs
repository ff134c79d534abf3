//! Reconcile against kube-rs's mock service (the controller-rs `ApiServerVerifier` pattern):
//! the exact API call sequence, the field manager on every write, the status written for a
//! missing Secret, and no status write when nothing changed. Every (verb, resource) seen is
//! checked against `operator/RBAC.md`, so the Helm chart's Role can follow it.

mod common;

use std::sync::Arc;

use common::apiserver::*;
use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::Client;
use mqtt_proxy_operator::controller::{reconcile, reconcile_broker, RESYNC};
use serde_json::{json, Value};

fn happy_script(status_write: bool) -> Vec<(&'static str, String, Reply)> {
    let mut script = vec![
        (
            "GET",
            format!("{SECRETS}/cloud-ca"),
            Reply::Json(secret_json("cloud-ca")),
        ),
        (
            "GET",
            format!("{SECRETS}/cloud-client"),
            Reply::Json(secret_json("cloud-client")),
        ),
        (
            "GET",
            format!("{SECRETS}/factory-admin"),
            Reply::Json(secret_json("factory-admin")),
        ),
        (
            "GET",
            format!("{SECRETS}/mqtt-credentials"),
            Reply::Json(secret_json("mqtt-credentials")),
        ),
        (
            "GET",
            "/apis/monitoring.coreos.com/v1".into(),
            Reply::Json(discovery()),
        ),
        (
            "GET",
            "/apis/policy/v1".into(),
            Reply::Json(pdb_discovery()),
        ),
        ("PATCH", format!("{SECRETS}/factory-admin"), Reply::Echo),
        ("PATCH", format!("{SECRETS}/factory-brokers"), Reply::Echo),
        (
            "PATCH",
            "/apis/apps/v1/namespaces/plant/deployments/factory".into(),
            Reply::Echo,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/plant/services/factory".into(),
            Reply::Echo,
        ),
        (
            "PATCH",
            "/apis/policy/v1/namespaces/plant/poddisruptionbudgets/factory".into(),
            Reply::Echo,
        ),
        (
            "PATCH",
            "/apis/monitoring.coreos.com/v1/namespaces/plant/servicemonitors/factory".into(),
            Reply::Echo,
        ),
    ];
    if status_write {
        script.push((
            "PATCH",
            "/apis/mqttproxy.io/v1alpha1/namespaces/plant/mqttproxies/factory/status".into(),
            Reply::Json(proxy_with_status(&json!({"status": {}}))),
        ));
    }
    script
}

#[tokio::test]
async fn reconcile_applies_children_in_order_then_status() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (ctx, _writer) = make_ctx(Client::new(svc, "default"));
    let task = serve(handle, happy_script(true));
    let action = reconcile(Arc::new(common::proxy()), ctx)
        .await
        .expect("reconciles");
    assert_eq!(action, Action::requeue(RESYNC));
    let seen = finish(task).await;

    let brokers = &seen[7].body;
    assert_eq!(brokers["kind"], "Secret");
    assert!(brokers["data"]["brokers.yaml"].is_string());
    assert_eq!(seen[10].body["kind"], "PodDisruptionBudget");
    let status = &seen[12].body;
    assert_eq!(status["apiVersion"], "mqttproxy.io/v1alpha1");
    assert_eq!(status["kind"], "MqttProxy");
    let st = &status["status"];
    // Not polled yet (no pod): connected unknown, 2 selected.
    assert_eq!(st["brokers"], "?/2");
    assert_eq!(st["devices"], 0);
    assert_eq!(st["observedGeneration"], 3);
    assert_eq!(
        st["selector"],
        "app.kubernetes.io/instance=factory,app.kubernetes.io/name=mqtt-proxy"
    );
    let cond = |t: &str| {
        st["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == t)
            .cloned()
            .expect(t)
    };
    assert_eq!(cond("ConfigApplied")["status"], "True");
    // The mock Deployment has no status: no replica is ready yet.
    assert_eq!(cond("Ready")["status"], "False");
    assert_eq!(cond("Ready")["reason"], "ReplicasNotReady");
    assert_eq!(cond("Degraded")["status"], "False");
    for c in st["conditions"].as_array().expect("conditions") {
        // 1.20's server-side apply turns "" into null and then rejects it.
        assert!(c["message"].as_str().is_some_and(|m| !m.is_empty()), "{c}");
    }
}

#[tokio::test]
async fn unchanged_status_is_not_written_again() {
    // First pass: learn the status the operator writes.
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (ctx, _w) = make_ctx(Client::new(svc, "default"));
    let task = serve(handle, happy_script(true));
    reconcile(Arc::new(common::proxy()), ctx)
        .await
        .expect("reconciles");
    let seen = finish(task).await;
    let written = seen.last().expect("status write").body.clone();

    // Second pass with that status in place: the same applies, no status write.
    let mut proxy = common::proxy();
    proxy.status = Some(serde_json::from_value(written["status"].clone()).expect("status"));
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (ctx, _w) = make_ctx(Client::new(svc, "default"));
    let task = serve(handle, happy_script(false));
    let action = reconcile(Arc::new(proxy), ctx).await.expect("reconciles");
    assert_eq!(action, Action::requeue(RESYNC));
    let seen = finish(task).await;
    assert!(seen.iter().all(|s| !s.path.ends_with("/status")));
}

#[tokio::test]
async fn missing_secret_writes_ready_false_and_applies_nothing() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (ctx, _w) = make_ctx(Client::new(svc, "default"));
    let script = vec![
        (
            "GET",
            format!("{SECRETS}/cloud-ca"),
            Reply::Json(secret_json("cloud-ca")),
        ),
        (
            "GET",
            format!("{SECRETS}/cloud-client"),
            Reply::Json(secret_json("cloud-client")),
        ),
        (
            "GET",
            format!("{SECRETS}/factory-admin"),
            Reply::Json(secret_json("factory-admin")),
        ),
        (
            "GET",
            format!("{SECRETS}/mqtt-credentials"),
            Reply::NotFound,
        ),
        (
            "GET",
            "/apis/monitoring.coreos.com/v1".into(),
            Reply::Json(discovery()),
        ),
        (
            "GET",
            "/apis/policy/v1".into(),
            Reply::Json(pdb_discovery()),
        ),
        (
            "PATCH",
            "/apis/mqttproxy.io/v1alpha1/namespaces/plant/mqttproxies/factory/status".into(),
            Reply::Json(proxy_with_status(&json!({"status": {}}))),
        ),
    ];
    let task = serve(handle, script);
    let action = reconcile(Arc::new(common::proxy()), ctx)
        .await
        .expect("reconciles");
    assert_eq!(
        action,
        Action::await_change(),
        "no requeue storm on a permanent error"
    );
    let seen = finish(task).await;
    let st = &seen[6].body["status"];
    let conds = st["conditions"].as_array().expect("conditions");
    let ready = conds.iter().find(|c| c["type"] == "Ready").expect("Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "SecretNotFound");
    assert_eq!(
        ready["message"],
        "Secret plant/mqtt-credentials not found (referenced by MqttBroker plant/cloud credentialsSecretRef)"
    );
    let applied = conds
        .iter()
        .find(|c| c["type"] == "ConfigApplied")
        .expect("ConfigApplied");
    assert_eq!(applied["status"], "False");
}

#[tokio::test]
async fn service_monitor_is_skipped_with_a_reason_when_its_api_group_is_missing() {
    let mut script = happy_script(true);
    script[4].2 = Reply::PlainNotFound;
    script.remove(11); // no ServiceMonitor apply
    let seen = reconcile_fixture(script).await;
    let degraded = degraded_of(&seen[11].body);
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "ServiceMonitorSkipped");
    assert!(degraded["message"]
        .as_str()
        .expect("message")
        .contains("no monitoring.coreos.com/v1 ServiceMonitor CRD"));
}

/// Runs one reconcile of the fixture proxy against `script`; returns the calls seen.
async fn reconcile_fixture(script: Vec<(&'static str, String, Reply)>) -> Vec<Seen> {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (ctx, _w) = make_ctx(Client::new(svc, "default"));
    let task = serve(handle, script);
    reconcile(Arc::new(common::proxy()), ctx)
        .await
        .expect("reconciles");
    finish(task).await
}

/// The `Degraded` condition of a status write's body.
fn degraded_of(body: &Value) -> Value {
    body["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Degraded")
        .cloned()
        .expect("Degraded")
}

#[tokio::test]
async fn disabling_the_service_monitor_deletes_the_one_this_proxy_owns() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (ctx, _w) = make_ctx(Client::new(svc, "default"));
    let mut proxy = common::proxy();
    proxy.spec.service_monitor.enabled = false;
    let sm_path = "/apis/monitoring.coreos.com/v1/namespaces/plant/servicemonitors/factory";
    let owned = json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": {"name": "factory", "namespace": "plant", "ownerReferences": [{
            "apiVersion": "mqttproxy.io/v1alpha1", "kind": "MqttProxy", "name": "factory",
            "uid": "0b7e4a52-6a51-4c1e-9a33-7f3f6a0c2e11", "controller": true}]},
        "spec": {}});
    let mut script = happy_script(true);
    script.remove(11); // no ServiceMonitor apply...
    script.insert(11, ("GET", sm_path.into(), Reply::Json(owned)));
    script.insert(
        12,
        (
            "DELETE",
            sm_path.into(),
            Reply::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
        ),
    );
    let task = serve(handle, script);
    reconcile(Arc::new(proxy), ctx).await.expect("reconciles");
    let seen = finish(task).await;
    assert_eq!(seen[12].method, "DELETE");
}

/// The 1.20 test API server (and any cluster before 1.21) has no `policy/v1`: two replicas
/// then get no PodDisruptionBudget, and `Degraded` says why.
#[tokio::test]
async fn pdb_is_skipped_with_a_reason_without_policy_v1() {
    let mut script = happy_script(true);
    script[5].2 = Reply::PlainNotFound;
    script.remove(10); // no PodDisruptionBudget apply
    let seen = reconcile_fixture(script).await;
    assert!(seen
        .iter()
        .all(|s| !s.path.contains("poddisruptionbudgets")));
    let degraded = degraded_of(&seen[11].body);
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "PodDisruptionBudgetSkipped");
}

#[tokio::test]
async fn transient_api_error_is_an_error_for_the_retry_policy() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (ctx, _w) = make_ctx(Client::new(svc, "default"));
    let task = tokio::spawn(async move {
        let mut handle = handle;
        let (_req, send) = handle.next_request().await.expect("a call");
        send.send_response(
            Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(Body::from(
                    serde_json::to_vec(&json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                               "reason": "InternalError", "code": 500, "message": "etcd timeout"}))
                    .expect("json"),
                ))
                .expect("response"),
        );
    });
    let err = reconcile(Arc::new(common::proxy()), ctx.clone())
        .await
        .unwrap_err();
    task.await.expect("served");
    assert_eq!(err.metric_reason(), "api");
    let action =
        mqtt_proxy_operator::controller::error_policy(Arc::new(common::proxy()), &err, ctx);
    assert_eq!(
        action,
        Action::requeue(mqtt_proxy_operator::controller::RETRY)
    );
}

#[tokio::test]
async fn broker_status_names_the_missing_key() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (ctx, _w) = make_ctx(Client::new(svc, "default"));
    let mut creds = secret_json("mqtt-credentials");
    creds["data"]
        .as_object_mut()
        .expect("data")
        .remove("edge-password");
    let edge = common::brokers()
        .into_iter()
        .find(|b| b.metadata.name.as_deref() == Some("edge"))
        .expect("edge");
    let mut edge_json = serde_json::to_value(&*edge).expect("json");
    edge_json["status"] = json!({});
    let script = vec![
        (
            "GET",
            format!("{SECRETS}/mqtt-credentials"),
            Reply::Json(creds),
        ),
        (
            "PATCH",
            "/apis/mqttproxy.io/v1alpha1/namespaces/plant/mqttbrokers/edge/status".into(),
            Reply::Json(edge_json),
        ),
    ];
    let task = serve(handle, script);
    let action = reconcile_broker(edge, ctx).await.expect("reconciles");
    assert_eq!(action, Action::await_change());
    let seen = finish(task).await;
    let ready = &seen[1].body["status"]["conditions"][0];
    assert_eq!(ready["type"], "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "SecretKeyNotFound");
    assert!(ready["message"]
        .as_str()
        .expect("message")
        .contains("has no key \"edge-password\""));
}

#[tokio::test]
async fn valid_broker_is_ready() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (ctx, _w) = make_ctx(Client::new(svc, "default"));
    let edge = common::brokers()
        .into_iter()
        .find(|b| b.metadata.name.as_deref() == Some("edge"))
        .expect("edge");
    let script = vec![
        (
            "GET",
            format!("{SECRETS}/mqtt-credentials"),
            Reply::Json(secret_json("mqtt-credentials")),
        ),
        (
            "PATCH",
            "/apis/mqttproxy.io/v1alpha1/namespaces/plant/mqttbrokers/edge/status".into(),
            Reply::Json(serde_json::to_value(&*edge).expect("json")),
        ),
    ];
    let task = serve(handle, script);
    assert_eq!(
        reconcile_broker(edge, ctx).await.expect("reconciles"),
        Action::requeue(RESYNC)
    );
    let seen = finish(task).await;
    let ready = &seen[1].body["status"]["conditions"][0];
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("True"), Some("Valid"))
    );
    assert_eq!(
        seen[1].body["status"]["observedGeneration"],
        Value::Null,
        "fixture has no generation"
    );
}

#[test]
fn rbac_md_parses() {
    let rows = rbac_md();
    assert!(rows.len() >= 7, "{rows:?}");
    assert!(rows
        .iter()
        .any(|(g, r, v)| g.is_empty() && r == "secrets" && v.contains(&"watch".to_string())));
}

/// A broker set that mirrors: the pods' ServiceAccount, Role and RoleBinding are applied
/// after the rendered Secret and before the Deployment that names the account, each call
/// listed in RBAC.md (`finish` checks).
#[tokio::test]
async fn a_mirroring_broker_set_applies_the_pods_lease_account_first() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (ctx, mut writer) = make_ctx(Client::new(svc, "default"));
    let mut edge = common::brokers()
        .into_iter()
        .find(|b| b.metadata.name.as_deref() == Some("edge"))
        .map(|b| (*b).clone())
        .expect("edge");
    edge.spec.mirror = true;
    writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(edge));
    let mut script = happy_script(true);
    let ns = "/namespaces/plant";
    for (i, path) in [
        format!("/api/v1{ns}/serviceaccounts/factory-proxy"),
        format!("/apis/rbac.authorization.k8s.io/v1{ns}/roles/factory-proxy"),
        format!("/apis/rbac.authorization.k8s.io/v1{ns}/rolebindings/factory-proxy"),
    ]
    .into_iter()
    .enumerate()
    {
        script.insert(8 + i, ("PATCH", path, Reply::Echo));
    }
    let task = serve(handle, script);
    reconcile(Arc::new(common::proxy()), ctx)
        .await
        .expect("reconciles");
    let seen = finish(task).await;
    let pod = &seen[11].body["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "factory-proxy");
}
