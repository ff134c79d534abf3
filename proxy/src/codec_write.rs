//! Writing: the proxy's [`Packet`] turned into rumqttc's MQTT 3.1.1 and 5 packets
//! (PUBLISH is encoded directly by [`encode_publish`](super::encode_publish)).

use rumqttc::mqttbytes::{self as m4b, v4};
use rumqttc::v5::mqttbytes::{self as m5b, v5};

use super::codes::*;
use super::*;

pub(super) fn to_v4(packet: &Packet) -> Result<v4::Packet, CodecError> {
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

pub(super) fn to_v5(packet: &Packet) -> Result<v5::Packet, CodecError> {
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
            reason: puback_reason(*code),
            properties: None,
        }),
        Packet::PubRec { pkid, code } => v5::Packet::PubRec(v5::PubRec {
            pkid: *pkid,
            reason: pubrec_reason(*code),
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
