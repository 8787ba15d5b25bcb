//! The session protocol, run over WebSocket and over QUIC alike.

use crate::both_transports;
use crate::util::{TestServer, Tr, code};
use chorus::access::Grant;
use chorus::protocol::{Encoding, ErrorCode, ServerFrame};
use serde_json::json;
use std::time::Duration;

/// The next `disconnect` frame's code, skipping anything else; then the connection must end.
async fn disconnect_code(c: &mut chorus::client::Client) -> ErrorCode {
    loop {
        match c.recv().await {
            Ok(Some(ServerFrame::Disconnect { code, .. })) => {
                let tail = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Ok(Some(_)) = c.recv().await {}
                });
                tail.await.expect("the connection closes after disconnect");
                return code;
            }
            Ok(Some(_)) => continue,
            other => panic!("connection ended without a disconnect frame: {other:?}"),
        }
    }
}

async fn token_accepted(tr: Tr) {
    let s = TestServer::start().await;
    let mut c = s.raw(tr).await;
    let welcome = c
        .hello(Some(&s.token("alice", "acme")), Encoding::Json)
        .await
        .unwrap();
    assert_eq!(welcome["user"], "alice");
    assert_eq!(welcome["org"], "acme");
    assert_eq!(welcome["version"], 1);
    assert_eq!(welcome["limits"]["max_frame_bytes"], 64 * 1024);
    assert_eq!(c.call(json!({"type": "ping"})).await.unwrap(), json!({}));
}

async fn bad_tokens_rejected(tr: Tr) {
    let s = TestServer::start().await;
    let other = TestServer::start().await;
    let cases = [
        (
            Some(s.token_with("alice", "acme", &Grant::DEFAULT, -10)),
            ErrorCode::TokenExpired,
        ),
        (Some(other.token("alice", "acme")), ErrorCode::InvalidToken),
        (Some("garbage".to_string()), ErrorCode::InvalidToken),
        (None, ErrorCode::InvalidToken),
    ];
    for (token, expected) in cases {
        let mut c = s.raw(tr).await;
        let mut hello = json!({"type": "hello", "id": 1, "version": 1});
        if let Some(t) = token {
            hello["token"] = json!(t);
        }
        c.send(&hello).await.unwrap();
        assert_eq!(disconnect_code(&mut c).await, expected);
    }
}

async fn publish_reaches_subscriber_in_order(tr: Tr) {
    let s = TestServer::start().await;
    s.space("eng", "alice", "acme").await;
    let mut sub = s.client(tr, "alice", "acme").await;
    let reply = sub
        .call(json!({"type": "subscribe", "channel": "topic:eng/news"}))
        .await
        .unwrap();
    assert_eq!(reply["offset"], 0);
    let epoch = reply["epoch"].as_u64().unwrap();
    let mut publisher = s.client(tr, "alice", "acme").await;
    for n in 1..=50u64 {
        let r = publisher
            .call(json!({"type": "publish", "channel": "topic:eng/news", "data": {"n": n}}))
            .await
            .unwrap();
        assert_eq!(
            (r["offset"].as_u64(), r["epoch"].as_u64()),
            (Some(n), Some(epoch))
        );
    }
    for n in 1..=50u64 {
        match sub.expect().await.unwrap() {
            ServerFrame::Message {
                channel,
                offset,
                data,
            } => {
                assert_eq!(
                    (channel.as_str(), offset, &data),
                    ("topic:eng/news", n, &json!({"n": n}))
                );
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
    sub.call(json!({"type": "unsubscribe", "channel": "topic:eng/news"}))
        .await
        .unwrap();
    publisher
        .call(json!({"type": "publish", "channel": "topic:eng/news", "data": 0}))
        .await
        .unwrap();
    // Nothing more arrives after unsubscribing: the next frame is the reply to this ping.
    sub.send(&json!({"type": "ping", "id": 99})).await.unwrap();
    assert!(matches!(
        sub.expect().await.unwrap(),
        ServerFrame::Reply { id: 99, .. }
    ));
}

async fn msgpack_encoding(tr: Tr) {
    let s = TestServer::start().await;
    s.space("eng", "alice", "acme").await;
    let mut c = s.raw(tr).await;
    let welcome = c
        .hello(Some(&s.token("alice", "acme")), Encoding::Msgpack)
        .await
        .unwrap();
    assert_eq!(welcome["encoding"], "msgpack");
    c.call(json!({"type": "subscribe", "channel": "topic:eng/x"}))
        .await
        .unwrap();
    let mut publisher = s.client(tr, "alice", "acme").await;
    publisher
        .call(json!({"type": "publish", "channel": "topic:eng/x", "data": [1, "two"]}))
        .await
        .unwrap();
    let raw = c.recv_raw().await.unwrap().unwrap();
    assert_eq!(Encoding::sniff(&raw), Some(Encoding::Msgpack));
    let frame: ServerFrame = rmp_serde::from_slice(&raw).unwrap();
    assert!(
        matches!(frame, ServerFrame::Message { offset: 1, .. }),
        "{frame:?}"
    );
}

async fn bad_frames_get_codes_and_connection_survives(tr: Tr) {
    let s = TestServer::start().await;
    s.space("eng", "alice", "acme").await;
    let mut c = s.raw(tr).await;
    // Out of order: a request before hello.
    assert_eq!(
        code(
            c.request(json!({"type": "subscribe", "channel": "topic:eng/x"}))
                .await
                .unwrap()
        ),
        "hello_required"
    );
    c.hello(Some(&s.token("alice", "acme")), Encoding::Json)
        .await
        .unwrap();
    assert_eq!(
        code(
            c.request(json!({"type": "hello", "version": 1}))
                .await
                .unwrap()
        ),
        "already_hello"
    );
    assert_eq!(
        code(c.request(json!({"type": "teleport"})).await.unwrap()),
        "unknown_type"
    );
    assert_eq!(
        code(c.request(json!({"type": "subscribe"})).await.unwrap()),
        "invalid_request"
    );
    assert_eq!(
        code(
            c.request(json!({"type": "subscribe", "channel": "nope"}))
                .await
                .unwrap()
        ),
        "bad_channel"
    );
    assert_eq!(
        code(
            c.request(json!({"type": "unsubscribe", "channel": "topic:eng/x"}))
                .await
                .unwrap()
        ),
        "not_subscribed"
    );
    c.call(json!({"type": "subscribe", "channel": "topic:eng/x"}))
        .await
        .unwrap();
    assert_eq!(
        code(
            c.request(json!({"type": "subscribe", "channel": "topic:eng/x"}))
                .await
                .unwrap()
        ),
        "already_subscribed"
    );
    // Not JSON at all: an error without id, and the connection goes on.
    c.send_raw(b"{this is not json").await.unwrap();
    match c.expect().await.unwrap() {
        ServerFrame::Error { id: None, code, .. } => assert_eq!(code, ErrorCode::MalformedFrame),
        other => panic!("{other:?}"),
    }
    c.send_raw(&[0xc1, 0x00]).await.unwrap();
    assert!(matches!(
        c.expect().await.unwrap(),
        ServerFrame::Error {
            code: ErrorCode::MalformedFrame,
            ..
        }
    ));
    c.call(json!({"type": "ping"})).await.unwrap();
    // Too large: closed with frame_too_large.
    let big = format!(
        r#"{{"type":"publish","id":1,"channel":"topic:eng/x","data":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    c.send_raw(big.as_bytes()).await.unwrap();
    assert_eq!(disconnect_code(&mut c).await, ErrorCode::FrameTooLarge);
}

async fn cross_organisation_access_denied(tr: Tr) {
    let s = TestServer::start().await;
    s.space("acme-eng", "alice", "acme").await;
    let mut bob = s.client(tr, "bob", "globex").await;
    for frame in [
        json!({"type": "subscribe", "channel": "topic:acme-eng/secrets"}),
        json!({"type": "publish", "channel": "topic:acme-eng/secrets", "data": 1}),
        json!({"type": "space.members", "space": "acme-eng"}),
    ] {
        assert_eq!(code(bob.request(frame).await.unwrap()), "not_found");
    }
    let spaces = bob.call(json!({"type": "space.list"})).await.unwrap();
    assert_eq!(spaces["spaces"], json!([]));
    // A guest may not add members.
    s.add("acme-eng", "alice", "acme", "bob", "globex").await;
    let add =
        json!({"type": "space.add_member", "space": "acme-eng", "user": "eve", "org": "globex"});
    assert_eq!(code(bob.request(add).await.unwrap()), "forbidden");
    // Once a guest, bob may use the space's channels.
    bob.call(json!({"type": "subscribe", "channel": "topic:acme-eng/secrets"}))
        .await
        .unwrap();
    // A user with the same id from another organisation is not bob.
    let mut impostor = s.client(tr, "bob", "evilcorp").await;
    assert_eq!(
        code(
            impostor
                .request(json!({"type": "subscribe", "channel": "topic:acme-eng/x"}))
                .await
                .unwrap()
        ),
        "not_found"
    );
    // Removal ends bob's live subscription at once, and he cannot subscribe again.
    let mut alice = s.client(tr, "alice", "acme").await;
    alice
        .call(json!({"type": "space.remove_member", "space": "acme-eng", "user": "bob"}))
        .await
        .unwrap();
    match bob.expect().await.unwrap() {
        ServerFrame::Unsubscribed { channel, code, .. } => {
            assert_eq!(
                (channel.as_str(), code),
                ("topic:acme-eng/secrets", ErrorCode::Forbidden)
            );
        }
        other => panic!("expected the subscription to end, got {other:?}"),
    }
    alice
        .call(json!({"type": "publish", "channel": "topic:acme-eng/secrets", "data": "after"}))
        .await
        .unwrap();
    bob.send(&json!({"type": "ping", "id": 500})).await.unwrap();
    let next = bob.expect().await.unwrap();
    assert!(
        matches!(next, ServerFrame::Reply { id: 500, .. }),
        "after removal bob got {next:?}"
    );
    let mut bob2 = s.client(tr, "bob", "globex").await;
    assert_eq!(
        code(
            bob2.request(json!({"type": "subscribe", "channel": "topic:acme-eng/y"}))
                .await
                .unwrap()
        ),
        "not_found"
    );
}

async fn grants_are_enforced(tr: Tr) {
    let s = TestServer::start().await;
    s.space("eng", "alice", "acme").await;
    s.add("eng", "alice", "acme", "ro", "acme").await;
    let mut c = s.raw(tr).await;
    c.hello(
        Some(&s.token_with("ro", "acme", &[Grant::Subscribe], 3600)),
        Encoding::Json,
    )
    .await
    .unwrap();
    c.call(json!({"type": "subscribe", "channel": "topic:eng/x"}))
        .await
        .unwrap();
    assert_eq!(
        code(
            c.request(json!({"type": "publish", "channel": "topic:eng/x", "data": 1}))
                .await
                .unwrap()
        ),
        "forbidden"
    );
    assert_eq!(
        code(
            c.request(json!({"type": "space.create", "name": "mine"}))
                .await
                .unwrap()
        ),
        "forbidden"
    );
}

async fn limits_are_enforced(tr: Tr) {
    let s = TestServer::with(|c| {
        c.max_subscriptions = 2;
        c.rate_per_sec = 20;
        c.rate_burst = 20;
    })
    .await;
    s.space("eng", "alice", "acme").await;
    let mut c = s.client(tr, "alice", "acme").await;
    c.call(json!({"type": "subscribe", "channel": "topic:eng/a"}))
        .await
        .unwrap();
    c.call(json!({"type": "subscribe", "channel": "topic:eng/b"}))
        .await
        .unwrap();
    assert_eq!(
        code(
            c.request(json!({"type": "subscribe", "channel": "topic:eng/c"}))
                .await
                .unwrap()
        ),
        "too_many_subscriptions"
    );
    for id in 100..160 {
        c.send(&json!({"type": "ping", "id": id})).await.unwrap();
    }
    let mut limited = 0;
    for _ in 100..160 {
        match c.expect().await.unwrap() {
            ServerFrame::Error {
                code: ErrorCode::RateLimited,
                ..
            } => limited += 1,
            ServerFrame::Reply { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(
        limited >= 30,
        "only {limited} of 60 frames were rate limited"
    );
    // The connection stays usable once the rate recovers.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.call(json!({"type": "ping"})).await.unwrap();
}

async fn heartbeats_and_timeouts(tr: Tr) {
    let s = TestServer::with(|c| {
        c.heartbeat_ms = 50;
        c.client_timeout_ms = 400;
        c.hello_timeout_ms = 200;
    })
    .await;
    let mut c = s.client(tr, "alice", "acme").await;
    // The server pings; a client that answers stays connected past the client timeout.
    let mut pongs = 0;
    while pongs < 15 {
        match c.expect().await.unwrap() {
            ServerFrame::Ping => {
                c.send(&json!({"type": "pong"})).await.unwrap();
                pongs += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    // A client that stops answering is disconnected.
    assert_eq!(disconnect_code(&mut c).await, ErrorCode::Timeout);
    // So is one that never says hello. A QUIC client that sends nothing has not opened its
    // control stream yet (streams reach the server with their first byte), so there is no stream
    // to carry a `disconnect`: the connection is closed with reason `timeout` instead.
    let mut silent = s.raw(tr).await;
    match tr {
        Tr::Ws => assert_eq!(disconnect_code(&mut silent).await, ErrorCode::Timeout),
        Tr::Quic => {
            let end = tokio::time::timeout(Duration::from_secs(5), silent.recv())
                .await
                .expect("closed in time");
            assert!(matches!(end, Ok(None)), "{end:?}");
        }
    }
}

async fn token_expiry_ends_session(tr: Tr) {
    let s = TestServer::start().await;
    let mut c = s.raw(tr).await;
    c.hello(
        Some(&s.token_with("alice", "acme", &Grant::DEFAULT, 2)),
        Encoding::Json,
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(disconnect_code(&mut c).await, ErrorCode::TokenExpired);
    assert!(started.elapsed() < Duration::from_secs(5));
}

async fn graceful_shutdown(tr: Tr) {
    let s = TestServer::start().await;
    let mut c = s.client(tr, "alice", "acme").await;
    s.shared.shutdown.cancel();
    assert_eq!(disconnect_code(&mut c).await, ErrorCode::ShuttingDown);
    tokio::time::timeout(Duration::from_secs(10), s.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

async fn connection_limit(tr: Tr) {
    let s = TestServer::with(|c| c.max_connections = 1).await;
    let mut first = s.client(tr, "alice", "acme").await;
    let refused = match tr {
        Tr::Ws => chorus::client::Client::connect_ws(&s.ws_url(), None)
            .await
            .err()
            .map(|e| e.to_string()),
        Tr::Quic => {
            let certs = chorus::datadir::load_certs(
                &s.shared.config.data_dir.join(chorus::datadir::CERT_FILE),
            )
            .unwrap();
            match chorus::client::Client::connect_quic(s.quic, &certs).await {
                Err(e) => Some(e.to_string()),
                Ok(mut c) => c
                    .recv()
                    .await
                    .err()
                    .map(|e| e.to_string())
                    .or(Some("closed".into())),
            }
        }
    };
    assert!(refused.is_some(), "a second connection was accepted");
    first.call(json!({"type": "ping"})).await.unwrap();
    assert_eq!(s.shared.metrics.rejected_connections.get(), 1);
}

both_transports!(
    token_accepted,
    bad_tokens_rejected,
    publish_reaches_subscriber_in_order,
    msgpack_encoding,
    bad_frames_get_codes_and_connection_survives,
    cross_organisation_access_denied,
    grants_are_enforced,
    limits_are_enforced,
    heartbeats_and_timeouts,
    token_expiry_ends_session,
    graceful_shutdown,
    connection_limit,
);

/// WebSocket only: the token in the header or the query string authenticates at upgrade, and a
/// bad one is refused with 401 before the upgrade.
#[tokio::test]
async fn websocket_transport_tokens() {
    let s = TestServer::start().await;
    let token = s.token("alice", "acme");
    let mut by_header = chorus::client::Client::connect_ws(&s.ws_url(), Some(&token))
        .await
        .unwrap();
    assert_eq!(
        by_header.hello(None, Encoding::Json).await.unwrap()["user"],
        "alice"
    );
    let mut by_query =
        chorus::client::Client::connect_ws(&format!("{}?token={token}", s.ws_url()), None)
            .await
            .unwrap();
    assert_eq!(
        by_query.hello(None, Encoding::Json).await.unwrap()["user"],
        "alice"
    );
    let err = chorus::client::Client::connect_ws(&format!("{}?token=bad", s.ws_url()), None)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("401"), "{err}");
    let expired = s.token_with("alice", "acme", &Grant::DEFAULT, -5);
    let err = chorus::client::Client::connect_ws(&s.ws_url(), Some(&expired))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("401"), "{err}");
}
