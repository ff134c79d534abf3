//! Validation: what is missing or wrong is named (object and key), selectors behave as
//! documented (absent selects none, `{}` all).

mod common;

use common::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use mqtt_proxy_operator::controller::validate::validate;
use mqtt_proxy_operator::crd::reason;

#[test]
fn missing_secret_is_named_with_its_user() {
    let mut inputs = inputs();
    inputs.secrets.remove("mqtt-credentials");
    let e = validate(&proxy(), &inputs, IMAGE).unwrap_err();
    assert_eq!(e.reason, reason::SECRET_NOT_FOUND);
    assert_eq!(
        e.message,
        "Secret plant/mqtt-credentials not found (referenced by MqttBroker plant/cloud credentialsSecretRef)"
    );
}

#[test]
fn missing_key_is_named() {
    let mut inputs = inputs();
    let s = inputs.secrets.get_mut("mqtt-credentials").expect("fixture");
    s.data.as_mut().expect("data").remove("edge-password");
    let e = validate(&proxy(), &inputs, IMAGE).unwrap_err();
    assert_eq!(e.reason, reason::SECRET_KEY_NOT_FOUND);
    assert_eq!(
        e.message,
        "Secret plant/mqtt-credentials has no key \"edge-password\" (referenced by MqttBroker plant/edge credentialsSecretRef)"
    );
    let mut inputs = common::inputs();
    inputs
        .secrets
        .get_mut("cloud-client")
        .expect("fixture")
        .string_data = Some([("tls.crt".to_string(), "x".to_string())].into());
    let e = validate(&proxy(), &inputs, IMAGE).unwrap_err();
    assert!(
        e.message.contains("cloud-client has no key \"tls.key\""),
        "{}",
        e.message
    );
}

#[test]
fn invalid_broker_field_is_reported_by_the_proxys_own_validation() {
    let mut inputs = inputs();
    let cloud = inputs
        .brokers
        .iter_mut()
        .find(|b| b.metadata.name.as_deref() == Some("cloud"));
    std::sync::Arc::make_mut(cloud.expect("fixture"))
        .spec
        .topics = vec!["a/#/b".into()];
    let e = validate(&proxy(), &inputs, IMAGE).unwrap_err();
    assert_eq!(e.reason, reason::INVALID_SPEC);
    assert!(
        e.message.starts_with("MqttBroker plant/cloud: "),
        "{}",
        e.message
    );
    assert!(e.message.contains("field `topics`"), "{}", e.message);
}

#[test]
fn absent_selector_selects_none_and_empty_selects_all_of_the_namespace() {
    let mut p = proxy();
    p.spec.broker_selector = None;
    assert!(validate(&p, &inputs(), IMAGE)
        .expect("valid")
        .brokers
        .is_empty());
    p.spec.broker_selector = Some(LabelSelector::default());
    let ids: Vec<String> = validate(&p, &inputs(), IMAGE)
        .expect("valid")
        .brokers
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(
        ids,
        ["cloud", "edge", "lab"],
        "not the broker of namespace `other`"
    );
}

#[test]
fn malformed_selector_is_an_invalid_spec() {
    let mut p = proxy();
    p.spec.broker_selector = Some(
        serde_json::from_value(serde_json::json!({
            "matchExpressions": [{"key": "fleet", "operator": "Near", "values": ["x"]}]
        }))
        .expect("parses"),
    );
    let e = validate(&p, &inputs(), IMAGE).unwrap_err();
    assert_eq!(e.reason, reason::INVALID_SPEC);
    assert!(e.message.contains("brokerSelector"), "{}", e.message);
}

#[test]
fn user_admin_token_is_referenced_not_copied() {
    let mut p = proxy();
    p.spec.web.admin_token_secret_ref = Some(
        serde_json::from_value(
            serde_json::json!({"name": "mqtt-credentials", "key": "edge-password"}),
        )
        .expect("parses"),
    );
    let v = validate(&p, &inputs(), IMAGE).expect("valid");
    let t = v.admin_token.expect("web enabled");
    assert_eq!(
        (t.secret_name.as_str(), t.key.as_str()),
        ("mqtt-credentials", "edge-password")
    );
    assert_eq!(
        t.owned_value, None,
        "the operator does not create a token Secret"
    );
    p.spec.web.enabled = false;
    assert_eq!(
        validate(&p, &inputs(), IMAGE).expect("valid").admin_token,
        None
    );
}
