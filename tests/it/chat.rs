//! Persistent chat over real sockets: rooms and their access rules, acknowledged sends, live
//! delivery, edits and deletes, history, resume (from memory, from the store, across a restart),
//! and a crash test that `kill -9`s the real binary mid-stream.

use crate::both_transports;
use crate::util::{TestServer, Tr, code};
use chorus::client::Client;
use chorus::protocol::ServerFrame;
use serde_json::{Value, json};
use std::time::Duration;

/// Space `eng` of acme: alice owns it, bob is a member, gus (of globex) a guest. Alice owns the
/// public room `general`.
async fn setup(s: &TestServer) {
    s.space("eng", "alice", "acme").await;
    s.add("eng", "alice", "acme", "bob", "acme").await;
    s.add("eng", "alice", "acme", "gus", "globex").await;
    let mut alice = s.client(Tr::Ws, "alice", "acme").await;
    alice
        .call(json!({"type": "chat.create_room", "space": "eng", "room": "general", "name": "General"}))
        .await
        .unwrap();
}

fn send(room: &str, client_id: &str, body: &str) -> Value {
    json!({"type": "chat.send", "space": "eng", "room": room, "client_id": client_id, "body": body})
}

/// Send `frame` with `id` and collect every room message that arrives before its reply.
async fn collect_until_reply(
    c: &mut Client,
    mut frame: Value,
    id: u64,
) -> (Vec<(u64, Value)>, Result<Value, String>) {
    frame["id"] = json!(id);
    c.send(&frame).await.unwrap();
    let mut messages = Vec::new();
    loop {
        match c.expect().await.unwrap() {
            ServerFrame::Message { offset, data, .. } => messages.push((offset, data)),
            ServerFrame::Reply { id: got, result } if got == id => return (messages, Ok(result)),
            ServerFrame::Error {
                id: Some(got),
                code,
                ..
            } if got == id => return (messages, Err(code.as_str().to_string())),
            _ => {}
        }
    }
}

/// The next `n` room messages (skipping pings), as (offset, data).
async fn messages(c: &mut Client, n: usize) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    while out.len() < n {
        let frame = tokio::time::timeout(Duration::from_secs(10), c.expect())
            .await
            .expect("a message in time")
            .unwrap();
        if let ServerFrame::Message { offset, data, .. } = frame {
            out.push((offset, data));
        }
    }
    out
}

/// Nothing but the reply to a ping arrives next.
async fn quiet(c: &mut Client) {
    let (extra, reply) = collect_until_reply(c, json!({"type": "ping"}), 999_999).await;
    assert!(extra.is_empty(), "unexpected messages {extra:?}");
    reply.unwrap();
}

fn offsets(messages: &[(u64, Value)]) -> Vec<u64> {
    messages.iter().map(|(o, _)| *o).collect()
}

async fn rooms_and_access(tr: Tr) {
    let s = TestServer::start().await;
    setup(&s).await;
    let mut alice = s.client(tr, "alice", "acme").await;
    let mut bob = s.client(tr, "bob", "acme").await;
    let mut gus = s.client(tr, "gus", "globex").await;
    let secret = alice
        .call(json!({"type": "chat.create_room", "space": "eng", "room": "secret", "name": "Secret", "private": true}))
        .await
        .unwrap();
    assert_eq!(
        (
            &secret["private"],
            &secret["role"],
            &secret["channel"],
            &secret["head"]
        ),
        (
            &json!(true),
            &json!("owner"),
            &json!("room:eng/secret"),
            &json!(0)
        )
    );
    let again = alice
        .request(json!({"type": "chat.create_room", "space": "eng", "room": "secret", "name": "x"}))
        .await
        .unwrap();
    assert_eq!(code(again), "already_exists");
    let generated = alice
        .call(json!({"type": "chat.create_room", "space": "eng", "name": "Random"}))
        .await
        .unwrap();
    assert_eq!(generated["id"].as_str().unwrap().len(), 16);

    // Bob sees the public rooms only, and not as a member.
    let listed = bob
        .call(json!({"type": "chat.rooms", "space": "eng"}))
        .await
        .unwrap();
    let names: Vec<_> = listed["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r["role"].clone()))
        .filter(|(id, _)| *id != generated["id"])
        .collect();
    assert_eq!(names, [("general", Value::Null)]);
    for request in [
        json!({"type": "chat.members", "space": "eng", "room": "secret"}),
        json!({"type": "chat.join", "space": "eng", "room": "secret"}),
        json!({"type": "chat.history", "space": "eng", "room": "secret"}),
        json!({"type": "subscribe", "channel": "room:eng/secret"}),
    ] {
        assert_eq!(code(bob.request(request).await.unwrap()), "not_found");
    }
    // Reading a public room needs no membership; sending does.
    bob.call(json!({"type": "chat.history", "space": "eng", "room": "general"}))
        .await
        .unwrap();
    assert_eq!(
        code(bob.request(send("general", "b1", "hi")).await.unwrap()),
        "forbidden"
    );
    let joined = bob
        .call(json!({"type": "chat.join", "space": "eng", "room": "general"}))
        .await
        .unwrap();
    assert_eq!(joined["role"], "member");
    bob.call(send("general", "b1", "hi")).await.unwrap();

    // Private rooms are joined by invitation.
    let invited = alice
        .call(json!({"type": "chat.invite", "space": "eng", "room": "secret", "user": "bob"}))
        .await
        .unwrap();
    assert_eq!(
        (&invited["role"], &invited["org"]),
        (&json!("member"), &json!("acme"))
    );
    let members = bob
        .call(json!({"type": "chat.members", "space": "eng", "room": "secret"}))
        .await
        .unwrap();
    let users: Vec<_> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["alice", "bob"]);
    let no_one = alice
        .request(json!({"type": "chat.invite", "space": "eng", "room": "secret", "user": "zed"}))
        .await
        .unwrap();
    assert_eq!(code(no_one), "not_found");

    // Only owners manage the room.
    let rename =
        json!({"type": "chat.rename_room", "space": "eng", "room": "secret", "name": "Hush"});
    assert_eq!(
        code(bob.request(rename.clone()).await.unwrap()),
        "forbidden"
    );
    let renamed = alice.call(rename).await.unwrap();
    assert_eq!(renamed["name"], "Hush");
    let archive = json!({"type": "chat.archive_room", "space": "eng", "room": "general"});
    assert_eq!(
        code(bob.request(archive.clone()).await.unwrap()),
        "forbidden"
    );
    assert_eq!(alice.call(archive).await.unwrap()["archived"], true);
    assert_eq!(
        code(bob.request(send("general", "b2", "hi")).await.unwrap()),
        "forbidden"
    );
    let history = bob
        .call(json!({"type": "chat.history", "space": "eng", "room": "general"}))
        .await
        .unwrap();
    assert_eq!(history["messages"].as_array().unwrap().len(), 1);
    alice
        .call(json!({"type": "chat.archive_room", "space": "eng", "room": "general", "archived": false}))
        .await
        .unwrap();
    bob.call(send("general", "b2", "hi")).await.unwrap();

    // A guest of the space joins public rooms as a guest, and neither creates nor invites.
    let joined = gus
        .call(json!({"type": "chat.join", "space": "eng", "room": "general"}))
        .await
        .unwrap();
    assert_eq!(joined["role"], "guest");
    let create = json!({"type": "chat.create_room", "space": "eng", "room": "g", "name": "G"});
    assert_eq!(code(gus.request(create).await.unwrap()), "forbidden");
    let invite = json!({"type": "chat.invite", "space": "eng", "room": "general", "user": "bob"});
    assert_eq!(code(gus.request(invite).await.unwrap()), "forbidden");
    // A guest is denied the rooms of a space they do not belong to: it does not exist for them.
    s.space("ops", "alice", "acme").await;
    alice
        .call(json!({"type": "chat.create_room", "space": "ops", "room": "general", "name": "Ops"}))
        .await
        .unwrap();
    for request in [
        json!({"type": "chat.rooms", "space": "ops"}),
        json!({"type": "chat.history", "space": "ops", "room": "general"}),
        json!({"type": "chat.join", "space": "ops", "room": "general"}),
        json!({"type": "subscribe", "channel": "room:ops/general"}),
    ] {
        assert_eq!(code(gus.request(request).await.unwrap()), "not_found");
    }

    // Leaving, and removing others (owners only).
    let remove_alice =
        json!({"type": "chat.remove_member", "space": "eng", "room": "general", "user": "alice"});
    assert_eq!(code(bob.request(remove_alice).await.unwrap()), "forbidden");
    bob.call(json!({"type": "chat.leave", "space": "eng", "room": "general"}))
        .await
        .unwrap();
    let again = bob
        .request(json!({"type": "chat.leave", "space": "eng", "room": "general"}))
        .await
        .unwrap();
    assert_eq!(code(again), "not_found");
    alice
        .call(
            json!({"type": "chat.remove_member", "space": "eng", "room": "general", "user": "gus"}),
        )
        .await
        .unwrap();
}

async fn send_is_acknowledged_and_delivered_in_order(tr: Tr) {
    let s = TestServer::start().await;
    setup(&s).await;
    let mut bob = s.client(tr, "bob", "acme").await;
    let sub = bob
        .call(json!({"type": "subscribe", "channel": "room:eng/general"}))
        .await
        .unwrap();
    assert_eq!((&sub["offset"], &sub["replayed"]), (&json!(0), &json!(0)));
    let epoch = sub["epoch"].as_u64().unwrap();
    let mut alice = s.client(tr, "alice", "acme").await;
    for n in 1..=20u64 {
        let ack = alice
            .call(send("general", &format!("m{n}"), &format!("hello {n}")))
            .await
            .unwrap();
        assert_eq!(
            (
                &ack["offset"],
                &ack["epoch"],
                &ack["duplicate"],
                &ack["client_id"]
            ),
            (
                &json!(n),
                &json!(epoch),
                &json!(false),
                &json!(format!("m{n}"))
            )
        );
    }
    let got = messages(&mut bob, 20).await;
    assert_eq!(offsets(&got), (1..=20).collect::<Vec<_>>());
    let (_, first) = &got[0];
    assert_eq!(first["kind"], "message");
    assert_eq!(
        (
            &first["message"]["body"],
            &first["message"]["author"],
            &first["message"]["offset"]
        ),
        (&json!("hello 1"), &json!("alice"), &json!(1))
    );

    // A retried send is answered with the original acknowledgement and delivers nothing.
    let retry = alice.call(send("general", "m5", "changed")).await.unwrap();
    assert_eq!(
        (&retry["offset"], &retry["duplicate"]),
        (&json!(5), &json!(true))
    );
    quiet(&mut bob).await;

    // The sender, subscribed too, gets its own message before the acknowledgement.
    alice
        .call(json!({"type": "subscribe", "channel": "room:eng/general"}))
        .await
        .unwrap();
    let (mine, ack) = collect_until_reply(&mut alice, send("general", "m21", "x"), 77).await;
    assert_eq!(offsets(&mine), [21]);
    assert_eq!(ack.unwrap()["offset"], 21);
    assert_eq!(offsets(&messages(&mut bob, 1).await), [21]);

    // Bad input, and room channels are not for `publish`.
    let empty = alice.request(send("general", "m22", "  ")).await.unwrap();
    assert_eq!(code(empty), "invalid_request");
    let bad_id = alice
        .request(send("general", "no spaces", "x"))
        .await
        .unwrap();
    assert_eq!(code(bad_id), "invalid_request");
    let format = json!({"type": "chat.send", "space": "eng", "room": "general", "client_id": "f", "body": "x", "format": "html"});
    assert_eq!(
        code(alice.request(format).await.unwrap()),
        "invalid_request"
    );
    let publish = json!({"type": "publish", "channel": "room:eng/general", "data": 1});
    assert_eq!(code(alice.request(publish).await.unwrap()), "forbidden");
    let missing = alice.request(send("nope", "m", "x")).await.unwrap();
    assert_eq!(code(missing), "not_found");
    quiet(&mut bob).await;
}

async fn edits_deletes_history_and_sync(tr: Tr) {
    let s = TestServer::start().await;
    setup(&s).await;
    let mut alice = s.client(tr, "alice", "acme").await;
    let mut bob = s.client(tr, "bob", "acme").await;
    bob.call(json!({"type": "chat.join", "space": "eng", "room": "general"}))
        .await
        .unwrap();
    for n in 1..=4 {
        alice
            .call(send("general", &format!("a{n}"), &format!("v{n}")))
            .await
            .unwrap();
    }
    bob.call(send("general", "b1", "bob's")).await.unwrap(); // offset 5
    // Its own connection: `request` skips the messages that arrive meanwhile.
    let mut watcher = s.client(tr, "bob", "acme").await;
    let sub = watcher
        .call(json!({"type": "subscribe", "channel": "room:eng/general"}))
        .await
        .unwrap();
    assert_eq!(sub["offset"], 5);

    let edit = json!({"type": "chat.edit", "space": "eng", "room": "general", "offset": 2, "body": "v2'", "format": "markdown"});
    assert_eq!(code(bob.request(edit.clone()).await.unwrap()), "forbidden");
    let edited = alice.call(edit).await.unwrap();
    assert_eq!(
        (&edited["offset"], &edited["kind"]),
        (&json!(6), &json!("edit"))
    );
    assert_eq!(
        (
            &edited["message"]["offset"],
            &edited["message"]["body"],
            &edited["message"]["format"]
        ),
        (&json!(2), &json!("v2'"), &json!("markdown"))
    );
    assert!(edited["message"]["edited_ms"].is_i64());
    let revisions = bob
        .call(json!({"type": "chat.revisions", "space": "eng", "room": "general", "offset": 2}))
        .await
        .unwrap();
    assert_eq!(revisions["revisions"][0]["body"], "v2");

    // Bob may delete his own message but not alice's; alice, the room's owner, may delete his.
    let delete_alices =
        json!({"type": "chat.delete", "space": "eng", "room": "general", "offset": 3});
    assert_eq!(code(bob.request(delete_alices).await.unwrap()), "forbidden");
    let deleted = alice
        .call(json!({"type": "chat.delete", "space": "eng", "room": "general", "offset": 5}))
        .await
        .unwrap();
    assert_eq!(
        (&deleted["offset"], &deleted["kind"]),
        (&json!(7), &json!("delete"))
    );
    assert!(deleted["message"]["body"].is_null() && deleted["message"]["deleted_ms"].is_i64());
    let again = alice
        .call(json!({"type": "chat.delete", "space": "eng", "room": "general", "offset": 5}))
        .await
        .unwrap();
    assert!(again["offset"].is_null());
    let edit_tombstone =
        json!({"type": "chat.edit", "space": "eng", "room": "general", "offset": 5, "body": "x"});
    assert_eq!(
        code(bob.request(edit_tombstone).await.unwrap()),
        "not_found"
    );
    let live = messages(&mut watcher, 2).await;
    assert_eq!(offsets(&live), [6, 7]);
    assert_eq!(
        (&live[0].1["kind"], &live[1].1["kind"]),
        (&json!("edit"), &json!("delete"))
    );

    // History: messages in their current state, paged by offset.
    let page = |before: Option<u64>, after: Option<u64>, limit: u64| json!({"type": "chat.history", "space": "eng", "room": "general", "before": before, "after": after, "limit": limit});
    let latest = bob.call(page(None, None, 2)).await.unwrap();
    let shown: Vec<_> = latest["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["offset"].as_u64().unwrap(), m["body"].clone()))
        .collect();
    assert_eq!(shown, [(4, json!("v4")), (5, Value::Null)]);
    assert_eq!(latest["more"], true);
    assert_eq!(latest["epoch"], sub["epoch"]);
    let older = bob.call(page(Some(4), None, 10)).await.unwrap();
    let shown: Vec<_> = older["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["offset"].as_u64().unwrap(), m["body"].clone()))
        .collect();
    assert_eq!(
        shown,
        [(1, json!("v1")), (2, json!("v2'")), (3, json!("v3"))]
    );
    assert_eq!(older["more"], false);
    let newer = bob.call(page(None, Some(3), 1)).await.unwrap();
    assert_eq!(newer["messages"][0]["offset"], 4);
    assert_eq!(newer["more"], true);

    // Sync: the stream's events after an offset, each with its message as it is now.
    let sync = bob
        .call(json!({"type": "chat.sync", "space": "eng", "room": "general", "after": 4, "epoch": sub["epoch"]}))
        .await
        .unwrap();
    let events: Vec<_> = sync["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().unwrap(),
                e["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            (5, "message".into()),
            (6, "edit".into()),
            (7, "delete".into())
        ]
    );
    assert!(
        sync["events"][0]["message"]["body"].is_null(),
        "no deleted body comes back"
    );
    assert_eq!((&sync["head"], &sync["more"]), (&json!(7), &json!(false)));
    let paged = bob
        .call(
            json!({"type": "chat.sync", "space": "eng", "room": "general", "after": 0, "limit": 3}),
        )
        .await
        .unwrap();
    assert_eq!(
        (paged["events"].as_array().unwrap().len(), &paged["more"]),
        (3, &json!(true))
    );
    let reset = bob
        .call(
            json!({"type": "chat.sync", "space": "eng", "room": "general", "after": 4, "epoch": 1}),
        )
        .await
        .unwrap();
    assert_eq!((&reset["reset"], &reset["head"]), (&json!(true), &json!(7)));
    assert!(reset.get("events").is_none());
}

async fn resume_from_memory_and_from_the_store(tr: Tr) {
    let s = TestServer::start().await;
    setup(&s).await;
    let mut alice = s.client(tr, "alice", "acme").await;
    let mut bob = s.client(tr, "bob", "acme").await;
    let sub = bob
        .call(json!({"type": "subscribe", "channel": "room:eng/general"}))
        .await
        .unwrap();
    let epoch = sub["epoch"].as_u64().unwrap();
    for n in 1..=5 {
        alice
            .call(send("general", &format!("a{n}"), "x"))
            .await
            .unwrap();
    }
    assert_eq!(offsets(&messages(&mut bob, 5).await), [1, 2, 3, 4, 5]);
    drop(bob);

    // Missed while away; the room's tail is still in memory.
    for n in 6..=9 {
        alice
            .call(send("general", &format!("a{n}"), "x"))
            .await
            .unwrap();
    }
    let resume = json!({"type": "subscribe", "channel": "room:eng/general", "from": {"epoch": epoch, "offset": 5}});
    let mut bob = s.client(tr, "bob", "acme").await;
    let (replayed, reply) = collect_until_reply(&mut bob, resume, 50).await;
    let reply = reply.unwrap();
    assert_eq!(offsets(&replayed), [6, 7, 8, 9]);
    assert_eq!(
        (
            &reply["resume"],
            &reply["replayed"],
            &reply["offset"],
            &reply["epoch"]
        ),
        (&json!("ok"), &json!(4), &json!(9), &json!(epoch))
    );
    alice.call(send("general", "a10", "x")).await.unwrap();
    assert_eq!(offsets(&messages(&mut bob, 1).await), [10]);
    drop(bob);
    drop(alice);

    // After a restart nothing is in memory: the same cursor replays from the store.
    let dir = s.stop().await;
    let s = TestServer::in_dir(dir, |_| {}).await;
    let mut alice = s.client(tr, "alice", "acme").await;
    alice.call(send("general", "a11", "x")).await.unwrap();
    let mut bob = s.client(tr, "bob", "acme").await;
    let resume = json!({"type": "subscribe", "channel": "room:eng/general", "from": {"epoch": epoch, "offset": 7}});
    let (replayed, reply) = collect_until_reply(&mut bob, resume, 51).await;
    let reply = reply.unwrap();
    assert_eq!(offsets(&replayed), [8, 9, 10, 11]);
    assert_eq!(
        (
            &reply["resume"],
            &reply["replayed"],
            &reply["offset"],
            &reply["epoch"]
        ),
        (&json!("ok"), &json!(4), &json!(11), &json!(epoch))
    );
    assert_eq!(replayed[3].1["message"]["client_id"], "a11");
    alice.call(send("general", "a12", "x")).await.unwrap();
    assert_eq!(offsets(&messages(&mut bob, 1).await), [12]);
    // Up to date: nothing to replay, from memory now.
    let mut carol = s.client(tr, "bob", "acme").await;
    let resume = json!({"type": "subscribe", "channel": "room:eng/general", "from": {"epoch": epoch, "offset": 12}});
    let (replayed, reply) = collect_until_reply(&mut carol, resume, 52).await;
    assert!(replayed.is_empty());
    assert_eq!(
        (
            reply.as_ref().unwrap()["offset"].as_u64(),
            reply.unwrap()["resume"].as_str()
        ),
        (Some(12), Some("ok"))
    );

    // Another epoch (or an offset past the head) gets a reset: no replay, live from the head.
    for from in [
        json!({"epoch": epoch + 1, "offset": 3}),
        json!({"epoch": epoch, "offset": 99}),
    ] {
        let mut dave = s.client(tr, "bob", "acme").await;
        let resume = json!({"type": "subscribe", "channel": "room:eng/general", "from": from});
        let (replayed, reply) = collect_until_reply(&mut dave, resume, 53).await;
        let reply = reply.unwrap();
        assert!(replayed.is_empty());
        assert_eq!(
            (&reply["resume"], &reply["offset"], &reply["epoch"]),
            (&json!("reset"), &json!(12), &json!(epoch))
        );
    }
}

/// The data of the next `message` frame on `channel` (skipping others).
async fn next_on(c: &mut Client, channel: &str) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), c.expect())
            .await
            .expect("a message in time")
            .unwrap();
        if let ServerFrame::Message {
            channel: on, data, ..
        } = frame
            && on == channel
        {
            return data;
        }
    }
}

async fn mentions_read_state_and_receipts(tr: Tr) {
    let s = TestServer::start().await;
    setup(&s).await;
    let mut alice = s.client(tr, "alice", "acme").await;
    let mut bob = s.client(tr, "bob", "acme").await;
    bob.call(json!({"type": "chat.join", "space": "eng", "room": "general"}))
        .await
        .unwrap();
    // Personal channels: one's own only, and only the server writes to them.
    let mut bob_phone = s.client(tr, "bob", "acme").await;
    bob_phone
        .call(json!({"type": "subscribe", "channel": "user:acme/bob"}))
        .await
        .unwrap();
    let mut alice_laptop = s.client(tr, "alice", "acme").await;
    alice_laptop
        .call(json!({"type": "subscribe", "channel": "user:acme/alice"}))
        .await
        .unwrap();
    for other in ["user:acme/alice", "user:globex/bob"] {
        let denied = bob
            .request(json!({"type": "subscribe", "channel": other}))
            .await
            .unwrap();
        assert_eq!(code(denied), "forbidden");
    }
    let publish = json!({"type": "publish", "channel": "user:acme/bob", "data": 1});
    assert_eq!(code(bob.request(publish).await.unwrap()), "forbidden");

    // A mention of a room member reaches their devices; one of a non-member counts for nothing.
    alice
        .call(send("general", "m1", "hi @bob and @nobody"))
        .await
        .unwrap();
    let mention = next_on(&mut bob_phone, "user:acme/bob").await;
    assert_eq!(
        (&mention["kind"], &mention["room"], &mention["offset"]),
        (&json!("mention"), &json!("general"), &json!(1))
    );
    assert_eq!(mention["message"]["mentions"], json!(["bob"]));
    alice.call(send("general", "m2", "plain")).await.unwrap();
    alice
        .call(send("general", "m3", "@bob again"))
        .await
        .unwrap();
    bob.call(send("general", "b1", "mine, @alice"))
        .await
        .unwrap();
    assert_eq!(next_on(&mut bob_phone, "user:acme/bob").await["offset"], 3);
    assert_eq!(
        next_on(&mut alice_laptop, "user:acme/alice").await["kind"],
        "mention"
    );

    let unread = bob
        .call(json!({"type": "chat.unread", "space": "eng"}))
        .await
        .unwrap();
    assert_eq!(
        unread["rooms"],
        json!([{"space": "eng", "room": "general", "head": 4, "last_read": 0, "unread": 3, "mentions": 2}])
    );
    // Reading moves the state on every device of the reader, and is a receipt for the others.
    let read = bob
        .call(json!({"type": "chat.mark_read", "space": "eng", "room": "general", "offset": 2}))
        .await
        .unwrap();
    assert_eq!(
        (&read["last_read"], &read["unread"], &read["mentions"]),
        (&json!(2), &json!(1), &json!(1))
    );
    let on_phone = next_on(&mut bob_phone, "user:acme/bob").await;
    assert_eq!(
        (
            &on_phone["kind"],
            &on_phone["last_read"],
            &on_phone["unread"]
        ),
        (&json!("read"), &json!(2), &json!(1))
    );
    let receipt = next_on(&mut alice_laptop, "user:acme/alice").await;
    assert_eq!(
        (&receipt["kind"], &receipt["user"], &receipt["offset"]),
        (&json!("receipt"), &json!("bob"), &json!(2))
    );
    // Not backwards, and nothing to tell.
    let again = bob
        .call(json!({"type": "chat.mark_read", "space": "eng", "room": "general", "offset": 1}))
        .await
        .unwrap();
    assert_eq!(again["last_read"], 2);
    quiet(&mut bob_phone).await;
    let receipts = alice
        .call(json!({"type": "chat.receipts", "space": "eng", "room": "general"}))
        .await
        .unwrap();
    assert_eq!(receipts["receipts"][0]["user"], "bob");
    assert_eq!(receipts["receipts"][0]["offset"], 2);
}

async fn threads_and_reactions(tr: Tr) {
    let s = TestServer::start().await;
    setup(&s).await;
    let mut alice = s.client(tr, "alice", "acme").await;
    let mut bob = s.client(tr, "bob", "acme").await;
    bob.call(json!({"type": "chat.join", "space": "eng", "room": "general"}))
        .await
        .unwrap();
    let mut watcher = s.client(tr, "bob", "acme").await;
    watcher
        .call(json!({"type": "subscribe", "channel": "room:eng/general"}))
        .await
        .unwrap();
    alice
        .call(send("general", "root", "Release?"))
        .await
        .unwrap();
    let mut reply = send("general", "r1", "Tuesday");
    reply["thread"] = json!(1);
    bob.call(reply).await.unwrap();
    let mut nested = send("general", "r2", "no");
    nested["thread"] = json!(2);
    assert_eq!(code(bob.request(nested).await.unwrap()), "not_found");
    alice.call(send("general", "top", "Lunch?")).await.unwrap();

    let top = bob
        .call(json!({"type": "chat.history", "space": "eng", "room": "general"}))
        .await
        .unwrap();
    let roots: Vec<_> = top["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].clone())
        .collect();
    assert_eq!(roots, [json!(1), json!(3)]);
    assert_eq!(top["messages"][0]["replies"]["count"], 1);
    assert_eq!(top["messages"][0]["replies"]["last_offset"], 2);
    let thread = bob
        .call(json!({"type": "chat.history", "space": "eng", "room": "general", "thread": 1}))
        .await
        .unwrap();
    assert_eq!(thread["messages"][0]["body"], "Tuesday");
    assert_eq!(thread["messages"][0]["thread"], 1);

    let react = json!({"type": "chat.react", "space": "eng", "room": "general", "offset": 1, "emoji": "👍"});
    let reacted = bob.call(react.clone()).await.unwrap();
    assert_eq!(
        (&reacted["offset"], &reacted["kind"]),
        (&json!(4), &json!("reaction"))
    );
    assert_eq!(
        reacted["message"]["reactions"],
        json!([{"emoji": "👍", "count": 1, "users": ["bob"]}])
    );
    let again = bob.call(react).await.unwrap();
    assert!(again["offset"].is_null());
    let bad = json!({"type": "chat.react", "space": "eng", "room": "general", "offset": 1, "emoji": "a b"});
    assert_eq!(code(bob.request(bad).await.unwrap()), "invalid_request");
    let unreacted = bob
        .call(json!({"type": "chat.unreact", "space": "eng", "room": "general", "offset": 1, "emoji": "👍"}))
        .await
        .unwrap();
    assert_eq!(unreacted["offset"], 5);
    assert!(unreacted["message"].get("reactions").is_none());
    let live = messages(&mut watcher, 5).await;
    // A reply's event carries its root as it is now, summary and all.
    assert_eq!(live[1].1["root"]["offset"], 1);
    assert_eq!(live[1].1["root"]["replies"]["count"], 1);
    let kinds: Vec<_> = live
        .iter()
        .map(|(o, d)| {
            (
                *o,
                d["kind"].as_str().unwrap().to_string(),
                d["message"]["thread"].clone(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (1, "message".into(), Value::Null),
            (2, "message".into(), json!(1)),
            (3, "message".into(), Value::Null),
            (4, "reaction".into(), Value::Null),
            (5, "reaction".into(), Value::Null),
        ]
    );
}

async fn direct_messages(tr: Tr) {
    let s = TestServer::start().await;
    setup(&s).await;
    let mut bob = s.client(tr, "bob", "acme").await;
    let mut gus = s.client(tr, "gus", "globex").await;
    let mut alice = s.client(tr, "alice", "acme").await;
    let open = |users: Value| json!({"type": "chat.open_direct", "space": "eng", "users": users});
    let dm = bob.call(open(json!(["gus"]))).await.unwrap();
    assert_eq!(
        (&dm["direct"], &dm["private"], &dm["created"], &dm["name"]),
        (&json!(true), &json!(true), &json!(true), &json!("bob, gus"))
    );
    let id = dm["id"].as_str().unwrap().to_string();
    // Either side opening it again gets the same conversation.
    let again = gus.call(open(json!(["bob", "gus"]))).await.unwrap();
    assert_eq!(
        (&again["id"], &again["created"]),
        (&json!(id), &json!(false))
    );
    let mut message = send(&id, "d1", "psst");
    message["room"] = json!(id);
    bob.call(message).await.unwrap();
    let history = json!({"type": "chat.history", "space": "eng", "room": id});
    let got = gus.call(history.clone()).await.unwrap();
    assert_eq!(got["messages"][0]["body"], "psst");
    assert_eq!(got["messages"][0]["author"], "bob");

    // Nobody else can tell it exists, not even the space's owner.
    assert_eq!(code(alice.request(history).await.unwrap()), "not_found");
    let listed = alice
        .call(json!({"type": "chat.rooms", "space": "eng"}))
        .await
        .unwrap();
    assert!(
        listed["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["id"] != json!(id))
    );
    let subscribe = json!({"type": "subscribe", "channel": format!("room:eng/{id}")});
    assert_eq!(code(alice.request(subscribe).await.unwrap()), "not_found");
    // Its members are fixed.
    for request in [
        json!({"type": "chat.invite", "space": "eng", "room": id, "user": "alice"}),
        json!({"type": "chat.leave", "space": "eng", "room": id}),
        json!({"type": "chat.rename_room", "space": "eng", "room": id, "name": "x"}),
        json!({"type": "chat.archive_room", "space": "eng", "room": id}),
    ] {
        assert_eq!(code(bob.request(request).await.unwrap()), "forbidden");
    }
    assert_eq!(
        code(bob.request(open(json!(["zed"]))).await.unwrap()),
        "not_found"
    );
    assert_eq!(
        code(bob.request(open(json!(["bob"]))).await.unwrap()),
        "invalid_request"
    );
    // A group conversation is another room.
    let group = alice.call(open(json!(["bob", "gus"]))).await.unwrap();
    assert_ne!(group["id"], json!(id));
    assert_eq!(group["name"], "alice, bob, gus");
}

async fn search_shows_only_what_the_caller_may_read(tr: Tr) {
    let s = TestServer::start().await;
    setup(&s).await;
    let mut alice = s.client(tr, "alice", "acme").await;
    alice
        .call(json!({"type": "chat.create_room", "space": "eng", "room": "secret", "name": "S", "private": true}))
        .await
        .unwrap();
    alice
        .call(send("general", "g1", "Launch party on Friday"))
        .await
        .unwrap();
    alice
        .call(send("secret", "s1", "launch codes: 0000"))
        .await
        .unwrap();
    alice
        .call(send("general", "g2", "unrelated"))
        .await
        .unwrap();
    let search = |query: &str| json!({"type": "chat.search", "space": "eng", "query": query});
    let rooms = |reply: &Value| {
        let mut rooms: Vec<String> = reply["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| format!("{}/{}", h["room"].as_str().unwrap(), h["message"]["offset"]))
            .collect();
        rooms.sort();
        rooms
    };
    let all = alice.call(search("launch")).await.unwrap();
    assert_eq!(rooms(&all), ["general/1", "secret/1"]);
    assert_eq!(all["more"], false);
    assert!(all["hits"][0]["score"].as_f64().unwrap() > 0.0);
    for (user, org) in [("bob", "acme"), ("gus", "globex")] {
        let mut c = s.client(tr, user, org).await;
        let seen = c.call(search("LAUNCH")).await.unwrap();
        assert_eq!(rooms(&seen), ["general/1"], "{user}");
        let in_secret =
            json!({"type": "chat.search", "space": "eng", "query": "launch", "room": "secret"});
        assert_eq!(code(c.request(in_secret).await.unwrap()), "not_found");
    }
    let by = json!({"type": "chat.search", "space": "eng", "query": "launch", "author": "bob"});
    assert!(
        alice.call(by).await.unwrap()["hits"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let paged = json!({"type": "chat.search", "space": "eng", "query": "launch", "limit": 1});
    assert_eq!(alice.call(paged).await.unwrap()["more"], true);
    assert_eq!(
        code(alice.request(search(" ?! ")).await.unwrap()),
        "invalid_request"
    );
    // Outsiders do not learn the space exists.
    let mut eve = s.client(tr, "eve", "evilcorp").await;
    assert_eq!(
        code(eve.request(search("launch")).await.unwrap()),
        "not_found"
    );
}

/// Resuming never shows what was deleted, whether it comes from memory or from the store.
async fn resume_never_replays_a_deleted_body(tr: Tr) {
    let s = TestServer::start().await;
    setup(&s).await;
    let mut alice = s.client(tr, "alice", "acme").await;
    // A subscriber keeps the room's channel, and its tail, in memory.
    let mut watcher = s.client(tr, "bob", "acme").await;
    let sub = watcher
        .call(json!({"type": "subscribe", "channel": "room:eng/general"}))
        .await
        .unwrap();
    alice
        .call(send("general", "a1", "oops, a password"))
        .await
        .unwrap();
    alice.call(send("general", "a2", "fine")).await.unwrap();
    alice
        .call(json!({"type": "chat.delete", "space": "eng", "room": "general", "offset": 1}))
        .await
        .unwrap();
    let live = messages(&mut watcher, 3).await;
    assert_eq!(
        live[0].1["message"]["body"], "oops, a password",
        "live is live"
    );
    for after in [0, 1] {
        let mut bob = s.client(tr, "bob", "acme").await;
        let resume = json!({"type": "subscribe", "channel": "room:eng/general", "from": {"epoch": sub["epoch"], "offset": after}});
        let (replayed, reply) = collect_until_reply(&mut bob, resume, 9).await;
        assert_eq!(reply.unwrap()["resume"], "ok");
        assert_eq!(offsets(&replayed), (after + 1..=3).collect::<Vec<_>>());
        for (_, data) in &replayed {
            assert_ne!(data["message"]["body"], "oops, a password");
        }
    }
}

async fn removal_from_a_private_room_ends_its_subscription(tr: Tr) {
    let s = TestServer::start().await;
    setup(&s).await;
    let mut alice = s.client(tr, "alice", "acme").await;
    alice
        .call(json!({"type": "chat.create_room", "space": "eng", "room": "p", "name": "P", "private": true}))
        .await
        .unwrap();
    alice
        .call(json!({"type": "chat.invite", "space": "eng", "room": "p", "user": "bob"}))
        .await
        .unwrap();
    let mut bob = s.client(tr, "bob", "acme").await;
    bob.call(json!({"type": "subscribe", "channel": "room:eng/p"}))
        .await
        .unwrap();
    bob.call(json!({"type": "subscribe", "channel": "room:eng/general"}))
        .await
        .unwrap();
    alice
        .call(json!({"type": "chat.remove_member", "space": "eng", "room": "p", "user": "bob"}))
        .await
        .unwrap();
    loop {
        match bob.expect().await.unwrap() {
            ServerFrame::Unsubscribed { channel, code, .. } => {
                assert_eq!(
                    (channel.as_str(), code.as_str()),
                    ("room:eng/p", "forbidden")
                );
                break;
            }
            ServerFrame::Ping => {}
            other => panic!("expected unsubscribed, got {other:?}"),
        }
    }
    alice.call(send("p", "a1", "secret")).await.unwrap();
    alice.call(send("general", "a2", "public")).await.unwrap();
    // Only the public room's message arrives.
    assert_eq!(offsets(&messages(&mut bob, 1).await), [1]);
    quiet(&mut bob).await;
    let history = json!({"type": "chat.history", "space": "eng", "room": "p"});
    assert_eq!(code(bob.request(history).await.unwrap()), "not_found");

    // Leaving the space ends its room memberships too.
    alice
        .call(json!({"type": "chat.invite", "space": "eng", "room": "p", "user": "bob"}))
        .await
        .unwrap();
    alice
        .call(json!({"type": "space.remove_member", "space": "eng", "user": "bob"}))
        .await
        .unwrap();
    s.add("eng", "alice", "acme", "bob", "acme").await;
    let history = json!({"type": "chat.history", "space": "eng", "room": "p"});
    assert_eq!(code(bob.request(history).await.unwrap()), "not_found");
}

/// A client may pipeline sends: more than the server keeps in flight per connection (it then
/// stops reading until some are answered), with a retry and a `ping` among them. Every request
/// is answered under its id, the offsets follow the order of the sends, and a message is found
/// by search as soon as its acknowledgement arrived.
async fn pipelined_sends_keep_their_order(tr: Tr) {
    const SENDS: u64 = 200;
    let s = TestServer::start().await;
    setup(&s).await;
    let mut alice = s.client(tr, "alice", "acme").await;
    let mut ids = Vec::new();
    for n in 1..=SENDS {
        let mut frame = send("general", &format!("p{n}"), &format!("pipelined word{n}"));
        frame["id"] = json!(1000 + n);
        alice.send(&frame).await.unwrap();
        ids.push(1000 + n);
        if n == SENDS / 2 {
            alice.send(&json!({"type": "ping", "id": 7})).await.unwrap();
            let mut retry = send("general", "p1", "changed");
            retry["id"] = json!(8);
            alice.send(&retry).await.unwrap();
        }
    }
    let mut acks = std::collections::BTreeMap::new();
    let (mut pong, mut retried) = (false, None);
    while acks.len() < SENDS as usize || !pong || retried.is_none() {
        match alice.expect().await.unwrap() {
            ServerFrame::Reply { id: 7, .. } => pong = true,
            ServerFrame::Reply { id: 8, result } => retried = Some(result),
            ServerFrame::Reply { id, result } => {
                assert!(acks.insert(id, result).is_none(), "two replies to {id}");
            }
            ServerFrame::Error { id, code, message } => panic!("{id:?}: {code}: {message}"),
            _ => {}
        }
    }
    assert_eq!(acks.keys().copied().collect::<Vec<_>>(), ids);
    for (n, ack) in (1..=SENDS).zip(acks.values()) {
        assert_eq!(
            (&ack["offset"], &ack["client_id"], &ack["duplicate"]),
            (&json!(n), &json!(format!("p{n}")), &json!(false))
        );
    }
    let retried = retried.unwrap();
    assert_eq!(
        (&retried["offset"], &retried["duplicate"]),
        (&json!(1), &json!(true))
    );
    let found = alice
        .call(json!({"type": "chat.search", "space": "eng", "query": format!("word{SENDS}")}))
        .await
        .unwrap();
    assert_eq!(found["hits"][0]["message"]["offset"], SENDS);
}

/// A graceful shutdown answers the pipelined sends it took before saying goodbye: exactly the
/// acknowledged messages are stored.
async fn shutdown_acknowledges_sends_in_flight(tr: Tr) {
    let s = TestServer::start().await;
    setup(&s).await;
    let mut alice = s.client(tr, "alice", "acme").await;
    for n in 1..=50u64 {
        let mut frame = send("general", &format!("f{n}"), "in flight at shutdown");
        frame["id"] = json!(n);
        alice.send(&frame).await.unwrap();
    }
    let stopped = tokio::spawn(s.stop());
    let mut acked = Vec::new();
    loop {
        match alice.expect().await.unwrap() {
            ServerFrame::Reply { id, result } => {
                assert_eq!(result["client_id"], format!("f{id}"));
                acked.push(result["offset"].as_u64().unwrap());
            }
            ServerFrame::Disconnect { code, .. } => {
                assert_eq!(code.as_str(), "shutting_down");
                break;
            }
            ServerFrame::Error { id, code, message } => panic!("{id:?}: {code}: {message}"),
            _ => {}
        }
    }
    let s = TestServer::in_dir(stopped.await.unwrap(), |_| {}).await;
    let mut alice = s.client(tr, "alice", "acme").await;
    let sync =
        json!({"type": "chat.sync", "space": "eng", "room": "general", "after": 0, "limit": 0});
    let head = alice.call(sync).await.unwrap()["head"].as_u64().unwrap();
    acked.sort_unstable();
    assert_eq!(acked, (1..=head).collect::<Vec<_>>());
}

both_transports!(
    rooms_and_access,
    send_is_acknowledged_and_delivered_in_order,
    edits_deletes_history_and_sync,
    resume_from_memory_and_from_the_store,
    resume_never_replays_a_deleted_body,
    mentions_read_state_and_receipts,
    threads_and_reactions,
    direct_messages,
    search_shows_only_what_the_caller_may_read,
    removal_from_a_private_room_ends_its_subscription,
    pipelined_sends_keep_their_order,
    shutdown_acknowledges_sends_in_flight,
);

/// The body limit is a config key.
#[tokio::test]
async fn body_limit_is_configurable() {
    let s = TestServer::with(|c| c.chat_max_body_bytes = 10).await;
    setup(&s).await;
    let mut alice = s.client(Tr::Ws, "alice", "acme").await;
    alice
        .call(send("general", "a", "0123456789"))
        .await
        .unwrap();
    let long = alice
        .request(send("general", "b", "0123456789x"))
        .await
        .unwrap();
    assert_eq!(code(long), "invalid_request");
}

/// A subscriber that missed more than a resume replays gets `too_far_behind` and pages the gap
/// with `chat.sync`, while live events queue behind the reply: together, no gap.
#[tokio::test]
async fn too_far_behind_pages_with_sync() {
    let s = TestServer::with(|c| {
        c.rate_per_sec = 1_000_000;
        c.rate_burst = 1_000_000;
    })
    .await;
    setup(&s).await;
    let mut alice = s.client(Tr::Ws, "alice", "acme").await;
    let first = alice.call(send("general", "first", "x")).await.unwrap();
    let epoch = first["epoch"].as_u64().unwrap();
    // Pipelined: all sends first, then all acknowledgements.
    const N: u64 = 1100;
    for n in 0..N {
        let mut frame = send("general", &format!("m{n}"), "x");
        frame["id"] = json!(100_000 + n);
        alice.send(&frame).await.unwrap();
    }
    let mut acked = 0;
    while acked < N {
        if let ServerFrame::Reply { .. } = alice.expect().await.unwrap() {
            acked += 1;
        }
    }
    let mut bob = s.client(Tr::Ws, "bob", "acme").await;
    let resume = json!({"type": "subscribe", "channel": "room:eng/general", "from": {"epoch": epoch, "offset": 1}});
    let (replayed, reply) = collect_until_reply(&mut bob, resume, 7).await;
    let reply = reply.unwrap();
    assert!(replayed.is_empty());
    assert_eq!(
        (&reply["resume"], &reply["offset"]),
        (&json!("too_far_behind"), &json!(N + 1))
    );
    alice.call(send("general", "live", "x")).await.unwrap();
    let mut seen = Vec::new();
    let mut after = 1;
    loop {
        let page = json!({"type": "chat.sync", "space": "eng", "room": "general", "after": after, "epoch": epoch, "limit": 1000});
        let (live, reply) = collect_until_reply(&mut bob, page, 8 + after).await;
        let reply = reply.unwrap();
        for event in reply["events"].as_array().unwrap() {
            let offset = event["offset"].as_u64().unwrap();
            if offset <= N + 1 {
                seen.push(offset);
            }
            after = offset;
        }
        assert!(live.iter().all(|(o, _)| *o == N + 2));
        if after > N {
            break;
        }
    }
    assert_eq!(seen, (2..=N + 1).collect::<Vec<_>>());
}

mod crash {
    //! The real binary, killed with SIGKILL under a steady stream of sends.

    use chorus::client::Client;
    use chorus::protocol::{Encoding, ServerFrame};
    use serde_json::{Value, json};
    use std::collections::{BTreeMap, HashMap};
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn chorus() -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chorus"));
        cmd.env_remove("RUST_LOG");
        cmd
    }

    /// Start `chorus serve` on `dir`; returns the process and its HTTP address. Its log is read
    /// to the end on a thread so the pipe never fills.
    fn serve(dir: &str) -> (Child, String) {
        let mut child = chorus()
            .args([
                "serve",
                "--data-dir",
                dir,
                "--listen",
                "127.0.0.1:0",
                "--quic-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .env("CHORUS_RATE_PER_SEC", "1000000")
            .env("CHORUS_RATE_BURST", "1000000")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if let Ok(log) = serde_json::from_str::<Value>(&line)
                    && let Some(addr) = log["fields"]["http"].as_str()
                {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server logs where it listens");
        (child, addr)
    }

    async fn connect(addr: &str, token: &str) -> Client {
        let mut c = Client::connect_ws(&format!("ws://{addr}/ws"), None)
            .await
            .unwrap();
        c.hello(Some(token), Encoding::Json).await.unwrap();
        c
    }

    fn send(client_id: &str) -> Value {
        json!({"type": "chat.send", "space": "crash", "room": "log", "client_id": client_id, "body": client_id})
    }

    /// One sender: keeps `WINDOW` sends in flight on its connection until the server dies.
    /// Returns the acknowledgements in the order they came, and the ids sent but not acked.
    async fn stream(
        addr: String,
        token: String,
        prefix: String,
        acks: Arc<AtomicUsize>,
    ) -> (Vec<(String, u64)>, Vec<String>) {
        const WINDOW: u64 = 16;
        let mut c = connect(&addr, &token).await;
        let mut in_flight: HashMap<u64, String> = HashMap::new();
        let mut acked = Vec::new();
        let mut next = 0u64;
        let result: anyhow::Result<()> = async {
            loop {
                while (in_flight.len() as u64) < WINDOW {
                    let client_id = format!("{prefix}-{next}");
                    let mut frame = send(&client_id);
                    frame["id"] = json!(next);
                    in_flight.insert(next, client_id);
                    next += 1;
                    c.send(&frame).await?;
                }
                match c.recv().await? {
                    Some(ServerFrame::Reply { id, result }) => {
                        let client_id = in_flight.remove(&id).expect("a reply to a send");
                        assert_eq!(result["client_id"], json!(client_id));
                        assert_eq!(result["duplicate"], json!(false));
                        acked.push((id, client_id, result["offset"].as_u64().unwrap()));
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(ServerFrame::Error { id, code, message }) => {
                        panic!("send {id:?} failed: {code}: {message}")
                    }
                    Some(_) => {}
                    None => return Ok(()),
                }
            }
        }
        .await;
        drop(result); // The server was killed: the connection ends one way or another.
        // Both in the order sent (replies to pipelined sends may come out of order), so that
        // the retry sends what was lost in that order too.
        acked.sort_unstable();
        let mut lost: Vec<(u64, String)> = in_flight.into_iter().collect();
        lost.sort_unstable();
        (
            acked
                .into_iter()
                .map(|(_, id, offset)| (id, offset))
                .collect(),
            lost.into_iter().map(|(_, id)| id).collect(),
        )
    }

    /// Every event of the room, from the store, paged with `chat.sync`.
    async fn all_events(c: &mut Client) -> Vec<Value> {
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let page = c
                .call(json!({"type": "chat.sync", "space": "crash", "room": "log", "after": after, "limit": 1000}))
                .await
                .unwrap();
            let batch = page["events"].as_array().unwrap().clone();
            if let Some(last) = batch.last() {
                after = last["offset"].as_u64().unwrap();
            }
            events.extend(batch);
            if page["more"] == false {
                return events;
            }
        }
    }

    /// Everything acknowledged so far is in the room exactly once, at the offset its ack gave,
    /// and each sender's messages are in the order it sent them.
    async fn verify(c: &mut Client, acked: &BTreeMap<String, u64>, senders: &[Vec<String>]) {
        let events = all_events(c).await;
        let mut by_id: HashMap<String, u64> = HashMap::new();
        for (i, event) in events.iter().enumerate() {
            assert_eq!(event["offset"], json!(i as u64 + 1), "offsets without gaps");
            assert_eq!(event["kind"], "message");
            let id = event["message"]["client_id"].as_str().unwrap().to_string();
            assert_eq!(event["message"]["body"], json!(id));
            let offset = event["offset"].as_u64().unwrap();
            assert!(by_id.insert(id.clone(), offset).is_none(), "{id} twice");
        }
        for (id, offset) in acked {
            assert_eq!(
                by_id.get(id),
                Some(offset),
                "acknowledged {id} lost or moved"
            );
        }
        for order in senders {
            let offsets: Vec<u64> = order
                .iter()
                .filter_map(|id| by_id.get(id).copied())
                .collect();
            assert!(offsets.windows(2).all(|w| w[0] < w[1]), "a sender's order");
        }
    }

    /// Send again what was in flight at the kill: the ones that had committed come back as
    /// duplicates with their offset, the others are appended now.
    async fn retry(c: &mut Client, unacked: &mut Vec<String>, acked: &mut BTreeMap<String, u64>) {
        let (mut committed, total) = (0, unacked.len());
        for id in unacked.drain(..) {
            let ack = c.call(send(&id)).await.unwrap();
            committed += usize::from(ack["duplicate"] == true);
            acked.insert(id, ack["offset"].as_u64().unwrap());
        }
        if total > 0 {
            eprintln!("after restart: {committed} of {total} unacknowledged sends had committed");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn acknowledged_sends_survive_kill_9() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        let out = chorus()
            .args([
                "token",
                "--user",
                "alice",
                "--org",
                "acme",
                "--ttl",
                "1h",
                "--data-dir",
                &d,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();

        let mut acked: BTreeMap<String, u64> = BTreeMap::new();
        let mut senders: Vec<Vec<String>> = Vec::new();
        let mut unacked: Vec<String> = Vec::new();
        for round in 0..3 {
            let (mut server, addr) = serve(&d);
            let mut c = connect(&addr, &token).await;
            if round == 0 {
                c.call(json!({"type": "space.create", "space": "crash", "name": "Crash"}))
                    .await
                    .unwrap();
                c.call(json!({"type": "chat.create_room", "space": "crash", "room": "log", "name": "Log"}))
                    .await
                    .unwrap();
            }
            verify(&mut c, &acked, &senders).await;
            // Sends cut off by the last kill may or may not have committed: a retry tells,
            // and never duplicates.
            retry(&mut c, &mut unacked, &mut acked).await;
            verify(&mut c, &acked, &senders).await;

            let acks = Arc::new(AtomicUsize::new(0));
            let tasks: Vec<_> = (0..4)
                .map(|s| {
                    tokio::spawn(stream(
                        addr.clone(),
                        token.clone(),
                        format!("r{round}s{s}"),
                        acks.clone(),
                    ))
                })
                .collect();
            // Kill at a different point of the stream each round.
            let target = 400 + 300 * round;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while acks.load(Ordering::Relaxed) < target {
                assert!(std::time::Instant::now() < deadline, "the stream stalled");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            server.kill().unwrap(); // SIGKILL
            server.wait().unwrap();
            let mut round_acked = 0;
            for task in tasks {
                let (got, lost) = task.await.unwrap();
                round_acked += got.len();
                senders.push(got.iter().map(|(id, _)| id.clone()).collect());
                acked.extend(got);
                unacked.extend(lost);
            }
            assert!(round_acked >= target, "{round_acked} acks before the kill");
            eprintln!(
                "round {round}: {round_acked} sends acknowledged, then kill -9 with {} in flight",
                unacked.len()
            );
            assert!(!unacked.is_empty(), "sends were in flight at the kill");
        }
        let (mut server, addr) = serve(&d);
        let mut c = connect(&addr, &token).await;
        verify(&mut c, &acked, &senders).await;
        retry(&mut c, &mut unacked, &mut acked).await;
        verify(&mut c, &acked, &senders).await;
        let total = all_events(&mut c).await.len();
        assert_eq!(total, acked.len(), "every send is in the room exactly once");
        server.kill().unwrap();
        server.wait().unwrap();
    }
}

mod http {
    //! The same operations over the HTTP API, and its OpenAPI document.

    use super::{messages, setup};
    use crate::api::http;
    use crate::util::{TestServer, Tr};
    use serde_json::{Value, json};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chat_over_http() {
        let s = TestServer::start().await;
        setup(&s).await;
        let alice = s.token("alice", "acme");
        let bob = s.token("bob", "acme");
        let call = |method: &'static str, path: String, token: String, body: Option<Value>| {
            let addr = s.http;
            async move {
                let body = body.map(|b| b.to_string());
                let (status, reply, _) =
                    http(addr, method, &path, Some(&token), body.as_deref()).await;
                (status, reply)
            }
        };
        let rooms = "/api/spaces/eng/rooms".to_string();
        let (status, room) = call(
            "POST",
            rooms.clone(),
            alice.clone(),
            Some(json!({"room": "ops", "name": "Ops"})),
        )
        .await;
        assert_eq!(
            (status, &room["role"], &room["channel"]),
            (201, &json!("owner"), &json!("room:eng/ops"))
        );
        let (status, again) = call(
            "POST",
            rooms.clone(),
            alice.clone(),
            Some(json!({"room": "ops", "name": "Ops"})),
        )
        .await;
        assert_eq!((status, &again["code"]), (409, &json!("already_exists")));
        let (status, listed) = call("GET", rooms.clone(), bob.clone(), None).await;
        assert_eq!(
            (status, listed["rooms"].as_array().unwrap().len()),
            (200, 2)
        );
        // Joining is putting oneself in the members.
        let (status, joined) =
            call("PUT", format!("{rooms}/ops/members/bob"), bob.clone(), None).await;
        assert_eq!((status, &joined["role"]), (200, &json!("member")));

        let mut watcher = s.client(Tr::Ws, "bob", "acme").await;
        watcher
            .call(json!({"type": "subscribe", "channel": "room:eng/ops"}))
            .await
            .unwrap();
        let messages_path = format!("{rooms}/ops/messages");
        let hello = json!({"client_id": "h1", "body": "hello @bob"});
        let (status, ack) = call(
            "POST",
            messages_path.clone(),
            alice.clone(),
            Some(hello.clone()),
        )
        .await;
        assert_eq!(
            (status, &ack["offset"], &ack["duplicate"]),
            (201, &json!(1), &json!(false))
        );
        let (status, retry) = call("POST", messages_path.clone(), alice.clone(), Some(hello)).await;
        assert_eq!(
            (status, &retry["offset"], &retry["duplicate"]),
            (200, &json!(1), &json!(true))
        );
        assert_eq!(
            messages(&mut watcher, 1).await[0].0,
            1,
            "an HTTP send reaches the room's subscribers"
        );
        let (_, reply) = call(
            "POST",
            messages_path.clone(),
            bob.clone(),
            Some(json!({"client_id": "b1", "body": "hi", "thread": 1})),
        )
        .await;
        assert_eq!(reply["offset"], 2);

        let (status, page) = call(
            "GET",
            format!("{messages_path}?limit=10"),
            bob.clone(),
            None,
        )
        .await;
        assert_eq!(
            (status, page["messages"].as_array().unwrap().len()),
            (200, 1)
        );
        assert_eq!(page["messages"][0]["replies"]["count"], 1);
        let (_, thread) = call(
            "GET",
            format!("{messages_path}?thread=1"),
            bob.clone(),
            None,
        )
        .await;
        assert_eq!(thread["messages"][0]["body"], "hi");
        let (status, denied) = call(
            "PATCH",
            format!("{messages_path}/1"),
            bob.clone(),
            Some(json!({"body": "mine now"})),
        )
        .await;
        assert_eq!((status, &denied["code"]), (403, &json!("forbidden")));
        let (status, edited) = call(
            "PATCH",
            format!("{messages_path}/1"),
            alice.clone(),
            Some(json!({"body": "hello all"})),
        )
        .await;
        assert_eq!(
            (status, &edited["kind"], &edited["offset"]),
            (200, &json!("edit"), &json!(3))
        );
        let (status, revisions) = call(
            "GET",
            format!("{messages_path}/1/revisions"),
            bob.clone(),
            None,
        )
        .await;
        assert_eq!(
            (status, &revisions["revisions"][0]["body"]),
            (200, &json!("hello @bob"))
        );
        let (status, reacted) = call(
            "PUT",
            format!("{messages_path}/1/reactions/tada"),
            bob.clone(),
            None,
        )
        .await;
        assert_eq!(
            (status, &reacted["message"]["reactions"][0]["emoji"]),
            (200, &json!("tada"))
        );
        let (status, _) = call(
            "DELETE",
            format!("{messages_path}/1/reactions/tada"),
            bob.clone(),
            None,
        )
        .await;
        assert_eq!(status, 200);
        let (status, sync) = call(
            "GET",
            format!("{rooms}/ops/events?after=1&limit=2"),
            bob.clone(),
            None,
        )
        .await;
        assert_eq!(
            (
                status,
                sync["events"].as_array().unwrap().len(),
                &sync["more"]
            ),
            (200, 2, &json!(true))
        );

        let (status, read) = call(
            "POST",
            format!("{rooms}/ops/read"),
            bob.clone(),
            Some(json!({"offset": 1})),
        )
        .await;
        assert_eq!(
            (status, &read["last_read"], &read["mentions"]),
            (200, &json!(1), &json!(0))
        );
        let (status, unread) =
            call("GET", "/api/spaces/eng/unread".into(), bob.clone(), None).await;
        assert_eq!((status, &unread["rooms"][0]["room"]), (200, &json!("ops")));
        let (status, receipts) =
            call("GET", format!("{rooms}/ops/receipts"), alice.clone(), None).await;
        assert_eq!(
            (status, &receipts["receipts"][0]["user"]),
            (200, &json!("bob"))
        );
        let (status, found) = call(
            "GET",
            "/api/spaces/eng/search?query=hello%20all".into(),
            bob.clone(),
            None,
        )
        .await;
        assert_eq!(
            (status, &found["hits"][0]["message"]["offset"]),
            (200, &json!(1))
        );
        let (status, direct) = call(
            "POST",
            "/api/spaces/eng/direct".into(),
            alice.clone(),
            Some(json!({"users": ["bob"]})),
        )
        .await;
        assert_eq!(
            (status, &direct["direct"], &direct["created"]),
            (200, &json!(true), &json!(true))
        );
        let (status, renamed) = call(
            "PATCH",
            format!("{rooms}/ops"),
            alice.clone(),
            Some(json!({"name": "Operations", "archived": true})),
        )
        .await;
        assert_eq!(
            (status, &renamed["name"], &renamed["archived"]),
            (200, &json!("Operations"), &json!(true))
        );
        let (status, _) = call(
            "PATCH",
            format!("{rooms}/ops"),
            alice.clone(),
            Some(json!({"archived": false})),
        )
        .await;
        assert_eq!(status, 200);
        let (status, deleted) =
            call("DELETE", format!("{messages_path}/2"), bob.clone(), None).await;
        assert_eq!((status, &deleted["kind"]), (200, &json!("delete")));
        let (status, _) = call(
            "DELETE",
            format!("{rooms}/ops/members/bob"),
            bob.clone(),
            None,
        )
        .await;
        assert_eq!(status, 204);

        // The caller's mistakes are 4xx with a JSON body, never a 500.
        let addr = s.http;
        for (method, path, token, body, expected) in [
            (
                "POST",
                messages_path.clone(),
                Some(alice.as_str()),
                Some("{not json"),
                400,
            ),
            (
                "POST",
                messages_path.clone(),
                Some(alice.as_str()),
                Some(r#"{"client_id":"x"}"#),
                400,
            ),
            (
                "POST",
                messages_path.clone(),
                Some(alice.as_str()),
                Some(r#"{"client_id":"x","body":"   "}"#),
                400,
            ),
            (
                "GET",
                format!("{messages_path}?limit=many"),
                Some(alice.as_str()),
                None,
                400,
            ),
            (
                "PATCH",
                format!("{messages_path}/first"),
                Some(alice.as_str()),
                Some(r#"{"body":"x"}"#),
                400,
            ),
            (
                "PATCH",
                format!("{rooms}/ops"),
                Some(alice.as_str()),
                Some("{}"),
                400,
            ),
            (
                "GET",
                "/api/spaces/eng/search".into(),
                Some(alice.as_str()),
                None,
                400,
            ),
            ("GET", messages_path.clone(), None, None, 401),
            (
                "GET",
                "/api/spaces/eng/rooms/nope/messages".into(),
                Some(alice.as_str()),
                None,
                404,
            ),
            (
                "GET",
                "/api/spaces/elsewhere/rooms".into(),
                Some(alice.as_str()),
                None,
                404,
            ),
        ] {
            let (status, reply, _) = http(addr, method, &path, token, body).await;
            assert_eq!(status, expected, "{method} {path}: {reply}");
            assert!(
                reply["code"].is_string() && reply["message"].is_string(),
                "{reply}"
            );
        }
        let huge = json!({"client_id": "big", "body": "x".repeat(70_000)}).to_string();
        let (status, reply, _) =
            http(addr, "POST", &messages_path, Some(&alice), Some(&huge)).await;
        assert_eq!((status, &reply["code"]), (413, &json!("frame_too_large")));
    }

    #[tokio::test]
    async fn the_openapi_document_describes_the_chat_routes() {
        let s = TestServer::start().await;
        let (status, doc, _) = http(s.http, "GET", "/api/openapi.json", None, None).await;
        assert_eq!(status, 200);
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().unwrap();
        let base = "/api/spaces/{space}";
        for (path, methods) in [
            (format!("{base}/rooms"), &["get", "post"][..]),
            (format!("{base}/rooms/{{room}}"), &["patch"]),
            (format!("{base}/rooms/{{room}}/members"), &["get"]),
            (
                format!("{base}/rooms/{{room}}/members/{{user}}"),
                &["put", "delete"],
            ),
            (format!("{base}/rooms/{{room}}/messages"), &["get", "post"]),
            (
                format!("{base}/rooms/{{room}}/messages/{{offset}}"),
                &["patch", "delete"],
            ),
            (
                format!("{base}/rooms/{{room}}/messages/{{offset}}/reactions/{{emoji}}"),
                &["put", "delete"],
            ),
            (
                format!("{base}/rooms/{{room}}/messages/{{offset}}/revisions"),
                &["get"],
            ),
            (format!("{base}/rooms/{{room}}/events"), &["get"]),
            (format!("{base}/rooms/{{room}}/read"), &["post"]),
            (format!("{base}/rooms/{{room}}/receipts"), &["get"]),
            (format!("{base}/unread"), &["get"]),
            (format!("{base}/search"), &["get"]),
            (format!("{base}/direct"), &["post"]),
        ] {
            for method in methods {
                assert!(
                    paths[&path][*method].is_object(),
                    "{method} {path} is not documented"
                );
            }
        }
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for schema in [
            "Message",
            "Room",
            "Ack",
            "ErrorBody",
            "ReadState",
            "Hit",
            "SendBody",
        ] {
            assert!(schemas.contains_key(schema), "no schema {schema}");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }
}

/// `chorus bench chat` in-process against a real server: every send acknowledged at a distinct
/// offset, history pages and searches answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_chat_scenario() {
    use clap::Parser;
    let s = TestServer::with(|c| {
        c.rate_per_sec = 1_000_000;
        c.rate_burst = 1_000_000;
    })
    .await;
    let data_dir = s.shared.config.data_dir.display().to_string();
    let url = s.ws_url();
    let argv = [
        "bench",
        "chat",
        "-c",
        "4",
        "-w",
        "8",
        "-d",
        "0.5",
        "--room-messages",
        "3000",
        "--queries",
        "50",
        "--json",
        "--data-dir",
        &data_dir,
        "--url",
        &url,
    ];
    let scenario = chorus::bench::BenchArgs::try_parse_from(argv)
        .unwrap()
        .scenario;
    let report = scenario.run().await.unwrap_or_else(|e| panic!("{e:#}"));
    let [send, history, search] = &report.steps[..] else {
        panic!("{}", report.render())
    };
    assert!(
        send.pass && history.pass && search.pass,
        "{}",
        report.render()
    );
    assert!(send.counter("acked") > 0);
    assert_eq!(send.counter("acked"), send.counter("distinct_offsets"));
    assert_eq!(history.counter("pages"), 50);
    assert!(history.counter("messages") > 0);
    assert_eq!(search.counter("searches"), 50);
    assert!(search.counter("hits") > 0);
    assert!(report.summary["room_messages"].as_u64().unwrap() >= 3000);
}
