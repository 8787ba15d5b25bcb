//! Fan-out cost of one publish to N subscribers, against two baselines measured in the same run,
//! so the numbers read as ratios. Every benchmark in the "fanout" group does, per iteration, the
//! whole path from "a message was published" to "every subscriber's writer holds the frame":
//!
//! * `chorus_hub`: one `Hub::publish` of a ~100-byte JSON payload to N subscribed JSON outboxes.
//!   That assigns the offset, encodes the `message` frame once (`encode_message`), and pushes a
//!   `Bytes` clone of it into each outbox (outbox mutex, byte accounting, timestamp, the
//!   writer's waker, metrics). Then every outbox is drained the way a connection's writer
//!   drains it: `Outbox::next_batch`, which is async but returns on its first poll when frames
//!   are queued, so it is polled once with `now_or_never` (no runtime, no scheduler in the
//!   timing).
//! * `tokio_broadcast`: the same message encoded once (`encode_message`, so encoding costs the
//!   same as in the hub), sent as one `Bytes` on a `tokio::sync::broadcast` channel with N
//!   receivers, and every receiver `try_recv`s it (a `Bytes` clone each). This is the "shared
//!   ring buffer" design: no per-subscriber queue, no per-subscriber byte limit.
//! * `naive_mpsc_per_subscriber`: the message serialized with `serde_json::to_vec` once *per
//!   subscriber* and `try_send` into that subscriber's own bounded `tokio::sync::mpsc` channel,
//!   then every receiver `try_recv`s it: the "one encode + one queue per subscriber" design.
//!
//! Throughput is `Elements(N)`, so criterion reports deliveries per second. Each benchmark checks
//! once before timing that every subscriber gets the right frame, and counts deliveries during
//! timing and asserts afterwards that none was lost.

use bytes::Bytes;
use chorus::hub::{Batch, Hub, Outbox};
use chorus::metrics::Metrics;
use chorus::protocol::{Encoding, encode_message};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

const CHANNEL: &str = "topic:space-1/general";
const SIZES: [usize; 2] = [1_000, 10_000];
/// The server's default `outbox_bytes`; each iteration drains, so an outbox never holds more
/// than one frame and nothing is ever dropped as a slow consumer.
const OUTBOX_BYTES: usize = 4 * 1024 * 1024;

/// A ~100-byte JSON object, a typical chat message.
fn payload() -> Value {
    json!({
        "user": "alice@example.org",
        "text": "the meeting moves to room 4 at three",
        "ts": 1_700_000_000_123u64,
        "seq": 42,
    })
}

/// The `message` frame as a naive server would define and serialize it per subscriber; the same
/// bytes `encode_message` produces for JSON.
#[derive(Serialize)]
struct Message<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channel: &'a str,
    offset: u64,
    data: &'a Value,
}

/// Take the frames queued in `outbox`, as its writer would; panics if it is closed or empty.
fn drain(outbox: &Outbox, out: &mut VecDeque<Bytes>) -> usize {
    match outbox.next_batch(out).now_or_never() {
        Some(Batch::Frames(_)) => {}
        Some(Batch::Closed(reason)) => panic!("outbox {} closed: {reason:?}", outbox.id()),
        None => panic!("outbox {} had nothing queued", outbox.id()),
    }
    let n = out.len();
    // The writer would write these; dropping them releases the shared frame's refcount.
    black_box(&*out);
    out.clear();
    n
}

fn chorus_hub(n: usize) -> (Hub, Vec<Arc<Outbox>>) {
    let metrics = Arc::new(Metrics::new());
    let hub = Hub::new(metrics.clone());
    let outboxes: Vec<_> = (0..n as u64)
        .map(|id| {
            let outbox = Outbox::new(id, OUTBOX_BYTES, metrics.clone());
            outbox.set_encoding(Encoding::Json);
            Arc::new(outbox)
        })
        .collect();
    for outbox in &outboxes {
        hub.subscribe(CHANNEL, outbox).expect("first subscription");
    }
    (hub, outboxes)
}

fn fanout(c: &mut Criterion) {
    let data = payload();
    let sample = encode_message(CHANNEL, 1, &data, Encoding::Json);
    let naive = serde_json::to_vec(&Message {
        kind: "message",
        channel: CHANNEL,
        offset: 1,
        data: &data,
    })
    .unwrap();
    assert_eq!(naive, sample, "both sides put the same bytes on the wire");
    println!("message frame: {} bytes", sample.len());

    let mut group = c.benchmark_group("fanout");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));

        // Setup stays outside the routine: criterion calls the routine once per sample.
        let started = Instant::now();
        let (hub, outboxes) = chorus_hub(n);
        println!("chorus_hub/{n}: subscribing took {:?}", started.elapsed());
        let mut out = VecDeque::new();
        // Once, untimed: every subscriber gets the very same encoded frame.
        let published = hub.publish(CHANNEL, &data);
        assert_eq!(published.delivered, n);
        let mut first: Option<Bytes> = None;
        for outbox in &outboxes {
            assert!(matches!(
                outbox.next_batch(&mut out).now_or_never(),
                Some(Batch::Frames(_))
            ));
            assert_eq!(out.len(), 1);
            let frame = out.pop_front().unwrap();
            let first = first.get_or_insert_with(|| frame.clone());
            assert_eq!(frame.as_ptr(), first.as_ptr(), "shared, not copied");
        }
        let frame: Value = serde_json::from_slice(&first.unwrap()).unwrap();
        assert_eq!(frame["data"], data);

        group.bench_with_input(BenchmarkId::new("chorus_hub", n), &n, |b, &n| {
            let (mut iters, mut delivered, mut drained) = (0usize, 0usize, 0usize);
            b.iter(|| {
                let published = hub.publish(CHANNEL, black_box(&data));
                delivered += published.delivered;
                for outbox in &outboxes {
                    drained += drain(outbox, &mut out);
                }
                iters += 1;
            });
            assert_eq!((delivered, drained), (iters * n, iters * n), "lost frames");
        });
        assert!(outboxes.iter().all(|o| !o.is_closed()));
        drop((hub, outboxes));

        // Capacity 16: every iteration empties it, so no receiver ever lags.
        let (tx, _) = broadcast::channel::<Bytes>(16);
        let mut rxs: Vec<_> = (0..n).map(|_| tx.subscribe()).collect();
        let mut offset = 0u64;
        group.bench_with_input(BenchmarkId::new("tokio_broadcast", n), &n, |b, &n| {
            let (mut iters, mut delivered, mut drained) = (0usize, 0usize, 0usize);
            b.iter(|| {
                offset += 1;
                // Encoded once, like the hub does.
                let frame = encode_message(CHANNEL, offset, black_box(&data), Encoding::Json);
                delivered += tx.send(frame).expect("receivers exist");
                for rx in &mut rxs {
                    let frame = rx.try_recv().expect("the frame was sent");
                    black_box(&frame);
                    drained += 1;
                }
                iters += 1;
            });
            assert_eq!((delivered, drained), (iters * n, iters * n), "lost frames");
        });
        assert!(rxs.iter_mut().all(|rx| rx.try_recv().is_err()));
        drop((tx, rxs));

        let (txs, mut rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::channel::<Vec<u8>>(64)).unzip();
        let mut offset = 0u64;
        group.bench_with_input(
            BenchmarkId::new("naive_mpsc_per_subscriber", n),
            &n,
            |b, &n| {
                let (mut iters, mut drained) = (0usize, 0usize);
                b.iter(|| {
                    offset += 1;
                    let data = black_box(&data);
                    for tx in &txs {
                        // Encoded once per subscriber.
                        let frame = serde_json::to_vec(&Message {
                            kind: "message",
                            channel: CHANNEL,
                            offset,
                            data,
                        })
                        .expect("messages serialize to JSON");
                        tx.try_send(frame).expect("the queue has room");
                    }
                    for rx in &mut rxs {
                        let frame = rx.try_recv().expect("the frame was sent");
                        black_box(&frame);
                        drained += 1;
                    }
                    iters += 1;
                });
                assert_eq!(drained, iters * n, "lost frames");
            },
        );
        assert!(rxs.iter_mut().all(|rx| rx.try_recv().is_err()));
        drop((txs, rxs));
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
