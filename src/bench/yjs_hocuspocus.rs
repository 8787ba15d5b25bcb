//! The Hocuspocus provider protocol, as `chorus bench yjs --yjs-server hocuspocus` speaks it:
//! the frames of one client on one document, encoded and decoded without any I/O.
//!
//! Hocuspocus multiplexes documents over one WebSocket, so every frame starts with the
//! document's name (a lib0 `varString`: `varUint` byte length, then UTF-8), then a `varUint`
//! message type. Types 0 (sync), 1 (awareness) and 3 (query awareness) carry exactly what
//! y-websocket puts after its own type byte, which is why the load clients reuse the yrs
//! encoding of y-websocket messages and only change the envelope. The rest is Hocuspocus's own:
//!
//! | type | name | body |
//! |---:|---|---|
//! | 0 | sync | sync step 1 / step 2 / update, as y-websocket |
//! | 1 | awareness | `varUint8Array` awareness update, as y-websocket |
//! | 2 | auth | `varUint` subtype, then: 0 token (client: `varString` token, optionally `varString` provider version; server: a request to send the token again), 1 permission denied (`varString` reason), 2 authenticated (`varString` scope: `read-write` or `readonly`) |
//! | 3 | query awareness | empty |
//! | 4 | sync reply | as sync, but answering it asks no sync step 1 back |
//! | 5 | stateless | `varString` payload for the application |
//! | 6 | broadcast stateless | between server instances only |
//! | 7 | close | server: `varString` reason, the document's connection is over; client: empty, please close |
//! | 8 | sync status | `varUint` 1 if the client's update was applied, 0 if refused (read-only) |
//!
//! Two frames carry no document name: the connection-level ping (the single byte 9), which a
//! provider answers with the single byte 10 (pong).
//!
//! A client's first frame for a document must be its token (auth, subtype 0): the server
//! queues anything else until that frame arrives, then answers "authenticated" or "permission
//! denied". The server answers a client's sync step 1 with its own step 1 and then step 2,
//! relays every update to every connection of the document (the sender included), answers
//! each update with a sync status, and closes a socket that sent nothing for its `timeout`
//! (60 s by default): `keepalive` is a frame a silent client sends to stay connected.

use yrs::encoding::read::{self, Cursor, Read};
use yrs::encoding::write::Write;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;

/// Message types (after the document name).
const SYNC: u8 = 0;
const AWARENESS: u8 = 1;
const AUTH: u8 = 2;
const QUERY_AWARENESS: u8 = 3;
const SYNC_REPLY: u8 = 4;
const STATELESS: u8 = 5;
const BROADCAST_STATELESS: u8 = 6;
const CLOSE: u8 = 7;
const SYNC_STATUS: u8 = 8;
/// The connection-level ping and pong: one byte each, no document name.
const PING: u8 = 9;
const PONG: u8 = 10;

/// Subtypes of the auth message.
const AUTH_TOKEN: u8 = 0;
const AUTH_DENIED: u8 = 1;
const AUTH_AUTHENTICATED: u8 = 2;

/// The longest document name the bench sends, in bytes. Far more than the bench's own names
/// need; a name of 123 bytes would make a frame start with `{`, which the bench's writer
/// sends as a text frame.
pub const MAX_NAME: usize = 120;

/// Why a frame from the server could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    /// The frame is cut short or holds an impossible value.
    #[error("malformed Hocuspocus frame: {0}")]
    Malformed(String),
    /// The frame is for a document this connection never opened.
    #[error("a Hocuspocus frame for another document ({0:?})")]
    OtherDocument(String),
    /// A message type this client does not know (a newer server).
    #[error("unknown Hocuspocus message type {0}")]
    UnknownType(u64),
}

impl From<read::Error> for FrameError {
    fn from(e: read::Error) -> Self {
        FrameError::Malformed(e.to_string())
    }
}

/// A frame from the server, decoded.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// A y-websocket message: sync (a sync reply reads as sync), awareness, awareness query.
    Yjs(Message),
    /// The server asks for the token again.
    TokenRequest,
    /// The token was accepted.
    Authenticated { read_only: bool },
    /// The token was refused, with the server's reason.
    Denied(String),
    /// The server ended this document's connection, with its reason.
    Close(String),
    /// Whether the server applied the client's last update (no: a read-only connection).
    SyncStatus { applied: bool },
    /// A stateless message for the application, or a connection-level pong.
    Ignored,
    /// The connection-level ping: answer with `Envelope::pong`.
    Ping,
}

/// One client's envelope: the document it opens and the token it presents.
#[derive(Debug, Clone)]
pub struct Envelope {
    name: String,
    token: String,
}

impl Envelope {
    /// The envelope of document `name`, opened with `token` (Hocuspocus servers without an
    /// authentication hook accept any token, the empty one too).
    pub fn new(name: &str, token: &str) -> anyhow::Result<Envelope> {
        if name.is_empty() || name.len() > MAX_NAME {
            anyhow::bail!(
                "Hocuspocus document name {name:?}: 1 to {MAX_NAME} bytes (it is {})",
                name.len()
            );
        }
        Ok(Envelope {
            name: name.to_string(),
            token: token.to_string(),
        })
    }

    fn start(&self, kind: u8, extra: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.name.len() + 2 + extra);
        out.write_string(&self.name);
        out.write_var(kind);
        out
    }

    /// The auth frame with the token: the first frame of a connection, and the answer to a
    /// token request.
    pub fn auth(&self) -> Vec<u8> {
        let mut out = self.start(AUTH, self.token.len() + 2);
        out.write_var(AUTH_TOKEN);
        out.write_string(&self.token);
        out
    }

    /// Wrap an encoded y-websocket message (its type byte first): sync, awareness or
    /// awareness query keep their type numbers.
    pub fn wrap(&self, message: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.name.len() + 1 + message.len());
        out.write_string(&self.name);
        out.extend_from_slice(message);
        out
    }

    /// A frame that keeps a silent connection open (the server drops a socket that sent
    /// nothing for its timeout): an awareness query, answered to this client alone.
    pub fn keepalive(&self) -> Vec<u8> {
        self.start(QUERY_AWARENESS, 0)
    }

    /// The answer to a connection-level ping.
    pub fn pong() -> &'static [u8] {
        &[PONG]
    }

    /// Decode one frame from the server.
    pub fn open(&self, frame: &[u8]) -> Result<Incoming, FrameError> {
        if frame == [PING] {
            return Ok(Incoming::Ping);
        }
        if frame == [PONG] {
            return Ok(Incoming::Ignored);
        }
        let mut cursor = Cursor::new(frame);
        let name = cursor.read_string()?;
        // A session-aware address is `name\0session`; this client never asks for one.
        if name != self.name {
            return Err(FrameError::OtherDocument(name.to_string()));
        }
        let body = cursor.next;
        let kind: u64 = cursor.read_var()?;
        let rest = &frame[cursor.next..];
        let incoming = match u8::try_from(kind).unwrap_or(u8::MAX) {
            // The same bytes as a y-websocket message.
            SYNC | AWARENESS | QUERY_AWARENESS => {
                Incoming::Yjs(Message::decode_v1(&frame[body..])?)
            }
            SYNC_REPLY => Incoming::Yjs(Message::Sync(SyncMessage::decode_v1(rest)?)),
            AUTH => match cursor.read_var::<u8>()? {
                AUTH_TOKEN => Incoming::TokenRequest,
                AUTH_DENIED => Incoming::Denied(cursor.read_string()?.to_string()),
                AUTH_AUTHENTICATED => Incoming::Authenticated {
                    read_only: cursor.read_string()? == "readonly",
                },
                other => {
                    return Err(FrameError::Malformed(format!("auth subtype {other}")));
                }
            },
            STATELESS | BROADCAST_STATELESS => Incoming::Ignored,
            CLOSE => Incoming::Close(if cursor.has_content() {
                cursor.read_string()?.to_string()
            } else {
                String::new()
            }),
            SYNC_STATUS => Incoming::SyncStatus {
                applied: cursor.read_var::<u64>()? == 1,
            },
            _ => return Err(FrameError::UnknownType(kind)),
        };
        Ok(incoming)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::StateVector;
    use yrs::updates::encoder::Encode;

    fn envelope() -> Envelope {
        Envelope::new("doc-1", "tok").unwrap()
    }

    /// The name as lib0 writes it: length 5, then the bytes.
    const NAME: &[u8] = b"\x05doc-1";

    fn framed(body: &[u8]) -> Vec<u8> {
        [NAME, body].concat()
    }

    #[test]
    fn client_frames_byte_for_byte() {
        let e = envelope();
        assert_eq!(e.auth(), framed(b"\x02\x00\x03tok"));
        assert_eq!(
            Envelope::new("d", "").unwrap().auth(),
            b"\x01d\x02\x00\x00".to_vec()
        );
        assert_eq!(e.keepalive(), framed(b"\x03"));
        let step1 = Message::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1();
        assert_eq!(step1, b"\x00\x00\x01\x00");
        assert_eq!(e.wrap(&step1), framed(b"\x00\x00\x01\x00"));
        assert_eq!(Envelope::pong(), b"\x0a");
        // Names longer than 127 bytes take a two-byte length; the bench stays below 123.
        assert!(Envelope::new(&"x".repeat(MAX_NAME), "").is_ok());
        assert!(Envelope::new(&"x".repeat(MAX_NAME + 1), "").is_err());
        assert!(Envelope::new("", "").is_err());
    }

    #[test]
    fn server_frames_decode() {
        let e = envelope();
        let update = vec![1, 2, 3];
        let sync = Message::Sync(SyncMessage::Update(update.clone()));
        assert_eq!(
            e.open(&framed(&sync.encode_v1())),
            Ok(Incoming::Yjs(sync.clone()))
        );
        // A sync reply (type 4) reads as sync.
        assert_eq!(
            e.open(&framed(b"\x04\x01\x03\x01\x02\x03")),
            Ok(Incoming::Yjs(Message::Sync(SyncMessage::SyncStep2(update))))
        );
        assert_eq!(
            e.open(&framed(b"\x03")),
            Ok(Incoming::Yjs(Message::AwarenessQuery))
        );
        assert!(matches!(
            e.open(&framed(b"\x01\x01\x00")),
            Ok(Incoming::Yjs(Message::Awareness(_)))
        ));
        assert_eq!(e.open(&framed(b"\x02\x00")), Ok(Incoming::TokenRequest));
        assert_eq!(
            e.open(&framed(b"\x02\x01\x06nope!!")),
            Ok(Incoming::Denied("nope!!".into()))
        );
        assert_eq!(
            e.open(&framed(b"\x02\x02\x0aread-write")),
            Ok(Incoming::Authenticated { read_only: false })
        );
        assert_eq!(
            e.open(&framed(b"\x02\x02\x08readonly")),
            Ok(Incoming::Authenticated { read_only: true })
        );
        assert_eq!(
            e.open(&framed(b"\x07\x03bye")),
            Ok(Incoming::Close("bye".into()))
        );
        assert_eq!(
            e.open(&framed(b"\x08\x01")),
            Ok(Incoming::SyncStatus { applied: true })
        );
        assert_eq!(
            e.open(&framed(b"\x08\x00")),
            Ok(Incoming::SyncStatus { applied: false })
        );
        assert_eq!(e.open(&framed(b"\x05\x02hi")), Ok(Incoming::Ignored));
        assert_eq!(e.open(b"\x09"), Ok(Incoming::Ping));
        assert_eq!(e.open(b"\x0a"), Ok(Incoming::Ignored));
    }

    #[test]
    fn bad_server_frames_are_errors() {
        let e = envelope();
        assert_eq!(
            e.open(b"\x05doc-2\x00\x02\x00"),
            Err(FrameError::OtherDocument("doc-2".into()))
        );
        assert_eq!(e.open(&framed(b"\x0b")), Err(FrameError::UnknownType(11)));
        assert!(matches!(
            e.open(&framed(b"\x02\x07")),
            Err(FrameError::Malformed(_))
        ));
        // Cut short anywhere: an error, never a panic.
        let whole = framed(b"\x00\x02\x03\x01\x02\x03");
        for len in 0..whole.len() {
            assert!(e.open(&whole[..len]).is_err(), "{len} bytes");
        }
    }
}
