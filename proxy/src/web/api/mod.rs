//! `/api`: brokers ([`brokers`]), status ([`status`]), login/logout and the live stream.
//! Every route but login/logout needs the admin token or a session cookie
//! ([`super::auth`]). Errors are JSON `{"error": …, "field"?: …}`, the field named in the
//! broker's camelCase so the dashboard can show it next to the input.

mod brokers;
pub mod status;

use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::{auth, stream, Shared};

pub fn router(web: Shared) -> Router<Shared> {
    Router::new()
        .route("/status", get(status::status))
        .route("/brokers", get(brokers::list).post(brokers::create))
        .route(
            "/brokers/{id}",
            get(brokers::one)
                .put(brokers::replace)
                .delete(brokers::remove),
        )
        .route("/brokers/{id}/toggle", post(brokers::toggle))
        .route("/login", post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/session", get(auth::session))
        .route("/stream", get(stream::upgrade))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such API route") })
        .layer(middleware::from_fn_with_state(web, auth::require))
}

/// An error answer: status and a JSON body `{"error": …, "field"?: …}`.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub serde_json::Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

pub fn error(code: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(code, json!({ "error": msg.into() }))
}

pub fn field_error(field: &str, msg: impl Into<String>) -> ApiError {
    ApiError(
        StatusCode::BAD_REQUEST,
        json!({ "error": msg.into(), "field": field }),
    )
}
