//! The device listeners with real clients: TLS with `mosquitto_pub --cafile` (and
//! `--cert/--key` for client-certificate auth, CN → username → ACL), certificate hot
//! reload seen by `openssl s_client`, and MQTT over WebSocket (`ws` and `wss`) with
//! paho-mqtt (`tests/edge/ws_client.py`), all in front of a real mosquitto upstream.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mqtt_proxy::auth::users::{hash_password, User, Users};
use mqtt_proxy::listener::TlsFiles;
use mqtt_proxy::transport::Transport;
use mqtt_proxy_tests::tls::{Pki, LOCALHOST_SANS};
use mqtt_proxy_tests::{mosquitto_pub, wait_until, Mosquitto, Subscriber, TestProxy};

const WAIT: Duration = Duration::from_secs(15);

fn addr_of(proxy: &TestProxy, t: Transport) -> u16 {
    proxy
        .handle()
        .and_then(|h| h.addr(t))
        .map_or(0, |a| a.port())
}

fn tls_files(pki: &Pki, client_ca: bool) -> Result<TlsFiles> {
    let server = pki.server_cert("localhost", LOCALHOST_SANS)?;
    Ok(TlsFiles {
        cert: server.cert,
        key: server.key,
        client_ca: client_ca.then(|| pki.ca_cert().to_path_buf()),
    })
}

/// Runs a client to completion (bounded); (success, stdout + stderr).
fn run(cmd: &mut Command) -> Result<(bool, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning a client")?;
    let deadline = Instant::now() + WAIT;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} still running after {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_mosquitto_clients_alongside_plain() -> Result<()> {
    let broker = Mosquitto::start().await?;
    let upstream = Subscriber::connect(broker.port(), "tls/#", 1).await?;
    let pki = Pki::new("edge-ca")?;
    let files = tls_files(&pki, false)?;
    let proxy = TestProxy::start(&[&broker], |c, _| {
        c.listen.tls = Some(files.clone());
        c.listen.tls_listen = ([127, 0, 0, 1], 0).into();
    })
    .await?;
    let tls_port = addr_of(&proxy, Transport::Tls);
    assert_ne!(tls_port, 0, "TLS endpoint bound");
    let ca = pki.ca_cert().display().to_string();
    let args = ["-h", "localhost", "--cafile", &ca];
    mosquitto_pub(tls_port, "tls/secure", "over-tls", 1, &args)?;
    mosquitto_pub(proxy.port(), "tls/plain", "over-tcp", 1, &[])?;
    let got = upstream.wait_for_count(2, WAIT).await;
    let mut topics: Vec<_> = got.iter().map(|m| m.topic.as_str()).collect();
    topics.sort();
    assert_eq!(topics, ["tls/plain", "tls/secure"]);
    // A client that does not trust the CA is refused by its own verification; one that
    // speaks plain MQTT to the TLS port never gets a CONNACK.
    let e = mosquitto_pub(tls_port, "tls/x", "m", 0, &["-h", "localhost"]);
    assert!(e.is_err(), "plain MQTT on the TLS port must fail");
    Ok(())
}

fn users_file(dir: &Path, name: &str, publish: &[&str]) -> PathBuf {
    let path = dir.join("users.json");
    let mut users = Users::default();
    users.users.insert(
        name.to_string(),
        User {
            // Client-certificate users never use it; it must still be a valid hash.
            password: hash_password("unused").expect("hash"),
            publish: Some(publish.iter().map(|s| s.to_string()).collect()),
            subscribe: None,
        },
    );
    users.save(&path).expect("users file");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_cn_is_the_username_and_its_acl_applies() -> Result<()> {
    let broker = Mosquitto::start().await?;
    let upstream = Subscriber::connect(broker.port(), "devices/#", 1).await?;
    let pki = Pki::new("edge-mtls-ca")?;
    let files = tls_files(&pki, true)?;
    let client = pki.client_cert("dev-1")?;
    let dir = tempfile::tempdir()?;
    let users = users_file(dir.path(), "dev-1", &["devices/%u/#"]);
    let proxy = TestProxy::start(&[&broker], |c, _| {
        c.listen.tls = Some(files.clone());
        c.listen.tls_listen = ([127, 0, 0, 1], 0).into();
        c.auth.allow_anonymous = false;
        c.auth.users_file = Some(users.clone());
    })
    .await?;
    let port = addr_of(&proxy, Transport::Tls);
    let (ca, cert, key) = (
        pki.ca_cert().display().to_string(),
        client.cert.display().to_string(),
        client.key.display().to_string(),
    );
    let mtls = [
        "-h",
        "localhost",
        "--cafile",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
    ];
    mosquitto_pub(port, "devices/other/t", "denied", 1, &mtls)?;
    mosquitto_pub(port, "devices/dev-1/t", "allowed", 1, &mtls)?;
    let got = upstream.wait_for_count(1, WAIT).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].topic, "devices/dev-1/t", "the CN's ACL applied");
    let e = mosquitto_pub(
        port,
        "devices/dev-1/t",
        "no-cert",
        1,
        &["-h", "localhost", "--cafile", &ca],
    );
    assert!(
        e.is_err(),
        "without a client certificate the handshake fails"
    );
    Ok(())
}

/// The subject CN the TLS endpoint presents now, per `openssl s_client`.
fn served_cn(port: u16, ca: &Path) -> Result<String> {
    let (_, out) = run(Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "localhost", "-CAfile"])
        .arg(ca))?;
    let line = out
        .lines()
        .find(|l| l.starts_with("subject="))
        .with_context(|| format!("no subject in s_client output: {out}"))?;
    Ok(line.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificate_files_are_hot_reloaded() -> Result<()> {
    let broker = Mosquitto::start().await?;
    let pki = Pki::new("edge-rotate-ca")?;
    let first = pki.server_cert("first.local", LOCALHOST_SANS)?;
    let second = pki.server_cert("second.local", LOCALHOST_SANS)?;
    let dir = tempfile::tempdir()?;
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(&first.cert, &cert)?;
    std::fs::copy(&first.key, &key)?;
    let files = TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: None,
    };
    let proxy = TestProxy::start(&[&broker], |c, _| {
        c.listen.tls = Some(files.clone());
        c.listen.tls_listen = ([127, 0, 0, 1], 0).into();
    })
    .await?;
    let port = addr_of(&proxy, Transport::Tls);
    assert!(served_cn(port, pki.ca_cert())?.contains("first.local"));
    // cert-manager style: new files replace the old ones.
    std::fs::copy(&second.cert, &cert)?;
    std::fs::copy(&second.key, &key)?;
    let deadline = Instant::now() + WAIT;
    loop {
        let cn = served_cn(port, pki.ca_cert())?;
        if cn.contains("second.local") {
            break;
        }
        if Instant::now() >= deadline {
            bail!("still serving {cn} after {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ca = pki.ca_cert().display().to_string();
    mosquitto_pub(
        port,
        "t",
        "after-rotation",
        1,
        &["-h", "localhost", "--cafile", &ca],
    )?;
    Ok(())
}

fn ws_client(port: u16, extra: &[&str]) -> Result<(bool, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("edge/ws_client.py");
    let have_paho = Command::new("python3")
        .args(["-c", "import paho.mqtt.client"])
        .status()
        .is_ok_and(|s| s.success());
    if !have_paho {
        bail!("python3 with paho-mqtt is needed (tests/setup.d/70-edge.sh installs it)");
    }
    run(Command::new("python3")
        .arg(script)
        .args(["--port", &port.to_string()])
        .args(extra))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_secure_websocket_with_paho() -> Result<()> {
    let broker = Mosquitto::start().await?;
    let upstream = Subscriber::connect(broker.port(), "ws/#", 1).await?;
    let pki = Pki::new("edge-ws-ca")?;
    let files = tls_files(&pki, false)?;
    let proxy = TestProxy::start(&[&broker], |c, brokers| {
        c.listen.tls = Some(files.clone());
        c.listen.tls_listen = ([127, 0, 0, 1], 0).into();
        c.listen.ws_listen = Some(([127, 0, 0, 1], 0).into());
        c.listen.wss_listen = Some(([127, 0, 0, 1], 0).into());
        brokers[0].bidirectional = true;
    })
    .await?;
    let ws = addr_of(&proxy, Transport::Ws);
    let wss = addr_of(&proxy, Transport::Wss);

    let (ok, out) = ws_client(ws, &["--topic", "ws/plain", "--count", "20"])?;
    assert!(ok, "ws round trip: {out}");
    let (ok, out) = ws_client(
        wss,
        &[
            "--host",
            "localhost",
            "--cafile",
            &pki.ca_cert().display().to_string(),
            "--topic",
            "ws/secure",
            "--count",
            "20",
            "--v5",
        ],
    )?;
    assert!(ok, "wss round trip (MQTT 5): {out}");
    assert!(
        wait_until(WAIT, || upstream.count() >= 40).await,
        "all 40 reached the broker: {}",
        upstream.count()
    );

    // Another path is refused at the upgrade.
    let (ok, out) = ws_client(ws, &["--path", "/other", "--count", "1", "--timeout", "3"])?;
    assert!(!ok, "wrong path must not connect: {out}");
    Ok(())
}
