//! One task per device connection: the MQTT server side. It reads CONNECT (3.1.1 or 5),
//! resumes a persistent session the registry kept, enforces keepalive (1.5×), answers the
//! QoS handshakes, fans each PUBLISH out to the upstream queues chosen by the router,
//! forwards subscriptions to bidirectional brokers and delivers their messages back, and
//! follows broker-set reloads without touching upstreams whose broker did not change.
//!
//! The session never awaits an upstream task (control requests are handed over with
//! `try_send`, the rest held in a small bounded list), and every write to the device is
//! bounded in time, so a device that stops reading cannot hold keepalive, takeover or
//! shutdown hostage.
//!
//! - `connect.rs`: CONNECT, refusals, client id, the CONNACK
//! - `publish.rs`: device PUBLISH (topic aliases, fan-out, acks)
//! - `subscribe.rs`: SUBSCRIBE / UNSUBSCRIBE / SUBACK, reloads
//! - `persist.rs`: waiting for the upstreams, closing them, the kept session record

mod connect;
mod persist;
mod publish;
mod subscribe;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use tokio::io::WriteHalf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tracing::{info, warn};

use crate::brokerset::BrokerSet;
use crate::codec::{self, CodecError, Connect, Packet, Protocol};
use crate::config::SessionOptions;
use crate::delivery::{Limits, ToDevice};
use crate::metrics::METRICS;
use crate::qos::Inbound;
use crate::queue::AckSink;
use crate::registry::{Registry, SessionRecord};
use crate::subtable::SubTable;
use crate::transport::{clear_written, Conn, Io, ReadSizer};
use crate::upstream::{FromBroker, Held, UpstreamHandle, UpstreamParams};

use subscribe::SubDone;

/// What every session shares.
pub struct Shared {
    pub brokers: watch::Receiver<Arc<BrokerSet>>,
    pub registry: Arc<Registry>,
    pub opts: SessionOptions,
    pub shutdown: watch::Receiver<bool>,
    /// Who may connect and what each device may publish and subscribe to.
    pub auth: Arc<crate::auth::Authorizer>,
}

/// Messages drained from brokers per loop turn before the write buffer is flushed: keeps
/// the bytes buffered for one device small whatever the brokers send.
const WBUF_FLUSH: usize = 256 * 1024;
/// Control requests held for upstreams whose channel was full, per session.
const HELD_MAX: usize = 64;
/// How often held control requests are retried.
const HELD_RETRY: Duration = Duration::from_millis(20);

enum Event {
    Read(std::io::Result<usize>),
    /// The coalescing window after the last batch of device packets is over.
    WindowOver,
    SubAck(Box<SubDone>),
    Acks,
    FromBroker(Box<FromBroker>),
    Reload(bool),
    Kicked,
    Shutdown,
    KeepAlive,
    RetryHeld,
}

/// Writes and flushes: TLS and WebSocket streams buffer until flushed (TCP does not care).
async fn write_flush(
    wr: &mut (impl tokio::io::AsyncWrite + Unpin),
    buf: &[u8],
) -> std::io::Result<()> {
    wr.write_all(buf).await?;
    wr.flush().await
}

/// Resolves when the coalescing window set up in `timer` ends (never without one).
async fn window_over(timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Resolves once the flag is `true` (or its sender is gone, which means the same).
pub async fn wait_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Why the session ended, which decides whether brokers publish the device's will.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// DISCONNECT from the device: no will.
    Clean,
    /// MQTT 5 DISCONNECT 0x04, socket loss, keepalive timeout, protocol error: will.
    Lost(String),
    /// Another connection took the client id over.
    TakenOver,
    /// The proxy is shutting down: flush, no will.
    Shutdown,
}

/// Serves one device connection to the end.
pub async fn run(conn: Conn, shared: Arc<Shared>) {
    let Conn {
        io: mut stream,
        peer,
        cert_identity,
        ..
    } = conn;
    let mut rbuf = BytesMut::with_capacity(ReadSizer::MIN);
    let Some((connect, assigned)) = connect::accept(&mut stream, &mut rbuf, peer, &shared).await
    else {
        return;
    };
    let Some(grant) = connect::authorize(
        &mut stream,
        &connect,
        peer,
        cert_identity.as_deref(),
        &shared,
    )
    .await
    else {
        return;
    };
    let mut claim = shared.registry.claim(&connect.client_id);
    // A previous connection with this id may still be closing: its session is saved once
    // its upstreams are done (bounded by the drain timeout).
    let resume_wait = shared.opts.drain_timeout + Duration::from_secs(2);
    let record = claim.resume(connect.clean_session, resume_wait).await;
    let version = if connect.protocol == Protocol::V5 {
        "5"
    } else {
        "3.1.1"
    };
    let device = shared
        .registry
        .devices
        .add(&connect.client_id, peer, version);
    METRICS.device_connections.inc();
    METRICS.devices_connected.inc();
    info!(%peer, client_id = %connect.client_id, proto = ?connect.protocol, keep_alive = connect.keep_alive,
          clean = connect.clean_session, resumed = record.is_some(), "device connected");
    let mut s = Session::new(
        connect,
        grant,
        shared.clone(),
        claim.kicked.clone(),
        claim.previous.clone(),
        record,
        device.info.clone(),
    );
    s.wait_upstreams().await;
    let end = s.serve(stream, rbuf, assigned).await;
    let with_will = matches!(end, End::Lost(_));
    info!(client_id = %s.connect.client_id, ?end, "device disconnected");
    s.close_upstreams(with_will).await;
    claim.save(s.into_record(), shared.opts.keep_limits());
    METRICS.devices_connected.dec();
    drop(claim);
}

struct Session {
    connect: Connect,
    /// What this device may publish and subscribe to.
    grant: crate::auth::Grant,
    /// The device's publish rate limit.
    bucket: crate::limits::TokenBucket,
    proto: Protocol,
    shared: Arc<Shared>,
    brokers: watch::Receiver<Arc<BrokerSet>>,
    kicked: watch::Receiver<bool>,
    /// The previous session with this client id, still draining: upstreams start after it.
    previous: Option<watch::Receiver<bool>>,
    upstreams: Vec<UpstreamHandle>,
    /// Control requests for upstreams whose channel was full, by broker id, in order.
    held: HashMap<String, VecDeque<Held>>,
    from_brokers_tx: mpsc::Sender<Box<FromBroker>>,
    from_brokers: mpsc::Receiver<Box<FromBroker>>,
    acks: Arc<AckSink>,
    /// Boxed: a tokio channel allocates 32 slots up front, paid by every session although
    /// SUBACKs are rare.
    subacks_tx: mpsc::Sender<Box<SubDone>>,
    subacks: mpsc::Receiver<Box<SubDone>>,
    /// Device packet ids whose PUBACK (QoS 1) or PUBREC (QoS 2) waits for brokers.
    deferred: crate::qos::PkidMap<u8>,
    inbound: Inbound,
    /// Device subscriptions, for brokers added by a reload and for delivery checks.
    subs: SubTable,
    to_device: ToDevice,
    /// Topic aliases the device set up (MQTT 5, client → proxy).
    aliases: HashMap<u16, Bytes>,
    /// Session Expiry Interval in force (MQTT 5; may change at DISCONNECT).
    expiry: u32,
    /// Kept deliveries to resend once CONNACK is out.
    resume: Option<crate::delivery::Pending>,
    /// A bidirectional broker still had a session for this (persistent) device.
    upstream_present: bool,
    /// Counters and subscriptions shown in the dashboard's device list.
    info: Arc<crate::devices::DeviceInfo>,
}

impl Session {
    fn new(
        connect: Connect,
        grant: crate::auth::Grant,
        shared: Arc<Shared>,
        kicked: watch::Receiver<bool>,
        previous: Option<watch::Receiver<bool>>,
        record: Option<SessionRecord>,
        info: Arc<crate::devices::DeviceInfo>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(256);
        let (subacks_tx, subacks) = mpsc::channel(16);
        let mut brokers = shared.brokers.clone();
        brokers.mark_unchanged();
        let proto = connect.protocol;
        let limits = Limits {
            window: connect.receive_maximum.unwrap_or(u16::MAX).min(1024),
            backlog: shared.opts.to_device_buffer,
            bytes: shared.opts.to_device_max_bytes,
            max_packet: connect.max_packet_size.map_or(usize::MAX, |m| m as usize),
        };
        let to_device = ToDevice::new(proto, limits, !connect.clean_session);
        let expiry = match proto {
            Protocol::V4 if connect.clean_session => 0,
            Protocol::V4 => u32::MAX,
            Protocol::V5 => connect.session_expiry.unwrap_or(0),
        };
        let (subs, inbound, resume) = match record {
            Some(r) => (r.subs, r.inbound, Some(r.pending)),
            None => Default::default(),
        };
        let bucket = shared.opts.limits.bucket(std::time::Instant::now());
        let mut s = Self {
            connect,
            grant,
            bucket,
            proto,
            shared,
            brokers,
            kicked,
            previous,
            upstreams: Vec::new(),
            held: HashMap::new(),
            from_brokers_tx: tx,
            from_brokers: rx,
            acks: Arc::new(AckSink::default()),
            subacks_tx,
            subacks,
            deferred: Default::default(),
            inbound,
            subs,
            to_device,
            aliases: HashMap::new(),
            expiry,
            resume,
            upstream_present: false,
            info,
        };
        let set = s.brokers.borrow().clone();
        for b in &set.brokers {
            let h = s.spawn_upstream(b.clone());
            s.upstreams.push(h);
        }
        if s.resume.is_some() {
            // The brokers may have lost the session the proxy kept (restart, expiry):
            // subscribe again, which is harmless where they kept it.
            for at in 0..s.upstreams.len() {
                s.subscribe_all(at, true);
            }
        }
        s
    }

    fn spawn_upstream(&self, broker: Arc<crate::brokerset::Broker>) -> UpstreamHandle {
        // A 3.1.1 device's persistent session is kept by MQTT 5 brokers only with a
        // session expiry: "never" is what clean session off means.
        let session_expiry = match self.proto {
            Protocol::V4 if !self.connect.clean_session => Some(u32::MAX),
            Protocol::V4 => None,
            Protocol::V5 => self.connect.session_expiry,
        };
        UpstreamHandle::spawn(UpstreamParams {
            broker,
            device_id: self.connect.client_id.clone(),
            client_id_suffix: self.shared.opts.client_id_suffix.clone(),
            clean_session: self.connect.clean_session,
            keep_alive: self.connect.keep_alive,
            will: self.connect.will.clone(),
            session_expiry,
            max_packet_size: self.shared.opts.max_packet_size,
            to_session: self.from_brokers_tx.clone(),
            spool_dir: self.shared.opts.spool_dir.clone(),
            start_after: self
                .previous
                .clone()
                .map(|p| (p, self.shared.opts.drain_timeout + Duration::from_secs(1))),
        })
    }

    /// Writes `wbuf` to the device within the write timeout, giving up early on takeover
    /// and shutdown: a device that does not read is disconnected, not waited for.
    async fn flush(
        &mut self,
        wr: &mut WriteHalf<Box<dyn Io>>,
        wbuf: &mut BytesMut,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), End> {
        if wbuf.is_empty() {
            return Ok(());
        }
        let limit = self.shared.opts.device_write_timeout;
        let r = {
            let mut write = std::pin::pin!(write_flush(wr, wbuf));
            // Almost every write completes at once (the socket buffer has room): only one
            // that does not pays for a timeout timer and the takeover/shutdown waiters.
            match write.as_mut().now_or_never() {
                Some(r) => Ok(r),
                None => tokio::select! {
                    r = timeout(limit, write) => r,
                    _ = wait_true(&mut self.kicked) => return Err(End::TakenOver),
                    _ = wait_true(shutdown) => return Err(End::Shutdown),
                },
            }
        };
        clear_written(wbuf);
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::Lost(format!("write: {e}"))),
            Err(_) => {
                METRICS
                    .device_disconnects
                    .with_label_values(&["write_timeout"])
                    .inc();
                warn!(client_id = %self.connect.client_id, timeout = ?limit,
                      "device does not read: disconnecting (mqtt_proxy_device_disconnects_total)");
                Err(End::Lost("write timeout: the device does not read".into()))
            }
        }
    }

    async fn serve(
        &mut self,
        stream: Box<dyn Io>,
        mut rbuf: BytesMut,
        assigned: Option<String>,
    ) -> End {
        let (mut rd, mut wr) = tokio::io::split(stream);
        // Grows with what is written (CONNACK first) and is let go after bursts.
        let mut wbuf = BytesMut::new();
        let mut sizer = ReadSizer::default();
        let mut shutdown = self.shared.shutdown.clone();
        let ack = self.connack(assigned);
        if codec::write(self.proto, &ack, &mut wbuf).is_err() {
            return End::Lost("could not encode CONNACK".into());
        }
        if let Some(p) = self.resume.take() {
            self.to_device.resume(p, &mut wbuf);
        }
        let ka = self
            .shared
            .opts
            .limits
            .silence_allowed(self.connect.keep_alive);
        // The keepalive timer is moved only when it fires, not on every read (which would
        // re-insert it into the timer wheel once per packet): firing before `last_read + ka`
        // just re-arms it.
        let mut last_read = Instant::now();
        let keepalive = sleep_until(last_read + ka);
        tokio::pin!(keepalive);
        let mut ready = Vec::new();
        // `--coalesce-ms`: device bytes that arrive within the window after the last batch
        // was handled wait for the window's end and are handled together, so their acks go
        // out in one write and their PUBLISHes reach each broker in one write. A packet
        // after a quiet window is handled at once; off (zero) by default.
        let window = self.shared.opts.coalesce;
        let mut last_batch: Option<Instant> = None;
        let mut window_timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        let mut in_window = false;
        // Packets already read behind the CONNECT.
        let mut end = self.drain_packets(&mut rbuf, &mut wbuf).err();
        loop {
            if let Err(e) = self.flush(&mut wr, &mut wbuf, &mut shutdown).await {
                return e;
            }
            if let Some(e) = end.take().or_else(|| self.stalled()) {
                return e;
            }
            let acks = self.acks.clone();
            let holding = !self.held.is_empty();
            sizer.prepare(&mut rbuf);
            let event = tokio::select! {
                r = rd.read_buf(&mut rbuf), if !in_window => Event::Read(r),
                _ = window_over(&mut window_timer), if in_window => Event::WindowOver,
                _ = acks.notify.notified() => Event::Acks,
                Some(m) = self.from_brokers.recv() => Event::FromBroker(m),
                Some(d) = self.subacks.recv() => Event::SubAck(d),
                r = self.brokers.changed() => Event::Reload(r.is_ok()),
                _ = wait_true(&mut self.kicked) => Event::Kicked,
                _ = wait_true(&mut shutdown) => Event::Shutdown,
                _ = &mut keepalive, if !ka.is_zero() => Event::KeepAlive,
                // In a block, so no timer is made while nothing is held (a disabled branch's
                // expression is still evaluated).
                _ = async { sleep(HELD_RETRY).await }, if holding => Event::RetryHeld,
            };
            match event {
                Event::Read(Ok(0)) => {
                    return End::Lost("connection closed without DISCONNECT".into())
                }
                Event::Read(Ok(n)) => {
                    last_read = Instant::now();
                    sizer.read(n);
                    match last_batch.map(|t| t + window) {
                        Some(over) if over > last_read => {
                            in_window = true;
                            match window_timer.as_mut() {
                                Some(t) => t.as_mut().reset(over),
                                None => window_timer = Some(Box::pin(sleep_until(over))),
                            }
                        }
                        _ => {
                            if !window.is_zero() {
                                last_batch = Some(last_read);
                            }
                            end = self.drain_packets(&mut rbuf, &mut wbuf).err();
                            sizer.shrink(&mut rbuf);
                        }
                    }
                }
                Event::WindowOver => {
                    in_window = false;
                    // What else arrived during the window joins the batch.
                    sizer.prepare(&mut rbuf);
                    let more = rd.read_buf(&mut rbuf).now_or_never();
                    if let Some(Ok(n)) = more {
                        sizer.read(n);
                    }
                    last_batch = Some(Instant::now());
                    end = self.drain_packets(&mut rbuf, &mut wbuf).err();
                    sizer.shrink(&mut rbuf);
                    match more {
                        Some(Ok(0)) if end.is_none() => {
                            end = Some(End::Lost("connection closed without DISCONNECT".into()))
                        }
                        Some(Err(e)) if end.is_none() => {
                            end = Some(End::Lost(format!("read: {e}")))
                        }
                        _ => {}
                    }
                }
                Event::Read(Err(e)) => return End::Lost(format!("read: {e}")),
                Event::Acks => {
                    self.acks.take(&mut ready);
                    // `code` is a broker's (or the proxy's) failure reason, 0 on success.
                    for (pkid, code) in ready.drain(..) {
                        if let Some(qos) = self.deferred.remove(&pkid) {
                            let p = if qos == 1 {
                                Packet::PubAck { pkid, code }
                            } else {
                                Packet::PubRec { pkid, code }
                            };
                            let _ = codec::write(self.proto, &p, &mut wbuf);
                        }
                    }
                }
                Event::FromBroker(m) => {
                    self.observe(&m);
                    self.to_device.offer(*m, &self.subs, &mut wbuf);
                    while wbuf.len() < WBUF_FLUSH {
                        let Ok(m) = self.from_brokers.try_recv() else {
                            break;
                        };
                        self.observe(&m);
                        self.to_device.offer(*m, &self.subs, &mut wbuf);
                    }
                }
                Event::SubAck(d) => self.suback(*d, &mut wbuf),
                Event::Reload(true) => self.reconcile(),
                Event::Reload(false) => return End::Shutdown,
                Event::Kicked => {
                    // A device that reconnects right after its DISCONNECT: the DISCONNECT
                    // (and its session expiry) is already here and decides the end.
                    if let Some(Ok(n)) = rd.read_buf(&mut rbuf).now_or_never() {
                        if n > 0 {
                            if let Err(e @ (End::Clean | End::Lost(_))) =
                                self.drain_packets(&mut rbuf, &mut wbuf)
                            {
                                return e;
                            }
                        }
                    }
                    self.goodbye(0x8E, &mut wr, &mut wbuf).await;
                    return End::TakenOver;
                }
                Event::Shutdown => {
                    self.goodbye(0x8B, &mut wr, &mut wbuf).await;
                    return End::Shutdown;
                }
                Event::KeepAlive if last_read + ka > Instant::now() => {
                    keepalive.as_mut().reset(last_read + ka);
                }
                Event::KeepAlive => {
                    METRICS
                        .device_disconnects
                        .with_label_values(&["keepalive"])
                        .inc();
                    return End::Lost("keepalive timeout".into());
                }
                Event::RetryHeld => self.retry_held(),
            }
        }
    }

    /// A device whose bound has refused messages (from brokers or its own looped back) for
    /// the write timeout without it acknowledging any: it does not read (the kernel took
    /// what was written), so it is disconnected, as one stuck in a write would be. Checked
    /// every loop turn: a refused message is always followed by one.
    fn stalled(&self) -> Option<End> {
        let since = self.to_device.full_since()?;
        let limit = self.shared.opts.device_write_timeout;
        if since.elapsed() < limit {
            return None;
        }
        METRICS
            .device_disconnects
            .with_label_values(&["to_device_bound"])
            .inc();
        warn!(client_id = %self.connect.client_id, timeout = ?limit,
              "device acknowledges nothing and its bound is full: disconnecting (mqtt_proxy_device_disconnects_total)");
        Some(End::Lost(
            "to-device bound full: the device does not read".into(),
        ))
    }

    /// A last MQTT 5 DISCONNECT with `reason` (taken over, shutting down), given a second.
    async fn goodbye(&self, reason: u8, wr: &mut WriteHalf<Box<dyn Io>>, wbuf: &mut BytesMut) {
        if self.proto == Protocol::V5 {
            self.disconnect_with(reason, wbuf);
            let _ = timeout(Duration::from_secs(1), write_flush(wr, wbuf)).await;
        }
    }

    fn disconnect_with(&self, reason: u8, wbuf: &mut BytesMut) {
        let _ = codec::write(
            self.proto,
            &Packet::Disconnect {
                reason,
                session_expiry: None,
            },
            wbuf,
        );
    }

    /// Handles every complete packet in `rbuf`; `Err` ends the session.
    fn drain_packets(&mut self, rbuf: &mut BytesMut, wbuf: &mut BytesMut) -> Result<(), End> {
        loop {
            let p = match codec::read(self.proto, rbuf, self.shared.opts.max_packet_size) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(()),
                Err(e) => {
                    METRICS.malformed_packets.inc();
                    warn!(client_id = %self.connect.client_id, error = %e, "closing session: malformed packet");
                    if self.proto == Protocol::V5 {
                        let reason = if matches!(e, CodecError::TooLarge { .. }) {
                            0x95
                        } else {
                            0x81
                        };
                        self.disconnect_with(reason, wbuf);
                    }
                    return Err(End::Lost(format!("malformed packet: {e}")));
                }
            };
            self.on_packet(p, wbuf)?;
            if wbuf.len() >= WBUF_FLUSH {
                // Flush before reading on: a device that publishes without reading its
                // acks must not grow the write buffer.
                return Ok(());
            }
        }
    }

    fn on_packet(&mut self, p: Packet, wbuf: &mut BytesMut) -> Result<(), End> {
        match p {
            Packet::Publish {
                pkid,
                msg,
                topic_alias,
                ..
            } => self.publish(pkid, msg, topic_alias, wbuf)?,
            Packet::PubRel { pkid } => {
                self.inbound.on_pubrel(pkid);
                let _ = codec::write(self.proto, &Packet::PubComp { pkid }, wbuf);
            }
            Packet::PubAck { pkid, .. } => self.to_device.on_puback(pkid, wbuf),
            Packet::PubRec { pkid, .. } => self.to_device.on_pubrec(pkid, wbuf),
            Packet::PubComp { pkid } => self.to_device.on_pubcomp(pkid, wbuf),
            Packet::Subscribe { pkid, filters } => self.subscribe(pkid, filters, wbuf),
            Packet::Unsubscribe { pkid, filters } => {
                let codes = self.unsubscribe(filters);
                let _ = codec::write(self.proto, &Packet::UnsubAck { pkid, codes }, wbuf);
            }
            Packet::PingReq => {
                let _ = codec::write(self.proto, &Packet::PingResp, wbuf);
            }
            Packet::Disconnect {
                reason,
                session_expiry,
            } => {
                if let Some(e) = session_expiry {
                    if self.expiry == 0 && e != 0 {
                        // MQTT 5 §3.14.2.2.2: a session that was to end cannot be revived.
                        return Err(End::Lost(
                            "protocol error: session expiry raised from 0".into(),
                        ));
                    }
                    self.expiry = e;
                }
                return Err(if reason == 0x04 {
                    End::Lost("DISCONNECT with will".into())
                } else {
                    End::Clean
                });
            }
            other => {
                // Only the packet's kind: a CONNECT's Debug output would carry credentials.
                return Err(End::Lost(format!(
                    "protocol error: unexpected {} from device",
                    packet_kind(&other)
                )));
            }
        }
        Ok(())
    }
}

/// A packet's kind, for logs.
fn packet_kind(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck { .. } => "CONNACK",
        Packet::Publish { .. } => "PUBLISH",
        Packet::PubAck { .. } => "PUBACK",
        Packet::PubRec { .. } => "PUBREC",
        Packet::PubRel { .. } => "PUBREL",
        Packet::PubComp { .. } => "PUBCOMP",
        Packet::Subscribe { .. } => "SUBSCRIBE",
        Packet::SubAck { .. } => "SUBACK",
        Packet::Unsubscribe { .. } => "UNSUBSCRIBE",
        Packet::UnsubAck { .. } => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect { .. } => "DISCONNECT",
        Packet::Auth => "AUTH",
    }
}
