//! One AdmissionReview in, one out: which pods are injected, with which sidecar, and what
//! the API server is told otherwise. Pure, like the builders: the server looks up the
//! MqttProxy and hands the result here; the golden tests call the same functions.
//!
//! Every answer is `allowed: true`. The webhook only adds a container; refusing a pod
//! because its MqttProxy is missing or not in Sidecar mode would turn a configuration slip
//! into an outage of the app, so such pods are admitted unchanged with a warning (which
//! `kubectl` prints) saying why.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::ResourceExt;

use super::inject::{self, Placement, Sidecar};
use crate::controller::build::build_deployment;
use crate::controller::validate::{validate, Inputs};
use crate::crd::{MqttProxy, ProxyMode};

/// What the webhook decided for one pod (also the `result` label of its metric).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Patched.
    Injected,
    /// Not labelled, not a pod create, or already injected.
    Skipped,
    /// Labelled, but not injectable; the warning says why.
    Refused(String),
}

impl Decision {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Decision::Injected => "injected",
            Decision::Skipped => "skipped",
            Decision::Refused(_) => "refused",
        }
    }
}

/// The sidecar of `proxy`: its Deployment pod template, reshaped. `secrets` needs only the
/// user's `web.adminTokenSecretRef` Secret, if it names one (the operator-owned token is
/// referenced by name; its value is not needed here).
pub fn sidecar_for(
    proxy: &MqttProxy,
    secrets: BTreeMap<String, Secret>,
    default_image: &str,
) -> Result<Sidecar, String> {
    if proxy.spec.mode != ProxyMode::Sidecar {
        return Err(format!(
            "MqttProxy {}/{} is not in Sidecar mode (spec.mode: Sidecar)",
            proxy.namespace().unwrap_or_default(),
            proxy.name_any()
        ));
    }
    // Brokers reach the sidecar through the mounted Secret, never the pod spec: none needed.
    let inputs = Inputs {
        brokers: Vec::new(),
        secrets,
        new_admin_token: String::new(),
        service_monitor_available: Some(false),
        pdb_available: Some(false),
    };
    let valid = validate(proxy, &inputs, default_image).map_err(|i| i.message)?;
    let template = build_deployment(&valid)
        .spec
        .map(|s| s.template)
        .unwrap_or_default();
    inject::sidecar_from_template(&template).ok_or_else(|| "no proxy container built".into())
}

/// Whether a request concerns us at all, and for which MqttProxy.
pub fn wanted(req: &AdmissionRequest<Pod>) -> Option<&str> {
    if req.operation != Operation::Create {
        return None;
    }
    let pod = req.object.as_ref()?;
    inject::requested_proxy(pod).filter(|_| !inject::already_injected(pod))
}

/// The answer for `req`, given the sidecar of the MqttProxy the pod asks for.
pub fn respond(
    req: &AdmissionRequest<Pod>,
    sidecar: Result<Sidecar, String>,
    placement: Placement,
) -> (AdmissionResponse, Decision) {
    let res = AdmissionResponse::from(req);
    let (Some(proxy), Some(pod)) = (wanted(req), req.object.as_ref()) else {
        return (res, Decision::Skipped);
    };
    let refuse = |res: AdmissionResponse, why: String| {
        let mut res = res;
        res.warnings = Some(vec![format!("mqtt-proxy sidecar not injected: {why}")]);
        (res, Decision::Refused(why))
    };
    let sidecar = match sidecar {
        Ok(s) => s,
        Err(why) => return refuse(res, why),
    };
    let Some(ops) = inject::injection_patch(pod, proxy, &sidecar, placement) else {
        return (res, Decision::Skipped);
    };
    let patch = match serde_json::from_value::<json_patch::Patch>(serde_json::Value::Array(ops)) {
        Ok(p) => p,
        Err(e) => return refuse(res, format!("building the patch: {e}")),
    };
    match res.clone().with_patch(patch) {
        Ok(res) => (res, Decision::Injected),
        Err(e) => refuse(res, format!("serializing the patch: {e}")),
    }
}
