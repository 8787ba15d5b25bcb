//! A connection's meetings (`meeting.*` requests): who may join (the room's chat rules,
//! room creation on first join), the grants a participant gets, its ICE servers, and the
//! commands handed to each meeting's task. A closed connection's participants stay
//! `reconnecting` (they are not left), so a client that reconnects may resume them.

use super::{Command, Plan, service_error};
use crate::access::{Claims, Grant, RoomAction};
use crate::channel::ChannelRef;
use crate::config::Config;
use crate::hub::Outbox;
use crate::protocol::{ChatRequest, ErrorCode, MeetingRequest};
use crate::server::Shared;
use crate::spaces::{ServiceError, home_id};
use crate::store::MeetingSetting;
use serde_json::{Value, json};
use signaling::wire::{Grants, IceServer, MeetingMode};
use signaling::{ConnId, Joiner};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// How often a join may find its meeting's task ending before it gives up.
const JOIN_ATTEMPTS: usize = 4;

/// A meeting this connection joined.
struct Handle {
    space: String,
    commands: mpsc::Sender<Command>,
}

/// The meetings one connection is in, by `space/room`.
#[derive(Default)]
pub struct OpenMeetings {
    joined: HashMap<String, Handle>,
}

impl OpenMeetings {
    /// Execute a `meeting.*` request of connection `conn`. `Ok(None)`: the meeting's task
    /// queued the reply (in order with the frames it sends); `Ok(Some(result))`: the caller
    /// replies.
    pub async fn execute(
        &mut self,
        shared: &Shared,
        claims: &Claims,
        conn: ConnId,
        outbox: &Arc<Outbox>,
        request: MeetingRequest,
    ) -> Result<Option<Value>, ServiceError> {
        let space = match request.space() {
            Some(space) => space.to_string(),
            None => home_id(&claims.org).ok_or_else(|| {
                ServiceError::new(
                    ErrorCode::InvalidRequest,
                    "your organisation has no home space: name a `space`",
                )
            })?,
        };
        let room = request.room().to_string();
        crate::chat::rules::check_room_id(&room)?;
        let key = super::key(&space, &room);
        if let MeetingRequest::Join {
            id,
            name,
            resume,
            mode,
            ..
        } = request
        {
            if !self.joined.contains_key(&key)
                && self.joined.len() >= shared.config.max_subscriptions
            {
                return Err(ServiceError::new(
                    ErrorCode::TooManySubscriptions,
                    format!(
                        "a connection is in at most {} meetings",
                        shared.config.max_subscriptions
                    ),
                ));
            }
            let admin = admit(shared, claims, &space, &room).await?;
            let joiner = Joiner {
                user: claims.sub.clone(),
                org: claims.org.clone(),
                name,
                default_name: claims.name.clone().unwrap_or_else(|| claims.sub.clone()),
                grants: Grants {
                    publish: claims.has(Grant::Publish),
                    subscribe: claims.has(Grant::Subscribe),
                    data: claims.has(Grant::Publish),
                    admin,
                },
            };
            let ice_servers = ice_servers(&shared.config, &claims.sub);
            let plan = plan(shared, claims, &space, &room, mode).await?;
            for _ in 0..JOIN_ATTEMPTS {
                let commands = shared.meetings.task(&space, &room, plan);
                let (done, answer) = oneshot::channel();
                let join = Command::Join {
                    conn,
                    outbox: outbox.clone(),
                    id,
                    joiner: joiner.clone(),
                    resume: resume.clone(),
                    ice_servers: ice_servers.clone(),
                    done,
                };
                if commands.send(join).await.is_ok()
                    && let Ok(result) = answer.await
                {
                    result?;
                    let space = space.clone();
                    self.joined.insert(key, Handle { space, commands });
                    return Ok(None);
                }
                if shared.shutdown.is_cancelled() {
                    break;
                }
                // The task was ending: forget it (if nobody did yet) and join a new one.
                shared.meetings.forget(&space, &room, &commands);
            }
            return Err(ServiceError::new(
                ErrorCode::Internal,
                "the meeting is not available; retry",
            ));
        }
        let leave = matches!(request, MeetingRequest::Leave { .. });
        let Some(handle) = self.joined.get(&key) else {
            if let MeetingRequest::Leave {
                reason: Some(r), ..
            } = &request
                && r.len() > 200
            {
                return Err(ServiceError::new(
                    ErrorCode::InvalidRequest,
                    "a reason is at most 200 bytes",
                ));
            }
            return if leave {
                Ok(Some(json!({})))
            } else {
                Err(not_joined())
            };
        };
        let (done, answer) = oneshot::channel();
        let command = Command::Request {
            conn,
            outbox: outbox.clone(),
            request,
            done,
        };
        let sent = handle.commands.send(command).await.is_ok();
        let answer = if sent { answer.await.ok() } else { None };
        match answer {
            Some(Ok(())) => {
                if leave {
                    self.joined.remove(&key);
                }
                Ok(None)
            }
            Some(Err(e)) => {
                if e.code == ErrorCode::NotSubscribed {
                    // Removed, replaced or gone meanwhile.
                    self.joined.remove(&key);
                }
                Err(e)
            }
            None => {
                // The meeting ended (nobody left in it): this connection is not in it.
                self.joined.remove(&key);
                if leave {
                    Ok(Some(json!({})))
                } else {
                    Err(not_joined())
                }
            }
        }
    }

    /// The user lost access to `space`: leave its meetings.
    pub fn revoke_space(&mut self, conn: ConnId, space: &str) {
        let keys: Vec<String> = (self.joined.iter())
            .filter(|(_, h)| h.space == space)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.revoke(conn, &key);
        }
    }

    /// The user lost access to room channel `channel`: leave the room's meeting.
    pub fn revoke_channel(&mut self, conn: ConnId, channel: &str) {
        if let Ok(ChannelRef::Room { space, room }) = ChannelRef::parse(channel) {
            self.revoke(conn, &super::key(space, room));
        }
    }

    fn revoke(&mut self, conn: ConnId, key: &str) {
        if let Some(handle) = self.joined.remove(key) {
            // Must not be lost, and the reader must not wait for it.
            tokio::spawn(async move {
                let _ = handle.commands.send(Command::Revoke { conn }).await;
            });
        }
    }

    /// The connection closed: its participants are `reconnecting`.
    pub async fn close_all(self, conn: ConnId) {
        for (_, handle) in self.joined {
            let _ = handle.commands.send(Command::Disconnect { conn }).await;
        }
    }
}

fn not_joined() -> ServiceError {
    service_error(signaling::Error::NotJoined)
}

/// How a meeting the join may create carries media. The room's `meeting_mode` decides when
/// it is `mesh` or `sfu` (a join's `mode` is then ignored); in an `auto` room, the join's
/// `mode` if it names one (a meeting created `mesh` stays peer to peer), else SFU mode when
/// the space has at least `meeting_sfu_from` members, else a mesh that turns into SFU mode at
/// `meeting_sfu_participants`. Members are only counted when no meeting is live in the room.
async fn plan(
    shared: &Shared,
    claims: &Claims,
    space: &str,
    room: &str,
    asked: Option<MeetingMode>,
) -> Result<Plan, ServiceError> {
    let fixed = |mode| Plan {
        mode,
        sfu_participants: 0,
    };
    let setting = shared.chat.meeting_mode(space, room).await?;
    Ok(match (setting, asked) {
        (MeetingSetting::Mesh, _) => fixed(MeetingMode::Mesh),
        (MeetingSetting::Sfu, _) => fixed(MeetingMode::Sfu),
        (MeetingSetting::Auto, Some(mode)) => fixed(mode),
        (MeetingSetting::Auto, None) => {
            let from = shared.config.meeting_sfu_from;
            let large = from > 0
                && !shared.meetings.is_live(space, room)
                && shared.spaces.members(claims, space).await?.len() >= from;
            if large {
                fixed(MeetingMode::Sfu)
            } else {
                Plan {
                    mode: MeetingMode::Mesh,
                    sfu_participants: shared.config.meeting_sfu_participants,
                }
            }
        }
    })
}

/// May `claims` join the meeting of `room` in `space` (creating the room if allowed)? Returns
/// whether the caller is one of its admins.
pub(super) async fn admit(
    shared: &Shared,
    claims: &Claims,
    space: &str,
    room: &str,
) -> Result<bool, ServiceError> {
    // Readable as for chat.history, except that one may join without receiving media.
    let mut reader = claims.clone();
    if !reader.has(Grant::Subscribe) {
        reader.grants.push(Grant::Subscribe);
    }
    let chat = &shared.chat;
    let read = RoomAction::Read;
    match chat
        .authorize(&shared.spaces, &reader, space, room, read)
        .await
    {
        Ok(()) => {}
        Err(e) if e.code == ErrorCode::NotFound && shared.config.meetings_auto_create => {
            create_room(shared, claims, space, room).await?;
            chat.authorize(&shared.spaces, &reader, space, room, read)
                .await?;
        }
        Err(e) => return Err(e),
    }
    let manage = chat.authorize(&shared.spaces, claims, space, room, RoomAction::Manage);
    Ok(manage.await.is_ok())
}

/// Create `room` in `space` as a public room named after its id (the home space first, if it
/// is the caller's and missing). A room that exists already is left as it is.
async fn create_room(
    shared: &Shared,
    claims: &Claims,
    space: &str,
    room: &str,
) -> Result<(), ServiceError> {
    let now = crate::server::unix_ms();
    if home_id(&claims.org).as_deref() == Some(space) {
        shared.spaces.home(claims, now).await?;
    }
    let request = ChatRequest::CreateRoom {
        id: 0,
        space: space.to_string(),
        room: Some(room.to_string()),
        name: room.to_string(),
        private: false,
    };
    let created = (shared.chat)
        .execute(&shared.spaces, &shared.users, claims, &request, now)
        .await;
    match created {
        Ok(_) => Ok(()),
        // Someone created it meanwhile, or it is not visible to the caller: the check after
        // tells.
        Err(e) if e.code == ErrorCode::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The ICE servers of a participant: the configured STUN/TURN URLs, and TURN credentials for
/// `user` when a TURN secret is configured.
pub fn ice_servers(config: &Config, user: &str) -> Vec<IceServer> {
    let mut servers = Vec::new();
    if !config.ice_servers.is_empty() {
        servers.push(IceServer {
            urls: config.ice_servers.clone(),
            username: None,
            credential: None,
        });
    }
    if let Some(secret) = &config.turn_secret {
        let now = crate::auth::unix_now();
        let c =
            signaling::turn::turn_credentials(secret.as_bytes(), user, now, config.turn_ttl_secs);
        servers.push(IceServer {
            urls: config.turn_urls.clone(),
            username: Some(c.username),
            credential: Some(c.credential),
        });
    }
    servers
}
