//! The checked-in CRD YAML (`crds/` and the chart's copy) must be exactly what the Rust
//! types generate.

use std::path::PathBuf;

#[test]
fn checked_in_crds_match_the_rust_types() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut stale = Vec::new();
    for dir in mqtt_proxy_operator::crdgen::OUTPUT_DIRS {
        for (file, want) in mqtt_proxy_operator::crdgen::render().expect("renders") {
            let path = root.join(dir).join(file);
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            if have != want {
                stale.push(format!("{dir}/{file}"));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "CRD YAML out of date: {stale:?}; regenerate with \
         `cargo run -p mqtt-proxy-operator --bin crdgen` and commit the result"
    );
}

#[test]
fn crds_have_the_agreed_names_and_subresources() {
    use kube::CustomResourceExt;
    use mqtt_proxy_operator::crd::{MqttBroker, MqttProxy};
    let b = MqttBroker::crd();
    assert_eq!(b.spec.group, "mqttproxy.io");
    assert_eq!(b.spec.names.plural, "mqttbrokers");
    assert_eq!(b.spec.names.short_names, Some(vec!["mqb".to_string()]));
    let p = MqttProxy::crd();
    assert_eq!(p.spec.names.plural, "mqttproxies");
    assert_eq!(p.spec.names.short_names, Some(vec!["mqp".to_string()]));
    let v = &p.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    let sub = v.subresources.as_ref().expect("subresources");
    assert!(sub.status.is_some());
    let scale = sub.scale.as_ref().expect("scale subresource");
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    let cols: Vec<_> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(cols, ["Replicas", "Ready", "Brokers", "Age"]);
    let bv = &b.spec.versions[0];
    let cols: Vec<_> = bv
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(cols, ["Address", "Port", "Bidirectional", "Ready", "Age"]);
}
