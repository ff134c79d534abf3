//! One configuration, validated once: TOML file (`--config`), then environment
//! (`MQTT_PROXY_*`), then command-line flags, each layer overriding the one before.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::broker::OverflowPolicy;
use crate::queue::QueueLimits;

/// When the device gets its PUBACK/PUBREC for a QoS 1/2 publish.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AckPolicy {
    /// Once the message is in every target broker's queue (fast; a proxy crash loses
    /// what is queued unless spooled).
    #[default]
    Queued,
    /// Once at least one broker acknowledged it.
    Any,
    /// Once every target broker acknowledged it (a down broker throttles the device
    /// through its in-flight window).
    All,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Settings of every device session.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub connect_timeout: Duration,
    pub max_packet_size: usize,
    pub ack_policy: AckPolicy,
    /// How long a closing upstream may take to deliver what it still holds.
    pub drain_timeout: Duration,
    /// Messages from brokers waiting for the device's in-flight window.
    pub to_device_buffer: usize,
    /// Receive Maximum announced to MQTT 5 devices.
    pub receive_maximum: u16,
    /// Where brokers with `spool: true` keep their spool files (the data directory).
    pub spool_dir: Option<PathBuf>,
    /// Bytes held for one device: messages in flight to it plus waiting (backlog).
    pub to_device_max_bytes: usize,
    /// A write to a device that takes longer than this closes the connection (a device
    /// that does not read must not hold its session, keepalive, takeover or shutdown).
    pub device_write_timeout: Duration,
    /// Subscriptions per device session; beyond it SUBACK says failure (quota exceeded).
    pub max_subscriptions: usize,
    /// Persistent sessions kept for absent devices, and the bytes of messages they hold.
    pub max_kept_sessions: usize,
    pub max_kept_session_bytes: usize,
    /// Topic aliases an MQTT 5 device may set up towards the proxy (Topic Alias Maximum).
    pub topic_alias_max: u16,
    /// Per-device topic, rate and idle limits.
    pub limits: crate::limits::DeviceLimits,
    /// How long a device's CONNACK waits for its bidirectional upstreams' first CONNACK, so
    /// that `session present` reflects theirs and its first SUBSCRIBE is in force upstream
    /// when its SUBACK comes (a broker that is down answers at once by refusing the TCP
    /// connection; one that hangs costs at most this).
    pub connack_wait: Duration,
    /// Appended to every upstream client id of this process (see [`crate::client_id`]):
    /// `None` in device mode, `@<instance id>` in instance mode.
    pub client_id_suffix: Option<String>,
    /// Coalescing window (`--coalesce-ms`, zero: off): device packets arriving within it
    /// after the last batch wait for its end and are forwarded together.
    pub coalesce: Duration,
}

impl SessionOptions {
    pub fn keep_limits(&self) -> crate::registry::KeepLimits {
        crate::registry::KeepLimits {
            max_sessions: self.max_kept_sessions,
            max_bytes: self.max_kept_session_bytes,
        }
    }
}

/// Loop prevention for mirrored messages.
#[derive(Clone, Debug)]
pub struct MirrorOptions {
    /// Distinguishes this proxy's mirror client ids from other proxies' on the same brokers.
    pub instance_id: String,
    /// MQTT 5 user property carrying the hop count of mirrored messages.
    pub hop_property: String,
    /// A message whose hop count has reached this is not mirrored again.
    pub max_hops: u32,
    /// Mirror only while holding this Lease (one replica of several mirrors).
    #[cfg(feature = "lease")]
    pub lease: Option<crate::mirror_lease::MirrorLease>,
}

impl Default for MirrorOptions {
    fn default() -> Self {
        let instance_id = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| format!("{:06x}", rand::random::<u32>() & 0xff_ffff));
        Self {
            instance_id,
            hop_property: "mqtt-proxy-hop".into(),
            max_hops: 1,
            #[cfg(feature = "lease")]
            lease: None,
        }
    }
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub mqtt_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub brokers_file: Option<PathBuf>,
    pub log_format: LogFormat,
    pub max_connections: usize,
    pub session: SessionOptions,
    pub queue: QueueLimits,
    /// Cap on the bytes all queues of the process hold together.
    pub queue_total_max_bytes: usize,
    pub mirror: MirrorOptions,
    /// Device authentication (users file, anonymous opt-in).
    pub auth: crate::auth::AuthOptions,
    /// Device endpoints beyond `mqtt_listen` (TLS, WebSocket) and per-address limits.
    pub listen: crate::listener::ListenOptions,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mqtt_listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            http_listen: SocketAddr::from(([0, 0, 0, 0], 3000)),
            data_dir: PathBuf::from("./data"),
            brokers_file: None,
            log_format: LogFormat::Text,
            max_connections: 10_000,
            session: SessionOptions {
                connect_timeout: Duration::from_secs(10),
                max_packet_size: 1 << 20,
                ack_policy: AckPolicy::Queued,
                drain_timeout: Duration::from_secs(5),
                to_device_buffer: 10_000,
                receive_maximum: 1024,
                spool_dir: None,
                to_device_max_bytes: 16 << 20,
                device_write_timeout: Duration::from_secs(30),
                max_subscriptions: 10_000,
                max_kept_sessions: 10_000,
                max_kept_session_bytes: 256 << 20,
                topic_alias_max: 64,
                limits: crate::limits::DeviceLimits::default(),
                connack_wait: Duration::from_secs(2),
                client_id_suffix: None,
                coalesce: Duration::ZERO,
            },
            queue: QueueLimits::default(),
            queue_total_max_bytes: 512 << 20,
            mirror: MirrorOptions::default(),
            auth: crate::auth::AuthOptions {
                users_file: None,
                allow_anonymous: false,
                failures_per_minute: 10,
            },
            listen: crate::listener::ListenOptions::default(),
        }
    }
}

/// The TOML file. Keys are snake_case; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub mqtt_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub brokers_file: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub ack_policy: Option<AckPolicy>,
    pub max_connections: Option<usize>,
    pub max_packet_size: Option<usize>,
    pub connect_timeout_secs: Option<u64>,
    pub drain_timeout_secs: Option<u64>,
    pub queue_max_messages: Option<usize>,
    pub queue_max_bytes: Option<usize>,
    pub queue_overflow: Option<OverflowPolicy>,
    pub queue_total_max_bytes: Option<usize>,
    pub instance_id: Option<String>,
    pub upstream_client_id: Option<crate::client_id::UpstreamClientId>,
    pub hop_property: Option<String>,
    pub max_hops: Option<u32>,
    pub users_file: Option<PathBuf>,
    pub allow_anonymous: Option<bool>,
    pub auth_failures_per_minute: Option<u32>,
    pub no_plain: Option<bool>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub tls_listen: Option<SocketAddr>,
    pub ws_listen: Option<SocketAddr>,
    pub wss_listen: Option<SocketAddr>,
    pub ws_path: Option<String>,
    pub max_connections_per_address: Option<usize>,
    pub max_inflight: Option<u16>,
    pub max_topic_length: Option<usize>,
    pub max_topic_levels: Option<usize>,
    pub max_publish_rate: Option<u32>,
    pub publish_burst: Option<u32>,
    pub publish_rate_action: Option<crate::limits::RateAction>,
    pub idle_timeout_secs: Option<u64>,
    pub to_device_max_bytes: Option<usize>,
    pub device_write_timeout_secs: Option<u64>,
    pub max_subscriptions: Option<usize>,
    pub max_kept_sessions: Option<usize>,
    pub max_kept_session_bytes: Option<usize>,
    pub connack_wait_ms: Option<u64>,
    pub coalesce_ms: Option<u64>,
}

#[derive(Debug, Parser)]
#[command(
    name = "mqtt-proxy",
    version,
    about = "MQTT 1:N device multiplexer: one device connection, N upstream brokers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

// Parsed once per process; boxing the broker arguments would only make the API clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the broker store (<data-dir>/brokers.json).
    Brokers {
        #[command(subcommand)]
        cmd: crate::brokers_cmd::BrokersCommand,
    },
    /// Manage the store's encryption secret.
    Secret {
        #[command(subcommand)]
        cmd: crate::secret_cmd::SecretCommand,
    },
    /// Manage device users (<data-dir>/users.json or --users-file).
    Users {
        #[command(subcommand)]
        cmd: crate::auth::cli::UsersCommand,
    },
}

#[derive(Debug, Default, clap::Args)]
pub struct RunArgs {
    /// MQTT listener for devices [default: 0.0.0.0:1883]
    #[arg(long, env = "MQTT_PROXY_MQTT_LISTEN", global = true)]
    pub mqtt_listen: Option<SocketAddr>,
    /// HTTP listener for the API, UI and /metrics [default: 0.0.0.0:3000]
    #[arg(long, env = "MQTT_PROXY_HTTP_LISTEN", global = true)]
    pub http_listen: Option<SocketAddr>,
    /// Directory of the broker store and spool [default: ./data]
    #[arg(long, env = "MQTT_PROXY_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Read the broker set from this JSON/YAML file and hot-reload it (Kubernetes mode)
    #[arg(long, env = "MQTT_PROXY_BROKERS_FILE")]
    pub brokers_file: Option<PathBuf>,
    /// TOML configuration file (overridden by environment and flags)
    #[arg(long, env = "MQTT_PROXY_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Log format [default: text]
    #[arg(long, env = "MQTT_PROXY_LOG_FORMAT", value_enum, global = true)]
    pub log_format: Option<LogFormat>,
    /// When devices get PUBACK/PUBREC [default: queued]
    #[arg(long, env = "MQTT_PROXY_ACK_POLICY", value_enum)]
    pub ack_policy: Option<AckPolicy>,
    /// Maximum concurrent device connections [default: 10000]
    #[arg(long, env = "MQTT_PROXY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Maximum MQTT packet size accepted from devices, bytes [default: 1048576]
    #[arg(long, env = "MQTT_PROXY_MAX_PACKET_SIZE")]
    pub max_packet_size: Option<usize>,
    /// Per-broker queue cap in messages [default: 100000]
    #[arg(long, env = "MQTT_PROXY_QUEUE_MAX_MESSAGES")]
    pub queue_max_messages: Option<usize>,
    /// Per-broker queue cap in bytes [default: 67108864]
    #[arg(long, env = "MQTT_PROXY_QUEUE_MAX_BYTES")]
    pub queue_max_bytes: Option<usize>,
    /// Cap on the bytes all queues together hold [default: 536870912]
    #[arg(long, env = "MQTT_PROXY_QUEUE_TOTAL_MAX_BYTES")]
    pub queue_total_max_bytes: Option<usize>,
    /// Seconds a closing upstream may spend delivering what it holds [default: 5]
    #[arg(long, env = "MQTT_PROXY_DRAIN_TIMEOUT_SECS")]
    pub drain_timeout_secs: Option<u64>,
    /// Unique name of this proxy instance, used in its mirror client ids (and upstream
    /// client ids with `--upstream-client-id instance`) [default: $HOSTNAME]
    #[arg(long, env = "MQTT_PROXY_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Upstream client ids: `device` ({prefix}{device id}) or `instance`
    /// ({prefix}{device id}@{instance id}, for replicas that may serve the same device at
    /// once) [default: device]
    #[arg(long, env = "MQTT_PROXY_UPSTREAM_CLIENT_ID", value_enum)]
    pub upstream_client_id: Option<crate::client_id::UpstreamClientId>,
    /// Run mirror sessions only while holding this coordination.k8s.io Lease (Kubernetes,
    /// several replicas: exactly one mirrors) [default: off, mirror always]
    #[arg(long, env = "MQTT_PROXY_MIRROR_LEASE")]
    pub mirror_lease: Option<String>,
    /// Namespace of the mirror Lease [default: the pod's own]
    #[arg(long, env = "MQTT_PROXY_MIRROR_LEASE_NAMESPACE")]
    pub mirror_lease_namespace: Option<String>,
    /// Seconds a replica that stopped renewing keeps the mirror Lease [default: 15]
    #[arg(long, env = "MQTT_PROXY_MIRROR_LEASE_SECS")]
    pub mirror_lease_secs: Option<u64>,
    /// MQTT 5 user property that carries the hop count of mirrored messages
    #[arg(long, env = "MQTT_PROXY_HOP_PROPERTY")]
    pub hop_property: Option<String>,
    /// Hop count at which a mirrored message is not mirrored again [default: 1]
    #[arg(long, env = "MQTT_PROXY_MAX_HOPS")]
    pub max_hops: Option<u32>,
    /// Device users file (JSON/YAML, Argon2id hashes, ACLs), hot-reloaded
    /// [default: <data-dir>/users.json]
    #[arg(long, env = "MQTT_PROXY_USERS_FILE", global = true)]
    pub users_file: Option<PathBuf>,
    /// Accept devices that send no username. Off by default: without users and without
    /// this flag every CONNECT is refused
    #[arg(long, env = "MQTT_PROXY_ALLOW_ANONYMOUS", global = true)]
    pub allow_anonymous: bool,
    /// Failed device logins per source address and minute before that address is refused
    /// unchecked for the rest of the minute (0: no limit) [default: 10]
    #[arg(long, env = "MQTT_PROXY_AUTH_FAILURES_PER_MINUTE")]
    pub auth_failures_per_minute: Option<u32>,
    /// Do not serve plain (unencrypted) MQTT on --mqtt-listen: TLS/WebSocket only
    #[arg(long, env = "MQTT_PROXY_NO_PLAIN")]
    pub no_plain: bool,
    /// PEM certificate chain of the device TLS listener (hot-reloaded)
    #[arg(long, env = "MQTT_PROXY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the device TLS listener (hot-reloaded)
    #[arg(long, env = "MQTT_PROXY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Require device certificates signed by this PEM CA bundle; the certificate's CN
    /// (else first DNS SAN) becomes the username
    #[arg(long, env = "MQTT_PROXY_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// TLS listener, served when a certificate is configured [default: 0.0.0.0:8883]
    #[arg(long, env = "MQTT_PROXY_TLS_LISTEN")]
    pub tls_listen: Option<SocketAddr>,
    /// MQTT over WebSocket listener [default: off]
    #[arg(long, env = "MQTT_PROXY_WS_LISTEN")]
    pub ws_listen: Option<SocketAddr>,
    /// MQTT over secure WebSocket listener (needs the TLS certificate) [default: off]
    #[arg(long, env = "MQTT_PROXY_WSS_LISTEN")]
    pub wss_listen: Option<SocketAddr>,
    /// HTTP path of the WebSocket endpoints [default: /mqtt]
    #[arg(long, env = "MQTT_PROXY_WS_PATH")]
    pub ws_path: Option<String>,
    /// Open device connections per source address (0: no limit) [default: 1000]
    #[arg(long, env = "MQTT_PROXY_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<usize>,
    /// QoS 1/2 publishes a device may have unacknowledged (MQTT 5 Receive Maximum; more
    /// closes the connection) [default: 1024]
    #[arg(long, env = "MQTT_PROXY_MAX_INFLIGHT")]
    pub max_inflight: Option<u16>,
    /// Bytes of a device's topic name or filter [default: 1024]
    #[arg(long, env = "MQTT_PROXY_MAX_TOPIC_LENGTH")]
    pub max_topic_length: Option<usize>,
    /// Levels of a device's topic name or filter [default: 64]
    #[arg(long, env = "MQTT_PROXY_MAX_TOPIC_LEVELS")]
    pub max_topic_levels: Option<usize>,
    /// Publishes per second per device (0: unlimited) [default: 0]
    #[arg(long, env = "MQTT_PROXY_MAX_PUBLISH_RATE")]
    pub max_publish_rate: Option<u32>,
    /// Publishes a device may send at once above its rate [default: 1000]
    #[arg(long, env = "MQTT_PROXY_PUBLISH_BURST")]
    pub publish_burst: Option<u32>,
    /// Over the publish rate: drop the publish or disconnect the device [default: drop]
    #[arg(long, env = "MQTT_PROXY_PUBLISH_RATE_ACTION", value_enum)]
    pub publish_rate_action: Option<crate::limits::RateAction>,
    /// Seconds a device with keepalive 0 may stay silent (0: forever) [default: 3600]
    #[arg(long, env = "MQTT_PROXY_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Bytes held per device for delivery (in flight + waiting) [default: 16777216]
    #[arg(long, env = "MQTT_PROXY_TO_DEVICE_MAX_BYTES")]
    pub to_device_max_bytes: Option<usize>,
    /// Seconds a write to a device may take before it is disconnected [default: 30]
    #[arg(long, env = "MQTT_PROXY_DEVICE_WRITE_TIMEOUT_SECS")]
    pub device_write_timeout_secs: Option<u64>,
    /// Milliseconds a device's packets that follow its last batch closely are held, to be
    /// forwarded (and acknowledged) together: fewer writes per message, at most this much
    /// added latency; 0 is off, at most 1000 [default: 0]
    #[arg(long, env = "MQTT_PROXY_COALESCE_MS")]
    pub coalesce_ms: Option<u64>,
    /// Subscriptions per device session [default: 10000]
    #[arg(long, env = "MQTT_PROXY_MAX_SUBSCRIPTIONS")]
    pub max_subscriptions: Option<usize>,
    /// Persistent sessions kept for absent devices [default: 10000]
    #[arg(long, env = "MQTT_PROXY_MAX_KEPT_SESSIONS")]
    pub max_kept_sessions: Option<usize>,
    /// Bytes of undelivered messages all kept sessions hold together [default: 268435456]
    #[arg(long, env = "MQTT_PROXY_MAX_KEPT_SESSION_BYTES")]
    pub max_kept_session_bytes: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid setting `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl Config {
    /// Layers file, environment and flags (clap already merged env and flags).
    pub fn resolve(args: &RunArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(p) => Self::read_file(p)?,
            None => FileConfig::default(),
        };
        let mut c = Config::default();
        macro_rules! layer {
            ($dst:expr, $name:ident) => {
                if let Some(v) = args.$name.clone().or(file.$name.clone()) {
                    $dst = v;
                }
            };
        }
        layer!(c.mqtt_listen, mqtt_listen);
        layer!(c.http_listen, http_listen);
        layer!(c.data_dir, data_dir);
        layer!(c.log_format, log_format);
        layer!(c.max_connections, max_connections);
        layer!(c.session.ack_policy, ack_policy);
        layer!(c.session.max_packet_size, max_packet_size);
        layer!(c.queue.max_messages, queue_max_messages);
        layer!(c.queue.max_bytes, queue_max_bytes);
        c.brokers_file = args.brokers_file.clone().or(file.brokers_file);
        if let Some(s) = args.drain_timeout_secs.or(file.drain_timeout_secs) {
            c.session.drain_timeout = Duration::from_secs(s);
        }
        if let Some(s) = file.connect_timeout_secs {
            c.session.connect_timeout = Duration::from_secs(s);
        }
        layer!(c.queue_total_max_bytes, queue_total_max_bytes);
        layer!(c.mirror.instance_id, instance_id);
        c.session.client_id_suffix = crate::client_id::suffix(
            args.upstream_client_id
                .or(file.upstream_client_id)
                .unwrap_or_default(),
            &c.mirror.instance_id,
        );
        layer!(c.mirror.hop_property, hop_property);
        #[cfg(feature = "lease")]
        {
            c.mirror.lease = args
                .mirror_lease
                .clone()
                .filter(|n| !n.is_empty())
                .map(|name| crate::mirror_lease::MirrorLease {
                    name,
                    namespace: args
                        .mirror_lease_namespace
                        .clone()
                        .filter(|n| !n.is_empty()),
                    duration: Duration::from_secs(args.mirror_lease_secs.unwrap_or(15).max(3)),
                });
        }
        layer!(c.mirror.max_hops, max_hops);
        layer!(c.session.to_device_max_bytes, to_device_max_bytes);
        layer!(c.session.max_subscriptions, max_subscriptions);
        layer!(c.session.max_kept_sessions, max_kept_sessions);
        layer!(c.session.max_kept_session_bytes, max_kept_session_bytes);
        if let Some(s) = args
            .device_write_timeout_secs
            .or(file.device_write_timeout_secs)
        {
            c.session.device_write_timeout = Duration::from_secs(s);
        }
        if let Some(ms) = args.coalesce_ms.or(file.coalesce_ms) {
            c.session.coalesce = Duration::from_millis(ms);
        }
        if let Some(ms) = file.connack_wait_ms {
            c.session.connack_wait = Duration::from_millis(ms);
        }
        if let Some(o) = file.queue_overflow {
            c.queue.overflow = o;
        }
        c.session.spool_dir = Some(c.data_dir.clone());
        c.auth.users_file = Some(
            args.users_file
                .clone()
                .or(file.users_file)
                .unwrap_or_else(|| c.data_dir.join("users.json")),
        );
        c.auth.allow_anonymous = args.allow_anonymous || file.allow_anonymous.unwrap_or(false);
        layer!(c.auth.failures_per_minute, auth_failures_per_minute);
        c.listen.plain = !(args.no_plain || file.no_plain.unwrap_or(false));
        c.listen.tls = crate::listener::tls_files(
            args.tls_cert.clone().or(file.tls_cert),
            args.tls_key.clone().or(file.tls_key),
            args.tls_client_ca.clone().or(file.tls_client_ca),
        )
        .map_err(|reason| ConfigError::Invalid {
            field: "tls_cert",
            reason,
        })?;
        layer!(c.listen.tls_listen, tls_listen);
        c.listen.ws_listen = args.ws_listen.or(file.ws_listen);
        c.listen.wss_listen = args.wss_listen.or(file.wss_listen);
        layer!(c.listen.ws_path, ws_path);
        layer!(
            c.listen.max_connections_per_address,
            max_connections_per_address
        );
        layer!(c.session.receive_maximum, max_inflight);
        layer!(c.session.limits.max_topic_length, max_topic_length);
        layer!(c.session.limits.max_topic_levels, max_topic_levels);
        layer!(c.session.limits.publish_rate, max_publish_rate);
        layer!(c.session.limits.publish_burst, publish_burst);
        layer!(c.session.limits.rate_action, publish_rate_action);
        if let Some(s) = args.idle_timeout_secs.or(file.idle_timeout_secs) {
            c.session.limits.idle_timeout = Duration::from_secs(s);
        }
        c.validate()?;
        Ok(c)
    }

    fn read_file(p: &Path) -> Result<FileConfig, ConfigError> {
        let path = p.display().to_string();
        let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path,
            message: e.to_string(),
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.into(),
            })
        };
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if self.session.max_packet_size < 64 || self.session.max_packet_size > 268_435_455 {
            return bad("max_packet_size", "must be between 64 and 268435455 bytes");
        }
        if self.session.device_write_timeout.is_zero() {
            return bad("device_write_timeout_secs", "must be at least 1");
        }
        if self.session.coalesce > Duration::from_secs(1) {
            return bad("coalesce_ms", "must be between 0 and 1000");
        }
        if self.session.to_device_max_bytes < self.session.max_packet_size {
            return bad(
                "to_device_max_bytes",
                "must hold at least one packet of max_packet_size",
            );
        }
        if self.queue.max_messages == 0 {
            return bad("queue_max_messages", "must be at least 1");
        }
        if self.mirror.instance_id.is_empty() || self.mirror.hop_property.is_empty() {
            return bad(
                "instance_id",
                "instance_id and hop_property must not be empty",
            );
        }
        if self.mirror.max_hops == 0 {
            return bad("max_hops", "must be at least 1");
        }
        if self.session.receive_maximum == 0 {
            return bad("max_inflight", "must be at least 1");
        }
        if !self.listen.ws_path.starts_with('/') {
            return bad("ws_path", "must start with /");
        }
        if self.queue.max_bytes < 1024 {
            return bad("queue_max_bytes", "must be at least 1024");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "mqtt_listen = \"127.0.0.1:1999\"\nack_policy = \"all\"\nqueue_max_messages = 5\n",
        )
        .expect("write");
        let args = RunArgs {
            config: Some(p),
            mqtt_listen: Some("127.0.0.1:2000".parse().expect("addr")),
            ..Default::default()
        };
        let c = Config::resolve(&args).expect("valid");
        assert_eq!(c.mqtt_listen.port(), 2000, "flag wins over file");
        assert_eq!(
            c.session.ack_policy,
            AckPolicy::All,
            "file wins over default"
        );
        assert_eq!(c.queue.max_messages, 5);
        assert_eq!(c.http_listen.port(), 3000, "default");
    }

    #[test]
    fn unknown_key_and_bad_value_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "mqtt_listn = \"x\"\n").expect("write");
        let e = Config::resolve(&RunArgs {
            config: Some(p),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("mqtt_listn"), "{e}");
        let e = Config::resolve(&RunArgs {
            max_connections: Some(0),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("max_connections"), "{e}");
    }

    #[test]
    fn coalescing_is_off_by_default_and_bounded() {
        let c = Config::resolve(&RunArgs::default()).expect("valid");
        assert!(c.session.coalesce.is_zero(), "off unless asked for");
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "coalesce_ms = 5\n").expect("write");
        let c = Config::resolve(&RunArgs {
            config: Some(p),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(c.session.coalesce, Duration::from_millis(5));
        let e = Config::resolve(&RunArgs {
            coalesce_ms: Some(1001),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("coalesce_ms"), "{e}");
    }
}
