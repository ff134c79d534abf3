//! Real MQTT subscribers (3.1.1 and 5) that record every message they get.
//!
//! A spawned task drives the rumqttc event loop and appends to a shared
//! inbox; tests read the inbox through bounded waits. `connect` returns only
//! after SUBACK, so a publish made right after it cannot be missed. After a
//! broker restart the task reconnects and subscribes again (clean sessions
//! lose subscriptions); [`Subscriber::subacks`] tells when that happened.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use rumqttc::{AsyncClient, MqttOptions};
use tokio::task::JoinHandle;

use crate::client_core::{spawn_event_loop, LastError, Step, Version, V4, V5};
use crate::{to_qos, unique_client_id, wait_until, CONNECT_TIMEOUT};

/// Largest packet the harness clients accept or send (rumqttc's default is 10 KiB).
pub(crate) const MAX_PACKET_SIZE: usize = 16 * 1024 * 1024;

/// Capacity of the client → event loop request channel.
const REQUEST_CAPACITY: usize = 1024;

/// One message as the subscriber saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// When the event loop handed it over; for ordering and latency checks.
    pub at: Instant,
}

/// What the event loop task shares with the test.
#[derive(Debug, Default)]
struct Inbox {
    messages: Mutex<Vec<Received>>,
    subacks: AtomicUsize,
    last_error: LastError,
}

impl Inbox {
    fn push(&self, topic: String, payload: Bytes, qos: u8, retain: bool) {
        let message = Received {
            topic,
            payload,
            qos,
            retain,
            at: Instant::now(),
        };
        self.messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(message);
    }

    fn count(&self) -> usize {
        self.messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn snapshot(&self) -> Vec<Received> {
        self.messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A subscriber of MQTT [`Version`] `V` (see [`Subscriber`] and
/// [`SubscriberV5`]); its event loop task is aborted when dropped.
pub struct MqttSubscriber<V: Version> {
    client: V::Client,
    client_id: String,
    inbox: Arc<Inbox>,
    task: JoinHandle<()>,
}

/// An MQTT 3.1.1 subscriber.
pub type Subscriber = MqttSubscriber<V4>;

/// An MQTT 5 subscriber; same contract as [`Subscriber`].
pub type SubscriberV5 = MqttSubscriber<V5>;

impl<V: Version> MqttSubscriber<V> {
    /// Drives `eventloop`, subscribing to `filter` on every (re)connect, and
    /// returns after the first SUBACK.
    async fn start(
        client: V::Client,
        eventloop: V::EventLoop,
        client_id: String,
        filter: &str,
        qos: u8,
    ) -> Result<Self> {
        to_qos(qos)?;
        let inbox = Arc::new(Inbox::default());
        let task = spawn_event_loop::<V>(
            eventloop,
            "subscriber",
            "CONNACK+SUBACK",
            {
                let inbox = Arc::clone(&inbox);
                move |e| inbox.last_error.set(e)
            },
            {
                let client = client.clone();
                let inbox = Arc::clone(&inbox);
                let filter = filter.to_owned();
                move |step, first| match step {
                    Step::ConnAck => {
                        // Every (re)connect: a clean session forgot it.
                        if let Err(e) = V::try_subscribe(&client, &filter, qos) {
                            first.send(Err(anyhow!("queueing SUBSCRIBE: {e}")));
                        }
                    }
                    Step::SubAck(Ok(())) => {
                        inbox.subacks.fetch_add(1, Ordering::SeqCst);
                        first.send(Ok(()));
                    }
                    Step::SubAck(Err(detail)) => first.send(Err(anyhow!(
                        "broker refused subscription to {filter:?}{detail}"
                    ))),
                    Step::Publish {
                        topic,
                        payload,
                        qos,
                        retain,
                    } => inbox.push(topic, payload, qos, retain),
                    _ => {}
                }
            },
        )
        .await?;
        Ok(Self {
            client,
            client_id,
            inbox,
            task,
        })
    }

    /// Sends DISCONNECT (bounded) and stops the event loop.
    pub async fn disconnect(self) {
        let _ = tokio::time::timeout(CONNECT_TIMEOUT, V::disconnect(&self.client)).await;
        // The task ends once DISCONNECT is flushed.
        let _ = wait_until(CONNECT_TIMEOUT, || self.task.is_finished()).await;
    }

    /// The MQTT client id, e.g. for [`crate::Mosquitto::client_connects`].
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.inbox.snapshot()
    }

    pub fn count(&self) -> usize {
        self.inbox.count()
    }

    /// SUBACKs seen: 1 after `connect`, +1 per reconnect-and-resubscribe.
    pub fn subacks(&self) -> usize {
        self.inbox.subacks.load(Ordering::SeqCst)
    }

    /// The last connection error the event loop reported, if any.
    pub fn last_error(&self) -> Option<String> {
        self.inbox.last_error.get()
    }

    /// Waits until at least `n` messages arrived or `timeout` passed, and
    /// returns what arrived either way: compare its length to `n`.
    pub async fn wait_for_count(&self, n: usize, timeout: Duration) -> Vec<Received> {
        wait_until(timeout, || self.inbox.count() >= n).await;
        self.inbox.snapshot()
    }

    /// Waits until no new message arrived for `quiet`, giving up after
    /// `timeout` overall; returns everything received.
    pub async fn wait_quiet(&self, quiet: Duration, timeout: Duration) -> Vec<Received> {
        let mut seen = self.inbox.count();
        let mut since = Instant::now();
        wait_until(timeout, || {
            let now = self.inbox.count();
            if now != seen {
                seen = now;
                since = Instant::now();
            }
            since.elapsed() >= quiet
        })
        .await;
        self.inbox.snapshot()
    }

    /// Waits for at least `n` SUBACKs in total (see [`Self::subacks`]),
    /// e.g. `n = 2` after a broker restart.
    pub async fn wait_for_subacks(&self, n: usize, timeout: Duration) -> Result<()> {
        if wait_until(timeout, || self.subacks() >= n).await {
            Ok(())
        } else {
            bail!(
                "{} SUBACKs after {timeout:?}, wanted {n}; last error: {:?}",
                self.subacks(),
                self.last_error()
            )
        }
    }
}

impl<V: Version> Drop for MqttSubscriber<V> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MqttSubscriber<V4> {
    /// Clean-session subscriber with a unique client id on 127.0.0.1:`port`.
    pub async fn connect(port: u16, filter: &str, qos: u8) -> Result<Self> {
        let options = MqttOptions::new(unique_client_id("sub"), "127.0.0.1", port);
        Self::connect_with(options, filter, qos).await
    }

    /// Like [`connect`](Self::connect) with caller-chosen options (client id,
    /// credentials, persistent session...). The packet size limit is raised.
    pub async fn connect_with(mut options: MqttOptions, filter: &str, qos: u8) -> Result<Self> {
        options.set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE);
        let client_id = options.client_id();
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        Self::start(client, eventloop, client_id, filter, qos).await
    }
}

impl MqttSubscriber<V5> {
    pub async fn connect(port: u16, filter: &str, qos: u8) -> Result<Self> {
        let options = rumqttc::v5::MqttOptions::new(unique_client_id("sub5"), "127.0.0.1", port);
        Self::connect_with(options, filter, qos).await
    }

    pub async fn connect_with(
        mut options: rumqttc::v5::MqttOptions,
        filter: &str,
        qos: u8,
    ) -> Result<Self> {
        options.set_max_packet_size(u32::try_from(MAX_PACKET_SIZE).ok());
        let client_id = options.client_id();
        let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, REQUEST_CAPACITY);
        Self::start(client, eventloop, client_id, filter, qos).await
    }
}
