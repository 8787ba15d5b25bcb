//! Who may open which document: ids, creation in a space (or the organisation's home
//! space), and read-only access. Shared by `/yjs/`, the session protocol and the HTTP API.

use crate::access::{Action, Claims};
use crate::protocol::ErrorCode;
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

/// The presence room of a document's viewers: `doc:<id>` in its space.
pub fn viewers(doc: &DocRecord) -> presence::RoomId {
    presence::RoomId {
        space: doc.space.clone(),
        id: format!("doc:{}", doc.id),
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
