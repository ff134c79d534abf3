//! The rendered broker set (`<proxy>-brokers`: `brokers.yaml` in the proxy's own file format
//! plus the TLS files it names by relative path) and the operator-created admin token.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;

use super::child_meta;
use crate::controller::validate::{admin_secret_name, brokers_secret_name, ValidatedProxy};

/// Key of the rendered broker file.
pub const BROKERS_KEY: &str = "brokers.yaml";

pub fn build_brokers_secret(v: &ValidatedProxy) -> Secret {
    let yaml = ByteString(v.brokers_yaml.clone().into_bytes());
    let mut data = BTreeMap::from([(BROKERS_KEY.to_string(), yaml)]);
    for (k, bytes) in &v.files {
        data.insert(k.clone(), ByteString(bytes.clone()));
    }
    Secret {
        metadata: child_meta(v, brokers_secret_name(&v.name)),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

pub fn build_admin_secret(v: &ValidatedProxy) -> Option<Secret> {
    let token = v.admin_token.as_ref()?;
    let value = token.owned_value.as_ref()?;
    Some(Secret {
        metadata: child_meta(v, admin_secret_name(&v.name)),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            token.key.clone(),
            ByteString(value.clone().into_bytes()),
        )])),
        ..Secret::default()
    })
}
