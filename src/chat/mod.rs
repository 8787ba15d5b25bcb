//! Persistent chat: rooms in spaces, their members, and each room's stream of events (messages,
//! edits, deletes) with store-assigned offsets. The store commits and sequences; its feed hands
//! every committed event to the hub, which fans it out on the room's channel
//! (`room:<space>/<room>`) and keeps a hot tail for resuming. Every decision goes through
//! `access::authorize`; the pure rules live in `rules`.

pub mod http;
pub mod rules;

use crate::access::{Action, Claims, Role, RoomAction, RoomView, SpaceView, authorize};
use crate::channel::ChannelRef;
use crate::hub::{Attach, Hub, Outbox};
use crate::protocol::{ChatRequest, ErrorCode, Position};
use crate::spaces::{ServiceError, Spaces, random_id};
use crate::store::{
    ChatEvent, ChatFeed, ChatStore, EventKind, MeetingSetting, Message, NewMessage, Page, Room,
    RoomMember, RoomUpdate, SearchQuery,
};
use crate::users::Users;
use dashmap::DashMap;
use rules::{ChatLimits, Invalid};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

impl From<Invalid> for ServiceError {
    fn from(e: Invalid) -> Self {
        ServiceError::new(ErrorCode::InvalidRequest, e.0)
    }
}

/// A submitted request's reply body, once its effect has committed.
pub type Acknowledgement = Pin<Box<dyn Future<Output = Result<Value, ServiceError>> + Send>>;

/// The channel of a room's stream.
pub fn room_channel(space: &str, room: &str) -> String {
    format!("room:{space}/{room}")
}

/// The personal channel of `user` of `org`.
pub fn user_channel(org: &str, user: &str) -> String {
    format!("user:{org}/{user}")
}

/// The `data` of a room channel's `message` frame for `event` (its offset is the frame's).
pub fn event_data(event: &ChatEvent) -> Value {
    let mut data = json!({ "kind": event.kind, "message": event.message });
    if let Some(root) = &event.root {
        data["root"] = json!(root);
    }
    data
}

/// An event as `chat.sync` lists it: the frame's `data` with its offset.
fn event_json(event: &ChatEvent) -> Value {
    let mut value = event_data(event);
    value["offset"] = json!(event.offset);
    value
}

/// Hands committed events to the hub. Runs on the store's commit path, in commit order, so each
/// room's channel sees its events in offset order without gaps.
struct HubFeed {
    hub: Arc<Hub>,
}

impl ChatFeed for HubFeed {
    fn committed(&self, event: &ChatEvent) {
        let channel = room_channel(&event.space, &event.room);
        // Replayed events show their message as it is now. The tail holds messages as they
        // were delivered, so once one changes (a deleted body must never be replayed), resumes
        // from before the change are served by the store.
        if event.kind != EventKind::Message {
            self.hub.forget_tail(&channel);
        }
        // Without a channel nobody listens, and `deliver` would drop the data unread.
        if self.hub.is_open(&channel) {
            self.hub.deliver(&channel, event.offset, event_data(event));
        }
    }
}

/// What the cache holds for one room. The room's `head` in it is stale: read it from the store.
struct RoomEntry {
    room: Room,
    members: HashMap<String, RoomMember>,
}

/// What an authorization decision needs, gathered once per request.
struct Ctx {
    space: Option<(String, Option<Role>)>,
    entry: Option<Arc<RoomEntry>>,
}

impl Ctx {
    fn role_in_room(&self, claims: &Claims) -> Option<Role> {
        let entry = self.entry.as_ref()?;
        entry
            .members
            .get(&claims.sub)
            .filter(|m| m.org == claims.org)
            .map(|m| m.role)
    }

    fn allow(&self, claims: &Claims, action: RoomAction<'_>) -> Result<(), ServiceError> {
        let room = self.entry.as_ref().map(|e| RoomView {
            private: e.room.private,
            archived: e.room.archived,
            direct: e.room.direct,
            role: self.role_in_room(claims),
        });
        let space = self
            .space
            .as_ref()
            .map(|(org, role)| SpaceView { org, role: *role });
        authorize(claims, Action::Room { room, action }, space)?;
        Ok(())
    }

    /// The room, once `allow` passed for an action on an existing room.
    fn entry(&self) -> &RoomEntry {
        self.entry
            .as_ref()
            .expect("authorize refuses missing rooms")
    }
}

/// Told of committed changes of a room that its live meeting follows.
pub trait RoomListener: Send + Sync + 'static {
    /// The room's meeting mode was set.
    fn meeting_mode_set(&self, space: &str, room: &str, mode: MeetingSetting);
    /// `user` was removed from the (private) room and may no longer read it.
    fn access_lost(&self, space: &str, room: &str, user: &str);
}

pub struct Chat {
    store: Arc<dyn ChatStore>,
    listener: OnceLock<Arc<dyn RoomListener>>,
    hub: Arc<Hub>,
    limits: ChatLimits,
    /// Rooms by `space/room`. Misses are not cached.
    cache: DashMap<String, Arc<RoomEntry>>,
    /// Bumped on every change to a room, so a load that raced with a change is not cached.
    generations: DashMap<String, u64>,
}

impl Chat {
    /// The chat service on `store`, delivering through `hub`. Installs the store's feed.
    pub fn new(store: Arc<dyn ChatStore>, hub: Arc<Hub>, limits: ChatLimits) -> Chat {
        store.set_feed(Arc::new(HubFeed { hub: hub.clone() }));
        Chat {
            store,
            listener: OnceLock::new(),
            hub,
            limits,
            cache: DashMap::new(),
            generations: DashMap::new(),
        }
    }

    /// Tell `listener` of every room's meeting mode set from now on (once, at start).
    pub fn set_listener(&self, listener: Arc<dyn RoomListener>) {
        let _ = self.listener.set(listener);
    }

    /// The meeting mode of `room` in `space`, for a caller already authorized to read it.
    pub async fn meeting_mode(
        &self,
        space: &str,
        room: &str,
    ) -> Result<MeetingSetting, ServiceError> {
        let entry = self.entry(space, room).await?;
        let entry = entry
            .ok_or_else(|| ServiceError::new(ErrorCode::NotFound, format!("no room {room}")))?;
        Ok(entry.room.meeting_mode)
    }

    fn generation(&self, key: &str) -> u64 {
        self.generations.get(key).map_or(0, |g| *g)
    }

    fn invalidate(&self, space: &str, room: &str) {
        let key = format!("{space}/{room}");
        *self.generations.entry(key.clone()).or_insert(0) += 1;
        self.cache.remove(&key);
    }

    /// `user` left `space`: the store dropped their room memberships there.
    pub fn left_space(&self, space: &str) {
        let prefix = format!("{space}/");
        let keys: Vec<String> = self
            .cache
            .iter()
            .filter(|e| e.key().starts_with(&prefix))
            .map(|e| e.key().clone())
            .collect();
        for key in keys {
            *self.generations.entry(key.clone()).or_insert(0) += 1;
            self.cache.remove(&key);
        }
    }

    async fn entry(&self, space: &str, room: &str) -> Result<Option<Arc<RoomEntry>>, ServiceError> {
        let key = format!("{space}/{room}");
        if let Some(hit) = self.cache.get(&key) {
            return Ok(Some(hit.clone()));
        }
        let generation = self.generation(&key);
        let entry = match self.store.room(space, room).await? {
            None => None,
            Some(room) => {
                let members = self.store.room_members(space, &room.id).await?;
                Some(Arc::new(RoomEntry {
                    room,
                    members: members.into_iter().map(|m| (m.user.clone(), m)).collect(),
                }))
            }
        };
        if let Some(entry) = &entry
            && self.generation(&key) == generation
        {
            self.cache.insert(key, entry.clone());
        }
        Ok(entry)
    }

    /// Gather what deciding on `room` (or, with `None`, on the space alone) takes.
    async fn ctx(
        &self,
        spaces: &Spaces,
        claims: &Claims,
        space: &str,
        room: Option<&str>,
    ) -> Result<Ctx, ServiceError> {
        let space_view = spaces
            .view(claims, space)
            .await?
            .map(|(space, role)| (space.org, role));
        // Rooms of a space the caller cannot see are not even looked up.
        let entry = match (room, &space_view) {
            (Some(room), Some(_)) => self.entry(space, room).await?,
            _ => None,
        };
        Ok(Ctx {
            space: space_view,
            entry,
        })
    }

    async fn check(
        &self,
        spaces: &Spaces,
        claims: &Claims,
        space: &str,
        room: &str,
        action: RoomAction<'_>,
    ) -> Result<Ctx, ServiceError> {
        let ctx = self.ctx(spaces, claims, space, Some(room)).await?;
        ctx.allow(claims, action)?;
        Ok(ctx)
    }

    /// Whether `claims` may do `action` in room `room` of `space`, for checks made outside this
    /// service: reading the room channel (`subscribe`, joining its meeting), managing the room
    /// (its owners and the space's managers: a meeting's admins).
    pub async fn authorize(
        &self,
        spaces: &Spaces,
        claims: &Claims,
        space: &str,
        room: &str,
        action: RoomAction<'_>,
    ) -> Result<(), ServiceError> {
        self.check(spaces, claims, space, room, action)
            .await
            .map(drop)
    }

    /// `execute` in two steps, for callers that keep several requests in flight: returns once
    /// the request is decided or, for `chat.send`, queued in the store, so that sends submitted
    /// one after another get offsets in that order; the `Acknowledgement` then resolves to the
    /// reply body after the commit.
    pub async fn submit(
        &self,
        spaces: &Spaces,
        users: &Users,
        claims: &Claims,
        request: &ChatRequest,
        now_ms: i64,
    ) -> Result<Acknowledgement, ServiceError> {
        if let ChatRequest::Send { .. } = request {
            return self.send(spaces, claims, request, now_ms).await;
        }
        let reply = self.execute(spaces, users, claims, request, now_ms).await;
        Ok(Box::pin(std::future::ready(reply)))
    }

    /// `chat.send` up to the store's queue.
    async fn send(
        &self,
        spaces: &Spaces,
        claims: &Claims,
        request: &ChatRequest,
        now_ms: i64,
    ) -> Result<Acknowledgement, ServiceError> {
        let ChatRequest::Send {
            space,
            room,
            client_id,
            body,
            format,
            thread,
            ..
        } = request
        else {
            unreachable!("`send` is called with `chat.send` requests")
        };
        rules::check_client_id(client_id)?;
        rules::check_body(body, &self.limits)?;
        let ctx = self
            .check(spaces, claims, space, room, RoomAction::Send)
            .await?;
        let entry = ctx.entry.expect("authorize refuses missing rooms");
        // Mentions count for members of the room only.
        let mentions: Vec<String> = rules::mentions(body)
            .into_iter()
            .filter(|user| *user != claims.sub && entry.members.contains_key(user))
            .collect();
        let queued = self
            .store
            .queue_send(NewMessage {
                space: space.clone(),
                room: room.clone(),
                client_id: client_id.clone(),
                author: claims.sub.clone(),
                body: body.clone(),
                format: format.as_str().to_string(),
                mentions,
                thread: *thread,
                at_ms: now_ms,
            })
            .await?;
        let hub = self.hub.clone();
        let (space, room) = (space.clone(), room.clone());
        Ok(Box::pin(async move {
            let sent = queued.await?;
            if !sent.duplicate {
                for user in &sent.message.mentions {
                    let Some(member) = entry.members.get(user) else {
                        continue;
                    };
                    let event = json!({
                        "kind": "mention",
                        "space": space,
                        "room": room,
                        "offset": sent.message.offset,
                        "message": sent.message,
                    });
                    hub.publish_if_open(&user_channel(&member.org, user), &event);
                }
            }
            // The store returned: the message is committed (and delivered to subscribers).
            Ok(json!({
                "space": space,
                "room": room,
                "client_id": sent.message.client_id,
                "offset": sent.message.offset,
                "epoch": sent.epoch,
                "created_ms": sent.message.created_ms,
                "duplicate": sent.duplicate,
            }))
        }))
    }

    /// Execute a `chat.*` request; the result is the reply body.
    pub async fn execute(
        &self,
        spaces: &Spaces,
        users: &Users,
        claims: &Claims,
        request: &ChatRequest,
        now_ms: i64,
    ) -> Result<Value, ServiceError> {
        Ok(match request {
            ChatRequest::CreateRoom {
                space,
                room,
                name,
                private,
                ..
            } => {
                let room = self
                    .create_room(spaces, claims, space, room.clone(), name, *private, now_ms)
                    .await?;
                room_json(&room, Some(Role::Owner))
            }
            ChatRequest::OpenDirect { space, users, .. } => {
                let (room, created) = self
                    .open_direct(spaces, claims, space, users, now_ms)
                    .await?;
                let mut reply = room_json(&room, Some(Role::Member));
                reply["created"] = json!(created);
                reply
            }
            ChatRequest::Rooms { space, .. } => {
                json!({ "space": space, "rooms": self.rooms(spaces, claims, space).await? })
            }
            ChatRequest::RenameRoom {
                space, room, name, ..
            } => {
                rules::check_room_name(name)?;
                let update = RoomUpdate {
                    name: Some(name.clone()),
                    ..RoomUpdate::default()
                };
                self.update(spaces, claims, space, room, update).await?
            }
            ChatRequest::SetMeetingMode {
                space,
                room,
                meeting_mode,
                ..
            } => {
                let update = RoomUpdate {
                    meeting_mode: Some(*meeting_mode),
                    ..RoomUpdate::default()
                };
                let reply = self.update(spaces, claims, space, room, update).await?;
                if let Some(listener) = self.listener.get() {
                    listener.meeting_mode_set(space, room, *meeting_mode);
                }
                reply
            }
            ChatRequest::ArchiveRoom {
                space,
                room,
                archived,
                ..
            } => {
                let update = RoomUpdate {
                    archived: Some(*archived),
                    ..RoomUpdate::default()
                };
                self.update(spaces, claims, space, room, update).await?
            }
            ChatRequest::Join { space, room, .. } => {
                json!(self.join(spaces, claims, space, room, now_ms).await?)
            }
            ChatRequest::Leave { space, room, .. } => {
                self.remove(spaces, users, claims, space, room, &claims.sub)
                    .await?;
                json!({ "space": space, "room": room, "user": claims.sub })
            }
            ChatRequest::Invite {
                space,
                room,
                user,
                role,
                ..
            } => json!(
                self.invite(spaces, claims, space, room, user, *role, now_ms)
                    .await?
            ),
            ChatRequest::RemoveMember {
                space, room, user, ..
            } => {
                self.remove(spaces, users, claims, space, room, user)
                    .await?;
                json!({ "space": space, "room": room, "user": user })
            }
            ChatRequest::Members { space, room, .. } => {
                let ctx = self
                    .check(spaces, claims, space, room, RoomAction::See)
                    .await?;
                let mut members: Vec<&RoomMember> = ctx.entry().members.values().collect();
                members.sort_by(|a, b| a.user.cmp(&b.user));
                json!({ "space": space, "room": room, "members": members })
            }
            ChatRequest::Send { .. } => self.send(spaces, claims, request, now_ms).await?.await?,
            ChatRequest::Edit {
                space,
                room,
                offset,
                body,
                format,
                ..
            } => {
                rules::check_body(body, &self.limits)?;
                let ctx = self
                    .check(spaces, claims, space, room, RoomAction::See)
                    .await?;
                let message = self.live_message(space, room, *offset).await?;
                if message.author != claims.sub {
                    return Err(ServiceError::new(
                        ErrorCode::Forbidden,
                        "only its author edits a message",
                    ));
                }
                ctx.allow(claims, RoomAction::Send)?;
                let event = self
                    .store
                    .edit(
                        space,
                        room,
                        *offset,
                        body.clone(),
                        format.as_str().to_string(),
                        now_ms,
                    )
                    .await?;
                event_json(&event)
            }
            ChatRequest::Delete {
                space,
                room,
                offset,
                ..
            } => {
                let ctx = self
                    .check(spaces, claims, space, room, RoomAction::See)
                    .await?;
                let message = self
                    .store
                    .message(space, room, *offset)
                    .await?
                    .ok_or_else(|| no_message(*offset))?;
                ctx.allow(
                    claims,
                    if message.author == claims.sub {
                        RoomAction::Send
                    } else {
                        RoomAction::Moderate
                    },
                )?;
                match self.store.delete(space, room, *offset, now_ms).await? {
                    Some(event) => event_json(&event),
                    // Deleted before: nothing new happened.
                    None => json!({ "offset": null, "kind": "delete", "message": message }),
                }
            }
            ChatRequest::History {
                space,
                room,
                before,
                after,
                limit,
                thread,
                ..
            } => {
                let ctx = self
                    .check(spaces, claims, space, room, RoomAction::Read)
                    .await?;
                let page = Page {
                    before: *before,
                    after: *after,
                    limit: rules::page_limit(*limit, rules::DEFAULT_PAGE, rules::MAX_PAGE),
                    thread: *thread,
                };
                let (messages, more) = self.store.history(space, room, page).await?;
                json!({
                    "space": space,
                    "room": room,
                    "epoch": ctx.entry().room.epoch,
                    "messages": messages,
                    "more": more,
                })
            }
            ChatRequest::Sync {
                space,
                room,
                epoch,
                after,
                limit,
                ..
            } => {
                let ctx = self
                    .check(spaces, claims, space, room, RoomAction::Read)
                    .await?;
                let current = ctx.entry().room.epoch;
                let limit = rules::page_limit(*limit, rules::DEFAULT_SYNC, rules::MAX_SYNC);
                let (events, head) = self.store.events(space, room, *after, limit).await?;
                let mut reply = json!({
                    "space": space,
                    "room": room,
                    "epoch": current,
                    "head": head,
                });
                if epoch.is_some_and(|e| e != current) || *after > head {
                    reply["reset"] = json!(true);
                } else {
                    let last = events.last().map_or(*after, |e| e.offset);
                    reply["events"] = events.iter().map(event_json).collect();
                    reply["more"] = json!(last < head);
                }
                reply
            }
            ChatRequest::React {
                space,
                room,
                offset,
                emoji,
                ..
            }
            | ChatRequest::Unreact {
                space,
                room,
                offset,
                emoji,
                ..
            } => {
                rules::check_emoji(emoji)?;
                self.check(spaces, claims, space, room, RoomAction::Send)
                    .await?;
                let add = matches!(request, ChatRequest::React { .. });
                let event = self
                    .store
                    .react(space, room, *offset, emoji, &claims.sub, add, now_ms)
                    .await?;
                match event {
                    Some(event) => event_json(&event),
                    // Already so: nothing new happened.
                    None => {
                        let message = self.live_message(space, room, *offset).await?;
                        json!({ "offset": null, "kind": "reaction", "message": message })
                    }
                }
            }
            ChatRequest::MarkRead {
                space,
                room,
                offset,
                ..
            } => {
                let ctx = self
                    .check(spaces, claims, space, room, RoomAction::Read)
                    .await?;
                let (state, moved) = self
                    .store
                    .mark_read(space, room, &claims.sub, *offset, now_ms)
                    .await?;
                if moved {
                    // The reader's other devices, then the other members (a receipt).
                    let mut read = json!(state);
                    read["kind"] = json!("read");
                    let own = user_channel(&claims.org, &claims.sub);
                    self.hub.publish_if_open(&own, &read);
                    let receipt = json!({
                        "kind": "receipt",
                        "space": space,
                        "room": room,
                        "user": claims.sub,
                        "offset": state.last_read,
                        "at_ms": now_ms,
                    });
                    for member in ctx.entry().members.values() {
                        if member.user != claims.sub {
                            let channel = user_channel(&member.org, &member.user);
                            self.hub.publish_if_open(&channel, &receipt);
                        }
                    }
                }
                json!(state)
            }
            ChatRequest::Unread { space, .. } => {
                let ctx = self.ctx(spaces, claims, space, None).await?;
                let view = ctx
                    .space
                    .as_ref()
                    .map(|(org, role)| SpaceView { org, role: *role });
                authorize(claims, Action::ReadSpace, view)?;
                let rooms = self.store.read_states(space, &claims.sub).await?;
                json!({ "space": space, "rooms": rooms })
            }
            ChatRequest::Receipts { space, room, .. } => {
                self.check(spaces, claims, space, room, RoomAction::Read)
                    .await?;
                let receipts = self.store.receipts(space, room).await?;
                json!({ "space": space, "room": room, "receipts": receipts })
            }
            ChatRequest::Search {
                space,
                query,
                room,
                author,
                from_ms,
                until_ms,
                limit,
                skip,
                ..
            } => {
                let terms = rules::search_terms(query)?;
                let limit = rules::page_limit(*limit, rules::DEFAULT_HITS, rules::MAX_HITS);
                let skip = skip.unwrap_or(0).min(rules::MAX_SKIP);
                let rooms = match room {
                    Some(room) => {
                        self.check(spaces, claims, space, room, RoomAction::Read)
                            .await?;
                        vec![room.clone()]
                    }
                    None => self.readable_rooms(spaces, claims, space).await?,
                };
                let search = SearchQuery {
                    terms,
                    author: author.clone(),
                    from_ms: *from_ms,
                    until_ms: *until_ms,
                    // One more tells whether another page follows.
                    limit: limit + 1,
                    skip,
                };
                let mut hits = self.store.search(space, rooms, search).await?;
                let more = hits.len() > limit;
                hits.truncate(limit);
                json!({ "space": space, "hits": hits, "more": more })
            }
            ChatRequest::Revisions {
                space,
                room,
                offset,
                ..
            } => {
                self.check(spaces, claims, space, room, RoomAction::Read)
                    .await?;
                self.live_message(space, room, *offset).await?;
                let revisions = self.store.revisions(space, room, *offset).await?;
                json!({ "space": space, "room": room, "offset": offset, "revisions": revisions })
            }
        })
    }

    async fn live_message(
        &self,
        space: &str,
        room: &str,
        offset: u64,
    ) -> Result<Message, ServiceError> {
        self.store
            .message(space, room, offset)
            .await?
            .filter(|m| m.deleted_ms.is_none())
            .ok_or_else(|| no_message(offset))
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_room(
        &self,
        spaces: &Spaces,
        claims: &Claims,
        space: &str,
        room: Option<String>,
        name: &str,
        private: bool,
        now_ms: i64,
    ) -> Result<Room, ServiceError> {
        let id = match room {
            Some(id) => {
                rules::check_room_id(&id)?;
                id
            }
            None => random_id(),
        };
        rules::check_room_name(name)?;
        let ctx = self.ctx(spaces, claims, space, None).await?;
        ctx.allow(claims, RoomAction::Create)?;
        let room = Room {
            space: space.to_string(),
            id,
            name: name.to_string(),
            private,
            archived: false,
            direct: false,
            epoch: new_epoch(now_ms),
            head: 0,
            created_by: claims.sub.clone(),
            created_ms: now_ms,
            meeting_mode: MeetingSetting::Auto,
        };
        let owner = RoomMember {
            space: space.to_string(),
            room: room.id.clone(),
            user: claims.sub.clone(),
            org: claims.org.clone(),
            role: Role::Owner,
            joined_ms: now_ms,
        };
        self.store.create_room(room.clone(), owner).await?;
        self.invalidate(space, &room.id);
        Ok(room)
    }

    /// The ids of the rooms of `space` whose messages the caller may read.
    async fn readable_rooms(
        &self,
        spaces: &Spaces,
        claims: &Claims,
        space: &str,
    ) -> Result<Vec<String>, ServiceError> {
        let ctx = self.ctx(spaces, claims, space, None).await?;
        let space_view = ctx
            .space
            .as_ref()
            .map(|(org, role)| SpaceView { org, role: *role });
        authorize(claims, Action::ReadSpace, space_view)?;
        let mut readable = Vec::new();
        for (room, role) in self.store.rooms_of(space, &claims.sub).await? {
            let view = RoomView {
                private: room.private,
                archived: room.archived,
                direct: room.direct,
                role,
            };
            let read = Action::Room {
                room: Some(view),
                action: RoomAction::Read,
            };
            if authorize(claims, read, space_view).is_ok() {
                readable.push(room.id);
            }
        }
        Ok(readable)
    }

    /// The direct conversation of the caller with `users` in `space`, opened if new.
    async fn open_direct(
        &self,
        spaces: &Spaces,
        claims: &Claims,
        space: &str,
        users: &[String],
        now_ms: i64,
    ) -> Result<(Room, bool), ServiceError> {
        let mut others: Vec<&str> = users
            .iter()
            .map(String::as_str)
            .filter(|u| *u != claims.sub)
            .collect();
        others.sort_unstable();
        others.dedup();
        rules::check_direct(&others)?;
        let ctx = self.ctx(spaces, claims, space, None).await?;
        ctx.allow(claims, RoomAction::CreateDirect)?;
        let mut members = vec![RoomMember {
            space: space.to_string(),
            room: String::new(),
            user: claims.sub.clone(),
            org: claims.org.clone(),
            role: if matches!(ctx.space, Some((_, Some(Role::Guest)))) {
                Role::Guest
            } else {
                Role::Member
            },
            joined_ms: now_ms,
        }];
        for user in &others {
            let member = spaces.member(space, user).await?.ok_or_else(|| {
                ServiceError::new(
                    ErrorCode::NotFound,
                    format!("`{user}` is not a member of the space"),
                )
            })?;
            members.push(RoomMember {
                space: space.to_string(),
                room: String::new(),
                user: member.user,
                org: member.org,
                role: if member.role == Role::Guest {
                    Role::Guest
                } else {
                    Role::Member
                },
                joined_ms: now_ms,
            });
        }
        members.sort_by(|a, b| a.user.cmp(&b.user));
        let key = rules::direct_key(members.iter().map(|m| (m.org.as_str(), m.user.as_str())));
        let id = random_id();
        for member in &mut members {
            member.room = id.clone();
        }
        let room = Room {
            space: space.to_string(),
            id,
            name: rules::direct_name(members.iter().map(|m| m.user.as_str())),
            private: true,
            archived: false,
            direct: true,
            epoch: new_epoch(now_ms),
            head: 0,
            created_by: claims.sub.clone(),
            created_ms: now_ms,
            meeting_mode: MeetingSetting::Auto,
        };
        let (room, created) = self.store.open_direct(room, members, key).await?;
        self.invalidate(space, &room.id);
        Ok((room, created))
    }

    /// The rooms of `space` the caller may see, with their role in each.
    async fn rooms(
        &self,
        spaces: &Spaces,
        claims: &Claims,
        space: &str,
    ) -> Result<Vec<Value>, ServiceError> {
        let ctx = self.ctx(spaces, claims, space, None).await?;
        let space_view = ctx
            .space
            .as_ref()
            .map(|(org, role)| SpaceView { org, role: *role });
        authorize(claims, Action::ReadSpace, space_view)?;
        let mut visible = Vec::new();
        for (room, role) in self.store.rooms_of(space, &claims.sub).await? {
            let view = RoomView {
                private: room.private,
                archived: room.archived,
                direct: room.direct,
                role,
            };
            let see = Action::Room {
                room: Some(view),
                action: RoomAction::See,
            };
            if authorize(claims, see, space_view).is_ok() {
                visible.push(room_json(&room, role));
            }
        }
        Ok(visible)
    }

    async fn update(
        &self,
        spaces: &Spaces,
        claims: &Claims,
        space: &str,
        room: &str,
        update: RoomUpdate,
    ) -> Result<Value, ServiceError> {
        let ctx = self
            .check(spaces, claims, space, room, RoomAction::Manage)
            .await?;
        let updated = self.store.update_room(space, room, update).await?;
        self.invalidate(space, room);
        Ok(room_json(&updated, ctx.role_in_room(claims)))
    }

    async fn join(
        &self,
        spaces: &Spaces,
        claims: &Claims,
        space: &str,
        room: &str,
        now_ms: i64,
    ) -> Result<RoomMember, ServiceError> {
        let ctx = self
            .check(spaces, claims, space, room, RoomAction::Join)
            .await?;
        if let Some(member) = ctx
            .entry()
            .members
            .get(&claims.sub)
            .filter(|m| m.org == claims.org)
        {
            return Ok(member.clone());
        }
        let guest = matches!(ctx.space, Some((_, Some(Role::Guest))));
        let member = RoomMember {
            space: space.to_string(),
            room: room.to_string(),
            user: claims.sub.clone(),
            org: claims.org.clone(),
            role: if guest { Role::Guest } else { Role::Member },
            joined_ms: now_ms,
        };
        self.store.put_room_member(member.clone()).await?;
        self.invalidate(space, room);
        Ok(member)
    }

    #[allow(clippy::too_many_arguments)]
    async fn invite(
        &self,
        spaces: &Spaces,
        claims: &Claims,
        space: &str,
        room: &str,
        user: &str,
        role: Option<Role>,
        now_ms: i64,
    ) -> Result<RoomMember, ServiceError> {
        rules::check_user(user)?;
        let ctx = self
            .check(spaces, claims, space, room, RoomAction::See)
            .await?;
        let invitee = spaces.member(space, user).await?.ok_or_else(|| {
            ServiceError::new(
                ErrorCode::NotFound,
                format!("`{user}` is not a member of the space"),
            )
        })?;
        let guest = invitee.role == Role::Guest;
        let role = role.unwrap_or(if guest { Role::Guest } else { Role::Member });
        ctx.allow(claims, RoomAction::Invite { role, guest })?;
        let existing = ctx.entry().members.get(user);
        if let Some(existing) = existing.filter(|m| m.org == invitee.org) {
            if existing.role == role {
                return Ok(existing.clone());
            }
            // Inviting a member again with another role changes it: that is managing the room.
            ctx.allow(claims, RoomAction::Manage)?;
        }
        let member = RoomMember {
            space: space.to_string(),
            room: room.to_string(),
            user: user.to_string(),
            org: invitee.org,
            role,
            joined_ms: existing.map_or(now_ms, |m| m.joined_ms),
        };
        self.store.put_room_member(member.clone()).await?;
        self.invalidate(space, room);
        Ok(member)
    }

    async fn remove(
        &self,
        spaces: &Spaces,
        users: &Users,
        claims: &Claims,
        space: &str,
        room: &str,
        user: &str,
    ) -> Result<(), ServiceError> {
        let ctx = self
            .check(spaces, claims, space, room, RoomAction::Remove { user })
            .await?;
        let existed = self.store.remove_room_member(space, room, user).await?;
        self.invalidate(space, room);
        if !existed {
            return Err(ServiceError::new(
                ErrorCode::NotFound,
                format!("`{user}` is not a member of the room"),
            ));
        }
        // Only members read a private room: end the user's live subscriptions to it.
        if ctx.entry().room.private {
            users.revoke_channel(user, &room_channel(space, room), "removed from the room");
            if let Some(listener) = self.listener.get() {
                listener.access_lost(space, room, user);
            }
        }
        Ok(())
    }

    /// Subscribe `outbox` to room channel `channel`, resuming after `from` when given: the
    /// events missed since are queued first, in order (from the hub's memory, else from the
    /// store), and live ones follow without gap or duplicate. The result is the reply body.
    pub async fn subscribe(
        &self,
        spaces: &Spaces,
        claims: &Claims,
        channel: &str,
        from: Option<Position>,
        outbox: &Arc<Outbox>,
    ) -> Result<Value, ServiceError> {
        let Ok(ChannelRef::Room { space, room }) = ChannelRef::parse(channel) else {
            return Err(ServiceError::new(
                ErrorCode::BadChannel,
                format!("`{channel}` is not a room channel"),
            ));
        };
        let ctx = self
            .check(spaces, claims, space, room, RoomAction::Read)
            .await?;
        let epoch = ctx.entry().room.epoch;
        let mut resume = match from {
            None => None,
            Some(p) if p.epoch != epoch => Some("reset"),
            Some(_) => Some("ok"),
        };
        let after = from.filter(|p| p.epoch == epoch).map(|p| p.offset);
        let attached = self
            .hub
            .attach(channel, outbox, after)
            .map_err(|e| ServiceError::new(ErrorCode::AlreadySubscribed, e.to_string()))?;
        let (head, replayed) = match attached {
            Attach::Live { head, replayed } => (head, replayed),
            Attach::CatchUp => {
                // Deliveries are held from here on; the store read below sees at least
                // everything delivered before, so together they leave no gap.
                let limit = if after.is_some() {
                    rules::MAX_REPLAY
                } else {
                    0
                };
                let read = self
                    .store
                    .events(space, room, after.unwrap_or(0), limit)
                    .await;
                let (events, head) = match read {
                    Ok(read) => read,
                    Err(e) => {
                        self.hub.unsubscribe(channel, outbox.id());
                        return Err(e.into());
                    }
                };
                let complete = events.last().map_or(after, |e| Some(e.offset)) == Some(head);
                let replay = match after {
                    Some(after) if after > head => {
                        // The client is ahead of the room's stream: not this epoch's history.
                        resume = Some("reset");
                        Vec::new()
                    }
                    Some(_) if !complete => {
                        resume = Some("too_far_behind");
                        Vec::new()
                    }
                    _ => events,
                };
                let replayed = replay.len();
                let replay = replay.iter().map(|e| (e.offset, event_data(e)));
                let head = self
                    .hub
                    .catch_up(channel, outbox.id(), replay.collect::<Vec<_>>(), head)
                    .ok_or_else(|| {
                        ServiceError::new(ErrorCode::Internal, "the subscription ended")
                    })?;
                (head, replayed)
            }
        };
        let mut reply = json!({
            "channel": channel,
            "epoch": epoch,
            "offset": head,
            "replayed": replayed,
        });
        if let Some(resume) = resume {
            reply["resume"] = json!(resume);
        }
        Ok(reply)
    }
}

fn no_message(offset: u64) -> ServiceError {
    ServiceError::new(
        ErrorCode::NotFound,
        format!("no message at offset {offset}"),
    )
}

/// A room as replies show it, with the caller's role and the room's channel.
fn room_json(room: &Room, role: Option<Role>) -> Value {
    let mut value = json!(room);
    value["role"] = json!(role);
    value["channel"] = json!(room_channel(&room.space, &room.id));
    value
}

/// A new room's epoch: its creation time in microseconds, plus randomness below the
/// millisecond so that a room re-created with the same id gets another epoch.
fn new_epoch(now_ms: i64) -> u64 {
    let mut bytes = [0u8; 2];
    getrandom::fill(&mut bytes).expect("the OS provides randomness");
    (now_ms.max(0) as u64) * 1000 + u64::from(u16::from_le_bytes(bytes)) % 1000
}
