//! A real server per test, in-process, on free ports with its own data dir.

use chorus::access::{Claims, Grant};
use chorus::client::Client;
use chorus::config::Config;
use chorus::protocol::Encoding;
use chorus::server::{self, Listeners, Shared};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Which transport a test runs over; every session test runs over each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tr {
    Ws,
    Quic,
}

pub struct TestServer {
    pub shared: Arc<Shared>,
    pub http: SocketAddr,
    pub quic: SocketAddr,
    pub task: JoinHandle<anyhow::Result<()>>,
    dir: tempfile::TempDir,
}

pub fn test_config(dir: &std::path::Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        quic_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..Config::default()
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::with(|_| {}).await
    }

    /// Start a server with the test config changed by `tweak`.
    pub async fn with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::in_dir(tempfile::tempdir().unwrap(), tweak).await
    }

    /// Start a server on `dir`, which may hold a previous server's data.
    pub async fn in_dir(dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = test_config(dir.path());
        tweak(&mut config);
        config.validate().unwrap();
        let listeners = Listeners::bind(&config).await.unwrap();
        let (http, quic) = (listeners.http_addr(), listeners.quic_addr());
        let shared = server::shared(config).unwrap();
        let task = tokio::spawn(server::serve(shared.clone(), listeners));
        TestServer {
            shared,
            http,
            quic,
            task,
            dir,
        }
    }

    /// Shut the server down gracefully and hand back its data dir.
    pub async fn stop(self) -> tempfile::TempDir {
        self.shared.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        // The store closes its database when the last reference to it goes.
        drop(self.shared);
        self.dir
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    /// A token for `user` of `org` with the default grants, valid for an hour.
    pub fn token(&self, user: &str, org: &str) -> String {
        self.token_with(user, org, &Grant::DEFAULT, 3600)
    }

    pub fn token_with(&self, user: &str, org: &str, grants: &[Grant], ttl: i64) -> String {
        let now = chorus::auth::unix_now();
        self.shared.keys.issue(&Claims {
            sub: user.into(),
            name: None,
            org: org.into(),
            grants: grants.to_vec(),
            iat: now,
            exp: (now as i64 + ttl) as u64,
        })
    }

    /// A connected client that has not said hello yet.
    pub async fn raw(&self, tr: Tr) -> Client {
        match tr {
            Tr::Ws => Client::connect_ws(&self.ws_url(), None).await.unwrap(),
            Tr::Quic => {
                let certs = chorus::datadir::load_certs(
                    &self.shared.config.data_dir.join(chorus::datadir::CERT_FILE),
                )
                .unwrap();
                Client::connect_quic(self.quic, &certs).await.unwrap()
            }
        }
    }

    /// A connected, authenticated client.
    pub async fn client(&self, tr: Tr, user: &str, org: &str) -> Client {
        let mut c = self.raw(tr).await;
        c.hello(Some(&self.token(user, org)), Encoding::Json)
            .await
            .unwrap();
        c
    }

    /// Create space `id` owned by `org`, with `owner` as its owner.
    pub async fn space(&self, id: &str, owner: &str, org: &str) {
        let mut c = self.client(Tr::Ws, owner, org).await;
        c.call(json!({"type": "space.create", "space": id, "name": id}))
            .await
            .unwrap();
    }

    /// Add `user` of `org` to space `id`, acting as `owner` of `owner_org`.
    pub async fn add(&self, id: &str, owner: &str, owner_org: &str, user: &str, org: &str) {
        let mut c = self.client(Tr::Ws, owner, owner_org).await;
        c.call(json!({"type": "space.add_member", "space": id, "user": user, "org": org}))
            .await
            .unwrap();
    }
}

/// Generate one `#[tokio::test]` per transport from `async fn name(tr: Tr)`.
#[macro_export]
macro_rules! both_transports {
    ($($name:ident),* $(,)?) => {
        mod ws {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::util::Tr::Ws).await
                }
            )*
        }
        mod quic {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::util::Tr::Quic).await
                }
            )*
        }
    };
}

/// The `code` of an error reply.
pub fn code(result: Result<Value, chorus::client::RequestError>) -> String {
    result.expect_err("expected an error reply").code
}
