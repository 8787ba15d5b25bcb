//! `chorus bench meeting`: `--peers` WebRTC participants (`rtc_peer::MeetingPeer`, webrtc-rs)
//! join one meeting through the session protocol, each its own user, and send each other
//! synthetic audio and video in a full mesh: n·(n−1)/2 peer connections, n·(n−1)·2 remote
//! tracks. The server relays the signalling only; the media goes peer to peer over loopback,
//! so the figures are the signalling path (join latency, time to first media) and what the
//! tool's own WebRTC stacks sustain (RTP packets per second received against the rate sent,
//! loss from sequence numbers).
//!
//! Steps: `join`: join every peer, one after the other (latency: `meeting.join` request to
//! reply), and wait until every remote track delivers (the server's CPU here is signalling);
//! then `--warmup`; then `media`: `--duration` seconds measured (packets and bytes received,
//! CPU and memory of both sides; latency: from a peer's join to each remote track's first
//! packet); then everyone leaves.

use super::report::{Latency, Report, Step, histogram, thousands};
use super::rtc_peer::{MeetingPeer, PeerConfig, PeerReport};
use super::target::{CommonArgs, Target, TargetKind};
use super::usage::Sampler;
use anyhow::bail;
use clap::Args;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// How often progress and readiness are looked at.
const POLL: Duration = Duration::from_millis(100);
/// The largest synthetic VP8 payload (an RTP packet must fit a 1,200-byte path MTU).
const MAX_VIDEO_BYTES: usize = 1100;

#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Media flows between the tool's own peers over loopback; the server carries the signalling:
  taskset -c 0 chorus serve
  taskset -c 1 chorus bench meeting --peers 8 --rate 50 -d 10 --server-pid <PID>")]
pub struct MeetingArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Participants, each its own user with a peer connection to every other one.
    #[arg(short = 'n', long, default_value_t = 4)]
    pub peers: usize,
    /// The meeting's room in the bench space (created by the first join).
    #[arg(long, default_value = "bench-meeting")]
    pub room: String,
    /// Seconds of measured media.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,
    /// RTP packets per second of each track; every peer sends an audio and a video track to
    /// every other peer.
    #[arg(short = 'r', long, default_value_t = 50.0)]
    pub rate: f64,
    /// Bytes of each synthetic VP8 payload (11 to 1100).
    #[arg(long, default_value_t = 1000)]
    pub video_bytes: usize,
    /// Address the peers gather their ICE candidates on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub rtc_bind: IpAddr,
    /// Seconds to wait for every remote track's first packet before measuring anyway.
    #[arg(long, default_value_t = 30.0)]
    pub media_timeout: f64,
}

/// Totals over every peer's remote tracks.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    packets: u64,
    bytes: u64,
    lost: u64,
    duplicates: u64,
    keyframes: u64,
    sent: u64,
    /// Remote tracks that delivered at least one packet.
    receiving: u64,
}

fn totals(reports: &[PeerReport]) -> Totals {
    let mut t = Totals::default();
    for r in reports {
        t.sent += r.sent_packets;
        for track in &r.remote {
            t.packets += track.packets;
            t.bytes += track.bytes;
            t.lost += track.lost;
            t.duplicates += track.duplicates;
            t.keyframes += track.keyframes;
            t.receiving += u64::from(track.packets > 0);
        }
    }
    t
}

fn reports(peers: &[MeetingPeer]) -> Vec<PeerReport> {
    peers.iter().map(MeetingPeer::report).collect()
}

pub async fn run(args: &MeetingArgs) -> anyhow::Result<Report> {
    let n = args.peers;
    if n < 2 {
        bail!("--peers: a meeting needs at least 2");
    }
    if !(args.rate > 0.0 && args.rate <= 1000.0) {
        bail!("--rate: between 0 and 1000 packets per second");
    }
    if !(11..=MAX_VIDEO_BYTES).contains(&args.video_bytes) {
        bail!("--video-bytes: between 11 and {MAX_VIDEO_BYTES}");
    }
    let target = Target::new(&args.common, n, None).await?;
    if target.kind != TargetKind::Chorus {
        bail!("--target nats has no meetings");
    }
    let ui = target.ui.clone();
    let mut notes = Vec::new();
    let space = target.prepare_space(n).await?;
    let config = PeerConfig {
        room: args.room.clone(),
        space: Some(space.clone()),
        name: None,
        publish: true,
        packet_rate: args.rate,
        video_bytes: args.video_bytes,
        bind: args.rtc_bind,
    };

    // Join one at a time: each join is measured alone, and every later peer meets every
    // earlier one through the participant list.
    let bar = ui.bar(n as u64, "joining");
    let join_sampler = Sampler::start(target.server_pid);
    let mut peers = Vec::with_capacity(n);
    let mut join_hist = histogram();
    for i in 0..n {
        let joined = match target.connect(i).await {
            Ok(conn) => MeetingPeer::join(conn, config.clone()).await,
            Err(e) => Err(e),
        };
        match joined {
            Ok(peer) => {
                join_hist.saturating_record(peer.join_latency().as_micros() as u64);
                peers.push(peer);
            }
            Err(e) => {
                bar.finish_and_clear();
                for peer in peers {
                    peer.leave().await;
                }
                return Err(e.context(format!("peer {i} could not join")));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();

    let tracks = (n * (n - 1) * 2) as u64;
    let bar = ui.bar(tracks, "media flowing");
    let deadline = Instant::now() + Duration::from_secs_f64(args.media_timeout.max(0.0));
    let media_started = Instant::now();
    loop {
        let receiving = totals(&reports(&peers)).receiving;
        bar.set_position(receiving);
        if receiving >= tracks {
            break;
        }
        if Instant::now() >= deadline {
            ui.note(
                &mut notes,
                format!(
                    "only {receiving} of {tracks} remote tracks delivered within {:.0} s",
                    args.media_timeout
                ),
            );
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    bar.finish_and_clear();
    let receiving = totals(&reports(&peers)).receiving;
    let join_usage = join_sampler.finish();
    let media_ready_s = media_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(args.common.warmup.max(0.0))).await;

    let before = totals(&reports(&peers));
    let sampler = Sampler::start(target.server_pid);
    let measured = Duration::from_secs_f64(args.duration.max(0.1));
    let bar = ui.bar(
        measured.as_millis() as u64 / POLL.as_millis() as u64,
        "measuring",
    );
    let started = Instant::now();
    while started.elapsed() < measured {
        tokio::time::sleep(POLL.min(measured.saturating_sub(started.elapsed()))).await;
        bar.set_position(started.elapsed().as_millis() as u64 / POLL.as_millis() as u64);
    }
    let after = totals(&reports(&peers));
    let usage = sampler.finish();
    bar.finish_and_clear();

    let mut finals = Vec::with_capacity(n);
    for peer in peers {
        finals.push(peer.leave().await);
    }
    let end = totals(&finals);

    let wall = usage.wall_s.max(1e-9);
    let received = after.packets - before.packets;
    let packets_per_s = received as f64 / wall;
    let sent_per_s = (after.sent - before.sent) as f64 / wall;
    // The baseline: what the peers would receive if every track kept its nominal rate.
    let expected_per_s = tracks as f64 * args.rate;
    let mut first_hist = histogram();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for r in &finals {
        for track in &r.remote {
            if let Some(ms) = track.first_packet_ms {
                first_hist.saturating_record((ms * 1000.0) as u64);
            }
        }
        for (what, count) in &r.errors {
            *errors.entry(what.clone()).or_insert(0) += count;
        }
        if let Some(why) = &r.ended {
            *errors.entry(format!("ended early: {why}")).or_insert(0) += 1;
        }
    }
    let mut counters = BTreeMap::new();
    for (name, value) in [
        ("peers", n as u64),
        ("remote_tracks", tracks),
        ("remote_tracks_receiving", after.receiving),
        ("packets_received", received),
        ("bytes_received", after.bytes - before.bytes),
        ("packets_sent", after.sent - before.sent),
        ("lost", end.lost),
        ("duplicates", end.duplicates),
        ("keyframes", end.keyframes),
    ] {
        counters.insert(name.to_string(), value);
    }
    let join = Latency::of(&join_hist);
    let first = Latency::of(&first_hist);
    let join_step = Step {
        label: "join".into(),
        unit: "joins/s".into(),
        throughput: n as f64 / (join_usage.wall_s - media_ready_s).max(1e-9),
        counters: BTreeMap::from([
            ("peers".to_string(), n as u64),
            ("remote_tracks".to_string(), tracks),
            ("remote_tracks_receiving".to_string(), receiving),
        ]),
        errors: BTreeMap::new(),
        latency: join.clone(),
        limit: join_usage.limit(args.common.threads),
        usage: join_usage,
        pass: receiving >= tracks,
        failure: (receiving < tracks)
            .then(|| format!("{receiving} of {tracks} remote tracks delivered")),
    };
    let failure = if after.receiving < tracks {
        Some(format!(
            "{} of {tracks} remote tracks delivered",
            after.receiving
        ))
    } else if end.lost > 0 {
        Some(format!("{} packets lost", end.lost))
    } else if !errors.is_empty() {
        Some(format!("errors: {errors:?}"))
    } else {
        None
    };
    let pass = failure.is_none() && join_step.pass;
    let ms = |l: &Option<Latency>, pick: fn(&Latency) -> u64| {
        l.as_ref().map(|l| pick(l) as f64 / 1000.0)
    };
    let per_peer: Vec<_> = finals
        .iter()
        .map(|r| {
            let t = totals(std::slice::from_ref(r));
            json!({
                "sid": r.sid,
                "join_ms": r.join_latency_ms,
                "remote_tracks_receiving": t.receiving,
                "packets_received": t.packets,
                "packets_sent": t.sent,
                "lost": t.lost,
            })
        })
        .collect();
    let lines = vec![
        format!(
            "{n} peers, {tracks} remote tracks: {} RTP packets/s received, {} sent, {:.1}% of the \
             nominal {} ({} per track); {} lost",
            thousands(packets_per_s),
            thousands(sent_per_s),
            100.0 * packets_per_s / expected_per_s,
            thousands(expected_per_s),
            args.rate,
            end.lost,
        ),
        format!(
            "join (request to reply) p50 {} ms, p99 {} ms; first media p50 {} ms, p99 {} ms after the join",
            fmt_ms(ms(&join, |l| l.p50_us)),
            fmt_ms(ms(&join, |l| l.p99_us)),
            fmt_ms(ms(&first, |l| l.p50_us)),
            fmt_ms(ms(&first, |l| l.p99_us)),
        ),
        format!("every remote track delivering after {media_ready_s:.2} s"),
    ];
    let media_step = Step {
        label: "media".into(),
        unit: "packets/s".into(),
        throughput: packets_per_s,
        counters,
        errors,
        latency: first.clone(),
        limit: usage.limit(args.common.threads),
        usage,
        pass,
        failure,
    };
    Ok(Report {
        scenario: "meeting".into(),
        target: target.describe(),
        encoding: target.encoding_name().into(),
        params: json!({
            "peers": n,
            "room": args.room,
            "space": space,
            "duration_s": args.duration,
            "rate": args.rate,
            "video_bytes": args.video_bytes,
            "threads": args.common.threads,
        }),
        summary: json!({
            "packets_per_s": packets_per_s,
            "sent_packets_per_s": sent_per_s,
            "expected_packets_per_s": expected_per_s,
            "delivered_ratio": packets_per_s / expected_per_s,
            "join_p50_ms": ms(&join, |l| l.p50_us),
            "join_p99_ms": ms(&join, |l| l.p99_us),
            "first_media_p50_ms": ms(&first, |l| l.p50_us),
            "first_media_p99_ms": ms(&first, |l| l.p99_us),
            "media_ready_s": media_ready_s,
            "lost": end.lost,
            "peers": per_peer,
            "pass": pass,
        }),
        steps: vec![join_step, media_step],
        summary_lines: lines,
        notes,
    })
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}
