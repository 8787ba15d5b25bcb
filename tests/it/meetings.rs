//! Meetings over real sockets: joining and seeing each other, tracks, signals relayed to the
//! named participant only, SDP checked against grants, admin actions, leaving, reconnecting
//! and resuming within the grace, access, room creation, limits, presence and metrics; the
//! switch from mesh to SFU mode by size and by the room's setting.

use crate::both_transports;
use crate::util::{TestServer, Tr};
use chorus::access::Grant;
use chorus::client::Client;
use chorus::protocol::{Encoding, ServerFrame};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::time::Duration;

/// A session client that keeps the frames arriving between replies.
pub(crate) struct Peer {
    c: Client,
    frames: VecDeque<Value>,
    next_id: u64,
}

impl Peer {
    async fn connect(s: &TestServer, tr: Tr, token: &str) -> Peer {
        Peer::connect_with(s, tr, token, Encoding::Json).await
    }

    async fn connect_with(s: &TestServer, tr: Tr, token: &str, encoding: Encoding) -> Peer {
        let mut c = s.raw(tr).await;
        c.hello(Some(token), encoding).await.unwrap();
        Peer {
            c,
            frames: VecDeque::new(),
            next_id: 1000,
        }
    }

    pub(crate) async fn user(s: &TestServer, tr: Tr, user: &str) -> Peer {
        Peer::connect(s, tr, &s.token(user, "acme")).await
    }

    /// Send `frame` as a request; its result or error code. Other frames are kept.
    pub(crate) async fn req(&mut self, mut frame: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        frame["id"] = json!(id);
        self.c.send(&frame).await.unwrap();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), self.c.expect())
                .await
                .expect("a reply in time")
                .unwrap();
            match frame {
                ServerFrame::Reply { id: got, result } if got == id => return Ok(result),
                ServerFrame::Error {
                    id: Some(got),
                    code,
                    ..
                } if got == id => return Err(code.as_str().to_string()),
                ServerFrame::Ping => {}
                other => self.frames.push_back(serde_json::to_value(other).unwrap()),
            }
        }
    }

    pub(crate) async fn call(&mut self, frame: Value) -> Value {
        let kind = frame["type"].clone();
        self.req(frame)
            .await
            .unwrap_or_else(|e| panic!("{kind} refused: {e}"))
    }

    pub(crate) async fn join(&mut self, room: &str) -> Value {
        self.call(json!({"type": "meeting.join", "room": room}))
            .await
    }

    /// The next frame of type `kind` (earlier frames of other types stay kept).
    pub(crate) async fn next(&mut self, kind: &str) -> Value {
        if let Some(i) = self.frames.iter().position(|f| f["type"] == kind) {
            return self.frames.remove(i).unwrap();
        }
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), self.c.expect())
                .await
                .unwrap_or_else(|_| panic!("no {kind} in time; kept: {:?}", self.frames))
                .unwrap();
            let frame = serde_json::to_value(frame).unwrap();
            if frame["type"] == kind {
                return frame;
            }
            self.frames.push_back(frame);
        }
    }

    /// Wait until a `meeting.participants` frame shows participant `sid` in `state`.
    pub(crate) async fn until_state(&mut self, sid: &Value, state: &str) -> Value {
        self.until(sid, |p| p["state"] == state).await
    }

    /// Wait until a `meeting.participants` frame shows participant `sid` as `want` says.
    async fn until(&mut self, sid: &Value, want: impl Fn(&Value) -> bool) -> Value {
        loop {
            let frame = self.next("meeting.participants").await;
            for p in frame["participants"].as_array().unwrap() {
                if p["sid"] == *sid && want(p) {
                    return p.clone();
                }
            }
        }
    }

    /// Assert that no frame of type `kind` arrives within `ms`.
    async fn none(&mut self, kind: &str, ms: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            assert!(
                !self.frames.iter().any(|f| f["type"] == kind),
                "unexpected {kind}: {:?}",
                self.frames
            );
            match tokio::time::timeout_at(deadline, self.c.expect()).await {
                Err(_) => return,
                Ok(frame) => {
                    let frame = serde_json::to_value(frame.unwrap()).unwrap();
                    self.frames.push_back(frame);
                }
            }
        }
    }
}

fn sdp(direction: &str) -> String {
    format!(
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
         m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na={direction}\r\n\
         a=msid:stream-a track-a\r\na=rtpmap:111 opus/48000/2\r\n"
    )
}

fn signal(room: &str, to: &Value, kind: &str, sdp: &str) -> Value {
    json!({"type": "meeting.signal", "room": room, "to": to, "kind": kind, "sdp": sdp})
}

async fn join_publish_and_signal(tr: Tr) {
    let s = TestServer::start().await;
    let mut alice = Peer::user(&s, tr, "alice").await;
    let mut bob = Peer::user(&s, tr, "bob").await;
    // Carol speaks MessagePack.
    let mut carol = Peer::connect_with(&s, tr, &s.token("carol", "acme"), Encoding::Msgpack).await;

    let a = alice
        .call(json!({"type": "meeting.join", "room": "standup", "name": "Alice"}))
        .await;
    assert_eq!(
        (a["space"].as_str(), a["room"].as_str()),
        (Some("_acme"), Some("standup"))
    );
    assert_eq!(a["participants"], json!([]));
    assert_eq!(a["participant"]["name"], "Alice");
    assert_eq!(a["participant"]["user"], "alice");
    assert_eq!(a["participant"]["state"], "active");
    assert_eq!(a["ice_servers"], json!([]));
    // Alice created the room on joining: she owns it, so she is an admin.
    assert_eq!(
        a["grants"],
        json!({"publish": true, "subscribe": true, "data": true, "admin": true})
    );
    let a_sid = a["participant"]["sid"].clone();

    let b = bob.join("standup").await;
    assert_eq!(b["participants"][0]["sid"], a_sid);
    assert_eq!(b["participant"]["name"], "bob");
    assert_eq!(b["grants"]["admin"], false);
    assert!(b["version"].as_u64() > a["version"].as_u64());
    let b_sid = b["participant"]["sid"].clone();
    let seen = alice.until_state(&b_sid, "active").await;
    assert_eq!(seen["user"], "bob");

    // Tracks.
    let track = alice
        .call(
            json!({"type": "meeting.publish", "room": "standup", "cid": "mic-1",
                     "kind": "audio", "source": "microphone"}),
        )
        .await;
    assert_eq!(track["track"]["cid"], "mic-1");
    assert_eq!(track["track"]["muted"], false);
    let alice_seen = bob
        .until(&a_sid, |p| p["tracks"][0] == track["track"])
        .await;
    assert_eq!(alice_seen["state"], "active");

    let c = carol.join("standup").await;
    let c_sid = c["participant"]["sid"].clone();
    assert_eq!(c["participants"].as_array().unwrap().len(), 2);
    let mine = c["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["sid"] == a_sid)
        .unwrap();
    assert_eq!(mine["tracks"][0]["cid"], "mic-1");

    // An offer, a candidate and the end of candidates reach Bob only.
    alice
        .call(signal("standup", &b_sid, "offer", &sdp("sendrecv")))
        .await;
    let candidate = json!({"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50123 typ host",
                           "sdp_mid": "0", "sdp_mline_index": 0});
    alice
        .call(
            json!({"type": "meeting.signal", "room": "standup", "to": b_sid,
                     "kind": "candidate", "candidate": candidate}),
        )
        .await;
    alice
        .call(
            json!({"type": "meeting.signal", "room": "standup", "to": b_sid,
                     "kind": "candidate", "candidate": null}),
        )
        .await;
    alice
        .call(
            json!({"type": "meeting.data", "room": "standup", "payload": "hi carol",
                     "to": [c_sid]}),
        )
        .await;
    let offer = bob.next("meeting.signal").await;
    assert_eq!(offer["from"], a_sid);
    assert_eq!(offer["kind"], "offer");
    assert_eq!(offer["sdp"], sdp("sendrecv"));
    assert_eq!(
        (offer["space"].as_str(), offer["room"].as_str()),
        (Some("_acme"), Some("standup"))
    );
    let cand = bob.next("meeting.signal").await;
    assert_eq!(cand["candidate"], candidate);
    let end = bob.next("meeting.signal").await;
    assert_eq!(
        (end["kind"].as_str(), &end["candidate"]),
        (Some("candidate"), &Value::Null)
    );
    assert!(end.as_object().unwrap().contains_key("candidate"));
    // Carol's first relayed frame is the data sent after the signals: she got none of them.
    let data = carol.next("meeting.data").await;
    assert_eq!(
        (data["payload"].as_str(), &data["from"]),
        (Some("hi carol"), &a_sid)
    );
    carol.none("meeting.signal", 200).await;
    bob.none("meeting.data", 100).await;

    // Bob answers; Alice gets it.
    bob.call(signal("standup", &a_sid, "answer", &sdp("sendrecv")))
        .await;
    let answer = alice.next("meeting.signal").await;
    assert_eq!(
        (answer["kind"].as_str(), &answer["from"]),
        (Some("answer"), &b_sid)
    );

    // Data to everyone else, with a topic.
    bob.call(json!({"type": "meeting.data", "room": "standup", "payload": "all", "topic": "chat"}))
        .await;
    for peer in [&mut alice, &mut carol] {
        let d = peer.next("meeting.data").await;
        assert_eq!(
            (d["payload"].as_str(), d["topic"].as_str()),
            (Some("all"), Some("chat"))
        );
    }
    bob.none("meeting.data", 100).await;

    // Errors.
    let unknown = json!("p-nobody-1");
    assert_eq!(
        alice
            .req(signal("standup", &unknown, "offer", &sdp("sendrecv")))
            .await,
        Err("not_found".into())
    );
    assert_eq!(
        alice
            .req(signal("standup", &a_sid, "offer", &sdp("sendrecv")))
            .await,
        Err("not_found".into())
    );
    assert_eq!(
        alice
            .req(signal("standup", &b_sid, "offer", "nonsense"))
            .await,
        Err("invalid_request".into())
    );
    assert_eq!(
        alice
            .req(signal("other", &b_sid, "offer", &sdp("sendrecv")))
            .await,
        Err("not_subscribed".into())
    );
    assert_eq!(
        alice
            .req(json!({"type": "meeting.signal", "room": "standup", "to": b_sid, "kind": "offer"}))
            .await,
        Err("invalid_request".into())
    );
    assert_eq!(
        alice.req(json!({"type": "meeting.publish", "room": "standup", "cid": "x", "kind": "smell", "source": "camera"})).await,
        Err("invalid_request".into())
    );
    assert_eq!(s.shared.meetings.len(), 1);
    assert!(s.shared.metrics.meetings.signals.get() >= 4);
    assert_eq!(s.shared.metrics.meetings.participants.get(), 3);
    assert_eq!(s.shared.metrics.meetings.open.get(), 1);
}

async fn sdp_and_requests_are_checked_against_grants(tr: Tr) {
    let s = TestServer::start().await;
    let mut alice = Peer::user(&s, tr, "alice").await;
    let a_sid = alice.join("town-hall").await["participant"]["sid"].clone();
    let viewer_token = s.token_with("vic", "acme", &[Grant::Subscribe], 3600);
    let mut vic = Peer::connect(&s, tr, &viewer_token).await;
    let v = vic.join("town-hall").await;
    assert_eq!(
        v["grants"],
        json!({"publish": false, "subscribe": true, "data": false, "admin": false})
    );
    let v_sid = v["participant"]["sid"].clone();
    alice.until_state(&v_sid, "active").await;
    // A viewer only receives.
    for d in ["sendrecv", "sendonly"] {
        assert_eq!(
            vic.req(signal("town-hall", &a_sid, "offer", &sdp(d))).await,
            Err("forbidden".into())
        );
    }
    let with_data =
        sdp("recvonly") + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\n";
    assert_eq!(
        vic.req(signal("town-hall", &a_sid, "answer", &with_data))
            .await,
        Err("forbidden".into())
    );
    assert_eq!(
        vic.req(json!({"type": "meeting.publish", "room": "town-hall", "cid": "c", "kind": "video", "source": "camera"})).await,
        Err("forbidden".into())
    );
    assert_eq!(
        vic.req(json!({"type": "meeting.data", "room": "town-hall", "payload": "x"}))
            .await,
        Err("forbidden".into())
    );
    alice.none("meeting.signal", 150).await;
    vic.call(signal("town-hall", &a_sid, "answer", &sdp("recvonly")))
        .await;
    assert_eq!(alice.next("meeting.signal").await["sdp"], sdp("recvonly"));

    // Without subscribe one joins, and only sends.
    let speaker_token = s.token_with("sam", "acme", &[Grant::Publish], 3600);
    let mut sam = Peer::connect(&s, tr, &speaker_token).await;
    let g = sam.join("town-hall").await;
    assert_eq!(
        g["grants"],
        json!({"publish": true, "subscribe": false, "data": true, "admin": false})
    );
    for d in ["sendrecv", "recvonly"] {
        assert_eq!(
            sam.req(signal("town-hall", &a_sid, "offer", &sdp(d))).await,
            Err("forbidden".into())
        );
    }
    sam.call(signal("town-hall", &a_sid, "offer", &sdp("sendonly")))
        .await;
    alice.next("meeting.signal").await;
}

async fn admins_mute_and_remove(tr: Tr) {
    let s = TestServer::start().await;
    let mut alice = Peer::user(&s, tr, "alice").await;
    let mut bob = Peer::user(&s, tr, "bob").await;
    let a_sid = alice.join("retro").await["participant"]["sid"].clone();
    let b_sid = bob.join("retro").await["participant"]["sid"].clone();
    let track = bob
        .call(
            json!({"type": "meeting.publish", "room": "retro", "cid": "cam",
                     "kind": "video", "source": "camera"}),
        )
        .await["track"]["sid"]
        .clone();
    // Bob is no admin.
    let a_track = alice
        .call(
            json!({"type": "meeting.publish", "room": "retro", "cid": "mic",
                     "kind": "audio", "source": "microphone"}),
        )
        .await["track"]["sid"]
        .clone();
    assert_eq!(
        bob.req(json!({"type": "meeting.mute", "room": "retro", "track": a_track, "muted": true, "participant": a_sid})).await,
        Err("forbidden".into())
    );
    assert_eq!(
        bob.req(json!({"type": "meeting.remove", "room": "retro", "participant": a_sid}))
            .await,
        Err("forbidden".into())
    );
    // Alice (the room's owner) mutes Bob's camera; she cannot unmute it.
    let muted = alice
        .call(json!({"type": "meeting.mute", "room": "retro", "track": track, "muted": true, "participant": b_sid}))
        .await;
    assert_eq!(muted["track"]["muted"], true);
    assert_eq!(
        alice.req(json!({"type": "meeting.mute", "room": "retro", "track": track, "muted": false, "participant": b_sid})).await,
        Err("forbidden".into())
    );
    let told = bob.next("meeting.muted").await;
    assert_eq!(
        (&told["track"], &told["by"], &told["muted"]),
        (&track, &a_sid, &json!(true))
    );
    let b = alice
        .until(&b_sid, |p| p["tracks"][0]["muted"] == true)
        .await;
    assert_eq!(b["state"], "active");
    // Bob unmutes his own.
    let own = bob
        .call(json!({"type": "meeting.mute", "room": "retro", "track": track, "muted": false}))
        .await;
    assert_eq!(own["track"]["muted"], false);
    // Alice removes Bob.
    alice
        .call(json!({"type": "meeting.remove", "room": "retro", "participant": b_sid}))
        .await;
    let left = bob.next("meeting.left").await;
    assert_eq!(
        (left["reason"].as_str(), &left["by"]),
        (Some("removed"), &a_sid)
    );
    let gone = alice.until_state(&b_sid, "left").await;
    assert_eq!(gone["reason"], "removed");
    assert_eq!(
        bob.req(json!({"type": "meeting.publish", "room": "retro", "cid": "c", "kind": "audio", "source": "microphone"})).await,
        Err("not_subscribed".into())
    );
    // He may join again (a new participant).
    let again = bob.join("retro").await;
    assert_ne!(again["participant"]["sid"], b_sid);
}

async fn leaving_reconnecting_and_resuming(tr: Tr) {
    let s = TestServer::with(|c| c.meeting_grace_ms = 1_500).await;
    let mut alice = Peer::user(&s, tr, "alice").await;
    alice.join("daily").await;
    let mut bob = Peer::user(&s, tr, "bob").await;
    let b_sid = bob.join("daily").await["participant"]["sid"].clone();
    let track = bob
        .call(
            json!({"type": "meeting.publish", "room": "daily", "cid": "mic",
                     "kind": "audio", "source": "microphone"}),
        )
        .await["track"]
        .clone();
    alice.until(&b_sid, |p| p["tracks"][0] == track).await;

    // Bob's connection drops: reconnecting, tracks still listed.
    drop(bob);
    let r = alice.until_state(&b_sid, "reconnecting").await;
    assert_eq!(r["tracks"][0], track);
    // He comes back within the grace and resumes: same sid, tracks kept.
    let mut bob = Peer::user(&s, tr, "bob").await;
    let back = bob
        .call(json!({"type": "meeting.join", "room": "daily", "resume": b_sid}))
        .await;
    assert_eq!(back["participant"]["sid"], b_sid);
    assert_eq!(back["participant"]["tracks"][0], track);
    assert_eq!(back["participant"]["state"], "active");
    alice.until_state(&b_sid, "active").await;
    // Still there well after the first grace would have ended.
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    alice.none("meeting.participants", 10).await;

    // Resuming from a second connection replaces the first.
    let mut bob2 = Peer::user(&s, tr, "bob").await;
    let took = bob2
        .call(json!({"type": "meeting.join", "room": "daily", "resume": b_sid}))
        .await;
    assert_eq!(took["participant"]["sid"], b_sid);
    assert_eq!(bob.next("meeting.left").await["reason"], "replaced");

    // Someone else cannot take it over: they get a participant of their own.
    let mut eve = Peer::user(&s, tr, "eve").await;
    let e = eve
        .call(json!({"type": "meeting.join", "room": "daily", "resume": b_sid}))
        .await;
    assert_ne!(e["participant"]["sid"], b_sid);

    // Dropped and not back within the grace: left, disconnected.
    drop(bob2);
    alice.until_state(&b_sid, "reconnecting").await;
    let gone = alice.until_state(&b_sid, "left").await;
    assert_eq!(gone["reason"], "disconnected");
    let late = bob
        .call(json!({"type": "meeting.join", "room": "daily", "resume": b_sid}))
        .await;
    assert_ne!(late["participant"]["sid"], b_sid);

    // Leaving.
    let e_sid = e["participant"]["sid"].clone();
    eve.call(json!({"type": "meeting.leave", "room": "daily", "reason": "lunch"}))
        .await;
    let left = alice.until_state(&e_sid, "left").await;
    assert_eq!(
        (left["reason"].as_str(), left["message"].as_str()),
        (Some("left"), Some("lunch"))
    );
    assert_eq!(
        eve.req(json!({"type": "meeting.data", "room": "daily", "payload": "x"}))
            .await,
        Err("not_subscribed".into())
    );
    eve.call(json!({"type": "meeting.leave", "room": "daily"}))
        .await;

    // Everyone gone: the meeting ends.
    alice
        .call(json!({"type": "meeting.leave", "room": "daily"}))
        .await;
    bob.call(json!({"type": "meeting.leave", "room": "daily"}))
        .await;
    // The task leaves the registry, then takes itself and its participants off the metrics.
    let metrics = &s.shared.metrics.meetings;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !s.shared.meetings.is_empty()
        || metrics.open.get() != 0
        || metrics.participants.get() != 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the meeting did not end: open {}, participants {}",
            metrics.open.get(),
            metrics.participants.get()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And starts again on the next join.
    assert_eq!(alice.join("daily").await["participants"], json!([]));
}

async fn access_and_room_creation(tr: Tr) {
    let s = TestServer::start().await;
    s.space("eng", "alice", "acme").await;
    s.add("eng", "alice", "acme", "bob", "acme").await;
    s.add("eng", "alice", "acme", "gus", "globex").await;
    let mut alice = Peer::user(&s, tr, "alice").await;
    let mut bob = Peer::user(&s, tr, "bob").await;
    let mut gus = Peer::connect(&s, tr, &s.token("gus", "globex")).await;
    let mut eve = Peer::connect(&s, tr, &s.token("eve", "evilcorp")).await;

    // Bob's first join creates the room, public, in the named space: he owns it.
    let b = bob
        .call(json!({"type": "meeting.join", "space": "eng", "room": "design"}))
        .await;
    assert_eq!(b["space"], "eng");
    assert_eq!(b["grants"]["admin"], true);
    let rooms = alice
        .call(json!({"type": "chat.rooms", "space": "eng"}))
        .await;
    let design = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "design")
        .unwrap()
        .clone();
    assert_eq!(
        (design["private"].as_bool(), design["name"].as_str()),
        (Some(false), Some("design"))
    );
    // Alice manages the space: an admin of every meeting in it.
    let a = alice
        .call(json!({"type": "meeting.join", "space": "eng", "room": "design"}))
        .await;
    assert_eq!(a["grants"]["admin"], true);
    // A guest joins an existing room, but does not create one.
    let g = gus
        .call(json!({"type": "meeting.join", "space": "eng", "room": "design"}))
        .await;
    assert_eq!(g["grants"]["admin"], false);
    assert_eq!(
        gus.req(json!({"type": "meeting.join", "space": "eng", "room": "new-one"}))
            .await,
        Err("forbidden".into())
    );
    // Another organisation's user sees nothing of the space, nor of acme's home.
    for space in ["eng", "_acme"] {
        assert_eq!(
            eve.req(json!({"type": "meeting.join", "space": space, "room": "design"}))
                .await,
            Err("not_found".into())
        );
    }
    // A private room is for its members.
    alice
        .call(json!({"type": "chat.create_room", "space": "eng", "room": "board", "name": "Board", "private": true}))
        .await;
    assert_eq!(
        bob.req(json!({"type": "meeting.join", "space": "eng", "room": "board"}))
            .await,
        Err("not_found".into())
    );
    // Bad room ids.
    assert_eq!(
        bob.req(json!({"type": "meeting.join", "space": "eng", "room": "no spaces"}))
            .await,
        Err("invalid_request".into())
    );

    // Removed from the space: out of its meetings at once.
    let g_sid = g["participant"]["sid"].clone();
    alice
        .call(json!({"type": "space.remove_member", "space": "eng", "user": "gus"}))
        .await;
    let left = gus.next("meeting.left").await;
    assert_eq!(left["reason"], "access");
    let gone = alice.until_state(&g_sid, "left").await;
    assert_eq!(gone["reason"], "access");
}

async fn without_auto_creation_rooms_must_exist(tr: Tr) {
    let s = TestServer::with(|c| c.meetings_auto_create = false).await;
    let mut alice = Peer::user(&s, tr, "alice").await;
    assert_eq!(
        alice
            .req(json!({"type": "meeting.join", "room": "standup"}))
            .await,
        Err("not_found".into())
    );
    // (The home space is created by documents or presence; here, through a document.)
    alice
        .call(json!({"type": "doc.create", "doc": "notes"}))
        .await;
    alice
        .call(json!({"type": "chat.create_room", "space": "_acme", "room": "standup", "name": "Standup"}))
        .await;
    alice.join("standup").await;
}

async fn limits(tr: Tr) {
    let s = TestServer::with(|c| c.meeting_max_participants = 2).await;
    let mut alice = Peer::user(&s, tr, "alice").await;
    let mut bob = Peer::user(&s, tr, "bob").await;
    let mut carol = Peer::user(&s, tr, "carol").await;
    alice.join("small").await;
    let b_sid = bob.join("small").await["participant"]["sid"].clone();
    assert_eq!(
        carol
            .req(json!({"type": "meeting.join", "room": "small"}))
            .await,
        Err("limit_exceeded".into())
    );
    // Joining again from a connection in the meeting takes no new place.
    bob.join("small").await;
    for i in 0..8 {
        alice
            .call(
                json!({"type": "meeting.publish", "room": "small", "cid": format!("t{i}"),
                         "kind": "audio", "source": "microphone"}),
            )
            .await;
    }
    assert_eq!(
        alice.req(json!({"type": "meeting.publish", "room": "small", "cid": "t9", "kind": "audio", "source": "microphone"})).await,
        Err("limit_exceeded".into())
    );
    let big = "x".repeat(16 * 1024 + 1);
    assert_eq!(
        alice
            .req(json!({"type": "meeting.data", "room": "small", "payload": big}))
            .await,
        Err("invalid_request".into())
    );
    assert_eq!(
        carol
            .req(json!({"type": "meeting.join", "room": "small", "name": "n".repeat(65)}))
            .await,
        Err("invalid_request".into())
    );
    assert_eq!(
        alice.req(json!({"type": "meeting.publish", "room": "small", "cid": "", "kind": "audio", "source": "microphone"})).await,
        Err("invalid_request".into())
    );
    let _ = b_sid;
}

async fn joining_shows_in_room_presence(tr: Tr) {
    let s = TestServer::with(|c| c.presence_flush_ms = 20).await;
    let mut bob = Peer::user(&s, tr, "bob").await;
    bob.join("standup").await;
    let scope = json!({"room": {"space": "_acme", "id": "standup"}});
    bob.call(json!({"type": "presence.subscribe", "scope": scope}))
        .await;
    let mut alice = Peer::user(&s, tr, "alice").await;
    alice.join("standup").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice never showed in the meeting"
        );
        let frame = bob.next("presence").await;
        let entries = frame["updates"][0]["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if entries
            .iter()
            .any(|e| e["user"]["id"] == "alice" && e["in_meeting"] == true)
        {
            break;
        }
    }
}

/// A new str0m client's answer to `offer` (a `meeting.offer` frame).
fn answer_of(offer: &Value) -> String {
    let mut client = signaling::str0m::Rtc::new(std::time::Instant::now());
    let sdp = offer["sdp"].as_str().unwrap();
    let offer = signaling::str0m::change::SdpOffer::from_sdp_string(sdp).unwrap();
    client
        .sdp_api()
        .accept_offer(offer)
        .unwrap()
        .to_sdp_string()
}

impl Peer {
    /// The frames before the first of type `kind`; that one and the ones after stay kept.
    async fn before(&mut self, kind: &str) -> Vec<Value> {
        let at = self.frames.iter().position(|f| f["type"] == kind);
        let found = self.next(kind).await;
        let before = self.frames.drain(..at.unwrap_or(self.frames.len()));
        let before = before.collect();
        self.frames.push_front(found);
        before
    }

    /// Expect the switch to SFU mode: a `meeting.mode` frame, then the server's offer, which
    /// this participant answers. Returns the offer's lines.
    async fn switched(&mut self, room: &str) -> Vec<Value> {
        let mode = self.next("meeting.mode").await;
        assert_eq!(
            (mode["room"].as_str(), mode["mode"].as_str()),
            (Some(room), Some("sfu"))
        );
        let offer = self.next("meeting.offer").await;
        let sdp = answer_of(&offer);
        self.call(json!({"type": "meeting.answer", "room": room, "sdp": sdp}))
            .await;
        offer["media"].as_array().unwrap().clone()
    }
}

async fn a_meeting_switches_to_sfu_when_a_join_reaches_the_threshold(tr: Tr) {
    let s = TestServer::with(|c| c.meeting_sfu_participants = 3).await;
    let room = "grows";
    let mut alice = Peer::user(&s, tr, "alice").await;
    let mut bob = Peer::user(&s, tr, "bob").await;
    let mut carol = Peer::user(&s, tr, "carol").await;
    assert_eq!(alice.join(room).await["mode"], "mesh");
    let b_sid = bob.join(room).await["participant"]["sid"].clone();
    let camera = alice
        .call(
            json!({"type": "meeting.publish", "room": room, "cid": "cam", "kind": "video",
                     "source": "camera", "simulcast": true}),
        )
        .await["track"]["sid"]
        .clone();
    let mic = bob
        .call(
            json!({"type": "meeting.publish", "room": room, "cid": "mic", "kind": "audio",
                     "source": "microphone"}),
        )
        .await["track"]["sid"]
        .clone();
    // Two participants signal peer to peer.
    let offer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendrecv\r\n";
    alice
        .call(json!({"type": "meeting.signal", "room": room, "to": b_sid, "kind": "offer", "sdp": offer}))
        .await;
    bob.next("meeting.signal").await;

    // The third one's join turns the meeting into SFU mode, for everyone.
    let c = carol.join(room).await;
    assert_eq!(c["mode"], "mesh", "the reply is made before the switch");
    let c_sid = c["participant"]["sid"].clone();
    // Alice sees carol arrive before the switch, not earlier.
    let before = alice.before("meeting.mode").await;
    let arrived = before.iter().any(|f| {
        f["type"] == "meeting.participants"
            && (f["participants"].as_array().unwrap().iter()).any(|p| p["sid"] == c_sid)
    });
    assert!(arrived, "{before:?}");
    let mut expected = vec![camera.as_str().unwrap(), mic.as_str().unwrap()];
    expected.sort();
    for peer in [&mut alice, &mut bob, &mut carol] {
        let lines = peer.switched(room).await;
        let mut tracks: Vec<&str> = lines.iter().map(|l| l["track"].as_str().unwrap()).collect();
        tracks.sort();
        assert_eq!(tracks, expected, "every session carries both tracks");
    }
    // Peer-to-peer signalling is over.
    let signal = alice
        .req(json!({"type": "meeting.signal", "room": room, "to": b_sid, "kind": "offer", "sdp": offer}))
        .await;
    assert_eq!(signal, Err("invalid_request".into()));
    // It never turns back: with one participant left, a newcomer joins in SFU mode.
    bob.call(json!({"type": "meeting.leave", "room": room}))
        .await;
    carol
        .call(json!({"type": "meeting.leave", "room": room}))
        .await;
    let mut dave = Peer::user(&s, tr, "dave").await;
    assert_eq!(dave.join(room).await["mode"], "sfu");
}

async fn the_room_setting_decides_and_switches_live(tr: Tr) {
    let s = TestServer::start().await;
    let room = "retro";
    let mut alice = Peer::user(&s, tr, "alice").await;
    let mut bob = Peer::user(&s, tr, "bob").await;
    // Alice's join creates the room: she owns it.
    let a = alice.join(room).await;
    assert_eq!(a["mode"], "mesh");
    let space = a["space"].clone();
    bob.join(room).await;
    let set = |mode: &str| json!({"type": "chat.set_meeting_mode", "space": space, "room": room, "meeting_mode": mode});
    // Only the room's owners and the space's managers set it, to a known mode.
    assert_eq!(bob.req(set("sfu")).await, Err("forbidden".into()));
    assert_eq!(alice.req(set("p2p")).await, Err("invalid_request".into()));
    let rooms = alice
        .call(json!({"type": "chat.rooms", "space": space}))
        .await;
    assert_eq!(rooms["rooms"][0]["meeting_mode"], "auto");

    // Setting `sfu` switches the live mesh meeting at once.
    let updated = alice.call(set("sfu")).await;
    assert_eq!(
        (updated["id"].as_str(), updated["meeting_mode"].as_str()),
        (Some(room), Some("sfu"))
    );
    alice.switched(room).await;
    bob.switched(room).await;

    // A room set to `mesh` over HTTP: its live meeting no longer switches by size (the
    // default, 5 participants).
    let quiet = "quiet";
    alice.join(quiet).await;
    let path = format!("/api/spaces/{}/rooms/{quiet}", space.as_str().unwrap());
    let body = json!({"meeting_mode": "mesh"}).to_string();
    let bob_token = s.token("bob", "acme");
    let (status, _, _) =
        crate::api::http(s.http, "PATCH", &path, Some(&bob_token), Some(&body)).await;
    assert_eq!(status, 403);
    let alice_token = s.token("alice", "acme");
    let (status, patched, _) =
        crate::api::http(s.http, "PATCH", &path, Some(&alice_token), Some(&body)).await;
    assert_eq!((status, &patched["meeting_mode"]), (200, &json!("mesh")));
    let mut others = Vec::new();
    for user in ["bob", "carol", "dave", "erin"] {
        let mut peer = Peer::user(&s, tr, user).await;
        assert_eq!(peer.join(quiet).await["mode"], "mesh");
        others.push(peer);
    }
    // Alice's request is answered after any frame erin's join caused.
    alice
        .call(json!({"type": "meeting.data", "room": quiet, "payload": "hi"}))
        .await;
    let frames = &alice.frames;
    assert!(
        frames.iter().all(|f| f["type"] != "meeting.mode"),
        "{frames:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_setting_persists_across_a_restart() {
    let s = TestServer::start().await;
    let room = "board";
    let mut alice = Peer::user(&s, Tr::Ws, "alice").await;
    let space = alice.join(room).await["space"].clone();
    let set = json!({"type": "chat.set_meeting_mode", "space": space, "room": room, "meeting_mode": "sfu"});
    alice.call(set).await;
    alice
        .call(json!({"type": "meeting.leave", "room": room}))
        .await;
    drop(alice);
    let s = TestServer::in_dir(s.stop().await, |_| {}).await;
    let mut alice = Peer::user(&s, Tr::Ws, "alice").await;
    let rooms = alice
        .call(json!({"type": "chat.rooms", "space": space}))
        .await;
    assert_eq!(rooms["rooms"][0]["meeting_mode"], "sfu");
    // The room's setting wins over the join's `mode`.
    let joined = alice
        .call(json!({"type": "meeting.join", "room": room, "mode": "mesh"}))
        .await;
    assert_eq!(joined["mode"], "sfu");
}

both_transports!(
    a_meeting_switches_to_sfu_when_a_join_reaches_the_threshold,
    the_room_setting_decides_and_switches_live,
    join_publish_and_signal,
    sdp_and_requests_are_checked_against_grants,
    admins_mute_and_remove,
    leaving_reconnecting_and_resuming,
);

mod one_transport {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn access_and_room_creation() {
        super::access_and_room_creation(Tr::Ws).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_auto_creation_rooms_must_exist() {
        super::without_auto_creation_rooms_must_exist(Tr::Ws).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn limits() {
        super::limits(Tr::Quic).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn joining_shows_in_room_presence() {
        super::joining_shows_in_room_presence(Tr::Ws).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn turn_credentials_come_with_the_join_reply() {
        let s = TestServer::with(|c| {
            c.ice_servers = vec!["stun:stun.example.test:3478".into()];
            c.turn_urls = vec!["turn:turn.example.test:3478?transport=udp".into()];
            c.turn_secret = Some("a shared secret of the TURN server".into());
            c.turn_ttl_secs = 600;
        })
        .await;
        let mut alice = Peer::user(&s, Tr::Ws, "alice").await;
        let a = alice.join("standup").await;
        let ice = a["ice_servers"].as_array().unwrap();
        assert_eq!(ice[0], json!({"urls": ["stun:stun.example.test:3478"]}));
        assert_eq!(
            ice[1]["urls"],
            json!(["turn:turn.example.test:3478?transport=udp"])
        );
        let username = ice[1]["username"].as_str().unwrap();
        let (expiry, user) = username.split_once(':').unwrap();
        assert_eq!(user, "alice");
        let now = chorus::auth::unix_now();
        assert!((now + 590..=now + 610).contains(&expiry.parse::<u64>().unwrap()));
        let want = signaling::turn::turn_credentials(
            b"a shared secret of the TURN server",
            "alice",
            expiry.parse::<u64>().unwrap() - 600,
            600,
        );
        assert_eq!(ice[1]["credential"], want.credential);
    }
}
