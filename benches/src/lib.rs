//! `mqtt-load`: a bounded MQTT load generator and the proxy-vs-alternatives comparison.
//!
//! ```text
//!  publisher (device d) ──PUBLISH <root>/d<d>/<seq>──▶ target ──▶ … ──▶ broker k ──▶ subscriber k
//!   payload[0..16] = seq, sent_ns                         (mosquitto, proxy,          tallies unique,
//!   (raw MQTT, batched)                                     bridge mosquitto)         dup, latency
//!
//!  workload::run:  subscribe all ─▶ connect devices ─▶ probe until every sink sees
//!                  every device ─▶ go ─▶ publish `count` at `rate` ─▶ drain ─▶ report
//!  compare:        per rep, cases a,b,c,d = different topologies over fresh brokers
//!  cpu:            per rep and fixed rate, cases a,c,d; CPU seconds from /proc/<pid>/stat
//! ```
//!
//! Everything runs on 127.0.0.1 and is bounded by a message count and a timeout.
//!
//! ```text
//! cargo build --release -p mqtt-proxy -p mqtt-proxy-benches
//! target/release/mqtt-load run --target 127.0.0.1:1883 --sub 127.0.0.1:1884 --sub 127.0.0.1:1885 \
//!     --qos 1 --count 20000 --rate 2000 --json run.json
//! target/release/mqtt-load compare --qos 0 --count 50000 --brokers 3 --reps 3 --json cmp.json
//! target/release/mqtt-load cpu --rates 500,2000,10000 --duration 10 --brokers 3 --reps 3
//! ```

pub mod churn;
pub mod compare;
pub mod compare_report;
pub mod cpu;
pub mod cpu_report;
pub mod device;
pub mod fleet;
pub mod fleet_device;
pub mod fleet_report;
pub mod mosquitto;
pub mod pacer;
pub mod payload;
pub mod procstat;
pub mod proxy_proc;
pub mod publisher;
pub mod publisher_rumqttc;
pub mod report;
pub mod subscriber;
pub mod summary;
pub mod wire;
pub mod workload;
