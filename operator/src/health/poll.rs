//! One pod's `GET /api/status`: plain HTTP/1.1 to the pod IP and the proxy's HTTP port with
//! the admin token as bearer, under one deadline for connect + answer and a cap on the body,
//! parsed into a [`PodPoll`]. Also the admin-token cache: the token Secret is read once per
//! proxy and again only after a pod refused it, so polling costs the API server nothing.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;

use super::summary::{BrokerReport, PodPoll};
use crate::controller::validate::admin_secret_name;
use crate::crd::MqttProxy;

/// `/api/status` lists every connected device; thousands of them stay well below this.
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("HTTP: {0}")]
    Http(String),
    /// The pod refused the token (rotated since it was cached).
    #[error("the admin token was refused (HTTP {0})")]
    Unauthorized(u16),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("not a status document: {0}")]
    Parse(#[from] serde_json::Error),
}

impl PollError {
    /// A bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Connect(_) => "connect",
            Self::Http(_) => "http",
            Self::Unauthorized(_) => "unauthorized",
            Self::Status(_) => "status",
            Self::Parse(_) => "parse",
        }
    }
}

/// The parts of the status document the operator reads (the proxy's field names).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusDoc {
    #[serde(default)]
    devices: i64,
    #[serde(default)]
    brokers: Vec<BrokerDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BrokerDoc {
    id: String,
    #[serde(default)]
    connected: bool,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    last_error: Option<String>,
    #[serde(default)]
    last_error_reason: Option<String>,
    #[serde(default)]
    queue_messages: i64,
    #[serde(default)]
    dropped: u64,
}

fn yes() -> bool {
    true
}

/// Parses a `/api/status` body.
pub fn parse_status(body: &[u8]) -> Result<PodPoll, serde_json::Error> {
    let doc: StatusDoc = serde_json::from_slice(body)?;
    let brokers = doc
        .brokers
        .into_iter()
        .map(|b| {
            let report = BrokerReport {
                connected: b.connected,
                enabled: b.enabled,
                last_error: b.last_error,
                last_error_reason: b.last_error_reason,
                queue_messages: b.queue_messages,
                dropped: b.dropped,
            };
            (b.id, report)
        })
        .collect::<BTreeMap<_, _>>();
    Ok(PodPoll::Report {
        devices: doc.devices,
        brokers,
    })
}

/// `GET http://{addr}/api/status` with `token`, all of it within `deadline`.
pub async fn poll_pod(
    addr: SocketAddr,
    token: &str,
    deadline: Duration,
) -> Result<PodPoll, PollError> {
    let body = tokio::time::timeout(deadline, get(addr, token))
        .await
        .map_err(|_| PollError::Timeout(deadline))??;
    Ok(parse_status(&body)?)
}

async fn get(addr: SocketAddr, token: &str) -> Result<Bytes, PollError> {
    let http = |e: &dyn std::fmt::Display| PollError::Http(e.to_string());
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(PollError::Connect)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(&e))?;
    // The connection task ends with the request (or with the deadline's drop of `sender`).
    let conn = tokio::spawn(conn);
    let req = http::Request::get("/api/status")
        .header(http::header::HOST, addr.to_string())
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(&e))?;
    let result = async {
        let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
        match resp.status().as_u16() {
            200 => {}
            code @ (401 | 403) => return Err(PollError::Unauthorized(code)),
            code => return Err(PollError::Status(code)),
        }
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| http(&*e))?;
        Ok(body.to_bytes())
    }
    .await;
    conn.abort();
    result
}

/// Admin tokens by (namespace, Secret, key). Secrets never reach a log: errors name the
/// Secret and key only.
#[derive(Default)]
pub struct Tokens(Mutex<HashMap<(String, String, String), String>>);

/// Where `proxy`'s admin token is, or `None` when `web.enabled` is false (the admin API is
/// locked then, so its pods cannot be polled).
pub fn token_ref(proxy: &MqttProxy) -> Option<(String, String, String)> {
    let web = &proxy.spec.web;
    if !web.enabled {
        return None;
    }
    let ns = proxy.namespace().unwrap_or_default();
    Some(match &web.admin_token_secret_ref {
        Some(r) => (ns, r.name.clone(), r.key.clone()),
        None => (ns, admin_secret_name(&proxy.name_any()), "token".into()),
    })
}

impl Tokens {
    /// The token at `at`, read from the API on a cache miss.
    pub async fn get(
        &self,
        client: &Client,
        at: &(String, String, String),
    ) -> Result<String, String> {
        if let Some(t) = self.lock().get(at) {
            return Ok(t.clone());
        }
        let (ns, name, key) = at;
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        let secret = api
            .get_opt(name)
            .await
            .map_err(|e| format!("reading the admin token Secret {ns}/{name}: {e}"))?
            .ok_or_else(|| format!("admin token Secret {ns}/{name} not found"))?;
        let bytes = secret
            .data
            .and_then(|d| d.get(key).map(|v| v.0.clone()))
            .ok_or_else(|| format!("admin token Secret {ns}/{name} has no key {key}"))?;
        // Trimmed, as the proxy trims the `MQTT_PROXY_ADMIN_TOKEN` it gets from this key.
        let token = String::from_utf8(bytes)
            .map_err(|_| format!("admin token {ns}/{name}/{key} is not UTF-8"))?
            .trim()
            .to_string();
        self.lock().insert(at.clone(), token.clone());
        Ok(token)
    }

    /// Forgets the token at `at` (a pod refused it: read the Secret again next round).
    pub fn forget(&self, at: &(String, String, String)) {
        self.lock().remove(at);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String, String), String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
