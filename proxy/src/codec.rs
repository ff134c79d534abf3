//! The wire: one internal packet model for MQTT 3.1.1 and 5.0, read and written with the
//! `mqttbytes` codecs that ship in rumqttc (no hand-written parsing).
//!
//! The session and upstream tasks speak only [`Packet`]; the version difference stays here.
//! PUBLISH is the hot path, so it is *encoded* by [`encode_publish`] straight from the shared
//! [`Message`] (topic prefix applied while writing, no per-upstream `String`), and byte-level
//! tests prove the result reads back identically through the rumqttc codec.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use rumqttc::mqttbytes::{self as m4b, v4};
use rumqttc::v5::mqttbytes::{self as m5b, v5};

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
    /// a fixed overhead); used for byte limits.
    pub fn weight(&self) -> usize {
        self.topic.len() + self.payload.len() + 64 + self.props.as_deref().map_or(0, props_weight)
    }
}

/// Heap bytes of MQTT 5 publish properties (the variable-length ones dominate).
fn props_weight(p: &v5::PublishProperties) -> usize {
    let s = |o: &Option<String>| o.as_ref().map_or(0, String::len);
    64 + s(&p.response_topic)
        + s(&p.content_type)
        + p.correlation_data.as_ref().map_or(0, Bytes::len)
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

fn from_v4(p: v4::Packet) -> Result<Packet, CodecError> {
    Ok(match p {
        v4::Packet::Connect(c) => Packet::Connect(Box::new(Connect {
            protocol: Protocol::V4,
            client_id: c.client_id,
            clean_session: c.clean_session,
            keep_alive: c.keep_alive,
            will: match c.last_will {
                Some(w) => Some(Will {
                    message: Message {
                        topic: topic_bytes(Bytes::from(w.topic))?,
                        payload: w.message,
                        qos: qos_u8_v4(w.qos),
                        retain: w.retain,
                        props: None,
                    },
                    delay_interval: None,
                }),
                None => None,
            },
            username: c
                .login
                .as_ref()
                .map(|l| l.username.clone())
                .filter(|u| !u.is_empty()),
            password: c.login.map(|l| l.password).filter(|p| !p.is_empty()),
            session_expiry: None,
            receive_maximum: None,
            max_packet_size: None,
        })),
        v4::Packet::ConnAck(c) => Packet::ConnAck {
            session_present: c.session_present,
            code: c.code as u8,
            receive_maximum: None,
            maximum_qos: None,
            max_packet_size: None,
            assigned_client_id: None,
            topic_alias_max: None,
        },
        v4::Packet::Publish(p) => Packet::Publish {
            pkid: p.pkid,
            dup: p.dup,
            msg: Message {
                topic: Bytes::from(p.topic),
                payload: p.payload,
                qos: qos_u8_v4(p.qos),
                retain: p.retain,
                props: None,
            },
            topic_alias: None,
        },
        v4::Packet::PubAck(a) => Packet::PubAck {
            pkid: a.pkid,
            code: 0,
        },
        v4::Packet::PubRec(a) => Packet::PubRec {
            pkid: a.pkid,
            code: 0,
        },
        v4::Packet::PubRel(a) => Packet::PubRel { pkid: a.pkid },
        v4::Packet::PubComp(a) => Packet::PubComp { pkid: a.pkid },
        v4::Packet::Subscribe(s) => Packet::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| SubFilter::new(f.path, qos_u8_v4(f.qos)))
                .collect(),
        },
        v4::Packet::SubAck(s) => Packet::SubAck {
            pkid: s.pkid,
            codes: s
                .return_codes
                .into_iter()
                .map(|c| match c {
                    v4::SubscribeReasonCode::Success(q) => qos_u8_v4(q),
                    v4::SubscribeReasonCode::Failure => SUBACK_FAILURE,
                })
                .collect(),
        },
        v4::Packet::Unsubscribe(u) => Packet::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        v4::Packet::UnsubAck(u) => Packet::UnsubAck {
            pkid: u.pkid,
            codes: Vec::new(),
        },
        v4::Packet::PingReq => Packet::PingReq,
        v4::Packet::PingResp => Packet::PingResp,
        v4::Packet::Disconnect => Packet::Disconnect {
            reason: 0,
            session_expiry: None,
        },
    })
}

fn from_v5(p: v5::Packet) -> Result<Packet, CodecError> {
    Ok(match p {
        v5::Packet::Connect(c, will, login) => {
            let props = c.properties.unwrap_or_default();
            Packet::Connect(Box::new(Connect {
                protocol: Protocol::V5,
                client_id: c.client_id,
                clean_session: c.clean_start,
                keep_alive: c.keep_alive,
                will: match will {
                    Some(w) => {
                        let delay = w.properties.as_ref().and_then(|p| p.delay_interval);
                        let props = w.properties.map(|wp| {
                            Arc::new(v5::PublishProperties {
                                payload_format_indicator: wp.payload_format_indicator,
                                message_expiry_interval: wp.message_expiry_interval,
                                topic_alias: None,
                                response_topic: wp.response_topic,
                                correlation_data: wp.correlation_data,
                                user_properties: wp.user_properties,
                                subscription_identifiers: Vec::new(),
                                content_type: wp.content_type,
                            })
                        });
                        Some(Will {
                            message: Message {
                                topic: topic_bytes(w.topic)?,
                                payload: w.message,
                                qos: qos_u8_v5(w.qos),
                                retain: w.retain,
                                props,
                            },
                            delay_interval: delay,
                        })
                    }
                    None => None,
                },
                username: login
                    .as_ref()
                    .map(|l| l.username.clone())
                    .filter(|u| !u.is_empty()),
                password: login.map(|l| l.password).filter(|p| !p.is_empty()),
                session_expiry: props.session_expiry_interval,
                receive_maximum: props.receive_maximum,
                max_packet_size: props.max_packet_size,
            }))
        }
        v5::Packet::ConnAck(c) => {
            let props = c.properties.as_ref();
            Packet::ConnAck {
                session_present: c.session_present,
                code: v5_connack_code(c.code),
                receive_maximum: props.and_then(|p| p.receive_max),
                maximum_qos: props.and_then(|p| p.max_qos),
                max_packet_size: props.and_then(|p| p.max_packet_size),
                assigned_client_id: props.and_then(|p| p.assigned_client_identifier.clone()),
                topic_alias_max: props.and_then(|p| p.topic_alias_max),
            }
        }
        v5::Packet::Publish(p) => {
            let topic_alias = p.properties.as_ref().and_then(|pr| pr.topic_alias);
            let props = p.properties.and_then(|mut pr| {
                // Topic aliases are per connection and subscription ids per subscriber:
                // neither may travel to another peer.
                pr.topic_alias = None;
                pr.subscription_identifiers.clear();
                (pr != v5::PublishProperties::default()).then(|| Arc::new(pr))
            });
            Packet::Publish {
                pkid: p.pkid,
                dup: p.dup,
                msg: Message {
                    topic: topic_bytes(p.topic)?,
                    payload: p.payload,
                    qos: qos_u8_v5(p.qos),
                    retain: p.retain,
                    props,
                },
                topic_alias,
            }
        }
        v5::Packet::PubAck(a) => Packet::PubAck {
            pkid: a.pkid,
            code: if a.reason == v5::PubAckReason::Success
                || a.reason == v5::PubAckReason::NoMatchingSubscribers
            {
                0
            } else {
                0x80
            },
        },
        v5::Packet::PubRec(a) => Packet::PubRec {
            pkid: a.pkid,
            code: if a.reason == v5::PubRecReason::Success
                || a.reason == v5::PubRecReason::NoMatchingSubscribers
            {
                0
            } else {
                0x80
            },
        },
        v5::Packet::PubRel(a) => Packet::PubRel { pkid: a.pkid },
        v5::Packet::PubComp(a) => Packet::PubComp { pkid: a.pkid },
        v5::Packet::Subscribe(s) => {
            let id = s.properties.as_ref().and_then(|p| p.id);
            Packet::Subscribe {
                pkid: s.pkid,
                filters: s
                    .filters
                    .into_iter()
                    .map(|f| SubFilter {
                        filter: f.path,
                        qos: qos_u8_v5(f.qos),
                        no_local: f.nolocal,
                        retain_as_published: f.preserve_retain,
                        retain_handling: match f.retain_forward_rule {
                            v5::RetainForwardRule::OnEverySubscribe => 0,
                            v5::RetainForwardRule::OnNewSubscribe => 1,
                            v5::RetainForwardRule::Never => 2,
                        },
                        id,
                    })
                    .collect(),
            }
        }
        v5::Packet::SubAck(s) => Packet::SubAck {
            pkid: s.pkid,
            codes: s.return_codes.into_iter().map(v5_suback_code).collect(),
        },
        v5::Packet::Unsubscribe(u) => Packet::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        },
        v5::Packet::UnsubAck(u) => Packet::UnsubAck {
            pkid: u.pkid,
            codes: u.reasons.into_iter().map(v5_unsuback_code).collect(),
        },
        v5::Packet::PingReq(_) => Packet::PingReq,
        v5::Packet::PingResp(_) => Packet::PingResp,
        v5::Packet::Disconnect(d) => Packet::Disconnect {
            reason: v5_disconnect_code(d.reason_code),
            session_expiry: d.properties.and_then(|p| p.session_expiry_interval),
        },
        v5::Packet::Auth(_) => Packet::Auth,
    })
}

fn v5_suback_code(c: v5::SubscribeReasonCode) -> u8 {
    use v5::SubscribeReasonCode as S;
    match c {
        S::Success(q) => qos_u8_v5(q),
        S::ImplementationSpecific => 0x83,
        S::NotAuthorized => 0x87,
        S::TopicFilterInvalid => 0x8F,
        S::PkidInUse => 0x91,
        S::QuotaExceeded => 0x97,
        S::SharedSubscriptionsNotSupported => 0x9E,
        S::SubscriptionIdNotSupported => 0xA1,
        S::WildcardSubscriptionsNotSupported => 0xA2,
        S::Failure | S::Unspecified => SUBACK_FAILURE,
    }
}

fn v5_suback_reason(c: u8) -> v5::SubscribeReasonCode {
    use v5::SubscribeReasonCode as S;
    match c {
        0..=2 => S::Success(qos_v5(c)),
        0x83 => S::ImplementationSpecific,
        0x87 => S::NotAuthorized,
        0x8F => S::TopicFilterInvalid,
        0x91 => S::PkidInUse,
        0x97 => S::QuotaExceeded,
        0x9E => S::SharedSubscriptionsNotSupported,
        0xA1 => S::SubscriptionIdNotSupported,
        0xA2 => S::WildcardSubscriptionsNotSupported,
        _ => S::Unspecified,
    }
}

/// UNSUBACK reason code: no subscription existed.
pub const UNSUBACK_NO_SUBSCRIPTION: u8 = 0x11;

fn v5_unsuback_code(r: v5::UnsubAckReason) -> u8 {
    use v5::UnsubAckReason as U;
    match r {
        U::Success => 0x00,
        U::NoSubscriptionExisted => UNSUBACK_NO_SUBSCRIPTION,
        U::UnspecifiedError => 0x80,
        U::ImplementationSpecificError => 0x83,
        U::NotAuthorized => 0x87,
        U::TopicFilterInvalid => 0x8F,
        U::PacketIdentifierInUse => 0x91,
    }
}

fn v5_unsuback_reason(c: u8) -> v5::UnsubAckReason {
    use v5::UnsubAckReason as U;
    match c {
        0x00 => U::Success,
        UNSUBACK_NO_SUBSCRIPTION => U::NoSubscriptionExisted,
        0x83 => U::ImplementationSpecificError,
        0x87 => U::NotAuthorized,
        0x8F => U::TopicFilterInvalid,
        0x91 => U::PacketIdentifierInUse,
        _ => U::UnspecifiedError,
    }
}

fn v5_disconnect_code(r: v5::DisconnectReasonCode) -> u8 {
    use v5::DisconnectReasonCode as D;
    match r {
        D::NormalDisconnection => 0x00,
        D::DisconnectWithWillMessage => 0x04,
        D::MalformedPacket => 0x81,
        D::ProtocolError => 0x82,
        D::ServerShuttingDown => 0x8B,
        D::KeepAliveTimeout => 0x8D,
        D::SessionTakenOver => 0x8E,
        D::PacketTooLarge => 0x95,
        _ => 0x80,
    }
}

fn v5_connack_code(c: v5::ConnectReturnCode) -> u8 {
    use v5::ConnectReturnCode as C;
    match c {
        C::Success => 0x00,
        C::RefusedProtocolVersion | C::UnsupportedProtocolVersion => 0x84,
        C::BadClientId | C::ClientIdentifierNotValid => 0x85,
        C::ServiceUnavailable | C::ServerUnavailable => 0x88,
        C::BadUserNamePassword => 0x86,
        C::NotAuthorized => 0x87,
        C::ServerBusy => 0x89,
        C::Banned => 0x8A,
        C::MalformedPacket => 0x81,
        C::ProtocolError => 0x82,
        C::ImplementationSpecificError => 0x83,
        C::QuotaExceeded => 0x97,
        _ => 0x80,
    }
}

fn v5_connack_reason(code: u8) -> v5::ConnectReturnCode {
    use v5::ConnectReturnCode as C;
    match code {
        0x00 => C::Success,
        0x81 => C::MalformedPacket,
        0x82 => C::ProtocolError,
        0x84 => C::UnsupportedProtocolVersion,
        0x85 => C::ClientIdentifierNotValid,
        0x86 => C::BadUserNamePassword,
        0x87 => C::NotAuthorized,
        0x88 => C::ServerUnavailable,
        0x89 => C::ServerBusy,
        0x95 => C::PacketTooLarge,
        _ => C::UnspecifiedError,
    }
}

/// v4 CONNACK return code for a v5-style reason.
fn v4_connack_code(code: u8) -> v4::ConnectReturnCode {
    match code {
        0x00 => v4::ConnectReturnCode::Success,
        0x01 | 0x84 => v4::ConnectReturnCode::RefusedProtocolVersion,
        0x02 | 0x85 => v4::ConnectReturnCode::BadClientId,
        0x04 | 0x86 => v4::ConnectReturnCode::BadUserNamePassword,
        0x05 | 0x87 => v4::ConnectReturnCode::NotAuthorized,
        _ => v4::ConnectReturnCode::ServiceUnavailable,
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

fn to_v4(packet: &Packet) -> Result<v4::Packet, CodecError> {
    Ok(match packet {
        Packet::Connect(c) => v4::Packet::Connect(v4::Connect {
            protocol: m4b::Protocol::V4,
            keep_alive: c.keep_alive,
            client_id: c.client_id.clone(),
            clean_session: c.clean_session,
            last_will: c.will.as_ref().map(|w| v4::LastWill {
                topic: w.message.topic_str().to_string(),
                message: w.message.payload.clone(),
                qos: qos_v4(w.message.qos),
                retain: w.message.retain,
            }),
            login: login_v4(c),
        }),
        Packet::ConnAck {
            session_present,
            code,
            ..
        } => v4::Packet::ConnAck(v4::ConnAck {
            session_present: *session_present,
            code: v4_connack_code(*code),
        }),
        Packet::PubAck { pkid, .. } => v4::Packet::PubAck(v4::PubAck { pkid: *pkid }),
        Packet::PubRec { pkid, .. } => v4::Packet::PubRec(v4::PubRec { pkid: *pkid }),
        Packet::PubRel { pkid } => v4::Packet::PubRel(v4::PubRel { pkid: *pkid }),
        Packet::PubComp { pkid } => v4::Packet::PubComp(v4::PubComp { pkid: *pkid }),
        Packet::Subscribe { pkid, filters } => v4::Packet::Subscribe(v4::Subscribe {
            pkid: *pkid,
            filters: filters
                .iter()
                .map(|f| v4::SubscribeFilter {
                    path: f.filter.clone(),
                    qos: qos_v4(f.qos),
                })
                .collect(),
        }),
        Packet::SubAck { pkid, codes } => v4::Packet::SubAck(v4::SubAck {
            pkid: *pkid,
            return_codes: codes
                .iter()
                .map(|&c| {
                    if c <= 2 {
                        v4::SubscribeReasonCode::Success(qos_v4(c))
                    } else {
                        v4::SubscribeReasonCode::Failure
                    }
                })
                .collect(),
        }),
        Packet::Unsubscribe { pkid, filters } => v4::Packet::Unsubscribe(v4::Unsubscribe {
            pkid: *pkid,
            topics: filters.clone(),
        }),
        Packet::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck { pkid: *pkid }),
        Packet::PingReq => v4::Packet::PingReq,
        Packet::PingResp => v4::Packet::PingResp,
        Packet::Disconnect { .. } => v4::Packet::Disconnect,
        Packet::Publish { .. } | Packet::Auth => return Err(m4b::Error::MalformedPacket.into()),
    })
}

fn login_v4(c: &Connect) -> Option<v4::Login> {
    if c.username.is_none() && c.password.is_none() {
        return None;
    }
    Some(v4::Login {
        username: c.username.clone().unwrap_or_default(),
        password: c.password.clone().unwrap_or_default(),
    })
}

fn to_v5(packet: &Packet) -> Result<v5::Packet, CodecError> {
    Ok(match packet {
        Packet::Connect(c) => {
            let props = v5::ConnectProperties {
                session_expiry_interval: c.session_expiry,
                receive_maximum: c.receive_maximum,
                max_packet_size: c.max_packet_size,
                ..Default::default()
            };
            let will = c.will.as_ref().map(|w| v5::LastWill {
                topic: w.message.topic.clone(),
                message: w.message.payload.clone(),
                qos: qos_v5(w.message.qos),
                retain: w.message.retain,
                properties: will_props(w),
            });
            let login = if c.username.is_some() || c.password.is_some() {
                Some(v5::Login {
                    username: c.username.clone().unwrap_or_default(),
                    password: c.password.clone().unwrap_or_default(),
                })
            } else {
                None
            };
            let has_props = props != v5::ConnectProperties::default();
            v5::Packet::Connect(
                v5::Connect {
                    keep_alive: c.keep_alive,
                    client_id: c.client_id.clone(),
                    clean_start: c.clean_session,
                    properties: has_props.then_some(props),
                },
                will,
                login,
            )
        }
        Packet::ConnAck {
            session_present,
            code,
            receive_maximum,
            maximum_qos,
            max_packet_size,
            assigned_client_id,
            topic_alias_max,
        } => {
            let props = v5::ConnAckProperties {
                receive_max: *receive_maximum,
                max_qos: *maximum_qos,
                max_packet_size: *max_packet_size,
                topic_alias_max: *topic_alias_max,
                session_expiry_interval: None,
                retain_available: None,
                assigned_client_identifier: assigned_client_id.clone(),
                reason_string: None,
                user_properties: Vec::new(),
                wildcard_subscription_available: None,
                subscription_identifiers_available: None,
                shared_subscription_available: None,
                server_keep_alive: None,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            };
            v5::Packet::ConnAck(v5::ConnAck {
                session_present: *session_present,
                code: v5_connack_reason(*code),
                properties: Some(props),
            })
        }
        Packet::PubAck { pkid, code } => v5::Packet::PubAck(v5::PubAck {
            pkid: *pkid,
            reason: match *code {
                0 => v5::PubAckReason::Success,
                NOT_AUTHORIZED => v5::PubAckReason::NotAuthorized,
                TOPIC_NAME_INVALID => v5::PubAckReason::TopicNameInvalid,
                QUOTA_EXCEEDED => v5::PubAckReason::QuotaExceeded,
                _ => v5::PubAckReason::ImplementationSpecificError,
            },
            properties: None,
        }),
        Packet::PubRec { pkid, code } => v5::Packet::PubRec(v5::PubRec {
            pkid: *pkid,
            reason: match *code {
                0 => v5::PubRecReason::Success,
                NOT_AUTHORIZED => v5::PubRecReason::NotAuthorized,
                TOPIC_NAME_INVALID => v5::PubRecReason::TopicNameInvalid,
                QUOTA_EXCEEDED => v5::PubRecReason::QuotaExceeded,
                _ => v5::PubRecReason::ImplementationSpecificError,
            },
            properties: None,
        }),
        Packet::PubRel { pkid } => v5::Packet::PubRel(v5::PubRel {
            pkid: *pkid,
            reason: v5::PubRelReason::Success,
            properties: None,
        }),
        Packet::PubComp { pkid } => v5::Packet::PubComp(v5::PubComp {
            pkid: *pkid,
            reason: v5::PubCompReason::Success,
            properties: None,
        }),
        Packet::Subscribe { pkid, filters } => v5::Packet::Subscribe(v5::Subscribe {
            pkid: *pkid,
            filters: filters
                .iter()
                .map(|f| v5::Filter {
                    path: f.filter.clone(),
                    qos: qos_v5(f.qos),
                    nolocal: f.no_local,
                    preserve_retain: f.retain_as_published,
                    retain_forward_rule: match f.retain_handling {
                        0 => v5::RetainForwardRule::OnEverySubscribe,
                        1 => v5::RetainForwardRule::OnNewSubscribe,
                        _ => v5::RetainForwardRule::Never,
                    },
                })
                .collect(),
            properties: None,
        }),
        Packet::SubAck { pkid, codes } => v5::Packet::SubAck(v5::SubAck {
            pkid: *pkid,
            return_codes: codes.iter().map(|&c| v5_suback_reason(c)).collect(),
            properties: None,
        }),
        Packet::Unsubscribe { pkid, filters } => v5::Packet::Unsubscribe(v5::Unsubscribe {
            pkid: *pkid,
            filters: filters.clone(),
            properties: None,
        }),
        Packet::UnsubAck { pkid, codes } => v5::Packet::UnsubAck(v5::UnsubAck {
            pkid: *pkid,
            reasons: if codes.is_empty() {
                vec![v5::UnsubAckReason::Success]
            } else {
                codes.iter().map(|&c| v5_unsuback_reason(c)).collect()
            },
            properties: None,
        }),
        Packet::PingReq => v5::Packet::PingReq(v5::PingReq),
        Packet::PingResp => v5::Packet::PingResp(v5::PingResp),
        Packet::Disconnect {
            reason,
            session_expiry,
        } => v5::Packet::Disconnect(v5::Disconnect {
            reason_code: v5_disconnect_reason(*reason),
            properties: session_expiry.map(|e| v5::DisconnectProperties {
                session_expiry_interval: Some(e),
                reason_string: None,
                user_properties: Vec::new(),
                server_reference: None,
            }),
        }),
        Packet::Publish { .. } | Packet::Auth => return Err(m5b::Error::MalformedPacket.into()),
    })
}

fn v5_disconnect_reason(code: u8) -> v5::DisconnectReasonCode {
    use v5::DisconnectReasonCode as D;
    match code {
        0x00 => D::NormalDisconnection,
        0x04 => D::DisconnectWithWillMessage,
        0x81 => D::MalformedPacket,
        0x82 => D::ProtocolError,
        0x8B => D::ServerShuttingDown,
        0x8D => D::KeepAliveTimeout,
        0x8E => D::SessionTakenOver,
        0x93 => D::ReceiveMaximumExceeded,
        0x95 => D::PacketTooLarge,
        0x96 => D::MessageRateTooHigh,
        _ => D::UnspecifiedError,
    }
}

fn will_props(w: &Will) -> Option<v5::LastWillProperties> {
    if w.delay_interval.is_none() && w.message.props.is_none() {
        return None;
    }
    let p = w.message.props.as_deref().cloned().unwrap_or_default();
    Some(v5::LastWillProperties {
        delay_interval: w.delay_interval,
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
    })
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
mod tests {
    use super::*;

    fn roundtrip(proto: Protocol, p: &Packet) -> Packet {
        let mut buf = BytesMut::new();
        write(proto, p, &mut buf).expect("write");
        let out = read(proto, &mut buf, 1 << 20)
            .expect("read")
            .expect("complete");
        assert!(buf.is_empty(), "all bytes consumed");
        out
    }

    #[test]
    fn packets_round_trip_both_versions() {
        let msg = Message::new("a/b", &b"hello"[..], 1, true);
        let cases = vec![
            Packet::Publish {
                pkid: 7,
                dup: true,
                msg: msg.clone(),
                topic_alias: None,
            },
            Packet::Publish {
                pkid: 0,
                dup: false,
                msg: Message::new("t", &b""[..], 0, false),
                topic_alias: None,
            },
            Packet::PubAck { pkid: 3, code: 0 },
            Packet::PubRec { pkid: 4, code: 0 },
            Packet::PubRel { pkid: 5 },
            Packet::PubComp { pkid: 6 },
            Packet::Subscribe {
                pkid: 9,
                filters: vec![SubFilter::new("a/#", 2), SubFilter::new("b", 0)],
            },
            Packet::SubAck {
                pkid: 9,
                codes: vec![2, 0, SUBACK_FAILURE],
            },
            Packet::Unsubscribe {
                pkid: 10,
                filters: vec!["a/#".into()],
            },
            Packet::PingReq,
            Packet::PingResp,
        ];
        for proto in [Protocol::V4, Protocol::V5] {
            for p in &cases {
                assert_eq!(&roundtrip(proto, p), p, "{proto:?}");
            }
        }
        let unsuback = |codes: Vec<u8>| Packet::UnsubAck { pkid: 10, codes };
        assert_eq!(roundtrip(Protocol::V4, &unsuback(vec![])), unsuback(vec![]));
        let v5 = unsuback(vec![0, UNSUBACK_NO_SUBSCRIPTION, 0]);
        assert_eq!(
            roundtrip(Protocol::V5, &v5),
            v5,
            "one reason code per filter"
        );
        let bye = Packet::Disconnect {
            reason: 0,
            session_expiry: Some(30),
        };
        assert_eq!(roundtrip(Protocol::V5, &bye), bye);
    }

    #[test]
    fn connect_debug_redacts_the_password() {
        let c = Connect {
            protocol: Protocol::V4,
            client_id: "d".into(),
            clean_session: true,
            keep_alive: 1,
            will: None,
            username: Some("user".into()),
            password: Some("hunter2".into()),
            session_expiry: None,
            receive_maximum: None,
            max_packet_size: None,
        };
        let shown = format!("{:?}", Packet::Connect(Box::new(c)));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn connect_is_detected_per_version() {
        for proto in [Protocol::V4, Protocol::V5] {
            let c = Connect {
                protocol: proto,
                client_id: "dev-1".into(),
                clean_session: false,
                keep_alive: 30,
                will: Some(Will {
                    message: Message::new("dev/status", &b"offline"[..], 1, true),
                    delay_interval: None,
                }),
                username: Some("u".into()),
                password: Some("p".into()),
                session_expiry: None,
                receive_maximum: None,
                max_packet_size: None,
            };
            let mut buf = BytesMut::new();
            write(proto, &Packet::Connect(Box::new(c.clone())), &mut buf).expect("write");
            // Split delivery: a partial CONNECT asks for more bytes.
            let mut partial = BytesMut::from(&buf[..5]);
            assert!(read_connect(&mut partial, 1024)
                .expect("partial ok")
                .is_none());
            let got = read_connect(&mut buf, 1024)
                .expect("read")
                .expect("complete");
            assert_eq!(got, c);
        }
    }

    #[test]
    fn encode_publish_applies_prefix_and_qos_cap() {
        let msg = Message::new("sensors/t", &b"21.5"[..], 2, true);
        for proto in [Protocol::V4, Protocol::V5] {
            let mut buf = BytesMut::new();
            encode_publish(proto, 42, false, &msg, Some("site1/"), 1, &mut buf);
            match read(proto, &mut buf, 1024)
                .expect("read")
                .expect("complete")
            {
                Packet::Publish { pkid, msg: m, .. } => {
                    assert_eq!(pkid, 42);
                    assert_eq!(m.topic_str(), "site1/sensors/t");
                    assert_eq!(m.qos, 1);
                    assert!(m.retain);
                    assert_eq!(&m.payload[..], b"21.5");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn large_payload_uses_multi_byte_length() {
        let msg = Message::new("big", Bytes::from(vec![7u8; 300_000]), 0, false);
        let mut buf = BytesMut::new();
        encode_publish(Protocol::V4, 0, false, &msg, None, 0, &mut buf);
        let got = read(Protocol::V4, &mut buf, 1 << 20)
            .expect("read")
            .expect("complete");
        assert_eq!(
            got,
            Packet::Publish {
                pkid: 0,
                dup: false,
                msg,
                topic_alias: None,
            }
        );
    }

    #[test]
    fn oversize_and_garbage_are_errors() {
        let msg = Message::new("big", Bytes::from(vec![0u8; 2000]), 0, false);
        let mut buf = BytesMut::new();
        encode_publish(Protocol::V4, 0, false, &msg, None, 0, &mut buf);
        assert!(matches!(
            read(Protocol::V4, &mut buf, 1000),
            Err(CodecError::TooLarge { .. })
        ));
        let mut junk = BytesMut::from(&[0xF0u8, 0x00][..]);
        assert!(read(Protocol::V4, &mut junk, 1000).is_err());
        let mut not_connect = BytesMut::from(&[0xC0u8, 0x00][..]);
        assert!(read_connect(&mut not_connect, 1000).is_err());
    }

    #[test]
    fn v5_properties_pass_through_without_alias() {
        let props = v5::PublishProperties {
            topic_alias: Some(3),
            user_properties: vec![("k".into(), "v".into())],
            content_type: Some("text/plain".into()),
            ..Default::default()
        };
        let p = v5::Publish {
            dup: false,
            qos: m5b::QoS::AtLeastOnce,
            retain: false,
            topic: Bytes::from_static(b"x"),
            pkid: 1,
            payload: Bytes::from_static(b"y"),
            properties: Some(props),
        };
        let mut buf = BytesMut::new();
        v5::Packet::Publish(p).write(&mut buf, None).expect("write");
        let Some(Packet::Publish { msg, .. }) = read(Protocol::V5, &mut buf, 1024).expect("read")
        else {
            panic!("not a publish")
        };
        let props = msg.props.expect("props kept");
        assert_eq!(props.topic_alias, None);
        assert_eq!(
            props.user_properties,
            vec![("k".to_string(), "v".to_string())]
        );
    }
}
