//! Keeps the webhook's PKI current on the API: the CA Secret, the configuration's
//! `caBundle`, and this replica's serving certificate.
//!
//! Every operator replica runs this loop (standbys serve admission too), so each write is
//! idempotent and compare-and-swap: the CA Secret is created with `create` (a 409 means
//! another replica won; read theirs) and rotated with a merge patch that carries the
//! `resourceVersion` it was read at (a 409 means someone else rotated first; read theirs).
//! All replicas then derive the same `caBundle` from the same Secret, and patching an equal
//! value is skipped. The leader is not special here: no lease is needed for convergence.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::certs::{plan_ca, Ca, Leaf, Policy};
use super::server::CertSlot;
use super::{Error, WebhookMetrics};
use crate::controller::apply::FIELD_MANAGER;

/// Where the PKI lives and who trusts it.
pub struct Rotator {
    pub secrets: Api<Secret>,
    pub ca_secret: String,
    /// `None`: nothing to patch (the caller configures the API server's trust itself).
    pub webhook_configs: Option<(Api<MutatingWebhookConfiguration>, String)>,
    /// DNS names / IPs of the serving certificate.
    pub hosts: Vec<String>,
    pub policy: Policy,
    pub slot: Arc<CertSlot>,
    pub metrics: WebhookMetrics,
}

/// How often the loop re-checks; rotation itself is driven by the certificates' lifetimes.
pub const CHECK_EVERY: Duration = Duration::from_secs(600);
/// After an error, or while the webhook configuration does not exist yet.
pub const RETRY: Duration = Duration::from_secs(5);

impl Rotator {
    /// One pass: the CA Secret as it should be, the serving certificate (re)issued when
    /// due, the caBundle patched. Returns the current leaf, and whether the caBundle is in
    /// place: a configuration not created yet (Helm may start the operator first) is not
    /// an error of the serving side, just retried soon.
    pub async fn once(&self, leaf: Option<Leaf>) -> Result<(Leaf, bool), Error> {
        let now = OffsetDateTime::now_utc();
        let ca = self.current_ca(now).await?;
        let leaf = match leaf {
            Some(l) if !l.needs_rotation(&ca, now, &self.policy) => l,
            _ => {
                let leaf = ca.issue(&self.hosts, now, &self.policy)?;
                self.slot.set(&leaf)?;
                self.metrics.rotated("serving");
                info!(not_after = %leaf.not_after, "webhook serving certificate issued");
                leaf
            }
        };
        let bundled = match &self.webhook_configs {
            Some((api, name)) => match patch_ca_bundle(api, name, &ca.bundle_pem).await {
                Ok(()) => true,
                Err(e @ Error::NoWebhookConfig(_)) => {
                    warn!(error = %e, "caBundle not patched yet");
                    false
                }
                Err(e) => return Err(e),
            },
            None => true,
        };
        Ok((leaf, bundled))
    }

    /// Reads the CA Secret and writes a new or rotated CA when due; on a lost race, the
    /// winner's.
    async fn current_ca(&self, now: OffsetDateTime) -> Result<Ca, Error> {
        for _ in 0..3 {
            let existing = self.secrets.get_opt(&self.ca_secret).await?;
            let data = existing.as_ref().and_then(|s| s.data.as_ref());
            let Some(new) = plan_ca(data, now, &self.policy)? else {
                return Ok(Ca::from_secret_data(data.ok_or(Error::CaVanished)?)?);
            };
            let written = match &existing {
                None => self.create(&new).await,
                Some(s) => self.replace(s, &new).await,
            };
            match written {
                Ok(()) => {
                    self.metrics.rotated("ca");
                    info!(secret = %self.ca_secret, not_after = %new.not_after, "webhook CA written");
                    return Ok(new);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::CaContended)
    }

    async fn create(&self, ca: &Ca) -> Result<(), kube::Error> {
        let s = Secret {
            metadata: ObjectMeta {
                name: Some(self.ca_secret.clone()),
                labels: Some(
                    [(
                        crate::controller::build::MANAGED_BY_LABEL.to_string(),
                        crate::controller::build::MANAGED_BY.to_string(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            data: Some(ca.to_secret_data()),
            type_: Some("Opaque".into()),
            ..Secret::default()
        };
        self.secrets.create(&PostParams::default(), &s).await?;
        Ok(())
    }

    /// Merge patch with the `resourceVersion` read: the server refuses it (409) if the
    /// Secret changed since.
    async fn replace(&self, old: &Secret, ca: &Ca) -> Result<(), kube::Error> {
        let patch = json!({
            "metadata": { "resourceVersion": old.metadata.resource_version },
            "data": ca.to_secret_data(),
        });
        self.secrets
            .patch(
                &self.ca_secret,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        Ok(())
    }

    /// Runs [`Rotator::once`] after `first`, then every [`CHECK_EVERY`] (sooner after an
    /// error), starting from the `leaf` already served.
    pub async fn run(self, leaf: Leaf, first: Duration) {
        let mut leaf = Some(leaf);
        tokio::time::sleep(first).await;
        loop {
            let wait = match self.once(leaf.clone()).await {
                Ok((l, bundled)) => {
                    leaf = Some(l);
                    if bundled {
                        CHECK_EVERY
                    } else {
                        RETRY
                    }
                }
                Err(e) => {
                    warn!(error = %e, "webhook certificate check failed; retrying");
                    RETRY
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Sets `caBundle` on every webhook of the configuration, unless it already has it. A
/// merge patch with the `resourceVersion` read, since `webhooks` is a list replaced whole.
async fn patch_ca_bundle(
    api: &Api<MutatingWebhookConfiguration>,
    name: &str,
    bundle_pem: &str,
) -> Result<(), Error> {
    let Some(cfg) = api.get_opt(name).await? else {
        return Err(Error::NoWebhookConfig(name.to_string()));
    };
    let bundle = ByteString(bundle_pem.as_bytes().to_vec());
    let mut webhooks = cfg.webhooks.clone().unwrap_or_default();
    if webhooks
        .iter()
        .all(|w| w.client_config.ca_bundle.as_ref() == Some(&bundle))
    {
        return Ok(());
    }
    for w in &mut webhooks {
        w.client_config.ca_bundle = Some(bundle.clone());
    }
    let patch = json!({
        "metadata": { "resourceVersion": cfg.metadata.resource_version },
        "webhooks": webhooks,
    });
    api.patch(
        name,
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        },
        &Patch::Merge(&patch),
    )
    .await?;
    info!(config = name, "webhook caBundle updated");
    Ok(())
}
