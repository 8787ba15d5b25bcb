//! `presence.*` requests: watch who is online (a space, a room, or a list of users), say what
//! one's own presence is (status, custom status, activity), be in rooms and their meetings, and
//! type in them. Also the encoders of the `presence` push frame, whose updates are shared by
//! every subscriber of a scope and so are encoded once, not once per subscriber.

use super::{Encoding, RequestId};
use crate::channel::is_id;
use bytes::Bytes;
use presence::{Cursor, CustomStatus, RoomId, Scope, ScopeUpdate, Status};
use serde::{Deserialize, Serialize};

/// The longest room id, thread id, user id or organisation a presence request may name.
pub const MAX_NAME_LEN: usize = 200;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type")]
pub enum PresenceRequest {
    /// Watch a scope: the reply is a snapshot (or, with `resume`, the changes since then), and
    /// `presence` frames follow with the changes.
    #[serde(rename = "presence.subscribe")]
    Subscribe {
        id: RequestId,
        scope: Scope,
        /// The `epoch` and `offset` of the last update applied, to get only what was missed.
        #[serde(default)]
        resume: Option<Cursor>,
    },
    #[serde(rename = "presence.unsubscribe")]
    Unsubscribe { id: RequestId, scope: Scope },
    /// Set the user's status on all their devices (`null`: derive it from activity again).
    #[serde(rename = "presence.set_status")]
    SetStatus {
        id: RequestId,
        #[serde(default)]
        status: Option<Status>,
        /// When the status ends by itself, in Unix milliseconds.
        #[serde(default)]
        until: Option<u64>,
    },
    /// Set (or with `null` clear) the user's custom status.
    #[serde(rename = "presence.set_custom")]
    SetCustom {
        id: RequestId,
        #[serde(default)]
        custom: Option<CustomStatus>,
    },
    /// The user did something on this device (input, focus): not idle.
    #[serde(rename = "presence.activity")]
    Activity { id: RequestId },
    /// This connection is now in `room` (shows in the room's presence).
    #[serde(rename = "presence.join_room")]
    JoinRoom { id: RequestId, room: RoomId },
    #[serde(rename = "presence.leave_room")]
    LeaveRoom { id: RequestId, room: RoomId },
    /// This connection joined (`true`) or left the meeting of a room it is in.
    #[serde(rename = "presence.meeting")]
    Meeting {
        id: RequestId,
        room: RoomId,
        in_meeting: bool,
    },
    /// The user is typing in a room this connection is in (`thread` absent: the room itself).
    #[serde(rename = "presence.typing")]
    Typing {
        id: RequestId,
        room: RoomId,
        #[serde(default)]
        thread: Option<String>,
    },
}

impl PresenceRequest {
    /// Every `type` of this service.
    pub const TYPES: &[&str] = &[
        "presence.subscribe",
        "presence.unsubscribe",
        "presence.set_status",
        "presence.set_custom",
        "presence.activity",
        "presence.join_room",
        "presence.leave_room",
        "presence.meeting",
        "presence.typing",
    ];

    pub fn id(&self) -> RequestId {
        match self {
            PresenceRequest::Subscribe { id, .. }
            | PresenceRequest::Unsubscribe { id, .. }
            | PresenceRequest::SetStatus { id, .. }
            | PresenceRequest::SetCustom { id, .. }
            | PresenceRequest::Activity { id }
            | PresenceRequest::JoinRoom { id, .. }
            | PresenceRequest::LeaveRoom { id, .. }
            | PresenceRequest::Meeting { id, .. }
            | PresenceRequest::Typing { id, .. } => *id,
        }
    }

    /// Checks what the types cannot say: ids are well formed and names bounded. The message
    /// goes back to the client with `invalid_request`.
    pub fn check(&self) -> Result<(), String> {
        match self {
            PresenceRequest::Subscribe { scope, .. }
            | PresenceRequest::Unsubscribe { scope, .. } => check_scope(scope),
            PresenceRequest::JoinRoom { room, .. }
            | PresenceRequest::LeaveRoom { room, .. }
            | PresenceRequest::Meeting { room, .. } => check_room(room),
            PresenceRequest::Typing { room, thread, .. } => {
                check_room(room)?;
                match thread {
                    Some(t) if !is_name(t) => {
                        Err(format!("a thread id is 1 to {MAX_NAME_LEN} bytes"))
                    }
                    _ => Ok(()),
                }
            }
            PresenceRequest::SetStatus { .. }
            | PresenceRequest::SetCustom { .. }
            | PresenceRequest::Activity { .. } => Ok(()),
        }
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_LEN
}

fn check_room(room: &RoomId) -> Result<(), String> {
    if !is_id(&room.space) {
        return Err(format!("`{}` is not a valid space id", room.space));
    }
    if !is_name(&room.id) {
        return Err(format!("a room id is 1 to {MAX_NAME_LEN} bytes"));
    }
    Ok(())
}

fn check_scope(scope: &Scope) -> Result<(), String> {
    match scope {
        Scope::Space(space) if !is_id(space) => Err(format!("`{space}` is not a valid space id")),
        Scope::Space(_) => Ok(()),
        Scope::Room(room) => check_room(room),
        Scope::Users(users) if users.is_empty() => Err("the user list is empty".into()),
        Scope::Users(users) => match users.iter().find(|u| !is_name(&u.id) || !is_name(&u.org)) {
            Some(_) => Err(format!(
                "user ids and organisations are 1 to {MAX_NAME_LEN} bytes"
            )),
            None => Ok(()),
        },
    }
}

/// One `ScopeUpdate` encoded on its own, as it appears inside a `presence` frame.
pub fn encode_update(update: &ScopeUpdate, encoding: Encoding) -> Bytes {
    match encoding {
        Encoding::Json => serde_json::to_vec(update)
            .expect("updates serialize to JSON")
            .into(),
        Encoding::Msgpack => rmp_serde::to_vec_named(update)
            .expect("updates serialize to MessagePack")
            .into(),
    }
}

/// A `presence` frame around updates encoded by [`encode_update`] in the same encoding:
/// byte-identical to encoding `ServerFrame::Presence` with those updates, at the cost of a copy.
pub fn presence_frame(updates: &[Bytes], encoding: Encoding) -> Bytes {
    let body: usize = updates.iter().map(Bytes::len).sum();
    let mut out = Vec::with_capacity(body + updates.len() + 40);
    match encoding {
        Encoding::Json => {
            out.extend_from_slice(br#"{"type":"presence","updates":["#);
            for (i, update) in updates.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(update);
            }
            out.extend_from_slice(b"]}");
        }
        Encoding::Msgpack => {
            // A map of two: "type" => "presence", "updates" => [update, ...].
            out.push(0x82);
            out.extend_from_slice(b"\xa4type\xa8presence\xa7updates");
            match updates.len() {
                n if n < 16 => out.push(0x90 | n as u8),
                n if n <= usize::from(u16::MAX) => {
                    out.push(0xdc);
                    out.extend_from_slice(&(n as u16).to_be_bytes());
                }
                n => {
                    out.push(0xdd);
                    out.extend_from_slice(&(n as u32).to_be_bytes());
                }
            }
            for update in updates {
                out.extend_from_slice(update);
            }
        }
    }
    out.into()
}

/// A `reply` frame borrowing its result, so a large snapshot is not copied into a
/// `serde_json::Value` first.
#[derive(Serialize)]
struct ReplyRef<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: RequestId,
    result: &'a T,
}

/// Encode the `reply` to request `id` with `result`; decodes as `ServerFrame::Reply`.
pub fn encode_reply<T: Serialize>(id: RequestId, result: &T, encoding: Encoding) -> Bytes {
    let frame = ReplyRef {
        kind: "reply",
        id,
        result,
    };
    match encoding {
        Encoding::Json => serde_json::to_vec(&frame)
            .expect("replies serialize to JSON")
            .into(),
        Encoding::Msgpack => rmp_serde::to_vec_named(&frame)
            .expect("replies serialize to MessagePack")
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ClientFrame, ServerFrame, decode_client, encode_server};
    use presence::{PresenceEntry, Typing, UserId};
    use serde_json::json;

    /// Decode `v` from JSON and from MessagePack (which must agree), then check it.
    fn decode(v: serde_json::Value) -> Result<PresenceRequest, String> {
        let decode_one = |bytes: Vec<u8>| match decode_client(&bytes, 4096) {
            Ok(ClientFrame::Presence(request)) => Ok(request),
            Ok(other) => panic!("decoded as {other:?}"),
            Err(e) => Err(e.message),
        };
        let json = decode_one(serde_json::to_vec(&v).unwrap());
        let msgpack = decode_one(rmp_serde::to_vec_named(&v).unwrap());
        assert_eq!(json.is_ok(), msgpack.is_ok(), "{v}: {json:?} / {msgpack:?}");
        if let (Ok(a), Ok(b)) = (&json, &msgpack) {
            assert_eq!(a, b);
        }
        let request = json?;
        request.check()?;
        Ok(request)
    }

    #[test]
    fn scopes_decode_in_both_encodings() {
        let space =
            decode(json!({"type": "presence.subscribe", "id": 1, "scope": {"space": "eng"}}));
        assert_eq!(
            space.unwrap(),
            PresenceRequest::Subscribe {
                id: 1,
                scope: Scope::Space("eng".into()),
                resume: None
            }
        );
        let room = json!({"type": "presence.subscribe", "id": 2,
            "scope": {"room": {"space": "eng", "id": "general"}}, "resume": {"epoch": 7, "offset": 3}});
        match decode(room).unwrap() {
            PresenceRequest::Subscribe { scope, resume, .. } => {
                assert_eq!(scope, Scope::Room(RoomId::new("eng", "general")));
                assert_eq!(
                    resume,
                    Some(Cursor {
                        epoch: 7,
                        offset: 3
                    })
                );
            }
            other => panic!("{other:?}"),
        }
        let users = json!({"type": "presence.subscribe", "id": 3,
            "scope": {"users": [{"org": "acme", "id": "bob"}, {"org": "acme", "id": "al"}]}});
        match decode(users).unwrap() {
            PresenceRequest::Subscribe {
                scope: Scope::Users(list),
                ..
            } => {
                let ids: Vec<_> = list.iter().map(|u| u.id.as_str()).collect();
                assert_eq!(ids, ["al", "bob"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_requests_are_explained() {
        let bad = [
            json!({"type": "presence.subscribe", "id": 1, "scope": {"planet": "x"}}),
            json!({"type": "presence.subscribe", "id": 1, "scope": {"space": "no spaces"}}),
            json!({"type": "presence.subscribe", "id": 1, "scope": {"users": []}}),
            json!({"type": "presence.set_status", "id": 1, "status": "sleepy"}),
            json!({"type": "presence.join_room", "id": 1, "room": {"space": "eng", "id": ""}}),
            json!({"type": "presence.typing", "id": 1, "room": {"space": "eng", "id": "r"},
                   "thread": "t".repeat(201)}),
            json!({"type": "presence.meeting", "id": 1, "room": {"space": "eng", "id": "r"}}),
        ];
        for v in bad {
            assert!(decode(v.clone()).is_err(), "{v}");
        }
        let ok = [
            json!({"type": "presence.set_status", "id": 1, "status": "busy", "until": 5}),
            json!({"type": "presence.set_status", "id": 1, "status": null}),
            json!({"type": "presence.set_custom", "id": 1, "custom": {"text": "lunch", "emoji": "🍜"}}),
            json!({"type": "presence.set_custom", "id": 1}),
            json!({"type": "presence.activity", "id": 1}),
            json!({"type": "presence.typing", "id": 1, "room": {"space": "eng", "id": "r"}}),
        ];
        for v in ok {
            decode(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"));
        }
    }

    #[test]
    fn presence_frames_match_the_frame_type() {
        let update = |offset, n: usize| ScopeUpdate {
            scope: Scope::Space("eng".into()),
            epoch: 1_700_000_000_000_000,
            offset,
            snapshot: false,
            entries: (0..n)
                .map(|i| PresenceEntry {
                    user: UserId::new("acme", format!("u{i}")),
                    status: if i % 2 == 0 {
                        Status::Online
                    } else {
                        Status::Offline
                    },
                    custom: None,
                    in_meeting: false,
                    last_seen: (i % 2 == 1).then_some(1_700_000_000_000),
                })
                .collect(),
            typing: vec![Typing {
                thread: None,
                users: vec![UserId::new("acme", "u0")],
            }],
        };
        for count in [0, 1, 3, 16, 300] {
            let updates: Vec<ScopeUpdate> = (0..count).map(|i| update(i as u64, i % 4)).collect();
            let frame = ServerFrame::Presence {
                updates: updates.clone(),
            };
            for encoding in Encoding::ALL {
                let parts: Vec<Bytes> =
                    updates.iter().map(|u| encode_update(u, encoding)).collect();
                let assembled = presence_frame(&parts, encoding);
                assert_eq!(
                    assembled,
                    encode_server(&frame, encoding),
                    "{count} {encoding:?}"
                );
            }
        }
    }

    #[test]
    fn replies_decode_as_replies() {
        let result = json!({"scope": {"space": "eng"}});
        for encoding in Encoding::ALL {
            let bytes = encode_reply(9, &result, encoding);
            let frame: ServerFrame = match encoding {
                Encoding::Json => serde_json::from_slice(&bytes).unwrap(),
                Encoding::Msgpack => rmp_serde::from_slice(&bytes).unwrap(),
            };
            assert_eq!(
                frame,
                ServerFrame::Reply {
                    id: 9,
                    result: result.clone()
                }
            );
        }
    }
}
