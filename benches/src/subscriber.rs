//! One downstream subscriber: subscribes `<root>/#` on a broker, acks at the workload
//! QoS, and tallies what arrives: unique/duplicate messages per device, latency, bytes.
//!
//! [`Tally`] is the bookkeeping without I/O (unit tested); [`spawn`] is the socket loop.
//! Progress and readiness go through [`SinkShared`] atomics, updated once per read, so
//! the coordinator can print progress and detect the end of the drain without locks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use rumqttc::mqttbytes::v4::{Packet, PubAck, PubComp, PubRec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::payload::{Header, TopicScheme};
use crate::summary::new_histogram;
use crate::wire::{self, Frame};

/// Counters the coordinator reads while the run is going.
#[derive(Debug)]
pub struct SinkShared {
    /// Every measured PUBLISH received, duplicates included.
    pub received: AtomicU64,
    pub unique: AtomicU64,
    pub last_recv_ns: AtomicU64,
    /// Per device: a readiness probe from it has arrived here.
    pub probes: Vec<AtomicBool>,
}

impl SinkShared {
    pub fn new(devices: usize) -> SinkShared {
        SinkShared {
            received: AtomicU64::new(0),
            unique: AtomicU64::new(0),
            last_recv_ns: AtomicU64::new(0),
            probes: (0..devices).map(|_| AtomicBool::new(false)).collect(),
        }
    }
}

/// What one received payload turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    Unique,
    Duplicate,
    Probe(usize),
    /// From a device this sink does not expect, a sequence out of range, or no header.
    Unexpected,
}

/// Per-sink bookkeeping: which sequence numbers arrived from which device, and when.
pub struct Tally {
    /// Indexed by device; an empty bitset for devices this sink does not expect.
    seen: Vec<Vec<u64>>,
    count: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub unexpected: u64,
    pub unique_bytes: u64,
    pub first_recv_ns: u64,
    pub last_recv_ns: u64,
    pub latency: Histogram<u64>,
    pub error: Option<String>,
}

impl Tally {
    pub fn new(devices: usize, expects: &[usize], count: u64) -> Tally {
        let words = count.div_ceil(64) as usize;
        let seen = (0..devices)
            .map(|d| {
                if expects.contains(&d) {
                    vec![0; words]
                } else {
                    Vec::new()
                }
            })
            .collect();
        Tally {
            seen,
            count,
            unique: 0,
            duplicates: 0,
            unexpected: 0,
            unique_bytes: 0,
            first_recv_ns: 0,
            last_recv_ns: 0,
            latency: new_histogram(),
            error: None,
        }
    }

    pub fn record(&mut self, device: Option<usize>, payload: &[u8], now_ns: u64) -> Arrival {
        let (Some(device), Some(header)) = (device, Header::decode(payload)) else {
            self.unexpected += 1;
            return Arrival::Unexpected;
        };
        if header.is_probe() {
            return Arrival::Probe(device);
        }
        let Some(bits) = self.seen.get_mut(device).filter(|b| !b.is_empty()) else {
            self.unexpected += 1;
            return Arrival::Unexpected;
        };
        if header.seq >= self.count {
            self.unexpected += 1;
            return Arrival::Unexpected;
        }
        if self.unique == 0 && self.duplicates == 0 {
            self.first_recv_ns = now_ns;
        }
        self.last_recv_ns = now_ns;
        let (word, bit) = ((header.seq / 64) as usize, 1u64 << (header.seq % 64));
        if bits[word] & bit != 0 {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        bits[word] |= bit;
        self.unique += 1;
        self.unique_bytes += payload.len() as u64;
        // Clock skew is impossible (one clock), but a message stamped after `now_ns` was
        // read could only come from a bug; saturate rather than wrap.
        let _ = self
            .latency
            .record(now_ns.saturating_sub(header.sent_ns).max(1));
        Arrival::Unique
    }
}

pub struct SubscriberConfig {
    pub addr: String,
    pub client_id: String,
    pub qos: u8,
    pub scheme: TopicScheme,
    pub devices: usize,
    pub expects: Vec<usize>,
    pub count: u64,
    pub connect_timeout: Duration,
}

const KEEP_ALIVE_SECS: u16 = 60;

/// Connects and subscribes (so the caller knows the SUBACK is in), then spawns the read
/// loop, which runs until `stop` flips or the connection fails.
pub async fn spawn(
    cfg: SubscriberConfig,
    base: Instant,
    shared: Arc<SinkShared>,
    mut stop: watch::Receiver<bool>,
) -> Result<JoinHandle<Tally>, wire::WireError> {
    let (mut stream, mut buf) = wire::connect(
        &cfg.addr,
        &cfg.client_id,
        KEEP_ALIVE_SECS,
        cfg.connect_timeout,
    )
    .await?;
    wire::subscribe(
        &mut stream,
        &mut buf,
        &cfg.scheme.filter(),
        cfg.qos,
        cfg.connect_timeout,
    )
    .await?;

    Ok(tokio::spawn(async move {
        let mut tally = Tally::new(cfg.devices, &cfg.expects, cfg.count);
        let mut out = BytesMut::with_capacity(64 * 1024);
        let mut ping = tokio::time::interval(Duration::from_secs(u64::from(KEEP_ALIVE_SECS) / 3));
        ping.tick().await;
        let result: Result<(), wire::WireError> = async {
            loop {
                // Frames already buffered (e.g. read along with the SUBACK) come first.
                let now_ns = base.elapsed().as_nanos() as u64;
                let before = (tally.unique, tally.duplicates);
                while let Some((frame, len)) = wire::parse_frame(&buf)? {
                    handle(&cfg, &mut tally, &shared, &mut out, frame, now_ns)?;
                    buf.advance(len);
                }
                let got = (tally.unique - before.0) + (tally.duplicates - before.1);
                if got > 0 {
                    shared.received.fetch_add(got, Ordering::Relaxed);
                    shared.unique.store(tally.unique, Ordering::Relaxed);
                    shared.last_recv_ns.store(now_ns, Ordering::Relaxed);
                }
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                    out.clear();
                }
                buf.reserve(64 * 1024);
                tokio::select! {
                    _ = stop.changed() => return Ok(()),
                    n = stream.read_buf(&mut buf) => {
                        if n? == 0 {
                            return Err(wire::WireError::Closed);
                        }
                    }
                    _ = ping.tick() => wire::encode(&mut out, Packet::PingReq)?,
                }
            }
        }
        .await;
        if let Err(e) = result {
            tally.error = Some(format!("subscriber {}: {e}", cfg.addr));
        } else {
            let mut bye = BytesMut::new();
            if wire::encode(&mut bye, Packet::Disconnect).is_ok() {
                let _ = stream.write_all(&bye).await;
            }
        }
        tally
    }))
}

fn handle(
    cfg: &SubscriberConfig,
    tally: &mut Tally,
    shared: &SinkShared,
    out: &mut BytesMut,
    frame: Frame<'_>,
    now_ns: u64,
) -> Result<(), wire::WireError> {
    match frame {
        Frame::Publish {
            qos,
            pkid,
            topic,
            payload,
        } => {
            if let Arrival::Probe(d) = tally.record(cfg.scheme.device_of(topic), payload, now_ns) {
                if let Some(flag) = shared.probes.get(d) {
                    flag.store(true, Ordering::Relaxed);
                }
            }
            match qos {
                1 => wire::encode(out, Packet::PubAck(PubAck::new(pkid)))?,
                2 => wire::encode(out, Packet::PubRec(PubRec::new(pkid)))?,
                _ => {}
            }
        }
        Frame::PubRel(pkid) => wire::encode(out, Packet::PubComp(PubComp::new(pkid)))?,
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::PROBE_SEQ;

    fn payload(seq: u64, sent_ns: u64) -> Vec<u8> {
        let mut b = BytesMut::new();
        Header { seq, sent_ns }.write_payload(32, &mut b);
        b.to_vec()
    }

    #[test]
    fn tally_counts_unique_duplicates_and_strays() {
        // Devices 0 and 1 exist; this sink expects only device 1, 100 messages each.
        let mut t = Tally::new(2, &[1], 100);
        assert_eq!(
            t.record(Some(1), &payload(5, 1_000), 2_000),
            Arrival::Unique
        );
        assert_eq!(
            t.record(Some(1), &payload(5, 1_000), 3_000),
            Arrival::Duplicate
        );
        assert_eq!(
            t.record(Some(1), &payload(99, 1_000), 4_000),
            Arrival::Unique
        );
        assert_eq!(
            t.record(Some(1), &payload(100, 0), 5_000),
            Arrival::Unexpected
        );
        assert_eq!(
            t.record(Some(0), &payload(1, 0), 5_000),
            Arrival::Unexpected
        );
        assert_eq!(
            t.record(Some(7), &payload(1, 0), 5_000),
            Arrival::Unexpected
        );
        assert_eq!(t.record(None, &payload(1, 0), 5_000), Arrival::Unexpected);
        assert_eq!(t.record(Some(1), &[0; 8], 5_000), Arrival::Unexpected);
        assert_eq!(
            t.record(Some(0), &payload(PROBE_SEQ, 0), 5_000),
            Arrival::Probe(0)
        );
        assert_eq!((t.unique, t.duplicates, t.unexpected), (2, 1, 5));
        assert_eq!(t.unique_bytes, 64);
        assert_eq!((t.first_recv_ns, t.last_recv_ns), (2_000, 4_000));
        assert_eq!(t.latency.len(), 2);
        assert_eq!(t.latency.min(), 1_000);
    }
}
