//! Broker password encryption for the on-disk store: the only place that knows the
//! ciphertext formats, so the store itself never handles keys or nonces.
//!
//! Format written (`enc:v2:`):
//!
//! ```text
//! enc:v2:<base64( salt(16) ‖ nonce(12) ‖ ciphertext ‖ tag(16) )>
//! key = HKDF-SHA256(ikm = MQTT_PROXY_SECRET, salt, info = "mqtt-proxy broker password v2")
//! AES-256-GCM, associated data = the broker id
//! ```
//!
//! The salt is chosen once per store file and recorded at its top level as
//! `"kdf": {"alg": "hkdf-sha256", "salt": "<base64>"}`, so a file needs one key derivation,
//! not one per password. Every value also carries that salt, which keeps a value
//! self-describing: it decrypts even where the top-level record is missing. Binding the
//! broker id as associated data means a ciphertext pasted under another broker fails to
//! decrypt instead of handing that broker's credentials to the wrong server.
//!
//! Format read only (`ENC:`, the model we replace): `ENC:<base64( nonce(12) ‖ ciphertext ‖
//! tag(16) )>`, key = SHA-256(secret ‖ "mqtt-proxy-password-encryption"), no associated
//! data. The store re-encrypts such values as `enc:v2:` on its next save.
//!
//! A wrong secret is always an error (GCM's tag check), never garbage.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hkdf::Hkdf;
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::broker::Secret;

/// Prefix of the format this crate writes.
pub const V2_PREFIX: &str = "enc:v2:";
/// Prefix of the model's format, read only.
pub const LEGACY_PREFIX: &str = "ENC:";
/// The only key derivation `kdf.alg` may name.
pub const KDF_ALG: &str = "hkdf-sha256";

const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HKDF_INFO: &[u8] = b"mqtt-proxy broker password v2";
const LEGACY_KEY_SUFFIX: &[u8] = b"mqtt-proxy-password-encryption";

/// Why a password could not be encrypted or decrypted. Messages name the broker, never
/// the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "cannot decrypt the password of broker {broker:?}: wrong MQTT_PROXY_SECRET or corrupted value"
    )]
    Decrypt { broker: String },
    #[error("the password of broker {broker:?} is not a valid {format} value: {reason}")]
    Malformed {
        broker: String,
        format: &'static str,
        reason: &'static str,
    },
    #[error("cannot encrypt the password of broker {broker:?}")]
    Encrypt { broker: String },
    #[error("`kdf`: {0}")]
    Kdf(String),
}

/// How a password value in the store file is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueFormat {
    /// `enc:v2:` — ours.
    V2,
    /// `ENC:` — the model's; re-encrypted on the next save.
    Legacy,
    /// No prefix: plain text left by hand or by the model; encrypted on the next save.
    Plain,
}

impl ValueFormat {
    pub fn of(value: &str) -> Self {
        if value.starts_with(V2_PREFIX) {
            Self::V2
        } else if value.starts_with(LEGACY_PREFIX) {
            Self::Legacy
        } else {
            Self::Plain
        }
    }
}

/// The store file's top-level `kdf` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdfParams {
    pub alg: String,
    /// Base64 of the 16-byte HKDF salt.
    pub salt: String,
}

impl KdfParams {
    /// The salt, after checking the algorithm and the salt's length.
    pub fn salt_bytes(&self) -> Result<[u8; SALT_LEN], CryptoError> {
        if self.alg != KDF_ALG {
            return Err(CryptoError::Kdf(format!(
                "unsupported alg {:?} (expected {KDF_ALG:?})",
                self.alg
            )));
        }
        let raw = B64
            .decode(&self.salt)
            .map_err(|_| CryptoError::Kdf("salt is not valid base64".into()))?;
        raw.try_into()
            .map_err(|_| CryptoError::Kdf(format!("salt must be {SALT_LEN} bytes")))
    }
}

/// Keys for one store file: the secret (for legacy values and values carrying another
/// salt) and the AES key derived for the file's salt, which every new value uses.
pub struct PasswordCrypto {
    secret: Vec<u8>,
    salt: [u8; SALT_LEN],
    file_key: Aes256Gcm,
}

impl fmt::Debug for PasswordCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordCrypto")
            .field("salt", &B64.encode(self.salt))
            .field("secret", &"***")
            .finish()
    }
}

impl PasswordCrypto {
    /// Derives the file key for `salt`; `None` picks a fresh random salt (a new file).
    pub fn new(secret: &str, salt: Option<[u8; SALT_LEN]>) -> Self {
        let salt = salt.unwrap_or_else(|| {
            let mut s = [0u8; SALT_LEN];
            OsRng.fill_bytes(&mut s);
            s
        });
        let secret = secret.as_bytes().to_vec();
        let file_key = derive_v2(&secret, &salt);
        Self {
            secret,
            salt,
            file_key,
        }
    }

    /// The record to write at the store file's top level.
    pub fn kdf_params(&self) -> KdfParams {
        KdfParams {
            alg: KDF_ALG.into(),
            salt: B64.encode(self.salt),
        }
    }

    /// Encrypts `password` for `broker_id` as an `enc:v2:` value with a fresh nonce.
    pub fn encrypt(&self, broker_id: &str, password: &Secret) -> Result<String, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .file_key
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: password.expose().as_bytes(),
                    aad: broker_id.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Encrypt {
                broker: broker_id.into(),
            })?;
        let mut raw = Vec::with_capacity(SALT_LEN + NONCE_LEN + sealed.len());
        raw.extend_from_slice(&self.salt);
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&sealed);
        Ok(format!("{V2_PREFIX}{}", B64.encode(raw)))
    }

    /// Decrypts an `enc:v2:` or `ENC:` value stored for `broker_id`. A value in neither
    /// format is `Malformed`: plain text is the caller's decision, not a crypto one.
    pub fn decrypt(&self, broker_id: &str, value: &str) -> Result<Secret, CryptoError> {
        let malformed = |format, reason| CryptoError::Malformed {
            broker: broker_id.into(),
            format,
            reason,
        };
        let wrong = || CryptoError::Decrypt {
            broker: broker_id.into(),
        };
        let plain = match ValueFormat::of(value) {
            ValueFormat::V2 => {
                let raw = B64
                    .decode(&value[V2_PREFIX.len()..])
                    .map_err(|_| malformed(V2_PREFIX, "not base64"))?;
                if raw.len() < SALT_LEN + NONCE_LEN + TAG_LEN {
                    return Err(malformed(V2_PREFIX, "too short"));
                }
                let (salt, rest) = raw.split_at(SALT_LEN);
                let (nonce, sealed) = rest.split_at(NONCE_LEN);
                let payload = Payload {
                    msg: sealed,
                    aad: broker_id.as_bytes(),
                };
                let nonce = Nonce::from_slice(nonce);
                if salt == self.salt {
                    self.file_key.decrypt(nonce, payload)
                } else {
                    derive_v2(&self.secret, salt).decrypt(nonce, payload)
                }
                .map_err(|_| wrong())?
            }
            ValueFormat::Legacy => {
                let raw = B64
                    .decode(&value[LEGACY_PREFIX.len()..])
                    .map_err(|_| malformed(LEGACY_PREFIX, "not base64"))?;
                if raw.len() < NONCE_LEN + TAG_LEN {
                    return Err(malformed(LEGACY_PREFIX, "too short"));
                }
                let (nonce, sealed) = raw.split_at(NONCE_LEN);
                legacy_key(&self.secret)
                    .decrypt(Nonce::from_slice(nonce), sealed)
                    .map_err(|_| wrong())?
            }
            ValueFormat::Plain => return Err(malformed(V2_PREFIX, "no enc:v2: or ENC: prefix")),
        };
        // The tag verified, so bytes that are not UTF-8 were encrypted that way on purpose
        // by someone else's tool; refuse rather than guess.
        String::from_utf8(plain)
            .map(Secret::new)
            .map_err(|_| malformed("password", "decrypted bytes are not UTF-8"))
    }
}

fn derive_v2(secret: &[u8], salt: &[u8]) -> Aes256Gcm {
    let mut okm = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's 255 * 32 byte limit, so expand cannot fail.
    Hkdf::<Sha256>::new(Some(salt), secret)
        .expand(HKDF_INFO, &mut okm)
        .unwrap_or_else(|_| unreachable!("HKDF output length is fixed at 32"));
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&okm))
}

fn legacy_key(secret: &[u8]) -> Aes256Gcm {
    let digest = Sha256::new()
        .chain_update(secret)
        .chain_update(LEGACY_KEY_SUFFIX)
        .finalize();
    Aes256Gcm::new(&digest)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The model's scheme, reimplemented to produce `ENC:` fixtures.
    pub(crate) fn legacy_encrypt(secret: &str, password: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let key: [u8; 32] = Sha256::digest([secret.as_bytes(), LEGACY_KEY_SUFFIX].concat()).into();
        let sealed = Aes256Gcm::new(&key.into())
            .encrypt(Nonce::from_slice(&nonce), password.as_bytes())
            .expect("encrypts");
        format!(
            "{LEGACY_PREFIX}{}",
            B64.encode([&nonce[..], &sealed].concat())
        )
    }

    fn pw(s: &str) -> Secret {
        Secret::new(s)
    }

    #[test]
    fn round_trip_with_fresh_nonces() {
        let c = PasswordCrypto::new("s3cret", None);
        let a = c.encrypt("b1", &pw("hunter2")).expect("encrypts");
        let b = c.encrypt("b1", &pw("hunter2")).expect("encrypts");
        assert!(a.starts_with(V2_PREFIX));
        assert_ne!(a, b, "a fresh nonce per encryption");
        assert!(!a.contains("hunter2"));
        assert_eq!(c.decrypt("b1", &a).expect("decrypts").expose(), "hunter2");
        // Another handle on the same file (same salt) reads it too.
        let salt = c.kdf_params().salt_bytes().expect("valid kdf");
        let again = PasswordCrypto::new("s3cret", Some(salt));
        assert_eq!(
            again.decrypt("b1", &b).expect("decrypts").expose(),
            "hunter2"
        );
        // A value carrying another file's salt still decrypts with the right secret.
        let other = PasswordCrypto::new("s3cret", None);
        assert_eq!(
            other.decrypt("b1", &a).expect("decrypts").expose(),
            "hunter2"
        );
    }

    #[test]
    fn ciphertext_is_bound_to_the_broker_id() {
        let c = PasswordCrypto::new("s3cret", None);
        let v = c.encrypt("b1", &pw("hunter2")).expect("encrypts");
        let e = c.decrypt("b2", &v).unwrap_err();
        assert_eq!(
            e,
            CryptoError::Decrypt {
                broker: "b2".into()
            }
        );
    }

    #[test]
    fn wrong_secret_is_a_clear_error() {
        let v = PasswordCrypto::new("right", None)
            .encrypt("b1", &pw("hunter2"))
            .expect("encrypts");
        let e = PasswordCrypto::new("wrong", None)
            .decrypt("b1", &v)
            .unwrap_err();
        let msg = e.to_string();
        assert_eq!(
            msg,
            "cannot decrypt the password of broker \"b1\": wrong MQTT_PROXY_SECRET or corrupted value"
        );
        assert!(!msg.contains("hunter2"));
        let e = PasswordCrypto::new("wrong", None)
            .decrypt("b1", &legacy_encrypt("right", "hunter2"))
            .unwrap_err();
        assert!(matches!(e, CryptoError::Decrypt { .. }), "{e}");
    }

    #[test]
    fn reads_the_legacy_format() {
        let v = legacy_encrypt("s3cret", "hunter2");
        assert_eq!(ValueFormat::of(&v), ValueFormat::Legacy);
        let c = PasswordCrypto::new("s3cret", None);
        assert_eq!(c.decrypt("any", &v).expect("decrypts").expose(), "hunter2");
    }

    #[test]
    fn malformed_values_are_errors() {
        let c = PasswordCrypto::new("s3cret", None);
        for v in ["enc:v2:!!", "enc:v2:AAAA", "ENC:AAAA", "plain"] {
            let e = c.decrypt("b1", v).unwrap_err();
            assert!(matches!(e, CryptoError::Malformed { .. }), "{v}: {e}");
        }
    }

    #[test]
    fn kdf_params_are_checked() {
        let good = PasswordCrypto::new("s", None).kdf_params();
        assert!(good.salt_bytes().is_ok());
        let bad_alg = KdfParams {
            alg: "pbkdf2".into(),
            ..good.clone()
        };
        assert!(bad_alg
            .salt_bytes()
            .unwrap_err()
            .to_string()
            .contains("pbkdf2"));
        let short = KdfParams {
            salt: B64.encode([0u8; 8]),
            ..good
        };
        assert!(short.salt_bytes().is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        let c = PasswordCrypto::new("topsecret", None);
        assert!(!format!("{c:?}").contains("topsecret"));
    }
}
