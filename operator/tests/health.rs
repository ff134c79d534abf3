//! Destination health: the pure summaries (reasons, fractions, sums, messages) as tables,
//! the status document parsed from the proxy's own `BrokerStatus` serialization (so a
//! renamed field fails here), `lastTransitionTime` moving only on a flip, ready-pod
//! selection, and `reconcile_broker` against the mock API server: the `Connected` condition
//! is written once and not again while nothing changed.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use common::apiserver::*;
use http::{Request, Response};
use k8s_openapi::api::core::v1::Pod;
use kube::client::Body;
use kube::Client;
use mqtt_proxy::brokerset::BrokerStatus;
use mqtt_proxy_operator::controller::reconcile_broker;
use mqtt_proxy_operator::controller::status::broker_status;
use mqtt_proxy_operator::health::poll::parse_status;
use mqtt_proxy_operator::health::summary::{
    broker_summary, proxy_summary, reason_for, BrokerReport,
};
use mqtt_proxy_operator::health::{ready_pods, PodPoll, ProxyPolls};
use serde_json::{json, Value};

fn up() -> BrokerReport {
    BrokerReport {
        connected: true,
        enabled: true,
        ..Default::default()
    }
}

fn down(reason: &str, error: &str) -> BrokerReport {
    BrokerReport {
        connected: false,
        enabled: true,
        last_error: Some(error.into()),
        last_error_reason: Some(reason.into()),
        queue_messages: 4,
        dropped: 2,
    }
}

/// A round of pods `name-0..` each reporting `broker` as given.
fn round(name: &str, broker: &str, reports: Vec<BrokerReport>) -> ProxyPolls {
    reports
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let poll = PodPoll::Report {
                devices: 2,
                brokers: BTreeMap::from([(broker.to_string(), r)]),
            };
            (format!("{name}-{i}"), poll)
        })
        .collect()
}

/// (condition status, reason, `Connected` column).
type Expected = (&'static str, &'static str, &'static str);

#[test]
fn broker_reasons_and_fractions() {
    let refused = "connect: Connection refused (os error 111)";
    let cases: Vec<(&str, Vec<BrokerReport>, Expected)> = vec![
        (
            "all up",
            vec![up(), up(), up()],
            ("True", "Connected", "3/3"),
        ),
        (
            "one down",
            vec![up(), down("unreachable", refused), up()],
            ("False", "PartiallyConnected", "2/3"),
        ),
        (
            "all unreachable",
            vec![down("unreachable", refused), down("unreachable", refused)],
            ("False", "Unreachable", "0/2"),
        ),
        (
            "bad password",
            vec![down(
                "bad_credentials",
                "CONNACK: bad user name or password",
            )],
            ("False", "AuthFailed", "0/1"),
        ),
        (
            "not authorized",
            vec![down("not_authorized", "CONNACK: not authorized")],
            ("False", "AuthFailed", "0/1"),
        ),
        (
            "tls",
            vec![down(
                "unreachable",
                "TLS handshake: invalid peer certificate: UnknownIssuer",
            )],
            ("False", "TlsError", "0/1"),
        ),
        (
            "dropped",
            vec![down("dropped", "connection closed by the broker")],
            ("False", "Disconnected", "0/1"),
        ),
        (
            "mixed causes",
            vec![
                down("unreachable", refused),
                down("bad_credentials", "CONNACK: bad user name or password"),
            ],
            ("False", "Disconnected", "0/2"),
        ),
        (
            "disabled",
            vec![BrokerReport {
                enabled: false,
                ..Default::default()
            }],
            ("False", "Disabled", "0/0"),
        ),
    ];
    for (what, reports, (status, reason, column)) in cases {
        let polls = round("p", "b", reports);
        let s = broker_summary("b", &[("p".into(), &polls)]);
        assert_eq!(
            (s.status, s.reason, s.column().as_str()),
            (status, reason, column),
            "{what}"
        );
        assert!(!s.message.is_empty(), "{what}: 1.20 rejects empty messages");
    }
}

#[test]
fn broker_sums_and_names_the_pod() {
    let a = round("a", "b", vec![up(), down("unreachable", "refused")]);
    let z = round("z", "b", vec![up()]);
    let s = broker_summary("b", &[("z".into(), &z), ("a".into(), &a)]);
    assert_eq!(
        s.proxies,
        vec![("a".to_string(), 1, 2), ("z".to_string(), 1, 1)],
        "per proxy, sorted"
    );
    assert_eq!((s.connected, s.total), (2, 3));
    assert_eq!(s.last_error.as_deref(), Some("a-1: refused"));
    assert_eq!((s.queue_depth, s.dropped_total), (4, 2));
    assert!(
        s.message
            .starts_with("2/3 ready proxy pods connected; a-1: refused"),
        "{}",
        s.message
    );
}

#[test]
fn broker_without_pods_or_answers_is_unknown() {
    let s = broker_summary("b", &[]);
    assert_eq!(
        (s.status, s.reason, s.column().as_str()),
        ("Unknown", "NoReadyProxyPods", "0/0")
    );
    let empty = ProxyPolls::new();
    let s = broker_summary("b", &[("p".into(), &empty)]);
    assert_eq!(s.reason, "NoReadyProxyPods");
    let failed: ProxyPolls = BTreeMap::from([(
        "p-0".to_string(),
        PodPoll::Failed("no answer within 3s".into()),
    )]);
    let s = broker_summary("b", &[("p".into(), &failed)]);
    assert_eq!(
        (s.status, s.reason, s.column().as_str()),
        ("Unknown", "StatusUnavailable", "0/1")
    );
    assert!(
        s.message
            .contains("p-0: status unreadable (no answer within 3s)"),
        "{}",
        s.message
    );
    // A pod that has not loaded the broker yet counts as not connected.
    let other = round("p", "other", vec![up()]);
    let s = broker_summary("b", &[("p".into(), &other)]);
    assert_eq!((s.status, s.reason), ("False", "Disconnected"));
    assert!(s.message.contains("not loaded"), "{}", s.message);
}

#[test]
fn reason_words_map_to_condition_reasons() {
    assert_eq!(reason_for(None), "Disconnected");
    assert_eq!(
        reason_for(Some(&down("banned", "CONNACK: banned"))),
        "Disconnected"
    );
    assert_eq!(
        reason_for(Some(&down("unreachable", "Certificate expired"))),
        "TlsError"
    );
}

#[test]
fn proxy_counts_brokers_connected_on_every_pod_and_names_the_rest() {
    let selected: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
    let pod = |b: BrokerReport| PodPoll::Report {
        devices: 3,
        brokers: BTreeMap::from([
            ("a".to_string(), up()),
            ("b".to_string(), b),
            ("c".to_string(), up()),
        ]),
    };
    let polls: ProxyPolls = BTreeMap::from([
        ("p-0".to_string(), pod(up())),
        ("p-1".to_string(), pod(down("unreachable", "refused"))),
    ]);
    let s = proxy_summary(&selected, Some(&polls));
    assert_eq!(s.brokers_column(), "2/3");
    assert_eq!(s.devices, 6);
    let (reason, msg) = s.degraded.expect("degraded");
    assert_eq!(reason, "BrokersDisconnected");
    assert_eq!(msg, "not connected from every ready pod: b (1/2 pods)");

    let healthy: ProxyPolls = BTreeMap::from([("p-0".to_string(), pod(up()))]);
    let s = proxy_summary(&selected, Some(&healthy));
    assert_eq!((s.brokers_column().as_str(), s.degraded), ("3/3", None));
    // No ready pod: nothing connected, but Ready=False says why, not Degraded.
    let s = proxy_summary(&selected, Some(&ProxyPolls::new()));
    assert_eq!((s.brokers_column().as_str(), s.degraded), ("0/3", None));
    // Not polled (no admin token): unknown.
    assert_eq!(proxy_summary(&selected, None).brokers_column(), "?/3");
}

#[test]
fn parses_the_proxys_own_status_document() {
    let up = BrokerStatus {
        id: "a".into(),
        name: "a".into(),
        connected: true,
        sessions: 1,
        sessions_connected: 1,
        ..Default::default()
    };
    let down = BrokerStatus {
        id: "b".into(),
        name: "b".into(),
        sessions: 1,
        last_error: Some("connect: refused".into()),
        last_error_reason: Some("unreachable".into()),
        queue_messages: 7,
        dropped: 3,
        ..Default::default()
    };
    // `/api/status` flattens BrokerStatus and adds `enabled`, `state` and more.
    let entry = |s: &BrokerStatus, state: &str| {
        let mut v = serde_json::to_value(s).expect("json");
        v["enabled"] = json!(true);
        v["state"] = json!(state);
        v["drops"] = json!({"queueFull": 3});
        v
    };
    let doc = json!({
        "version": "0.1.0", "devices": 2, "managedBy": "file", "ready": true,
        "brokers": [entry(&up, "connected"), entry(&down, "backoff")],
        "connectedDevices": [], "totals": {}, "uptimeSeconds": 5,
    });
    let poll = parse_status(doc.to_string().as_bytes()).expect("parses");
    let PodPoll::Report { devices, brokers } = poll else {
        panic!("a report");
    };
    assert_eq!(devices, 2);
    assert!(brokers["a"].connected);
    let b = &brokers["b"];
    assert_eq!(
        (
            b.connected,
            b.enabled,
            b.last_error_reason.as_deref(),
            b.queue_messages,
            b.dropped
        ),
        (false, true, Some("unreachable"), 7, 3)
    );
    assert!(parse_status(b"<html>").is_err());
}

#[test]
fn connected_transition_time_moves_only_on_a_flip() {
    let ok: Result<(), _> = Ok(());
    let healthy = broker_summary("b", &[("p".into(), &round("p", "b", vec![up(), up()]))]);
    let partial = broker_summary(
        "b",
        &[(
            "p".into(),
            &round("p", "b", vec![up(), down("unreachable", "refused")]),
        )],
    );
    let s1 = broker_status(None, Some(1), &ok, Some(&healthy), "2026-01-01T00:00:00Z");
    let s2 = broker_status(
        Some(&s1),
        Some(1),
        &ok,
        Some(&healthy),
        "2026-01-01T00:00:10Z",
    );
    assert_eq!(s1, s2, "same health, same status: nothing to write");
    let s3 = broker_status(
        Some(&s2),
        Some(1),
        &ok,
        Some(&partial),
        "2026-01-01T00:00:20Z",
    );
    let s4 = broker_status(
        Some(&s3),
        Some(1),
        &ok,
        Some(&partial),
        "2026-01-01T00:00:30Z",
    );
    let c = |s: &mqtt_proxy_operator::crd::MqttBrokerStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Connected")
            .cloned()
            .expect("Connected")
    };
    assert_eq!(c(&s3).status, "False");
    assert_eq!(c(&s3).last_transition_time, "2026-01-01T00:00:20Z");
    assert_eq!(s3, s4, "still partial: identical");
    assert_eq!(s3.connected.as_deref(), Some("1/2"));
    assert_eq!(s3.last_error.as_deref(), Some("p-1: refused"));
    assert_eq!((s3.queue_depth, s3.dropped_total), (Some(4), Some(2)));
    let ready = |s: &mqtt_proxy_operator::crd::MqttBrokerStatus| s.conditions[0].clone();
    assert_eq!(ready(&s3), ready(&s1), "Ready untouched by health");
    // Before the poller's first round (a restarted operator): everything carried over.
    let s5 = broker_status(Some(&s4), Some(1), &ok, None, "2026-01-01T00:00:40Z");
    assert_eq!(
        s5, s4,
        "no health known yet: nothing changes, nothing is written"
    );
}

fn pod(name: &str, instance: &str, ready: bool, ip: Option<&str>) -> Arc<Pod> {
    let v = json!({
        "metadata": {"name": name, "namespace": "plant",
                     "labels": {"app.kubernetes.io/name": "mqtt-proxy",
                                "app.kubernetes.io/instance": instance}},
        "status": {"podIP": ip,
                   "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
    });
    Arc::new(serde_json::from_value(v).expect("pod"))
}

#[test]
fn only_ready_pods_with_an_ip_of_this_proxy_are_asked() {
    let proxy = common::proxy(); // plant/factory, web port from the fixture
    let port = proxy.spec.web.port;
    let pods = vec![
        pod("factory-b", "factory", true, Some("10.0.0.2")),
        pod("factory-a", "factory", true, Some("10.0.0.1")),
        pod("factory-c", "factory", false, Some("10.0.0.3")),
        pod("factory-d", "factory", true, None),
        pod("other-a", "other", true, Some("10.0.0.9")),
    ];
    let got = ready_pods(&pods, &proxy);
    let want: Vec<(String, std::net::SocketAddr)> = vec![
        (
            "factory-a".into(),
            format!("10.0.0.1:{port}").parse().expect("addr"),
        ),
        (
            "factory-b".into(),
            format!("10.0.0.2:{port}").parse().expect("addr"),
        ),
    ];
    assert_eq!(got, want);
}

fn edge_script(status_reply: Option<Value>) -> Vec<(&'static str, String, Reply)> {
    let mut script = vec![(
        "GET",
        format!("{SECRETS}/mqtt-credentials"),
        Reply::Json(secret_json("mqtt-credentials")),
    )];
    if let Some(reply) = status_reply {
        script.push((
            "PATCH",
            "/apis/mqttproxy.io/v1alpha1/namespaces/plant/mqttbrokers/edge/status".into(),
            Reply::Json(reply),
        ));
    }
    script
}

#[tokio::test]
async fn broker_reconcile_writes_connected_once_then_not_again() {
    let edge = common::brokers()
        .into_iter()
        .find(|b| b.metadata.name.as_deref() == Some("edge"))
        .expect("edge");
    let proxy = common::proxy();
    let polls = round(
        "factory",
        "edge",
        vec![up(), down("unreachable", "refused")],
    );
    let prime = |ctx: &mqtt_proxy_operator::controller::Ctx| {
        let rounds = HashMap::from([(("plant".into(), "factory".into()), Some(polls.clone()))]);
        let (proxies, brokers) =
            ctx.health
                .apply_round(rounds, &[Arc::new(proxy.clone())], &common::brokers());
        assert_eq!(proxies.len(), 1, "a first round changes the proxy");
        assert!(brokers.iter().any(|b| b.name == "edge"), "and its brokers");
    };

    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (ctx, _w) = make_ctx(Client::new(svc, "default"));
    prime(&ctx);
    let task = serve(
        handle,
        edge_script(Some(serde_json::to_value(&*edge).expect("json"))),
    );
    reconcile_broker(edge.clone(), ctx)
        .await
        .expect("reconciles");
    let seen = finish(task).await;
    let st = &seen[1].body["status"];
    assert_eq!(st["connected"], "1/2");
    assert_eq!(
        st["proxies"],
        json!([{"name": "factory", "connected": 1, "total": 2}])
    );
    assert_eq!(st["lastError"], "factory-1: refused");
    let connected = st["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Connected")
        .expect("Connected");
    assert_eq!(
        (connected["status"].as_str(), connected["reason"].as_str()),
        (Some("False"), Some("PartiallyConnected"))
    );

    // The same health again, with that status in place: no write.
    let mut again = (*edge).clone();
    again.status = Some(serde_json::from_value(st.clone()).expect("status"));
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (ctx, _w) = make_ctx(Client::new(svc, "default"));
    prime(&ctx);
    let task = serve(handle, edge_script(None));
    reconcile_broker(Arc::new(again), ctx)
        .await
        .expect("reconciles");
    let seen = finish(task).await;
    assert!(
        seen.iter().all(|s| !s.path.ends_with("/status")),
        "{seen:?}"
    );
}

#[test]
fn rounds_report_only_what_changed() {
    let health = mqtt_proxy_operator::health::HealthIndex::default();
    let selected: BTreeSet<String> = ["cloud", "edge"].map(String::from).into();
    assert_eq!(
        health.proxy_summary("plant", "factory", &selected),
        None,
        "nothing known before the first round"
    );
    assert_eq!(health.broker_summary("plant", "edge"), None);
    let proxies = [Arc::new(common::proxy())];
    let brokers = common::brokers();
    let both = |edge: BrokerReport| PodPoll::Report {
        devices: 1,
        brokers: BTreeMap::from([("cloud".to_string(), up()), ("edge".to_string(), edge)]),
    };
    let round = |edge: BrokerReport| {
        let polls: ProxyPolls = BTreeMap::from([("factory-0".to_string(), both(edge))]);
        HashMap::from([(("plant".to_string(), "factory".to_string()), Some(polls))])
    };
    let (p, b) = health.apply_round(round(up()), &proxies, &brokers);
    assert_eq!(
        (p.len(), b.len()),
        (1, brokers.len()),
        "first round: every proxy and broker is new"
    );
    let (p, b) = health.apply_round(round(up()), &proxies, &brokers);
    assert_eq!(
        (p.len(), b.len()),
        (0, 0),
        "same answers: nothing to refresh"
    );
    let (p, b) = health.apply_round(round(down("unreachable", "refused")), &proxies, &brokers);
    let names: Vec<&str> = b.iter().map(|r| r.name.as_str()).collect();
    assert_eq!((p.len(), names), (1, vec!["edge"]), "only edge changed");
    let s = health.broker_summary("plant", "edge").expect("known");
    assert_eq!((s.reason, s.column().as_str()), ("Unreachable", "0/1"));
    let p = health
        .proxy_summary("plant", "factory", &selected)
        .expect("known");
    assert_eq!(p.brokers_column(), "1/2");
    // Its pods cannot be polled (no admin token): unknown, and the message says why.
    let unpollable = HashMap::from([(("plant".to_string(), "factory".to_string()), None)]);
    health.apply_round(unpollable, &proxies, &brokers);
    let s = health.broker_summary("plant", "edge").expect("known");
    assert_eq!((s.status, s.reason), ("Unknown", "StatusUnavailable"));
    assert!(s.message.contains("web.enabled is false"), "{}", s.message);
    let p = health
        .proxy_summary("plant", "factory", &selected)
        .expect("known");
    assert_eq!(p.brokers_column(), "?/2");
    // The proxy is gone: its brokers have no proxy pod left.
    let (_, b) = health.apply_round(HashMap::new(), &[], &brokers);
    assert_eq!(b.len(), 2, "the two brokers it selected: {b:?}");
    let s = health.broker_summary("plant", "cloud").expect("known");
    assert_eq!((s.status, s.reason), ("Unknown", "NoReadyProxyPods"));
}
