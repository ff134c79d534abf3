//! Hot reload of `--brokers-file` as Kubernetes and editors change it, with a device
//! connected: added brokers get traffic, removed ones stop getting it, changed ones
//! reconnect with their new settings, and unchanged ones keep their upstream connection.
//! Invalid files keep the previous set forwarding and are counted as errors.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use mqtt_proxy::broker::BrokerConfig;
use mqtt_proxy::ProxyHandle;
use mqtt_proxy_tests::outage::{
    broker, brokers_json, metric_value, proxy_config, status_of, wait_for_message, wait_upstreams,
    write_and_rename, KubeletDir,
};
use mqtt_proxy_tests::{wait_until, Mosquitto, Publisher, Received, Subscriber};

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);
/// The watcher's poll period (the binary uses 500 ms).
const POLL: Duration = Duration::from_millis(100);
/// The brief: a reload reaches a new broker within this.
const RELOAD_BOUND: Duration = Duration::from_secs(2);

fn reload_errors() -> f64 {
    metric_value(
        &mqtt_proxy::metrics::render(),
        "mqtt_proxy_config_reloads_total",
        &[("result", "error")],
    )
    .unwrap_or(0.0)
}

fn has(messages: &[Received], topic: &str, payload: &str) -> bool {
    messages
        .iter()
        .any(|m| m.topic == topic && m.payload == payload.as_bytes())
}

/// Publishes a probe every 20 ms until `target` got one; how long that took.
async fn probe_until(device: &Publisher, target: &Subscriber, bound: Duration) -> Result<Duration> {
    let start = Instant::now();
    let mut n = 0u32;
    while target.count() == 0 {
        ensure!(start.elapsed() < bound, "no probe arrived within {bound:?}");
        device.publish("r/probe", n.to_string(), 1, false).await?;
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(start.elapsed())
}

/// Publishes `payload` on `r/<payload>` and waits until each `(subscriber, topic)` got it.
async fn expect_delivery(
    device: &Publisher,
    payload: &str,
    targets: &[(&Subscriber, String)],
) -> Result<()> {
    device
        .publish(&format!("r/{payload}"), payload.to_owned(), 1, false)
        .await?;
    for (sub, topic) in targets {
        let ok = wait_for_message(sub, topic, payload, WAIT).await;
        ensure!(ok, "{payload:?} did not arrive on {topic}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_symlink_swap_applies_only_the_difference() -> Result<()> {
    let (a, b, c, d) = tokio::try_join!(
        Mosquitto::start(),
        Mosquitto::start(),
        Mosquitto::start(),
        Mosquitto::start()
    )?;
    let initial = [
        broker("reload-a", a.port()),
        broker("reload-b", b.port()),
        broker("reload-c", c.port()),
    ];
    let dir = tempfile::tempdir()?;
    let mut mount = KubeletDir::create(dir.path(), "brokers.json", &brokers_json(&initial))?;
    let proxy = ProxyHandle::start(&proxy_config(), &initial).await?;
    let watcher = tokio::spawn(mqtt_proxy::reload::watch(
        mount.path(),
        proxy.control(),
        POLL,
    ));
    let (sub_a, sub_b, sub_c, sub_d) = tokio::try_join!(
        Subscriber::connect(a.port(), "#", 1),
        Subscriber::connect(b.port(), "#", 1),
        Subscriber::connect(c.port(), "#", 1),
        Subscriber::connect(d.port(), "#", 1)
    )?;
    let device = Publisher::builder(proxy.mqtt_addr().port())
        .client_id("reload-device")
        .connect()
        .await?;
    wait_upstreams(
        || proxy.status(),
        &["reload-a", "reload-b", "reload-c"],
        1,
        WAIT,
    )
    .await?;
    let r = |t: &str| format!("r/{t}");
    expect_delivery(
        &device,
        "before",
        &[
            (&sub_a, r("before")),
            (&sub_b, r("before")),
            (&sub_c, r("before")),
        ],
    )
    .await?;
    let a_before = status_of(&proxy.status(), "reload-a").context("A")?;

    // Add D, give C a topic prefix, remove B.
    let mut c_changed = broker("reload-c", c.port());
    c_changed.topic_prefix = Some("v2/".into());
    let next = [
        broker("reload-a", a.port()),
        c_changed,
        broker("reload-d", d.port()),
    ];
    mount.swap(&brokers_json(&next))?;
    let took = probe_until(&device, &sub_d, RELOAD_BOUND).await?;
    println!("kubelet swap: first message at the added broker {took:?} after the swap");

    expect_delivery(
        &device,
        "after",
        &[
            (&sub_a, r("after")),
            (&sub_c, "v2/r/after".into()),
            (&sub_d, r("after")),
        ],
    )
    .await?;
    let got_b = sub_b.wait_quiet(QUIET, WAIT).await;
    assert!(
        !has(&got_b, &r("after"), "after"),
        "the removed broker still gets traffic"
    );
    let got_c = sub_c.wait_quiet(QUIET, WAIT).await;
    assert!(
        !has(&got_c, &r("after"), "after"),
        "C got the unprefixed topic too"
    );
    let disconnected = wait_until(WAIT, || {
        b.count_in_log("Client reload-device disconnected") >= 1
    })
    .await;
    assert!(
        disconnected,
        "B's upstream was not closed:\n{}",
        b.log_tail()
    );

    // A kept its connection: one CONNECT at the broker, no reconnect in the proxy.
    assert_eq!(a.client_connects("reload-device"), 1, "{}", a.log_tail());
    let a_after = status_of(&proxy.status(), "reload-a").context("A")?;
    assert_eq!(
        (a_after.connects, a_after.reconnects),
        (a_before.connects, a_before.reconnects),
        "A's upstream was re-established: {a_after:?}"
    );
    assert_eq!(c.client_connects("reload-device"), 2, "C reconnected once");

    // Invalid files: the previous set keeps forwarding and each is counted once.
    let mut bad_field = next.clone();
    bad_field[2].max_qos = Some(9);
    for (what, text) in [
        ("bad JSON", "{\"brokers\": [".to_string()),
        ("maxQos 9", brokers_json(&bad_field)),
    ] {
        let errors = reload_errors();
        mount.swap(&text)?;
        let counted = wait_until(WAIT, || reload_errors() > errors).await;
        assert!(
            counted,
            "{what}: config_reloads_total{{result=\"error\"}} did not increase"
        );
        // Counted once per bad content, not once per poll.
        tokio::time::sleep(POLL * 3).await;
        assert_eq!(reload_errors() - errors, 1.0, "{what}: counted once");
        let payload = format!("still-{}", what.replace(' ', "-"));
        expect_delivery(
            &device,
            &payload,
            &[
                (&sub_a, r(&payload)),
                (&sub_c, format!("v2/r/{payload}")),
                (&sub_d, r(&payload)),
            ],
        )
        .await
        .with_context(|| format!("after the {what} file"))?;
        let ids: Vec<String> = proxy.status().into_iter().map(|s| s.id).collect();
        assert_eq!(
            ids,
            ["reload-a", "reload-c", "reload-d"],
            "{what}: set unchanged"
        );
    }
    assert_eq!(
        a.client_connects("reload-device"),
        1,
        "A untouched by the errors"
    );

    watcher.abort();
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editor_write_and_rename_is_picked_up() -> Result<()> {
    let (a, b) = tokio::try_join!(Mosquitto::start(), Mosquitto::start())?;
    let only_a: [BrokerConfig; 1] = [broker("editor-a", a.port())];
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("brokers.json");
    std::fs::write(&path, brokers_json(&only_a))?;
    let proxy = ProxyHandle::start(&proxy_config(), &only_a).await?;
    let watcher = tokio::spawn(mqtt_proxy::reload::watch(
        path.clone(),
        proxy.control(),
        POLL,
    ));
    let sub_b = Subscriber::connect(b.port(), "#", 1).await?;
    let device = Publisher::builder(proxy.mqtt_addr().port())
        .client_id("editor-device")
        .connect()
        .await?;
    wait_upstreams(|| proxy.status(), &["editor-a"], 1, WAIT).await?;

    write_and_rename(
        &path,
        &brokers_json(&[broker("editor-a", a.port()), broker("editor-b", b.port())]),
    )?;
    let took = probe_until(&device, &sub_b, RELOAD_BOUND).await?;
    println!("editor write+rename: first message at the added broker {took:?} after the save");
    assert_eq!(a.client_connects("editor-device"), 1, "A untouched");

    watcher.abort();
    proxy.shutdown().await;
    Ok(())
}
