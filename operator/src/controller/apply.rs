//! Server-side apply of a built [`Bundle`]: one field manager, forced (this operator owns
//! these objects), Secrets before the Deployment that mounts them. Applying an unchanged
//! object is a no-op on the server (no new resourceVersion, no watch event).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::build::{service_monitor_resource, Bundle, MirrorRbac};
use super::Error;

/// The one field manager of everything this operator writes.
pub const FIELD_MANAGER: &str = "mqtt-proxy-operator";

/// What the server answered that status needs.
pub struct Applied {
    pub deployment: Deployment,
}

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn ssa<K>(api: &Api<K>, obj: &K) -> Result<K, Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    Ok(api.patch(&name, &params(), &Patch::Apply(obj)).await?)
}

/// Deletes the ServiceMonitor `name` if the same MqttProxy controls it (owner uid as on
/// our other children), so disabling `serviceMonitor` removes what enabling created.
async fn prune_service_monitor(
    client: &Client,
    namespace: &str,
    name: &str,
    sibling: &Secret,
) -> Result<(), Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &service_monitor_resource());
    let Some(existing) = api.get_opt(name).await? else {
        return Ok(());
    };
    let owner_uid = |refs: &[OwnerReference]| {
        refs.iter()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone())
    };
    let ours = owner_uid(sibling.owner_references());
    if ours.is_some() && owner_uid(existing.owner_references()) == ours {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

pub async fn apply(client: &Client, namespace: &str, bundle: &Bundle) -> Result<Applied, Error> {
    let Bundle {
        admin_secret,
        brokers_secret,
        mirror_rbac,
        deployment,
        service,
        pdb,
        service_monitor,
        stale_service_monitor,
    } = bundle;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if let Some(s) = admin_secret {
        ssa(&secrets, s).await?;
    }
    ssa(&secrets, brokers_secret).await?;
    if let Some(MirrorRbac {
        service_account,
        role,
        role_binding,
    }) = mirror_rbac
    {
        ssa::<ServiceAccount>(&Api::namespaced(client.clone(), namespace), service_account).await?;
        ssa::<Role>(&Api::namespaced(client.clone(), namespace), role).await?;
        ssa::<RoleBinding>(&Api::namespaced(client.clone(), namespace), role_binding).await?;
    }
    let deployment = ssa(&Api::namespaced(client.clone(), namespace), deployment).await?;
    ssa::<Service>(&Api::namespaced(client.clone(), namespace), service).await?;
    if let Some(p) = pdb {
        ssa::<PodDisruptionBudget>(&Api::namespaced(client.clone(), namespace), p).await?;
    }
    if let Some(sm) = service_monitor {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &service_monitor_resource());
        let name = sm.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &params(), &Patch::Apply(sm)).await?;
    }
    if let Some(name) = stale_service_monitor {
        prune_service_monitor(client, namespace, name, brokers_secret).await?;
    }
    Ok(Applied { deployment })
}
