//! A real MQTT 3.1.1 publisher: a device stand-in with a chosen client id,
//! session, keepalive and last will, that can leave cleanly (DISCONNECT) or
//! vanish (socket closed, no DISCONNECT) to trigger the will.
//!
//! rumqttc's `publish` only queues a request, so completion is tracked from
//! the event loop: every QoS 1/2 publish expects one PUBACK or PUBCOMP, and
//! [`Publisher::wait_acked`] waits until the two counts meet.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use rumqttc::{AsyncClient, LastWill, MqttOptions};
use tokio::task::JoinHandle;

use crate::client_core::{
    disconnect_and_join, spawn_event_loop, AckCounter, LastError, Step, Version, V4,
};
use crate::subscriber::MAX_PACKET_SIZE;
use crate::{to_qos, unique_client_id, CONNECT_TIMEOUT};

pub(crate) const REQUEST_CAPACITY: usize = 1024;

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

        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        Publisher::start(client, eventloop, client_id).await
    }
}

/// What the event loop task shares with the publisher.
#[derive(Debug, Default)]
struct PubState {
    acks: AckCounter,
    last_error: LastError,
}

/// A connected publisher of MQTT [`Version`] `V` (see [`Publisher`] and
/// [`crate::PublisherV5`]); its event loop task is aborted when dropped.
pub struct MqttPublisher<V: Version> {
    client: V::Client,
    client_id: String,
    state: Arc<PubState>,
    task: Option<JoinHandle<()>>,
}

/// A connected MQTT 3.1.1 publisher.
pub type Publisher = MqttPublisher<V4>;

impl<V: Version> MqttPublisher<V> {
    /// Drives `eventloop` and returns after its first CONNACK.
    pub(crate) async fn start(
        client: V::Client,
        eventloop: V::EventLoop,
        client_id: String,
    ) -> Result<Self> {
        let state = Arc::new(PubState::default());
        let task = spawn_event_loop::<V>(
            eventloop,
            "publisher",
            "CONNACK",
            {
                let state = Arc::clone(&state);
                move |e| state.last_error.set(e)
            },
            {
                let state = Arc::clone(&state);
                move |step, first| match step {
                    Step::ConnAck => first.send(Ok(())),
                    Step::Acked => state.acks.ack(),
                    _ => {}
                }
            },
        )
        .await?;
        Ok(Self {
            client,
            client_id,
            state,
            task: Some(task),
        })
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
        let what = format!("queueing {}publish", V::TAG);
        self.state
            .acks
            .queue(qos, &what, async {
                V::publish(&self.client, topic, qos, retain, payload.into())
                    .await
                    .with_context(|| format!("{}publisher event loop is gone", V::TAG))
            })
            .await
    }

    /// QoS 1/2 publishes not yet acknowledged by the broker.
    pub fn unacked(&self) -> usize {
        self.state.acks.unacked()
    }

    /// Waits until every QoS 1/2 publish so far got its PUBACK/PUBCOMP.
    pub async fn wait_acked(&self, timeout: Duration) -> Result<()> {
        self.state
            .acks
            .wait_acked(timeout, || self.state.last_error.get())
            .await
    }

    /// Sends DISCONNECT (the broker discards the will) and stops the loop.
    pub async fn disconnect(mut self) -> Result<()> {
        disconnect_and_join::<V>(&self.client, self.task.take(), "publisher").await
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

impl<V: Version> Drop for MqttPublisher<V> {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
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
}
