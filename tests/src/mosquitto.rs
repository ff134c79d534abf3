//! A real mosquitto broker per test: its own temp dir (config, password file,
//! log), its own port on 127.0.0.1, and a process the test can pause, kill and
//! restart on the same port to simulate a slow, dead or flapping upstream.
//!
//! Readiness means three things at once: our process is alive, *this run*
//! logged "running", and the port accepts TCP. Checking only the port could
//! mistake another test's listener for ours when the free-port race is lost.

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

use crate::{try_free_port, POLL_INTERVAL};

/// How long a broker may take to come up before `start`/`restart` give up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// How many fresh ports `start` tries when the free-port race is lost.
const PORT_ATTEMPTS: usize = 5;

/// Lines of log quoted in errors.
const LOG_TAIL_LINES: usize = 30;

const LOG_FILE: &str = "mosquitto.log";
const STDERR_FILE: &str = "stderr.log";
const CONFIG_FILE: &str = "mosquitto.conf";
const PASSWORD_FILE: &str = "passwords";

/// Options for a broker; `Mosquitto::start()` is `Mosquitto::builder().start()`.
#[derive(Debug, Default, Clone)]
pub struct MosquittoBuilder {
    port: Option<u16>,
    users: Vec<(String, String)>,
    extra_config: Vec<String>,
}

impl MosquittoBuilder {
    /// Listen on this port instead of a free one (no retry on another port).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Adds a user to a password file (via `mosquitto_passwd -b`). With at
    /// least one user, anonymous clients are refused.
    pub fn user(mut self, username: &str, password: &str) -> Self {
        self.users.push((username.to_owned(), password.to_owned()));
        self
    }

    /// Appends a raw config line after the listener, e.g. a bridge
    /// `connection` section (which must come last in mosquitto.conf).
    pub fn config_line(mut self, line: &str) -> Self {
        self.extra_config.push(line.to_owned());
        self
    }

    /// Writes the config into a fresh temp dir, starts mosquitto and waits
    /// until it accepts connections (at most [`READY_TIMEOUT`] per attempt).
    pub async fn start(self) -> Result<Mosquitto> {
        let dir = tempfile::Builder::new()
            .prefix("mqtt-proxy-mosquitto-")
            .tempdir()
            .context("creating broker temp dir")?;
        let password_file = if self.users.is_empty() {
            None
        } else {
            Some(write_password_file(dir.path(), &self.users)?)
        };

        let mut broker = Mosquitto {
            dir,
            port: 0,
            child: None,
        };
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            broker.port = match self.port {
                Some(port) => port,
                None => try_free_port().context("picking a free port")?,
            };
            let config = render_config(
                broker.port,
                broker.dir(),
                password_file.as_deref(),
                &self.extra_config,
            );
            fs::write(broker.dir().join(CONFIG_FILE), config).context("writing mosquitto.conf")?;

            // A fixed port is worth waiting for; a free one is cheaper to swap.
            match broker.spawn_and_wait_ready(self.port.is_some()).await {
                Ok(()) => return Ok(broker),
                Err(StartError::PortTaken(e)) if self.port.is_none() => last_error = Some(e),
                Err(StartError::PortTaken(e) | StartError::Failed(e)) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("mosquitto did not start")))
            .context(format!("no free port after {PORT_ATTEMPTS} attempts"))
    }
}

/// A running mosquitto broker; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Mosquitto {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

enum StartError {
    /// "Address already in use": a fresh port may help.
    PortTaken(anyhow::Error),
    Failed(anyhow::Error),
}

impl Mosquitto {
    pub fn builder() -> MosquittoBuilder {
        MosquittoBuilder::default()
    }

    /// A plain anonymous broker on a free port.
    pub async fn start() -> Result<Mosquitto> {
        Self::builder().start().await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The broker's temp dir (config, log, password file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGSTOP: the broker keeps its sockets but stops reading and writing,
    /// like a hung upstream. Clients' TCP writes pile up in kernel buffers.
    pub fn pause(&self) -> Result<()> {
        self.signal("STOP")
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) -> Result<()> {
        self.signal("CONT")
    }

    /// SIGKILL and reap: connections drop without any MQTT goodbye. No-op if
    /// already dead.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // kill() fails only if the process was already reaped; wait() is
            // what we need either way.
            let _ = child.kill();
            child.wait().context("reaping mosquitto")?;
        }
        Ok(())
    }

    /// Kills the broker if running and starts it again on the SAME port with
    /// the same config, waiting until it is ready. Session state is lost
    /// (`persistence false`); the log file keeps growing across runs.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.spawn_and_wait_ready(true)
            .await
            .map_err(|(StartError::PortTaken(e) | StartError::Failed(e))| e)
    }

    /// The whole log so far (all runs), empty if unreadable.
    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join(LOG_FILE))
    }

    /// Number of log lines containing `needle`.
    pub fn count_in_log(&self, needle: &str) -> usize {
        self.log()
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// Number of MQTT connects of `client_id` (all runs), from the
    /// "New client connected from <addr> as <client_id> (p2, c1, k60)." lines
    /// (mosquitto says "New bridge connected" when a bridge connects).
    pub fn client_connects(&self, client_id: &str) -> usize {
        let needle = format!(" as {client_id} (");
        self.log()
            .lines()
            .filter(|line| {
                (line.contains("New client connected") || line.contains("New bridge connected"))
                    && line.contains(&needle)
            })
            .count()
    }

    fn signal(&self, signal: &str) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("mosquitto is not running"))?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed: {status}");
        }
        Ok(())
    }

    async fn spawn_and_wait_ready(&mut self, wait_for_port: bool) -> Result<(), StartError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn_once(deadline).await {
                // A fixed port (restart) may still be held briefly, e.g. by a
                // listener that is shutting down: retry until the deadline.
                Err(StartError::PortTaken(_)) if wait_for_port && Instant::now() < deadline => {
                    tokio::time::sleep(POLL_INTERVAL * 5).await;
                }
                other => return other,
            }
        }
    }

    async fn spawn_once(&mut self, deadline: Instant) -> Result<(), StartError> {
        let dir = self.dir.path().to_owned();
        let log_path = dir.join(LOG_FILE);
        // Readiness is judged on this run's part of the log only.
        let log_offset = fs::metadata(&log_path).map_or(0, |m| m.len());
        let stderr = fs::File::create(dir.join(STDERR_FILE))
            .context("creating stderr file")
            .map_err(StartError::Failed)?;
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(dir.join(CONFIG_FILE))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("spawning mosquitto (is it installed?)")
            .map_err(StartError::Failed)?;
        self.child = Some(child);

        loop {
            let run_log = read_lossy_from(&log_path, log_offset);
            let exited = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(status)) => status,
                Some(Err(e)) => return Err(StartError::Failed(anyhow!("polling mosquitto: {e}"))),
                None => return Err(StartError::Failed(anyhow!("mosquitto process vanished"))),
            };
            if let Some(status) = exited {
                self.child = None;
                let error = anyhow!(
                    "mosquitto on port {} exited during startup ({status})\n{}",
                    self.port,
                    self.log_tail()
                );
                return Err(if run_log.contains("Address already in use") {
                    StartError::PortTaken(error)
                } else {
                    StartError::Failed(error)
                });
            }
            // "mosquitto version 2.0.11 running" comes after the listeners opened.
            let running = run_log
                .lines()
                .any(|line| line.contains("mosquitto version") && line.ends_with(" running"));
            if running && port_accepts(self.port).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.kill();
                return Err(StartError::Failed(anyhow!(
                    "mosquitto on port {} not ready within {READY_TIMEOUT:?}\n{}",
                    self.port,
                    self.log_tail()
                )));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The last lines of the broker log and its stderr, for error messages.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for (name, file) in [("log", LOG_FILE), ("stderr", STDERR_FILE)] {
            let text = read_lossy(&self.dir.path().join(file));
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            let _ = writeln!(
                out,
                "--- mosquitto {name} ({}) ---",
                self.dir.path().display()
            );
            for line in tail {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The config mosquitto runs with; pure so it can be read in one place.
fn render_config(port: u16, dir: &Path, password_file: Option<&Path>, extra: &[String]) -> String {
    let mut config = String::new();
    let mut line = |l: &str| {
        config.push_str(l);
        config.push('\n');
    };
    if running_as_root() {
        // Otherwise mosquitto drops to "mosquitto"/"nobody", which cannot
        // write the log in our temp dir, and exits without a word.
        line("user root");
    }
    line("persistence false");
    // Large but bounded per-client queue: a slow subscriber in a test should
    // show up as latency, not silent broker-side drops.
    line("max_queued_messages 1000000");
    // 0 = no limit on outgoing QoS 1/2 in flight per client.
    line("max_inflight_messages 0");
    line(&format!("log_dest file {}", dir.join(LOG_FILE).display()));
    line("log_type all");
    line("connection_messages true");
    line("log_timestamp true");
    match password_file {
        Some(path) => {
            line("allow_anonymous false");
            line(&format!("password_file {}", path.display()));
        }
        None => line("allow_anonymous true"),
    }
    line(&format!("listener {port} 127.0.0.1"));
    for extra_line in extra {
        line(extra_line);
    }
    config
}

fn write_password_file(dir: &Path, users: &[(String, String)]) -> Result<PathBuf> {
    let path = dir.join(PASSWORD_FILE);
    fs::write(&path, "").context("creating password file")?;
    for (user, password) in users {
        let output = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(&path)
            .arg(user)
            .arg(password)
            .output()
            .context("running mosquitto_passwd")?;
        if !output.status.success() {
            bail!(
                "mosquitto_passwd -b for {user:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    Ok(path)
}

fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
            .unwrap_or(false)
    })
}

async fn port_accepts(port: u16) -> bool {
    tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .is_ok()
}

fn read_lossy(path: &Path) -> String {
    read_lossy_from(path, 0)
}

/// The file from byte `offset` on, empty if unreadable.
fn read_lossy_from(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}
