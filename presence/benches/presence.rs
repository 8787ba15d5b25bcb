//! Cost of the presence core under churn, against a naive design measured in the same run, so
//! the numbers read as ratios.
//!
//! The world: 10,000 users in 10 spaces of 1,000, each space watched by 100 subscribers (1,000
//! watcher connections, one space scope each). Time is simulated; nothing sleeps.
//!
//! * `churn`: 1,000 changes per simulated second (a random user toggles busy), so 500 changes
//!   per 500 ms flush interval. One iteration is one interval: 500 changes, each followed by
//!   what a shell does after an input (`handle_timeout` if `poll_timeout` has passed, drain
//!   `poll_output`), ending with the flush. Draining includes what the shell would do with each
//!   delivery: encode each shared `ScopeUpdate` once to JSON and queue a reference to the bytes
//!   for every subscriber. Throughput is `Elements(500)`: criterion reports changes per second,
//!   and the time per iteration is the cost of a tick.
//! * `storm`: all 10,000 users drop, stay away past the grace period, and reconnect at once.
//!   One iteration is the whole storm until every subscriber's view is correct again.
//!   Throughput is `Elements(20,000)` changes (10,000 disconnects and 10,000 connects).
//! * `naive_*`: the same inputs through the design the issue warns about: every change
//!   computes the user's new state, encodes it once, and queues one message per subscriber of
//!   the user's space, with no batching or coalescing (and no grace period, no offsets, no
//!   log: it does strictly less bookkeeping than the core).
//!
//! Before timing, each variant runs once and prints the messages it delivered, so the cost per
//! message can be compared too.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use presence::{
    Config, ConnId, Effect, Millis, NodeId, Presence, PresenceEntry, Scope, ScopeUpdate, Status,
    UserId,
};
use std::collections::{BTreeSet, HashMap};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

const USERS: usize = 10_000;
const SPACES: usize = 10;
const WATCHERS_PER_SPACE: usize = 100;
const CHANGES_PER_TICK: usize = 500;
const T0: Millis = 1_700_000_000_000;

fn config() -> Config {
    Config {
        // Nobody goes away by idleness during a bench: only the changes we make happen.
        idle_timeout: 10 * 24 * 3_600_000,
        ..Config::default()
    }
}

fn space_of(user: usize) -> String {
    format!("space-{}", user % SPACES)
}

fn member(user: usize) -> UserId {
    UserId::new("acme", format!("user-{user}"))
}

fn member_conn(user: usize, life: u64) -> ConnId {
    ConnId(1_000_000 * (life + 1) + user as u64)
}

/// A tiny xorshift, so both designs see the same changes without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// What a shell holds per subscriber: its queue of encoded frames.
type Queues = HashMap<ConnId, Vec<Arc<Vec<u8>>>>;

/// The core with its world, and a shell's draining of its outputs.
struct Core {
    core: Presence,
    now: Millis,
    rng: Rng,
    busy: Vec<bool>,
    /// Which connection each user has now (a storm gives everyone a new one).
    life: u64,
    queues: Queues,
    /// Subscribers with something queued.
    queued: Vec<ConnId>,
    messages: u64,
    /// Entries encoded (each shared update once).
    entries: u64,
}

impl Core {
    fn new() -> Core {
        let mut core = Presence::new(NodeId(1), config());
        for user in 0..USERS {
            let spaces = BTreeSet::from([space_of(user)]);
            core.handle_connect(member_conn(user, 0), member(user), spaces, T0)
                .expect("fresh connection");
        }
        let mut queues = Queues::new();
        for space in 0..SPACES {
            for w in 0..WATCHERS_PER_SPACE {
                let conn = ConnId((space * WATCHERS_PER_SPACE + w) as u64);
                let user = UserId::new("acme", format!("watcher-{}", conn.0));
                let scope = Scope::Space(format!("space-{space}"));
                core.handle_connect(conn, user, BTreeSet::from([space_of(space)]), T0)
                    .expect("fresh connection");
                core.subscribe(conn, scope, None, T0).expect("a member");
                queues.insert(conn, Vec::new());
            }
        }
        let mut core = Core {
            core,
            now: T0,
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            busy: vec![false; USERS],
            life: 0,
            queues,
            queued: Vec::new(),
            messages: 0,
            entries: 0,
        };
        core.advance(1_000);
        core.reset_counts();
        core
    }

    /// What a shell does after each input.
    fn after_input(&mut self) {
        if self.core.poll_timeout().is_some_and(|at| at <= self.now) {
            self.core.handle_timeout(self.now);
        }
        self.drain();
    }

    /// Runs every deadline up to `ms` from now.
    fn advance(&mut self, ms: Millis) {
        let end = self.now + ms;
        while let Some(at) = self.core.poll_timeout().filter(|&at| at <= end) {
            self.now = self.now.max(at);
            self.core.handle_timeout(self.now);
            self.drain();
        }
        self.now = end;
    }

    /// Encodes each update once and queues it for every subscriber it goes to; the writers
    /// then take their queues.
    fn drain(&mut self) {
        let mut encoded: HashMap<*const ScopeUpdate, Arc<Vec<u8>>> = HashMap::new();
        while let Some(effect) = self.core.poll_output() {
            let Effect::Deliver {
                subscriber,
                updates,
            } = effect
            else {
                continue;
            };
            self.messages += 1;
            let queue = self.queues.get_mut(&subscriber).expect("a watcher");
            for update in &updates {
                let bytes = encoded.entry(Arc::as_ptr(update)).or_insert_with(|| {
                    self.entries += update.entries.len() as u64;
                    Arc::new(serde_json::to_vec(&**update).expect("serializable"))
                });
                queue.push(bytes.clone());
            }
            self.queued.push(subscriber);
        }
        for subscriber in self.queued.drain(..) {
            let queue = self.queues.get_mut(&subscriber).expect("a watcher");
            black_box(&queue);
            queue.clear();
        }
    }

    fn change(&mut self) {
        let user = self.rng.below(USERS);
        self.busy[user] = !self.busy[user];
        let status = self.busy[user].then_some(Status::Busy);
        let conn = member_conn(user, self.life);
        self.core
            .set_status(conn, status, None, self.now)
            .expect("connected");
        self.after_input();
    }

    /// One flush interval of churn.
    fn tick(&mut self) {
        for _ in 0..CHANGES_PER_TICK {
            self.now += 1;
            self.change();
        }
        self.advance(0);
    }

    /// Everyone drops, stays away past the grace period, and comes back; runs until every
    /// subscriber has heard all of it.
    fn storm(&mut self) {
        for user in 0..USERS {
            self.core
                .handle_disconnect(member_conn(user, self.life), self.now)
                .expect("connected");
            self.after_input();
        }
        self.advance(config().grace + 1_000);
        self.life += 1;
        for user in 0..USERS {
            let spaces = BTreeSet::from([space_of(user)]);
            self.core
                .handle_connect(member_conn(user, self.life), member(user), spaces, self.now)
                .expect("fresh connection");
            self.after_input();
        }
        self.advance(config().flush_interval);
        self.busy.fill(false);
    }

    fn reset_counts(&mut self) {
        self.messages = 0;
        self.entries = 0;
    }
}

/// The naive design: a message per change per subscriber.
struct Naive {
    status: Vec<Status>,
    subscribers: Vec<Vec<ConnId>>,
    queues: Queues,
    rng: Rng,
    messages: u64,
}

impl Naive {
    fn new() -> Naive {
        let subscribers = (0..SPACES)
            .map(|space| {
                (0..WATCHERS_PER_SPACE)
                    .map(|w| ConnId((space * WATCHERS_PER_SPACE + w) as u64))
                    .collect()
            })
            .collect::<Vec<Vec<ConnId>>>();
        let queues = subscribers
            .iter()
            .flatten()
            .map(|&c| (c, Vec::new()))
            .collect();
        Naive {
            status: vec![Status::Online; USERS],
            subscribers,
            queues,
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            messages: 0,
        }
    }

    fn publish(&mut self, user: usize, status: Status) {
        self.status[user] = status;
        let entry = PresenceEntry {
            user: member(user),
            status,
            custom: None,
            in_meeting: false,
            last_seen: None,
        };
        let bytes = Arc::new(serde_json::to_vec(&entry).expect("serializable"));
        for subscriber in &self.subscribers[user % SPACES] {
            let queue = self.queues.get_mut(subscriber).expect("a watcher");
            queue.push(bytes.clone());
            self.messages += 1;
        }
    }

    fn drain(&mut self) {
        for queue in self.queues.values_mut() {
            black_box(&queue);
            queue.clear();
        }
    }

    fn tick(&mut self) {
        for _ in 0..CHANGES_PER_TICK {
            let user = self.rng.below(USERS);
            let status = match self.status[user] {
                Status::Busy => Status::Online,
                _ => Status::Busy,
            };
            self.publish(user, status);
        }
        self.drain();
    }

    fn storm(&mut self) {
        for user in 0..USERS {
            self.publish(user, Status::Offline);
        }
        for user in 0..USERS {
            self.publish(user, Status::Online);
        }
        self.drain();
    }
}

fn churn(c: &mut Criterion) {
    let mut core = Core::new();
    for _ in 0..10 {
        core.tick();
    }
    let watchers = (SPACES * WATCHERS_PER_SPACE) as u64;
    println!(
        "churn, per {CHANGES_PER_TICK}-change tick: core delivered {} messages ({} per \
         subscriber) of {} distinct entries; naive delivers {}",
        core.messages / 10,
        core.messages as f64 / 10.0 / watchers as f64,
        core.entries / 10,
        CHANGES_PER_TICK * WATCHERS_PER_SPACE,
    );
    let mut group = c.benchmark_group("churn");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(CHANGES_PER_TICK as u64));
    group.bench_function(BenchmarkId::new("core", CHANGES_PER_TICK), |b| {
        b.iter(|| core.tick())
    });
    let mut naive = Naive::new();
    group.bench_function(BenchmarkId::new("naive", CHANGES_PER_TICK), |b| {
        b.iter(|| naive.tick())
    });
    group.finish();
}

fn storm(c: &mut Criterion) {
    let mut core = Core::new();
    let start = core.now;
    core.storm();
    let watchers = (SPACES * WATCHERS_PER_SPACE) as u64;
    println!(
        "storm of {USERS} reconnects: core delivered {} messages ({} per subscriber) of {} \
         distinct entries over {} ms simulated; naive delivers {}",
        core.messages,
        core.messages as f64 / watchers as f64,
        core.entries,
        core.now - start,
        2 * USERS * WATCHERS_PER_SPACE,
    );
    let mut group = c.benchmark_group("storm");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(2 * USERS as u64));
    group.bench_function(BenchmarkId::new("core", USERS), |b| b.iter(|| core.storm()));
    let mut naive = Naive::new();
    group.bench_function(BenchmarkId::new("naive", USERS), |b| {
        b.iter(|| naive.storm())
    });
    group.finish();
}

criterion_group!(benches, churn, storm);
criterion_main!(benches);
