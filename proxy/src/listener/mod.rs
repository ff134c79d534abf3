//! The device edge's accept side: endpoints for plain TCP (`:1883`), TLS (`:8883` when a
//! certificate is configured), WebSocket and WebSocket over TLS; connection limits shared
//! by all of them (total, and per source address); the transport handshake in the
//! connection's own task, bounded by the CONNECT timeout so a slow handshake never holds
//! up the accept loop; and a graceful shutdown that stops accepting, lets sessions flush
//! their upstreams within a bounded time, and only then returns.
//!
//! - `tcp.rs`: accept tasks, per-address limit
//! - `tls.rs`: rustls server, certificate hot reload, client-certificate identity
//! - `ws.rs`: WebSocket upgrade and the byte-stream adapter

pub mod tcp;
pub mod tls;
pub mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::metrics::{RateLimit, METRICS};
use crate::session::{self, Shared};
use crate::tls::TlsError;
use crate::transport::{Conn, Io, Transport};
use tcp::AddressLimit;
pub use tls::TlsFiles;

static REJECT_LOG: RateLimit = RateLimit::new();

/// Where and how devices connect.
#[derive(Clone, Debug)]
pub struct ListenOptions {
    /// Serve plain MQTT on `Config::mqtt_listen` (off: TLS/WebSocket only).
    pub plain: bool,
    /// Device-side TLS; enables the TLS listener (and `wss`).
    pub tls: Option<TlsFiles>,
    pub tls_listen: SocketAddr,
    pub ws_listen: Option<SocketAddr>,
    pub wss_listen: Option<SocketAddr>,
    pub ws_path: String,
    /// 0: no per-address limit.
    pub max_connections_per_address: usize,
}

impl Default for ListenOptions {
    fn default() -> Self {
        Self {
            plain: true,
            tls: None,
            tls_listen: SocketAddr::from(([0, 0, 0, 0], 8883)),
            ws_listen: None,
            wss_listen: None,
            ws_path: "/mqtt".into(),
            max_connections_per_address: 1_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr} ({transport}): {source}")]
    Bind {
        addr: SocketAddr,
        transport: &'static str,
        source: std::io::Error,
    },
    #[error("device TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Invalid(String),
}

/// Bound endpoints, ready to serve.
pub struct Edge {
    endpoints: Vec<(Transport, TcpListener)>,
    addrs: Vec<(Transport, SocketAddr)>,
    tls: Option<Arc<tls::TlsServer>>,
    ws_path: String,
}

impl Edge {
    /// Binds every configured endpoint (plain on `plain_addr`).
    pub async fn bind(opts: &ListenOptions, plain_addr: SocketAddr) -> Result<Edge, ListenError> {
        let tls = match &opts.tls {
            Some(files) => Some(Arc::new(tls::TlsServer::start(files, crate::reload::POLL)?)),
            None => None,
        };
        if opts.wss_listen.is_some() && tls.is_none() {
            return Err(ListenError::Invalid(
                "--wss-listen needs --tls-cert and --tls-key".into(),
            ));
        }
        let mut wanted = Vec::new();
        if opts.plain {
            wanted.push((Transport::Tcp, plain_addr));
        }
        if tls.is_some() {
            wanted.push((Transport::Tls, opts.tls_listen));
        }
        if let Some(a) = opts.ws_listen {
            wanted.push((Transport::Ws, a));
        }
        if let Some(a) = opts.wss_listen {
            wanted.push((Transport::Wss, a));
        }
        if wanted.is_empty() {
            return Err(ListenError::Invalid(
                "no device listener: plain MQTT is off and no TLS or WebSocket listener is configured".into(),
            ));
        }
        let mut endpoints = Vec::new();
        let mut addrs = Vec::new();
        for (transport, addr) in wanted {
            let bind_err = |source| ListenError::Bind {
                addr,
                transport: transport.label(),
                source,
            };
            let l = TcpListener::bind(addr).await.map_err(bind_err)?;
            addrs.push((transport, l.local_addr().map_err(bind_err)?));
            endpoints.push((transport, l));
        }
        Ok(Edge {
            endpoints,
            addrs,
            tls,
            ws_path: opts.ws_path.clone(),
        })
    }

    /// The bound address of every endpoint.
    pub fn addrs(&self) -> Vec<(Transport, SocketAddr)> {
        self.addrs.clone()
    }
}

/// What a connection task needs to set up its transport.
struct Setup {
    tls: Option<Arc<tls::TlsServer>>,
    ws_path: String,
    max_message: usize,
}

impl Setup {
    async fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        transport: Transport,
    ) -> Result<Conn, String> {
        let mut cert_identity = None;
        let io: Box<dyn Io> = match (transport, &self.tls) {
            (Transport::Tcp | Transport::Ws, _) => Box::new(stream),
            (Transport::Tls | Transport::Wss, Some(t)) => {
                let s = t
                    .acceptor
                    .accept(stream)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                cert_identity = tls::identity(s.get_ref().1.peer_certificates());
                Box::new(s)
            }
            (_, None) => return Err("TLS endpoint without a certificate".into()),
        };
        let io: Box<dyn Io> = match transport {
            Transport::Ws | Transport::Wss => Box::new(
                ws::accept(io, &self.ws_path, self.max_message)
                    .await
                    .map_err(|e| format!("WebSocket: {e}"))?,
            ),
            Transport::Tcp | Transport::Tls => io,
        };
        Ok(Conn {
            io,
            peer,
            transport,
            cert_identity,
        })
    }
}

pub async fn serve(
    edge: Edge,
    shared: Arc<Shared>,
    opts: ListenOptions,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(max_connections));
    let per_address = AddressLimit::new(opts.max_connections_per_address);
    let setup = Arc::new(Setup {
        tls: edge.tls.clone(),
        ws_path: edge.ws_path.clone(),
        max_message: shared.opts.max_packet_size + 16,
    });
    let transports: Vec<Transport> = edge.endpoints.iter().map(|(t, _)| *t).collect();
    let (tx, mut accepted) = mpsc::channel(64);
    let mut acceptors = JoinSet::new();
    for (i, (_, l)) in edge.endpoints.into_iter().enumerate() {
        acceptors.spawn(tcp::accept_loop(l, i, tx.clone()));
    }
    drop(tx);
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            Some((stream, peer, i)) = accepted.recv() => {
                let transport = transports[i];
                let Some(addr_permit) = per_address.try_acquire(peer.ip()) else {
                    reject(peer, "max_connections_per_address", opts.max_connections_per_address);
                    continue;
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    reject(peer, "max_connections", max_connections);
                    continue;
                };
                let (shared, setup) = (shared.clone(), setup.clone());
                sessions.spawn(async move {
                    let bound = shared.opts.connect_timeout;
                    match tokio::time::timeout(bound, setup.handshake(stream, peer, transport)).await {
                        Ok(Ok(conn)) => session::run(conn, shared).await,
                        Ok(Err(e)) => {
                            METRICS.device_rejected.with_label_values(&["handshake"]).inc();
                            debug!(%peer, transport = transport.label(), error = %e, "handshake failed");
                        }
                        Err(_) => {
                            METRICS.device_rejected.with_label_values(&["handshake_timeout"]).inc();
                            debug!(%peer, transport = transport.label(), "handshake timed out");
                        }
                    }
                    drop((permit, addr_permit));
                });
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = session::wait_true(&mut shutdown) => break,
        }
    }
    acceptors.abort_all();
    drain(sessions, shared.opts.drain_timeout).await;
}

fn reject(peer: SocketAddr, reason: &'static str, limit: usize) {
    METRICS.device_rejected.with_label_values(&[reason]).inc();
    if let Some(held) = REJECT_LOG.allow(10) {
        warn!(%peer, reason, limit, suppressed = held, "connection limit reached; refusing device");
    }
}

async fn drain(mut sessions: JoinSet<()>, drain_timeout: Duration) {
    let open = sessions.len();
    if open > 0 {
        info!(
            sessions = open,
            "shutting down: flushing device sessions to their brokers"
        );
    }
    // Sessions see the same shutdown signal and close their upstreams within the drain
    // timeout; this outer bound only guards against a stuck task.
    let bound = drain_timeout + Duration::from_secs(2);
    if tokio::time::timeout(bound, async {
        while sessions.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        warn!(
            remaining = sessions.len(),
            "sessions did not finish in time; aborting them"
        );
        sessions.abort_all();
    }
}

/// The TLS files named by the CLI, if any (both cert and key are needed).
pub fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Option<TlsFiles>, String> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert,
            key,
            client_ca,
        })),
        (None, None) if client_ca.is_none() => Ok(None),
        _ => Err("--tls-cert and --tls-key go together (and --tls-client-ca needs both)".into()),
    }
}
