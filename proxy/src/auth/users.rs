//! The device users file: username → Argon2id PHC hash and optional ACL, JSON or YAML
//! (`{"users": {"name": {"password": "$argon2id$...", "publish": [...], "subscribe": [...]}}}`).
//! Only hashes are ever stored; the file is written 0600 and atomically by the CLI.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use serde::{Deserialize, Serialize};

use super::acl::Acl;

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read users file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid users file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("users file {path}: user {user:?}: {reason}")]
    Invalid {
        path: PathBuf,
        user: String,
        reason: String,
    },
    #[error("cannot write users file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot hash the password")]
    Hash,
}

/// One device user as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Argon2id PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
    pub password: String,
    /// Topics the device may publish to (`%u`, `%c` substituted); omitted: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
    /// Filters the device may subscribe to; omitted: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Vec<String>>,
}

impl fmt::Debug for User {
    // The hash is not the password, but it is what an offline attack starts from.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("password", &"<redacted>")
            .field("publish", &self.publish)
            .field("subscribe", &self.subscribe)
            .finish()
    }
}

impl User {
    pub fn acl(&self, username: &str, client_id: &str) -> Acl {
        Acl::resolve(
            self.publish.as_deref(),
            self.subscribe.as_deref(),
            username,
            client_id,
        )
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Users {
    #[serde(default)]
    pub users: BTreeMap<String, User>,
}

/// Hashes `password` with Argon2id (the crate's defaults, OWASP's minimum: m=19 MiB, t=2).
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| UsersError::Hash)
}

/// Checks `password` against a PHC hash. The final comparison inside `argon2` is constant
/// time; a malformed hash never matches.
pub fn verify_password(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// A valid hash of a random password: verified against when the username is unknown, so
/// that a wrong username takes as long as a wrong password (no user enumeration by timing).
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_password(&format!("{:032x}", rand::random::<u128>())).unwrap_or_default()
    })
}

impl Users {
    /// Parses JSON or YAML text and validates every entry.
    pub fn parse(path: &Path, text: &str) -> Result<Users, UsersError> {
        let parsed: Result<Users, String> = match serde_json::from_str(text) {
            Ok(u) => Ok(u),
            Err(e) if text.trim_start().starts_with('{') => Err(e.to_string()),
            Err(_) if text.trim().is_empty() => Ok(Users::default()),
            Err(_) => serde_yaml::from_str(text).map_err(|e| e.to_string()),
        };
        let users = parsed.map_err(|message| UsersError::Parse {
            path: path.into(),
            message,
        })?;
        users.validate(path)?;
        Ok(users)
    }

    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(path, &text)
    }

    fn validate(&self, path: &Path) -> Result<(), UsersError> {
        for (name, u) in &self.users {
            let bad = |reason: String| UsersError::Invalid {
                path: path.into(),
                user: name.clone(),
                reason,
            };
            if name.is_empty() || name.len() > 256 {
                return Err(bad("username must be 1 to 256 bytes".into()));
            }
            match PasswordHash::new(&u.password) {
                Ok(h) if h.algorithm.as_str() == "argon2id" => {}
                // Never echo the value: it may be a plain password pasted by mistake.
                _ => return Err(bad("password must be an Argon2id PHC hash ($argon2id$...); use `mqtt-proxy users add`".into())),
            }
            for f in u.publish.iter().chain(&u.subscribe).flatten() {
                // `%u`/`%c` stand for one level; check the filter's shape with a placeholder.
                let shape = f.replace("%u", "x").replace("%c", "x");
                if !crate::router::valid_filter(&shape) {
                    return Err(bad(format!("invalid topic filter {f:?}")));
                }
            }
        }
        Ok(())
    }

    /// Writes the file as JSON, 0600, atomically (old or new, never half).
    pub fn save(&self, path: &Path) -> Result<(), UsersError> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| UsersError::Write {
            path: path.into(),
            source: e.into(),
        })?;
        bytes.push(b'\n');
        crate::store::write_atomic(path, &bytes).map_err(|source| UsersError::Write {
            path: path.into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_and_wrong_password_does_not() {
        let h = hash_password("s3cret").expect("hash");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "s3cret"));
        assert!(!verify_password(&h, "s3cret "));
        assert!(!verify_password("not a hash", "s3cret"));
        assert!(!verify_password(dummy_hash(), ""));
    }

    #[test]
    fn yaml_and_json_parse_and_plain_passwords_are_refused_without_echo() {
        let h = hash_password("pw").expect("hash");
        let p = Path::new("users.yaml");
        let yaml =
            format!("users:\n  alice:\n    password: '{h}'\n    publish: ['devices/%u/#']\n");
        let u = Users::parse(p, &yaml).expect("yaml");
        assert_eq!(
            u.users["alice"].publish.as_deref(),
            Some(&["devices/%u/#".to_string()][..])
        );
        assert_eq!(u.users["alice"].subscribe, None);
        let json = serde_json::to_string(&u).expect("json");
        assert_eq!(Users::parse(p, &json).expect("json"), u);
        assert!(Users::parse(p, "").expect("empty").users.is_empty());

        let e = Users::parse(p, "users:\n  bob:\n    password: hunter2\n")
            .expect_err("plain password")
            .to_string();
        assert!(e.contains("bob") && !e.contains("hunter2"), "{e}");
        let e = Users::parse(
            p,
            &format!("users:\n  bob:\n    password: '{h}'\n    publish: ['a/#/b']\n"),
        )
        .expect_err("bad filter")
        .to_string();
        assert!(e.contains("a/#/b"), "{e}");
        let e = Users::parse(p, "{\"users\": {\"x\": {\"pasword\": \"\"}}}")
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("pasword"), "{e}");
    }

    #[test]
    fn debug_redacts_the_hash() {
        let h = hash_password("pw").expect("hash");
        let u = User {
            password: h.clone(),
            publish: None,
            subscribe: None,
        };
        assert!(!format!("{u:?}").contains(&h));
    }
}
