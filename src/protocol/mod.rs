//! Session protocol v1: the frames a client and the server exchange, their two encodings, and the
//! stable error codes. Sans-IO: bytes in, typed frames out, and back. `docs/protocol.md` is the
//! contract this module implements.

pub mod chat;
mod codec;
pub mod docs;
mod error;
pub mod framing;
pub mod meeting;
pub mod presence;
mod space;

pub use chat::ChatRequest;
pub use docs::{DocData, DocRequest};
pub use meeting::{MeetingFrame, MeetingRequest};
pub use presence::PresenceRequest;
pub use space::SpaceRequest;

pub use codec::{DecodeError, Encoding, TypeFirst, decode_client, encode_message, encode_server};
pub use error::ErrorCode;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol version this server speaks. A `hello` with another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// A request id chosen by the client and echoed in the reply.
pub type RequestId = u64;

/// A position in a channel's stream. Offsets start at 1 for the first message of an epoch; an
/// epoch changes when a channel's stream restarts (and offsets with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub offset: u64,
}

/// Every frame a client may send.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// First frame of every connection: version, wanted encoding for server frames, and the
    /// access token unless the transport already carried one.
    Hello {
        id: RequestId,
        version: u32,
        #[serde(default)]
        encoding: Encoding,
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        client: Option<String>,
    },
    /// Client-initiated liveness check; answered with a reply.
    Ping {
        id: RequestId,
    },
    /// Answer to a server `ping`.
    Pong,
    Subscribe {
        id: RequestId,
        channel: String,
        /// Resume after this position (room channels replay what was missed; others ignore it).
        #[serde(default)]
        from: Option<Position>,
    },
    Unsubscribe {
        id: RequestId,
        channel: String,
    },
    Publish {
        id: RequestId,
        channel: String,
        data: Value,
    },
    /// A service request, routed by the prefix of its `type`. Each service's requests live in
    /// their own module; untagged variants are tried after the core types above.
    #[serde(untagged)]
    Space(SpaceRequest),
    #[serde(untagged)]
    Presence(PresenceRequest),
    #[serde(untagged)]
    Chat(ChatRequest),
    #[serde(untagged)]
    Doc(DocRequest),
    #[serde(untagged)]
    Meeting(MeetingRequest),
}

impl ClientFrame {
    /// The request id, for frames that are requests.
    pub fn id(&self) -> Option<RequestId> {
        match self {
            ClientFrame::Pong => None,
            ClientFrame::Hello { id, .. }
            | ClientFrame::Ping { id }
            | ClientFrame::Subscribe { id, .. }
            | ClientFrame::Unsubscribe { id, .. }
            | ClientFrame::Publish { id, .. } => Some(*id),
            ClientFrame::Space(request) => Some(request.id()),
            ClientFrame::Presence(request) => Some(request.id()),
            ClientFrame::Chat(request) => Some(request.id()),
            ClientFrame::Doc(request) => Some(request.id()),
            ClientFrame::Meeting(request) => Some(request.id()),
        }
    }
}

/// Every frame the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The successful answer to the request with the same id.
    Reply { id: RequestId, result: Value },
    /// The failed answer to the request with the same id, or (without id) a connection-level error.
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        code: ErrorCode,
        message: String,
    },
    /// A message published on a subscribed channel.
    Message {
        channel: String,
        offset: u64,
        data: Value,
    },
    /// The server ended a subscription (e.g. the user was removed from the space).
    Unsubscribed {
        channel: String,
        code: ErrorCode,
        message: String,
    },
    /// Changes of the connection's presence subscriptions: one update per scope that changed,
    /// at most one such frame per flush interval (`docs/protocol.md`, Presence).
    Presence {
        updates: Vec<::presence::ScopeUpdate>,
    },
    /// A y-websocket message of an open document (`doc.open`).
    Doc { doc: String, data: DocData },
    /// The server closed an open document (deleted, or the connection broke its rules).
    #[serde(rename = "doc.closed")]
    DocClosed {
        doc: String,
        code: ErrorCode,
        message: String,
    },
    /// The server ended a presence subscription (the user lost the membership it needs).
    #[serde(rename = "presence.unsubscribed")]
    PresenceUnsubscribed {
        scope: ::presence::Scope,
        code: ErrorCode,
        message: String,
    },
    /// Server heartbeat; the client answers `pong`.
    Ping,
    /// The server is closing the connection; `reconnect` says whether retrying makes sense.
    Disconnect {
        code: ErrorCode,
        message: String,
        reconnect: bool,
    },
    /// A meeting's frames (`meeting.participants`, `meeting.signal`, …), each with its own
    /// `type`.
    #[serde(untagged)]
    Meeting(MeetingFrame),
}

impl ServerFrame {
    pub fn error(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            id,
            code,
            message: message.into(),
        }
    }

    pub fn reply(id: RequestId, result: impl Serialize) -> Self {
        ServerFrame::Reply {
            id,
            result: serde_json::to_value(result).expect("reply results are plain data"),
        }
    }
}
