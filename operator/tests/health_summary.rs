//! Destination health, the pure part: the summaries (reasons, fractions, sums, messages) as
//! tables, and the status document parsed from the proxy's own `BrokerStatus` serialization
//! (so a renamed field fails here).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::health::{down, round, up};
use mqtt_proxy::brokerset::BrokerStatus;
use mqtt_proxy_operator::health::poll::parse_status;
use mqtt_proxy_operator::health::summary::{
    broker_summary, proxy_summary, reason_for, BrokerReport,
};
use mqtt_proxy_operator::health::{PodPoll, ProxyPolls};
use serde_json::json;

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
