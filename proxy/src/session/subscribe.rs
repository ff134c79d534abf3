//! Device SUBSCRIBE / UNSUBSCRIBE: the local subscription table (bounded), forwarding to
//! the bidirectional brokers without awaiting them, the SUBACK from their answers, and the
//! same subscriptions for brokers a reload adds or a resumed session brings back.

use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use super::{Session, HELD_MAX};
use crate::brokerset::Broker;
use crate::codec::{self, Packet, Protocol, SubFilter, SUBACK_FAILURE, UNSUBACK_NO_SUBSCRIPTION};
use crate::metrics::METRICS;
use crate::router;
use crate::upstream::{Held, UpstreamHandle};

/// SUBACK reason code (MQTT 5): quota exceeded.
const SUBACK_QUOTA: u8 = 0x97;
/// SUBACK reason code (MQTT 5): topic filter invalid.
const SUBACK_INVALID: u8 = 0x8F;

/// The brokers' answers to one device SUBSCRIBE.
pub(super) struct SubDone {
    pkid: u16,
    filters: Vec<SubFilter>,
    /// Codes decided without asking brokers (invalid filters, over the limit).
    preset: Vec<Option<u8>>,
    /// (filter index, filters sent, codes) per broker that answered in time.
    replies: Vec<(usize, usize, Option<Vec<u8>>)>,
}

/// The filters serving device filter `f` on broker `u` (prefix, `subscriptionTopics`,
/// `$share/{group}/` kept in front); MQTT 5 upstreams subscribe with No Local, so a broker
/// never returns the proxy's own publishes and the device's echo is produced locally.
fn upstream_filters(b: &Broker, f: &SubFilter) -> Vec<SubFilter> {
    let no_local = b.config.mqtt_version == crate::broker::MqttVersion::V5
        && router::split_shared(&f.filter).is_none();
    b.rule
        .upstream_filters(&f.filter)
        .into_iter()
        .map(|uf| SubFilter {
            filter: uf,
            no_local,
            id: None,
            ..f.clone()
        })
        .collect()
}

impl Session {
    /// Hands a control request to the upstream of `broker`, behind any it still holds for
    /// it (order matters: SUBSCRIBE then UNSUBSCRIBE of one filter). Beyond [`HELD_MAX`]
    /// held requests the request is dropped and counted: its SUBACK answer never comes.
    fn submit(&mut self, at: usize, held: Held) {
        let u = &self.upstreams[at];
        let id = u.broker.id().to_owned();
        let queue = self.held.entry(id).or_default();
        let held = if queue.is_empty() {
            match u.retry(held) {
                None => return,
                Some(h) => h,
            }
        } else {
            held
        };
        let total: usize = self.held.values().map(|q| q.len()).sum();
        if total >= HELD_MAX {
            METRICS
                .subscriptions_refused
                .with_label_values(&["upstream_busy"])
                .inc();
            warn!(client_id = %self.connect.client_id, "upstream control channel full: request dropped");
        } else if let Some(q) = self.held.get_mut(self.upstreams[at].broker.id()) {
            q.push_back(held);
        }
        self.held.retain(|_, q| !q.is_empty());
    }

    /// Retries held control requests, in order per broker.
    pub(super) fn retry_held(&mut self) {
        for u in &self.upstreams {
            let Some(q) = self.held.get_mut(u.broker.id()) else {
                continue;
            };
            while let Some(h) = q.pop_front() {
                if let Some(back) = u.retry(h) {
                    q.push_front(back);
                    break;
                }
            }
        }
        // Requests for upstreams that are gone (reload) are dropped with them.
        let live: Vec<&str> = self.upstreams.iter().map(|u| u.broker.id()).collect();
        self.held
            .retain(|id, q| !q.is_empty() && live.contains(&id.as_str()));
    }

    /// Forwards a SUBSCRIBE to the bidirectional brokers without waiting for them: the
    /// SUBACK is written when their answers are in (all of them, or 2 s after the first, or
    /// 5 s at most), so one hung broker never stalls the device's other traffic. The filters
    /// take effect at once, so messages racing the SUBACK are delivered.
    pub(super) fn subscribe(&mut self, pkid: u16, filters: Vec<SubFilter>, wbuf: &mut BytesMut) {
        let v5 = self.proto == Protocol::V5;
        let mut preset: Vec<Option<u8>> = vec![None; filters.len()];
        let mut waits = Vec::new();
        self.to_device.subscribed();
        for (i, f) in filters.iter().enumerate() {
            if !router::valid_filter(&f.filter) {
                preset[i] = Some(if v5 { SUBACK_INVALID } else { SUBACK_FAILURE });
                continue;
            }
            if !self.shared.opts.limits.topic_ok(&f.filter) {
                crate::limits::hit("topic", "refuse");
                preset[i] = Some(if v5 { SUBACK_INVALID } else { SUBACK_FAILURE });
                continue;
            }
            if !self.shared.auth.may_subscribe(&mut self.grant, &f.filter) {
                preset[i] = Some(if v5 {
                    codec::NOT_AUTHORIZED
                } else {
                    SUBACK_FAILURE
                });
                continue;
            }
            if self.subs.get(&f.filter).is_none()
                && self.subs.len() >= self.shared.opts.max_subscriptions
            {
                METRICS
                    .subscriptions_refused
                    .with_label_values(&["limit"])
                    .inc();
                preset[i] = Some(if v5 { SUBACK_QUOTA } else { SUBACK_FAILURE });
                continue;
            }
            self.subs.insert(f.clone());
            for at in 0..self.upstreams.len() {
                let u = &self.upstreams[at];
                if !u.broker.config.bidirectional {
                    continue;
                }
                let up = upstream_filters(&u.broker, f);
                if !up.is_empty() {
                    let n = up.len();
                    let (rx, held) = UpstreamHandle::subscribe_request(up);
                    self.submit(at, held);
                    waits.push((i, n, rx));
                }
            }
        }
        if waits.is_empty() {
            let done = SubDone {
                pkid,
                filters,
                preset,
                replies: Vec::new(),
            };
            self.suback(done, wbuf);
            return;
        }
        let done = self.subacks_tx.clone();
        tokio::spawn(async move {
            let (rtx, mut rrx) = mpsc::channel(waits.len().max(1));
            for (i, n, rx) in waits {
                let rtx = rtx.clone();
                tokio::spawn(async move {
                    let _ = rtx.send((i, n, rx.await.ok())).await;
                });
            }
            drop(rtx);
            let hard = Instant::now() + Duration::from_secs(5);
            let mut soft: Option<Instant> = None;
            let mut replies = Vec::new();
            loop {
                let deadline = soft.map_or(hard, |s| s.min(hard));
                match tokio::time::timeout_at(deadline, rrx.recv()).await {
                    Ok(Some(r)) => {
                        replies.push(r);
                        soft.get_or_insert_with(|| Instant::now() + Duration::from_secs(2));
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            let _ = done
                .send(Box::new(SubDone {
                    pkid,
                    filters,
                    preset,
                    replies,
                }))
                .await;
        });
    }

    /// Writes the SUBACK: per filter the lowest QoS the brokers granted; failure only when
    /// every broker that answered refused; the requested QoS when none answered in time.
    pub(super) fn suback(&mut self, d: SubDone, wbuf: &mut BytesMut) {
        let n = d.filters.len();
        let mut granted: Vec<Option<u8>> = vec![None; n];
        let mut failed: Vec<Option<u8>> = vec![None; n];
        for (i, expected, reply) in d.replies {
            match reply {
                Some(codes) if codes.len() == expected => {
                    for code in codes {
                        if code <= 2 {
                            granted[i] = Some(granted[i].map_or(code, |g: u8| g.min(code)));
                        } else {
                            failed[i] = Some(code);
                        }
                    }
                }
                // The request never reached the upstream (dropped when its control channel
                // and the held list were full, or the task is gone): not subscribed there.
                None => failed[i] = Some(SUBACK_FAILURE),
                // The connection dropped before the SUBACK: subscribed again on reconnect.
                Some(_) => {}
            }
        }
        let mut codes = Vec::with_capacity(n);
        for (i, f) in d.filters.into_iter().enumerate() {
            let refused = failed[i].map(|c| {
                if self.proto == Protocol::V5 {
                    c
                } else {
                    SUBACK_FAILURE
                }
            });
            let code = d.preset[i].or(granted[i]).or(refused).unwrap_or(f.qos);
            if d.preset[i].is_none() {
                if code > 2 {
                    self.subs.remove(&f.filter);
                } else {
                    self.subs.set_qos(&f.filter, code);
                }
            }
            codes.push(code);
        }
        self.info
            .set_subscriptions(self.subs.iter().map(|s| s.filter.as_str()));
        let _ = codec::write(
            self.proto,
            &Packet::SubAck {
                pkid: d.pkid,
                codes,
            },
            wbuf,
        );
    }

    /// Removes device filters and returns one UNSUBACK reason code per filter; an upstream
    /// filter is unsubscribed only when no remaining device filter still maps to it there.
    pub(super) fn unsubscribe(&mut self, filters: Vec<String>) -> Vec<u8> {
        let codes = filters
            .iter()
            .map(|f| {
                self.to_device.unsubscribed(f);
                if self.subs.remove(f) {
                    0
                } else {
                    UNSUBACK_NO_SUBSCRIPTION
                }
            })
            .collect();
        self.info
            .set_subscriptions(self.subs.iter().map(|s| s.filter.as_str()));
        for at in 0..self.upstreams.len() {
            let u = &self.upstreams[at];
            if !u.broker.config.bidirectional {
                continue;
            }
            let still: Vec<String> = self
                .subs
                .iter()
                .flat_map(|s| u.broker.rule.upstream_filters(&s.filter))
                .collect();
            let mut up: Vec<String> = filters
                .iter()
                .flat_map(|f| u.broker.rule.upstream_filters(f))
                .filter(|f| !still.contains(f))
                .collect();
            up.dedup();
            if !up.is_empty() {
                self.submit(at, UpstreamHandle::unsubscribe_request(up));
            }
        }
        codes
    }

    /// The device's subscriptions as upstream filters for broker `b` (none unless it is
    /// bidirectional).
    fn upstream_subs(&self, b: &Broker) -> Vec<SubFilter> {
        if !b.config.bidirectional {
            return Vec::new();
        }
        self.subs
            .iter()
            .flat_map(|f| upstream_filters(b, f))
            .collect()
    }

    /// Subscribes upstream `at` to every device subscription (a broker added by a reload,
    /// or a resumed session's upstreams). Restored subscriptions ask MQTT 5 brokers for
    /// retained messages only if the subscription is new to them (the broker may have kept
    /// the session).
    pub(super) fn subscribe_all(&mut self, at: usize, restored: bool) {
        let u = &self.upstreams[at];
        if !u.broker.config.bidirectional || self.subs.is_empty() {
            return;
        }
        let up: Vec<SubFilter> = self
            .upstream_subs(&u.broker)
            .into_iter()
            .map(|mut f| {
                if restored {
                    f.retain_handling = f.retain_handling.max(1);
                }
                f
            })
            .collect();
        if !up.is_empty() {
            let (_, held) = UpstreamHandle::subscribe_request(up);
            self.submit(at, held);
        }
    }

    /// Applies a new broker set: unchanged brokers (same `Arc`) keep their upstream and
    /// its connection; changed ones hand their queue and spool over to the new settings in
    /// the same upstream (one connection at a time); removed ones drain and close in the
    /// background.
    pub(super) fn reconcile(&mut self) {
        let set = self.brokers.borrow_and_update().clone();
        let old = std::mem::take(&mut self.upstreams);
        let mut handovers = Vec::new();
        for mut u in old {
            match set.get(u.broker.id()) {
                Some(b) if std::sync::Arc::ptr_eq(b, &u.broker) => self.upstreams.push(u),
                Some(b) => {
                    let subs = self.upstream_subs(b);
                    let held = u.handover_request(b.clone(), subs);
                    self.upstreams.push(u);
                    handovers.push((self.upstreams.len() - 1, held));
                }
                None => {
                    let drain = self.shared.opts.drain_timeout;
                    tokio::spawn(u.close(false, drain));
                }
            }
        }
        for (at, held) in handovers {
            self.submit(at, held);
        }
        for b in &set.brokers {
            if self.upstreams.iter().any(|u| u.broker.id() == b.id()) {
                continue;
            }
            let h = self.spawn_upstream(b.clone());
            self.upstreams.push(h);
            self.subscribe_all(self.upstreams.len() - 1, false);
        }
        self.retry_held();
    }
}
