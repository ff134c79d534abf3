//! `mqtt-load`: command line for one workload (`run`), the proxy comparison
//! (`compare`) and CPU at fixed rates (`cpu`). Parsing and output only; the work is in
//! the `mqtt_proxy_benches` lib.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use mqtt_proxy_benches::churn::{self, ChurnConfig};
use mqtt_proxy_benches::compare::{compare, Case, CompareConfig};
use mqtt_proxy_benches::cpu::{cpu, CpuConfig};
use mqtt_proxy_benches::fleet::{self, FleetConfig};
use mqtt_proxy_benches::mosquitto::BrokerLimits;
use mqtt_proxy_benches::proxy_proc::default_proxy_bin;
use mqtt_proxy_benches::workload::{self, ClientKind, Topology, Workload};

#[derive(Parser)]
#[command(
    name = "mqtt-load",
    about = "Bounded MQTT load generator and proxy comparison (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Publish a workload to one target and measure it at every `--sub` broker.
    Run(RunArgs),
    /// Cases a (direct), b (N direct, ceiling), c (proxy), d (bridges), repeated and interleaved.
    Compare(CompareArgs),
    /// Many slow devices: N × 1 msg/s QoS 1 through the proxy to 3 brokers, RSS per stage.
    Fleet(FleetArgs),
    /// Connection churn: N devices reconnecting every few seconds; RSS and fds over time.
    Churn(ChurnArgs),
    /// CPU seconds of the proxy, a bridging mosquitto and the receiving brokers at fixed rates.
    Cpu(CpuArgs),
}

#[derive(Args)]
struct ChurnArgs {
    /// Devices, each reconnecting with the same client id.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Seconds each connection lives before the device reconnects.
    #[arg(long, default_value_t = 5.0)]
    every: f64,
    /// Length of the run in seconds.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Seconds between samples of the proxy's RSS and descriptors.
    #[arg(long, default_value_t = 5.0)]
    sample: f64,
    /// The proxy binary (default as for `compare`).
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
struct FleetArgs {
    /// Concurrent devices (the proxy holds 4 sockets per device).
    #[arg(long, default_value_t = 4000)]
    devices: usize,
    /// Seconds of publishing at 1 msg/s per device.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Payload bytes (≥ 16).
    #[arg(long, default_value_t = 64)]
    payload_size: usize,
    /// Share of devices that also subscribe through the bidirectional broker.
    #[arg(long, default_value_t = 0.1)]
    sub_fraction: f64,
    /// Device counts after which the proxy's RSS is read (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1000, 2000])]
    rss_at: Vec<usize>,
    /// CONNECTs in flight at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// The proxy binary (default as for `compare`).
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args, Clone)]
struct WorkloadArgs {
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload bytes (≥ 16: sequence number and send timestamp come first).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(16..=268_435_000))]
    payload_size: u64,
    /// Messages per device.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Messages per second per device; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Hard bound for the whole run in seconds (per case for `compare`).
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// End the drain after this many seconds without a new message.
    #[arg(long, default_value_t = 5.0)]
    drain_silence: f64,
    /// Topics are `<root>/d<device>/<seq>` (or `<root>/d<device>` with --fixed-topic).
    #[arg(long, default_value = "mqtt-load")]
    topic_root: String,
    /// One topic per device instead of one per message.
    #[arg(long)]
    fixed_topic: bool,
    /// Unacknowledged QoS 1/2 publishes per device.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=65_534))]
    inflight: u64,
    /// Publisher implementation.
    #[arg(long, value_enum, default_value_t = ClientKind::Raw)]
    client: ClientKind,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Clone)]
struct OutputArgs {
    /// Also write the full report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// What goes to stdout.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Args)]
struct RunArgs {
    /// host:port the devices connect to (a broker or the proxy).
    #[arg(long)]
    target: String,
    /// host:port of a downstream broker to subscribe on; repeat for each.
    #[arg(long = "sub", required = true)]
    subs: Vec<String>,
    /// Device connections, each publishing --count messages.
    #[arg(long, default_value_t = 1)]
    devices: usize,
    #[command(flatten)]
    workload: WorkloadArgs,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
struct CompareArgs {
    /// N: downstream brokers for cases b, c, d.
    #[arg(long, default_value_t = 3)]
    brokers: usize,
    /// Repetitions; each runs the cases in order a, b, c, d.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Cases to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Case::ALL)]
    cases: Vec<Case>,
    /// The proxy binary for case c (skipped with a message when missing). Default:
    /// `mqtt-proxy` next to this executable, else `<workspace>/target/release/mqtt-proxy`.
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// mosquitto `max_queued_messages` on every broker.
    #[arg(long, default_value_t = BrokerLimits::default().max_queued)]
    max_queued: u64,
    /// mosquitto `max_inflight_messages` on every broker.
    #[arg(long, default_value_t = BrokerLimits::default().max_inflight)]
    max_inflight: u32,
    #[command(flatten)]
    workload: WorkloadArgs,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
struct CpuArgs {
    /// Messages per second of the one device; every rate runs every case.
    #[arg(long, value_delimiter = ',', default_values_t = [500u64, 2_000, 10_000])]
    rates: Vec<u64>,
    /// Seconds of publishing per run (messages = rate × duration).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// N: downstream brokers for cases c and d.
    #[arg(long, default_value_t = 3)]
    brokers: usize,
    /// Repetitions; each runs every rate and case, interleaved.
    #[arg(long, default_value_t = 1)]
    reps: usize,
    /// Cases to run: a (direct), c (proxy), d (bridge).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Case::A, Case::C, Case::D])]
    cases: Vec<Case>,
    /// QoS of publishes, bridges and subscriptions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload bytes (≥ 16).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    payload_size: u64,
    /// The proxy binary for case c (default as for `compare`).
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    output: OutputArgs,
}

impl WorkloadArgs {
    fn build(&self) -> Workload {
        Workload {
            qos: self.qos,
            payload_size: self.payload_size as usize,
            count: self.count,
            rate: self.rate,
            topic_root: self.topic_root.clone(),
            fixed_topic: self.fixed_topic,
            timeout: Duration::from_secs(self.timeout),
            drain_silence: Duration::from_secs_f64(self.drain_silence.max(0.0)),
            inflight: self.inflight as usize,
            client: self.client,
            progress: !self.quiet,
        }
    }
}

fn emit<T: serde::Serialize>(out: &OutputArgs, value: &T, table: String) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    if let Some(path) = &out.json {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    match out.format {
        Format::Table => print!("{table}"),
        Format::Json => println!("{json}"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(args) => {
            let w = args.workload.build();
            let subs: Vec<(String, String)> = args
                .subs
                .iter()
                .enumerate()
                .map(|(i, addr)| (format!("b{}", i + 1), addr.clone()))
                .collect();
            let topo = Topology::fan_out(&args.target, args.devices.max(1), &subs);
            let outcome = workload::run(&w, &topo, "run").await?;
            emit(&args.output, &outcome.report, outcome.report.render_table())
        }
        Cmd::Compare(args) => {
            let cfg = CompareConfig {
                workload: args.workload.build(),
                brokers: args.brokers.max(1),
                reps: args.reps.max(1),
                cases: args.cases.clone(),
                proxy_bin: args.proxy_bin.clone().unwrap_or_else(default_proxy_bin),
                limits: BrokerLimits {
                    max_queued: args.max_queued,
                    max_inflight: args.max_inflight,
                },
            };
            let report = compare(&cfg).await;
            emit(&args.output, &report, report.render_table())
        }
        Cmd::Cpu(args) => {
            let cfg = CpuConfig {
                rates: args.rates.iter().copied().filter(|r| *r > 0).collect(),
                duration: Duration::from_secs_f64(args.duration.max(0.1)),
                brokers: args.brokers.max(1),
                reps: args.reps.max(1),
                cases: args.cases.clone(),
                qos: args.qos,
                payload_size: args.payload_size as usize,
                proxy_bin: args.proxy_bin.clone().unwrap_or_else(default_proxy_bin),
                limits: BrokerLimits::default(),
                progress: !args.quiet,
            };
            let report = cpu(&cfg).await;
            emit(&args.output, &report, report.render_table())?;
            anyhow::ensure!(report.all_delivered(), "not every message was delivered");
            Ok(())
        }
        Cmd::Fleet(args) => {
            let cfg = FleetConfig {
                proxy_bin: args.proxy_bin.clone().unwrap_or_else(default_proxy_bin),
                devices: args.devices,
                secs: args.secs,
                payload_size: args.payload_size,
                sub_fraction: args.sub_fraction,
                rss_at: args.rss_at.clone(),
                connect_concurrency: args.connect_concurrency,
                progress: !args.quiet,
            };
            let report = fleet::run(&cfg).await?;
            emit(&args.output, &report, report.render())?;
            anyhow::ensure!(
                report.all_delivered(),
                "fleet: not everything was delivered"
            );
            Ok(())
        }
        Cmd::Churn(args) => {
            let cfg = ChurnConfig {
                proxy_bin: args.proxy_bin.clone().unwrap_or_else(default_proxy_bin),
                devices: args.devices,
                every: Duration::from_secs_f64(args.every.max(0.1)),
                secs: args.secs,
                sample: Duration::from_secs_f64(args.sample.max(0.1)),
                progress: !args.quiet,
            };
            let report = churn::run(&cfg).await?;
            emit(&args.output, &report, report.render())?;
            let bad = report.consistent();
            anyhow::ensure!(bad.is_empty(), "churn: {}", bad.join("; "));
            Ok(())
        }
    }
}
