//! `mqtt-load fleet`: many slow devices on one box. N devices each publish 1 msg/s (QoS 1,
//! 64 B) through the proxy to 3 mosquittos for `secs` seconds; every tenth device also
//! subscribes through the bidirectional broker b1 and receives one downlink a second.
//!
//! ```text
//!  devices ──QoS 1──▶ proxy ──▶ b1 (bidirectional) ──▶ sink b1      commander ──▶ b1
//!   (connect in stages,     ──▶ b2 ─────────────────▶ sink b2        fleetcmd/d<i> ──▶ proxy
//!    RSS read after each)   ──▶ b3 ─────────────────▶ sink b3          ──▶ subscribed devices
//! ```
//!
//! Reports per-broker delivery and latency, the proxy's RSS after each connect stage (the
//! slope is the memory per device), CPU seconds of the proxy and of each broker over the
//! publish phase, and the connect time of the whole fleet. Refuses up front when the
//! open-file limit cannot hold the fleet. Every phase is bounded.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::fleet_device::{Commander, Counters, DeviceTask, CONNECT_TIMEOUT, DRAIN, ROOT};
pub use crate::fleet_report::{CpuWaits, FleetReport, SinkReport, Stage};
use crate::mosquitto::{BrokerLimits, Mosquitto};
use crate::payload::TopicScheme;
use crate::procstat;
use crate::proxy_proc::{brokers_json_with, ProxyProc};
use crate::subscriber::{self, SinkShared, SubscriberConfig};
use crate::summary::LatencyMs;

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub proxy_bin: PathBuf,
    pub devices: usize,
    /// Seconds of publishing (= messages per device at 1 msg/s).
    pub secs: u64,
    pub payload_size: usize,
    /// Every `1 / sub_fraction`-th device subscribes through b1.
    pub sub_fraction: f64,
    /// Device counts after which the proxy's RSS is read (the full fleet always is).
    pub rss_at: Vec<usize>,
    /// CONNECTs in flight at once while the fleet connects.
    pub connect_concurrency: usize,
    pub progress: bool,
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Waits until the proxy's RSS changes by < 1 % over half a second (at most 10 s), so a
/// reading is not taken mid-allocation; returns it in KiB.
pub async fn settled_rss_kb(pid: u32) -> anyhow::Result<u64> {
    let mut prev = procstat::rss_kb(pid)?.0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = procstat::rss_kb(pid)?.0;
        if now * 100 >= prev * 99 && now * 100 <= prev * 101 {
            return Ok(now);
        }
        prev = now;
    }
    Ok(prev)
}

/// Waits (bounded) until the proxy reports `want` upstream connections in total.
pub async fn wait_upstreams(http_port: u16, want: u64, bound: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + bound;
    loop {
        let body = procstat::scrape(http_port, Duration::from_secs(5)).await?;
        let up = procstat::metric(&body, "mqtt_proxy_upstream_connected", &[]).unwrap_or(0.0);
        if up as u64 == want {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "proxy has {up} upstream connections, not {want}, after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(cfg: &FleetConfig) -> anyhow::Result<FleetReport> {
    anyhow::ensure!(cfg.devices > 0, "--devices must be at least 1");
    anyhow::ensure!(
        cfg.payload_size >= crate::payload::HEADER_LEN,
        "payload < 16 bytes"
    );
    let n = cfg.devices as u64;
    let fd_limit = procstat::check_fd_budget(&[
        ("proxy", 4 * n + 256),
        ("each mosquitto", n + 256),
        ("mqtt-load", n + 256),
    ])?;
    eprintln!("fleet: {fd_limit}");
    let every = if cfg.sub_fraction > 0.0 {
        (1.0 / cfg.sub_fraction).round().max(1.0) as usize
    } else {
        usize::MAX
    };
    let subscribed: Vec<usize> = (0..cfg.devices).filter(|d| d % every == 0).collect();

    let mut brokers = Vec::new();
    for i in 1..=3 {
        brokers.push(Mosquitto::start(&format!("b{i}"), BrokerLimits::default(), &[]).await?);
    }
    let list: Vec<(String, u16, bool)> = brokers
        .iter()
        .enumerate()
        .map(|(i, b)| (b.name.clone(), b.port, i == 0))
        .collect();
    let args = [
        "--max-connections-per-address".to_string(),
        "0".into(),
        "--max-connections".into(),
        (cfg.devices + 1000).to_string(),
    ];
    let proxy = ProxyProc::start_with(&cfg.proxy_bin, &brokers_json_with(&list), &args).await?;
    let pid = proxy.pid().context("proxy exited")?;
    let out = run_with(cfg, &brokers, &proxy, pid, &subscribed, fd_limit).await;
    if out.is_err() {
        eprintln!("fleet: proxy log tail:\n{}", proxy.log_tail(20));
    }
    proxy.stop().await;
    for b in brokers {
        b.stop().await;
    }
    out
}

async fn run_with(
    cfg: &FleetConfig,
    brokers: &[Mosquitto],
    proxy: &ProxyProc,
    pid: u32,
    subscribed: &[usize],
    fd_limit: String,
) -> anyhow::Result<FleetReport> {
    let base = std::time::Instant::now();
    let scheme = TopicScheme {
        root: ROOT.into(),
        fixed: false,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sinks = Vec::new();
    for (i, b) in brokers.iter().enumerate() {
        let shared = Arc::new(SinkShared::new(cfg.devices));
        let sc = SubscriberConfig {
            addr: b.addr(),
            client_id: format!("fleet-sink-{i}"),
            qos: 1,
            scheme: scheme.clone(),
            devices: cfg.devices,
            expects: (0..cfg.devices).collect(),
            count: cfg.secs,
            connect_timeout: CONNECT_TIMEOUT,
        };
        let task = subscriber::spawn(sc, base, shared.clone(), stop_rx.clone())
            .await
            .with_context(|| format!("sink at {}", b.name))?;
        sinks.push((shared, task));
    }

    let counters = Arc::new(Counters::default());
    let (go_tx, go_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(cfg.connect_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(cfg.devices);
    let mut stages = Vec::new();
    let mut targets: Vec<usize> = cfg
        .rss_at
        .iter()
        .copied()
        .filter(|&s| s < cfg.devices)
        .collect();
    targets.push(cfg.devices);
    targets.sort_unstable();
    targets.dedup();
    let addr = proxy.addr();
    let mut connect_total = 0.0;
    for &target in &targets {
        let started = Instant::now();
        for d in tasks.len()..target {
            let dev = DeviceTask {
                index: d,
                devices: cfg.devices,
                addr: addr.clone(),
                subscribe: subscribed.binary_search(&d).is_ok(),
                secs: cfg.secs,
                payload_size: cfg.payload_size,
                base,
            };
            tasks.push(tokio::spawn(dev.run(
                gate.clone(),
                counters.clone(),
                go_rx.clone(),
            )));
        }
        let bound = CONNECT_TIMEOUT + Duration::from_secs(target as u64 / 20);
        loop {
            if counters.connected.load(Ordering::Relaxed) as usize >= target {
                break;
            }
            if let Some(failed) = tasks.iter().position(|t| t.is_finished()) {
                let t = tasks.swap_remove(failed);
                let why = t.await.unwrap_or_else(|e| Err(e.to_string()));
                anyhow::bail!("a device ended while connecting: {why:?}");
            }
            anyhow::ensure!(
                started.elapsed() < bound,
                "only {} of {target} devices connected within {bound:?}",
                counters.connected.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let connect_s = started.elapsed().as_secs_f64();
        connect_total += connect_s;
        wait_upstreams(proxy.http_port, 3 * target as u64, Duration::from_secs(60)).await?;
        let rss = settled_rss_kb(pid).await?;
        let st = Stage {
            devices: target,
            connect_s,
            rss_mb: mb(rss),
            fds: procstat::fd_count(pid)?,
        };
        eprintln!(
            "fleet: {} devices connected in {:.2} s; proxy RSS {:.1} MB, {} fds",
            st.devices, st.connect_s, st.rss_mb, st.fds
        );
        stages.push(st);
    }

    let mut cmd = Commander::connect(&brokers[0].addr()).await?;
    let cpu0 = cpu_all(pid, brokers)?;
    let wait0 = wait_all(pid, brokers)?;
    let load0 = loadavg();
    let go_at = Instant::now();
    go_tx.send_replace(true);
    let publish_end = go_at + Duration::from_secs(cfg.secs);
    let mut next_downlink = go_at + Duration::from_millis(500);
    let mut next_progress = go_at + Duration::from_secs(5);
    let hard_end = publish_end + DRAIN + Duration::from_secs(10);
    let mut downlinks_sent = 0u64;
    // Downlinks stop 2 s before the devices do; the subscribed ones then listen until all
    // have arrived (at most the drain), however long the last ones take.
    let downlink_end = publish_end
        .checked_sub(Duration::from_secs(2))
        .unwrap_or(go_at);
    while !tasks.iter().all(|t| t.is_finished()) {
        let now = Instant::now();
        anyhow::ensure!(
            now < hard_end,
            "devices still running {:?} after the publish phase",
            DRAIN + Duration::from_secs(10)
        );
        if now >= next_downlink && now < downlink_end {
            cmd.downlinks(subscribed).await?;
            downlinks_sent += subscribed.len() as u64;
            next_downlink += Duration::from_secs(1);
        } else if now >= downlink_end && counters.downlinks_final.load(Ordering::Relaxed) == 0 {
            counters
                .downlinks_final
                .store(downlinks_sent + 1, Ordering::Release);
        }
        if cfg.progress && now >= next_progress {
            let recv: Vec<String> = sinks
                .iter()
                .map(|(s, _)| s.unique.load(Ordering::Relaxed).to_string())
                .collect();
            eprintln!(
                "fleet: {:5.1}s sent {} acked {} | sinks {} | downlinks {}/{downlinks_sent}",
                go_at.elapsed().as_secs_f64(),
                counters.sent.load(Ordering::Relaxed),
                counters.acked.load(Ordering::Relaxed),
                recv.join(" "),
                counters.downlinks.load(Ordering::Relaxed)
            );
            next_progress += Duration::from_secs(5);
        }
        cmd.drain().await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let publish_s = go_at.elapsed().as_secs_f64();
    let sent = counters.sent.load(Ordering::Relaxed);
    // Sinks: until each has every message or nothing new came for 5 s.
    let drain_end = Instant::now() + DRAIN;
    let mut last = (0, Instant::now());
    loop {
        let got: u64 = sinks
            .iter()
            .map(|(s, _)| s.unique.load(Ordering::Relaxed))
            .sum();
        if got >= 3 * sent || Instant::now() >= drain_end {
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() >= Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu1 = cpu_all(pid, brokers)?;
    let wait1 = wait_all(pid, brokers)?;
    let waited: Vec<f64> = wait1
        .iter()
        .zip(&wait0)
        .map(|(a, b)| a.saturating_sub(*b).as_secs_f64())
        .collect();
    let load1 = loadavg();
    let (rss_end, hwm) = procstat::rss_kb(pid)?;
    // After the CPU readings: the scrape is not part of what was measured.
    let metrics = procstat::scrape(proxy.http_port, Duration::from_secs(5))
        .await
        .unwrap_or_default();
    stop_tx.send_replace(true);

    let mut errors = Vec::new();
    let mut per_device_sent = vec![0u64; cfg.devices];
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => per_device_sent[r.index] = r.sent,
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("device task: {e}")),
        }
    }
    errors.truncate(10);
    let mut sink_reports = Vec::new();
    for (i, (_, task)) in sinks.into_iter().enumerate() {
        let tally = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .context("sink did not stop")?
            .context("sink task")?;
        if let Some(e) = &tally.error {
            errors.push(e.clone());
        }
        sink_reports.push(SinkReport {
            broker: brokers[i].name.clone(),
            expected: per_device_sent.iter().sum(),
            received: tally.unique,
            duplicates: tally.duplicates,
            latency: LatencyMs::from_histogram(&tally.latency),
            proxy_p50_le_ms: proxy_quantile_ms(&metrics, &brokers[i].name, 0.5),
            proxy_p99_le_ms: proxy_quantile_ms(&metrics, &brokers[i].name, 0.99),
        });
    }
    let (first, lastst) = (&stages[0], &stages[stages.len() - 1]);
    let kb_per_device = if lastst.devices > first.devices {
        (lastst.rss_mb - first.rss_mb) * 1024.0 / (lastst.devices - first.devices) as f64
    } else {
        lastst.rss_mb * 1024.0 / lastst.devices as f64
    };
    Ok(FleetReport {
        devices: cfg.devices,
        subscribed_devices: subscribed.len(),
        secs: cfg.secs,
        fd_limit,
        kb_per_device,
        connect_s: connect_total,
        stages,
        sent,
        acked: counters.acked.load(Ordering::Relaxed),
        sinks: sink_reports,
        downlinks_sent,
        downlinks_received: counters.downlinks.load(Ordering::Relaxed),
        proxy_cpu_s: (cpu1[0] - cpu0[0]).as_secs_f64(),
        broker_cpu_s: cpu1[1..cpu1.len() - 1]
            .iter()
            .zip(&cpu0[1..cpu0.len() - 1])
            .map(|(a, b)| (*a - *b).as_secs_f64())
            .collect(),
        proxy_rss_end_mb: mb(rss_end),
        proxy_hwm_mb: mb(hwm),
        publish_s,
        load_cpu_s: (cpu1[cpu1.len() - 1] - cpu0[cpu0.len() - 1]).as_secs_f64(),
        waited_s: CpuWaits {
            proxy: waited[0],
            brokers: waited[1..waited.len() - 1].iter().sum(),
            load: waited[waited.len() - 1],
        },
        loadavg: (load0, load1),
        errors,
    })
}

/// The first three fields of `/proc/loadavg`.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// From the proxy's `mqtt_proxy_forward_latency_seconds{broker}`, in ms.
fn proxy_quantile_ms(metrics: &str, broker: &str, q: f64) -> Option<f64> {
    let label = format!("broker=\"{broker}\"");
    procstat::histogram_quantile(metrics, "mqtt_proxy_forward_latency_seconds", &[&label], q)
        .map(|s| s * 1000.0)
}

/// CPU time of the proxy, then of each broker, then of this process.
fn cpu_all(proxy: u32, brokers: &[Mosquitto]) -> anyhow::Result<Vec<Duration>> {
    each_process(proxy, brokers, procstat::cpu_time)
}

/// Run queue delay (waiting for a CPU) of the proxy, each broker and this process.
fn wait_all(proxy: u32, brokers: &[Mosquitto]) -> anyhow::Result<Vec<Duration>> {
    each_process(proxy, brokers, procstat::cpu_wait)
}

fn each_process(
    proxy: u32,
    brokers: &[Mosquitto],
    read: fn(u32) -> anyhow::Result<Duration>,
) -> anyhow::Result<Vec<Duration>> {
    let mut v = vec![read(proxy)?];
    for b in brokers {
        v.push(read(b.pid().context("broker exited")?)?);
    }
    v.push(read(std::process::id())?);
    Ok(v)
}
