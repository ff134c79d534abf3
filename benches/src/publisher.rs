//! One device connection publishing the workload, on raw MQTT: probe until the
//! coordinator says go, then `count` messages at `rate`, then wait for the last ack.
//!
//! The writer encodes many PUBLISHes into one buffer per `write` (what makes ~100k msg/s
//! possible on one core); a separate reader task turns PUBACK/PUBCOMP into in-flight
//! permits and hands PUBRECs back to the writer to answer with PUBREL. A message counts
//! as sent when it is handed to the socket; acks are reported separately.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rumqttc::mqttbytes::v4::{Packet, PubRel};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::pacer::Pacer;
use crate::payload::{Header, TopicScheme, PROBE_SEQ};
use crate::wire::{self, Frame};

/// Resend a readiness probe this often until every subscriber has seen one.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);
const KEEP_ALIVE_SECS: u16 = 60;
/// Flush the batch at this size even when more messages are due.
const BATCH_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub addr: String,
    pub client_id: String,
    pub device: usize,
    pub qos: u8,
    pub payload_size: usize,
    pub count: u64,
    pub rate: u64,
    /// Unacknowledged QoS 1/2 messages allowed on the wire (≤ 65535 packet ids).
    pub inflight: usize,
    pub scheme: TopicScheme,
    pub connect_timeout: Duration,
}

/// Progress the coordinator reads while the run is going.
#[derive(Debug, Default)]
pub struct PubShared {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub last_ack_ns: AtomicU64,
}

/// What one publisher did; times are ns since the run's base instant.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PubStats {
    pub device: usize,
    pub sent: u64,
    /// Measured messages acknowledged (QoS ≥ 1), probes excluded.
    pub acked: u64,
    pub first_send_ns: u64,
    pub last_send_ns: u64,
    /// Last ack seen, `None` for QoS 0 or when not every message was acked.
    pub last_ack_ns: Option<u64>,
    pub error: Option<String>,
}

/// Times on the run's clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub base: std::time::Instant,
}

impl Clock {
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

fn next_pkid(pkid: &mut u16) -> u16 {
    *pkid = if *pkid == u16::MAX { 1 } else { *pkid + 1 };
    *pkid
}

/// Connects (so a refused connection fails the run before it starts), then spawns the
/// publisher. It probes until `go` turns true, and gives up at `deadline`.
pub async fn spawn(
    cfg: PublisherConfig,
    clock: Clock,
    shared: Arc<PubShared>,
    go: watch::Receiver<bool>,
    deadline: Instant,
) -> Result<JoinHandle<PubStats>, wire::WireError> {
    let (stream, buf) = wire::connect(
        &cfg.addr,
        &cfg.client_id,
        KEEP_ALIVE_SECS,
        cfg.connect_timeout,
    )
    .await?;
    let (rd, wr) = stream.into_split();
    let inflight = cfg.inflight.clamp(1, usize::from(u16::MAX) - 1);
    let permits = Arc::new(Semaphore::new(inflight));
    let (rel_tx, rel_rx) = mpsc::channel(inflight);
    let reader = tokio::spawn(read_acks(
        rd,
        buf,
        clock,
        shared.clone(),
        permits.clone(),
        rel_tx,
    ));
    let writer = Writer {
        cfg,
        clock,
        shared,
        permits,
        inflight,
        rel_rx,
        wr,
        out: BytesMut::with_capacity(2 * BATCH_BYTES),
        topic: String::with_capacity(64),
        pkid: 0,
    };
    Ok(tokio::spawn(writer.run(go, deadline, reader)))
}

/// Reads acks until the connection closes; returns why it stopped.
async fn read_acks(
    mut rd: OwnedReadHalf,
    mut buf: BytesMut,
    clock: Clock,
    shared: Arc<PubShared>,
    permits: Arc<Semaphore>,
    rel_tx: mpsc::Sender<u16>,
) -> String {
    loop {
        let mut acks = 0;
        loop {
            let frame = match wire::parse_frame(&buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return format!("publisher read: {e}"),
            };
            match frame.0 {
                Frame::PubAck(_) | Frame::PubComp(_) => acks += 1,
                // QoS 2: the writer owns the socket's write half and answers with PUBREL.
                Frame::PubRec(pkid) if rel_tx.send(pkid).await.is_err() => {
                    return "publisher writer gone".into();
                }
                _ => {}
            }
            buf.advance(frame.1);
        }
        if acks > 0 {
            shared.last_ack_ns.store(clock.now_ns(), Ordering::Relaxed);
            shared.acked.fetch_add(acks, Ordering::Relaxed);
            permits.add_permits(acks as usize);
        }
        buf.reserve(16 * 1024);
        match rd.read_buf(&mut buf).await {
            Ok(0) => return "publisher: connection closed by broker".into(),
            Ok(_) => {}
            Err(e) => return format!("publisher read: {e}"),
        }
    }
}

struct Writer {
    cfg: PublisherConfig,
    clock: Clock,
    shared: Arc<PubShared>,
    permits: Arc<Semaphore>,
    inflight: usize,
    rel_rx: mpsc::Receiver<u16>,
    wr: tokio::net::tcp::OwnedWriteHalf,
    out: BytesMut,
    topic: String,
    pkid: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Probe,
    Measure,
    Drain,
}

impl Writer {
    fn take_permit(&self) -> bool {
        self.cfg.qos == 0
            || self
                .permits
                .try_acquire()
                .map(tokio::sync::SemaphorePermit::forget)
                .is_ok()
    }

    fn encode(&mut self, seq: u64) {
        let pkid = if self.cfg.qos > 0 {
            next_pkid(&mut self.pkid)
        } else {
            0
        };
        self.cfg
            .scheme
            .write_topic(&mut self.topic, self.cfg.device, seq);
        let header = Header {
            seq,
            sent_ns: self.clock.now_ns(),
        };
        wire::encode_publish(
            &mut self.out,
            &self.topic,
            self.cfg.qos,
            pkid,
            header,
            self.cfg.payload_size,
        );
    }

    async fn run(
        mut self,
        mut go: watch::Receiver<bool>,
        deadline: Instant,
        mut reader: JoinHandle<String>,
    ) -> PubStats {
        let mut stats = PubStats {
            device: self.cfg.device,
            ..PubStats::default()
        };
        let mut phase = Phase::Probe;
        let mut probes = 0u64;
        let mut next_probe = Instant::now();
        let mut pacer = Pacer::new(Instant::now(), self.cfg.rate, self.cfg.count);
        let mut seq = 0u64;
        let mut last_write = Instant::now();
        let ping_every = Duration::from_secs(u64::from(KEEP_ALIVE_SECS) / 3);
        let result: Result<(), String> = loop {
            let now = Instant::now();
            if now >= deadline {
                break Err("publisher: run timeout".into());
            }
            while let Ok(pkid) = self.rel_rx.try_recv() {
                let _ = wire::encode(&mut self.out, Packet::PubRel(PubRel::new(pkid)));
            }
            match phase {
                Phase::Probe if *go.borrow() => {
                    phase = Phase::Measure;
                    pacer = Pacer::new(now, self.cfg.rate, self.cfg.count);
                    stats.first_send_ns = self.clock.now_ns();
                    continue;
                }
                Phase::Probe => {
                    if now >= next_probe && self.take_permit() {
                        self.encode(PROBE_SEQ);
                        probes += 1;
                        next_probe = now + PROBE_INTERVAL;
                    }
                }
                Phase::Measure => {
                    let due = pacer.due(now);
                    while seq < due && self.out.len() < BATCH_BYTES && self.take_permit() {
                        self.encode(seq);
                        seq += 1;
                    }
                    self.shared.sent.store(seq, Ordering::Relaxed);
                    if seq == self.cfg.count {
                        stats.last_send_ns = self.clock.now_ns();
                        phase = Phase::Drain;
                    }
                }
                Phase::Drain => {
                    if self.out.is_empty()
                        && (self.cfg.qos == 0 || self.permits.available_permits() == self.inflight)
                    {
                        break Ok(());
                    }
                }
            }
            if !self.out.is_empty() {
                // A broker that stops reading must not hold the run past its deadline.
                match tokio::time::timeout_at(deadline, self.wr.write_all(&self.out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break Err(format!("publisher write: {e}")),
                    Err(_) => break Err("publisher: run timeout while writing".into()),
                }
                self.out.clear();
                last_write = Instant::now();
                continue;
            }
            // Nothing to write: either the schedule says wait, or (QoS ≥ 1) the in-flight
            // window is full and only an ack can unblock us.
            let scheduled = match phase {
                Phase::Probe => next_probe,
                Phase::Measure => pacer.due_at(seq),
                Phase::Drain => deadline,
            };
            let need_permit = self.cfg.qos > 0 && phase != Phase::Drain && scheduled <= now;
            let wake_at = if need_permit { deadline } else { scheduled }
                .min(last_write + ping_every)
                .min(deadline);
            tokio::select! {
                pkid = self.rel_rx.recv() => if let Some(pkid) = pkid {
                    let _ = wire::encode(&mut self.out, Packet::PubRel(PubRel::new(pkid)));
                },
                // A permit coming back is only a wake-up: drop it straight away.
                _ = self.permits.acquire(), if need_permit => {}
                _ = self.permits.acquire_many(self.inflight as u32), if phase == Phase::Drain && self.cfg.qos > 0 => {}
                changed = go.changed(), if phase == Phase::Probe => if changed.is_err() {
                    break Err("publisher: coordinator gone".into());
                },
                why = &mut reader => break Err(why.unwrap_or_else(|e| format!("publisher reader: {e}"))),
                _ = tokio::time::sleep_until(wake_at) => {
                    if Instant::now() >= last_write + ping_every {
                        let _ = wire::encode(&mut self.out, Packet::PingReq);
                    }
                }
            }
        };
        if let Err(e) = result {
            stats.error = Some(e);
        }
        self.out.clear();
        let _ = wire::encode(&mut self.out, Packet::Disconnect);
        let bye = async {
            self.wr.write_all(&self.out).await?;
            self.wr.shutdown().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), bye).await;
        reader.abort();

        stats.sent = seq;
        if stats.last_send_ns == 0 && seq > 0 {
            stats.last_send_ns = self.clock.now_ns();
        }
        if self.cfg.qos > 0 {
            let acked = self.shared.acked.load(Ordering::Relaxed);
            stats.acked = acked.saturating_sub(probes).min(seq);
            if acked >= probes + seq {
                stats.last_ack_ns = Some(self.shared.last_ack_ns.load(Ordering::Relaxed));
            }
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_skip_zero_on_wrap() {
        let mut p = 0;
        assert_eq!(next_pkid(&mut p), 1);
        p = u16::MAX - 1;
        assert_eq!(next_pkid(&mut p), u16::MAX);
        assert_eq!(next_pkid(&mut p), 1);
    }
}
