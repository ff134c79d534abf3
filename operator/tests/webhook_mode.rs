//! Reconcile in `spec.mode: Sidecar`, against the scripted fake API server: the Secrets the
//! sidecars mount are applied, no Deployment, Service or ServiceMonitor is, and the ones
//! this MqttProxy owned from Deployment mode are deleted — never someone else's.

mod common;

use std::sync::Arc;

use common::apiserver::*;
use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use mqtt_proxy_operator::controller::reconcile;
use mqtt_proxy_operator::crd::{MqttProxy, ProxyMode};
use serde_json::{json, Value};

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/plant/deployments/factory";
const SERVICE: &str = "/api/v1/namespaces/plant/services/factory";

fn sidecar_proxy() -> MqttProxy {
    let mut p = common::proxy();
    p.spec.mode = ProxyMode::Sidecar;
    p
}

/// A child named `factory` whose controller is the MqttProxy with `uid`.
fn child(kind: &str, api_version: &str, uid: &str) -> Value {
    json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"name": "factory", "namespace": "plant", "ownerReferences": [{
            "apiVersion": "mqttproxy.io/v1alpha1", "kind": "MqttProxy", "name": "factory",
            "uid": uid, "controller": true, "blockOwnerDeletion": true}]},
    })
}

const SERVICE_MONITOR: &str =
    "/apis/monitoring.coreos.com/v1/namespaces/plant/servicemonitors/factory";

fn deleted() -> Reply {
    Reply::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}))
}

fn script(after_secrets: Vec<(&'static str, String, Reply)>) -> Vec<(&'static str, String, Reply)> {
    let mut s = vec![
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
        ("PATCH", format!("{SECRETS}/factory-admin"), Reply::Echo),
        ("PATCH", format!("{SECRETS}/factory-brokers"), Reply::Echo),
    ];
    s.extend(after_secrets);
    s.push((
        "PATCH",
        "/apis/mqttproxy.io/v1alpha1/namespaces/plant/mqttproxies/factory/status".into(),
        Reply::Json(proxy_with_status(&json!({"status": {}}))),
    ));
    s
}

async fn run(script: Vec<(&'static str, String, Reply)>) -> Vec<Seen> {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (ctx, _writer) = make_ctx(Client::new(svc, "default"));
    let task = serve(handle, script);
    reconcile(Arc::new(sidecar_proxy()), ctx)
        .await
        .expect("reconciles");
    finish(task).await
}

#[tokio::test]
async fn sidecar_mode_applies_secrets_and_prunes_its_own_children() {
    let uid = common::proxy().metadata.uid.expect("fixture uid");
    let seen = run(script(vec![
        (
            "GET",
            DEPLOYMENT.into(),
            Reply::Json(child("Deployment", "apps/v1", &uid)),
        ),
        ("DELETE", DEPLOYMENT.into(), deleted()),
        (
            "GET",
            SERVICE.into(),
            Reply::Json(child("Service", "v1", &uid)),
        ),
        ("DELETE", SERVICE.into(), deleted()),
        // The fixture enables serviceMonitor and the cluster has the CRD.
        (
            "GET",
            SERVICE_MONITOR.into(),
            Reply::Json(child("ServiceMonitor", "monitoring.coreos.com/v1", &uid)),
        ),
        ("DELETE", SERVICE_MONITOR.into(), deleted()),
    ]))
    .await;
    assert!(
        !seen
            .iter()
            .any(|s| s.method == "PATCH" && (s.path == DEPLOYMENT || s.path == SERVICE)),
        "no Deployment or Service applied in Sidecar mode"
    );
    assert!(
        !seen
            .iter()
            .any(|s| s.method == "PATCH" && s.path == SERVICE_MONITOR),
        "no ServiceMonitor applied in Sidecar mode"
    );
    let status = &seen.last().expect("status write").body["status"];
    assert_eq!(status["replicas"], 0);
    let ready = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .expect("Ready condition");
    assert_eq!(
        ready["status"], "True",
        "no replicas of its own to wait for: {ready}"
    );
}

#[tokio::test]
async fn sidecar_mode_leaves_foreign_and_missing_children_alone() {
    // The script has no DELETE: the fake server fails the test on any unexpected call.
    run(script(vec![
        (
            "GET",
            DEPLOYMENT.into(),
            Reply::Json(child("Deployment", "apps/v1", "someone-elses-uid")),
        ),
        ("GET", SERVICE.into(), Reply::NotFound),
        ("GET", SERVICE_MONITOR.into(), Reply::NotFound),
    ]))
    .await;
}
