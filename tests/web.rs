//! The dashboard's side of the HTTP API, over real sockets against real mosquitto brokers:
//! every `/api` route and the WebSocket stream refuse missing or wrong credentials, the
//! stream refuses foreign origins, login sets an HttpOnly/SameSite cookie that works for
//! both; the seed project's request bodies, toggle and `/health` work; forwarding latency
//! and rates appear in `/api/status` and `/metrics` after traffic; and the three API fixes
//! of issue 14 item 10 (passwordFile, moved broker, concurrent mutations).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures_util::{SinkExt, StreamExt};
use mqtt_proxy::store::BrokerStore;
use mqtt_proxy::web::{self, AppState};
use mqtt_proxy::ProxyHandle;
use mqtt_proxy_tests::outage::{broker, http, proxy_config, HttpResponse};
use mqtt_proxy_tests::{Mosquitto, Publisher};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "web-test-token";
const WAIT: Duration = Duration::from_secs(10);

struct Api {
    addr: SocketAddr,
    _stop: watch::Sender<bool>,
    proxy: ProxyHandle,
    _data: tempfile::TempDir,
}

/// A proxy in store mode (with a secret, so passwords can be stored) and its HTTP server.
async fn start(brokers: &[mqtt_proxy::broker::BrokerConfig]) -> Result<Api> {
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

async fn api(a: &Api, method: &str, path: &str, body: Option<&str>) -> Result<HttpResponse> {
    http(a.addr, method, path, Some(TOKEN), body).await
}

/// One request with extra header lines (cookies, origins), which the shared helper lacks.
async fn raw(
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
async fn login(addr: SocketAddr) -> Result<String> {
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

async fn ws(
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

fn http_status(e: &tokio_tungstenite::tungstenite::Error) -> Option<u16> {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => Some(r.status().as_u16()),
        _ => None,
    }
}

/// The next text frame as JSON whose `type` is `kind`, within [`WAIT`].
async fn next_of<S>(ws: &mut S, kind: &str, mut pred: impl FnMut(&Value) -> bool) -> Result<Value>
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_route_and_the_stream_need_credentials() -> Result<()> {
    let a = start(&[broker("web-auth", 1)]).await?;
    let routes = [
        ("GET", "/api/status"),
        ("GET", "/api/brokers"),
        ("POST", "/api/brokers"),
        ("GET", "/api/brokers/web-auth"),
        ("PUT", "/api/brokers/web-auth"),
        ("DELETE", "/api/brokers/web-auth"),
        ("POST", "/api/brokers/web-auth/toggle"),
        ("GET", "/api/stream"),
        ("GET", "/api/nonexistent"),
    ];
    for (method, path) in routes {
        let none = http(a.addr, method, path, None, Some("{}")).await?;
        assert_eq!(
            none.status, 401,
            "{method} {path} without a token: {}",
            none.body
        );
        let wrong = http(a.addr, method, path, Some("nope"), Some("{}")).await?;
        assert_eq!(wrong.status, 401, "{method} {path} with a wrong token");
        let cookie = "Cookie: mqtt_proxy_session=forged\r\n";
        let (status, _) = raw(a.addr, method, path, cookie, "{}").await?;
        assert_eq!(status, 401, "{method} {path} with a forged cookie");
    }
    // The broker is still there: none of the refused requests changed anything.
    assert_eq!(
        api(&a, "GET", "/api/brokers/web-auth", None).await?.status,
        200
    );

    // Login: wrong token refused, right one sets a cookie that works for the API.
    let bad = http(
        a.addr,
        "POST",
        "/api/login",
        None,
        Some(r#"{"token":"no"}"#),
    )
    .await?;
    assert_eq!(bad.status, 401);
    let cookie = login(a.addr).await?;
    let (status, body) = raw(a.addr, "GET", "/api/status", &cookie, "").await?;
    assert_eq!(status, 200, "{body}");
    let origin = format!("http://{}", a.addr);

    // WebSocket: a forged cookie is refused before the upgrade, a foreign Origin too.
    let forged = ws(a.addr, &[("cookie", "mqtt_proxy_session=forged".into())]).await;
    assert_eq!(
        forged.as_ref().err().and_then(http_status),
        Some(401),
        "{forged:?}"
    );
    let session = cookie.trim_end().trim_start_matches("Cookie: ").to_string();
    let foreign = ws(
        a.addr,
        &[
            ("cookie", session.clone()),
            ("origin", "http://evil.test".into()),
        ],
    )
    .await;
    assert_eq!(
        foreign.as_ref().err().and_then(http_status),
        Some(403),
        "{foreign:?}"
    );
    // Without credentials the upgrade happens, but a wrong first frame closes with 4401.
    let mut anon = ws(a.addr, &[("origin", origin.clone())]).await?;
    anon.send(Message::text(
        json!({"type":"auth","token":"nope"}).to_string(),
    ))
    .await?;
    let closed = tokio::time::timeout(WAIT, async {
        while let Some(m) = anon.next().await {
            if let Ok(Message::Close(Some(f))) = m {
                return Some(u16::from(f.code));
            }
            if !matches!(m, Ok(Message::Ping(_) | Message::Pong(_))) {
                if let Ok(Message::Text(t)) = &m {
                    panic!("unauthenticated viewer got data: {t}");
                }
            }
        }
        None
    })
    .await?;
    assert_eq!(closed, Some(4401));
    // With the cookie: hello, then stats every second.
    let mut ok = ws(a.addr, &[("cookie", session), ("origin", origin)]).await?;
    next_of(&mut ok, "hello", |_| true).await?;
    let stats = next_of(&mut ok, "stats", |_| true).await?;
    assert!(stats["brokers"].is_array(), "{stats}");
    // The first-frame way, for clients that cannot set a cookie.
    let mut first = ws(a.addr, &[]).await?;
    first
        .send(Message::text(
            json!({"type":"auth","token":TOKEN}).to_string(),
        ))
        .await?;
    next_of(&mut first, "hello", |_| true).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_body_limit_and_spa_fallback() -> Result<()> {
    let a = start(&[]).await?;
    let (status, text) = raw(a.addr, "GET", "/brokers", "", "").await?;
    assert_eq!(status, 200, "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/html"), "{text}");
    for h in [
        "content-security-policy:",
        "x-content-type-options: nosniff",
        "referrer-policy:",
    ] {
        assert!(lower.contains(h), "missing {h}: {text}");
    }
    assert!(
        lower.contains("frame-ancestors 'none'")
            && !lower.contains("script-src 'self' 'unsafe-inline'")
    );
    assert!(
        !lower.contains("access-control-allow-origin"),
        "CORS must stay closed"
    );
    let big = format!(r#"{{"name":"x","address":"{}"}}"#, "a".repeat(100 * 1024));
    let r = api(&a, "POST", "/api/brokers", Some(&big)).await?;
    assert_eq!(r.status, 413, "{}", r.body);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_projects_bodies_toggle_and_health_work() -> Result<()> {
    let m = Mosquitto::start().await?;
    let a = start(&[]).await?;
    assert_eq!(
        http(a.addr, "GET", "/health", None, None).await?.status,
        200
    );
    // The old UI's create body: camelCase, no id, empty strings for unset fields.
    let seed = json!({"name": "Seed Broker", "address": "127.0.0.1", "port": m.port(),
        "clientIdPrefix": "", "username": "u", "password": "pw1", "enabled": true,
        "useTls": false, "insecureSkipVerify": false, "caCertPath": "",
        "bidirectional": false, "topics": [], "subscriptionTopics": []});
    let r = api(&a, "POST", "/api/brokers", Some(&seed.to_string())).await?;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()?["id"], "seed-broker");
    let again = api(&a, "POST", "/api/brokers", Some(&seed.to_string())).await?;
    assert_eq!(again.json()?["id"], "seed-broker-2", "{}", again.body);
    // The old UI's edit body sends the password placeholder back: the password is kept.
    let mut edit = seed.clone();
    edit["id"] = "seed-broker".into();
    edit["password"] = "********".into();
    edit["topics"] = json!(["t/#"]);
    let r = api(
        &a,
        "PUT",
        "/api/brokers/seed-broker",
        Some(&edit.to_string()),
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let set = a.proxy.brokers();
    let running = set.get("seed-broker").context("running")?;
    assert_eq!(running.password.as_ref().map(|p| p.expose()), Some("pw1"));
    assert_eq!(running.config.topics, vec!["t/#".to_string()]);
    // Toggle off: out of the running set, shown as paused; on again: back.
    let r = api(
        &a,
        "POST",
        "/api/brokers/seed-broker/toggle",
        Some(r#"{"enabled":false}"#),
    )
    .await?;
    assert_eq!(
        (r.status, r.json()?["enabled"].clone()),
        (200, json!(false)),
        "{}",
        r.body
    );
    assert!(a.proxy.brokers().get("seed-broker").is_none());
    let status = api(&a, "GET", "/api/status", None).await?.json()?;
    let entry = status["brokers"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["id"] == "seed-broker").cloned())
        .context("listed")?;
    assert_eq!(entry["state"], "paused", "{entry}");
    let r = api(
        &a,
        "POST",
        "/api/brokers/seed-broker/toggle",
        Some(r#"{"enabled":true}"#),
    )
    .await?;
    assert_eq!(r.status, 200);
    assert!(a.proxy.brokers().get("seed-broker").is_some());
    Ok(())
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_rates_devices_and_the_stream_move_with_traffic() -> Result<()> {
    let m = Mosquitto::start().await?;
    let a = start(&[broker("web-lat", m.port())]).await?;
    let mut viewer = ws(a.addr, &[("authorization", format!("Bearer {TOKEN}"))]).await?;
    next_of(&mut viewer, "hello", |_| true).await?;
    let device = Publisher::builder(a.proxy.mqtt_addr().port())
        .client_id("web-lat-device")
        .connect()
        .await?;
    let count = r#"mqtt_proxy_forward_latency_seconds_count{broker="web-lat"} "#;
    let before = metric(
        &http(a.addr, "GET", "/metrics", None, None).await?.body,
        count,
    );
    let deadline = Instant::now() + WAIT * 2;
    let (entry, status) = loop {
        device.publish("lat/q1", "x", 1, false).await?;
        device.publish("lat/q0", "y", 0, false).await?;
        let status = api(&a, "GET", "/api/status", None).await?.json()?;
        let entry = status["brokers"][0].clone();
        if entry["latencyP50"].is_number() && entry["rate10s"].as_f64() > Some(0.0) {
            break (entry, status);
        }
        ensure!(
            Instant::now() < deadline,
            "no latency/rate in /api/status: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let p50 = entry["latencyP50"].as_f64().unwrap_or(-1.0);
    let p99 = entry["latencyP99"].as_f64().unwrap_or(-1.0);
    assert!(p50 > 0.0 && p50 < 5.0 && p99 >= p50, "{entry}");
    assert_eq!(entry["state"], "connected", "{entry}");
    let dev = status["connectedDevices"]
        .as_array()
        .and_then(|d| {
            d.iter()
                .find(|d| d["clientId"] == "web-lat-device")
                .cloned()
        })
        .context("device listed")?;
    assert!(
        dev["messagesIn"].as_u64() > Some(0) && dev["protocolVersion"] == "3.1.1",
        "{dev}"
    );
    assert!(
        dev["remoteAddress"]
            .as_str()
            .is_some_and(|r| r.starts_with("127.0.0.1:")),
        "{dev}"
    );
    let metrics = http(a.addr, "GET", "/metrics", None, None).await?.body;
    assert!(metric(&metrics, count) > before, "histogram did not move");
    assert!(
        metrics.contains("process_resident_memory_bytes"),
        "process collector"
    );
    // The viewer saw the message, with its payload preview.
    let e = next_of(&mut viewer, "message", |v| v["topic"] == "lat/q1").await?;
    assert_eq!(
        (e["direction"].clone(), e["payload"].clone()),
        (json!("toBrokers"), json!("eA==")),
        "{e}"
    );
    assert_eq!(e["brokers"][0]["broker"], "web-lat", "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_is_refused_over_the_api() -> Result<()> {
    let a = start(&[]).await?;
    let body = json!({"id": "pf", "address": "127.0.0.1", "passwordFile": "/proc/self/environ"});
    let r = api(&a, "POST", "/api/brokers", Some(&body.to_string())).await?;
    assert_eq!(
        (r.status, r.json()?["field"].clone()),
        (400, json!("passwordFile")),
        "{}",
        r.body
    );
    assert!(a.proxy.brokers().get("pf").is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_tls_file_is_named_as_its_field() -> Result<()> {
    let a = start(&[]).await?;
    let body = json!({"name": "tls", "address": "127.0.0.1", "useTls": true,
        "caCertPath": "/nonexistent/ca.pem"});
    let r = api(&a, "POST", "/api/brokers", Some(&body.to_string())).await?;
    assert_eq!(
        (r.status, r.json()?["field"].clone()),
        (400, json!("caCertPath")),
        "{}",
        r.body
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_broker_needs_the_password_again() -> Result<()> {
    let mut b = broker("mv", 1883);
    b.username = Some("u".into());
    b.password = Some(mqtt_proxy::broker::Secret::new("pw"));
    let a = start(&[b]).await?;
    let moved = json!({"id": "mv", "address": "10.9.9.9", "port": 1883, "username": "u"});
    let r = api(&a, "PUT", "/api/brokers/mv", Some(&moved.to_string())).await?;
    assert_eq!(
        (r.status, r.json()?["field"].clone()),
        (400, json!("password")),
        "{}",
        r.body
    );
    let placeholder =
        json!({"id": "mv", "address": "127.0.0.1", "port": 1884, "password": "********"});
    let r = api(&a, "PUT", "/api/brokers/mv", Some(&placeholder.to_string())).await?;
    assert_eq!(r.status, 400, "a new port with the placeholder: {}", r.body);
    assert_eq!(
        a.proxy.brokers().get("mv").map(|b| b.config.port),
        Some(1883)
    );
    // Same host and port: omitting the password keeps it; a new host with one is fine.
    let same = json!({"id": "mv", "address": "127.0.0.1", "port": 1883, "username": "u2"});
    assert_eq!(
        api(&a, "PUT", "/api/brokers/mv", Some(&same.to_string()))
            .await?
            .status,
        200
    );
    let with = json!({"id": "mv", "address": "10.9.9.9", "port": 1883, "password": "new"});
    assert_eq!(
        api(&a, "PUT", "/api/brokers/mv", Some(&with.to_string()))
            .await?
            .status,
        200
    );
    let set = a.proxy.brokers();
    assert_eq!(
        set.get("mv")
            .and_then(|b| b.password.as_ref())
            .map(|p| p.expose()),
        Some("new")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mutations_lose_no_update() -> Result<()> {
    let a = Arc::new(start(&[]).await?);
    let n = 24;
    let mut tasks = Vec::new();
    for i in 0..n {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"id": format!("c{i}"), "address": "127.0.0.1", "port": 1000 + i});
            api(&a, "POST", "/api/brokers", Some(&body.to_string())).await
        }));
    }
    for t in tasks {
        let r = t.await??;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let list = api(&a, "GET", "/api/brokers", None).await?.json()?;
    let ids = list.as_array().map_or(0, Vec::len);
    assert_eq!(ids, n as usize, "lost updates: {list}");
    assert_eq!(a.proxy.brokers().brokers.len(), n as usize);
    Ok(())
}
