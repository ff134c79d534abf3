//! HTTPS for the API server: `POST /mutate-pod` (AdmissionReview v1) over rustls, with a
//! certificate that can be swapped while serving (rotation never restarts the listener).
//!
//! TLS handshakes run in their own tasks (at most [`MAX_HANDSHAKES`] at once) and hand
//! finished connections to axum through a bounded channel, so one slow client cannot hold
//! up the others; a handshake that takes longer than [`HANDSHAKE_TIMEOUT`] is dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::DynamicObject;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::certs::Leaf;
use super::inject::Placement;
use super::review::{respond, sidecar_for, wanted, Decision};
use super::{Error, WebhookMetrics};
use crate::crd::MqttProxy;

/// The path the webhook configuration's `clientConfig` names.
pub const MUTATE_PATH: &str = "/mutate-pod";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight; beyond this the accept loop waits (the kernel's backlog queues).
const MAX_HANDSHAKES: usize = 128;
/// Finished handshakes waiting for axum; beyond this, new connections wait in the kernel.
const ACCEPT_QUEUE: usize = 64;

/// The serving certificate, replaced on rotation.
#[derive(Debug, Default)]
pub struct CertSlot(RwLock<Option<Arc<CertifiedKey>>>);

impl CertSlot {
    pub fn set(&self, leaf: &Leaf) -> Result<(), Error> {
        let certs = rustls_pemfile::certs(&mut leaf.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Tls(e.to_string()))?;
        let key = rustls_pemfile::private_key(&mut leaf.key_pem.as_bytes())
            .map_err(|e| Error::Tls(e.to_string()))?
            .ok_or_else(|| Error::Tls("no private key in PEM".into()))?;
        let provider = rustls::crypto::ring::default_provider();
        let ck =
            CertifiedKey::from_der(certs, key, &provider).map_err(|e| Error::Tls(e.to_string()))?;
        if let Ok(mut slot) = self.0.write() {
            *slot = Some(Arc::new(ck));
        }
        Ok(())
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().and_then(|s| s.clone())
    }
}

/// What the handler needs: the MqttProxy store (every replica runs its own reflector, so
/// standby replicas answer too), a client for the one Secret a user-named admin token
/// lives in, the default proxy image, and where the sidecar goes.
pub struct Admission {
    pub client: Client,
    pub proxies: Store<MqttProxy>,
    pub synced: tokio::sync::watch::Receiver<bool>,
    pub proxy_image: String,
    pub metrics: WebhookMetrics,
    /// From the API server's version at start-up.
    pub placement: Placement,
}

/// How long a review waits for the MqttProxy store right after start-up: below the
/// webhook's `timeoutSeconds` (the chart's default is 5 s), so the API server gets an
/// answer (admitted unchanged, with a warning) rather than a timeout.
const STORE_WAIT: Duration = Duration::from_secs(3);

async fn mutate(
    State(a): State<Arc<Admission>>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let started = std::time::Instant::now();
    let req: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "malformed AdmissionReview");
            return Json(AdmissionResponse::invalid(e.to_string()).into_review());
        }
    };
    let (res, decision) = match wanted(&req) {
        Some(name) => respond(&req, lookup(&a, &req, name).await, a.placement),
        None => (AdmissionResponse::from(&req), Decision::Skipped),
    };
    a.metrics
        .admissions(decision.metric_label(), started.elapsed());
    match &decision {
        Decision::Injected => {
            info!(namespace = ?req.namespace, pod = %req.name, "sidecar injected")
        }
        Decision::Refused(why) => {
            warn!(namespace = ?req.namespace, pod = %req.name, why, "sidecar not injected")
        }
        Decision::Skipped => debug!(namespace = ?req.namespace, pod = %req.name, "skipped"),
    }
    Json(res.into_review())
}

async fn lookup(
    a: &Admission,
    req: &AdmissionRequest<Pod>,
    name: &str,
) -> Result<super::inject::Sidecar, String> {
    let ns = req.namespace.clone().unwrap_or_default();
    let mut synced = a.synced.clone();
    if tokio::time::timeout(STORE_WAIT, synced.wait_for(|s| *s))
        .await
        .is_err()
    {
        return Err("the operator has not synced its MqttProxy cache yet".into());
    }
    let proxy = a
        .proxies
        .get(&ObjectRef::new(name).within(&ns))
        .ok_or_else(|| format!("no MqttProxy {ns}/{name}"))?;
    let mut secrets = BTreeMap::new();
    if let Some(r) = proxy
        .spec
        .web
        .admin_token_secret_ref
        .as_ref()
        .filter(|_| proxy.spec.web.enabled)
    {
        let api: Api<Secret> = Api::namespaced(a.client.clone(), &ns);
        match api.get_opt(&r.name).await {
            Ok(Some(s)) => {
                secrets.insert(r.name.clone(), s);
            }
            Ok(None) => {}
            Err(e) => return Err(format!("reading Secret {ns}/{}: {e}", r.name)),
        }
    }
    sidecar_for(&proxy, secrets, &a.proxy_image)
}

/// Serves the webhook on `tcp` until `shutdown` resolves.
pub async fn serve(
    tcp: TcpListener,
    certs: Arc<CertSlot>,
    state: Arc<Admission>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let local = tcp
        .local_addr()
        .map_err(|e| Error::Bind(SocketAddr::from(([0, 0, 0, 0], 0)), e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPT_QUEUE);
    let accept_loop = tokio::spawn(accept(tcp, acceptor, tx));
    info!(listen = %local, path = MUTATE_PATH, "admission webhook serving");
    let app = Router::new()
        .route(MUTATE_PATH, post(mutate))
        .with_state(state);
    let served = axum::serve(TlsListener { rx, local }, app)
        .with_graceful_shutdown(shutdown)
        .await;
    accept_loop.abort();
    served.map_err(|e| Error::Bind(local, e))
}

async fn accept(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: tokio::sync::mpsc::Sender<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return; // closed: never happens, the loop owns the semaphore
        };
        let (stream, peer) = match tcp.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                warn!(error = %e, "webhook accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            drop(slot);
            match handshake {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "webhook TLS handshake failed"),
                Err(_) => debug!(%peer, "webhook TLS handshake timed out"),
            }
        });
    }
}

/// Finished TLS connections, as axum's listener.
struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop is gone (shutdown): never yield another connection.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
