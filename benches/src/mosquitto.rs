//! Throwaway mosquitto brokers for `compare` and the tests: a temp dir, a free loopback
//! port, a config (optionally with bridges), a child process that dies with its handle.
//!
//! `user root` is in every config because mosquitto started as root without it drops
//! privileges to `mosquitto` and, here, exits without a word.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Limits written into every broker's config.
#[derive(Debug, Clone, Copy)]
pub struct BrokerLimits {
    /// `max_queued_messages` (per client, QoS ≥ 1 beyond in-flight; 0 = unlimited).
    pub max_queued: u64,
    /// `max_inflight_messages` (outgoing QoS ≥ 1 per client and per bridge).
    pub max_inflight: u32,
}

impl Default for BrokerLimits {
    fn default() -> Self {
        // A queue deep enough that no bounded run can overflow it, but not "unlimited"
        // (0), which mosquitto.conf(5) discourages; an in-flight window that does not
        // throttle QoS 1/2 delivery to a local subscriber the way the default 20 does.
        BrokerLimits {
            max_queued: 1_000_000,
            max_inflight: 1000,
        }
    }
}

/// One `connection` section: forward `<topic> out <qos>` to `addr`.
#[derive(Debug, Clone)]
pub struct Bridge {
    pub name: String,
    pub addr: String,
    pub topic: String,
    pub qos: u8,
}

/// The whole mosquitto.conf for a broker on `port`.
pub fn render_config(port: u16, limits: BrokerLimits, bridges: &[Bridge], log: &Path) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "user root");
    let _ = writeln!(c, "listener {port} 127.0.0.1");
    let _ = writeln!(c, "allow_anonymous true");
    let _ = writeln!(c, "persistence false");
    let _ = writeln!(c, "max_queued_messages {}", limits.max_queued);
    let _ = writeln!(c, "max_inflight_messages {}", limits.max_inflight);
    let _ = writeln!(c, "log_dest file {}", log.display());
    let _ = writeln!(c, "log_type error");
    let _ = writeln!(c, "log_type warning");
    let _ = writeln!(c, "log_type notice");
    for b in bridges {
        let _ = writeln!(c, "\nconnection {}", b.name);
        let _ = writeln!(c, "address {}", b.addr);
        let _ = writeln!(c, "topic {} out {}", b.topic, b.qos);
        let _ = writeln!(c, "cleansession true");
        let _ = writeln!(c, "notifications false");
        // Constant, short: a bridge that races its remote's start retries in 1 s, not 5–30.
        let _ = writeln!(c, "restart_timeout 1");
    }
    c
}

/// A loopback port that was free a moment ago (the caller retries if it is taken).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Last `n` lines of a log file, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits until `addr` accepts TCP, failing early if `child` exits.
pub async fn wait_for_port(addr: &str, child: &mut Child, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("exited with {status} before accepting connections on {addr}");
        }
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{addr} not accepting connections after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct Mosquitto {
    pub name: String,
    pub port: u16,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub async fn start(
        name: &str,
        limits: BrokerLimits,
        bridges: &[Bridge],
    ) -> anyhow::Result<Mosquitto> {
        let mut last_err = None;
        // A free port can be taken between probing and binding: retry with a new one.
        for _ in 0..3 {
            match Self::try_start(name, limits, bridges).await {
                Ok(m) => return Ok(m),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("mosquitto {name} did not start")))
    }

    async fn try_start(
        name: &str,
        limits: BrokerLimits,
        bridges: &[Bridge],
    ) -> anyhow::Result<Mosquitto> {
        let dir = tempfile::Builder::new()
            .prefix("mqtt-load-mosq-")
            .tempdir()?;
        let port = free_port()?;
        let log = dir.path().join("mosquitto.log");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, render_config(port, limits, bridges, &log))?;
        let out = std::fs::File::create(dir.path().join("stdout.log"))?;
        let mut child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .context("spawning mosquitto (is it installed? apt-get install mosquitto)")?;
        let addr = format!("127.0.0.1:{port}");
        if let Err(e) = wait_for_port(&addr, &mut child, Duration::from_secs(5)).await {
            let _ = child.kill().await;
            bail!(
                "mosquitto {name}: {e}\n{}\n{}",
                log_tail(&log, 10),
                log_tail(&dir.path().join("stdout.log"), 10)
            );
        }
        Ok(Mosquitto {
            name: name.to_string(),
            port,
            child,
            log,
            _dir: dir,
        })
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }

    /// The broker's process id (for its CPU times in /proc), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills the broker and reaps it (dropping the handle also kills it).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_limits_root_user_and_bridges() {
        let bridges = [Bridge {
            name: "b1".into(),
            addr: "127.0.0.1:2001".into(),
            topic: "load/#".into(),
            qos: 1,
        }];
        let c = render_config(
            1883,
            BrokerLimits::default(),
            &bridges,
            Path::new("/tmp/x.log"),
        );
        for line in [
            "user root",
            "listener 1883 127.0.0.1",
            "allow_anonymous true",
            "max_queued_messages 1000000",
            "max_inflight_messages 1000",
            "connection b1",
            "address 127.0.0.1:2001",
            "topic load/# out 1",
            "cleansession true",
        ] {
            assert!(c.lines().any(|l| l == line), "missing {line:?} in\n{c}");
        }
    }
}
