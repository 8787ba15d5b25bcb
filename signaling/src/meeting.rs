//! One meeting: who is in it, with which tracks and grants, and what each request makes the
//! server send. Sans-IO: requests and time come in as method calls, frames go out through
//! `poll_output`, the next deadline through `poll_timeout`.

use crate::sdp::{SdpError, check_sdp};
use crate::sfu::{Room, RoomError};
use crate::wire::{
    ActiveSpeaker, Candidate, Grants, JoinReply, LeftReason, MeetingFrame, MeetingMode,
    Participant, ParticipantState, PauseReason, SignalKind, Track, TrackKind, TrackSource,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// The shell's id of a connection.
pub type ConnId = u64;
/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// Tracks one participant may publish.
pub const MAX_TRACKS: usize = 8;
/// The largest SDP relayed, in bytes.
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// The longest candidate string, in bytes.
pub const MAX_CANDIDATE_BYTES: usize = 1024;
const MAX_MID_BYTES: usize = 64;
const MAX_UFRAG_BYTES: usize = 256;
/// The largest `meeting.data` payload, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;
const MAX_TOPIC_CHARS: usize = 64;
/// Display names and client track ids are 1 to this many characters.
pub const MAX_NAME_CHARS: usize = 64;
const MAX_REASON_BYTES: usize = 200;

/// What a meeting is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// How long a participant whose connection closed stays `reconnecting`.
    pub grace_ms: Millis,
    /// Active and reconnecting participants at most.
    pub max_participants: usize,
    /// A mesh meeting asks to turn into SFU mode ([`Output::SwitchToSfu`]) once it has this
    /// many active and reconnecting participants. 0: never.
    pub sfu_participants: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grace_ms: 20_000,
            max_participants: 50,
            sfu_participants: 0,
        }
    }
}

/// Who joins: identity and grants come from the server's checks, `name` from the request.
#[derive(Debug, Clone)]
pub struct Joiner {
    pub user: String,
    pub org: String,
    /// The name the client asked for, if any (checked: 1 to 64 characters).
    pub name: Option<String>,
    /// The name used when the client gives none (cut to 64 characters).
    pub default_name: String,
    pub grants: Grants,
}

/// Why a request was refused. Each maps to one protocol error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The connection is not in this meeting: join first.
    NotJoined,
    /// The named participant or track is not there.
    NotFound(String),
    /// The participant's grants do not allow it.
    Forbidden(String),
    /// A field is missing, malformed or out of bounds.
    Invalid(String),
    /// The meeting is full, or the participant publishes as many tracks as allowed.
    LimitExceeded(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotJoined => f.write_str("not in this meeting (meeting.join first)"),
            Error::NotFound(m)
            | Error::Forbidden(m)
            | Error::Invalid(m)
            | Error::LimitExceeded(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl From<RoomError> for Error {
    fn from(e: RoomError) -> Error {
        match e {
            RoomError::NotFound(m) => Error::NotFound(m),
            RoomError::Invalid(m) => Error::Invalid(m),
            RoomError::LimitExceeded(m) => Error::LimitExceeded(m),
        }
    }
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send `frame` to connection `conn`.
    Send { conn: ConnId, frame: MeetingFrame },
    /// Send the same `frame` to every connection of `conns` (encode it once).
    Broadcast {
        conns: Vec<ConnId>,
        frame: MeetingFrame,
    },
    /// Connection `conn` is now in the meeting (`true`) or no longer (`false`), for presence.
    /// Not told for connections that closed.
    Presence { conn: ConnId, in_meeting: bool },
    /// SFU mode: route the datagrams whose STUN username names `ufrag` to this meeting
    /// (`open`), or no longer.
    Route { ufrag: String, open: bool },
    /// The mesh meeting reached `sfu_participants`: hand it a media room with
    /// [`Meeting::switch_to_sfu`], or it stays peer to peer. Asked once per threshold set.
    SwitchToSfu,
}

struct Member {
    info: Participant,
    conn: Option<ConnId>,
    grants: Grants,
    /// When a reconnecting participant leaves for good.
    deadline: Option<Millis>,
    /// Its video tracks sent in simulcast layers (SFU mode).
    layered: BTreeSet<String>,
}

/// One live meeting.
pub struct Meeting {
    space: String,
    room: String,
    config: Config,
    /// Makes ids unique across meetings and restarts of this one.
    prefix: String,
    next_id: u64,
    version: u64,
    members: BTreeMap<String, Member>,
    by_conn: HashMap<ConnId, String>,
    /// Participants changed since the last `meeting.participants` frame.
    changed: BTreeSet<String>,
    /// Participants that left since then, as they were when they left.
    gone: BTreeMap<String, Participant>,
    outputs: VecDeque<Output>,
    /// The media room, in SFU mode.
    sfu: Option<Room>,
    /// `Output::SwitchToSfu` was queued for the current threshold.
    switch_asked: bool,
}

impl Meeting {
    /// A meeting in `room` of `space`. Participant and track ids are `p-<prefix>-<n>` and
    /// `t-<prefix>-<n>`: the shell picks a random `prefix` so ids are not reused.
    pub fn new(space: &str, room: &str, prefix: &str, config: Config) -> Meeting {
        Meeting {
            space: space.to_string(),
            room: room.to_string(),
            config,
            prefix: prefix.to_string(),
            next_id: 0,
            version: 0,
            members: BTreeMap::new(),
            by_conn: HashMap::new(),
            changed: BTreeSet::new(),
            gone: BTreeMap::new(),
            outputs: VecDeque::new(),
            sfu: None,
            switch_asked: false,
        }
    }

    /// This meeting in SFU mode: media goes through `room`, which gets a session for each
    /// participant and every published track; subscribers receive every other track.
    pub fn with_sfu(mut self, room: Room) -> Meeting {
        self.sfu = Some(room);
        self
    }

    /// Turn into SFU mode from `participants` participants on (0: never), as
    /// `Config::sfu_participants`; a meeting that has that many already asks at once.
    pub fn set_sfu_participants(&mut self, participants: usize) {
        self.config.sfu_participants = participants;
        self.switch_asked = false;
        self.ask_switch();
    }

    /// Turn this mesh meeting into SFU mode, for good: every participant gets a session of
    /// `room` sending its tracks and receiving the others', and a `meeting.mode` frame (after
    /// the participant changes not sent yet), then the room's offer. On an error (the room's
    /// limits) the meeting stays peer to peer.
    pub fn switch_to_sfu(&mut self, room: Room) -> Result<(), Error> {
        if self.sfu.is_some() {
            return Err(Error::Invalid(
                "this meeting forwards media through the server already".into(),
            ));
        }
        self.sfu = Some(room);
        let sids: Vec<String> = self.members.keys().cloned().collect();
        let attached = sids
            .iter()
            .try_for_each(|sid| {
                let room = self.sfu.as_mut().expect("set above");
                room.add_participant(sid).map_err(Error::from)
            })
            .and_then(|()| sids.iter().try_for_each(|sid| self.publish_media(sid)));
        if let Err(e) = attached {
            self.sfu = None;
            return Err(e);
        }
        self.flush();
        let conns: Vec<ConnId> = self.members.values().filter_map(|m| m.conn).collect();
        if !conns.is_empty() {
            self.outputs.push_back(Output::Broadcast {
                conns,
                frame: MeetingFrame::Mode {
                    space: self.space.clone(),
                    room: self.room.clone(),
                    mode: MeetingMode::Sfu,
                },
            });
        }
        Ok(())
    }

    pub fn mode(&self) -> MeetingMode {
        match self.sfu {
            Some(_) => MeetingMode::Sfu,
            None => MeetingMode::Mesh,
        }
    }

    /// The media room, in SFU mode: the shell feeds it datagrams and timeouts and sends its
    /// datagrams; its offers and routes come out of [`Meeting::poll_output`].
    pub fn sfu_mut(&mut self) -> Option<&mut Room> {
        self.sfu.as_mut()
    }

    /// The meeting's version: increases by one with every change of a participant.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Active and reconnecting participants.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True once nobody is left and everything was polled: the meeting may end.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
            && self.outputs.is_empty()
            && self.changed.is_empty()
            && self.gone.is_empty()
            && self.sfu.as_ref().is_none_or(Room::is_idle)
    }

    /// Participant `sid`, if it is active or reconnecting.
    pub fn participant(&self, sid: &str) -> Option<&Participant> {
        self.members.get(sid).map(|m| &m.info)
    }

    /// The participant of connection `conn`, if it has one.
    pub fn sid_of(&self, conn: ConnId) -> Option<&str> {
        self.by_conn.get(&conn).map(String::as_str)
    }

    /// Join connection `conn`, or with `resume` take over that participant if it is the same
    /// user's. The connection's previous participant, if any other, is replaced.
    pub fn join(
        &mut self,
        conn: ConnId,
        joiner: Joiner,
        resume: Option<&str>,
        now: Millis,
    ) -> Result<JoinReply, Error> {
        let name = match joiner.name {
            Some(name) => {
                check_chars("name", &name, MAX_NAME_CHARS)?;
                name
            }
            None => joiner.default_name.chars().take(MAX_NAME_CHARS).collect(),
        };
        let current = self.by_conn.get(&conn).cloned();
        let resumable = resume
            .filter(|sid| {
                self.members
                    .get(*sid)
                    .is_some_and(|m| m.info.user == joiner.user && m.info.org == joiner.org)
            })
            .map(str::to_string);
        if let Some(sid) = resumable {
            if let Some(old) = current.as_ref().filter(|old| **old != sid) {
                self.depart(old, LeftReason::Replaced, None);
            }
            let member = self.members.get_mut(&sid).expect("checked above");
            if let Some(other) = member.conn.filter(|c| *c != conn) {
                self.by_conn.remove(&other);
                self.outputs.push_back(Output::Send {
                    conn: other,
                    frame: MeetingFrame::Left {
                        space: self.space.clone(),
                        room: self.room.clone(),
                        reason: LeftReason::Replaced,
                        by: None,
                    },
                });
                self.outputs.push_back(Output::Presence {
                    conn: other,
                    in_meeting: false,
                });
            }
            member.conn = Some(conn);
            member.deadline = None;
            member.grants = joiner.grants;
            member.info.state = ParticipantState::Active;
            member.info.name = name;
            if !joiner.grants.publish {
                member.info.tracks.clear();
            }
            self.bind(conn, &sid, current.is_none());
            // The client that resumes starts a new session.
            self.attach_media(&sid)?;
            return Ok(self.reply(&sid));
        }
        let others = self.members.len() - usize::from(current.is_some());
        if others >= self.config.max_participants {
            return Err(Error::LimitExceeded(format!(
                "the meeting is full ({} participants)",
                self.config.max_participants
            )));
        }
        if let Some(old) = &current {
            self.depart(old, LeftReason::Replaced, None);
        }
        let sid = self.new_id('p');
        if let Some(room) = &mut self.sfu {
            room.add_participant(&sid)?;
        }
        let info = Participant {
            sid: sid.clone(),
            user: joiner.user,
            org: joiner.org,
            name,
            state: ParticipantState::Active,
            version: 0,
            joined_ms: now,
            tracks: Vec::new(),
            reason: None,
            message: None,
        };
        let member = Member {
            info,
            conn: Some(conn),
            grants: joiner.grants,
            deadline: None,
            layered: BTreeSet::new(),
        };
        self.members.insert(sid.clone(), member);
        self.bind(conn, &sid, current.is_none());
        self.subscribe_all(&sid)?;
        self.ask_switch();
        Ok(self.reply(&sid))
    }

    /// Publish a track (or update the one with the same `cid`).
    pub fn publish(
        &mut self,
        conn: ConnId,
        cid: &str,
        kind: TrackKind,
        source: TrackSource,
        muted: bool,
    ) -> Result<Track, Error> {
        let sid = self.active(conn)?;
        check_chars("cid", cid, MAX_NAME_CHARS)?;
        let member = &self.members[&sid];
        if !member.grants.publish {
            return Err(Error::Forbidden(
                "publishing needs the publish grant".into(),
            ));
        }
        let existing = member.info.tracks.iter().position(|t| t.cid == cid);
        if existing.is_none() && member.info.tracks.len() >= MAX_TRACKS {
            return Err(Error::LimitExceeded(format!(
                "a participant publishes at most {MAX_TRACKS} tracks"
            )));
        }
        // A track whose kind changes is a new track for the media room.
        let rekind = existing
            .map(|i| &member.info.tracks[i])
            .filter(|t| t.kind != kind)
            .map(|t| t.sid.clone());
        let track_sid = match existing {
            Some(_) => None,
            None => Some(self.new_id('t')),
        };
        if let Some(room) = &mut self.sfu {
            if let Some(track) = &rekind {
                room.unpublish(track);
            }
            if let Some(track) = track_sid.as_ref().or(rekind.as_ref()) {
                room.publish(&sid, track, kind)?;
            }
        }
        let tracks = &mut self.member_mut(&sid).info.tracks;
        let track = match existing {
            Some(i) => {
                let track = &mut tracks[i];
                track.kind = kind;
                track.source = source;
                track.muted = muted;
                track.clone()
            }
            None => {
                let track = Track {
                    sid: track_sid.expect("a new track has a new id"),
                    cid: cid.to_string(),
                    kind,
                    source,
                    muted,
                };
                tracks.push(track.clone());
                track
            }
        };
        self.touch(&sid);
        self.subscribe_others(&sid, &track.sid)?;
        Ok(track)
    }

    /// Stop publishing track `track`.
    pub fn unpublish(&mut self, conn: ConnId, track: &str) -> Result<(), Error> {
        let sid = self.active(conn)?;
        let member = self.member_mut(&sid);
        if !member.grants.publish {
            return Err(Error::Forbidden(
                "publishing needs the publish grant".into(),
            ));
        }
        let at = member
            .info
            .tracks
            .iter()
            .position(|t| t.sid == track)
            .ok_or_else(|| Error::NotFound(format!("you publish no track {track}")))?;
        member.info.tracks.remove(at);
        member.layered.remove(track);
        self.touch(&sid);
        if let Some(room) = &mut self.sfu {
            room.unpublish(track);
        }
        Ok(())
    }

    /// Mute or unmute one's own track, or, as an admin, mute another participant's.
    pub fn mute(
        &mut self,
        conn: ConnId,
        track: &str,
        muted: bool,
        participant: Option<&str>,
    ) -> Result<Track, Error> {
        let me = self.active(conn)?;
        let target = participant.unwrap_or(&me).to_string();
        let other = target != me;
        if other {
            if !self.members[&me].grants.admin {
                return Err(Error::Forbidden(
                    "only the room's owners and the space's managers mute others".into(),
                ));
            }
            if !muted {
                return Err(Error::Forbidden(
                    "others' tracks are only muted: their owner unmutes them".into(),
                ));
            }
        }
        let owner = self
            .members
            .get_mut(&target)
            .ok_or_else(|| Error::NotFound(format!("no participant {target}")))?;
        let found = owner
            .info
            .tracks
            .iter_mut()
            .find(|t| t.sid == track)
            .ok_or_else(|| Error::NotFound(format!("{target} publishes no track {track}")))?;
        let changed = found.muted != muted;
        found.muted = muted;
        let found = found.clone();
        let owner_conn = owner.conn;
        if changed {
            self.touch(&target);
        }
        if other && let Some(conn) = owner_conn {
            self.flush();
            self.outputs.push_back(Output::Send {
                conn,
                frame: MeetingFrame::Muted {
                    space: self.space.clone(),
                    room: self.room.clone(),
                    track: found.sid.clone(),
                    muted: true,
                    by: me,
                },
            });
        }
        Ok(found)
    }

    /// As an admin, remove participant `participant` from the meeting.
    pub fn remove(&mut self, conn: ConnId, participant: &str) -> Result<(), Error> {
        let me = self.active(conn)?;
        if !self.members[&me].grants.admin {
            return Err(Error::Forbidden(
                "only the room's owners and the space's managers remove participants".into(),
            ));
        }
        if !self.members.contains_key(participant) {
            return Err(Error::NotFound(format!("no participant {participant}")));
        }
        if let Some(conn) = self.depart(participant, LeftReason::Removed, None) {
            self.left(conn, LeftReason::Removed, Some(me));
        }
        Ok(())
    }

    /// Relay an offer, answer or candidate to participant `to`, once the SDP fits the
    /// sender's grants.
    pub fn signal(
        &mut self,
        conn: ConnId,
        to: &str,
        kind: SignalKind,
        sdp: Option<String>,
        candidate: Option<Candidate>,
    ) -> Result<(), Error> {
        let me = self.active(conn)?;
        if self.sfu.is_some() {
            return Err(Error::Invalid(
                "this meeting forwards media through the server: answer its `meeting.offer` \
                 with `meeting.answer`"
                    .into(),
            ));
        }
        let target = self
            .members
            .get(to)
            .filter(|m| m.info.state == ParticipantState::Active && to != me)
            .and_then(|m| m.conn)
            .ok_or_else(|| Error::NotFound(format!("no other active participant {to}")))?;
        let (sdp, candidate) = match kind {
            SignalKind::Offer | SignalKind::Answer => {
                let sdp = sdp
                    .ok_or_else(|| Error::Invalid("an offer or answer carries an `sdp`".into()))?;
                check_sdp_fits(&sdp, &self.members[&me].grants)?;
                (Some(sdp), None)
            }
            SignalKind::Candidate => {
                if let Some(c) = &candidate {
                    check_candidate(c)?;
                }
                (None, Some(candidate))
            }
        };
        self.flush();
        self.outputs.push_back(Output::Send {
            conn: target,
            frame: MeetingFrame::Signal {
                space: self.space.clone(),
                room: self.room.clone(),
                from: me,
                kind,
                sdp,
                candidate,
            },
        });
        Ok(())
    }

    /// SFU mode: connection `conn`'s answer to the server's last offer, once it fits its
    /// grants.
    pub fn answer(&mut self, conn: ConnId, sdp: &str) -> Result<(), Error> {
        let me = self.active(conn)?;
        let grants = self.members[&me].grants;
        let Some(room) = &mut self.sfu else {
            return Err(Error::Invalid(
                "this meeting is peer to peer: it makes no offers to answer".into(),
            ));
        };
        // The data channel is the server's own (its first offer opens it), not the
        // participant's: answering it needs no data grant.
        let grants = Grants {
            data: true,
            ..grants
        };
        check_sdp_fits(sdp, &grants)?;
        Ok(room.handle_answer(&me, sdp)?)
    }

    /// SFU mode: connection `conn`'s participant sends its video track `track` (just
    /// published) in simulcast layers, so the server's line for it asks for them. In a mesh,
    /// only remembered (for a switch to SFU mode).
    pub fn simulcast(&mut self, conn: ConnId, track: &str) -> Result<(), Error> {
        let me = self.active(conn)?;
        if !self.members[&me].info.tracks.iter().any(|t| t.sid == track) {
            return Err(Error::NotFound(format!("you publish no track {track}")));
        }
        if let Some(room) = &mut self.sfu {
            room.simulcast(track)?;
        }
        self.member_mut(&me).layered.insert(track.to_string());
        Ok(())
    }

    /// SFU mode: connection `conn`'s participant shows `track` in an element of `width` by
    /// `height` pixels (0: hidden); the server picks the simulcast layer it receives.
    pub fn layout(
        &mut self,
        conn: ConnId,
        track: &str,
        width: u32,
        height: u32,
    ) -> Result<(), Error> {
        let me = self.active(conn)?;
        if !self.members[&me].grants.subscribe {
            return Err(Error::Forbidden(
                "receiving media needs the subscribe grant".into(),
            ));
        }
        let Some(room) = &mut self.sfu else {
            return Err(Error::Invalid(
                "this meeting is peer to peer: layouts are for the SFU".into(),
            ));
        };
        Ok(room.set_layout(&me, track, width, height)?)
    }

    /// Relay `payload` to participants `to` (default: every other active one).
    pub fn data(
        &mut self,
        conn: ConnId,
        payload: String,
        topic: Option<String>,
        to: Option<Vec<String>>,
    ) -> Result<(), Error> {
        let me = self.active(conn)?;
        if !self.members[&me].grants.data {
            return Err(Error::Forbidden("sending data needs the data grant".into()));
        }
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(Error::Invalid(format!(
                "a payload is at most {MAX_PAYLOAD_BYTES} bytes"
            )));
        }
        if let Some(topic) = &topic
            && topic.chars().count() > MAX_TOPIC_CHARS
        {
            return Err(Error::Invalid(format!(
                "a topic is at most {MAX_TOPIC_CHARS} characters"
            )));
        }
        let active_other =
            |m: &Member| m.info.state == ParticipantState::Active && m.info.sid != me;
        let conns: BTreeSet<ConnId> = match to {
            Some(to) => {
                if to.len() > self.config.max_participants {
                    return Err(Error::Invalid(format!(
                        "`to` names at most {} participants",
                        self.config.max_participants
                    )));
                }
                let mut conns = BTreeSet::new();
                for sid in &to {
                    let conn = self
                        .members
                        .get(sid)
                        .filter(|m| active_other(m))
                        .and_then(|m| m.conn)
                        .ok_or_else(|| {
                            Error::NotFound(format!("no other active participant {sid}"))
                        })?;
                    conns.insert(conn);
                }
                conns
            }
            None => self
                .members
                .values()
                .filter(|m| active_other(m))
                .filter_map(|m| m.conn)
                .collect(),
        };
        self.flush();
        if !conns.is_empty() {
            self.outputs.push_back(Output::Broadcast {
                conns: conns.into_iter().collect(),
                frame: MeetingFrame::Data {
                    space: self.space.clone(),
                    room: self.room.clone(),
                    from: me,
                    payload,
                    topic,
                },
            });
        }
        Ok(())
    }

    /// Connection `conn` leaves (if it is in the meeting).
    pub fn leave(&mut self, conn: ConnId, reason: Option<String>) -> Result<(), Error> {
        if let Some(reason) = &reason
            && reason.len() > MAX_REASON_BYTES
        {
            return Err(Error::Invalid(format!(
                "a reason is at most {MAX_REASON_BYTES} bytes"
            )));
        }
        if let Some(sid) = self.by_conn.get(&conn).cloned() {
            self.depart(&sid, LeftReason::Left, reason);
            self.outputs.push_back(Output::Presence {
                conn,
                in_meeting: false,
            });
        }
        Ok(())
    }

    /// Connection `conn`'s user lost access to the room: its participant leaves, and it is
    /// told why.
    pub fn revoke(&mut self, conn: ConnId) {
        if let Some(sid) = self.by_conn.get(&conn).cloned() {
            self.depart(&sid, LeftReason::Access, None);
            self.left(conn, LeftReason::Access, None);
        }
    }

    /// Connection `conn` closed: its participant is `reconnecting` until the grace ends.
    pub fn handle_disconnect(&mut self, conn: ConnId, now: Millis) {
        let Some(sid) = self.by_conn.remove(&conn) else {
            return;
        };
        if self.config.grace_ms == 0 {
            self.depart(&sid, LeftReason::Disconnected, None);
            return;
        }
        let deadline = now + self.config.grace_ms;
        let member = self.member_mut(&sid);
        member.conn = None;
        member.info.state = ParticipantState::Reconnecting;
        member.deadline = Some(deadline);
        self.touch(&sid);
    }

    /// Let the participants whose grace ended by `now` go.
    pub fn handle_timeout(&mut self, now: Millis) {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| m.deadline.is_some_and(|d| d <= now))
            .map(|m| m.info.sid.clone())
            .collect();
        for sid in expired {
            self.depart(&sid, LeftReason::Disconnected, None);
        }
    }

    /// When `handle_timeout` has something to do next.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.members.values().filter_map(|m| m.deadline).min()
    }

    /// The next thing to do. Participant changes are sent when nothing else is queued (so the
    /// changes of several requests handled in a row share one frame), and always before a
    /// relayed signal or data message that follows them.
    pub fn poll_output(&mut self) -> Option<Output> {
        if self.outputs.is_empty() {
            self.flush();
        }
        if self.outputs.is_empty() {
            self.take_media_outputs();
        }
        self.outputs.pop_front()
    }

    /// Queue the room's offers (to their participants' connections) and route changes, after
    /// the participant changes that caused them.
    fn take_media_outputs(&mut self) {
        let Some(room) = &mut self.sfu else {
            return;
        };
        while let Some(route) = room.poll_route() {
            self.outputs.push_back(Output::Route {
                ufrag: route.ufrag,
                open: route.open,
            });
        }
        // Frames to one participant, on its connection (none while it reconnects).
        let (members, outputs) = (&self.members, &mut self.outputs);
        let (space, room_id) = (&self.space, &self.room);
        let to = |participant: &str, frame: MeetingFrame, outputs: &mut VecDeque<Output>| {
            if let Some(conn) = members.get(participant).and_then(|m| m.conn) {
                outputs.push_back(Output::Send { conn, frame });
            }
        };
        while let Some(change) = room.poll_layers() {
            let frame = MeetingFrame::Layers {
                space: space.clone(),
                room: room_id.clone(),
                track: change.track,
                active: change.active,
            };
            to(&change.participant, frame, outputs);
        }
        while let Some(paused) = room.poll_paused() {
            let frame = MeetingFrame::Paused {
                space: space.clone(),
                room: room_id.clone(),
                track: paused.track,
                paused: paused.paused,
                reason: PauseReason::Bandwidth,
            };
            to(&paused.participant, frame, outputs);
        }
        if let Some(speakers) = room.poll_speakers() {
            let conns: Vec<ConnId> = members.values().filter_map(|m| m.conn).collect();
            outputs.push_back(Output::Broadcast {
                conns,
                frame: MeetingFrame::Speakers {
                    space: space.clone(),
                    room: room_id.clone(),
                    speakers: (speakers.into_iter())
                        .map(|s| ActiveSpeaker {
                            participant: s.participant,
                            level: s.level,
                        })
                        .collect(),
                },
            });
        }
        while let Some(offer) = room.poll_offer() {
            // A reconnecting participant's offer is lost: resuming starts a new session.
            let frame = MeetingFrame::Offer {
                space: space.clone(),
                room: room_id.clone(),
                sdp: offer.sdp,
                media: offer.media,
            };
            to(&offer.participant, frame, outputs);
        }
    }

    /// SFU mode: participant `sid` starts a new session, sending its tracks and receiving
    /// the others' (with the subscribe grant).
    fn attach_media(&mut self, sid: &str) -> Result<(), Error> {
        let Some(room) = &mut self.sfu else {
            return Ok(());
        };
        room.add_participant(sid)?;
        // Replacing the session unpublished its tracks: they come back, to everyone.
        self.publish_media(sid)?;
        self.subscribe_all(sid)
    }

    /// SFU mode: the room carries participant `sid`'s tracks (in their layers) to every other
    /// participant that may receive them.
    fn publish_media(&mut self, sid: &str) -> Result<(), Error> {
        let Some(room) = &mut self.sfu else {
            return Ok(());
        };
        let tracks: Vec<(String, TrackKind)> = (self.members[sid].info.tracks.iter())
            .map(|t| (t.sid.clone(), t.kind))
            .collect();
        for (track, kind) in &tracks {
            room.publish(sid, track, *kind)?;
            if self.members[sid].layered.contains(track) {
                room.simulcast(track)?;
            }
        }
        for (track, _) in &tracks {
            self.subscribe_others(sid, track)?;
        }
        Ok(())
    }

    /// Queue `Output::SwitchToSfu` if this mesh meeting reached its threshold (once).
    fn ask_switch(&mut self) {
        let at = self.config.sfu_participants;
        if self.sfu.is_none() && !self.switch_asked && at > 0 && self.members.len() >= at {
            self.switch_asked = true;
            self.outputs.push_back(Output::SwitchToSfu);
        }
    }

    /// SFU mode: participant `sid` receives every track of the others, if it may.
    fn subscribe_all(&mut self, sid: &str) -> Result<(), Error> {
        let Some(room) = &mut self.sfu else {
            return Ok(());
        };
        if !self.members[sid].grants.subscribe {
            return Ok(());
        }
        for other in self.members.values().filter(|m| m.info.sid != sid) {
            for track in &other.info.tracks {
                room.subscribe(sid, &track.sid)?;
            }
        }
        Ok(())
    }

    /// SFU mode: every other participant that may receive gets `owner`'s `track`.
    fn subscribe_others(&mut self, owner: &str, track: &str) -> Result<(), Error> {
        let Some(room) = &mut self.sfu else {
            return Ok(());
        };
        let others = (self.members.values())
            .filter(|m| m.info.sid != owner && m.grants.subscribe)
            .map(|m| m.info.sid.as_str());
        for other in others {
            room.subscribe(other, track)?;
        }
        Ok(())
    }

    /// The sid of connection `conn`'s active participant.
    fn active(&self, conn: ConnId) -> Result<String, Error> {
        self.by_conn.get(&conn).cloned().ok_or(Error::NotJoined)
    }

    fn member_mut(&mut self, sid: &str) -> &mut Member {
        self.members
            .get_mut(sid)
            .expect("a participant of the meeting")
    }

    fn new_id(&mut self, kind: char) -> String {
        self.next_id += 1;
        format!("{kind}-{}-{}", self.prefix, self.next_id)
    }

    /// Connection `conn` now speaks for participant `sid`; `entered`: it was in no participant
    /// of this meeting before, so presence learns it is in the meeting.
    fn bind(&mut self, conn: ConnId, sid: &str, entered: bool) {
        self.by_conn.insert(conn, sid.to_string());
        self.touch(sid);
        if entered {
            self.outputs.push_back(Output::Presence {
                conn,
                in_meeting: true,
            });
        }
    }

    /// Participant `sid` changed.
    fn touch(&mut self, sid: &str) {
        self.version += 1;
        self.member_mut(sid).info.version += 1;
        self.changed.insert(sid.to_string());
    }

    /// Participant `sid` leaves for `reason`; returns the connection it had.
    fn depart(&mut self, sid: &str, reason: LeftReason, message: Option<String>) -> Option<ConnId> {
        let mut member = self.members.remove(sid)?;
        if let Some(conn) = member.conn {
            self.by_conn.remove(&conn);
        }
        if let Some(room) = &mut self.sfu {
            room.remove_participant(sid);
        }
        self.version += 1;
        let info = &mut member.info;
        info.version += 1;
        info.state = ParticipantState::Left;
        info.reason = Some(reason);
        info.message = message;
        info.tracks.clear();
        self.changed.remove(sid);
        self.gone.insert(sid.to_string(), member.info);
        member.conn
    }

    /// Tell connection `conn` it is out.
    fn left(&mut self, conn: ConnId, reason: LeftReason, by: Option<String>) {
        self.outputs.push_back(Output::Send {
            conn,
            frame: MeetingFrame::Left {
                space: self.space.clone(),
                room: self.room.clone(),
                reason,
                by,
            },
        });
        self.outputs.push_back(Output::Presence {
            conn,
            in_meeting: false,
        });
    }

    fn reply(&self, sid: &str) -> JoinReply {
        JoinReply {
            space: self.space.clone(),
            room: self.room.clone(),
            participant: self.members[sid].info.clone(),
            participants: (self.members.values())
                .filter(|m| m.info.sid != sid)
                .map(|m| m.info.clone())
                .collect(),
            version: self.version,
            grants: self.members[sid].grants,
            ice_servers: Vec::new(),
            mode: self.mode(),
            speakers: (self.sfu.iter())
                .flat_map(|room| room.speakers())
                .map(|s| ActiveSpeaker {
                    participant: s.participant.clone(),
                    level: s.level,
                })
                .collect(),
        }
    }

    /// Queue one `meeting.participants` frame with every change not sent yet.
    fn flush(&mut self) {
        if self.changed.is_empty() && self.gone.is_empty() {
            return;
        }
        let mut participants: BTreeMap<String, Participant> = std::mem::take(&mut self.gone);
        for sid in std::mem::take(&mut self.changed) {
            if let Some(member) = self.members.get(&sid) {
                participants.insert(sid, member.info.clone());
            }
        }
        let conns: Vec<ConnId> = self.members.values().filter_map(|m| m.conn).collect();
        if conns.is_empty() {
            return;
        }
        self.outputs.push_back(Output::Broadcast {
            conns,
            frame: MeetingFrame::Participants {
                space: self.space.clone(),
                room: self.room.clone(),
                version: self.version,
                participants: participants.into_values().collect(),
            },
        });
    }
}

fn check_chars(field: &str, value: &str, max: usize) -> Result<(), Error> {
    let n = value.chars().count();
    if n == 0 || n > max {
        return Err(Error::Invalid(format!(
            "`{field}` is 1 to {max} characters"
        )));
    }
    Ok(())
}

/// `sdp` is within the size bound and fits `grants`.
fn check_sdp_fits(sdp: &str, grants: &Grants) -> Result<(), Error> {
    if sdp.len() > MAX_SDP_BYTES {
        return Err(Error::Invalid(format!(
            "an SDP is at most {MAX_SDP_BYTES} bytes"
        )));
    }
    check_sdp(sdp, grants).map_err(|e| match e {
        SdpError::Invalid(m) => Error::Invalid(m),
        SdpError::NotGranted(m) => Error::Forbidden(m),
    })
}

fn check_candidate(c: &Candidate) -> Result<(), Error> {
    if c.candidate.len() > MAX_CANDIDATE_BYTES {
        return Err(Error::Invalid(format!(
            "a candidate is at most {MAX_CANDIDATE_BYTES} bytes"
        )));
    }
    if c.sdp_mid.as_ref().is_some_and(|m| m.len() > MAX_MID_BYTES) {
        return Err(Error::Invalid(format!(
            "`sdp_mid` is at most {MAX_MID_BYTES} bytes"
        )));
    }
    if (c.username_fragment.as_ref()).is_some_and(|u| u.len() > MAX_UFRAG_BYTES) {
        return Err(Error::Invalid(format!(
            "`username_fragment` is at most {MAX_UFRAG_BYTES} bytes"
        )));
    }
    Ok(())
}
