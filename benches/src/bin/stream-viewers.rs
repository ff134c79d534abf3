//! `stream-viewers`: holds N dashboard viewers open on a proxy's `/api/stream` (bearer
//! token) and reads everything they are sent, for the "forwarding with 3 viewers" bench
//! (`benches/scripts/stream-viewers.sh`). Stops after `--seconds` or at SIGTERM/Ctrl-C and
//! prints, per viewer, the message events and per-broker outcome events received and the
//! events it was told it lost.
//!
//! Usage: `stream-viewers URL TOKEN [N=3] [SECONDS=300]`,
//! URL like `ws://127.0.0.1:3000/api/stream`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[derive(Default)]
struct Counts {
    messages: AtomicU64,
    outcomes: AtomicU64,
    dropped: AtomicU64,
}

fn dropped_of(frame: &str) -> Option<u64> {
    let at = frame.find("\"viewerDropped\":")? + "\"viewerDropped\":".len();
    let digits: String = frame[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

async fn viewer(url: String, token: String, counts: Arc<Counts>) -> Result<()> {
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .context("connecting to the stream")?;
    while let Some(m) = ws.next().await {
        let Ok(Message::Text(t)) = m else { continue };
        let t = t.as_str();
        if t.contains("\"type\":\"message\"") {
            counts.messages.fetch_add(1, Ordering::Relaxed);
        } else if t.contains("\"type\":\"outcome\"") {
            counts.outcomes.fetch_add(1, Ordering::Relaxed);
        } else if let Some(d) = dropped_of(t) {
            counts.dropped.fetch_max(d, Ordering::Relaxed);
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: stream-viewers URL TOKEN [N] [SECONDS]";
    let url = args.first().context(usage)?.clone();
    let token = args.get(1).context(usage)?.clone();
    let n: usize = args.get(2).map_or(Ok(3), |s| s.parse())?;
    let secs: u64 = args.get(3).map_or(Ok(300), |s| s.parse())?;
    let counts: Vec<Arc<Counts>> = (0..n).map(|_| Arc::default()).collect();
    for c in &counts {
        let (url, token, c) = (url.clone(), token.clone(), c.clone());
        tokio::spawn(async move {
            if let Err(e) = viewer(url, token, c).await {
                eprintln!("stream-viewers: {e:#}");
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    for (i, c) in counts.iter().enumerate() {
        println!(
            "viewer {i}: {} message events, {} outcome events, {} lost (told by the proxy)",
            c.messages.load(Ordering::Relaxed),
            c.outcomes.load(Ordering::Relaxed),
            c.dropped.load(Ordering::Relaxed)
        );
    }
    Ok(())
}
