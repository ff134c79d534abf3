//! A device that subscribes and then never reads while its broker floods it must not hold
//! anything hostage: it is disconnected within the write timeout (counted), a takeover of
//! its client id works while it is stuck, and the proxy still shuts down in time.

use std::time::{Duration, Instant};

use mqtt_proxy::broker::MqttVersion;
use mqtt_proxy_tests::bidi::wait_subscribed;
use mqtt_proxy_tests::raw::Raw4;
use mqtt_proxy_tests::{wait_until, Mosquitto, TestProxy};
use tokio::net::TcpStream;

use super::persistent::WAIT;

const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

async fn rig() -> (Mosquitto, TestProxy) {
    let broker = Mosquitto::start().await.expect("broker");
    let proxy = TestProxy::start(&[&broker], |c, b| {
        c.session.device_write_timeout = WRITE_TIMEOUT;
        b[0].bidirectional = true;
        b[0].mqtt_version = MqttVersion::V5;
    })
    .await
    .expect("proxy");
    (broker, proxy)
}

/// Subscribes `id` to `flood/#` through the proxy and returns the socket, never to be read.
async fn stuck_device(broker: &Mosquitto, proxy: &TestProxy, id: &str) -> TcpStream {
    let (mut dev, _) = Raw4::connect(proxy.port(), id, true)
        .await
        .expect("connect");
    dev.subscribe(1, "flood/#", 0).await.expect("suback");
    wait_subscribed(broker, "flood/#", 1, WAIT)
        .await
        .expect("upstream subscribed");
    dev.into_stream()
}

/// 48 MiB of QoS 0 messages from a client of the broker, far beyond what socket buffers
/// hold, from a separate process (so this process's memory, which `limits.rs` measures,
/// is not the flood's); killed when dropped.
struct Flood {
    child: std::process::Child,
    /// The payload file, removed with the flood.
    _payload: tempfile::NamedTempFile,
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn flood(broker: &Mosquitto) -> Flood {
    let file = tempfile::NamedTempFile::new().expect("payload file");
    std::fs::write(file.path(), vec![b'x'; 64 * 1024]).expect("payload");
    let child = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(["-t", "flood/x", "-q", "0", "--repeat", "768", "-f"])
        .arg(file.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mosquitto_pub");
    Flood {
        child,
        _payload: file,
    }
}

/// Waits until the broker stopped being able to send to `client_id` (at least 50 messages
/// sent, then none for a second): every buffer between it and the device is full.
async fn wait_stuck(broker: &Mosquitto, client_id: &str) {
    let needle = format!("Sending PUBLISH to {client_id} ");
    let mut last = (0, Instant::now());
    let stuck = wait_until(Duration::from_secs(30), || {
        let n = broker.count_in_log(&needle);
        if n != last.0 {
            last = (n, Instant::now());
        }
        n >= 50 && last.1.elapsed() >= Duration::from_secs(1)
    })
    .await;
    assert!(stuck, "the broker kept sending ({} so far)", last.0);
}

fn upstream_sessions(proxy: &TestProxy) -> usize {
    proxy.status().iter().map(|s| s.sessions).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_never_reads_is_disconnected_and_shutdown_completes() {
    let (broker, mut proxy) = rig().await;
    let _stuck = stuck_device(&broker, &proxy, "never-reads").await;
    let _flood = flood(&broker).await;
    let started = Instant::now();
    let bound = WRITE_TIMEOUT + Duration::from_secs(20);
    assert!(
        wait_until(bound, || upstream_sessions(&proxy) == 0).await,
        "the stuck device's session is still open after {bound:?}: {:?}",
        proxy.status()
    );
    let took = started.elapsed();
    let text = mqtt_proxy::metrics::render();
    assert!(
        text.lines()
            .any(|l| l.starts_with("mqtt_proxy_device_disconnects_total")
                && l.contains("write_timeout")),
        "counted in mqtt_proxy_device_disconnects_total"
    );
    eprintln!("stuck device disconnected after {took:?}");
    proxy.shutdown().await.expect("shutdown in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_and_shutdown_work_while_a_device_is_stuck() {
    let broker = Mosquitto::start().await.expect("broker");
    // A long write timeout: takeover and shutdown must not wait for it.
    let mut proxy = TestProxy::start(&[&broker], |c, b| {
        c.session.device_write_timeout = Duration::from_secs(300);
        b[0].bidirectional = true;
        b[0].mqtt_version = MqttVersion::V5;
    })
    .await
    .expect("proxy");
    let _stuck = stuck_device(&broker, &proxy, "stuck-then-taken").await;
    let _flood = flood(&broker).await;
    wait_stuck(&broker, "stuck-then-taken").await;
    let (mut again, ack) = Raw4::connect(proxy.port(), "stuck-then-taken", true)
        .await
        .expect("takeover CONNACK");
    assert!(!ack.session_present);
    // The stuck session ended: one upstream session left, and it is connected.
    assert!(
        wait_until(WAIT, || proxy
            .status()
            .iter()
            .all(|s| s.sessions == 1 && s.sessions_connected == 1))
        .await,
        "after the takeover: {:?}",
        proxy.status()
    );
    again.subscribe(1, "live/#", 0).await.expect("suback");
    // Shutdown is not held up by a device that never reads (the new one does not either).
    let started = Instant::now();
    proxy.shutdown().await.expect("shutdown in time");
    eprintln!("shutdown took {:?}", started.elapsed());
}

/// SUBSCRIBEs while the upstream task is blocked (its broker stopped reading, so its
/// write waits) must not stall the device's session: the session never awaits the
/// upstream's control channel, so a PINGREQ behind 200 SUBSCRIBEs is answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_to_a_blocked_upstream_do_not_stall_the_session() {
    use rumqttc::mqttbytes::{v4, QoS};
    let broker = Mosquitto::start().await.expect("broker");
    let mut proxy = TestProxy::start(&[&broker], |_, b| {
        b[0].bidirectional = true;
    })
    .await
    .expect("proxy");
    let (mut dev, _) = Raw4::connect(proxy.port(), "sub-storm", true)
        .await
        .expect("connect");
    proxy
        .wait_upstreams_connected(1, WAIT)
        .await
        .expect("upstream");
    broker.pause().expect("SIGSTOP");
    // 32 MiB towards the stopped broker: the upstream's socket fills and its write waits.
    let payload = bytes::Bytes::from(vec![b'p'; 64 * 1024]);
    for _ in 0..512 {
        let p = v4::Publish::from_bytes("storm/x", QoS::AtMostOnce, payload.clone());
        dev.send(v4::Packet::Publish(p)).await.expect("publish");
    }
    let busy = || {
        mqtt_proxy_tests::outage::metric_value(
            &mqtt_proxy::metrics::render(),
            "mqtt_proxy_subscriptions_refused_total",
            &[("reason", "upstream_busy")],
        )
        .unwrap_or(0.0)
    };
    let busy_before = busy();
    for i in 0..200u16 {
        let mut s = v4::Subscribe::new(format!("storm/{i}"), QoS::AtMostOnce);
        s.pkid = i + 1;
        dev.send(v4::Packet::Subscribe(s)).await.expect("subscribe");
    }
    dev.send(v4::Packet::PingReq).await.expect("ping");
    let started = Instant::now();
    let mut subacks = Vec::new();
    let answered = loop {
        match dev.recv(Duration::from_secs(5)).await {
            Ok(v4::Packet::PingResp) => break true,
            Ok(v4::Packet::SubAck(a)) => subacks.push(a),
            Ok(_) => continue,
            Err(_) => break false,
        }
    };
    broker.resume().expect("SIGCONT");
    while subacks.len() < 200 {
        match dev.recv(Duration::from_secs(10)).await {
            Ok(v4::Packet::SubAck(a)) => subacks.push(a),
            Ok(_) => continue,
            Err(e) => panic!("{} of 200 SUBACKs: {e}", subacks.len()),
        }
    }
    let refused = subacks
        .iter()
        .filter(|a| a.return_codes == vec![v4::SubscribeReasonCode::Failure])
        .count();
    assert!(
        answered,
        "no PINGRESP: the session is stuck behind the blocked upstream"
    );
    eprintln!("PINGRESP after {:?}", started.elapsed());
    // The upstream really was blocked: its control channel and the session's bounded
    // list of held requests filled up, and what did not fit was counted, not awaited,
    // and refused in its SUBACK (it never reached the broker).
    let dropped = busy() - busy_before;
    assert!(dropped > 0.0, "the upstream's control channel never filled");
    assert_eq!(
        refused as f64, dropped,
        "what was not forwarded got a failure SUBACK"
    );
    proxy.shutdown().await.expect("shutdown");
}
