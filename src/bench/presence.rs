//! `chorus bench presence`: a reconnect storm. N member connections (each its own user) in
//! spaces of `--space-size`, and `--watchers` connections per space subscribed to the space's
//! presence. Once every watcher sees every member, all member connections drop at once, stay
//! away `--down-ms`, and reconnect at once (as fast as `--concurrency` allows).
//!
//! Two steps are reported, `drop` and `reconnect`, each with the presence frames and entries
//! the watchers received, the watchers' frames per second, the server's CPU per change (one
//! change per member: a disconnect, then a connect), and the time until every watcher's view was
//! right again (`reconnect`: everyone back; `drop`: the members gone, which happens only when
//! `--down-ms` exceeds the server's grace period, `presence_grace_ms`, 5 s by default; within
//! it a correct server shows nothing at all). For comparison, a design without batching sends
//! one message per change per watcher.
//!
//! A step ends once every view is right and no presence frame came for `--quiet-ms`: the
//! members stay away at least `--down-ms`, and, if the watchers saw them go, until every view
//! shows them gone.

use super::report::{Latency, Report, Step, histogram, thousands};
use super::scan::{self, Scanned};
use super::target::{CommonArgs, Target, TargetKind, abort_all};
use super::usage::{Sampler, Usage};
use super::wire::{Reader, Writer};
use crate::protocol::{ErrorCode, ServerFrame};
use ::presence::Status;
use anyhow::{Context, anyhow, bail};
use clap::Args;
use serde::Deserialize;
use serde_json::json;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Member requests in flight per space while setting up.
/// The longest a phase may take to settle.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

#[derive(Args, Debug, Clone)]
#[command(after_help = "\
The server needs a raised rate limit for the set-up and enough open files (both sides):
  ulimit -n 65536; CHORUS_RATE_PER_SEC=1000000 CHORUS_RATE_BURST=1000000 taskset -c 0 chorus serve
  ulimit -n 65536; taskset -c 1 chorus bench presence -n 10000 --server-pid $(pgrep -f 'chorus serve')
--down-ms below the server's presence_grace_ms (5000) measures flap damping: nothing should change.")]
pub struct PresenceArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Member connections that drop and reconnect, each its own user.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub count: usize,
    /// Members per space (the last space may have fewer).
    #[arg(long, default_value_t = 1_000)]
    pub space_size: usize,
    /// Watcher connections per space, subscribed to its presence.
    #[arg(short = 'w', long, default_value_t = 10)]
    pub watchers: usize,
    /// How long the members stay away, in milliseconds; longer if the watchers saw them go
    /// (then until every view shows them gone).
    #[arg(long, value_name = "MS", default_value_t = 6_000)]
    pub down_ms: u64,
    /// A step is over once every view is right and no presence frame came for this long.
    #[arg(long, value_name = "MS", default_value_t = 1_500)]
    pub quiet_ms: u64,
    /// WebSocket source addresses 127.0.0.1..=127.0.0.x to spread over
    /// [default: one per 20,000 connections].
    #[arg(long, value_name = "X")]
    pub source_ips: Option<usize>,
}

/// One watcher's view of its space, kept by its read loop.
#[derive(Debug)]
struct Watch {
    /// Users in the view: not offline.
    online: HashSet<String>,
    frames: u64,
    entries: u64,
    /// When the number of users in the view last changed.
    changed: Instant,
    last_frame: Option<Instant>,
    /// Why the connection ended, or errors it got.
    trouble: BTreeMap<String, u64>,
}

type Watches = Arc<Vec<Mutex<Watch>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("bench locks are never poisoned")
}

/// Who is where: user `i` of the run is `bench-i`.
struct Layout {
    spaces: Vec<String>,
    watchers_per_space: usize,
    members: usize,
    space_size: usize,
}

impl Layout {
    fn watchers(&self) -> usize {
        self.spaces.len() * self.watchers_per_space
    }

    /// Users `0..watchers()` watch, `watchers()..` are members.
    fn member_range(&self) -> std::ops::Range<usize> {
        self.watchers()..self.watchers() + self.members
    }

    fn space_of_watcher(&self, w: usize) -> usize {
        w / self.watchers_per_space
    }

    fn members_of(&self, space: usize) -> std::ops::Range<usize> {
        let start = self.watchers() + space * self.space_size;
        start..(start + self.space_size).min(self.watchers() + self.members)
    }

    /// Everyone who shows in space `k` when all are connected: its watchers, its members, and
    /// user 0, who created (and so is a member of) every space.
    fn expected(&self, k: usize) -> usize {
        let watchers = self.watchers_per_space;
        let owner_elsewhere = usize::from(k != 0);
        watchers + self.members_of(k).len() + owner_elsewhere
    }
}

/// Create the spaces (user 0 owns them all) and add their watchers and members, one
/// connection per space so the store commits the spaces' additions together.
async fn set_up(target: &Target, layout: &Layout, org: &str) -> anyhow::Result<()> {
    let bar = target.ui.bar(
        (layout.watchers() + layout.members) as u64,
        "adding members",
    );
    let jobs = layout.spaces.iter().enumerate().map(|(k, space)| {
        let bar = bar.clone();
        async move {
            let mut conn = target.connect(0).await.context("cannot set up the spaces")?;
            match conn
                .request(json!({"type": "space.create", "space": space, "name": "chorus bench presence"}))
                .await?
            {
                Ok(_) => {}
                Err(e) if e.code == ErrorCode::AlreadyExists.as_str() => {}
                Err(e) => bail!(
                    "cannot create space {space}: {e} (does the token have the create_spaces grant?)"
                ),
            }
            let watchers = k * layout.watchers_per_space..(k + 1) * layout.watchers_per_space;
            let users: VecDeque<usize> = watchers
                .chain(layout.members_of(k))
                .filter(|&u| u != 0)
                .collect();
            target.add_members(&mut conn, space, org, users, &bar).await?;
            conn.writer.close().await;
            Ok(())
        }
    });
    let results = futures_util::future::join_all(jobs).await;
    bar.finish_and_clear();
    results.into_iter().collect()
}

/// Just what a watcher needs of a `presence` frame, borrowed from its bytes: a batch of
/// thousands of entries for each of many watchers must not make the tool the bottleneck.
#[derive(Deserialize)]
struct LeanFrame<'a> {
    #[serde(borrow)]
    updates: Vec<LeanUpdate<'a>>,
}

#[derive(Deserialize)]
struct LeanUpdate<'a> {
    snapshot: bool,
    #[serde(borrow)]
    entries: Vec<LeanEntry<'a>>,
}

#[derive(Deserialize)]
struct LeanEntry<'a> {
    #[serde(borrow)]
    user: LeanUser<'a>,
    status: Status,
}

#[derive(Deserialize)]
struct LeanUser<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
}

/// A `presence` frame, if `frame` is one (the server writes `type` first).
fn lean_presence(frame: &[u8]) -> Option<LeanFrame<'_>> {
    if frame.starts_with(br#"{"type":"presence","#) {
        serde_json::from_slice(frame).ok()
    } else if frame.starts_with(b"\x82\xa4type\xa8presence") {
        rmp_serde::from_slice(frame).ok()
    } else {
        None
    }
}

impl Watch {
    fn apply(&mut self, frame: LeanFrame, now: Instant) {
        self.frames += 1;
        self.last_frame = Some(now);
        let before = self.online.len();
        for update in &frame.updates {
            if update.snapshot {
                self.online.clear();
            }
            self.entries += update.entries.len() as u64;
            for e in &update.entries {
                if e.status == Status::Offline {
                    self.online.remove(e.user.id.as_ref());
                } else if !self.online.contains(e.user.id.as_ref()) {
                    self.online.insert(e.user.id.to_string());
                }
            }
        }
        if self.online.len() != before {
            self.changed = now;
        }
    }
}

/// A watcher's read loop: apply presence frames to its view, answer pings, until it ends.
async fn watch(mut reader: Reader, mut writer: Writer, watch: Watches, i: usize) {
    let watch = &watch[i];
    loop {
        let mut ping = false;
        let mut others = Vec::new();
        let read = reader
            .read(&mut |frame, now| {
                if let Some(presence) = lean_presence(frame) {
                    lock(watch).apply(presence, now);
                    return;
                }
                match scan::scan(frame) {
                    Scanned::Ping => ping = true,
                    Scanned::Other => others.push(scan::decode(frame)),
                    _ => {}
                }
            })
            .await;
        let mut end = None;
        {
            let mut w = lock(watch);
            for frame in others {
                match frame {
                    Some(ServerFrame::Disconnect { code, .. }) => end = Some(code.to_string()),
                    Some(ServerFrame::Error { code, .. }) => {
                        *w.trouble.entry(code.to_string()).or_insert(0) += 1;
                    }
                    Some(ServerFrame::PresenceUnsubscribed { code, .. }) => {
                        end = Some(format!("unsubscribed: {code}"));
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
                *w.trouble.entry(format!("watcher: {why}")).or_insert(0) += 1;
                return;
            }
        }
        if ping {
            writer.answer_ping();
        }
        for payload in reader.take_pings() {
            writer.pong(&payload);
        }
        if writer.queued() > 0 && writer.flush().await.is_err() {
            *lock(watch)
                .trouble
                .entry("watcher: write failed".into())
                .or_insert(0) += 1;
            return;
        }
    }
}

/// Hold a member connection open (answering pings) until aborted.
async fn hold(mut reader: Reader, mut writer: Writer) {
    loop {
        let mut ping = false;
        match reader
            .read(&mut |frame, _| ping |= scan::scan(frame) == Scanned::Ping)
            .await
        {
            Ok(true) => {}
            _ => return,
        }
        if ping {
            writer.answer_ping();
        }
        for payload in reader.take_pings() {
            writer.pong(&payload);
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
}

/// Connect every member (at most `concurrency` at once) and hold the connections.
async fn connect_members(
    target: &Target,
    layout: &Layout,
    what: &str,
) -> (Vec<tokio::task::JoinHandle<()>>, BTreeMap<String, u64>) {
    target
        .connect_many(layout.member_range(), what, |i| async move {
            let (reader, writer) = target.connect(i).await?.into_parts();
            Ok(tokio::spawn(hold(reader, writer)))
        })
        .await
}

/// What the watchers received since `base`, per watcher.
#[derive(Debug, Clone, Default)]
struct Tally {
    frames: Vec<u64>,
    entries: Vec<u64>,
}

fn tally(watches: &Watches) -> Tally {
    let mut t = Tally::default();
    for w in watches.iter() {
        let w = lock(w);
        t.frames.push(w.frames);
        t.entries.push(w.entries);
    }
    t
}

/// Wait until every watcher's view holds `want(space)` users and no frame came for `quiet`.
/// Returns what was still wrong if the views never got there (`None`: they did), and when
/// each watcher's count last changed.
async fn settle(
    watches: &Watches,
    layout: &Layout,
    want: impl Fn(usize) -> usize,
    quiet: Duration,
    ui: &super::target::Ui,
    label: &str,
) -> (Option<String>, Vec<Instant>) {
    let started = Instant::now();
    let bar = ui.bar(watches.len() as u64, label);
    loop {
        let now = Instant::now();
        let mut right = 0;
        let mut last_frame = None;
        for (i, w) in watches.iter().enumerate() {
            let w = lock(w);
            right += usize::from(w.online.len() == want(layout.space_of_watcher(i)));
            last_frame = last_frame.max(w.last_frame);
        }
        bar.set_position(right as u64);
        let calm = last_frame.is_none_or(|t| now.saturating_duration_since(t) >= quiet);
        let done = right == watches.len();
        if (done && calm) || started.elapsed() > SETTLE_LIMIT {
            bar.finish_and_clear();
            let changed = watches.iter().map(|w| lock(w).changed).collect();
            let wrong = (!done).then(|| wrong_views(watches, layout, &want));
            return (wrong, changed);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The watchers whose view is wrong, with how many users they see (first few).
fn wrong_views(watches: &Watches, layout: &Layout, want: impl Fn(usize) -> usize) -> String {
    let wrong: Vec<String> = watches
        .iter()
        .enumerate()
        .filter_map(|(i, w)| {
            let (space, seen) = (layout.space_of_watcher(i), lock(w).online.len());
            let want = want(space);
            (seen != want).then(|| format!("watcher {i} (space {space}) sees {seen} of {want}"))
        })
        .collect();
    let shown = wrong.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
    format!("{} views wrong: {shown}", wrong.len())
}

/// Figures of one phase.
struct Phase {
    label: &'static str,
    start: Instant,
    /// When the last member connection was closed or back.
    done_at: Instant,
    /// What was still wrong when the views did not settle (`None`: they did).
    wrong: Option<String>,
    /// When each watcher's count last changed.
    changed: Vec<Instant>,
    before: Tally,
    after: Tally,
    usage: Usage,
    changes: usize,
    /// Whether the views were expected to change in this phase at all.
    expect_change: bool,
    errors: BTreeMap<String, u64>,
}

impl Phase {
    /// Time until every view was right, from the phase's start (0 if no view had to change).
    fn settle_s(&self) -> f64 {
        self.changed
            .iter()
            .map(|&t| t.saturating_duration_since(self.start).as_secs_f64())
            .fold(0.0, f64::max)
    }

    fn frames(&self) -> u64 {
        self.after.frames.iter().sum::<u64>() - self.before.frames.iter().sum::<u64>()
    }

    fn entries(&self) -> u64 {
        self.after.entries.iter().sum::<u64>() - self.before.entries.iter().sum::<u64>()
    }

    fn max_frames_per_watcher(&self) -> u64 {
        self.after
            .frames
            .iter()
            .zip(&self.before.frames)
            .map(|(a, b)| a - b)
            .max()
            .unwrap_or(0)
    }

    fn step(&self, watchers: usize, threads: usize) -> Step {
        let settle = self.settle_s();
        let mut hist = histogram();
        for &t in &self.changed {
            let us = t.saturating_duration_since(self.start).as_micros() as u64;
            hist.saturating_record(us.max(1));
        }
        let frames = self.frames();
        let per_watcher = frames as f64 / watchers.max(1) as f64;
        // Frames per watcher per second of storm: while views were changing.
        let storm_s = settle.max(1e-3);
        let rate = per_watcher / storm_s;
        let naive = (self.changes * watchers) as u64;
        let mut counters = BTreeMap::new();
        for (name, v) in [
            ("changes", self.changes as u64),
            ("watchers", watchers as u64),
            ("frames", frames),
            ("entries", self.entries()),
            ("max_frames_per_watcher", self.max_frames_per_watcher()),
            ("naive_messages", naive),
            ("settle_ms", (settle * 1000.0).round() as u64),
            (
                "members_done_ms",
                self.done_at.duration_since(self.start).as_millis() as u64,
            ),
        ] {
            counters.insert(name.to_string(), v);
        }
        if let Some(server) = &self.usage.server {
            let per_change = server.cpu_s * 1e6 / self.changes.max(1) as f64;
            counters.insert("server_cpu_us_per_change".into(), per_change.round() as u64);
        }
        let mut failures = Vec::new();
        if let Some(wrong) = &self.wrong {
            failures.push(format!("views not right in time ({wrong})"));
        }
        if !self.errors.is_empty() {
            failures.push(format!("{} errors", self.errors.values().sum::<u64>()));
        }
        if !self.expect_change && frames > 0 {
            failures.push(format!("{frames} frames within the grace period"));
        }
        Step {
            label: self.label.to_string(),
            unit: "frames/watcher/s".into(),
            throughput: if self.expect_change { rate } else { 0.0 },
            counters,
            errors: self.errors.clone(),
            latency: Latency::of(&hist),
            limit: self.usage.limit(threads),
            usage: self.usage.clone(),
            pass: failures.is_empty(),
            failure: (!failures.is_empty()).then(|| failures.join(", ")),
        }
    }
}

fn trouble(watches: &Watches) -> BTreeMap<String, u64> {
    let mut all = BTreeMap::new();
    for w in watches.iter() {
        for (why, n) in std::mem::take(&mut lock(w).trouble) {
            *all.entry(why).or_insert(0) += n;
        }
    }
    all
}

/// Run the presence scenario; the caller prints the report.
pub async fn run(args: &PresenceArgs) -> anyhow::Result<Report> {
    if args.common.target != TargetKind::Chorus {
        bail!("the presence scenario needs a Chorus server");
    }
    if args.count == 0 || args.space_size == 0 || args.watchers == 0 {
        bail!("-n, --space-size and --watchers must be positive");
    }
    let layout = {
        let random = {
            let mut bytes = [0u8; 6];
            getrandom::fill(&mut bytes)?;
            hex::encode(bytes)
        };
        let prefix = args
            .common
            .space
            .clone()
            .unwrap_or_else(|| format!("bench-{random}"));
        let count = args.count.div_ceil(args.space_size);
        Layout {
            spaces: (0..count).map(|k| format!("{prefix}-{k}")).collect(),
            watchers_per_space: args.watchers,
            members: args.count,
            space_size: args.space_size,
        }
    };
    let watchers = layout.watchers();
    let total = watchers + args.count;
    args.common.ensure_open_files(total)?;
    let target = Target::new(&args.common, total, args.source_ips).await?;
    if !target.mints_tokens() {
        bail!(
            "the presence scenario needs a user per connection: mint tokens (--data-dir or \
             --secret-file) instead of --token"
        );
    }
    let ui = target.ui.clone();
    let mut notes = Vec::new();
    set_up(&target, &layout, &args.common.org).await?;

    // Watchers: subscribe, then read in the background.
    let watches: Watches = Arc::new(
        (0..watchers)
            .map(|_| {
                Mutex::new(Watch {
                    online: HashSet::new(),
                    frames: 0,
                    entries: 0,
                    changed: Instant::now(),
                    last_frame: None,
                    trouble: BTreeMap::new(),
                })
            })
            .collect(),
    );
    let (watcher_tasks, failed) = target
        .connect_many(0..watchers, "watchers", |i| {
            let (target, layout, watches) = (&target, &layout, watches.clone());
            async move {
                let mut conn = target.connect(i).await?;
                let space = &layout.spaces[layout.space_of_watcher(i)];
                let snapshot = conn
                    .request(json!({"type": "presence.subscribe", "scope": {"space": space}}))
                    .await?
                    .map_err(|e| anyhow!("presence.subscribe refused: {e}"))?;
                let users = snapshot["entries"].as_array().map_or(0, Vec::len);
                let mut w = lock(&watches[i]);
                for e in snapshot["entries"].as_array().into_iter().flatten() {
                    if let Some(id) = e["user"]["id"].as_str() {
                        w.online.insert(id.to_string());
                    }
                }
                w.entries += users as u64;
                drop(w);
                let (reader, writer) = conn.into_parts();
                Ok(tokio::spawn(watch(reader, writer, watches, i)))
            }
        })
        .await;
    if let Some((why, n)) = failed.iter().next() {
        abort_all(watcher_tasks).await;
        bail!("{n} of {watchers} watchers could not subscribe: {why}");
    }
    let quiet = Duration::from_millis(args.quiet_ms);
    let all = |k: usize| layout.expected(k);
    let gone = |k: usize| layout.expected(k) - layout.members_of(k).len();

    let (members, failed) = connect_members(&target, &layout, "members").await;
    if let Some((why, n)) = failed.iter().next() {
        abort_all(members).await;
        abort_all(watcher_tasks).await;
        bail!("{n} of {} members could not connect: {why}", args.count);
    }
    let (wrong, _) = settle(&watches, &layout, all, quiet, &ui, "everyone online").await;
    if let Some(wrong) = wrong {
        abort_all(members).await;
        abort_all(watcher_tasks).await;
        bail!(
            "the watchers never saw every member online ({wrong}): {:?}",
            trouble(&watches)
        );
    }

    // The storm: everyone drops at once and stays away.
    let before = tally(&watches);
    let sampler = Sampler::start(target.server_pid);
    let start = Instant::now();
    abort_all(members).await;
    let done_at = Instant::now();
    let down = Duration::from_millis(args.down_ms);
    let bar = ui.bar(args.down_ms / 100, "members away");
    while start.elapsed() < down {
        tokio::time::sleep(Duration::from_millis(100).min(down.saturating_sub(start.elapsed())))
            .await;
        bar.set_position(start.elapsed().as_millis() as u64 / 100);
    }
    bar.finish_and_clear();
    // Members away for longer than the grace period go offline; within it, nothing changes.
    // Once something changed, the members stay away until every view shows them gone.
    let touched = tally(&watches).frames != before.frames;
    let (wrong, changed) = if touched {
        settle(&watches, &layout, gone, quiet, &ui, "views right").await
    } else {
        let untouched = (0..watchers)
            .all(|i| lock(&watches[i]).online.len() == all(layout.space_of_watcher(i)));
        let wrong = (!untouched).then(|| wrong_views(&watches, &layout, all));
        (wrong, vec![start; watchers])
    };
    let drop_phase = Phase {
        label: "drop",
        start,
        done_at,
        wrong,
        changed,
        before,
        after: tally(&watches),
        usage: sampler.finish(),
        changes: args.count,
        expect_change: touched,
        errors: BTreeMap::new(),
    };
    if touched && drop_phase.wrong.is_some() {
        ui.note(
            &mut notes,
            "after the drop some views never showed every member gone".into(),
        );
    }

    // Everyone comes back at once.
    let before = tally(&watches);
    let sampler = Sampler::start(target.server_pid);
    let start = Instant::now();
    let (members, failed) = connect_members(&target, &layout, "reconnecting").await;
    let done_at = Instant::now();
    let (wrong, changed) = settle(&watches, &layout, all, quiet, &ui, "views right").await;
    // The quiet period is not part of the storm's cost.
    let usage = sampler.finish();
    let mut errors = failed;
    for (why, n) in trouble(&watches) {
        *errors.entry(why).or_insert(0) += n;
    }
    let back_phase = Phase {
        label: "reconnect",
        start,
        done_at,
        wrong,
        changed,
        before,
        after: tally(&watches),
        usage,
        changes: members.len(),
        expect_change: true,
        errors,
    };
    abort_all(members).await;
    abort_all(watcher_tasks).await;

    let threads = args.common.threads;
    let steps = vec![
        drop_phase.step(watchers, threads),
        back_phase.step(watchers, threads),
    ];
    let (summary, summary_lines) = summarize(&steps, &back_phase, &drop_phase, watchers);
    Ok(Report {
        scenario: "presence".into(),
        target: target.describe(),
        encoding: target.encoding_name().into(),
        params: json!({
            "count": args.count,
            "spaces": layout.spaces.len(),
            "space_size": args.space_size,
            "watchers_per_space": args.watchers,
            "down_ms": args.down_ms,
            "quiet_ms": args.quiet_ms,
            "concurrency": target.concurrency,
            "threads": threads,
        }),
        steps,
        summary,
        summary_lines,
        notes,
    })
}

fn summarize(
    steps: &[Step],
    back: &Phase,
    drop: &Phase,
    watchers: usize,
) -> (serde_json::Value, Vec<String>) {
    let reconnect = &steps[1];
    let settle = back.settle_s();
    let after_last = (settle - back.done_at.duration_since(back.start).as_secs_f64()).max(0.0);
    let per_watcher = back.frames() as f64 / watchers.max(1) as f64;
    let cpu = |p: &Phase| {
        p.usage
            .server
            .as_ref()
            .map(|s| s.cpu_s * 1e6 / p.changes.max(1) as f64)
    };
    let mut lines = vec![format!(
        "{}: {} members back in {:.2} s; every view right {:.2} s after the first reconnect \
         ({:.2} s after the last); {:.1} frames per watcher ({:.2}/s of storm, max {}), {} entries",
        if reconnect.pass { "PASS" } else { "FAIL" },
        thousands(back.changes as f64),
        back.done_at.duration_since(back.start).as_secs_f64(),
        settle,
        after_last,
        per_watcher,
        reconnect.throughput,
        back.max_frames_per_watcher(),
        thousands(back.entries() as f64),
    )];
    lines.push(format!(
        "batching: {} frames delivered where one message per change per watcher would be {}",
        thousands(back.frames() as f64),
        thousands((back.changes * watchers) as f64),
    ));
    lines.push(match drop.expect_change {
        true => format!(
            "drop: {} frames, views right {:.2} s after the drop (grace period included)",
            thousands(drop.frames() as f64),
            drop.settle_s()
        ),
        false => format!(
            "drop: back within the grace period: {} frames (0 expected)",
            drop.frames()
        ),
    });
    match (cpu(back), cpu(drop)) {
        (Some(b), Some(d)) => lines.push(format!(
            "server CPU per change: {b:.0} us per reconnect (connection set-up included), \
             {d:.0} us per disconnect"
        )),
        _ => lines.push("server CPU: unknown (pass --server-pid)".into()),
    }
    let summary = json!({
        "pass": steps.iter().all(|s| s.pass),
        "reconnect_s": back.done_at.duration_since(back.start).as_secs_f64(),
        "settle_s": settle,
        "settle_after_last_s": after_last,
        "frames_per_watcher": per_watcher,
        "frames_per_watcher_per_s": reconnect.throughput,
        "naive_messages": back.changes * watchers,
        "frames": back.frames(),
        "server_cpu_us_per_reconnect": cpu(back),
        "server_cpu_us_per_disconnect": cpu(drop),
        "drop_frames": drop.frames(),
    });
    (summary, lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Encoding, encode_server};
    use ::presence::{PresenceEntry, Scope, ScopeUpdate, UserId};

    #[test]
    fn watchers_read_presence_frames_in_both_encodings() {
        let entry = |id: &str, status| PresenceEntry {
            user: UserId::new("bench", id),
            status,
            custom: None,
            in_meeting: false,
            last_seen: None,
        };
        let frame = ServerFrame::Presence {
            updates: vec![ScopeUpdate {
                scope: Scope::Space("s".into()),
                epoch: 1,
                offset: 2,
                snapshot: false,
                entries: vec![entry("a", Status::Online), entry("b", Status::Offline)],
                typing: Vec::new(),
            }],
        };
        for encoding in Encoding::ALL {
            let bytes = encode_server(&frame, encoding);
            let lean = lean_presence(&bytes).expect("a presence frame");
            let mut w = Watch {
                online: ["b".to_string()].into(),
                frames: 0,
                entries: 0,
                changed: Instant::now(),
                last_frame: None,
                trouble: BTreeMap::new(),
            };
            w.apply(lean, Instant::now());
            assert_eq!(w.online, HashSet::from(["a".to_string()]));
            assert_eq!((w.frames, w.entries), (1, 2));
        }
        let ping = encode_server(&ServerFrame::Ping, Encoding::Json);
        assert!(lean_presence(&ping).is_none());
    }
}
