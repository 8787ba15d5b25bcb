//! Co-edited documents: Yjs documents on `yrs`, each owned by one task while it is open.
//!
//! **One copy per document.** `Docs` keeps a registry of live documents by id. The first
//! connection to open a cold document spawns its task, which loads the document from the
//! store (snapshot and updates after it); everyone else who opens it meanwhile queues behind
//! that load on the same task, so a reconnect storm after a restart loads each document once.
//! A task whose document nobody has had open for `doc_idle_ms`, with everything saved, leaves
//! the registry and ends; a join racing with that sees its join dropped and retries on a new
//! task.
//!
//! **Saving.** Every update the document accepts is appended to the store; while one append is
//! in flight the next ones wait, merged into one. An update counts as saved once the store
//! commit holding it has returned (normally a few milliseconds after it was relayed to the
//! others); clients still hold it until then, and send it again when they next sync. After
//! `doc_compact_updates` appends, the document is compacted: its state becomes the new
//! snapshot and the updates it holds are dropped, in one transaction. On shutdown a task saves
//! what is pending before it ends.

pub mod http;
pub mod open;
pub mod session;
pub mod sync;
pub mod ws;

use crate::hub::{CloseReason, Outbox};
use crate::metrics::Metrics;
use crate::protocol::{DocData, ErrorCode, ServerFrame, encode_server};
use crate::store::{DocContent, DocStore, StoreError};
use bytes::Bytes;
use dashmap::DashMap;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use sync::{DocCore, Effect, Limits, SyncError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Commands queued for one document's task. Bounded: a connection whose frames outrun its
/// document waits (its socket stops being read), and only it.
const QUEUE: usize = 256;
/// Accepted updates waiting for the store, in bytes, before the task stops taking frames.
const PENDING_LIMIT: usize = 8 << 20;
/// How often awareness expiry and eviction are checked.
const TICK: Duration = Duration::from_secs(1);
/// How long a connection may hear nothing before it gets a keepalive frame.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How long a failed store write waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// What `Docs` needs of the server's configuration.
#[derive(Debug, Clone, Copy)]
pub struct DocConfig {
    pub limits: Limits,
    pub compact_updates: usize,
    pub idle: Duration,
}

enum Command {
    /// `accepted` answers once the document is loaded (or could not be); dropping it unanswered
    /// means the task is ending: join again.
    Join {
        conn: u64,
        peer: Peer,
        read_only: bool,
        accepted: oneshot::Sender<Result<(), String>>,
    },
    Frame {
        conn: u64,
        frame: Bytes,
    },
    Leave {
        conn: u64,
    },
    /// The document was deleted: close its connections, save nothing more, end.
    Deleted,
    /// The whole document, as one update.
    State(oneshot::Sender<Vec<u8>>),
}

/// How a connection takes its document's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// `/yjs/`: each y-websocket message is a WebSocket message; a refusal closes it.
    YWebsocket,
    /// The session protocol: `doc` frames in the connection's encoding; a refusal ends only
    /// this document (`doc.closed`).
    Session,
}

/// A connection on a document: where its frames go, and how.
struct Peer {
    outbox: Arc<Outbox>,
    wire: Wire,
}

/// The open documents, shared by every connection.
#[derive(Clone)]
pub struct Docs {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn DocStore>,
    metrics: Arc<Metrics>,
    live: DashMap<String, mpsc::Sender<Command>>,
    config: DocConfig,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// A connection's membership of one open document.
pub struct Joined {
    commands: mpsc::Sender<Command>,
    conn: u64,
}

impl Joined {
    /// Hand one frame to the document; waits for room in its queue. False once the document
    /// task is gone (shutdown).
    pub async fn frame(&self, frame: Bytes) -> bool {
        let conn = self.conn;
        self.commands
            .send(Command::Frame { conn, frame })
            .await
            .is_ok()
    }

    /// The connection closed.
    pub async fn leave(self) {
        let _ = self.commands.send(Command::Leave { conn: self.conn }).await;
    }
}

impl Docs {
    pub fn new(
        store: Arc<dyn DocStore>,
        metrics: Arc<Metrics>,
        config: DocConfig,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Docs {
        Docs {
            inner: Arc::new(Inner {
                store,
                metrics,
                live: DashMap::new(),
                config,
                shutdown,
                tasks,
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn DocStore> {
        &self.inner.store
    }

    /// Join connection `conn` to document `id` (which must exist in the store); frames for it
    /// go to `outbox`. Fails if the document cannot be loaded.
    pub async fn join(
        &self,
        id: &str,
        conn: u64,
        outbox: Arc<Outbox>,
        wire: Wire,
        read_only: bool,
    ) -> Result<Joined, String> {
        loop {
            let commands = self.task(id);
            let (accepted, answer) = oneshot::channel();
            let join = Command::Join {
                conn,
                peer: Peer {
                    outbox: outbox.clone(),
                    wire,
                },
                read_only,
                accepted,
            };
            if commands.send(join).await.is_ok()
                && let Ok(result) = answer.await
            {
                return result.map(|()| Joined { commands, conn });
            }
            if self.inner.shutdown.is_cancelled() {
                return Err("the server is shutting down".into());
            }
            // The task was ending: forget it (if nobody did yet) and join a new one.
            self.inner
                .live
                .remove_if(id, |_, live| live.same_channel(&commands));
        }
    }

    /// Document `id` was deleted from the store: close its connections and forget it.
    pub async fn deleted(&self, id: &str) {
        if let Some((_, commands)) = self.inner.live.remove(id) {
            let _ = commands.send(Command::Deleted).await;
        }
    }

    /// Document `id` as one update: from its task if it is open (with what is not saved yet),
    /// else from the store.
    pub async fn state(&self, id: &str) -> Result<Vec<u8>, String> {
        let live = self.inner.live.get(id).map(|c| c.clone());
        if let Some(commands) = live {
            let (reply, state) = oneshot::channel();
            if commands.send(Command::State(reply)).await.is_ok()
                && let Ok(state) = state.await
            {
                return Ok(state);
            }
        }
        let content = self
            .inner
            .store
            .load_doc(id)
            .await
            .map_err(|e| format!("cannot load the document: {e}"))?;
        let core = DocCore::load(
            self.inner.config.limits,
            content.snapshot.as_deref(),
            &content.updates,
        )
        .map_err(|e| format!("the stored document is damaged: {e}"))?;
        Ok(core.state())
    }

    /// The live task of `id`, spawned (and loading) if there is none.
    fn task(&self, id: &str) -> mpsc::Sender<Command> {
        self.inner
            .live
            .entry(id.to_string())
            .or_insert_with(|| {
                let (commands, queue) = mpsc::channel(QUEUE);
                let task = DocTask::new(self.inner.clone(), id.to_string(), commands.downgrade());
                let span = tracing::debug_span!("doc", id);
                self.inner.tasks.spawn(task.run(queue).instrument(span));
                commands
            })
            .clone()
    }
}

/// A store write of the task in flight.
type Write = Pin<Box<dyn Future<Output = Result<Written, Unwritten>> + Send>>;

/// A failed store write, with the update it was to append (to try again).
struct Unwritten {
    error: StoreError,
    update: Option<Vec<u8>>,
}

enum Written {
    Appended { seq: i64, merged: usize },
    Compacted { upto: i64 },
}

struct DocTask {
    inner: Arc<Inner>,
    id: String,
    /// Its own queue, to leave the registry only if it is still the one there.
    me: mpsc::WeakSender<Command>,
    peers: HashMap<u64, Peer>,
    /// Accepted updates not yet handed to the store, and their size.
    pending: Vec<Vec<u8>>,
    pending_bytes: usize,
    /// The last update's sequence number in the store, and how many are logged after the
    /// snapshot.
    last_seq: i64,
    logged: usize,
    last_sent: Instant,
}

impl DocTask {
    fn new(inner: Arc<Inner>, id: String, me: mpsc::WeakSender<Command>) -> DocTask {
        DocTask {
            inner,
            id,
            me,
            peers: HashMap::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            last_seq: 0,
            logged: 0,
            last_sent: Instant::now(),
        }
    }

    async fn load(&mut self) -> Result<DocCore, String> {
        self.inner.metrics.docs.loads.inc();
        let content: DocContent = self
            .inner
            .store
            .load_doc(&self.id)
            .await
            .map_err(|e| format!("cannot load the document: {e}"))?;
        self.last_seq = content.last_seq;
        self.logged = content.updates.len();
        DocCore::load(
            self.inner.config.limits,
            content.snapshot.as_deref(),
            &content.updates,
        )
        .map_err(|e| format!("the stored document is damaged: {e}"))
    }

    async fn run(mut self, mut queue: mpsc::Receiver<Command>) {
        let mut core = match self.load().await {
            Ok(core) => core,
            Err(e) => {
                tracing::error!(error = %e, "document unavailable");
                self.leave_registry();
                queue.close();
                while let Some(command) = queue.recv().await {
                    if let Command::Join { accepted, .. } = command {
                        let _ = accepted.send(Err(e.clone()));
                    }
                }
                return;
            }
        };
        tracing::debug!(bytes = core.bytes(), "document loaded");
        let metrics = self.inner.metrics.docs.clone();
        metrics.open.inc();
        let mut writing: Option<Write> = None;
        let mut tick = tokio::time::interval(TICK);
        let mut idle_since = Some(Instant::now());
        let mut retry_at: Option<Instant> = None;
        loop {
            if writing.is_none() && retry_at.is_none_or(|at| at <= Instant::now()) {
                retry_at = None;
                writing = self.next_write(&mut core);
            }
            let shutting = self.inner.shutdown.is_cancelled();
            if shutting && writing.is_none() && self.pending.is_empty() {
                break;
            }
            let room = self.pending_bytes < PENDING_LIMIT;
            tokio::select! {
                command = queue.recv(), if room => match command {
                    Some(Command::Deleted) => {
                        let conns: Vec<u64> = self.peers.keys().copied().collect();
                        for conn in conns {
                            self.refuse(conn, ErrorCode::NotFound, "the document was deleted");
                        }
                        break;
                    }
                    Some(command) => self.handle(&mut core, command),
                    None => break,
                },
                written = async { writing.as_mut().expect("guarded").await }, if writing.is_some() => {
                    writing = None;
                    match written {
                        Ok(Written::Appended { seq, merged }) => {
                            metrics.appends.inc();
                            self.last_seq = seq;
                            self.logged += 1;
                            tracing::trace!(seq, merged, "updates saved");
                        }
                        Ok(Written::Compacted { upto }) => {
                            metrics.compactions.inc();
                            self.logged = 0;
                            tracing::debug!(upto, bytes = core.bytes(), "document compacted");
                        }
                        Err(Unwritten { error, update }) => {
                            tracing::error!(%error, "cannot save the document; retrying");
                            if let Some(update) = update {
                                self.pending_bytes += update.len();
                                self.pending.push(update);
                            }
                            retry_at = Some(Instant::now() + RETRY);
                        }
                    }
                }
                _ = tick.tick() => {
                    core.tick(now_ms());
                    if self.last_sent.elapsed() >= KEEPALIVE {
                        self.send_all(DocCore::keepalive());
                    }
                    let saved = writing.is_none() && self.pending.is_empty();
                    if core.connections() > 0 || !saved {
                        idle_since = None;
                    } else if idle_since.get_or_insert_with(Instant::now).elapsed() >= self.inner.config.idle
                        && self.evict(&mut queue)
                    {
                        break;
                    }
                }
                _ = self.inner.shutdown.cancelled(), if !shutting => {}
            }
            self.execute(&mut core);
        }
        metrics.open.dec();
        metrics.connections.dec_by(self.peers.len() as i64);
        tracing::debug!("document closed");
    }

    fn handle(&mut self, core: &mut DocCore, command: Command) {
        match command {
            Command::Join {
                conn,
                peer,
                read_only,
                accepted,
            } => {
                if accepted.send(Ok(())).is_ok() {
                    core.join(conn, read_only);
                    if self.peers.insert(conn, peer).is_none() {
                        self.inner.metrics.docs.connections.inc();
                    }
                }
            }
            Command::Frame { conn, frame } => {
                if let Err(e) = core.receive(conn, &frame, now_ms()) {
                    tracing::debug!(conn, error = %e, "closing a document connection");
                    let code = match e {
                        SyncError::DocTooLarge(_) => ErrorCode::FrameTooLarge,
                        _ => ErrorCode::InvalidRequest,
                    };
                    self.refuse(conn, code, &e.to_string());
                    core.leave(conn);
                }
            }
            Command::Leave { conn } => {
                if self.peers.remove(&conn).is_some() {
                    self.inner.metrics.docs.connections.dec();
                }
                core.leave(conn);
            }
            Command::State(reply) => {
                let _ = reply.send(core.state());
            }
            Command::Deleted => unreachable!("handled by the loop"),
        }
    }

    /// End connection `conn`'s use of the document: a `/yjs/` connection closes with `code`,
    /// a session gets `doc.closed` and goes on.
    fn refuse(&mut self, conn: u64, code: ErrorCode, message: &str) {
        let Some(peer) = self.peers.remove(&conn) else {
            return;
        };
        self.inner.metrics.docs.connections.dec();
        match peer.wire {
            Wire::YWebsocket => {
                peer.outbox
                    .close(CloseReason::graceful(code, message, false));
            }
            Wire::Session => {
                let frame = ServerFrame::DocClosed {
                    doc: self.id.clone(),
                    code,
                    message: message.to_string(),
                };
                let frame = encode_server(&frame, peer.outbox.encoding());
                let _ = peer.outbox.push(frame, Instant::now());
            }
        }
    }

    /// Execute the core's effects: frames into outboxes, updates to save.
    fn execute(&mut self, core: &mut DocCore) {
        let now = Instant::now();
        while let Some(effect) = core.poll_effect() {
            match effect {
                Effect::Send(conn, frame) => {
                    if let Some(peer) = self.peers.get(&conn) {
                        let frame = Framed::new(&self.id, frame).get(peer);
                        let _ = peer.outbox.push(frame, now);
                    }
                }
                Effect::Broadcast { except, frame } => {
                    self.last_sent = Instant::now();
                    let mut framed = Framed::new(&self.id, frame);
                    for (conn, peer) in &self.peers {
                        if Some(*conn) != except {
                            // A full outbox closes its connection as a slow consumer.
                            let _ = peer.outbox.push(framed.get(peer), now);
                        }
                    }
                }
                Effect::Persist(update) => {
                    self.inner.metrics.docs.updates.inc();
                    self.pending_bytes += update.len();
                    self.pending.push(update);
                }
            }
        }
    }

    /// A frame to every `/yjs/` connection (sessions have their own heartbeats).
    fn send_all(&mut self, frame: Bytes) {
        self.last_sent = Instant::now();
        let now = Instant::now();
        for peer in self.peers.values() {
            if peer.wire == Wire::YWebsocket {
                let _ = peer.outbox.push(frame.clone(), now);
            }
        }
    }

    /// The next store write: the pending updates merged into one, else a compaction if due.
    fn next_write(&mut self, core: &mut DocCore) -> Option<Write> {
        let store = self.inner.store.clone();
        let id = self.id.clone();
        if !self.pending.is_empty() {
            let updates = std::mem::take(&mut self.pending);
            self.pending_bytes = 0;
            let merged = updates.len();
            let update = if merged == 1 {
                updates.into_iter().next().expect("one update")
            } else {
                match yrs::merge_updates_v1(&updates) {
                    Ok(update) => update,
                    Err(e) => {
                        // Each was accepted by the document: save them one by one.
                        tracing::warn!(error = %e, "cannot merge updates");
                        let first = updates[0].clone();
                        self.pending_bytes = updates[1..].iter().map(Vec::len).sum();
                        self.pending = updates[1..].to_vec();
                        first
                    }
                }
            };
            return Some(Box::pin(async move {
                match store.append_doc_update(&id, update.clone()).await {
                    Ok(seq) => Ok(Written::Appended { seq, merged }),
                    Err(error) => Err(Unwritten {
                        error,
                        update: Some(update),
                    }),
                }
            }));
        }
        if self.logged >= self.inner.config.compact_updates {
            let snapshot = core.snapshot();
            let upto = self.last_seq;
            return Some(Box::pin(async move {
                match store.compact_doc(&id, snapshot, upto).await {
                    Ok(()) => Ok(Written::Compacted { upto }),
                    Err(error) => Err(Unwritten {
                        error,
                        update: None,
                    }),
                }
            }));
        }
        None
    }

    /// Leave the registry if nobody joined meanwhile; true if the task may end.
    fn evict(&mut self, queue: &mut mpsc::Receiver<Command>) -> bool {
        if !queue.is_empty() {
            return false;
        }
        self.leave_registry();
        // Joins that got our queue before we left it are dropped unanswered: they join anew.
        queue.close();
        true
    }

    fn leave_registry(&self) {
        if let Some(me) = self.me.upgrade() {
            self.inner
                .live
                .remove_if(&self.id, |_, live| live.same_channel(&me));
        }
    }
}

/// One y-websocket frame as each wire takes it, each form built once.
struct Framed<'a> {
    doc: &'a str,
    raw: Bytes,
    session: [Option<Bytes>; 2],
}

impl<'a> Framed<'a> {
    fn new(doc: &'a str, raw: Bytes) -> Framed<'a> {
        Framed {
            doc,
            raw,
            session: [None, None],
        }
    }

    fn get(&mut self, peer: &Peer) -> Bytes {
        match peer.wire {
            Wire::YWebsocket => self.raw.clone(),
            Wire::Session => {
                let encoding = peer.outbox.encoding();
                let (doc, raw) = (self.doc, &self.raw);
                self.session[encoding.index()]
                    .get_or_insert_with(|| {
                        let frame = ServerFrame::Doc {
                            doc: doc.to_string(),
                            data: DocData(raw.clone()),
                        };
                        encode_server(&frame, encoding)
                    })
                    .clone()
            }
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch: the awareness clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64
}
