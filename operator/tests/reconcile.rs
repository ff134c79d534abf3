//! Reconcile against kube-rs's mock service (the controller-rs `ApiServerVerifier` pattern):
//! the exact API call sequence, the field manager on every write, the status written for a
//! missing Secret, and no status write when nothing changed. Every (verb, resource) seen is
//! checked against `operator/RBAC.md`, so the Helm chart's Role can follow it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use kube::Client;
use mqtt_proxy_operator::controller::{
    reconcile, reconcile_broker, Ctx, RenderedIndex, ServiceMonitorDiscovery, RESYNC,
};
use mqtt_proxy_operator::crd::MqttBroker;
use mqtt_proxy_operator::metrics::Metrics;
use serde_json::{json, Value};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// How the fake API server answers one expected request.
enum Reply {
    /// 200 with the request body echoed back (what server-side apply returns, near enough).
    Echo,
    /// 200 with this object.
    Json(Value),
    /// 404 with a Kubernetes `Status`.
    NotFound,
    /// 404 with the plain text a real API server gives for an unknown API group.
    PlainNotFound,
}

/// One request seen: method, path, query, JSON body.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: String,
    body: Value,
}

/// Answers `script` in order, asserting each request's method and path; records them.
fn serve(
    mut handle: Handle,
    script: Vec<(&'static str, String, Reply)>,
) -> tokio::task::JoinHandle<Vec<Seen>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        for (method, path, reply) in script {
            let (req, send) = handle
                .next_request()
                .await
                .expect("the operator made this call");
            let s = Seen {
                method: req.method().to_string(),
                path: req.uri().path().to_string(),
                query: req.uri().query().unwrap_or_default().to_string(),
                body: Value::Null,
            };
            let bytes = req.into_body().collect_bytes().await.expect("body");
            let s = Seen {
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                ..s
            };
            assert_eq!(
                (s.method.as_str(), s.path.as_str()),
                (method, path.as_str()),
                "call #{}",
                seen.len() + 1
            );
            if let Reply::PlainNotFound = reply {
                let resp = Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Body::from(b"404 page not found\n".to_vec()))
                    .expect("response");
                send.send_response(resp);
                seen.push(s);
                continue;
            }
            let (code, body) = match reply {
                Reply::Echo => (StatusCode::OK, s.body.clone()),
                Reply::Json(v) => (StatusCode::OK, v),
                Reply::PlainNotFound => unreachable!("answered above"),
                Reply::NotFound => (
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "NotFound", "code": 404, "message": format!("{path} not found")}),
                ),
            };
            let resp = Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&body).expect("json")))
                .expect("response");
            send.send_response(resp);
            seen.push(s);
        }
        seen
    })
}

fn make_ctx(client: Client) -> (Arc<Ctx>, Writer<MqttBroker>) {
    let (store, mut writer) = reflector::store::<MqttBroker>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for b in common::brokers() {
        writer.apply_watcher_event(&watcher::Event::InitApply((*b).clone()));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let ctx = Ctx {
        client,
        brokers: store,
        metrics: Arc::new(Metrics::new()),
        proxy_image: common::IMAGE.into(),
        rendered: RenderedIndex::default(),
        service_monitors: ServiceMonitorDiscovery::default(),
        brokers_synced: tokio::sync::watch::channel(true).1,
    };
    (Arc::new(ctx), writer)
}

const SECRETS: &str = "/api/v1/namespaces/plant/secrets";

fn secret_json(name: &str) -> Value {
    let s = common::secrets().remove(name).expect("fixture secret");
    serde_json::to_value(s).expect("json")
}

fn discovery() -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "monitoring.coreos.com/v1",
           "resources": [{"name": "servicemonitors", "singularName": "servicemonitor", "namespaced": true,
                          "kind": "ServiceMonitor", "verbs": ["get", "list", "watch", "patch"]}]})
}

/// The proxy as the server returns it after a status write.
fn proxy_with_status(status: &Value) -> Value {
    let mut p = serde_json::to_value(common::proxy()).expect("json");
    p["status"] = status["status"].clone();
    p
}

/// `(verb, apiGroup, resource[/subresource])` of one request path.
fn rbac_of(s: &Seen) -> (String, String, String) {
    let parts: Vec<&str> = s.path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", g, _v, rest @ ..] => (*g, rest),
        _ => panic!("unexpected path {}", s.path),
    };
    let resource = match rest {
        [] => "<discovery>".to_string(),
        ["namespaces", _, res, _name, sub] => format!("{res}/{sub}"),
        ["namespaces", _, res, ..] => res.to_string(),
        [res, ..] => res.to_string(),
    };
    let verb = match s.method.as_str() {
        "GET" => "get",
        "PATCH" => "patch",
        "POST" => "create",
        "PUT" => "update",
        "DELETE" => "delete",
        m => panic!("unexpected method {m}"),
    };
    (verb.into(), group.into(), resource)
}

/// `| apiGroup | resource | verbs |` rows of RBAC.md.
fn rbac_md() -> Vec<(String, String, Vec<String>)> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/RBAC.md")).expect("RBAC.md");
    text.lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<String> = l
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect();
            let group = if cells[1] == "\"\"" {
                String::new()
            } else {
                cells[1].clone()
            };
            let verbs = cells[3].split(',').map(|v| v.trim().to_string()).collect();
            (group, cells[2].clone(), verbs)
        })
        .collect()
}

fn assert_in_rbac_md(seen: &[Seen]) {
    let table = rbac_md();
    for s in seen {
        let (verb, group, resource) = rbac_of(s);
        if resource == "<discovery>" {
            continue; // discovery is open to every authenticated client (system:discovery)
        }
        assert!(
            table
                .iter()
                .any(|(g, r, vs)| *g == group && *r == resource && vs.contains(&verb)),
            "{verb} {group}/{resource} is not in operator/RBAC.md"
        );
    }
}

fn assert_field_manager(seen: &[Seen]) {
    for s in seen.iter().filter(|s| s.method == "PATCH") {
        assert!(
            s.query.contains("fieldManager=mqtt-proxy-operator") && s.query.contains("force=true"),
            "{} {}?{}",
            s.method,
            s.path,
            s.query
        );
    }
}

async fn finish(task: tokio::task::JoinHandle<Vec<Seen>>) -> Vec<Seen> {
    let seen = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("every expected call was made")
        .expect("script ran");
    assert_field_manager(&seen);
    assert_in_rbac_md(&seen);
    seen
}

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

    let brokers = &seen[6].body;
    assert_eq!(brokers["kind"], "Secret");
    assert!(brokers["data"]["brokers.yaml"].is_string());
    let status = &seen[10].body;
    assert_eq!(status["apiVersion"], "mqttproxy.io/v1alpha1");
    assert_eq!(status["kind"], "MqttProxy");
    let st = &status["status"];
    assert_eq!(st["brokers"], 2);
    assert_eq!(st["observedGeneration"], 3);
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
    let st = &seen[5].body["status"];
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
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (ctx, _w) = make_ctx(Client::new(svc, "default"));
    let mut script = happy_script(true);
    script[4].2 = Reply::PlainNotFound;
    script.remove(9); // no ServiceMonitor apply
    let task = serve(handle, script);
    reconcile(Arc::new(common::proxy()), ctx)
        .await
        .expect("reconciles");
    let seen = finish(task).await;
    let conds = seen[9].body["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .clone();
    let degraded = conds
        .iter()
        .find(|c| c["type"] == "Degraded")
        .expect("Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "ServiceMonitorSkipped");
    assert!(degraded["message"]
        .as_str()
        .expect("message")
        .contains("no monitoring.coreos.com/v1 ServiceMonitor CRD"));
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
