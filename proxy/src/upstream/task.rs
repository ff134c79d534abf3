//! The upstream task's life: open the spool, connect, reconnect with backoff, and what
//! the session's control messages do while the broker is down.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::{sleep_until, timeout, Instant};
use tracing::{info, warn};

use super::backoff::Backoff;
use super::{Control, Exit, Upstream};
use crate::codec::SubFilter;
use crate::queue::{Completion, Queued};

impl Upstream {
    /// Opens the spool (after the previous holder of the file is gone) and puts what it
    /// still holds in front of anything queued meanwhile.
    fn open_spool(&mut self) {
        let broker = self.p.broker.clone();
        let (true, Some(dir)) = (broker.config.spool, &self.p.spool_dir) else {
            return;
        };
        let client_id = self.client_id();
        let path = crate::spool::path_for(dir, broker.id(), &client_id);
        match crate::spool::Spool::open(&path, broker.limits.max_bytes as u64) {
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

    pub(super) async fn run(mut self) {
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
            let exit = match self.connect().await {
                Ok(stream) => {
                    backoff.reset();
                    self.connected(stream).await
                }
                Err(e) => Exit::Failed(e),
            };
            match exit {
                Exit::Done => break,
                Exit::Failed(reason) => {
                    self.broker().stats.set_error(reason.clone());
                    if let Some(held) = self.log_limit.allow(10) {
                        warn!(broker = self.broker().label(), client_id = %self.client_id(), %reason,
                              suppressed = held, "upstream connection failed; retrying with backoff");
                    }
                    // Reply to SUBSCRIBEs that were in flight: they are re-sent on reconnect.
                    for (_, reply) in self.pending_subacks.drain(..) {
                        let _ = reply.send(Vec::new());
                    }
                    let delay = backoff.next_delay();
                    let wake = Instant::now() + delay;
                    loop {
                        tokio::select! {
                            _ = sleep_until(wake) => break,
                            c = self.ctl.recv() => match c {
                                Some(c) => self.control_offline(c),
                                None => return self.abandon(),
                            },
                        }
                    }
                }
            }
        }
    }

    /// The session is gone without a Close: count what is left.
    fn abandon(mut self) {
        let tags = self.out.drain_tags();
        let n = tags.iter().filter(|t| !t.is_spooled()).count() as u64;
        tags.into_iter().for_each(Completion::abandon);
        if n > 0 {
            self.broker().metrics.dropped_shutdown.inc_by(n);
            self.broker().stats.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn control_offline(&mut self, c: Control) {
        match c {
            Control::Subscribe { filters, reply } => {
                let granted = filters.iter().map(|f| f.qos).collect();
                self.merge_subs(filters);
                let _ = reply.send(granted);
            }
            Control::Unsubscribe { filters } => self.subs.retain(|s| !filters.contains(&s.filter)),
            Control::Close { with_will } => self.closing = Some(with_will),
        }
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
