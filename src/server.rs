//! The server: shared state, listeners, and `serve`, which runs until its shutdown token fires.
//! `serve` takes listeners that are already bound, so tests run real servers on port 0.

use crate::access::{Action, Claims, RoomAction};
use crate::auth::TokenKeys;
use crate::bus::{Bus, LocalBus};
use crate::channel::ChannelRef;
use crate::chat::Chat;
use crate::config::Config;
use crate::docs::Docs;
use crate::hub::Hub;
use crate::meetings::Meetings;
use crate::metrics::Metrics;
use crate::presence_service::PresenceService;
use crate::protocol::{ErrorCode, SpaceRequest};
use crate::spaces::ServiceError;
use crate::spaces::Spaces;
use crate::store::{ChatStore, DocStore, SqliteStore, Store};
use crate::users::Users;
use crate::{datadir, http, transport};
use anyhow::Context;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// State every connection and request handler shares.
pub struct Shared {
    pub config: Config,
    pub keys: Arc<TokenKeys>,
    pub hub: Arc<Hub>,
    /// Carries publishes to every node's hub.
    pub bus: Arc<dyn Bus>,
    pub spaces: Spaces,
    /// Open connections by user.
    pub users: Users,
    /// Who is online, where, and typing; told of connections and membership changes.
    pub presence: Arc<PresenceService>,
    /// Persistent chat: rooms and their streams.
    pub chat: Chat,
    /// Co-edited documents open now.
    pub docs: Docs,
    /// Live meetings, one task each.
    pub meetings: Meetings,
    pub metrics: Arc<Metrics>,
    /// Fires when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Open connections over all transports.
    pub connections: AtomicUsize,
    next_conn: AtomicU64,
}

impl Shared {
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Check that `claims` may do `action` on `channel`.
    pub async fn authorize_channel(
        &self,
        claims: &Claims,
        action: Action<'_>,
        channel: &str,
    ) -> Result<(), ServiceError> {
        let channel =
            ChannelRef::parse(channel).map_err(|m| ServiceError::new(ErrorCode::BadChannel, m))?;
        if let ChannelRef::User { org, user } = channel {
            if action != Action::Subscribe {
                return Err(ServiceError::new(
                    ErrorCode::Forbidden,
                    "personal channels carry the server's events only",
                ));
            }
            crate::access::authorize(claims, Action::SubscribePersonal { org, user }, None)?;
            return Ok(());
        }
        if let ChannelRef::Room { space, room } = channel {
            // A room's stream holds only what `chat.*` requests committed.
            if action != Action::Subscribe {
                return Err(ServiceError::new(
                    ErrorCode::Forbidden,
                    "room channels carry chat events only: use chat.send",
                ));
            }
            return self
                .chat
                .authorize(&self.spaces, claims, space, room, RoomAction::Read)
                .await;
        }
        let space = channel
            .space()
            .expect("only personal channels have no space");
        self.spaces.check(claims, action, space).await.map(drop)
    }

    /// Execute a `space.*` request for `claims`; the result is the reply body.
    pub async fn space_request(
        &self,
        claims: &Claims,
        request: &SpaceRequest,
    ) -> Result<Value, ServiceError> {
        let spaces = &self.spaces;
        Ok(match request {
            SpaceRequest::Create { space, name, .. } => {
                json!(
                    spaces
                        .create(claims, space.clone(), name.clone(), unix_ms())
                        .await?
                )
            }
            SpaceRequest::List { .. } => json!({ "spaces": spaces.list(claims).await? }),
            SpaceRequest::Members { space, .. } => {
                json!({ "space": space, "members": spaces.members(claims, space).await? })
            }
            SpaceRequest::AddMember {
                space,
                user,
                org,
                role,
                ..
            } => {
                json!(
                    spaces
                        .add_member(claims, space, user.clone(), org.clone(), *role)
                        .await?
                )
            }
            SpaceRequest::RemoveMember { space, user, .. } => {
                self.remove_member(claims, space, user).await?;
                json!({ "space": space, "user": user })
            }
        })
    }

    /// Remove `user` from `space`, ending their subscriptions to its channels at once.
    pub async fn remove_member(
        &self,
        claims: &Claims,
        space: &str,
        user: &str,
    ) -> Result<(), ServiceError> {
        self.spaces.remove_member(claims, space, user).await?;
        // The store ended their room memberships in the space with it.
        self.chat.left_space(space);
        self.users.revoke(user, space, "removed from the space");
        self.meetings.access_lost(space, None, user);
        Ok(())
    }

    /// Publish `data` on `channel` for `claims`; the result is the reply body.
    pub async fn publish(
        &self,
        claims: &Claims,
        channel: &str,
        data: &Value,
    ) -> Result<Value, ServiceError> {
        self.authorize_channel(claims, Action::Publish, channel)
            .await?;
        let published = self.bus.publish(channel, data).await.map_err(|e| {
            tracing::error!(error = %e, "publish failed");
            ServiceError::new(
                ErrorCode::Internal,
                "the message bus is unavailable; retry later",
            )
        })?;
        Ok(json!({
            "channel": channel,
            "epoch": published.position.epoch,
            "offset": published.position.offset,
            "delivered": published.delivered,
        }))
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64
}

/// Sockets bound before serving.
pub struct Listeners {
    pub http: tokio::net::TcpListener,
    pub quic: quinn::Endpoint,
    /// The SFU's media socket (UDP).
    pub sfu: tokio::net::UdpSocket,
}

impl Listeners {
    /// Bind the configured addresses (port 0 picks a free port).
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let http =
            listen(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
        let quic = transport::quic::endpoint(config)?;
        let sfu = crate::sfu::bind(config)?;
        Ok(Listeners { http, quic, sfu })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn quic_addr(&self) -> SocketAddr {
        self.quic
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    pub fn sfu_addr(&self) -> SocketAddr {
        self.sfu
            .local_addr()
            .expect("a bound socket has an address")
    }
}

/// Build the shared state from the config: open the store, load the token secret.
pub fn shared(config: Config) -> anyhow::Result<Arc<Shared>> {
    datadir::ensure(&config)?;
    let keys = Arc::new(TokenKeys::new(&datadir::token_secret(&config)?));
    let db = config.data_dir.join(datadir::DB_FILE);
    let sqlite =
        Arc::new(SqliteStore::open(&db).with_context(|| format!("cannot open {}", db.display()))?);
    let store: Arc<dyn Store> = sqlite.clone();
    let chat_store: Arc<dyn ChatStore> = sqlite.clone();
    let doc_store: Arc<dyn DocStore> = sqlite;
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::new(metrics.clone()));
    let chat = Chat::new(chat_store, hub.clone(), config.chat_limits());
    let presence = Arc::new(PresenceService::new(&config, metrics.clone()));
    let spaces = Spaces::new(store);
    spaces.set_listener(presence.clone());
    let (shutdown, tasks) = (CancellationToken::new(), TaskTracker::new());
    let docs = Docs::new(
        doc_store,
        metrics.clone(),
        config.docs(),
        shutdown.clone(),
        tasks.clone(),
    );
    let meetings = Meetings::new(
        config.meeting(),
        config.sfu_room(),
        metrics.clone(),
        presence.clone(),
        shutdown.clone(),
        tasks.clone(),
    );
    chat.set_listener(Arc::new(meetings.clone()));
    Ok(Arc::new(Shared {
        meetings,
        bus: Arc::new(LocalBus::new(hub.clone())),
        hub,
        spaces,
        users: Users::default(),
        presence,
        chat,
        keys,
        metrics,
        config,
        docs,
        shutdown,
        tasks,
        connections: AtomicUsize::new(0),
        next_conn: AtomicU64::new(1),
    }))
}

/// Connections the kernel may hold for `accept` (capped by `net.core.somaxconn`): a reconnect
/// storm of thousands arrives faster than one accept loop takes them.
const LISTEN_BACKLOG: u32 = 8192;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How long shutdown waits for connections to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serve until `shared.shutdown` fires; then stop accepting, tell every client why, let their
/// queues flush, and return.
pub async fn serve(shared: Arc<Shared>, listeners: Listeners) -> anyhow::Result<()> {
    let sweeper = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = every.tick() => shared.hub.sweep(Duration::from_secs(60)),
                    _ = shared.shutdown.cancelled() => return,
                }
            }
        })
    };
    let presence = shared.presence.start(shared.shutdown.clone());
    let sfu = crate::sfu::Sfu::new(listeners.sfu, &shared.config, shared.metrics.sfu.clone());
    let sfu = Arc::new(sfu.await?);
    shared.meetings.start_sfu(sfu.clone());
    let sfu = tokio::spawn(sfu.run(shared.shutdown.clone()));
    let quic = tokio::spawn(transport::quic::accept_loop(
        shared.clone(),
        listeners.quic.clone(),
    ));
    http::serve(shared.clone(), listeners.http).await?;
    // Accepting has stopped; every session saw the shutdown token and is saying goodbye.
    shared.tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, shared.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close in time");
    }
    listeners.quic.close(0u32.into(), b"server shutdown");
    let _ = quic.await;
    let _ = sweeper.await;
    let _ = presence.await;
    let _ = sfu.await;
    listeners.quic.wait_idle().await;
    Ok(())
}
