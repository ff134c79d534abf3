//! The webhook's PKI: a CA is created when its Secret is missing, kept while fresh, and
//! rotated when expiring with the old CA kept in the bundle until it expires; serving
//! certificates verify (rustls's own WebPKI verifier, at chosen times) against the bundle
//! the API server is given, for the webhook's names only.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use mqtt_proxy_operator::webhook::certs::{plan_ca, Ca, Leaf, Policy, BUNDLE_KEY};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::RootCertStore;
use time::OffsetDateTime;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn hosts() -> Vec<String> {
    mqtt_proxy_operator::webhook::service_hosts("mqtt-proxy-operator-webhook", "mqtt")
        .into_iter()
        .chain(["127.0.0.1".to_string()])
        .collect()
}

fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

/// Whether `leaf` verifies for `host` at `at` against the roots in `bundle_pem`.
fn verifies(bundle_pem: &str, leaf: &Leaf, host: &str, at: OffsetDateTime) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    for c in ders(bundle_pem) {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
        .build()
        .map_err(|e| e.to_string())?;
    let chain = ders(&leaf.chain_pem);
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let secs = u64::try_from(at.unix_timestamp()).map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &name,
            &[],
            UnixTime::since_unix_epoch(Duration::from_secs(secs)),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[test]
fn missing_secret_gets_a_new_ca_that_round_trips() {
    let p = Policy::default();
    let ca = plan_ca(None, now(), &p)
        .expect("generates")
        .expect("new CA");
    assert_eq!(ca.bundle_pem, ca.cert_pem, "nothing older to trust");
    let data = ca.to_secret_data();
    assert_eq!(Ca::from_secret_data(&data).expect("reads back"), ca);
    assert_eq!(
        plan_ca(Some(&data), now(), &p).expect("plans"),
        None,
        "fresh: kept"
    );
}

#[test]
fn unreadable_secret_is_replaced() {
    let data = BTreeMap::from([(BUNDLE_KEY.to_string(), ByteString(b"junk".to_vec()))]);
    let p = Policy::default();
    assert!(plan_ca(Some(&data), now(), &p).expect("plans").is_some());
}

#[test]
fn serving_cert_verifies_for_the_webhook_names_only() {
    let p = Policy::default();
    let ca = Ca::generate(now(), &p, None).expect("CA");
    let leaf = ca.issue(&hosts(), now(), &p).expect("leaf");
    for host in [
        "mqtt-proxy-operator-webhook.mqtt.svc",
        "mqtt-proxy-operator-webhook.mqtt.svc.cluster.local",
        "127.0.0.1",
    ] {
        verifies(&ca.bundle_pem, &leaf, host, now()).unwrap_or_else(|e| panic!("{host}: {e}"));
    }
    assert!(verifies(&ca.bundle_pem, &leaf, "evil.example", now()).is_err());
    let other = Ca::generate(now(), &p, None).expect("another CA");
    assert!(
        verifies(&other.bundle_pem, &leaf, "127.0.0.1", now()).is_err(),
        "only its own CA vouches for it"
    );
    assert!(leaf.not_after <= ca.not_after, "never outlives the CA");
}

#[test]
fn expiring_ca_is_rotated_and_the_bundle_keeps_the_old_one() {
    let p = Policy::default();
    let t0 = now();
    let old = Ca::generate(t0, &p, None).expect("CA");
    let old_leaf = old.issue(&hosts(), t0, &p).expect("leaf");
    // 310 days later the CA has 55 days left, inside the 60-day renewal window.
    let t1 = t0 + 310 * DAY;
    let new = plan_ca(Some(&old.to_secret_data()), t1, &p)
        .expect("plans")
        .expect("rotated");
    assert_ne!(new.cert_pem, old.cert_pem);
    assert!(new.not_after > old.not_after);
    assert_eq!(new.bundle_pem, format!("{}{}", new.cert_pem, old.cert_pem));

    // A replica still serving the old CA's certificate stays trusted through the new bundle.
    let host = "mqtt-proxy-operator-webhook.mqtt.svc";
    let before_expiry = old_leaf.not_after - DAY;
    verifies(&new.bundle_pem, &old_leaf, host, before_expiry).expect("old leaf, new bundle");
    // Its leaf is due: signed by a CA that is no longer current.
    assert!(old_leaf.needs_rotation(&new, t1, &p));
    let new_leaf = new.issue(&hosts(), t1, &p).expect("new leaf");
    verifies(&new.bundle_pem, &new_leaf, host, t1).expect("new leaf, new bundle");
    assert!(
        verifies(&old.bundle_pem, &new_leaf, host, t1).is_err(),
        "the bundle had to change: the old one does not trust the new CA"
    );
    assert!(!new_leaf.needs_rotation(&new, t1, &p));
}

#[test]
fn expired_predecessor_leaves_the_bundle() {
    let p = Policy::default();
    let t0 = now();
    let old = Ca::generate(t0, &p, None).expect("CA");
    let after_expiry = t0 + 400 * DAY;
    let new = plan_ca(Some(&old.to_secret_data()), after_expiry, &p)
        .expect("plans")
        .expect("rotated");
    assert_eq!(new.bundle_pem, new.cert_pem);
}

#[test]
fn serving_cert_is_renewed_before_it_expires() {
    let p = Policy::default();
    let t0 = now();
    let ca = Ca::generate(t0, &p, None).expect("CA");
    let leaf = ca.issue(&hosts(), t0, &p).expect("leaf");
    assert!(!leaf.needs_rotation(&ca, t0 + 19 * DAY, &p));
    assert!(
        leaf.needs_rotation(&ca, t0 + 21 * DAY, &p),
        "10 days before expiry"
    );
    assert!(
        verifies(&ca.bundle_pem, &leaf, "127.0.0.1", t0 + 31 * DAY).is_err(),
        "and it really expires"
    );
}
