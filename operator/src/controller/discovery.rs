//! Whether the cluster serves an optional API (ServiceMonitors from the Prometheus
//! Operator; `policy/v1` PodDisruptionBudgets, which Kubernetes < 1.21 lacks), via API
//! discovery, cached for a minute so a proxy reconcile does not ask every time and an API
//! installed later is still noticed.

use std::time::{Duration, Instant};

use kube::Client;

const TTL: Duration = Duration::from_secs(60);

/// One cached discovery answer.
#[derive(Default)]
struct Cached(std::sync::Mutex<Option<(Instant, bool)>>);

impl Cached {
    async fn available(
        &self,
        client: &Client,
        group_version: &str,
        plural: &str,
    ) -> Result<bool, kube::Error> {
        if let Some((at, v)) = *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < TTL {
                return Ok(v);
            }
        }
        let v = match client.list_api_group_resources(group_version).await {
            Ok(list) => list.resources.iter().any(|r| r.name == plural),
            // A missing API group answers a plain "404 page not found", not a Status object.
            Err(kube::Error::Api(s)) if s.code == 404 => false,
            Err(e) => return Err(e),
        };
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), v));
        Ok(v)
    }
}

/// `monitoring.coreos.com/v1` ServiceMonitors.
#[derive(Default)]
pub struct ServiceMonitorDiscovery(Cached);

impl ServiceMonitorDiscovery {
    pub async fn available(&self, client: &Client) -> Result<bool, kube::Error> {
        self.0
            .available(client, "monitoring.coreos.com/v1", "servicemonitors")
            .await
    }
}

/// `policy/v1` PodDisruptionBudgets (served from Kubernetes 1.21).
#[derive(Default)]
pub struct PdbDiscovery(Cached);

impl PdbDiscovery {
    pub async fn available(&self, client: &Client) -> Result<bool, kube::Error> {
        self.0
            .available(client, "policy/v1", "poddisruptionbudgets")
            .await
    }
}
