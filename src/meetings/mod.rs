//! Meetings: one task per live meeting, owning its sans-IO core (`signaling::Meeting`).
//!
//! `Meetings` is the registry: live meetings by `space/room`, each a bounded command queue.
//! The first join spawns the meeting's task; the task ends when its last participant is gone
//! (left, or its grace period over), leaving the registry first, so a join racing with the
//! end finds its command dropped unanswered and joins a new task. Connections reach the task
//! only through `session::OpenMeetings`, which checks access before a join.
//!
//! The task is the only writer of its meeting's frames: it queues each request's reply into
//! the requester's outbox itself, then the frames the request caused, so a join reply always
//! comes before the frames of later changes. Frames for several connections are encoded once
//! per encoding.

pub mod session;

use crate::hub::Outbox;
use crate::metrics::Metrics;
use crate::presence_service::PresenceService;
use crate::protocol::{ErrorCode, MeetingFrame, MeetingRequest, PresenceRequest, ServerFrame};
use crate::protocol::{RequestId, encode_server};
use crate::spaces::ServiceError;
use bytes::Bytes;
use dashmap::DashMap;
use serde_json::{Value, json};
use signaling::wire::IceServer;
use signaling::{ConnId, Joiner, Meeting, Output};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Commands queued for one meeting's task. Bounded: a connection whose requests outrun the
/// meeting waits (its socket stops being read), and only it.
const QUEUE: usize = 256;
/// Commands a task takes in one turn before it sends what they caused: the participant
/// changes of a burst of requests share one frame.
const BATCH: usize = 64;
/// Presence changes waiting to be told; beyond it they are dropped (presence is best effort
/// for meetings, as for documents).
const PRESENCE_QUEUE: usize = 256;

/// The answer to a command: `Ok` once the reply is queued to the connection.
type Done = oneshot::Sender<Result<(), ServiceError>>;

pub(crate) enum Command {
    /// Join (checked by the caller); dropping `done` unanswered means the task is ending.
    Join {
        conn: ConnId,
        outbox: Arc<Outbox>,
        id: RequestId,
        joiner: Joiner,
        resume: Option<String>,
        ice_servers: Vec<IceServer>,
        done: Done,
    },
    /// Any other request of a connection that joined.
    Request {
        conn: ConnId,
        outbox: Arc<Outbox>,
        request: MeetingRequest,
        done: Done,
    },
    /// The connection closed.
    Disconnect { conn: ConnId },
    /// The connection's user lost access to the room.
    Revoke { conn: ConnId },
}

/// The live meetings, shared by every connection.
#[derive(Clone)]
pub struct Meetings {
    inner: Arc<Inner>,
}

struct Inner {
    live: DashMap<String, mpsc::Sender<Command>>,
    config: signaling::Config,
    metrics: Arc<Metrics>,
    presence: Arc<PresenceService>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Meetings {
    pub fn new(
        config: signaling::Config,
        metrics: Arc<Metrics>,
        presence: Arc<PresenceService>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Meetings {
        Meetings {
            inner: Arc::new(Inner {
                live: DashMap::new(),
                config,
                metrics,
                presence,
                shutdown,
                tasks,
            }),
        }
    }

    /// Meetings live now.
    pub fn len(&self) -> usize {
        self.inner.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.live.is_empty()
    }

    /// The task of the meeting in `room` of `space`, spawned if there is none.
    fn task(&self, space: &str, room: &str) -> mpsc::Sender<Command> {
        self.inner
            .live
            .entry(key(space, room))
            .or_insert_with(|| {
                let (commands, queue) = mpsc::channel(QUEUE);
                let task = MeetingTask::new(self.inner.clone(), space, room, commands.downgrade());
                let span = tracing::debug_span!("meeting", space, room);
                self.inner.tasks.spawn(task.run(queue).instrument(span));
                commands
            })
            .clone()
    }

    /// Forget `commands` as the task of `space/room`, if it still is (it was ending).
    fn forget(&self, space: &str, room: &str, commands: &mpsc::Sender<Command>) {
        self.inner
            .live
            .remove_if(&key(space, room), |_, live| live.same_channel(commands));
    }
}

fn key(space: &str, room: &str) -> String {
    format!("{space}/{room}")
}

struct MeetingTask {
    inner: Arc<Inner>,
    space: String,
    room: String,
    /// Its own queue, to leave the registry only if it is still the one there.
    me: mpsc::WeakSender<Command>,
    /// The outboxes of the connections in the meeting.
    outboxes: HashMap<ConnId, Arc<Outbox>>,
    /// Presence changes of connections, told in order by a helper task.
    presence: mpsc::Sender<(ConnId, PresenceRequest)>,
    presence_rx: Option<mpsc::Receiver<(ConnId, PresenceRequest)>>,
    /// Participants counted in the metrics.
    counted: usize,
}

impl MeetingTask {
    fn new(
        inner: Arc<Inner>,
        space: &str,
        room: &str,
        me: mpsc::WeakSender<Command>,
    ) -> MeetingTask {
        let (presence, presence_rx) = mpsc::channel(PRESENCE_QUEUE);
        MeetingTask {
            inner,
            space: space.to_string(),
            room: room.to_string(),
            me,
            outboxes: HashMap::new(),
            presence,
            presence_rx: Some(presence_rx),
            counted: 0,
        }
    }

    async fn run(mut self, mut queue: mpsc::Receiver<Command>) {
        let metrics = self.inner.metrics.meetings.clone();
        metrics.open.inc();
        self.spawn_presence();
        let prefix = crate::spaces::random_id()[..6].to_string();
        let mut core = Meeting::new(&self.space, &self.room, &prefix, self.inner.config);
        tracing::debug!("meeting started");
        loop {
            let deadline = core.poll_timeout();
            tokio::select! {
                command = queue.recv() => {
                    let Some(command) = command else { break };
                    self.handle(&mut core, command);
                    // A burst of commands: handle them all, then send what they caused.
                    for _ in 1..BATCH {
                        match queue.try_recv() {
                            Ok(command) => self.handle(&mut core, command),
                            Err(_) => break,
                        }
                    }
                }
                _ = sleep_until_ms(deadline) => core.handle_timeout(crate::server::unix_ms() as u64),
                _ = self.inner.shutdown.cancelled() => break,
            }
            self.execute(&mut core);
            if core.is_empty() && self.end(&mut queue) {
                break;
            }
        }
        metrics.open.dec();
        metrics.participants.dec_by(self.counted as i64);
        tracing::debug!("meeting ended");
    }

    /// Tell presence in order, off the meeting's loop (presence may be busy).
    fn spawn_presence(&mut self) {
        let Some(mut queue) = self.presence_rx.take() else {
            return;
        };
        let presence = self.inner.presence.clone();
        self.inner.tasks.spawn(async move {
            while let Some((conn, request)) = queue.recv().await {
                // Best effort: a closed connection has left presence already.
                let _ = presence.tell(conn, request).await;
            }
        });
    }

    fn handle(&mut self, core: &mut Meeting, command: Command) {
        let now = crate::server::unix_ms() as u64;
        match command {
            Command::Join {
                conn,
                outbox,
                id,
                joiner,
                resume,
                ice_servers,
                done,
            } => match core.join(conn, joiner, resume.as_deref(), now) {
                Ok(mut reply) => {
                    reply.ice_servers = ice_servers;
                    self.inner.metrics.meetings.joins.inc();
                    self.outboxes.insert(conn, outbox.clone());
                    reply_to(&outbox, id, json!(reply), done);
                }
                Err(e) => {
                    let _ = done.send(Err(service_error(e)));
                }
            },
            Command::Request {
                conn,
                outbox,
                request,
                done,
            } => {
                let id = request.id();
                match self.request(core, conn, request) {
                    Ok(result) => reply_to(&outbox, id, result, done),
                    Err(e) => {
                        let _ = done.send(Err(service_error(e)));
                    }
                }
            }
            Command::Disconnect { conn } => {
                core.handle_disconnect(conn, now);
                self.outboxes.remove(&conn);
            }
            Command::Revoke { conn } => core.revoke(conn),
        }
    }

    fn request(
        &mut self,
        core: &mut Meeting,
        conn: ConnId,
        request: MeetingRequest,
    ) -> Result<Value, signaling::Error> {
        let metrics = &self.inner.metrics.meetings;
        Ok(match request {
            MeetingRequest::Join { .. } => unreachable!("joins come as Command::Join"),
            MeetingRequest::Publish {
                cid,
                kind,
                source,
                muted,
                ..
            } => json!({"track": core.publish(conn, &cid, kind, source, muted)?}),
            MeetingRequest::Unpublish { track, .. } => {
                core.unpublish(conn, &track)?;
                json!({})
            }
            MeetingRequest::Signal {
                to,
                kind,
                sdp,
                candidate,
                ..
            } => {
                core.signal(conn, &to, kind, sdp, candidate)?;
                metrics.signals.inc();
                json!({})
            }
            MeetingRequest::Mute {
                track,
                muted,
                participant,
                ..
            } => json!({"track": core.mute(conn, &track, muted, participant.as_deref())?}),
            MeetingRequest::Remove { participant, .. } => {
                core.remove(conn, &participant)?;
                json!({})
            }
            MeetingRequest::Data {
                payload, topic, to, ..
            } => {
                core.data(conn, payload, topic, to)?;
                metrics.data.inc();
                json!({})
            }
            MeetingRequest::Leave { reason, .. } => {
                core.leave(conn, reason)?;
                json!({})
            }
        })
    }

    /// Carry out the core's outputs.
    fn execute(&mut self, core: &mut Meeting) {
        let now = Instant::now();
        while let Some(output) = core.poll_output() {
            match output {
                Output::Send { conn, frame } => {
                    if let Some(outbox) = self.outboxes.get(&conn) {
                        let mut encoded = Encoded::new(frame);
                        self.push(outbox, encoded.get(outbox), now);
                    }
                }
                Output::Broadcast { conns, frame } => {
                    let mut encoded = Encoded::new(frame);
                    for conn in conns {
                        if let Some(outbox) = self.outboxes.get(&conn) {
                            self.push(outbox, encoded.get(outbox), now);
                        }
                    }
                }
                Output::Presence { conn, in_meeting } => {
                    if !in_meeting {
                        self.outboxes.remove(&conn);
                    }
                    let room = presence::RoomId {
                        space: self.space.clone(),
                        id: self.room.clone(),
                    };
                    // In the room first: presence keeps the flag per room of the connection.
                    let requests = if in_meeting {
                        [
                            PresenceRequest::JoinRoom {
                                id: 0,
                                room: room.clone(),
                            },
                            PresenceRequest::Meeting {
                                id: 0,
                                room,
                                in_meeting,
                            },
                        ]
                    } else {
                        [
                            PresenceRequest::Meeting {
                                id: 0,
                                room: room.clone(),
                                in_meeting,
                            },
                            PresenceRequest::LeaveRoom { id: 0, room },
                        ]
                    };
                    for request in requests {
                        if self.presence.try_send((conn, request)).is_err() {
                            tracing::debug!(conn, "presence queue full: meeting flag not told");
                        }
                    }
                }
            }
        }
        let count = core.len();
        let metrics = &self.inner.metrics.meetings;
        metrics
            .participants
            .inc_by(count as i64 - self.counted as i64);
        self.counted = count;
    }

    fn push(&self, outbox: &Outbox, frame: Bytes, now: Instant) {
        // A full outbox closes its connection as a slow consumer; its disconnect follows.
        if outbox.push(frame, now).is_ok() {
            self.inner.metrics.queued_frames.inc();
        }
    }

    /// The meeting is empty: leave the registry if nobody is queued. True if the task ends.
    fn end(&mut self, queue: &mut mpsc::Receiver<Command>) -> bool {
        if !queue.is_empty() {
            return false;
        }
        if let Some(me) = self.me.upgrade() {
            self.inner
                .live
                .remove_if(&key(&self.space, &self.room), |_, live| {
                    live.same_channel(&me)
                });
        }
        // Commands that got our queue before we left the registry are dropped unanswered:
        // joins join a new task, other requests find the meeting gone.
        queue.close();
        true
    }
}

/// Queue `result` as the reply to request `id` and tell the connection it is queued.
fn reply_to(outbox: &Outbox, id: RequestId, result: Value, done: Done) {
    let frame = encode_server(&ServerFrame::Reply { id, result }, outbox.encoding());
    let _ = outbox.push(frame, Instant::now());
    let _ = done.send(Ok(()));
}

/// One frame encoded at most once per encoding.
struct Encoded {
    frame: ServerFrame,
    bytes: [Option<Bytes>; 2],
}

impl Encoded {
    fn new(frame: MeetingFrame) -> Encoded {
        Encoded {
            frame: ServerFrame::Meeting(frame),
            bytes: [None, None],
        }
    }

    fn get(&mut self, outbox: &Outbox) -> Bytes {
        let encoding = outbox.encoding();
        let frame = &self.frame;
        self.bytes[encoding.index()]
            .get_or_insert_with(|| encode_server(frame, encoding))
            .clone()
    }
}

/// The protocol error of a refusal of the core.
pub fn service_error(e: signaling::Error) -> ServiceError {
    let code = match &e {
        signaling::Error::NotJoined => ErrorCode::NotSubscribed,
        signaling::Error::NotFound(_) => ErrorCode::NotFound,
        signaling::Error::Forbidden(_) => ErrorCode::Forbidden,
        signaling::Error::Invalid(_) => ErrorCode::InvalidRequest,
        signaling::Error::LimitExceeded(_) => ErrorCode::LimitExceeded,
    };
    ServiceError::new(code, e.to_string())
}

async fn sleep_until_ms(deadline: Option<u64>) {
    match deadline {
        Some(at) => {
            let wait = at.saturating_sub(crate::server::unix_ms() as u64);
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        }
        None => std::future::pending().await,
    }
}
