//! The per-connection protocol state machine, sans-IO. The shell feeds it frames (`handle_frame`)
//! and deadlines (`handle_timeout`) with the current time, and drains `poll_output` for frames to
//! send, requests to execute and the close decision. It never reads a clock or touches a socket.

mod rate;

pub use rate::TokenBucket;

use crate::access::Claims;
use crate::auth::{TokenError, TokenKeys};
use crate::protocol::{
    ClientFrame, Encoding, ErrorCode, PROTOCOL_VERSION, RequestId, ServerFrame, decode_client,
};
use serde::Serialize;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Limits and timings of a session; every field is a server config key.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub max_frame_bytes: usize,
    pub max_subscriptions: usize,
    /// Sustained frames per second a client may send, and the burst above it.
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// How often the server sends `ping`.
    pub heartbeat: Duration,
    /// A client that sends nothing for this long is disconnected.
    pub client_timeout: Duration,
    /// Time allowed between connecting and a valid `hello`.
    pub hello_timeout: Duration,
}

/// What the session wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this frame to the client.
    Send(ServerFrame),
    /// Execute this authenticated request and answer it (through `Session::reply`/`fail`).
    /// `subscribe` and `unsubscribe` have passed the session's own bookkeeping already.
    Execute(ClientFrame),
    /// Send a `disconnect` frame with this reason and close the connection.
    Close {
        code: ErrorCode,
        message: String,
        reconnect: bool,
    },
}

/// The body of the reply to `hello`.
#[derive(Debug, Clone, Serialize)]
pub struct Welcome {
    pub session: u64,
    pub user: String,
    pub org: String,
    pub version: u32,
    pub encoding: Encoding,
    pub heartbeat_ms: u64,
    pub client_timeout_ms: u64,
    pub limits: Limits,
    pub server: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_subscriptions: usize,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
}

enum Phase {
    /// Waiting for `hello`; the transport may have carried a verified token already.
    Hello {
        preauth: Option<Claims>,
    },
    Ready {
        claims: Arc<Claims>,
    },
    Closed,
}

pub struct Session {
    id: u64,
    config: SessionConfig,
    keys: Arc<TokenKeys>,
    phase: Phase,
    encoding: Encoding,
    subscriptions: HashSet<String>,
    rate: TokenBucket,
    connected_at: Instant,
    /// Unix seconds at `connected_at`, to check token expiry against monotonic time.
    connected_unix: u64,
    last_received: Instant,
    next_ping: Instant,
    outputs: VecDeque<Output>,
}

impl Session {
    /// A new session for connection `id`. `preauth` holds the claims of a token the transport
    /// carried (header or query) and verified already.
    pub fn new(
        id: u64,
        config: SessionConfig,
        keys: Arc<TokenKeys>,
        preauth: Option<Claims>,
        now: Instant,
        unix_now: u64,
    ) -> Session {
        Session {
            id,
            rate: TokenBucket::new(config.rate_per_sec, config.rate_burst, now),
            next_ping: now + config.heartbeat,
            config,
            keys,
            phase: Phase::Hello { preauth },
            encoding: Encoding::Json,
            subscriptions: HashSet::new(),
            connected_at: now,
            connected_unix: unix_now,
            last_received: now,
            outputs: VecDeque::new(),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The encoding of frames sent to this client.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The verified claims, once `hello` succeeded.
    pub fn claims(&self) -> Option<&Arc<Claims>> {
        match &self.phase {
            Phase::Ready { claims } => Some(claims),
            _ => None,
        }
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = &str> {
        self.subscriptions.iter().map(String::as_str)
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    fn unix(&self, now: Instant) -> u64 {
        self.connected_unix + now.saturating_duration_since(self.connected_at).as_secs()
    }

    fn send(&mut self, frame: ServerFrame) {
        self.outputs.push_back(Output::Send(frame));
    }

    fn error(&mut self, id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) {
        self.send(ServerFrame::error(id, code, message));
    }

    fn close(&mut self, code: ErrorCode, message: impl Into<String>, reconnect: bool) {
        if !self.is_closed() {
            self.phase = Phase::Closed;
            self.outputs.push_back(Output::Close {
                code,
                message: message.into(),
                reconnect,
            });
        }
    }

    /// One frame arrived from the client.
    pub fn handle_frame(&mut self, bytes: &[u8], now: Instant) {
        if self.is_closed() {
            return;
        }
        self.last_received = now;
        if !self.rate.take(now) {
            let id = decode_client(bytes, self.config.max_frame_bytes)
                .ok()
                .and_then(|f| f.id());
            self.error(
                id,
                ErrorCode::RateLimited,
                format!(
                    "more than {} frames per second; this frame was dropped",
                    self.config.rate_per_sec
                ),
            );
            return;
        }
        let frame = match decode_client(bytes, self.config.max_frame_bytes) {
            Ok(frame) => frame,
            Err(e) if e.code == ErrorCode::FrameTooLarge => {
                return self.close(e.code, e.message, false);
            }
            Err(e) => return self.error(e.id, e.code, e.message),
        };
        match (&self.phase, frame) {
            (_, ClientFrame::Pong) => {}
            (
                Phase::Hello { .. },
                ClientFrame::Hello {
                    id,
                    version,
                    encoding,
                    token,
                    ..
                },
            ) => self.hello(id, version, encoding, token, now),
            (Phase::Hello { .. }, other) => self.error(
                other.id(),
                ErrorCode::HelloRequired,
                "the first frame must be `hello`",
            ),
            (Phase::Ready { .. }, ClientFrame::Hello { id, .. }) => self.error(
                Some(id),
                ErrorCode::AlreadyHello,
                "this session said hello already",
            ),
            (Phase::Ready { .. }, ClientFrame::Ping { id }) => {
                self.send(ServerFrame::reply(id, serde_json::json!({})))
            }
            (Phase::Ready { .. }, ClientFrame::Subscribe { id, channel, from }) => {
                if self.subscriptions.contains(&channel) {
                    self.error(
                        Some(id),
                        ErrorCode::AlreadySubscribed,
                        format!("already subscribed to `{channel}`"),
                    );
                } else if self.subscriptions.len() >= self.config.max_subscriptions {
                    self.error(
                        Some(id),
                        ErrorCode::TooManySubscriptions,
                        format!(
                            "a session holds at most {} subscriptions",
                            self.config.max_subscriptions
                        ),
                    );
                } else {
                    self.subscriptions.insert(channel.clone());
                    self.outputs
                        .push_back(Output::Execute(ClientFrame::Subscribe {
                            id,
                            channel,
                            from,
                        }));
                }
            }
            (Phase::Ready { .. }, ClientFrame::Unsubscribe { id, channel }) => {
                if self.subscriptions.remove(&channel) {
                    self.outputs
                        .push_back(Output::Execute(ClientFrame::Unsubscribe { id, channel }));
                } else {
                    self.error(
                        Some(id),
                        ErrorCode::NotSubscribed,
                        format!("not subscribed to `{channel}`"),
                    );
                }
            }
            (Phase::Ready { .. }, request) => self.outputs.push_back(Output::Execute(request)),
            (Phase::Closed, _) => {}
        }
    }

    fn hello(
        &mut self,
        id: RequestId,
        version: u32,
        encoding: Encoding,
        token: Option<String>,
        now: Instant,
    ) {
        if version != PROTOCOL_VERSION {
            return self.close(
                ErrorCode::UnsupportedVersion,
                format!("this server speaks protocol version {PROTOCOL_VERSION}, not {version}"),
                false,
            );
        }
        let Phase::Hello { preauth } = &mut self.phase else {
            unreachable!("hello is handled only in the hello phase")
        };
        let claims = match (token, preauth.take()) {
            (Some(token), _) => self.keys.verify(&token, self.unix(now)),
            (None, Some(claims)) => Ok(claims),
            (None, None) => Err(TokenError::Missing),
        };
        let claims = match claims {
            Ok(claims) => claims,
            Err(e) => return self.close(e.code(), e.to_string(), false),
        };
        self.encoding = encoding;
        let welcome = Welcome {
            session: self.id,
            user: claims.sub.clone(),
            org: claims.org.clone(),
            version: PROTOCOL_VERSION,
            encoding,
            heartbeat_ms: self.config.heartbeat.as_millis() as u64,
            client_timeout_ms: self.config.client_timeout.as_millis() as u64,
            limits: Limits {
                max_frame_bytes: self.config.max_frame_bytes,
                max_subscriptions: self.config.max_subscriptions,
                rate_per_sec: self.config.rate_per_sec,
                rate_burst: self.config.rate_burst,
            },
            server: concat!("chorus/", env!("CARGO_PKG_VERSION")),
        };
        self.phase = Phase::Ready {
            claims: Arc::new(claims),
        };
        self.send(ServerFrame::reply(id, welcome));
    }

    /// The shell finished an `Execute`d request successfully.
    pub fn reply(&mut self, id: RequestId, result: impl Serialize) {
        self.send(ServerFrame::reply(id, result));
    }

    /// The shell could not execute a request. A failed subscribe is forgotten.
    pub fn fail(&mut self, request: &ClientFrame, code: ErrorCode, message: impl Into<String>) {
        if let ClientFrame::Subscribe { channel, .. } = request {
            self.subscriptions.remove(channel);
        }
        self.error(request.id(), code, message);
    }

    /// The server ended the subscription to `channel` (e.g. the user left the space).
    pub fn revoke(&mut self, channel: &str, code: ErrorCode, message: impl Into<String>) {
        if self.subscriptions.remove(channel) {
            self.send(ServerFrame::Unsubscribed {
                channel: channel.to_string(),
                code,
                message: message.into(),
            });
        }
    }

    /// The server is shutting down.
    pub fn shutdown(&mut self) {
        self.close(ErrorCode::ShuttingDown, "the server is shutting down", true);
    }

    /// The earliest instant at which `handle_timeout` has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Closed => None,
            Phase::Hello { .. } => Some(self.connected_at + self.config.hello_timeout),
            Phase::Ready { claims } => {
                let expiry = self.connected_at
                    + Duration::from_secs(claims.exp.saturating_sub(self.connected_unix));
                let silence = self.last_received + self.config.client_timeout;
                Some(self.next_ping.min(silence).min(expiry))
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.phase {
            Phase::Closed => {}
            Phase::Hello { .. } => {
                if now >= self.connected_at + self.config.hello_timeout {
                    self.close(
                        ErrorCode::Timeout,
                        "no hello within the hello timeout",
                        true,
                    );
                }
            }
            Phase::Ready { claims } => {
                if self.unix(now) >= claims.exp {
                    self.close(ErrorCode::TokenExpired, "the access token expired", true);
                } else if now >= self.last_received + self.config.client_timeout {
                    self.close(
                        ErrorCode::Timeout,
                        "nothing received within the client timeout",
                        true,
                    );
                } else if now >= self.next_ping {
                    self.next_ping = now + self.config.heartbeat;
                    self.send(ServerFrame::Ping);
                }
            }
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        let output = self.outputs.pop_front();
        if output.is_none() && self.outputs.capacity() > 0 {
            // Outputs come in short bursts between long idle spells: an idle session keeps no
            // queue (an `Output` is about 200 bytes; the smallest queue holds four).
            self.outputs = VecDeque::new();
        }
        output
    }
}

#[cfg(test)]
mod tests;
