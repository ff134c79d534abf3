//! HTTP: `/healthz`, `/readyz`, `/metrics` (open) and the admin API under `/api` (bearer
//! token). Broker mutations go through the same validation as the store and are applied to
//! the running proxy atomically; in `--brokers-file` mode they answer 409.

mod api;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};

use crate::proxy::BrokerControl;
use crate::store::BrokerStore;

/// What the HTTP handlers share.
pub struct AppState {
    pub control: BrokerControl,
    /// `None` in `--brokers-file` mode: the file is the source of truth.
    pub store: Option<Mutex<BrokerStore>>,
    pub admin_token: String,
    /// `true` once the MQTT listener serves devices; `false` again during shutdown.
    pub ready: watch::Receiver<bool>,
    pub devices: Arc<dyn Fn() -> usize + Send + Sync>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/api", api::router(state.clone()))
        .with_state(state)
}

async fn readyz(axum::extract::State(s): axum::extract::State<Arc<AppState>>) -> impl IntoResponse {
    if *s.ready.borrow() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        let app = router(state);
        let stop = async move { crate::session::wait_true(&mut shutdown).await };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    Ok(local)
}

/// The admin token: `MQTT_PROXY_ADMIN_TOKEN`, else `<data-dir>/admin-token` (created with a
/// random value and mode 0600 on first start, so the API is never open by default).
pub fn admin_token(data_dir: &Path) -> std::io::Result<String> {
    if let Ok(t) = std::env::var("MQTT_PROXY_ADMIN_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let path = data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        _ => {}
    }
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)?;
    let token: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(token.as_bytes())?;
    tracing::info!(file = %path.display(), "created an admin API token (send it as `Authorization: Bearer <token>`)");
    Ok(token)
}
