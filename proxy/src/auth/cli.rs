//! `mqtt-proxy users add|remove|list`: edits the device users file (default
//! `<data-dir>/users.json`, or `--users-file`). The password is read from stdin
//! (`--password-stdin`) or a tty prompt without echo, hashed with Argon2id, and never
//! printed; the file is rewritten atomically with mode 0600. A running proxy picks the
//! change up within a second (hot reload).

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{bail, Context as _};

use super::users::{hash_password, User, Users};

#[derive(clap::Subcommand, Debug)]
pub enum UsersCommand {
    /// Add a device user, or replace the password and ACL of an existing one.
    Add {
        username: String,
        /// Read the password from stdin (one trailing newline is trimmed) instead of
        /// prompting on the terminal.
        #[arg(long)]
        password_stdin: bool,
        /// Topic filter the device may publish to (repeatable; `%u` username, `%c` client
        /// id) [default: all].
        #[arg(long = "publish", value_name = "FILTER")]
        publish: Vec<String>,
        /// Topic filter the device may subscribe to (repeatable) [default: all].
        #[arg(long = "subscribe", value_name = "FILTER")]
        subscribe: Vec<String>,
    },
    /// Remove a device user.
    Remove { username: String },
    /// List device users and their ACLs (never hashes).
    List,
}

pub fn run(cmd: UsersCommand, path: &Path) -> anyhow::Result<()> {
    run_with(
        cmd,
        path,
        &mut io::stdin().lock(),
        &mut io::stdout().lock(),
        &prompt,
    )
}

fn prompt() -> anyhow::Result<String> {
    if !io::stdin().is_terminal() {
        bail!("no terminal to prompt for the password: use --password-stdin");
    }
    let pw = rpassword::prompt_password("Password: ").context("reading the password")?;
    let again = rpassword::prompt_password("Repeat: ").context("reading the password")?;
    if pw != again {
        bail!("the passwords differ");
    }
    Ok(pw)
}

fn run_with(
    cmd: UsersCommand,
    path: &Path,
    stdin: &mut dyn BufRead,
    out: &mut dyn Write,
    prompt: &dyn Fn() -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    let mut users = if path.exists() {
        Users::load(path)?
    } else {
        Users::default()
    };
    match cmd {
        UsersCommand::Add {
            username,
            password_stdin,
            publish,
            subscribe,
        } => {
            if username.is_empty() || username.len() > 256 {
                bail!("the username must be 1 to 256 bytes");
            }
            let password = if password_stdin {
                crate::brokers_cmd::read_password_stdin(stdin)?
            } else {
                prompt()?
            };
            if password.is_empty() {
                bail!("the password must not be empty");
            }
            let user = User {
                password: hash_password(&password)?,
                publish: (!publish.is_empty()).then_some(publish),
                subscribe: (!subscribe.is_empty()).then_some(subscribe),
            };
            let replaced = users.users.insert(username.clone(), user).is_some();
            // Validate before writing: a bad filter must not land in the file.
            Users::parse(path, &serde_json::to_string(&users)?)?;
            users.save(path)?;
            let verb = if replaced { "updated" } else { "added" };
            writeln!(out, "{verb} user {username} in {}", path.display())?;
        }
        UsersCommand::Remove { username } => {
            if users.users.remove(&username).is_none() {
                bail!("no user {username:?} in {}", path.display());
            }
            users.save(path)?;
            writeln!(out, "removed user {username}")?;
        }
        UsersCommand::List => {
            let all = |l: &Option<Vec<String>>| l.as_ref().map_or("#".into(), |v| v.join(","));
            for (name, u) in &users.users {
                writeln!(
                    out,
                    "{name}\tpublish={}\tsubscribe={}",
                    all(&u.publish),
                    all(&u.subscribe)
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::auth::users::verify_password;

    fn add(name: &str, publish: &[&str]) -> UsersCommand {
        UsersCommand::Add {
            username: name.into(),
            password_stdin: true,
            publish: publish.iter().map(|s| s.to_string()).collect(),
            subscribe: vec![],
        }
    }

    fn no_tty() -> anyhow::Result<String> {
        bail!("no tty in tests")
    }

    #[test]
    fn add_list_remove_round_trip_without_echo() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.json");
        let mut out = Vec::new();
        run_with(
            add("alice", &["devices/%u/#"]),
            &path,
            &mut &b"pw-alice\n"[..],
            &mut out,
            &no_tty,
        )
        .expect("add");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains("pw-alice"), "only the hash is stored");
        let users = Users::load(&path).expect("load");
        assert!(verify_password(&users.users["alice"].password, "pw-alice"));

        out.clear();
        run_with(UsersCommand::List, &path, &mut &b""[..], &mut out, &no_tty).expect("list");
        let listed = String::from_utf8(out.clone()).expect("utf8");
        assert!(
            listed.contains("alice\tpublish=devices/%u/#\tsubscribe=#"),
            "{listed}"
        );
        assert!(!listed.contains("argon2"), "{listed}");

        run_with(
            UsersCommand::Remove {
                username: "alice".into(),
            },
            &path,
            &mut &b""[..],
            &mut out,
            &no_tty,
        )
        .expect("remove");
        assert!(Users::load(&path).expect("load").users.is_empty());
    }

    #[test]
    fn bad_input_is_refused_and_leaves_the_file_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.json");
        let mut out = Vec::new();
        let e = run_with(
            add("bob", &["a/#/b"]),
            &path,
            &mut &b"pw\n"[..],
            &mut out,
            &no_tty,
        )
        .expect_err("bad filter");
        assert!(e.to_string().contains("a/#/b"), "{e}");
        assert!(!path.exists());
        let e = run_with(add("bob", &[]), &path, &mut &b""[..], &mut out, &no_tty)
            .expect_err("empty stdin");
        assert!(e.to_string().contains("empty"), "{e}");
        let prompt_add = UsersCommand::Add {
            username: "bob".into(),
            password_stdin: false,
            publish: vec![],
            subscribe: vec![],
        };
        let e = run_with(prompt_add, &path, &mut &b""[..], &mut out, &no_tty).expect_err("no tty");
        assert!(e.to_string().contains("tty"), "{e}");
        let e = run_with(
            UsersCommand::Remove {
                username: "nobody".into(),
            },
            &path,
            &mut &b""[..],
            &mut out,
            &no_tty,
        )
        .expect_err("unknown user");
        assert!(e.to_string().contains("nobody"), "{e}");
    }
}
