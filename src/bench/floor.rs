//! `chorus bench floor`: the least CPU one delivery can cost on this machine, measured in the
//! same run as the scenarios it is compared with. A delivery from a server ends in a `write()`
//! of a small frame to a loopback TCP socket whose reader runs on another core; on loopback
//! that call also runs the receiving side's TCP processing and wakes the reader, all of it on
//! the writer's CPU. The floor is that cost alone: a writer thread pinned to the server's core
//! writes one frame to each of N sockets per round (as a fan-out does, one round per update)
//! and nothing else; readers on the tool's core drain the sockets.
//!
//! A scenario's "server CPU per delivered update" divided by this floor says how much the
//! server spends beyond the unavoidable write; below 1.0 is only possible by coalescing
//! several updates into one write.

use super::report::{Report, Step, thousands};
use super::usage::Sampler;
use anyhow::Context;
use clap::Args;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{ErrorKind, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Run it beside a scenario's run with the same shape, e.g. for `chorus bench yjs --clients 200
--writers 10 --rate 20` (200 updates/s to 200 clients):
  taskset -c 1 chorus bench floor -n 200 -r 200 --writer-cpu 0")]
pub struct FloorArgs {
    /// Sockets written to in each round; a comma-separated list runs one step per count.
    #[arg(short = 'n', long, value_delimiter = ',', default_value = "200")]
    pub connections: Vec<usize>,
    /// Rounds per second (each writes one frame to every socket), like updates per second.
    #[arg(short = 'r', long, default_value_t = 200.0)]
    pub rate: f64,
    /// Bytes per write (a small update frame is 20 to 40 bytes).
    #[arg(short = 'b', long, default_value_t = 32)]
    pub size: usize,
    /// Measured seconds per step (after one second of warm-up).
    #[arg(short = 'd', long, default_value_t = 5.0)]
    pub duration: f64,
    /// The CPU the writer runs on: the core the server runs on in the compared run.
    #[arg(long, default_value_t = 0)]
    pub writer_cpu: usize,
    /// Print one JSON object with every figure instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// Sockets written to at most (the tool holds both ends of each).
const MAX_CONNECTIONS: usize = 5_000;
/// Bytes per write at most.
const MAX_SIZE: usize = 64 * 1024;

/// What one step measured on the writer's thread.
struct Measured {
    /// Writes in the measured phase, and the writer thread's CPU time over it.
    writes: u64,
    cpu: Duration,
    /// Writes refused because a socket's buffer was full (its reader fell behind).
    would_block: u64,
    /// Bytes written over the whole step, warm-up included.
    bytes: u64,
}

pub async fn run(args: &FloorArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.rate > 0.0 && args.duration > 0.0,
        "--rate and --duration must be above 0"
    );
    anyhow::ensure!(
        (1..=MAX_SIZE).contains(&args.size),
        "--size must be 1 to {MAX_SIZE} bytes"
    );
    let mut steps = Vec::new();
    let mut floors = Vec::new();
    for &n in &args.connections {
        anyhow::ensure!(
            (1..=MAX_CONNECTIONS).contains(&n),
            "--connections must be 1 to {MAX_CONNECTIONS}"
        );
        let step = step(args, n).await?;
        floors.push(json!({
            "connections": n,
            "cpu_us_per_write": step.counter("cpu_ns_per_write") as f64 / 1000.0,
        }));
        steps.push(step);
    }
    let summary_lines = floors
        .iter()
        .map(|f| {
            format!(
                "floor with {} sockets: {:.2} µs of CPU per write() on CPU {}",
                f["connections"], f["cpu_us_per_write"], args.writer_cpu
            )
        })
        .collect();
    Ok(Report {
        scenario: "floor".into(),
        target: "loopback TCP".into(),
        encoding: format!("{}-byte writes", args.size),
        params: json!({
            "connections": args.connections,
            "rate": args.rate,
            "size": args.size,
            "duration_s": args.duration,
            "writer_cpu": args.writer_cpu,
        }),
        steps,
        summary: json!({ "floors": floors }),
        summary_lines,
        notes: Vec::new(),
    })
}

async fn step(args: &FloorArgs, n: usize) -> anyhow::Result<Step> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on loopback")?;
    let addr = listener.local_addr()?;
    let mut written = Vec::with_capacity(n);
    let mut received = Vec::with_capacity(n);
    for _ in 0..n {
        let client = TcpStream::connect(addr).context("cannot connect on loopback")?;
        let (server, _) = listener.accept()?;
        server.set_nodelay(true)?;
        server.set_nonblocking(true)?;
        client.set_nonblocking(true)?;
        written.push(server);
        received.push(tokio::spawn(drain(tokio::net::TcpStream::from_std(
            client,
        )?)));
    }
    let sampler = Sampler::start(None);
    let (cpu, rate, size, duration) = (args.writer_cpu, args.rate, args.size, args.duration);
    let measured =
        tokio::task::spawn_blocking(move || write_rounds(written, cpu, rate, size, duration))
            .await??;
    let usage = sampler.finish();
    let mut bytes = 0u64;
    for reader in received {
        bytes += reader.await?;
    }
    let cpu_ns_per_write = measured.cpu.as_nanos() as u64 / measured.writes.max(1);
    let counters = BTreeMap::from([
        ("connections".to_string(), n as u64),
        ("writes".to_string(), measured.writes),
        ("cpu_ns_per_write".to_string(), cpu_ns_per_write),
        ("would_block".to_string(), measured.would_block),
    ]);
    let failure = if bytes != measured.bytes {
        Some(format!(
            "the readers got {} of {} bytes",
            thousands(bytes as f64),
            thousands(measured.bytes as f64)
        ))
    } else if measured.would_block > 0 {
        Some("readers fell behind (full socket buffers): lower --rate".into())
    } else {
        None
    };
    Ok(Step {
        label: format!("{n} sockets"),
        unit: "writes/s".into(),
        throughput: measured.writes as f64 / duration,
        counters,
        errors: BTreeMap::new(),
        latency: None,
        limit: usage.limit(1),
        usage,
        pass: failure.is_none(),
        failure,
    })
}

/// Read a socket to its end; the bytes read.
async fn drain(mut socket: tokio::net::TcpStream) -> u64 {
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    while let Ok(read) = socket.read(&mut buf).await {
        if read == 0 {
            break;
        }
        total += read as u64;
    }
    total
}

/// On a thread pinned to `cpu`: one second of warm-up, then `duration` seconds of rounds at
/// `rate`, each writing `size` bytes to every socket; the sockets are closed at the end.
fn write_rounds(
    mut sockets: Vec<TcpStream>,
    cpu: usize,
    rate: f64,
    size: usize,
    duration: f64,
) -> anyhow::Result<Measured> {
    pin_to(cpu)?;
    let frame = vec![b'x'; size];
    let interval = Duration::from_secs_f64(1.0 / rate);
    let warmup = Duration::from_secs(1);
    let started = Instant::now();
    let mut next = started;
    let mut phase_start: Option<(Duration, u64, u64)> = None;
    let mut measured = Measured {
        writes: 0,
        cpu: Duration::ZERO,
        would_block: 0,
        bytes: 0,
    };
    let mut writes = 0u64;
    loop {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        let elapsed = next - started;
        if phase_start.is_none() && elapsed >= warmup {
            phase_start = Some((thread_cpu(), writes, measured.would_block));
        }
        if elapsed >= warmup + Duration::from_secs_f64(duration) {
            break;
        }
        for socket in &mut sockets {
            match socket.write(&frame) {
                Ok(n) => measured.bytes += n as u64,
                Err(e) if e.kind() == ErrorKind::WouldBlock => measured.would_block += 1,
                Err(e) => return Err(e).context("a loopback write failed"),
            }
            writes += 1;
        }
        next += interval;
    }
    let (cpu_start, writes_start, blocked_start) =
        phase_start.expect("the measured phase starts before it ends");
    measured.cpu = thread_cpu() - cpu_start;
    measured.writes = writes - writes_start;
    measured.would_block -= blocked_start;
    Ok(measured)
}

/// Run the calling thread on `cpu` only.
fn pin_to(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: `set` is a plain bit set that CPU_ZERO/CPU_SET initialise and fill within its
    // size, and sched_setaffinity only reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    anyhow::ensure!(
        rc == 0,
        "cannot run the writer on CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// The CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
