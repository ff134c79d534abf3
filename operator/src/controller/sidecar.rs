//! Apply for `spec.mode: Sidecar`: the same rendered Secrets as a Deployment-mode proxy
//! (the injected sidecars mount `<name>-brokers` and read `<name>-admin`), but no pods of
//! its own. A Deployment, Service and ServiceMonitor this MqttProxy created while it was in
//! Deployment mode are deleted (only when their controller owner reference says ours).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use super::apply::FIELD_MANAGER;
use super::build::{service_monitor_resource, Bundle};
use super::Error;

pub async fn apply(client: &Client, namespace: &str, bundle: &Bundle) -> Result<(), Error> {
    let Bundle {
        admin_secret,
        brokers_secret,
        deployment,
        service,
        // A ServiceMonitor scrapes the Service's endpoints: none in Sidecar mode, so one
        // left from Deployment mode goes too (either field set means the CRD exists).
        service_monitor,
        stale_service_monitor,
        // The injected sidecars run under the app pod's own ServiceAccount, and a budget left
        // from Deployment mode selects proxy pods that no longer exist (it goes with the
        // MqttProxy through its owner reference): neither is applied here.
        mirror_rbac: _,
        pdb: _,
    } = bundle;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for s in admin_secret.iter().chain([brokers_secret]) {
        let name = s.metadata.name.clone().unwrap_or_default();
        secrets.patch(&name, &params, &Patch::Apply(s)).await?;
    }
    let owner = brokers_secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone());
    prune::<Deployment>(client, namespace, deployment, owner.as_deref()).await?;
    prune::<Service>(client, namespace, service, owner.as_deref()).await?;
    if service_monitor.is_some() || stale_service_monitor.is_some() {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &service_monitor_resource());
        let name = service.meta().name.clone().unwrap_or_default();
        if let Some(existing) = api.get_opt(&name).await? {
            if controlled_by(existing.meta(), owner.as_deref()) {
                delete(&api, &name).await?;
            }
        }
    }
    Ok(())
}

fn controlled_by(meta: &ObjectMeta, owner_uid: Option<&str>) -> bool {
    owner_uid.is_some_and(|uid| {
        meta.owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && o.uid == uid)
    })
}

async fn delete<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            tracing::info!(name, "deleted (MqttProxy now in Sidecar mode)");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Deletes the object `built` names if it exists and is controlled by `owner_uid`.
async fn prune<K>(
    client: &Client,
    namespace: &str,
    built: &K,
    owner_uid: Option<&str>,
) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let Some(name) = built.meta().name.as_deref() else {
        return Ok(());
    };
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await? {
        Some(existing) if controlled_by(existing.meta(), owner_uid) => delete(&api, name).await,
        _ => Ok(()),
    }
}
