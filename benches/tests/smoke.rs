//! Smoke tests of the load tool against real mosquitto brokers on free loopback ports:
//! tiny bounded runs that must lose nothing and report sane numbers. Parallel-safe
//! (own brokers, own temp dirs), each well under 10 s.

use std::process::Command;
use std::time::Duration;

use mqtt_proxy_benches::compare::{compare, Case, CompareConfig};
use mqtt_proxy_benches::mosquitto::{BrokerLimits, Mosquitto};
use mqtt_proxy_benches::workload::{self, ClientKind, Topology, Workload};

fn workload(qos: u8, count: u64) -> Workload {
    Workload {
        qos,
        payload_size: 64,
        count,
        rate: 0,
        topic_root: "smoke".into(),
        fixed_topic: false,
        timeout: Duration::from_secs(8),
        drain_silence: Duration::from_secs(2),
        inflight: 100,
        client: ClientKind::Raw,
        progress: false,
    }
}

async fn broker(name: &str) -> Mosquitto {
    Mosquitto::start(name, BrokerLimits::default(), &[])
        .await
        .expect("mosquitto starts (apt-get install mosquitto)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_run_to_one_mosquitto_loses_nothing() {
    let b = broker("b1").await;
    let topo = Topology::fan_out(&b.addr(), 1, &[("b1".into(), b.addr())]);
    let out = workload::run(&workload(1, 200), &topo, "smoke")
        .await
        .expect("run completes");
    let r = &out.report;
    assert!(!r.timed_out, "{}", r.render_table());
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(r.publish.sent, 200);
    assert_eq!(r.publish.acked, 200);
    let ack_s = r.publish.last_ack_s.expect("every QoS 1 publish acked");
    assert!(ack_s > 0.0 && ack_s < 8.0, "{ack_s}");
    assert_eq!(r.brokers.len(), 1);
    let b1 = &r.brokers[0];
    assert_eq!(
        (b1.sent, b1.received, b1.lost, b1.unexpected),
        (200, 200, 0, 0)
    );
    assert!(b1.throughput_msgs > 0.0 && b1.throughput_mb_s > 0.0);
    let l = b1.latency;
    assert!(l.p50 > 0.0 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max);
    assert!(l.max < 8_000.0, "{l:?}");
    assert_eq!(out.histograms[0].len(), 200);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_paced_devices_reach_every_subscriber() {
    let b = broker("b1").await;
    // Two devices, two subscribers (on the same broker): each subscriber must see both
    // devices' messages exactly once.
    let topo = Topology::fan_out(
        &b.addr(),
        2,
        &[("s1".into(), b.addr()), ("s2".into(), b.addr())],
    );
    let mut w = workload(2, 100);
    w.rate = 500;
    w.fixed_topic = true;
    let r = workload::run(&w, &topo, "smoke").await.expect("run").report;
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(r.publish.sent, 200);
    assert_eq!(r.publish.acked, 200);
    // 100 messages at 500/s per device: about 0.2 s of sending, not one burst
    assert!(r.publish.send_s > 0.15, "{}", r.publish.send_s);
    for s in &r.brokers {
        assert_eq!(
            (s.sent, s.received, s.lost, s.duplicates),
            (200, 200, 0, 0),
            "{}",
            s.name
        );
    }
    b.stop().await;
}

#[test]
fn cli_run_writes_json_report() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let b = rt.block_on(broker("b1"));
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("run.json");
    let out = Command::new(env!("CARGO_BIN_EXE_mqtt-load"))
        .args(["run", "--target", &b.addr(), "--sub", &b.addr()])
        .args(["--qos", "1", "--count", "200", "--timeout", "8", "--quiet"])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("mqtt-load runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("p99.9 ms"), "{table}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("json");
    assert_eq!(v["brokers"][0]["received"], 200);
    assert_eq!(v["brokers"][0]["lost"], 0);
    assert_eq!(v["publish"]["sent"], 200);
    rt.block_on(b.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_runs_direct_ceiling_and_bridge_cases_and_skips_missing_proxy() {
    let cfg = CompareConfig {
        workload: workload(1, 200),
        brokers: 2,
        reps: 1,
        cases: Case::ALL.to_vec(),
        proxy_bin: "/nonexistent/mqtt-proxy".into(),
        limits: BrokerLimits::default(),
    };
    let r = compare(&cfg).await;
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);
    assert!(r.skipped[0].contains("case c skipped"));
    let cases: Vec<Case> = r.runs.iter().map(|run| run.case).collect();
    assert_eq!(cases, vec![Case::A, Case::B, Case::D]);
    for run in &r.runs {
        assert_eq!(run.lost, 0, "{}", run.report.render_table());
        assert!(run.msgs_per_broker > 0.0);
    }
    assert_eq!(r.runs[1].report.brokers.len(), 2);
    let db = r.ratios.iter().find(|x| x.name == "d/b").expect("d/b");
    assert_eq!(db.per_rep.len(), 1);
    assert!(r
        .ratios
        .iter()
        .find(|x| x.name == "c/a")
        .is_some_and(|x| x.spread.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_the_target_never_reaches_is_reported_not_ready_within_the_timeout() {
    let (b1, b2) = (broker("b1").await, broker("b2").await);
    // Devices publish to b1; b2 is not downstream of it, so readiness never comes.
    let topo = Topology::fan_out(
        &b1.addr(),
        1,
        &[("b1".into(), b1.addr()), ("b2".into(), b2.addr())],
    );
    let mut w = workload(0, 50);
    w.timeout = Duration::from_secs(2);
    w.drain_silence = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let r = workload::run(&w, &topo, "smoke").await.expect("run").report;
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(!r.ready);
    assert!(
        r.warnings.iter().any(|w| w.starts_with("b2:")),
        "{:?}",
        r.warnings
    );
    assert_eq!((r.brokers[0].received, r.brokers[0].lost), (50, 0));
    assert_eq!((r.brokers[1].received, r.brokers[1].lost), (0, 50));
    b1.stop().await;
    b2.stop().await;
}

/// The proxy binary: `MQTT_LOAD_PROXY_BIN`, else the one `cargo test --workspace` builds
/// next to this test's directory (`target/<profile>/mqtt-proxy`; the mqtt-proxy package has
/// integration tests, so its binary is built with them).
fn proxy_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("MQTT_LOAD_PROXY_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("mqtt-proxy"))
        .expect("target/<profile>/");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p mqtt-proxy` (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_scenario_delivers_everything_and_reads_every_process_cpu() {
    use mqtt_proxy_benches::cpu::{cpu, CpuConfig};
    let proxy_bin = proxy_bin();
    let cfg = CpuConfig {
        rates: vec![1000],
        duration: Duration::from_secs(1),
        brokers: 3,
        reps: 1,
        cases: vec![Case::A, Case::C, Case::D],
        qos: 1,
        payload_size: 64,
        proxy_bin,
        limits: BrokerLimits::default(),
        progress: false,
    };
    let r = cpu(&cfg).await;
    let table = r.render_table();
    assert!(r.failures.is_empty() && r.skipped.is_empty(), "{table}");
    assert!(r.all_delivered(), "{table}");
    assert!(table.contains("delivered all: yes"), "{table}");
    let cases: Vec<Case> = r.runs.iter().map(|run| run.case).collect();
    assert_eq!(cases, vec![Case::A, Case::C, Case::D]);
    for run in &r.runs {
        assert_eq!(run.sent, 1000, "{table}");
        let brokers = if run.case == Case::A { 1 } else { 3 };
        assert_eq!(run.brokers_cpu.len(), brokers);
        assert!(run.brokers_cpu.iter().all(|c| c.total() > 0.0), "{table}");
        match run.case {
            Case::A => assert!(run.front_cpu.is_none()),
            _ => assert!(run.front_s().is_some_and(|s| s > 0.0), "{table}"),
        }
    }
    let ratio = &r.proxy_over_bridge[0];
    assert_eq!(ratio.rate, 1000);
    assert!(ratio.spread.is_some_and(|s| s.median > 0.0), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_delivers_everything_and_reports_rss_per_stage() {
    use mqtt_proxy_benches::fleet::{self, FleetConfig};
    let cfg = FleetConfig {
        proxy_bin: proxy_bin(),
        devices: 40,
        secs: 3,
        payload_size: 64,
        sub_fraction: 0.25,
        rss_at: vec![20],
        connect_concurrency: 16,
        progress: false,
    };
    let r = fleet::run(&cfg).await.expect("fleet run");
    let text = r.render();
    assert!(r.all_delivered(), "{text}");
    assert_eq!(r.subscribed_devices, 10, "{text}");
    assert_eq!(r.sent, 40 * 3, "{text}");
    assert_eq!(r.sinks.len(), 3);
    assert!(
        r.sinks
            .iter()
            .all(|s| s.expected == 120 && s.received == 120),
        "{text}"
    );
    assert!(
        r.downlinks_sent > 0 && r.downlinks_received >= r.downlinks_sent,
        "{text}"
    );
    let stages: Vec<usize> = r.stages.iter().map(|s| s.devices).collect();
    assert_eq!(stages, vec![20, 40], "{text}");
    // The proxy holds a device socket and three upstream sockets per device.
    assert!(
        r.stages
            .iter()
            .all(|s| s.rss_mb > 0.0 && s.fds >= 4 * s.devices),
        "{text}"
    );
    assert!(text.contains("open-file limit: soft"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_keeps_counters_consistent_and_descriptors_at_baseline() {
    use mqtt_proxy_benches::churn::{self, ChurnConfig};
    let cfg = ChurnConfig {
        proxy_bin: proxy_bin(),
        devices: 30,
        every: Duration::from_millis(800),
        secs: 4,
        sample: Duration::from_secs(1),
        progress: false,
    };
    let r = churn::run(&cfg).await.expect("churn run");
    let text = r.render();
    assert!(r.consistent().is_empty(), "{text}");
    assert!(r.connects >= 30 * 4, "{text}");
    assert_eq!(r.client_id_fights, 0, "{text}");
    assert!(
        !r.samples.is_empty() && r.samples.iter().all(|s| s.fds > 0),
        "{text}"
    );
    assert_eq!(r.after.devices_connected, 0.0, "{text}");
}
