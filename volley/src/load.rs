//! Load accounting shared by the server driver, its handles and the sessions' requests: the
//! [`LoadGuard`]s alive (requests in flight), the application's own count, and what the driver
//! publishes after each wake-up. Used by `server` and `session`; it uses neither.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use volley_proto::{AppLoad, ServerLoad, ServerStats};

/// What the driver publishes after every wake-up, for the handles to read.
#[derive(Debug, Default)]
pub(crate) struct Published {
    pub(crate) stats: ServerStats,
    pub(crate) load: ServerLoad,
    pub(crate) answer_delays: volley_proto::server::AnswerDelays,
    /// Keys on the allow-list in force; None when the server takes any client.
    pub(crate) allow_list_len: Option<usize>,
}

/// State shared by the driver, the [`Server`](crate::Server), its [`ServerHandle`](crate::ServerHandle)s and [`LoadGuard`]s.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// [`LoadGuard`]s alive: requests in flight the application is serving.
    pub(crate) guards: AtomicU32,
    /// [`LoadGuard`]s dropped so far: requests completed.
    pub(crate) guards_done: AtomicU64,
    /// The last [`Server::set_app_load`](crate::Server::set_app_load) value.
    pub(crate) app: AtomicU32,
    /// The running total of completions in the last [`Server::set_app_load`](crate::Server::set_app_load) value.
    pub(crate) app_done: AtomicU64,
    /// Wakes the driver when either count changes. A `Notify` keeps one permit when the driver
    /// is busy elsewhere, so no change is missed, and many changes cost one wake-up.
    pub(crate) changed: Notify,
    pub(crate) published: Mutex<Published>,
}

impl Shared {
    /// The application load the endpoint weighs: the value set plus the guards alive, and the
    /// completions of both.
    pub(crate) fn app_load(&self) -> AppLoad {
        AppLoad {
            in_flight: self
                .app
                .load(Ordering::Acquire)
                .saturating_add(self.guards.load(Ordering::Acquire)),
            completed: self
                .app_done
                .load(Ordering::Acquire)
                .saturating_add(self.guards_done.load(Ordering::Acquire)),
        }
    }

    pub(crate) fn published(&self) -> std::sync::MutexGuard<'_, Published> {
        // The lock only guards plain copies; a panic elsewhere cannot leave it inconsistent.
        self.published.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn guard(self: &Arc<Self>) -> LoadGuard {
        self.guards.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
        LoadGuard {
            shared: Arc::clone(self),
        }
    }

    pub(crate) fn set_app_load(&self, load: AppLoad) {
        self.app.store(load.in_flight, Ordering::Release);
        self.app_done.store(load.completed, Ordering::Release);
        self.changed.notify_one();
    }
}

/// One request in flight: while it is alive the server counts one more request, which raises
/// its expected completion time — so it delays (`Paced`) or holds (`Gated`) its offers — and
/// the load hint its offers carry; its drop counts one completion, from which the server
/// measures its service time. [`Session::recv_request`](crate::Session::recv_request) takes one per request for you; take your own with
/// [`Server::load_guard`](crate::Server::load_guard) or [`ServerHandle::load_guard`](crate::ServerHandle::load_guard) for work the runtime cannot see, and
/// drop it when the request is done. The drop wakes the server, so that a freed slot releases
/// a held probe at once.
///
/// Idle sessions are not load (unless [`ServerConfig::count_sessions`](volley_proto::ServerConfig::count_sessions)). Guards outliving the
/// server are harmless.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), volley::Error> {
/// use volley::{Server, ServerConfig, StaticKeypair};
///
/// let key = StaticKeypair::generate(&mut volley::OsRng);
/// let mut config = ServerConfig::new(key);
/// config.capacity = Some(8); // requests served at once
/// let server = Server::bind("127.0.0.1:0".parse().unwrap(), config).await?;
/// let handle = server.handle();
///
/// // A request that arrived some other way (say, over HTTP) is load while it is served.
/// let work = tokio::spawn(async move {
///     let _guard = handle.load_guard();
///     // ... serve the request ...
/// });
/// work.await.unwrap();
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "the load is counted only while the guard is alive"]
pub struct LoadGuard {
    shared: Arc<Shared>,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.shared.guards_done.fetch_add(1, Ordering::AcqRel);
        self.shared.guards.fetch_sub(1, Ordering::AcqRel);
        self.shared.changed.notify_one();
    }
}
