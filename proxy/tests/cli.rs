//! The real `mqtt-proxy` binary, as an operator runs it: `brokers add|list|remove`
//! against a temp data dir (passwords only with `MQTT_PROXY_SECRET`, encrypted, file
//! 0600), serving a real mosquitto with `mosquitto_pub`/`mosquitto_sub` as device and
//! observer, exit status 0 after SIGTERM with a device still connected, and the
//! refusals that must not touch anything: a corrupt store and an unknown config key.
//!
//! This crate cannot use the `tests/` harness (it would be a dependency cycle), so the
//! few helpers needed live here: every child process is killed and reaped on drop, and
//! every wait has a deadline.

use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-proxy");
/// Bound for a CLI run, a startup, a message to arrive, a shutdown.
const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);
/// A made-up 32-byte hex secret.
const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// A child process that is killed (SIGKILL) and reaped when dropped.
struct Proc {
    name: &'static str,
    /// `None` only after [`Proc::output`] took it.
    child: Option<Child>,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e} (is it installed?)"));
        Proc {
            name,
            child: Some(child),
        }
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until output()")
    }

    fn pid(&mut self) -> u32 {
        self.child().id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        let name = self.name;
        self.child()
            .try_wait()
            .unwrap_or_else(|e| panic!("polling {name}: {e}"))
    }

    /// The exit status if the process ends within `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(POLL);
        }
    }

    /// Waits (at most `timeout`, else panics) and collects piped stdout and
    /// stderr. For small outputs: the pipes are read only after the exit.
    fn output(mut self, timeout: Duration) -> Output {
        let status = self.wait_exit(timeout);
        assert!(
            status.is_some(),
            "{} still running after {timeout:?}",
            self.name
        );
        let child = self.child.take().expect("child present");
        child.wait_with_output().expect("collect output")
    }

    fn stdin(&mut self) -> &mut ChildStdin {
        self.child().stdin.as_mut().expect("stdin is piped")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `condition` until it holds or `timeout` passes.
fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(POLL);
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port on 127.0.0.1")
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}

/// `mqtt-proxy` with none of the caller's `MQTT_PROXY_*` settings leaking in.
fn proxy_command() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MQTT_PROXY_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
    cmd
}

/// Runs a short-lived command to completion (at most [`WAIT`]), feeding `stdin`.
fn run(mut cmd: Command, stdin: &str) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut proc = Proc::spawn("command", &mut cmd);
    // Closing stdin matters: --password-stdin reads to EOF. A command that
    // exits without reading it is fine (broken pipe).
    let mut input = proc.child().stdin.take().expect("stdin is piped");
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    proc.output(WAIT)
}

/// `mqtt-proxy --data-dir <dir> <args>` (split at whitespace) with
/// `MQTT_PROXY_SECRET` if given.
fn cli(dir: &Path, args: &str, stdin: &str, secret: Option<&str>) -> Output {
    let mut cmd = proxy_command();
    cmd.arg("--data-dir").arg(dir).args(args.split_whitespace());
    if let Some(secret) = secret {
        cmd.env("MQTT_PROXY_SECRET", secret);
    }
    run(cmd, stdin)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts success and returns stdout.
fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Asserts failure and returns stderr.
fn fails(out: &Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} should fail\nstdout: {}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

fn listed_ids(dir: &Path, secret: Option<&str>) -> Vec<String> {
    let out = cli(dir, "brokers list --json", "", secret);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&out, "brokers list --json")).expect("list --json is JSON");
    json["brokers"]
        .as_array()
        .expect("brokers array")
        .iter()
        .map(|b| b["id"].as_str().expect("id").to_owned())
        .collect()
}

#[test]
fn brokers_add_list_remove_and_passwords_need_the_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let store = d.join("brokers.json");

    let out = cli(
        d,
        "brokers add --id a --address 127.0.0.1 --port 18830",
        "",
        None,
    );
    assert!(ok(&out, "add a").contains("added broker a"));
    let out = cli(d, "brokers list --json", "", None);
    let json: serde_json::Value = serde_json::from_str(&ok(&out, "list")).expect("JSON");
    let a = &json["brokers"][0];
    assert_eq!(
        (&a["id"], &a["address"], &a["port"]),
        (&"a".into(), &"127.0.0.1".into(), &18830.into())
    );
    assert_eq!(mode(&store), 0o600);

    // A password without the secret: refused, and the store is untouched.
    let before = fs::read(&store).expect("read store");
    let add_b = "brokers add --id b --address h --username u --password-stdin";
    let stderr = fails(&cli(d, add_b, "hunter2\n", None), "password, no secret");
    assert!(stderr.contains("MQTT_PROXY_SECRET"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert_eq!(fs::read(&store).expect("read store"), before);

    // With the secret: stored encrypted, never in plain text, file still 0600.
    ok(
        &cli(d, add_b, "hunter2\n", Some(SECRET)),
        "password and secret",
    );
    let raw = read_lossy(&store);
    assert!(raw.contains("\"enc:v2:"), "{raw}");
    assert!(!raw.contains("hunter2"), "{raw}");
    assert_eq!(mode(&store), 0o600);
    let listed = ok(&cli(d, "brokers list --json", "", Some(SECRET)), "list");
    assert!(!listed.contains("hunter2"), "{listed}");
    // Reading an encrypted password needs the secret too, and says so.
    let stderr = fails(&cli(d, "brokers list", "", None), "list without secret");
    assert!(stderr.contains("MQTT_PROXY_SECRET"), "{stderr}");

    ok(&cli(d, "brokers remove a", "", Some(SECRET)), "remove a");
    assert_eq!(listed_ids(d, Some(SECRET)), ["b"]);
    let stderr = fails(
        &cli(d, "brokers remove a", "", Some(SECRET)),
        "remove twice",
    );
    assert!(stderr.contains("no broker with id"), "{stderr}");
}

/// A mosquitto on a free port with an anonymous listener and a full log.
struct Broker {
    dir: tempfile::TempDir,
    port: u16,
    _proc: Proc,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("mosquitto.log");
        for _ in 0..5 {
            let port = free_port();
            let mut config = String::new();
            if is_root() {
                // Otherwise mosquitto drops to an account that cannot write the log.
                config.push_str("user root\n");
            }
            config.push_str(&format!(
                "persistence false\nallow_anonymous true\nlog_dest file {}\nlog_type all\n\
                 connection_messages true\nlistener {port} 127.0.0.1\n",
                log.display()
            ));
            let conf = dir.path().join("mosquitto.conf");
            fs::write(&conf, config).expect("write mosquitto.conf");
            let _ = fs::remove_file(&log);
            let mut proc = Proc::spawn(
                "mosquitto",
                Command::new("mosquitto")
                    .arg("-c")
                    .arg(&conf)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            );
            // Ours is running (not another test's listener on a lost port race).
            let ready = wait_until(WAIT, || {
                proc.exited().is_some()
                    || (read_lossy(&log).contains(" running") && port_accepts(port))
            });
            if ready && proc.exited().is_none() {
                return Broker {
                    dir,
                    port,
                    _proc: proc,
                };
            }
            assert!(
                read_lossy(&log).contains("Address already in use"),
                "mosquitto did not start:\n{}",
                read_lossy(&log)
            );
        }
        panic!("no free port for mosquitto after 5 attempts");
    }

    fn log(&self) -> String {
        read_lossy(&self.dir.path().join("mosquitto.log"))
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn port_accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(1)).is_ok()
}

/// `mqtt-proxy` serving on free ports, stderr (its log) in `<dir>/proxy.log`.
struct Served {
    proc: Proc,
    mqtt_port: u16,
    http_port: u16,
    log: PathBuf,
}

/// Serves `data_dir` with anonymous devices allowed (the device-auth tests use
/// [`serve_with`] without it).
fn serve(data_dir: &Path) -> Served {
    serve_with(data_dir, &["--allow-anonymous"], &[])
}

fn serve_with(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Served {
    let log = data_dir.join("proxy.log");
    for _ in 0..3 {
        let (mqtt_port, http_port) = (free_port(), free_port());
        let stderr = fs::File::create(&log).expect("create proxy.log");
        let mut cmd = proxy_command();
        cmd.envs(env.iter().copied());
        cmd.args(extra)
            .arg("--mqtt-listen")
            .arg(format!("127.0.0.1:{mqtt_port}"))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{http_port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut proc = Proc::spawn("mqtt-proxy", &mut cmd);
        let ready = wait_until(WAIT, || {
            proc.exited().is_some() || read_lossy(&log).contains("mqtt-proxy ready")
        });
        if ready && proc.exited().is_none() {
            assert!(port_accepts(mqtt_port), "ready but MQTT port closed");
            return Served {
                proc,
                mqtt_port,
                http_port,
                log,
            };
        }
        let text = read_lossy(&log);
        assert!(
            text.contains("cannot listen"),
            "mqtt-proxy did not start:\n{text}"
        );
    }
    panic!("no free ports for mqtt-proxy after 3 attempts");
}

/// The README quick start: add a device user with the CLI, then only that user gets in.
#[test]
fn users_add_then_only_that_device_connects() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = broker.port.to_string();
    let add = format!("brokers add --id up --address 127.0.0.1 --port {port}");
    ok(&cli(dir.path(), &add, "", None), "add the broker");
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
    let mode = fs::metadata(&users)
        .expect("users.json")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
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

#[test]
fn serves_a_real_broker_and_exits_0_on_sigterm() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = broker.port.to_string();
    let add = format!("brokers add --id up --address 127.0.0.1 --port {port}");
    ok(&cli(dir.path(), &add, "", None), "add the broker");
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

#[test]
fn a_corrupt_store_is_reported_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("brokers.json");
    let corrupt = b"{\"brokers\": [ {\"id\": \"a\", \"address\": ";
    fs::write(&store, corrupt).expect("write corrupt store");
    let name = store.display().to_string();

    // Serving: refuses to start.
    let mut cmd = proxy_command();
    cmd.arg("--mqtt-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--http-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(dir.path());
    let stderr = fails(&run(cmd, ""), "serving with a corrupt store");
    assert!(stderr.contains(&name), "{stderr}");
    assert!(stderr.contains("invalid JSON"), "{stderr}");

    // The CLI: neither reading nor adding rewrites it.
    let stderr = fails(&cli(dir.path(), "brokers list", "", None), "list");
    assert!(stderr.contains(&name), "{stderr}");
    let add = "brokers add --id b --address h";
    let stderr = fails(&cli(dir.path(), add, "", None), "add");
    assert!(stderr.contains(&name), "{stderr}");

    assert_eq!(fs::read(&store).expect("read store"), corrupt);
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, ["brokers.json"], "no temp or replacement files");
}

#[test]
fn an_unknown_config_key_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("proxy.toml");
    fs::write(
        &config,
        "drain_timeout_secs = 3\nmqtt_listn = \"127.0.0.1:1883\"\n",
    )
    .expect("write config");
    let mut cmd = proxy_command();
    cmd.arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path())
        // Were the key accepted, it must not grab the default ports.
        .arg("--mqtt-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--http-listen")
        .arg(format!("127.0.0.1:{}", free_port()));
    let stderr = fails(&run(cmd, ""), "unknown config key");
    assert!(stderr.contains("mqtt_listn"), "{stderr}");
    assert!(stderr.contains(&config.display().to_string()), "{stderr}");
}
