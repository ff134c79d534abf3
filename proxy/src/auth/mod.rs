//! Device authentication and authorization: who may connect (users file with Argon2id
//! hashes, client-certificate identities, or anonymous by explicit opt-in) and what each
//! device may publish and subscribe to ([`acl`]).
//!
//! The session holds one [`Grant`] per connection and asks the [`Authorizer`] at a few
//! call sites (CONNECT, PUBLISH, SUBSCRIBE). The users file is hot-reloaded; grants see a
//! new version at their next check, and a removed user's grant stops allowing anything.

pub mod acl;
pub mod cli;
pub mod limiter;
pub mod reload;
pub mod users;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};

use prometheus::{IntCounterVec, Opts};

pub use acl::Acl;
use limiter::FailureLimiter;
pub use users::{User, Users, UsersError};

use crate::codec::Protocol;

/// How devices are authenticated.
#[derive(Clone, Debug, Default)]
pub struct AuthOptions {
    /// The users file; `None`: no device users (only anonymous or certificate identities).
    pub users_file: Option<PathBuf>,
    /// Accept CONNECTs without a username (explicit opt-in; the proxy warns loudly).
    pub allow_anonymous: bool,
    /// Failed attempts per source address and minute before further attempts from it are
    /// refused unchecked.
    pub failures_per_minute: u32,
}

pub static AUTH_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "mqtt_proxy_auth_failures_total",
            "Device CONNECTs refused by authentication, per reason",
        ),
        &["reason"],
    )
    .expect("valid metric");
    let _ = crate::metrics::METRICS
        .registry
        .register(Box::new(c.clone()));
    c
});

pub static ACL_DENIED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "mqtt_proxy_acl_denied_total",
            "Device PUBLISH or SUBSCRIBE refused by the device's ACL",
        ),
        &["action"],
    )
    .expect("valid metric");
    let _ = crate::metrics::METRICS
        .registry
        .register(Box::new(c.clone()));
    c
});

/// Why a CONNECT was refused; the label of `mqtt_proxy_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No username, and anonymous access is off.
    NoCredentials,
    UnknownUser,
    BadPassword,
    /// Too many failures from this source address.
    RateLimited,
}

impl Denied {
    pub fn reason(self) -> &'static str {
        match self {
            Denied::NoCredentials => "no_credentials",
            Denied::UnknownUser => "unknown_user",
            Denied::BadPassword => "bad_password",
            Denied::RateLimited => "rate_limited",
        }
    }

    /// The CONNACK code: 3.1.1 §3.2.2.3 return codes, MQTT 5 §3.2.2.2 reason codes. An
    /// unknown user and a wrong password answer the same, so usernames cannot be probed.
    pub fn connack_code(self, proto: Protocol) -> u8 {
        match (proto, self) {
            (Protocol::V4, Denied::UnknownUser | Denied::BadPassword) => 0x04,
            (Protocol::V4, _) => 0x05,
            (Protocol::V5, Denied::UnknownUser | Denied::BadPassword) => 0x86,
            (Protocol::V5, Denied::NoCredentials) => 0x87,
            (Protocol::V5, Denied::RateLimited) => 0x9F,
        }
    }
}

/// What a CONNECT presented.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub client_id: &'a str,
    /// The CN/SAN of a verified client certificate, when the listener asks for one.
    pub cert_identity: Option<&'a str>,
    pub peer: IpAddr,
}

/// One connection's permission, refreshed when the users file changes.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The authenticated username (`None`: anonymous).
    pub username: Option<String>,
    client_id: String,
    acl: Acl,
    generation: u64,
}

impl Grant {
    /// A grant that allows everything (tests, and sessions without an authorizer).
    pub fn allow_all() -> Grant {
        Grant {
            username: None,
            client_id: String::new(),
            acl: Acl::AllowAll,
            generation: 0,
        }
    }
}

pub struct Authorizer {
    users: RwLock<Arc<Users>>,
    generation: AtomicU64,
    allow_anonymous: bool,
    limiter: FailureLimiter,
}

impl Authorizer {
    /// Loads the users file if one is configured and present.
    pub fn new(opts: &AuthOptions) -> Result<Authorizer, UsersError> {
        let users = match &opts.users_file {
            Some(p) if p.exists() => Users::load(p)?,
            _ => Users::default(),
        };
        LazyLock::force(&AUTH_FAILURES);
        LazyLock::force(&ACL_DENIED);
        Ok(Authorizer {
            users: RwLock::new(Arc::new(users)),
            generation: AtomicU64::new(1),
            allow_anonymous: opts.allow_anonymous,
            limiter: FailureLimiter::new(opts.failures_per_minute),
        })
    }

    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    pub fn user_count(&self) -> usize {
        self.snapshot().users.len()
    }

    fn snapshot(&self) -> Arc<Users> {
        match self.users.read() {
            Ok(u) => u.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts a new users file in force; grants pick it up at their next check.
    pub fn set_users(&self, users: Users) {
        let mut w = match self.users.write() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        *w = Arc::new(users);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Decides a CONNECT. Argon2 is deliberately slow, so verification runs on the blocking
    /// pool and never stalls other sessions' I/O.
    pub async fn authenticate(&self, c: Credentials<'_>) -> Result<Grant, Denied> {
        let result = self.decide(c).await;
        if let Err(d) = result {
            AUTH_FAILURES.with_label_values(&[d.reason()]).inc();
            if d != Denied::RateLimited {
                self.limiter.failed(c.peer);
            }
        }
        result
    }

    async fn decide(&self, c: Credentials<'_>) -> Result<Grant, Denied> {
        if self.limiter.blocked(c.peer) {
            return Err(Denied::RateLimited);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let users = self.snapshot();
        let grant = |username: Option<&str>, acl| Grant {
            username: username.map(str::to_string),
            client_id: c.client_id.to_string(),
            acl,
            generation,
        };
        // A verified certificate names the user; no password is needed then.
        if let Some(id) = c.cert_identity {
            if let Some(u) = users.users.get(id) {
                return Ok(grant(Some(id), u.acl(id, c.client_id)));
            }
        }
        // As mosquitto without a password file: when anonymous access is on and there are
        // no users to check against, credentials are not checked either.
        if self.allow_anonymous && users.users.is_empty() {
            return Ok(grant(None, Acl::AllowAll));
        }
        let Some(username) = c.username else {
            return if self.allow_anonymous {
                Ok(grant(None, Acl::AllowAll))
            } else {
                Err(Denied::NoCredentials)
            };
        };
        let user = users.users.get(username).cloned();
        let phc = user
            .as_ref()
            .map_or_else(|| users::dummy_hash().to_string(), |u| u.password.clone());
        let password = c.password.unwrap_or_default().to_string();
        let ok = tokio::task::spawn_blocking(move || users::verify_password(&phc, &password))
            .await
            .unwrap_or(false);
        match user {
            Some(u) if ok => Ok(grant(Some(username), u.acl(username, c.client_id))),
            Some(_) => Err(Denied::BadPassword),
            None => Err(Denied::UnknownUser),
        }
    }

    /// Brings `g` up to date with the users file in force: a changed ACL applies, a removed
    /// user's grant allows nothing. Cheap when nothing changed (one atomic load).
    fn refresh(&self, g: &mut Grant) {
        let now = self.generation.load(Ordering::Acquire);
        if g.generation == now || g.generation == 0 {
            return;
        }
        g.generation = now;
        let Some(name) = g.username.clone() else {
            return;
        };
        g.acl = match self.snapshot().users.get(&name) {
            Some(u) => u.acl(&name, &g.client_id),
            None => Acl::resolve(Some(&[]), Some(&[]), &name, &g.client_id),
        };
    }

    /// May this connection publish to `topic`? Counts a denial.
    pub fn may_publish(&self, g: &mut Grant, topic: &str) -> bool {
        self.refresh(g);
        let ok = g.acl.may_publish(topic);
        if !ok {
            ACL_DENIED.with_label_values(&["publish"]).inc();
        }
        ok
    }

    /// May this connection subscribe to `filter`? Counts a denial.
    pub fn may_subscribe(&self, g: &mut Grant, filter: &str) -> bool {
        self.refresh(g);
        let ok = g.acl.may_subscribe(filter);
        if !ok {
            ACL_DENIED.with_label_values(&["subscribe"]).inc();
        }
        ok
    }
}

#[cfg(test)]
mod tests;
