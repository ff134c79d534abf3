//! `MqttBroker`: one upstream broker. Its spec uses the proxy's broker-file field names, and
//! [`broker_config`] turns it into the proxy crate's own [`BrokerConfig`] by naming every
//! field on both sides (no `..`): a field added to either type fails to compile here until
//! it is mapped, so the CRD and the proxy cannot drift apart.

use std::path::PathBuf;

use kube::CustomResource;
use mqtt_proxy::broker::{BrokerConfig, MqttVersion, QueueLimits, Secret};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// One upstream MQTT broker. Selected into proxies by an MqttProxy's `brokerSelector`; the
/// resource's name is the broker's id.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "mqttproxy.io",
    version = "v1alpha1",
    kind = "MqttBroker",
    plural = "mqttbrokers",
    shortname = "mqb",
    namespaced,
    status = "MqttBrokerStatus",
    derive = "PartialEq",
    doc = "One upstream MQTT broker that MqttProxies forward device traffic to.",
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.address"}"#,
    printcolumn = r#"{"name":"Port","type":"integer","jsonPath":".spec.port"}"#,
    printcolumn = r#"{"name":"Bidirectional","type":"boolean","jsonPath":".spec.bidirectional"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Connected","type":"string","jsonPath":".status.connected"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MqttBrokerSpec {
    /// Host name or IP address of the broker, without scheme or port.
    pub address: String,
    /// TCP port of the broker (1883 plain, usually 8883 with TLS).
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Set to false to keep the broker defined but not connected.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Prepended to each device's client id on this broker (`{prefix}{device id}`).
    // Kubernetes 1.20 rejects an empty-string schema default, so none is emitted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_id_prefix: String,
    /// Username and password for this broker, from a Secret in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,
    /// Connect with TLS.
    #[serde(default)]
    pub use_tls: bool,
    /// Accept any server certificate (testing only; logged as a warning at every connect).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// CA bundle and client certificate for TLS, from Secrets in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BrokerTls>,
    /// Serve the devices' subscriptions from this broker and send its messages back to them.
    #[serde(default)]
    pub bidirectional: bool,
    /// Forward what the proxy receives on `subscriptionTopics` to the other brokers too
    /// (needs `bidirectional` and `subscriptionTopics`).
    #[serde(default)]
    pub mirror: bool,
    /// Only device publishes matching one of these topic filters go to this broker; empty
    /// means all.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Topic filters the proxy subscribes to on this broker (bidirectional); device
    /// subscriptions are intersected with them when set.
    #[serde(default)]
    pub subscription_topics: Vec<String>,
    /// Prepended to every topic sent to this broker and stripped from topics received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_prefix: Option<String>,
    /// Cap on the QoS used towards this broker (0, 1 or 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 2))]
    pub max_qos: Option<u8>,
    /// MQTT protocol version spoken to this broker: "3.1.1" (default) or "5".
    #[serde(default)]
    pub mqtt_version: MqttVersion,
    /// Queue limits while this broker is slow or down; unset fields use the proxy defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueLimits>,
    /// Keep queued QoS 1/2 messages on disk so they survive a proxy restart (the pod's
    /// `/data` volume).
    #[serde(default)]
    pub spool: bool,
}

/// Where the broker's username and password are.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of the Secret (same namespace as the MqttBroker).
    pub name: String,
    /// Key holding the username.
    #[serde(default = "default_username_key")]
    pub username_key: String,
    /// Key holding the password.
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

/// TLS material for a broker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerTls {
    /// PEM CA bundle to verify the broker with instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaSecretRef>,
    /// Client certificate for mutual TLS: a Secret of type `kubernetes.io/tls` (`tls.crt`,
    /// `tls.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_ref: Option<SecretNameRef>,
}

/// A CA bundle in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaSecretRef {
    /// Name of the Secret (same namespace).
    pub name: String,
    /// Key holding the PEM bundle.
    #[serde(default = "default_ca_key")]
    pub key: String,
}

/// A whole Secret by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretNameRef {
    /// Name of the Secret (same namespace).
    pub name: String,
}

/// Observed state of an MqttBroker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttBrokerStatus {
    /// `Ready`: the spec is valid and every referenced Secret and key exists.
    /// `Connected`: every ready proxy pod that forwards to this broker is connected to it
    /// (read from the pods' `/api/status` every ~10 s).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready proxy pods connected to this broker, of all ready pods that forward to it,
    /// e.g. `3/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected: Option<String>,
    /// The same per MqttProxy that selects this broker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxies: Vec<ProxyConnection>,
    /// The last connection error a disconnected proxy pod reported, with the pod's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Messages queued for this broker, summed over the proxy pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<i64>,
    /// Messages for this broker the proxy pods dropped since they started, summed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_total: Option<u64>,
}

/// How many ready pods of one MqttProxy are connected to a broker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConnection {
    /// Name of the MqttProxy (same namespace).
    pub name: String,
    /// Its ready pods connected to this broker.
    pub connected: i32,
    /// Its ready pods.
    pub total: i32,
}

pub const DEFAULT_USERNAME_KEY: &str = "username";
pub const DEFAULT_PASSWORD_KEY: &str = "password";
pub const DEFAULT_CA_KEY: &str = "ca.crt";
/// Keys of a `kubernetes.io/tls` Secret.
pub const TLS_CRT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";

fn default_port() -> u16 {
    1883
}
fn default_true() -> bool {
    true
}
fn default_username_key() -> String {
    DEFAULT_USERNAME_KEY.into()
}
fn default_password_key() -> String {
    DEFAULT_PASSWORD_KEY.into()
}
fn default_ca_key() -> String {
    DEFAULT_CA_KEY.into()
}

/// What the operator resolved from the broker's Secrets, ready to render.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedSecrets {
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Paths relative to the rendered `brokers.yaml` (keys of the same Secret).
    pub ca_cert_path: Option<PathBuf>,
    pub client_cert_path: Option<PathBuf>,
    pub client_key_path: Option<PathBuf>,
}

/// The proxy's broker definition for the MqttBroker named `id`.
///
/// Both structs are spelled out field by field on purpose: see the module docs.
pub fn broker_config(id: &str, spec: &MqttBrokerSpec, secrets: ResolvedSecrets) -> BrokerConfig {
    let MqttBrokerSpec {
        address,
        port,
        enabled,
        client_id_prefix,
        credentials_secret_ref: _,
        use_tls,
        insecure_skip_verify,
        tls: _,
        bidirectional,
        mirror,
        topics,
        subscription_topics,
        topic_prefix,
        max_qos,
        mqtt_version,
        queue,
        spool,
    } = spec;
    let ResolvedSecrets {
        username,
        password,
        ca_cert_path,
        client_cert_path,
        client_key_path,
    } = secrets;
    BrokerConfig {
        id: id.to_string(),
        name: id.to_string(),
        address: address.clone(),
        port: *port,
        client_id_prefix: client_id_prefix.clone(),
        username,
        password,
        // Inline in the rendered file instead: a password change then changes `brokers.yaml`
        // itself, which is what the proxy's hot reload fingerprints.
        password_file: None,
        enabled: *enabled,
        use_tls: *use_tls,
        insecure_skip_verify: *insecure_skip_verify,
        ca_cert_path,
        client_cert_path,
        client_key_path,
        bidirectional: *bidirectional,
        mirror: *mirror,
        topics: topics.clone(),
        subscription_topics: subscription_topics.clone(),
        topic_prefix: topic_prefix.clone(),
        max_qos: *max_qos,
        mqtt_version: *mqtt_version,
        queue: queue.clone(),
        spool: *spool,
    }
}
