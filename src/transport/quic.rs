//! QUIC transport (ALPN `chorus/1`). The client opens one bidirectional stream, the control
//! stream, right after the handshake; frames on it travel both ways with a 4-byte big-endian
//! length prefix (`protocol::framing`). The token comes in `hello`, never at the transport level.
//!
//! Any further stream the client opens is refused with `STREAM_NOT_SUPPORTED`, and datagrams are
//! disabled: later protocol versions add streams per ordered flow, datagrams for ephemeral state,
//! and WebTransport (`h3`) on the same port, and v1 clients must not depend on either.
//!
//! Application error codes (QUIC CONNECTION_CLOSE and stream codes); the close reason is the
//! `ErrorCode` string of the `disconnect` frame sent just before, e.g. `frame_too_large`:
//!
//! | code    | meaning                                                              |
//! |---------|----------------------------------------------------------------------|
//! | `0x0`   | normal close: the server is shutting down (`shutting_down`)          |
//! | `0x1`   | the client broke the protocol (`frame_too_large`, `malformed_frame`…) |
//! | `0x2`   | policy: auth, limits, rate, timeouts, slow consumer                  |
//! | `0x3`   | server error (`internal`)                                            |
//! | `0x101` | stream code: stream not supported in protocol v1                     |

use crate::config::Config;
use crate::connection::{self, FrameReader, FrameWriter, Permit, ReadError};
use crate::datadir;
use crate::metrics::Transport;
use crate::protocol::ErrorCode;
use crate::protocol::framing::{self, FrameDecoder, FramingError};
use crate::server::Shared;
use anyhow::Context;
use bytes::{Buf, Bytes, BytesMut};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, IdleTimeout, VarInt};
use rustls::pki_types::CertificateDer;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The ALPN protocol id of session protocol v1 over QUIC.
pub const ALPN: &[u8] = b"chorus/1";

/// Connection close code: normal close (`shutting_down`, and the endpoint closing).
pub const CLOSE_NORMAL: u32 = 0x0;
/// Connection close code: the client broke the protocol.
pub const CLOSE_PROTOCOL: u32 = 0x1;
/// Connection close code: refused by policy (auth, limits, rate, timeouts, slow consumer).
pub const CLOSE_POLICY: u32 = 0x2;
/// Connection close code: the server failed.
pub const CLOSE_INTERNAL: u32 = 0x3;
/// Stream error code (STOP_SENDING / RESET_STREAM) for every stream but the control stream.
pub const STREAM_NOT_SUPPORTED: u32 = 0x101;

/// How long `close` waits for the peer to acknowledge the goodbye frame before closing the
/// connection anyway (well inside `connection::CLOSE_GRACE`).
const GOODBYE_GRACE: Duration = Duration::from_secs(1);
/// Extra idle time QUIC allows beyond `client_timeout_ms`, so the session's own timeout (which
/// says why) fires first; QUIC's idle timeout only reaps peers that vanished.
const IDLE_MARGIN: Duration = Duration::from_secs(5);
/// Smallest control-stream receive window, so small `max_frame_bytes` settings still stream well.
const MIN_STREAM_WINDOW: u64 = 64 * 1024;
/// Connection receive window beyond the control stream's: room for the few bytes a client may
/// put on streams we refuse before our STOP_SENDING arrives.
const EXTRA_CONN_WINDOW: u64 = 16 * 1024;
/// Bounds of the per-connection send buffer (unacknowledged bytes quinn holds).
const SEND_WINDOW: (u64, u64) = (64 * 1024, 1024 * 1024);
/// After a write batch larger than this, the writer drops its buffer instead of keeping it.
const WRITE_RETAIN: usize = 16 * 1024;

/// The server's transport parameters, sized for many mostly idle connections.
///
/// * Idle timeout `client_timeout_ms + 5 s`: the session's heartbeat and timeout are the real
///   liveness check.
/// * Streams: 4 concurrent bidirectional (the control stream, and room to refuse a few with a
///   clear code), 1 unidirectional (refused too); datagrams off.
/// * Receive windows: control stream `max(2 × max_frame_bytes, 64 KiB)` (128 KiB by default): a
///   full frame in flight plus the next. Connection: that plus 16 KiB. Windows cost nothing
///   until used; they bound what one client can make us buffer.
/// * Send window `outbox_bytes` clamped to 64 KiB..1 MiB (1 MiB by default): enough for the
///   bandwidth-delay product of one client; the outbox is where a backlog waits (and overflows
///   into `slow_consumer`).
pub fn transport_config(config: &Config) -> anyhow::Result<quinn::TransportConfig> {
    let idle = Duration::from_millis(config.client_timeout_ms) + IDLE_MARGIN;
    let stream_window = (2 * config.max_frame_bytes as u64).max(MIN_STREAM_WINDOW);
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            IdleTimeout::try_from(idle).context("idle timeout out of range")?,
        ))
        .max_concurrent_bidi_streams(4u32.into())
        .max_concurrent_uni_streams(1u32.into())
        .stream_receive_window(VarInt::from_u64(stream_window)?)
        .receive_window(VarInt::from_u64(stream_window + EXTRA_CONN_WINDOW)?)
        .send_window((config.outbox_bytes as u64).clamp(SEND_WINDOW.0, SEND_WINDOW.1))
        .datagram_receive_buffer_size(None)
        .keep_alive_interval(None);
    Ok(transport)
}

/// Bind the QUIC endpoint on `quic_listen` with the configured (or generated) certificate.
pub fn endpoint(config: &Config) -> anyhow::Result<quinn::Endpoint> {
    let (cert_path, key_path) = datadir::tls_paths(config)?;
    let certs = datadir::load_certs(&cert_path)?;
    let key = datadir::load_key(&key_path)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| format!("bad certificate or key in {}", cert_path.display()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No 0-RTT: `hello` carries the token and must not be replayable.
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport_config(config)?));
    let socket = udp_socket(config.quic_listen)
        .with_context(|| format!("cannot listen on {} (UDP)", config.quic_listen))?;
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )?)
}

/// Socket buffers for one UDP socket that carries every QUIC connection: with the kernel's
/// default (~208 KiB), a burst of handshakes overflows it and packets are dropped.
const UDP_BUFFER: usize = 4 << 20;

fn udp_socket(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    // The kernel caps the sizes at net.core.rmem_max / wmem_max; smaller buffers still work.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    if let Ok(got) = socket.recv_buffer_size()
        && got < UDP_BUFFER
    {
        tracing::info!(
            got,
            wanted = UDP_BUFFER,
            "UDP receive buffer capped by the kernel; raise net.core.rmem_max for handshake bursts"
        );
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Accept connections until shutdown.
pub async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    loop {
        let incoming = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => break,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { break };
        let Some(permit) = Permit::acquire(&shared) else {
            tracing::debug!(remote = %incoming.remote_address(), "refused a QUIC connection: at the limit");
            incoming.refuse();
            continue;
        };
        shared
            .tasks
            .spawn(serve_connection(shared.clone(), incoming, permit));
    }
    tracing::debug!("QUIC accept loop stopped");
}

/// Wait for one step of connection set-up, at most `limit`, and not past shutdown.
async fn set_up<T>(
    shared: &Shared,
    limit: Duration,
    step: impl Future<Output = T>,
) -> Result<T, ErrorCode> {
    tokio::select! {
        out = step => Ok(out),
        _ = tokio::time::sleep(limit) => Err(ErrorCode::Timeout),
        _ = shared.shutdown.cancelled() => Err(ErrorCode::ShuttingDown),
    }
}

/// Handshake, take the control stream, and run the session over it. The handshake and the
/// control stream get `hello_timeout_ms` each; then the session's own timers take over.
async fn serve_connection(shared: Arc<Shared>, incoming: quinn::Incoming, permit: Permit) {
    let remote = incoming.remote_address();
    let limit = Duration::from_millis(shared.config.hello_timeout_ms);
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => return tracing::debug!(%remote, error = %e, "QUIC accept failed"),
    };
    // Dropping an unfinished handshake abandons it.
    let connection = match set_up(&shared, limit, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "QUIC handshake failed"),
        Err(code) => {
            return tracing::debug!(%remote, code = code.as_str(), "QUIC handshake abandoned");
        }
    };
    // A stream reaches us with its first byte, so this waits for the client's `hello`. Without
    // a stream there is nowhere to put a `disconnect` frame: the close reason says why.
    let (send, recv) = match set_up(&shared, limit, connection.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => {
            return tracing::debug!(%remote, error = %e, "QUIC connection ended before its control stream");
        }
        Err(code) => {
            tracing::debug!(%remote, code = code.as_str(), "no QUIC control stream");
            return close(&connection, code);
        }
    };
    tracing::debug!(%remote, "QUIC control stream open");
    shared.tasks.spawn(refuse_streams(connection.clone()));
    let reader = Reader {
        recv,
        decoder: FrameDecoder::new(shared.config.max_frame_bytes),
    };
    let writer = Writer {
        send,
        connection: connection.clone(),
        buf: BytesMut::new(),
    };
    connection::run(shared, Transport::Quic, reader, writer, None, permit).await;
    // The writer closed it already, unless it ran out of time; this also ends `refuse_streams`.
    close(&connection, ErrorCode::Internal);
}

/// Refuse every stream after the control stream, until the connection ends.
async fn refuse_streams(connection: quinn::Connection) {
    let code = VarInt::from_u32(STREAM_NOT_SUPPORTED);
    loop {
        tokio::select! {
            bi = connection.accept_bi() => {
                let Ok((mut send, mut recv)) = bi else { return };
                let _ = recv.stop(code);
                let _ = send.reset(code);
            }
            uni = connection.accept_uni() => {
                let Ok(mut recv) = uni else { return };
                let _ = recv.stop(code);
            }
        }
    }
}

/// The connection close code for a `disconnect` code.
pub fn close_code(code: ErrorCode) -> u32 {
    match code {
        ErrorCode::ShuttingDown => CLOSE_NORMAL,
        ErrorCode::FrameTooLarge
        | ErrorCode::MalformedFrame
        | ErrorCode::UnknownType
        | ErrorCode::InvalidRequest
        | ErrorCode::HelloRequired
        | ErrorCode::AlreadyHello
        | ErrorCode::UnsupportedVersion => CLOSE_PROTOCOL,
        ErrorCode::Internal => CLOSE_INTERNAL,
        _ => CLOSE_POLICY,
    }
}

fn close(connection: &quinn::Connection, code: ErrorCode) {
    // Only the first close counts; later ones are no-ops.
    connection.close(close_code(code).into(), code.as_str().as_bytes());
}

struct Reader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

impl FrameReader for Reader {
    /// Cancel-safe: `read_chunk` is, and the decoder keeps every byte read.
    async fn next_frame(&mut self) -> Option<Result<Bytes, ReadError>> {
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => return Some(Ok(frame)),
                Ok(None) => {}
                Err(e @ FramingError::TooLarge { .. }) => {
                    return Some(Err(ReadError::TooLarge(e.to_string())));
                }
                Err(e @ FramingError::Empty) => return Some(Err(ReadError::Broken(e.to_string()))),
            }
            match self.recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => self.decoder.push(&chunk.bytes),
                Ok(None) if self.decoder.buffered() == 0 => return None,
                Ok(None) => {
                    return Some(Err(ReadError::Broken(
                        "control stream finished inside a frame".into(),
                    )));
                }
                Err(quinn::ReadError::ConnectionLost(
                    ConnectionError::ApplicationClosed(_)
                    | ConnectionError::ConnectionClosed(_)
                    | ConnectionError::LocallyClosed
                    | ConnectionError::Reset
                    | ConnectionError::TimedOut,
                )) => return None,
                Err(quinn::ReadError::Reset(code)) => {
                    return Some(Err(ReadError::Broken(format!(
                        "control stream reset by the client (code {code})"
                    ))));
                }
                Err(e) => return Some(Err(ReadError::Broken(e.to_string()))),
            }
        }
    }
}

struct Writer {
    send: quinn::SendStream,
    connection: quinn::Connection,
    /// Encoded frames not yet accepted by the stream. Between calls it is empty, unless a write
    /// was cancelled (slow consumer): then it holds the unsent tail, which goes out before
    /// anything else so the stream never carries half a frame.
    buf: BytesMut,
}

impl Writer {
    /// Hand everything in `buf` to the stream. Cancel-safe: `write` is, and `buf` only loses
    /// what the stream accepted.
    async fn flush(&mut self) -> Result<(), quinn::WriteError> {
        while !self.buf.is_empty() {
            let n = self.send.write(&self.buf).await?;
            self.buf.advance(n);
        }
        Ok(())
    }
}

impl FrameWriter for Writer {
    async fn write_batch(&mut self, frames: &mut VecDeque<Bytes>) -> std::io::Result<()> {
        // One buffer and one write for the whole batch: a write per small frame costs a lock and
        // a wake-up of the connection driver each, and makes QUIC many times slower.
        for frame in frames.drain(..) {
            framing::encode_frame(&frame, &mut self.buf);
        }
        let size = self.buf.len();
        self.flush().await.map_err(std::io::Error::other)?;
        if size > WRITE_RETAIN {
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    async fn close(mut self, goodbye: Option<Bytes>, code: ErrorCode) {
        let Some(goodbye) = goodbye else {
            // The client left; nothing to say.
            return self.connection.close(CLOSE_NORMAL.into(), b"");
        };
        framing::encode_frame(&goodbye, &mut self.buf);
        let said = tokio::time::timeout(GOODBYE_GRACE, async {
            self.flush().await.ok()?;
            self.send.finish().ok()?;
            // Resolves once the client acknowledged everything (or stopped reading, or left).
            self.send.stopped().await.ok()
        })
        .await;
        if said.is_err() {
            tracing::debug!("goodbye not acknowledged in time");
        }
        close(&self.connection, code);
    }
}

/// Client TLS and transport settings: trust `roots`, speak `chorus/1`, TLS 1.3 only. The client
/// sets no idle timeout of its own, so the server's (`client_timeout_ms` + 5 s) applies.
pub fn client_config(roots: &[CertificateDer<'static>]) -> anyhow::Result<quinn::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).context("bad root certificate")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(store)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(None);
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// A client endpoint trusting `roots`. Binds `[::]:0`, which reaches IPv4 servers too on dual-stack
/// hosts, or `0.0.0.0:0` where IPv6 is unavailable. One endpoint serves many connections.
pub fn client_endpoint(roots: &[CertificateDer<'static>]) -> anyhow::Result<quinn::Endpoint> {
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)))
        .or_else(|_| quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))))
        .context("cannot bind a UDP socket")?;
    endpoint.set_default_client_config(client_config(roots)?);
    Ok(endpoint)
}

/// Connect and open the control stream. The server sees the stream only once something is
/// written to it, so send `hello` right away (within `hello_timeout_ms`).
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
) -> anyhow::Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
    let connection = endpoint
        .connect(addr, server_name)?
        .await
        .with_context(|| format!("cannot connect to {addr} over QUIC"))?;
    let (send, recv) = connection.open_bi().await?;
    Ok((connection, send, recv))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{Claims, Grant};
    use serde_json::{Value, json};

    async fn send(stream: &mut quinn::SendStream, frame: &Value) {
        let mut buf = BytesMut::new();
        framing::encode_frame(&serde_json::to_vec(frame).unwrap(), &mut buf);
        stream.write_all(&buf).await.unwrap();
    }

    async fn recv(stream: &mut quinn::RecvStream, decoder: &mut FrameDecoder) -> Value {
        loop {
            if let Some(frame) = decoder.next_frame().unwrap() {
                return serde_json::from_slice(&frame).unwrap();
            }
            let chunk = stream
                .read_chunk(usize::MAX, true)
                .await
                .unwrap()
                .expect("a frame");
            decoder.push(&chunk.bytes);
        }
    }

    #[tokio::test]
    async fn hello_ping_extra_stream_and_oversize_frame() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            quic_listen: "127.0.0.1:0".parse().unwrap(),
            max_frame_bytes: 1024,
            ..Config::default()
        };
        let shared = crate::server::shared(config.clone()).unwrap();
        let listeners = crate::server::Listeners::bind(&config)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let addr = listeners.quic_addr();
        let server = tokio::spawn(crate::server::serve(shared.clone(), listeners));

        let now = crate::auth::unix_now();
        let claims = Claims {
            sub: "u1".into(),
            name: None,
            org: "o1".into(),
            grants: Grant::DEFAULT.to_vec(),
            iat: now,
            exp: now + 600,
        };
        let token = shared.keys.issue(&claims);
        let roots = datadir::load_certs(&datadir::tls_paths(&config).unwrap().0).unwrap();
        let client = client_endpoint(&roots).unwrap();
        let (conn, mut tx, mut rx) = connect(&client, addr, "localhost").await.unwrap();
        let mut decoder = FrameDecoder::new(1 << 20);

        send(
            &mut tx,
            &json!({"type": "hello", "id": 1, "version": 1, "token": token}),
        )
        .await;
        let reply = recv(&mut rx, &mut decoder).await;
        assert_eq!(
            (&reply["type"], &reply["id"]),
            (&json!("reply"), &json!(1)),
            "{reply}"
        );
        send(&mut tx, &json!({"type": "ping", "id": 2})).await;
        let reply = recv(&mut rx, &mut decoder).await;
        assert_eq!(
            (&reply["type"], &reply["id"]),
            (&json!("reply"), &json!(2)),
            "{reply}"
        );

        // A second stream is refused; the control stream carries on.
        let (mut tx2, mut rx2) = conn.open_bi().await.unwrap();
        tx2.write_all(b"x").await.unwrap();
        let refused = rx2.read_chunk(16, true).await.unwrap_err();
        assert_eq!(
            refused,
            quinn::ReadError::Reset(STREAM_NOT_SUPPORTED.into())
        );

        let mut big = BytesMut::new();
        framing::encode_frame(&vec![b' '; 1025], &mut big);
        tx.write_all(&big).await.unwrap();
        let goodbye = recv(&mut rx, &mut decoder).await;
        assert_eq!(
            (&goodbye["type"], &goodbye["code"]),
            (&json!("disconnect"), &json!("frame_too_large")),
            "{goodbye}"
        );
        match conn.closed().await {
            ConnectionError::ApplicationClosed(close) => {
                assert_eq!(
                    (close.error_code, &close.reason[..]),
                    (CLOSE_PROTOCOL.into(), &b"frame_too_large"[..])
                );
            }
            other => panic!("unexpected close: {other}"),
        }

        shared.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
