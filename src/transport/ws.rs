//! WebSocket transport: one WebSocket message per frame. JSON frames travel as text messages,
//! MessagePack frames as binary messages.

use crate::connection::{self, FrameReader, FrameWriter, Permit, ReadError};
use crate::metrics::Transport;
use crate::protocol::ErrorCode;
use crate::server::Shared;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

type Stream = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Buffers sized for many idle connections: a small read buffer, and a write threshold that
/// still lets one flush carry a large batch.
pub fn ws_config(shared: &Shared) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(shared.config.ws_read_buffer)
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(shared.config.outbox_bytes * 2 + 64 * 1024)
        .max_message_size(Some(shared.config.max_frame_bytes))
        .max_frame_size(Some(shared.config.max_frame_bytes))
}

/// Serve one upgraded HTTP connection.
pub async fn run(
    shared: Arc<Shared>,
    upgraded: hyper::upgrade::Upgraded,
    preauth: Option<crate::access::Claims>,
    permit: Permit,
) {
    let config = ws_config(&shared);
    let stream =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let (sink, stream) = stream.split();
    connection::run(
        shared,
        Transport::Ws,
        Reader(stream),
        Writer(sink),
        preauth,
        permit,
    )
    .await;
}

struct Reader(SplitStream<Stream>);

impl FrameReader for Reader {
    async fn next_frame(&mut self) -> Option<Result<Bytes, ReadError>> {
        loop {
            return match self.0.next().await? {
                Ok(Message::Text(text)) => Some(Ok(Bytes::from(text))),
                Ok(Message::Binary(bytes)) => Some(Ok(bytes)),
                // Control frames are answered by tungstenite itself.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(Message::Close(_)) => None,
                Err(WsError::Capacity(e)) => Some(Err(ReadError::TooLarge(e.to_string()))),
                Err(e) => Some(Err(ReadError::Broken(e.to_string()))),
            };
        }
    }
}

struct Writer(SplitSink<Stream, Message>);

/// Wrap an encoded frame in the WebSocket message of its encoding.
fn message(frame: Bytes) -> Message {
    if frame.first() == Some(&b'{') {
        // SAFETY: outboxes hold only frames made by `protocol::encode_server` and
        // `encode_message`. Their JSON output is UTF-8; their MessagePack output is a map,
        // whose first byte (0x80..=0x8f, 0xde, 0xdf) is never `{`.
        Message::Text(unsafe { Utf8Bytes::from_bytes_unchecked(frame) })
    } else {
        Message::Binary(frame)
    }
}

fn close_code(code: ErrorCode) -> CloseCode {
    match code {
        ErrorCode::ShuttingDown => CloseCode::Away,
        ErrorCode::FrameTooLarge => CloseCode::Size,
        ErrorCode::Internal => CloseCode::Error,
        _ => CloseCode::Policy,
    }
}

impl FrameWriter for Writer {
    async fn write_batch(&mut self, frames: &mut VecDeque<Bytes>) -> std::io::Result<()> {
        for frame in frames.drain(..) {
            // `feed` only appends to tungstenite's buffer (and writes when it passes the
            // threshold); the one `flush` below sends what is left.
            self.0
                .feed(message(frame))
                .await
                .map_err(std::io::Error::other)?;
        }
        self.0.flush().await.map_err(std::io::Error::other)
    }

    async fn close(mut self, goodbye: Option<Bytes>, code: ErrorCode) {
        if let Some(goodbye) = goodbye {
            let _ = self.0.feed(message(goodbye)).await;
            let close = CloseFrame {
                code: close_code(code),
                reason: Utf8Bytes::from_static(code.as_str()),
            };
            let _ = self.0.send(Message::Close(Some(close))).await;
        }
        let _ = self.0.close().await;
    }
}
