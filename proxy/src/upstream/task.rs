//! The upstream task's life: open the spool, connect, reconnect with backoff, and what
//! the session's control messages do while the broker is down.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::{sleep_until, timeout, Instant};
use tracing::{info, warn};

use super::admit::Unsendable;
use super::backoff::{Backoff, FailReason, STABLE_AFTER};
use super::{Control, Exit, Upstream};
use crate::codec::SubFilter;
use crate::events::Outcome;
use crate::loopguard::message_hash;
use crate::metrics::METRICS;
use crate::queue::{dropped, Completion, Queued};

impl Upstream {
    /// Opens the spool (after the previous holder of the file is gone) and puts what it
    /// still holds in front of anything queued meanwhile.
    pub(super) fn open_spool(&mut self) {
        let broker = self.p.broker.clone();
        let (true, Some(dir)) = (broker.config.spool, &self.p.spool_dir) else {
            return;
        };
        let client_id = self.client_id();
        let path = crate::spool::path_for(dir, broker.id(), &client_id);
        let failures = crate::spool::SpoolFailures {
            broker: broker.label().to_string(),
            full: broker.metrics.spool_full.clone(),
            write_error: broker.metrics.spool_write_errors.clone(),
        };
        match crate::spool::Spool::open(&path, broker.limits.max_bytes as u64, Some(failures)) {
            Ok((spool, pending)) => {
                if !pending.is_empty() {
                    info!(broker = broker.label(), %client_id, messages = pending.len(), "resuming spooled messages");
                }
                let recovered = pending
                    .into_iter()
                    .map(|(r, msg)| {
                        let qos = broker.rule.qos(msg.qos);
                        let mut q = Queued::new(msg, qos, None);
                        q.done.spool = Some(r);
                        q
                    })
                    .collect();
                self.queue.attach_spool(spool, recovered);
            }
            Err(e) => {
                warn!(broker = broker.label(), file = %path.display(), error = %e, "cannot open spool; queueing in memory only")
            }
        }
    }

    /// Boxed: an `async fn` taking `self` by value keeps two copies of it in its state
    /// (the argument and the moved local), ~670 bytes each, in every upstream task.
    pub(super) async fn run(mut self: Box<Self>) {
        if let Some((mut prev, bound)) = self.p.start_after.take() {
            let _ = timeout(bound, crate::session::wait_true(&mut prev)).await;
        }
        self.open_spool();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let mut first = true;
        loop {
            if self.finished() {
                break;
            }
            if !first {
                self.broker()
                    .stats
                    .reconnects
                    .fetch_add(1, Ordering::Relaxed);
                self.broker().metrics.reconnects.inc();
            }
            first = false;
            self.connected_at = None;
            let exit = match self.connect().await {
                Ok(stream) => self.connected(stream).await,
                Err(e) => Exit::NoSession(FailReason::Unreachable, e),
            };
            // No SUBACK/UNSUBACK comes for ids lent out on the lost connection.
            self.out.release_all();
            let (reason, error) = match exit {
                Exit::Done => break,
                Exit::Handover => {
                    first = true;
                    backoff.reset();
                    continue;
                }
                Exit::NoSession(reason, error) => {
                    if self.link.borrow().is_none() {
                        let _ = self.link.send(Some(false));
                    }
                    (reason, error)
                }
                Exit::Failed(error) => (FailReason::Dropped, error),
            };
            let up_for = self.connected_at.map(|t| t.elapsed());
            // A connection that was stable is a new outage, not a failed attempt.
            let stable = up_for.is_some_and(|d| d >= STABLE_AFTER);
            if stable {
                self.poison.clear();
            } else if reason == FailReason::Dropped {
                self.check_poison();
            }
            if !stable {
                METRICS
                    .upstream_connect_failures
                    .with_label_values(&[self.broker().label(), reason.label()])
                    .inc();
            }
            self.broker().stats.set_error(reason.label(), error.clone());
            if let Some(held) = self.log_limit.allow(10) {
                warn!(broker = self.broker().label(), client_id = %self.client_id(), %error,
                      reason = reason.label(), suppressed = held,
                      "upstream connection failed; retrying with backoff");
            }
            // Reply to SUBSCRIBEs that were in flight: they are re-sent on reconnect.
            for (_, reply) in self.pending_subacks.drain(..) {
                let _ = reply.send(Vec::new());
            }
            let wake = Instant::now() + backoff.after_failure(reason, up_for);
            loop {
                tokio::select! {
                    _ = sleep_until(wake) => break,
                    c = self.ctl.recv() => match c {
                        Some(c) => if self.control_offline(*c) {
                            // New settings (e.g. the password that was refused): try now.
                            backoff.reset();
                            break;
                        },
                        None => return self.abandon(),
                    },
                }
            }
        }
    }

    /// The broker accepted us and closed the connection before it was stable: if it did so
    /// [`POISON_AFTER`](super::admit::POISON_AFTER) times in a row with the same oldest
    /// unacknowledged message, that message is what it cannot take. It is set aside so the
    /// queue behind it moves on (a 3.1.1 broker has no other way to say "too large").
    fn check_poison(&mut self) {
        let head = self
            .out
            .oldest_unacked()
            .map(|(pkid, m)| (pkid, message_hash(&m.topic, &m.payload)));
        if !self.poison.on_unstable_close(head) {
            return;
        }
        let Some((pkid, _)) = head else { return };
        let msg = self.out.oldest_unacked().map(|(_, m)| m.clone());
        let tag = self.out.remove(pkid);
        if let Some(msg) = msg {
            self.unsendable(Unsendable::Poison, &msg, tag.unwrap_or_default());
        }
    }

    /// The session is gone without a Close: count what is left.
    fn abandon(&mut self) {
        let tags = self.out.drain_tags();
        let lost = tags.iter().filter(|t| !t.is_spooled());
        let n = lost
            .inspect(|t| t.report(Outcome::Dropped(dropped::SHUTDOWN)))
            .count() as u64;
        tags.into_iter().for_each(Completion::abandon);
        if n > 0 {
            self.broker().metrics.dropped_shutdown.inc_by(n);
            self.broker().stats.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A control message while the broker is down; `true` when it is worth reconnecting now.
    fn control_offline(&mut self, c: Control) -> bool {
        match c {
            Control::Subscribe { filters, reply } => {
                let granted = filters.iter().map(|f| f.qos).collect();
                self.merge_subs(filters);
                let _ = reply.send(granted);
            }
            Control::Unsubscribe { filters } => self.subs.retain(|s| !filters.contains(&s.filter)),
            Control::Close { with_will } => self.closing = Some(with_will),
            Control::SessionExpiry(e) => self.close_expiry = Some(e),
            Control::Handover { broker, subs } => {
                self.take_over(broker, subs);
                return true;
            }
        }
        false
    }

    pub(super) fn merge_subs(&mut self, filters: Vec<SubFilter>) {
        for f in filters {
            match self.subs.iter_mut().find(|s| s.filter == f.filter) {
                Some(s) => *s = f,
                None => self.subs.push(f),
            }
        }
    }
}
