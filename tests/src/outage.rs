//! Helpers for the proxy's failure-mode tests (`outages.rs`, `reload.rs`, `api.rs`):
//! sequence-numbered streams and their checks, a switchable TCP gate that makes a broker
//! unreachable without losing its subscribers, kubelet-style and editor-style file swaps,
//! Prometheus text parsing, and a tiny HTTP/1.1 client.
//!
//! Why a gate next to `Mosquitto::kill`: a restarted mosquitto (`persistence false`) has no
//! subscribers until the test's subscriber reconnects, so whatever the proxy delivers in that
//! window is lost *at the broker*. Tests that must count exactly what the proxy delivered
//! after an outage keep the broker and its subscriber up and cut the proxy's path instead:
//! a closed gate refuses connections exactly like a dead broker's port.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use mqtt_proxy::broker::BrokerConfig;
use mqtt_proxy::brokerset::BrokerStatus;
use mqtt_proxy::config::Config;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::{try_free_port, wait_until, Received, Subscriber, POLL_INTERVAL};

mod http;
pub use http::{http, HttpResponse};

// ---------------------------------------------------------------------------------------
// Proxy set-up

/// A proxy configuration for tests: devices on an ephemeral port of 127.0.0.1, and a short
/// drain so closing an upstream to a dead broker does not hold a test for the default 5 s.
pub fn proxy_config() -> Config {
    let mut config = Config {
        mqtt_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        ..Config::default()
    };
    config.session.drain_timeout = Duration::from_millis(500);
    config.auth.allow_anonymous = true;
    config
}

/// An enabled broker on 127.0.0.1:`port`. `id` doubles as the name, i.e. the `broker`
/// metric label: metrics are process-global, so give each test its own ids.
pub fn broker(id: &str, port: u16) -> BrokerConfig {
    BrokerConfig::new(id, "127.0.0.1", port)
}

/// `{"brokers": [...]}` as the hot-reload file and the store read it.
pub fn brokers_json(brokers: &[BrokerConfig]) -> String {
    serde_json::json!({ "brokers": brokers }).to_string()
}

/// The status of broker `id` in `statuses`, if it is in the running set.
pub fn status_of(statuses: &[BrokerStatus], id: &str) -> Option<BrokerStatus> {
    statuses.iter().find(|s| s.id == id).cloned()
}

/// Waits until every broker in `ids` has `sessions` upstream sessions, all connected.
pub async fn wait_upstreams(
    status: impl Fn() -> Vec<BrokerStatus>,
    ids: &[&str],
    sessions: usize,
    timeout: Duration,
) -> Result<()> {
    let ok = wait_until(timeout, || {
        let all = status();
        ids.iter().all(|id| {
            status_of(&all, id)
                .is_some_and(|s| s.sessions == sessions && s.sessions_connected == sessions)
        })
    })
    .await;
    if ok {
        Ok(())
    } else {
        bail!(
            "upstreams {ids:?} not all connected ({sessions} each) within {timeout:?}: {:#?}",
            status()
        )
    }
}

// ---------------------------------------------------------------------------------------
// Sequence-numbered streams

/// The sequence number a test put in the payload (decimal ASCII).
pub fn seq_of(message: &Received) -> Result<u64> {
    std::str::from_utf8(&message.payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            anyhow!(
                "payload {:?} on {} is not a sequence number",
                message.payload,
                message.topic
            )
        })
}

/// The sequence numbers of `messages`, in arrival order.
pub fn seqs(messages: &[Received]) -> Result<Vec<u64>> {
    messages.iter().map(seq_of).collect()
}

/// Maximal runs `(first, last)` in which each number is the previous one plus one: a
/// loss-free, in-order, duplicate-free stream is a single run.
pub fn runs(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in seqs {
        match out.last_mut() {
            Some((_, last)) if s == *last + 1 => *last = s,
            _ => out.push((s, s)),
        }
    }
    out
}

/// Waits until `sub` got `payload` on `topic`.
pub async fn wait_for_message(
    sub: &Subscriber,
    topic: &str,
    payload: &str,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        // A zero wait returns everything received so far.
        let got = sub.wait_for_count(0, Duration::ZERO).await;
        if got
            .iter()
            .any(|m| m.topic == topic && m.payload == payload.as_bytes())
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The longest time between two consecutive arrivals (zero for fewer than two).
pub fn largest_gap(messages: &[Received]) -> Duration {
    messages
        .windows(2)
        .map(|w| w[1].at.saturating_duration_since(w[0].at))
        .max()
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// A switchable TCP gate in front of a broker

/// A TCP relay on its own port in front of `target`. Closed, its port refuses connections
/// (like a killed broker's); closing also cuts every relayed connection.
pub struct Gate {
    port: u16,
    target: u16,
    accept: Option<JoinHandle<()>>,
    relays: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Gate {
    /// A closed gate on a free port.
    pub fn new(target: u16) -> Result<Self> {
        Ok(Self {
            port: try_free_port().context("picking a gate port")?,
            target,
            accept: None,
            relays: Arc::default(),
        })
    }

    /// Where the proxy should connect.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn open(&mut self) -> Result<()> {
        self.open_cutting(None).await
    }

    /// Like [`open`](Self::open), but each relayed connection is cut as soon as the broker
    /// has sent `after` bytes towards the client: with `after = 4` a broker that accepts
    /// (CONNACK) and then drops the connection at once.
    pub async fn open_cutting(&mut self, after: Option<usize>) -> Result<()> {
        if self.accept.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        // The port was released by `close` or `try_free_port`; it may linger briefly.
        let listener = loop {
            match TcpListener::bind((Ipv4Addr::LOCALHOST, self.port)).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
                Err(e) => return Err(e).context(format!("binding gate port {}", self.port)),
            }
        };
        let (target, relays) = (self.target, Arc::clone(&self.relays));
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        TcpStream::connect((Ipv4Addr::LOCALHOST, target)).await
                    {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        match after {
                            None => {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                                    .await;
                            }
                            Some(limit) => relay_until(&mut inbound, &mut outbound, limit).await,
                        }
                    }
                });
                relays
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(relay);
            }
        }));
        Ok(())
    }

    /// Stops listening and drops every relayed connection.
    pub fn close(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        for relay in self
            .relays
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            relay.abort();
        }
    }
}

/// Relays both ways until `target` has sent `limit` bytes to `client`, then returns (the
/// caller drops both sockets).
async fn relay_until(client: &mut TcpStream, target: &mut TcpStream, limit: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut cr, mut cw) = client.split();
    let (mut tr, mut tw) = target.split();
    let up = tokio::io::copy(&mut cr, &mut tw);
    let down = async {
        let mut sent = 0;
        let mut buf = [0u8; 4096];
        while sent < limit {
            match tr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    sent += n;
                }
            }
        }
    };
    tokio::select! {
        _ = up => {}
        () = down => {}
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.close();
    }
}

// ---------------------------------------------------------------------------------------
// File swaps as Kubernetes and editors do them

/// A mounted-Secret layout as the kubelet writes it:
///
/// ```text
/// <dir>/..2026_01_01_00_00_00.<n>/<file>   the content
/// <dir>/..data -> ..2026_01_01_00_00_00.<n>
/// <dir>/<file> -> ..data/<file>
/// ```
///
/// [`swap`](Self::swap) publishes new content the way the kubelet does: a new timestamped
/// directory, a `..data_tmp` symlink to it, `rename(..data_tmp, ..data)` (atomic), and the
/// old directory removed.
pub struct KubeletDir {
    dir: PathBuf,
    file: String,
    generation: u32,
    current: PathBuf,
}

impl KubeletDir {
    pub fn create(dir: &Path, file: &str, contents: &str) -> Result<Self> {
        let current = Self::write_generation(dir, file, 0, contents)?;
        std::os::unix::fs::symlink(
            current.file_name().context("generation name")?,
            dir.join("..data"),
        )
        .context("linking ..data")?;
        std::os::unix::fs::symlink(Path::new("..data").join(file), dir.join(file))
            .context("linking the file to ..data")?;
        Ok(Self {
            dir: dir.to_owned(),
            file: file.to_owned(),
            generation: 0,
            current,
        })
    }

    /// The path a consumer watches: `<dir>/<file>`.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.file)
    }

    pub fn swap(&mut self, contents: &str) -> Result<()> {
        self.generation += 1;
        let next = Self::write_generation(&self.dir, &self.file, self.generation, contents)?;
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(next.file_name().context("generation name")?, &tmp)
            .context("linking ..data_tmp")?;
        std::fs::rename(&tmp, self.dir.join("..data"))
            .context("renaming ..data_tmp over ..data")?;
        std::fs::remove_dir_all(&self.current).context("removing the old generation")?;
        self.current = next;
        Ok(())
    }

    fn write_generation(dir: &Path, file: &str, n: u32, contents: &str) -> Result<PathBuf> {
        let generation = dir.join(format!("..2026_01_01_00_00_00.{n:09}"));
        std::fs::create_dir(&generation).context("creating a timestamped dir")?;
        std::fs::write(generation.join(file), contents).context("writing the file")?;
        Ok(generation)
    }
}

/// An editor's save: write a temp file next to `path`, then rename it over `path`.
pub fn write_and_rename(path: &Path, contents: &str) -> Result<()> {
    let name = path
        .file_name()
        .context("path has no file name")?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.swp"));
    std::fs::write(&tmp, contents).context("writing the temp file")?;
    std::fs::rename(&tmp, path).context("renaming over the file")
}

// ---------------------------------------------------------------------------------------
// Prometheus text format

/// The value of the series `name{labels...}` in Prometheus text `exposition`; the series
/// may carry more labels than given. `None` if absent (a counter never incremented).
pub fn metric_value(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}')?)?),
                None => (series, Vec::new()),
            };
            let matches = series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| series_labels.iter().any(|(sk, sv)| sk == k && sv == v));
            if matches {
                value.parse().ok()
            } else {
                None
            }
        })
}

/// `a="x",b="y\"z"` → pairs; `None` if malformed.
fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => value.push(chars.next()?.1),
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        out.push((key.trim_start_matches(',').to_owned(), value));
        rest = &after[end + 1..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_value_matches_labels_in_any_order() {
        let text = "# HELP x y\n\
            mqtt_proxy_messages_dropped_total{broker=\"b\",reason=\"queue_full\"} 900\n\
            mqtt_proxy_messages_dropped_total{broker=\"b\",reason=\"shutdown\"} 3\n\
            mqtt_proxy_devices_connected 2\n";
        let name = "mqtt_proxy_messages_dropped_total";
        assert_eq!(
            metric_value(text, name, &[("reason", "queue_full"), ("broker", "b")]),
            Some(900.0)
        );
        assert_eq!(metric_value(text, name, &[("broker", "c")]), None);
        assert_eq!(
            metric_value(text, "mqtt_proxy_devices_connected", &[]),
            Some(2.0)
        );
    }

    #[test]
    fn runs_split_at_gaps_and_repeats() {
        assert_eq!(
            runs(&[0, 1, 2, 5, 6, 4, 5, 6, 7]),
            vec![(0, 2), (5, 6), (4, 7)]
        );
        assert!(runs(&[]).is_empty());
    }
}
