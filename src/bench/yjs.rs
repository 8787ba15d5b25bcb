//! `chorus bench yjs`: co-editing one Yjs document over the y-websocket protocol. For each step
//! of `--clients` (a list, default 10, 50, 200), N clients open a fresh document; the first W of
//! them (`--writers`) type steadily, `--rate` small `Y.Text` inserts per second each, and every
//! client keeps its own `yrs` document and applies what it receives.
//!
//! Each insert is a marker `w<writer>:<seq> `; the writer notes its send time in a table shared
//! with the readers (`Run::sent`). A reader observes edit (w, seq) when its document has
//! integrated it: the state vector reaches the clock where that marker ends for writer w's
//! client id (cheap per update, and exact: an update that arrives before one it depends on
//! waits inside yrs and is not observed yet). Latency = observe time − send time. At the end
//! every client's final text is checked to hold each observed edit exactly once. Per step: the
//! latency over every (edit, reader) pair of the measured phase, the fastest reader's p99 (the
//! best any one client gets, free of the tool's own queueing across its readers), edits
//! delivered per second, lost edits (a client that never saw an edit by the end of the step),
//! the server's CPU per delivered edit and RSS (`--server-pid`), and the tool's CPU.
//!
//! A step: connect and sync every client (client 0 first: it creates the document), type for
//! `--warmup` + `--duration` seconds (only edits sent after the warm-up count in the latency;
//! throughput and CPU are measured over the measured phase), then wait for the last edits (up
//! to `--drain-ms` without progress) and close every connection.
//!
//! The clients speak y-websocket (lib0-encoded sync step 1 / step 2 / update; awareness is
//! read and ignored), plain or in Hocuspocus's envelope (`Framing`: only the framing differs,
//! the scenario is the same), so it runs against:
//!
//! - Chorus (`--yjs-server chorus`, the default): `/yjs/<doc>?token=…` on `--url`'s address,
//!   with a token per client (users `bench-<i>` of `--org`, minted from the server's secret) or
//!   `--token` for all. All users of one organisation share its home space, where the document
//!   is created (or in `--space`, if given);
//! - the reference Node server, `@y/websocket-server` (`--yjs-server y-websocket --url
//!   ws://127.0.0.1:PORT`): `--url`'s path + `/<doc>`, no token. It also echoes every update to
//!   the client that sent it; echoes change nothing and are not counted as deliveries.
//! - Hocuspocus, `@hocuspocus/server` (`--yjs-server hocuspocus --url ws://127.0.0.1:PORT`):
//!   `--url` as given, the document named inside every frame, each client authenticating
//!   with `--token` (default: empty; a server without an authentication hook takes any).
//!   It echoes updates too, answers each with a sync status (a refused one is an error), and
//!   drops a socket silent for a minute: silent readers send a keepalive (`KEEPALIVE`).
//!   See `yjs_hocuspocus` for the frames.

use super::report::{Latency, Report, Step, histogram, thousands};
use super::target::{CommonArgs, Target, TargetKind, Transport};
use super::usage::Sampler;
use super::wire::{self, Reader, Writer, WsAddr};
use super::yjs_hocuspocus::{Envelope, Incoming};
use anyhow::{Context, anyhow, bail};
use clap::{Args, ValueEnum};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ClientID, Doc, GetString, ReadTxn, StateVector, Text, TextRef, Transact, Update};

/// The longest one client's connect and initial sync may take.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Name of the shared text every client edits and watches.
const TEXT: &str = "bench";
/// Writers start typing this long after the last client synced.
const LEAD: Duration = Duration::from_millis(100);
/// A Hocuspocus client that sent nothing for this long sends a keepalive (the server drops a
/// socket silent for its timeout, 60 s by default).
const KEEPALIVE: Duration = Duration::from_secs(20);

/// Which y-websocket server the bench talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum YjsServer {
    /// Chorus: `/yjs/<doc>?token=…` on the address of --url.
    Chorus,
    /// The reference Node server (@y/websocket-server): --url's path + `/<doc>`, no token.
    #[value(name = "y-websocket")]
    YWebsocket,
    /// Hocuspocus (@hocuspocus/server) through its own provider protocol: --url as given,
    /// the document named in every frame, --token (default: empty) to authenticate.
    Hocuspocus,
}

impl YjsServer {
    fn name(self) -> &'static str {
        match self {
            YjsServer::Chorus => "chorus",
            YjsServer::YWebsocket => "y-websocket",
            YjsServer::Hocuspocus => "hocuspocus",
        }
    }
}

#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Against Chorus (tokens minted with the server's secret, all users of one organisation):
  taskset -c 0 chorus serve
  taskset -c 1 chorus bench yjs --server-pid <PID of chorus serve>
Against the reference y-websocket server (@y/websocket-server, no token):
  HOST=127.0.0.1 PORT=1234 taskset -c 0 node tests/yjs/node_modules/@y/websocket-server/src/server.js
  taskset -c 1 chorus bench yjs --yjs-server y-websocket --url ws://127.0.0.1:1234 --server-pid <PID>
Against Hocuspocus (@hocuspocus/server, in memory, any token):
  taskset -c 0 node tests/yjs/hocuspocus-server.mjs --port 1235
  taskset -c 1 chorus bench yjs --yjs-server hocuspocus --url ws://127.0.0.1:1235 --server-pid <PID>
benches/yjs-compare.sh runs all three with the same steps and writes a table to docs/bench/.")]
pub struct YjsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The server: chorus (`/yjs/<doc>?token=…` on --url's host and port), y-websocket (the
    /// reference Node server: --url's path + `/<doc>`, no token), or hocuspocus (its own
    /// provider protocol on --url, --token or an empty token).
    #[arg(long, value_enum, default_value_t = YjsServer::Chorus)]
    pub yjs_server: YjsServer,
    /// Clients on the document, one step per count (a list, e.g. 10,50,200).
    #[arg(short = 'n', long, value_delimiter = ',', default_values_t = [10, 50, 200])]
    pub clients: Vec<usize>,
    /// Clients that type (the first W of each step); every client reads.
    #[arg(short = 'w', long, default_value_t = 1)]
    pub writers: usize,
    /// Edits per second of each writer (one small Y.Text insert each).
    #[arg(short = 'r', long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of each measured phase (after --warmup seconds of typing).
    #[arg(short = 'd', long, value_name = "SECS", default_value_t = 10.0)]
    pub duration: f64,
    /// After typing stops, how long to wait without progress for the last edits; what has
    /// not arrived by then is lost.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub drain_ms: u64,
    /// Document id prefix: step N opens `<prefix>-<N>` (default: `bench-` and a random
    /// suffix). The documents must be new: an earlier run's markers in them fail the final
    /// check of the texts.
    #[arg(long)]
    pub doc: Option<String>,
    /// Goal for the fastest reader's p99, in milliseconds (reported, not a failure).
    #[arg(long, value_name = "MS", default_value_t = 5.0)]
    pub goal_ms: f64,
}

/// What every client of one step shares: the clock, the schedule and the send times.
struct Run {
    epoch: Instant,
    /// Writers start typing.
    start: Instant,
    /// Edits sent from here on are measured (µs since `epoch`).
    measure_from_us: u64,
    /// Writers stop typing.
    stop: Instant,
    rate: f64,
    /// Writer `w`'s document has the Yjs client id `first_writer_id + w`.
    first_writer_id: u64,
    /// Per writer, per sequence number: send time in µs since `epoch`, plus one (0: not sent).
    sent: Vec<Box<[AtomicU64]>>,
    /// Per writer: edits sent.
    count: Vec<AtomicU64>,
    /// Writers still typing (a writer is done once its next edit would be due after `stop`).
    typing: AtomicUsize,
}

impl Run {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// The most edits one writer may send (the table's size).
    fn capacity(&self) -> u64 {
        self.sent.first().map_or(0, |s| s.len() as u64)
    }

    fn edits(&self) -> u64 {
        self.count.iter().map(|c| c.load(Ordering::Acquire)).sum()
    }

    fn writer_id(&self, w: usize) -> ClientID {
        ClientID::new(self.first_writer_id + w as u64)
    }
}

/// What one client saw, returned by its task when the step ends.
#[derive(Debug, Default)]
struct Seen {
    observed: u64,
    /// Edits of the other writers sent in the step: what `observed` should reach.
    expected: u64,
    /// Markers twice in the final text (a CRDT never shows an insert twice: a bug if not 0).
    duplicates: u64,
    /// Markers in the final text that no writer of the step sent (or that were observed but
    /// are missing from it): a bug if not 0.
    foreign: u64,
    /// Latencies of measured edits, in µs.
    latencies: Vec<u32>,
    /// Sync step 2 and update frames received.
    update_frames: u64,
    /// Most a writer fell behind its schedule, in µs.
    late_max_us: u64,
    /// Why the connection ended early, or frames it could not handle.
    trouble: BTreeMap<String, u64>,
}

impl Seen {
    fn trouble(&mut self, why: String) {
        *self.trouble.entry(why).or_insert(0) += 1;
    }
}

/// Writer `w`'s edit `seq`: the text it inserts.
fn marker(w: usize, seq: u64) -> String {
    format!("w{w}:{seq} ")
}

/// The length of `marker(w, seq)`, in Yjs clock units (ASCII: one per byte).
fn marker_len(w: usize, seq: u64) -> u32 {
    let digits = |v: u64| v.checked_ilog10().unwrap_or(0) + 1;
    3 + digits(w as u64) + digits(seq)
}

/// `w<writer>:<seq> ` markers in a text.
fn markers(s: &str, out: &mut Vec<(u32, u32)>) {
    for token in s.split(' ') {
        if let Some((w, seq)) = token.strip_prefix('w').and_then(|t| t.split_once(':'))
            && let (Ok(w), Ok(seq)) = (w.parse(), seq.parse())
        {
            out.push((w, seq));
        }
    }
}

/// How y-websocket messages travel on a client's socket: as they are (Chorus, the reference
/// server), or in a Hocuspocus envelope (the document's name first, a token handshake).
#[derive(Debug, Clone)]
enum Framing {
    Plain,
    Hocuspocus(Envelope),
}

/// A server frame, whatever its framing, as the client acts on it.
#[derive(Debug, PartialEq)]
enum Inbound {
    Yjs(Message),
    /// The server refused the client or ended its document: why.
    Refused(String),
    /// A frame to send back (the token again, a pong).
    Answer(Vec<u8>),
    /// Something that should not happen: counted as an error of the step.
    Trouble(String),
    Nothing,
}

impl Framing {
    /// The framing of `server`'s clients on document `doc`, with `token` (Hocuspocus only:
    /// the others carry it in the URL, or take none).
    fn new(server: YjsServer, doc: &str, token: &str) -> anyhow::Result<Framing> {
        Ok(match server {
            YjsServer::Chorus | YjsServer::YWebsocket => Framing::Plain,
            YjsServer::Hocuspocus => Framing::Hocuspocus(Envelope::new(doc, token)?),
        })
    }

    fn wrap(&self, message: Message) -> Vec<u8> {
        let encoded = message.encode_v1();
        match self {
            Framing::Plain => encoded,
            Framing::Hocuspocus(envelope) => envelope.wrap(&encoded),
        }
    }

    /// A client's first frames: sync step 1 with `sv`, after the token with Hocuspocus.
    fn opening(&self, sv: StateVector) -> Vec<Vec<u8>> {
        let step1 = self.wrap(Message::Sync(SyncMessage::SyncStep1(sv)));
        match self {
            Framing::Plain => vec![step1],
            Framing::Hocuspocus(envelope) => vec![envelope.auth(), step1],
        }
    }

    /// What a client that sent nothing for `KEEPALIVE` sends, if the server needs it.
    fn keepalive(&self) -> Option<Vec<u8>> {
        match self {
            Framing::Plain => None,
            Framing::Hocuspocus(envelope) => Some(envelope.keepalive()),
        }
    }

    fn open(&self, frame: &[u8]) -> Inbound {
        match self {
            Framing::Plain => match Message::decode_v1(frame) {
                Ok(Message::Auth(reason)) => Inbound::Refused(format!(
                    "permission denied: {}",
                    reason.as_deref().unwrap_or("no reason")
                )),
                Ok(message) => Inbound::Yjs(message),
                Err(e) => Inbound::Trouble(format!("undecodable frame: {e}")),
            },
            Framing::Hocuspocus(envelope) => match envelope.open(frame) {
                Ok(Incoming::Yjs(message)) => Inbound::Yjs(message),
                Ok(Incoming::TokenRequest) => Inbound::Answer(envelope.auth()),
                Ok(Incoming::Ping) => Inbound::Answer(Envelope::pong().to_vec()),
                Ok(Incoming::Denied(reason)) => {
                    Inbound::Refused(format!("permission denied: {reason}"))
                }
                Ok(Incoming::Close(reason)) => {
                    Inbound::Refused(format!("document closed by the server: {reason}"))
                }
                Ok(Incoming::SyncStatus { applied: false }) => {
                    Inbound::Trouble("update refused by the server (sync status 0)".into())
                }
                // Read-only access shows as refused updates (writers) or not at all (readers).
                Ok(
                    Incoming::Authenticated { .. }
                    | Incoming::SyncStatus { applied: true }
                    | Incoming::Ignored,
                ) => Inbound::Nothing,
                Err(e) => Inbound::Trouble(e.to_string()),
            },
        }
    }
}

/// One client's document and what it saw.
///
/// An edit counts as observed once the document has integrated it: writer `w`'s document
/// holds only its markers, so its edit `seq` ends at a clock the readers can compute, and the
/// edit is in a reader's document once its state vector reaches that clock for `w`'s client
/// id (updates that arrive before what they depend on wait in yrs and do not count). This costs
/// a state-vector look-up per update, where watching the text's deltas would walk the text.
/// The final text is checked once at the end (`verify`).
struct Editor {
    doc: Doc,
    text: TextRef,
    /// This client's writer index, if it types (its own edits are not observations).
    own: Option<usize>,
    /// Per writer: the next edit to observe and the clock at which it ends.
    next: Vec<(u64, u32)>,
    synced: bool,
    /// Why the server refused this client or ended its document.
    refused: Option<String>,
    framing: Framing,
    seen: Seen,
    /// Edits observed, read by the step while it waits for the last ones.
    progress: Arc<AtomicU64>,
}

impl Editor {
    /// A client of a step with `writers` writers; writer `own` edits with client id
    /// `first_writer_id + own`.
    fn new(own: Option<usize>, writers: usize, first_writer_id: u64, framing: Framing) -> Editor {
        let doc = match own {
            Some(w) => Doc::with_client_id(first_writer_id + w as u64),
            // Readers never write (a random id, as Yjs clients take).
            None => Doc::new(),
        };
        let text = doc.get_or_insert_text(TEXT);
        Editor {
            doc,
            text,
            own,
            next: (0..writers).map(|w| (0, marker_len(w, 0))).collect(),
            synced: false,
            refused: None,
            framing,
            seen: Seen::default(),
            progress: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The first frames to send: sync step 1 with this document's state vector, after the
    /// token if the framing wants one.
    fn opening(&self) -> Vec<Vec<u8>> {
        self.framing.opening(self.doc.transact().state_vector())
    }

    /// Handle one frame from the server; replies go to `writer`.
    fn handle(&mut self, frame: &[u8], writer: &mut Writer, run: &Run) {
        match self.framing.open(frame) {
            Inbound::Yjs(Message::Sync(SyncMessage::SyncStep1(sv))) => {
                let update = self.doc.transact().encode_state_as_update_v1(&sv);
                let step2 = Message::Sync(SyncMessage::SyncStep2(update));
                writer.push(&self.framing.wrap(step2));
            }
            Inbound::Yjs(Message::Sync(SyncMessage::SyncStep2(update))) => {
                self.apply(&update, run);
                self.synced = true;
            }
            Inbound::Yjs(Message::Sync(SyncMessage::Update(update))) => self.apply(&update, run),
            Inbound::Yjs(_) | Inbound::Nothing => {}
            Inbound::Refused(why) => self.refused = Some(why),
            Inbound::Answer(frame) => writer.push(&frame),
            Inbound::Trouble(why) => self.seen.trouble(why),
        }
    }

    fn apply(&mut self, update: &[u8], run: &Run) {
        self.seen.update_frames += 1;
        let applied = Update::decode_v1(update)
            .map_err(|e| e.to_string())
            .and_then(|u| {
                self.doc
                    .transact_mut()
                    .apply_update(u)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = applied {
            self.seen.trouble(format!("bad update: {e}"));
        }
        self.collect(run);
    }

    /// Count the edits the document integrated since the last look; record the latency of
    /// measured ones.
    fn collect(&mut self, run: &Run) {
        let sv = self.doc.transact().state_vector();
        let mut now = None;
        let mut new = 0;
        for (w, (seq, end)) in self.next.iter_mut().enumerate() {
            if Some(w) == self.own {
                continue;
            }
            let clock = sv.get(&run.writer_id(w));
            while *end <= clock && *seq < run.capacity() {
                let sent = run.sent[w][*seq as usize].load(Ordering::Acquire);
                if sent == 0 {
                    // Integrated before its writer noted the send: cannot happen in order.
                    self.seen.foreign += 1;
                } else if sent > run.measure_from_us {
                    let now = *now.get_or_insert_with(|| run.now_us());
                    let us = now.saturating_sub(sent - 1).clamp(1, u64::from(u32::MAX));
                    self.seen.latencies.push(us as u32);
                }
                new += 1;
                *seq += 1;
                *end += marker_len(w, *seq);
            }
        }
        if new > 0 {
            self.seen.observed += new;
            self.progress.fetch_add(new, Ordering::Release);
        }
    }

    /// Insert edit `seq` of writer `w` at the end of the text; returns the update frame.
    fn edit(&mut self, w: usize, seq: u64) -> Vec<u8> {
        let update = {
            let mut txn = self.doc.transact_mut();
            let len = self.text.len(&txn);
            self.text.insert(&mut txn, len, &marker(w, seq));
            txn.encode_update_v1()
        };
        self.framing
            .wrap(Message::Sync(SyncMessage::Update(update)))
    }

    /// Check the final text: every edit observed (and every own edit) is in it exactly once,
    /// and nothing else is.
    fn verify(&mut self, run: &Run) {
        let text = self.text.get_string(&self.doc.transact());
        let mut found = Vec::new();
        markers(&text, &mut found);
        found.sort_unstable();
        let mut distinct = 0u64;
        for (i, &(w, seq)) in found.iter().enumerate() {
            let (w, seq) = (w as usize, u64::from(seq));
            let have = match self.own {
                Some(own) if own == w => run.count[w].load(Ordering::Acquire),
                _ => self.next.get(w).map_or(0, |n| n.0),
            };
            if seq >= have {
                self.seen.foreign += 1;
            } else if i > 0 && found[i - 1] == found[i] {
                self.seen.duplicates += 1;
            } else {
                distinct += 1;
            }
        }
        let own = self.own.map_or(0, |w| run.count[w].load(Ordering::Acquire));
        self.seen.foreign += (self.seen.observed + own).saturating_sub(distinct);
    }
}

/// A connected, synced client.
struct Client {
    reader: Reader,
    writer: Writer,
    editor: Editor,
}

/// Where client `i` connects.
fn client_addr(
    base: &WsAddr,
    server: YjsServer,
    target: &Target,
    doc: &str,
    space: Option<&str>,
    i: usize,
) -> WsAddr {
    let path = match server {
        YjsServer::Chorus => {
            let mut path = format!("/yjs/{doc}?token={}", target.token(i));
            if let Some(space) = space {
                path.push_str("&space=");
                path.push_str(space);
            }
            path
        }
        YjsServer::YWebsocket => {
            let prefix = base.path.split('?').next().unwrap_or("");
            format!("{}/{doc}", prefix.trim_end_matches('/'))
        }
        // The document is named in every frame.
        YjsServer::Hocuspocus => base.path.clone(),
    };
    WsAddr {
        addr: base.addr,
        host: base.host.clone(),
        path,
    }
}

/// Connect client `i`, send sync step 1, and wait for the server's step 2.
async fn connect(addr: WsAddr, editor: Editor, run: &Run) -> anyhow::Result<Client> {
    let step = async {
        let (mut reader, mut writer) = wire::connect_ws(&addr, None).await?;
        let mut editor = editor;
        for frame in editor.opening() {
            writer.push(&frame);
        }
        writer.flush().await?;
        while !editor.synced {
            let open = reader
                .read(&mut |frame, _| editor.handle(frame, &mut writer, run))
                .await?;
            if let Some(why) = &editor.refused {
                bail!("{why}");
            }
            for ping in reader.take_pings() {
                writer.pong(&ping);
            }
            writer.flush().await?;
            if !open {
                bail!(
                    "the server closed the connection before syncing ({})",
                    reader.closed.as_deref().unwrap_or("no reason")
                );
            }
        }
        Ok(Client {
            reader,
            writer,
            editor,
        })
    };
    tokio::time::timeout(SYNC_TIMEOUT, step)
        .await
        .map_err(|_| anyhow!("no sync step 2 within {} s", SYNC_TIMEOUT.as_secs()))?
}

/// A writer's place in its schedule: edit `seq` is due at `start + (seq + phase) / rate`.
/// Writers' phases spread evenly over one interval (writer w of W: w / W), as people type
/// independently: in step, every interval would bring a burst of W edits at once.
struct Typing {
    w: usize,
    seq: u64,
    phase: f64,
}

impl Typing {
    fn due(&self, run: &Run) -> Option<Instant> {
        let at = run.start + Duration::from_secs_f64((self.seq as f64 + self.phase) / run.rate);
        (at < run.stop && self.seq < run.capacity()).then_some(at)
    }
}

/// A client's loop: apply what arrives, answer pings, type on schedule if a writer, until
/// `stop`; returns what it saw.
async fn client_loop(
    mut client: Client,
    mut typing: Option<Typing>,
    run: Arc<Run>,
    stop: CancellationToken,
) -> Seen {
    let far = run.stop + Duration::from_secs(3600);
    let keepalive = client.editor.framing.keepalive();
    let mut last_sent = Instant::now();
    loop {
        let due = typing.as_ref().and_then(|t| t.due(&run));
        if typing.is_some() && due.is_none() {
            typing = None;
            run.typing.fetch_sub(1, Ordering::AcqRel);
        }
        let keepalive_at = keepalive.as_ref().map(|_| last_sent + KEEPALIVE);
        let wake = due.into_iter().chain(keepalive_at).min();
        let Client {
            reader,
            writer,
            editor,
        } = &mut client;
        let mut on_frame = |frame: &[u8], _| editor.handle(frame, writer, &run);
        let read = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = reader.read(&mut on_frame) => Some(r),
            _ = tokio::time::sleep_until(wake.unwrap_or(far).into()), if wake.is_some() => None,
        };
        match read {
            Some(Ok(true)) => {}
            Some(Ok(false)) => {
                let why = reader.closed.as_deref().unwrap_or("no reason").to_string();
                editor.seen.trouble(format!("closed by the server: {why}"));
                break;
            }
            Some(Err(e)) => {
                editor.seen.trouble(format!("read failed: {e}"));
                break;
            }
            None => {
                let now = Instant::now();
                while let Some(typing) = typing.as_mut()
                    && let Some(at) = typing.due(&run).filter(|&at| at <= now)
                {
                    let late = now.duration_since(at).as_micros() as u64;
                    editor.seen.late_max_us = editor.seen.late_max_us.max(late);
                    let frame = editor.edit(typing.w, typing.seq);
                    let sent = run.now_us() + 1;
                    run.sent[typing.w][typing.seq as usize].store(sent, Ordering::Release);
                    run.count[typing.w].fetch_add(1, Ordering::AcqRel);
                    writer.push(&frame);
                    typing.seq += 1;
                }
                if let Some(frame) = &keepalive
                    && writer.queued() == 0
                    && keepalive_at.is_some_and(|at| at <= now)
                {
                    writer.push(frame);
                }
            }
        }
        if let Some(why) = editor.refused.take() {
            editor.seen.trouble(why);
        }
        for ping in reader.take_pings() {
            writer.pong(&ping);
        }
        if writer.queued() > 0 {
            if let Err(e) = writer.flush().await {
                editor.seen.trouble(format!("write failed: {e}"));
                break;
            }
            last_sent = Instant::now();
        }
    }
    if typing.is_some() {
        run.typing.fetch_sub(1, Ordering::AcqRel);
    }
    client.writer.close().await;
    // A client that ended early still owes every edit sent until the end of typing.
    stop.cancelled().await;
    let own = client
        .editor
        .own
        .map_or(0, |w| run.count[w].load(Ordering::Acquire));
    client.editor.verify(&run);
    let mut seen = client.editor.seen;
    seen.expected = run.edits() - own;
    seen
}

/// CPU time of process `pid` in nanoseconds: the sum of its threads' time on a CPU
/// (`/proc/<pid>/task/*/schedstat`, Linux). Finer than `usage`'s clock ticks (10 ms), which
/// at a few hundred updates per second would round a step's server CPU to one or two ticks.
/// Threads that ended meanwhile are missed (both servers keep theirs).
fn cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        // A thread that ended since the listing counts as nothing.
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// What one step measured, before it becomes a `Step`.
struct Outcome {
    clients: usize,
    writers: usize,
    connected: usize,
    connect_s: f64,
    seen: Vec<Seen>,
    edits: u64,
    measured_edits: u64,
    window_deliveries: u64,
    window_s: f64,
    usage: super::usage::Usage,
    /// The server's CPU time over the measured phase, in ns (`cpu_ns`).
    server_cpu_ns: Option<u64>,
    errors: BTreeMap<String, u64>,
}

/// Run one step with `n` clients on document `doc`.
async fn step(
    args: &YjsArgs,
    target: &Target,
    base: &WsAddr,
    doc: &str,
    n: usize,
) -> anyhow::Result<Outcome> {
    let writers = args.writers.min(n);
    let warmup = Duration::from_secs_f64(args.common.warmup.max(0.0));
    let duration = Duration::from_secs_f64(args.duration.max(0.0));
    let capacity = (args.rate * (warmup + duration).as_secs_f64()).ceil() as u64 + 2;
    // The schedule is fixed once everyone is connected; until then, placeholders.
    let epoch = Instant::now();
    // Writers' client ids: random, as Yjs clients take them, below 2^53 (JavaScript's integers).
    let mut random = [0u8; 8];
    getrandom::fill(&mut random)?;
    let first_writer_id = (u64::from_le_bytes(random) >> 13) + 1;
    let mut run = Run {
        epoch,
        start: epoch,
        measure_from_us: 0,
        stop: epoch,
        rate: args.rate,
        first_writer_id,
        sent: (0..writers)
            .map(|_| (0..capacity).map(|_| AtomicU64::new(0)).collect())
            .collect(),
        count: (0..writers).map(|_| AtomicU64::new(0)).collect(),
        typing: AtomicUsize::new(writers),
    };
    let space = args.common.space.as_deref();
    // Hocuspocus clients all present the one token (`--token`, or none).
    let framing = Framing::new(args.yjs_server, doc, &target.token(0))?;
    let editor = |i: usize| {
        let own = (i < writers).then_some(i);
        Editor::new(own, writers, first_writer_id, framing.clone())
    };
    // Client 0 first: it creates the document (and, on Chorus, maybe the home space).
    let connect_started = Instant::now();
    let mut errors = BTreeMap::new();
    let first = connect(
        client_addr(base, args.yjs_server, target, doc, space, 0),
        editor(0),
        &run,
    )
    .await;
    let mut clients = match first {
        Ok(client) => vec![(0, client)],
        Err(e) => {
            *errors.entry(format!("connect: {e:#}")).or_insert(0) += 1;
            Vec::new()
        }
    };
    if !clients.is_empty() {
        let (rest, failed) = target
            .connect_many(1..n, &format!("{n} clients"), |i| {
                let addr = client_addr(base, args.yjs_server, target, doc, space, i);
                let editor = editor(i);
                let run = &run;
                async move { Ok((i, connect(addr, editor, run).await?)) }
            })
            .await;
        clients.extend(rest);
        for (why, count) in failed {
            *errors.entry(format!("connect: {why}")).or_insert(0) += count;
        }
    }
    let connect_s = connect_started.elapsed().as_secs_f64();
    let connected = clients.len();
    if connected < n {
        for (_, client) in clients {
            client.writer.close().await;
        }
        return Ok(Outcome {
            clients: n,
            writers,
            connected,
            connect_s,
            seen: Vec::new(),
            edits: 0,
            measured_edits: 0,
            window_deliveries: 0,
            window_s: 0.0,
            usage: Sampler::start(target.server_pid).finish(),
            server_cpu_ns: None,
            errors,
        });
    }

    // The schedule.
    run.start = Instant::now() + LEAD;
    run.measure_from_us = (run.start + warmup).duration_since(epoch).as_micros() as u64;
    run.stop = run.start + warmup + duration;
    let run = Arc::new(run);
    let stop = CancellationToken::new();
    let mut progress = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    clients.sort_by_key(|(i, _)| *i);
    for (i, client) in clients {
        progress.push(client.editor.progress.clone());
        let typing = (i < writers).then_some(Typing {
            w: i,
            seq: 0,
            phase: i as f64 / writers as f64,
        });
        tasks.push(tokio::spawn(client_loop(
            client,
            typing,
            run.clone(),
            stop.clone(),
        )));
    }
    let observed = || {
        progress
            .iter()
            .map(|p| p.load(Ordering::Acquire))
            .sum::<u64>()
    };

    let ui = &target.ui;
    let total_ms = (warmup + duration).as_millis() as u64;
    let bar = ui.bar(total_ms / 100, &format!("{n} clients typing"));
    let tick = |bar: &indicatif::ProgressBar| {
        bar.set_position(run.start.elapsed().as_millis() as u64 / 100);
    };
    tokio::time::sleep_until((run.start + warmup).into()).await;
    tick(&bar);
    let before = observed();
    let sampler = Sampler::start(target.server_pid);
    let cpu_before = target.server_pid.and_then(cpu_ns);
    let window_started = Instant::now();
    while Instant::now() < run.stop {
        let next = (Instant::now() + Duration::from_millis(100)).min(run.stop);
        tokio::time::sleep_until(next.into()).await;
        tick(&bar);
    }
    let usage = sampler.finish();
    let server_cpu_ns = cpu_before
        .zip(target.server_pid.and_then(cpu_ns))
        .map(|(a, b)| b.saturating_sub(a));
    let window_s = window_started.elapsed().as_secs_f64();
    let window_deliveries = observed() - before;
    bar.finish_and_clear();

    // Writers finish their last edit (they may be behind), then the readers get the last
    // edits: until everyone has everything, or no progress for --drain-ms.
    let drain = Duration::from_millis(args.drain_ms);
    let writers_done = run.stop + drain + Duration::from_secs(5);
    while run.typing.load(Ordering::Acquire) > 0 && Instant::now() < writers_done {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if run.typing.load(Ordering::Acquire) > 0 {
        *errors
            .entry("writers still typing long after the end".into())
            .or_insert(0) += 1;
    }
    let edits = run.edits();
    let expected = edits * (n as u64 - 1);
    let bar = ui.bar(expected, "last edits");
    let mut last = observed();
    let mut last_progress = Instant::now();
    loop {
        let now = observed();
        bar.set_position(now);
        if now >= expected || last_progress.elapsed() >= drain {
            break;
        }
        if now != last {
            last = now;
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bar.finish_and_clear();
    stop.cancel();
    let mut seen = Vec::with_capacity(n);
    for task in tasks {
        match task.await {
            Ok(s) => seen.push(s),
            Err(e) => *errors.entry(format!("client task: {e}")).or_insert(0) += 1,
        }
    }
    let measured_edits = run
        .sent
        .iter()
        .flat_map(|s| s.iter())
        .filter(|t| {
            let t = t.load(Ordering::Acquire);
            t > run.measure_from_us
        })
        .count() as u64;
    Ok(Outcome {
        clients: n,
        writers,
        connected,
        connect_s,
        seen,
        edits,
        measured_edits,
        window_deliveries,
        window_s,
        usage,
        server_cpu_ns,
        errors,
    })
}

/// Per-step figures that go into the summary as well.
struct Figures {
    fastest_p99_us: Option<u64>,
    slowest_p99_us: Option<u64>,
    cpu_us_per_update: Option<f64>,
}

impl Outcome {
    fn step(&self, threads: usize) -> (Step, Figures) {
        let mut total = histogram();
        let mut scratch = histogram();
        let mut reader_p99 = Vec::new();
        let mut counters = BTreeMap::new();
        let mut errors = self.errors.clone();
        let (mut observed, mut duplicates, mut foreign, mut frames, mut late) = (0, 0, 0, 0, 0);
        let mut short_clients = 0u64;
        for s in &self.seen {
            scratch.reset();
            for &us in &s.latencies {
                scratch.saturating_record(u64::from(us));
            }
            if !scratch.is_empty() {
                reader_p99.push(scratch.value_at_quantile(0.99));
                total.add(&scratch).expect("histograms of one shape");
            }
            observed += s.observed;
            duplicates += s.duplicates;
            foreign += s.foreign;
            frames += s.update_frames;
            late = late.max(s.late_max_us);
            for (why, count) in &s.trouble {
                *errors.entry(why.clone()).or_insert(0) += count;
            }
        }
        let readers = self.clients.saturating_sub(1) as u64;
        let expected = self.edits * readers;
        // Clients that missed at least one edit of the others.
        for s in &self.seen {
            short_clients += u64::from(s.observed < s.expected);
        }
        let lost = expected.saturating_sub(observed);
        let fastest = reader_p99.iter().min().copied();
        let slowest = reader_p99.iter().max().copied();
        let server_cpu_us = self
            .server_cpu_ns
            .map(|ns| ns as f64 / 1e3)
            .or_else(|| self.usage.server.as_ref().map(|s| s.cpu_s * 1e6));
        let cpu_us_per_update = server_cpu_us
            .filter(|_| self.window_deliveries > 0)
            .map(|us| us / self.window_deliveries as f64);
        for (name, v) in [
            ("clients", self.clients as u64),
            ("connected", self.connected as u64),
            ("writers", self.writers as u64),
            ("connect_ms", (self.connect_s * 1000.0).round() as u64),
            ("edits", self.edits),
            ("measured_edits", self.measured_edits),
            ("expected", expected),
            ("observed", observed),
            ("lost", lost),
            ("clients_missing_edits", short_clients),
            ("duplicates", duplicates),
            ("foreign", foreign),
            ("update_frames", frames),
            ("writer_late_max_us", late),
        ] {
            counters.insert(name.to_string(), v);
        }
        if let Some(us) = fastest {
            counters.insert("fastest_reader_p99_us".into(), us);
        }
        if let Some(us) = slowest {
            counters.insert("slowest_reader_p99_us".into(), us);
        }
        if let Some(us) = server_cpu_us {
            counters.insert("server_cpu_us".into(), us.round() as u64);
        }
        if let Some(us) = cpu_us_per_update {
            counters.insert("server_cpu_us_per_update".into(), us.round() as u64);
        }
        if let Some(server) = &self.usage.server {
            counters.insert("server_rss_kib".into(), server.rss_end_kib);
        }
        let mut failures = Vec::new();
        if self.connected < self.clients {
            failures.push(format!(
                "{} of {} clients connected",
                self.connected, self.clients
            ));
        }
        if lost > 0 {
            failures.push(format!("{lost} edits not observed"));
        }
        if duplicates > 0 {
            failures.push(format!("{duplicates} edits twice in a final text"));
        }
        if foreign > 0 {
            failures.push(format!(
                "{foreign} markers in final texts that are not the edits observed"
            ));
        }
        if !errors.is_empty() && failures.is_empty() {
            failures.push(format!("{} errors", errors.values().sum::<u64>()));
        }
        let throughput = self.window_deliveries as f64 / self.window_s.max(1e-9);
        let step = Step {
            label: format!("{} clients", self.clients),
            unit: "updates/s".into(),
            throughput,
            counters,
            errors,
            latency: Latency::of(&total),
            limit: self.usage.limit(threads),
            usage: self.usage.clone(),
            pass: failures.is_empty(),
            failure: (!failures.is_empty()).then(|| failures.join(", ")),
        };
        (
            step,
            Figures {
                fastest_p99_us: fastest,
                slowest_p99_us: slowest,
                cpu_us_per_update,
            },
        )
    }
}

/// Where the clients connect: `--url`'s address (and, for y-websocket, its path).
async fn resolve(args: &YjsArgs) -> anyhow::Result<(Target, WsAddr)> {
    if args.common.target != TargetKind::Chorus {
        bail!("the yjs scenario speaks y-websocket: pick the server with --yjs-server");
    }
    if args.common.quic.is_some() {
        bail!("y-websocket runs over WebSocket only (no --quic)");
    }
    let mut common = args.common.clone();
    match args.yjs_server {
        YjsServer::Chorus => {}
        // The reference server takes no token.
        YjsServer::YWebsocket => common.token = Some(String::new()),
        // Hocuspocus wants one in its handshake; without an authentication hook, any will do.
        YjsServer::Hocuspocus => {
            common.token.get_or_insert_default();
        }
    }
    let most = args.clients.iter().copied().max().unwrap_or(0);
    let target = Target::new(&common, most, Some(1)).await?;
    let base = match &target.transport {
        Transport::Ws(ws) => ws.clone(),
        Transport::Quic(_) => bail!("y-websocket runs over WebSocket only (no --quic)"),
    };
    Ok((target, base))
}

/// Run the yjs scenario; the caller prints the report.
pub async fn run(args: &YjsArgs) -> anyhow::Result<Report> {
    if args.clients.is_empty() || args.clients.contains(&0) || args.clients.contains(&1) {
        bail!("--clients: every step needs at least 2 clients (one writes, the others read)");
    }
    if args.writers == 0 {
        bail!("--writers must be positive");
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a positive number of edits per second");
    }
    let most = args.clients.iter().copied().max().unwrap_or(0);
    args.common.ensure_open_files(most)?;
    let (target, base) = resolve(args).await?;
    let prefix = match &args.doc {
        Some(doc) => doc.clone(),
        None => {
            let mut random = [0u8; 6];
            getrandom::fill(&mut random)?;
            format!("bench-{}", hex::encode(random))
        }
    };
    // Every step's document name must fit the framing, checked before the first connects.
    for n in &args.clients {
        Framing::new(args.yjs_server, &format!("{prefix}-{n}"), "").context("--doc")?;
    }
    let threads = args.common.threads;
    let mut notes = Vec::new();
    let mut steps = Vec::new();
    let mut figures = Vec::new();
    for &n in &args.clients {
        let doc = format!("{prefix}-{n}");
        let outcome = step(args, &target, &base, &doc, n).await?;
        let stop = outcome.connected < n;
        let (s, f) = outcome.step(threads);
        if stop {
            target.ui.note(
                &mut notes,
                format!(
                    "{n} clients: only {} connected; later steps skipped",
                    outcome.connected
                ),
            );
        }
        steps.push(s);
        figures.push(f);
        if stop {
            break;
        }
    }
    let goal_us = (args.goal_ms * 1000.0).round() as u64;
    let mut lines = Vec::new();
    let mut rows = Vec::new();
    for (s, f) in steps.iter().zip(&figures) {
        let ms = |us: Option<u64>| us.map_or("-".into(), |us| format!("{:.2}", us as f64 / 1e3));
        let goal = f.fastest_p99_us.map(|us| us <= goal_us);
        let server = s.usage.server.as_ref();
        lines.push(format!(
            "{}: {} {}: fastest reader p99 {} ms ({}), slowest reader p99 {} ms; {} updates/s; \
             server {} us CPU per update, RSS {}; tool CPU {:.0}%",
            s.label,
            if s.pass { "PASS" } else { "FAIL" },
            s.failure.as_deref().unwrap_or("nothing lost"),
            ms(f.fastest_p99_us),
            match goal {
                Some(true) => format!("goal <= {} ms met", args.goal_ms),
                Some(false) => format!("goal <= {} ms missed", args.goal_ms),
                None => "no readings".into(),
            },
            ms(f.slowest_p99_us),
            thousands(s.throughput),
            f.cpu_us_per_update
                .map_or("-".into(), |us| format!("{us:.0}")),
            server.map_or("-".into(), |u| format!(
                "{:.1} MiB",
                u.rss_end_kib as f64 / 1024.0
            )),
            s.usage.tool_cpu_pct,
        ));
        rows.push(json!({
            "step": s.label,
            "clients": s.counter("clients"),
            "pass": s.pass,
            "updates_per_s": s.throughput,
            "lost": s.counter("lost"),
            "p50_us": s.latency.as_ref().map(|l| l.p50_us),
            "p99_us": s.latency.as_ref().map(|l| l.p99_us),
            "fastest_reader_p99_us": f.fastest_p99_us,
            "slowest_reader_p99_us": f.slowest_p99_us,
            "goal_met": goal,
            "server_cpu_us_per_update": f.cpu_us_per_update,
            "server_rss_kib": server.map(|u| u.rss_end_kib),
            // Of one core, from the finer CPU time when there is one.
            "server_cpu_pct": s
                .counters
                .get("server_cpu_us")
                .map(|&us| us as f64 / 1e4 / s.usage.wall_s.max(1e-9))
                .or(server.map(|u| u.cpu_pct)),
            "tool_cpu_pct": s.usage.tool_cpu_pct,
        }));
    }
    if target.server_pid.is_none() {
        lines.push("server CPU and RSS: unknown (pass --server-pid)".into());
    }
    let server_name = args.yjs_server.name();
    Ok(Report {
        scenario: "yjs".into(),
        target: format!(
            "{server_name} ws://{}{}",
            base.host,
            match args.yjs_server {
                YjsServer::Chorus => format!("/yjs/{prefix}-<N>"),
                YjsServer::Hocuspocus => format!("{} (documents {prefix}-<N>)", base.path),
                YjsServer::YWebsocket =>
                    client_addr(
                        &base,
                        args.yjs_server,
                        &target,
                        &format!("{prefix}-<N>"),
                        None,
                        0
                    )
                    .path,
            }
        ),
        encoding: match args.yjs_server {
            YjsServer::Chorus | YjsServer::YWebsocket => "y-websocket (lib0 v1)",
            YjsServer::Hocuspocus => "Hocuspocus provider protocol (lib0 v1)",
        }
        .into(),
        params: json!({
            "server": server_name,
            "clients": args.clients,
            "writers": args.writers,
            "rate_per_writer": args.rate,
            "duration_s": args.duration,
            "warmup_s": args.common.warmup,
            "drain_ms": args.drain_ms,
            "doc": format!("{prefix}-<N>"),
            "threads": threads,
        }),
        summary: json!({
            "pass": steps.iter().all(|s| s.pass),
            "goal_ms": args.goal_ms,
            "steps": rows,
        }),
        steps,
        summary_lines: lines,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_found_in_any_chunk() {
        let mut out = Vec::new();
        markers("w0:1 w12:345 ", &mut out);
        markers("w3:7 junk w:1 wx:2 w4: ", &mut out);
        assert_eq!(out, vec![(0, 1), (12, 345), (3, 7)]);
    }

    #[test]
    fn marker_lengths() {
        for (w, seq) in [(0, 0), (9, 9), (10, 10), (3, 12345), (123, 1_000_000)] {
            assert_eq!(marker_len(w, seq) as usize, marker(w, seq).len());
        }
    }

    const FIRST: u64 = 1000;

    fn run(writers: usize, capacity: u64) -> Run {
        let epoch = Instant::now();
        Run {
            epoch,
            start: epoch,
            measure_from_us: 0,
            stop: epoch + Duration::from_secs(60),
            rate: 10.0,
            first_writer_id: FIRST,
            sent: (0..writers)
                .map(|_| (0..capacity).map(|_| AtomicU64::new(0)).collect())
                .collect(),
            count: (0..writers).map(|_| AtomicU64::new(0)).collect(),
            typing: AtomicUsize::new(writers),
        }
    }

    fn update_of(framing: &Framing, frame: &[u8]) -> Vec<u8> {
        match framing.open(frame) {
            Inbound::Yjs(Message::Sync(SyncMessage::Update(update))) => update,
            other => panic!("not an update frame: {other:?}"),
        }
    }

    fn hocuspocus() -> Framing {
        Framing::new(YjsServer::Hocuspocus, "doc-1", "tok").unwrap()
    }

    /// Edits count once each, when integrated: repeats change nothing, an edit that arrives
    /// before the one it follows waits, and a writer's own edits are not observations. The
    /// same with either framing.
    #[test]
    fn readers_observe_each_edit_once_when_integrated() {
        readers_observe(Framing::Plain);
        readers_observe(hocuspocus());
    }

    fn readers_observe(framing: Framing) {
        let run = run(2, 8);
        let editor = |own| Editor::new(own, 2, FIRST, framing.clone());
        let mut writers = [editor(Some(0)), editor(Some(1))];
        let mut frames = [Vec::new(), Vec::new()];
        for (w, editor) in writers.iter_mut().enumerate() {
            for seq in 0..3u64 {
                frames[w].push(update_of(&framing, &editor.edit(w, seq)));
                run.sent[w][seq as usize].store(1, Ordering::Release);
                run.count[w].fetch_add(1, Ordering::AcqRel);
            }
        }
        let mut reader = editor(None);
        for update in frames[0].iter().chain(&frames[0]) {
            reader.apply(update, &run);
        }
        assert_eq!(reader.seen.observed, 3);
        // Writer 1's edits backwards: nothing is integrated until the first arrives.
        reader.apply(&frames[1][2], &run);
        reader.apply(&frames[1][1], &run);
        assert_eq!(reader.seen.observed, 3);
        reader.apply(&frames[1][0], &run);
        assert_eq!(reader.seen.observed, 6);
        assert_eq!(reader.seen.latencies.len(), 6);
        assert_eq!(reader.progress.load(Ordering::Acquire), 6);
        assert_eq!(reader.seen.update_frames, 9);
        for update in &frames[1] {
            writers[0].apply(update, &run);
        }
        assert_eq!(writers[0].seen.observed, 3, "only the other writer's edits");
        // The final texts hold every edit once.
        for editor in writers.iter_mut().chain([&mut reader]) {
            editor.verify(&run);
            assert_eq!((editor.seen.duplicates, editor.seen.foreign), (0, 0));
        }
        // A late joiner gets every edit in one update (its sync step 2): all observed at once.
        let state = reader
            .doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let mut late = editor(None);
        late.apply(&state, &run);
        assert_eq!((late.seen.observed, late.seen.update_frames), (6, 1));
        // A marker no writer sent is noticed.
        let mut odd = editor(None);
        {
            let mut txn = odd.doc.transact_mut();
            odd.text.insert(&mut txn, 0, "w0:7 ");
        }
        odd.verify(&run);
        assert_eq!(odd.seen.foreign, 1);
    }

    /// The framings turn server frames into what a client does: the y-websocket "permission
    /// denied", Hocuspocus's handshake (token first, token again on request, denial, close),
    /// its pings, and a refused update.
    #[test]
    fn framings_map_server_frames() {
        let plain = Framing::Plain;
        let denied = Message::Auth(Some("no access".into())).encode_v1();
        assert_eq!(
            plain.open(&denied),
            Inbound::Refused("permission denied: no access".into())
        );
        assert!(matches!(plain.open(&[9, 9]), Inbound::Trouble(_)));
        assert_eq!(plain.keepalive(), None);
        assert_eq!(
            plain.opening(StateVector::default()),
            vec![vec![0, 0, 1, 0]]
        );

        let h = hocuspocus();
        let Framing::Hocuspocus(envelope) = &h else {
            unreachable!()
        };
        let opening = h.opening(StateVector::default());
        assert_eq!(opening, vec![envelope.auth(), envelope.wrap(&[0, 0, 1, 0])]);
        assert_eq!(opening[1], b"\x05doc-1\x00\x00\x01\x00");
        assert_eq!(h.keepalive(), Some(envelope.keepalive()));
        let frame = |body: &[u8]| [b"\x05doc-1".as_slice(), body].concat();
        assert_eq!(
            h.open(&frame(b"\x02\x00")),
            Inbound::Answer(envelope.auth())
        );
        assert_eq!(h.open(b"\x09"), Inbound::Answer(vec![10]));
        assert_eq!(
            h.open(&frame(b"\x02\x01\x09forbidden")),
            Inbound::Refused("permission denied: forbidden".into())
        );
        assert_eq!(
            h.open(&frame(b"\x07\x03bye")),
            Inbound::Refused("document closed by the server: bye".into())
        );
        assert!(matches!(h.open(&frame(b"\x08\x00")), Inbound::Trouble(_)));
        assert_eq!(h.open(&frame(b"\x08\x01")), Inbound::Nothing);
        assert_eq!(h.open(&frame(b"\x02\x02\x0aread-write")), Inbound::Nothing);
        // A plain y-websocket frame is not a Hocuspocus one, and the other way round.
        assert!(matches!(h.open(&denied), Inbound::Trouble(_)));
        assert!(matches!(plain.open(&opening[1]), Inbound::Trouble(_)));
    }
}
