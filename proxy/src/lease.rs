//! Leader election on a `coordination.k8s.io/v1` Lease (feature `lease`), shared by the
//! operator (one reconciling replica) and the proxy (mirror sessions on one replica). The
//! decision is a pure function of the Lease and the clock ([`decide`]); writes use the
//! Lease's `resourceVersion`, so of two candidates only one wins a take-over.
//!
//! Timing follows client-go's leader election: a standby retries every `retry`; the leader
//! renews every `retry` too and gives up once it could not renew for `renew_deadline`,
//! which is shorter than the lease, so it has stopped reconciling before anyone else may
//! take the expired Lease over. A clean shutdown releases the Lease, so a standby takes
//! over within one `retry` instead of a whole lease.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::Api;
use tracing::{info, warn};

/// How long a Lease lasts and how often it is tried (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// A holder that has not renewed for this long has lost the Lease.
    pub lease: Duration,
    /// The leader stops once renewing failed for this long (shorter than `lease`).
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby tries to acquire.
    pub retry: Duration,
}

impl Timing {
    /// Timing for a lease of `lease`, in client-go's proportions (renew deadline 2/3 of the
    /// lease, retry 2/15 of it, at least a second).
    pub fn for_lease(lease: Duration) -> Self {
        Self {
            lease,
            renew_deadline: lease * 2 / 3,
            retry: (lease * 2 / 15).max(Duration::from_secs(1)),
        }
    }
}

impl Default for Timing {
    /// client-go's defaults.
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Elector {
    pub api: Api<Lease>,
    /// Name of the Lease.
    pub name: String,
    /// This process: `<hostname>_<pid>`, unique per pod and restart.
    pub identity: String,
    pub timing: Timing,
    /// The holder seen by the last round (for `/readyz`).
    holder: Arc<Mutex<Option<String>>>,
}

/// What to do with the Lease as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it over.
    TakeOver,
    /// Someone else holds it: wait.
    Wait { holder: String },
}

/// The pure decision (see the module docs).
pub fn decide(lease: Option<&Lease>, me: &str, now: Timestamp) -> Step {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return if lease.is_none() {
            Step::Create
        } else {
            Step::TakeOver
        };
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return Step::Renew;
    }
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    let expired = spec
        .renew_time
        .as_ref()
        .is_none_or(|t| t.0 + SignedDuration::from_secs(secs) < now);
    if holder.is_empty() || expired {
        Step::TakeOver
    } else {
        Step::Wait { holder }
    }
}

impl Elector {
    pub fn new(api: Api<Lease>, name: &str, identity: String, timing: Timing) -> Self {
        Self {
            api,
            name: name.into(),
            identity,
            timing,
            holder: Arc::default(),
        }
    }

    /// Who held the Lease at the last read or write (`None`: free, or not read yet).
    pub fn holder(&self) -> Option<String> {
        self.holder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn saw(&self, holder: Option<String>) {
        *self.holder.lock().unwrap_or_else(|e| e.into_inner()) = holder;
    }

    fn spec(&self, now: Timestamp, old: Option<&LeaseSpec>, transition: bool) -> LeaseSpec {
        let transitions = old.and_then(|s| s.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.timing.lease.as_secs()).unwrap_or(15)),
            acquire_time: if transition {
                Some(MicroTime(now))
            } else {
                old.and_then(|s| s.acquire_time.clone())
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions + i32::from(transition)),
            ..LeaseSpec::default()
        }
    }

    /// One round: read, decide, write. `Ok(true)` when we hold the Lease afterwards.
    pub async fn try_once(&self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let now = Timestamp::now();
        let step = decide(current.as_ref(), &self.identity, now);
        let result = match (&step, current) {
            (Step::Wait { holder }, _) => {
                tracing::debug!(holder, lease = %self.name, "lease held by another process");
                self.saw(Some(holder.clone()));
                return Ok(false);
            }
            (Step::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(now, None, true)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (Step::Renew | Step::TakeOver, Some(mut lease)) => {
                let transition = step == Step::TakeOver;
                lease.spec = Some(self.spec(now, lease.spec.as_ref(), transition));
                // Carries the resourceVersion we read: a concurrent writer makes this a 409.
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => {
                self.saw(Some(self.identity.clone()));
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this process holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_once().await {
                Ok(true) => {
                    info!(identity = %self.identity, "leader election: acquired the lease");
                    return;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election: cannot read or write the lease"),
            }
            tokio::time::sleep(self.timing.retry).await;
        }
    }

    /// Renews until the Lease is lost (someone else holds it, or renewing failed for
    /// `renew_deadline`); then returns so the caller stops reconciling.
    pub async fn hold(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry).await;
            // A renewal stuck on a dead API server must not outlive the deadline either.
            let left = self.timing.renew_deadline.saturating_sub(last_ok.elapsed());
            match tokio::time::timeout(left, self.try_once()).await {
                Ok(Ok(true)) => last_ok = tokio::time::Instant::now(),
                Ok(Ok(false)) => {
                    warn!("leader election: the lease was taken over");
                    return;
                }
                Err(_) => {
                    warn!("leader election: could not renew within the renew deadline");
                    return;
                }
                Ok(Err(e)) if last_ok.elapsed() >= self.timing.renew_deadline => {
                    warn!(error = %e, "leader election: could not renew within the renew deadline");
                    return;
                }
                Ok(Err(e)) => warn!(error = %e, "leader election: renew failed; retrying"),
            }
        }
    }

    /// Gives the Lease up on a clean shutdown so a successor need not wait for it to expire.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let ours = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.identity.as_str());
        if !ours {
            return;
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.renew_time = None;
        }
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.saw(None);
                info!("leader election: lease released")
            }
            Err(e) => warn!(error = %e, "leader election: could not release the lease"),
        }
    }
}
