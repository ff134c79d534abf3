//! Devices that break the protocol, spoken to over raw TCP: a malformed
//! packet closes that one connection (the proxy's other devices keep
//! forwarding, their upstreams untouched), and a connection that never
//! completes its CONNECT is closed after the connect timeout.

use std::time::{Duration, Instant};

use mqtt_proxy_tests::{Mosquitto, ProxyRig, Publisher, Subscriber, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound for things that normally take milliseconds.
const WAIT: Duration = Duration::from_secs(5);

/// A 3.1.1 CONNECT with a clean session and a 60 s keepalive.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let id = client_id.as_bytes();
    let id_len = u16::try_from(id.len()).expect("short id");
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&id_len.to_be_bytes());
    body.extend_from_slice(id);
    let mut packet = vec![0x10, u8::try_from(body.len()).expect("< 128 bytes")];
    packet.extend(body);
    packet
}

/// A raw TCP device that sent CONNECT and got CONNACK "accepted".
async fn raw_device(port: u16, client_id: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("TCP connect to the proxy");
    stream
        .write_all(&connect_packet(client_id))
        .await
        .expect("send CONNECT");
    let mut connack = [0u8; 4];
    tokio::time::timeout(WAIT, stream.read_exact(&mut connack))
        .await
        .expect("CONNACK in time")
        .expect("read CONNACK");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
    stream
}

/// Reads until the peer closes (EOF or reset); `false` if still open at the deadline.
async fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let mut buf = [0u8; 256];
    tokio::time::timeout(timeout, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packet_closes_only_that_connection() {
    let rig = ProxyRig::start("mal/#", 1, |_, _| {}).await.expect("rig");
    let device = Publisher::connect(rig.port()).await.expect("good device");
    device
        .publish("mal/before", "1", 1, false)
        .await
        .expect("publish");

    // Remaining length 6: topic length (2) + "a/#" (3) + payload "x" (1).
    let wildcard_publish = vec![0x30, 6, 0, 3, b'a', b'/', b'#', b'x'];
    let cases: [(&str, Vec<u8>); 5] = [
        ("reserved packet type 0", vec![0x00, 0x00]),
        (
            "remaining length over 4 bytes",
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        ),
        ("PUBLISH with QoS 3", vec![0x36, 4, 0, 1, b't', 0]),
        ("second CONNECT", connect_packet("raw-again")),
        ("PUBLISH to a wildcard topic", wildcard_publish),
    ];
    for (i, (what, garbage)) in cases.iter().enumerate() {
        let mut raw = raw_device(rig.port(), &format!("raw-{i}")).await;
        // Control: the same session answers a well-formed PINGREQ first.
        raw.write_all(&[0xC0, 0x00]).await.expect("send PINGREQ");
        let mut pingresp = [0u8; 2];
        tokio::time::timeout(WAIT, raw.read_exact(&mut pingresp))
            .await
            .expect("PINGRESP in time")
            .expect("read PINGRESP");
        assert_eq!(
            pingresp,
            [0xD0, 0x00],
            "{what}: PINGRESP before the garbage"
        );
        raw.write_all(garbage).await.expect("send garbage");
        assert!(
            closed_within(&mut raw, WAIT).await,
            "{what}: the proxy closes the connection"
        );
    }

    device
        .publish("mal/after", "2", 1, false)
        .await
        .expect("publish");
    device.wait_acked(WAIT).await.expect("good device acked");
    for (sub, broker) in rig.subs.iter().zip(&rig.brokers) {
        let got = sub.wait_for_count(2, WAIT).await;
        let topics: Vec<_> = got.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, ["mal/before", "mal/after"]);
        assert_eq!(
            broker.client_connects(device.client_id()),
            1,
            "the good device's upstream never reconnected"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_without_connect_is_closed_after_the_connect_timeout() {
    const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
    let broker = Mosquitto::start().await.expect("broker");
    let proxy = TestProxy::start(&[&broker], |config, _| {
        config.session.connect_timeout = CONNECT_TIMEOUT;
    })
    .await
    .expect("proxy");

    // Silent, and a slow loris that sends half a CONNECT header.
    for (what, bytes) in [("silent", &[][..]), ("partial CONNECT", &[0x10, 0x20][..])] {
        let started = Instant::now();
        let mut raw = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .expect("TCP connect");
        raw.write_all(bytes).await.expect("send");
        assert!(
            closed_within(&mut raw, WAIT).await,
            "{what}: closed within {WAIT:?}"
        );
        let waited = started.elapsed();
        assert!(
            waited >= CONNECT_TIMEOUT - Duration::from_millis(100),
            "{what}: closed only after the connect timeout, not at once ({waited:?})"
        );
        println!("{what}: closed after {waited:?}");
    }
    assert_eq!(
        proxy.status_of(0).expect("status").sessions,
        0,
        "no upstream for a connection that never sent CONNECT"
    );

    // The listener still serves real devices.
    let sub = Subscriber::connect(broker.port(), "late/#", 1)
        .await
        .expect("subscriber");
    let device = Publisher::connect(proxy.port()).await.expect("device");
    device
        .publish("late/x", "ok", 1, false)
        .await
        .expect("publish");
    assert_eq!(sub.wait_for_count(1, WAIT).await.len(), 1);
}
