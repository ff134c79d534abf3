//! Where broker definitions live on disk: the JSON store `<data-dir>/brokers.json` that the
//! UI and `mqtt-proxy brokers` edit, and the read-only brokers file that Kubernetes mounts
//! for hot reload.
//!
//! The store keeps the model's `{"brokers": [...]}` shape so its files load as they are; we
//! add an optional top-level `kdf` record (see [`crate::crypto`]). Passwords are only ever
//! written encrypted; `ENC:` and plain-text values left by the model are read and
//! re-encrypted on the next save. Saves are atomic (temp file, fsync, rename, fsync of the
//! directory) so a crash leaves either the old or the new file, never half of one, and a
//! file we cannot parse is reported and left untouched rather than replaced by an empty store.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::broker::{validate_set, BrokerConfig, BrokerError, Secret};
use crate::crypto::{CryptoError, KdfParams, PasswordCrypto, ValueFormat};

/// File name of the store inside the data directory.
pub const STORE_FILE: &str = "brokers.json";

/// How to get a secret, shown wherever one is missing.
pub const SECRET_HINT: &str = "set MQTT_PROXY_SECRET (e.g. `export MQTT_PROXY_SECRET=$(openssl rand -hex 32)`) to store broker passwords; they are never written in plain text";

/// What went wrong with a brokers file. Every message names the file; none carries a
/// password (parse errors under a `password` field are not quoted).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: invalid {format} at line {line}, column {column}{}: {message}", at_field(.field))]
    Parse {
        path: PathBuf,
        format: &'static str,
        line: usize,
        column: usize,
        /// Path of the offending field, e.g. `brokers[2].port`; empty at the top level.
        field: String,
        message: String,
    },
    #[error("{path}: {source}")]
    Invalid { path: PathBuf, source: BrokerError },
    #[error("{path}: {source}")]
    Crypto { path: PathBuf, source: CryptoError },
    #[error("{path}: broker {broker:?} has a password: {SECRET_HINT}")]
    SecretRequired { path: PathBuf, broker: String },
    #[error("{path}: the password of broker {broker:?} is encrypted and MQTT_PROXY_SECRET is not set: set it to the secret this file was written with")]
    SecretRequiredToRead { path: PathBuf, broker: String },
    #[error("{path}: passwordFile {file} of broker {broker:?}: {source}")]
    PasswordFile {
        path: PathBuf,
        broker: String,
        file: PathBuf,
        source: io::Error,
    },
    #[error("{path}: cannot write: {source}")]
    Write { path: PathBuf, source: io::Error },
}

fn at_field(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!(", field `{field}`")
    }
}

/// The store file as read. `kdf` is ours and optional, so the model's files load.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    #[serde(default)]
    brokers: Vec<BrokerConfig>,
    #[serde(default)]
    kdf: Option<KdfParams>,
}

#[derive(Serialize)]
struct StoreFileOut<'a> {
    brokers: &'a [BrokerConfig],
    #[serde(skip_serializing_if = "Option::is_none")]
    kdf: Option<KdfParams>,
}

/// The hot-reload file: the same shape, passwords in plain text or `passwordFile`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BrokersFile {
    #[serde(default)]
    brokers: Vec<BrokerConfig>,
}

/// The JSON broker store. Holds the brokers with passwords decrypted; writes happen only
/// through the mutating methods, each of which validates the whole set first.
#[derive(Debug)]
pub struct BrokerStore {
    path: PathBuf,
    brokers: Vec<BrokerConfig>,
    crypto: Option<PasswordCrypto>,
    /// The `kdf` record as read, kept on save when there is no secret to derive a new one.
    kdf: Option<KdfParams>,
}

impl BrokerStore {
    /// Missing file → empty store (file not created until first save). Corrupt/unreadable
    /// file → Err naming path and problem; such a file is never overwritten. An empty
    /// `secret` counts as none.
    pub fn open(data_dir: &Path, secret: Option<&str>) -> Result<Self, StoreError> {
        let path = data_dir.join(STORE_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Self::from_json(path, &text, secret),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Self::from_file(path, StoreFile::default(), secret)
            }
            Err(source) => Err(StoreError::Read { path, source }),
        }
    }

    /// The store as [`BrokerStore::open`] would read it from `text`, the content of the
    /// store file at `path` (named in errors, written by the next save). Separate from the
    /// file read so the fuzz target and tests parse without touching the disk.
    pub fn from_json(path: PathBuf, text: &str, secret: Option<&str>) -> Result<Self, StoreError> {
        let file = parse_json(&path, text)?;
        Self::from_file(path, file, secret)
    }

    fn from_file(path: PathBuf, file: StoreFile, secret: Option<&str>) -> Result<Self, StoreError> {
        let StoreFile { mut brokers, kdf } = file;
        validate_set(&brokers).map_err(|source| StoreError::Invalid {
            path: path.clone(),
            source,
        })?;
        let crypto = match secret.filter(|s| !s.is_empty()) {
            Some(secret) => {
                let salt = kdf.as_ref().map(KdfParams::salt_bytes).transpose();
                let salt = salt.map_err(|source| StoreError::Crypto {
                    path: path.clone(),
                    source,
                })?;
                Some(PasswordCrypto::new(secret, salt))
            }
            None => None,
        };
        let (mut plain, mut legacy) = (Vec::new(), Vec::new());
        for b in &mut brokers {
            let Some(value) = b.password.take() else {
                continue;
            };
            let format = ValueFormat::of(value.expose());
            match format {
                ValueFormat::Plain => plain.push(b.id.clone()),
                ValueFormat::Legacy => legacy.push(b.id.clone()),
                ValueFormat::V2 => {}
            }
            b.password = Some(match (format, &crypto) {
                (ValueFormat::Plain, _) => value,
                (_, None) => {
                    return Err(StoreError::SecretRequiredToRead {
                        path,
                        broker: b.id.clone(),
                    })
                }
                (_, Some(c)) => {
                    c.decrypt(&b.id, value.expose())
                        .map_err(|source| StoreError::Crypto {
                            path: path.clone(),
                            source,
                        })?
                }
            });
        }
        if !plain.is_empty() {
            tracing::warn!(path = %path.display(), brokers = ?plain,
                "broker store holds plain-text passwords; they are encrypted on the next save");
        }
        if !legacy.is_empty() {
            tracing::info!(path = %path.display(), brokers = ?legacy,
                "broker store holds ENC: (legacy) passwords; they are re-encrypted as enc:v2: on the next save");
        }
        Ok(Self {
            path,
            brokers,
            crypto,
            kdf,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All brokers, passwords decrypted.
    pub fn brokers(&self) -> &[BrokerConfig] {
        &self.brokers
    }

    pub fn get(&self, id: &str) -> Option<&BrokerConfig> {
        self.brokers.iter().find(|b| b.id == id)
    }

    /// Adds `b`, or replaces the broker with the same id in place; validates and saves.
    pub fn upsert(&mut self, b: BrokerConfig) -> Result<(), StoreError> {
        let mut next = self.brokers.clone();
        match next.iter_mut().find(|x| x.id == b.id) {
            Some(slot) => *slot = b,
            None => next.push(b),
        }
        self.replace_all(next)
    }

    /// Removes the broker `id`; returns whether it existed (and the file was saved).
    pub fn remove(&mut self, id: &str) -> Result<bool, StoreError> {
        let next: Vec<_> = self
            .brokers
            .iter()
            .filter(|b| b.id != id)
            .cloned()
            .collect();
        if next.len() == self.brokers.len() {
            return Ok(false);
        }
        self.replace_all(next)?;
        Ok(true)
    }

    /// Replaces the whole set. Nothing changes, in memory or on disk, unless the set is
    /// valid and the save succeeds.
    pub fn replace_all(&mut self, brokers: Vec<BrokerConfig>) -> Result<(), StoreError> {
        validate_set(&brokers).map_err(|source| StoreError::Invalid {
            path: self.path.clone(),
            source,
        })?;
        self.save(&brokers)?;
        self.brokers = brokers;
        Ok(())
    }

    /// Re-encrypts every password under `new_secret` (and a fresh salt). The old file is
    /// copied aside first and put back unless the rewritten store opens with the new
    /// secret and yields the same brokers; it is removed only after that check.
    pub fn rotate_secret(&mut self, new_secret: &str) -> Result<(), StoreError> {
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Write { path, source }
        };
        let old_bytes = fs::read(&self.path).map_err(|source| StoreError::Read {
            path: self.path.clone(),
            source,
        })?;
        let backup = self.path.with_extension("json.pre-rotate");
        write_atomic(&backup, &old_bytes).map_err(werr(&backup))?;
        let previous = self.crypto.replace(PasswordCrypto::new(new_secret, None));
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let verified = self
            .save(&self.brokers)
            .and_then(|()| BrokerStore::open(dir, Some(new_secret)))
            .and_then(|reopened| {
                if reopened.brokers == self.brokers {
                    Ok(())
                } else {
                    Err(StoreError::Write {
                        path: self.path.clone(),
                        source: io::Error::other("the re-encrypted store reads back differently"),
                    })
                }
            });
        if let Err(e) = verified {
            self.crypto = previous;
            write_atomic(&self.path, &old_bytes).map_err(werr(&self.path))?;
            let _ = fs::remove_file(&backup);
            return Err(e);
        }
        fs::remove_file(&backup).map_err(werr(&backup))
    }

    fn save(&self, brokers: &[BrokerConfig]) -> Result<(), StoreError> {
        let mut sealed = brokers.to_vec();
        for b in &mut sealed {
            let Some(password) = &b.password else {
                continue;
            };
            let crypto = self
                .crypto
                .as_ref()
                .ok_or_else(|| StoreError::SecretRequired {
                    path: self.path.clone(),
                    broker: b.id.clone(),
                })?;
            let value = crypto
                .encrypt(&b.id, password)
                .map_err(|source| StoreError::Crypto {
                    path: self.path.clone(),
                    source,
                })?;
            b.password = Some(Secret::new(value));
        }
        let out = StoreFileOut {
            brokers: &sealed,
            kdf: self
                .crypto
                .as_ref()
                .map(PasswordCrypto::kdf_params)
                .or_else(|| self.kdf.clone()),
        };
        let write_err = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let mut bytes = serde_json::to_vec_pretty(&out).map_err(|e| write_err(e.into()))?;
        bytes.push(b'\n');
        write_atomic(&self.path, &bytes).map_err(write_err)
    }
}

/// Writes `bytes` to `path` so that a crash at any point leaves the old file or the new
/// one: a 0600 temp file in the same directory, fsync, rename over, fsync the directory
/// (without the last step the rename itself may not survive a power loss).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    if !dir.is_dir() {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // Best effort: the temp name is unique, so a leftover is harmless but untidy.
        let _ = fs::remove_file(&tmp);
    }
    result?;
    File::open(dir)?.sync_all()
}

#[derive(Serialize)]
struct BrokersFileOut<'a> {
    brokers: &'a [BrokerConfig],
}

/// Renders `brokers` as the YAML that [`load_brokers_file`] reads (the Kubernetes operator
/// writes its rendered Secret with this, so both sides use one format). Passwords are
/// written in plain text: the result belongs in a Secret, never in a ConfigMap.
pub fn render_brokers_file(brokers: &[BrokerConfig]) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&BrokersFileOut { brokers })
}

/// The hot-reload file (Kubernetes mode): JSON or YAML, told apart by content; the same
/// `{"brokers": [...]}` shape. Passwords are plain text there (the file is a mounted
/// Secret) or `passwordFile` paths, read when the broker set is built (one trailing newline
/// trimmed). Relative `passwordFile`, `caCertPath`, `clientCertPath` and `clientKeyPath` are
/// resolved against this file's directory, whatever the working directory. Validates the
/// whole set.
pub fn load_brokers_file(path: &Path) -> Result<Vec<BrokerConfig>, StoreError> {
    let text = fs::read_to_string(path).map_err(|source| StoreError::Read {
        path: path.into(),
        source,
    })?;
    parse_brokers_file(path, &text)
}

/// [`load_brokers_file`] on `text`, the content of the file at `path` (named in errors;
/// relative paths inside resolve against its directory). Only a `passwordFile` touches
/// the disk (opened to check it exists).
pub fn parse_brokers_file(path: &Path, text: &str) -> Result<Vec<BrokerConfig>, StoreError> {
    // YAML is a superset of JSON, but serde_json's messages are better for JSON input, so
    // JSON goes first. Valid JSON of the wrong shape gets the JSON error; text that is
    // neither JSON nor YAML gets the error of the format it looks like.
    let file: BrokersFile = match parse_json(path, text) {
        Ok(f) => f,
        Err(json_err) if serde_json::from_str::<serde_json::Value>(text).is_ok() => {
            return Err(json_err)
        }
        Err(json_err) => parse_yaml(path, text).map_err(|yaml_err| {
            if text.trim_start().starts_with(['{', '[']) {
                json_err
            } else {
                yaml_err
            }
        })?,
    };
    let mut brokers = file.brokers;
    validate_set(&brokers).map_err(|source| StoreError::Invalid {
        path: path.into(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    for b in &mut brokers {
        // Relative TLS paths name files beside this one (the operator renders them as keys
        // of the same Secret); resolved here so the TLS loader and the reload fingerprint
        // read the right files whatever the working directory.
        for p in [
            &mut b.ca_cert_path,
            &mut b.client_cert_path,
            &mut b.client_key_path,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        // A relative `passwordFile` names a file beside this one too. It is read where the
        // broker set is built (and fingerprinted by the reload watcher), not here: a
        // password read here as well would make the broker carry both fields.
        if let Some(file) = &mut b.password_file {
            if file.is_relative() {
                *file = base.join(&*file);
            }
            // A missing or unreadable file is this file's error, named here.
            fs::File::open(&*file).map_err(|source| StoreError::PasswordFile {
                path: path.into(),
                broker: b.id.clone(),
                file: file.clone(),
                source,
            })?;
        }
    }
    Ok(brokers)
}

fn parse_json<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, StoreError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = field_path(e.path());
        let inner = e.into_inner();
        let suffix = format!(" at line {} column {}", inner.line(), inner.column());
        let msg = inner.to_string();
        let msg = msg.strip_suffix(&suffix).unwrap_or(&msg).to_string();
        parse_error(path, "JSON", inner.line(), inner.column(), field, msg)
    })?;
    de.end().map_err(|e| {
        parse_error(
            path,
            "JSON",
            e.line(),
            e.column(),
            String::new(),
            "trailing characters".into(),
        )
    })?;
    Ok(value)
}

fn parse_yaml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, StoreError> {
    serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text)).map_err(|e| {
        let field = field_path(e.path());
        let inner = e.into_inner();
        let (line, column) = inner.location().map_or((0, 0), |l| (l.line(), l.column()));
        let msg = inner.to_string();
        // serde_yaml appends its own position and prefixes its own path; keep the reason.
        let msg = msg.split(" at line ").next().unwrap_or(&msg);
        let msg = msg
            .strip_prefix(&format!("{field}: "))
            .unwrap_or(msg)
            .to_string();
        parse_error(path, "YAML", line, column, field, msg)
    })
}

fn field_path(p: &serde_path_to_error::Path) -> String {
    let s = p.to_string();
    if s == "." {
        String::new()
    } else {
        s
    }
}

fn parse_error(
    path: &Path,
    format: &'static str,
    line: usize,
    column: usize,
    field: String,
    message: String,
) -> StoreError {
    // A password of the wrong type would be quoted back by serde; never echo it.
    let message = if field.ends_with("password") {
        "invalid value (not shown: it is a password)".into()
    } else {
        message
    };
    StoreError::Parse {
        path: path.into(),
        format,
        line,
        column,
        field,
        message,
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
