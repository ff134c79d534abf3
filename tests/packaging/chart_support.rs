//! What the chart tests on the test API server share: rendering the chart with the real
//! `helm`, the namespaces and CRDs the values files need, asking the authorizer about the
//! operator's ServiceAccount (SubjectAccessReview) and acting as it (server-side apply,
//! the real operator binary with an impersonating kubeconfig and the chart's own args).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use mqtt_proxy_tests::k8s::bins::{cache_bin_dir, workspace_binary};
use mqtt_proxy_tests::k8s::process::Process;
use mqtt_proxy_tests::k8s::TestApiServer;

pub const RELEASE: &str = "mqtt-proxy-operator";
pub const NAMESPACE: &str = "mqtt";
const OPERATOR_SA: &str = "system:serviceaccount:mqtt:mqtt-proxy-operator";
/// The authorizer learns new (Cluster)Role bindings through its informers, a moment after
/// the apply returns.
pub const RBAC_PROPAGATION: Duration = Duration::from_secs(30);
/// How long the operator may take to reconcile the examples on a loaded 2-core box.
const OPERATOR_WAIT: Duration = Duration::from_secs(90);

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `helm template` of the chart with one values file, ServiceMonitors dropped.
pub fn render(values: &Path, include_crds: bool) -> Result<String> {
    let helm = cache_bin_dir().join("helm");
    let mut cmd = Command::new(&helm);
    cmd.current_dir(repo())
        .args([
            "template",
            RELEASE,
            "charts/mqtt-proxy-operator",
            "-n",
            NAMESPACE,
            "-f",
        ])
        .arg(values);
    if include_crds {
        cmd.arg("--include-crds");
    }
    let out = cmd.output().with_context(|| {
        format!(
            "running {} (tests/k8s/tools.sh installs it)",
            helm.display()
        )
    })?;
    ensure!(
        out.status.success(),
        "helm template -f {}: {}",
        values.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).context("helm output is not UTF-8")?;
    Ok(text
        .split("\n---")
        .filter(|doc| !doc.contains("\nkind: ServiceMonitor"))
        .collect::<Vec<_>>()
        .join("\n---"))
}

/// Whether the operator's ServiceAccount may `verb` the `resource` (`plural[.group][/sub]`)
/// in `ns`, asked with a SubjectAccessReview. Not `kubectl auth can-i`: without discovery
/// (no CRDs installed) it sends `mqttproxies.mqttproxy.io` as a resource name and says no.
pub fn can_i(api: &TestApiServer, verb: &str, resource: &str, ns: &str) -> Result<bool> {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let (plural, group) = resource.split_once('.').unwrap_or((resource, ""));
    let review = serde_json::json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": OPERATOR_SA,
            "groups": ["system:serviceaccounts", "system:serviceaccounts:mqtt", "system:authenticated"],
            "resourceAttributes": {
                "namespace": ns, "verb": verb, "group": group,
                "resource": plural, "subresource": subresource,
            },
        },
    });
    let out = api.kubectl().run_blocking(
        &["create", "-f", "-", "-o", "jsonpath={.status.allowed}"],
        Some(&review.to_string()),
    )?;
    match out.trim() {
        "true" => Ok(true),
        "false" | "" => Ok(false),
        other => bail!("SubjectAccessReview {verb} {resource}/{subresource} in {ns}: {other:?}"),
    }
}

/// The API server with the namespaces the values files use; with the generated CRDs when
/// `crds` (RBAC checks need none: authorization does not look at schemas).
pub async fn cluster(crds: bool) -> Result<Option<TestApiServer>> {
    let Some(api) = TestApiServer::start().await? else {
        return Ok(None);
    };
    for ns in [NAMESPACE, "team-a", "team-b", "elsewhere"] {
        api.kubectl().create_namespace(ns).await?;
    }
    if !crds {
        return Ok(Some(api));
    }
    api.kubectl()
        .apply_path(&repo().join("crds"), "default")
        .await?;
    api.kubectl()
        .run(
            &[
                "wait",
                "--for=condition=established",
                "--timeout=60s",
                "crd/mqttbrokers.mqttproxy.io",
                "crd/mqttproxies.mqttproxy.io",
            ],
            None,
        )
        .await?;
    Ok(Some(api))
}

/// Server-side apply of what the operator writes (a Secret, a Service, a Deployment) as the
/// operator's ServiceAccount, with its field manager: `Ok(true)` if admitted, `Ok(false)` if
/// RBAC forbade it. Creating through apply is what the operator does, so this checks the
/// verbs the API server really demands for it, not only what `can-i` says.
pub fn apply_as_operator(api: &TestApiServer, ns: &str, name: &str) -> Result<bool> {
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}-brokers, namespace: {ns}}}\n\
         stringData: {{brokers.yaml: \"brokers: []\"}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{selector: {{app: {name}}}, ports: [{{name: mqtt, port: 1883, protocol: TCP}}]}}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    \
         metadata: {{labels: {{app: {name}}}}}\n    \
         spec: {{containers: [{{name: proxy, image: mqtt-proxy}}]}}\n"
    );
    let mut child = Command::new(api.kubectl().bin())
        .arg(format!("--kubeconfig={}", api.kubeconfig().display()))
        .args([
            "apply",
            "--server-side",
            "--field-manager=mqtt-proxy-operator",
            "--as",
            OPERATOR_SA,
            "-f",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running kubectl apply --as")?;
    std::io::Write::write_all(&mut child.stdin.take().context("stdin")?, yaml.as_bytes())?;
    let out = child.wait_with_output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(true)
    } else if err.contains("forbidden") {
        Ok(false)
    } else {
        bail!("kubectl apply --as {OPERATOR_SA} in {ns}: {err}")
    }
}

/// A kubeconfig for the same server and admin token that asks the API server to act as the
/// operator's ServiceAccount (`as:`; kube-rs sends the impersonation headers), so every call
/// the real operator makes is authorized against the chart's roles only.
fn impersonating_kubeconfig(api: &TestApiServer) -> Result<PathBuf> {
    let text = std::fs::read_to_string(api.kubeconfig()).context("reading the kubeconfig")?;
    let token_line = format!("    token: {}\n", api.token());
    ensure!(
        text.contains(&token_line),
        "unexpected kubeconfig layout:\n{text}"
    );
    let path = api.dir().join("kubeconfig-operator-sa");
    std::fs::write(
        &path,
        text.replace(&token_line, &format!("{token_line}    as: {OPERATOR_SA}\n")),
    )
    .context("writing the impersonating kubeconfig")?;
    Ok(path)
}

/// The installed operator Deployment's container args (`--http-listen` replaced by a free
/// loopback port), so the test runs the binary exactly as the chart configures it.
async fn chart_args(api: &TestApiServer, http_port: u16) -> Result<Vec<String>> {
    let dep = api
        .kubectl()
        .get_json("deployment", RELEASE, NAMESPACE)
        .await?
        .context("the chart's Deployment")?;
    let args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .context("container args")?;
    Ok(args
        .iter()
        .filter_map(|a| a.as_str())
        .map(|a| {
            if a.starts_with("--http-listen=") {
                format!("--http-listen=127.0.0.1:{http_port}")
            } else {
                a.to_owned()
            }
        })
        .collect())
}

pub fn helm_in(api: &TestApiServer, args: &[&str]) -> Result<()> {
    let out = Command::new(cache_bin_dir().join("helm"))
        .current_dir(repo())
        .arg(format!("--kubeconfig={}", api.kubeconfig().display()))
        .args(args)
        .output()
        .context("running helm")?;
    ensure!(
        out.status.success(),
        "helm {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Runs the real operator as the chart's ServiceAccount, with the chart's args, until the
/// examples in `ns` are reconciled: broker status written, children server-side applied.
pub async fn reconcile_as_chart(api: &TestApiServer, ns: &str) -> Result<()> {
    let http_port = mqtt_proxy_tests::try_free_port().context("a free port")?;
    let mut cmd = Command::new(workspace_binary(
        "mqtt-proxy-operator",
        "mqtt-proxy-operator",
    )?);
    cmd.env("KUBECONFIG", impersonating_kubeconfig(api)?)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .args(chart_args(api, http_port).await?);
    let process = Process::spawn("operator-as-chart-sa", &mut cmd)?;
    let k = api.kubectl();
    let result = async {
        k.wait_condition("mqb", "cloud", ns, ("Ready", "True"), OPERATOR_WAIT)
            .await?;
        for (kind, name) in [
            ("secret", "factory-brokers"),
            ("secret", "factory-admin"),
            ("deployment", "factory"),
            ("service", "factory"),
            // The examples' `edge` mirrors in this test: the pods' Lease account.
            ("serviceaccount", "factory-proxy"),
            ("role", "factory-proxy"),
            ("rolebinding", "factory-proxy"),
        ] {
            k.wait_for(kind, name, ns, OPERATOR_WAIT, |o| o.cloned())
                .await
                .with_context(|| format!("{kind} {name} applied in {ns}"))?;
        }
        anyhow::Ok(())
    }
    .await;
    result.with_context(|| format!("operator log:\n{}", process.log_tail()))
}
