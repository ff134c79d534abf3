//! `mqtt-proxy-operator`: runs the MqttProxy and MqttBroker controllers and serves
//! `/metrics`, `/healthz` and `/readyz`. Connects like every kube-rs client (in-cluster
//! service account, else `KUBECONFIG` / `~/.kube/config`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use clap::Parser;
use futures_util::future::FutureExt;
use kube::api::ListParams;
use kube::{Api, Client, CustomResourceExt};
use mqtt_proxy_operator::crd::{MqttBroker, MqttProxy};
use mqtt_proxy_operator::metrics::Metrics;
use tracing::info;

#[derive(Parser, Debug)]
#[command(
    name = "mqtt-proxy-operator",
    version,
    about = "Kubernetes operator for mqtt-proxy"
)]
struct Args {
    /// Watch only this namespace [default: all namespaces]
    #[arg(long, env = "MQTT_PROXY_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Listener for /metrics, /healthz and /readyz
    #[arg(
        long,
        env = "MQTT_PROXY_OPERATOR_HTTP_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    http_listen: SocketAddr,
    /// Proxy image of MqttProxies that name none
    #[arg(
        long,
        env = "MQTT_PROXY_OPERATOR_PROXY_IMAGE",
        default_value = concat!("ghcr.io/mqtt-proxy/mqtt-proxy:", env!("CARGO_PKG_VERSION"))
    )]
    proxy_image: String,
    /// Log as JSON lines instead of text
    #[arg(long, env = "MQTT_PROXY_OPERATOR_LOG_JSON")]
    log_json: bool,
}

struct Health {
    metrics: Arc<Metrics>,
    ready: AtomicBool,
    running: AtomicBool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_json {
        fmt.json().init();
    } else {
        fmt.init();
    }
    // rumqttc (through the proxy crate) brings aws-lc-rs into the graph besides kube's ring,
    // so rustls cannot pick a provider by itself: choose ring, like the proxy does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let namespace = args.namespace.filter(|n| !n.is_empty());
    let client = Client::try_default()
        .await
        .context("connecting to Kubernetes (in-cluster or KUBECONFIG)")?;
    check_crds(&client, namespace.as_deref()).await?;

    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health {
        metrics: metrics.clone(),
        ready: AtomicBool::new(false),
        running: AtomicBool::new(true),
    });
    let listener = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("binding --http-listen {}", args.http_listen))?;
    info!(listen = %args.http_listen, namespace = namespace.as_deref().unwrap_or("<all>"), "mqtt-proxy-operator starting");

    let shutdown = shutdown_signal().boxed().shared();
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(h): State<Arc<Health>>| async move { h.metrics.render() }),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health.clone());
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone());
    let h = health.clone();
    let controllers = mqtt_proxy_operator::controller::run(
        client,
        namespace,
        args.proxy_image,
        metrics,
        shutdown,
        move || {
            info!("caches synced; ready");
            h.ready.store(true, Ordering::Relaxed);
        },
    );
    let (served, ()) = tokio::join!(server, async {
        controllers.await;
        health.running.store(false, Ordering::Relaxed);
    });
    served.context("HTTP server")?;
    info!("stopped");
    Ok(())
}

async fn healthz(State(h): State<Arc<Health>>) -> (StatusCode, &'static str) {
    if h.running.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "controllers stopped\n")
    }
}

async fn readyz(State(h): State<Arc<Health>>) -> (StatusCode, &'static str) {
    if h.ready.load(Ordering::Relaxed) && h.running.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced\n")
    }
}

/// Fails with what to do when a CRD is not installed (404 on its list endpoint).
async fn check_crds(client: &Client, namespace: Option<&str>) -> anyhow::Result<()> {
    async fn check<K>(client: &Client, namespace: Option<&str>) -> anyhow::Result<()>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + CustomResourceExt
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => bail!(
                "the CRD {} is not installed in this cluster: install it first \
                 (kubectl apply -f crds/, or the Helm chart mqtt-proxy-operator)",
                K::crd_name()
            ),
            Err(e) => Err(e).with_context(|| format!("listing {}", K::crd_name())),
        }
    }
    check::<MqttProxy>(client, namespace).await?;
    check::<MqttBroker>(client, namespace).await
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    info!("shutdown requested");
}
