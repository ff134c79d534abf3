//! The proxy side of the Kubernetes loop, without a kubelet: the real `mqtt-proxy` binary
//! run on a rendered broker Secret materialised like a pod's volume ([`SecretDir`]), a
//! device publishing through it to real mosquitto brokers, and a password rotation that
//! must reach the proxy and reconnect only the broker whose credentials changed.
//!
//! ```text
//!   SecretDir (..data swap) ──▶ mqtt-proxy --brokers-file ──▶ open   (anonymous)
//!          ▲                          ▲                    └─▶ locked (password file)
//!   rotate(): new rendered data    device
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use rumqttc::MqttOptions;

use super::bins::workspace_binary;
use super::kubelet::{SecretData, SecretDir};
use super::process::Process;
use crate::{free_port, wait_until, Mosquitto, Publisher, Subscriber};

/// Bound of every wait here; generous for a loaded 2-core box.
const WAIT: Duration = Duration::from_secs(60);

/// The locked broker's users: the proxy's (rotated) and an observer's (never rotated, so
/// the observing subscriber is not affected by the rotation it observes).
pub const GATEWAY_USER: &str = "gateway";
pub const OBSERVER_USER: (&str, &str) = ("observer", "observer-pw");

/// The password [`drive_proxy`] rotates [`GATEWAY_USER`] to.
pub const ROTATED_PASSWORD: &str = "pw-2";

/// A broker with a password file holding [`GATEWAY_USER`] / `password` and the observer.
pub async fn locked_broker(password: &str) -> Result<Mosquitto> {
    Mosquitto::builder()
        .user(GATEWAY_USER, password)
        .user(OBSERVER_USER.0, OBSERVER_USER.1)
        .start()
        .await
}

/// Runs the proxy binary on `initial` (materialised like a kubelet volume) with a device
/// publishing to `open` and `locked`; rotates [`GATEWAY_USER`]'s password on `locked` to [`ROTATED_PASSWORD`]
/// (password file + SIGHUP), swaps in what `rotate` returns, and checks that the proxy
/// logged in again with it while `open` saw no reconnect. Returns the running rig for
/// further steps.
pub async fn drive_proxy(
    open: &Mosquitto,
    locked: &Mosquitto,
    initial: &SecretData,
    rotate: impl AsyncFnOnce() -> Result<SecretData>,
) -> Result<LoopRig> {
    let volume_dir = tempfile::tempdir()?;
    let mut volume = SecretDir::create(volume_dir.path(), initial)?;
    let proxy = ProxyProcess::start(&volume.path().join("brokers.yaml")).await?;

    let open_sub = Subscriber::connect(open.port(), "loop/#", 1).await?;
    let mut observer = MqttOptions::new(
        format!("observer-{}", std::process::id()),
        "127.0.0.1",
        locked.port(),
    );
    observer.set_credentials(OBSERVER_USER.0, OBSERVER_USER.1);
    let locked_sub = Subscriber::connect_with(observer, "loop/#", 1).await?;
    let device = Publisher::connect(proxy.port).await?;
    // The proxy connects a device's upstreams after its CONNACK: probe until both forward.
    probe(&device, "loop/before", &[&open_sub, &locked_sub]).await?;
    let gateway_logins = |b: &Mosquitto| {
        b.log()
            .lines()
            .filter(|l| l.contains("New client connected") && l.contains("u'gateway'"))
            .count()
    };
    let logins_before = gateway_logins(locked);
    let open_connects = open.count_in_log("New client connected");

    // Rotate: the broker first (existing sessions stay), then the Secret.
    let passwords = locked.dir().join("passwords");
    let status = std::process::Command::new("mosquitto_passwd")
        .arg("-b")
        .arg(&passwords)
        .args([GATEWAY_USER, ROTATED_PASSWORD])
        .status()?;
    ensure!(status.success(), "mosquitto_passwd: {status}");
    let pid = locked.pid().context("locked broker runs")?;
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -HUP: {status}");
    volume.update(&rotate().await?)?;

    // The proxy reconnects the locked broker with the new password (the old one no longer
    // logs in) and traffic flows to both again; the open broker was never reconnected.
    let relogged = wait_until(WAIT, || gateway_logins(locked) > logins_before).await;
    ensure!(
        relogged,
        "the proxy logged in again with the rotated password\n{}\n{}",
        locked.log_tail(),
        proxy.process.log_tail()
    );
    probe(&device, "loop/after", &[&open_sub, &locked_sub]).await?;
    ensure!(
        open.count_in_log("New client connected") == open_connects,
        "the untouched broker saw a reconnect\n{}",
        open.log_tail()
    );
    Ok(LoopRig {
        proxy,
        volume,
        device,
        open_sub,
        locked_sub,
        _volume_dir: volume_dir,
    })
}

/// What [`drive_proxy`] leaves running: the proxy on its volume, the device, and one
/// subscriber per broker (`loop/#`).
pub struct LoopRig {
    pub proxy: ProxyProcess,
    pub volume: SecretDir,
    pub device: Publisher,
    pub open_sub: Subscriber,
    pub locked_sub: Subscriber,
    _volume_dir: tempfile::TempDir,
}

impl LoopRig {
    /// Swaps in `without_open` (a broker set without `open`), waits until the proxy closed
    /// its upstream connection to `open` (the broker logs it), then checks that a fresh
    /// publish reaches `locked` and not `open`.
    pub async fn remove_open(&mut self, open: &Mosquitto, without_open: &SecretData) -> Result<()> {
        let sub = self.open_sub.client_id().to_owned();
        let closes = || {
            open.log()
                .lines()
                .filter(|l| {
                    (l.contains(" disconnected") || l.contains("closed its connection"))
                        && !l.contains(&sub)
                })
                .count()
        };
        let before = closes();
        self.volume.update(without_open)?;
        let closed = wait_until(WAIT, || closes() > before).await;
        ensure!(
            closed,
            "the proxy kept its connection to open\n{}",
            open.log_tail()
        );
        probe(&self.device, "loop/removed", &[&self.locked_sub]).await?;
        let leaked = self
            .open_sub
            .received()
            .iter()
            .any(|m| m.topic == "loop/removed");
        ensure!(!leaked, "a removed broker still got traffic");
        Ok(())
    }
}

/// Publishes `topic` every 200 ms until every subscriber got it.
async fn probe(device: &Publisher, topic: &str, subs: &[&Subscriber]) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    let got = |s: &&Subscriber| s.received().iter().any(|m| m.topic == topic);
    while !subs.iter().all(got) {
        ensure!(
            Instant::now() < deadline,
            "{topic} did not reach every broker within {WAIT:?}"
        );
        device.publish(topic, "probe", 1, false).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The real `mqtt-proxy` binary on a brokers file, listening on free loopback ports.
pub struct ProxyProcess {
    pub process: Process,
    pub port: u16,
    _data: tempfile::TempDir,
}

impl ProxyProcess {
    /// Starts `mqtt-proxy --brokers-file <brokers_file>` and waits until it listens; on
    /// free ports, so it retries on fresh ones when another process took them first.
    pub async fn start(brokers_file: &Path) -> Result<Self> {
        Self::start_with(brokers_file, &[], &[]).await
    }

    /// [`Self::start`] with further flags (e.g. `--instance-id`) and environment (e.g.
    /// `KUBECONFIG`).
    pub async fn start_with(
        brokers_file: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(brokers_file, extra, env).await {
                Err(e) if attempt < 3 && format!("{e:#}").contains("in use") => continue,
                other => return other,
            }
        }
    }

    async fn start_once(brokers_file: &Path, extra: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let bin = workspace_binary("mqtt-proxy", "mqtt-proxy")?;
        let data = tempfile::tempdir()?;
        let port = free_port();
        let mut cmd = std::process::Command::new(bin);
        cmd.arg("--brokers-file")
            .arg(brokers_file)
            .args(["--mqtt-listen", &format!("127.0.0.1:{port}")])
            .args(["--http-listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--data-dir")
            .arg(data.path())
            // The test devices have no users: anonymous devices are an explicit opt-in.
            .arg("--allow-anonymous")
            .args(extra)
            .envs(env.iter().copied());
        let mut process = Process::spawn("mqtt-proxy", &mut cmd)?;
        let deadline = Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            process.ensure_running()?;
            ensure!(
                Instant::now() < deadline,
                "the proxy did not listen\n{}",
                process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Whoever answered, it must be ours: a lost port race makes the proxy exit.
        process.ensure_running()?;
        Ok(Self {
            process,
            port,
            _data: data,
        })
    }
}
