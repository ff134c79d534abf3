//! The proxy under test, in-process: a [`TestProxy`] listening on a free port
//! in front of the harness's mosquitto brokers, and a [`ProxyRig`] that starts
//! three brokers with a subscriber on each, which is where most forwarding
//! tests begin.
//!
//! ```text
//!   device ──▶ TestProxy ──▶ brokers[0] ──▶ subs[0]
//!                        ├─▶ brokers[1] ──▶ subs[1]
//!                        └─▶ brokers[2] ──▶ subs[2]
//! ```
//!
//! Broker ids are unique per process (`a-7`, `b-7`, ...): the proxy's metrics
//! registry is process-wide and keyed by broker name, and `status()` reads its
//! queue gauges from there, so parallel tests must not share names.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use mqtt_proxy::broker::BrokerConfig;
use mqtt_proxy::brokerset::BrokerStatus;
use mqtt_proxy::config::Config;
use mqtt_proxy::proxy::BrokerControl;
use mqtt_proxy::ProxyHandle;

use crate::{wait_until, Mosquitto, Publisher, Received, Subscriber};

/// Drain timeout the tests run with: long enough to flush a few thousand
/// messages on localhost, short enough that a stuck shutdown fails fast.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// A proxy on 127.0.0.1 (free port) with one [`BrokerConfig`] per broker.
pub struct TestProxy {
    handle: Option<ProxyHandle>,
    control: BrokerControl,
    brokers: Vec<BrokerConfig>,
    drain_timeout: Duration,
}

impl TestProxy {
    /// Starts a proxy with one enabled 3.1.1 broker per entry of `brokers`
    /// (ids `a-N`, `b-N`, ... in that order), after `tweak` adjusted the
    /// defaults: listen on `127.0.0.1:0`, drain timeout [`DRAIN_TIMEOUT`].
    pub async fn start(
        brokers: &[&Mosquitto],
        tweak: impl FnOnce(&mut Config, &mut Vec<BrokerConfig>),
    ) -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut config = Config {
            mqtt_listen: ([127, 0, 0, 1], 0).into(),
            ..Config::default()
        };
        config.session.drain_timeout = DRAIN_TIMEOUT;
        // Device auth has its own suite (edge_auth); these tests are about forwarding.
        config.auth.allow_anonymous = true;
        let mut configs: Vec<BrokerConfig> = brokers
            .iter()
            .zip('a'..='z')
            .map(|(broker, letter)| {
                BrokerConfig::new(format!("{letter}-{n}"), "127.0.0.1", broker.port())
            })
            .collect();
        tweak(&mut config, &mut configs);
        config.validate().context("proxy config")?;
        let handle = ProxyHandle::start(&config, &configs)
            .await
            .context("starting the proxy")?;
        Ok(Self {
            control: handle.control(),
            handle: Some(handle),
            brokers: configs,
            drain_timeout: config.session.drain_timeout,
        })
    }

    /// The port devices connect to.
    pub fn port(&self) -> u16 {
        self.handle.as_ref().map_or(0, |h| h.mqtt_addr().port())
    }

    /// The broker configs the proxy was started with.
    pub fn brokers(&self) -> &[BrokerConfig] {
        &self.brokers
    }

    /// The running proxy, e.g. for `set_brokers` (`None` after shutdown).
    pub fn handle(&self) -> Option<&ProxyHandle> {
        self.handle.as_ref()
    }

    /// Status of every enabled broker; still readable after [`Self::shutdown`].
    pub fn status(&self) -> Vec<BrokerStatus> {
        self.control.status()
    }

    /// Status of the broker started as `brokers[index]`.
    pub fn status_of(&self, index: usize) -> Result<BrokerStatus> {
        let id = &self
            .brokers
            .get(index)
            .ok_or_else(|| anyhow!("no broker #{index}"))?
            .id;
        self.status()
            .into_iter()
            .find(|s| &s.id == id)
            .ok_or_else(|| anyhow!("broker {id} is not in the running set"))
    }

    /// Waits until every enabled broker has exactly `sessions` upstream
    /// sessions and all of them are connected (a device's upstreams connect
    /// after its CONNACK, so wills and client ids need this first).
    pub async fn wait_upstreams_connected(&self, sessions: usize, timeout: Duration) -> Result<()> {
        let ready = wait_until(timeout, || {
            self.status()
                .iter()
                .all(|s| s.sessions == sessions && s.sessions_connected == sessions)
        })
        .await;
        if !ready {
            bail!(
                "upstreams not all connected ({sessions} per broker) within {timeout:?}: {:#?}",
                self.status()
            );
        }
        Ok(())
    }

    /// Graceful shutdown (stop accepting, flush upstreams), bounded by the
    /// drain timeout plus a margin. A second call is a no-op.
    pub async fn shutdown(&mut self) -> Result<()> {
        let Some(handle) = self.handle.take() else {
            return Ok(());
        };
        let bound = self.drain_timeout + Duration::from_secs(5);
        tokio::time::timeout(bound, handle.shutdown())
            .await
            .map_err(|_| anyhow!("proxy shutdown took longer than {bound:?}"))
    }
}

/// Three brokers, a subscriber on each, and a proxy in front of them: the
/// setup of most forwarding tests. `subs[i]` listens on `brokers[i]`.
pub struct ProxyRig {
    pub brokers: [Mosquitto; 3],
    pub subs: Vec<Subscriber>,
    pub proxy: TestProxy,
}

impl ProxyRig {
    /// Starts three brokers in parallel, subscribes to `filter` at `sub_qos`
    /// on each (QoS 2 keeps the published QoS), then starts the proxy.
    pub async fn start(
        filter: &str,
        sub_qos: u8,
        tweak: impl FnOnce(&mut Config, &mut Vec<BrokerConfig>),
    ) -> Result<Self> {
        let brokers = three_brokers().await?;
        let subs = subscribe_each(&brokers, filter, sub_qos).await?;
        let [a, b, c] = &brokers;
        let proxy = TestProxy::start(&[a, b, c], tweak).await?;
        Ok(Self {
            brokers,
            subs,
            proxy,
        })
    }

    /// The port devices connect to.
    pub fn port(&self) -> u16 {
        self.proxy.port()
    }

    /// A device with a last will, returned once every broker's upstream carries the will.
    pub async fn device_with_will(&self, topic: &str, payload: &str, qos: u8) -> Result<Publisher> {
        let device = Publisher::builder(self.port())
            .last_will(topic, payload.to_owned(), qos, false)
            .connect()
            .await?;
        self.proxy
            .wait_upstreams_connected(1, crate::CONNECT_TIMEOUT)
            .await
            .context("upstreams carry the will")?;
        Ok(device)
    }
}

/// Three anonymous brokers, started in parallel.
pub async fn three_brokers() -> Result<[Mosquitto; 3]> {
    let (a, b, c) = tokio::try_join!(Mosquitto::start(), Mosquitto::start(), Mosquitto::start())
        .context("starting three brokers")?;
    Ok([a, b, c])
}

/// One subscriber per broker, in the same order.
pub async fn subscribe_each(
    brokers: &[Mosquitto],
    filter: &str,
    qos: u8,
) -> Result<Vec<Subscriber>> {
    let mut subs = Vec::with_capacity(brokers.len());
    for broker in brokers {
        let sub = Subscriber::connect(broker.port(), filter, qos)
            .await
            .with_context(|| format!("subscribing to {filter:?} on port {}", broker.port()))?;
        subs.push(sub);
    }
    Ok(subs)
}

/// [`Subscriber::wait_quiet`] over several subscribers in one window: waits
/// until none of them got a message for `quiet` (at most `timeout`), and
/// returns what each received. For "and nothing else arrived" checks after a
/// positive control message was seen.
pub async fn wait_all_quiet(
    subs: &[Subscriber],
    quiet: Duration,
    timeout: Duration,
) -> Vec<Vec<Received>> {
    let total = || subs.iter().map(Subscriber::count).sum::<usize>();
    let mut seen = total();
    let mut since = Instant::now();
    wait_until(timeout, || {
        let now = total();
        if now != seen {
            seen = now;
            since = Instant::now();
        }
        since.elapsed() >= quiet
    })
    .await;
    subs.iter().map(Subscriber::received).collect()
}
