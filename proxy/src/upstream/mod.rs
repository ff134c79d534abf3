//! One task per (device session, broker): connect with backoff, speak MQTT as the device
//! would (same client id with the broker's prefix, clean flag, keepalive and will), drain the
//! bounded queue in batches, track acknowledgements, resend in order after a reconnect,
//! and hand messages from bidirectional brokers back to the session.
//!
//! A slow or dead broker only fills its own queue: the session never awaits this task.

mod admit;
mod backoff;
mod connect;
mod handover;
mod inflight;
mod link;
mod task;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tracing::{info, warn};

use crate::brokerset::Broker;
use crate::codec::{Message, Protocol, SubFilter, Will};
use crate::events::Outcome;
use crate::loopguard::LoopGuard;
use crate::metrics::RateLimit;
use crate::qos::{Inbound, Outbound};
use crate::queue::{dropped, Completion, Pushed, Queued, UpstreamQueue};

pub use backoff::Backoff;

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
    /// The device changed its Session Expiry Interval at DISCONNECT: the DISCONNECT to an
    /// MQTT 5 broker carries it, so the broker's session ends when the device's does.
    SessionExpiry(u32),
    /// The broker's config changed: continue as `broker`, with the same queue, spool and
    /// in-flight messages, after ending the current connection (see `handover`).
    Handover {
        broker: Arc<Broker>,
        subs: Vec<SubFilter>,
    },
}

/// A SUBSCRIBE/UNSUBSCRIBE for an upstream task, not handed over yet (its control channel
/// was full).
pub struct Held(Box<Control>);

/// Everything an upstream needs to impersonate the device towards one broker.
pub struct UpstreamParams {
    pub broker: Arc<Broker>,
    pub device_id: String,
    /// Appended to the client id (see [`crate::client_id`]).
    pub client_id_suffix: Option<String>,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub will: Option<Will>,
    pub session_expiry: Option<u32>,
    pub max_packet_size: usize,
    /// Boxed: the channel allocates its first block of slots up front, in every session,
    /// although only subscribed devices receive anything.
    pub to_session: mpsc::Sender<Box<FromBroker>>,
    /// Data directory holding `spool/` (for brokers with `spool: true`).
    pub spool_dir: Option<std::path::PathBuf>,
    /// Wait (at most the given time) for the previous session with this client id to end.
    pub start_after: Option<(watch::Receiver<bool>, Duration)>,
}

/// The session's side of an upstream task.
pub struct UpstreamHandle {
    pub broker: Arc<Broker>,
    pub queue: Arc<UpstreamQueue>,
    /// Boxed: a tokio channel allocates 32 slots up front, paid by every upstream although
    /// control messages are rare.
    ctl: mpsc::Sender<Box<Control>>,
    task: JoinHandle<()>,
    /// `None` until the first connection attempt ended: then `Some(session present)`
    /// (`Some(false)` when it failed). Updated on every later CONNACK.
    link: watch::Receiver<Option<bool>>,
}

impl UpstreamHandle {
    /// The outcome of the latest connection attempt (see the field): lets a device session
    /// answer CONNECT once its upstreams did (bounded), with their `session present`.
    pub fn link(&self) -> watch::Receiver<Option<bool>> {
        self.link.clone()
    }

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
        let (link_tx, link) = watch::channel(None);
        let mut task = Upstream::new(p, queue.clone(), ctl_rx);
        task.link = link_tx;
        let task = tokio::spawn(Box::new(task).run());
        Self {
            broker,
            queue,
            ctl: ctl_tx,
            task,
            link,
        }
    }

    /// Forwards a device subscription; the receiver yields the broker's SUBACK codes (or
    /// the requested QoS when the broker is down: the subscription is made on reconnect; an
    /// empty list when the connection dropped before the SUBACK).
    pub async fn subscribe(&self, filters: Vec<SubFilter>) -> oneshot::Receiver<Vec<u8>> {
        let (tx, rx) = oneshot::channel();
        let _ = self
            .ctl
            .send(Box::new(Control::Subscribe { filters, reply: tx }))
            .await;
        rx
    }

    pub async fn unsubscribe(&self, filters: Vec<String>) {
        let _ = self
            .ctl
            .send(Box::new(Control::Unsubscribe { filters }))
            .await;
    }

    /// See [`Control::SessionExpiry`]; sent before [`close`](Self::close).
    pub async fn set_session_expiry(&self, expiry: u32) {
        let _ = self
            .ctl
            .send(Box::new(Control::SessionExpiry(expiry)))
            .await;
    }

    /// A SUBSCRIBE request to hand over with [`retry`] instead of awaiting: a device
    /// session must never await this task (it may itself be waiting for the session to
    /// take a message). The receiver yields what [`subscribe`](Self::subscribe)'s does.
    ///
    /// [`retry`]: Self::retry
    pub fn subscribe_request(filters: Vec<SubFilter>) -> (oneshot::Receiver<Vec<u8>>, Held) {
        let (tx, rx) = oneshot::channel();
        (
            rx,
            Held(Box::new(Control::Subscribe { filters, reply: tx })),
        )
    }

    /// [`handover`](Self::handover) as a request to hand over with [`retry`](Self::retry),
    /// for a device session, which must not await this task.
    pub fn handover_request(&mut self, broker: Arc<Broker>, subs: Vec<SubFilter>) -> Held {
        self.broker = broker.clone();
        Held(Box::new(Control::Handover { broker, subs }))
    }

    /// An UNSUBSCRIBE request to hand over with [`retry`](Self::retry).
    pub fn unsubscribe_request(filters: Vec<String>) -> Held {
        Held(Box::new(Control::Unsubscribe { filters }))
    }

    /// Hands a held request over if the channel has room now; `Some` while it is still full.
    /// A request for a task that has ended is dropped (its SUBACK reply then never comes).
    pub fn retry(&self, held: Held) -> Option<Held> {
        match self.ctl.try_send(held.0) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => None,
            Err(mpsc::error::TrySendError::Full(c)) => Some(Held(c)),
        }
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
        let _ = self
            .ctl
            .send(Box::new(Control::Close { with_will: false }))
            .await;
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
        let _ = self.ctl.send(Box::new(Control::Close { with_will })).await;
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
            for q in left {
                q.done.report(Outcome::Dropped(dropped::SHUTDOWN));
                q.finish();
            }
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
    ctl: mpsc::Receiver<Box<Control>>,
    out: Outbound<Completion>,
    inbound: Inbound,
    subs: Vec<SubFilter>,
    pending_subacks: Vec<(u16, oneshot::Sender<Vec<u8>>)>,
    closing: Option<bool>,
    /// Records of messages written that this broker may hand back (see `loopguard`).
    echoes: LoopGuard,
    proto: Protocol,
    log_limit: RateLimit,
    /// When the current connection got its successful CONNACK (for the stable period).
    connected_at: Option<tokio::time::Instant>,
    /// What the current connection's CONNACK announced.
    limits: admit::BrokerLimits,
    poison: admit::PoisonWatch,
    /// Tells the session how connection attempts end (see [`UpstreamHandle::link`]).
    link: watch::Sender<Option<bool>>,
    /// Session Expiry Interval for the final DISCONNECT (see [`Control::SessionExpiry`]).
    close_expiry: Option<u32>,
    /// Bytes of an oversized PUBLISH from the broker still to discard.
    skip: usize,
}

enum Exit {
    /// The upstream is finished for good.
    Done,
    /// The connection failed after a successful CONNACK; reconnect.
    Failed(String),
    /// No MQTT session came about (unreachable, refused, no CONNACK); reconnect.
    NoSession(backoff::FailReason, String),
    /// The connection was ended for a changed broker config; connect with it at once.
    Handover,
}

impl Upstream {
    fn new(
        p: UpstreamParams,
        queue: Arc<UpstreamQueue>,
        ctl: mpsc::Receiver<Box<Control>>,
    ) -> Self {
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
            connected_at: None,
            limits: admit::BrokerLimits::default(),
            poison: admit::PoisonWatch::default(),
            link: watch::channel(None).0,
            close_expiry: None,
            skip: 0,
        }
    }

    fn broker(&self) -> &Broker {
        &self.p.broker
    }

    fn client_id(&self) -> String {
        crate::client_id::upstream(
            &self.broker().config.client_id_prefix,
            &self.p.device_id,
            self.p.client_id_suffix.as_deref(),
        )
    }

    fn finished(&self) -> bool {
        self.closing.is_some() && self.queue.is_empty() && self.out.is_empty()
    }
}
