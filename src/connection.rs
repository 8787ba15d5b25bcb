//! The transport-independent connection shell: one reader loop driving the `Session` core and one
//! writer task draining the `Outbox`. WebSocket and QUIC provide a `FrameReader` and a
//! `FrameWriter`; everything else is shared, so both transports behave the same.

use crate::access::Action;
use crate::channel::ChannelRef;
use crate::docs::session::OpenDocs;
use crate::hub::{Batch, CloseReason, Outbox};
use crate::meetings::session::OpenMeetings;
use crate::metrics::{Transport, TransportMetrics};
use crate::protocol::{ClientFrame, ErrorCode, ServerFrame, encode_server};
use crate::server::Shared;
use crate::session::{Output, Session};
use crate::spaces::ServiceError;
use crate::users::{Control, Mailbox};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::json;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// How long the writer may take to flush and say goodbye once a connection is closing.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// `chat.*` requests a connection may have in flight (submitted, not yet answered). At the
/// limit the reader stops reading until one is answered, so the client is held back by its
/// socket. Deep enough for a pipelining client to fill the store's batches on its own.
const MAX_IN_FLIGHT: usize = 64;

/// A request in flight and, once it resolves, its result.
type InFlight = FuturesUnordered<
    Pin<Box<dyn Future<Output = (ClientFrame, Result<serde_json::Value, ServiceError>)> + Send>>,
>;

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The frame exceeded the transport's size limit.
    TooLarge(String),
    /// The transport failed or the peer broke the framing.
    Broken(String),
}

/// Incoming frames, one complete frame payload at a time. `None` when the peer closed.
pub trait FrameReader: Send + 'static {
    fn next_frame(&mut self) -> impl Future<Output = Option<Result<Bytes, ReadError>>> + Send;
    /// Called with the connection's outbox before the first `next_frame`, for a transport whose
    /// reader must wake the writer (WebSocket pongs).
    fn attach(&mut self, _outbox: &Arc<Outbox>) {}
}

/// Outgoing frames. Implementations write all frames of a batch and flush once.
pub trait FrameWriter: Send + 'static {
    /// Write every frame in `frames`, oldest first, leaving it empty.
    fn write_batch(
        &mut self,
        frames: &mut VecDeque<Bytes>,
    ) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Send the final `disconnect` frame (already encoded; `None` when the peer is gone) and
    /// close the transport.
    fn close(self, goodbye: Option<Bytes>, code: ErrorCode) -> impl Future<Output = ()> + Send;
}

/// Held while a connection counts against `max_connections`.
pub struct Permit {
    shared: Arc<Shared>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Permit {
    /// Take a connection slot, or `None` at the limit.
    pub fn acquire(shared: &Arc<Shared>) -> Option<Permit> {
        use std::sync::atomic::Ordering;
        let limit = shared.config.max_connections;
        let taken = shared
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            shared.metrics.rejected_connections.inc();
        }
        taken.then(|| Permit {
            shared: shared.clone(),
        })
    }
}

/// Run one connection to its end. `preauth` holds claims the transport verified already.
///
/// Not an `async fn`: its arguments would be kept in the future twice (as the function's and
/// as the inner block's), for the connection's whole life.
pub fn run<R: FrameReader, W: FrameWriter>(
    shared: Arc<Shared>,
    transport: Transport,
    mut reader: R,
    writer: W,
    preauth: Option<crate::access::Claims>,
    permit: Permit,
) -> impl Future<Output = ()> + Send {
    let id = shared.next_conn_id();
    let span = tracing::debug_span!(
        "conn",
        conn = id,
        transport = transport.as_str(),
        user = tracing::field::Empty
    );
    async move {
        let metrics = shared.metrics.transport(transport).clone();
        metrics.connections.inc();
        let session = Session::new(
            id,
            shared.config.session(),
            shared.keys.clone(),
            preauth,
            std::time::Instant::now(),
            crate::auth::unix_now(),
        );
        let outbox = Arc::new(Outbox::new(
            id,
            shared.config.outbox_bytes,
            shared.metrics.clone(),
        ));
        reader.attach(&outbox);
        let writer = tokio::spawn(
            write_loop(writer, outbox.clone(), metrics.clone(), shared.clone()).in_current_span(),
        );
        tracing::debug!("connected");
        let mailbox = Arc::new(Mailbox::default());
        let mut conn = Conn {
            shared: shared.clone(),
            session,
            outbox: outbox.clone(),
            mailbox,
            registered: None,
            docs: OpenDocs::default(),
            meetings: OpenMeetings::default(),
        };
        conn.read_loop(reader, &metrics).await;
        // Boxed: the goodbye's state exists only while the connection ends.
        Box::pin(conn.finish(writer)).await;
        metrics.connections.dec();
        drop(permit);
        tracing::debug!("closed");
    }
    .instrument(span)
}

struct Conn {
    shared: Arc<Shared>,
    session: Session,
    outbox: Arc<Outbox>,
    /// Where other tasks reach this connection, once registered under its user.
    mailbox: Arc<Mailbox>,
    registered: Option<String>,
    /// The documents this session has open (`doc.*`).
    docs: OpenDocs,
    /// The meetings this session is in (`meeting.*`).
    meetings: OpenMeetings,
}

impl Conn {
    /// Leave every channel, document, meeting and registry, then wait (bounded) for the writer
    /// to say goodbye.
    async fn finish(mut self, writer: tokio::task::JoinHandle<()>) {
        let (shared, id) = (&self.shared, self.session.id());
        for channel in self.session.subscriptions() {
            shared.hub.unsubscribe(channel, id);
        }
        std::mem::take(&mut self.docs).close_all().await;
        std::mem::take(&mut self.meetings).close_all(id).await;
        if let Some(user) = &self.registered {
            shared.users.unregister(user, id);
            shared.presence.disconnect(id).await;
        }
        let abort = writer.abort_handle();
        if tokio::time::timeout(CLOSE_GRACE, writer).await.is_err() {
            tracing::debug!("writer did not finish in time");
            abort.abort();
        }
    }

    async fn read_loop<R: FrameReader>(&mut self, mut reader: R, metrics: &TransportMetrics) {
        let shutdown = self.shared.shutdown.clone();
        let outbox = self.outbox.clone();
        let mailbox = self.mailbox.clone();
        // Made by the first `chat.*` request: most connections never send one.
        let mut in_flight: Option<InFlight> = None;
        loop {
            let deadline = self.session.poll_timeout().map(Instant::from_std);
            let reading = in_flight.as_ref().is_none_or(|f| f.len() < MAX_IN_FLIGHT);
            let answering = in_flight.as_ref().is_some_and(|f| !f.is_empty());
            tokio::select! {
                Some((request, result)) = next_answer(&mut in_flight), if answering => {
                    self.answer(&request, result);
                }
                frame = reader.next_frame(), if reading => match frame {
                    Some(Ok(frame)) => {
                        metrics.frames_in.inc();
                        metrics.bytes_in.inc_by(frame.len() as u64);
                        self.session.handle_frame(&frame, std::time::Instant::now());
                        // `hello` may have chosen the encoding; later frames, the goodbye
                        // included, use it.
                        self.outbox.set_encoding(self.session.encoding());
                    }
                    Some(Err(ReadError::TooLarge(message))) => {
                        self.session_close(ErrorCode::FrameTooLarge, message);
                    }
                    Some(Err(ReadError::Broken(reason))) => {
                        tracing::debug!(%reason, "transport failed");
                        self.outbox.close(CloseReason::abort(ErrorCode::MalformedFrame, reason, false));
                        return;
                    }
                    None => {
                        self.outbox.close(CloseReason::gone("the client closed the connection"));
                        return;
                    }
                },
                _ = sleep_until(deadline) => self.session.handle_timeout(std::time::Instant::now()),
                controls = mailbox.take() => {
                    for control in controls {
                        match control {
                            Control::Revoke { space, reason } => self.revoke(&space, &reason),
                            Control::RevokeChannel { channel, reason } => {
                                self.revoke_channel(&channel, &reason)
                            }
                        }
                    }
                }
                _ = shutdown.cancelled(), if !self.session.is_closed() => self.session.shutdown(),
                _ = outbox.closed() => return,
            }
            if self.drain_outputs(&mut in_flight).await {
                return;
            }
        }
    }

    fn session_close(&mut self, code: ErrorCode, message: String) {
        self.outbox
            .close(CloseReason::graceful(code, message, false));
    }

    /// End every subscription to channels of `space`.
    fn revoke(&mut self, space: &str, reason: &str) {
        let channels: Vec<String> = self
            .session
            .subscriptions()
            .filter(|c| ChannelRef::parse(c).is_ok_and(|c| c.space() == Some(space)))
            .map(str::to_string)
            .collect();
        for channel in channels {
            self.shared.hub.unsubscribe(&channel, self.session.id());
            self.session.revoke(&channel, ErrorCode::Forbidden, reason);
        }
        self.meetings.revoke_space(self.session.id(), space);
    }

    /// End the subscription to `channel`, if any.
    fn revoke_channel(&mut self, channel: &str, reason: &str) {
        self.meetings.revoke_channel(self.session.id(), channel);
        if self.session.subscriptions().any(|c| c == channel) {
            self.shared.hub.unsubscribe(channel, self.session.id());
            self.session.revoke(channel, ErrorCode::Forbidden, reason);
        }
    }

    /// Act on everything the session wants; returns true once the connection is closing.
    /// `chat.*` requests are submitted in the order they came and join `in_flight`; the
    /// others run here, one at a time.
    async fn drain_outputs(&mut self, in_flight: &mut Option<InFlight>) -> bool {
        if self.registered.is_none()
            && let Some(claims) = self.session.claims()
        {
            let user = claims.sub.clone();
            tracing::Span::current().record("user", user.as_str());
            self.shared
                .users
                .register(&user, self.mailbox.clone(), self.outbox.clone());
            self.registered = Some(user);
            let presence = self.shared.presence.connect(
                &self.shared.spaces,
                self.session.id(),
                claims,
                self.outbox.clone(),
            );
            Box::pin(presence).await;
        }
        while let Some(output) = self.session.poll_output() {
            match output {
                Output::Send(frame) => self.send(&frame),
                // The presence task queues the reply itself, so a subscription's snapshot
                // comes before its first update.
                Output::Execute(ClientFrame::Presence(request)) => {
                    let id = request.id();
                    let claims = self
                        .session
                        .claims()
                        .expect("requests run on ready sessions");
                    let done = self.shared.presence.execute(
                        &self.shared.spaces,
                        claims,
                        self.session.id(),
                        request,
                    );
                    if let Err(e) = Box::pin(done).await {
                        self.send(&ServerFrame::error(Some(id), e.code, e.message));
                    }
                }
                // The meeting's task queues the reply itself, before the frames that follow it.
                Output::Execute(ClientFrame::Meeting(request)) => {
                    let id = request.id();
                    let claims = self
                        .session
                        .claims()
                        .expect("requests run on ready sessions")
                        .clone();
                    let conn = self.session.id();
                    let done =
                        (self.meetings).execute(&self.shared, &claims, conn, &self.outbox, request);
                    match Box::pin(done).await {
                        Ok(None) => {}
                        Ok(Some(result)) => self.send(&ServerFrame::reply(id, result)),
                        Err(e) => self.send(&ServerFrame::error(Some(id), e.code, e.message)),
                    }
                }
                // Submitting one waits until it is decided or queued in the store, so a room's
                // offsets follow the order of a connection's sends.
                Output::Execute(ClientFrame::Chat(request)) => {
                    let shared = &self.shared;
                    let claims = self
                        .session
                        .claims()
                        .expect("requests run on ready sessions");
                    let now_ms = crate::server::unix_ms();
                    let submit =
                        shared
                            .chat
                            .submit(&shared.spaces, &shared.users, claims, &request, now_ms);
                    let submitted = Box::pin(submit).await;
                    let request = ClientFrame::Chat(request);
                    match submitted {
                        Ok(ack) => in_flight
                            .get_or_insert_with(InFlight::new)
                            .push(Box::pin(async move { (request, ack.await) })),
                        Err(e) => self.session.fail(&request, e.code, e.message),
                    }
                }
                // Boxed: the request's future is large and lives only while it runs, so idle
                // connections do not carry its state.
                Output::Execute(request) => {
                    let result = Box::pin(self.execute(&request)).await;
                    self.answer(&request, result);
                }
                Output::Close {
                    code,
                    message,
                    reconnect,
                } => {
                    // What is in flight commits anyway: acknowledge it before the goodbye.
                    while let Some((request, result)) = next_answer(in_flight).await {
                        self.answer(&request, result);
                    }
                    while let Some(Output::Send(frame)) = self.session.poll_output() {
                        self.send(&frame);
                    }
                    self.outbox
                        .close(CloseReason::graceful(code, message, reconnect));
                    return true;
                }
            }
        }
        self.outbox.is_closed()
    }

    /// Hand an executed request's result to the session, which replies.
    fn answer(&mut self, request: &ClientFrame, result: Result<serde_json::Value, ServiceError>) {
        match result {
            Ok(result) => self
                .session
                .reply(request.id().expect("executed frames are requests"), result),
            Err(e) => self.session.fail(request, e.code, e.message),
        }
    }

    fn send(&self, frame: &ServerFrame) {
        let frame = encode_server(frame, self.session.encoding());
        // A full outbox closes itself as a slow consumer; the loop notices and ends.
        let _ = self.outbox.push(frame, Instant::now());
    }

    async fn execute(&mut self, request: &ClientFrame) -> Result<serde_json::Value, ServiceError> {
        let claims = self
            .session
            .claims()
            .expect("requests run only on ready sessions")
            .clone();
        Ok(match request {
            ClientFrame::Doc(request) => {
                let conn = self.session.id();
                let request = request.clone();
                (self.docs)
                    .execute(&self.shared, &claims, conn, &self.outbox, request)
                    .await?
            }
            ClientFrame::Subscribe { channel, from, .. } if channel.starts_with("room:") => {
                let shared = &self.shared;
                shared
                    .chat
                    .subscribe(&shared.spaces, &claims, channel, *from, &self.outbox)
                    .await?
            }
            ClientFrame::Subscribe { channel, .. } => {
                self.shared
                    .authorize_channel(&claims, Action::Subscribe, channel)
                    .await?;
                let position = self
                    .shared
                    .hub
                    .subscribe(channel, &self.outbox)
                    .map_err(|e| ServiceError::new(ErrorCode::AlreadySubscribed, e.to_string()))?;
                json!({ "channel": channel, "epoch": position.epoch, "offset": position.offset })
            }
            ClientFrame::Unsubscribe { channel, .. } => {
                self.shared.hub.unsubscribe(channel, self.session.id());
                json!({ "channel": channel })
            }
            ClientFrame::Publish { channel, data, .. } => {
                self.shared.publish(&claims, channel, data).await?
            }
            ClientFrame::Space(request) => self.shared.space_request(&claims, request).await?,
            ClientFrame::Hello { .. } | ClientFrame::Ping { .. } | ClientFrame::Pong => {
                unreachable!("the session answers these itself")
            }
            ClientFrame::Presence(_) => unreachable!("drain_outputs hands these to presence"),
            ClientFrame::Chat(_) => unreachable!("drain_outputs submits these"),
            ClientFrame::Meeting(_) => unreachable!("drain_outputs hands these to meetings"),
        })
    }
}

/// The next request in flight to resolve; `None` when there are none.
async fn next_answer(
    in_flight: &mut Option<InFlight>,
) -> Option<(ClientFrame, Result<serde_json::Value, ServiceError>)> {
    in_flight.as_mut()?.next().await
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn write_loop<W: FrameWriter>(
    mut writer: W,
    outbox: Arc<Outbox>,
    metrics: TransportMetrics,
    shared: Arc<Shared>,
) {
    let mut batch = VecDeque::new();
    loop {
        match outbox.next_batch(&mut batch).await {
            Batch::Frames(oldest) => {
                // Empty frames only wake the writer (WebSocket pongs): they are not counted.
                let (frames, bytes) = (batch.iter()).fold((0u64, 0usize), |(n, b), f| {
                    (n + u64::from(!f.is_empty()), b + f.len())
                });
                // The write first: it usually completes at once, and then nothing waits on
                // the abort.
                let written = tokio::select! {
                    biased;
                    r = writer.write_batch(&mut batch) => r,
                    // A slow consumer's socket may never drain: stop waiting for it.
                    () = outbox.aborted() => Err(std::io::ErrorKind::TimedOut.into()),
                };
                batch.clear();
                if let Err(e) = written {
                    if outbox.is_aborted() {
                        // Closed as a slow consumer mid-write: still try to say why.
                        continue;
                    }
                    tracing::debug!(error = %e, "write failed");
                    outbox.close(CloseReason::gone(e.to_string()));
                    return;
                }
                metrics.frames_out.inc_by(frames);
                metrics.bytes_out.inc_by(bytes as u64);
                shared
                    .metrics
                    .publish_to_write
                    .observe(oldest.elapsed().as_secs_f64());
            }
            Batch::Closed(reason) => {
                if reason.code == ErrorCode::SlowConsumer {
                    tracing::warn!("disconnecting a slow consumer");
                }
                let goodbye = reason.goodbye.then(|| {
                    let frame = ServerFrame::Disconnect {
                        code: reason.code,
                        message: reason.message,
                        reconnect: reason.reconnect,
                    };
                    encode_server(&frame, outbox.encoding())
                });
                // Boxed: an idle writer's future need not hold the goodbye's state.
                let close = Box::pin(tokio::time::timeout(
                    CLOSE_GRACE,
                    writer.close(goodbye, reason.code),
                ));
                let _ = close.await;
                return;
            }
        }
    }
}
