//! Who may use `/api`: the admin token as `Authorization: Bearer <token>` (scripts), or a
//! session cookie that `POST /api/login` sets after checking the token (the dashboard).
//!
//! The cookie is `HttpOnly` (page scripts never see it) and `SameSite=Strict` (other sites
//! cannot make a browser send it); its value is a random session id, not the token, so
//! logging out revokes it. Failed logins are limited per client address so the token
//! cannot be guessed at network speed. Token comparison is constant-time.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::api::{error, ApiError};
use super::Shared;

pub const COOKIE: &str = "mqtt_proxy_session";
/// How long a dashboard session lasts without signing in again.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest is evicted beyond it (bounded memory).
const MAX_SESSIONS: usize = 1024;
/// Failed logins allowed per address per window.
const MAX_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most for failed logins.
const MAX_TRACKED: usize = 10_000;

pub struct Auth {
    token: String,
    sessions: Mutex<HashMap<String, Instant>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// The result of looking at a request's credentials.
#[derive(Debug, PartialEq, Eq)]
pub enum Credentials {
    Valid,
    /// Credentials were sent and are wrong (or the session expired).
    Invalid,
    Missing,
}

pub fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Auth {
    pub fn new(token: String) -> Self {
        Self {
            token,
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    pub fn token_ok(&self, candidate: &str) -> bool {
        constant_time_eq(candidate.trim().as_bytes(), self.token.as_bytes())
    }

    fn session_ok(&self, id: &str) -> bool {
        let Ok(mut s) = self.sessions.lock() else {
            return false;
        };
        match s.get(id) {
            Some(exp) if *exp > Instant::now() => true,
            Some(_) => {
                s.remove(id);
                false
            }
            None => false,
        }
    }

    /// Bearer header first, then the session cookie.
    pub fn check(&self, headers: &HeaderMap) -> Credentials {
        if let Some(v) = headers.get(header::AUTHORIZATION) {
            let ok = v
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|t| self.token_ok(t));
            return if ok {
                Credentials::Valid
            } else {
                Credentials::Invalid
            };
        }
        match cookie_value(headers, COOKIE) {
            Some(id) if self.session_ok(id) => Credentials::Valid,
            Some(_) => Credentials::Invalid,
            None => Credentials::Missing,
        }
    }

    fn new_session(&self) -> String {
        let id = random_hex(32);
        if let Ok(mut s) = self.sessions.lock() {
            let now = Instant::now();
            s.retain(|_, exp| *exp > now);
            if s.len() >= MAX_SESSIONS {
                if let Some(oldest) = s.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) {
                    s.remove(&oldest);
                }
            }
            s.insert(id.clone(), now + SESSION_TTL);
        }
        id
    }

    fn end_session(&self, headers: &HeaderMap) {
        if let (Some(id), Ok(mut s)) = (cookie_value(headers, COOKIE), self.sessions.lock()) {
            s.remove(id);
        }
    }

    /// `Some(retry_after)` while `ip` is locked out.
    fn locked_out(&self, ip: IpAddr) -> Option<Duration> {
        let f = self.failures.lock().ok()?;
        let (n, since) = f.get(&ip)?;
        let left = FAILURE_WINDOW.checked_sub(since.elapsed())?;
        (*n >= MAX_FAILURES).then_some(left)
    }

    fn failed(&self, ip: IpAddr) {
        let Ok(mut f) = self.failures.lock() else {
            return;
        };
        if f.len() >= MAX_TRACKED {
            f.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        let e = f.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAILURE_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }
}

/// `Origin`, when a browser sends one, must be this server (scheme-less compare with
/// `Host`): a page elsewhere must not drive the API or read the stream.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// Middleware on every `/api` route but login/logout and the stream (which checks itself).
pub async fn require(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let open = ["/login", "/logout", "/stream", "/session"];
    if open.iter().any(|p| path.ends_with(p)) {
        return next.run(req).await;
    }
    if req.method() != Method::GET && !same_origin(req.headers()) {
        return error(StatusCode::FORBIDDEN, "cross-origin request refused").into_response();
    }
    match s.auth.check(req.headers()) {
        Credentials::Valid => next.run(req).await,
        _ => unauthorized().into_response(),
    }
}

pub fn unauthorized() -> ApiError {
    error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong admin token (send `Authorization: Bearer <token>` or sign in; the token is MQTT_PROXY_ADMIN_TOKEN or <data-dir>/admin-token)",
    )
}

#[derive(Deserialize)]
pub struct Login {
    token: String,
}

pub async fn login(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !same_origin(&headers) {
        return error(StatusCode::FORBIDDEN, "cross-origin request refused").into_response();
    }
    if let Some(left) = s.auth.locked_out(peer.ip()) {
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed sign-ins from this address; try again later",
        )
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&left.as_secs().max(1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let Ok(Login { token }) = serde_json::from_slice::<Login>(&body) else {
        return error(StatusCode::BAD_REQUEST, "expected {\"token\": \"…\"}").into_response();
    };
    if !s.auth.token_ok(&token) {
        s.auth.failed(peer.ip());
        tracing::warn!(peer = %peer.ip(), "failed dashboard sign-in");
        return unauthorized().into_response();
    }
    let id = s.auth.new_session();
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    let mut r = Json(serde_json::json!({ "ok": true })).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `GET /api/session`: `{"signedIn": bool}`, so the dashboard can tell whether to show the
/// sign-in form without provoking a 401 (which browsers log as an error).
pub async fn session(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let signed_in = s.auth.check(&headers) == Credentials::Valid;
    Json(serde_json::json!({ "signedIn": signed_in })).into_response()
}

pub async fn logout(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return error(StatusCode::FORBIDDEN, "cross-origin request refused").into_response();
    }
    s.auth.end_session(&headers);
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "mqtt_proxy_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        ),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_logins_lock_an_address_out() {
        let a = Auth::new("t".into());
        let ip: IpAddr = [127, 0, 0, 9].into();
        for _ in 0..MAX_FAILURES {
            assert!(a.locked_out(ip).is_none());
            a.failed(ip);
        }
        assert!(a.locked_out(ip).is_some());
        assert!(a.locked_out([127, 0, 0, 10].into()).is_none());
    }

    #[test]
    fn cookie_and_origin_parsing() {
        let a = Auth::new("tok".into());
        let id = a.new_session();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("x=1; {COOKIE}={id}")).expect("header"),
        );
        assert_eq!(a.check(&h), Credentials::Valid);
        a.end_session(&h);
        assert_eq!(a.check(&h), Credentials::Invalid);
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:3000"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:3000"),
        );
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.test"));
        assert!(!same_origin(&h));
    }
}
