//! The webhook's own small PKI: a CA kept in a Secret, and a short-lived serving
//! certificate each operator replica issues from it in memory. Pure (the clock is an
//! argument), so rotation is tested without waiting for anything to expire.
//!
//! ```text
//!  Secret <ca-secret>: ca.crt, ca.key, not-after, bundle.crt ──▶ caBundle of the
//!        │                                      (current CA + the one before it)    MutatingWebhookConfiguration
//!        └─ issue() ─▶ serving cert (per replica, in memory) ──▶ rustls
//! ```
//!
//! A rotated CA keeps its predecessor in `bundle.crt` until that one expires, so a replica
//! still serving a certificate of the old CA is trusted while it catches up.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";
/// The PEM the webhook configuration's `caBundle` carries.
pub const BUNDLE_KEY: &str = "bundle.crt";
/// `ca.crt`'s expiry in Unix seconds: read back without an X.509 parser.
pub const NOT_AFTER_KEY: &str = "not-after";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("CA Secret: key {0:?} missing or not UTF-8")]
    MissingKey(&'static str),
    #[error("CA Secret: {NOT_AFTER_KEY:?} is not a Unix time")]
    BadNotAfter,
}

/// Lifetimes. A certificate is renewed once less than `*_renew_before` of it is left.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub ca_validity: Duration,
    pub ca_renew_before: Duration,
    pub leaf_validity: Duration,
    pub leaf_renew_before: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            ca_validity: Duration::from_secs(365 * DAY),
            ca_renew_before: Duration::from_secs(60 * DAY),
            leaf_validity: Duration::from_secs(30 * DAY),
            leaf_renew_before: Duration::from_secs(10 * DAY),
        }
    }
}

/// The CA as kept in its Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
    /// `cert_pem`, then the previous CA while it is still valid.
    pub bundle_pem: String,
    pub not_after: OffsetDateTime,
}

/// A serving certificate (PEM chain: leaf, then CA) and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub chain_pem: String,
    pub key_pem: String,
    pub not_after: OffsetDateTime,
    /// The CA that signed it (its `ca.crt`), to notice a CA rotation.
    pub ca_cert_pem: String,
}

fn due(not_after: OffsetDateTime, renew_before: Duration, now: OffsetDateTime) -> bool {
    not_after - now < renew_before
}

/// The CA's subject: unique per CA (its expiry), so the old and new CA in one bundle are
/// told apart by name, and rebuilt from the Secret without parsing the certificate.
fn ca_params(not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!(
            "mqtt-proxy-operator webhook CA {}",
            not_after.unix_timestamp()
        ),
    );
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = not_before;
    p.not_after = not_after;
    p
}

impl Ca {
    /// A new CA valid from `now`; `previous` stays in the bundle while it is valid.
    pub fn generate(
        now: OffsetDateTime,
        policy: &Policy,
        previous: Option<&Ca>,
    ) -> Result<Ca, CertError> {
        let key = KeyPair::generate()?;
        // Whole seconds: the expiry is stored as Unix seconds and must rebuild the same name.
        let not_after =
            OffsetDateTime::from_unix_timestamp((now + policy.ca_validity).unix_timestamp())
                .map_err(|_| CertError::BadNotAfter)?;
        let cert = ca_params(now - Duration::from_secs(300), not_after).self_signed(&key)?;
        let cert_pem = cert.pem();
        let mut bundle_pem = cert_pem.clone();
        if let Some(p) = previous.filter(|p| p.not_after > now) {
            bundle_pem.push_str(&p.cert_pem);
        }
        Ok(Ca {
            cert_pem,
            key_pem: key.serialize_pem(),
            bundle_pem,
            not_after,
        })
    }

    pub fn needs_rotation(&self, now: OffsetDateTime, policy: &Policy) -> bool {
        due(self.not_after, policy.ca_renew_before, now)
    }

    pub fn from_secret_data(data: &BTreeMap<String, ByteString>) -> Result<Ca, CertError> {
        let get = |k: &'static str| {
            data.get(k)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .ok_or(CertError::MissingKey(k))
        };
        let secs: i64 = get(NOT_AFTER_KEY)?
            .trim()
            .parse()
            .map_err(|_| CertError::BadNotAfter)?;
        Ok(Ca {
            cert_pem: get(CA_CERT_KEY)?,
            key_pem: get(CA_KEY_KEY)?,
            bundle_pem: get(BUNDLE_KEY)?,
            not_after: OffsetDateTime::from_unix_timestamp(secs)
                .map_err(|_| CertError::BadNotAfter)?,
        })
    }

    pub fn to_secret_data(&self) -> BTreeMap<String, ByteString> {
        let b = |s: &str| ByteString(s.as_bytes().to_vec());
        BTreeMap::from([
            (CA_CERT_KEY.to_string(), b(&self.cert_pem)),
            (CA_KEY_KEY.to_string(), b(&self.key_pem)),
            (BUNDLE_KEY.to_string(), b(&self.bundle_pem)),
            (
                NOT_AFTER_KEY.to_string(),
                b(&self.not_after.unix_timestamp().to_string()),
            ),
        ])
    }

    /// A serving certificate for `hosts` (DNS names or IP addresses), never outliving the CA.
    pub fn issue(
        &self,
        hosts: &[String],
        now: OffsetDateTime,
        policy: &Policy,
    ) -> Result<Leaf, CertError> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::new(ca_params(now, self.not_after), ca_key);
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(hosts.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            hosts.first().cloned().unwrap_or_default(),
        );
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        p.not_before = now - Duration::from_secs(300);
        p.not_after = (now + policy.leaf_validity).min(self.not_after);
        let cert = p.signed_by(&key, &issuer)?;
        Ok(Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
            not_after: p.not_after,
            ca_cert_pem: self.cert_pem.clone(),
        })
    }
}

impl Leaf {
    /// Due for renewal: close to expiry, or signed by a CA that is no longer current.
    pub fn needs_rotation(&self, ca: &Ca, now: OffsetDateTime, policy: &Policy) -> bool {
        self.ca_cert_pem != ca.cert_pem || due(self.not_after, policy.leaf_renew_before, now)
    }
}

/// What the CA Secret should hold: `None` when `existing` is fine as it is, else the CA to
/// write (new, or rotated with the old one kept in the bundle). An unreadable Secret is
/// replaced, since nothing can be served with it anyway.
pub fn plan_ca(
    existing: Option<&BTreeMap<String, ByteString>>,
    now: OffsetDateTime,
    policy: &Policy,
) -> Result<Option<Ca>, CertError> {
    let current = existing.and_then(|d| Ca::from_secret_data(d).ok());
    match current {
        Some(ca) if !ca.needs_rotation(now, policy) => Ok(None),
        Some(ca) => Ca::generate(now, policy, Some(&ca)).map(Some),
        None => Ca::generate(now, policy, None).map(Some),
    }
}
