//! HTTP: the WebSocket upgrade at `/ws`, health and metrics, and the JSON API under `/api`
//! (bearer token). API errors are `{"code": ..., "message": ...}` with a 4xx status for the
//! caller's mistakes.

use crate::access::Claims;
use crate::connection::Permit;
use crate::docs;
use crate::protocol::ErrorCode;
use crate::server::Shared;
use crate::spaces::ServiceError;
use crate::store::{EventKind, Reaction, ThreadSummary};
use crate::transport;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto::upgrade::downcast;
use serde::Deserialize;
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::net::TcpStream;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ws", get(ws_upgrade))
        .route("/yjs/{*doc}", get(yjs_upgrade))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/spaces", post(create_space).get(list_spaces))
        .route("/api/spaces/{space}/members", get(members))
        .route(
            "/api/spaces/{space}/members/{user}",
            put(add_member).delete(remove_member),
        )
        .route("/api/publish", post(publish))
        .merge(documented())
        .merge(crate::web::routes())
        .fallback(|| async { ApiError(ServiceError::new(ErrorCode::NotFound, "no such route")) })
        .layer(axum::extract::DefaultBodyLimit::max(
            shared.config.max_frame_bytes,
        ))
        .with_state(shared)
}

/// The documented API routes (chat, documents) and `GET /api/openapi.json`, generated from
/// the same handlers: a route is registered and documented by one `routes!` line, so the two
/// cannot drift apart.
fn documented() -> Router<Arc<Shared>> {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(crate::chat::http::api())
        .merge(docs::http::api())
        .merge(crate::meetings::whip::api())
        .split_for_parts();
    let spec: Arc<str> = api
        .to_json()
        .expect("the OpenAPI document serializes")
        .into();
    router.route(
        "/api/openapi.json",
        get(move || {
            let spec = spec.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    spec.to_string(),
                )
            }
        }),
    )
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Chorus API",
        description = "The HTTP API of Chorus. Every route needs `Authorization: Bearer <token>`; \
                       errors are `{code, message}` with a 4xx status for the caller's mistakes. \
                       Semantics are those of the session protocol's requests (docs/protocol.md)."
    ),
    modifiers(&Bearer),
    security(("bearer" = [])),
    components(schemas(ErrorBody, EventKind, ThreadSummary, Reaction)),
    tags(
        (name = "chat", description = "Rooms, messages, history, read state and search"),
        (name = "docs", description = "Co-edited Yjs documents: create, list, export, delete"),
        (name = "media", description = "WHIP ingest (RFC 9725) and WHEP playback of a room's SFU meeting; \
                                         SDP bodies, errors as text")
    )
)]
struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// A `400 invalid_request` with `message`.
pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(ServiceError::new(ErrorCode::InvalidRequest, message))
}

/// A path's values, or `400 invalid_request` (a JSON body, unlike axum's own rejection).
pub(crate) fn path<T>(p: Result<Path<T>, PathRejection>) -> ApiResult<T> {
    p.map(|Path(t)| t).map_err(|e| bad_request(e.body_text()))
}

/// A query's values, or `400 invalid_request`.
pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(t)| t).map_err(|e| bad_request(e.body_text()))
}

/// Every error response.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// A stable error code (docs/protocol.md section 8).
    #[schema(example = "not_found")]
    code: String,
    message: String,
}

/// Serve HTTP until shutdown. Every accepted socket gets `TCP_NODELAY`: without it, delayed ACKs
/// add ~40 ms to small writes. The router is made once: served as a plain `Router`, axum builds
/// it again for every accepted connection (~8 KiB of garbage per connection).
pub async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let shutdown = shared.shutdown.clone();
    axum::serve(listener, router(shared).into_make_service())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// An API error as a response.
pub(crate) struct ApiError(pub(crate) ServiceError);

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError(e)
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError(e.into())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorCode::FrameTooLarge
        } else {
            ErrorCode::InvalidRequest
        };
        ApiError(ServiceError::new(code, e.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status()).expect("valid status codes");
        (
            status,
            Json(json!({ "code": self.0.code, "message": self.0.message })),
        )
            .into_response()
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// The claims of a bearer token, checked before any handler runs.
pub(crate) struct Authed(pub(crate) Claims);

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn verify(shared: &Shared, token: Option<&str>) -> Result<Claims, ServiceError> {
    let token = token.ok_or(crate::auth::TokenError::Missing);
    token
        .and_then(|t| shared.keys.verify(t, crate::auth::unix_now()))
        .map_err(|e| ServiceError::new(e.code(), e.to_string()))
}

impl FromRequestParts<Arc<Shared>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> ApiResult<Self> {
        Ok(Authed(verify(shared, bearer(&parts.headers))?))
    }
}

/// Query parameter `name` (the token, for clients such as browsers that cannot set headers).
fn query_param(uri: &axum::http::Uri, name: &str) -> Option<String> {
    let query = uri.query()?;
    query.split('&').find_map(|pair| {
        let value = pair.strip_prefix(name)?.strip_prefix('=')?;
        Some(percent_decode(value))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => {
                match u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            (b'+', _) => out.push(b' '),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The WebSocket handshake of `request`: its `Sec-WebSocket-Key`, or the 400 to answer.
fn handshake(request: &Request) -> Result<HeaderValue, ApiError> {
    let headers = request.headers();
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    match (is_upgrade, key, version_ok) {
        (true, Some(key), true) => Ok(key),
        _ => Err(ApiError(ServiceError::new(
            ErrorCode::InvalidRequest,
            "expected a WebSocket upgrade (version 13)",
        ))),
    }
}

/// Take a connection permit, answer 101 for handshake `key`, and run `serve` on the upgraded
/// connection's socket as a tracked task.
fn upgrade<F, Fut>(
    shared: &Arc<Shared>,
    mut request: Request,
    key: HeaderValue,
    serve: F,
) -> Response
where
    F: FnOnce(transport::ws::Upgraded, Permit) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(permit) = Permit::acquire(shared) else {
        return ApiError(ServiceError::new(
            ErrorCode::TooManyConnections,
            "the server is at its connection limit",
        ))
        .into_response();
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    shared.tasks.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        // `serve` runs hyper-util's HTTP/1-or-2 connection over `TokioIo<TcpStream>`; taking
        // the socket back leaves hyper out of every later read and write.
        match downcast::<TokioIo<TcpStream>>(upgraded) {
            Ok(parts) => {
                let upgraded = transport::ws::Upgraded {
                    stream: parts.io.into_inner(),
                    read_buf: parts.read_buf,
                };
                serve(upgraded, permit).await;
            }
            Err(_) => tracing::error!("the upgraded connection is not a TCP socket"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let accept = transport::wsframe::accept_key(key.as_bytes());
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header"),
    );
    response
}

/// Upgrade to WebSocket. A token in the `Authorization` header or the `token` query parameter
/// is verified here, before the upgrade: a bad one gets a 401 with a JSON error.
async fn ws_upgrade(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let key = match handshake(&request) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let token = bearer(request.headers())
        .map(str::to_string)
        .or_else(|| query_param(request.uri(), "token"));
    let preauth = match token {
        Some(token) => match verify(&shared, Some(&token)) {
            Ok(claims) => Some(claims),
            Err(e) => return ApiError(e).into_response(),
        },
        None => None,
    };
    let task_shared = shared.clone();
    upgrade(&shared, request, key, move |upgraded, permit| {
        transport::ws::run(task_shared, upgraded, preauth, permit)
    })
}

/// The y-websocket endpoint. The token (`?token=`, as the provider's `params` send it) is
/// checked after the upgrade, so that a refusal reaches the provider as "permission denied".
async fn yjs_upgrade(
    State(shared): State<Arc<Shared>>,
    Path(doc): Path<String>,
    request: Request,
) -> Response {
    let key = match handshake(&request) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let yjs = docs::ws::Request {
        doc,
        token: bearer(request.headers())
            .map(str::to_string)
            .or_else(|| query_param(request.uri(), "token")),
        space: query_param(request.uri(), "space"),
    };
    let task_shared = shared.clone();
    upgrade(&shared, request, key, move |upgraded, permit| {
        docs::ws::run(task_shared, upgraded, yjs, permit)
    })
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}

#[derive(Deserialize)]
struct CreateSpace {
    #[serde(default)]
    space: Option<String>,
    name: String,
}

async fn create_space(
    State(shared): State<Arc<Shared>>,
    Authed(claims): Authed,
    body: Result<Json<CreateSpace>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Json(body) = body?;
    let space = shared
        .spaces
        .create(&claims, body.space, body.name, crate::server::unix_ms())
        .await?;
    Ok((StatusCode::CREATED, Json(json!(space))))
}

async fn list_spaces(
    State(shared): State<Arc<Shared>>,
    Authed(claims): Authed,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({ "spaces": shared.spaces.list(&claims).await? }),
    ))
}

async fn members(
    State(shared): State<Arc<Shared>>,
    Authed(claims): Authed,
    Path(space): Path<String>,
) -> ApiResult<Json<Value>> {
    let members = shared.spaces.members(&claims, &space).await?;
    Ok(Json(json!({ "space": space, "members": members })))
}

#[derive(Deserialize)]
struct AddMember {
    org: String,
    #[serde(default)]
    role: Option<crate::access::Role>,
}

async fn add_member(
    State(shared): State<Arc<Shared>>,
    Authed(claims): Authed,
    Path((space, user)): Path<(String, String)>,
    body: Result<Json<AddMember>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(body) = body?;
    let member = shared
        .spaces
        .add_member(&claims, &space, user, body.org, body.role)
        .await?;
    Ok(Json(json!(member)))
}

async fn remove_member(
    State(shared): State<Arc<Shared>>,
    Authed(claims): Authed,
    Path((space, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    shared.remove_member(&claims, &space, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct Publish {
    channel: String,
    data: Value,
}

async fn publish(
    State(shared): State<Arc<Shared>>,
    Authed(claims): Authed,
    body: Result<Json<Publish>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(body) = body?;
    Ok(Json(
        shared.publish(&claims, &body.channel, &body.data).await?,
    ))
}
