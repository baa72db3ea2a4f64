//! The soak's load: library clients, each with a long-lived session and a churn of short ones,
//! and plain-UDP applications sending through the proxy; their running totals, and the check
//! that every session is with the server its race selected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use volley::{Client, ClientConfig, OfferFate, PublicKey, Session};

use super::SoakArgs;
use crate::harness::echo::exchange;

/// The deadline of one request (its echo), resends included.
pub(super) const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// The deadline of one connect.
pub(super) const CONNECT_DEADLINE: Duration = Duration::from_secs(5);

/// The clients' running totals.
#[derive(Debug, Default)]
pub(super) struct Totals {
    pub(super) connects: AtomicU64,
    pub(super) connect_failures: AtomicU64,
    /// Sessions (at connect or after a failover) with a server outside the pool, or other than
    /// the one their race selected.
    pub(super) misrouted: AtomicU64,
    pub(super) requests: AtomicU64,
    pub(super) request_failures: AtomicU64,
    pub(super) failovers: AtomicU64,
    /// Long sessions that ended (failovers exhausted or closed) and were connected anew.
    pub(super) sessions_lost: AtomicU64,
    pub(super) proxy_requests: AtomicU64,
    pub(super) proxy_failures: AtomicU64,
}

impl Totals {
    pub(super) fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Starts every client task: per library client a long session and a churn (each client with
/// both static keys pinned, failing over without limit), and the proxy's applications.
pub(super) fn start(
    args: &SoakArgs,
    publics: &[PublicKey],
    pool: &[SocketAddr],
    proxy: SocketAddr,
    totals: &Arc<Totals>,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for number in 0..args.clients {
        let mut config = ClientConfig::new(publics.to_vec());
        config.max_failovers = u32::MAX;
        let client = Client::new(config);
        let task = |name| ClientTask {
            name,
            client: client.clone(),
            number,
            sent: 0,
            pool: pool.to_vec(),
            totals: Arc::clone(totals),
            stop: Arc::clone(stop),
        };
        tasks.push(tokio::spawn(long_session(task("long"))));
        tasks.push(tokio::spawn(churn(task("churn"))));
    }
    for f in 0..args.proxy_flows {
        tasks.push(tokio::spawn(proxy_app(
            proxy,
            f,
            Arc::clone(totals),
            Arc::clone(stop),
        )));
    }
    tasks
}

/// Whether `session` is with a server of `pool` that its latest race selected.
fn routed_right(session: &Session, pool: &[SocketAddr]) -> bool {
    let remote = session.remote();
    if !pool.contains(&remote) {
        return false;
    }
    match session.report() {
        Some(r) => {
            r.server.is_none_or(|s| s == remote)
                && r.offers
                    .iter()
                    .filter(|o| o.fate == OfferFate::Selected)
                    .all(|o| o.server == remote)
        }
        None => true,
    }
}

async fn connect(client: &Client, pool: &[SocketAddr], totals: &Totals) -> Option<Session> {
    Totals::add(&totals.connects, 1);
    match tokio::time::timeout(CONNECT_DEADLINE, client.connect(pool)).await {
        Ok(Ok(s)) => {
            if !routed_right(&s, pool) {
                Totals::add(&totals.misrouted, 1);
                tracing::warn!(remote = %s.remote(), report = ?s.report(), "session not with the selected server");
            }
            Some(s)
        }
        other => {
            Totals::add(&totals.connect_failures, 1);
            tracing::info!(outcome = ?other.map(|r| r.map(|_| ())), "connect failed");
            tokio::time::sleep(Duration::from_millis(200)).await;
            None
        }
    }
}

/// One request: a datagram echoed back within [`REQUEST_DEADLINE`].
async fn request(session: &mut Session, text: &[u8], totals: &Totals) -> bool {
    Totals::add(&totals.requests, 1);
    let ok = exchange(session, text, Instant::now() + REQUEST_DEADLINE).await;
    if !ok {
        Totals::add(&totals.request_failures, 1);
    }
    ok
}

/// Counts the failovers `session` made since it last had `seen`, and, when it has just been
/// answered (`answered`) on a new server, checks that server against its race.
fn count_failovers(
    session: &Session,
    seen: &mut u64,
    answered: bool,
    pool: &[SocketAddr],
    totals: &Totals,
) {
    let now = session.report().map_or(0, |r| r.failovers);
    if now > *seen {
        Totals::add(&totals.failovers, now - *seen);
        *seen = now;
        if answered && !routed_right(session, pool) {
            Totals::add(&totals.misrouted, 1);
            tracing::warn!(remote = %session.remote(), "failed over to a server not selected");
        }
    }
}

/// One task of a library client: its client, the pool it races, and its own numbered requests.
struct ClientTask {
    /// What the task is ("long", "churn"): the first word of each request.
    name: &'static str,
    client: Client,
    /// The client's number: the second word.
    number: usize,
    /// Requests sent so far: the third.
    sent: u64,
    pool: Vec<SocketAddr>,
    totals: Arc<Totals>,
    stop: Arc<AtomicBool>,
}

impl ClientTask {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }

    /// A new session, tried until one connects; `None` once the run stops.
    async fn session(&self) -> Option<Session> {
        while self.running() {
            if let Some(s) = connect(&self.client, &self.pool, &self.totals).await {
                return Some(s);
            }
        }
        None
    }

    /// The next request on `session`, then a count of the failovers it made; whether its echo
    /// came.
    async fn request(&mut self, session: &mut Session, failovers: &mut u64) -> bool {
        self.sent += 1;
        let text = format!("{} {} {}", self.name, self.number, self.sent);
        let ok = request(session, text.as_bytes(), &self.totals).await;
        count_failovers(session, failovers, ok, &self.pool, &self.totals);
        ok
    }
}

/// A long-lived session sending a request every 100 ms, failing over as servers go.
async fn long_session(mut task: ClientTask) {
    while let Some(mut session) = task.session().await {
        let mut failovers = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while task.running() {
            tick.tick().await;
            task.request(&mut session, &mut failovers).await;
            if session.close_reason().is_some() {
                Totals::add(&task.totals.sessions_lost, 1);
                tracing::info!(reason = ?session.close_reason(), "long session ended");
                break;
            }
        }
        session.close();
    }
}

/// Short sessions, one after another: connect, 20 requests 25 ms apart, close.
async fn churn(mut task: ClientTask) {
    while let Some(mut session) = task.session().await {
        let mut failovers = 0;
        for _ in 0..20 {
            let ok = task.request(&mut session, &mut failovers).await;
            if !ok || !task.running() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        session.close();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain-UDP application behind the proxy: flows of 100 requests 50 ms apart, each from a
/// fresh socket; a request is resent every 250 ms and failed after 5 s.
async fn proxy_app(proxy: SocketAddr, f: usize, totals: Arc<Totals>, stop: Arc<AtomicBool>) {
    let mut n = 0u64;
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok(socket) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        for _ in 0..100 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            n += 1;
            let text = format!("proxy {f} {n}");
            Totals::add(&totals.proxy_requests, 1);
            let deadline = Instant::now() + REQUEST_DEADLINE;
            let mut ok = false;
            'tries: while Instant::now() < deadline {
                if socket.send_to(text.as_bytes(), proxy).await.is_err() {
                    break;
                }
                let until = (Instant::now() + Duration::from_millis(250)).min(deadline);
                loop {
                    match tokio::time::timeout_at(until.into(), socket.recv_from(&mut buf)).await {
                        Ok(Ok((len, _))) if &buf[..len] == text.as_bytes() => {
                            ok = true;
                            break 'tries;
                        }
                        Ok(Ok(_)) => continue,
                        Ok(Err(_)) | Err(_) => break,
                    }
                }
            }
            if !ok {
                Totals::add(&totals.proxy_failures, 1);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
