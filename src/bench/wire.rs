//! Lean client connections for load tests: WebSocket and QUIC, split into a `Reader` and a
//! `Writer`, with none of `client::Client`'s per-frame decoding.
//!
//! WebSocket: the upgrade is a hand-written HTTP/1.1 request, and frames are split here with
//! the server's own codec (`transport::wsframe`: headers, masking, the handshake's keys): the
//! server's frames are unmasked, unfragmented text or binary messages, so a reader only needs
//! the 2-to-10-byte header. Reads go into one large buffer per worker thread (only a partial
//! frame's tail stays with the connection), so thousands of connections cost little memory
//! while each read still drains the socket in one syscall. Client frames are masked, as
//! RFC 6455 requires.
//!
//! QUIC: the control stream read with `read_chunk` and split with `protocol::framing`.
//!
//! A protocol that streams over WebSocket instead of mapping one message to one frame (NATS)
//! switches both halves to stream mode (`nats_stream`): the reader re-splits frame payloads
//! into protocol units, the writer sends everything pushed before a flush as one frame.

use crate::protocol::framing::FrameDecoder;
use crate::transport::wsframe::{self, OpCode};
use anyhow::{Context, bail};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpSocket;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The largest frame accepted from a server (as `client::Client`).
pub const MAX_FRAME: usize = 16 << 20;
/// Size of each worker thread's read buffer.
const READ_BUF: usize = 256 * 1024;
/// A partial frame longer than this is assembled in the connection's own buffer instead.
const BIG_TAIL: usize = READ_BUF / 2;

thread_local! {
    static READ: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUF]);
}

/// Where a WebSocket connection goes.
#[derive(Debug, Clone)]
pub struct WsAddr {
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    /// Path and query of the upgrade request.
    pub path: String,
}

/// Incoming frames of one connection.
pub struct Reader {
    inner: ReaderInner,
    /// Why the connection ended, once it did (a WebSocket close frame's reason, a QUIC close).
    pub closed: Option<String>,
    /// Stream mode: frames are pieces of a NATS byte stream, handed over as protocol units.
    nats: Option<Box<super::nats::Splitter>>,
    /// Frames read already and not yet handed over (what a connection had read past a
    /// request's reply): `read` hands them over first.
    pub(super) pending: VecDeque<Vec<u8>>,
}

enum ReaderInner {
    Ws(WsReader),
    Quic {
        recv: quinn::RecvStream,
        decoder: FrameDecoder,
    },
}

struct WsReader {
    read: OwnedReadHalf,
    /// Bytes of an incomplete frame, carried to the next read.
    tail: Vec<u8>,
    /// A fragmented message being assembled (servers do not fragment, but they may).
    frag: Vec<u8>,
    /// Payloads of WebSocket pings to answer.
    pings: Vec<Vec<u8>>,
    /// The tail may hold complete frames (bytes that came with the upgrade response).
    check_tail: bool,
}

/// Outgoing frames of one connection: `push` appends to a buffer, `flush` writes it at once.
pub struct Writer {
    inner: WriterInner,
    buf: Vec<u8>,
    mask: u32,
    /// Stream mode: bytes pushed since the last flush, sent as binary frames by `flush`.
    stream: Option<Vec<u8>>,
    /// What `answer_ping` queues.
    ping_answer: &'static [u8],
}

/// The largest frame a writer in stream mode sends (the stream is split at any byte).
const STREAM_FRAME: usize = 64 * 1024;

enum WriterInner {
    Ws(OwnedWriteHalf),
    Quic {
        send: quinn::SendStream,
        connection: quinn::Connection,
    },
}

/// Open a WebSocket connection (TCP, from `source` if given, then the upgrade).
pub async fn connect_ws(to: &WsAddr, source: Option<IpAddr>) -> anyhow::Result<(Reader, Writer)> {
    let socket = match to.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        // Ports in TIME_WAIT from an earlier run may be reused.
        socket.set_reuseaddr(true)?;
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("cannot bind a socket to {ip}"))?;
    }
    let mut stream = socket
        .connect(to.addr)
        .await
        .with_context(|| format!("cannot connect to {}", to.addr))?;
    stream.set_nodelay(true)?;
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).context("no random source for the WebSocket key")?;
    let key = wsframe::client_key(nonce);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        to.path, to.host
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::with_capacity(512);
    let end = loop {
        if let Some(i) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if response.len() > 16 * 1024 {
            bail!("the WebSocket upgrade response is too long");
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection during the WebSocket upgrade");
        }
        response.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&response[..end]);
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("101") {
        let body = String::from_utf8_lossy(&response[end..]);
        bail!("WebSocket upgrade refused: {status} {}", body.trim());
    }
    let accept = wsframe::accept_key(key.as_bytes());
    let accepted = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == accept
        })
    });
    if !accepted {
        bail!("the WebSocket upgrade response has no valid Sec-WebSocket-Accept");
    }
    let (read, write) = stream.into_split();
    let reader = Reader {
        inner: ReaderInner::Ws(WsReader {
            read,
            tail: response[end..].to_vec(),
            frag: Vec::new(),
            pings: Vec::new(),
            check_tail: end < response.len(),
        }),
        closed: None,
        nats: None,
        pending: VecDeque::new(),
    };
    let mut seed = [0u8; 4];
    let _ = getrandom::fill(&mut seed);
    let writer = Writer {
        inner: WriterInner::Ws(write),
        buf: Vec::new(),
        mask: u32::from_ne_bytes(seed) | 1,
        stream: None,
        ping_answer: super::target::PONG,
    };
    Ok((reader, writer))
}

/// Open a QUIC connection and its control stream on `endpoint`.
pub async fn connect_quic(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
) -> anyhow::Result<(Reader, Writer)> {
    let (connection, send, recv) =
        crate::transport::quic::connect(endpoint, addr, "localhost").await?;
    let reader = Reader {
        inner: ReaderInner::Quic {
            recv,
            decoder: FrameDecoder::new(MAX_FRAME),
        },
        closed: None,
        nats: None,
        pending: VecDeque::new(),
    };
    let writer = Writer {
        inner: WriterInner::Quic { send, connection },
        buf: Vec::new(),
        mask: 0,
        stream: None,
        ping_answer: super::target::PONG,
    };
    Ok((reader, writer))
}

impl Reader {
    /// Switch to NATS stream mode (WebSocket only): `read` hands over NATS protocol units.
    pub fn nats_stream(&mut self) {
        self.nats = Some(Box::default());
    }

    /// Wait for bytes, then call `on_frame` with every complete frame they finish and the time
    /// they were read. Returns `Ok(false)` once the connection ended (see `closed`).
    pub async fn read<F: FnMut(&[u8], Instant)>(
        &mut self,
        on_frame: &mut F,
    ) -> anyhow::Result<bool> {
        if !self.pending.is_empty() {
            let now = Instant::now();
            for frame in self.pending.drain(..) {
                on_frame(&frame, now);
            }
            return Ok(true);
        }
        match &mut self.inner {
            ReaderInner::Ws(ws) => {
                let open = match &mut self.nats {
                    None => read_ws(ws, on_frame).await,
                    Some(splitter) => {
                        let mut failed = None;
                        let mut units = |payload: &[u8], now: Instant| {
                            if failed.is_none()
                                && let Err(e) = splitter.feed(payload, &mut |u| on_frame(u, now))
                            {
                                failed = Some(e);
                            }
                        };
                        let open = read_ws(ws, &mut units).await;
                        if let Some(e) = failed {
                            return Err(e);
                        }
                        open
                    }
                };
                match open {
                    Ok(Ok(())) => Ok(true),
                    Ok(Err(reason)) => {
                        self.closed = Some(reason);
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            }
            ReaderInner::Quic { recv, decoder } => {
                let chunk = recv.read_chunk(usize::MAX, true).await;
                let now = Instant::now();
                match chunk {
                    Ok(Some(chunk)) => {
                        decoder.push(&chunk.bytes);
                        while let Some(frame) = decoder.next_frame()? {
                            on_frame(&frame, now);
                        }
                        Ok(true)
                    }
                    Ok(None) => {
                        self.closed = Some("the server finished the control stream".into());
                        Ok(false)
                    }
                    Err(quinn::ReadError::ConnectionLost(e)) => {
                        self.closed = Some(e.to_string());
                        Ok(false)
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// WebSocket pings received, to answer with `Writer::pong` (servers rarely send them).
    pub fn take_pings(&mut self) -> Vec<Vec<u8>> {
        match &mut self.inner {
            ReaderInner::Ws(ws) => std::mem::take(&mut ws.pings),
            ReaderInner::Quic { .. } => Vec::new(),
        }
    }
}

/// One read on a WebSocket: `Ok(Ok(()))` after handing over frames, `Ok(Err(reason))` once the
/// connection ended.
async fn read_ws<F: FnMut(&[u8], Instant)>(
    ws: &mut WsReader,
    on_frame: &mut F,
) -> anyhow::Result<Result<(), String>> {
    // Frames that came with the upgrade response come first.
    if std::mem::take(&mut ws.check_tail) {
        let tail = std::mem::take(&mut ws.tail);
        let (used, end) = parse_ws(&tail, &mut ws.frag, &mut ws.pings, Instant::now(), on_frame)?;
        ws.tail = tail[used..].to_vec();
        if let Some(reason) = end {
            return Ok(Err(reason));
        }
        if used > 0 {
            return Ok(Ok(()));
        }
    }
    poll_fn(|cx| {
        let WsReader {
            read,
            tail,
            frag,
            pings,
            ..
        } = &mut *ws;
        if tail.len() > BIG_TAIL {
            // A large frame: assemble it in the connection's own buffer.
            let len = tail.len();
            tail.resize(len + 64 * 1024, 0);
            let mut buf = ReadBuf::new(&mut tail[len..]);
            let polled = Pin::new(&mut *read).poll_read(cx, &mut buf);
            let n = buf.filled().len();
            tail.truncate(len + n);
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Ready(Ok(())) if n == 0 => {
                    return Poll::Ready(Ok(Err("the server closed the connection".into())));
                }
                Poll::Ready(Ok(())) => {}
            }
            let (used, end) = parse_ws(tail, frag, pings, Instant::now(), on_frame)?;
            tail.drain(..used);
            return Poll::Ready(Ok(end.map_or(Ok(()), Err)));
        }
        READ.with_borrow_mut(|buf| {
            let carried = tail.len();
            buf[..carried].copy_from_slice(tail);
            let mut read_buf = ReadBuf::new(&mut buf[carried..]);
            match Pin::new(&mut *read).poll_read(cx, &mut read_buf) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
                Poll::Ready(Ok(())) => {
                    let n = read_buf.filled().len();
                    if n == 0 {
                        return Poll::Ready(Ok(Err("the server closed the connection".into())));
                    }
                    let data = &buf[..carried + n];
                    let (used, end) = parse_ws(data, frag, pings, Instant::now(), on_frame)?;
                    tail.clear();
                    tail.extend_from_slice(&data[used..]);
                    Poll::Ready(Ok(end.map_or(Ok(()), Err)))
                }
            }
        })
    })
    .await
}

/// Split `data` into WebSocket frames; returns the bytes used and, after a close frame, its
/// reason.
fn parse_ws<F: FnMut(&[u8], Instant)>(
    data: &[u8],
    frag: &mut Vec<u8>,
    pings: &mut Vec<Vec<u8>>,
    now: Instant,
    on_frame: &mut F,
) -> anyhow::Result<(usize, Option<String>)> {
    let mut pos = 0;
    loop {
        let b = &data[pos..];
        let Some(header) = wsframe::parse_header(b) else {
            break;
        };
        if header.mask.is_some() {
            bail!("the server sent a masked WebSocket frame");
        }
        let len = usize::try_from(header.payload_len).unwrap_or(usize::MAX);
        if len > MAX_FRAME {
            bail!("the server sent a WebSocket frame of {len} bytes");
        }
        let Some(payload) = b.get(header.header_len..header.header_len + len) else {
            break;
        };
        pos += header.header_len + len;
        match OpCode::from_bits(header.opcode) {
            Some(OpCode::Text | OpCode::Binary) if header.fin && frag.is_empty() => {
                on_frame(payload, now)
            }
            Some(OpCode::Continuation | OpCode::Text | OpCode::Binary) => {
                frag.extend_from_slice(payload);
                if frag.len() > MAX_FRAME {
                    bail!("the server sent a fragmented message over {MAX_FRAME} bytes");
                }
                if header.fin {
                    on_frame(frag, now);
                    frag.clear();
                }
            }
            Some(OpCode::Close) => {
                let reason = match payload {
                    [a, b, reason @ ..] => format!(
                        "closed {}: {}",
                        u16::from_be_bytes([*a, *b]),
                        String::from_utf8_lossy(reason)
                    ),
                    _ => "closed".into(),
                };
                return Ok((pos, Some(reason)));
            }
            Some(OpCode::Ping) => pings.push(payload.to_vec()),
            Some(OpCode::Pong) => {}
            None => bail!(
                "the server sent a WebSocket frame with opcode {}",
                header.opcode
            ),
        }
    }
    Ok((pos, None))
}

/// Append one masked client frame; `mask` is the xorshift state that picks a fresh key per frame.
fn encode_ws(buf: &mut Vec<u8>, mask: &mut u32, opcode: OpCode, payload: &[u8]) {
    let mut m = *mask;
    m ^= m << 13;
    m ^= m >> 17;
    m ^= m << 5;
    *mask = m;
    wsframe::encode_client(buf, true, opcode, payload, m.to_ne_bytes());
}

impl Writer {
    /// Switch to NATS stream mode (WebSocket only): pushed units are sent as one stream.
    pub fn nats_stream(&mut self) {
        self.stream = Some(Vec::new());
        self.ping_answer = super::nats::PONG;
    }

    /// Queue one frame (a protocol frame payload; in stream mode, a protocol unit with its
    /// line ends); `flush` sends it.
    pub fn push(&mut self, payload: &[u8]) {
        if let Some(stream) = &mut self.stream {
            stream.extend_from_slice(payload);
            return;
        }
        match self.inner {
            WriterInner::Ws(_) => {
                let opcode = if payload.first() == Some(&b'{') {
                    OpCode::Text
                } else {
                    OpCode::Binary
                };
                self.push_ws(opcode, payload);
            }
            WriterInner::Quic { .. } => {
                let len = u32::try_from(payload.len()).expect("frames are smaller than 4 GiB");
                self.buf.extend_from_slice(&len.to_be_bytes());
                self.buf.extend_from_slice(payload);
            }
        }
    }

    fn push_ws(&mut self, opcode: OpCode, payload: &[u8]) {
        encode_ws(&mut self.buf, &mut self.mask, opcode, payload);
    }

    /// Queue a WebSocket pong (no-op on QUIC).
    pub fn pong(&mut self, payload: &[u8]) {
        if let WriterInner::Ws(_) = self.inner {
            self.push_ws(OpCode::Pong, payload);
        }
    }

    /// Queue the answer to a server's protocol-level ping (`{"type":"pong"}`, or NATS `PONG`).
    pub fn answer_ping(&mut self) {
        self.push(self.ping_answer);
    }

    /// Bytes queued and not yet flushed.
    pub fn queued(&self) -> usize {
        self.buf.len() + self.stream.as_ref().map_or(0, Vec::len)
    }

    /// Write everything queued.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if let Some(stream) = &mut self.stream
            && !stream.is_empty()
        {
            for piece in stream.chunks(STREAM_FRAME) {
                encode_ws(&mut self.buf, &mut self.mask, OpCode::Binary, piece);
            }
            stream.clear();
            if stream.capacity() > 1 << 20 {
                *stream = Vec::new();
            }
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        match &mut self.inner {
            WriterInner::Ws(write) => write.write_all(&self.buf).await?,
            WriterInner::Quic { send, .. } => send.write_all(&self.buf).await?,
        }
        self.buf.clear();
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Queue and flush one frame.
    pub async fn send(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        self.push(payload);
        self.flush().await
    }

    /// End the connection politely: a WebSocket close frame, or a QUIC close with code 0.
    pub async fn close(mut self) {
        match &mut self.inner {
            WriterInner::Ws(_) => {
                self.buf.clear();
                if let Some(stream) = &mut self.stream {
                    stream.clear();
                }
                self.push_ws(
                    OpCode::Close,
                    &wsframe::close_payload(wsframe::CLOSE_NORMAL, ""),
                );
                let _ = self.flush().await;
                if let WriterInner::Ws(write) = &mut self.inner {
                    let _ = write.shutdown().await;
                }
            }
            WriterInner::Quic { connection, .. } => connection.close(0u32.into(), b""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsframe::Header;

    fn frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Header::new(fin, opcode, payload.len(), None)
            .as_bytes()
            .to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn splits_frames_across_any_boundary() {
        let big = vec![b'y'; 70_000];
        let mut wire = frame(true, OpCode::Text, b"{\"a\":1}");
        wire.extend(frame(true, OpCode::Binary, &[0x80]));
        wire.extend(frame(true, OpCode::Ping, b"p"));
        wire.extend(frame(false, OpCode::Text, b"{\"b\""));
        wire.extend(frame(true, OpCode::Continuation, b":2}"));
        wire.extend(frame(true, OpCode::Text, &vec![b'z'; 300]));
        wire.extend(frame(true, OpCode::Binary, &big));
        wire.extend(frame(true, OpCode::Close, b"\x03\xe8bye"));
        for cut in [1, 2, 3, 7, 100, 1000, wire.len()] {
            let (mut frag, mut pings, mut got) = (Vec::new(), Vec::new(), Vec::<Vec<u8>>::new());
            let mut carried = Vec::new();
            let mut end = None;
            for piece in wire.chunks(cut) {
                carried.extend_from_slice(piece);
                let (used, e) = parse_ws(
                    &carried,
                    &mut frag,
                    &mut pings,
                    Instant::now(),
                    &mut |f, _| got.push(f.to_vec()),
                )
                .unwrap();
                carried.drain(..used);
                if e.is_some() {
                    end = e;
                    break;
                }
            }
            assert_eq!(got.len(), 5, "cut {cut}");
            assert_eq!(got[2], b"{\"b\":2}");
            assert_eq!(got[4], big);
            assert_eq!(pings, vec![b"p".to_vec()]);
            assert_eq!(end.as_deref(), Some("closed 1000: bye"));
        }
    }

    /// Frames a connection had read already (past a request's reply) come first, then the
    /// socket's, over a real WebSocket.
    #[tokio::test]
    async fn pending_frames_are_handed_over_before_the_socket() {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            for text in ["second", "third"] {
                ws.send(Message::text(text)).await.unwrap();
            }
            ws
        });
        let to = WsAddr {
            addr,
            host: addr.to_string(),
            path: "/".into(),
        };
        let (mut reader, _writer) = connect_ws(&to, None).await.unwrap();
        let _server = server.await.unwrap();
        reader.pending.push_back(b"first".to_vec());
        let mut got: Vec<Vec<u8>> = Vec::new();
        while got.len() < 3 {
            let mut on_frame = |f: &[u8], _: Instant| got.push(f.to_vec());
            let read = reader.read(&mut on_frame);
            let read = tokio::time::timeout(std::time::Duration::from_secs(10), read).await;
            assert!(read.expect("a frame went missing").unwrap());
        }
        assert_eq!(got, [&b"first"[..], b"second", b"third"]);
    }

    #[test]
    fn client_frames_are_masked_with_a_fresh_key_each() {
        let mut mask = 12345u32;
        let mut keys = Vec::new();
        for payload in [
            &b"{\"type\":\"pong\"}"[..],
            &[0x81; 300][..],
            &[7; 70_000][..],
        ] {
            let mut buf = Vec::new();
            encode_ws(&mut buf, &mut mask, OpCode::Text, payload);
            let header = wsframe::parse_header(&buf).unwrap();
            let key = header.mask.expect("client frames are masked");
            assert_eq!(header.payload_len, payload.len() as u64);
            let mut unmasked = buf[header.header_len..].to_vec();
            wsframe::mask(&mut unmasked, key);
            assert_eq!(unmasked, payload);
            assert_ne!(key, [0; 4]);
            keys.push(key);
        }
        assert!(keys[0] != keys[1] && keys[1] != keys[2]);
    }
}
