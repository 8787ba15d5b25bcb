//! `chorus bench`: load tests against a Chorus server, reporting latency (hdrhistogram),
//! throughput, lost and duplicated messages, and the CPU and memory of both sides.
//!
//! Layout, so each feature adds its scenario with little code:
//!
//! - `target`: options shared by every scenario (`CommonArgs`), the resolved `Target`
//!   (transport, tokens minted or given, space set-up), connections that said `hello`, progress.
//! - `wire`: lean WebSocket and QUIC connections (`Reader`/`Writer`) for load loops.
//! - `scan`: reads offsets, stamps and reply ids from raw frames without decoding them.
//! - `report`: `Report`/`Step` (latency summary, counters, errors, usage), table and JSON output.
//! - `usage`: CPU and memory of the tool and the server, from `/proc`.
//! - `nats`: the `--target nats` adapter (NATS client protocol over WebSocket), so scenarios
//!   run unchanged against nats-server for comparison (`benches/compare.sh`).
//! - `yjs_hocuspocus`: the Hocuspocus provider protocol (`chorus bench yjs --yjs-server
//!   hocuspocus`), so the yjs scenario runs unchanged against `@hocuspocus/server`.
//! - `rtc_peer`: a meeting participant with real WebRTC media (webrtc-rs), negotiating as the
//!   browser SDK does (mesh) or answering the server's offers (SFU); the `meeting` scenario
//!   runs several, and the interop tests meet Chromium.
//! - one module per scenario (`fanout`, `connections`, `presence`, `chat`, `yjs`, `meeting`,
//!   `floor`): `XArgs` (clap) and `async fn run(&XArgs) -> Report`. A new scenario adds a
//!   module, a `Scenario` variant and match arms in `output` and `run`.
//!
//! The tool runs on its own multi-thread runtime with `--threads` workers (default 1), so on a
//! 2-core machine the server gets one core and the tool the other:
//! `taskset -c 0 chorus serve` and `taskset -c 1 chorus bench …`.

pub mod chat;
pub mod connections;
pub mod fanout;
pub mod floor;
pub mod meeting;
pub mod nats;
pub mod presence;
pub mod report;
pub mod rtc_peer;
pub mod scan;
pub mod target;
pub mod usage;
pub mod wire;
pub mod yjs;
pub mod yjs_hocuspocus;

pub use report::Report;
pub use target::CommonArgs;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Load-test a Chorus server and report latency, throughput, losses, and CPU and memory use.
///
/// Run the server without its per-connection rate limit for load tests:
/// `CHORUS_RATE_PER_SEC=1000000 CHORUS_RATE_BURST=1000000 chorus serve`. Pin server and tool to
/// different cores (`taskset -c 0 chorus serve`, `taskset -c 1 chorus bench …`) and pass
/// `--server-pid` so the report says which side was the limit.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "bench",
    after_help = "\
Run the server without its per-connection rate limit (500 frames/s) for load tests, and pin the
server and the tool to different cores so each side's CPU use tells which one was the limit:
  CHORUS_RATE_PER_SEC=1000000 CHORUS_RATE_BURST=1000000 taskset -c 0 chorus serve
  taskset -c 1 chorus bench fanout -s 100 --ladder 10k*1.5 --server-pid <PID of chorus serve>
Without --token the bench mints tokens with the server's secret (--data-dir, default ./chorus-data)."
)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// S subscribers on one channel, P publishers, B-byte messages, at a rate or a ladder of
    /// rates up to the saturation point.
    Fanout(fanout::FanoutArgs),
    /// Open N idle connections and report the server's memory per connection.
    Connections(connections::ConnectionsArgs),
    /// Presence reconnect storm: N members drop and reconnect at once while watchers follow
    /// their space; deltas delivered, time until every view is right, server CPU per change.
    Presence(presence::PresenceArgs),
    /// Persistent chat: acknowledged (durable) sends per second from pipelining members, then
    /// history-page and search latency on the room (fill it with --room-messages).
    Chat(chat::ChatArgs),
    /// Co-editing one Yjs document over y-websocket: N clients, W of them typing; latency from
    /// edit to every other client, lost edits, server CPU per delivered update. Runs against
    /// Chorus or the reference y-websocket server.
    Yjs(yjs::YjsArgs),
    /// A WebRTC meeting: N webrtc-rs peers join one room through the session protocol and
    /// send synthetic audio and video, peer to peer or through the SFU (`--mode sfu`), every
    /// peer to every other one or one to all (`--scenario fanout`); join latency, time to first
    /// media, RTP packets per second received, loss, and in SFU mode forwarded packets per
    /// second per core of server CPU.
    Meeting(meeting::MeetingArgs),
    /// The least CPU a delivery can cost on this machine: one write() of a small frame to a
    /// loopback socket read on another core, N sockets per round as in a fan-out. Divide a
    /// scenario's server CPU per delivery by it, measured in the same run.
    Floor(floor::FloorArgs),
}

impl Scenario {
    /// The tool's worker threads, and whether to print JSON.
    fn output(&self) -> (usize, bool) {
        let common = match self {
            Scenario::Fanout(a) => &a.common,
            Scenario::Connections(a) => &a.common,
            Scenario::Presence(a) => &a.common,
            Scenario::Chat(a) => &a.common,
            Scenario::Yjs(a) => &a.common,
            Scenario::Meeting(a) => &a.common,
            Scenario::Floor(a) => return (1, a.json),
        };
        (common.threads, common.json)
    }

    /// Run the scenario on the current runtime.
    pub async fn run(&self) -> anyhow::Result<Report> {
        match self {
            Scenario::Fanout(a) => fanout::run(a).await,
            Scenario::Connections(a) => connections::run(a).await,
            Scenario::Presence(a) => presence::run(a).await,
            Scenario::Chat(a) => chat::run(a).await,
            Scenario::Yjs(a) => yjs::run(a).await,
            Scenario::Meeting(a) => meeting::run(a).await,
            Scenario::Floor(a) => floor::run(a).await,
        }
    }
}

/// The `chorus bench` command: run the scenario on a runtime of `--threads` workers and print
/// its report.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (threads, json) = args.scenario.output();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("bench")
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let report = runtime.block_on(args.scenario.run())?;
    report.print(json);
    // Connections still closing must not delay the exit.
    runtime.shutdown_background();
    Ok(())
}
