//! WHIP ingest (RFC 9725) and WHEP playback into and from a room's SFU meeting.
//!
//! `POST /whip/{room}` (an `application/sdp` offer that sends) and `POST /whep/{room}` (one
//! that receives) join the room's meeting as a participant whose media session the client
//! offered (`signaling::sfu::whip`); the answer comes back with `201 Created`, the session's
//! `Location` and an `ETag`. `PATCH` on the session takes trickle-ICE fragments (nothing to do
//! for an ICE-lite server; ICE restarts are refused with 422), `DELETE` ends it. A session has
//! no signalling connection: it ends with `DELETE`, when removed from the meeting, or
//! `CLIENT_IDLE` after its client stopped being connected.
//!
//! The handlers check the request (token, grants, content type, size, room access) and hand
//! it to the meeting's task, which alone touches the meeting: the participant joins with a
//! connection id of its own (from the server's allocator) that has no outbox.
//!
//! A session shows in presence as its token's user, in the room and its meeting, as a
//! participant's connection does (WHEP viewers too: they are participants of the meeting).
//! Having no session connection, it gets a presence connection of its own: the `POST` handler
//! opens it before the meeting's task starts the session, and the task closes it, in order
//! after the session's leaving the room, once the participant is gone, however it went.

use super::{MeetingTask, Meetings};
use crate::access::{Claims, Grant};
use crate::hub::Outbox;
use crate::server::Shared;
use crate::spaces::{ServiceError, home_id};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use signaling::sfu::RoomError;
use signaling::sfu::whip::{ClientRole, Fragment, check_client_offer, read_fragment, remote_ufrag};
use signaling::wire::{Grants, IceServer, MeetingMode, TrackKind, TrackSource};
use signaling::{ConnId, Joiner, Meeting};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// How often a start may find its meeting's task ending before it gives up.
const START_ATTEMPTS: usize = 4;
const SDP: &str = "application/sdp";
const SDP_FRAGMENT: &str = "application/trickle-ice-sdpfrag";
/// The response header naming the session's participant (its sid in the meeting).
const PARTICIPANT: HeaderName = HeaderName::from_static("chorus-participant");

/// The WHIP/WHEP routes, documented; `http::router` serves them.
pub fn api() -> OpenApiRouter<Arc<Shared>> {
    OpenApiRouter::new()
        .routes(routes!(whip_offer, whip_options))
        .routes(routes!(whep_offer, whep_options))
        .routes(routes!(whip_patch, whip_delete))
        .routes(routes!(whep_patch, whep_delete))
}

/// A refusal: a status and a line of text saying why.
#[derive(Debug)]
pub(crate) struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

impl From<signaling::Error> for Refusal {
    fn from(e: signaling::Error) -> Refusal {
        let status = match &e {
            signaling::Error::NotJoined | signaling::Error::NotFound(_) => StatusCode::NOT_FOUND,
            signaling::Error::Forbidden(_) => StatusCode::FORBIDDEN,
            signaling::Error::Invalid(_) => StatusCode::BAD_REQUEST,
            signaling::Error::LimitExceeded(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Refusal::new(status, e.to_string())
    }
}

impl From<RoomError> for Refusal {
    fn from(e: RoomError) -> Refusal {
        signaling::Error::from(e).into()
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.message),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            (response.headers_mut())
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        cors(response.headers_mut());
        response
    }
}

type Reply = Result<Response, Refusal>;

/// Commands for a meeting's task.
pub(crate) enum Command {
    /// Start a session.
    Start {
        start: Start,
        done: oneshot::Sender<Result<Started, Refusal>>,
    },
    /// A `PATCH` of session `resource` by `user` of `org`.
    Patch {
        resource: String,
        user: String,
        org: String,
        if_match: Option<String>,
        fragment: String,
        done: oneshot::Sender<Result<(), Refusal>>,
    },
    /// `user` lost access to the room: their sessions' participants leave (reason `access`).
    Revoke { user: String },
    /// A `DELETE` of session `resource` by `user` of `org`.
    End {
        resource: String,
        user: String,
        org: String,
        done: oneshot::Sender<Result<(), Refusal>>,
    },
}

/// Join `conn` as a participant whose client offered `sdp`; `resource` names the session.
#[derive(Clone)]
pub(crate) struct Start {
    resource: String,
    conn: ConnId,
    joiner: Joiner,
    role: ClientRole,
    sdp: String,
    /// WHEP: the participant to receive from.
    follow: Option<String>,
    /// When the token the session was started with expires (Unix milliseconds).
    expires_ms: u64,
}

pub(crate) struct Started {
    answer: String,
    etag: String,
    /// The participant's sid.
    participant: String,
}

/// A meeting's client-offered sessions, by resource id.
#[derive(Default)]
pub(crate) struct Clients {
    sessions: HashMap<String, Client>,
    /// The connections of sessions whose participant is in the meeting: their presence
    /// connections close when it leaves.
    present: HashSet<ConnId>,
}

struct Client {
    conn: ConnId,
    role: ClientRole,
    user: String,
    org: String,
    /// The client's ICE username fragment: a fragment with another one is an ICE restart.
    remote_ufrag: String,
    etag: String,
    /// When the token the session was started with expires (Unix milliseconds): it ends then.
    expires_ms: u64,
}

impl MeetingTask {
    /// Carry out a WHIP/WHEP command.
    pub(super) fn whip(&mut self, core: &mut Meeting, command: Command) {
        match command {
            Command::Start { start, done } => {
                let conn = start.conn;
                let started = self.start_client(core, start);
                // The handler opened the session's presence connection: it closes with the
                // participant's leaving, or now if the session did not start.
                if core.sid_of(conn).is_some() {
                    self.whip.present.insert(conn);
                } else {
                    self.close_presence(conn);
                }
                let _ = done.send(started);
            }
            Command::Patch {
                resource,
                user,
                org,
                if_match,
                fragment,
                done,
            } => {
                let patched = (self.whip.owned(&resource, &user, &org))
                    .and_then(|client| client.patch(if_match.as_deref(), &fragment));
                let _ = done.send(patched);
            }
            Command::Revoke { user } => {
                for client in self.whip.sessions.values().filter(|c| c.user == user) {
                    tracing::debug!(conn = client.conn, "client-offered session revoked");
                    core.revoke(client.conn);
                }
                // `expire_clients` forgets them.
            }
            Command::End {
                resource,
                user,
                org,
                done,
            } => {
                let ended = self.whip.owned(&resource, &user, &org).map(|c| c.conn);
                if let Ok(conn) = ended {
                    self.whip.sessions.remove(&resource);
                    let _ = core.leave(conn, None);
                }
                let _ = done.send(ended.map(|_| ()));
            }
        }
    }

    fn start_client(&mut self, core: &mut Meeting, start: Start) -> Result<Started, Refusal> {
        let Start {
            resource,
            conn,
            joiner,
            role,
            sdp,
            follow,
            expires_ms,
        } = start;
        let sdp = sdp.as_str();
        if core.mode() != MeetingMode::Sfu {
            return Err(Refusal::new(
                StatusCode::CONFLICT,
                "the live meeting of this room is peer to peer: WHIP and WHEP need an SFU \
                 meeting (wait until it ends, or use another room)",
            ));
        }
        check_client_offer(sdp, role)?;
        let (user, org) = (joiner.user.clone(), joiner.org.clone());
        let now = crate::server::unix_ms() as u64;
        let sid = core.join(conn, joiner, None, now)?.participant.sid;
        let answer = Self::answer_client(core, conn, &sid, role, sdp, follow);
        if answer.is_err() {
            let _ = core.leave(conn, None);
        }
        let answer = answer?;
        let room = core.sfu_mut().expect("SFU mode");
        let etag = format!("\"{}\"", room.ufrag(&sid).expect("the session just made"));
        self.inner.metrics.meetings.joins.inc();
        self.whip.sessions.insert(
            resource,
            Client {
                conn,
                role,
                user,
                org,
                remote_ufrag: remote_ufrag(sdp).unwrap_or_default().to_string(),
                etag: etag.clone(),
                expires_ms,
            },
        );
        Ok(Started {
            answer,
            etag,
            participant: sid,
        })
    }

    /// Answer participant `sid`'s offer; a WHIP client's lines become its published tracks.
    fn answer_client(
        core: &mut Meeting,
        conn: ConnId,
        sid: &str,
        role: ClientRole,
        sdp: &str,
        follow: Option<String>,
    ) -> Result<String, Refusal> {
        let room = core.sfu_mut().expect("SFU mode");
        let answer = room.accept_client_offer(sid, sdp, role, follow)?;
        if role == ClientRole::Publish {
            for (mid, kind) in &answer.lines {
                let source = match kind {
                    TrackKind::Audio => TrackSource::Microphone,
                    TrackKind::Video => TrackSource::Camera,
                };
                let track = core.publish(conn, mid, *kind, source, false)?;
                let room = core.sfu_mut().expect("SFU mode");
                room.bind_client_track(sid, mid, &track.sid)?;
            }
        }
        Ok(answer.sdp)
    }

    /// Let the client-offered sessions whose client went away or whose token expired leave,
    /// and forget those that left otherwise (removed by an admin, access revoked).
    pub(super) fn expire_clients(&mut self, core: &mut Meeting) {
        if self.whip.sessions.is_empty() {
            return;
        }
        let now = crate::server::unix_ms() as u64;
        for client in self.whip.sessions.values() {
            if client.expires_ms <= now {
                tracing::debug!(conn = client.conn, "client-offered session's token expired");
                let _ = core.leave(client.conn, Some("the access token expired".into()));
            }
        }
        let expired = core.sfu_mut().map(|room| room.expired_clients());
        for sid in expired.unwrap_or_default() {
            let conn = (self.whip.sessions.values())
                .find(|c| core.sid_of(c.conn) == Some(sid.as_str()))
                .map(|c| c.conn);
            if let Some(conn) = conn {
                tracing::debug!(conn, sid, "client-offered session gone idle");
                let _ = core.leave(conn, Some("the client stopped sending".into()));
            }
        }
        (self.whip.sessions).retain(|_, c| core.sid_of(c.conn).is_some());
    }
}

impl MeetingTask {
    /// Participant `conn` left the meeting (presence was told): if it is a WHIP/WHEP
    /// session's, its presence connection closes.
    pub(super) fn left_presence(&mut self, conn: ConnId) {
        if self.whip.present.remove(&conn) {
            self.close_presence(conn);
        }
    }

    /// Close WHIP/WHEP session `conn`'s presence connection, after what presence was told of
    /// it. Never lost: the user would show online for ever.
    fn close_presence(&self, conn: ConnId) {
        if let Err(TrySendError::Full(told)) = self.presence.try_send((conn, None)) {
            let presence = self.presence.clone();
            tokio::spawn(async move {
                let _ = presence.send(told).await;
            });
        }
    }
}

impl Clients {
    /// When the next session's token expires (Unix milliseconds), if any runs.
    pub(super) fn next_expiry(&self) -> Option<u64> {
        self.sessions.values().map(|c| c.expires_ms).min()
    }

    /// Session `resource` if `user` of `org` started it.
    fn owned(&self, resource: &str, user: &str, org: &str) -> Result<&Client, Refusal> {
        (self.sessions.get(resource))
            .filter(|c| c.user == user && c.org == org)
            .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, "no such session"))
    }
}

impl Client {
    fn patch(&self, if_match: Option<&str>, fragment: &str) -> Result<(), Refusal> {
        if if_match.is_some_and(|tag| tag != "*" && tag != self.etag) {
            return Err(Refusal::new(
                StatusCode::PRECONDITION_FAILED,
                "If-Match does not match the session's ETag",
            ));
        }
        match read_fragment(fragment, &self.remote_ufrag)? {
            Fragment::Trickle => Ok(()),
            Fragment::Restart => Err(Refusal::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "ICE restarts are not supported: DELETE this session and POST a new offer \
                     to /{}",
                    match self.role {
                        ClientRole::Publish => "whip",
                        ClientRole::Play => "whep",
                    }
                ),
            )),
        }
    }
}

/// The query of a `POST`.
#[derive(Deserialize, IntoParams)]
struct OfferParams {
    /// The room's space; default: the home space of the token's organisation.
    space: Option<String>,
    /// The participant's display name; default: the token's name, else its user.
    name: Option<String>,
    /// WHEP: the participant (sid) whose tracks to receive; default: the first publisher.
    participant: Option<String>,
}

/// The query of a session's `PATCH` and `DELETE`.
#[derive(Deserialize, IntoParams)]
struct SessionParams {
    /// The room's space, as in the session's `Location`.
    space: Option<String>,
}

/// Publish into the room's SFU meeting (WHIP, RFC 9725): the body is the client's SDP offer,
/// whose media lines only send; the answer is the created session. Needs the publish grant.
#[utoipa::path(post, path = "/whip/{room}", tag = "media", params(("room" = String, Path), OfferParams),
    request_body(content = String, content_type = "application/sdp"),
    responses((status = 201, description = "The SDP answer; Location and ETag name the session, Chorus-Participant its participant", content_type = "application/sdp"),
              (status = 400, description = "Bad SDP"), (status = 401), (status = 403), (status = 409, description = "A mesh meeting is live"),
              (status = 413), (status = 415), (status = 503, description = "The room is full")))]
async fn whip_offer(
    State(shared): State<Arc<Shared>>,
    room: Result<Path<String>, PathRejection>,
    params: Result<Query<OfferParams>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    offer(&shared, ClientRole::Publish, room, params, &headers, body).await
}

/// Play the room's SFU meeting (WHEP): the body is the client's SDP offer, whose media lines
/// only receive (one audio and one video line, typically). Needs the subscribe grant.
#[utoipa::path(post, path = "/whep/{room}", tag = "media", params(("room" = String, Path), OfferParams),
    request_body(content = String, content_type = "application/sdp"),
    responses((status = 201, description = "The SDP answer; Location and ETag name the session, Chorus-Participant its participant", content_type = "application/sdp"),
              (status = 400, description = "Bad SDP"), (status = 401), (status = 403), (status = 409, description = "A mesh meeting is live"),
              (status = 413), (status = 415), (status = 503, description = "The room is full")))]
async fn whep_offer(
    State(shared): State<Arc<Shared>>,
    room: Result<Path<String>, PathRejection>,
    params: Result<Query<OfferParams>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    offer(&shared, ClientRole::Play, room, params, &headers, body).await
}

/// CORS preflight of a WHIP endpoint; `Link` headers name the configured STUN/TURN servers.
#[utoipa::path(options, path = "/whip/{room}", tag = "media", params(("room" = String, Path)), security(()),
    responses((status = 204)))]
async fn whip_options(State(shared): State<Arc<Shared>>) -> Response {
    options(&shared)
}

/// CORS preflight of a WHEP endpoint, as for WHIP.
#[utoipa::path(options, path = "/whep/{room}", tag = "media", params(("room" = String, Path)), security(()),
    responses((status = 204)))]
async fn whep_options(State(shared): State<Arc<Shared>>) -> Response {
    options(&shared)
}

/// Trickle ICE for a WHIP session (`application/trickle-ice-sdpfrag`). The server is ICE-lite:
/// candidates need nothing (204); an ICE restart is refused (422).
#[utoipa::path(patch, path = "/whip/{room}/{session}", tag = "media",
    params(("room" = String, Path), ("session" = String, Path), SessionParams),
    request_body(content = String, content_type = "application/trickle-ice-sdpfrag"),
    responses((status = 204), (status = 400), (status = 401), (status = 404), (status = 412), (status = 415),
              (status = 422, description = "ICE restart: not supported")))]
async fn whip_patch(
    State(shared): State<Arc<Shared>>,
    ids: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<SessionParams>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    patch(&shared, ids, params, &headers, body).await
}

/// Trickle ICE for a WHEP session, as for WHIP.
#[utoipa::path(patch, path = "/whep/{room}/{session}", tag = "media",
    params(("room" = String, Path), ("session" = String, Path), SessionParams),
    request_body(content = String, content_type = "application/trickle-ice-sdpfrag"),
    responses((status = 204), (status = 400), (status = 401), (status = 404), (status = 412), (status = 415),
              (status = 422, description = "ICE restart: not supported")))]
async fn whep_patch(
    State(shared): State<Arc<Shared>>,
    ids: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<SessionParams>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    patch(&shared, ids, params, &headers, body).await
}

/// End a WHIP session: its participant leaves the meeting.
#[utoipa::path(delete, path = "/whip/{room}/{session}", tag = "media",
    params(("room" = String, Path), ("session" = String, Path), SessionParams),
    responses((status = 200), (status = 401), (status = 404)))]
async fn whip_delete(
    State(shared): State<Arc<Shared>>,
    ids: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<SessionParams>, QueryRejection>,
    headers: HeaderMap,
) -> Reply {
    delete(&shared, ids, params, &headers).await
}

/// End a WHEP session, as for WHIP.
#[utoipa::path(delete, path = "/whep/{room}/{session}", tag = "media",
    params(("room" = String, Path), ("session" = String, Path), SessionParams),
    responses((status = 200), (status = 401), (status = 404)))]
async fn whep_delete(
    State(shared): State<Arc<Shared>>,
    ids: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<SessionParams>, QueryRejection>,
    headers: HeaderMap,
) -> Reply {
    delete(&shared, ids, params, &headers).await
}

async fn offer(
    shared: &Arc<Shared>,
    role: ClientRole,
    room: Result<Path<String>, PathRejection>,
    params: Result<Query<OfferParams>, QueryRejection>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let claims = authenticate(shared, headers)?;
    let (grant, needs) = match role {
        ClientRole::Publish => (Grant::Publish, "publishing (WHIP) needs the publish grant"),
        ClientRole::Play => (Grant::Subscribe, "playing (WHEP) needs the subscribe grant"),
    };
    if !claims.has(grant) {
        return Err(Refusal::new(StatusCode::FORBIDDEN, needs));
    }
    let Path(room) = room.map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let Query(params) = params.map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let sdp = text_body(headers, body, SDP)?;
    let space = space_of(&claims, params.space)?;
    crate::chat::rules::check_room_id(&room)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    // The offer is checked before the room is touched (created, or its meeting started).
    check_client_offer(&sdp, role)?;
    let admin = super::session::admit(shared, &claims, &space, &room)
        .await
        .map_err(|e| access_refused(e, &space, &room))?;
    let joiner = Joiner {
        user: claims.sub.clone(),
        org: claims.org.clone(),
        name: params.name,
        default_name: claims.name.clone().unwrap_or_else(|| claims.sub.clone()),
        grants: Grants {
            publish: role == ClientRole::Publish,
            subscribe: role == ClientRole::Play,
            data: false,
            admin,
        },
    };
    let resource = crate::spaces::random_id();
    let start = Start {
        resource: resource.clone(),
        conn: shared.next_conn_id(),
        joiner,
        role,
        sdp,
        follow: params.participant,
        expires_ms: claims.exp.saturating_mul(1000),
    };
    // Starting runs to its end even if the client hangs up meanwhile: the presence
    // connection it opens must reach the meeting's task, which closes it, or be closed.
    let starting = start_session(
        shared.clone(),
        claims.clone(),
        space.clone(),
        room.clone(),
        start,
    );
    let started = (shared.tasks.spawn(starting).await).map_err(|_| {
        Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the session did not start",
        )
    })??;
    let location = format!("/{}/{room}/{resource}?space={space}", path_of(role));
    let mut response = (StatusCode::CREATED, started.answer).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    h.insert(header::LOCATION, value(&location)?);
    h.insert(header::ETAG, value(&started.etag)?);
    h.insert(PARTICIPANT, value(&started.participant)?);
    let servers = super::session::ice_servers(&shared.config, &claims.sub);
    links(h, &servers)?;
    cors(h);
    Ok(response)
}

/// Open `start`'s presence connection (see the module docs) and start the session in the
/// meeting of `room` of `space`, in a new task if the one there is ending.
async fn start_session(
    shared: Arc<Shared>,
    claims: Claims,
    space: String,
    room: String,
    start: Start,
) -> Result<Started, Refusal> {
    // The presence connection never subscribes, and presence queues no replies for it
    // (`tell`): nothing is ever pushed to its outbox.
    let outbox = Arc::new(Outbox::new(start.conn, 0, shared.metrics.clone()));
    (shared.presence)
        .connect(&shared.spaces, start.conn, &claims, outbox)
        .await;
    for _ in 0..START_ATTEMPTS {
        let plan = super::Plan {
            mode: MeetingMode::Sfu,
            sfu_participants: 0,
        };
        let commands = shared.meetings.task(&space, &room, plan);
        let (done, answer) = oneshot::channel();
        let command = Command::Start {
            start: start.clone(),
            done,
        };
        if commands.send(super::Command::Whip(command)).await.is_ok()
            && let Ok(result) = answer.await
        {
            // The task took the session, and its presence connection.
            return result;
        }
        if shared.shutdown.is_cancelled() {
            break;
        }
        // The task was ending: forget it (if nobody did yet) and start a new one.
        shared.meetings.forget(&space, &room, &commands);
    }
    shared.presence.disconnect(start.conn).await;
    Err(Refusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the meeting is not available; retry",
    ))
}

async fn patch(
    shared: &Shared,
    ids: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<SessionParams>, QueryRejection>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let claims = authenticate(shared, headers)?;
    let (commands, resource) = session_task(shared, &claims, ids, params)?;
    let fragment = text_body(headers, body, SDP_FRAGMENT)?;
    let if_match = (headers.get(header::IF_MATCH))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (done, answer) = oneshot::channel();
    let command = Command::Patch {
        resource,
        user: claims.sub,
        org: claims.org,
        if_match,
        fragment,
        done,
    };
    ask(&commands, command, answer).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    cors(response.headers_mut());
    Ok(response)
}

async fn delete(
    shared: &Shared,
    ids: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<SessionParams>, QueryRejection>,
    headers: &HeaderMap,
) -> Reply {
    let claims = authenticate(shared, headers)?;
    let (commands, resource) = session_task(shared, &claims, ids, params)?;
    let (done, answer) = oneshot::channel();
    let command = Command::End {
        resource,
        user: claims.sub,
        org: claims.org,
        done,
    };
    ask(&commands, command, answer).await?;
    let mut response = StatusCode::OK.into_response();
    cors(response.headers_mut());
    Ok(response)
}

fn options(shared: &Shared) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert(
        HeaderName::from_static("accept-post"),
        HeaderValue::from_static(SDP),
    );
    // Credentials are minted per user, so the unauthenticated preflight names only the
    // servers that need none.
    let servers: Vec<IceServer> = super::session::ice_servers(&shared.config, "")
        .into_iter()
        .filter(|s| s.credential.is_none())
        .collect();
    if let Err(e) = links(h, &servers) {
        return e.into_response();
    }
    cors(h);
    response
}

/// Send `command` to the task and wait for its answer.
async fn ask(
    commands: &mpsc::Sender<super::Command>,
    command: Command,
    answer: oneshot::Receiver<Result<(), Refusal>>,
) -> Result<(), Refusal> {
    if commands.send(super::Command::Whip(command)).await.is_err() {
        return Err(Refusal::new(StatusCode::NOT_FOUND, "no such session"));
    }
    answer
        .await
        .unwrap_or_else(|_| Err(Refusal::new(StatusCode::NOT_FOUND, "no such session")))
}

/// The task of the meeting a session's path names, and its resource id.
fn session_task(
    shared: &Shared,
    claims: &Claims,
    ids: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<SessionParams>, QueryRejection>,
) -> Result<(mpsc::Sender<super::Command>, String), Refusal> {
    let Path((room, resource)) =
        ids.map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let Query(params) = params.map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let space = space_of(claims, params.space)?;
    let commands = live(&shared.meetings, &space, &room)
        .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, "no such session"))?;
    Ok((commands, resource))
}

fn live(meetings: &Meetings, space: &str, room: &str) -> Option<mpsc::Sender<super::Command>> {
    let live = meetings.inner.live.get(&super::key(space, room))?;
    Some(live.clone())
}

fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<Claims, Refusal> {
    let token = (headers.get(header::AUTHORIZATION))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::UNAUTHORIZED,
                "an `Authorization: Bearer <token>` header is required",
            )
        })?;
    (shared.keys)
        .verify(token, crate::auth::unix_now())
        .map_err(|e| Refusal::new(StatusCode::UNAUTHORIZED, format!("bad token: {e}")))
}

/// The body, if `headers` say it is `content_type` and it is within the SDP bound.
fn text_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    content_type: &str,
) -> Result<String, Refusal> {
    let given = (headers.get(header::CONTENT_TYPE))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if !given.is_some_and(|g| g.eq_ignore_ascii_case(content_type)) {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("the body must be `Content-Type: {content_type}`"),
        ));
    }
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is at most {} bytes", signaling::MAX_SDP_BYTES),
        )
    };
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        status => Refusal::new(status, e.body_text()),
    })?;
    if body.len() > signaling::MAX_SDP_BYTES {
        return Err(too_large());
    }
    String::from_utf8(body.to_vec())
        .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "the body is not UTF-8"))
}

fn space_of(claims: &Claims, space: Option<String>) -> Result<String, Refusal> {
    space.or_else(|| home_id(&claims.org)).ok_or_else(|| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "your organisation has no home space: name a `space`",
        )
    })
}

/// A refused room access: 403 whether the space or room is missing or closed to the caller,
/// so that a refusal does not tell which.
fn access_refused(e: ServiceError, space: &str, room: &str) -> Refusal {
    let status = match StatusCode::from_u16(e.code.http_status()) {
        Ok(StatusCode::NOT_FOUND) | Ok(StatusCode::FORBIDDEN) => StatusCode::FORBIDDEN,
        Ok(status) => status,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Refusal::new(
        status,
        format!(
            "no access to room `{room}` of space `{space}`: {}",
            e.message
        ),
    )
}

fn path_of(role: ClientRole) -> &'static str {
    match role {
        ClientRole::Publish => "whip",
        ClientRole::Play => "whep",
    }
}

fn value(s: &str) -> Result<HeaderValue, Refusal> {
    HeaderValue::from_str(s).map_err(|_| {
        Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "a header value is not valid",
        )
    })
}

/// One `Link: <url>; rel="ice-server"` header per ICE server URL (RFC 9725 4.6).
fn links(h: &mut HeaderMap, servers: &[IceServer]) -> Result<(), Refusal> {
    for server in servers {
        for url in &server.urls {
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if let (Some(user), Some(credential)) = (&server.username, &server.credential) {
                link.push_str(&format!(
                    "; username=\"{user}\"; credential=\"{credential}\"; credential-type=\"password\""
                ));
            }
            h.append(header::LINK, value(&link)?);
        }
    }
    Ok(())
}

/// Browsers may call the endpoints from any page: access is by bearer token, never cookies.
fn cors(h: &mut HeaderMap) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, PATCH, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, If-Match"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, ETag, Link, Chorus-Participant"),
    );
}
