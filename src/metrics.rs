//! Prometheus metrics. Hot paths hold cloned handles (`Counter` and `Gauge` are atomics behind an
//! `Arc`), so recording never looks anything up.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Ws,
    Quic,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Quic => "quic",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

/// The counters one transport's connections update.
#[derive(Clone, Default)]
pub struct TransportMetrics {
    pub connections: Gauge,
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
}

pub struct Metrics {
    registry: Registry,
    ws: TransportMetrics,
    quic: TransportMetrics,
    pub publishes: Counter,
    pub deliveries: Counter,
    pub slow_consumers: Counter,
    pub rejected_connections: Counter,
    /// Frames queued in all outboxes and not yet written.
    pub queued_frames: Gauge,
    /// Time from a frame entering an empty outbox to the write that carried it.
    pub publish_to_write: Histogram,
    pub presence: PresenceMetrics,
    pub docs: DocMetrics,
    pub meetings: MeetingMetrics,
    pub sfu: SfuMetrics,
}

/// What the SFU reports.
#[derive(Clone, Default)]
pub struct SfuMetrics {
    /// Meetings in SFU mode (one room each).
    pub rooms: Gauge,
    /// Media sessions (one per participant) over all rooms.
    pub sessions: Gauge,
    /// RTP packets forwarded to subscribers (once per subscriber).
    pub forwarded_packets: Counter,
    /// Their payload bytes.
    pub forwarded_bytes: Counter,
    /// Datagrams dropped: no room for them, a room's queue full, or the socket's buffer full.
    pub dropped_datagrams: Counter,
    /// Media frames not forwarded to a subscriber: its session's queue was full, or (video)
    /// a burst at its bandwidth estimate waited in it already.
    pub dropped_frames: Counter,
}

/// What the meetings report.
#[derive(Clone, Default)]
pub struct MeetingMetrics {
    /// Meetings live (with a task).
    pub open: Gauge,
    /// Active and reconnecting participants over all meetings.
    pub participants: Gauge,
    /// Joins accepted (resumes included).
    pub joins: Counter,
    /// Signals (offers, answers, candidates) relayed.
    pub signals: Counter,
    /// Data messages relayed.
    pub data: Counter,
}

/// What the co-edited documents report.
#[derive(Clone, Default)]
pub struct DocMetrics {
    /// Documents in memory.
    pub open: Gauge,
    /// Connections on documents (all transports).
    pub connections: Gauge,
    /// Loads of a document from the store.
    pub loads: Counter,
    /// Updates the documents accepted.
    pub updates: Counter,
    /// Store writes: merged appends and compactions.
    pub appends: Counter,
    pub compactions: Counter,
}

/// What the presence task reports: gauges refreshed about once a second, and the frames it
/// queued.
#[derive(Clone, Default)]
pub struct PresenceMetrics {
    pub users: Gauge,
    pub connections: Gauge,
    pub scopes: Gauge,
    pub subscriptions: Gauge,
    pub frames: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("chorus");
        let connections = Family::<TransportLabel, Gauge>::default();
        let counters: [Family<TransportLabel, Counter>; 4] = Default::default();
        let [frames_in, frames_out, bytes_in, bytes_out] = counters;
        let per_transport = |t: Transport| TransportMetrics {
            connections: connections.get_or_create_owned(&TransportLabel {
                transport: t.as_str(),
            }),
            frames_in: frames_in.get_or_create_owned(&TransportLabel {
                transport: t.as_str(),
            }),
            frames_out: frames_out.get_or_create_owned(&TransportLabel {
                transport: t.as_str(),
            }),
            bytes_in: bytes_in.get_or_create_owned(&TransportLabel {
                transport: t.as_str(),
            }),
            bytes_out: bytes_out.get_or_create_owned(&TransportLabel {
                transport: t.as_str(),
            }),
        };
        let (ws, quic) = (per_transport(Transport::Ws), per_transport(Transport::Quic));
        registry.register("connections", "Open client connections", connections);
        registry.register("frames_in", "Frames received from clients", frames_in);
        registry.register("frames_out", "Frames written to clients", frames_out);
        registry.register("bytes_in", "Frame payload bytes received", bytes_in);
        registry.register("bytes_out", "Frame payload bytes written", bytes_out);
        let metrics = Metrics {
            ws,
            quic,
            publishes: Counter::default(),
            deliveries: Counter::default(),
            slow_consumers: Counter::default(),
            rejected_connections: Counter::default(),
            queued_frames: Gauge::default(),
            publish_to_write: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            presence: PresenceMetrics::default(),
            docs: DocMetrics::default(),
            meetings: MeetingMetrics::default(),
            sfu: SfuMetrics::default(),
            registry: Registry::default(),
        };
        let d = &metrics.docs;
        registry.register("docs_open", "Documents in memory", d.open.clone());
        registry.register(
            "docs_connections",
            "Connections on documents",
            d.connections.clone(),
        );
        for (name, help, counter) in [
            ("docs_loads", "Documents loaded from the store", &d.loads),
            ("docs_updates", "Updates the documents accepted", &d.updates),
            (
                "docs_appends",
                "Store appends of (merged) document updates",
                &d.appends,
            ),
            (
                "docs_compactions",
                "Documents compacted into a snapshot",
                &d.compactions,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        let m = &metrics.meetings;
        registry.register("meetings_open", "Meetings live", m.open.clone());
        registry.register(
            "meetings_participants",
            "Active and reconnecting meeting participants",
            m.participants.clone(),
        );
        for (name, help, counter) in [
            ("meetings_joins", "Meeting joins accepted", &m.joins),
            ("meetings_signals", "Meeting signals relayed", &m.signals),
            ("meetings_data", "Meeting data messages relayed", &m.data),
        ] {
            registry.register(name, help, counter.clone());
        }
        let f = &metrics.sfu;
        registry.register("sfu_rooms", "Meetings in SFU mode", f.rooms.clone());
        registry.register("sfu_sessions", "SFU media sessions", f.sessions.clone());
        for (name, help, counter) in [
            (
                "sfu_forwarded_packets",
                "RTP packets the SFU forwarded (once per subscriber)",
                &f.forwarded_packets,
            ),
            (
                "sfu_forwarded_bytes",
                "Payload bytes the SFU forwarded",
                &f.forwarded_bytes,
            ),
            (
                "sfu_dropped_datagrams",
                "SFU datagrams dropped (unrouted, room queue or socket buffer full)",
                &f.dropped_datagrams,
            ),
            (
                "sfu_dropped_frames",
                "Media frames the SFU did not forward to a subscriber (session queue full, or a burst at its bandwidth estimate waiting)",
                &f.dropped_frames,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        let p = &metrics.presence;
        for (name, help, gauge) in [
            (
                "presence_users",
                "Users present (online, away, busy, or in their grace period)",
                &p.users,
            ),
            (
                "presence_connections",
                "Connections the presence core tracks, lingering ones included",
                &p.connections,
            ),
            (
                "presence_scopes",
                "Presence scopes kept (subscribed or within their retention)",
                &p.scopes,
            ),
            (
                "presence_subscriptions",
                "Presence subscriptions of this node's connections",
                &p.subscriptions,
            ),
        ] {
            registry.register(name, help, gauge.clone());
        }
        registry.register(
            "presence_frames",
            "Presence frames queued to subscribers (each a batch of changes)",
            p.frames.clone(),
        );
        registry.register(
            "publishes",
            "Messages published to channels",
            metrics.publishes.clone(),
        );
        registry.register(
            "deliveries",
            "Messages queued to subscribers",
            metrics.deliveries.clone(),
        );
        registry.register(
            "slow_consumer_disconnects",
            "Connections closed because their outbound queue overflowed",
            metrics.slow_consumers.clone(),
        );
        registry.register(
            "rejected_connections",
            "Connections refused at the connection limit",
            metrics.rejected_connections.clone(),
        );
        registry.register(
            "outbox_queued_frames",
            "Frames waiting in outbound queues",
            metrics.queued_frames.clone(),
        );
        registry.register(
            "publish_to_write_seconds",
            "Delay from enqueueing a frame to writing it to the socket",
            metrics.publish_to_write.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    pub fn transport(&self, t: Transport) -> &TransportMetrics {
        match t {
            Transport::Ws => &self.ws,
            Transport::Quic => &self.quic,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
