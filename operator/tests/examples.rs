//! `examples/` must be accepted by the generated CRD schemas: every field known, every
//! value of the right type and enum (a typo in an example would otherwise be silently
//! pruned by the API server), and they must parse into the Rust types.

use std::path::PathBuf;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn docs(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(path)).expect("example exists");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .collect()
}

fn schema_of(crd_file: &str) -> Value {
    let crd = docs(&format!("crds/{crd_file}")).remove(0);
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn check(path: &str, v: &Value, s: &Value, errors: &mut Vec<String>) {
    if s.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            errors.push(format!("{path}: not int-or-string"));
        }
        return;
    }
    if v.is_null() && s.get("nullable") == Some(&Value::Bool(true)) {
        return;
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            errors.push(format!("{path}: {v} not one of {e:?}"));
        }
    }
    let ty = s.get("type").and_then(Value::as_str).unwrap_or("");
    let ok = match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    };
    if !ok {
        errors.push(format!("{path}: expected {ty}, got {v}"));
        return;
    }
    match v {
        Value::Object(m) => {
            let props = s.get("properties").and_then(Value::as_object);
            for (k, sub) in m {
                match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                    (Some(ps), _) => check(&format!("{path}.{k}"), sub, ps, errors),
                    (None, Some(ap)) => check(&format!("{path}.{k}"), sub, ap, errors),
                    (None, None) if s.get("x-kubernetes-preserve-unknown-fields").is_some() => {}
                    (None, None) if path.ends_with(".metadata") => {}
                    (None, None) => errors.push(format!("{path}.{k}: unknown field")),
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(&format!("{path}[{i}]"), item, is, errors);
                }
            }
        }
        _ => {}
    }
}

fn validate(example: &str, crd_file: &str) -> usize {
    let schema = schema_of(crd_file);
    let mut errors = Vec::new();
    let docs = docs(example);
    for (i, d) in docs.iter().enumerate() {
        let spec = &schema["properties"]["spec"];
        check(
            &format!("{example}#{i}.spec"),
            &d["spec"],
            spec,
            &mut errors,
        );
    }
    assert!(errors.is_empty(), "{errors:#?}");
    docs.len()
}

#[test]
fn example_brokers_match_the_crd_and_the_types() {
    assert_eq!(validate("examples/mqttbrokers.yaml", "mqttbrokers.yaml"), 2);
    for d in docs("examples/mqttbrokers.yaml") {
        let b: mqtt_proxy_operator::crd::MqttBroker =
            serde_json::from_value(d).expect("MqttBroker");
        assert!(b.spec.credentials_secret_ref.is_some());
    }
}

#[test]
fn example_proxy_matches_the_crd_and_the_types() {
    assert_eq!(validate("examples/mqttproxy.yaml", "mqttproxies.yaml"), 1);
    let d = docs("examples/mqttproxy.yaml").remove(0);
    let p: mqtt_proxy_operator::crd::MqttProxy = serde_json::from_value(d).expect("MqttProxy");
    assert!(p.spec.broker_selector.is_some());
}

#[test]
fn the_schema_check_catches_a_typo() {
    let schema = schema_of("mqttbrokers.yaml");
    let mut errors = Vec::new();
    let bad = serde_json::json!({"address": "h", "useTLS": true, "port": "x", "mqttVersion": "4"});
    check("$", &bad, &schema["properties"]["spec"], &mut errors);
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

#[test]
fn example_labels_that_yaml_1_1_reads_as_booleans_are_strings() {
    // `yes`/`on` unquoted are booleans to YAML 1.1 tools (kubectl's parser among them) and
    // a label value must be a string. (`true`/`false` would already fail the schema check.)
    for file in [
        "examples/mqttbrokers.yaml",
        "examples/mqttproxy.yaml",
        "examples/secret.yaml",
    ] {
        let text = std::fs::read_to_string(root().join(file)).expect("example");
        for line in text.lines() {
            let value = line.split_once(": ").map(|(_, v)| v.trim());
            assert!(
                !matches!(
                    value,
                    Some("yes" | "no" | "on" | "off" | "y" | "n" | "Yes" | "On")
                ),
                "{file}: unquoted YAML-1.1 boolean in {line:?}"
            );
        }
    }
}
