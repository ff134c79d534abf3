//! The Helm chart against a real kube-apiserver (`mqtt_proxy_tests::k8s`, 1.20 built from
//! Debian's sources): every toggle of `tests/packaging/values/*.yaml`, rendered by the real
//! `helm template`, passes `kubectl apply --server-side --dry-run=server` (the server's own
//! schemas, defaulting and admission, with the generated CRDs installed), and the RBAC the
//! chart grants works as least privilege when the server impersonates the operator's
//! ServiceAccount: allowed exactly where the chart's roles say, refused elsewhere.
//!
//! ServiceMonitors are left out of the dry run: no registry ships prometheus-operator's CRD
//! (tests/packaging/vendor/README.md); `tests/checks.d/60-packaging.sh` validates them
//! against its schema instead. Outside CI these skip (with a message) without the binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use mqtt_proxy_tests::k8s::bins::cache_bin_dir;
use mqtt_proxy_tests::k8s::TestApiServer;

const RELEASE: &str = "mqtt-proxy-operator";
const NAMESPACE: &str = "mqtt";
const OPERATOR_SA: &str = "system:serviceaccount:mqtt:mqtt-proxy-operator";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `helm template` of the chart with one values file, ServiceMonitors dropped.
fn render(values: &Path, include_crds: bool) -> Result<String> {
    let helm = cache_bin_dir().join("helm");
    let mut cmd = Command::new(&helm);
    cmd.current_dir(repo())
        .args(["template", RELEASE, "charts/mqtt-proxy-operator", "-n", NAMESPACE, "-f"])
        .arg(values);
    if include_crds {
        cmd.arg("--include-crds");
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {} (tests/k8s/tools.sh installs it)", helm.display()))?;
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

/// `kubectl auth can-i VERB RESOURCE -n NS` as the operator's ServiceAccount.
fn can_i(api: &TestApiServer, verb: &str, resource: &str, ns: &str) -> Result<bool> {
    let out = Command::new(api.kubectl().bin())
        .arg(format!("--kubeconfig={}", api.kubeconfig().display()))
        .args(["auth", "can-i", verb, resource, "-n", ns, "--as", OPERATOR_SA])
        .output()
        .context("running kubectl auth can-i")?;
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => bail!(
            "kubectl auth can-i {verb} {resource}: {other:?} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

async fn cluster_with_crds() -> Result<Option<TestApiServer>> {
    let Some(api) = TestApiServer::start().await? else {
        return Ok(None);
    };
    for ns in [NAMESPACE, "team-a", "team-b", "elsewhere"] {
        api.kubectl().create_namespace(ns).await?;
    }
    api.kubectl().apply_path(&repo().join("crds"), "default").await?;
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

#[tokio::test]
async fn every_toggle_passes_a_server_side_dry_run() -> Result<()> {
    let Some(api) = cluster_with_crds().await? else {
        return Ok(());
    };
    let mut values: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/packaging/values"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    values.sort();
    ensure!(values.len() >= 6, "expected the toggles' values files, found {values:?}");
    for file in &values {
        let yaml = render(file, true)?;
        let out = api
            .kubectl()
            .dry_run_server(&yaml)
            .await
            .with_context(|| format!("server-side dry run of the chart with {}", file.display()))?;
        // Every rendered object was admitted (kubectl prints one line per object).
        let objects = yaml.matches("\nkind: ").count() + usize::from(yaml.starts_with("kind: "));
        let admitted = out.lines().filter(|l| l.contains("(server dry run)")).count();
        ensure!(
            admitted == objects,
            "{}: {admitted} of {objects} objects admitted:\n{out}",
            file.display()
        );
    }
    Ok(())
}

#[tokio::test]
async fn rbac_is_least_privilege_for_the_operator_service_account() -> Result<()> {
    let Some(api) = cluster_with_crds().await? else {
        return Ok(());
    };
    let values = repo().join("tests/packaging/values");

    // All namespaces: a ClusterRole.
    api.kubectl().apply(&render(&values.join("default.yaml"), false)?).await?;
    for ns in ["team-a", "elsewhere"] {
        for (verb, resource) in [
            ("watch", "mqttproxies.mqttproxy.io"),
            ("patch", "mqttbrokers.mqttproxy.io/status"),
            ("patch", "deployments.apps"),
            ("get", "secrets"),
        ] {
            ensure!(can_i(&api, verb, resource, ns)?, "cluster mode: {verb} {resource} in {ns} refused");
        }
    }
    for (verb, resource) in [
        ("delete", "secrets"),
        ("delete", "deployments.apps"),
        ("update", "mqttproxies.mqttproxy.io"),
        ("get", "pods"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("get", "configmaps"),
    ] {
        ensure!(!can_i(&api, verb, resource, "team-a")?, "cluster mode: {verb} {resource} allowed");
    }

    // Listed namespaces: Roles there, and the ClusterRole shrinks to the cluster-scoped reads.
    api.kubectl()
        .apply(&render(&values.join("watch-namespaces.yaml"), false)?)
        .await?;
    for ns in ["team-a", "team-b"] {
        ensure!(can_i(&api, "patch", "deployments.apps", ns)?, "namespaced mode: {ns} refused");
        ensure!(can_i(&api, "watch", "secrets", ns)?, "namespaced mode: secrets in {ns} refused");
    }
    for (verb, resource) in [("patch", "deployments.apps"), ("get", "secrets"), ("list", "mqttbrokers.mqttproxy.io")] {
        ensure!(
            !can_i(&api, verb, resource, "elsewhere")?,
            "namespaced mode: {verb} {resource} allowed in an unwatched namespace"
        );
    }
    ensure!(
        can_i(&api, "get", "customresourcedefinitions.apiextensions.k8s.io", "elsewhere")?,
        "namespaced mode: the CRD check lost its cluster-scoped read"
    );
    Ok(())
}
