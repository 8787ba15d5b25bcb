//! WebRTC peers of the load tool (`chorus::bench::rtc_peer`, webrtc-rs) in real meetings: two
//! peers exchange audio and video; grants shape who sends what, in a mesh and through the SFU;
//! the `chorus bench meeting` scenario end to end; and a Rust peer meets the meeting page in
//! headless Chromium.

use crate::meet_browser::{BROWSER, CHROMIUM, require_browser, spawn_node, unique_room};
use crate::util::{TestServer, Tr};
use chorus::access::Grant;
use chorus::bench::rtc_peer::{MeetingPeer, PeerConfig, PeerReport};
use chorus::bench::target::Target;
use chorus::bench::{BenchArgs, Scenario};
use clap::Parser;
use signaling::wire::{MeetingMode, TrackKind};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// A bound on waiting for media, far above what it needs: a failure bound, never a speed goal.
const PATIENCE: Duration = Duration::from_secs(60);

/// `chorus bench meeting` options pointed at `s` (tokens minted from its secret), plus `extra`.
fn bench_meeting(s: &TestServer, tr: Tr, extra: &[&str]) -> Scenario {
    let mut argv: Vec<String> = ["bench", "meeting", "--json", "--data-dir"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    argv.push(s.shared.config.data_dir.display().to_string());
    match tr {
        Tr::Ws => argv.extend(["--url".into(), s.ws_url()]),
        Tr::Quic => argv.extend(["--quic".into(), s.quic.to_string()]),
    }
    argv.extend(extra.iter().map(|a| a.to_string()));
    BenchArgs::try_parse_from(argv).unwrap().scenario
}

/// A peer of `token`'s user in `room` (its organisation's home space), over `tr`, in a mesh.
async fn join(s: &TestServer, tr: Tr, token: &str, room: &str) -> MeetingPeer {
    join_in(s, tr, token, room, MeetingMode::Mesh).await
}

/// A peer of `token`'s user in `room`'s meeting in `mode`, over `tr`.
async fn join_in(
    s: &TestServer,
    tr: Tr,
    token: &str,
    room: &str,
    mode: MeetingMode,
) -> MeetingPeer {
    let Scenario::Meeting(args) = bench_meeting(s, tr, &["--token", token]) else {
        unreachable!("parsed as the meeting scenario")
    };
    let target = Target::new(&args.common, 1, None).await.unwrap();
    let conn = target.connect(0).await.unwrap();
    let config = PeerConfig {
        room: room.into(),
        space: None,
        name: None,
        publish: true,
        packet_rate: 50.0,
        video_bytes: 600,
        bind: "127.0.0.1".parse().unwrap(),
        mode,
    };
    MeetingPeer::join(conn, config)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Poll `check` until it gives a value; panic with `what` and the peers' reports after
/// `PATIENCE`.
async fn until<T>(what: &str, peers: &[&MeetingPeer], mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > deadline {
            let reports: Vec<PeerReport> = peers.iter().map(|p| p.report()).collect();
            panic!("timed out waiting for {what}: {reports:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Packets `report`'s peer received from `from`, per kind: (audio, video).
fn packets_from(report: &PeerReport, from: &str) -> (u64, u64) {
    report.from(from).fold((0, 0), |(a, v), t| match t.kind {
        TrackKind::Audio => (a + t.packets, v),
        TrackKind::Video => (a, v + t.packets),
    })
}

/// Whether `a` received at least `n` audio and `n` video packets from `b`.
fn got(a: &MeetingPeer, b: &MeetingPeer, n: u64) -> bool {
    let (audio, video) = packets_from(&a.report(), b.sid());
    audio >= n && video >= n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_exchange_audio_and_video() {
    let s = TestServer::start().await;
    let alice = join(&s, Tr::Ws, &s.token("alice", "acme"), "rtc-pair").await;
    let bob = join(&s, Tr::Quic, &s.token("bob", "acme"), "rtc-pair").await;
    let both = [&alice, &bob];
    until("media both ways", &both, || {
        (got(&alice, &bob, 1) && got(&bob, &alice, 1)).then_some(())
    })
    .await;
    let (a, b) = (alice.report(), bob.report());
    let (a0, b0) = (packets_from(&a, bob.sid()), packets_from(&b, alice.sid()));
    until("the packet counts to grow on both sides", &both, || {
        (got(&alice, &bob, a0.0.min(a0.1) + 50) && got(&bob, &alice, b0.0.min(b0.1) + 50))
            .then_some(())
    })
    .await;

    let a = alice.leave().await;
    let b = bob.leave().await;
    for (me, other) in [(&a, &b), (&b, &a)] {
        assert_eq!(me.published.len(), 2, "{me:#?}");
        // Each remote track is named by the cid its sender published (the SDP's msid).
        let mut cids: Vec<&str> = me.from(&other.sid).map(|t| t.cid.as_str()).collect();
        cids.sort();
        let mut published: Vec<&str> = other.published.iter().map(String::as_str).collect();
        published.sort();
        assert_eq!(cids, published, "{me:#?}");
        for track in me.from(&other.sid) {
            assert_eq!(track.lost, 0, "{track:?}");
            assert!(track.first_packet_ms.is_some());
            if track.kind == TrackKind::Video {
                assert!(track.keyframes >= 1, "{track:?}");
            }
        }
        assert!(me.errors.is_empty(), "{me:#?}");
        assert_eq!(me.ended, None);
        assert!(me.sent_packets > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_decide_who_sends_and_who_receives() {
    let s = TestServer::start().await;
    let room = "rtc-grants";
    let alice = join(&s, Tr::Ws, &s.token("alice", "acme"), room).await;
    let viewer = s.token_with("viewer", "acme", &[Grant::Subscribe], 3600);
    let viewer = join(&s, Tr::Ws, &viewer, room).await;
    let speaker = s.token_with("speaker", "acme", &[Grant::Publish], 3600);
    let speaker = join(&s, Tr::Ws, &speaker, room).await;
    let all = [&alice, &viewer, &speaker];

    // The viewer may not publish: the server refuses its tracks, and it receives.
    until("the viewer's publish to be refused", &all, || {
        (viewer.report().errors.get("publish: forbidden") == Some(&2)).then_some(())
    })
    .await;
    until(
        "the viewer to get alice's and the speaker's media",
        &all,
        || (got(&viewer, &alice, 50) && got(&viewer, &speaker, 50)).then_some(()),
    )
    .await;
    // The speaker may not receive: it sends to alice on the connection that would bring it
    // alice's media, and none comes.
    until("alice to get the speaker's media", &all, || {
        got(&alice, &speaker, 50).then_some(())
    })
    .await;

    let (alice, viewer, speaker) = leave_within_grants(alice, viewer, speaker).await;
    // Every SDP fitted its sender's grants: no signal was refused.
    for r in [&alice, &viewer, &speaker] {
        assert_only_publishes_refused(r);
    }
}

/// The three peers leave; the viewer (subscribe only) sent nothing and the speaker (publish
/// only) received nothing. Their reports.
async fn leave_within_grants(
    alice: MeetingPeer,
    viewer: MeetingPeer,
    speaker: MeetingPeer,
) -> (PeerReport, PeerReport, PeerReport) {
    let alice = alice.leave().await;
    let viewer = viewer.leave().await;
    let speaker = speaker.leave().await;
    assert!(viewer.grants.subscribe && !viewer.grants.publish);
    assert!(speaker.grants.publish && !speaker.grants.subscribe);
    assert!(viewer.published.is_empty(), "{viewer:#?}");
    assert_eq!(viewer.sent_packets, 0);
    assert_eq!(alice.from(&viewer.sid).count(), 0, "{alice:#?}");
    assert!(speaker.remote.is_empty(), "{speaker:#?}");
    (alice, viewer, speaker)
}

/// Nothing but a publish the grants forbid was refused to `r`.
fn assert_only_publishes_refused(r: &PeerReport) {
    let refused: Vec<_> = r
        .errors
        .keys()
        .filter(|e| e.as_str() != "publish: forbidden")
        .collect();
    assert!(refused.is_empty(), "{r:#?}");
}

/// Through the SFU: alice sends and receives, a viewer only receives, a speaker only sends.
/// Every track a participant may receive arrives whole (no loss, a keyframe after the PLI),
/// named by its sender's cid; nothing comes to whom may not receive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sfu_peers_exchange_media_within_their_grants() {
    let s = TestServer::start().await;
    let room = "rtc-sfu";
    let sfu = MeetingMode::Sfu;
    let alice = join_in(&s, Tr::Ws, &s.token("alice", "acme"), room, sfu).await;
    let viewer = s.token_with("viewer", "acme", &[Grant::Subscribe], 3600);
    let viewer = join_in(&s, Tr::Quic, &viewer, room, sfu).await;
    let speaker = s.token_with("speaker", "acme", &[Grant::Publish], 3600);
    let speaker = join_in(&s, Tr::Ws, &speaker, room, sfu).await;
    let all = [&alice, &viewer, &speaker];
    // More than a second of each track at 50 packets/s: video goes out from a keyframe on,
    // and one more keyframe follows the first.
    until("media through the SFU", &all, || {
        (got(&alice, &speaker, 60) && got(&viewer, &alice, 60) && got(&viewer, &speaker, 60))
            .then_some(())
    })
    .await;
    assert!(s.shared.metrics.sfu.forwarded_packets.get() >= 200);

    let (alice, viewer, speaker) = leave_within_grants(alice, viewer, speaker).await;
    for (me, from) in [(&alice, &speaker), (&viewer, &alice), (&viewer, &speaker)] {
        let mut cids: Vec<&str> = me.from(&from.sid).map(|t| t.cid.as_str()).collect();
        cids.sort();
        let mut published: Vec<&str> = from.published.iter().map(String::as_str).collect();
        published.sort();
        assert_eq!(cids, published, "{me:#?}");
        for track in me.from(&from.sid) {
            assert_eq!((track.lost, track.duplicates), (0, 0), "{track:?}");
            if track.kind == TrackKind::Video {
                assert!(track.keyframes >= 1, "{track:?}");
            }
        }
    }
    for r in [&alice, &viewer, &speaker] {
        // Every answer fitted its sender's grants, every line took its local track.
        assert_only_publishes_refused(r);
        assert_eq!(r.ended, None, "{r:#?}");
    }
    assert_eq!(viewer.errors.get("publish: forbidden"), Some(&2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_meeting_scenario_runs() {
    let s = TestServer::with(|c| {
        c.rate_per_sec = 1_000_000;
        c.rate_burst = 1_000_000;
    })
    .await;
    let pid = std::process::id().to_string();
    let scenario = bench_meeting(
        &s,
        Tr::Ws,
        &[
            "-n",
            "3",
            "-d",
            "2",
            "--warmup",
            "0.5",
            "-r",
            "40",
            "--server-pid",
            &pid,
        ],
    );
    let report = scenario.run().await.unwrap_or_else(|e| panic!("{e:#}"));
    let (join, media) = (&report.steps[0], &report.steps[1]);
    assert!(join.pass && media.pass, "{}", report.render());
    assert_eq!(join.latency.as_ref().unwrap().count, 3);
    assert_eq!(join.counter("remote_tracks_receiving"), 12);
    assert_eq!(media.counter("remote_tracks"), 12);
    assert_eq!(media.counter("remote_tracks_receiving"), 12);
    assert_eq!(media.counter("lost"), 0, "{}", report.render());
    assert!(media.counter("packets_received") > 0);
    assert!(media.errors.is_empty(), "{:?}", media.errors);
    // Time to first media: one figure per remote track.
    assert_eq!(media.latency.as_ref().unwrap().count, 12);
    assert!(join.usage.server.is_some() && media.usage.server.is_some());
    let json = serde_json::to_value(&report).unwrap();
    let peers = json["summary"]["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 3);
    for peer in peers {
        assert_eq!(peer["remote_tracks_receiving"], 4, "{json:#}");
        assert!(peer["packets_received"].as_u64().unwrap() > 0, "{json:#}");
        assert_eq!(peer["lost"], 0, "{json:#}");
    }
    assert!(json["summary"]["join_p99_ms"].as_f64().unwrap() > 0.0);
    assert!(json["summary"]["first_media_p50_ms"].is_number());
    assert_eq!(json["summary"]["pass"], true);
}

/// A Rust peer and the meeting page in headless Chromium meet: the peer receives the page's
/// VP8 video (a keyframe after its PLI) and audio; the page's `getStats()` shows the peer's
/// audio and video arriving (`tests/browser/rtc-peer.mjs`).
///
/// The page joins and publishes first, so the Rust peer is the polite side of the pair. The
/// other way round, an offer of the page that collides with the peer's is ignored (the peer is
/// impolite), the page rolls back and answers, and Chromium then does not always offer its own
/// tracks again: about one run in six, no media comes from the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_peer_meets_a_browser() {
    require_browser();
    let _one_at_a_time = BROWSER.lock().await;
    let s = TestServer::start().await;
    let room = unique_room("rtc-peer");
    let (base_url, token) = (format!("http://{}", s.http), s.token("alice", "acme"));
    let env = [
        ("MEET_BASE_URL", base_url.as_str()),
        ("MEET_ROOM", room.as_str()),
        ("MEET_TOKEN_ALICE", token.as_str()),
        ("MEET_TIMEOUT_MS", "30000"),
        ("CHROMIUM", CHROMIUM),
    ];
    let mut node = spawn_node("rtc-peer.mjs", env, Stdio::piped());
    let mut stdin = node.stdin.take().unwrap();
    let mut stdout = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut stderr = node.stderr.take().unwrap();
    let errors = tokio::spawn(async move {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err).await;
        err
    });
    // Everything node printed, for failure messages.
    let output = |out: Vec<String>, errors: tokio::task::JoinHandle<String>| async move {
        let err = errors.await.unwrap();
        format!("--- stdout\n{}\n--- stderr\n{err}", out.join("\n"))
    };

    // The page has joined and published when the script says `ready`.
    let mut out = Vec::new();
    let ready = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            out.push(line);
            if out.last().is_some_and(|l| l == "ready") {
                return true;
            }
        }
        false
    })
    .await;
    if ready != Ok(true) {
        let _ = node.kill().await;
        panic!("the page did not get ready\n{}", output(out, errors).await);
    }
    let peer = join(&s, Tr::Ws, &s.token("bob", "acme"), &room).await;
    stdin
        .write_all(format!("{}\n", peer.sid()).as_bytes())
        .await
        .unwrap();
    let rest = tokio::spawn(async move {
        while let Ok(Some(line)) = stdout.next_line().await {
            out.push(line);
        }
        out
    });

    // The Rust side: the page's video (a keyframe answering the PLI) and audio arrive.
    let deadline = Instant::now() + PATIENCE;
    let page = loop {
        let report = peer.report();
        let video = report
            .remote
            .iter()
            .find(|t| t.kind == TrackKind::Video && t.keyframes > 0);
        if let Some(video) = video
            && report
                .from(&video.participant)
                .any(|t| t.kind == TrackKind::Audio && t.packets >= 20)
        {
            break video.participant.clone();
        }
        let exited = node.try_wait().unwrap();
        if exited.is_some() || Instant::now() > deadline {
            let _ = node.kill().await;
            let out = rest.await.unwrap();
            panic!(
                "the Rust peer got no VP8 keyframe and audio from the page (node: {exited:?}): \
                 {report:#?}\n{}",
                output(out, errors).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Tell the page's script the Rust side is done; it checks its own side and exits.
    stdin.write_all(b"done\n").await.unwrap();
    drop(stdin);
    let status = tokio::time::timeout(PATIENCE, node.wait()).await;
    let output = output(rest.await.unwrap(), errors).await;
    let status = status.unwrap_or_else(|_| panic!("node rtc-peer.mjs did not finish\n{output}"));
    assert!(
        status.unwrap().success(),
        "node rtc-peer.mjs failed\n{output}"
    );
    let report = peer.leave().await;
    let from_page: Vec<_> = report.from(&page).collect();
    assert_eq!(from_page.len(), 2, "{report:#?}");
    assert!(from_page.iter().all(|t| t.packets > 0), "{report:#?}");
}
