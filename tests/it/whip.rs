//! WHIP and WHEP over real HTTP and UDP: webrtc-rs peers that make the offer publish into a
//! room's SFU meeting and play from it, next to a session-protocol participant.

use crate::meetings::Peer;
use crate::util::{TestServer, Tr};
use chorus::access::Grant;
use chorus::bench::rtc_peer::media::{OPUS_SILENCE, vp8_payload};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8,
};
use rtc::rtp;
use rtc::rtp_transceiver::RTCRtpTransceiverDirection as Direction;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCPeerConnectionState, RTCSessionDescription, Registry,
    register_default_interceptors,
};
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;

/// A generous bound on waits for media; the test fails by itself long before.
const DEADLINE: Duration = Duration::from_secs(30);

/// One HTTP/1.1 response.
pub(crate) struct Response {
    pub status: u16,
    headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn headers(&self, name: &str) -> Vec<&str> {
        (self.headers.iter())
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// One request on a fresh connection, with `headers` and `body` as given.
pub(crate) async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    head += "\r\n";
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_string(),
    }
}

/// POST an SDP offer to `path` with `token`.
pub(crate) async fn post_offer(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    sdp: &str,
) -> Response {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/sdp")];
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer));
    }
    request(addr, "POST", path, &headers, sdp).await
}

/// Bob, in meeting `room` of his home space, which he starts in SFU mode.
async fn bob_in_sfu_room(s: &TestServer, room: &str) -> Peer {
    let mut bob = Peer::user(s, Tr::Ws, "bob").await;
    bob.call(json!({"type": "meeting.join", "room": room, "mode": "sfu"}))
        .await;
    bob
}

/// Wait until `peer` sees the WHIP publisher named "Studio" as `want` says; its entry.
async fn until_studio(peer: &mut Peer, want: impl Fn(&Value) -> bool) -> Value {
    loop {
        let frame = peer.next("meeting.participants").await;
        let found = (frame["participants"].as_array().unwrap().iter())
            .find(|p| p["name"] == "Studio" && want(p))
            .cloned();
        if let Some(p) = found {
            return p;
        }
    }
}

/// DELETE session `location` with `token`.
async fn delete_session(addr: SocketAddr, location: &str, token: &str) -> Response {
    let bearer = format!("Bearer {token}");
    request(addr, "DELETE", location, &[("authorization", &bearer)], "").await
}

/// The video codecs a peer may offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Video {
    Vp8,
    /// As OBS offers it: constrained baseline, packetization mode 1.
    H264,
}

/// Payload type 96 carries the video codec, as OBS has it; 111 Opus.
fn codec(kind: RtpCodecKind, video: Video) -> RTCRtpCodecParameters {
    let (mime_type, clock_rate, channels, payload_type, fmtp) = match (kind, video) {
        (RtpCodecKind::Audio, _) => (MIME_TYPE_OPUS, 48_000, 2, 111, ""),
        (_, Video::Vp8) => (MIME_TYPE_VP8, 90_000, 0, 96, ""),
        (_, Video::H264) => (
            MIME_TYPE_H264,
            90_000,
            0,
            96,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        ),
    };
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime_type.to_owned(),
            clock_rate,
            channels,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback: Vec::new(),
        },
        payload_type,
    }
}

/// One H.264 access unit as one RTP payload, numbered `seq`: a keyframe is an aggregation
/// packet (STAP-A) of SPS, PPS and an IDR slice, a delta frame one P slice.
fn h264_payload(keyframe: bool, seq: u16) -> bytes::Bytes {
    let [hi, lo] = seq.to_be_bytes();
    let slice = [if keyframe { 0x65 } else { 0x41 }, 0x88, 0x84, hi, lo];
    if !keyframe {
        return bytes::Bytes::copy_from_slice(&slice);
    }
    let sps = [0x67, 0x42, 0xe0, 0x1f, 0xda, 0x02, 0x80, 0xbf, 0xe5];
    let pps = [0x68, 0xce, 0x3c, 0x80];
    let mut stap = vec![24];
    for nalu in [&sps[..], &pps[..], &slice[..]] {
        stap.extend((nalu.len() as u16).to_be_bytes());
        stap.extend(nalu);
    }
    stap.into()
}

/// Counts what a playing peer receives.
#[derive(Default)]
struct Received {
    audio: AtomicU64,
    video: AtomicU64,
    /// The first video packet: its payload type and payload.
    first_video: Mutex<Option<(u8, bytes::Bytes)>>,
    /// The peer connection connected (and, for a publisher, its media goes out).
    connected: tokio::sync::Notify,
}

struct Handler {
    received: Arc<Received>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if state == RTCPeerConnectionState::Connected {
            self.received.connected.notify_one();
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let received = self.received.clone();
        tokio::spawn(async move {
            let video = track.kind().await == RtpCodecKind::Video;
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(packet) = event {
                    if video {
                        let mut first = received.first_video.lock().unwrap();
                        first.get_or_insert((packet.header.payload_type, packet.payload));
                    }
                    let counter = if video {
                        &received.video
                    } else {
                        &received.audio
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// A webrtc-rs peer that offers, as WHIP and WHEP clients do: a video (VP8 or H.264) and an
/// Opus line, sending (WHIP) or receiving (WHEP).
pub(crate) struct OfferingPeer {
    pc: Arc<dyn PeerConnection>,
    video: Video,
    /// WHIP: the tracks sent, with their SSRCs.
    tracks: Vec<(Arc<TrackLocalStaticRTP>, u32, RtpCodecKind)>,
    received: Arc<Received>,
}

impl OfferingPeer {
    pub async fn new(send: bool) -> OfferingPeer {
        OfferingPeer::with_video(send, Video::Vp8).await
    }

    pub async fn with_video(send: bool, video: Video) -> OfferingPeer {
        let mut media = MediaEngine::default();
        for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
            media.register_codec(codec(kind, video), kind).unwrap();
        }
        let registry = register_default_interceptors(Registry::new(), &mut media).unwrap();
        let received = Arc::new(Received::default());
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Handler {
                received: received.clone(),
            }))
            .with_udp_addrs(vec!["127.0.0.1:0".parse::<SocketAddr>().unwrap()])
            .build()
            .await
            .unwrap();
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let mut tracks = Vec::new();
        for (i, kind) in [RtpCodecKind::Audio, RtpCodecKind::Video]
            .into_iter()
            .enumerate()
        {
            if send {
                let ssrc = 0x1000 + i as u32;
                let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                    "whip".into(),
                    format!("whip-{kind}"),
                    format!("whip-{kind}"),
                    kind,
                    vec![RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters {
                            ssrc: Some(ssrc),
                            ..Default::default()
                        },
                        codec: codec(kind, video).rtp_codec,
                        ..Default::default()
                    }],
                )));
                let init = RTCRtpTransceiverInit {
                    direction: Direction::Sendonly,
                    streams: vec!["whip".into()],
                    send_encodings: Vec::new(),
                };
                pc.add_transceiver_from_track(track.clone() as Arc<dyn TrackLocal>, Some(init))
                    .await
                    .unwrap();
                tracks.push((track, ssrc, kind));
            } else {
                let init = RTCRtpTransceiverInit {
                    direction: Direction::Recvonly,
                    streams: Vec::new(),
                    send_encodings: Vec::new(),
                };
                pc.add_transceiver_from_kind(kind, Some(init))
                    .await
                    .unwrap();
            }
        }
        OfferingPeer {
            pc,
            video,
            tracks,
            received,
        }
    }

    /// The offer, set as the local description. No candidates are awaited: the server is
    /// ICE-lite and learns the client's address from its connectivity checks.
    pub async fn offer(&self) -> String {
        let offer = self.pc.create_offer(None).await.unwrap();
        self.pc.set_local_description(offer).await.unwrap();
        self.pc.local_description().await.unwrap().sdp
    }

    pub async fn answer(&self, sdp: &str) {
        let answer = RTCSessionDescription::answer(sdp.to_string()).unwrap();
        self.pc.set_remote_description(answer).await.unwrap();
    }

    /// Send one video frame (a keyframe when `keyframe`) and one Opus frame, as packet `seq`.
    pub async fn send(&self, seq: u16, keyframe: bool) {
        for (track, ssrc, kind) in &self.tracks {
            let (payload, payload_type, step) = match (kind, self.video) {
                (RtpCodecKind::Video, Video::Vp8) => (vp8_payload(keyframe, 200), 96, 3000),
                (RtpCodecKind::Video, Video::H264) => (h264_payload(keyframe, seq), 96, 3000),
                _ => (bytes::Bytes::from_static(OPUS_SILENCE), 111, 960),
            };
            let packet = rtp::Packet {
                header: rtp::header::Header {
                    version: 2,
                    marker: true,
                    payload_type,
                    sequence_number: seq,
                    timestamp: u32::from(seq).wrapping_mul(step),
                    ssrc: *ssrc,
                    ..Default::default()
                },
                payload,
            };
            // Before the session connects, packets have nowhere to go.
            let _ = track.write_rtp(packet).await;
        }
    }

    /// Wait until the peer connection connected.
    async fn connected(&self) {
        let connected = self.received.connected.notified();
        tokio::time::timeout(DEADLINE, connected)
            .await
            .expect("the peer connected in time");
    }

    fn video_received(&self) -> u64 {
        self.received.video.load(Ordering::Relaxed)
    }

    fn audio_received(&self) -> u64 {
        self.received.audio.load(Ordering::Relaxed)
    }

    pub async fn close(&self) {
        let _ = self.pc.close().await;
    }
}

/// A WHIP publisher sending a frame every 33 ms until aborted; a keyframe every 15 frames.
pub(crate) fn keep_sending(publisher: Arc<OfferingPeer>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seq = 0u16;
        let mut tick = tokio::time::interval(Duration::from_millis(33));
        loop {
            tick.tick().await;
            publisher.send(seq, seq.is_multiple_of(15)).await;
            seq = seq.wrapping_add(1);
        }
    })
}

/// A webrtc-rs peer publishing audio and VP8 video with WHIP at `path` with `token`, sending
/// media once answered: the peer, the `201` response, and the sending task.
async fn whip_publisher(
    s: &TestServer,
    path: &str,
    token: &str,
) -> (Arc<OfferingPeer>, Response, tokio::task::JoinHandle<()>) {
    whip_publisher_of(s, path, token, Video::Vp8).await
}

/// As `whip_publisher`, with `video`.
async fn whip_publisher_of(
    s: &TestServer,
    path: &str,
    token: &str,
    video: Video,
) -> (Arc<OfferingPeer>, Response, tokio::task::JoinHandle<()>) {
    let publisher = Arc::new(OfferingPeer::with_video(true, video).await);
    let offer = publisher.offer().await;
    let r = post_offer(s.http, path, Some(token), &offer).await;
    assert_eq!(r.status, 201, "{}", r.body);
    publisher.answer(&r.body).await;
    let sender = keep_sending(publisher.clone());
    (publisher, r, sender)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_media_reaches_whep_and_the_meeting_sees_the_publisher() {
    let s = TestServer::start().await;
    let room = "whip-stage";
    // A page's participant is in the (SFU) meeting already.
    let mut bob = bob_in_sfu_room(&s, room).await;

    let token = s.token("alice", "acme");
    let path = format!("/whip/{room}?name=Studio");
    let (publisher, r, sender) = whip_publisher(&s, &path, &token).await;
    assert_eq!(r.header("content-type"), Some("application/sdp"));
    let location = r.header("location").unwrap().to_string();
    assert!(
        location.starts_with(&format!("/whip/{room}/")),
        "{location}"
    );
    let etag = r.header("etag").unwrap().to_string();
    assert!(r.body.contains("a=ice-lite"), "{}", r.body);

    // Bob's page sees the publisher and its two tracks.
    let studio = until_studio(&mut bob, |p| p["tracks"].as_array().unwrap().len() == 2).await;
    assert_eq!(studio["user"], "alice");
    let kinds: Vec<&Value> = (studio["tracks"].as_array().unwrap().iter())
        .map(|t| &t["kind"])
        .collect();
    assert_eq!(kinds, [&json!("audio"), &json!("video")]);

    // A WHEP player receives both.
    let player = OfferingPeer::new(false).await;
    let offer = player.offer().await;
    let r = post_offer(
        s.http,
        &format!("/whep/{room}"),
        Some(&s.token("carol", "acme")),
        &offer,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let whep_location = r.header("location").unwrap().to_string();
    player.answer(&r.body).await;
    let start = Instant::now();
    while player.video_received() < 20 || player.audio_received() < 20 {
        assert!(
            start.elapsed() < DEADLINE,
            "the player got {} video and {} audio packets",
            player.video_received(),
            player.audio_received()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = &s.shared.metrics.sfu;
    assert!(metrics.forwarded_packets.get() >= 40);

    // Trickle ICE is taken, an ICE restart is not.
    let auth = format!("Bearer {token}");
    let frag =
        |ufrag: &str| format!("a=ice-ufrag:{ufrag}\r\na=ice-pwd:0123456789abcdefghij0123\r\n");
    let ufrag = offer_ufrag(&publisher.pc.local_description().await.unwrap().sdp);
    let patch = |body: String, content_type: &'static str, if_match: String| {
        let (auth, location) = (auth.clone(), location.clone());
        async move {
            let headers = [
                ("authorization", auth.as_str()),
                ("content-type", content_type),
                ("if-match", if_match.as_str()),
            ];
            request(s.http, "PATCH", &location, &headers, &body).await
        }
    };
    let sdpfrag = "application/trickle-ice-sdpfrag";
    let trickle = format!(
        "{}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
         a=candidate:1 1 udp 2130706431 127.0.0.1 9999 typ host\r\n",
        frag(&ufrag)
    );
    let r = patch(trickle.clone(), sdpfrag, etag.clone()).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = patch(trickle.clone(), sdpfrag, "\"other\"".into()).await;
    assert_eq!(r.status, 412, "{}", r.body);
    let r = patch(trickle, "application/sdp", etag.clone()).await;
    assert_eq!(r.status, 415, "{}", r.body);
    let r = patch(frag("fresh"), sdpfrag, "*".into()).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body.contains("ICE restarts are not supported"),
        "{}",
        r.body
    );

    // DELETE ends the session: the participant leaves the meeting.
    let r = delete_session(s.http, &location, &s.token("carol", "acme")).await;
    assert_eq!(
        r.status, 404,
        "only its own user ends a session: {}",
        r.body
    );
    let r = delete_session(s.http, &location, &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    bob.until_state(&studio["sid"], "left").await;
    let r = delete_session(s.http, &location, &token).await;
    assert_eq!(r.status, 404, "{}", r.body);
    sender.abort();
    publisher.close().await;

    let r = delete_session(s.http, &whep_location, &s.token("carol", "acme")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    player.close().await;
}

/// A WHIP session lasts as long as the token it was started with: when the token expires, its
/// participant leaves the meeting and the session is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_session_ends_when_its_token_expires() {
    let s = TestServer::start().await;
    let room = "whip-expiry";
    let mut bob = bob_in_sfu_room(&s, room).await;

    let token = s.token_with("alice", "acme", &Grant::DEFAULT, 3);
    let path = format!("/whip/{room}?name=Studio");
    let (publisher, r, sender) = whip_publisher(&s, &path, &token).await;
    let location = r.header("location").unwrap().to_string();

    let studio = until_studio(&mut bob, |_| true).await;
    bob.until_state(&studio["sid"], "left").await;
    // The session is gone: a fresh token of its user cannot end it any more.
    let r = delete_session(s.http, &location, &s.token("alice", "acme")).await;
    assert_eq!(r.status, 404, "{}", r.body);
    sender.abort();
    publisher.close().await;
}

/// OBS offers H.264 video and Opus audio only. The answer takes H.264; a WHEP player that
/// receives H.264, coming mid-stream, gets it with its own payload type for H.264, from a
/// keyframe on; a player that receives only VP8 is told the room's video is H.264 rather than
/// left without video.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h264_only_whip_publisher_reaches_h264_players() {
    let s = TestServer::start().await;
    let room = "obs-stage";
    let mut bob = bob_in_sfu_room(&s, room).await;
    let token = s.token("alice", "acme");
    let path = format!("/whip/{room}?name=Studio");
    let (publisher, r, sender) = whip_publisher_of(&s, &path, &token, Video::H264).await;
    let video = (r.body.split("m=").find(|m| m.starts_with("video"))).unwrap();
    assert!(video.contains("a=rtpmap:96 H264/90000"), "{}", r.body);
    assert!(!r.body.contains("VP8"), "{}", r.body);
    until_studio(&mut bob, |p| p["tracks"].as_array().unwrap().len() == 2).await;
    // The player comes while the stream runs, most likely between two keyframes.
    publisher.connected().await;

    let carol = s.token("carol", "acme");
    let player = OfferingPeer::with_video(false, Video::H264).await;
    let r = post_offer(
        s.http,
        &format!("/whep/{room}"),
        Some(&carol),
        &player.offer().await,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    player.answer(&r.body).await;
    let start = Instant::now();
    while player.video_received() < 20 || player.audio_received() < 20 {
        assert!(
            start.elapsed() < DEADLINE,
            "the player got {} video and {} audio packets",
            player.video_received(),
            player.audio_received()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (payload_type, payload) = player.received.first_video.lock().unwrap().clone().unwrap();
    assert_eq!(payload_type, 96, "the player's payload type for H.264");
    // A keyframe: the SPS (7) or, when the packet that carried it was lost on a loaded
    // machine (the server keeps no SPS/PPS for late subscribers), the IDR slice (5); alone or
    // first in an aggregation packet (24).
    let nal = |b: u8| b & 0x1f;
    let starts_keyframe = match nal(payload[0]) {
        24 => matches!(nal(payload[3]), 7 | 5),
        n => matches!(n, 7 | 5),
    };
    assert!(
        starts_keyframe,
        "the first video packet is {:02x?}",
        &payload[..]
    );

    let vp8_player = OfferingPeer::with_video(false, Video::Vp8).await;
    let r = post_offer(
        s.http,
        &format!("/whep/{room}"),
        Some(&carol),
        &vp8_player.offer().await,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("the room's video is H264"), "{}", r.body);

    sender.abort();
    for peer in [&*publisher, &player, &vp8_player] {
        peer.close().await;
    }
}

/// An entry of a user in the meeting.
fn in_meeting(e: &Value) -> bool {
    e["status"] == "online" && e["in_meeting"] == true
}

/// An entry of a user that left the scope.
fn gone(e: &Value) -> bool {
    e["status"] == "offline"
}

/// What a presence entry should be.
type Entry = fn(&Value) -> bool;

/// Wait until, for each `(scope, want)`, a presence update of `scope` that `peer` receives
/// has an entry of `user` as `want` says (one frame may bring several scopes' updates).
async fn until_presence(peer: &mut Peer, user: &str, wants: &[(&Value, Entry)]) {
    let mut seen = vec![false; wants.len()];
    while seen.contains(&false) {
        let frame = peer.next("presence").await;
        for update in frame["updates"].as_array().unwrap() {
            for (i, (scope, want)) in wants.iter().enumerate() {
                let entries = update["entries"].as_array().unwrap();
                seen[i] |= update["scope"] == **scope
                    && entries.iter().any(|e| e["user"]["id"] == user && want(e));
            }
        }
    }
}

/// A WHIP publisher and a WHEP viewer show in the room's presence as their tokens' users, in
/// the meeting, while their sessions live: the publisher until its DELETE, the viewer until
/// its token expires. Then they are offline in the space too (no grace period here): their
/// presence connections closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_and_whep_sessions_show_in_room_presence() {
    let s = TestServer::with(|c| {
        c.presence_flush_ms = 20;
        c.presence_grace_ms = 0;
    })
    .await;
    let room = "presence-stage";
    let mut bob = bob_in_sfu_room(&s, room).await;
    let (in_room, in_space) = (
        json!({"room": {"space": "_acme", "id": room}}),
        json!({"space": "_acme"}),
    );
    for scope in [&in_room, &in_space] {
        bob.call(json!({"type": "presence.subscribe", "scope": scope}))
            .await;
    }

    let studio = s.token("studio", "acme");
    let path = format!("/whip/{room}?name=Studio");
    let (publisher, r, sender) = whip_publisher(&s, &path, &studio).await;
    until_presence(&mut bob, "studio", &[(&in_room, in_meeting)]).await;

    let viewer = s.token_with("viewer", "acme", &Grant::DEFAULT, 5);
    let player = OfferingPeer::new(false).await;
    let w = post_offer(
        s.http,
        &format!("/whep/{room}"),
        Some(&viewer),
        &player.offer().await,
    )
    .await;
    assert_eq!(w.status, 201, "{}", w.body);
    player.answer(&w.body).await;
    until_presence(&mut bob, "viewer", &[(&in_room, in_meeting)]).await;
    until_presence(&mut bob, "viewer", &[(&in_room, gone), (&in_space, gone)]).await;

    let location = r.header("location").unwrap();
    assert_eq!(delete_session(s.http, location, &studio).await.status, 200);
    until_presence(&mut bob, "studio", &[(&in_room, gone), (&in_space, gone)]).await;
    sender.abort();
    publisher.close().await;
    player.close().await;
}

/// Gus, of another organisation, publishes into room `room` of space `eng` with WHIP while
/// alice watches the meeting; then alice does `removal`: Gus's participant leaves at once
/// (reason `access`) and the session is gone.
async fn whip_publisher_loses_access(room: &str, private: bool, removal: Value) {
    let s = TestServer::start().await;
    s.space("eng", "alice", "acme").await;
    s.add("eng", "alice", "acme", "gus", "globex").await;
    let mut alice = Peer::user(&s, Tr::Ws, "alice").await;
    if private {
        alice
            .call(json!({"type": "chat.create_room", "space": "eng", "room": room, "name": "Board", "private": true}))
            .await;
        alice
            .call(json!({"type": "chat.invite", "space": "eng", "room": room, "user": "gus"}))
            .await;
    }
    alice
        .call(json!({"type": "meeting.join", "space": "eng", "room": room, "mode": "sfu"}))
        .await;

    let token = s.token("gus", "globex");
    let path = format!("/whip/{room}?space=eng&name=Studio");
    let (publisher, r, sender) = whip_publisher(&s, &path, &token).await;
    let location = r.header("location").unwrap().to_string();
    let studio = until_studio(&mut alice, |_| true).await;

    alice.call(removal).await;
    let gone = alice.until_state(&studio["sid"], "left").await;
    assert_eq!(gone["reason"], "access");
    let r = delete_session(s.http, &location, &token).await;
    assert!(matches!(r.status, 403 | 404), "{} {}", r.status, r.body);
    sender.abort();
    publisher.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_session_ends_when_its_user_leaves_the_space() {
    let removal = json!({"type": "space.remove_member", "space": "eng", "user": "gus"});
    whip_publisher_loses_access("stage", false, removal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_session_ends_when_its_user_leaves_the_private_room() {
    let removal =
        json!({"type": "chat.remove_member", "space": "eng", "room": "board", "user": "gus"});
    whip_publisher_loses_access("board", true, removal).await;
}

fn offer_ufrag(sdp: &str) -> String {
    (sdp.lines())
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_why() {
    let s = TestServer::with(|c| c.meeting_max_participants = 2).await;
    let publisher = OfferingPeer::new(true).await;
    let offer = publisher.offer().await;
    let player = OfferingPeer::new(false).await;
    let play_offer = player.offer().await;
    let alice = s.token("alice", "acme");
    let post = |path: &'static str, token: Option<String>, body: String| async move {
        post_offer(s.http, path, token.as_deref(), &body).await
    };
    let check = |r: Response, status: u16, says: &str| {
        assert_eq!(r.status, status, "{}", r.body);
        assert!(r.body.contains(says), "{:?} does not say {says:?}", r.body);
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    };

    let r = post("/whip/r1", None, offer.clone()).await;
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    check(r, 401, "Authorization: Bearer");
    check(
        post("/whip/r1", Some("nonsense".into()), offer.clone()).await,
        401,
        "bad token",
    );
    // Another organisation's space.
    check(
        post(
            "/whip/r1?space=_acme",
            Some(s.token("mallory", "globex")),
            offer.clone(),
        )
        .await,
        403,
        "no access to room `r1` of space `_acme`",
    );
    let subscriber = s.token_with("sam", "acme", &[Grant::Subscribe], 3600);
    check(
        post("/whip/r1", Some(subscriber), offer.clone()).await,
        403,
        "publish grant",
    );
    let publisher_only = s.token_with("pat", "acme", &[Grant::Publish], 3600);
    check(
        post("/whep/r1", Some(publisher_only), play_offer.clone()).await,
        403,
        "subscribe grant",
    );
    let r = request(
        s.http,
        "POST",
        "/whip/r1",
        &[
            ("authorization", &format!("Bearer {alice}")),
            ("content-type", "text/plain"),
        ],
        &offer,
    )
    .await;
    check(r, 415, "application/sdp");
    check(
        post("/whip/r1", Some(alice.clone()), "v=0\r\nbroken".into()).await,
        400,
        "does not parse",
    );
    check(
        post("/whip/r1", Some(alice.clone()), play_offer.clone()).await,
        400,
        "subscribe grant (use sendonly)",
    );
    check(
        post("/whip/r1", Some(alice.clone()), "v".repeat(70 * 1024)).await,
        413,
        "at most",
    );

    // A live mesh meeting is not taken over.
    let mut bob = Peer::user(&s, Tr::Ws, "bob").await;
    bob.call(json!({"type": "meeting.join", "room": "mesh", "mode": "mesh"}))
        .await;
    check(
        post("/whip/mesh", Some(alice.clone()), offer.clone()).await,
        409,
        "peer to peer",
    );
    // A full room (two participants at most).
    for _ in 0..2 {
        let peer = OfferingPeer::new(true).await;
        let r = post("/whip/full", Some(alice.clone()), peer.offer().await).await;
        assert_eq!(r.status, 201, "{}", r.body);
        peer.close().await;
    }
    let again = OfferingPeer::new(true).await;
    check(
        post("/whip/full", Some(alice.clone()), again.offer().await).await,
        503,
        "full",
    );

    // The preflight names what the endpoint takes, and whom browsers may let call it.
    let s = TestServer::with(|c| c.ice_servers = vec!["stun:stun.example.org:3478".into()]).await;
    let r = request(s.http, "OPTIONS", "/whip/any", &[], "").await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(r.header("accept-post"), Some("application/sdp"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        r.headers("link"),
        ["<stun:stun.example.org:3478>; rel=\"ice-server\""]
    );
    publisher.close().await;
    player.close().await;
    again.close().await;
}

#[tokio::test]
async fn the_openapi_document_describes_whip_and_whep() {
    let s = TestServer::start().await;
    let (status, doc, _) = crate::api::http(s.http, "GET", "/api/openapi.json", None, None).await;
    assert_eq!(status, 200);
    let paths = &doc["paths"];
    for endpoint in ["/whip/{room}", "/whep/{room}"] {
        for method in ["post", "options"] {
            assert!(paths[endpoint][method].is_object(), "{method} {endpoint}");
        }
        let sdp = &paths[endpoint]["post"]["requestBody"]["content"]["application/sdp"];
        assert!(sdp.is_object(), "{endpoint}: {}", paths[endpoint]);
        let session = format!("{endpoint}/{{session}}");
        for method in ["patch", "delete"] {
            assert!(paths[&session][method].is_object(), "{method} {session}");
        }
    }
}
