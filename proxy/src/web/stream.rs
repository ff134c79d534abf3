//! `GET /api/stream`: the dashboard's live feed over a WebSocket. It pushes JSON events:
//!
//! - `{"type":"message","id":n,"time":ms,"direction":"toBrokers"|"toDevice","client":…,
//!   "topic":…,"size":n,"qos":q,"retain":b,"payload":base64 (first 256 bytes),
//!   "truncated":b,"brokers":[{"broker":name,"outcome":"queued"|"delivered"}]}`
//! - `{"type":"outcome","id":n,"time":ms,"broker":name,"outcome":"written"|"acked"|"dropped",
//!   "reason":r}` as a device message's copy moves on at one broker (`id` is the message
//!   event's; `reason`, only with `dropped`, is the `mqtt_proxy_messages_dropped_total` one)
//! - `{"type":"stats", …the /api/status document…, "viewerDropped":n, "notShown":n}` every
//!   second (`notShown`: messages beyond the feed's 2,000 events/s, see [`crate::events`])
//! - `{"type":"dropped","viewerDropped":n}` as soon as this viewer lost events.
//!
//! Who may watch: the `Origin`, when sent, must be this server (a page elsewhere cannot
//! read the feed through a signed-in browser), and the viewer is authenticated by the
//! session cookie or bearer header of the upgrade request, or else by a first frame
//! `{"type":"auth","token":…}` within 10 s — never by the URL, which ends up in logs.
//! Wrong credentials: 401 before the upgrade, or close code 4401 after it.
//!
//! A viewer that cannot keep up loses the oldest events (see [`crate::events`]); the data
//! path never waits for it. Losses are counted in `mqtt_proxy_stream_dropped_total` and
//! reported to the viewer.

use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::SinkExt;
use serde_json::json;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::api::{error, status};
use super::auth::{same_origin, unauthorized, Credentials};
use super::Shared;
use crate::events::{Direction, Event, MessageEvent, OutcomeEvent, HUB, PREVIEW_BYTES};
use crate::metrics::METRICS;

/// Close code for failed authentication (4000-4999 are the application's).
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Events written together at most (one flush).
const BATCH: usize = 256;

pub async fn upgrade(
    State(s): State<Shared>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !same_origin(&headers) {
        return error(StatusCode::FORBIDDEN, "cross-origin stream refused").into_response();
    }
    let authed = match s.auth.check(&headers) {
        Credentials::Valid => true,
        Credentials::Invalid => return unauthorized().into_response(),
        Credentials::Missing => false,
    };
    // A plain request (no upgrade) can only authenticate by header: without one, 401.
    let Ok(ws) = ws else {
        return match authed {
            true => error(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade").into_response(),
            false => unauthorized().into_response(),
        };
    };
    ws.max_message_size(4096)
        .on_upgrade(move |socket| viewer(s, socket, authed))
}

async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })))
        .await;
}

/// Waits for `{"type":"auth","token":…}` as the first frame.
async fn first_frame_auth(s: &Shared, socket: &mut WebSocket) -> bool {
    let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(AUTH_TIMEOUT, socket.recv()).await
    else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(t.as_str()) else {
        return false;
    };
    v["type"] == "auth" && v["token"].as_str().is_some_and(|t| s.auth.token_ok(t))
}

/// The event's JSON, rendered once and shared by every viewer.
fn rendered(e: &Event) -> Utf8Bytes {
    let bytes = match e {
        Event::Message(m) => m.rendered.get_or_init(|| message_json(m).into()),
        Event::Outcome(o) => o.rendered.get_or_init(|| outcome_json(o).into()),
    }
    .clone();
    // Rendered from a `String`, so always valid UTF-8.
    Utf8Bytes::try_from(bytes).unwrap_or_else(|_| Utf8Bytes::from_static("{}"))
}

fn outcome_json(o: &OutcomeEvent) -> String {
    let mut v = json!({
        "type": "outcome",
        "id": o.id,
        "time": o.time_ms,
        "broker": &*o.broker,
        "outcome": o.outcome.as_str(),
    });
    if let crate::events::Outcome::Dropped(why) = o.outcome {
        v["reason"] = why.into();
    }
    v.to_string()
}

fn message_json(e: &MessageEvent) -> String {
    let brokers: Vec<_> = e
        .brokers
        .iter()
        .map(|(b, o)| json!({ "broker": &**b, "outcome": o.as_str() }))
        .collect();
    json!({
        "type": "message",
        "id": e.id,
        "time": e.time_ms,
        "direction": match e.direction {
            Direction::ToBrokers => "toBrokers",
            Direction::ToDevice => "toDevice",
        },
        "client": &*e.client_id,
        "topic": String::from_utf8_lossy(&e.topic),
        "size": e.size,
        "qos": e.qos,
        "retain": e.retain,
        "payload": base64::engine::general_purpose::STANDARD.encode(&e.preview),
        "truncated": e.size > PREVIEW_BYTES,
        "brokers": brokers,
    })
    .to_string()
}

async fn viewer(s: Shared, mut socket: WebSocket, authed: bool) {
    if !authed && !first_frame_auth(&s, &mut socket).await {
        return close(socket, CLOSE_UNAUTHORIZED, "unauthorized").await;
    }
    let mut feed = HUB.subscribe();
    let skipped_at_start = HUB.skipped();
    let mut dropped: u64 = 0;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    if socket
        .send(Message::Text(json!({"type": "hello"}).to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let out: Utf8Bytes = tokio::select! {
            r = feed.rx.recv() => match r {
                Ok(e) => rendered(&e),
                Err(RecvError::Lagged(n)) => {
                    dropped += n;
                    METRICS.stream_dropped.inc_by(n);
                    json!({"type": "dropped", "viewerDropped": dropped}).to_string().into()
                }
                Err(RecvError::Closed) => return,
            },
            _ = every.tick() => {
                let mut v = status::body(&s).await;
                v["type"] = "stats".into();
                v["time"] = crate::brokerset::now_ms().into();
                v["viewerDropped"] = dropped.into();
                v["notShown"] = HUB.skipped().saturating_sub(skipped_at_start).into();
                v.to_string().into()
            }
            m = socket.recv() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                // Pings are answered by the library; anything else is ignored.
                Some(Ok(_)) => continue,
            },
        };
        // Whatever else is already waiting goes out in the same write: one syscall per
        // burst rather than per event keeps the cost of a viewer small.
        if socket.feed(Message::Text(out)).await.is_err() {
            return;
        }
        for _ in 0..BATCH {
            let next = match feed.rx.try_recv() {
                Ok(e) => rendered(&e),
                Err(TryRecvError::Lagged(n)) => {
                    dropped += n;
                    METRICS.stream_dropped.inc_by(n);
                    json!({"type": "dropped", "viewerDropped": dropped})
                        .to_string()
                        .into()
                }
                Err(_) => break,
            };
            if socket.feed(Message::Text(next)).await.is_err() {
                return;
            }
        }
        if socket.flush().await.is_err() {
            return;
        }
    }
}
