//! The device-side TLS server: TLS 1.2 and 1.3 only (rustls has nothing older), the
//! certificate and key read from files and swapped in place when they change (cert-manager
//! rotates a mounted Secret; open connections keep the certificate they started with), and
//! optional client-certificate authentication against a CA bundle, whose CN (else first
//! DNS SAN) becomes the device's username.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{error, info};

use crate::reload::{hash_files, ChangePoller};
use crate::tls::{provider, read_certs, read_key, TlsError};

/// Files of the device-side TLS listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require client certificates signed by this CA bundle.
    pub client_ca: Option<PathBuf>,
}

/// The certificate in force; replaced whole when the files change.
#[derive(Debug)]
struct SwapCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for SwapCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match self.0.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
    }
}

fn load_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let signing = provider().key_provider.load_private_key(key)?;
    let ck = CertifiedKey::new(certs, signing);
    // A certificate that does not belong to the key would fail every handshake.
    ck.keys_match()?;
    Ok(Arc::new(ck))
}

/// A TLS acceptor whose certificate follows its files.
pub struct TlsServer {
    pub acceptor: TlsAcceptor,
    reload: JoinHandle<()>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.reload.abort();
    }
}

impl TlsServer {
    /// Reads the files (errors name them) and starts watching them every `poll`.
    pub fn start(files: &TlsFiles, poll: Duration) -> Result<TlsServer, TlsError> {
        let swap = Arc::new(SwapCert(RwLock::new(load_key(files)?)));
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match &files.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in read_certs(ca)? {
                    roots.add(c)?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(swap.clone());
        config.alpn_protocols = vec![b"mqtt".to_vec()];
        let reload = tokio::spawn(watch(files.clone(), swap, poll));
        Ok(TlsServer {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            reload,
        })
    }
}

async fn watch(files: TlsFiles, swap: Arc<SwapCert>, poll: Duration) {
    let fingerprint = || hash_files([files.cert.as_path(), files.key.as_path()]);
    let mut poller = ChangePoller::new(poll, fingerprint());
    loop {
        let now = poller.changed(fingerprint).await;
        // cert-manager writes the two files one after the other: a pair that does not
        // match yet is retried on the next change instead of being put in force.
        match load_key(&files) {
            Ok(k) => {
                match swap.0.write() {
                    Ok(mut w) => *w = k,
                    Err(poisoned) => *poisoned.into_inner() = k,
                }
                info!(cert = %files.cert.display(), "device TLS certificate reloaded");
            }
            Err(e) => {
                error!(error = %e, "device TLS certificate not reloaded; keeping the previous one")
            }
        }
        poller.set(Some(now));
    }
}

/// The identity of a verified client certificate: its subject CN, else its first DNS SAN.
pub fn identity(certs: Option<&[rustls::pki_types::CertificateDer<'_>]>) -> Option<String> {
    let der = certs?.first()?;
    let cert = webpki::EndEntityCert::try_from(der).ok()?;
    if let Some(cn) = common_name(cert.subject()) {
        return Some(cn);
    }
    cert.valid_dns_names().next().map(str::to_string)
}

/// The CN of a DER X.501 Name (the contents of its SEQUENCE, as webpki hands it over):
/// SET { SEQUENCE { OID 2.5.4.3, string } }, walked with bounds checks only.
fn common_name(mut name: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    while !name.is_empty() {
        let (tag, set, rest) = tlv(name)?;
        name = rest;
        if tag != 0x31 {
            return None;
        }
        let (tag, atv, _) = tlv(set)?;
        if tag != 0x30 {
            continue;
        }
        let (tag, oid, value) = tlv(atv)?;
        if tag == 0x06 && oid == CN {
            let (tag, s, _) = tlv(value)?;
            // UTF8String, PrintableString, IA5String.
            if matches!(tag, 0x0C | 0x13 | 0x16) {
                return std::str::from_utf8(s).ok().map(str::to_string);
            }
        }
    }
    None
}

/// One DER tag-length-value: (tag, value, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, head) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = head.checked_add(len)?;
    Some((tag, b.get(head..end)?, b.get(end..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_name_from_der_names() {
        // SET { SEQ { OID O, "acme" } }, SET { SEQ { OID CN, "sensor-1" } }
        let mut name = vec![
            0x31, 0x0d, 0x30, 0x0b, 0x06, 0x03, 0x55, 0x04, 0x0a, 0x0c, 0x04,
        ];
        name.extend_from_slice(b"acme");
        name.extend_from_slice(&[
            0x31, 0x11, 0x30, 0x0f, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x08,
        ]);
        name.extend_from_slice(b"sensor-1");
        assert_eq!(common_name(&name).as_deref(), Some("sensor-1"));
        assert_eq!(common_name(&name[..15]), None, "truncated: no CN, no panic");
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x31, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        for cut in 0..name.len() {
            let _ = common_name(&name[..cut]);
        }
    }
}
