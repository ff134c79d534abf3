//! The wire: one internal packet model for MQTT 3.1.1 and 5.0, read and written with the
//! `mqttbytes` codecs that ship in rumqttc (no hand-written parsing).
//!
//! The session and upstream tasks speak only [`Packet`]; the version difference stays here.
//! PUBLISH is the hot path, so it is *encoded* by [`encode_publish`] straight from the shared
//! [`Message`] (topic prefix applied while writing, no per-upstream `String`), and byte-level
//! tests prove the result reads back identically through the rumqttc codec.
//!
//! `codec_read.rs` and `codec_write.rs` map packets from and to rumqttc's types,
//! `codec_codes.rs` the reason codes; `codec_tests.rs` holds the byte-level tests.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use rumqttc::mqttbytes::{self as m4b, v4};
use rumqttc::v5::mqttbytes::{self as m5b, v5};

#[path = "codec_codes.rs"]
mod codes;
#[path = "codec_read.rs"]
mod read_impl;
#[path = "codec_write.rs"]
mod write_impl;
pub use codes::UNSUBACK_NO_SUBSCRIPTION;
use read_impl::{from_v4, from_v5};
use write_impl::{to_v4, to_v5};

/// The protocol level of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    V4,
    V5,
}

impl From<crate::broker::MqttVersion> for Protocol {
    fn from(v: crate::broker::MqttVersion) -> Self {
        match v {
            crate::broker::MqttVersion::V311 => Protocol::V4,
            crate::broker::MqttVersion::V5 => Protocol::V5,
        }
    }
}

/// Codec failures. Any of them closes only the connection it happened on.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("malformed MQTT 3.1.1 packet: {0}")]
    V4(#[from] m4b::Error),
    #[error("malformed MQTT 5 packet: {0}")]
    V5(#[from] m5b::Error),
    #[error("topic is not valid UTF-8")]
    TopicNotUtf8,
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocol(u8),
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: usize, max: usize },
}

/// A message as it travels through the proxy. Cloning is cheap (`Bytes` + `Arc`), so one
/// device publish fans out to N upstream queues without copying the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Topic bytes, validated UTF-8.
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 properties, passed through to v5 peers (topic alias and subscription ids removed).
    pub props: Option<Arc<v5::PublishProperties>>,
}

impl Message {
    pub fn new(topic: &str, payload: impl Into<Bytes>, qos: u8, retain: bool) -> Self {
        Self {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: payload.into(),
            qos: qos.min(2),
            retain,
            props: None,
        }
    }
    pub fn topic_str(&self) -> &str {
        // Validated when the message was built from the wire; an invalid topic can't exist.
        std::str::from_utf8(&self.topic).unwrap_or("")
    }
    /// Bytes this message occupies in a queue (topic, payload and MQTT 5 properties, plus
    /// a fixed overhead); used for byte limits. A 1-byte payload carrying 1 MiB of user
    /// properties weighs ~1 MiB, not ~70 bytes.
    pub fn weight(&self) -> usize {
        self.topic.len() + self.payload.len() + 64 + self.props.as_deref().map_or(0, props_weight)
    }
}

/// Heap bytes held by a message's properties (strings and byte fields, with a small
/// per-field overhead for their headers and `String` bookkeeping).
fn props_weight(p: &v5::PublishProperties) -> usize {
    let s = |o: &Option<String>| o.as_ref().map_or(0, |s| s.len() + 24);
    16 + s(&p.response_topic)
        + s(&p.content_type)
        + p.correlation_data.as_ref().map_or(0, |b| b.len() + 32)
        + p.user_properties
            .iter()
            .map(|(k, v)| k.len() + v.len() + 48)
            .sum::<usize>()
        + p.subscription_identifiers.len() * 8
}

/// Will message from a device CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    pub message: Message,
    pub delay_interval: Option<u32>,
}

/// A CONNECT, version independent. Its `Debug` output redacts the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: Protocol,
    pub client_id: String,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub session_expiry: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub max_packet_size: Option<u32>,
}

impl std::fmt::Debug for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect")
            .field("protocol", &self.protocol)
            .field("client_id", &self.client_id)
            .field("clean_session", &self.clean_session)
            .field("keep_alive", &self.keep_alive)
            .field(
                "will_topic",
                &self.will.as_ref().map(|w| w.message.topic_str()),
            )
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("session_expiry", &self.session_expiry)
            .field("receive_maximum", &self.receive_maximum)
            .field("max_packet_size", &self.max_packet_size)
            .finish()
    }
}

/// One SUBSCRIBE filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubFilter {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0 send retained on subscribe, 1 only on new subscription, 2 never.
    pub retain_handling: u8,
    /// MQTT 5 Subscription Identifier of the SUBSCRIBE that made it (device side only:
    /// never sent upstream, handed back on the deliveries it matches).
    pub id: Option<usize>,
}

impl SubFilter {
    pub fn new(filter: impl Into<String>, qos: u8) -> Self {
        Self {
            filter: filter.into(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
            id: None,
        }
    }
}

/// SUBACK code meaning failure (MQTT 3.1.1 0x80; v5 uses it as "unspecified error").
pub const SUBACK_FAILURE: u8 = 0x80;
/// MQTT 5 reason code "Not authorized" (PUBACK, PUBREC, SUBACK); 3.1.1 has no such code,
/// so there it becomes a plain acknowledgement (PUBACK/PUBREC) or 0x80 (SUBACK).
pub const NOT_AUTHORIZED: u8 = 0x87;
/// MQTT 5 PUBACK/PUBREC reasons for a publish refused by a per-device limit.
pub const TOPIC_NAME_INVALID: u8 = 0x90;
pub const QUOTA_EXCEEDED: u8 = 0x97;

/// The packets the proxy handles, for either protocol level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck {
        session_present: bool,
        /// v4 return code or v5 reason code; 0 is success.
        code: u8,
        receive_maximum: Option<u16>,
        maximum_qos: Option<u8>,
        max_packet_size: Option<u32>,
        /// MQTT 5: the client id the server assigned to a CONNECT with an empty one.
        assigned_client_id: Option<String>,
        /// MQTT 5: how many topic aliases the peer may set up towards us.
        topic_alias_max: Option<u16>,
    },
    Publish {
        pkid: u16,
        dup: bool,
        msg: Message,
        /// MQTT 5 Topic Alias the sender set (the topic may then be empty): resolved by the
        /// receiving connection, never passed on.
        topic_alias: Option<u16>,
    },
    PubAck {
        pkid: u16,
        code: u8,
    },
    PubRec {
        pkid: u16,
        code: u8,
    },
    PubRel {
        pkid: u16,
    },
    PubComp {
        pkid: u16,
    },
    Subscribe {
        pkid: u16,
        filters: Vec<SubFilter>,
    },
    SubAck {
        pkid: u16,
        codes: Vec<u8>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    UnsubAck {
        pkid: u16,
        /// MQTT 5 reason code per filter (0 success, 0x11 no subscription existed); a 3.1.1
        /// UNSUBACK carries none.
        codes: Vec<u8>,
    },
    PingReq,
    PingResp,
    Disconnect {
        reason: u8,
        /// MQTT 5: a new Session Expiry Interval set at disconnect.
        session_expiry: Option<u32>,
    },
    /// MQTT 5 AUTH: not supported; sessions answer it by disconnecting.
    Auth,
}

/// Reads a CONNECT from the start of `buf`, detecting the protocol level from the packet.
/// `Ok(None)` means more bytes are needed.
pub fn read_connect(buf: &mut BytesMut, max: usize) -> Result<Option<Connect>, CodecError> {
    let header = match m4b::check(buf.iter(), max) {
        Ok(h) => h,
        Err(m4b::Error::InsufficientBytes(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if buf[0] >> 4 != 1 {
        return Err(m4b::Error::NotConnect(header.packet_type()?).into());
    }
    // Fixed header: type byte + 1-4 remaining-length bytes (continuation bit 0x80).
    let len_bytes = buf[1..]
        .iter()
        .take(4)
        .position(|b| b & 0x80 == 0)
        .unwrap_or(3)
        + 1;
    let _ = header;
    // Variable header: protocol name (2-byte length + "MQTT"), then the level.
    let level_at = 1 + len_bytes + 6;
    let level = *buf.get(level_at).ok_or(m4b::Error::MalformedPacket)?;
    let proto = match level {
        4 => Protocol::V4,
        5 => Protocol::V5,
        other => return Err(CodecError::UnsupportedProtocol(other)),
    };
    match read(proto, buf, max)? {
        Some(Packet::Connect(c)) => Ok(Some(*c)),
        Some(_) => Err(m4b::Error::UnexpectedConnect.into()),
        None => Ok(None),
    }
}

/// Reads one packet; `Ok(None)` means more bytes are needed.
pub fn read(proto: Protocol, buf: &mut BytesMut, max: usize) -> Result<Option<Packet>, CodecError> {
    match proto {
        Protocol::V4 => match v4::Packet::read(buf, max) {
            Ok(p) => Ok(Some(from_v4(p)?)),
            Err(m4b::Error::InsufficientBytes(_)) => Ok(None),
            Err(m4b::Error::PayloadSizeLimitExceeded(size)) => {
                Err(CodecError::TooLarge { size, max })
            }
            Err(e) => Err(e.into()),
        },
        // MQTT 5 §3.14.2.1: a DISCONNECT with reason 0 and no properties may have remaining
        // length 0 (mosquitto_pub -V 5 sends exactly that); rumqttc refuses it.
        Protocol::V5 if buf.starts_with(&[0xE0, 0x00]) => {
            let _ = buf.split_to(2);
            Ok(Some(Packet::Disconnect {
                reason: 0,
                session_expiry: None,
            }))
        }
        Protocol::V5 => match v5::Packet::read(buf, Some(max as u32)) {
            Ok(p) => Ok(Some(from_v5(p)?)),
            Err(m5b::Error::InsufficientBytes(_)) => Ok(None),
            Err(m5b::Error::PayloadSizeLimitExceeded { pkt_size, max }) => {
                Err(CodecError::TooLarge {
                    size: pkt_size,
                    max: max as usize,
                })
            }
            Err(e) => Err(e.into()),
        },
    }
}

fn topic_bytes(t: Bytes) -> Result<Bytes, CodecError> {
    std::str::from_utf8(&t).map_err(|_| CodecError::TopicNotUtf8)?;
    Ok(t)
}

fn qos_u8_v4(q: m4b::QoS) -> u8 {
    q as u8
}
fn qos_u8_v5(q: m5b::QoS) -> u8 {
    q as u8
}
fn qos_v4(q: u8) -> m4b::QoS {
    match q {
        0 => m4b::QoS::AtMostOnce,
        1 => m4b::QoS::AtLeastOnce,
        _ => m4b::QoS::ExactlyOnce,
    }
}
fn qos_v5(q: u8) -> m5b::QoS {
    match q {
        0 => m5b::QoS::AtMostOnce,
        1 => m5b::QoS::AtLeastOnce,
        _ => m5b::QoS::ExactlyOnce,
    }
}

/// Writes one packet. PUBLISH goes through [`encode_publish`].
pub fn write(proto: Protocol, packet: &Packet, buf: &mut BytesMut) -> Result<(), CodecError> {
    if let Packet::Publish { pkid, dup, msg, .. } = packet {
        encode_publish(proto, *pkid, *dup, msg, None, msg.qos, buf);
        return Ok(());
    }
    match proto {
        Protocol::V4 => {
            let p = to_v4(packet)?;
            p.write(buf, usize::MAX)?;
        }
        Protocol::V5 => {
            let p = to_v5(packet)?;
            p.write(buf, None)?;
        }
    }
    Ok(())
}

/// Writes a PUBLISH for `msg` with an optional topic `prefix` and the given QoS, straight
/// into `buf`: the hot path of the fan-out, without building an intermediate packet.
pub fn encode_publish(
    proto: Protocol,
    pkid: u16,
    dup: bool,
    msg: &Message,
    prefix: Option<&str>,
    qos: u8,
    buf: &mut BytesMut,
) {
    let prefix = prefix.unwrap_or("").as_bytes();
    let topic_len = prefix.len() + msg.topic.len();
    // MQTT 5 properties: one zero length byte when there are none (no allocation on the
    // hot path). PublishProperties::write only fails for values that can't be encoded,
    // which never come out of the reader; fall back to no properties rather than panic.
    let mut props = BytesMut::new();
    if let (Protocol::V5, Some(p)) = (proto, &msg.props) {
        if p.write(&mut props).is_err() {
            props.clear();
        }
    }
    let props_len = match proto {
        Protocol::V4 => 0,
        Protocol::V5 if props.is_empty() => 1,
        Protocol::V5 => props.len(),
    };
    let remaining = 2 + topic_len + if qos > 0 { 2 } else { 0 } + props_len + msg.payload.len();
    buf.reserve(5 + remaining);
    buf.put_u8(0x30 | (u8::from(dup && qos > 0) << 3) | (qos << 1) | u8::from(msg.retain));
    let mut len = remaining;
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            break;
        }
    }
    buf.put_u16(topic_len as u16);
    buf.extend_from_slice(prefix);
    buf.extend_from_slice(&msg.topic);
    if qos > 0 {
        buf.put_u16(pkid);
    }
    if proto == Protocol::V5 && props.is_empty() {
        buf.put_u8(0);
    }
    buf.extend_from_slice(&props);
    buf.extend_from_slice(&msg.payload);
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
