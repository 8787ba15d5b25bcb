//! Server configuration: embedded defaults, overridden by a TOML file, then `CHORUS_*` environment
//! variables, then command-line flags. `Config::validate` turns what the user wrote into what the
//! server uses, with a clear error for every value out of bounds.

use crate::session::SessionConfig;
use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Every setting, with its default. Field names are the TOML keys; the environment variable is
/// `CHORUS_` + the name in upper case (e.g. `CHORUS_MAX_FRAME_BYTES`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP and WebSocket address. Default 127.0.0.1:7700.
    pub listen: SocketAddr,
    /// QUIC address (UDP). Default 127.0.0.1:7701.
    pub quic_listen: SocketAddr,
    /// Where the database, the generated token secret and the generated certificate live.
    pub data_dir: PathBuf,
    /// Token signing secret (at least 32 bytes). Default: generated into `<data_dir>/token-secret`.
    pub secret: Option<String>,
    /// PEM certificate chain and private key for QUIC. Default: a self-signed certificate
    /// generated into `<data_dir>/quic-cert.pem` and `quic-key.pem`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub log_format: LogFormat,
    /// Largest frame a client may send, in bytes. Default 64 KiB; 1 KiB to 16 MiB.
    pub max_frame_bytes: usize,
    /// Subscriptions one connection may hold. Default 1,024.
    pub max_subscriptions: usize,
    /// Concurrent client connections over all transports. Default 100,000.
    pub max_connections: usize,
    /// Frames per second a connection may send, sustained. Default 500.
    pub rate_per_sec: u32,
    /// Frames a connection may send in a burst above the rate. Default 1,000.
    pub rate_burst: u32,
    /// Bytes queued for one connection before it counts as a slow consumer. Default 4 MiB.
    pub outbox_bytes: usize,
    /// Interval of server pings, in milliseconds. Default 25,000.
    pub heartbeat_ms: u64,
    /// A client silent for this long is disconnected, in milliseconds. Default 60,000.
    pub client_timeout_ms: u64,
    /// Time to send `hello` after connecting, in milliseconds. Default 10,000.
    pub hello_timeout_ms: u64,
    /// Presence: a user whose devices all reported no activity for this long is away, in
    /// milliseconds. Default 300,000 (5 minutes); 100 to 86,400,000.
    pub presence_idle_timeout_ms: u64,
    /// Presence: how long a closed connection still counts, so a reconnect within it shows no
    /// offline/online pair, in milliseconds. Default 5,000; 0 to 600,000.
    pub presence_grace_ms: u64,
    /// Presence: changes reach each subscriber at most once per this interval, batched, in
    /// milliseconds. Default 500; 10 to 60,000.
    pub presence_flush_ms: u64,
    /// Presence: a connection's typing events are accepted at most once per this interval, in
    /// milliseconds. Default 1,000; 0 to 60,000.
    pub presence_typing_interval_ms: u64,
    /// Presence: a typing indicator disappears this long after its last refresh, in
    /// milliseconds. Default 5,000; 100 to 600,000.
    pub presence_typing_timeout_ms: u64,
    /// Presence: entries each scope keeps for subscribers resuming from an offset.
    /// Default 4,096; 16 to 1,048,576.
    pub presence_log_entries: usize,
    /// Presence: how long a scope without subscribers (and its log) is kept, so reconnecting
    /// subscribers can resume, in milliseconds. Default 60,000; 0 to 86,400,000.
    pub presence_scope_retention_ms: u64,
    /// Presence: the most users a `users` scope may list. Default 1,000; 1 to 100,000.
    pub presence_max_scope_users: usize,
    /// Presence: the most rooms one connection may be in at once. Default 256; 1 to 65,536.
    pub presence_max_rooms: usize,
    /// Presence: commands (connects, disconnects, requests) queued for the presence task.
    /// Requests that find it full get `rate_limited`. Default 8,192; 16 to 1,048,576.
    pub presence_queue: usize,
    /// Chat: the largest message body, in bytes. Default 16,384; 1 to 1,048,576.
    pub chat_max_body_bytes: usize,
    /// Documents: whether opening an unknown document id creates it (in the space named by the
    /// client, or its organisation's home space). Off: only documents created through the API
    /// open. Default true.
    pub docs_auto_create: bool,
    /// Documents: the largest document, encoded, in bytes; also the largest frame on `/yjs/`.
    /// Default 16 MiB; 1 KiB to 256 MiB.
    pub doc_max_bytes: usize,
    /// Documents: updates appended to a document's log before it is compacted into a
    /// snapshot. Default 500; 1 to 1,000,000.
    pub doc_compact_updates: usize,
    /// Documents: how long a document nobody has open stays in memory. Default 30,000 ms.
    pub doc_idle_ms: u64,
    /// Meetings: whether `meeting.join` creates a missing room (a public chat room of the
    /// space, the caller its owner). Off: joining a missing room gives `not_found`. Default true.
    pub meetings_auto_create: bool,
    /// Meetings: how long a participant whose connection closed stays `reconnecting` (and may
    /// be resumed), in milliseconds. Default 20,000; 0 to 3,600,000.
    pub meeting_grace_ms: u64,
    /// Meetings: active and reconnecting participants per meeting. Default 50; 2 to 1,000.
    pub meeting_max_participants: usize,
    /// Meetings: STUN/TURN URLs (`stun:`, `stuns:`, `turn:`, `turns:`) handed to every
    /// participant, without credentials. Default none (loopback and LAN need none); at most 16.
    pub ice_servers: Vec<String>,
    /// Meetings: TURN URLs (`turn:`, `turns:`) of servers sharing `turn_secret`. At most 16.
    pub turn_urls: Vec<String>,
    /// Meetings: the TURN servers' shared secret (their `static-auth-secret`), at least 16
    /// bytes. When set, each join reply carries time-limited credentials for `turn_urls`.
    /// Default none.
    pub turn_secret: Option<String>,
    /// Meetings: lifetime of minted TURN credentials, in seconds. Default 86,400; 60 to 604,800.
    pub turn_ttl_secs: u64,
    /// Meetings: a new meeting forwards media through the server (SFU mode) when its space has
    /// at least this many members, unless its room's `meeting_mode` or its first `meeting.join`
    /// chose a mode. 0: only when chosen. Default 0; 0 to 1,000,000.
    pub meeting_sfu_from: usize,
    /// Meetings: a peer-to-peer meeting turns into SFU mode, live and for good, when a join
    /// brings it to this many participants (a mesh of video peers breaks beyond three or
    /// four), unless its room's `meeting_mode` or its first `meeting.join` chose `mesh`. Only
    /// with the SFU running. 0: never. Default 5; 0 to 1,000.
    pub meeting_sfu_participants: usize,
    /// SFU: the UDP address media sessions use. Default 127.0.0.1:0 (a free port).
    pub sfu_listen: SocketAddr,
    /// SFU: the addresses offered to clients as the server's candidates, as `host` or
    /// `host:port` (an IP address or a host name, resolved at start; the port defaults to
    /// `sfu_listen`'s). For a server behind NAT, its public address. Default: `sfu_listen`'s
    /// address (which must then be a specific one, not 0.0.0.0). At most 8.
    pub sfu_advertise: Vec<String>,
    /// SFU: tracks published in one meeting at most. Default 200; 1 to 10,000.
    pub sfu_max_tracks: usize,
    /// SFU: the least time between two keyframe requests to one track, in milliseconds.
    /// Default 1,000; 100 to 60,000.
    pub sfu_keyframe_interval_ms: u64,
    /// SFU: estimate the bandwidth towards each participant and keep what it is sent within
    /// the estimate (lower simulcast layers, then, once its link loses packets, paused video;
    /// audio always). Default on.
    pub sfu_bandwidth_estimation: bool,
    /// SFU: media sessions the UDP router knows at most, over all meetings. Default 10,000;
    /// 1 to 1,000,000.
    pub sfu_max_sessions: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7700".parse().expect("valid address"),
            quic_listen: "127.0.0.1:7701".parse().expect("valid address"),
            data_dir: PathBuf::from("./chorus-data"),
            secret: None,
            tls_cert: None,
            tls_key: None,
            log_format: LogFormat::Text,
            max_frame_bytes: 64 * 1024,
            max_subscriptions: 1024,
            max_connections: 100_000,
            rate_per_sec: 500,
            rate_burst: 1000,
            outbox_bytes: 4 * 1024 * 1024,
            heartbeat_ms: 25_000,
            client_timeout_ms: 60_000,
            hello_timeout_ms: 10_000,
            presence_idle_timeout_ms: 300_000,
            presence_grace_ms: 5_000,
            presence_flush_ms: 500,
            presence_typing_interval_ms: 1_000,
            presence_typing_timeout_ms: 5_000,
            presence_log_entries: 4_096,
            presence_scope_retention_ms: 60_000,
            presence_max_scope_users: 1_000,
            presence_max_rooms: 256,
            presence_queue: 8_192,
            chat_max_body_bytes: 16 * 1024,
            docs_auto_create: true,
            doc_max_bytes: 16 << 20,
            doc_compact_updates: 500,
            doc_idle_ms: 30_000,
            meetings_auto_create: true,
            meeting_grace_ms: 20_000,
            meeting_max_participants: 50,
            ice_servers: Vec::new(),
            turn_urls: Vec::new(),
            turn_secret: None,
            turn_ttl_secs: 86_400,
            meeting_sfu_from: 0,
            meeting_sfu_participants: 5,
            sfu_listen: "127.0.0.1:0".parse().expect("valid address"),
            sfu_advertise: Vec::new(),
            sfu_max_tracks: 200,
            sfu_keyframe_interval_ms: 1_000,
            sfu_bandwidth_estimation: true,
            sfu_max_sessions: 10_000,
        }
    }
}

impl Config {
    /// Defaults, then `file` (if given), then `CHORUS_*` variables, then `overrides`.
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                bail!("config file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file(file));
        }
        let config: Config = figment
            .merge(Env::prefixed("CHORUS_"))
            .merge(Serialized::defaults(overrides))
            .extract()
            .context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let in_range = |name: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "{name} = {v} is out of bounds ({lo} to {hi})"
                ))
            }
        };
        in_range(
            "max_frame_bytes",
            self.max_frame_bytes as u64,
            1024,
            16 << 20,
        )?;
        in_range(
            "max_subscriptions",
            self.max_subscriptions as u64,
            1,
            1 << 20,
        )?;
        in_range(
            "max_connections",
            self.max_connections as u64,
            1,
            10_000_000,
        )?;
        in_range("rate_per_sec", self.rate_per_sec.into(), 1, 1_000_000)?;
        in_range("rate_burst", self.rate_burst.into(), 1, 10_000_000)?;
        in_range(
            "outbox_bytes",
            self.outbox_bytes as u64,
            self.max_frame_bytes as u64,
            1 << 30,
        )?;
        in_range("heartbeat_ms", self.heartbeat_ms, 10, 3_600_000)?;
        in_range(
            "client_timeout_ms",
            self.client_timeout_ms,
            self.heartbeat_ms,
            3_600_000,
        )?;
        in_range("hello_timeout_ms", self.hello_timeout_ms, 10, 600_000)?;
        in_range(
            "presence_idle_timeout_ms",
            self.presence_idle_timeout_ms,
            100,
            86_400_000,
        )?;
        in_range("presence_grace_ms", self.presence_grace_ms, 0, 600_000)?;
        in_range("presence_flush_ms", self.presence_flush_ms, 10, 60_000)?;
        in_range(
            "presence_typing_interval_ms",
            self.presence_typing_interval_ms,
            0,
            60_000,
        )?;
        in_range(
            "presence_typing_timeout_ms",
            self.presence_typing_timeout_ms,
            100,
            600_000,
        )?;
        in_range(
            "presence_log_entries",
            self.presence_log_entries as u64,
            16,
            1 << 20,
        )?;
        in_range(
            "presence_scope_retention_ms",
            self.presence_scope_retention_ms,
            0,
            86_400_000,
        )?;
        in_range(
            "presence_max_scope_users",
            self.presence_max_scope_users as u64,
            1,
            100_000,
        )?;
        in_range(
            "presence_max_rooms",
            self.presence_max_rooms as u64,
            1,
            65_536,
        )?;
        in_range("presence_queue", self.presence_queue as u64, 16, 1 << 20)?;
        in_range(
            "chat_max_body_bytes",
            self.chat_max_body_bytes as u64,
            1,
            1 << 20,
        )?;
        in_range("doc_max_bytes", self.doc_max_bytes as u64, 1024, 256 << 20)?;
        in_range(
            "doc_compact_updates",
            self.doc_compact_updates as u64,
            1,
            1_000_000,
        )?;
        in_range("doc_idle_ms", self.doc_idle_ms, 0, 86_400_000)?;
        in_range("meeting_grace_ms", self.meeting_grace_ms, 0, 3_600_000)?;
        in_range(
            "meeting_max_participants",
            self.meeting_max_participants as u64,
            2,
            1_000,
        )?;
        in_range("turn_ttl_secs", self.turn_ttl_secs, 60, 604_800)?;
        in_range(
            "meeting_sfu_from",
            self.meeting_sfu_from as u64,
            0,
            1_000_000,
        )?;
        in_range(
            "meeting_sfu_participants",
            self.meeting_sfu_participants as u64,
            0,
            1_000,
        )?;
        in_range("sfu_max_tracks", self.sfu_max_tracks as u64, 1, 10_000)?;
        in_range(
            "sfu_keyframe_interval_ms",
            self.sfu_keyframe_interval_ms,
            100,
            60_000,
        )?;
        in_range(
            "sfu_max_sessions",
            self.sfu_max_sessions as u64,
            1,
            1_000_000,
        )?;
        if self.sfu_advertise.len() > 8 {
            bail!("sfu_advertise lists at most 8 addresses");
        }
        if self.sfu_advertise.is_empty() && self.sfu_listen.ip().is_unspecified() {
            bail!(
                "sfu_listen = {} is a wildcard address: set sfu_advertise to the address \
                 clients reach the server at",
                self.sfu_listen
            );
        }
        check_urls(
            "ice_servers",
            &self.ice_servers,
            &["stun:", "stuns:", "turn:", "turns:"],
        )?;
        check_urls("turn_urls", &self.turn_urls, &["turn:", "turns:"])?;
        if let Some(secret) = &self.turn_secret {
            if secret.len() < 16 {
                bail!("turn_secret must be at least 16 bytes");
            }
            if self.turn_urls.is_empty() {
                bail!("turn_secret needs turn_urls");
            }
        }
        if let Some(secret) = &self.secret
            && secret.len() < crate::auth::MIN_SECRET_LEN
        {
            bail!(
                "secret must be at least {} bytes",
                crate::auth::MIN_SECRET_LEN
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bail!("tls_cert and tls_key go together");
        }
        Ok(())
    }

    pub fn session(&self) -> SessionConfig {
        SessionConfig {
            max_frame_bytes: self.max_frame_bytes,
            max_subscriptions: self.max_subscriptions,
            rate_per_sec: self.rate_per_sec,
            rate_burst: self.rate_burst,
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            client_timeout: Duration::from_millis(self.client_timeout_ms),
            hello_timeout: Duration::from_millis(self.hello_timeout_ms),
        }
    }

    /// The chat rules' limits.
    pub fn chat_limits(&self) -> crate::chat::rules::ChatLimits {
        crate::chat::rules::ChatLimits {
            max_body_bytes: self.chat_max_body_bytes,
        }
    }

    /// The documents' configuration.
    pub fn docs(&self) -> crate::docs::DocConfig {
        crate::docs::DocConfig {
            limits: crate::docs::sync::Limits {
                max_doc_bytes: self.doc_max_bytes,
                max_awareness_clients: 16,
                max_awareness_bytes: 64 * 1024,
            },
            compact_updates: self.doc_compact_updates,
            idle: Duration::from_millis(self.doc_idle_ms),
        }
    }

    /// The presence core's configuration.
    pub fn presence(&self) -> presence::Config {
        presence::Config {
            idle_timeout: self.presence_idle_timeout_ms,
            grace: self.presence_grace_ms,
            flush_interval: self.presence_flush_ms,
            typing_interval: self.presence_typing_interval_ms,
            typing_timeout: self.presence_typing_timeout_ms,
            log_entries: self.presence_log_entries,
            scope_retention: self.presence_scope_retention_ms,
            max_scope_users: self.presence_max_scope_users,
            max_rooms: self.presence_max_rooms,
            ..presence::Config::default()
        }
    }

    /// The meeting core's configuration.
    pub fn meeting(&self) -> signaling::Config {
        signaling::Config {
            grace_ms: self.meeting_grace_ms,
            max_participants: self.meeting_max_participants,
            sfu_participants: self.meeting_sfu_participants,
        }
    }

    /// Each SFU room's configuration (its candidates are the running SFU's).
    pub fn sfu_room(&self) -> signaling::sfu::RoomConfig {
        signaling::sfu::RoomConfig {
            candidates: Vec::new(),
            max_sessions: self.meeting_max_participants,
            max_tracks: self.sfu_max_tracks,
            keyframe_interval: Duration::from_millis(self.sfu_keyframe_interval_ms),
            bandwidth_estimation: self.sfu_bandwidth_estimation,
            ..signaling::sfu::RoomConfig::default()
        }
    }

    /// The config as TOML, for `--print-config`.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.secret.is_some() {
            shown.secret = Some("<redacted>".into());
        }
        if shown.turn_secret.is_some() {
            shown.turn_secret = Some("<redacted>".into());
        }
        toml::to_string(&shown).expect("the config serializes to TOML")
    }
}

/// At most 16 URLs, each with one of `schemes` and no whitespace.
fn check_urls(name: &str, urls: &[String], schemes: &[&str]) -> anyhow::Result<()> {
    if urls.len() > 16 {
        bail!("{name} lists at most 16 URLs");
    }
    for url in urls {
        let scheme = schemes.iter().find(|s| url.starts_with(**s));
        if scheme.is_none_or(|s| url.len() == s.len())
            || url.len() > 512
            || url.contains(char::is_whitespace)
        {
            bail!(
                "{name}: `{url}` is not a URL starting with one of {}",
                schemes.join(" ")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_file_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("chorus.toml");
        std::fs::write(&file, "max_frame_bytes = 2048\nrate_per_sec = 7\n").unwrap();
        #[derive(Serialize)]
        struct Flags {
            rate_per_sec: u32,
        }
        let c = Config::load(Some(&file), Flags { rate_per_sec: 9 }).unwrap();
        assert_eq!((c.max_frame_bytes, c.rate_per_sec), (2048, 9));
        assert_eq!(c.listen, Config::default().listen);
        let printed: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(printed, c);
    }

    #[test]
    fn rejects_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("chorus.toml");
        for bad in [
            "max_frame_bytes = 1",
            "secret = \"short\"",
            "nonsense = 1",
            "listen = \"nowhere\"",
            "presence_flush_ms = 0",
            "presence_grace_ms = 700000",
            "meeting_max_participants = 1",
            "sfu_listen = \"0.0.0.0:7702\"",
            "sfu_keyframe_interval_ms = 1",
            "ice_servers = [\"http://example.test\"]",
            "turn_urls = [\"stun:example.test\"]",
            "turn_secret = \"0123456789abcdef\"",
        ] {
            std::fs::write(&file, bad).unwrap();
            assert!(Config::load(Some(&file), ()).is_err(), "{bad}");
        }
    }
}
