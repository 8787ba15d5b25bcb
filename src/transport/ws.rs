//! WebSocket transport: the shell around the sans-IO codec (`wsframe`), on the raw TCP socket
//! taken back from the HTTP upgrade. One WebSocket message per frame: JSON frames travel as
//! text messages, MessagePack frames as binary messages. The y-websocket endpoint
//! (`docs/ws.rs`) uses the same reader and writer.
//!
//! The socket is split into owned halves, so the reader and the writer never share a lock.
//! The writer sends a batch as `write_vectored` calls over the frames' own bytes (a header
//! slice and the payload per frame): a frame fanned out to thousands of connections is never
//! copied. The reader reads into one buffer per worker thread and keeps only what a read left
//! undecoded (a partial frame), so an idle connection holds no read buffer; a large frame is
//! read into a buffer of its own, freed once decoded.
//!
//! Pongs and the close handshake go from the reader to the writer through `Control`: one slot
//! for the pong owed to the latest ping (a ping flood cannot grow memory), and how the
//! connection ended on the reader's side (a violation's close status, or the client's close
//! frame to echo). An empty frame in the outbox wakes the writer to send the pong; protocol
//! frames are never empty.

use super::wsframe::{self, Decoded, Decoder, Event, Header, OpCode};
use crate::connection::{self, FrameReader, FrameWriter, Permit, ReadError};
use crate::hub::Outbox;
use crate::metrics::Transport;
use crate::protocol::ErrorCode;
use crate::server::Shared;
use bytes::Bytes;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

/// Size of each worker thread's read buffer.
const READ_BUF: usize = 64 * 1024;
/// A frame longer than this is read into the connection's own buffer, sized for it.
const BIG_FRAME: usize = READ_BUF / 2;
/// Frames per `write_vectored` call: two slices each (header, payload), so one call takes the
/// 1,024 slices Linux accepts (`IOV_MAX`). A large batch of small frames then costs few
/// syscalls; the arrays live on the stack only during the call.
const WRITE_FRAMES: usize = 512;
/// Frames per call when no more are queued: the usual case of one or a few frames then fills
/// arrays of this size, not 24 KiB of them for every write.
const SMALL_WRITE: usize = 8;
/// Frames per call for a batch of a few dozen (a burst of publishes fanned out): arrays of
/// 3 KiB, not the 24 KiB of `WRITE_FRAMES`, set up for each call.
const MID_WRITE: usize = 64;

thread_local! {
    static READ: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_BUF].into_boxed_slice());
}

/// A connection taken back from the HTTP upgrade.
pub struct Upgraded {
    pub stream: TcpStream,
    /// What the client sent after its upgrade request and the HTTP server read already.
    pub read_buf: Bytes,
}

/// Serve one upgraded connection with the session protocol.
pub async fn run(
    shared: Arc<Shared>,
    upgraded: Upgraded,
    preauth: Option<crate::access::Claims>,
    permit: Permit,
) {
    let (reader, writer) = split(upgraded, shared.config.max_frame_bytes, session_opcode);
    connection::run(
        shared,
        Transport::Ws,
        Reader(reader),
        Writer(writer),
        preauth,
        permit,
    )
    .await;
}

/// Split `upgraded` into the reader and the writer of one WebSocket connection. The reader
/// refuses messages over `max_message` bytes; the writer sends each frame as a message of
/// type `opcode_of(frame)`.
pub(crate) fn split(
    upgraded: Upgraded,
    max_message: usize,
    opcode_of: fn(&[u8]) -> OpCode,
) -> (WsReader, WsWriter) {
    let (read, write) = upgraded.stream.into_split();
    let control = Arc::new(Control::default());
    let reader = WsReader {
        read,
        decoder: Decoder::new(max_message),
        pending: upgraded.read_buf.to_vec(),
        start: 0,
        need: None,
        control: control.clone(),
        outbox: None,
    };
    let writer = WsWriter {
        write,
        control,
        opcode_of,
        unfinished: None,
    };
    (reader, writer)
}

/// Session frames: JSON as text, MessagePack as binary.
fn session_opcode(frame: &[u8]) -> OpCode {
    // Outboxes hold only frames made by `protocol::encode_server` and `encode_message`. Their
    // MessagePack output is a map, whose first byte (0x80..=0x8f, 0xde, 0xdf) is never `{`.
    if frame.first() == Some(&b'{') {
        OpCode::Text
    } else {
        OpCode::Binary
    }
}

/// What the reader hands to the writer.
#[derive(Default)]
struct Control {
    /// The payload of the latest ping not answered yet. One slot: a client that pings faster
    /// than its pongs leave gets a pong for the latest ping only (RFC 6455 section 5.5.3).
    pong: Mutex<Option<Bytes>>,
    /// How the connection ended on the reader's side; decides the writer's close frame.
    ending: OnceLock<Ending>,
}

#[derive(Debug, Clone, Copy)]
enum Ending {
    /// The client broke the protocol: close with this status.
    Violation(u16),
    /// The client sent its close frame (with this status): echo it.
    Closed(Option<u16>),
}

/// Why reading failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsReadError {
    #[error(transparent)]
    Protocol(#[from] wsframe::Error),
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

/// The reading half of a WebSocket connection.
pub(crate) struct WsReader {
    read: OwnedReadHalf,
    decoder: Decoder,
    /// Bytes read and not decoded yet: frames after the message handed out last, or the start
    /// of a frame. Unallocated when empty, so an idle connection keeps nothing.
    pending: Vec<u8>,
    /// How much of `pending` is decoded.
    start: usize,
    /// The length of the incomplete frame in `pending`, once its header is there.
    need: Option<usize>,
    control: Arc<Control>,
    /// Where an owed pong wakes the writer, once the connection's outbox exists.
    outbox: Option<Arc<Outbox>>,
}

/// What a decoded frame means for `next_message`.
enum Step {
    Message(wsframe::Message),
    /// The client closed: reading is over.
    Closed,
}

impl WsReader {
    /// Wake the writer through `outbox` when a pong is owed.
    pub(crate) fn attach(&mut self, outbox: &Arc<Outbox>) {
        self.outbox = Some(outbox.clone());
    }

    /// The next message; `None` once the client closed (its close frame, or the end of the
    /// stream). Pings are answered through the writer, pongs ignored. A protocol violation is
    /// an error, and the writer's close frame will carry its status. Cancel-safe: it awaits
    /// only readiness, and reads and decodes without awaiting.
    pub(crate) async fn next_message(&mut self) -> Result<Option<wsframe::Message>, WsReadError> {
        let result = self.next_step().await;
        if let Err(WsReadError::Protocol(e)) = &result {
            // A message over the limit closes with the status the caller chooses (the session
            // protocol's 1009, y-websocket's 4413); other violations with the RFC's.
            if !matches!(e, wsframe::Error::TooLarge { .. }) {
                let _ = self.control.ending.set(Ending::Violation(e.close_code()));
            }
        }
        result.map(|step| match step {
            Step::Message(message) => Some(message),
            Step::Closed => None,
        })
    }

    async fn next_step(&mut self) -> Result<Step, WsReadError> {
        loop {
            if let Some(step) = self.decode_pending()? {
                return Ok(step);
            }
            self.read.readable().await?;
            let read = if self.need.is_some_and(|n| n > BIG_FRAME) {
                self.read_big()
            } else {
                self.read_through_thread_buffer()
            };
            match read {
                Ok(Some(step)) => return Ok(step),
                Ok(None) => {}
                Err(WsReadError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Decode what earlier reads left, up to the next message. When only the start of a frame
    /// is left, move it to the front (and free the buffer when nothing is left).
    fn decode_pending(&mut self) -> Result<Option<Step>, WsReadError> {
        while self.start < self.pending.len() {
            match self.decoder.decode(&self.pending[self.start..])? {
                Decoded::Frame { used, event } => {
                    self.start += used;
                    if let Some(step) = event.and_then(|e| self.step(e)) {
                        return Ok(Some(step));
                    }
                }
                Decoded::Incomplete { frame_len } => {
                    self.need = frame_len;
                    break;
                }
            }
        }
        self.pending.drain(..self.start);
        self.start = 0;
        if self.pending.is_empty() {
            self.pending = Vec::new();
            self.need = None;
        }
        Ok(None)
    }

    /// One read into this thread's buffer, after the partial frame carried over; decode up
    /// to the next message and keep the rest. `Ok(None)`: no message yet.
    fn read_through_thread_buffer(&mut self) -> Result<Option<Step>, WsReadError> {
        READ.with_borrow_mut(|buf| {
            // `pending` holds at most the start of one frame of up to `BIG_FRAME` bytes.
            let carried = self.pending.len();
            buf[..carried].copy_from_slice(&self.pending);
            let n = self.read.try_read(&mut buf[carried..])?;
            if n == 0 {
                return Ok(Some(Step::Closed));
            }
            let data = &buf[..carried + n];
            let mut used = 0;
            let mut found = None;
            while found.is_none() {
                match self.decoder.decode(&data[used..])? {
                    Decoded::Frame { used: frame, event } => {
                        used += frame;
                        found = event.and_then(|e| self.step(e));
                    }
                    Decoded::Incomplete { frame_len } => {
                        self.need = frame_len;
                        break;
                    }
                }
            }
            let rest = &data[used..];
            if rest.is_empty() {
                self.pending = Vec::new();
                self.need = None;
            } else {
                self.pending.clear();
                self.pending.extend_from_slice(rest);
            }
            Ok(found)
        })
    }

    /// One read of a large frame into the connection's own buffer, which grows to the frame's
    /// length (bounded by the decoder's limit) and is freed once the frame is decoded.
    fn read_big(&mut self) -> Result<Option<Step>, WsReadError> {
        let need = self.need.expect("only called for a frame of known length");
        self.pending
            .reserve_exact(need.saturating_sub(self.pending.len()));
        if self.read.try_read_buf(&mut self.pending)? == 0 {
            return Ok(Some(Step::Closed));
        }
        Ok(None)
    }

    /// Act on a decoded event; a message or the client's close is a step for the caller.
    fn step(&self, event: Event) -> Option<Step> {
        match event {
            Event::Message(message) => Some(Step::Message(message)),
            Event::Ping(payload) => {
                let owed = self
                    .control
                    .pong
                    .lock()
                    .expect("pong lock is never poisoned")
                    .replace(payload);
                // The writer is woken once per owed pong; later pings replace the payload.
                if owed.is_none()
                    && let Some(outbox) = &self.outbox
                {
                    let _ = outbox.push(Bytes::new(), Instant::now());
                }
                None
            }
            Event::Pong(_) => None,
            Event::Close(frame) => {
                let _ = (self.control.ending).set(Ending::Closed(frame.map(|f| f.code)));
                Some(Step::Closed)
            }
        }
    }
}

/// The writing half of a WebSocket connection.
pub(crate) struct WsWriter {
    write: OwnedWriteHalf,
    control: Arc<Control>,
    opcode_of: fn(&[u8]) -> OpCode,
    /// A frame partly written: it goes out before anything else, even after the write that
    /// began it was cancelled (a slow consumer's goodbye still follows a whole frame).
    unfinished: Option<Unfinished>,
}

struct Unfinished {
    payload: Bytes,
    opcode: OpCode,
    /// Bytes of its header and payload written already.
    written: usize,
}

impl WsWriter {
    /// Write every frame in `frames` as a message, oldest first, leaving it empty. An empty
    /// frame stands for the pong owed to the client (`Control::pong`), which goes first.
    pub(crate) async fn write_frames(&mut self, frames: &mut VecDeque<Bytes>) -> io::Result<()> {
        if frames.iter().any(Bytes::is_empty) {
            frames.retain(|f| !f.is_empty());
            let pong = self
                .control
                .pong
                .lock()
                .expect("pong lock is never poisoned")
                .take();
            if let Some(payload) = pong {
                self.send_control(OpCode::Pong, payload).await?;
            }
        }
        self.drive(frames).await
    }

    /// Make a control frame the next to go, after the unfinished frame; `drive` sends it.
    async fn send_control(&mut self, opcode: OpCode, payload: Bytes) -> io::Result<()> {
        self.drive(&mut VecDeque::new()).await?;
        self.unfinished = Some(Unfinished {
            payload,
            opcode,
            written: 0,
        });
        Ok(())
    }

    /// Write the unfinished frame, then `frames`, until all are written.
    async fn drive(&mut self, frames: &mut VecDeque<Bytes>) -> io::Result<()> {
        while self.unfinished.is_some() || !frames.is_empty() {
            match self.try_write(frames) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.write.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One `write_vectored` of the unfinished frame and the frames at the front of `frames`
    /// (header and payload slices; payloads are not copied). Pops the frames it wrote; one
    /// written in part becomes the unfinished frame.
    fn try_write(&mut self, frames: &mut VecDeque<Bytes>) -> io::Result<()> {
        let count = usize::from(self.unfinished.is_some()) + frames.len();
        if count <= SMALL_WRITE {
            self.try_write_up_to::<SMALL_WRITE, { 2 * SMALL_WRITE }>(frames)
        } else if count <= MID_WRITE {
            self.try_write_up_to::<MID_WRITE, { 2 * MID_WRITE }>(frames)
        } else {
            self.try_write_up_to::<WRITE_FRAMES, { 2 * WRITE_FRAMES }>(frames)
        }
    }

    /// [`Self::try_write`] of at most `N` frames, through `S` = 2 `N` slices.
    fn try_write_up_to<const N: usize, const S: usize>(
        &mut self,
        frames: &mut VecDeque<Bytes>,
    ) -> io::Result<()> {
        let opcode_of = self.opcode_of;
        // Each frame's header, made once: the slices point into it, and its length tells
        // where the frame ends in what was written.
        let mut headers = [Header::EMPTY; N];
        let first = usize::from(self.unfinished.is_some());
        if let Some(unfinished) = &self.unfinished {
            headers[0] = Header::server(unfinished.opcode, unfinished.payload.len());
        }
        let count = first + frames.len().min(N - first);
        for (header, payload) in headers[first..count].iter_mut().zip(frames.iter()) {
            *header = Header::server(opcode_of(payload), payload.len());
        }
        let mut slices = [IoSlice::new(&[]); S];
        let mut used = 0;
        if let Some(unfinished) = &self.unfinished {
            let mut skip = unfinished.written;
            for part in [headers[0].as_bytes(), &unfinished.payload[..]] {
                let cut = skip.min(part.len());
                skip -= cut;
                if cut < part.len() {
                    slices[used] = IoSlice::new(&part[cut..]);
                    used += 1;
                }
            }
        }
        for (header, payload) in headers[first..count].iter().zip(frames.iter()) {
            slices[used] = IoSlice::new(header.as_bytes());
            slices[used + 1] = IoSlice::new(payload);
            used += 2;
        }
        let mut left = self.write.try_write_vectored(&slices[..used])?;
        if left == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if let Some(unfinished) = &mut self.unfinished {
            let len = headers[0].as_bytes().len() + unfinished.payload.len();
            if unfinished.written + left < len {
                unfinished.written += left;
                return Ok(());
            }
            left -= len - unfinished.written;
            self.unfinished = None;
        }
        for header in &headers[first..count] {
            if left == 0 {
                break;
            }
            let payload = frames.pop_front().expect("no more written than queued");
            let len = header.as_bytes().len() + payload.len();
            if left < len {
                self.unfinished = Some(Unfinished {
                    opcode: opcode_of(&payload),
                    payload,
                    written: left,
                });
                break;
            }
            left -= len;
        }
        Ok(())
    }

    /// End the connection: `last` as a final message, then a close frame, then the end of
    /// the stream. `status` is the close frame this side chose (a protocol violation the
    /// reader saw overrides its status); without one, the client's close frame is echoed if
    /// it sent one.
    pub(crate) async fn close(mut self, last: Option<Bytes>, status: Option<(u16, &str)>) {
        let ending = self.control.ending.get().copied();
        let payload = match (status, ending) {
            (Some((_, reason)), Some(Ending::Violation(code))) => {
                Some(wsframe::close_payload(code, reason))
            }
            (Some((code, reason)), _) => Some(wsframe::close_payload(code, reason)),
            (None, Some(Ending::Closed(Some(code)))) => Some(code.to_be_bytes().to_vec()),
            (None, Some(Ending::Closed(None))) => Some(Vec::new()),
            (None, _) => None,
        };
        let mut frames: VecDeque<Bytes> = last.into_iter().collect();
        if self.write_frames(&mut frames).await.is_err() {
            return;
        }
        if let Some(payload) = payload {
            let sent = self.send_control(OpCode::Close, Bytes::from(payload)).await;
            if sent.is_err() || self.drive(&mut frames).await.is_err() {
                return;
            }
        }
        let _ = self.write.shutdown().await;
    }
}

struct Reader(WsReader);

impl FrameReader for Reader {
    fn attach(&mut self, outbox: &Arc<Outbox>) {
        self.0.attach(outbox);
    }

    async fn next_frame(&mut self) -> Option<Result<Bytes, ReadError>> {
        match self.0.next_message().await {
            Ok(message) => message.map(|m| Ok(m.payload)),
            Err(WsReadError::Protocol(e @ wsframe::Error::TooLarge { .. })) => {
                Some(Err(ReadError::TooLarge(e.to_string())))
            }
            Err(e) => Some(Err(ReadError::Broken(e.to_string()))),
        }
    }
}

struct Writer(WsWriter);

/// The close status for a session that ends with `code` (docs/protocol.md section 2.1).
fn close_status(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::ShuttingDown => 1001,
        ErrorCode::FrameTooLarge => wsframe::CLOSE_TOO_BIG,
        ErrorCode::Internal => 1011,
        _ => 1008,
    }
}

impl FrameWriter for Writer {
    async fn write_batch(&mut self, frames: &mut VecDeque<Bytes>) -> io::Result<()> {
        self.0.write_frames(frames).await
    }

    async fn close(self, goodbye: Option<Bytes>, code: ErrorCode) {
        let status = goodbye
            .is_some()
            .then(|| (close_status(code), code.as_str()));
        self.0.close(goodbye, status).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A connected pair: the server's socket (with a small send buffer, so writes come out in
    /// pieces) and the client's.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let server = accepted.unwrap().0;
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .unwrap();
        (server, client.unwrap())
    }

    fn halves(server: TcpStream, read_buf: &[u8]) -> (WsReader, WsWriter) {
        let upgraded = Upgraded {
            stream: server,
            read_buf: Bytes::copy_from_slice(read_buf),
        };
        split(upgraded, 1 << 20, session_opcode)
    }

    /// Frames of many sizes, JSON and MessagePack alike, each telling its index.
    fn frames() -> Vec<Bytes> {
        (0..1000usize)
            .map(|i| {
                let size = [3, 40, 125, 126, 700, 9000, 70_000][i % 7];
                let mut frame = format!("{{\"i\":{i},\"pad\":\"").into_bytes();
                frame.resize(size.max(frame.len()), b'x');
                if i % 5 == 0 {
                    frame[0] = 0x82;
                }
                Bytes::from(frame)
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_every_frame_whole_and_in_order_through_partial_writes() {
        let (server, mut client) = pair().await;
        let (_reader, mut writer) = halves(server, &[]);
        let sent = frames();
        let to_send = sent.clone();
        let writing = tokio::spawn(async move {
            // Batches of varied lengths; a pong owed halfway.
            let mut batches = to_send.chunks(97).enumerate();
            for (n, batch) in &mut batches {
                let mut batch: VecDeque<Bytes> = batch.iter().cloned().collect();
                if n == 10 {
                    *writer.control.pong.lock().unwrap() = Some(Bytes::from_static(b"pong!"));
                    batch.insert(3, Bytes::new());
                }
                writer.write_frames(&mut batch).await.unwrap();
                assert!(batch.is_empty());
            }
            writer.close(None, Some((1000, "done"))).await;
        });
        let mut wire = Vec::new();
        let mut chunk = [0; 1500];
        loop {
            // Small reads, so the server's writes keep hitting a full socket.
            let n = client.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            wire.extend_from_slice(&chunk[..n]);
        }
        writing.await.unwrap();
        let mut got = Vec::new();
        let mut pongs = 0;
        let mut rest = &wire[..];
        while let Some(header) = wsframe::parse_header(rest) {
            assert_eq!((header.fin, header.mask), (true, None));
            let end = header.header_len + header.payload_len as usize;
            let payload = &rest[header.header_len..end];
            match OpCode::from_bits(header.opcode).unwrap() {
                OpCode::Text => {
                    assert_eq!(payload[0], b'{');
                    got.push(Bytes::copy_from_slice(payload));
                }
                OpCode::Binary => {
                    assert_eq!(payload[0], 0x82);
                    got.push(Bytes::copy_from_slice(payload));
                }
                OpCode::Pong => {
                    assert_eq!(payload, b"pong!");
                    pongs += 1;
                }
                OpCode::Close => assert_eq!(payload, b"\x03\xe8done"),
                other => panic!("unexpected {other:?}"),
            }
            rest = &rest[end..];
        }
        assert!(rest.is_empty());
        assert_eq!(pongs, 1);
        assert!(got == sent, "frames lost, reordered or damaged");
    }

    /// An idle connection's memory is mostly its two tasks' futures, allocated whole at their
    /// largest state for the connection's life: state used only while closing or executing a
    /// request is boxed. The bounds hold in debug builds, where futures are largest (release:
    /// about two thirds).
    #[tokio::test]
    async fn an_idle_connection_tasks_stay_small() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config {
            data_dir: dir.path().into(),
            ..crate::config::Config::default()
        };
        let shared = crate::server::shared(config).unwrap();
        let (reader, writer) = halves(pair().await.0, &[]);
        let outbox = Arc::new(Outbox::new(1, 1 << 20, shared.metrics.clone()));
        let metrics = shared.metrics.transport(Transport::Ws).clone();
        let write = connection::write_loop(Writer(writer), outbox, metrics, shared.clone());
        let (_, writer) = halves(pair().await.0, &[]);
        let permit = Permit::acquire(&shared).unwrap();
        let run = connection::run(
            shared.clone(),
            Transport::Ws,
            Reader(reader),
            Writer(writer),
            None,
            permit,
        );
        let (run, write) = (std::mem::size_of_val(&run), std::mem::size_of_val(&write));
        eprintln!("connection task {run} bytes, writer task {write} bytes");
        assert!(
            run <= 2200,
            "the connection task's future grew to {run} bytes"
        );
        assert!(
            write <= 1024,
            "the writer task's future grew to {write} bytes"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_messages_across_any_arrival_pattern() {
        let (server, mut client) = pair().await;
        let mut wire = Vec::new();
        let key = [9, 8, 7, 6];
        let sent = frames();
        for frame in &sent {
            let opcode = session_opcode(frame);
            wsframe::encode_client(&mut wire, true, opcode, frame, key);
        }
        // A large message in fragments, with a ping between them.
        let big = vec![b'b'; 300_000];
        wsframe::encode_client(&mut wire, false, OpCode::Binary, &big[..100_000], key);
        wsframe::encode_client(&mut wire, true, OpCode::Ping, b"hi", key);
        wsframe::encode_client(&mut wire, true, OpCode::Continuation, &big[100_000..], key);
        wsframe::encode_client(&mut wire, true, OpCode::Close, b"", key);
        // The first bytes came with the upgrade request.
        let (early, wire) = wire.split_at(1000);
        let (mut reader, _writer) = halves(server, early);
        let writing = tokio::spawn({
            let wire = wire.to_vec();
            async move {
                // Pieces of every size, some of them after a pause.
                let mut at = 0;
                for (i, size) in [1, 13, 4096, 70_001, 5, 100_000].iter().cycle().enumerate() {
                    let end = (at + size).min(wire.len());
                    client.write_all(&wire[at..end]).await.unwrap();
                    at = end;
                    if at == wire.len() {
                        break;
                    }
                    if i % 3 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                client
            }
        });
        let mut got = Vec::new();
        while let Some(message) = reader.next_message().await.unwrap() {
            assert_eq!(message.text, message.payload[0] == b'{');
            got.push(message.payload);
        }
        let _client = writing.await.unwrap();
        assert_eq!(got.len(), sent.len() + 1);
        assert_eq!(got.pop().unwrap(), big);
        assert!(got == sent, "messages lost, reordered or damaged");
        assert_eq!(
            reader.control.pong.lock().unwrap().as_deref(),
            Some(&b"hi"[..])
        );
        assert!(matches!(
            reader.control.ending.get(),
            Some(Ending::Closed(None))
        ));
        assert_eq!(reader.pending.capacity(), 0, "nothing kept once idle");
    }
}
