//! The fan-out core. A channel maps to its subscribers' outboxes; a publish is encoded once per
//! wire encoding in use and the same `Bytes` is queued to every subscriber without waiting.

mod outbox;

pub use outbox::{Batch, CloseReason, ConnId, Outbox, PushError};

use crate::metrics::Metrics;
use crate::protocol::{Encoding, Position, encode_message};
use bytes::Bytes;
use dashmap::DashMap;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("already subscribed to this channel")]
    AlreadySubscribed,
}

struct ChannelState {
    epoch: u64,
    /// Offset of the last message published; 0 before the first.
    offset: u64,
    subscribers: Vec<Arc<Outbox>>,
    /// Where each connection sits in `subscribers`, for O(1) subscribe checks and removal.
    index: HashMap<ConnId, usize>,
    /// Subscribers per encoding, so a publish encodes only what someone will read.
    per_encoding: [usize; 2],
    last_publish: Instant,
    /// Set by `sweep` when the channel left the map; holders of a stale `Arc` must retry.
    removed: bool,
    /// Sequenced channels (fed by `deliver`): subscribers whose replay from the store is in
    /// flight, with what was delivered meanwhile, held back until `catch_up`.
    pending: HashMap<ConnId, Pending>,
    /// Sequenced channels: the last events delivered, oldest first, consecutive offsets, for
    /// resuming from memory.
    tail: VecDeque<(u64, Arc<Value>)>,
}

struct Pending {
    outbox: Arc<Outbox>,
    held: Vec<(u64, Arc<Value>)>,
}

/// Events kept per sequenced channel for resuming from memory.
pub const TAIL: usize = 256;
/// Events held for one catching-up subscriber before it counts as a slow consumer.
const MAX_HELD: usize = 65_536;

/// How `Hub::attach` subscribed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// Subscribed live: every event after `head` will be delivered, and `replayed` events from
    /// memory (those after the requested offset up to `head`) were queued first.
    Live { head: u64, replayed: usize },
    /// Registered, but the events after the requested offset are not all in memory: fetch them
    /// from the store and call `Hub::catch_up`. Deliveries are held until then.
    CatchUp,
}

struct Channel {
    state: Mutex<ChannelState>,
}

pub struct Hub {
    channels: DashMap<Arc<str>, Arc<Channel>>,
    next_epoch: AtomicU64,
    metrics: Arc<Metrics>,
}

/// What one publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub position: Position,
    /// Subscribers the message was queued to.
    pub delivered: usize,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Hub {
        // Epochs start at the current time in microseconds, so a restarted server never reuses
        // an epoch a client may still hold.
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_micros() as u64;
        Hub {
            channels: DashMap::new(),
            next_epoch: AtomicU64::new(seed),
            metrics,
        }
    }

    /// Run `f` on the live state of `name`, creating the channel if needed.
    fn with_channel<R>(&self, name: &str, f: impl FnOnce(&mut ChannelState) -> R) -> R {
        let mut f = Some(f);
        loop {
            let channel = match self.channels.get(name) {
                Some(c) => c.clone(),
                None => self
                    .channels
                    .entry(Arc::from(name))
                    .or_insert_with(|| {
                        Arc::new(Channel {
                            state: Mutex::new(ChannelState {
                                epoch: self.next_epoch.fetch_add(1, Ordering::Relaxed),
                                offset: 0,
                                subscribers: Vec::new(),
                                index: HashMap::new(),
                                per_encoding: [0; 2],
                                last_publish: Instant::now(),
                                removed: false,
                                pending: HashMap::new(),
                                tail: VecDeque::new(),
                            }),
                        })
                    })
                    .clone(),
            };
            let mut state = channel
                .state
                .lock()
                .expect("channel lock is never poisoned");
            if !state.removed {
                let f = f.take().expect("called once");
                return f(&mut state);
            }
        }
    }

    /// Add `outbox` to the channel's subscribers; returns the channel's current position.
    pub fn subscribe(&self, name: &str, outbox: &Arc<Outbox>) -> Result<Position, HubError> {
        self.with_channel(name, |state| {
            if state.index.contains_key(&outbox.id()) {
                return Err(HubError::AlreadySubscribed);
            }
            let slot = state.subscribers.len();
            state.index.insert(outbox.id(), slot);
            state.subscribers.push(outbox.clone());
            state.per_encoding[outbox.encoding().index()] += 1;
            Ok(Position {
                epoch: state.epoch,
                offset: state.offset,
            })
        })
    }

    /// Remove connection `conn` from the channel; returns whether it was subscribed.
    pub fn unsubscribe(&self, name: &str, conn: ConnId) -> bool {
        let Some(channel) = self.channels.get(name).map(|c| c.clone()) else {
            return false;
        };
        let mut state = channel
            .state
            .lock()
            .expect("channel lock is never poisoned");
        if state.pending.remove(&conn).is_some() {
            return true;
        }
        let Some(i) = state.index.remove(&conn) else {
            return false;
        };
        let outbox = state.subscribers.swap_remove(i);
        if let Some(moved) = state.subscribers.get(i) {
            let moved = moved.id();
            state.index.insert(moved, i);
        }
        state.per_encoding[outbox.encoding().index()] -= 1;
        true
    }

    /// Publish `data` on the channel: assign the next offset and queue the encoded message to
    /// every subscriber. Never waits: a subscriber whose queue is full is closed as slow.
    pub fn publish(&self, name: &str, data: &Value) -> Published {
        self.with_channel(name, |state| {
            state.offset += 1;
            let offset = state.offset;
            let delivered = self.fan_out(name, state, offset, data);
            Published {
                position: Position {
                    epoch: state.epoch,
                    offset,
                },
                delivered,
            }
        })
    }

    /// Queue the `message` frame of event `offset` to every live subscriber of the channel,
    /// encoded once per encoding they read. Returns how many took it (the others were closed,
    /// or are closed now as slow consumers).
    fn fan_out(&self, name: &str, state: &mut ChannelState, offset: u64, data: &Value) -> usize {
        let now = Instant::now();
        state.last_publish = now;
        let mut frames: [Option<Bytes>; 2] = [None, None];
        for encoding in Encoding::ALL {
            if state.per_encoding[encoding.index()] > 0 {
                frames[encoding.index()] = Some(encode_message(name, offset, data, encoding));
            }
        }
        let now = tokio::time::Instant::from_std(now);
        // Counted once for all, and ahead: a writer may uncount its frame as soon as it is queued.
        let subscribers = state.subscribers.len();
        self.metrics.queued_frames.inc_by(subscribers as i64);
        let mut delivered = 0;
        for sub in &state.subscribers {
            let frame = frames[sub.encoding().index()]
                .as_ref()
                .expect("encoded above");
            delivered += usize::from(sub.push_uncounted(frame.clone(), now).is_ok());
        }
        self.metrics
            .queued_frames
            .dec_by((subscribers - delivered) as i64);
        self.metrics.publishes.inc();
        self.metrics.deliveries.inc_by(delivered as u64);
        delivered
    }

    /// Deliver the event at `offset` of a sequenced channel, whose positions are assigned
    /// elsewhere (a chat room's by the store). Calls for one channel must come from one thread
    /// in offset order without gaps. Never waits; returns the subscribers it was queued to.
    pub fn deliver(&self, name: &str, offset: u64, data: Value) -> usize {
        // No channel, no subscribers: nothing to do, and the tail would have a gap later.
        let Some(channel) = self.channels.get(name).map(|c| c.clone()) else {
            return 0;
        };
        let mut state = channel
            .state
            .lock()
            .expect("channel lock is never poisoned");
        if state.removed || state.tail.back().is_some_and(|(last, _)| *last >= offset) {
            return 0;
        }
        state.offset = offset;
        let delivered = self.fan_out(name, &mut state, offset, &data);
        let data = Arc::new(data);
        state.pending.retain(|_, pending| {
            pending.held.push((offset, data.clone()));
            let overflow = pending.held.len() > MAX_HELD;
            if overflow {
                pending.outbox.close(CloseReason::abort(
                    crate::protocol::ErrorCode::SlowConsumer,
                    "fell too far behind while catching up",
                    true,
                ));
            }
            !overflow
        });
        state.tail.push_back((offset, data));
        if state.tail.len() > TAIL {
            state.tail.pop_front();
        }
        delivered
    }

    /// Empty the tail of a sequenced channel, so resumes from before now go to the store. For
    /// when earlier events' data went stale (a chat message edited or deleted since).
    pub fn forget_tail(&self, name: &str) {
        if let Some(channel) = self.channels.get(name).map(|c| c.clone()) {
            channel
                .state
                .lock()
                .expect("channel lock is never poisoned")
                .tail
                .clear();
        }
    }

    /// Subscribe `outbox` to a sequenced channel, resuming after offset `after` (`None`: from
    /// now on, without replay). Events after it that are still in memory are queued at once, in
    /// order, ahead of live ones; otherwise the caller replays from the store (`Attach::CatchUp`).
    pub fn attach(
        &self,
        name: &str,
        outbox: &Arc<Outbox>,
        after: Option<u64>,
    ) -> Result<Attach, HubError> {
        self.with_channel(name, |state| {
            if state.index.contains_key(&outbox.id()) || state.pending.contains_key(&outbox.id()) {
                return Err(HubError::AlreadySubscribed);
            }
            // The tail ends at the last event delivered, so it knows the head, and it covers
            // `after` if it starts at most right after it.
            let covered = match (after, state.tail.front(), state.tail.back()) {
                (None, _, Some((head, _))) => Some((*head, 0)),
                (Some(after), Some((first, _)), Some((head, _)))
                    if after <= *head && *first <= after + 1 =>
                {
                    let now = tokio::time::Instant::now();
                    let mut replayed = 0;
                    for (offset, data) in state.tail.iter().filter(|(o, _)| *o > after) {
                        let frame = encode_message(name, *offset, data, outbox.encoding());
                        if outbox.push(frame, now).is_ok() {
                            replayed += 1;
                        }
                    }
                    Some((*head, replayed))
                }
                _ => None,
            };
            match covered {
                Some((head, replayed)) => {
                    Self::add_live(state, outbox);
                    Ok(Attach::Live { head, replayed })
                }
                None => {
                    let pending = Pending {
                        outbox: outbox.clone(),
                        held: Vec::new(),
                    };
                    state.pending.insert(outbox.id(), pending);
                    Ok(Attach::CatchUp)
                }
            }
        })
    }

    /// Finish an `Attach::CatchUp`: queue `replay` (the events the caller read from the store,
    /// in order, ending at offset `head`, which the caller read after `attach`), then what was
    /// delivered meanwhile after `head`, and go live. Returns the head of what was queued, or
    /// `None` if the subscription ended meanwhile.
    pub fn catch_up(
        &self,
        name: &str,
        conn: ConnId,
        replay: impl IntoIterator<Item = (u64, Value)>,
        head: u64,
    ) -> Option<u64> {
        let channel = self.channels.get(name).map(|c| c.clone())?;
        let mut state = channel
            .state
            .lock()
            .expect("channel lock is never poisoned");
        let pending = state.pending.remove(&conn)?;
        let outbox = pending.outbox;
        let now = tokio::time::Instant::now();
        let mut last = head;
        let held = pending.held.iter().filter(|(offset, _)| *offset > head);
        let replay: Vec<(u64, Arc<Value>)> =
            replay.into_iter().map(|(o, v)| (o, Arc::new(v))).collect();
        for (offset, data) in replay.iter().chain(held) {
            let frame = encode_message(name, *offset, data, outbox.encoding());
            // A full outbox closes its connection as a slow consumer.
            let _ = outbox.push(frame, now);
            last = last.max(*offset);
        }
        Self::add_live(&mut state, &outbox);
        Some(last)
    }

    fn add_live(state: &mut ChannelState, outbox: &Arc<Outbox>) {
        let slot = state.subscribers.len();
        state.index.insert(outbox.id(), slot);
        state.subscribers.push(outbox.clone());
        state.per_encoding[outbox.encoding().index()] += 1;
    }

    /// `publish`, but only to a channel that exists (has subscribers, or had recently): for
    /// events nobody needs to hear about when nobody listens. `None` when it does not exist.
    pub fn publish_if_open(&self, name: &str, data: &Value) -> Option<Published> {
        let channel = self.channels.get(name).map(|c| c.clone())?;
        if channel
            .state
            .lock()
            .expect("channel lock is never poisoned")
            .removed
        {
            return None;
        }
        // Raced with a sweep at worst: the channel is recreated, and nobody is subscribed.
        Some(self.publish(name, data))
    }

    /// Forget channels without subscribers and without a publish for `idle`. A channel that
    /// comes back later starts a new epoch.
    pub fn sweep(&self, idle: Duration) {
        let now = Instant::now();
        self.channels.retain(|_, channel| {
            let mut state = channel
                .state
                .lock()
                .expect("channel lock is never poisoned");
            let dead = state.subscribers.is_empty()
                && state.pending.is_empty()
                && now.duration_since(state.last_publish) >= idle;
            state.removed = dead;
            !dead
        });
    }

    /// Whether channel `name` exists (it has subscribers, or had recently); `deliver` to one
    /// that does not is a no-op.
    pub fn is_open(&self, name: &str) -> bool {
        self.channels.contains_key(name)
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn outbox(id: ConnId, encoding: Encoding, limit: usize) -> Arc<Outbox> {
        let outbox = Outbox::new(id, limit, Arc::new(Metrics::new()));
        outbox.set_encoding(encoding);
        Arc::new(outbox)
    }

    async fn drain(outbox: &Outbox) -> Vec<Bytes> {
        let mut out = VecDeque::new();
        match outbox.next_batch(&mut out).await {
            Batch::Frames(_) => out.into_iter().collect(),
            Batch::Closed(reason) => panic!("closed: {reason:?}"),
        }
    }

    #[tokio::test]
    async fn fans_out_in_order_with_shared_bytes() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let subs: Vec<_> = (0..3).map(|i| outbox(i, Encoding::Json, 1 << 20)).collect();
        for s in &subs {
            hub.subscribe("topic:s/a", s).unwrap();
        }
        assert_eq!(
            hub.subscribe("topic:s/a", &subs[0]),
            Err(HubError::AlreadySubscribed)
        );
        for n in 0..5 {
            let p = hub.publish("topic:s/a", &serde_json::json!(n));
            assert_eq!((p.position.offset, p.delivered), (n + 1, 3));
        }
        let first = drain(&subs[0]).await;
        assert_eq!(first.len(), 5);
        for s in &subs[1..] {
            let frames = drain(s).await;
            // The very same allocation, not a copy.
            assert_eq!(frames[0].as_ptr(), first[0].as_ptr());
        }
        let text = std::str::from_utf8(&first[4]).unwrap();
        assert_eq!(
            text,
            r#"{"type":"message","channel":"topic:s/a","offset":5,"data":4}"#
        );
    }

    #[tokio::test]
    async fn queued_frames_counts_what_outboxes_hold() {
        let metrics = Arc::new(Metrics::new());
        let queued = || metrics.queued_frames.get();
        let hub = Hub::new(metrics.clone());
        let new = |id| Arc::new(Outbox::new(id, 1 << 20, metrics.clone()));
        let (drained, closed, dropped) = (new(1), new(2), new(3));
        for outbox in [&drained, &closed, &dropped] {
            hub.subscribe("topic:s/a", outbox).unwrap();
        }
        hub.publish("topic:s/a", &serde_json::json!(1));
        // A frame queued by a service outside the hub counts the same.
        drained
            .push(Bytes::from_static(b"{}"), tokio::time::Instant::now())
            .unwrap();
        assert_eq!(queued(), 4);
        assert_eq!(drain(&drained).await.len(), 2);
        assert_eq!(queued(), 2);
        closed.close(CloseReason::abort(
            crate::protocol::ErrorCode::Forbidden,
            "x",
            false,
        ));
        let mut out = VecDeque::new();
        assert!(matches!(
            closed.next_batch(&mut out).await,
            Batch::Closed(_)
        ));
        assert_eq!(queued(), 1);
        hub.unsubscribe("topic:s/a", 3);
        drop(dropped);
        assert_eq!(queued(), 0);
    }

    #[tokio::test]
    async fn slow_consumer_is_closed_and_others_continue() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let slow = outbox(1, Encoding::Json, 200);
        let fast = outbox(2, Encoding::Msgpack, 1 << 20);
        hub.subscribe("topic:s/a", &slow).unwrap();
        hub.subscribe("topic:s/a", &fast).unwrap();
        for n in 0..20 {
            hub.publish("topic:s/a", &serde_json::json!(n));
        }
        assert!(slow.is_closed());
        let mut out = VecDeque::new();
        match slow.next_batch(&mut out).await {
            Batch::Closed(r) => assert_eq!(r.code, crate::protocol::ErrorCode::SlowConsumer),
            Batch::Frames(_) => panic!("a slow consumer's queue is dropped"),
        }
        assert_eq!(drain(&fast).await.len(), 20);
    }

    #[tokio::test]
    async fn unsubscribe_keeps_the_index_consistent() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let subs: Vec<_> = (0..5).map(|i| outbox(i, Encoding::Json, 1 << 20)).collect();
        for s in &subs {
            hub.subscribe("c", s).unwrap();
        }
        // Remove from the middle, then the one moved into its place, then the first.
        for id in [1, 4, 0] {
            assert!(hub.unsubscribe("c", id));
            assert!(!hub.unsubscribe("c", id));
        }
        assert_eq!(hub.publish("c", &serde_json::json!(1)).delivered, 2);
        for id in [2, 3] {
            assert_eq!(drain(&subs[id as usize]).await.len(), 1);
            assert_eq!(
                hub.subscribe("c", &subs[id as usize]),
                Err(HubError::AlreadySubscribed)
            );
        }
        hub.subscribe("c", &subs[4]).unwrap();
        assert_eq!(hub.publish("c", &serde_json::json!(2)).delivered, 3);
    }

    #[test]
    fn sweep_forgets_idle_channels_and_epochs_change() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let sub = outbox(1, Encoding::Json, 1 << 20);
        let first = hub.subscribe("topic:s/a", &sub).unwrap();
        hub.sweep(Duration::ZERO);
        assert_eq!(hub.channel_count(), 1, "a channel with subscribers stays");
        assert!(hub.unsubscribe("topic:s/a", 1));
        assert!(!hub.unsubscribe("topic:s/a", 1));
        hub.sweep(Duration::ZERO);
        assert_eq!(hub.channel_count(), 0);
        let second = hub.subscribe("topic:s/a", &sub).unwrap();
        assert_ne!(first.epoch, second.epoch);
        assert_eq!(second.offset, 0);
    }

    /// The offsets of the `message` frames in `frames`.
    fn offsets(frames: &[Bytes]) -> Vec<u64> {
        frames
            .iter()
            .map(|f| {
                serde_json::from_slice::<Value>(f).unwrap()["offset"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    #[tokio::test]
    async fn sequenced_channels_resume_from_memory() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        // Nobody listens: nothing is kept.
        assert_eq!(hub.deliver("room:s/r", 1, serde_json::json!(1)), 0);
        assert_eq!(hub.channel_count(), 0);
        let first = outbox(1, Encoding::Json, 1 << 20);
        assert_eq!(hub.attach("room:s/r", &first, None), Ok(Attach::CatchUp));
        assert_eq!(
            hub.attach("room:s/r", &first, None),
            Err(HubError::AlreadySubscribed)
        );
        assert_eq!(hub.catch_up("room:s/r", 1, [], 1), Some(1));
        for n in 2..=6 {
            assert_eq!(hub.deliver("room:s/r", n, serde_json::json!(n)), 1);
        }
        // A repeated or stale offset is not delivered twice.
        assert_eq!(hub.deliver("room:s/r", 6, serde_json::json!(6)), 0);
        assert_eq!(offsets(&drain(&first).await), [2, 3, 4, 5, 6]);

        // The tail starts at 2: resuming after 1 or later replays from memory.
        let second = outbox(2, Encoding::Msgpack, 1 << 20);
        assert_eq!(
            hub.attach("room:s/r", &second, Some(3)),
            Ok(Attach::Live {
                head: 6,
                replayed: 3
            })
        );
        hub.deliver("room:s/r", 7, serde_json::json!(7));
        let frames = drain(&second).await;
        let decoded: Vec<u64> = frames
            .iter()
            .map(|f| {
                rmp_serde::from_slice::<Value>(f).unwrap()["offset"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(decoded, [4, 5, 6, 7]);
        let third = outbox(3, Encoding::Json, 1 << 20);
        assert_eq!(
            hub.attach("room:s/r", &third, Some(7)),
            Ok(Attach::Live {
                head: 7,
                replayed: 0
            })
        );
        // After 0 is not in memory (1 was never kept).
        let fourth = outbox(4, Encoding::Json, 1 << 20);
        assert_eq!(
            hub.attach("room:s/r", &fourth, Some(0)),
            Ok(Attach::CatchUp)
        );
        // A forgotten tail restarts with the next delivery.
        hub.forget_tail("room:s/r");
        hub.deliver("room:s/r", 8, serde_json::json!(8));
        let fifth = outbox(5, Encoding::Json, 1 << 20);
        assert_eq!(hub.attach("room:s/r", &fifth, Some(6)), Ok(Attach::CatchUp));
        let sixth = outbox(6, Encoding::Json, 1 << 20);
        assert_eq!(
            hub.attach("room:s/r", &sixth, Some(7)),
            Ok(Attach::Live {
                head: 8,
                replayed: 1
            })
        );
    }

    #[tokio::test]
    async fn catching_up_holds_live_events_until_the_replay() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let sub = outbox(1, Encoding::Json, 1 << 20);
        assert_eq!(hub.attach("room:s/r", &sub, Some(4)), Ok(Attach::CatchUp));
        // Delivered while the replay is read from the store: held, not queued.
        hub.deliver("room:s/r", 8, serde_json::json!(8));
        hub.deliver("room:s/r", 9, serde_json::json!(9));
        // The store read saw up to 8: the held 8 is a duplicate, 9 is new.
        let replay = (5..=8).map(|n| (n, serde_json::json!(n)));
        assert_eq!(hub.catch_up("room:s/r", 1, replay, 8), Some(9));
        hub.deliver("room:s/r", 10, serde_json::json!(10));
        assert_eq!(offsets(&drain(&sub).await), [5, 6, 7, 8, 9, 10]);

        // A subscription that ends while catching up is not resurrected.
        let gone = outbox(2, Encoding::Json, 1 << 20);
        assert_eq!(hub.attach("room:s/r", &gone, Some(0)), Ok(Attach::CatchUp));
        assert!(hub.unsubscribe("room:s/r", 2));
        assert_eq!(hub.catch_up("room:s/r", 2, [], 10), None);
        assert_eq!(hub.deliver("room:s/r", 11, serde_json::json!(11)), 1);
    }
}
