//! Secret volumes the way the kubelet writes them, for running the real proxy on what the
//! operator rendered without a kubelet: each version of the data goes into a fresh
//! timestamped directory, `..data` points at the current one and is swapped atomically
//! (symlink + rename), and every key is a symlink `<key> -> ..data/<key>`. A consumer that
//! watches `<dir>/brokers.yaml` therefore sees one atomic change per update, exactly as in a
//! pod (kubelet's `AtomicWriter`).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde_json::Value;

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// A Secret's `data`, decoded: key → bytes.
pub type SecretData = BTreeMap<String, Vec<u8>>;

/// Decodes `data` (base64) of a Secret as returned by the API.
pub fn secret_data(secret: &Value) -> Result<SecretData> {
    let Some(map) = secret["data"].as_object() else {
        return Ok(SecretData::new());
    };
    map.iter()
        .map(|(key, value)| {
            let encoded = value
                .as_str()
                .with_context(|| format!("Secret key {key} is not a string"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .with_context(|| format!("Secret key {key} is not base64"))?;
            Ok((key.clone(), bytes))
        })
        .collect()
}

/// A directory holding one Secret's keys, updated like a kubelet-managed volume.
#[derive(Debug)]
pub struct SecretDir {
    dir: PathBuf,
    current: PathBuf,
    keys: Vec<String>,
}

impl SecretDir {
    /// Materialises `data` into `dir` (which must exist and be empty).
    pub fn create(dir: &Path, data: &SecretData) -> Result<Self> {
        let current = write_version(dir, data)?;
        symlink(file_name(&current)?, dir.join(DATA)).context("linking ..data")?;
        let mut this = Self {
            dir: dir.to_owned(),
            current,
            keys: Vec::new(),
        };
        this.link_keys(data)?;
        Ok(this)
    }

    /// The volume's directory (the pod's mount point).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Swaps in a new version of the data: a new timestamped dir, `..data` renamed over,
    /// key links added/removed, the old version deleted.
    pub fn update(&mut self, data: &SecretData) -> Result<()> {
        let next = write_version(&self.dir, data)?;
        let tmp = self.dir.join(DATA_TMP);
        symlink(file_name(&next)?, &tmp).context("linking ..data_tmp")?;
        fs::rename(&tmp, self.dir.join(DATA)).context("renaming ..data_tmp over ..data")?;
        self.link_keys(data)?;
        fs::remove_dir_all(&self.current).context("removing the old version")?;
        self.current = next;
        Ok(())
    }

    fn link_keys(&mut self, data: &SecretData) -> Result<()> {
        for key in &self.keys {
            if !data.contains_key(key) {
                fs::remove_file(self.dir.join(key)).with_context(|| format!("unlinking {key}"))?;
            }
        }
        for key in data.keys() {
            let link = self.dir.join(key);
            if fs::symlink_metadata(&link).is_err() {
                symlink(Path::new(DATA).join(key), &link)
                    .with_context(|| format!("linking {key}"))?;
            }
        }
        self.keys = data.keys().cloned().collect();
        Ok(())
    }
}

fn write_version(dir: &Path, data: &SecretData) -> Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // The kubelet's format is `..2006_01_02_15_04_05.<random>`; uniqueness is what matters.
    let name = format!("..{nanos}.{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let version = dir.join(name);
    fs::create_dir(&version).context("creating a timestamped dir")?;
    for (key, bytes) in data {
        if key.contains('/') || key.starts_with("..") {
            bail!("Secret key {key:?} is not a valid file name");
        }
        fs::write(version.join(key), bytes).with_context(|| format!("writing {key}"))?;
    }
    Ok(version)
}

fn file_name(path: &Path) -> Result<&std::ffi::OsStr> {
    path.file_name().context("a version dir has a name")
}
