//! Apply for `spec.mode: Sidecar`: the same rendered Secrets as a Deployment-mode proxy
//! (the injected sidecars mount `<name>-brokers` and read `<name>-admin`), but no pods of
//! its own. A Deployment and Service this MqttProxy created while it was in Deployment mode
//! are deleted (only when its controller owner reference says they are ours).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use super::apply::FIELD_MANAGER;
use super::build::Bundle;
use super::Error;

pub async fn apply(client: &Client, namespace: &str, bundle: &Bundle) -> Result<(), Error> {
    let Bundle {
        admin_secret,
        brokers_secret,
        deployment,
        service,
        // A ServiceMonitor scrapes a Service's endpoints; sidecars have none to offer.
        service_monitor: _,
        stale_service_monitor: _,
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
    prune::<Service>(client, namespace, service, owner.as_deref()).await
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
    let (Some(name), Some(uid)) = (built.meta().name.as_deref(), owner_uid) else {
        return Ok(());
    };
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let Some(existing) = api.get_opt(name).await? else {
        return Ok(());
    };
    let ours = existing
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid);
    if ours {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => tracing::info!(name, "deleted (MqttProxy now in Sidecar mode)"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
