//! Destination health: a poller task reads every ready proxy pod's `/api/status` each
//! [`INTERVAL`] and keeps, in a [`HealthIndex`], the latest round per MqttProxy and each
//! MqttBroker's summary over the proxies selecting it. It never writes status itself: it
//! queues the proxies whose round and the brokers whose summary changed on the controllers'
//! `reconcile_on` streams, and their status code folds the index in. So each status field has
//! a single writer, the usual compare-before-write applies, and a slow or dead pod delays
//! only the poller. Until its first round after the caches synced the index says "unknown"
//! and the status code keeps what it finds, so an operator restart writes nothing.
//!
//! ```text
//!  Pod / MqttProxy stores ─┐         ┌─ GET /api/status ×pods (≤ CONCURRENCY, TIMEOUT each)
//!  MqttBroker store ───────┼─ 10 s ──┤
//!  admin token cache ──────┘         └─ HealthIndex ──changed?──▶ reconcile_on(mqp / mqb)
//! ```
//!
//! Cost: one request per ready pod per interval (6 per pod per minute) whatever the number of
//! brokers, because one status document covers all of them; status writes only on change.

pub mod poll;
pub mod summary;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use tokio::sync::mpsc;
use tracing::debug;

use crate::controller::build::INSTANCE_LABEL;
use crate::controller::index::selects;
use crate::crd::{MqttBroker, MqttProxy, ProxyMode};
use crate::webhook::inject::{INJECTED_ANNOTATION, INJECT_LABEL};
use poll::{poll_pod, token_ref, PollError, Tokens};
pub use summary::{BrokerSummary, PodPoll, ProxyPolls, ProxySummary};

/// How often each ready pod is asked.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Deadline of one pod's request (connect + answer).
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// Pods asked at once; a round of P pods takes about ⌈P / CONCURRENCY⌉ × answer time.
pub const CONCURRENCY: usize = 16;
/// Reconcile requests waiting for the controllers; more are dropped (and counted): the
/// next changed round, or the controllers' resync, brings the status up to date anyway.
pub const TRIGGER_QUEUE: usize = 1024;
/// The label every proxy pod carries (the Deployment's selector has it and the instance).
pub const POD_NAME_LABEL: (&str, &str) = ("app.kubernetes.io/name", "mqtt-proxy");

type Key = (String, String);

/// A proxy's latest round; `None`: its pods cannot be polled (`web.enabled: false`).
pub type Round = Option<ProxyPolls>;

/// What the poller knows, for the status code of both controllers. Until its first round
/// after the caches synced, it knows nothing and says so (`None`), so that a restarted
/// operator keeps the health fields it finds instead of flapping them to `Unknown`.
#[derive(Default)]
pub struct HealthIndex {
    ready: AtomicBool,
    rounds: Mutex<HashMap<Key, Round>>,
    brokers: Mutex<HashMap<Key, BrokerSummary>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn key(ns: &str, name: &str) -> Key {
    (ns.to_string(), name.to_string())
}

impl HealthIndex {
    /// The proxy's view of its `selected` (rendered) brokers; `None` while not known.
    pub fn proxy_summary(
        &self,
        ns: &str,
        proxy: &str,
        selected: &BTreeSet<String>,
    ) -> Option<ProxySummary> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        let rounds = lock(&self.rounds);
        let round = rounds.get(&key(ns, proxy))?;
        Some(summary::proxy_summary(selected, round.as_ref()))
    }

    /// The broker's health over the proxies selecting it; `None` while not known.
    pub fn broker_summary(&self, ns: &str, broker: &str) -> Option<BrokerSummary> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.brokers).get(&key(ns, broker)).cloned()
    }

    /// Takes a complete round (every proxy in `proxies`) and recomputes every broker's
    /// summary; returns the proxies whose round and the brokers whose summary changed.
    pub fn apply_round(
        &self,
        rounds: HashMap<Key, Round>,
        proxies: &[Arc<MqttProxy>],
        brokers: &[Arc<MqttBroker>],
    ) -> (Vec<ObjectRef<MqttProxy>>, Vec<ObjectRef<MqttBroker>>) {
        let mut changed_proxies = Vec::new();
        {
            let mut old = lock(&self.rounds);
            for (k, round) in &rounds {
                if old.get(k) != Some(round) {
                    changed_proxies.push(ObjectRef::new(&k.1).within(&k.0));
                }
            }
            *old = rounds;
        }
        let rounds = lock(&self.rounds);
        let mut summaries = HashMap::new();
        for b in brokers {
            let ns = b.namespace().unwrap_or_default();
            let name = b.name_any();
            let mut unpollable = Vec::new();
            let selecting: Vec<(String, &ProxyPolls)> = proxies
                .iter()
                .filter(|p| selects(p, b))
                .filter_map(|p| match rounds.get(&key(&ns, &p.name_any()))? {
                    Some(round) => Some((p.name_any(), round)),
                    None => {
                        unpollable.push(p.name_any());
                        None
                    }
                })
                .collect();
            let mut s = summary::broker_summary(&name, &selecting);
            if s.total == 0 && !unpollable.is_empty() {
                s.reason = crate::crd::reason::STATUS_UNAVAILABLE;
                s.message = format!(
                    "the pods of MqttProxy {} cannot be polled (web.enabled is false)",
                    unpollable.join(", ")
                );
            }
            summaries.insert(key(&ns, &name), s);
        }
        let mut changed_brokers = Vec::new();
        {
            let mut old = lock(&self.brokers);
            for (k, s) in &summaries {
                if old.get(k) != Some(s) {
                    changed_brokers.push(ObjectRef::new(&k.1).within(&k.0));
                }
            }
            *old = summaries;
        }
        self.ready.store(true, Ordering::Release);
        (changed_proxies, changed_brokers)
    }
}

/// The poller's metrics, registered in the operator's registry.
#[derive(Clone)]
pub struct HealthMetrics {
    /// Pod requests by result (`ok` or a [`PollError::label`]).
    pub polls: IntCounterVec,
    pub round: Histogram,
    pub triggers_dropped: IntCounter,
}

impl HealthMetrics {
    pub fn new(registry: &Registry) -> Self {
        let polls = IntCounterVec::new(
            Opts::new(
                "mqtt_proxy_operator_health_polls_total",
                "Requests to proxy pods' /api/status, by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let round = Histogram::with_opts(
            HistogramOpts::new(
                "mqtt_proxy_operator_health_round_seconds",
                "Time one polling round over every ready proxy pod took",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 3.0, 10.0, 30.0]),
        )
        .expect("valid metric");
        let triggers_dropped = IntCounter::new(
            "mqtt_proxy_operator_health_triggers_dropped_total",
            "Status refreshes not queued because the controllers' queue was full",
        )
        .expect("valid metric");
        for c in [
            Box::new(polls.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(round.clone()),
            Box::new(triggers_dropped.clone()),
        ] {
            // Registered once per process; a second registration (tests) keeps the first.
            let _ = registry.register(c);
        }
        Self {
            polls,
            round,
            triggers_dropped,
        }
    }
}

/// Where the poller sends "reconcile this" requests.
pub struct Triggers {
    pub proxies: mpsc::Sender<ObjectRef<MqttProxy>>,
    pub brokers: mpsc::Sender<ObjectRef<MqttBroker>>,
}

/// A bounded channel as a stream for `Controller::reconcile_on`.
pub fn trigger_channel<K>() -> (
    mpsc::Sender<ObjectRef<K>>,
    impl futures_util::Stream<Item = ObjectRef<K>> + Send + 'static,
)
where
    K: kube::Resource + 'static,
    K::DynamicType: Send + Sync + 'static,
{
    let (tx, rx) = mpsc::channel(TRIGGER_QUEUE);
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    (tx, stream)
}

/// The poller's inputs. Its stores are its own (only it waits for them to be ready: kube's
/// ready signal wakes a single waiter), except the broker store, whose sync it learns from
/// the controllers' `brokers_synced` channel.
pub struct Poller {
    pub client: Client,
    pub proxies: Store<MqttProxy>,
    pub pods: Store<Pod>,
    /// Application pods that asked for a sidecar (label [`INJECT_LABEL`]): the proxies of
    /// `spec.mode: Sidecar` MqttProxies.
    pub sidecar_pods: Store<Pod>,
    pub brokers: Store<MqttBroker>,
    pub brokers_synced: tokio::sync::watch::Receiver<bool>,
    pub health: Arc<HealthIndex>,
    pub metrics: HealthMetrics,
    pub triggers: Triggers,
    pub tokens: Tokens,
}

/// One pod to ask.
struct Job {
    key: (String, String),
    pod: String,
    addr: SocketAddr,
    token: String,
}

/// A proxy's ready pods: `(name, address of its HTTP port)`, sorted by name.
pub fn ready_pods(pods: &[Arc<Pod>], proxy: &MqttProxy) -> Vec<(String, SocketAddr)> {
    let ns = proxy.namespace();
    let name = proxy.name_any();
    let mut out: Vec<(String, SocketAddr)> = pods
        .iter()
        .filter(|p| p.namespace() == ns && p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let l = p.labels();
            match proxy.spec.mode {
                ProxyMode::Deployment => {
                    l.get(POD_NAME_LABEL.0).map(String::as_str) == Some(POD_NAME_LABEL.1)
                        && l.get(INSTANCE_LABEL) == Some(&name)
                }
                // Only pods the webhook did inject: a labelled pod admitted while the
                // webhook was away has no proxy to ask.
                ProxyMode::Sidecar => {
                    l.get(INJECT_LABEL) == Some(&name)
                        && p.annotations().get(INJECTED_ANNOTATION) == Some(&name)
                }
            }
        })
        .filter_map(|p| {
            let st = p.status.as_ref()?;
            let ready = st
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let ip: IpAddr = st.pod_ip.as_deref()?.parse().ok()?;
            ready.then(|| (p.name_any(), SocketAddr::new(ip, proxy.spec.web.port)))
        })
        .collect();
    out.sort();
    out
}

impl Poller {
    /// Polls forever (the caller drops the future to stop it), starting once the stores
    /// have synced: a first round over half-filled stores would report brokers as
    /// unwatched.
    pub async fn run(mut self) {
        let synced = async {
            self.proxies.wait_until_ready().await.ok()?;
            self.pods.wait_until_ready().await.ok()?;
            self.sidecar_pods.wait_until_ready().await.ok()?;
            self.brokers_synced.wait_for(|s| *s).await.ok()?;
            Some(())
        };
        if synced.await.is_none() {
            return std::future::pending().await;
        }
        let mut tick = tokio::time::interval(INTERVAL);
        // A round slower than the interval delays the next one instead of bunching them.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _timer = self.metrics.round.start_timer();
            self.round().await;
        }
    }

    /// One round over every proxy the store holds.
    pub async fn round(&self) {
        let proxies = self.proxies.state();
        let mut pods = self.pods.state();
        pods.extend(self.sidecar_pods.state());
        let mut rounds: HashMap<Key, Round> = HashMap::new();
        let mut jobs = Vec::new();
        let mut token_at = HashMap::new();
        for p in &proxies {
            let key = (p.namespace().unwrap_or_default(), p.name_any());
            let ready = ready_pods(&pods, p);
            let Some(at) = token_ref(p) else {
                rounds.insert(key, None);
                continue;
            };
            let mut polls = ProxyPolls::new();
            if !ready.is_empty() {
                match self.tokens.get(&self.client, &at).await {
                    Ok(token) => jobs.extend(ready.into_iter().map(|(pod, addr)| Job {
                        key: key.clone(),
                        pod,
                        addr,
                        token: token.clone(),
                    })),
                    Err(why) => {
                        for (pod, _) in ready {
                            polls.insert(pod, PodPoll::Failed(why.clone()));
                        }
                    }
                }
            }
            token_at.insert(key.clone(), at);
            rounds.insert(key, Some(polls));
        }
        let answers: Vec<(Job, Result<PodPoll, PollError>)> = futures_util::stream::iter(jobs)
            .map(|job| async move {
                let r = poll_pod(job.addr, &job.token, TIMEOUT).await;
                (job, r)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (job, result) in answers {
            let label = result.as_ref().map_or_else(PollError::label, |_| "ok");
            self.metrics.polls.with_label_values(&[label]).inc();
            let poll = match result {
                Ok(p) => p,
                Err(e) => {
                    debug!(pod = %job.pod, error = %e, "proxy status not read");
                    if matches!(e, PollError::Unauthorized(_)) {
                        if let Some(at) = token_at.get(&job.key) {
                            self.tokens.forget(at);
                        }
                    }
                    PodPoll::Failed(e.to_string())
                }
            };
            if let Some(Some(polls)) = rounds.get_mut(&job.key) {
                polls.insert(job.pod, poll);
            }
        }
        let (proxies_changed, brokers_changed) =
            self.health
                .apply_round(rounds, &proxies, &self.brokers.state());
        let mut dropped = false;
        for r in proxies_changed {
            dropped |= self.triggers.proxies.try_send(r).is_err();
        }
        for r in brokers_changed {
            dropped |= self.triggers.brokers.try_send(r).is_err();
        }
        if dropped {
            self.metrics.triggers_dropped.inc();
        }
    }
}
