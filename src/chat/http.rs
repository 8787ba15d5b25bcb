//! Chat over the HTTP API. Every route builds the `ChatRequest` the session protocol carries and
//! runs it through `Chat::execute`, so both behave alike (same checks, same bodies, same errors).
//! The OpenAPI document at `/api/openapi.json` is generated from these handlers (utoipa): a route
//! is registered and documented by the same `routes!` line, so the two cannot drift apart.

use crate::access::Claims;
use crate::http::{ApiResult, Authed, ErrorBody, bad_request, path, query};
use crate::protocol::ChatRequest;
use crate::protocol::chat::BodyFormat;
use crate::server::{Shared, unix_ms};
use crate::store::{EventKind, Hit, Message, ReadState, Receipt, Revision, Room, RoomMember};
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The chat routes, documented; `http::router` serves them with the OpenAPI document.
pub fn api() -> OpenApiRouter<Arc<Shared>> {
    OpenApiRouter::new()
        .routes(routes!(list_rooms, create_room))
        .routes(routes!(update_room))
        .routes(routes!(room_members))
        .routes(routes!(add_room_member, remove_room_member))
        .routes(routes!(history, send))
        .routes(routes!(edit, delete))
        .routes(routes!(react, unreact))
        .routes(routes!(revisions))
        .routes(routes!(events))
        .routes(routes!(mark_read))
        .routes(routes!(receipts))
        .routes(routes!(unread))
        .routes(routes!(search))
        .routes(routes!(open_direct))
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    Ok(b?.0)
}

async fn run(shared: &Shared, claims: &Claims, request: ChatRequest) -> ApiResult<Json<Value>> {
    let reply = shared
        .chat
        .execute(&shared.spaces, &shared.users, claims, &request, unix_ms())
        .await?;
    Ok(Json(reply))
}

// Response bodies as documented. The handlers return what `Chat::execute` builds; these types
// describe it.

/// A room as the caller sees it.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct RoomReply {
    #[serde(flatten)]
    room: Room,
    /// The caller's role in the room (`null`: not a member).
    #[schema(value_type = Option<String>)]
    role: Option<String>,
    /// The channel of its stream: `room:<space>/<room>`.
    channel: String,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct RoomsReply {
    space: String,
    rooms: Vec<RoomReply>,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct DirectReply {
    #[serde(flatten)]
    room: RoomReply,
    /// `false`: the conversation existed.
    created: bool,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct MembersReply {
    space: String,
    room: String,
    members: Vec<RoomMember>,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct MemberGone {
    space: String,
    room: String,
    user: String,
}

/// The acknowledgement of a send: the message is committed.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct Ack {
    space: String,
    room: String,
    client_id: String,
    offset: u64,
    epoch: u64,
    created_ms: i64,
    /// The client id was sent before: this is the original acknowledgement.
    duplicate: bool,
}

/// An event of a room's stream.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct EventReply {
    /// The event's offset; `null` when the request changed nothing.
    offset: Option<u64>,
    kind: EventKind,
    message: Message,
    /// For a reply: its thread's root.
    root: Option<Message>,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct HistoryReply {
    space: String,
    room: String,
    epoch: u64,
    messages: Vec<Message>,
    more: bool,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct SyncReply {
    space: String,
    room: String,
    epoch: u64,
    head: u64,
    /// Absent with `reset`.
    events: Option<Vec<EventReply>>,
    more: Option<bool>,
    /// The epoch differs (or `after` is past the head): reload the room.
    reset: Option<bool>,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct RevisionsReply {
    space: String,
    room: String,
    offset: u64,
    revisions: Vec<Revision>,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct UnreadReply {
    space: String,
    rooms: Vec<ReadState>,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct ReceiptsReply {
    space: String,
    room: String,
    receipts: Vec<Receipt>,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct SearchReply {
    space: String,
    hits: Vec<Hit>,
    more: bool,
}

// Request bodies and queries.

#[derive(Deserialize, ToSchema)]
struct CreateRoomBody {
    /// The room's id in the space (1 to 64 of `A-Z a-z 0-9 - _ .`); generated when absent.
    room: Option<String>,
    name: String,
    #[serde(default)]
    private: bool,
}

#[derive(Deserialize, ToSchema)]
struct UpdateRoomBody {
    name: Option<String>,
    archived: Option<bool>,
    /// How the room's meetings carry media: `auto`, `mesh` or `sfu` (owners and managers).
    #[schema(value_type = Option<String>, example = "sfu")]
    meeting_mode: Option<crate::store::MeetingSetting>,
}

#[derive(Deserialize, ToSchema, Default)]
struct AddMemberBody {
    /// `member`, `owner` or `guest`; by default `member` (`guest` for a guest of the space).
    #[schema(value_type = Option<String>)]
    role: Option<crate::access::Role>,
}

#[derive(Deserialize, ToSchema)]
struct SendBody {
    /// Unique per room and author; a retry with the same id gets the original acknowledgement.
    client_id: String,
    body: String,
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "text")]
    format: BodyFormat,
    /// Reply in the thread of this root message.
    thread: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
struct EditBody {
    body: String,
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "text")]
    format: BodyFormat,
}

#[derive(Deserialize, ToSchema)]
struct ReadBody {
    /// The offset read up to.
    offset: u64,
}

#[derive(Deserialize, ToSchema)]
struct DirectBody {
    /// The other members.
    users: Vec<String>,
}

#[derive(Deserialize, IntoParams)]
struct HistoryParams {
    before: Option<u64>,
    after: Option<u64>,
    /// At most 200 (default 50).
    limit: Option<usize>,
    /// A thread's root: page its replies.
    thread: Option<u64>,
}

#[derive(Deserialize, IntoParams)]
struct EventsParams {
    after: u64,
    epoch: Option<u64>,
    /// At most 1000 (default 200).
    limit: Option<usize>,
}

#[derive(Deserialize, IntoParams)]
struct SearchParams {
    /// Words that must all occur.
    query: String,
    room: Option<String>,
    author: Option<String>,
    from_ms: Option<i64>,
    until_ms: Option<i64>,
    /// At most 100 (default 20).
    limit: Option<usize>,
    /// Hits already seen (at most 1000).
    skip: Option<usize>,
}

type AppState = State<Arc<Shared>>;

#[utoipa::path(get, path = "/api/spaces/{space}/rooms", tag = "chat",
    params(("space" = String, Path)),
    responses((status = 200, body = RoomsReply), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_rooms(
    State(shared): AppState,
    Authed(claims): Authed,
    space: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let space = path(space)?;
    run(&shared, &claims, ChatRequest::Rooms { id: 0, space }).await
}

#[utoipa::path(post, path = "/api/spaces/{space}/rooms", tag = "chat",
    params(("space" = String, Path)), request_body = CreateRoomBody,
    responses((status = 201, body = RoomReply), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_room(
    State(shared): AppState,
    Authed(claims): Authed,
    space: Result<Path<String>, PathRejection>,
    b: Result<Json<CreateRoomBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (space, b) = (path(space)?, body(b)?);
    let request = ChatRequest::CreateRoom {
        id: 0,
        space,
        room: b.room,
        name: b.name,
        private: b.private,
    };
    Ok((StatusCode::CREATED, run(&shared, &claims, request).await?))
}

#[utoipa::path(patch, path = "/api/spaces/{space}/rooms/{room}", tag = "chat",
    params(("space" = String, Path), ("room" = String, Path)), request_body = UpdateRoomBody,
    responses((status = 200, body = RoomReply), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_room(
    State(shared): AppState,
    Authed(claims): Authed,
    p: Result<Path<(String, String)>, PathRejection>,
    b: Result<Json<UpdateRoomBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let ((space, room), b) = (path(p)?, body(b)?);
    if b.name.is_none() && b.archived.is_none() && b.meeting_mode.is_none() {
        return Err(bad_request(
            "give `name`, `archived`, `meeting_mode` or several",
        ));
    }
    let mut reply = Json(Value::Null);
    if let Some(name) = b.name {
        let (space, room) = (space.clone(), room.clone());
        let request = ChatRequest::RenameRoom {
            id: 0,
            space,
            room,
            name,
        };
        reply = run(&shared, &claims, request).await?;
    }
    if let Some(meeting_mode) = b.meeting_mode {
        let (space, room) = (space.clone(), room.clone());
        let request = ChatRequest::SetMeetingMode {
            id: 0,
            space,
            room,
            meeting_mode,
        };
        reply = run(&shared, &claims, request).await?;
    }
    if let Some(archived) = b.archived {
        let request = ChatRequest::ArchiveRoom {
            id: 0,
            space,
            room,
            archived,
        };
        reply = run(&shared, &claims, request).await?;
    }
    Ok(reply)
}

#[utoipa::path(get, path = "/api/spaces/{space}/rooms/{room}/members", tag = "chat",
    params(("space" = String, Path), ("room" = String, Path)),
    responses((status = 200, body = MembersReply), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn room_members(
    State(shared): AppState,
    Authed(claims): Authed,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let (space, room) = path(p)?;
    run(
        &shared,
        &claims,
        ChatRequest::Members { id: 0, space, room },
    )
    .await
}

/// Join a public room (the caller's own user id), or invite a member of the space.
#[utoipa::path(put, path = "/api/spaces/{space}/rooms/{room}/members/{user}", tag = "chat",
    params(("space" = String, Path), ("room" = String, Path), ("user" = String, Path)),
    request_body(content = Option<AddMemberBody>, description = "Optional: the role of an invitee"),
    responses((status = 200, body = RoomMember), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn add_room_member(
    State(shared): AppState,
    Authed(claims): Authed,
    p: Result<Path<(String, String, String)>, PathRejection>,
    b: Option<Json<AddMemberBody>>,
) -> ApiResult<Json<Value>> {
    let (space, room, user) = path(p)?;
    let role = b.map(|Json(b)| b).unwrap_or_default().role;
    let request = if user == claims.sub && role.is_none() {
        ChatRequest::Join { id: 0, space, room }
    } else {
        ChatRequest::Invite {
            id: 0,
            space,
            room,
            user,
            role,
        }
    };
    run(&shared, &claims, request).await
}

/// Leave (the caller's own user id) or remove a member.
#[utoipa::path(delete, path = "/api/spaces/{space}/rooms/{room}/members/{user}", tag = "chat",
    params(("space" = String, Path), ("room" = String, Path), ("user" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn remove_room_member(
    State(shared): AppState,
    Authed(claims): Authed,
    p: Result<Path<(String, String, String)>, PathRejection>,
) -> ApiResult<StatusCode> {
    let (space, room, user) = path(p)?;
    let request = ChatRequest::RemoveMember {
        id: 0,
        space,
        room,
        user,
    };
    let _gone = run(&shared, &claims, request).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/spaces/{space}/rooms/{room}/messages", tag = "chat",
    params(("space" = String, Path), ("room" = String, Path), HistoryParams),
    responses((status = 200, body = HistoryReply), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn history(
    State(shared): AppState,
    Authed(claims): Authed,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<HistoryParams>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let ((space, room), q) = (path(p)?, query(q)?);
    let request = ChatRequest::History {
        id: 0,
        space,
        room,
        before: q.before,
        after: q.after,
        limit: q.limit,
        thread: q.thread,
    };
    run(&shared, &claims, request).await
}

/// Send a message. `201` once committed; `200` with `duplicate: true` for a retried client id.
#[utoipa::path(post, path = "/api/spaces/{space}/rooms/{room}/messages", tag = "chat",
    params(("space" = String, Path), ("room" = String, Path)), request_body = SendBody,
    responses((status = 201, body = Ack), (status = 200, body = Ack, description = "a retry: the original acknowledgement"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn send(
    State(shared): AppState,
    Authed(claims): Authed,
    p: Result<Path<(String, String)>, PathRejection>,
    b: Result<Json<SendBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let ((space, room), b) = (path(p)?, body(b)?);
    let request = ChatRequest::Send {
        id: 0,
        space,
        room,
        client_id: b.client_id,
        body: b.body,
        format: b.format,
        thread: b.thread,
    };
    let ack = run(&shared, &claims, request).await?;
    let status = if ack["duplicate"] == true {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, ack))
}

#[utoipa::path(patch, path = "/api/spaces/{space}/rooms/{room}/messages/{offset}", tag = "chat",
    params(("space" = String, Path), ("room" = String, Path), ("offset" = u64, Path)), request_body = EditBody,
    responses((status = 200, body = EventReply), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn edit(
    State(shared): AppState,
    Authed(claims): Authed,
    p: Result<Path<(String, String, u64)>, PathRejection>,
    b: Result<Json<EditBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let ((space, room, offset), b) = (path(p)?, body(b)?);
    let request = ChatRequest::Edit {
        id: 0,
        space,
        room,
        offset,
        body: b.body,
        format: b.format,
    };
    run(&shared, &claims, request).await
}

#[utoipa::path(delete, path = "/api/spaces/{space}/rooms/{room}/messages/{offset}", tag = "chat",
    params(("space" = String, Path), ("room" = String, Path), ("offset" = u64, Path)),
    responses((status = 200, body = EventReply), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete(
    State(shared): AppState,
    Authed(claims): Authed,
    p: Result<Path<(String, String, u64)>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let (space, room, offset) = path(p)?;
    let request = ChatRequest::Delete {
        id: 0,
        space,
        room,
        offset,
    };
    run(&shared, &claims, request).await
}

#[utoipa::path(put, path = "/api/spaces/{space}/rooms/{room}/messages/{offset}/reactions/{emoji}", tag = "chat",
    params(("space" = String, Path), ("room" = String, Path), ("offset" = u64, Path), ("emoji" = String, Path)),
    responses((status = 200, body = EventReply), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn react(
    State(shared): AppState,
    Authed(claims): Authed,
    p: Result<Path<(String, String, u64, String)>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let (space, room, offset, emoji) = path(p)?;
    let request = ChatRequest::React {
        id: 0,
        space,
        room,
        offset,
        emoji,
    };
    run(&shared, &claims, request).await
}

#[utoipa::path(delete, path = "/api/spaces/{space}/rooms/{room}/messages/{offset}/reactions/{emoji}", tag = "chat",
    params(("space" = String, Path), ("room" = String, Path), ("offset" = u64, Path), ("emoji" = String, Path)),
    responses((status = 200, body = EventReply), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn unreact(
    State(shared): AppState,
    Authed(claims): Authed,
    p: Result<Path<(String, String, u64, String)>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let (space, room, offset, emoji) = path(p)?;
    let request = ChatRequest::Unreact {
        id: 0,
        space,
        room,
        offset,
        emoji,
    };
    run(&shared, &claims, request).await
}

#[utoipa::path(get, path = "/api/spaces/{space}/rooms/{room}/messages/{offset}/revisions", tag = "chat",
    params(("space" = String, Path), ("room" = String, Path), ("offset" = u64, Path)),
    responses((status = 200, body = RevisionsReply), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revisions(
    State(shared): AppState,
    Authed(claims): Authed,
    p: Result<Path<(String, String, u64)>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let (space, room, offset) = path(p)?;
    let request = ChatRequest::Revisions {
        id: 0,
        space,
        room,
        offset,
    };
    run(&shared, &claims, request).await
}

/// The room's stream after an offset (resume, or catching up by pages).
#[utoipa::path(get, path = "/api/spaces/{space}/rooms/{room}/events", tag = "chat",
    params(("space" = String, Path), ("room" = String, Path), EventsParams),
    responses((status = 200, body = SyncReply), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn events(
    State(shared): AppState,
    Authed(claims): Authed,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<EventsParams>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let ((space, room), q) = (path(p)?, query(q)?);
    let request = ChatRequest::Sync {
        id: 0,
        space,
        room,
        epoch: q.epoch,
        after: q.after,
        limit: q.limit,
    };
    run(&shared, &claims, request).await
}

#[utoipa::path(post, path = "/api/spaces/{space}/rooms/{room}/read", tag = "chat",
    params(("space" = String, Path), ("room" = String, Path)), request_body = ReadBody,
    responses((status = 200, body = ReadState), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn mark_read(
    State(shared): AppState,
    Authed(claims): Authed,
    p: Result<Path<(String, String)>, PathRejection>,
    b: Result<Json<ReadBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let ((space, room), b) = (path(p)?, body(b)?);
    let request = ChatRequest::MarkRead {
        id: 0,
        space,
        room,
        offset: b.offset,
    };
    run(&shared, &claims, request).await
}

#[utoipa::path(get, path = "/api/spaces/{space}/rooms/{room}/receipts", tag = "chat",
    params(("space" = String, Path), ("room" = String, Path)),
    responses((status = 200, body = ReceiptsReply), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn receipts(
    State(shared): AppState,
    Authed(claims): Authed,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let (space, room) = path(p)?;
    run(
        &shared,
        &claims,
        ChatRequest::Receipts { id: 0, space, room },
    )
    .await
}

/// The caller's read state in every room of the space they are a member of.
#[utoipa::path(get, path = "/api/spaces/{space}/unread", tag = "chat",
    params(("space" = String, Path)),
    responses((status = 200, body = UnreadReply), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn unread(
    State(shared): AppState,
    Authed(claims): Authed,
    space: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let space = path(space)?;
    run(&shared, &claims, ChatRequest::Unread { id: 0, space }).await
}

/// Full-text search over the messages of the rooms the caller may read.
#[utoipa::path(get, path = "/api/spaces/{space}/search", tag = "chat",
    params(("space" = String, Path), SearchParams),
    responses((status = 200, body = SearchReply), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn search(
    State(shared): AppState,
    Authed(claims): Authed,
    space: Result<Path<String>, PathRejection>,
    q: Result<Query<SearchParams>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let (space, q) = (path(space)?, query(q)?);
    let request = ChatRequest::Search {
        id: 0,
        space,
        query: q.query,
        room: q.room,
        author: q.author,
        from_ms: q.from_ms,
        until_ms: q.until_ms,
        limit: q.limit,
        skip: q.skip,
    };
    run(&shared, &claims, request).await
}

/// Open the direct conversation of the caller and `users` (the existing one, if any).
#[utoipa::path(post, path = "/api/spaces/{space}/direct", tag = "chat",
    params(("space" = String, Path)), request_body = DirectBody,
    responses((status = 200, body = DirectReply), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn open_direct(
    State(shared): AppState,
    Authed(claims): Authed,
    space: Result<Path<String>, PathRejection>,
    b: Result<Json<DirectBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let (space, b) = (path(space)?, body(b)?);
    let request = ChatRequest::OpenDirect {
        id: 0,
        space,
        users: b.users,
    };
    run(&shared, &claims, request).await
}
