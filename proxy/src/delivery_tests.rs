//! Byte-level tests of the to-device path (`delivery.rs`).

use super::*;
use crate::broker::BrokerConfig;
use crate::brokerset::{BrokerSet, Defaults};
use crate::codec::SubFilter;
use rumqttc::v5::mqttbytes::v5::PublishProperties;

fn sub(f: &str, qos: u8) -> SubFilter {
    SubFilter::new(f, qos)
}

fn table(subs: &[SubFilter]) -> SubTable {
    subs.iter().cloned().collect()
}

fn limits(window: u16, backlog: usize) -> Limits {
    Limits {
        window,
        backlog,
        bytes: 1 << 30,
        max_packet: 1 << 20,
    }
}

fn brokers(n: usize) -> Vec<Arc<Broker>> {
    let configs: Vec<BrokerConfig> = (0..n)
        .map(|i| {
            let mut c = BrokerConfig::new(format!("dlv-{i}"), "127.0.0.1", 1);
            c.bidirectional = true;
            c
        })
        .collect();
    BrokerSet::build(&configs, Defaults::default(), None)
        .expect("valid")
        .brokers
}

fn publishes(proto: Protocol, w: &mut BytesMut) -> Vec<(u16, bool, Message)> {
    let mut out = Vec::new();
    while let Some(p) = codec::read(proto, w, 1 << 20).expect("read") {
        if let Packet::Publish { pkid, dup, msg, .. } = p {
            out.push((pkid, dup, msg));
        }
    }
    out
}

#[test]
fn loopback_downgrades_qos_and_clears_retain() {
    let mut d = ToDevice::new(Protocol::V4, limits(10, 10), false);
    let mut w = BytesMut::new();
    d.loopback(
        &Message::new("a/b", &b"x"[..], 2, true),
        &table(&[sub("a/#", 1)]),
        &mut w,
    );
    let got = publishes(Protocol::V4, &mut w);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].2.qos, 1);
    assert!(!got[0].2.retain);
    assert_ne!(got[0].0, 0);
}

#[test]
fn backlog_waits_for_window_and_is_bounded_by_count() {
    let mut d = ToDevice::new(Protocol::V4, limits(1, 2), false);
    let mut w = BytesMut::new();
    let subs = table(&[sub("#", 1)]);
    for i in 0..4u8 {
        d.loopback(&Message::new("t", vec![i], 1, false), &subs, &mut w);
    }
    assert_eq!(
        d.backlog.len(),
        2,
        "bounded: the oldest waiting was dropped"
    );
    let first = publishes(Protocol::V4, &mut w);
    assert_eq!(first[0].2.payload[0], 0);
    d.on_puback(first[0].0, &mut w);
    assert_eq!(publishes(Protocol::V4, &mut w)[0].2.payload[0], 2);
}

/// A 10 kB QoS 1 message, and a 3.1.1 device path holding at most `bytes` with `window`
/// messages in flight.
fn big_messages_within(bytes: usize, window: u16) -> (Message, ToDevice) {
    let big = Message::new("t", vec![0u8; 10_000], 1, false);
    let limits = Limits {
        bytes,
        ..limits(window, 1000)
    };
    (big, ToDevice::new(Protocol::V4, limits, false))
}

#[test]
fn bytes_held_for_the_device_are_bounded() {
    let (big, mut d) = big_messages_within(35_000, 1);
    let mut w = BytesMut::new();
    let subs = table(&[sub("#", 1)]);
    for _ in 0..10 {
        d.loopback(&big, &subs, &mut w);
        assert!(d.bytes() <= 35_000, "held {} bytes", d.bytes());
    }
    assert_eq!(d.backlog.len(), 2, "1 in flight + 2 waiting fit in 35 kB");
    let (_, mut wide) = big_messages_within(35_000, 100);
    for _ in 0..10 {
        wide.loopback(&big, &subs, &mut BytesMut::new());
    }
    assert!(
        wide.bytes() <= 35_000,
        "in flight counts too: {}",
        wide.bytes()
    );
    let sent = publishes(Protocol::V4, &mut w);
    d.on_puback(sent[0].0, &mut w);
    assert!(d.bytes() <= 35_000);
    assert_eq!(d.backlog.len(), 1);
}

#[test]
fn a_full_bound_counts_as_stalled_until_the_device_acknowledges() {
    let (big, mut d) = big_messages_within(25_000, 100);
    let mut w = BytesMut::new();
    let subs = table(&[sub("#", 1)]);
    d.loopback(&big, &subs, &mut w);
    d.loopback(&big, &subs, &mut w);
    assert_eq!(d.full_since(), None, "within the bound");
    let before = Instant::now();
    d.loopback(&big, &subs, &mut w);
    let since = d.full_since().expect("refused at the bound");
    assert!(since >= before);
    d.loopback(&big, &subs, &mut w);
    assert_eq!(d.full_since(), Some(since), "from the first refusal on");
    let sent = publishes(Protocol::V4, &mut w);
    d.on_puback(sent[0].0, &mut w);
    assert_eq!(d.full_since(), None, "an acknowledgement is progress");
}

#[test]
fn device_maximum_packet_size_is_respected() {
    let mut d = ToDevice::new(
        Protocol::V5,
        Limits {
            max_packet: 100,
            ..limits(10, 10)
        },
        false,
    );
    let mut w = BytesMut::new();
    let subs = table(&[sub("#", 1)]);
    d.loopback(&Message::new("t", vec![0u8; 200], 1, false), &subs, &mut w);
    assert!(w.is_empty(), "too big for the device: not sent");
    assert_eq!(d.bytes(), 0, "and not held");
    d.loopback(&Message::new("t", vec![0u8; 50], 1, false), &subs, &mut w);
    assert_eq!(publishes(Protocol::V5, &mut w).len(), 1);
}

#[test]
fn subscription_identifiers_are_passed_back() {
    let mut d = ToDevice::new(Protocol::V5, limits(10, 10), false);
    let mut w = BytesMut::new();
    let subs = table(&[
        SubFilter {
            id: Some(3),
            ..sub("a/#", 1)
        },
        SubFilter {
            id: Some(9),
            ..sub("a/+", 0)
        },
    ]);
    d.loopback(&Message::new("a/b", &b"x"[..], 1, false), &subs, &mut w);
    // The reader strips subscription ids (they never travel on); read the raw packet.
    let mut raw = w.clone();
    let p = rumqttc::v5::mqttbytes::v5::Packet::read(&mut raw, None).expect("read");
    let rumqttc::v5::mqttbytes::v5::Packet::Publish(p) = p else {
        panic!("{p:?}")
    };
    let mut ids = p.properties.expect("props").subscription_identifiers;
    ids.sort_unstable();
    assert_eq!(ids, vec![3, 9]);
}

#[test]
fn persistent_sessions_deliver_what_the_broker_kept_for_them() {
    let b = brokers(1).remove(0);
    let offer = |d: &mut ToDevice, subs: &SubTable, w: &mut BytesMut| {
        let msg = Message::new("cmd/x", &b"kept"[..], 1, false);
        d.offer(
            FromBroker {
                broker: b.clone(),
                msg,
            },
            subs,
            w,
        );
    };
    let none = SubTable::default();
    let mut w = BytesMut::new();
    let mut clean = ToDevice::new(Protocol::V4, limits(10, 10), false);
    offer(&mut clean, &none, &mut w);
    assert!(w.is_empty(), "clean session: no filter, no delivery");
    let mut kept = ToDevice::new(Protocol::V4, limits(10, 10), true);
    offer(&mut kept, &none, &mut w);
    assert_eq!(publishes(Protocol::V4, &mut w)[0].2.qos, 1);
    kept.unsubscribed("cmd/#");
    offer(&mut kept, &none, &mut w);
    assert!(w.is_empty(), "unsubscribed on this connection: dropped");
}

#[test]
fn retained_copies_are_suppressed_but_live_updates_pass() {
    let bs = brokers(2);
    let subs = table(&[SubFilter {
        retain_as_published: true,
        ..sub("r", 1)
    }]);
    let mut d = ToDevice::new(Protocol::V5, limits(100, 100), false);
    let mut w = BytesMut::new();
    let mut from = |i: usize, payload: &'static [u8], d: &mut ToDevice| {
        d.offer(
            FromBroker {
                broker: bs[i].clone(),
                msg: Message::new("r", payload, 1, true),
            },
            &subs,
            &mut w,
        );
        publishes(Protocol::V5, &mut w).len()
    };
    assert_eq!(from(0, b"v1", &mut d), 1, "first retained copy");
    assert_eq!(from(1, b"v1", &mut d), 0, "the other broker's copy of it");
    assert_eq!(from(0, b"v2", &mut d), 1, "live Retain As Published update");
    assert_eq!(
        from(1, b"v3", &mut d),
        1,
        "another broker's different message"
    );
}

#[test]
fn a_kept_session_resends_with_dup_and_keeps_expiry() {
    let mut d = ToDevice::new(Protocol::V5, limits(1, 10), true);
    let mut w = BytesMut::new();
    let subs = table(&[sub("#", 2)]);
    let mut m = Message::new("t", &b"a"[..], 1, false);
    m.props = Some(Arc::new(PublishProperties {
        message_expiry_interval: Some(3600),
        ..Default::default()
    }));
    d.loopback(&m, &subs, &mut w);
    d.loopback(&Message::new("t", &b"b"[..], 2, false), &subs, &mut w);
    let first = publishes(Protocol::V5, &mut w);
    assert_eq!(first.len(), 1, "window of one");
    let kept = d.keep();
    assert_eq!(kept.len(), 2);
    assert_eq!(d.bytes(), 0);

    let mut again = ToDevice::new(Protocol::V5, limits(1, 10), true);
    again.resume(kept, &mut w);
    let resent = publishes(Protocol::V5, &mut w);
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].0, first[0].0, "same packet id");
    assert!(resent[0].1, "DUP");
    let expiry = resent[0]
        .2
        .props
        .as_ref()
        .and_then(|p| p.message_expiry_interval);
    assert!(
        matches!(expiry, Some(e) if e <= 3600 && e > 3500),
        "{expiry:?}"
    );
    again.on_puback(resent[0].0, &mut w);
    let next = publishes(Protocol::V5, &mut w);
    assert_eq!(&next[0].2.payload[..], b"b", "then the backlog");
}

#[test]
fn expired_messages_are_not_delivered() {
    let mut m = Message::new("t", &b"old"[..], 1, false);
    m.props = Some(Arc::new(PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    }));
    let long_ago = Instant::now() - Duration::from_secs(2);
    assert!(!remaining_expiry(&mut m.clone(), long_ago));
    let mut fresh = m.clone();
    assert!(remaining_expiry(&mut fresh, Instant::now()));
    assert_eq!(fresh.props.and_then(|p| p.message_expiry_interval), Some(1));
}
