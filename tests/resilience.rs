//! The proxy when brokers misbehave or the proxy itself stops: a hung
//! (SIGSTOPped) broker must not slow the others, a killed one gets what was
//! in flight and what queued up once it is back on the same port, and a
//! graceful shutdown flushes what devices already had acknowledged.
//!
//! Timings are measured and printed (`--nocapture`), never asserted beyond
//! generous bounds: the bounds catch a stall, the prints show the shape.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mqtt_proxy_tests::proxy::wait_all_quiet;
use mqtt_proxy_tests::sequence::{largest_gap, missing, numbered, numbered_padded, streams};
use mqtt_proxy_tests::{wait_until, Mosquitto, ProxyRig, Publisher, Received};

/// Generous bound for things that normally take milliseconds.
const WAIT: Duration = Duration::from_secs(5);
/// Bound for bulk deliveries (thousands of messages).
const BULK_WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(300);

/// The numbers of one stream in arrival order; fails on foreign payloads.
fn numbers_of(messages: &[Received], stream: &str) -> Vec<u64> {
    let mut all = streams(messages).expect("numbered payloads");
    let numbers = all.remove(stream).unwrap_or_default();
    assert!(all.is_empty(), "unexpected streams: {:?}", all.keys());
    numbers
}

/// Topics of the PUBLISHes `broker` logged as received from `client_id`
/// (mosquitto: "Received PUBLISH from <id> (d0, q1, r0, m1, '<topic>', ...").
/// The log spans restarts, so this sees what reached the broker even when no
/// subscriber was there to get it.
fn published_topics(broker: &Mosquitto, client_id: &str) -> BTreeSet<String> {
    let needle = format!("Received PUBLISH from {client_id} (");
    broker
        .log()
        .lines()
        .filter_map(|line| {
            let rest = line.split_once(&needle)?.1;
            let topic = rest.split_once(", '")?.1;
            Some(topic.split_once("', ")?.0.to_owned())
        })
        .collect()
}

/// Messages streamed while broker #2 is paused.
const STREAMED: u64 = 2_000;

/// Streams [`STREAMED`] numbered QoS 0 messages of 4 KiB (8 MB: more than
/// the socket buffers towards a stopped broker hold with Linux defaults, so
/// its upstream blocks mid-write and the proxy's queue takes the rest) in bursts of 20 every
/// 10 ms, while broker #2 is SIGSTOPped. Checks that the healthy brokers got
/// everything, complete and in order, while #2 is still stopped, and prints
/// their largest arrival gap. Returns with broker #2 still paused.
async fn stream_while_broker_2_is_paused() -> (ProxyRig, Publisher) {
    const BURST: u64 = 20;
    const PAYLOAD: usize = 4096;
    let total = usize::try_from(STREAMED).expect("small");
    let rig = ProxyRig::start("stream/#", 0, |_, _| {})
        .await
        .expect("rig");
    let device = Publisher::connect(rig.port()).await.expect("device");
    rig.proxy
        .wait_upstreams_connected(1, WAIT)
        .await
        .expect("upstreams");

    rig.brokers[2].pause().expect("SIGSTOP broker #2");
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for burst in 0..STREAMED / BURST {
        tick.tick().await;
        for n in burst * BURST..(burst + 1) * BURST {
            device
                .publish("stream/x", numbered_padded("s", n, PAYLOAD), 0, false)
                .await
                .expect("publish");
        }
    }
    let published_in = started.elapsed();

    for (i, sub) in rig.subs[..2].iter().enumerate() {
        let got = sub.wait_for_count(total, BULK_WAIT).await;
        assert_eq!(
            got.len(),
            total,
            "healthy broker #{i} got everything while #2 is paused"
        );
        assert_eq!(
            numbers_of(&got, "s"),
            (0..STREAMED).collect::<Vec<_>>(),
            "broker #{i}: complete and in order"
        );
        println!(
            "healthy broker #{i}: all {total} by {:?} (published in {published_in:?}), \
             largest arrival gap {:?}",
            got.last().map(|m| m.at.duration_since(started)),
            largest_gap(&got)
        );
    }
    assert_eq!(rig.subs[2].count(), 0, "a stopped broker delivers nothing");
    let paused = rig.proxy.status_of(2).expect("status");
    println!(
        "paused broker #2 meanwhile: {} msgs / {} bytes queued in the proxy, {} written, {} dropped",
        paused.queue_messages, paused.queue_bytes, paused.forwarded, paused.dropped
    );
    for (i, status) in rig.proxy.status().iter().enumerate() {
        assert_eq!(
            status.dropped, 0,
            "broker #{i}: the default queue holds it all"
        );
    }
    (rig, device)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_broker_does_not_stall_the_other_brokers() {
    // All checks are in the helper; dropping the rig SIGKILLs the paused broker.
    let _ = stream_while_broker_2_is_paused().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_broker_catches_up_after_resume() {
    let (rig, _device) = stream_while_broker_2_is_paused().await;
    let resumed = Instant::now();
    rig.brokers[2].resume().expect("SIGCONT broker #2");
    let total = usize::try_from(STREAMED).expect("small");
    let got = rig.subs[2].wait_for_count(total, BULK_WAIT).await;
    assert_eq!(
        got.len(),
        total,
        "the paused broker catches up after resume: {:?}",
        rig.proxy.status_of(2)
    );
    assert_eq!(
        numbers_of(&got, "s"),
        (0..STREAMED).collect::<Vec<_>>(),
        "broker #2: complete and in order"
    );
    println!(
        "broker #2 caught up {:?} after resume",
        got.last().map(|m| m.at.duration_since(resumed))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_broker_gets_in_flight_and_queued_qos1_messages_after_restart() {
    // Four phases of PHASE messages each: before the outage, in flight when
    // the broker died, queued while it was down, and after its restart.
    const PHASE: u64 = 50;
    const ALL: u64 = 4 * PHASE;
    let lost_at_kill = PHASE..3 * PHASE;
    let mut rig = ProxyRig::start("outage/#", 1, |_, _| {})
        .await
        .expect("rig");
    let device = Publisher::connect(rig.port()).await.expect("device");
    let device_id = device.client_id().to_owned();
    rig.proxy
        .wait_upstreams_connected(1, WAIT)
        .await
        .expect("upstreams");
    let publish_range = |range: std::ops::Range<u64>| {
        let device = &device;
        async move {
            for n in range {
                device
                    .publish(&format!("outage/{n}"), numbered("o", n), 1, false)
                    .await
                    .expect("publish");
            }
            device
                .wait_acked(WAIT)
                .await
                .expect("acked (ack policy: queued)");
        }
    };

    publish_range(0..PHASE).await;
    let first = usize::try_from(PHASE).expect("small");
    for sub in &rig.subs {
        assert_eq!(sub.wait_for_count(first, WAIT).await.len(), first);
    }

    // In flight: written to a stopped broker, never acked, then it dies.
    rig.brokers[2].pause().expect("SIGSTOP broker #2");
    publish_range(PHASE..2 * PHASE).await;
    assert!(
        wait_until(WAIT, || rig
            .proxy
            .status_of(2)
            .is_ok_and(|s| s.forwarded == 2 * PHASE))
        .await,
        "the upstream wrote them: {:?}",
        rig.proxy.status_of(2)
    );
    rig.brokers[2].kill().expect("SIGKILL broker #2");
    assert!(
        wait_until(WAIT, || rig
            .proxy
            .status_of(2)
            .is_ok_and(|s| s.sessions_connected == 0))
        .await,
        "the proxy noticed: {:?}",
        rig.proxy.status_of(2)
    );

    // Queued: the device keeps publishing (and getting acks) during the outage.
    publish_range(2 * PHASE..3 * PHASE).await;
    assert!(
        wait_until(WAIT, || rig
            .proxy
            .status_of(2)
            .is_ok_and(|s| s.reconnects > 0))
        .await,
        "the upstream retries: {:?}",
        rig.proxy.status_of(2)
    );

    // Back on the same port: the upstream reconnects, resends what was in
    // flight and flushes its queue. The broker log shows what it received
    // even before our subscriber is back.
    rig.brokers[2].restart().await.expect("restart broker #2");
    let broker = &rig.brokers[2];
    assert!(
        wait_until(WAIT, || broker.client_connects(&device_id) == 2).await,
        "the upstream connected again:\n{}",
        broker.log_tail()
    );
    let wanted: BTreeSet<String> = lost_at_kill
        .clone()
        .map(|n| format!("outage/{n}"))
        .collect();
    assert!(
        wait_until(WAIT, || published_topics(broker, &device_id)
            .is_superset(&wanted))
        .await,
        "in-flight and queued messages reached the restarted broker; missing {:?}",
        wanted
            .difference(&published_topics(broker, &device_id))
            .collect::<Vec<_>>()
    );
    let status = rig.proxy.status_of(2).expect("status");
    assert!(status.connects >= 2 && status.reconnects > 0, "{status:?}");
    assert_eq!(status.dropped, 0, "{status:?}");

    // After: new messages reach the restarted broker's (resubscribed) subscriber.
    rig.subs[2]
        .wait_for_subacks(2, WAIT)
        .await
        .expect("subscriber resubscribed");
    publish_range(3 * PHASE..ALL).await;
    let all = usize::try_from(ALL).expect("small");
    for sub in &rig.subs[..2] {
        sub.wait_for_count(all, WAIT).await;
    }
    // Whatever was flushed before the subscriber came back is only in the log.
    let missing_at_sub = || missing(&numbers_of(&rig.subs[2].received(), "o"), ALL);
    assert!(
        wait_until(WAIT, || missing_at_sub()
            .iter()
            .all(|n| lost_at_kill.contains(n)))
        .await,
        "after the restart broker #2 delivers everything new: missing {:?}",
        missing_at_sub()
    );
    // Over both runs, broker #2 received every number (duplicates allowed).
    let logged: Vec<u64> = published_topics(broker, &device_id)
        .iter()
        .filter_map(|t| t.strip_prefix("outage/")?.parse().ok())
        .collect();
    assert_eq!(missing(&logged, ALL), Vec::<u64>::new(), "no gaps");
    for (i, sub) in rig.subs[..2].iter().enumerate() {
        assert_eq!(
            numbers_of(&sub.received(), "o"),
            (0..ALL).collect::<Vec<_>>(),
            "healthy broker #{i}: untouched by the outage"
        );
    }
}

/// Waits until nothing accepts TCP connections on 127.0.0.1:`port`.
async fn wait_port_closed(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_flushes_what_devices_had_acked() {
    // More than the upstream's in-flight window (1,024), so with the brokers
    // stopped part of it waits in the proxy's queues, not in socket buffers:
    // only a real drain during shutdown delivers it.
    const MESSAGES: u64 = 2_000;
    let total = usize::try_from(MESSAGES).expect("small");
    let mut rig = ProxyRig::start("bye/#", 1, |config, _| {
        config.session.drain_timeout = Duration::from_secs(5);
    })
    .await
    .expect("rig");
    let device = rig
        .device_with_will("bye/will", "device lost", 1)
        .await
        .expect("device");

    for broker in &rig.brokers {
        broker.pause().expect("SIGSTOP");
    }
    for n in 0..MESSAGES {
        device
            .publish("bye/x", numbered("b", n), 1, false)
            .await
            .expect("publish");
    }
    device
        .wait_acked(WAIT)
        .await
        .expect("acked by the proxy (ack policy: queued)");
    let queued: i64 = rig.proxy.status().iter().map(|s| s.queue_messages).sum();
    println!("queued in the proxy when shutdown starts: {queued} messages");

    // The brokers come back only once shutdown is under way (the listener
    // is closed), so everything still queued must go out during the drain.
    let port = rig.port();
    let brokers = &rig.brokers;
    let started = Instant::now();
    let (shutdown, resumed) = tokio::join!(rig.proxy.shutdown(), async move {
        let closed = wait_port_closed(port, WAIT).await;
        for broker in brokers {
            broker.resume().expect("SIGCONT");
        }
        closed
    });
    assert!(resumed, "the listener closed at shutdown");
    shutdown.expect("graceful shutdown within the drain timeout");
    println!("shutdown with the flush took {:?}", started.elapsed());

    for (i, status) in rig.proxy.status().iter().enumerate() {
        assert_eq!(
            status.dropped, 0,
            "broker #{i}: nothing left behind: {status:?}"
        );
        assert_eq!(status.queue_messages, 0, "broker #{i}: {status:?}");
    }
    for sub in &rig.subs {
        sub.wait_for_count(total, WAIT).await;
    }
    for (i, got) in wait_all_quiet(&rig.subs, QUIET, WAIT)
        .await
        .iter()
        .enumerate()
    {
        assert_eq!(
            numbers_of(got, "b"),
            (0..MESSAGES).collect::<Vec<_>>(),
            "broker #{i}: all {MESSAGES}, in order, and no will (shutdown is not a device loss)"
        );
    }
    let needle = format!("Received DISCONNECT from {}", device.client_id());
    for (i, broker) in rig.brokers.iter().enumerate() {
        assert!(
            wait_until(WAIT, || broker.count_in_log(&needle) == 1).await,
            "broker #{i}: the upstream said goodbye:\n{}",
            broker.log_tail()
        );
    }
}
