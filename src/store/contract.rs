//! The behaviour every [`Store`] must show, written once against `&dyn Store`. Each backend's
//! tests call these functions on a fresh, empty store.

use super::{Member, Space, Store, StoreError};
use crate::access::Role;

pub fn space(id: &str, org: &str) -> Space {
    Space {
        id: id.into(),
        org: org.into(),
        name: format!("{id} room"),
        created_ms: 1_700_000_000_000,
    }
}

pub fn member(space: &str, user: &str, org: &str, role: Role) -> Member {
    Member {
        space: space.into(),
        user: user.into(),
        org: org.into(),
        role,
    }
}

pub async fn spaces_and_members(store: &dyn Store) {
    assert_eq!(store.space("s1").await.unwrap(), None);
    assert!(store.spaces_of("alice").await.unwrap().is_empty());

    // Created out of order to check the listing order.
    store
        .create_space(space("s2", "acme"), "alice")
        .await
        .unwrap();
    store
        .create_space(space("s1", "acme"), "alice")
        .await
        .unwrap();
    store
        .create_space(space("s3", "globex"), "bob")
        .await
        .unwrap();

    assert_eq!(store.space("s1").await.unwrap(), Some(space("s1", "acme")));
    // The creator owns the space, as a member of the space's organisation.
    assert_eq!(
        store.member("s1", "alice").await.unwrap(),
        Some(member("s1", "alice", "acme", Role::Owner))
    );

    store
        .put_member(member("s1", "carol", "acme", Role::Member))
        .await
        .unwrap();
    store
        .put_member(member("s1", "bob", "globex", Role::Guest))
        .await
        .unwrap();
    let ids = |spaces: Vec<Space>| spaces.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(ids(store.spaces_of("alice").await.unwrap()), ["s1", "s2"]);
    assert_eq!(ids(store.spaces_of("bob").await.unwrap()), ["s1", "s3"]);
    assert_eq!(
        store.memberships_of("bob").await.unwrap(),
        [
            member("s1", "bob", "globex", Role::Guest),
            member("s3", "bob", "globex", Role::Owner)
        ]
    );
    assert!(store.memberships_of("nobody").await.unwrap().is_empty());
    assert!(store.spaces_of("nobody").await.unwrap().is_empty());
    assert_eq!(
        store.members("s1").await.unwrap(),
        [
            member("s1", "alice", "acme", Role::Owner),
            member("s1", "bob", "globex", Role::Guest),
            member("s1", "carol", "acme", Role::Member),
        ]
    );

    // put_member on an existing membership updates it in place.
    store
        .put_member(member("s1", "carol", "acme", Role::Owner))
        .await
        .unwrap();
    assert_eq!(
        store.member("s1", "carol").await.unwrap(),
        Some(member("s1", "carol", "acme", Role::Owner))
    );
    assert_eq!(store.members("s1").await.unwrap().len(), 3);
    assert!(store.members("missing").await.unwrap().is_empty());
}

pub async fn duplicate_space_rejected(store: &dyn Store) {
    store
        .create_space(space("s1", "acme"), "alice")
        .await
        .unwrap();
    let again = store.create_space(space("s1", "globex"), "bob").await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists(_))),
        "{again:?}"
    );
    // The failed create changed nothing: neither the space nor its would-be owner.
    assert_eq!(store.space("s1").await.unwrap(), Some(space("s1", "acme")));
    assert_eq!(store.member("s1", "bob").await.unwrap(), None);
    assert!(store.spaces_of("bob").await.unwrap().is_empty());
}

pub async fn member_of_missing_space(store: &dyn Store) {
    let put = store
        .put_member(member("nope", "alice", "acme", Role::Member))
        .await;
    assert!(matches!(put, Err(StoreError::NotFound(_))), "{put:?}");
    assert_eq!(store.member("nope", "alice").await.unwrap(), None);
    assert!(store.spaces_of("alice").await.unwrap().is_empty());
}

pub async fn remove_member(store: &dyn Store) {
    store
        .create_space(space("s1", "acme"), "alice")
        .await
        .unwrap();
    store
        .put_member(member("s1", "bob", "globex", Role::Guest))
        .await
        .unwrap();
    assert!(store.remove_member("s1", "bob").await.unwrap());
    assert!(!store.remove_member("s1", "bob").await.unwrap());
    assert!(!store.remove_member("missing", "bob").await.unwrap());
    assert_eq!(store.member("s1", "bob").await.unwrap(), None);
    assert!(store.spaces_of("bob").await.unwrap().is_empty());
    assert_eq!(
        store.members("s1").await.unwrap(),
        [member("s1", "alice", "acme", Role::Owner)]
    );
}

/// `open` must return a new handle on the same durable state each time it is called.
pub async fn survives_reopen(open: &dyn Fn() -> Box<dyn Store>) {
    {
        let store = open();
        store
            .create_space(space("s1", "acme"), "alice")
            .await
            .unwrap();
        store
            .put_member(member("s1", "bob", "globex", Role::Guest))
            .await
            .unwrap();
        store
            .put_member(member("s1", "carol", "acme", Role::Member))
            .await
            .unwrap();
        assert!(store.remove_member("s1", "carol").await.unwrap());
    }
    let store = open();
    assert_eq!(store.space("s1").await.unwrap(), Some(space("s1", "acme")));
    assert_eq!(
        store.members("s1").await.unwrap(),
        [
            member("s1", "alice", "acme", Role::Owner),
            member("s1", "bob", "globex", Role::Guest)
        ]
    );
}

// Chat. A backend implements both traits on one database (rooms live in spaces), so each test
// gets the same store twice.

use super::{
    ChatEvent, ChatFeed, ChatStore, EventKind, MeetingSetting, NewMessage, Page, Reaction,
    ReadState, Receipt, Room, RoomMember, RoomUpdate, SearchQuery, ThreadSummary,
};
use std::sync::{Arc, Mutex};

pub fn room(space: &str, id: &str, private: bool) -> Room {
    Room {
        space: space.into(),
        id: id.into(),
        name: format!("{id} room"),
        private,
        archived: false,
        direct: false,
        epoch: 1_700_000_000_000_000,
        head: 0,
        created_by: "alice".into(),
        created_ms: 1_700_000_000_000,
        meeting_mode: MeetingSetting::Auto,
    }
}

pub fn room_member(space: &str, room: &str, user: &str, role: Role) -> RoomMember {
    RoomMember {
        space: space.into(),
        room: room.into(),
        user: user.into(),
        org: "acme".into(),
        role,
        joined_ms: 1_700_000_000_000,
    }
}

pub fn text(space: &str, room: &str, author: &str, client_id: &str, body: &str) -> NewMessage {
    NewMessage {
        space: space.into(),
        room: room.into(),
        client_id: client_id.into(),
        author: author.into(),
        body: body.into(),
        format: "text".into(),
        mentions: Vec::new(),
        thread: None,
        at_ms: 1_700_000_000_001,
    }
}

/// A space `s` owned by alice with a public room `r` (alice its owner) and bob a member of both.
async fn setup(store: &dyn Store, chat: &dyn ChatStore) {
    store
        .create_space(space("s", "acme"), "alice")
        .await
        .unwrap();
    store
        .put_member(member("s", "bob", "acme", Role::Member))
        .await
        .unwrap();
    chat.create_room(
        room("s", "r", false),
        room_member("s", "r", "alice", Role::Owner),
    )
    .await
    .unwrap();
    chat.put_room_member(room_member("s", "r", "bob", Role::Member))
        .await
        .unwrap();
}

pub async fn rooms_and_room_members(store: &dyn Store, chat: &dyn ChatStore) {
    let owner = room_member("s1", "r1", "alice", Role::Owner);
    let missing = chat
        .create_room(room("s1", "r1", false), owner.clone())
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
    store
        .create_space(space("s1", "acme"), "alice")
        .await
        .unwrap();
    store
        .create_space(space("s2", "acme"), "alice")
        .await
        .unwrap();
    assert_eq!(chat.room("s1", "r1").await.unwrap(), None);
    chat.create_room(room("s1", "r1", false), owner.clone())
        .await
        .unwrap();
    let again = chat.create_room(room("s1", "r1", true), owner).await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists(_))),
        "{again:?}"
    );
    // Room ids are per space.
    chat.create_room(
        room("s2", "r1", false),
        room_member("s2", "r1", "alice", Role::Owner),
    )
    .await
    .unwrap();
    chat.create_room(
        room("s1", "r0", true),
        room_member("s1", "r0", "alice", Role::Owner),
    )
    .await
    .unwrap();
    assert_eq!(
        chat.room("s1", "r1").await.unwrap(),
        Some(room("s1", "r1", false))
    );
    assert_eq!(
        chat.room("s1", "r0").await.unwrap(),
        Some(room("s1", "r0", true))
    );

    chat.put_room_member(room_member("s1", "r1", "bob", Role::Member))
        .await
        .unwrap();
    let roles = |rooms: Vec<(Room, Option<Role>)>| {
        rooms
            .into_iter()
            .map(|(r, role)| (r.id, role))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        roles(chat.rooms_of("s1", "alice").await.unwrap()),
        [
            ("r0".to_string(), Some(Role::Owner)),
            ("r1".to_string(), Some(Role::Owner))
        ]
    );
    assert_eq!(
        roles(chat.rooms_of("s1", "bob").await.unwrap()),
        [
            ("r0".to_string(), None),
            ("r1".to_string(), Some(Role::Member))
        ]
    );
    assert!(chat.rooms_of("nope", "bob").await.unwrap().is_empty());
    assert_eq!(
        chat.room_members("s1", "r1").await.unwrap(),
        [
            room_member("s1", "r1", "alice", Role::Owner),
            room_member("s1", "r1", "bob", Role::Member)
        ]
    );
    // Upsert changes the role in place.
    chat.put_room_member(room_member("s1", "r1", "bob", Role::Owner))
        .await
        .unwrap();
    assert_eq!(
        chat.room_members("s1", "r1").await.unwrap()[1].role,
        Role::Owner
    );
    let missing = chat
        .put_room_member(room_member("s1", "nope", "bob", Role::Member))
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );

    let renamed = chat
        .update_room(
            "s1",
            "r1",
            RoomUpdate {
                name: Some("General".into()),
                archived: Some(true),
                ..RoomUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((renamed.name.as_str(), renamed.archived), ("General", true));
    let unarchived = chat
        .update_room(
            "s1",
            "r1",
            RoomUpdate {
                archived: Some(false),
                ..RoomUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (unarchived.name.as_str(), unarchived.archived),
        ("General", false)
    );
    assert_eq!(chat.room("s1", "r1").await.unwrap(), Some(unarchived));
    let missing = chat.update_room("s1", "nope", RoomUpdate::default()).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );

    assert!(chat.remove_room_member("s1", "r1", "bob").await.unwrap());
    assert!(!chat.remove_room_member("s1", "r1", "bob").await.unwrap());
    assert!(
        !chat
            .remove_room_member("s1", "nope", "alice")
            .await
            .unwrap()
    );
    assert_eq!(chat.room_members("s1", "r1").await.unwrap().len(), 1);
    // The other space's room of the same id is untouched.
    assert_eq!(chat.room_members("s2", "r1").await.unwrap().len(), 1);
}

pub async fn messages_offsets_and_idempotent_sends(store: &dyn Store, chat: &dyn ChatStore) {
    setup(store, chat).await;
    let epoch = chat.room("s", "r").await.unwrap().unwrap().epoch;
    for (n, client_id) in ["a", "b", "c"].into_iter().enumerate() {
        let sent = chat
            .send(text("s", "r", "alice", client_id, client_id))
            .await
            .unwrap();
        assert_eq!(
            (sent.message.offset, sent.epoch, sent.duplicate),
            (n as u64 + 1, epoch, false)
        );
        assert_eq!(sent.message.body.as_deref(), Some(client_id));
    }
    // A retry is the original, whatever its body says, and appends nothing.
    let retry = chat
        .send(text("s", "r", "alice", "b", "different"))
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(
        (retry.message.offset, retry.message.body.as_deref()),
        (2, Some("b"))
    );
    // Client ids are per author.
    let bobs = chat
        .send(text("s", "r", "bob", "b", "bob's"))
        .await
        .unwrap();
    assert_eq!((bobs.message.offset, bobs.duplicate), (4, false));
    assert_eq!(chat.room("s", "r").await.unwrap().unwrap().head, 4);
    let missing = chat.send(text("s", "nope", "alice", "x", "x")).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );

    let m = chat.message("s", "r", 2).await.unwrap().unwrap();
    assert_eq!(
        (m.author.as_str(), m.client_id.as_str(), m.created_ms),
        ("alice", "b", 1_700_000_000_001)
    );
    assert_eq!(chat.message("s", "r", 9).await.unwrap(), None);
    assert_eq!(chat.message("s", "nope", 1).await.unwrap(), None);

    let (events, head) = chat.events("s", "r", 0, 10).await.unwrap();
    assert_eq!(head, 4);
    let offsets: Vec<_> = events
        .iter()
        .map(|e| (e.offset, e.kind, e.message.offset))
        .collect();
    assert_eq!(offsets, [1, 2, 3, 4].map(|o| (o, EventKind::Message, o)));
    let (events, head) = chat.events("s", "r", 1, 2).await.unwrap();
    assert_eq!((events.len(), events[0].offset, head), (2, 2, 4));
    assert_eq!(chat.events("s", "r", 4, 10).await.unwrap(), (vec![], 4));
    assert_eq!(chat.events("s", "r", 0, 0).await.unwrap(), (vec![], 4));
    assert_eq!(chat.events("s", "nope", 0, 10).await.unwrap(), (vec![], 0));
}

pub async fn edits_and_deletes(store: &dyn Store, chat: &dyn ChatStore) {
    setup(store, chat).await;
    chat.send(text("s", "r", "alice", "a", "first"))
        .await
        .unwrap();
    let edit = chat
        .edit(
            "s",
            "r",
            1,
            "second".into(),
            "markdown".into(),
            1_700_000_000_002,
        )
        .await
        .unwrap();
    assert_eq!(
        (edit.offset, edit.kind, edit.message.offset),
        (2, EventKind::Edit, 1)
    );
    assert_eq!(edit.message.body.as_deref(), Some("second"));
    assert_eq!(
        (edit.message.format.as_str(), edit.message.edited_ms),
        ("markdown", Some(1_700_000_000_002))
    );
    chat.edit(
        "s",
        "r",
        1,
        "third".into(),
        "text".into(),
        1_700_000_000_003,
    )
    .await
    .unwrap();
    let revisions = chat.revisions("s", "r", 1).await.unwrap();
    let bodies: Vec<_> = revisions
        .iter()
        .map(|r| (r.body.as_str(), r.format.as_str(), r.at_ms))
        .collect();
    assert_eq!(
        bodies,
        [
            ("first", "text", 1_700_000_000_001),
            ("second", "markdown", 1_700_000_000_002)
        ]
    );
    assert_eq!(
        chat.message("s", "r", 1)
            .await
            .unwrap()
            .unwrap()
            .body
            .as_deref(),
        Some("third")
    );

    let deleted = chat
        .delete("s", "r", 1, 1_700_000_000_004)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((deleted.offset, deleted.kind), (4, EventKind::Delete));
    assert_eq!(
        (deleted.message.body.as_deref(), deleted.message.deleted_ms),
        (None, Some(1_700_000_000_004))
    );
    assert!(chat.revisions("s", "r", 1).await.unwrap().is_empty());
    // Deleting again changes nothing; a tombstone cannot be edited.
    assert_eq!(
        chat.delete("s", "r", 1, 1_700_000_000_005).await.unwrap(),
        None
    );
    let edit = chat.edit("s", "r", 1, "x".into(), "text".into(), 0).await;
    assert!(matches!(edit, Err(StoreError::NotFound(_))), "{edit:?}");
    for missing in [
        chat.delete("s", "r", 7, 0).await.map(drop),
        chat.edit("s", "r", 7, "x".into(), "text".into(), 0)
            .await
            .map(drop),
    ] {
        assert!(
            matches!(missing, Err(StoreError::NotFound(_))),
            "{missing:?}"
        );
    }
    assert_eq!(chat.room("s", "r").await.unwrap().unwrap().head, 4);

    // Every event shows the message as it is now: no deleted body comes back.
    let (events, _) = chat.events("s", "r", 0, 10).await.unwrap();
    let kinds: Vec<_> = events.iter().map(|e| (e.offset, e.kind)).collect();
    assert_eq!(
        kinds,
        [
            (1, EventKind::Message),
            (2, EventKind::Edit),
            (3, EventKind::Edit),
            (4, EventKind::Delete)
        ]
    );
    assert!(
        events
            .iter()
            .all(|e| e.message.body.is_none() && e.message.offset == 1)
    );
    let (page, _) = chat
        .history(
            "s",
            "r",
            Page {
                thread: None,
                before: None,
                after: None,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(
        (page[0].offset, page[0].deleted_ms, page[0].edited_ms),
        (1, Some(1_700_000_000_004), Some(1_700_000_000_003))
    );
}

pub async fn history_pages(store: &dyn Store, chat: &dyn ChatStore) {
    setup(store, chat).await;
    for n in 1..=10 {
        chat.send(text("s", "r", "alice", &n.to_string(), "m"))
            .await
            .unwrap();
    }
    // Offset 11 is an edit: it is an event, not a message.
    chat.edit("s", "r", 5, "e".into(), "text".into(), 0)
        .await
        .unwrap();
    let page = |before: Option<u64>, after: Option<u64>, limit: usize| async move {
        let (messages, more) = chat
            .history(
                "s",
                "r",
                Page {
                    thread: None,
                    before,
                    after,
                    limit,
                },
            )
            .await
            .unwrap();
        (
            messages.into_iter().map(|m| m.offset).collect::<Vec<_>>(),
            more,
        )
    };
    assert_eq!(page(None, None, 3).await, (vec![8, 9, 10], true));
    assert_eq!(page(Some(8), None, 3).await, (vec![5, 6, 7], true));
    assert_eq!(page(Some(3), None, 5).await, (vec![1, 2], false));
    assert_eq!(page(None, Some(2), 3).await, (vec![3, 4, 5], true));
    assert_eq!(page(None, Some(8), 5).await, (vec![9, 10], false));
    assert_eq!(page(Some(6), Some(2), 10).await, (vec![3, 4, 5], false));
    assert_eq!(page(None, Some(10), 5).await, (vec![], false));
    assert_eq!(page(None, None, 0).await, (vec![], true));
    assert_eq!(page(None, None, 100).await.0.len(), 10);
    let (missing, more) = chat
        .history(
            "s",
            "nope",
            Page {
                thread: None,
                before: None,
                after: None,
                limit: 5,
            },
        )
        .await
        .unwrap();
    assert!(missing.is_empty() && !more);
}

/// Collects what the feed is given.
#[derive(Default)]
pub struct Collect(pub Mutex<Vec<ChatEvent>>);

impl ChatFeed for Collect {
    fn committed(&self, event: &ChatEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

impl Collect {
    fn has(&self, room: &str, offset: u64) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.room == room && e.offset == offset)
    }
}

pub async fn feed_sees_commits_in_order(store: &dyn Store, chat: &dyn ChatStore) {
    let feed = Arc::new(Collect::default());
    chat.set_feed(feed.clone());
    setup(store, chat).await;
    chat.create_room(
        room("s", "q", false),
        room_member("s", "q", "alice", Role::Owner),
    )
    .await
    .unwrap();
    // Many sends in flight at once, so batches hold several; each is fed before it returns.
    let sends = (0..60).map(|n| {
        let room = if n % 2 == 0 { "r" } else { "q" };
        let feed = feed.clone();
        async move {
            let sent = chat
                .send(text("s", room, "alice", &n.to_string(), "m"))
                .await
                .unwrap();
            assert!(
                feed.has(room, sent.message.offset),
                "fed before the send returned"
            );
            sent
        }
    });
    futures_util::future::join_all(sends).await;
    let retry = chat.send(text("s", "r", "alice", "0", "m")).await.unwrap();
    assert!(retry.duplicate);
    chat.edit("s", "r", 1, "edited".into(), "text".into(), 0)
        .await
        .unwrap();
    chat.delete("s", "q", 1, 0).await.unwrap();
    assert_eq!(chat.delete("s", "q", 1, 0).await.unwrap(), None);
    let events = feed.0.lock().unwrap().clone();
    for (name, last) in [("r", 31), ("q", 31)] {
        let offsets: Vec<_> = events
            .iter()
            .filter(|e| e.room == name)
            .map(|e| e.offset)
            .collect();
        assert_eq!(offsets, (1..=last).collect::<Vec<_>>(), "room {name}");
    }
    let last = events.iter().rfind(|e| e.room == "q").unwrap();
    assert_eq!(
        (last.kind, last.message.body.as_deref()),
        (EventKind::Delete, None)
    );
}

pub async fn leaving_the_space_leaves_its_rooms(store: &dyn Store, chat: &dyn ChatStore) {
    setup(store, chat).await;
    store
        .create_space(space("t", "acme"), "alice")
        .await
        .unwrap();
    store
        .put_member(member("t", "bob", "acme", Role::Member))
        .await
        .unwrap();
    chat.create_room(
        room("t", "r", false),
        room_member("t", "r", "alice", Role::Owner),
    )
    .await
    .unwrap();
    chat.put_room_member(room_member("t", "r", "bob", Role::Member))
        .await
        .unwrap();
    assert!(store.remove_member("s", "bob").await.unwrap());
    let users = |members: Vec<RoomMember>| members.into_iter().map(|m| m.user).collect::<Vec<_>>();
    assert_eq!(users(chat.room_members("s", "r").await.unwrap()), ["alice"]);
    // Only the rooms of the space left.
    assert_eq!(
        users(chat.room_members("t", "r").await.unwrap()),
        ["alice", "bob"]
    );
}

/// `open` must return new handles on the same durable state each time it is called.
/// A room's meeting mode: `auto` at creation, changed alone by an update, listed with the
/// room. (`chat_survives_reopen` checks it is kept.)
pub async fn meeting_modes(store: &dyn Store, chat: &dyn ChatStore) {
    setup(store, chat).await;
    let created = chat.room("s", "r").await.unwrap().unwrap();
    assert_eq!(created.meeting_mode, MeetingSetting::Auto);
    let set = |mode| RoomUpdate {
        meeting_mode: Some(mode),
        ..RoomUpdate::default()
    };
    let sfu = chat.update_room("s", "r", set(MeetingSetting::Sfu)).await;
    let sfu = sfu.unwrap();
    assert_eq!(
        sfu,
        Room {
            meeting_mode: MeetingSetting::Sfu,
            ..created.clone()
        }
    );
    assert_eq!(chat.room("s", "r").await.unwrap(), Some(sfu));
    // A rename keeps it.
    let renamed = RoomUpdate {
        name: Some("Stand-up".into()),
        ..RoomUpdate::default()
    };
    let renamed = chat.update_room("s", "r", renamed).await.unwrap();
    assert_eq!(renamed.meeting_mode, MeetingSetting::Sfu);
    chat.update_room("s", "r", set(MeetingSetting::Mesh))
        .await
        .unwrap();
    let listed = chat.rooms_of("s", "bob").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0.meeting_mode, MeetingSetting::Mesh);
    assert_eq!(listed[0].1, Some(Role::Member));
    let missing = chat
        .update_room("s", "nope", set(MeetingSetting::Sfu))
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

pub async fn chat_survives_reopen(open: &dyn Fn() -> (Arc<dyn Store>, Arc<dyn ChatStore>)) {
    {
        let (store, chat) = open();
        setup(&*store, &*chat).await;
        let sfu = RoomUpdate {
            meeting_mode: Some(MeetingSetting::Sfu),
            ..RoomUpdate::default()
        };
        chat.update_room("s", "r", sfu).await.unwrap();
        chat.send(text("s", "r", "alice", "a", "one"))
            .await
            .unwrap();
        chat.send(text("s", "r", "bob", "b", "two")).await.unwrap();
        chat.edit("s", "r", 1, "uno".into(), "text".into(), 5)
            .await
            .unwrap();
    }
    let (_store, chat) = open();
    let room = chat.room("s", "r").await.unwrap().unwrap();
    assert_eq!(room.head, 3);
    assert_eq!(room.meeting_mode, MeetingSetting::Sfu);
    let retry = chat.send(text("s", "r", "bob", "b", "two")).await.unwrap();
    assert_eq!((retry.message.offset, retry.duplicate), (2, true));
    let next = chat
        .send(text("s", "r", "bob", "c", "three"))
        .await
        .unwrap();
    assert_eq!(next.message.offset, 4);
    assert_eq!(chat.revisions("s", "r", 1).await.unwrap().len(), 1);
    assert_eq!(chat.room_members("s", "r").await.unwrap().len(), 2);
}

pub async fn read_state_and_mentions(store: &dyn Store, chat: &dyn ChatStore) {
    setup(store, chat).await;
    let mentioning = |client_id: &str, users: &[&str]| {
        let mut m = text("s", "r", "alice", client_id, "hey");
        m.mentions = users.iter().map(|u| u.to_string()).collect();
        m
    };
    chat.send(mentioning("1", &[])).await.unwrap();
    chat.send(mentioning("2", &["bob"])).await.unwrap();
    chat.send(text("s", "r", "bob", "3", "mine")).await.unwrap();
    chat.send(mentioning("4", &["bob", "carol"])).await.unwrap();
    assert_eq!(
        chat.message("s", "r", 2).await.unwrap().unwrap().mentions,
        ["bob"]
    );

    let state = |last_read, unread, mentions| ReadState {
        space: "s".into(),
        room: "r".into(),
        head: 4,
        last_read,
        unread,
        mentions,
    };
    // Nothing read: every message by others counts, and the two mentioning bob.
    assert_eq!(
        chat.read_states("s", "bob").await.unwrap(),
        [state(0, 3, 2)]
    );
    let (read, moved) = chat.mark_read("s", "r", "bob", 2, 10).await.unwrap();
    assert_eq!((read, moved), (state(2, 1, 1), true));
    // Never backwards.
    let (read, moved) = chat.mark_read("s", "r", "bob", 1, 11).await.unwrap();
    assert_eq!((read, moved), (state(2, 1, 1), false));
    // A deleted message is neither unread nor a mention.
    chat.delete("s", "r", 4, 12).await.unwrap();
    let deleted = chat.message("s", "r", 4).await.unwrap().unwrap();
    assert!(deleted.mentions.is_empty());
    let after_delete = ReadState {
        head: 5,
        ..state(2, 0, 0)
    };
    assert_eq!(chat.read_states("s", "bob").await.unwrap(), [after_delete]);
    // Past the head: clamped to it.
    let (read, _) = chat.mark_read("s", "r", "bob", 99, 13).await.unwrap();
    assert_eq!((read.last_read, read.unread), (5, 0));
    assert_eq!(
        chat.receipts("s", "r").await.unwrap(),
        [Receipt {
            user: "bob".into(),
            offset: 5,
            at_ms: 13
        }]
    );
    // Only rooms one is a member of are listed; alice's own messages are never unread to her.
    assert!(chat.read_states("s", "carol").await.unwrap().is_empty());
    assert_eq!(chat.read_states("s", "alice").await.unwrap()[0].unread, 1);
    let missing = chat.mark_read("s", "nope", "bob", 1, 0).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
    assert!(chat.receipts("s", "nope").await.unwrap().is_empty());
}

pub async fn threads_and_reactions(store: &dyn Store, chat: &dyn ChatStore) {
    setup(store, chat).await;
    let reply = |client_id: &str, root: u64| {
        let mut m = text("s", "r", "bob", client_id, "re");
        m.thread = Some(root);
        m
    };
    chat.send(text("s", "r", "alice", "root", "topic"))
        .await
        .unwrap();
    let first = chat.send(reply("a", 1)).await.unwrap();
    assert_eq!(first.message.thread, Some(1));
    chat.send(reply("b", 1)).await.unwrap();
    chat.send(text("s", "r", "alice", "top", "other"))
        .await
        .unwrap();
    let root = chat.message("s", "r", 1).await.unwrap().unwrap();
    assert_eq!(
        root.replies,
        Some(ThreadSummary {
            count: 2,
            last_offset: 3,
            last_ms: 1_700_000_000_001
        })
    );
    for bad in [reply("c", 2), reply("d", 99)] {
        let refused = chat.send(bad).await;
        assert!(
            matches!(refused, Err(StoreError::NotFound(_))),
            "{refused:?}"
        );
    }
    let page = |thread| Page {
        before: None,
        after: None,
        limit: 10,
        thread,
    };
    let offsets =
        |messages: Vec<super::Message>| messages.iter().map(|m| m.offset).collect::<Vec<_>>();
    assert_eq!(
        offsets(chat.history("s", "r", page(None)).await.unwrap().0),
        [1, 4]
    );
    assert_eq!(
        offsets(chat.history("s", "r", page(Some(1))).await.unwrap().0),
        [2, 3]
    );
    chat.delete("s", "r", 3, 9).await.unwrap();
    let root = chat.message("s", "r", 1).await.unwrap().unwrap();
    assert_eq!(root.replies.map(|r| (r.count, r.last_offset)), Some((1, 2)));

    let added = chat
        .react("s", "r", 1, "+1", "bob", true, 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (added.offset, added.kind, added.message.offset),
        (6, EventKind::Reaction, 1)
    );
    assert_eq!(
        added.message.reactions,
        [Reaction {
            emoji: "+1".into(),
            count: 1,
            users: vec!["bob".into()]
        }]
    );
    assert_eq!(
        chat.react("s", "r", 1, "+1", "bob", true, 11)
            .await
            .unwrap(),
        None
    );
    chat.react("s", "r", 1, "+1", "alice", true, 12)
        .await
        .unwrap();
    chat.react("s", "r", 1, "tada", "alice", true, 13)
        .await
        .unwrap();
    let reactions = chat.message("s", "r", 1).await.unwrap().unwrap().reactions;
    let summary: Vec<_> = reactions
        .iter()
        .map(|r| (r.emoji.as_str(), r.count, r.users.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            ("+1", 2, vec!["alice".to_string(), "bob".into()]),
            ("tada", 1, vec!["alice".into()])
        ]
    );
    let removed = chat
        .react("s", "r", 1, "+1", "bob", false, 14)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(removed.message.reactions[0].count, 1);
    assert_eq!(
        chat.react("s", "r", 1, "+1", "bob", false, 15)
            .await
            .unwrap(),
        None
    );
    let gone = chat.react("s", "r", 3, "+1", "bob", true, 16).await;
    assert!(matches!(gone, Err(StoreError::NotFound(_))), "{gone:?}");
    // History and the stream show reactions too; a delete clears them.
    let (messages, _) = chat.history("s", "r", page(None)).await.unwrap();
    assert_eq!(messages[0].reactions.len(), 2);
    chat.delete("s", "r", 1, 17).await.unwrap();
    let (events, _) = chat.events("s", "r", 0, 100).await.unwrap();
    assert!(
        events
            .iter()
            .filter(|e| e.message.offset == 1)
            .all(|e| e.message.reactions.is_empty())
    );
}

pub async fn direct_conversations(store: &dyn Store, chat: &dyn ChatStore) {
    setup(store, chat).await;
    let dm = |id: &str| Room {
        private: true,
        direct: true,
        ..room("s", id, true)
    };
    let members = |id: &str| {
        vec![
            room_member("s", id, "alice", Role::Member),
            room_member("s", id, "bob", Role::Member),
        ]
    };
    let (opened, created) = chat
        .open_direct(dm("d1"), members("d1"), "alice+bob".into())
        .await
        .unwrap();
    assert_eq!(
        (opened.id.as_str(), opened.direct, created),
        ("d1", true, true)
    );
    assert_eq!(chat.room("s", "d1").await.unwrap(), Some(dm("d1")));
    // The same member set is the same conversation, whatever id the second call proposes.
    let (again, created) = chat
        .open_direct(dm("d2"), members("d2"), "alice+bob".into())
        .await
        .unwrap();
    assert_eq!((again.id.as_str(), created), ("d1", false));
    assert_eq!(chat.room("s", "d2").await.unwrap(), None);
    let users: Vec<_> = chat
        .room_members("s", "d1")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.user)
        .collect();
    assert_eq!(users, ["alice", "bob"]);
    let (other, created) = chat
        .open_direct(dm("d3"), members("d3")[..1].to_vec(), "alice".into())
        .await
        .unwrap();
    assert_eq!((other.id.as_str(), created), ("d3", true));
    // A normal room's id cannot be taken.
    let taken = chat
        .open_direct(dm("r"), members("r"), "other".into())
        .await;
    assert!(
        matches!(taken, Err(StoreError::AlreadyExists(_))),
        "{taken:?}"
    );
    let listed: Vec<_> = chat
        .rooms_of("s", "bob")
        .await
        .unwrap()
        .into_iter()
        .map(|(r, role)| (r.id, r.direct, role))
        .collect();
    assert_eq!(
        listed,
        [
            ("d1".to_string(), true, Some(Role::Member)),
            ("d3".to_string(), true, None),
            ("r".to_string(), false, Some(Role::Member))
        ]
    );
}

pub async fn search_within_rooms(store: &dyn Store, chat: &dyn ChatStore) {
    setup(store, chat).await;
    chat.create_room(
        room("s", "q", true),
        room_member("s", "q", "alice", Role::Owner),
    )
    .await
    .unwrap();
    let at = |mut m: NewMessage, at_ms: i64| {
        m.at_ms = at_ms;
        m
    };
    chat.send(at(text("s", "r", "alice", "1", "Deploy on Friday!"), 100))
        .await
        .unwrap();
    chat.send(at(text("s", "r", "bob", "2", "friday lunch?"), 200))
        .await
        .unwrap();
    chat.send(at(text("s", "r", "bob", "3", "Déploiement demain"), 300))
        .await
        .unwrap();
    chat.send(at(
        text("s", "q", "alice", "4", "deploy friday, secretly"),
        400,
    ))
    .await
    .unwrap();
    let query = |terms: &[&str]| SearchQuery {
        terms: terms.iter().map(|t| t.to_string()).collect(),
        author: None,
        from_ms: None,
        until_ms: None,
        limit: 10,
        skip: 0,
    };
    let found = |hits: Vec<super::Hit>| {
        let mut found: Vec<_> = hits
            .into_iter()
            .map(|h| (h.room, h.message.offset))
            .collect();
        found.sort();
        found
    };
    let r = || vec!["r".to_string()];
    assert_eq!(
        found(chat.search("s", r(), query(&["FRIDAY"])).await.unwrap()),
        [("r".into(), 1), ("r".into(), 2)]
    );
    let both = vec!["r".to_string(), "q".to_string(), "missing".to_string()];
    assert_eq!(
        found(
            chat.search("s", both.clone(), query(&["deploy", "friday"]))
                .await
                .unwrap()
        ),
        [("q".into(), 1), ("r".into(), 1)]
    );
    // Accents do not matter; query syntax in a term is just text.
    assert_eq!(
        found(
            chat.search("s", r(), query(&["deploiement"]))
                .await
                .unwrap()
        ),
        [("r".into(), 3)]
    );
    for odd in [
        &["\"friday"][..],
        &["friday", "OR"],
        &["NEAR(", "x*"],
        &["-"],
    ] {
        chat.search("s", both.clone(), query(odd)).await.unwrap();
    }
    let by_bob = SearchQuery {
        author: Some("bob".into()),
        ..query(&["friday"])
    };
    assert_eq!(
        found(chat.search("s", r(), by_bob).await.unwrap()),
        [("r".into(), 2)]
    );
    let early = SearchQuery {
        until_ms: Some(200),
        ..query(&["friday"])
    };
    assert_eq!(
        found(chat.search("s", r(), early).await.unwrap()),
        [("r".into(), 1)]
    );
    let late = SearchQuery {
        from_ms: Some(200),
        ..query(&["friday"])
    };
    assert_eq!(
        found(chat.search("s", r(), late).await.unwrap()),
        [("r".into(), 2)]
    );
    let paged = |skip| SearchQuery {
        limit: 1,
        skip,
        ..query(&["friday"])
    };
    let first = chat.search("s", r(), paged(0)).await.unwrap();
    let second = chat.search("s", r(), paged(1)).await.unwrap();
    assert_eq!((first.len(), second.len()), (1, 1));
    assert_ne!(first[0].message.offset, second[0].message.offset);
    assert!(first[0].score > 0.0);
    // Edits re-index; deletes un-index.
    chat.edit("s", "r", 2, "monday lunch?".into(), "text".into(), 500)
        .await
        .unwrap();
    assert_eq!(
        found(chat.search("s", r(), query(&["friday"])).await.unwrap()),
        [("r".into(), 1)]
    );
    assert_eq!(
        found(chat.search("s", r(), query(&["monday"])).await.unwrap()),
        [("r".into(), 2)]
    );
    chat.delete("s", "r", 1, 600).await.unwrap();
    assert!(
        chat.search("s", r(), query(&["friday"]))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        chat.search("s", vec![], query(&["monday"]))
            .await
            .unwrap()
            .is_empty()
    );

    // Many rooms at once (searched inside the index rather than room by room) find the same.
    let mut many = vec!["r".to_string()];
    for i in 0..40 {
        let id = format!("x{i}");
        chat.create_room(
            room("s", &id, false),
            room_member("s", &id, "alice", Role::Owner),
        )
        .await
        .unwrap();
        chat.send(text("s", &id, "alice", "n", "a needle here"))
            .await
            .unwrap();
        if i % 2 == 0 {
            many.push(id);
        }
    }
    let needles = |skip, limit| SearchQuery {
        skip,
        limit,
        ..query(&["needle"])
    };
    let all = chat
        .search("s", many.clone(), needles(0, 100))
        .await
        .unwrap();
    assert_eq!(all.len(), 20);
    assert!(
        all.iter()
            .all(|h| many.contains(&h.room) && h.message.offset == 1)
    );
    let first = chat
        .search("s", many.clone(), needles(0, 15))
        .await
        .unwrap();
    let rest = chat
        .search("s", many.clone(), needles(15, 15))
        .await
        .unwrap();
    assert_eq!((first.len(), rest.len()), (15, 5));
    let few = chat
        .search("s", many[..3].to_vec(), needles(0, 100))
        .await
        .unwrap();
    assert_eq!(few.len(), 2);
}
