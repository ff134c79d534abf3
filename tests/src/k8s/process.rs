//! A program the end-to-end tests run as a child process (the operator, the proxy binary):
//! its stdout and stderr go to one log file in a temp dir, waits on its log or its exit are
//! bounded, and it is killed and reaped when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

/// Lines of the log quoted in errors.
const LOG_TAIL_LINES: usize = 60;

/// A running child with its combined output in `<dir>/<name>.log`.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    _dir: TempDir,
}

impl Process {
    /// Spawns `cmd` (whose stdio this sets) with output captured into the log.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("mqtt-proxy-{name}-"))
            .tempdir()
            .context("creating a process temp dir")?;
        let log = dir.path().join(format!("{name}.log"));
        let file = fs::File::create(&log).context("creating the log")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().context("cloning the log handle")?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log,
            _dir: dir,
        })
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything it printed so far.
    pub fn log(&self) -> String {
        fs::read(&self.log).map_or_else(
            |e| format!("({} unreadable: {e})", self.log.display()),
            |b| String::from_utf8_lossy(&b).into_owned(),
        )
    }

    /// The last lines of the log, headed by the process name, for error messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        format!("--- {} log ({}) ---\n{tail}", self.name, self.log.display())
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Waits until the log contains `needle`; fails early if the process exits.
    pub async fn wait_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.try_exit()? {
                bail!(
                    "{} exited ({status}) before logging {needle:?}\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not log {needle:?} within {timeout:?}\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails if the process has exited (with its log).
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.try_exit()? {
            bail!("{} exited ({status})\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// Waits for the process to exit by itself, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} still running after {timeout:?}\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` (e.g. `"TERM"`, `"HUP"`) with the `kill` utility.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.pid().context("the process is not running")?;
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

    fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait().context("polling the process")?),
            None => bail!("{} was already reaped", self.name),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
