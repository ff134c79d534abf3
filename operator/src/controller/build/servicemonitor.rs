//! The Prometheus Operator ServiceMonitor (`monitoring.coreos.com/v1`), built as a
//! `DynamicObject` because its CRD may not exist and we do not vendor its types.

use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::{child_meta, selector_labels};
use crate::controller::validate::ValidatedProxy;

/// The ServiceMonitor kind, for the dynamic API.
pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

pub fn build_service_monitor(v: &ValidatedProxy) -> Option<DynamicObject> {
    let sm = v.service_monitor.as_ref()?;
    let mut metadata = child_meta(v, v.name.clone());
    // The spec's labels go on top: Prometheus installs select monitors by e.g. `release`.
    if let Some(labels) = metadata.labels.as_mut() {
        labels.extend(sm.labels.clone());
    }
    let mut endpoint = json!({"port": "http", "path": "/metrics", "scheme": "http"});
    if let Some(interval) = &sm.interval {
        endpoint["interval"] = json!(interval);
    }
    let mut obj = DynamicObject::new(&v.name, &service_monitor_resource());
    obj.metadata = metadata;
    obj.data = json!({
        "spec": {
            "selector": {"matchLabels": selector_labels(v)},
            "namespaceSelector": {"matchNames": [v.namespace]},
            "endpoints": [endpoint],
        }
    });
    Some(obj)
}
