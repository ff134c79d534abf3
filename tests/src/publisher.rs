//! A real MQTT 3.1.1 publisher: a device stand-in with a chosen client id,
//! session, keepalive and last will, that can leave cleanly (DISCONNECT) or
//! vanish (socket closed, no DISCONNECT) to trigger the will.
//!
//! rumqttc's `publish` only queues a request, so completion is tracked from
//! the event loop: every QoS 1/2 publish expects one PUBACK or PUBCOMP, and
//! [`Publisher::wait_acked`] waits until the two counts meet.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::subscriber::MAX_PACKET_SIZE;
use crate::{to_qos, unique_client_id, wait_until, within, CONNECT_TIMEOUT};

const RECONNECT_DELAY: Duration = Duration::from_millis(50);
const REQUEST_CAPACITY: usize = 1024;

/// Options for a [`Publisher`]; defaults: unique client id, clean session,
/// 60 s keepalive, no will, anonymous.
#[derive(Debug, Clone)]
pub struct PublisherBuilder {
    port: u16,
    client_id: Option<String>,
    clean_session: bool,
    keep_alive: Duration,
    will: Option<(String, Bytes, u8, bool)>,
    credentials: Option<(String, String)>,
}

impl PublisherBuilder {
    pub fn client_id(mut self, client_id: &str) -> Self {
        self.client_id = Some(client_id.to_owned());
        self
    }

    pub fn clean_session(mut self, clean: bool) -> Self {
        self.clean_session = clean;
        self
    }

    /// Zero disables keepalive; otherwise at least one second (MQTT counts seconds).
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    pub fn last_will(
        mut self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: u8,
        retain: bool,
    ) -> Self {
        self.will = Some((topic.to_owned(), payload.into(), qos, retain));
        self
    }

    pub fn credentials(mut self, username: &str, password: &str) -> Self {
        self.credentials = Some((username.to_owned(), password.to_owned()));
        self
    }

    /// Connects and returns after CONNACK; a refused or failed first
    /// connection is an error. Later drops are retried in the background.
    pub async fn connect(self) -> Result<Publisher> {
        if !self.keep_alive.is_zero() && self.keep_alive < Duration::from_secs(1) {
            bail!(
                "keepalive must be zero or at least 1 s, got {:?}",
                self.keep_alive
            );
        }
        let client_id = self.client_id.unwrap_or_else(|| unique_client_id("pub"));
        let mut options = MqttOptions::new(client_id.clone(), "127.0.0.1", self.port);
        options
            .set_clean_session(self.clean_session)
            .set_keep_alive(self.keep_alive)
            .set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE);
        if let Some((topic, payload, qos, retain)) = self.will {
            options.set_last_will(LastWill::new(topic, payload.to_vec(), to_qos(qos)?, retain));
        }
        if let Some((username, password)) = self.credentials {
            options.set_credentials(username, password);
        }

        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let state = Arc::new(AckState::default());
        let (ready_tx, ready_rx) = oneshot::channel::<Result<()>>();
        let task = tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                let mut ready_tx = Some(ready_tx);
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            if let Some(tx) = ready_tx.take() {
                                let _ = tx.send(Ok(()));
                            }
                        }
                        Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                            state.acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                        Ok(_) => {}
                        Err(e) => {
                            *state
                                .last_error
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
                            if let Some(tx) = ready_tx.take() {
                                let _ = tx.send(Err(anyhow!("connecting publisher: {e}")));
                                return;
                            }
                            tokio::time::sleep(RECONNECT_DELAY).await;
                        }
                    }
                }
            }
        });

        let ready = within(CONNECT_TIMEOUT, "publisher CONNACK", async {
            ready_rx
                .await
                .map_err(|_| anyhow!("publisher task ended"))?
        })
        .await;
        match ready {
            Ok(()) => Ok(Publisher {
                client,
                client_id,
                state,
                task: Some(task),
            }),
            Err(e) => {
                task.abort();
                Err(e)
            }
        }
    }
}

#[derive(Debug, Default)]
struct AckState {
    /// QoS 1/2 publishes handed to the event loop.
    expected: AtomicUsize,
    /// PUBACKs + PUBCOMPs received.
    acked: AtomicUsize,
    last_error: Mutex<Option<String>>,
}

/// A connected publisher; its event loop task is aborted when dropped.
pub struct Publisher {
    client: AsyncClient,
    client_id: String,
    state: Arc<AckState>,
    task: Option<JoinHandle<()>>,
}

impl Publisher {
    pub fn builder(port: u16) -> PublisherBuilder {
        PublisherBuilder {
            port,
            client_id: None,
            clean_session: true,
            keep_alive: Duration::from_secs(60),
            will: None,
            credentials: None,
        }
    }

    /// Default options (see [`PublisherBuilder`]).
    pub async fn connect(port: u16) -> Result<Self> {
        Self::builder(port).connect().await
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Queues a publish; QoS 1/2 completion is observed by [`Self::wait_acked`].
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: u8,
        retain: bool,
    ) -> Result<()> {
        let qos_level = to_qos(qos)?;
        if qos > 0 {
            self.state.expected.fetch_add(1, Ordering::SeqCst);
        }
        let queued = within(CONNECT_TIMEOUT, "queueing publish", async {
            self.client
                .publish_bytes(topic, qos_level, retain, payload.into())
                .await
                .context("publisher event loop is gone")
        })
        .await;
        if queued.is_err() && qos > 0 {
            self.state.expected.fetch_sub(1, Ordering::SeqCst);
        }
        queued
    }

    /// QoS 1/2 publishes not yet acknowledged by the broker.
    pub fn unacked(&self) -> usize {
        let expected = self.state.expected.load(Ordering::SeqCst);
        expected.saturating_sub(self.state.acked.load(Ordering::SeqCst))
    }

    /// Waits until every QoS 1/2 publish so far got its PUBACK/PUBCOMP.
    pub async fn wait_acked(&self, timeout: Duration) -> Result<()> {
        if wait_until(timeout, || self.unacked() == 0).await {
            return Ok(());
        }
        let last_error = self
            .state
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        bail!(
            "{} of {} QoS 1/2 publishes unacked after {timeout:?}; last error: {last_error:?}",
            self.unacked(),
            self.state.expected.load(Ordering::SeqCst)
        )
    }

    /// Sends DISCONNECT (the broker discards the will) and stops the loop.
    pub async fn disconnect(mut self) -> Result<()> {
        within(CONNECT_TIMEOUT, "queueing DISCONNECT", async {
            self.client
                .disconnect()
                .await
                .context("publisher event loop is gone")
        })
        .await?;
        let task = self
            .task
            .take()
            .ok_or_else(|| anyhow!("publisher already stopped"))?;
        within(CONNECT_TIMEOUT, "flushing DISCONNECT", async {
            task.await.context("publisher task")
        })
        .await
    }

    /// Closes the TCP socket without DISCONNECT, like a device losing power
    /// or network: the broker then publishes the will. Returns once the
    /// event loop (and with it the socket) is dropped.
    pub async fn drop_abruptly(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Awaiting a cancelled task returns after its future was dropped.
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, task).await;
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
