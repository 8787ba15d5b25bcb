//! Meetings in SFU mode over real sockets: the session protocol carries the server's offers and
//! the clients' answers, and str0m clients on their own UDP sockets send and receive media
//! through the server's SFU socket.

use crate::meetings::Peer;
use crate::util::{TestServer, Tr};
use serde_json::{Value, json};
use signaling::str0m::change::SdpOffer;
use signaling::str0m::format::Codec;
use signaling::str0m::media::{MediaTime, Mid};
use signaling::str0m::net::{Protocol, Receive};
use signaling::str0m::{Candidate, Event, Input, Output, Rtc};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// A generous bound on waits that poll for media; the test fails by itself long before.
const DEADLINE: Duration = Duration::from_secs(30);

/// One participant's media session: a str0m `Rtc` on its own UDP socket.
struct Media {
    rtc: Rtc,
    socket: UdpSocket,
    start: Instant,
    /// The lines of the last offer answered.
    lines: Vec<Value>,
    /// Frames received, by mid.
    frames: Vec<(Mid, Vec<u8>)>,
}

impl Media {
    async fn new() -> Media {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let start = Instant::now();
        let mut rtc = Rtc::builder().build(start);
        let addr = socket.local_addr().unwrap();
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        Media {
            rtc,
            socket,
            start,
            lines: Vec::new(),
            frames: Vec::new(),
        }
    }

    /// Answer a `meeting.offer` frame.
    fn answer(&mut self, offer: &Value) -> String {
        let parsed = SdpOffer::from_sdp_string(offer["sdp"].as_str().unwrap()).unwrap();
        let answer = self.rtc.sdp_api().accept_offer(parsed).unwrap();
        self.lines = offer["media"].as_array().unwrap().clone();
        answer.to_sdp_string()
    }

    fn mid_of(&self, track: &Value) -> Mid {
        let line = (self.lines.iter())
            .find(|l| l["track"] == *track)
            .unwrap_or_else(|| panic!("no line for {track} in {:?}", self.lines));
        Mid::from(line["mid"].as_str().unwrap())
    }

    /// Run the session for `span`: send what it transmits, feed it what arrives, run its timers.
    async fn drive(&mut self, span: Duration) {
        let end = Instant::now() + span;
        let local = self.socket.local_addr().unwrap();
        let mut buf = vec![0; 2048];
        loop {
            let timeout = loop {
                match self.rtc.poll_output().unwrap() {
                    Output::Timeout(at) => break at,
                    Output::Transmit(t) => {
                        self.socket
                            .send_to(&t.contents, t.destination)
                            .await
                            .unwrap();
                    }
                    Output::Event(Event::MediaData(data)) => {
                        self.frames.push((data.mid, data.data.to_vec()));
                    }
                    Output::Event(_) => {}
                }
            };
            let now = Instant::now();
            if now >= end {
                return;
            }
            let wait = timeout.min(end).saturating_duration_since(now);
            let input = tokio::time::timeout(wait, self.socket.recv_from(&mut buf)).await;
            let now = Instant::now();
            match input {
                Ok(Ok((n, source))) => {
                    let receive = Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: local,
                        contents: buf[..n].try_into().unwrap(),
                    };
                    self.rtc.handle_input(Input::Receive(now, receive)).unwrap();
                }
                _ => self.rtc.handle_input(Input::Timeout(now)).unwrap(),
            }
        }
    }

    /// Send one VP8 frame on the line of `track`.
    fn send_frame(&mut self, track: &Value, payload: &[u8]) {
        let mid = self.mid_of(track);
        let pt = (self.rtc.codec_config())
            .find(|p| p.spec().codec == Codec::Vp8)
            .unwrap()
            .pt();
        let now = Instant::now();
        let time: MediaTime = now.duration_since(self.start).into();
        let writer = self.rtc.writer(mid).expect("a line to send on");
        writer.write(pt, now, time, payload.to_vec()).unwrap();
    }
}

/// Answer the next `meeting.offer` of `peer` with `media`.
async fn answer_next(peer: &mut Peer, media: &mut Media, room: &str) -> Value {
    let offer = peer.next("meeting.offer").await;
    let sdp = media.answer(&offer);
    peer.call(json!({"type": "meeting.answer", "room": room, "sdp": sdp}))
        .await;
    offer
}

fn frame(i: u8) -> Vec<u8> {
    vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, i, i]
}

#[tokio::test]
async fn media_flows_through_the_sfu() {
    let s = TestServer::start().await;
    let room = "sfu-standup";
    let mut alice = Peer::user(&s, Tr::Ws, "alice").await;
    let mut bob = Peer::user(&s, Tr::Quic, "bob").await;
    let (mut alice_media, mut bob_media) = (Media::new().await, Media::new().await);

    let a = alice
        .call(json!({"type": "meeting.join", "room": room, "mode": "sfu"}))
        .await;
    assert_eq!(a["mode"], "sfu");
    let a_sid = a["participant"]["sid"].clone();
    let first = answer_next(&mut alice, &mut alice_media, room).await;
    assert_eq!(first["media"], json!([]));
    let server = s.shared.metrics.sfu.rooms.get();
    assert_eq!(server, 1);

    let track = alice
        .call(
            json!({"type": "meeting.publish", "room": room, "cid": "cam",
                     "kind": "video", "source": "camera"}),
        )
        .await["track"]["sid"]
        .clone();
    let offer = answer_next(&mut alice, &mut alice_media, room).await;
    assert_eq!(
        offer["media"][0]["participant"], a_sid,
        "alice sends her own track"
    );

    // Bob joins the meeting as it is (no mode asked): one offer brings alice's track.
    let b = bob.join(room).await;
    assert_eq!(b["mode"], "sfu");
    let offer = answer_next(&mut bob, &mut bob_media, room).await;
    assert_eq!(offer["media"][0]["track"], track);
    assert_eq!(offer["media"][0]["participant"], a_sid);
    // Peer-to-peer signalling is refused in SFU mode.
    let e = bob
        .req(
            json!({"type": "meeting.signal", "room": room, "to": a_sid, "kind": "offer",
                    "sdp": "v=0"}),
        )
        .await;
    assert_eq!(e, Err("invalid_request".to_string()));

    // Both connect to the server; alice's frames reach bob.
    let start = Instant::now();
    let mut sent = 0u8;
    let bob_mid = bob_media.mid_of(&track);
    loop {
        assert!(start.elapsed() < DEADLINE, "bob got no media");
        if alice_media.rtc.is_connected() {
            alice_media.send_frame(&track, &frame(sent));
            sent = sent.wrapping_add(1);
        }
        alice_media.drive(Duration::from_millis(10)).await;
        bob_media.drive(Duration::from_millis(10)).await;
        let got: Vec<&Vec<u8>> = (bob_media.frames.iter())
            .filter(|(mid, _)| *mid == bob_mid)
            .map(|(_, d)| d)
            .collect();
        if got.len() >= 10 {
            // Each frame arrives as it was sent.
            assert!(got.iter().all(|d| **d == frame(d[6])), "{got:?}");
            break;
        }
    }
    let metrics = &s.shared.metrics.sfu;
    assert!(metrics.forwarded_packets.get() >= 10);
    assert!(metrics.forwarded_bytes.get() >= 80);
    assert_eq!(metrics.sessions.get(), 2);

    // Bob leaves: his session ends; alice's meeting goes on.
    bob.call(json!({"type": "meeting.leave", "room": room}))
        .await;
    let start = Instant::now();
    while metrics.sessions.get() != 1 {
        assert!(start.elapsed() < DEADLINE, "bob's session stayed");
        alice_media.drive(Duration::from_millis(10)).await;
    }
    alice
        .call(json!({"type": "meeting.leave", "room": room}))
        .await;
    let start = Instant::now();
    while metrics.rooms.get() != 0 || metrics.sessions.get() != 0 {
        assert!(start.elapsed() < DEADLINE, "the room stayed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_mode_is_chosen_when_the_meeting_is_created() {
    // By default meetings are peer to peer, and an SFU meeting needs the join to ask for it.
    let s = TestServer::start().await;
    let mut alice = Peer::user(&s, Tr::Ws, "alice").await;
    let a = alice.join("mesh-room").await;
    assert_eq!(a["mode"], "mesh");
    let answer = alice
        .req(json!({"type": "meeting.answer", "room": "mesh-room", "sdp": "v=0"}))
        .await;
    assert_eq!(answer, Err("invalid_request".to_string()));
    // A mode asked by a later join does not change the live meeting.
    let mut bob = Peer::user(&s, Tr::Ws, "bob").await;
    let b = bob
        .call(json!({"type": "meeting.join", "room": "mesh-room", "mode": "sfu"}))
        .await;
    assert_eq!(b["mode"], "mesh");

    // With `meeting_sfu_from`, a space that large gets SFU meetings unasked.
    let s = TestServer::with(|c| c.meeting_sfu_from = 1).await;
    let mut alice = Peer::user(&s, Tr::Ws, "alice").await;
    let a = alice.join("big-room").await;
    assert_eq!(a["mode"], "sfu");
    let mut bob = Peer::user(&s, Tr::Ws, "bob").await;
    let b = bob
        .call(json!({"type": "meeting.join", "room": "other", "mode": "mesh"}))
        .await;
    assert_eq!(b["mode"], "mesh");
}
