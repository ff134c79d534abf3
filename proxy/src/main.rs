//! The `mqtt-proxy` binary: parse the configuration, load the broker set (store or
//! hot-reloaded file), serve devices until SIGTERM/Ctrl-C, then shut down gracefully.

use anyhow::Context;
use clap::Parser;
use std::sync::Arc;

use mqtt_proxy::config::{Cli, Command, Config, LogFormat};
use mqtt_proxy::store::BrokerStore;
use mqtt_proxy::web::{self, AppState};
use mqtt_proxy::ProxyHandle;
use tracing::{info, warn};

mod healthcheck;

fn init_tracing(format: LogFormat) {
    let filter = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("LOG_LEVEL"))
        .unwrap_or_else(|_| "info".to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn secret() -> Option<String> {
    std::env::var("MQTT_PROXY_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
}

fn main() -> anyhow::Result<()> {
    // Before clap and config: the container probe must not depend on the proxy's settings
    // being valid in the probe's environment, and must stay out of `--help`.
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        std::process::exit(healthcheck::run(std::env::args().skip(2)));
    }
    let cli = Cli::parse();
    let config = Config::resolve(&cli.run)?;
    match cli.command {
        Some(Command::Brokers { cmd }) => {
            return mqtt_proxy::brokers_cmd::run(cmd, &config.data_dir, secret().as_deref())
        }
        Some(Command::Secret { cmd }) => {
            return mqtt_proxy::secret_cmd::run(cmd, &config.data_dir, secret().as_deref())
        }
        Some(Command::Users { cmd }) => {
            let path = config
                .auth
                .users_file
                .clone()
                .unwrap_or_else(|| config.data_dir.join("users.json"));
            return mqtt_proxy::auth::cli::run(cmd, &path);
        }
        None => {}
    }
    init_tracing(config.log_format);
    let runtime = build_runtime(std::env::var(WORKER_THREADS_ENV).ok().as_deref())?;
    runtime.block_on(run(config))
}

/// Environment variable choosing the runtime's worker threads: `1` one thread for
/// everything (tokio's current-thread runtime), `N > 1` a multi-thread runtime with N
/// workers, `0` one worker per core.
const WORKER_THREADS_ENV: &str = "MQTT_PROXY_WORKER_THREADS";
/// One thread by default. A device PUBLISH wakes one upstream task per broker; on a
/// multi-thread runtime those wake-ups hop to parked workers (futex, eventfd, context
/// switches), which at everyday rates cost more than the forwarding itself (BENCHMARKS.md,
/// "CPU per message"). One thread forwards well past 10,000 msg/s × 3 brokers; Argon2
/// and file loads already run on the blocking pool.
const DEFAULT_WORKER_THREADS: usize = 1;

fn build_runtime(setting: Option<&str>) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = match setting.map(str::trim) {
        None | Some("") => DEFAULT_WORKER_THREADS,
        Some(v) => v.parse().unwrap_or_else(|_| {
            warn!(
                value = v,
                "{WORKER_THREADS_ENV} is not a number; using the default"
            );
            DEFAULT_WORKER_THREADS
        }),
    };
    match workers {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    // Store mode: the JSON store is the source of truth and the API edits it.
    // File mode (Kubernetes): the mounted file is, and it is hot-reloaded.
    let (brokers, store) = match &config.brokers_file {
        Some(path) => {
            let brokers = mqtt_proxy::store::load_brokers_file(path)
                .with_context(|| format!("loading brokers file {}", path.display()))?;
            (brokers, None)
        }
        None => {
            let store = BrokerStore::open(&config.data_dir, secret().as_deref())?;
            (store.brokers().to_vec(), Some(store))
        }
    };
    let proxy = ProxyHandle::start(&config, &brokers).await?;
    let _reload = config
        .brokers_file
        .as_ref()
        .map(|path| mqtt_proxy::reload::spawn(path.clone(), &proxy));
    let state = Arc::new(AppState {
        control: proxy.control(),
        store: store.map(tokio::sync::Mutex::new),
        admin_token: web::admin_token(&config.data_dir).context("creating the admin token")?,
        ready: proxy.ready(),
        devices: proxy.device_counter(),
    });
    // HTTP outlives the MQTT drain, so /readyz answers 503 (and /metrics stays readable)
    // while sessions flush.
    let (http_stop, http_stop_rx) = tokio::sync::watch::channel(false);
    let http = web::serve(config.http_listen, state, http_stop_rx)
        .await
        .with_context(|| format!("cannot listen on {}", config.http_listen))?;
    info!(
        mqtt = %proxy.mqtt_addr(),
        http = %http,
        brokers = brokers.iter().filter(|b| b.enabled).count(),
        "mqtt-proxy ready"
    );
    shutdown_signal().await;
    info!("shutdown requested: flushing sessions");
    proxy.shutdown().await;
    let _ = http_stop.send(true);
    info!("bye");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
