//! The dashboard, embedded in the binary: the Vite build of `web-ui/` (`web-ui/dist`, made
//! by `proxy/build.rs`) served at `/`, the way Prometheus and Grafana ship one binary with
//! their UI inside.
//!
//! Hashed files under `assets/` never change under their name, so they are cached for a
//! year; `index.html` is revalidated every time so a new build shows up at once. Paths that
//! are no file (client-side routes like `/brokers`) get `index.html`. A binary built
//! without Node.js serves a page saying how to build the UI instead.

use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};

#[derive(rust_embed::Embed)]
#[folder = "../web-ui/dist"]
#[allow_missing = true]
struct Ui;

const NOT_BUILT: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mqtt-proxy</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>mqtt-proxy</h1>
<p>The proxy runs, but this binary was built without its dashboard: Node.js (20 or later)
and npm were not found when it was compiled.</p>
<p>Install Node.js, then rebuild: <code>cargo build --release -p mqtt-proxy</code> runs
<code>npm ci &amp;&amp; npm run build</code> in <code>web-ui/</code> and embeds the result.</p>
<p>The API works without it: <code>/api/status</code>, <code>/api/brokers</code>,
<code>/metrics</code>, <code>/healthz</code>, <code>/readyz</code>.</p>
</body></html>
"#;

fn file(path: &str) -> Option<Response> {
    let f = Ui::get(path)?;
    let mime = f.metadata.mimetype().to_string();
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut r = (StatusCode::OK, f.data.into_owned()).into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&mime) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    Some(r)
}

pub async fn serve(method: Method, uri: Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let path = uri.path().trim_start_matches('/');
    if let Some(r) = (!path.is_empty()).then(|| file(path)).flatten() {
        return r;
    }
    // A missing hashed asset is a 404, not the SPA page (a stale tab must not get HTML as JS).
    if path.starts_with("assets/") {
        return StatusCode::NOT_FOUND.into_response();
    }
    match file("index.html") {
        Some(r) => r,
        None => Html(NOT_BUILT).into_response(),
    }
}
