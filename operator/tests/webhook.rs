//! The sidecar webhook's answers, against golden AdmissionReview fixtures
//! (`tests/fixtures/webhook/`): each response's JSON patch is decoded, applied to the input
//! pod with the `json-patch` crate and compared with the expected pod; a pod already
//! injected and a pod without the label are admitted unchanged.
//!
//! After an intended change, regenerate the `expected-*` files with
//! `BLESS=1 cargo test -p mqtt-proxy-operator --test webhook` and review the diff.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use mqtt_proxy_operator::controller::build::build_deployment;
use mqtt_proxy_operator::controller::validate::validate;
use mqtt_proxy_operator::crd::{MqttProxy, ProxyMode};
use mqtt_proxy_operator::webhook::inject::{self, Placement, INJECTED_ANNOTATION, SIDECAR_NAME};
use mqtt_proxy_operator::webhook::review::{respond, sidecar_for, Decision};
use serde_json::Value;

fn path(name: &str) -> std::path::PathBuf {
    fixture_path(&format!("webhook/{name}"))
}

fn read_json(name: &str) -> Value {
    let text = std::fs::read_to_string(path(name)).expect("fixture exists");
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// Compares with a golden file, or writes it under `BLESS=1`.
fn golden(name: &str, actual: &Value) {
    if std::env::var_os("BLESS").is_some() {
        let text = serde_json::to_string_pretty(actual).expect("serializes") + "\n";
        std::fs::write(path(name), text).expect("writes golden file");
        return;
    }
    assert_eq!(
        actual,
        &read_json(name),
        "{name} differs (after an intended change: BLESS=1 cargo test -p mqtt-proxy-operator --test webhook)"
    );
}

fn sidecar_proxy() -> MqttProxy {
    load("webhook/sidecar-proxy.yaml")
}

fn request(name: &str) -> (Value, AdmissionRequest<Pod>) {
    let review = read_json(name);
    let parsed: AdmissionReview<Pod> = serde_json::from_value(review.clone()).expect("review");
    (review, parsed.try_into().expect("has a request"))
}

/// The response as the API server gets it, its patch decoded, and the patched pod.
struct Answer {
    response: Value,
    patch: Option<Value>,
    decision: Decision,
}

fn answer(req: &AdmissionRequest<Pod>, proxy: &MqttProxy) -> Answer {
    answer_at(req, proxy, Placement::NativeSidecar)
}

fn answer_at(req: &AdmissionRequest<Pod>, proxy: &MqttProxy, placement: Placement) -> Answer {
    let (res, decision) = respond(req, sidecar_for(proxy, BTreeMap::new(), IMAGE), placement);
    let mut response = serde_json::to_value(res.into_review()).expect("serializes");
    let patch = response["response"]
        .as_object_mut()
        .and_then(|r| r.remove("patch"))
        .map(|p| serde_json::from_slice(&patch_bytes(&p)).expect("patch is JSON"));
    Answer {
        response,
        patch,
        decision,
    }
}

/// `patch` as the API server decodes a Go `[]byte`: base64 text, or (kube-rs's form) an
/// array of byte values, which Go's JSON decoder accepts as well.
fn patch_bytes(p: &Value) -> Vec<u8> {
    match p {
        Value::String(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("valid base64"),
        Value::Array(bytes) => bytes
            .iter()
            .map(|b| {
                b.as_u64()
                    .and_then(|b| u8::try_from(b).ok())
                    .expect("a byte")
            })
            .collect(),
        other => panic!("patch is neither base64 nor bytes: {other}"),
    }
}

/// Applies `patch` to the review's pod; panics if it does not apply cleanly.
fn apply(review: &Value, patch: &Value) -> Value {
    let mut pod = review["request"]["object"].clone();
    let ops: json_patch::Patch = serde_json::from_value(patch.clone()).expect("RFC 6902 patch");
    json_patch::patch(&mut pod, &ops).expect("the patch applies cleanly to the input pod");
    pod
}

fn injected_case(fixture: &str, label: &str) -> Value {
    let (review, req) = request(fixture);
    let a = answer(&req, &sidecar_proxy());
    assert_eq!(a.decision, Decision::Injected);
    assert_eq!(a.response["response"]["allowed"], true);
    assert_eq!(a.response["response"]["patchType"], "JSONPatch");
    assert_eq!(a.response["response"]["uid"], review["request"]["uid"]);
    golden(&format!("expected-response-{label}.json"), &a.response);
    let patch = a.patch.expect("a patch");
    golden(&format!("expected-patch-{label}.json"), &patch);
    let pod = apply(&review, &patch);
    golden(&format!("expected-pod-{label}.json"), &pod);
    pod
}

/// What Kubernetes requires of the result: a well-formed Pod, unique container, port and
/// volume names, port names of at most 15 characters, every mount naming a volume.
fn assert_valid_pod(pod: &Value) -> Pod {
    let pod: Pod = serde_json::from_value(pod.clone()).expect("the patched pod is a Pod");
    let spec = pod.spec.clone().expect("spec");
    let all: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .collect();
    let names: BTreeSet<_> = all.iter().map(|c| &c.name).collect();
    assert_eq!(names.len(), all.len(), "container names unique");
    let ports: Vec<_> = all
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| p.name.clone())
        .collect();
    assert_eq!(ports.iter().collect::<BTreeSet<_>>().len(), ports.len());
    assert!(ports.iter().all(|p| p.len() <= 15), "{ports:?}");
    let volumes: BTreeSet<_> = spec.volumes.iter().flatten().map(|v| &v.name).collect();
    assert_eq!(volumes.len(), spec.volumes.iter().flatten().count());
    for c in &all {
        for m in c.volume_mounts.iter().flatten() {
            assert!(volumes.contains(&m.name), "mount {} has a volume", m.name);
        }
    }
    pod
}

#[test]
fn labelled_pod_gets_the_proxy_as_first_native_sidecar() {
    let pod = assert_valid_pod(&injected_case("review-labelled.json", "labelled"));
    let spec = pod.spec.expect("spec");
    let init = spec.init_containers.expect("init containers");
    assert_eq!(init[0].name, SIDECAR_NAME, "before the app's own init");
    assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
    assert_eq!(init[1].name, "migrate");
    assert_eq!(spec.containers[0].name, "app", "the app is untouched");
    let env: BTreeMap<_, _> = init[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect();
    assert_eq!(env["MQTT_PROXY_MQTT_LISTEN"], Some("127.0.0.1:1883"));
    assert_eq!(env["MQTT_PROXY_HTTP_LISTEN"], Some("0.0.0.0:3000"));
    assert_eq!(
        pod.metadata.annotations.expect("annotations")[INJECTED_ANNOTATION],
        "telemetry"
    );
    let sc = spec.security_context.expect("kept");
    assert_eq!(
        sc.fs_group,
        Some(10001),
        "added: the proxy reads its Secret through it"
    );
    assert_eq!(
        sc.run_as_non_root,
        Some(true),
        "the app's own setting stays"
    );
}

#[test]
fn bare_pod_gets_the_lists_created() {
    let pod = assert_valid_pod(&injected_case("review-bare.json", "bare"));
    let spec = pod.spec.expect("spec");
    assert_eq!(spec.init_containers.expect("created").len(), 1);
    let volumes: Vec<_> = spec
        .volumes
        .expect("created")
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(volumes, ["mqtt-proxy-brokers", "mqtt-proxy-data"]);
}

/// Before Kubernetes 1.28 an init container may have neither `restartPolicy` nor probes:
/// the proxy becomes a regular container after the app's.
#[test]
fn old_api_servers_get_a_regular_container() {
    let (review, req) = request("review-labelled.json");
    let a = answer_at(&req, &sidecar_proxy(), Placement::Container);
    let patch = a.patch.expect("a patch");
    golden("expected-patch-labelled-container.json", &patch);
    let pod = assert_valid_pod(&apply(&review, &patch));
    let spec = pod.spec.expect("spec");
    let names: Vec<_> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["app", SIDECAR_NAME]);
    assert_eq!(spec.containers[1].restart_policy, None);
    assert!(
        spec.containers[1].readiness_probe.is_some(),
        "gates the pod's readiness"
    );
    let init: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| &c.name)
        .collect();
    assert_eq!(init, ["migrate"], "the app's init containers untouched");

    // The same pod is recognised as injected, whichever placement made it.
    let mut review = review;
    review["request"]["object"] = apply(&read_json("review-labelled.json"), &patch);
    let parsed: AdmissionReview<Pod> = serde_json::from_value(review).expect("review");
    let again = answer(&parsed.try_into().expect("request"), &sidecar_proxy());
    assert!(again.patch.is_none());
}

#[test]
fn placement_follows_the_api_server_version() {
    assert_eq!(Placement::for_version("1", "20"), Placement::Container);
    assert_eq!(Placement::for_version("1", "27+"), Placement::Container);
    assert_eq!(Placement::for_version("1", "28"), Placement::NativeSidecar);
    assert_eq!(Placement::for_version("1", "31+"), Placement::NativeSidecar);
    assert_eq!(Placement::for_version("2", "0"), Placement::NativeSidecar);
    assert_eq!(
        Placement::for_version("", ""),
        Placement::Container,
        "unknown: the safe one"
    );
}

#[test]
fn injected_pod_is_left_alone() {
    let (mut review, _) = request("review-labelled.json");
    review["request"]["object"] = injected_case("review-labelled.json", "labelled");
    let parsed: AdmissionReview<Pod> = serde_json::from_value(review).expect("review");
    let a = answer(&parsed.try_into().expect("request"), &sidecar_proxy());
    assert_eq!(a.decision, Decision::Skipped);
    assert_eq!(a.response["response"]["allowed"], true);
    assert!(a.patch.is_none(), "idempotent: no second sidecar");

    // Without the annotation too: the container name alone marks it.
    let (mut review, _) = request("review-labelled.json");
    let mut pod = injected_case("review-labelled.json", "labelled");
    pod["metadata"]["annotations"]
        .as_object_mut()
        .expect("annotations")
        .remove(INJECTED_ANNOTATION);
    review["request"]["object"] = pod;
    let parsed: AdmissionReview<Pod> = serde_json::from_value(review).expect("review");
    let a = answer(&parsed.try_into().expect("request"), &sidecar_proxy());
    assert!(a.patch.is_none());
}

#[test]
fn unlabelled_pod_is_allowed_without_patch() {
    let (_, req) = request("review-plain.json");
    let a = answer(&req, &sidecar_proxy());
    assert_eq!(a.decision, Decision::Skipped);
    golden("expected-response-plain.json", &a.response);
    assert!(a.patch.is_none());
    assert!(a.response["response"].get("warnings").is_none());
}

#[test]
fn deployment_mode_proxy_admits_unchanged_with_a_warning() {
    let (_, req) = request("review-labelled.json");
    let mut proxy = sidecar_proxy();
    proxy.spec.mode = ProxyMode::Deployment;
    let a = answer(&req, &proxy);
    assert!(matches!(a.decision, Decision::Refused(_)));
    assert_eq!(
        a.response["response"]["allowed"], true,
        "never blocks the app"
    );
    assert!(a.patch.is_none());
    let warning = a.response["response"]["warnings"][0]
        .as_str()
        .expect("a warning");
    assert!(warning.contains("not in Sidecar mode"), "{warning}");
}

#[test]
fn pod_with_its_own_fs_group_gets_a_readable_secret_mount() {
    let (review, _) = request("review-labelled.json");
    let mut review = review;
    review["request"]["object"]["spec"]["securityContext"]["fsGroup"] = 2000.into();
    let parsed: AdmissionReview<Pod> = serde_json::from_value(review.clone()).expect("review");
    let a = answer(&parsed.try_into().expect("request"), &sidecar_proxy());
    let pod = assert_valid_pod(&apply(&review, &a.patch.expect("patch")));
    let spec = pod.spec.expect("spec");
    assert_eq!(spec.security_context.and_then(|s| s.fs_group), Some(2000));
    let brokers = spec
        .volumes
        .into_iter()
        .flatten()
        .find(|v| v.name == "mqtt-proxy-brokers")
        .and_then(|v| v.secret)
        .expect("brokers volume");
    assert_eq!(brokers.default_mode, Some(0o444));
}

/// The sidecar is the Deployment's proxy container: a field the Deployment builder adds
/// reaches the sidecar without a second copy.
#[test]
fn sidecar_is_the_deployment_proxy_container() {
    let proxy = sidecar_proxy();
    let inputs = mqtt_proxy_operator::controller::validate::Inputs {
        service_monitor_available: Some(false),
        ..Default::default()
    };
    let d = build_deployment(&validate(&proxy, &inputs, IMAGE).expect("valid"));
    let template = d.spec.expect("spec").template;
    let from_deployment = &template.spec.as_ref().expect("pod spec").containers[0];
    let sidecar = inject::sidecar_from_template(&template).expect("a sidecar");
    let c = &sidecar.container;
    assert_eq!(c.image, from_deployment.image);
    assert_eq!(c.args, from_deployment.args);
    assert_eq!(c.resources, from_deployment.resources);
    assert_eq!(
        c.env.as_ref().map(Vec::len),
        from_deployment.env.as_ref().map(Vec::len)
    );
    assert_eq!(
        sidecar.volumes.len(),
        template
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .map_or(0, Vec::len)
    );
    assert_eq!(
        c.args.as_deref(),
        Some(
            &[
                "--brokers-file".to_string(),
                "/etc/mqtt-proxy/brokers.yaml".into(),
                "--ack-policy".into(),
                "any".into()
            ][..]
        )
    );
}
