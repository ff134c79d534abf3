//! The PodDisruptionBudget of a proxy with more than one replica: at most one pod may be
//! evicted at a time (a node drain then moves the devices of one pod after the other, and
//! each stopping pod drains within its grace period, see `deployment.rs`).

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{child_meta, selector_labels};
use crate::controller::validate::ValidatedProxy;

/// `None` unless `replicas > 1` and the cluster serves `policy/v1` (validation decides,
/// and says why when it cannot be built).
pub fn build_pdb(v: &ValidatedProxy) -> Option<PodDisruptionBudget> {
    v.pdb.then(|| PodDisruptionBudget {
        metadata: child_meta(v, v.name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(v)),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}
