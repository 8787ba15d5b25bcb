//! Client-offered sessions in the simulated network (`sim`): str0m clients that make the
//! offer, as WHIP and WHEP clients do, next to the room's server-offered sessions.

use super::super::sim::{Client, Net, STEP, frame};
use super::*;
use str0m::RtcConfig;
use str0m::change::SdpAnswer;
use str0m::format::Codec;

/// `name` offers one line per kind in `kinds` (sending with `Publish`, receiving with `Play`)
/// and the room answers; returns the answered lines.
fn offer_from(
    net: &mut Net,
    name: &str,
    role: ClientRole,
    kinds: &[MediaKind],
    follow: Option<&str>,
) -> Vec<(String, TrackKind)> {
    offer_with(net, name, role, kinds, follow, Rtc::builder())
}

/// As `offer_from`, from a client configured as `config` (its codecs).
fn offer_with(
    net: &mut Net,
    name: &str,
    role: ClientRole,
    kinds: &[MediaKind],
    follow: Option<&str>,
    config: RtcConfig,
) -> Vec<(String, TrackKind)> {
    let addr: SocketAddr = format!("10.0.0.{}:7000", net.next_host).parse().unwrap();
    net.next_host += 1;
    let mut rtc = config.build(net.now);
    rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    let direction = match role {
        ClientRole::Publish => Direction::SendOnly,
        ClientRole::Play => Direction::RecvOnly,
    };
    let mut api = rtc.sdp_api();
    for kind in kinds {
        api.add_media(*kind, direction, None, None, None);
    }
    let (offer, pending) = api.apply().unwrap();
    net.room.add_participant(name).unwrap();
    let answer = net
        .room
        .accept_client_offer(
            name,
            &offer.to_sdp_string(),
            role,
            follow.map(str::to_string),
        )
        .unwrap();
    let parsed = SdpAnswer::from_sdp_string(&answer.sdp).unwrap();
    rtc.sdp_api().accept_answer(pending, parsed).unwrap();
    net.clients.insert(name.to_string(), Client::new(rtc, addr));
    answer.lines
}

/// `name` publishes, as the WHIP shell does, one track per line it sends: `<name>-<kind>`.
fn publish_lines(net: &mut Net, name: &str, lines: &[(String, TrackKind)]) {
    for (mid, kind) in lines {
        let track = format!("{name}-{kind:?}").to_lowercase();
        net.room.publish(name, &track, *kind).unwrap();
        net.room.bind_client_track(name, mid, &track).unwrap();
        net.clients.get_mut(name).unwrap().media.push(MediaLine {
            mid: mid.clone(),
            track,
            participant: name.to_string(),
            kind: *kind,
        });
    }
}

const AUDIO_VIDEO: [MediaKind; 2] = [MediaKind::Audio, MediaKind::Video];

#[test]
fn a_whip_publishers_frames_reach_a_server_offered_subscriber() {
    let mut net = Net::new(RoomConfig::default());
    let lines = offer_from(&mut net, "obs", ClientRole::Publish, &AUDIO_VIDEO, None);
    let kinds: Vec<TrackKind> = lines.iter().map(|(_, k)| *k).collect();
    assert_eq!(kinds, [TrackKind::Audio, TrackKind::Video]);
    publish_lines(&mut net, "obs", &lines);
    net.join("bob");
    net.room.subscribe("bob", "obs-audio").unwrap();
    net.room.subscribe("bob", "obs-video").unwrap();
    net.settle();
    // The client-offered session is never offered anything.
    assert!(net.room.poll_offer().is_none());
    net.connect(&["obs", "bob"]);
    net.stream("obs", "obs-video", 20);

    let bob = &net.clients["bob"];
    let got = bob.frames_of(bob.mid_of("obs-video"));
    assert!(got.len() >= 15, "bob got {} frames", got.len());
    let last: Vec<Vec<u8>> = (10..20).map(frame).collect();
    assert_eq!(&got[got.len() - 10..], &last[..]);
    // Bob's subscription asked the WHIP client for a keyframe (RTCP goes out in its time).
    net.run(200);
    assert!(net.clients["obs"].keyframe_requests >= 1);
    assert!(net.clients["obs"].frames.is_empty());
}

/// Alice and carol each publish a video track.
fn alice_and_carol_publish_video() -> Net {
    let mut net = Net::new(RoomConfig::default());
    for name in ["alice", "carol"] {
        net.join(name);
        net.room
            .publish(name, &format!("{name}-video"), TrackKind::Video)
            .unwrap();
    }
    net.settle();
    net
}

#[test]
fn a_whep_player_receives_a_publisher_and_switches_when_it_leaves() {
    let mut net = alice_and_carol_publish_video();
    let lines = offer_from(
        &mut net,
        "tv",
        ClientRole::Play,
        &AUDIO_VIDEO,
        Some("carol"),
    );
    let video = Mid::from(lines[1].0.as_str());
    // As the meeting does: the player is subscribed to every track of the others.
    net.room.subscribe("tv", "alice-video").unwrap();
    net.room.subscribe("tv", "carol-video").unwrap();
    net.settle();
    assert_eq!(
        net.room.playing_from("tv"),
        Some("carol"),
        "the followed one"
    );
    net.connect(&["alice", "carol", "tv"]);

    net.stream("carol", "carol-video", 10);
    net.stream("alice", "alice-video", 10);
    let got = net.clients["tv"].frames_of(video);
    assert!(got.len() >= 5, "tv got {} of carol's frames", got.len());
    let from_carol = got.len();

    // Carol leaves: the line switches to alice, who is asked for a keyframe.
    let asked = net.clients["alice"].keyframe_requests;
    net.leave("carol");
    net.settle();
    assert_eq!(net.room.playing_from("tv"), Some("alice"));
    net.run(10);
    assert!(net.clients["alice"].keyframe_requests > asked);
    net.stream("alice", "alice-video", 10);
    let got = net.clients["tv"].frames_of(video);
    assert_eq!(got.len(), from_carol + 10, "alice's frames follow carol's");
    assert_eq!(got[got.len() - 1], frame(9));

    // Nothing publishes: the lines wait, then take the next publisher.
    net.leave("alice");
    net.settle();
    assert_eq!(net.room.playing_from("tv"), None);
    net.join("dave");
    net.room
        .publish("dave", "dave-video", TrackKind::Video)
        .unwrap();
    net.room.subscribe("tv", "dave-video").unwrap();
    net.settle();
    assert_eq!(net.room.playing_from("tv"), Some("dave"));
}

#[test]
fn a_whep_player_follows_whom_it_is_told() {
    let mut net = alice_and_carol_publish_video();
    let lines = offer_from(&mut net, "tv", ClientRole::Play, &[MediaKind::Video], None);
    let video = Mid::from(lines[0].0.as_str());
    net.room.subscribe("tv", "alice-video").unwrap();
    net.room.subscribe("tv", "carol-video").unwrap();
    net.settle();
    assert_eq!(net.room.playing_from("tv"), Some("alice"), "the first");
    net.connect(&["alice", "carol", "tv"]);
    net.stream("alice", "alice-video", 5);
    net.stream("carol", "carol-video", 5);
    let before = net.clients["tv"].frames_of(video).len();
    assert!(before >= 3, "tv got {before} frames");

    let asked = net.clients["carol"].keyframe_requests;
    net.room.follow("tv", Some("carol"));
    net.settle();
    net.run(10);
    assert_eq!(net.room.playing_from("tv"), Some("carol"));
    assert!(net.clients["carol"].keyframe_requests > asked);
    net.stream("alice", "alice-video", 5);
    assert_eq!(net.clients["tv"].frames_of(video).len(), before);
    net.stream("carol", "carol-video", 5);
    assert_eq!(net.clients["tv"].frames_of(video).len(), before + 5);
}

#[test]
fn a_silent_client_session_expires() {
    let steps = |d: Duration| (d.as_millis() / STEP.as_millis()) as usize;
    let mut net = Net::new(RoomConfig::default());
    let lines = offer_from(&mut net, "obs", ClientRole::Publish, &AUDIO_VIDEO, None);
    publish_lines(&mut net, "obs", &lines);
    net.join("bob");
    net.connect(&["obs", "bob"]);
    // A client that never connects is gone CLIENT_IDLE after its offer.
    offer_from(&mut net, "gst", ClientRole::Publish, &AUDIO_VIDEO, None);
    let gst = net.clients.remove("gst").unwrap();
    net.gone.insert("gst".into(), gst);
    net.run(steps(CLIENT_IDLE) - 10);
    assert!(net.room.expired_clients().is_empty());
    net.run(20);
    assert_eq!(net.room.expired_clients(), ["gst"]);
    net.room.remove_participant("gst");

    // A connected one stays while it is; once it goes silent, ICE times out and it is gone
    // CLIENT_IDLE later. Server-offered sessions (bob's) are never named.
    net.run(steps(Duration::from_secs(5)));
    assert!(net.room.expired_clients().is_empty());
    let obs = net.clients.remove("obs").unwrap();
    net.gone.insert("obs".into(), obs);
    let mut silent = Duration::ZERO;
    while net.room.expired_clients().is_empty() {
        assert!(silent < CLIENT_IDLE * 2, "obs never expired");
        net.run(steps(Duration::from_millis(500)));
        silent += Duration::from_millis(500);
    }
    assert!(silent >= CLIENT_IDLE, "expired after {silent:?}");
    assert_eq!(net.room.expired_clients(), ["obs"]);
}

#[test]
fn offers_and_fragments_are_checked() {
    let mut net = Net::new(RoomConfig::default());
    let mut rtc = Rtc::builder().build(net.now);
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (recv_only, _) = api.apply().unwrap();
    let recv_only = recv_only.to_sdp_string();
    let refused = check_client_offer(&recv_only, ClientRole::Publish).unwrap_err();
    assert!(refused.to_string().contains("subscribe grant"), "{refused}");
    assert_eq!(check_client_offer(&recv_only, ClientRole::Play), Ok(()));
    let e = check_client_offer("v=0\r\nnonsense", ClientRole::Play).unwrap_err();
    assert!(e.to_string().contains("does not parse"), "{e}");
    let big = format!("{recv_only}{}", "a=x\r\n".repeat(crate::MAX_SDP_BYTES / 5));
    let e = check_client_offer(&big, ClientRole::Play).unwrap_err();
    assert!(e.to_string().contains("at most"), "{e}");

    // A session the room offered already cannot take a client's offer.
    net.join("alice");
    assert!(matches!(
        net.room
            .accept_client_offer("alice", &recv_only, ClientRole::Play, None),
        Err(RoomError::Invalid(_))
    ));
    // Tracks bind only to a line of their kind that the client sends.
    let lines = offer_from(&mut net, "obs", ClientRole::Publish, &AUDIO_VIDEO, None);
    net.room.publish("obs", "t-a", TrackKind::Audio).unwrap();
    assert!(matches!(
        net.room.bind_client_track("obs", &lines[1].0, "t-a"),
        Err(RoomError::Invalid(_))
    ));
    assert!(matches!(
        net.room.bind_client_track("alice", &lines[0].0, "t-a"),
        Err(RoomError::NotFound(_))
    ));
    assert_eq!(
        net.room.bind_client_track("obs", &lines[0].0, "t-a"),
        Ok(())
    );

    let ufrag = remote_ufrag(&recv_only).unwrap().to_string();
    let trickle = format!(
        "a=ice-ufrag:{ufrag}\r\na=ice-pwd:x\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n\
         a=candidate:1 1 udp 2130706431 10.0.0.9 5000 typ host\r\na=end-of-candidates\r\n"
    );
    assert_eq!(read_fragment(&trickle, &ufrag), Ok(Fragment::Trickle));
    let restart = "a=ice-ufrag:new1\r\na=ice-pwd:newpassword\r\n";
    assert_eq!(read_fragment(restart, &ufrag), Ok(Fragment::Restart));
    assert!(read_fragment("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n", &ufrag).is_err());
}

/// OBS's codecs: H.264 (constrained baseline, packetization mode 1) and Opus.
fn obs_codecs() -> RtcConfig {
    let mut config = Rtc::builder().clear_codecs().enable_opus(true, false);
    (config.codec_config()).add_h264(102.into(), Some(103.into()), true, 0x42e01f);
    config
}

/// An H.264 access unit in Annex B, numbered `i`: an IDR slice behind SPS and PPS when `key`,
/// else a P slice.
fn h264_frame(key: bool, i: u8) -> Vec<u8> {
    let mut frame = Vec::new();
    if key {
        frame.extend([
            0, 0, 0, 1, 0x67, 0x42, 0xe0, 0x1f, 0xda, 0x02, 0x80, 0xbf, 0xe5,
        ]);
        frame.extend([0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
    }
    let slice = if key { 0x65 } else { 0x41 };
    frame.extend([0, 0, 0, 1, slice, 0x88, 0x84, i, i]);
    frame
}

/// `publisher` sends `h264_frame(key, i)` on its line of `<publisher>-video`.
fn send_h264(net: &mut Net, publisher: &str, key: bool, i: u8) {
    let now = net.now;
    let time: str0m::media::MediaTime = now.duration_since(net.start).into();
    let client = net.clients.get_mut(publisher).unwrap();
    let mid = client.mid_of(&format!("{publisher}-video"));
    let pt = (client.rtc.codec_config())
        .find(|p| p.spec().codec == Codec::H264)
        .unwrap()
        .pt();
    (client.rtc.writer(mid).unwrap())
        .write(pt, now, time, h264_frame(key, i))
        .unwrap();
    net.run(6);
}

#[test]
fn h264_reaches_only_the_subscribers_that_negotiated_it() {
    let mut net = Net::new(RoomConfig::default());
    let lines = offer_with(
        &mut net,
        "obs",
        ClientRole::Publish,
        &AUDIO_VIDEO,
        None,
        obs_codecs(),
    );
    publish_lines(&mut net, "obs", &lines);
    // Carol's client takes every default codec; bob's answers the room's offers with VP8 only.
    net.join("carol");
    let addr: SocketAddr = "10.0.0.99:6000".parse().unwrap();
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_vp8(true)
        .build(net.now);
    rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    net.clients.insert("bob".into(), Client::new(rtc, addr));
    net.room.add_participant("bob").unwrap();
    for name in ["carol", "bob"] {
        net.room.subscribe(name, "obs-video").unwrap();
    }
    net.settle();
    net.connect(&["obs", "carol", "bob"]);
    for i in 0..5 {
        send_h264(&mut net, "obs", i == 0, i);
    }
    let carol = &net.clients["carol"];
    let sent: Vec<Vec<u8>> = (0..5).map(|i| h264_frame(i == 0, i)).collect();
    assert_eq!(carol.frames_of(carol.mid_of("obs-video")), sent);
    // Nothing is written to bob's line: it has no payload type for H.264.
    let forwarded = net.room.stats().forwarded_packets;
    for i in 5..10 {
        send_h264(&mut net, "obs", false, i);
    }
    let to_carol = net.room.stats().forwarded_packets - forwarded;
    assert_eq!(to_carol, 5, "one packet per P slice, to carol alone");
    assert!(net.clients["bob"].frames.is_empty());
}

#[test]
fn a_player_without_the_rooms_codec_is_refused_or_left_to_others() {
    let vp8_only = || Rtc::builder().clear_codecs().enable_vp8(true);
    let mut net = Net::new(RoomConfig::default());
    // A VP8-only player in the room before OBS publishes H.264.
    let early = offer_with(
        &mut net,
        "vp8",
        ClientRole::Play,
        &[MediaKind::Video],
        None,
        vp8_only(),
    );
    let early = Mid::from(early[0].0.as_str());
    let lines = offer_with(
        &mut net,
        "obs",
        ClientRole::Publish,
        &AUDIO_VIDEO,
        None,
        obs_codecs(),
    );
    publish_lines(&mut net, "obs", &lines);
    net.room.subscribe("vp8", "obs-video").unwrap();
    net.room.subscribe("vp8", "obs-audio").unwrap();
    net.settle();
    net.connect(&["obs", "vp8"]);
    for i in 0..3 {
        send_h264(&mut net, "obs", i == 0, i);
    }
    // Nothing it cannot decode was sent to it.
    assert_eq!(net.room.stats().forwarded_packets, 0);

    // A VP8-only player coming now is told why it cannot play.
    net.room.add_participant("late").unwrap();
    net.room.subscribe("late", "obs-video").unwrap();
    let mut rtc = vp8_only().build(net.now);
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, _) = api.apply().unwrap();
    let refused = net
        .room
        .accept_client_offer("late", &offer.to_sdp_string(), ClientRole::Play, None)
        .unwrap_err();
    assert_eq!(
        refused,
        RoomError::Invalid(
            "the room's video is H264, which the offer does not receive: offer H264 on its \
             video line"
                .into()
        )
    );
    net.room.remove_participant("late");

    // The early player's line takes a VP8 track when one comes.
    net.join("alice");
    net.room
        .publish("alice", "alice-video", TrackKind::Video)
        .unwrap();
    net.room.subscribe("vp8", "alice-video").unwrap();
    net.settle();
    net.connect(&["alice", "vp8"]);
    net.stream("alice", "alice-video", 5);
    assert!(!net.clients["vp8"].frames_of(early).is_empty());
}
