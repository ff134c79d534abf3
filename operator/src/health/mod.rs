//! Destination health: a poller task reads every ready proxy pod's `/api/status` each
//! [`INTERVAL`] and keeps the latest round per MqttProxy in a [`HealthIndex`]. It never writes
//! status itself: when a proxy's round differs from the last one it asks the two controllers
//! (through their `reconcile_on` streams) to reconcile that proxy and the brokers involved,
//! and their status code folds the index in. So each status field keeps a single writer, the
//! usual compare-before-write applies, and a slow or dead pod delays only the poller.
//!
//! ```text
//!  Pod store ─┐            ┌─ GET /api/status ×pods (≤ CONCURRENCY, TIMEOUT each)
//!  MqttProxy ─┼─ every 10 s┤
//!  token cache┘            └─ HealthIndex ──changed?──▶ reconcile_on(MqttProxy / MqttBroker)
//! ```
//!
//! Cost: one request per ready pod per interval (6 per pod per minute) whatever the number of
//! brokers, because one status document covers all of them; status writes only on change.

pub mod poll;
pub mod summary;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
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
use crate::crd::{MqttBroker, MqttProxy};
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

/// Latest round per `(namespace, MqttProxy)`. Absent: not polled (yet, or no admin token).
#[derive(Default)]
pub struct HealthIndex(Mutex<HashMap<(String, String), ProxyPolls>>);

impl HealthIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), ProxyPolls>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `polls` for the proxy; returns the previous round when it differed (or
    /// `Some(None)` when there was none), `None` when nothing changed.
    pub fn replace(
        &self,
        ns: &str,
        proxy: &str,
        polls: Option<ProxyPolls>,
    ) -> Option<Option<ProxyPolls>> {
        let key = (ns.to_string(), proxy.to_string());
        let mut map = self.lock();
        let old = map.get(&key);
        if old == polls.as_ref() {
            return None;
        }
        let old = match polls {
            Some(p) => map.insert(key, p),
            None => map.remove(&key),
        };
        Some(old)
    }

    /// The proxy's view of its `selected` (rendered) brokers.
    pub fn proxy_summary(
        &self,
        ns: &str,
        proxy: &str,
        selected: &BTreeSet<String>,
    ) -> ProxySummary {
        let map = self.lock();
        summary::proxy_summary(selected, map.get(&(ns.to_string(), proxy.to_string())))
    }

    /// The broker's health over `proxies` (the MqttProxies that render it).
    pub fn broker_summary(&self, ns: &str, broker: &str, proxies: &[String]) -> BrokerSummary {
        let map = self.lock();
        let rounds: Vec<(String, &ProxyPolls)> = proxies
            .iter()
            .filter_map(|p| {
                map.get(&(ns.to_string(), p.clone()))
                    .map(|r| (p.clone(), r))
            })
            .collect();
        summary::broker_summary(broker, &rounds)
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

/// The poller's inputs.
pub struct Poller {
    pub client: Client,
    pub proxies: Store<MqttProxy>,
    pub pods: Store<Pod>,
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
            l.get(POD_NAME_LABEL.0).map(String::as_str) == Some(POD_NAME_LABEL.1)
                && l.get(INSTANCE_LABEL) == Some(&name)
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
    /// Polls forever (the caller drops the future to stop it).
    pub async fn run(self) {
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
        let pods = self.pods.state();
        let mut rounds: HashMap<(String, String), Option<ProxyPolls>> = HashMap::new();
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
        self.store(rounds);
    }

    /// Saves the round and asks for a status refresh of whatever changed.
    fn store(&self, rounds: HashMap<(String, String), Option<ProxyPolls>>) {
        let mut seen = BTreeSet::new();
        for ((ns, name), polls) in rounds {
            seen.insert((ns.clone(), name.clone()));
            let brokers_now = polls.as_ref().map(broker_ids).unwrap_or_default();
            let Some(old) = self.health.replace(&ns, &name, polls) else {
                continue;
            };
            let mut brokers = brokers_now;
            brokers.extend(old.as_ref().map(broker_ids).unwrap_or_default());
            self.trigger(&ns, &name, brokers);
        }
        // Proxies that are gone: forget them (their brokers' counts change).
        let gone: Vec<(String, String)> = self
            .health
            .lock()
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for (ns, name) in gone {
            if let Some(old) = self.health.replace(&ns, &name, None) {
                let brokers = old.as_ref().map(broker_ids).unwrap_or_default();
                self.trigger(&ns, &name, brokers);
            }
        }
    }

    fn trigger(&self, ns: &str, proxy: &str, brokers: BTreeSet<String>) {
        let mut ok = self
            .triggers
            .proxies
            .try_send(ObjectRef::new(proxy).within(ns))
            .is_ok();
        for b in brokers {
            ok &= self
                .triggers
                .brokers
                .try_send(ObjectRef::new(&b).within(ns))
                .is_ok();
        }
        if !ok {
            self.metrics.triggers_dropped.inc();
        }
    }
}

/// Broker ids any pod of a round reported.
fn broker_ids(polls: &ProxyPolls) -> BTreeSet<String> {
    polls
        .values()
        .flat_map(|p| match p {
            PodPoll::Report { brokers, .. } => brokers.keys().cloned().collect(),
            PodPoll::Failed(_) => Vec::new(),
        })
        .collect()
}
