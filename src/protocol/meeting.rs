//! `meeting.*` requests and the meeting frames (`docs/protocol.md` section 15). Their types
//! live in the sans-IO `signaling` crate with the meeting core, so the server sends what the
//! core produces as it is.

pub use signaling::wire::{
    Candidate, Grants, IceServer, JoinReply, LeftReason, MeetingFrame, MeetingRequest, Participant,
    ParticipantState, SignalKind, Track, TrackKind, TrackSource,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ClientFrame, Encoding, ServerFrame, decode_client, encode_server};

    #[test]
    fn requests_decode_in_both_encodings() {
        let json = br#"{"type":"meeting.signal","id":4,"room":"r","to":"p-1","kind":"candidate","candidate":null}"#;
        let frame = decode_client(json, 1 << 16).unwrap();
        assert!(matches!(
            frame,
            ClientFrame::Meeting(MeetingRequest::Signal {
                id: 4,
                candidate: None,
                ..
            })
        ));
        assert_eq!(frame.id(), Some(4));
        let value: serde_json::Value = serde_json::from_slice(json).unwrap();
        let packed = rmp_serde::to_vec_named(&value).unwrap();
        assert_eq!(decode_client(&packed, 1 << 16).unwrap(), frame);
        // A known type with a bad field says what is wrong, with the id.
        let bad = br#"{"type":"meeting.publish","id":5,"room":"r","cid":"c","kind":"smell","source":"camera"}"#;
        let e = decode_client(bad, 1 << 16).unwrap_err();
        assert_eq!(
            (e.id, e.code),
            (Some(5), crate::protocol::ErrorCode::InvalidRequest)
        );
        assert!(e.message.contains("smell"), "{}", e.message);
    }

    #[test]
    fn frames_encode_flat_with_their_type() {
        let frame = ServerFrame::Meeting(MeetingFrame::Left {
            space: "s".into(),
            room: "r".into(),
            reason: LeftReason::Removed,
            by: Some("p-1".into()),
        });
        let text = encode_server(&frame, Encoding::Json);
        assert_eq!(
            &text[..],
            br#"{"type":"meeting.left","space":"s","room":"r","reason":"removed","by":"p-1"}"#
        );
        let back: ServerFrame = serde_json::from_slice(&text).unwrap();
        assert_eq!(back, frame);
        let packed = encode_server(&frame, Encoding::Msgpack);
        let back: ServerFrame = rmp_serde::from_slice(&packed).unwrap();
        assert_eq!(back, frame);
    }
}
