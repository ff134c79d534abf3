//! `mqtt-load churn`: N devices that reconnect every few seconds (same client id each
//! time, one QoS 1 message per connection) through the proxy to 3 mosquittos. Samples the
//! proxy's RSS, open descriptors and connection gauges over time to show whether they level
//! off, counts upstream client-id fights (mosquitto's "already connected, closing old
//! connection"), and checks that the proxy's counters agree with what the devices did.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::time::Instant;

use crate::device::Device;
use crate::fleet::settled_rss_kb;
use crate::mosquitto::{BrokerLimits, Mosquitto};
use crate::payload::{Header, TopicScheme};
use crate::procstat;
use crate::proxy_proc::{brokers_json_with, ProxyProc};
use crate::subscriber::{self, SinkShared, SubscriberConfig};

#[derive(Debug, Clone)]
pub struct ChurnConfig {
    pub proxy_bin: PathBuf,
    pub devices: usize,
    /// Each connection lives this long before the device reconnects.
    pub every: Duration,
    pub secs: u64,
    pub sample: Duration,
    pub progress: bool,
}

const ROOT: &str = "churn";
const IO_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub rss_mb: f64,
    pub fds: usize,
    pub devices_connected: f64,
    pub upstreams_connected: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChurnReport {
    pub devices: usize,
    pub every_s: f64,
    pub secs: u64,
    pub fd_limit: String,
    pub baseline: Sample,
    pub samples: Vec<Sample>,
    /// After every device left and the proxy let go of its upstreams.
    pub after: Sample,
    pub connects: u64,
    pub published: u64,
    pub acked: u64,
    pub received: Vec<u64>,
    /// "already connected, closing old connection" lines in the brokers' logs.
    pub client_id_fights: usize,
    pub proxy_connections_total: f64,
    pub proxy_received_total: f64,
    pub proxy_forwarded_total: f64,
    pub upstream_reconnects_total: f64,
    pub errors: Vec<String>,
}

impl ChurnReport {
    /// Max RSS of the last third of the samples over the max of the middle third.
    pub fn late_growth(&self) -> f64 {
        let n = self.samples.len();
        let max = |s: &[Sample]| s.iter().map(|x| x.rss_mb).fold(0.0, f64::max);
        if n < 3 {
            return 1.0;
        }
        let mid = max(&self.samples[n / 3..2 * n / 3]);
        if mid > 0.0 {
            max(&self.samples[2 * n / 3..]) / mid
        } else {
            1.0
        }
    }

    /// Counters agree with what the devices did, everything was delivered, no fights,
    /// and the proxy is back to its baseline descriptors with nobody connected.
    pub fn consistent(&self) -> Vec<String> {
        let mut bad = Vec::new();
        if self.proxy_connections_total as u64 != self.connects {
            bad.push(format!(
                "mqtt_proxy_device_connections_total {} != {} CONNACKs",
                self.proxy_connections_total, self.connects
            ));
        }
        if self.after.devices_connected != 0.0 || self.after.upstreams_connected != 0.0 {
            bad.push(format!(
                "still connected after the end: {} devices, {} upstreams",
                self.after.devices_connected, self.after.upstreams_connected
            ));
        }
        if self.proxy_received_total as u64 != self.published {
            bad.push(format!(
                "mqtt_proxy_messages_received_total {} != {} published",
                self.proxy_received_total, self.published
            ));
        }
        if self.acked != self.published || self.received.iter().any(|&r| r != self.published) {
            bad.push(format!(
                "published {}, acked {}, received per broker {:?}",
                self.published, self.acked, self.received
            ));
        }
        if self.proxy_forwarded_total as u64 != 3 * self.published {
            bad.push(format!(
                "mqtt_proxy_messages_forwarded_total {} != 3 × {}",
                self.proxy_forwarded_total, self.published
            ));
        }
        if self.client_id_fights > 0 {
            bad.push(format!(
                "{} client-id fights at the brokers",
                self.client_id_fights
            ));
        }
        if self.after.fds > self.baseline.fds + 4 {
            bad.push(format!(
                "proxy holds {} descriptors after the run, {} before",
                self.after.fds, self.baseline.fds
            ));
        }
        bad.extend(self.errors.iter().cloned());
        bad
    }

    pub fn render(&self) -> String {
        let mut s = format!(
            "churn: {} devices reconnecting every {:.1} s for {} s through the proxy to 3 brokers\n{}\n",
            self.devices, self.every_s, self.secs, self.fd_limit
        );
        s.push_str("     t s   RSS MB    fds   devices  upstreams\n");
        let row = |label: &str, x: &Sample| {
            format!(
                "{label:>8} {:>8.1} {:>6} {:>9} {:>10}\n",
                x.rss_mb, x.fds, x.devices_connected, x.upstreams_connected
            )
        };
        s.push_str(&row("before", &self.baseline));
        for x in &self.samples {
            s.push_str(&row(&format!("{:.1}", x.t_s), x));
        }
        s.push_str(&row("after", &self.after));
        s.push_str(&format!(
            "late RSS growth (max of last third / max of middle third): {:.3}×\n",
            self.late_growth()
        ));
        s.push_str(&format!(
            "connects {} (proxy counted {}), published {} (acked {}, proxy received {}), received per broker {:?}, proxy forwarded {}\n",
            self.connects,
            self.proxy_connections_total,
            self.published,
            self.acked,
            self.proxy_received_total,
            self.received,
            self.proxy_forwarded_total
        ));
        s.push_str(&format!(
            "client-id fights at the brokers: {}; upstream reconnects: {}\n",
            self.client_id_fights, self.upstream_reconnects_total
        ));
        let bad = self.consistent();
        if bad.is_empty() {
            s.push_str("result: consistent (counters agree, all delivered, no fights, descriptors back to baseline)\n");
        }
        for b in bad {
            s.push_str(&format!("problem: {b}\n"));
        }
        s
    }
}

#[derive(Default)]
struct Counters {
    connects: AtomicU64,
    published: AtomicU64,
    acked: AtomicU64,
}

async fn sample(pid: u32, http_port: u16, t0: Instant) -> anyhow::Result<Sample> {
    let body = procstat::scrape(http_port, Duration::from_secs(5)).await?;
    Ok(Sample {
        t_s: t0.elapsed().as_secs_f64(),
        rss_mb: procstat::rss_kb(pid)?.0 as f64 / 1024.0,
        fds: procstat::fd_count(pid)?,
        devices_connected: procstat::metric(&body, "mqtt_proxy_devices_connected", &[])
            .unwrap_or(0.0),
        upstreams_connected: procstat::metric(&body, "mqtt_proxy_upstream_connected", &[])
            .unwrap_or(0.0),
    })
}

pub async fn run(cfg: &ChurnConfig) -> anyhow::Result<ChurnReport> {
    anyhow::ensure!(cfg.devices > 0, "--devices must be at least 1");
    anyhow::ensure!(!cfg.every.is_zero(), "--every must be > 0");
    let n = cfg.devices as u64;
    // A closing connection's sockets may linger next to its successor's: room for two.
    let fd_limit = procstat::check_fd_budget(&[
        ("proxy", 8 * n + 256),
        ("each mosquitto", 2 * n + 256),
        ("mqtt-load", n + 256),
    ])?;
    eprintln!("churn: {fd_limit}");
    let mut brokers = Vec::new();
    for i in 1..=3 {
        brokers.push(Mosquitto::start(&format!("b{i}"), BrokerLimits::default(), &[]).await?);
    }
    let list: Vec<(String, u16, bool)> = brokers
        .iter()
        .map(|b| (b.name.clone(), b.port, false))
        .collect();
    let args = [
        "--max-connections-per-address".to_string(),
        "0".into(),
        "--max-connections".into(),
        (2 * cfg.devices + 1000).to_string(),
    ];
    let proxy = ProxyProc::start_with(&cfg.proxy_bin, &brokers_json_with(&list), &args).await?;
    let out = run_with(cfg, &brokers, &proxy, fd_limit).await;
    if out.is_err() {
        eprintln!("churn: proxy log tail:\n{}", proxy.log_tail(20));
    }
    proxy.stop().await;
    for b in brokers {
        b.stop().await;
    }
    out
}

async fn run_with(
    cfg: &ChurnConfig,
    brokers: &[Mosquitto],
    proxy: &ProxyProc,
    fd_limit: String,
) -> anyhow::Result<ChurnReport> {
    let pid = proxy.pid().context("proxy exited")?;
    let base = std::time::Instant::now();
    let cycles = cfg.secs * 1000 / cfg.every.as_millis().max(1) as u64 + 2;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut sinks = Vec::new();
    for (i, b) in brokers.iter().enumerate() {
        let shared = Arc::new(SinkShared::new(cfg.devices));
        let sc = SubscriberConfig {
            addr: b.addr(),
            client_id: format!("churn-sink-{i}"),
            qos: 1,
            scheme: TopicScheme {
                root: ROOT.into(),
                fixed: false,
            },
            devices: cfg.devices,
            expects: (0..cfg.devices).collect(),
            count: cycles,
            connect_timeout: IO_TIMEOUT,
        };
        let task = subscriber::spawn(sc, base, shared.clone(), stop_rx.clone()).await?;
        sinks.push((shared, task));
    }
    let t0 = Instant::now();
    settled_rss_kb(pid).await?;
    let baseline = sample(pid, proxy.http_port, t0).await?;
    let counters = Arc::new(Counters::default());
    let end = t0 + Duration::from_secs(cfg.secs);
    let mut tasks = Vec::new();
    for d in 0..cfg.devices {
        let offset = cfg.every.mul_f64(d as f64 / cfg.devices as f64);
        let (addr, every, counters) = (proxy.addr(), cfg.every, counters.clone());
        tasks.push(tokio::spawn(async move {
            device_loop(d, addr, t0 + offset, every, end, base, counters).await
        }));
    }
    let mut samples = Vec::new();
    let mut next = t0 + cfg.sample;
    let hard_end = end + cfg.every + IO_TIMEOUT;
    while !tasks.iter().all(|t| t.is_finished()) {
        anyhow::ensure!(
            Instant::now() < hard_end,
            "devices still running long after the end"
        );
        if Instant::now() >= next {
            let x = sample(pid, proxy.http_port, t0).await?;
            if cfg.progress {
                eprintln!(
                    "churn: {:5.1}s RSS {:.1} MB, {} fds, {} devices, {} upstreams, {} connects",
                    x.t_s,
                    x.rss_mb,
                    x.fds,
                    x.devices_connected,
                    x.upstreams_connected,
                    counters.connects.load(Ordering::Relaxed)
                );
            }
            samples.push(x);
            next += cfg.sample;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("device task: {e}")),
        }
    }
    errors.truncate(10);
    // Bounded: the proxy lets go of every device and upstream, the sinks get the rest.
    let published = counters.published.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        let x = sample(pid, proxy.http_port, t0).await?;
        let delivered = sinks
            .iter()
            .all(|(s, _)| s.unique.load(Ordering::Relaxed) >= published);
        let idle = x.devices_connected == 0.0 && x.upstreams_connected == 0.0;
        if (delivered && idle && x.fds <= baseline.fds + 4) || Instant::now() >= deadline {
            break x;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    settled_rss_kb(pid).await?;
    let after = Sample {
        rss_mb: procstat::rss_kb(pid)?.0 as f64 / 1024.0,
        ..after
    };
    let body = procstat::scrape(proxy.http_port, Duration::from_secs(5)).await?;
    let m = |name: &str| procstat::metric(&body, name, &[]).unwrap_or(0.0);
    stop_tx.send_replace(true);
    let mut received = Vec::new();
    for (_, task) in sinks {
        let tally = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .context("sink did not stop")??;
        if let Some(e) = tally.error {
            errors.push(e);
        }
        received.push(tally.unique);
    }
    let client_id_fights = brokers
        .iter()
        .map(|b| {
            std::fs::read_to_string(b.log_path())
                .unwrap_or_default()
                .matches("already connected, closing old connection")
                .count()
        })
        .sum();
    Ok(ChurnReport {
        devices: cfg.devices,
        every_s: cfg.every.as_secs_f64(),
        secs: cfg.secs,
        fd_limit,
        baseline,
        samples,
        after,
        connects: counters.connects.load(Ordering::Relaxed),
        published,
        acked: counters.acked.load(Ordering::Relaxed),
        received,
        client_id_fights,
        proxy_connections_total: m("mqtt_proxy_device_connections_total"),
        proxy_received_total: m("mqtt_proxy_messages_received_total"),
        proxy_forwarded_total: m("mqtt_proxy_messages_forwarded_total"),
        upstream_reconnects_total: m("mqtt_proxy_upstream_reconnects_total"),
        errors,
    })
}

/// Connect (same client id every time), publish one QoS 1 message and wait for its
/// PUBACK, hold the connection until `every` after it began, DISCONNECT; again until `end`.
async fn device_loop(
    d: usize,
    addr: String,
    first: Instant,
    every: Duration,
    end: Instant,
    base: std::time::Instant,
    counters: Arc<Counters>,
) -> Result<(), String> {
    tokio::time::sleep_until(first).await;
    let client_id = format!("churn-{d}");
    let mut seq = 0u64;
    let mut cycle_start = first;
    while cycle_start < end {
        let who = format!("device {d} cycle {seq}");
        let mut dev = Device::connect(&addr, &client_id, IO_TIMEOUT)
            .await
            .map_err(|e| format!("{who}: connect: {e}"))?;
        counters.connects.fetch_add(1, Ordering::Relaxed);
        let h = Header {
            seq,
            sent_ns: base.elapsed().as_nanos() as u64,
        };
        dev.publish(ROOT, d, 1, h, 64);
        dev.flush()
            .await
            .map_err(|e| format!("{who}: write: {e}"))?;
        counters.published.fetch_add(1, Ordering::Relaxed);
        let ack = tokio::time::timeout(IO_TIMEOUT, async {
            loop {
                if dev.read().await?.pubacks > 0 {
                    return Ok::<_, crate::wire::WireError>(());
                }
            }
        })
        .await;
        match ack {
            Ok(Ok(())) => counters.acked.fetch_add(1, Ordering::Relaxed),
            Ok(Err(e)) => return Err(format!("{who}: waiting for PUBACK: {e}")),
            Err(_) => return Err(format!("{who}: no PUBACK within {IO_TIMEOUT:?}")),
        };
        tokio::time::sleep_until(cycle_start + every).await;
        dev.close(Duration::from_secs(2)).await;
        seq += 1;
        cycle_start += every;
    }
    Ok(())
}
