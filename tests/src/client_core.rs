//! The part of the harness clients that does not depend on the MQTT version:
//! driving a rumqttc event loop in a task, reporting the first connection's
//! outcome, reconnecting afterwards, and tracking QoS 1/2 acks.
//!
//! The 3.1.1 and 5 clients of rumqttc are separate types with the same
//! shape; [`Version`] maps each to version-neutral [`Step`]s and calls, so
//! [`Publisher`](crate::Publisher) / [`PublisherV5`](crate::PublisherV5) and
//! [`Subscriber`](crate::Subscriber) / [`SubscriberV5`](crate::SubscriberV5)
//! share one implementation each.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use rumqttc::Outgoing;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{from_qos, to_qos, wait_until, within, CONNECT_TIMEOUT};

/// Pause between reconnect attempts once the first connection succeeded.
const RECONNECT_DELAY: Duration = Duration::from_millis(50);

/// One event-loop step, as the harness clients care about it.
pub enum Step {
    ConnAck,
    /// PUBACK or PUBCOMP: a QoS 1/2 publish completed.
    Acked,
    /// SUBACK: `Ok` when every filter was granted, else the refusal.
    SubAck(std::result::Result<(), String>),
    Publish {
        topic: String,
        payload: Bytes,
        qos: u8,
        retain: bool,
    },
    /// Our DISCONNECT was flushed: the loop should stop.
    Disconnected,
    Other,
}

/// The version-specific calls of a rumqttc client / event loop pair.
pub trait Version: Send + Sync + 'static {
    type Client: Clone + Send + Sync + 'static;
    type EventLoop: Send + 'static;
    /// Prefix for messages naming the client ("" or "v5 ").
    const TAG: &'static str;

    fn poll(eventloop: &mut Self::EventLoop) -> impl Future<Output = Result<Step, String>> + Send;
    fn try_subscribe(client: &Self::Client, filter: &str, qos: u8) -> Result<()>;
    fn publish(
        client: &Self::Client,
        topic: &str,
        qos: u8,
        retain: bool,
        payload: Bytes,
    ) -> impl Future<Output = Result<()>> + Send;
    fn disconnect(client: &Self::Client) -> impl Future<Output = Result<()>> + Send;
}

/// MQTT 3.1.1 (`rumqttc`).
pub struct V4;

/// MQTT 5 (`rumqttc::v5`).
pub struct V5;

impl Version for V4 {
    type Client = rumqttc::AsyncClient;
    type EventLoop = rumqttc::EventLoop;
    const TAG: &'static str = "";

    async fn poll(eventloop: &mut Self::EventLoop) -> Result<Step, String> {
        use rumqttc::{Event, Packet, SubscribeReasonCode};
        Ok(match eventloop.poll().await.map_err(|e| e.to_string())? {
            Event::Incoming(Packet::ConnAck(_)) => Step::ConnAck,
            Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_)) => Step::Acked,
            Event::Incoming(Packet::SubAck(ack)) => Step::SubAck(
                if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                    Err(String::new())
                } else {
                    Ok(())
                },
            ),
            Event::Incoming(Packet::Publish(p)) => Step::Publish {
                topic: p.topic,
                payload: p.payload,
                qos: from_qos(p.qos),
                retain: p.retain,
            },
            Event::Outgoing(Outgoing::Disconnect) => Step::Disconnected,
            _ => Step::Other,
        })
    }

    fn try_subscribe(client: &Self::Client, filter: &str, qos: u8) -> Result<()> {
        Ok(client.try_subscribe(filter, to_qos(qos)?)?)
    }

    async fn publish(
        client: &Self::Client,
        topic: &str,
        qos: u8,
        retain: bool,
        payload: Bytes,
    ) -> Result<()> {
        Ok(client
            .publish_bytes(topic, to_qos(qos)?, retain, payload)
            .await?)
    }

    async fn disconnect(client: &Self::Client) -> Result<()> {
        Ok(client.disconnect().await?)
    }
}

/// The MQTT 5 twin of [`to_qos`].
pub(crate) fn to_qos5(qos: u8) -> Result<rumqttc::v5::mqttbytes::QoS> {
    use rumqttc::v5::mqttbytes::QoS;
    Ok(match to_qos(qos)? {
        rumqttc::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce => QoS::ExactlyOnce,
    })
}

/// The MQTT 5 twin of [`from_qos`].
pub(crate) fn from_qos5(qos: rumqttc::v5::mqttbytes::QoS) -> u8 {
    use rumqttc::v5::mqttbytes::QoS;
    match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

impl Version for V5 {
    type Client = rumqttc::v5::AsyncClient;
    type EventLoop = rumqttc::v5::EventLoop;
    const TAG: &'static str = "v5 ";

    async fn poll(eventloop: &mut Self::EventLoop) -> Result<Step, String> {
        use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
        use rumqttc::v5::Event;
        Ok(match eventloop.poll().await.map_err(|e| e.to_string())? {
            Event::Incoming(Packet::ConnAck(_)) => Step::ConnAck,
            Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_)) => Step::Acked,
            Event::Incoming(Packet::SubAck(ack)) => Step::SubAck(
                if ack
                    .return_codes
                    .iter()
                    .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
                {
                    Ok(())
                } else {
                    Err(format!(": {:?}", ack.return_codes))
                },
            ),
            Event::Incoming(Packet::Publish(p)) => Step::Publish {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: p.payload,
                qos: from_qos5(p.qos),
                retain: p.retain,
            },
            Event::Outgoing(Outgoing::Disconnect) => Step::Disconnected,
            _ => Step::Other,
        })
    }

    fn try_subscribe(client: &Self::Client, filter: &str, qos: u8) -> Result<()> {
        Ok(client.try_subscribe(filter, to_qos5(qos)?)?)
    }

    async fn publish(
        client: &Self::Client,
        topic: &str,
        qos: u8,
        retain: bool,
        payload: Bytes,
    ) -> Result<()> {
        Ok(client
            .publish_bytes(topic.to_owned(), to_qos5(qos)?, retain, payload)
            .await?)
    }

    async fn disconnect(client: &Self::Client) -> Result<()> {
        Ok(client.disconnect().await?)
    }
}

/// Reports the first connection's outcome to `connect`, then stays quiet.
pub(crate) struct FirstReady(Option<oneshot::Sender<Result<()>>>);

impl FirstReady {
    pub(crate) fn send(&mut self, result: Result<()>) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(result);
        }
    }

    fn pending(&self) -> bool {
        self.0.is_some()
    }
}

/// The last connection error an event loop reported.
#[derive(Debug, Default)]
pub(crate) struct LastError(Mutex<Option<String>>);

impl LastError {
    pub(crate) fn set(&self, error: String) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
    }

    pub(crate) fn get(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Spawns the task driving `eventloop`: every step but the final flushed
/// DISCONNECT goes to `on_step`, which reports readiness through
/// [`FirstReady`]. A failure before that is the connection's error; later
/// ones go to `on_error` and are retried. Returns the task once `on_step`
/// reported ready within [`CONNECT_TIMEOUT`]; `role` names the client in
/// errors (e.g. "publisher") and `awaited` what it waits for ("CONNACK").
pub(crate) async fn spawn_event_loop<V: Version>(
    mut eventloop: V::EventLoop,
    role: &str,
    awaited: &str,
    on_error: impl Fn(String) + Send + 'static,
    mut on_step: impl FnMut(Step, &mut FirstReady) + Send + 'static,
) -> Result<JoinHandle<()>> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let label = format!("{}{role}", V::TAG);
    let task = tokio::spawn({
        let label = label.clone();
        async move {
            let mut first = FirstReady(Some(ready_tx));
            loop {
                match V::poll(&mut eventloop).await {
                    // Flushed: stop here instead of reconnecting.
                    Ok(Step::Disconnected) => return,
                    Ok(step) => on_step(step, &mut first),
                    Err(e) => {
                        on_error(e.clone());
                        if first.pending() {
                            first.send(Err(anyhow!("connecting {label}: {e}")));
                            return;
                        }
                        tokio::time::sleep(RECONNECT_DELAY).await;
                    }
                }
            }
        }
    });
    let ready = within(CONNECT_TIMEOUT, &format!("{label} {awaited}"), async {
        ready_rx.await.map_err(|_| anyhow!("{role} task ended"))?
    })
    .await;
    match ready {
        Ok(()) => Ok(task),
        Err(e) => {
            task.abort();
            Err(e)
        }
    }
}

/// Counts QoS 1/2 publishes handed to an event loop against the PUBACKs and
/// PUBCOMPs that came back.
#[derive(Debug, Default)]
pub(crate) struct AckCounter {
    /// QoS 1/2 publishes handed to the event loop.
    expected: AtomicUsize,
    /// PUBACKs + PUBCOMPs received.
    acked: AtomicUsize,
}

impl AckCounter {
    pub(crate) fn ack(&self) {
        self.acked.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn expected(&self) -> usize {
        self.expected.load(Ordering::SeqCst)
    }

    /// QoS 1/2 publishes not yet acknowledged.
    pub(crate) fn unacked(&self) -> usize {
        self.expected()
            .saturating_sub(self.acked.load(Ordering::SeqCst))
    }

    /// Runs `queue` (which hands one publish to the event loop) within
    /// [`CONNECT_TIMEOUT`], counting it as expecting an ack when `qos > 0`
    /// and it was queued.
    pub(crate) async fn queue(
        &self,
        qos: u8,
        what: &str,
        queue: impl Future<Output = Result<()>>,
    ) -> Result<()> {
        if qos > 2 {
            bail!("QoS must be 0, 1 or 2, got {qos}");
        }
        if qos > 0 {
            self.expected.fetch_add(1, Ordering::SeqCst);
        }
        let queued = within(CONNECT_TIMEOUT, what, queue).await;
        if queued.is_err() && qos > 0 {
            self.expected.fetch_sub(1, Ordering::SeqCst);
        }
        queued
    }

    /// Waits until every QoS 1/2 publish so far got its PUBACK/PUBCOMP;
    /// `last_error` is called for the failure message only.
    pub(crate) async fn wait_acked(
        &self,
        timeout: Duration,
        last_error: impl FnOnce() -> Option<String>,
    ) -> Result<()> {
        if wait_until(timeout, || self.unacked() == 0).await {
            return Ok(());
        }
        bail!(
            "{} of {} QoS 1/2 publishes unacked after {timeout:?}; last error: {:?}",
            self.unacked(),
            self.expected(),
            last_error()
        )
    }
}

/// Queues DISCONNECT, then waits (bounded) for `task` to flush it and end.
pub(crate) async fn disconnect_and_join<V: Version>(
    client: &V::Client,
    task: Option<JoinHandle<()>>,
    role: &str,
) -> Result<()> {
    within(CONNECT_TIMEOUT, "queueing DISCONNECT", async {
        V::disconnect(client)
            .await
            .with_context(|| format!("{}{role} event loop is gone", V::TAG))
    })
    .await?;
    let task = task.ok_or_else(|| anyhow!("{role} already stopped"))?;
    within(CONNECT_TIMEOUT, "flushing DISCONNECT", async {
        task.await.with_context(|| format!("{}{role} task", V::TAG))
    })
    .await
}
