//! Pure builders: a [`ValidatedProxy`] in, the child objects out. No client, no async, no
//! clock: the same input always builds the same objects, which is what makes server-side
//! apply a no-op when nothing changed.

mod deployment;
mod pdb;
mod rbac;
mod secret;
mod service;
mod servicemonitor;

pub use deployment::{build_deployment, BROKERS_DIR, BROKERS_FILE};
pub use pdb::build_pdb;
pub use rbac::{build_mirror_rbac, mirror_lease_name, proxy_account_name, MirrorRbac};
pub use secret::{build_admin_secret, build_brokers_secret, BROKERS_KEY};
pub use service::build_service;
pub use servicemonitor::{build_service_monitor, service_monitor_resource};

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::DynamicObject;

use super::validate::ValidatedProxy;

/// `app.kubernetes.io/managed-by` of every child; also the watch filter for owned objects.
pub const MANAGED_BY: &str = "mqtt-proxy-operator";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

/// Everything one MqttProxy owns. `apply` destructures it without `..`, so a child added
/// here cannot be forgotten there.
#[derive(Clone, Debug, PartialEq)]
pub struct Bundle {
    /// Operator-created admin token (None when the user gives one or web is disabled).
    pub admin_secret: Option<Secret>,
    pub brokers_secret: Secret,
    /// The pods' ServiceAccount and Lease rights, only when the broker set mirrors.
    pub mirror_rbac: Option<MirrorRbac>,
    pub deployment: Deployment,
    pub service: Service,
    /// None with one replica, or when the cluster has no `policy/v1`.
    pub pdb: Option<PodDisruptionBudget>,
    /// None when disabled or the CRD is missing.
    pub service_monitor: Option<DynamicObject>,
    /// Name of a ServiceMonitor to delete if this proxy owns one (disabled, CRD present).
    pub stale_service_monitor: Option<String>,
}

pub fn build(v: &ValidatedProxy) -> Bundle {
    Bundle {
        admin_secret: build_admin_secret(v),
        brokers_secret: build_brokers_secret(v),
        mirror_rbac: build_mirror_rbac(v),
        deployment: build_deployment(v),
        service: build_service(v),
        pdb: build_pdb(v),
        service_monitor: build_service_monitor(v),
        stale_service_monitor: v.prune_service_monitor.then(|| v.name.clone()),
    }
}

/// Labels selecting one proxy's pods (immutable in a Deployment: keep them minimal).
pub fn selector_labels(v: &ValidatedProxy) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "mqtt-proxy".to_string(),
        ),
        (INSTANCE_LABEL.to_string(), v.name.clone()),
    ])
}

/// The recommended `app.kubernetes.io/*` labels of every child.
pub fn labels(v: &ValidatedProxy) -> BTreeMap<String, String> {
    let mut l = selector_labels(v);
    l.insert("app.kubernetes.io/component".into(), "proxy".into());
    l.insert("app.kubernetes.io/part-of".into(), "mqtt-proxy".into());
    l.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    l
}

/// Metadata of a child named `name`: namespace, labels, controller owner reference.
fn child_meta(v: &ValidatedProxy, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(v.namespace.clone()),
        labels: Some(labels(v)),
        owner_references: Some(vec![v.owner.clone()]),
        ..ObjectMeta::default()
    }
}
