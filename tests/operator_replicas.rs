//! The operator's replica and device-user wiring end to end, against a real kube-apiserver:
//! a device users Secret that is missing, then created (the Secret watch brings the proxy
//! back to `ConfigApplied=True`) and mounted; per-pod client ids and the grace period in the
//! Deployment; and, for a broker set that mirrors, the proxy pods' ServiceAccount whose Role
//! is enough for the real `mqtt-proxy` binary, running as that ServiceAccount
//! (impersonated), to take its mirror Lease and nothing more; and the users Secret, mounted
//! the way the kubelet does, logging devices into the real proxy and hot-reloaded.
//!
//! Outside CI this skips (with a message) when `tests/k8s/apiserver.sh build` has not run.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use mqtt_proxy::broker::BrokerConfig;
use mqtt_proxy::store::render_brokers_file;
use mqtt_proxy_tests::k8s::kubelet::{secret_data, SecretDir};
use mqtt_proxy_tests::k8s::operator::{examples_cluster, operator, WAIT};
use mqtt_proxy_tests::k8s::proxy_loop::ProxyProcess;
use mqtt_proxy_tests::k8s::TestApiServer;
use mqtt_proxy_tests::{Mosquitto, Publisher};
use serde_json::Value;

const NS: &str = "rep";
const SA: &str = "system:serviceaccount:rep:factory-proxy";

fn env_of<'a>(deployment: &'a Value, name: &str) -> Option<&'a Value> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

/// The real proxy on `file`, competing for `factory-mirror` as `id` with `kubeconfig`.
async fn lease_proxy(file: &Path, id: &str, kubeconfig: &Path) -> Result<ProxyProcess> {
    let kc = kubeconfig.to_str().context("kubeconfig path")?;
    let args = [
        "--instance-id",
        id,
        "--mirror-lease",
        "factory-mirror",
        "--mirror-lease-namespace",
        NS,
    ];
    ProxyProcess::start_with(file, &args, &[("KUBECONFIG", kc)]).await
}

fn users_secret(users: &[(&str, &str)]) -> Result<String> {
    let mut map = serde_json::Map::new();
    for (name, password) in users {
        let hash = mqtt_proxy::auth::users::hash_password(password)?;
        map.insert((*name).into(), serde_json::json!({ "password": hash }));
    }
    let file = serde_json::json!({ "users": map }).to_string();
    Ok(format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: device-users\n  namespace: {NS}\n\
         stringData:\n  users.json: '{file}'\n"
    ))
}

/// Whether `user`/`password` gets a CONNACK from the proxy on `port`.
async fn logs_in(port: u16, user: &str, password: &str) -> bool {
    Publisher::builder(port)
        .credentials(user, password)
        .connect()
        .await
        .is_ok()
}

/// The users Secret as the kubelet mounts it drives the real proxy's `--users-file`; a
/// user added to the Secret can log in without a restart.
async fn users_reach_the_proxy(api: &TestApiServer, dir: &Path) -> Result<()> {
    let k = api.kubectl();
    let read = || async {
        let secret = k.get_json("secret", "device-users", NS).await?;
        secret_data(&secret.context("device-users exists")?)
    };
    let mount = dir.join("users-volume");
    std::fs::create_dir_all(&mount)?;
    let mut volume = SecretDir::create(&mount, &read().await?)?;
    let broker = Mosquitto::start().await?;
    let file = dir.join("users-brokers.yaml");
    let config = BrokerConfig::new("b", "127.0.0.1", broker.port());
    std::fs::write(&file, render_brokers_file(&[config])?)?;
    let users_file = volume.path().join("users.json");
    let users_arg = users_file.to_str().context("path")?;
    let proxy = ProxyProcess::start_with(&file, &["--users-file", users_arg], &[]).await?;
    ensure!(
        logs_in(proxy.port, "sensor-1", "sensor-pw").await,
        "sensor-1 refused\n{}",
        proxy.process.log_tail()
    );
    ensure!(
        !logs_in(proxy.port, "sensor-1", "wrong").await,
        "a wrong password got in"
    );
    ensure!(
        !logs_in(proxy.port, "sensor-2", "second-pw").await,
        "sensor-2 exists too early"
    );

    k.apply(&users_secret(&[
        ("sensor-1", "sensor-pw"),
        ("sensor-2", "second-pw"),
    ])?)
    .await?;
    volume.update(&read().await?)?;
    let deadline = std::time::Instant::now() + WAIT;
    while !logs_in(proxy.port, "sensor-2", "second-pw").await {
        ensure!(
            std::time::Instant::now() < deadline,
            "the proxy never reloaded the users Secret\n{}",
            proxy.process.log_tail()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_secret_and_mirror_lease_account_work_on_a_real_api_server() -> Result<()> {
    let Some(api) = examples_cluster(NS).await? else {
        return Ok(());
    };
    let k = api.kubectl();
    k.merge_patch("mqb", "edge", NS, r#"{"spec":{"mirror":true}}"#)
        .await?;
    k.merge_patch(
        "mqp",
        "factory",
        NS,
        r#"{"spec":{"deviceUsers":{"secretRef":{"name":"device-users"}}}}"#,
    )
    .await?;
    let op = operator(&api, &["--namespace", NS])?;
    let result = check(&api).await;
    if result.is_err() {
        eprintln!("{}", op.process.log_tail());
    }
    result
}

async fn check(api: &TestApiServer) -> Result<()> {
    let k = api.kubectl();
    let missing = k
        .wait_condition("mqp", "factory", NS, ("Ready", "False"), WAIT)
        .await?;
    ensure!(missing["reason"] == "SecretNotFound", "{missing}");
    ensure!(
        missing["message"]
            .as_str()
            .is_some_and(|m| m.contains("deviceUsers")),
        "{missing}"
    );
    k.apply(&users_secret(&[("sensor-1", "sensor-pw")])?)
        .await?;
    k.wait_condition("mqp", "factory", NS, ("ConfigApplied", "True"), WAIT)
        .await
        .context("the users Secret's creation reached the proxy")?;

    let d = k
        .wait_for("deployment", "factory", NS, WAIT, |d| {
            d.filter(|d| env_of(d, "MQTT_PROXY_USERS_FILE").is_some())
                .cloned()
        })
        .await?;
    let pod = &d["spec"]["template"]["spec"];
    ensure!(env_of(&d, "MQTT_PROXY_USERS_FILE")
        .is_some_and(|e| e["value"] == "/etc/mqtt-proxy-users/users.json"));
    ensure!(env_of(&d, "MQTT_PROXY_UPSTREAM_CLIENT_ID").is_some_and(|e| e["value"] == "instance"));
    ensure!(env_of(&d, "MQTT_PROXY_MIRROR_LEASE").is_some_and(|e| e["value"] == "factory-mirror"));
    ensure!(pod["terminationGracePeriodSeconds"] == 15, "{pod}");
    ensure!(pod["serviceAccountName"] == "factory-proxy", "{pod}");

    // The Role lets the pods take their own Lease and nothing else.
    k.wait_for("rolebinding", "factory-proxy", NS, WAIT, |r| r.map(|_| ()))
        .await?;
    ensure!(k.can_i(SA, "create", "leases", NS).await?);
    ensure!(k.can_i(SA, "update", "leases/factory-mirror", NS).await?);
    ensure!(
        !k.can_i(SA, "update", "leases/mqtt-proxy-operator", NS)
            .await?
    );
    ensure!(!k.can_i(SA, "get", "secrets", NS).await?);

    // The real proxy, as that ServiceAccount, takes the Lease the operator named.
    let kubeconfig = std::fs::read_to_string(api.kubeconfig())?;
    let token_line = kubeconfig
        .lines()
        .find(|l| l.trim_start().starts_with("token:"))
        .context("token in kubeconfig")?;
    let as_sa = kubeconfig.replace(token_line, &format!("{token_line}\n    as: {SA}"));
    let dir = tempfile::tempdir()?;
    let sa_kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&sa_kubeconfig, as_sa)?;
    let src = Mosquitto::start().await?;
    let mut source = BrokerConfig::new("src", "127.0.0.1", src.port());
    source.bidirectional = true;
    source.mirror = true;
    source.subscription_topics = vec!["m/#".into()];
    let file = dir.path().join("brokers.yaml");
    std::fs::write(&file, render_brokers_file(&[source])?)?;
    let proxy = lease_proxy(&file, "factory-pod-1", &sa_kubeconfig).await?;
    let held = k
        .wait_for("lease", "factory-mirror", NS, WAIT, |l| {
            (l?["spec"]["holderIdentity"] == "factory-pod-1").then_some(())
        })
        .await;
    ensure!(
        held.is_ok(),
        "the proxy did not take its Lease as {SA}: {held:?}\n{}",
        proxy.process.log_tail()
    );
    ensure!(
        !proxy.process.log().contains("forbidden"),
        "{}",
        proxy.process.log_tail()
    );

    // Control: the namespace's `default` ServiceAccount, impersonated the same way, is
    // refused; so the proxy above really ran with the operator's Role, not as admin.
    let as_default = kubeconfig.replace(
        token_line,
        &format!("{token_line}\n    as: system:serviceaccount:{NS}:default"),
    );
    let default_kubeconfig = dir.path().join("kubeconfig-default");
    std::fs::write(&default_kubeconfig, as_default)?;
    let mut refused = lease_proxy(&file, "intruder", &default_kubeconfig).await?;
    refused
        .process
        .wait_log("forbidden", WAIT)
        .await
        .context("the default ServiceAccount must be refused the Lease")?;
    users_reach_the_proxy(api, dir.path()).await
}
