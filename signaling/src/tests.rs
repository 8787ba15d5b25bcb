//! The meeting core driven like the server drives it: requests with a simulated clock, then
//! every output drained and sorted into each connection's inbox.

use crate::wire::{
    Candidate, Grants, JoinReply, LeftReason, MeetingFrame, MeetingMode, Participant,
    ParticipantState, SignalKind, TrackKind, TrackSource,
};
use crate::{Config, ConnId, Error, Joiner, MAX_TRACKS, Meeting, Millis, Output};
use std::collections::HashMap;

const T0: Millis = 1_700_000_000_000;
const ALL: Grants = Grants {
    publish: true,
    subscribe: true,
    data: true,
    admin: false,
};
const ADMIN: Grants = Grants { admin: true, ..ALL };
const VIEWER: Grants = Grants {
    publish: false,
    subscribe: true,
    data: false,
    admin: false,
};

struct Sim {
    meeting: Meeting,
    now: Millis,
    inbox: HashMap<ConnId, Vec<MeetingFrame>>,
    /// Presence changes, in order.
    presence: Vec<(ConnId, bool)>,
    /// Media routes opened (`true`) and closed, in order.
    routes: Vec<(String, bool)>,
    /// How often the meeting asked to switch to SFU mode.
    switches: usize,
    /// Whether an SFU runs: a switch asked for gets a room.
    sfu_runs: bool,
}

impl Sim {
    fn new(config: Config) -> Sim {
        Sim {
            meeting: Meeting::new("_acme", "standup", "t", config),
            now: T0,
            inbox: HashMap::new(),
            presence: Vec::new(),
            routes: Vec::new(),
            switches: 0,
            sfu_runs: true,
        }
    }

    fn default() -> Sim {
        Sim::new(Config {
            grace_ms: 10_000,
            max_participants: 50,
            sfu_participants: 0,
        })
    }

    fn join_as(
        &mut self,
        conn: ConnId,
        user: &str,
        grants: Grants,
        resume: Option<&str>,
    ) -> Result<JoinReply, Error> {
        let joiner = Joiner {
            user: user.into(),
            org: "acme".into(),
            name: None,
            default_name: user.into(),
            grants,
        };
        let reply = self.meeting.join(conn, joiner, resume, self.now);
        self.drain();
        reply
    }

    fn join(&mut self, conn: ConnId, user: &str) -> String {
        self.join_as(conn, user, ALL, None).unwrap().participant.sid
    }

    fn drain(&mut self) {
        while let Some(output) = self.meeting.poll_output() {
            match output {
                Output::Send { conn, frame } => self.inbox.entry(conn).or_default().push(frame),
                Output::Broadcast { conns, frame } => {
                    for conn in conns {
                        self.inbox.entry(conn).or_default().push(frame.clone());
                    }
                }
                Output::Presence { conn, in_meeting } => self.presence.push((conn, in_meeting)),
                Output::Route { ufrag, open } => self.routes.push((ufrag, open)),
                Output::SwitchToSfu => {
                    self.switches += 1;
                    if self.sfu_runs {
                        self.meeting.switch_to_sfu(room()).unwrap();
                    }
                }
            }
        }
    }

    /// Let time pass, running timers as the shell would.
    fn advance(&mut self, ms: Millis) {
        self.now += ms;
        while self.meeting.poll_timeout().is_some_and(|at| at <= self.now) {
            self.meeting.handle_timeout(self.now);
        }
        self.drain();
    }

    fn take(&mut self, conn: ConnId) -> Vec<MeetingFrame> {
        self.inbox.remove(&conn).unwrap_or_default()
    }

    /// The participants of every `meeting.participants` frame `conn` got, in order.
    fn changes(&mut self, conn: ConnId) -> Vec<Participant> {
        self.take(conn)
            .into_iter()
            .flat_map(|f| match f {
                MeetingFrame::Participants { participants, .. } => participants,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    fn publish(&mut self, conn: ConnId, cid: &str) -> Result<String, Error> {
        let track =
            self.meeting
                .publish(conn, cid, TrackKind::Audio, TrackSource::Microphone, false);
        self.drain();
        track.map(|t| t.sid)
    }

    fn offer(&mut self, conn: ConnId, to: &str, sdp: &str) -> Result<(), Error> {
        let r = self
            .meeting
            .signal(conn, to, SignalKind::Offer, Some(sdp.into()), None);
        self.drain();
        r
    }
}

fn sdp(direction: &str, data: bool) -> String {
    let mut s = format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na={direction}\r\n"
    );
    if data {
        s += "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\n";
    }
    s
}

#[test]
fn participants_see_each_other_join() {
    let mut sim = Sim::default();
    let alice = sim.join_as(1, "alice", ALL, None).unwrap();
    assert_eq!(alice.participants, vec![]);
    assert_eq!((alice.version, alice.participant.version), (1, 1));
    assert_eq!(alice.participant.state, ParticipantState::Active);
    assert_eq!(
        (alice.space.as_str(), alice.room.as_str()),
        ("_acme", "standup")
    );
    assert_eq!(alice.grants, ALL);
    let bob = sim.join_as(2, "bob", VIEWER, None).unwrap();
    assert_eq!(bob.participants.len(), 1);
    assert_eq!(bob.participants[0].sid, alice.participant.sid);
    assert_eq!(bob.version, 2);
    assert_eq!(bob.grants, VIEWER);
    assert_ne!(bob.participant.sid, alice.participant.sid);
    // Alice hears of Bob; so does Bob (old news to him, by version).
    let frames = sim.take(1);
    assert_eq!(frames.len(), 2, "{frames:?}");
    match &frames[1] {
        MeetingFrame::Participants {
            version,
            participants,
            space,
            room,
        } => {
            assert_eq!(
                (*version, space.as_str(), room.as_str()),
                (2, "_acme", "standup")
            );
            assert_eq!(participants, &vec![bob.participant.clone()]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.changes(2), vec![bob.participant.clone()]);
    assert_eq!(sim.presence, vec![(1, true), (2, true)]);
    assert_eq!(sim.meeting.len(), 2);
}

#[test]
fn versions_count_changes_and_frames_batch_them() {
    let mut sim = Sim::default();
    let a = sim.join(1, "alice");
    sim.join(2, "bob");
    sim.take(1);
    sim.take(2);
    let v = sim.meeting.version();
    // Two changes handled before the shell drains: one frame, Alice once, two versions on.
    let t1 = sim
        .meeting
        .publish(1, "mic", TrackKind::Audio, TrackSource::Microphone, false)
        .unwrap();
    sim.meeting
        .publish(1, "cam", TrackKind::Video, TrackSource::Camera, true)
        .unwrap();
    sim.drain();
    let frames = sim.take(2);
    assert_eq!(frames.len(), 1);
    let MeetingFrame::Participants {
        version,
        participants,
        ..
    } = &frames[0]
    else {
        panic!("{frames:?}")
    };
    assert_eq!(*version, v + 2);
    assert_eq!(participants.len(), 1);
    assert_eq!(participants[0].sid, a);
    assert_eq!(participants[0].version, 3);
    assert_eq!(participants[0].tracks.len(), 2);
    assert_eq!(participants[0].tracks[0], t1);
    assert!(participants[0].tracks[1].muted);
    // Muting to the state it is in changes nothing.
    sim.meeting.mute(1, &t1.sid, false, None).unwrap();
    sim.drain();
    assert_eq!(sim.meeting.version(), v + 2);
    assert!(sim.take(2).is_empty());
    sim.meeting.mute(1, &t1.sid, true, None).unwrap();
    sim.drain();
    let changes = sim.changes(2);
    assert_eq!(changes[0].version, 4);
    assert!(changes[0].tracks[0].muted);
    assert_eq!(sim.meeting.version(), v + 3);
}

#[test]
fn leaving() {
    let mut sim = Sim::default();
    sim.join(1, "alice");
    let b = sim.join(2, "bob");
    sim.take(1);
    sim.publish(2, "mic").unwrap();
    sim.take(1);
    sim.take(2);
    sim.meeting.leave(2, Some("bye".into())).unwrap();
    sim.drain();
    let changes = sim.changes(1);
    assert_eq!(changes.len(), 1);
    let left = &changes[0];
    assert_eq!(
        (left.sid.as_str(), left.state),
        (b.as_str(), ParticipantState::Left)
    );
    assert_eq!(left.reason, Some(LeftReason::Left));
    assert_eq!(left.message.as_deref(), Some("bye"));
    assert!(left.tracks.is_empty());
    assert_eq!(sim.presence.last(), Some(&(2, false)));
    assert!(
        sim.take(2).is_empty(),
        "a participant that left hears nothing more"
    );
    assert_eq!(sim.publish(2, "mic"), Err(Error::NotJoined));
    assert_eq!(sim.meeting.leave(2, None), Ok(()), "leaving again is fine");
    assert!(matches!(
        sim.meeting.leave(1, Some("x".repeat(201))),
        Err(Error::Invalid(_))
    ));
    sim.meeting.leave(1, None).unwrap();
    sim.drain();
    assert!(sim.meeting.is_empty());
}

#[test]
fn a_closed_connection_is_reconnecting_then_gone_after_the_grace() {
    let mut sim = Sim::default();
    sim.join(1, "alice");
    let b = sim.join(2, "bob");
    sim.publish(2, "mic").unwrap();
    sim.take(1);
    sim.meeting.handle_disconnect(2, sim.now);
    sim.drain();
    let changes = sim.changes(1);
    assert_eq!(changes[0].state, ParticipantState::Reconnecting);
    assert_eq!(
        changes[0].tracks.len(),
        1,
        "tracks stay listed while reconnecting"
    );
    assert_eq!(sim.meeting.poll_timeout(), Some(sim.now + 10_000));
    assert!(
        !sim.presence.contains(&(2, false)),
        "a closed connection is not told"
    );
    // Signals to it are refused meanwhile.
    assert!(matches!(
        sim.offer(1, &b, &sdp("sendrecv", false)),
        Err(Error::NotFound(_))
    ));
    sim.advance(9_999);
    assert!(sim.take(1).is_empty());
    assert_eq!(sim.meeting.len(), 2);
    sim.advance(1);
    let changes = sim.changes(1);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].state, ParticipantState::Left);
    assert_eq!(changes[0].reason, Some(LeftReason::Disconnected));
    assert_eq!(sim.meeting.len(), 1);
    assert_eq!(sim.meeting.poll_timeout(), None);
    // Too late to resume: a new participant.
    let again = sim.join_as(3, "bob", ALL, Some(&b)).unwrap();
    assert_ne!(again.participant.sid, b);
    assert!(again.participant.tracks.is_empty());
}

#[test]
fn without_grace_a_closed_connection_leaves_at_once() {
    let mut sim = Sim::new(Config {
        grace_ms: 0,
        max_participants: 50,
        sfu_participants: 0,
    });
    sim.join(1, "alice");
    sim.join(2, "bob");
    sim.take(1);
    sim.meeting.handle_disconnect(2, sim.now);
    sim.drain();
    assert_eq!(sim.changes(1)[0].reason, Some(LeftReason::Disconnected));
    assert_eq!(sim.meeting.len(), 1);
}

#[test]
fn resuming_within_the_grace_keeps_sid_and_tracks() {
    let mut sim = Sim::default();
    let a = sim.join(1, "alice");
    let b = sim.join(2, "bob");
    let track = sim.publish(2, "mic").unwrap();
    sim.meeting.handle_disconnect(2, sim.now);
    sim.drain();
    sim.advance(5_000);
    sim.take(1);
    let v = sim.meeting.version();
    let back = sim.join_as(3, "bob", ALL, Some(&b)).unwrap();
    assert_eq!(back.participant.sid, b);
    assert_eq!(back.participant.state, ParticipantState::Active);
    assert_eq!(back.participant.tracks[0].sid, track);
    assert_eq!(back.version, v + 1);
    assert_eq!(back.participants[0].sid, a);
    assert_eq!(sim.changes(1)[0].state, ParticipantState::Active);
    assert_eq!(sim.presence.last(), Some(&(3, true)));
    assert_eq!(sim.meeting.poll_timeout(), None, "the grace timer is gone");
    sim.advance(60_000);
    assert_eq!(sim.meeting.len(), 2);
    // Signals reach the new connection.
    sim.take(3);
    sim.offer(1, &b, &sdp("sendrecv", false)).unwrap();
    assert!(matches!(sim.take(3)[..], [MeetingFrame::Signal { .. }]));
}

#[test]
fn only_the_same_user_resumes() {
    let mut sim = Sim::default();
    let a = sim.join(1, "alice");
    sim.meeting.handle_disconnect(1, sim.now);
    sim.drain();
    let eve = sim.join_as(2, "eve", ALL, Some(&a)).unwrap();
    assert_ne!(eve.participant.sid, a);
    assert_eq!(eve.participants[0].state, ParticipantState::Reconnecting);
    // The same user id of another organisation is someone else.
    let joiner = Joiner {
        user: "alice".into(),
        org: "evilcorp".into(),
        name: None,
        default_name: "alice".into(),
        grants: ALL,
    };
    let other = sim.meeting.join(3, joiner, Some(&a), sim.now).unwrap();
    assert_ne!(other.participant.sid, a);
    assert_eq!(sim.meeting.len(), 3);
}

#[test]
fn resuming_from_another_live_connection_replaces_it() {
    let mut sim = Sim::default();
    let a = sim.join(1, "alice");
    let b = sim.join(2, "bob");
    sim.take(2);
    let back = sim.join_as(3, "bob", ALL, Some(&b)).unwrap();
    assert_eq!(back.participant.sid, b);
    let old = sim.take(2);
    assert_eq!(
        old,
        vec![MeetingFrame::Left {
            space: "_acme".into(),
            room: "standup".into(),
            reason: LeftReason::Replaced,
            by: None
        }]
    );
    assert!(sim.presence.ends_with(&[(2, false), (3, true)]));
    assert_eq!(sim.meeting.sid_of(2), None);
    assert_eq!(sim.meeting.sid_of(3), Some(b.as_str()));
    assert_eq!(sim.meeting.len(), 2);
    sim.take(3);
    sim.offer(1, &b, &sdp("sendrecv", false)).unwrap();
    assert!(sim.take(2).is_empty());
    assert_eq!(sim.take(3).len(), 1);
    // The old connection closing later changes nothing.
    sim.meeting.handle_disconnect(2, sim.now);
    sim.drain();
    assert_eq!(
        sim.meeting.participant(&b).unwrap().state,
        ParticipantState::Active
    );
    let _ = a;
}

#[test]
fn joining_again_on_a_connection_replaces_its_participant() {
    let mut sim = Sim::default();
    sim.join(1, "alice");
    let b1 = sim.join(2, "bob");
    sim.take(1);
    let b2 = sim.join(2, "bob");
    assert_ne!(b1, b2);
    let changes = sim.changes(1);
    let old = changes.iter().find(|p| p.sid == b1).unwrap();
    assert_eq!(old.reason, Some(LeftReason::Replaced));
    assert!(
        changes
            .iter()
            .any(|p| p.sid == b2 && p.state == ParticipantState::Active)
    );
    assert_eq!(sim.meeting.len(), 2);
    assert_eq!(
        sim.presence,
        vec![(1, true), (2, true)],
        "still in the meeting"
    );
}

#[test]
fn publish_needs_the_publish_grant() {
    let mut sim = Sim::default();
    sim.join_as(1, "viewer", VIEWER, None).unwrap();
    assert!(matches!(sim.publish(1, "mic"), Err(Error::Forbidden(_))));
    assert!(matches!(
        sim.meeting.unpublish(1, "t-x"),
        Err(Error::Forbidden(_))
    ));
    sim.join(2, "alice");
    let t = sim.publish(2, "mic").unwrap();
    assert!(matches!(
        sim.meeting.unpublish(2, "t-nope"),
        Err(Error::NotFound(_))
    ));
    sim.meeting.unpublish(2, &t).unwrap();
    assert!(
        sim.meeting
            .participant(sim.meeting.sid_of(2).unwrap())
            .unwrap()
            .tracks
            .is_empty()
    );
    assert_eq!(sim.publish(9, "mic"), Err(Error::NotJoined));
}

#[test]
fn data_needs_the_data_grant_and_goes_to_the_named_or_all_others() {
    let mut sim = Sim::default();
    let v = sim
        .join_as(1, "viewer", VIEWER, None)
        .unwrap()
        .participant
        .sid;
    let a = sim.join(2, "alice");
    let b = sim.join(3, "bob");
    for c in 1..=3 {
        sim.take(c);
    }
    assert!(matches!(
        sim.meeting.data(1, "hi".into(), None, None),
        Err(Error::Forbidden(_))
    ));
    sim.meeting
        .data(2, "hi".into(), Some("chat".into()), None)
        .unwrap();
    sim.drain();
    let want = MeetingFrame::Data {
        space: "_acme".into(),
        room: "standup".into(),
        from: a.clone(),
        payload: "hi".into(),
        topic: Some("chat".into()),
    };
    assert_eq!(sim.take(1), vec![want.clone()]);
    assert_eq!(sim.take(3), vec![want]);
    assert!(sim.take(2).is_empty(), "not to the sender");
    sim.meeting
        .data(2, "psst".into(), None, Some(vec![b.clone()]))
        .unwrap();
    sim.drain();
    assert!(sim.take(1).is_empty());
    assert_eq!(sim.take(3).len(), 1);
    for bad in [vec!["p-nope".to_string()], vec![a.clone()]] {
        assert!(matches!(
            sim.meeting.data(2, "x".into(), None, Some(bad)),
            Err(Error::NotFound(_))
        ));
    }
    let big = "x".repeat(crate::MAX_PAYLOAD_BYTES + 1);
    assert!(matches!(
        sim.meeting.data(2, big, None, None),
        Err(Error::Invalid(_))
    ));
    let topic = Some("t".repeat(65));
    assert!(matches!(
        sim.meeting.data(2, "x".into(), topic, None),
        Err(Error::Invalid(_))
    ));
    let many = vec![v; 51];
    assert!(matches!(
        sim.meeting.data(2, "x".into(), None, Some(many)),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn signals_go_only_to_the_named_participant() {
    let mut sim = Sim::default();
    let a = sim.join(1, "alice");
    let b = sim.join(2, "bob");
    sim.join(3, "carol");
    for c in 1..=3 {
        sim.take(c);
    }
    let offer = sdp("sendrecv", true);
    sim.offer(1, &b, &offer).unwrap();
    assert_eq!(
        sim.take(2),
        vec![MeetingFrame::Signal {
            space: "_acme".into(),
            room: "standup".into(),
            from: a.clone(),
            kind: SignalKind::Offer,
            sdp: Some(offer.clone()),
            candidate: None,
        }]
    );
    assert!(sim.take(1).is_empty() && sim.take(3).is_empty());
    let c = Candidate {
        candidate: "candidate:1 1 udp 2122260223 192.168.1.4 50123 typ host".into(),
        sdp_mid: Some("0".into()),
        sdp_mline_index: Some(0),
        username_fragment: None,
    };
    sim.meeting
        .signal(2, &a, SignalKind::Candidate, None, Some(c.clone()))
        .unwrap();
    sim.meeting
        .signal(2, &a, SignalKind::Candidate, None, None)
        .unwrap();
    sim.drain();
    let got = sim.take(1);
    assert!(
        matches!(&got[0], MeetingFrame::Signal { candidate: Some(Some(x)), from, .. } if *x == c && *from == b)
    );
    assert!(matches!(
        &got[1],
        MeetingFrame::Signal {
            candidate: Some(None),
            sdp: None,
            ..
        }
    ));
    assert!(sim.take(3).is_empty());
    // Errors.
    assert!(
        matches!(sim.offer(1, &a, &offer), Err(Error::NotFound(_))),
        "not to oneself"
    );
    assert!(matches!(
        sim.offer(1, "p-t-99", &offer),
        Err(Error::NotFound(_))
    ));
    assert_eq!(sim.offer(9, &b, &offer), Err(Error::NotJoined));
    let no_sdp = sim.meeting.signal(1, &b, SignalKind::Answer, None, None);
    assert!(matches!(no_sdp, Err(Error::Invalid(_))));
    let huge = offer.clone() + &"a=x\r\n".repeat(crate::MAX_SDP_BYTES / 5);
    assert!(matches!(sim.offer(1, &b, &huge), Err(Error::Invalid(_))));
    assert!(matches!(
        sim.offer(1, &b, "not sdp"),
        Err(Error::Invalid(_))
    ));
    let long = Candidate {
        candidate: "c".repeat(crate::MAX_CANDIDATE_BYTES + 1),
        ..c
    };
    let r = sim
        .meeting
        .signal(1, &b, SignalKind::Candidate, None, Some(long));
    assert!(matches!(r, Err(Error::Invalid(_))));
    sim.drain();
    assert!(sim.take(2).is_empty(), "nothing refused is relayed");
}

#[test]
fn sdp_directions_must_fit_the_senders_grants() {
    let mut sim = Sim::default();
    let a = sim.join(1, "alice");
    let v = sim
        .join_as(2, "viewer", VIEWER, None)
        .unwrap()
        .participant
        .sid;
    let speaker = Grants {
        subscribe: false,
        ..ALL
    };
    let s = sim
        .join_as(3, "speaker", speaker, None)
        .unwrap()
        .participant
        .sid;
    for c in 1..=3 {
        sim.take(c);
    }
    // A viewer only receives, and opens no data channel.
    assert!(matches!(
        sim.offer(2, &a, &sdp("sendrecv", false)),
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        sim.offer(2, &a, &sdp("sendonly", false)),
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        sim.offer(2, &a, &sdp("recvonly", true)),
        Err(Error::Forbidden(_))
    ));
    assert!(sim.take(1).is_empty(), "refused SDP is not relayed");
    sim.offer(2, &a, &sdp("recvonly", false)).unwrap();
    let answer = sim.meeting.signal(
        2,
        &a,
        SignalKind::Answer,
        Some(sdp("inactive", false)),
        None,
    );
    assert_eq!(answer, Ok(()));
    sim.drain();
    assert_eq!(sim.take(1).len(), 2);
    // A speaker without subscribe only sends.
    assert!(matches!(
        sim.offer(3, &a, &sdp("recvonly", true)),
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        sim.offer(3, &a, &sdp("sendrecv", true)),
        Err(Error::Forbidden(_))
    ));
    sim.offer(3, &a, &sdp("sendonly", true)).unwrap();
    // Full grants send anything.
    sim.offer(1, &v, &sdp("sendrecv", true)).unwrap();
    sim.offer(1, &s, &sdp("sendrecv", true)).unwrap();
}

#[test]
fn admins_mute_others_and_remove_participants() {
    let mut sim = Sim::default();
    let boss = sim.join_as(1, "boss", ADMIN, None).unwrap().participant.sid;
    let b = sim.join(2, "bob");
    let c = sim.join(3, "carol");
    let track = sim.publish(2, "mic").unwrap();
    for conn in 1..=3 {
        sim.take(conn);
    }
    // Not an admin: no muting or removing others.
    assert!(matches!(
        sim.meeting.mute(3, &track, true, Some(&b)),
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        sim.meeting.remove(3, &b),
        Err(Error::Forbidden(_))
    ));
    // An admin mutes, but does not unmute.
    assert!(matches!(
        sim.meeting.mute(1, &track, false, Some(&b)),
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        sim.meeting.mute(1, "t-nope", true, Some(&b)),
        Err(Error::NotFound(_))
    ));
    let muted = sim.meeting.mute(1, &track, true, Some(&b)).unwrap();
    assert!(muted.muted);
    sim.drain();
    let to_bob = sim.take(2);
    assert!(to_bob.contains(&MeetingFrame::Muted {
        space: "_acme".into(),
        room: "standup".into(),
        track: track.clone(),
        muted: true,
        by: boss.clone(),
    }));
    assert!(sim.changes(3)[0].tracks[0].muted);
    // Bob unmutes his own track.
    assert!(!sim.meeting.mute(2, &track, false, None).unwrap().muted);
    // Removing.
    assert!(matches!(
        sim.meeting.remove(1, "p-nope"),
        Err(Error::NotFound(_))
    ));
    sim.meeting.remove(1, &b).unwrap();
    sim.drain();
    let to_bob = sim.take(2);
    assert_eq!(
        to_bob.last(),
        Some(&MeetingFrame::Left {
            space: "_acme".into(),
            room: "standup".into(),
            reason: LeftReason::Removed,
            by: Some(boss.clone()),
        })
    );
    assert_eq!(sim.presence.last(), Some(&(2, false)));
    let seen = sim.changes(3);
    let gone = seen.iter().find(|p| p.sid == b).unwrap();
    assert_eq!(gone.reason, Some(LeftReason::Removed));
    assert_eq!(sim.publish(2, "mic"), Err(Error::NotJoined));
    // A reconnecting participant can be removed too.
    sim.meeting.handle_disconnect(3, sim.now);
    sim.meeting.remove(1, &c).unwrap();
    sim.drain();
    assert_eq!(sim.meeting.len(), 1);
    assert!(sim.take(3).is_empty());
}

#[test]
fn losing_access_ends_participation() {
    let mut sim = Sim::default();
    sim.join(1, "alice");
    let b = sim.join(2, "bob");
    sim.take(1);
    sim.take(2);
    sim.meeting.revoke(2);
    sim.drain();
    assert!(matches!(
        sim.take(2)[..],
        [MeetingFrame::Left {
            reason: LeftReason::Access,
            by: None,
            ..
        }]
    ));
    let changes = sim.changes(1);
    assert_eq!(
        (changes[0].sid.as_str(), changes[0].reason),
        (b.as_str(), Some(LeftReason::Access))
    );
    assert_eq!(sim.presence.last(), Some(&(2, false)));
}

#[test]
fn limits() {
    let mut sim = Sim::new(Config {
        grace_ms: 1_000,
        max_participants: 2,
        sfu_participants: 0,
    });
    let a = sim.join(1, "alice");
    sim.join(2, "bob");
    assert!(matches!(
        sim.join_as(3, "carol", ALL, None),
        Err(Error::LimitExceeded(_))
    ));
    // Joining again on a connection of the meeting, or resuming, takes no new place.
    sim.join(2, "bob");
    sim.meeting.handle_disconnect(1, sim.now);
    assert_eq!(
        sim.join_as(4, "alice", ALL, Some(&a))
            .unwrap()
            .participant
            .sid,
        a
    );
    assert_eq!(sim.meeting.len(), 2);
    // Tracks.
    for i in 0..MAX_TRACKS {
        sim.publish(4, &format!("cid{i}")).unwrap();
    }
    assert!(matches!(
        sim.publish(4, "one-more"),
        Err(Error::LimitExceeded(_))
    ));
    let again = sim.publish(4, "cid0").unwrap();
    assert_eq!(
        sim.meeting.participant(&a).unwrap().tracks[0].sid,
        again,
        "updated in place"
    );
    assert!(matches!(sim.publish(4, ""), Err(Error::Invalid(_))));
    assert!(matches!(
        sim.publish(4, &"é".repeat(65)),
        Err(Error::Invalid(_))
    ));
    // Names.
    let named = |name: &str| Joiner {
        user: "dave".into(),
        org: "acme".into(),
        name: Some(name.into()),
        default_name: "dave".into(),
        grants: ALL,
    };
    for bad in ["", &"n".repeat(65)] {
        assert!(matches!(
            sim.meeting.join(2, named(bad), None, sim.now),
            Err(Error::Invalid(_))
        ));
    }
    let ok = sim
        .meeting
        .join(2, named(&"ü".repeat(64)), None, sim.now)
        .unwrap();
    assert_eq!(ok.participant.name.chars().count(), 64);
    let long_default = Joiner {
        name: None,
        default_name: "x".repeat(100),
        ..named("x")
    };
    let cut = sim.meeting.join(2, long_default, None, sim.now).unwrap();
    assert_eq!(cut.participant.name, "x".repeat(64));
}

#[test]
fn changes_precede_the_signals_that_follow_them() {
    let mut sim = Sim::default();
    let a = sim.join(1, "alice");
    sim.take(1);
    // Bob joins and at once offers; the shell drains only after both.
    let joiner = Joiner {
        user: "bob".into(),
        org: "acme".into(),
        name: None,
        default_name: "bob".into(),
        grants: ALL,
    };
    let b = sim
        .meeting
        .join(2, joiner, None, sim.now)
        .unwrap()
        .participant
        .sid;
    sim.meeting
        .signal(2, &a, SignalKind::Offer, Some(sdp("sendrecv", false)), None)
        .unwrap();
    sim.drain();
    let frames = sim.take(1);
    assert!(
        matches!(&frames[0], MeetingFrame::Participants { participants, .. } if participants[0].sid == b)
    );
    assert!(matches!(&frames[1], MeetingFrame::Signal { from, .. } if *from == b));
}

#[test]
fn a_meeting_is_empty_once_everyone_is_gone() {
    let mut sim = Sim::default();
    sim.join(1, "alice");
    sim.join(2, "bob");
    sim.meeting.leave(1, None).unwrap();
    sim.meeting.handle_disconnect(2, sim.now);
    sim.drain();
    assert!(!sim.meeting.is_empty(), "bob may still come back");
    sim.advance(10_000);
    assert!(sim.meeting.is_empty());
}

/// A media room as the server makes it.
fn room() -> crate::sfu::Room {
    crate::sfu::Room::new(
        crate::sfu::RoomConfig {
            candidates: vec!["127.0.0.1:7702".parse().unwrap()],
            ..Default::default()
        },
        std::time::Instant::now(),
    )
}

fn sfu() -> Sim {
    let mut sim = Sim::default();
    sim.meeting = Meeting::new("_acme", "standup", "t", Config::default()).with_sfu(room());
    sim
}

/// A mesh meeting that turns into SFU mode at its third participant.
fn switching() -> Sim {
    Sim::new(Config {
        sfu_participants: 3,
        ..Config::default()
    })
}

/// The `meeting.mode` frames among `frames`.
fn modes(frames: &[MeetingFrame]) -> Vec<MeetingMode> {
    (frames.iter())
        .filter_map(|f| match f {
            MeetingFrame::Mode { mode, .. } => Some(*mode),
            _ => None,
        })
        .collect()
}

/// The offers in `frames`, as (sdp, [(track, publisher)]).
fn offers(frames: &[MeetingFrame]) -> Vec<(String, Vec<(String, String)>)> {
    frames
        .iter()
        .filter_map(|f| match f {
            MeetingFrame::Offer { sdp, media, .. } => Some((
                sdp.clone(),
                (media.iter())
                    .map(|l| (l.track.clone(), l.participant.clone()))
                    .collect(),
            )),
            _ => None,
        })
        .collect()
}

/// The answer of a new str0m client to `offer`.
fn client_answer(offer: &str) -> String {
    let mut client = str0m::Rtc::new(std::time::Instant::now());
    let offer = str0m::change::SdpOffer::from_sdp_string(offer).unwrap();
    let answer = client.sdp_api().accept_offer(offer).unwrap();
    answer.to_sdp_string()
}

#[test]
fn sfu_meetings_offer_every_track_to_every_subscriber() {
    let mut sim = sfu();
    let alice = sim.join_as(1, "alice", ALL, None).unwrap();
    assert_eq!(alice.mode, MeetingMode::Sfu);
    let alice = alice.participant.sid;
    // The first offer opens the session (a data channel, no media yet).
    let first = offers(&sim.take(1));
    assert_eq!(first.len(), 1);
    assert!(first[0].0.contains("m=application"), "{}", first[0].0);
    assert!(first[0].0.contains("a=candidate") && first[0].0.contains("127.0.0.1 7702"));
    assert!(first[0].1.is_empty());
    assert_eq!(sim.routes.len(), 1);
    assert!(sim.routes[0].1);

    // Alice answers it, as a client would.
    let answer = client_answer(&first[0].0);
    sim.meeting.answer(1, &answer).unwrap();
    // Nothing waits for an answer now.
    assert!(matches!(
        sim.meeting.answer(1, &answer),
        Err(Error::Invalid(_))
    ));

    // Her track gets a line she sends on; a viewer joining gets a line to receive it.
    let track = sim
        .meeting
        .publish(1, "cam", TrackKind::Video, TrackSource::Camera, false)
        .unwrap()
        .sid;
    sim.drain();
    let frames = sim.take(1);
    assert!(matches!(frames[0], MeetingFrame::Participants { .. }));
    let offered = offers(&frames);
    assert_eq!(offered[0].1, [(track.clone(), alice.clone())]);
    assert!(offered[0].0.contains("a=recvonly"));
    sim.join_as(2, "viewer", VIEWER, None).unwrap();
    let offered = offers(&sim.take(2));
    assert_eq!(offered[0].1, [(track.clone(), alice.clone())]);
    assert!(offered[0].0.contains("a=sendonly"));
    // The viewer answers it, data channel included, without the data grant: the channel is
    // the server's.
    let answer = client_answer(&offered[0].0);
    assert!(answer.contains("m=application") && answer.contains("a=recvonly"));
    sim.meeting.answer(2, &answer).unwrap();

    // Peer-to-peer signals have no place here.
    let e = sim
        .meeting
        .signal(2, &alice, SignalKind::Offer, Some("v=0".into()), None);
    assert!(matches!(e, Err(Error::Invalid(_))));
    // A viewer may not answer with a line it sends on.
    let sending = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n";
    assert!(matches!(
        sim.meeting.answer(2, sending),
        Err(Error::Forbidden(_))
    ));

    // Unpublishing stops both lines; leaving closes the route.
    sim.meeting.unpublish(1, &track).unwrap();
    sim.drain();
    assert!(
        offers(&sim.take(1)).is_empty(),
        "alice's last offer is not answered yet"
    );
    let stopped = offers(&sim.take(2));
    assert!(
        stopped[0].1.is_empty(),
        "the viewer's line of the track stops"
    );
    assert!(stopped[0].0.contains("m=video 0 "), "{}", stopped[0].0);
    sim.meeting.leave(2, None).unwrap();
    sim.drain();
    assert_eq!(sim.routes.iter().filter(|(_, open)| !open).count(), 1);
    sim.meeting.leave(1, None).unwrap();
    sim.drain();
    assert_eq!(sim.routes.iter().filter(|(_, open)| !open).count(), 2);
    assert!(sim.meeting.is_empty());
}

#[test]
fn mesh_meetings_make_no_offers() {
    let mut sim = Sim::default();
    let reply = sim.join_as(1, "alice", ALL, None).unwrap();
    assert_eq!(reply.mode, MeetingMode::Mesh);
    assert!(matches!(
        sim.meeting.answer(1, "v=0"),
        Err(Error::Invalid(_))
    ));
    sim.meeting
        .publish(1, "cam", TrackKind::Video, TrackSource::Camera, false)
        .unwrap();
    sim.drain();
    assert!(offers(&sim.take(1)).is_empty());
    assert!(sim.routes.is_empty());
}

#[test]
fn resuming_in_an_sfu_meeting_starts_a_new_session_with_the_same_tracks() {
    let mut sim = sfu();
    let alice = sim.join(1, "alice");
    let track = (sim.meeting)
        .publish(1, "cam", TrackKind::Video, TrackSource::Camera, false)
        .unwrap()
        .sid;
    sim.join(2, "bob");
    sim.drain();
    let offered = offers(&sim.take(2));
    assert_eq!(offered.len(), 1);
    sim.meeting
        .answer(2, &client_answer(&offered[0].0))
        .unwrap();
    let first_ufrag = sim.routes[0].0.clone();

    sim.meeting.handle_disconnect(1, sim.now);
    sim.join_as(3, "alice", ALL, Some(&alice)).unwrap();
    sim.drain();
    // Alice's old session is gone, a new one is offered with her track to send...
    assert!(sim.routes.contains(&(first_ufrag, false)));
    let resumed = offers(&sim.take(3));
    assert_eq!(resumed[0].1, [(track.clone(), alice.clone())]);
    // ...and bob receives it again, on a new line.
    let again = offers(&sim.take(2));
    assert_eq!(again.last().unwrap().1, [(track, alice)]);
}

#[test]
fn sfu_publishers_are_asked_for_simulcast_and_layouts_are_checked() {
    let mut sim = sfu();
    sim.join(1, "alice");
    let first = offers(&sim.take(1));
    // A str0m client (as a browser would) takes the simulcast layers it is asked for.
    let mut alice = str0m::Rtc::new(std::time::Instant::now());
    let mut answer_of = |sdp: &str| {
        let offer = str0m::change::SdpOffer::from_sdp_string(sdp).unwrap();
        alice.sdp_api().accept_offer(offer).unwrap().to_sdp_string()
    };
    sim.meeting.answer(1, &answer_of(&first[0].0)).unwrap();
    // A screen share is sent as it is; the camera in layers.
    (sim.meeting)
        .publish(
            1,
            "screen",
            TrackKind::Video,
            TrackSource::ScreenShare,
            false,
        )
        .unwrap();
    sim.drain();
    let offered = offers(&sim.take(1));
    assert!(!offered[0].0.contains("a=simulcast"), "{}", offered[0].0);
    sim.meeting.answer(1, &answer_of(&offered[0].0)).unwrap();
    let track = (sim.meeting)
        .publish(1, "cam", TrackKind::Video, TrackSource::Camera, false)
        .unwrap()
        .sid;
    sim.meeting.simulcast(1, &track).unwrap();
    assert!(matches!(
        sim.meeting.simulcast(1, "t-none"),
        Err(Error::NotFound(_))
    ));
    sim.drain();
    let offered = offers(&sim.take(1));
    // The publisher's video line asks for three simulcast layers, low to high.
    assert!(
        offered[0].0.contains("a=simulcast:recv q;h;f"),
        "{}",
        offered[0].0
    );
    let answer = answer_of(&offered[0].0);
    assert!(answer.contains("a=simulcast:send q;h;f"), "{answer}");
    sim.meeting.answer(1, &answer).unwrap();
    sim.join_as(2, "viewer", VIEWER, None).unwrap();
    let offered = offers(&sim.take(2));
    sim.meeting
        .answer(2, &client_answer(&offered[0].0))
        .unwrap();
    sim.drain();
    sim.take(1);

    // The server's room picks the layer (sfu::tests cover the layers and their pausing).
    sim.meeting.layout(2, &track, 160, 90).unwrap();
    // Layouts are bounded, for tracks the participant receives, and need the subscribe grant.
    assert!(matches!(
        sim.meeting.layout(2, &track, 20_000, 10),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        sim.meeting.layout(2, "t-none", 10, 10),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        sim.meeting.layout(1, &track, 10, 10),
        Err(Error::NotFound(_))
    ));
    let publisher_only = Grants {
        subscribe: false,
        ..ALL
    };
    sim.join_as(3, "camera", publisher_only, None).unwrap();
    assert!(matches!(
        sim.meeting.layout(3, &track, 10, 10),
        Err(Error::Forbidden(_))
    ));
    let mut mesh = Sim::default();
    mesh.join(1, "alice");
    assert!(matches!(
        mesh.meeting.layout(1, &track, 10, 10),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn a_join_that_reaches_the_threshold_switches_the_meeting_to_sfu() {
    let mut sim = switching();
    let alice = sim.join(1, "alice");
    let camera = (sim.meeting)
        .publish(1, "cam", TrackKind::Video, TrackSource::Camera, false)
        .unwrap()
        .sid;
    sim.meeting.simulcast(1, &camera).unwrap();
    let bob = sim.join(2, "bob");
    let mic = sim.publish(2, "mic").unwrap();
    sim.offer(1, &bob, &sdp("sendrecv", false)).unwrap();
    assert_eq!((sim.switches, sim.meeting.mode()), (0, MeetingMode::Mesh));
    assert!(sim.routes.is_empty());
    sim.take(1);
    sim.take(2);

    let carol = sim.join_as(3, "carol", ALL, None).unwrap();
    // The reply was made before the switch; the frames after it tell.
    assert_eq!(carol.mode, MeetingMode::Mesh);
    assert_eq!((sim.switches, sim.meeting.mode()), (1, MeetingMode::Sfu));
    assert_eq!(sim.routes.len(), 3, "a session for each participant");
    for conn in [1, 2, 3] {
        let frames = sim.take(conn);
        // Carol's arrival first, then the mode, then the server's offer.
        assert!(
            matches!(frames[0], MeetingFrame::Participants { .. }),
            "{frames:?}"
        );
        assert_eq!(modes(&frames), [MeetingMode::Sfu]);
        assert!(matches!(frames[1], MeetingFrame::Mode { .. }));
        let offered = offers(&frames[2..]);
        assert_eq!(offered.len(), 1, "{conn}: {frames:?}");
        // Everyone's session carries both tracks: its own to send, the others' to receive.
        let mut lines = offered[0].1.clone();
        lines.sort();
        let mut expected = vec![(camera.clone(), alice.clone()), (mic.clone(), bob.clone())];
        expected.sort();
        // Alice sends her camera in the layers she published it with.
        assert_eq!(offered[0].0.contains("a=simulcast:recv q;h;f"), conn == 1);
        assert_eq!(lines, expected, "{conn}");
    }
    // Peer-to-peer signalling is over; answers go to the server.
    let e = (sim.meeting).signal(
        1,
        &bob,
        SignalKind::Offer,
        Some(sdp("sendrecv", false)),
        None,
    );
    assert!(matches!(e, Err(Error::Invalid(_))));
}

#[test]
fn no_switch_below_the_threshold_and_none_back() {
    let mut sim = switching();
    sim.join(1, "alice");
    sim.join(2, "bob");
    // Leaving and joining again never reaches three at once.
    sim.meeting.leave(2, None).unwrap();
    sim.join(3, "bob");
    sim.drain();
    assert_eq!((sim.switches, sim.meeting.mode()), (0, MeetingMode::Mesh));
    for conn in [1, 3] {
        assert!(modes(&sim.take(conn)).is_empty());
    }
    sim.join(4, "carol");
    assert_eq!((sim.switches, sim.meeting.mode()), (1, MeetingMode::Sfu));
    // Back to one participant, or the threshold lifted: the meeting stays in SFU mode.
    sim.meeting.leave(3, None).unwrap();
    sim.meeting.leave(4, None).unwrap();
    sim.meeting.set_sfu_participants(0);
    sim.join(5, "dave");
    sim.drain();
    assert_eq!((sim.switches, sim.meeting.mode()), (1, MeetingMode::Sfu));
    assert!(modes(&sim.take(1)).iter().all(|m| *m == MeetingMode::Sfu));
    assert!(modes(&sim.take(5)).is_empty());
    let again = sim.meeting.switch_to_sfu(room());
    assert!(matches!(again, Err(Error::Invalid(_))));
}

#[test]
fn a_threshold_set_live_switches_at_once_and_none_never_switches() {
    let mut sim = Sim::default();
    sim.join(1, "alice");
    sim.join(2, "bob");
    // No threshold: a crowd stays peer to peer.
    for conn in 3..8 {
        sim.join(conn, &format!("user{conn}"));
    }
    assert_eq!((sim.switches, sim.meeting.mode()), (0, MeetingMode::Mesh));
    // A room set to SFU mode: the meeting switches at once.
    sim.meeting.set_sfu_participants(1);
    sim.drain();
    assert_eq!((sim.switches, sim.meeting.mode()), (1, MeetingMode::Sfu));
    for conn in 1..8 {
        assert_eq!(modes(&sim.take(conn)), [MeetingMode::Sfu]);
    }
}

#[test]
fn without_an_sfu_the_meeting_stays_mesh_and_asks_once() {
    let mut sim = switching();
    sim.sfu_runs = false;
    for conn in 1..6 {
        sim.join(conn, &format!("user{conn}"));
    }
    assert_eq!((sim.switches, sim.meeting.mode()), (1, MeetingMode::Mesh));
    assert!(modes(&sim.take(1)).is_empty());
}
