//! Where a session starts and ends: waiting (bounded) for the upstreams' first CONNACK
//! so `session present` reflects the brokers', closing the upstreams while taking what
//! brokers still hand over, and the record a persistent session leaves in the registry.

use bytes::BytesMut;
use tokio::time::timeout;

use super::{wait_true, Session};
use crate::codec::Protocol;
use crate::registry::SessionRecord;
use crate::upstream::UpstreamHandle;

impl Session {
    /// Waits (at most `connack_wait`, or until shutdown) for the first connection attempt
    /// of every bidirectional upstream, and notes whether one of them kept a session.
    pub(super) async fn wait_upstreams(&mut self) {
        let links: Vec<_> = self
            .upstreams
            .iter()
            .filter(|u| u.broker.config.bidirectional)
            .map(UpstreamHandle::link)
            .collect();
        if links.is_empty() {
            return;
        }
        let all = futures_util::future::join_all(links.into_iter().map(|mut l| async move {
            let _ = l.wait_for(Option::is_some).await;
            *l.borrow() == Some(true)
        }));
        let mut shutdown = self.shared.shutdown.clone();
        let present = tokio::select! {
            r = timeout(self.shared.opts.connack_wait, all) => r.unwrap_or_default(),
            _ = wait_true(&mut shutdown) => Vec::new(),
        };
        self.upstream_present = !self.connect.clean_session && present.contains(&true);
    }

    /// The record a persistent session leaves behind (`None` for a clean one).
    pub(super) fn into_record(mut self) -> Option<SessionRecord> {
        if self.expiry == 0 {
            return None;
        }
        let pending = self.to_device.keep();
        let subs = std::mem::take(&mut self.subs);
        let inbound = std::mem::take(&mut self.inbound);
        Some(SessionRecord::new(subs, pending, inbound, self.expiry))
    }

    /// Ends every upstream (deliver what is queued, then DISCONNECT or drop for the will),
    /// meanwhile taking what brokers still hand over: a persistent session keeps it.
    pub(super) async fn close_upstreams(&mut self, with_will: bool) {
        let drain = self.shared.opts.drain_timeout;
        // Only a DISCONNECT that changed it tells the brokers (MQTT 5 ones) a new expiry.
        let expiry = (self.proto == Protocol::V5
            && Some(self.expiry) != self.connect.session_expiry.or(Some(0)))
        .then_some(self.expiry);
        let closing: Vec<_> = self
            .upstreams
            .drain(..)
            .map(|u| {
                tokio::spawn(async move {
                    if let Some(e) = expiry {
                        u.set_session_expiry(e).await;
                    }
                    u.close(with_will, drain).await
                })
            })
            .collect();
        let all = futures_util::future::join_all(closing);
        tokio::pin!(all);
        let mut scratch = BytesMut::new();
        loop {
            tokio::select! {
                _ = &mut all => break,
                Some(m) = self.from_brokers.recv() => {
                    // Written to nowhere: QoS 0 is gone with the connection; QoS 1/2 stays
                    // in flight and is resent (DUP) if the session is resumed.
                    self.to_device.offer(*m, &self.subs, &mut scratch);
                    scratch.clear();
                }
            }
        }
    }
}
