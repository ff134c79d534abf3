//! One task per (device session, broker): connect with backoff, speak MQTT as the device
//! would (same client id with the broker's prefix, clean flag, keepalive and will), drain the
//! bounded queue in batches, track acknowledgements, resend in order after a reconnect,
//! and hand messages from bidirectional brokers back to the session.
//!
//! A slow or dead broker only fills its own queue: the session never awaits this task.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{debug, info, warn};

use crate::brokerset::{now_ms, Broker};
use crate::codec::{self, Connect, Message, Packet, Protocol, SubFilter, Will};
use crate::loopguard::{message_hash, LoopGuard};
use crate::metrics::{RateLimit, METRICS};
use crate::qos::{Inbound, Outbound, Resend};
use crate::queue::{Completion, Pushed, Queued, UpstreamQueue};

/// Messages written per batch (one `write` syscall for many packets).
const BATCH: usize = 512;
/// In-flight QoS 1/2 window towards a broker unless it announces a smaller one.
const DEFAULT_INFLIGHT: u16 = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

static DROP_LOG: RateLimit = RateLimit::new();

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A message from a bidirectional broker, for the device session.
#[derive(Debug)]
pub struct FromBroker {
    pub broker: Arc<Broker>,
    pub msg: Message,
}

/// What the session asks of the upstream task.
enum Control {
    Subscribe {
        filters: Vec<SubFilter>,
        reply: oneshot::Sender<Vec<u8>>,
    },
    Unsubscribe {
        filters: Vec<String>,
    },
    /// Finish: deliver what is queued and in flight (bounded by the session's deadline),
    /// then DISCONNECT (`with_will == false`) or just close the socket so the broker
    /// publishes the device's will (`with_will == true`).
    Close {
        with_will: bool,
    },
}

/// Everything an upstream needs to impersonate the device towards one broker.
pub struct UpstreamParams {
    pub broker: Arc<Broker>,
    pub device_id: String,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub will: Option<Will>,
    pub session_expiry: Option<u32>,
    pub max_packet_size: usize,
    pub to_session: mpsc::Sender<FromBroker>,
    /// Data directory holding `spool/` (for brokers with `spool: true`).
    pub spool_dir: Option<std::path::PathBuf>,
    /// Wait (at most the given time) for the previous session with this client id to end.
    pub start_after: Option<(watch::Receiver<bool>, Duration)>,
}

/// The session's side of an upstream task.
pub struct UpstreamHandle {
    pub broker: Arc<Broker>,
    pub queue: Arc<UpstreamQueue>,
    ctl: mpsc::Sender<Control>,
    task: JoinHandle<()>,
}

impl UpstreamHandle {
    pub fn spawn(p: UpstreamParams) -> Self {
        let broker = p.broker.clone();
        let gauges = Some(crate::queue::QueueCounters {
            messages: broker.metrics.queue_messages.clone(),
            bytes: broker.metrics.queue_bytes.clone(),
            stats: broker.stats.clone(),
            budget: broker.budget.clone(),
        });
        let queue = Arc::new(UpstreamQueue::with_gauges(broker.limits, gauges));
        let (ctl_tx, ctl_rx) = mpsc::channel(64);
        let task = Upstream::new(p, queue.clone(), ctl_rx);
        let task = tokio::spawn(task.run());
        Self {
            broker,
            queue,
            ctl: ctl_tx,
            task,
        }
    }

    /// Forwards a device subscription; the receiver yields the broker's SUBACK codes (or
    /// the requested QoS when the broker is down: the subscription is made on reconnect; an
    /// empty list when the connection dropped before the SUBACK).
    pub async fn subscribe(&self, filters: Vec<SubFilter>) -> oneshot::Receiver<Vec<u8>> {
        let (tx, rx) = oneshot::channel();
        let _ = self
            .ctl
            .send(Control::Subscribe { filters, reply: tx })
            .await;
        rx
    }

    pub async fn unsubscribe(&self, filters: Vec<String>) {
        let _ = self.ctl.send(Control::Unsubscribe { filters }).await;
    }

    /// Queues a message for this broker; what the queue's overflow policy drops is counted
    /// (`mqtt_proxy_messages_dropped_total{reason="queue_full"}`) and logged, rate-limited.
    pub fn enqueue(&self, item: Queued) {
        let dropped = match self.queue.push(item) {
            Pushed::Accepted => return,
            Pushed::Evicted(n) => n as u64,
            Pushed::Rejected => 1,
        };
        let b = &self.broker;
        b.metrics.dropped_overflow.inc_by(dropped);
        b.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
        if let Some(held) = DROP_LOG.allow(10) {
            warn!(
                broker = b.label(),
                queued = self.queue.len(),
                suppressed = held,
                "queue full: message dropped (mqtt_proxy_messages_dropped_total)"
            );
        }
    }

    /// Delivers everything it holds with no deadline (spool recovery), unless `stop` turns
    /// true first (the device came back): then it stops at once and the spool keeps the rest.
    pub async fn deliver_all(self, mut stop: watch::Receiver<bool>) {
        let _ = self.ctl.send(Control::Close { with_will: false }).await;
        let mut task = self.task;
        tokio::select! {
            _ = &mut task => {}
            _ = crate::session::wait_true(&mut stop) => {
                task.abort();
                let _ = task.await;
            }
        }
        self.queue
            .close()
            .into_iter()
            .for_each(|q| q.done.abandon());
    }

    /// Ends the upstream: drains within `deadline`, then aborts. Whatever could not be
    /// delivered is counted as dropped (`reason="shutdown"`).
    pub async fn close(self, with_will: bool, deadline: Duration) {
        let _ = self.ctl.send(Control::Close { with_will }).await;
        let mut task = self.task;
        if timeout(deadline, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
        let left = self.queue.close();
        let (spooled, left): (Vec<_>, Vec<_>) = left.into_iter().partition(|q| q.done.is_spooled());
        if !spooled.is_empty() {
            info!(
                broker = self.broker.label(),
                spooled = spooled.len(),
                "upstream closed; undelivered messages stay in the spool"
            );
            spooled.into_iter().for_each(|q| q.done.abandon());
        }
        if !left.is_empty() {
            let n = left.len() as u64;
            self.broker.metrics.dropped_shutdown.inc_by(n);
            self.broker.stats.dropped.fetch_add(n, Ordering::Relaxed);
            warn!(
                broker = self.broker.label(),
                dropped = n,
                "upstream closed with messages still queued"
            );
            left.into_iter().for_each(Queued::finish);
        }
    }
}

/// Counts one upstream session of a broker for as long as it lives — including when its
/// task is aborted at a drain deadline, which skips any code after the `.await`.
struct SessionCount(Arc<Broker>);

impl SessionCount {
    fn new(b: Arc<Broker>) -> Self {
        b.stats.sessions.fetch_add(1, Ordering::Relaxed);
        Self(b)
    }
}

impl Drop for SessionCount {
    fn drop(&mut self) {
        self.0.stats.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a connection as connected from its CONNACK until it ends (or is aborted).
struct ConnectedCount(Arc<Broker>);

impl ConnectedCount {
    fn new(b: Arc<Broker>) -> Self {
        b.stats.connected.fetch_add(1, Ordering::Relaxed);
        b.metrics.connected.inc();
        Self(b)
    }
}

impl Drop for ConnectedCount {
    fn drop(&mut self) {
        self.0.stats.connected.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.connected.dec();
    }
}

struct Upstream {
    _counted: SessionCount,
    p: UpstreamParams,
    queue: Arc<UpstreamQueue>,
    ctl: mpsc::Receiver<Control>,
    out: Outbound<Completion>,
    inbound: Inbound,
    subs: Vec<SubFilter>,
    pending_subacks: Vec<(u16, oneshot::Sender<Vec<u8>>)>,
    closing: Option<bool>,
    /// Records of messages written that this broker may hand back (see `loopguard`).
    echoes: LoopGuard,
    proto: Protocol,
    log_limit: RateLimit,
}

enum Exit {
    /// The upstream is finished for good.
    Done,
    /// The connection failed; reconnect.
    Failed(String),
}

impl Upstream {
    fn new(p: UpstreamParams, queue: Arc<UpstreamQueue>, ctl: mpsc::Receiver<Control>) -> Self {
        let proto = Protocol::from(p.broker.config.mqtt_version);
        Self {
            _counted: SessionCount::new(p.broker.clone()),
            p,
            queue,
            ctl,
            out: Outbound::new(DEFAULT_INFLIGHT),
            inbound: Inbound::default(),
            subs: Vec::new(),
            pending_subacks: Vec::new(),
            closing: None,
            echoes: LoopGuard::default(),
            proto,
            log_limit: RateLimit::new(),
        }
    }

    fn broker(&self) -> &Broker {
        &self.p.broker
    }

    fn client_id(&self) -> String {
        format!(
            "{}{}",
            self.broker().config.client_id_prefix,
            self.p.device_id
        )
    }

    fn finished(&self) -> bool {
        self.closing.is_some() && self.queue.is_empty() && self.out.is_empty()
    }

    /// Opens the spool (after the previous holder of the file is gone) and puts what it
    /// still holds in front of anything queued meanwhile.
    fn open_spool(&mut self) {
        let broker = self.p.broker.clone();
        let (true, Some(dir)) = (broker.config.spool, &self.p.spool_dir) else {
            return;
        };
        let client_id = self.client_id();
        let path = crate::spool::path_for(dir, broker.id(), &client_id);
        match crate::spool::Spool::open(&path, broker.limits.max_bytes as u64) {
            Ok((spool, pending)) => {
                if !pending.is_empty() {
                    info!(broker = broker.label(), %client_id, messages = pending.len(), "resuming spooled messages");
                }
                let recovered = pending
                    .into_iter()
                    .map(|(r, msg)| {
                        let qos = broker.rule.qos(msg.qos);
                        let mut q = Queued::new(msg, qos, None);
                        q.done.spool = Some(r);
                        q
                    })
                    .collect();
                self.queue.attach_spool(spool, recovered);
            }
            Err(e) => {
                warn!(broker = broker.label(), file = %path.display(), error = %e, "cannot open spool; queueing in memory only")
            }
        }
    }

    async fn run(mut self) {
        if let Some((mut prev, bound)) = self.p.start_after.take() {
            let _ = timeout(bound, crate::session::wait_true(&mut prev)).await;
        }
        self.open_spool();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let mut first = true;
        loop {
            if self.finished() {
                break;
            }
            if !first {
                self.broker()
                    .stats
                    .reconnects
                    .fetch_add(1, Ordering::Relaxed);
                self.broker().metrics.reconnects.inc();
            }
            first = false;
            let exit = match self.connect().await {
                Ok(stream) => {
                    backoff.reset();
                    self.connected(stream).await
                }
                Err(e) => Exit::Failed(e),
            };
            match exit {
                Exit::Done => break,
                Exit::Failed(reason) => {
                    self.broker().stats.set_error(reason.clone());
                    if let Some(held) = self.log_limit.allow(10) {
                        warn!(broker = self.broker().label(), client_id = %self.client_id(), %reason,
                              suppressed = held, "upstream connection failed; retrying with backoff");
                    }
                    // Reply to SUBSCRIBEs that were in flight: they are re-sent on reconnect.
                    for (_, reply) in self.pending_subacks.drain(..) {
                        let _ = reply.send(Vec::new());
                    }
                    let delay = backoff.next_delay();
                    let wake = Instant::now() + delay;
                    loop {
                        tokio::select! {
                            _ = sleep_until(wake) => break,
                            c = self.ctl.recv() => match c {
                                Some(c) => self.control_offline(c),
                                None => return self.abandon(),
                            },
                        }
                    }
                }
            }
        }
    }

    /// The session is gone without a Close: count what is left.
    fn abandon(mut self) {
        let tags = self.out.drain_tags();
        let n = tags.iter().filter(|t| !t.is_spooled()).count() as u64;
        tags.into_iter().for_each(Completion::abandon);
        if n > 0 {
            self.broker().metrics.dropped_shutdown.inc_by(n);
            self.broker().stats.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn control_offline(&mut self, c: Control) {
        match c {
            Control::Subscribe { filters, reply } => {
                let granted = filters.iter().map(|f| f.qos).collect();
                self.merge_subs(filters);
                let _ = reply.send(granted);
            }
            Control::Unsubscribe { filters } => self.subs.retain(|s| !filters.contains(&s.filter)),
            Control::Close { with_will } => self.closing = Some(with_will),
        }
    }

    fn merge_subs(&mut self, filters: Vec<SubFilter>) {
        for f in filters {
            match self.subs.iter_mut().find(|s| s.filter == f.filter) {
                Some(s) => *s = f,
                None => self.subs.push(f),
            }
        }
    }

    async fn connect(&self) -> Result<Box<dyn Io>, String> {
        let c = &self.broker().config;
        let addr = (c.address.as_str(), c.port);
        let tcp = match timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("connect {}:{}: {e}", c.address, c.port)),
            Err(_) => return Err(format!("connect {}:{}: timed out", c.address, c.port)),
        };
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.broker().tls else {
            return Ok(Box::new(tcp));
        };
        if c.insecure_skip_verify {
            warn!(
                broker = c.label(),
                "TLS certificate verification is disabled (insecureSkipVerify)"
            );
        }
        let name = crate::tls::server_name(&c.address).map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        match timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => Ok(Box::new(s)),
            Ok(Err(e)) => Err(format!("TLS handshake with {}: {e}", c.address)),
            Err(_) => Err(format!("TLS handshake with {}: timed out", c.address)),
        }
    }

    fn connect_packet(&self) -> Packet {
        let b = self.broker();
        // The will follows the same rules as a publish: topic filters, prefix, QoS cap.
        let will = self
            .p
            .will
            .as_ref()
            .filter(|w| b.rule.accepts(w.message.topic_str()))
            .map(|w| {
                let mut m = w.message.clone();
                if let Some(t) = b.rule.outbound_topic(m.topic_str()) {
                    m.topic = t.into();
                }
                m.qos = b.rule.qos(m.qos);
                Will {
                    message: m,
                    delay_interval: w.delay_interval,
                }
            });
        Packet::Connect(Box::new(Connect {
            protocol: self.proto,
            client_id: self.client_id(),
            clean_session: self.p.clean_session,
            keep_alive: self.p.keep_alive,
            will,
            username: b.config.username.clone(),
            password: b.password.as_ref().map(|p| p.expose().to_string()),
            session_expiry: if self.proto == Protocol::V5 {
                self.p.session_expiry
            } else {
                None
            },
            receive_maximum: None,
            max_packet_size: None,
        }))
    }

    async fn connected(&mut self, stream: Box<dyn Io>) -> Exit {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut rbuf = BytesMut::with_capacity(8 * 1024);
        let mut wbuf = BytesMut::with_capacity(16 * 1024);
        let max = self.p.max_packet_size.max(1 << 20);

        if let Err(e) = codec::write(self.proto, &self.connect_packet(), &mut wbuf) {
            return Exit::Failed(format!("encode CONNECT: {e}"));
        }
        if let Err(e) = wr.write_all(&wbuf).await {
            return Exit::Failed(format!("write CONNECT: {e}"));
        }
        wbuf.clear();
        let connack = timeout(CONNECT_TIMEOUT, async {
            loop {
                match codec::read(self.proto, &mut rbuf, max) {
                    Ok(Some(p)) => return Ok(p),
                    Ok(None) => {}
                    Err(e) => return Err(e.to_string()),
                }
                match rd.read_buf(&mut rbuf).await {
                    Ok(0) => return Err("closed before CONNACK".to_string()),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
        .await;
        let session_present = match connack {
            Ok(Ok(Packet::ConnAck {
                code: 0,
                session_present,
                receive_maximum,
                ..
            })) => {
                if let Some(rm) = receive_maximum {
                    self.out.set_max_inflight(rm);
                }
                session_present
            }
            Ok(Ok(Packet::ConnAck { code, .. })) => {
                return Exit::Failed(format!("broker refused CONNECT (code {code:#04x})"))
            }
            Ok(Ok(other)) => return Exit::Failed(format!("expected CONNACK, got {other:?}")),
            Ok(Err(e)) => return Exit::Failed(format!("reading CONNACK: {e}")),
            Err(_) => return Exit::Failed("no CONNACK within 10 s".into()),
        };
        self.broker().stats.connects.fetch_add(1, Ordering::Relaxed);
        let _connected = ConnectedCount::new(self.p.broker.clone());
        if let Ok(mut l) = self.broker().stats.last_error.lock() {
            *l = None;
        }
        info!(broker = self.broker().label(), client_id = %self.client_id(), session_present, "upstream connected");

        // Subscriptions are restored unless the broker kept the session.
        if !session_present && !self.subs.is_empty() {
            let pkid = self.out.reserve();
            let _ = codec::write(
                self.proto,
                &Packet::Subscribe {
                    pkid,
                    filters: self.subs.clone(),
                },
                &mut wbuf,
            );
        }
        // Unacknowledged messages go first, in their original order, flagged DUP.
        for r in self.out.resend() {
            match r {
                Resend::Publish { pkid, msg, qos } => {
                    let prefix = self.broker().rule.topic_prefix.as_deref();
                    codec::encode_publish(self.proto, pkid, true, &msg, prefix, qos, &mut wbuf);
                }
                Resend::PubRel { pkid } => {
                    let _ = codec::write(self.proto, &Packet::PubRel { pkid }, &mut wbuf);
                }
            }
        }

        let keep_alive = Duration::from_secs(u64::from(self.p.keep_alive));
        let mut last_write = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let mut batch: Vec<Queued> = Vec::new();
        loop {
            self.fill(&mut batch, &mut wbuf);
            if !wbuf.is_empty() {
                if let Err(e) = wr.write_all(&wbuf).await {
                    return Exit::Failed(format!("write: {e}"));
                }
                wbuf.clear();
                last_write = Instant::now();
            }
            if self.finished() {
                if self.closing == Some(false) {
                    let _ = codec::write(self.proto, &Packet::Disconnect { reason: 0 }, &mut wbuf);
                    let _ = wr.write_all(&wbuf).await;
                    let _ = wr.shutdown().await;
                }
                // With a will: just drop the socket, as a vanished device would.
                return Exit::Done;
            }
            let ping_at = if keep_alive.is_zero() {
                None
            } else {
                Some(match ping_sent {
                    Some(at) => at + keep_alive / 2,
                    None => last_write + keep_alive,
                })
            };
            let room = self.out.has_room();
            if room && !self.queue.is_empty() {
                // More is queued than one write took: poll the socket without waiting (acks,
                // PINGRESP), then write the next batch.
                match rd.read_buf(&mut rbuf).now_or_never() {
                    None => continue,
                    Some(Ok(0)) => return Exit::Failed("broker closed the connection".into()),
                    Some(Err(e)) => return Exit::Failed(format!("read: {e}")),
                    Some(Ok(_)) => {
                        if let Err(e) = self
                            .read_packets(&mut rbuf, &mut wbuf, max, &mut ping_sent)
                            .await
                        {
                            return Exit::Failed(e);
                        }
                        continue;
                    }
                }
            }
            tokio::select! {
                r = rd.read_buf(&mut rbuf) => match r {
                    Ok(0) => return Exit::Failed("broker closed the connection".into()),
                    Ok(_) => {
                        if let Err(e) = self.read_packets(&mut rbuf, &mut wbuf, max, &mut ping_sent).await {
                            return Exit::Failed(e);
                        }
                    }
                    Err(e) => return Exit::Failed(format!("read: {e}")),
                },
                _ = self.queue.notify.notified(), if room => {}
                c = self.ctl.recv() => match c {
                    Some(Control::Subscribe { filters, reply }) => {
                        self.merge_subs(filters.clone());
                        let pkid = self.out.reserve();
                        let _ = codec::write(self.proto, &Packet::Subscribe { pkid, filters }, &mut wbuf);
                        self.pending_subacks.push((pkid, reply));
                    }
                    Some(Control::Unsubscribe { filters }) => {
                        self.subs.retain(|s| !filters.contains(&s.filter));
                        let pkid = self.out.reserve();
                        let _ = codec::write(self.proto, &Packet::Unsubscribe { pkid, filters }, &mut wbuf);
                    }
                    Some(Control::Close { with_will }) => self.closing = Some(with_will),
                    None => {
                        // The session vanished without closing us: behave like a lost device.
                        self.closing = Some(true);
                    }
                },
                _ = sleep_until_opt(ping_at) => {
                    if ping_sent.is_some() {
                        return Exit::Failed("broker did not answer PINGREQ".into());
                    }
                    let _ = codec::write(self.proto, &Packet::PingReq, &mut wbuf);
                    ping_sent = Some(Instant::now());
                }
            }
        }
    }

    async fn read_packets(
        &mut self,
        rbuf: &mut BytesMut,
        wbuf: &mut BytesMut,
        max: usize,
        ping_sent: &mut Option<Instant>,
    ) -> Result<(), String> {
        loop {
            match codec::read(self.proto, rbuf, max) {
                Ok(Some(p)) => {
                    if matches!(p, Packet::PingResp) {
                        *ping_sent = None;
                    }
                    self.on_packet(p, wbuf).await?;
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("malformed packet from broker: {e}")),
            }
        }
    }

    /// Moves queued messages into the write buffer while the in-flight window has room.
    fn fill(&mut self, batch: &mut Vec<Queued>, wbuf: &mut BytesMut) {
        let broker = self.p.broker.clone();
        let prefix = broker.rule.topic_prefix.as_deref();
        let mut written = 0u64;
        while self.out.room() > 0 && wbuf.len() < 256 * 1024 {
            self.queue.pop_batch(self.out.room().min(BATCH), batch);
            if batch.is_empty() {
                break;
            }
            for Queued {
                msg,
                qos,
                done,
                echo,
            } in batch.drain(..)
            {
                written += 1;
                if echo {
                    // Recorded when written, not when queued: an outage does not age it.
                    self.echoes.record(
                        "",
                        message_hash(&msg.topic, &msg.payload),
                        Instant::now().into_std(),
                    );
                }
                if qos == 0 {
                    codec::encode_publish(self.proto, 0, false, &msg, prefix, 0, wbuf);
                    done.complete();
                } else {
                    codec::encode_publish(
                        self.proto,
                        self.out.peek_pkid(),
                        false,
                        &msg,
                        prefix,
                        qos,
                        wbuf,
                    );
                    self.out.publish(msg, qos, done);
                }
            }
        }
        if written > 0 {
            broker.metrics.forwarded.inc_by(written);
            broker.stats.forwarded.fetch_add(written, Ordering::Relaxed);
            broker
                .stats
                .last_publish_ms
                .store(now_ms(), Ordering::Relaxed);
        }
    }

    async fn on_packet(&mut self, p: Packet, wbuf: &mut BytesMut) -> Result<(), String> {
        match p {
            Packet::PubAck { pkid, code } => match self.out.on_puback(pkid) {
                Ok(tag) => {
                    if code != 0 {
                        self.rejected(code);
                    }
                    resolve(tag);
                }
                // After a reconnect a broker may ack a resend twice; harmless.
                Err(e) => debug!(broker = self.broker().label(), "{e}"),
            },
            Packet::PubRec { pkid, code } if code != 0 => {
                self.rejected(code);
                resolve(self.out.on_pubrec_failed(pkid));
            }
            Packet::PubRec { pkid, .. } => {
                match self.out.on_pubrec(pkid) {
                    Ok(tag) => resolve(tag),
                    Err(e) => debug!(broker = self.broker().label(), "{e}"),
                }
                let _ = codec::write(self.proto, &Packet::PubRel { pkid }, wbuf);
            }
            Packet::PubComp { pkid } => {
                if let Err(e) = self.out.on_pubcomp(pkid) {
                    debug!(broker = self.broker().label(), "{e}");
                }
            }
            Packet::Publish { pkid, msg, .. } => {
                let qos = msg.qos;
                let fresh = qos < 2 || self.inbound.on_publish_qos2(pkid);
                if fresh && self.is_echo(&msg) {
                    METRICS
                        .loop_suppressed
                        .with_label_values(&[self.broker().label(), "echo"])
                        .inc();
                } else if fresh {
                    let m = FromBroker {
                        broker: self.p.broker.clone(),
                        msg,
                    };
                    // Backpressure: a slow device slows this broker's session only.
                    if self.p.to_session.send(m).await.is_err() {
                        return Err("device session ended".into());
                    }
                }
                match qos {
                    1 => codec::write(self.proto, &Packet::PubAck { pkid, code: 0 }, wbuf),
                    2 => codec::write(self.proto, &Packet::PubRec { pkid, code: 0 }, wbuf),
                    _ => Ok(()),
                }
                .map_err(|e| e.to_string())?;
            }
            Packet::PubRel { pkid } => {
                self.inbound.on_pubrel(pkid);
                let _ = codec::write(self.proto, &Packet::PubComp { pkid }, wbuf);
            }
            Packet::SubAck { pkid, codes } => {
                self.out.release(pkid);
                if let Some(i) = self.pending_subacks.iter().position(|(p, _)| *p == pkid) {
                    let (_, reply) = self.pending_subacks.swap_remove(i);
                    let _ = reply.send(codes);
                }
            }
            Packet::UnsubAck { pkid } => {
                self.out.release(pkid);
            }
            Packet::PingResp => {}
            Packet::Disconnect { reason } => {
                return Err(format!("broker sent DISCONNECT (reason {reason:#04x})"));
            }
            other => return Err(format!("unexpected packet from broker: {other:?}")),
        }
        Ok(())
    }

    /// Is `msg` (as received, with this broker's prefix) the echo of a device publish this
    /// upstream wrote? Each record absorbs one copy; others' identical messages pass.
    fn is_echo(&mut self, msg: &Message) -> bool {
        if self.echoes.len("") == 0 {
            return false;
        }
        let Some(topic) = self.p.broker.rule.inbound_topic(msg.topic_str()) else {
            return false;
        };
        let h = message_hash(topic.as_bytes(), &msg.payload);
        self.echoes.is_echo("", h, Instant::now().into_std())
    }

    fn rejected(&self, code: u8) {
        let b = self.broker();
        b.metrics.dropped_rejected.inc();
        b.stats.dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(held) = self.log_limit.allow(10) {
            warn!(
                broker = b.label(),
                code,
                suppressed = held,
                "broker rejected a message"
            );
        }
    }
}

fn resolve(tag: Option<Completion>) {
    if let Some(c) = tag {
        c.complete();
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Exponential backoff with jitter: each delay is drawn from [d/2, d], d doubling up to `max`.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            current: base,
        }
    }
    pub fn reset(&mut self) {
        self.current = self.base;
    }
    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = d / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(30));
        }
        assert!(
            b.next_delay() >= Duration::from_secs(15),
            "capped at max, jitter keeps >= max/2"
        );
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
