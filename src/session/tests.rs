//! Session core tests: frames and a simulated clock in, outputs out. No sockets, no sleeps.

use super::*;
use crate::access::Grant;
use serde_json::{Value, json};

const SECRET: &[u8] = &[9; 32];
const T0_UNIX: u64 = 1_000_000;

fn config() -> SessionConfig {
    SessionConfig {
        max_frame_bytes: 1024,
        max_subscriptions: 2,
        rate_per_sec: 10,
        rate_burst: 10,
        heartbeat: Duration::from_secs(10),
        client_timeout: Duration::from_secs(30),
        hello_timeout: Duration::from_secs(5),
    }
}

fn token(exp: u64) -> String {
    TokenKeys::new(SECRET).issue(&Claims {
        sub: "alice".into(),
        name: None,
        org: "acme".into(),
        grants: Grant::DEFAULT.to_vec(),
        iat: T0_UNIX,
        exp,
    })
}

struct Harness {
    session: Session,
    t0: Instant,
}

impl Harness {
    fn new() -> Harness {
        let t0 = Instant::now();
        let session = Session::new(
            7,
            config(),
            Arc::new(TokenKeys::new(SECRET)),
            None,
            t0,
            T0_UNIX,
        );
        Harness { session, t0 }
    }

    fn at(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs)
    }

    fn frame(&mut self, at: f64, frame: Value) -> Vec<Output> {
        let bytes = serde_json::to_vec(&frame).unwrap();
        self.session.handle_frame(&bytes, self.at(at));
        self.drain()
    }

    fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.session.poll_output()).collect()
    }

    fn hello(&mut self) {
        let out = self.frame(
            0.0,
            json!({"type": "hello", "id": 1, "version": 1, "token": token(T0_UNIX + 3600)}),
        );
        assert!(
            matches!(&out[..], [Output::Send(ServerFrame::Reply { id: 1, .. })]),
            "{out:?}"
        );
    }
}

fn error_code(out: &[Output]) -> ErrorCode {
    match out {
        [Output::Send(ServerFrame::Error { code, .. })] => *code,
        other => panic!("expected one error, got {other:?}"),
    }
}

fn close_code(out: &[Output]) -> ErrorCode {
    match out.last() {
        Some(Output::Close { code, .. }) => *code,
        other => panic!("expected a close, got {other:?}"),
    }
}

#[test]
fn hello_then_requests() {
    let mut h = Harness::new();
    assert_eq!(
        error_code(&h.frame(0.0, json!({"type": "ping", "id": 1}))),
        ErrorCode::HelloRequired
    );
    h.hello();
    assert_eq!(h.session.claims().unwrap().sub, "alice");
    // Drained, an idle session keeps no output queue.
    assert_eq!(h.session.outputs.capacity(), 0);
    let out = h.frame(
        1.0,
        json!({"type": "subscribe", "id": 2, "channel": "topic:s/a"}),
    );
    assert!(matches!(
        &out[..],
        [Output::Execute(ClientFrame::Subscribe { id: 2, .. })]
    ));
    assert_eq!(
        error_code(&h.frame(1.0, json!({"type": "hello", "id": 3, "version": 1}))),
        ErrorCode::AlreadyHello
    );
}

#[test]
fn subscription_bookkeeping() {
    let mut h = Harness::new();
    h.hello();
    h.frame(1.0, json!({"type": "subscribe", "id": 2, "channel": "a"}));
    assert_eq!(
        error_code(&h.frame(1.0, json!({"type": "subscribe", "id": 3, "channel": "a"}))),
        ErrorCode::AlreadySubscribed
    );
    let denied = ClientFrame::Subscribe {
        id: 4,
        channel: "b".into(),
        from: None,
    };
    h.frame(1.0, json!({"type": "subscribe", "id": 4, "channel": "b"}));
    h.session.fail(&denied, ErrorCode::Forbidden, "no");
    assert_eq!(error_code(&h.drain()), ErrorCode::Forbidden);
    // The failed subscription does not count against the limit.
    h.frame(1.0, json!({"type": "subscribe", "id": 5, "channel": "c"}));
    assert_eq!(
        error_code(&h.frame(1.0, json!({"type": "subscribe", "id": 6, "channel": "d"}))),
        ErrorCode::TooManySubscriptions
    );
    assert_eq!(
        error_code(&h.frame(
            1.0,
            json!({"type": "unsubscribe", "id": 7, "channel": "zz"})
        )),
        ErrorCode::NotSubscribed
    );
    let mut subs: Vec<_> = h.session.subscriptions().collect();
    subs.sort();
    assert_eq!(subs, ["a", "c"]);
}

#[test]
fn bad_tokens_close() {
    for (token, code) in [
        (Some(token(T0_UNIX - 1)), ErrorCode::TokenExpired),
        (Some("x.y.z".to_string()), ErrorCode::InvalidToken),
        (None, ErrorCode::InvalidToken),
    ] {
        let mut h = Harness::new();
        let mut hello = json!({"type": "hello", "id": 1, "version": 1});
        if let Some(t) = token {
            hello["token"] = json!(t);
        }
        assert_eq!(close_code(&h.frame(0.0, hello)), code);
        assert!(h.session.is_closed());
        // Nothing happens after the close.
        assert!(h.frame(0.1, json!({"type": "ping", "id": 2})).is_empty());
    }
    let mut h = Harness::new();
    assert_eq!(
        close_code(&h.frame(0.0, json!({"type": "hello", "id": 1, "version": 2}))),
        ErrorCode::UnsupportedVersion
    );
}

#[test]
fn malformed_frames_keep_the_session_but_oversized_close_it() {
    let mut h = Harness::new();
    h.hello();
    h.session.handle_frame(b"{nope", h.at(1.0));
    assert_eq!(error_code(&h.drain()), ErrorCode::MalformedFrame);
    assert!(!h.session.is_closed());
    h.session.handle_frame(&vec![b' '; 2000], h.at(1.0));
    assert_eq!(close_code(&h.drain()), ErrorCode::FrameTooLarge);
}

#[test]
fn rate_limit_drops_frames_and_recovers() {
    let mut h = Harness::new();
    h.hello();
    let limited = (0..20)
        .filter(|i| {
            let out = h.frame(1.0, json!({"type": "ping", "id": 100 + i}));
            matches!(
                &out[..],
                [Output::Send(ServerFrame::Error {
                    code: ErrorCode::RateLimited,
                    ..
                })]
            )
        })
        .count();
    assert_eq!(
        limited, 10,
        "a full burst of 10 after one second, then nothing"
    );
    assert!(matches!(
        &h.frame(2.0, json!({"type": "ping", "id": 1}))[..],
        [Output::Send(ServerFrame::Reply { .. })]
    ));
}

#[test]
fn heartbeat_timeout_and_expiry() {
    let mut h = Harness::new();
    assert_eq!(h.session.poll_timeout(), Some(h.at(5.0)), "hello deadline");
    h.hello();
    assert_eq!(h.session.poll_timeout(), Some(h.at(10.0)));
    h.session.handle_timeout(h.at(10.0));
    assert_eq!(h.drain(), vec![Output::Send(ServerFrame::Ping)]);
    h.frame(15.0, json!({"type": "pong"}));
    assert_eq!(h.session.poll_timeout(), Some(h.at(20.0)));
    h.session.handle_timeout(h.at(20.0));
    h.session.handle_timeout(h.at(30.0));
    assert_eq!(h.drain().len(), 2, "two more pings");
    // Silent since 15 s: the client timeout of 30 s ends it at 45 s.
    h.session.handle_timeout(h.at(44.9));
    h.drain();
    h.session.handle_timeout(h.at(45.0));
    assert_eq!(close_code(&h.drain()), ErrorCode::Timeout);

    let mut h = Harness::new();
    h.frame(
        0.0,
        json!({"type": "hello", "id": 1, "version": 1, "token": token(T0_UNIX + 8)}),
    );
    h.drain();
    assert_eq!(
        h.session.poll_timeout(),
        Some(h.at(8.0)),
        "token expiry comes before the first ping"
    );
    h.session.handle_timeout(h.at(8.0));
    assert_eq!(close_code(&h.drain()), ErrorCode::TokenExpired);
}

#[test]
fn hello_timeout_and_preauth() {
    let mut h = Harness::new();
    h.session.handle_timeout(h.at(5.0));
    assert_eq!(close_code(&h.drain()), ErrorCode::Timeout);

    let keys = Arc::new(TokenKeys::new(SECRET));
    let claims = keys.verify(&token(T0_UNIX + 60), T0_UNIX).unwrap();
    let t0 = Instant::now();
    let mut s = Session::new(1, config(), keys, Some(claims), t0, T0_UNIX);
    s.handle_frame(
        br#"{"type":"hello","id":1,"version":1,"encoding":"msgpack"}"#,
        t0,
    );
    assert!(matches!(
        s.poll_output(),
        Some(Output::Send(ServerFrame::Reply { id: 1, .. }))
    ));
    assert_eq!(s.encoding(), Encoding::Msgpack);
}

#[test]
fn shutdown_closes_once() {
    let mut h = Harness::new();
    h.hello();
    h.session.shutdown();
    h.session.shutdown();
    let out = h.drain();
    assert_eq!(out.len(), 1);
    assert_eq!(close_code(&out), ErrorCode::ShuttingDown);
    assert_eq!(h.session.poll_timeout(), None);
}
