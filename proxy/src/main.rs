//! The `mqtt-proxy` binary: parse the configuration, load the broker set (store or
//! hot-reloaded file), serve devices until SIGTERM/Ctrl-C, then shut down gracefully.

use anyhow::Context;
use clap::Parser;
use mqtt_proxy::broker::BrokerConfig;
use mqtt_proxy::config::{Cli, Command, Config, LogFormat};
use mqtt_proxy::ProxyHandle;
use tracing::{info, warn};

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
    let cli = Cli::parse();
    let config = Config::resolve(&cli.run)?;
    if let Some(Command::Brokers { cmd }) = cli.command {
        return mqtt_proxy::brokers_cmd::run(cmd, &config.data_dir, secret().as_deref());
    }
    init_tracing(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(config))
}

fn load_brokers(config: &Config) -> anyhow::Result<Vec<BrokerConfig>> {
    match &config.brokers_file {
        Some(path) => mqtt_proxy::store::load_brokers_file(path)
            .with_context(|| format!("loading brokers file {}", path.display())),
        None => {
            let store =
                mqtt_proxy::store::BrokerStore::open(&config.data_dir, secret().as_deref())?;
            Ok(store.brokers().to_vec())
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let brokers = load_brokers(&config)?;
    let proxy = ProxyHandle::start(&config, &brokers).await?;
    info!(mqtt = %proxy.mqtt_addr(), brokers = brokers.iter().filter(|b| b.enabled).count(), "mqtt-proxy ready");
    let _reload = config
        .brokers_file
        .as_ref()
        .map(|path| mqtt_proxy::reload::spawn(path.clone(), &proxy));
    shutdown_signal().await;
    info!("shutdown requested: flushing sessions");
    proxy.shutdown().await;
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
