//! The vocabulary of the presence core: identities, statuses, scopes, the updates subscribers
//! receive, the effects the shell executes, errors and configuration.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

/// A point in time or a duration, in milliseconds.
///
/// Points are milliseconds since the Unix epoch as the shell reads its wall clock. Wall time
/// rather than a monotonic clock, because times cross nodes (a device's last activity decides
/// its status on every node) and reach clients (`last_seen`, expiries, epochs).
pub type Millis = u64;

/// A space id, as the server's store knows it (`channel::is_id` in the server checks them).
pub type SpaceId = String;

/// One presence core: one server process.
///
/// Must be unique per process *life* (pick it at random at start-up): versions restart from 1
/// with every core, and two lives sharing an id would overwrite each other's entries.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct NodeId(pub u64);

/// A connection (a device) on one node: the session id of the server's `Session`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct ConnId(pub u64);

/// A user: an id within an organisation.
///
/// The organisation is part of the identity because a membership counts only for the
/// organisation it was granted to: `bob` of `evilcorp` must never light up `bob` of `globex`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserId {
    /// The user's home organisation (the token's `org`).
    pub org: String,
    /// The user's id (the token's `sub`).
    pub id: String,
}

impl UserId {
    /// A user id from its organisation and id.
    pub fn new(org: impl Into<String>, id: impl Into<String>) -> UserId {
        UserId {
            org: org.into(),
            id: id.into(),
        }
    }
}

/// A room: it lives in a space, whose members may see who is in it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RoomId {
    /// The space the room belongs to; decides who may see the room's presence.
    pub space: SpaceId,
    /// The room's id within the space.
    pub id: String,
}

impl RoomId {
    /// A room id from its space and id.
    pub fn new(space: impl Into<String>, id: impl Into<String>) -> RoomId {
        RoomId {
            space: space.into(),
            id: id.into(),
        }
    }
}

/// A user's availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Connected, and a device reported activity within the idle timeout (or the user said so).
    Online,
    /// Connected, but every device has been idle for the idle timeout (or the user said so).
    Away,
    /// Do not disturb; only ever set by the user.
    Busy,
    /// No device connected. In a scope's updates it also means "left this scope": left the room,
    /// or no longer shares a space with the subscriber; the subscriber cannot tell which.
    Offline,
}

/// A custom status line, e.g. "🌴 on holiday until Monday".
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CustomStatus {
    /// At most [`CustomStatus::MAX_TEXT`] characters.
    pub text: String,
    /// At most [`CustomStatus::MAX_EMOJI`] characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// When the core clears it by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Millis>,
}

impl CustomStatus {
    /// The longest text, in characters: a status line, not a message.
    pub const MAX_TEXT: usize = 100;
    /// The longest emoji, in characters (an emoji with modifiers, or a `:shortcode:`).
    pub const MAX_EMOJI: usize = 64;
}

/// What a subscriber watches. Every scope shows only users who share a space with the
/// subscriber: space and room scopes by construction (the subscriber must be a member of the
/// space), user lists by filtering each listed user.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every connected member of a space.
    Space(SpaceId),
    /// Who is in a room and its meeting, and who types in it.
    Room(RoomId),
    /// These users (at most [`Config::max_scope_users`]), as far as they share a space with the
    /// subscriber.
    Users(BTreeSet<UserId>),
}

/// A position in a scope's stream of updates, for resuming after a reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cursor {
    /// The scope's epoch: one continuous life of the scope's log in this core's memory.
    pub epoch: u64,
    /// The offset of the last update applied.
    pub offset: u64,
}

/// One user's presence as one scope shows it. Entries are states, not transitions: applying an
/// entry one already has changes nothing, so a subscriber may receive one twice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PresenceEntry {
    /// Whom the entry is about.
    pub user: UserId,
    /// `Offline` means gone from the scope (see [`Status::Offline`]).
    pub status: Status,
    /// The user's custom status, while it has not expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<CustomStatus>,
    /// In a room scope: whether the user is in the room's meeting. Always false elsewhere.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_meeting: bool,
    /// Only in `Offline` entries: the user's last activity. Online entries leave it out, so an
    /// activity report is not a change every subscriber must hear about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Millis>,
}

/// Who is typing in one thread of a room (`thread: None` is the room's main stream).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Typing {
    /// The thread; `None` for the room's main stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    /// Everyone typing there now, sorted; empty when the last one stopped.
    pub users: Vec<UserId>,
}

/// What one scope tells a subscriber: a snapshot, or the changes since its previous update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeUpdate {
    /// The scope as the subscriber named it.
    pub scope: Scope,
    /// Offsets count within an epoch; a new epoch means the scope's log started again.
    pub epoch: u64,
    /// The scope's offset after this update. Each update with entries advances it by one;
    /// typing never does (typing is not kept, so there is nothing to resume).
    pub offset: u64,
    /// True: `entries` is everyone visible in the scope (replace your view; users not listed are
    /// offline). False: `entries` are changes (an `Offline` entry removes a user).
    pub snapshot: bool,
    /// Sorted by user; each user at most once (the last state wins).
    pub entries: Vec<PresenceEntry>,
    /// Room scopes only: the threads whose typists changed, or in a snapshot every thread where
    /// someone types.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub typing: Vec<Typing>,
}

/// What the core wants the shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send these updates to a local subscriber, as one message. A subscriber gets at most one
    /// `Deliver` per flush, however many of its users changed.
    ///
    /// The updates are shared by every subscriber of their scope (`Arc`): a shell can encode
    /// each update once, keyed by its pointer, and reuse the bytes for every subscriber.
    Deliver {
        /// A local connection that subscribed.
        subscriber: ConnId,
        /// One update per scope of the subscriber that changed, in no particular order.
        updates: Vec<Arc<ScopeUpdate>>,
    },
    /// The subscription ended because the subscriber lost the membership it needs (e.g. it was
    /// removed from the scope's space). Tell the client; it gets no further updates.
    Unsubscribed {
        /// A local connection that subscribed.
        subscriber: ConnId,
        /// The scope as the subscriber named it.
        scope: Scope,
    },
    /// Ask `node` for its whole state: it is new to this node, or back after being declared
    /// dead. The shell sends the request over the bus; `node`'s core answers it with
    /// `Presence::handle_state_request`, and this node `merge`s the answer. Never happens on a
    /// single node.
    RequestState {
        /// The node to ask.
        node: NodeId,
    },
}

/// Why a request was refused. Each maps to a protocol error code; none closes a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The connection is not connected here (never was, or disconnected): a shell bug or a race
    /// with the disconnect. Protocol: `internal`.
    UnknownConnection,
    /// `handle_connect` for a connection that is connected already: a shell bug.
    /// Protocol: `internal`.
    AlreadyConnected,
    /// The subscriber is not a member of the scope's space, or the connection of the room's
    /// space. Protocol: `not_found`, so non-members cannot tell a space exists.
    NotMember,
    /// The connection has not joined the room. Protocol: `invalid_request`.
    NotInRoom,
    /// More typing events than `Config::typing_interval` allows; this one was dropped.
    /// Protocol: `rate_limited` (clients may simply ignore it).
    RateLimited,
    /// The status or custom status cannot be set, for the reason given. Protocol:
    /// `invalid_request`.
    InvalidStatus(&'static str),
    /// A user list longer than `Config::max_scope_users`, or a connection in more than
    /// `Config::max_rooms` rooms. Protocol: `invalid_request`.
    TooMany(&'static str),
    /// `unsubscribe` from a scope this connection is not subscribed to.
    /// Protocol: `not_subscribed`.
    NotSubscribed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnknownConnection => f.write_str("the connection is not connected"),
            Error::AlreadyConnected => f.write_str("the connection is connected already"),
            Error::NotMember => f.write_str("no such space"),
            Error::NotInRoom => f.write_str("the connection is not in that room"),
            Error::RateLimited => f.write_str("typing events come too fast; this one was dropped"),
            Error::InvalidStatus(why) => write!(f, "invalid status: {why}"),
            Error::TooMany(what) => write!(f, "too many {what}"),
            Error::NotSubscribed => f.write_str("not subscribed to that scope"),
        }
    }
}

impl std::error::Error for Error {}

/// Timings and bounds of a presence core; every field is meant to become a server config key.
/// Durations are in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// A device without activity reports for this long is idle; a user whose devices are all
    /// idle is away (unless they set a status). Default 5 minutes. Activity reports closer than
    /// a tenth of it to the previous one are not recorded, so away may come that much early.
    pub idle_timeout: Millis,
    /// How long a disconnected device still counts, so a reconnect within it shows no
    /// offline/online pair. Default 5 s.
    pub grace: Millis,
    /// Changes are delivered at most once per this interval per subscriber, coalesced. The
    /// first change after a quiet interval goes out at once. Default 500 ms, which keeps a storm
    /// at two messages per subscriber per second.
    pub flush_interval: Millis,
    /// A connection's typing events are accepted at most once per this interval. Default 1 s.
    pub typing_interval: Millis,
    /// A typing indicator disappears this long after its last refresh. Default 5 s.
    pub typing_timeout: Millis,
    /// Another node whose heartbeats stop for this long is dead: its connections go offline.
    /// Default 5 s (with heartbeats every second).
    pub node_timeout: Millis,
    /// How many entries each scope keeps in its log for resuming. Default 4,096.
    pub log_entries: usize,
    /// How long a scope without subscribers is kept (its log too), so subscribers reconnecting
    /// can resume. Default 60 s.
    pub scope_retention: Millis,
    /// The longest user list a `Scope::Users` may name. Default 1,000.
    pub max_scope_users: usize,
    /// The most rooms one connection may be in at once. Default 256.
    pub max_rooms: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            idle_timeout: 5 * 60 * 1000,
            grace: 5_000,
            flush_interval: 500,
            typing_interval: 1_000,
            typing_timeout: 5_000,
            node_timeout: 5_000,
            log_entries: 4_096,
            scope_retention: 60_000,
            max_scope_users: 1_000,
            max_rooms: 256,
        }
    }
}

/// How much the core holds now: for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Users with an entry (online, away, busy, or within a grace period), on any node.
    pub users: usize,
    /// This node's connections, lingering ones included.
    pub connections: usize,
    /// Scopes with their views kept (subscribed, or within their retention).
    pub scopes: usize,
    /// Subscriptions of this node's connections.
    pub subscriptions: usize,
}
