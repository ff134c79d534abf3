//! Tests of [`super`]: the store's file format, migration, crash safety and error messages,
//! and the hot-reload file. Kept apart so `store.rs` stays readable.

use std::os::unix::fs::PermissionsExt as _;

use super::*;
use crate::crypto::tests::legacy_encrypt;

const SECRET: &str = "0123456789abcdef";

fn broker(id: &str, password: Option<&str>) -> BrokerConfig {
    let mut b = BrokerConfig::new(id, "broker.example", 1883);
    b.password = password.map(Secret::new);
    b
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

fn password(s: &BrokerStore, id: &str) -> Option<String> {
    s.get(id)?.password.as_ref().map(|p| p.expose().to_string())
}

#[test]
fn missing_file_is_an_empty_store_until_the_first_save() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut s = BrokerStore::open(&data, Some(SECRET)).expect("opens");
    assert!(s.brokers().is_empty());
    assert!(!data.exists(), "open must not create anything");
    s.upsert(broker("b1", None)).expect("saves");
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(s.path()), 0o600);
}

#[test]
fn passwords_are_stored_encrypted_and_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = BrokerStore::open(dir.path(), Some(SECRET)).expect("opens");
    s.upsert(broker("b1", Some("hunter2"))).expect("saves");
    s.upsert(broker("b2", Some("swordfish"))).expect("saves");
    let text = fs::read_to_string(s.path()).expect("reads");
    assert!(
        !text.contains("hunter2") && !text.contains("swordfish"),
        "{text}"
    );
    assert_eq!(text.matches("enc:v2:").count(), 2, "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(json["kdf"]["alg"], "hkdf-sha256");
    assert_eq!(mode(s.path()), 0o600);

    let again = BrokerStore::open(dir.path(), Some(SECRET)).expect("reopens");
    assert_eq!(password(&again, "b1").as_deref(), Some("hunter2"));
    assert_eq!(password(&again, "b2").as_deref(), Some("swordfish"));
    assert!(!format!("{again:?}").contains("hunter2"));
}

#[test]
fn upsert_replaces_in_place_and_remove_saves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = BrokerStore::open(dir.path(), None).expect("opens");
    s.upsert(broker("a", None)).expect("saves");
    s.upsert(broker("b", None)).expect("saves");
    let mut a = broker("a", None);
    a.port = 8883;
    s.upsert(a).expect("saves");
    let ids: Vec<_> = s.brokers().iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(s.get("a").map(|b| b.port), Some(8883));
    assert!(s.remove("a").expect("saves"));
    assert!(!s.remove("a").expect("no-op"));
    let again = BrokerStore::open(dir.path(), None).expect("reopens");
    assert_eq!(again.brokers().len(), 1);
}

#[test]
fn invalid_sets_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = BrokerStore::open(dir.path(), None).expect("opens");
    s.upsert(broker("a", None)).expect("saves");
    let before = fs::read(s.path()).expect("reads");
    let e = s
        .replace_all(vec![broker("x", None), broker("x", None)])
        .unwrap_err();
    assert!(e.to_string().contains("duplicate id"), "{e}");
    let e = s
        .upsert(BrokerConfig::new("y", "mqtt://h", 1883))
        .unwrap_err();
    assert!(e.to_string().contains("`address`"), "{e}");
    assert_eq!(s.brokers().len(), 1);
    assert_eq!(fs::read(s.path()).expect("reads"), before);
}

#[test]
fn legacy_and_plain_passwords_are_migrated_on_save() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(STORE_FILE);
    let legacy = legacy_encrypt(SECRET, "old-secret");
    let model = format!(
        r#"{{"brokers":[
        {{"id":"old","address":"h","password":"{legacy}","username":"u"}},
        {{"id":"plain","address":"h","password":"by-hand"}}]}}"#
    );
    fs::write(&path, model).expect("writes");
    let mut s = BrokerStore::open(dir.path(), Some(SECRET)).expect("opens");
    assert_eq!(password(&s, "old").as_deref(), Some("old-secret"));
    assert_eq!(password(&s, "plain").as_deref(), Some("by-hand"));

    s.upsert(broker("new", None)).expect("saves");
    let text = fs::read_to_string(&path).expect("reads");
    assert!(
        !text.contains("ENC:") && !text.contains("by-hand"),
        "{text}"
    );
    assert_eq!(text.matches("enc:v2:").count(), 2, "{text}");
    let again = BrokerStore::open(dir.path(), Some(SECRET)).expect("reopens");
    assert_eq!(password(&again, "old").as_deref(), Some("old-secret"));
    assert_eq!(password(&again, "plain").as_deref(), Some("by-hand"));
}

#[test]
fn wrong_secret_names_the_broker_and_leaves_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = BrokerStore::open(dir.path(), Some(SECRET)).expect("opens");
    s.upsert(broker("b1", Some("hunter2"))).expect("saves");
    let before = fs::read(s.path()).expect("reads");
    let e = BrokerStore::open(dir.path(), Some("not-the-secret")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("cannot decrypt the password of broker \"b1\""),
        "{msg}"
    );
    assert!(msg.contains("wrong MQTT_PROXY_SECRET"), "{msg}");
    assert!(msg.contains(&s.path().display().to_string()), "{msg}");
    assert!(!msg.contains("hunter2"));
    assert_eq!(fs::read(s.path()).expect("reads"), before);
}

#[test]
fn a_secret_is_required_for_passwords() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = BrokerStore::open(dir.path(), None).expect("opens");
    let e = s.upsert(broker("b1", Some("hunter2"))).unwrap_err();
    assert!(matches!(e, StoreError::SecretRequired { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("export MQTT_PROXY_SECRET=$(openssl rand -hex 32)"),
        "{msg}"
    );
    assert!(msg.contains("never written in plain text") && !msg.contains("hunter2"));
    assert!(!s.path().exists() && s.brokers().is_empty());
    // An empty secret is no secret.
    let mut s = BrokerStore::open(dir.path(), Some("")).expect("opens");
    assert!(s.upsert(broker("b1", Some("x"))).is_err());

    let mut s = BrokerStore::open(dir.path(), Some(SECRET)).expect("opens");
    s.upsert(broker("b1", Some("hunter2"))).expect("saves");
    let e = BrokerStore::open(dir.path(), None).unwrap_err();
    assert!(matches!(e, StoreError::SecretRequiredToRead { .. }), "{e}");
    assert!(e.to_string().contains("MQTT_PROXY_SECRET"), "{e}");
}

#[test]
fn corrupt_file_is_reported_and_never_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(STORE_FILE);
    for (bad, want) in [
        ("{\"brokers\": [", "line 1"),
        ("", "line 1"),
        (
            r#"{"brokers":[{"id":"a","address":"h","port":"x"}]}"#,
            "brokers[0].port",
        ),
        (r#"{"brokers":[{"id":"a","address":"h","prot":1}]}"#, "prot"),
        (
            r#"{"brokers":[{"id":"a","address":"h","password":7}]}"#,
            "not shown",
        ),
    ] {
        fs::write(&path, bad).expect("writes");
        let e = BrokerStore::open(dir.path(), Some(SECRET)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with(&path.display().to_string()), "{msg}");
        assert!(msg.contains(want), "{bad:?}: {msg}");
        assert_eq!(fs::read_to_string(&path).expect("reads"), bad);
    }
}

#[test]
fn leftover_temp_file_from_a_crash_is_harmless() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = BrokerStore::open(dir.path(), Some(SECRET)).expect("opens");
    s.upsert(broker("b1", Some("hunter2"))).expect("saves");
    let before = fs::read(s.path()).expect("reads");
    // What an interrupted save leaves: a half-written temp file beside the real one.
    let tmp = dir.path().join(format!(".{STORE_FILE}.tmp.1.deadbeef"));
    fs::write(&tmp, "{\"brokers\": [{\"id\"").expect("writes");

    let mut s = BrokerStore::open(dir.path(), Some(SECRET)).expect("opens");
    assert_eq!(password(&s, "b1").as_deref(), Some("hunter2"));
    assert_eq!(fs::read(s.path()).expect("reads"), before);
    s.upsert(broker("b2", None))
        .expect("saves past the leftover");
    assert_eq!(
        BrokerStore::open(dir.path(), Some(SECRET))
            .expect("opens")
            .brokers()
            .len(),
        2
    );
}

#[test]
fn hot_reload_file_json_yaml_and_password_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir(dir.path().join("secrets")).expect("mkdir");
    fs::write(dir.path().join("secrets/b2"), "from-file\n").expect("writes");
    let json = dir.path().join("brokers.json");
    fs::write(
        &json,
        r#"{"brokers":[{"id":"b1","address":"h","password":"plain"},
        {"id":"b2","address":"h","passwordFile":"secrets/b2"}]}"#,
    )
    .expect("writes");
    let yaml = dir.path().join("brokers.yaml");
    fs::write(
        &yaml,
        "brokers:\n  - id: b1\n    address: h\n    password: plain\n    topics: [\"a/#\"]\n  \
         - id: b2\n    address: h\n    passwordFile: secrets/b2\n",
    )
    .expect("writes");
    let passwords = |path: &Path| -> Vec<Option<String>> {
        let brokers = load_brokers_file(path).expect("loads");
        assert_eq!(
            brokers[1].password_file.as_deref(),
            Some(Path::new("secrets/b2"))
        );
        let pw = |b: &BrokerConfig| b.password.as_ref().map(|p| p.expose().to_string());
        brokers.iter().map(pw).collect()
    };
    let want = [Some("plain".to_string()), Some("from-file".to_string())];
    assert_eq!(passwords(&json), want);
    assert_eq!(passwords(&yaml), want);

    // An unquoted YAML number is still a string password, not a type error.
    fs::write(
        &yaml,
        "brokers:\n  - id: b1\n    address: h\n    password: 0123456\n",
    )
    .expect("writes");
    let brokers = load_brokers_file(&yaml).expect("loads");
    assert_eq!(
        brokers[0].password.as_ref().map(Secret::expose),
        Some("0123456")
    );
}

#[test]
fn rendered_brokers_file_loads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("brokers.yaml");
    let mut b = BrokerConfig::new("b1", "h", 1884);
    b.password = Some(Secret::new("0123"));
    b.topics = vec!["a/#".into()];
    let mut b2 = BrokerConfig::new("b2", "h2", 1883);
    // Strings YAML would otherwise read as booleans, numbers or comments.
    b2.username = Some("on".into());
    b2.password = Some(Secret::new("yes: #no"));
    let brokers = vec![b, b2];
    fs::write(&path, render_brokers_file(&brokers).expect("renders")).expect("writes");
    assert_eq!(load_brokers_file(&path).expect("loads"), brokers);
}

#[test]
fn hot_reload_file_resolves_relative_tls_paths_against_its_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("brokers.yaml");
    fs::write(
        &path,
        "brokers:\n  - id: a\n    address: h\n    useTls: true\n    caCertPath: a-ca.crt\n    \
         clientCertPath: certs/a.crt\n    clientKeyPath: /abs/a.key\n",
    )
    .expect("writes");
    let brokers = load_brokers_file(&path).expect("loads");
    assert_eq!(brokers[0].ca_cert_path, Some(dir.path().join("a-ca.crt")));
    assert_eq!(
        brokers[0].client_cert_path,
        Some(dir.path().join("certs/a.crt"))
    );
    assert_eq!(brokers[0].client_key_path, Some("/abs/a.key".into()));
}

#[test]
fn invalid_hot_reload_file_names_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("brokers.yaml");
    for (bad, want) in [
        (
            "brokers:\n  - id: a\n    address: h\n    maxQos: 5\n",
            "field `maxQos`",
        ),
        (
            "brokers:\n  - id: a\n    address: h\n    port: high\n",
            "`brokers[0].port`: invalid type",
        ),
        ("brokers:\n  - id: a\n    adress: h\n", "adress"),
        (
            r#"{"brokers":[{"id":"a","address":"h","useTLS":true}]}"#,
            "useTLS",
        ),
        ("{\"brokers\": [}", "invalid JSON at line 1"),
        (
            "brokers:\n  - id: a\n    address: h\n    passwordFile: nope\n",
            "nope",
        ),
    ] {
        fs::write(&path, bad).expect("writes");
        let msg = load_brokers_file(&path).unwrap_err().to_string();
        assert!(msg.starts_with(&path.display().to_string()), "{msg}");
        assert!(msg.contains(want), "{bad:?}: {msg}");
    }
}
