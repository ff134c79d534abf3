//! Optional leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas
//! (or the old and new pod of a rolling update) never reconcile at the same time. The
//! elector itself lives in the proxy's library ([`mqtt_proxy::lease`], which the proxy uses
//! to run mirror sessions on one replica), so the two cannot drift apart.

pub use mqtt_proxy::lease::{decide, Elector, Step, Timing};

/// Name of the operator's Lease.
pub const LEASE_NAME: &str = "mqtt-proxy-operator";
