//! Builders from CR YAML fixtures: whole objects compared with hand-written expected YAML,
//! the rendered broker Secret read back with the proxy's own loader, and the hot-reload
//! invariant (credentials change the Secret, never the pod template).

mod common;

use std::collections::BTreeMap;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use mqtt_proxy::broker::{BrokerConfig, MqttVersion, OverflowPolicy, QueueLimits, Secret as Pw};
use mqtt_proxy_operator::controller::build::{self, BROKERS_KEY};
use mqtt_proxy_operator::controller::validate::validate;

fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("serializes")
}

#[test]
fn deployment_is_built_whole() {
    let d = build::build_deployment(&validated());
    assert_eq!(json(&d), expected("deployment.yaml"));
}

#[test]
fn service_names_every_port_and_protocol() {
    let s = build::build_service(&validated());
    assert_eq!(json(&s), expected("service.yaml"));
}

#[test]
fn service_monitor_carries_the_spec_labels() {
    let sm = build::build_service_monitor(&validated()).expect("enabled and available");
    assert_eq!(json(&sm), expected("servicemonitor.yaml"));
}

#[test]
fn service_monitor_skipped_without_its_crd() {
    let mut inputs = inputs();
    inputs.service_monitor_available = Some(false);
    let v = validate(&proxy(), &inputs, IMAGE).expect("valid");
    assert!(build::build_service_monitor(&v).is_none());
    let why = v.service_monitor_skipped.expect("says why");
    assert!(why.contains("monitoring.coreos.com/v1"), "{why}");
}

/// Writes the Secret's keys into a directory, as the kubelet would, and loads
/// `brokers.yaml` with the proxy's own loader.
fn load_rendered(secret: &Secret) -> (tempfile::TempDir, Vec<BrokerConfig>) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (k, v) in secret.data.as_ref().expect("data") {
        std::fs::write(dir.path().join(k), &v.0).expect("writes");
    }
    let brokers =
        mqtt_proxy::store::load_brokers_file(&dir.path().join(BROKERS_KEY)).expect("loads");
    (dir, brokers)
}

#[test]
fn rendered_secret_loads_with_the_proxys_loader() {
    let secret = build::build_brokers_secret(&validated());
    assert_eq!(
        json(&secret.metadata),
        json(&build::build_deployment(&validated()).metadata)
            .as_object()
            .map(|m| {
                let mut m = m.clone();
                m.insert("name".into(), "factory-brokers".into());
                serde_json::Value::Object(m)
            })
            .expect("object"),
        "same labels and owner as the other children"
    );
    let keys: Vec<&str> = secret
        .data
        .as_ref()
        .expect("data")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "brokers.yaml",
            "cloud.ca.crt",
            "cloud.tls.crt",
            "cloud.tls.key"
        ]
    );
    let (dir, brokers) = load_rendered(&secret);
    let mut cloud = BrokerConfig::new("cloud", "mqtt.example.com", 8883);
    cloud.client_id_prefix = "factory-".into();
    cloud.username = Some("device-gateway".into());
    cloud.password = Some(Pw::new("s3cret-1"));
    cloud.use_tls = true;
    cloud.ca_cert_path = Some(dir.path().join("cloud.ca.crt"));
    cloud.client_cert_path = Some(dir.path().join("cloud.tls.crt"));
    cloud.client_key_path = Some(dir.path().join("cloud.tls.key"));
    cloud.topics = vec!["telemetry/#".into()];
    cloud.max_qos = Some(1);
    cloud.queue = Some(QueueLimits {
        max_messages: Some(500),
        max_bytes: None,
        overflow: Some(OverflowPolicy::DropNewest),
    });
    let mut edge = BrokerConfig::new("edge", "edge-broker.plant.svc", 1883);
    edge.username = Some("edge".into());
    edge.password = Some(Pw::new("s3cret-2"));
    edge.bidirectional = true;
    edge.subscription_topics = vec!["commands/#".into()];
    edge.mqtt_version = MqttVersion::V5;
    assert_eq!(brokers, vec![cloud, edge]);
    let ca = std::fs::read_to_string(dir.path().join("cloud.ca.crt")).expect("ca file");
    assert!(ca.contains("CA"), "{ca}");
}

#[test]
fn rotating_a_password_changes_the_secret_and_not_the_pod_template() {
    let before = validated();
    let mut inputs = inputs();
    let creds = inputs.secrets.get_mut("mqtt-credentials").expect("fixture");
    creds
        .data
        .as_mut()
        .expect("data")
        .insert("edge-password".into(), ByteString(b"rotated".to_vec()));
    let after = validate(&proxy(), &inputs, IMAGE).expect("valid");

    let (s1, s2) = (
        build::build_brokers_secret(&before),
        build::build_brokers_secret(&after),
    );
    assert_ne!(s1.data, s2.data, "the rendered Secret follows the password");
    let (_d, brokers) = load_rendered(&s2);
    assert_eq!(
        brokers[1].password.as_ref().map(Pw::expose),
        Some("rotated")
    );

    let t1 = serde_json::to_vec(
        &build::build_deployment(&before)
            .spec
            .expect("spec")
            .template,
    )
    .expect("serializes");
    let t2 = serde_json::to_vec(&build::build_deployment(&after).spec.expect("spec").template)
        .expect("serializes");
    assert_eq!(
        t1, t2,
        "pod template must be byte-identical so pods hot-reload"
    );
}

#[test]
fn a_broker_relabelled_out_leaves_the_set_and_not_the_pod_template() {
    let before = validated();
    let mut inputs = inputs();
    let edge = inputs
        .brokers
        .iter_mut()
        .find(|b| b.metadata.name.as_deref() == Some("edge"));
    let edge = std::sync::Arc::make_mut(edge.expect("fixture"));
    edge.metadata.labels = Some(BTreeMap::from([("fleet".into(), "lab".into())]));
    let after = validate(&proxy(), &inputs, IMAGE).expect("valid");
    let ids: Vec<_> = after.brokers.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, ["cloud"]);
    assert_eq!(
        build::build_deployment(&before).spec.map(|s| s.template),
        build::build_deployment(&after).spec.map(|s| s.template)
    );
}

#[test]
fn a_new_admin_token_rolls_the_pods() {
    let before = validated();
    let mut inputs = inputs();
    inputs.secrets.remove("factory-admin");
    let after = validate(&proxy(), &inputs, IMAGE).expect("valid");
    let admin = build::build_admin_secret(&after).expect("operator-owned token");
    assert_eq!(
        admin.data.expect("data").get("token").map(|v| v.0.clone()),
        Some(b"unused-new-token".to_vec()),
        "a fresh token only when none exists"
    );
    assert_ne!(
        build::build_deployment(&before).spec.map(|s| s.template),
        build::build_deployment(&after).spec.map(|s| s.template),
    );
}

#[test]
fn an_existing_admin_token_is_kept() {
    let admin = build::build_admin_secret(&validated()).expect("operator-owned");
    assert_eq!(
        admin.data.expect("data").get("token").map(|v| v.0.clone()),
        Some(b"admin-token".to_vec())
    );
}
