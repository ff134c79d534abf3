//! mqtt-proxy: an MQTT 1:N device multiplexer.
//!
//! ```text
//!                 ┌──────────── one task per device ────────────┐
//!  device ──TCP──▶ listener ─▶ session ─▶ router (pure) ─┬─▶ queue ─▶ upstream ──▶ broker A
//!    ▲                          │  ▲                    ├─▶ queue ─▶ upstream ──▶ broker B
//!    │                          │  │                    └─▶ queue ─▶ upstream ──▶ broker C
//!    └──── delivery (QoS, loop guard) ◀── messages from bidirectional brokers ◀──┘
//! ```
//!
//! Each upstream has its own task and bounded queue, so a slow or dead broker only fills
//! its own queue. The broker set is a `watch` value; sessions diff each new version and
//! keep the connections of brokers that did not change.

pub mod ack;
pub mod auth;
pub mod broker;
pub mod brokers_cmd;
pub mod brokerset;
pub mod client_id;
pub mod codec;
pub mod config;
pub mod crypto;
pub mod delivery;
pub mod devices;
pub mod events;
#[cfg(feature = "lease")]
pub mod lease;
pub mod limits;
pub mod listener;
pub mod loopguard;
pub mod metrics;
pub mod mirror;
#[cfg(feature = "lease")]
pub mod mirror_lease;
pub mod proxy;
pub mod qos;
pub mod queue;
pub mod registry;
pub mod reload;
pub mod router;
pub mod secret_cmd;
pub mod session;
pub mod spool;
pub mod store;
pub mod subtable;
pub mod tls;
pub mod transport;
pub mod upstream;
pub mod web;

pub use proxy::ProxyHandle;
