//! A changed broker (rotated password, new address, other settings) takes over from its
//! predecessor *inside the same task*: the queue, the open spool, the in-flight messages and
//! the subscriptions stay where they are, and the old connection ends with DISCONNECT
//! before the new one is opened.
//!
//! Why not a new upstream beside the draining old one (as before): that made two
//! connections with one client id (the broker kicks one, which reconnects and kicks the
//! other), two owners of one spool file with separate counters, and the old queue of a
//! down broker dropped at the drain deadline although the device had been acknowledged.

use std::sync::Arc;

use tracing::info;

use super::admit::{BrokerLimits, PoisonWatch};
use super::{Control, Upstream, UpstreamHandle, DEFAULT_INFLIGHT};
use crate::brokerset::Broker;
use crate::codec::{Protocol, SubFilter};

impl UpstreamHandle {
    /// Continues this upstream with `broker`, a new version of the same broker id. `subs`
    /// are the upstream filters for the device's subscriptions under the new rules (empty
    /// when it is not bidirectional).
    pub async fn handover(&mut self, broker: Arc<Broker>, subs: Vec<SubFilter>) {
        self.broker = broker.clone();
        let _ = self
            .ctl
            .send(Box::new(Control::Handover { broker, subs }))
            .await;
    }
}

impl Upstream {
    /// Adopts the new broker version; the caller has ended the old connection (if any).
    pub(super) fn take_over(&mut self, broker: Arc<Broker>, subs: Vec<SubFilter>) {
        info!(
            broker = broker.label(),
            client_id = %self.client_id(),
            queued = self.queue.len(),
            in_flight = self.out.len(),
            "broker changed: the upstream continues with the new settings"
        );
        self.proto = Protocol::from(broker.config.mqtt_version);
        self.queue.set_limits(broker.limits);
        self.p.broker = broker;
        self.subs = subs;
        // Whatever the old connection announced does not hold for the new one.
        self.limits = BrokerLimits::default();
        self.poison = PoisonWatch::default();
        self.out.set_max_inflight(DEFAULT_INFLIGHT);
        if !self.queue.has_spool() {
            self.open_spool();
        }
    }
}
