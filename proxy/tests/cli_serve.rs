//! The real `mqtt-proxy` binary serving: a real mosquitto upstream with
//! `mosquitto_pub`/`mosquitto_sub` as device and observer, exit status 0 after SIGTERM with
//! a device still connected, and the README quick start (the first device user).

use std::io::Write as _;
use std::process::{Command, Stdio};

// Each test binary uses part of the shared helpers.
#[allow(dead_code)]
mod cli_support;

use cli_support::serve::{serve, serve_with, Broker};
use cli_support::{cli, mode, ok, read_lossy, run, text, wait_until, Proc, WAIT};

/// A mosquitto, and a data dir whose store holds it as broker `up`.
fn broker_in_a_store() -> (Broker, tempfile::TempDir) {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let add = format!(
        "brokers add --id up --address 127.0.0.1 --port {}",
        broker.port
    );
    ok(&cli(dir.path(), &add, "", None), "add the broker");
    (broker, dir)
}

/// The README quick start: add a device user with the CLI, then only that user gets in.
#[test]
fn users_add_then_only_that_device_connects() {
    let (_broker, dir) = broker_in_a_store();
    let added = ok(
        &cli(
            dir.path(),
            "users add sensor-1 --password-stdin",
            "pw-sensor-1\n",
            None,
        ),
        "users add",
    );
    assert!(!added.contains("pw-sensor-1"), "{added}");
    let users = dir.path().join("users.json");
    assert_eq!(mode(&users), 0o600);
    assert!(
        !read_lossy(&users).contains("pw-sensor-1"),
        "only the hash is stored"
    );
    let listed = ok(&cli(dir.path(), "users list", "", None), "users list");
    assert!(
        listed.starts_with("sensor-1\t") && !listed.contains("argon2"),
        "{listed}"
    );

    let proxy = serve_with(dir.path(), &[], &[]);
    let mqtt_port = proxy.mqtt_port.to_string();
    let publish = |creds: &[&str]| {
        let mut cmd = Command::new("mosquitto_pub");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &mqtt_port,
            "-t",
            "q/s",
            "-m",
            "hi",
            "-q",
            "1",
        ]);
        cmd.args(creds);
        run(cmd, "")
    };
    let anonymous = publish(&[]);
    assert!(
        !anonymous.status.success(),
        "anonymous device refused by default"
    );
    assert!(
        text(&anonymous.stderr).contains("not authorised"),
        "{}",
        text(&anonymous.stderr)
    );
    let wrong = publish(&["-u", "sensor-1", "-P", "nope"]);
    assert!(!wrong.status.success());
    ok(
        &publish(&["-u", "sensor-1", "-P", "pw-sensor-1"]),
        "the added user",
    );
    let log = read_lossy(&proxy.log);
    assert!(log.contains("device authentication failed"), "{log}");
    assert!(
        !log.contains("pw-sensor-1") && !log.contains("nope"),
        "no password in logs:\n{log}"
    );
}

#[test]
fn serves_a_real_broker_and_exits_0_on_sigterm() {
    let (broker, dir) = broker_in_a_store();
    let port = broker.port.to_string();
    let mut proxy = serve(dir.path());
    let mqtt_port = proxy.mqtt_port.to_string();

    // The observer, subscribed (per the broker's log) before anything is published.
    let sub = Proc::spawn(
        "mosquitto_sub",
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port, "-i", "cli-observer"])
            .args(["-t", "cli/#", "-q", "1", "-C", "1", "-W", "10", "-v"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    assert!(
        wait_until(WAIT, || broker
            .log()
            .contains("Received SUBSCRIBE from cli-observer")),
        "observer subscribed:\n{}",
        broker.log()
    );

    let mut publish = Command::new("mosquitto_pub");
    publish.args(["-h", "127.0.0.1", "-p", &mqtt_port, "-i", "cli-device"]);
    publish.args(["-t", "cli/hello", "-m", "through the binary", "-q", "1"]);
    ok(&run(publish, ""), "mosquitto_pub through the proxy");
    let got = sub.output(WAIT);
    assert!(got.status.success(), "mosquitto_sub: {}", text(&got.stderr));
    assert_eq!(text(&got.stdout).trim_end(), "cli/hello through the binary");

    // A device still connected at SIGTERM (its upstream session too).
    let mut device = Proc::spawn(
        "mosquitto_pub -l",
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &mqtt_port, "-i", "cli-lingering"])
            .args(["-t", "cli/lines", "-q", "1", "-l"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    device
        .stdin()
        .write_all(b"one line\n")
        .expect("write a line");
    device.stdin().flush().expect("flush");
    assert!(
        wait_until(WAIT, || broker
            .log()
            .contains("Received PUBLISH from cli-lingering")),
        "the lingering device's upstream published:\n{}",
        broker.log()
    );

    let kill = Command::new("kill")
        .args(["-TERM", &proxy.proc.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let status = proxy.proc.wait_exit(WAIT);
    let log = read_lossy(&proxy.log);
    assert!(
        status.is_some_and(|s| s.code() == Some(0)),
        "exit after SIGTERM: {status:?}\n{log}"
    );
    assert!(log.contains("shutdown requested"), "{log}");
    drop(device);
}
