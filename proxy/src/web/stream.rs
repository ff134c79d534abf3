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
//! reported to the viewer. Each viewer is written at most every [`PACE`], in batches.

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
const BATCH: usize = 1024;
/// The least time between two writes to one viewer. Without it, each event of a steady
/// feed wakes every parked viewer for a write of its own (3 viewers × 8,000 events/s at
/// 2,000 described messages/s); paced, events gather in the ring (well under
/// [`crate::events::CAPACITY`] in 20 ms) and go out in one write, a delay no person sees.
const PACE: Duration = Duration::from_millis(20);

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

/// Written out by hand rather than through a `serde_json::Value`: a described message brings
/// one or two of these per broker, and building a map per event was most of their cost.
fn outcome_json(o: &OutcomeEvent) -> String {
    use std::fmt::Write as _;
    // The broker label is user text: serde_json quotes and escapes it.
    let broker = serde_json::to_string(&*o.broker).unwrap_or_else(|_| "\"\"".into());
    let mut s = String::with_capacity(96 + broker.len());
    let _ = write!(
        s,
        r#"{{"type":"outcome","id":{},"time":{},"broker":{broker},"outcome":"{}""#,
        o.id,
        o.time_ms,
        o.outcome.as_str()
    );
    // Reasons are the drop metric's fixed labels (`[a-z_]+`), safe to write as they are.
    if let crate::events::Outcome::Dropped(why) = o.outcome {
        let _ = write!(s, r#","reason":"{why}""#);
    }
    s.push('}');
    s
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
        tokio::time::sleep(PACE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Outcome;

    fn event(broker: &str, outcome: Outcome) -> serde_json::Value {
        let o = OutcomeEvent {
            id: 7,
            time_ms: 1234,
            broker: broker.into(),
            outcome,
            rendered: std::sync::OnceLock::new(),
        };
        serde_json::from_str(&outcome_json(&o)).expect("valid JSON")
    }

    #[test]
    fn outcome_events_are_json_with_the_reason_only_when_dropped() {
        assert_eq!(
            event("home", Outcome::Acked),
            json!({"type": "outcome", "id": 7, "time": 1234, "broker": "home", "outcome": "acked"})
        );
        let v = event(r#"odd "name"\"#, Outcome::Dropped("queue_full"));
        assert_eq!(
            (
                v["broker"].as_str(),
                v["outcome"].as_str(),
                v["reason"].as_str()
            ),
            (Some(r#"odd "name"\"#), Some("dropped"), Some("queue_full"))
        );
    }
}
