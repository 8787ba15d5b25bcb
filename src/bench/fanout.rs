//! `chorus bench fanout`: S subscribers on one channel, P publishers sharing a rate, messages of
//! B bytes; one fixed rate, or a ladder of rates that finds the saturation point (the highest
//! rate with nothing lost and p99 under a bound).
//!
//! Every message carries a stamp (`scan::Stamp`): the phase it belongs to, its publisher and
//! sequence number, and its send time on the run's own monotonic clock, so subscribers in this
//! process compute latency = receive time − send time. Each step is a warm-up phase then a
//! measured phase; messages are attributed to the phase in their stamp, so stragglers of one
//! phase never count in the next. After a measured phase the publishers stop and the step waits
//! (up to `--drain-ms` without progress) for the last deliveries; whatever has not arrived by
//! then is lost.
//!
//! Subscribers scan frames without decoding them (`scan`), record into a few shared shards
//! (one lock per read, not per message) and answer pings. Publishers pace themselves in ticks
//! (`--tick-ms`), writing each tick's messages with one write, and count replies and errors
//! (`rate_limited` above all) without waiting for them.
//!
//! With `--slow K`, K more subscribers subscribe and then never read, as stalled clients: the
//! server must cut them as slow consumers while the others' figures stay as they were. They
//! read what reached them only after the last step (`SlowSub::drain`), and the summary says how
//! they ended (the `disconnect` code and message, the close frame, or still connected), how long
//! after subscribing the server stopped feeding them, and how much reached them.
//!
//! With `--target nats` the same code runs against nats-server (see `nats`): messages are
//! `PUB`s with the same stamp as payload, a publisher's batch counts as published at the `PONG`
//! answering the `PING` sent after it, and there are no offsets to check.

use super::report::{Latency, Report, Step, histogram, thousands};
use super::scan::{self, ChannelScanner, Scanned, Stamp, mp_write_str, mp_write_uint, write_stamp};
use super::target::{CommonArgs, Target, TargetKind, abort_all};
use super::usage::Sampler;
use super::wire::{Reader, Writer};
use crate::protocol::{Encoding, ServerFrame};
use anyhow::bail;
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Subscribers record into this many shards at most (each with its own histogram).
const MAX_SHARDS: usize = 64;
/// Bits of a publish request id holding the sequence number; the phase sits above them.
const SEQ_BITS: u32 = 40;
/// Marks a record of a message that no bench publisher of this run sent.
const FOREIGN: u32 = u32::MAX;

#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Load tests need a server without the default per-connection rate limit (500 frames/s):
  CHORUS_RATE_PER_SEC=1000000 CHORUS_RATE_BURST=1000000 taskset -c 0 chorus serve
  taskset -c 1 chorus bench fanout -s 100 --ladder 10k*1.5 --server-pid $(pgrep -f 'chorus serve')
Rates are messages published per second over all publishers; deliveries/s = rate x subscribers.
The same scenario against nats-server's websocket listener (websocket { port: 8080, no_tls: true }):
  taskset -c 1 chorus bench fanout --target nats --url ws://127.0.0.1:8080 -s 100 --ladder 10k*1.5")]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Subscriber connections, all on one channel.
    #[arg(short = 's', long, default_value_t = 100)]
    pub subscribers: usize,
    /// Publisher connections; the rate is split evenly between them.
    #[arg(short = 'p', long, default_value_t = 1)]
    pub publishers: usize,
    /// Size of each message's `data`, in bytes of the chosen encoding.
    #[arg(short = 'b', long, default_value_t = 100)]
    pub size: usize,
    /// Messages published per second, over all publishers (e.g. 1000, 20k, 1.5M).
    #[arg(short = 'r', long, default_value = "1000", value_parser = parse_rate)]
    pub rate: f64,
    /// Run a ladder of rates instead of --rate, until a step fails: a list (`1000,2000,5k,10k`)
    /// or START*FACTOR (`1000*2`: 1000, 2000, 4000, … up to --max-steps).
    #[arg(long, value_parser = parse_ladder)]
    pub ladder: Option<Ladder>,
    /// Seconds of each measured step.
    #[arg(short = 'd', long, value_name = "SECS", default_value_t = 5.0)]
    pub duration: f64,
    /// A step passes with nothing lost, no duplicates, no errors and p99 at most this.
    #[arg(long, value_name = "MS", default_value_t = 50.0)]
    pub p99_bound_ms: f64,
    /// Most steps of a START*FACTOR ladder.
    #[arg(long, default_value_t = 20)]
    pub max_steps: usize,
    /// Topic of the channel `topic:<space>/<topic>` (NATS: subject `<space>.<topic>`).
    #[arg(long, default_value = "fanout")]
    pub topic: String,
    /// Publishers write every this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1)]
    pub tick_ms: u64,
    /// After a step, how long to wait without progress for the last deliveries.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub drain_ms: u64,
    /// Extra subscribers that subscribe and then never read, as a stalled client would: the
    /// server must cut them as slow consumers while the others' figures do not move. They
    /// read what reached them only after the last step, to report how they were treated.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub slow: usize,
}

/// Rates of a ladder.
#[derive(Debug, Clone, PartialEq)]
pub enum Ladder {
    List(Vec<f64>),
    Geometric { start: f64, factor: f64 },
}

impl Ladder {
    pub fn rates(&self, max_steps: usize) -> Vec<f64> {
        match self {
            Ladder::List(rates) => rates.clone(),
            Ladder::Geometric { start, factor } => (0..max_steps)
                .map(|i| (start * factor.powi(i as i32)).round())
                .collect(),
        }
    }
}

/// `1000`, `20k`, `1.5M`.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (digits, scale) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        _ => (s, 1.0),
    };
    match digits.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v * scale),
        _ => Err(format!(
            "`{s}` is not a positive rate like 500, 20k or 1.5M"
        )),
    }
}

pub fn parse_ladder(s: &str) -> Result<Ladder, String> {
    if let Some((start, factor)) = s.split_once('*') {
        let start = parse_rate(start)?;
        let factor: f64 = factor
            .trim()
            .parse()
            .map_err(|_| format!("bad factor in `{s}`"))?;
        if factor <= 1.0 {
            return Err(format!("the factor in `{s}` must be above 1"));
        }
        return Ok(Ladder::Geometric { start, factor });
    }
    let rates = s
        .split(',')
        .map(parse_rate)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Ladder::List(rates))
}

/// Figures of one measured phase, from one shard or merged.
struct PhaseStats {
    hist: Histogram<u64>,
    received: u64,
    duplicates: u64,
    gaps: u64,
    offset_gaps: u64,
    last_rx: Option<Instant>,
}

impl PhaseStats {
    fn new() -> PhaseStats {
        PhaseStats {
            hist: histogram(),
            received: 0,
            duplicates: 0,
            gaps: 0,
            offset_gaps: 0,
            last_rx: None,
        }
    }

    fn merge(&mut self, other: &PhaseStats) {
        self.hist.add(&other.hist).expect("same histogram bounds");
        self.received += other.received;
        self.duplicates += other.duplicates;
        self.gaps += other.gaps;
        self.offset_gaps += other.offset_gaps;
        self.last_rx = self.last_rx.max(other.last_rx);
    }
}

/// What a group of subscribers recorded. Phases are open while measured.
#[derive(Default)]
struct Shard {
    phases: Vec<Option<PhaseStats>>,
    /// Messages of phases not measured (warm-ups, or arriving after their step was counted).
    unmeasured: u64,
    /// Messages no publisher of this run sent.
    foreign: u64,
    /// Why subscriber connections ended, or errors they got.
    ends: BTreeMap<String, u64>,
}

/// Messages as a subscriber saw them: `count` in a row of one phase and one latency (a read
/// often brings many messages of one publisher tick: they are recorded at once).
#[derive(Clone, Copy)]
struct Rec {
    phase: u32,
    count: u32,
    latency_us: u64,
    duplicate: bool,
    gap: bool,
    offset_gap: bool,
}

impl Rec {
    fn flagged(&self) -> bool {
        self.duplicate || self.gap || self.offset_gap
    }

    /// Add `next` to this run if it is the same but for the count.
    fn absorb(&mut self, next: &Rec) -> bool {
        let same = self.phase == next.phase
            && self.latency_us == next.latency_us
            && !self.flagged()
            && !next.flagged();
        if same {
            self.count += 1;
        }
        same
    }
}

impl Shard {
    fn open(&mut self, phase: u32) {
        let i = phase as usize;
        if self.phases.len() <= i {
            self.phases.resize_with(i + 1, || None);
        }
        self.phases[i] = Some(PhaseStats::new());
    }

    fn take(&mut self, phase: u32) -> Option<PhaseStats> {
        self.phases.get_mut(phase as usize)?.take()
    }

    fn received(&self, phase: u32) -> u64 {
        match self.phases.get(phase as usize) {
            Some(Some(p)) => p.received,
            _ => 0,
        }
    }

    fn record(&mut self, recs: &[Rec], now: Instant) {
        for r in recs {
            match self.phases.get_mut(r.phase as usize) {
                Some(Some(p)) => {
                    p.hist.saturating_record_n(r.latency_us, u64::from(r.count));
                    p.received += u64::from(r.count);
                    p.duplicates += u64::from(r.duplicate);
                    p.gaps += u64::from(r.gap);
                    p.offset_gaps += u64::from(r.offset_gap);
                    p.last_rx = Some(now);
                }
                _ if r.phase == FOREIGN => self.foreign += u64::from(r.count),
                _ => self.unmeasured += u64::from(r.count),
            }
        }
    }
}

type Shards = Arc<Vec<Mutex<Shard>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("bench locks are never poisoned")
}

/// A subscriber's view of the stream.
struct SubState {
    base: Instant,
    /// Next sequence number expected from each publisher.
    expected: Vec<u64>,
    last_offset: u64,
}

impl SubState {
    /// Nanoseconds from the run's start to `now`, the clock of stamps.
    fn clock(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// `offset`: none on targets without offsets (NATS). `now_ns`: when it was read (`clock`).
    fn on_message(&mut self, offset: Option<u64>, stamp: Option<Stamp>, now_ns: u64) -> Rec {
        let offset_gap = offset.is_some_and(|o| o != self.last_offset.wrapping_add(1));
        if let Some(o) = offset {
            self.last_offset = o;
        }
        let stamp = stamp.filter(|s| (s.publisher as usize) < self.expected.len());
        let Some(s) = stamp else {
            return Rec {
                phase: FOREIGN,
                count: 1,
                latency_us: 0,
                duplicate: false,
                gap: false,
                offset_gap,
            };
        };
        let next = &mut self.expected[s.publisher as usize];
        let (duplicate, gap) = (s.seq < *next, s.seq > *next);
        *next = (*next).max(s.seq + 1);
        Rec {
            phase: s.phase,
            count: 1,
            latency_us: now_ns.saturating_sub(s.t_ns) / 1000,
            duplicate,
            gap,
            offset_gap,
        }
    }
}

/// A subscriber's read loop: scan, record per read, answer pings, until the connection ends.
async fn subscriber(
    mut reader: Reader,
    mut writer: Writer,
    shard: Shards,
    i: usize,
    mut state: SubState,
    scanner: ChannelScanner,
) {
    let shard = &shard[i % shard.len()];
    let mut recs: Vec<Rec> = Vec::with_capacity(1024);
    let mut others: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut ping = false;
        // Every frame of one read has the same receive time: convert it once.
        let mut now_ns = None;
        let read = reader
            .read(&mut |frame, now| match scanner.scan(frame) {
                Scanned::Message { offset, stamp } => {
                    let now_ns = *now_ns.get_or_insert_with(|| state.clock(now));
                    let rec = state.on_message(offset, stamp, now_ns);
                    if !recs.last_mut().is_some_and(|last| last.absorb(&rec)) {
                        recs.push(rec);
                    }
                }
                Scanned::Ping => ping = true,
                Scanned::Reply { .. } | Scanned::Pong => {}
                Scanned::Other => others.push(frame.to_vec()),
            })
            .await;
        if !recs.is_empty() {
            lock(shard).record(&recs, Instant::now());
            recs.clear();
        }
        let mut end = None;
        for frame in others.drain(..) {
            match scan::decode(&frame) {
                Some(ServerFrame::Disconnect { code, .. }) => end = Some(code.as_str().to_string()),
                Some(ServerFrame::Error { code, .. }) => {
                    *lock(shard)
                        .ends
                        .entry(code.as_str().to_string())
                        .or_insert(0) += 1;
                }
                None => {
                    if let Some(e) = super::nats::error(&frame) {
                        *lock(shard).ends.entry(e).or_insert(0) += 1;
                    }
                }
                _ => {}
            }
        }
        match read {
            Ok(true) => {}
            Ok(false) => {
                end.get_or_insert_with(|| "closed by the server".into());
            }
            Err(e) => {
                end.get_or_insert_with(|| format!("read failed: {e}"));
            }
        }
        if let Some(why) = end {
            *lock(shard)
                .ends
                .entry(format!("subscriber: {why}"))
                .or_insert(0) += 1;
            return;
        }
        if ping {
            writer.answer_ping();
        }
        for payload in reader.take_pings() {
            writer.pong(&payload);
        }
        if writer.queued() > 0 && writer.flush().await.is_err() {
            *lock(shard)
                .ends
                .entry("subscriber: write failed".into())
                .or_insert(0) += 1;
            return;
        }
    }
}

/// A subscriber that never reads (`--slow`), until the run is over.
struct SlowSub {
    reader: Reader,
    /// Kept open: closing it would tell the server the client is gone.
    writer: Writer,
    subscribed: Instant,
    last_offset: u64,
}

/// How the server treated a subscriber that never read, as it finds out by reading at last.
#[derive(Debug)]
struct SlowOutcome {
    /// Bytes of the messages that reached it before its connection ended.
    bytes: u64,
    /// Offsets that did not follow the one before: the server may cut the stream, never skip.
    offset_gaps: u64,
    /// How long after it subscribed the last message it got was published: when the server
    /// stopped queueing for it, to within a publisher tick.
    fed_for: Option<Duration>,
    /// How its connection ended: the `disconnect` code, the close frame, or that it is open.
    end: String,
}

impl SlowOutcome {
    fn cut(&self) -> bool {
        self.end != STILL_OPEN
    }
}

const STILL_OPEN: &str = "still connected";

impl SlowSub {
    /// Read everything that reached this subscriber, until its connection ends or nothing
    /// comes for `quiet`.
    async fn drain(self, scanner: &ChannelScanner, base: Instant, quiet: Duration) -> SlowOutcome {
        let SlowSub {
            mut reader,
            writer,
            subscribed,
            mut last_offset,
        } = self;
        let mut out = SlowOutcome {
            bytes: 0,
            offset_gaps: 0,
            fed_for: None,
            end: STILL_OPEN.into(),
        };
        let mut last_sent = None;
        let mut disconnect = None;
        let mut others: Vec<Vec<u8>> = Vec::new();
        let ended = loop {
            let mut on_frame = |frame: &[u8], _| match scanner.scan(frame) {
                Scanned::Message { offset, stamp } => {
                    out.bytes += frame.len() as u64;
                    if let Some(o) = offset {
                        out.offset_gaps += u64::from(o != last_offset.wrapping_add(1));
                        last_offset = o;
                    }
                    if let Some(stamp) = stamp {
                        last_sent = Some(stamp.t_ns);
                    }
                }
                Scanned::Other => others.push(frame.to_vec()),
                Scanned::Reply { .. } | Scanned::Ping | Scanned::Pong => {}
            };
            let read = tokio::time::timeout(quiet, reader.read(&mut on_frame)).await;
            for frame in others.drain(..) {
                // Its message says how much the server had queued when it gave up.
                if let Some(ServerFrame::Disconnect { code, message, .. }) = scan::decode(&frame) {
                    disconnect = Some(format!("disconnect {}: {message}", code.as_str()));
                }
            }
            match read {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => break reader.closed.take(),
                Ok(Err(e)) => break Some(format!("read failed: {e}")),
                Err(_) => break None,
            }
        };
        drop(writer);
        if let Some(end) = disconnect.or(ended) {
            out.end = end;
        }
        let subscribed_ns = subscribed.saturating_duration_since(base).as_nanos() as u64;
        out.fed_for = last_sent.map(|t| Duration::from_nanos(t.saturating_sub(subscribed_ns)));
        out
    }
}

/// The report's part on slow subscribers: how many were cut, how, when, with how much sent.
fn summarize_slow(slow: &[SlowOutcome]) -> (serde_json::Value, String) {
    let mut ends: BTreeMap<&str, u64> = BTreeMap::new();
    for o in slow {
        *ends.entry(&o.end).or_insert(0) += 1;
    }
    let cut: Vec<&SlowOutcome> = slow.iter().filter(|o| o.cut()).collect();
    let range = |values: Vec<f64>| {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (!values.is_empty()).then_some((lo, hi))
    };
    let fed = range(
        cut.iter()
            .filter_map(|o| o.fed_for.map(|d| d.as_secs_f64()))
            .collect(),
    );
    let mib = range(
        cut.iter()
            .map(|o| o.bytes as f64 / (1024.0 * 1024.0))
            .collect(),
    );
    let gaps: u64 = slow.iter().map(|o| o.offset_gaps).sum();
    let ends_text = (ends.iter())
        .map(|(end, n)| format!("{end} x{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut line = format!(
        "slow subscribers (never reading): {} of {} cut ({ends_text})",
        cut.len(),
        slow.len()
    );
    if let (Some(fed), Some(mib)) = (fed, mib) {
        line += &format!(
            "; fed for {:.2}-{:.2} s after subscribing, {:.1}-{:.1} MiB of messages reached them",
            fed.0, fed.1, mib.0, mib.1
        );
    }
    if gaps > 0 {
        line += &format!("; {gaps} offset gaps before the cut");
    }
    let json = json!({
        "subscribers": slow.len(),
        "cut": cut.len(),
        "ends": ends,
        "fed_for_s": fed.map(|(lo, hi)| json!({"min": lo, "max": hi})),
        "received_mib": mib.map(|(lo, hi)| json!({"min": lo, "max": hi})),
        "offset_gaps": gaps,
    });
    (json, line)
}

/// What publishers are told to do.
#[derive(Debug, Clone, Copy)]
enum Cmd {
    Idle,
    Run {
        phase: u32,
        /// Messages per second for each publisher.
        rate: f64,
        start: Instant,
        end: Instant,
    },
    Stop,
}

#[derive(Debug, Default, Clone)]
struct PubPhase {
    sent: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    /// Messages due by the end of the phase but not sent: the publisher could not keep up.
    behind: u64,
    done: bool,
}

#[derive(Debug, Default)]
struct PubStats {
    phases: Vec<PubPhase>,
    ended: Option<String>,
    /// NATS: batches (phase, messages) sent and followed by a `PING`, oldest first; each `PONG`
    /// counts the oldest as published.
    unacked: VecDeque<(u32, u64)>,
}

impl PubStats {
    fn phase(&mut self, phase: u32) -> &mut PubPhase {
        let i = phase as usize;
        if self.phases.len() <= i {
            self.phases.resize_with(i + 1, PubPhase::default);
        }
        &mut self.phases[i]
    }
}

/// What every publisher needs to build its frames.
#[derive(Clone)]
struct PubJob {
    kind: TargetKind,
    base: Instant,
    channel: String,
    encoding: Encoding,
    size: usize,
    tick: Duration,
}

impl PubJob {
    fn encode(&self, out: &mut Vec<u8>, stamp: Stamp) {
        if self.kind == TargetKind::Nats {
            let mut payload = Vec::with_capacity(self.size + 64);
            write_stamp(&mut payload, Encoding::Json, stamp, self.size);
            super::nats::push_pub(out, &self.channel, &payload);
            return;
        }
        let id = (u64::from(stamp.phase) << SEQ_BITS) | (stamp.seq & ((1 << SEQ_BITS) - 1));
        match self.encoding {
            Encoding::Json => {
                use std::io::Write;
                let _ = write!(out, r#"{{"type":"publish","id":{id},"channel":"#);
                serde_json::to_writer(&mut *out, &self.channel).expect("strings serialize");
                out.extend_from_slice(br#","data":"#);
                write_stamp(out, Encoding::Json, stamp, self.size);
                out.push(b'}');
            }
            Encoding::Msgpack => {
                out.push(0x84);
                mp_write_str(out, b"type");
                mp_write_str(out, b"publish");
                mp_write_str(out, b"id");
                mp_write_uint(out, id);
                mp_write_str(out, b"channel");
                mp_write_str(out, self.channel.as_bytes());
                mp_write_str(out, b"data");
                write_stamp(out, Encoding::Msgpack, stamp, self.size);
            }
        }
    }
}

/// A publisher: waits for a command, sends at the commanded rate in ticks, reports.
async fn publisher(
    index: u32,
    writer: Arc<tokio::sync::Mutex<Writer>>,
    stats: Arc<Mutex<PubStats>>,
    mut cmds: watch::Receiver<Cmd>,
    job: PubJob,
) {
    let mut seq = 0u64;
    let mut frame = Vec::with_capacity(job.size + 256);
    loop {
        let cmd = *cmds.borrow_and_update();
        match cmd {
            Cmd::Stop => return,
            Cmd::Idle => {}
            Cmd::Run {
                phase,
                rate,
                start,
                end,
            } => {
                let mut ticker = tokio::time::interval_at(start.into(), job.tick);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                // Catch up at most a few ticks' worth per tick when behind.
                let max_batch = ((rate * job.tick.as_secs_f64() * 4.0).ceil() as u64).max(64);
                let mut sent = 0u64;
                let mut due;
                loop {
                    ticker.tick().await;
                    let now = Instant::now();
                    let elapsed = now.min(end).saturating_duration_since(start);
                    due = (elapsed.as_secs_f64() * rate) as u64;
                    let n = due.saturating_sub(sent).min(max_batch);
                    if n > 0 {
                        let t_ns = now.saturating_duration_since(job.base).as_nanos() as u64;
                        let mut w = writer.lock().await;
                        for _ in 0..n {
                            frame.clear();
                            let stamp = Stamp {
                                phase,
                                publisher: index,
                                seq,
                                t_ns,
                            };
                            job.encode(&mut frame, stamp);
                            w.push(&frame);
                            seq += 1;
                        }
                        if job.kind == TargetKind::Nats {
                            w.push(super::nats::PING);
                            lock(&stats).unacked.push_back((phase, n));
                        }
                        let flushed = w.flush().await;
                        drop(w);
                        if let Err(e) = flushed {
                            let mut s = lock(&stats);
                            s.ended = Some(format!("publisher write failed: {e}"));
                            s.phase(phase).done = true;
                            return;
                        }
                        sent += n;
                        lock(&stats).phase(phase).sent += n;
                    }
                    if now >= end {
                        break;
                    }
                }
                let mut s = lock(&stats);
                let p = s.phase(phase);
                p.behind = due.saturating_sub(sent);
                p.done = true;
            }
        }
        if cmds.changed().await.is_err() {
            return;
        }
    }
}

/// A publisher's read loop: count replies and errors per phase, answer pings.
async fn publisher_replies(
    mut reader: Reader,
    writer: Arc<tokio::sync::Mutex<Writer>>,
    stats: Arc<Mutex<PubStats>>,
) {
    let mut ok: Vec<u64> = Vec::new();
    let mut others: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut ping = false;
        let mut pongs = 0;
        let read = reader
            .read(&mut |frame, _| match scan::scan(frame) {
                Scanned::Reply { id } => ok.push(id),
                Scanned::Pong => pongs += 1,
                Scanned::Ping => ping = true,
                Scanned::Message { .. } => {}
                Scanned::Other => others.push(frame.to_vec()),
            })
            .await;
        let mut end = None;
        {
            let mut s = lock(&stats);
            for id in ok.drain(..) {
                s.phase((id >> SEQ_BITS) as u32).ok += 1;
            }
            for _ in 0..pongs {
                if let Some((phase, n)) = s.unacked.pop_front() {
                    s.phase(phase).ok += n;
                }
            }
            for frame in others.drain(..) {
                if let Some(e) = super::nats::error(&frame) {
                    let phase = s.phases.len().saturating_sub(1) as u32;
                    *s.phase(phase).errors.entry(e).or_insert(0) += 1;
                    continue;
                }
                match scan::decode(&frame) {
                    Some(ServerFrame::Error { id, code, .. }) => {
                        // An error without id answers a frame the server could not read.
                        let phase = id.map_or(s.phases.len().saturating_sub(1) as u32, |id| {
                            (id >> SEQ_BITS) as u32
                        });
                        *s.phase(phase)
                            .errors
                            .entry(code.as_str().into())
                            .or_insert(0) += 1;
                    }
                    Some(ServerFrame::Disconnect { code, .. }) => {
                        end = Some(format!("publisher: {}", code.as_str()));
                    }
                    _ => {}
                }
            }
            match read {
                Ok(true) => {}
                Ok(false) => {
                    end.get_or_insert_with(|| "publisher: closed by the server".into());
                }
                Err(e) => {
                    end.get_or_insert_with(|| format!("publisher: read failed: {e}"));
                }
            }
            if let Some(why) = end {
                s.ended.get_or_insert(why);
                return;
            }
        }
        let pings = reader.take_pings();
        if ping || !pings.is_empty() {
            let mut w = writer.lock().await;
            if ping {
                w.answer_ping();
            }
            for payload in pings {
                w.pong(&payload);
            }
            let _ = w.flush().await;
        }
    }
}

struct Publishers {
    stats: Vec<Arc<Mutex<PubStats>>>,
    cmds: watch::Sender<Cmd>,
    tasks: JoinSet<()>,
}

impl Publishers {
    /// Sum of every publisher's figures for `phase`, and whether all are done with it.
    fn phase(&self, phase: u32) -> PubPhase {
        let mut total = PubPhase {
            done: true,
            ..PubPhase::default()
        };
        for stats in &self.stats {
            let mut s = lock(stats);
            let ended = s.ended.is_some();
            let p = s.phase(phase);
            total.sent += p.sent;
            total.ok += p.ok;
            total.behind += p.behind;
            total.done &= p.done || ended;
            for (code, n) in &p.errors {
                *total.errors.entry(code.clone()).or_insert(0) += n;
            }
        }
        total
    }

    fn ended(&self) -> BTreeMap<String, u64> {
        let mut ends = BTreeMap::new();
        for stats in &self.stats {
            if let Some(why) = &lock(stats).ended {
                *ends.entry(why.clone()).or_insert(0) += 1;
            }
        }
        ends
    }
}

/// Run the fan-out scenario against a live server; the caller prints the report.
pub async fn run(args: &FanoutArgs) -> anyhow::Result<Report> {
    if args.subscribers == 0 || args.publishers == 0 {
        bail!("--subscribers and --publishers must be at least 1");
    }
    if args.duration.is_nan() || args.duration <= 0.0 || args.common.warmup < 0.0 {
        bail!("--duration must be positive and --warmup not negative");
    }
    let (s, p, k) = (args.subscribers, args.publishers, args.slow);
    let target = Target::new(&args.common, s + p + k + 1, None).await?;
    let ui = target.ui.clone();
    let mut notes = Vec::new();
    let rates = match &args.ladder {
        Some(ladder) => ladder.rates(args.max_steps),
        None => vec![args.rate],
    };
    if rates.is_empty() {
        bail!("the ladder has no steps");
    }
    let max_rate = rates.iter().copied().fold(0.0, f64::max);

    let space = target.prepare_space(s + p + k).await?;
    let channel = target.channel(&space, &args.topic)?;
    let base = Instant::now();
    let shards: Shards = Arc::new(
        (0..s.min(MAX_SHARDS))
            .map(|_| Mutex::new(Shard::default()))
            .collect(),
    );

    // Subscribers: users 0..s; each says hello, subscribes, then runs its read loop at once
    // (so it answers pings however long the others take).
    args.common.ensure_open_files(s + p + k)?;
    let (subscriber_tasks, failed) = target
        .connect_many(0..s, "subscribers", |i| {
            let (target, channel, shards) = (&target, &channel, shards.clone());
            async move {
                let mut conn = target.connect(i).await?;
                let offset = conn.subscribe(channel).await?;
                let (reader, writer) = conn.into_parts();
                let state = SubState {
                    base,
                    expected: vec![0; p],
                    last_offset: offset.unwrap_or(0),
                };
                let scanner = ChannelScanner::new(channel);
                Ok(tokio::spawn(subscriber(
                    reader, writer, shards, i, state, scanner,
                )))
            }
        })
        .await;
    if let Some((why, n)) = failed.iter().next() {
        abort_all(subscriber_tasks).await;
        bail!("{n} of {s} subscribers could not connect: {why}");
    }

    // Publishers: users s..s+p.
    let (pubs, failed) = target
        .connect_many(s..s + p, "publishers", |i| {
            let target = &target;
            async move { Ok((i - s, target.connect(i).await?)) }
        })
        .await;
    if let Some((why, n)) = failed.iter().next() {
        abort_all(subscriber_tasks).await;
        bail!("{n} of {p} publishers could not connect: {why}");
    }
    // Slow subscribers: users s+p..s+p+k, subscribed last so that the others' set-up is not
    // theirs to hold up; from here on nothing reads their sockets.
    let (slow, failed) = target
        .connect_many(s + p..s + p + k, "slow subscribers", |i| {
            let (target, channel) = (&target, &channel);
            async move {
                let mut conn = target.connect(i).await?;
                let offset = conn.subscribe(channel).await?;
                let (reader, writer) = conn.into_parts();
                Ok(SlowSub {
                    reader,
                    writer,
                    subscribed: Instant::now(),
                    last_offset: offset.unwrap_or(0),
                })
            }
        })
        .await;
    if let Some((why, n)) = failed.iter().next() {
        abort_all(subscriber_tasks).await;
        bail!("{n} of {k} slow subscribers could not connect: {why}");
    }
    // The bounds' maximum (10^6) means the server was set up for load tests.
    let limit = pubs
        .first()
        .and_then(|(_, c)| c.welcome_u64(&["limits", "rate_per_sec"]));
    if let Some(limit) = limit.filter(|&l| l < 1_000_000 && max_rate / p as f64 > l as f64) {
        ui.note(
            &mut notes,
            format!(
                "the server allows {limit} frames/s per connection: rates above {} msgs/s with \
                 {p} publisher(s) will get rate_limited errors. For load tests run the server \
                 with CHORUS_RATE_PER_SEC=1000000 CHORUS_RATE_BURST=1000000",
                thousands((limit * p as u64) as f64)
            ),
        );
    }
    let (cmds, cmd_rx) = watch::channel(Cmd::Idle);
    let mut publishers = Publishers {
        stats: Vec::new(),
        cmds,
        tasks: JoinSet::new(),
    };
    let job = PubJob {
        kind: target.kind,
        base,
        channel: channel.clone(),
        encoding: target.encoding,
        size: args.size,
        tick: Duration::from_millis(args.tick_ms.max(1)),
    };
    for (index, conn) in pubs {
        let (reader, writer) = conn.into_parts();
        let writer = Arc::new(tokio::sync::Mutex::new(writer));
        let stats = Arc::new(Mutex::new(PubStats::default()));
        publishers.stats.push(stats.clone());
        publishers
            .tasks
            .spawn(publisher_replies(reader, writer.clone(), stats.clone()));
        publishers.tasks.spawn(publisher(
            index as u32,
            writer,
            stats,
            cmd_rx.clone(),
            job.clone(),
        ));
    }

    let mut steps = Vec::new();
    for (i, &rate) in rates.iter().enumerate() {
        let (warm, measured) = (2 * i as u32 + 1, 2 * i as u32 + 2);
        if args.common.warmup > 0.0 {
            run_phase(
                &publishers,
                warm,
                rate,
                args.common.warmup,
                None,
                &ui,
                "warm-up",
            )
            .await;
        }
        for shard in shards.iter() {
            lock(shard).open(measured);
        }
        let sampler = Sampler::start(target.server_pid);
        let start = run_phase(
            &publishers,
            measured,
            rate,
            args.duration,
            Some((&shards, s)),
            &ui,
            &format!("{}/s", thousands(rate)),
        )
        .await;
        // Drain: wait for the last replies and deliveries, as long as they keep coming.
        let mut last = (0, 0, Instant::now());
        let counts = loop {
            let pubs = publishers.phase(measured);
            let received: u64 = shards.iter().map(|sh| lock(sh).received(measured)).sum();
            let replies = pubs.ok + pubs.errors.values().sum::<u64>();
            if replies >= pubs.sent && received >= pubs.ok * s as u64 {
                break (pubs, received);
            }
            if (received, replies) != (last.0, last.1) {
                last = (received, replies, Instant::now());
            } else if last.2.elapsed() >= Duration::from_millis(args.drain_ms) {
                break (pubs, received);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let usage = sampler.finish();
        let (pubs, _) = counts;
        let mut stats = PhaseStats::new();
        let mut ends = BTreeMap::new();
        for shard in shards.iter() {
            let mut sh = lock(shard);
            if let Some(part) = sh.take(measured) {
                stats.merge(&part);
            }
            for (why, n) in std::mem::take(&mut sh.ends) {
                *ends.entry(why).or_insert(0) += n;
            }
        }
        for (why, n) in publishers.ended() {
            ends.entry(why).or_insert(n);
        }
        steps.push(step_report(
            args, rate, start, &pubs, &stats, ends, usage, s,
        ));
        let failed = steps.last().is_some_and(|st: &Step| !st.pass);
        if failed && args.ladder.is_some() {
            break;
        }
    }

    publishers.cmds.send_replace(Cmd::Stop);
    let scanner = ChannelScanner::new(&channel);
    let quiet = Duration::from_millis(args.drain_ms);
    let slow = futures_util::future::join_all(
        (slow.into_iter()).map(|sub| sub.drain(&scanner, base, quiet)),
    )
    .await;
    abort_all(subscriber_tasks).await;
    publishers.tasks.shutdown().await;

    let (unmeasured, foreign) = shards.iter().fold((0, 0), |(u, f), sh| {
        let sh = lock(sh);
        (u + sh.unmeasured, f + sh.foreign)
    });
    if foreign > 0 {
        ui.note(
            &mut notes,
            format!("{foreign} messages on {channel} came from outside this run"),
        );
    }
    let (mut summary, mut summary_lines) = summarize(args, &steps, s);
    if k > 0 {
        let (json, line) = summarize_slow(&slow);
        summary["slow"] = json;
        summary_lines.push(line);
    }
    Ok(Report {
        scenario: "fanout".into(),
        target: target.describe(),
        encoding: target.encoding_name().into(),
        params: json!({
            "subscribers": s,
            "publishers": p,
            "size": args.size,
            "rates": match &args.ladder {
                Some(Ladder::Geometric { start, factor }) => json!(format!("{start}*{factor}")),
                _ => json!(rates),
            },
            "ladder": args.ladder.is_some(),
            "duration_s": args.duration,
            "warmup_s": args.common.warmup,
            "p99_bound_ms": args.p99_bound_ms,
            "threads": args.common.threads,
            "slow": k,
            "channel": channel,
            "tokens": match target.kind {
                TargetKind::Nats => "none (nats)",
                _ if target.mints_tokens() => "minted",
                _ => "given",
            },
            "unmeasured_messages": unmeasured,
        }),
        steps,
        summary,
        summary_lines,
        notes,
    })
}

/// Run publishers for one phase; returns when it started. With `watch`, show live deliveries.
async fn run_phase(
    publishers: &Publishers,
    phase: u32,
    rate: f64,
    secs: f64,
    watch: Option<(&Shards, usize)>,
    ui: &super::target::Ui,
    label: &str,
) -> Instant {
    let start = Instant::now() + Duration::from_millis(2);
    let end = start + Duration::from_secs_f64(secs);
    publishers.cmds.send_replace(Cmd::Run {
        phase,
        rate: rate / publishers.stats.len() as f64,
        start,
        end,
    });
    let bar = ui.bar((secs * 10.0).ceil() as u64, label);
    let mut last = (Instant::now(), 0u64);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        bar.set_position(((Instant::now() - start).as_secs_f64() * 10.0) as u64);
        if let Some((shards, _)) = watch {
            let received: u64 = shards.iter().map(|sh| lock(sh).received(phase)).sum();
            let now = Instant::now();
            let per_sec = (received - last.1) as f64 / (now - last.0).as_secs_f64();
            bar.set_message(format!("{} deliveries/s", thousands(per_sec)));
            last = (now, received);
        }
    }
    bar.finish_and_clear();
    // Publishers finish their last tick; a dead one counts as done.
    let waited = Instant::now();
    while !publishers.phase(phase).done && waited.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start
}

#[allow(clippy::too_many_arguments)]
fn step_report(
    args: &FanoutArgs,
    rate: f64,
    start: Instant,
    pubs: &PubPhase,
    stats: &PhaseStats,
    mut errors: BTreeMap<String, u64>,
    usage: super::usage::Usage,
    subscribers: usize,
) -> Step {
    let expected = pubs.ok * subscribers as u64;
    let lost = expected.saturating_sub(stats.received);
    let window = stats.last_rx.map_or(args.duration, |t| {
        (t - start).as_secs_f64().max(args.duration)
    });
    for (code, n) in &pubs.errors {
        *errors.entry(code.clone()).or_insert(0) += n;
    }
    let latency = Latency::of(&stats.hist);
    let due = pubs.sent + pubs.behind;
    let mut failures = Vec::new();
    for (code, n) in &errors {
        let hint = if code == "rate_limited" {
            " (raise the server's CHORUS_RATE_PER_SEC and CHORUS_RATE_BURST)"
        } else {
            ""
        };
        failures.push(format!("{code} x{n}{hint}"));
    }
    if lost > 0 {
        failures.push(format!("lost {lost}"));
    }
    if stats.duplicates > 0 {
        failures.push(format!("{} duplicated/reordered", stats.duplicates));
    }
    if stats.gaps > 0 || stats.offset_gaps > 0 {
        failures.push(format!(
            "{} sequence gaps, {} offset gaps",
            stats.gaps, stats.offset_gaps
        ));
    }
    match &latency {
        None => failures.push("nothing received".into()),
        Some(l) if l.p99_us as f64 > args.p99_bound_ms * 1000.0 => failures.push(format!(
            "p99 {:.1} ms > {} ms",
            l.p99_us as f64 / 1000.0,
            args.p99_bound_ms
        )),
        Some(_) => {}
    }
    if pubs.behind > due / 100 {
        failures.push(format!(
            "publishers fell {} messages behind (writes held back by the server, or the tool is slow)",
            pubs.behind
        ));
    }
    let mut counters = BTreeMap::new();
    for (name, v) in [
        ("sent", pubs.sent),
        ("published", pubs.ok),
        ("expected", expected),
        ("received", stats.received),
        ("lost", lost),
        ("duplicates", stats.duplicates),
        ("seq_gaps", stats.gaps),
        ("offset_gaps", stats.offset_gaps),
        ("publisher_behind", pubs.behind),
    ] {
        counters.insert(name.to_string(), v);
    }
    let limit = usage.limit(args.common.threads);
    Step {
        label: format!("{}/s", thousands(rate)),
        unit: "deliveries/s".into(),
        throughput: stats.received as f64 / window,
        counters,
        errors,
        latency,
        usage,
        limit,
        pass: failures.is_empty(),
        failure: (!failures.is_empty()).then(|| failures.join(", ")),
    }
}

fn summarize(
    args: &FanoutArgs,
    steps: &[Step],
    subscribers: usize,
) -> (serde_json::Value, Vec<String>) {
    let figures = |s: &Step| {
        json!({
            "step": s.label,
            "deliveries_per_s": s.throughput.round(),
            "p50_us": s.latency.as_ref().map(|l| l.p50_us),
            "p99_us": s.latency.as_ref().map(|l| l.p99_us),
            "limit": s.limit,
        })
    };
    let ms = |us: Option<u64>| us.map_or("-".into(), |v| format!("{:.2} ms", v as f64 / 1000.0));
    if args.ladder.is_none() {
        let s = &steps[0];
        let line = format!(
            "{}: {} deliveries/s to {subscribers} subscribers, p50 {}, p99 {}; limit: {}",
            if s.pass { "PASS" } else { "FAIL" },
            thousands(s.throughput),
            ms(s.latency.as_ref().map(|l| l.p50_us)),
            ms(s.latency.as_ref().map(|l| l.p99_us)),
            s.limit
        );
        return (json!({"pass": s.pass, "result": figures(s)}), vec![line]);
    }
    let passed = steps.iter().take_while(|s| s.pass).last();
    let failed = steps.iter().find(|s| !s.pass);
    let mut lines = Vec::new();
    match passed {
        Some(s) => lines.push(format!(
            "saturation: {} published -> {} deliveries/s to {subscribers} subscribers (p50 {}, p99 {}); limit: {}",
            s.label,
            thousands(s.throughput),
            ms(s.latency.as_ref().map(|l| l.p50_us)),
            ms(s.latency.as_ref().map(|l| l.p99_us)),
            s.limit
        )),
        None => lines.push("saturation: no step passed".into()),
    }
    match failed {
        Some(f) => lines.push(format!(
            "next step {} failed: {}",
            f.label,
            f.failure.as_deref().unwrap_or("")
        )),
        None => {
            lines.push("every step passed: extend the ladder to find the saturation point".into())
        }
    }
    (
        json!({
            "saturation": passed.map(figures),
            "first_failure": failed.map(|f| json!({"step": f.label, "why": f.failure})),
        }),
        lines,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_ladders() {
        assert_eq!(parse_rate("1500"), Ok(1500.0));
        assert_eq!(parse_rate("20k"), Ok(20_000.0));
        assert_eq!(parse_rate("1.5M"), Ok(1_500_000.0));
        assert!(parse_rate("0").is_err() && parse_rate("x").is_err());
        assert_eq!(
            parse_ladder("1000,2k").unwrap().rates(5),
            vec![1000.0, 2000.0]
        );
        assert_eq!(
            parse_ladder("1000*2").unwrap().rates(4),
            vec![1000.0, 2000.0, 4000.0, 8000.0]
        );
        assert!(parse_ladder("1000*1").is_err());
    }

    #[test]
    fn subscribers_spot_duplicates_gaps_and_latency() {
        let base = Instant::now();
        let mut s = SubState {
            base,
            expected: vec![0; 2],
            last_offset: 10,
        };
        let stamp = |publisher, seq| Stamp {
            phase: 2,
            publisher,
            seq,
            t_ns: 0,
        };
        let now = s.clock(base + Duration::from_millis(3));
        let r = s.on_message(Some(11), Some(stamp(0, 0)), now);
        assert!(!r.duplicate && !r.gap && !r.offset_gap);
        assert_eq!((r.phase, r.latency_us), (2, 3000));
        let r = s.on_message(Some(12), Some(stamp(1, 0)), now);
        assert!(!r.duplicate && !r.gap && !r.offset_gap);
        let r = s.on_message(Some(13), Some(stamp(0, 0)), now);
        assert!(r.duplicate && !r.gap);
        let r = s.on_message(Some(15), Some(stamp(0, 2)), now);
        assert!(!r.duplicate && r.gap && r.offset_gap);
        let r = s.on_message(Some(16), Some(stamp(7, 0)), now);
        assert_eq!(r.phase, FOREIGN);
        // Without offsets (NATS), only the stamps count.
        let r = s.on_message(None, Some(stamp(1, 1)), now);
        assert!(!r.duplicate && !r.gap && !r.offset_gap);
    }

    #[test]
    fn slow_subscribers_are_summed_up_by_how_they_ended() {
        let cut = |secs: u64, bytes: u64, end: &str| SlowOutcome {
            bytes,
            offset_gaps: 0,
            fed_for: Some(Duration::from_secs(secs)),
            end: end.into(),
        };
        let open = SlowOutcome {
            fed_for: None,
            ..cut(0, 0, STILL_OPEN)
        };
        let slow = [
            cut(1, 1 << 20, "disconnect slow_consumer"),
            cut(3, 3 << 20, "the server closed the connection"),
            open,
        ];
        let (json, line) = summarize_slow(&slow);
        assert_eq!(json["subscribers"], 3);
        assert_eq!(json["cut"], 2);
        assert_eq!(json["ends"][STILL_OPEN], 1);
        assert_eq!(json["fed_for_s"], json!({"min": 1.0, "max": 3.0}));
        assert_eq!(json["received_mib"], json!({"min": 1.0, "max": 3.0}));
        assert!(
            line.starts_with("slow subscribers (never reading): 2 of 3 cut"),
            "{line}"
        );
        let (json, line) = summarize_slow(&slow[2..]);
        assert_eq!(
            (json["cut"].as_u64(), json["fed_for_s"].is_null()),
            (Some(0), true)
        );
        assert!(!line.contains("fed for"), "{line}");
    }

    #[test]
    fn publish_frames_decode_as_the_server_reads_them() {
        use serde::Deserialize;
        for encoding in Encoding::ALL {
            let job = PubJob {
                kind: TargetKind::Chorus,
                base: Instant::now(),
                channel: "topic:s/t".into(),
                encoding,
                size: 100,
                tick: Duration::from_millis(1),
            };
            let mut out = Vec::new();
            let stamp = Stamp {
                phase: 3,
                publisher: 1,
                seq: 5,
                t_ns: 77,
            };
            job.encode(&mut out, stamp);
            match crate::protocol::decode_client(&out, 1 << 16).unwrap() {
                crate::protocol::ClientFrame::Publish {
                    id, channel, data, ..
                } => {
                    assert_eq!(id >> SEQ_BITS, 3);
                    assert_eq!(channel, "topic:s/t");
                    assert_eq!(Stamp::deserialize(&data).unwrap(), stamp);
                    let json = serde_json::to_vec(&data).unwrap();
                    if encoding == Encoding::Json {
                        assert_eq!(json.len(), 100);
                    }
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
