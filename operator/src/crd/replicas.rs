//! Parts of the MqttProxy spec about running several proxy pods side by side (how their
//! upstream client ids stay apart, how long a pod drains) and about the device users file
//! the pods share. Kept apart from `proxy.rs` so the spec's top level stays readable.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How each proxy pod names a device's sessions on the brokers (a broker allows one
/// connection per client id; two pods using the same one kick each other off).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum UpstreamClientIdPolicy {
    /// `{clientIdPrefix}{device id}`: the broker keeps the device's persistent session
    /// whichever pod serves it. With more than one replica the Service then pins each
    /// client address to one pod (`sessionAffinity: ClientIP`), so the same device does not
    /// reach two pods at once.
    Device,
    /// `{clientIdPrefix}{device id}@{pod name}`: pods never collide, whatever the load
    /// balancer does; a device's broker-side persistent session belongs to the pod that made
    /// it. The default with more than one replica.
    PerPod,
}

/// Device users from a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceUsersSpec {
    /// The Secret key holding the users file (`mqtt-proxy users add --users-file` writes
    /// that format: Argon2id hashes and per-user ACLs). Mounted read-only into every pod;
    /// the proxies reload it when the Secret changes, without a restart.
    pub secret_ref: UsersSecretRef,
}

/// A Secret and the key holding the users file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsersSecretRef {
    /// Name of the Secret (same namespace).
    pub name: String,
    /// Key holding the users file.
    #[serde(default = "default_users_key")]
    pub key: String,
}

fn default_users_key() -> String {
    "users.json".into()
}
