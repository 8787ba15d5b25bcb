//! Core tests with a simulated clock: each drives the core through `handle_*` and drains
//! `poll_output`, and keeps every subscriber's client-side view, built only from what it was
//! delivered, to check against what it should see.

mod props;

use crate::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

const T0: Millis = 1_700_000_000_000;

fn config() -> Config {
    Config {
        idle_timeout: 60_000,
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

fn user(org: &str, id: &str) -> UserId {
    UserId::new(org, id)
}

fn spaces(ids: &[&str]) -> BTreeSet<SpaceId> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn space(id: &str) -> Scope {
    Scope::Space(id.to_string())
}

/// What a client knows of one scope, from its snapshot and the updates after it.
#[derive(Debug, Clone, PartialEq)]
struct ClientView {
    epoch: u64,
    offset: u64,
    entries: BTreeMap<UserId, PresenceEntry>,
    typing: BTreeMap<Option<String>, Vec<UserId>>,
}

impl ClientView {
    fn new(update: &ScopeUpdate) -> ClientView {
        assert!(update.snapshot);
        let mut view = ClientView {
            epoch: update.epoch,
            offset: update.offset,
            entries: BTreeMap::new(),
            typing: BTreeMap::new(),
        };
        view.merge(update);
        view
    }

    /// Applies a delivered update: offsets must follow on without a gap.
    fn apply(&mut self, update: &ScopeUpdate) {
        assert!(!update.snapshot, "deliveries are deltas");
        assert_eq!(update.epoch, self.epoch);
        let expected = self.offset + u64::from(!update.entries.is_empty());
        assert_eq!(update.offset, expected, "offsets follow on");
        self.merge(update);
    }

    /// Applies the reply to a resuming subscribe.
    fn resume(&mut self, update: &ScopeUpdate) {
        if update.snapshot {
            *self = ClientView::new(update);
        } else {
            assert_eq!(update.epoch, self.epoch);
            self.merge(update);
        }
    }

    fn merge(&mut self, update: &ScopeUpdate) {
        self.offset = update.offset;
        for entry in &update.entries {
            if entry.status == Status::Offline {
                self.entries.remove(&entry.user);
            } else {
                self.entries.insert(entry.user.clone(), entry.clone());
            }
        }
        for typing in &update.typing {
            if typing.users.is_empty() {
                self.typing.remove(&typing.thread);
            } else {
                self.typing
                    .insert(typing.thread.clone(), typing.users.clone());
            }
        }
    }

    fn statuses(&self) -> BTreeMap<String, Status> {
        self.entries
            .iter()
            .map(|(user, entry)| (user.id.clone(), entry.status))
            .collect()
    }
}

/// One core on a simulated clock, with its subscribers' views.
struct Sim {
    core: Presence,
    now: Millis,
    /// Every delivery: when, to whom, what.
    delivered: Vec<(Millis, ConnId, Vec<Arc<ScopeUpdate>>)>,
    unsubscribed: Vec<(ConnId, Scope)>,
    /// Nodes whose state the core asked for, not yet answered.
    requests: Vec<NodeId>,
    views: HashMap<(ConnId, Scope), ClientView>,
}

impl Sim {
    fn new(config: Config) -> Sim {
        Sim::on(NodeId(1), config)
    }

    fn on(node: NodeId, config: Config) -> Sim {
        Sim {
            core: Presence::new(node, config),
            now: T0,
            delivered: Vec::new(),
            unsubscribed: Vec::new(),
            requests: Vec::new(),
            views: HashMap::new(),
        }
    }

    fn connect(&mut self, conn: u64, user: &UserId, member_of: &[&str]) {
        self.core
            .handle_connect(ConnId(conn), user.clone(), spaces(member_of), self.now)
            .expect("connects");
    }

    fn disconnect(&mut self, conn: u64) {
        self.core
            .handle_disconnect(ConnId(conn), self.now)
            .expect("disconnects");
    }

    fn subscribe(&mut self, conn: u64, scope: Scope) -> ScopeUpdate {
        let update = self
            .core
            .subscribe(ConnId(conn), scope.clone(), None, self.now)
            .expect("subscribes");
        self.views
            .insert((ConnId(conn), scope), ClientView::new(&update));
        update
    }

    fn view(&self, conn: u64, scope: &Scope) -> &ClientView {
        &self.views[&(ConnId(conn), scope.clone())]
    }

    fn statuses(&self, conn: u64, scope: &Scope) -> BTreeMap<String, Status> {
        self.view(conn, scope).statuses()
    }

    /// Runs the core for `ms`, handling every deadline at its time, as a shell would.
    fn advance(&mut self, ms: Millis) {
        let end = self.now + ms;
        loop {
            self.drain();
            match self.core.poll_timeout() {
                Some(at) if at <= end => {
                    self.now = self.now.max(at);
                    self.core.handle_timeout(self.now);
                }
                _ => break,
            }
        }
        self.now = end;
    }

    fn drain(&mut self) {
        while let Some(effect) = self.core.poll_output() {
            match effect {
                Effect::Deliver {
                    subscriber,
                    updates,
                } => {
                    for update in &updates {
                        if let Some(view) = self.views.get_mut(&(subscriber, update.scope.clone()))
                        {
                            view.apply(update);
                        }
                    }
                    self.delivered.push((self.now, subscriber, updates));
                }
                Effect::Unsubscribed { subscriber, scope } => {
                    self.views.remove(&(subscriber, scope.clone()));
                    self.unsubscribed.push((subscriber, scope));
                }
                Effect::RequestState { node } => self.requests.push(node),
            }
        }
    }

    /// The deliveries to `conn` since `since`.
    fn deliveries(&self, conn: u64, since: Millis) -> Vec<&[Arc<ScopeUpdate>]> {
        self.delivered
            .iter()
            .filter(|(at, to, _)| *at >= since && *to == ConnId(conn))
            .map(|(_, _, updates)| updates.as_slice())
            .collect()
    }

    /// Every entry about `who` delivered to `conn` since `since`.
    fn entries_about(&self, conn: u64, who: &UserId, since: Millis) -> Vec<PresenceEntry> {
        self.deliveries(conn, since)
            .into_iter()
            .flatten()
            .flat_map(|update| update.entries.iter())
            .filter(|entry| &entry.user == who)
            .cloned()
            .collect()
    }
}

#[test]
fn a_user_is_online_if_any_device_is_active() {
    let mut sim = Sim::new(config());
    let alice = user("acme", "alice");
    let scope = space("eng");
    sim.connect(1, &user("acme", "watcher"), &["eng"]);
    sim.subscribe(1, scope.clone());
    sim.connect(10, &alice, &["eng"]); // laptop
    sim.advance(30_000);
    sim.connect(11, &alice, &["eng"]); // phone, 30 s later
    sim.advance(35_000);
    // The laptop is idle, the phone is not.
    assert_eq!(sim.statuses(1, &scope)["alice"], Status::Online);
    sim.advance(30_000);
    assert_eq!(sim.statuses(1, &scope)["alice"], Status::Away, "both idle");
    sim.core.report_activity(ConnId(11), sim.now).unwrap();
    sim.advance(0);
    assert_eq!(sim.statuses(1, &scope)["alice"], Status::Online);
    // The idle device leaving changes nothing while the active one is there.
    sim.disconnect(10);
    sim.advance(10_000);
    assert_eq!(sim.statuses(1, &scope)["alice"], Status::Online);
    assert_eq!(sim.core.status(&alice), Status::Online);
    sim.disconnect(11);
    sim.advance(10_000);
    assert!(!sim.view(1, &scope).entries.contains_key(&alice));
    assert_eq!(sim.core.status(&alice), Status::Offline);
}

#[test]
fn stats_count_users_connections_scopes_and_subscriptions() {
    let mut sim = Sim::new(config());
    let alice = user("acme", "alice");
    sim.connect(1, &user("acme", "watcher"), &["eng"]);
    sim.subscribe(1, space("eng"));
    sim.connect(10, &alice, &["eng"]);
    sim.connect(11, &alice, &["eng"]);
    let stats = sim.core.stats();
    assert_eq!(
        (
            stats.users,
            stats.connections,
            stats.scopes,
            stats.subscriptions
        ),
        (2, 3, 1, 1)
    );
    // A closed connection lingers for the grace period, then neither it nor its user counts.
    sim.disconnect(10);
    sim.disconnect(11);
    assert_eq!(sim.core.stats().connections, 3);
    sim.advance(config().grace);
    let stats = sim.core.stats();
    assert_eq!((stats.users, stats.connections), (1, 1));
}

#[test]
fn away_comes_from_inactivity_and_activity_ends_it() {
    let mut sim = Sim::new(config());
    let alice = user("acme", "alice");
    let scope = space("eng");
    sim.connect(1, &user("acme", "watcher"), &["eng"]);
    sim.connect(10, &alice, &["eng"]);
    sim.subscribe(1, scope.clone());
    let start = sim.now;
    sim.advance(59_000);
    assert_eq!(sim.statuses(1, &scope)["alice"], Status::Online);
    sim.advance(1_000);
    assert_eq!(sim.statuses(1, &scope)["alice"], Status::Away);
    let about = sim.entries_about(1, &alice, start);
    assert_eq!(about.len(), 1, "one change: {about:?}");
    assert_eq!(
        about[0].last_seen, None,
        "only offline entries carry last_seen"
    );

    sim.core.report_activity(ConnId(10), sim.now).unwrap();
    sim.advance(499);
    assert_eq!(
        sim.statuses(1, &scope)["alice"],
        Status::Away,
        "one flush per interval"
    );
    sim.advance(1);
    assert_eq!(sim.statuses(1, &scope)["alice"], Status::Online);
    // Reports within a tenth of the idle timeout are not even written.
    let version = sim.core.state.entries.keys().map(|d| d.version).max();
    sim.advance(1_000);
    sim.core.report_activity(ConnId(10), sim.now).unwrap();
    assert_eq!(
        sim.core.state.entries.keys().map(|d| d.version).max(),
        version
    );
}

#[test]
fn an_explicit_status_overrides_activity_on_every_device_until_it_expires() {
    let mut sim = Sim::new(config());
    let alice = user("acme", "alice");
    let scope = Scope::Users([alice.clone()].into());
    sim.connect(10, &alice, &["eng"]); // laptop
    sim.connect(11, &alice, &["eng"]); // phone
    sim.subscribe(11, scope.clone());
    let until = sim.now + 10_000;
    sim.core
        .set_status(ConnId(10), Some(Status::Busy), Some(until), sim.now)
        .unwrap();
    sim.advance(0);
    // Set on the laptop, seen on the phone.
    assert_eq!(sim.statuses(11, &scope)["alice"], Status::Busy);
    sim.core
        .report_activity(ConnId(11), sim.now + 7_000)
        .unwrap();
    sim.advance(9_999);
    assert_eq!(
        sim.statuses(11, &scope)["alice"],
        Status::Busy,
        "activity does not end it"
    );
    sim.advance(1);
    assert_eq!(sim.statuses(11, &scope)["alice"], Status::Online, "expired");

    // A device connecting later takes the status; the status outlives the device that set it.
    sim.core
        .set_status(ConnId(10), Some(Status::Away), None, sim.now)
        .unwrap();
    sim.connect(12, &alice, &["eng"]);
    sim.disconnect(10);
    sim.advance(6_000);
    assert_eq!(
        sim.statuses(11, &scope)["alice"],
        Status::Away,
        "away while active"
    );
    sim.disconnect(11);
    sim.advance(6_000);
    assert_eq!(
        sim.core.status(&alice),
        Status::Away,
        "kept by the newest device"
    );

    // Explicit online holds through idleness; clearing derives it again.
    sim.core
        .set_status(ConnId(12), Some(Status::Online), None, sim.now)
        .unwrap();
    sim.advance(120_000);
    assert_eq!(sim.core.status(&alice), Status::Online);
    sim.core
        .set_status(ConnId(12), None, None, sim.now)
        .unwrap();
    sim.advance(0);
    assert_eq!(sim.core.status(&alice), Status::Away);

    // Refusals change nothing.
    let now = sim.now;
    let mut set = |status, until| sim.core.set_status(ConnId(12), status, until, now);
    assert_eq!(
        set(Some(Status::Offline), None),
        Err(Error::InvalidStatus("a user cannot set themselves offline"))
    );
    assert!(set(Some(Status::Busy), Some(now)).is_err());
    assert!(set(None, Some(now + 1)).is_err());
    assert_eq!(sim.core.status(&alice), Status::Away);
}

#[test]
fn a_custom_status_shows_until_it_expires() {
    let mut sim = Sim::new(config());
    let alice = user("acme", "alice");
    let scope = space("eng");
    sim.connect(1, &user("acme", "watcher"), &["eng"]);
    sim.connect(10, &alice, &["eng"]);
    sim.subscribe(1, scope.clone());
    let custom = CustomStatus {
        text: "on holiday".into(),
        emoji: Some("🌴".into()),
        expires: Some(sim.now + 20_000),
    };
    sim.core
        .set_custom_status(ConnId(10), Some(custom.clone()), sim.now)
        .unwrap();
    sim.advance(0);
    assert_eq!(
        sim.view(1, &scope).entries[&alice].custom,
        Some(custom.clone())
    );
    // Setting a status keeps the custom status.
    sim.core
        .set_status(ConnId(10), Some(Status::Busy), None, sim.now)
        .unwrap();
    sim.advance(19_999);
    let entry = &sim.view(1, &scope).entries[&alice];
    assert_eq!((entry.status, entry.custom.is_some()), (Status::Busy, true));
    sim.advance(1);
    let entry = &sim.view(1, &scope).entries[&alice];
    assert_eq!(
        (entry.status, entry.custom.is_some()),
        (Status::Busy, false)
    );

    let long = CustomStatus {
        text: "x".repeat(CustomStatus::MAX_TEXT + 1),
        emoji: None,
        expires: None,
    };
    assert!(
        sim.core
            .set_custom_status(ConnId(10), Some(long), sim.now)
            .is_err()
    );
    let past = CustomStatus {
        expires: Some(sim.now),
        ..custom
    };
    assert!(
        sim.core
            .set_custom_status(ConnId(10), Some(past), sim.now)
            .is_err()
    );
}

#[test]
fn a_reconnect_within_the_grace_period_shows_nothing() {
    let mut sim = Sim::new(config());
    let alice = user("acme", "alice");
    let scope = space("eng");
    sim.connect(1, &user("acme", "watcher"), &["eng"]);
    sim.connect(10, &alice, &["eng"]);
    sim.subscribe(1, scope.clone());
    let start = sim.now;
    sim.disconnect(10);
    sim.advance(4_000);
    sim.connect(11, &alice, &["eng"]);
    sim.advance(10_000);
    assert!(
        sim.entries_about(1, &alice, start).is_empty(),
        "no offline/online pair"
    );
    assert_eq!(sim.statuses(1, &scope)["alice"], Status::Online);

    // Without a reconnect she goes offline when the grace period ends, not before.
    let start = sim.now;
    let active = sim.now - 10_000; // connected at 4 s, activity counts from then
    sim.disconnect(11);
    sim.advance(4_999);
    assert!(sim.entries_about(1, &alice, start).is_empty());
    sim.advance(1);
    let about = sim.entries_about(1, &alice, start);
    assert_eq!(about.len(), 1);
    assert_eq!(about[0].status, Status::Offline);
    assert_eq!(about[0].last_seen, Some(active));
    // A disconnected connection is gone for requests at once.
    assert_eq!(
        sim.core.report_activity(ConnId(11), sim.now),
        Err(Error::UnknownConnection)
    );
}

#[test]
fn rooms_show_who_is_in_them_and_in_their_meeting() {
    let mut sim = Sim::new(config());
    let (alice, bob) = (user("acme", "alice"), user("acme", "bob"));
    let room = RoomId::new("eng", "standup");
    let scope = Scope::Room(room.clone());
    sim.connect(1, &user("acme", "watcher"), &["eng"]);
    sim.connect(10, &alice, &["eng"]);
    sim.connect(20, &bob, &["eng"]);
    sim.subscribe(1, scope.clone());
    assert!(sim.view(1, &scope).entries.is_empty());
    sim.core
        .join_room(ConnId(10), room.clone(), sim.now)
        .unwrap();
    sim.core
        .join_room(ConnId(20), room.clone(), sim.now)
        .unwrap();
    sim.core
        .set_in_meeting(ConnId(20), &room, true, sim.now)
        .unwrap();
    sim.advance(0);
    let view = sim.view(1, &scope);
    assert_eq!(view.entries.len(), 2);
    assert!(!view.entries[&alice].in_meeting);
    assert!(view.entries[&bob].in_meeting);
    sim.core.leave_room(ConnId(10), &room, sim.now).unwrap();
    sim.advance(500);
    assert_eq!(sim.statuses(1, &scope).keys().collect::<Vec<_>>(), ["bob"]);
    assert_eq!(
        sim.core.set_in_meeting(ConnId(10), &room, true, sim.now),
        Err(Error::NotInRoom)
    );
    assert_eq!(
        sim.core
            .join_room(ConnId(10), RoomId::new("sales", "x"), sim.now),
        Err(Error::NotMember)
    );
}

#[test]
fn typing_is_rate_limited_expires_and_is_never_logged() {
    let mut sim = Sim::new(config());
    let alice = user("acme", "alice");
    let room = RoomId::new("eng", "standup");
    let scope = Scope::Room(room.clone());
    sim.connect(1, &user("acme", "watcher"), &["eng"]);
    sim.connect(10, &alice, &["eng"]);
    assert_eq!(
        sim.core.typing(ConnId(10), &room, None, sim.now),
        Err(Error::NotInRoom)
    );
    sim.core
        .join_room(ConnId(10), room.clone(), sim.now)
        .unwrap();
    sim.subscribe(1, scope.clone());
    sim.advance(1_000);
    let offset = sim.view(1, &scope).offset;

    let start = sim.now;
    sim.core.typing(ConnId(10), &room, None, sim.now).unwrap();
    sim.core
        .typing(ConnId(10), &room, Some("t1"), sim.now + 500)
        .unwrap_err();
    sim.advance(500);
    assert_eq!(sim.view(1, &scope).typing[&None], vec![alice.clone()]);
    assert_eq!(
        sim.core.typing(ConnId(10), &room, None, sim.now),
        Err(Error::RateLimited)
    );
    // A refresh keeps it; it is not a change anyone hears about.
    sim.advance(2_500);
    sim.core.typing(ConnId(10), &room, None, sim.now).unwrap();
    sim.advance(4_999);
    assert!(sim.view(1, &scope).typing.contains_key(&None));
    sim.advance(1);
    assert!(sim.view(1, &scope).typing.is_empty(), "expired");
    assert_eq!(sim.deliveries(1, start).len(), 2, "started, stopped");
    assert_eq!(sim.view(1, &scope).offset, offset, "typing has no offsets");

    // A subscriber arriving while someone types sees it in the snapshot; leaving the room
    // stops it at once.
    sim.core
        .typing(ConnId(10), &room, Some("t1"), sim.now)
        .unwrap();
    sim.connect(2, &user("acme", "late"), &["eng"]);
    let snapshot = sim.subscribe(2, scope.clone());
    assert_eq!(snapshot.typing.len(), 1);
    assert_eq!(snapshot.typing[0].thread.as_deref(), Some("t1"));
    sim.core.leave_room(ConnId(10), &room, sim.now).unwrap();
    sim.advance(500);
    assert!(sim.view(2, &scope).typing.is_empty());
}

#[test]
fn users_of_another_organisation_see_nothing_unless_they_share_a_space() {
    let mut sim = Sim::new(config());
    let alice = user("acme", "alice");
    let bob = user("globex", "bob");
    // Same id, other organisation: a different user.
    let alice_of_globex = user("globex", "alice");
    sim.connect(10, &alice, &["acme-eng"]);
    sim.connect(20, &bob, &["globex-ops"]);
    sim.connect(30, &alice_of_globex, &["globex-ops"]);

    let list = Scope::Users([alice.clone()].into());
    assert!(sim.subscribe(20, list.clone()).entries.is_empty());
    for scope in [
        space("acme-eng"),
        Scope::Room(RoomId::new("acme-eng", "general")),
    ] {
        assert_eq!(
            sim.core.subscribe(ConnId(20), scope, None, sim.now),
            Err(Error::NotMember)
        );
    }
    sim.core
        .set_status(ConnId(10), Some(Status::Busy), None, sim.now)
        .unwrap();
    sim.disconnect(10);
    sim.advance(10_000);
    sim.connect(11, &alice, &["acme-eng"]);
    sim.advance(1_000);
    assert!(sim.deliveries(20, T0).is_empty(), "bob heard nothing");
    // globex's alice is not acme's alice.
    sim.subscribe(30, space("globex-ops"));
    assert_eq!(sim.statuses(30, &space("globex-ops")).len(), 2);
    assert_eq!(sim.core.status(&alice_of_globex), Status::Online);

    // Both join a shared space: bob sees alice in his list and in the shared space.
    sim.core
        .set_spaces(&alice, spaces(&["acme-eng", "shared"]), sim.now);
    sim.core
        .set_spaces(&bob, spaces(&["globex-ops", "shared"]), sim.now);
    sim.advance(500);
    // (Her busy status went with her last device: keeping it is the store's business.)
    assert_eq!(sim.statuses(20, &list)["alice"], Status::Online);
    sim.subscribe(20, space("shared"));
    assert_eq!(
        sim.statuses(20, &space("shared"))
            .keys()
            .collect::<Vec<_>>(),
        ["alice", "bob"]
    );

    // Alice leaves the shared space: she disappears from bob's list, and a subscription that
    // needs a membership ends with it.
    sim.connect(12, &alice, &["acme-eng", "shared"]);
    sim.subscribe(12, space("shared"));
    sim.core.set_spaces(&alice, spaces(&["acme-eng"]), sim.now);
    sim.advance(500);
    assert!(sim.statuses(20, &list).is_empty());
    assert!(!sim.statuses(20, &space("shared")).contains_key("alice"));
    assert_eq!(sim.unsubscribed, vec![(ConnId(12), space("shared"))]);
    // Nothing bob was delivered ever named a user he shared no space with at the time.
    for updates in sim.deliveries(20, T0) {
        for update in updates {
            for entry in &update.entries {
                assert!(entry.user == bob || entry.user == alice);
            }
        }
    }
}

#[test]
fn a_subscriber_resumes_from_its_offset_or_gets_a_snapshot() {
    let mut sim = Sim::new(config());
    let scope = space("eng");
    sim.connect(1, &user("acme", "watcher"), &["eng"]);
    for i in 0..5 {
        sim.connect(10 + i, &user("acme", &format!("u{i}")), &["eng"]);
    }
    let first = sim.subscribe(1, scope.clone());
    sim.advance(1_000);
    // Some changes while subscribed.
    sim.core
        .set_status(ConnId(10), Some(Status::Busy), None, sim.now)
        .unwrap();
    sim.advance(1_000);
    let seen = sim.view(1, &scope).clone();
    assert_eq!(seen.epoch, first.epoch);
    assert_eq!(seen.offset, first.offset + 1);

    // The subscriber drops; changes go on in three flushes.
    sim.disconnect(1);
    sim.core
        .set_status(ConnId(11), Some(Status::Busy), None, sim.now)
        .unwrap();
    sim.advance(1_000);
    sim.core
        .set_status(ConnId(11), Some(Status::Away), None, sim.now)
        .unwrap();
    sim.disconnect(12);
    sim.advance(10_000);
    sim.connect(15, &user("acme", "new"), &["eng"]);
    sim.advance(1_000);

    // It reconnects with another connection and resumes.
    sim.connect(2, &user("acme", "watcher"), &["eng"]);
    let cursor = Cursor {
        epoch: seen.epoch,
        offset: seen.offset,
    };
    let reply = sim
        .core
        .subscribe(ConnId(2), scope.clone(), Some(cursor), sim.now)
        .unwrap();
    assert!(!reply.snapshot);
    let missed: BTreeMap<String, Status> = reply
        .entries
        .iter()
        .map(|entry| (entry.user.id.clone(), entry.status))
        .collect();
    let expected: BTreeMap<String, Status> = [
        ("new", Status::Online),
        ("u1", Status::Away),
        ("u2", Status::Offline),
        ("watcher", Status::Online), // offline after the grace period, then back
    ]
    .map(|(id, status)| (id.to_string(), status))
    .into();
    assert_eq!(missed, expected, "exactly what changed, last state wins");
    let mut resumed = seen.clone();
    resumed.resume(&reply);
    let fresh = sim.subscribe(2, scope.clone());
    assert_eq!(resumed, ClientView::new(&fresh));

    // A cursor the scope no longer covers, or of another epoch, gets a snapshot.
    let stale = Cursor {
        epoch: seen.epoch + 1,
        ..cursor
    };
    let reply = sim
        .core
        .subscribe(ConnId(2), scope.clone(), Some(stale), sim.now);
    assert!(reply.unwrap().snapshot);
    let ahead = Cursor {
        offset: fresh.offset + 1,
        ..cursor
    };
    let reply = sim
        .core
        .subscribe(ConnId(2), scope.clone(), Some(ahead), sim.now);
    assert!(reply.unwrap().snapshot);
}

#[test]
fn a_cursor_older_than_the_log_gets_a_snapshot_and_an_idle_scope_is_forgotten() {
    let mut sim = Sim::new(Config {
        log_entries: 3,
        ..config()
    });
    let scope = space("eng");
    sim.connect(1, &user("acme", "watcher"), &["eng"]);
    for i in 0..5 {
        sim.connect(10 + i, &user("acme", &format!("u{i}")), &["eng"]);
    }
    let first = sim.subscribe(1, scope.clone());
    sim.disconnect(1);
    for i in 0..5 {
        sim.core
            .set_status(ConnId(10 + i), Some(Status::Busy), None, sim.now)
            .unwrap();
        sim.advance(500);
    }
    sim.connect(2, &user("acme", "watcher"), &["eng"]);
    let cursor = Cursor {
        epoch: first.epoch,
        offset: first.offset,
    };
    let reply = sim
        .core
        .subscribe(ConnId(2), scope.clone(), Some(cursor), sim.now)
        .unwrap();
    assert!(
        reply.snapshot,
        "reset: the log kept only the last 3 entries"
    );
    assert_eq!(reply.offset, first.offset + 5);
    assert_eq!(reply.entries.len(), 6);
    assert!(
        reply
            .entries
            .iter()
            .all(|e| e.status == Status::Busy || e.user.id == "watcher")
    );
    // The last 3 are still there.
    let recent = Cursor {
        offset: reply.offset - 3,
        ..cursor
    };
    let reply = sim
        .core
        .subscribe(ConnId(2), scope.clone(), Some(recent), sim.now);
    assert_eq!(reply.unwrap().entries.len(), 3);

    // Without subscribers for the retention time, the scope goes; a new one has a new epoch.
    sim.disconnect(2);
    sim.advance(60_000);
    sim.connect(3, &user("acme", "watcher"), &["eng"]);
    let again = sim
        .core
        .subscribe(ConnId(3), scope, Some(cursor), sim.now)
        .unwrap();
    assert!(again.snapshot);
    assert_ne!(again.epoch, first.epoch);
}

#[test]
fn a_reconnect_storm_costs_each_subscriber_at_most_one_message_per_flush() {
    const USERS: u64 = 10_000;
    const WATCHERS: u64 = 10;
    let mut sim = Sim::new(config());
    let scope = space("big");
    let users: Vec<UserId> = (0..USERS)
        .map(|i| user("acme", &format!("user-{i}")))
        .collect();
    for (i, user) in users.iter().enumerate() {
        sim.connect(1_000_000 + i as u64, user, &["big"]);
    }
    for w in 0..WATCHERS {
        sim.connect(w, &user("acme", &format!("watcher-{w}")), &["big"]);
    }
    for w in 0..WATCHERS {
        sim.subscribe(w, scope.clone());
    }
    sim.advance(1_000);
    let everyone = (USERS + WATCHERS) as usize;
    assert_eq!(sim.view(0, &scope).entries.len(), everyone);

    // Storm 1: everyone drops and reconnects within the grace period. Nobody hears a thing.
    let start = sim.now;
    for i in 0..USERS {
        sim.disconnect(1_000_000 + i);
    }
    sim.advance(100);
    for (i, user) in users.iter().enumerate() {
        sim.connect(2_000_000 + i as u64, user, &["big"]);
    }
    sim.advance(10_000);
    assert!(sim.delivered[..].iter().all(|(at, _, _)| *at < start));

    // Storm 2: everyone drops for longer than the grace period, then comes back at once.
    let start = sim.now;
    for i in 0..USERS {
        sim.disconnect(2_000_000 + i);
    }
    sim.advance(6_000);
    for w in 0..WATCHERS {
        assert_eq!(sim.view(w, &scope).entries.len(), WATCHERS as usize);
    }
    for (i, user) in users.iter().enumerate() {
        sim.connect(3_000_000 + i as u64, user, &["big"]);
    }
    sim.advance(2_000);
    for w in 0..WATCHERS {
        let deliveries: Vec<Millis> = sim
            .delivered
            .iter()
            .filter(|(at, to, _)| *at >= start && *to == ConnId(w))
            .map(|(at, _, _)| *at)
            .collect();
        assert_eq!(
            deliveries.len(),
            2,
            "one batch going offline, one coming back"
        );
        assert!(deliveries.windows(2).all(|w| w[1] - w[0] >= 500));
        let view = sim.view(w, &scope);
        assert_eq!(view.entries.len(), everyone);
        assert!(view.entries.values().all(|e| e.status == Status::Online));
    }
    let fresh = sim.subscribe(0, scope.clone());
    assert_eq!(fresh.entries.len(), everyone);
}

/// Two cores sharing a clock and a bus: heartbeats every second, deltas and state requests on
/// every step.
struct Pair {
    a: Sim,
    b: Sim,
    /// Whether b still sends heartbeats and deltas.
    b_alive: bool,
}

impl Pair {
    fn new() -> Pair {
        let mut pair = Pair {
            a: Sim::on(NodeId(1), config()),
            b: Sim::on(NodeId(2), config()),
            b_alive: true,
        };
        pair.step(0);
        pair
    }

    /// Exchanges heartbeats, state requests and deltas, then advances both by `ms`.
    fn step(&mut self, ms: Millis) {
        let now = self.a.now;
        self.b.core.handle_node_heartbeat(NodeId(1), now);
        if self.b_alive {
            self.a.core.handle_node_heartbeat(NodeId(2), now);
        }
        self.a.drain();
        self.b.drain();
        for node in std::mem::take(&mut self.a.requests) {
            assert_eq!(node, NodeId(2));
            if self.b_alive {
                let state = self.b.core.handle_state_request(NodeId(1), now);
                self.a.core.merge(&state, now);
            }
        }
        for node in std::mem::take(&mut self.b.requests) {
            assert_eq!(node, NodeId(1));
            let state = self.a.core.handle_state_request(NodeId(2), now);
            self.b.core.merge(&state, now);
        }
        for _ in 0..3 {
            if let Some(delta) = self.a.core.poll_delta() {
                self.b.core.merge(&delta, now);
            }
            match self.b.core.poll_delta() {
                Some(delta) if self.b_alive => self.a.core.merge(&delta, now),
                _ => {}
            }
        }
        self.a.advance(ms);
        self.b.advance(ms);
    }

    fn run(&mut self, ms: Millis) {
        for _ in 0..ms / 1_000 {
            self.step(1_000);
        }
        self.step(ms % 1_000);
    }
}

#[test]
fn nodes_share_presence_and_a_dead_nodes_users_go_offline_within_seconds() {
    let mut pair = Pair::new();
    let scope = space("eng");
    let (alice, bob) = (user("acme", "alice"), user("acme", "bob"));
    pair.a.connect(1, &user("acme", "watcher"), &["eng"]);
    pair.a.subscribe(1, scope.clone());
    pair.a.connect(10, &alice, &["eng"]);
    pair.b.connect(20, &bob, &["eng"]);
    pair.b.connect(21, &alice, &["eng"]); // alice's phone is on node b
    pair.run(2_000);
    assert_eq!(
        pair.a.statuses(1, &scope).keys().collect::<Vec<_>>(),
        ["alice", "bob", "watcher"]
    );

    // Status set on one node shows on the other, and survives the device that set it.
    pair.a
        .core
        .set_status(ConnId(10), Some(Status::Busy), None, pair.a.now)
        .unwrap();
    pair.run(1_000);
    assert_eq!(pair.b.core.status(&alice), Status::Busy);
    pair.a.disconnect(10);
    pair.run(8_000);
    assert_eq!(pair.a.statuses(1, &scope)["alice"], Status::Busy);
    assert_eq!(pair.b.core.status(&alice), Status::Busy);

    // Typing on b reaches a's room subscribers through the bus.
    let room = RoomId::new("eng", "general");
    pair.b
        .core
        .join_room(ConnId(20), room.clone(), pair.b.now)
        .unwrap();
    pair.b
        .core
        .typing(ConnId(20), &room, None, pair.b.now)
        .unwrap();
    pair.a.subscribe(1, Scope::Room(room.clone()));
    let now = pair.a.now;
    pair.a
        .core
        .handle_remote_typing(NodeId(2), ConnId(20), bob.clone(), room.clone(), None, now);
    pair.run(1_000);
    assert_eq!(
        pair.a.view(1, &Scope::Room(room.clone())).typing[&None],
        vec![bob.clone()]
    );

    // Node b dies: its entries are gone within node_timeout (+ one flush) of its last heartbeat.
    pair.b_alive = false;
    let last_heartbeat = pair.a.now;
    pair.run(4_000);
    assert_eq!(pair.a.statuses(1, &scope).len(), 3, "not yet");
    pair.run(1_500);
    assert_eq!(
        pair.a.statuses(1, &scope).keys().collect::<Vec<_>>(),
        ["watcher"]
    );
    let offline_at = pair
        .a
        .delivered
        .iter()
        .find(|(_, _, updates)| {
            updates.iter().any(|u| {
                u.entries
                    .iter()
                    .any(|e| e.user == bob && e.status == Status::Offline)
            })
        })
        .map(|(at, _, _)| *at)
        .expect("bob went offline");
    assert!(offline_at - last_heartbeat <= 5_000 + 500);
    assert!(pair.a.view(1, &Scope::Room(room)).typing.is_empty());
    assert_eq!(
        pair.a.core.state.entries.len(),
        1,
        "only the watcher's entry is left"
    );

    // The partition heals (b never thought a dead): a asks for b's state and has it all back.
    pair.b_alive = true;
    pair.run(1_000);
    assert_eq!(
        pair.a.statuses(1, &scope).keys().collect::<Vec<_>>(),
        ["alice", "bob", "watcher"]
    );
    assert_eq!(pair.a.statuses(1, &scope)["alice"], Status::Busy);
    assert_eq!(
        pair.a.core.state, pair.b.core.state,
        "the replicas converged"
    );
}

#[test]
fn a_single_node_sends_no_deltas_and_deltas_survive_serialization() {
    let mut sim = Sim::new(config());
    let alice = user("acme", "alice");
    sim.connect(10, &alice, &["eng"]);
    assert_eq!(sim.core.poll_delta(), None);
    sim.advance(1_000);
    assert!(sim.requests.is_empty());

    // A peer appears: the core asks for its state, answers its request with the whole state,
    // and from then on keeps deltas for it. Both round-trip through JSON.
    sim.core.handle_node_heartbeat(NodeId(2), sim.now);
    sim.drain();
    assert_eq!(sim.requests, vec![NodeId(2)]);
    let state = sim.core.handle_state_request(NodeId(2), sim.now);
    assert_eq!(state.entries.len(), 1);
    let room = RoomId::new("eng", "general");
    sim.core.join_room(ConnId(10), room, sim.now).unwrap();
    let delta = sim.core.poll_delta().expect("the join");
    assert_eq!(delta.entries.len(), 1);
    let mut other = Presence::new(NodeId(2), config());
    for message in [state, delta] {
        let json = serde_json::to_string(&message).unwrap();
        let decoded: Delta = serde_json::from_str(&json).unwrap();
        assert_eq!(decoded, message);
        other.merge(&decoded, sim.now);
    }
    assert_eq!(other.state, sim.core.state);
    assert_eq!(other.status(&alice), Status::Online);
}
