//! `mqtt-proxy secret rotate`: re-encrypts the broker store under a new
//! `MQTT_PROXY_SECRET`. The current secret comes from the environment, the new one from
//! stdin (never an argument, so it stays out of `ps` and shell history); the store is
//! rewritten atomically and the old file is kept until the new one has been read back.

use std::io::{self, BufRead, Write};
use std::path::Path;

use anyhow::{bail, Context as _};

use crate::store::BrokerStore;

#[derive(clap::Subcommand, Debug)]
pub enum SecretCommand {
    /// Re-encrypt the store: old secret in MQTT_PROXY_SECRET, the new one on stdin.
    /// Restart the proxy with the new MQTT_PROXY_SECRET afterwards.
    Rotate,
}

pub fn run(cmd: SecretCommand, data_dir: &Path, secret: Option<&str>) -> anyhow::Result<()> {
    run_with(
        cmd,
        data_dir,
        secret,
        &mut io::stdin().lock(),
        &mut io::stdout().lock(),
    )
}

fn run_with(
    cmd: SecretCommand,
    data_dir: &Path,
    secret: Option<&str>,
    stdin: &mut dyn BufRead,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match cmd {
        SecretCommand::Rotate => {
            let Some(old) = secret else {
                bail!("MQTT_PROXY_SECRET must hold the current secret");
            };
            let new = crate::brokers_cmd::read_password_stdin(stdin)
                .context("reading the new secret from stdin")?;
            if new == old {
                bail!("the new secret is the current one");
            }
            let mut store = BrokerStore::open(data_dir, Some(old))?;
            store.rotate_secret(&new)?;
            writeln!(
                out,
                "re-encrypted {} broker(s) in {}; restart the proxy with the new MQTT_PROXY_SECRET",
                store.brokers().len(),
                store.path().display()
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::broker::{BrokerConfig, Secret};

    #[test]
    fn rotate_re_encrypts_and_the_old_secret_stops_working() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = BrokerStore::open(dir.path(), Some("old-secret")).expect("open");
        let mut b = BrokerConfig::new("up", "127.0.0.1", 1883);
        b.username = Some("u".into());
        b.password = Some(Secret::new("broker-pw".to_string()));
        store.upsert(b).expect("save");
        let mut out = Vec::new();
        run_with(
            SecretCommand::Rotate,
            dir.path(),
            Some("old-secret"),
            &mut &b"new-secret\n"[..],
            &mut out,
        )
        .expect("rotate");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("1 broker"), "{text}");
        assert!(!text.contains("new-secret") && !text.contains("broker-pw"));

        let reopened = BrokerStore::open(dir.path(), Some("new-secret")).expect("new secret");
        let pw = reopened
            .get("up")
            .and_then(|b| b.password.clone())
            .expect("password");
        assert_eq!(pw.expose(), "broker-pw");
        assert!(
            BrokerStore::open(dir.path(), Some("old-secret")).is_err(),
            "old secret no longer opens it"
        );
        let mode = std::fs::metadata(reopened.path())
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names,
            ["brokers.json"],
            "the pre-rotate copy is gone once verified"
        );

        let e = run_with(
            SecretCommand::Rotate,
            dir.path(),
            Some("not-it-4711"),
            &mut &b"x\n"[..],
            &mut Vec::new(),
        )
        .expect_err("wrong current secret");
        assert!(!e.to_string().contains("not-it-4711"), "{e}");
        let e = run_with(
            SecretCommand::Rotate,
            dir.path(),
            None,
            &mut &b"x\n"[..],
            &mut Vec::new(),
        )
        .expect_err("no current secret");
        assert!(e.to_string().contains("MQTT_PROXY_SECRET"), "{e}");
    }
}
