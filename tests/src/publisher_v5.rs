//! A real MQTT 5 publisher (rumqttc v5): the device stand-in for tests of
//! the proxy's MQTT 5 device side. Same contract as [`crate::Publisher`]:
//! `connect` returns after CONNACK and [`PublisherV5::wait_acked`] waits
//! until every QoS 1/2 publish got its PUBACK or PUBCOMP.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::subscriber::MAX_PACKET_SIZE;
use crate::{unique_client_id, wait_until, within, CONNECT_TIMEOUT};

const RECONNECT_DELAY: Duration = Duration::from_millis(50);
const REQUEST_CAPACITY: usize = 1024;

#[derive(Debug, Default)]
struct AckState {
    expected: AtomicUsize,
    acked: AtomicUsize,
    last_error: Mutex<Option<String>>,
}

/// A connected MQTT 5 publisher; its event loop task is aborted when dropped.
pub struct PublisherV5 {
    client: AsyncClient,
    client_id: String,
    state: Arc<AckState>,
    task: Option<JoinHandle<()>>,
}

impl PublisherV5 {
    /// Clean start, unique client id, 60 s keepalive, on 127.0.0.1:`port`.
    pub async fn connect(port: u16) -> Result<Self> {
        let client_id = unique_client_id("pub5");
        let mut options = MqttOptions::new(client_id.clone(), "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(60))
            .set_max_packet_size(u32::try_from(MAX_PACKET_SIZE).ok());
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
                                let _ = tx.send(Err(anyhow!("connecting v5 publisher: {e}")));
                                return;
                            }
                            tokio::time::sleep(RECONNECT_DELAY).await;
                        }
                    }
                }
            }
        });
        let ready = within(CONNECT_TIMEOUT, "v5 publisher CONNACK", async {
            ready_rx
                .await
                .map_err(|_| anyhow!("publisher task ended"))?
        })
        .await;
        match ready {
            Ok(()) => Ok(Self {
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
        let qos_level = match qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            other => bail!("QoS must be 0, 1 or 2, got {other}"),
        };
        if qos > 0 {
            self.state.expected.fetch_add(1, Ordering::SeqCst);
        }
        let queued = within(CONNECT_TIMEOUT, "queueing v5 publish", async {
            self.client
                .publish_bytes(topic.to_owned(), qos_level, retain, payload.into())
                .await
                .context("v5 publisher event loop is gone")
        })
        .await;
        if queued.is_err() && qos > 0 {
            self.state.expected.fetch_sub(1, Ordering::SeqCst);
        }
        queued
    }

    /// QoS 1/2 publishes not yet acknowledged.
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

    /// Sends DISCONNECT and stops the event loop.
    pub async fn disconnect(mut self) -> Result<()> {
        within(CONNECT_TIMEOUT, "queueing DISCONNECT", async {
            self.client
                .disconnect()
                .await
                .context("v5 publisher event loop is gone")
        })
        .await?;
        let task = self
            .task
            .take()
            .ok_or_else(|| anyhow!("publisher already stopped"))?;
        within(CONNECT_TIMEOUT, "flushing DISCONNECT", async {
            task.await.context("v5 publisher task")
        })
        .await
    }
}

impl Drop for PublisherV5 {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
