//! Sidecar mode: the mutating admission webhook that injects the proxy into application
//! pods, and the PKI it serves with.
//!
//! ```text
//!  kube-apiserver ──POST /mutate-pod (TLS, caBundle)──▶ server ─▶ review ─▶ inject (pure)
//!        ▲                                                │ MqttProxy store (reflector)
//!        └── caBundle ◀── rotate ◀── certs (pure) ◀── CA Secret
//! ```
//!
//! Who serves: every operator replica, leader or standby — admission must not depend on
//! the Lease, or a rolling update of the operator would leave a window in which labelled
//! pods start without their proxy. That is safe because admission only reads (its own
//! MqttProxy reflector, and one Secret for a user-named admin token), and the PKI writes in
//! [`rotate`] are idempotent compare-and-swap updates every replica converges on.

pub mod certs;
pub mod inject;
pub mod review;
pub mod rotate;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client};
use prometheus::{IntCounterVec, Opts, Registry};

use crate::crd::MqttProxy;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Cert(#[from] certs::CertError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("registering the webhook metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("webhook listener {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("MutatingWebhookConfiguration {0} not found (install the chart with sidecar.enabled)")]
    NoWebhookConfig(String),
    #[error("the CA Secret vanished while being read")]
    CaVanished,
    #[error("the CA Secret kept changing under us (other replicas rotating)")]
    CaContended,
}

/// `mqtt_proxy_operator_webhook_*`, registered next to the controllers' metrics.
#[derive(Clone)]
pub struct WebhookMetrics {
    admissions: IntCounterVec,
    duration: prometheus::Histogram,
    rotations: IntCounterVec,
}

impl WebhookMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let admissions = IntCounterVec::new(
            Opts::new(
                "mqtt_proxy_operator_webhook_admissions_total",
                "Pod admissions answered, by result (injected, skipped, refused)",
            ),
            &["result"],
        )?;
        let rotations = IntCounterVec::new(
            Opts::new(
                "mqtt_proxy_operator_webhook_certificates_issued_total",
                "Webhook certificates issued by this replica, by kind (ca, serving)",
            ),
            &["kind"],
        )?;
        let duration = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "mqtt_proxy_operator_webhook_admission_duration_seconds",
                "Time from a pod's AdmissionReview received to the answer",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
            ]),
        )?;
        registry.register(Box::new(admissions.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(rotations.clone()))?;
        Ok(Self {
            admissions,
            duration,
            rotations,
        })
    }

    fn admissions(&self, result: &'static str, took: std::time::Duration) {
        self.admissions.with_label_values(&[result]).inc();
        self.duration.observe(took.as_secs_f64());
    }

    fn rotated(&self, kind: &'static str) {
        self.rotations.with_label_values(&[kind]).inc();
    }
}

/// The operator's `--webhook-*` settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Namespace of the CA Secret (the operator's own).
    pub namespace: String,
    pub ca_secret: String,
    /// The MutatingWebhookConfiguration whose `caBundle` the operator keeps current.
    pub webhook_config: Option<String>,
    /// DNS names / IPs in the serving certificate.
    pub hosts: Vec<String>,
}

/// Serving-certificate names for Service `svc` in `ns`: what the API server dials.
pub fn service_hosts(svc: &str, ns: &str) -> Vec<String> {
    vec![
        svc.to_string(),
        format!("{svc}.{ns}"),
        format!("{svc}.{ns}.svc"),
        format!("{svc}.{ns}.svc.cluster.local"),
    ]
}

/// Runs the webhook until `shutdown`: the MqttProxy reflector (of `watch_ns`, or all), the
/// certificate loop, and the HTTPS server. Returns once the first certificate is issued
/// and the listener bound, or with the error that prevented it.
pub async fn start(
    client: Client,
    watch_ns: Option<&str>,
    cfg: Config,
    proxy_image: String,
    registry: &Registry,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<Result<(), Error>>, Error> {
    let metrics = WebhookMetrics::register(registry)?;
    let slot = Arc::new(server::CertSlot::default());
    let rotator = rotate::Rotator {
        secrets: Api::namespaced(client.clone(), &cfg.namespace),
        ca_secret: cfg.ca_secret.clone(),
        webhook_configs: cfg
            .webhook_config
            .clone()
            .map(|n| (Api::<MutatingWebhookConfiguration>::all(client.clone()), n)),
        hosts: cfg.hosts.clone(),
        policy: certs::Policy::default(),
        slot: slot.clone(),
        metrics: metrics.clone(),
    };
    // The first certificate before the listener: the API server must never see a TLS
    // endpoint without one.
    let (leaf, bundled) = rotator.once(None).await?;
    let first_check = if bundled {
        rotate::CHECK_EVERY
    } else {
        rotate::RETRY
    };
    tokio::spawn(rotator.run(leaf, first_check));

    let (store, writer) = reflector::store::<MqttProxy>();
    let api: Api<MqttProxy> = match watch_ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (synced_tx, synced) = tokio::sync::watch::channel(false);
    let ready_store = store.clone();
    tokio::spawn(async move {
        if ready_store.wait_until_ready().await.is_ok() {
            let _ = synced_tx.send(true);
        }
        std::future::pending::<()>().await;
    });
    tokio::spawn(
        reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .for_each(|_| async {}),
    );
    let version = client.apiserver_version().await?;
    let placement = inject::Placement::for_version(&version.major, &version.minor);
    tracing::info!(version = %version.git_version, ?placement, "sidecar placement");
    let admission = Arc::new(server::Admission {
        client: client.clone(),
        proxies: store,
        synced,
        proxy_image,
        metrics,
        placement,
    });
    let tcp = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| Error::Bind(cfg.listen, e))?;
    Ok(tokio::spawn(server::serve(tcp, slot, admission, shutdown)))
}
