//! Where the tests find their programs: the cluster binaries that `tests/k8s/apiserver.sh`
//! and `tests/k8s/tools.sh` cache outside the checkout, and this workspace's own binaries
//! (`mqtt-proxy`, `mqtt-proxy-operator`), which an integration test of another package
//! cannot get through `CARGO_BIN_EXE_*`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

/// The default cache of the setup scripts (`MQTT_PROXY_CI_CACHE` overrides it).
pub const DEFAULT_CACHE: &str = "/var/cache/mqtt-proxy-ci";

/// etcd, kube-apiserver and kubectl, each found and a regular file.
#[derive(Debug, Clone)]
pub struct ClusterBinaries {
    pub etcd: PathBuf,
    pub apiserver: PathBuf,
    pub kubectl: PathBuf,
}

/// `$MQTT_PROXY_CI_CACHE/bin`, where the setup scripts link what they built.
pub fn cache_bin_dir() -> PathBuf {
    std::env::var_os("MQTT_PROXY_CI_CACHE")
        .map_or_else(|| PathBuf::from(DEFAULT_CACHE), PathBuf::from)
        .join("bin")
}

/// Whether we run in CI, where a missing API server is a failure rather than a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The cluster binaries (env `MQTT_PROXY_ETCD`, `MQTT_PROXY_KUBE_APISERVER`,
/// `MQTT_PROXY_KUBECTL` override the cache). `Ok(None)` with a printed reason when one is
/// missing outside CI; an error in CI.
pub fn cluster_binaries() -> Result<Option<ClusterBinaries>> {
    let bin = cache_bin_dir();
    let find =
        |var: &str, name: &str| std::env::var_os(var).map_or_else(|| bin.join(name), PathBuf::from);
    let found = ClusterBinaries {
        etcd: find("MQTT_PROXY_ETCD", "etcd"),
        apiserver: find("MQTT_PROXY_KUBE_APISERVER", "kube-apiserver"),
        kubectl: find("MQTT_PROXY_KUBECTL", "kubectl"),
    };
    let missing: Vec<String> = [&found.etcd, &found.apiserver, &found.kubectl]
        .into_iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return Ok(Some(found));
    }
    let how = format!(
        "the test Kubernetes API server is not built (missing: {}); build it once (as root, \
         ~10 min) with `tests/setup.d/50-kube-apiserver.sh`",
        missing.join(", ")
    );
    if in_ci() {
        bail!("CI is set, so the Kubernetes end-to-end tests must not skip: {how}");
    }
    eprintln!("SKIPPED: {how}");
    Ok(None)
}

/// Builds binary `bin` of workspace package `package` (once per test process; a no-op
/// when it is fresh) with the profile this test was built with, and returns its path.
pub fn workspace_binary(package: &str, bin: &str) -> Result<PathBuf> {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let key = format!("{package}/{bin}");
    // Poisoning only means another test panicked mid-build; the map itself is fine.
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get_or_insert_with(HashMap::new).get(&key) {
        return Ok(path.clone());
    }
    let path = cargo_build(package, bin)?;
    built
        .get_or_insert_with(HashMap::new)
        .insert(key, path.clone());
    Ok(path)
}

fn cargo_build(package: &str, bin: &str) -> Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the tests crate has no parent directory")?;
    let mut cmd = Command::new(env!("CARGO"));
    // `cargo test` runs us with the test package's CARGO_PKG_*, OUT_DIR, … set. Build
    // scripts that watch such variables (ring's does) would see them change between the
    // outer `cargo test` and this build and rebuild on every alternation.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let from_test_run = [
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_MANIFEST_",
        ]
        .iter()
        .any(|p| key.starts_with(p))
            || ["OUT_DIR", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"].contains(&&*key);
        if from_test_run {
            cmd.env_remove(&*key);
        }
    }
    cmd.current_dir(workspace)
        .args([
            "build",
            "--message-format=json-render-diagnostics",
            "-p",
            package,
        ])
        .args(["--bin", bin]);
    if let Some(profile) = test_profile() {
        cmd.args(["--profile", &profile]);
    }
    let output = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running cargo build -p {package} --bin {bin}"))?;
    if !output.status.success() {
        bail!(
            "cargo build -p {package} --bin {bin} failed ({})",
            output.status
        );
    }
    // The artifact message names the executable; no guessing about target dirs.
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in stdout.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_bin = msg["reason"] == "compiler-artifact" && msg["target"]["name"] == bin;
        if let (true, Some(exe)) = (is_bin, msg["executable"].as_str()) {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("cargo build -p {package} --bin {bin} reported no executable")
}

/// The cargo profile of this test binary, from its path `target/<dir>/deps/<test>-<hash>`
/// (`debug` is the `dev` profile).
fn test_profile() -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?.file_name()?.to_str()?.to_owned();
    Some(if dir == "debug" {
        "dev".to_owned()
    } else {
        dir
    })
}
