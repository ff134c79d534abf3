//! `/api/brokers`: list, get, create, replace, delete, toggle. Passwords are accepted, never
//! returned. Each mutation reads, changes and commits the set under the store's one lock,
//! so concurrent requests cannot lose each other's updates.
//!
//! Compatibility with the project we replace: a POST without `id` gets one (a slug of the
//! name, made unique); a PUT whose password is `"********"` (what its UI sent back) or absent
//! keeps the stored password, unless `address` or `port` changed, when the password must be
//! given again so it is never sent to a host it was not entered for. `passwordFile` is not
//! accepted over the API (it would let a token holder point the proxy at any local file,
//! e.g. `/proc/self/environ`); it stays a file-mode and CLI feature.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{error, field_error, ApiError};
use crate::broker::BrokerConfig;
use crate::brokerset::{BrokerStatus, BuildError};
use crate::tls::TlsError;
use crate::web::Shared;

/// What the seed's UI sent in place of a password it did not know.
pub const PASSWORD_PLACEHOLDER: &str = "********";

/// A broker as the API shows it: the stored definition without secrets, plus live status.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerView {
    #[serde(flatten)]
    config: BrokerConfig,
    has_password: bool,
    status: Option<BrokerStatus>,
}

fn view(s: &Shared, mut b: BrokerConfig) -> BrokerView {
    let has_password = b.password.is_some() || b.password_file.is_some();
    b.password = None;
    let status = s.app.control.brokers().get(&b.id).map(|x| x.status());
    BrokerView {
        config: b,
        has_password,
        status,
    }
}

/// The definitions in force: the store's, or in file mode the running set's.
pub async fn configs(s: &Shared) -> Vec<BrokerConfig> {
    match &s.app.store {
        Some(store) => store.lock().await.brokers().to_vec(),
        None => s
            .app
            .control
            .brokers()
            .brokers
            .iter()
            .map(|b| b.config.clone())
            .collect(),
    }
}

pub async fn list(State(s): State<Shared>) -> Response {
    let all: Vec<BrokerView> = configs(&s).await.into_iter().map(|b| view(&s, b)).collect();
    Json(all).into_response()
}

pub async fn one(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    match configs(&s).await.into_iter().find(|b| b.id == id) {
        Some(b) => Json(view(&s, b)).into_response(),
        None => not_found(&id).into_response(),
    }
}

fn not_found(id: &str) -> ApiError {
    error(StatusCode::NOT_FOUND, format!("no broker {id:?}"))
}

/// Parses a body naming the offending field on error. A missing `id` is filled by
/// `default_id` before validation.
fn parse(body: &[u8], default_id: impl FnOnce(&str) -> String) -> Result<BrokerConfig, ApiError> {
    let mut value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| field_error("body", format!("invalid JSON: {e}")))?;
    if let Some(obj) = value.as_object_mut() {
        let has_id = obj
            .get("id")
            .and_then(|v| v.as_str())
            .is_some_and(|s| !s.trim().is_empty());
        if !has_id {
            let name = obj.get("name").and_then(|v| v.as_str()).unwrap_or("");
            let id = default_id(name);
            obj.insert("id".into(), id.into());
        }
    }
    let b: BrokerConfig = serde_path_to_error::deserialize(value).map_err(|e| {
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

/// A slug of `name` (lower-case ASCII letters, digits and `-`), unique among `taken`.
pub fn slug_id(name: &str, taken: &[BrokerConfig]) -> String {
    let mut slug = String::new();
    for c in name.trim().chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let mut base = slug.trim_end_matches('-').to_string();
    base.truncate(64);
    if base.is_empty() {
        base = "broker".into();
    }
    let free = |id: &str| !taken.iter().any(|b| b.id == id);
    if free(&base) {
        return base;
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|id| free(id))
        .unwrap_or(base)
}

fn managed_by_file() -> ApiError {
    error(StatusCode::CONFLICT, "managed by file: brokers come from --brokers-file; edit that file (or its Kubernetes Secret) instead")
}

/// Runs `change` on the current set and commits the result, all under the store lock:
/// validate everything (TLS files, password files) first, persist second, apply last, so a
/// refused change never touches the running connections and no concurrent change is lost.
async fn mutate<T>(
    s: &Shared,
    change: impl FnOnce(&mut Vec<BrokerConfig>) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let Some(store) = &s.app.store else {
        return Err(managed_by_file());
    };
    let mut store = store.lock().await;
    let mut next = store.brokers().to_vec();
    let out = change(&mut next)?;
    let prepared = s
        .app
        .control
        .prepare(&next)
        .map_err(|e| build_error(&e, &next))?;
    if let Err(e) = store.replace_all(next) {
        let code = match e {
            crate::store::StoreError::SecretRequired { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        return Err(error(code, e.to_string()));
    }
    s.app.control.apply(prepared);
    Ok(out)
}

/// A set that did not build, with the field at fault named where it can be told: the form
/// then shows "cannot read /etc/ca.pem" under "CA certificate path", not at the top.
fn build_error(e: &BuildError, next: &[BrokerConfig]) -> ApiError {
    let msg = e.to_string();
    let field = match e {
        BuildError::Invalid(b) => Some(b.field),
        BuildError::PasswordFile { .. } => Some("passwordFile"),
        BuildError::Tls { broker, source } => {
            let path = match source {
                TlsError::Read { path, .. }
                | TlsError::NoCertificate { path }
                | TlsError::NoKey { path } => Some(path.as_str()),
                _ => None,
            };
            let b = next.iter().find(|b| &b.id == broker);
            let is = |p: &Option<std::path::PathBuf>| {
                p.as_ref().map(|p| p.display().to_string()).as_deref() == path
            };
            match b {
                Some(b) if is(&b.ca_cert_path) => Some("caCertPath"),
                Some(b) if is(&b.client_cert_path) => Some("clientCertPath"),
                Some(b) if is(&b.client_key_path) => Some("clientKeyPath"),
                _ => None,
            }
        }
    };
    match field {
        Some(f) => field_error(f, msg),
        None => error(StatusCode::BAD_REQUEST, msg),
    }
}

/// Refuses a `passwordFile` the stored broker does not already have (see the module doc).
fn check_password_file(b: &BrokerConfig, stored: Option<&BrokerConfig>) -> Result<(), ApiError> {
    match &b.password_file {
        Some(p) if stored.and_then(|s| s.password_file.as_ref()) != Some(p) => Err(field_error(
            "passwordFile",
            "passwordFile cannot be set through the API (it would read any file the proxy can); send the password instead",
        )),
        _ => Ok(()),
    }
}

fn strip_placeholder(b: &mut BrokerConfig) {
    if b.password
        .as_ref()
        .is_some_and(|p| p.expose() == PASSWORD_PLACEHOLDER)
    {
        b.password = None;
    }
}

pub async fn create(State(s): State<Shared>, body: Bytes) -> Response {
    if s.app.store.is_none() {
        return managed_by_file().into_response();
    }
    let result = mutate(&s, |all| {
        let mut b = parse(&body, |name| slug_id(name, all))?;
        strip_placeholder(&mut b);
        check_password_file(&b, None)?;
        if all.iter().any(|x| x.id == b.id) {
            return Err(error(
                StatusCode::CONFLICT,
                format!("broker {:?} exists; use PUT /api/brokers/{}", b.id, b.id),
            ));
        }
        all.push(b.clone());
        Ok(b)
    })
    .await;
    match result {
        Ok(b) => (StatusCode::CREATED, Json(view(&s, b))).into_response(),
        Err(r) => r.into_response(),
    }
}

pub async fn replace(State(s): State<Shared>, Path(id): Path<String>, body: Bytes) -> Response {
    if s.app.store.is_none() {
        return managed_by_file().into_response();
    }
    let result = mutate(&s, |all| {
        let mut b = parse(&body, |_| id.clone())?;
        if b.id != id {
            return Err(field_error(
                "id",
                format!("body id {:?} differs from the URL id {id:?}", b.id),
            ));
        }
        let Some(slot) = all.iter_mut().find(|x| x.id == id) else {
            return Err(not_found(&id));
        };
        strip_placeholder(&mut b);
        check_password_file(&b, Some(slot))?;
        if b.password.is_none() && b.password_file.is_none() {
            let moved = b.address != slot.address || b.port != slot.port;
            if moved && slot.password.is_some() {
                return Err(field_error(
                    "password",
                    "address or port changed: enter the password again (the stored one is not sent to a new host)",
                ));
            }
            // Omitting the password keeps the stored one (the API never returns it).
            b.password = slot.password.clone();
        }
        *slot = b.clone();
        Ok(b)
    })
    .await;
    match result {
        Ok(b) => Json(view(&s, b)).into_response(),
        Err(r) => r.into_response(),
    }
}

pub async fn remove(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    let result = mutate(&s, |all| {
        let before = all.len();
        all.retain(|b| b.id != id);
        if all.len() == before {
            return Err(not_found(&id));
        }
        Ok(())
    })
    .await;
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Toggle {
    enabled: bool,
}

/// `POST /api/brokers/{id}/toggle` with `{"enabled": bool}` (an empty body flips it). This
/// is what the dashboard's Pause/Resume does: a paused broker is a disabled one, stored so.
pub async fn toggle(State(s): State<Shared>, Path(id): Path<String>, body: Bytes) -> Response {
    let wanted = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<Toggle>(&body) {
            Ok(t) => Some(t.enabled),
            Err(e) => return field_error("enabled", e.to_string()).into_response(),
        }
    };
    let result = mutate(&s, |all| {
        let Some(slot) = all.iter_mut().find(|x| x.id == id) else {
            return Err(not_found(&id));
        };
        slot.enabled = wanted.unwrap_or(!slot.enabled);
        Ok(slot.clone())
    })
    .await;
    match result {
        Ok(b) => Json(view(&s, b)).into_response(),
        Err(r) => r.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_unique_and_tidy() {
        let taken = vec![
            BrokerConfig::new("home-broker", "h", 1),
            BrokerConfig::new("home-broker-2", "h", 1),
        ];
        assert_eq!(slug_id("  Home  Broker! ", &taken), "home-broker-3");
        assert_eq!(slug_id("Cloud (EU)", &taken), "cloud-eu");
        assert_eq!(slug_id("ü", &[]), "broker");
    }

    #[test]
    fn missing_id_is_filled_before_validation() {
        let b = parse(br#"{"name":"A b","address":"h"}"#, |n| slug_id(n, &[])).expect("valid");
        assert_eq!(b.id, "a-b");
        let e =
            parse(br#"{"address":"h","port":0}"#, |_| "x".into()).expect_err("port 0 is invalid");
        assert_eq!(e.1["field"], "port");
    }
}
