//! A real Kubernetes API server for one test: etcd and kube-apiserver (1.20, built from
//! Debian's sources by `tests/k8s/apiserver.sh build`) on free loopback ports, with their
//! certificates, tokens, data and logs in one temp dir, and a kubeconfig for clients.
//!
//! ```text
//!   test ──kubectl/operator (kubeconfig, admin token)──▶ kube-apiserver :<free> ──▶ etcd :<free>
//!                                                        (TLS, RBAC)              (temp data dir)
//! ```
//!
//! It is the API server and nothing else: no kubelet, scheduler or controller-manager, so
//! Deployments never get Pods, ServiceAccounts get no token controller and nothing is garbage
//! collected. [`kubectl::Kubectl`] creates what those controllers would (a namespace's
//! `default` ServiceAccount, Pods with `automountServiceAccountToken: false`, status via the
//! status subresource) and [`kubelet::SecretDir`] writes Secrets to disk the way the kubelet
//! mounts them.
//!
//! Without the binaries, [`TestApiServer::start`] returns `None` after saying how to build
//! them, so developers without apt can run the other tests; with `CI` set it is an error.

pub mod bins;
pub mod kubectl;
pub mod kubelet;
pub mod operator;
pub mod process;
pub mod proxy_loop;
pub mod sidecar;

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

use crate::tls::Pki;
use crate::try_free_port;
pub use kubectl::Kubectl;

/// etcd is up in well under a second when idle; a loaded 2-core box needs more.
const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The API server is ready in ~6 s on an idle machine (it installs its bootstrap RBAC
/// roles and priority levels before `/readyz` says ok).
const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a stopped process may take to exit after SIGKILL.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many port sets `start` tries when the free-port race is lost.
const PORT_ATTEMPTS: usize = 3;

/// The one user of the test cluster, in `system:masters` (RBAC's break-glass group).
pub const ADMIN_USER: &str = "test-admin";

/// Lines of a log quoted in errors.
const LOG_TAIL_LINES: usize = 40;

/// etcd and kube-apiserver for one test, stopped (apiserver first) when dropped.
#[derive(Debug)]
pub struct TestApiServer {
    dir: TempDir,
    apiserver: Option<Child>,
    etcd: Option<Child>,
    port: u16,
    token: String,
    kubeconfig: PathBuf,
    kubectl: Kubectl,
}

impl TestApiServer {
    /// Starts etcd and the API server and waits until `/readyz` is ok.
    ///
    /// `Ok(None)`: the binaries are not built and `CI` is not set; the reason is printed
    /// (call it as `let Some(api) = TestApiServer::start().await? else { return Ok(()) };`).
    pub async fn start() -> Result<Option<Self>> {
        let Some(found) = bins::cluster_binaries()? else {
            return Ok(None);
        };
        tokio::task::spawn_blocking(move || Self::start_blocking(found))
            .await
            .context("the API server start task panicked")?
            .map(Some)
    }

    fn start_blocking(found: bins::ClusterBinaries) -> Result<Self> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("mqtt-proxy-apiserver-")
            .tempdir()
            .context("creating the API server temp dir")?;
        let keys = KeyFiles::create(dir.path())?;
        let token = format!("admin-{}-{}", std::process::id(), random_suffix());
        let tokens = dir.path().join("tokens.csv");
        fs::write(
            &tokens,
            format!("{token},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n"),
        )
        .context("writing the token file")?;

        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let ports = (
                try_free_port()?,
                try_free_port()?,
                try_free_port().context("picking a free port")?,
            );
            let (etcd_port, peer_port, port) = ports;
            let mut etcd = spawn_etcd(&found.etcd, dir.path(), etcd_port, peer_port)?;
            if let Err(e) = wait_etcd(&mut etcd, dir.path(), etcd_port) {
                stop(&mut etcd);
                last_error = Some(e);
                continue;
            }
            let args = ApiServerArgs {
                dir: dir.path(),
                etcd_port,
                port,
                keys: &keys,
                tokens: &tokens,
            };
            let mut apiserver = spawn_apiserver(&found.apiserver, &args)?;
            let kubeconfig = write_kubeconfig(dir.path(), port, &keys.ca, &token)?;
            let kubectl = Kubectl::new(found.kubectl.clone(), kubeconfig.clone());
            match wait_apiserver(&mut apiserver, &kubectl, dir.path()) {
                Ok(()) => {
                    eprintln!(
                        "k8s harness: kube-apiserver ready on 127.0.0.1:{port} in {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(Self {
                        dir,
                        apiserver: Some(apiserver),
                        etcd: Some(etcd),
                        port,
                        token,
                        kubeconfig,
                        kubectl,
                    });
                }
                Err(e) => {
                    stop(&mut apiserver);
                    stop(&mut etcd);
                    let _ = fs::remove_dir_all(dir.path().join("etcd"));
                    let retry = format!("{e:#}").contains("address already in use");
                    if !retry {
                        return Err(e);
                    }
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("the API server did not start")))
            .context(format!("no free ports after {PORT_ATTEMPTS} attempts"))
    }

    /// A kubeconfig for the admin user (what `KUBECONFIG` of a client points at).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The admin bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// kubectl bound to this server.
    pub fn kubectl(&self) -> &Kubectl {
        &self.kubectl
    }

    /// The temp dir holding certificates, etcd data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The tail of the API server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join(APISERVER_LOG))
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        // The API server first: with etcd gone it retries its storage for a long time.
        if let Some(mut apiserver) = self.apiserver.take() {
            stop(&mut apiserver);
        }
        if let Some(mut etcd) = self.etcd.take() {
            stop(&mut etcd);
        }
    }
}

const ETCD_LOG: &str = "etcd.log";
const APISERVER_LOG: &str = "kube-apiserver.log";

fn spawn_etcd(bin: &Path, dir: &Path, port: u16, peer_port: u16) -> Result<Child> {
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let log = fs::File::create(dir.join(ETCD_LOG)).context("creating the etcd log")?;
    Command::new(bin)
        .arg("--name=test")
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=test={peer}"))
        // A test cluster is thrown away: no need to pay for periodic snapshots.
        .arg("--snapshot-count=100000")
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("cloning the etcd log handle")?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))
}

/// etcd answers `GET /health` with `{"health":"true"}` once it has a leader.
fn wait_etcd(etcd: &mut Child, dir: &Path, port: u16) -> Result<()> {
    let deadline = Instant::now() + ETCD_READY_TIMEOUT;
    loop {
        if let Some(status) = etcd.try_wait().context("polling etcd")? {
            bail!(
                "etcd exited during startup ({status})\n{}",
                tail(&dir.join(ETCD_LOG))
            );
        }
        if http_get_plain(port, "/health").is_some_and(|body| body.contains("\"true\"")) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "etcd on port {port} not healthy within {ETCD_READY_TIMEOUT:?}\n{}",
                tail(&dir.join(ETCD_LOG))
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A minimal HTTP/1.0 GET against 127.0.0.1:`port` (etcd's client port and the operator's
/// metrics port speak plain HTTP): `(status, body)`, `None` if nothing answered in 2 s.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let response = http_get_plain(port, path)?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

fn http_get_plain(port: u16, path: &str) -> Option<String> {
    let timeout = Duration::from_secs(2);
    let mut stream =
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

struct ApiServerArgs<'a> {
    dir: &'a Path,
    etcd_port: u16,
    port: u16,
    keys: &'a KeyFiles,
    tokens: &'a Path,
}

/// The cluster's key material, copied out of the throwaway [`Pki`] into the server's dir
/// (the API server watches its certificate files; they must outlive the start-up).
#[derive(Debug)]
struct KeyFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    sa_key: PathBuf,
    sa_pub: PathBuf,
}

impl KeyFiles {
    fn create(dir: &Path) -> Result<Self> {
        let pki = Pki::new("mqtt-proxy-test-cluster-ca")?;
        let serving = pki.server_cert("kube-apiserver", &["DNS:localhost", "IP:127.0.0.1"])?;
        // Any private key signs service-account tokens; a P-256 one from the same PKI does.
        let signer = pki.client_cert("service-account-signer")?;
        let keys = Self {
            ca: dir.join("ca.crt"),
            cert: dir.join("apiserver.crt"),
            key: dir.join("apiserver.key"),
            sa_key: dir.join("service-account.key"),
            sa_pub: dir.join("service-account.pub"),
        };
        for (from, to) in [
            (pki.ca_cert(), &keys.ca),
            (serving.cert.as_path(), &keys.cert),
            (serving.key.as_path(), &keys.key),
            (signer.key.as_path(), &keys.sa_key),
        ] {
            fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
        }
        // The verifying side wants a public key: 1.20 reads no PKCS#8 private key there.
        let mut pubout = Command::new("openssl");
        pubout
            .args(["pkey", "-pubout", "-in"])
            .arg(&keys.sa_key)
            .arg("-out")
            .arg(&keys.sa_pub);
        run_bounded(&mut pubout, "openssl pkey -pubout", Duration::from_secs(10))?;
        Ok(keys)
    }
}

fn spawn_apiserver(bin: &Path, a: &ApiServerArgs<'_>) -> Result<Child> {
    let log = fs::File::create(a.dir.join(APISERVER_LOG)).context("creating the apiserver log")?;
    let path = |p: &Path| p.display().to_string();
    Command::new(bin)
        .arg(format!("--etcd-servers=http://127.0.0.1:{}", a.etcd_port))
        .arg("--bind-address=127.0.0.1")
        .arg("--advertise-address=127.0.0.1")
        .arg(format!("--secure-port={}", a.port))
        // 1.20 still has the unauthenticated port; parallel tests must not fight over 8080.
        .arg("--insecure-port=0")
        .arg(format!("--cert-dir={}", a.dir.join("certs").display()))
        .arg(format!("--tls-cert-file={}", path(&a.keys.cert)))
        .arg(format!("--tls-private-key-file={}", path(&a.keys.key)))
        .arg(format!("--client-ca-file={}", path(&a.keys.ca)))
        .arg(format!("--token-auth-file={}", path(a.tokens)))
        .arg("--authorization-mode=RBAC")
        .arg(format!(
            "--service-account-key-file={}",
            path(&a.keys.sa_pub)
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            path(&a.keys.sa_key)
        ))
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg("--service-cluster-ip-range=10.96.0.0/16")
        .arg("--profiling=false")
        .arg("--logtostderr=true")
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .context("cloning the apiserver log handle")?,
        )
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))
}

fn wait_apiserver(apiserver: &mut Child, kubectl: &Kubectl, dir: &Path) -> Result<()> {
    let deadline = Instant::now() + APISERVER_READY_TIMEOUT;
    loop {
        if let Some(status) = apiserver.try_wait().context("polling kube-apiserver")? {
            bail!(
                "kube-apiserver exited during startup ({status})\n{}",
                tail(&dir.join(APISERVER_LOG))
            );
        }
        let last =
            match kubectl.run_blocking(&["get", "--raw=/readyz", "--request-timeout=5s"], None) {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => body,
                Err(e) => format!("{e:#}"),
            };
        if Instant::now() >= deadline {
            bail!(
                "kube-apiserver not ready within {APISERVER_READY_TIMEOUT:?} (last: {last})\n{}",
                tail(&dir.join(APISERVER_LOG))
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn write_kubeconfig(dir: &Path, port: u16, ca: &Path, token: &str) -> Result<PathBuf> {
    let path = dir.join("kubeconfig");
    let config = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n    \
         certificate-authority: {ca}\n\
         users:\n- name: {ADMIN_USER}\n  user:\n    token: {token}\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: {ADMIN_USER}\n    \
         namespace: default\n\
         current-context: test\n",
        ca = ca.display()
    );
    fs::write(&path, config).context("writing the kubeconfig")?;
    Ok(path)
}

/// Runs `cmd` to completion within `timeout`; fails with its stderr.
fn run_bounded(cmd: &mut Command, what: &str, timeout: Duration) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {what}"))?;
    let deadline = Instant::now() + timeout;
    while child.try_wait().context("polling")?.is_none() {
        if Instant::now() >= deadline {
            stop(&mut child);
            bail!("{what}: still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().context("collecting output")?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// SIGKILL and reap, bounded: nothing in a throwaway cluster needs a graceful stop.
fn stop(child: &mut Child) {
    let _ = child.kill();
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "k8s harness: process {} did not exit after SIGKILL",
        child.id()
    );
}

fn tail(path: &Path) -> String {
    let text = fs::read(path).map_or_else(
        |e| format!("({} unreadable: {e})", path.display()),
        |b| String::from_utf8_lossy(&b).into_owned(),
    );
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    format!("--- {} ---\n{tail}", path.display())
}

/// Enough entropy for a throwaway token without a rand dependency: time and a counter.
fn random_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}
