//! One co-edited document, sans-IO: the y-websocket protocol (sync step 1, sync step 2,
//! update, awareness, awareness query, auth) spoken with every connection on the document,
//! the `yrs` document itself, and its awareness states.
//!
//! The shell feeds it connections (`join`, `leave`), their frames (`receive`) and the time
//! (`tick`), and drains `poll_effect` for frames to send and updates to store. Frames are the
//! binary WebSocket messages of y-websocket; the same bytes travel in the session protocol's
//! document frames.
//!
//! Every decoder here is bounded by the frame it reads (the transport caps frame sizes); the
//! document's size is capped by `Limits::max_doc_bytes`, each connection's awareness states by
//! `Limits::max_awareness_clients`.

use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

pub type ConnId = u64;
pub type Millis = u64;

/// Message types: the first varuint of every frame.
const MSG_SYNC: u64 = 0;
const MSG_AWARENESS: u64 = 1;
const MSG_AUTH: u64 = 2;
const MSG_QUERY_AWARENESS: u64 = 3;
/// Sync message types: the second varuint of a sync frame.
const SYNC_STEP_1: u64 = 0;
const SYNC_STEP_2: u64 = 1;
const SYNC_UPDATE: u64 = 2;
/// The auth message's "permission denied".
const PERMISSION_DENIED: u64 = 0;

/// Yjs clients renew their awareness state every 15 s and drop others' states not renewed for
/// 30 s; the server removes them after the same 30 s.
pub const AWARENESS_TIMEOUT: Millis = 30_000;
/// Client ids are 53-bit (JavaScript's safe integers).
const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

/// Bounds of one document.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The document's encoded size (updates since the last snapshot included).
    pub max_doc_bytes: usize,
    /// Awareness states (client ids) one connection may hold.
    pub max_awareness_clients: usize,
    /// One awareness state's JSON.
    pub max_awareness_bytes: usize,
}

/// Why a connection's frame was refused. The shell closes the connection with `close_code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("invalid update: {0}")]
    Update(String),
    #[error("the document would exceed {0} bytes")]
    DocTooLarge(usize),
    #[error("{0}")]
    AwarenessLimit(&'static str),
}

/// What the core asks of its shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send a frame to one connection.
    Send(ConnId, Bytes),
    /// Send a frame to every connection but `except`.
    Broadcast {
        except: Option<ConnId>,
        frame: Bytes,
    },
    /// An update the document accepted: append it to the store.
    Persist(Vec<u8>),
}

struct Peer {
    read_only: bool,
    /// Awareness client ids this connection set a state for.
    clients: HashSet<u64>,
}

/// An awareness client's latest clock, its state (`None` once removed) and who set it when.
struct Awareness {
    clock: u32,
    json: Option<Arc<str>>,
    conn: ConnId,
    updated: Millis,
}

/// One document and the connections editing it.
pub struct DocCore {
    doc: Doc,
    /// Updates the document emitted since they were last taken (its update observer fills it).
    emitted: Arc<Mutex<Vec<Vec<u8>>>>,
    peers: HashMap<ConnId, Peer>,
    awareness: HashMap<u64, Awareness>,
    /// Encoded size: the last snapshot plus every update since.
    bytes: usize,
    limits: Limits,
    effects: VecDeque<Effect>,
}

impl DocCore {
    /// A document from its stored snapshot and the updates appended after it.
    pub fn load(
        limits: Limits,
        snapshot: Option<&[u8]>,
        updates: &[Vec<u8>],
    ) -> Result<DocCore, SyncError> {
        let doc = Doc::new();
        let mut bytes = 0;
        {
            let mut txn = doc.transact_mut();
            for stored in snapshot
                .into_iter()
                .chain(updates.iter().map(Vec::as_slice))
            {
                let update =
                    Update::decode_v1(stored).map_err(|e| SyncError::Update(e.to_string()))?;
                txn.apply_update(update)
                    .map_err(|e| SyncError::Update(e.to_string()))?;
                bytes += stored.len();
            }
        }
        let emitted = Arc::new(Mutex::new(Vec::new()));
        let sink = emitted.clone();
        doc.observe_update_v1(
            "chorus",
            move |_: &yrs::TransactionMut, event: &yrs::UpdateEvent| {
                sink.lock()
                    .expect("the update sink is never poisoned")
                    .push(event.update.clone());
            },
        )
        .map_err(|e| SyncError::Update(e.to_string()))?;
        Ok(DocCore {
            doc,
            emitted,
            peers: HashMap::new(),
            awareness: HashMap::new(),
            bytes,
            limits,
            effects: VecDeque::new(),
        })
    }

    /// A connection opened the document: it gets the document's state vector (sync step 1,
    /// so it sends what the server lacks) and the awareness states.
    pub fn join(&mut self, conn: ConnId, read_only: bool) {
        self.peers.insert(
            conn,
            Peer {
                read_only,
                clients: HashSet::new(),
            },
        );
        let sv = self.doc.transact().state_vector();
        self.effects.push_back(Effect::Send(conn, step1_frame(&sv)));
        if self.awareness.values().any(|a| a.json.is_some()) {
            let frame = self.awareness_frame(None);
            self.effects.push_back(Effect::Send(conn, frame));
        }
    }

    /// The connection closed: the awareness states it set are removed, for everyone.
    pub fn leave(&mut self, conn: ConnId) {
        if let Some(peer) = self.peers.remove(&conn) {
            self.remove_states(peer.clients.into_iter().collect());
        }
    }

    pub fn connections(&self) -> usize {
        self.peers.len()
    }

    /// One frame from `conn`. An error means the connection must be closed.
    pub fn receive(&mut self, conn: ConnId, frame: &[u8], now: Millis) -> Result<(), SyncError> {
        let Some(peer) = self.peers.get(&conn) else {
            return Ok(());
        };
        let read_only = peer.read_only;
        let mut r = Reader(frame);
        match r.var()? {
            MSG_SYNC => {
                let kind = r.var()?;
                let payload = r.bytes()?;
                match kind {
                    SYNC_STEP_1 => {
                        check_state_vector(payload)?;
                        let sv = StateVector::decode_v1(payload)
                            .map_err(|_| SyncError::Malformed("bad state vector"))?;
                        let diff = self.doc.transact().encode_diff_v1(&sv);
                        let frame = sync_frame(SYNC_STEP_2, &diff);
                        self.effects.push_back(Effect::Send(conn, frame));
                    }
                    // A read-only connection's changes are dropped: they reach nobody.
                    SYNC_STEP_2 | SYNC_UPDATE if read_only => {}
                    SYNC_STEP_2 | SYNC_UPDATE => self.apply(conn, payload)?,
                    _ => return Err(SyncError::Malformed("unknown sync message")),
                }
            }
            MSG_AWARENESS => {
                let update = r.bytes()?;
                self.apply_awareness(conn, update, now)?;
            }
            MSG_QUERY_AWARENESS => {
                let frame = self.awareness_frame(None);
                self.effects.push_back(Effect::Send(conn, frame));
            }
            // Clients do not send auth messages; newer message types are ignored.
            MSG_AUTH => {}
            _ => {}
        }
        Ok(())
    }

    /// Awareness states not renewed within `AWARENESS_TIMEOUT` are removed.
    pub fn tick(&mut self, now: Millis) {
        let stale: Vec<u64> = self
            .awareness
            .iter()
            .filter(|(_, a)| a.json.is_some() && a.updated + AWARENESS_TIMEOUT <= now)
            .map(|(id, _)| *id)
            .collect();
        self.remove_states(stale);
    }

    /// A frame that changes nothing (an empty awareness update), for connections that heard
    /// nothing for a while: y-websocket clients drop a connection silent for 30 s.
    pub fn keepalive() -> Bytes {
        let mut out = Vec::with_capacity(3);
        write_var(&mut out, MSG_AWARENESS);
        write_bytes(&mut out, &[0]);
        Bytes::from(out)
    }

    /// The whole document as one update.
    pub fn state(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// The whole document as one update, to store as its snapshot: the document's size
    /// becomes its length.
    pub fn snapshot(&mut self) -> Vec<u8> {
        let state = self.state();
        self.bytes = state.len();
        state
    }

    /// The document's encoded size: the last snapshot (or load) plus every update since.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn doc(&self) -> &Doc {
        &self.doc
    }

    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    fn apply(&mut self, conn: ConnId, payload: &[u8]) -> Result<(), SyncError> {
        if self.bytes + payload.len() > self.limits.max_doc_bytes {
            return Err(SyncError::DocTooLarge(self.limits.max_doc_bytes));
        }
        let update = Update::decode_v1(payload).map_err(|e| SyncError::Update(e.to_string()))?;
        self.doc
            .transact_mut()
            .apply_update(update)
            .map_err(|e| SyncError::Update(e.to_string()))?;
        let emitted = std::mem::take(
            &mut *self
                .emitted
                .lock()
                .expect("the update sink is never poisoned"),
        );
        // What the document integrated (nothing for content it had; more once an update that
        // waited for a missing one can be integrated) goes to the others and to the store.
        for update in emitted {
            self.bytes += update.len();
            let frame = sync_frame(SYNC_UPDATE, &update);
            self.effects.push_back(Effect::Broadcast {
                except: Some(conn),
                frame,
            });
            self.effects.push_back(Effect::Persist(update));
        }
        Ok(())
    }

    fn apply_awareness(
        &mut self,
        conn: ConnId,
        update: &[u8],
        now: Millis,
    ) -> Result<(), SyncError> {
        let mut r = Reader(update);
        let count = r.var()?;
        let mut changed = Vec::new();
        for _ in 0..count {
            let client = r.var()?;
            if client > MAX_CLIENT_ID {
                return Err(SyncError::Malformed("client id out of range"));
            }
            let clock =
                u32::try_from(r.var()?).map_err(|_| SyncError::Malformed("clock out of range"))?;
            let json = r.string()?;
            if json.len() > self.limits.max_awareness_bytes {
                return Err(SyncError::AwarenessLimit("awareness state too large"));
            }
            let removal = json == "null";
            // The rule of Yjs clients: a newer clock wins; at the same clock only a removal.
            let newer = self.awareness.get(&client).is_none_or(|a| {
                a.clock < clock || (a.clock == clock && removal && a.json.is_some())
            });
            if !newer {
                continue;
            }
            let peer = self.peers.get_mut(&conn).expect("checked by receive");
            if !removal && !peer.clients.contains(&client) {
                if peer.clients.len() >= self.limits.max_awareness_clients {
                    return Err(SyncError::AwarenessLimit("too many awareness states"));
                }
                peer.clients.insert(client);
            }
            self.awareness.insert(
                client,
                Awareness {
                    clock,
                    json: (!removal).then(|| Arc::from(json)),
                    conn,
                    updated: now,
                },
            );
            changed.push(client);
        }
        if !changed.is_empty() {
            let frame = self.awareness_frame(Some(&changed));
            self.effects.push_back(Effect::Broadcast {
                except: Some(conn),
                frame,
            });
        }
        Ok(())
    }

    /// Remove `clients`' states and tell everyone (a `null` state at the next clock).
    fn remove_states(&mut self, clients: Vec<u64>) {
        let mut removed = Vec::new();
        for client in clients {
            if let Some(a) = self.awareness.get_mut(&client)
                && a.json.is_some()
            {
                a.json = None;
                a.clock += 1;
                if let Some(peer) = self.peers.get_mut(&a.conn) {
                    peer.clients.remove(&client);
                }
                removed.push(client);
            }
        }
        if !removed.is_empty() {
            let frame = self.awareness_frame(Some(&removed));
            self.effects.push_back(Effect::Broadcast {
                except: None,
                frame,
            });
        }
    }

    /// An awareness frame with the states of `clients` (removed ones as `null`), or of every
    /// client with a state.
    fn awareness_frame(&self, clients: Option<&[u64]>) -> Bytes {
        let picked: Vec<(u64, &Awareness)> = match clients {
            Some(ids) => ids.iter().map(|id| (*id, &self.awareness[id])).collect(),
            None => self
                .awareness
                .iter()
                .filter(|(_, a)| a.json.is_some())
                .map(|(id, a)| (*id, a))
                .collect(),
        };
        let mut update = Vec::new();
        write_var(&mut update, picked.len() as u64);
        for (id, a) in picked {
            write_var(&mut update, id);
            write_var(&mut update, u64::from(a.clock));
            write_bytes(&mut update, a.json.as_deref().unwrap_or("null").as_bytes());
        }
        let mut out = Vec::with_capacity(update.len() + 4);
        write_var(&mut out, MSG_AWARENESS);
        write_bytes(&mut out, &update);
        Bytes::from(out)
    }
}

/// Checks a state vector before `yrs` decodes it: its entry count must fit the bytes it came
/// in (yrs reserves room for the count it reads), and its client ids must be 53-bit.
fn check_state_vector(payload: &[u8]) -> Result<(), SyncError> {
    let mut r = Reader(payload);
    let count = r.var()?;
    // Each entry takes at least two bytes: a client id and a clock.
    if count > (r.0.len() / 2) as u64 {
        return Err(SyncError::Malformed("bad state vector"));
    }
    for _ in 0..count {
        if r.var()? > MAX_CLIENT_ID {
            return Err(SyncError::Malformed("client id out of range"));
        }
        r.var()?;
    }
    Ok(())
}

/// The auth message refusing a connection, with the reason the client shows.
pub fn permission_denied(reason: &str) -> Bytes {
    let mut out = Vec::with_capacity(reason.len() + 4);
    write_var(&mut out, MSG_AUTH);
    write_var(&mut out, PERMISSION_DENIED);
    write_bytes(&mut out, reason.as_bytes());
    Bytes::from(out)
}

fn step1_frame(sv: &StateVector) -> Bytes {
    use yrs::updates::encoder::Encode;
    sync_frame(SYNC_STEP_1, &sv.encode_v1())
}

fn sync_frame(kind: u64, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 8);
    write_var(&mut out, MSG_SYNC);
    write_var(&mut out, kind);
    write_bytes(&mut out, payload);
    Bytes::from(out)
}

/// lib0's unsigned varint: 7 bits per byte, least significant first.
fn write_var(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// lib0's byte array (and string): its length, then the bytes.
fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_var(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A lib0 reader over one frame; every read is bounded by what is left of it.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn var(&mut self) -> Result<u64, SyncError> {
        let mut v = 0u64;
        for (i, &b) in self.0.iter().enumerate().take(10) {
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Ok(v);
            }
        }
        Err(SyncError::Malformed("bad varint"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], SyncError> {
        let len = self.var()?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= self.0.len())
            .ok_or(SyncError::Malformed("length beyond the frame"))?;
        let (bytes, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(bytes)
    }

    fn string(&mut self) -> Result<&'a str, SyncError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| SyncError::Malformed("string not UTF-8"))
    }
}

#[cfg(test)]
mod tests;
