//! The Kubernetes operator for mqtt-proxy.
//!
//! Not built yet: the operator issue adds the `MqttProxy`/`MqttBroker` CRDs and the
//! `validate → build → apply → status` pipeline. It depends on the proxy's library so the
//! broker configuration it renders is the very type the proxy reads.

pub use mqtt_proxy::broker::BrokerConfig;
