//! Helpers of `tests/web.rs`: a proxy in store mode with its HTTP server, requests with
//! extra headers (cookies, origins) which [`crate::outage::http`] does not send, sign-in,
//! and WebSocket viewers of `/api/stream`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures_util::StreamExt;
use mqtt_proxy::store::BrokerStore;
use mqtt_proxy::web::{self, AppState};
use mqtt_proxy::ProxyHandle;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::outage::{http, proxy_config, HttpResponse};

pub const TOKEN: &str = "web-test-token";
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Api {
    pub addr: SocketAddr,
    _stop: watch::Sender<bool>,
    pub proxy: ProxyHandle,
    _data: tempfile::TempDir,
}

/// A proxy in store mode (with a secret, so passwords can be stored) and its HTTP server.
pub async fn start(brokers: &[mqtt_proxy::broker::BrokerConfig]) -> Result<Api> {
    let data = tempfile::tempdir()?;
    let mut store = BrokerStore::open(data.path(), Some("secret"))?;
    for b in brokers {
        store.upsert(b.clone())?;
    }
    let proxy = ProxyHandle::start(&proxy_config(), store.brokers()).await?;
    let state = Arc::new(AppState {
        control: proxy.control(),
        store: Some(tokio::sync::Mutex::new(store)),
        admin_token: TOKEN.into(),
        ready: proxy.ready(),
        devices: proxy.device_counter(),
    });
    let (stop, stop_rx) = watch::channel(false);
    let addr = web::serve("127.0.0.1:0".parse()?, state, stop_rx).await?;
    Ok(Api {
        addr,
        _stop: stop,
        proxy,
        _data: data,
    })
}

pub async fn api(a: &Api, method: &str, path: &str, body: Option<&str>) -> Result<HttpResponse> {
    http(a.addr, method, path, Some(TOKEN), body).await
}

/// One request with extra header lines (cookies, origins), which the shared helper lacks.
pub async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
    body: &str,
) -> Result<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("status line")?;
        anyhow::Ok((status, text))
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .context("HTTP timeout")?
}

/// Signs in and returns the `Cookie:` header line.
pub async fn login(addr: SocketAddr) -> Result<String> {
    let body = json!({ "token": TOKEN }).to_string();
    let (status, text) = raw(addr, "POST", "/api/login", "", &body).await?;
    ensure!(status == 200, "login: {text}");
    let set = text
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .context("no set-cookie")?;
    ensure!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let pair = set.split(';').next().context("cookie")?;
    Ok(format!("Cookie: {pair}\r\n"))
}

pub async fn ws(
    addr: SocketAddr,
    headers: &[(&str, String)],
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    let mut req = format!("ws://{addr}/api/stream").into_client_request()?;
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            k.parse::<tokio_tungstenite::tungstenite::http::HeaderName>(),
            v.parse(),
        ) {
            req.headers_mut().insert(k, v);
        }
    }
    Ok(tokio_tungstenite::connect_async(req).await?.0)
}

pub fn http_status(e: &tokio_tungstenite::tungstenite::Error) -> Option<u16> {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => Some(r.status().as_u16()),
        _ => None,
    }
}

/// The next text frame as JSON whose `type` is `kind`, within [`WAIT`].
pub async fn next_of<S>(
    ws: &mut S,
    kind: &str,
    mut pred: impl FnMut(&Value) -> bool,
) -> Result<Value>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, ws.next())
            .await
            .with_context(|| format!("no {kind:?} event within {WAIT:?}"))?;
        match m {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str())?;
                if v["type"] == kind && pred(&v) {
                    return Ok(v);
                }
            }
            Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("stream error: {e}"),
            None => bail!("stream ended"),
        }
    }
}
