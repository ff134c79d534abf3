//! One task per device connection: the MQTT server side. It reads CONNECT (3.1.1 or 5),
//! enforces keepalive (1.5×), answers the QoS handshakes, fans each PUBLISH out to the
//! upstream queues chosen by the router, forwards subscriptions to bidirectional brokers
//! and delivers their messages back, and follows broker-set reloads without touching
//! upstreams whose broker did not change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{debug, info, warn};

use crate::auth::{Authorizer, Credentials, Grant};
use crate::brokerset::BrokerSet;
use crate::codec::{
    self, CodecError, Connect, Packet, Protocol, SubFilter, NOT_AUTHORIZED, SUBACK_FAILURE,
};
use crate::config::{AckPolicy, SessionOptions};
use crate::delivery::ToDevice;
use crate::metrics::METRICS;
use crate::qos::Inbound;
use crate::queue::{AckSink, AckTracker, Queued};
use crate::registry::Registry;
use crate::router;
use crate::upstream::{FromBroker, UpstreamHandle, UpstreamParams};

/// What every session shares.
pub struct Shared {
    pub brokers: watch::Receiver<Arc<BrokerSet>>,
    pub registry: Arc<Registry>,
    pub opts: SessionOptions,
    pub shutdown: watch::Receiver<bool>,
    /// Who may connect and what each device may publish and subscribe to.
    pub auth: Arc<Authorizer>,
}

/// The brokers' answers to one device SUBSCRIBE.
struct SubDone {
    pkid: u16,
    filters: Vec<SubFilter>,
    /// Codes decided without asking brokers (invalid filters).
    preset: Vec<Option<u8>>,
    /// (filter index, filters sent, codes) per broker that answered in time.
    replies: Vec<(usize, usize, Option<Vec<u8>>)>,
}

enum Event {
    Read(std::io::Result<usize>),
    SubAck(SubDone),
    Acks,
    FromBroker(FromBroker),
    Reload(bool),
    Kicked,
    Shutdown,
    KeepAlive,
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
pub async fn run(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let mut rbuf = BytesMut::with_capacity(4096);
    let max = shared.opts.max_packet_size;
    // A connection that has not sent CONNECT yet must not hold up a shutdown.
    let mut stop = shared.shutdown.clone();
    let first = tokio::select! {
        r = timeout(shared.opts.connect_timeout, read_connect(&mut stream, &mut rbuf, max)) => r,
        _ = wait_true(&mut stop) => return,
    };
    let connect = match first {
        Ok(Ok(c)) => c,
        Ok(Err(ConnectError::Unsupported(level))) => {
            // MQTT 3.1.1 §3.1.2.2: answer an unknown level with return code 1, then close.
            let mut w = BytesMut::new();
            let nack = Packet::ConnAck {
                session_present: false,
                code: 0x01,
                receive_maximum: None,
                maximum_qos: None,
                max_packet_size: None,
            };
            let _ = codec::write(Protocol::V4, &nack, &mut w);
            let _ = stream.write_all(&w).await;
            METRICS
                .device_rejected
                .with_label_values(&["protocol_version"])
                .inc();
            debug!(%peer, level, "refused unsupported protocol level");
            return;
        }
        Ok(Err(e)) => {
            METRICS
                .device_rejected
                .with_label_values(&["bad_connect"])
                .inc();
            debug!(%peer, error = %e, "closing connection without a valid CONNECT");
            return;
        }
        Err(_) => {
            METRICS
                .device_rejected
                .with_label_values(&["connect_timeout"])
                .inc();
            debug!(%peer, "no CONNECT within the timeout");
            return;
        }
    };
    let proto = connect.protocol;
    let mut connect = connect;
    if connect.client_id.is_empty() {
        if !connect.clean_session {
            // MQTT 3.1.1 §3.1.3.1: a persistent session needs a client id.
            let mut w = BytesMut::new();
            let nack = Packet::ConnAck {
                session_present: false,
                code: if proto == Protocol::V4 { 0x02 } else { 0x85 },
                receive_maximum: None,
                maximum_qos: None,
                max_packet_size: None,
            };
            let _ = codec::write(proto, &nack, &mut w);
            let _ = stream.write_all(&w).await;
            METRICS
                .device_rejected
                .with_label_values(&["client_id"])
                .inc();
            return;
        }
        connect.client_id = format!("mqtt-proxy-{:016x}", rand::random::<u64>());
    }
    let creds = Credentials {
        username: connect.username.as_deref(),
        password: connect.password.as_deref(),
        client_id: &connect.client_id,
        cert_identity: None,
        peer: peer.ip(),
    };
    let grant = match shared.auth.authenticate(creds).await {
        Ok(g) => g,
        Err(denied) => {
            refuse(&mut stream, proto, denied.connack_code(proto)).await;
            METRICS.device_rejected.with_label_values(&["auth"]).inc();
            if let Some(held) = AUTH_LOG.allow(10) {
                // The username may be a mistyped password: never log it.
                warn!(%peer, reason = denied.reason(), suppressed = held, "device authentication failed");
            }
            return;
        }
    };
    let claim = shared.registry.claim(&connect.client_id);
    METRICS.device_connections.inc();
    METRICS.devices_connected.inc();
    info!(%peer, client_id = %connect.client_id, ?proto, keep_alive = connect.keep_alive, clean = connect.clean_session, "device connected");
    let mut s = Session::new(
        connect,
        grant,
        shared.clone(),
        claim.kicked.clone(),
        claim.previous.clone(),
    );
    let end = s.serve(stream, rbuf).await;
    let with_will = matches!(end, End::Lost(_));
    info!(client_id = %s.connect.client_id, ?end, "device disconnected");
    s.close_upstreams(with_will).await;
    METRICS.devices_connected.dec();
    drop(claim);
}

static AUTH_LOG: crate::metrics::RateLimit = crate::metrics::RateLimit::new();

/// Answers a CONNECT with a refusing CONNACK (`code` in the device's protocol version).
async fn refuse(stream: &mut TcpStream, proto: Protocol, code: u8) {
    let mut w = BytesMut::new();
    let nack = Packet::ConnAck {
        session_present: false,
        code,
        receive_maximum: None,
        maximum_qos: None,
        max_packet_size: None,
    };
    if codec::write(proto, &nack, &mut w).is_ok() {
        let _ = stream.write_all(&w).await;
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed before CONNECT")]
    Closed,
    #[error("unsupported protocol level {0}")]
    Unsupported(u8),
}

async fn read_connect(
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
    max: usize,
) -> Result<Connect, ConnectError> {
    loop {
        match codec::read_connect(rbuf, max) {
            Ok(Some(c)) => return Ok(c),
            Ok(None) => {}
            Err(CodecError::UnsupportedProtocol(l)) => return Err(ConnectError::Unsupported(l)),
            Err(e) => return Err(e.into()),
        }
        if stream.read_buf(rbuf).await? == 0 {
            return Err(ConnectError::Closed);
        }
    }
}

struct Session {
    connect: Connect,
    grant: Grant,
    proto: Protocol,
    shared: Arc<Shared>,
    brokers: watch::Receiver<Arc<BrokerSet>>,
    kicked: watch::Receiver<bool>,
    /// The previous session with this client id, still draining: upstreams start after it.
    previous: Option<watch::Receiver<bool>>,
    upstreams: Vec<UpstreamHandle>,
    from_brokers_tx: mpsc::Sender<FromBroker>,
    from_brokers: mpsc::Receiver<FromBroker>,
    acks: Arc<AckSink>,
    subacks_tx: mpsc::Sender<SubDone>,
    subacks: mpsc::Receiver<SubDone>,
    /// Device packet ids whose PUBACK (QoS 1) or PUBREC (QoS 2) waits for brokers.
    deferred: HashMap<u16, u8>,
    inbound: Inbound,
    /// Device subscriptions, for brokers added by a reload and for delivery checks.
    subs: Vec<SubFilter>,
    to_device: ToDevice,
}

impl Session {
    fn new(
        connect: Connect,
        grant: Grant,
        shared: Arc<Shared>,
        kicked: watch::Receiver<bool>,
        previous: Option<watch::Receiver<bool>>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(256);
        let (subacks_tx, subacks) = mpsc::channel(16);
        let mut brokers = shared.brokers.clone();
        brokers.mark_unchanged();
        let proto = connect.protocol;
        let to_device = ToDevice::new(
            proto,
            connect.receive_maximum.unwrap_or(u16::MAX).min(1024),
            shared.opts.to_device_buffer,
        );
        let mut s = Self {
            connect,
            grant,
            proto,
            shared,
            brokers,
            kicked,
            previous,
            upstreams: Vec::new(),
            from_brokers_tx: tx,
            from_brokers: rx,
            acks: Arc::new(AckSink::default()),
            subacks_tx,
            subacks,
            deferred: HashMap::new(),
            inbound: Inbound::default(),
            subs: Vec::new(),
            to_device,
        };
        let set = s.brokers.borrow().clone();
        for b in &set.brokers {
            let h = s.spawn_upstream(b.clone());
            s.upstreams.push(h);
        }
        s
    }

    fn spawn_upstream(&self, broker: Arc<crate::brokerset::Broker>) -> UpstreamHandle {
        UpstreamHandle::spawn(UpstreamParams {
            broker,
            device_id: self.connect.client_id.clone(),
            clean_session: self.connect.clean_session,
            keep_alive: self.connect.keep_alive,
            will: self.connect.will.clone(),
            session_expiry: self.connect.session_expiry,
            max_packet_size: self.shared.opts.max_packet_size,
            to_session: self.from_brokers_tx.clone(),
            spool_dir: self.shared.opts.spool_dir.clone(),
            start_after: self
                .previous
                .clone()
                .map(|p| (p, self.shared.opts.drain_timeout + Duration::from_secs(1))),
        })
    }

    async fn serve(&mut self, stream: TcpStream, mut rbuf: BytesMut) -> End {
        let (mut rd, mut wr) = stream.into_split();
        let mut wbuf = BytesMut::with_capacity(4096);
        let ack = Packet::ConnAck {
            session_present: false,
            code: 0,
            receive_maximum: Some(self.shared.opts.receive_maximum),
            maximum_qos: None,
            max_packet_size: Some(self.shared.opts.max_packet_size as u32),
        };
        if codec::write(self.proto, &ack, &mut wbuf).is_err() || wr.write_all(&wbuf).await.is_err()
        {
            return End::Lost("could not send CONNACK".into());
        }
        wbuf.clear();
        let ka = Duration::from_millis(u64::from(self.connect.keep_alive) * 1500);
        let mut deadline = Instant::now() + ka;
        let mut shutdown = self.shared.shutdown.clone();
        let mut ready = Vec::new();
        // Packets already read behind the CONNECT.
        let mut end = self.drain_packets(&mut rbuf, &mut wbuf).await.err();
        loop {
            if !wbuf.is_empty() {
                if let Err(e) = wr.write_all(&wbuf).await {
                    return End::Lost(format!("write: {e}"));
                }
                wbuf.clear();
            }
            if let Some(e) = end.take() {
                return e;
            }
            let acks = self.acks.clone();
            let event = tokio::select! {
                r = rd.read_buf(&mut rbuf) => Event::Read(r),
                _ = acks.notify.notified() => Event::Acks,
                Some(m) = self.from_brokers.recv() => Event::FromBroker(m),
                Some(d) = self.subacks.recv() => Event::SubAck(d),
                r = self.brokers.changed() => Event::Reload(r.is_ok()),
                _ = wait_true(&mut self.kicked) => Event::Kicked,
                _ = wait_true(&mut shutdown) => Event::Shutdown,
                _ = sleep_until(deadline), if !ka.is_zero() => Event::KeepAlive,
            };
            match event {
                Event::Read(Ok(0)) => {
                    return End::Lost("connection closed without DISCONNECT".into())
                }
                Event::Read(Ok(_)) => {
                    deadline = Instant::now() + ka;
                    end = self.drain_packets(&mut rbuf, &mut wbuf).await.err();
                }
                Event::Read(Err(e)) => return End::Lost(format!("read: {e}")),
                Event::Acks => {
                    self.acks.take(&mut ready);
                    for pkid in ready.drain(..) {
                        if let Some(qos) = self.deferred.remove(&pkid) {
                            let p = if qos == 1 {
                                Packet::PubAck { pkid, code: 0 }
                            } else {
                                Packet::PubRec { pkid, code: 0 }
                            };
                            let _ = codec::write(self.proto, &p, &mut wbuf);
                        }
                    }
                }
                Event::FromBroker(m) => {
                    self.to_device.offer(m, &self.subs, &mut wbuf);
                    while let Ok(m) = self.from_brokers.try_recv() {
                        self.to_device.offer(m, &self.subs, &mut wbuf);
                    }
                }
                Event::SubAck(d) => self.suback(d, &mut wbuf),
                Event::Reload(true) => self.reconcile().await,
                Event::Reload(false) => return End::Shutdown,
                Event::Kicked => return End::TakenOver,
                Event::Shutdown => {
                    if self.proto == Protocol::V5 {
                        let _ = codec::write(
                            self.proto,
                            &Packet::Disconnect { reason: 0x8B },
                            &mut wbuf,
                        );
                        let _ = wr.write_all(&wbuf).await;
                    }
                    return End::Shutdown;
                }
                Event::KeepAlive => return End::Lost("keepalive timeout".into()),
            }
        }
    }

    /// Handles every complete packet in `rbuf`; `Err` ends the session.
    async fn drain_packets(&mut self, rbuf: &mut BytesMut, wbuf: &mut BytesMut) -> Result<(), End> {
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
                        let _ = codec::write(self.proto, &Packet::Disconnect { reason }, wbuf);
                    }
                    return Err(End::Lost(format!("malformed packet: {e}")));
                }
            };
            self.on_packet(p, wbuf).await?;
        }
    }

    async fn on_packet(&mut self, p: Packet, wbuf: &mut BytesMut) -> Result<(), End> {
        match p {
            Packet::Publish { pkid, msg, .. } => {
                if !router::valid_topic(msg.topic_str()) {
                    METRICS.malformed_packets.inc();
                    return Err(End::Lost(format!(
                        "invalid topic name {:?}",
                        msg.topic_str()
                    )));
                }
                METRICS.messages_received.inc();
                let qos = msg.qos;
                if !self
                    .shared
                    .auth
                    .may_publish(&mut self.grant, msg.topic_str())
                {
                    // Dropped (counted by the authorizer). MQTT 5 says why; 3.1.1 cannot,
                    // so it gets the normal ack, as mosquitto does.
                    let code = if self.proto == Protocol::V5 {
                        NOT_AUTHORIZED
                    } else {
                        0
                    };
                    let ack = match qos {
                        1 => Some(Packet::PubAck { pkid, code }),
                        2 if self.proto == Protocol::V5 => Some(Packet::PubRec { pkid, code }),
                        2 => {
                            self.inbound.on_publish_qos2(pkid);
                            Some(Packet::PubRec { pkid, code })
                        }
                        _ => None,
                    };
                    if let Some(ack) = ack {
                        let _ = codec::write(self.proto, &ack, wbuf);
                    }
                    return Ok(());
                }
                if qos == 2 && !self.inbound.on_publish_qos2(pkid) {
                    // Retransmission before PUBREL: already forwarded; acknowledge again.
                    if !self.deferred.contains_key(&pkid) {
                        let _ = codec::write(self.proto, &Packet::PubRec { pkid, code: 0 }, wbuf);
                    }
                    return Ok(());
                }
                self.to_device.loopback(&msg, &self.subs, wbuf);
                let deferred = self.fan_out(pkid, msg);
                match (qos, deferred) {
                    (1, false) => codec::write(self.proto, &Packet::PubAck { pkid, code: 0 }, wbuf),
                    (2, false) => codec::write(self.proto, &Packet::PubRec { pkid, code: 0 }, wbuf),
                    _ => Ok(()),
                }
                .map_err(|e| End::Lost(e.to_string()))?;
            }
            Packet::PubRel { pkid } => {
                self.inbound.on_pubrel(pkid);
                let _ = codec::write(self.proto, &Packet::PubComp { pkid }, wbuf);
            }
            Packet::PubAck { pkid, .. } => self.to_device.on_puback(pkid, wbuf),
            Packet::PubRec { pkid, .. } => self.to_device.on_pubrec(pkid, wbuf),
            Packet::PubComp { pkid } => self.to_device.on_pubcomp(pkid, wbuf),
            Packet::Subscribe { pkid, filters } => self.subscribe(pkid, filters).await,
            Packet::Unsubscribe { pkid, filters } => {
                self.unsubscribe(filters).await;
                let _ = codec::write(self.proto, &Packet::UnsubAck { pkid }, wbuf);
            }
            Packet::PingReq => {
                let _ = codec::write(self.proto, &Packet::PingResp, wbuf);
            }
            Packet::Disconnect { reason } => {
                return Err(if reason == 0x04 {
                    End::Lost("DISCONNECT with will".into())
                } else {
                    End::Clean
                });
            }
            other => {
                return Err(End::Lost(format!(
                    "protocol error: unexpected {other:?} from device"
                )));
            }
        }
        Ok(())
    }

    /// Queues `msg` for every broker whose rules accept it. Returns `true` when the device's
    /// acknowledgement is deferred until brokers confirm (ack policies `any` and `all`).
    fn fan_out(&mut self, pkid: u16, msg: codec::Message) -> bool {
        let topic = msg.topic_str();
        let accepts = |u: &&UpstreamHandle| u.broker.rule.accepts(topic);
        // Routing runs once per target; counting targets is only needed for `all`.
        let needed = match (msg.qos, self.shared.opts.ack_policy) {
            (0, _) | (_, AckPolicy::Queued) => 0,
            (_, AckPolicy::Any) => usize::from(self.upstreams.iter().any(|u| accepts(&u))),
            (_, AckPolicy::All) => self.upstreams.iter().filter(accepts).count(),
        };
        let tracker = (needed > 0).then(|| AckTracker::new(pkid, needed, self.acks.clone()));
        for u in self.upstreams.iter().filter(accepts) {
            let mut item = Queued::new(msg.clone(), u.broker.rule.qos(msg.qos), tracker.clone());
            item.echo =
                !self.subs.is_empty() && ToDevice::expects_echo(&u.broker, topic, &self.subs);
            u.enqueue(item);
        }
        match tracker {
            Some(_) => {
                self.deferred.insert(pkid, msg.qos);
                true
            }
            None => false,
        }
    }

    /// Forwards a SUBSCRIBE to the bidirectional brokers without waiting for them: the
    /// SUBACK is written when their answers are in (all of them, or 2 s after the first, or
    /// 5 s at most), so one hung broker never stalls the device's other traffic. The filters
    /// take effect at once, so messages racing the SUBACK are delivered.
    async fn subscribe(&mut self, pkid: u16, filters: Vec<SubFilter>) {
        let mut preset: Vec<Option<u8>> = vec![None; filters.len()];
        let mut waits = Vec::new();
        self.to_device.subscribed();
        for (i, f) in filters.iter().enumerate() {
            if !router::valid_filter(&f.filter) {
                preset[i] = Some(SUBACK_FAILURE);
                continue;
            }
            if !self.shared.auth.may_subscribe(&mut self.grant, &f.filter) {
                preset[i] = Some(NOT_AUTHORIZED);
                continue;
            }
            match self.subs.iter_mut().find(|s| s.filter == f.filter) {
                Some(s) => *s = f.clone(),
                None => self.subs.push(f.clone()),
            }
            for u in self
                .upstreams
                .iter()
                .filter(|u| u.broker.config.bidirectional)
            {
                let no_local = self.upstream_no_local(u);
                let up: Vec<SubFilter> = u
                    .broker
                    .rule
                    .upstream_filters(&f.filter)
                    .into_iter()
                    .map(|uf| SubFilter {
                        filter: uf,
                        no_local,
                        ..f.clone()
                    })
                    .collect();
                if !up.is_empty() {
                    waits.push((i, up.len(), u.subscribe(up).await));
                }
            }
        }
        let done = self.subacks_tx.clone();
        tokio::spawn(async move {
            let (rtx, mut rrx) = mpsc::channel(waits.len().max(1));
            for (i, n, rx) in waits {
                let rtx = rtx.clone();
                tokio::spawn(async move {
                    let _ = rtx.send((i, n, rx.await.ok())).await;
                });
            }
            drop(rtx);
            let hard = Instant::now() + Duration::from_secs(5);
            let mut soft: Option<Instant> = None;
            let mut replies = Vec::new();
            loop {
                let deadline = soft.map_or(hard, |s| s.min(hard));
                match tokio::time::timeout_at(deadline, rrx.recv()).await {
                    Ok(Some(r)) => {
                        replies.push(r);
                        soft.get_or_insert_with(|| Instant::now() + Duration::from_secs(2));
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            let _ = done
                .send(SubDone {
                    pkid,
                    filters,
                    preset,
                    replies,
                })
                .await;
        });
    }

    /// Writes the SUBACK: per filter the lowest QoS the brokers granted; failure only when
    /// every broker that answered refused; the requested QoS when none answered in time.
    fn suback(&mut self, d: SubDone, wbuf: &mut BytesMut) {
        let n = d.filters.len();
        let mut granted: Vec<Option<u8>> = vec![None; n];
        let mut failed = vec![false; n];
        for (i, expected, reply) in d.replies {
            match reply {
                Some(codes) if codes.len() == expected => {
                    for code in codes {
                        if code <= 2 {
                            granted[i] = Some(granted[i].map_or(code, |g: u8| g.min(code)));
                        } else {
                            failed[i] = true;
                        }
                    }
                }
                _ => {}
            }
        }
        let mut codes = Vec::with_capacity(n);
        for (i, f) in d.filters.into_iter().enumerate() {
            let code = d.preset[i].or(granted[i]).unwrap_or(if failed[i] {
                SUBACK_FAILURE
            } else {
                f.qos
            });
            match self.subs.iter().position(|s| s.filter == f.filter) {
                Some(at) if code > 2 => {
                    self.subs.remove(at);
                }
                Some(at) => self.subs[at].qos = code,
                None => {}
            }
            codes.push(code);
        }
        let _ = codec::write(
            self.proto,
            &Packet::SubAck {
                pkid: d.pkid,
                codes,
            },
            wbuf,
        );
    }

    /// MQTT 5 upstreams subscribe with No Local: the broker then never returns the proxy's
    /// own publishes on that session, and the device's own echo is produced locally.
    fn upstream_no_local(&self, u: &UpstreamHandle) -> bool {
        u.broker.config.mqtt_version == crate::broker::MqttVersion::V5
    }

    /// Removes device filters; an upstream filter is unsubscribed only when no remaining
    /// device filter still maps to it on that broker.
    async fn unsubscribe(&mut self, filters: Vec<String>) {
        self.subs.retain(|s| !filters.contains(&s.filter));
        for u in self
            .upstreams
            .iter()
            .filter(|u| u.broker.config.bidirectional)
        {
            let still: Vec<String> = self
                .subs
                .iter()
                .flat_map(|s| u.broker.rule.upstream_filters(&s.filter))
                .collect();
            let mut up: Vec<String> = filters
                .iter()
                .flat_map(|f| u.broker.rule.upstream_filters(f))
                .filter(|f| !still.contains(f))
                .collect();
            up.dedup();
            if !up.is_empty() {
                u.unsubscribe(up).await;
            }
        }
    }

    /// Applies a new broker set: unchanged brokers (same `Arc`) keep their upstream and
    /// its connection; removed and changed ones drain and close in the background.
    async fn reconcile(&mut self) {
        let set = self.brokers.borrow_and_update().clone();
        let old = std::mem::take(&mut self.upstreams);
        let mut kept = Vec::new();
        for u in old {
            match set.get(u.broker.id()) {
                Some(b) if Arc::ptr_eq(b, &u.broker) => kept.push(u),
                _ => {
                    let drain = self.shared.opts.drain_timeout;
                    tokio::spawn(u.close(false, drain));
                }
            }
        }
        self.upstreams = kept;
        for b in &set.brokers {
            if self.upstreams.iter().any(|u| u.broker.id() == b.id()) {
                continue;
            }
            let h = self.spawn_upstream(b.clone());
            if b.config.bidirectional && !self.subs.is_empty() {
                let no_local = self.upstream_no_local(&h);
                let up: Vec<SubFilter> = self
                    .subs
                    .iter()
                    .flat_map(|f| {
                        b.rule
                            .upstream_filters(&f.filter)
                            .into_iter()
                            .map(move |uf| SubFilter {
                                filter: uf,
                                no_local,
                                ..f.clone()
                            })
                    })
                    .collect();
                if !up.is_empty() {
                    drop(h.subscribe(up).await);
                }
            }
            self.upstreams.push(h);
        }
    }

    async fn close_upstreams(&mut self, with_will: bool) {
        let drain = self.shared.opts.drain_timeout;
        let closing: Vec<_> = self
            .upstreams
            .drain(..)
            .map(|u| tokio::spawn(u.close(with_will, drain)))
            .collect();
        for c in closing {
            let _ = c.await;
        }
    }
}
