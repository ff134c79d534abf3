//! The accept loop: a connection limit (semaphore), one session task per device, and a
//! graceful shutdown that stops accepting, lets sessions flush their upstreams within a
//! bounded time, and only then returns.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::metrics::{RateLimit, METRICS};
use crate::session::{self, Shared};

static REJECT_LOG: RateLimit = RateLimit::new();

pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(max_connections));
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        METRICS.device_rejected.with_label_values(&["max_connections"]).inc();
                        if let Some(held) = REJECT_LOG.allow(10) {
                            warn!(%peer, max_connections, suppressed = held, "connection limit reached; refusing device");
                        }
                        drop(stream);
                        continue;
                    };
                    let shared = shared.clone();
                    sessions.spawn(async move {
                        session::run(stream, peer, shared).await;
                        drop(permit);
                    });
                }
                // Accept errors (EMFILE, ECONNABORTED) are transient: back off briefly.
                Err(e) => {
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = session::wait_true(&mut shutdown) => break,
        }
    }
    drop(listener);
    let open = sessions.len();
    if open > 0 {
        info!(
            sessions = open,
            "shutting down: flushing device sessions to their brokers"
        );
    }
    // Sessions see the same shutdown signal and close their upstreams within the drain
    // timeout; this outer bound only guards against a stuck task.
    let bound = shared.opts.drain_timeout + Duration::from_secs(2);
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
