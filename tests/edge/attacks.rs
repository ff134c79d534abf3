//! Hostile clients run against the proxy while a healthy device publishes, and what the
//! healthy device's forwarding looked like meanwhile (delivered count, largest gap).
//! Included by `edge_limits.rs` (`#[path]`), which owns the tests.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use mqtt_proxy::config::Config;
use mqtt_proxy_tests::outage::largest_gap;
use mqtt_proxy_tests::{Mosquitto, Publisher, Subscriber, TestProxy};
use rumqttc::mqttbytes::v4;
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use super::{metric, WAIT};

/// The longest the never-reading device may hold out under the flood.
const FLOOD_MAX: Duration = Duration::from_secs(60);
/// The longest an attack that ends may run.
const ATTACK_MAX: Duration = Duration::from_secs(120);

/// Whether an attack ends by itself (then the healthy device publishes until it has) or
/// goes on until it is aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ends {
    ByItself,
    Never,
}

/// What the healthy device saw during one attack.
#[derive(Debug)]
pub struct Healthy {
    pub sent: usize,
    pub delivered: usize,
    pub largest_gap: Duration,
}

/// One attack against the proxy while a healthy device publishes 4 KiB QoS 1 messages
/// every 10 ms for at least `run`; `tweak` adjusts the proxy's config. The attack gets the
/// proxy's port; one that never ends is aborted after `run`, one that ends by itself is
/// waited for.
pub async fn healthy_under<F, Fut>(
    name: &str,
    run: Duration,
    ends: Ends,
    tweak: impl FnOnce(&mut Config),
    attack: F,
) -> Result<Healthy>
where
    F: FnOnce(u16) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let broker = Mosquitto::start().await?;
    let upstream = Subscriber::connect(broker.port(), "healthy/#", 1).await?;
    let proxy = TestProxy::start(&[&broker], |c, brokers| {
        // The never-reading attacker subscribes through this broker.
        brokers[0].bidirectional = true;
        c.session.device_write_timeout = Duration::from_secs(2);
        tweak(c);
    })
    .await?;
    let device = Publisher::connect(proxy.port()).await?;
    let attacker = tokio::spawn(attack(proxy.port()));
    let started = Instant::now();
    let mut sent = 0;
    // At least `run`, and until an attack that ends (the never-reading one) has ended.
    while started.elapsed() < run || (ends == Ends::ByItself && !attacker.is_finished()) {
        if started.elapsed() > ATTACK_MAX {
            bail!("{name}: the attack did not end within {ATTACK_MAX:?}");
        }
        let payload = format!("{sent:>4096}");
        device.publish("healthy/n", payload, 1, false).await?;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    device.wait_acked(WAIT).await?;
    let got = upstream.wait_for_count(sent, WAIT).await;
    attacker.abort();
    let healthy = Healthy {
        sent,
        delivered: got.len(),
        largest_gap: largest_gap(&got),
    };
    println!("healthy device under {name}: {healthy:?}");
    Ok(healthy)
}

/// Slowloris: 200 sockets dribbling a CONNECT one byte every 200 ms, never finishing.
pub async fn slowloris(port: u16) {
    let connect = [
        0x10u8, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c,
    ];
    let mut socks = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            socks.push(s);
        }
    }
    for byte in connect.iter().cycle() {
        for s in &mut socks {
            let _ = s.write_all(&[*byte]).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A CONNECT flood from one address: 32 tasks connecting and dropping in a loop.
pub async fn connect_flood(port: u16) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32 {
        tasks.spawn(async move {
            for n in 0u64.. {
                let id = format!("flood-{i}-{n}");
                let _ = mqtt_proxy_tests::raw::Raw4::connect(port, &id, true).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Receive buffer of the never-reading device: small, so the kernel holds little of what
/// the proxy sends it and the rest has to be held, or refused, by the proxy.
pub const SLOTH_RCVBUF: u32 = 4096;

/// Connects an MQTT 3.1.1 device with a small receive buffer, subscribes to `filter` at
/// QoS 1, and returns the socket, from which nothing is read afterwards.
pub async fn never_reading_subscriber(port: u16, filter: &str) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    // Before connect, so the window announced in the handshake is already small.
    socket.set_recv_buffer_size(SLOTH_RCVBUF)?;
    let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await?;
    let mut connect = v4::Connect::new("sloth");
    connect.keep_alive = 60;
    let mut subscribe = v4::Subscribe::new(filter, QoS::AtLeastOnce);
    subscribe.pkid = 1;
    let mut out = bytes::BytesMut::new();
    v4::Packet::Connect(connect).write(&mut out, 1 << 20)?;
    v4::Packet::Subscribe(subscribe).write(&mut out, 1 << 20)?;
    stream.write_all(&out).await?;
    // CONNACK (4 bytes) then SUBACK (5 bytes), read before the device stops reading.
    let mut acks = [0u8; 9];
    tokio::time::timeout(WAIT, stream.read_exact(&mut acks))
        .await
        .context("CONNACK and SUBACK")??;
    if acks[0] != 0x20 || acks[3] != 0 || acks[4] != 0x90 || acks[8] != 1 {
        bail!("unexpected CONNACK/SUBACK {acks:02x?}");
    }
    Ok(stream)
}

/// The never-reading attack: a device subscribes to `flood/#` and stops reading while
/// another device publishes 16 KiB QoS 1 messages to it, at least `flood_bytes` and until
/// the proxy counts the disconnect. Returns once the never-reading device's socket, drained
/// of what the kernel held for it, reads as closed; fails if that takes over `FLOOD_MAX`.
/// How fast the never-reading attack floods (about what a loaded box managed unpaced).
const FLOOD_BYTES_PER_SEC: f64 = 40.0 * 1024.0 * 1024.0;

pub async fn never_reads(port: u16, flood_bytes: usize) -> Result<NeverReading> {
    let dropped =
        "mqtt_proxy_messages_dropped_total{broker=\"device\",reason=\"device_backlog_full\"}";
    let (disconnects_before, dropped_before) = (disconnects(), metric(dropped));
    let mut sloth = never_reading_subscriber(port, "flood/#").await?;
    let flooder = Publisher::connect(port).await?;
    let payload = bytes::Bytes::from(vec![b'f'; 16 * 1024]);
    let rss_before = rss_kib();
    let mut rss_peak = rss_before;
    let started = Instant::now();
    let deadline = started + FLOOD_MAX;
    let mut sent = 0;
    let mut disconnected = None;
    // The proxy notices a full bound when it refuses the next message, so the flood goes on
    // until the disconnect is counted.
    while sent < flood_bytes || disconnected.is_none() {
        flooder
            .publish("flood/x", payload.clone(), 1, false)
            .await?;
        sent += payload.len();
        if sent % (1 << 20) == 0 {
            // Paced: the flood must outgrow the kernel's buffers plus the bound, not the
            // upstream brokers' speed (an unpaced flood on an idle box ran at 230 MB/s and
            // filled the per-broker queues, which are bounded elsewhere and measured here).
            let due = Duration::from_secs_f64(sent as f64 / FLOOD_BYTES_PER_SEC);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(ahead).await;
            }
            rss_peak = rss_peak.max(rss_kib());
            if disconnected.is_none() && disconnects() != disconnects_before {
                disconnected = Some(started.elapsed());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the never-reading device was not disconnected within {FLOOD_MAX:?} \
                     ({sent} bytes sent to it, {} messages dropped at the bound)",
                    metric(dropped) - dropped_before
                );
            }
        }
    }
    flooder.wait_acked(WAIT).await?;
    let flooded = started.elapsed();
    let disconnected = disconnected.unwrap_or(flooded);
    // The device's view: what the kernel still holds for it, then the close.
    let mut held = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match sloth.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => held += n,
            }
        }
    })
    .await
    .is_ok();
    if !closed {
        bail!("the proxy counted a disconnect but the never-reading device stays open");
    }
    let (write_timeout, bound) = disconnects();
    Ok(NeverReading {
        by_write_timeout: write_timeout > disconnects_before.0,
        by_bound: bound > disconnects_before.1,
        flooded_bytes: sent,
        flooded,
        disconnected,
        received_before_close: held,
        dropped_at_bound: metric(dropped) - dropped_before,
        rss_growth_kib: rss_peak.saturating_sub(rss_before),
    })
}

/// Devices disconnected for not reading: stuck in a write (`write_timeout`), or refused
/// messages at the bound with nothing acknowledged (`to_device_bound`).
fn disconnects() -> (u64, u64) {
    let key = |reason| format!("mqtt_proxy_device_disconnects_total{{reason=\"{reason}\"}}");
    (
        metric(&key("write_timeout")),
        metric(&key("to_device_bound")),
    )
}

/// What the never-reading attack did.
#[derive(Debug)]
pub struct NeverReading {
    /// Which counter took the disconnect: a write that did not finish, or the bound
    /// staying full (the kernel's buffers took all that was written).
    pub by_write_timeout: bool,
    pub by_bound: bool,
    pub flooded_bytes: usize,
    pub flooded: Duration,
    /// From the first flood message to the disconnect being counted.
    pub disconnected: Duration,
    /// Bytes the device's socket held when it was closed (the kernel's share).
    pub received_before_close: usize,
    /// Messages for the device dropped because the bound was full.
    pub dropped_at_bound: u64,
    /// Peak resident memory of this process (proxy included) above its level before.
    pub rss_growth_kib: u64,
}

/// Resident memory of this process (the proxy runs in it), from /proc.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
