//! The meeting messages as they travel: requests (`meeting.*`), server frames, and the
//! participants and tracks they carry. The server encodes them as they are, in JSON or
//! MessagePack; `docs/protocol.md` section 15 is their contract.

use serde::{Deserialize, Deserializer, Serialize};

/// A request id chosen by the client and echoed in the reply.
pub type RequestId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    Audio,
    Video,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackSource {
    Camera,
    Microphone,
    ScreenShare,
    ScreenShareAudio,
}

/// One media source a participant publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Track {
    /// The server's id of the track.
    pub sid: String,
    /// The client's id of the track: the sender's `MediaStreamTrack.id`.
    pub cid: String,
    pub kind: TrackKind,
    pub source: TrackSource,
    pub muted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantState {
    Active,
    /// Its connection closed; it may be resumed within the grace period.
    Reconnecting,
    Left,
}

/// Why the server paused forwarding a track to a participant (SFU mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// The bandwidth estimated towards the participant does not fit the track's lowest layer.
    Bandwidth,
}

/// Why a participant left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftReason {
    /// `meeting.leave`.
    Left,
    /// An admin removed it.
    Removed,
    /// Its connection closed and the grace period passed.
    Disconnected,
    /// Taken over by another connection, or replaced by a new join of its connection.
    Replaced,
    /// Its user lost access to the room.
    Access,
}

/// One participant as everyone sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    pub sid: String,
    pub user: String,
    pub org: String,
    pub name: String,
    pub state: ParticipantState,
    /// Increases by one with each change of this participant.
    pub version: u64,
    pub joined_ms: u64,
    pub tracks: Vec<Track>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<LeftReason>,
    /// The text of `meeting.leave`'s `reason`, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What a participant may do, decided by the server when it joins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// Publish tracks; send media.
    pub publish: bool,
    /// Receive media.
    pub subscribe: bool,
    /// Send data (`meeting.data`, data channels).
    pub data: bool,
    /// Mute others' tracks, remove participants.
    pub admin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    Offer,
    Answer,
    Candidate,
}

/// One m-line of an SFU offer: the track it carries. A line of the receiver's own track is
/// the one it sends that track on; any other line brings it `participant`'s track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaLine {
    pub mid: String,
    /// The track's sid.
    pub track: String,
    /// The track's publisher.
    pub participant: String,
    pub kind: TrackKind,
}

/// A participant speaking, with its level from 0 (just speaking) to 100 (the loudest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveSpeaker {
    pub participant: String,
    pub level: u8,
}

/// A trickled ICE candidate, as `RTCIceCandidateInit` has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mline_index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// An entry of `RTCConfiguration.iceServers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// How a meeting carries media.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeetingMode {
    /// Peer to peer: participants negotiate with each other through `meeting.signal`.
    #[default]
    Mesh,
    /// Through the server: each participant has one session with the server, which offers
    /// (`meeting.offer`) and forwards every track to its subscribers.
    Sfu,
}

/// The reply to `meeting.join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinReply {
    pub space: String,
    pub room: String,
    /// The caller's own participant.
    pub participant: Participant,
    /// The others, active or reconnecting.
    pub participants: Vec<Participant>,
    /// The meeting's version this snapshot reflects.
    pub version: u64,
    pub grants: Grants,
    /// Filled in by the server from its configuration.
    pub ice_servers: Vec<IceServer>,
    /// How the meeting carries media now (a `meeting.mode` frame tells a later switch).
    #[serde(default)]
    pub mode: MeetingMode,
    /// SFU mode: who speaks now, loudest first (`meeting.speakers` frames tell the changes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub speakers: Vec<ActiveSpeaker>,
}

/// Every `meeting.*` request a client may send.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type")]
pub enum MeetingRequest {
    #[serde(rename = "meeting.join")]
    Join {
        id: RequestId,
        room: String,
        #[serde(default)]
        space: Option<String>,
        /// Display name (default: the token's name, else the user id).
        #[serde(default)]
        name: Option<String>,
        /// The sid of a participant of the same user to take over.
        #[serde(default)]
        resume: Option<String>,
        /// The mode of the meeting, if this join creates it (default: the server's choice).
        #[serde(default)]
        mode: Option<MeetingMode>,
    },
    #[serde(rename = "meeting.publish")]
    Publish {
        id: RequestId,
        room: String,
        #[serde(default)]
        space: Option<String>,
        cid: String,
        kind: TrackKind,
        source: TrackSource,
        #[serde(default)]
        muted: bool,
        /// SFU mode, video: the client sends the track in the simulcast layers the server's
        /// offer asks for.
        #[serde(default)]
        simulcast: bool,
    },
    #[serde(rename = "meeting.unpublish")]
    Unpublish {
        id: RequestId,
        room: String,
        #[serde(default)]
        space: Option<String>,
        track: String,
    },
    #[serde(rename = "meeting.signal")]
    Signal {
        id: RequestId,
        room: String,
        #[serde(default)]
        space: Option<String>,
        to: String,
        kind: SignalKind,
        #[serde(default)]
        sdp: Option<String>,
        /// Absent or `null` with kind `candidate`: the end of candidates.
        #[serde(default)]
        candidate: Option<Candidate>,
    },
    /// The answer to the server's last `meeting.offer` (SFU mode).
    #[serde(rename = "meeting.answer")]
    Answer {
        id: RequestId,
        room: String,
        #[serde(default)]
        space: Option<String>,
        sdp: String,
    },
    #[serde(rename = "meeting.mute")]
    Mute {
        id: RequestId,
        room: String,
        #[serde(default)]
        space: Option<String>,
        track: String,
        muted: bool,
        /// The track's owner, when it is someone else (admins only).
        #[serde(default)]
        participant: Option<String>,
    },
    #[serde(rename = "meeting.remove")]
    Remove {
        id: RequestId,
        room: String,
        #[serde(default)]
        space: Option<String>,
        participant: String,
    },
    #[serde(rename = "meeting.data")]
    Data {
        id: RequestId,
        room: String,
        #[serde(default)]
        space: Option<String>,
        payload: String,
        #[serde(default)]
        topic: Option<String>,
        /// Default: every other active participant.
        #[serde(default)]
        to: Option<Vec<String>>,
    },
    /// SFU mode: the subscriber shows `track` in an element of `width` by `height` device
    /// pixels (0 for either: hidden), so the server picks the simulcast layer it gets.
    #[serde(rename = "meeting.layout")]
    Layout {
        id: RequestId,
        room: String,
        #[serde(default)]
        space: Option<String>,
        track: String,
        width: u32,
        height: u32,
    },
    #[serde(rename = "meeting.leave")]
    Leave {
        id: RequestId,
        room: String,
        #[serde(default)]
        space: Option<String>,
        #[serde(default)]
        reason: Option<String>,
    },
}

impl MeetingRequest {
    /// Every `type` of this service.
    pub const TYPES: &[&str] = &[
        "meeting.join",
        "meeting.publish",
        "meeting.unpublish",
        "meeting.signal",
        "meeting.answer",
        "meeting.mute",
        "meeting.remove",
        "meeting.data",
        "meeting.layout",
        "meeting.leave",
    ];

    pub fn id(&self) -> RequestId {
        self.parts().0
    }

    /// The room the request names.
    pub fn room(&self) -> &str {
        self.parts().1
    }

    /// The space the request names, if it names one.
    pub fn space(&self) -> Option<&str> {
        self.parts().2
    }

    fn parts(&self) -> (RequestId, &str, Option<&str>) {
        match self {
            MeetingRequest::Join {
                id, room, space, ..
            }
            | MeetingRequest::Publish {
                id, room, space, ..
            }
            | MeetingRequest::Unpublish {
                id, room, space, ..
            }
            | MeetingRequest::Signal {
                id, room, space, ..
            }
            | MeetingRequest::Answer {
                id, room, space, ..
            }
            | MeetingRequest::Mute {
                id, room, space, ..
            }
            | MeetingRequest::Remove {
                id, room, space, ..
            }
            | MeetingRequest::Data {
                id, room, space, ..
            }
            | MeetingRequest::Layout {
                id, room, space, ..
            }
            | MeetingRequest::Leave {
                id, room, space, ..
            } => (*id, room, space.as_deref()),
        }
    }
}

/// Every frame the server sends about a meeting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum MeetingFrame {
    /// The participants that changed since the previous frame, each as it is now.
    #[serde(rename = "meeting.participants")]
    Participants {
        space: String,
        room: String,
        version: u64,
        participants: Vec<Participant>,
    },
    /// A signal relayed from participant `from`.
    #[serde(rename = "meeting.signal")]
    Signal {
        space: String,
        room: String,
        from: String,
        kind: SignalKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp: Option<String>,
        /// Kind `candidate` only: the candidate, or `null` for the end of candidates.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "present"
        )]
        candidate: Option<Option<Candidate>>,
    },
    /// The server's offer for the receiver's session (SFU mode): answer it with
    /// `meeting.answer`.
    #[serde(rename = "meeting.offer")]
    Offer {
        space: String,
        room: String,
        sdp: String,
        /// Every media line of the session once answered, and the track each carries.
        media: Vec<MediaLine>,
    },
    #[serde(rename = "meeting.data")]
    Data {
        space: String,
        room: String,
        from: String,
        payload: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
    },
    /// An admin (`by`) muted the receiver's track.
    #[serde(rename = "meeting.muted")]
    Muted {
        space: String,
        room: String,
        track: String,
        muted: bool,
        by: String,
    },
    /// The meeting turned into SFU mode (it never turns back): close the peer connections
    /// with the other participants and answer the server's `meeting.offer`, which follows.
    #[serde(rename = "meeting.mode")]
    Mode {
        space: String,
        room: String,
        mode: MeetingMode,
    },
    /// The receiver is out of the meeting.
    /// SFU mode, to a publisher: send only these simulcast layers (rids) of `track`.
    #[serde(rename = "meeting.layers")]
    Layers {
        space: String,
        room: String,
        track: String,
        active: Vec<String>,
    },
    /// SFU mode, to a subscriber: the server stopped (`paused`) or started again
    /// forwarding `track` to it, for `reason`.
    #[serde(rename = "meeting.paused")]
    Paused {
        space: String,
        room: String,
        track: String,
        paused: bool,
        reason: PauseReason,
    },
    /// SFU mode, to everyone: who speaks now, loudest first.
    #[serde(rename = "meeting.speakers")]
    Speakers {
        space: String,
        room: String,
        speakers: Vec<ActiveSpeaker>,
    },
    #[serde(rename = "meeting.left")]
    Left {
        space: String,
        room: String,
        reason: LeftReason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
}

/// A field that is present (even as `null`) is `Some`, an absent one (by `default`) `None`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_decode_with_defaults() {
        let join: MeetingRequest =
            serde_json::from_value(json!({"type": "meeting.join", "id": 1, "room": "r"})).unwrap();
        assert_eq!(
            join,
            MeetingRequest::Join {
                id: 1,
                room: "r".into(),
                space: None,
                name: None,
                resume: None,
                mode: None
            }
        );
        let publish: MeetingRequest = serde_json::from_value(json!({
            "type": "meeting.publish", "id": 2, "room": "r", "space": "s", "cid": "c",
            "kind": "video", "source": "screen_share", "extra": 1
        }))
        .unwrap();
        assert_eq!(
            (publish.id(), publish.room(), publish.space()),
            (2, "r", Some("s"))
        );
        assert!(matches!(
            publish,
            MeetingRequest::Publish {
                source: TrackSource::ScreenShare,
                muted: false,
                ..
            }
        ));
        let bad = serde_json::from_value::<MeetingRequest>(json!({
            "type": "meeting.publish", "id": 2, "room": "r", "cid": "c", "kind": "smell",
            "source": "camera"
        }));
        assert!(bad.is_err());
        let end: MeetingRequest = serde_json::from_value(json!({
            "type": "meeting.signal", "id": 3, "room": "r", "to": "p", "kind": "candidate",
            "candidate": null
        }))
        .unwrap();
        assert!(matches!(
            end,
            MeetingRequest::Signal {
                candidate: None,
                ..
            }
        ));
    }

    #[test]
    fn signal_frames_keep_a_null_candidate() {
        let end = MeetingFrame::Signal {
            space: "s".into(),
            room: "r".into(),
            from: "p".into(),
            kind: SignalKind::Candidate,
            sdp: None,
            candidate: Some(None),
        };
        let text = serde_json::to_value(&end).unwrap();
        assert_eq!(
            text,
            json!({"type": "meeting.signal", "space": "s", "room": "r", "from": "p",
                   "kind": "candidate", "candidate": null})
        );
        assert_eq!(serde_json::from_value::<MeetingFrame>(text).unwrap(), end);
        let offer = MeetingFrame::Signal {
            space: "s".into(),
            room: "r".into(),
            from: "p".into(),
            kind: SignalKind::Offer,
            sdp: Some("v=0".into()),
            candidate: None,
        };
        let text = serde_json::to_value(&offer).unwrap();
        assert!(text.get("candidate").is_none());
        assert_eq!(serde_json::from_value::<MeetingFrame>(text).unwrap(), offer);
    }
}
