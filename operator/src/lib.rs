//! The Kubernetes operator for mqtt-proxy.
//!
//! ```text
//!  MqttProxy ─┐                 ┌─ validate (pure) ─ build (pure) ─ apply (SSA) ─ status
//!  MqttBroker ┼─ watches/store ─┤
//!  Secret  ───┘                 └─ children: <name>-brokers Secret, Deployment, Service,
//!                                  ServiceMonitor, <name>-admin Secret
//!
//!  kube-apiserver ── AdmissionReview ──▶ webhook (every replica) ─▶ Pod + proxy sidecar
//!                                         (spec.mode Sidecar: the Deployment's container)
//! ```
//!
//! The broker set it renders is the proxy crate's own [`BrokerConfig`], serialized by the
//! proxy's own types, so the operator and the proxy cannot disagree about the file format.

pub mod crd;
pub mod crdgen;
pub mod health;
pub mod leader;

pub use mqtt_proxy::broker::BrokerConfig;
pub mod controller;
pub mod metrics;
pub mod webhook;
