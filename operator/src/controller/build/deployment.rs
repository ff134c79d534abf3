//! The proxy Deployment. Its pod template depends only on what needs a restart (image,
//! ports, ack policy, resources, scheduling, the admin token's hash): never on the broker set,
//! which reaches the pods through the mounted Secret directory and the proxy's hot reload
//! (the device users Secret too: mounted as a directory, reloaded by the proxy).
//!
//! Replicas: every pod gets its own instance id (its name, downward API), which the proxy
//! puts into its upstream client ids under `PerPod` (see `mqtt_proxy::client_id`), and a
//! termination grace period that covers the proxy's drain.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{child_meta, labels, mirror_lease_name, proxy_account_name, selector_labels};
use crate::controller::validate::{brokers_secret_name, ValidatedProxy};
use crate::crd::{AckPolicy, UpstreamClientIdPolicy};

/// Where the rendered Secret is mounted (a directory, never `subPath`: the kubelet only
/// updates directory mounts, by swapping their `..data` symlink).
pub const BROKERS_DIR: &str = "/etc/mqtt-proxy";
pub const BROKERS_FILE: &str = "/etc/mqtt-proxy/brokers.yaml";
/// Where the device users Secret is mounted (its own directory, beside the brokers one: a
/// mount inside the read-only brokers volume would need a mount point there).
pub const USERS_DIR: &str = "/etc/mqtt-proxy-users";
/// What a stopping pod needs beyond the upstream drain. On SIGTERM the proxy stops
/// accepting and drains device sessions and their upstreams (bounded by the drain timeout
/// plus 2 s), mirror sessions close alongside, then the mirror Lease is released (bounded
/// by 2 s): 10 s leave room for that and for the kubelet's own latency.
pub const GRACE_MARGIN_SECS: i64 = 10;
/// The proxy image's non-root user (Dockerfile).
const UID: i64 = 10001;
/// Pod template annotation that rolls the pods when the admin token changes.
pub const ADMIN_TOKEN_HASH_ANNOTATION: &str = "mqttproxy.io/admin-token-hash";

pub fn build_deployment(v: &ValidatedProxy) -> Deployment {
    let annotations = v
        .admin_token
        .as_ref()
        .map(|t| BTreeMap::from([(ADMIN_TOKEN_HASH_ANNOTATION.to_string(), t.hash.clone())]));
    let pt = &v.pod_template;
    Deployment {
        metadata: child_meta(v, v.name.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(v.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(v)),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(v)),
                    annotations,
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container(v)],
                    volumes: Some(volumes(v)),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(UID),
                        run_as_group: Some(UID),
                        fs_group: Some(UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..PodSecurityContext::default()
                    }),
                    // The proxy needs API access only to elect its mirroring pod.
                    automount_service_account_token: Some(v.mirror),
                    service_account_name: v.mirror.then(|| proxy_account_name(&v.name)),
                    // SIGTERM starts the drain; Kubernetes must not SIGKILL before it ends.
                    termination_grace_period_seconds: Some(
                        i64::from(v.drain_timeout_seconds) + GRACE_MARGIN_SECS,
                    ),
                    node_selector: (!pt.node_selector.is_empty()).then(|| pt.node_selector.clone()),
                    tolerations: (!pt.tolerations.is_empty()).then(|| pt.tolerations.clone()),
                    affinity: pt.affinity.clone(),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn container(v: &ValidatedProxy) -> Container {
    let port = |name: &str, port: u16| ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    let mut args = vec!["--brokers-file".to_string(), BROKERS_FILE.to_string()];
    if let Some(p) = v.ack_policy {
        args.extend(["--ack-policy".to_string(), ack_policy_arg(p).to_string()]);
    }
    if let Some(ms) = v.coalesce_ms {
        args.extend(["--coalesce-ms".to_string(), ms.to_string()]);
    }
    if v.allow_anonymous {
        args.push("--allow-anonymous".to_string());
    }
    let mut mounts = vec![
        VolumeMount {
            name: "brokers".into(),
            mount_path: BROKERS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "data".into(),
            mount_path: "/data".into(),
            ..VolumeMount::default()
        },
    ];
    if v.device_users.is_some() {
        mounts.push(VolumeMount {
            name: "users".into(),
            mount_path: USERS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    Container {
        name: "proxy".into(),
        image: Some(v.image.clone()),
        args: Some(args),
        env: Some(env(v)),
        ports: Some(vec![port("mqtt", v.mqtt_port), port("http", v.web_port)]),
        liveness_probe: Some(probe("/healthz", 10)),
        readiness_probe: Some(probe("/readyz", 5)),
        resources: Some(v.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

/// The proxy's own `--ack-policy` value, via its clap enum so a renamed value fails here.
fn ack_policy_arg(p: AckPolicy) -> String {
    use clap::ValueEnum;
    use mqtt_proxy::config::AckPolicy as P;
    let proxy = match p {
        AckPolicy::Queued => P::Queued,
        AckPolicy::Any => P::Any,
        AckPolicy::All => P::All,
    };
    proxy
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

fn env(v: &ValidatedProxy) -> Vec<EnvVar> {
    let plain = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    };
    let mut env = vec![
        plain("MQTT_PROXY_MQTT_LISTEN", format!("0.0.0.0:{}", v.mqtt_port)),
        plain("MQTT_PROXY_HTTP_LISTEN", format!("0.0.0.0:{}", v.web_port)),
        plain("MQTT_PROXY_DATA_DIR", "/data".into()),
        plain("MQTT_PROXY_LOG_FORMAT", "json".into()),
        EnvVar {
            name: "MQTT_PROXY_INSTANCE_ID".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: Some("v1".into()),
                    field_path: "metadata.name".into(),
                }),
                ..EnvVarSource::default()
            }),
        },
        plain(
            "MQTT_PROXY_UPSTREAM_CLIENT_ID",
            upstream_client_id_arg(v.upstream_client_id),
        ),
        plain(
            "MQTT_PROXY_DRAIN_TIMEOUT_SECS",
            v.drain_timeout_seconds.to_string(),
        ),
    ];
    if v.mirror {
        env.push(plain("MQTT_PROXY_MIRROR_LEASE", mirror_lease_name(&v.name)));
        env.push(plain(
            "MQTT_PROXY_MIRROR_LEASE_NAMESPACE",
            v.namespace.clone(),
        ));
    }
    if let Some(u) = &v.device_users {
        env.push(plain(
            "MQTT_PROXY_USERS_FILE",
            format!("{USERS_DIR}/{}", u.key),
        ));
    }
    if let Some(t) = &v.admin_token {
        env.push(EnvVar {
            name: "MQTT_PROXY_ADMIN_TOKEN".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: t.secret_name.clone(),
                    key: t.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        });
    }
    env
}

/// The proxy's own `--upstream-client-id` value, via its clap enum like `ack_policy_arg`.
fn upstream_client_id_arg(p: UpstreamClientIdPolicy) -> String {
    use clap::ValueEnum;
    use mqtt_proxy::client_id::UpstreamClientId as P;
    let proxy = match p {
        UpstreamClientIdPolicy::Device => P::Device,
        UpstreamClientIdPolicy::PerPod => P::Instance,
    };
    proxy
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

fn volumes(v: &ValidatedProxy) -> Vec<Volume> {
    let mut volumes = vec![
        Volume {
            name: "brokers".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(brokers_secret_name(&v.name)),
                // Owner root, group fsGroup: the non-root proxy reads through the group.
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "data".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    if let Some(u) = &v.device_users {
        volumes.push(Volume {
            name: "users".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(u.name.clone()),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    volumes
}

/// Small requests so the scheduler counts the pods; a memory limit, no CPU limit (CPU
/// throttling hurts latency more than it protects neighbours).
fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("50m".into())),
            ("memory".to_string(), Quantity("64Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("256Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}
