//! Builders and validation for running several proxy replicas (upstream client id policy,
//! session affinity, PodDisruptionBudget, grace period) and for the device users Secret
//! (mounted, pointed at by `MQTT_PROXY_USERS_FILE`, validated, watched), and the proxy
//! settings passed as arguments (`coalesceMs`).

mod common;

use std::collections::BTreeMap;

use common::*;
use k8s_openapi::api::core::v1::{Container, PodSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use mqtt_proxy_operator::controller::build;
use mqtt_proxy_operator::controller::index::proxies_for_secret;
use mqtt_proxy_operator::controller::validate::{validate, Inputs, ValidatedProxy};
use mqtt_proxy_operator::controller::RenderedIndex;
use mqtt_proxy_operator::crd::{
    reason, DeviceUsersSpec, MqttProxy, UpstreamClientIdPolicy, UsersSecretRef,
};

fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("serializes")
}

fn with(f: impl FnOnce(&mut MqttProxy)) -> MqttProxy {
    let mut p = proxy();
    f(&mut p);
    p
}

fn valid(p: &MqttProxy) -> ValidatedProxy {
    validate(p, &inputs(), IMAGE).expect("valid")
}

fn pod(v: &ValidatedProxy) -> PodSpec {
    build::build_deployment(v)
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec")
}

fn proxy_container(v: &ValidatedProxy) -> Container {
    pod(v).containers.remove(0)
}

fn env_value(c: &Container, name: &str) -> Option<String> {
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

#[test]
fn pdb_is_built_whole_for_two_replicas() {
    let pdb = build::build_pdb(&validated()).expect("replicas: 2");
    assert_eq!(json(&pdb), expected("pdb.yaml"));
    assert_eq!(build::build(&validated()).pdb, Some(pdb));
}

#[test]
fn one_replica_needs_no_pdb_and_no_discovery() {
    let p = with(|p| p.spec.replicas = 1);
    let mut i = inputs();
    i.pdb_available = None; // reconcile does not ask with one replica
    let v = validate(&p, &i, IMAGE).expect("valid");
    assert!(build::build_pdb(&v).is_none());
    assert_eq!(v.pdb_skipped, None);
}

#[test]
fn pdb_skipped_with_a_reason_without_policy_v1() {
    let mut i = inputs();
    i.pdb_available = Some(false);
    let v = validate(&proxy(), &i, IMAGE).expect("still valid");
    assert!(build::build_pdb(&v).is_none());
    let why = v.pdb_skipped.expect("says why");
    assert!(why.contains("policy/v1"), "{why}");
    assert!(!reason::PDB_SKIPPED.is_empty());
}

#[test]
fn client_id_policy_defaults_by_replicas() {
    let one = valid(&with(|p| p.spec.replicas = 1));
    assert_eq!(one.upstream_client_id, UpstreamClientIdPolicy::Device);
    assert_eq!(
        env_value(&proxy_container(&one), "MQTT_PROXY_UPSTREAM_CLIENT_ID").as_deref(),
        Some("device")
    );
    let two = valid(&proxy());
    assert_eq!(two.upstream_client_id, UpstreamClientIdPolicy::PerPod);
    assert_eq!(
        env_value(&proxy_container(&two), "MQTT_PROXY_UPSTREAM_CLIENT_ID").as_deref(),
        Some("instance")
    );
    // Per-pod ids need no affinity; the instance id is the pod's name.
    let svc = build::build_service(&two).spec.expect("spec");
    assert_eq!(svc.session_affinity, None);
    let c = proxy_container(&two);
    let instance = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "MQTT_PROXY_INSTANCE_ID")
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .map(|f| f.field_path.clone());
    assert_eq!(instance.as_deref(), Some("metadata.name"));
}

#[test]
fn device_ids_with_replicas_pin_devices_to_a_pod() {
    let v = valid(&with(|p| {
        p.spec.upstream_client_id = Some(UpstreamClientIdPolicy::Device)
    }));
    let svc = build::build_service(&v).spec.expect("spec");
    assert_eq!(svc.session_affinity.as_deref(), Some("ClientIP"));
    let one = valid(&with(|p| {
        p.spec.replicas = 1;
        p.spec.upstream_client_id = Some(UpstreamClientIdPolicy::Device);
    }));
    assert_eq!(
        build::build_service(&one)
            .spec
            .expect("spec")
            .session_affinity,
        None
    );
}

#[test]
fn grace_period_covers_the_proxys_drain() {
    // The CRD default is the proxy's own default drain timeout.
    let proxy_default = mqtt_proxy::config::Config::default().session.drain_timeout;
    assert_eq!(
        u64::from(proxy().spec.drain_timeout_seconds),
        proxy_default.as_secs()
    );
    let v = valid(&with(|p| p.spec.drain_timeout_seconds = 30));
    assert_eq!(
        env_value(&proxy_container(&v), "MQTT_PROXY_DRAIN_TIMEOUT_SECS").as_deref(),
        Some("30")
    );
    assert_eq!(pod(&v).termination_grace_period_seconds, Some(40));
}

const USERS_SECRET: &str = "device-users";

fn users_proxy() -> MqttProxy {
    with(|p| {
        p.spec.device_users = Some(DeviceUsersSpec {
            secret_ref: UsersSecretRef {
                name: USERS_SECRET.into(),
                key: "users.json".into(),
            },
        })
    })
}

fn users_inputs(key: &str, text: &str) -> Inputs {
    let mut i = inputs();
    i.secrets.insert(
        USERS_SECRET.into(),
        Secret {
            metadata: ObjectMeta {
                name: Some(USERS_SECRET.into()),
                namespace: Some("plant".into()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                key.to_string(),
                ByteString(text.as_bytes().to_vec()),
            )])),
            ..Secret::default()
        },
    );
    i
}

fn users_file() -> String {
    let hash = mqtt_proxy::auth::users::hash_password("device-pw").expect("hashes");
    serde_json::json!({"users": {"sensor-1": {"password": hash}}}).to_string()
}

#[test]
fn device_users_secret_is_mounted_read_only_as_the_users_file() {
    let v = validate(
        &users_proxy(),
        &users_inputs("users.json", &users_file()),
        IMAGE,
    )
    .expect("valid");
    let spec = pod(&v);
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|vol| vol.name == "users")
        .expect("users volume");
    assert_eq!(
        volume
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref()),
        Some(USERS_SECRET)
    );
    let c = &spec.containers[0];
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "users")
        .expect("users mount");
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(
        env_value(c, "MQTT_PROXY_USERS_FILE"),
        Some(format!("{}/users.json", mount.mount_path))
    );
    // Without deviceUsers nothing of it is rendered.
    assert!(env_value(&proxy_container(&validated()), "MQTT_PROXY_USERS_FILE").is_none());
}

#[test]
fn device_users_secret_problems_are_named() {
    let missing = validate(&users_proxy(), &inputs(), IMAGE).expect_err("no Secret");
    assert_eq!(missing.reason, reason::SECRET_NOT_FOUND);
    assert!(
        missing.message.contains("deviceUsers"),
        "{}",
        missing.message
    );

    let no_key = validate(&users_proxy(), &users_inputs("other", "{}"), IMAGE).expect_err("no key");
    assert_eq!(no_key.reason, reason::SECRET_KEY_NOT_FOUND);

    let plain = r#"{"users": {"sensor-1": {"password": "not-a-hash"}}}"#;
    let bad = validate(&users_proxy(), &users_inputs("users.json", plain), IMAGE)
        .expect_err("plain password");
    assert_eq!(bad.reason, reason::INVALID_SPEC);
    assert!(!bad.message.contains("not-a-hash"), "{}", bad.message);
}

#[test]
fn a_users_secret_change_reaches_its_proxy() {
    let p = std::sync::Arc::new(users_proxy());
    let meta = PartialObjectMeta::<Secret> {
        metadata: ObjectMeta {
            name: Some(USERS_SECRET.into()),
            namespace: Some("plant".into()),
            ..ObjectMeta::default()
        },
        ..Default::default()
    };
    let hit = proxies_for_secret(
        std::slice::from_ref(&p),
        &[],
        &RenderedIndex::default(),
        &meta,
    );
    assert_eq!(hit, vec![ObjectRef::from_obj(&*p)]);
    let other = std::sync::Arc::new(proxy());
    let miss = proxies_for_secret(&[other], &[], &RenderedIndex::default(), &meta);
    assert!(miss.is_empty());
}

/// With a mirroring broker in the set, the pods get an account that may take exactly their
/// mirror Lease, and the proxy is told to elect over it; without, no token at all.
#[test]
fn mirroring_brokers_get_the_pods_a_lease_account() {
    let mut i = inputs();
    i.brokers = i
        .brokers
        .into_iter()
        .map(|b| {
            let mut b = (*b).clone();
            if b.metadata.name.as_deref() == Some("edge") {
                b.spec.mirror = true;
            }
            std::sync::Arc::new(b)
        })
        .collect();
    let v = validate(&proxy(), &i, IMAGE).expect("valid");
    let rbac = build::build_mirror_rbac(&v).expect("mirroring");
    assert_eq!(
        rbac.service_account.metadata.name.as_deref(),
        Some("factory-proxy")
    );
    let rules = rbac.role.rules.clone().expect("rules");
    assert!(rules
        .iter()
        .all(|r| r.resources.as_deref() == Some(&["leases".to_string()][..])));
    let named = rules
        .iter()
        .find(|r| r.verbs.contains(&"update".to_string()))
        .expect("update rule");
    assert_eq!(
        named.resource_names.as_deref(),
        Some(&["factory-mirror".to_string()][..])
    );
    assert_eq!(rbac.role_binding.role_ref.name, "factory-proxy");
    let spec = pod(&v);
    assert_eq!(spec.service_account_name.as_deref(), Some("factory-proxy"));
    assert_eq!(spec.automount_service_account_token, Some(true));
    let c = &spec.containers[0];
    assert_eq!(
        env_value(c, "MQTT_PROXY_MIRROR_LEASE").as_deref(),
        Some("factory-mirror")
    );
    assert_eq!(
        env_value(c, "MQTT_PROXY_MIRROR_LEASE_NAMESPACE").as_deref(),
        Some("plant")
    );
    assert_eq!(build::build(&v).mirror_rbac, Some(rbac));

    let plain = validated();
    assert!(build::build_mirror_rbac(&plain).is_none());
    assert_eq!(pod(&plain).automount_service_account_token, Some(false));
    assert!(env_value(&proxy_container(&plain), "MQTT_PROXY_MIRROR_LEASE").is_none());
}

#[test]
fn coalescing_reaches_the_proxy_arguments_and_is_bounded() {
    let args = |v: &ValidatedProxy| proxy_container(v).args.unwrap_or_default();
    let off = args(&valid(&proxy()));
    assert!(!off.iter().any(|a| a == "--coalesce-ms"), "{off:?}");
    let zero = args(&valid(&with(|p| p.spec.coalesce_ms = Some(0))));
    assert!(
        !zero.iter().any(|a| a == "--coalesce-ms"),
        "0 is off: {zero:?}"
    );
    let on = args(&valid(&with(|p| p.spec.coalesce_ms = Some(5))));
    let at = on
        .iter()
        .position(|a| a == "--coalesce-ms")
        .expect("passed");
    assert_eq!(on[at + 1], "5");
    let e = validate(&with(|p| p.spec.coalesce_ms = Some(2000)), &inputs(), IMAGE)
        .expect_err("out of range");
    assert_eq!(e.reason, reason::INVALID_SPEC);
    assert!(e.message.contains("coalesceMs"), "{}", e.message);
}
