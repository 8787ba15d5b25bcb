//! Wire codec cost, JSON against MessagePack in the same run so the numbers read as ratios.
//!
//! * "decode_client": `decode_client` of one `publish` frame carrying a ~100-byte data object.
//!   Both inputs come from the same `serde_json::Value` (`serde_json::to_vec` and
//!   `rmp_serde::to_vec_named`); throughput is the input frame's size.
//!   The same for a `chat.send` (a service request, decoded through its leading `type`).
//! * "encode_message": `encode_message` of the `message` frame a publish of that data object
//!   becomes; throughput is the encoded frame's size.

use chorus::protocol::{ClientFrame, Encoding, decode_client, encode_message};
use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use serde_json::{Value, json};
use std::hint::black_box;
use std::time::Duration;

const CHANNEL: &str = "topic:space-1/general";
/// The server's default `max_frame_bytes`.
const MAX_FRAME_BYTES: usize = 64 * 1024;

/// A ~100-byte JSON object, a typical chat message (the same one the hub bench publishes).
fn payload() -> Value {
    json!({
        "user": "alice@example.org",
        "text": "the meeting moves to room 4 at three",
        "ts": 1_700_000_000_123u64,
        "seq": 42,
    })
}

fn configure<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    group
}

fn decode(c: &mut Criterion) {
    let data = payload();
    println!(
        "data object: {} bytes as JSON",
        serde_json::to_vec(&data).unwrap().len()
    );
    let frame = json!({"type": "publish", "id": 42, "channel": CHANNEL, "data": data});
    let inputs = [
        ("json", serde_json::to_vec(&frame).unwrap()),
        ("msgpack", rmp_serde::to_vec_named(&frame).unwrap()),
    ];
    let expected = ClientFrame::Publish {
        id: 42,
        channel: CHANNEL.into(),
        data,
    };

    let mut group = configure(c, "decode_client");
    for (name, bytes) in &inputs {
        assert_eq!(decode_client(bytes, MAX_FRAME_BYTES).unwrap(), expected);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::new(*name, bytes.len()), bytes, |b, bytes| {
            b.iter(|| decode_client(black_box(bytes), MAX_FRAME_BYTES).expect("valid frame"))
        });
    }
    // A service request: `chat.send`, the most frequent one, with the same text and `type`
    // first, as clients write it.
    #[derive(serde::Serialize)]
    struct Send<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        id: u64,
        space: &'a str,
        room: &'a str,
        client_id: &'a str,
        body: &'a str,
    }
    let text = payload()["text"].as_str().unwrap().to_string();
    let send = Send {
        kind: "chat.send",
        id: 43,
        space: "space-1",
        room: "general",
        client_id: "c-42",
        body: &text,
    };
    for (name, bytes) in [
        ("chat.send json", serde_json::to_vec(&send).unwrap()),
        ("chat.send msgpack", rmp_serde::to_vec_named(&send).unwrap()),
    ] {
        assert!(matches!(
            decode_client(&bytes, MAX_FRAME_BYTES),
            Ok(ClientFrame::Chat(_))
        ));
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::new(name, bytes.len()), &bytes, |b, bytes| {
            b.iter(|| decode_client(black_box(bytes), MAX_FRAME_BYTES).expect("valid frame"))
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let data = payload();
    let mut group = configure(c, "encode_message");
    for (name, encoding) in [("json", Encoding::Json), ("msgpack", Encoding::Msgpack)] {
        let len = encode_message(CHANNEL, 7, &data, encoding).len();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new(name, len), &encoding, |b, &encoding| {
            b.iter(|| encode_message(CHANNEL, black_box(7), black_box(&data), encoding))
        });
    }
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
