//! Hot reload of the broker set from `--brokers-file` (the Kubernetes mode).
//!
//! Why polling and not inotify: the kubelet updates a mounted Secret by swapping a `..data`
//! symlink to a new timestamped directory, editors write-and-rename, and some tools write in
//! place. Watching inode events misses one or the other; re-reading a small file (and the
//! `passwordFile`s and TLS files it names) twice a second and comparing a hash sees all three, and costs
//! next to nothing. Only a change in content triggers a reload, and the session-side diff
//! keeps every unchanged broker's connection and queue.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{error, info};
use xxhash_rust::xxh3::Xxh3;

use crate::broker::BrokerConfig;
use crate::metrics::METRICS;
use crate::proxy::{BrokerControl, ProxyHandle};

pub const POLL: Duration = Duration::from_millis(500);

/// Hash of the file and every password file it references; `None` if unreadable.
fn fingerprint(path: &Path, brokers: &[BrokerConfig]) -> Option<u64> {
    let mut h = Xxh3::new();
    h.update(&std::fs::read(path).ok()?);
    for b in brokers {
        h.update(&crate::brokerset::tls_files_hash(b).to_le_bytes());
        if let Some(p) = &b.password_file {
            h.update(p.as_os_str().as_encoded_bytes());
            h.update(&std::fs::read(p).unwrap_or_default());
        }
    }
    Some(h.digest())
}

/// Watches `path` and applies every valid change to the proxy's broker set.
pub fn spawn(path: PathBuf, proxy: &ProxyHandle) -> JoinHandle<()> {
    tokio::spawn(watch(path, proxy.control(), POLL))
}

pub async fn watch(path: PathBuf, control: BrokerControl, every: Duration) {
    let mut known: Vec<BrokerConfig> = control
        .brokers()
        .brokers
        .iter()
        .map(|b| b.config.clone())
        .collect();
    let mut poller = ChangePoller::new(every, fingerprint(&path, &known));
    let mut last_error: Option<String> = None;
    loop {
        let now = poller.changed(|| fingerprint(&path, &known)).await;
        let path2 = path.clone();
        let loaded =
            tokio::task::spawn_blocking(move || crate::store::load_brokers_file(&path2)).await;
        let result = match loaded {
            Ok(Ok(brokers)) => match control.set_brokers(&brokers) {
                Ok(()) => Ok(brokers),
                Err(e) => Err(e.to_string()),
            },
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("reload task failed: {e}")),
        };
        match result {
            Ok(brokers) => {
                METRICS.config_reloads.with_label_values(&["success"]).inc();
                info!(file = %path.display(), brokers = brokers.len(), "broker set reloaded");
                poller.set(fingerprint(&path, &brokers));
                known = brokers;
                last_error = None;
            }
            Err(e) => {
                METRICS.config_reloads.with_label_values(&["error"]).inc();
                // Log each distinct error once; keep serving the previous set.
                if last_error.as_deref() != Some(e.as_str()) {
                    error!(file = %path.display(), error = %e, "invalid brokers file: keeping the previous broker set");
                }
                last_error = Some(e);
                poller.set(Some(now));
            }
        }
    }
}

/// The piece every hot-reloaded file shares (brokers file, users file, TLS certificates):
/// poll a content fingerprint on a fixed tick and wake only when it is readable and
/// differs from the last one the caller accepted.
pub struct ChangePoller {
    tick: tokio::time::Interval,
    last: Option<u64>,
}

impl ChangePoller {
    pub fn new(every: Duration, last: Option<u64>) -> Self {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { tick, last }
    }

    /// Waits for a tick at which `fingerprint` is `Some` and new; returns it. The caller
    /// records what it accepted with [`ChangePoller::set`].
    pub async fn changed(&mut self, mut fingerprint: impl FnMut() -> Option<u64>) -> u64 {
        loop {
            self.tick.tick().await;
            match fingerprint() {
                Some(now) if Some(now) != self.last => return now,
                _ => {}
            }
        }
    }

    pub fn set(&mut self, last: Option<u64>) {
        self.last = last;
    }
}

/// Hash of the contents of `paths` (a missing file hashes as empty, so its appearance is a
/// change); `None` only when none of them can be read.
pub fn hash_files<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Option<u64> {
    let mut h = Xxh3::new();
    let mut any = false;
    for p in paths {
        h.update(p.as_os_str().as_encoded_bytes());
        if let Ok(bytes) = std::fs::read(p) {
            any = true;
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
    }
    any.then(|| h.digest())
}
