//! Documents over the HTTP API: create, list, read, delete, and export a document's content as
//! JSON (every root type) or plain text (one text root). A document id with `/` in it travels
//! percent-encoded in a path (`notes%2Ftoday`).

use super::open;
use crate::http::{ApiError, ApiResult, Authed, ErrorBody, bad_request, path, query};
use crate::protocol::ErrorCode;
use crate::server::Shared;
use crate::spaces::ServiceError;
use crate::store::DocRecord;
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::{Array, GetString, Map, ReadTxn, Transact, Update};

type AppState = State<Arc<Shared>>;

/// The document routes, documented; `http::router` serves them with the OpenAPI document.
pub fn api() -> OpenApiRouter<Arc<Shared>> {
    OpenApiRouter::new()
        .routes(routes!(create_doc))
        .routes(routes!(doc, delete_doc))
        .routes(routes!(content))
        .routes(routes!(list))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    /// Default: a random id.
    id: Option<String>,
    /// Default: the caller's organisation's home space.
    space: Option<String>,
}

/// Create a document (without opening it).
#[utoipa::path(post, path = "/api/docs", tag = "docs", request_body = CreateBody,
    responses((status = 201, body = DocRecord), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_doc(
    State(shared): AppState,
    Authed(claims): Authed,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<DocRecord>)> {
    let Json(body) = body?;
    let doc = open::create_new(&shared, &claims, body.id, body.space.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(doc)))
}

/// The space's documents, by id.
#[utoipa::path(get, path = "/api/spaces/{space}/docs", tag = "docs", params(("space" = String, Path)),
    responses((status = 200, body = Vec<DocRecord>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn list(
    State(shared): AppState,
    Authed(claims): Authed,
    space: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Vec<DocRecord>>> {
    let space = path(space)?;
    Ok(Json(open::list(&shared, &claims, &space).await?))
}

/// A document (its id percent-encoded: `notes%2Ftoday`).
#[utoipa::path(get, path = "/api/docs/{id}", tag = "docs", params(("id" = String, Path)),
    responses((status = 200, body = DocRecord), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn doc(
    State(shared): AppState,
    Authed(claims): Authed,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<DocRecord>> {
    let id = path(id)?;
    Ok(Json(open::readable(&shared, &claims, &id).await?))
}

/// Delete a document: its creator, the space's owner, or an admin of its organisation. Its
/// open connections are closed.
#[utoipa::path(delete, path = "/api/docs/{id}", tag = "docs", params(("id" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_doc(
    State(shared): AppState,
    Authed(claims): Authed,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let id = path(id)?;
    open::delete(&shared, &claims, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct ContentParams {
    /// `json` (default) or `text`.
    format: Option<String>,
    /// With `text`: the text root to export.
    root: Option<String>,
}

/// A document's content: every root as JSON (an object by root name), or one text root as
/// plain text.
#[utoipa::path(get, path = "/api/docs/{id}/content", tag = "docs", params(("id" = String, Path), ContentParams),
    responses((status = 200, description = "JSON object of the roots, or text/plain"), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn content(
    State(shared): AppState,
    Authed(claims): Authed,
    id: Result<Path<String>, PathRejection>,
    params: Result<Query<ContentParams>, QueryRejection>,
) -> ApiResult<Response> {
    let id = path(id)?;
    let params = query(params)?;
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
        ("json", Some(_)) => Err(bad_request("`root` goes with format=text")),
        ("text", None) => Err(bad_request(
            "format=text needs `root`, the text root to export",
        )),
        (other, _) => Err(bad_request(format!(
            "unknown format `{other}`: json or text"
        ))),
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
