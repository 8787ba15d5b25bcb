//! Durable state behind one port. SQLite in the data dir is the embedded default; other
//! implementations (PostgreSQL for scale-out) implement the same trait and pass the same tests.

#[cfg(test)]
mod contract;
mod sqlite;

pub use sqlite::SqliteStore;

use crate::access::Role;
use serde::{Deserialize, Serialize};

/// A shared workspace owned by one organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Space {
    pub id: String,
    /// The owning organisation.
    pub org: String,
    pub name: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: i64,
}

/// A user's membership of a space. The key is (space, user); `org` is the user's home organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub space: String,
    pub user: String,
    pub org: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A record with this key exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The record the operation needs does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The database failed; the operation may be retried.
    #[error("storage failure: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The persistence port. Every method returns only after its effect is durable.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Create a space and make `owner` (of the space's organisation) its owner, atomically.
    async fn create_space(&self, space: Space, owner: &str) -> StoreResult<()>;
    async fn space(&self, id: &str) -> StoreResult<Option<Space>>;
    /// The spaces `user` is a member of, by id.
    async fn spaces_of(&self, user: &str) -> StoreResult<Vec<Space>>;
    /// Insert or update a membership. Fails with `NotFound` if the space does not exist.
    async fn put_member(&self, member: Member) -> StoreResult<()>;
    /// Remove a membership; returns whether it existed.
    async fn remove_member(&self, space: &str, user: &str) -> StoreResult<bool>;
    async fn member(&self, space: &str, user: &str) -> StoreResult<Option<Member>>;
    /// The members of a space, by user id.
    async fn members(&self, space: &str) -> StoreResult<Vec<Member>>;
}
