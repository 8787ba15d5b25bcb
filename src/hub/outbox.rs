//! A connection's one bounded outbound queue. Publishers push without waiting; the connection's
//! writer takes everything queued at once and writes it with one flush.

use crate::metrics::Metrics;
use crate::protocol::{Encoding, ErrorCode};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Identifies a connection for the lifetime of the process.
pub type ConnId = u64;

/// Why an outbox was closed, and so why its connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: ErrorCode,
    pub message: String,
    /// Whether the client should reconnect.
    pub reconnect: bool,
    /// Whether frames queued before the close are still written (graceful) or dropped.
    pub flush: bool,
    /// Whether the client is told why with a `disconnect` frame (false once it is gone).
    pub goodbye: bool,
}

impl CloseReason {
    /// Write what is queued, then say why.
    pub fn graceful(code: ErrorCode, message: impl Into<String>, reconnect: bool) -> CloseReason {
        CloseReason {
            code,
            message: message.into(),
            reconnect,
            flush: true,
            goodbye: true,
        }
    }

    /// Drop what is queued and say why right away.
    pub fn abort(code: ErrorCode, message: impl Into<String>, reconnect: bool) -> CloseReason {
        CloseReason {
            code,
            message: message.into(),
            reconnect,
            flush: false,
            goodbye: true,
        }
    }

    /// The peer left or the transport failed: nothing more can be written.
    pub fn gone(message: impl Into<String>) -> CloseReason {
        CloseReason {
            code: ErrorCode::Internal,
            message: message.into(),
            reconnect: true,
            flush: false,
            goodbye: false,
        }
    }
}

/// The push was refused; the frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue overflowed just now: the outbox is closed as a slow consumer.
    Overflow,
    /// The outbox was closed before.
    Closed,
}

struct State {
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// When the oldest queued frame was pushed.
    oldest: Option<Instant>,
    closed: Option<CloseReason>,
}

pub struct Outbox {
    id: ConnId,
    /// The `Encoding` (as its index) of frames for this connection; fixed once `hello` is done.
    encoding: AtomicU8,
    limit_bytes: usize,
    state: Mutex<State>,
    ready: Notify,
    /// Cancelled when the outbox closes, so the reader stops.
    closed: CancellationToken,
    /// Cancelled when the outbox closes without flushing, so the writer stops waiting on a socket.
    aborted: CancellationToken,
    metrics: Arc<Metrics>,
}

/// What the writer gets from `Outbox::next_batch`.
pub enum Batch {
    /// Frames to write, oldest first, and when the oldest of them was queued.
    Frames(Instant),
    /// The outbox is closed and nothing more (or nothing at all, when not flushing) is to be written.
    Closed(CloseReason),
}

impl Outbox {
    pub fn new(id: ConnId, limit_bytes: usize, metrics: Arc<Metrics>) -> Outbox {
        Outbox {
            id,
            encoding: AtomicU8::new(Encoding::Json.index() as u8),
            limit_bytes,
            state: Mutex::new(State {
                frames: VecDeque::new(),
                bytes: 0,
                oldest: None,
                closed: None,
            }),
            ready: Notify::new(),
            closed: CancellationToken::new(),
            aborted: CancellationToken::new(),
            metrics,
        }
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    pub fn encoding(&self) -> Encoding {
        Encoding::ALL[usize::from(self.encoding.load(Ordering::Relaxed))]
    }

    /// Set the encoding before the first subscription; the hub counts subscribers per encoding.
    pub fn set_encoding(&self, encoding: Encoding) {
        self.encoding
            .store(encoding.index() as u8, Ordering::Relaxed);
    }

    pub fn closed_token(&self) -> CancellationToken {
        self.closed.clone()
    }

    pub fn aborted_token(&self) -> CancellationToken {
        self.aborted.clone()
    }

    /// Queue one frame without waiting. A frame that does not fit closes the outbox: the
    /// connection is a slow consumer and gets disconnected, never waited for. `now` is when the
    /// frame was produced (one clock read per publish, not per subscriber). A queued frame is
    /// counted in `Metrics::queued_frames` until it is written or dropped.
    pub fn push(&self, frame: Bytes, now: Instant) -> Result<(), PushError> {
        let mut state = self.state.lock().expect("outbox lock is never poisoned");
        if state.closed.is_some() {
            return Err(PushError::Closed);
        }
        if state.bytes + frame.len() > self.limit_bytes {
            drop(state);
            self.close(CloseReason::abort(
                ErrorCode::SlowConsumer,
                format!("outbound queue exceeded {} bytes", self.limit_bytes),
                true,
            ));
            self.metrics.slow_consumers.inc();
            return Err(PushError::Overflow);
        }
        state.bytes += frame.len();
        state.frames.push_back(frame);
        self.metrics.queued_frames.inc();
        let was_empty = state.oldest.is_none();
        if was_empty {
            state.oldest = Some(now);
        }
        drop(state);
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Close the outbox; the first reason wins. Returns whether this call closed it.
    pub fn close(&self, reason: CloseReason) -> bool {
        let mut state = self.state.lock().expect("outbox lock is never poisoned");
        if state.closed.is_some() {
            return false;
        }
        let flush = reason.flush;
        state.closed = Some(reason);
        drop(state);
        self.ready.notify_one();
        self.closed.cancel();
        if !flush {
            self.aborted.cancel();
        }
        true
    }

    pub fn is_closed(&self) -> bool {
        self.state
            .lock()
            .expect("outbox lock is never poisoned")
            .closed
            .is_some()
    }

    /// Wait until there is something to do, then move every queued frame into `out`.
    /// Only the connection's writer calls this.
    pub async fn next_batch(&self, out: &mut VecDeque<Bytes>) -> Batch {
        loop {
            {
                let mut state = self.state.lock().expect("outbox lock is never poisoned");
                let flush = state.closed.as_ref().is_none_or(|c| c.flush);
                if flush && !state.frames.is_empty() {
                    // Swap queues so both keep their capacity: no allocation in steady state.
                    std::mem::swap(&mut state.frames, out);
                    state.bytes = 0;
                    let oldest = state
                        .oldest
                        .take()
                        .expect("a non-empty queue has an oldest frame");
                    self.metrics.queued_frames.dec_by(out.len() as i64);
                    return Batch::Frames(oldest);
                }
                if let Some(reason) = state.closed.clone() {
                    let dropped = state.frames.len();
                    state.frames.clear();
                    state.bytes = 0;
                    self.metrics.queued_frames.dec_by(dropped as i64);
                    return Batch::Closed(reason);
                }
            }
            self.ready.notified().await;
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let state = self.state.get_mut().expect("outbox lock is never poisoned");
        self.metrics.queued_frames.dec_by(state.frames.len() as i64);
    }
}
