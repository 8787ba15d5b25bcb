//! The HTTP API, health and metrics, over real HTTP/1.1.

use crate::util::{TestServer, Tr};
use chorus::protocol::ServerFrame;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request on a fresh connection; returns the status and the body (JSON if it parses).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    if let Some(t) = token {
        request += &format!("authorization: Bearer {t}\r\n");
    }
    if let Some(b) = body {
        request += &format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            b.len()
        );
    }
    request += "\r\n";
    request += body.unwrap_or("");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    let status = response[9..12].parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::Null),
        body,
    )
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out += &rest[..size];
        body = &rest[size + 2..];
    }
    out
}

#[tokio::test]
async fn spaces_and_members_over_http() {
    let s = TestServer::start().await;
    let alice = s.token("alice", "acme");
    let (status, space, _) = http(
        s.http,
        "POST",
        "/api/spaces",
        Some(&alice),
        Some(r#"{"space":"eng","name":"Engineering"}"#),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        space,
        json!({"id": "eng", "org": "acme", "name": "Engineering", "created_ms": space["created_ms"]})
    );
    let (status, _, _) = http(
        s.http,
        "POST",
        "/api/spaces",
        Some(&alice),
        Some(r#"{"space":"eng","name":"Again"}"#),
    )
    .await;
    assert_eq!(status, 409);
    let (status, generated, _) = http(
        s.http,
        "POST",
        "/api/spaces",
        Some(&alice),
        Some(r#"{"name":"Generated id"}"#),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(generated["id"].as_str().unwrap().len(), 16);
    let (status, member, _) = http(
        s.http,
        "PUT",
        "/api/spaces/eng/members/bob",
        Some(&alice),
        Some(r#"{"org":"globex"}"#),
    )
    .await;
    assert_eq!((status, &member["role"]), (200, &json!("guest")));
    let (status, body, _) =
        http(s.http, "GET", "/api/spaces/eng/members", Some(&alice), None).await;
    assert_eq!(status, 200);
    let users: Vec<_> = body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["user"].clone(), m["role"].clone()))
        .collect();
    assert_eq!(
        users,
        vec![
            (json!("alice"), json!("owner")),
            (json!("bob"), json!("guest"))
        ]
    );
    let bob = s.token("bob", "globex");
    let (_, listed, _) = http(s.http, "GET", "/api/spaces", Some(&bob), None).await;
    assert_eq!(listed["spaces"].as_array().unwrap().len(), 1);
    let (status, err, _) = http(
        s.http,
        "PUT",
        "/api/spaces/eng/members/eve",
        Some(&bob),
        Some(r#"{"org":"globex"}"#),
    )
    .await;
    assert_eq!((status, &err["code"]), (403, &json!("forbidden")));
    let eve = s.token("eve", "globex");
    let (status, err, _) = http(s.http, "GET", "/api/spaces/eng/members", Some(&eve), None).await;
    assert_eq!((status, &err["code"]), (404, &json!("not_found")));
    let (status, _, _) = http(
        s.http,
        "DELETE",
        "/api/spaces/eng/members/bob",
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (_, listed, _) = http(s.http, "GET", "/api/spaces", Some(&bob), None).await;
    assert_eq!(listed["spaces"], json!([]));
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let s = TestServer::start().await;
    let alice = s.token("alice", "acme");
    let cases = [
        (
            "POST",
            "/api/spaces",
            None,
            Some("{}"),
            401,
            "invalid_token",
        ),
        (
            "GET",
            "/api/spaces",
            Some("nope"),
            None,
            401,
            "invalid_token",
        ),
        (
            "POST",
            "/api/spaces",
            Some(alice.as_str()),
            Some("{not json"),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/spaces",
            Some(alice.as_str()),
            Some(r#"{"name":""}"#),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/spaces",
            Some(alice.as_str()),
            Some(r#"{"space":"bad id!","name":"x"}"#),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/publish",
            Some(alice.as_str()),
            Some(r#"{"channel":"what","data":1}"#),
            400,
            "bad_channel",
        ),
        (
            "POST",
            "/api/publish",
            Some(alice.as_str()),
            Some(r#"{"channel":"topic:none/x","data":1}"#),
            404,
            "not_found",
        ),
    ];
    for (method, path, token, body, status, code) in cases {
        let (got, err, raw) = http(s.http, method, path, token, body).await;
        assert_eq!(
            (got, err["code"].as_str()),
            (status, Some(code)),
            "{method} {path} {body:?}: {raw}"
        );
        assert!(err["message"].is_string());
    }
    let (status, _, _) = http(s.http, "GET", "/ws", None, None).await;
    assert_eq!(status, 400, "a plain GET on /ws is not an upgrade");
}

#[tokio::test]
async fn http_publish_reaches_websocket_subscriber() {
    let s = TestServer::start().await;
    s.space("eng", "alice", "acme").await;
    let mut sub = s.client(Tr::Ws, "alice", "acme").await;
    sub.call(json!({"type": "subscribe", "channel": "topic:eng/deploys"}))
        .await
        .unwrap();
    let body = r#"{"channel":"topic:eng/deploys","data":{"version":"1.2.3"}}"#;
    let (status, reply, _) = http(
        s.http,
        "POST",
        "/api/publish",
        Some(&s.token("alice", "acme")),
        Some(body),
    )
    .await;
    assert_eq!(
        (status, &reply["offset"], &reply["delivered"]),
        (200, &json!(1), &json!(1))
    );
    match sub.expect().await.unwrap() {
        ServerFrame::Message { data, .. } => assert_eq!(data, json!({"version": "1.2.3"})),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn health_and_metrics() {
    let s = TestServer::start().await;
    let (status, _, body) = http(s.http, "GET", "/healthz", None, None).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    s.space("eng", "alice", "acme").await;
    let mut c = s.client(Tr::Ws, "alice", "acme").await;
    c.call(json!({"type": "subscribe", "channel": "topic:eng/x"}))
        .await
        .unwrap();
    c.call(json!({"type": "publish", "channel": "topic:eng/x", "data": 1}))
        .await
        .unwrap();
    let (status, _, text) = http(s.http, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    for needle in [
        "chorus_frames_in_total{transport=\"ws\"}",
        "chorus_frames_out_total{transport=\"ws\"}",
        "chorus_bytes_out_total{transport=\"ws\"}",
        "chorus_publishes_total 1",
        "chorus_deliveries_total 1",
        "chorus_slow_consumer_disconnects_total 0",
        "chorus_outbox_queued_frames",
        "chorus_publish_to_write_seconds_bucket",
        "chorus_connections{transport=\"quic\"} 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    let open: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("chorus_connections{transport=\"ws\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(open >= 1, "the subscriber's connection is counted");
    // The presence gauges follow within about a second.
    let gauge = |text: &str, name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, _, text) = http(s.http, "GET", "/metrics", None, None).await;
        let users = gauge(&text, "chorus_presence_users");
        if users == Some(1) {
            // The set-up's connection may still linger in its grace period.
            let conns = gauge(&text, "chorus_presence_connections");
            assert!(matches!(conns, Some(1 | 2)), "{conns:?}");
            assert!(text.contains("chorus_presence_frames_total"), "{text}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "presence gauges never showed the user: {users:?} in\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Spaces, members and the token secret survive a restart on the same data dir.
#[tokio::test]
async fn spaces_survive_restart() {
    let s = TestServer::start().await;
    s.space("eng", "alice", "acme").await;
    s.add("eng", "alice", "acme", "bob", "globex").await;
    let token = s.token("bob", "globex");
    let dir = s.stop().await;
    let s = TestServer::in_dir(dir, |_| {}).await;
    let (status, listed, _) = http(s.http, "GET", "/api/spaces", Some(&token), None).await;
    assert_eq!(status, 200, "a token minted before the restart still works");
    assert_eq!(listed["spaces"][0]["id"], "eng");
    let mut bob = s.client(Tr::Ws, "bob", "globex").await;
    bob.call(json!({"type": "subscribe", "channel": "topic:eng/x"}))
        .await
        .unwrap();
}
