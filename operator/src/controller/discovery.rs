//! Whether the cluster serves ServiceMonitors (`monitoring.coreos.com/v1`), via API
//! discovery, cached for a minute so a proxy reconcile does not ask every time and a
//! Prometheus Operator installed later is still noticed.

use std::time::{Duration, Instant};

use kube::Client;

const TTL: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct ServiceMonitorDiscovery(std::sync::Mutex<Option<(Instant, bool)>>);

impl ServiceMonitorDiscovery {
    pub async fn available(&self, client: &Client) -> Result<bool, kube::Error> {
        if let Some((at, v)) = *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < TTL {
                return Ok(v);
            }
        }
        let v = match client
            .list_api_group_resources("monitoring.coreos.com/v1")
            .await
        {
            Ok(list) => list.resources.iter().any(|r| r.name == "servicemonitors"),
            // A missing API group answers a plain "404 page not found", not a Status object.
            Err(kube::Error::Api(s)) if s.code == 404 => false,
            Err(e) => return Err(e),
        };
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), v));
        Ok(v)
    }
}
