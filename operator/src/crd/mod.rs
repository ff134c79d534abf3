//! The custom resources: `MqttBroker` (one upstream broker) and `MqttProxy` (a set of proxy
//! pods), group `mqttproxy.io`, version `v1alpha1`. Their doc comments are what
//! `kubectl explain` shows, so they are written for users. Condition types and reasons are
//! constants here so the controller, the tests and the docs name them the same way.

mod broker;
mod proxy;
mod replicas;

pub use broker::*;
pub use proxy::*;
pub use replicas::*;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of both resources.
pub const GROUP: &str = "mqttproxy.io";
/// API version of both resources.
pub const VERSION: &str = "v1alpha1";

/// Condition types.
pub mod condition {
    /// MqttBroker: spec valid and every referenced Secret/key present.
    /// MqttProxy: config applied and every replica ready.
    pub const READY: &str = "Ready";
    /// MqttProxy: the rendered broker Secret and the children are applied.
    pub const CONFIG_APPLIED: &str = "ConfigApplied";
    /// MqttProxy: running, but something is off (a skipped ServiceMonitor, an invalid broker
    /// left out, replicas missing).
    pub const DEGRADED: &str = "Degraded";
    /// MqttBroker: every ready proxy pod forwarding to it is connected.
    pub const CONNECTED: &str = "Connected";
}

/// Condition reasons (CamelCase, as Kubernetes wants them).
pub mod reason {
    // Destination health (the `Connected` condition and `Degraded` on proxies).
    pub const CONNECTED: &str = "Connected";
    pub const PARTIALLY_CONNECTED: &str = "PartiallyConnected";
    pub const DISCONNECTED: &str = "Disconnected";
    pub const AUTH_FAILED: &str = "AuthFailed";
    pub const TLS_ERROR: &str = "TlsError";
    pub const UNREACHABLE: &str = "Unreachable";
    /// No ready proxy pod forwards to the broker, so nothing is known.
    pub const NO_READY_PODS: &str = "NoReadyProxyPods";
    /// The proxy pods' `/api/status` could not be read, so nothing is known.
    pub const STATUS_UNAVAILABLE: &str = "StatusUnavailable";
    /// `spec.enabled: false`: not expected to connect.
    pub const DISABLED: &str = "Disabled";
    pub const BROKERS_DISCONNECTED: &str = "BrokersDisconnected";

    pub const VALID: &str = "Valid";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const SECRET_KEY_NOT_FOUND: &str = "SecretKeyNotFound";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const APPLIED: &str = "Applied";
    pub const APPLY_FAILED: &str = "ApplyFailed";
    pub const REPLICAS_READY: &str = "ReplicasReady";
    pub const REPLICAS_NOT_READY: &str = "ReplicasNotReady";
    pub const AS_EXPECTED: &str = "AsExpected";
    pub const SERVICE_MONITOR_SKIPPED: &str = "ServiceMonitorSkipped";
    pub const BROKER_INVALID: &str = "BrokerInvalid";
    pub const NO_BROKERS_SELECTED: &str = "NoBrokersSelected";
    /// `replicas > 1` but the cluster serves no `policy/v1` PodDisruptionBudget.
    pub const PDB_SKIPPED: &str = "PodDisruptionBudgetSkipped";
}

/// A status condition, in the shape of `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type: `Ready`, `ConfigApplied`, `Degraded` or `Connected`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable CamelCase reason for the last transition.
    pub reason: String,
    /// Human-readable details; names the object and key when something is missing.
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
