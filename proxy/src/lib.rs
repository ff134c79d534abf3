//! mqtt-proxy: an MQTT 1:N device multiplexer.
pub mod broker;
pub mod brokers_cmd;
pub mod crypto;
pub mod router;
pub mod store;
