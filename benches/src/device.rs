//! A lean raw-MQTT device for the fleet and churn scenarios: thousands of these share one
//! process, so each holds one socket and a read buffer that starts small (the publishers
//! of `run`/`compare` keep 64 KiB each, which is right for one fast device and wrong for
//! 4,000 slow ones).

use std::time::Duration;

use bytes::{Buf, BytesMut};
use rumqttc::mqttbytes::v4::{Connect, Packet, PubAck, Subscribe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::payload::Header;
use crate::wire::{self, Frame, WireError};

pub const KEEP_ALIVE_SECS: u16 = 60;
/// Idle devices ping this often (well inside the proxy's 1.5 × keepalive).
pub const PING_EVERY: Duration = Duration::from_secs(20);

/// What a read turned up, for the caller to count.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Got {
    pub pubacks: u64,
    /// PUBLISHes received (the proxy delivering a subscription).
    pub publishes: u64,
}

pub struct Device {
    stream: TcpStream,
    buf: BytesMut,
    out: BytesMut,
    topic: String,
}

impl Device {
    /// TCP connect, CONNECT (clean session), CONNACK, all within `timeout`.
    pub async fn connect(
        addr: &str,
        client_id: &str,
        timeout: Duration,
    ) -> Result<Device, WireError> {
        let work = async {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut d = Device {
                stream,
                buf: BytesMut::with_capacity(256),
                out: BytesMut::with_capacity(256),
                topic: String::new(),
            };
            let mut c = Connect::new(client_id);
            c.keep_alive = KEEP_ALIVE_SECS;
            c.clean_session = true;
            wire::encode(&mut d.out, Packet::Connect(c))?;
            d.flush().await?;
            d.wait_for(|f| match f {
                Frame::ConnAck(0) => Some(Ok(())),
                Frame::ConnAck(code) => {
                    Some(Err(WireError::Refused(format!("CONNACK code {code}"))))
                }
                _ => None,
            })
            .await?;
            Ok(d)
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| WireError::Timeout("CONNACK"))?
    }

    /// SUBSCRIBE one filter (packet id 1) and wait for a successful SUBACK.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: u8,
        timeout: Duration,
    ) -> Result<(), WireError> {
        let mut s = Subscribe::new(filter, wire::qos_from(qos));
        s.pkid = 1;
        wire::encode(&mut self.out, Packet::Subscribe(s))?;
        self.flush().await?;
        let wait = self.wait_for(|f| match f {
            Frame::SubAck(1, code) if code & 0x80 != 0 => {
                Some(Err(WireError::Refused("SUBACK failure".into())))
            }
            Frame::SubAck(1, _) => Some(Ok(())),
            _ => None,
        });
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| WireError::Timeout("SUBACK"))?
    }

    /// Queues one PUBLISH of `topic` carrying `header`, padded to `payload_size`.
    pub fn publish(
        &mut self,
        topic_root: &str,
        device: usize,
        qos: u8,
        header: Header,
        payload_size: usize,
    ) {
        use std::fmt::Write as _;
        self.topic.clear();
        let _ = write!(self.topic, "{topic_root}/d{device}/{}", header.seq);
        // Packet ids 1..=65535, never 0.
        let pkid = (header.seq % 65_535) as u16 + 1;
        wire::encode_publish(&mut self.out, &self.topic, qos, pkid, header, payload_size);
    }

    pub fn ping(&mut self) {
        let _ = wire::encode(&mut self.out, Packet::PingReq);
    }

    pub fn disconnect(&mut self) {
        let _ = wire::encode(&mut self.out, Packet::Disconnect);
    }

    /// Writes what is queued.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Waits for the next read and handles every complete frame in it: PUBACKs are
    /// counted, received PUBLISHes counted and (QoS 1) acknowledged. Cancel-safe.
    pub async fn read(&mut self) -> Result<Got, WireError> {
        self.buf.reserve(256);
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(WireError::Closed);
        }
        let mut got = Got::default();
        while let Some((frame, len)) = wire::parse_frame(&self.buf)? {
            match frame {
                Frame::PubAck(_) => got.pubacks += 1,
                Frame::Publish { qos, pkid, .. } => {
                    got.publishes += 1;
                    if qos == 1 {
                        wire::encode(&mut self.out, Packet::PubAck(PubAck::new(pkid)))?;
                    }
                }
                _ => {}
            }
            self.buf.advance(len);
        }
        Ok(got)
    }

    /// Sends DISCONNECT and closes the socket (bounded by `timeout`).
    pub async fn close(mut self, timeout: Duration) {
        self.disconnect();
        let _ = tokio::time::timeout(timeout, async {
            let _ = self.flush().await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }

    async fn wait_for(
        &mut self,
        mut want: impl FnMut(Frame<'_>) -> Option<Result<(), WireError>>,
    ) -> Result<(), WireError> {
        loop {
            while let Some((frame, len)) = wire::parse_frame(&self.buf)? {
                let got = want(frame);
                self.buf.advance(len);
                if let Some(r) = got {
                    return r;
                }
            }
            self.buf.reserve(256);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(WireError::Closed);
            }
        }
    }
}
