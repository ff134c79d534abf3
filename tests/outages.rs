//! One upstream broker fails while a device keeps publishing: killed and restarted during
//! a steady QoS 1 stream, unreachable until its queue overflows (both overflow policies),
//! down across a proxy restart with the disk spool, and paused under each ack policy.
//!
//! What is measured is the proxy's behaviour, so loss at mosquitto itself (a restarted
//! broker with `persistence false` has no subscribers until ours re-subscribes) is told
//! apart from loss in the proxy: see each test's comments.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use mqtt_proxy::broker::{OverflowPolicy, QueueLimits};
use mqtt_proxy::config::AckPolicy;
use mqtt_proxy::ProxyHandle;
use mqtt_proxy_tests::outage::{
    broker, largest_gap, metric_value, proxy_config, runs, seqs, status_of, wait_upstreams, Gate,
};
use mqtt_proxy_tests::{wait_until, Mosquitto, Publisher, Subscriber};
use rumqttc::MqttOptions;

/// Generous bound for things that normally take milliseconds.
const WAIT: Duration = Duration::from_secs(5);
/// How long a subscriber must stay silent before we call a delivery complete.
const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------
// 1. Kill and restart during a steady stream

/// ~2,000 msg/s for ~6 s, in bursts of 20 every 10 ms.
const STREAM_MESSAGES: u64 = 12_000;
const BURST: u64 = 20;
const BURST_EVERY: Duration = Duration::from_millis(10);
/// B is killed after ~2 s of traffic and restarted ~3 s later (counted in messages, so a
/// slow machine stretches the schedule instead of breaking it).
const KILL_AT: u64 = 4_000;
const RESTART_AT: u64 = 10_000;

/// Publishes `STREAM_MESSAGES` QoS 1 messages, payload = sequence number; returns the
/// device and when each sequence number was handed to the client.
async fn stream(device: Publisher, published: Arc<AtomicU64>) -> Result<(Publisher, Vec<Instant>)> {
    let mut sent_at = Vec::with_capacity(STREAM_MESSAGES as usize);
    let mut tick = tokio::time::interval(BURST_EVERY);
    let mut seq = 0;
    while seq < STREAM_MESSAGES {
        tick.tick().await;
        for _ in 0..BURST.min(STREAM_MESSAGES - seq) {
            sent_at.push(Instant::now());
            device
                .publish("stream/s", seq.to_string(), 1, false)
                .await?;
            seq += 1;
            published.store(seq, Ordering::SeqCst);
        }
    }
    Ok((device, sent_at))
}

/// What B's log tells about the outage. `acked`: how many of the device's publishes B's
/// first run acknowledged: the first `acked` sequence numbers were mosquitto's to lose (the
/// proxy may forget them), every later one the proxy must resend. `consumer_first`: in the
/// second run our consumer subscribed before the device's upstream connected, so nothing the
/// proxy delivered after the restart could miss it.
struct OutageLog {
    acked: u64,
    consumer_first: bool,
}

fn outage_log(log: &str, device: &str, consumer: &str) -> Result<OutageLog> {
    let mut runs: Vec<Vec<&str>> = Vec::new();
    for line in log.lines() {
        if line.contains("mosquitto version") && line.ends_with(" starting") {
            runs.push(Vec::new());
        }
        if let Some(run) = runs.last_mut() {
            run.push(line);
        }
    }
    ensure!(
        runs.len() == 2,
        "expected 2 broker runs in B's log, found {}",
        runs.len()
    );
    // mosquitto logs "Sending PUBACK" before it sends it, so this never undercounts.
    let puback = format!("Sending PUBACK to {device} (");
    let acked = runs[0].iter().filter(|l| l.contains(&puback)).count() as u64;
    let subscribed = format!("Received SUBSCRIBE from {consumer}");
    let connected = format!(" as {device} (");
    let position = |needle: &str| runs[1].iter().position(|l| l.contains(needle));
    let consumer_first = matches!(
        (position(&subscribed), position(&connected)),
        (Some(s), Some(c)) if s < c
    );
    Ok(OutageLog {
        acked,
        consumer_first,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_broker_loses_nothing_in_the_proxy_and_stalls_no_other() -> Result<()> {
    let (a, mut b, c) =
        tokio::try_join!(Mosquitto::start(), Mosquitto::start(), Mosquitto::start())?;
    let ids = ["kill-a", "kill-b", "kill-c"];
    let proxy = ProxyHandle::start(
        &proxy_config(),
        &[
            broker(ids[0], a.port()),
            broker(ids[1], b.port()),
            broker(ids[2], c.port()),
        ],
    )
    .await?;
    let sub_a = Subscriber::connect(a.port(), "stream/#", 1).await?;
    let sub_c = Subscriber::connect(c.port(), "stream/#", 1).await?;
    // Persistent session and a fixed id, as a real consumer would have; the restarted broker
    // forgets it anyway, and the harness re-subscribes 50 ms after each reconnect.
    let mut options = MqttOptions::new("kill-b-consumer", "127.0.0.1", b.port());
    options.set_clean_session(false);
    let sub_b = Arc::new(Subscriber::connect_with(options, "stream/#", 1).await?);
    let device = Publisher::builder(proxy.mqtt_addr().port())
        .client_id("kill-device")
        .connect()
        .await?;
    wait_upstreams(|| proxy.status(), &ids, 1, WAIT).await?;

    let published = Arc::new(AtomicU64::new(0));
    let streaming = tokio::spawn(stream(device, Arc::clone(&published)));
    let reached = |n: u64| {
        let published = Arc::clone(&published);
        move || published.load(Ordering::SeqCst) >= n
    };
    ensure!(
        wait_until(Duration::from_secs(20), reached(KILL_AT)).await,
        "stream stalled before the kill"
    );
    b.kill()?;
    let killed = Instant::now();
    // When B's consumer is subscribed again (observed up to one poll late, which only
    // makes the "must arrive" set below smaller, never wrong).
    let resubscribed = tokio::spawn({
        let sub_b = Arc::clone(&sub_b);
        async move {
            sub_b
                .wait_for_subacks(2, Duration::from_secs(30))
                .await
                .map(|()| Instant::now())
        }
    });
    ensure!(
        wait_until(Duration::from_secs(20), reached(RESTART_AT)).await,
        "stream stalled during the outage"
    );
    b.restart().await?;
    let restarted = Instant::now();
    let (device, sent_at) = streaming.await.context("stream task")??;
    device.wait_acked(Duration::from_secs(30)).await?;
    let resubscribed = resubscribed.await.context("resubscribe task")??;

    // Every message written to B and its queue empty; resends of what was in flight are
    // already on the wire then, and `wait_quiet` collects them.
    let drained = wait_until(Duration::from_secs(20), || {
        status_of(&proxy.status(), ids[1]).is_some_and(|s| {
            s.queue_messages == 0 && s.sessions_connected == 1 && s.forwarded >= STREAM_MESSAGES
        })
    })
    .await;
    ensure!(drained, "B's queue did not drain: {:#?}", proxy.status());
    let got_a = sub_a
        .wait_for_count(STREAM_MESSAGES as usize, Duration::from_secs(20))
        .await;
    let got_c = sub_c
        .wait_for_count(STREAM_MESSAGES as usize, Duration::from_secs(20))
        .await;
    let got_b = sub_b.wait_quiet(QUIET, Duration::from_secs(20)).await;

    let last = STREAM_MESSAGES - 1;
    for (name, got) in [("A", &got_a), ("C", &got_c)] {
        assert_eq!(
            runs(&seqs(got)?),
            vec![(0, last)],
            "{name} gets every message once, in order"
        );
    }
    let b_seqs = seqs(&got_b)?;
    let b_runs = runs(&b_seqs);
    // From which sequence number on everything must arrive at B: whatever was handed to the
    // device after B's consumer was back; and when the consumer beat the proxy's reconnect,
    // everything mosquitto had not acknowledged before it died.
    let log = outage_log(&b.log(), "kill-device", "kill-b-consumer")?;
    let after_resubscribe = sent_at
        .iter()
        .position(|t| *t > resubscribed)
        .unwrap_or(sent_at.len()) as u64;
    let must_arrive = if log.consumer_first {
        after_resubscribe.min(log.acked)
    } else {
        after_resubscribe
    };
    // Before the kill one in-order run from 0; after the restart one in-order run to the
    // end (the proxy resends what B had not acknowledged, so the runs may overlap).
    assert!(
        b_runs.len() <= 2
            && b_runs.first().is_some_and(|r| r.0 == 0)
            && b_runs
                .last()
                .is_some_and(|r| r.1 == last && r.0 <= must_arrive),
        "B: runs {b_runs:?}; everything from {must_arrive} on must arrive in order \
         (B acked {} before the kill; consumer before proxy: {})",
        log.acked,
        log.consumer_first
    );
    let mut distinct = b_seqs.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let lost = STREAM_MESSAGES - distinct.len() as u64;
    let duplicates = b_seqs.len() - distinct.len();

    let statuses = proxy.status();
    for id in ids {
        let s = status_of(&statuses, id).context("broker in status")?;
        assert_eq!(s.dropped, 0, "{id}: the proxy dropped nothing: {s:?}");
        assert_eq!(
            s.forwarded, STREAM_MESSAGES,
            "{id}: each message written once (resends aside): {s:?}"
        );
        assert_eq!(s.queue_messages, 0, "{id}: queue drained: {s:?}");
    }
    let b_status = status_of(&statuses, ids[1]).context("B in status")?;
    assert!(
        b_status.reconnects >= 1,
        "B's upstream reconnected: {b_status:?}"
    );

    let (gap_a, gap_c) = (largest_gap(&got_a), largest_gap(&got_c));
    println!(
        "kill/restart: {STREAM_MESSAGES} msgs; largest arrival gap A {gap_a:?}, C {gap_c:?}; \
         B down {:?}, consumer back {:?} after restart (before the proxy reconnected: {}); \
         B acked {} before the kill; B lost {lost} (all at mosquitto: everything from \
         {must_arrive} on arrived), {duplicates} duplicates, runs {b_runs:?}",
        restarted - killed,
        resubscribed.saturating_duration_since(restarted),
        log.consumer_first,
        log.acked,
    );
    // A healthy broker must not wait for a dead one: the outage itself lasts ~3 s.
    assert!(
        gap_a < Duration::from_secs(2) && gap_c < Duration::from_secs(2),
        "A {gap_a:?}, C {gap_c:?}"
    );
    proxy.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 2. Queue cap while a broker is unreachable

const CAP_MESSAGES: u64 = 1_000;
const CAP: u64 = 100;

/// B sits behind a closed [`Gate`] (its port refuses connections, as a killed broker's
/// does) while its consumer stays subscribed, so exactly what the proxy kept is observed
/// once the gate opens. Returns the sequence numbers B received.
async fn overflow_run(overflow: OverflowPolicy, tag: &str) -> Result<Vec<u64>> {
    let (a, b) = tokio::try_join!(Mosquitto::start(), Mosquitto::start())?;
    let mut gate = Gate::new(b.port())?;
    let (id_a, id_b) = (format!("cap-{tag}-a"), format!("cap-{tag}-b"));
    let mut b_config = broker(&id_b, gate.port());
    b_config.queue = Some(QueueLimits {
        max_messages: Some(CAP as usize),
        max_bytes: None,
        overflow: Some(overflow),
    });
    let proxy = ProxyHandle::start(&proxy_config(), &[broker(&id_a, a.port()), b_config]).await?;
    let sub_a = Subscriber::connect(a.port(), "cap/#", 0).await?;
    let sub_b = Subscriber::connect(b.port(), "cap/#", 0).await?;
    let device = Publisher::connect(proxy.mqtt_addr().port()).await?;
    wait_upstreams(|| proxy.status(), &[&id_a], 1, WAIT).await?;
    let dropped_metric = || {
        let labels = [("broker", id_b.as_str()), ("reason", "queue_full")];
        metric_value(
            &mqtt_proxy::metrics::render(),
            "mqtt_proxy_messages_dropped_total",
            &labels,
        )
        .unwrap_or(0.0)
    };
    let metric_before = dropped_metric();

    for seq in 0..CAP_MESSAGES {
        device.publish("cap/x", seq.to_string(), 0, false).await?;
    }
    // A gets each message right after B's queue was offered it: all 1,000 at A means the
    // proxy has made every drop decision for B.
    let got_a = sub_a.wait_for_count(CAP_MESSAGES as usize, WAIT).await;
    ensure!(
        got_a.len() == CAP_MESSAGES as usize,
        "A got {} of {CAP_MESSAGES}",
        got_a.len()
    );
    let s = status_of(&proxy.status(), &id_b).context("B in status")?;
    assert_eq!(
        (s.dropped, s.queue_messages),
        (CAP_MESSAGES - CAP, CAP as i64),
        "{tag}: {s:?}"
    );
    assert_eq!(
        dropped_metric() - metric_before,
        (CAP_MESSAGES - CAP) as f64,
        "{tag}: metric"
    );

    gate.open().await?;
    let got_b = sub_b
        .wait_for_count(CAP as usize, Duration::from_secs(10))
        .await;
    ensure!(
        got_b.len() == CAP as usize,
        "{tag}: B got {} of {CAP} after the gate opened",
        got_b.len()
    );
    let got_b = sub_b.wait_quiet(QUIET, WAIT).await;
    proxy.shutdown().await;
    seqs(&got_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_oldest_and_keeps_the_last_100() -> Result<()> {
    let got = overflow_run(OverflowPolicy::DropOldest, "oldest").await?;
    assert_eq!(got, (CAP_MESSAGES - CAP..CAP_MESSAGES).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_newest_and_keeps_the_first_100() -> Result<()> {
    let got = overflow_run(OverflowPolicy::DropNewest, "newest").await?;
    assert_eq!(got, (0..CAP).collect::<Vec<_>>());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 3. Disk spool across a proxy restart

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_messages_reach_a_broker_after_a_proxy_restart() -> Result<()> {
    const N: u64 = 50;
    let (a, mut b) = tokio::try_join!(Mosquitto::start(), Mosquitto::start())?;
    b.kill()?;
    let data = tempfile::tempdir()?;
    let mut config = proxy_config();
    config.session.spool_dir = Some(data.path().to_owned());
    let mut b_config = broker("spool-b", b.port());
    b_config.spool = true;
    let brokers = [broker("spool-a", a.port()), b_config];

    let proxy = ProxyHandle::start(&config, &brokers).await?;
    let sub_a = Subscriber::connect(a.port(), "spool/#", 1).await?;
    let device = Publisher::builder(proxy.mqtt_addr().port())
        .client_id("spool-device")
        .connect()
        .await?;
    for seq in 0..N {
        device.publish("spool/x", seq.to_string(), 1, false).await?;
    }
    device.wait_acked(WAIT).await?;
    ensure!(
        sub_a.wait_for_count(N as usize, WAIT).await.len() == N as usize,
        "A got all"
    );
    proxy.shutdown().await;
    drop(device);

    // B and its consumer first, so nothing the new proxy delivers is lost at mosquitto.
    b.restart().await?;
    let sub_b = Subscriber::connect(b.port(), "spool/#", 1).await?;
    let proxy = ProxyHandle::start(&config, &brokers).await?;
    let got = sub_b
        .wait_for_count(N as usize, Duration::from_secs(10))
        .await;
    ensure!(
        got.len() == N as usize,
        "B got {} of {N} from the spool",
        got.len()
    );
    let got = sub_b.wait_quiet(QUIET, WAIT).await;
    assert_eq!(
        seqs(&got)?,
        (0..N).collect::<Vec<_>>(),
        "all of them, in order, once"
    );
    // Every record acknowledged: the spool file is truncated to zero.
    let spool = mqtt_proxy::spool::path_for(data.path(), "spool-b", "spool-device");
    let emptied = wait_until(WAIT, || {
        std::fs::metadata(&spool).is_ok_and(|m| m.len() == 0)
    })
    .await;
    assert!(emptied, "{} still holds records", spool.display());
    proxy.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 4. Ack policies seen from a real device, one of three brokers paused

/// Polls at 1 ms until the device has no unacknowledged publish; the elapsed time, or
/// `None` after `timeout`.
async fn acked_within(device: &Publisher, since: Instant, timeout: Duration) -> Option<Duration> {
    while device.unacked() > 0 {
        if since.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Some(since.elapsed())
}

async fn puback_with_a_paused_broker(policy: AckPolicy, tag: &str) -> Result<()> {
    let (a, b, c) = tokio::try_join!(Mosquitto::start(), Mosquitto::start(), Mosquitto::start())?;
    let ids = [
        format!("ack-{tag}-a"),
        format!("ack-{tag}-b"),
        format!("ack-{tag}-c"),
    ];
    let mut config = proxy_config();
    config.session.ack_policy = policy;
    let brokers = [
        broker(&ids[0], a.port()),
        broker(&ids[1], b.port()),
        broker(&ids[2], c.port()),
    ];
    let proxy = ProxyHandle::start(&config, &brokers).await?;
    let sub_c = Subscriber::connect(c.port(), "ack/#", 1).await?;
    let device = Publisher::connect(proxy.mqtt_addr().port()).await?;
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    wait_upstreams(|| proxy.status(), &id_refs, 1, WAIT).await?;

    c.pause()?;
    let sent = Instant::now();
    device.publish("ack/x", "1", 1, false).await?;
    match policy {
        AckPolicy::Queued | AckPolicy::Any => {
            let took = acked_within(&device, sent, WAIT).await;
            c.resume()?;
            let took = took.with_context(|| format!("{tag}: no PUBACK while C is paused"))?;
            println!("ack policy {tag}: PUBACK {took:?} after PUBLISH (C paused)");
        }
        AckPolicy::All => {
            let early = acked_within(&device, sent, Duration::from_secs(1)).await;
            let resumed = Instant::now();
            let paused_for = resumed - sent;
            c.resume()?;
            assert_eq!(early, None, "all: PUBACK must wait for the paused broker");
            let took = acked_within(&device, sent, WAIT + paused_for)
                .await
                .context("all: no PUBACK after C resumed")?;
            println!(
                "ack policy {tag}: no PUBACK in {paused_for:?} while C paused; PUBACK {took:?} after \
                 PUBLISH, {:?} after resume",
                took.saturating_sub(resumed - sent)
            );
        }
    }
    ensure!(
        sub_c.wait_for_count(1, WAIT).await.len() == 1,
        "{tag}: C got the message after resuming"
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_policy_queued_acks_at_once() -> Result<()> {
    puback_with_a_paused_broker(AckPolicy::Queued, "queued").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_policy_any_acks_with_the_healthy_brokers() -> Result<()> {
    puback_with_a_paused_broker(AckPolicy::Any, "any").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_policy_all_waits_for_the_paused_broker() -> Result<()> {
    puback_with_a_paused_broker(AckPolicy::All, "all").await
}
