//! The broker-file loader (Kubernetes mode) and the broker store on arbitrary bytes.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mqtt_proxy::store::{load_brokers_file, BrokerStore, STORE_FILE};

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("mqtt-proxy-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("fuzz temp dir");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let file = dir().join("brokers.yaml");
    if std::fs::write(&file, data).is_ok() {
        let _ = load_brokers_file(&file);
    }
    if std::fs::write(dir().join(STORE_FILE), data).is_ok() {
        let _ = BrokerStore::open(dir(), Some("fuzz-secret"));
    }
});
