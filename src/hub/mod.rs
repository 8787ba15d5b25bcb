//! The fan-out core. A channel maps to its subscribers' outboxes; a publish is encoded once per
//! wire encoding in use and the same `Bytes` is queued to every subscriber without waiting.

mod outbox;

pub use outbox::{Batch, CloseReason, ConnId, Outbox, PushError};

use crate::metrics::Metrics;
use crate::protocol::{Encoding, Position, encode_message};
use bytes::Bytes;
use dashmap::DashMap;
use serde_json::Value;
use std::collections::HashMap;
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
            state.last_publish = Instant::now();
            let offset = state.offset;
            let mut frames: [Option<Bytes>; 2] = [None, None];
            for encoding in Encoding::ALL {
                if state.per_encoding[encoding.index()] > 0 {
                    frames[encoding.index()] = Some(encode_message(name, offset, data, encoding));
                }
            }
            let now = tokio::time::Instant::now();
            let mut delivered = 0;
            for sub in &state.subscribers {
                let frame = frames[sub.encoding().index()]
                    .as_ref()
                    .expect("encoded above");
                if sub.push(frame.clone(), now).is_ok() {
                    delivered += 1;
                }
            }
            self.metrics.publishes.inc();
            self.metrics.deliveries.inc_by(delivered as u64);
            self.metrics.queued_frames.inc_by(delivered as i64);
            Published {
                position: Position {
                    epoch: state.epoch,
                    offset,
                },
                delivered,
            }
        })
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
            let dead =
                state.subscribers.is_empty() && now.duration_since(state.last_publish) >= idle;
            state.removed = dead;
            !dead
        });
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
}
