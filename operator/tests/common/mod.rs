//! Fixture loading shared by the operator's tests.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use mqtt_proxy_operator::controller::validate::{validate, Inputs, ValidatedProxy};
use mqtt_proxy_operator::crd::{MqttBroker, MqttProxy};
use serde::de::DeserializeOwned;

pub const IMAGE: &str = "ghcr.io/mqtt-proxy/mqtt-proxy:test";

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Every document of a multi-document YAML fixture.
pub fn load_all<T: DeserializeOwned>(name: &str) -> Vec<T> {
    let text = std::fs::read_to_string(fixture_path(name)).expect("fixture exists");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| T::deserialize(d).expect("fixture parses"))
        .collect()
}

pub fn load<T: DeserializeOwned>(name: &str) -> T {
    load_all(name).pop().expect("one document")
}

/// A fixture as JSON (for whole-object comparisons).
pub fn expected(name: &str) -> serde_json::Value {
    load(&format!("expected/{name}"))
}

pub fn proxy() -> MqttProxy {
    load("mqttproxy.yaml")
}

pub fn brokers() -> Vec<Arc<MqttBroker>> {
    load_all::<MqttBroker>("mqttbrokers.yaml")
        .into_iter()
        .map(Arc::new)
        .collect()
}

pub fn secrets() -> BTreeMap<String, Secret> {
    load_all::<Secret>("secrets.yaml")
        .into_iter()
        .map(|s| (s.name_any(), s))
        .collect()
}

pub fn inputs() -> Inputs {
    Inputs {
        brokers: brokers(),
        secrets: secrets(),
        new_admin_token: "unused-new-token".into(),
        service_monitor_available: Some(true),
        pdb_available: Some(true),
    }
}

pub fn validated() -> ValidatedProxy {
    validate(&proxy(), &inputs(), IMAGE).expect("fixtures are valid")
}
pub mod apiserver;
pub mod health;
