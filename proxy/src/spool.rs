//! Optional disk spool (`spool: true` on a broker): QoS>=1 messages queued for a broker are
//! also appended to `<data-dir>/spool/<broker-id>/<hex(client id)>.log`, and an ack record is
//! appended when the broker acknowledged them (or they were dropped by policy). After a
//! restart, what is still unacknowledged is queued again, in order, before new traffic.
//!
//! Records are `[len u32][check u32][body]`, `check` = low 32 bits of xxh3(body); body is
//! `3 seq qos retain topic_len topic props_len props spooled_ms payload` (a message, since
//! format 2: `props` are the MQTT 5 PUBLISH properties as on the wire, `spooled_ms` the
//! Unix time it was spooled, so a Message Expiry Interval keeps counting across restarts),
//! `1 seq qos retain topic_len topic payload` (a message written by format 1, still read)
//! or `2 seq` (an ack). A record whose
//! checksum fails is reported and skipped (its length is known); a truncated tail (a crash
//! mid-write) ends the replay. Writes go to the page cache without fsync: the spool survives
//! a proxy crash or restart, not a power loss, and costs no disk flush per message.
//! When every spooled message is acknowledged the file is truncated to zero.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use prometheus::IntCounter;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use tracing::warn;
use xxhash_rust::xxh3::xxh3_64;

use crate::codec::Message;
use crate::metrics::RateLimit;

/// A message record of format 1 (no properties); still read, no longer written.
const KIND_MSG_V1: u8 = 1;
const KIND_ACK: u8 = 2;
/// A message record with MQTT 5 properties and the time it was spooled.
const KIND_MSG: u8 = 3;

/// Where a spool reports appends it could not make (the message then stays queued in
/// memory only): `mqtt_proxy_spool_append_failures_total{reason="full"|"write_error"}`.
pub struct SpoolFailures {
    pub broker: String,
    pub full: IntCounter,
    pub write_error: IntCounter,
}

/// The spool file of one (broker, client id).
pub struct Spool {
    path: PathBuf,
    inner: Mutex<Inner>,
    max_bytes: u64,
    /// Records skipped as corrupt while opening.
    pub corrupt: AtomicU64,
    failures: Option<SpoolFailures>,
    log_limit: RateLimit,
}

struct Inner {
    file: File,
    len: u64,
    next_seq: u64,
    live: u64,
}

/// A spooled message's handle; acknowledging it appends the ack record.
#[derive(Clone)]
pub struct SpoolRef {
    pub spool: Arc<Spool>,
    pub seq: u64,
}

impl SpoolRef {
    pub fn ack(&self) {
        self.spool.ack(self.seq);
    }
}

/// Spool files with unacknowledged content for `broker_id`: (client id, path).
pub fn pending_files(data_dir: &Path, broker_id: &str) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("spool").join(broker_id)) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .filter_map(|p| client_id_of(&p).map(|c| (c, p)))
        .collect()
}

/// Unacknowledged messages found when a spool is opened, oldest first.
pub type Recovered = Vec<(SpoolRef, Message)>;

/// `<dir>/spool/<broker>/<hex(client id)>.log`
pub fn path_for(data_dir: &Path, broker_id: &str, client_id: &str) -> PathBuf {
    let hex: String = client_id.bytes().map(|b| format!("{b:02x}")).collect();
    data_dir
        .join("spool")
        .join(broker_id)
        .join(format!("{hex}.log"))
}

/// The client id encoded in a spool file name; `None` for names we did not write. Works
/// on bytes: a stray non-ASCII file name must not be sliced inside a character (a panic).
pub fn client_id_of(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?.as_bytes();
    if stem.len() % 2 != 0 {
        return None;
    }
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes: Option<Vec<u8>> = stem
        .chunks_exact(2)
        .map(|pair| Some((hex(pair[0])? * 16 + hex(pair[1])?) as u8))
        .collect();
    String::from_utf8(bytes?).ok()
}

impl Spool {
    /// Opens (creating) the spool and returns the unacknowledged messages in order.
    /// Appends that fail later are counted in `failures` and logged (rate-limited).
    pub fn open(
        path: &Path,
        max_bytes: u64,
        failures: Option<SpoolFailures>,
    ) -> std::io::Result<(Arc<Spool>, Recovered)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let (pending, next_seq, corrupt, valid_len) = replay(&data, crate::brokerset::now_ms());
        if corrupt > 0 || valid_len < data.len() {
            warn!(file = %path.display(), corrupt_records = corrupt, truncated_bytes = data.len() - valid_len,
                  "spool file damaged: skipped what could not be read");
        }
        let spool = Arc::new(Spool {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner {
                file,
                len: data.len() as u64,
                next_seq,
                live: pending.len() as u64,
            }),
            max_bytes,
            corrupt: AtomicU64::new(corrupt),
            failures,
            log_limit: RateLimit::new(),
        });
        if pending.is_empty() {
            spool.truncate();
        }
        let pending = pending
            .into_iter()
            .map(|(seq, m)| {
                (
                    SpoolRef {
                        spool: spool.clone(),
                        seq,
                    },
                    m,
                )
            })
            .collect();
        Ok((spool, pending))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a message; `None` when the spool is full or the write failed (the message
    /// stays queued in memory only; counted and logged).
    pub fn append(self: &Arc<Self>, msg: &Message) -> Option<SpoolRef> {
        let mut props = BytesMut::new();
        if let Some(p) = &msg.props {
            // Only values that cannot be encoded fail, and none come out of the reader.
            if p.write(&mut props).is_err() {
                props.clear();
            }
        }
        let body_len = 25 + msg.topic.len() + props.len() + msg.payload.len();
        let mut g = self.inner.lock().ok()?;
        if g.len + (8 + body_len) as u64 > self.max_bytes {
            drop(g);
            self.failed("full", None);
            return None;
        }
        let seq = g.next_seq;
        let mut body = Vec::with_capacity(body_len);
        body.push(KIND_MSG);
        body.extend_from_slice(&seq.to_le_bytes());
        body.push(msg.qos);
        body.push(u8::from(msg.retain));
        body.extend_from_slice(&(msg.topic.len() as u16).to_le_bytes());
        body.extend_from_slice(&msg.topic);
        body.extend_from_slice(&(props.len() as u32).to_le_bytes());
        body.extend_from_slice(&props);
        body.extend_from_slice(&crate::brokerset::now_ms().to_le_bytes());
        body.extend_from_slice(&msg.payload);
        if let Err(e) = write_record(&mut g, &body) {
            drop(g);
            self.failed("write_error", Some(e));
            return None;
        }
        g.next_seq += 1;
        g.live += 1;
        Some(SpoolRef {
            spool: self.clone(),
            seq,
        })
    }

    fn failed(&self, reason: &'static str, error: Option<std::io::Error>) {
        if let Some(f) = &self.failures {
            match reason {
                "full" => f.full.inc(),
                _ => f.write_error.inc(),
            }
        }
        if let Some(held) = self.log_limit.allow(10) {
            let broker = self.failures.as_ref().map_or("", |f| f.broker.as_str());
            warn!(broker, file = %self.path.display(), reason, error = ?error, max_bytes = self.max_bytes,
                  suppressed = held, "spool append failed: message kept in memory only (mqtt_proxy_spool_append_failures_total)");
        }
    }

    fn ack(&self, seq: u64) {
        let Ok(mut g) = self.inner.lock() else { return };
        let mut body = [0u8; 9];
        body[0] = KIND_ACK;
        body[1..].copy_from_slice(&seq.to_le_bytes());
        let _ = write_record(&mut g, &body);
        g.live = g.live.saturating_sub(1);
        if g.live == 0 && g.file.set_len(0).is_ok() {
            g.len = 0;
        }
    }

    fn truncate(&self) {
        if let Ok(mut g) = self.inner.lock() {
            if g.file.set_len(0).is_ok() {
                g.len = 0;
            }
        }
    }

    /// Messages spooled and not yet acknowledged.
    pub fn live(&self) -> u64 {
        self.inner.lock().map(|g| g.live).unwrap_or(0)
    }
}

fn write_record(g: &mut Inner, body: &[u8]) -> std::io::Result<()> {
    let mut rec = Vec::with_capacity(8 + body.len());
    rec.extend_from_slice(&(body.len() as u32).to_le_bytes());
    rec.extend_from_slice(&(xxh3_64(body) as u32).to_le_bytes());
    rec.extend_from_slice(body);
    g.file.write_all(&rec)?;
    g.len += rec.len() as u64;
    Ok(())
}

/// Replays records: (pending messages in order, next seq, corrupt count, bytes understood).
/// `now_ms` ages each message's Message Expiry Interval by the time since it was spooled.
fn replay(data: &[u8], now_ms: u64) -> (Vec<(u64, Message)>, u64, u64, usize) {
    let mut msgs: BTreeMap<u64, Message> = BTreeMap::new();
    let mut next_seq = 0;
    let mut corrupt = 0;
    let mut at = 0;
    while data.len() - at >= 8 {
        let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        let check = u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]);
        if len > 256 << 20 || data.len() - at - 8 < len {
            break; // truncated tail or nonsense length: nothing after it can be trusted
        }
        let body = &data[at + 8..at + 8 + len];
        at += 8 + len;
        if xxh3_64(body) as u32 != check {
            corrupt += 1;
            continue;
        }
        match parse(body, now_ms) {
            Some((seq, Some(m))) => {
                next_seq = next_seq.max(seq + 1);
                msgs.insert(seq, m);
            }
            Some((seq, None)) => {
                msgs.remove(&seq);
            }
            None => corrupt += 1,
        }
    }
    (msgs.into_iter().collect(), next_seq, corrupt, at)
}

fn parse(body: &[u8], now_ms: u64) -> Option<(u64, Option<Message>)> {
    let kind = *body.first()?;
    let seq = u64::from_le_bytes(body.get(1..9)?.try_into().ok()?);
    if kind == KIND_ACK {
        return Some((seq, None));
    }
    if kind != KIND_MSG && kind != KIND_MSG_V1 {
        return None;
    }
    let qos = *body.get(9)?;
    let retain = *body.get(10)? != 0;
    let tlen = u16::from_le_bytes(body.get(11..13)?.try_into().ok()?) as usize;
    let topic = body.get(13..13 + tlen)?;
    std::str::from_utf8(topic).ok()?;
    if qos > 2 {
        return None;
    }
    let mut rest = body.get(13 + tlen..)?;
    let mut props = None;
    if kind == KIND_MSG {
        let plen = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let raw = rest.get(4..4 + plen)?;
        let spooled_ms = u64::from_le_bytes(rest.get(4 + plen..12 + plen)?.try_into().ok()?);
        if plen > 0 {
            let mut p = PublishProperties::read(&mut Bytes::copy_from_slice(raw)).ok()??;
            if let Some(secs) = p.message_expiry_interval {
                // What is left of it; 0 makes the upstream drop it as expired.
                let waited = now_ms.saturating_sub(spooled_ms) / 1000;
                p.message_expiry_interval = Some(secs.saturating_sub(waited as u32));
            }
            props = Some(Arc::new(p));
        }
        rest = rest.get(12 + plen..)?;
    }
    Some((
        seq,
        Some(Message {
            topic: Bytes::copy_from_slice(topic),
            payload: Bytes::copy_from_slice(rest),
            qos,
            retain,
            props,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn m(i: u8) -> Message {
        Message::new("t/x", vec![i; 10], 1, i % 2 == 0)
    }

    #[test]
    fn unacked_messages_survive_reopen_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path_for(dir.path(), "b1", "dev/1");
        assert_eq!(client_id_of(&p).as_deref(), Some("dev/1"));
        {
            let (s, pending) = Spool::open(&p, 1 << 20, None).expect("open");
            assert!(pending.is_empty());
            let refs: Vec<_> = (0..5).map(|i| s.append(&m(i)).expect("append")).collect();
            refs[1].ack();
            refs[3].ack();
        }
        let (s, pending) = Spool::open(&p, 1 << 20, None).expect("reopen");
        let got: Vec<u8> = pending.iter().map(|(_, m)| m.payload[0]).collect();
        assert_eq!(got, vec![0, 2, 4]);
        assert_eq!(pending[0].1, m(0));
        assert_eq!(s.live(), 3);
        for (r, _) in &pending {
            r.ack();
        }
        assert_eq!(
            std::fs::metadata(&p).expect("meta").len(),
            0,
            "fully acked spool is truncated"
        );
        // New appends after a reopen continue the sequence.
        let r = s.append(&m(9)).expect("append");
        assert!(r.seq >= 5);
    }

    #[test]
    fn corrupt_and_truncated_records_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path_for(dir.path(), "b1", "d");
        {
            let (s, _) = Spool::open(&p, 1 << 20, None).expect("open");
            for i in 0..3 {
                s.append(&m(i));
            }
        }
        let mut data = std::fs::read(&p).expect("read");
        let rec = data.len() / 3;
        data[rec + 10] ^= 0xff; // flip a byte inside the second record's body
        data.extend_from_slice(&[7, 0, 0]); // and a torn tail
        std::fs::write(&p, &data).expect("write");
        let (s, pending) = Spool::open(&p, 1 << 20, None).expect("open damaged");
        let got: Vec<u8> = pending.iter().map(|(_, m)| m.payload[0]).collect();
        assert_eq!(got, vec![0, 2]);
        assert_eq!(s.corrupt.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn full_spool_refuses_more() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (s, _) = Spool::open(&path_for(dir.path(), "b", "d"), 64, None).expect("open");
        assert!(s.append(&m(1)).is_some());
        assert!(s.append(&m(2)).is_none());
    }

    #[test]
    fn properties_survive_and_expiry_keeps_counting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path_for(dir.path(), "b1", "d");
        let mut msg = m(1);
        msg.props = Some(Arc::new(PublishProperties {
            message_expiry_interval: Some(100),
            user_properties: vec![("k".into(), "v".into())],
            content_type: Some("text/plain".into()),
            ..Default::default()
        }));
        {
            let (s, _) = Spool::open(&p, 1 << 20, None).expect("open");
            s.append(&msg).expect("append");
        }
        let data = std::fs::read(&p).expect("read");
        // As if reopened 30 s later: 70 s of the 100 s interval are left.
        let (pending, ..) = replay(&data, crate::brokerset::now_ms() + 30_000);
        let got = &pending[0].1;
        let props = got.props.as_deref().expect("properties spooled");
        assert_eq!(props.user_properties, vec![("k".into(), "v".into())]);
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));
        assert!(matches!(props.message_expiry_interval, Some(69..=70)));
        assert_eq!(
            (got.topic.clone(), got.payload.clone()),
            (msg.topic, msg.payload)
        );
    }

    #[test]
    fn format_1_records_are_still_read() {
        // `1 seq qos retain topic_len topic payload`, as the previous version wrote it.
        let mut body = vec![KIND_MSG_V1];
        body.extend_from_slice(&7u64.to_le_bytes());
        body.extend_from_slice(&[1, 1]);
        body.extend_from_slice(&3u16.to_le_bytes());
        body.extend_from_slice(b"a/b");
        body.extend_from_slice(b"old");
        let mut data = (body.len() as u32).to_le_bytes().to_vec();
        data.extend_from_slice(&(xxh3_64(&body) as u32).to_le_bytes());
        data.extend_from_slice(&body);
        let (pending, next_seq, corrupt, _) = replay(&data, 0);
        assert_eq!(corrupt, 0);
        assert_eq!(next_seq, 8);
        assert_eq!(pending[0].1, Message::new("a/b", &b"old"[..], 1, true));
    }

    #[test]
    fn file_names_are_parsed_as_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path_for(dir.path(), "b", "gerät/ü-1");
        assert_eq!(client_id_of(&p).as_deref(), Some("gerät/ü-1"));
        // Names we never wrote: no panic on a multi-byte character at an odd offset.
        for stray in ["aéb.log", "é1.log", "zz.log", "abc.log"] {
            assert_eq!(client_id_of(Path::new(stray)), None, "{stray}");
        }
    }

    #[test]
    fn a_full_spool_counts_and_refuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let failures = SpoolFailures {
            broker: "b".into(),
            full: IntCounter::new("full", "f").expect("counter"),
            write_error: IntCounter::new("we", "w").expect("counter"),
        };
        let full = failures.full.clone();
        let (s, _) =
            Spool::open(&path_for(dir.path(), "b", "d"), 80, Some(failures)).expect("open");
        assert!(s.append(&m(1)).is_some());
        assert!(s.append(&m(2)).is_none());
        assert_eq!(full.get(), 1);
    }
}
