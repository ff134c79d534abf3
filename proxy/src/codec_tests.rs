//! Byte-level tests of the wire model (`codec.rs`): round trips through the rumqttc codecs.

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
fn v5_disconnect_without_reason_or_properties() {
    let mut buf = BytesMut::from(&[0xE0u8, 0x00, 0xC0, 0x00][..]);
    assert_eq!(
        read(Protocol::V5, &mut buf, 1 << 20).expect("read"),
        Some(Packet::Disconnect {
            reason: 0,
            session_expiry: None
        })
    );
    assert_eq!(
        read(Protocol::V5, &mut buf, 1 << 20).expect("read"),
        Some(Packet::PingReq)
    );
}

#[test]
fn weight_counts_properties() {
    let mut msg = Message::new("t", &b"x"[..], 1, false);
    let bare = msg.weight();
    assert!(bare < 100);
    msg.props = Some(Arc::new(v5::PublishProperties {
        user_properties: (0..1024)
            .map(|i| (format!("k{i}"), "v".repeat(1024)))
            .collect(),
        ..Default::default()
    }));
    assert!(msg.weight() >= 1 << 20, "weight {}", msg.weight());
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
