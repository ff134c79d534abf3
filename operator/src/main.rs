//! `mqtt-proxy-operator`: runs the MqttProxy and MqttBroker controllers and serves
//! `/metrics`, `/healthz` and `/readyz`. Connects like every kube-rs client (in-cluster
//! service account, else `KUBECONFIG` / `~/.kube/config`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
use mqtt_proxy_operator::leader::{Elector, Timing, LEASE_NAME};
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
    /// Reconcile only while holding the Lease `mqtt-proxy-operator` (for more than one
    /// replica, or rolling updates without overlap)
    #[arg(long, env = "MQTT_PROXY_OPERATOR_LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of that Lease [default: --namespace, else the pod's own namespace]
    #[arg(long, env = "MQTT_PROXY_OPERATOR_LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Seconds a leader that stopped renewing keeps the Lease
    #[arg(
        long,
        env = "MQTT_PROXY_OPERATOR_LEADER_LEASE_SECS",
        default_value_t = 15
    )]
    leader_lease_secs: u64,
    /// Seconds the leader may fail to renew before it stops reconciling (less than the
    /// lease, so it stops before another replica can take over)
    #[arg(
        long,
        env = "MQTT_PROXY_OPERATOR_LEADER_RENEW_DEADLINE_SECS",
        default_value_t = 10
    )]
    leader_renew_deadline_secs: u64,
    /// Seconds between renewals by the leader and attempts by a standby
    #[arg(
        long,
        env = "MQTT_PROXY_OPERATOR_LEADER_RETRY_SECS",
        default_value_t = 2
    )]
    leader_retry_secs: u64,
    #[command(flatten)]
    webhook: WebhookArgs,
}

/// Sidecar mode's admission webhook (off unless `--webhook-listen` is given).
#[derive(clap::Args, Debug)]
struct WebhookArgs {
    /// Serve the sidecar-injection webhook (HTTPS, `POST /mutate-pod`) on this address
    #[arg(long, env = "MQTT_PROXY_OPERATOR_WEBHOOK_LISTEN")]
    webhook_listen: Option<SocketAddr>,
    /// MutatingWebhookConfiguration whose caBundle the operator keeps current
    #[arg(long, env = "MQTT_PROXY_OPERATOR_WEBHOOK_CONFIG")]
    webhook_config: Option<String>,
    /// Service in front of the webhook: its DNS names go into the serving certificate
    #[arg(long, env = "MQTT_PROXY_OPERATOR_WEBHOOK_SERVICE")]
    webhook_service: Option<String>,
    /// Further names or IPs for the serving certificate (comma-separated)
    #[arg(long, env = "MQTT_PROXY_OPERATOR_WEBHOOK_HOSTS", value_delimiter = ',')]
    webhook_host: Vec<String>,
    /// Namespace of the webhook's Service and CA Secret [default: the pod's own]
    #[arg(long, env = "MQTT_PROXY_OPERATOR_WEBHOOK_NAMESPACE")]
    webhook_namespace: Option<String>,
    /// Secret holding the webhook's CA (created and rotated by the operator)
    #[arg(
        long,
        env = "MQTT_PROXY_OPERATOR_WEBHOOK_CA_SECRET",
        default_value = "mqtt-proxy-operator-webhook-ca"
    )]
    webhook_ca_secret: String,
}

struct Health {
    metrics: Arc<Metrics>,
    elector: Option<Elector>,
    ready: AtomicBool,
    running: AtomicBool,
    /// Waiting for the Lease: ready too, or a rolling update would wait forever for a new
    /// pod that cannot lead before the old one is gone.
    standby: AtomicBool,
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

    if args.leader_renew_deadline_secs >= args.leader_lease_secs || args.leader_retry_secs == 0 {
        bail!("leader election: need 0 < --leader-retry-secs and --leader-renew-deadline-secs < --leader-lease-secs");
    }
    let timing = Timing {
        lease: Duration::from_secs(args.leader_lease_secs),
        renew_deadline: Duration::from_secs(args.leader_renew_deadline_secs),
        retry: Duration::from_secs(args.leader_retry_secs),
    };
    let elector = if args.leader_elect {
        Some(elector(
            &client,
            args.leader_election_namespace,
            namespace.as_deref(),
            timing,
        ))
    } else {
        None
    };
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health {
        metrics: metrics.clone(),
        elector: elector.clone(),
        ready: AtomicBool::new(false),
        running: AtomicBool::new(true),
        standby: AtomicBool::new(false),
    });
    let listener = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("binding --http-listen {}", args.http_listen))?;
    info!(listen = %args.http_listen, namespace = namespace.as_deref().unwrap_or("<all>"), "mqtt-proxy-operator starting");

    let signal = shutdown_signal().boxed().shared();
    // Before the Lease: standby replicas answer admission too (see the webhook module).
    if let Some(cfg) = webhook_config(args.webhook) {
        let served = mqtt_proxy_operator::webhook::start(
            client.clone(),
            namespace.as_deref(),
            cfg,
            args.proxy_image.clone(),
            &metrics.registry,
            signal.clone(),
        )
        .await
        .context("starting the sidecar webhook")?;
        tokio::spawn(async move {
            match served.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "sidecar webhook stopped"),
                Err(e) => tracing::error!(error = %e, "sidecar webhook task failed"),
            }
        });
    }
    let lost = Arc::new(AtomicBool::new(false));
    let (leading_tx, leading_rx) = tokio::sync::watch::channel(false);
    // Stop on SIGTERM, or when the Lease is lost (another replica reconciles now).
    let stop = {
        let (signal, elector, lost) = (signal.clone(), elector.clone(), lost.clone());
        let metrics_for_stop = metrics.clone();
        let mut leading = leading_rx;
        async move {
            let held = async {
                match &elector {
                    Some(e) => {
                        if leading.wait_for(|l| *l).await.is_err() {
                            return std::future::pending().await;
                        }
                        e.hold().await;
                        lost.store(true, Ordering::Relaxed);
                        metrics_for_stop.leader.set(0);
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! { _ = signal => {}, _ = held => {} }
        }
        .boxed()
        .shared()
    };
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(h): State<Arc<Health>>| async move { h.metrics.render() }),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health.clone());
    let server = axum::serve(listener, app).with_graceful_shutdown(stop.clone());
    let h = health.clone();
    let proxy_image = args.proxy_image;
    let work = async {
        if let Some(e) = &elector {
            health.standby.store(true, Ordering::Relaxed);
            tokio::select! {
                _ = e.acquire() => {},
                _ = signal.clone() => return,
            }
            health.standby.store(false, Ordering::Relaxed);
            let _ = leading_tx.send(true);
        }
        health.metrics.leader.set(1);
        mqtt_proxy_operator::controller::run(
            client,
            namespace,
            proxy_image,
            metrics,
            stop,
            move || {
                info!("caches synced; ready");
                h.ready.store(true, Ordering::Relaxed);
            },
        )
        .await;
    };
    let (served, ()) = tokio::join!(server, async {
        work.await;
        health.running.store(false, Ordering::Relaxed);
        health.metrics.leader.set(0);
    });
    if let Some(e) = &elector {
        if lost.load(Ordering::Relaxed) {
            bail!("lost the leader election lease; exiting so that only one operator reconciles");
        }
        e.release().await;
    }
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

/// Ready, and which role: `leader <identity>` or `standby, lease held by <holder>`.
async fn readyz(State(h): State<Arc<Health>>) -> (StatusCode, String) {
    if h.standby.load(Ordering::Relaxed) {
        let holder = h.elector.as_ref().and_then(Elector::holder);
        let holder = holder.as_deref().unwrap_or("nobody (taking it over)");
        (StatusCode::OK, format!("standby: lease held by {holder}\n"))
    } else if h.ready.load(Ordering::Relaxed) && h.running.load(Ordering::Relaxed) {
        match &h.elector {
            Some(e) => (StatusCode::OK, format!("ready: leader {}\n", e.identity)),
            None => (StatusCode::OK, "ready\n".into()),
        }
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "caches not synced\n".into(),
        )
    }
}

fn webhook_config(a: WebhookArgs) -> Option<mqtt_proxy_operator::webhook::Config> {
    let listen = a.webhook_listen?;
    let namespace = a
        .webhook_namespace
        .filter(|n| !n.is_empty())
        .or_else(own_namespace)
        .unwrap_or_else(|| "default".into());
    let mut hosts = a
        .webhook_service
        .filter(|s| !s.is_empty())
        .map(|s| mqtt_proxy_operator::webhook::service_hosts(&s, &namespace))
        .unwrap_or_default();
    hosts.extend(a.webhook_host.into_iter().filter(|h| !h.is_empty()));
    if hosts.is_empty() {
        hosts.push("localhost".into());
    }
    Some(mqtt_proxy_operator::webhook::Config {
        listen,
        namespace,
        ca_secret: a.webhook_ca_secret,
        webhook_config: a.webhook_config.filter(|n| !n.is_empty()),
        hosts,
    })
}

/// The pod's namespace, from its service account mount.
fn own_namespace() -> Option<String> {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_string())
}

/// The Lease lives in `--leader-election-namespace`, else the watched namespace, else the
/// pod's own (service account) namespace, else `default`.
fn elector(
    client: &Client,
    lease_ns: Option<String>,
    watched: Option<&str>,
    timing: Timing,
) -> Elector {
    let ns = lease_ns
        .filter(|n| !n.is_empty())
        .or_else(|| watched.map(String::from))
        .or_else(own_namespace)
        .unwrap_or_else(|| "default".into());
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "mqtt-proxy-operator".into());
    Elector::new(
        Api::namespaced(client.clone(), &ns),
        LEASE_NAME,
        format!("{host}_{}", std::process::id()),
        timing,
    )
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
