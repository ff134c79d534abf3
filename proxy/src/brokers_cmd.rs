//! `mqtt-proxy brokers add|list|remove`: edits the same store the proxy and its UI use, so
//! brokers can be managed from a shell or a provisioning script without the web UI.
//!
//! Passwords come from stdin (`--password-stdin`) so they stay out of `ps` and shell
//! history; they are never printed back.

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::broker::{BrokerConfig, MqttVersion, Secret};
use crate::store::BrokerStore;

// Parsed once per process; boxing `AddArgs` would only make the API clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand, Debug)]
pub enum BrokersCommand {
    /// Add a broker, or replace the one with the same id.
    Add(AddArgs),
    /// List the stored brokers (passwords are never shown).
    List {
        /// Print JSON (`{"brokers": [...]}`, passwords as "***") instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a broker by id.
    Remove { id: String },
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// Stable id [default: derived from --name, else random].
    #[arg(long)]
    pub id: Option<String>,
    /// Display name [default: the id].
    #[arg(long)]
    pub name: Option<String>,
    /// Host name or IP address of the broker.
    #[arg(long)]
    pub address: String,
    /// Port [default: 8883 with --tls, else 1883].
    #[arg(long)]
    pub port: Option<u16>,
    /// Prepended to each device's client id on this broker.
    #[arg(long)]
    pub client_id_prefix: Option<String>,
    #[arg(long)]
    pub username: Option<String>,
    /// Read the password from stdin (one trailing newline is trimmed).
    #[arg(long, conflicts_with = "password")]
    pub password_stdin: bool,
    /// The password as an argument. VISIBLE to other users in `ps` and kept in shell
    /// history: prefer --password-stdin.
    #[arg(long, value_parser = parse_secret)]
    pub password: Option<Secret>,
    /// Connect with TLS.
    #[arg(long)]
    pub tls: bool,
    /// Accept any server certificate (testing only).
    #[arg(long)]
    pub insecure_skip_verify: bool,
    /// PEM CA bundle used instead of the system roots.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate chain for mutual TLS (with --client-key).
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Serve device subscriptions from this broker too.
    #[arg(long)]
    pub bidirectional: bool,
    /// Forward what arrives on --subscription-topic to the other brokers.
    #[arg(long)]
    pub mirror: bool,
    /// Topic filter of device publishes sent here (repeatable; none = all).
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Filter the proxy subscribes to on this broker (repeatable).
    #[arg(long = "subscription-topic")]
    pub subscription_topics: Vec<String>,
    #[arg(long)]
    pub topic_prefix: Option<String>,
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub max_qos: Option<u8>,
    /// MQTT version towards the broker: 3.1.1 or 5.
    #[arg(long, value_parser = parse_version, default_value = "3.1.1")]
    pub mqtt_version: MqttVersion,
    /// Store the broker disabled.
    #[arg(long)]
    pub disabled: bool,
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret::new(s))
}

fn parse_version(s: &str) -> Result<MqttVersion, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("{s:?} is not an MQTT version (use 3.1.1 or 5)"))
}

/// Runs one subcommand against `<data_dir>/brokers.json`, using the process's stdin/stdout.
pub fn run(cmd: BrokersCommand, data_dir: &Path, secret: Option<&str>) -> anyhow::Result<()> {
    run_with(
        cmd,
        data_dir,
        secret,
        &mut io::stdin().lock(),
        &mut io::stdout().lock(),
    )
}

fn run_with(
    cmd: BrokersCommand,
    data_dir: &Path,
    secret: Option<&str>,
    stdin: &mut dyn BufRead,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut store = BrokerStore::open(data_dir, secret)?;
    match cmd {
        BrokersCommand::Add(args) => {
            let broker = build(args, stdin)?;
            let verb = if store.get(&broker.id).is_some() {
                "updated"
            } else {
                "added"
            };
            let id = broker.id.clone();
            store.upsert(broker)?;
            writeln!(out, "{verb} broker {id} in {}", store.path().display())?;
        }
        BrokersCommand::List { json } if json => {
            let brokers: Vec<_> = store.brokers().iter().map(redacted).collect();
            let text = serde_json::to_string_pretty(&serde_json::json!({ "brokers": brokers }))?;
            writeln!(out, "{text}")?;
        }
        BrokersCommand::List { .. } => write_table(store.brokers(), out)?,
        BrokersCommand::Remove { id } => {
            if !store.remove(&id)? {
                bail!("no broker with id {id:?} in {}", store.path().display());
            }
            writeln!(out, "removed broker {id}")?;
        }
    }
    Ok(())
}

/// Reads a password from stdin to EOF; one trailing newline (LF or CRLF) is trimmed.
pub fn read_password_stdin(stdin: &mut dyn BufRead) -> anyhow::Result<String> {
    let mut pw = String::new();
    stdin
        .read_to_string(&mut pw)
        .context("reading the password from stdin")?;
    if pw.ends_with('\n') {
        pw.pop();
        if pw.ends_with('\r') {
            pw.pop();
        }
    }
    if pw.is_empty() {
        bail!("--password-stdin: stdin was empty");
    }
    Ok(pw)
}

fn build(a: AddArgs, stdin: &mut dyn BufRead) -> anyhow::Result<BrokerConfig> {
    let password = if a.password_stdin {
        Some(Secret::new(read_password_stdin(stdin)?))
    } else {
        a.password.filter(|p| !p.expose().is_empty())
    };
    let id = match (a.id, &a.name) {
        (Some(id), _) => id,
        (None, Some(name)) if !slug(name).is_empty() => slug(name),
        _ => format!("broker-{:06x}", rand::random::<u32>() & 0xff_ffff),
    };
    let port = a.port.unwrap_or(if a.tls { 8883 } else { 1883 });
    let mut b = BrokerConfig::new(id, a.address, port);
    if let Some(name) = a.name {
        b.name = name;
    }
    b.client_id_prefix = a.client_id_prefix.unwrap_or_default();
    b.username = a.username.filter(|u| !u.is_empty());
    b.password = password;
    b.enabled = !a.disabled;
    b.use_tls = a.tls;
    b.insecure_skip_verify = a.insecure_skip_verify;
    b.ca_cert_path = a.ca_cert;
    b.client_cert_path = a.client_cert;
    b.client_key_path = a.client_key;
    b.bidirectional = a.bidirectional;
    b.mirror = a.mirror;
    b.topics = a.topics;
    b.subscription_topics = a.subscription_topics;
    b.topic_prefix = a.topic_prefix.filter(|p| !p.is_empty());
    b.max_qos = a.max_qos;
    b.mqtt_version = a.mqtt_version;
    Ok(b)
}

/// `"Home Broker #2"` → `"home-broker-2"`.
fn slug(name: &str) -> String {
    let lower = name.to_lowercase();
    let parts: Vec<_> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
        .collect();
    parts.join("-")
}

fn redacted(b: &BrokerConfig) -> BrokerConfig {
    let mut b = b.clone();
    b.password = b.password.map(|_| Secret::new("***"));
    b
}

fn write_table(brokers: &[BrokerConfig], out: &mut dyn Write) -> io::Result<()> {
    let yes_no = |v: bool| if v { "yes" } else { "no" }.to_string();
    let header = [
        "ID",
        "NAME",
        "ADDRESS",
        "TLS",
        "ENABLED",
        "BIDIRECTIONAL",
        "TOPICS",
    ];
    let rows: Vec<[String; 7]> = brokers
        .iter()
        .map(|b| {
            let topics = if b.topics.is_empty() {
                "(all)".to_string()
            } else {
                b.topics.join(",")
            };
            [
                b.id.clone(),
                b.name.clone(),
                format!("{}:{}", b.address, b.port),
                yes_no(b.use_tls),
                yes_no(b.enabled),
                yes_no(b.bidirectional),
                topics,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &[&str]| {
        let padded: Vec<_> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", padded.join("  ").trim_end())
    };
    line(&header)?;
    for row in &rows {
        line(&row.each_ref().map(String::as_str))?;
    }
    if rows.is_empty() {
        writeln!(out, "(no brokers)")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: BrokersCommand,
    }

    fn run_args(dir: &Path, args: &[&str], stdin: &str) -> anyhow::Result<String> {
        let cli = Cli::try_parse_from(std::iter::once("brokers").chain(args.iter().copied()))?;
        let mut out = Vec::new();
        run_with(
            cli.cmd,
            dir,
            Some("s3cret"),
            &mut stdin.as_bytes(),
            &mut out,
        )?;
        Ok(String::from_utf8(out)?)
    }

    #[test]
    fn add_list_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let out = run_args(
            d,
            &[
                "add",
                "--name",
                "Home Broker",
                "--address",
                "10.0.0.2",
                "--tls",
                "--username",
                "u",
                "--password-stdin",
                "--topic",
                "a/#",
                "--topic",
                "b/+",
                "--mqtt-version",
                "5",
                "--max-qos",
                "1",
            ],
            "hunter2\n",
        )
        .expect("adds");
        assert!(out.starts_with("added broker home-broker"), "{out}");

        let store = BrokerStore::open(d, Some("s3cret")).expect("opens");
        let b = store.get("home-broker").expect("stored");
        assert_eq!(b.password.as_ref().map(Secret::expose), Some("hunter2"));
        assert_eq!(
            (b.port, b.use_tls, b.mqtt_version),
            (8883, true, MqttVersion::V5)
        );
        assert_eq!(b.topics, ["a/#", "b/+"]);

        let json = run_args(d, &["list", "--json"], "").expect("lists");
        assert!(!json.contains("hunter2"), "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(v["brokers"][0]["id"], "home-broker");
        assert_eq!(v["brokers"][0]["password"], "***");

        let table = run_args(d, &["list"], "").expect("lists");
        assert!(
            table.contains("10.0.0.2:8883") && table.contains("a/#,b/+"),
            "{table}"
        );
        assert!(!table.contains("hunter2"));

        let out = run_args(
            d,
            &[
                "add",
                "--id",
                "home-broker",
                "--address",
                "h2",
                "--disabled",
            ],
            "",
        );
        assert!(out
            .expect("replaces")
            .starts_with("updated broker home-broker"));
        let store = BrokerStore::open(d, Some("s3cret")).expect("opens");
        assert_eq!(store.brokers().len(), 1);
        assert!(!store.brokers()[0].enabled);

        run_args(d, &["remove", "home-broker"], "").expect("removes");
        let e = run_args(d, &["remove", "home-broker"], "").unwrap_err();
        assert!(e.to_string().contains("no broker with id"), "{e}");
        let table = run_args(d, &["list"], "").expect("lists");
        assert!(table.contains("(no brokers)"), "{table}");
    }

    #[test]
    fn bad_input_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        assert!(run_args(d, &["add", "--address", "h", "--password-stdin"], "").is_err());
        assert!(run_args(d, &["add", "--address", "h", "--mqtt-version", "4.1"], "").is_err());
        assert!(run_args(d, &["add", "--address", "h", "--max-qos", "3"], "").is_err());
        let e = run_args(d, &["add", "--address", "h", "--topic", "a/#/b"], "").unwrap_err();
        assert!(e.to_string().contains("topics"), "{e}");
        let out = run_args(d, &["add", "--address", "h"], "").expect("random id");
        assert!(out.starts_with("added broker broker-"), "{out}");
    }

    #[test]
    fn debug_of_args_hides_the_password() {
        let cli = Cli::try_parse_from(["b", "add", "--address", "h", "--password", "hunter2"])
            .expect("parses");
        assert!(!format!("{:?}", cli.cmd).contains("hunter2"));
    }
}
