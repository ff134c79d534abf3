//! `GET /api/status`: what a dashboard needs without scraping Prometheus. The original keys
//! (`version`, `devices` as a count, `managedBy`, `brokers`) keep their shape; each broker
//! gains its state, rates, latency quantiles and drops by reason, and the answer gains the
//! connected devices, proxy totals and uptime.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::brokers::configs;
use crate::brokerset::{Broker, BrokerStatus};
use crate::web::stats::{Live, Totals};
use crate::web::Shared;

/// A broker's state as one word, shown as text in the UI.
///
/// `connected`: every device session's connection to it is up. `connecting`: some are not
/// up yet and none has failed. `backoff`: some are not up and the last attempt failed (the
/// upstream waits before retrying). `idle`: enabled, but no device is connected, so nothing
/// connects to it. `paused`: disabled through the API (Pause; Resume enables it again).
/// `disabled`: disabled by the brokers file (file mode).
pub fn state(status: Option<&BrokerStatus>, enabled: bool, file_mode: bool) -> &'static str {
    match status {
        None if enabled => "connecting",
        None if file_mode => "disabled",
        None => "paused",
        Some(s) if s.sessions == 0 => "idle",
        Some(s) if s.sessions_connected == s.sessions => "connected",
        Some(s) if s.last_error.is_some() => "backoff",
        Some(_) => "connecting",
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BrokerEntry {
    #[serde(flatten)]
    status: BrokerStatus,
    enabled: bool,
    state: &'static str,
    address: String,
    port: u16,
    #[serde(flatten)]
    live: Live,
    drops: BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Device {
    client_id: String,
    remote_address: Option<String>,
    protocol_version: &'static str,
    since_ms: u64,
    subscriptions: Vec<String>,
    messages_in: u64,
    messages_out: u64,
}

/// Drops by reason, as in `mqtt_proxy_messages_dropped_total{reason}` (camelCase keys).
fn drops(b: Option<&Broker>) -> BTreeMap<&'static str, u64> {
    let Some(b) = b else {
        return BTreeMap::new();
    };
    let m = &b.metrics;
    BTreeMap::from([
        ("queueFull", m.dropped_overflow.get()),
        ("rejected", m.dropped_rejected.get()),
        ("shutdown", m.dropped_shutdown.get()),
        ("expired", m.dropped_expired.get()),
        ("tooLarge", m.dropped_too_large.get()),
        ("topicTooLong", m.dropped_topic_too_long.get()),
        ("poison", m.dropped_poison.get()),
    ])
}

pub async fn status(State(s): State<Shared>) -> Response {
    Json(body(&s).await).into_response()
}

/// The status document (also the stream's per-second `stats` event).
pub async fn body(s: &Shared) -> serde_json::Value {
    let file_mode = s.app.store.is_none();
    let set = s.app.control.brokers();
    let brokers: Vec<BrokerEntry> = configs(s)
        .await
        .into_iter()
        .map(|c| {
            let running = set.get(&c.id);
            let status = running.map(|b| b.status());
            BrokerEntry {
                state: state(status.as_ref(), c.enabled, file_mode),
                live: s.stats.live(&c.id),
                drops: drops(running.map(|b| &**b)),
                status: status.unwrap_or_else(|| BrokerStatus {
                    id: c.id.clone(),
                    name: c.label().to_string(),
                    ..BrokerStatus::default()
                }),
                enabled: c.enabled,
                address: c.address,
                port: c.port,
            }
        })
        .collect();
    let devices: Vec<Device> = s
        .app
        .control
        .devices()
        .iter()
        .map(|d| Device {
            client_id: d.client_id.clone(),
            remote_address: d.peer.map(|p| p.to_string()),
            protocol_version: d.protocol,
            since_ms: d.since_ms,
            subscriptions: d.subscriptions(),
            messages_in: d.messages_in.load(Ordering::Relaxed),
            messages_out: d.messages_out.load(Ordering::Relaxed),
        })
        .collect();
    let totals: Totals = s.stats.totals();
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "devices": (s.app.devices)(),
        "managedBy": if file_mode { "file" } else { "store" },
        "brokers": brokers,
        "connectedDevices": devices,
        "totals": totals,
        "uptimeSeconds": s.stats.started.elapsed().as_secs(),
        "ready": *s.app.ready.borrow(),
    })
}
