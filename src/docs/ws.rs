//! The y-websocket endpoint, `/yjs/{doc}?token=…`: what the `y-websocket` provider (and every
//! Yjs app built on it) connects to.
//!
//! Admission happens after the upgrade, so a refusal reaches the provider in a form it
//! understands: the auth message "permission denied" with the reason, then a close code in
//! 4400–4499, which the provider treats as final (a refused upgrade would make it retry for
//! ever). Admitted connections exchange binary y-websocket frames with the document's task.

use super::Wire;
use super::open::{open, viewing};
use super::sync::permission_denied;
use crate::access::Claims;
use crate::connection::Permit;
use crate::hub::{Batch, CloseReason, Outbox};
use crate::metrics::Transport;
use crate::protocol::{ErrorCode, PresenceRequest};
use crate::server::Shared;
use crate::spaces::ServiceError;
use crate::store::DocRecord;
use crate::transport::ws::{self, Upgraded, WsReadError, WsReader, WsWriter};
use crate::transport::wsframe::{self, OpCode};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a closing connection's last frames may take to leave.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What the client asked for in the URL.
pub struct Request {
    pub doc: String,
    pub token: Option<String>,
    /// The space a new document is created in (default: the organisation's home space).
    pub space: Option<String>,
}

/// Serve one upgraded connection on `/yjs/`.
pub async fn run(shared: Arc<Shared>, upgraded: Upgraded, request: Request, permit: Permit) {
    let (mut reader, writer) = ws::split(upgraded, shared.config.doc_max_bytes, |_| OpCode::Binary);
    let admitted = admit(&shared, &request).await;
    let (doc, claims, read_only) = match admitted {
        Ok(admitted) => admitted,
        Err(e) => {
            tracing::debug!(doc = request.doc, error = %e.message, "document refused");
            let refusal = permission_denied(&e.message);
            writer
                .close(Some(refusal), Some((close_status(e.code), &e.message)))
                .await;
            drain(&mut reader).await;
            return;
        }
    };
    let conn = shared.next_conn_id();
    let span = tracing::debug_span!("yjs", conn, doc = doc.id, user = claims.sub);
    let _permit = permit;
    let outbox = Arc::new(Outbox::new(
        conn,
        shared.config.outbox_bytes.max(shared.config.doc_max_bytes),
        shared.metrics.clone(),
    ));
    let joined = match shared
        .docs
        .join(&doc.id, conn, outbox.clone(), Wire::YWebsocket, read_only)
        .await
    {
        Ok(joined) => joined,
        Err(message) => {
            let status = close_status(ErrorCode::Internal);
            writer.close(None, Some((status, &message))).await;
            return;
        }
    };
    reader.attach(&outbox);
    tracing::debug!(parent: &span, read_only, "document opened");
    // Counted with the WebSocket connections (frames written are not: they leave through the
    // outbox, whose depth and delay are measured there).
    let metrics = shared.metrics.transport(Transport::Ws).clone();
    metrics.connections.inc();
    // Viewers show in presence, in the room `doc:<id>` of the document's space.
    shared
        .presence
        .connect(&shared.spaces, conn, &claims, outbox.clone())
        .await;
    if let Err(e) = shared.presence.tell(conn, viewing(&doc, true)).await {
        tracing::debug!(parent: &span, error = %e.message, "viewer not shown in presence");
    }
    let writer = tokio::spawn(write_loop(writer, outbox.clone()));
    let activity_every = Duration::from_millis(shared.config.presence_idle_timeout_ms / 10);
    let mut last_activity = Instant::now();
    loop {
        let message = tokio::select! {
            m = reader.next_message() => m,
            _ = outbox.closed() => break,
            _ = shared.shutdown.cancelled() => {
                outbox.close(CloseReason::graceful(ErrorCode::ShuttingDown, "the server is shutting down", true));
                break;
            }
        };
        match message {
            Ok(Some(message)) if !message.text => {
                let frame = message.payload;
                metrics.frames_in.inc();
                metrics.bytes_in.inc_by(frame.len() as u64);
                // An edit is activity: without it, a user who only edits through y-websocket
                // would turn away after the idle timeout. Reported at most once a tenth of it.
                let edit = frame.starts_with(&[0, 1]) || frame.starts_with(&[0, 2]);
                if edit && last_activity.elapsed() >= activity_every {
                    last_activity = Instant::now();
                    let activity = PresenceRequest::Activity { id: 0 };
                    let _ = shared.presence.tell(conn, activity).await;
                }
                if !joined.frame(frame).await {
                    break;
                }
            }
            Ok(Some(_)) => {
                outbox.close(CloseReason::graceful(
                    ErrorCode::MalformedFrame,
                    "y-websocket frames are binary",
                    false,
                ));
                break;
            }
            Err(WsReadError::Protocol(e)) => {
                let code = match e {
                    wsframe::Error::TooLarge { .. } => ErrorCode::FrameTooLarge,
                    _ => ErrorCode::MalformedFrame,
                };
                outbox.close(CloseReason::graceful(code, e.to_string(), false));
                break;
            }
            Ok(None) | Err(WsReadError::Io(_)) => break,
        }
    }
    joined.leave().await;
    shared.presence.disconnect(conn).await;
    outbox.close(CloseReason::gone("closed"));
    let abort = writer.abort_handle();
    if tokio::time::timeout(CLOSE_GRACE, writer).await.is_err() {
        abort.abort();
    }
    drain(&mut reader).await;
    metrics.connections.dec();
    tracing::debug!(parent: &span, "document connection closed");
}

/// Read what the client still sends until its close frame or the end of the socket (for at
/// most `CLOSE_GRACE`): closing a socket with unread data resets it, and the client would lose
/// the last frames, the refusal and the close code among them.
async fn drain(reader: &mut WsReader) {
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Ok(Some(_)) = reader.next_message().await {}
    })
    .await;
}

/// Write the outbox's frames as binary messages until it closes; then close the socket with
/// the reason's code.
async fn write_loop(mut writer: WsWriter, outbox: Arc<Outbox>) {
    let mut batch = VecDeque::new();
    loop {
        match outbox.next_batch(&mut batch).await {
            Batch::Frames(_) => {
                if writer.write_frames(&mut batch).await.is_err() {
                    return;
                }
            }
            Batch::Closed(reason) => {
                let status = close_status(reason.code);
                let close = reason.goodbye.then_some((status, reason.message.as_str()));
                writer.close(None, close).await;
                return;
            }
        }
    }
}

/// The close status for `code`. The provider gives up on 4400–4499 and reconnects on others.
fn close_status(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::MalformedFrame | ErrorCode::InvalidRequest => 4400,
        ErrorCode::InvalidToken | ErrorCode::TokenExpired => 4401,
        ErrorCode::Forbidden => 4403,
        ErrorCode::NotFound => 4404,
        ErrorCode::FrameTooLarge => 4413,
        ErrorCode::ShuttingDown => 1001,
        ErrorCode::SlowConsumer | ErrorCode::RateLimited => 1013,
        _ => 1011,
    }
}

/// The token's user, the document (created if the configuration allows), and whether the
/// user may only read it.
async fn admit(
    shared: &Shared,
    request: &Request,
) -> Result<(DocRecord, Claims, bool), ServiceError> {
    let token = request.token.as_deref().ok_or_else(|| {
        ServiceError::new(ErrorCode::InvalidToken, "a token is required (?token=…)")
    })?;
    let claims = shared
        .keys
        .verify(token, crate::auth::unix_now())
        .map_err(|e| ServiceError::new(e.code(), e.to_string()))?;
    let (doc, read_only) = open(shared, &claims, &request.doc, request.space.as_deref()).await?;
    Ok((doc, claims, read_only))
}
