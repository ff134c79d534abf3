//! What the proxy pods of an MqttProxy whose broker set mirrors (`mirror: true`) need to
//! run the mirror sessions on one pod only: a ServiceAccount, and a Role + RoleBinding that
//! let it take and renew the Lease `<name>-mirror` in its namespace (the proxy's
//! `--mirror-lease`, `mqtt_proxy::mirror_lease`). Without mirroring the pods get none of
//! it and no API token at all.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::child_meta;
use crate::controller::validate::ValidatedProxy;

/// The three objects, applied before the Deployment that uses them.
#[derive(Clone, Debug, PartialEq)]
pub struct MirrorRbac {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
}

/// Name of the mirror Lease of proxy `name`.
pub fn mirror_lease_name(name: &str) -> String {
    format!("{name}-mirror")
}

/// Name of the proxy pods' ServiceAccount, Role and RoleBinding.
pub fn proxy_account_name(name: &str) -> String {
    format!("{name}-proxy")
}

pub fn build_mirror_rbac(v: &ValidatedProxy) -> Option<MirrorRbac> {
    if !v.mirror {
        return None;
    }
    let name = proxy_account_name(&v.name);
    let lease = mirror_lease_name(&v.name);
    let rule = |verbs: &[&str], names: Option<Vec<String>>| PolicyRule {
        api_groups: Some(vec!["coordination.k8s.io".into()]),
        resources: Some(vec!["leases".into()]),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        resource_names: names,
        ..PolicyRule::default()
    };
    Some(MirrorRbac {
        service_account: ServiceAccount {
            metadata: child_meta(v, name.clone()),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        },
        role: Role {
            metadata: child_meta(v, name.clone()),
            rules: Some(vec![
                // `create` cannot be limited by name (the object does not exist yet).
                rule(&["create"], None),
                rule(&["get", "update"], Some(vec![lease])),
            ]),
        },
        role_binding: RoleBinding {
            metadata: child_meta(v, name.clone()),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: name.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name,
                namespace: Some(v.namespace.clone()),
                ..Subject::default()
            }]),
        },
    })
}
