//! The Helm chart against a real kube-apiserver (`mqtt_proxy_tests::k8s`, 1.20 built from
//! Debian's sources): every toggle of `tests/packaging/values/*.yaml`, rendered by the real
//! `helm template`, passes `kubectl apply --server-side --dry-run=server` (the server's own
//! schemas, defaulting and admission, with the generated CRDs installed), and the RBAC the
//! chart grants works as least privilege when the server impersonates the operator's
//! ServiceAccount: allowed exactly where the chart's roles say, refused elsewhere.
//!
//! Finally the real operator binary runs with the chart's args as the chart's ServiceAccount
//! (impersonated), in both RBAC modes, and reconciles the examples: the chart grants enough.
//!
//! ServiceMonitors are left out of the dry run: no registry ships prometheus-operator's CRD
//! (tests/packaging/vendor/README.md); `tests/checks.d/60-packaging.sh` validates them
//! against its schema instead. Outside CI these skip (with a message) without the binaries.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use mqtt_proxy_tests::k8s::bins::cache_bin_dir;
use mqtt_proxy_tests::k8s::TestApiServer;
use mqtt_proxy_tests::wait_until;

#[path = "chart_support.rs"]
mod support;
use support::{
    apply_as_operator, can_i, cluster, helm_in, reconcile_as_chart, render, repo, NAMESPACE,
    RBAC_PROPAGATION, RELEASE,
};

#[tokio::test]
async fn every_toggle_passes_a_server_side_dry_run() -> Result<()> {
    let Some(api) = cluster(true).await? else {
        return Ok(());
    };
    let mut values: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/packaging/values"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    values.sort();
    ensure!(
        values.len() >= 6,
        "expected the toggles' values files, found {values:?}"
    );
    for file in &values {
        let yaml = render(file, true)?;
        let out =
            api.kubectl().dry_run_server(&yaml).await.with_context(|| {
                format!("server-side dry run of the chart with {}", file.display())
            })?;
        // Every rendered object was admitted (kubectl prints one line per object).
        let objects = yaml.matches("\nkind: ").count() + usize::from(yaml.starts_with("kind: "));
        let admitted = out
            .lines()
            .filter(|l| l.contains("(server dry run)"))
            .count();
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
    let Some(api) = cluster(false).await? else {
        return Ok(());
    };
    let values = repo().join("tests/packaging/values");

    // All namespaces: a ClusterRole.
    api.kubectl()
        .apply(&render(&values.join("default.yaml"), false)?)
        .await?;
    for ns in ["team-a", "elsewhere"] {
        for (verb, resource) in [
            ("watch", "mqttproxies.mqttproxy.io"),
            ("patch", "mqttbrokers.mqttproxy.io/status"),
            ("patch", "deployments.apps"),
            // An MqttProxy switched to spec.mode Sidecar deletes the Deployment it owned.
            ("delete", "deployments.apps"),
            ("get", "secrets"),
        ] {
            ensure!(
                can_i(&api, verb, resource, ns)?,
                "cluster mode: {verb} {resource} in {ns} refused"
            );
        }
        ensure!(
            apply_as_operator(&api, ns, "cluster")?,
            "cluster mode: the operator cannot apply its children in {ns}"
        );
    }
    for (verb, resource) in [
        ("delete", "secrets"),
        ("update", "deployments.apps"),
        ("update", "mqttproxies.mqttproxy.io"),
        ("get", "pods"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("get", "configmaps"),
    ] {
        ensure!(
            !can_i(&api, verb, resource, "team-a")?,
            "cluster mode: {verb} {resource} allowed"
        );
    }

    // One namespace: a Role there and no cluster-wide grant (the earlier ClusterRole is
    // deleted first: apply does not prune what a new render no longer contains).
    api.kubectl()
        .run(
            &[
                "delete",
                "clusterrole,clusterrolebinding",
                "-l",
                "app.kubernetes.io/instance=mqtt-proxy-operator",
            ],
            None,
        )
        .await?;
    api.kubectl()
        .apply(&render(&values.join("watch-namespaces.yaml"), false)?)
        .await?;
    ensure!(
        wait_until(RBAC_PROPAGATION, || {
            can_i(&api, "list", "secrets", "team-a").unwrap_or(false)
                && !can_i(&api, "list", "secrets", "elsewhere").unwrap_or(true)
        })
        .await,
        "namespaced mode: the RoleBinding never took effect, or the ClusterRole outlived its deletion"
    );
    ensure!(
        can_i(&api, "watch", "mqttproxies.mqttproxy.io", "team-a")?,
        "namespaced mode: team-a refused"
    );
    ensure!(
        apply_as_operator(&api, "team-a", "ns")?,
        "namespaced mode: the operator cannot apply in team-a"
    );
    for ns in ["team-b", "elsewhere"] {
        for (verb, resource) in [
            ("patch", "deployments.apps"),
            ("get", "secrets"),
            ("list", "mqttbrokers.mqttproxy.io"),
        ] {
            ensure!(
                !can_i(&api, verb, resource, ns)?,
                "namespaced mode: {verb} {resource} allowed in unwatched namespace {ns}"
            );
        }
        ensure!(
            !apply_as_operator(&api, ns, "ns")?,
            "namespaced mode: the operator could write in {ns}"
        );
    }
    Ok(())
}

/// The README's Helm commands, as written, on the API server: `helm install … -n mqtt
/// --create-namespace` installs the CRDs and the operator's objects and prints NOTES that
/// show how to create a first MqttBroker and MqttProxy; `kubectl apply -f examples/` is then
/// admitted against those CRDs. (No kubelet here, so no operator pod runs.)
#[tokio::test]
async fn readme_helm_install_and_examples_work_as_written() -> Result<()> {
    let Some(api) = TestApiServer::start().await? else {
        return Ok(());
    };
    let helm = cache_bin_dir().join("helm");
    let kubeconfig = format!("--kubeconfig={}", api.kubeconfig().display());
    let out = Command::new(&helm)
        .current_dir(repo())
        .args([
            &kubeconfig,
            "install",
            RELEASE,
            "charts/mqtt-proxy-operator",
        ])
        .args(["-n", NAMESPACE, "--create-namespace"])
        .output()
        .context("running helm install")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "helm install: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "STATUS: deployed",
        "kind: MqttBroker",
        "kind: MqttProxy",
        "credentialsSecretRef",
    ] {
        ensure!(
            stdout.contains(needle),
            "helm install output lacks {needle:?}:\n{stdout}"
        );
    }
    let k = api.kubectl();
    k.run(
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
    for (kind, name) in [
        ("deployment", RELEASE),
        ("serviceaccount", RELEASE),
        ("service", "mqtt-proxy-operator-metrics"),
    ] {
        ensure!(
            k.get_json(kind, name, NAMESPACE).await?.is_some(),
            "helm install created no {kind} {name}"
        );
    }
    let applied = k
        .run(
            &[
                "apply",
                "-n",
                NAMESPACE,
                "-f",
                &repo().join("examples").display().to_string(),
            ],
            None,
        )
        .await?;
    for object in [
        "mqttbroker.mqttproxy.io/cloud",
        "mqttbroker.mqttproxy.io/edge",
        "mqttproxy.mqttproxy.io/factory",
    ] {
        ensure!(
            applied.contains(object),
            "kubectl apply -f examples/ did not create {object}: {applied}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_real_operator_reconciles_with_only_the_charts_rbac() -> Result<()> {
    let Some(api) = cluster(false).await? else {
        return Ok(());
    };
    let k = api.kubectl();
    // All namespaces (ClusterRole): the default install, which brings the CRDs.
    helm_in(
        &api,
        &[
            "install",
            RELEASE,
            "charts/mqtt-proxy-operator",
            "-n",
            NAMESPACE,
        ],
    )?;
    k.run(
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
    let examples = repo().join("examples");
    for ns in ["team-a", "team-b"] {
        k.apply_path(&examples, ns).await?;
        // Mirroring: the operator must also grant the proxy pods their Lease, which RBAC
        // allows only with rights the chart gave the operator itself.
        k.merge_patch("mqb", "edge", ns, r#"{"spec":{"mirror":true}}"#)
            .await?;
    }
    reconcile_as_chart(&api, "team-a").await?;

    // One namespace (Role in team-b only): helm upgrade removes the ClusterRole.
    helm_in(
        &api,
        &[
            "upgrade",
            RELEASE,
            "charts/mqtt-proxy-operator",
            "-n",
            NAMESPACE,
            "--set",
            "watchNamespaces={team-b}",
        ],
    )?;
    ensure!(
        wait_until(RBAC_PROPAGATION, || !can_i(
            &api, "list", "secrets", "team-a"
        )
        .unwrap_or(true))
        .await,
        "the ClusterRole outlived helm upgrade to watchNamespaces"
    );
    reconcile_as_chart(&api, "team-b").await
}
