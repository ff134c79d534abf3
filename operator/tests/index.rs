//! Watch-event mapping: which proxies and brokers a change reaches, from the stores alone.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use mqtt_proxy_operator::controller::index::{
    brokers_for_secret, proxies_for_broker, proxies_for_secret,
};
use mqtt_proxy_operator::controller::RenderedIndex;
use mqtt_proxy_operator::crd::{MqttBroker, MqttProxy};

fn secret_meta(name: &str, owner: Option<&str>) -> PartialObjectMeta<Secret> {
    PartialObjectMeta::<Secret> {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("plant".into()),
            owner_references: owner.map(|o| {
                vec![OwnerReference {
                    api_version: "mqttproxy.io/v1alpha1".into(),
                    kind: "MqttProxy".into(),
                    name: o.into(),
                    uid: "u".into(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        },
        ..Default::default()
    }
}

fn broker(name: &str) -> MqttBroker {
    common::brokers()
        .into_iter()
        .find(|b| b.metadata.name.as_deref() == Some(name))
        .map(|b| (*b).clone())
        .expect("fixture broker")
}

fn factory() -> Vec<ObjectRef<MqttProxy>> {
    vec![ObjectRef::from_obj(&common::proxy())]
}

#[test]
fn broker_maps_to_the_proxy_that_selects_it() {
    let proxies = vec![Arc::new(common::proxy())];
    let idx = RenderedIndex::default();
    assert_eq!(
        proxies_for_broker(&proxies, &idx, &broker("cloud")),
        factory()
    );
    assert!(proxies_for_broker(&proxies, &idx, &broker("lab")).is_empty());
    assert!(
        proxies_for_broker(&proxies, &idx, &broker("elsewhere")).is_empty(),
        "other namespace"
    );
}

#[test]
fn broker_relabelled_out_still_reaches_the_proxy_that_rendered_it() {
    let proxies = vec![Arc::new(common::proxy())];
    let idx = RenderedIndex::default();
    idx.set(
        &common::proxy(),
        ["cloud".to_string(), "edge".to_string()].into(),
    );
    let mut edge = broker("edge");
    edge.metadata.labels = Some(BTreeMap::from([("fleet".into(), "lab".into())]));
    assert_eq!(proxies_for_broker(&proxies, &idx, &edge), factory());
    idx.set(&common::proxy(), ["cloud".to_string()].into());
    assert!(
        proxies_for_broker(&proxies, &idx, &edge).is_empty(),
        "once re-rendered without it"
    );
}

#[test]
fn secret_maps_through_brokers_owners_and_admin_tokens() {
    let proxies = vec![Arc::new(common::proxy())];
    let brokers = common::brokers();
    let idx = RenderedIndex::default();
    let map = |s| proxies_for_secret(&proxies, &brokers, &idx, &s);
    assert_eq!(
        map(secret_meta("mqtt-credentials", None)),
        factory(),
        "credentials of a selected broker"
    );
    assert_eq!(
        map(secret_meta("cloud-ca", None)),
        factory(),
        "CA of a selected broker"
    );
    assert_eq!(
        map(secret_meta("factory-brokers", Some("factory"))),
        factory(),
        "owned child edited"
    );
    assert_eq!(
        map(secret_meta("factory-admin", None)),
        factory(),
        "admin token"
    );
    assert!(map(secret_meta("unrelated", None)).is_empty());
}

#[test]
fn secret_maps_to_the_brokers_that_reference_it() {
    let brokers = common::brokers();
    let names = |s| -> Vec<String> {
        brokers_for_secret(&brokers, &s)
            .into_iter()
            .map(|r| r.name)
            .collect()
    };
    assert_eq!(
        names(secret_meta("mqtt-credentials", None)),
        ["cloud", "edge"]
    );
    assert_eq!(names(secret_meta("cloud-client", None)), ["cloud"]);
    assert!(names(secret_meta("factory-admin", None)).is_empty());
}
