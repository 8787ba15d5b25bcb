//! Live connections by user, so a change to a user's access reaches their open sessions at once.

use crate::hub::{CloseReason, Outbox};
use crate::protocol::ErrorCode;
use dashmap::DashMap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// What another task may ask of a connection.
#[derive(Debug, Clone)]
pub enum Control {
    /// Drop every subscription to channels of `space`: the user may no longer use them.
    Revoke { space: String, reason: String },
    /// Drop the subscription to `channel` (e.g. the user left a private room).
    RevokeChannel { channel: String, reason: String },
}

/// Control messages queued for one connection; its reader drains them.
#[derive(Default)]
pub struct Mailbox {
    queue: Mutex<VecDeque<Control>>,
    ready: Notify,
}

/// Messages a mailbox holds before the connection counts as unable to keep up.
const MAILBOX_CAP: usize = 16;

impl Mailbox {
    /// Queue `control`; false if the mailbox is full.
    fn post(&self, control: Control) -> bool {
        let mut queue = self.queue.lock().expect("mailbox lock is never poisoned");
        if queue.len() >= MAILBOX_CAP {
            return false;
        }
        queue.push_back(control);
        drop(queue);
        self.ready.notify_one();
        true
    }

    /// Wait until something is queued, then take it all.
    pub async fn take(&self) -> VecDeque<Control> {
        loop {
            let taken =
                std::mem::take(&mut *self.queue.lock().expect("mailbox lock is never poisoned"));
            if !taken.is_empty() {
                return taken;
            }
            self.ready.notified().await;
        }
    }
}

struct Entry {
    mailbox: Arc<Mailbox>,
    outbox: Arc<Outbox>,
}

#[derive(Default)]
pub struct Users {
    connections: DashMap<String, Vec<Entry>>,
}

impl Users {
    pub fn register(&self, user: &str, mailbox: Arc<Mailbox>, outbox: Arc<Outbox>) {
        self.connections
            .entry(user.to_string())
            .or_default()
            .push(Entry { mailbox, outbox });
    }

    pub fn unregister(&self, user: &str, conn: u64) {
        self.connections.remove_if_mut(user, |_, entries| {
            entries.retain(|e| e.outbox.id() != conn);
            entries.is_empty()
        });
    }

    /// Revoke `user`'s access to `space` on every open connection. A connection whose mailbox
    /// is full cannot be trusted to apply it in time, so it is closed instead.
    pub fn revoke(&self, user: &str, space: &str, reason: &str) {
        let control = Control::Revoke {
            space: space.to_string(),
            reason: reason.to_string(),
        };
        self.post(user, control, reason);
    }

    /// Revoke `user`'s access to one channel on every open connection, as `revoke` does.
    pub fn revoke_channel(&self, user: &str, channel: &str, reason: &str) {
        let control = Control::RevokeChannel {
            channel: channel.to_string(),
            reason: reason.to_string(),
        };
        self.post(user, control, reason);
    }

    fn post(&self, user: &str, control: Control, reason: &str) {
        let Some(entries) = self.connections.get(user) else {
            return;
        };
        for entry in entries.iter() {
            if !entry.mailbox.post(control.clone()) {
                entry
                    .outbox
                    .close(CloseReason::abort(ErrorCode::Forbidden, reason, true));
            }
        }
    }
}
