//! Writes the CRDs as YAML into `crds/` and `charts/mqtt-proxy-operator/crds/`
//! (`cargo run -p mqtt-proxy-operator --bin crdgen`). `cargo test` checks they are current.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in mqtt_proxy_operator::crdgen::OUTPUT_DIRS {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir)?;
        for (file, yaml) in mqtt_proxy_operator::crdgen::render()? {
            let path = dir.join(file);
            std::fs::write(&path, yaml)?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
