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

/// The proxy binary for the CPU scenario: `MQTT_LOAD_PROXY_BIN`, else the workspace's debug
/// build (`cargo test --workspace` builds it for the proxy's CLI tests), else release.
fn proxy_bin() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("MQTT_LOAD_PROXY_BIN") {
        return Some(p.into());
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    ["debug", "release"]
        .iter()
        .map(|profile| root.join(profile).join("mqtt-proxy"))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_scenario_delivers_everything_and_reads_every_process_cpu() {
    use mqtt_proxy_benches::cpu::{cpu, CpuConfig};
    let Some(proxy_bin) = proxy_bin() else {
        assert!(
            std::env::var("CI").is_err(),
            "no mqtt-proxy binary under target/ (cargo build -p mqtt-proxy)"
        );
        eprintln!("skipped: no mqtt-proxy binary under target/; run `cargo build -p mqtt-proxy`");
        return;
    };
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
