//! The SFU room: one `str0m::Rtc` (one WebRTC session) per participant, and the forwarding of
//! media between them without decoding. Sans-IO: datagrams, answers and time come in as method
//! calls, datagrams to send and offers go out through `poll_transmit` and `poll_offer`, the next
//! deadline through `poll_timeout`.
//!
//! The server is always the offerer: every change of what a participant sends (its published
//! tracks, `recvonly` m-lines on the server's side) or receives (its subscriptions, `sendonly`)
//! is one offer, at most one in flight per participant; changes made while an offer waits for
//! its answer go in the next one. So there is no glare. The first offer also opens a data
//! channel, so a participant that neither sends nor receives yet still connects.
//!
//! Media is forwarded frame by frame: str0m reassembles a publisher's RTP packets into frames
//! (`MediaData`, still encoded) and each subscriber's session packetizes them again with its
//! own SSRCs, sequence numbers and payload types. Nothing is decoded.

use crate::wire::{MediaLine, TrackKind};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::config::CryptoProvider;
use str0m::format::{CodecConfig, PayloadParams};
use str0m::media::{Direction, KeyframeRequestKind, MediaData, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceCreds, Input, Output, Rtc, RtcError};

/// Datagrams waiting for the shell at most; beyond, new ones are dropped (UDP may lose them
/// anyway, and the shell drains the room after every input).
pub const MAX_TRANSMITS: usize = 8192;
/// How many times one drain of a session runs timeouts that are already due, at most (each
/// lets its pacer send one more packet); the rest wait for the shell's timer.
const MAX_DUE_ROUNDS: usize = 256;
/// Source addresses remembered per session (ICE may try a few before one is chosen).
const MAX_ADDRS_PER_SESSION: usize = 8;
/// The label of the data channel the first offer opens.
const CHANNEL_LABEL: &str = "chorus";

/// What a room is configured with.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// The addresses the server's UDP socket is reached at, offered as host candidates.
    pub candidates: Vec<SocketAddr>,
    /// Sessions (participants) at most.
    pub max_sessions: usize,
    /// Published tracks in the room at most.
    pub max_tracks: usize,
    /// The least time between two keyframe requests sent to one published track.
    pub keyframe_interval: Duration,
    /// RTP packets each video line a subscriber receives keeps after sending them, to answer
    /// its NACKs with retransmissions (default 1000: about a second of 720p video).
    pub send_buffer_video: usize,
    /// The same for audio lines (default 100: two seconds of 20 ms Opus packets).
    pub send_buffer_audio: usize,
    /// Estimate the bandwidth towards each session (from transport-wide congestion control
    /// feedback) and keep what it is sent within the estimate: lower simulcast layers, then,
    /// once its link loses packets, paused video (see [`Room::poll_paused`]); audio always.
    /// On by default. Off, every subscriber gets the layers its elements need, whatever its
    /// link.
    pub bandwidth_estimation: bool,
    /// The bandwidth assumed towards a new session until its estimate says otherwise.
    pub initial_bitrate: u64,
    /// The most the estimator probes for towards one session (default 20 Mbit/s). Below it,
    /// each session probes for what its subscriber would receive without a limit.
    pub max_bitrate: u64,
    /// How active speakers are detected.
    pub speakers: SpeakerConfig,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            candidates: Vec::new(),
            max_sessions: 50,
            max_tracks: 200,
            keyframe_interval: Duration::from_secs(1),
            send_buffer_video: 1000,
            send_buffer_audio: 100,
            bandwidth_estimation: true,
            initial_bitrate: 1_000_000,
            max_bitrate: 20_000_000,
            speakers: SpeakerConfig::default(),
        }
    }
}

/// Why the room refused a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomError {
    /// A participant or track the room does not have.
    NotFound(String),
    /// An answer that does not parse or does not fit the offer, or that no offer waits for.
    Invalid(String),
    /// The room has as many sessions or tracks as it may.
    LimitExceeded(String),
}

impl std::fmt::Display for RoomError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoomError::NotFound(m) | RoomError::Invalid(m) | RoomError::LimitExceeded(m) => {
                f.write_str(m)
            }
        }
    }
}

impl std::error::Error for RoomError {}

/// A datagram to send from `source` (one of the room's candidates) to `destination`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

/// An offer for participant `participant`, to be answered with [`Room::handle_answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub participant: String,
    pub sdp: String,
    /// Every media line the session has once this offer is answered.
    pub media: Vec<MediaLine>,
}

/// A session's ICE username fragment appeared or went away: the shell routes the datagrams
/// whose STUN username starts with it to this room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub ufrag: String,
    pub open: bool,
}

/// Counters since the room was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomStats {
    /// RTP packets received from publishers and written to a subscriber (counted per
    /// subscriber).
    pub forwarded_packets: u64,
    /// Their payload bytes.
    pub forwarded_bytes: u64,
    /// Frames not written to a subscriber because its session's queue was full.
    pub dropped_frames: u64,
    /// Video frames not written to a subscriber because a burst at its bandwidth estimate
    /// waited in its session already (its video then restarts at a keyframe).
    pub shed_frames: u64,
    /// Datagrams dropped because the shell had not drained [`MAX_TRANSMITS`].
    pub dropped_transmits: u64,
    /// Keyframe requests sent to publishers.
    pub keyframe_requests: u64,
}

/// One m-line of a session: the track it carries and which way.
#[derive(Debug, Clone)]
struct Line {
    track: String,
    owner: String,
    kind: TrackKind,
    /// True when the participant sends on it (a track it publishes).
    inbound: bool,
    /// Its track was unpublished: the line stops with the next offer, even if a track of the
    /// same sid is published again meanwhile (that one gets a line of its own).
    gone: bool,
}

/// An offer in flight and what it changes once answered.
struct Pending {
    offer: SdpPendingOffer,
    added: Vec<(Mid, Line)>,
    stopped: Vec<Mid>,
}

struct Session {
    rtc: Rtc,
    ufrag: String,
    /// Negotiated m-lines.
    lines: HashMap<Mid, Line>,
    pending: Option<Pending>,
    /// The first offer (with the data channel) was made.
    started: bool,
    /// Tracks the participant wants to receive.
    subscriptions: BTreeSet<String>,
    /// Source addresses its datagrams came from.
    addrs: Vec<SocketAddr>,
    timeout: Instant,
    /// The size of the element each received video track is shown in, as it reported.
    layouts: HashMap<String, (u32, u32)>,
    /// The bandwidth estimated towards the participant, in bits per second (none with
    /// estimation off).
    estimate: Option<u64>,
    /// What its estimator was last set to look for: `(minimum, desired)` bits per second.
    asked: (u64, u64),
    /// Bounds what waits in it to be sent to a burst at its estimate.
    budget: bandwidth::Budget,
    /// Until when its link counts as lossy (see [`bandwidth::PAUSE_LOSS`]).
    lossy_until: Option<Instant>,
    /// When its estimate was last raised to what its videos keep.
    raised: Option<Instant>,
    /// WHIP/WHEP: the client made the offer; the session is never offered anything.
    client: Option<whip::ClientSession>,
}

impl Session {
    fn inbound_mid(&self, track: &str) -> Option<Mid> {
        (self.lines.iter())
            .find(|(_, l)| l.inbound && !l.gone && l.track == track)
            .map(|(mid, _)| *mid)
    }
}

struct Published {
    owner: String,
    kind: TrackKind,
    /// Subscribers with a negotiated line for the track, and its mid in their session.
    subscribers: BTreeMap<String, Mid>,
    last_keyframe_request: Option<Instant>,
    /// A keyframe request waits for the throttle.
    keyframe_wanted: bool,
    /// Its publisher sends it in simulcast layers: its line asks for them.
    layered: bool,
    /// Its simulcast layers (video).
    simulcast: simulcast::Layers,
    /// The layer state of each subscriber (video).
    forwards: BTreeMap<String, simulcast::Forward>,
}

/// One SFU room.
pub struct Room {
    config: RoomConfig,
    crypto: Arc<CryptoProvider>,
    /// The latest time the room was given.
    now: Instant,
    sessions: BTreeMap<String, Session>,
    by_addr: HashMap<SocketAddr, String>,
    tracks: BTreeMap<String, Published>,
    transmits: VecDeque<Transmit>,
    offers: VecDeque<Offer>,
    /// Sessions with changes not offered yet.
    renegotiate: BTreeSet<String>,
    routes: VecDeque<Route>,
    /// Changes of the layers publishers should send, not polled yet.
    layer_changes: VecDeque<LayerChange>,
    /// Tracks paused (true) or resumed for a subscriber's bandwidth, by subscriber and track,
    /// not polled yet.
    paused: BTreeMap<(String, String), bool>,
    /// When layers are measured and picked again.
    next_select: Instant,
    speakers: Speakers,
    stats: RoomStats,
}

impl Room {
    /// An empty room; `now` is its clock until an input brings a later time.
    pub fn new(config: RoomConfig, now: Instant) -> Room {
        Room {
            speakers: Speakers::new(config.speakers),
            config,
            crypto: Arc::new(str0m::crypto::from_feature_flags()),
            now,
            sessions: BTreeMap::new(),
            by_addr: HashMap::new(),
            tracks: BTreeMap::new(),
            transmits: VecDeque::new(),
            offers: VecDeque::new(),
            renegotiate: BTreeSet::new(),
            routes: VecDeque::new(),
            layer_changes: VecDeque::new(),
            paused: BTreeMap::new(),
            next_select: now + SELECT_INTERVAL,
            stats: RoomStats::default(),
        }
    }

    pub fn stats(&self) -> RoomStats {
        self.stats
    }

    /// Sessions in the room.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// No session, and every route change and offer was polled.
    pub fn is_idle(&self) -> bool {
        self.sessions.is_empty() && self.routes.is_empty() && self.offers.is_empty()
    }

    /// The ICE username fragments of every session.
    pub fn ufrags(&self) -> impl Iterator<Item = &str> {
        self.sessions.values().map(|s| s.ufrag.as_str())
    }

    /// Participant `participant`'s session ICE username fragment.
    pub fn ufrag(&self, participant: &str) -> Option<&str> {
        self.sessions.get(participant).map(|s| s.ufrag.as_str())
    }

    /// Whether `participant`'s session is connected (ICE and DTLS done).
    pub fn is_connected(&self, participant: &str) -> bool {
        self.sessions
            .get(participant)
            .is_some_and(|s| s.rtc.is_connected())
    }

    /// A new session for `participant`, replacing the one it had. Its first offer follows.
    pub fn add_participant(&mut self, participant: &str) -> Result<(), RoomError> {
        self.remove_participant(participant);
        if self.sessions.len() >= self.config.max_sessions {
            return Err(RoomError::LimitExceeded(format!(
                "the SFU room is full ({} sessions)",
                self.config.max_sessions
            )));
        }
        let creds = IceCreds::new();
        let estimation =
            (self.config.bandwidth_estimation).then(|| Bitrate::bps(self.config.initial_bitrate));
        let mut rtc = Rtc::builder()
            .set_crypto_provider(self.crypto.clone())
            .set_ice_lite(true)
            .set_local_ice_credentials(creds.clone())
            .set_send_buffer_video(self.config.send_buffer_video)
            .set_send_buffer_audio(self.config.send_buffer_audio)
            .enable_bwe(estimation)
            .set_stats_interval(estimation.map(|_| SELECT_INTERVAL))
            .build(self.now);
        // Until the demand is known, probe for the most a session may take.
        let asked = (0, self.config.max_bitrate);
        if self.config.bandwidth_estimation {
            (rtc.bwe()).set_bitrate(Bitrate::ZERO, Bitrate::bps(asked.1));
        }
        for addr in &self.config.candidates {
            match Candidate::host(*addr, "udp") {
                Ok(candidate) => {
                    rtc.add_local_candidate(candidate);
                }
                Err(e) => {
                    return Err(RoomError::Invalid(format!(
                        "candidate {addr} is not usable: {e}"
                    )));
                }
            }
        }
        self.routes.push_back(Route {
            ufrag: creds.ufrag.clone(),
            open: true,
        });
        let session = Session {
            rtc,
            ufrag: creds.ufrag,
            lines: HashMap::new(),
            pending: None,
            started: false,
            subscriptions: BTreeSet::new(),
            addrs: Vec::new(),
            timeout: self.now,
            layouts: HashMap::new(),
            estimate: estimation.map(|e| e.as_u64()),
            asked,
            budget: bandwidth::Budget::default(),
            lossy_until: None,
            raised: None,
            client: None,
        };
        self.sessions.insert(participant.to_string(), session);
        self.changed(participant);
        Ok(())
    }

    /// `participant` leaves: its session closes, its tracks are unpublished.
    pub fn remove_participant(&mut self, participant: &str) {
        let Some(mut session) = self.sessions.remove(participant) else {
            return;
        };
        session.rtc.disconnect();
        self.speakers.remove(participant, self.now);
        self.paused.retain(|(p, _), _| p != participant);
        for addr in &session.addrs {
            self.by_addr.remove(addr);
        }
        self.routes.push_back(Route {
            ufrag: session.ufrag,
            open: false,
        });
        let owned: Vec<String> = (self.tracks.iter())
            .filter(|(_, t)| t.owner == participant)
            .map(|(sid, _)| sid.clone())
            .collect();
        for track in owned {
            self.unpublish(&track);
        }
        for track in self.tracks.values_mut() {
            track.subscribers.remove(participant);
        }
    }

    /// `participant` publishes `track`: its session gets a line to send it on.
    pub fn publish(
        &mut self,
        participant: &str,
        track: &str,
        kind: TrackKind,
    ) -> Result<(), RoomError> {
        if !self.sessions.contains_key(participant) {
            return Err(RoomError::NotFound(format!("no session for {participant}")));
        }
        if self.tracks.contains_key(track) {
            return Ok(());
        }
        if self.tracks.len() >= self.config.max_tracks {
            return Err(RoomError::LimitExceeded(format!(
                "the SFU room forwards at most {} tracks",
                self.config.max_tracks
            )));
        }
        self.tracks.insert(
            track.to_string(),
            Published {
                owner: participant.to_string(),
                kind,
                subscribers: BTreeMap::new(),
                last_keyframe_request: None,
                keyframe_wanted: false,
                layered: false,
                simulcast: simulcast::Layers::default(),
                forwards: BTreeMap::new(),
            },
        );
        self.changed(participant);
        Ok(())
    }

    /// `track` is no longer published: every line carrying it stops.
    pub fn unpublish(&mut self, track: &str) {
        let Some(published) = self.tracks.remove(track) else {
            return;
        };
        let mut touched: Vec<String> = published.subscribers.into_keys().collect();
        touched.push(published.owner);
        for (sid, session) in self.sessions.iter_mut() {
            if session.subscriptions.remove(track) {
                touched.push(sid.clone());
            }
            let added = (session.pending.iter_mut()).flat_map(|p| p.added.iter_mut());
            for line in (session.lines.values_mut()).chain(added.map(|(_, l)| l)) {
                if line.track == track {
                    line.gone = true;
                }
            }
        }
        for sid in touched {
            self.changed(&sid);
        }
    }

    /// `participant` receives `track` from now on.
    pub fn subscribe(&mut self, participant: &str, track: &str) -> Result<(), RoomError> {
        let owner = (self.tracks.get(track))
            .map(|t| t.owner.clone())
            .ok_or_else(|| RoomError::NotFound(format!("no track {track}")))?;
        if owner == participant {
            return Err(RoomError::Invalid(format!(
                "{participant} publishes {track}"
            )));
        }
        let session = (self.sessions.get_mut(participant))
            .ok_or_else(|| RoomError::NotFound(format!("no session for {participant}")))?;
        if session.subscriptions.insert(track.to_string()) {
            self.changed(participant);
        }
        Ok(())
    }

    /// `participant` no longer receives `track`: forwarding stops now, its line stops with the
    /// next offer.
    pub fn unsubscribe(&mut self, participant: &str, track: &str) {
        if let Some(t) = self.tracks.get_mut(track) {
            t.subscribers.remove(participant);
        }
        if let Some(session) = self.sessions.get_mut(participant)
            && session.subscriptions.remove(track)
        {
            self.changed(participant);
        }
    }

    /// `participant`'s answer to the offer it was sent last. A refused answer drops that offer;
    /// a new one with the same changes follows.
    pub fn handle_answer(&mut self, participant: &str, sdp: &str) -> Result<(), RoomError> {
        let session = (self.sessions.get_mut(participant))
            .ok_or_else(|| RoomError::NotFound(format!("no session for {participant}")))?;
        let pending = (session.pending.take())
            .ok_or_else(|| RoomError::Invalid("no offer waits for an answer".into()))?;
        let result = SdpAnswer::from_sdp_string(sdp)
            .map_err(|e| RoomError::Invalid(format!("the answer does not parse: {e}")))
            .and_then(|answer| {
                (session.rtc.sdp_api())
                    .accept_answer(pending.offer, answer)
                    .map_err(|e| RoomError::Invalid(format!("the answer is refused: {e}")))
            });
        if result.is_ok() {
            for mid in pending.stopped {
                session.lines.remove(&mid);
            }
            let mut subscribed = Vec::new();
            for (mid, line) in pending.added {
                if !line.inbound && !line.gone {
                    subscribed.push((line.track.clone(), mid));
                }
                session.lines.insert(mid, line);
            }
            // Only the subscriptions that still stand (one may have ended meanwhile).
            subscribed.retain(|(track, _)| session.subscriptions.contains(track));
            for (track, mid) in subscribed {
                if let Some(t) = self.tracks.get_mut(&track) {
                    t.subscribers.insert(participant.to_string(), mid);
                    t.forwards.remove(participant);
                    self.select(&track);
                    self.request_keyframe(&track);
                }
            }
        }
        self.changed(participant);
        self.drive(participant);
        result
    }

    /// A datagram arrived from `source` at `destination` (the room's candidate it was sent
    /// to). False if no session of the room takes it.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) -> bool {
        self.now = self.now.max(now);
        let Ok(contents) = contents.try_into() else {
            return false;
        };
        let input = Input::Receive(
            self.now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        );
        let known = (self.by_addr.get(&source))
            .filter(|sid| (self.sessions.get(*sid)).is_some_and(|s| s.rtc.accepts(&input)))
            .cloned();
        let sid = match known {
            Some(sid) => sid,
            None => {
                let Some(sid) = (self.sessions.iter())
                    .find(|(_, s)| s.rtc.accepts(&input))
                    .map(|(sid, _)| sid.clone())
                else {
                    return false;
                };
                let session = self.sessions.get_mut(&sid).expect("found above");
                if session.addrs.len() < MAX_ADDRS_PER_SESSION {
                    session.addrs.push(source);
                    if let Some(previous) = self.by_addr.insert(source, sid.clone())
                        && let Some(other) = self.sessions.get_mut(&previous)
                    {
                        other.addrs.retain(|a| *a != source);
                    }
                }
                sid
            }
        };
        let session = self.sessions.get_mut(&sid).expect("found above");
        if session.rtc.handle_input(input).is_err() {
            session.rtc.disconnect();
        }
        self.drive(&sid);
        true
    }

    /// Time passed: run every session whose deadline came, and throttled keyframe requests.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        let due: Vec<String> = (self.sessions.iter())
            .filter(|(_, s)| s.timeout <= self.now)
            .map(|(sid, _)| sid.clone())
            .collect();
        for sid in due {
            let session = self.sessions.get_mut(&sid).expect("listed above");
            if session.rtc.handle_input(Input::Timeout(self.now)).is_err() {
                session.rtc.disconnect();
            }
            self.drive(&sid);
        }
        let interval = self.config.keyframe_interval;
        let wanted: Vec<String> = (self.tracks.iter())
            .filter(|(_, t)| {
                t.keyframe_wanted
                    && (t.last_keyframe_request).is_some_and(|at| at + interval <= self.now)
            })
            .map(|(sid, _)| sid.clone())
            .collect();
        for track in wanted {
            self.request_keyframe(&track);
        }
        if self.next_select <= self.now {
            let elapsed = self.now - (self.next_select - SELECT_INTERVAL);
            self.next_select = self.now + SELECT_INTERVAL;
            self.select_all(elapsed);
        }
        self.speakers.handle_timeout(self.now);
    }

    /// When `handle_timeout` has something to do next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let sessions = self.sessions.values().map(|s| s.timeout);
        let interval = self.config.keyframe_interval;
        let keyframes = (self.tracks.values())
            .filter(|t| t.keyframe_wanted)
            .filter_map(|t| t.last_keyframe_request.map(|at| at + interval));
        let select = (!self.tracks.is_empty()).then_some(self.next_select);
        let speakers = self.speakers.poll_timeout();
        (sessions.chain(keyframes).chain(select).chain(speakers)).min()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next offer to send to its participant.
    pub fn poll_offer(&mut self) -> Option<Offer> {
        if self.offers.is_empty() {
            for sid in std::mem::take(&mut self.renegotiate) {
                self.negotiate(&sid);
            }
        }
        self.offers.pop_front()
    }

    /// The ranked active speakers (participants, loudest first), when the list changed.
    pub fn poll_speakers(&mut self) -> Option<Vec<Speaker>> {
        self.speakers.poll_speakers()
    }

    /// The next change of the ufrags the shell routes to this room.
    pub fn poll_route(&mut self) -> Option<Route> {
        self.routes.pop_front()
    }

    /// `participant`'s session changed: it gets an offer when the shell next polls them, so
    /// the changes of one request share one offer.
    fn changed(&mut self, participant: &str) {
        self.renegotiate.insert(participant.to_string());
    }

    /// Offer `participant` what changed, unless an offer of it is in flight.
    fn negotiate(&mut self, participant: &str) {
        let Some(session) = self.sessions.get(participant) else {
            return;
        };
        if session.client.is_some() {
            self.select_sources(participant);
            return;
        }
        if session.pending.is_some() {
            return;
        }
        let tracks = &self.tracks;
        let wanted = |line: &Line| {
            !line.gone
                && tracks.get(&line.track).is_some_and(|t| {
                    if line.inbound {
                        t.owner == participant
                    } else {
                        session.subscriptions.contains(&line.track)
                    }
                })
        };
        let stopped: Vec<Mid> = (session.lines.iter())
            .filter(|(_, line)| !wanted(line))
            .map(|(mid, _)| *mid)
            .collect();
        // With whether the line asks for simulcast layers.
        let mut missing: Vec<(Line, bool)> = Vec::new();
        for (sid, t) in tracks {
            let inbound = t.owner == participant;
            let desired = inbound || session.subscriptions.contains(sid);
            let present = (session.lines.values())
                .any(|l| !l.gone && l.track == *sid && l.inbound == inbound);
            if desired && !present {
                let line = Line {
                    track: sid.clone(),
                    owner: t.owner.clone(),
                    kind: t.kind,
                    inbound,
                    gone: false,
                };
                missing.push((line, inbound && t.layered));
            }
        }
        if session.started && stopped.is_empty() && missing.is_empty() {
            return;
        }
        let session = self.sessions.get_mut(participant).expect("checked above");
        // Forwarding into a line that is about to stop ends now.
        for mid in &stopped {
            if let Some(line) = session.lines.get(mid)
                && let Some(t) = self.tracks.get_mut(&line.track)
                && t.subscribers.get(participant) == Some(mid)
            {
                t.subscribers.remove(participant);
            }
        }
        let mut api = session.rtc.sdp_api();
        if !session.started {
            api.add_channel(CHANNEL_LABEL.to_string());
        }
        let mut added = Vec::new();
        for (line, layered) in missing {
            let direction = if line.inbound {
                Direction::RecvOnly
            } else {
                Direction::SendOnly
            };
            let kind = match line.kind {
                TrackKind::Audio => MediaKind::Audio,
                TrackKind::Video => MediaKind::Video,
            };
            let stream = Some(line.owner.clone());
            let layers = layered.then(simulcast::recv_layers);
            let mid = api.add_media(kind, direction, stream, Some(line.track.clone()), layers);
            added.push((mid, line));
        }
        for mid in &stopped {
            api.stop_media(*mid);
        }
        let Some((offer, pending)) = api.apply() else {
            return;
        };
        session.started = true;
        let mut media: Vec<MediaLine> = (session.lines.iter())
            .filter(|(mid, _)| !stopped.contains(mid))
            .chain(added.iter().map(|(mid, line)| (mid, line)))
            .map(|(mid, line)| MediaLine {
                mid: mid.to_string(),
                track: line.track.clone(),
                participant: line.owner.clone(),
                kind: line.kind,
            })
            .collect();
        media.sort_by(|a, b| a.mid.cmp(&b.mid));
        session.pending = Some(Pending {
            offer: pending,
            added,
            stopped,
        });
        self.offers.push_back(Offer {
            participant: participant.to_string(),
            sdp: offer.to_sdp_string(),
            media,
        });
    }

    /// Ask `track`'s publisher for a keyframe, at most once per `keyframe_interval`; a request
    /// within the interval is sent when it ends.
    fn request_keyframe(&mut self, track: &str) {
        let Some(t) = self.tracks.get_mut(track) else {
            return;
        };
        if t.kind != TrackKind::Video {
            return;
        }
        let interval = self.config.keyframe_interval;
        if t.last_keyframe_request
            .is_some_and(|at| self.now < at + interval)
        {
            t.keyframe_wanted = true;
            return;
        }
        // Until it is sent, the request waits: for the interval, or for the track's first
        // frame when nothing came on its line yet.
        t.keyframe_wanted = true;
        let owner = t.owner.clone();
        let rids = self.keyframe_rids(track);
        let Some(t) = self.tracks.get_mut(track) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&owner) else {
            return;
        };
        let Some(mut writer) = (session.inbound_mid(track)).and_then(|mid| session.rtc.writer(mid))
        else {
            return;
        };
        let kind = if writer.is_request_keyframe_possible(KeyframeRequestKind::Pli) {
            KeyframeRequestKind::Pli
        } else {
            KeyframeRequestKind::Fir
        };
        let mut sent = false;
        for rid in rids {
            sent |= writer.request_keyframe(rid, kind).is_ok();
        }
        if !sent {
            return;
        }
        t.last_keyframe_request = Some(self.now);
        t.keyframe_wanted = false;
        self.stats.keyframe_requests += 1;
        self.drive(&owner);
    }

    /// Drain `participant`'s session, and every session its events wrote to, until each says
    /// when it wants time next.
    fn drive(&mut self, participant: &str) {
        let mut dirty = BTreeSet::from([participant.to_string()]);
        while let Some(sid) = dirty.pop_first() {
            let mut due_rounds = 0;
            while let Some(session) = self.sessions.get_mut(&sid) {
                match session.rtc.poll_output() {
                    // Due already (its pacer sends one packet per timeout): run it now rather
                    // than on the shell's next timer, a bounded number of times.
                    Ok(Output::Timeout(at)) if at <= self.now && due_rounds < MAX_DUE_ROUNDS => {
                        due_rounds += 1;
                        if session.rtc.handle_input(Input::Timeout(self.now)).is_err() {
                            session.rtc.disconnect();
                        }
                    }
                    Ok(Output::Timeout(at)) => {
                        session.timeout = at;
                        break;
                    }
                    Ok(Output::Transmit(t)) => {
                        if is_rtp(&t.contents) {
                            session.budget.sent(t.contents.len());
                        }
                        if self.transmits.len() >= MAX_TRANSMITS {
                            self.stats.dropped_transmits += 1;
                            continue;
                        }
                        self.transmits.push_back(Transmit {
                            source: t.source,
                            destination: t.destination,
                            contents: t.contents.to_vec(),
                        });
                    }
                    Ok(Output::Event(event)) => self.handle_event(&sid, event, &mut dirty),
                    Err(_) => {
                        session.rtc.disconnect();
                        session.timeout = self.now + Duration::from_secs(3600);
                        break;
                    }
                }
            }
        }
    }

    fn handle_event(&mut self, sid: &str, event: Event, dirty: &mut BTreeSet<String>) {
        match event {
            Event::MediaData(data) => self.forward(sid, data, dirty),
            Event::PeerStats(stats) => {
                if let Some(session) = self.sessions.get_mut(sid)
                    && let Some(estimate) = stats.bwe_tx
                {
                    session.estimate = Some(estimate.as_u64());
                    if (stats.egress_loss_fraction).is_some_and(|f| f >= bandwidth::PAUSE_LOSS) {
                        session.lossy_until = Some(self.now + bandwidth::LOSS_MEMORY);
                    }
                }
            }
            Event::KeyframeRequest(request) => {
                let track = (self.sessions.get(sid))
                    .and_then(|s| s.lines.get(&request.mid))
                    .filter(|l| !l.inbound && !l.gone)
                    .map(|l| l.track.clone());
                if let Some(track) = track {
                    self.request_keyframe(&track);
                }
            }
            Event::Connected => {
                // A subscriber that just connected needs a keyframe of everything it receives.
                let tracks: Vec<String> = (self.tracks.iter())
                    .filter(|(_, t)| t.subscribers.contains_key(sid))
                    .map(|(track, _)| track.clone())
                    .collect();
                for track in tracks {
                    self.request_keyframe(&track);
                }
            }
            _ => {}
        }
    }

    /// Write a frame `publisher` sent to every subscriber of its track.
    fn forward(&mut self, publisher: &str, data: MediaData, dirty: &mut BTreeSet<String>) {
        let Some(line) = (self.sessions.get(publisher))
            .and_then(|s| s.lines.get(&data.mid))
            .filter(|l| l.inbound && !l.gone)
        else {
            return;
        };
        let track = line.track.clone();
        let Some(t) = self.tracks.get(&track) else {
            return;
        };
        // Packets were lost, so subscribers cannot decode until the next keyframe; or a
        // request waited for the track's first frame.
        let first = t.keyframe_wanted && t.last_keyframe_request.is_none();
        if !data.contiguous || first {
            self.request_keyframe(&track);
        }
        let Some(layer) = simulcast::layer_of(data.rid) else {
            return;
        };
        let Some(t) = self.tracks.get_mut(&track) else {
            return;
        };
        let video = t.kind == TrackKind::Video;
        // A layer's first frame: subscribers may pick it now.
        if t.simulcast.record(layer, &data, video) && video {
            self.select(&track);
        } else if !video && let Some(level) = data.ext_vals.audio_level {
            let owner = t.owner.clone();
            (self.speakers).handle_level(&owner, level.unsigned_abs(), self.now);
        }
        let Some(t) = self.tracks.get_mut(&track) else {
            return;
        };
        let keyframe = data.is_keyframe();
        let packets = (**data.seq_range.end()).saturating_sub(**data.seq_range.start()) + 1;
        let mut lost = false;
        for (subscriber, mid) in &t.subscribers {
            let Some(session) = self.sessions.get_mut(subscriber) else {
                continue;
            };
            if session.is_hidden(&track) {
                continue;
            }
            // Video goes out in one layer, from a keyframe on.
            let time = if video {
                // Looked up before inserting: no key is allocated per frame.
                if !t.forwards.contains_key(subscriber) {
                    let forward = simulcast::Forward::new(Some(layer));
                    (t.forwards).insert(subscriber.clone(), forward);
                }
                let forward = (t.forwards.get_mut(subscriber)).expect("inserted above");
                let Some(time) = forward.admit(layer, keyframe, data.time) else {
                    continue;
                };
                // A burst at its estimate waits already: the video stops until a keyframe
                // (asked for below).
                if (session.estimate).is_some_and(|rate| !session.budget.admits(rate)) {
                    forward.interrupt();
                    self.stats.shed_frames += 1;
                    lost = true;
                    continue;
                }
                time
            } else {
                data.time
            };
            let Some(writer) = session.rtc.writer(*mid) else {
                continue;
            };
            let Some(pt) = line_pt(&writer, data.params) else {
                continue;
            };
            match writer.write(pt, data.network_time, time, data.data.clone()) {
                Ok(()) => {
                    session.budget.written(data.data.len());
                    self.stats.forwarded_packets += packets;
                    self.stats.forwarded_bytes += data.data.len() as u64;
                    dirty.insert(subscriber.clone());
                }
                // Its queue is full: drop the frame rather than wait; it needs a keyframe.
                Err(RtcError::WriteWithoutPoll) => {
                    self.stats.dropped_frames += 1;
                    lost = true;
                }
                Err(_) => self.stats.dropped_frames += 1,
            }
        }
        if lost {
            self.request_keyframe(&track);
        }
    }
}

/// The payload type to write a frame sent as `sent` with on `writer`'s line: the best match
/// among the codecs negotiated on the line, if one carries it. (str0m's `match_params` looks
/// among every codec of the session, and a subscriber drops packets of a payload type its line
/// did not negotiate: a VP8-only line must not get H.264.)
fn line_pt(writer: &str0m::media::Writer, sent: PayloadParams) -> Option<Pt> {
    let pt = writer.match_params(sent)?;
    if writer.payload_params().any(|p| p.pt() == pt) {
        return Some(pt);
    }
    // Rare (another codec of the session matched better): match among the line's alone.
    let line = CodecConfig::new_from_payload_params(writer.payload_params().copied().collect());
    line.match_params(sent).map(|p| p.pt())
}

/// Whether `datagram` is an RTP packet (SRTP keeps the header in the clear): version 2, and a
/// second byte outside the RTCP packet types 192 to 223.
fn is_rtp(datagram: &[u8]) -> bool {
    datagram.len() >= 12 && datagram[0] >> 6 == 2 && !(192..=223).contains(&datagram[1])
}

/// The ICE username fragment of the receiver of a STUN message (the first half of its
/// USERNAME), if `datagram` is one: how the shell finds a new client's room.
pub fn stun_ufrag(datagram: &[u8]) -> Option<&str> {
    let message = str0m::ice::StunMessage::parse(datagram).ok()?;
    let username = message.username()?;
    username.split(':').next()
}

mod bandwidth;
#[cfg(any(test, feature = "sim"))]
#[doc(hidden)]
pub mod sim;
mod simulcast;
mod speaker;
pub use bandwidth::Paused;
pub use simulcast::{LAYERS, LayerChange, MAX_LAYOUT_PIXELS, SELECT_INTERVAL};
pub use speaker::{Speaker, SpeakerConfig, Speakers};
#[cfg(test)]
mod tests;
pub mod whip;
