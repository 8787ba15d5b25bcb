//! Co-edited documents on `/yjs/{doc}`, with a y-websocket client built on `yrs`'s own
//! protocol encoding (independent of the server's).

use crate::api::http;
use crate::util::{TestServer, Tr};
use chorus::access::Grant;
use chorus::protocol::ServerFrame;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, Text, Transact, Update};

const PATIENCE: Duration = Duration::from_secs(10);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Insert `s` at the end of text `t` of `doc`: the update to send.
fn append(doc: &Doc, s: &str) -> Message {
    let text = doc.get_or_insert_text("t");
    let before = doc.transact().state_vector();
    {
        let mut txn = doc.transact_mut();
        let len = text.len(&txn);
        text.insert(&mut txn, len, s);
    }
    Message::Sync(SyncMessage::Update(doc.transact().encode_diff_v1(&before)))
}

fn text(doc: &Doc) -> String {
    doc.get_or_insert_text("t").get_string(&doc.transact())
}

/// Apply a server message to `doc`, as a Yjs client does: the answer to send, if any (step 2
/// for the server's step 1).
fn apply(doc: &Doc, message: Message) -> Option<Message> {
    match message {
        Message::Sync(SyncMessage::SyncStep1(sv)) => {
            let diff = doc.transact().encode_diff_v1(&sv);
            Some(Message::Sync(SyncMessage::SyncStep2(diff)))
        }
        Message::Sync(SyncMessage::SyncStep2(u) | SyncMessage::Update(u)) => {
            let update = Update::decode_v1(&u).unwrap();
            doc.transact_mut().apply_update(update).unwrap();
            None
        }
        _ => None,
    }
}

/// A y-websocket client with its own copy of the document.
struct YClient {
    ws: Ws,
    doc: Doc,
}

impl YClient {
    /// Open `doc` and wait until the server holds it open (see `synced`).
    async fn open(s: &TestServer, doc: &str, token: &str) -> YClient {
        let mut client = YClient::connect(s, doc, token).await;
        client.synced().await;
        client
    }

    /// Connect to `doc` and send step 1, without waiting for the server's answer.
    async fn connect(s: &TestServer, doc: &str, token: &str) -> YClient {
        let url = format!("ws://{}/yjs/{doc}?token={token}", s.http);
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut client = YClient {
            ws,
            doc: Doc::new(),
        };
        let sv = client.doc.transact().state_vector();
        client.send(Message::Sync(SyncMessage::SyncStep1(sv))).await;
        client
    }

    async fn send(&mut self, message: Message) {
        let bytes = message.encode_v1();
        self.ws.send(WsMessage::Binary(bytes.into())).await.unwrap();
    }

    /// Insert `s` at the end of text `t` and send the update.
    async fn append(&mut self, s: &str) {
        let update = append(&self.doc, s);
        self.send(update).await;
    }

    fn text(&self) -> String {
        text(&self.doc)
    }

    /// The next message, or `None` once the server closed (with its close frame, if any).
    async fn next(&mut self) -> Result<Message, Option<(u16, String)>> {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("the server said nothing in time");
            match frame {
                Some(Ok(WsMessage::Binary(bytes))) => {
                    return Ok(Message::decode_v1(&bytes).unwrap());
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    return Err(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// Apply what the server sends, answering its step 1, until the text is `want`.
    async fn until_text(&mut self, want: &str) {
        while self.text() != want {
            match self.next().await {
                Ok(message) => {
                    if let Some(answer) = apply(&self.doc, message) {
                        self.send(answer).await;
                    }
                }
                Err(close) => panic!(
                    "closed ({close:?}) with text {:?}, want {want:?}",
                    self.text()
                ),
            }
        }
    }

    /// Apply what the server sends until its step 2, the answer to our step 1: from then on
    /// the server holds the document open (and has created it if it was new).
    async fn synced(&mut self) {
        loop {
            match self.next().await {
                Ok(Message::Sync(SyncMessage::SyncStep2(u))) => {
                    apply(&self.doc, Message::Sync(SyncMessage::SyncStep2(u)));
                    return;
                }
                Ok(message) => {
                    if let Some(answer) = apply(&self.doc, message) {
                        self.send(answer).await;
                    }
                }
                Err(close) => panic!("closed ({close:?}) before the server's step 2"),
            }
        }
    }

    /// The refusal: permission denied with a reason, then a close code.
    async fn refused(&mut self) -> (String, u16) {
        let reason = match self.next().await {
            Ok(Message::Auth(Some(reason))) => reason,
            other => panic!("expected permission denied, got {other:?}"),
        };
        match self.next().await {
            Err(Some((code, _))) => (reason, code),
            other => panic!("expected a close, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn refusals_are_permission_denied_then_a_final_close_code() {
    let s = TestServer::start().await;
    let alice = s.token("alice", "acme");
    let mut a = YClient::open(&s, "plan", &alice).await;
    a.append("secret").await;

    let mut bob = YClient::connect(&s, "plan", &s.token("bob", "globex")).await;
    let (reason, code) = bob.refused().await;
    assert_eq!(
        (reason.as_str(), code),
        ("no access to this document", 4403)
    );

    let url = format!("ws://{}/yjs/plan", s.http);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut anonymous = YClient {
        ws,
        doc: Doc::new(),
    };
    let (reason, code) = anonymous.refused().await;
    assert!(reason.contains("token"), "{reason}");
    assert_eq!(code, 4401);

    let mut bad = YClient::connect(&s, "no%20spaces", &alice).await;
    assert_eq!(bad.refused().await.1, 4400);
    // None of it reached alice's document.
    a.append("!").await;
    let mut again = YClient::open(&s, "plan", &alice).await;
    again.until_text("secret!").await;
}

#[tokio::test]
async fn users_of_one_organisation_share_documents_and_read_only_users_only_read() {
    let s = TestServer::start().await;
    let mut a = YClient::open(&s, "notes/today", &s.token("alice", "acme")).await;
    a.append("a").await;
    let mut c = YClient::open(&s, "notes/today", &s.token("carol", "acme")).await;
    c.until_text("a").await;
    // A read-only user may open the document, not create one.
    let rita = s.token_with("rita", "acme", &[Grant::Subscribe], 3600);
    let mut r = YClient::open(&s, "notes/today", &rita).await;
    c.append("c").await;
    r.until_text("ac").await;
    r.append("RITA").await;
    a.until_text("ac").await;
    a.append("!").await;
    // Had rita's edit reached anyone, carol's text would hold it before alice's "!".
    c.until_text("ac!").await;
    assert_eq!(s.shared.metrics.docs.updates.get(), 3);
}

#[tokio::test]
async fn documents_survive_a_restart_through_compaction() {
    let s = TestServer::with(|c| c.doc_compact_updates = 3).await;
    let alice = s.token("alice", "acme");
    let mut a = YClient::open(&s, "log", &alice).await;
    let mut want = String::new();
    for i in 0..10 {
        let part = format!("{i},");
        want.push_str(&part);
        a.append(&part).await;
        // One at a time, so that each is saved on its own and compactions follow.
        let mut watcher = YClient::open(&s, "log", &alice).await;
        watcher.until_text(&want).await;
    }
    let compactions = &s.shared.metrics.docs.compactions;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while compactions.get() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no compaction");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(a);
    let dir = s.stop().await;
    let s = TestServer::in_dir(dir, |_| {}).await;
    let mut fresh = YClient::open(&s, "log", &s.token("carol", "acme")).await;
    fresh.until_text(&want).await;
}

#[tokio::test]
async fn a_cold_document_opened_by_many_at_once_is_loaded_once() {
    let s = TestServer::with(|c| c.doc_idle_ms = 0).await;
    let alice = s.token("alice", "acme");
    let mut a = YClient::open(&s, "storm", &alice).await;
    a.append("hello").await;
    drop(a);
    // Evicted once nobody has it open and everything is saved.
    let docs = &s.shared.metrics.docs;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while docs.open.get() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "never evicted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let loads = docs.loads.get();
    let opens = (0..30).map(|i| {
        let token = s.token(&format!("user{i}"), "acme");
        let s = &s;
        async move {
            let mut c = YClient::open(s, "storm", &token).await;
            c.until_text("hello").await;
            c
        }
    });
    let clients = futures_util::future::join_all(opens).await;
    assert_eq!(docs.loads.get(), loads + 1, "loaded more than once");
    assert_eq!(docs.connections.get(), 30);
    drop(clients);
}

#[tokio::test]
async fn oversized_updates_close_the_connection_for_good() {
    let s = TestServer::with(|c| c.doc_max_bytes = 4096).await;
    let alice = s.token("alice", "acme");
    let mut a = YClient::open(&s, "small", &alice).await;
    a.append(&"x".repeat(5000)).await;
    loop {
        match a.next().await {
            Ok(_) => continue,
            Err(close) => {
                let (code, _) = close.expect("a close frame");
                assert_eq!(code, 4413);
                break;
            }
        }
    }
}

#[tokio::test]
async fn the_http_api_creates_lists_exports_and_deletes_documents() {
    let s = TestServer::start().await;
    let (alice, carol) = (s.token("alice", "acme"), s.token("carol", "acme"));
    let bob = s.token("bob", "globex");
    let body = r#"{"id":"specs/api"}"#;
    let (status, doc, _) = http(s.http, "POST", "/api/docs", Some(&alice), Some(body)).await;
    assert_eq!(status, 201, "{doc}");
    assert_eq!(
        (doc["id"].as_str(), doc["space"].as_str()),
        (Some("specs/api"), Some("_acme"))
    );
    let (status, err, _) = http(s.http, "POST", "/api/docs", Some(&carol), Some(body)).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (409, Some("already_exists"))
    );
    let (status, err, _) = http(
        s.http,
        "POST",
        "/api/docs",
        Some(&alice),
        Some(r#"{"id":"a b"}"#),
    )
    .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (400, Some("invalid_request"))
    );

    let mut a = YClient::open(&s, "specs/api", &alice).await;
    a.append("Hello").await;
    let map = a.doc.get_or_insert_map("meta");
    {
        let mut txn = a.doc.transact_mut();
        yrs::Map::insert(&map, &mut txn, "title", "API");
    }
    let update = a
        .doc
        .transact()
        .encode_state_as_update_v1(&Default::default());
    a.send(Message::Sync(SyncMessage::Update(update))).await;

    let (status, list, _) = http(s.http, "GET", "/api/spaces/_acme/docs", Some(&carol), None).await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["id"], "specs/api");
    let content = "/api/docs/specs%2Fapi/content";
    // The export reads the open document, unsaved changes included.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, json, _) = http(s.http, "GET", content, Some(&carol), None).await;
        assert_eq!(status, 200, "{json}");
        if json["meta"]["title"] == "API" {
            assert_eq!(json["t"], "Hello");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{json}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = format!("{content}?format=text&root=t");
    let (status, _, body) = http(s.http, "GET", &text, Some(&carol), None).await;
    assert_eq!((status, body.as_str()), (200, "Hello"));
    let (status, err, _) = http(
        s.http,
        "GET",
        &format!("{content}?format=xml"),
        Some(&carol),
        None,
    )
    .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (400, Some("invalid_request"))
    );

    // Strangers see nothing; members who did not create it may not delete it.
    for path in ["/api/docs/specs%2Fapi", content] {
        let (status, err, _) = http(s.http, "GET", path, Some(&bob), None).await;
        assert_eq!(
            (status, err["code"].as_str()),
            (404, Some("not_found")),
            "{path}"
        );
    }
    let (status, _, _) = http(
        s.http,
        "DELETE",
        "/api/docs/specs%2Fapi",
        Some(&carol),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = http(
        s.http,
        "DELETE",
        "/api/docs/specs%2Fapi",
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 204);
    // Its open connection is closed for good.
    loop {
        match a.next().await {
            Ok(_) => continue,
            Err(close) => {
                assert_eq!(close.expect("a close frame").0, 4404);
                break;
            }
        }
    }
    let (status, _, _) = http(s.http, "GET", "/api/docs/specs%2Fapi", Some(&alice), None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn viewers_show_in_presence_in_the_document_room() {
    let s = TestServer::with(|c| c.presence_grace_ms = 0).await;
    let alice = s.token("alice", "acme");
    // The document (and so the home space) exists before carol connects.
    let mut a = YClient::open(&s, "roadmap", &alice).await;
    a.append("x").await;
    let mut carol = s.client(Tr::Ws, "carol", "acme").await;
    let room = json!({"space": "_acme", "id": "doc:roadmap"});
    let snapshot = carol
        .call(json!({"type": "presence.subscribe", "scope": {"room": room}}))
        .await
        .unwrap();
    let online = |entries: &Value| {
        entries
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["user"]["id"] == "alice" && e["status"] != "offline")
    };
    // alice shows as in the room (at once, or when her viewer's presence arrives) ...
    let mut shown = online(&snapshot["entries"]);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !shown {
        shown = presence_of_alice(&mut carol, deadline).await != presence::Status::Offline;
    }
    // ... and leaves it when her viewer closes.
    drop(a);
    while presence_of_alice(&mut carol, deadline).await != presence::Status::Offline {}
}

/// alice's status in the next presence frame that names her.
async fn presence_of_alice(
    client: &mut chorus::client::Client,
    deadline: tokio::time::Instant,
) -> presence::Status {
    loop {
        let frame = tokio::time::timeout_at(deadline, client.expect())
            .await
            .expect("no presence change in time")
            .unwrap();
        if let ServerFrame::Presence { updates } = frame
            && let Some(e) = updates
                .iter()
                .flat_map(|u| &u.entries)
                .find(|e| e.user.id == "alice")
        {
            return e.status;
        }
    }
}

/// A document opened over the session protocol (JSON), with its own copy.
struct SessionDoc {
    client: chorus::client::Client,
    name: String,
    doc: Doc,
    next_id: u64,
}

impl SessionDoc {
    async fn open(s: &TestServer, user: &str, name: &str) -> Result<SessionDoc, String> {
        let mut client = s.client(Tr::Ws, user, "acme").await;
        let opened = client
            .request(json!({"type": "doc.open", "doc": name}))
            .await
            .unwrap();
        if let Err(e) = opened {
            return Err(e.code);
        }
        let mut d = SessionDoc {
            client,
            name: name.into(),
            doc: Doc::new(),
            next_id: 1000,
        };
        let sv = d.doc.transact().state_vector();
        d.sync(Message::Sync(SyncMessage::SyncStep1(sv))).await;
        Ok(d)
    }

    async fn sync(&mut self, message: Message) {
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD.encode(message.encode_v1());
        self.next_id += 1;
        let frame = json!({"type": "doc.sync", "id": self.next_id, "doc": self.name, "data": data});
        self.client.send(&frame).await.unwrap();
    }

    async fn append(&mut self, s: &str) {
        let update = append(&self.doc, s);
        self.sync(update).await;
    }

    async fn until_text(&mut self, want: &str) {
        while text(&self.doc) != want {
            let frame = tokio::time::timeout(PATIENCE, self.client.expect())
                .await
                .expect("the document never got there")
                .unwrap();
            match frame {
                ServerFrame::Doc { doc, data } => {
                    assert_eq!(doc, self.name);
                    let message = Message::decode_v1(&data.0).unwrap();
                    if let Some(answer) = apply(&self.doc, message) {
                        self.sync(answer).await;
                    }
                }
                ServerFrame::Error { code, message, .. } => panic!("{code}: {message}"),
                ServerFrame::DocClosed { code, message, .. } => panic!("closed: {code}: {message}"),
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn sessions_and_y_websocket_clients_edit_one_document() {
    let s = TestServer::start().await;
    let mut a = YClient::open(&s, "shared", &s.token("alice", "acme")).await;
    a.append("a").await;
    let mut c = SessionDoc::open(&s, "carol", "shared").await.unwrap();
    c.until_text("a").await;
    c.append("c").await;
    a.until_text("ac").await;
    a.append("!").await;
    c.until_text("ac!").await;

    // The same access rules: another organisation's user is refused.
    let mut bob = s.client(Tr::Ws, "bob", "globex").await;
    let refused = bob
        .request(json!({"type": "doc.open", "doc": "shared"}))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.code, "forbidden");
    // Syncing a document that is not open is an error, and the session goes on.
    let not_open = bob
        .request(json!({"type": "doc.sync", "doc": "shared", "data": "AAEA"}))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(not_open.code, "not_subscribed");
    // Create, list and delete as over HTTP.
    let carol = &mut c.client;
    let list = carol
        .call(json!({"type": "doc.list", "space": "_acme"}))
        .await
        .unwrap();
    assert_eq!(list["docs"][0]["id"], "shared");
    let taken = carol
        .request(json!({"type": "doc.create", "doc": "shared"}))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(taken.code, "already_exists");
    let created = carol
        .call(json!({"type": "doc.create", "doc": "scratch"}))
        .await
        .unwrap();
    assert_eq!(created["created_by"], "carol");
    let not_hers = carol
        .request(json!({"type": "doc.delete", "doc": "shared"}))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(not_hers.code, "forbidden");
    carol
        .call(json!({"type": "doc.delete", "doc": "scratch"}))
        .await
        .unwrap();
    // A closed document sends nothing more.
    c.client
        .call(json!({"type": "doc.close", "doc": "shared"}))
        .await
        .unwrap();
    a.append("?").await;
    let mut fresh = SessionDoc::open(&s, "dave", "shared").await.unwrap();
    fresh.until_text("ac!?").await;
}

#[tokio::test]
async fn the_openapi_document_describes_the_document_routes() {
    let s = TestServer::start().await;
    let (status, doc, _) = http(s.http, "GET", "/api/openapi.json", None, None).await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/docs", &["post"][..]),
        ("/api/docs/{id}", &["get", "delete"]),
        ("/api/docs/{id}/content", &["get"]),
        ("/api/spaces/{space}/docs", &["get"]),
    ] {
        for method in methods {
            assert!(
                paths[path][*method].is_object(),
                "{method} {path} is not documented"
            );
        }
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    assert!(schemas.contains_key("DocRecord") && schemas.contains_key("CreateBody"));
}

#[tokio::test]
async fn editing_through_y_websocket_keeps_a_user_active() {
    let s = TestServer::with(|c| c.presence_idle_timeout_ms = 2_000).await;
    let mut a = YClient::open(&s, "busy", &s.token("alice", "acme")).await;
    a.append("x").await;
    let mut carol = s.client(Tr::Ws, "carol", "acme").await;
    let room = json!({"space": "_acme", "id": "doc:busy"});
    carol
        .call(json!({"type": "presence.subscribe", "scope": {"room": room}}))
        .await
        .unwrap();
    // Three idle timeouts of steady typing: alice never turns away ...
    let typing = tokio::time::Instant::now();
    while typing.elapsed() < Duration::from_secs(6) {
        a.append(".").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Ok(frame) = tokio::time::timeout(Duration::ZERO, carol.expect()).await {
            if let ServerFrame::Presence { updates } = frame.unwrap() {
                let away = updates
                    .iter()
                    .flat_map(|u| &u.entries)
                    .any(|e| e.user.id == "alice" && e.status == presence::Status::Away);
                assert!(!away, "alice turned away while typing");
            }
        }
    }
    // ... and does once she stops.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while presence_of_alice(&mut carol, deadline).await != presence::Status::Away {}
}
