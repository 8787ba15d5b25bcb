//! [`Presence`]: the core's state machine.

use crate::crdt::{Delta, Dot, Entry, Explicit, Stamp, Versions};
use crate::scope::{ScopeId, Scopes, Seen};
use crate::types::{
    Config, ConnId, Cursor, CustomStatus, Effect, Error, Millis, NodeId, RoomId, Scope,
    ScopeUpdate, SpaceId, Stats, Status, Typing, UserId,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// A user's presence as this node derives it from all of the user's entries, on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct View {
    pub status: Status,
    pub custom: Option<CustomStatus>,
    /// The union of the entries' spaces.
    pub spaces: BTreeSet<SpaceId>,
    /// The union of the entries' rooms; in the meeting if any device is.
    pub rooms: BTreeMap<RoomId, bool>,
}

#[derive(Default)]
pub(crate) struct UserRec {
    /// The user's live entries, on every node.
    dots: BTreeSet<Dot>,
    /// The view scopes were last told about; `None` is offline.
    view: Option<View>,
    /// The latest activity of any of the user's entries ever seen.
    last_seen: Millis,
    /// The deadline of the user's live timer: one per user, however often they change.
    timer: Option<Millis>,
}

/// A connection of this node.
struct Local {
    /// The connection's live entry.
    dot: Dot,
    /// Set once disconnected: the entry stays until then (the grace period).
    ghost_until: Option<Millis>,
    last_typing: Option<Millis>,
    subscriptions: BTreeSet<ScopeId>,
}

struct Typist {
    user: UserId,
    until: Millis,
}

/// A room's main stream (`None`) or one of its threads.
type Thread = (RoomId, Option<String>);

/// Deadlines. They are never cancelled: each is checked against the state when it fires, so a
/// stale one costs one look-up.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The user's derived status may change (idle, or an expiry).
    User(UserId),
    /// A disconnected connection's grace period ends.
    Ghost(ConnId),
    Typing(Thread, NodeId, ConnId),
    Node(NodeId),
    Scope(ScopeId),
}

/// The presence core of one node: who is online, where, and typing, for the subscribers of this
/// node; sans-IO.
///
/// The shell feeds it connection events and client requests (`handle_connect`,
/// `report_activity`, `set_status`, `subscribe`, …), other nodes' deltas, heartbeats and
/// state requests (`merge`, `handle_node_heartbeat`, `handle_state_request`), and deadlines (`handle_timeout`), each with the current
/// time; and it drains `poll_output` for deliveries, `poll_delta` for the bus, and asks
/// `poll_timeout` when to call `handle_timeout` next. The core never reads a clock.
///
/// # Privacy
///
/// The caller decides who belongs where; the core makes sure nobody sees more. The caller
/// supplies, for every connection, the spaces its user is a member of (`handle_connect`, from
/// the store, and `set_spaces` whenever a membership changes). From those the core enforces that
/// a subscriber only ever receives presence of users who share a space with it: a space or room
/// scope needs the subscriber's membership of the space, and shows only members of it; a user
/// list shows a listed user only while they share a space with the subscriber. Losing the
/// membership a subscription needs ends it (`Effect::Unsubscribed`).
///
/// # Delivery
///
/// Changes are applied at once, but delivered in flushes, at most one per
/// `Config::flush_interval`: each subscriber then gets one `Effect::Deliver` holding one update
/// per scope that changed, with each user's last state only. A reconnect storm therefore costs
/// each subscriber one message per flush, however many users it involves.
pub struct Presence {
    node: NodeId,
    config: Config,
    /// The version of this node's latest write.
    version: u64,
    /// The replicated state: every node's entries.
    pub(crate) state: Delta,
    /// This node's writes since the last `poll_delta`; kept only while there are peers.
    outgoing: Delta,
    /// Other nodes, and when they were last heard from.
    peers: HashMap<NodeId, Millis>,
    pub(crate) users: HashMap<UserId, UserRec>,
    locals: HashMap<ConnId, Local>,
    typing: BTreeMap<Thread, BTreeMap<(NodeId, ConnId), Typist>>,
    /// Threads whose typists changed since the last flush.
    typing_changed: BTreeSet<Thread>,
    scopes: Scopes,
    timers: BTreeSet<(Millis, Timer)>,
    last_flush: Option<Millis>,
    outputs: VecDeque<Effect>,
}

impl Presence {
    /// A core for `node`, with no connections.
    pub fn new(node: NodeId, config: Config) -> Presence {
        Presence {
            node,
            config,
            version: 0,
            state: Delta::default(),
            outgoing: Delta::default(),
            peers: HashMap::new(),
            users: HashMap::new(),
            locals: HashMap::new(),
            typing: BTreeMap::new(),
            typing_changed: BTreeSet::new(),
            scopes: Scopes::default(),
            timers: BTreeSet::new(),
            last_flush: None,
            outputs: VecDeque::new(),
        }
    }

    /// How much the core holds now. Counting the subscriptions walks the scopes: call it per
    /// metrics scrape, not per event.
    pub fn stats(&self) -> Stats {
        let (scopes, subscriptions) = self.scopes.counts();
        Stats {
            users: self.users.len(),
            connections: self.locals.len(),
            scopes,
            subscriptions,
        }
    }

    /// This node.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// A user's status as this node sees it now, for the server's own use (it ignores
    /// privacy: never forward it to a client).
    pub fn status(&self, user: &UserId) -> Status {
        self.users
            .get(user)
            .and_then(|rec| rec.view.as_ref())
            .map_or(Status::Offline, |view| view.status)
    }

    /// A connection of `user` was established (after `hello`). `spaces` are the spaces `user`
    /// is a member of; they decide who may see the user, and what the connection may
    /// subscribe to. The connection counts as active now, and takes the user's explicit status.
    pub fn handle_connect(
        &mut self,
        conn: ConnId,
        user: UserId,
        spaces: BTreeSet<SpaceId>,
        now: Millis,
    ) -> Result<(), Error> {
        if self.locals.contains_key(&conn) {
            return Err(Error::AlreadyConnected);
        }
        let explicit = self.best_explicit(&user).cloned().unwrap_or_default();
        let entry = Box::new(Entry {
            conn,
            user: user.clone(),
            spaces,
            rooms: BTreeMap::new(),
            last_active: now,
            explicit,
        });
        self.version += 1;
        let dot = Dot {
            node: self.node,
            version: self.version,
        };
        if !self.peers.is_empty() {
            self.outgoing.add(dot, entry.clone());
        }
        self.state.add(dot, entry);
        self.users.entry(user.clone()).or_default().dots.insert(dot);
        self.locals.insert(
            conn,
            Local {
                dot,
                ghost_until: None,
                last_typing: None,
                subscriptions: BTreeSet::new(),
            },
        );
        self.recompute(&user, now);
        Ok(())
    }

    /// The connection closed. Its subscriptions and typing end now; its presence lasts for the
    /// grace period, so a reconnect within it changes nothing anyone sees.
    pub fn handle_disconnect(&mut self, conn: ConnId, now: Millis) -> Result<(), Error> {
        let local = self.live_mut(conn)?;
        let subscriptions = std::mem::take(&mut local.subscriptions);
        for id in subscriptions {
            self.leave_scope(id, conn, now);
        }
        self.clear_typing(self.node, conn, |_| true);
        if self.config.grace == 0 {
            self.remove_local(conn, now);
        } else {
            let until = now + self.config.grace;
            self.live_mut(conn)?.ghost_until = Some(until);
            self.timers.insert((until, Timer::Ghost(conn)));
        }
        Ok(())
    }

    /// The client reports user activity (input, focus). Reports closer together than a tenth of
    /// the idle timeout are not recorded: they could only delay "away" by that tenth, and each
    /// recorded one is a replicated write.
    pub fn report_activity(&mut self, conn: ConnId, now: Millis) -> Result<(), Error> {
        let entry = self.entry(conn)?;
        if now < entry.last_active + self.config.idle_timeout / 10 {
            return Ok(());
        }
        self.write(conn, now, |entry| entry.last_active = now);
        Ok(())
    }

    /// The user sets their status on all their devices: `Some(Online | Away | Busy)` regardless
    /// of activity, until `until` if given; `None` goes back to deriving it from activity.
    ///
    /// Explicit and custom statuses live in the user's connection entries, so they last while
    /// the user has a connection on any node (grace periods included), and go with the last.
    /// A server that wants them to outlive that keeps them in its store and sets them again
    /// after `handle_connect`.
    pub fn set_status(
        &mut self,
        conn: ConnId,
        status: Option<Status>,
        until: Option<Millis>,
        now: Millis,
    ) -> Result<(), Error> {
        let user = self.entry(conn)?.user.clone();
        match status {
            Some(Status::Offline) => {
                return Err(Error::InvalidStatus("a user cannot set themselves offline"));
            }
            None if until.is_some() => {
                return Err(Error::InvalidStatus("only a status can have an expiry"));
            }
            _ if until.is_some_and(|until| until <= now) => {
                return Err(Error::InvalidStatus("the expiry has passed"));
            }
            _ => {}
        }
        let mut explicit = self.best_explicit(&user).cloned().unwrap_or_default();
        explicit.status = status;
        explicit.until = until;
        self.set_explicit(&user, explicit, now);
        Ok(())
    }

    /// The user sets (or with `None` clears) their custom status on all their devices.
    pub fn set_custom_status(
        &mut self,
        conn: ConnId,
        custom: Option<CustomStatus>,
        now: Millis,
    ) -> Result<(), Error> {
        let user = self.entry(conn)?.user.clone();
        if let Some(custom) = &custom {
            if custom.text.chars().count() > CustomStatus::MAX_TEXT {
                return Err(Error::InvalidStatus("the text is too long"));
            }
            if custom
                .emoji
                .as_ref()
                .is_some_and(|emoji| emoji.chars().count() > CustomStatus::MAX_EMOJI)
            {
                return Err(Error::InvalidStatus("the emoji is too long"));
            }
            if custom.expires.is_some_and(|expires| expires <= now) {
                return Err(Error::InvalidStatus("the expiry has passed"));
            }
        }
        let mut explicit = self.best_explicit(&user).cloned().unwrap_or_default();
        explicit.custom = custom;
        self.set_explicit(&user, explicit, now);
        Ok(())
    }

    /// `user`'s memberships changed (a space was joined or left): `spaces` is the whole new
    /// set. Applies to the user's connections on this node; subscriptions and rooms they no
    /// longer have access to end.
    pub fn set_spaces(&mut self, user: &UserId, spaces: BTreeSet<SpaceId>, now: Millis) {
        for conn in self.local_conns(user) {
            let lost: Vec<ScopeId> = self.locals[&conn]
                .subscriptions
                .iter()
                .copied()
                .filter(|&id| match self.scopes.scope(id) {
                    Scope::Space(space) => !spaces.contains(space),
                    Scope::Room(room) => !spaces.contains(&room.space),
                    Scope::Users(_) => false,
                })
                .collect();
            for id in lost {
                let local = self.locals.get_mut(&conn).expect("local_conns are local");
                local.subscriptions.remove(&id);
                let scope = self.scopes.scope(id).clone();
                self.outputs.push_back(Effect::Unsubscribed {
                    subscriber: conn,
                    scope,
                });
                self.leave_scope(id, conn, now);
            }
            self.clear_typing(self.node, conn, |room| !spaces.contains(&room.space));
            if self.state.entries[&self.locals[&conn].dot].spaces != spaces {
                self.write(conn, now, |entry| {
                    entry.rooms.retain(|room, _| spaces.contains(&room.space));
                    entry.spaces = spaces.clone();
                });
            }
        }
    }

    /// The connection entered a room (of a space its user is a member of).
    pub fn join_room(&mut self, conn: ConnId, room: RoomId, now: Millis) -> Result<(), Error> {
        let entry = self.entry(conn)?;
        if !entry.spaces.contains(&room.space) {
            return Err(Error::NotMember);
        }
        if entry.rooms.contains_key(&room) {
            return Ok(());
        }
        if entry.rooms.len() >= self.config.max_rooms {
            return Err(Error::TooMany("rooms"));
        }
        self.write(conn, now, |entry| {
            entry.rooms.insert(room, false);
        });
        Ok(())
    }

    /// The connection left a room (and its meeting, and stopped typing there).
    pub fn leave_room(&mut self, conn: ConnId, room: &RoomId, now: Millis) -> Result<(), Error> {
        if !self.entry(conn)?.rooms.contains_key(room) {
            return Err(Error::NotInRoom);
        }
        self.clear_typing(self.node, conn, |r| r == room);
        self.write(conn, now, |entry| {
            entry.rooms.remove(room);
        });
        Ok(())
    }

    /// The connection joined (`true`) or left the meeting of a room it is in.
    pub fn set_in_meeting(
        &mut self,
        conn: ConnId,
        room: &RoomId,
        in_meeting: bool,
        now: Millis,
    ) -> Result<(), Error> {
        match self.entry(conn)?.rooms.get(room) {
            None => Err(Error::NotInRoom),
            Some(&current) if current == in_meeting => Ok(()),
            Some(_) => {
                self.write(conn, now, |entry| {
                    entry.rooms.insert(room.clone(), in_meeting);
                });
                Ok(())
            }
        }
    }

    /// The user types in a room the connection is in (`thread: None` for the room itself).
    /// Shows until `Config::typing_timeout` passes without another call. At most one call per
    /// `Config::typing_interval` is accepted per connection. Typing is never replicated in
    /// deltas: another node's typing arrives through `handle_remote_typing`.
    pub fn typing(
        &mut self,
        conn: ConnId,
        room: &RoomId,
        thread: Option<&str>,
        now: Millis,
    ) -> Result<(), Error> {
        let entry = self.entry(conn)?;
        if !entry.rooms.contains_key(room) {
            return Err(Error::NotInRoom);
        }
        let user = entry.user.clone();
        let interval = self.config.typing_interval;
        let local = self.live_mut(conn)?;
        if local.last_typing.is_some_and(|last| now < last + interval) {
            return Err(Error::RateLimited);
        }
        local.last_typing = Some(now);
        let thread = (room.clone(), thread.map(str::to_owned));
        self.add_typist(thread, self.node, conn, user, now);
        Ok(())
    }

    /// Another node accepted a `typing` call (the bus forwards it, as an ephemeral message).
    /// Trusted: that node checked the room and the rate.
    pub fn handle_remote_typing(
        &mut self,
        node: NodeId,
        conn: ConnId,
        user: UserId,
        room: RoomId,
        thread: Option<String>,
        now: Millis,
    ) {
        if node != self.node {
            self.add_typist((room, thread), node, conn, user, now);
        }
    }

    /// Subscribes the connection to `scope`, and returns what it needs to start: a snapshot
    /// (`snapshot: true`), or, when `resume` names a position this scope's log still covers,
    /// the changes since then. Updates follow in `Effect::Deliver`s, with offsets counting on
    /// from the returned one. Subscribing again to the same scope just replies again.
    ///
    /// A space or room scope needs the connection's user to be a member of the space
    /// (`Error::NotMember` otherwise, which clients see as `not_found`).
    pub fn subscribe(
        &mut self,
        conn: ConnId,
        scope: Scope,
        resume: Option<Cursor>,
        now: Millis,
    ) -> Result<ScopeUpdate, Error> {
        let entry = self.entry(conn)?;
        match &scope {
            Scope::Space(space) if !entry.spaces.contains(space) => return Err(Error::NotMember),
            Scope::Room(room) if !entry.spaces.contains(&room.space) => {
                return Err(Error::NotMember);
            }
            Scope::Users(list) if list.len() > self.config.max_scope_users => {
                return Err(Error::TooMany("users in the list"));
            }
            _ => {}
        }
        let viewer = entry.user.clone();
        let viewer_spaces = self.users[&viewer]
            .view
            .as_ref()
            .expect("a user with a live entry has a view")
            .spaces
            .clone();
        let users = self.users.iter().map(|(user, rec)| (user, seen(rec)));
        let id = self
            .scopes
            .get_or_create(scope, &viewer, &viewer_spaces, users, now);
        self.scopes.subscribe(id, conn);
        self.live_mut(conn)?.subscriptions.insert(id);
        let typing = match self.scopes.scope(id) {
            Scope::Room(room) => self.room_typing(room),
            _ => Vec::new(),
        };
        Ok(self.scopes.reply(id, resume, typing))
    }

    /// Ends the connection's subscription to `scope`.
    pub fn unsubscribe(&mut self, conn: ConnId, scope: &Scope, now: Millis) -> Result<(), Error> {
        let scopes = &self.scopes;
        let local = self
            .locals
            .get_mut(&conn)
            .filter(|local| local.ghost_until.is_none())
            .ok_or(Error::UnknownConnection)?;
        let id = local
            .subscriptions
            .iter()
            .copied()
            .find(|&id| scopes.scope(id) == scope)
            .ok_or(Error::NotSubscribed)?;
        local.subscriptions.remove(&id);
        self.leave_scope(id, conn, now);
        Ok(())
    }

    /// Another node is alive (its heartbeat, or any message from it, arrived). A node not heard
    /// from for `Config::node_timeout` is dead, and its entries go. For a node heard from for
    /// the first time (or again after being declared dead), the core asks for its whole state
    /// (`Effect::RequestState`), since it may have missed any of its earlier deltas.
    pub fn handle_node_heartbeat(&mut self, node: NodeId, now: Millis) {
        if node == self.node {
            return;
        }
        if self.peers.insert(node, now).is_none() {
            self.outputs.push_back(Effect::RequestState { node });
        }
        self.timers
            .insert((now + self.config.node_timeout, Timer::Node(node)));
    }

    /// Another node asks for this node's whole state (its `Effect::RequestState`): returns it,
    /// for the shell to send back. The request counts as a heartbeat, and this node's deltas
    /// are kept for the bus from now on, so the requester misses nothing after the state.
    pub fn handle_state_request(&mut self, from: NodeId, now: Millis) -> Delta {
        self.handle_node_heartbeat(from, now);
        let mut state = Delta::default();
        for (dot, entry) in self.state.of_node(self.node) {
            state.entries.insert(*dot, entry.clone());
        }
        if self.version > 0 {
            state
                .context
                .insert(self.node, Versions::upto(self.version));
        }
        state
    }

    /// Joins another node's delta into the state. Commutative, associative and idempotent:
    /// deltas may come in any order, combined, or more than once. What it says about this
    /// node's own entries is ignored (this node is their only writer). Entries of a node not
    /// heard from before count as a heartbeat from it.
    pub fn merge(&mut self, delta: &Delta, now: Millis) {
        let new_nodes: BTreeSet<NodeId> = delta
            .entries
            .keys()
            .map(|dot| dot.node)
            .filter(|&node| node != self.node && !self.peers.contains_key(&node))
            .collect();
        for node in new_nodes {
            self.handle_node_heartbeat(node, now);
        }
        let users = &mut self.users;
        let mut touched = BTreeSet::new();
        self.state
            .join_except(delta, Some(self.node), |dot, entry, added| {
                let rec = users.entry(entry.user.clone()).or_default();
                if added {
                    rec.dots.insert(dot);
                } else {
                    rec.dots.remove(&dot);
                }
                touched.insert(entry.user.clone());
            });
        for user in touched {
            // Keep the user's explicit status alive here too, in case its writer's entries go.
            if let Some(best) = self.best_explicit(&user).cloned() {
                for conn in self.local_conns(&user) {
                    if self.state.entries[&self.locals[&conn].dot].explicit.stamp < best.stamp {
                        self.write(conn, now, |entry| entry.explicit = best.clone());
                    }
                }
            }
            self.recompute(&user, now);
        }
    }

    /// This node's changes since the last call, for the bus; `None` when there are none, and
    /// always while no other node is known (a single node pays nothing for the bus).
    pub fn poll_delta(&mut self) -> Option<Delta> {
        (!self.outgoing.is_empty()).then(|| std::mem::take(&mut self.outgoing))
    }

    /// Deadlines passed: grace periods, idleness, expiries, typing, dead nodes, unused scopes,
    /// and the flush of pending changes to subscribers.
    pub fn handle_timeout(&mut self, now: Millis) {
        while let Some((at, _)) = self.timers.first()
            && *at <= now
        {
            let (at, timer) = self.timers.pop_first().expect("first exists");
            match timer {
                Timer::User(user) => {
                    let Some(rec) = self.users.get_mut(&user) else {
                        continue;
                    };
                    if rec.timer == Some(at) {
                        rec.timer = None;
                        self.recompute(&user, now);
                    }
                }
                Timer::Ghost(conn) => {
                    let over = self.locals.get(&conn).and_then(|local| local.ghost_until);
                    if over.is_some_and(|until| until <= now) {
                        self.remove_local(conn, now);
                    }
                }
                Timer::Typing(thread, node, conn) => {
                    let typist = self.typing.get(&thread).and_then(|t| t.get(&(node, conn)));
                    if typist.is_some_and(|typist| typist.until <= now) {
                        self.remove_typist(&thread, node, conn);
                    }
                }
                Timer::Node(node) => {
                    let heard = self.peers.get(&node).copied();
                    if heard.is_some_and(|heard| heard + self.config.node_timeout <= now) {
                        self.purge_node(node, now);
                    }
                }
                Timer::Scope(id) => self.scopes.expire(id, now, self.config.scope_retention),
            }
        }
        if self.flush_due().is_some_and(|due| due <= now) {
            self.flush(now);
        }
    }

    /// When `handle_timeout` should be called next; it may be in the past (call it now).
    pub fn poll_timeout(&self) -> Option<Millis> {
        let timer = self.timers.first().map(|(at, _)| *at);
        match (timer, self.flush_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next effect to execute.
    pub fn poll_output(&mut self) -> Option<Effect> {
        self.outputs.pop_front()
    }

    /// When pending changes must be delivered: at once after a quiet interval, else one
    /// interval after the previous flush.
    fn flush_due(&self) -> Option<Millis> {
        let pending = self.scopes.is_dirty() || !self.typing_changed.is_empty();
        pending.then(|| {
            self.last_flush
                .map_or(0, |last| last + self.config.flush_interval)
        })
    }

    fn flush(&mut self, now: Millis) {
        let mut typing: BTreeMap<ScopeId, Vec<Typing>> = BTreeMap::new();
        for thread in std::mem::take(&mut self.typing_changed) {
            if let Some(id) = self.scopes.room(&thread.0) {
                let users = self.typists(&thread);
                typing.entry(id).or_default().push(Typing {
                    thread: thread.1,
                    users,
                });
            }
        }
        let batches = self.scopes.flush(typing, self.config.log_entries);
        for (subscriber, updates) in batches {
            self.outputs.push_back(Effect::Deliver {
                subscriber,
                updates,
            });
        }
        self.last_flush = Some(now);
    }

    /// A live (not disconnected) local connection.
    fn live_mut(&mut self, conn: ConnId) -> Result<&mut Local, Error> {
        self.locals
            .get_mut(&conn)
            .filter(|local| local.ghost_until.is_none())
            .ok_or(Error::UnknownConnection)
    }

    /// The entry of a live local connection.
    fn entry(&self, conn: ConnId) -> Result<&Entry, Error> {
        let local = self
            .locals
            .get(&conn)
            .filter(|local| local.ghost_until.is_none())
            .ok_or(Error::UnknownConnection)?;
        Ok(&self.state.entries[&local.dot])
    }

    /// The user's connections on this node, disconnected ones in their grace period included.
    fn local_conns(&self, user: &UserId) -> Vec<ConnId> {
        let Some(rec) = self.users.get(user) else {
            return Vec::new();
        };
        rec.dots
            .iter()
            .filter(|dot| dot.node == self.node)
            .map(|dot| self.state.entries[dot].conn)
            .collect()
    }

    /// The user's winning explicit status, over all their entries.
    fn best_explicit(&self, user: &UserId) -> Option<&Explicit> {
        let rec = self.users.get(user)?;
        rec.dots
            .iter()
            .map(|dot| &self.state.entries[dot].explicit)
            .max_by_key(|explicit| explicit.stamp)
    }

    /// Writes `explicit` into all the user's local entries, stamped to win over every status
    /// this node has seen.
    fn set_explicit(&mut self, user: &UserId, mut explicit: Explicit, now: Millis) {
        explicit.stamp = Stamp {
            at: now.max(explicit.stamp.at + 1),
            node: self.node,
            version: self.version + 1,
        };
        for conn in self.local_conns(user) {
            self.write(conn, now, |entry| entry.explicit = explicit.clone());
        }
    }

    /// Replaces a local connection's entry with a changed copy under a new dot.
    fn write(&mut self, conn: ConnId, now: Millis, change: impl FnOnce(&mut Entry)) {
        let local = self
            .locals
            .get_mut(&conn)
            .expect("callers check the connection");
        let old = local.dot;
        let mut entry = self
            .state
            .remove(old)
            .expect("a local connection's entry is live");
        change(&mut entry);
        self.version += 1;
        let dot = Dot {
            node: self.node,
            version: self.version,
        };
        local.dot = dot;
        if !self.peers.is_empty() {
            self.outgoing.remove(old);
            self.outgoing.add(dot, entry.clone());
        }
        let user = entry.user.clone();
        let rec = self.users.get_mut(&user).expect("entries have users");
        rec.dots.remove(&old);
        rec.dots.insert(dot);
        self.state.add(dot, entry);
        self.recompute(&user, now);
    }

    /// Removes a local connection and its entry for good.
    fn remove_local(&mut self, conn: ConnId, now: Millis) {
        let local = self
            .locals
            .remove(&conn)
            .expect("callers check the connection");
        let entry = self
            .state
            .remove(local.dot)
            .expect("a local connection's entry is live");
        if !self.peers.is_empty() {
            self.outgoing.remove(local.dot);
        }
        if let Some(rec) = self.users.get_mut(&entry.user) {
            rec.dots.remove(&local.dot);
        }
        self.recompute(&entry.user, now);
    }

    fn leave_scope(&mut self, id: ScopeId, conn: ConnId, now: Millis) {
        let retention = self.config.scope_retention;
        if let Some(at) = self.scopes.unsubscribe(id, conn, now, retention) {
            self.timers.insert((at, Timer::Scope(id)));
        }
    }

    /// A dead node's entries and typing go, and so does what the state has seen of it, so that
    /// if it comes back (a partition healed) its whole state is taken as it is then. A late
    /// delta of it counts as a sign of life, so its entries show for a node timeout at most.
    fn purge_node(&mut self, node: NodeId, now: Millis) {
        self.peers.remove(&node);
        self.state.context.remove(&node);
        if self.peers.is_empty() {
            self.outgoing = Delta::default();
        }
        let dots: Vec<Dot> = self.state.of_node(node).map(|(dot, _)| *dot).collect();
        let mut touched = BTreeSet::new();
        for dot in dots {
            let entry = self.state.entries.remove(&dot).expect("listed above");
            if let Some(rec) = self.users.get_mut(&entry.user) {
                rec.dots.remove(&dot);
            }
            touched.insert(entry.user);
        }
        let typists: Vec<(Thread, ConnId)> = self
            .typing
            .iter()
            .flat_map(|(thread, typists)| {
                typists
                    .keys()
                    .filter(|(n, _)| *n == node)
                    .map(|(_, conn)| (thread.clone(), *conn))
            })
            .collect();
        for (thread, conn) in typists {
            self.remove_typist(&thread, node, conn);
        }
        for user in touched {
            self.recompute(&user, now);
        }
    }

    /// Derives the user's view from their entries and, if it changed, tells the scopes.
    fn recompute(&mut self, user: &UserId, now: Millis) {
        let Some(rec) = self.users.get(user) else {
            return;
        };
        let entries: Vec<&Entry> = rec
            .dots
            .iter()
            .map(|dot| &*self.state.entries[dot])
            .collect();
        let (view, last_active, deadline) = aggregate(&entries, now, &self.config);
        let rec = self.users.get_mut(user).expect("found above");
        // A later deadline needs no timer of its own: the earlier one recomputes and
        // schedules it.
        if let Some(at) = deadline
            && rec.timer.is_none_or(|timer| at < timer)
        {
            rec.timer = Some(at);
            self.timers.insert((at, Timer::User(user.clone())));
        }
        rec.last_seen = rec.last_seen.max(last_active.unwrap_or(0));
        let last_seen = rec.last_seen;
        if rec.view == view {
            return;
        }
        let old = std::mem::replace(&mut rec.view, view);
        if rec.dots.is_empty() {
            self.users.remove(user);
        }
        let users = &self.users;
        let new = Seen {
            view: users.get(user).and_then(|rec| rec.view.as_ref()),
            last_seen,
        };
        let lookup = |other: &UserId| {
            users.get(other).map_or(
                Seen {
                    view: None,
                    last_seen: 0,
                },
                seen,
            )
        };
        self.scopes.route(user, old.as_ref(), &new, lookup);
    }

    fn add_typist(
        &mut self,
        thread: Thread,
        node: NodeId,
        conn: ConnId,
        user: UserId,
        now: Millis,
    ) {
        let until = now + self.config.typing_timeout;
        let typists = self.typing.entry(thread.clone()).or_default();
        if !typists.values().any(|typist| typist.user == user) {
            self.typing_changed.insert(thread.clone());
        }
        typists.insert((node, conn), Typist { user, until });
        self.timers
            .insert((until, Timer::Typing(thread, node, conn)));
    }

    fn remove_typist(&mut self, thread: &Thread, node: NodeId, conn: ConnId) {
        let Some(typists) = self.typing.get_mut(thread) else {
            return;
        };
        let Some(gone) = typists.remove(&(node, conn)) else {
            return;
        };
        if !typists.values().any(|typist| typist.user == gone.user) {
            self.typing_changed.insert(thread.clone());
        }
        if typists.is_empty() {
            self.typing.remove(thread);
        }
    }

    /// Ends a connection's typing in the rooms `which` selects.
    fn clear_typing(&mut self, node: NodeId, conn: ConnId, which: impl Fn(&RoomId) -> bool) {
        let threads: Vec<Thread> = self
            .typing
            .iter()
            .filter(|(thread, typists)| which(&thread.0) && typists.contains_key(&(node, conn)))
            .map(|(thread, _)| thread.clone())
            .collect();
        for thread in threads {
            self.remove_typist(&thread, node, conn);
        }
    }

    /// Who types in a thread, sorted, each user once.
    fn typists(&self, thread: &Thread) -> Vec<UserId> {
        let users: BTreeSet<&UserId> = self
            .typing
            .get(thread)
            .into_iter()
            .flat_map(|typists| typists.values().map(|typist| &typist.user))
            .collect();
        users.into_iter().cloned().collect()
    }

    /// Every thread of the room where someone types.
    fn room_typing(&self, room: &RoomId) -> Vec<Typing> {
        self.typing
            .range((room.clone(), None)..)
            .take_while(|((r, _), _)| r == room)
            .map(|(thread, _)| Typing {
                thread: thread.1.clone(),
                users: self.typists(thread),
            })
            .collect()
    }
}

fn seen(rec: &UserRec) -> Seen<'_> {
    Seen {
        view: rec.view.as_ref(),
        last_seen: rec.last_seen,
    }
}

/// A user's view from their entries at `now`, their latest activity, and when the view may
/// change by itself (idleness, an expiry).
fn aggregate(
    entries: &[&Entry],
    now: Millis,
    config: &Config,
) -> (Option<View>, Option<Millis>, Option<Millis>) {
    let Some(best) = entries
        .iter()
        .map(|entry| &entry.explicit)
        .max_by_key(|explicit| explicit.stamp)
    else {
        return (None, None, None);
    };
    let explicit = best
        .status
        .filter(|_| best.until.is_none_or(|until| now < until));
    let custom = best
        .custom
        .clone()
        .filter(|custom| custom.expires.is_none_or(|expires| now < expires));
    let idle_at = |entry: &Entry| entry.last_active.saturating_add(config.idle_timeout);
    let active = entries.iter().any(|entry| now < idle_at(entry));
    let status = explicit.unwrap_or(if active { Status::Online } else { Status::Away });

    let mut deadlines: Vec<Millis> = Vec::new();
    match explicit {
        Some(_) => deadlines.extend(best.until),
        None => deadlines.extend(entries.iter().map(|entry| idle_at(entry))),
    }
    deadlines.extend(custom.as_ref().and_then(|custom| custom.expires));
    let deadline = deadlines.into_iter().filter(|&at| at > now).min();

    let mut spaces = BTreeSet::new();
    let mut rooms: BTreeMap<RoomId, bool> = BTreeMap::new();
    for entry in entries {
        spaces.extend(entry.spaces.iter().cloned());
        for (room, &in_meeting) in &entry.rooms {
            *rooms.entry(room.clone()).or_default() |= in_meeting;
        }
    }
    let last_active = entries.iter().map(|entry| entry.last_active).max();
    let view = View {
        status,
        custom,
        spaces,
        rooms,
    };
    (Some(view), last_active, deadline)
}
