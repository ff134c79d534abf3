//! The Service in front of the proxy pods: named `mqtt` and `http` ports, each with its
//! `protocol` (server-side apply needs every list-map key: `port` + `protocol`). With
//! several replicas and device client ids (`upstreamClientId: Device`), client-IP session
//! affinity keeps each device on one pod, so two pods never use its id at once.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{child_meta, selector_labels};
use crate::controller::validate::ValidatedProxy;
use crate::crd::UpstreamClientIdPolicy;

pub fn build_service(v: &ValidatedProxy) -> Service {
    let port = |name: &str, port: u16| ServicePort {
        name: Some(name.into()),
        port: i32::from(port),
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    };
    let mut metadata = child_meta(v, v.name.clone());
    if !v.service.annotations.is_empty() {
        metadata.annotations = Some(v.service.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: v.service.type_.map(|t| t.as_str().to_string()),
            selector: Some(selector_labels(v)),
            session_affinity: (v.replicas > 1
                && v.upstream_client_id == UpstreamClientIdPolicy::Device)
                .then(|| "ClientIP".to_string()),
            ports: Some(vec![port("mqtt", v.mqtt_port), port("http", v.web_port)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}
