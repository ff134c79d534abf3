//! The broker set in force: each enabled broker compiled once (routing rule, TLS config,
//! resolved password, metric handles, live stats) and published to every device session
//! through a `watch` channel, so a reload is one atomic swap that sessions diff against.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::ClientConfig;
use serde::Serialize;

use crate::broker::{validate_set, BrokerConfig, BrokerError, Secret};
use crate::metrics::BrokerMetrics;
use crate::queue::{Budget, QueueLimits};
use crate::router::RouteRule;

/// Live counters of one broker, summed over every device session's upstream to it.
/// They survive reloads that leave the broker unchanged.
#[derive(Default)]
pub struct BrokerStats {
    pub sessions: AtomicUsize,
    pub connected: AtomicUsize,
    pub reconnects: AtomicU64,
    pub connects: AtomicU64,
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    /// Messages set aside as poison (the broker closed the connection after each).
    pub poisoned: AtomicU64,
    pub last_publish_ms: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Why the last attempt failed, as a fixed word (`not_authorized`, `dropped`, ...).
    pub last_error_reason: Mutex<Option<&'static str>>,
    pub queue_messages: AtomicI64,
    pub queue_bytes: AtomicI64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl BrokerStats {
    pub fn set_error(&self, reason: &'static str, e: impl Into<String>) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e.into());
        }
        if let Ok(mut l) = self.last_error_reason.lock() {
            *l = Some(reason);
        }
    }

    pub fn clear_error(&self) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = None;
        }
        if let Ok(mut l) = self.last_error_reason.lock() {
            *l = None;
        }
    }
}

/// A point-in-time view of one broker, for the API and the operator.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BrokerStatus {
    pub id: String,
    pub name: String,
    /// True when every device session's upstream to this broker is connected (and at
    /// least one exists), or when no device is connected and the last attempt succeeded.
    pub connected: bool,
    pub sessions: usize,
    pub sessions_connected: usize,
    pub last_error: Option<String>,
    /// The last error as a fixed word: `unreachable`, `no_connack`, `bad_credentials`,
    /// `not_authorized`, `server_unavailable`, `banned`, `refused` or `dropped`.
    pub last_error_reason: Option<String>,
    pub connects: u64,
    pub reconnects: u64,
    pub queue_messages: i64,
    pub queue_bytes: i64,
    pub forwarded: u64,
    pub dropped: u64,
    /// Messages set aside as poison: the broker closed the connection after each of them
    /// several times in a row (also in `dropped`).
    pub poisoned: u64,
    /// Unix milliseconds of the last message written to this broker.
    pub last_publish_ms: Option<u64>,
}

/// One enabled broker, ready for sessions to use.
pub struct Broker {
    pub config: BrokerConfig,
    pub rule: RouteRule,
    pub tls: Option<Arc<ClientConfig>>,
    /// The password (from the store, the file, or `passwordFile`).
    pub password: Option<Secret>,
    pub limits: QueueLimits,
    pub metrics: BrokerMetrics,
    pub stats: Arc<BrokerStats>,
    pub budget: Arc<Budget>,
    /// Hash of the TLS files' contents: a rotated certificate counts as a change.
    pub tls_files: u64,
}

/// Hash of the contents of a broker's CA, certificate and key files (0 without TLS).
pub fn tls_files_hash(c: &BrokerConfig) -> u64 {
    if !c.use_tls {
        return 0;
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in [&c.ca_cert_path, &c.client_cert_path, &c.client_key_path]
        .into_iter()
        .flatten()
    {
        h.update(p.as_os_str().as_encoded_bytes());
        h.update(&std::fs::read(p).unwrap_or_default());
    }
    h.digest()
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("id", &self.config.id)
            .finish_non_exhaustive()
    }
}

impl Broker {
    pub fn id(&self) -> &str {
        &self.config.id
    }
    pub fn label(&self) -> &str {
        self.config.label()
    }
    pub fn status(&self) -> BrokerStatus {
        let s = &self.stats;
        let sessions = s.sessions.load(Ordering::Relaxed);
        let connected = s.connected.load(Ordering::Relaxed);
        let last_error = s.last_error.lock().ok().and_then(|l| l.clone());
        let last = s.last_publish_ms.load(Ordering::Relaxed);
        BrokerStatus {
            id: self.config.id.clone(),
            name: self.label().to_string(),
            connected: if sessions == 0 {
                last_error.is_none()
            } else {
                connected == sessions
            },
            sessions,
            sessions_connected: connected,
            last_error_reason: last_error
                .as_ref()
                .and_then(|_| s.last_error_reason.lock().ok().and_then(|r| *r))
                .map(str::to_string),
            last_error,
            connects: s.connects.load(Ordering::Relaxed),
            reconnects: s.reconnects.load(Ordering::Relaxed),
            queue_messages: s.queue_messages.load(Ordering::Relaxed),
            queue_bytes: s.queue_bytes.load(Ordering::Relaxed),
            forwarded: s.forwarded.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            poisoned: s.poisoned.load(Ordering::Relaxed),
            last_publish_ms: (last > 0).then_some(last),
        }
    }
}

/// Proxy-wide queue defaults a broker's `queue` block overrides, and the byte budget all
/// queues share.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub queue: QueueLimits,
    pub budget: Arc<Budget>,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            queue: QueueLimits::default(),
            budget: Arc::new(Budget::new(usize::MAX)),
        }
    }
}

/// The enabled brokers of one configuration version.
#[derive(Default)]
pub struct BrokerSet {
    pub version: u64,
    pub brokers: Vec<Arc<Broker>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Invalid(#[from] BrokerError),
    #[error("broker {broker:?}: TLS: {source}")]
    Tls {
        broker: String,
        source: crate::tls::TlsError,
    },
    #[error("broker {broker:?}: cannot read passwordFile {path}: {source}")]
    PasswordFile {
        broker: String,
        path: String,
        source: std::io::Error,
    },
}

impl BrokerSet {
    /// Compiles `configs` into a new set. Brokers whose config is unchanged from `prev`
    /// keep their `Arc<Broker>` (sessions use pointer identity to keep their connection),
    /// and stats carry over by id. Any error rejects the whole set: the previous one stays.
    pub fn build(
        configs: &[BrokerConfig],
        defaults: Defaults,
        prev: Option<&BrokerSet>,
    ) -> Result<BrokerSet, BuildError> {
        validate_set(configs)?;
        let prev_by_id: HashMap<&str, &Arc<Broker>> = prev
            .map(|p| p.brokers.iter().map(|b| (b.id(), b)).collect())
            .unwrap_or_default();
        let mut brokers = Vec::new();
        for c in configs.iter().filter(|c| c.enabled) {
            let password = match &c.password_file {
                Some(path) => Some(Secret::new(
                    std::fs::read_to_string(path)
                        .map_err(|source| BuildError::PasswordFile {
                            broker: c.id.clone(),
                            path: path.display().to_string(),
                            source,
                        })?
                        .trim_end_matches(['\n', '\r'])
                        .to_string(),
                )),
                None => c.password.clone(),
            };
            let tls_files = tls_files_hash(c);
            if let Some(old) = prev_by_id.get(c.id.as_str()) {
                if old.config == *c
                    && old.tls_files == tls_files
                    && old.password == password
                    && old.limits == limits(c, &defaults)
                {
                    brokers.push(Arc::clone(old));
                    continue;
                }
            }
            if !c.use_tls
                && (c.ca_cert_path.is_some()
                    || c.client_cert_path.is_some()
                    || c.insecure_skip_verify)
            {
                tracing::warn!(
                    broker = c.label(),
                    "TLS settings are given but useTls is false: connecting without TLS"
                );
            }
            let tls = if c.use_tls {
                Some(
                    crate::tls::client_config(c).map_err(|source| BuildError::Tls {
                        broker: c.id.clone(),
                        source,
                    })?,
                )
            } else {
                None
            };
            let stats = prev_by_id
                .get(c.id.as_str())
                .map_or_else(Default::default, |o| o.stats.clone());
            brokers.push(Arc::new(Broker {
                rule: RouteRule::from_broker(c),
                tls,
                password,
                limits: limits(c, &defaults),
                metrics: BrokerMetrics::new(c.label()),
                stats,
                budget: defaults.budget.clone(),
                tls_files,
                config: c.clone(),
            }));
        }
        Ok(BrokerSet {
            version: prev.map_or(1, |p| p.version + 1),
            brokers,
        })
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Broker>> {
        self.brokers.iter().find(|b| b.id() == id)
    }

    pub fn status(&self) -> Vec<BrokerStatus> {
        self.brokers.iter().map(|b| b.status()).collect()
    }
}

fn limits(c: &BrokerConfig, d: &Defaults) -> QueueLimits {
    let q = c.queue.clone().unwrap_or_default();
    QueueLimits {
        max_messages: q.max_messages.unwrap_or(d.queue.max_messages),
        max_bytes: q.max_bytes.unwrap_or(d.queue.max_bytes),
        overflow: q.overflow.unwrap_or(d.queue.overflow),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_brokers_keep_identity_and_changed_ones_do_not() {
        let a = BrokerConfig::new("a", "127.0.0.1", 1);
        let b = BrokerConfig::new("b", "127.0.0.1", 2);
        let mut off = BrokerConfig::new("c", "127.0.0.1", 3);
        off.enabled = false;
        let s1 = BrokerSet::build(&[a.clone(), b.clone(), off], Defaults::default(), None)
            .expect("valid");
        assert_eq!(s1.brokers.len(), 2, "disabled brokers are not in the set");
        let mut b2 = b.clone();
        b2.port = 20;
        let s2 = BrokerSet::build(&[a, b2], Defaults::default(), Some(&s1)).expect("valid");
        assert!(Arc::ptr_eq(&s1.brokers[0], &s2.brokers[0]));
        assert!(!Arc::ptr_eq(&s1.brokers[1], &s2.brokers[1]));
        assert!(
            Arc::ptr_eq(&s1.brokers[1].stats, &s2.brokers[1].stats),
            "stats survive a change"
        );
        assert_eq!(s2.version, s1.version + 1);
    }

    #[test]
    fn invalid_set_is_rejected_whole() {
        let a = BrokerConfig::new("a", "127.0.0.1", 1);
        let bad = BrokerConfig::new("a", "127.0.0.1", 2);
        assert!(BrokerSet::build(&[a, bad], Defaults::default(), None).is_err());
    }

    #[test]
    fn password_file_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").expect("write");
        let mut a = BrokerConfig::new("a", "127.0.0.1", 1);
        a.password_file = Some(p);
        let s = BrokerSet::build(&[a], Defaults::default(), None).expect("valid");
        assert_eq!(
            s.brokers[0].password.as_ref().map(|p| p.expose()),
            Some("s3cret")
        );
    }
}
