//! The same publisher as [`crate::publisher`], on rumqttc's `AsyncClient`/`EventLoop`,
//! kept so `--client rumqttc` can show what a stock client costs. rumqttc flushes the
//! socket after every request, which caps it well below the raw publisher at QoS 0.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::pacer::Pacer;
use crate::payload::{Header, PROBE_SEQ};
use crate::publisher::{Clock, PubShared, PubStats, PublisherConfig, PROBE_INTERVAL};
use crate::wire::{qos_from, WireError};

fn split_addr(addr: &str) -> Result<(String, u16), WireError> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| WireError::Refused(format!("address {addr} has no port")))?;
    let port = port
        .parse()
        .map_err(|_| WireError::Refused(format!("bad port in {addr}")))?;
    Ok((host.to_string(), port))
}

/// Connects (waits for CONNACK), then spawns the publisher; same contract as
/// [`crate::publisher::spawn`].
pub async fn spawn(
    cfg: PublisherConfig,
    clock: Clock,
    shared: Arc<PubShared>,
    go: watch::Receiver<bool>,
    deadline: Instant,
) -> Result<JoinHandle<PubStats>, WireError> {
    let (host, port) = split_addr(&cfg.addr)?;
    let mut opts = MqttOptions::new(&cfg.client_id, host, port);
    let inflight = cfg.inflight.clamp(1, usize::from(u16::MAX) - 1) as u16;
    opts.set_keep_alive(Duration::from_secs(60))
        .set_clean_session(true)
        .set_inflight(inflight)
        .set_max_packet_size(1 << 28, 1 << 28)
        .set_request_channel_capacity(64 * 1024);
    let (client, mut eventloop) = AsyncClient::new(opts, 64 * 1024);
    let connack = tokio::time::timeout(cfg.connect_timeout, eventloop.poll())
        .await
        .map_err(|_| WireError::Timeout("CONNACK"))?
        .map_err(|e| WireError::Refused(e.to_string()))?;
    if !matches!(connack, Event::Incoming(Packet::ConnAck(_))) {
        return Err(WireError::Refused(format!(
            "expected CONNACK, got {connack:?}"
        )));
    }
    let poller = tokio::spawn(poll_acks(eventloop, clock, shared.clone()));
    Ok(tokio::spawn(publish_all(
        cfg, client, clock, shared, go, deadline, poller,
    )))
}

async fn poll_acks(mut eventloop: EventLoop, clock: Clock, shared: Arc<PubShared>) -> String {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                shared.last_ack_ns.store(clock.now_ns(), Ordering::Relaxed);
                shared.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return String::new(),
            Ok(_) => {}
            Err(e) => return format!("rumqttc event loop: {e}"),
        }
    }
}

async fn publish_all(
    cfg: PublisherConfig,
    client: AsyncClient,
    clock: Clock,
    shared: Arc<PubShared>,
    mut go: watch::Receiver<bool>,
    deadline: Instant,
    poller: JoinHandle<String>,
) -> PubStats {
    let mut stats = PubStats {
        device: cfg.device,
        ..PubStats::default()
    };
    let qos = qos_from(cfg.qos);
    let payload = |seq: u64| {
        let mut b = BytesMut::with_capacity(cfg.payload_size);
        Header {
            seq,
            sent_ns: clock.now_ns(),
        }
        .write_payload(cfg.payload_size, &mut b);
        b.freeze()
    };
    let mut probes = 0u64;
    let mut seq = 0u64;
    let result: Result<(), String> = async {
        while !*go.borrow() {
            let topic = cfg.scheme.topic(cfg.device, PROBE_SEQ);
            client
                .publish_bytes(topic, qos, false, payload(PROBE_SEQ))
                .await
                .map_err(|e| e.to_string())?;
            probes += 1;
            tokio::select! {
                r = go.changed() => r.map_err(|e| e.to_string())?,
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
                _ = tokio::time::sleep_until(deadline) => return Err("publisher: run timeout".into()),
            }
        }
        stats.first_send_ns = clock.now_ns();
        let pacer = Pacer::new(Instant::now(), cfg.rate, cfg.count);
        while seq < cfg.count {
            if Instant::now() >= deadline {
                return Err("publisher: run timeout".into());
            }
            if pacer.due(Instant::now()) <= seq {
                tokio::time::sleep_until(pacer.due_at(seq)).await;
            }
            let topic = cfg.scheme.topic(cfg.device, seq);
            client
                .publish_bytes(topic, qos, false, payload(seq))
                .await
                .map_err(|e| e.to_string())?;
            seq += 1;
            if seq.is_multiple_of(256) || seq == cfg.count {
                shared.sent.store(seq, Ordering::Relaxed);
            }
        }
        stats.last_send_ns = clock.now_ns();
        if cfg.qos > 0 {
            while shared.acked.load(Ordering::Relaxed) < probes + seq {
                if Instant::now() >= deadline || poller.is_finished() {
                    return Err("publisher: not every message was acked".into());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        stats.error = Some(e);
    }
    shared.sent.store(seq, Ordering::Relaxed);
    stats.sent = seq;
    if cfg.qos > 0 {
        let acked = shared.acked.load(Ordering::Relaxed);
        stats.acked = acked.saturating_sub(probes).min(seq);
        if acked >= probes + seq {
            stats.last_ack_ns = Some(shared.last_ack_ns.load(Ordering::Relaxed));
        }
    }
    let _ = client.disconnect().await;
    // Let the event loop write the DISCONNECT, bounded.
    let _ = tokio::time::timeout(Duration::from_secs(1), poller).await;
    stats
}
