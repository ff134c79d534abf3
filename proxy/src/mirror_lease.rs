//! Mirror sessions on exactly one replica: with `--mirror-lease NAME` the proxy mirrors
//! only while it holds the `coordination.k8s.io/v1` Lease NAME (the elector of
//! [`crate::lease`], identity = the instance id, i.e. the pod name). Every replica serves
//! devices; only the holder runs the mirror sessions, so brokers with `mirror: true` are
//! mirrored once, not once per replica. A replica that loses the Lease closes its mirror
//! sessions; on shutdown the Lease is released only after they closed, so the successor
//! never mirrors alongside a draining predecessor.
//!
//! Without the flag (outside Kubernetes) the gate is always open: mirrors run as before.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::lease::{Elector, Timing};

/// How long a shutdown waits to release the Lease.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// What `--mirror-lease` configures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorLease {
    pub name: String,
    /// Namespace of the Lease; default: the pod's own (service account) namespace, else
    /// the kubeconfig's.
    pub namespace: Option<String>,
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("--mirror-lease needs the Kubernetes API (in-cluster or KUBECONFIG): {0}")]
    Client(#[from] kube::Error),
}

/// `mqtt_proxy_mirror_leader`: 1 while this replica holds the mirror Lease.
static LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    let g = IntGauge::new(
        "mqtt_proxy_mirror_leader",
        "1 while this replica holds the mirror Lease and runs the mirror sessions",
    )
    .expect("valid metric");
    // Registered once, by this LazyLock.
    let _ = crate::metrics::METRICS
        .registry
        .register(Box::new(g.clone()));
    g
});

/// The running election: `gate` is true while mirroring is allowed; the task returns the
/// elector still holding the Lease at shutdown, for [`release`] after the mirror closed.
pub struct MirrorGate {
    pub gate: watch::Receiver<bool>,
    pub task: Option<JoinHandle<Option<Elector>>>,
}

impl MirrorGate {
    /// Starts competing for `lease` as `identity`; the gate opens once it is held.
    pub async fn elect(
        lease: &MirrorLease,
        identity: &str,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, LeaseError> {
        // kube's TLS needs a process-wide rustls provider; the graph has two (ring and
        // aws-lc-rs, through rumqttc), so rustls cannot pick one itself. Ring, as elsewhere.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = kube::Client::try_default().await?;
        let ns = lease
            .namespace
            .clone()
            .or_else(pod_namespace)
            .unwrap_or_else(|| client.default_namespace().to_string());
        let elector = Elector::new(
            kube::Api::namespaced(client, &ns),
            &lease.name,
            identity.to_string(),
            Timing::for_lease(lease.duration),
        );
        info!(lease = %lease.name, namespace = %ns, %identity, "mirror sessions run only while holding the Lease");
        let (tx, gate) = watch::channel(false);
        LEADER.set(0);
        let task = tokio::spawn(run(elector, tx, shutdown));
        Ok(Self {
            gate,
            task: Some(task),
        })
    }

    /// Releases the Lease if this replica still holds it (call after the mirror closed).
    pub async fn release(self) {
        if let Some(task) = self.task {
            if let Ok(Some(elector)) = task.await {
                // Bounded: a dead API server must not eat the pod's grace period (the
                // Lease then simply expires).
                if tokio::time::timeout(RELEASE_TIMEOUT, elector.release())
                    .await
                    .is_err()
                {
                    warn!("mirror Lease: release timed out; it expires by itself");
                }
                LEADER.set(0);
            }
        }
    }
}

fn pod_namespace() -> Option<String> {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

async fn run(
    elector: Elector,
    tx: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<Elector> {
    loop {
        tokio::select! {
            () = elector.acquire() => {}
            _ = shutdown.wait_for(|s| *s) => return None,
        }
        info!("mirror Lease acquired: this replica runs the mirror sessions");
        LEADER.set(1);
        let _ = tx.send(true);
        tokio::select! {
            () = elector.hold() => {}
            _ = shutdown.wait_for(|s| *s) => return Some(elector),
        }
        warn!("mirror Lease lost: closing this replica's mirror sessions");
        LEADER.set(0);
        let _ = tx.send(false);
    }
}
