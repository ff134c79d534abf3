//! `--coalesce-ms`: device packets that follow the last batch closely are held to the end
//! of the window and forwarded and acknowledged together (fewer writes per message); a
//! packet after a quiet window goes at once, and with the window off (the default) nothing
//! waits. Real mosquitto, a raw 3.1.1 device timing its PUBACKs.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use bytes::Bytes;
use mqtt_proxy_tests::raw::Raw4;
use mqtt_proxy_tests::{Mosquitto, Subscriber, TestProxy};
use rumqttc::mqttbytes::v4;
use rumqttc::mqttbytes::QoS;

const WAIT: Duration = Duration::from_secs(10);
const WINDOW: Duration = Duration::from_millis(400);
/// Far below the window, far above loopback forwarding on a loaded box.
const PROMPT: Duration = Duration::from_millis(150);

async fn publish(raw: &mut Raw4, pkid: u16) -> Result<()> {
    let mut p = v4::Publish::new("co/n", QoS::AtLeastOnce, Bytes::from(pkid.to_string()));
    p.pkid = pkid;
    raw.send(v4::Packet::Publish(p)).await
}

async fn puback(raw: &mut Raw4) -> Result<(u16, Instant)> {
    match raw.recv(WAIT).await? {
        v4::Packet::PubAck(a) => Ok((a.pkid, Instant::now())),
        other => bail!("expected PUBACK, got {other:?}"),
    }
}

/// Sends 1, then 2..=6 10 ms apart right behind it; returns when each PUBACK came,
/// measured from the first send.
async fn burst(raw: &mut Raw4) -> Result<Vec<Duration>> {
    let start = Instant::now();
    publish(raw, 1).await?;
    let first = puback(raw).await?;
    for pkid in 2..=6 {
        publish(raw, pkid).await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut at = vec![first];
    for _ in 2..=6 {
        at.push(puback(raw).await?);
    }
    let ids: Vec<u16> = at.iter().map(|(id, _)| *id).collect();
    ensure!(ids == [1, 2, 3, 4, 5, 6], "PUBACKs out of order: {ids:?}");
    Ok(at.into_iter().map(|(_, t)| t - start).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_right_behind_a_batch_wait_for_the_window_and_go_together() -> Result<()> {
    let broker = Mosquitto::start().await?;
    let upstream = Subscriber::connect(broker.port(), "co/#", 1).await?;
    let proxy = TestProxy::start(&[&broker], |c, _| c.session.coalesce = WINDOW).await?;
    let (mut raw, _) = Raw4::connect(proxy.port(), "coalesced", true).await?;
    proxy.wait_upstreams_connected(1, WAIT).await?;
    // A quiet connection: the first packet is not held.
    tokio::time::sleep(WINDOW + Duration::from_millis(100)).await;
    let at = burst(&mut raw).await?;
    ensure!(
        at[0] < PROMPT,
        "first PUBACK after a quiet window took {:?}",
        at[0]
    );
    // 2..=6 came within the window opened by 1: held to its end, then answered together.
    let rest = &at[1..];
    let (lo, hi) = (rest[0], rest[rest.len() - 1]);
    ensure!(
        lo >= WINDOW - Duration::from_millis(100),
        "held packets answered {lo:?} after the first send, before the {WINDOW:?} window"
    );
    ensure!(
        hi - lo < Duration::from_millis(50),
        "held packets answered one by one ({rest:?}), not as one batch"
    );
    let got = upstream.wait_for_count(6, WAIT).await;
    ensure!(got.len() == 6, "forwarded {} of 6", got.len());
    // Quiet again for longer than the window: the next packet goes at once.
    tokio::time::sleep(WINDOW + Duration::from_millis(100)).await;
    let t = Instant::now();
    publish(&mut raw, 7).await?;
    let (id, when) = puback(&mut raw).await?;
    ensure!(
        id == 7 && when - t < PROMPT,
        "PUBACK {id} after {:?}",
        when - t
    );
    ensure!(
        upstream.wait_for_count(7, WAIT).await.len() == 7,
        "7th not forwarded"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_window_nothing_waits() -> Result<()> {
    let broker = Mosquitto::start().await?;
    let upstream = Subscriber::connect(broker.port(), "co/#", 1).await?;
    let proxy = TestProxy::start(&[&broker], |_, _| {}).await?;
    let (mut raw, _) = Raw4::connect(proxy.port(), "prompt", true).await?;
    proxy.wait_upstreams_connected(1, WAIT).await?;
    let at = burst(&mut raw).await?;
    // The last of the burst is sent about 50 ms in; each is answered right away.
    ensure!(
        at[5] < Duration::from_millis(50) + PROMPT,
        "PUBACKs at {at:?}: something waited with coalescing off"
    );
    let got = upstream.wait_for_count(6, WAIT).await;
    ensure!(got.len() == 6, "forwarded {} of 6", got.len());
    Ok(())
}
