//! Backend health for the forwarders: [`BackendHealth`] checks a backend as a [`HealthCheck`]
//! says and makes its server unavailable while the backend is down.
//!
//! A server whose backend is down behaves on the wire as a draining one (PROTOCOL.md §7.9): it
//! sends no OFFER and answers a new INIT with a REDIRECT, so every new session goes to another
//! server, while its open sessions go on (the backend may come back before they notice). Each
//! change is logged once and counted; [`crate::metrics::Metrics::health`] serves the state and
//! [`crate::metrics::Metrics::readiness`] a `/readyz` that follows it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::server::ServerHandle;

/// How a backend is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    /// A TCP connection is opened and closed.
    Tcp,
    /// A datagram is sent from a fresh socket; a reply (starting with `expect`, when given)
    /// within the timeout passes.
    Udp { send: Bytes, expect: Option<Bytes> },
    /// No active check: a refusal seen by the forwarder (ICMP port unreachable, a refused
    /// connection) takes the backend down for the ejection time.
    Passive,
}

/// How [`BackendHealth`] checks a backend: what it sends, how often, and how many results in a
/// row change its state.
///
/// ```
/// use std::time::Duration;
/// use volley::proxy::HealthCheck;
///
/// // A DNS server: any answer to a query for the root's NS passes.
/// let query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x01".to_vec();
/// let check = HealthCheck::udp(query, None).interval(Duration::from_secs(5));
/// assert_eq!(check.interval_of(), Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    probe: Probe,
    interval: Duration,
    timeout: Duration,
    fall: u32,
    rise: u32,
    eject: Duration,
}

impl HealthCheck {
    fn with(probe: Probe) -> Self {
        Self {
            probe,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            fall: 2,
            rise: 2,
            eject: Duration::from_secs(10),
        }
    }

    /// A TCP backend: a connection opened (and closed at once) within the timeout passes.
    pub fn tcp() -> Self {
        Self::with(Probe::Tcp)
    }

    /// A UDP backend: `send` goes out from a fresh socket each check; a reply within the
    /// timeout passes when it starts with `expect` (any reply when `None`). A refusal (ICMP
    /// port unreachable) fails at once.
    pub fn udp(send: impl Into<Bytes>, expect: Option<Bytes>) -> Self {
        Self::with(Probe::Udp {
            send: send.into(),
            expect,
        })
    }

    /// No active check (a UDP backend whose protocol has no harmless request): each refusal
    /// the forwarder sees (ICMP port unreachable) takes the backend down for the ejection time
    /// ([`HealthCheck::eject`], 10 s), then it is up again until the next refusal.
    pub fn passive() -> Self {
        Self::with(Probe::Passive)
    }

    /// Time between checks (default 2 s; at least 10 ms).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }

    /// The time between checks.
    pub fn interval_of(&self) -> Duration {
        self.interval
    }

    /// How long one check waits (default 1 s; at most the interval).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Failed checks in a row that take an up backend down (default 2, at least 1). A
    /// refusal the forwarder sees counts as a failed check.
    pub fn fall(mut self, fall: u32) -> Self {
        self.fall = fall.max(1);
        self
    }

    /// Passed checks in a row that bring a down backend up (default 2, at least 1). At the
    /// start one passed check is enough.
    pub fn rise(mut self, rise: u32) -> Self {
        self.rise = rise.max(1);
        self
    }

    /// For [`HealthCheck::passive`]: how long a refusal keeps the backend down (default 10 s).
    pub fn eject(mut self, eject: Duration) -> Self {
        self.eject = eject;
        self
    }

    /// Whether this check sends anything (false for [`HealthCheck::passive`]).
    pub fn is_active(&self) -> bool {
        self.probe != Probe::Passive
    }

    /// Whether this check sends a UDP datagram ([`HealthCheck::udp`]): it checks a UDP backend.
    pub fn is_udp(&self) -> bool {
        matches!(self.probe, Probe::Udp { .. })
    }
}

/// What a [`BackendHealth`] counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthStats {
    /// Whether the backend is up now.
    pub up: bool,
    /// Active checks made.
    pub checks: u64,
    /// Active checks that failed.
    pub checks_failed: u64,
    /// Refusals the forwarder saw (ICMP port unreachable, a refused connection).
    pub refusals: u64,
    /// Times the state was set: by the first active check's result (up or down: before it the
    /// server offers nothing), then by each change between up and down.
    pub changes: u64,
}

#[derive(Debug)]
struct Inner {
    backend: SocketAddr,
    check: HealthCheck,
    server: ServerHandle,
    up: AtomicBool,
    checks: AtomicU64,
    checks_failed: AtomicU64,
    refusals: AtomicU64,
    changes: AtomicU64,
    /// Results in a row and whether a first result came: (passed, failed, known).
    run: Mutex<(u32, u32, bool)>,
    /// Why the backend is down (the last failure), for logs and `/readyz`.
    reason: Mutex<String>,
    /// Woken on a passive refusal.
    refused: Notify,
}

/// The health of a forwarder's backend: checked in the background as its [`HealthCheck`] says,
/// and told of refusals by the forwarder ([`crate::proxy::UdpForward::health`],
/// [`crate::proxy::TcpForward::health`]). While the backend is down the server is unavailable
/// ([`crate::Server::set_available`]): it wins no race, and its open sessions go on. Clones
/// share one state; the checks stop when the last clone is dropped.
///
/// With an active check, the server starts unavailable and becomes available with the first
/// passed check (a backend that is down at the start never gets a session); with a passive one
/// it starts available.
#[derive(Debug, Clone)]
pub struct BackendHealth {
    inner: Arc<Inner>,
}

impl BackendHealth {
    /// Starts checking `backend` for the server behind `server` (on the current tokio runtime).
    pub fn start(server: ServerHandle, backend: SocketAddr, check: HealthCheck) -> Self {
        let active = check.is_active();
        server.set_available(!active);
        let inner = Arc::new(Inner {
            backend,
            check,
            server,
            up: AtomicBool::new(!active),
            checks: AtomicU64::new(0),
            checks_failed: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            run: Mutex::new((0, 0, !active)),
            reason: Mutex::new(if active {
                "not checked yet".to_string()
            } else {
                String::new()
            }),
            refused: Notify::new(),
        });
        tokio::spawn(checks(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// Whether the backend is up.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// Why the backend is down (`None` while it is up).
    pub fn reason(&self) -> Option<String> {
        if self.is_up() {
            return None;
        }
        Some(lock(&self.inner.reason).clone())
    }

    /// The backend's address.
    pub fn backend(&self) -> SocketAddr {
        self.inner.backend
    }

    /// What it counted so far.
    pub fn stats(&self) -> HealthStats {
        let i = &self.inner;
        HealthStats {
            up: self.is_up(),
            checks: i.checks.load(Ordering::Relaxed),
            checks_failed: i.checks_failed.load(Ordering::Relaxed),
            refusals: i.refusals.load(Ordering::Relaxed),
            changes: i.changes.load(Ordering::Relaxed),
        }
    }

    /// The forwarder saw the backend refuse (ICMP port unreachable, a refused or failed
    /// connection): one failed result (with a passive check, down for the ejection time).
    pub(crate) fn refused(&self, what: &str) {
        self.inner.refusals.fetch_add(1, Ordering::Relaxed);
        record(&self.inner, Err(format!("refused a forwarded {what}")));
        if !self.inner.check.is_active() {
            self.inner.refused.notify_one();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Takes one result into account: the state changes after `fall` failures or `rise` passes in
/// a row (the first result decides at once).
fn record(inner: &Inner, result: Result<(), String>) {
    let change = {
        let mut run = lock(&inner.run);
        let (passed, failed, known) = &mut *run;
        let up = inner.up.load(Ordering::Relaxed);
        match &result {
            Ok(()) => {
                *passed = passed.saturating_add(1);
                *failed = 0;
            }
            Err(why) => {
                *failed = failed.saturating_add(1);
                *passed = 0;
                *lock(&inner.reason) = why.clone();
            }
        }
        let first = !*known;
        *known = true;
        let check = &inner.check;
        let passive = !check.is_active();
        match (up, &result) {
            (false, Ok(())) if first || *passed >= check.rise => Some(true),
            (true, Err(_)) if passive || *failed >= check.fall => Some(false),
            (false, Err(_)) if first => Some(false),
            _ => None,
        }
    };
    let Some(now_up) = change else { return };
    let was_up = inner.up.swap(now_up, Ordering::Relaxed);
    inner.server.set_available(now_up);
    if was_up == now_up {
        // The first result, down: said once, counted as a change.
        inner.changes.fetch_add(1, Ordering::Relaxed);
        warn!(backend = %inner.backend, reason = %lock(&inner.reason), "backend down: this server offers no new session until it answers");
        return;
    }
    inner.changes.fetch_add(1, Ordering::Relaxed);
    if now_up {
        info!(backend = %inner.backend, "backend up: offering sessions");
    } else {
        warn!(backend = %inner.backend, reason = %lock(&inner.reason), "backend down: this server offers no new session until it answers");
    }
}

/// The background checks, until the last [`BackendHealth`] is dropped.
async fn checks(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let check = strong.check.clone();
        match &check.probe {
            Probe::Passive => {
                // Woken by a refusal: down for the ejection time, then up again. (Held for at
                // most a second at a time, so the task ends soon after the last handle.)
                let woken = tokio::select! {
                    () = strong.refused.notified() => true,
                    () = tokio::time::sleep(Duration::from_secs(1)) => false,
                };
                drop(strong);
                if !woken {
                    continue;
                }
                // A refusal during the last ejection left a permit behind: only a backend that
                // is down now is ejected.
                match inner.upgrade() {
                    Some(strong) if !strong.up.load(Ordering::Relaxed) => {}
                    Some(_) => continue,
                    None => return,
                }
                tokio::time::sleep(check.eject).await;
                let Some(strong) = inner.upgrade() else {
                    return;
                };
                // Back up until the next refusal.
                *lock(&strong.run) = (0, 0, true);
                if !strong.up.swap(true, Ordering::Relaxed) {
                    strong.server.set_available(true);
                    strong.changes.fetch_add(1, Ordering::Relaxed);
                    info!(backend = %strong.backend, "backend ejection over: offering sessions again");
                }
            }
            probe => {
                let result = tokio::time::timeout(
                    check.timeout.min(check.interval),
                    once(probe, strong.backend),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "no answer within {} ms",
                        check.timeout.min(check.interval).as_millis()
                    ))
                });
                strong.checks.fetch_add(1, Ordering::Relaxed);
                if let Err(why) = &result {
                    strong.checks_failed.fetch_add(1, Ordering::Relaxed);
                    debug!(backend = %strong.backend, reason = %why, "health check failed");
                }
                record(&strong, result);
                drop(strong);
                tokio::time::sleep(check.interval).await;
            }
        }
    }
}

/// One active check.
async fn once(probe: &Probe, backend: SocketAddr) -> Result<(), String> {
    match probe {
        Probe::Tcp => match TcpStream::connect(backend).await {
            Ok(_) => Ok(()),
            Err(e) => Err(connect_error(&e)),
        },
        Probe::Udp { send, expect } => {
            let any = match backend.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            };
            let socket = UdpSocket::bind(SocketAddr::new(any, 0))
                .await
                .map_err(|e| format!("no socket for the check: {e}"))?;
            socket
                .connect(backend)
                .await
                .map_err(|e| connect_error(&e))?;
            socket.send(send).await.map_err(|e| connect_error(&e))?;
            let mut buf = vec![0u8; 65_536];
            loop {
                let n = socket.recv(&mut buf).await.map_err(|e| connect_error(&e))?;
                match expect {
                    Some(expect) if !buf[..n].starts_with(expect) => {
                        // Not the answer (a late reply to an earlier check, say): keep waiting.
                        debug!(
                            len = n,
                            "health check: a reply that does not match, ignored"
                        );
                    }
                    _ => return Ok(()),
                }
            }
        }
        Probe::Passive => Ok(()),
    }
}

fn connect_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "refused (nothing listens there)".to_string(),
        _ => e.to_string(),
    }
}
