//! The SFU's UDP side: one socket carries every media session of every meeting in SFU mode.
//! The media itself is handled by each meeting's task, which owns its `signaling::sfu::Room`
//! (see `meetings/`); this module only moves datagrams.
//!
//! A datagram reaches its room by its source address, or, for the first STUN binding request
//! of a session, by the ICE username fragment the request names: each room registers the
//! ufrags of its sessions (`route`) and the router remembers the addresses their requests came
//! from. Both tables are bounded. A room's queue is bounded too: a datagram that finds it full
//! is dropped, never waited for (UDP may lose it anyway), and so is a datagram the socket's
//! send buffer has no room for.

use crate::config::Config;
use crate::metrics::SfuMetrics;
use anyhow::Context;
use bytes::Bytes;
use dashmap::DashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The largest datagram read; WebRTC keeps its packets under 1,500 bytes.
const MAX_DATAGRAM: usize = 2048;
/// Source addresses remembered per session (ICE may try a few).
const ADDRS_PER_SESSION: usize = 8;

/// One datagram for a room.
#[derive(Debug)]
pub struct Datagram {
    pub source: SocketAddr,
    /// The server's candidate it was sent to.
    pub destination: SocketAddr,
    /// When it was read.
    pub at: Instant,
    pub contents: Bytes,
}

/// A room's queue of datagrams.
pub type Inbox = mpsc::Sender<Datagram>;

/// The SFU's socket and routing tables, shared by the meeting tasks.
pub struct Sfu {
    socket: UdpSocket,
    candidates: Vec<SocketAddr>,
    /// Rooms by the ufrag of each of their sessions.
    routes: DashMap<String, Inbox>,
    /// The ufrag each known source address sent for.
    addrs: DashMap<SocketAddr, String>,
    max_sessions: usize,
    metrics: SfuMetrics,
}

/// Bind the SFU's UDP socket (before serving, so tests can use port 0).
pub fn bind(config: &Config) -> anyhow::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(config.sfu_listen)
        .with_context(|| format!("cannot listen on {} (UDP, SFU)", config.sfu_listen))?;
    socket.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(socket)?)
}

impl Sfu {
    /// The SFU on `socket`, offering the configured addresses (resolved now).
    pub async fn new(
        socket: UdpSocket,
        config: &Config,
        metrics: SfuMetrics,
    ) -> anyhow::Result<Sfu> {
        let local = socket.local_addr()?;
        let mut candidates = Vec::new();
        for entry in &config.sfu_advertise {
            for addr in resolve(entry, local.port()).await? {
                if !candidates.contains(&addr) {
                    candidates.push(addr);
                }
            }
        }
        if candidates.is_empty() {
            candidates.push(local);
        }
        Ok(Sfu {
            socket,
            candidates,
            routes: DashMap::new(),
            addrs: DashMap::new(),
            max_sessions: config.sfu_max_sessions,
            metrics,
        })
    }

    /// The addresses offered to clients.
    pub fn candidates(&self) -> &[SocketAddr] {
        &self.candidates
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Send the datagrams of `ufrag`'s session to `inbox`. False when the router knows as many
    /// sessions as it may.
    pub fn route(&self, ufrag: String, inbox: Inbox) -> bool {
        if self.routes.len() >= self.max_sessions {
            return false;
        }
        self.routes.insert(ufrag, inbox);
        true
    }

    /// Forget `ufrag`'s session and the addresses it came from.
    pub fn unroute(&self, ufrag: &str) {
        if self.routes.remove(ufrag).is_some() {
            self.addrs.retain(|_, u| u != ufrag);
        }
    }

    /// Send `contents` to `destination` if the socket can take it now; otherwise drop it.
    pub fn send(&self, destination: SocketAddr, contents: &[u8]) {
        if self.socket.try_send_to(contents, destination).is_err() {
            self.metrics.dropped_datagrams.inc();
        }
    }

    /// Read datagrams and hand each to its room until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let received = tokio::select! {
                r = self.socket.recv_from(&mut buf) => r,
                _ = shutdown.cancelled() => return,
            };
            match received {
                Ok((n, source)) => self.dispatch(source, &buf[..n]),
                // ICMP errors of earlier sends surface here on some systems: keep reading.
                Err(e) => tracing::trace!(error = %e, "SFU socket read"),
            }
        }
    }

    fn dispatch(&self, source: SocketAddr, contents: &[u8]) {
        let inbox = match signaling::sfu::stun_ufrag(contents) {
            Some(ufrag) => {
                let inbox = self.routes.get(ufrag).map(|r| r.clone());
                // A known address may start a new session (a client resuming on the same
                // socket): its later datagrams follow the ufrag it names now.
                let known = self.addrs.get(&source).map(|u| *u == ufrag);
                let room =
                    known.is_some() || self.addrs.len() < self.max_sessions * ADDRS_PER_SESSION;
                if inbox.is_some() && known != Some(true) && room {
                    self.addrs.insert(source, ufrag.to_string());
                }
                inbox
            }
            None => self
                .addrs
                .get(&source)
                .and_then(|ufrag| self.routes.get(ufrag.as_str()).map(|r| r.clone())),
        };
        let Some(inbox) = inbox else {
            self.metrics.dropped_datagrams.inc();
            return;
        };
        let datagram = Datagram {
            source,
            destination: self.destination(source),
            at: Instant::now(),
            contents: Bytes::copy_from_slice(contents),
        };
        if inbox.try_send(datagram).is_err() {
            self.metrics.dropped_datagrams.inc();
        }
    }

    /// The candidate a datagram from `source` was sent to: the first of its address family.
    fn destination(&self, source: SocketAddr) -> SocketAddr {
        (self.candidates.iter())
            .find(|c| c.is_ipv4() == source.is_ipv4())
            .copied()
            .unwrap_or(self.candidates[0])
    }
}

/// `entry` (`host` or `host:port`, the host an IP address or a name) as socket addresses.
async fn resolve(entry: &str, port: u16) -> anyhow::Result<Vec<SocketAddr>> {
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    if let Ok(ip) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (host, port) = match entry.rsplit_once(':') {
        Some((host, p)) => match p.parse::<u16>() {
            Ok(p) => (host, p),
            Err(_) => anyhow::bail!("sfu_advertise: `{entry}` has a bad port"),
        },
        None => (entry, port),
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("sfu_advertise: cannot resolve `{host}`"))?
        .collect();
    if addrs.is_empty() {
        anyhow::bail!("sfu_advertise: `{host}` has no address");
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A STUN binding request naming `username`, with a priority and an integrity that is
    /// never checked: routing reads the username only.
    fn binding_request(username: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        for (kind, value) in [
            (0x0006u16, username.as_bytes()),
            (0x0024, &[0, 0, 0, 1][..]),
            (0x0008, &[0; 20][..]),
        ] {
            attrs.extend_from_slice(&kind.to_be_bytes());
            attrs.extend_from_slice(&(value.len() as u16).to_be_bytes());
            attrs.extend_from_slice(value);
            attrs.resize(attrs.len().div_ceil(4) * 4, 0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&0x2112_A442u32.to_be_bytes());
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[tokio::test]
    async fn datagrams_follow_their_session_route() {
        let config = Config::default();
        let metrics = SfuMetrics::default();
        let sfu = Sfu::new(bind(&config).unwrap(), &config, metrics.clone());
        let sfu = sfu.await.unwrap();
        let (a, mut a_rx) = mpsc::channel(8);
        let (b, mut b_rx) = mpsc::channel(8);
        assert!(sfu.route("ufa".into(), a));
        let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let media = [0x80, 0x60, 0, 1];

        // Unknown: dropped. A first STUN request teaches the router its address.
        sfu.dispatch(client, &media);
        assert_eq!(metrics.dropped_datagrams.get(), 1);
        sfu.dispatch(client, &binding_request("ufa:cli"));
        sfu.dispatch(client, &media);
        let stun = a_rx.try_recv().unwrap();
        assert_eq!(stun.contents, binding_request("ufa:cli"));
        let got = a_rx.try_recv().unwrap();
        assert_eq!((got.source, &got.contents[..]), (client, &media[..]));
        assert_eq!(got.destination, sfu.candidates()[0]);

        // The same address starts a new session: its datagrams follow it.
        assert!(sfu.route("ufb".into(), b));
        sfu.dispatch(client, &binding_request("ufb:cli"));
        sfu.dispatch(client, &media);
        assert!(b_rx.try_recv().is_ok() && b_rx.try_recv().is_ok());
        assert!(a_rx.try_recv().is_err());

        // Unrouted, it is forgotten with its addresses.
        sfu.unroute("ufb");
        sfu.dispatch(client, &media);
        assert_eq!(metrics.dropped_datagrams.get(), 2);
        assert!(sfu.addrs.is_empty());
    }

    #[tokio::test]
    async fn advertised_entries_resolve_with_the_bound_port() {
        let ip = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            resolve("203.0.113.7", 7702).await.unwrap(),
            [ip("203.0.113.7:7702")]
        );
        assert_eq!(
            resolve("203.0.113.7:9000", 7702).await.unwrap(),
            [ip("203.0.113.7:9000")]
        );
        assert_eq!(resolve("[::1]", 7702).await.unwrap(), [ip("[::1]:7702")]);
        let local = resolve("localhost:7000", 7702).await.unwrap();
        assert!(
            local
                .iter()
                .all(|a| a.port() == 7000 && a.ip().is_loopback())
        );
        assert!(resolve("localhost:port", 7702).await.is_err());
    }
}
