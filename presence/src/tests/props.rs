//! Property tests of the CRDT: the join is commutative, associative and idempotent, and real
//! deltas produce the same state in any order.

use crate::crdt::{Delta, Dot, Entry, Explicit, Stamp};
use crate::{Config, ConnId, NodeId, Presence, RoomId, Status, UserId};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

/// The entry written under `dot`. A dot is written once by its node, so a dot always carries
/// the same entry; deriving the entry from the dot keeps generated deltas honest.
fn entry_of(dot: Dot) -> Entry {
    Entry {
        conn: ConnId(dot.version % 3),
        user: UserId::new("acme", format!("u{}", dot.version % 4)),
        spaces: ["eng".to_string()].into(),
        rooms: BTreeMap::new(),
        last_active: dot.version * 1_000,
        explicit: Explicit {
            stamp: Stamp {
                at: dot.version,
                node: dot.node,
                version: dot.version,
            },
            status: dot.version.is_multiple_of(2).then_some(Status::Busy),
            until: None,
            custom: None,
        },
    }
}

/// A delta of up to 3 nodes and 12 versions each: some dots seen, some of those live.
fn delta() -> impl Strategy<Value = Delta> {
    prop::collection::vec((0..3u64, 1..13u64, any::<bool>()), 0..20).prop_map(|dots| {
        let mut delta = Delta::default();
        for (node, version, live) in dots {
            let dot = Dot {
                node: NodeId(node),
                version,
            };
            if live {
                delta.add(dot, Box::new(entry_of(dot)));
            } else {
                delta.remove(dot);
            }
        }
        delta
    })
}

fn joined(a: &Delta, b: &Delta) -> Delta {
    let mut out = a.clone();
    out.join(b);
    out
}

/// One thing a client or the shell does to a core, for the order test.
#[derive(Debug, Clone)]
enum Op {
    Connect(u64, u64),
    Disconnect(u64),
    Busy(u64),
    Clear(u64),
    Join(u64),
    Activity(u64),
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..6u64, 0..4u64).prop_map(|(c, u)| Op::Connect(c, u)),
        (0..6u64).prop_map(Op::Disconnect),
        (0..6u64).prop_map(Op::Busy),
        (0..6u64).prop_map(Op::Clear),
        (0..6u64).prop_map(Op::Join),
        (0..6u64).prop_map(Op::Activity),
        (0..8_000u64).prop_map(Op::Wait),
    ]
}

/// Runs `ops` on a fresh core of `node` (with a peer, so it emits deltas) and returns every
/// delta it emitted.
fn deltas_of(node: u64, ops: &[Op]) -> Vec<Delta> {
    let mut core = Presence::new(NodeId(node), Config::default());
    let mut now = 1_000_000;
    core.handle_node_heartbeat(NodeId(99), now);
    let mut out = Vec::new();
    for op in ops {
        // Refusals (unknown connection, …) are part of the game.
        let _ = match *op {
            Op::Connect(c, u) => core.handle_connect(
                ConnId(c),
                UserId::new("acme", format!("u{u}")),
                ["eng".to_string()].into(),
                now,
            ),
            Op::Disconnect(c) => core.handle_disconnect(ConnId(c), now),
            Op::Busy(c) => core.set_status(ConnId(c), Some(Status::Busy), None, now),
            Op::Clear(c) => core.set_status(ConnId(c), None, None, now),
            Op::Join(c) => core.join_room(ConnId(c), RoomId::new("eng", "general"), now),
            Op::Activity(c) => core.report_activity(ConnId(c), now),
            Op::Wait(ms) => {
                now += ms;
                core.handle_node_heartbeat(NodeId(99), now);
                core.handle_timeout(now);
                Ok(())
            }
        };
        out.extend(core.poll_delta());
    }
    out
}

proptest! {
    #[test]
    fn join_is_commutative(a in delta(), b in delta()) {
        prop_assert_eq!(joined(&a, &b), joined(&b, &a));
    }

    #[test]
    fn join_is_associative(a in delta(), b in delta(), c in delta()) {
        prop_assert_eq!(joined(&joined(&a, &b), &c), joined(&a, &joined(&b, &c)));
    }

    #[test]
    fn join_is_idempotent(a in delta(), b in delta()) {
        prop_assert_eq!(joined(&a, &a), a.clone());
        let ab = joined(&a, &b);
        prop_assert_eq!(joined(&ab, &b), ab);
    }

    #[test]
    fn real_deltas_give_the_same_state_in_any_order(
        ops_a in prop::collection::vec(op(), 1..40),
        ops_b in prop::collection::vec(op(), 1..40),
        seed in any::<u64>(),
    ) {
        let mut deltas = deltas_of(1, &ops_a);
        deltas.extend(deltas_of(2, &ops_b));
        let now = 10_000_000;
        let mut in_order = Presence::new(NodeId(3), Config::default());
        for delta in &deltas {
            in_order.merge(delta, now);
        }
        // Another order (a seeded shuffle), with every delta delivered twice.
        let mut shuffled: Vec<&Delta> = deltas.iter().chain(deltas.iter()).collect();
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let mut any_order = Presence::new(NodeId(3), Config::default());
        for delta in shuffled {
            any_order.merge(delta, now);
        }
        prop_assert_eq!(&in_order.state, &any_order.state);
        let users: BTreeSet<&UserId> = in_order.users.keys().chain(any_order.users.keys()).collect();
        for user in users {
            prop_assert_eq!(in_order.status(user), any_order.status(user));
        }
        // And the states match what the writers hold of their own entries.
        let mut truth = Delta::default();
        for delta in &deltas {
            truth.join(delta);
        }
        prop_assert_eq!(&in_order.state.entries, &truth.entries);
    }
}
