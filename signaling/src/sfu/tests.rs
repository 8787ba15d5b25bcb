//! The room driven by str0m `Rtc`s acting as clients, all in memory (`sim`).

use super::sim::{Net, STEP, frame};
use super::*;

/// Alice publishes a video track; bob and carol subscribe to it.
fn alice_bob_carol(config: RoomConfig) -> Net {
    let mut net = Net::new(config);
    net.join("alice");
    net.room
        .publish("alice", "t-video", TrackKind::Video)
        .unwrap();
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
