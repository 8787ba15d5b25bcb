//! The WebSocket transport at the byte level: a raw TCP client that writes frames by hand
//! (fragments, pings, frames that break RFC 6455) and reads the server's frames one by one.

use crate::util::TestServer;
use chorus::transport::wsframe::{self, OpCode};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any one step may take before the test fails (a hang, not a timing check).
const PATIENCE: Duration = Duration::from_secs(10);
const KEY: [u8; 4] = [0xa1, 0x07, 0x5c, 0xee];

/// A frame from the server.
#[derive(Debug)]
struct Frame {
    fin: bool,
    opcode: OpCode,
    payload: Vec<u8>,
}

struct Raw {
    stream: TcpStream,
    /// Bytes read and not yet parsed.
    buf: Vec<u8>,
    /// Payloads of pongs that arrived while waiting for a message.
    pongs: VecDeque<Vec<u8>>,
}

/// A masked client frame.
fn frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wsframe::encode_client(&mut out, fin, opcode, payload, KEY);
    out
}

impl Raw {
    /// Connect to `/ws` with alice's token, writing `after` right behind the upgrade request
    /// in the same write, and check the 101.
    async fn connect(s: &TestServer, after: &[u8]) -> Raw {
        let mut stream = TcpStream::connect(s.http).await.unwrap();
        let key = wsframe::client_key(*b"0123456789abcdef");
        let request = format!(
            "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            s.token("alice", "acme"),
            s.http
        );
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(after);
        stream.write_all(&bytes).await.unwrap();
        let mut raw = Raw {
            stream,
            buf: Vec::new(),
            pongs: VecDeque::new(),
        };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            raw.fill().await;
        };
        let head = String::from_utf8(raw.buf.drain(..end).collect()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let accept = wsframe::accept_key(key.as_bytes());
        assert!(
            head.to_ascii_lowercase().contains(&format!(
                "sec-websocket-accept: {}",
                accept.to_ascii_lowercase()
            )),
            "{head}"
        );
        raw
    }

    /// Connect and say hello (authenticated by the token in the URL).
    async fn ready(s: &TestServer) -> Raw {
        let mut raw = Raw::connect(s, &[]).await;
        raw.send(&frame(
            true,
            OpCode::Text,
            br#"{"type":"hello","id":1,"version":1}"#,
        ))
        .await;
        assert_eq!(raw.reply(1).await["user"], "alice");
        raw
    }

    async fn fill(&mut self) {
        let mut chunk = [0; 4096];
        let n = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
            .await
            .expect("the server answers")
            .unwrap();
        assert!(n > 0, "the server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn next(&mut self) -> Frame {
        loop {
            if let Some(header) = wsframe::parse_header(&self.buf) {
                assert_eq!(header.mask, None, "server frames are not masked");
                assert_eq!(header.rsv, 0);
                let end = header.header_len + header.payload_len as usize;
                if self.buf.len() >= end {
                    let frame = Frame {
                        fin: header.fin,
                        opcode: OpCode::from_bits(header.opcode).expect("a known opcode"),
                        payload: self.buf[header.header_len..end].to_vec(),
                    };
                    self.buf.drain(..end);
                    return frame;
                }
            }
            self.fill().await;
        }
    }

    /// The next text message as JSON but the server's heartbeats; pongs are kept for `pong`.
    async fn json(&mut self) -> Value {
        loop {
            let frame = self.next().await;
            match frame.opcode {
                OpCode::Text => {
                    assert!(frame.fin, "the server does not fragment");
                    let message: Value = serde_json::from_slice(&frame.payload).unwrap();
                    if message != json!({"type": "ping"}) {
                        return message;
                    }
                }
                OpCode::Pong => self.pongs.push_back(frame.payload),
                other => panic!("expected a text message, got {other:?}: {frame:?}"),
            }
        }
    }

    /// The result of the reply to request `id`.
    async fn reply(&mut self, id: u64) -> Value {
        let reply = self.json().await;
        assert_eq!(
            (&reply["type"], &reply["id"]),
            (&json!("reply"), &json!(id))
        );
        reply["result"].clone()
    }

    /// The payload of the next pong (the server's heartbeats aside, nothing else may come).
    async fn pong(&mut self) -> Vec<u8> {
        if let Some(payload) = self.pongs.pop_front() {
            return payload;
        }
        loop {
            let frame = self.next().await;
            match frame.opcode {
                OpCode::Pong => return frame.payload,
                OpCode::Text if frame.payload == br#"{"type":"ping"}"# => {}
                other => panic!("expected a pong, got {other:?}: {frame:?}"),
            }
        }
    }

    /// The `disconnect` frame's code, then the close frame's status and reason; then the
    /// server ends the stream.
    async fn goodbye(&mut self) -> (String, u16, String) {
        let disconnect = loop {
            let message = self.json().await;
            if message["type"] == "disconnect" {
                break message;
            }
        };
        let close = self.next().await;
        assert_eq!(close.opcode, OpCode::Close, "{close:?}");
        let status = u16::from_be_bytes([close.payload[0], close.payload[1]]);
        let reason = String::from_utf8(close.payload[2..].to_vec()).unwrap();
        self.assert_ends().await;
        let code = disconnect["code"].as_str().unwrap().to_string();
        (code, status, reason)
    }

    async fn assert_ends(&mut self) {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(PATIENCE, self.stream.read_to_end(&mut rest)).await;
        // The server may reset instead of finishing when the client's bytes are left unread.
        if let Ok(Ok(_)) = read {
            assert!(rest.is_empty(), "nothing after the close frame: {rest:?}");
        }
        assert!(
            read.is_ok(),
            "the server ends the stream after its close frame"
        );
    }
}

#[tokio::test]
async fn bytes_pipelined_after_the_upgrade_request_are_read() {
    let s = TestServer::start().await;
    let mut pipelined = frame(
        true,
        OpCode::Text,
        br#"{"type":"hello","id":1,"version":1}"#,
    );
    pipelined.extend(frame(true, OpCode::Text, br#"{"type":"ping","id":2}"#));
    let mut raw = Raw::connect(&s, &pipelined).await;
    assert_eq!(raw.reply(1).await["user"], "alice");
    assert_eq!(raw.reply(2).await, json!({}));
}

#[tokio::test]
async fn a_fragmented_message_with_pings_between_its_fragments() {
    let s = TestServer::start().await;
    let mut raw = Raw::ready(&s).await;
    // A request in three fragments, with a character cut between two of them.
    let request = r#"{"type":"space.create","id":2,"space":"wire","name":"snö"}"#;
    let (a, rest) = request.as_bytes().split_at(10);
    let cut = request.find('ö').unwrap() + 1 - 10;
    let (b, c) = rest.split_at(cut);
    let mut wire = frame(false, OpCode::Text, a);
    wire.extend(frame(true, OpCode::Ping, b"first"));
    wire.extend(frame(false, OpCode::Continuation, b));
    wire.extend(frame(true, OpCode::Ping, b"second"));
    wire.extend(frame(true, OpCode::Continuation, c));
    // Byte by byte: the server sees every split.
    for byte in wire {
        raw.send(&[byte]).await;
    }
    assert_eq!(raw.reply(2).await["name"], "snö");
    // The pings were answered: the second for sure, the first unless the second came before
    // its pong left (a pong answers the latest ping).
    let mut pong = raw.pong().await;
    if pong == b"first" {
        pong = raw.pong().await;
    }
    assert_eq!(pong, b"second");
    // Then a binary (MessagePack) ping request in two fragments.
    let msgpack_ping = b"\x82\xa4type\xa4ping\xa2id\x03";
    raw.send(&frame(false, OpCode::Binary, &msgpack_ping[..5]))
        .await;
    raw.send(&frame(true, OpCode::Continuation, &msgpack_ping[5..]))
        .await;
    assert_eq!(raw.reply(3).await, json!({}));
}

#[tokio::test]
async fn a_ping_gets_a_pong_with_its_payload() {
    let s = TestServer::start().await;
    let mut raw = Raw::ready(&s).await;
    raw.send(&frame(true, OpCode::Ping, b"are you there")).await;
    assert_eq!(raw.pong().await, b"are you there");
    // A flood of pings gets pongs in order, the last for the last ping; the connection lives.
    let mut flood = Vec::new();
    for i in 0..2000 {
        flood.extend(frame(true, OpCode::Ping, i.to_string().as_bytes()));
    }
    raw.send(&flood).await;
    let mut last = -1;
    while last < 1999 {
        let n: i32 = String::from_utf8(raw.pong().await)
            .unwrap()
            .parse()
            .unwrap();
        assert!(n > last, "pongs follow the pings' order");
        last = n;
    }
    raw.send(&frame(true, OpCode::Text, br#"{"type":"ping","id":2}"#))
        .await;
    assert_eq!(raw.reply(2).await, json!({}));
}

#[tokio::test]
async fn an_unmasked_frame_closes_with_1002() {
    let s = TestServer::start().await;
    let mut raw = Raw::ready(&s).await;
    let mut unmasked = vec![0x81, 22];
    unmasked.extend_from_slice(br#"{"type":"ping","id":2}"#);
    raw.send(&unmasked).await;
    let (code, status, reason) = raw.goodbye().await;
    assert_eq!((code.as_str(), status), ("malformed_frame", 1002));
    assert_eq!(reason, "malformed_frame");
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009() {
    let s = TestServer::with(|c| c.max_frame_bytes = 1024).await;
    let mut raw = Raw::ready(&s).await;
    // Fragments count together: 600 + 600 bytes pass the 1 KiB limit.
    raw.send(&frame(false, OpCode::Text, &[b' '; 600])).await;
    raw.send(&frame(true, OpCode::Continuation, &[b' '; 600]))
        .await;
    let (code, status, reason) = raw.goodbye().await;
    assert_eq!((code.as_str(), status), ("frame_too_large", 1009));
    assert_eq!(reason, "frame_too_large");
}

#[tokio::test]
async fn an_oversized_frame_is_refused_at_its_header() {
    let s = TestServer::with(|c| c.max_frame_bytes = 1024).await;
    let mut raw = Raw::ready(&s).await;
    // Only the header of a 1 GiB frame: the server answers without waiting for the payload.
    let header = wsframe::Header::new(true, OpCode::Binary, 1 << 30, Some(KEY));
    raw.send(header.as_bytes()).await;
    let (code, status, _) = raw.goodbye().await;
    assert_eq!((code.as_str(), status), ("frame_too_large", 1009));
}

#[tokio::test]
async fn invalid_utf8_text_closes_with_1007() {
    let s = TestServer::start().await;
    let mut raw = Raw::ready(&s).await;
    // Invalid in its first fragment: refused before the message ends.
    raw.send(&frame(false, OpCode::Text, b"{\"type\":\"\xc3\x28"))
        .await;
    let (code, status, _) = raw.goodbye().await;
    assert_eq!((code.as_str(), status), ("malformed_frame", 1007));
}

#[tokio::test]
async fn a_client_close_is_echoed() {
    let s = TestServer::start().await;
    let mut raw = Raw::ready(&s).await;
    raw.send(&frame(
        true,
        OpCode::Close,
        &wsframe::close_payload(4000, "done"),
    ))
    .await;
    let close = loop {
        let frame = raw.next().await;
        if frame.opcode == OpCode::Close {
            break frame;
        }
    };
    assert_eq!(close.payload, 4000u16.to_be_bytes());
    raw.assert_ends().await;
}
