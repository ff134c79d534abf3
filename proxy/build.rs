//! Builds the dashboard (`web-ui/`, React + Vite) into `web-ui/dist` when it is missing or
//! older than its sources, so `cargo run --release -p mqtt-proxy` serves it on a fresh
//! machine; `src/web/assets.rs` embeds the result.
//!
//! Fast when nothing changed (a walk over the sources' modification times). Without
//! Node.js the build goes on with a warning and the proxy serves a page explaining how to
//! get the UI. `MQTT_PROXY_SKIP_UI_BUILD=1` skips this step entirely.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

const SOURCES: &[&str] = &[
    "src",
    "index.html",
    "package.json",
    "package-lock.json",
    "vite.config.ts",
    "tsconfig.json",
    "public",
];

fn newest(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    let mut t = meta.modified().ok()?;
    if meta.is_dir() {
        for e in std::fs::read_dir(path).ok()?.flatten() {
            if let Some(m) = newest(&e.path()) {
                t = t.max(m);
            }
        }
    }
    Some(t)
}

fn run(dir: &Path, args: &[&str]) -> Result<(), String> {
    let status = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .status()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`npm {}` failed ({status})", args.join(" ")))
    }
}

fn main() {
    let ui: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../web-ui");
    println!("cargo:rerun-if-env-changed=MQTT_PROXY_SKIP_UI_BUILD");
    for s in SOURCES {
        if ui.join(s).exists() {
            println!("cargo:rerun-if-changed=../web-ui/{s}");
        }
    }
    let dist = ui.join("dist");
    // Only when it exists: a missing path would make cargo rerun this on every build.
    if dist.exists() {
        println!("cargo:rerun-if-changed=../web-ui/dist");
    }
    if std::env::var_os("MQTT_PROXY_SKIP_UI_BUILD").is_some_and(|v| v != "0") {
        return;
    }
    if !ui.join("package.json").exists() {
        return;
    }
    let sources = SOURCES.iter().filter_map(|s| newest(&ui.join(s))).max();
    let built = std::fs::metadata(dist.join("index.html"))
        .and_then(|m| m.modified())
        .ok();
    if matches!((built, sources), (Some(b), Some(s)) if b >= s) {
        return;
    }
    if Command::new("npm").arg("--version").output().is_err() {
        println!(
            "cargo:warning=Node.js/npm not found: the dashboard is not built (the proxy serves a page saying how to get it). Install Node.js 20+ and rebuild (touch web-ui/package.json if cargo does not rerun this)."
        );
        return;
    }
    let lock = ui.join("package-lock.json");
    let installed = ui.join("node_modules/.package-lock.json");
    let stale_modules = match (newest(&lock), newest(&installed)) {
        (Some(l), Some(i)) => l > i,
        _ => true,
    };
    let result = if stale_modules {
        run(&ui, &["ci", "--no-audit", "--no-fund"])
    } else {
        Ok(())
    }
    .and_then(|()| run(&ui, &["run", "build"]));
    if let Err(e) = result {
        println!("cargo:warning=the dashboard was not built: {e}");
    }
}
