//! Meetings: one task per live meeting, owning its sans-IO core (`signaling::Meeting`).
//!
//! `Meetings` is the registry: live meetings by `space/room`, each a bounded command queue.
//! The first join spawns the meeting's task; the task ends when its last participant is gone
//! (left, or its grace period over), leaving the registry first, so a join racing with the
//! end finds its command dropped unanswered and joins a new task. Connections reach the task
//! only through `session::OpenMeetings`, which checks access before a join (WHIP/WHEP
//! sessions, joined without a connection, through `whip`, with the same check).
//!
//! The task is the only writer of its meeting's frames: it queues each request's reply into
//! the requester's outbox itself, then the frames the request caused, so a join reply always
//! comes before the frames of later changes. Frames for several connections are encoded once
//! per encoding.
//!
//! A meeting in SFU mode is also the worker of its media: its task owns the meeting's
//! `signaling::sfu::Room` (every participant's WebRTC session), takes the datagrams the SFU's
//! router (`crate::sfu`) queues for it, runs the room's timers, and sends what the room
//! transmits. Nothing else touches the room, so the packet path takes no lock. A mesh
//! meeting that asks to switch (`Output::SwitchToSfu`: it reached its size, or its room was
//! set to `sfu`) gets its room then, and the task becomes its worker the same way.

pub mod session;
pub mod whip;

use crate::hub::Outbox;
use crate::metrics::Metrics;
use crate::presence_service::PresenceService;
use crate::protocol::{ErrorCode, MeetingFrame, MeetingRequest, PresenceRequest, ServerFrame};
use crate::protocol::{RequestId, encode_server};
use crate::sfu::{Datagram, Sfu};
use crate::spaces::ServiceError;
use crate::store::MeetingSetting;
use bytes::Bytes;
use dashmap::DashMap;
use serde_json::{Value, json};
use signaling::sfu::{Room, RoomConfig, RoomStats};
use signaling::wire::{IceServer, MeetingMode};
use signaling::{ConnId, Joiner, Meeting, Output};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc::error::TrySendError;
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
/// Datagrams queued for one SFU room; beyond, the router drops them.
const DATAGRAM_QUEUE: usize = 4096;
/// Datagrams a room takes in one turn before it sends what they caused.
const DATAGRAM_BATCH: usize = 256;

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
    /// A WHIP/WHEP session's request.
    Whip(whip::Command),
    /// The room's meeting mode was set.
    Setting(MeetingSetting),
}

/// How a new meeting carries media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Its mode at creation.
    pub mode: MeetingMode,
    /// In a mesh, the participants from which it turns into SFU mode (0: never).
    pub sfu_participants: usize,
}

/// The live meetings, shared by every connection.
#[derive(Clone)]
pub struct Meetings {
    inner: Arc<Inner>,
}

struct Inner {
    live: DashMap<String, mpsc::Sender<Command>>,
    config: signaling::Config,
    /// Each SFU room's configuration, but its candidates (the SFU's).
    room: RoomConfig,
    /// Set once the server runs; meetings made before it (none, when serving) are peer to peer.
    sfu: OnceLock<Arc<Sfu>>,
    metrics: Arc<Metrics>,
    presence: Arc<PresenceService>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Meetings {
    pub fn new(
        config: signaling::Config,
        room: RoomConfig,
        metrics: Arc<Metrics>,
        presence: Arc<PresenceService>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Meetings {
        Meetings {
            inner: Arc::new(Inner {
                live: DashMap::new(),
                config,
                room,
                sfu: OnceLock::new(),
                metrics,
                presence,
                shutdown,
                tasks,
            }),
        }
    }

    /// Meetings created from now on may use `sfu` for their media.
    pub fn start_sfu(&self, sfu: Arc<Sfu>) {
        let _ = self.inner.sfu.set(sfu);
    }

    /// Whether a meeting is live in `room` of `space`.
    pub fn is_live(&self, space: &str, room: &str) -> bool {
        self.inner.live.contains_key(&key(space, room))
    }

    /// Meetings live now.
    pub fn len(&self) -> usize {
        self.inner.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.live.is_empty()
    }

    /// The task of the meeting in `room` of `space`, spawned as `plan` says if there is none.
    fn task(&self, space: &str, room: &str, plan: Plan) -> mpsc::Sender<Command> {
        self.inner
            .live
            .entry(key(space, room))
            .or_insert_with(|| {
                let (commands, queue) = mpsc::channel(QUEUE);
                let me = commands.downgrade();
                let task = MeetingTask::new(self.inner.clone(), space, room, me, plan);
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

impl Meetings {
    /// `user` may no longer use `space` (`room: None`) or its `room`: their WHIP/WHEP sessions
    /// in its live meetings end, their participants leaving with reason `access`. (Their
    /// connections' participants leave through their connections, which the users registry
    /// tells.)
    pub fn access_lost(&self, space: &str, room: Option<&str>, user: &str) {
        let prefix = format!("{space}/");
        let tasks: Vec<mpsc::Sender<Command>> = (self.inner.live.iter())
            .filter(|e| match room {
                Some(room) => *e.key() == key(space, room),
                None => e.key().starts_with(&prefix),
            })
            .map(|e| e.value().clone())
            .collect();
        for commands in tasks {
            let command = whip::Command::Revoke {
                user: user.to_string(),
            };
            tell(commands, Command::Whip(command));
        }
    }
}

/// Queue `command` for a meeting's task before the caller's reply when there is room (so
/// requests after the reply see it); otherwise it must still not be lost, and the reply must
/// not wait for it.
fn tell(commands: mpsc::Sender<Command>, command: Command) {
    if let Err(TrySendError::Full(command)) = commands.try_send(command) {
        tokio::spawn(async move {
            let _ = commands.send(command).await;
        });
    }
}

impl crate::chat::RoomListener for Meetings {
    /// The live meeting of the room follows its new setting.
    fn meeting_mode_set(&self, space: &str, room: &str, mode: MeetingSetting) {
        if let Some(commands) = self.inner.live.get(&key(space, room)).map(|c| c.clone()) {
            tell(commands, Command::Setting(mode));
        }
    }

    fn access_lost(&self, space: &str, room: &str, user: &str) {
        Meetings::access_lost(self, space, Some(room), user);
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
    /// Presence changes of connections, told in order by a helper task; `None`: close the
    /// connection (a WHIP/WHEP session's).
    presence: mpsc::Sender<(ConnId, Option<PresenceRequest>)>,
    presence_rx: Option<mpsc::Receiver<(ConnId, Option<PresenceRequest>)>>,
    /// Participants counted in the metrics.
    counted: usize,
    plan: Plan,
    /// SFU mode: the router, this room's queue, and the room's counters already reported.
    media: Option<Media>,
    /// Where the router queues this meeting's datagrams, in SFU mode.
    datagrams: mpsc::Sender<Datagram>,
    datagrams_rx: Option<mpsc::Receiver<Datagram>>,
    /// WHIP/WHEP sessions (participants without a connection).
    whip: whip::Clients,
}

struct Media {
    sfu: Arc<Sfu>,
    inbox: mpsc::Sender<Datagram>,
    reported: RoomStats,
    sessions: usize,
}

impl MeetingTask {
    fn new(
        inner: Arc<Inner>,
        space: &str,
        room: &str,
        me: mpsc::WeakSender<Command>,
        plan: Plan,
    ) -> MeetingTask {
        let (presence, presence_rx) = mpsc::channel(PRESENCE_QUEUE);
        let (datagrams, datagrams_rx) = mpsc::channel(DATAGRAM_QUEUE);
        MeetingTask {
            inner,
            space: space.to_string(),
            room: room.to_string(),
            me,
            outboxes: HashMap::new(),
            presence,
            presence_rx: Some(presence_rx),
            counted: 0,
            plan,
            media: None,
            datagrams,
            datagrams_rx: Some(datagrams_rx),
            whip: whip::Clients::default(),
        }
    }

    async fn run(mut self, mut queue: mpsc::Receiver<Command>) {
        let metrics = self.inner.metrics.meetings.clone();
        metrics.open.inc();
        self.spawn_presence();
        let prefix = crate::spaces::random_id()[..6].to_string();
        let config = signaling::Config {
            sfu_participants: self.plan.sfu_participants,
            ..self.inner.config
        };
        let mut core = Meeting::new(&self.space, &self.room, &prefix, config);
        let mut datagrams_rx = self.datagrams_rx.take().expect("run once");
        if self.plan.mode == MeetingMode::Sfu {
            match self.new_room() {
                Some((room, media)) => {
                    core = core.with_sfu(room);
                    self.start_media(media);
                }
                None => tracing::warn!("no SFU running: the meeting is peer to peer"),
            }
        }
        tracing::debug!(mode = ?core.mode(), "meeting started");
        loop {
            let deadline = core.poll_timeout();
            let media_deadline = core.sfu_mut().and_then(|room| room.poll_timeout());
            let token_deadline = self.whip.next_expiry();
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
                Some(datagram) = datagrams_rx.recv(), if self.media.is_some() => {
                    let room = core.sfu_mut().expect("SFU mode");
                    let mut datagram = datagram;
                    for _ in 0..DATAGRAM_BATCH {
                        let Datagram { source, destination, at, contents } = datagram;
                        room.handle_datagram(at, source, destination, &contents);
                        match datagrams_rx.try_recv() {
                            Ok(next) => datagram = next,
                            Err(_) => break,
                        }
                    }
                }
                _ = sleep_until_instant(media_deadline) => {
                    let room = core.sfu_mut().expect("a media deadline comes from the room");
                    room.handle_timeout(std::time::Instant::now());
                }
                // A WHIP/WHEP session's token expired: `expire_clients` ends it.
                _ = sleep_until_ms(token_deadline), if token_deadline.is_some() => {}
                _ = self.inner.shutdown.cancelled() => break,
            }
            self.expire_clients(&mut core);
            self.execute(&mut core);
            if core.is_empty() && self.end(&mut queue) {
                break;
            }
        }
        metrics.open.dec();
        metrics.participants.dec_by(self.counted as i64);
        if let Some(media) = &self.media {
            let sfu = &self.inner.metrics.sfu;
            sfu.rooms.dec();
            sfu.sessions.dec_by(media.sessions as i64);
            // Sessions still routed (at shutdown) are forgotten with the room.
            if let Some(room) = core.sfu_mut() {
                for ufrag in room.ufrags() {
                    media.sfu.unroute(ufrag);
                }
            }
        }
        tracing::debug!("meeting ended");
    }

    /// A media room on the running SFU, with what its worker needs; `None` without an SFU.
    fn new_room(&self) -> Option<(Room, Media)> {
        let sfu = self.inner.sfu.get()?;
        let config = RoomConfig {
            candidates: sfu.candidates().to_vec(),
            ..self.inner.room.clone()
        };
        let media = Media {
            sfu: sfu.clone(),
            inbox: self.datagrams.clone(),
            reported: RoomStats::default(),
            sessions: 0,
        };
        Some((Room::new(config, std::time::Instant::now()), media))
    }

    /// This task is the worker of the meeting's room from now on.
    fn start_media(&mut self, media: Media) {
        self.inner.metrics.sfu.rooms.inc();
        self.media = Some(media);
    }

    /// The mesh meeting asked to turn into SFU mode: give it a room, if an SFU runs.
    fn switch(&mut self, core: &mut Meeting) {
        let Some((room, media)) = self.new_room() else {
            tracing::warn!("no SFU running: the meeting stays peer to peer");
            return;
        };
        match core.switch_to_sfu(room) {
            Ok(()) => {
                self.start_media(media);
                tracing::debug!(participants = core.len(), "switched to SFU mode");
            }
            Err(e) => tracing::warn!(error = %e, "the meeting stays peer to peer"),
        }
    }

    /// Tell presence in order, off the meeting's loop (presence may be busy).
    fn spawn_presence(&mut self) {
        let Some(mut queue) = self.presence_rx.take() else {
            return;
        };
        let presence = self.inner.presence.clone();
        self.inner.tasks.spawn(async move {
            while let Some((conn, request)) = queue.recv().await {
                match request {
                    // Best effort: a closed connection has left presence already.
                    Some(request) => {
                        let _ = presence.tell(conn, request).await;
                    }
                    None => presence.disconnect(conn).await,
                }
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
            Command::Whip(command) => self.whip(core, command),
            Command::Setting(setting) => core.set_sfu_participants(match setting {
                MeetingSetting::Auto => self.inner.config.sfu_participants,
                MeetingSetting::Mesh => 0,
                // Any participant: at once.
                MeetingSetting::Sfu => 1,
            }),
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
                simulcast,
                ..
            } => {
                let track = core.publish(conn, &cid, kind, source, muted)?;
                // Layers are for video (an audio track ignores the flag); the track was
                // just published, so this does not fail.
                if simulcast && kind == signaling::wire::TrackKind::Video {
                    core.simulcast(conn, &track.sid)?;
                }
                json!({ "track": track })
            }
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
            MeetingRequest::Answer { sdp, .. } => {
                core.answer(conn, &sdp)?;
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
            MeetingRequest::Layout {
                track,
                width,
                height,
                ..
            } => {
                core.layout(conn, &track, width, height)?;
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
                        // A full outbox closes its connection as a slow consumer; its
                        // disconnect follows.
                        let _ = outbox.push(Encoded::new(frame).get(outbox), now);
                    }
                }
                Output::Broadcast { conns, frame } => {
                    let mut encoded = Encoded::new(frame);
                    for conn in conns {
                        if let Some(outbox) = self.outboxes.get(&conn) {
                            let _ = outbox.push(encoded.get(outbox), now);
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
                        if self.presence.try_send((conn, Some(request))).is_err() {
                            tracing::debug!(conn, "presence queue full: meeting flag not told");
                        }
                    }
                    if !in_meeting {
                        self.left_presence(conn);
                    }
                }
                Output::SwitchToSfu => self.switch(core),
                Output::Route { ufrag, open } => {
                    let Some(media) = &self.media else { continue };
                    if !open {
                        media.sfu.unroute(&ufrag);
                    } else if !media.sfu.route(ufrag, media.inbox.clone()) {
                        tracing::warn!("the SFU routes as many sessions as it may");
                    }
                }
            }
        }
        self.send_media(core);
        let count = core.len();
        let metrics = &self.inner.metrics.meetings;
        metrics
            .participants
            .inc_by(count as i64 - self.counted as i64);
        self.counted = count;
    }

    /// SFU mode: send what the room transmits, and report its counters.
    fn send_media(&mut self, core: &mut Meeting) {
        let (Some(media), Some(room)) = (&mut self.media, core.sfu_mut()) else {
            return;
        };
        while let Some(transmit) = room.poll_transmit() {
            media.sfu.send(transmit.destination, &transmit.contents);
        }
        let stats = room.stats();
        let metrics = &self.inner.metrics.sfu;
        let forwarded = stats.forwarded_packets - media.reported.forwarded_packets;
        metrics.forwarded_packets.inc_by(forwarded);
        let bytes = stats.forwarded_bytes - media.reported.forwarded_bytes;
        metrics.forwarded_bytes.inc_by(bytes);
        let dropped = stats.dropped_transmits - media.reported.dropped_transmits;
        metrics.dropped_datagrams.inc_by(dropped);
        let frames = (stats.dropped_frames + stats.shed_frames)
            - (media.reported.dropped_frames + media.reported.shed_frames);
        metrics.dropped_frames.inc_by(frames);
        media.reported = stats;
        metrics
            .sessions
            .inc_by(room.len() as i64 - media.sessions as i64);
        media.sessions = room.len();
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

async fn sleep_until_instant(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
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
