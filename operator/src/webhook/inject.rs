//! Pure injection: the proxy container the Deployment builder renders, reshaped into a
//! native sidecar, and the JSON patch that adds it to an application pod. No client, no
//! async: the admission handler and the golden tests call the same two functions.
//!
//! Taking the container from [`build_deployment`]'s pod template (rather than a second
//! builder) means whatever the Deployment's proxy container gets — env, mounts, probes,
//! resources — the sidecar gets too. What changes, and why:
//! - name `mqtt-proxy` and `restartPolicy: Always` in `initContainers[0]`: a native sidecar
//!   (Kubernetes 1.28+) starts before the app's containers and stops after them. Older API
//!   servers know neither the field nor probes on init containers and refuse such a pod, so
//!   there ([`Placement::Container`]) the proxy becomes one more regular container: no start
//!   order, but the pod is only Ready once the proxy is;
//! - the MQTT listener binds `127.0.0.1`: the app reaches it on `localhost`, and nothing
//!   outside the pod can use it as a relay (the HTTP port stays on all addresses for the
//!   kubelet's probes, which come to the pod IP);
//! - volumes and port names get a `mqtt-proxy-` / `mqttproxy-` prefix so they cannot clash
//!   with the app's own (names are unique per pod);
//! - the pod-level user and group become container-level (the app's pod keeps its own), and
//!   the pod gets `fsGroup` 10001 when it sets none, so the proxy can read its Secret mount
//!   (mode 0440, group fsGroup); a pod with another fsGroup gets the mount as 0444.
//!
//! [`build_deployment`]: crate::controller::build::build_deployment

use k8s_openapi::api::core::v1::{
    Container, EnvVar, Pod, PodSecurityContext, PodTemplateSpec, Probe, SecurityContext, Volume,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

/// Pods labelled with this key get the proxy of the MqttProxy named by its value (same
/// namespace).
pub const INJECT_LABEL: &str = "mqttproxy.io/inject";
/// Set on an injected pod (value: the MqttProxy); a pod carrying it is left alone.
pub const INJECTED_ANNOTATION: &str = "mqttproxy.io/injected";
/// Name of the injected container.
pub const SIDECAR_NAME: &str = "mqtt-proxy";
const VOLUME_PREFIX: &str = "mqtt-proxy-";
const PORT_PREFIX: &str = "mqttproxy-";
/// Kubernetes limits port names to 15 characters (IANA service name syntax).
const PORT_NAME_MAX: usize = 15;
/// The Deployment's proxy container, by name.
const PROXY_CONTAINER: &str = "proxy";
const MQTT_LISTEN_ENV: &str = "MQTT_PROXY_MQTT_LISTEN";

/// Where the sidecar goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// `initContainers[0]` with `restartPolicy: Always` (Kubernetes 1.28+).
    NativeSidecar,
    /// Appended to `containers`, for API servers before 1.28.
    Container,
}

impl Placement {
    /// Native sidecars from Kubernetes 1.28 on (`SidecarContainers`, beta and on by default
    /// since then). `minor` may carry a `+` (some distributions report `28+`).
    pub fn for_version(major: &str, minor: &str) -> Placement {
        let num = |s: &str| s.trim_end_matches('+').parse::<u32>().unwrap_or(0);
        if (num(major), num(minor)) >= (1, 28) {
            Placement::NativeSidecar
        } else {
            Placement::Container
        }
    }
}

/// What gets injected into one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Sidecar {
    pub container: Container,
    pub volumes: Vec<Volume>,
    /// The group the proxy reads its Secret mount through.
    pub fs_group: Option<i64>,
}

/// Reshapes the proxy container of a Deployment pod template into a sidecar; `None` when
/// the template has no containers (never for templates the builder renders).
pub fn sidecar_from_template(template: &PodTemplateSpec) -> Option<Sidecar> {
    let spec = template.spec.as_ref()?;
    let mut c = spec
        .containers
        .iter()
        .find(|c| c.name == PROXY_CONTAINER)
        .or_else(|| spec.containers.first())?
        .clone();
    c.name = SIDECAR_NAME.into();
    c.restart_policy = Some("Always".into());
    for m in c.volume_mounts.iter_mut().flatten() {
        m.name = format!("{VOLUME_PREFIX}{}", m.name);
    }
    for p in c.ports.iter_mut().flatten() {
        p.name = p.name.as_deref().map(port_name);
    }
    for probe in [
        &mut c.liveness_probe,
        &mut c.readiness_probe,
        &mut c.startup_probe,
    ] {
        probe.as_mut().map(rename_probe_port);
    }
    for e in c.env.iter_mut().flatten() {
        localhost_only(e);
    }
    let pod_sc = spec.security_context.as_ref();
    let sc = c
        .security_context
        .get_or_insert_with(SecurityContext::default);
    sc.run_as_user = sc.run_as_user.or(pod_sc.and_then(|p| p.run_as_user));
    sc.run_as_group = sc.run_as_group.or(pod_sc.and_then(|p| p.run_as_group));
    sc.seccomp_profile = sc
        .seccomp_profile
        .clone()
        .or_else(|| pod_sc.and_then(|p| p.seccomp_profile.clone()));
    let volumes = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| Volume {
            name: format!("{VOLUME_PREFIX}{}", v.name),
            ..v.clone()
        })
        .collect();
    Some(Sidecar {
        container: c,
        volumes,
        fs_group: pod_sc.and_then(|p| p.fs_group),
    })
}

fn port_name(name: &str) -> String {
    let mut n = format!("{PORT_PREFIX}{name}");
    n.truncate(PORT_NAME_MAX);
    n
}

fn rename_probe_port(p: &mut Probe) {
    let rename = |port: &mut IntOrString| {
        if let IntOrString::String(s) = port {
            *s = port_name(s);
        }
    };
    if let Some(h) = p.http_get.as_mut() {
        rename(&mut h.port);
    }
    if let Some(t) = p.tcp_socket.as_mut() {
        rename(&mut t.port);
    }
}

/// `0.0.0.0:1883` → `127.0.0.1:1883` for the device listener.
fn localhost_only(e: &mut EnvVar) {
    if e.name != MQTT_LISTEN_ENV {
        return;
    }
    if let Some(v) = e.value.as_mut() {
        if let Some((_, port)) = v.rsplit_once(':') {
            *v = format!("127.0.0.1:{port}");
        }
    }
}

/// The MqttProxy a pod asks for through [`INJECT_LABEL`], if any.
pub fn requested_proxy(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(INJECT_LABEL)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// Already injected: the annotation, or a container of ours (an injection that lost its
/// annotation, or one written by hand) — a second copy would make the pod invalid.
pub fn already_injected(pod: &Pod) -> bool {
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(INJECTED_ANNOTATION));
    let spec = pod.spec.as_ref();
    let named =
        |cs: Option<&Vec<Container>>| cs.into_iter().flatten().any(|c| c.name == SIDECAR_NAME);
    annotated
        || named(spec.map(|s| &s.containers))
        || named(spec.and_then(|s| s.init_containers.as_ref()))
}

/// The JSON patch (RFC 6902) that injects `sidecar` into `pod` for MqttProxy `proxy`, or
/// `None` when the pod is already injected.
pub fn injection_patch(
    pod: &Pod,
    proxy: &str,
    sidecar: &Sidecar,
    placement: Placement,
) -> Option<Vec<Value>> {
    if already_injected(pod) {
        return None;
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let mut ops = Vec::new();
    let key = INJECTED_ANNOTATION.replace('~', "~0").replace('/', "~1");
    if pod.metadata.annotations.is_some() {
        ops.push(add(&format!("/metadata/annotations/{key}"), json!(proxy)));
    } else {
        ops.push(add(
            "/metadata/annotations",
            json!({ INJECTED_ANNOTATION: proxy }),
        ));
    }
    let mut volumes = sidecar.volumes.clone();
    let pod_fs_group = spec.security_context.as_ref().and_then(|s| s.fs_group);
    match (pod_fs_group, sidecar.fs_group) {
        (None, Some(g)) => ops.push(match &spec.security_context {
            Some(_) => add("/spec/securityContext/fsGroup", json!(g)),
            None => add(
                "/spec/securityContext",
                to_value(&PodSecurityContext {
                    fs_group: Some(g),
                    ..PodSecurityContext::default()
                }),
            ),
        }),
        (Some(p), Some(g)) if p != g => {
            for s in volumes.iter_mut().filter_map(|v| v.secret.as_mut()) {
                s.default_mode = Some(0o444);
            }
        }
        _ => {}
    }
    match placement {
        Placement::NativeSidecar => {
            let container = to_value(&sidecar.container);
            match spec.init_containers.as_ref().filter(|c| !c.is_empty()) {
                // First, so the app's own init containers can already reach the broker.
                Some(_) => ops.push(add("/spec/initContainers/0", container)),
                None => ops.push(add("/spec/initContainers", json!([container]))),
            }
        }
        Placement::Container => {
            let mut c = sidecar.container.clone();
            c.restart_policy = None;
            // After the app's: `kubectl exec/logs` keep defaulting to the app.
            ops.push(add("/spec/containers/-", to_value(&c)));
        }
    }
    match spec.volumes.as_ref() {
        Some(_) => ops.extend(volumes.iter().map(|v| add("/spec/volumes/-", to_value(v)))),
        None => ops.push(add("/spec/volumes", to_value(&volumes))),
    }
    Some(ops)
}

fn add(path: &str, value: Value) -> Value {
    json!({ "op": "add", "path": path, "value": value })
}

/// k8s-openapi types always serialize (plain structs of strings and numbers).
fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}
