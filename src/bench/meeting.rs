//! `chorus bench meeting`: `--peers` WebRTC participants (`rtc_peer::MeetingPeer`, webrtc-rs)
//! join one meeting through the session protocol, each its own user, and send synthetic audio
//! and video: every peer to every other one (`--scenario all`, n·(n−1)·2 remote tracks), or
//! the first peer to all the others (`--scenario fanout`, (n−1)·2 remote tracks).
//!
//! `--mode mesh`: the server relays the signalling only; the media goes peer to peer over
//! loopback, so the figures are the signalling path (join latency, time to first media) and
//! what the tool's own WebRTC stacks sustain (RTP packets per second received against the rate
//! sent, loss from sequence numbers).
//!
//! `--mode sfu`: every packet goes through the server's SFU, so the figures are the server's
//! forwarding: packets per second the peers received, the server's own count
//! (`chorus_sfu_forwarded_packets_total` from `/metrics`, when reachable), and both divided by
//! the server's CPU share (`--server-pid`): forwarded packets per second per core, subscribers
//! per core. The tool's CPU is printed next to it, so a reader sees which side was the limit.
//!
//! Steps: `join`: join every peer, one after the other (latency: `meeting.join` request to
//! reply), and wait until every remote track delivers (the server's CPU here is signalling);
//! then `--warmup`; then `media`: `--duration` seconds measured (packets and bytes received,
//! CPU and memory of both sides; latency: from a peer's join to each remote track's first
//! packet); then everyone leaves.

use super::report::{Latency, Report, Step, histogram, thousands};
use super::rtc_peer::{MeetingPeer, PeerConfig, PeerReport};
use super::target::{CommonArgs, Target, TargetKind};
use super::usage::{Sampler, Usage};
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::json;
use signaling::wire::MeetingMode;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often progress and readiness are looked at.
const POLL: Duration = Duration::from_millis(100);
/// The largest synthetic VP8 payload (an RTP packet must fit a 1,200-byte path MTU).
const MAX_VIDEO_BYTES: usize = 1100;
/// The server's count of forwarded RTP packets, in its `/metrics`.
const FORWARDED_METRIC: &str = "chorus_sfu_forwarded_packets_total";
/// The longest a `/metrics` read may take, and the most it may bring.
const METRICS_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_METRICS_BYTES: u64 = 4 << 20;
/// LiveKit's published SFU figure, the reference line of the summary: video packets forwarded
/// per second per vCPU.
const LIVEKIT_PACKETS_PER_VCPU: f64 = 38_000.0;

/// How the meeting carries media (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Peer to peer; the server relays the signalling.
    Mesh,
    /// Through the server's SFU.
    Sfu,
}

/// Who sends to whom (`--scenario`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shape {
    /// Every peer publishes audio and video and receives everyone else's.
    All,
    /// The first peer publishes audio and video; every other peer receives them.
    Fanout,
}

#[derive(Args, Debug, Clone)]
#[command(after_help = "\
In a mesh, media flows between the tool's own peers over loopback and the server carries the
signalling; in SFU mode every packet goes through the server:
  taskset -c 0 chorus serve
  taskset -c 1 chorus bench meeting --peers 8 --rate 50 -d 10 --server-pid <PID>
  taskset -c 1 chorus bench meeting --mode sfu --scenario fanout -n 21 -d 10 --server-pid <PID>
Meetings hold 50 participants by default: raise CHORUS_MEETING_MAX_PARTICIPANTS for more.")]
pub struct MeetingArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Participants, each its own user.
    #[arg(short = 'n', long, default_value_t = 4)]
    pub peers: usize,
    /// How the meeting carries media: peer to peer, or through the server's SFU.
    #[arg(long, value_enum, default_value_t = Mode::Mesh)]
    pub mode: Mode,
    /// Who sends: every peer to every other one, or the first peer to all the others.
    #[arg(long, value_enum, default_value_t = Shape::All)]
    pub scenario: Shape,
    /// The server's Prometheus endpoint, read for its count of forwarded packets (SFU mode)
    /// [default: /metrics at --url's host].
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// The meeting's room in the bench space (created by the first join).
    #[arg(long, default_value = "bench-meeting")]
    pub room: String,
    /// Seconds of measured media.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,
    /// RTP packets per second of each track; every publishing peer sends an audio and a video
    /// track.
    #[arg(short = 'r', long, default_value_t = 50.0)]
    pub rate: f64,
    /// Bytes of each synthetic VP8 payload (11 to 1100).
    #[arg(long, visible_alias = "payload", default_value_t = 1000)]
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
    /// Packets senders skipped because they fell behind (the tool was the limit).
    late: u64,
    /// Remote tracks that delivered at least one packet.
    receiving: u64,
}

fn totals(reports: &[PeerReport]) -> Totals {
    let mut t = Totals::default();
    for r in reports {
        t.sent += r.sent_packets;
        t.late += r.late_packets;
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
    let mode = match args.mode {
        Mode::Mesh => MeetingMode::Mesh,
        Mode::Sfu => MeetingMode::Sfu,
    };
    let config = PeerConfig {
        room: args.room.clone(),
        space: Some(space.clone()),
        name: None,
        publish: true,
        packet_rate: args.rate,
        video_bytes: args.video_bytes,
        bind: args.rtc_bind,
        mode,
    };
    // Peers that receive, and the remote tracks they receive (an audio and a video track of
    // each publisher but themselves).
    let (publishers, subscribers) = match args.scenario {
        Shape::All => (n, n),
        Shape::Fanout => (1, n - 1),
    };
    let tracks = (subscribers * (publishers.min(n - 1)) * 2) as u64;
    let metrics_url = args
        .metrics_url
        .clone()
        .unwrap_or_else(|| default_metrics_url(&args.common.url));

    // Join one at a time: each join is measured alone, and every later peer meets every
    // earlier one through the participant list.
    let bar = ui.bar(n as u64, "joining");
    let join_sampler = Sampler::start(target.server_pid);
    let mut peers = Vec::with_capacity(n);
    let mut join_hist = histogram();
    for i in 0..n {
        let config = PeerConfig {
            publish: i < publishers,
            ..config.clone()
        };
        let joined = match target.connect(i).await {
            Ok(conn) => MeetingPeer::join(conn, config).await,
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

    let sfu = args.mode == Mode::Sfu;
    let forwarded_before = if sfu {
        match scrape(&metrics_url, FORWARDED_METRIC).await {
            Ok(v) => Some(v),
            Err(e) => {
                ui.note(
                    &mut notes,
                    format!("the server's forwarded count is not known: {e:#}"),
                );
                None
            }
        }
    } else {
        None
    };
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
    let forwarded = match forwarded_before {
        Some(before) => match scrape(&metrics_url, FORWARDED_METRIC).await {
            Ok(after) => Some(after.saturating_sub(before)),
            Err(e) => {
                ui.note(
                    &mut notes,
                    format!("the server's forwarded count is not known: {e:#}"),
                );
                None
            }
        },
        None => None,
    };
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
        ("publishers", publishers as u64),
        ("subscribers", subscribers as u64),
        ("remote_tracks", tracks),
        ("remote_tracks_receiving", after.receiving),
        ("packets_received", received),
        ("bytes_received", after.bytes - before.bytes),
        ("packets_sent", after.sent - before.sent),
        ("packets_late", after.late - before.late),
        ("lost", end.lost),
        ("lost_measuring", after.lost - before.lost),
        ("duplicates", end.duplicates),
        ("keyframes", end.keyframes),
    ] {
        counters.insert(name.to_string(), value);
    }
    if let Some(forwarded) = forwarded {
        counters.insert("server_forwarded".into(), forwarded);
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
    let forwarded_per_s = forwarded.map(|f| f as f64 / wall);
    let per_core = sfu.then(|| {
        PerCore::of(
            forwarded_per_s.unwrap_or(packets_per_s),
            subscribers,
            &usage,
        )
    });
    let mut lines = vec![
        format!(
            "{n} peers ({publishers} publishing), {tracks} remote tracks: {} RTP packets/s \
             received, {} sent, {:.1}% of the nominal {} ({} per track); {} lost ({} while \
             measuring)",
            thousands(packets_per_s),
            thousands(sent_per_s),
            100.0 * packets_per_s / expected_per_s,
            thousands(expected_per_s),
            args.rate,
            end.lost,
            after.lost - before.lost,
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
    let late = after.late - before.late;
    if late > 0 {
        lines.push(format!(
            "the tool's senders fell behind: {late} packets skipped (the tool was the limit: \
             fewer peers, a lower --rate, or more --threads)"
        ));
    }
    if let Some(per_core) = &per_core {
        lines.extend(per_core.lines(forwarded_per_s, packets_per_s, subscribers, &usage));
    }
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
            "mode": mode,
            "scenario": match args.scenario {
                Shape::All => "all",
                Shape::Fanout => "fanout",
            },
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
            "server_forwarded_per_s": forwarded_per_s,
            "server_cpu_fraction": per_core.as_ref().and_then(|c| c.server_cpu),
            "forwarded_per_s_per_core": per_core.as_ref().and_then(|c| c.packets),
            "subscribers_per_core": per_core.as_ref().and_then(|c| c.subscribers),
            "tool_cpu_fraction": media_step.usage.tool_cpu_pct / 100.0,
            "livekit_reference_packets_per_vcpu": sfu.then_some(LIVEKIT_PACKETS_PER_VCPU),
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

/// The server's SFU figures per core of its CPU.
struct PerCore {
    /// The server's CPU time per wall time (1.0: one core busy), if `--server-pid` was given.
    server_cpu: Option<f64>,
    /// Forwarded packets per second per core.
    packets: Option<f64>,
    /// Subscribers per core, at the run's rate.
    subscribers: Option<f64>,
}

impl PerCore {
    fn of(forwarded_per_s: f64, subscribers: usize, usage: &Usage) -> PerCore {
        let server_cpu = usage
            .server
            .as_ref()
            .map(|s| s.cpu_pct / 100.0)
            .filter(|&f| f > 0.0);
        PerCore {
            server_cpu,
            packets: server_cpu.map(|f| forwarded_per_s / f),
            subscribers: server_cpu.map(|f| subscribers as f64 / f),
        }
    }

    fn lines(
        &self,
        forwarded_per_s: Option<f64>,
        received_per_s: f64,
        subscribers: usize,
        usage: &Usage,
    ) -> Vec<String> {
        let mut lines = Vec::new();
        lines.push(match forwarded_per_s {
            Some(f) => format!(
                "server forwarded {} RTP packets/s ({FORWARDED_METRIC}), peers received {}: \
                 difference {} packets/s (lost, or in flight at the window's edges)",
                thousands(f),
                thousands(received_per_s),
                thousands(f - received_per_s),
            ),
            None => "server forwarded: unknown (its /metrics was not reachable: \
                     --metrics-url); the per-core figures use the packets the peers received"
                .to_string(),
        });
        let tool = format!(
            "tool CPU {:.0}% of a core ({} received packets/s per tool core)",
            usage.tool_cpu_pct,
            thousands(received_per_s / (usage.tool_cpu_pct / 100.0).max(1e-9)),
        );
        lines.push(match (self.server_cpu, self.packets, self.subscribers) {
            (Some(cpu), Some(packets), Some(subs)) => format!(
                "server CPU {:.0}% of a core: {} forwarded packets/s per core, {subs:.0} \
                 subscribers per core ({subscribers} subscribers at this rate); {tool}",
                cpu * 100.0,
                thousands(packets),
            ),
            _ => format!("server CPU unknown (--server-pid): no per-core figures; {tool}"),
        });
        lines.push(format!(
            "reference: LiveKit publishes ~{} video packets/s per vCPU for its SFU (their \
             published figure, not measured here)",
            thousands(LIVEKIT_PACKETS_PER_VCPU)
        ));
        lines
    }
}

/// `/metrics` at the host of a `ws://` URL.
fn default_metrics_url(ws_url: &str) -> String {
    let rest = ws_url.split_once("://").map_or(ws_url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("http://{authority}/metrics")
}

/// The value of counter `name` in the Prometheus text served at `url` (plain `http://`).
async fn scrape(url: &str, name: &str) -> anyhow::Result<u64> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only plain http:// is read"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream
            .take(MAX_METRICS_BYTES)
            .read_to_end(&mut response)
            .await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(METRICS_TIMEOUT, fetch)
        .await
        .with_context(|| format!("{url}: no answer within {METRICS_TIMEOUT:?}"))?
        .with_context(|| format!("cannot read {url}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{url}: not an HTTP response"))?;
    let status = head.split_whitespace().nth(1);
    if status != Some("200") {
        bail!("{url}: status {}", status.unwrap_or("missing"));
    }
    metric(body, name).with_context(|| format!("{url} has no {name}"))
}

/// The value of an unlabelled sample `name` in Prometheus text.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (n, value) = line.split_once(' ')?;
        if n != name {
            return None;
        }
        let value: f64 = value.trim().parse().ok()?;
        Some(value as u64)
    })
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_counter_from_prometheus_text() {
        let text = "# HELP chorus_sfu_forwarded_packets RTP packets\n\
                    # TYPE chorus_sfu_forwarded_packets counter\n\
                    chorus_sfu_forwarded_packets_total 1234\n\
                    chorus_sfu_forwarded_bytes_total 99\n";
        assert_eq!(metric(text, FORWARDED_METRIC), Some(1234));
        assert_eq!(metric(text, "chorus_sfu_forwarded_bytes_total"), Some(99));
        assert_eq!(metric(text, "chorus_sfu_forwarded"), None);
        assert_eq!(metric("", FORWARDED_METRIC), None);
    }

    #[test]
    fn metrics_live_at_the_websocket_host() {
        assert_eq!(
            default_metrics_url("ws://127.0.0.1:7700/ws"),
            "http://127.0.0.1:7700/metrics"
        );
        assert_eq!(
            default_metrics_url("ws://[::1]:7700?token=x"),
            "http://[::1]:7700/metrics"
        );
    }

    #[test]
    fn per_core_figures_divide_by_the_server_cpu() {
        let mut usage = Sampler::start(None).finish();
        assert!(PerCore::of(1000.0, 10, &usage).packets.is_none());
        usage.server = Some(crate::bench::usage::ServerUsage {
            pid: 1,
            cpu_s: 1.0,
            cpu_pct: 25.0,
            cores: 1,
            rss_start_kib: 0,
            rss_end_kib: 0,
            peak_rss_kib: 0,
            wait_pct: 0.0,
        });
        let c = PerCore::of(1000.0, 10, &usage);
        assert_eq!(
            (c.server_cpu, c.packets, c.subscribers),
            (Some(0.25), Some(4000.0), Some(40.0))
        );
    }
}
