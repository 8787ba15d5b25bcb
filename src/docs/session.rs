//! Documents over the session protocol (`doc.open`, `doc.sync`, `doc.close`): the same
//! documents, rules and y-websocket messages as `/yjs/`, on the connection's one socket.

use super::open::{create_new, delete, list, open, viewing};
use super::{Joined, Wire};
use crate::access::Claims;
use crate::hub::Outbox;
use crate::protocol::{DocRequest, ErrorCode};
use crate::server::Shared;
use crate::spaces::ServiceError;
use crate::store::DocRecord;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// The documents one session has open.
#[derive(Default)]
pub struct OpenDocs {
    open: HashMap<String, (DocRecord, Joined)>,
}

impl OpenDocs {
    /// Execute a `doc.*` request of connection `conn` (whose frames go to `outbox`).
    pub async fn execute(
        &mut self,
        shared: &Shared,
        claims: &Claims,
        conn: u64,
        outbox: &Arc<Outbox>,
        request: DocRequest,
    ) -> Result<Value, ServiceError> {
        match request {
            DocRequest::Open { doc, space, .. } => {
                if !self.open.contains_key(&doc)
                    && self.open.len() >= shared.config.max_subscriptions
                {
                    return Err(ServiceError::new(
                        ErrorCode::TooManySubscriptions,
                        format!(
                            "a session holds at most {} open documents",
                            shared.config.max_subscriptions
                        ),
                    ));
                }
                let (record, read_only) = open(shared, claims, &doc, space.as_deref()).await?;
                // Opening it again starts over: the old membership ends first.
                self.close(shared, conn, &doc).await;
                let joined = shared
                    .docs
                    .join(&doc, conn, outbox.clone(), Wire::Session, read_only)
                    .await
                    .map_err(|m| ServiceError::new(ErrorCode::Internal, m))?;
                // Best effort: presence may be busy; the document works without it.
                let _ = shared.presence.tell(conn, viewing(&record, true)).await;
                let reply = json!({"doc": record, "read_only": read_only});
                self.open.insert(doc, (record, joined));
                Ok(reply)
            }
            DocRequest::Sync { doc, data, .. } => {
                let (_, joined) = self.open.get(&doc).ok_or_else(|| not_open(&doc))?;
                // The document's task is gone only after it closed this session's use of it.
                if !joined.frame(data.0).await {
                    return Err(not_open(&doc));
                }
                Ok(json!({}))
            }
            DocRequest::Close { doc, .. } => {
                if !self.close(shared, conn, &doc).await {
                    return Err(not_open(&doc));
                }
                Ok(json!({}))
            }
            DocRequest::Create { doc, space, .. } => {
                let doc = create_new(shared, claims, doc, space.as_deref()).await?;
                Ok(json!(doc))
            }
            DocRequest::List { space, .. } => {
                let docs = list(shared, claims, &space).await?;
                Ok(json!({"space": space, "docs": docs}))
            }
            DocRequest::Delete { doc, .. } => {
                delete(shared, claims, &doc).await?;
                Ok(json!({}))
            }
        }
    }

    /// Leave document `doc` if it is open; false if it was not.
    async fn close(&mut self, shared: &Shared, conn: u64, doc: &str) -> bool {
        let Some((record, joined)) = self.open.remove(doc) else {
            return false;
        };
        joined.leave().await;
        let _ = shared.presence.tell(conn, viewing(&record, false)).await;
        true
    }

    /// The connection closed: leave every document.
    pub async fn close_all(self) {
        for (_, (_, joined)) in self.open {
            joined.leave().await;
        }
    }
}

fn not_open(doc: &str) -> ServiceError {
    ServiceError::new(
        ErrorCode::NotSubscribed,
        format!("document {doc} is not open (doc.open first)"),
    )
}
