//! The bus: how a publish reaches the subscribers of every node. `LocalBus` serves one process;
//! a NATS implementation (scale-out) will implement the same trait, with each node delivering
//! what arrives from the bus into its own `Hub`.

use crate::hub::{Hub, Published};
use serde_json::Value;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus could not take the message; the publish may be retried.
    #[error("the message bus is unavailable: {0}")]
    Unavailable(String),
}

#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publish `data` on `channel` to its subscribers on every node; returns the position the
    /// message took in the channel's stream and how many local subscribers it was queued to.
    async fn publish(&self, channel: &str, data: &Value) -> Result<Published, BusError>;
}

/// The in-process bus: this node is the whole cluster, and its hub sequences every channel.
pub struct LocalBus {
    hub: Arc<Hub>,
}

impl LocalBus {
    pub fn new(hub: Arc<Hub>) -> LocalBus {
        LocalBus { hub }
    }
}

#[async_trait::async_trait]
impl Bus for LocalBus {
    async fn publish(&self, channel: &str, data: &Value) -> Result<Published, BusError> {
        Ok(self.hub.publish(channel, data))
    }
}
