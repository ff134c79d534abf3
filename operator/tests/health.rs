//! Destination health through the operator: `lastTransitionTime` of `Connected` moving only
//! on a flip (and nothing changing before the poller's first round), ready-pod selection,
//! rounds reporting only what changed, and `reconcile_broker` against the mock API server
//! writing `Connected` once and not again while nothing changed.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use common::apiserver::*;
use common::health::{down, round, up};
use http::{Request, Response};
use k8s_openapi::api::core::v1::Pod;
use kube::client::Body;
use kube::Client;
use mqtt_proxy_operator::controller::reconcile_broker;
use mqtt_proxy_operator::controller::status::{
    broker_status, proxy_status, with_proxy_health, ProxyOutcome,
};
use mqtt_proxy_operator::health::summary::{broker_summary, proxy_summary, BrokerReport};
use mqtt_proxy_operator::health::{ready_pods, PodPoll, ProxyPolls};
use serde_json::{json, Value};

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

#[test]
fn sidecar_mode_asks_the_injected_application_pods() {
    let mut proxy = common::proxy();
    proxy.spec.mode = mqtt_proxy_operator::crd::ProxyMode::Sidecar;
    let port = proxy.spec.web.port;
    let app = |name: &str, inject: &str, injected: Option<&str>, ip: &str| {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "plant",
                         "labels": {"app.kubernetes.io/name": "my-app",
                                    "mqttproxy.io/inject": inject}},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
        });
        if let Some(by) = injected {
            v["metadata"]["annotations"] = json!({"mqttproxy.io/injected": by});
        }
        Arc::new(serde_json::from_value::<Pod>(v).expect("pod"))
    };
    let pods = vec![
        app("app-1", "factory", Some("factory"), "10.0.1.1"),
        // Labelled, but admitted without the webhook: no proxy inside.
        app("app-2", "factory", None, "10.0.1.2"),
        app("app-3", "other", Some("other"), "10.0.1.3"),
        // A Deployment-mode pod of the same name is not this proxy in Sidecar mode.
        pod("factory-a", "factory", true, Some("10.0.0.1")),
    ];
    let want: Vec<(String, std::net::SocketAddr)> = vec![(
        "app-1".into(),
        format!("10.0.1.1:{port}").parse().expect("addr"),
    )];
    assert_eq!(ready_pods(&pods, &proxy), want);
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

#[test]
fn proxy_health_folds_into_the_applied_status() {
    let applied = ProxyOutcome::Applied {
        brokers: 2,
        desired: 1,
        replicas: 1,
        ready: 1,
        selector: "app=x".into(),
        degraded: None,
    };
    let selected: BTreeSet<String> = ["cloud", "edge"].map(String::from).into();
    let pod = |edge: BrokerReport| PodPoll::Report {
        devices: 4,
        brokers: BTreeMap::from([("cloud".to_string(), up()), ("edge".to_string(), edge)]),
    };
    let polls = |edge| BTreeMap::from([("factory-0".to_string(), pod(edge))]);
    let summary = |p: &ProxyPolls| proxy_summary(&selected, Some(p));
    let status = |old: Option<&_>, h: Option<&_>, now: &str| {
        with_proxy_health(
            proxy_status(old, Some(1), &applied, now),
            old,
            h,
            Some(1),
            now,
        )
    };
    let degraded = |s: &mqtt_proxy_operator::crd::MqttProxyStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .cloned()
            .expect("Degraded")
    };
    let healthy = status(None, Some(&summary(&polls(up()))), "2026-01-01T00:00:00Z");
    assert_eq!((healthy.brokers.as_str(), healthy.devices), ("2/2", 4));
    assert_eq!(degraded(&healthy).status, "False");
    let down_ = summary(&polls(down("unreachable", "refused")));
    let broken = status(Some(&healthy), Some(&down_), "2026-01-01T00:00:10Z");
    let d = degraded(&broken);
    assert_eq!(
        (d.status.as_str(), d.reason.as_str()),
        ("True", "BrokersDisconnected")
    );
    assert!(d.message.contains("edge (0/1 pods)"), "{}", d.message);
    assert_eq!(d.last_transition_time, "2026-01-01T00:00:10Z");
    assert_eq!(broken.brokers, "1/2");
    let still = status(Some(&broken), Some(&down_), "2026-01-01T00:00:20Z");
    assert_eq!(still, broken, "unchanged: nothing to write");
    // A restarted operator, before its first round: the same status, so no write.
    let restarted = status(Some(&broken), None, "2026-01-01T00:00:30Z");
    assert_eq!(restarted, broken);
    // A brand-new proxy before any round: connected unknown.
    assert_eq!(status(None, None, "2026-01-01T00:00:00Z").brokers, "?/2");
}
