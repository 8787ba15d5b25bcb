//! SFU forwarding cost: the room's own time per packet, one publisher's video frames (one RTP
//! packet each) forwarded to 1, 4 and 16 subscribers, against the same room receiving the same
//! packets with no subscriber (decrypt and reassemble only) in the same run, so the numbers read
//! as ratios. Clients are in-memory str0m peers (`signaling::sfu::sim`); only the time spent in
//! the room's datagram, timer and transmit calls is counted, so their work is not.
//!
//! Throughput is forwarded packets (one per subscriber per frame), or received packets for the
//! baseline: packets per second of one core.
//!
//! `cargo bench -p signaling --features sim --bench sfu_forward`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use signaling::sfu::RoomConfig;
use signaling::sfu::sim::Net;
use signaling::wire::TrackKind;
use std::time::Duration;

const TRACK: &str = "t-video";
/// A video frame that fits one RTP packet.
const FRAME_BYTES: usize = 1000;

/// A room where `publisher` sends video to `subscribers` subscribers, all connected.
fn room(subscribers: usize) -> Net {
    let mut net = Net::new(RoomConfig::default());
    net.join("publisher");
    net.room
        .publish("publisher", TRACK, TrackKind::Video)
        .unwrap();
    net.settle();
    let mut names = vec!["publisher".to_string()];
    for i in 0..subscribers {
        let name = format!("s{i}");
        net.join(&name);
        net.room.subscribe(&name, TRACK).unwrap();
        names.push(name);
    }
    net.settle();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    net.connect(&names);
    net
}

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("sfu_forward");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let payload = vec![0x10; FRAME_BYTES];
    for subscribers in [0, 1, 4, 16] {
        let mut net = room(subscribers);
        let id = if subscribers == 0 {
            BenchmarkId::new("receive_only", 0)
        } else {
            BenchmarkId::new("subscribers", subscribers)
        };
        group.throughput(Throughput::Elements(subscribers.max(1) as u64));
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                net.room_busy = Duration::ZERO;
                for _ in 0..iters {
                    net.send_frame("publisher", TRACK, &payload);
                    for client in net.clients.values_mut() {
                        client.frames.clear();
                    }
                }
                net.room_busy
            })
        });
        let stats = net.room.stats();
        assert_eq!(stats.dropped_frames, 0, "{stats:?}");
        assert_eq!(stats.forwarded_packets > 0, subscribers > 0, "{stats:?}");
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
