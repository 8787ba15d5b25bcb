//! A WHIP publish watched in headless Chromium: a webrtc-rs peer publishes audio and video into
//! a room with WHIP, and the meeting page of a subscribe-only viewer shows it and receives its
//! RTP through the SFU (`tests/browser/whip.mjs`).

use crate::meet_browser::{BROWSER, CHROMIUM, require_browser, spawn_node, unique_room};
use crate::util::TestServer;
use crate::whip::{OfferingPeer, keep_sending, post_offer};
use chorus::access::Grant;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

/// A bound on the scenario's run, far above what it needs: each of its waits is bounded.
const NODE_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_publisher_is_watched_by_a_meeting_page() {
    require_browser();
    let _one_at_a_time = BROWSER.lock().await;
    let s = TestServer::start().await;
    let room = unique_room("whip");

    let publisher = Arc::new(OfferingPeer::new(true).await);
    let offer = publisher.offer().await;
    let path = format!("/whip/{room}?name=Studio");
    let r = post_offer(s.http, &path, Some(&s.token("alice", "acme")), &offer).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let sid = r.header("chorus-participant").unwrap().to_string();
    publisher.answer(&r.body).await;
    let sender = keep_sending(publisher.clone());

    let viewer = s.token_with("viewer", "acme", &[Grant::Subscribe], 3600);
    let base = format!("http://{}", s.http);
    let env = [
        ("MEET_BASE_URL", base.as_str()),
        ("MEET_ROOM", room.as_str()),
        ("MEET_TOKEN_VIEWER", viewer.as_str()),
        ("MEET_WHIP_SID", sid.as_str()),
        ("MEET_WHIP_NAME", "Studio"),
        ("MEET_TIMEOUT_MS", "20000"),
        ("CHROMIUM", CHROMIUM),
    ];
    let child = spawn_node("whip.mjs", env, Stdio::null());
    let out = match tokio::time::timeout(NODE_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out.unwrap(),
        Err(_) => panic!("node whip.mjs did not finish within {NODE_TIMEOUT:?} (killed)"),
    };
    sender.abort();
    publisher.close().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node whip.mjs failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    print!("{stdout}");
}
