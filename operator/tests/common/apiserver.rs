//! A scripted fake API server on kube's mock service (the controller-rs
//! `ApiServerVerifier` pattern): answers expected requests in order, records them, and
//! checks the field manager and `operator/RBAC.md` for every call.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use kube::Client;
use mqtt_proxy_operator::controller::{Ctx, PdbDiscovery, RenderedIndex, ServiceMonitorDiscovery};
use mqtt_proxy_operator::crd::MqttBroker;
use mqtt_proxy_operator::metrics::Metrics;
use serde_json::{json, Value};

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// How the fake API server answers one expected request.
pub enum Reply {
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
pub struct Seen {
    pub method: String,
    pub content_type: String,
    pub path: String,
    pub query: String,
    pub body: Value,
}

/// Answers `script` in order, asserting each request's method and path; records them.
pub fn serve(
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
                content_type: req
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
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

pub fn make_ctx(client: Client) -> (Arc<Ctx>, Writer<MqttBroker>) {
    let (store, mut writer) = reflector::store::<MqttBroker>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for b in super::brokers() {
        writer.apply_watcher_event(&watcher::Event::InitApply((*b).clone()));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let ctx = Ctx {
        client,
        brokers: store,
        metrics: Arc::new(Metrics::new()),
        proxy_image: super::IMAGE.into(),
        rendered: RenderedIndex::default(),
        service_monitors: ServiceMonitorDiscovery::default(),
        pdbs: PdbDiscovery::default(),
        brokers_synced: tokio::sync::watch::channel(true).1,
        health: Default::default(),
    };
    (Arc::new(ctx), writer)
}

pub const SECRETS: &str = "/api/v1/namespaces/plant/secrets";

pub fn secret_json(name: &str) -> Value {
    let s = super::secrets().remove(name).expect("fixture secret");
    serde_json::to_value(s).expect("json")
}

pub fn discovery() -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "monitoring.coreos.com/v1",
           "resources": [{"name": "servicemonitors", "singularName": "servicemonitor", "namespaced": true,
                          "kind": "ServiceMonitor", "verbs": ["get", "list", "watch", "patch"]}]})
}

pub fn pdb_discovery() -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "policy/v1",
           "resources": [{"name": "poddisruptionbudgets", "singularName": "poddisruptionbudget",
                          "namespaced": true, "kind": "PodDisruptionBudget",
                          "verbs": ["create", "get", "list", "patch", "watch"]}]})
}

/// The proxy as the server returns it after a status write.
pub fn proxy_with_status(status: &Value) -> Value {
    let mut p = serde_json::to_value(super::proxy()).expect("json");
    p["status"] = status["status"].clone();
    p
}

/// `(verb, apiGroup, resource[/subresource])` of one request path.
pub fn rbac_of(s: &Seen) -> (String, String, String) {
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
pub fn rbac_md() -> Vec<(String, String, Vec<String>)> {
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

pub fn assert_in_rbac_md(seen: &[Seen]) {
    let table = rbac_md();
    for s in seen {
        let (verb, group, resource) = rbac_of(s);
        if resource == "<discovery>" {
            continue; // discovery is open to every authenticated client (system:discovery)
        }
        // Server-side apply of a missing object creates it: the server checks `create` too.
        let apply = s.content_type == "application/apply-patch+yaml";
        let mut verbs = vec![verb];
        if apply && !resource.contains('/') {
            verbs.push("create".into());
        }
        for verb in verbs {
            assert!(
                table
                    .iter()
                    .any(|(g, r, vs)| *g == group && *r == resource && vs.contains(&verb)),
                "{verb} {group}/{resource} is not in operator/RBAC.md"
            );
        }
    }
}

pub fn assert_field_manager(seen: &[Seen]) {
    for s in seen.iter().filter(|s| s.method == "PATCH") {
        assert_eq!(
            s.content_type, "application/apply-patch+yaml",
            "server-side apply only"
        );
        assert!(
            s.query.contains("fieldManager=mqtt-proxy-operator") && s.query.contains("force=true"),
            "{} {}?{}",
            s.method,
            s.path,
            s.query
        );
    }
}

pub async fn finish(task: tokio::task::JoinHandle<Vec<Seen>>) -> Vec<Seen> {
    let seen = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("every expected call was made")
        .expect("script ran");
    assert_field_manager(&seen);
    assert_in_rbac_md(&seen);
    seen
}
