//! Scopes: what subscribers watch. Each scope keeps its current view (who is visible, in what
//! state), the changes since the last flush, and a bounded log of its recent updates for
//! resuming, and knows its local subscribers.
//!
//! A scope's content is the same for all its subscribers, so its updates are built once per
//! flush and shared. That holds because visibility depends only on the scope: a space scope
//! admits only members of the space and shows members of it; a room scope likewise for the
//! room's space; a user list shows the listed users who share a space with the *viewer*, so a
//! list scope belongs to one viewing user (all of that user's devices share it, and it outlives
//! a reconnect, which is what resuming needs).

use crate::presence::View;
use crate::types::{
    ConnId, Cursor, Millis, PresenceEntry, RoomId, Scope, ScopeUpdate, SpaceId, Status, Typing,
    UserId,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// A scope's handle inside the core; never shown to clients.
pub(crate) type ScopeId = u64;

/// A user as far as scopes care: the published view and the last activity.
pub(crate) struct Seen<'a> {
    pub view: Option<&'a View>,
    pub last_seen: Millis,
}

/// A user's entry as of the last flush, captured at the first change after it.
struct Changed {
    before: Option<PresenceEntry>,
    last_seen: Millis,
}

struct ScopeState {
    scope: Scope,
    /// The user whose list this is (`Scope::Users` only).
    viewer: Option<UserId>,
    /// The viewer's spaces, for user lists: a listed user shows only while they share one.
    viewer_spaces: BTreeSet<SpaceId>,
    epoch: u64,
    offset: u64,
    /// Everyone visible now, including changes not flushed yet.
    current: HashMap<UserId, PresenceEntry>,
    changed: HashMap<UserId, Changed>,
    /// Updates with offsets `offset - log.len() + 1 ..= offset`, holding at most
    /// `Config::log_entries` entries in all.
    log: VecDeque<Arc<ScopeUpdate>>,
    log_entries: usize,
    subscribers: BTreeSet<ConnId>,
    /// When the last subscriber left, while none is subscribed.
    idle_since: Option<Millis>,
}

impl ScopeState {
    /// How `user` appears in this scope; `None` when they do not.
    fn project(&self, user: &UserId, view: Option<&View>) -> Option<PresenceEntry> {
        let view = view?;
        let in_meeting = match &self.scope {
            Scope::Space(space) => {
                if !view.spaces.contains(space) {
                    return None;
                }
                false
            }
            Scope::Room(room) => {
                if !view.spaces.contains(&room.space) {
                    return None;
                }
                *view.rooms.get(room)?
            }
            Scope::Users(users) => {
                if !users.contains(user) || view.spaces.is_disjoint(&self.viewer_spaces) {
                    return None;
                }
                false
            }
        };
        Some(PresenceEntry {
            user: user.clone(),
            status: view.status,
            custom: view.custom.clone(),
            in_meeting,
            last_seen: None,
        })
    }

    /// Brings `user`'s entry up to date; returns whether it changed.
    fn touch(&mut self, user: &UserId, seen: &Seen) -> bool {
        let entry = self.project(user, seen.view);
        let current = self.current.get(user);
        if current == entry.as_ref() {
            if let Some(changed) = self.changed.get_mut(user) {
                changed.last_seen = seen.last_seen;
            }
            return false;
        }
        let before = current.cloned();
        self.changed
            .entry(user.clone())
            .or_insert(Changed {
                before,
                last_seen: 0,
            })
            .last_seen = seen.last_seen;
        match entry {
            Some(entry) => self.current.insert(user.clone(), entry),
            None => self.current.remove(user),
        };
        true
    }

    /// The entry a change leaves behind: the current one, or `Offline` for a user who left.
    fn after(&self, user: &UserId, last_seen: Millis) -> PresenceEntry {
        self.current.get(user).cloned().unwrap_or(PresenceEntry {
            user: user.clone(),
            status: Status::Offline,
            custom: None,
            in_meeting: false,
            last_seen: Some(last_seen),
        })
    }

    /// The net changes since the last flush, sorted by user. A user who changed and changed
    /// back (a flap within one interval) is not among them.
    fn take_changes(&mut self) -> Vec<PresenceEntry> {
        let mut entries: Vec<PresenceEntry> = std::mem::take(&mut self.changed)
            .into_iter()
            .filter(|(user, changed)| changed.before.as_ref() != self.current.get(user))
            .map(|(user, changed)| self.after(&user, changed.last_seen))
            .collect();
        entries.sort_unstable_by(|a, b| a.user.cmp(&b.user));
        entries
    }

    fn log_push(&mut self, update: Arc<ScopeUpdate>, limit: usize) {
        self.log_entries += update.entries.len();
        self.log.push_back(update);
        while self.log_entries > limit {
            let old = self
                .log
                .pop_front()
                .expect("entries are counted in the log");
            self.log_entries -= old.entries.len();
        }
    }

    /// What a (re)subscribing client needs: the changes it missed since `resume` if the log
    /// still holds all of them, a snapshot otherwise.
    fn reply(&self, resume: Option<Cursor>, typing: Vec<Typing>) -> ScopeUpdate {
        let oldest = self
            .log
            .front()
            .map_or(self.offset + 1, |update| update.offset);
        let missed = resume.filter(|cursor| {
            cursor.epoch == self.epoch
                && cursor.offset <= self.offset
                && cursor.offset + 1 >= oldest
        });
        let entries = match missed {
            Some(cursor) => {
                // Every logged update after the cursor, then what is not flushed yet; the last
                // state of each user wins.
                let mut missed: BTreeMap<&UserId, PresenceEntry> = BTreeMap::new();
                for update in self.log.iter().filter(|u| u.offset > cursor.offset) {
                    for entry in &update.entries {
                        missed.insert(&entry.user, entry.clone());
                    }
                }
                for (user, changed) in &self.changed {
                    missed.insert(user, self.after(user, changed.last_seen));
                }
                missed.into_values().collect()
            }
            None => {
                let mut entries: Vec<PresenceEntry> = self.current.values().cloned().collect();
                entries.sort_unstable_by(|a, b| a.user.cmp(&b.user));
                entries
            }
        };
        ScopeUpdate {
            scope: self.scope.clone(),
            epoch: self.epoch,
            offset: self.offset,
            snapshot: missed.is_none(),
            entries,
            typing,
        }
    }
}

/// Every scope of one core, and the indexes that route a user's change to its scopes.
#[derive(Default)]
pub(crate) struct Scopes {
    states: HashMap<ScopeId, ScopeState>,
    spaces: HashMap<SpaceId, ScopeId>,
    rooms: HashMap<RoomId, ScopeId>,
    lists: HashMap<(UserId, BTreeSet<UserId>), ScopeId>,
    /// User-list scopes naming a user.
    watchers: HashMap<UserId, HashSet<ScopeId>>,
    /// User-list scopes of a viewer.
    viewing: HashMap<UserId, HashSet<ScopeId>>,
    /// Scopes with changes since the last flush.
    dirty: BTreeSet<ScopeId>,
    next_id: ScopeId,
    last_epoch: u64,
}

impl Scopes {
    /// The scope `viewer` subscribes to by `scope`, created if needed from the published views.
    pub fn get_or_create<'a>(
        &mut self,
        scope: Scope,
        viewer: &UserId,
        viewer_spaces: &BTreeSet<SpaceId>,
        users: impl Iterator<Item = (&'a UserId, Seen<'a>)>,
        now: Millis,
    ) -> ScopeId {
        let found = match &scope {
            Scope::Space(space) => self.spaces.get(space),
            Scope::Room(room) => self.rooms.get(room),
            Scope::Users(list) => self.lists.get(&(viewer.clone(), list.clone())),
        };
        if let Some(&id) = found {
            return id;
        }
        self.next_id += 1;
        let id = self.next_id;
        // Unique per scope life across restarts as long as fewer than a thousand scopes are
        // created per millisecond: the clock moves on between lives.
        self.last_epoch = (now * 1000).max(self.last_epoch + 1);
        let mut state = ScopeState {
            viewer: matches!(scope, Scope::Users(_)).then(|| viewer.clone()),
            scope,
            viewer_spaces: viewer_spaces.clone(),
            epoch: self.last_epoch,
            offset: 0,
            current: HashMap::new(),
            changed: HashMap::new(),
            log: VecDeque::new(),
            log_entries: 0,
            subscribers: BTreeSet::new(),
            idle_since: None,
        };
        for (user, seen) in users {
            if let Some(entry) = state.project(user, seen.view) {
                state.current.insert(user.clone(), entry);
            }
        }
        match &state.scope {
            Scope::Space(space) => {
                self.spaces.insert(space.clone(), id);
            }
            Scope::Room(room) => {
                self.rooms.insert(room.clone(), id);
            }
            Scope::Users(list) => {
                self.lists.insert((viewer.clone(), list.clone()), id);
                for user in list {
                    self.watchers.entry(user.clone()).or_default().insert(id);
                }
                self.viewing.entry(viewer.clone()).or_default().insert(id);
            }
        }
        self.states.insert(id, state);
        id
    }

    pub fn scope(&self, id: ScopeId) -> &Scope {
        &self.states[&id].scope
    }

    pub fn room(&self, room: &RoomId) -> Option<ScopeId> {
        self.rooms.get(room).copied()
    }

    pub fn subscribe(&mut self, id: ScopeId, conn: ConnId) {
        let state = self.states.get_mut(&id).expect("scope ids are live");
        state.subscribers.insert(conn);
        state.idle_since = None;
    }

    /// Returns when the scope may be dropped if it has no subscriber left.
    pub fn unsubscribe(
        &mut self,
        id: ScopeId,
        conn: ConnId,
        now: Millis,
        retention: Millis,
    ) -> Option<Millis> {
        let state = self.states.get_mut(&id).expect("scope ids are live");
        state.subscribers.remove(&conn);
        if !state.subscribers.is_empty() {
            return None;
        }
        state.idle_since = Some(now);
        Some(now + retention)
    }

    /// Forgets the scope if it has been without subscribers for `retention`.
    pub fn expire(&mut self, id: ScopeId, now: Millis, retention: Millis) {
        let Some(state) = self.states.get(&id) else {
            return;
        };
        if state.idle_since.is_none_or(|since| now < since + retention) {
            return;
        }
        let state = self.states.remove(&id).expect("checked above");
        self.dirty.remove(&id);
        match state.scope {
            Scope::Space(space) => {
                self.spaces.remove(&space);
            }
            Scope::Room(room) => {
                self.rooms.remove(&room);
            }
            Scope::Users(list) => {
                for user in &list {
                    remove_from(&mut self.watchers, user, id);
                }
                let viewer = state.viewer.expect("list scopes have a viewer");
                remove_from(&mut self.viewing, &viewer, id);
                self.lists.remove(&(viewer, list));
            }
        }
    }

    /// A user's published view changed from `old` to `new`: bring every scope that showed or
    /// shows them up to date, and, if they view user lists, those lists' other users too.
    pub fn route<'a>(
        &mut self,
        user: &UserId,
        old: Option<&View>,
        seen: &Seen,
        lookup: impl Fn(&UserId) -> Seen<'a>,
    ) {
        let mut ids: BTreeSet<ScopeId> = BTreeSet::new();
        for view in [old, seen.view].into_iter().flatten() {
            ids.extend(view.spaces.iter().filter_map(|s| self.spaces.get(s)));
            ids.extend(view.rooms.keys().filter_map(|r| self.rooms.get(r)));
        }
        if let Some(lists) = self.watchers.get(user) {
            ids.extend(lists);
        }
        for id in ids {
            let state = self.states.get_mut(&id).expect("indexed scopes are live");
            if state.touch(user, seen) {
                self.dirty.insert(id);
            }
        }
        // The viewer's spaces decide who else their lists show. An offline viewer keeps the
        // last known spaces: they have no subscriber to show anything to.
        let (Some(view), Some(lists)) = (seen.view, self.viewing.get(user)) else {
            return;
        };
        for id in lists {
            let state = self.states.get_mut(id).expect("indexed scopes are live");
            if state.viewer_spaces == view.spaces {
                continue;
            }
            state.viewer_spaces = view.spaces.clone();
            let Scope::Users(list) = state.scope.clone() else {
                unreachable!("only list scopes have viewers")
            };
            for listed in &list {
                if state.touch(listed, &lookup(listed)) {
                    self.dirty.insert(*id);
                }
            }
        }
    }

    /// How many scopes are kept, and how many subscriptions they have.
    pub fn counts(&self) -> (usize, usize) {
        let subscriptions = self.states.values().map(|s| s.subscribers.len()).sum();
        (self.states.len(), subscriptions)
    }

    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Turns every scope's changes (and the typing changes given per scope) into one update per
    /// scope, and returns the updates per subscriber.
    pub fn flush(
        &mut self,
        mut typing: BTreeMap<ScopeId, Vec<Typing>>,
        log_limit: usize,
    ) -> BTreeMap<ConnId, Vec<Arc<ScopeUpdate>>> {
        let mut ids = std::mem::take(&mut self.dirty);
        ids.extend(typing.keys());
        let mut out: BTreeMap<ConnId, Vec<Arc<ScopeUpdate>>> = BTreeMap::new();
        for id in ids {
            let Some(state) = self.states.get_mut(&id) else {
                continue;
            };
            let entries = state.take_changes();
            let typing = typing.remove(&id).unwrap_or_default();
            if entries.is_empty() && typing.is_empty() {
                continue;
            }
            if !entries.is_empty() {
                state.offset += 1;
            }
            let update = Arc::new(ScopeUpdate {
                scope: state.scope.clone(),
                epoch: state.epoch,
                offset: state.offset,
                snapshot: false,
                entries,
                typing,
            });
            if !update.entries.is_empty() {
                state.log_push(update.clone(), log_limit);
            }
            for subscriber in &state.subscribers {
                out.entry(*subscriber).or_default().push(update.clone());
            }
        }
        out
    }

    pub fn reply(&self, id: ScopeId, resume: Option<Cursor>, typing: Vec<Typing>) -> ScopeUpdate {
        self.states[&id].reply(resume, typing)
    }
}

fn remove_from(index: &mut HashMap<UserId, HashSet<ScopeId>>, user: &UserId, id: ScopeId) {
    if let Some(ids) = index.get_mut(user) {
        ids.remove(&id);
        if ids.is_empty() {
            index.remove(user);
        }
    }
}
