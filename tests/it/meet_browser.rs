//! The meeting page and the JS SDK in real headless Chromium (Debian's `/usr/bin/chromium`,
//! driven by `playwright-core` pinned in `tests/browser/package.json`), with a fake camera and
//! microphone, against a real server: the scenarios of `tests/browser/*.mjs`.
//!
//! Each test starts a server, mints tokens for alice, bob, carol, dave and erin of `acme`
//! (default grants) and a subscribe-only `viewer`, and runs one scenario with `node`, its
//! output shown on failure. `scripts/browser-deps.sh` (which `scripts/test.sh` runs) installs
//! Chromium and the npm packages; without them these tests fail, they never skip.

use crate::util::TestServer;
use chorus::access::Grant;
use chorus::config::Config;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) const CHROMIUM: &str = "/usr/bin/chromium";

/// A bound on one scenario's run, far above what it needs: each of its waits is bounded by
/// `MEET_TIMEOUT_MS` and it fails by itself well before this.
const NODE_TIMEOUT: Duration = Duration::from_secs(240);

/// One browser scenario at a time: each runs several pages encoding and decoding video, and
/// two at once on a small machine would test the machine.
pub(crate) static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Fail (never skip) when Chromium or the npm packages are missing.
pub(crate) fn require_browser() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/browser-deps.sh (scripts/test.sh runs it), which \
         installs Debian's chromium with apt-get"
    );
    let manifest = browser_dir().join("node_modules/playwright-core/package.json");
    assert!(
        manifest.exists(),
        "{} is missing: run scripts/browser-deps.sh (scripts/test.sh runs it) to install the \
         browser test packages from tests/browser/package-lock.json",
        manifest.display()
    );
}

/// A room id no other run uses.
pub(crate) fn unique_room(scenario: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "it-{scenario}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000
    )
}

/// Start `node tests/browser/<script>` with `env`, its output piped; it is killed if dropped.
pub(crate) fn spawn_node<'a>(
    script: &str,
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
    stdin: Stdio,
) -> tokio::process::Child {
    tokio::process::Command::new("node")
        .current_dir(browser_dir())
        .arg(script)
        .envs(env)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run `node` ({e}): install Node.js and run scripts/browser-deps.sh")
        })
}

/// Start a server and run `node tests/browser/<script>` against it; panic with its output
/// unless it exits 0.
async fn scenario(script: &str) {
    scenario_with(script, |_| {}, &[]).await;
}

/// The same with the server's config changed by `tweak` and `extra` environment variables.
async fn scenario_with(
    script: &str,
    tweak: impl FnOnce(&mut Config),
    extra: &[(&'static str, &str)],
) {
    require_browser();
    let _one_at_a_time = BROWSER.lock().await;
    let server = TestServer::with(tweak).await;
    let env = [
        ("MEET_BASE_URL", format!("http://{}", server.http)),
        ("MEET_ROOM", unique_room(script.trim_end_matches(".mjs"))),
        ("MEET_TOKEN_ALICE", server.token("alice", "acme")),
        ("MEET_TOKEN_BOB", server.token("bob", "acme")),
        ("MEET_TOKEN_CAROL", server.token("carol", "acme")),
        ("MEET_TOKEN_DAVE", server.token("dave", "acme")),
        ("MEET_TOKEN_ERIN", server.token("erin", "acme")),
        (
            "MEET_TOKEN_VIEWER",
            server.token_with("viewer", "acme", &[Grant::Subscribe], 3600),
        ),
        ("MEET_TIMEOUT_MS", "20000".to_string()),
        ("CHROMIUM", CHROMIUM.to_string()),
    ];
    let child = spawn_node(
        script,
        env.iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(extra.iter().copied()),
        Stdio::null(),
    );
    let out = match tokio::time::timeout(NODE_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out.unwrap(),
        Err(_) => panic!("node {script} did not finish within {NODE_TIMEOUT:?} (killed)"),
    };
    server.stop().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node {script} failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    print!("{stdout}");
}

/// The SDK's pure parts (SDP media parsing, the emitter, errors), in Node without a browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_unit_tests() {
    let out = tokio::process::Command::new("node")
        .current_dir(browser_dir())
        .args(["--test", "sdk-unit.mjs"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run `node` ({e}): install Node.js"));
    assert!(
        out.status.success(),
        "node --test sdk-unit.mjs failed\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The page and the SDK's modules are served; the SDK opens a session; the fake camera gives
/// frames; a bad token and a bad room id are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_basics() {
    scenario("page-basics.mjs").await;
}

/// Three pages each decode the other two's video; data, mute, admin mute, screen share,
/// leave and a closed tab show on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pages_meet() {
    // Three pages encode and decode while other tests run on the same two cores: each wait
    // gets more time (a bound on failure, not a speed goal).
    scenario_with("meeting.mjs", |_| {}, &[("MEET_TIMEOUT_MS", "60000")]).await;
}

/// Without the publish grant the page shows the refusal, and no media reaches the others,
/// even from an offer sent around the SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_publish_grant_means_no_media() {
    scenario("no-publish.mjs").await;
}

/// A dropped session shows as reconnecting, and resumes its participant within the grace
/// period (same sid, media again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_resumes_the_participant() {
    scenario("reconnect.mjs").await;
}

/// With no grace period the reconnected page joins as a new participant and publishes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_after_the_grace_joins_anew() {
    scenario_with(
        "reconnect.mjs",
        |c| c.meeting_grace_ms = 0,
        &[("MEET_EXPECT", "new")],
    )
    .await;
}

/// Five pages in one SFU meeting each decode the other four's video through the server;
/// one leaving takes its video from the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_pages_meet_through_the_sfu() {
    // Five pages encode and decode at once: each wait gets more time on a small machine.
    scenario_with("sfu.mjs", |_| {}, &[("MEET_TIMEOUT_MS", "60000")]).await;
}

/// Peer to peer, a lost offer or answer heals: the SDK negotiates again (with an ICE restart)
/// when a connection is not up within its check interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_offer_or_answer_heals() {
    scenario_with("heal.mjs", |_| {}, &[("MEET_TIMEOUT_MS", "60000")]).await;
}

/// Two pages meet peer to peer; the third page's join reaches `meeting_sfu_participants` and
/// turns the meeting into SFU mode live: every page then decodes the others through the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_growing_meeting_switches_to_the_sfu() {
    scenario_with(
        "switch.mjs",
        |c| c.meeting_sfu_participants = 3,
        &[("MEET_TIMEOUT_MS", "60000")],
    )
    .await;
}

/// Simulcast through the SFU: a page showing a publisher in a small tile receives a narrower
/// layer than a page showing it large, and a hidden tile receives nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_layers_follow_the_tile_size() {
    scenario_with("simulcast.mjs", |_| {}, &[("MEET_TIMEOUT_MS", "60000")]).await;
}

/// In SFU mode too (every meeting of the server is one), a dropped session resumes its
/// participant: a new connection with the server, media again both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_resumes_the_participant_in_sfu_mode() {
    scenario_with("reconnect.mjs", |c| c.meeting_sfu_from = 1, &[]).await;
}

/// In SFU mode with no grace period, the reconnected page joins anew and publishes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_after_the_grace_joins_anew_in_sfu_mode() {
    let sfu_without_grace = |c: &mut Config| {
        c.meeting_grace_ms = 0;
        c.meeting_sfu_from = 1;
    };
    scenario_with(
        "reconnect.mjs",
        sfu_without_grace,
        &[("MEET_EXPECT", "new")],
    )
    .await;
}

/// Without device permission, the decoding check fails: the checks above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_without_devices() {
    scenario("negative-control.mjs").await;
}

/// Active speakers through the SFU: every page lists the participant whose microphone (a
/// steady tone) is on and outlines its tile, never a muted one's; when the speaker mutes and
/// another unmutes, the outline moves; with every microphone muted none is outlined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_speaker_is_outlined() {
    scenario_with(
        "speakers.mjs",
        |c| c.meeting_sfu_from = 1,
        &[("MEET_TIMEOUT_MS", "60000")],
    )
    .await;
}
