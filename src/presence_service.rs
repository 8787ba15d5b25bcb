//! The presence service: the shell around the sans-IO `presence::Presence` core.
//!
//! One task owns the core. It takes commands from one bounded queue (a connection opened or
//! closed, a user's memberships changed, a client request), feeds each to the core with the
//! wall-clock time, runs the core's deadlines (grace periods, idleness, typing expiry, the flush
//! of batched changes), and executes what the core asks: a delivery is encoded and pushed into
//! the subscriber's `Outbox` without waiting, like the hub does; updates are shared by every
//! subscriber of a scope, so each is encoded once per encoding and flush, not per subscriber.
//! The task also queues the replies to presence requests itself, so a subscription's reply (its
//! snapshot) always precedes its first update in the connection's one queue.
//!
//! **Queue discipline.** Connects, disconnects and membership changes wait for room in the
//! queue (`send().await`): they must not be lost (a lost disconnect would show a user online
//! for ever), and the task never waits on anything but its queue and its deadline, so waiting
//! is back-pressure during a reconnect storm, never a hang. Client requests do not wait: a full
//! queue answers them `rate_limited` ("retry later").
//!
//! **Memberships.** The core decides visibility from the spaces each connection's user is a
//! member of (for the token's organisation). They are read from the store when the connection
//! opens, and again for a user whenever `Spaces` reports a committed change of their
//! memberships (`MembershipListener`). Those two reads race; a generation number orders them:
//! a change bumps it after its commit, and a connection reads it (after registering as online,
//! before reading its spaces), so the task can tell which of two answers for a user is newer.

use crate::access::{Action, Claims, authorize};
use crate::config::Config;
use crate::hub::Outbox;
use crate::metrics::Metrics;
use crate::protocol::presence::{encode_reply, encode_update, presence_frame};
use crate::protocol::{Encoding, ErrorCode, PresenceRequest, ServerFrame, encode_server};
use crate::spaces::{MembershipListener, ServiceError, Spaces};
use bytes::Bytes;
use dashmap::DashMap;
use presence::{
    ConnId, Effect, Millis, NodeId, Presence, RoomId, Scope, ScopeUpdate, SpaceId, UserId,
};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the connections and `Spaces` ask of the presence task.
enum Command {
    /// A connection said `hello`. `spaces` were read at `generation`.
    Connect {
        conn: u64,
        user: UserId,
        spaces: BTreeSet<SpaceId>,
        generation: u64,
        outbox: Arc<Outbox>,
    },
    /// The connection closed.
    Disconnect { conn: u64 },
    /// `user`'s spaces, read after the change that bumped the generation to `generation`.
    SetSpaces {
        user: UserId,
        spaces: BTreeSet<SpaceId>,
        generation: u64,
    },
    /// A client request. The task queues the reply itself and then answers `done` with `Ok`,
    /// or answers it with the error for the connection to send.
    Request {
        conn: u64,
        request: PresenceRequest,
        done: oneshot::Sender<Result<(), ServiceError>>,
        /// Whether the reply goes to the connection's outbox (not for a connection that does
        /// not speak the session protocol, such as a document's).
        answer: bool,
    },
}

/// Users with connections the presence core has or is about to have: user id, then
/// organisation, then how many connections. A connection counts from before its spaces are
/// read until its grace period is over, so a membership change never misses it, even while
/// it only lingers.
type Online = DashMap<String, HashMap<String, usize>>;

/// The handle every connection holds (in `Shared`); the task itself runs from `start`.
pub struct PresenceService {
    commands: mpsc::Sender<Command>,
    /// The task, until `start` takes it.
    task: Mutex<Option<Task>>,
    /// Bumped after every committed membership change.
    generation: AtomicU64,
    online: Arc<Online>,
    node: NodeId,
}

impl PresenceService {
    /// A service for this process, with a random node id (a core's id must be unique per
    /// process life). Nothing runs until `start`.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> PresenceService {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).expect("the OS provides randomness");
        let node = NodeId(u64::from_le_bytes(random));
        let (commands, receiver) = mpsc::channel(config.presence_queue);
        let online = Arc::new(Online::default());
        let task = Task {
            core: Presence::new(node, config.presence()),
            commands: receiver,
            conns: HashMap::new(),
            users: HashMap::new(),
            online: online.clone(),
            lingering: VecDeque::new(),
            grace: config.presence_grace_ms,
            metrics,
            max_subscriptions: config.max_subscriptions,
            encoded: Encoded::default(),
            next_stats: None,
        };
        PresenceService {
            commands,
            task: Mutex::new(Some(task)),
            generation: AtomicU64::new(0),
            online,
            node,
        }
    }

    /// This process's node id in the presence state.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Run the presence task until `shutdown` fires. Called once, by `server::serve`.
    pub fn start(&self, shutdown: CancellationToken) -> JoinHandle<()> {
        let task = self
            .task
            .lock()
            .expect("the presence task lock is never poisoned")
            .take()
            .expect("the presence task starts once");
        tokio::spawn(task.run(shutdown))
    }

    /// A connection of `claims`' user said `hello`: it now counts as online, in the spaces
    /// its user is a member of. Waits for room in the queue (see the module docs).
    pub async fn connect(&self, spaces: &Spaces, conn: u64, claims: &Claims, outbox: Arc<Outbox>) {
        *self
            .online
            .entry(claims.sub.clone())
            .or_default()
            .entry(claims.org.clone())
            .or_insert(0) += 1;
        // Read after registering as online: a change that did not see the registration bumped
        // the generation before this read, so a stale answer below is recognised as such.
        let generation = self.generation.load(Ordering::SeqCst);
        let member_of = spaces
            .memberships(&claims.sub, &claims.org)
            .await
            .unwrap_or_else(|e| {
                // Fail closed: nobody sees the user and the user sees no space, until the
                // next membership change or reconnect.
                tracing::error!(error = %e, "cannot read memberships for presence");
                BTreeSet::new()
            });
        let command = Command::Connect {
            conn,
            user: UserId::new(&claims.org, &claims.sub),
            spaces: member_of,
            generation,
            outbox,
        };
        // Fails only once the task has stopped (shutdown): nothing left to tell.
        let _ = self.commands.send(command).await;
    }

    /// The connection closed; its user stays visible for the grace period. Waits for room in
    /// the queue.
    pub async fn disconnect(&self, conn: u64) {
        let _ = self.commands.send(Command::Disconnect { conn }).await;
    }

    /// Execute a presence request of connection `conn`. `Ok` means the task queued the reply
    /// (in order with its deliveries); an error is for the caller to send.
    pub async fn execute(
        &self,
        spaces: &Spaces,
        claims: &Claims,
        conn: u64,
        request: PresenceRequest,
    ) -> Result<(), ServiceError> {
        request
            .check()
            .map_err(|m| ServiceError::new(ErrorCode::InvalidRequest, m))?;
        // Watching needs what subscribing to the space's channels needs; the core then shows
        // only users who share a space with the caller.
        if let PresenceRequest::Subscribe { scope, .. } = &request {
            match scope {
                Scope::Space(space) | Scope::Room(RoomId { space, .. }) => {
                    spaces.check(claims, Action::Subscribe, space).await?;
                }
                Scope::Users(_) => authorize(claims, Action::WatchUsers, None)?,
            }
        }
        self.request(conn, request, true).await
    }

    /// Execute `request` for connection `conn` (connected with `connect`) without a reply: for
    /// connections that do not speak the session protocol, such as a document's, whose access
    /// the caller checked. Like `execute`, it never waits for room in the queue.
    pub async fn tell(&self, conn: u64, request: PresenceRequest) -> Result<(), ServiceError> {
        self.request(conn, request, false).await
    }

    async fn request(
        &self,
        conn: u64,
        request: PresenceRequest,
        answer: bool,
    ) -> Result<(), ServiceError> {
        let (done, answered) = oneshot::channel();
        let command = Command::Request {
            conn,
            request,
            done,
            answer,
        };
        self.commands.try_send(command).map_err(|e| match e {
            TrySendError::Full(_) => ServiceError::new(
                ErrorCode::RateLimited,
                "the presence service is busy; retry later",
            ),
            TrySendError::Closed(_) => unavailable(),
        })?;
        answered.await.unwrap_or_else(|_| Err(unavailable()))
    }
}

fn unavailable() -> ServiceError {
    ServiceError::new(ErrorCode::Internal, "presence is unavailable; retry later")
}

#[async_trait::async_trait]
impl MembershipListener for PresenceService {
    async fn memberships_changed(&self, spaces: &Spaces, user: &str) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let orgs: Vec<String> = self
            .online
            .get(user)
            .map(|orgs| orgs.keys().cloned().collect())
            .unwrap_or_default();
        for org in orgs {
            let member_of = spaces.memberships(user, &org).await.unwrap_or_else(|e| {
                // Fail closed, as in `connect`: a removal must not be missed.
                tracing::error!(error = %e, "cannot read memberships for presence");
                BTreeSet::new()
            });
            let command = Command::SetSpaces {
                user: UserId::new(org, user),
                spaces: member_of,
                generation,
            };
            let _ = self.commands.send(command).await;
        }
    }
}

/// A connection the task knows.
struct Conn {
    user: UserId,
    outbox: Arc<Outbox>,
    /// Its presence subscriptions, counted against `max_subscriptions`.
    subscriptions: HashSet<Scope>,
}

/// The spaces the core was given for a user, and when they were read. Kept while the user
/// counts as online (`Online`).
struct Known {
    generation: u64,
    spaces: BTreeSet<SpaceId>,
}

struct Task {
    core: Presence,
    commands: mpsc::Receiver<Command>,
    conns: HashMap<u64, Conn>,
    users: HashMap<UserId, Known>,
    online: Arc<Online>,
    /// Closed connections in their grace period, by when it ends (the grace is fixed, so in
    /// order): their users still count as online until then.
    lingering: VecDeque<(Millis, UserId)>,
    grace: Millis,
    metrics: Arc<Metrics>,
    max_subscriptions: usize,
    encoded: Encoded,
    /// When the presence gauges are next refreshed, if something happened since they were.
    next_stats: Option<Instant>,
}

/// How often the presence gauges are refreshed.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// Wall-clock milliseconds since the Unix epoch: the core's time.
fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as Millis
}

impl Task {
    /// The loop: one command or one deadline, then the deadlines that passed, then every effect.
    async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let next = match (self.core.poll_timeout(), self.lingering.front()) {
                (Some(a), Some((b, _))) => Some(a.min(*b)),
                (a, b) => a.or(b.map(|(at, _)| *at)),
            };
            let deadline =
                next.map(|at| Instant::now() + Duration::from_millis(at.saturating_sub(now_ms())));
            let deadline = match (deadline, self.next_stats) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.handle(command, now_ms()),
                    None => return,
                },
                _ = sleep_until(deadline) => {}
                _ = shutdown.cancelled() => return,
            }
            let now = now_ms();
            if self.core.poll_timeout().is_some_and(|at| at <= now) {
                self.core.handle_timeout(now);
            }
            while let Some((at, _)) = self.lingering.front()
                && *at <= now
            {
                let (_, user) = self.lingering.pop_front().expect("front exists");
                self.forget(&user);
            }
            self.drain();
        }
    }

    fn handle(&mut self, command: Command, now: Millis) {
        match command {
            Command::Connect {
                conn,
                user,
                spaces,
                generation,
                outbox,
            } => self.connect(conn, user, spaces, generation, outbox, now),
            Command::Disconnect { conn } => self.disconnect(conn, now),
            Command::SetSpaces {
                user,
                spaces,
                generation,
            } => self.set_spaces(user, spaces, generation, now),
            Command::Request {
                conn,
                request,
                done,
                answer,
            } => {
                let result = self.request(conn, request, answer, now);
                let _ = done.send(result);
            }
        }
    }

    fn connect(
        &mut self,
        conn: u64,
        user: UserId,
        spaces: BTreeSet<SpaceId>,
        generation: u64,
        outbox: Arc<Outbox>,
        now: Millis,
    ) {
        let known = self.users.entry(user.clone()).or_insert_with(|| Known {
            generation,
            spaces: spaces.clone(),
        });
        if generation > known.generation {
            known.generation = generation;
            if known.spaces != spaces {
                // Newer than what the user's other connections were given.
                known.spaces = spaces;
                self.core.set_spaces(&user, known.spaces.clone(), now);
            }
        }
        let result =
            self.core
                .handle_connect(ConnId(conn), user.clone(), known.spaces.clone(), now);
        if let Err(e) = result {
            tracing::error!(conn, error = %e, "presence refused a connection");
            self.forget(&user);
            return;
        }
        self.conns.insert(
            conn,
            Conn {
                user,
                outbox,
                subscriptions: HashSet::new(),
            },
        );
    }

    fn disconnect(&mut self, conn: u64, now: Millis) {
        let Some(state) = self.conns.remove(&conn) else {
            return;
        };
        if let Err(e) = self.core.handle_disconnect(ConnId(conn), now) {
            tracing::error!(conn, error = %e, "presence lost track of a connection");
        }
        // Its entry lingers in the core for the grace period, in its spaces: keep them current.
        self.lingering.push_back((now + self.grace, state.user));
    }

    /// One connection of `user` is gone for good (or never came): count it out, and forget
    /// the user's spaces with their last connection.
    fn forget(&mut self, user: &UserId) {
        let mut last = false;
        self.online.remove_if_mut(&user.id, |_, orgs| {
            if let Some(n) = orgs.get_mut(&user.org) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    orgs.remove(&user.org);
                    last = true;
                }
            }
            orgs.is_empty()
        });
        if last {
            self.users.remove(user);
        }
    }

    fn set_spaces(
        &mut self,
        user: UserId,
        spaces: BTreeSet<SpaceId>,
        generation: u64,
        now: Millis,
    ) {
        match self.users.get_mut(&user) {
            Some(known) if generation <= known.generation => {}
            Some(known) => {
                known.generation = generation;
                if known.spaces != spaces {
                    known.spaces = spaces.clone();
                    self.core.set_spaces(&user, spaces, now);
                }
            }
            None => {
                // A connection counted online but not connected yet read its spaces before
                // this change, maybe: keep the newer ones for it.
                let coming = self
                    .online
                    .get(&user.id)
                    .is_some_and(|orgs| orgs.contains_key(&user.org));
                if coming {
                    let known = Known { generation, spaces };
                    self.users.insert(user, known);
                }
            }
        }
    }

    fn request(
        &mut self,
        conn: u64,
        request: PresenceRequest,
        answer: bool,
        now: Millis,
    ) -> Result<(), ServiceError> {
        let state = self.conns.get_mut(&conn).ok_or_else(unavailable)?;
        let core = &mut self.core;
        let encoding = state.outbox.encoding();
        let id = ConnId(conn);
        let ok = |rid| encode_reply(rid, &serde_json::Map::new(), encoding);
        let reply = match request {
            PresenceRequest::Subscribe {
                id: rid,
                scope,
                resume,
            } => {
                if !state.subscriptions.contains(&scope)
                    && state.subscriptions.len() >= self.max_subscriptions
                {
                    return Err(ServiceError::new(
                        ErrorCode::TooManySubscriptions,
                        format!(
                            "a session holds at most {} presence subscriptions",
                            self.max_subscriptions
                        ),
                    ));
                }
                let update = core
                    .subscribe(id, scope.clone(), resume, now)
                    .map_err(service_error)?;
                state.subscriptions.insert(scope);
                encode_reply(rid, &update, encoding)
            }
            PresenceRequest::Unsubscribe { id: rid, scope } => {
                core.unsubscribe(id, &scope, now).map_err(service_error)?;
                state.subscriptions.remove(&scope);
                encode_reply(rid, &ScopeReply { scope: &scope }, encoding)
            }
            PresenceRequest::SetStatus {
                id: rid,
                status,
                until,
            } => {
                core.set_status(id, status, until, now)
                    .map_err(service_error)?;
                ok(rid)
            }
            PresenceRequest::SetCustom { id: rid, custom } => {
                core.set_custom_status(id, custom, now)
                    .map_err(service_error)?;
                ok(rid)
            }
            PresenceRequest::Activity { id: rid } => {
                core.report_activity(id, now).map_err(service_error)?;
                ok(rid)
            }
            PresenceRequest::JoinRoom { id: rid, room } => {
                core.join_room(id, room, now).map_err(service_error)?;
                ok(rid)
            }
            PresenceRequest::LeaveRoom { id: rid, room } => {
                core.leave_room(id, &room, now).map_err(service_error)?;
                ok(rid)
            }
            PresenceRequest::Meeting {
                id: rid,
                room,
                in_meeting,
            } => {
                core.set_in_meeting(id, &room, in_meeting, now)
                    .map_err(service_error)?;
                ok(rid)
            }
            PresenceRequest::Typing {
                id: rid,
                room,
                thread,
            } => {
                core.typing(id, &room, thread.as_deref(), now)
                    .map_err(service_error)?;
                ok(rid)
            }
        };
        // A full outbox closes its connection as a slow consumer; its disconnect follows.
        if answer {
            let _ = state.outbox.push(reply, Instant::now());
        }
        Ok(())
    }

    /// Execute every effect the core has: deliveries into outboxes, ended subscriptions.
    fn drain(&mut self) {
        let now = Instant::now();
        while let Some(effect) = self.core.poll_output() {
            match effect {
                Effect::Deliver {
                    subscriber,
                    updates,
                } => {
                    let Some(state) = self.conns.get(&subscriber.0) else {
                        continue;
                    };
                    let frame = self.encoded.frame(&updates, state.outbox.encoding());
                    let _ = state.outbox.push(frame, now);
                    self.metrics.presence.frames.inc();
                }
                Effect::Unsubscribed { subscriber, scope } => {
                    let Some(state) = self.conns.get_mut(&subscriber.0) else {
                        continue;
                    };
                    state.subscriptions.remove(&scope);
                    let frame = ServerFrame::PresenceUnsubscribed {
                        scope,
                        code: ErrorCode::Forbidden,
                        message: "no longer a member of the space".into(),
                    };
                    let frame = encode_server(&frame, state.outbox.encoding());
                    let _ = state.outbox.push(frame, now);
                }
                Effect::RequestState { node } => {
                    // Only other nodes' states are requested; one node has none.
                    tracing::debug!(node = node.0, "presence state request ignored");
                }
            }
        }
        self.encoded.clear();
        match self.next_stats {
            None => self.next_stats = Some(now + STATS_EVERY),
            Some(at) if at <= now => self.refresh_stats(),
            Some(_) => {}
        }
    }

    /// Set the presence gauges from the core.
    fn refresh_stats(&mut self) {
        self.next_stats = None;
        let stats = self.core.stats();
        let gauges = &self.metrics.presence;
        gauges.users.set(stats.users as i64);
        gauges.connections.set(stats.connections as i64);
        gauges.scopes.set(stats.scopes as i64);
        gauges.subscriptions.set(stats.subscriptions as i64);
    }
}

#[derive(Serialize)]
struct ScopeReply<'a> {
    scope: &'a Scope,
}

fn service_error(e: presence::Error) -> ServiceError {
    use presence::Error;
    let code = match e {
        Error::UnknownConnection | Error::AlreadyConnected => ErrorCode::Internal,
        Error::NotMember => ErrorCode::NotFound,
        Error::NotInRoom | Error::InvalidStatus(_) | Error::TooMany(_) => ErrorCode::InvalidRequest,
        Error::RateLimited => ErrorCode::RateLimited,
        Error::NotSubscribed => ErrorCode::NotSubscribed,
    };
    ServiceError::new(code, e.to_string())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Encoded updates and frames of one drain. Subscribers of the same scopes get the same
/// updates (the core shares them), so each update is encoded once per encoding, and each
/// distinct frame built once: every subscriber's outbox gets a clone of the same `Bytes`.
#[derive(Default)]
struct Encoded {
    /// By the update's address; the `Arc` keeps the address from being reused meanwhile.
    updates: HashMap<usize, (Arc<ScopeUpdate>, [Option<Bytes>; 2])>,
    /// By the addresses of the frame's updates, in order, and the encoding.
    frames: HashMap<(Vec<usize>, Encoding), Bytes>,
}

impl Encoded {
    fn frame(&mut self, updates: &[Arc<ScopeUpdate>], encoding: Encoding) -> Bytes {
        let key: Vec<usize> = updates.iter().map(|u| Arc::as_ptr(u) as usize).collect();
        if let Some(frame) = self.frames.get(&(key.clone(), encoding)) {
            return frame.clone();
        }
        let parts: Vec<Bytes> = updates
            .iter()
            .map(|update| {
                let (_, encoded) = self
                    .updates
                    .entry(Arc::as_ptr(update) as usize)
                    .or_insert_with(|| (update.clone(), [None, None]));
                encoded[encoding.index()]
                    .get_or_insert_with(|| encode_update(update, encoding))
                    .clone()
            })
            .collect();
        let frame = presence_frame(&parts, encoding);
        self.frames.insert((key, encoding), frame.clone());
        frame
    }

    fn clear(&mut self) {
        self.updates.clear();
        self.frames.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::decode_client;
    use serde_json::json;

    const NOW: Millis = 1_700_000_000_000;

    fn task() -> (PresenceService, Task, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let service = PresenceService::new(&Config::default(), metrics.clone());
        let task = service.task.lock().unwrap().take().unwrap();
        (service, task, metrics)
    }

    fn subscribe(task: &mut Task, conn: u64, space: &str) -> Result<(), ServiceError> {
        let frame = json!({"type": "presence.subscribe", "id": 7, "scope": {"space": space}});
        let crate::protocol::ClientFrame::Presence(request) =
            decode_client(&serde_json::to_vec(&frame).unwrap(), 1 << 16).unwrap()
        else {
            panic!("not a presence request")
        };
        let (done, mut answer) = oneshot::channel();
        task.handle(
            Command::Request {
                conn,
                request,
                done,
                answer: true,
            },
            NOW,
        );
        answer.try_recv().unwrap()
    }

    fn connect(task: &mut Task, service: &PresenceService, conn: u64, generation: u64) {
        *service
            .online
            .entry("alice".into())
            .or_default()
            .entry("acme".into())
            .or_insert(0) += 1;
        let outbox = Arc::new(Outbox::new(conn, 1 << 20, task.metrics.clone()));
        let command = Command::Connect {
            conn,
            user: UserId::new("acme", "alice"),
            spaces: BTreeSet::new(),
            generation,
            outbox,
        };
        task.handle(command, NOW);
    }

    fn set_spaces(task: &mut Task, spaces: &[&str], generation: u64) {
        let command = Command::SetSpaces {
            user: UserId::new("acme", "alice"),
            spaces: spaces.iter().map(|s| s.to_string()).collect(),
            generation,
        };
        task.handle(command, NOW);
    }

    #[test]
    fn a_connect_read_before_a_change_gets_the_newer_spaces() {
        let (service, mut task, _) = task();
        // alice registers as online, reads her spaces (none, generation 0); meanwhile she is
        // added to `eng` and that answer reaches the task first.
        *service
            .online
            .entry("alice".into())
            .or_default()
            .entry("acme".into())
            .or_insert(0) += 1;
        set_spaces(&mut task, &["eng"], 1);
        let outbox = Arc::new(Outbox::new(1, 1 << 20, task.metrics.clone()));
        task.handle(
            Command::Connect {
                conn: 1,
                user: UserId::new("acme", "alice"),
                spaces: BTreeSet::new(),
                generation: 0,
                outbox,
            },
            NOW,
        );
        assert_eq!(subscribe(&mut task, 1, "eng"), Ok(()));
    }

    #[test]
    fn an_older_answer_never_overrides_a_newer_one() {
        let (service, mut task, _) = task();
        connect(&mut task, &service, 1, 0);
        set_spaces(&mut task, &["eng"], 2);
        // The answer of an earlier change arrives late: ignored.
        set_spaces(&mut task, &[], 1);
        assert_eq!(subscribe(&mut task, 1, "eng"), Ok(()));
        // A second device connecting with spaces read before both changes gets the newest too.
        connect(&mut task, &service, 2, 0);
        assert_eq!(subscribe(&mut task, 2, "eng"), Ok(()));
        // A newer removal applies to both, ending their subscriptions.
        set_spaces(&mut task, &[], 3);
        let mut ended = 0;
        while let Some(effect) = task.core.poll_output() {
            ended += usize::from(matches!(effect, Effect::Unsubscribed { .. }));
        }
        assert_eq!(ended, 2);
        let denied = subscribe(&mut task, 1, "eng").unwrap_err();
        assert_eq!(denied.code, ErrorCode::NotFound);
    }

    #[test]
    fn the_last_connection_is_counted_out_after_its_grace_period() {
        let (service, mut task, _) = task();
        connect(&mut task, &service, 1, 0);
        task.handle(Command::Disconnect { conn: 1 }, NOW);
        // Still online while it lingers, so membership changes still reach it.
        assert!(service.online.contains_key("alice"));
        assert_eq!(task.lingering.len(), 1);
        let (at, user) = task.lingering.pop_front().unwrap();
        assert_eq!(at, NOW + Config::default().presence_grace_ms);
        task.forget(&user);
        assert!(!service.online.contains_key("alice"));
        assert!(task.users.is_empty());
    }

    #[test]
    fn a_frame_is_built_once_for_every_subscriber() {
        let update = |offset| {
            Arc::new(ScopeUpdate {
                scope: Scope::Space("eng".into()),
                epoch: 1,
                offset,
                snapshot: false,
                entries: Vec::new(),
                typing: Vec::new(),
            })
        };
        let (a, b) = (update(1), update(2));
        let mut encoded = Encoded::default();
        let one = encoded.frame(&[a.clone(), b.clone()], Encoding::Json);
        let again = encoded.frame(&[a.clone(), b.clone()], Encoding::Json);
        assert_eq!(one.as_ptr(), again.as_ptr(), "the same bytes, not a copy");
        let other = encoded.frame(std::slice::from_ref(&a), Encoding::Msgpack);
        assert_ne!(one, other);
        let frame: ServerFrame = serde_json::from_slice(&one).unwrap();
        assert_eq!(
            frame,
            ServerFrame::Presence {
                updates: vec![(*a).clone(), (*b).clone()]
            }
        );
    }
}
