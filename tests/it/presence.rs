//! Presence over WebSocket against a real server with short timings (flush 50 ms, grace
//! 300 ms, typing expiry 300 ms): snapshots then deltas, several devices, resuming from an
//! offset, privacy across organisations, a reconnect storm batched, typing that expires.

use crate::util::{TestServer, Tr};
use chorus::client::Client;
use chorus::protocol::{Encoding, ServerFrame};
use presence::{Scope, ScopeUpdate, Status};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

const FLUSH_MS: u64 = 50;
const GRACE_MS: u64 = 300;
const TYPING_TIMEOUT_MS: u64 = 300;
/// How long to wait for something that should happen (generous: CI machines are slow).
const PATIENCE: Duration = Duration::from_secs(5);
/// How long to watch for something that must not happen: past grace and several flushes.
const QUIET: Duration = Duration::from_millis(GRACE_MS + 4 * FLUSH_MS);

async fn server() -> TestServer {
    server_with(|_| {}).await
}

async fn server_with(tweak: impl FnOnce(&mut chorus::config::Config)) -> TestServer {
    TestServer::with(|c| {
        c.presence_flush_ms = FLUSH_MS;
        c.presence_grace_ms = GRACE_MS;
        c.presence_typing_timeout_ms = TYPING_TIMEOUT_MS;
        c.presence_typing_interval_ms = 50;
        tweak(c);
    })
    .await
}

/// `user@org`, the key of a view.
fn key(org: &str, user: &str) -> String {
    format!("{user}@{org}")
}

/// A client that keeps the `presence` frames arriving while it waits for a reply (the
/// library's `request` skips them), and a view of one scope built from them.
struct Peer {
    c: Client,
    next_id: u64,
    pending: VecDeque<Vec<ScopeUpdate>>,
    unsubscribed: Vec<Value>,
}

/// A scope as a client sees it: users by `user@org`, and the position to resume from.
/// Updates of other scopes are ignored.
#[derive(Debug, Default, Clone, PartialEq)]
struct View {
    scope: Option<Scope>,
    users: BTreeMap<String, Status>,
    epoch: u64,
    offset: u64,
}

impl View {
    fn of(snapshot: &ScopeUpdate) -> View {
        assert!(snapshot.snapshot);
        let mut view = View::default();
        view.apply(snapshot);
        view
    }

    fn apply(&mut self, u: &ScopeUpdate) {
        if u.snapshot {
            self.scope = Some(u.scope.clone());
            self.users.clear();
            self.epoch = u.epoch;
        }
        if self.scope.as_ref() != Some(&u.scope) {
            return;
        }
        assert_eq!(u.epoch, self.epoch, "an update of another epoch");
        for e in &u.entries {
            let k = key(&e.user.org, &e.user.id);
            if e.status == Status::Offline {
                self.users.remove(&k);
            } else {
                self.users.insert(k, e.status);
            }
        }
        self.offset = u.offset;
    }

    fn status(&self, k: &str) -> Option<Status> {
        self.users.get(k).copied()
    }
}

impl Peer {
    async fn new(s: &TestServer, user: &str, org: &str) -> Peer {
        Peer::with_encoding(s, user, org, Encoding::Json).await
    }

    async fn with_encoding(s: &TestServer, user: &str, org: &str, encoding: Encoding) -> Peer {
        let mut c = s.raw(Tr::Ws).await;
        c.hello(Some(&s.token(user, org)), encoding).await.unwrap();
        Peer {
            c,
            next_id: 1_000,
            pending: VecDeque::new(),
            unsubscribed: Vec::new(),
        }
    }

    /// Send a request and wait for its answer, keeping presence frames for `next`.
    async fn request(&mut self, mut frame: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = json!(id);
        self.c.send(&frame).await.unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let got = tokio::time::timeout_at(deadline, self.c.recv())
                .await
                .expect("no reply in time")
                .unwrap();
            match got.expect("the server closed the connection") {
                ServerFrame::Reply { id: got, result } if got == id => return Ok(result),
                ServerFrame::Error {
                    id: Some(got),
                    code,
                    ..
                } if got == id => return Err(code.as_str().to_string()),
                other => self.keep(other),
            }
        }
    }

    async fn call(&mut self, frame: Value) -> Value {
        let what = frame.to_string();
        self.request(frame)
            .await
            .unwrap_or_else(|code| panic!("{what}: {code}"))
    }

    fn keep(&mut self, frame: ServerFrame) {
        match frame {
            ServerFrame::Presence { updates } => self.pending.push_back(updates),
            ServerFrame::PresenceUnsubscribed { scope, code, .. } => self
                .unsubscribed
                .push(json!({"scope": scope, "code": code})),
            ServerFrame::Disconnect { code, message, .. } => {
                panic!("disconnected: {code}: {message}")
            }
            _ => {}
        }
    }

    async fn subscribe(&mut self, scope: Value) -> ScopeUpdate {
        let reply = self
            .call(json!({"type": "presence.subscribe", "scope": scope}))
            .await;
        serde_json::from_value(reply).unwrap()
    }

    /// The next `presence` frame, if one comes within `within`.
    async fn next(&mut self, within: Duration) -> Option<Vec<ScopeUpdate>> {
        if let Some(updates) = self.pending.pop_front() {
            return Some(updates);
        }
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.c.recv()).await {
                Err(_) => return None,
                Ok(frame) => {
                    let frame = frame.unwrap().expect("the server closed the connection");
                    self.keep(frame);
                    if let Some(updates) = self.pending.pop_front() {
                        return Some(updates);
                    }
                }
            }
        }
    }

    /// Apply frames to `view` until `done` holds; returns how many frames it took.
    async fn until(&mut self, view: &mut View, done: impl Fn(&View) -> bool) -> usize {
        let deadline = Instant::now() + PATIENCE;
        let mut frames = 0;
        while !done(view) {
            let left = deadline.saturating_duration_since(Instant::now());
            let updates = self
                .next(left)
                .await
                .unwrap_or_else(|| panic!("the view did not get there in time: {view:?}"));
            frames += 1;
            for u in &updates {
                view.apply(u);
            }
        }
        frames
    }

    /// Apply frames to `view` until none came for a few flush intervals.
    async fn settle(&mut self, view: &mut View) {
        while let Some(updates) = self.next(Duration::from_millis(4 * FLUSH_MS)).await {
            for u in &updates {
                view.apply(u);
            }
        }
    }

    /// Nothing arrives for `QUIET`.
    async fn quiet(&mut self) {
        if let Some(updates) = self.next(QUIET).await {
            panic!("unexpected presence: {updates:?}");
        }
    }

    /// Close the connection now (the server sees the socket close).
    fn drop_connection(self) {
        drop(self.c);
    }
}

/// Create space `id` owned by `owner` of `org`, with `members` (user, org) added, through one
/// connection with pipelined requests (one group commit instead of one per member).
async fn space_with(s: &TestServer, id: &str, owner: (&str, &str), members: &[(String, String)]) {
    let mut c = s.client(Tr::Ws, owner.0, owner.1).await;
    c.call(json!({"type": "space.create", "space": id, "name": id}))
        .await
        .unwrap();
    for (n, (user, org)) in members.iter().enumerate() {
        let frame = json!({"type": "space.add_member", "id": 10_000 + n, "space": id,
                           "user": user, "org": org});
        c.send(&frame).await.unwrap();
    }
    let mut answered = 0;
    while answered < members.len() {
        match c.expect().await.unwrap() {
            ServerFrame::Reply { .. } => answered += 1,
            ServerFrame::Error { code, message, .. } => panic!("add_member: {code}: {message}"),
            _ => {}
        }
    }
}

fn acme(users: &[&str]) -> Vec<(String, String)> {
    users
        .iter()
        .map(|u| (u.to_string(), "acme".to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_deltas() {
    let s = server().await;
    space_with(&s, "eng", ("alice", "acme"), &acme(&["bob"])).await;
    let mut alice = Peer::new(&s, "alice", "acme").await;
    // A MessagePack subscriber gets the same updates (encoded once per encoding).
    let mut carol = Peer::with_encoding(&s, "alice", "acme", Encoding::Msgpack).await;

    let snapshot = alice.subscribe(json!({"space": "eng"})).await;
    assert!(snapshot.snapshot);
    let mut view = View::of(&snapshot);
    // Both of alice's devices are online; bob is not connected.
    assert_eq!(view.users.keys().collect::<Vec<_>>(), ["alice@acme"]);
    let mut carol_view = View::of(&carol.subscribe(json!({"space": "eng"})).await);
    assert_eq!(carol_view, view);

    let bob = Peer::new(&s, "bob", "acme").await;
    alice
        .until(&mut view, |v| v.status("bob@acme") == Some(Status::Online))
        .await;
    assert_eq!(view.offset, snapshot.offset + 1);

    let mut bob = bob;
    bob.call(json!({"type": "presence.set_custom", "custom": {"text": "lunch", "emoji": "🍜"}}))
        .await;
    let updates = alice.next(PATIENCE).await.unwrap();
    assert_eq!(updates.len(), 1);
    let entry = &updates[0].entries[0];
    assert_eq!(entry.user.id, "bob");
    assert_eq!(entry.custom.as_ref().unwrap().text, "lunch");
    view.apply(&updates[0]);
    assert_eq!(view.offset, snapshot.offset + 2);

    bob.call(json!({"type": "presence.set_status", "status": "busy"}))
        .await;
    alice
        .until(&mut view, |v| v.status("bob@acme") == Some(Status::Busy))
        .await;
    assert_eq!(view.offset, snapshot.offset + 3);
    assert_eq!(
        bob.request(json!({"type": "presence.set_status", "status": "offline"}))
            .await,
        Err("invalid_request".into())
    );

    bob.drop_connection();
    let left = Instant::now();
    let updates = alice.next(PATIENCE).await.unwrap();
    assert!(
        left.elapsed() >= Duration::from_millis(GRACE_MS - 50),
        "offline before the grace period ended"
    );
    let entry = &updates[0].entries[0];
    assert_eq!(
        (entry.user.id.as_str(), entry.status),
        ("bob", Status::Offline)
    );
    assert!(entry.last_seen.is_some());
    view.apply(&updates[0]);

    // The MessagePack subscriber saw the same thing.
    carol
        .until(&mut carol_view, |v| v.offset == view.offset)
        .await;
    assert_eq!(carol_view, view);

    let reply = alice
        .call(json!({"type": "presence.unsubscribe", "scope": {"space": "eng"}}))
        .await;
    assert_eq!(reply, json!({"scope": {"space": "eng"}}));
    assert_eq!(
        alice
            .request(json!({"type": "presence.unsubscribe", "scope": {"space": "eng"}}))
            .await,
        Err("not_subscribed".into())
    );
    let _bob = Peer::new(&s, "bob", "acme").await;
    alice.quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_devices_one_presence() {
    let s = server_with(|c| c.presence_idle_timeout_ms = 600).await;
    space_with(&s, "eng", ("carol", "acme"), &acme(&["alice"])).await;
    let mut carol = Peer::new(&s, "carol", "acme").await;
    let mut view = View::of(&carol.subscribe(json!({"space": "eng"})).await);

    let mut d1 = Peer::new(&s, "alice", "acme").await;
    carol
        .until(&mut view, |v| {
            v.status("alice@acme") == Some(Status::Online)
        })
        .await;
    // No activity reported: alice goes away after the idle timeout.
    carol
        .until(&mut view, |v| v.status("alice@acme") == Some(Status::Away))
        .await;
    d1.call(json!({"type": "presence.activity"})).await;
    carol
        .until(&mut view, |v| {
            v.status("alice@acme") == Some(Status::Online)
        })
        .await;

    let mut d1_view = View::of(&d1.subscribe(json!({"space": "eng"})).await);
    let mut d2 = Peer::new(&s, "alice", "acme").await;
    d2.call(json!({"type": "presence.set_status", "status": "busy"}))
        .await;
    // Set on one device, shown on the other (and to everyone else).
    d1.until(&mut d1_view, |v| {
        v.status("alice@acme") == Some(Status::Busy)
    })
    .await;
    carol
        .until(&mut view, |v| v.status("alice@acme") == Some(Status::Busy))
        .await;

    // A device leaving while another stays changes nothing; nor does a quick reconnect.
    d2.drop_connection();
    let d2 = Peer::new(&s, "alice", "acme").await;
    d2.drop_connection();
    carol.quiet().await;
    assert_eq!(view.status("alice@acme"), Some(Status::Busy));

    // The explicit status ends with its expiry, then activity decides again.
    let until = chorus::server::unix_ms() + 400;
    d1.call(json!({"type": "presence.set_status", "status": "online", "until": until}))
        .await;
    carol
        .until(&mut view, |v| {
            v.status("alice@acme") == Some(Status::Online)
        })
        .await;
    carol
        .until(&mut view, |v| v.status("alice@acme") == Some(Status::Away))
        .await;

    // The last device gone: offline once the grace period is over.
    d1.drop_connection();
    carol
        .until(&mut view, |v| v.status("alice@acme").is_none())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_gets_exactly_what_was_missed() {
    let s = server().await;
    space_with(&s, "eng", ("carol", "acme"), &acme(&["bob", "dave", "eve"])).await;
    let mut eve = Peer::new(&s, "eve", "acme").await;
    let mut eve_view = View::of(&eve.subscribe(json!({"space": "eng"})).await);
    let mut dave = Peer::new(&s, "dave", "acme").await;
    // Carol's other device keeps her online while the watching one reconnects.
    let _carol_phone = Peer::new(&s, "carol", "acme").await;
    let mut carol = Peer::new(&s, "carol", "acme").await;
    let mut view = View::of(&carol.subscribe(json!({"space": "eng"})).await);
    let all_three = |v: &View| v.users.len() == 3;
    carol.until(&mut view, all_three).await;
    carol.settle(&mut view).await;
    eve.until(&mut eve_view, all_three).await;
    eve.settle(&mut eve_view).await;
    assert_eq!(eve_view, view);
    let seen = view.clone();
    carol.drop_connection();

    // While carol is away: bob comes, changes twice, dave goes busy; each in its own flush.
    let mut bob = Peer::new(&s, "bob", "acme").await;
    eve.until(&mut eve_view, |v| v.status("bob@acme").is_some())
        .await;
    bob.call(json!({"type": "presence.set_status", "status": "busy"}))
        .await;
    eve.until(&mut eve_view, |v| {
        v.status("bob@acme") == Some(Status::Busy)
    })
    .await;
    bob.call(json!({"type": "presence.set_status", "status": "away"}))
        .await;
    eve.until(&mut eve_view, |v| {
        v.status("bob@acme") == Some(Status::Away)
    })
    .await;
    dave.call(json!({"type": "presence.set_status", "status": "busy"}))
        .await;
    eve.until(&mut eve_view, |v| {
        v.status("dave@acme") == Some(Status::Busy)
    })
    .await;
    assert_eq!(eve_view.offset, seen.offset + 4);

    let mut carol = Peer::new(&s, "carol", "acme").await;
    let resumed = carol
        .call(
            json!({"type": "presence.subscribe", "scope": {"space": "eng"},
                     "resume": {"epoch": seen.epoch, "offset": seen.offset}}),
        )
        .await;
    let resumed: ScopeUpdate = serde_json::from_value(resumed).unwrap();
    assert!(!resumed.snapshot);
    assert_eq!(
        (resumed.epoch, resumed.offset),
        (eve_view.epoch, eve_view.offset)
    );
    // The last state of each user who changed, nobody else.
    let missed: Vec<(String, Status)> = resumed
        .entries
        .iter()
        .map(|e| (key(&e.user.org, &e.user.id), e.status))
        .collect();
    assert_eq!(
        missed,
        [
            ("bob@acme".to_string(), Status::Away),
            ("dave@acme".to_string(), Status::Busy)
        ]
    );
    let mut view = seen;
    view.apply(&resumed);
    assert_eq!(view, eve_view);

    // A cursor of another epoch gets a snapshot.
    let mut other = Peer::new(&s, "carol", "acme").await;
    let fresh = other
        .call(
            json!({"type": "presence.subscribe", "scope": {"space": "eng"},
                     "resume": {"epoch": 1, "offset": 1}}),
        )
        .await;
    assert_eq!(fresh["snapshot"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_organisations_see_nothing() {
    let s = server().await;
    space_with(&s, "eng", ("alice", "acme"), &[]).await;
    let mut alice = Peer::new(&s, "alice", "acme").await;
    let mut alice_view = View::of(&alice.subscribe(json!({"space": "eng"})).await);

    let mut bob = Peer::new(&s, "bob", "globex").await;
    let mut impostor = Peer::new(&s, "bob", "evilcorp").await;
    let alice_list = json!({"users": [{"org": "acme", "id": "alice"}]});
    let mut lists = Vec::new();
    for peer in [&mut bob, &mut impostor] {
        assert_eq!(
            peer.request(json!({"type": "presence.subscribe", "scope": {"space": "eng"}}))
                .await,
            Err("not_found".into())
        );
        assert_eq!(
            peer.request(json!({"type": "presence.subscribe",
                                 "scope": {"room": {"space": "eng", "id": "general"}}}))
                .await,
            Err("not_found".into())
        );
        assert_eq!(
            peer.request(json!({"type": "presence.join_room",
                                 "room": {"space": "eng", "id": "general"}}))
                .await,
            Err("not_found".into())
        );
        let list = peer.subscribe(alice_list.clone()).await;
        assert!(list.entries.is_empty(), "{list:?}");
        lists.push(View::of(&list));
    }
    let mut bob_list = lists.remove(0);
    alice
        .call(json!({"type": "presence.set_status", "status": "busy"}))
        .await;
    alice
        .until(&mut alice_view, |v| {
            v.status("alice@acme") == Some(Status::Busy)
        })
        .await;
    bob.quiet().await;
    impostor.quiet().await;
    // Neither of them shows in the space either.
    assert_eq!(alice_view.users.keys().collect::<Vec<_>>(), ["alice@acme"]);

    // bob of globex becomes a guest: he now shares a space with alice, and she with him.
    alice
        .call(json!({"type": "space.add_member", "space": "eng", "user": "bob", "org": "globex"}))
        .await;
    bob.until(&mut bob_list, |v| {
        v.status("alice@acme") == Some(Status::Busy)
    })
    .await;
    alice
        .until(&mut alice_view, |v| {
            v.status("bob@globex") == Some(Status::Online)
        })
        .await;
    let bob_view = View::of(&bob.subscribe(json!({"space": "eng"})).await);
    assert_eq!(
        bob_view.users.keys().collect::<Vec<_>>(),
        ["alice@acme", "bob@globex"]
    );
    // The other organisation's bob is still nobody here.
    assert_eq!(
        impostor
            .request(json!({"type": "presence.subscribe", "scope": {"space": "eng"}}))
            .await,
        Err("not_found".into())
    );
    impostor.quiet().await;
    assert_eq!(alice_view.status("bob@evilcorp"), None);

    // Removed again: his space subscription ends, and alice leaves his list.
    alice
        .call(json!({"type": "space.remove_member", "space": "eng", "user": "bob"}))
        .await;
    bob.until(&mut bob_list, |v| v.status("alice@acme").is_none())
        .await;
    let deadline = Instant::now() + PATIENCE;
    while bob.unsubscribed.is_empty() && Instant::now() < deadline {
        let _ = bob.next(Duration::from_millis(50)).await;
    }
    assert_eq!(
        bob.unsubscribed,
        [json!({"scope": {"space": "eng"}, "code": "forbidden"})]
    );
    alice
        .until(&mut alice_view, |v| v.status("bob@globex").is_none())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_is_batched() {
    const N: usize = 200;
    let s = server().await;
    let members: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    let names: Vec<&str> = members.iter().map(String::as_str).collect();
    space_with(&s, "eng", ("watcher", "acme"), &acme(&names)).await;
    let mut watchers = Vec::new();
    for _ in 0..3 {
        let mut w = Peer::new(&s, "watcher", "acme").await;
        let view = View::of(&w.subscribe(json!({"space": "eng"})).await);
        watchers.push((w, view));
    }
    let connect_all = || {
        let s = &s;
        futures_util::future::join_all(
            members
                .iter()
                .map(move |m| async move { s.client(Tr::Ws, m, "acme").await }),
        )
    };
    let everyone = |v: &View| v.users.len() == N + 1;
    let only_watcher = |v: &View| v.users.len() == 1;

    let clients = connect_all().await;
    for (w, view) in &mut watchers {
        w.until(view, everyone).await;
    }

    // All drop at once and stay away past the grace period: one change each.
    let dropped = Instant::now();
    drop(clients);
    for (w, view) in &mut watchers {
        let frames = w.until(view, only_watcher).await;
        let bound = dropped.elapsed().as_millis() as usize / FLUSH_MS as usize + 2;
        assert!(
            frames <= bound,
            "{frames} frames for {N} departures (bound {bound})"
        );
    }

    // All come back at once.
    let back = Instant::now();
    let clients = connect_all().await;
    for (w, view) in &mut watchers {
        let before = view.offset;
        let frames = w.until(view, everyone).await;
        let took = back.elapsed();
        let bound = took.as_millis() as usize / FLUSH_MS as usize + 2;
        assert!(
            frames <= bound,
            "{frames} frames for {N} arrivals in {took:?}"
        );
        assert!(
            frames < N / 4,
            "{frames} frames for {N} arrivals: not batched"
        );
        // Offsets count batches, not changes.
        assert!(view.offset - before <= frames as u64);
    }
    for (w, view) in &mut watchers {
        assert!(view.users.values().all(|s| *s == Status::Online));
        w.quiet().await;
    }
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_meetings_and_typing_that_expires() {
    let s = server().await;
    space_with(&s, "eng", ("alice", "acme"), &acme(&["bob"])).await;
    let room = json!({"space": "eng", "id": "general"});
    let mut bob = Peer::new(&s, "bob", "acme").await;
    let snapshot = bob.subscribe(json!({"room": room})).await;
    assert!(snapshot.entries.is_empty(), "nobody is in the room yet");
    let mut view = View::of(&snapshot);

    let mut alice = Peer::new(&s, "alice", "acme").await;
    assert_eq!(
        alice
            .request(json!({"type": "presence.typing", "room": room}))
            .await,
        Err("invalid_request".into()),
        "typing outside the room"
    );
    alice
        .call(json!({"type": "presence.join_room", "room": room}))
        .await;
    bob.until(&mut view, |v| {
        v.status("alice@acme") == Some(Status::Online)
    })
    .await;

    alice
        .call(json!({"type": "presence.meeting", "room": room, "in_meeting": true}))
        .await;
    let updates = bob.next(PATIENCE).await.unwrap();
    assert!(updates[0].entries[0].in_meeting);
    view.apply(&updates[0]);

    alice
        .call(json!({"type": "presence.typing", "room": room}))
        .await;
    assert_eq!(
        alice
            .request(json!({"type": "presence.typing", "room": room}))
            .await,
        Err("rate_limited".into()),
        "typing events closer than the interval"
    );
    let updates = bob.next(PATIENCE).await.unwrap();
    let started = Instant::now();
    let typing = &updates[0].typing;
    assert_eq!(typing.len(), 1);
    assert_eq!(typing[0].thread, None);
    assert_eq!(typing[0].users[0].id, "alice");
    assert_eq!(
        updates[0].offset, view.offset,
        "typing does not advance offsets"
    );

    // Not refreshed: it disappears by itself.
    let updates = bob.next(PATIENCE).await.unwrap();
    assert!(updates[0].typing[0].users.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(TYPING_TIMEOUT_MS - 100));
    assert_eq!(updates[0].entries.len(), 0);

    // In a thread, and a late subscriber sees who types in its snapshot.
    alice
        .call(json!({"type": "presence.typing", "room": room, "thread": "t1"}))
        .await;
    let mut late = Peer::new(&s, "bob", "acme").await;
    let snapshot = late.subscribe(json!({"room": room})).await;
    assert_eq!(snapshot.typing.len(), 1);
    assert_eq!(snapshot.typing[0].thread.as_deref(), Some("t1"));

    alice
        .call(json!({"type": "presence.leave_room", "room": room}))
        .await;
    bob.until(&mut view, |v| v.status("alice@acme").is_none())
        .await;
    assert_eq!(
        alice
            .request(json!({"type": "presence.leave_room", "room": room}))
            .await,
        Err("invalid_request".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_reaches_a_lingering_connection() {
    // A grace period far beyond the view's patience: only the removal can end bob's entry in time.
    let s = server_with(|c| c.presence_grace_ms = 600_000).await;
    let guest = ("bob".to_string(), "globex".to_string());
    space_with(&s, "eng", ("alice", "acme"), &[guest]).await;
    let mut alice = Peer::new(&s, "alice", "acme").await;
    let mut view = View::of(&alice.subscribe(json!({"space": "eng"})).await);
    let bob = Peer::new(&s, "bob", "globex").await;
    alice
        .until(&mut view, |v| {
            v.status("bob@globex") == Some(Status::Online)
        })
        .await;
    // bob leaves; within the grace period he still shows, but once removed he must not.
    bob.drop_connection();
    tokio::time::sleep(Duration::from_millis(100)).await;
    alice
        .call(json!({"type": "space.remove_member", "space": "eng", "user": "bob"}))
        .await;
    alice
        .until(&mut view, |v| v.status("bob@globex").is_none())
        .await;
}
