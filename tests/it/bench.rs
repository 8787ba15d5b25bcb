//! `chorus bench` in-process against a real server: the fan-out scenario over both transports,
//! the connections, presence and yjs scenarios, the yjs scenario against Hocuspocus, and the
//! meeting scenario through the SFU, and the write floor.

use crate::util::{TestServer, Tr};
use chorus::bench::{BenchArgs, Report, Scenario};
use clap::Parser;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

async fn server() -> TestServer {
    TestServer::with(|c| {
        c.rate_per_sec = 1_000_000;
        c.rate_burst = 1_000_000;
    })
    .await
}

/// Parse `chorus bench <args>` pointed at `s` over `tr`, with tokens minted from its secret.
fn args(s: &TestServer, tr: Tr, args: &[&str]) -> Scenario {
    let data_dir = s.shared.config.data_dir.display().to_string();
    let mut argv = vec!["bench".to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv.extend(["--data-dir".into(), data_dir]);
    match tr {
        Tr::Ws => argv.extend(["--url".into(), s.ws_url()]),
        Tr::Quic => argv.extend(["--quic".into(), s.quic.to_string()]),
    }
    argv.extend([
        "--json".into(),
        "--server-pid".into(),
        std::process::id().to_string(),
    ]);
    BenchArgs::try_parse_from(argv).unwrap().scenario
}

async fn fanout(tr: Tr) {
    let s = server().await;
    let scenario = args(
        &s,
        tr,
        &[
            "fanout",
            "-s",
            "20",
            "-p",
            "1",
            "-r",
            "200",
            "-d",
            "1",
            "--warmup",
            "0.2",
            // A step passes on what arrived; latency is the benches' business, not a test's.
            "--p99-bound-ms",
            "600000",
        ],
    );
    let report = scenario.run().await.unwrap_or_else(|e| panic!("{e:#}"));
    let step = &report.steps[0];
    assert!(step.pass, "{}", report.render());
    let published = step.counter("published");
    // Paced at 200/s for 1 s: late ticks catch up, but never beyond the rate.
    assert!((1..=250).contains(&published), "{}", report.render());
    assert_eq!(step.counter("sent"), published);
    assert_eq!(step.counter("received"), published * 20);
    assert_eq!(step.counter("lost"), 0);
    assert_eq!(step.counter("duplicates"), 0);
    assert_eq!(step.counter("offset_gaps"), 0);
    assert!(step.errors.is_empty(), "{:?}", step.errors);
    let latency = step.latency.as_ref().unwrap();
    assert_eq!(latency.count, published * 20);
    assert!(step.usage.server.is_some());
    // The JSON form carries every figure.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["steps"][0]["counters"]["received"], published * 20);
    assert_eq!(json["summary"]["pass"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_ws() {
    fanout(Tr::Ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_quic() {
    fanout(Tr::Quic).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_msgpack_ladder() {
    let s = server().await;
    let scenario = args(
        &s,
        Tr::Ws,
        &[
            "fanout",
            "-s",
            "5",
            "-p",
            "2",
            "-b",
            "300",
            "--encoding",
            "msgpack",
            "--ladder",
            "100,300",
            "-d",
            "0.5",
            "--warmup",
            "0",
            "--p99-bound-ms",
            "600000",
        ],
    );
    let report = scenario.run().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(report.steps.len(), 2, "{}", report.render());
    for step in &report.steps {
        assert!(step.pass, "{}", report.render());
        assert_eq!(step.counter("received"), step.counter("published") * 5);
    }
    assert_eq!(report.summary["saturation"]["step"], "300/s");
}

/// `--slow 1`: a subscriber that never reads is cut as a slow consumer, and the readers'
/// step still passes with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_with_a_slow_subscriber() {
    let s = TestServer::with(|c| {
        c.rate_per_sec = 1_000_000;
        c.rate_burst = 1_000_000;
        c.outbox_bytes = 1 << 20;
    })
    .await;
    // 8 MB to each subscriber: far more than a socket's buffers and the 1 MiB queue together.
    let scenario = args(
        &s,
        Tr::Ws,
        &[
            "fanout",
            "-s",
            "4",
            "--slow",
            "1",
            "-b",
            "16000",
            "-r",
            "500",
            "-d",
            "1",
            "--warmup",
            "0",
            "--p99-bound-ms",
            "5000",
        ],
    );
    let report = scenario.run().await.unwrap_or_else(|e| panic!("{e:#}"));
    let step = &report.steps[0];
    assert!(step.pass, "{}", report.render());
    assert_eq!(step.counter("received"), step.counter("published") * 4);
    assert_eq!(s.shared.metrics.slow_consumers.get(), 1);
    let slow = &report.summary["slow"];
    assert_eq!(slow["subscribers"], 1, "{}", report.render());
    assert_eq!(slow["cut"], 1, "{}", report.render());
    assert_eq!(slow["offset_gaps"], 0);
    assert!(
        slow["received_mib"]["max"].as_f64().unwrap() < 7.0,
        "{}",
        report.render()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections() {
    let s = server().await;
    let scenario = args(&s, Tr::Ws, &["connections", "-n", "200", "--hold", "0.5"]);
    let report = scenario.run().await.unwrap_or_else(|e| panic!("{e:#}"));
    let step = &report.steps[0];
    assert!(step.pass, "{}", report.render());
    assert_eq!(step.counter("connected"), 200);
    assert_eq!(report.summary["connected"], 200);
    assert!(report.summary["server_rss_per_connection_kib"].is_number());
    assert_eq!(step.latency.as_ref().unwrap().count, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_storm() {
    let s = TestServer::with(|c| {
        c.rate_per_sec = 1_000_000;
        c.rate_burst = 1_000_000;
        c.presence_grace_ms = 200;
        c.presence_flush_ms = 50;
    })
    .await;
    let scenario = args(
        &s,
        Tr::Ws,
        &[
            "presence",
            "-n",
            "120",
            "--space-size",
            "50",
            "-w",
            "2",
            "--down-ms",
            "500",
            "--quiet-ms",
            "300",
        ],
    );
    let report = scenario.run().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(report.steps.len(), 2, "{}", report.render());
    for step in &report.steps {
        assert!(step.pass, "{}", report.render());
        // 3 spaces of 50, 50, 20 members, 2 watchers each.
        assert_eq!(step.counter("changes"), 120);
        assert_eq!(step.counter("watchers"), 6);
        let frames = step.counter("frames");
        assert!(frames > 0, "{}", report.render());
        // Batched: at most one frame per watcher per flush (50 ms) while views changed, however
        // the changes spread over time.
        let ticks = step.counter("settle_ms") / 50 + 2;
        assert!(
            step.counter("max_frames_per_watcher") <= ticks,
            "{}",
            report.render()
        );
        assert!(step.counter("entries") >= 120, "{}", report.render());
    }
    assert_eq!(report.summary["pass"], true);
}

/// The yjs scenario's steps: 3 then 12 clients, 2 of them typing 20 edits/s, briefly.
const YJS_STEPS: [&str; 13] = [
    "yjs",
    "-n",
    "3,12",
    "-w",
    "2",
    "-r",
    "20",
    "-d",
    "0.5",
    "--warmup",
    "0.2",
    // Waits only while edits are missing: generous, so a slow machine loses nothing.
    "--drain-ms",
    "10000",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yjs_coediting() {
    let s = server().await;
    let scenario = args(&s, Tr::Ws, &YJS_STEPS);
    let report = scenario.run().await.unwrap_or_else(|e| panic!("{e:#}"));
    check_yjs(&report);
}

/// The same scenario against the real Hocuspocus server (`tests/yjs/hocuspocus-server.mjs`),
/// its clients speaking the Hocuspocus provider protocol: a wrong envelope, a missing token
/// handshake or a misread reply leaves clients unsynced or edits unseen, and fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yjs_coediting_hocuspocus() {
    crate::yjs_node::require_packages();
    let mut node = tokio::process::Command::new("node")
        .current_dir(crate::yjs_node::yjs_dir())
        .args(["hocuspocus-server.mjs", "--port", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `node` ({e}): install Node.js"));
    let pid = node.id().expect("running").to_string();
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("hocuspocus-server.mjs printed no URL within 30 s")
        .unwrap()
        .expect("hocuspocus-server.mjs exited before listening");
    assert!(url.starts_with("ws://127.0.0.1:"), "{url}");
    let mut argv = vec!["bench"];
    argv.extend(YJS_STEPS);
    argv.extend([
        "--yjs-server",
        "hocuspocus",
        "--url",
        &url,
        "--server-pid",
        &pid,
        "--json",
    ]);
    let scenario = BenchArgs::try_parse_from(argv).unwrap().scenario;
    let report = scenario.run().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(report.params["server"], "hocuspocus");
    check_yjs(&report);
    node.kill().await.unwrap();
}

/// Every client of every step connected, and saw every other writer's edits exactly once.
fn check_yjs(report: &Report) {
    assert_eq!(report.steps.len(), 2, "{}", report.render());
    for (step, n) in report.steps.iter().zip([3u64, 12]) {
        assert!(step.pass, "{}", report.render());
        assert_eq!(step.counter("connected"), n, "{}", report.render());
        let edits = step.counter("edits");
        // Each writer's first edit is due at once; the rest depend on timing.
        assert!(edits >= 2, "{}", report.render());
        // Every edit observed by every client but its writer, once.
        assert_eq!(step.counter("expected"), edits * (n - 1));
        assert_eq!(step.counter("observed"), edits * (n - 1));
        assert_eq!(step.counter("lost"), 0);
        assert_eq!(step.counter("duplicates"), 0);
        assert_eq!(step.counter("foreign"), 0);
        assert_eq!(step.counter("clients_missing_edits"), 0);
        assert!(
            step.counter("update_frames") >= n - 1,
            "{}",
            report.render()
        );
        assert!(step.errors.is_empty(), "{:?}", step.errors);
        // One latency per measured edit and reader.
        let measured = step.counter("measured_edits");
        assert!(measured <= edits);
        let count = step.latency.as_ref().map_or(0, |l| l.count);
        assert_eq!(count, measured * (n - 1), "{}", report.render());
        assert!(step.usage.server.is_some());
    }
    let json = serde_json::to_value(report).unwrap();
    assert_eq!(json["summary"]["pass"], true);
    assert_eq!(json["summary"]["steps"][1]["clients"], 12);
}

/// `chorus bench meeting --mode sfu --scenario <scenario>` with `peers` peers: every remote
/// track delivers, nothing is lost, and the server's own count of forwarded packets (read from
/// its `/metrics`) is at least what the peers received, less a window edge.
async fn meeting_sfu(scenario: &str, peers: u64, remote_tracks: u64) {
    let s = server().await;
    let argv =
        format!("meeting --mode sfu --scenario {scenario} -n {peers} -d 2 --warmup 0.5 -r 40");
    let scenario = args(&s, Tr::Ws, &argv.split(' ').collect::<Vec<_>>());
    let report = scenario.run().await.unwrap_or_else(|e| panic!("{e:#}"));
    let (join, media) = (&report.steps[0], &report.steps[1]);
    assert!(join.pass && media.pass, "{}", report.render());
    assert_eq!(media.counter("remote_tracks"), remote_tracks);
    assert_eq!(media.counter("remote_tracks_receiving"), remote_tracks);
    assert_eq!(media.counter("lost"), 0, "{}", report.render());
    assert_eq!(media.counter("lost_measuring"), 0, "{}", report.render());
    assert_eq!(media.counter("duplicates"), 0, "{}", report.render());
    assert!(media.errors.is_empty(), "{:?}", media.errors);
    // About 2 s of 40 packets/s on every remote track arrived, through the server.
    let received = media.counter("packets_received");
    assert!(received >= remote_tracks * 40, "{}", report.render());
    let forwarded = media.counter("server_forwarded");
    assert!(forwarded >= received / 2, "{}", report.render());
    assert!(s.shared.metrics.sfu.forwarded_packets.get() >= received);
    let json = serde_json::to_value(&report).unwrap();
    let summary = &json["summary"];
    for figure in ["forwarded_per_s_per_core", "subscribers_per_core"] {
        assert!(summary[figure].as_f64().unwrap() > 0.0, "{json:#}");
    }
    assert_eq!(summary["livekit_reference_packets_per_vcpu"], 38_000.0);
    assert_eq!(json["params"]["mode"], "sfu");
    assert!(
        report.summary_lines.iter().any(|l| l.contains("per core")),
        "{}",
        report.render()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meeting_sfu_fanout() {
    // One publisher, three subscribers of its audio and video.
    meeting_sfu("fanout", 4, 3 * 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meeting_sfu_all() {
    // Three peers, each receiving the other two's audio and video.
    meeting_sfu("all", 3, 3 * 2 * 2).await;
}

/// `chorus bench floor`: every byte written reaches its reader, and the writer's CPU per
/// write is measured (it is never zero: each write is a system call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor() {
    let argv = [
        "bench",
        "floor",
        "-n",
        "3,20",
        "-r",
        "50",
        "-d",
        "0.5",
        "--writer-cpu",
        "0",
        "--json",
    ];
    let scenario = BenchArgs::try_parse_from(argv).unwrap().scenario;
    let report = scenario.run().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(report.steps.len(), 2, "{}", report.render());
    for (step, sockets) in report.steps.iter().zip([3, 20]) {
        assert!(step.pass, "{}", report.render());
        assert_eq!(step.counter("connections"), sockets);
        // 25 rounds in the measured half second, give or take the one at its edge.
        let writes = step.counter("writes");
        assert!(
            (24 * sockets..=26 * sockets).contains(&writes),
            "{}",
            report.render()
        );
        assert!(step.counter("cpu_ns_per_write") > 0, "{}", report.render());
    }
    assert_eq!(report.summary["floors"].as_array().unwrap().len(), 2);
}
