//! What every scenario shares: the options naming the server and how to authenticate, the
//! resolved `Target`, connections that have said `hello`, the bench space, and progress bars.
//!
//! `--target` picks the server's protocol: Chorus, or a peer spoken by an adapter (`nats`) so
//! the same scenario code measures both. Scenarios stay protocol-neutral by going through
//! `Target::connect`, `Target::channel`, `Conn::subscribe`, `Writer::answer_ping` and `scan`.

use super::wire::{self, Reader, Writer, WsAddr};
use crate::access::{Claims, Grant};
use crate::auth::TokenKeys;
use crate::client::RequestError;
use crate::config::Config;
use crate::datadir;
use crate::protocol::{Encoding, ServerFrame};
use anyhow::{Context, anyhow, bail};
use clap::{Args, ValueEnum};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Connections per source address when spreading over 127.0.0.x (under the ~28,000 ephemeral
/// ports Linux gives each address).
pub const PER_SOURCE: usize = 20_000;
/// The longest one connection (connect, upgrade, hello) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests in flight while adding members.
const MEMBER_WINDOW: usize = 128;
/// A pong, in JSON (the server accepts either encoding from clients).
pub const PONG: &[u8] = br#"{"type":"pong"}"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WireEncoding {
    Json,
    Msgpack,
}

impl From<WireEncoding> for Encoding {
    fn from(e: WireEncoding) -> Encoding {
        match e {
            WireEncoding::Json => Encoding::Json,
            WireEncoding::Msgpack => Encoding::Msgpack,
        }
    }
}

/// The kind of server a bench talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// A Chorus server (the full protocol, with tokens).
    Chorus,
    /// nats-server's WebSocket listener (NATS client protocol over WebSocket), for comparison.
    Nats,
}

/// Options every scenario takes: where the server is and how to get in.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// What the server is: chorus, or a peer to compare with (nats: nats-server's websocket
    /// listener, e.g. --url ws://127.0.0.1:8080; the fanout and connections scenarios).
    #[arg(long, value_enum, default_value_t = TargetKind::Chorus)]
    pub target: TargetKind,
    /// WebSocket URL of the server.
    #[arg(long, default_value = "ws://127.0.0.1:7700/ws")]
    pub url: String,
    /// Use QUIC to this address (e.g. 127.0.0.1:7701) instead of WebSocket.
    #[arg(long, value_name = "ADDR")]
    pub quic: Option<SocketAddr>,
    /// Certificate (PEM) to trust for QUIC [default: the data dir's quic-cert.pem].
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// One access token for every connection (all one user; it needs the create_spaces grant
    /// unless --space is given). Without it, the bench mints a token per connection.
    /// With --target nats: the auth_token of CONNECT, if the server wants one.
    #[arg(long, env = "CHORUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The server's token secret file, to mint tokens (users bench-0, bench-1, …).
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// The server's data dir: its token secret (unless --token or --secret-file, or
    /// CHORUS_SECRET is set) and its QUIC certificate.
    #[arg(long, value_name = "DIR", default_value = "./chorus-data")]
    pub data_dir: PathBuf,
    /// Organisation of minted tokens.
    #[arg(long, default_value = "bench")]
    pub org: String,
    /// Use this existing space instead of creating a new `bench-<random>` one. With minted
    /// tokens, user bench-0 must be an owner of it.
    #[arg(long)]
    pub space: Option<String>,
    /// Encoding of the frames the server sends (and the bench sends).
    #[arg(long, value_enum, default_value_t = WireEncoding::Json)]
    pub encoding: WireEncoding,
    /// The server's process id, to report its CPU time and memory (Linux /proc).
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Print one JSON object with every figure instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Seconds of load before each measurement.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub warmup: f64,
    /// Worker threads of the tool. Keep the tool off the server's cores, e.g.
    /// `taskset -c 1 chorus bench …` with the server under `taskset -c 0`.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
}

/// Progress bars and warnings; silent with `--json`.
#[derive(Debug, Clone)]
pub struct Ui {
    pub quiet: bool,
}

impl Ui {
    pub fn new(quiet: bool) -> Ui {
        Ui { quiet }
    }

    /// A progress bar of `len` items (drawn only on a terminal).
    pub fn bar(&self, len: u64, what: &str) -> ProgressBar {
        if self.quiet {
            return ProgressBar::hidden();
        }
        let style = ProgressStyle::with_template(
            "{prefix:>18} [{bar:32}] {pos}/{len} {per_sec:>12} {elapsed:>4} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> ");
        ProgressBar::new(len)
            .with_style(style)
            .with_prefix(what.to_string())
    }

    /// Record a warning in `notes` and show it now.
    pub fn note(&self, notes: &mut Vec<String>, note: String) {
        if !self.quiet {
            eprintln!("note: {note}");
        }
        notes.push(note);
    }
}

enum Auth {
    Fixed(String),
    Mint {
        keys: Box<TokenKeys>,
        org: String,
    },
    /// NATS: an optional `auth_token`.
    Nats(Option<String>),
}

/// Connections one QUIC endpoint (one UDP socket) of the tool carries at most.
const CONNECTIONS_PER_ENDPOINT: usize = 10_000;

/// The QUIC endpoints the tool opens for `connections` connections on `threads` threads.
fn quic_endpoints(threads: usize, connections: usize) -> usize {
    threads
        .max(connections.div_ceil(CONNECTIONS_PER_ENDPOINT))
        .max(1)
}

impl CommonArgs {
    /// Make sure this process may open the files `connections` connections take: over
    /// WebSocket a socket each, and as many more when the server runs in this process (tests);
    /// over QUIC one UDP socket per endpoint, each carrying many connections.
    pub fn ensure_open_files(&self, connections: usize) -> anyhow::Result<()> {
        let in_process = self.server_pid == Some(std::process::id());
        let sockets = match self.quic {
            Some(_) => quic_endpoints(self.threads, connections) + usize::from(in_process),
            None => connections * if in_process { 2 } else { 1 },
        };
        super::usage::ensure_open_files((sockets + 200) as u64)
    }
}

pub enum Transport {
    Ws(WsAddr),
    Quic(SocketAddr),
}

/// A resolved server: transport, address, authentication.
pub struct Target {
    pub kind: TargetKind,
    pub transport: Transport,
    pub encoding: Encoding,
    auth: Auth,
    /// Source addresses connections rotate over (empty: the system picks).
    sources: Vec<IpAddr>,
    endpoints: Vec<quinn::Endpoint>,
    space: Option<String>,
    pub server_pid: Option<u32>,
    pub concurrency: usize,
    pub ui: Ui,
}

#[derive(serde::Serialize)]
struct DataDir<'a> {
    data_dir: &'a PathBuf,
}

/// Split `ws://host[:port]/path` into `host:port` and the path.
fn parse_ws_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = match url.split_once("://") {
        Some(("ws", rest)) => rest,
        Some(("wss", _)) => bail!("the bench speaks plain ws:// only (or --quic): {url}"),
        _ => bail!("not a ws:// URL: {url}"),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let has_port = match authority.rfind(']') {
        Some(close) => authority[close..].contains(':'),
        None => authority.contains(':'),
    };
    let authority = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path))
}

impl Target {
    /// Resolve the options for a scenario opening about `connections` connections.
    /// `sources`: how many 127.0.0.x source addresses to spread WebSocket connections over
    /// [default: one per 20,000 connections].
    pub async fn new(
        args: &CommonArgs,
        connections: usize,
        sources: Option<usize>,
    ) -> anyhow::Result<Target> {
        if let Some(pid) = args
            .server_pid
            .filter(|&pid| super::usage::sample(Some(pid)).is_none())
        {
            bail!("--server-pid {pid}: no such process (or /proc is unavailable)");
        }
        if args.target == TargetKind::Nats {
            if args.quic.is_some() {
                bail!("--target nats speaks NATS over WebSocket only (no --quic)");
            }
            if args.encoding != WireEncoding::Json {
                bail!("--target nats carries the JSON stamp as payload (no --encoding msgpack)");
            }
        }
        let auth = if args.target == TargetKind::Nats {
            Auth::Nats(args.token.clone())
        } else if let Some(token) = &args.token {
            Auth::Fixed(token.clone())
        } else {
            let secret = match &args.secret_file {
                Some(path) => std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?
                    .trim_ascii()
                    .to_vec(),
                None => {
                    let config = Config::load(
                        None,
                        DataDir {
                            data_dir: &args.data_dir,
                        },
                    )?;
                    let file = config.data_dir.join(datadir::SECRET_FILE);
                    if config.secret.is_none() && !file.exists() {
                        bail!(
                            "no token: pass --token, or --secret-file, or the server's --data-dir \
                             ({} does not exist)",
                            file.display()
                        );
                    }
                    datadir::token_secret(&config)?
                }
            };
            Auth::Mint {
                keys: Box::new(TokenKeys::new(&secret)),
                org: args.org.clone(),
            }
        };
        let (transport, endpoints, sources) = match args.quic {
            Some(addr) => {
                let ca = args
                    .ca
                    .clone()
                    .unwrap_or_else(|| args.data_dir.join(datadir::CERT_FILE));
                let roots = datadir::load_certs(&ca).with_context(|| {
                    format!("cannot load the QUIC certificate {}", ca.display())
                })?;
                let endpoints = (0..quic_endpoints(args.threads, connections))
                    .map(|_| crate::transport::quic::client_endpoint(&roots))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                (Transport::Quic(addr), endpoints, Vec::new())
            }
            None => {
                let (authority, path) = parse_ws_url(&args.url)?;
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&authority)
                    .await
                    .with_context(|| format!("cannot resolve {authority}"))?
                    .collect();
                let addr = addrs
                    .iter()
                    .find(|a| a.is_ipv4())
                    .or(addrs.first())
                    .copied()
                    .ok_or_else(|| anyhow!("{authority} has no address"))?;
                let count = sources.unwrap_or(connections.div_ceil(PER_SOURCE));
                let sources = if addr.ip().is_loopback() && addr.is_ipv4() && count > 1 {
                    (1..=count.min(254))
                        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8)))
                        .collect()
                } else {
                    Vec::new()
                };
                let host = authority.clone();
                (
                    Transport::Ws(WsAddr { addr, host, path }),
                    Vec::new(),
                    sources,
                )
            }
        };
        Ok(Target {
            kind: args.target,
            transport,
            encoding: args.encoding.into(),
            auth,
            sources,
            endpoints,
            space: args.space.clone(),
            server_pid: args.server_pid,
            concurrency: args.concurrency.max(1),
            ui: Ui::new(args.json),
        })
    }

    /// `ws://…` or `quic://…` (`nats ws://…` for NATS), for reports.
    pub fn describe(&self) -> String {
        let url = match &self.transport {
            Transport::Ws(ws) => format!("ws://{}{}", ws.host, ws.path),
            Transport::Quic(addr) => format!("quic://{addr}"),
        };
        match self.kind {
            TargetKind::Chorus => url,
            TargetKind::Nats => format!("nats {url}"),
        }
    }

    pub fn encoding_name(&self) -> &'static str {
        match (self.kind, self.encoding) {
            (TargetKind::Nats, _) => "nats text protocol, json payload",
            (_, Encoding::Json) => "json",
            (_, Encoding::Msgpack) => "msgpack",
        }
    }

    /// The name of channel `topic` in `space`: `topic:<space>/<topic>`, or a NATS subject.
    pub fn channel(&self, space: &str, topic: &str) -> anyhow::Result<String> {
        match self.kind {
            TargetKind::Chorus => Ok(format!("topic:{space}/{topic}")),
            TargetKind::Nats => super::nats::subject(space, topic),
        }
    }

    /// Whether every connection is its own user (tokens minted) or all share `--token`'s.
    pub fn mints_tokens(&self) -> bool {
        matches!(self.auth, Auth::Mint { .. })
    }

    /// The user of connection `i` (minted tokens only).
    pub fn user(&self, i: usize) -> String {
        format!("bench-{i}")
    }

    /// The token of connection `i`.
    pub fn token(&self, i: usize) -> String {
        match &self.auth {
            Auth::Fixed(token) => token.clone(),
            Auth::Nats(token) => token.clone().unwrap_or_default(),
            Auth::Mint { keys, org } => {
                let now = crate::auth::unix_now();
                keys.issue(&Claims {
                    sub: self.user(i),
                    name: None,
                    org: org.clone(),
                    grants: Grant::DEFAULT.to_vec(),
                    iat: now,
                    exp: now + 24 * 3600,
                })
            }
        }
    }

    /// Open connection `i` and say `hello` as its user.
    pub async fn connect(&self, i: usize) -> anyhow::Result<Conn> {
        let step = async {
            let (reader, writer) = match &self.transport {
                Transport::Ws(ws) => {
                    let source =
                        (!self.sources.is_empty()).then(|| self.sources[i % self.sources.len()]);
                    wire::connect_ws(ws, source).await?
                }
                Transport::Quic(addr) => {
                    wire::connect_quic(&self.endpoints[i % self.endpoints.len()], *addr).await?
                }
            };
            let mut conn = Conn {
                kind: self.kind,
                reader,
                writer,
                encoding: Encoding::Json,
                welcome: Value::Null,
                next_id: 1,
                inbox: VecDeque::new(),
            };
            if let Auth::Nats(token) = &self.auth {
                conn.welcome =
                    super::nats::handshake(&mut conn.reader, &mut conn.writer, token.as_deref())
                        .await?;
                return Ok(conn);
            }
            let hello = json!({
                "type": "hello",
                "version": 1,
                "token": self.token(i),
                "encoding": self.encoding,
                "client": concat!("chorus-bench/", env!("CARGO_PKG_VERSION")),
            });
            conn.welcome = conn
                .request(hello)
                .await?
                .map_err(|e| anyhow!("hello refused: {e}"))?;
            conn.encoding = self.encoding;
            Ok(conn)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, step)
            .await
            .map_err(|_| anyhow!("connection {i} timed out"))?
    }

    /// Open connections `range` with `connect` (at most `concurrency` at once) and a progress
    /// bar. Returns what succeeded and the failures counted by message.
    pub async fn connect_many<T, F, Fut>(
        &self,
        range: std::ops::Range<usize>,
        what: &str,
        connect: F,
    ) -> (Vec<T>, BTreeMap<String, u64>)
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let bar = self.ui.bar(range.len() as u64, what);
        let mut ok = Vec::with_capacity(range.len());
        let mut failed = BTreeMap::new();
        let mut results = futures_util::stream::iter(range)
            .map(connect)
            .buffer_unordered(self.concurrency);
        while let Some(result) = results.next().await {
            match result {
                Ok(v) => ok.push(v),
                Err(e) => *failed.entry(format!("{e:#}")).or_insert(0) += 1,
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        (ok, failed)
    }

    /// The space to run in: `--space`, or a new `bench-<random>` created by user 0. With minted
    /// tokens, users `1..members` are added to it.
    pub async fn prepare_space(&self, members: usize) -> anyhow::Result<String> {
        if self.kind == TargetKind::Nats {
            // Subjects need no set-up: a fresh random prefix keeps runs apart.
            if let Some(space) = &self.space {
                return Ok(space.clone());
            }
            let mut random = [0u8; 6];
            getrandom::fill(&mut random)?;
            return Ok(format!("bench-{}", hex::encode(random)));
        }
        let mut conn = self.connect(0).await.context("cannot set up the space")?;
        let space = match &self.space {
            Some(space) => space.clone(),
            None => {
                let mut random = [0u8; 6];
                getrandom::fill(&mut random)?;
                let space = format!("bench-{}", hex::encode(random));
                conn.request(json!({"type": "space.create", "space": space, "name": "chorus bench"}))
                    .await?
                    .map_err(|e| {
                        anyhow!("cannot create space {space}: {e} (does the token have the create_spaces grant? or pass --space)")
                    })?;
                space
            }
        };
        if let Auth::Mint { org, .. } = &self.auth {
            let bar = self
                .ui
                .bar(members.saturating_sub(1) as u64, "adding members");
            self.add_members(&mut conn, &space, org, (1..members).collect(), &bar)
                .await?;
            bar.finish_and_clear();
        }
        conn.writer.close().await;
        Ok(space)
    }

    /// Add `users` to `space`, pipelined, waiting out the server's rate limit when it bites.
    pub(crate) async fn add_members(
        &self,
        conn: &mut Conn,
        space: &str,
        org: &str,
        mut pending: VecDeque<usize>,
        bar: &indicatif::ProgressBar,
    ) -> anyhow::Result<()> {
        let mut in_flight: HashMap<u64, usize> = HashMap::new();
        let mut limited = false;
        while !pending.is_empty() || !in_flight.is_empty() {
            if limited && in_flight.is_empty() {
                tokio::time::sleep(Duration::from_millis(250)).await;
                limited = false;
            }
            while in_flight.len() < MEMBER_WINDOW && !limited {
                let Some(user) = pending.pop_front() else {
                    break;
                };
                let id = conn.queue_request(json!({
                    "type": "space.add_member", "space": space, "user": self.user(user), "org": org,
                }))?;
                in_flight.insert(id, user);
            }
            conn.writer.flush().await?;
            match conn.next_frame().await? {
                ServerFrame::Reply { id, .. } if in_flight.remove(&id).is_some() => bar.inc(1),
                ServerFrame::Error {
                    id: Some(id),
                    code,
                    message,
                } => {
                    let Some(user) = in_flight.remove(&id) else {
                        continue;
                    };
                    if code != crate::protocol::ErrorCode::RateLimited {
                        bail!(
                            "cannot add {} to {space}: {code}: {message}",
                            self.user(user)
                        );
                    }
                    limited = true;
                    pending.push_back(user);
                }
                ServerFrame::Disconnect { code, message, .. } => {
                    bail!("disconnected while adding members: {code}: {message}")
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Stop tasks and wait until they are gone (and their connections closed).
pub async fn abort_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// A request frame in `encoding`, its `type` first as clients write it (the server then
/// decodes by it at once).
pub fn encode_request(frame: &Value, encoding: Encoding) -> anyhow::Result<Vec<u8>> {
    let object = frame
        .as_object()
        .ok_or_else(|| anyhow!("a request is a JSON object"))?;
    let frame = crate::protocol::TypeFirst(object);
    Ok(match encoding {
        Encoding::Json => serde_json::to_vec(&frame)?,
        Encoding::Msgpack => rmp_serde::to_vec_named(&frame)?,
    })
}

/// A connection that said `hello`: requests one at a time or pipelined, for set-up. Load loops
/// take its `reader` and `writer` apart.
pub struct Conn {
    pub kind: TargetKind,
    pub reader: Reader,
    pub writer: Writer,
    /// Encoding of frames we send (the one chosen in `hello`).
    pub encoding: Encoding,
    /// The `hello` reply's result.
    pub welcome: Value,
    next_id: u64,
    /// Frames read but not yet looked at.
    inbox: VecDeque<Vec<u8>>,
}

impl Conn {
    /// Encode `frame` with a fresh `id` into the write buffer; returns the id.
    pub fn queue_request(&mut self, mut frame: Value) -> anyhow::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = json!(id);
        self.writer.push(&encode_request(&frame, self.encoding)?);
        Ok(id)
    }

    /// The next frame other than `message` and `ping` (pings are answered).
    pub async fn next_frame(&mut self) -> anyhow::Result<ServerFrame> {
        loop {
            while let Some(bytes) = self.inbox.pop_front() {
                match super::scan::decode(&bytes) {
                    Some(ServerFrame::Ping) => {
                        self.writer.answer_ping();
                        self.writer.flush().await?;
                    }
                    Some(ServerFrame::Message { .. }) => {}
                    Some(frame) => return Ok(frame),
                    None => bail!("the server sent a frame the bench cannot decode"),
                }
            }
            let inbox = &mut self.inbox;
            let open = self
                .reader
                .read(&mut |frame, _| inbox.push_back(frame.to_vec()))
                .await?;
            for ping in self.reader.take_pings() {
                self.writer.pong(&ping);
            }
            self.writer.flush().await?;
            if !open && self.inbox.is_empty() {
                bail!(
                    "the server closed the connection ({})",
                    self.reader.closed.as_deref().unwrap_or("no reason")
                );
            }
        }
    }

    /// Send a request and wait for its reply.
    pub async fn request(&mut self, frame: Value) -> anyhow::Result<Result<Value, RequestError>> {
        let id = self.queue_request(frame)?;
        self.writer.flush().await?;
        loop {
            match self.next_frame().await? {
                ServerFrame::Reply { id: got, result } if got == id => return Ok(Ok(result)),
                ServerFrame::Error {
                    id: Some(got),
                    code,
                    message,
                } if got == id => {
                    return Ok(Err(RequestError {
                        code: code.as_str().into(),
                        message,
                    }));
                }
                ServerFrame::Disconnect { code, message, .. } => {
                    bail!("disconnected: {code}: {message}")
                }
                _ => {}
            }
        }
    }

    /// Subscribe to `channel` and wait until the server has it; returns the channel's offset
    /// (none on NATS).
    pub async fn subscribe(&mut self, channel: &str) -> anyhow::Result<Option<u64>> {
        if self.kind == TargetKind::Nats {
            super::nats::subscribe(&mut self.reader, &mut self.writer, channel).await?;
            return Ok(None);
        }
        let reply = self
            .request(json!({"type": "subscribe", "channel": channel}))
            .await?
            .map_err(|e| anyhow!("subscribe refused: {e}"))?;
        Ok(Some(reply["offset"].as_u64().unwrap_or(0)))
    }

    /// A number from the welcome, e.g. `limits.rate_per_sec`.
    pub fn welcome_u64(&self, path: &[&str]) -> Option<u64> {
        path.iter()
            .try_fold(&self.welcome, |v, key| v.get(key))?
            .as_u64()
    }

    /// The reader and writer, for a load loop. Frames read past the last reply are not lost:
    /// the reader hands them over first.
    pub fn into_parts(self) -> (Reader, Writer) {
        let mut reader = self.reader;
        reader.pending = self.inbox;
        (reader, self.writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_urls() {
        let ok = |u: &str| parse_ws_url(u).unwrap();
        assert_eq!(
            ok("ws://127.0.0.1:7700/ws"),
            ("127.0.0.1:7700".into(), "/ws".into())
        );
        assert_eq!(ok("ws://localhost"), ("localhost:80".into(), "/".into()));
        assert_eq!(ok("ws://h:1?token=x"), ("h:1".into(), "/?token=x".into()));
        assert_eq!(ok("ws://[::1]/ws"), ("[::1]:80".into(), "/ws".into()));
        assert_eq!(ok("ws://[::1]:9/ws"), ("[::1]:9".into(), "/ws".into()));
        assert!(parse_ws_url("wss://x/ws").is_err());
        assert!(parse_ws_url("http://x/ws").is_err());
    }
}
