//! A connection's one bounded outbound queue. Publishers push without waiting; the connection's
//! writer takes everything queued at once and writes it with one flush.
//!
//! The writer waits in `next_batch` with its waker parked in the queue's own state: the push
//! that finds the queue empty takes that waker and wakes it, under the lock it holds anyway, so
//! a delivery costs no other synchronisation. The close signals are two flags and one `Notify`:
//! an outbox allocates nothing beyond itself and its queue.

use crate::metrics::Metrics;
use crate::protocol::{Encoding, ErrorCode};
use bytes::Bytes;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio::sync::Notify;
use tokio::time::Instant;

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
    /// The writer's waker while it waits in `next_batch` with nothing to write; the next push
    /// or the close takes it.
    writer: Option<Waker>,
}

/// A connection's outbound queue, bounded in bytes; shared by everything that sends to the
/// connection and drained by its one writer.
pub struct Outbox {
    id: ConnId,
    /// The `Encoding` (as its index) of frames for this connection; fixed once `hello` is done.
    encoding: AtomicU8,
    limit_bytes: usize,
    state: Mutex<State>,
    /// Set when the outbox closes, so the reader stops.
    closed: AtomicBool,
    /// Set when the outbox closes without flushing, so the writer stops waiting on a socket.
    aborted: AtomicBool,
    /// Wakes the tasks waiting in `closed` or `aborted`.
    closing: Notify,
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
    /// An open outbox for connection `id`, refusing frames past `limit_bytes` queued.
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
                writer: None,
            }),
            closed: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            closing: Notify::new(),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("outbox lock is never poisoned")
    }

    /// Queue one frame without waiting. A frame that does not fit closes the outbox: the
    /// connection is a slow consumer and gets disconnected, never waited for. `now` is when the
    /// frame was produced (one clock read per publish, not per subscriber). A queued frame is
    /// counted in `Metrics::queued_frames` until it is written or dropped.
    pub fn push(&self, frame: Bytes, now: Instant) -> Result<(), PushError> {
        // Counted first: the writer may take the frame, and uncount it, as soon as it is queued.
        self.metrics.queued_frames.inc();
        let pushed = self.push_uncounted(frame, now);
        if pushed.is_err() {
            self.metrics.queued_frames.dec();
        }
        pushed
    }

    /// `push` for a caller that counts the frame in `Metrics::queued_frames` itself, once
    /// for all the outboxes it queues one frame to (the hub's fan-out).
    pub(super) fn push_uncounted(&self, frame: Bytes, now: Instant) -> Result<(), PushError> {
        let mut state = self.lock();
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
        if state.oldest.is_none() {
            state.oldest = Some(now);
        }
        // Only a writer with nothing to write waits: the first push after that wakes it.
        let writer = state.writer.take();
        drop(state);
        if let Some(writer) = writer {
            writer.wake();
        }
        Ok(())
    }

    /// Close the outbox; the first reason wins. Returns whether this call closed it.
    pub fn close(&self, reason: CloseReason) -> bool {
        let mut state = self.lock();
        if state.closed.is_some() {
            return false;
        }
        if !reason.flush {
            self.aborted.store(true, Ordering::Release);
        }
        self.closed.store(true, Ordering::Release);
        state.closed = Some(reason);
        let writer = state.writer.take();
        drop(state);
        if let Some(writer) = writer {
            writer.wake();
        }
        self.closing.notify_waiters();
        true
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether the outbox closed without flushing: what is queued will not be written.
    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// Wait until the outbox is closed; the connection's reader stops then.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + '_ {
        self.until(&self.closed)
    }

    /// Wait until the outbox is closed without flushing; the writer stops waiting on its
    /// socket then.
    pub fn aborted(&self) -> impl Future<Output = ()> + Send + '_ {
        self.until(&self.aborted)
    }

    async fn until(&self, flag: &AtomicBool) {
        loop {
            // Made before the check: a close after the check wakes it.
            let notified = self.closing.notified();
            if flag.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Wait until there is something to do, then move every queued frame into `out`.
    /// Only the connection's writer calls this.
    pub fn next_batch<'a>(
        &'a self,
        out: &'a mut VecDeque<Bytes>,
    ) -> impl Future<Output = Batch> + Send + 'a {
        std::future::poll_fn(move |cx| self.poll_batch(cx, out))
    }

    fn poll_batch(&self, cx: &mut Context<'_>, out: &mut VecDeque<Bytes>) -> Poll<Batch> {
        let mut state = self.lock();
        let flush = state.closed.as_ref().is_none_or(|c| c.flush);
        if flush && !state.frames.is_empty() {
            // Swap queues so both keep their capacity: no allocation in steady state.
            std::mem::swap(&mut state.frames, out);
            state.bytes = 0;
            let oldest = state
                .oldest
                .take()
                .expect("a non-empty queue has an oldest frame");
            drop(state);
            self.metrics.queued_frames.dec_by(out.len() as i64);
            return Poll::Ready(Batch::Frames(oldest));
        }
        if let Some(reason) = state.closed.clone() {
            let dropped = state.frames.len();
            state.frames.clear();
            state.bytes = 0;
            drop(state);
            self.metrics.queued_frames.dec_by(dropped as i64);
            return Poll::Ready(Batch::Closed(reason));
        }
        state.writer = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let state = self.state.get_mut().expect("outbox lock is never poisoned");
        self.metrics.queued_frames.dec_by(state.frames.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::poll;
    use std::pin::pin;

    fn outbox(metrics: &Arc<Metrics>) -> Arc<Outbox> {
        Arc::new(Outbox::new(1, 1 << 10, metrics.clone()))
    }

    /// The writer waits with nothing queued; every push to the empty queue wakes it, and the
    /// close wakes it once more, after what was queued.
    #[tokio::test]
    async fn a_waiting_writer_wakes_for_a_push_and_for_the_close() {
        let metrics = Arc::new(Metrics::new());
        let outbox = outbox(&metrics);
        let writer = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                let (mut out, mut got) = (VecDeque::new(), Vec::new());
                loop {
                    match outbox.next_batch(&mut out).await {
                        Batch::Frames(_) => got.extend(out.drain(..)),
                        Batch::Closed(reason) => return (got, reason),
                    }
                }
            }
        });
        for n in 0..3u8 {
            // The writer runs until it waits again, taking what was queued.
            tokio::task::yield_now().await;
            assert_eq!(
                metrics.queued_frames.get(),
                0,
                "the writer took every frame"
            );
            outbox.push(Bytes::from(vec![n]), Instant::now()).unwrap();
        }
        outbox
            .push(Bytes::from_static(b"last"), Instant::now())
            .unwrap();
        assert!(outbox.close(CloseReason::graceful(ErrorCode::ShuttingDown, "bye", true)));
        let (got, reason) = writer.await.unwrap();
        assert_eq!(got, [&[0][..], &[1], &[2], b"last"]);
        assert_eq!(reason.code, ErrorCode::ShuttingDown);
        assert_eq!(metrics.queued_frames.get(), 0);
    }

    /// A graceful close signals the reader only; an abort signals the writer too, and refuses
    /// the frames still queued. Waiters that came before the close and after it both see it.
    #[tokio::test]
    async fn closing_signals_the_reader_and_aborting_the_writer() {
        let metrics = Arc::new(Metrics::new());
        let (graceful, aborted) = (outbox(&metrics), outbox(&metrics));
        let mut early = pin!(graceful.closed());
        let mut never = pin!(graceful.aborted());
        assert!(poll!(early.as_mut()).is_pending());
        assert!(poll!(never.as_mut()).is_pending());
        graceful.close(CloseReason::graceful(ErrorCode::Forbidden, "x", false));
        assert!(poll!(early).is_ready());
        assert!(poll!(never).is_pending());
        assert!(graceful.is_closed() && !graceful.is_aborted());

        aborted
            .push(Bytes::from_static(b"x"), Instant::now())
            .unwrap();
        let mut early = pin!(aborted.aborted());
        assert!(poll!(early.as_mut()).is_pending());
        assert!(aborted.close(CloseReason::gone("gone")));
        assert!(
            !aborted.close(CloseReason::gone("again")),
            "the first reason wins"
        );
        assert!(poll!(early).is_ready());
        assert!(poll!(pin!(aborted.closed())).is_ready());
        assert_eq!(
            aborted.push(Bytes::from_static(b"y"), Instant::now()),
            Err(PushError::Closed)
        );
        let mut out = VecDeque::new();
        match aborted.next_batch(&mut out).await {
            Batch::Closed(reason) => assert_eq!(reason.message, "gone"),
            Batch::Frames(_) => panic!("an aborted outbox writes nothing more"),
        }
        assert_eq!(metrics.queued_frames.get(), 0);
    }
}
