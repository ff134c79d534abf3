//! Reading: rumqttc's MQTT 3.1.1 and 5 packets turned into the proxy's [`Packet`].

use std::sync::Arc;

use bytes::Bytes;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

use super::codes::*;
use super::*;

pub(super) fn from_v4(p: v4::Packet) -> Result<Packet, CodecError> {
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

pub(super) fn from_v5(p: v5::Packet) -> Result<Packet, CodecError> {
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
            code: puback_code(a.reason),
        },
        v5::Packet::PubRec(a) => Packet::PubRec {
            pkid: a.pkid,
            code: pubrec_code(a.reason),
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
