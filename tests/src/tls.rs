//! TLS fixtures made at test time: a throwaway certificate authority ([`Pki`])
//! that issues server and client certificates with the `openssl` CLI, a
//! mosquitto with a plain listener *and* a TLS listener ([`TlsBroker`]), and a
//! [`TlsRig`]: a proxy with a TLS upstream and a plain control upstream to
//! that one broker, observed on the plain listener.
//!
//! ```text
//!   device ─▶ proxy ──TLS (brokers[0])──▶ tls_port  ┐
//!                   └─plain (brokers[1])─▶ plain_port├─ mosquitto ─▶ Subscriber
//!                                                    (plain_port) ┘
//! ```
//!
//! The subscriber stays on the plain listener so that what the proxy does over
//! TLS is observed by a client that has nothing to do with TLS: a failing TLS
//! test cannot be blamed on the observer. The control upstream's copy (topic
//! prefixed [`CONTROL_PREFIX`]) proves the device's publish went through the
//! proxy, so "nothing arrived over TLS" is a real negative.
//!
//! Certificates are ECDSA P-256 with explicit v3 extensions (CA:TRUE +
//! keyCertSign on the CA; CA:FALSE, digitalSignature and serverAuth/clientAuth
//! on leaves), because rustls' webpki refuses what openssl's defaults
//! sometimes leave out or put in. Every `openssl` run is bounded.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mqtt_proxy::broker::BrokerConfig;
use mqtt_proxy::brokerset::BrokerStatus;
use tempfile::TempDir;

use crate::{try_free_port, Mosquitto, Publisher, Subscriber, TestProxy, POLL_INTERVAL};

/// `openssl` generates a P-256 key and signs in milliseconds; this is generous.
const OPENSSL_TIMEOUT: Duration = Duration::from_secs(10);

/// How many TLS ports [`TlsBroker::start`] tries when the free-port race is lost.
const PORT_ATTEMPTS: usize = 5;

/// Validity of every certificate. Short on purpose: these are throwaways.
const DAYS: &str = "2";

/// The subjectAltName entries of a server certificate valid for this host
/// under both names the tests use.
pub const LOCALHOST_SANS: &[&str] = &["DNS:localhost", "IP:127.0.0.1"];

/// A certificate and its private key (PKCS#8 PEM), both as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A test certificate authority in its own temp dir; issued certificates live
/// there too and disappear with it.
#[derive(Debug)]
pub struct Pki {
    dir: TempDir,
    ca: CertFiles,
}

impl Pki {
    /// A fresh self-signed CA named `name` (its subject CN).
    pub fn new(name: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mqtt-proxy-pki-")
            .tempdir()
            .context("creating PKI temp dir")?;
        let ca = CertFiles {
            cert: dir.path().join("ca.pem"),
            key: dir.path().join("ca.key"),
        };
        let config = dir.path().join("ca.cnf");
        fs::write(
            &config,
            format!(
                "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {name}\n\
                 [v3]\nbasicConstraints = critical,CA:TRUE\n\
                 keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n"
            ),
        )
        .context("writing CA openssl config")?;
        let mut req = Command::new("openssl");
        req.args(["req", "-x509", "-new"])
            .args(new_key_args())
            .arg("-keyout")
            .arg(&ca.key)
            .arg("-out")
            .arg(&ca.cert)
            .args(["-days", DAYS, "-extensions", "v3", "-config"])
            .arg(&config);
        run_openssl(&mut req, "creating the CA")?;
        Ok(Self { dir, ca })
    }

    /// The CA certificate (PEM): what `caCertPath` and mosquitto's `cafile` name.
    pub fn ca_cert(&self) -> &Path {
        &self.ca.cert
    }

    /// The PKI's directory, for fixtures such as garbage PEM files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A server certificate with subject CN `cn` and the given subjectAltName
    /// entries (`"DNS:host"`, `"IP:1.2.3.4"`), signed by this CA.
    pub fn server_cert(&self, cn: &str, sans: &[&str]) -> Result<CertFiles> {
        if sans.is_empty() {
            bail!("a server certificate needs at least one subjectAltName");
        }
        let extensions = format!(
            "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
             extendedKeyUsage = serverAuth\nsubjectAltName = {}\n\
             authorityKeyIdentifier = keyid\n",
            sans.join(",")
        );
        self.issue(&format!("server-{cn}"), cn, &extensions)
    }

    /// A client certificate (CN `cn`, clientAuth) signed by this CA.
    pub fn client_cert(&self, cn: &str) -> Result<CertFiles> {
        let extensions = "basicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,digitalSignature\nextendedKeyUsage = clientAuth\n\
             authorityKeyIdentifier = keyid\n";
        self.issue(&format!("client-{cn}"), cn, extensions)
    }

    /// New key + CSR, then `openssl x509 -req` signs it with `extensions`.
    fn issue(&self, stem: &str, cn: &str, extensions: &str) -> Result<CertFiles> {
        let file = |ext: &str| self.dir.path().join(format!("{stem}.{ext}"));
        let files = CertFiles {
            cert: file("pem"),
            key: file("key"),
        };
        let (csr, ext_file) = (file("csr"), file("ext"));
        fs::write(&ext_file, extensions).context("writing extensions file")?;

        let mut req = Command::new("openssl");
        req.args(["req", "-new"])
            .args(new_key_args())
            .arg("-keyout")
            .arg(&files.key)
            .arg("-out")
            .arg(&csr)
            .args(["-subj", &format!("/CN={cn}")]);
        run_openssl(&mut req, &format!("creating the key and CSR of {stem}"))?;

        let mut sign = Command::new("openssl");
        sign.args(["x509", "-req", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&self.ca.cert)
            .arg("-CAkey")
            .arg(&self.ca.key)
            .arg("-CAcreateserial")
            .arg("-CAserial")
            .arg(self.dir.path().join("ca.srl"))
            .args(["-days", DAYS, "-extfile"])
            .arg(&ext_file)
            .arg("-out")
            .arg(&files.cert);
        run_openssl(&mut sign, &format!("signing {stem}"))?;
        Ok(files)
    }
}

/// `openssl req` arguments for a new unencrypted P-256 key.
fn new_key_args() -> [&'static str; 5] {
    [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ]
}

/// Runs `openssl`, bounded by [`OPENSSL_TIMEOUT`]; fails with its stderr.
fn run_openssl(cmd: &mut Command, what: &str) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning openssl (is it installed?)")?;
    let deadline = Instant::now() + OPENSSL_TIMEOUT;
    while child.try_wait().context("polling openssl")?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what}: openssl still running after {OPENSSL_TIMEOUT:?}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    let output = child
        .wait_with_output()
        .context("collecting openssl output")?;
    if !output.status.success() {
        bail!(
            "{what}: openssl failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// How the TLS listener of a [`TlsBroker`] is set up.
#[derive(Debug, Clone)]
pub struct TlsListener {
    /// The broker's certificate and key.
    pub server: CertFiles,
    /// mosquitto's `cafile`: the CA that client certificates must chain to.
    pub cafile: PathBuf,
    /// `require_certificate true`: mutual TLS.
    pub require_client_cert: bool,
}

/// One mosquitto with an anonymous plain listener ([`Self::plain_port`], for
/// subscribers) and a TLS listener ([`Self::tls_port`], for the proxy).
/// Killed when dropped, like [`Mosquitto`].
#[derive(Debug)]
pub struct TlsBroker {
    broker: Mosquitto,
    tls_port: u16,
}

impl TlsBroker {
    /// Starts the broker and waits until it is ready. The harness retries the
    /// plain port on "Address already in use"; the TLS port is ours to retry.
    pub async fn start(listener: &TlsListener) -> Result<Self> {
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let tls_port = try_free_port().context("picking a free TLS port")?;
            let mut builder = Mosquitto::builder()
                .config_line(&format!("listener {tls_port} 127.0.0.1"))
                .config_line(&format!("cafile {}", listener.cafile.display()))
                .config_line(&format!("certfile {}", listener.server.cert.display()))
                .config_line(&format!("keyfile {}", listener.server.key.display()));
            if listener.require_client_cert {
                builder = builder.config_line("require_certificate true");
            }
            match builder.start().await {
                Ok(broker) => return Ok(Self { broker, tls_port }),
                Err(e) if format!("{e:#}").contains("Address already in use") => {
                    last_error = Some(e);
                }
                Err(e) => return Err(e.context("starting mosquitto with a TLS listener")),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("mosquitto did not start")))
            .context(format!("no free TLS port after {PORT_ATTEMPTS} attempts"))
    }

    /// The TLS listener the proxy connects to.
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// The plain anonymous listener, for subscribers and control publishes.
    pub fn plain_port(&self) -> u16 {
        self.broker.port()
    }

    /// The underlying broker (log, pause, kill...).
    pub fn broker(&self) -> &Mosquitto {
        &self.broker
    }

    /// Number of connections this broker accepted on its TLS listener, from
    /// mosquitto's "New connection from <addr> on port <port>." log lines.
    pub fn tls_connections(&self) -> usize {
        let needle = format!(" on port {}.", self.tls_port);
        self.broker
            .log()
            .lines()
            .filter(|line| line.contains("New connection from") && line.ends_with(&needle))
            .count()
    }
}

/// Topic the devices of a [`TlsRig`] publish to.
pub const TOPIC: &str = "tls/reading";
/// Prefix of the plain control upstream's copy in a [`TlsRig`].
pub const CONTROL_PREFIX: &str = "control/";

/// A CA and a mosquitto whose TLS listener has a certificate from it.
#[derive(Debug)]
pub struct TlsFixture {
    pub pki: Pki,
    pub broker: TlsBroker,
}

impl TlsFixture {
    /// Server certificate for `sans` (CN = the first name); with `mtls` the
    /// broker requires a client certificate from the same CA.
    pub async fn start(sans: &[&str], mtls: bool) -> Result<Self> {
        let pki = Pki::new("mqtt-proxy test CA")?;
        let first = sans.first().copied().unwrap_or("DNS:localhost");
        let cn = first.split_once(':').map_or(first, |(_, name)| name);
        let server = pki.server_cert(cn, sans)?;
        let broker = TlsBroker::start(&TlsListener {
            server,
            cafile: pki.ca_cert().to_owned(),
            require_client_cert: mtls,
        })
        .await?;
        Ok(Self { pki, broker })
    }

    /// A subscriber to `#` on the plain listener, then a proxy with two
    /// upstreams on this broker: `brokers[0]` is `address`:tls_port with
    /// `use_tls` (then `tweak`ed), `brokers[1]` the plain control upstream,
    /// whose copies carry [`CONTROL_PREFIX`].
    pub async fn rig(
        &self,
        address: &str,
        tweak: impl FnOnce(&mut BrokerConfig),
    ) -> Result<TlsRig> {
        let sub = Subscriber::connect(self.broker.plain_port(), "#", 1)
            .await
            .context("subscriber on the plain listener")?;
        let tls_port = self.broker.tls_port();
        let mosquitto = self.broker.broker();
        let proxy = TestProxy::start(&[mosquitto, mosquitto], |_, brokers| {
            let tls = &mut brokers[0];
            tls.address = address.to_owned();
            tls.port = tls_port;
            tls.use_tls = true;
            // Both upstreams reach the same mosquitto: with one client id
            // each would take the other's session over, again and again.
            tls.client_id_prefix = "tls-".to_owned();
            tweak(tls);
            brokers[1].topic_prefix = Some(CONTROL_PREFIX.to_owned());
            brokers[1].client_id_prefix = "control-".to_owned();
        })
        .await?;
        Ok(TlsRig { sub, proxy })
    }
}

/// A proxy in front of a [`TlsFixture`]'s broker and an observer on it.
pub struct TlsRig {
    pub sub: Subscriber,
    pub proxy: TestProxy,
}

impl TlsRig {
    /// Status of the TLS upstream (`brokers[0]`).
    pub fn tls_status(&self) -> Result<BrokerStatus> {
        self.proxy.status_of(0)
    }

    /// A device connected to the proxy. Keep it while checking: its upstream
    /// sessions live as long as it does.
    pub async fn device(&self) -> Result<Publisher> {
        Publisher::connect(self.proxy.port()).await
    }

    /// `device` publishes `payload` to [`TOPIC`] at QoS 1 and the proxy acks.
    pub async fn send(device: &Publisher, payload: &str, timeout: Duration) -> Result<()> {
        device.publish(TOPIC, payload.to_owned(), 1, false).await?;
        device.wait_acked(timeout).await
    }
}
