//! `MqttProxy`: a Deployment of proxy pods serving devices, fed the broker set its
//! `brokerSelector` picks. Scale subresource on `.spec.replicas`, so `kubectl scale` and
//! autoscalers work.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// A set of mqtt-proxy pods serving devices.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "mqttproxy.io",
    version = "v1alpha1",
    kind = "MqttProxy",
    plural = "mqttproxies",
    shortname = "mqp",
    namespaced,
    status = "MqttProxyStatus",
    derive = "PartialEq",
    doc = "A set of mqtt-proxy pods that forward device traffic to the selected MqttBrokers.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Brokers","type":"string","jsonPath":".status.brokers"}"#,
    printcolumn = r#"{"name":"Devices","type":"integer","jsonPath":".status.devices"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MqttProxySpec {
    /// How the proxies run: `Deployment` (default) renders a Deployment and Service;
    /// `Sidecar` renders no pods of its own: the operator's admission webhook injects the
    /// proxy into every pod of this namespace labelled `mqttproxy.io/inject: <this name>`,
    /// and the app reaches it on `localhost`. Needs the chart's `sidecar.enabled`. On
    /// Kubernetes 1.28+ the proxy is a native sidecar (an init container that starts
    /// before the app and stops after it); on older clusters, an extra container. The
    /// injected container is fixed when the pod is created: image, port or resource
    /// changes reach pods as the app rolls; broker changes hot-reload.
    #[serde(default)]
    pub mode: ProxyMode,
    /// Which MqttBrokers of this namespace the proxies forward to (a standard label
    /// selector). Absent selects none; `{}` selects all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_selector: Option<LabelSelector>,
    /// Number of proxy pods.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Proxy container image; defaults to this operator release's proxy image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The device-facing MQTT listener.
    #[serde(default)]
    pub mqtt: MqttSpec,
    /// The HTTP listener: web UI, admin API, /metrics, /healthz, /readyz.
    #[serde(default)]
    pub web: WebSpec,
    /// When devices get their PUBACK/PUBREC: `queued` (default), `any` or `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_policy: Option<AckPolicy>,
    /// Milliseconds a device's packets that follow its last batch closely are held, to be
    /// forwarded and acknowledged together (the proxy's `--coalesce-ms`): fewer writes per
    /// message for devices that publish fast, at most this much added latency. Off (0) by
    /// default; do not set it for devices that wait for each PUBACK before the next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub coalesce_ms: Option<u32>,
    /// Accept devices that send no username (the proxy's `--allow-anonymous`). Off by
    /// default: the proxy then refuses every device without a user, so it is never an open
    /// relay. Turn it on only where every device that can reach the Service is trusted.
    #[serde(default)]
    pub allow_anonymous: bool,
    /// Device users, from a Secret holding the proxy's users file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_users: Option<super::DeviceUsersSpec>,
    /// How pods name a device's sessions on the brokers: `Device` or `PerPod`. Default:
    /// `Device` with one replica, `PerPod` with more (so replicas never kick each other off
    /// a broker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_client_id: Option<super::UpstreamClientIdPolicy>,
    /// Seconds a stopping pod may spend delivering what it still holds upstream (the
    /// proxy's `--drain-timeout-secs`); the pod's termination grace period is this plus a
    /// margin, so Kubernetes never kills a pod mid-drain.
    #[serde(default = "default_drain_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub drain_timeout_seconds: u32,
    /// CPU and memory of the proxy container; defaults to small requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The Service in front of the pods.
    #[serde(default)]
    pub service: ServiceSpec,
    /// A Prometheus Operator ServiceMonitor for the pods' /metrics.
    #[serde(default)]
    pub service_monitor: ServiceMonitorSpec,
    /// Scheduling settings passed to the pod template.
    #[serde(default)]
    pub pod_template: PodTemplateSpec,
}

/// How an MqttProxy's proxies run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ProxyMode {
    /// A Deployment of proxy pods behind a Service (the default).
    #[default]
    Deployment,
    /// Injected into labelled application pods by the operator's admission webhook.
    Sidecar,
}

/// The device-facing MQTT listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttSpec {
    /// Port devices connect to (container and Service).
    #[serde(default = "default_mqtt_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

impl Default for MqttSpec {
    fn default() -> Self {
        Self {
            port: default_mqtt_port(),
        }
    }
}

/// The HTTP listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebSpec {
    /// Provision an admin token for the web UI and admin API. When false no token is given
    /// to the pods, so the admin API stays locked; /metrics and the probes are served anyway.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// HTTP port (container and Service).
    #[serde(default = "default_web_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Secret key holding the admin token. When absent the operator creates and owns a
    /// Secret `<name>-admin` with a random `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_secret_ref: Option<AdminTokenSecretRef>,
}

impl Default for WebSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            port: default_web_port(),
            admin_token_secret_ref: None,
        }
    }
}

/// The admin token's Secret and key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminTokenSecretRef {
    /// Name of the Secret (same namespace).
    pub name: String,
    /// Key holding the token.
    #[serde(default = "default_token_key")]
    pub key: String,
}

/// When a device's QoS 1/2 publish is acknowledged.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AckPolicy {
    /// Once the message is in every target broker's queue.
    Queued,
    /// Once at least one broker acknowledged it.
    Any,
    /// Once every target broker acknowledged it.
    All,
}

/// The Service in front of the proxy pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type: `ClusterIP` (default), `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ServiceType>,
    /// Annotations for the Service (load balancer settings and the like).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// Service type: `ClusterIP` (default), `NodePort` or `LoadBalancer`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// A cluster-internal virtual IP (the default).
    ClusterIP,
    /// Also a port on every node.
    NodePort,
    /// Also an external load balancer, where the cluster provides one.
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// A Prometheus Operator ServiceMonitor.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    /// Create the ServiceMonitor (skipped, with a condition saying so, when the cluster has
    /// no `monitoring.coreos.com/v1` ServiceMonitor CRD).
    #[serde(default)]
    pub enabled: bool,
    /// Labels on the ServiceMonitor; many Prometheus installs only pick up monitors with
    /// their `release` label.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Scrape interval, e.g. `30s`; Prometheus's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

/// Scheduling settings for the proxy pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateSpec {
    /// Node labels the pods must match.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// Node and pod affinity rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

/// Observed state of an MqttProxy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttProxyStatus {
    /// `Ready`, `ConfigApplied` and `Degraded` (also when a selected broker is disconnected
    /// from any ready pod; the message names it).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Pods of the Deployment.
    #[serde(default)]
    pub replicas: i32,
    /// Pods that pass their readiness probe.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Selected MqttBrokers every ready pod is connected to, of those rendered into the
    /// proxies' broker set, e.g. `2/3` (`?/3` while the pods were not polled).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub brokers: String,
    /// Devices connected, summed over the ready pods.
    #[serde(default)]
    pub devices: i64,
    /// Label selector of the pods (for the scale subresource, so a HorizontalPodAutoscaler
    /// can target an MqttProxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The `metadata.generation` the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn default_drain_timeout() -> u32 {
    5
}
fn default_replicas() -> i32 {
    1
}
fn default_mqtt_port() -> u16 {
    1883
}
fn default_web_port() -> u16 {
    3000
}
fn default_true() -> bool {
    true
}
fn default_token_key() -> String {
    "token".into()
}
