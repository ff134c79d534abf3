//! Helpers shared by the `cli_*` tests, which run the real `mqtt-proxy` binary as an
//! operator does. This crate cannot use the `tests/` harness (it would be a dependency
//! cycle), so the few helpers needed live here: every child process is killed and reaped
//! on drop, and every wait has a deadline. `serve` starts mosquitto and the proxy.

pub mod serve;

use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mqtt-proxy");
/// Bound for a CLI run, a startup, a message to arrive, a shutdown.
pub const WAIT: Duration = Duration::from_secs(10);
pub const POLL: Duration = Duration::from_millis(20);
/// A made-up 32-byte hex secret.
pub const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    name: &'static str,
    /// `None` only after [`Proc::output`] took it.
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e} (is it installed?)"));
        Proc {
            name,
            child: Some(child),
        }
    }

    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until output()")
    }

    pub fn pid(&mut self) -> u32 {
        self.child().id()
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        let name = self.name;
        self.child()
            .try_wait()
            .unwrap_or_else(|e| panic!("polling {name}: {e}"))
    }

    /// The exit status if the process ends within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
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
    pub fn output(mut self, timeout: Duration) -> Output {
        let status = self.wait_exit(timeout);
        assert!(
            status.is_some(),
            "{} still running after {timeout:?}",
            self.name
        );
        let child = self.child.take().expect("child present");
        child.wait_with_output().expect("collect output")
    }

    pub fn stdin(&mut self) -> &mut ChildStdin {
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
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
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

pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port on 127.0.0.1")
}

pub fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}

/// `mqtt-proxy` with none of the caller's `MQTT_PROXY_*` settings leaking in.
pub fn proxy_command() -> Command {
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
pub fn run(mut cmd: Command, stdin: &str) -> Output {
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
pub fn cli(dir: &Path, args: &str, stdin: &str, secret: Option<&str>) -> Output {
    let mut cmd = proxy_command();
    cmd.arg("--data-dir").arg(dir).args(args.split_whitespace());
    if let Some(secret) = secret {
        cmd.env("MQTT_PROXY_SECRET", secret);
    }
    run(cmd, stdin)
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(out: &Output, what: &str) -> String {
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
pub fn fails(out: &Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} should fail\nstdout: {}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

pub fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}
