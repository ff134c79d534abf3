//! Pure validation: an MqttProxy, the MqttBrokers its selector picks and the Secrets they
//! reference become a [`ValidatedProxy`] (everything the builders need, resolved and
//! checked) or an [`Invalid`] naming the object and key at fault. No client, no async.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ResourceRequirements, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::core::{Selector, SelectorExt};
use kube::{Resource, ResourceExt};
use mqtt_proxy::broker::{BrokerConfig, Secret as Password};

use crate::crd::{
    broker_config, reason, AckPolicy, MqttBroker, MqttProxy, PodTemplateSpec, ProxyMode,
    ResolvedSecrets, ServiceMonitorSpec, ServiceSpec, UpstreamClientIdPolicy, UsersSecretRef,
    TLS_CRT_KEY, TLS_KEY_KEY,
};

/// Key of the operator-created admin token Secret.
pub const ADMIN_TOKEN_KEY: &str = "token";

/// Why a proxy (or broker) cannot be rendered: becomes `Ready=False` with this reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

impl Invalid {
    fn spec(message: String) -> Self {
        Self {
            reason: reason::INVALID_SPEC,
            message,
        }
    }
}

/// What reconcile read from the cluster for one MqttProxy.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Every MqttBroker of the proxy's namespace (from the reflector store).
    pub brokers: Vec<Arc<MqttBroker>>,
    /// The referenced Secrets that exist, by name (same namespace).
    pub secrets: BTreeMap<String, Secret>,
    /// A fresh random token, used only when the operator-owned admin Secret has none yet.
    pub new_admin_token: String,
    /// Whether the cluster serves `monitoring.coreos.com/v1` ServiceMonitors (`None`: not
    /// known).
    pub service_monitor_available: Option<bool>,
    /// Whether the cluster serves `policy/v1` PodDisruptionBudgets (`None`: not known).
    pub pdb_available: Option<bool>,
}

/// The admin token the pods get through `secretKeyRef`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminToken {
    pub secret_name: String,
    pub key: String,
    /// Set when the operator owns the Secret and must (re)apply it with this value.
    pub owned_value: Option<String>,
    /// Short hash of the token: a pod template annotation, so a new token rolls the pods
    /// (env vars are read once, at start).
    pub hash: String,
}

/// Everything the builders need, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedProxy {
    pub name: String,
    pub namespace: String,
    pub owner: OwnerReference,
    pub image: String,
    pub replicas: i32,
    pub mqtt_port: u16,
    pub web_port: u16,
    pub ack_policy: Option<AckPolicy>,
    pub coalesce_ms: Option<u32>,
    pub allow_anonymous: bool,
    /// The users file's Secret and key, checked to exist and to parse.
    pub device_users: Option<UsersSecretRef>,
    /// Resolved from the spec (its default depends on `replicas`).
    pub upstream_client_id: UpstreamClientIdPolicy,
    pub drain_timeout_seconds: u32,
    /// Some selected broker mirrors: the pods elect one mirroring pod over a Lease.
    pub mirror: bool,
    /// Build a PodDisruptionBudget: `replicas > 1` and the cluster serves `policy/v1`.
    pub pdb: bool,
    /// Why a PodDisruptionBudget is not built although `replicas > 1`.
    pub pdb_skipped: Option<String>,
    pub resources: Option<ResourceRequirements>,
    pub service: ServiceSpec,
    /// Some when enabled and the CRD exists.
    pub service_monitor: Option<ServiceMonitorSpec>,
    /// Why an enabled ServiceMonitor is not built (for the `Degraded` condition).
    pub service_monitor_skipped: Option<String>,
    /// Disabled while the CRD exists: remove the one we may have created before.
    pub prune_service_monitor: bool,
    pub pod_template: PodTemplateSpec,
    pub admin_token: Option<AdminToken>,
    /// The broker set, sorted by id, passwords inline.
    pub brokers: Vec<BrokerConfig>,
    /// `brokers` rendered by the proxy crate's own serializer.
    pub brokers_yaml: String,
    /// Further keys of the rendered Secret (TLS material), referenced by relative paths.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// One broker resolved against its Secrets.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedBroker {
    pub config: BrokerConfig,
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Names of the Secrets a broker references (credentials, CA, client certificate).
pub fn broker_secret_names(b: &MqttBroker) -> Vec<&str> {
    let s = &b.spec;
    let tls = s.tls.as_ref();
    [
        s.credentials_secret_ref.as_ref().map(|r| r.name.as_str()),
        tls.and_then(|t| t.ca_secret_ref.as_ref())
            .map(|r| r.name.as_str()),
        tls.and_then(|t| t.client_cert_secret_ref.as_ref())
            .map(|r| r.name.as_str()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The value of `key` in Secret `name`, or why not.
fn secret_value<'a>(
    secrets: &'a BTreeMap<String, Secret>,
    namespace: &str,
    name: &str,
    key: &str,
    user: &str,
) -> Result<&'a [u8], Invalid> {
    let Some(secret) = secrets.get(name) else {
        return Err(Invalid {
            reason: reason::SECRET_NOT_FOUND,
            message: format!("Secret {namespace}/{name} not found (referenced by {user})"),
        });
    };
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| &v.0[..]);
    // `stringData` is write-only on a real server; honoured for objects built by hand.
    let string = || {
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(String::as_bytes)
    };
    data.or_else(string).ok_or_else(|| Invalid {
        reason: reason::SECRET_KEY_NOT_FOUND,
        message: format!("Secret {namespace}/{name} has no key {key:?} (referenced by {user})"),
    })
}

fn utf8(bytes: &[u8], namespace: &str, name: &str, key: &str) -> Result<String, Invalid> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        Invalid::spec(format!(
            "Secret {namespace}/{name} key {key:?} is not UTF-8 text"
        ))
    })
}

/// Resolves one MqttBroker against the Secrets of its namespace and checks it with the
/// proxy's own validation. The file keys are `<broker>.ca.crt`, `<broker>.tls.crt`,
/// `<broker>.tls.key`.
pub fn resolve_broker(
    b: &MqttBroker,
    secrets: &BTreeMap<String, Secret>,
) -> Result<ResolvedBroker, Invalid> {
    let id = b.name_any();
    let ns = b.namespace().unwrap_or_default();
    let mut resolved = ResolvedSecrets::default();
    let mut files = BTreeMap::new();
    if let Some(r) = &b.spec.credentials_secret_ref {
        let user = format!("MqttBroker {ns}/{id} credentialsSecretRef");
        let u = secret_value(secrets, &ns, &r.name, &r.username_key, &user)?;
        let p = secret_value(secrets, &ns, &r.name, &r.password_key, &user)?;
        resolved.username = Some(utf8(u, &ns, &r.name, &r.username_key)?);
        resolved.password = Some(Password::new(utf8(p, &ns, &r.name, &r.password_key)?));
    }
    if let Some(tls) = &b.spec.tls {
        if let Some(r) = &tls.ca_secret_ref {
            let user = format!("MqttBroker {ns}/{id} tls.caSecretRef");
            let v = secret_value(secrets, &ns, &r.name, &r.key, &user)?;
            let file = format!("{id}.ca.crt");
            files.insert(file.clone(), v.to_vec());
            resolved.ca_cert_path = Some(PathBuf::from(file));
        }
        if let Some(r) = &tls.client_cert_secret_ref {
            let user = format!("MqttBroker {ns}/{id} tls.clientCertSecretRef");
            let crt = secret_value(secrets, &ns, &r.name, TLS_CRT_KEY, &user)?;
            let key = secret_value(secrets, &ns, &r.name, TLS_KEY_KEY, &user)?;
            let (crt_file, key_file) = (format!("{id}.tls.crt"), format!("{id}.tls.key"));
            files.insert(crt_file.clone(), crt.to_vec());
            files.insert(key_file.clone(), key.to_vec());
            resolved.client_cert_path = Some(PathBuf::from(crt_file));
            resolved.client_key_path = Some(PathBuf::from(key_file));
        }
    }
    let config = broker_config(&id, &b.spec, resolved);
    config
        .validate()
        .map_err(|e| Invalid::spec(format!("MqttBroker {ns}/{id}: {e}")))?;
    Ok(ResolvedBroker { config, files })
}

/// The MqttBrokers of the proxy's namespace its selector picks, sorted by name. Absent
/// selector: none; `{}`: all.
pub fn selected_brokers(
    proxy: &MqttProxy,
    brokers: &[Arc<MqttBroker>],
) -> Result<Vec<Arc<MqttBroker>>, Invalid> {
    let Some(sel) = &proxy.spec.broker_selector else {
        return Ok(Vec::new());
    };
    let selector = Selector::try_from(sel.clone()).map_err(|e| {
        Invalid::spec(format!(
            "MqttProxy {}/{}: brokerSelector: {e}",
            proxy.namespace().unwrap_or_default(),
            proxy.name_any()
        ))
    })?;
    let ns = proxy.namespace();
    let mut out: Vec<_> = brokers
        .iter()
        .filter(|b| b.namespace() == ns && selector.matches(b.labels()))
        .cloned()
        .collect();
    out.sort_by_key(|b| b.name_any());
    Ok(out)
}

/// Checks one MqttProxy against what was read; see the module docs.
pub fn validate(
    proxy: &MqttProxy,
    inputs: &Inputs,
    default_image: &str,
) -> Result<ValidatedProxy, Invalid> {
    let name = proxy.name_any();
    let namespace = proxy.namespace().unwrap_or_default();
    let owner = proxy
        .controller_owner_ref(&())
        .ok_or_else(|| Invalid::spec(format!("MqttProxy {namespace}/{name} has no uid yet")))?;
    let spec = &proxy.spec;
    if spec.mqtt.port == spec.web.port {
        return Err(Invalid::spec(format!(
            "MqttProxy {namespace}/{name}: mqtt.port and web.port are both {}",
            spec.mqtt.port
        )));
    }
    if let Some(ms) = spec.coalesce_ms.filter(|ms| *ms > 1000) {
        return Err(Invalid::spec(format!(
            "MqttProxy {namespace}/{name}: coalesceMs is {ms}; it must be between 0 and 1000"
        )));
    }
    let mut brokers = Vec::new();
    let mut files = BTreeMap::new();
    for b in selected_brokers(proxy, &inputs.brokers)? {
        let r = resolve_broker(&b, &inputs.secrets)?;
        brokers.push(r.config);
        files.extend(r.files);
    }
    let brokers_yaml = mqtt_proxy::store::render_brokers_file(&brokers)
        .map_err(|e| Invalid::spec(format!("rendering the broker set: {e}")))?;
    let admin_token = admin_token(proxy, &namespace, &name, inputs)?;
    let device_users = device_users(proxy, &namespace, &name, inputs)?;
    let (pdb, pdb_skipped) = match inputs.pdb_available {
        _ if spec.replicas <= 1 || spec.mode == ProxyMode::Sidecar => (false, None),
        Some(true) => (true, None),
        Some(false) | None => (
            false,
            Some(format!(
                "replicas is {} but the cluster serves no policy/v1 PodDisruptionBudget \
                 (Kubernetes < 1.21): voluntary evictions may take every pod at once",
                spec.replicas
            )),
        ),
    };
    let (service_monitor, service_monitor_skipped) = match inputs.service_monitor_available {
        _ if !spec.service_monitor.enabled => (None, None),
        Some(true) => (Some(spec.service_monitor.clone()), None),
        Some(false) | None => (
            None,
            Some(
                "serviceMonitor.enabled is true but the cluster has no \
                 monitoring.coreos.com/v1 ServiceMonitor CRD (install the Prometheus Operator)"
                    .to_string(),
            ),
        ),
    };
    Ok(ValidatedProxy {
        owner,
        image: spec
            .image
            .clone()
            .unwrap_or_else(|| default_image.to_string()),
        replicas: spec.replicas,
        mqtt_port: spec.mqtt.port,
        web_port: spec.web.port,
        ack_policy: spec.ack_policy,
        coalesce_ms: spec.coalesce_ms.filter(|ms| *ms > 0),
        allow_anonymous: spec.allow_anonymous,
        device_users,
        upstream_client_id: spec.upstream_client_id.unwrap_or(if spec.replicas > 1 {
            UpstreamClientIdPolicy::PerPod
        } else {
            UpstreamClientIdPolicy::Device
        }),
        drain_timeout_seconds: spec.drain_timeout_seconds,
        mirror: brokers.iter().any(|b| b.mirror),
        pdb,
        pdb_skipped,
        resources: spec.resources.clone(),
        service: spec.service.clone(),
        service_monitor,
        service_monitor_skipped,
        prune_service_monitor: !spec.service_monitor.enabled
            && inputs.service_monitor_available == Some(true),
        pod_template: spec.pod_template.clone(),
        admin_token,
        brokers,
        brokers_yaml,
        files,
        name,
        namespace,
    })
}

/// Name of the operator-owned admin token Secret.
pub fn admin_secret_name(proxy: &str) -> String {
    format!("{proxy}-admin")
}

/// Name of the rendered broker-set Secret.
pub fn brokers_secret_name(proxy: &str) -> String {
    format!("{proxy}-brokers")
}

fn admin_token(
    proxy: &MqttProxy,
    ns: &str,
    name: &str,
    inputs: &Inputs,
) -> Result<Option<AdminToken>, Invalid> {
    let web = &proxy.spec.web;
    if !web.enabled {
        return Ok(None);
    }
    if let Some(r) = &web.admin_token_secret_ref {
        let user = format!("MqttProxy {ns}/{name} web.adminTokenSecretRef");
        let v = secret_value(&inputs.secrets, ns, &r.name, &r.key, &user)?;
        return Ok(Some(AdminToken {
            secret_name: r.name.clone(),
            key: r.key.clone(),
            owned_value: None,
            hash: short_hash(v),
        }));
    }
    let secret_name = admin_secret_name(name);
    // Keep the token the operator made before; a new one only for a new proxy.
    let existing = inputs
        .secrets
        .get(&secret_name)
        .and_then(|s| s.data.as_ref()?.get(ADMIN_TOKEN_KEY))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .filter(|t| !t.is_empty());
    let value = existing.unwrap_or_else(|| inputs.new_admin_token.clone());
    Ok(Some(AdminToken {
        secret_name,
        key: ADMIN_TOKEN_KEY.into(),
        hash: short_hash(value.as_bytes()),
        owned_value: Some(value),
    }))
}

/// The device users Secret, when the spec names one: it must hold the key, and the key a
/// users file the proxy accepts (a proxy refuses to start on an invalid one).
fn device_users(
    proxy: &MqttProxy,
    ns: &str,
    name: &str,
    inputs: &Inputs,
) -> Result<Option<UsersSecretRef>, Invalid> {
    let Some(users) = &proxy.spec.device_users else {
        return Ok(None);
    };
    let r = &users.secret_ref;
    let user = format!("MqttProxy {ns}/{name} deviceUsers.secretRef");
    let v = secret_value(&inputs.secrets, ns, &r.name, &r.key, &user)?;
    let text = utf8(v, ns, &r.name, &r.key)?;
    let path = PathBuf::from(format!("{}/{}", r.name, r.key));
    mqtt_proxy::auth::Users::parse(&path, &text)
        .map_err(|e| Invalid::spec(format!("{user}: {e}")))?;
    Ok(Some(r.clone()))
}

/// First 16 hex digits of SHA-256: enough to notice a change, useless to guess the token.
fn short_hash(v: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(v);
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
