//! The embedded [`Store`]: one SQLite file in the data directory.
//!
//! A single OS thread owns the connection and runs every operation. SQLite admits one writer
//! at a time anyway, and the expensive part of a durable write is the fsync at COMMIT, so the
//! thread batches: it takes every job already queued (up to [`MAX_BATCH`]), runs them in one
//! transaction, and pays for one fsync instead of one per job ("group commit"). Each job runs
//! inside its own SAVEPOINT, so a job that fails undoes only its own statements; sends, the
//! frequent appends to a room's stream, run without one (`Mode::Append`).

use super::sqlite_chat::Rooms;
use super::{ChatEvent, ChatFeed, Member, Queued, Space, Store, StoreError, StoreResult};
use crate::access::Role;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, ffi, params};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Schema migrations, in order. Migration `i` brings the schema from version `i` to `i + 1`
/// (tracked in `PRAGMA user_version`). Append only: never edit an entry once released.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: spaces and their members.
    "CREATE TABLE spaces (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        name TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE members (
        space TEXT NOT NULL REFERENCES spaces(id) ON DELETE CASCADE,
        user TEXT NOT NULL,
        org TEXT NOT NULL,
        role TEXT NOT NULL,
        PRIMARY KEY (space, user)
    );
    CREATE INDEX members_by_user ON members(user);",
    // 2: chat rooms, their members, messages and streams.
    super::sqlite_chat::SCHEMA,
    super::sqlite_docs::SCHEMA,
    // 4: the full-text index keeps no copy of the bodies.
    super::sqlite_chat::INDEX_WITHOUT_CONTENT,
    // 5: each room's meeting mode.
    "ALTER TABLE rooms ADD COLUMN meeting_mode TEXT NOT NULL DEFAULT 'auto';",
];

/// Jobs queued for the store thread before callers wait for room. Bounded so a stalled disk
/// pushes back on callers instead of growing memory without limit.
const QUEUE: usize = 1024;
/// Jobs per transaction. Caps how long the first job of a batch waits for the last; large
/// enough that a busy store pays one fsync and one full-text index flush per few hundred sends
/// (half the queue).
const MAX_BATCH: usize = 512;
/// How long a statement waits for a lock held by another connection (e.g. an external backup).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept for reuse: more than the store has distinct frequent ones (chat,
/// documents, spaces), so a mixed load does not keep preparing them again.
const STATEMENTS: usize = 128;

/// [`Store`] on a SQLite file.
///
/// Durability: a method returns `Ok` only after the COMMIT of the transaction containing its
/// effect has returned, with `synchronous=FULL` in WAL mode, so the effect survives a crash,
/// `kill -9` or power loss. `AlreadyExists` and `NotFound` mean the call had no effect; after
/// `Backend` the outcome may be unknown (a COMMIT that failed in fsync may still have reached the
/// disk). If a caller's future is dropped while its job is queued or running, the job still runs
/// and may commit.
pub struct SqliteStore {
    /// `None` only during `drop`, which closes the queue to stop the thread.
    jobs: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
    /// Where the store thread sends committed chat events.
    pub(super) feed: Arc<OnceLock<Arc<dyn ChatFeed>>>,
    /// Jobs whose queueing has finished, in the order they are in the queue: what tests wait
    /// for to queue jobs in a known order (the queue's capacity drops before a job is in it).
    #[cfg(test)]
    queued: std::sync::atomic::AtomicUsize,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        let mut conn = Connection::open(path).map_err(backend)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        // WAL lets readers proceed during a write and makes a commit one sequential append;
        // FULL syncs the WAL at every commit, which is what makes a returned `Ok` durable.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(backend)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "cannot enable WAL (journal_mode={mode})"
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        // Off by default in SQLite, and a no-op inside a transaction: set it before any.
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(backend)?;
        migrate(&mut conn)?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS);

        let (jobs, queue) = mpsc::channel(QUEUE);
        let feed = Arc::new(OnceLock::new());
        let thread_feed = Arc::clone(&feed);
        let thread = std::thread::Builder::new()
            .name("chorus-store".into())
            .spawn(move || run(conn, queue, &thread_feed))
            .map_err(|e| StoreError::Backend(format!("cannot start store thread: {e}")))?;
        Ok(SqliteStore {
            jobs: Some(jobs),
            thread: Some(thread),
            feed,
            #[cfg(test)]
            queued: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Runs `f` on the store thread inside a batch transaction and returns its result once the
    /// batch has committed. If `f` fails, its statements are rolled back and the batch goes on.
    pub(super) async fn call<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let job = Box::new(Call {
            f: Some(f),
            result: None,
            reply,
        });
        self.queue(job, result).await
    }

    /// Like `call`, for a write that may produce a chat event: once the batch has committed,
    /// the event goes to the feed (on the store thread, in commit order) before the result
    /// returns. `f` may also use the `Writer`: the room streams it caches, statements left for
    /// the end of the batch.
    pub(super) async fn call_emitting<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &mut Writer) -> StoreResult<(T, Option<ChatEvent>)>
            + Send
            + 'static,
    {
        self.queue_emitting(Mode::Isolated, f).await?.await
    }

    /// `call_emitting` in two steps, and in either `mode`: returns once the job is queued (jobs
    /// run in queue order), then the `Queued` resolves to its result after the commit.
    pub(super) async fn queue_emitting<T, F>(&self, mode: Mode, f: F) -> StoreResult<Queued<T>>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &mut Writer) -> StoreResult<(T, Option<ChatEvent>)>
            + Send
            + 'static,
    {
        let (reply, result) = oneshot::channel();
        let job = Box::new(Emitting {
            f: Some(f),
            mode,
            result: None,
            reply,
        });
        self.enqueue(job, result).await
    }

    async fn queue<T: Send + 'static>(
        &self,
        job: Box<dyn Job>,
        result: oneshot::Receiver<StoreResult<T>>,
    ) -> StoreResult<T> {
        self.enqueue(job, result).await?.await
    }

    async fn enqueue<T: Send + 'static>(
        &self,
        job: Box<dyn Job>,
        result: oneshot::Receiver<StoreResult<T>>,
    ) -> StoreResult<Queued<T>> {
        let jobs = self.jobs.as_ref().expect("the queue is open until drop");
        // Awaits room in the queue rather than blocking the runtime.
        jobs.send(job).await.map_err(|_| stopped())?;
        #[cfg(test)]
        self.queued
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Box::pin(
            async move { result.await.map_err(|_| stopped())? },
        ))
    }
}

impl Drop for SqliteStore {
    /// Closes the queue, lets the thread finish what is queued, and waits for it, so that the
    /// database file is closed once the store is gone (a reopen sees everything).
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            // A panic on the thread has already failed its callers; nothing more to report.
            let _ = thread.join();
        }
    }
}

/// Brings the schema to `MIGRATIONS.len()`, all pending migrations in one transaction.
fn migrate(conn: &mut Connection) -> StoreResult<()> {
    // IMMEDIATE takes the write lock before reading the version, so two processes opening the
    // same file cannot both apply a migration.
    let txn = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let version: i64 = txn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(backend)?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        // Written by a newer chorus: its schema may mean things this version does not know.
        return Err(StoreError::Backend(format!(
            "schema version {version} is newer than the supported {}",
            MIGRATIONS.len()
        )));
    }
    for (version, sql) in (1i64..).zip(MIGRATIONS).skip(version) {
        txn.execute_batch(sql).map_err(backend)?;
        txn.pragma_update(None, "user_version", version)
            .map_err(backend)?;
    }
    txn.commit().map_err(backend)
}

/// What the store thread keeps for the jobs besides the transaction.
pub(super) struct Writer {
    /// Statements jobs left for the end of the batch (`defer`).
    deferred: Vec<Statement>,
    /// The streams of the rooms written to, kept across batches.
    pub(super) rooms: Rooms,
}

/// A statement left for the end of the batch.
type Statement = Box<dyn FnOnce(&Transaction<'_>) -> rusqlite::Result<()> + Send>;

impl Writer {
    fn new() -> Writer {
        Writer {
            deferred: Vec::new(),
            rooms: Rooms::default(),
        }
    }

    /// Leaves `statement` for the end of the batch: it runs after every job of the batch, in
    /// job order, outside the jobs' SAVEPOINTs, in the same transaction (just before COMMIT).
    /// Those of a job that failed are dropped with its other effects. This is for full-text
    /// indexing: FTS5 writes its pending index data to disk at every SAVEPOINT, so index
    /// writes made inside each job's savepoint would cost one index segment per job (and
    /// their merging), where a batch's deferred writes cost one segment per batch.
    pub(super) fn defer(
        &mut self,
        statement: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<()> + Send + 'static,
    ) {
        self.deferred.push(Box::new(statement));
    }
}

/// How a job runs in its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// In a SAVEPOINT of its own, rolled back if the job fails (the batch goes on), on the
    /// database as the jobs before it left it.
    Isolated,
    /// For the frequent appends to a room's stream (sends), which so save a SAVEPOINT's two
    /// statements and its copy of every page they change to the sub-journal, and one UPDATE
    /// of the room's head each. The job makes its checks before it writes: if it fails having
    /// written nothing, there is nothing to undo; if it fails after writing, the whole batch
    /// is rolled back and fails. It reads room heads from the `Writer` only: the rooms' rows
    /// get them before the next isolated job, and at the end of the batch (`Rooms::flush`).
    Append,
}

/// A queued operation, type-erased so one queue carries every result type.
trait Job: Send {
    /// How it runs in its batch.
    fn mode(&self) -> Mode {
        Mode::Isolated
    }
    /// Runs the operation inside the batch transaction; returns whether it succeeded.
    fn run(&mut self, txn: &Transaction<'_>, writer: &mut Writer) -> bool;
    /// The batch committed: hand what the job produced to `feed`. Called before `reply`.
    fn committed(&mut self, _feed: Option<&dyn ChatFeed>) {}
    /// Sends the result, or `batch_error` if the batch did not commit (the job may not have run).
    fn reply(self: Box<Self>, batch_error: Option<&str>);
}

struct Call<T, F> {
    f: Option<F>,
    /// Held back until the batch's COMMIT returns: until then the effect is not durable.
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Job for Call<T, F>
where
    T: Send,
    F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send,
{
    fn run(&mut self, txn: &Transaction<'_>, _: &mut Writer) -> bool {
        let f = self.f.take().expect("a job runs at most once");
        let result = f(txn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn reply(self: Box<Self>, batch_error: Option<&str>) {
        let result = match (batch_error, self.result) {
            (None, Some(result)) => result,
            (Some(e), _) => Err(StoreError::Backend(e.to_owned())),
            (None, None) => Err(StoreError::Backend("job skipped".into())),
        };
        // The caller may have given up waiting; the outcome stands regardless.
        let _ = self.reply.send(result);
    }
}

/// A `Call` whose result may carry a chat event, fed once the batch has committed.
struct Emitting<T, F> {
    f: Option<F>,
    mode: Mode,
    result: Option<StoreResult<(T, Option<ChatEvent>)>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Job for Emitting<T, F>
where
    T: Send,
    F: FnOnce(&Transaction<'_>, &mut Writer) -> StoreResult<(T, Option<ChatEvent>)> + Send,
{
    fn mode(&self) -> Mode {
        self.mode
    }

    fn run(&mut self, txn: &Transaction<'_>, writer: &mut Writer) -> bool {
        let f = self.f.take().expect("a job runs at most once");
        let result = f(txn, writer);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn committed(&mut self, feed: Option<&dyn ChatFeed>) {
        if let (Some(feed), Some(Ok((_, Some(event))))) = (feed, &self.result) {
            feed.committed(event);
        }
    }

    fn reply(self: Box<Self>, batch_error: Option<&str>) {
        let result = match (batch_error, self.result) {
            (None, Some(result)) => result.map(|(t, _)| t),
            (Some(e), _) => Err(StoreError::Backend(e.to_owned())),
            (None, None) => Err(StoreError::Backend("job skipped".into())),
        };
        let _ = self.reply.send(result);
    }
}

/// The store thread: batches until the queue is closed and drained.
fn run(
    mut conn: Connection,
    mut queue: mpsc::Receiver<Box<dyn Job>>,
    feed: &OnceLock<Arc<dyn ChatFeed>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut writer = Writer::new();
    // Blocks for the first job, then takes whatever else is already queued.
    while queue.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        let error = run_batch(&mut conn, &mut batch, &mut writer)
            .err()
            .map(|e| e.to_string());
        if error.is_some() {
            // Rolled back: what the jobs cached of it may be gone from the database.
            writer.deferred.clear();
            writer.rooms.clear();
        }
        // Feeds and replies only now, in job order: every event fed and every `Ok` a caller
        // sees has been committed, and a room's events are fed in offset order.
        for mut job in batch.drain(..) {
            if error.is_none() {
                job.committed(feed.get().map(|f| &**f));
            }
            job.reply(error.as_deref());
        }
    }
}

fn run_batch(
    conn: &mut Connection,
    batch: &mut [Box<dyn Job>],
    writer: &mut Writer,
) -> rusqlite::Result<()> {
    let txn = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for job in batch.iter_mut() {
        let mode = job.mode();
        if mode == Mode::Isolated {
            writer.rooms.flush(&txn)?;
            txn.prepare_cached("SAVEPOINT job")?.execute([])?;
        }
        let (kept, changes) = (writer.deferred.len(), txn.total_changes());
        if job.run(&txn, writer) {
            writer.rooms.keep();
        } else {
            writer.deferred.truncate(kept);
            writer.rooms.undo();
            match mode {
                Mode::Isolated => txn.execute_batch("ROLLBACK TO job")?,
                // Nothing written, nothing to undo.
                Mode::Append if txn.total_changes() == changes => {}
                Mode::Append => return Err(aborted("a job failed after writing")),
            }
        }
        if mode == Mode::Isolated {
            txn.prepare_cached("RELEASE job")?.execute([])?;
        }
        // Some errors (disk full, I/O) make SQLite roll back the whole transaction; later
        // statements would then autocommit one by one. Fail the batch instead.
        if txn.is_autocommit() {
            return Err(aborted("transaction rolled back"));
        }
    }
    writer.rooms.flush(&txn)?;
    // A deferred statement that fails fails the batch: its job has succeeded already.
    for statement in writer.deferred.drain(..) {
        statement(&txn)?;
    }
    // Dropping an uncommitted `Transaction` (the `?`s above) rolls it back.
    txn.commit()
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create_space(&self, space: Space, owner: &str) -> StoreResult<()> {
        let owner = owner.to_owned();
        self.call(move |txn| {
            let inserted = txn
                .prepare_cached(
                    "INSERT INTO spaces (id, org, name, created_ms) VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut s| {
                    s.execute(params![space.id, space.org, space.name, space.created_ms])
                });
            match inserted {
                Err(e) if is_constraint(&e, ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                    return Err(StoreError::AlreadyExists(format!("space {}", space.id)));
                }
                r => r.map_err(backend)?,
            };
            upsert_member(txn, &space.id, &owner, &space.org, Role::Owner)
        })
        .await
    }

    async fn space(&self, id: &str) -> StoreResult<Option<Space>> {
        let id = id.to_owned();
        self.call(move |txn| {
            txn.prepare_cached("SELECT id, org, name, created_ms FROM spaces WHERE id = ?1")
                .and_then(|mut s| s.query_row([id], space_row).optional())
                .map_err(backend)
        })
        .await
    }

    async fn spaces_of(&self, user: &str) -> StoreResult<Vec<Space>> {
        let user = user.to_owned();
        self.call(move |txn| {
            let mut s = txn
                .prepare_cached(
                    "SELECT s.id, s.org, s.name, s.created_ms FROM spaces s
                     JOIN members m ON m.space = s.id WHERE m.user = ?1 ORDER BY s.id",
                )
                .map_err(backend)?;
            s.query_map([user], space_row)
                .and_then(Iterator::collect)
                .map_err(backend)
        })
        .await
    }

    async fn memberships_of(&self, user: &str) -> StoreResult<Vec<Member>> {
        let user = user.to_owned();
        self.call(move |txn| {
            let mut s = txn
                .prepare_cached(
                    "SELECT space, user, org, role FROM members WHERE user = ?1 ORDER BY space",
                )
                .map_err(backend)?;
            s.query_map([user], member_row)
                .and_then(Iterator::collect)
                .map_err(backend)
        })
        .await
    }

    async fn put_member(&self, member: Member) -> StoreResult<()> {
        self.call(move |txn| {
            upsert_member(txn, &member.space, &member.user, &member.org, member.role)
        })
        .await
    }

    async fn remove_member(&self, space: &str, user: &str) -> StoreResult<bool> {
        let (space, user) = (space.to_owned(), user.to_owned());
        self.call(move |txn| {
            txn.prepare_cached("DELETE FROM members WHERE space = ?1 AND user = ?2")
                .and_then(|mut s| s.execute([space, user]))
                .map(|n| n > 0)
                .map_err(backend)
        })
        .await
    }

    async fn member(&self, space: &str, user: &str) -> StoreResult<Option<Member>> {
        let (space, user) = (space.to_owned(), user.to_owned());
        self.call(move |txn| {
            txn.prepare_cached(
                "SELECT space, user, org, role FROM members WHERE space = ?1 AND user = ?2",
            )
            .and_then(|mut s| s.query_row([space, user], member_row).optional())
            .map_err(backend)
        })
        .await
    }

    async fn members(&self, space: &str) -> StoreResult<Vec<Member>> {
        let space = space.to_owned();
        self.call(move |txn| {
            let mut s = txn
                .prepare_cached(
                    "SELECT space, user, org, role FROM members WHERE space = ?1 ORDER BY user",
                )
                .map_err(backend)?;
            s.query_map([space], member_row)
                .and_then(Iterator::collect)
                .map_err(backend)
        })
        .await
    }
}

/// Inserts or updates a membership; `NotFound` if the space does not exist.
fn upsert_member(
    txn: &Transaction<'_>,
    space: &str,
    user: &str,
    org: &str,
    role: Role,
) -> StoreResult<()> {
    let result = txn
        .prepare_cached(
            "INSERT INTO members (space, user, org, role) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (space, user) DO UPDATE SET org = excluded.org, role = excluded.role",
        )
        .and_then(|mut s| s.execute([space, user, org, role.as_str()]));
    match result {
        Ok(_) => Ok(()),
        Err(e) if is_constraint(&e, ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => {
            Err(StoreError::NotFound(format!("space {space}")))
        }
        Err(e) => Err(backend(e)),
    }
}

fn space_row(row: &Row<'_>) -> rusqlite::Result<Space> {
    Ok(Space {
        id: row.get(0)?,
        org: row.get(1)?,
        name: row.get(2)?,
        created_ms: row.get(3)?,
    })
}

fn member_row(row: &Row<'_>) -> rusqlite::Result<Member> {
    let role: String = row.get(3)?;
    let role = Role::parse(&role).ok_or_else(|| {
        let e = format!("unknown role {role:?}").into();
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e)
    })?;
    Ok(Member {
        space: row.get(0)?,
        user: row.get(1)?,
        org: row.get(2)?,
        role,
    })
}

/// Whether `e` is the constraint violation with this extended result code.
pub(super) fn is_constraint(e: &rusqlite::Error, extended_code: i32) -> bool {
    e.sqlite_extended_error_code() == Some(extended_code)
}

pub(super) fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The error of a batch given up.
fn aborted(why: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_ABORT), Some(why.into()))
}

fn stopped() -> StoreError {
    StoreError::Backend("store thread stopped".into())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::contract;
    use std::sync::Arc;

    fn open(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(&dir.path().join("chorus.db")).expect("open store")
    }

    #[tokio::test]
    async fn spaces_and_members() {
        let dir = tempfile::tempdir().unwrap();
        contract::spaces_and_members(&open(&dir)).await;
    }

    #[tokio::test]
    async fn duplicate_space_rejected() {
        let dir = tempfile::tempdir().unwrap();
        contract::duplicate_space_rejected(&open(&dir)).await;
    }

    #[tokio::test]
    async fn member_of_missing_space() {
        let dir = tempfile::tempdir().unwrap();
        contract::member_of_missing_space(&open(&dir)).await;
    }

    #[tokio::test]
    async fn remove_member() {
        let dir = tempfile::tempdir().unwrap();
        contract::remove_member(&open(&dir)).await;
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        contract::survives_reopen(&|| Box::new(open(&dir))).await;
    }

    #[tokio::test]
    async fn schema_is_migrated_once() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(&dir));
        // A second open must not re-run migration 1 (its CREATE TABLEs would fail).
        drop(open(&dir));
        let conn = Connection::open(dir.path().join("chorus.db")).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn newer_schema_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chorus.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::Backend(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_puts_all_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(&dir));
        store
            .create_space(contract::space("s", "acme"), "alice")
            .await
            .unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let user = format!("u{i:03}");
                    store
                        .put_member(contract::member("s", &user, "acme", Role::Member))
                        .await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(store.members("s").await.unwrap().len(), 201);
    }

    /// Holds the store thread in a job until `release`, so that the jobs queued meanwhile make
    /// up the next batch.
    pub(in crate::store) struct Hold {
        release: std::sync::mpsc::Sender<()>,
        gate: tokio::task::JoinHandle<StoreResult<()>>,
        /// `SqliteStore::queued` once the holding job is counted.
        before: usize,
    }

    impl Hold {
        pub(in crate::store) async fn new(store: &Arc<SqliteStore>) -> Hold {
            let (started_tx, started) = oneshot::channel();
            let (release, release_rx) = std::sync::mpsc::channel::<()>();
            // Nothing else is being queued: the holding job is the next one counted.
            let before = store.queued.load(std::sync::atomic::Ordering::SeqCst) + 1;
            let gate = tokio::spawn({
                let store = store.clone();
                async move {
                    store
                        .call(move |_| {
                            started_tx.send(()).unwrap();
                            release_rx.recv().unwrap();
                            Ok(())
                        })
                        .await
                }
            });
            started.await.unwrap();
            Hold {
                release,
                gate,
                before,
            }
        }

        /// Waits until `jobs` jobs are queued behind the holding one.
        pub(in crate::store) async fn queued(&self, store: &SqliteStore, jobs: usize) {
            let queued = || store.queued.load(std::sync::atomic::Ordering::SeqCst);
            while queued().saturating_sub(self.before) < jobs {
                tokio::task::yield_now().await;
            }
        }

        /// Waits until `jobs` jobs are queued, then lets the thread go on.
        pub(in crate::store) async fn release(self, store: &SqliteStore, jobs: usize) {
            self.queued(store, jobs).await;
            self.release.send(()).unwrap();
            self.gate.await.unwrap().unwrap();
        }
    }

    /// A failing job in a batch rolls back only itself. The batch is made deterministic by
    /// holding the store thread until all calls are queued.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn failing_job_spares_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(&dir));
        store
            .create_space(contract::space("dup", "acme"), "alice")
            .await
            .unwrap();

        let hold = Hold::new(&store).await;

        const IDS: [&str; 5] = ["a", "b", "dup", "c", "d"];
        let tasks: Vec<_> = IDS
            .iter()
            .map(|id| {
                let store = store.clone();
                tokio::spawn(
                    async move { store.create_space(contract::space(id, "acme"), "bob").await },
                )
            })
            .collect();
        // A job that fails after writing: its write must be undone, its neighbours' kept.
        let partial = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .call(|txn| {
                        txn.execute("INSERT INTO spaces VALUES ('partial', 'acme', 'p', 0)", [])
                            .map_err(backend)?;
                        Err::<(), _>(StoreError::Backend("fails after writing".into()))
                    })
                    .await
            }
        });
        hold.release(&store, IDS.len() + 1).await;

        for (id, task) in IDS.iter().zip(tasks) {
            match (*id, task.await.unwrap()) {
                ("dup", Err(StoreError::AlreadyExists(_))) => {}
                (_, Ok(())) => {}
                (id, r) => panic!("{id}: {r:?}"),
            }
        }
        let spaces: Vec<_> = store
            .spaces_of("bob")
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(spaces, ["a", "b", "c", "d"]);
        assert_eq!(store.member("dup", "bob").await.unwrap(), None);
        assert!(matches!(
            partial.await.unwrap(),
            Err(StoreError::Backend(_))
        ));
        assert_eq!(store.space("partial").await.unwrap(), None);
    }

    /// Deferred statements run after every job of the batch, in job order; those of a job that
    /// failed do not run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn deferred_statements_run_at_the_end_of_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(&dir));
        let hold = Hold::new(&store).await;
        let job = |id: &'static str, fail: bool| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .call_emitting(move |_, writer| {
                        writer.defer(move |txn| {
                            txn.execute("INSERT INTO spaces VALUES (?1, 'acme', 'n', 0)", [id])
                                .map(drop)
                        });
                        if fail {
                            return Err(StoreError::Backend("fails after deferring".into()));
                        }
                        Ok(((), None))
                    })
                    .await
            })
        };
        let kept = job("kept", false);
        let failed = job("failed", true);
        // Runs in the same batch after `kept`, before the deferred statements.
        let seen = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .call(|txn| {
                        txn.query_row("SELECT COUNT(*) FROM spaces", [], |r| r.get::<_, i64>(0))
                            .map_err(backend)
                    })
                    .await
            }
        });
        hold.release(&store, 3).await;
        kept.await.unwrap().unwrap();
        assert!(matches!(failed.await.unwrap(), Err(StoreError::Backend(_))));
        assert_eq!(seen.await.unwrap().unwrap(), 0);
        assert!(store.space("kept").await.unwrap().is_some());
        assert_eq!(store.space("failed").await.unwrap(), None);
    }
}
