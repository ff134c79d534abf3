//! The controllers: one reconciles each MqttProxy into its children (validate → build →
//! apply → status), one keeps each MqttBroker's `Ready` and `Connected` conditions (both
//! also run when the health poller, [`crate::health`], saw the pods' state change). Watches map MqttBroker
//! and Secret changes to the proxies that select or reference them through the reflector
//! stores and an index of what each proxy rendered last, never a list call per event.

pub mod apply;
pub mod build;
mod discovery;
pub mod index;
pub mod sidecar;
pub mod status;
pub mod validate;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::health::{self, HealthIndex, HealthMetrics, Poller};
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::crd::{MqttBroker, MqttProxy, ProxyMode};
use crate::metrics::Metrics;
use status::ProxyOutcome;
use validate::Inputs;

pub use discovery::{PdbDiscovery, ServiceMonitorDiscovery};
pub use index::RenderedIndex;

/// Drift net: even without events, every object is re-checked this often.
pub const RESYNC: Duration = Duration::from_secs(300);
/// Retry after a transient API error.
pub const RETRY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the MqttBroker store stopped (its watcher ended)")]
    StoreGone,
}

impl Error {
    /// A bounded label for the errors metric.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 403 => "forbidden",
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "transport",
            Error::StoreGone => "store",
        }
    }
}

/// Shared by every reconcile.
pub struct Ctx {
    pub client: Client,
    /// All MqttBrokers the operator can see (reflector store).
    pub brokers: Store<MqttBroker>,
    pub metrics: Arc<Metrics>,
    /// Image of proxies that do not name one.
    pub proxy_image: String,
    pub rendered: RenderedIndex,
    pub service_monitors: ServiceMonitorDiscovery,
    pub pdbs: PdbDiscovery,
    /// Becomes true once `brokers` has synced. A watch channel and not
    /// `Store::wait_until_ready` in every reconcile: kube's ready signal wakes only one of
    /// several concurrent waiters, and the others would hang (and block shutdown).
    pub brokers_synced: tokio::sync::watch::Receiver<bool>,
    /// What the proxy pods last said about their brokers (written by the health poller).
    pub health: Arc<HealthIndex>,
}

/// The MqttProxy pipeline. Short on purpose: every step is a function of its own.
pub async fn reconcile(proxy: Arc<MqttProxy>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start("mqttproxy");
    // Rendering before the broker store has synced would apply an empty broker set.
    let mut synced = ctx.brokers_synced.clone();
    synced
        .wait_for(|s| *s)
        .await
        .map_err(|_| Error::StoreGone)?;
    let ns = proxy.namespace().unwrap_or_default();
    let inputs = read_inputs(&proxy, &ctx, &ns).await?;
    let valid = match validate::validate(&proxy, &inputs, &ctx.proxy_image) {
        Ok(valid) => valid,
        Err(invalid) => {
            warn!(proxy = %proxy.name_any(), reason = invalid.reason, "{}", invalid.message);
            ctx.metrics.invalid("mqttproxy", invalid.reason);
            write_proxy_status(&ctx, &proxy, &ProxyOutcome::Invalid(invalid)).await?;
            // Permanent until something changes: the watches bring us back.
            return Ok(Action::await_change());
        }
    };
    let bundle = build::build(&valid);
    let outcome = match proxy.spec.mode {
        ProxyMode::Deployment => {
            let applied = apply::apply(&ctx.client, &ns, &bundle).await?;
            applied_outcome(&valid, Some(&applied.deployment))
        }
        ProxyMode::Sidecar => {
            sidecar::apply(&ctx.client, &ns, &bundle).await?;
            applied_outcome(&valid, None)
        }
    };
    let ids = valid.brokers.iter().map(|b| b.id.clone()).collect();
    ctx.rendered.set(&proxy, ids);
    if write_proxy_status(&ctx, &proxy, &outcome).await? {
        info!(proxy = %proxy.name_any(), brokers = valid.brokers.len(), "applied");
    }
    Ok(Action::requeue(RESYNC))
}

/// Writes the proxy's status for `outcome` unless it already has exactly that.
async fn write_proxy_status(
    ctx: &Ctx,
    proxy: &MqttProxy,
    outcome: &ProxyOutcome,
) -> Result<bool, Error> {
    let api: Api<MqttProxy> =
        Api::namespaced(ctx.client.clone(), &proxy.namespace().unwrap_or_default());
    let old = proxy.status.as_ref();
    let (generation, now) = (proxy.meta().generation, status::now());
    let mut st = status::proxy_status(old, generation, outcome, &now);
    if let ProxyOutcome::Applied { .. } = outcome {
        // What the health poller last saw of the brokers just rendered.
        let selected = ctx.rendered.brokers_of(proxy);
        let ns = proxy.namespace().unwrap_or_default();
        let health = ctx.health.proxy_summary(&ns, &proxy.name_any(), &selected);
        st = status::with_proxy_health(st, old, health.as_ref(), generation, &now);
    }
    status::write_status(&api, proxy, old, st).await
}

/// `d` is None in Sidecar mode: the pods are the apps', so no replica count applies.
fn applied_outcome(v: &validate::ValidatedProxy, d: Option<&Deployment>) -> ProxyOutcome {
    let st = d.and_then(|d| d.status.clone()).unwrap_or_default();
    let degraded = match (&v.service_monitor_skipped, v.brokers.is_empty()) {
        (Some(why), _) => Some((crate::crd::reason::SERVICE_MONITOR_SKIPPED, why.clone())),
        (None, _) if v.pdb_skipped.is_some() => Some((
            crate::crd::reason::PDB_SKIPPED,
            v.pdb_skipped.clone().unwrap_or_default(),
        )),
        (None, true) => Some((
            crate::crd::reason::NO_BROKERS_SELECTED,
            "brokerSelector selects no MqttBroker: the proxies forward nowhere".to_string(),
        )),
        (None, false) => None,
    };
    ProxyOutcome::Applied {
        brokers: i32::try_from(v.brokers.len()).unwrap_or(i32::MAX),
        desired: if d.is_some() { v.replicas } else { 0 },
        replicas: st.replicas.unwrap_or(0),
        ready: st.ready_replicas.unwrap_or(0),
        selector: build::selector_labels(v)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        degraded,
    }
}

/// Reads what validation needs: brokers from the store, referenced Secrets by GET (only
/// the few this proxy names), ServiceMonitor support when asked for.
async fn read_inputs(proxy: &MqttProxy, ctx: &Ctx, ns: &str) -> Result<Inputs, Error> {
    let brokers = ctx.brokers.state();
    let mut names: Vec<String> = match validate::selected_brokers(proxy, &brokers) {
        Ok(sel) => sel
            .iter()
            .flat_map(|b| {
                validate::broker_secret_names(b)
                    .into_iter()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect(),
        Err(_) => Vec::new(), // validate reports the bad selector
    };
    let web = &proxy.spec.web;
    if let Some(u) = &proxy.spec.device_users {
        names.push(u.secret_ref.name.clone());
    }
    if web.enabled {
        names.push(match &web.admin_token_secret_ref {
            Some(r) => r.name.clone(),
            None => validate::admin_secret_name(&proxy.name_any()),
        });
    }
    names.sort();
    names.dedup();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut secrets = BTreeMap::new();
    for name in names {
        if let Some(s) = api.get_opt(&name).await? {
            secrets.insert(name, s);
        }
    }
    // Asked even when disabled: a ServiceMonitor left from when it was enabled is removed.
    let service_monitor_available = Some(ctx.service_monitors.available(&ctx.client).await?);
    // Only asked when a budget is wanted (one replica needs none; Sidecar mode has no pods
    // of its own).
    let pdb_available = if proxy.spec.replicas > 1 && proxy.spec.mode == ProxyMode::Deployment {
        Some(ctx.pdbs.available(&ctx.client).await?)
    } else {
        None
    };
    Ok(Inputs {
        brokers,
        secrets,
        new_admin_token: random_token(),
        service_monitor_available,
        pdb_available,
    })
}

fn random_token() -> String {
    use rand::distributions::{Alphanumeric, DistString};
    Alphanumeric.sample_string(&mut rand::thread_rng(), 40)
}

/// The MqttBroker check: its Secrets and keys exist and the proxy accepts its fields.
pub async fn reconcile_broker(broker: Arc<MqttBroker>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start("mqttbroker");
    let ns = broker.namespace().unwrap_or_default();
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut secrets = BTreeMap::new();
    for name in validate::broker_secret_names(&broker) {
        if let Some(s) = secrets_api.get_opt(name).await? {
            secrets.insert(name.to_string(), s);
        }
    }
    let result = validate::resolve_broker(&broker, &secrets).map(|_| ());
    if let Err(inv) = &result {
        ctx.metrics.invalid("mqttbroker", inv.reason);
    }
    let health = ctx.health.broker_summary(&ns, &broker.name_any());
    let st = status::broker_status_for(&broker, &result, health.as_ref());
    let api: Api<MqttBroker> = Api::namespaced(ctx.client.clone(), &ns);
    status::write_status(&api, &*broker, broker.status.as_ref(), st).await?;
    Ok(match result {
        Ok(()) => Action::requeue(RESYNC),
        Err(_) => Action::await_change(),
    })
}

/// Transient errors: log, count, retry soon.
pub fn error_policy(proxy: Arc<MqttProxy>, err: &Error, ctx: Arc<Ctx>) -> Action {
    retry_soon("mqttproxy", &proxy.name_any(), err, &ctx)
}

pub fn broker_error_policy(broker: Arc<MqttBroker>, err: &Error, ctx: Arc<Ctx>) -> Action {
    retry_soon("mqttbroker", &broker.name_any(), err, &ctx)
}

fn retry_soon(controller: &str, name: &str, err: &Error, ctx: &Ctx) -> Action {
    warn!(controller, object = name, error = %err, "reconcile failed; retrying");
    ctx.metrics.invalid(controller, err.metric_reason());
    Action::requeue(RETRY)
}

/// Watch scope: one namespace or all.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs both controllers until `shutdown` resolves; `ready` is called once the stores
/// have synced.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    proxy_image: String,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
    ready: impl FnOnce() + Send + 'static,
) {
    let ns = namespace.as_deref();
    let (brokers, writer) = reflector::store::<MqttBroker>();
    let (synced_tx, synced_rx) = tokio::sync::watch::channel(false);
    let broker_events = reflector::reflector(
        writer,
        watcher(api::<MqttBroker>(&client, ns), watcher::Config::default()),
    )
    .touched_objects()
    .default_backoff();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        brokers: brokers.clone(),
        metrics,
        proxy_image,
        rendered: RenderedIndex::default(),
        service_monitors: ServiceMonitorDiscovery::default(),
        pdbs: PdbDiscovery::default(),
        brokers_synced: synced_rx,
        health: Arc::new(HealthIndex::default()),
    });
    // Proxy pods (not owned by the MqttProxy but by its ReplicaSets) for the health poller.
    let (pods, pod_writer) = reflector::store::<Pod>();
    let pod_watch = reflector::reflector(
        pod_writer,
        watcher(
            api::<Pod>(&client, ns),
            watcher::Config::default().labels(&format!(
                "{}={}",
                health::POD_NAME_LABEL.0,
                health::POD_NAME_LABEL.1
            )),
        ),
    )
    .default_backoff()
    .for_each(|_| std::future::ready(()));
    // Application pods carrying a sidecar (Sidecar mode), by the label the webhook reads.
    let (sidecar_pods, sidecar_writer) = reflector::store::<Pod>();
    let sidecar_watch = reflector::reflector(
        sidecar_writer,
        watcher(
            api::<Pod>(&client, ns),
            watcher::Config::default().labels(crate::webhook::inject::INJECT_LABEL),
        ),
    )
    .default_backoff()
    .for_each(|_| std::future::ready(()));
    // The poller's own MqttProxy store (see `Poller`).
    let (poller_proxies, proxy_writer) = reflector::store::<MqttProxy>();
    let proxy_watch = reflector::reflector(
        proxy_writer,
        watcher(api::<MqttProxy>(&client, ns), watcher::Config::default()),
    )
    .default_backoff()
    .for_each(|_| std::future::ready(()));
    let (proxy_tx, proxy_triggers) = health::trigger_channel::<MqttProxy>();
    let (broker_tx, broker_triggers) = health::trigger_channel::<MqttBroker>();
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        build::MANAGED_BY_LABEL,
        build::MANAGED_BY
    ));
    let proxies = Controller::new(api::<MqttProxy>(&client, ns), watcher::Config::default());
    let proxy_store = proxies.store();
    let poller = Poller {
        client: client.clone(),
        proxies: poller_proxies,
        pods,
        sidecar_pods,
        brokers: brokers.clone(),
        brokers_synced: ctx.brokers_synced.clone(),
        health: ctx.health.clone(),
        metrics: HealthMetrics::new(&ctx.metrics.registry),
        triggers: health::Triggers {
            proxies: proxy_tx,
            brokers: broker_tx,
        },
        tokens: Default::default(),
    };
    let (c1, s1) = (ctx.clone(), proxy_store.clone());
    let (c2, s2) = (ctx.clone(), proxy_store.clone());
    let proxy_controller = proxies
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned)
        .watches_stream(broker_events, move |b| {
            index::proxies_for_broker(&s1.state(), &c1.rendered, &b)
        })
        .watches_stream(
            watcher(
                api::<PartialObjectMeta<Secret>>(&client, ns),
                watcher::Config::default(),
            )
            .touched_objects()
            .default_backoff(),
            move |s| index::proxies_for_secret(&s2.state(), &c2.brokers.state(), &c2.rendered, &s),
        )
        .reconcile_on(proxy_triggers)
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "mqttproxy controller");
            }
        });
    let bc = Controller::new(api::<MqttBroker>(&client, ns), watcher::Config::default());
    let broker_store = bc.store();
    let broker_controller = bc
        .watches_stream(
            watcher(
                api::<PartialObjectMeta<Secret>>(&client, ns),
                watcher::Config::default(),
            )
            .touched_objects()
            .default_backoff(),
            move |s| index::brokers_for_secret(&broker_store.state(), &s),
        )
        .reconcile_on(broker_triggers)
        .graceful_shutdown_on(shutdown)
        .run(reconcile_broker, broker_error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "mqttbroker controller");
            }
        });
    // The only waiter on the broker store's ready signal (see `Ctx::brokers_synced`); the
    // controllers' own stores gate their runners inside kube.
    let readiness = async move {
        if brokers.wait_until_ready().await.is_ok() {
            let _ = synced_tx.send(true);
            ready();
        }
        // Keep the sender alive so reconciles never see a closed channel.
        std::future::pending::<()>().await;
    };
    // Watched-object counts from the stores the controllers keep anyway (no API calls).
    let counts = {
        let (metrics, proxies, brokers) = (ctx.metrics.clone(), proxy_store, ctx.brokers.clone());
        async move {
            loop {
                metrics.watching("MqttProxy", proxies.state().len());
                metrics.watching("MqttBroker", brokers.state().len());
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    let started = Instant::now();
    tokio::select! {
        // The health poller and its watches never end by themselves.
        _ = pod_watch => {},
        _ = sidecar_watch => {},
        _ = proxy_watch => {},
        _ = poller.run() => {},
        _ = async { tokio::join!(proxy_controller, broker_controller) } => {},
        _ = readiness => {},
        () = counts => {},
    }
    info!(after = ?started.elapsed(), "controllers stopped");
}
