//! One fleet device's life (connect, maybe subscribe, idle until go, 1 msg/s, drain) and
//! the commander that publishes downlinks to the bidirectional broker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::device::{Device, PING_EVERY};
use crate::payload::Header;
use crate::wire;

pub const ROOT: &str = "fleet";
pub const CMD_ROOT: &str = "fleetcmd";
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DRAIN: Duration = Duration::from_secs(10);

/// Fleet-wide counters the device tasks bump.
#[derive(Default)]
pub struct Counters {
    pub connected: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub downlinks: AtomicU64,
    /// 1 + the downlinks the commander sent in all, once it has stopped sending (0 before):
    /// the subscribed devices listen until that many arrived (or the drain ends).
    pub downlinks_final: AtomicU64,
}

impl Counters {
    fn downlinks_all_in(&self) -> bool {
        let last = self.downlinks_final.load(Ordering::Acquire);
        last > 0 && self.downlinks.load(Ordering::Relaxed) >= last - 1
    }
}

pub struct DeviceTask {
    pub index: usize,
    pub devices: usize,
    pub addr: String,
    pub subscribe: bool,
    pub secs: u64,
    pub payload_size: usize,
    pub base: std::time::Instant,
}

#[derive(Debug)]
pub struct DeviceResult {
    pub index: usize,
    pub sent: u64,
}

impl DeviceTask {
    pub async fn run(
        self,
        gate: Arc<Semaphore>,
        counters: Arc<Counters>,
        mut go: watch::Receiver<bool>,
    ) -> Result<DeviceResult, String> {
        let who = format!("device {}", self.index);
        let mut dev = {
            let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
            let mut dev = Device::connect(
                &self.addr,
                &format!("fleet-{}", self.index),
                CONNECT_TIMEOUT,
            )
            .await
            .map_err(|e| format!("{who}: connect: {e}"))?;
            if self.subscribe {
                dev.subscribe(&format!("{CMD_ROOT}/d{}", self.index), 1, CONNECT_TIMEOUT)
                    .await
                    .map_err(|e| format!("{who}: subscribe: {e}"))?;
            }
            dev
        };
        counters.connected.fetch_add(1, Ordering::Relaxed);
        // Idle until go, pinging.
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        while !*go.borrow() {
            tokio::select! {
                _ = go.changed() => {}
                _ = ping.tick() => { dev.ping(); dev.flush().await.map_err(|e| format!("{who}: {e}"))?; }
                r = dev.read() => {
                    let got = r.map_err(|e| format!("{who}: read while idle: {e}"))?;
                    counters.downlinks.fetch_add(got.publishes, Ordering::Relaxed);
                    dev.flush().await.map_err(|e| format!("{who}: {e}"))?;
                }
            }
        }
        // Spread the fleet over the second, as real devices are.
        let phase = Duration::from_micros(1_000_000 * self.index as u64 / self.devices as u64);
        let mut tick = tokio::time::interval_at(Instant::now() + phase, Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut sent, mut acked) = (0u64, 0u64);
        let mut drain_until: Option<Instant> = None;
        loop {
            if sent == self.secs && drain_until.is_none() {
                drain_until = Some(Instant::now() + DRAIN);
            }
            if let Some(until) = drain_until {
                if acked >= sent {
                    // Subscribed devices listen until every downlink has arrived (fleet-wide
                    // count: a device cannot tell its last one), at most for the drain.
                    if !self.subscribe || counters.downlinks_all_in() || Instant::now() >= until {
                        break;
                    }
                }
                if Instant::now() >= until {
                    return Err(format!("{who}: {acked} of {sent} PUBACKs within {DRAIN:?}"));
                }
            }
            let wake = drain_until.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = tick.tick(), if sent < self.secs => {
                    let h = Header { seq: sent, sent_ns: self.base.elapsed().as_nanos() as u64 };
                    dev.publish(ROOT, self.index, 1, h, self.payload_size);
                    sent += 1;
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                }
                r = dev.read() => {
                    let got = r.map_err(|e| format!("{who}: read: {e}"))?;
                    acked += got.pubacks;
                    counters.acked.fetch_add(got.pubacks, Ordering::Relaxed);
                    counters.downlinks.fetch_add(got.publishes, Ordering::Relaxed);
                }
                _ = tokio::time::sleep_until(wake.min(Instant::now() + Duration::from_millis(250))) => {}
            }
            dev.flush()
                .await
                .map_err(|e| format!("{who}: write: {e}"))?;
        }
        dev.close(Duration::from_secs(2)).await;
        Ok(DeviceResult {
            index: self.index,
            sent,
        })
    }
}

/// Publishes downlinks straight to the bidirectional broker (QoS 1).
pub struct Commander {
    stream: tokio::net::TcpStream,
    buf: BytesMut,
    out: BytesMut,
    seq: u64,
}

impl Commander {
    pub async fn connect(addr: &str) -> anyhow::Result<Commander> {
        let (stream, buf) = wire::connect(addr, "fleet-commander", 60, CONNECT_TIMEOUT).await?;
        Ok(Commander {
            stream,
            buf,
            out: BytesMut::new(),
            seq: 0,
        })
    }

    pub async fn downlinks(&mut self, devices: &[usize]) -> anyhow::Result<()> {
        for &d in devices {
            let h = Header {
                seq: self.seq,
                sent_ns: 0,
            };
            let pkid = (self.seq % 65_535) as u16 + 1;
            wire::encode_publish(&mut self.out, &format!("{CMD_ROOT}/d{d}"), 1, pkid, h, 16);
            self.seq += 1;
        }
        self.stream.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// Reads (without waiting) whatever the broker sent: PUBACKs only.
    pub async fn drain(&mut self) -> anyhow::Result<()> {
        loop {
            self.buf.clear();
            self.buf.reserve(64 * 1024);
            match tokio::time::timeout(Duration::ZERO, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) => anyhow::bail!("commander: broker closed the connection"),
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Ok(()),
            }
        }
    }
}
