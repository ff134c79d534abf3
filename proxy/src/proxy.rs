//! Wiring: binds the MQTT listener, owns the broker-set `watch` channel, and gives the
//! binary, the tests and the web API one handle to reload, inspect and stop the proxy.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{AuthOptions, Authorizer, UsersError};
use crate::broker::BrokerConfig;
use crate::brokerset::{BrokerSet, BrokerStatus, BuildError, Defaults};
use crate::config::Config;
use crate::registry::Registry;
use crate::session::Shared;
use crate::transport::Transport;

/// Reads and replaces the broker set; cheap to clone (the reloader and the API hold one).
#[derive(Clone)]
pub struct BrokerControl {
    tx: Arc<watch::Sender<Arc<BrokerSet>>>,
    defaults: Defaults,
    registry: Arc<Registry>,
}

impl BrokerControl {
    /// Replaces the broker set. Invalid input leaves the running set untouched.
    pub fn set_brokers(&self, brokers: &[BrokerConfig]) -> Result<(), BuildError> {
        let next = self.prepare(brokers)?;
        self.apply(next);
        Ok(())
    }

    /// Builds (and so validates, TLS files included) the set that `brokers` would be,
    /// without touching the running one. Building has no side effects: nothing connects.
    pub fn prepare(&self, brokers: &[BrokerConfig]) -> Result<BrokerSet, BuildError> {
        let current = self.tx.borrow().clone();
        BrokerSet::build(brokers, self.defaults.clone(), Some(&current))
    }

    /// Puts a prepared set in force. Build it from the current set just before (the API
    /// holds the store lock between the two, so nothing else changes the set meanwhile).
    pub fn apply(&self, next: BrokerSet) {
        self.tx.send_replace(Arc::new(next));
    }

    /// The broker set in force.
    pub fn brokers(&self) -> Arc<BrokerSet> {
        self.tx.borrow().clone()
    }

    pub fn status(&self) -> Vec<BrokerStatus> {
        self.brokers().status()
    }

    /// The connected devices (for the dashboard).
    pub fn devices(&self) -> Vec<Arc<crate::devices::DeviceInfo>> {
        self.registry.devices.list()
    }
}

pub struct ProxyHandle {
    /// Every device endpoint's bound address.
    addrs: Vec<(Transport, SocketAddr)>,
    control: BrokerControl,
    shutdown_tx: watch::Sender<bool>,
    listener: JoinHandle<()>,
    mirror: JoinHandle<()>,
    #[cfg(feature = "lease")]
    mirror_gate_task: Option<crate::mirror_lease::MirrorGate>,
    registry: Arc<Registry>,
    users_reload: Option<JoinHandle<()>>,
}

impl ProxyHandle {
    /// Binds `config.mqtt_listen` and starts serving devices with `brokers`.
    pub async fn start(
        config: &Config,
        brokers: &[BrokerConfig],
    ) -> Result<ProxyHandle, StartError> {
        let defaults = Defaults {
            queue: config.queue,
            budget: Arc::new(crate::queue::Budget::new(config.queue_total_max_bytes)),
        };
        let set = BrokerSet::build(brokers, defaults.clone(), None)?;
        let (brokers_tx, brokers_rx) = watch::channel(Arc::new(set));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let edge = crate::listener::Edge::bind(&config.listen, config.mqtt_listen).await?;
        let addrs = edge.addrs();
        let registry = Arc::new(Registry::default());
        let auth = Arc::new(Authorizer::new(&config.auth)?);
        warn_about_auth(&config.auth, &auth);
        let users_reload = config
            .auth
            .users_file
            .clone()
            .map(|p| crate::auth::reload::spawn(p, auth.clone(), crate::reload::POLL));
        let shared = Arc::new(Shared {
            auth,
            brokers: brokers_rx.clone(),
            registry: registry.clone(),
            opts: config.session.clone(),
            shutdown: shutdown_rx.clone(),
        });
        #[cfg(feature = "lease")]
        let (gate, mirror_gate_task) = match &config.mirror.lease {
            Some(lease) => {
                let g = crate::mirror_lease::MirrorGate::elect(
                    lease,
                    &config.mirror.instance_id,
                    shutdown_rx.clone(),
                )
                .await?;
                (g.gate.clone(), Some(g))
            }
            // Always open: a dropped sender leaves the value in place and the mirror's
            // select skips the closed channel.
            None => (watch::channel(true).1, None),
        };
        #[cfg(not(feature = "lease"))]
        let gate = watch::channel(true).1;
        let mirror = tokio::spawn(crate::mirror::run(
            brokers_rx.clone(),
            config.session.clone(),
            config.mirror.clone(),
            gate,
            shutdown_rx.clone(),
        ));
        if let Some(dir) = &config.session.spool_dir {
            resume_spools(dir, &brokers_rx.borrow(), &registry, &config.session);
        }
        let listener = tokio::spawn(crate::listener::serve(
            edge,
            shared,
            config.listen.clone(),
            config.max_connections,
            shutdown_rx,
        ));
        let control = BrokerControl {
            tx: Arc::new(brokers_tx),
            defaults,
            registry: registry.clone(),
        };
        Ok(ProxyHandle {
            addrs,
            control,
            shutdown_tx,
            listener,
            mirror,
            #[cfg(feature = "lease")]
            mirror_gate_task,
            registry,
            users_reload,
        })
    }

    /// `true` while the proxy serves devices (false once shutdown begins).
    pub fn ready(&self) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(!*self.shutdown_tx.borrow());
        let mut shutdown = self.shutdown_tx.subscribe();
        tokio::spawn(async move {
            crate::session::wait_true(&mut shutdown).await;
            let _ = tx.send(false);
        });
        rx
    }

    /// A signal that turns true when shutdown begins.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// Counts connected devices (for the API), without borrowing the handle.
    pub fn device_counter(&self) -> Arc<dyn Fn() -> usize + Send + Sync> {
        let r = self.registry.clone();
        Arc::new(move || r.len())
    }

    /// The plain MQTT endpoint (the first endpoint when plain MQTT is off).
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.addr(Transport::Tcp)
            .or_else(|| self.addrs.first().map(|(_, a)| *a))
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The bound address of the endpoint for `transport`, if it is served.
    pub fn addr(&self, transport: Transport) -> Option<SocketAddr> {
        self.addrs
            .iter()
            .find(|(t, _)| *t == transport)
            .map(|(_, a)| *a)
    }

    /// Replaces the broker set. Invalid input leaves the running set untouched.
    pub fn set_brokers(&self, brokers: &[BrokerConfig]) -> Result<(), BuildError> {
        self.control.set_brokers(brokers)
    }

    pub fn control(&self) -> BrokerControl {
        self.control.clone()
    }

    /// The broker set in force.
    pub fn brokers(&self) -> Arc<BrokerSet> {
        self.control.brokers()
    }

    pub fn status(&self) -> Vec<BrokerStatus> {
        self.control.status()
    }

    /// Connected devices.
    pub fn devices(&self) -> usize {
        self.registry.len()
    }

    /// Stops accepting, flushes sessions (bounded by the drain timeout) and returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(r) = &self.users_reload {
            r.abort();
        }
        let _ = self.listener.await;
        let _ = self.mirror.await;
        // Only now: the successor must not mirror while this replica's mirror drains.
        #[cfg(feature = "lease")]
        if let Some(g) = self.mirror_gate_task {
            g.release().await;
        }
    }
}

/// Spooled messages from a previous run are delivered at startup even if their device
/// never comes back. Each device runs under its client id (claimed once in the registry,
/// for all its spooled brokers together: a second claim would kick the first and stop its
/// delivery), so a device that reconnects takes over and its own session continues from
/// the spools.
fn resume_spools(
    dir: &std::path::Path,
    set: &BrokerSet,
    registry: &Arc<Registry>,
    opts: &crate::config::SessionOptions,
) {
    let mut by_device: std::collections::BTreeMap<String, Vec<Arc<crate::brokerset::Broker>>> =
        Default::default();
    for broker in set.brokers.iter().filter(|b| b.config.spool) {
        for (client_id, path) in crate::spool::pending_files(dir, broker.id()) {
            let Some(device_id) = crate::client_id::device_of(
                &client_id,
                &broker.config.client_id_prefix,
                opts.client_id_suffix.as_deref(),
            ) else {
                continue;
            };
            tracing::info!(broker = broker.label(), %client_id, file = %path.display(), "delivering spooled messages from a previous run");
            by_device
                .entry(device_id.to_string())
                .or_default()
                .push(broker.clone());
        }
    }
    for (device_id, brokers) in by_device {
        let (registry, opts) = (registry.clone(), opts.clone());
        tokio::spawn(async move {
            let claim = registry.claim(&device_id);
            let (tx, mut rx) = tokio::sync::mpsc::channel(16);
            let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
            let deliveries = brokers.into_iter().map(|broker| {
                let h = crate::upstream::UpstreamHandle::spawn(crate::upstream::UpstreamParams {
                    broker,
                    device_id: device_id.clone(),
                    client_id_suffix: opts.client_id_suffix.clone(),
                    clean_session: true,
                    keep_alive: 30,
                    will: None,
                    session_expiry: None,
                    max_packet_size: opts.max_packet_size,
                    to_session: tx.clone(),
                    spool_dir: opts.spool_dir.clone(),
                    start_after: None,
                });
                h.deliver_all(claim.kicked.clone())
            });
            futures_util::future::join_all(deliveries).await;
            drain.abort();
            drop(claim);
        });
    }
}

/// Anonymous access is an explicit choice and must be visible; so must a proxy that will
/// refuse every device because nobody was added yet.
fn warn_about_auth(opts: &AuthOptions, auth: &Authorizer) {
    let file = opts
        .users_file
        .as_ref()
        .map_or_else(|| "(none)".to_string(), |p| p.display().to_string());
    if auth.allows_anonymous() {
        tracing::warn!("ANONYMOUS DEVICE ACCESS IS ON (--allow-anonymous): anyone who can reach the MQTT port can publish to every upstream broker with the proxy's credentials");
    } else if auth.user_count() == 0 {
        tracing::warn!(users_file = %file, "no device users and anonymous access is off: every CONNECT is refused until one is added (`mqtt-proxy users add NAME`)");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Brokers(#[from] BuildError),
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error(transparent)]
    Listen(#[from] crate::listener::ListenError),
    #[cfg(feature = "lease")]
    #[error(transparent)]
    MirrorLease(#[from] crate::mirror_lease::LeaseError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}
