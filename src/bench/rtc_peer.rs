//! A meeting participant with real WebRTC media (webrtc-rs): the base of `chorus bench meeting`
//! and of the interop tests with browsers.
//!
//! A `MeetingPeer` joins a meeting over one session connection (a bench `Conn`) and publishes
//! a camera (VP8) and a microphone (Opus) track. In a mesh it holds one `PeerConnection` per
//! other active participant, negotiated as the browser SDK does (`sdk/js/meeting.js`,
//! `docs/protocol.md` 15.6): perfect negotiation per pair, trickle ICE through
//! `meeting.signal`, one transceiver per published track whose `a=msid` names the track's
//! `cid`, directions fitted to the grants. A browser and this peer meet in one room.
//!
//! In SFU mode (15.7) it holds one `PeerConnection`, with the server, which always offers:
//! each `meeting.offer` is answered (`meeting.answer`); each published track gets a `sendonly`
//! transceiver when the server accepts it, which the offer's `recvonly` line for the track
//! takes (checked by mid against the offer's media list); the lines of other participants'
//! tracks are named by that list, so their packets are counted per sender as in a mesh. The
//! server is ICE-lite and learns this peer's address from its connectivity checks: no
//! candidates are sent.
//!
//! The media is synthetic (`media`): each track sends `packet_rate` RTP packets a second, each
//! a whole VP8 frame (a keyframe every second) or one Opus silence frame. Per remote track the
//! peer counts packets, bytes, loss from sequence numbers, duplicates, keyframes and the time
//! from its join to the first packet; it sends a PLI on the first video packet, and again each
//! second until a keyframe comes (a sender may drop a request that follows its own keyframe).
//!
//! Tasks: one reads the session connection into a bounded queue; one loop owns the session's
//! writer, the participants and the peer connections, and does every negotiation step in
//! order; each remote track has a reader task, each connected peer connection a sender task.
//! The decisions live in plain structs: `negotiation::{Negotiation, SfuNegotiation}` and
//! `media`.

pub mod media;
pub mod negotiation;

use super::scan;
use super::target::{Conn, encode_request};
use super::wire::{Reader, Writer};
use crate::protocol::{Encoding, ServerFrame};
use anyhow::{Context, anyhow, bail};
use media::{Outgoing, Pacer, TrackCounter};
use negotiation::{Negotiation, OnCandidate, OnDescription, SfuNegotiation, fit_direction};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::RTCRtpTransceiverDirection as Direction;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use serde::Serialize;
use serde_json::{Value, json};
use signaling::wire::{
    Candidate, Grants, JoinReply, MediaLine, MeetingFrame, MeetingMode, Participant,
    ParticipantState, SignalKind, TrackKind,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use webrtc::media_stream::Track;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState, RTCIceServer,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, Registry,
    SettingEngineBuilder, register_default_interceptors,
};
use webrtc::rtp_transceiver::{RTCRtpTransceiverInit, RtpSender, RtpTransceiver};

/// Frames read from the session connection and not yet handled.
const FRAME_QUEUE: usize = 1024;
/// Peer connection events (candidates, state changes) not yet handled.
const EVENT_QUEUE: usize = 1024;
/// Remote tracks one peer keeps counters for (each renegotiation may add tracks).
const MAX_REMOTE_TRACKS: usize = 4096;
/// Negotiation steps a peer remembers.
const HISTORY: usize = 64;
/// The longest a join may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest leaving (closing every peer connection) may take.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Payload types offered for the synthetic media (the answerer may pick others).
const VP8_PAYLOAD_TYPE: u8 = 96;
const OPUS_PAYLOAD_TYPE: u8 = 111;

/// How a `MeetingPeer` joins and what it sends.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub room: String,
    /// The space (default: the user's organisation's home space).
    pub space: Option<String>,
    /// Display name (default: the token's).
    pub name: Option<String>,
    /// Publish a camera and a microphone track (refused without the `publish` grant).
    pub publish: bool,
    /// RTP packets per second of each published track.
    pub packet_rate: f64,
    /// Bytes of each synthetic VP8 payload.
    pub video_bytes: usize,
    /// Address the peer connections gather their (host) candidates on.
    pub bind: IpAddr,
    /// The mode this peer speaks, asked for when its join creates the meeting; a meeting in
    /// the other mode is refused.
    pub mode: MeetingMode,
}

/// What one remote track brought, as counted so far.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteTrackReport {
    /// The sender's participant sid.
    pub participant: String,
    /// The sender's track id (`a=msid`), which is the `cid` it published.
    pub cid: String,
    pub kind: TrackKind,
    pub packets: u64,
    pub bytes: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// VP8 keyframes begun after the first packet (the PLI).
    pub keyframes: u64,
    /// PLIs sent: on the first packet, then every second until a keyframe comes.
    pub keyframe_requests: u64,
    /// From this peer's join reply to the track's first packet.
    pub first_packet_ms: Option<f64>,
}

/// A peer's state: its identity in the meeting and its counters.
#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    pub sid: String,
    pub grants: Grants,
    /// `meeting.join` request to reply.
    pub join_latency_ms: f64,
    /// The `cid`s of the tracks the server accepted.
    pub published: Vec<String>,
    pub remote: Vec<RemoteTrackReport>,
    /// RTP packets handed to peer connections.
    pub sent_packets: u64,
    /// Packets not sent because the sender fell behind by more than the pacer's catch-up
    /// (the tool was the limit).
    pub late_packets: u64,
    /// Failures by what failed (`publish: forbidden`, `signal: …`, …).
    pub errors: BTreeMap<String, u64>,
    /// Why the peer stopped before leaving, if it did.
    pub ended: Option<String>,
    /// The last negotiation steps (`HISTORY` at most), oldest first, to tell what happened
    /// when media does not flow.
    pub history: Vec<String>,
    /// Server frames this peer does not know (a newer server's), skipped.
    pub ignored_frames: u64,
}

impl PeerReport {
    /// The remote tracks of `participant`.
    pub fn from(&self, participant: &str) -> impl Iterator<Item = &RemoteTrackReport> {
        self.remote
            .iter()
            .filter(move |t| t.participant == participant)
    }
}

/// What the tasks of one peer share: counters, under a lock held for a few instructions.
#[derive(Default)]
struct View {
    remote: Vec<RemoteTrack>,
    sent_packets: u64,
    late_packets: u64,
    published: Vec<String>,
    errors: BTreeMap<String, u64>,
    ended: Option<String>,
    history: VecDeque<String>,
    ignored_frames: u64,
    /// SFU mode: who sent each remote track, by its sid (the `a=msid` track id of its line),
    /// as `(participant, cid)`; set before the offer bringing it is applied.
    senders: HashMap<String, (String, String)>,
}

struct RemoteTrack {
    participant: String,
    cid: String,
    counter: TrackCounter,
}

#[derive(Default)]
struct Shared {
    view: Mutex<View>,
}

impl Shared {
    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().expect("no task panics holding the view")
    }

    fn error(&self, what: impl Into<String>) {
        *self.view().errors.entry(what.into()).or_insert(0) += 1;
    }

    /// Note a negotiation step in the history.
    fn step(&self, what: String) {
        let mut view = self.view();
        if view.history.len() == HISTORY {
            view.history.pop_front();
        }
        view.history.push_back(what);
    }
}

/// A meeting participant with WebRTC media; see the module documentation.
pub struct MeetingPeer {
    sid: String,
    grants: Grants,
    join_latency: Duration,
    shared: Arc<Shared>,
    leave: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Drop for MeetingPeer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

enum Inbound {
    Frame(ServerFrame),
    /// A frame this peer does not know (a newer server's): skipped.
    Unknown,
    /// A WebSocket ping's payload.
    Ping(Vec<u8>),
    Closed(String),
}

impl MeetingPeer {
    /// Join `config.room` over `conn` (a connection that said `hello`), then run in the
    /// background until `leave`. Fails if the join is refused or takes over `JOIN_TIMEOUT`.
    pub async fn join(conn: Conn, config: PeerConfig) -> anyhow::Result<MeetingPeer> {
        let encoding = conn.encoding;
        let (reader, writer) = conn.into_parts();
        let (frames_tx, mut frames) = mpsc::channel(FRAME_QUEUE);
        let reader = tokio::spawn(read_frames(reader, frames_tx));
        let mut out = Outbox {
            writer,
            encoding,
            next_id: 1,
            room: config.room.clone(),
            space: config.space.clone(),
        };
        // A meeting this join creates gets the peer's mode; one in another mode is refused.
        let mut join = json!({"type": "meeting.join", "mode": config.mode});
        if let Some(name) = &config.name {
            join["name"] = json!(name);
        }
        let started = Instant::now();
        let id = out.request(join)?;
        out.writer.flush().await?;
        let mut early = Vec::new();
        let waited = tokio::time::timeout(JOIN_TIMEOUT, async {
            loop {
                match frames.recv().await {
                    Some(Inbound::Frame(ServerFrame::Reply { id: got, result })) if got == id => {
                        return Ok(result);
                    }
                    Some(Inbound::Frame(ServerFrame::Error {
                        id: Some(got),
                        code,
                        message,
                    })) if got == id => bail!("meeting.join refused: {code}: {message}"),
                    Some(Inbound::Frame(ServerFrame::Ping)) => {
                        out.writer.answer_ping();
                        out.writer.flush().await?;
                    }
                    Some(Inbound::Ping(payload)) => {
                        out.writer.pong(&payload);
                        out.writer.flush().await?;
                    }
                    Some(Inbound::Frame(frame)) if early.len() < FRAME_QUEUE => early.push(frame),
                    Some(Inbound::Unknown) => {}
                    Some(Inbound::Frame(_)) => bail!("too many frames before the join reply"),
                    Some(Inbound::Closed(reason)) => bail!("the server closed: {reason}"),
                    None => bail!("the connection's reader stopped"),
                }
            }
        })
        .await;
        let result = match waited {
            Ok(result) => result,
            Err(_) => Err(anyhow!("no join reply within {JOIN_TIMEOUT:?}")),
        };
        let mode = config.mode;
        let reply = result
            .and_then(|r| {
                serde_json::from_value::<JoinReply>(r).context("the join reply does not parse")
            })
            .and_then(|reply| match reply.mode {
                got if got == mode => Ok(reply),
                got => {
                    bail!("the meeting carries media in {got:?} mode; this peer speaks {mode:?}")
                }
            });
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                reader.abort();
                return Err(e);
            }
        };
        let joined_at = Instant::now();
        out.room = reply.room.clone();
        out.space = Some(reply.space.clone());
        let shared = Arc::new(Shared::default());
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let (leave_tx, leave) = tokio::sync::oneshot::channel();
        let sid = reply.participant.sid.clone();
        let grants = reply.grants;
        let mut stream = [0u8; 6];
        getrandom::fill(&mut stream)?;
        let stream = format!("rtc-{}", hex::encode(stream));
        let local = if config.publish {
            vec![
                LocalTrack::new(&stream, TrackKind::Audio),
                LocalTrack::new(&stream, TrackKind::Video),
            ]
        } else {
            Vec::new()
        };
        let session = Session {
            out,
            sid: sid.clone(),
            grants,
            ice_servers: reply
                .ice_servers
                .iter()
                .map(|s| RTCIceServer {
                    urls: s.urls.clone(),
                    username: s.username.clone().unwrap_or_default(),
                    credential: s.credential.clone().unwrap_or_default(),
                })
                .collect(),
            config,
            joined_at,
            shared: shared.clone(),
            events_tx,
            participants: HashMap::new(),
            peers: HashMap::new(),
            sfu: None,
            generation: 0,
            local,
            publishing: HashMap::new(),
        };
        let task =
            tokio::spawn(session.run(reply.participants, early, frames, events, leave, reader));
        Ok(MeetingPeer {
            sid,
            grants,
            join_latency: joined_at - started,
            shared,
            leave: Some(leave_tx),
            task: Some(task),
        })
    }

    pub fn sid(&self) -> &str {
        &self.sid
    }

    pub fn join_latency(&self) -> Duration {
        self.join_latency
    }

    /// The counters so far.
    pub fn report(&self) -> PeerReport {
        let view = self.shared.view();
        PeerReport {
            sid: self.sid.clone(),
            grants: self.grants,
            join_latency_ms: self.join_latency.as_secs_f64() * 1000.0,
            published: view.published.clone(),
            remote: view
                .remote
                .iter()
                .map(|t| RemoteTrackReport {
                    participant: t.participant.clone(),
                    cid: t.cid.clone(),
                    kind: if t.counter.video {
                        TrackKind::Video
                    } else {
                        TrackKind::Audio
                    },
                    packets: t.counter.sequence.received(),
                    bytes: t.counter.bytes,
                    lost: t.counter.sequence.lost(),
                    duplicates: t.counter.sequence.duplicates(),
                    keyframes: t.counter.keyframes,
                    keyframe_requests: t.counter.keyframe_requests,
                    first_packet_ms: t.counter.first_packet.map(|d| d.as_secs_f64() * 1000.0),
                })
                .collect(),
            sent_packets: view.sent_packets,
            late_packets: view.late_packets,
            errors: view.errors.clone(),
            ended: view.ended.clone(),
            history: view.history.iter().cloned().collect(),
            ignored_frames: view.ignored_frames,
        }
    }

    /// Leave the meeting (`meeting.leave`), close every peer connection and the session;
    /// returns the final counters.
    pub async fn leave(mut self) -> PeerReport {
        if let Some(leave) = self.leave.take() {
            let _ = leave.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(LEAVE_TIMEOUT, &mut task)
                .await
                .is_err()
        {
            task.abort();
            self.shared.error("leave: timed out");
        }
        self.report()
    }
}

/// Read frames into `frames` until the connection ends.
async fn read_frames(mut reader: Reader, frames: mpsc::Sender<Inbound>) {
    loop {
        let mut batch = Vec::new();
        let open = match reader
            .read(&mut |frame, _| batch.push(frame.to_vec()))
            .await
        {
            Ok(open) => open,
            Err(e) => {
                let _ = frames.send(Inbound::Closed(format!("{e:#}"))).await;
                return;
            }
        };
        let pings = reader.take_pings().into_iter().map(Inbound::Ping);
        let decoded = batch.iter().map(|bytes| match scan::decode(bytes) {
            Some(frame) => Inbound::Frame(frame),
            None => Inbound::Unknown,
        });
        for inbound in pings.chain(decoded) {
            if frames.send(inbound).await.is_err() {
                return;
            }
        }
        if !open {
            let reason = reader.closed.clone().unwrap_or_else(|| "closed".into());
            let _ = frames.send(Inbound::Closed(reason)).await;
            return;
        }
    }
}

/// Requests to the server: encoded into the writer's buffer, flushed by the loop.
struct Outbox {
    writer: Writer,
    encoding: Encoding,
    next_id: u64,
    room: String,
    space: Option<String>,
}

impl Outbox {
    /// Queue `frame` with the meeting's room and space and a fresh id; returns the id.
    fn request(&mut self, mut frame: Value) -> anyhow::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = json!(id);
        frame["room"] = json!(self.room);
        if let Some(space) = &self.space {
            frame["space"] = json!(space);
        }
        self.writer.push(&encode_request(&frame, self.encoding)?);
        Ok(id)
    }

    fn signal(
        &mut self,
        to: &str,
        kind: SignalKind,
        sdp: Option<String>,
        candidate: Option<Candidate>,
    ) -> anyhow::Result<()> {
        let mut frame = json!({"type": "meeting.signal", "to": to, "kind": kind});
        if let Some(sdp) = sdp {
            frame["sdp"] = json!(sdp);
        }
        if kind == SignalKind::Candidate {
            frame["candidate"] = json!(candidate);
        }
        self.request(frame).map(|_| ())
    }
}

/// One track this participant publishes.
struct LocalTrack {
    cid: String,
    stream: String,
    kind: TrackKind,
    /// Accepted by the server (`meeting.publish` answered).
    published: bool,
}

impl LocalTrack {
    fn new(stream: &str, kind: TrackKind) -> LocalTrack {
        let name = match kind {
            TrackKind::Audio => "audio",
            TrackKind::Video => "video",
        };
        LocalTrack {
            cid: format!("{stream}-{name}"),
            stream: stream.to_string(),
            kind,
            published: false,
        }
    }
}

/// One peer connection (with another participant, or with the server) and what it sends.
struct Link {
    pc: Arc<dyn PeerConnection>,
    /// Which connection this is: events of a closed one are dropped.
    generation: u64,
    senders: Vec<LocalSender>,
    connected: bool,
    /// The sending task, and how to tell it the senders changed or were renegotiated.
    pump: Option<(JoinHandle<()>, watch::Sender<Vec<LocalSender>>)>,
}

impl Link {
    async fn close(self) {
        if let Some((pump, _)) = self.pump {
            pump.abort();
        }
        let _ = self.pc.close().await;
    }
}

/// The connection with one other participant (mesh).
struct Remote {
    link: Link,
    negotiation: Negotiation,
}

/// The connection with the server (SFU mode).
struct Sfu {
    link: Link,
    negotiation: SfuNegotiation,
}

#[derive(Clone)]
struct LocalSender {
    video: bool,
    track: Arc<TrackLocalStaticRTP>,
    transceiver: Arc<dyn RtpTransceiver>,
    sender: Arc<dyn RtpSender>,
}

struct PcEvent {
    /// The participant at the other end; `None`: the server (SFU mode).
    from: Option<String>,
    generation: u64,
    kind: PcEventKind,
}

enum PcEventKind {
    Candidate(RTCIceCandidateInit),
    GatheringComplete,
    State(RTCPeerConnectionState),
}

/// The meeting loop's state.
struct Session {
    out: Outbox,
    sid: String,
    grants: Grants,
    ice_servers: Vec<RTCIceServer>,
    config: PeerConfig,
    joined_at: Instant,
    shared: Arc<Shared>,
    events_tx: mpsc::Sender<PcEvent>,
    /// The other participants (active or reconnecting), at most the meeting's limit.
    participants: HashMap<String, Participant>,
    /// Mesh: the connection with each other participant.
    peers: HashMap<String, Remote>,
    /// SFU mode: the connection with the server.
    sfu: Option<Sfu>,
    generation: u64,
    local: Vec<LocalTrack>,
    /// `meeting.publish` request id → index in `local`.
    publishing: HashMap<u64, usize>,
}

impl Session {
    async fn run(
        mut self,
        participants: Vec<Participant>,
        early: Vec<ServerFrame>,
        mut frames: mpsc::Receiver<Inbound>,
        mut events: mpsc::Receiver<PcEvent>,
        mut leave: tokio::sync::oneshot::Receiver<()>,
        reader: JoinHandle<()>,
    ) {
        let ended = self.start(participants, early).await;
        let ended = match ended {
            Err(e) => Some(format!("{e:#}")),
            Ok(()) => loop {
                let step = tokio::select! {
                    inbound = frames.recv() => match inbound {
                        Some(Inbound::Frame(frame)) => self.on_frame(frame).await,
                        Some(Inbound::Ping(payload)) => {
                            self.out.writer.pong(&payload);
                            Ok(true)
                        }
                        Some(Inbound::Unknown) => {
                            self.shared.view().ignored_frames += 1;
                            Ok(true)
                        }
                        Some(Inbound::Closed(reason)) => Err(anyhow!("the server closed: {reason}")),
                        None => Err(anyhow!("the connection's reader stopped")),
                    },
                    Some(event) = events.recv() => self.on_event(event).await.map(|()| true),
                    _ = &mut leave => {
                        let left = self.out.request(json!({"type": "meeting.leave"}));
                        break left.err().map(|e| format!("{e:#}"));
                    }
                };
                let flushed = self.out.writer.flush().await;
                match step.and_then(|go_on| flushed.map(|()| go_on)) {
                    Ok(true) => {}
                    Ok(false) => break Some("left the meeting (meeting.left)".into()),
                    Err(e) => break Some(format!("{e:#}")),
                }
            },
        };
        if let Some(reason) = ended {
            self.shared.view().ended = Some(reason);
        }
        for sid in self.peers.keys().cloned().collect::<Vec<_>>() {
            self.close_peer(&sid).await;
        }
        if let Some(sfu) = self.sfu.take() {
            sfu.link.close().await;
        }
        reader.abort();
        let _ = self.out.writer.flush().await;
        self.out.writer.close().await;
    }

    /// Publish the local tracks and open a connection with each participant already there
    /// (mesh) or with the server (SFU mode, before its first offer is read).
    async fn start(
        &mut self,
        participants: Vec<Participant>,
        early: Vec<ServerFrame>,
    ) -> anyhow::Result<()> {
        if self.config.mode == MeetingMode::Sfu {
            let link = self.new_link(None).await?;
            self.sfu = Some(Sfu {
                link,
                negotiation: SfuNegotiation::new(&self.sid),
            });
        }
        for (i, track) in self.local.iter().enumerate() {
            let (kind, source) = match track.kind {
                TrackKind::Audio => ("audio", "microphone"),
                TrackKind::Video => ("video", "camera"),
            };
            let id = self.out.request(json!({
                "type": "meeting.publish", "cid": track.cid, "kind": kind, "source": source,
            }))?;
            self.publishing.insert(id, i);
        }
        for p in participants {
            self.upsert(p).await;
        }
        for frame in early {
            if !self.on_frame(frame).await? {
                bail!("left the meeting (meeting.left)");
            }
        }
        self.out.writer.flush().await
    }

    fn ours(&self, space: &str, room: &str) -> bool {
        room == self.out.room && Some(space) == self.out.space.as_deref()
    }

    /// Handle one server frame; `Ok(false)` once this participant is out of the meeting.
    async fn on_frame(&mut self, frame: ServerFrame) -> anyhow::Result<bool> {
        match frame {
            ServerFrame::Meeting(MeetingFrame::Participants {
                space,
                room,
                participants,
                ..
            }) if self.ours(&space, &room) => {
                for p in participants {
                    self.upsert(p).await;
                }
            }
            ServerFrame::Meeting(MeetingFrame::Signal {
                space,
                room,
                from,
                kind,
                sdp,
                candidate,
            }) if self.ours(&space, &room) => {
                if let Err(e) = self.on_signal(&from, kind, sdp, candidate.flatten()).await {
                    tracing::debug!(from, ?kind, "meeting peer: {e:#}");
                    self.shared.error(format!("apply {kind:?}: {e}"));
                }
            }
            ServerFrame::Meeting(MeetingFrame::Offer {
                space,
                room,
                sdp,
                media,
            }) if self.ours(&space, &room) => {
                if let Err(e) = self.on_offer(sdp, media).await {
                    tracing::debug!("meeting peer: server offer: {e:#}");
                    self.shared.error(format!("apply the server's offer: {e}"));
                }
            }
            ServerFrame::Meeting(MeetingFrame::Left { space, room, .. })
                if self.ours(&space, &room) =>
            {
                return Ok(false);
            }
            ServerFrame::Reply { id, result } => {
                if let Some(i) = self.publishing.remove(&id) {
                    self.published(i, &result).await?;
                }
            }
            ServerFrame::Error {
                id: Some(id), code, ..
            } => {
                let what = if self.publishing.remove(&id).is_some() {
                    "publish"
                } else {
                    "request"
                };
                self.shared.error(format!("{what}: {code}"));
            }
            ServerFrame::Error { code, message, .. } => {
                self.shared.error(format!("server: {code}: {message}"));
            }
            ServerFrame::Disconnect { code, message, .. } => {
                bail!("disconnected: {code}: {message}")
            }
            ServerFrame::Ping => self.out.writer.answer_ping(),
            _ => {}
        }
        Ok(true)
    }

    /// The server accepted local track `i`: send it to every peer, or (SFU mode) give it a
    /// transceiver that the server's next offer's line for it takes.
    async fn published(&mut self, i: usize, result: &Value) -> anyhow::Result<()> {
        let cid = result["track"]["cid"].as_str().unwrap_or_default();
        if cid != self.local[i].cid {
            bail!("meeting.publish answered for another track: {result}");
        }
        self.local[i].published = true;
        self.shared.view().published.push(cid.to_string());
        if let Some(sfu) = &mut self.sfu {
            let track = result["track"]["sid"]
                .as_str()
                .context("meeting.publish answered without the track's sid")?;
            sfu.negotiation.published(track, cid);
            // Sending only: an offer's `recvonly` line of this kind takes a `sendonly`
            // transceiver that has no mid yet before it makes one of its own.
            let sender = add_local(&sfu.link, &self.local[i], Direction::Sendonly).await;
            match sender {
                Ok(sender) => sfu.link.senders.push(sender),
                Err(e) => self.shared.error(format!("add track: {e}")),
            }
            return Ok(());
        }
        let direction = if self.grants.subscribe {
            Direction::Sendrecv
        } else {
            Direction::Sendonly
        };
        for sid in self.peers.keys().cloned().collect::<Vec<_>>() {
            let peer = self.peers.get_mut(&sid).context("listed above")?;
            match add_local(&peer.link, &self.local[i], direction).await {
                Ok(sender) => peer.link.senders.push(sender),
                Err(e) => {
                    self.shared.error(format!("add track: {e}"));
                    continue;
                }
            }
            if let Err(e) = self.negotiate(&sid).await {
                self.shared.error(format!("offer: {e}"));
            }
        }
        Ok(())
    }

    /// Apply a participant as the server sees it now (`docs/protocol.md` 15.4).
    async fn upsert(&mut self, p: Participant) {
        if p.sid == self.sid {
            return;
        }
        if self
            .participants
            .get(&p.sid)
            .is_some_and(|known| known.version > p.version)
        {
            return;
        }
        let sid = p.sid.clone();
        if p.state == ParticipantState::Left {
            self.participants.remove(&sid);
            self.close_peer(&sid).await;
            return;
        }
        let active = p.state == ParticipantState::Active;
        self.participants.insert(sid.clone(), p);
        if active && self.sfu.is_none() && !self.peers.contains_key(&sid) {
            self.open_peer(&sid).await;
        }
    }

    /// Open the connection with `sid` and add every published local track to it.
    async fn open_peer(&mut self, sid: &str) {
        if let Err(e) = self.try_open_peer(sid).await {
            self.shared.error(format!("open peer connection: {e}"));
        }
    }

    /// A new peer connection with participant `to` (`None`: the server).
    async fn new_link(&mut self, to: Option<&str>) -> anyhow::Result<Link> {
        self.generation += 1;
        let mut media = MediaEngine::default();
        media.register_codec(codec(TrackKind::Video), RtpCodecKind::Video)?;
        media.register_codec(codec(TrackKind::Audio), RtpCodecKind::Audio)?;
        let registry = register_default_interceptors(Registry::new(), &mut media)?;
        let handler = Arc::new(Handler {
            from: to.map(str::to_string),
            generation: self.generation,
            events: self.events_tx.clone(),
            shared: self.shared.clone(),
            joined_at: self.joined_at,
        });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_ice_servers(self.ice_servers.clone())
                    .build(),
            )
            .with_media_engine(media)
            // Always the DTLS server when answering. Browsers answer an offer as the client
            // (`a=setup:active`), so once either side has answered, this peer is the server;
            // answering `active` in a later exchange would ask to swap roles mid-session, which
            // Chromium refuses ("Failed to set SSL role for the transport").
            .with_setting_engine(
                SettingEngineBuilder::new()
                    .with_answering_dtls_role(RTCDtlsRole::Server)
                    .build(),
            )
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_udp_addrs(vec![SocketAddr::new(self.config.bind, 0)])
            .build()
            .await?;
        Ok(Link {
            pc: Arc::new(pc),
            generation: self.generation,
            senders: Vec::new(),
            connected: false,
            pump: None,
        })
    }

    async fn try_open_peer(&mut self, sid: &str) -> anyhow::Result<()> {
        let mut link = self.new_link(Some(sid)).await?;
        let direction = if self.grants.subscribe {
            Direction::Sendrecv
        } else {
            Direction::Sendonly
        };
        let published: Vec<&LocalTrack> = self.local.iter().filter(|t| t.published).collect();
        for local in &published {
            link.senders.push(add_local(&link, local, direction).await?);
        }
        let negotiate = !published.is_empty();
        self.peers.insert(
            sid.to_string(),
            Remote {
                link,
                negotiation: Negotiation::new(&self.sid, sid),
            },
        );
        if negotiate {
            self.negotiate(sid).await?;
        }
        Ok(())
    }

    async fn close_peer(&mut self, sid: &str) {
        if let Some(peer) = self.peers.remove(sid) {
            peer.link.close().await;
        }
    }

    /// Our side changed: offer now, or once the exchange under way is over.
    async fn negotiate(&mut self, sid: &str) -> anyhow::Result<()> {
        let peer = self.peers.get_mut(sid).context("no such peer")?;
        if peer.negotiation.negotiation_needed() {
            self.offer(sid).await?;
        }
        Ok(())
    }

    async fn offer(&mut self, sid: &str) -> anyhow::Result<()> {
        let peer = self.peers.get_mut(sid).context("no such peer")?;
        let pc = peer.link.pc.as_ref();
        fit_directions(pc, &self.grants).await?;
        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer).await?;
        peer.negotiation.local_offer_set();
        self.shared.step(format!("offer to {sid}"));
        let sdp = local_sdp(pc).await?;
        self.out.signal(sid, SignalKind::Offer, Some(sdp), None)
    }

    async fn on_signal(
        &mut self,
        from: &str,
        kind: SignalKind,
        sdp: Option<String>,
        candidate: Option<Candidate>,
    ) -> anyhow::Result<()> {
        if !self.peers.contains_key(from) {
            // The offer may come before the participant list names its sender.
            self.try_open_peer(from).await?;
        }
        let peer = self.peers.get_mut(from).context("no such peer")?;
        if kind == SignalKind::Candidate {
            if let OnCandidate::Add(c) = peer.negotiation.candidate(candidate) {
                add_candidate(peer, c).await?;
            }
            return Ok(());
        }
        let sdp = sdp.context("an offer or answer without sdp")?;
        let decision = peer.negotiation.description(kind);
        self.shared
            .step(format!("{kind:?} from {from}: {decision:?}").to_lowercase());
        let OnDescription::Apply { rollback } = decision else {
            return Ok(());
        };
        let pc = peer.link.pc.clone();
        if rollback {
            pc.set_local_description(RTCSessionDescription::rollback(None)?)
                .await?;
        }
        let description = match kind {
            SignalKind::Offer => RTCSessionDescription::offer(sdp)?,
            _ => RTCSessionDescription::answer(sdp)?,
        };
        pc.set_remote_description(description).await?;
        for c in peer.negotiation.remote_set(kind) {
            add_candidate(peer, c).await?;
        }
        if kind == SignalKind::Offer {
            let sdp = answer(pc.as_ref(), &self.grants).await?;
            peer.negotiation.local_answer_set();
            self.shared.step(format!("answer to {from}"));
            self.out.signal(from, SignalKind::Answer, Some(sdp), None)?;
        }
        // An exchange is over: what each local track may send is settled for now.
        refresh_pump(&mut peer.link, &self.config, &self.shared);
        if peer.negotiation.take_wanted_offer() {
            self.offer(from).await?;
        }
        Ok(())
    }

    /// SFU mode: apply the server's offer and answer it. The senders of the tracks it brings
    /// are named first (their packets may come as soon as it is applied); the lines it has for
    /// our own tracks must have taken their transceivers, which is checked by mid.
    async fn on_offer(&mut self, sdp: String, media: Vec<MediaLine>) -> anyhow::Result<()> {
        let sfu = self.sfu.as_mut().context("an offer outside SFU mode")?;
        let plan = sfu.negotiation.offer(media);
        {
            let mut view = self.shared.view();
            for line in &plan.receive {
                // The cid the sender published, when the participant list has it.
                let cid = (self.participants.get(&line.participant))
                    .and_then(|p| p.tracks.iter().find(|t| t.sid == line.track))
                    .map_or_else(|| line.track.clone(), |t| t.cid.clone());
                view.senders
                    .insert(line.track.clone(), (line.participant.clone(), cid));
            }
        }
        let pc = sfu.link.pc.clone();
        pc.set_remote_description(RTCSessionDescription::offer(sdp)?)
            .await?;
        for (mid, cid) in &plan.send {
            let mut taken = false;
            for sender in &sfu.link.senders {
                if sender.track.track_id().await == *cid
                    && sender.transceiver.mid().await?.as_deref() == Some(mid.as_str())
                {
                    taken = true;
                }
            }
            if taken {
                sfu.negotiation.sending(mid);
            } else {
                self.shared.error(format!(
                    "the server's line {mid} for {cid} took no local track"
                ));
            }
        }
        let sdp = answer(pc.as_ref(), &self.grants).await?;
        self.shared.step(format!(
            "server offer: {} to send, {} new to receive; answered",
            plan.send.len(),
            plan.receive.len()
        ));
        self.out
            .request(json!({"type": "meeting.answer", "sdp": sdp}))?;
        refresh_pump(&mut sfu.link, &self.config, &self.shared);
        Ok(())
    }

    async fn on_event(&mut self, event: PcEvent) -> anyhow::Result<()> {
        let link = match &event.from {
            Some(sid) => self.peers.get_mut(sid).map(|p| &mut p.link),
            None => self.sfu.as_mut().map(|s| &mut s.link),
        };
        let Some(link) = link.filter(|l| l.generation == event.generation) else {
            return Ok(());
        };
        match (event.kind, &event.from) {
            // The server is ICE-lite: it learns our address from our checks, and takes no
            // candidates (`meeting.signal` is refused in SFU mode).
            (PcEventKind::Candidate(_) | PcEventKind::GatheringComplete, None) => {}
            (PcEventKind::Candidate(init), Some(to)) => {
                let candidate = Candidate {
                    candidate: init.candidate,
                    sdp_mid: init.sdp_mid,
                    sdp_mline_index: init.sdp_mline_index.map(u32::from),
                    username_fragment: init.username_fragment,
                };
                self.out
                    .signal(to, SignalKind::Candidate, None, Some(candidate))?;
            }
            (PcEventKind::GatheringComplete, Some(to)) => {
                self.out.signal(to, SignalKind::Candidate, None, None)?;
            }
            (PcEventKind::State(state), from) => {
                let with = from.as_deref().unwrap_or("the server");
                self.shared.step(format!("{state} with {with}"));
                let connected = state == RTCPeerConnectionState::Connected;
                if connected && !link.connected {
                    link.connected = true;
                    refresh_pump(link, &self.config, &self.shared);
                } else if state == RTCPeerConnectionState::Failed {
                    self.shared.error("peer connection failed");
                }
            }
        }
        Ok(())
    }
}

/// The codec each kind of local track sends (and the only one it receives).
fn codec(kind: TrackKind) -> RTCRtpCodecParameters {
    match kind {
        TrackKind::Video => RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: MIME_TYPE_VP8.to_owned(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: vec![
                    RTCPFeedback {
                        typ: "goog-remb".to_owned(),
                        parameter: String::new(),
                    },
                    RTCPFeedback {
                        typ: "ccm".to_owned(),
                        parameter: "fir".to_owned(),
                    },
                ],
            },
            payload_type: VP8_PAYLOAD_TYPE,
        },
        TrackKind::Audio => RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: MIME_TYPE_OPUS.to_owned(),
                clock_rate: 48_000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                rtcp_feedback: Vec::new(),
            },
            payload_type: OPUS_PAYLOAD_TYPE,
        },
    }
}

/// Set every transceiver's direction to what the grants allow (the SDK's `fitDirections`).
async fn fit_directions(pc: &dyn PeerConnection, grants: &Grants) -> anyhow::Result<()> {
    for transceiver in pc.get_transceivers().await {
        let direction = transceiver.direction().await?;
        let fitted = fit_direction(direction, grants);
        if fitted != direction {
            transceiver.set_direction(fitted).await?;
        }
    }
    Ok(())
}

/// Answer the remote offer just set, with directions fitted to the grants; returns its SDP.
async fn answer(pc: &dyn PeerConnection, grants: &Grants) -> anyhow::Result<String> {
    fit_directions(pc, grants).await?;
    let answer = pc.create_answer(None).await?;
    pc.set_local_description(answer).await?;
    local_sdp(pc).await
}

/// Give `local` a transceiver of its own on `link`, sending its own RTP stream.
async fn add_local(
    link: &Link,
    local: &LocalTrack,
    direction: Direction,
) -> anyhow::Result<LocalSender> {
    let kind = match local.kind {
        TrackKind::Audio => RtpCodecKind::Audio,
        TrackKind::Video => RtpCodecKind::Video,
    };
    let mut ssrc = [0u8; 4];
    getrandom::fill(&mut ssrc)?;
    let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        local.stream.clone(),
        local.cid.clone(),
        local.cid.clone(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(u32::from_be_bytes(ssrc)),
                ..Default::default()
            },
            codec: codec(local.kind).rtp_codec,
            ..Default::default()
        }],
    )));
    let transceiver = link
        .pc
        .add_transceiver_from_track(
            track.clone() as Arc<dyn TrackLocal>,
            Some(RTCRtpTransceiverInit {
                direction,
                streams: vec![local.stream.clone()],
                send_encodings: Vec::new(),
            }),
        )
        .await?;
    let sender = transceiver
        .sender()
        .await?
        .context("a transceiver made from a track has a sender")?;
    Ok(LocalSender {
        video: local.kind == TrackKind::Video,
        track,
        transceiver,
        sender,
    })
}

async fn local_sdp(pc: &dyn PeerConnection) -> anyhow::Result<String> {
    Ok(pc
        .local_description()
        .await
        .context("no local description after setting one")?
        .sdp)
}

async fn add_candidate(peer: &Remote, c: Candidate) -> anyhow::Result<()> {
    let init = RTCIceCandidateInit {
        candidate: c.candidate,
        sdp_mid: c.sdp_mid,
        sdp_mline_index: c.sdp_mline_index.and_then(|i| u16::try_from(i).ok()),
        username_fragment: c.username_fragment,
        ..Default::default()
    };
    match peer.link.pc.add_ice_candidate(init).await {
        // Candidates of an offer we ignored may not apply.
        Err(_) if peer.negotiation.ignoring_offer() => Ok(()),
        result => Ok(result?),
    }
}

/// Tell the sending task of `link` (started once connected) to look at its senders again.
fn refresh_pump(link: &mut Link, config: &PeerConfig, shared: &Arc<Shared>) {
    if !link.connected {
        return;
    }
    match &link.pump {
        Some((_, senders)) => {
            senders.send_replace(link.senders.clone());
        }
        None => {
            let (tx, rx) = watch::channel(link.senders.clone());
            let task = tokio::spawn(pump(
                rx,
                config.packet_rate,
                config.video_bytes,
                shared.clone(),
            ));
            link.pump = Some((task, tx));
        }
    }
}

/// One local track's RTP stream to one peer: paused (`header` none) while the negotiated
/// direction does not send, resumed with its numbering intact.
struct Stream {
    sender: LocalSender,
    header: Option<rtp::header::Header>,
    outgoing: Outgoing,
}

/// Send `rate` synthetic packets a second on each sender that may send, until aborted.
async fn pump(
    mut senders: watch::Receiver<Vec<LocalSender>>,
    rate: f64,
    video_bytes: usize,
    shared: Arc<Shared>,
) {
    let mut streams: Vec<Stream> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // A late tick is made up by the packets the pacer says are due.
    let mut pacer = Pacer::new(rate);
    let mut changed = true;
    loop {
        if changed {
            let list = senders.borrow_and_update().clone();
            if let Err(e) = resolve(&mut streams, list, rate, video_bytes).await {
                shared.error(format!("send: {e}"));
            }
        }
        changed = tokio::select! {
            _ = tick.tick() => false,
            update = senders.changed() => match update {
                Ok(()) => true,
                Err(_) => return,
            },
        };
        if changed {
            continue;
        }
        let mut sent = 0;
        let due = pacer.poll(Instant::now());
        let count = streams.len();
        for stream in (0..due.send).flat_map(|_| 0..count) {
            let stream = &mut streams[stream];
            let Some(header) = &stream.header else {
                continue;
            };
            let next = stream.outgoing.packet();
            let packet = rtp::Packet {
                header: rtp::header::Header {
                    marker: next.marker,
                    sequence_number: next.seq,
                    timestamp: next.timestamp,
                    ..header.clone()
                },
                payload: next.payload,
            };
            match stream.sender.track.write_rtp(packet).await {
                Ok(()) => {
                    // Only a packet handed over counts: a stream paused or stopped mid-write
                    // leaves no gap in its numbering.
                    stream.outgoing.advance();
                    sent += 1;
                }
                Err(e) => {
                    shared.error(format!("send: {e}"));
                    stream.header = None;
                }
            }
        }
        let mut view = shared.view();
        view.sent_packets += sent;
        view.late_packets += due.skipped * count as u64;
    }
}

/// Match `streams` to the current senders: new ones get a fresh stream, and each is paused or
/// resumed by its transceiver's negotiated direction (payload type as negotiated).
async fn resolve(
    streams: &mut Vec<Stream>,
    senders: Vec<LocalSender>,
    rate: f64,
    video_bytes: usize,
) -> anyhow::Result<()> {
    for sender in senders {
        if streams
            .iter()
            .any(|s| Arc::ptr_eq(&s.sender.track, &sender.track))
        {
            continue;
        }
        let mut start = [0u8; 6];
        getrandom::fill(&mut start)?;
        let seq = u16::from_be_bytes([start[0], start[1]]);
        let timestamp = u32::from_be_bytes([start[2], start[3], start[4], start[5]]);
        streams.push(Stream {
            outgoing: Outgoing::new(sender.video, seq, timestamp, rate, video_bytes),
            sender,
            header: None,
        });
    }
    for stream in streams.iter_mut() {
        let direction = stream.sender.transceiver.current_direction().await?;
        stream.header = if matches!(direction, Direction::Sendrecv | Direction::Sendonly) {
            Some(header_of(&stream.sender).await?)
        } else {
            None
        };
    }
    Ok(())
}

/// The fixed header fields of a sender's packets: version, payload type as negotiated, SSRC.
async fn header_of(s: &LocalSender) -> anyhow::Result<rtp::header::Header> {
    let mime = if s.video {
        MIME_TYPE_VP8
    } else {
        MIME_TYPE_OPUS
    };
    let parameters = s.sender.get_parameters().await?;
    let payload_type = parameters
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
        .map(|c| c.payload_type)
        .with_context(|| format!("{mime} was not negotiated"))?;
    let ssrc = *s
        .track
        .ssrcs()
        .await
        .first()
        .context("a local track has an SSRC")?;
    Ok(rtp::header::Header {
        version: 2,
        payload_type,
        ssrc,
        ..Default::default()
    })
}

/// Peer connection callbacks: forwarded to the loop (never blocking the connection's driver)
/// or, for a remote track, handed to a reader task.
struct Handler {
    /// The participant at the other end; `None`: the server (SFU mode).
    from: Option<String>,
    generation: u64,
    events: mpsc::Sender<PcEvent>,
    shared: Arc<Shared>,
    joined_at: Instant,
}

impl Handler {
    fn emit(&self, kind: PcEventKind) {
        let event = PcEvent {
            from: self.from.clone(),
            generation: self.generation,
            kind,
        };
        if self.events.try_send(event).is_err() {
            self.shared.error("peer connection event queue full");
        }
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => self.emit(PcEventKind::Candidate(init)),
            Err(e) => self.shared.error(format!("local candidate: {e}")),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.emit(PcEventKind::GatheringComplete);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.emit(PcEventKind::State(state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        tokio::spawn(receive(
            track,
            self.from.clone(),
            self.shared.clone(),
            self.joined_at,
        ));
    }
}

/// Count one remote track's packets until it ends; ask for keyframes as `TrackCounter` says.
/// `from` is the participant at the other end of the connection; `None` (SFU mode): the server,
/// and the track's sender is named by the offer's media list.
async fn receive(
    track: Arc<dyn TrackRemote>,
    from: Option<String>,
    shared: Arc<Shared>,
    joined_at: Instant,
) {
    let id = track.track_id().await;
    let video = track.kind().await == RtpCodecKind::Video;
    let index = {
        let mut view = shared.view();
        if view.remote.len() >= MAX_REMOTE_TRACKS {
            drop(view);
            shared.error("too many remote tracks");
            return;
        }
        let named = match from {
            Some(participant) => Some((participant, id)),
            None => view.senders.get(&id).cloned(),
        };
        let Some((participant, cid)) = named else {
            drop(view);
            shared.error("a remote track no offer named");
            return;
        };
        view.remote.push(RemoteTrack {
            participant,
            cid,
            counter: TrackCounter::new(video),
        });
        view.remote.len() - 1
    };
    while let Some(event) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(packet) = event else {
            continue;
        };
        let received = shared.view().remote[index].counter.packet(
            packet.header.sequence_number,
            &packet.payload,
            Instant::now(),
            joined_at,
        );
        if received.request_keyframe {
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc: packet.header.ssrc,
            };
            if let Err(e) = track.write_rtcp(vec![Box::new(pli)]).await {
                shared.error(format!("PLI: {e}"));
            }
        }
    }
}
