//! RFC 6455 framing, sans-IO: the server's decoder of client frames, frame headers for both
//! directions, masking, close payloads and the handshake's accept key. No sockets, no runtime:
//! the WebSocket shell (`transport/ws.rs`) feeds bytes in and writes what comes out, and the load
//! tool (`bench/wire.rs`) builds its client frames and reads server headers with the same code.
//!
//! The decoder takes bytes as they arrive (any split), yields one event per call, and turns every
//! protocol violation into an `Error` that names the close status to send (`Error::close_code`).
//! It never buffers more than one message: a frame whose header announces more than the limit is
//! refused before its payload arrives.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use sha1::{Digest, Sha1};

/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte masking key.
pub const MAX_HEADER: usize = 14;
/// The longest payload of a control frame (ping, pong, close).
pub const MAX_CONTROL: usize = 125;
/// The longest close reason: a control payload less its 2-byte status.
pub const MAX_CLOSE_REASON: usize = MAX_CONTROL - 2;

/// Close status: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close status: the peer broke the protocol.
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Close status: a text message or close reason that is not UTF-8.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close status: a message larger than the receiver takes.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// The GUID the handshake appends to the client's key (RFC 6455 section 1.3).
const HANDSHAKE_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    /// The opcode of the low four bits of a frame's first byte; `None` for reserved values.
    pub fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xa => OpCode::Pong,
            _ => return None,
        })
    }

    pub fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xa,
        }
    }

    /// Close, ping and pong: at most 125 bytes, never fragmented, allowed inside a message.
    pub fn is_control(self) -> bool {
        self.bits() & 0x8 != 0
    }
}

/// A frame header as read from the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// The three reserved bits, in the low bits (zero unless an extension is negotiated).
    pub rsv: u8,
    /// The raw opcode (see `OpCode::from_bits`).
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// Bytes the header takes, masking key included.
    pub header_len: usize,
}

/// Parse the header at the start of `data`; `None` until all of it has arrived.
pub fn parse_header(data: &[u8]) -> Option<FrameHeader> {
    let &[b0, b1] = data.first_chunk::<2>()?;
    let (payload_len, mut header_len) = match b1 & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(*data.get(2..)?.first_chunk()?)),
            4,
        ),
        127 => (u64::from_be_bytes(*data.get(2..)?.first_chunk()?), 10),
        n => (u64::from(n), 2),
    };
    let mask = if b1 & 0x80 != 0 {
        let key = *data.get(header_len..)?.first_chunk::<4>()?;
        header_len += 4;
        Some(key)
    } else {
        None
    };
    Some(FrameHeader {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        opcode: b0 & 0x0f,
        mask,
        payload_len,
        header_len,
    })
}

/// A frame header to write, at most `MAX_HEADER` bytes, kept inline.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    bytes: [u8; MAX_HEADER],
    len: u8,
}

impl Header {
    /// No header at all (a placeholder for arrays of headers).
    pub const EMPTY: Header = Header {
        bytes: [0; MAX_HEADER],
        len: 0,
    };

    /// The header of a frame of `payload_len` bytes; masked (a client's frame) when `mask` is
    /// given, in which case the payload must be masked with the same key (`mask`).
    pub fn new(fin: bool, opcode: OpCode, payload_len: usize, mask: Option<[u8; 4]>) -> Header {
        let mut bytes = [0; MAX_HEADER];
        bytes[0] = if fin { 0x80 } else { 0 } | opcode.bits();
        let masked = if mask.is_some() { 0x80 } else { 0 };
        let mut len = match payload_len {
            0..=125 => {
                bytes[1] = masked | payload_len as u8;
                2
            }
            126..=0xffff => {
                bytes[1] = masked | 126;
                bytes[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
                4
            }
            _ => {
                bytes[1] = masked | 127;
                bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
                10
            }
        };
        if let Some(key) = mask {
            bytes[len..len + 4].copy_from_slice(&key);
            len += 4;
        }
        Header {
            bytes,
            len: len as u8,
        }
    }

    /// The header of a whole (unfragmented) server frame: never masked.
    pub fn server(opcode: OpCode, payload_len: usize) -> Header {
        Header::new(true, opcode, payload_len, None)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// XOR `data` with the masking key `key`: masks a payload, and unmasks a masked one.
pub fn mask(data: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut words = data.chunks_exact_mut(8);
    for word in &mut words {
        let bytes: [u8; 8] = (*word).try_into().expect("chunks are 8 bytes");
        word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the key starts over at its first byte.
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i & 3];
    }
}

/// Append one client frame to `out`: header and payload masked with `key`.
pub fn encode_client(out: &mut Vec<u8>, fin: bool, opcode: OpCode, payload: &[u8], key: [u8; 4]) {
    out.extend_from_slice(Header::new(fin, opcode, payload.len(), Some(key)).as_bytes());
    let start = out.len();
    out.extend_from_slice(payload);
    mask(&mut out[start..], key);
}

/// The payload of a close frame: `status` and `reason`, cut at a character boundary to fit
/// a control frame.
pub fn close_payload(status: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&status.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(HANDSHAKE_GUID);
    BASE64.encode(sha.finalize())
}

/// A client's `Sec-WebSocket-Key` made of 16 random bytes.
pub fn client_key(nonce: [u8; 16]) -> String {
    BASE64.encode(nonce)
}

/// A protocol violation by the client. Each one ends the connection with `close_code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The client did not mask a frame (RFC 6455 section 5.1).
    #[error("the client sent an unmasked frame")]
    Unmasked,
    /// Reserved bits set, while no extension was negotiated.
    #[error("the client set reserved bits ({0:#05b}) without an extension")]
    Reserved(u8),
    #[error("the client sent a frame with the reserved opcode {0:#x}")]
    Opcode(u8),
    /// A 64-bit length with its most significant bit set.
    #[error("the client sent a frame length with its top bit set")]
    Length,
    #[error("the client sent a control frame of {0} bytes (at most 125)")]
    ControlTooLong(u64),
    #[error("the client sent a fragmented control frame")]
    FragmentedControl,
    #[error("the client sent a continuation frame outside a fragmented message")]
    UnexpectedContinuation,
    #[error("the client started a message before finishing its fragmented one")]
    UnfinishedMessage,
    /// The message (all its fragments together) exceeds the limit.
    #[error("frame_too_large: a message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: u64, limit: usize },
    #[error("the client sent a text message that is not valid UTF-8")]
    InvalidUtf8,
    #[error("the client sent a close frame with a 1-byte payload")]
    CloseLength,
    #[error("the client sent the close status {0}, which may not be sent")]
    CloseStatus(u16),
    #[error("the client sent a close reason that is not valid UTF-8")]
    CloseReason,
}

impl Error {
    /// The close status this violation calls for: 1009 for a message over the limit, 1007 for
    /// text that is not UTF-8, 1002 for the rest.
    pub fn close_code(&self) -> u16 {
        match self {
            Error::TooLarge { .. } => CLOSE_TOO_BIG,
            Error::InvalidUtf8 | Error::CloseReason => CLOSE_INVALID_DATA,
            _ => CLOSE_PROTOCOL,
        }
    }
}

/// A complete data message, its fragments joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// A text message (its payload is valid UTF-8), else binary.
    pub text: bool,
    pub payload: Bytes,
}

/// A close frame's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    pub code: u16,
    pub reason: String,
}

/// What a frame completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Message(Message),
    Ping(Bytes),
    Pong(Bytes),
    /// The client's close frame; `None` when it carried no status.
    Close(Option<CloseFrame>),
}

/// The result of one `Decoder::decode` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame of `used` bytes was consumed; `event` is what it completed (`None` for a
    /// fragment that does not end its message).
    Frame { used: usize, event: Option<Event> },
    /// The bytes hold only the start of a frame; `frame_len` is its whole length (header
    /// included) once the header is known. Call again with more bytes.
    Incomplete { frame_len: Option<usize> },
}

/// A fragmented message being assembled.
#[derive(Debug)]
struct Fragments {
    text: bool,
    data: Vec<u8>,
    /// How much of `data` is known to be valid UTF-8 (text messages): each fragment is checked
    /// as it arrives, a character cut between fragments once its end comes.
    checked: usize,
}

/// The server side's decoder of client frames. Feed it the bytes not consumed yet, from the
/// start of a frame; it consumes at most one frame per call.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    fragments: Option<Fragments>,
}

impl Decoder {
    /// A decoder refusing messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            fragments: None,
        }
    }

    /// Decode the frame at the start of `data`.
    pub fn decode(&mut self, data: &[u8]) -> Result<Decoded, Error> {
        let Some(header) = parse_header(data) else {
            return Ok(Decoded::Incomplete { frame_len: None });
        };
        if header.rsv != 0 {
            return Err(Error::Reserved(header.rsv));
        }
        let opcode = OpCode::from_bits(header.opcode).ok_or(Error::Opcode(header.opcode))?;
        let key = header.mask.ok_or(Error::Unmasked)?;
        if header.payload_len >> 63 != 0 {
            return Err(Error::Length);
        }
        if opcode.is_control() {
            if !header.fin {
                return Err(Error::FragmentedControl);
            }
            if header.payload_len > MAX_CONTROL as u64 {
                return Err(Error::ControlTooLong(header.payload_len));
            }
        } else {
            let so_far = match (opcode, &self.fragments) {
                (OpCode::Continuation, None) => return Err(Error::UnexpectedContinuation),
                (OpCode::Continuation, Some(fragments)) => fragments.data.len(),
                (_, Some(_)) => return Err(Error::UnfinishedMessage),
                (_, None) => 0,
            };
            let len = so_far as u64 + header.payload_len;
            if len > self.max_message as u64 {
                return Err(Error::TooLarge {
                    len,
                    limit: self.max_message,
                });
            }
        }
        // Bounded above: a control payload, or a message within `max_message`.
        let frame_len = header.header_len + header.payload_len as usize;
        let Some(payload) = data.get(header.header_len..frame_len) else {
            return Ok(Decoded::Incomplete {
                frame_len: Some(frame_len),
            });
        };
        let event = self.frame(header.fin, opcode, payload, key)?;
        Ok(Decoded::Frame {
            used: frame_len,
            event,
        })
    }

    /// Act on one whole frame whose header passed the checks.
    fn frame(
        &mut self,
        fin: bool,
        opcode: OpCode,
        masked: &[u8],
        key: [u8; 4],
    ) -> Result<Option<Event>, Error> {
        if opcode == OpCode::Continuation {
            let fragments = self
                .fragments
                .as_mut()
                .expect("decode checked that a message is open");
            let start = fragments.data.len();
            fragments.data.extend_from_slice(masked);
            mask(&mut fragments.data[start..], key);
            if fragments.text {
                check_utf8(&fragments.data, &mut fragments.checked, fin)?;
            }
            if !fin {
                return Ok(None);
            }
            let fragments = self.fragments.take().expect("a message is open");
            return Ok(Some(Event::Message(Message {
                text: fragments.text,
                payload: Bytes::from(fragments.data),
            })));
        }
        let mut payload = masked.to_vec();
        mask(&mut payload, key);
        Ok(Some(match opcode {
            OpCode::Text | OpCode::Binary => {
                let text = opcode == OpCode::Text;
                if !fin {
                    let mut fragments = Fragments {
                        text,
                        data: payload,
                        checked: 0,
                    };
                    if text {
                        check_utf8(&fragments.data, &mut fragments.checked, false)?;
                    }
                    self.fragments = Some(fragments);
                    return Ok(None);
                }
                if text && std::str::from_utf8(&payload).is_err() {
                    return Err(Error::InvalidUtf8);
                }
                Event::Message(Message {
                    text,
                    payload: Bytes::from(payload),
                })
            }
            OpCode::Ping => Event::Ping(Bytes::from(payload)),
            OpCode::Pong => Event::Pong(Bytes::from(payload)),
            OpCode::Close => Event::Close(close_frame(&payload)?),
            OpCode::Continuation => unreachable!("handled above"),
        }))
    }
}

/// Check the UTF-8 of `data` past `checked`, and move `checked` on. Before the message's last
/// fragment (`complete` false) a character may still be cut at the end.
fn check_utf8(data: &[u8], checked: &mut usize, complete: bool) -> Result<(), Error> {
    match std::str::from_utf8(&data[*checked..]) {
        Ok(_) => {
            *checked = data.len();
            Ok(())
        }
        Err(e) if e.error_len().is_none() && !complete => {
            *checked += e.valid_up_to();
            Ok(())
        }
        Err(_) => Err(Error::InvalidUtf8),
    }
}

/// A close frame's status and reason, checked (RFC 6455 section 7.4).
fn close_frame(payload: &[u8]) -> Result<Option<CloseFrame>, Error> {
    let (code, reason) = match payload {
        [] => return Ok(None),
        [_] => return Err(Error::CloseLength),
        [a, b, reason @ ..] => (u16::from_be_bytes([*a, *b]), reason),
    };
    // 1004–1006 and 1015 are reserved or only reported locally; 1016–2999 are not assigned.
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(Error::CloseStatus(code));
    }
    let reason = std::str::from_utf8(reason).map_err(|_| Error::CloseReason)?;
    Ok(Some(CloseFrame {
        code,
        reason: reason.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn client(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_client(&mut out, fin, opcode, payload, KEY);
        out
    }

    fn text(s: &str) -> Event {
        Event::Message(Message {
            text: true,
            payload: Bytes::copy_from_slice(s.as_bytes()),
        })
    }

    fn binary(b: &[u8]) -> Event {
        Event::Message(Message {
            text: false,
            payload: Bytes::copy_from_slice(b),
        })
    }

    /// Decode `chunks` the way the shell does: bytes not consumed are carried to the next
    /// chunk. Stops at the first error.
    fn decode_chunks(decoder: &mut Decoder, chunks: &[&[u8]]) -> (Vec<Event>, Result<(), Error>) {
        let mut events = Vec::new();
        let mut pending = Vec::new();
        for chunk in chunks {
            pending.extend_from_slice(chunk);
            loop {
                match decoder.decode(&pending) {
                    Ok(Decoded::Frame { used, event }) => {
                        pending.drain(..used);
                        events.extend(event);
                    }
                    Ok(Decoded::Incomplete { frame_len }) => {
                        if let Some(len) = frame_len {
                            assert!(len > pending.len());
                        }
                        break;
                    }
                    Err(e) => return (events, Err(e)),
                }
            }
        }
        assert!(pending.is_empty(), "a frame was left incomplete");
        (events, Ok(()))
    }

    fn decode_all(data: &[u8], max: usize) -> (Vec<Event>, Result<(), Error>) {
        decode_chunks(&mut Decoder::new(max), &[data])
    }

    /// One byte stream with every kind of frame: short, 16- and 64-bit lengths, a fragmented
    /// text message with a character cut between fragments and pings between them, a
    /// fragmented binary message, a pong and a close. Also where the 64-bit frame's payload
    /// lies.
    fn stream() -> (Vec<u8>, Vec<Event>, std::ops::Range<usize>) {
        let mut wire = client(true, OpCode::Text, b"{\"type\":\"ping\"}");
        wire.extend(client(true, OpCode::Binary, &[0x81, 0xa1]));
        wire.extend(client(true, OpCode::Binary, &[7; 300]));
        let big = wire.len() + MAX_HEADER..wire.len() + MAX_HEADER + 70_000;
        wire.extend(client(true, OpCode::Binary, &[9; 70_000]));
        let snow = "sn\u{2603}w";
        let (a, b) = snow.as_bytes().split_at(3);
        wire.extend(client(false, OpCode::Text, a));
        wire.extend(client(true, OpCode::Ping, b"p1"));
        wire.extend(client(false, OpCode::Continuation, b));
        wire.extend(client(true, OpCode::Ping, b""));
        wire.extend(client(true, OpCode::Continuation, b"!"));
        wire.extend(client(false, OpCode::Binary, &[1, 2]));
        wire.extend(client(false, OpCode::Continuation, &[]));
        wire.extend(client(true, OpCode::Continuation, &[3]));
        wire.extend(client(true, OpCode::Pong, b"q"));
        wire.extend(client(true, OpCode::Close, &close_payload(1000, "bye")));
        let events = vec![
            text("{\"type\":\"ping\"}"),
            binary(&[0x81, 0xa1]),
            binary(&[7; 300]),
            binary(&[9; 70_000]),
            Event::Ping(Bytes::from_static(b"p1")),
            Event::Ping(Bytes::new()),
            text("sn\u{2603}w!"),
            binary(&[1, 2, 3]),
            Event::Pong(Bytes::from_static(b"q")),
            Event::Close(Some(CloseFrame {
                code: 1000,
                reason: "bye".into(),
            })),
        ];
        (wire, events, big)
    }

    #[test]
    fn decodes_a_stream_split_at_every_point() {
        let (wire, expected, big) = stream();
        // Inside the large payload, every split is alike: a sample of them will do.
        let cuts = (0..=wire.len()).filter(|c| !big.contains(c) || c % 997 == 0);
        for cut in cuts {
            let (first, second) = wire.split_at(cut);
            let (events, result) = decode_chunks(&mut Decoder::new(1 << 20), &[first, second]);
            assert_eq!(result, Ok(()), "cut at {cut}");
            assert_eq!(events, expected, "cut at {cut}");
        }
    }

    #[test]
    fn decodes_a_stream_one_byte_at_a_time() {
        let (wire, expected, _) = stream();
        let chunks: Vec<&[u8]> = wire.chunks(1).collect();
        let (events, result) = decode_chunks(&mut Decoder::new(1 << 20), &chunks);
        assert_eq!((events, result), (expected, Ok(())));
    }

    #[test]
    fn reports_the_frame_length_once_the_header_is_there() {
        let wire = client(true, OpCode::Binary, &[5; 1000]);
        let mut decoder = Decoder::new(4096);
        assert_eq!(
            decoder.decode(&wire[..5]),
            Ok(Decoded::Incomplete { frame_len: None })
        );
        assert_eq!(
            decoder.decode(&wire[..8]),
            Ok(Decoded::Incomplete {
                frame_len: Some(wire.len())
            })
        );
    }

    fn violation(wire: &[u8]) -> Error {
        let (_, result) = decode_all(wire, 1024);
        result.expect_err("a violation")
    }

    #[test]
    fn each_violation_is_an_error_with_its_close_code() {
        let mut unmasked = vec![0x81, 2];
        unmasked.extend_from_slice(b"hi");
        let mut rsv = client(true, OpCode::Text, b"hi");
        rsv[0] |= 0x40;
        let mut reserved_opcode = client(true, OpCode::Binary, b"hi");
        reserved_opcode[0] = 0x83;
        let mut control_opcode = client(true, OpCode::Ping, b"hi");
        control_opcode[0] = 0x8b;
        let mut top_bit = vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1];
        top_bit.extend_from_slice(&KEY);
        let mut interleaved = client(false, OpCode::Text, b"a");
        interleaved.extend(client(true, OpCode::Text, b"b"));
        let mut split_invalid = client(false, OpCode::Text, &[0xe2, 0x98]);
        split_invalid.extend(client(true, OpCode::Continuation, &[0x41]));
        let mut early_invalid = client(false, OpCode::Text, &[b'a', 0xff]);
        early_invalid.extend(client(true, OpCode::Continuation, b"never read"));
        let cases: Vec<(Vec<u8>, Error, u16)> = vec![
            (unmasked, Error::Unmasked, 1002),
            (rsv, Error::Reserved(0b100), 1002),
            (reserved_opcode, Error::Opcode(3), 1002),
            (control_opcode, Error::Opcode(0xb), 1002),
            (top_bit, Error::Length, 1002),
            (
                client(true, OpCode::Ping, &[0; 126]),
                Error::ControlTooLong(126),
                1002,
            ),
            (
                client(false, OpCode::Ping, b""),
                Error::FragmentedControl,
                1002,
            ),
            (
                client(true, OpCode::Continuation, b"x"),
                Error::UnexpectedContinuation,
                1002,
            ),
            (interleaved, Error::UnfinishedMessage, 1002),
            (
                client(true, OpCode::Text, &[0xc3, 0x28]),
                Error::InvalidUtf8,
                1007,
            ),
            (split_invalid, Error::InvalidUtf8, 1007),
            (early_invalid, Error::InvalidUtf8, 1007),
            (client(true, OpCode::Close, &[3]), Error::CloseLength, 1002),
            (
                client(true, OpCode::Close, &close_payload(1005, "")),
                Error::CloseStatus(1005),
                1002,
            ),
            (
                client(true, OpCode::Close, &close_payload(999, "")),
                Error::CloseStatus(999),
                1002,
            ),
            (
                client(true, OpCode::Close, &[0x03, 0xe8, 0xff]),
                Error::CloseReason,
                1007,
            ),
            (
                client(true, OpCode::Binary, &[0; 1025]),
                Error::TooLarge {
                    len: 1025,
                    limit: 1024,
                },
                1009,
            ),
        ];
        for (wire, error, code) in cases {
            let got = violation(&wire);
            assert_eq!(got, error);
            assert_eq!(got.close_code(), code, "{error}");
        }
    }

    #[test]
    fn an_oversized_message_is_refused_at_its_header() {
        // Only the header of a 1 MiB frame: refused before the payload arrives.
        let wire = client(true, OpCode::Binary, &[0; 1 << 20]);
        let mut decoder = Decoder::new(64 * 1024);
        let error = decoder.decode(&wire[..MAX_HEADER]).unwrap_err();
        assert!(error.to_string().starts_with("frame_too_large"), "{error}");
        assert_eq!(error.close_code(), CLOSE_TOO_BIG);
        // Fragments count together.
        let mut wire = client(false, OpCode::Binary, &[0; 600]);
        wire.extend(client(true, OpCode::Continuation, &[0; 500]));
        assert_eq!(
            violation(&wire),
            Error::TooLarge {
                len: 1100,
                limit: 1024
            }
        );
        // Exactly at the limit is fine.
        let (events, result) = decode_all(&client(true, OpCode::Binary, &[1; 1024]), 1024);
        assert_eq!((events, result), (vec![binary(&[1; 1024])], Ok(())));
    }

    #[test]
    fn a_close_frame_may_be_empty_or_carry_an_application_status() {
        let (events, _) = decode_all(&client(true, OpCode::Close, b""), 1024);
        assert_eq!(events, vec![Event::Close(None)]);
        for code in [1000, 1001, 1011, 1013, 3000, 4413, 4999] {
            let wire = client(true, OpCode::Close, &close_payload(code, ""));
            let (events, result) = decode_all(&wire, 1024);
            assert_eq!(result, Ok(()), "{code}");
            assert_eq!(
                events,
                vec![Event::Close(Some(CloseFrame {
                    code,
                    reason: String::new()
                }))]
            );
        }
    }

    #[test]
    fn server_headers_parse_back() {
        for len in [0, 1, 125, 126, 0xffff, 0x1_0000, 20 << 20] {
            for opcode in [OpCode::Text, OpCode::Binary, OpCode::Close, OpCode::Pong] {
                let header = Header::server(opcode, len);
                let parsed = parse_header(header.as_bytes()).expect("a whole header");
                assert_eq!(
                    parsed,
                    FrameHeader {
                        fin: true,
                        rsv: 0,
                        opcode: opcode.bits(),
                        mask: None,
                        payload_len: len as u64,
                        header_len: header.as_bytes().len(),
                    }
                );
                let cut = &header.as_bytes()[..header.as_bytes().len() - 1];
                assert_eq!(parse_header(cut), None);
            }
        }
    }

    #[test]
    fn masking_twice_restores_the_payload() {
        let original: Vec<u8> = (0..=255).collect();
        for len in [0, 1, 3, 7, 8, 9, 31, 256] {
            let mut data = original[..len].to_vec();
            mask(&mut data, KEY);
            let by_byte: Vec<u8> = original[..len]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ KEY[i % 4])
                .collect();
            assert_eq!(data, by_byte);
            mask(&mut data, KEY);
            assert_eq!(data, &original[..len]);
        }
    }

    #[test]
    fn close_reasons_are_cut_at_a_character_boundary() {
        let reason = "é".repeat(100);
        let payload = close_payload(1008, &reason);
        assert_eq!(&payload[..2], &1008u16.to_be_bytes());
        assert_eq!(payload.len(), 2 + 122);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
        assert_eq!(close_payload(1000, "ok"), b"\x03\xe8ok");
    }

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(client_key(*b"the sample nonce"), "dGhlIHNhbXBsZSBub25jZQ==");
    }

    /// One message as a client may send it: its fragments and the pings between them.
    #[derive(Debug, Clone)]
    struct Sent {
        text: bool,
        fragments: Vec<Vec<u8>>,
        pings: Vec<Vec<u8>>,
    }

    fn sent() -> impl Strategy<Value = Sent> {
        let fragment = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::collection::vec(any::<u8>(), 0..70_000),
        ];
        (
            any::<bool>(),
            ".{0,300}",
            proptest::collection::vec(fragment, 1..4),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..126), 0..3),
            1usize..5,
        )
            .prop_map(|(text, s, binary, pings, pieces)| {
                let fragments = if text {
                    // Text cut anywhere, characters included.
                    let bytes = s.into_bytes();
                    let step = bytes.len().div_ceil(pieces).max(1);
                    let mut fragments: Vec<Vec<u8>> =
                        bytes.chunks(step).map(<[u8]>::to_vec).collect();
                    if fragments.is_empty() {
                        fragments.push(Vec::new());
                    }
                    fragments
                } else {
                    binary
                };
                Sent {
                    text,
                    fragments,
                    pings,
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn client_frames_round_trip(
            messages in proptest::collection::vec(sent(), 1..6),
            keys in proptest::collection::vec(any::<[u8; 4]>(), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut wire = Vec::new();
            let mut expected = Vec::new();
            let mut key = keys.iter().cycle();
            for m in &messages {
                let last = m.fragments.len() - 1;
                for (i, fragment) in m.fragments.iter().enumerate() {
                    let opcode = match (i, m.text) {
                        (0, true) => OpCode::Text,
                        (0, false) => OpCode::Binary,
                        _ => OpCode::Continuation,
                    };
                    encode_client(&mut wire, i == last, opcode, fragment, *key.next().unwrap());
                    if let Some(ping) = m.pings.get(i) {
                        encode_client(&mut wire, true, OpCode::Ping, ping, *key.next().unwrap());
                        expected.push(Event::Ping(Bytes::copy_from_slice(ping)));
                    }
                }
                // A ping after the last fragment comes after the message it follows.
                let message = Event::Message(Message {
                    text: m.text,
                    payload: Bytes::from(m.fragments.concat()),
                });
                let at = expected.len() - usize::from(m.pings.len() > last);
                expected.insert(at, message);
            }
            let cut = cut.index(wire.len() + 1);
            let (first, second) = wire.split_at(cut);
            let (events, result) = decode_chunks(&mut Decoder::new(16 << 20), &[first, second]);
            prop_assert_eq!(result, Ok(()));
            prop_assert_eq!(events, expected);
        }
    }
}
