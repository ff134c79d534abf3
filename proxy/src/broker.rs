//! The upstream broker definition: one type shared by the JSON store, the hot-reload file
//! and (later) the Kubernetes operator, so the three can never drift apart.
//!
//! Field names are camelCase and a superset of the model's `data/brokers.json`, so an
//! existing file from it loads as is. Validation happens once, here, and names the field.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret string (a broker password). Its `Debug`/`Display` never show the value, so it
/// cannot leak through logs; it serializes as the plain value and only the store decides
/// whether that is encrypted before it touches a disk.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself. Call sites are few and deliberate: the upstream CONNECT and the store.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// MQTT protocol version spoken to a broker.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MqttVersion {
    #[default]
    #[serde(
        rename = "3.1.1",
        alias = "v3.1.1",
        alias = "4",
        alias = "v4",
        alias = "3"
    )]
    V311,
    #[serde(rename = "5", alias = "5.0", alias = "v5")]
    V5,
}

/// What a full queue does with one more message.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OverflowPolicy {
    /// Evict the oldest queued message to make room (the newest data wins).
    #[default]
    DropOldest,
    /// Refuse the new message (what is queued is kept).
    DropNewest,
}

/// Per-broker queue limits. `None` fields fall back to the proxy-wide defaults.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueueLimits {
    /// Most messages queued for this broker while it is slow or down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages: Option<usize>,
    /// Most payload bytes queued for this broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<usize>,
    /// What a full queue does with one more message: `dropOldest` (default) or `dropNewest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow: Option<OverflowPolicy>,
}

/// One upstream broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BrokerConfig {
    /// Stable identifier; also bound into the password's ciphertext.
    pub id: String,
    /// Human name shown in logs, metrics (`broker` label) and the UI.
    #[serde(default)]
    pub name: String,
    /// Host name or IP address of the broker.
    pub address: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Prepended to the device's client id on this broker (`{prefix}{device id}`).
    #[serde(default)]
    pub client_id_prefix: String,
    #[serde(
        default,
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub username: Option<String>,
    #[serde(
        default,
        deserialize_with = "empty_secret_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub password: Option<Secret>,
    /// Read the password from this file instead (Kubernetes Secret mounts).
    #[serde(
        default,
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default)]
    pub use_tls: bool,
    /// Accept any server certificate. Logged as a warning at every connect.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// PEM bundle of CA certificates used instead of the system roots.
    #[serde(
        default,
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub ca_cert_path: Option<PathBuf>,
    /// PEM client certificate chain for mutual TLS (with `clientKeyPath`).
    #[serde(
        default,
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_cert_path: Option<PathBuf>,
    #[serde(
        default,
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_key_path: Option<PathBuf>,
    /// Serve the device's subscriptions from this broker and send its messages back.
    #[serde(default)]
    pub bidirectional: bool,
    /// Forward what the proxy receives on `subscriptionTopics` to the other brokers too.
    #[serde(default)]
    pub mirror: bool,
    /// Only device publishes matching one of these filters go here; empty means all.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Filters the proxy subscribes to on this broker (bidirectional); device
    /// subscriptions are intersected with them when set.
    #[serde(default)]
    pub subscription_topics: Vec<String>,
    /// Prepended to every topic sent to this broker, stripped from topics received.
    #[serde(
        default,
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub topic_prefix: Option<String>,
    /// Cap on the QoS used towards this broker (0, 1 or 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_qos: Option<u8>,
    #[serde(default)]
    pub mqtt_version: MqttVersion,
    /// Queue limits while this broker is slow or down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueLimits>,
    /// Keep queued QoS>=1 messages on disk so they survive a proxy restart.
    #[serde(default)]
    pub spool: bool,
}

fn default_port() -> u16 {
    1883
}
fn default_true() -> bool {
    true
}

fn empty_as_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: From<String>,
{
    let s: Option<String> = Option::deserialize(d)?;
    Ok(s.filter(|s| !s.is_empty()).map(T::from))
}

fn empty_secret_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(s.filter(|s| !s.is_empty()).map(Secret))
}

/// A broker definition that failed validation; `field` is the camelCase field name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("broker {broker:?}: field `{field}`: {reason}")]
pub struct BrokerError {
    pub broker: String,
    pub field: &'static str,
    pub reason: String,
}

impl BrokerConfig {
    /// A minimal enabled broker (tests, CLI).
    pub fn new(id: impl Into<String>, address: impl Into<String>, port: u16) -> Self {
        let id = id.into();
        Self {
            name: id.clone(),
            id,
            address: address.into(),
            port,
            client_id_prefix: String::new(),
            username: None,
            password: None,
            password_file: None,
            enabled: true,
            use_tls: false,
            insecure_skip_verify: false,
            ca_cert_path: None,
            client_cert_path: None,
            client_key_path: None,
            bidirectional: false,
            mirror: false,
            topics: Vec::new(),
            subscription_topics: Vec::new(),
            topic_prefix: None,
            max_qos: None,
            mqtt_version: MqttVersion::V311,
            queue: None,
            spool: false,
        }
    }

    /// The name used in logs and metric labels.
    pub fn label(&self) -> &str {
        if self.name.is_empty() {
            &self.id
        } else {
            &self.name
        }
    }

    /// Checks every field once; the error names the first bad field.
    pub fn validate(&self) -> Result<(), BrokerError> {
        let err = |field: &'static str, reason: &str| BrokerError {
            broker: self.id.clone(),
            field,
            reason: reason.to_string(),
        };
        if self.id.trim().is_empty() {
            return Err(err("id", "must not be empty"));
        }
        if self.id.len() > 128 || self.id.chars().any(|c| c.is_control() || c == '/') {
            return Err(err(
                "id",
                "must be at most 128 printable characters without '/'",
            ));
        }
        if self.address.trim().is_empty() {
            return Err(err("address", "must not be empty"));
        }
        if self.address.contains("://") || self.address.contains(char::is_whitespace) {
            return Err(err(
                "address",
                "must be a host name or IP address, without scheme or spaces",
            ));
        }
        if self.port == 0 {
            return Err(err("port", "must be 1-65535"));
        }
        if self.client_id_prefix.len() > 64 {
            return Err(err("clientIdPrefix", "must be at most 64 bytes"));
        }
        if let Some(q) = self.max_qos {
            if q > 2 {
                return Err(err("maxQos", "must be 0, 1 or 2"));
            }
        }
        for f in &self.topics {
            if !crate::router::valid_filter(f) {
                return Err(err("topics", &format!("{f:?} is not a valid topic filter")));
            }
        }
        for f in &self.subscription_topics {
            if !crate::router::valid_filter(f) {
                return Err(err(
                    "subscriptionTopics",
                    &format!("{f:?} is not a valid topic filter"),
                ));
            }
        }
        if self.mirror && (!self.bidirectional || self.subscription_topics.is_empty()) {
            return Err(err(
                "mirror",
                "mirror needs bidirectional: true and subscriptionTopics (what to mirror)",
            ));
        }
        if let Some(p) = &self.topic_prefix {
            if p.contains(['+', '#', '\0']) {
                return Err(err("topicPrefix", "must not contain wildcards or NUL"));
            }
        }
        if self.client_cert_path.is_some() != self.client_key_path.is_some() {
            return Err(err(
                "clientCertPath",
                "clientCertPath and clientKeyPath go together",
            ));
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(err(
                "passwordFile",
                "give either password or passwordFile, not both",
            ));
        }
        if let Some(q) = &self.queue {
            if q.max_messages == Some(0) {
                return Err(err("queue.maxMessages", "must be at least 1"));
            }
            if q.max_bytes == Some(0) {
                return Err(err("queue.maxBytes", "must be at least 1"));
            }
        }
        Ok(())
    }

    /// Effective QoS towards this broker for a message published with `qos`.
    pub fn cap_qos(&self, qos: u8) -> u8 {
        self.max_qos.map_or(qos, |m| qos.min(m))
    }
}

/// Checks a whole broker set: each broker valid, ids unique.
pub fn validate_set(brokers: &[BrokerConfig]) -> Result<(), BrokerError> {
    let mut seen = std::collections::HashSet::new();
    for b in brokers {
        b.validate()?;
        if !seen.insert(b.id.as_str()) {
            return Err(BrokerError {
                broker: b.id.clone(),
                field: "id",
                reason: "duplicate id".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_models_format() {
        let json = r#"{"id":"b1","name":"home","address":"10.0.0.2","port":1883,
            "clientIdPrefix":"p-","username":"","password":"","enabled":true,"useTls":false,
            "insecureSkipVerify":false,"caCertPath":"","bidirectional":false,
            "topics":[],"subscriptionTopics":[]}"#;
        let b: BrokerConfig = serde_json::from_str(json).expect("parses");
        assert_eq!(b.username, None);
        assert_eq!(b.password, None);
        assert_eq!(b.ca_cert_path, None);
        assert_eq!(b.client_id_prefix, "p-");
        assert!(b.validate().is_ok());
    }

    #[test]
    fn unknown_field_is_an_error() {
        let json = r#"{"id":"b1","address":"h","topicprefix":"x"}"#;
        let e = serde_json::from_str::<BrokerConfig>(json)
            .unwrap_err()
            .to_string();
        assert!(e.contains("topicprefix"), "{e}");
    }

    #[test]
    fn validation_names_the_field() {
        let mut b = BrokerConfig::new("b", "h", 1883);
        b.max_qos = Some(3);
        assert_eq!(b.validate().unwrap_err().field, "maxQos");
        let mut b = BrokerConfig::new("b", "h", 1883);
        b.topics = vec!["a/#/b".into()];
        assert_eq!(b.validate().unwrap_err().field, "topics");
        let b = BrokerConfig::new("b", "", 1883);
        assert_eq!(b.validate().unwrap_err().field, "address");
        let dup = vec![
            BrokerConfig::new("b", "h", 1),
            BrokerConfig::new("b", "h", 2),
        ];
        assert_eq!(validate_set(&dup).unwrap_err().reason, "duplicate id");
    }

    #[test]
    fn secret_is_never_printed() {
        let mut b = BrokerConfig::new("b", "h", 1883);
        b.password = Some(Secret::new("hunter2"));
        assert!(!format!("{b:?}").contains("hunter2"));
    }
}
