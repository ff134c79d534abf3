//! The proxy under test as a child process, started with the CLI contract
//! `--mqtt-listen --http-listen --data-dir --brokers-file --log-format text --allow-anonymous`
//! and a generated brokers.json, ready once its MQTT port accepts TCP.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::mosquitto::{free_port, log_tail, wait_for_port};

#[derive(Debug, Serialize)]
struct BrokerEntry<'a> {
    id: &'a str,
    name: &'a str,
    address: &'a str,
    port: u16,
}

/// `{"brokers":[{"id":"b1","name":"b1","address":"127.0.0.1","port":…}, …]}`
pub fn brokers_json(brokers: &[(String, u16)]) -> String {
    #[derive(Serialize)]
    struct File<'a> {
        brokers: Vec<BrokerEntry<'a>>,
    }
    let file = File {
        brokers: brokers
            .iter()
            .map(|(name, port)| BrokerEntry {
                id: name,
                name,
                address: "127.0.0.1",
                port: *port,
            })
            .collect(),
    };
    serde_json::to_string_pretty(&file).unwrap_or_default()
}

/// Where to look for `mqtt-proxy` when `--proxy-bin` is not given: next to this
/// executable (both built into `target/release`), then the workspace's
/// `target/release`, then `./target/release`.
pub fn default_proxy_bin() -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("mqtt-proxy"));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/mqtt-proxy"));
    candidates.push(PathBuf::from("target/release/mqtt-proxy"));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| candidates[candidates.len() - 1].clone())
}

pub struct ProxyProc {
    pub port: u16,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ProxyProc {
    pub async fn start(bin: &Path, brokers: &[(String, u16)]) -> anyhow::Result<ProxyProc> {
        let dir = tempfile::Builder::new()
            .prefix("mqtt-load-proxy-")
            .tempdir()?;
        let brokers_file = dir.path().join("brokers.json");
        std::fs::write(&brokers_file, brokers_json(brokers))?;
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir)?;
        let log = dir.path().join("proxy.log");
        let out = std::fs::File::create(&log)?;
        let (port, http_port) = (free_port()?, free_port()?);
        let mut child = Command::new(bin)
            .arg("--mqtt-listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{http_port}"))
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--brokers-file")
            .arg(&brokers_file)
            .arg("--log-format")
            .arg("text")
            .arg("--allow-anonymous")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let addr = format!("127.0.0.1:{port}");
        if let Err(e) = wait_for_port(&addr, &mut child, Duration::from_secs(10)).await {
            let _ = child.kill().await;
            bail!("proxy {}: {e}\n{}", bin.display(), log_tail(&log, 20));
        }
        Ok(ProxyProc {
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

    /// The proxy's process id (for its CPU times in /proc), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brokers_file_matches_the_contract() {
        let json = brokers_json(&[("b1".into(), 2001), ("b2".into(), 2002)]);
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(
            v,
            serde_json::json!({"brokers": [
                {"id": "b1", "name": "b1", "address": "127.0.0.1", "port": 2001},
                {"id": "b2", "name": "b2", "address": "127.0.0.1", "port": 2002},
            ]})
        );
    }
}
