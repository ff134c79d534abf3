//! Criterion micro-benchmarks of the proxy's per-message hot path, one group per stage a
//! device publish goes through: topic matching and routing (`router`), the echo guard
//! (`loopguard`), fan-out into the per-broker queues (`queue`), the in-flight window
//! (`qos`), and the wire (`codec`). Everything is in-process and I/O-free; the numbers are
//! the CPU cost per message that the proxy adds on top of the sockets.
//!
//! Run: `cargo bench -p mqtt-proxy-benches --bench hot_path` (add `-- --quick` for a
//! sub-two-minute pass). Every benchmark reports `Throughput::Elements`, where one element
//! is the unit named in its group (a filter, a broker, a message or a packet).

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use mqtt_proxy::broker::OverflowPolicy;
use mqtt_proxy::codec::{self, Message, Packet, Protocol};
use mqtt_proxy::loopguard::{self, LoopGuard};
use mqtt_proxy::qos::Outbound;
use mqtt_proxy::queue::{QueueLimits, Queued, UpstreamQueue};
use mqtt_proxy::router::{self, RouteRule};

/// A device topic of realistic depth.
const TOPIC: &str = "sensors/dev-0040/kitchen/temp";
/// The upstream task's `pop_batch` size (`upstream::BATCH`).
const UPSTREAM_BATCH: usize = 512;
const MAX_PACKET: usize = 1 << 20;

/// `n` filters in a mix a fleet of devices would subscribe with or a broker would list in
/// `topics`: most differ at the first or second level, a few use wildcards deep down.
/// Exactly one of them (`sensors/dev-0040/+/temp`, for n > 40) matches [`TOPIC`].
fn filters(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 5 {
            0 => format!("sensors/dev-{i:04}/+/temp"),
            1 => format!("devices/{i}/#"),
            2 => format!("site/{i}/status"),
            3 => format!("+/dev-{i:04}/alerts"),
            _ => format!("telemetry/zone-{i}/+/+"),
        })
        .collect()
}

/// The route rules of `n` brokers: a quarter take everything, the rest filter by topic;
/// half prepend a prefix, a third cap QoS. About half of them accept [`TOPIC`].
fn rules(n: usize) -> Vec<RouteRule> {
    (0..n)
        .map(|i| RouteRule {
            topics: match i % 4 {
                0 => Vec::new(),
                1 => vec!["sensors/#".into()],
                2 => vec!["alerts/#".into(), "sensors/+/+/temp".into()],
                _ => vec!["telemetry/#".into(), "status/+".into(), "cmd/+/set".into()],
            },
            topic_prefix: (i % 2 == 0).then(|| format!("site-{i}/")),
            max_qos: (i % 3 == 0).then_some(0),
            ..Default::default()
        })
        .collect()
}

fn message(payload_len: usize) -> Message {
    Message::new(TOPIC, Bytes::from(vec![0x5a; payload_len]), 1, false)
}

fn bench_matching(c: &mut Criterion) {
    let mut g = c.benchmark_group("router/matches");
    g.throughput(Throughput::Elements(1));
    for (name, filter) in [
        ("exact_hit", TOPIC),
        ("plus_hit", "sensors/+/+/temp"),
        ("hash_hit", "sensors/#"),
        ("first_level_miss", "devices/dev-0040/#"),
        ("last_level_miss", "sensors/dev-0040/kitchen/humidity"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| router::matches(black_box(filter), black_box(TOPIC)))
        });
    }
    g.finish();

    // One topic against every filter of a list: delivery checks of a device's
    // subscriptions, `delivers`, and `accepts` on a broker with many `topics`.
    let mut g = c.benchmark_group("router/matches_many");
    for n in [10, 100, 1000] {
        let fs = filters(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &fs, |b, fs| {
            b.iter(|| {
                let topic = black_box(TOPIC);
                fs.iter().filter(|f| router::matches(f, topic)).count()
            })
        });
    }
    g.finish();

    // `accepts` short-circuits on the first match; a miss scans every filter.
    let mut g = c.benchmark_group("router/accepts");
    g.throughput(Throughput::Elements(1));
    let all = RouteRule::default();
    g.bench_function("no_topics", |b| b.iter(|| all.accepts(black_box(TOPIC))));
    for n in [10, 100, 1000] {
        let rule = RouteRule {
            topics: filters(n),
            ..Default::default()
        };
        g.bench_with_input(BenchmarkId::new("miss", n), &rule, |b, r| {
            b.iter(|| r.accepts(black_box("devices/x/y/z/w")))
        });
    }
    g.finish();
}

fn bench_routing(c: &mut Criterion) {
    // One publish, N brokers: which accept it, at which QoS, under which topic. One
    // element is one broker considered.
    let mut g = c.benchmark_group("router/route_publish");
    for n in [3, 10, 100] {
        let rs = rules(n);
        g.throughput(Throughput::Elements(n as u64));
        // What the session decides per upstream (the prefix is applied later while encoding).
        g.bench_with_input(BenchmarkId::new("accept_qos", n), &rs, |b, rs| {
            b.iter(|| {
                let topic = black_box(TOPIC);
                rs.iter()
                    .filter(|r| r.accepts(topic))
                    .map(|r| u32::from(r.qos(1)))
                    .sum::<u32>()
            })
        });
        // The full decision including the remapped topic as a `String`.
        let mut out: Vec<(usize, u8, Option<String>)> = Vec::with_capacity(n);
        g.bench_function(BenchmarkId::new("accept_qos_outbound_topic", n), |b| {
            b.iter(|| {
                out.clear();
                let topic = black_box(TOPIC);
                for (i, r) in rs.iter().enumerate() {
                    if r.accepts(topic) {
                        out.push((i, r.qos(1), r.outbound_topic(topic)));
                    }
                }
                out.len()
            })
        });
        // `Session` evaluates `accepts` in up to three passes per publish (echo record,
        // target count, push loop); this is the cost of that pattern.
        g.bench_with_input(BenchmarkId::new("session_3_passes", n), &rs, |b, rs| {
            b.iter(|| {
                let topic = black_box(TOPIC);
                let a = rs.iter().filter(|r| r.accepts(topic)).count();
                let c = rs.iter().filter(|r| r.accepts(topic)).count();
                let d = rs.iter().filter(|r| r.accepts(topic)).map(|r| r.qos(1));
                a + c + d.count()
            })
        });
    }
    g.finish();
}

fn bench_loopguard(c: &mut Criterion) {
    let mut g = c.benchmark_group("loopguard/message_hash");
    g.throughput(Throughput::Elements(1));
    for (name, len) in [("64B", 64), ("1KiB", 1024)] {
        let payload = vec![0xa5u8; len];
        g.bench_function(name, |b| {
            b.iter(|| loopguard::message_hash(black_box(TOPIC.as_bytes()), black_box(&payload)))
        });
    }
    g.finish();

    // The table is kept full (the default 4096 records) so every `record` also evicts: the
    // steady state of a device that publishes faster than echoes come back.
    let mut g = c.benchmark_group("loopguard/guard");
    g.throughput(Throughput::Elements(1));
    let now = Instant::now();
    let cap = loopguard::DEFAULT_CAPACITY as u64;
    let full_guard = || {
        let mut guard = LoopGuard::new(Duration::from_secs(3600), cap as usize);
        for i in 0..cap {
            guard.record("broker-1", hash_of(i), now);
        }
        guard
    };

    let mut guard = full_guard();
    let mut i = cap;
    g.bench_function("record_full_table", |b| {
        b.iter(|| {
            i += 1;
            guard.record(black_box("broker-1"), hash_of(i), now);
        })
    });

    // Echoes coming back in send order: the consumed record is the oldest one.
    let mut guard = full_guard();
    let mut next = cap;
    g.bench_function("record_then_echo_oldest", |b| {
        b.iter(|| {
            guard.record("broker-1", hash_of(next), now);
            let echo = guard.is_echo("broker-1", hash_of(next + 1 - cap), now);
            next += 1;
            echo
        })
    });

    // The echo of the newest record: `is_echo` scans the whole order queue to drop it.
    let mut guard = full_guard();
    let mut next = u64::MAX / 2;
    g.bench_function("record_then_echo_newest", |b| {
        b.iter(|| {
            next += 1;
            guard.record("broker-1", hash_of(next), now);
            guard.is_echo("broker-1", hash_of(next), now)
        })
    });

    // A message someone else published: the common case for a bidirectional broker.
    let mut guard = full_guard();
    let mut k = u64::MAX / 4;
    g.bench_function("is_echo_miss", |b| {
        b.iter(|| {
            k += 1;
            guard.is_echo(black_box("broker-1"), hash_of(k), now)
        })
    });
    let mut empty = LoopGuard::default();
    g.bench_function("is_echo_unknown_broker", |b| {
        b.iter(|| empty.is_echo(black_box("broker-9"), black_box(42), now))
    });
    g.finish();
}

/// Distinct, well-spread hashes without hashing in the measured loop.
fn hash_of(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn bench_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec/encode_publish");
    g.throughput(Throughput::Elements(1));
    let mut buf = BytesMut::with_capacity(8192);
    for (size_name, len) in [("64B", 64), ("4KiB", 4096)] {
        let msg = message(len);
        for (proto_name, proto) in [("v4", Protocol::V4), ("v5", Protocol::V5)] {
            for (prefix_name, prefix) in [("plain", None), ("prefix", Some("site-1/"))] {
                let id = format!("{proto_name}/{prefix_name}/{size_name}");
                g.bench_function(id, |b| {
                    b.iter(|| {
                        buf.clear();
                        codec::encode_publish(proto, 7, false, &msg, prefix, 1, &mut buf);
                        buf.len()
                    })
                });
            }
        }
    }
    g.finish();

    // Reading one PUBLISH out of a receive buffer. The buffer is refilled outside the
    // measurement; the read itself includes splitting it and building the `Message`.
    let mut g = c.benchmark_group("codec/read_publish");
    g.throughput(Throughput::Elements(1));
    for (size_name, len) in [("64B", 64), ("4KiB", 4096)] {
        let msg = message(len);
        for (proto_name, proto) in [("v4", Protocol::V4), ("v5", Protocol::V5)] {
            let mut wire = BytesMut::new();
            codec::encode_publish(proto, 7, false, &msg, None, 1, &mut wire);
            let wire = wire.freeze();
            g.bench_function(format!("{proto_name}/{size_name}"), |b| {
                b.iter_batched_ref(
                    || BytesMut::from(&wire[..]),
                    |buf| match codec::read(proto, buf, MAX_PACKET) {
                        Ok(Some(Packet::Publish { msg, .. })) => msg.payload.len(),
                        other => panic!("not a publish: {other:?}"),
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();

    // A receive buffer holding many small publishes back to back, as one socket read of a
    // busy device delivers them; one element is one packet.
    const STREAM: usize = 64;
    let mut g = c.benchmark_group("codec/read_publish_stream");
    g.throughput(Throughput::Elements(STREAM as u64));
    let msg = message(64);
    for (proto_name, proto) in [("v4", Protocol::V4), ("v5", Protocol::V5)] {
        let mut wire = BytesMut::new();
        for pkid in 1..=STREAM as u16 {
            codec::encode_publish(proto, pkid, false, &msg, None, 1, &mut wire);
        }
        let wire = wire.freeze();
        g.bench_function(format!("{proto_name}/64B_x{STREAM}"), |b| {
            b.iter_batched_ref(
                || BytesMut::from(&wire[..]),
                |buf| {
                    let mut n = 0;
                    while let Ok(Some(_)) = codec::read(proto, buf, MAX_PACKET) {
                        n += 1;
                    }
                    assert_eq!(n, STREAM);
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_fanout(c: &mut Criterion) {
    // One device publish into N upstream queues (a `Message` clone each), with the
    // upstream side draining in `pop_batch` batches as the upstream task does. One element
    // is one message handed to one queue and taken out again.
    let mut g = c.benchmark_group("queue/fanout");
    let msg = message(256);
    for n in [3, 10] {
        let queues: Vec<UpstreamQueue> = (0..n)
            .map(|_| UpstreamQueue::new(QueueLimits::default()))
            .collect();
        let mut drained: Vec<Queued> = Vec::with_capacity(UPSTREAM_BATCH);
        g.throughput(Throughput::Elements(n as u64));
        let mut pushed = 0usize;
        g.bench_function(BenchmarkId::new("push_and_drain", n), |b| {
            b.iter(|| {
                for q in &queues {
                    q.push(Queued::new(msg.clone(), 1, None));
                }
                pushed += 1;
                if pushed == UPSTREAM_BATCH {
                    pushed = 0;
                    for q in &queues {
                        q.pop_batch(UPSTREAM_BATCH, &mut drained);
                        drained.clear();
                    }
                }
            })
        });

        // A dead broker: its queue is full and every push evicts the oldest message.
        let full: Vec<UpstreamQueue> = (0..n)
            .map(|_| {
                let q = UpstreamQueue::new(QueueLimits {
                    max_messages: 1024,
                    overflow: OverflowPolicy::DropOldest,
                    ..Default::default()
                });
                for _ in 0..1024 {
                    q.push(Queued::new(msg.clone(), 0, None));
                }
                q
            })
            .collect();
        g.bench_function(BenchmarkId::new("push_full_drop_oldest", n), |b| {
            b.iter(|| {
                for q in &full {
                    q.push(Queued::new(msg.clone(), 0, None));
                }
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("queue/pop_batch");
    g.throughput(Throughput::Elements(UPSTREAM_BATCH as u64));
    let q = UpstreamQueue::new(QueueLimits::default());
    let mut out: Vec<Queued> = Vec::with_capacity(UPSTREAM_BATCH);
    g.bench_function(BenchmarkId::from_parameter(UPSTREAM_BATCH), |b| {
        b.iter_batched(
            || {
                for _ in 0..UPSTREAM_BATCH {
                    q.push(Queued::new(msg.clone(), 1, None));
                }
            },
            |()| {
                out.clear();
                q.pop_batch(UPSTREAM_BATCH, &mut out);
                out.len()
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn bench_qos(c: &mut Criterion) {
    // QoS 1 to a broker with `in_flight` messages outstanding: each cycle sends one and
    // takes the PUBACK of the oldest, so the window stays at the same depth.
    let mut g = c.benchmark_group("qos/outbound");
    g.throughput(Throughput::Elements(1));
    let msg = message(256);
    for in_flight in [0usize, 100, 1000] {
        let mut out: Outbound<()> = Outbound::new(u16::MAX);
        let mut pending = std::collections::VecDeque::with_capacity(in_flight + 1);
        for _ in 0..in_flight {
            pending.push_back(out.publish(msg.clone(), 1, ()));
        }
        g.bench_function(BenchmarkId::new("qos1_publish_puback", in_flight), |b| {
            b.iter(|| {
                pending.push_back(out.publish(msg.clone(), 1, ()));
                let oldest = pending.pop_front().expect("one was just pushed");
                out.on_puback(oldest).expect("in flight")
            })
        });
    }
    let mut out: Outbound<()> = Outbound::new(u16::MAX);
    g.bench_function("qos2_publish_pubrec_pubcomp", |b| {
        b.iter(|| {
            let pkid = out.publish(msg.clone(), 2, ());
            out.on_pubrec(pkid).expect("in flight");
            out.on_pubcomp(pkid).expect("released")
        })
    });
    g.finish();
}

criterion_group! {
    name = hot_path;
    // Short windows: these are nanosecond-scale loops, and `--quick` caps each benchmark
    // at the measurement time, which keeps a full quick pass well under two minutes.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = bench_matching, bench_routing, bench_loopguard, bench_codec, bench_fanout, bench_qos
}
criterion_main!(hot_path);
