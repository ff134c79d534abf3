//! The live stream's per-broker outcomes, against a real mosquitto and a broker that is down:
//! a device's QoS 1 publish is described as `queued` and followed by `written` then `acked`
//! for that broker (keyed by the message event's id); a QoS 0 publish ends at `written`; a
//! message evicted from a down broker's full queue is `dropped` with reason `queue_full`.
//!
//! The feed is process-wide, so every test filters by its own topics and broker names.

use std::time::Duration;

use anyhow::{ensure, Result};
use mqtt_proxy::broker::{OverflowPolicy, QueueLimits};
use mqtt_proxy_tests::outage::broker;
use mqtt_proxy_tests::web::{next_of, start, ws, TOKEN};
use mqtt_proxy_tests::{free_port, Mosquitto, Publisher};
use serde_json::Value;

type Viewer =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn viewer(addr: std::net::SocketAddr) -> Result<Viewer> {
    let mut v = ws(addr, &[("authorization", format!("Bearer {TOKEN}"))]).await?;
    next_of(&mut v, "hello", |_| true).await?;
    Ok(v)
}

/// The message event for `topic`, and its id.
async fn message(v: &mut Viewer, topic: &str) -> Result<(Value, u64)> {
    let e = next_of(v, "message", |e| e["topic"] == topic).await?;
    let id = e["id"].as_u64();
    ensure!(id.is_some(), "message event without an id: {e}");
    Ok((e, id.unwrap_or_default()))
}

/// Outcome events of message `id` at `broker`, up to and including the first `last`.
async fn outcomes(v: &mut Viewer, id: u64, broker: &str, last: &str) -> Result<Vec<Value>> {
    let mut seen = Vec::new();
    loop {
        let o = next_of(v, "outcome", |o| o["id"] == id && o["broker"] == broker).await?;
        let done = o["outcome"] == last;
        seen.push(o);
        if done {
            return Ok(seen);
        }
    }
}

fn names(outcomes: &[Value]) -> Vec<&str> {
    outcomes
        .iter()
        .map(|o| o["outcome"].as_str().unwrap_or("?"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_publish_is_queued_written_then_acked_and_qos0_ends_written() -> Result<()> {
    let m = Mosquitto::start().await?;
    let a = start(&[broker("stream-up", m.port())]).await?;
    let mut v = viewer(a.addr).await?;
    let device = Publisher::builder(a.proxy.mqtt_addr().port())
        .client_id("stream-up-device")
        .connect()
        .await?;

    device.publish("stream/q1", "one", 1, false).await?;
    let (e, id) = message(&mut v, "stream/q1").await?;
    assert_eq!(e["brokers"][0]["broker"], "stream-up", "{e}");
    assert_eq!(e["brokers"][0]["outcome"], "queued", "{e}");
    let seen = outcomes(&mut v, id, "stream-up", "acked").await?;
    assert_eq!(names(&seen), ["written", "acked"], "{seen:?}");
    assert!(seen.iter().all(|o| o["time"].is_u64()), "{seen:?}");

    // QoS 0: written is the last step. A QoS 1 publish after it is acked, and by then the
    // QoS 0 message has shown nothing past `written` (the feed is in order).
    device.publish("stream/q0", "zero", 0, false).await?;
    let (_, id0) = message(&mut v, "stream/q0").await?;
    let seen = outcomes(&mut v, id0, "stream-up", "written").await?;
    assert_eq!(names(&seen), ["written"], "{seen:?}");
    device.publish("stream/q1-after", "two", 1, false).await?;
    let (_, id1) = message(&mut v, "stream/q1-after").await?;
    let mut late = Vec::new();
    loop {
        let o = next_of(&mut v, "outcome", |o| {
            (o["id"] == id0 || o["id"] == id1) && o["broker"] == "stream-up"
        })
        .await?;
        if o["id"] == id1 && o["outcome"] == "acked" {
            break;
        }
        if o["id"] == id0 {
            late.push(o);
        }
    }
    assert!(late.is_empty(), "a QoS 0 message has no ack: {late:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_evicted_from_a_down_brokers_full_queue_is_dropped_with_its_reason() -> Result<()>
{
    let mut down = broker("stream-down", free_port());
    down.queue = Some(QueueLimits {
        max_messages: Some(1),
        max_bytes: None,
        overflow: Some(OverflowPolicy::DropOldest),
    });
    let a = start(&[down]).await?;
    let mut v = viewer(a.addr).await?;
    let device = Publisher::builder(a.proxy.mqtt_addr().port())
        .client_id("stream-down-device")
        .connect()
        .await?;

    device.publish("stream/first", "a", 1, false).await?;
    let (_, first) = message(&mut v, "stream/first").await?;
    device.publish("stream/second", "b", 1, false).await?;
    let (e, second) = message(&mut v, "stream/second").await?;
    assert_eq!(e["brokers"][0]["outcome"], "queued", "{e}");
    // The second message evicts the first (dropOldest, one message at most).
    let seen = outcomes(&mut v, first, "stream-down", "dropped").await?;
    assert_eq!(names(&seen), ["dropped"], "{seen:?}");
    assert_eq!(seen[0]["reason"], "queue_full", "{seen:?}");
    // The second stays queued: nothing about it within a short bounded look.
    let quiet = tokio::time::timeout(
        Duration::from_millis(500),
        next_of(&mut v, "outcome", |o| o["id"] == second),
    )
    .await;
    assert!(
        !matches!(quiet, Ok(Ok(_))),
        "the kept message got an outcome: {quiet:?}"
    );
    Ok(())
}
