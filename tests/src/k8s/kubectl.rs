//! kubectl, bound to one test API server: run it, apply YAML (server-side), read objects as
//! JSON, wait for a state with a deadline, and create what a full cluster's controllers and
//! kubelet would (a namespace's `default` ServiceAccount, Pods, status) so the tests can
//! stand in for them. Every call is bounded.
//!
//! kubectl is a real client with its own view of the API; using it instead of a second Rust
//! client also checks that what the operator writes reads back as users will see it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// A single kubectl call; generous because the box is shared.
pub const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);

/// How often waits re-read the object.
const WAIT_POLL: Duration = Duration::from_millis(200);

/// The field manager of everything the tests apply.
pub const TEST_FIELD_MANAGER: &str = "mqtt-proxy-tests";

/// kubectl with `--kubeconfig` of one test API server.
#[derive(Debug, Clone)]
pub struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    pub fn new(bin: PathBuf, kubeconfig: PathBuf) -> Self {
        Self { bin, kubeconfig }
    }

    /// The kubectl binary.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Runs `kubectl <args>` (with `stdin` piped in if given), returns stdout; fails with
    /// stderr on a non-zero exit or after [`KUBECTL_TIMEOUT`].
    pub async fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let this = self.clone();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let stdin = stdin.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            this.run_blocking(&args, stdin.as_deref())
        })
        .await
        .context("the kubectl task panicked")?
    }

    /// [`Self::run`] for synchronous callers.
    pub fn run_blocking(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let what = format!("kubectl {}", args.join(" "));
        let mut child = Command::new(&self.bin)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .with_context(|| format!("{what}: writing stdin"))?;
        }
        // Read both pipes on threads so a chatty kubectl can't block on a full pipe.
        let stdout = child.stdout.take().map(spawn_reader);
        let stderr = child.stderr.take().map(spawn_reader);
        let deadline = Instant::now() + KUBECTL_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().context("polling kubectl")? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{what}: still running after {KUBECTL_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let join = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
            h.and_then(|h| h.join().ok())
                .map_or_else(String::new, |b| String::from_utf8_lossy(&b).into_owned())
        };
        let (out, err) = (join(stdout), join(stderr));
        if !status.success() {
            bail!("{what} failed ({status}): {}{}", err.trim(), out.trim());
        }
        Ok(out)
    }

    /// Server-side apply of `yaml` (one or more documents) as [`TEST_FIELD_MANAGER`].
    pub async fn apply(&self, yaml: &str) -> Result<String> {
        let manager = format!("--field-manager={TEST_FIELD_MANAGER}");
        self.run(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                &manager,
                "-f",
                "-",
            ],
            Some(yaml),
        )
        .await
    }

    /// Server-side apply of a file or a directory of manifests into namespace `ns` (for
    /// namespaced objects that name none).
    pub async fn apply_path(&self, path: &Path, ns: &str) -> Result<String> {
        let manager = format!("--field-manager={TEST_FIELD_MANAGER}");
        let file = path.display().to_string();
        self.run(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                &manager,
                "-n",
                ns,
                "-f",
                &file,
            ],
            None,
        )
        .await
    }

    /// `kubectl apply --server-side --dry-run=server -f -`: the API server validates and
    /// admits `yaml` (schemas, RBAC, immutable fields) without storing anything. For
    /// checking rendered manifests such as a Helm chart's.
    pub async fn dry_run_server(&self, yaml: &str) -> Result<String> {
        let manager = format!("--field-manager={TEST_FIELD_MANAGER}");
        self.run(
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                &manager,
                "-f",
                "-",
            ],
            Some(yaml),
        )
        .await
    }

    /// `kubectl auth can-i <verb> <resource> -n <ns> --as <user>`: whether RBAC lets `user`
    /// (e.g. `system:serviceaccount:<ns>:<name>` for a chart's ServiceAccount) do it.
    pub async fn can_i(&self, user: &str, verb: &str, resource: &str, ns: &str) -> Result<bool> {
        let as_user = format!("--as={user}");
        match self
            .run(&["auth", "can-i", verb, resource, "-n", ns, &as_user], None)
            .await
        {
            Ok(out) => Ok(out.trim() == "yes"),
            // can-i exits 1 with "no" on stdout for a refusal; anything else is an error.
            Err(e) if format!("{e:#}").trim_end().ends_with("no") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The object as JSON, `None` if it does not exist.
    pub async fn get_json(&self, resource: &str, name: &str, ns: &str) -> Result<Option<Value>> {
        let out = self
            .run(
                &[
                    "get",
                    resource,
                    name,
                    "-n",
                    ns,
                    "-o",
                    "json",
                    "--ignore-not-found",
                ],
                None,
            )
            .await?;
        if out.trim().is_empty() {
            return Ok(None);
        }
        let value = serde_json::from_str(&out)
            .with_context(|| format!("parsing kubectl get {resource} {name} output"))?;
        Ok(Some(value))
    }

    /// Polls the object until `check` returns `Some` (the object is `None` while absent) or
    /// `timeout` passes; the error quotes the last state seen.
    pub async fn wait_for<T>(
        &self,
        resource: &str,
        name: &str,
        ns: &str,
        timeout: Duration,
        mut check: impl FnMut(Option<&Value>) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let object = self.get_json(resource, name, ns).await?;
            if let Some(result) = check(object.as_ref()) {
                return Ok(result);
            }
            if Instant::now() >= deadline {
                let last = object.map_or_else(|| "absent".to_owned(), |o| short(&o));
                bail!(
                    "{resource}/{name} in {ns}: no expected state within {timeout:?}; last: {last}"
                );
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Waits until `status.conditions` has `type` with `status` and returns that condition.
    pub async fn wait_condition(
        &self,
        resource: &str,
        name: &str,
        ns: &str,
        (kind, status): (&str, &str),
        timeout: Duration,
    ) -> Result<Value> {
        self.wait_for(resource, name, ns, timeout, |o| {
            condition(o?, kind)
                .filter(|c| c["status"] == status)
                .cloned()
        })
        .await
    }

    /// A namespace with its `default` ServiceAccount, which the ServiceAccount admission
    /// plugin wants before any Pod is admitted and which only the controller-manager would
    /// otherwise create.
    pub async fn create_namespace(&self, ns: &str) -> Result<()> {
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\n\
             apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: default\n  namespace: {ns}\n"
        ))
        .await
        .with_context(|| format!("creating namespace {ns}"))?;
        Ok(())
    }

    /// A Pod object standing in for one a ReplicaSet would create (nothing runs it), with
    /// `automountServiceAccountToken: false` because no token controller exists here.
    pub async fn create_pod(&self, ns: &str, name: &str, labels: &[(&str, &str)]) -> Result<()> {
        let labels: String = labels
            .iter()
            .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
            .collect();
        self.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  \
             labels:\n{labels}spec:\n  automountServiceAccountToken: false\n  containers:\n  \
             - name: main\n    image: registry.invalid/none:0\n"
        ))
        .await
        .with_context(|| format!("creating pod {ns}/{name}"))?;
        Ok(())
    }

    /// `kubectl patch <resource> <name> -n <ns> --type=merge -p <patch>`.
    pub async fn merge_patch(
        &self,
        resource: &str,
        name: &str,
        ns: &str,
        patch: &str,
    ) -> Result<()> {
        self.run(
            &[
                "patch",
                resource,
                name,
                "-n",
                ns,
                "--type=merge",
                "-p",
                patch,
            ],
            None,
        )
        .await?;
        Ok(())
    }

    /// Merge-patches `status` through the status subresource, as the kubelet (Pods) or the
    /// controller-manager (Deployments) would.
    pub async fn patch_status(
        &self,
        resource: &str,
        name: &str,
        ns: &str,
        status: &Value,
    ) -> Result<()> {
        let patch = serde_json::json!({ "status": status }).to_string();
        self.run(
            &[
                "patch",
                resource,
                name,
                "-n",
                ns,
                "--subresource=status",
                "--type=merge",
                "-p",
                &patch,
            ],
            None,
        )
        .await?;
        Ok(())
    }
}

/// The condition `kind` of an object's `status.conditions`.
pub fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn spawn_reader(mut pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// An object for an error message: without managedFields, cut to a readable length.
fn short(object: &Value) -> String {
    let mut object = object.clone();
    if let Some(meta) = object["metadata"].as_object_mut() {
        meta.remove("managedFields");
    }
    let text = object.to_string();
    match text.char_indices().nth(2000) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}
