//! `/api`: brokers (list, get, create, replace, delete) and status. Every route needs
//! `Authorization: Bearer <admin token>`. Passwords are accepted, never returned.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

use super::AppState;
use crate::broker::BrokerConfig;
use crate::brokerset::BrokerStatus;

pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/status", get(status))
        .route("/brokers", get(list).post(create))
        .route("/brokers/{id}", get(one).put(replace).delete(remove))
        .layer(middleware::from_fn_with_state(state, auth))
}

/// An error answer: status and a JSON body `{"error": …, "field"?: …}`.
pub struct ApiError(StatusCode, serde_json::Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

fn error(code: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(code, json!({ "error": msg.into() }))
}

fn field_error(field: &str, msg: impl Into<String>) -> ApiError {
    ApiError(
        StatusCode::BAD_REQUEST,
        json!({ "error": msg.into(), "field": field }),
    )
}

async fn auth(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), s.admin_token.as_bytes()));
    if ok {
        next.run(req).await
    } else {
        error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (MQTT_PROXY_ADMIN_TOKEN or <data-dir>/admin-token)",
        )
        .into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A broker as the API shows it: the stored definition without secrets, plus live status.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BrokerView {
    #[serde(flatten)]
    config: BrokerConfig,
    has_password: bool,
    status: Option<BrokerStatus>,
}

fn view(s: &AppState, mut b: BrokerConfig) -> BrokerView {
    let has_password = b.password.is_some() || b.password_file.is_some();
    b.password = None;
    let status = s.control.brokers().get(&b.id).map(|x| x.status());
    BrokerView {
        config: b,
        has_password,
        status,
    }
}

async fn configs(s: &AppState) -> Vec<BrokerConfig> {
    match &s.store {
        Some(store) => store.lock().await.brokers().to_vec(),
        None => s
            .control
            .brokers()
            .brokers
            .iter()
            .map(|b| b.config.clone())
            .collect(),
    }
}

async fn status(State(s): State<Arc<AppState>>) -> Response {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "devices": (s.devices)(),
        "managedBy": if s.store.is_some() { "store" } else { "file" },
        "brokers": s.control.status(),
    }))
    .into_response()
}

async fn list(State(s): State<Arc<AppState>>) -> Response {
    let all: Vec<BrokerView> = configs(&s).await.into_iter().map(|b| view(&s, b)).collect();
    Json(all).into_response()
}

async fn one(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match configs(&s).await.into_iter().find(|b| b.id == id) {
        Some(b) => Json(view(&s, b)).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no broker {id:?}")).into_response(),
    }
}

/// Parses a body naming the offending field on error.
fn parse(body: &[u8]) -> Result<BrokerConfig, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let b: BrokerConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // serde names a missing field in the message, not in the path.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
            .map(str::to_string);
        let field = missing.unwrap_or(if path == "." { "body".into() } else { path });
        // Never echo a password back, even a malformed one.
        if field.ends_with("password") {
            return field_error(&field, "password must be a string");
        }
        field_error(&field, message)
    })?;
    b.validate()
        .map_err(|e| field_error(e.field, e.to_string()))?;
    Ok(b)
}

fn managed_by_file() -> ApiError {
    error(StatusCode::CONFLICT, "managed by file: brokers come from --brokers-file; edit that file (or its Kubernetes Secret) instead")
}

/// Applies `next` to the running proxy, then persists it; the running set is restored if
/// the store cannot be written, so the two never disagree.
async fn commit(s: &AppState, next: Vec<BrokerConfig>) -> Result<(), ApiError> {
    let Some(store) = &s.store else {
        return Err(managed_by_file());
    };
    let mut store = store.lock().await;
    // Validate everything (TLS files, password files) first, persist second, apply last:
    // a refused change never touches the running connections.
    let prepared = s
        .control
        .prepare(&next)
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
    if let Err(e) = store.replace_all(next) {
        let code = match e {
            crate::store::StoreError::SecretRequired { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        return Err(error(code, e.to_string()));
    }
    s.control.apply(prepared);
    Ok(())
}

async fn create(State(s): State<Arc<AppState>>, body: Bytes) -> Response {
    if s.store.is_none() {
        return managed_by_file().into_response();
    }
    let b = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let mut all = configs(&s).await;
    if all.iter().any(|x| x.id == b.id) {
        return error(
            StatusCode::CONFLICT,
            format!("broker {:?} exists; use PUT /api/brokers/{}", b.id, b.id),
        )
        .into_response();
    }
    all.push(b.clone());
    match commit(&s, all).await {
        Ok(()) => (StatusCode::CREATED, Json(view(&s, b))).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn replace(State(s): State<Arc<AppState>>, Path(id): Path<String>, body: Bytes) -> Response {
    if s.store.is_none() {
        return managed_by_file().into_response();
    }
    let mut b = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    if b.id != id {
        return field_error(
            "id",
            format!("body id {:?} differs from the URL id {id:?}", b.id),
        )
        .into_response();
    }
    let mut all = configs(&s).await;
    let Some(slot) = all.iter_mut().find(|x| x.id == id) else {
        return error(StatusCode::NOT_FOUND, format!("no broker {id:?}")).into_response();
    };
    // Omitting the password keeps the stored one (the API never returns it to send back).
    if b.password.is_none() && b.password_file.is_none() {
        b.password = slot.password.clone();
    }
    *slot = b.clone();
    match commit(&s, all).await {
        Ok(()) => Json(view(&s, b)).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn remove(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if s.store.is_none() {
        return managed_by_file().into_response();
    }
    let mut all = configs(&s).await;
    let before = all.len();
    all.retain(|b| b.id != id);
    if all.len() == before {
        return error(StatusCode::NOT_FOUND, format!("no broker {id:?}")).into_response();
    }
    match commit(&s, all).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r.into_response(),
    }
}
