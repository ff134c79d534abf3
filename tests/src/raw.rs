//! A raw MQTT client: packets in, packets out, nothing automatic. Built on the
//! `mqttbytes` codecs that ship with rumqttc, over a plain `TcpStream`.
//!
//! The session and protocol tests need what a well-behaved client library
//! hides: a CONNACK's `session present` flag and properties, not acknowledging
//! deliveries (to see them redelivered), never reading at all (a stuck device),
//! sending topic aliases, empty client ids, a tiny Maximum Packet Size. Every
//! read is bounded by a timeout.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest packet a raw client reads.
const MAX_READ: usize = 16 << 20;

/// A raw MQTT 5 connection.
pub struct Raw5 {
    stream: TcpStream,
    rbuf: BytesMut,
}

impl Raw5 {
    /// Opens TCP to `port` and sends `connect` (no will, no login); returns after CONNACK.
    pub async fn connect(port: u16, connect: v5::Connect) -> Result<(Self, v5::ConnAck)> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("TCP connect to {port}"))?;
        let mut raw = Self {
            stream,
            rbuf: BytesMut::new(),
        };
        raw.send(v5::Packet::Connect(connect, None, None)).await?;
        match raw.recv(crate::CONNECT_TIMEOUT).await? {
            v5::Packet::ConnAck(ack) => Ok((raw, ack)),
            other => bail!("expected CONNACK, got {other:?}"),
        }
    }

    /// A CONNECT with `client_id`, `clean_start` and an optional Session Expiry Interval.
    pub fn connect_packet(client_id: &str, clean_start: bool, expiry: Option<u32>) -> v5::Connect {
        let properties = expiry.map(|e| v5::ConnectProperties {
            session_expiry_interval: Some(e),
            ..Default::default()
        });
        v5::Connect {
            keep_alive: 30,
            client_id: client_id.to_owned(),
            clean_start,
            properties,
        }
    }

    pub async fn send(&mut self, packet: v5::Packet) -> Result<()> {
        let mut buf = BytesMut::new();
        packet
            .write(&mut buf, None)
            .map_err(|e| anyhow!("encoding {packet:?}: {e}"))?;
        self.stream.write_all(&buf).await.context("writing")?;
        Ok(())
    }

    /// Subscribes to one filter at `qos` and returns the SUBACK (other packets
    /// that arrive first are returned too, in order).
    pub async fn subscribe(
        &mut self,
        pkid: u16,
        filters: Vec<v5::Filter>,
        properties: Option<v5::SubscribeProperties>,
    ) -> Result<(v5::SubAck, Vec<v5::Packet>)> {
        self.send(v5::Packet::Subscribe(v5::Subscribe {
            pkid,
            filters,
            properties,
        }))
        .await?;
        let mut before = Vec::new();
        loop {
            match self.recv(crate::CONNECT_TIMEOUT).await? {
                v5::Packet::SubAck(ack) if ack.pkid == pkid => return Ok((ack, before)),
                other => before.push(other),
            }
        }
    }

    /// The next packet, within `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Result<v5::Packet> {
        tokio::time::timeout(timeout, async {
            loop {
                match v5::Packet::read(&mut self.rbuf, Some(MAX_READ as u32)) {
                    Ok(p) => return Ok(p),
                    Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(e) => bail!("malformed packet from the server: {e}"),
                }
                if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                    bail!("connection closed");
                }
            }
        })
        .await
        .map_err(|_| anyhow!("no packet within {timeout:?}"))?
    }

    /// PUBLISHes received within `window` (other packets are skipped; QoS 1/2
    /// deliveries are acknowledged when `ack`).
    pub async fn publishes(&mut self, window: Duration, ack: bool) -> Result<Vec<v5::Publish>> {
        let deadline = tokio::time::Instant::now() + window;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(out);
            }
            match self.recv(left).await {
                Ok(packet) => out.extend(self.take_publish(packet, ack).await?),
                Err(_) => return Ok(out),
            }
        }
    }

    /// Waits until `n` PUBLISHes arrived (acknowledging them when `ack`), at most `timeout`.
    pub async fn wait_publishes(
        &mut self,
        n: usize,
        timeout: Duration,
        ack: bool,
    ) -> Result<Vec<v5::Publish>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Ok(packet) => out.extend(self.take_publish(packet, ack).await?),
                Err(e) => bail!("{} of {n} PUBLISHes, then: {e}: {out:?}", out.len()),
            }
        }
        Ok(out)
    }

    /// A received PUBLISH is returned (acknowledged when `ack`), a PUBREL completed when
    /// `ack`; anything else is skipped (`None`).
    async fn take_publish(&mut self, packet: v5::Packet, ack: bool) -> Result<Option<v5::Publish>> {
        match packet {
            v5::Packet::Publish(p) => {
                if ack {
                    self.ack(&p).await?;
                }
                Ok(Some(p))
            }
            v5::Packet::PubRel(r) if ack => {
                self.send(v5::Packet::PubComp(v5::PubComp::new(r.pkid, None)))
                    .await?;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    async fn ack(&mut self, p: &v5::Publish) -> Result<()> {
        match p.qos as u8 {
            1 => {
                self.send(v5::Packet::PubAck(v5::PubAck::new(p.pkid, None)))
                    .await
            }
            2 => {
                self.send(v5::Packet::PubRec(v5::PubRec::new(p.pkid, None)))
                    .await
            }
            _ => Ok(()),
        }
    }

    pub async fn disconnect(mut self) -> Result<()> {
        self.send(v5::Packet::Disconnect(v5::Disconnect::new(
            v5::DisconnectReasonCode::NormalDisconnection,
        )))
        .await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    /// DISCONNECT carrying a new Session Expiry Interval.
    pub async fn disconnect_with_expiry(mut self, expiry: u32) -> Result<()> {
        self.send(v5::Packet::Disconnect(v5::Disconnect {
            reason_code: v5::DisconnectReasonCode::NormalDisconnection,
            properties: Some(v5::DisconnectProperties {
                session_expiry_interval: Some(expiry),
                reason_string: None,
                user_properties: Vec::new(),
                server_reference: None,
            }),
        }))
        .await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    /// Waits until the server closes the connection (EOF, reset, or a DISCONNECT), at most `timeout`.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                bail!("connection still open after {timeout:?}");
            }
            match self.recv(left).await {
                Ok(v5::Packet::Disconnect(_)) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.to_string().starts_with("no packet") => {
                    bail!("connection still open after {timeout:?}")
                }
                Err(_) => return Ok(()),
            }
        }
    }
}

/// A raw MQTT 3.1.1 connection.
pub struct Raw4 {
    stream: TcpStream,
    rbuf: BytesMut,
}

impl Raw4 {
    /// Opens TCP to `port`, sends CONNECT and returns after CONNACK.
    pub async fn connect(port: u16, client_id: &str, clean: bool) -> Result<(Self, v4::ConnAck)> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("TCP connect to {port}"))?;
        let mut raw = Self {
            stream,
            rbuf: BytesMut::new(),
        };
        let mut connect = v4::Connect::new(client_id);
        connect.clean_session = clean;
        connect.keep_alive = 30;
        raw.send(v4::Packet::Connect(connect)).await?;
        match raw.recv(crate::CONNECT_TIMEOUT).await? {
            v4::Packet::ConnAck(ack) => Ok((raw, ack)),
            other => bail!("expected CONNACK, got {other:?}"),
        }
    }

    /// The underlying socket, e.g. to stop reading from it altogether.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    pub async fn send(&mut self, packet: v4::Packet) -> Result<()> {
        let mut buf = BytesMut::new();
        packet
            .write(&mut buf, MAX_READ)
            .map_err(|e| anyhow!("encoding {packet:?}: {e}"))?;
        self.stream.write_all(&buf).await.context("writing")?;
        Ok(())
    }

    /// Subscribes to `filter` at `qos` and waits for the SUBACK.
    pub async fn subscribe(&mut self, pkid: u16, filter: &str, qos: u8) -> Result<v4::SubAck> {
        let mut subscribe = v4::Subscribe::new(filter, crate::to_qos(qos)?);
        subscribe.pkid = pkid;
        self.send(v4::Packet::Subscribe(subscribe)).await?;
        loop {
            if let v4::Packet::SubAck(ack) = self.recv(crate::CONNECT_TIMEOUT).await? {
                return Ok(ack);
            }
        }
    }

    /// The next packet, within `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Result<v4::Packet> {
        tokio::time::timeout(timeout, async {
            loop {
                match v4::Packet::read(&mut self.rbuf, MAX_READ) {
                    Ok(p) => return Ok(p),
                    Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(e) => bail!("malformed packet from the server: {e}"),
                }
                if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                    bail!("connection closed");
                }
            }
        })
        .await
        .map_err(|_| anyhow!("no packet within {timeout:?}"))?
    }

    /// Waits until `n` PUBLISHes arrived, acknowledging QoS 1/2 when `ack`, at most `timeout`.
    pub async fn wait_publishes(
        &mut self,
        n: usize,
        timeout: Duration,
        ack: bool,
    ) -> Result<Vec<v4::Publish>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Ok(v4::Packet::Publish(p)) => {
                    if ack {
                        match p.qos as u8 {
                            1 => {
                                self.send(v4::Packet::PubAck(v4::PubAck::new(p.pkid)))
                                    .await?
                            }
                            2 => {
                                self.send(v4::Packet::PubRec(v4::PubRec::new(p.pkid)))
                                    .await?
                            }
                            _ => {}
                        }
                    }
                    out.push(p);
                }
                Ok(v4::Packet::PubRel(r)) if ack => {
                    self.send(v4::Packet::PubComp(v4::PubComp::new(r.pkid)))
                        .await?;
                }
                Ok(_) => {}
                Err(e) => bail!("{} of {n} PUBLISHes, then: {e}: {out:?}", out.len()),
            }
        }
        Ok(out)
    }

    pub async fn disconnect(mut self) -> Result<()> {
        self.send(v4::Packet::Disconnect).await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }
}
