//! Client-offered sessions: WHIP ingest (RFC 9725) and WHEP playback. Unlike the room's other
//! sessions, the client makes the one offer and the server answers it; the session is never
//! renegotiated. A WHIP session sends on the lines of its offer, each bound to a track its
//! participant publishes; a WHEP session receives on its lines (one audio and one video, in
//! the common case), each carrying a track of another participant: the one it follows
//! ([`Room::follow`]), else the one it carries already, else the first in the room's order.
//! When that participant leaves, its lines switch to another, with a keyframe request.
//! A line carries only a track whose codec it negotiated (OBS, for one, sends H.264 only): an
//! offer that can receive none of the room's tracks of a kind is refused, saying which codecs
//! they are; a track published later in a codec the line lacks leaves it to other tracks.
//!
//! A client-offered session has no signalling connection telling when it ends: once it has
//! not been connected for [`CLIENT_IDLE`], [`Room::expired_clients`] names it.

use super::*;
use crate::sdp::{SdpError, check_sdp};
use crate::wire::Grants;
use str0m::change::SdpOffer;

/// How long a client-offered session may stay unconnected (never connected yet, or ICE
/// lost) before it counts as gone.
pub const CLIENT_IDLE: Duration = Duration::from_secs(30);

/// What a client-offered session does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRole {
    /// WHIP: the client sends media.
    Publish,
    /// WHEP: the client receives media.
    Play,
}

impl ClientRole {
    /// The grants its offer is checked against.
    fn grants(self) -> Grants {
        Grants {
            publish: self == ClientRole::Publish,
            subscribe: self == ClientRole::Play,
            data: false,
            admin: false,
        }
    }
}

/// The room's state of a client-offered session.
pub(super) struct ClientSession {
    role: ClientRole,
    /// The media lines of its offer, in order.
    lines: Vec<(Mid, TrackKind)>,
    /// WHEP: the participant to receive from, when it publishes.
    follow: Option<String>,
    /// WHEP: the participant the lines receive from now.
    source: Option<String>,
    /// The last time it was seen connected, or when it was made.
    seen: Instant,
}

/// The server's answer to a client's offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAnswer {
    pub sdp: String,
    /// The media lines of the session, in the offer's order: for WHIP, what the client sends
    /// (each to be published as a track and bound with [`Room::bind_client_track`]).
    pub lines: Vec<(String, TrackKind)>,
}

/// Check a client's offer for `role` before anything is made for it: size, syntax, and
/// directions (a WHIP offer only sends, a WHEP offer only receives; no data channel).
pub fn check_client_offer(sdp: &str, role: ClientRole) -> Result<(), RoomError> {
    if sdp.len() > crate::MAX_SDP_BYTES {
        return Err(RoomError::Invalid(format!(
            "an SDP offer is at most {} bytes",
            crate::MAX_SDP_BYTES
        )));
    }
    SdpOffer::from_sdp_string(sdp)
        .map_err(|e| RoomError::Invalid(format!("the offer does not parse: {e}")))?;
    check_sdp(sdp, &role.grants()).map_err(|e| match e {
        SdpError::Invalid(m) | SdpError::NotGranted(m) => RoomError::Invalid(m),
    })?;
    let lines = media_mids(sdp).len();
    if lines == 0 {
        return Err(RoomError::Invalid(
            "the offer has no audio or video line (with an a=mid)".into(),
        ));
    }
    if lines > crate::MAX_TRACKS {
        return Err(RoomError::Invalid(format!(
            "an offer has at most {} media lines",
            crate::MAX_TRACKS
        )));
    }
    Ok(())
}

/// The mids of `sdp`'s audio and video sections, in order.
fn media_mids(sdp: &str) -> Vec<&str> {
    let mut mids = Vec::new();
    let mut media = false;
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            media = m.starts_with("audio ") || m.starts_with("video ");
        } else if let Some(mid) = line.strip_prefix("a=mid:")
            && media
        {
            mids.push(mid.trim());
        }
    }
    mids
}

/// What a trickle-ICE SDP fragment (a WHIP/WHEP `PATCH`) asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fragment {
    /// Candidates of the current ICE session. The server is ICE-lite: it learns the client's
    /// addresses from its connectivity checks, so they need nothing.
    Trickle,
    /// New ICE credentials: an ICE restart.
    Restart,
}

/// Read a trickle-ICE SDP fragment (RFC 8840) of a session whose client's ICE username
/// fragment is `remote_ufrag`.
pub fn read_fragment(fragment: &str, remote_ufrag: &str) -> Result<Fragment, RoomError> {
    if fragment.len() > crate::MAX_SDP_BYTES {
        return Err(RoomError::Invalid(format!(
            "an SDP fragment is at most {} bytes",
            crate::MAX_SDP_BYTES
        )));
    }
    let mut restart = false;
    for line in fragment.lines() {
        if let Some(ufrag) = line.strip_prefix("a=ice-ufrag:") {
            restart |= ufrag.trim() != remote_ufrag;
        } else if !(line.is_empty()
            || line.starts_with("a=")
            || line.starts_with("m=")
            || line.starts_with("c="))
        {
            return Err(RoomError::Invalid(format!(
                "not a trickle-ICE SDP fragment line: `{}`",
                line.chars().take(80).collect::<String>()
            )));
        }
    }
    Ok(if restart {
        Fragment::Restart
    } else {
        Fragment::Trickle
    })
}

/// The client's ICE username fragment in `sdp` (its first `a=ice-ufrag`).
pub fn remote_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .map(str::trim)
}

impl Room {
    /// Answer `participant`'s own offer, made by the client: its session, new and not yet
    /// offered anything (right after [`Room::add_participant`]), becomes client-offered for
    /// good. WHEP (`Play`) lines receive from `follow` when it publishes.
    pub fn accept_client_offer(
        &mut self,
        participant: &str,
        sdp: &str,
        role: ClientRole,
        follow: Option<String>,
    ) -> Result<ClientAnswer, RoomError> {
        check_client_offer(sdp, role)?;
        let now = self.now;
        let session = (self.sessions.get_mut(participant))
            .ok_or_else(|| RoomError::NotFound(format!("no session for {participant}")))?;
        if session.started || session.client.is_some() {
            return Err(RoomError::Invalid(format!(
                "the session of {participant} was negotiated already"
            )));
        }
        let offer = SdpOffer::from_sdp_string(sdp)
            .map_err(|e| RoomError::Invalid(format!("the offer does not parse: {e}")))?;
        let answer = (session.rtc.sdp_api())
            .accept_offer(offer)
            .map_err(|e| RoomError::Invalid(format!("the offer is refused: {e}")))?;
        let want = match role {
            ClientRole::Publish => Direction::RecvOnly,
            ClientRole::Play => Direction::SendOnly,
        };
        let mut lines = Vec::new();
        for mid in media_mids(sdp) {
            let mid = Mid::from(mid);
            let Some(media) = session.rtc.media(mid) else {
                continue;
            };
            let kind = match media.kind() {
                MediaKind::Audio => TrackKind::Audio,
                MediaKind::Video => TrackKind::Video,
            };
            if media.direction() == want {
                lines.push((mid, kind));
            }
        }
        if role == ClientRole::Play {
            for (mid, kind) in &lines {
                if let Some(codecs) = self.unplayable(participant, *mid, *kind) {
                    let kind = format!("{kind:?}").to_lowercase();
                    return Err(RoomError::Invalid(format!(
                        "the room's {kind} is {codecs}, which the offer does not receive: \
                         offer {codecs} on its {kind} line"
                    )));
                }
            }
        }
        let session = self.sessions.get_mut(participant).expect("checked above");
        session.client = Some(ClientSession {
            role,
            lines: lines.clone(),
            follow,
            source: None,
            seen: now,
        });
        self.select_sources(participant);
        self.drive(participant);
        Ok(ClientAnswer {
            sdp: answer.to_sdp_string(),
            lines: lines.into_iter().map(|(m, k)| (m.to_string(), k)).collect(),
        })
    }

    /// WHIP: what the client sends on line `mid` is track `track`, which `participant`
    /// publishes (with [`Room::publish`]).
    pub fn bind_client_track(
        &mut self,
        participant: &str,
        mid: &str,
        track: &str,
    ) -> Result<(), RoomError> {
        let mid = Mid::from(mid);
        let kind = (self.tracks.get(track))
            .filter(|t| t.owner == participant)
            .map(|t| t.kind)
            .ok_or_else(|| RoomError::NotFound(format!("{participant} publishes no {track}")))?;
        let session = (self.sessions.get_mut(participant))
            .ok_or_else(|| RoomError::NotFound(format!("no session for {participant}")))?;
        let fits = (session.client.as_ref())
            .filter(|c| c.role == ClientRole::Publish)
            .is_some_and(|c| c.lines.contains(&(mid, kind)));
        if !fits {
            return Err(RoomError::Invalid(format!(
                "{participant} sends no {kind:?} line {mid}"
            )));
        }
        session.lines.insert(
            mid,
            Line {
                track: track.to_string(),
                owner: participant.to_string(),
                kind,
                inbound: true,
                gone: false,
            },
        );
        // Subscribers may have asked for a keyframe before the line was known.
        self.request_keyframe(track);
        Ok(())
    }

    /// WHEP: `participant`'s lines receive from `publisher` from now on (when it publishes
    /// a track of the line's kind), or, with `None`, from whom they receive now. A line that
    /// changes source asks the new one for a keyframe.
    pub fn follow(&mut self, participant: &str, publisher: Option<&str>) {
        if let Some(client) = (self.sessions.get_mut(participant)).and_then(|s| s.client.as_mut()) {
            client.follow = publisher.map(str::to_string);
            self.select_sources(participant);
        }
    }

    /// WHEP: the participant `participant`'s lines receive from now.
    pub fn playing_from(&self, participant: &str) -> Option<&str> {
        let session = self.sessions.get(participant)?;
        session.client.as_ref()?.source.as_deref()
    }

    /// Client-offered sessions not connected for [`CLIENT_IDLE`]: their participants are
    /// gone, and the shell makes them leave.
    pub fn expired_clients(&mut self) -> Vec<String> {
        let now = self.now;
        let mut expired = Vec::new();
        for (sid, session) in self.sessions.iter_mut() {
            let connected = session.rtc.is_connected();
            let Some(client) = session.client.as_mut() else {
                continue;
            };
            if connected {
                client.seen = now;
            } else if now >= client.seen + CLIENT_IDLE {
                expired.push(sid.clone());
            }
        }
        expired
    }

    /// A client-offered session changed (it is never offered anything): WHEP lines pick
    /// their sources again among the tracks the session is subscribed to.
    pub(super) fn select_sources(&mut self, participant: &str) {
        let Some(session) = self.sessions.get(participant) else {
            return;
        };
        let Some(client) = session
            .client
            .as_ref()
            .filter(|c| c.role == ClientRole::Play)
        else {
            return;
        };
        let candidates: Vec<(&String, &Published)> = (self.tracks.iter())
            .filter(|(sid, t)| session.subscriptions.contains(*sid) && t.owner != participant)
            .collect();
        let publishes = |p: &&String| candidates.iter().any(|(_, t)| t.owner == **p);
        let source = (client.follow.as_ref().filter(publishes))
            .or(client.source.as_ref().filter(publishes))
            .or(candidates.first().map(|(_, t)| &t.owner))
            .cloned();
        let mut changes: Vec<(Mid, Option<String>, Option<String>)> = Vec::new();
        for (mid, kind) in &client.lines {
            let codecs = session.codecs(*mid);
            let playable: Vec<&(&String, &Published)> = (candidates.iter())
                .filter(|(sid, t)| {
                    t.kind == *kind && self.sent(sid).is_none_or(|sent| carries(&codecs, &sent))
                })
                .collect();
            let current = (session.lines.get(mid))
                .filter(|l| !l.gone && playable.iter().any(|(sid, _)| **sid == l.track))
                .map(|l| l.track.clone());
            let from_source = (playable.iter())
                .find(|(_, t)| Some(&t.owner) == source.as_ref())
                .map(|(sid, _)| (*sid).clone());
            let any = playable.first().map(|(sid, _)| (*sid).clone());
            let wanted = from_source.or_else(|| current.clone()).or(any);
            let old = session.lines.get(mid).map(|l| l.track.clone());
            if wanted != old {
                changes.push((*mid, old, wanted));
            }
        }
        let session = self.sessions.get_mut(participant).expect("checked above");
        if let Some(client) = session.client.as_mut() {
            client.source = source;
        }
        for (mid, old, new) in changes {
            let session = self.sessions.get_mut(participant).expect("checked above");
            session.lines.remove(&mid);
            if let Some(t) = old.and_then(|old| self.tracks.get_mut(&old))
                && t.subscribers.get(participant) == Some(&mid)
            {
                t.subscribers.remove(participant);
            }
            let Some(track) = new else { continue };
            let Some(t) = self.tracks.get_mut(&track) else {
                continue;
            };
            t.subscribers.insert(participant.to_string(), mid);
            let line = Line {
                track: track.clone(),
                owner: t.owner.clone(),
                kind: t.kind,
                inbound: false,
                gone: false,
            };
            let session = self.sessions.get_mut(participant).expect("checked above");
            session.lines.insert(mid, line);
            self.request_keyframe(&track);
        }
    }
}

impl Room {
    /// The codecs `track`'s publisher negotiated on the line it sends it on; `None` while that
    /// line is not negotiated.
    fn sent(&self, track: &str) -> Option<CodecConfig> {
        let owner = &self.tracks.get(track)?.owner;
        let session = self.sessions.get(owner)?;
        Some(session.codecs(session.inbound_mid(track)?))
    }

    /// The codecs of the room's `kind` tracks that `participant` receives, when there are
    /// some and line `mid` of its session can carry none of them.
    fn unplayable(&self, participant: &str, mid: Mid, kind: TrackKind) -> Option<String> {
        let session = self.sessions.get(participant)?;
        let codecs = session.codecs(mid);
        let mut sent = BTreeSet::new();
        for (sid, t) in &self.tracks {
            if t.kind != kind || t.owner == participant || !session.subscriptions.contains(sid) {
                continue;
            }
            let Some(params) = self.sent(sid) else {
                // Not known yet: it may fit.
                return None;
            };
            if carries(&codecs, &params) {
                return None;
            }
            sent.extend(params.params().iter().map(|p| p.spec().codec.to_string()));
        }
        let names: Vec<String> = sent.into_iter().collect();
        (!names.is_empty()).then(|| names.join(" or "))
    }
}

impl Session {
    /// The codecs negotiated on line `mid` (none before it is).
    fn codecs(&self, mid: Mid) -> CodecConfig {
        let remote = self
            .rtc
            .media(mid)
            .map(|m| m.remote_pts())
            .unwrap_or_default();
        let params = (self.rtc.codec_config().params().iter())
            .filter(|p| remote.contains(&p.pt()))
            .copied()
            .collect();
        CodecConfig::new_from_payload_params(params)
    }
}

/// Whether a line that negotiated `line` can carry what one that negotiated `sent` sends: a
/// codec of one matches one of the other as the forwarding matches them (for H.264, profile
/// and packetization mode).
fn carries(line: &CodecConfig, sent: &CodecConfig) -> bool {
    (sent.params().iter()).any(|p| line.match_params(*p).is_some())
}

#[cfg(test)]
#[path = "whip_tests.rs"]
mod tests;
