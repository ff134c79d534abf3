//! What the disk spool adds to the device task's hot path: `UpstreamQueue::push` appends
//! each QoS>=1 message to the spool file (one `write` to the page cache, no fsync) while it
//! holds the queue lock, and the upstream appends an ack record when the broker confirms.
//! Compared with the same push into a queue without a spool.
//!
//! Run: `cargo bench -p mqtt-proxy-benches --bench spool` (add `-- --quick`). One element
//! is one message pushed, drained and acknowledged.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mqtt_proxy::codec::Message;
use mqtt_proxy::queue::{QueueLimits, Queued, UpstreamQueue};
use mqtt_proxy::spool::{path_for, Spool};

const BATCH: usize = 512;

fn bench_spool(c: &mut Criterion) {
    let mut g = c.benchmark_group("spool/push_drain_ack");
    g.throughput(Throughput::Elements(1));
    for payload in [64usize, 1024] {
        let msg = Message::new(
            "sensors/dev-0040/kitchen/temp",
            vec![7u8; payload],
            1,
            false,
        );
        for spooled in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let q = UpstreamQueue::new(QueueLimits::default());
            if spooled {
                let path = path_for(dir.path(), "bench", "dev");
                let (spool, _) = Spool::open(&path, u64::MAX, None).expect("spool");
                q.attach_spool(Arc::clone(&spool), Vec::new());
            }
            let mut out: Vec<Queued> = Vec::with_capacity(BATCH);
            let mut pushed = 0;
            let name = if spooled { "spooled" } else { "memory" };
            g.bench_function(BenchmarkId::new(name, payload), |b| {
                b.iter(|| {
                    q.push(Queued::new(msg.clone(), 1, None));
                    pushed += 1;
                    if pushed == BATCH {
                        pushed = 0;
                        q.pop_batch(BATCH, &mut out);
                        // The broker acknowledged them: ack records (and the truncation
                        // when the spool is empty again).
                        out.drain(..).for_each(Queued::finish);
                    }
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = spool;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = bench_spool
}
criterion_main!(spool);
