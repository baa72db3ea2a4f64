//! [`Pool`]: every request balanced over a few long-lived sessions (PROTOCOL.md §6.10).
//!
//! A pool opens `k` sessions with the `k` best servers of one race ([`Client::connect_n`]),
//! sends each request on the member with the shortest expected delay — the path, the load its
//! server reported in its latest reply (aged), and this client's requests sent there since —
//! and keeps `k` members: a member whose session ends (its server died, drained, or went away)
//! is replaced by a background race over the servers not in the pool, and so is one that falls
//! far behind the others, within a budget of races per request. The choice is
//! [`volley_proto::balance::Balancer`]'s; this module gives it sessions, a clock and tasks.
//!
//! It is a `tower::Service<Bytes>`: `poll_ready` waits while `max_in_flight` requests are out
//! (back-pressure), so it composes with `ServiceBuilder` layers (timeout, retry, concurrency
//! limit). A reply is the server application's answer ([`crate::Request::reply`]); a request
//! its application let go, or one refused, fails with [`Error::Request`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info};
use volley_proto::balance::{BalanceConfig, BalanceStats, Balancer, MemberKey, RaceReason, Report};

use crate::client::Client;
use crate::error::Error;
use crate::session::Session;

/// How a [`Pool`] keeps and uses its members.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Members, races and their budget (`members` is the pool's `k`, default 3).
    pub balance: BalanceConfig,
    /// Most requests in flight through the pool at once; `poll_ready` waits beyond. Default
    /// 4,096.
    pub max_in_flight: usize,
    /// How often the pool looks at its members when nothing happens (a race due, a retired
    /// member to close). Default 50 ms.
    pub tick: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            balance: BalanceConfig::default(),
            max_in_flight: 4096,
            tick: Duration::from_millis(50),
        }
    }
}

impl PoolConfig {
    /// The default configuration with `k` members.
    pub fn members(k: usize) -> Self {
        let mut config = Self::default();
        config.balance.members = k.max(1);
        config
    }
}

/// What a [`Pool`] counted ([`Pool::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// The balancer's counters: requests, races by reason, members retired and failed.
    pub balance: BalanceStats,
    /// Races run (the first one, which opened the pool, included).
    pub races: u64,
    /// Members open now (retiring ones included).
    pub members: usize,
    /// Requests that failed (any error).
    pub failed_requests: u64,
}

/// Says whether a reply is a failure of the server that sent it — an error its application
/// answered, such as an HTTP 5xx — for [`Pool::connect_with`].
pub type ReplyClassifier = Arc<dyn Fn(&Bytes) -> bool + Send + Sync>;

struct Inner {
    /// The client of the replacement races: the most spare throughput wins.
    racer: Client,
    /// Which replies are failures (None: every reply is a success).
    failed: Option<ReplyClassifier>,
    servers: Mutex<Vec<SocketAddr>>,
    config: PoolConfig,
    state: Mutex<State>,
    /// Wakes the keeper: a request completed, a member failed, the servers changed.
    poke: Arc<Notify>,
    /// Wakes requests waiting for a live member.
    joined: Notify,
    permits: Arc<Semaphore>,
}

struct State {
    balancer: Balancer,
    sessions: Vec<(MemberKey, Arc<Session>)>,
    races: u64,
    failed_requests: u64,
    /// The last race's error, when the pool has no live member: requests waiting fail with it.
    stranded: Option<String>,
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every request balanced over `k` long-lived sessions (see the module documentation).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), volley::Error> {
/// use volley::{Client, ClientConfig, Pool, PoolConfig, Server, ServerConfig, StaticKeypair};
///
/// let key = StaticKeypair::generate(&mut volley::OsRng);
/// let mut servers = Vec::new();
/// for _ in 0..4 {
///     let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
///     servers.push(server.local_addr());
///     // Answers each request with its length.
///     let length = |call: volley::handler::Call| async move {
///         Some(volley::Bytes::from(call.data.len().to_string()))
///     };
///     tokio::spawn(volley::handler::serve(server, length, std::future::pending()));
/// }
/// let client = Client::new(ClientConfig::new(vec![key.public()]));
/// let pool = Pool::connect(&client, &servers, PoolConfig::members(2)).await?;
/// assert_eq!(&pool.request(volley::Bytes::from_static(b"four")).await?[..], b"4");
/// assert_eq!(pool.members().len(), 2);
/// # Ok(()) }
/// ```
pub struct Pool {
    inner: Arc<Inner>,
    /// The permit `poll_ready` took for the next `call`.
    permit: Option<OwnedSemaphorePermit>,
    /// `poll_ready`'s wait for a permit (in a mutex only to make the handle `Sync`: it is
    /// reached through `&mut self`, never locked).
    acquiring: Mutex<Option<Acquiring>>,
}

type Acquiring = Pin<Box<dyn Future<Output = OwnedSemaphorePermit> + Send>>;

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Clone for Pool {
    /// Another handle on the same pool (its own readiness: a permit taken by one handle's
    /// `poll_ready` is for that handle's next `call`).
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            permit: None,
            acquiring: Mutex::new(None),
        }
    }
}

impl Pool {
    /// Races `servers` once and opens sessions with the `k` best ([`Client::connect_n`]);
    /// then keeps `k` members for as long as the pool lives (a task of the runtime's). Fails
    /// as `connect_n` does when no server can be reached; fewer than `k` servers answering is
    /// not an error (the pool races for the rest in the background).
    pub async fn connect(
        client: &Client,
        servers: &[SocketAddr],
        config: PoolConfig,
    ) -> Result<Self, Error> {
        Self::open(client, servers, config, None).await
    }

    /// As [`Pool::connect`], with `failed` telling which replies are failures of their server:
    /// an application error answered at once (an HTTP 5xx, a status byte). A member whose
    /// replies fail (three in a row) takes no request while another does not, and a race
    /// replaces it (PROTOCOL.md §6.10). Without it, a server that answers every request at
    /// once with an error looks like the fastest of the pool.
    pub async fn connect_with(
        client: &Client,
        servers: &[SocketAddr],
        config: PoolConfig,
        failed: ReplyClassifier,
    ) -> Result<Self, Error> {
        Self::open(client, servers, config, Some(failed)).await
    }

    async fn open(
        client: &Client,
        servers: &[SocketAddr],
        config: PoolConfig,
        failed: Option<ReplyClassifier>,
    ) -> Result<Self, Error> {
        if config.max_in_flight == 0 {
            return Err(Error::InvalidArgument(
                "a pool needs max_in_flight of at least 1",
            ));
        }
        let k = config.balance.members.max(1);
        // Members never fail over: a lost member is replaced by the pool's own race, so that
        // its members stay on k different servers.
        let client = client.without_failover();
        let sessions = client.connect_n(servers, k).await?;
        let racer = client.choosing_by(volley_proto::SelectionPolicy::spare());
        let inner = Arc::new(Inner {
            racer,
            failed,
            servers: Mutex::new(servers.to_vec()),
            config,
            state: Mutex::new(State {
                balancer: Balancer::new(config.balance),
                sessions: Vec::new(),
                races: 1,
                failed_requests: 0,
                stranded: None,
                closed: false,
            }),
            poke: Arc::new(Notify::new()),
            joined: Notify::new(),
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
        });
        let now = now();
        for session in sessions {
            join(&inner, now, session, None);
        }
        tokio::spawn(keep(Arc::downgrade(&inner)));
        Ok(Self {
            inner,
            permit: None,
            acquiring: Mutex::new(None),
        })
    }

    /// Sends `body` as a request on the best member and waits for its reply.
    pub async fn request(&self, body: Bytes) -> Result<Bytes, Error> {
        let permit = Arc::clone(&self.inner.permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::PoolClosed)?;
        send(Arc::clone(&self.inner), body, permit).await
    }

    /// The servers the pool races from now on (its members stay until they fail or fall
    /// behind).
    pub fn set_servers(&self, servers: Vec<SocketAddr>) {
        *lock(&self.inner.servers) = servers;
        self.inner.poke.notify_one();
    }

    /// The members now, as the balancer sees them.
    pub fn members(&self) -> Vec<volley_proto::balance::MemberView> {
        lock(&self.inner.state).balancer.members(now())
    }

    /// What the pool counted so far.
    pub fn stats(&self) -> PoolStats {
        let state = lock(&self.inner.state);
        PoolStats {
            balance: state.balancer.stats(),
            races: state.races,
            members: state.sessions.len(),
            failed_requests: state.failed_requests,
        }
    }

    /// Closes every member's session; requests after this fail with [`Error::PoolClosed`].
    pub fn close(&self) {
        close(&self.inner);
    }
}

fn close(inner: &Inner) {
    let sessions = {
        let mut state = lock(&inner.state);
        state.closed = true;
        std::mem::take(&mut state.sessions)
    };
    for (_, session) in sessions {
        session.close();
    }
    inner.permits.close();
    inner.joined.notify_waiters();
    inner.poke.notify_one();
}

impl Drop for Inner {
    /// The last handle (and the last request in flight) gone: the members' sessions close (the
    /// keeper and the members' watchers hold the pool weakly, and end with it).
    fn drop(&mut self) {
        close(self);
    }
}

/// Adds `session` as a member (after a race: `reason` says which), with what its offer said.
fn join(inner: &Arc<Inner>, now: std::time::Instant, session: Session, reason: Option<RaceReason>) {
    let server = session.remote();
    let report = session.report();
    // The offer's hint is the member's first report. The path's round trip is the
    // handshake's (INIT to ACCEPT), not the offer's answer time: a busy server holds its
    // answer (pacing), and that hold is load, which the hint already says.
    let hint = report.as_ref().and_then(|r| {
        r.offers
            .iter()
            .find(|o| o.server == server)
            .and_then(|o| o.load)
    });
    let report_in = hint.and_then(|l| {
        l.expected()
            .map(|e| Report::new(e, l.in_flight, l.capacity))
    });
    let rtt = report.and_then(|r| r.handshake_time);
    let report = report_in;
    let session = Arc::new(session);
    let (key, retired) = {
        let mut state = lock(&inner.state);
        if state.closed {
            session.close();
            return;
        }
        let (key, retired) = match reason {
            None => (state.balancer.add(now, server, report, rtt), None),
            Some(_) => state.balancer.race_won(now, server, report, rtt),
        };
        state.sessions.push((key, Arc::clone(&session)));
        state.stranded = None;
        (key, retired)
    };
    info!(%server, ?retired, "pool: member joined");
    inner.joined.notify_waiters();
    // The member leaves the pool when its session ends, whatever ends it.
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        let reason = session.closed().await;
        if let Some(inner) = weak.upgrade() {
            let mut state = lock(&inner.state);
            state.balancer.failed(key);
            state.sessions.retain(|(k, _)| *k != key);
            drop(state);
            debug!(%server, ?reason, "pool: member's session ended");
            inner.poke.notify_one();
        }
    });
}

/// The pool's keeper: races when the balancer says so and closes retired members once their
/// requests are answered, until the pool is dropped or closed.
async fn keep(weak: std::sync::Weak<Inner>) {
    loop {
        let Some(mut inner) = weak.upgrade() else {
            return;
        };
        let (race, retired) = {
            let mut state = lock(&inner.state);
            if state.closed {
                return;
            }
            let now = now();
            if let Some(key) = state.balancer.poll_shrink(now) {
                debug!(?key, "pool: shrinks by a member");
            }
            let idle = state.balancer.idle_retired();
            let mut retired = Vec::new();
            for key in idle {
                state.balancer.remove(key);
                if let Some(i) = state.sessions.iter().position(|(k, _)| *k == key) {
                    retired.push(state.sessions.swap_remove(i).1);
                }
            }
            let race = state.balancer.poll_race(now);
            (race, retired)
        };
        for session in retired {
            debug!(server = %session.remote(), "pool: retired member closed");
            session.close();
        }
        if let Some(race) = race {
            if matches!(race.reason, RaceReason::Behind(_)) {
                // A race for a member behind starts after a random part of the least gap
                // between races: the clients that share a server see it fall behind at the
                // same reply, and races started together all win the same idle server.
                use rand::Rng;
                let gap = inner.config.balance.min_race_gap;
                let wait = gap.mul_f64(rand::thread_rng().r#gen::<f64>());
                drop(inner);
                tokio::time::sleep(wait).await;
                let Some(again) = weak.upgrade() else { return };
                inner = again;
            }
            let candidates: Vec<SocketAddr> = lock(&inner.servers)
                .iter()
                .filter(|s| !race.exclude.contains(s))
                .copied()
                .collect();
            let won = if candidates.is_empty() {
                Err(Error::InvalidArgument(
                    "every server of the pool is a member already",
                ))
            } else {
                lock(&inner.state).races += 1;
                match race.wanted() {
                    1 => inner.racer.connect(&candidates).await.map(|s| vec![s]),
                    // A growth: the n best of one race.
                    n => inner.racer.connect_n(&candidates, n).await,
                }
            };
            match won {
                Ok(sessions) => {
                    let now = now();
                    for session in sessions {
                        join(&inner, now, session, Some(race.reason));
                    }
                }
                Err(e) => {
                    debug!(error = %e, reason = ?race.reason, "pool: race found no new member");
                    let mut state = lock(&inner.state);
                    state.balancer.race_failed();
                    if state.balancer.live() == 0 {
                        state.stranded = Some(e.to_string());
                        drop(state);
                        inner.joined.notify_waiters();
                    }
                }
            }
            continue;
        }
        let tick = inner.config.tick;
        let poke = Arc::clone(&inner.poke);
        drop(inner);
        let _ = tokio::time::timeout(tick, poke.notified()).await;
    }
}

/// Sends one request on the best member, waiting for a live member if there is none.
async fn send(
    inner: Arc<Inner>,
    body: Bytes,
    permit: OwnedSemaphorePermit,
) -> Result<Bytes, Error> {
    let _permit = permit;
    let (key, session) = loop {
        let joined = inner.joined.notified();
        {
            let mut state = lock(&inner.state);
            if state.closed {
                return Err(Error::PoolClosed);
            }
            let now = now();
            // A member whose session has ended leaves before it is picked.
            let ended: Vec<MemberKey> = state
                .sessions
                .iter()
                .filter(|(_, s)| s.close_reason().is_some())
                .map(|(k, _)| *k)
                .collect();
            for key in ended {
                state.balancer.failed(key);
                state.sessions.retain(|(k, _)| *k != key);
            }
            if let Some(key) = state.balancer.pick(now)
                && let Some((_, session)) = state.sessions.iter().find(|(k, _)| *k == key)
            {
                let session = Arc::clone(session);
                state.balancer.sent(now, key);
                break (key, session);
            }
            if let Some(why) = state.stranded.take() {
                state.failed_requests += 1;
                return Err(Error::PoolEmpty(why));
            }
        }
        inner.poke.notify_one();
        joined.await;
    };
    // Counted as lost if the caller gives up before the reply.
    let mut pending = InFlight {
        inner: &inner,
        key,
        done: false,
    };
    let result = session.request(body).await;
    pending.done = true;
    // The session's latest report: this reply's, or a later one's.
    let report = session.load_report();
    // The caller's classifier runs before the pool's lock is taken.
    let reply_ok = match (&result, &inner.failed) {
        (Ok(reply), Some(failed)) => !failed(reply),
        _ => true,
    };
    let mut state = lock(&inner.state);
    match &result {
        Ok(_) => {
            let report =
                report.and_then(|r| r.expected.map(|e| Report::new(e, r.in_flight, r.capacity)));
            state
                .balancer
                .replied_with(now(), key, None, report, reply_ok);
        }
        Err(e) => {
            state.balancer.lost(key);
            state.failed_requests += 1;
            if matches!(e, Error::Closed(_) | Error::RequestLost(_))
                || session.close_reason().is_some()
            {
                // The member is gone: out of the pool now, before its watcher notices, so
                // that a retry goes elsewhere.
                state.balancer.failed(key);
                state.sessions.retain(|(k, _)| *k != key);
            }
        }
    }
    let short = state.balancer.live() < state.balancer.target();
    drop(state);
    if short || result.is_err() {
        inner.poke.notify_one();
    }
    result
}

/// The runtime's clock (paused with tokio's test clock), as the balancer takes it.
fn now() -> std::time::Instant {
    crate::socket::now()
}

/// A request sent on a member and not yet answered: dropped early, it counts as lost.
struct InFlight<'a> {
    inner: &'a Inner,
    key: MemberKey,
    done: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            lock(&self.inner.state).balancer.lost(self.key);
        }
    }
}

impl tower_service::Service<Bytes> for Pool {
    type Response = Bytes;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Bytes, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.permit.is_some() {
            return Poll::Ready(Ok(()));
        }
        let slot = self.acquiring.get_mut().unwrap_or_else(|e| e.into_inner());
        let acquiring = slot.get_or_insert_with(|| {
            let permits = Arc::clone(&self.inner.permits);
            Box::pin(async move {
                // A closed semaphore yields no permit: the pool is closed; wait for ever is
                // wrong, so a closed pool's call fails instead (see `call`).
                match permits.acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => std::future::pending().await,
                }
            })
        });
        if self.inner.permits.is_closed() {
            *slot = None;
            return Poll::Ready(Err(Error::PoolClosed));
        }
        match acquiring.as_mut().poll(cx) {
            Poll::Ready(permit) => {
                *slot = None;
                self.permit = Some(permit);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, body: Bytes) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        match self.permit.take() {
            Some(permit) => Box::pin(send(inner, body, permit)),
            // Called without poll_ready (a contract breach): take a permit on the way.
            None => Box::pin(async move {
                let permit = Arc::clone(&inner.permits)
                    .acquire_owned()
                    .await
                    .map_err(|_| Error::PoolClosed)?;
                send(inner, body, permit).await
            }),
        }
    }
}
