//! Secret hygiene of the real `mqtt-proxy` binary: a full flow traced with known secrets.

use std::fs;
use std::process::Command;

// Each test binary uses part of the shared helpers.
#[allow(dead_code)]
mod cli_support;

use cli_support::serve::{serve_with, Broker};
use cli_support::{cli, free_port, ok, read_lossy, run, wait_until, SECRET, WAIT};

/// A full flow at `trace` with known secrets (stored broker password, device password, a
/// wrong one, the store secret, the admin token, the TLS key): none of them may appear in
/// the log, and the API must not return the broker password.
#[test]
fn trace_logs_and_the_api_never_show_secrets() {
    const BROKER_PW: &str = "brokerpw-5f2c1a";
    const DEVICE_PW: &str = "devicepw-9e7d3b";
    const WRONG_PW: &str = "wrongpw-1c4e8f";
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = broker.port.to_string();
    let add = format!(
        "brokers add --id up --address 127.0.0.1 --port {port} --username upuser --password-stdin"
    );
    ok(
        &cli(dir.path(), &add, &format!("{BROKER_PW}\n"), Some(SECRET)),
        "add",
    );
    let users = "users add dev --password-stdin";
    ok(
        &cli(dir.path(), users, &format!("{DEVICE_PW}\n"), None),
        "users add",
    );
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let mut gen = Command::new("openssl");
    gen.args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
    ])
    .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
    .args(["-addext", "subjectAltName=DNS:localhost", "-keyout"])
    .arg(&key)
    .arg("-out")
    .arg(&cert);
    ok(&run(gen, ""), "openssl req");
    let tls_port = free_port();
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let tls_listen = format!("127.0.0.1:{tls_port}");
    let proxy = serve_with(
        dir.path(),
        &[
            "--tls-cert",
            &cert_s,
            "--tls-key",
            &key_s,
            "--tls-listen",
            &tls_listen,
        ],
        &[("RUST_LOG", "trace"), ("MQTT_PROXY_SECRET", SECRET)],
    );
    let mqtt_port = proxy.mqtt_port.to_string();
    let publish = |port: &str, pw: &str, tls: bool| {
        let mut cmd = Command::new("mosquitto_pub");
        cmd.args([
            "-h",
            "localhost",
            "-p",
            port,
            "-t",
            "s/t",
            "-m",
            "x",
            "-q",
            "1",
        ]);
        cmd.args(["-u", "dev", "-P", pw]);
        if tls {
            cmd.arg("--cafile").arg(&cert);
        }
        run(cmd, "")
    };
    ok(&publish(&mqtt_port, DEVICE_PW, false), "device login");
    assert!(!publish(&mqtt_port, WRONG_PW, false).status.success());
    ok(
        &publish(&tls_port.to_string(), DEVICE_PW, true),
        "device login over TLS",
    );
    assert!(!publish(&tls_port.to_string(), WRONG_PW, true)
        .status
        .success());
    // The proxy logged in upstream with the broker password (traced by its MQTT client).
    assert!(
        wait_until(WAIT, || broker.log().contains("u'upuser'")),
        "upstream login:\n{}",
        broker.log()
    );
    let token = fs::read_to_string(dir.path().join("admin-token")).expect("admin token");
    let token = token.trim();
    let mut api = Command::new("curl");
    api.args(["-s", "-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("http://127.0.0.1:{}/api/brokers", proxy.http_port));
    let body = ok(&run(api, ""), "GET /api/brokers");
    assert!(body.contains("\"up\""), "the API answered: {body}");
    assert!(
        !body.contains(BROKER_PW),
        "API leaks the broker password: {body}"
    );
    drop(proxy.proc);

    let log = read_lossy(&proxy.log);
    assert!(log.contains("TRACE"), "the run was traced");
    let key_pem = fs::read_to_string(&key).expect("key");
    let key_lines = key_pem
        .lines()
        .filter(|l| l.len() > 16 && !l.starts_with("-----"));
    for (what, secret) in [
        ("broker password", BROKER_PW),
        ("device password", DEVICE_PW),
        ("wrong password", WRONG_PW),
        ("store secret", SECRET),
        ("admin token", token),
    ]
    .into_iter()
    .chain(key_lines.map(|l| ("TLS key", l)))
    {
        assert!(!log.contains(secret), "{what} appears in the trace log");
    }
}
