use super::*;
use yrs::updates::encoder::Encode;
use yrs::{GetString, Map, Text};

const LIMITS: Limits = Limits {
    max_doc_bytes: 1 << 20,
    max_awareness_clients: 2,
    max_awareness_bytes: 1024,
};

fn core() -> DocCore {
    DocCore::load(LIMITS, None, &[]).unwrap()
}

fn effects(core: &mut DocCore) -> Vec<Effect> {
    std::iter::from_fn(|| core.poll_effect()).collect()
}

/// A client's edit of its own document, as the update it would send.
fn edit(doc: &Doc, f: impl FnOnce(&mut yrs::TransactionMut, &Doc)) -> Vec<u8> {
    let before = doc.transact().state_vector();
    {
        let mut txn = doc.transact_mut();
        f(&mut txn, doc);
    }
    doc.transact().encode_diff_v1(&before)
}

fn insert(doc: &Doc, at: u32, s: &str) -> Vec<u8> {
    let text = doc.get_or_insert_text("t");
    edit(doc, |txn, _| text.insert(txn, at, s))
}

/// Apply every sync payload in `frames` to `doc`, as a Yjs client would.
fn apply_frames(doc: &Doc, frames: &[Bytes]) {
    for frame in frames {
        let mut r = Reader(frame);
        if r.var().unwrap() != MSG_SYNC {
            continue;
        }
        let kind = r.var().unwrap();
        let payload = r.bytes().unwrap();
        if kind != SYNC_STEP_1 {
            let update = Update::decode_v1(payload).unwrap();
            doc.transact_mut().apply_update(update).unwrap();
        }
    }
}

fn sent_to(effects: &[Effect], conn: ConnId) -> Vec<Bytes> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(to, frame) if *to == conn => Some(frame.clone()),
            Effect::Broadcast { except, frame } if *except != Some(conn) => Some(frame.clone()),
            _ => None,
        })
        .collect()
}

fn text(doc: &Doc) -> String {
    doc.get_or_insert_text("t").get_string(&doc.transact())
}

fn awareness_update(entries: &[(u64, u32, &str)]) -> Bytes {
    let mut update = Vec::new();
    write_var(&mut update, entries.len() as u64);
    for (id, clock, json) in entries {
        write_var(&mut update, *id);
        write_var(&mut update, u64::from(*clock));
        write_bytes(&mut update, json.as_bytes());
    }
    let mut out = Vec::new();
    write_var(&mut out, MSG_AWARENESS);
    write_bytes(&mut out, &update);
    Bytes::from(out)
}

/// The (client, clock, state) entries of an awareness frame.
fn awareness_entries(frame: &[u8]) -> Vec<(u64, u32, String)> {
    let mut r = Reader(frame);
    assert_eq!(r.var().unwrap(), MSG_AWARENESS);
    let mut u = Reader(r.bytes().unwrap());
    let n = u.var().unwrap();
    let mut out: Vec<_> = (0..n)
        .map(|_| {
            let id = u.var().unwrap();
            let clock = u.var().unwrap() as u32;
            (id, clock, u.string().unwrap().to_string())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_join_gets_the_state_vector_and_a_step_1_gets_the_missing_part() {
    let mut core = core();
    let alice = Doc::with_client_id(1);
    let update = insert(&alice, 0, "hello");
    core.join(1, false);
    core.receive(1, &sync_frame(SYNC_UPDATE, &update), 0)
        .unwrap();
    effects(&mut core);

    // A late joiner: the server's step 1 first, then step 2 for the joiner's own step 1.
    core.join(2, false);
    let joined = effects(&mut core);
    let bob = Doc::with_client_id(2);
    let sv = bob.transact().state_vector().encode_v1();
    assert_eq!(
        joined,
        vec![Effect::Send(
            2,
            sync_frame(SYNC_STEP_1, &{
                alice.transact().state_vector().encode_v1()
            })
        )]
    );
    core.receive(2, &sync_frame(SYNC_STEP_1, &sv), 0).unwrap();
    let reply = effects(&mut core);
    apply_frames(&bob, &sent_to(&reply, 2));
    assert_eq!(text(&bob), "hello");
}

#[test]
fn updates_reach_the_others_and_the_store_once() {
    let mut core = core();
    for conn in 1..=3 {
        core.join(conn, false);
    }
    effects(&mut core);
    let alice = Doc::with_client_id(1);
    let update = insert(&alice, 0, "hi");
    core.receive(1, &sync_frame(SYNC_UPDATE, &update), 0)
        .unwrap();
    let out = effects(&mut core);
    assert_eq!(sent_to(&out, 1), Vec::<Bytes>::new(), "no echo");
    let bob = Doc::with_client_id(2);
    apply_frames(&bob, &sent_to(&out, 2));
    assert_eq!(text(&bob), "hi");
    let persisted = out
        .iter()
        .filter(|e| matches!(e, Effect::Persist(_)))
        .count();
    assert_eq!(persisted, 1);

    // The same update again (a retry, or a step 2 after a reconnect) changes nothing.
    core.receive(1, &sync_frame(SYNC_STEP_2, &update), 0)
        .unwrap();
    assert_eq!(effects(&mut core), vec![]);
}

#[test]
fn concurrent_edits_converge_through_the_server() {
    let mut core = core();
    let docs: Vec<Doc> = (1..=3).map(Doc::with_client_id).collect();
    for conn in 1..=3 {
        core.join(conn, false);
    }
    effects(&mut core);
    let edits: Vec<Vec<u8>> = docs
        .iter()
        .enumerate()
        .map(|(i, doc)| {
            let map = doc.get_or_insert_map("m");
            let text = doc.get_or_insert_text("t");
            edit(doc, |txn, _| {
                text.insert(txn, 0, &format!("<{i}>"));
                map.insert(txn, "k", i as i64);
            })
        })
        .collect();
    let mut out = Vec::new();
    for (i, update) in edits.iter().enumerate() {
        core.receive(i as u64 + 1, &sync_frame(SYNC_UPDATE, update), 0)
            .unwrap();
        out.extend(effects(&mut core));
    }
    for (i, doc) in docs.iter().enumerate() {
        apply_frames(doc, &sent_to(&out, i as u64 + 1));
    }
    let server = text(
        &DocCore::load(LIMITS, Some(&core.snapshot()), &[])
            .unwrap()
            .doc,
    );
    for doc in &docs {
        assert_eq!(text(doc), server);
        let m = doc.get_or_insert_map("m");
        let theirs = m.get(&doc.transact(), "k");
        let first = docs[0].get_or_insert_map("m").get(&docs[0].transact(), "k");
        assert_eq!(theirs, first);
    }
    assert_eq!(server.len(), 9);
}

#[test]
fn a_read_only_connection_reads_but_its_changes_reach_nobody() {
    let mut core = core();
    core.join(1, false);
    core.join(2, true);
    effects(&mut core);
    let reader = Doc::with_client_id(2);
    let update = insert(&reader, 0, "vandalism");
    core.receive(2, &sync_frame(SYNC_UPDATE, &update), 0)
        .unwrap();
    core.receive(2, &sync_frame(SYNC_STEP_2, &update), 0)
        .unwrap();
    assert_eq!(effects(&mut core), vec![]);
    let writer = Doc::with_client_id(1);
    let update = insert(&writer, 0, "fine");
    core.receive(1, &sync_frame(SYNC_UPDATE, &update), 0)
        .unwrap();
    let fresh = Doc::with_client_id(3);
    apply_frames(&fresh, &sent_to(&effects(&mut core), 2));
    assert_eq!(text(&fresh), "fine");
}

#[test]
fn a_load_from_snapshot_and_tail_is_the_document() {
    let mut core = core();
    core.join(1, false);
    let alice = Doc::with_client_id(1);
    let mut stored = Vec::new();
    for (i, part) in ["a", "b", "c"].into_iter().enumerate() {
        let update = insert(&alice, i as u32, part);
        core.receive(1, &sync_frame(SYNC_UPDATE, &update), 0)
            .unwrap();
        stored.extend(effects(&mut core).into_iter().filter_map(|e| match e {
            Effect::Persist(u) => Some(u),
            _ => None,
        }));
    }
    let snapshot = DocCore::load(LIMITS, None, &stored[..2])
        .unwrap()
        .snapshot();
    let loaded = DocCore::load(LIMITS, Some(&snapshot), &stored[2..]).unwrap();
    assert_eq!(text(&loaded.doc), "abc");
    assert!(loaded.bytes() >= snapshot.len());
}

#[test]
fn the_document_size_is_bounded() {
    let limits = Limits {
        max_doc_bytes: 200,
        ..LIMITS
    };
    let mut core = DocCore::load(limits, None, &[]).unwrap();
    core.join(1, false);
    let alice = Doc::with_client_id(1);
    let small = insert(&alice, 0, "ok");
    core.receive(1, &sync_frame(SYNC_UPDATE, &small), 0)
        .unwrap();
    let big = insert(&alice, 0, &"x".repeat(300));
    assert_eq!(
        core.receive(1, &sync_frame(SYNC_UPDATE, &big), 0),
        Err(SyncError::DocTooLarge(200))
    );
}

#[test]
fn awareness_is_relayed_renewed_and_removed_on_leave_and_timeout() {
    let mut core = core();
    core.join(1, false);
    core.join(2, true);
    effects(&mut core);
    // Read-only connections show their cursor too.
    core.receive(2, &awareness_update(&[(20, 1, r#"{"user":"bob"}"#)]), 0)
        .unwrap();
    let out = effects(&mut core);
    assert_eq!(out.len(), 1);
    assert_eq!(
        awareness_entries(&sent_to(&out, 1)[0]),
        vec![(20, 1, r#"{"user":"bob"}"#.into())]
    );
    // A stale clock changes nothing; a newer one renews.
    core.receive(2, &awareness_update(&[(20, 1, r#"{"user":"old"}"#)]), 0)
        .unwrap();
    assert_eq!(effects(&mut core), vec![]);
    core.receive(
        2,
        &awareness_update(&[(20, 2, r#"{"user":"bob"}"#)]),
        20_000,
    )
    .unwrap();
    effects(&mut core);

    // A joiner gets the states; a query answers them.
    core.join(3, false);
    let joined = effects(&mut core);
    assert_eq!(joined.len(), 2);
    let Effect::Send(3, frame) = &joined[1] else {
        panic!("{joined:?}")
    };
    assert_eq!(
        awareness_entries(frame),
        vec![(20, 2, r#"{"user":"bob"}"#.into())]
    );

    // Leaving removes the connection's states, for everyone.
    core.receive(
        1,
        &awareness_update(&[(10, 1, r#"{"user":"alice"}"#)]),
        20_000,
    )
    .unwrap();
    effects(&mut core);
    core.leave(2);
    let out = effects(&mut core);
    assert_eq!(
        awareness_entries(&sent_to(&out, 1)[0]),
        vec![(20, 3, "null".into())]
    );

    // Not renewed for 30 s: removed.
    core.tick(20_000 + AWARENESS_TIMEOUT - 1);
    assert_eq!(effects(&mut core), vec![]);
    core.tick(20_000 + AWARENESS_TIMEOUT);
    let out = effects(&mut core);
    assert_eq!(
        awareness_entries(&sent_to(&out, 3)[0]),
        vec![(10, 2, "null".into())]
    );
    core.receive(3, &[MSG_QUERY_AWARENESS as u8], 0).unwrap();
    let Some(Effect::Send(3, frame)) = core.poll_effect() else {
        panic!()
    };
    assert_eq!(awareness_entries(&frame), vec![]);
}

#[test]
fn awareness_states_per_connection_and_their_size_are_bounded() {
    let mut core = core();
    core.join(1, false);
    let two = awareness_update(&[(1, 1, "{}"), (2, 1, "{}")]);
    core.receive(1, &two, 0).unwrap();
    assert_eq!(
        core.receive(1, &awareness_update(&[(3, 1, "{}")]), 0),
        Err(SyncError::AwarenessLimit("too many awareness states"))
    );
    let big = format!(r#"{{"x":"{}"}}"#, "y".repeat(1024));
    assert_eq!(
        core.receive(1, &awareness_update(&[(1, 2, &big)]), 0),
        Err(SyncError::AwarenessLimit("awareness state too large"))
    );
    assert_eq!(
        core.receive(1, &awareness_update(&[(1 << 53, 1, "{}")]), 0),
        Err(SyncError::Malformed("client id out of range"))
    );
}

#[test]
fn malformed_frames_are_refused_and_unknown_types_ignored() {
    let mut core = core();
    core.join(1, false);
    effects(&mut core);
    for (frame, why) in [
        (&[][..], "bad varint"),
        (&[0xff; 11][..], "bad varint"),
        (&[0, 2, 50, 1][..], "length beyond the frame"),
        (&[0, 9, 0][..], "unknown sync message"),
        (&[0, 0, 1, 0xff][..], "bad varint"),
        // A count of a million entries in 4 bytes, and a client id of 2^53.
        (&[0, 0, 4, 0xc0, 0x84, 0x3d, 0][..], "bad state vector"),
        (
            &[
                0, 0, 10, 1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10, 0,
            ][..],
            "client id out of range",
        ),
    ] {
        assert_eq!(
            core.receive(1, frame, 0),
            Err(SyncError::Malformed(why)),
            "{frame:?}"
        );
    }
    assert!(matches!(
        core.receive(1, &[0, 2, 3, 0xff, 0xff, 0xff], 0),
        Err(SyncError::Update(_))
    ));
    core.receive(1, &[7, 1, 2], 0).unwrap();
    core.receive(1, &permission_denied("no"), 0).unwrap();
    assert_eq!(effects(&mut core), vec![]);
}

#[test]
fn frames_are_what_yjs_clients_decode() {
    assert_eq!(&DocCore::keepalive()[..], &[1, 1, 0]);
    let denied = permission_denied("no access");
    let mut r = Reader(&denied);
    assert_eq!((r.var(), r.var()), (Ok(MSG_AUTH), Ok(PERMISSION_DENIED)));
    assert_eq!(r.string(), Ok("no access"));
    let mut long = Vec::new();
    write_var(&mut long, 300);
    assert_eq!(long, [0xac, 0x02]);
    assert_eq!(Reader(&long).var(), Ok(300));
}
