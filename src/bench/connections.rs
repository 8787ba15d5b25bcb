//! `chorus bench connections`: open N idle connections that each say `hello`, hold them
//! (answering pings), and report how fast they opened and what each one costs the server in
//! memory (RSS before and after, from `--server-pid`).
//!
//! WebSocket connections to a loopback server are spread over source addresses 127.0.0.1 …
//! 127.0.0.x (x = ceil(N / 20,000)) so they are not limited by the ~28,000 ephemeral ports of
//! one address. The open-file limit must allow N connections (the server needs as many).

use super::report::{Latency, Report, Step, histogram, thousands};
use super::scan::{self, Scanned};
use super::target::{CommonArgs, Target, abort_all};
use super::usage::{self, Sampler};
use super::wire::{Reader, Writer};
use crate::protocol::ServerFrame;
use clap::Args;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Give both sides enough open files first (`ulimit -n`), e.g. for 100,000 connections:
  ulimit -n 200000; CHORUS_MAX_CONNECTIONS=200000 taskset -c 0 chorus serve
  ulimit -n 200000; taskset -c 1 chorus bench connections -n 100000 --server-pid $(pgrep -f 'chorus serve')")]
pub struct ConnectionsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Idle connections to open.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub count: usize,
    /// Seconds to hold them open once all are connected.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub hold: f64,
    /// WebSocket source addresses 127.0.0.1..=127.0.0.x to spread over
    /// [default: one per 20,000 connections].
    #[arg(long, value_name = "X")]
    pub source_ips: Option<usize>,
}

/// Hold one connection open: answer pings, note why it ended.
async fn hold(mut reader: Reader, mut writer: Writer, ends: Arc<Mutex<BTreeMap<String, u64>>>) {
    let end = loop {
        let mut ping = false;
        let mut goodbye = None;
        let read = reader
            .read(&mut |frame, _| match scan::scan(frame) {
                Scanned::Ping => ping = true,
                Scanned::Other => {
                    if let Some(ServerFrame::Disconnect { code, .. }) = scan::decode(frame) {
                        goodbye = Some(code.as_str().to_string());
                    }
                }
                _ => {}
            })
            .await;
        if let Some(code) = goodbye {
            break code;
        }
        match read {
            Ok(true) => {}
            Ok(false) => break "closed by the server".into(),
            Err(e) => break format!("read failed: {e}"),
        }
        if ping {
            writer.answer_ping();
        }
        for payload in reader.take_pings() {
            writer.pong(&payload);
        }
        if let Err(e) = writer.flush().await {
            break format!("write failed: {e}");
        }
    };
    *ends
        .lock()
        .expect("bench locks are never poisoned")
        .entry(end)
        .or_insert(0) += 1;
}

/// Run the connections scenario; the caller prints the report.
pub async fn run(args: &ConnectionsArgs) -> anyhow::Result<Report> {
    let n = args.count;
    args.common.ensure_open_files(n)?;
    let target = Target::new(&args.common, n, args.source_ips).await?;
    let ui = target.ui.clone();
    let mut notes = Vec::new();
    let server_before = target.server_pid.and_then(|pid| usage::sample(Some(pid)));
    let tool_before = usage::sample(None);

    let ends = Arc::new(Mutex::new(BTreeMap::new()));
    let sampler = Sampler::start(target.server_pid);
    let started = Instant::now();
    // Each connection is held (and answers pings) from the moment it is open.
    let (opened, failed) = target
        .connect_many(0..n, "connections", |i| {
            let (target, ends) = (&target, ends.clone());
            async move {
                let t0 = Instant::now();
                let conn = target.connect(i).await?;
                let took = t0.elapsed();
                let (reader, writer) = conn.into_parts();
                Ok((tokio::spawn(hold(reader, writer, ends)), took))
            }
        })
        .await;
    let connect_time = started.elapsed().as_secs_f64();
    let connect_usage = sampler.finish();
    let connected = opened.len();
    let mut hist = histogram();
    let mut holders = Vec::with_capacity(connected);
    for (holder, took) in opened {
        hist.saturating_record(took.as_micros() as u64);
        holders.push(holder);
    }
    if let Some((why, count)) = failed.iter().next() {
        ui.note(
            &mut notes,
            format!("{count} of {n} connections failed, e.g.: {why}"),
        );
    }

    // Let the server settle, then look at its memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let server_after = target.server_pid.and_then(|pid| usage::sample(Some(pid)));
    let tool_after = usage::sample(None);
    let bar = ui.bar((args.hold * 10.0).ceil() as u64, "holding");
    let hold_until = Instant::now() + Duration::from_secs_f64(args.hold.max(0.0));
    while Instant::now() < hold_until {
        tokio::time::sleep(Duration::from_millis(100).min(hold_until - Instant::now())).await;
        bar.inc(1);
    }
    bar.finish_and_clear();
    abort_all(holders).await;
    let ended = std::mem::take(&mut *ends.lock().expect("bench locks are never poisoned"));

    let per_conn =
        |before: Option<usage::ProcSample>, after: Option<usage::ProcSample>| match (before, after)
        {
            (Some(b), Some(a)) if connected > 0 => {
                Some((a.rss_kib as f64 - b.rss_kib as f64) / connected as f64)
            }
            _ => None,
        };
    let server_per_conn = per_conn(server_before, server_after);
    let tool_per_conn = per_conn(tool_before, tool_after);

    let mut errors: BTreeMap<String, u64> = failed;
    for (why, count) in &ended {
        *errors.entry(format!("ended early: {why}")).or_insert(0) += count;
    }
    let mut counters = BTreeMap::new();
    counters.insert("connected".to_string(), connected as u64);
    counters.insert("failed".to_string(), (n - connected) as u64);
    counters.insert("ended_early".to_string(), ended.values().sum::<u64>());
    let pass = connected == n && ended.is_empty();
    let step = Step {
        label: format!("{} conns", thousands(n as f64)),
        unit: "connections/s".into(),
        throughput: connected as f64 / connect_time.max(1e-9),
        counters,
        latency: Latency::of(&hist),
        limit: connect_usage.limit(args.common.threads),
        usage: connect_usage,
        pass,
        failure: (!pass).then(|| {
            format!(
                "{} failed, {} ended early",
                n - connected,
                ended.values().sum::<u64>()
            )
        }),
        errors,
    };

    let kib = |v: Option<usage::ProcSample>| v.map(|s| s.rss_kib);
    let mut lines = vec![format!(
        "{connected} of {n} connected in {connect_time:.1} s ({} per second; latency = connect + hello)",
        thousands(step.throughput)
    )];
    match server_per_conn {
        Some(per) => lines.push(format!(
            "server RSS {} KiB -> {} KiB: {per:.1} KiB per idle connection",
            thousands(kib(server_before).unwrap_or(0) as f64),
            thousands(kib(server_after).unwrap_or(0) as f64),
        )),
        None => lines.push("server RSS: unknown (pass --server-pid)".into()),
    }
    if args.common.server_pid == Some(std::process::id()) {
        lines.push("(the server runs in this process: its RSS includes the tool's)".into());
    }
    if let Some(per) = tool_per_conn {
        lines.push(format!("tool RSS: {per:.1} KiB per connection"));
    }
    Ok(Report {
        scenario: "connections".into(),
        target: target.describe(),
        encoding: target.encoding_name().into(),
        params: json!({
            "count": n,
            "hold_s": args.hold,
            "concurrency": target.concurrency,
            "threads": args.common.threads,
        }),
        summary: json!({
            "connected": connected,
            "connect_s": connect_time,
            "server_rss_before_kib": kib(server_before),
            "server_rss_after_kib": kib(server_after),
            "server_rss_per_connection_kib": server_per_conn,
            "tool_rss_per_connection_kib": tool_per_conn,
            "pass": pass,
        }),
        steps: vec![step],
        summary_lines: lines,
        notes,
    })
}
