//! y-websocket compatibility: the real npm clients (`yjs`, `y-websocket`, pinned in
//! `tests/yjs/package.json`) run the scenarios of `tests/yjs/*.mjs` against `/yjs/{doc}`.
//!
//! Each test starts a server, mints tokens for alice@acme, carol@acme, bob@globex and a
//! read-only acme user, and runs one scenario with `node`, its output shown on failure. The
//! packages are installed by `scripts/yjs-deps.sh` (which `scripts/test.sh` runs first).

use crate::util::TestServer;
use chorus::access::Grant;
use chorus::config::Config;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// A bound on one scenario's run, far above what it needs: its own waits are bounded by
/// `YJS_TIMEOUT_MS` and it fails by itself well before this.
const NODE_TIMEOUT: Duration = Duration::from_secs(180);

pub(crate) fn yjs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/yjs")
}

/// Fail (never skip) when the npm packages are missing.
pub(crate) fn require_packages() {
    let dir = yjs_dir();
    for package in [
        "yjs",
        "y-websocket",
        "y-protocols",
        "lib0",
        "ws",
        "@y/websocket-server",
        "@hocuspocus/server",
    ] {
        let manifest = dir.join("node_modules").join(package).join("package.json");
        assert!(
            manifest.exists(),
            "{} is missing: run scripts/yjs-deps.sh (scripts/test.sh runs it) to install the \
             y-websocket test clients from tests/yjs/package-lock.json",
            manifest.display()
        );
    }
}

/// A document id no other run uses.
fn unique_doc(scenario: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("it-{scenario}-{}-{nanos}", std::process::id())
}

/// The environment every scenario reads (see the header of `tests/yjs/lib.mjs`).
fn scenario_env(server: &TestServer, doc: &str) -> Vec<(&'static str, String)> {
    vec![
        ("YJS_SERVER_URL", format!("ws://{}/yjs", server.http)),
        ("YJS_DOC", doc.to_string()),
        ("YJS_TOKEN_ALICE", server.token("alice", "acme")),
        ("YJS_TOKEN_CAROL", server.token("carol", "acme")),
        ("YJS_TOKEN_BOB", server.token("bob", "globex")),
        (
            "YJS_TOKEN_READONLY",
            server.token_with("dave", "acme", &[Grant::Subscribe], 3600),
        ),
        ("YJS_TIMEOUT_MS", "10000".to_string()),
    ]
}

/// Run `node tests/yjs/<script> <args>`; panic with its output unless it exits 0.
async fn node(script: &str, args: &[&str], env: &[(&'static str, String)]) {
    require_packages();
    let mut cmd = tokio::process::Command::new("node");
    cmd.current_dir(yjs_dir())
        .arg(script)
        .args(args)
        .env_remove("YJS_REFERENCE")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run `node` ({e}): install Node.js and run scripts/yjs-deps.sh")
    });
    let what = format!("node {script} {}", args.join(" "));
    let out = match tokio::time::timeout(NODE_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out.unwrap(),
        Err(_) => panic!("{what} did not finish within {NODE_TIMEOUT:?} (killed)"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    print!("{stdout}");
}

/// Start a server and run one scenario against it.
async fn run_scenario(script: &str) {
    run_scenario_with(script, |_| {}, &[]).await;
}

/// Start a server with the config changed by `tweak`, and run one scenario against it with
/// `extra` environment variables.
async fn run_scenario_with(
    script: &str,
    tweak: impl FnOnce(&mut Config),
    extra: &[(&'static str, String)],
) {
    let server = TestServer::with(tweak).await;
    let doc = unique_doc(script.trim_end_matches(".mjs"));
    let mut env = scenario_env(&server, &doc);
    env.extend_from_slice(extra);
    node(script, &[], &env).await;
    server.stop().await;
}

/// (a) Three providers edit a Y.Text and a Y.Map concurrently and converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_converge() {
    run_scenario("converge.mjs").await;
}

/// (b) A late joiner gets the whole document, also when no other client is connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_gets_the_document() {
    run_scenario("late-joiner.mjs").await;
}

/// (b) The same, with a server that unloads a document as soon as nobody has it open: the late
/// joiner after everyone left gets it from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_gets_the_document_from_the_store() {
    let wait = ("YJS_UNLOAD_WAIT_MS", "2500".to_string());
    run_scenario_with("late-joiner.mjs", |c| c.doc_idle_ms = 0, &[wait]).await;
}

/// (c) Edits made while disconnected sync on reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_sync_on_reconnect() {
    run_scenario("offline-edit.mjs").await;
}

/// (d) Awareness states arrive, reach late joiners, and go when their client leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awareness_arrives_and_is_removed() {
    run_scenario("awareness.mjs").await;
}

/// (e) Another organisation's document, no token, a forged token: "permission denied", a close
/// in 4400-4499, and no reconnection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_is_final() {
    run_scenario("access-denied.mjs").await;
}

/// (f) A `subscribe`-only token receives edits; its own are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_edits_are_dropped() {
    run_scenario("read-only.mjs").await;
}

/// (g) The document survives restarts on the same data dir, with edits made between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_persists_across_restarts() {
    persist_phases(|_| {}).await;
}

/// (g) The same with a compaction after every couple of appends and documents unloaded as soon
/// as they are idle: snapshots and the updates after them both come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_persists_across_restarts_with_compaction() {
    persist_phases(|c| {
        c.doc_compact_updates = 2;
        c.doc_idle_ms = 0;
    })
    .await;
}

async fn persist_phases(tweak: impl Fn(&mut Config)) {
    let doc = unique_doc("persist");
    let server = TestServer::with(&tweak).await;
    node("persist.mjs", &["write"], &scenario_env(&server, &doc)).await;
    let dir = server.stop().await;

    let server = TestServer::in_dir(dir, &tweak).await;
    node("persist.mjs", &["append"], &scenario_env(&server, &doc)).await;
    let dir = server.stop().await;

    let server = TestServer::in_dir(dir, &tweak).await;
    node("persist.mjs", &["final"], &scenario_env(&server, &doc)).await;
    server.stop().await;
}

/// (g, live) Connected providers ride through a restart on the same address: the scenario
/// prints `PHASE stop` and `PHASE start`; we stop the server, and start it again on the same
/// data dir and port, answering each phase with a line on its standard input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_reconnect_after_a_restart() {
    require_packages();
    enum State {
        Running(TestServer),
        Stopped(tempfile::TempDir),
    }
    let server = TestServer::start().await;
    let addr = server.http;
    let env = scenario_env(&server, &unique_doc("restart-live"));
    let mut state = Some(State::Running(server));
    let mut child = tokio::process::Command::new("node")
        .current_dir(yjs_dir())
        .arg("restart-live.mjs")
        .env_remove("YJS_REFERENCE")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `node` ({e}): install Node.js"));
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut stdout = String::new();
    let driven = tokio::time::timeout(NODE_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            stdout.push_str(&line);
            stdout.push('\n');
            let answer = match (line.as_str(), state.take()) {
                ("PHASE stop", Some(State::Running(server))) => {
                    state = Some(State::Stopped(server.stop().await));
                    "stopped"
                }
                ("PHASE start", Some(State::Stopped(dir))) => {
                    let server = TestServer::in_dir(dir, |c| c.listen = addr).await;
                    state = Some(State::Running(server));
                    "started"
                }
                (_, now) => {
                    state = now;
                    continue;
                }
            };
            stdin
                .write_all(format!("{answer}\n").as_bytes())
                .await
                .unwrap();
        }
        child.wait().await.unwrap()
    })
    .await;
    if let Some(State::Running(server)) = state {
        server.stop().await;
    }
    let stderr = stderr.await.unwrap();
    match driven {
        Ok(status) => assert!(
            status.success(),
            "node restart-live.mjs failed ({status})\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        ),
        Err(_) => panic!(
            "node restart-live.mjs did not finish within {NODE_TIMEOUT:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        ),
    }
    print!("{stdout}");
}

/// The scenarios that need no auth pass against the reference server, `@y/websocket-server`:
/// they test y-websocket's behaviour, not an accident of ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_pass_against_the_reference_server() {
    node("reference-server.mjs", &["--run"], &[]).await;
}
