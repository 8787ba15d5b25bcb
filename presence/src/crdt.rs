//! The mergeable state: a delta-state CRDT of per-connection entries.
//!
//! It is a *dot store with a causal context* (Almeida, Shoker, Baquero, "Delta state replicated
//! data types", 2018). Every write by node N gets a fresh dot `(N, version)`, versions counting
//! up from 1 per node. A state is the set of live entries, each under its dot, plus the context:
//! every dot the state has seen, live or not. An entry absent from a state whose context holds
//! its dot was removed (or replaced by a later dot). Joining two states keeps an entry if both
//! have it, or if one has it and the other has never seen its dot: a join of sets, so it is
//! commutative, associative and idempotent, and deltas may arrive in any order, twice, or
//! combined. No tombstones: the context says "seen" compactly, as a counter per node (plus the
//! few versions beyond a gap).
//!
//! Only node N writes N's dots, and one connection has one live dot at a time: a write replaces
//! the connection's previous dot, and the delta carries the old dot in its context.

use crate::types::{ConnId, CustomStatus, Millis, NodeId, RoomId, SpaceId, Status, UserId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One write by one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Dot {
    pub node: NodeId,
    pub version: u64,
}

impl Dot {
    /// Every dot of `node`, for range scans of a dot-ordered map.
    fn range(node: NodeId) -> std::ops::RangeInclusive<Dot> {
        Dot { node, version: 0 }..=Dot {
            node,
            version: u64::MAX,
        }
    }
}

/// The versions of one node a state has seen: all of `1..=upto`, plus `extra`, which holds only
/// versions above `upto + 1`. That form is canonical, so equal sets compare equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Versions {
    upto: u64,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    extra: BTreeSet<u64>,
}

impl Versions {
    pub fn upto(upto: u64) -> Versions {
        Versions {
            upto,
            extra: BTreeSet::new(),
        }
    }

    pub fn contains(&self, version: u64) -> bool {
        version <= self.upto || self.extra.contains(&version)
    }

    pub fn insert(&mut self, version: u64) {
        if version > self.upto {
            self.extra.insert(version);
            self.compact();
        }
    }

    fn union(&mut self, other: &Versions) {
        self.upto = self.upto.max(other.upto);
        self.extra.extend(other.extra.iter().copied());
        self.compact();
    }

    fn compact(&mut self) {
        self.extra = self.extra.split_off(&(self.upto + 1));
        while self.extra.first() == Some(&(self.upto + 1)) {
            self.extra.pop_first();
            self.upto += 1;
        }
    }
}

/// Which writer decides a user's explicit status: the latest, ties broken by node and version,
/// so every replica picks the same one.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub(crate) struct Stamp {
    pub at: Millis,
    pub node: NodeId,
    pub version: u64,
}

/// What the user set themselves. It belongs to the user, not to a device, but lives in each of
/// the user's entries so it survives any one device leaving; the entry with the highest stamp
/// wins, and nodes copy a winner into their own entries of the user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Explicit {
    pub stamp: Stamp,
    /// Online, away or busy regardless of activity; `None` derives it from activity.
    pub status: Option<Status>,
    pub until: Option<Millis>,
    pub custom: Option<CustomStatus>,
}

/// One connection's replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub conn: ConnId,
    pub user: UserId,
    /// The spaces the user is a member of, as the connection's node knows them.
    pub spaces: BTreeSet<SpaceId>,
    /// The rooms the connection is in, and whether it is in the room's meeting.
    #[serde(with = "pairs")]
    pub rooms: BTreeMap<RoomId, bool>,
    pub last_active: Millis,
    pub explicit: Explicit,
}

/// A state or a delta of the replicated presence state (the two are the same thing in a
/// delta-state CRDT). [`crate::Presence::poll_delta`] hands out this node's changes as one;
/// [`crate::Presence::merge`] takes another node's. Opaque, but serializable (serde), for the
/// bus between nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Boxed: a B-tree node then holds pointers, not entries, so look-ups touch less memory
    /// and inserts and removals move less.
    #[serde(with = "pairs")]
    pub(crate) entries: BTreeMap<Dot, Box<Entry>>,
    #[serde(with = "pairs")]
    pub(crate) context: BTreeMap<NodeId, Versions>,
}

impl Delta {
    /// Whether the delta says nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.context.is_empty()
    }

    /// Joins `other` into `self`: the least state that includes both. Commutative, associative
    /// and idempotent, so a bus may combine, reorder and repeat deltas.
    pub fn join(&mut self, other: &Delta) {
        self.join_except(other, None, |_, _, _| {});
    }

    /// `join`, ignoring what `other` says about the dots of `skip` (a node is the authority on
    /// its own entries), and reporting each entry added (`true`) or removed (`false`).
    pub(crate) fn join_except(
        &mut self,
        other: &Delta,
        skip: Option<NodeId>,
        mut changed: impl FnMut(Dot, &Entry, bool),
    ) {
        // Removals first, then additions, both against `self`'s context before the union.
        for (&node, seen) in &other.context {
            if Some(node) == skip {
                continue;
            }
            // Visit the smaller side: the dots `other` lists beyond its counter are looked up,
            // the counter's range is scanned in our (ordered) entries.
            let mut doomed: Vec<Dot> = seen
                .extra
                .iter()
                .map(|&version| Dot { node, version })
                .filter(|dot| self.entries.contains_key(dot))
                .collect();
            if seen.upto > 0 {
                let range = Dot { node, version: 1 }..=Dot {
                    node,
                    version: seen.upto,
                };
                doomed.extend(self.entries.range(range).map(|(dot, _)| *dot));
            }
            for dot in doomed {
                if !other.entries.contains_key(&dot) {
                    let entry = self.entries.remove(&dot).expect("found above");
                    changed(dot, &entry, false);
                }
            }
        }
        for (dot, entry) in &other.entries {
            if Some(dot.node) == skip || self.entries.contains_key(dot) || self.covers(*dot) {
                continue;
            }
            self.entries.insert(*dot, entry.clone());
            changed(*dot, entry, true);
        }
        for (&node, seen) in &other.context {
            if Some(node) != skip {
                self.context.entry(node).or_default().union(seen);
            }
        }
    }

    /// Whether this state has seen `dot`.
    pub(crate) fn covers(&self, dot: Dot) -> bool {
        self.context
            .get(&dot.node)
            .is_some_and(|seen| seen.contains(dot.version))
    }

    /// A local write: `entry` is live under the new `dot`.
    pub(crate) fn add(&mut self, dot: Dot, entry: Box<Entry>) {
        self.context
            .entry(dot.node)
            .or_default()
            .insert(dot.version);
        self.entries.insert(dot, entry);
    }

    /// A local removal (or the old half of a replacement): `dot` is seen and not live.
    pub(crate) fn remove(&mut self, dot: Dot) -> Option<Box<Entry>> {
        self.context
            .entry(dot.node)
            .or_default()
            .insert(dot.version);
        self.entries.remove(&dot)
    }

    /// The entries of `node`.
    pub(crate) fn of_node(&self, node: NodeId) -> impl Iterator<Item = (&Dot, &Box<Entry>)> {
        self.entries.range(Dot::range(node))
    }
}

/// Maps as sequences of pairs, since their keys are not strings (JSON needs string keys).
mod pairs {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer, K: Serialize, V: Serialize>(
        map: &BTreeMap<K, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map)
    }

    pub fn deserialize<'de, D, K, V>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}
