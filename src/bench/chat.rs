//! `chorus bench chat`: persistent chat. Three steps:
//!
//! - `send`: `--connections` members of one room each keep `--window` `chat.send`s in flight for
//!   `--duration` seconds (pipelined: the server runs up to 64 of a connection's chat requests
//!   at once). Every acknowledgement comes after its commit (group commit), so the throughput is
//!   acknowledged, durable sends per second; the latency is send to ack.
//! - `history`: `--queries` `chat.history` pages (`--page` messages) before random offsets of
//!   the room, one at a time; first the room is filled to `--room-messages` (not measured).
//! - `search`: `--queries` `chat.search`es for a random word of the bodies' vocabulary.

use super::report::{Latency, Report, Step, histogram};
use super::target::{CommonArgs, Conn, Target};
use super::usage::Sampler;
use crate::protocol::ServerFrame;
use anyhow::{Context, anyhow, bail};
use clap::Args;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Words the bodies are made of; searches look for one of them.
const VOCABULARY: u64 = 1000;
/// The room the bench sends to.
const ROOM: &str = "bench";

#[derive(Args, Debug, Clone)]
#[command(after_help = "\
The server needs a raised rate limit:
  CHORUS_RATE_PER_SEC=1000000 CHORUS_RATE_BURST=1000000 taskset -c 0 chorus serve
  taskset -c 1 chorus bench chat -c 8 -w 64 -d 10 --room-messages 1000000 --server-pid <PID>")]
pub struct ChatArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Sending connections, each its own member of the room.
    #[arg(short = 'c', long, default_value_t = 8)]
    pub connections: usize,
    /// Sends in flight per connection. The server runs up to 64 of a connection's chat
    /// requests at once; more wait in the socket.
    #[arg(short = 'w', long, default_value_t = 64)]
    pub window: usize,
    /// Seconds of sending.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,
    /// Bytes per message body (at least a word).
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
    /// Before the read steps, fill the room up to this many messages.
    #[arg(long, default_value_t = 0)]
    pub room_messages: u64,
    /// History pages and searches, each.
    #[arg(long, default_value_t = 1000)]
    pub queries: usize,
    /// Messages per history page.
    #[arg(long, default_value_t = 50)]
    pub page: usize,
}

/// A small deterministic generator (xorshift), so runs are alike without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn body(rng: &mut Rng, bytes: usize) -> String {
    let mut body = String::with_capacity(bytes + 8);
    while body.len() < bytes.max(1) {
        if !body.is_empty() {
            body.push(' ');
        }
        body.push_str(&format!("w{}", rng.below(VOCABULARY)));
    }
    body
}

/// What one sender saw.
#[derive(Default)]
struct Sent {
    acked: u64,
    errors: BTreeMap<String, u64>,
    offsets: Vec<u64>,
    latency_us: Vec<u64>,
}

/// Keep `window` sends in flight on `conn` until `until` (or `quota` sends, counted on its
/// bar), then collect what is in flight.
async fn send_loop(
    mut conn: Conn,
    prefix: String,
    window: usize,
    body_bytes: usize,
    until: Instant,
    seed: u64,
    quota: Option<(u64, indicatif::ProgressBar)>,
) -> anyhow::Result<Sent> {
    let mut rng = Rng(seed | 1);
    let mut sent = Sent::default();
    let mut in_flight: HashMap<u64, Instant> = HashMap::new();
    let mut n = 0u64;
    loop {
        let open = Instant::now() < until && quota.as_ref().is_none_or(|(q, _)| n < *q);
        while open && in_flight.len() < window {
            let frame = json!({
                "type": "chat.send", "space": conn_space(&conn), "room": ROOM,
                "client_id": format!("{prefix}-{n}"), "body": body(&mut rng, body_bytes),
            });
            n += 1;
            let id = conn.queue_request(frame)?;
            in_flight.insert(id, Instant::now());
        }
        if in_flight.is_empty() {
            break;
        }
        conn.writer.flush().await?;
        match conn.next_frame().await? {
            ServerFrame::Reply { id, result } => {
                if let Some(at) = in_flight.remove(&id) {
                    if let Some((_, bar)) = &quota {
                        bar.inc(1);
                    }
                    sent.acked += 1;
                    sent.latency_us.push(at.elapsed().as_micros() as u64);
                    sent.offsets.push(result["offset"].as_u64().unwrap_or(0));
                }
            }
            ServerFrame::Error { id, code, .. } => {
                if let Some(id) = id {
                    in_flight.remove(&id);
                }
                *sent.errors.entry(code.as_str().to_string()).or_insert(0) += 1;
            }
            ServerFrame::Disconnect { code, message, .. } => {
                bail!("disconnected: {code}: {message}")
            }
            _ => {}
        }
    }
    conn.writer.close().await;
    Ok(sent)
}

/// The space a connection works in, stashed in its welcome by `run`.
fn conn_space(conn: &Conn) -> String {
    conn.welcome["bench_space"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn request(conn: &mut Conn, frame: Value) -> anyhow::Result<Value> {
    conn.request(frame)
        .await?
        .map_err(|e| anyhow!("{}: {}", e.code, e.message))
}

/// Time `queries` requests made by `make`, one at a time.
async fn measure(
    conn: &mut Conn,
    queries: usize,
    mut make: impl FnMut() -> Value,
    mut check: impl FnMut(&Value),
) -> anyhow::Result<(hdrhistogram::Histogram<u64>, BTreeMap<String, u64>, f64)> {
    let mut hist = histogram();
    let mut errors = BTreeMap::new();
    let started = Instant::now();
    for _ in 0..queries {
        let frame = make();
        let at = Instant::now();
        match conn.request(frame).await? {
            Ok(reply) => {
                hist.record((at.elapsed().as_micros() as u64).max(1))?;
                check(&reply);
            }
            Err(e) => *errors.entry(e.code).or_insert(0) += 1,
        }
    }
    Ok((hist, errors, started.elapsed().as_secs_f64()))
}

#[allow(clippy::too_many_arguments)]
fn step(
    label: &str,
    unit: &str,
    throughput: f64,
    counters: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    hist: &hdrhistogram::Histogram<u64>,
    sampler: &Sampler,
    threads: usize,
    failure: Option<String>,
) -> Step {
    let usage = sampler.finish();
    let failure = failure.or_else(|| (!errors.is_empty()).then(|| format!("errors: {errors:?}")));
    Step {
        label: label.into(),
        unit: unit.into(),
        throughput,
        counters,
        errors,
        latency: Latency::of(hist),
        limit: usage.limit(threads),
        usage,
        pass: failure.is_none(),
        failure,
    }
}

pub async fn run(args: &ChatArgs) -> anyhow::Result<Report> {
    let connections = args.connections.max(1);
    let target = Target::new(&args.common, connections, None).await?;
    let space = target.prepare_space(connections).await?;
    let mut setup = target.connect(0).await.context("cannot set up the room")?;
    let created = setup
        .request(json!({"type": "chat.create_room", "space": space, "room": ROOM, "name": "chorus bench"}))
        .await?;
    if let Err(e) = created
        && e.code != "already_exists"
    {
        bail!("cannot create the room: {e}");
    }
    let (mut conns, failed) = target
        .connect_many(0..connections, "connecting", |i| {
            let target = &target;
            let space = space.clone();
            async move {
                let mut conn = target.connect(i).await?;
                request(
                    &mut conn,
                    json!({"type": "chat.join", "space": space, "room": ROOM}),
                )
                .await?;
                conn.welcome["bench_space"] = json!(space);
                Ok(conn)
            }
        })
        .await;
    if !failed.is_empty() {
        bail!("connections failed: {failed:?}");
    }
    let mut notes = Vec::new();
    let threads = args.common.threads;

    // Warm up, then the measured send phase.
    let mut run_id = [0u8; 4];
    getrandom::fill(&mut run_id)?;
    let run_id = hex::encode(run_id);
    let sampler = Sampler::start(target.server_pid);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.duration.max(0.1));
    let tasks: Vec<_> = conns
        .drain(..)
        .enumerate()
        .map(|(i, conn)| {
            tokio::spawn(send_loop(
                conn,
                format!("{run_id}-{i}"),
                args.window.max(1),
                args.body_bytes,
                until,
                0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1),
                None,
            ))
        })
        .collect();
    let mut hist = histogram();
    let mut errors = BTreeMap::new();
    let (mut acked, mut offsets) = (0u64, Vec::new());
    for task in tasks {
        let sent = task.await??;
        acked += sent.acked;
        offsets.extend(sent.offsets);
        for us in sent.latency_us {
            hist.record(us.max(1))?;
        }
        for (code, n) in sent.errors {
            *errors.entry(code).or_insert(0) += n;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    offsets.sort_unstable();
    let distinct = {
        let mut d = offsets.clone();
        d.dedup();
        d.len() as u64
    };
    let mut counters = BTreeMap::new();
    counters.insert("acked".into(), acked);
    counters.insert("distinct_offsets".into(), distinct);
    let failure = (distinct != acked).then(|| format!("{} duplicate offsets", acked - distinct));
    let send_step = step(
        &format!("{connections}x{} in flight", args.window),
        "acked sends/s",
        acked as f64 / elapsed.max(1e-9),
        counters,
        errors,
        &hist,
        &sampler,
        threads,
        failure,
    );

    // Fill the room for the read steps.
    let head = |reply: &Value| reply["head"].as_u64().unwrap_or(0);
    let sync = json!({"type": "chat.sync", "space": space, "room": ROOM, "after": 0, "limit": 0});
    let mut room_head = head(&request(&mut setup, sync.clone()).await?);
    if room_head < args.room_messages {
        // As many connections as the send step, each with its share.
        let missing = args.room_messages - room_head;
        let share = missing.div_ceil(connections as u64);
        let (fillers, failed) = target
            .connect_many(0..connections, "connecting fillers", |i| {
                let target = &target;
                let space = space.clone();
                async move {
                    let mut conn = target.connect(i).await?;
                    conn.welcome["bench_space"] = json!(space);
                    Ok(conn)
                }
            })
            .await;
        if !failed.is_empty() {
            bail!("connections failed: {failed:?}");
        }
        let bar = target.ui.bar(missing, "filling the room");
        let far = Instant::now() + Duration::from_secs(24 * 3600);
        let tasks: Vec<_> = fillers
            .into_iter()
            .enumerate()
            .map(|(i, conn)| {
                let bar = bar.clone();
                let quota = share.min(missing.saturating_sub(share * i as u64));
                tokio::spawn(send_loop(
                    conn,
                    format!("{run_id}-fill-{i}"),
                    args.window.max(1),
                    args.body_bytes,
                    far,
                    7 + i as u64,
                    Some((quota, bar)),
                ))
            })
            .collect();
        for task in tasks {
            let sent = task.await??;
            if let Some((code, _)) = sent.errors.first_key_value() {
                bail!("filling the room: {code}");
            }
        }
        bar.finish_and_clear();
        // Idle all along, the set-up connection may have timed out: take a fresh one.
        setup.writer.close().await;
        setup = target.connect(0).await?;
        room_head = head(&request(&mut setup, sync).await?);
    }

    let mut rng = Rng(11);
    let sampler = Sampler::start(target.server_pid);
    let mut returned = 0u64;
    let (hist, errors, took) = measure(
        &mut setup,
        args.queries,
        || {
            let before = 2 + rng.below(room_head.max(1));
            json!({"type": "chat.history", "space": space, "room": ROOM, "before": before, "limit": args.page})
        },
        |reply| returned += reply["messages"].as_array().map_or(0, |m| m.len() as u64),
    )
    .await?;
    let mut counters = BTreeMap::new();
    counters.insert("pages".into(), hist.len());
    counters.insert("messages".into(), returned);
    let history_step = step(
        &format!("history of {room_head}"),
        "pages/s",
        hist.len() as f64 / took.max(1e-9),
        counters,
        errors,
        &hist,
        &sampler,
        threads,
        None,
    );

    let sampler = Sampler::start(target.server_pid);
    let mut hits = 0u64;
    let (hist, errors, took) = measure(
        &mut setup,
        args.queries,
        || {
            let word = format!("w{}", rng.below(VOCABULARY));
            json!({"type": "chat.search", "space": space, "query": word, "room": ROOM})
        },
        |reply| hits += reply["hits"].as_array().map_or(0, |h| h.len() as u64),
    )
    .await?;
    let mut counters = BTreeMap::new();
    counters.insert("searches".into(), hist.len());
    counters.insert("hits".into(), hits);
    let search_step = step(
        &format!("search of {room_head}"),
        "searches/s",
        hist.len() as f64 / took.max(1e-9),
        counters,
        errors,
        &hist,
        &sampler,
        threads,
        None,
    );
    setup.writer.close().await;
    if room_head < 1_000_000 {
        notes.push(format!(
            "the room holds {room_head} messages; the targets are for 1,000,000 (--room-messages)"
        ));
    }

    let ms = |s: &Step, q: f64| {
        s.latency.as_ref().map(|l| {
            let us = if q >= 0.99 { l.p99_us } else { l.p50_us };
            us as f64 / 1000.0
        })
    };
    let lines = vec![
        format!(
            "acknowledged sends: {:.0}/s (each acknowledged after its commit), ack p50 {:.2} ms, p99 {:.2} ms",
            send_step.throughput,
            ms(&send_step, 0.5).unwrap_or(0.0),
            ms(&send_step, 0.99).unwrap_or(0.0)
        ),
        format!(
            "history page of {}: p50 {:.2} ms, p99 {:.2} ms (room of {room_head})",
            args.page,
            ms(&history_step, 0.5).unwrap_or(0.0),
            ms(&history_step, 0.99).unwrap_or(0.0)
        ),
        format!(
            "search: p50 {:.2} ms, p99 {:.2} ms",
            ms(&search_step, 0.5).unwrap_or(0.0),
            ms(&search_step, 0.99).unwrap_or(0.0)
        ),
    ];
    let pass = send_step.pass && history_step.pass && search_step.pass;
    Ok(Report {
        scenario: "chat".into(),
        target: target.describe(),
        encoding: target.encoding_name().into(),
        params: json!({
            "connections": connections,
            "window": args.window,
            "duration_s": args.duration,
            "body_bytes": args.body_bytes,
            "room_messages": args.room_messages,
            "queries": args.queries,
            "page": args.page,
        }),
        summary: json!({
            "acked_sends_per_s": send_step.throughput,
            "send_p99_ms": ms(&send_step, 0.99),
            "history_p50_ms": ms(&history_step, 0.5),
            "history_p99_ms": ms(&history_step, 0.99),
            "search_p50_ms": ms(&search_step, 0.5),
            "search_p99_ms": ms(&search_step, 0.99),
            "room_messages": room_head,
            "pass": pass,
        }),
        steps: vec![send_step, history_step, search_step],
        summary_lines: lines,
        notes,
    })
}
