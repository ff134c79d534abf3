//! Status of both resources: computed by pure functions (so tests can check them and an
//! unchanged status is never written), then server-side applied to the status subresource.

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde_json::json;

use super::apply::FIELD_MANAGER;
use super::validate::Invalid;
use super::Error;
use crate::crd::{
    condition, reason, Condition, MqttBroker, MqttBrokerStatus, MqttProxyStatus, ProxyConnection,
};
use crate::health::{BrokerSummary, ProxySummary};

/// Now, as Kubernetes writes times (RFC 3339, seconds).
pub fn now() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A condition, keeping the old `lastTransitionTime` when its status did not change.
fn cond(
    old: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &str,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    cond_status(old, type_, status, reason, message, generation, now)
}

/// [`cond`] for a status that may also be `Unknown`.
fn cond_status(
    old: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &str,
) -> Condition {
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.to_string(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: since,
        observed_generation: generation,
    }
}

/// What one reconcile of an MqttProxy found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyOutcome {
    Applied {
        brokers: i32,
        desired: i32,
        replicas: i32,
        ready: i32,
        /// The pods' label selector, `k=v,k=v`.
        selector: String,
        /// `Degraded` reason and message, if any.
        degraded: Option<(&'static str, String)>,
    },
    /// Nothing applied; the last good children stay.
    Invalid(Invalid),
}

pub fn proxy_status(
    old: Option<&MqttProxyStatus>,
    generation: Option<i64>,
    outcome: &ProxyOutcome,
    now: &str,
) -> MqttProxyStatus {
    let empty = MqttProxyStatus::default();
    let old = old.unwrap_or(&empty);
    let c = &old.conditions[..];
    match outcome {
        ProxyOutcome::Applied {
            brokers,
            desired,
            replicas,
            ready,
            selector,
            degraded,
        } => {
            let all_ready = ready >= desired;
            let ready_msg = format!("{ready}/{desired} replicas ready");
            let (ready_reason, deg) = if all_ready {
                (reason::REPLICAS_READY, degraded.clone())
            } else {
                (reason::REPLICAS_NOT_READY, degraded.clone())
            };
            // Never an empty message: Kubernetes 1.20's server-side apply turns "" into null,
            // which the schema (`type: string`) then rejects.
            let (deg_reason, deg_msg) = deg
                .clone()
                .unwrap_or((reason::AS_EXPECTED, "nothing degraded".to_string()));
            MqttProxyStatus {
                conditions: vec![
                    cond(
                        c,
                        condition::READY,
                        all_ready,
                        ready_reason,
                        ready_msg,
                        generation,
                        now,
                    ),
                    cond(
                        c,
                        condition::CONFIG_APPLIED,
                        true,
                        reason::APPLIED,
                        format!("{brokers} brokers rendered"),
                        generation,
                        now,
                    ),
                    cond(
                        c,
                        condition::DEGRADED,
                        deg.is_some(),
                        deg_reason,
                        deg_msg,
                        generation,
                        now,
                    ),
                ],
                replicas: *replicas,
                ready_replicas: *ready,
                // Connected unknown here: [`with_proxy_health`] fills it in.
                brokers: format!("?/{brokers}"),
                devices: 0,
                selector: Some(selector.clone()),
                observed_generation: generation,
            }
        }
        ProxyOutcome::Invalid(inv) => {
            let mut conditions = vec![
                cond(
                    c,
                    condition::READY,
                    false,
                    inv.reason,
                    inv.message.clone(),
                    generation,
                    now,
                ),
                cond(
                    c,
                    condition::CONFIG_APPLIED,
                    false,
                    inv.reason,
                    format!("{}; the last applied configuration stays", inv.message),
                    generation,
                    now,
                ),
            ];
            conditions.extend(c.iter().find(|c| c.type_ == condition::DEGRADED).cloned());
            MqttProxyStatus {
                conditions,
                observed_generation: generation,
                ..old.clone()
            }
        }
    }
}

/// Folds what the health poller saw (`None`: nothing yet since start) into a proxy's
/// applied status: `brokers` connected/selected, `devices`, and `Degraded` naming the
/// disconnected brokers, which outranks the other `Degraded` reasons. With nothing known
/// the fields and a health `Degraded` stay as they were, so an operator restart writes
/// nothing.
pub fn with_proxy_health(
    mut st: MqttProxyStatus,
    old: Option<&MqttProxyStatus>,
    health: Option<&ProxySummary>,
    generation: Option<i64>,
    now: &str,
) -> MqttProxyStatus {
    let empty = MqttProxyStatus::default();
    let old = old.unwrap_or(&empty);
    let degraded = match health {
        Some(h) => {
            st.brokers = h.brokers_column();
            st.devices = h.devices;
            h.degraded.as_ref().map(|(reason, message)| {
                cond(
                    &old.conditions,
                    condition::DEGRADED,
                    true,
                    reason,
                    message.clone(),
                    generation,
                    now,
                )
            })
        }
        None => {
            if !old.brokers.is_empty() {
                st.brokers = old.brokers.clone();
                st.devices = old.devices;
            }
            old.conditions
                .iter()
                .find(|c| {
                    c.type_ == condition::DEGRADED && c.reason == reason::BROKERS_DISCONNECTED
                })
                .map(|c| Condition {
                    observed_generation: generation,
                    ..c.clone()
                })
        }
    };
    if let Some(d) = degraded {
        for c in st.conditions.iter_mut().filter(|c| c.type_ == d.type_) {
            *c = d.clone();
        }
    }
    st
}

pub fn broker_status(
    old: Option<&MqttBrokerStatus>,
    generation: Option<i64>,
    result: &Result<(), Invalid>,
    health: Option<&BrokerSummary>,
    now: &str,
) -> MqttBrokerStatus {
    let c = old.map_or(&[][..], |s| &s.conditions[..]);
    let ready = match result {
        Ok(()) => cond(
            c,
            condition::READY,
            true,
            reason::VALID,
            "spec valid and every referenced Secret key present".into(),
            generation,
            now,
        ),
        Err(inv) => cond(
            c,
            condition::READY,
            false,
            inv.reason,
            inv.message.clone(),
            generation,
            now,
        ),
    };
    let Some(health) = health else {
        // The poller has not finished a round since the operator started: keep what the
        // last one found (a restart must not flap every broker to `Unknown` and back).
        let old = old.cloned().unwrap_or_default();
        let mut conditions = vec![ready];
        conditions.extend(c.iter().find(|c| c.type_ == condition::CONNECTED).cloned());
        return MqttBrokerStatus {
            conditions,
            observed_generation: generation,
            ..old
        };
    };
    let connected = cond_status(
        c,
        condition::CONNECTED,
        health.status,
        health.reason,
        health.message.clone(),
        generation,
        now,
    );
    MqttBrokerStatus {
        conditions: vec![ready, connected],
        observed_generation: generation,
        connected: Some(health.column()),
        proxies: health
            .proxies
            .iter()
            .map(|(name, connected, total)| ProxyConnection {
                name: name.clone(),
                connected: *connected,
                total: *total,
            })
            .collect(),
        last_error: health.last_error.clone(),
        // Unknown without a pod to ask: absent rather than a misleading 0.
        queue_depth: (health.total > 0).then_some(health.queue_depth),
        dropped_total: (health.total > 0).then_some(health.dropped_total),
    }
}

/// Applies `status` to `obj`'s status subresource unless it already has exactly that.
/// Returns whether it wrote.
pub async fn write_status<K, S>(
    api: &Api<K>,
    obj: &K,
    old: Option<&S>,
    status: S,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize + PartialEq,
{
    if old == Some(&status) {
        return Ok(false);
    }
    let name = obj.meta().name.clone().unwrap_or_default();
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&name, &pp, &Patch::Apply(&patch)).await?;
    Ok(true)
}

/// The broker `b`'s status after checking it, with what the proxy pods say about it.
pub fn broker_status_for(
    b: &MqttBroker,
    result: &Result<(), Invalid>,
    health: Option<&BrokerSummary>,
) -> MqttBrokerStatus {
    broker_status(
        b.status.as_ref(),
        b.meta().generation,
        result,
        health,
        &now(),
    )
}
