//! Durable state behind one port. SQLite in the data dir is the embedded default; other
//! implementations (PostgreSQL for scale-out) implement the same trait and pass the same tests.

#[cfg(test)]
mod contract;
#[cfg(test)]
mod model;
mod sqlite;
mod sqlite_chat;
mod sqlite_docs;

pub use sqlite::SqliteStore;

use crate::access::Role;
use serde::{Deserialize, Serialize};

/// A shared workspace owned by one organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Space {
    pub id: String,
    /// The owning organisation.
    pub org: String,
    pub name: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: i64,
}

/// A user's membership of a space. The key is (space, user); `org` is the user's home organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub space: String,
    pub user: String,
    pub org: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A record with this key exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The record the operation needs does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The database failed; the operation may be retried.
    #[error("storage failure: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A write that is queued in the store: it resolves to the write's result once its commit has
/// returned (the durability of the method that queued it).
pub type Queued<T> = std::pin::Pin<Box<dyn std::future::Future<Output = StoreResult<T>> + Send>>;

/// The persistence port. Every method returns only after its effect is durable.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Create a space and make `owner` (of the space's organisation) its owner, atomically.
    async fn create_space(&self, space: Space, owner: &str) -> StoreResult<()>;
    async fn space(&self, id: &str) -> StoreResult<Option<Space>>;
    /// The spaces `user` is a member of, by id.
    async fn spaces_of(&self, user: &str) -> StoreResult<Vec<Space>>;
    /// The memberships of `user` (whatever their organisation), by space id.
    async fn memberships_of(&self, user: &str) -> StoreResult<Vec<Member>>;
    /// Insert or update a membership. Fails with `NotFound` if the space does not exist.
    async fn put_member(&self, member: Member) -> StoreResult<()>;
    /// Remove a membership; returns whether it existed.
    async fn remove_member(&self, space: &str, user: &str) -> StoreResult<bool>;
    async fn member(&self, space: &str, user: &str) -> StoreResult<Option<Member>>;
    /// The members of a space, by user id.
    async fn members(&self, space: &str) -> StoreResult<Vec<Member>>;
}

/// A chat room inside a space; the key is (space, id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Room {
    pub space: String,
    pub id: String,
    pub name: String,
    /// Private rooms are visible to their members only; public ones to the whole space.
    pub private: bool,
    /// Archived rooms are read-only.
    pub archived: bool,
    /// A direct conversation: private, with a fixed set of members (`ChatStore::open_direct`).
    #[serde(default)]
    pub direct: bool,
    /// Identifies this life of the room's stream. Offsets only ever restart with a new epoch,
    /// which a client that resumes with an old one is told about.
    pub epoch: u64,
    /// Offset of the last event in the room's stream (0 before the first), as of the read.
    pub head: u64,
    pub created_by: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// How the room's meetings carry media.
    #[serde(default)]
    #[schema(value_type = String, example = "auto")]
    pub meeting_mode: MeetingSetting,
}

/// How a room's meetings carry media (`docs/protocol.md` 15.7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeetingSetting {
    /// By size: peer to peer, through the server (SFU) once a meeting is large
    /// (`meeting_sfu_participants`) or its space is (`meeting_sfu_from`).
    #[default]
    Auto,
    /// Always peer to peer.
    Mesh,
    /// Always through the server.
    Sfu,
}

impl MeetingSetting {
    pub fn as_str(self) -> &'static str {
        match self {
            MeetingSetting::Auto => "auto",
            MeetingSetting::Mesh => "mesh",
            MeetingSetting::Sfu => "sfu",
        }
    }

    pub fn parse(s: &str) -> Option<MeetingSetting> {
        [
            MeetingSetting::Auto,
            MeetingSetting::Mesh,
            MeetingSetting::Sfu,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

/// A user's membership of a room. `org` is the user's home organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoomMember {
    pub space: String,
    pub room: String,
    pub user: String,
    pub org: String,
    #[schema(value_type = String, example = "member")]
    pub role: Role,
    pub joined_ms: i64,
}

/// A message to append to a room's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub space: String,
    pub room: String,
    /// Chosen by the client; a second send with the same (room, author, client id) is the same
    /// message and appends nothing.
    pub client_id: String,
    pub author: String,
    pub body: String,
    /// `text` or `markdown`.
    pub format: String,
    /// The members of the room the body mentions (not the author).
    pub mentions: Vec<String>,
    /// The offset of the thread's root message, for a reply in a thread.
    pub thread: Option<u64>,
    pub at_ms: i64,
}

/// A thread, as its root message shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ThreadSummary {
    /// Replies not deleted.
    pub count: u64,
    /// The offset and time of the last of them.
    pub last_offset: u64,
    pub last_ms: i64,
}

/// One emoji's reactions to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reaction {
    pub emoji: String,
    pub count: u64,
    /// Who reacted, by user id.
    pub users: Vec<String>,
}

/// A message as it stands now: edited in place, or a tombstone once deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Message {
    /// Its position in the room's stream, assigned when it was sent; its id within the room.
    pub offset: u64,
    pub client_id: String,
    pub author: String,
    /// `None` once deleted.
    pub body: Option<String>,
    pub format: String,
    pub created_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_ms: Option<i64>,
    /// The room members it mentions, as sent (empty once deleted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
    /// The root's offset, for a reply in a thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<u64>,
    /// For a thread's root with replies: their count and the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replies: Option<ThreadSummary>,
    /// Reactions, by emoji (empty once deleted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reaction>,
}

/// What an event of a room's stream did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A new message, at the event's offset.
    Message,
    /// The message was edited.
    Edit,
    /// The message was deleted (it is a tombstone now).
    Delete,
    /// A reaction to the message was added or removed.
    Reaction,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::Edit => "edit",
            EventKind::Delete => "delete",
            EventKind::Reaction => "reaction",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        match s {
            "message" => Some(EventKind::Message),
            "edit" => Some(EventKind::Edit),
            "delete" => Some(EventKind::Delete),
            "reaction" => Some(EventKind::Reaction),
            _ => None,
        }
    }
}

/// One event of a room's stream. `message` is the state of the message the event concerns *as
/// of the read*, so replaying events shows no deleted body and applying them in any prefix
/// converges on the current state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatEvent {
    pub space: String,
    pub room: String,
    pub offset: u64,
    pub kind: EventKind,
    pub message: Message,
    /// When `message` is a reply: its thread's root, whose summary a reply or its deletion
    /// changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Message>,
}

/// The outcome of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub message: Message,
    pub epoch: u64,
    /// The client id had been sent before: `message` is the original and nothing was appended.
    pub duplicate: bool,
}

/// An earlier version of an edited message's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Revision {
    pub body: String,
    pub format: String,
    /// When this version was written (sent or edited), milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// A page of a room's messages: those with `after < offset < before`, at most `limit`. With
/// `after`, the page starts right after it; otherwise it ends right before `before` (or at the
/// newest). Pages are ordered by offset, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub limit: usize,
    /// `None`: the room's top-level messages; `Some(root)`: the replies in that thread.
    pub thread: Option<u64>,
}

/// Unread counts stop here: a room shows "1000 or more".
pub const UNREAD_CAP: u64 = 1000;

/// Where a user is in a room: the last offset they read, and what came after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReadState {
    pub space: String,
    pub room: String,
    /// The room's last offset.
    pub head: u64,
    /// The offset the user has read up to (0: nothing).
    pub last_read: u64,
    /// Messages after `last_read` by others, not deleted; at most `UNREAD_CAP`.
    pub unread: u64,
    /// Of those, the ones mentioning the user; at most `UNREAD_CAP`.
    pub mentions: u64,
}

/// How far one member has read a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Receipt {
    pub user: String,
    pub offset: u64,
    pub at_ms: i64,
}

/// A full-text search within some rooms of a space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    /// Words that must all occur (matched as whole words, case- and accent-insensitively).
    pub terms: Vec<String>,
    /// Only messages by this user.
    pub author: Option<String>,
    /// Only messages created at or after / before these times (Unix milliseconds).
    pub from_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: usize,
    /// Hits to skip, for the following pages.
    pub skip: usize,
}

/// A message found by a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Hit {
    pub room: String,
    /// Relevance; higher is better (BM25).
    pub score: f64,
    pub message: Message,
}

/// Changes to apply to a room; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomUpdate {
    pub name: Option<String>,
    pub archived: Option<bool>,
    pub meeting_mode: Option<MeetingSetting>,
}

/// Receives every committed chat event: exactly once, per room in offset order with no gaps,
/// after the COMMIT that made it durable returned and before the method that caused it returns.
/// It runs on the store's commit path, so it must not block.
pub trait ChatFeed: Send + Sync + 'static {
    fn committed(&self, event: &ChatEvent);
}

/// Chat persistence. Every room's events form one stream with offsets 1, 2, 3, … without gaps:
/// a send appends a `message` event, an edit an `edit` event, a delete a `delete` event.
#[async_trait::async_trait]
pub trait ChatStore: Send + Sync + 'static {
    /// Set where committed events go. Set once, before the first write; later calls are ignored.
    fn set_feed(&self, feed: std::sync::Arc<dyn ChatFeed>);
    /// Create a room (its `head` is ignored: a new room's stream is empty) with `owner` as its
    /// first member. `AlreadyExists` if the id is taken in the space, `NotFound` if the space
    /// does not exist.
    async fn create_room(&self, room: Room, owner: RoomMember) -> StoreResult<()>;
    /// The direct conversation of `space` keyed by `key` (its member set, canonical), created
    /// as `room` with `members` if there is none. Returns the room and whether it was created.
    async fn open_direct(
        &self,
        room: Room,
        members: Vec<RoomMember>,
        key: String,
    ) -> StoreResult<(Room, bool)>;
    async fn room(&self, space: &str, id: &str) -> StoreResult<Option<Room>>;
    /// Every room of `space`, by id, with the role `user` holds in each.
    async fn rooms_of(&self, space: &str, user: &str) -> StoreResult<Vec<(Room, Option<Role>)>>;
    /// Apply `update`; returns the room as updated. `NotFound` if it does not exist.
    async fn update_room(&self, space: &str, id: &str, update: RoomUpdate) -> StoreResult<Room>;
    /// Insert or update a room membership. `NotFound` if the room does not exist.
    async fn put_room_member(&self, member: RoomMember) -> StoreResult<()>;
    /// Remove a room membership; returns whether it existed.
    async fn remove_room_member(&self, space: &str, room: &str, user: &str) -> StoreResult<bool>;
    /// The members of a room, by user id.
    async fn room_members(&self, space: &str, room: &str) -> StoreResult<Vec<RoomMember>>;
    /// Append a message, or find the one sent before with the same client id. `NotFound` if the
    /// room does not exist, or the thread's root does not exist, is deleted or is a reply.
    async fn send(&self, message: NewMessage) -> StoreResult<Sent>;
    /// `send` in two steps: returns once the message is queued, then the `Queued` resolves as
    /// `send` would. Messages queued one after another are appended in that order, so a
    /// caller may keep many in flight and still know their order in the room.
    async fn queue_send(&self, message: NewMessage) -> StoreResult<Queued<Sent>>;
    async fn message(&self, space: &str, room: &str, offset: u64) -> StoreResult<Option<Message>>;
    /// Replace a message's body, keeping the old one as a revision. `NotFound` if the message
    /// does not exist or is deleted.
    async fn edit(
        &self,
        space: &str,
        room: &str,
        offset: u64,
        body: String,
        format: String,
        at_ms: i64,
    ) -> StoreResult<ChatEvent>;
    /// Turn a message into a tombstone, erasing its body and revisions. `NotFound` if it does not
    /// exist; `None` (and no event) if it was deleted already.
    async fn delete(
        &self,
        space: &str,
        room: &str,
        offset: u64,
        at_ms: i64,
    ) -> StoreResult<Option<ChatEvent>>;
    /// Add (or, with `add` false, remove) `user`'s reaction `emoji` to a message. Returns the
    /// `reaction` event, or `None` if nothing changed. `NotFound` if the message does not exist
    /// or is deleted.
    #[allow(clippy::too_many_arguments)]
    async fn react(
        &self,
        space: &str,
        room: &str,
        offset: u64,
        emoji: &str,
        user: &str,
        add: bool,
        at_ms: i64,
    ) -> StoreResult<Option<ChatEvent>>;
    /// The messages of `rooms` (of `space`) matching `query`, best first: deleted messages never
    /// match. Rooms that do not exist are ignored.
    async fn search(
        &self,
        space: &str,
        rooms: Vec<String>,
        query: SearchQuery,
    ) -> StoreResult<Vec<Hit>>;
    /// Earlier versions of a message, oldest first (empty once deleted).
    async fn revisions(&self, space: &str, room: &str, offset: u64) -> StoreResult<Vec<Revision>>;
    /// A page of messages, and whether more exist beyond it in its direction.
    async fn history(
        &self,
        space: &str,
        room: &str,
        page: Page,
    ) -> StoreResult<(Vec<Message>, bool)>;
    /// Record that `user` has read `room` up to `offset` (clamped to the head; never moving
    /// back). Returns the read state after it, and whether it moved. `NotFound` if the room
    /// does not exist.
    async fn mark_read(
        &self,
        space: &str,
        room: &str,
        user: &str,
        offset: u64,
        at_ms: i64,
    ) -> StoreResult<(ReadState, bool)>;
    /// `user`'s read state in every room of `space` they are a member of, by room id.
    async fn read_states(&self, space: &str, user: &str) -> StoreResult<Vec<ReadState>>;
    /// How far each user who read `room` has read it, by user.
    async fn receipts(&self, space: &str, room: &str) -> StoreResult<Vec<Receipt>>;
    /// Up to `limit` events after offset `after`, in order, and the room's head read in the
    /// same transaction (more follow if it is past the last event returned; 0: no such room).
    async fn events(
        &self,
        space: &str,
        room: &str,
        after: u64,
        limit: usize,
    ) -> StoreResult<(Vec<ChatEvent>, u64)>;
}

/// A co-edited document: a name in a space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DocRecord {
    /// Unique on the server: the name in `/yjs/{id}`.
    pub id: String,
    pub space: String,
    pub created_by: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: i64,
}

/// What a document is made of in the store: its latest snapshot (if it was ever compacted)
/// and the updates appended after it, oldest first, with the sequence number of the last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocContent {
    pub snapshot: Option<Vec<u8>>,
    pub updates: Vec<Vec<u8>>,
    /// The last update's sequence number (0: none yet).
    pub last_seq: i64,
}

/// Documents and their update logs. Yjs updates commute, so the order of appends does not
/// change the document they make.
#[async_trait::async_trait]
pub trait DocStore: Send + Sync + 'static {
    /// `AlreadyExists` if the id is taken, `NotFound` if the space does not exist.
    async fn create_doc(&self, doc: DocRecord) -> StoreResult<()>;
    async fn doc(&self, id: &str) -> StoreResult<Option<DocRecord>>;
    /// The documents of `space`, by id.
    async fn docs_in(&self, space: &str) -> StoreResult<Vec<DocRecord>>;
    /// Deletes the document and its content; false if there was none.
    async fn delete_doc(&self, id: &str) -> StoreResult<bool>;
    /// The document's snapshot and the updates after it.
    async fn load_doc(&self, id: &str) -> StoreResult<DocContent>;
    /// Appends an update (durable once this returns) and returns its sequence number.
    async fn append_doc_update(&self, id: &str, update: Vec<u8>) -> StoreResult<i64>;
    /// Replaces the snapshot with `snapshot`, which contains every update up to `upto_seq`,
    /// and drops those updates.
    async fn compact_doc(&self, id: &str, snapshot: Vec<u8>, upto_seq: i64) -> StoreResult<()>;
}
