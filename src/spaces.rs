//! Spaces and their members: the store for durability, a read-through cache for the hot path,
//! and the authorizer on every call. The session protocol and the HTTP API both go through here.

use crate::access::{Action, Claims, Denied, Role, SpaceView, authorize, default_role};
use crate::channel::is_id;
use crate::protocol::ErrorCode;
use crate::store::{Member, Space, Store, StoreError};
use dashmap::DashMap;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

/// A failed operation: a stable code and a message safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServiceError {
    pub code: ErrorCode,
    pub message: String,
}

impl ServiceError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ServiceError {
        ServiceError {
            code,
            message: message.into(),
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists(what) => {
                ServiceError::new(ErrorCode::AlreadyExists, format!("{what} already exists"))
            }
            StoreError::NotFound(what) => {
                ServiceError::new(ErrorCode::NotFound, format!("{what} not found"))
            }
            StoreError::Backend(detail) => {
                tracing::error!(%detail, "store failure");
                ServiceError::new(ErrorCode::Internal, "storage failure; retry later")
            }
        }
    }
}

impl From<Denied> for ServiceError {
    fn from(e: Denied) -> Self {
        match e {
            Denied::NoSuchSpace | Denied::NoSuchRoom => {
                ServiceError::new(ErrorCode::NotFound, e.to_string())
            }
            Denied::Forbidden(_) => ServiceError::new(ErrorCode::Forbidden, e.to_string()),
        }
    }
}

/// Told of every membership change once it is committed (and the cache knows), so live state
/// derived from memberships (presence) follows. The change's request is answered only after
/// `memberships_changed` returns.
#[async_trait::async_trait]
pub trait MembershipListener: Send + Sync + 'static {
    /// `user`'s memberships changed, for whichever organisation they were granted to.
    async fn memberships_changed(&self, spaces: &Spaces, user: &str);
}

/// What the cache holds for one space.
struct Entry {
    space: Space,
    members: HashMap<String, Member>,
}

pub struct Spaces {
    store: Arc<dyn Store>,
    /// Spaces by id. Misses are not cached, so probing random ids cannot grow it.
    cache: DashMap<String, Arc<Entry>>,
    /// Bumped on every change to a space, so a load that raced with a change is not cached.
    generations: DashMap<String, u64>,
    listener: OnceLock<Arc<dyn MembershipListener>>,
}

impl Spaces {
    pub fn new(store: Arc<dyn Store>) -> Spaces {
        Spaces {
            store,
            cache: DashMap::new(),
            generations: DashMap::new(),
            listener: OnceLock::new(),
        }
    }

    /// Set the one listener to membership changes; a second call is ignored.
    pub fn set_listener(&self, listener: Arc<dyn MembershipListener>) {
        let _ = self.listener.set(listener);
    }

    async fn changed(&self, user: &str) {
        if let Some(listener) = self.listener.get() {
            listener.memberships_changed(self, user).await;
        }
    }

    /// The spaces `user` of `org` is a member of: memberships granted to another organisation
    /// do not count (as in `access::authorize`), and the organisation's home space counts once
    /// it exists. Read from the store, not the cache.
    pub async fn memberships(
        &self,
        user: &str,
        org: &str,
    ) -> Result<BTreeSet<String>, ServiceError> {
        let mut spaces: BTreeSet<String> = self
            .store
            .memberships_of(user)
            .await?
            .into_iter()
            .filter(|m| m.org == org)
            .map(|m| m.space)
            .collect();
        if let Some(home) = home_id(org)
            && self.store.space(&home).await?.is_some()
        {
            spaces.insert(home);
        }
        Ok(spaces)
    }

    fn generation(&self, id: &str) -> u64 {
        self.generations.get(id).map_or(0, |g| *g)
    }

    fn invalidate(&self, id: &str) {
        *self.generations.entry(id.to_string()).or_insert(0) += 1;
        self.cache.remove(id);
    }

    async fn entry(&self, id: &str) -> Result<Option<Arc<Entry>>, ServiceError> {
        if let Some(hit) = self.cache.get(id) {
            return Ok(Some(hit.clone()));
        }
        let generation = self.generation(id);
        let entry = match self.store.space(id).await? {
            None => None,
            Some(space) => {
                let members = self.store.members(id).await?;
                Some(Arc::new(Entry {
                    space,
                    members: members.into_iter().map(|m| (m.user.clone(), m)).collect(),
                }))
            }
        };
        if let Some(entry) = &entry
            && self.generation(id) == generation
        {
            self.cache.insert(id.to_string(), entry.clone());
        }
        Ok(entry)
    }

    /// Space `id` and the caller's role in it (a membership granted to another organisation
    /// does not count), or `None` if it does not exist: what a service that authorizes its own
    /// actions within a space (chat rooms) passes to `access::authorize`.
    pub async fn view(
        &self,
        claims: &Claims,
        id: &str,
    ) -> Result<Option<(Space, Option<Role>)>, ServiceError> {
        Ok(self
            .entry(id)
            .await?
            .map(|e| (e.space.clone(), role_of(&e, claims))))
    }

    /// `user`'s membership of space `id`, if any.
    pub async fn member(&self, id: &str, user: &str) -> Result<Option<Member>, ServiceError> {
        Ok(self
            .entry(id)
            .await?
            .and_then(|e| e.members.get(user).cloned()))
    }

    /// Decide `action` by `claims` on space `id`; returns the space when allowed.
    pub async fn check(
        &self,
        claims: &Claims,
        action: Action<'_>,
        id: &str,
    ) -> Result<Space, ServiceError> {
        let entry = self.entry(id).await?;
        let view = entry.as_ref().map(|e| SpaceView {
            org: &e.space.org,
            role: role_of(e, claims),
        });
        authorize(claims, action, view)?;
        Ok(entry
            .expect("authorize refuses missing spaces")
            .space
            .clone())
    }

    pub async fn create(
        &self,
        claims: &Claims,
        id: Option<String>,
        name: String,
        now_ms: i64,
    ) -> Result<Space, ServiceError> {
        authorize(claims, Action::CreateSpace, None)?;
        let id = match id {
            Some(id) if id.starts_with(HOME_PREFIX) => {
                return Err(ServiceError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "space ids starting with `{HOME_PREFIX}` are organisations' home spaces"
                    ),
                ));
            }
            Some(id) if is_id(&id) => id,
            Some(id) => {
                return Err(ServiceError::new(
                    ErrorCode::InvalidRequest,
                    format!("`{id}` is not a valid space id: 1 to 64 of A-Z a-z 0-9 - _ ."),
                ));
            }
            None => random_id(),
        };
        if name.is_empty() || name.len() > 200 {
            return Err(ServiceError::new(
                ErrorCode::InvalidRequest,
                "a space name is 1 to 200 bytes",
            ));
        }
        let space = Space {
            id: id.clone(),
            org: claims.org.clone(),
            name,
            created_ms: now_ms,
        };
        self.store.create_space(space.clone(), &claims.sub).await?;
        self.invalidate(&id);
        self.changed(&claims.sub).await;
        Ok(space)
    }

    /// The caller's organisation's home space, created on first use with the caller as its
    /// owner (who may then add guests).
    pub async fn home(&self, claims: &Claims, now_ms: i64) -> Result<Space, ServiceError> {
        let id = home_id(&claims.org).ok_or_else(|| {
            ServiceError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "organisation `{}` has no home space (its id is not a valid space id): name a space",
                    claims.org
                ),
            )
        })?;
        if let Some(entry) = self.entry(&id).await? {
            return Ok(entry.space.clone());
        }
        let space = Space {
            id: id.clone(),
            org: claims.org.clone(),
            name: format!("{} (home)", claims.org),
            created_ms: now_ms,
        };
        match self.store.create_space(space.clone(), &claims.sub).await {
            // Another user of the organisation created it meanwhile.
            Ok(()) | Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.invalidate(&id);
        self.changed(&claims.sub).await;
        Ok(space)
    }

    /// The spaces the caller is a member of.
    pub async fn list(&self, claims: &Claims) -> Result<Vec<Space>, ServiceError> {
        let mut spaces = self.store.spaces_of(&claims.sub).await?;
        // A membership counts only for the organisation it was granted to.
        let mut visible = Vec::with_capacity(spaces.len());
        for space in spaces.drain(..) {
            if self
                .check(claims, Action::ReadSpace, &space.id)
                .await
                .is_ok()
            {
                visible.push(space);
            }
        }
        Ok(visible)
    }

    pub async fn members(&self, claims: &Claims, id: &str) -> Result<Vec<Member>, ServiceError> {
        self.check(claims, Action::ReadSpace, id).await?;
        let entry = self
            .entry(id)
            .await?
            .ok_or_else(|| ServiceError::new(ErrorCode::NotFound, "no such space"))?;
        let mut members: Vec<Member> = entry.members.values().cloned().collect();
        members.sort_by(|a, b| a.user.cmp(&b.user));
        Ok(members)
    }

    pub async fn add_member(
        &self,
        claims: &Claims,
        id: &str,
        user: String,
        org: String,
        role: Option<Role>,
    ) -> Result<Member, ServiceError> {
        if !is_id(&org) || user.is_empty() || user.len() > 200 {
            return Err(ServiceError::new(
                ErrorCode::InvalidRequest,
                "a member needs a user id and a valid organisation id",
            ));
        }
        let space_org = self.entry(id).await?.map(|e| e.space.org.clone());
        let role = role.unwrap_or_else(|| default_role(space_org.as_deref().unwrap_or(""), &org));
        self.check(claims, Action::AddMember { org: &org, role }, id)
            .await?;
        let member = Member {
            space: id.to_string(),
            user,
            org,
            role,
        };
        self.store.put_member(member.clone()).await?;
        self.invalidate(id);
        self.changed(&member.user).await;
        Ok(member)
    }

    pub async fn remove_member(
        &self,
        claims: &Claims,
        id: &str,
        user: &str,
    ) -> Result<(), ServiceError> {
        self.check(claims, Action::RemoveMember { user }, id)
            .await?;
        let existed = self.store.remove_member(id, user).await?;
        self.invalidate(id);
        if existed {
            self.changed(user).await;
            Ok(())
        } else {
            Err(ServiceError::new(
                ErrorCode::NotFound,
                format!("`{user}` is not a member"),
            ))
        }
    }
}

/// A fresh random id: 16 lowercase hex digits.
pub fn random_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS provides randomness");
    hex::encode(bytes)
}

/// Home space ids are this prefix and the organisation's id; no one else may create them.
pub const HOME_PREFIX: &str = "_";

/// The id of `org`'s home space, if `org` makes a valid space id.
pub fn home_id(org: &str) -> Option<String> {
    let id = format!("{HOME_PREFIX}{org}");
    is_id(&id).then_some(id)
}

/// The caller's role in a space: their membership (one granted to another organisation does
/// not count), or, in their organisation's home space, member at least.
fn role_of(entry: &Entry, claims: &Claims) -> Option<Role> {
    let explicit = entry
        .members
        .get(&claims.sub)
        .filter(|m| m.org == claims.org)
        .map(|m| m.role);
    let home = entry.space.org == claims.org
        && home_id(&claims.org).is_some_and(|id| id == entry.space.id);
    explicit.or(home.then_some(Role::Member))
}
