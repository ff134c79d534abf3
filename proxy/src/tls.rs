//! Upstream TLS with rustls: system roots or a CA bundle (`caCertPath`), optional client
//! certificate for mutual TLS, and `insecureSkipVerify` for lab setups (warned at connect).
//!
//! A broker's `ClientConfig` is built once per broker-set version, not per connection:
//! reading PEM files and the system store for each of thousands of device sessions would
//! be wasteful, and a bad path should fail the reload, not every connect.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::broker::BrokerConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key")]
    NoKey { path: String },
    #[error("no usable system root certificates")]
    NoRoots,
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let p = path.display().to_string();
    let f = File::open(path).map_err(|source| TlsError::Read {
        path: p.clone(),
        source,
    })?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: p.clone(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: p });
    }
    Ok(certs)
}

pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let p = path.display().to_string();
    let f = File::open(path).map_err(|source| TlsError::Read {
        path: p.clone(),
        source,
    })?;
    rustls_pemfile::private_key(&mut BufReader::new(f))
        .map_err(|source| TlsError::Read {
            path: p.clone(),
            source,
        })?
        .ok_or(TlsError::NoKey { path: p })
}

/// Builds the rustls client configuration for a TLS broker.
pub fn client_config(b: &BrokerConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if b.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
    } else {
        let mut roots = RootCertStore::empty();
        match &b.ca_cert_path {
            Some(path) => {
                for cert in read_certs(path)? {
                    roots.add(cert)?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                let (added, _ignored) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    return Err(TlsError::NoRoots);
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    let config = match (&b.client_cert_path, &b.client_key_path) {
        (Some(cert), Some(key)) => {
            builder.with_client_auth_cert(read_certs(cert)?, read_key(key)?)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The server name to verify: the broker address (host name or IP).
pub fn server_name(address: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(address.to_string()).map_err(|e| {
        TlsError::Rustls(rustls::Error::General(format!(
            "invalid server name {address:?}: {e}"
        )))
    })
}

/// `insecureSkipVerify`: accepts any certificate but still checks handshake signatures, so
/// the session is encrypted, just not authenticated.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ca_file_is_a_clear_error() {
        let mut b = BrokerConfig::new("b", "localhost", 8883);
        b.use_tls = true;
        b.ca_cert_path = Some("/nonexistent/ca.pem".into());
        let e = client_config(&b).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn empty_ca_file_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "not a pem").expect("write");
        let mut b = BrokerConfig::new("b", "localhost", 8883);
        b.ca_cert_path = Some(p);
        assert!(matches!(
            client_config(&b),
            Err(TlsError::NoCertificate { .. })
        ));
    }

    #[test]
    fn insecure_config_builds_without_roots() {
        let mut b = BrokerConfig::new("b", "10.0.0.1", 8883);
        b.insecure_skip_verify = true;
        assert!(client_config(&b).is_ok());
        assert!(server_name("10.0.0.1").is_ok());
        assert!(server_name("broker.example.com").is_ok());
    }
}
