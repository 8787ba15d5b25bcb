//! The room driven by str0m `Rtc`s acting as clients, all in memory (`sim`).

use super::sim::{Net, STEP, frame};
use super::*;

/// Alice publishes a video track; bob and carol subscribe to it.
fn alice_bob_carol(config: RoomConfig) -> Net {
    room_of_three(config, false)
}

/// Alice publishes a video track, in three layers when `simulcast`; bob and carol subscribe.
fn room_of_three(config: RoomConfig, simulcast: bool) -> Net {
    let mut net = Net::new(config);
    net.join("alice");
    net.room
        .publish("alice", "t-video", TrackKind::Video)
        .unwrap();
    if simulcast {
        net.room.simulcast("t-video").unwrap();
    }
    net.settle();
    net.join("bob");
    net.join("carol");
    net.room.subscribe("bob", "t-video").unwrap();
    net.room.subscribe("carol", "t-video").unwrap();
    net.settle();
    net.connect(&["alice", "bob", "carol"]);
    net
}

#[test]
fn a_publishers_media_reaches_every_subscriber() {
    let mut net = alice_bob_carol(RoomConfig::default());
    net.stream("alice", "t-video", 20);
    for name in ["bob", "carol"] {
        let client = &net.clients[name];
        let line = client.media.iter().find(|l| l.track == "t-video").unwrap();
        assert_eq!(line.participant, "alice");
        assert_eq!(line.kind, TrackKind::Video);
        let got = client.frames_of(client.mid_of("t-video"));
        // The first frames may go out before the subscriber's keys are in place; the later
        // ones all arrive, unchanged and in order.
        assert!(got.len() >= 15, "{name} got {} frames", got.len());
        let last: Vec<Vec<u8>> = (10..20).map(frame).collect();
        assert_eq!(&got[got.len() - 10..], &last[..], "{name}");
    }
    // The publisher receives nothing of its own.
    assert!(net.clients["alice"].frames.is_empty());
    let stats = net.room.stats();
    assert!(stats.forwarded_packets >= 30, "{stats:?}");
    assert!(stats.forwarded_bytes >= 30 * 8, "{stats:?}");
    assert_eq!(stats.dropped_frames, 0);
}

#[test]
fn a_subscriber_that_leaves_stops_receiving() {
    let mut net = alice_bob_carol(RoomConfig::default());
    net.stream("alice", "t-video", 5);
    let bob_mid = net.clients["bob"].mid_of("t-video");
    assert!(!net.clients["bob"].frames_of(bob_mid).is_empty());
    let ufrag = net.room.ufrag("bob").unwrap().to_string();
    // Routes: three opened so far.
    let mut routes = Vec::new();
    while let Some(route) = net.room.poll_route() {
        routes.push(route);
    }
    assert_eq!(routes.iter().filter(|r| r.open).count(), 3);

    net.leave("bob");
    assert_eq!(net.room.poll_route(), Some(Route { ufrag, open: false }));
    let bob_datagrams = net.gone["bob"].datagrams_in;
    let carol_mid = net.clients["carol"].mid_of("t-video");
    let carol_frames = net.clients["carol"].frames_of(carol_mid).len();
    net.stream("alice", "t-video", 10);
    assert_eq!(net.gone["bob"].datagrams_in, bob_datagrams);
    assert_eq!(
        net.clients["carol"].frames_of(carol_mid).len(),
        carol_frames + 10
    );
    assert_eq!(net.room.len(), 2);

    // An unsubscribed subscriber's line stops too.
    net.room.unsubscribe("carol", "t-video");
    net.settle();
    assert!(net.clients["carol"].media.is_empty());
    let carol_frames = net.clients["carol"].frames.len();
    net.stream("alice", "t-video", 5);
    assert_eq!(net.clients["carol"].frames.len(), carol_frames);
}

#[test]
fn keyframe_requests_reach_the_publisher_throttled() {
    let config = RoomConfig {
        keyframe_interval: Duration::from_millis(500),
        ..RoomConfig::default()
    };
    let mut net = alice_bob_carol(config);
    net.stream("alice", "t-video", 5);
    net.run(200); // past the throttle
    // Subscribing asked the publisher for a keyframe once its media flowed.
    assert!(net.clients["alice"].keyframe_requests >= 1);
    let before = net.clients["alice"].keyframe_requests;

    // Bob and carol both ask within the interval: alice hears one request now...
    for name in ["bob", "carol"] {
        let client = net.clients.get_mut(name).unwrap();
        let mid = client.mid_of("t-video");
        let mut writer = client.rtc.writer(mid).unwrap();
        assert!(writer.is_request_keyframe_possible(KeyframeRequestKind::Pli));
        writer
            .request_keyframe(None, KeyframeRequestKind::Pli)
            .unwrap();
    }
    net.run(20); // 100 ms
    assert_eq!(net.clients["alice"].keyframe_requests, before + 1);
    // ...and the second once the interval is over.
    net.run(100);
    assert_eq!(net.clients["alice"].keyframe_requests, before + 2);
    assert!(net.room.stats().keyframe_requests >= 2);
}

/// Bob loses a packet on the way: his NACK is answered from his line's send buffer, and the
/// frame it carried arrives.
#[test]
fn lost_packets_are_retransmitted_from_the_send_buffer() {
    let mut net = alice_bob_carol(RoomConfig::default());
    net.stream("alice", "t-video", 5);
    let before = net.clients["bob"].datagrams_in;
    net.lose_rtp.insert("bob".into(), 1);
    // Each frame is one packet: without the retransmission, one of these frames is missing.
    net.stream("alice", "t-video", 10);
    net.run(100);
    assert_eq!(net.lose_rtp["bob"], 0, "a packet to bob was lost");
    let last: Vec<Vec<u8>> = (0..10).map(frame).collect();
    for name in ["bob", "carol"] {
        let client = &net.clients[name];
        let got = client.frames_of(client.mid_of("t-video"));
        assert!(got.ends_with(&last), "{name} got {} frames", got.len());
    }
    assert!(net.clients["bob"].datagrams_in > before + 10);
}

/// Alice publishes video in three layers; bob and carol subscribe.
fn simulcast_room(config: RoomConfig) -> Net {
    room_of_three(config, true)
}

/// The layers of the frames `name` received on `track`, from the `from`th on.
fn layers_seen(net: &Net, name: &str, from: usize) -> Vec<u8> {
    let client = &net.clients[name];
    let frames = client.frames_of(client.mid_of("t-video"));
    frames[from.min(frames.len())..]
        .iter()
        .map(|f| f[10])
        .collect()
}

fn layer_changes(net: &mut Net) -> Vec<LayerChange> {
    std::iter::from_fn(|| net.room.poll_layers()).collect()
}

#[test]
fn each_subscriber_gets_the_layer_its_element_needs() {
    let mut net = simulcast_room(RoomConfig::default());
    net.room.set_layout("bob", "t-video", 160, 90).unwrap();
    net.room.set_layout("carol", "t-video", 1280, 720).unwrap();
    // The first keyframes, one layer after the other: each layer is picked as it is first
    // seen, so carol steps up through them.
    for layer in 0..3 {
        net.send_layers("alice", "t-video", &[layer], true, 0);
    }
    assert_eq!(layers_seen(&net, "carol", 0), [0, 1, 2]);
    for i in 1..10 {
        net.send_layers("alice", "t-video", &[0, 1, 2], i % 5 == 0, i);
    }
    let bob = layers_seen(&net, "bob", 0);
    let carol = layers_seen(&net, "carol", 3);
    assert!(bob.len() >= 8 && bob.iter().all(|&l| l == 0), "{bob:?}");
    assert!(
        carol.len() >= 8 && carol.iter().all(|&l| l == 2),
        "{carol:?}"
    );
    // Nobody needs the middle layer: alice is told to pause it.
    let changes = layer_changes(&mut net);
    let last = changes.last().expect("a layer change");
    assert_eq!(
        (last.participant.as_str(), last.track.as_str()),
        ("alice", "t-video")
    );
    assert_eq!(last.active, ["q", "f"]);
    // Sizes are bounded, and only for tracks the participant receives.
    assert!(matches!(
        net.room.set_layout("bob", "t-video", 100_000, 10),
        Err(RoomError::Invalid(_))
    ));
    assert!(matches!(
        net.room.set_layout("alice", "t-video", 100, 10),
        Err(RoomError::NotFound(_))
    ));
}

#[test]
fn a_layer_switch_waits_for_a_keyframe_it_requests() {
    let config = RoomConfig {
        keyframe_interval: Duration::from_millis(100),
        ..RoomConfig::default()
    };
    let mut net = simulcast_room(config);
    net.room.set_layout("bob", "t-video", 160, 90).unwrap();
    net.send_layers("alice", "t-video", &[0, 1, 2], true, 0);
    net.send_layers("alice", "t-video", &[0, 1, 2], false, 1);
    net.run(300); // past the keyframe throttle
    let requests = net.clients["alice"].keyframe_requests;
    let seen = net.clients["bob"].frames.len();

    net.room.set_layout("bob", "t-video", 1920, 1080).unwrap();
    net.run(10);
    assert!(net.clients["alice"].keyframe_requests > requests);
    assert_eq!(layer_changes(&mut net).last().unwrap().active, ["q", "f"]);
    // Delta frames: bob stays on the low layer until the high one has a keyframe.
    for i in 2..5 {
        net.send_layers("alice", "t-video", &[0, 1, 2], false, i);
    }
    net.send_layers("alice", "t-video", &[0, 1, 2], true, 5);
    net.send_layers("alice", "t-video", &[0, 1, 2], false, 6);
    // (The low layer's frame 5 is sent before the high one's, so bob gets both.)
    assert_eq!(layers_seen(&net, "bob", seen), [0, 0, 0, 0, 2, 2]);
    // One continuous stream: nothing is missing, the frames come in order.
    let numbers: Vec<u8> = (net.clients["bob"].frames[seen..].iter())
        .map(|(_, f)| f[11])
        .collect();
    assert_eq!(numbers, [2, 3, 4, 5, 5, 6]);
    // The low layer is still needed (it always is); the middle one never was.
    net.run(100);
    assert_eq!(layer_changes(&mut net), []);
}

#[test]
fn a_hidden_element_gets_nothing_until_shown() {
    let mut net = simulcast_room(RoomConfig::default());
    net.room.set_layout("bob", "t-video", 640, 360).unwrap();
    net.room.set_layout("carol", "t-video", 640, 360).unwrap();
    net.send_layers("alice", "t-video", &[0, 1, 2], true, 0);
    net.send_layers("alice", "t-video", &[0, 1, 2], true, 1);
    assert_eq!(layers_seen(&net, "bob", 0), [0, 1, 1]);
    assert_eq!(layer_changes(&mut net).last().unwrap().active, ["q", "h"]);

    net.room.set_layout("bob", "t-video", 0, 0).unwrap();
    net.room.set_layout("carol", "t-video", 640, 0).unwrap();
    let seen = net.clients["bob"].frames.len();
    for i in 2..5 {
        net.send_layers("alice", "t-video", &[0, 1, 2], true, i);
    }
    assert_eq!(net.clients["bob"].frames.len(), seen);
    assert_eq!(net.clients["carol"].frames.len(), seen);
    // Only the lowest layer goes on, for whoever comes next.
    assert_eq!(layer_changes(&mut net).last().unwrap().active, ["q"]);

    net.run(200); // past the keyframe throttle
    let requests = net.clients["alice"].keyframe_requests;
    net.room.set_layout("bob", "t-video", 320, 180).unwrap();
    net.run(220); // within the keyframe throttle at most
    assert!(net.clients["alice"].keyframe_requests > requests);
    net.send_layers("alice", "t-video", &[0], false, 5);
    net.send_layers("alice", "t-video", &[0], true, 6);
    assert_eq!(layers_seen(&net, "bob", seen), [0]);
}

#[test]
fn audio_levels_name_the_active_speakers() {
    let mut net = Net::new(RoomConfig::default());
    for name in ["alice", "bob"] {
        net.join(name);
        let track = format!("t-{name}");
        net.room.publish(name, &track, TrackKind::Audio).unwrap();
    }
    net.settle();
    net.room.subscribe("alice", "t-bob").unwrap();
    net.room.subscribe("bob", "t-alice").unwrap();
    net.settle();
    net.connect(&["alice", "bob"]);
    // Layouts are for video: audio is never hidden.
    assert!(matches!(
        net.room.set_layout("alice", "t-bob", 0, 0),
        Err(RoomError::Invalid(_))
    ));
    let mut lists = Vec::new();
    for _ in 0..100 {
        net.send_audio("alice", "t-alice", 127);
        net.send_audio("bob", "t-bob", 20);
        lists.extend(std::iter::from_fn(|| net.room.poll_speakers()));
    }
    let last = lists.last().expect("a list of speakers");
    assert_eq!(last.len(), 1, "{lists:?}");
    assert_eq!(last[0].participant, "bob");
    assert!(last[0].level >= 50, "{last:?}");
    // What a participant joining now is told.
    assert_eq!(net.room.speakers(), last.as_slice());
    // Bob leaves: the list empties.
    net.leave("bob");
    net.run(100);
    let lists: Vec<_> = std::iter::from_fn(|| net.room.poll_speakers()).collect();
    assert_eq!(lists.last(), Some(&Vec::new()));
}

#[test]
fn unpublishing_stops_every_line_of_the_track() {
    let mut net = alice_bob_carol(RoomConfig::default());
    net.room.unpublish("t-video");
    net.settle();
    for name in ["alice", "bob", "carol"] {
        assert!(net.clients[name].media.is_empty(), "{name}");
    }
    // A new track is offered again, on the same sessions.
    net.room.publish("bob", "t-bob", TrackKind::Audio).unwrap();
    net.room.subscribe("alice", "t-bob").unwrap();
    net.settle();
    let line = &net.clients["alice"].media[0];
    assert_eq!(
        (line.track.as_str(), line.participant.as_str()),
        ("t-bob", "bob")
    );
}

#[test]
fn limits_and_bad_answers_are_refused() {
    let config = RoomConfig {
        max_sessions: 1,
        max_tracks: 1,
        ..RoomConfig::default()
    };
    let mut net = Net::new(config);
    net.join("alice");
    assert!(matches!(
        net.room.add_participant("bob"),
        Err(RoomError::LimitExceeded(_))
    ));
    net.room.publish("alice", "t1", TrackKind::Audio).unwrap();
    assert!(matches!(
        net.room.publish("alice", "t2", TrackKind::Audio),
        Err(RoomError::LimitExceeded(_))
    ));
    assert!(matches!(
        net.room.subscribe("alice", "t1"),
        Err(RoomError::Invalid(_))
    ));
    // A bad answer drops the offer; the same change is offered again.
    let offer = net.room.poll_offer().unwrap();
    assert!(matches!(
        net.room.handle_answer("alice", "v=0\r\nnonsense"),
        Err(RoomError::Invalid(_))
    ));
    let again = net.room.poll_offer().unwrap();
    let tracks = |o: &Offer| o.media.iter().map(|l| l.track.clone()).collect::<Vec<_>>();
    assert_eq!(tracks(&again), tracks(&offer));
    assert_eq!(tracks(&again), ["t1"]);
    assert!(matches!(
        net.room.handle_answer("nobody", "v=0"),
        Err(RoomError::NotFound(_))
    ));
}

#[test]
fn stun_usernames_name_the_receiving_session() {
    let mut net = Net::new(RoomConfig::default());
    net.join("alice");
    let ufrag = net.room.ufrag("alice").unwrap().to_string();
    // Make the client speak first and catch its first binding request.
    let client = net.clients.get_mut("alice").unwrap();
    client
        .rtc
        .handle_input(Input::Timeout(net.now + STEP))
        .unwrap();
    let datagram = loop {
        match client.rtc.poll_output().unwrap() {
            Output::Transmit(t) => break t.contents.to_vec(),
            Output::Timeout(_) => panic!("no binding request"),
            Output::Event(_) => {}
        }
    };
    assert_eq!(stun_ufrag(&datagram), Some(ufrag.as_str()));
    assert_eq!(stun_ufrag(&[0x80, 0x60, 0, 0]), None);
    assert_eq!(stun_ufrag(&[]), None);
}

/// Eight videos to one viewer, more than its bandwidth estimate starts at (1 Mbit/s), with
/// estimation on: every frame arrives, in order, as the estimate grows to what the viewer
/// needs. (Fed beyond the estimate, str0m's pacer would queue the excess; kept within it
/// without running the pacer's due timeouts at once, whole videos would be paused.)
#[test]
fn a_viewer_of_many_videos_gets_every_frame() {
    let mut net = Net::new(RoomConfig::default());
    let publishers = many_videos(&mut net, 8);
    // Each send takes 10 ms: 8 videos of 12.5 frames/s of 3,000 bytes, 2.4 Mbit/s, for 16 s.
    let rounds = 200;
    for i in 0..rounds {
        let mut payload = frame((i % 250) as u8);
        payload.resize(3000, 0);
        for p in &publishers {
            net.send_frame(p, &format!("{p}-video"), &payload);
        }
    }
    net.run(400);
    let viewer = &net.clients["viewer"];
    for p in &publishers {
        let got = viewer.frames_of(viewer.mid_of(&format!("{p}-video"))).len();
        assert_eq!(got, rounds, "frames from {p}");
    }
    assert_eq!(net.room.stats().shed_frames, 0);
    assert_eq!(net.room.poll_paused(), None);
}

/// `n` publishers of a video track each, and a viewer subscribed to every one, connected.
fn many_videos(net: &mut Net, n: usize) -> Vec<String> {
    let publishers: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    for p in &publishers {
        net.join(p);
        let track = format!("{p}-video");
        net.room.publish(p, &track, TrackKind::Video).unwrap();
    }
    net.settle();
    net.join("viewer");
    for p in &publishers {
        net.room.subscribe("viewer", &format!("{p}-video")).unwrap();
    }
    net.settle();
    let mut names: Vec<&str> = publishers.iter().map(String::as_str).collect();
    names.push("viewer");
    net.connect(&names);
    publishers
}

/// The estimator of a session looks for what its subscriber would take without a limit,
/// and the estimate grows to it; hiding videos lowers it.
#[test]
fn the_estimate_grows_to_the_demand() {
    let mut net = Net::new(RoomConfig::default());
    let publishers = many_videos(&mut net, 4);
    // 4 videos of 20 frames/s of 3,000 bytes: 1.92 Mbit/s, about twice the start.
    let send = |net: &mut Net, rounds: usize| {
        for i in 0..rounds {
            let mut payload = frame((i % 250) as u8);
            payload.resize(3000, 0);
            for p in &publishers {
                let (client, mid) = (net.clients.get_mut(p).unwrap(), format!("{p}-video"));
                let mid = client.mid_of(&mid);
                let pt = (client.rtc.codec_config())
                    .find(|p| p.spec().codec == str0m::format::Codec::Vp8)
                    .unwrap()
                    .pt();
                let time = net.now.duration_since(net.start).into();
                let writer = client.rtc.writer(mid).unwrap();
                writer.write(pt, net.now, time, payload.clone()).unwrap();
            }
            net.run(10);
        }
    };
    send(&mut net, 200); // 10 s
    let asked = net.room.sessions["viewer"].asked;
    let estimate = net.room.estimate("viewer").unwrap();
    // What it receives, with headroom for the next layer (none here: a quarter).
    assert!((2_250_000..=2_600_000).contains(&asked.1), "{asked:?}");
    assert!(estimate >= 1_920_000, "{estimate}");
    let viewer = &net.clients["viewer"];
    for p in &publishers {
        let got = viewer.frames_of(viewer.mid_of(&format!("{p}-video"))).len();
        assert!(got >= 190, "{got} frames from {p}");
    }
    // Three videos hidden: it looks for one.
    for p in &publishers[1..] {
        net.room
            .set_layout("viewer", &format!("{p}-video"), 0, 0)
            .unwrap();
    }
    send(&mut net, 40);
    let asked = net.room.sessions["viewer"].asked;
    assert!((550_000..=650_000).contains(&asked.1), "{asked:?}");
}

/// Alice publishes a video in three layers and an audio track; bob receives both.
fn video_and_audio() -> Net {
    let mut net = Net::new(RoomConfig::default());
    net.join("alice");
    (net.room.publish("alice", "t-video", TrackKind::Video)).unwrap();
    net.room.simulcast("t-video").unwrap();
    (net.room.publish("alice", "t-audio", TrackKind::Audio)).unwrap();
    net.settle();
    net.join("bob");
    net.room.subscribe("bob", "t-video").unwrap();
    net.room.subscribe("bob", "t-audio").unwrap();
    net.settle();
    net.connect(&["alice", "bob"]);
    net
}

/// Alice streams for `seconds`, sending keyframes every 1.5 s and when asked. Returns what
/// bob received meanwhile: the layers of the video frames, and how many audio packets.
fn stream_media(net: &mut Net, seconds: u64, i: &mut u32) -> (Vec<u8>, usize) {
    let (video, audio) = (
        net.clients["bob"].mid_of("t-video"),
        net.clients["bob"].mid_of("t-audio"),
    );
    let before = net.clients["bob"].frames.len();
    let mut requests = net.clients["alice"].keyframe_requests;
    // Layers of about 130 kbit/s, 400 kbit/s and 1.3 Mbit/s.
    for _ in 0..seconds * 1000 / 30 {
        let asked = net.clients["alice"].keyframe_requests;
        let key = i.is_multiple_of(50) || asked > requests;
        requests = asked;
        net.send_media(
            "alice",
            ("t-video", "t-audio"),
            [500, 1500, 5000],
            key,
            *i as u8,
        );
        *i += 1;
    }
    let frames = &net.clients["bob"].frames[before..];
    let layers = (frames.iter())
        .filter(|(m, _)| *m == video)
        .map(|(_, f)| f[10])
        .collect();
    let audio = frames.iter().filter(|(m, _)| *m == audio).count();
    (layers, audio)
}

/// A subscriber behind a narrow link gets a lower layer, then no video at all (and is told),
/// while its audio goes on; once the link widens, the video comes back in the high layer.
#[test]
fn a_constrained_subscriber_steps_down_keeps_audio_and_recovers() {
    let mut net = video_and_audio();
    let mut i = 0;
    let (layers, _) = stream_media(&mut net, 6, &mut i);
    assert!(layers.ends_with(&[2; 30]), "{layers:?}");

    net.limit("bob", Some(700_000));
    let (layers, audio) = stream_media(&mut net, 10, &mut i);
    let last = &layers[layers.len().saturating_sub(60)..];
    assert!(
        last.len() == 60 && last.iter().all(|&l| l == 1),
        "{layers:?}"
    );
    assert!(audio >= 300, "{audio} audio packets");

    net.limit("bob", Some(80_000));
    let (layers, audio) = stream_media(&mut net, 10, &mut i);
    let paused = std::iter::from_fn(|| net.room.poll_paused()).last();
    let paused = paused.expect("bob is told his video is paused");
    assert_eq!(
        (paused.participant.as_str(), paused.track.as_str()),
        ("bob", "t-video")
    );
    assert!(paused.paused);
    let (_, audio_late) = stream_media(&mut net, 3, &mut i);
    // Audio goes on: some is lost while video fills the link, none once it is paused.
    assert!(
        audio >= 200 && audio_late >= 95,
        "{audio}, {audio_late} audio packets"
    );
    let (layers_late, _) = stream_media(&mut net, 3, &mut i);
    assert!(layers_late.is_empty(), "{layers:?} then {layers_late:?}");

    net.limit("bob", None);
    let (layers, audio) = stream_media(&mut net, 15, &mut i);
    assert!(layers.ends_with(&[2; 30]), "{layers:?}");
    assert!(audio >= 450, "{audio} audio packets");
    let resumed = std::iter::from_fn(|| net.room.poll_paused()).last();
    assert_eq!(resumed.map(|p| p.paused), Some(false));
}

/// A low estimate with nothing lost (a busy subscriber reporting arrival times late) never
/// pauses a video that flows: it keeps its lowest layer, and the estimate is raised to it.
#[test]
fn an_estimate_that_falls_without_loss_keeps_the_lowest_layer() {
    let mut net = video_and_audio();
    let mut i = 0;
    stream_media(&mut net, 6, &mut i);
    let mut audio = 0;
    for _ in 0..5 {
        let bob = net.room.sessions.get_mut("bob").unwrap();
        bob.rtc.bwe().reset(Bitrate::kbps(50));
        let (layers, a) = stream_media(&mut net, 1, &mut i);
        // A frame and an audio packet every 30 ms.
        assert!(layers.len() >= 30, "{layers:?}");
        audio += a;
    }
    assert!(audio >= 160, "{audio} audio packets");
    assert_eq!(net.room.poll_paused(), None);
    assert!(net.room.sessions["bob"].raised.is_some());
}
