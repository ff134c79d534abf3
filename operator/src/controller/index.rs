//! Maps watch events to the objects to reconcile, from the reflector stores plus an index of
//! the brokers each proxy rendered last (so relabelling a broker *out* of a selector still
//! reaches the proxy that had it). Pure functions over in-memory state: no API calls.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::core::{PartialObjectMeta, Selector, SelectorExt};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use super::validate::{admin_secret_name, broker_secret_names};
use crate::crd::{MqttBroker, MqttProxy};

/// `(namespace, proxy)` → ids of the brokers in its last applied broker set.
#[derive(Default)]
pub struct RenderedIndex(Mutex<HashMap<(String, String), BTreeSet<String>>>);

impl RenderedIndex {
    pub fn set(&self, proxy: &MqttProxy, brokers: BTreeSet<String>) {
        let key = (proxy.namespace().unwrap_or_default(), proxy.name_any());
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, brokers);
    }

    /// The broker ids of `proxy`'s last applied set.
    pub fn brokers_of(&self, proxy: &MqttProxy) -> BTreeSet<String> {
        let key = (proxy.namespace().unwrap_or_default(), proxy.name_any());
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()
            .unwrap_or_default()
    }

    fn renders(&self, proxy: &MqttProxy, broker: &str) -> bool {
        let key = (proxy.namespace().unwrap_or_default(), proxy.name_any());
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .is_some_and(|s| s.contains(broker))
    }
}

/// Whether `proxy`'s selector picks `broker` now.
pub fn selects(proxy: &MqttProxy, broker: &MqttBroker) -> bool {
    let Some(sel) = &proxy.spec.broker_selector else {
        return false;
    };
    proxy.namespace() == broker.namespace()
        && Selector::try_from(sel.clone()).is_ok_and(|s| s.matches(broker.labels()))
}

/// Proxies that select `broker` now or rendered it last.
pub fn proxies_for_broker(
    proxies: &[Arc<MqttProxy>],
    rendered: &RenderedIndex,
    broker: &MqttBroker,
) -> Vec<ObjectRef<MqttProxy>> {
    let name = broker.name_any();
    proxies
        .iter()
        .filter(|p| p.namespace() == broker.namespace())
        .filter(|p| selects(p, broker) || rendered.renders(p, &name))
        .map(|p| ObjectRef::from_obj(&**p))
        .collect()
}

/// Proxies a Secret change concerns: the owner of a rendered child Secret, users of an
/// admin token or device users Secret, and the proxies of every broker that references it.
pub fn proxies_for_secret(
    proxies: &[Arc<MqttProxy>],
    brokers: &[Arc<MqttBroker>],
    rendered: &RenderedIndex,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<MqttProxy>> {
    let ns = secret.namespace();
    let name = secret.name_any();
    let users: Vec<&Arc<MqttBroker>> = brokers
        .iter()
        .filter(|b| b.namespace() == ns && broker_secret_names(b).contains(&name.as_str()))
        .collect();
    let owned_by = |p: &MqttProxy| {
        secret
            .owner_references()
            .iter()
            .any(|o| o.kind == "MqttProxy" && o.name == p.name_any() && o.controller == Some(true))
    };
    let token = |p: &MqttProxy| match &p.spec.web.admin_token_secret_ref {
        Some(r) => r.name == name,
        None => admin_secret_name(&p.name_any()) == name,
    };
    let device_users = |p: &MqttProxy| {
        p.spec
            .device_users
            .as_ref()
            .is_some_and(|u| u.secret_ref.name == name)
    };
    proxies
        .iter()
        .filter(|p| p.namespace() == ns)
        .filter(|p| {
            owned_by(p)
                || token(p)
                || device_users(p)
                || users
                    .iter()
                    .any(|b| selects(p, b) || rendered.renders(p, &b.name_any()))
        })
        .map(|p| ObjectRef::from_obj(&**p))
        .collect()
}

/// Brokers that reference `secret`.
pub fn brokers_for_secret(
    brokers: &[Arc<MqttBroker>],
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<MqttBroker>> {
    let ns = secret.namespace();
    let name = secret.name_any();
    brokers
        .iter()
        .filter(|b| b.namespace() == ns && broker_secret_names(b).contains(&name.as_str()))
        .map(|b| ObjectRef::from_obj(&**b))
        .collect()
}
