//! Documents over the HTTP API: create, list, read, delete, and export a document's content as
//! JSON (every root type) or plain text (one text root). A document id with `/` in it travels
//! percent-encoded in a path (`notes%2Ftoday`).

use super::open;
use crate::http::{ApiError, ApiResult, Authed};
use crate::protocol::ErrorCode;
use crate::server::Shared;
use crate::spaces::ServiceError;
use crate::store::DocRecord;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::{Array, GetString, Map, ReadTxn, Transact, Update};

type AppState = State<Arc<Shared>>;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/docs", axum::routing::post(create_doc))
        .route("/api/docs/{id}", get(doc).delete(delete_doc))
        .route("/api/docs/{id}/content", get(content))
        .route("/api/spaces/{space}/docs", get(list))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    /// Default: a random id.
    id: Option<String>,
    /// Default: the caller's organisation's home space.
    space: Option<String>,
}

/// `POST /api/docs`: 201 with the document, 409 if the id is taken.
async fn create_doc(
    State(shared): AppState,
    Authed(claims): Authed,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<DocRecord>)> {
    let Json(body) = body?;
    let doc = open::create_new(&shared, &claims, body.id, body.space.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(doc)))
}

/// `GET /api/spaces/{space}/docs`: the space's documents, by id.
async fn list(
    State(shared): AppState,
    Authed(claims): Authed,
    space: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Vec<DocRecord>>> {
    let Path(space) = space.map_err(|e| invalid(&e.body_text()))?;
    Ok(Json(open::list(&shared, &claims, &space).await?))
}

/// `GET /api/docs/{id}`.
async fn doc(
    State(shared): AppState,
    Authed(claims): Authed,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<DocRecord>> {
    let Path(id) = id.map_err(|e| invalid(&e.body_text()))?;
    Ok(Json(open::readable(&shared, &claims, &id).await?))
}

/// `DELETE /api/docs/{id}` (`open::delete` says by whom).
async fn delete_doc(
    State(shared): AppState,
    Authed(claims): Authed,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let Path(id) = id.map_err(|e| invalid(&e.body_text()))?;
    open::delete(&shared, &claims, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContentParams {
    /// `json` (default) or `text`.
    format: Option<String>,
    /// With `text`: the text root to export.
    root: Option<String>,
}

/// `GET /api/docs/{id}/content?format=json|text&root=NAME`: every root as JSON (an object by
/// root name), or one text root as plain text.
async fn content(
    State(shared): AppState,
    Authed(claims): Authed,
    id: Result<Path<String>, PathRejection>,
    params: Result<Query<ContentParams>, QueryRejection>,
) -> ApiResult<Response> {
    let Path(id) = id.map_err(|e| invalid(&e.body_text()))?;
    let Query(params) = params.map_err(|e| invalid(&e.body_text()))?;
    open::readable(&shared, &claims, &id).await?;
    let state = shared
        .docs
        .state(&id)
        .await
        .map_err(|e| ApiError(ServiceError::new(ErrorCode::Internal, e)))?;
    let doc = yrs::Doc::new();
    let update = Update::decode_v1(&state)
        .map_err(|e| ApiError(ServiceError::new(ErrorCode::Internal, e.to_string())))?;
    doc.transact_mut()
        .apply_update(update)
        .map_err(|e| ApiError(ServiceError::new(ErrorCode::Internal, e.to_string())))?;
    let txn = doc.transact();
    match (params.format.as_deref().unwrap_or("json"), params.root) {
        ("json", None) => Ok(Json(roots_json(&txn)).into_response()),
        ("text", Some(root)) => {
            let text = txn.get_text(root.as_str()).ok_or_else(|| {
                ApiError(ServiceError::new(
                    ErrorCode::NotFound,
                    format!("the document has no root `{root}`"),
                ))
            })?;
            let body = text.get_string(&txn);
            Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
        }
        ("json", Some(_)) => Err(invalid("`root` goes with format=text")),
        ("text", None) => Err(invalid("format=text needs `root`, the text root to export")),
        (other, _) => Err(invalid(&format!("unknown format `{other}`: json or text"))),
    }
}

/// Every root of the document as JSON, by name. A root's type is not in the updates (each
/// client names it when it reads the root), so it is told from its content: entries make a
/// map, characters a text (a string), other items an array; an empty root is `null`.
fn roots_json(txn: &yrs::Transaction<'_>) -> serde_json::Map<String, serde_json::Value> {
    let names: Vec<String> = txn.root_refs().map(|(name, _)| name.to_string()).collect();
    names
        .into_iter()
        .map(|name| {
            let map = txn.get_map(name.as_str()).filter(|m| m.len(txn) > 0);
            let text = txn
                .get_text(name.as_str())
                .map(|t| t.get_string(txn))
                .filter(|s| !s.is_empty());
            let array = txn.get_array(name.as_str()).filter(|a| a.len(txn) > 0);
            let value = match (map, text, array) {
                (Some(map), _, _) => json_of(&map.to_json(txn)),
                (None, Some(text), _) => serde_json::Value::String(text),
                (None, None, Some(array)) => json_of(&array.to_json(txn)),
                (None, None, None) => serde_json::Value::Null,
            };
            (name, value)
        })
        .collect()
}

fn json_of(any: &yrs::Any) -> serde_json::Value {
    serde_json::to_value(any).unwrap_or(serde_json::Value::Null)
}

fn invalid(message: &str) -> ApiError {
    ApiError(ServiceError::new(ErrorCode::InvalidRequest, message))
}
