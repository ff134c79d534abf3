//! A device: an MQTT client (3.1.1 or 5) that both publishes and subscribes
//! through the proxy and records everything the proxy hands back to it.
//!
//! It records more than [`crate::Subscriber`] does (packet id, DUP flag, MQTT 5
//! user properties, PUBRELs, its own acks), because the tests judge the
//! proxy's side of the QoS handshakes by what the device saw. It never
//! reconnects: a dropped device connection is a finding, kept in
//! [`Device::error`], not something to paper over.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use rumqttc::{Event, MqttOptions, Outgoing, Packet, SubscribeReasonCode};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::client_core::{from_qos5, to_qos5, AckCounter, Version, V4, V5};
use crate::subscriber::MAX_PACKET_SIZE;
use crate::{from_qos, to_qos, unique_client_id, wait_until, within, CONNECT_TIMEOUT};

/// Capacity of the client → event loop request channel: large enough that a
/// burst of QoS 0 publishes queues instead of stalling the test task.
const REQUEST_CAPACITY: usize = 4096;

/// SUBACK return code for a refused subscription (MQTT 3.1.1 and 5).
pub const SUBACK_FAILURE: u8 = 0x80;

/// The protocol a [`Device`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    V4,
    V5,
}

/// One PUBLISH as the device received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMessage {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
    /// MQTT 5 only; empty for 3.1.1.
    pub user_properties: Vec<(String, String)>,
    pub at: Instant,
}

#[derive(Debug, Default)]
struct DeviceState {
    messages: Mutex<Vec<DeviceMessage>>,
    /// Return codes of each SUBACK, in arrival order.
    subacks: Mutex<Vec<Vec<u8>>>,
    unsubacks: AtomicUsize,
    /// PUBRELs received: the proxy's second step of a QoS 2 delivery.
    pubrels: AtomicUsize,
    /// PUBACK/PUBREC/PUBCOMP the device sent for deliveries.
    acks_sent: AtomicUsize,
    /// QoS 1/2 publishes handed to the event loop, and their PUBACK/PUBCOMPs.
    publishes: AckCounter,
    error: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DeviceState {
    fn push(&self, message: DeviceMessage) {
        lock(&self.messages).push(message);
    }
    fn set_error(&self, error: String) {
        *lock(&self.error) = Some(error);
    }
}

enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// A device connected to the proxy (or to any broker, as an observer that
/// also records user properties). Clean session, 30 s keepalive unless
/// chosen otherwise.
pub struct Device {
    client: Client,
    client_id: String,
    state: Arc<DeviceState>,
    task: JoinHandle<()>,
}

impl Device {
    /// Connects to `addr` and returns after CONNACK.
    pub async fn connect(addr: SocketAddr, proto: Proto) -> Result<Self> {
        Self::connect_with_keep_alive(addr, proto, Duration::from_secs(30)).await
    }

    /// [`connect`](Self::connect) with another keepalive (at least 1 s).
    pub async fn connect_with_keep_alive(
        addr: SocketAddr,
        proto: Proto,
        keep_alive: Duration,
    ) -> Result<Self> {
        let client_id = unique_client_id("device");
        let state = Arc::new(DeviceState::default());
        let (ready_tx, ready_rx) = oneshot::channel();
        let host = addr.ip().to_string();
        let (client, task) = match proto {
            Proto::V4 => {
                let mut options = MqttOptions::new(client_id.clone(), host, addr.port());
                options
                    .set_keep_alive(keep_alive)
                    .set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE);
                let (client, eventloop) = rumqttc::AsyncClient::new(options, REQUEST_CAPACITY);
                let task = tokio::spawn(drive_v4(eventloop, Arc::clone(&state), ready_tx));
                (Client::V4(client), task)
            }
            Proto::V5 => {
                let mut options =
                    rumqttc::v5::MqttOptions::new(client_id.clone(), host, addr.port());
                options
                    .set_keep_alive(keep_alive)
                    .set_max_packet_size(u32::try_from(MAX_PACKET_SIZE).ok());
                let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, REQUEST_CAPACITY);
                let task = tokio::spawn(drive_v5(eventloop, Arc::clone(&state), ready_tx));
                (Client::V5(client), task)
            }
        };
        let ready = within(CONNECT_TIMEOUT, "device CONNACK", async {
            ready_rx.await.map_err(|_| anyhow!("device task ended"))?
        })
        .await;
        match ready {
            Ok(()) => Ok(Self {
                client,
                client_id,
                state,
                task,
            }),
            Err(e) => {
                task.abort();
                Err(e)
            }
        }
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Subscribes and waits (up to [`CONNECT_TIMEOUT`]) for the SUBACK;
    /// returns its return code (granted QoS or [`SUBACK_FAILURE`]).
    pub async fn subscribe(&self, filter: &str, qos: u8) -> Result<u8> {
        self.subscribe_within(filter, qos, CONNECT_TIMEOUT).await
    }

    /// [`subscribe`](Self::subscribe) with a caller-chosen deadline.
    pub async fn subscribe_within(&self, filter: &str, qos: u8, timeout: Duration) -> Result<u8> {
        let before = self.subacks().len();
        self.send_subscribe(filter, qos).await?;
        let codes = self.wait_for_suback(before + 1, timeout).await?;
        match codes.as_slice() {
            [code] => Ok(*code),
            other => bail!("SUBACK for one filter carried {other:?}"),
        }
    }

    /// MQTT 5 only: subscribes with No Local (the server must not send the
    /// device its own publishes on this filter) and waits for the SUBACK.
    pub async fn subscribe_no_local(&self, filter: &str, qos: u8) -> Result<u8> {
        let Client::V5(c) = &self.client else {
            bail!("No Local is an MQTT 5 option");
        };
        let mut f = rumqttc::v5::mqttbytes::v5::Filter::new(filter, to_qos5(qos)?);
        f.nolocal = true;
        let before = self.subacks().len();
        c.subscribe_many([f]).await?;
        match self
            .wait_for_suback(before + 1, CONNECT_TIMEOUT)
            .await?
            .as_slice()
        {
            [code] => Ok(*code),
            other => bail!("SUBACK for one filter carried {other:?}"),
        }
    }

    /// Sends SUBSCRIBE without waiting for the SUBACK (see [`Self::subacks`]).
    pub async fn send_subscribe(&self, filter: &str, qos: u8) -> Result<()> {
        match &self.client {
            Client::V4(c) => c.subscribe(filter, to_qos(qos)?).await?,
            Client::V5(c) => c.subscribe(filter, to_qos5(qos)?).await?,
        }
        Ok(())
    }

    /// Return codes of every SUBACK so far, in order.
    pub fn subacks(&self) -> Vec<Vec<u8>> {
        lock(&self.state.subacks).clone()
    }

    /// Waits for the `n`-th SUBACK and returns its codes.
    pub async fn wait_for_suback(&self, n: usize, timeout: Duration) -> Result<Vec<u8>> {
        if !wait_until(timeout, || self.subacks().len() >= n).await {
            bail!(
                "{} SUBACKs after {timeout:?}, wanted {n}; device error: {:?}",
                self.subacks().len(),
                self.error()
            );
        }
        Ok(self.subacks()[n - 1].clone())
    }

    /// Unsubscribes and waits for the UNSUBACK.
    pub async fn unsubscribe(&self, filter: &str) -> Result<()> {
        let before = self.state.unsubacks.load(Ordering::SeqCst);
        match &self.client {
            Client::V4(c) => c.unsubscribe(filter).await?,
            Client::V5(c) => c.unsubscribe(filter).await?,
        }
        if wait_until(CONNECT_TIMEOUT, || {
            self.state.unsubacks.load(Ordering::SeqCst) > before
        })
        .await
        {
            Ok(())
        } else {
            bail!(
                "no UNSUBACK for {filter:?}; device error: {:?}",
                self.error()
            )
        }
    }

    /// Queues a publish; QoS 1/2 completion is observed by [`Self::wait_acked`].
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>, qos: u8) -> Result<()> {
        self.publish_with(topic, payload, qos, false).await
    }

    /// [`publish`](Self::publish) with the retain flag.
    pub async fn publish_with(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: u8,
        retain: bool,
    ) -> Result<()> {
        let payload = payload.into();
        self.state
            .publishes
            .queue(qos, "queueing device publish", async {
                match &self.client {
                    Client::V4(c) => V4::publish(c, topic, qos, retain, payload).await,
                    Client::V5(c) => V5::publish(c, topic, qos, retain, payload).await,
                }
            })
            .await
    }

    /// Waits until every QoS 1/2 publish of the device was acknowledged.
    pub async fn wait_acked(&self, timeout: Duration) -> Result<()> {
        self.state
            .publishes
            .wait_acked(timeout, || self.error())
            .await
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<DeviceMessage> {
        lock(&self.state.messages).clone()
    }

    pub fn count(&self) -> usize {
        lock(&self.state.messages).len()
    }

    /// Messages received with exactly this payload.
    pub fn count_payload(&self, payload: &str) -> usize {
        lock(&self.state.messages)
            .iter()
            .filter(|m| m.payload == payload.as_bytes())
            .count()
    }

    /// Waits until at least `n` messages arrived; returns what arrived either way.
    pub async fn wait_for_count(&self, n: usize, timeout: Duration) -> Vec<DeviceMessage> {
        wait_until(timeout, || self.count() >= n).await;
        self.received()
    }

    /// Waits until at least `n` messages with `payload` arrived; returns whether they did.
    pub async fn wait_for_payload(&self, payload: &str, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.count_payload(payload) >= n).await
    }

    /// Waits until no new message arrived for `quiet` (giving up after
    /// `timeout`); returns everything received.
    pub async fn wait_quiet(&self, quiet: Duration, timeout: Duration) -> Vec<DeviceMessage> {
        let mut seen = self.count();
        let mut since = Instant::now();
        wait_until(timeout, || {
            let now = self.count();
            if now != seen {
                seen = now;
                since = Instant::now();
            }
            since.elapsed() >= quiet
        })
        .await;
        self.received()
    }

    /// PUBRELs the proxy sent (one per QoS 2 delivery once the device's PUBREC arrived).
    pub fn pubrels(&self) -> usize {
        self.state.pubrels.load(Ordering::SeqCst)
    }

    /// PUBACK/PUBREC/PUBCOMP packets the device wrote for deliveries.
    pub fn acks_sent(&self) -> usize {
        self.state.acks_sent.load(Ordering::SeqCst)
    }

    /// Why the connection ended, if it did.
    pub fn error(&self) -> Option<String> {
        lock(&self.state.error).clone()
    }

    /// Whether the event loop still runs (no error, no DISCONNECT).
    pub fn is_connected(&self) -> bool {
        !self.task.is_finished()
    }

    /// Sends DISCONNECT (bounded) and stops the event loop.
    pub async fn disconnect(self) {
        let _ = tokio::time::timeout(CONNECT_TIMEOUT, async {
            match &self.client {
                Client::V4(c) => c.disconnect().await.map_err(anyhow::Error::from),
                Client::V5(c) => c.disconnect().await.map_err(anyhow::Error::from),
            }
        })
        .await;
        let _ = wait_until(CONNECT_TIMEOUT, || self.task.is_finished()).await;
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts the device's own acks for deliveries; `true` when the loop must stop.
fn on_outgoing(state: &DeviceState, outgoing: &Outgoing) -> bool {
    match outgoing {
        Outgoing::PubAck(_) | Outgoing::PubRec(_) | Outgoing::PubComp(_) => {
            state.acks_sent.fetch_add(1, Ordering::SeqCst);
            false
        }
        Outgoing::Disconnect => true,
        _ => false,
    }
}

async fn drive_v4(
    mut eventloop: rumqttc::EventLoop,
    state: Arc<DeviceState>,
    ready: oneshot::Sender<Result<()>>,
) {
    let mut ready = Some(ready);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(packet)) => match packet {
                Packet::ConnAck(_) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                Packet::Publish(p) => state.push(DeviceMessage {
                    topic: p.topic,
                    payload: p.payload,
                    qos: from_qos(p.qos),
                    retain: p.retain,
                    dup: p.dup,
                    pkid: p.pkid,
                    user_properties: Vec::new(),
                    at: Instant::now(),
                }),
                Packet::SubAck(ack) => {
                    let codes = ack
                        .return_codes
                        .iter()
                        .map(|c| match c {
                            SubscribeReasonCode::Success(q) => from_qos(*q),
                            SubscribeReasonCode::Failure => SUBACK_FAILURE,
                        })
                        .collect();
                    lock(&state.subacks).push(codes);
                }
                Packet::UnsubAck(_) => {
                    state.unsubacks.fetch_add(1, Ordering::SeqCst);
                }
                Packet::PubAck(_) | Packet::PubComp(_) => {
                    state.publishes.ack();
                }
                Packet::PubRel(_) => {
                    state.pubrels.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            },
            Ok(Event::Outgoing(outgoing)) => {
                if on_outgoing(&state, &outgoing) {
                    return;
                }
            }
            Err(e) => {
                state.set_error(e.to_string());
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(anyhow!("connecting device: {e}")));
                }
                return;
            }
        }
    }
}

async fn drive_v5(
    mut eventloop: rumqttc::v5::EventLoop,
    state: Arc<DeviceState>,
    ready: oneshot::Sender<Result<()>>,
) {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, SubscribeReasonCode as Code5};
    use rumqttc::v5::Event as E5;

    let mut ready = Some(ready);
    loop {
        match eventloop.poll().await {
            Ok(E5::Incoming(packet)) => match packet {
                P5::ConnAck(_) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                P5::Publish(p) => state.push(DeviceMessage {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload,
                    qos: from_qos5(p.qos),
                    retain: p.retain,
                    dup: p.dup,
                    pkid: p.pkid,
                    user_properties: p
                        .properties
                        .map(|pr| pr.user_properties)
                        .unwrap_or_default(),
                    at: Instant::now(),
                }),
                P5::SubAck(ack) => {
                    let codes = ack
                        .return_codes
                        .iter()
                        .map(|c| match c {
                            Code5::Success(q) => from_qos5(*q),
                            _ => SUBACK_FAILURE,
                        })
                        .collect();
                    lock(&state.subacks).push(codes);
                }
                P5::UnsubAck(_) => {
                    state.unsubacks.fetch_add(1, Ordering::SeqCst);
                }
                P5::PubAck(_) | P5::PubComp(_) => {
                    state.publishes.ack();
                }
                P5::PubRel(_) => {
                    state.pubrels.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            },
            Ok(E5::Outgoing(outgoing)) => {
                if on_outgoing(&state, &outgoing) {
                    return;
                }
            }
            Err(e) => {
                state.set_error(e.to_string());
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(anyhow!("connecting v5 device: {e}")));
                }
                return;
            }
        }
    }
}
