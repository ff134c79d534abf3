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
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );
    let cols: Vec<_> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(cols, ["Replicas", "Ready", "Brokers", "Devices", "Age"]);
    let bv = &b.spec.versions[0];
    let cols: Vec<_> = bv
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        cols,
        [
            "Address",
            "Port",
            "Bidirectional",
            "Ready",
            "Connected",
            "Age"
        ]
    );
}

/// Walks a schema (as JSON) and reports what Kubernetes 1.20 rejects or mishandles.
fn old_server_problems(path: &str, schema: &serde_json::Value, out: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else {
        return;
    };
    if obj.get("default") == Some(&serde_json::json!("")) {
        out.push(format!(
            "{path}: empty-string default (1.20 reads it as null)"
        ));
    }
    if let Some(e) = obj.get("enum").and_then(|e| e.as_array()) {
        if e.iter().any(|v| v.is_null()) {
            out.push(format!("{path}: null in enum"));
        }
    }
    for (k, v) in obj {
        match k.as_str() {
            "properties" => {
                for (name, sub) in v.as_object().into_iter().flatten() {
                    old_server_problems(&format!("{path}.{name}"), sub, out);
                }
            }
            "items" | "additionalProperties" => old_server_problems(&format!("{path}[]"), v, out),
            _ => {}
        }
    }
}

#[test]
fn schemas_avoid_what_kubernetes_1_20_rejects() {
    let mut problems = Vec::new();
    for (file, yaml) in mqtt_proxy_operator::crdgen::render().expect("renders") {
        let crd: serde_json::Value = serde_yaml::from_str(&yaml).expect("yaml");
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        old_server_problems(file, schema, &mut problems);
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
