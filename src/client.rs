//! A small client for the session protocol over WebSocket or QUIC, used by the integration tests
//! and by `chorus bench`. It speaks the wire format of `docs/protocol.md` and nothing more.

use crate::protocol::framing::{FrameDecoder, encode_frame};
use crate::protocol::{Encoding, ServerFrame};
use anyhow::{Context, anyhow, bail};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};
use std::net::SocketAddr;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

enum Inner {
    Ws(Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
    Quic {
        // Kept so the connection lives as long as its streams.
        _connection: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        decoder: FrameDecoder,
    },
}

/// The largest frame the client accepts from a server.
const MAX_SERVER_FRAME: usize = 16 << 20;

pub struct Client {
    inner: Inner,
    encoding: Encoding,
    next_id: u64,
}

/// A request answered with an error frame.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RequestError {
    pub code: String,
    pub message: String,
}

impl Client {
    /// Connect to `url` (`ws://host:port/ws`, optionally with `?token=`), with an optional
    /// bearer token in the `Authorization` header.
    pub async fn connect_ws(url: &str, bearer: Option<&str>) -> anyhow::Result<Client> {
        let mut request = url.into_client_request().context("bad WebSocket URL")?;
        if let Some(token) = bearer {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
        }
        let (stream, _) = tokio_tungstenite::connect_async(request).await?;
        if let MaybeTlsStream::Plain(tcp) = stream.get_ref() {
            tcp.set_nodelay(true)?;
        }
        Ok(Client::new(Inner::Ws(Box::new(stream))))
    }

    /// Connect over QUIC, trusting `roots` (for a default server: its data dir's `quic-cert.pem`).
    pub async fn connect_quic(
        addr: SocketAddr,
        roots: &[CertificateDer<'static>],
    ) -> anyhow::Result<Client> {
        let endpoint = crate::transport::quic::client_endpoint(roots)?;
        let (connection, send, recv) =
            crate::transport::quic::connect(&endpoint, addr, "localhost").await?;
        Ok(Client::new(Inner::Quic {
            _connection: connection,
            send,
            recv,
            decoder: FrameDecoder::new(MAX_SERVER_FRAME),
        }))
    }

    fn new(inner: Inner) -> Client {
        Client {
            inner,
            encoding: Encoding::Json,
            next_id: 1,
        }
    }

    /// Send one frame as it is, bytes and all.
    pub async fn send_raw(&mut self, frame: &[u8]) -> anyhow::Result<()> {
        match &mut self.inner {
            Inner::Ws(ws) => {
                let message = match std::str::from_utf8(frame) {
                    Ok(text) if frame.first() == Some(&b'{') => Message::text(text),
                    _ => Message::binary(frame.to_vec()),
                };
                ws.send(message).await?;
            }
            Inner::Quic { send, .. } => {
                let mut buf = BytesMut::new();
                encode_frame(frame, &mut buf);
                send.write_all(&buf).await?;
            }
        }
        Ok(())
    }

    /// Send a frame in the client's encoding.
    pub async fn send(&mut self, frame: &Value) -> anyhow::Result<()> {
        let bytes = match self.encoding {
            Encoding::Json => serde_json::to_vec(frame)?,
            Encoding::Msgpack => rmp_serde::to_vec_named(frame)?,
        };
        self.send_raw(&bytes).await
    }

    /// The next frame's bytes, or `None` once the server closed the connection.
    pub async fn recv_raw(&mut self) -> anyhow::Result<Option<Bytes>> {
        match &mut self.inner {
            Inner::Ws(ws) => loop {
                match ws.next().await {
                    None | Some(Ok(Message::Close(_))) => return Ok(None),
                    Some(Ok(Message::Text(t))) => return Ok(Some(Bytes::from(t))),
                    Some(Ok(Message::Binary(b))) => return Ok(Some(b)),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                }
            },
            Inner::Quic { recv, decoder, .. } => loop {
                if let Some(frame) = decoder.next_frame()? {
                    return Ok(Some(frame));
                }
                match recv.read_chunk(64 * 1024, true).await {
                    Ok(Some(chunk)) => decoder.push(&chunk.bytes),
                    Ok(None) => return Ok(None),
                    Err(quinn::ReadError::ConnectionLost(_)) => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
            },
        }
    }

    /// The next frame, decoded whatever its encoding; `None` once the server closed.
    pub async fn recv(&mut self) -> anyhow::Result<Option<ServerFrame>> {
        let Some(bytes) = self.recv_raw().await? else {
            return Ok(None);
        };
        Ok(Some(match Encoding::sniff(&bytes) {
            Some(Encoding::Json) => serde_json::from_slice(&bytes)?,
            Some(Encoding::Msgpack) => rmp_serde::from_slice(&bytes)?,
            None => bail!("the server sent a frame in no known encoding"),
        }))
    }

    /// The next frame, failing if the connection closes first.
    pub async fn expect(&mut self) -> anyhow::Result<ServerFrame> {
        self.recv()
            .await?
            .ok_or_else(|| anyhow!("the server closed the connection"))
    }

    /// Send `hello` with an optional token and encoding; returns the welcome.
    pub async fn hello(
        &mut self,
        token: Option<&str>,
        encoding: Encoding,
    ) -> anyhow::Result<Value> {
        let mut frame = json!({ "type": "hello", "version": 1, "encoding": encoding });
        if let Some(token) = token {
            frame["token"] = json!(token);
        }
        let welcome = self
            .request(frame)
            .await?
            .map_err(|e| anyhow!("hello refused: {e}"))?;
        self.encoding = encoding;
        Ok(welcome)
    }

    /// Send a request (an `id` is added) and wait for its reply. Frames of other kinds that
    /// arrive meanwhile (messages, pings) are skipped; use `recv` where they matter.
    pub async fn request(
        &mut self,
        mut frame: Value,
    ) -> anyhow::Result<Result<Value, RequestError>> {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = json!(id);
        self.send(&frame).await?;
        loop {
            match self.expect().await? {
                ServerFrame::Reply { id: got, result } if got == id => return Ok(Ok(result)),
                ServerFrame::Error {
                    id: Some(got),
                    code,
                    message,
                } if got == id => {
                    return Ok(Err(RequestError {
                        code: code.as_str().into(),
                        message,
                    }));
                }
                ServerFrame::Disconnect { code, message, .. } => {
                    bail!("disconnected: {code}: {message}")
                }
                _ => continue,
            }
        }
    }

    /// Like `request`, failing on an error reply.
    pub async fn call(&mut self, frame: Value) -> anyhow::Result<Value> {
        Ok(self.request(frame).await??)
    }
}
