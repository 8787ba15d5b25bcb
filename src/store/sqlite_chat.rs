//! [`ChatStore`] on the embedded SQLite store: the same writer thread and group commit as the
//! rest of [`SqliteStore`]. Writes that append to a room's stream run through `call_emitting`
//! (sends: `queue_emitting` in `Mode::Append`), so their events reach the feed in commit order
//! once the batch's COMMIT has returned.

use super::sqlite::{Mode, SqliteStore, Writer, backend, is_constraint};
use super::{
    ChatEvent, ChatFeed, ChatStore, EventKind, Hit, MeetingSetting, Message, NewMessage, Page,
    Queued, Reaction, ReadState, Receipt, Revision, Room, RoomMember, RoomUpdate, SearchQuery,
    Sent, StoreError, StoreResult, ThreadSummary, UNREAD_CAP,
};
use crate::access::Role;
use rusqlite::{OptionalExtension, Row, Transaction, ffi, params};
use std::collections::HashMap;
use std::sync::Arc;

/// Migration 2. Rooms have an integer key (`rid`) so that the large tables key on it rather than
/// on (space, room) strings. A room's stream is `chat_events`; `chat_messages` holds each
/// message's current state under the offset of the event that sent it.
pub(super) const SCHEMA: &str = "
    CREATE TABLE rooms (
        rid INTEGER PRIMARY KEY,
        space TEXT NOT NULL REFERENCES spaces(id) ON DELETE CASCADE,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        private INTEGER NOT NULL,
        archived INTEGER NOT NULL,
        epoch INTEGER NOT NULL,
        head INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        dm_key TEXT,
        UNIQUE (space, id),
        UNIQUE (space, dm_key)
    );
    CREATE TABLE room_members (
        rid INTEGER NOT NULL REFERENCES rooms(rid) ON DELETE CASCADE,
        user TEXT NOT NULL,
        org TEXT NOT NULL,
        role TEXT NOT NULL,
        joined_ms INTEGER NOT NULL,
        PRIMARY KEY (rid, user)
    ) WITHOUT ROWID;
    CREATE INDEX room_members_by_user ON room_members(user);
    CREATE TABLE chat_messages (
        rid INTEGER NOT NULL REFERENCES rooms(rid) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        client_id TEXT NOT NULL,
        author TEXT NOT NULL,
        body TEXT,
        format TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        edited_ms INTEGER,
        deleted_ms INTEGER,
        mentions TEXT,
        thread INTEGER,
        reply_count INTEGER NOT NULL DEFAULT 0,
        last_reply INTEGER,
        last_reply_ms INTEGER,
        PRIMARY KEY (rid, seq)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX chat_messages_by_client_id ON chat_messages(rid, author, client_id);
    CREATE INDEX chat_messages_by_thread ON chat_messages(rid, thread, seq)
        WHERE thread IS NOT NULL;
    CREATE TABLE chat_reactions (
        rid INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        emoji TEXT NOT NULL,
        user TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (rid, seq, emoji, user),
        FOREIGN KEY (rid, seq) REFERENCES chat_messages(rid, seq) ON DELETE CASCADE
    ) WITHOUT ROWID;
    CREATE TABLE chat_events (
        rid INTEGER NOT NULL REFERENCES rooms(rid) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        target INTEGER NOT NULL,
        PRIMARY KEY (rid, seq)
    ) WITHOUT ROWID;
    CREATE TABLE chat_revisions (
        rid INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        rev INTEGER NOT NULL,
        body TEXT NOT NULL,
        format TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (rid, seq, rev),
        FOREIGN KEY (rid, seq) REFERENCES chat_messages(rid, seq) ON DELETE CASCADE
    ) WITHOUT ROWID;
    CREATE TABLE chat_mentions (
        rid INTEGER NOT NULL REFERENCES rooms(rid) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        user TEXT NOT NULL,
        PRIMARY KEY (rid, seq, user)
    ) WITHOUT ROWID;
    CREATE INDEX chat_mentions_by_user ON chat_mentions(rid, user, seq);
    CREATE TABLE chat_reads (
        rid INTEGER NOT NULL REFERENCES rooms(rid) ON DELETE CASCADE,
        user TEXT NOT NULL,
        seq INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (rid, user)
    ) WITHOUT ROWID;
    -- Full-text index of live message bodies. The rowid is the message's key (`fts_key`); the
    -- `scope` column holds one token naming the room, so a search is confined to the rooms its
    -- caller may read inside the index itself.
    CREATE VIRTUAL TABLE chat_fts USING fts5(
        body, scope, tokenize = 'unicode61 remove_diacritics 2'
    );
    -- Leaving a space ends its room memberships, so rejoining it later restores none.
    CREATE TRIGGER room_members_leave_with_space AFTER DELETE ON members BEGIN
        DELETE FROM room_members WHERE user = OLD.user
            AND rid IN (SELECT rid FROM rooms WHERE space = OLD.space);
    END;
";

/// Migration 4: the full-text index without its own copy of each body (`chat_messages` has
/// them), rebuilt from the live messages. A search reads only the index's rowids and ranks,
/// and `contentless_delete` lets edits and deletes remove entries by rowid.
pub(super) const INDEX_WITHOUT_CONTENT: &str = "
    DROP TABLE chat_fts;
    CREATE VIRTUAL TABLE chat_fts USING fts5(
        body, scope, content = '', contentless_delete = 1,
        tokenize = 'unicode61 remove_diacritics 2'
    );
    INSERT INTO chat_fts (rowid, body, scope)
        SELECT (rid << 40) | seq, body, 'r' || rid FROM chat_messages
        WHERE deleted_ms IS NULL;
";

// The columns `room_row` and `message_row` read, as macros too, so that the SQL of frequent
// statements is a literal (`concat!`) rather than formatted at each use.
macro_rules! room_columns {
    () => {
        "rid, space, id, name, private, archived, epoch, head, created_by, created_ms,
         dm_key IS NOT NULL, meeting_mode"
    };
}
macro_rules! message_columns {
    () => {
        "m.seq, m.client_id, m.author, m.body, m.format, m.created_ms, m.edited_ms,
         m.deleted_ms, m.mentions, m.thread, m.reply_count, m.last_reply, m.last_reply_ms"
    };
}
const ROOM_COLUMNS: &str = room_columns!();
const MESSAGE_COLUMNS: &str = message_columns!();

/// Searches over at most this many rooms run room by room.
const PER_ROOM_SEARCH: usize = 32;

/// The full-text index's rowid of message `seq` of room `rid`: 40 bits of offset per room.
fn fts_key(rid: i64, seq: u64) -> i64 {
    (rid << 40) | (seq as i64 & ((1 << 40) - 1))
}

/// The token of room `rid` in the full-text index's `scope` column.
fn fts_scope(rid: i64) -> String {
    format!("r{rid}")
}

// The index is written at the end of the batch (`Writer::defer`), in the transaction that holds the
// message: a message is searchable once its send is acknowledged, and a search that runs in
// the same batch as a send, edit or delete sees the index as it was before that batch.

/// Index message `seq` of room `rid` (a new one: an edit removes the old entry first).
fn fts_add(writer: &mut Writer, rid: i64, seq: u64, body: String) {
    writer.defer(move |txn| {
        txn.prepare_cached("INSERT INTO chat_fts (rowid, body, scope) VALUES (?1, ?2, ?3)")?
            .execute(params![fts_key(rid, seq), body, fts_scope(rid)])
            .map(drop)
    });
}

fn fts_remove(writer: &mut Writer, rid: i64, seq: u64) {
    writer.defer(move |txn| {
        txn.prepare_cached("DELETE FROM chat_fts WHERE rowid = ?1")?
            .execute([fts_key(rid, seq)])
            .map(drop)
    });
}

/// An FTS5 query string matching every one of `terms` as a word, however it is spelt: each term
/// is quoted, so nothing in it is query syntax.
fn fts_terms(terms: &[String]) -> String {
    terms
        .iter()
        .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A room row with its key.
struct Keyed {
    rid: i64,
    room: Room,
}

fn room_row(row: &Row<'_>) -> rusqlite::Result<Keyed> {
    Ok(Keyed {
        rid: row.get(0)?,
        room: Room {
            space: row.get(1)?,
            id: row.get(2)?,
            name: row.get(3)?,
            private: row.get(4)?,
            archived: row.get(5)?,
            epoch: row.get::<_, i64>(6)? as u64,
            head: row.get::<_, i64>(7)? as u64,
            created_by: row.get(8)?,
            created_ms: row.get(9)?,
            direct: row.get(10)?,
            meeting_mode: {
                let mode: String = row.get(11)?;
                MeetingSetting::parse(&mode).ok_or_else(|| {
                    let e = format!("unknown meeting mode {mode:?}").into();
                    rusqlite::Error::FromSqlConversionFailure(11, rusqlite::types::Type::Text, e)
                })?
            },
        },
    })
}

/// A message from `MESSAGE_COLUMNS` starting at column `at`.
fn message_row(row: &Row<'_>, at: usize) -> rusqlite::Result<Message> {
    Ok(Message {
        offset: row.get::<_, i64>(at)? as u64,
        client_id: row.get(at + 1)?,
        author: row.get(at + 2)?,
        body: row.get(at + 3)?,
        format: row.get(at + 4)?,
        created_ms: row.get(at + 5)?,
        edited_ms: row.get(at + 6)?,
        deleted_ms: row.get(at + 7)?,
        mentions: match row.get::<_, Option<String>>(at + 8)? {
            None => Vec::new(),
            Some(json) => serde_json::from_str(&json).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    at + 8,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?,
        },
        thread: row.get::<_, Option<i64>>(at + 9)?.map(|t| t as u64),
        replies: match row.get::<_, i64>(at + 10)? {
            0 => None,
            count => Some(ThreadSummary {
                count: count as u64,
                last_offset: row.get::<_, Option<i64>>(at + 11)?.unwrap_or(0) as u64,
                last_ms: row.get::<_, Option<i64>>(at + 12)?.unwrap_or(0),
            }),
        },
        // Filled by `fill_reactions`.
        reactions: Vec::new(),
    })
}

/// Load the reactions of `messages` (all of room `rid`).
fn fill_reactions(txn: &Transaction<'_>, rid: i64, messages: &mut [Message]) -> StoreResult<()> {
    let mut s = txn
        .prepare_cached(
            "SELECT emoji, user FROM chat_reactions WHERE rid = ?1 AND seq = ?2
             ORDER BY emoji, user",
        )
        .map_err(backend)?;
    for message in messages {
        let rows: Vec<(String, String)> = s
            .query_map(params![rid, message.offset as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .and_then(Iterator::collect)
            .map_err(backend)?;
        let mut reactions: Vec<Reaction> = Vec::new();
        for (emoji, user) in rows {
            match reactions.last_mut() {
                Some(last) if last.emoji == emoji => {
                    last.count += 1;
                    last.users.push(user);
                }
                _ => reactions.push(Reaction {
                    emoji,
                    count: 1,
                    users: vec![user],
                }),
            }
        }
        message.reactions = reactions;
    }
    Ok(())
}

/// Recount the replies of thread `root` into its summary.
fn summarize_thread(txn: &Transaction<'_>, rid: i64, root: u64) -> StoreResult<()> {
    txn.prepare_cached(
        "UPDATE chat_messages SET
             reply_count = (SELECT COUNT(*) FROM chat_messages r
                            WHERE r.rid = ?1 AND r.thread = ?2 AND r.deleted_ms IS NULL),
             last_reply = (SELECT MAX(r.seq) FROM chat_messages r
                           WHERE r.rid = ?1 AND r.thread = ?2 AND r.deleted_ms IS NULL),
             last_reply_ms = (SELECT r.created_ms FROM chat_messages r
                              WHERE r.rid = ?1 AND r.thread = ?2 AND r.deleted_ms IS NULL
                              ORDER BY r.seq DESC LIMIT 1)
         WHERE rid = ?1 AND seq = ?2",
    )
    .and_then(|mut s| s.execute(params![rid, root as i64]))
    .map(drop)
    .map_err(backend)
}

/// The offset `user` has read `rid` up to (0: nothing).
fn last_read(txn: &Transaction<'_>, rid: i64, user: &str) -> StoreResult<u64> {
    Ok(txn
        .prepare_cached("SELECT seq FROM chat_reads WHERE rid = ?1 AND user = ?2")
        .and_then(|mut s| {
            s.query_row(params![rid, user], |r| r.get::<_, i64>(0))
                .optional()
        })
        .map_err(backend)?
        .map_or(0, |seq| seq as u64))
}

/// The read state of `user` in `room`, all counted in the current transaction.
fn read_state(txn: &Transaction<'_>, room: &Keyed, user: &str) -> StoreResult<ReadState> {
    let last_read = last_read(txn, room.rid, user)?;
    let count = |sql: &str| -> StoreResult<u64> {
        txn.prepare_cached(sql)
            .and_then(|mut s| {
                s.query_row(
                    params![room.rid, last_read as i64, user, UNREAD_CAP as i64],
                    |r| r.get::<_, i64>(0),
                )
            })
            .map(|n| n as u64)
            .map_err(backend)
    };
    // Bounded: counting stops at the cap however far behind the user is.
    let unread = count(
        "SELECT COUNT(*) FROM (SELECT 1 FROM chat_messages WHERE rid = ?1 AND seq > ?2
         AND author != ?3 AND deleted_ms IS NULL LIMIT ?4)",
    )?;
    let mentions = count(
        "SELECT COUNT(*) FROM (SELECT 1 FROM chat_mentions WHERE rid = ?1 AND user = ?3
         AND seq > ?2 LIMIT ?4)",
    )?;
    Ok(ReadState {
        space: room.room.space.clone(),
        room: room.room.id.clone(),
        head: room.room.head,
        last_read,
        unread,
        mentions,
    })
}

fn parse_role(role: &str, column: usize) -> rusqlite::Result<Role> {
    Role::parse(role).ok_or_else(|| {
        let e = format!("unknown role {role:?}").into();
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, e)
    })
}

fn find_room(txn: &Transaction<'_>, space: &str, id: &str) -> StoreResult<Option<Keyed>> {
    txn.prepare_cached(concat!(
        "SELECT ",
        room_columns!(),
        " FROM rooms WHERE space = ?1 AND id = ?2"
    ))
    .and_then(|mut s| s.query_row([space, id], room_row).optional())
    .map_err(backend)
}

fn need_room(txn: &Transaction<'_>, space: &str, id: &str) -> StoreResult<Keyed> {
    find_room(txn, space, id)?.ok_or_else(|| StoreError::NotFound(format!("room {space}/{id}")))
}

/// The message `author` sent to room `rid` with `client_id`, if any.
fn earlier(
    txn: &Transaction<'_>,
    rid: i64,
    author: &str,
    client_id: &str,
) -> StoreResult<Option<Message>> {
    let message = txn
        .prepare_cached(concat!(
            "SELECT ",
            message_columns!(),
            " FROM chat_messages m WHERE m.rid = ?1 AND m.author = ?2 AND m.client_id = ?3"
        ))
        .and_then(|mut s| {
            s.query_row(params![rid, author, client_id], |r| message_row(r, 0))
                .optional()
        })
        .map_err(backend)?;
    let Some(mut message) = message else {
        return Ok(None);
    };
    fill_reactions(txn, rid, std::slice::from_mut(&mut message))?;
    Ok(Some(message))
}

fn find_message(txn: &Transaction<'_>, rid: i64, offset: u64) -> StoreResult<Option<Message>> {
    txn.prepare_cached(concat!(
        "SELECT ",
        message_columns!(),
        " FROM chat_messages m WHERE m.rid = ?1 AND m.seq = ?2"
    ))
    .and_then(|mut s| {
        s.query_row(params![rid, offset as i64], |r| message_row(r, 0))
            .optional()
    })
    .map_err(backend)
    .and_then(|message| match message {
        Some(mut message) => {
            fill_reactions(txn, rid, std::slice::from_mut(&mut message))?;
            Ok(Some(message))
        }
        None => Ok(None),
    })
}

/// Rooms the store thread caches, at most this many (then it starts over).
const CACHED_ROOMS: usize = 4096;

/// Where a room's stream stands: what appending to it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stream {
    rid: i64,
    epoch: u64,
    head: u64,
    /// The head in the room's row, behind `head` until `Rooms::flush`.
    stored: u64,
}

/// The streams of the rooms the store thread appends to, so that an append needs no lookup of
/// its room, and the room's row is updated once per batch rather than once per append. It
/// stays true because only the store thread writes, every append goes through `append`, and a
/// room's key and epoch never change (rooms are never deleted). What a job changed is undone
/// with its SAVEPOINT (`undo`); a batch that fails empties the cache (`clear`).
#[derive(Default)]
pub(super) struct Rooms {
    /// Keys by space, then room id.
    keys: HashMap<Box<str>, HashMap<Box<str>, i64>>,
    /// Entries in `keys`, which bound the cache.
    named: usize,
    streams: HashMap<i64, Stream>,
    /// Streams whose head may be ahead of their row's.
    unstored: Vec<i64>,
    /// What the running job changed: a stream's key, and its entry before (`None`: absent).
    changed: Vec<(i64, Option<Stream>)>,
}

impl Rooms {
    /// The stream of room `id` of `space`, from the cache or the database.
    fn stream(&mut self, txn: &Transaction<'_>, space: &str, id: &str) -> StoreResult<Stream> {
        let rid = self.keys.get(space).and_then(|ids| ids.get(id));
        if let Some(stream) = rid.and_then(|rid| self.streams.get(rid)) {
            return Ok(*stream);
        }
        let stream = txn
            .prepare_cached("SELECT rid, epoch, head FROM rooms WHERE space = ?1 AND id = ?2")
            .and_then(|mut s| {
                s.query_row([space, id], |row| {
                    let head = row.get::<_, i64>(2)? as u64;
                    Ok(Stream {
                        rid: row.get(0)?,
                        epoch: row.get::<_, i64>(1)? as u64,
                        head,
                        stored: head,
                    })
                })
                .optional()
            })
            .map_err(backend)?
            .ok_or_else(|| StoreError::NotFound(format!("room {space}/{id}")))?;
        if self.named >= CACHED_ROOMS {
            // Heads ahead of their rows are an append's (an isolated job starts after a
            // flush), which runs outside any SAVEPOINT: what this writes stays.
            self.flush(txn).map_err(backend)?;
            self.keys.clear();
            self.streams.clear();
            self.named = 0;
        }
        let ids = self.keys.entry(space.into()).or_default();
        if ids.insert(id.into(), stream.rid).is_none() {
            self.named += 1;
        }
        self.set(stream);
        Ok(stream)
    }

    fn set(&mut self, stream: Stream) {
        let before = self.streams.insert(stream.rid, stream);
        self.changed.push((stream.rid, before));
    }

    /// Append an event to `room`'s stream: the next offset, recorded and made the head (in the
    /// room's row at the next `flush`).
    fn append(
        &mut self,
        txn: &Transaction<'_>,
        room: Stream,
        kind: EventKind,
        target: Option<u64>,
    ) -> StoreResult<u64> {
        let offset = room.head + 1;
        let target = target.unwrap_or(offset);
        txn.prepare_cached(
            "INSERT INTO chat_events (rid, seq, kind, target) VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut s| {
            s.execute(params![
                room.rid,
                offset as i64,
                kind.as_str(),
                target as i64
            ])
        })
        .map_err(backend)?;
        if room.head == room.stored {
            self.unstored.push(room.rid);
        }
        self.set(Stream {
            head: offset,
            ..room
        });
        Ok(offset)
    }

    /// Write the heads that are ahead of their rows to the rows.
    pub(super) fn flush(&mut self, txn: &Transaction<'_>) -> rusqlite::Result<()> {
        for rid in self.unstored.drain(..) {
            // Gone (undone) or stored since: nothing to write.
            let Some(stream) = self.streams.get_mut(&rid) else {
                continue;
            };
            if stream.head != stream.stored {
                txn.prepare_cached("UPDATE rooms SET head = ?2 WHERE rid = ?1")?
                    .execute(params![rid, stream.head as i64])?;
                stream.stored = stream.head;
            }
        }
        Ok(())
    }

    /// The running job succeeded: its changes stay.
    pub(super) fn keep(&mut self) {
        self.changed.clear();
    }

    /// The running job failed, and its writes were undone: so are its changes here.
    pub(super) fn undo(&mut self) {
        for (rid, before) in self.changed.drain(..).rev() {
            match before {
                Some(stream) => self.streams.insert(rid, stream),
                None => self.streams.remove(&rid),
            };
        }
    }

    /// The batch was rolled back: forget everything, the database knows.
    pub(super) fn clear(&mut self) {
        self.keys.clear();
        self.streams.clear();
        self.named = 0;
        self.unstored.clear();
        self.changed.clear();
    }
}

/// The event at `offset` of room `id` of `space` (key `rid`), about `message`.
fn event(
    txn: &Transaction<'_>,
    (space, id, rid): (&str, &str, i64),
    offset: u64,
    kind: EventKind,
    message: Message,
) -> StoreResult<ChatEvent> {
    let mut event = ChatEvent {
        space: space.to_owned(),
        room: id.to_owned(),
        offset,
        kind,
        message,
        root: None,
    };
    add_root(txn, rid, &mut event)?;
    Ok(event)
}

/// Attach the thread's root to an event about a reply.
fn add_root(txn: &Transaction<'_>, rid: i64, event: &mut ChatEvent) -> StoreResult<()> {
    if let Some(root) = event.message.thread {
        event.root = find_message(txn, rid, root)?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl ChatStore for SqliteStore {
    fn set_feed(&self, feed: Arc<dyn ChatFeed>) {
        let _ = self.feed.set(feed);
    }

    async fn create_room(&self, room: Room, owner: RoomMember) -> StoreResult<()> {
        self.call(move |txn| {
            let inserted = txn
                .prepare_cached(
                    "INSERT INTO rooms (space, id, name, private, archived, epoch, head,
                                        created_by, created_ms, meeting_mode)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        room.space,
                        room.id,
                        room.name,
                        room.private,
                        room.archived,
                        room.epoch as i64,
                        room.created_by,
                        room.created_ms,
                        room.meeting_mode.as_str()
                    ])
                });
            match inserted {
                Err(e) if is_constraint(&e, ffi::SQLITE_CONSTRAINT_UNIQUE) => {
                    return Err(StoreError::AlreadyExists(format!(
                        "room {}/{}",
                        room.space, room.id
                    )));
                }
                Err(e) if is_constraint(&e, ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => {
                    return Err(StoreError::NotFound(format!("space {}", room.space)));
                }
                r => r.map_err(backend)?,
            };
            let rid = txn.last_insert_rowid();
            upsert_room_member(txn, rid, &owner)
        })
        .await
    }

    async fn open_direct(
        &self,
        room: Room,
        members: Vec<RoomMember>,
        key: String,
    ) -> StoreResult<(Room, bool)> {
        self.call(move |txn| {
            let existing = txn
                .prepare_cached(&format!(
                    "SELECT {ROOM_COLUMNS} FROM rooms WHERE space = ?1 AND dm_key = ?2"
                ))
                .and_then(|mut s| s.query_row([&room.space, &key], room_row).optional())
                .map_err(backend)?;
            if let Some(existing) = existing {
                return Ok((existing.room, false));
            }
            let inserted = txn
                .prepare_cached(
                    "INSERT INTO rooms (space, id, name, private, archived, epoch, head,
                                        created_by, created_ms, dm_key, meeting_mode)
                     VALUES (?1, ?2, ?3, 1, 0, ?4, 0, ?5, ?6, ?7, ?8)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        room.space,
                        room.id,
                        room.name,
                        room.epoch as i64,
                        room.created_by,
                        room.created_ms,
                        key,
                        room.meeting_mode.as_str()
                    ])
                });
            match inserted {
                Err(e) if is_constraint(&e, ffi::SQLITE_CONSTRAINT_UNIQUE) => {
                    return Err(StoreError::AlreadyExists(format!(
                        "room {}/{}",
                        room.space, room.id
                    )));
                }
                Err(e) if is_constraint(&e, ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => {
                    return Err(StoreError::NotFound(format!("space {}", room.space)));
                }
                r => r.map_err(backend)?,
            };
            let rid = txn.last_insert_rowid();
            for member in &members {
                upsert_room_member(txn, rid, member)?;
            }
            let room = Room {
                private: true,
                archived: false,
                direct: true,
                head: 0,
                ..room
            };
            Ok((room, true))
        })
        .await
    }

    async fn room(&self, space: &str, id: &str) -> StoreResult<Option<Room>> {
        let (space, id) = (space.to_owned(), id.to_owned());
        self.call(move |txn| Ok(find_room(txn, &space, &id)?.map(|k| k.room)))
            .await
    }

    async fn rooms_of(&self, space: &str, user: &str) -> StoreResult<Vec<(Room, Option<Role>)>> {
        let (space, user) = (space.to_owned(), user.to_owned());
        self.call(move |txn| {
            let mut s = txn
                .prepare_cached(&format!(
                    "SELECT {ROOM_COLUMNS}, (SELECT role FROM room_members m
                                             WHERE m.rid = rooms.rid AND m.user = ?2)
                     FROM rooms WHERE space = ?1 ORDER BY id"
                ))
                .map_err(backend)?;
            s.query_map([space, user], |row| {
                let role: Option<String> = row.get(12)?;
                let role = role.map(|r| parse_role(&r, 12)).transpose()?;
                Ok((room_row(row)?.room, role))
            })
            .and_then(Iterator::collect)
            .map_err(backend)
        })
        .await
    }

    async fn update_room(&self, space: &str, id: &str, update: RoomUpdate) -> StoreResult<Room> {
        let (space, id) = (space.to_owned(), id.to_owned());
        self.call(move |txn| {
            let mut room = need_room(txn, &space, &id)?;
            if let Some(name) = update.name {
                room.room.name = name;
            }
            if let Some(archived) = update.archived {
                room.room.archived = archived;
            }
            if let Some(mode) = update.meeting_mode {
                room.room.meeting_mode = mode;
            }
            txn.prepare_cached(
                "UPDATE rooms SET name = ?2, archived = ?3, meeting_mode = ?4 WHERE rid = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    room.rid,
                    room.room.name,
                    room.room.archived,
                    room.room.meeting_mode.as_str()
                ])
            })
            .map_err(backend)?;
            Ok(room.room)
        })
        .await
    }

    async fn put_room_member(&self, member: RoomMember) -> StoreResult<()> {
        self.call(move |txn| {
            let room = need_room(txn, &member.space, &member.room)?;
            upsert_room_member(txn, room.rid, &member)
        })
        .await
    }

    async fn remove_room_member(&self, space: &str, room: &str, user: &str) -> StoreResult<bool> {
        let (space, room, user) = (space.to_owned(), room.to_owned(), user.to_owned());
        self.call(move |txn| {
            txn.prepare_cached(
                "DELETE FROM room_members WHERE user = ?3
                 AND rid = (SELECT rid FROM rooms WHERE space = ?1 AND id = ?2)",
            )
            .and_then(|mut s| s.execute([space, room, user]))
            .map(|n| n > 0)
            .map_err(backend)
        })
        .await
    }

    async fn room_members(&self, space: &str, room: &str) -> StoreResult<Vec<RoomMember>> {
        let (space, room) = (space.to_owned(), room.to_owned());
        self.call(move |txn| {
            let mut s = txn
                .prepare_cached(
                    "SELECT r.space, r.id, m.user, m.org, m.role, m.joined_ms
                     FROM room_members m JOIN rooms r ON r.rid = m.rid
                     WHERE r.space = ?1 AND r.id = ?2 ORDER BY m.user",
                )
                .map_err(backend)?;
            s.query_map([space, room], |row| {
                let role: String = row.get(4)?;
                Ok(RoomMember {
                    space: row.get(0)?,
                    room: row.get(1)?,
                    user: row.get(2)?,
                    org: row.get(3)?,
                    role: parse_role(&role, 4)?,
                    joined_ms: row.get(5)?,
                })
            })
            .and_then(Iterator::collect)
            .map_err(backend)
        })
        .await
    }

    async fn send(&self, new: NewMessage) -> StoreResult<Sent> {
        self.queue_send(new).await?.await
    }

    async fn queue_send(&self, new: NewMessage) -> StoreResult<Queued<Sent>> {
        // Checks first, then writes: a send that fails has written nothing (`Mode::Append`).
        self.queue_emitting(Mode::Append, move |txn, writer| {
            let room = writer.rooms.stream(txn, &new.space, &new.room)?;
            let offset = room.head + 1;
            let duplicate = |message| {
                let sent = Sent {
                    message,
                    epoch: room.epoch,
                    duplicate: true,
                };
                Ok((sent, None))
            };
            if let Some(root) = new.thread {
                let root = find_message(txn, room.rid, root)?
                    .filter(|m| m.deleted_ms.is_none() && m.thread.is_none());
                if root.is_none() {
                    // A retry finds its message even once the thread is gone.
                    if let Some(message) = earlier(txn, room.rid, &new.author, &new.client_id)? {
                        return duplicate(message);
                    }
                    return Err(StoreError::NotFound(format!(
                        "thread root {} (a message that is not a reply)",
                        new.thread.unwrap_or(0)
                    )));
                }
            }
            let mentions = (!new.mentions.is_empty())
                .then(|| serde_json::to_string(&new.mentions).expect("strings serialize"));
            // A message sent before with this client id (committed, or earlier in this batch)
            // holds its key in the unique index: then nothing is inserted.
            let inserted = txn
                .prepare_cached(
                    "INSERT INTO chat_messages
                         (rid, seq, client_id, author, body, format, created_ms, mentions, thread)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (rid, author, client_id) DO NOTHING",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        room.rid,
                        offset as i64,
                        new.client_id,
                        new.author,
                        new.body,
                        new.format,
                        new.at_ms,
                        mentions,
                        new.thread.map(|t| t as i64)
                    ])
                })
                .map_err(backend)?;
            if inserted == 0 {
                let message = earlier(txn, room.rid, &new.author, &new.client_id)?;
                return duplicate(message.ok_or_else(|| {
                    StoreError::Backend("a client id conflicts with no message".into())
                })?);
            }
            writer.rooms.append(txn, room, EventKind::Message, None)?;
            if let Some(root) = new.thread {
                txn.prepare_cached(
                    "UPDATE chat_messages SET reply_count = reply_count + 1, last_reply = ?3,
                         last_reply_ms = ?4
                     WHERE rid = ?1 AND seq = ?2",
                )
                .and_then(|mut s| {
                    s.execute(params![room.rid, root as i64, offset as i64, new.at_ms])
                })
                .map_err(backend)?;
            }
            fts_add(writer, room.rid, offset, new.body.clone());
            for user in &new.mentions {
                txn.prepare_cached(
                    "INSERT OR IGNORE INTO chat_mentions (rid, seq, user) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut s| s.execute(params![room.rid, offset as i64, user]))
                .map_err(backend)?;
            }
            let message = Message {
                offset,
                client_id: new.client_id,
                author: new.author,
                body: Some(new.body),
                format: new.format,
                created_ms: new.at_ms,
                edited_ms: None,
                deleted_ms: None,
                mentions: new.mentions,
                thread: new.thread,
                replies: None,
                reactions: Vec::new(),
            };
            let at = (new.space.as_str(), new.room.as_str(), room.rid);
            let event = event(txn, at, offset, EventKind::Message, message.clone())?;
            let sent = Sent {
                message,
                epoch: room.epoch,
                duplicate: false,
            };
            Ok((sent, Some(event)))
        })
        .await
    }

    async fn message(&self, space: &str, room: &str, offset: u64) -> StoreResult<Option<Message>> {
        let (space, room) = (space.to_owned(), room.to_owned());
        self.call(move |txn| match find_room(txn, &space, &room)? {
            Some(room) => find_message(txn, room.rid, offset),
            None => Ok(None),
        })
        .await
    }

    async fn edit(
        &self,
        space: &str,
        room: &str,
        offset: u64,
        body: String,
        format: String,
        at_ms: i64,
    ) -> StoreResult<ChatEvent> {
        let (space, room) = (space.to_owned(), room.to_owned());
        self.call_emitting(move |txn, writer| {
            let stream = writer.rooms.stream(txn, &space, &room)?;
            let mut message = find_message(txn, stream.rid, offset)?
                .filter(|m| m.deleted_ms.is_none())
                .ok_or_else(|| StoreError::NotFound(format!("message {offset}")))?;
            let old = message.body.take().expect("live messages have a body");
            let written = message.edited_ms.unwrap_or(message.created_ms);
            txn.prepare_cached(
                "INSERT INTO chat_revisions (rid, seq, rev, body, format, at_ms)
                 SELECT ?1, ?2, COALESCE(MAX(rev), 0) + 1, ?3, ?4, ?5
                 FROM chat_revisions WHERE rid = ?1 AND seq = ?2",
            )
            .and_then(|mut s| {
                s.execute(params![
                    stream.rid,
                    offset as i64,
                    old,
                    message.format,
                    written
                ])
            })
            .map_err(backend)?;
            txn.prepare_cached(
                "UPDATE chat_messages SET body = ?3, format = ?4, edited_ms = ?5
                 WHERE rid = ?1 AND seq = ?2",
            )
            .and_then(|mut s| s.execute(params![stream.rid, offset as i64, body, format, at_ms]))
            .map_err(backend)?;
            fts_remove(writer, stream.rid, offset);
            fts_add(writer, stream.rid, offset, body.clone());
            let at = writer
                .rooms
                .append(txn, stream, EventKind::Edit, Some(offset))?;
            message.body = Some(body);
            message.format = format;
            message.edited_ms = Some(at_ms);
            let room = (space.as_str(), room.as_str(), stream.rid);
            let event = event(txn, room, at, EventKind::Edit, message)?;
            Ok((event.clone(), Some(event)))
        })
        .await
    }

    async fn delete(
        &self,
        space: &str,
        room: &str,
        offset: u64,
        at_ms: i64,
    ) -> StoreResult<Option<ChatEvent>> {
        let (space, room) = (space.to_owned(), room.to_owned());
        self.call_emitting(move |txn, writer| {
            let stream = writer.rooms.stream(txn, &space, &room)?;
            let rid = stream.rid;
            let mut message = find_message(txn, rid, offset)?
                .ok_or_else(|| StoreError::NotFound(format!("message {offset}")))?;
            if message.deleted_ms.is_some() {
                return Ok((None, None));
            }
            txn.prepare_cached(
                "UPDATE chat_messages SET body = NULL, deleted_ms = ?3, mentions = NULL
                 WHERE rid = ?1 AND seq = ?2",
            )
            .and_then(|mut s| s.execute(params![rid, offset as i64, at_ms]))
            .map_err(backend)?;
            if let Some(root) = message.thread {
                summarize_thread(txn, rid, root)?;
            }
            fts_remove(writer, rid, offset);
            for table in ["chat_revisions", "chat_mentions", "chat_reactions"] {
                txn.prepare_cached(&format!("DELETE FROM {table} WHERE rid = ?1 AND seq = ?2"))
                    .and_then(|mut s| s.execute(params![rid, offset as i64]))
                    .map_err(backend)?;
            }
            let at = writer
                .rooms
                .append(txn, stream, EventKind::Delete, Some(offset))?;
            message.body = None;
            message.deleted_ms = Some(at_ms);
            message.mentions.clear();
            message.reactions.clear();
            let event = event(txn, (&space, &room, rid), at, EventKind::Delete, message)?;
            Ok((Some(event.clone()), Some(event)))
        })
        .await
    }

    async fn react(
        &self,
        space: &str,
        room: &str,
        offset: u64,
        emoji: &str,
        user: &str,
        add: bool,
        at_ms: i64,
    ) -> StoreResult<Option<ChatEvent>> {
        let (space, room) = (space.to_owned(), room.to_owned());
        let (emoji, user) = (emoji.to_owned(), user.to_owned());
        self.call_emitting(move |txn, writer| {
            let stream = writer.rooms.stream(txn, &space, &room)?;
            let rid = stream.rid;
            find_message(txn, rid, offset)?
                .filter(|m| m.deleted_ms.is_none())
                .ok_or_else(|| StoreError::NotFound(format!("message {offset}")))?;
            let changed = if add {
                txn.prepare_cached(
                    "INSERT OR IGNORE INTO chat_reactions (rid, seq, emoji, user, at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut s| s.execute(params![rid, offset as i64, emoji, user, at_ms]))
            } else {
                txn.prepare_cached(
                    "DELETE FROM chat_reactions WHERE rid = ?1 AND seq = ?2 AND emoji = ?3
                     AND user = ?4",
                )
                .and_then(|mut s| s.execute(params![rid, offset as i64, emoji, user]))
            }
            .map_err(backend)?;
            if changed == 0 {
                return Ok((None, None));
            }
            let at = writer
                .rooms
                .append(txn, stream, EventKind::Reaction, Some(offset))?;
            let message = find_message(txn, rid, offset)?.expect("found above");
            let event = event(txn, (&space, &room, rid), at, EventKind::Reaction, message)?;
            Ok((Some(event.clone()), Some(event)))
        })
        .await
    }

    async fn search(
        &self,
        space: &str,
        rooms: Vec<String>,
        query: SearchQuery,
    ) -> StoreResult<Vec<Hit>> {
        let space = space.to_owned();
        self.call(move |txn| {
            let mut keyed = Vec::with_capacity(rooms.len());
            for id in &rooms {
                if let Some(room) = find_room(txn, &space, id)? {
                    keyed.push(room);
                }
            }
            if keyed.is_empty() || query.terms.is_empty() {
                return Ok(Vec::new());
            }
            let ids: HashMap<i64, &str> =
                keyed.iter().map(|r| (r.rid, r.room.id.as_str())).collect();
            let filtered =
                query.author.is_some() || query.from_ms.is_some() || query.until_ms.is_some();
            // Without filters, FTS5 ranks and limits by itself (its `ORDER BY rank LIMIT`
            // path) and only the page is joined; with them, every match is joined first.
            // A message deleted earlier in this search's batch is still in the index until
            // the batch's end (`fts_remove`): skip it.
            let sql = if filtered {
                format!(
                    "SELECT f.rank, m.rid, {MESSAGE_COLUMNS}
                     FROM chat_fts f JOIN chat_messages m
                         ON m.rid = (f.rowid >> 40) AND m.seq = (f.rowid & 1099511627775)
                     WHERE chat_fts MATCH ?1 AND f.rowid BETWEEN ?7 AND ?8
                         AND m.deleted_ms IS NULL
                         AND (?2 IS NULL OR m.author = ?2)
                         AND (?3 IS NULL OR m.created_ms >= ?3)
                         AND (?4 IS NULL OR m.created_ms < ?4)
                     ORDER BY f.rank, m.seq DESC LIMIT ?5 OFFSET ?6"
                )
            } else {
                format!(
                    "SELECT f.rank, m.rid, {MESSAGE_COLUMNS}
                     FROM (SELECT rowid, rank FROM chat_fts WHERE chat_fts MATCH ?1
                           AND rowid BETWEEN ?7 AND ?8
                           AND ?2 IS NULL AND ?3 IS NULL AND ?4 IS NULL
                           ORDER BY rank LIMIT ?5 OFFSET ?6) f
                     JOIN chat_messages m
                         ON m.rid = (f.rowid >> 40) AND m.seq = (f.rowid & 1099511627775)
                     WHERE m.deleted_ms IS NULL
                     ORDER BY f.rank, m.seq DESC"
                )
            };
            let mut s = txn.prepare_cached(&sql).map_err(backend)?;
            let terms = format!("body : ({})", fts_terms(&query.terms));
            let mut select = |matching: &str, lo: i64, hi: i64, limit: usize, skip: usize| {
                s.query_map(
                    params![
                        matching,
                        query.author,
                        query.from_ms,
                        query.until_ms,
                        limit as i64,
                        skip as i64,
                        lo,
                        hi
                    ],
                    |row| Ok((row.get(0)?, row.get(1)?, message_row(row, 2)?)),
                )
                .and_then(Iterator::collect::<rusqlite::Result<Vec<(f64, i64, Message)>>>)
                .map_err(backend)
            };
            // A room's messages are a rowid range of the index, which FTS5 scans on its own,
            // and BM25 scores are comparable across queries on one index: a few rooms are
            // searched one by one and merged. Many rooms at once: the `scope` tokens pick
            // them inside the index.
            let rows = if keyed.len() <= PER_ROOM_SEARCH {
                let wanted = query.skip + query.limit;
                let mut rows = Vec::new();
                for room in &keyed {
                    let (lo, hi) = (fts_key(room.rid, 0), fts_key(room.rid, (1 << 40) - 1));
                    rows.extend(select(&terms, lo, hi, wanted, 0)?);
                }
                rows.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.2.offset.cmp(&a.2.offset)));
                rows.into_iter()
                    .skip(query.skip)
                    .take(query.limit)
                    .collect()
            } else {
                let scopes: Vec<String> = keyed.iter().map(|r| fts_scope(r.rid)).collect();
                let matching = format!("{terms} AND scope : ({})", scopes.join(" OR "));
                select(&matching, i64::MIN, i64::MAX, query.limit, query.skip)?
            };
            let mut hits = Vec::with_capacity(rows.len());
            for (rank, rid, mut message) in rows {
                fill_reactions(txn, rid, std::slice::from_mut(&mut message))?;
                hits.push(Hit {
                    room: ids.get(&rid).map_or_else(String::new, |id| id.to_string()),
                    score: -rank,
                    message,
                });
            }
            Ok(hits)
        })
        .await
    }

    async fn revisions(&self, space: &str, room: &str, offset: u64) -> StoreResult<Vec<Revision>> {
        let (space, room) = (space.to_owned(), room.to_owned());
        self.call(move |txn| {
            let Some(room) = find_room(txn, &space, &room)? else {
                return Ok(Vec::new());
            };
            let mut s = txn
                .prepare_cached(
                    "SELECT body, format, at_ms FROM chat_revisions
                     WHERE rid = ?1 AND seq = ?2 ORDER BY rev",
                )
                .map_err(backend)?;
            s.query_map(params![room.rid, offset as i64], |row| {
                Ok(Revision {
                    body: row.get(0)?,
                    format: row.get(1)?,
                    at_ms: row.get(2)?,
                })
            })
            .and_then(Iterator::collect)
            .map_err(backend)
        })
        .await
    }

    async fn history(
        &self,
        space: &str,
        room: &str,
        page: Page,
    ) -> StoreResult<(Vec<Message>, bool)> {
        let (space, room) = (space.to_owned(), room.to_owned());
        self.call(move |txn| {
            let Some(room) = find_room(txn, &space, &room)? else {
                return Ok((Vec::new(), false));
            };
            let before = page
                .before
                .map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
            // One more than asked tells whether the page is the last in its direction.
            let fetch = page.limit.saturating_add(1).min(i64::MAX as usize) as i64;
            // Top-level messages walk the primary key; a thread's replies its index.
            let filter = if page.thread.is_some() {
                "m.thread = ?5"
            } else {
                "m.thread IS NULL AND ?5 IS NULL"
            };
            let (order, after) = match page.after {
                Some(after) => ("ASC", after.min(i64::MAX as u64) as i64),
                None => ("DESC", 0),
            };
            let sql = format!(
                "SELECT {MESSAGE_COLUMNS} FROM chat_messages m
                 WHERE m.rid = ?1 AND m.seq > ?2 AND m.seq < ?3 AND {filter}
                 ORDER BY m.seq {order} LIMIT ?4"
            );
            let thread = page.thread.map(|t| t.min(i64::MAX as u64) as i64);
            let mut s = txn.prepare_cached(&sql).map_err(backend)?;
            let mut messages: Vec<Message> = s
                .query_map(params![room.rid, after, before, fetch, thread], |r| {
                    message_row(r, 0)
                })
                .and_then(Iterator::collect)
                .map_err(backend)?;
            fill_reactions(txn, room.rid, &mut messages)?;
            let more = messages.len() > page.limit;
            messages.truncate(page.limit);
            if page.after.is_none() {
                messages.reverse();
            }
            Ok((messages, more))
        })
        .await
    }

    async fn mark_read(
        &self,
        space: &str,
        room: &str,
        user: &str,
        offset: u64,
        at_ms: i64,
    ) -> StoreResult<(ReadState, bool)> {
        let (space, room, user) = (space.to_owned(), room.to_owned(), user.to_owned());
        self.call(move |txn| {
            let room = need_room(txn, &space, &room)?;
            let offset = offset.min(room.room.head);
            let moved = offset > last_read(txn, room.rid, &user)?;
            if moved {
                txn.prepare_cached(
                    "INSERT INTO chat_reads (rid, user, seq, at_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (rid, user) DO UPDATE SET seq = excluded.seq, at_ms = excluded.at_ms",
                )
                .and_then(|mut s| s.execute(params![room.rid, user, offset as i64, at_ms]))
                .map_err(backend)?;
            }
            Ok((read_state(txn, &room, &user)?, moved))
        })
        .await
    }

    async fn read_states(&self, space: &str, user: &str) -> StoreResult<Vec<ReadState>> {
        let (space, user) = (space.to_owned(), user.to_owned());
        self.call(move |txn| {
            let rooms: Vec<Keyed> = txn
                .prepare_cached(&format!(
                    "SELECT {ROOM_COLUMNS} FROM rooms
                     WHERE space = ?1 AND rid IN (SELECT rid FROM room_members WHERE user = ?2)
                     ORDER BY id"
                ))
                .and_then(|mut s| s.query_map([&space, &user], room_row)?.collect())
                .map_err(backend)?;
            rooms
                .iter()
                .map(|room| read_state(txn, room, &user))
                .collect()
        })
        .await
    }

    async fn receipts(&self, space: &str, room: &str) -> StoreResult<Vec<Receipt>> {
        let (space, room) = (space.to_owned(), room.to_owned());
        self.call(move |txn| {
            let Some(room) = find_room(txn, &space, &room)? else {
                return Ok(Vec::new());
            };
            let mut s = txn
                .prepare_cached(
                    "SELECT user, seq, at_ms FROM chat_reads WHERE rid = ?1 AND seq > 0
                     ORDER BY user",
                )
                .map_err(backend)?;
            s.query_map([room.rid], |row| {
                Ok(Receipt {
                    user: row.get(0)?,
                    offset: row.get::<_, i64>(1)? as u64,
                    at_ms: row.get(2)?,
                })
            })
            .and_then(Iterator::collect)
            .map_err(backend)
        })
        .await
    }

    async fn events(
        &self,
        space: &str,
        room: &str,
        after: u64,
        limit: usize,
    ) -> StoreResult<(Vec<ChatEvent>, u64)> {
        let (space, room) = (space.to_owned(), room.to_owned());
        self.call(move |txn| {
            let Some(room) = find_room(txn, &space, &room)? else {
                return Ok((Vec::new(), 0));
            };
            let mut s = txn
                .prepare_cached(&format!(
                    "SELECT e.seq, e.kind, {MESSAGE_COLUMNS}
                     FROM chat_events e JOIN chat_messages m ON m.rid = e.rid AND m.seq = e.target
                     WHERE e.rid = ?1 AND e.seq > ?2 ORDER BY e.seq LIMIT ?3"
                ))
                .map_err(backend)?;
            let fetch = limit.min(i64::MAX as usize) as i64;
            let after = after.min(i64::MAX as u64) as i64;
            let mut events: Vec<ChatEvent> = s
                .query_map(params![room.rid, after, fetch], |row| {
                    let kind: String = row.get(1)?;
                    let kind = EventKind::parse(&kind).ok_or_else(|| {
                        let e = format!("unknown event kind {kind:?}").into();
                        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, e)
                    })?;
                    Ok(ChatEvent {
                        space: room.room.space.clone(),
                        room: room.room.id.clone(),
                        offset: row.get::<_, i64>(0)? as u64,
                        kind,
                        message: message_row(row, 2)?,
                        root: None,
                    })
                })
                .and_then(Iterator::collect)
                .map_err(backend)?;
            for event in &mut events {
                fill_reactions(txn, room.rid, std::slice::from_mut(&mut event.message))?;
                add_root(txn, room.rid, event)?;
            }
            Ok((events, room.room.head))
        })
        .await
    }
}

fn upsert_room_member(txn: &Transaction<'_>, rid: i64, member: &RoomMember) -> StoreResult<()> {
    txn.prepare_cached(
        "INSERT INTO room_members (rid, user, org, role, joined_ms) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (rid, user) DO UPDATE SET org = excluded.org, role = excluded.role",
    )
    .and_then(|mut s| {
        s.execute(params![
            rid,
            member.user,
            member.org,
            member.role.as_str(),
            member.joined_ms
        ])
    })
    .map(drop)
    .map_err(backend)
}

#[cfg(test)]
mod tests {
    use super::super::sqlite::tests::Hold;
    use super::*;
    use crate::store::contract;

    fn open(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(&dir.path().join("chorus.db")).expect("open store")
    }

    #[tokio::test]
    async fn rooms_and_room_members() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        contract::rooms_and_room_members(&store, &store).await;
    }

    #[tokio::test]
    async fn meeting_modes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        contract::meeting_modes(&store, &store).await;
    }

    #[tokio::test]
    async fn messages_offsets_and_idempotent_sends() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        contract::messages_offsets_and_idempotent_sends(&store, &store).await;
    }

    #[tokio::test]
    async fn edits_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        contract::edits_and_deletes(&store, &store).await;
    }

    #[tokio::test]
    async fn read_state_and_mentions() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        contract::read_state_and_mentions(&store, &store).await;
    }

    #[tokio::test]
    async fn threads_and_reactions() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        contract::threads_and_reactions(&store, &store).await;
    }

    #[tokio::test]
    async fn direct_conversations() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        contract::direct_conversations(&store, &store).await;
    }

    #[tokio::test]
    async fn search_within_rooms() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        contract::search_within_rooms(&store, &store).await;
    }

    #[tokio::test]
    async fn history_pages() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        contract::history_pages(&store, &store).await;
    }

    #[tokio::test]
    async fn feed_sees_commits_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        contract::feed_sees_commits_in_order(&store, &store).await;
    }

    #[tokio::test]
    async fn leaving_the_space_leaves_its_rooms() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        contract::leaving_the_space_leaves_its_rooms(&store, &store).await;
    }

    #[tokio::test]
    async fn chat_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        contract::chat_survives_reopen(&|| {
            let store = Arc::new(open(&dir));
            (
                store.clone() as Arc<dyn crate::store::Store>,
                store as Arc<dyn ChatStore>,
            )
        })
        .await;
    }

    /// A store with space `s` and room `r`, reporting to the returned feed.
    async fn with_room(dir: &tempfile::TempDir) -> (Arc<SqliteStore>, Arc<contract::Collect>) {
        let store = Arc::new(open(dir));
        let feed = Arc::new(contract::Collect::default());
        store.set_feed(feed.clone());
        crate::store::Store::create_space(&*store, contract::space("s", "acme"), "alice")
            .await
            .unwrap();
        let owner = contract::room_member("s", "r", "alice", Role::Owner);
        store
            .create_room(contract::room("s", "r", false), owner)
            .await
            .unwrap();
        (store, feed)
    }

    fn text(client_id: &str, body: &str) -> NewMessage {
        contract::text("s", "r", "alice", client_id, body)
    }

    /// The offsets of room `r`'s stream, and its head.
    async fn stream(store: &SqliteStore) -> (Vec<u64>, u64) {
        let (events, head) = store.events("s", "r", 0, 100).await.unwrap();
        (events.iter().map(|e| e.offset).collect(), head)
    }

    /// Queues a job, in `mode`, that appends to room `r` and then fails.
    async fn failing_append(store: &SqliteStore, mode: Mode) -> Queued<()> {
        let job = |txn: &Transaction<'_>, writer: &mut Writer| {
            let room = writer.rooms.stream(txn, "s", "r")?;
            writer.rooms.append(txn, room, EventKind::Message, None)?;
            Err(StoreError::Backend("fails after appending".into()))
        };
        store.queue_emitting(mode, job).await.unwrap()
    }

    /// The offsets of the events `feed` was given.
    fn fed(feed: &contract::Collect) -> Vec<u64> {
        feed.0.lock().unwrap().iter().map(|e| e.offset).collect()
    }

    /// Sends with one client id in one batch: the first appends, the later ones find it, as
    /// does a retry of a message committed in an earlier batch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn duplicates_within_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (store, feed) = with_room(&dir).await;
        store.send(text("a", "before")).await.unwrap();

        let hold = Hold::new(&store).await;
        let first = store.queue_send(text("b", "one")).await.unwrap();
        let again = store.queue_send(text("b", "two")).await.unwrap();
        let other = store.queue_send(text("c", "three")).await.unwrap();
        let retry = store.queue_send(text("a", "before")).await.unwrap();
        hold.release(&store, 4).await;

        let sent = |s: Sent| (s.message.offset, s.message.body.unwrap(), s.duplicate);
        assert_eq!(sent(first.await.unwrap()), (2, "one".into(), false));
        assert_eq!(sent(again.await.unwrap()), (2, "one".into(), true));
        assert_eq!(sent(other.await.unwrap()), (3, "three".into(), false));
        assert_eq!(sent(retry.await.unwrap()), (1, "before".into(), true));
        assert_eq!(fed(&feed), [1, 2, 3]);
        assert_eq!(stream(&store).await, (vec![1, 2, 3], 3));
    }

    /// A job that appends and then fails is rolled back to its SAVEPOINT, and the head the
    /// store thread keeps with it: the next send in the batch takes the same offset.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn failed_job_gives_back_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = with_room(&dir).await;
        store.send(text("a", "one")).await.unwrap();

        let hold = Hold::new(&store).await;
        let failed = failing_append(&store, Mode::Isolated).await;
        let next = store.queue_send(text("b", "two")).await.unwrap();
        hold.release(&store, 2).await;

        assert!(matches!(failed.await, Err(StoreError::Backend(_))));
        assert_eq!(next.await.unwrap().message.offset, 2);
        assert_eq!(
            store.send(text("c", "three")).await.unwrap().message.offset,
            3
        );
        assert_eq!(stream(&store).await, (vec![1, 2, 3], 3));
    }

    /// An append (`Mode::Append`) that fails after writing takes its batch down with it:
    /// nothing of the batch is kept, cached heads included.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn failed_append_fails_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (store, feed) = with_room(&dir).await;
        store.send(text("a", "one")).await.unwrap();

        let hold = Hold::new(&store).await;
        let before = store.queue_send(text("b", "lost")).await.unwrap();
        let failed = failing_append(&store, Mode::Append).await;
        hold.release(&store, 2).await;

        assert!(matches!(before.await, Err(StoreError::Backend(_))));
        assert!(matches!(failed.await, Err(StoreError::Backend(_))));
        assert_eq!(
            store.send(text("c", "two")).await.unwrap().message.offset,
            2
        );
        assert_eq!(fed(&feed), [1, 2]);
        assert_eq!(stream(&store).await, (vec![1, 2], 2));
    }

    /// A batch that fails at its end is rolled back whole, heads included: the store thread
    /// forgets what it cached, and the next send takes the offset the lost one had.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn failed_batch_forgets_cached_heads() {
        let dir = tempfile::tempdir().unwrap();
        let (store, feed) = with_room(&dir).await;
        store.send(text("a", "one")).await.unwrap();

        let hold = Hold::new(&store).await;
        let lost = store.queue_send(text("b", "lost")).await.unwrap();
        let breaking = store.queue_emitting(Mode::Isolated, |_, writer: &mut Writer| {
            writer.defer(|txn| {
                txn.execute("INSERT INTO no_such_table VALUES (1)", [])
                    .map(drop)
            });
            Ok(((), None))
        });
        let breaking = breaking.await.unwrap();
        hold.release(&store, 2).await;

        assert!(matches!(lost.await, Err(StoreError::Backend(_))));
        assert!(matches!(breaking.await, Err(StoreError::Backend(_))));
        let next = store.send(text("c", "two")).await.unwrap();
        assert_eq!((next.message.offset, next.duplicate), (2, false));
        // The lost send was never acknowledged: a retry appends it.
        assert_eq!(
            store.send(text("b", "lost")).await.unwrap().message.offset,
            3
        );
        assert_eq!(fed(&feed), [1, 2, 3]);
        assert_eq!(stream(&store).await, (vec![1, 2, 3], 3));
    }

    /// The offsets of the messages of room `r` a search for `word` finds, best first.
    async fn found(store: &SqliteStore, word: &str) -> Vec<u64> {
        let query = SearchQuery {
            terms: vec![word.to_string()],
            author: None,
            from_ms: None,
            until_ms: None,
            limit: 10,
            skip: 0,
        };
        let hits = store.search("s", vec!["r".into()], query).await.unwrap();
        hits.into_iter().map(|h| h.message.offset).collect()
    }

    /// Migration 4 rebuilds the index of a database written before it from the live messages,
    /// without the copy of each body, and the index goes on taking sends, edits and deletes.
    #[tokio::test]
    async fn index_rebuilt_without_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chorus.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        for sql in &super::super::sqlite::MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(
            "PRAGMA user_version = 3;
             INSERT INTO spaces VALUES ('s', 'acme', 'S', 0);
             INSERT INTO members VALUES ('s', 'alice', 'acme', 'owner');
             INSERT INTO rooms (rid, space, id, name, private, archived, epoch, head,
                                created_by, created_ms)
                 VALUES (1, 's', 'r', 'R', 0, 0, 7, 3, 'alice', 0);
             INSERT INTO chat_messages (rid, seq, client_id, author, body, format, created_ms,
                                        deleted_ms)
                 VALUES (1, 1, 'a', 'alice', 'kept words', 'text', 0, NULL),
                        (1, 2, 'b', 'alice', NULL, 'text', 0, 5);
             INSERT INTO chat_events VALUES (1, 1, 'message', 1), (1, 2, 'message', 2),
                                            (1, 3, 'delete', 2);
             INSERT INTO chat_fts (rowid, body, scope) VALUES ((1 << 40) | 1, 'kept words', 'r1');",
        )
        .unwrap();
        drop(conn);

        let store = open(&dir);
        assert_eq!(found(&store, "words").await, [1]);
        assert_eq!(found(&store, "kept").await, [1]);
        store.send(text("c", "more words")).await.unwrap();
        store
            .edit("s", "r", 1, "changed".into(), "text".into(), 9)
            .await
            .unwrap();
        assert_eq!(found(&store, "words").await, [4]);
        assert_eq!(found(&store, "changed").await, [1]);
        store.delete("s", "r", 4, 10).await.unwrap();
        assert_eq!(found(&store, "words").await, Vec::<u64>::new());
        drop(store);
        let conn = rusqlite::Connection::open(&path).unwrap();
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'chat_fts_content'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0);
    }

    /// The index is written at the end of each batch, in job order: within one batch, a
    /// message sent and deleted is never found, one sent and edited is found by its new body
    /// only, and a search sees the index as it was before the batch, minus deleted messages.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn index_follows_each_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = with_room(&dir).await;
        store.send(text("0", "old news")).await.unwrap();
        assert_eq!(found(&store, "old").await, [1]);

        // One batch, queued in this order.
        let hold = Hold::new(&store).await;
        let gone = store.queue_send(text("1", "gone soon")).await.unwrap();
        let delete = |offset| {
            let store = store.clone();
            tokio::spawn(async move { store.delete("s", "r", offset, 10).await })
        };
        let deleted = delete(2);
        hold.queued(&store, 2).await;
        let draft = store.queue_send(text("2", "first draft")).await.unwrap();
        let edited = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .edit("s", "r", 4, "final text".into(), "plain".into(), 20)
                    .await
            }
        });
        hold.queued(&store, 4).await;
        let old_deleted = delete(1);
        hold.queued(&store, 5).await;
        let seen = tokio::spawn({
            let store = store.clone();
            async move { found(&store, "old").await }
        });
        hold.release(&store, 6).await;

        assert_eq!(gone.await.unwrap().message.offset, 2);
        assert_eq!(deleted.await.unwrap().unwrap().unwrap().offset, 3);
        assert_eq!(draft.await.unwrap().message.offset, 4);
        assert_eq!(edited.await.unwrap().unwrap().offset, 5);
        assert_eq!(old_deleted.await.unwrap().unwrap().unwrap().offset, 6);
        assert_eq!(seen.await.unwrap(), Vec::<u64>::new());
        for (word, expected) in [
            ("gone", vec![]),
            ("draft", vec![]),
            ("final", vec![4]),
            ("old", vec![]),
        ] {
            assert_eq!(found(&store, word).await, expected, "{word}");
        }
    }
}
