//! Live connections by user, so a change to a user's access reaches their open sessions at once.

use crate::hub::{CloseReason, Outbox};
use crate::protocol::ErrorCode;
use dashmap::DashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What another task may ask of a connection.
#[derive(Debug, Clone)]
pub enum Control {
    /// Drop every subscription to channels of `space`: the user may no longer use them.
    Revoke { space: String, reason: String },
}

struct Entry {
    conn: u64,
    control: mpsc::Sender<Control>,
    outbox: Arc<Outbox>,
}

#[derive(Default)]
pub struct Users {
    connections: DashMap<String, Vec<Entry>>,
}

impl Users {
    pub fn register(&self, user: &str, control: mpsc::Sender<Control>, outbox: Arc<Outbox>) {
        let conn = outbox.id();
        self.connections
            .entry(user.to_string())
            .or_default()
            .push(Entry {
                conn,
                control,
                outbox,
            });
    }

    pub fn unregister(&self, user: &str, conn: u64) {
        self.connections.remove_if_mut(user, |_, entries| {
            entries.retain(|e| e.conn != conn);
            entries.is_empty()
        });
    }

    /// Revoke `user`'s access to `space` on every open connection. A connection whose control
    /// queue is full cannot be trusted to apply it in time, so it is closed instead.
    pub fn revoke(&self, user: &str, space: &str, reason: &str) {
        let Some(entries) = self.connections.get(user) else {
            return;
        };
        let control = Control::Revoke {
            space: space.to_string(),
            reason: reason.to_string(),
        };
        for entry in entries.iter() {
            if entry.control.try_send(control.clone()).is_err() {
                entry
                    .outbox
                    .close(CloseReason::abort(ErrorCode::Forbidden, reason, true));
            }
        }
    }
}
