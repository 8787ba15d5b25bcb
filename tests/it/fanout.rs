//! Fan-out: many subscribers get every message in order; a slow one is cut off, never waited for.

use crate::both_transports;
use crate::util::{TestServer, Tr};
use chorus::client::Client;
use chorus::protocol::ServerFrame;
use serde_json::json;
use std::time::Duration;

/// Read `count` messages and check their offsets run 1..=count with matching payloads.
async fn read_all(mut c: Client, count: u64) -> Client {
    let mut n = 0;
    while n < count {
        match c.expect().await.unwrap() {
            ServerFrame::Message { offset, data, .. } => {
                n += 1;
                assert_eq!(offset, n);
                assert_eq!(data["n"], n);
            }
            ServerFrame::Ping => c.send(&json!({"type": "pong"})).await.unwrap(),
            other => panic!("expected message {}, got {other:?}", n + 1),
        }
    }
    c
}

async fn subscribers(s: &TestServer, tr: Tr, n: usize, channel: &str) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = s.client(tr, &format!("u{i}"), "acme").await;
        c.call(json!({"type": "subscribe", "channel": channel}))
            .await
            .unwrap();
        clients.push(c);
    }
    clients
}

async fn one_subscriber_gets_everything(tr: Tr) {
    let s = TestServer::start().await;
    s.space("eng", "u0", "acme").await;
    let sub = subscribers(&s, tr, 1, "topic:eng/x").await.pop().unwrap();
    let mut publisher = s.client(tr, "u0", "acme").await;
    let reader = tokio::spawn(read_all(sub, 1000));
    for n in 1..=1000u64 {
        publisher
            .call(json!({"type": "publish", "channel": "topic:eng/x", "data": {"n": n}}))
            .await
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .unwrap()
        .unwrap();
}

async fn five_hundred_subscribers_get_everything_in_order(tr: Tr) {
    let s = TestServer::start().await;
    s.space("eng", "u0", "acme").await;
    for i in 1..500 {
        s.shared
            .spaces
            .add_member(&admin(), "eng", format!("u{i}"), "acme".into(), None)
            .await
            .unwrap();
    }
    let subs = subscribers(&s, tr, 500, "topic:eng/x").await;
    let readers: Vec<_> = subs
        .into_iter()
        .map(|c| tokio::spawn(read_all(c, 200)))
        .collect();
    let mut publisher = s.client(tr, "u0", "acme").await;
    for n in 1..=200u64 {
        let r = publisher
            .call(json!({"type": "publish", "channel": "topic:eng/x", "data": {"n": n}}))
            .await
            .unwrap();
        assert_eq!(r["delivered"], 500);
    }
    for r in readers {
        tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .unwrap()
            .unwrap();
    }
}

/// Claims of an admin of acme, for setting up members directly.
fn admin() -> chorus::access::Claims {
    chorus::access::Claims {
        sub: "root".into(),
        name: None,
        org: "acme".into(),
        grants: vec![chorus::access::Grant::Admin],
        iat: 0,
        exp: u64::MAX,
    }
}

/// One subscriber never reads: the server cuts it as a slow consumer while the publisher and
/// the other readers go on; if the fan-out waited for it, they would stop and time out.
async fn slow_subscriber_is_disconnected_others_keep_going(tr: Tr) {
    let s = TestServer::with(|c| {
        c.outbox_bytes = 256 * 1024;
        c.rate_per_sec = 100_000;
        c.rate_burst = 100_000;
    })
    .await;
    s.space("eng", "u0", "acme").await;
    for i in 1..6 {
        s.shared
            .spaces
            .add_member(&admin(), "eng", format!("u{i}"), "acme".into(), None)
            .await
            .unwrap();
    }
    let mut subs = subscribers(&s, tr, 5, "topic:eng/x").await;
    let mut slow = subs.pop().unwrap();
    // The slow reader reads nothing until the server has cut it. The server still owes it the
    // goodbye then, which goes out as soon as its socket drains: it finds its stream cut short,
    // without gaps, and then the reason.
    let metrics = s.shared.metrics.clone();
    let slow = tokio::spawn(async move {
        while metrics.slow_consumers.get() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut got = 0u64;
        loop {
            match slow.expect().await.unwrap() {
                ServerFrame::Message { offset, .. } => {
                    got += 1;
                    assert_eq!(offset, got, "no gaps before the cut");
                }
                ServerFrame::Disconnect { code, .. } => return (got, code),
                _ => continue,
            }
        }
    });
    let readers: Vec<_> = subs
        .into_iter()
        .map(|c| tokio::spawn(read_all(c, 2000)))
        .collect();
    let mut publisher = s.client(tr, "u5", "acme").await;
    let filler = "x".repeat(8 * 1024);
    // 16 MiB in all: more than the slow reader's socket buffers and its 256 KiB queue together.
    // Each publish waits for its reply (sent once the message is in every queue), so readers
    // that keep reading never fall behind, and a fan-out waiting on the slow reader would
    // hold the publisher back.
    let publishing = async {
        for n in 1..=2000u64 {
            publisher
                .call(json!({"type": "publish", "channel": "topic:eng/x",
                    "data": {"n": n, "f": filler}}))
                .await
                .unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), publishing)
        .await
        .expect("the publisher is not held back");
    for r in readers {
        tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .expect("fast readers are not held back")
            .unwrap();
    }
    let (got, end) = tokio::time::timeout(Duration::from_secs(60), slow)
        .await
        .expect("the slow subscriber is cut off")
        .unwrap();
    assert_eq!(s.shared.metrics.slow_consumers.get(), 1);
    assert!(got < 2000, "the slow subscriber was never cut off");
    assert_eq!(end, chorus::protocol::ErrorCode::SlowConsumer);
}

both_transports!(
    one_subscriber_gets_everything,
    five_hundred_subscribers_get_everything_in_order,
    slow_subscriber_is_disconnected_others_keep_going,
);
