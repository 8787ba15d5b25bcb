//! Presence, sans-IO: who is online, where, and typing; interest-scoped, multi-device,
//! storm-proof, and mergeable across nodes.
//!
//! [`Presence`] is the whole core. The shell that owns it (a task of the server) feeds it
//! inputs with the current time and drains its outputs:
//!
//! ```
//! use presence::{Config, ConnId, Effect, NodeId, Presence, Scope, UserId};
//!
//! let mut core = Presence::new(NodeId(1), Config::default());
//! let spaces = ["acme-eng".to_string()].into();
//! let now = 1_700_000_000_000;
//! core.handle_connect(ConnId(1), UserId::new("acme", "alice"), spaces, now).unwrap();
//! let snapshot = core
//!     .subscribe(ConnId(1), Scope::Space("acme-eng".into()), None, now)
//!     .unwrap();
//! assert_eq!(snapshot.entries.len(), 1); // alice sees herself
//!
//! // The shell's loop: after each input, run the deadlines that passed, then drain.
//! while core.poll_timeout().is_some_and(|at| at <= now) {
//!     core.handle_timeout(now);
//! }
//! while let Some(effect) = core.poll_output() {
//!     match effect {
//!         Effect::Deliver { subscriber, updates } => { /* encode, queue to `subscriber` */ }
//!         Effect::Unsubscribed { subscriber, scope } => { /* tell the client */ }
//!         Effect::RequestState { node } => { /* ask `node` over the bus */ }
//!     }
//! }
//! ```
//!
//! How it fits together:
//!
//! * **State.** Each connection (device) has one replicated entry: its user, the user's
//!   spaces, the rooms it is in, its last activity, and the user's explicit status. A user's
//!   presence is derived from all their entries, on all nodes: online if any device was active
//!   within the idle timeout, away if none was, overridden by an explicit status while it lasts;
//!   offline when no entry is left. A disconnected entry stays for a grace period, so reconnects
//!   do not flap.
//! * **Scopes.** Subscribers watch a space, a room or a list of users, and get a snapshot and
//!   then updates, each with an `(epoch, offset)` to resume from. Visibility is decided from the
//!   spaces the caller supplies for each connection (see [`Presence`], "Privacy").
//! * **Batching.** Changes are delivered per flush interval, each subscriber getting at most one
//!   message per flush with each changed user's last state.
//! * **Nodes.** The entries form a delta-state CRDT ([`Delta`]); nodes exchange deltas and
//!   heartbeats over a bus, fetch a new peer's whole state once, and drop a silent node's
//!   entries after `Config::node_timeout`.
//!   On one node none of that costs anything.

mod crdt;
mod presence;
mod scope;
mod types;

pub use crdt::Delta;
pub use presence::Presence;
pub use types::{
    Config, ConnId, Cursor, CustomStatus, Effect, Error, Millis, NodeId, PresenceEntry, RoomId,
    Scope, ScopeUpdate, SpaceId, Stats, Status, Typing, UserId,
};

#[cfg(test)]
mod tests;
