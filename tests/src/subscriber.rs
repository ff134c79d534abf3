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
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, SubscribeReasonCode};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{from_qos, to_qos, unique_client_id, wait_until, within, CONNECT_TIMEOUT};

/// Pause between reconnect attempts once the first connection succeeded.
const RECONNECT_DELAY: Duration = Duration::from_millis(50);

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
    last_error: Mutex<Option<String>>,
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

    fn set_error(&self, error: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error);
    }

    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Reports the first subscription's outcome to `connect`, then stays quiet.
struct FirstReady(Option<oneshot::Sender<Result<()>>>);

impl FirstReady {
    fn send(&mut self, result: Result<()>) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(result);
        }
    }

    fn pending(&self) -> bool {
        self.0.is_some()
    }
}

/// The read side shared by [`Subscriber`] and [`SubscriberV5`].
macro_rules! inbox_methods {
    () => {
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
            self.inbox.last_error()
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
    };
}

/// An MQTT 3.1.1 subscriber.
pub struct Subscriber {
    client: AsyncClient,
    client_id: String,
    inbox: Arc<Inbox>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Clean-session subscriber with a unique client id on 127.0.0.1:`port`.
    pub async fn connect(port: u16, filter: &str, qos: u8) -> Result<Self> {
        let options = MqttOptions::new(unique_client_id("sub"), "127.0.0.1", port);
        Self::connect_with(options, filter, qos).await
    }

    /// Like [`connect`](Self::connect) with caller-chosen options (client id,
    /// credentials, persistent session...). The packet size limit is raised.
    pub async fn connect_with(mut options: MqttOptions, filter: &str, qos: u8) -> Result<Self> {
        let qos = to_qos(qos)?;
        options.set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE);
        let client_id = options.client_id();
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let inbox = Arc::new(Inbox::default());
        let (ready_tx, ready_rx) = oneshot::channel();

        let task = tokio::spawn({
            let client = client.clone();
            let inbox = Arc::clone(&inbox);
            let filter = filter.to_owned();
            async move {
                let mut first = FirstReady(Some(ready_tx));
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            // Every (re)connect: a clean session forgot it.
                            if let Err(e) = client.try_subscribe(filter.clone(), qos) {
                                first.send(Err(anyhow!("queueing SUBSCRIBE: {e}")));
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(ack))) => {
                            if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                                first.send(Err(anyhow!(
                                    "broker refused subscription to {filter:?}"
                                )));
                            } else {
                                inbox.subacks.fetch_add(1, Ordering::SeqCst);
                                first.send(Ok(()));
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            inbox.push(p.topic, p.payload, from_qos(p.qos), p.retain);
                        }
                        // Flushed: stop here instead of reconnecting.
                        Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                        Ok(_) => {}
                        Err(e) => {
                            inbox.set_error(e.to_string());
                            if first.pending() {
                                first.send(Err(anyhow!("connecting subscriber: {e}")));
                                return;
                            }
                            tokio::time::sleep(RECONNECT_DELAY).await;
                        }
                    }
                }
            }
        });

        let ready = within(CONNECT_TIMEOUT, "subscriber CONNACK+SUBACK", async {
            ready_rx
                .await
                .map_err(|_| anyhow!("subscriber task ended"))?
        })
        .await;
        match ready {
            Ok(()) => Ok(Self {
                client,
                client_id,
                inbox,
                task,
            }),
            Err(e) => {
                task.abort();
                Err(e)
            }
        }
    }

    inbox_methods!();

    /// Sends DISCONNECT (bounded) and stops the event loop.
    pub async fn disconnect(self) {
        let _ = tokio::time::timeout(CONNECT_TIMEOUT, self.client.disconnect()).await;
        // The task ends once DISCONNECT is flushed.
        let _ = wait_until(CONNECT_TIMEOUT, || self.task.is_finished()).await;
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An MQTT 5 subscriber; same contract as [`Subscriber`].
pub struct SubscriberV5 {
    client: rumqttc::v5::AsyncClient,
    client_id: String,
    inbox: Arc<Inbox>,
    task: JoinHandle<()>,
}

impl SubscriberV5 {
    pub async fn connect(port: u16, filter: &str, qos: u8) -> Result<Self> {
        let options = rumqttc::v5::MqttOptions::new(unique_client_id("sub5"), "127.0.0.1", port);
        Self::connect_with(options, filter, qos).await
    }

    pub async fn connect_with(
        mut options: rumqttc::v5::MqttOptions,
        filter: &str,
        qos: u8,
    ) -> Result<Self> {
        use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, SubscribeReasonCode as Code5};
        use rumqttc::v5::mqttbytes::QoS as QoS5;
        use rumqttc::v5::Event as Event5;

        let qos = match to_qos(qos)? {
            rumqttc::QoS::AtMostOnce => QoS5::AtMostOnce,
            rumqttc::QoS::AtLeastOnce => QoS5::AtLeastOnce,
            rumqttc::QoS::ExactlyOnce => QoS5::ExactlyOnce,
        };
        options.set_max_packet_size(u32::try_from(MAX_PACKET_SIZE).ok());
        let client_id = options.client_id();
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, REQUEST_CAPACITY);
        let inbox = Arc::new(Inbox::default());
        let (ready_tx, ready_rx) = oneshot::channel();

        let task = tokio::spawn({
            let client = client.clone();
            let inbox = Arc::clone(&inbox);
            let filter = filter.to_owned();
            async move {
                let mut first = FirstReady(Some(ready_tx));
                loop {
                    match eventloop.poll().await {
                        Ok(Event5::Incoming(Packet5::ConnAck(_))) => {
                            if let Err(e) = client.try_subscribe(filter.clone(), qos) {
                                first.send(Err(anyhow!("queueing SUBSCRIBE: {e}")));
                            }
                        }
                        Ok(Event5::Incoming(Packet5::SubAck(ack))) => {
                            if ack
                                .return_codes
                                .iter()
                                .all(|c| matches!(c, Code5::Success(_)))
                            {
                                inbox.subacks.fetch_add(1, Ordering::SeqCst);
                                first.send(Ok(()));
                            } else {
                                first.send(Err(anyhow!(
                                    "broker refused subscription to {filter:?}: {:?}",
                                    ack.return_codes
                                )));
                            }
                        }
                        Ok(Event5::Incoming(Packet5::Publish(p))) => {
                            let qos = match p.qos {
                                QoS5::AtMostOnce => 0,
                                QoS5::AtLeastOnce => 1,
                                QoS5::ExactlyOnce => 2,
                            };
                            let topic = String::from_utf8_lossy(&p.topic).into_owned();
                            inbox.push(topic, p.payload, qos, p.retain);
                        }
                        Ok(Event5::Outgoing(Outgoing::Disconnect)) => return,
                        Ok(_) => {}
                        Err(e) => {
                            inbox.set_error(e.to_string());
                            if first.pending() {
                                first.send(Err(anyhow!("connecting v5 subscriber: {e}")));
                                return;
                            }
                            tokio::time::sleep(RECONNECT_DELAY).await;
                        }
                    }
                }
            }
        });

        let ready = within(CONNECT_TIMEOUT, "v5 subscriber CONNACK+SUBACK", async {
            ready_rx
                .await
                .map_err(|_| anyhow!("subscriber task ended"))?
        })
        .await;
        match ready {
            Ok(()) => Ok(Self {
                client,
                client_id,
                inbox,
                task,
            }),
            Err(e) => {
                task.abort();
                Err(e)
            }
        }
    }

    inbox_methods!();

    pub async fn disconnect(self) {
        let _ = tokio::time::timeout(CONNECT_TIMEOUT, self.client.disconnect()).await;
        let _ = wait_until(CONNECT_TIMEOUT, || self.task.is_finished()).await;
    }
}

impl Drop for SubscriberV5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}
