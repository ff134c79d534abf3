//! Upstream TLS against a real mosquitto TLS listener, with certificates made
//! at test time by a throwaway CA ([`Pki`]): the proxy verifies the broker
//! with `caCertPath` (not the system roots), checks the host name or IP
//! against the certificate, presents a client certificate for mutual TLS,
//! accepts anything with `insecureSkipVerify`, and refuses bad PEM files when
//! the broker set is built (start or reload), naming the file.
//!
//! Every proxy here has two upstreams on the same mosquitto: the TLS one under
//! test (topics as published) and a plain control one (`control/` prefix).
//! The control copy proves the device's publish went through the proxy and
//! that the broker delivers; a refused TLS upstream is then shown by its
//! `last_error`, `connected == false`, and a quiet window with nothing else.
//! The fixtures themselves are proven first with `mosquitto_pub`, an
//! independent TLS client (OpenSSL, not rustls).
//!
//! The tests at the end reproduce proxy bugs found here (now fixed); each
//! guards a behaviour that was once broken.

use std::path::Path;
use std::time::Duration;

use mqtt_proxy::broker::{BrokerConfig, MqttVersion};
use mqtt_proxy::brokerset::BrokerStatus;
use mqtt_proxy::config::Config;
use mqtt_proxy::ProxyHandle;
use mqtt_proxy_tests::proxy::DRAIN_TIMEOUT;
use mqtt_proxy_tests::tls::{
    CertFiles, Pki, TlsFixture, TlsRig, CONTROL_PREFIX, LOCALHOST_SANS, TOPIC,
};
use mqtt_proxy_tests::{mosquitto_pub, wait_until, Publisher, Subscriber};

/// Generous bound for things that normally take milliseconds.
const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing else arrives" must hold after the control copy.
const QUIET: Duration = Duration::from_millis(300);

async fn fixture(sans: &[&str], mtls: bool) -> TlsFixture {
    TlsFixture::start(sans, mtls)
        .await
        .expect("CA, certificates and a mosquitto with a TLS listener")
}

async fn start_rig(f: &TlsFixture, address: &str, tweak: impl FnOnce(&mut BrokerConfig)) -> TlsRig {
    f.rig(address, tweak).await.expect("subscriber and proxy")
}

fn tls_status(rig: &TlsRig) -> BrokerStatus {
    rig.tls_status().expect("TLS upstream status")
}

async fn connect_device(rig: &TlsRig) -> Publisher {
    rig.device().await.expect("device connects to the proxy")
}

async fn send(device: &Publisher, payload: &str) {
    TlsRig::send(device, payload, WAIT)
        .await
        .expect("publish acked by the proxy");
}

/// Both copies of `payload` from `device` arrive (TLS and control), the TLS
/// upstream is connected without error and did not reconnect meanwhile, and
/// nothing else arrives.
async fn assert_forwards(rig: &TlsRig, device: &Publisher, payload: &str) {
    let (before, reconnects) = (rig.sub.count(), tls_status(rig).reconnects);
    send(device, payload).await;
    let got = rig.sub.wait_for_count(before + 2, WAIT).await;
    let mut topics: Vec<_> = got[before..]
        .iter()
        .map(|m| {
            (
                m.topic.clone(),
                String::from_utf8_lossy(&m.payload).into_owned(),
            )
        })
        .collect();
    topics.sort();
    let control = format!("{CONTROL_PREFIX}{TOPIC}");
    assert_eq!(
        topics,
        [(control, payload.into()), (TOPIC.into(), payload.into())],
        "TLS copy and control copy; TLS upstream: {:?}",
        tls_status(rig)
    );
    let all = rig.sub.wait_quiet(QUIET, WAIT).await;
    assert_eq!(all.len(), before + 2, "nothing else arrives: {all:?}");
    let status = tls_status(rig);
    assert!(
        status.connected && status.last_error.is_none() && status.reconnects == reconnects,
        "connected, no error, no reconnect (flapping): {status:?}"
    );
}

/// A new device publishes; only the control copy arrives, and the TLS
/// upstream reports an error containing each of `needles` and is not
/// connected. Returns the error.
async fn assert_refused(rig: &TlsRig, needles: &[&str]) -> String {
    let before = rig.sub.count();
    let device = connect_device(rig).await;
    send(&device, "must-not-arrive-over-tls").await;
    let control = rig.sub.wait_for_count(before + 1, WAIT).await;
    assert_eq!(control.len(), before + 1, "control copy arrives");
    let failed = wait_until(WAIT, || {
        let s = tls_status(rig);
        s.last_error.is_some() && !s.connected
    })
    .await;
    let status = tls_status(rig);
    assert!(failed, "TLS upstream should fail: {status:?}");
    let error = status.last_error.clone().unwrap_or_default();
    for needle in needles {
        assert!(error.contains(needle), "{needle:?} not in {error:?}");
    }
    assert_eq!((status.sessions, status.sessions_connected), (1, 0));
    let all = rig.sub.wait_quiet(QUIET, WAIT).await;
    let topics: Vec<_> = all[before..].iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(topics, [format!("{CONTROL_PREFIX}{TOPIC}")], "{status:?}");
    assert_eq!(status.forwarded, 0, "{status:?}");
    error
}

/// Sets the CA file (or none).
fn with_ca(ca: Option<&Path>) -> impl FnOnce(&mut BrokerConfig) + '_ {
    move |b| b.ca_cert_path = ca.map(Path::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_tls_listener_speaks_tls_with_our_ca() {
    let f = fixture(LOCALHOST_SANS, false).await;
    let sub = Subscriber::connect(f.broker.plain_port(), "#", 1)
        .await
        .expect("subscriber");
    let ca = f.pki.ca_cert().to_str().expect("utf-8 path");
    let tls = f.broker.tls_port();
    mosquitto_pub(tls, "fixture/ip", "1", 1, &["--cafile", ca]).expect("TLS by IP SAN");
    mosquitto_pub(
        tls,
        "fixture/name",
        "2",
        1,
        &["--cafile", ca, "-h", "localhost"],
    )
    .expect("TLS by DNS SAN");
    assert!(
        mosquitto_pub(tls, "fixture/plain", "3", 1, &[]).is_err(),
        "plain MQTT to the TLS listener fails"
    );
    let got = sub.wait_quiet(QUIET, WAIT).await;
    let topics: Vec<_> = got.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(topics, ["fixture/ip", "fixture/name"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_mtls_listener_requires_a_client_certificate() {
    let f = fixture(LOCALHOST_SANS, true).await;
    let sub = Subscriber::connect(f.broker.plain_port(), "#", 1)
        .await
        .expect("subscriber");
    let client = f.pki.client_cert("fixture-client").expect("client cert");
    let ca = f.pki.ca_cert().to_str().expect("utf-8 path");
    let (cert, key) = (client.cert.to_str(), client.key.to_str());
    let (cert, key) = (cert.expect("utf-8"), key.expect("utf-8"));
    let tls = f.broker.tls_port();
    assert!(
        mosquitto_pub(tls, "fixture/anon", "1", 1, &["--cafile", ca]).is_err(),
        "no client certificate: refused"
    );
    mosquitto_pub(
        tls,
        "fixture/mtls",
        "2",
        1,
        &["--cafile", ca, "--cert", cert, "--key", key],
    )
    .expect("client certificate accepted");
    let got = sub.wait_quiet(QUIET, WAIT).await;
    let topics: Vec<_> = got.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(topics, ["fixture/mtls"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_cert_path_verifies_the_broker() {
    let f = fixture(LOCALHOST_SANS, false).await;
    let rig = start_rig(&f, "localhost", with_ca(Some(f.pki.ca_cert()))).await;
    assert_forwards(&rig, &connect_device(&rig).await, "via-our-ca").await;
    assert!(f.broker.tls_connections() >= 1, "came in on the TLS port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ca_cert_path_the_system_roots_reject_our_ca() {
    let f = fixture(LOCALHOST_SANS, false).await;
    let rig = start_rig(&f, "localhost", with_ca(None)).await;
    assert_refused(&rig, &["invalid peer certificate", "UnknownIssuer"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_ca_is_rejected() {
    let f = fixture(LOCALHOST_SANS, false).await;
    let other = Pki::new("some other CA").expect("other CA");
    let rig = start_rig(&f, "localhost", with_ca(Some(other.ca_cert()))).await;
    assert_refused(&rig, &["invalid peer certificate", "UnknownIssuer"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ca_of_a_bundle_is_trusted() {
    let f = fixture(LOCALHOST_SANS, false).await;
    let other = Pki::new("some other CA").expect("other CA");
    let bundle = other.dir().join("bundle.pem");
    let pem = |p: &Path| std::fs::read_to_string(p).expect("read CA");
    std::fs::write(&bundle, pem(other.ca_cert()) + &pem(f.pki.ca_cert())).expect("bundle");
    let rig = start_rig(&f, "localhost", with_ca(Some(&bundle))).await;
    assert_forwards(&rig, &connect_device(&rig).await, "our-ca-second-in-bundle").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_accepts_unknown_ca_and_wrong_name() {
    // Unknown issuer (no CA given) AND a name that is not `localhost`.
    let f = fixture(&["DNS:other.example"], false).await;
    let rig = start_rig(&f, "localhost", |b| {
        b.ca_cert_path = None;
        b.insecure_skip_verify = true;
    })
    .await;
    assert_forwards(&rig, &connect_device(&rig).await, "unverified").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_without_a_client_certificate_is_refused() {
    let f = fixture(LOCALHOST_SANS, true).await;
    let rig = start_rig(&f, "localhost", with_ca(Some(f.pki.ca_cert()))).await;
    // TLS 1.3: the client finishes its handshake before the broker checks
    // its (empty) certificate, so the refusal shows up as an alert later.
    assert_refused(&rig, &["reading CONNACK", "CertificateRequired"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_with_a_client_certificate_forwards() {
    let f = fixture(LOCALHOST_SANS, true).await;
    let CertFiles { cert, key } = f.pki.client_cert("proxy").expect("client cert");
    let rig = start_rig(&f, "localhost", |b| {
        b.ca_cert_path = Some(f.pki.ca_cert().to_owned());
        b.client_cert_path = Some(cert);
        b.client_key_path = Some(key);
    })
    .await;
    assert_forwards(&rig, &connect_device(&rig).await, "mutual").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_name_must_match_the_certificate() {
    // Right CA, but the certificate is for another name.
    let f = fixture(&["DNS:other.example"], false).await;
    let rig = start_rig(&f, "localhost", with_ca(Some(f.pki.ca_cert()))).await;
    assert_refused(&rig, &["not valid for name", "localhost", "other.example"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_address_is_checked_against_ip_sans() {
    let with_ip = fixture(LOCALHOST_SANS, false).await;
    let rig = start_rig(&with_ip, "127.0.0.1", with_ca(Some(with_ip.pki.ca_cert()))).await;
    assert_forwards(&rig, &connect_device(&rig).await, "ip-san").await;

    // `localhost` in the certificate does not vouch for 127.0.0.1.
    let dns_only = fixture(&["DNS:localhost"], false).await;
    let rig = start_rig(
        &dns_only,
        "127.0.0.1",
        with_ca(Some(dns_only.pki.ca_cert())),
    )
    .await;
    assert_refused(&rig, &["not valid for name", "127.0.0.1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_plain_listener_fails_the_handshake() {
    let f = fixture(LOCALHOST_SANS, false).await;
    let plain = f.broker.plain_port();
    let rig = start_rig(&f, "localhost", |b| {
        b.ca_cert_path = Some(f.pki.ca_cert().to_owned());
        b.port = plain;
    })
    .await;
    assert_refused(&rig, &["TLS handshake with localhost"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_upstream_over_tls_forwards() {
    let f = fixture(LOCALHOST_SANS, false).await;
    let rig = start_rig(&f, "localhost", |b| {
        b.ca_cert_path = Some(f.pki.ca_cert().to_owned());
        b.mqtt_version = MqttVersion::V5;
    })
    .await;
    assert_forwards(&rig, &connect_device(&rig).await, "v5-over-tls").await;
}

/// `ProxyHandle::start` with one TLS broker; the error text, or a panic if it
/// started.
async fn start_error(broker: BrokerConfig) -> String {
    let mut config = Config {
        mqtt_listen: ([127, 0, 0, 1], 0).into(),
        ..Config::default()
    };
    config.auth.allow_anonymous = true;
    match ProxyHandle::start(&config, &[broker]).await {
        Ok(handle) => {
            handle.shutdown().await;
            panic!("the proxy started despite a bad TLS file");
        }
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_fail_start_naming_the_file() {
    let pki = Pki::new("start-check CA").expect("CA");
    let client = pki.client_cert("c").expect("client cert");
    let garbage = pki.dir().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").expect("write");
    let missing = pki.dir().join("missing.pem");
    let tls_broker = |tweak: &dyn Fn(&mut BrokerConfig)| {
        let mut b = BrokerConfig::new("tls-start-check", "localhost", 8883);
        b.use_tls = true;
        tweak(&mut b);
        b
    };

    let cases: [(&str, BrokerConfig, &Path, &str); 5] = [
        (
            "missing CA",
            tls_broker(&|b| b.ca_cert_path = Some(missing.clone())),
            &missing,
            "cannot read",
        ),
        (
            "CA file without a certificate",
            tls_broker(&|b| b.ca_cert_path = Some(garbage.clone())),
            &garbage,
            "no PEM certificate",
        ),
        (
            "missing client key",
            tls_broker(&|b| {
                b.client_cert_path = Some(client.cert.clone());
                b.client_key_path = Some(missing.clone());
            }),
            &missing,
            "cannot read",
        ),
        (
            "client key file holding a certificate",
            tls_broker(&|b| {
                b.client_cert_path = Some(client.cert.clone());
                b.client_key_path = Some(client.cert.clone());
            }),
            &client.cert,
            "no PEM private key",
        ),
        (
            "client certificate file without a certificate",
            tls_broker(&|b| {
                b.client_cert_path = Some(garbage.clone());
                b.client_key_path = Some(client.key.clone());
            }),
            &garbage,
            "no PEM certificate",
        ),
    ];
    for (case, broker, file, problem) in cases {
        let error = start_error(broker).await;
        let file = file.display().to_string();
        for needle in [file.as_str(), problem, "tls-start-check"] {
            assert!(
                error.contains(needle),
                "{case}: {needle:?} not in {error:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ca_on_reload_is_refused_and_the_tls_upstream_keeps_running() {
    let f = fixture(LOCALHOST_SANS, false).await;
    let rig = start_rig(&f, "localhost", with_ca(Some(f.pki.ca_cert()))).await;
    let device = connect_device(&rig).await;
    assert_forwards(&rig, &device, "before").await;
    let (connections, connects) = (f.broker.tls_connections(), tls_status(&rig).connects);

    let missing = f.pki.dir().join("rotated-away.pem");
    let mut next = rig.proxy.brokers().to_vec();
    next[0].ca_cert_path = Some(missing.clone());
    let handle = rig.proxy.handle().expect("running");
    let error = handle
        .set_brokers(&next)
        .expect_err("reload with a missing CA is refused")
        .to_string();
    assert!(error.contains(&missing.display().to_string()), "{error:?}");

    assert_forwards(&rig, &device, "after").await;
    assert_eq!(
        (f.broker.tls_connections(), tls_status(&rig).connects),
        (connections, connects),
        "the refused reload left the TLS upstream's connection alone"
    );
}

/// Kubernetes mounts CA bundles and client certificates from Secrets that
/// cert-manager rotates in place, so the file at `caCertPath` changes while
/// the brokers file does not. The reloader fingerprints the brokers file and
/// its `passwordFile`s only, and an unchanged config keeps its compiled
/// `ClientConfig`: the new CA is never used, not even by new devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_picks_up_a_rotated_ca_file() {
    let f = fixture(LOCALHOST_SANS, false).await;
    let old = Pki::new("CA before rotation").expect("old CA");
    let mounted = old.dir().join("mounted-ca.pem");
    std::fs::copy(old.ca_cert(), &mounted).expect("mount the old CA");
    let rig = start_rig(&f, "localhost", with_ca(Some(&mounted))).await;
    let brokers_file = old.dir().join("brokers.json");
    let json = serde_json::json!({ "brokers": rig.proxy.brokers() });
    std::fs::write(&brokers_file, json.to_string()).expect("write brokers file");
    let handle = rig.proxy.handle().expect("running");
    let _reloader = mqtt_proxy::reload::spawn(brokers_file, handle);
    assert_refused(&rig, &["UnknownIssuer"]).await;
    let version = handle.brokers().version;

    // Rotate: write-and-rename, as the kubelet's symlink swap ends up.
    let staged = old.dir().join("staged-ca.pem");
    std::fs::copy(f.pki.ca_cert(), &staged).expect("stage the new CA");
    std::fs::rename(&staged, &mounted).expect("rotate");
    // The reloader polls twice a second.
    let reloaded = wait_until(WAIT, || handle.brokers().version > version).await;
    assert!(reloaded, "the rotated CA file did not cause a reload");
    let device = connect_device(&rig).await;
    send(&device, "after-rotation").await;
    let over_tls = wait_until(WAIT, || {
        rig.sub
            .received()
            .iter()
            .any(|m| m.topic == TOPIC && m.payload == "after-rotation")
    })
    .await;
    assert!(over_tls, "rotated CA not used: {:?}", tls_status(&rig));
}

/// `UpstreamHandle::close` aborts an upstream that has not drained by the
/// deadline; the task then never reaches the end of `run`, where the session
/// count is decremented (`connected` likewise when aborted while connected).
/// Any device that leaves while its broker refuses us (here: TLS with an
/// unknown CA; equally a broker that is down) leaks one session for good, and
/// the broker's `connected` stays false even after it recovers, since it
/// compares `sessions_connected` against that count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_device_leaves_no_upstream_session_behind() {
    let f = fixture(LOCALHOST_SANS, false).await;
    let rig = start_rig(&f, "localhost", with_ca(None)).await;
    // The device publishes one message the TLS upstream cannot deliver, then
    // goes away (dropped at the end of `assert_refused`).
    assert_refused(&rig, &["UnknownIssuer"]).await;
    let bound = DRAIN_TIMEOUT + WAIT;
    let control_gone = wait_until(bound, || {
        rig.proxy.status_of(1).is_ok_and(|s| s.sessions == 0)
    })
    .await;
    assert!(control_gone, "the device left: the control upstream closed");
    let gone = wait_until(bound, || tls_status(&rig).sessions == 0).await;
    assert!(
        gone,
        "still counted after {bound:?}: {:?}",
        tls_status(&rig)
    );
}

/// An upstream counts as connected from the end of the TCP (and TLS)
/// handshake, before its CONNECT is answered. A broker that has accepted the
/// socket but not the session is reported connected for up to the 10 s
/// CONNACK timeout of every attempt: a hung broker, and the mTLS refusal
/// above, where TLS 1.3 completes on our side before the broker checks our
/// (missing) certificate. Shown here with the most minimal such broker: a
/// socket that never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_is_not_connected_before_connack() {
    let silent = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let control = mqtt_proxy_tests::Mosquitto::start().await.expect("broker");
    let proxy = mqtt_proxy_tests::TestProxy::start(&[&control], |_, brokers| {
        brokers[0].port = silent_port;
    })
    .await
    .expect("proxy");
    let _device = Publisher::connect(proxy.port()).await.expect("device");
    let socket_open = wait_until(WAIT, || {
        accepted.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await;
    assert!(socket_open, "the upstream opened its socket");

    let claimed = wait_until(Duration::from_secs(1), || {
        proxy
            .status_of(0)
            .is_ok_and(|s| s.connected || s.sessions_connected > 0)
    })
    .await;
    let status = proxy.status_of(0).expect("status");
    assert!(!claimed, "no CONNACK was ever sent, yet: {status:?}");
}
