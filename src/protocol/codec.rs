use super::{
    ChatRequest, ClientFrame, DocRequest, ErrorCode, MeetingRequest, PresenceRequest, RequestId,
    ServerFrame, SpaceRequest,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The two wire encodings. Every frame the server receives may be either (the first byte tells);
/// frames the server sends use the encoding the client chose in `hello`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Json,
    Msgpack,
}

impl Encoding {
    pub const ALL: [Encoding; 2] = [Encoding::Json, Encoding::Msgpack];

    pub fn index(self) -> usize {
        self as usize
    }

    /// Guess the encoding of a frame from its first byte: a JSON object starts with `{` (after
    /// optional whitespace), a MessagePack map with a fixmap, map16 or map32 marker.
    pub fn sniff(frame: &[u8]) -> Option<Encoding> {
        match frame.iter().find(|b| !b" \t\r\n".contains(b))? {
            b'{' => Some(Encoding::Json),
            0x80..=0x8f | 0xde | 0xdf => Some(Encoding::Msgpack),
            _ => None,
        }
    }
}

/// Why a frame could not be decoded, with the request id when the frame had a readable one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DecodeError {
    pub id: Option<RequestId>,
    pub code: ErrorCode,
    pub message: String,
}

/// Just enough of a frame to say what went wrong with it.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "type")]
    kind: Option<String>,
    id: Option<RequestId>,
}

/// The frame types of the core protocol; services list theirs beside their request types.
const CORE_TYPES: &[&str] = &[
    "hello",
    "ping",
    "pong",
    "subscribe",
    "unsubscribe",
    "publish",
];

/// Every service: its request types, and a decoder that explains what is wrong with a frame of
/// one of them (the combined decoder only says no untagged variant matched).
type Explain = fn(&[u8], Encoding) -> String;

fn explain<T: serde::de::DeserializeOwned>(frame: &[u8], encoding: Encoding) -> String {
    match encoding {
        Encoding::Json => serde_json::from_slice::<T>(frame)
            .err()
            .map(|e| e.to_string()),
        Encoding::Msgpack => rmp_serde::from_slice::<T>(frame)
            .err()
            .map(|e| e.to_string()),
    }
    .unwrap_or_default()
}

const SERVICES: &[(&[&str], Explain)] = &[
    (SpaceRequest::TYPES, explain::<SpaceRequest>),
    (PresenceRequest::TYPES, explain::<PresenceRequest>),
    (ChatRequest::TYPES, explain::<ChatRequest>),
    (DocRequest::TYPES, explain::<DocRequest>),
    (MeetingRequest::TYPES, explain::<MeetingRequest>),
];

/// Whether `kind` is a frame type this server knows.
pub fn is_known_type(kind: &str) -> bool {
    CORE_TYPES.contains(&kind) || SERVICES.iter().any(|(types, _)| types.contains(&kind))
}

/// Decode one client frame of at most `max_len` bytes.
pub fn decode_client(frame: &[u8], max_len: usize) -> Result<ClientFrame, DecodeError> {
    if frame.len() > max_len {
        return Err(DecodeError {
            id: None,
            code: ErrorCode::FrameTooLarge,
            message: format!(
                "frame of {} bytes exceeds the limit of {max_len}",
                frame.len()
            ),
        });
    }
    let malformed = |message: String| DecodeError {
        id: None,
        code: ErrorCode::MalformedFrame,
        message,
    };
    let encoding = Encoding::sniff(frame)
        .ok_or_else(|| malformed("a frame is a JSON object or a MessagePack map".into()))?;
    // A service request whose `type` leads the frame (as clients write it) is decoded as that
    // service's request at once, instead of after the core types and the other services.
    let parsed = match leading_type(frame, encoding).and_then(|kind| kind.split_once('.')) {
        Some(("space", _)) => parse(frame, encoding).map(ClientFrame::Space),
        Some(("presence", _)) => parse(frame, encoding).map(ClientFrame::Presence),
        Some(("chat", _)) => parse(frame, encoding).map(ClientFrame::Chat),
        Some(("doc", _)) => parse(frame, encoding).map(ClientFrame::Doc),
        Some(("meeting", _)) => parse(frame, encoding).map(ClientFrame::Meeting),
        _ => parse(frame, encoding),
    };
    let detail = match parsed {
        Ok(frame) => return Ok(frame),
        Err(detail) => detail,
    };
    let probe = match encoding {
        Encoding::Json => serde_json::from_slice::<Probe>(frame).map_err(|e| e.to_string()),
        Encoding::Msgpack => rmp_serde::from_slice::<Probe>(frame).map_err(|e| e.to_string()),
    };
    let probe = probe.map_err(|e| malformed(format!("not a valid {encoding:?} object: {e}")))?;
    let (code, message) = match probe.kind.as_deref() {
        None => (
            ErrorCode::MalformedFrame,
            "the frame has no string `type` field".to_string(),
        ),
        Some(kind) if !is_known_type(kind) => (
            ErrorCode::UnknownType,
            format!("unknown frame type `{kind}`"),
        ),
        Some(kind) => {
            let detail = SERVICES
                .iter()
                .find(|(types, _)| types.contains(&kind))
                .map_or(detail, |(_, explain)| explain(frame, encoding));
            (
                ErrorCode::InvalidRequest,
                format!("bad `{kind}` frame: {detail}"),
            )
        }
    };
    Err(DecodeError {
        id: probe.id,
        code,
        message,
    })
}

/// A JSON object serialized with its `type` first, then its other fields: as clients write
/// frames, so that the server finds the type without decoding the rest (`leading_type`).
pub struct TypeFirst<'a>(pub &'a serde_json::Map<String, serde_json::Value>);

impl Serialize for TypeFirst<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        if let Some(kind) = self.0.get("type") {
            map.serialize_entry("type", kind)?;
        }
        for (k, v) in self.0.iter().filter(|(k, _)| *k != "type") {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

fn parse<T: serde::de::DeserializeOwned>(frame: &[u8], encoding: Encoding) -> Result<T, String> {
    match encoding {
        Encoding::Json => serde_json::from_slice(frame).map_err(|e| e.to_string()),
        Encoding::Msgpack => rmp_serde::from_slice(frame).map_err(|e| e.to_string()),
    }
}

/// The frame's `type` if it is the first field, read from the bytes without decoding: JSON
/// that starts `{"type":"…"` (no escapes), or a MessagePack map whose first key is `type` with
/// a short string value. `None` says nothing about the frame: it is decoded in full.
fn leading_type(frame: &[u8], encoding: Encoding) -> Option<&str> {
    let kind = match encoding {
        Encoding::Json => {
            let rest = frame.strip_prefix(br#"{"type":""#)?;
            let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
            (rest[end] == b'"').then(|| &rest[..end])?
        }
        Encoding::Msgpack => {
            let rest = frame
                .get(1..)
                .filter(|_| (0x80..=0x8f).contains(&frame[0]))?;
            let rest = rest.strip_prefix(b"\xa4type")?;
            let len = usize::from(rest.first().filter(|&&b| (0xa0..=0xbf).contains(&b))? & 0x1f);
            rest.get(1..1 + len)?
        }
    };
    std::str::from_utf8(kind).ok()
}

/// Encode one server frame. JSON output is valid UTF-8, so it may be sent as a WebSocket text frame.
pub fn encode_server(frame: &ServerFrame, encoding: Encoding) -> Bytes {
    match encoding {
        Encoding::Json => serde_json::to_vec(frame)
            .expect("server frames serialize to JSON")
            .into(),
        Encoding::Msgpack => rmp_serde::to_vec_named(frame)
            .expect("server frames serialize to MessagePack")
            .into(),
    }
}

/// A `message` frame borrowing its parts, so the hub encodes a publish without copying it first.
#[derive(Serialize)]
struct MessageRef<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channel: &'a str,
    offset: u64,
    data: &'a serde_json::Value,
}

/// Encode the `message` frame for one publish; byte-identical to encoding `ServerFrame::Message`.
pub fn encode_message(
    channel: &str,
    offset: u64,
    data: &serde_json::Value,
    encoding: Encoding,
) -> Bytes {
    let frame = MessageRef {
        kind: "message",
        channel,
        offset,
        data,
    };
    match encoding {
        Encoding::Json => serde_json::to_vec(&frame)
            .expect("messages serialize to JSON")
            .into(),
        Encoding::Msgpack => rmp_serde::to_vec_named(&frame)
            .expect("messages serialize to MessagePack")
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn decode(v: serde_json::Value) -> Result<ClientFrame, DecodeError> {
        decode_client(&serde_json::to_vec(&v).unwrap(), 1024)
    }

    #[test]
    fn decodes_every_encoding_alike() {
        let v = json!({"type": "publish", "id": 7, "channel": "topic:s/a", "data": {"n": [1, 2]}});
        let json = decode(v.clone()).unwrap();
        let msgpack = decode_client(&rmp_serde::to_vec_named(&v).unwrap(), 1024).unwrap();
        assert_eq!(json, msgpack);
        assert_eq!(json.id(), Some(7));
    }

    #[test]
    fn classifies_bad_frames() {
        let err = decode_client(b"hello", 1024).unwrap_err();
        assert_eq!(err.code, ErrorCode::MalformedFrame);
        let err = decode_client(b"{not json", 1024).unwrap_err();
        assert_eq!(err.code, ErrorCode::MalformedFrame);
        let err = decode(json!({"id": 3})).unwrap_err();
        assert_eq!((err.code, err.id), (ErrorCode::MalformedFrame, Some(3)));
        let err = decode(json!({"type": "teleport", "id": 4})).unwrap_err();
        assert_eq!((err.code, err.id), (ErrorCode::UnknownType, Some(4)));
        let err = decode(json!({"type": "subscribe", "id": 5})).unwrap_err();
        assert_eq!((err.code, err.id), (ErrorCode::InvalidRequest, Some(5)));
        let err = decode(json!({"type": "space.create", "id": 9})).unwrap_err();
        assert_eq!((err.code, err.id), (ErrorCode::InvalidRequest, Some(9)));
        assert!(
            err.message.contains("missing field `name`"),
            "{}",
            err.message
        );
        // Unknown fields are ignored, so newer clients keep working with older servers.
        assert!(decode(json!({"type": "subscribe", "id": 6, "channel": "x", "extra": 1})).is_ok());
        let err = decode_client(&[b' '; 2048], 1024).unwrap_err();
        assert_eq!(err.code, ErrorCode::FrameTooLarge);
    }

    #[test]
    fn every_known_type_is_listed() {
        let frames = known_frames();
        let known = CORE_TYPES.len() + SERVICES.iter().map(|(t, _)| t.len()).sum::<usize>();
        assert_eq!(frames.len(), known);
        for f in frames {
            assert!(is_known_type(f["type"].as_str().unwrap()));
            decode(f.clone()).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }

    #[test]
    fn frames_with_a_leading_type_decode_alike() {
        for f in known_frames() {
            let first = TypeFirst(f.as_object().unwrap());
            let json = serde_json::to_vec(&first).unwrap();
            let msgpack = rmp_serde::to_vec_named(&first).unwrap();
            let kind = f["type"].as_str().unwrap();
            assert_eq!(leading_type(&json, Encoding::Json), Some(kind));
            assert_eq!(leading_type(&msgpack, Encoding::Msgpack), Some(kind));
            let want = decode(f.clone()).unwrap();
            assert_eq!(decode_client(&json, 1024).unwrap(), want, "{f}");
            assert_eq!(decode_client(&msgpack, 1024).unwrap(), want, "{f}");
        }
        // Anything else takes the full decode.
        assert_eq!(
            leading_type(br#"{"id":1,"type":"ping"}"#, Encoding::Json),
            None
        );
        assert_eq!(
            leading_type(br#"{"type":"chat\u002esend"}"#, Encoding::Json),
            None
        );
        assert_eq!(leading_type(br#"{"type":"chat.send"#, Encoding::Json), None);
        // A bad request found through its leading type gets the usual answer.
        let e = decode_client(br#"{"type":"chat.send","id":5,"space":"s"}"#, 1024).unwrap_err();
        assert_eq!((e.id, e.code), (Some(5), ErrorCode::InvalidRequest));
        assert!(
            e.message.starts_with("bad `chat.send` frame"),
            "{}",
            e.message
        );
    }

    fn known_frames() -> Vec<serde_json::Value> {
        vec![
            json!({"type": "hello", "id": 1, "version": 1}),
            json!({"type": "ping", "id": 1}),
            json!({"type": "pong"}),
            json!({"type": "subscribe", "id": 1, "channel": "c"}),
            json!({"type": "unsubscribe", "id": 1, "channel": "c"}),
            json!({"type": "publish", "id": 1, "channel": "c", "data": null}),
            json!({"type": "space.create", "id": 1, "name": "n"}),
            json!({"type": "space.list", "id": 1}),
            json!({"type": "space.members", "id": 1, "space": "s"}),
            json!({"type": "space.add_member", "id": 1, "space": "s", "user": "u", "org": "o"}),
            json!({"type": "space.remove_member", "id": 1, "space": "s", "user": "u"}),
            json!({"type": "presence.subscribe", "id": 1, "scope": {"space": "s"}}),
            json!({"type": "presence.unsubscribe", "id": 1, "scope": {"space": "s"}}),
            json!({"type": "presence.set_status", "id": 1, "status": "busy"}),
            json!({"type": "presence.set_custom", "id": 1, "custom": {"text": "hi"}}),
            json!({"type": "presence.activity", "id": 1}),
            json!({"type": "presence.join_room", "id": 1, "room": {"space": "s", "id": "r"}}),
            json!({"type": "presence.leave_room", "id": 1, "room": {"space": "s", "id": "r"}}),
            json!({"type": "presence.meeting", "id": 1, "room": {"space": "s", "id": "r"}, "in_meeting": true}),
            json!({"type": "presence.typing", "id": 1, "room": {"space": "s", "id": "r"}}),
            json!({"type": "chat.create_room", "id": 1, "space": "s", "name": "n"}),
            json!({"type": "chat.rooms", "id": 1, "space": "s"}),
            json!({"type": "chat.rename_room", "id": 1, "space": "s", "room": "r", "name": "n"}),
            json!({"type": "chat.archive_room", "id": 1, "space": "s", "room": "r"}),
            json!({"type": "chat.set_meeting_mode", "id": 1, "space": "s", "room": "r", "meeting_mode": "sfu"}),
            json!({"type": "chat.join", "id": 1, "space": "s", "room": "r"}),
            json!({"type": "chat.leave", "id": 1, "space": "s", "room": "r"}),
            json!({"type": "chat.invite", "id": 1, "space": "s", "room": "r", "user": "u"}),
            json!({"type": "chat.remove_member", "id": 1, "space": "s", "room": "r", "user": "u"}),
            json!({"type": "chat.members", "id": 1, "space": "s", "room": "r"}),
            json!({"type": "chat.send", "id": 1, "space": "s", "room": "r", "client_id": "c", "body": "b"}),
            json!({"type": "chat.edit", "id": 1, "space": "s", "room": "r", "offset": 1, "body": "b"}),
            json!({"type": "chat.delete", "id": 1, "space": "s", "room": "r", "offset": 1}),
            json!({"type": "chat.history", "id": 1, "space": "s", "room": "r"}),
            json!({"type": "chat.sync", "id": 1, "space": "s", "room": "r", "after": 0}),
            json!({"type": "chat.revisions", "id": 1, "space": "s", "room": "r", "offset": 1}),
            json!({"type": "chat.mark_read", "id": 1, "space": "s", "room": "r", "offset": 1}),
            json!({"type": "chat.unread", "id": 1, "space": "s"}),
            json!({"type": "chat.receipts", "id": 1, "space": "s", "room": "r"}),
            json!({"type": "chat.react", "id": 1, "space": "s", "room": "r", "offset": 1, "emoji": "+1"}),
            json!({"type": "chat.unreact", "id": 1, "space": "s", "room": "r", "offset": 1, "emoji": "+1"}),
            json!({"type": "chat.open_direct", "id": 1, "space": "s", "users": ["u"]}),
            json!({"type": "chat.search", "id": 1, "space": "s", "query": "q"}),
            json!({"type": "doc.open", "id": 1, "doc": "d"}),
            json!({"type": "doc.sync", "id": 1, "doc": "d", "data": "AAA="}),
            json!({"type": "doc.close", "id": 1, "doc": "d"}),
            json!({"type": "doc.create", "id": 1}),
            json!({"type": "doc.list", "id": 1, "space": "s"}),
            json!({"type": "doc.delete", "id": 1, "doc": "d"}),
            json!({"type": "meeting.join", "id": 1, "room": "r"}),
            json!({"type": "meeting.publish", "id": 1, "room": "r", "cid": "c", "kind": "audio", "source": "microphone"}),
            json!({"type": "meeting.unpublish", "id": 1, "room": "r", "track": "t"}),
            json!({"type": "meeting.signal", "id": 1, "room": "r", "to": "p", "kind": "offer", "sdp": "v=0"}),
            json!({"type": "meeting.answer", "id": 1, "room": "r", "sdp": "v=0"}),
            json!({"type": "meeting.mute", "id": 1, "room": "r", "track": "t", "muted": true}),
            json!({"type": "meeting.remove", "id": 1, "room": "r", "participant": "p"}),
            json!({"type": "meeting.data", "id": 1, "room": "r", "payload": "x"}),
            json!({"type": "meeting.layout", "id": 1, "room": "r", "track": "t", "width": 640, "height": 360}),
            json!({"type": "meeting.leave", "id": 1, "room": "r"}),
        ]
    }

    #[test]
    fn server_frames_round_trip_in_both_encodings() {
        let frame = ServerFrame::Message {
            channel: "topic:s/a".into(),
            offset: 9,
            data: json!({"text": "hi"}),
        };
        let json = encode_server(&frame, Encoding::Json);
        assert!(std::str::from_utf8(&json).is_ok());
        assert_eq!(serde_json::from_slice::<ServerFrame>(&json).unwrap(), frame);
        let data = json!({"text": "hi"});
        for encoding in Encoding::ALL {
            let borrowed = encode_message("topic:s/a", 9, &data, encoding);
            assert_eq!(borrowed, encode_server(&frame, encoding));
        }
        let mp = encode_server(&frame, Encoding::Msgpack);
        assert_eq!(Encoding::sniff(&mp), Some(Encoding::Msgpack));
        assert_eq!(rmp_serde::from_slice::<ServerFrame>(&mp).unwrap(), frame);
    }

    proptest! {
        /// Any bytes at all decode to a frame or a clean error, never a panic, and never past the limit.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_client(&bytes, 256);
        }

        #[test]
        fn publish_round_trips(channel in "[a-z:/]{1,40}", n in any::<i64>(), s in ".{0,40}") {
            let v = json!({"type": "publish", "id": 1, "channel": channel, "data": {"n": n, "s": s}});
            for bytes in [serde_json::to_vec(&v).unwrap(), rmp_serde::to_vec_named(&v).unwrap()] {
                match decode_client(&bytes, 4096).unwrap() {
                    ClientFrame::Publish { channel: c, data, .. } => {
                        prop_assert_eq!(&c, &channel);
                        prop_assert_eq!(&data["s"], &json!(s));
                    }
                    other => prop_assert!(false, "decoded {:?}", other),
                }
            }
        }
    }
}
