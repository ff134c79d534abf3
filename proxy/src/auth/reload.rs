//! Hot reload of the users file, on the same content-hash polling as the brokers file
//! ([`crate::reload::ChangePoller`]): a valid new version is put in force, an invalid one
//! is logged once and the previous users stay in force.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{error, info};

use super::{Authorizer, Users};
use crate::reload::{hash_files, ChangePoller};

pub fn spawn(path: PathBuf, auth: Arc<Authorizer>, every: Duration) -> JoinHandle<()> {
    tokio::spawn(watch(path, auth, every))
}

pub async fn watch(path: PathBuf, auth: Arc<Authorizer>, every: Duration) {
    let fingerprint = || hash_files([path.as_path()]);
    let mut poller = ChangePoller::new(every, fingerprint());
    let mut last_error: Option<String> = None;
    loop {
        let now = poller.changed(fingerprint).await;
        let p = path.clone();
        let loaded = tokio::task::spawn_blocking(move || Users::load(&p)).await;
        match loaded {
            Ok(Ok(users)) => {
                info!(file = %path.display(), users = users.users.len(), "device users reloaded");
                auth.set_users(users);
                last_error = None;
            }
            Ok(Err(e)) => {
                let e = e.to_string();
                if last_error.as_deref() != Some(e.as_str()) {
                    error!(file = %path.display(), error = %e, "invalid users file: keeping the previous users");
                }
                last_error = Some(e);
            }
            Err(e) => error!(error = %e, "users reload task failed"),
        }
        poller.set(Some(now));
    }
}
