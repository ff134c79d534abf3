//! The real `mqtt-proxy` binary's store commands, as an operator runs them: `brokers
//! add|list|remove` against a temp data dir (passwords only with `MQTT_PROXY_SECRET`,
//! encrypted, file 0600), and the refusals that must not touch anything: a corrupt store
//! and an unknown config key.

use std::fs;
use std::path::Path;

// Each test binary uses part of the shared helpers.
#[allow(dead_code)]
mod cli_support;

use cli_support::{cli, fails, free_port, mode, ok, proxy_command, read_lossy, run, SECRET};

fn listed_ids(dir: &Path, secret: Option<&str>) -> Vec<String> {
    let out = cli(dir, "brokers list --json", "", secret);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&out, "brokers list --json")).expect("list --json is JSON");
    json["brokers"]
        .as_array()
        .expect("brokers array")
        .iter()
        .map(|b| b["id"].as_str().expect("id").to_owned())
        .collect()
}

#[test]
fn brokers_add_list_remove_and_passwords_need_the_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let store = d.join("brokers.json");

    let out = cli(
        d,
        "brokers add --id a --address 127.0.0.1 --port 18830",
        "",
        None,
    );
    assert!(ok(&out, "add a").contains("added broker a"));
    let out = cli(d, "brokers list --json", "", None);
    let json: serde_json::Value = serde_json::from_str(&ok(&out, "list")).expect("JSON");
    let a = &json["brokers"][0];
    assert_eq!(
        (&a["id"], &a["address"], &a["port"]),
        (&"a".into(), &"127.0.0.1".into(), &18830.into())
    );
    assert_eq!(mode(&store), 0o600);

    // A password without the secret: refused, and the store is untouched.
    let before = fs::read(&store).expect("read store");
    let add_b = "brokers add --id b --address h --username u --password-stdin";
    let stderr = fails(&cli(d, add_b, "hunter2\n", None), "password, no secret");
    assert!(stderr.contains("MQTT_PROXY_SECRET"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert_eq!(fs::read(&store).expect("read store"), before);

    // With the secret: stored encrypted, never in plain text, file still 0600.
    ok(
        &cli(d, add_b, "hunter2\n", Some(SECRET)),
        "password and secret",
    );
    let raw = read_lossy(&store);
    assert!(raw.contains("\"enc:v2:"), "{raw}");
    assert!(!raw.contains("hunter2"), "{raw}");
    assert_eq!(mode(&store), 0o600);
    let listed = ok(&cli(d, "brokers list --json", "", Some(SECRET)), "list");
    assert!(!listed.contains("hunter2"), "{listed}");
    // Reading an encrypted password needs the secret too, and says so.
    let stderr = fails(&cli(d, "brokers list", "", None), "list without secret");
    assert!(stderr.contains("MQTT_PROXY_SECRET"), "{stderr}");

    ok(&cli(d, "brokers remove a", "", Some(SECRET)), "remove a");
    assert_eq!(listed_ids(d, Some(SECRET)), ["b"]);
    let stderr = fails(
        &cli(d, "brokers remove a", "", Some(SECRET)),
        "remove twice",
    );
    assert!(stderr.contains("no broker with id"), "{stderr}");
}

#[test]
fn a_corrupt_store_is_reported_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("brokers.json");
    let corrupt = b"{\"brokers\": [ {\"id\": \"a\", \"address\": ";
    fs::write(&store, corrupt).expect("write corrupt store");
    let name = store.display().to_string();

    // Serving: refuses to start.
    let mut cmd = proxy_command();
    cmd.arg("--mqtt-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--http-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(dir.path());
    let stderr = fails(&run(cmd, ""), "serving with a corrupt store");
    assert!(stderr.contains(&name), "{stderr}");
    assert!(stderr.contains("invalid JSON"), "{stderr}");

    // The CLI: neither reading nor adding rewrites it.
    let stderr = fails(&cli(dir.path(), "brokers list", "", None), "list");
    assert!(stderr.contains(&name), "{stderr}");
    let add = "brokers add --id b --address h";
    let stderr = fails(&cli(dir.path(), add, "", None), "add");
    assert!(stderr.contains(&name), "{stderr}");

    assert_eq!(fs::read(&store).expect("read store"), corrupt);
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, ["brokers.json"], "no temp or replacement files");
}

#[test]
fn an_unknown_config_key_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("proxy.toml");
    fs::write(
        &config,
        "drain_timeout_secs = 3\nmqtt_listn = \"127.0.0.1:1883\"\n",
    )
    .expect("write config");
    let mut cmd = proxy_command();
    cmd.arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path())
        // Were the key accepted, it must not grab the default ports.
        .arg("--mqtt-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--http-listen")
        .arg(format!("127.0.0.1:{}", free_port()));
    let stderr = fails(&run(cmd, ""), "unknown config key");
    assert!(stderr.contains("mqtt_listn"), "{stderr}");
    assert!(stderr.contains(&config.display().to_string()), "{stderr}");
}
