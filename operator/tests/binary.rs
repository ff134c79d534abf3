//! The real `mqtt-proxy-operator` binary against an API server without our CRDs (a plain
//! HTTP server answering "404 page not found", as kube-apiserver does for an unknown API
//! group): it must exit non-zero and say what to install.

use std::process::Command;
use std::time::Duration;

#[tokio::test]
async fn exits_non_zero_naming_the_missing_crd() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new()
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "404 page not found\n") });
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"http://127.0.0.1:{port}\"}}\n\
             users:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\n\
             current-context: x\n"
        ),
    )
    .expect("kubeconfig");
    let bin = env!("CARGO_BIN_EXE_mqtt-proxy-operator");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            Command::new(bin)
                .env("KUBECONFIG", &kubeconfig)
                .env("RUST_BACKTRACE", "0")
                .args(["--http-listen", "127.0.0.1:0"])
                .output()
        }),
    )
    .await
    .expect("exits in time")
    .expect("joined")
    .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail: {stderr}");
    assert!(
        stderr.contains("the CRD mqttproxies.mqttproxy.io is not installed")
            && stderr.contains("kubectl apply -f crds/"),
        "{stderr}"
    );
}
