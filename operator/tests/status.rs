//! Status computation (pure): `lastTransitionTime` moves only when a condition's status
//! flips, an invalid spec keeps the last observed counts, and an unchanged outcome yields
//! an identical status (so none is written).

use mqtt_proxy_operator::controller::status::{proxy_status, ProxyOutcome};
use mqtt_proxy_operator::controller::validate::Invalid;
use mqtt_proxy_operator::crd::{reason, MqttProxyStatus};

fn applied(ready: i32) -> ProxyOutcome {
    ProxyOutcome::Applied {
        brokers: 2,
        desired: 2,
        replicas: 2,
        ready,
        selector: "app=x".into(),
        degraded: None,
    }
}

fn cond<'a>(s: &'a MqttProxyStatus, t: &str) -> &'a mqtt_proxy_operator::crd::Condition {
    s.conditions.iter().find(|c| c.type_ == t).expect(t)
}

#[test]
fn transition_time_moves_only_on_a_flip() {
    let s1 = proxy_status(None, Some(1), &applied(0), "2026-01-01T00:00:00Z");
    assert_eq!(cond(&s1, "Ready").status, "False");
    let s2 = proxy_status(Some(&s1), Some(1), &applied(0), "2026-01-01T00:05:00Z");
    assert_eq!(s1, s2, "same outcome, same status: nothing to write");
    let s3 = proxy_status(Some(&s2), Some(1), &applied(2), "2026-01-01T00:10:00Z");
    assert_eq!(cond(&s3, "Ready").status, "True");
    assert_eq!(
        cond(&s3, "Ready").last_transition_time,
        "2026-01-01T00:10:00Z"
    );
    assert_eq!(
        cond(&s3, "ConfigApplied").last_transition_time,
        "2026-01-01T00:00:00Z",
        "ConfigApplied stayed True"
    );
    assert_eq!(
        (s3.replicas, s3.ready_replicas, s3.brokers.as_str()),
        (2, 2, "?/2")
    );
}

#[test]
fn invalid_spec_keeps_the_last_counts_and_says_why() {
    let good = proxy_status(None, Some(1), &applied(2), "2026-01-01T00:00:00Z");
    let inv = Invalid {
        reason: reason::SECRET_NOT_FOUND,
        message:
            "Secret plant/creds not found (referenced by MqttBroker plant/a credentialsSecretRef)"
                .into(),
    };
    let bad = proxy_status(
        Some(&good),
        Some(2),
        &ProxyOutcome::Invalid(inv),
        "2026-01-01T00:01:00Z",
    );
    let ready = cond(&bad, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "SecretNotFound")
    );
    assert!(ready.message.contains("plant/creds"));
    assert_eq!(ready.observed_generation, Some(2));
    let applied = cond(&bad, "ConfigApplied");
    assert!(applied
        .message
        .ends_with("the last applied configuration stays"));
    assert_eq!(
        cond(&bad, "Degraded"),
        cond(&good, "Degraded"),
        "carried over"
    );
    assert_eq!(
        (bad.replicas, bad.ready_replicas, bad.brokers.as_str()),
        (2, 2, "?/2")
    );
    assert_eq!(bad.observed_generation, Some(2));
}

#[test]
fn degraded_names_its_reason() {
    let out = ProxyOutcome::Applied {
        brokers: 0,
        desired: 1,
        replicas: 1,
        ready: 1,
        selector: "app=x".into(),
        degraded: Some((
            reason::NO_BROKERS_SELECTED,
            "brokerSelector selects no MqttBroker".into(),
        )),
    };
    let s = proxy_status(None, None, &out, "2026-01-01T00:00:00Z");
    let d = cond(&s, "Degraded");
    assert_eq!(
        (d.status.as_str(), d.reason.as_str()),
        ("True", "NoBrokersSelected")
    );
    assert_eq!(cond(&s, "Ready").status, "True");
}
