//! The broker-file loader (Kubernetes mode) and the broker store on arbitrary bytes.
//!
//! Both parse from memory (`parse_brokers_file`, `BrokerStore::from_json`): writing each
//! input to a file first cost two truncating rewrites per execution, which ext4 flushes to
//! disk on close, and held the target at ~1,800 executions/s. Non-UTF-8 input is what
//! `fs::read_to_string` rejects before any parsing, so it is skipped here.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use mqtt_proxy::store::{parse_brokers_file, BrokerStore, STORE_FILE};

const DIR: &str = "/nonexistent/mqtt-proxy-fuzz";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_brokers_file(&Path::new(DIR).join("brokers.yaml"), text);
    // Without and with a secret: plain, legacy `ENC:` and `enc:v2:` values and the `kdf`
    // record take different paths.
    let store = PathBuf::from(DIR).join(STORE_FILE);
    let _ = BrokerStore::from_json(store.clone(), text, None);
    let _ = BrokerStore::from_json(store, text, Some("fuzz-secret"));
});
