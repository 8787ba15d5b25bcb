use serde::{Deserialize, Serialize};

/// Stable error codes. Clients match on these strings; the message beside them is for humans and
/// may change. `docs/protocol.md` lists what each means and whether the connection stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON or MessagePack, or not an object with a `type`.
    MalformedFrame,
    /// The frame's `type` is not one this server knows.
    UnknownType,
    /// A known frame type with missing, extra or ill-typed fields.
    InvalidRequest,
    /// A frame exceeded the maximum frame size; the connection is closed.
    FrameTooLarge,
    /// The first frame must be `hello`.
    HelloRequired,
    /// A second `hello` on an established session.
    AlreadyHello,
    /// The client speaks a protocol version this server does not.
    UnsupportedVersion,
    /// No token was given, or it is malformed or wrongly signed.
    InvalidToken,
    /// The token has expired; get a new one.
    TokenExpired,
    /// The token is valid but does not allow this action on this resource.
    Forbidden,
    /// The named space, channel or member does not exist (or is not visible to the caller).
    NotFound,
    /// The resource already exists.
    AlreadyExists,
    /// The channel name is not of a known form.
    BadChannel,
    /// Subscribe to a channel the session is already subscribed to.
    AlreadySubscribed,
    /// Unsubscribe from a channel the session is not subscribed to.
    NotSubscribed,
    /// The session holds the maximum number of subscriptions.
    TooManySubscriptions,
    /// The session sent more frames per second than allowed; the frame was dropped.
    RateLimited,
    /// A bound of the resource was reached (a full meeting, too many tracks).
    LimitExceeded,
    /// The server holds the maximum number of connections.
    TooManyConnections,
    /// The client fell so far behind that its outbound queue overflowed; reconnect and
    /// resubscribe (offsets show what was missed).
    SlowConsumer,
    /// The client sent nothing within the client timeout.
    Timeout,
    /// The server is shutting down; reconnect to another node or later.
    ShuttingDown,
    /// The server failed; the request may be retried.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::AlreadyHello => "already_hello",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::Timeout => "timeout",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status an API error with this code carries.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidToken | ErrorCode::TokenExpired => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists | ErrorCode::AlreadySubscribed => 409,
            ErrorCode::FrameTooLarge => 413,
            ErrorCode::RateLimited | ErrorCode::LimitExceeded => 429,
            ErrorCode::TooManyConnections | ErrorCode::ShuttingDown => 503,
            ErrorCode::Internal => 500,
            _ => 400,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
