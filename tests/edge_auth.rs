//! Device authentication and ACLs with real clients: `mosquitto_pub`/`mosquitto_sub` with
//! `-u/-P` (3.1.1 and 5) against the proxy, a real mosquitto upstream behind it.
//!
//! Covers: the default refuses every CONNECT (no open relay), Argon2id passwords from a
//! users file, CONNACK codes as the clients report them, publish/subscribe ACLs with `%u`
//! and `%c`, hot reload of the users file, and the per-address failure limit.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mqtt_proxy::auth::users::{hash_password, User, Users};
use mqtt_proxy_tests::{mosquitto_pub, wait_until, Mosquitto, Subscriber, TestProxy};

const WAIT: Duration = Duration::from_secs(10);

/// (username, password, publish ACL, subscribe ACL); `None` ACL: unrestricted.
type UserSpec<'a> = (
    &'a str,
    &'a str,
    Option<&'a [&'a str]>,
    Option<&'a [&'a str]>,
);

fn write_users(path: &Path, list: &[UserSpec]) {
    let mut users = Users::default();
    let own = |l: Option<&[&str]>| l.map(|l| l.iter().map(|s| s.to_string()).collect());
    for (name, pw, publish, subscribe) in list {
        let user = User {
            password: hash_password(pw).expect("hash"),
            publish: own(*publish),
            subscribe: own(*subscribe),
        };
        users.users.insert(name.to_string(), user);
    }
    users.save(path).expect("write users file");
}

fn metric(name_and_labels: &str) -> u64 {
    mqtt_proxy::metrics::render()
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0)
}

/// `mosquitto_pub` that is expected to fail; returns its output.
fn pub_refused(port: u16, args: &[&str]) -> String {
    match mosquitto_pub(port, "devices/x", "m", 0, args) {
        Ok(()) => panic!("mosquitto_pub {args:?} was accepted"),
        // Client versions differ in capitalisation ("Bad User Name or Password").
        Err(e) => e.to_string().to_lowercase(),
    }
}

/// Runs `mosquitto_sub` until it exits (bounded) and returns (success, stdout+stderr).
fn mosquitto_sub(port: u16, args: &[&str]) -> Result<(bool, String)> {
    client("mosquitto_sub", port, args)
}

/// Runs a mosquitto client until it exits (bounded) and returns (success, stdout+stderr).
fn client(bin: &str, port: u16, args: &[&str]) -> Result<(bool, String)> {
    let mut child = Command::new(bin)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {bin}"))?;
    let deadline = Instant::now() + WAIT;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{bin} {args:?} still running after {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_users_or_allow_anonymous_every_connect_is_refused() -> Result<()> {
    let broker = Mosquitto::start().await?;
    let dir = tempfile::tempdir()?;
    let users_file = dir.path().join("users.json");
    let proxy = TestProxy::start(&[&broker], |c, _| {
        c.auth.allow_anonymous = false;
        c.auth.users_file = Some(users_file.clone());
    })
    .await?;
    let before = metric("mqtt_proxy_auth_failures_total{reason=\"no_credentials\"}");
    let v4 = pub_refused(proxy.port(), &[]);
    assert!(v4.contains("not authorised"), "3.1.1 CONNACK 0x05: {v4}");
    let v5 = pub_refused(proxy.port(), &["-V", "mqttv5"]);
    assert!(v5.contains("not authorized"), "MQTT 5 CONNACK 0x87: {v5}");
    let v4 = pub_refused(proxy.port(), &["-u", "nobody", "-P", "x"]);
    assert!(v4.contains("bad user name or password"), "{v4}");
    assert!(metric("mqtt_proxy_auth_failures_total{reason=\"no_credentials\"}") >= before + 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_and_acls_with_real_clients_and_hot_reload() -> Result<()> {
    let broker = Mosquitto::start().await?;
    let upstream = Subscriber::connect(broker.port(), "#", 1).await?;
    let dir = tempfile::tempdir()?;
    let users_file = dir.path().join("users.json");
    write_users(
        &users_file,
        &[(
            "alice",
            "pw-alice",
            Some(&["devices/%u/#"]),
            Some(&["commands/%c/#"]),
        )],
    );
    let proxy = TestProxy::start(&[&broker], |c, _| {
        c.auth.allow_anonymous = false;
        c.auth.users_file = Some(users_file.clone());
    })
    .await?;
    let port = proxy.port();
    let alice = ["-u", "alice", "-P", "pw-alice", "-i", "cam-1"];

    let e = pub_refused(port, &["-u", "alice", "-P", "wrong"]);
    assert!(e.contains("bad user name or password"), "3.1.1 0x04: {e}");
    let e = pub_refused(port, &["-u", "alice", "-P", "wrong", "-V", "mqttv5"]);
    assert!(e.contains("bad user name or password"), "MQTT 5 0x86: {e}");
    let e = pub_refused(port, &[]);
    assert!(e.contains("not authorised"), "anonymous with users: {e}");

    // Denied publishes are acknowledged (3.1.1 has no code for it) but never forwarded;
    // the allowed one published after them is the marker that they had their chance.
    let denied_before = metric("mqtt_proxy_acl_denied_total{action=\"publish\"}");
    mosquitto_pub(port, "devices/bob/t", "denied-v4", 1, &alice)?;
    mosquitto_pub(port, "devices/alice/t", "allowed", 1, &alice)?;
    let got = upstream.wait_for_count(1, WAIT).await;
    assert_eq!(got.len(), 1, "the allowed publish arrives: {got:?}");
    assert_eq!(got[0].topic, "devices/alice/t");
    assert!(metric("mqtt_proxy_acl_denied_total{action=\"publish\"}") > denied_before);

    // MQTT 5: PUBACK and PUBREC carry 0x87 (135), as the client's debug output shows.
    let v5 = [&alice[..], &["-V", "mqttv5"]].concat();
    for qos in ["1", "2"] {
        let args = [
            &v5[..],
            &["-d", "-t", "devices/bob/t", "-m", "denied-v5", "-q", qos],
        ]
        .concat();
        let (_, out) = client("mosquitto_pub", port, &args)?;
        assert!(
            out.contains("RC:135") || out.contains("Not authorized"),
            "QoS {qos}: {out}"
        );
    }
    mosquitto_pub(port, "devices/alice/t", "allowed-2", 1, &v5)?;
    let got = upstream.wait_for_count(2, WAIT).await;
    assert!(
        got.iter().all(|m| m.topic == "devices/alice/t"),
        "nothing denied reached the broker: {got:?}"
    );

    // Subscriptions: `%c` is the client id; anything wider is refused in SUBACK.
    let sub = [
        &alice[..],
        &["-t", "commands/other/#", "-C", "1", "-W", "5"],
    ]
    .concat();
    let (ok, out) = mosquitto_sub(port, &sub)?;
    assert!(
        out.contains("All subscription requests were denied"),
        "denied SUBACK ({ok}): {out}"
    );
    let sub = [
        &alice[..],
        &["-t", "commands/cam-1/#", "-C", "1", "-W", "3"],
    ]
    .concat();
    let (_, out) = mosquitto_sub(port, &sub)?;
    assert!(!out.contains("denied"), "allowed subscription: {out}");

    // Hot reload: a user added to the file can connect within a bounded time.
    write_users(
        &users_file,
        &[
            ("alice", "pw-alice", Some(&["devices/%u/#"]), None),
            ("bob", "pw-bob", None, None),
        ],
    );
    let deadline = Instant::now() + WAIT;
    loop {
        match mosquitto_pub(
            port,
            "devices/bob/t",
            "bob",
            1,
            &["-u", "bob", "-P", "pw-bob"],
        ) {
            Ok(()) => break,
            Err(e) if Instant::now() >= deadline => bail!("bob never accepted: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert!(
        wait_until(WAIT, || upstream
            .received()
            .iter()
            .any(|m| m.payload == "bob"))
        .await,
        "bob's publish arrives"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_rate_limited_per_address() -> Result<()> {
    let broker = Mosquitto::start().await?;
    let dir = tempfile::tempdir()?;
    let users_file = dir.path().join("users.json");
    write_users(&users_file, &[("carol", "pw-carol", None, None)]);
    let proxy = TestProxy::start(&[&broker], |c, _| {
        c.auth.allow_anonymous = false;
        c.auth.users_file = Some(users_file.clone());
        c.auth.failures_per_minute = 3;
    })
    .await?;
    let before = metric("mqtt_proxy_auth_failures_total{reason=\"rate_limited\"}");
    for _ in 0..3 {
        let e = pub_refused(proxy.port(), &["-u", "carol", "-P", "guess"]);
        assert!(e.contains("bad user name or password"), "{e}");
    }
    // Now even the right password is refused from 127.0.0.1, unchecked, for the window.
    let e = pub_refused(
        proxy.port(),
        &["-u", "carol", "-P", "pw-carol", "-V", "mqttv5"],
    );
    assert!(!e.contains("bad user name"), "refused before checking: {e}");
    assert!(metric("mqtt_proxy_auth_failures_total{reason=\"rate_limited\"}") > before);
    Ok(())
}
