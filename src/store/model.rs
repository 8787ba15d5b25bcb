//! Model test of the chat store: random operation sequences run against `SqliteStore` and against
//! an obviously correct in-memory reference; every result, and what the feed saw, must agree.

use super::contract::{Collect, room, room_member, space, text};
use super::sqlite::tests::Hold;
use super::{
    ChatEvent, ChatStore, EventKind, Message, Page, Reaction, ReadState, Revision, SqliteStore,
    Store, StoreError, ThreadSummary,
};
use crate::access::Role;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

const ROOMS: [&str; 3] = ["r0", "r1", "missing"];
const AUTHORS: [&str; 2] = ["alice", "bob"];
const EMOJI: [&str; 2] = ["+1", "tada"];

#[derive(Debug, Clone)]
enum Op {
    Send {
        room: usize,
        author: usize,
        client_id: u8,
        body: String,
        /// Which of `AUTHORS` it mentions, as bits.
        mentions: u8,
        thread: Option<u64>,
    },
    Edit {
        room: usize,
        offset: u64,
        body: String,
    },
    Delete {
        room: usize,
        offset: u64,
    },
    React {
        room: usize,
        user: usize,
        offset: u64,
        emoji: usize,
        add: bool,
    },
    History {
        room: usize,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
        thread: Option<u64>,
    },
    Events {
        room: usize,
        after: u64,
        limit: usize,
    },
    Revisions {
        room: usize,
        offset: u64,
    },
    Message {
        room: usize,
        offset: u64,
    },
    MarkRead {
        room: usize,
        user: usize,
        offset: u64,
    },
    ReadStates {
        user: usize,
    },
}

impl Op {
    fn room(&self) -> Option<usize> {
        match self {
            Op::Send { room, .. }
            | Op::Edit { room, .. }
            | Op::Delete { room, .. }
            | Op::React { room, .. }
            | Op::History { room, .. }
            | Op::Events { room, .. }
            | Op::Revisions { room, .. }
            | Op::Message { room, .. }
            | Op::MarkRead { room, .. } => Some(*room),
            Op::ReadStates { .. } => None,
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    let room = 0..ROOMS.len();
    let user = 0..AUTHORS.len();
    let offset = 0u64..24;
    let body = "[a-z]{1,6}";
    let maybe = || proptest::option::of(0u64..24);
    prop_oneof![
        6 => (room.clone(), user.clone(), 0u8..8, body, 0u8..4, proptest::option::weighted(0.3, 0u64..12))
            .prop_map(|(room, author, client_id, body, mentions, thread)| {
                Op::Send { room, author, client_id, body, mentions, thread }
            }),
        1 => (room.clone(), offset.clone(), body).prop_map(|(room, offset, body)| Op::Edit { room, offset, body }),
        1 => (room.clone(), offset.clone()).prop_map(|(room, offset)| Op::Delete { room, offset }),
        2 => (room.clone(), user.clone(), offset.clone(), 0..EMOJI.len(), any::<bool>())
            .prop_map(|(room, user, offset, emoji, add)| Op::React { room, user, offset, emoji, add }),
        2 => (room.clone(), maybe(), maybe(), 0usize..8, proptest::option::weighted(0.3, 0u64..12))
            .prop_map(|(room, before, after, limit, thread)| Op::History { room, before, after, limit, thread }),
        1 => (room.clone(), offset.clone(), 0usize..8).prop_map(|(room, after, limit)| Op::Events { room, after, limit }),
        1 => (room.clone(), offset.clone()).prop_map(|(room, offset)| Op::Revisions { room, offset }),
        1 => (room.clone(), offset.clone()).prop_map(|(room, offset)| Op::Message { room, offset }),
        1 => (room, user.clone(), offset).prop_map(|(room, user, offset)| Op::MarkRead { room, user, offset }),
        1 => user.prop_map(|user| Op::ReadStates { user }),
    ]
}

/// What an operation returned, comparable across implementations.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Sent(Message, bool),
    Event(ChatEvent),
    Changed(Option<ChatEvent>),
    Messages(Vec<Message>, bool),
    Events(Vec<ChatEvent>, u64),
    Revisions(Vec<Revision>),
    Message(Option<Message>),
    Read(ReadState, bool),
    ReadStates(Vec<ReadState>),
    NotFound,
}

fn outcome<T>(r: Result<T, StoreError>, f: impl FnOnce(T) -> Outcome) -> Outcome {
    match r {
        Ok(t) => f(t),
        Err(StoreError::NotFound(_)) => Outcome::NotFound,
        Err(e) => panic!("unexpected store error {e}"),
    }
}

fn mentioned(bits: u8) -> Vec<String> {
    AUTHORS
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, a)| a.to_string())
        .collect()
}

/// The reference: a room is a list of events and a map of messages; thread summaries and
/// reactions are derived when a message is shown.
#[derive(Default)]
struct ModelRoom {
    head: u64,
    /// Messages without `replies` and `reactions`.
    messages: BTreeMap<u64, Message>,
    /// (offset, kind, target message).
    events: Vec<(u64, EventKind, u64)>,
    by_client: HashMap<(String, String), u64>,
    revisions: HashMap<u64, Vec<Revision>>,
    reactions: BTreeMap<u64, BTreeMap<&'static str, BTreeSet<&'static str>>>,
    reads: HashMap<&'static str, u64>,
}

impl ModelRoom {
    fn view(&self, offset: u64) -> Message {
        let mut m = self.messages[&offset].clone();
        let replies: Vec<&Message> = self
            .messages
            .values()
            .filter(|r| r.thread == Some(offset) && r.deleted_ms.is_none())
            .collect();
        m.replies = replies.last().map(|last| ThreadSummary {
            count: replies.len() as u64,
            last_offset: last.offset,
            last_ms: last.created_ms,
        });
        m.reactions = self
            .reactions
            .get(&offset)
            .into_iter()
            .flatten()
            .filter(|(_, users)| !users.is_empty())
            .map(|(emoji, users)| Reaction {
                emoji: emoji.to_string(),
                count: users.len() as u64,
                users: users.iter().map(|u| u.to_string()).collect(),
            })
            .collect();
        m
    }

    fn read_state(&self, name: &str, user: &str) -> ReadState {
        let last_read = self.reads.get(user).copied().unwrap_or(0);
        let after = || {
            self.messages
                .values()
                .filter(move |m| m.offset > last_read && m.deleted_ms.is_none())
        };
        ReadState {
            space: "s".into(),
            room: name.into(),
            head: self.head,
            last_read,
            unread: after().filter(|m| m.author != user).count() as u64,
            mentions: after()
                .filter(|m| m.mentions.iter().any(|u| u == user))
                .count() as u64,
        }
    }

    fn live(&self, offset: u64) -> bool {
        self.messages
            .get(&offset)
            .is_some_and(|m| m.deleted_ms.is_none())
    }
}

#[derive(Default)]
struct Model {
    rooms: HashMap<&'static str, ModelRoom>,
    fed: Vec<ChatEvent>,
}

impl Model {
    /// Append an event about `target` to room `name`; returns it, as fed.
    fn append(&mut self, name: &str, kind: EventKind, target: Option<u64>) -> ChatEvent {
        let r = self.rooms.get_mut(name).expect("an existing room");
        r.head += 1;
        let target = target.unwrap_or(r.head);
        r.events.push((r.head, kind, target));
        let message = r.view(target);
        let event = ChatEvent {
            space: "s".into(),
            room: name.into(),
            offset: r.head,
            kind,
            root: message.thread.map(|root| r.view(root)),
            message,
        };
        self.fed.push(event.clone());
        event
    }

    fn apply(&mut self, op: &Op, at_ms: i64) -> Outcome {
        let Some(index) = op.room() else {
            let Op::ReadStates { user } = op else {
                unreachable!("only read states span rooms")
            };
            // Alice owns both rooms and bob is a member of r0 (see the test's set-up).
            let rooms: &[&str] = if *user == 0 { &ROOMS[..2] } else { &ROOMS[..1] };
            return Outcome::ReadStates(
                rooms
                    .iter()
                    .map(|name| self.rooms[name].read_state(name, AUTHORS[*user]))
                    .collect(),
            );
        };
        let name = ROOMS[index];
        let Some(r) = self.rooms.get_mut(name) else {
            return match op {
                Op::History { .. } => Outcome::Messages(vec![], false),
                Op::Events { .. } => Outcome::Events(vec![], 0),
                Op::Revisions { .. } => Outcome::Revisions(vec![]),
                Op::Message { .. } => Outcome::Message(None),
                _ => Outcome::NotFound,
            };
        };
        match op {
            Op::Send {
                author,
                client_id,
                body,
                mentions,
                thread,
                ..
            } => {
                let key = (AUTHORS[*author].to_string(), client_id.to_string());
                if let Some(offset) = r.by_client.get(&key) {
                    return Outcome::Sent(r.view(*offset), true);
                }
                if let Some(root) = thread
                    && !(r.live(*root) && r.messages[root].thread.is_none())
                {
                    return Outcome::NotFound;
                }
                let offset = r.head + 1;
                let message = Message {
                    offset,
                    client_id: key.1.clone(),
                    author: key.0.clone(),
                    body: Some(body.clone()),
                    format: "text".into(),
                    created_ms: at_ms,
                    edited_ms: None,
                    deleted_ms: None,
                    mentions: mentioned(*mentions),
                    thread: *thread,
                    replies: None,
                    reactions: Vec::new(),
                };
                r.by_client.insert(key, offset);
                r.messages.insert(offset, message);
                let event = self.append(name, EventKind::Message, None);
                Outcome::Sent(event.message, false)
            }
            Op::Edit { offset, body, .. } => {
                if !r.live(*offset) {
                    return Outcome::NotFound;
                }
                let m = r.messages.get_mut(offset).expect("live");
                r.revisions.entry(*offset).or_default().push(Revision {
                    body: m.body.replace(body.clone()).expect("live"),
                    format: m.format.clone(),
                    at_ms: m.edited_ms.unwrap_or(m.created_ms),
                });
                m.edited_ms = Some(at_ms);
                Outcome::Event(self.append(name, EventKind::Edit, Some(*offset)))
            }
            Op::Delete { offset, .. } => {
                let Some(m) = r.messages.get_mut(offset) else {
                    return Outcome::NotFound;
                };
                if m.deleted_ms.is_some() {
                    return Outcome::Changed(None);
                }
                m.body = None;
                m.deleted_ms = Some(at_ms);
                m.mentions.clear();
                r.revisions.remove(offset);
                r.reactions.remove(offset);
                let event = self.append(name, EventKind::Delete, Some(*offset));
                Outcome::Changed(Some(event))
            }
            Op::React {
                user,
                offset,
                emoji,
                add,
                ..
            } => {
                if !r.live(*offset) {
                    return Outcome::NotFound;
                }
                let users = r
                    .reactions
                    .entry(*offset)
                    .or_default()
                    .entry(EMOJI[*emoji])
                    .or_default();
                let changed = if *add {
                    users.insert(AUTHORS[*user])
                } else {
                    users.remove(AUTHORS[*user])
                };
                if !changed {
                    return Outcome::Changed(None);
                }
                let event = self.append(name, EventKind::Reaction, Some(*offset));
                Outcome::Changed(Some(event))
            }
            Op::History {
                before,
                after,
                limit,
                thread,
                ..
            } => {
                let before = before.unwrap_or(u64::MAX);
                let lower = after.unwrap_or(0);
                let range: Vec<u64> = r
                    .messages
                    .values()
                    .filter(|m| m.offset > lower && m.offset < before && m.thread == *thread)
                    .map(|m| m.offset)
                    .collect();
                let more = range.len() > *limit;
                let page: Vec<u64> = if after.is_some() {
                    range.into_iter().take(*limit).collect()
                } else {
                    let skip = range.len().saturating_sub(*limit);
                    range[skip..].to_vec()
                };
                Outcome::Messages(page.into_iter().map(|o| r.view(o)).collect(), more)
            }
            Op::Events { after, limit, .. } => {
                let events = r
                    .events
                    .iter()
                    .filter(|(offset, ..)| offset > after)
                    .take(*limit)
                    .map(|&(offset, kind, target)| {
                        let message = r.view(target);
                        ChatEvent {
                            space: "s".into(),
                            room: name.into(),
                            offset,
                            kind,
                            root: message.thread.map(|root| r.view(root)),
                            message,
                        }
                    })
                    .collect();
                Outcome::Events(events, r.head)
            }
            Op::Revisions { offset, .. } => {
                Outcome::Revisions(r.revisions.get(offset).cloned().unwrap_or_default())
            }
            Op::Message { offset, .. } => {
                Outcome::Message(r.messages.contains_key(offset).then(|| r.view(*offset)))
            }
            Op::MarkRead { user, offset, .. } => {
                let user = AUTHORS[*user];
                let offset = (*offset).min(r.head);
                let last = r.reads.entry(user).or_insert(0);
                let moved = offset > *last;
                *last = (*last).max(offset);
                Outcome::Read(r.read_state(name, user), moved)
            }
            Op::ReadStates { .. } => unreachable!("handled above"),
        }
    }
}

async fn run(store: &SqliteStore, op: &Op, at_ms: i64) -> Outcome {
    let room = |index: &usize| ROOMS[*index];
    match op {
        Op::Send {
            room: r,
            author,
            client_id,
            body,
            mentions,
            thread,
        } => {
            let mut new = text("s", room(r), AUTHORS[*author], &client_id.to_string(), body);
            new.at_ms = at_ms;
            new.mentions = mentioned(*mentions);
            new.thread = *thread;
            outcome(store.send(new).await, |s| {
                Outcome::Sent(s.message, s.duplicate)
            })
        }
        Op::Edit {
            room: r,
            offset,
            body,
        } => outcome(
            store
                .edit("s", room(r), *offset, body.clone(), "text".into(), at_ms)
                .await,
            Outcome::Event,
        ),
        Op::Delete { room: r, offset } => outcome(
            store.delete("s", room(r), *offset, at_ms).await,
            Outcome::Changed,
        ),
        Op::React {
            room: r,
            user,
            offset,
            emoji,
            add,
        } => outcome(
            store
                .react(
                    "s",
                    room(r),
                    *offset,
                    EMOJI[*emoji],
                    AUTHORS[*user],
                    *add,
                    at_ms,
                )
                .await,
            Outcome::Changed,
        ),
        Op::History {
            room: r,
            before,
            after,
            limit,
            thread,
        } => {
            let page = Page {
                before: *before,
                after: *after,
                limit: *limit,
                thread: *thread,
            };
            outcome(store.history("s", room(r), page).await, |(m, more)| {
                Outcome::Messages(m, more)
            })
        }
        Op::Events {
            room: r,
            after,
            limit,
        } => outcome(
            store.events("s", room(r), *after, *limit).await,
            |(e, head)| Outcome::Events(e, head),
        ),
        Op::Revisions { room: r, offset } => outcome(
            store.revisions("s", room(r), *offset).await,
            Outcome::Revisions,
        ),
        Op::Message { room: r, offset } => {
            outcome(store.message("s", room(r), *offset).await, Outcome::Message)
        }
        Op::MarkRead {
            room: r,
            user,
            offset,
        } => outcome(
            store
                .mark_read("s", room(r), AUTHORS[*user], *offset, at_ms)
                .await,
            |(state, moved)| Outcome::Read(state, moved),
        ),
        Op::ReadStates { user } => outcome(
            store.read_states("s", AUTHORS[*user]).await,
            Outcome::ReadStates,
        ),
    }
}

/// Runs `ops` (the ones numbered from `first`) as one batch of the store thread: each queued
/// in turn while the thread is held, then all run in one transaction.
async fn run_batch(store: &Arc<SqliteStore>, first: usize, ops: &[Op]) -> Vec<Outcome> {
    let hold = Hold::new(store).await;
    let mut tasks = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let (queue, op) = (store.clone(), op.clone());
        let at = (first + i) as i64;
        tasks.push(tokio::spawn(async move { run(&queue, &op, at).await }));
        // Every operation is one job: wait for it, so the jobs queue in `ops` order.
        hold.queued(store, i + 1).await;
    }
    hold.release(store, ops.len()).await;
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.expect("the operation does not panic"));
    }
    outcomes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Operations run in batches of random sizes, so that the store thread's cache of room
    /// heads meets jobs that fail after others of their batch appended, and duplicates of a
    /// message sent earlier in the same batch.
    #[test]
    fn chat_store_matches_the_model(
        ops in proptest::collection::vec(op(), 1..64),
        batches in proptest::collection::vec(1usize..8, 64),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(SqliteStore::open(&dir.path().join("chorus.db")).unwrap());
            let feed = Arc::new(Collect::default());
            store.set_feed(feed.clone());
            store.create_space(space("s", "acme"), "alice").await.unwrap();
            let mut model = Model::default();
            for name in &ROOMS[..2] {
                store
                    .create_room(room("s", name, false), room_member("s", name, "alice", Role::Owner))
                    .await
                    .unwrap();
                model.rooms.insert(name, ModelRoom::default());
            }
            store
                .put_room_member(room_member("s", ROOMS[0], "bob", Role::Member))
                .await
                .unwrap();
            let mut at = 0;
            for size in batches {
                let batch = &ops[at.min(ops.len())..(at + size).min(ops.len())];
                if batch.is_empty() {
                    break;
                }
                let got = run_batch(&store, at, batch).await;
                for (op, got) in batch.iter().zip(got) {
                    let expected = model.apply(op, at as i64);
                    prop_assert_eq!(got, expected, "op {} {:?}", at, op);
                    at += 1;
                }
            }
            prop_assert_eq!(&*feed.0.lock().unwrap(), &model.fed);
            for name in &ROOMS[..2] {
                let head = store.room("s", name).await.unwrap().unwrap().head;
                prop_assert_eq!(head, model.rooms[name].head);
            }
            Ok(())
        })?;
    }
}
