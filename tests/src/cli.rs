//! The real `mosquitto_pub` CLI as a second, independent client
//! implementation: if rumqttc and the proxy agree on a bug, this one won't.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::POLL_INTERVAL;

/// mosquitto_pub waits forever for a CONNACK from a paused broker; we don't.
const CLI_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `mosquitto_pub -h 127.0.0.1 -p <port> -t <topic> -m <payload> -q <qos>
/// <extra_args...>` and fails unless it exits 0 within 10 s. Blocking: it is
/// short, and keeping it sync lets plain `#[test]`s use it too.
///
/// `extra_args` go last, e.g. `["-r"]` (retain), `["-i", "id"]`,
/// `["-u", "user", "-P", "pw"]`, `["-V", "mqttv5"]`.
pub fn mosquitto_pub(
    port: u16,
    topic: &str,
    payload: &str,
    qos: u8,
    extra_args: &[&str],
) -> Result<()> {
    let output = mosquitto_pub_output(port, topic, payload, qos, extra_args)?;
    if !output.status.success() {
        bail!(
            "mosquitto_pub to port {port} topic {topic:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// [`mosquitto_pub`] that returns what the client printed (stdout, then stderr) whatever
/// its exit status: with `-d` it shows each packet, e.g. `received PUBACK (Mid: 1, RC:135)`.
pub fn mosquitto_pub_log(
    port: u16,
    topic: &str,
    payload: &str,
    qos: u8,
    extra_args: &[&str],
) -> Result<String> {
    let output = mosquitto_pub_output(port, topic, payload, qos, extra_args)?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

fn mosquitto_pub_output(
    port: u16,
    topic: &str,
    payload: &str,
    qos: u8,
    extra_args: &[&str],
) -> Result<std::process::Output> {
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-m",
            payload,
        ])
        .args(["-q", &qos.to_string()])
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning mosquitto_pub (is mosquitto-clients installed?)")?;

    let deadline = Instant::now() + CLI_TIMEOUT;
    while child.try_wait().context("polling mosquitto_pub")?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "mosquitto_pub to port {port} topic {topic:?} still running after {CLI_TIMEOUT:?}"
            );
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    child
        .wait_with_output()
        .context("collecting mosquitto_pub output")
}

/// Runs `mosquitto_sub -h 127.0.0.1 -p <port> <args...>` to its end (use `-E`, `-C n` or
/// `-W secs` so it ends) and returns its stdout lines. Fails if it is still running after
/// `timeout` or exits non-zero for another reason than `-W` expiring (exit code 27).
pub fn mosquitto_sub(port: u16, args: &[&str], timeout: Duration) -> Result<Vec<String>> {
    let mut child = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning mosquitto_sub (is mosquitto-clients installed?)")?;
    let deadline = Instant::now() + timeout;
    while child.try_wait().context("polling mosquitto_sub")?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().context("collecting output")?;
            bail!(
                "mosquitto_sub {args:?} on port {port} still running after {timeout:?}; stdout: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    let output = child
        .wait_with_output()
        .context("collecting mosquitto_sub output")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() && output.status.code() != Some(27) {
        bail!(
            "mosquitto_sub {args:?} on port {port} failed ({}): {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout.lines().map(str::to_owned).collect())
}
