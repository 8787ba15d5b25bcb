//! Who may open which document: ids, creation in a space (or the organisation's home
//! space), and read-only access. Shared by `/yjs/`, the session protocol and the HTTP API.

use crate::access::{Action, Claims, Grant, Role};
use crate::protocol::{ErrorCode, PresenceRequest};
use crate::server::Shared;
use crate::spaces::ServiceError;
use crate::store::{DocRecord, StoreError};

/// A document id is 1 to 128 of A-Z a-z 0-9 - _ . : / (a path, as Yjs apps often name rooms).
pub fn check_doc_id(id: &str) -> Result<(), ServiceError> {
    let valid = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(ServiceError::new(
            ErrorCode::InvalidRequest,
            "a document id is 1 to 128 of A-Z a-z 0-9 - _ . : /",
        ))
    }
}

/// Enter (or leave) the presence room of a document's viewers: `doc:<id>` in its space.
pub fn viewing(doc: &DocRecord, inside: bool) -> PresenceRequest {
    let room = presence::RoomId {
        space: doc.space.clone(),
        id: format!("doc:{}", doc.id),
    };
    if inside {
        PresenceRequest::JoinRoom { id: 0, room }
    } else {
        PresenceRequest::LeaveRoom { id: 0, room }
    }
}

/// Document `id` for `claims`' user, created (in `space`, default the home space) if it does
/// not exist and the configuration allows it; and whether the user may only read it.
pub async fn open(
    shared: &Shared,
    claims: &Claims,
    id: &str,
    space: Option<&str>,
) -> Result<(DocRecord, bool), ServiceError> {
    let doc = open_or_create(shared, claims, id, space).await?;
    // Not telling a stranger whether the document exists.
    shared
        .spaces
        .check(claims, Action::Subscribe, &doc.space)
        .await
        .map_err(|_| ServiceError::new(ErrorCode::Forbidden, "no access to this document"))?;
    let read_only = shared
        .spaces
        .check(claims, Action::Publish, &doc.space)
        .await
        .is_err();
    Ok((doc, read_only))
}

/// Document `id`, created in `space` (or the caller's home space) if it does not exist and
/// the configuration allows it.
async fn open_or_create(
    shared: &Shared,
    claims: &Claims,
    id: &str,
    space: Option<&str>,
) -> Result<DocRecord, ServiceError> {
    check_doc_id(id)?;
    if let Some(doc) = shared.docs.store().doc(id).await? {
        return Ok(doc);
    }
    if !shared.config.docs_auto_create {
        return Err(ServiceError::new(ErrorCode::NotFound, "no such document"));
    }
    if !claims.has(Grant::Publish) {
        // A reader who follows a link before its author opened it: not final, retry later.
        return Err(ServiceError::new(
            ErrorCode::RateLimited,
            "the document does not exist yet; retry once someone who may write has opened it",
        ));
    }
    create(shared, claims, id, space).await
}

/// Create document `id` in `space` (or the caller's home space): the caller must be allowed
/// to publish there. If someone created it meanwhile, that document is returned.
pub async fn create(
    shared: &Shared,
    claims: &Claims,
    id: &str,
    space: Option<&str>,
) -> Result<DocRecord, ServiceError> {
    let now = crate::server::unix_ms();
    let space = match space {
        Some(space) => space.to_string(),
        None => shared.spaces.home(claims, now).await?.id,
    };
    shared.spaces.check(claims, Action::Publish, &space).await?;
    let doc = DocRecord {
        id: id.to_string(),
        space,
        created_by: claims.sub.clone(),
        created_ms: now,
    };
    match shared.docs.store().create_doc(doc.clone()).await {
        Ok(()) => Ok(doc),
        Err(StoreError::AlreadyExists(_)) => shared
            .docs
            .store()
            .doc(id)
            .await?
            .ok_or_else(|| ServiceError::new(ErrorCode::Internal, "document vanished")),
        Err(e) => Err(e.into()),
    }
}

/// A new document `id` (default: a random id) in `space` (default: the home space);
/// `already_exists` if the id is taken.
pub async fn create_new(
    shared: &Shared,
    claims: &Claims,
    id: Option<String>,
    space: Option<&str>,
) -> Result<DocRecord, ServiceError> {
    let id = id.unwrap_or_else(crate::spaces::random_id);
    check_doc_id(&id)?;
    if shared.docs.store().doc(&id).await?.is_some() {
        return Err(ServiceError::new(
            ErrorCode::AlreadyExists,
            format!("document {id} exists"),
        ));
    }
    create(shared, claims, &id, space).await
}

/// The documents of `space`, by id, for a caller who may read the space.
pub async fn list(
    shared: &Shared,
    claims: &Claims,
    space: &str,
) -> Result<Vec<DocRecord>, ServiceError> {
    shared
        .spaces
        .check(claims, Action::Subscribe, space)
        .await?;
    Ok(shared.docs.store().docs_in(space).await?)
}

/// Document `id` if the caller may read it; `not_found` otherwise, as if it did not exist.
pub async fn readable(
    shared: &Shared,
    claims: &Claims,
    id: &str,
) -> Result<DocRecord, ServiceError> {
    let not_found = || ServiceError::new(ErrorCode::NotFound, "no such document");
    let doc = shared.docs.store().doc(id).await?.ok_or_else(not_found)?;
    shared
        .spaces
        .check(claims, Action::Subscribe, &doc.space)
        .await
        .map_err(|_| not_found())?;
    Ok(doc)
}

/// Delete document `id`: for its creator (while they may still write in its space), the
/// space's owner, or an admin of the space's organisation. Its open connections are closed.
pub async fn delete(shared: &Shared, claims: &Claims, id: &str) -> Result<(), ServiceError> {
    let doc = readable(shared, claims, id).await?;
    let (space, role) = shared
        .spaces
        .view(claims, &doc.space)
        .await?
        .ok_or_else(|| ServiceError::new(ErrorCode::NotFound, "no such document"))?;
    let creator = doc.created_by == claims.sub
        && shared
            .spaces
            .check(claims, Action::Publish, &doc.space)
            .await
            .is_ok();
    let manager =
        role == Some(Role::Owner) || (claims.has(Grant::Admin) && space.org == claims.org);
    if !creator && !manager {
        return Err(ServiceError::new(
            ErrorCode::Forbidden,
            "only the document's creator or the space's managers may delete it",
        ));
    }
    shared.docs.store().delete_doc(id).await?;
    shared.docs.deleted(id).await;
    Ok(())
}
