//! Keepalive on both sides after its timers stopped being re-armed per packet (the device
//! session's deadline and the upstream's PINGREQ timer now move only when they fire): a
//! device that keeps talking outlives its keepalive and a silent one is closed after 1.5×;
//! an upstream whose device only pings the proxy keeps its broker connection alive with its
//! own PINGREQs instead of being dropped by mosquitto at 1.5× the keepalive.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use bytes::Bytes;
use mqtt_proxy_tests::raw::Raw5;
use mqtt_proxy_tests::{Mosquitto, Subscriber, TestProxy};
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::QoS;

const WAIT: Duration = Duration::from_secs(10);

fn publish(topic: &str, n: usize) -> v5::Packet {
    let payload = Bytes::from(n.to_string());
    v5::Packet::Publish(v5::Publish::new(topic, QoS::AtMostOnce, payload, None))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_talking_device_outlives_its_keepalive_and_a_silent_one_is_closed_after_1_5x(
) -> Result<()> {
    let broker = Mosquitto::start().await?;
    let upstream = Subscriber::connect(broker.port(), "ka/#", 0).await?;
    let proxy = TestProxy::start(&[&broker], |_, _| {}).await?;
    let mut connect = Raw5::connect_packet("talker", true, None);
    connect.keep_alive = 1;
    let (mut raw, _) = Raw5::connect(proxy.port(), connect).await?;
    // 3 s of traffic every 250 ms: twice the 1.5 s the proxy allows between packets.
    let started = Instant::now();
    let mut sent = 0;
    let mut last_packet = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        raw.send(publish("ka/n", sent)).await?;
        last_packet = Instant::now();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let got = upstream.wait_for_count(sent, WAIT).await;
    ensure!(
        got.len() == sent,
        "the session ended while the device was talking: {} of {sent} forwarded",
        got.len()
    );
    raw.wait_closed(WAIT).await?;
    let silent = last_packet.elapsed();
    ensure!(
        silent >= Duration::from_millis(1400),
        "closed {silent:?} after the last packet, before 1.5 × keepalive"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_upstream_pings_its_broker_and_stays_connected() -> Result<()> {
    let broker = Mosquitto::start().await?;
    let upstream = Subscriber::connect(broker.port(), "idle/#", 0).await?;
    let proxy = TestProxy::start(&[&broker], |_, _| {}).await?;
    let mut connect = Raw5::connect_packet("idler", true, None);
    // The upstream CONNECT carries the device's keepalive: mosquitto drops it after 1.5 s
    // of silence unless the proxy pings.
    connect.keep_alive = 1;
    let (mut raw, _) = Raw5::connect(proxy.port(), connect).await?;
    proxy.wait_upstreams_connected(1, WAIT).await?;
    raw.send(publish("idle/n", 0)).await?;
    // 4 s with no publish: the device only pings the proxy (which answers it locally).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        raw.send(v5::Packet::PingReq(v5::PingReq)).await?;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    raw.send(publish("idle/n", 1)).await?;
    let got = upstream.wait_for_count(2, WAIT).await;
    ensure!(got.len() == 2, "forwarded {} of 2", got.len());
    let status = proxy.status_of(0)?;
    ensure!(
        status.connects == 1 && status.reconnects == 0,
        "the upstream was dropped while idle: {} connects, {} reconnects",
        status.connects,
        status.reconnects
    );
    Ok(())
}
