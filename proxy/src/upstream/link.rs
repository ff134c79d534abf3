//! One live connection: CONNECT/CONNACK, restore subscriptions, resend what is unacked,
//! then write queued messages in batches while reading the broker's packets.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{info, warn};

use super::admit::{self, BrokerLimits, Unsendable};
use super::backoff::FailReason;
use super::{ConnectedCount, Control, Exit, Io, Upstream, BATCH, CONNECT_TIMEOUT};
use crate::brokerset::now_ms;
use crate::codec::{self, Packet, Protocol};
use crate::loopguard::message_hash;
use crate::qos::Resend;
use crate::queue::Queued;
use crate::transport::{clear_written, ReadSizer};

impl Upstream {
    pub(super) async fn connected(&mut self, stream: Box<dyn Io>) -> Exit {
        let (mut rd, mut wr) = tokio::io::split(stream);
        // Both buffers start empty and follow the traffic (see `ReadSizer`): most of a
        // fleet's upstream connections carry a message a second.
        let mut rbuf = BytesMut::new();
        let mut sizer = ReadSizer::default();
        self.skip = 0;
        let mut wbuf = BytesMut::new();
        let max = self.inbound_max();

        if let Err(e) = codec::write(self.proto, &self.connect_packet(), &mut wbuf) {
            return Exit::NoSession(FailReason::NoConnack, format!("encode CONNECT: {e}"));
        }
        if let Err(e) = wr.write_all(&wbuf).await {
            return Exit::NoSession(FailReason::NoConnack, format!("write CONNECT: {e}"));
        }
        wbuf.clear();
        let connack = timeout(CONNECT_TIMEOUT, async {
            loop {
                match codec::read(self.proto, &mut rbuf, max) {
                    Ok(Some(p)) => return Ok(p),
                    Ok(None) => {}
                    Err(e) => return Err(e.to_string()),
                }
                sizer.prepare(&mut rbuf);
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
                maximum_qos,
                max_packet_size,
                ..
            })) => {
                if let Some(rm) = receive_maximum {
                    self.out.set_max_inflight(rm);
                }
                self.limits = BrokerLimits::from_connack(max_packet_size, maximum_qos);
                session_present
            }
            Ok(Ok(Packet::ConnAck { code, .. })) => {
                return Exit::NoSession(
                    FailReason::from_connack(code),
                    format!("broker refused CONNECT (code {code:#04x})"),
                )
            }
            Ok(Ok(other)) => {
                return Exit::NoSession(
                    FailReason::NoConnack,
                    format!("expected CONNACK, got {other:?}"),
                )
            }
            Ok(Err(e)) => {
                return Exit::NoSession(FailReason::NoConnack, format!("reading CONNACK: {e}"))
            }
            Err(_) => {
                return Exit::NoSession(FailReason::NoConnack, "no CONNACK within 10 s".into())
            }
        };
        self.broker().stats.connects.fetch_add(1, Ordering::Relaxed);
        let _connected = ConnectedCount::new(self.p.broker.clone());
        self.broker().stats.clear_error();
        self.connected_at = Some(Instant::now());
        info!(broker = self.broker().label(), client_id = %self.client_id(), session_present, "upstream connected");
        let _ = self.link.send(Some(session_present));

        // Subscriptions are restored unless the broker kept the session.
        if let (false, false, Some(pkid)) =
            (session_present, self.subs.is_empty(), self.out.reserve())
        {
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
        // One keepalive timer for the connection, moved only when it fires: re-arming it on
        // every write would insert into and remove from the timer wheel once per message.
        // Its deadline never lies after the real one (`ping_at`, which only moves later
        // with writes), so firing early just re-arms it.
        let ping_timer = sleep_until(last_write + keep_alive);
        tokio::pin!(ping_timer);
        // A broker that kept the session sends what it queued right behind the CONNACK,
        // often in the same read: handle it now, not at the next read (maybe a keepalive
        // later).
        if let Err(e) = self
            .read_packets(&mut rbuf, &mut wbuf, max, &mut ping_sent)
            .await
        {
            return Exit::Failed(e);
        }
        loop {
            self.fill(&mut wbuf);
            if !wbuf.is_empty() {
                if let Err(e) = wr.write_all(&wbuf).await {
                    return Exit::Failed(format!("write: {e}"));
                }
                clear_written(&mut wbuf);
                last_write = Instant::now();
            }
            if self.finished() {
                if self.closing == Some(false) {
                    let _ = codec::write(
                        self.proto,
                        &Packet::Disconnect {
                            reason: 0,
                            session_expiry: self
                                .close_expiry
                                .filter(|_| self.proto == Protocol::V5),
                        },
                        &mut wbuf,
                    );
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
                sizer.prepare(&mut rbuf);
                match rd.read_buf(&mut rbuf).now_or_never() {
                    None => continue,
                    Some(Ok(0)) => return Exit::Failed("broker closed the connection".into()),
                    Some(Err(e)) => return Exit::Failed(format!("read: {e}")),
                    Some(Ok(n)) => {
                        sizer.read(n);
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
            sizer.prepare(&mut rbuf);
            tokio::select! {
                r = rd.read_buf(&mut rbuf) => match r {
                    Ok(0) => return Exit::Failed("broker closed the connection".into()),
                    Ok(n) => {
                        sizer.read(n);
                        if let Err(e) = self.read_packets(&mut rbuf, &mut wbuf, max, &mut ping_sent).await {
                            return Exit::Failed(e);
                        }
                        sizer.shrink(&mut rbuf);
                    }
                    Err(e) => return Exit::Failed(format!("read: {e}")),
                },
                _ = self.queue.notify.notified(), if room => {}
                c = self.ctl.recv() => match c.map(|c| *c) {
                    Some(Control::Subscribe { filters, reply }) => {
                        self.merge_subs(filters.clone());
                        let Some(pkid) = self.out.reserve() else {
                            // Every packet id is in use: refuse rather than wait.
                            let _ = reply.send(vec![codec::SUBACK_FAILURE; filters.len()]);
                            continue;
                        };
                        let _ = codec::write(self.proto, &Packet::Subscribe { pkid, filters }, &mut wbuf);
                        self.pending_subacks.push((pkid, reply));
                    }
                    Some(Control::Unsubscribe { filters }) => {
                        self.subs.retain(|s| !filters.contains(&s.filter));
                        if let Some(pkid) = self.out.reserve() {
                            let _ = codec::write(self.proto, &Packet::Unsubscribe { pkid, filters }, &mut wbuf);
                        }
                    }
                    Some(Control::Close { with_will }) => self.closing = Some(with_will),
                    Some(Control::SessionExpiry(e)) => self.close_expiry = Some(e),
                    Some(Control::Handover { broker, subs }) => {
                        // One connection per client id: DISCONNECT (no will) before the
                        // successor connects; what is unacked is resent there, in order.
                        let _ = codec::write(self.proto, &Packet::Disconnect { reason: 0, session_expiry: None }, &mut wbuf);
                        let _ = wr.write_all(&wbuf).await;
                        let _ = wr.shutdown().await;
                        self.take_over(broker, subs);
                        return Exit::Handover;
                    }
                    None => {
                        // The session vanished without closing us: behave like a lost device.
                        self.closing = Some(true);
                    }
                },
                _ = &mut ping_timer, if ping_at.is_some() => {
                    let now = Instant::now();
                    match ping_at {
                        Some(at) if at > now => ping_timer.as_mut().reset(at),
                        _ if ping_sent.is_some() => {
                            return Exit::Failed("broker did not answer PINGREQ".into());
                        }
                        _ => {
                            let _ = codec::write(self.proto, &Packet::PingReq, &mut wbuf);
                            ping_sent = Some(now);
                            ping_timer.as_mut().reset(now + keep_alive / 2);
                        }
                    }
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
            if self.skip > 0 {
                // The rest of an oversized PUBLISH, discarded as it arrives.
                let n = self.skip.min(rbuf.len());
                rbuf.advance(n);
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(());
                }
            }
            match codec::read(self.proto, rbuf, max) {
                Ok(Some(p)) => {
                    if matches!(p, Packet::PingResp) {
                        *ping_sent = None;
                    }
                    self.on_packet(p, wbuf).await?;
                }
                Ok(None) => return Ok(()),
                Err(e @ codec::CodecError::TooLarge { .. }) => match admit::oversized_publish(rbuf)
                {
                    Ok(None) => return Ok(()),
                    Ok(Some(o)) => self.skip_oversized(o, wbuf),
                    Err(()) => return Err(format!("packet from broker: {e}")),
                },
                Err(e) => return Err(format!("malformed packet from broker: {e}")),
            }
        }
    }

    /// Acknowledges a PUBLISH too large to read (so the broker does not redeliver it) and
    /// skips its bytes; counted as `mqtt_proxy_messages_dropped_total{reason="inbound_too_large"}`.
    fn skip_oversized(&mut self, o: admit::Oversized, wbuf: &mut BytesMut) {
        let b = self.broker();
        b.metrics.dropped_inbound_too_large.inc();
        if let Some(held) = self.log_limit.allow(10) {
            warn!(
                broker = b.label(),
                bytes = o.frame_len,
                max = self.inbound_max(),
                suppressed = held,
                "message from the broker exceeds the maximum packet size: acknowledged and dropped"
            );
        }
        let ack = match o.qos {
            1 => Some(Packet::PubAck {
                pkid: o.pkid,
                code: 0,
            }),
            2 => Some(Packet::PubRec {
                pkid: o.pkid,
                code: 0,
            }),
            _ => None,
        };
        if let Some(ack) = ack {
            let _ = codec::write(self.proto, &ack, wbuf);
        }
        self.skip = o.frame_len;
    }

    /// Moves queued messages into the write buffer while the in-flight window has room.
    fn fill(&mut self, wbuf: &mut BytesMut) {
        // Per call, not per connection: allocated only when something is queued, and not
        // kept by thousands of quiet upstreams.
        let mut batch: Vec<Queued> = Vec::new();
        let broker = self.p.broker.clone();
        let prefix = broker.rule.topic_prefix.as_deref();
        let prefix_len = prefix.map_or(0, str::len);
        let mut written = 0u64;
        while self.out.room() > 0 && wbuf.len() < 256 * 1024 {
            self.queue.pop_batch(self.out.room().min(BATCH), &mut batch);
            if batch.is_empty() {
                break;
            }
            let now = std::time::Instant::now();
            for Queued {
                msg,
                qos,
                done,
                echo,
                expires_at,
            } in batch.drain(..)
            {
                let (msg, qos) =
                    match admit::admit(msg, qos, expires_at, prefix_len, &self.limits, now) {
                        Ok(ok) => ok,
                        Err((why, msg)) => {
                            self.unsendable(why, &msg, done);
                            continue;
                        }
                    };
                let start = wbuf.len();
                let pkid = if qos == 0 { 0 } else { self.out.peek_pkid() };
                codec::encode_publish(self.proto, pkid, false, &msg, prefix, qos, wbuf);
                if self
                    .limits
                    .max_packet
                    .is_some_and(|max| wbuf.len() - start > max)
                {
                    // Sending it would make the broker close the connection (MQTT 5 §3.1.2.24).
                    wbuf.truncate(start);
                    self.unsendable(Unsendable::TooLarge, &msg, done);
                    continue;
                }
                written += 1;
                done.report(crate::events::Outcome::Written);
                if echo {
                    // Recorded when written, not when queued: an outage does not age it.
                    self.echoes.record(
                        "",
                        message_hash(&msg.topic, &msg.payload),
                        Instant::now().into_std(),
                    );
                }
                if qos == 0 {
                    done.delivered(&broker.metrics.latency);
                } else {
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
}
