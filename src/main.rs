//! The `chorus` command: serve, mint tokens, report the version.

use anyhow::{Context, bail};
use chorus::access::{Claims, Grant};
use chorus::auth::{TokenKeys, unix_now};
use chorus::client::Client;
use chorus::config::{Config, LogFormat};
use chorus::protocol::{Encoding, ServerFrame};
use chorus::server::{self, Listeners};
use chorus::{datadir, transport};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Chorus: presence, chat, meetings and co-editing from one real-time server.
#[derive(Parser)]
#[command(name = "chorus", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (HTTP + WebSocket, and QUIC) until Ctrl-C or SIGTERM.
    Serve(ServeArgs),
    /// Print a signed access token that `chorus serve` with the same config accepts.
    Token(TokenArgs),
    /// Subscribe to channels and print each message as a JSON line until Ctrl-C.
    Sub(SubArgs),
    /// Publish one message (JSON) on a channel and print the reply.
    Pub(PubArgs),
    /// Load-test a Chorus server (or a peer) and report latency and throughput.
    Bench(chorus::bench::BenchArgs),
    /// Print the version.
    Version,
}

/// How `sub` and `pub` reach a server.
#[derive(Args)]
struct ClientArgs {
    /// WebSocket URL of the server.
    #[arg(long, default_value = "ws://127.0.0.1:7700/ws")]
    url: String,
    /// Connect over QUIC to this address instead of WebSocket.
    #[arg(long, value_name = "ADDR")]
    quic: Option<SocketAddr>,
    /// Certificate (PEM) to trust for QUIC [default: the data dir's quic-cert.pem].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Data dir of a local server, for its certificate [default: ./chorus-data].
    #[arg(long, value_name = "DIR", default_value = "./chorus-data")]
    data_dir: PathBuf,
    /// Access token (from `chorus token`).
    #[arg(long, env = "CHORUS_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Args)]
struct SubArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Channels, e.g. topic:SPACE/TOPIC.
    #[arg(required = true)]
    channels: Vec<String>,
}

#[derive(Args)]
struct PubArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Channel, e.g. topic:SPACE/TOPIC.
    channel: String,
    /// The message: any JSON value.
    data: String,
}

/// Where the config comes from; shared by every command that needs it.
#[derive(Args, Serialize)]
struct ConfigArgs {
    /// TOML config file; `CHORUS_*` environment variables and flags override it.
    #[arg(long, short = 'c', value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Data dir: database, token secret, certificate [default: ./chorus-data].
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
}

#[derive(Args, Serialize)]
struct ServeArgs {
    #[command(flatten)]
    #[serde(flatten)]
    config: ConfigArgs,
    /// HTTP and WebSocket address [default: 127.0.0.1:7700].
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// QUIC (UDP) address [default: 127.0.0.1:7701].
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    quic_listen: Option<SocketAddr>,
    /// Log format [default: text]. Filter logs with RUST_LOG (e.g. RUST_LOG=chorus=debug).
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<LogFormat>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    #[serde(skip)]
    print_config: bool,
}

#[derive(Args)]
struct TokenArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// User id, unique across organisations.
    #[arg(long)]
    user: String,
    /// Display name.
    #[arg(long)]
    name: Option<String>,
    /// The user's home organisation.
    #[arg(long)]
    org: String,
    /// Lifetime: seconds, or a number with s, m, h or d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: u64,
    /// A grant (repeatable): subscribe, publish, create_spaces, admin.
    /// [default: subscribe, publish, create_spaces]
    #[arg(long = "grant", value_name = "GRANT", value_parser = parse_grant)]
    grants: Vec<Grant>,
    /// Add the admin grant to the defaults: administer every space of the organisation.
    #[arg(long)]
    admin: bool,
}

fn parse_ttl(s: &str) -> Result<u64, String> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 90s, 30m, 1h, 7d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit in `{s}`: use s, m, h or d")),
    };
    match n.checked_mul(unit) {
        Some(0) | None => Err("the lifetime must be positive and reasonable".into()),
        Some(secs) => Ok(secs),
    }
}

fn parse_grant(s: &str) -> Result<Grant, String> {
    match serde_json::from_value(serde_json::Value::String(s.into())) {
        Ok(Grant::Unknown) | Err(_) => Err(format!(
            "unknown grant `{s}`: use subscribe, publish, create_spaces or admin"
        )),
        Ok(grant) => Ok(grant),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Any crate may enable a second rustls provider; pick ring once for the whole process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
        Command::Sub(args) => client_runtime()?.block_on(sub(args)),
        Command::Pub(args) => client_runtime()?.block_on(publish(args)),
        Command::Bench(args) => chorus::bench::run(args),
        Command::Version => {
            println!(
                "chorus {} (protocol v{})",
                env!("CARGO_PKG_VERSION"),
                chorus::protocol::PROTOCOL_VERSION
            );
            Ok(())
        }
    }
}

/// Log to stderr, filtered by `RUST_LOG`: comma-separated `target=level` directives and a bare
/// level for the rest (e.g. `warn,chorus=debug`); `info` when it is unset. A `RUST_LOG` that
/// does not parse is reported and replaced by `info`, rather than ignored.
fn init_logs(format: LogFormat) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let info = || Targets::new().with_default(LevelFilter::INFO);
    let (filter, refused) = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match spec.parse::<Targets>() {
            Ok(filter) => (filter, None),
            Err(e) => (info(), Some((spec, e))),
        },
        _ => (info(), None),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => registry.with(layer).init(),
        LogFormat::Json => registry.with(layer.json()).init(),
    }
    if let Some((spec, error)) = refused {
        tracing::warn!(%error, "RUST_LOG={spec:?} is not a filter like `warn,chorus=debug`: logging at info");
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.config.as_deref(), &args)?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    init_logs(config.log_format);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        glibc_heap::tune();
        glibc_heap::give_back_freed();
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    runtime.block_on(async move {
        let listeners = Listeners::bind(&config).await?;
        let (http, quic) = (listeners.http_addr(), listeners.quic_addr());
        let data_dir = config.data_dir.clone();
        let cert = datadir::tls_paths(&config)?.0;
        let shared = server::shared(config)?;
        tracing::info!(
            %http, %quic, data_dir = %data_dir.display(),
            "chorus {} listening: WebSocket ws://{http}/ws, HTTP API http://{http}/api, QUIC {quic} (ALPN {}, trust {})",
            env!("CARGO_PKG_VERSION"),
            String::from_utf8_lossy(transport::quic::ALPN),
            cert.display(),
        );
        tracing::info!(
            "get a token: chorus token --user alice --org acme --data-dir {}",
            data_dir.display()
        );
        let shutdown = shared.shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: closing connections");
            shutdown.cancel();
        });
        server::serve(shared, listeners).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// glibc's allocator, tuned to keep the server's resident memory close to what it holds.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc_heap {
    /// Keep the server's resident memory close to what it holds. By default glibc's malloc makes up
    /// to 8 arenas per core, each keeping its own freed memory, and raises its mmap and trim
    /// thresholds after a large block is freed (up to 32 MiB), so memory freed after a burst stays
    /// resident. The server caps the arenas at one per core it may run on (the runtime runs one
    /// worker per core) and fixes both thresholds at their initial 128 KiB; a `MALLOC_ARENA_MAX`,
    /// `MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_` in the environment is left to glibc.
    /// With 200 clients on one document it kept 3 to 4 MiB less resident (from 30–32 MiB).
    pub fn tune() {
        const THRESHOLD: libc::c_int = 128 * 1024;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let settings = [
            ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, cores as libc::c_int),
            ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, THRESHOLD),
            ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, THRESHOLD),
        ];
        for (variable, parameter, value) in settings {
            if std::env::var_os(variable).is_none() {
                // SAFETY: mallopt only changes the allocator's parameters, and no other thread
                // of the server runs yet.
                unsafe { libc::mallopt(parameter, value) };
            }
        }
    }

    /// How often the heap trimmer looks at the heap.
    const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
    /// How much more of the heap must be resident and unused than after the last trim (or at its
    /// low point since) to trim again.
    const TRIM_STEP: usize = 1 << 20;

    /// When to give freed heap memory back to the OS. glibc returns only the top of its heap;
    /// memory freed below it (a burst of connections opening: each handshake's buffers freed
    /// between the connections' lasting state) stays resident until reused. With 200 clients
    /// joining one document at once, 1.8 MiB of it did. The policy watches the slack: anonymous
    /// resident memory less the heap in use. It is not glibc's free-memory count, which still
    /// counts memory once given back, and stays flat while a churn of small allocations faults
    /// that memory in again.
    #[derive(Default)]
    struct TrimPolicy {
        /// The slack after the last trim, or its low point since.
        baseline: usize,
    }

    impl TrimPolicy {
        /// Whether to trim, given the slack now: once it is `TRIM_STEP` above the baseline.
        fn due(&mut self, slack: usize) -> bool {
            self.baseline = self.baseline.min(slack);
            slack >= self.baseline.saturating_add(TRIM_STEP)
        }

        /// A trim left `slack`.
        fn trimmed(&mut self, slack: usize) {
            self.baseline = slack;
        }
    }

    /// Anonymous resident memory less the heap in use (outside mmapped blocks), in bytes
    /// (`None` if /proc cannot say).
    fn slack() -> Option<usize> {
        // statm: size, resident and shared (file-backed) pages, ...
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let mut pages = statm.split_whitespace().skip(1).map(str::parse::<usize>);
        let (resident, shared) = (pages.next()?.ok()?, pages.next()?.ok()?);
        // SAFETY: sysconf only reads a system setting.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let heap = unsafe { libc::mallinfo2() };
        let anon = resident.saturating_sub(shared) * page;
        // Only the heap proper: mmapped blocks (`hblkhd`) count whole, resident or not.
        Some(anon.saturating_sub(heap.uordblks))
    }

    /// Start the thread that gives freed heap memory back (`malloc_trim`) when `TrimPolicy` says
    /// so, looking every `TRIM_EVERY`. It runs until the process exits.
    pub fn give_back_freed() {
        let spawned = std::thread::Builder::new()
            .name("chorus-trim".into())
            .stack_size(64 * 1024)
            .spawn(|| {
                let mut policy = TrimPolicy::default();
                loop {
                    std::thread::sleep(TRIM_EVERY);
                    if slack().is_some_and(|slack| policy.due(slack)) {
                        // SAFETY: malloc_trim releases free pages only; memory in use is untouched.
                        unsafe { libc::malloc_trim(0) };
                        policy.trimmed(slack().unwrap_or(0));
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the heap trimmer: freed memory stays resident");
        }
    }

    #[cfg(test)]
    mod tests {
        use super::{TRIM_STEP, TrimPolicy};

        #[test]
        fn trims_once_the_slack_is_a_step_above_its_low_point() {
            let mut policy = TrimPolicy::default();
            assert!(!policy.due(TRIM_STEP - 1), "less than a step of slack");
            assert!(policy.due(TRIM_STEP), "a step of slack");
            policy.trimmed(TRIM_STEP / 4);
            assert!(
                !policy.due(TRIM_STEP),
                "less than a step above what the trim left"
            );
            // The slack falls (freed memory reused), then rises a step above its low point.
            assert!(!policy.due(TRIM_STEP / 8));
            assert!(!policy.due(TRIM_STEP / 8 + TRIM_STEP - 1));
            assert!(policy.due(TRIM_STEP / 8 + TRIM_STEP));
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.config.as_deref(), &args.config)?;
    if args.user.is_empty() || args.org.is_empty() {
        bail!("--user and --org must not be empty");
    }
    let mut grants = if args.grants.is_empty() {
        Grant::DEFAULT.to_vec()
    } else {
        args.grants
    };
    if args.admin && !grants.contains(&Grant::Admin) {
        grants.push(Grant::Admin);
    }
    let now = unix_now();
    let claims = Claims {
        sub: args.user,
        name: args.name,
        org: args.org,
        grants,
        iat: now,
        exp: now + args.ttl,
    };
    let keys = TokenKeys::new(&datadir::token_secret(&config)?);
    println!("{}", keys.issue(&claims));
    Ok(())
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

async fn connect(args: &ClientArgs) -> anyhow::Result<Client> {
    let mut client = match args.quic {
        None => Client::connect_ws(&args.url, None)
            .await
            .with_context(|| format!("cannot connect to {}", args.url))?,
        Some(addr) => {
            let ca = args
                .ca
                .clone()
                .unwrap_or_else(|| args.data_dir.join(datadir::CERT_FILE));
            let roots = datadir::load_certs(&ca)?;
            Client::connect_quic(addr, &roots)
                .await
                .with_context(|| format!("cannot connect to {addr} over QUIC"))?
        }
    };
    client.hello(Some(&args.token), Encoding::Json).await?;
    Ok(client)
}

async fn sub(args: SubArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.client).await?;
    for channel in &args.channels {
        client
            .call(json!({"type": "subscribe", "channel": channel}))
            .await
            .with_context(|| format!("cannot subscribe to {channel}"))?;
    }
    loop {
        tokio::select! {
            frame = client.recv() => match frame? {
                Some(ServerFrame::Message { channel, offset, data }) => {
                    println!("{}", json!({"channel": channel, "offset": offset, "data": data}));
                }
                Some(ServerFrame::Ping) => client.send(&json!({"type": "pong"})).await?,
                Some(ServerFrame::Disconnect { code, message, .. }) => bail!("disconnected: {code}: {message}"),
                Some(_) => {}
                None => bail!("the server closed the connection"),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn publish(args: PubArgs) -> anyhow::Result<()> {
    let data: serde_json::Value = serde_json::from_str(&args.data)
        .context("the message must be JSON (quote strings: '\"hi\"')")?;
    let mut client = connect(&args.client).await?;
    let reply = client
        .call(json!({"type": "publish", "channel": args.channel, "data": data}))
        .await?;
    println!("{reply}");
    Ok(())
}
