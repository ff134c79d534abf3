//! HTTP on one port: `/healthz` (alias `/health`), `/readyz`, `/metrics` (open), the admin
//! API under `/api` (bearer token or session cookie, see [`auth`]), the live stream
//! `/api/stream` ([`stream`]) and the embedded dashboard at `/` ([`assets`]).
//!
//! Every response carries the security headers; the API takes bodies of at most
//! [`BODY_LIMIT`] and sends no CORS headers, so other origins can neither read it nor (with
//! the `SameSite=Strict` cookie) act through a signed-in browser.

mod api;
mod assets;
mod auth;
mod stats;
mod stream;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};

use crate::proxy::BrokerControl;
use crate::store::BrokerStore;

/// Largest request body the API reads (a broker definition is well under 4 KiB).
pub const BODY_LIMIT: usize = 64 * 1024;

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

/// [`AppState`] plus what the web layer itself owns: sessions, login limits, rate history.
pub(crate) struct Web {
    pub app: Arc<AppState>,
    pub auth: auth::Auth,
    pub stats: stats::Stats,
}

pub(crate) type Shared = Arc<Web>;

pub fn router(state: Arc<AppState>) -> Router {
    let web = Arc::new(Web {
        auth: auth::Auth::new(state.admin_token.clone()),
        stats: stats::Stats::new(),
        app: state,
    });
    app(web)
}

fn app(web: Shared) -> Router {
    let health = get(|| async { "ok" });
    Router::new()
        .route("/healthz", health.clone())
        .route("/health", health)
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/api", api::router(web.clone()))
        .fallback(assets::serve)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(security_headers))
        .with_state(web)
}

/// CSP without inline scripts (the built UI loads only its own hashed modules); inline
/// *styles* stay allowed because the component library sets CSS variables at run time.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; font-src 'self' data:; connect-src 'self'; object-src 'none'; \
base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

async fn readyz(State(s): State<Shared>) -> impl IntoResponse {
    if *s.app.ready.borrow() {
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
    let web = Arc::new(Web {
        auth: auth::Auth::new(state.admin_token.clone()),
        stats: stats::Stats::new(),
        app: state,
    });
    let sampler = tokio::spawn(stats::run(web.clone()));
    tokio::spawn(async move {
        let app = app(web).into_make_service_with_connect_info::<SocketAddr>();
        let stop = async move { crate::session::wait_true(&mut shutdown).await };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "HTTP server failed");
        }
        sampler.abort();
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
    let token = auth::random_hex(32);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(token.as_bytes())?;
    tracing::info!(file = %path.display(), "created an admin API token (send it as `Authorization: Bearer <token>`, or sign in with it on the dashboard)");
    Ok(token)
}
