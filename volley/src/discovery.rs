//! Discovery: a pool from addresses and DNS names, kept current. An entry is an address
//! (`IP:PORT`), a name (`HOST:PORT`: every A and AAAA record of it), or an SRV name
//! (`srv:_service._udp.example.com`: each target's addresses at the record's port). Names are
//! resolved with `hickory-resolver` when the pool is made, then again as each answer's TTL runs
//! out (at least 1 s, at most 5 min apart; a failed lookup keeps the last answer and retries in
//! 5 s). [`Pool::current`] is what the next race uses: changes apply to races that start after
//! them, never to a race or session under way.
//!
//! An entry may carry a **zone** label (`ZONE=ENTRY`, e.g. `eu-west-1a=srv:_echo._udp.example.com`):
//! every address it resolves to belongs to that zone ([`Pool::zones`]). A client told its own
//! zone ([`volley_proto::ClientConfig::zone`]) and the pool's labels
//! ([`crate::Client::set_server_zones`]) asks its own zone's servers in every race from its first
//! one on; without labels it learns which servers are near from their answer times.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), volley::Error> {
//! use volley::discovery::{Pool, PoolEntry, Resolver};
//!
//! // Entries as a user types them; a fixed address resolves without asking DNS.
//! let entries: Vec<PoolEntry> = ["127.0.0.1:7001", "127.0.0.1:7002"]
//!     .iter()
//!     .map(|e| e.parse().unwrap())
//!     .collect();
//! let resolver = Resolver::with_server("127.0.0.1:53".parse().unwrap())?; // or ::system()
//! let pool = Pool::resolve(entries, resolver).await?;
//! assert_eq!(pool.current().len(), 2);
//! // `Client::connect(&pool.current())` races the pool as it is now.
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::error::Error;

/// The shortest and longest wait between two lookups of one name.
const MIN_REFRESH: Duration = Duration::from_secs(1);
const MAX_REFRESH: Duration = Duration::from_secs(300);
/// The wait after a failed lookup.
const RETRY: Duration = Duration::from_secs(5);

/// One entry of a pool, as [`Pool::resolve`] takes it; parsed from `IP:PORT`, `HOST:PORT` or
/// `srv:NAME`.
///
/// ```
/// use volley::discovery::PoolEntry;
///
/// assert_eq!("127.0.0.1:7001".parse(), Ok(PoolEntry::Addr("127.0.0.1:7001".parse().unwrap())));
/// assert_eq!(
///     "pool.example.com:7001".parse(),
///     Ok(PoolEntry::Host { name: "pool.example.com".into(), port: 7001 })
/// );
/// assert_eq!("srv:_echo._udp.example.com".parse(), Ok(PoolEntry::Srv("_echo._udp.example.com".into())));
/// assert!("pool.example.com".parse::<PoolEntry>().is_err()); // no port
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolEntry {
    /// A fixed address.
    Addr(SocketAddr),
    /// Every address of a name (A and AAAA), at `port`.
    Host {
        /// The name.
        name: String,
        /// The port.
        port: u16,
    },
    /// The targets of an SRV name, at their records' ports.
    Srv(String),
}

impl FromStr for PoolEntry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(name) = s.strip_prefix("srv:") {
            if name.is_empty() {
                return Err("srv: needs a name, e.g. srv:_echo._udp.example.com".into());
            }
            return Ok(Self::Srv(name.to_string()));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self::Addr(addr));
        }
        let (name, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` is not IP:PORT, HOST:PORT or srv:NAME"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("`{s}`: the port is not a number up to 65535"))?;
        if name.is_empty() {
            return Err(format!("`{s}` has no host"));
        }
        Ok(Self::Host {
            name: name.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for PoolEntry {
    /// As a user types it: `IP:PORT`, `HOST:PORT` or `srv:NAME`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Addr(a) => write!(f, "{a}"),
            Self::Host { name, port } => write!(f, "{name}:{port}"),
            Self::Srv(name) => write!(f, "srv:{name}"),
        }
    }
}

/// A pool entry with an optional zone label, parsed from `ENTRY` or `ZONE=ENTRY`.
///
/// ```
/// use volley::discovery::{PoolEntry, ZonedEntry};
///
/// let e: ZonedEntry = "eu-1=127.0.0.1:7001".parse().unwrap();
/// assert_eq!(e.zone.as_deref(), Some("eu-1"));
/// assert_eq!(e.entry, PoolEntry::Addr("127.0.0.1:7001".parse().unwrap()));
/// let plain: ZonedEntry = "srv:_echo._udp.example.com".parse().unwrap();
/// assert_eq!(plain.zone, None);
/// assert!("=127.0.0.1:7001".parse::<ZonedEntry>().is_err()); // an empty zone
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZonedEntry {
    /// The zone every address of the entry is in, if labelled.
    pub zone: Option<String>,
    /// The entry.
    pub entry: PoolEntry,
}

impl FromStr for ZonedEntry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((zone, entry)) => {
                if zone.is_empty() {
                    return Err(format!("`{s}`: the zone before `=` is empty"));
                }
                Ok(Self {
                    zone: Some(zone.to_string()),
                    entry: entry.parse()?,
                })
            }
            None => Ok(Self {
                zone: None,
                entry: s.parse()?,
            }),
        }
    }
}

impl From<PoolEntry> for ZonedEntry {
    fn from(entry: PoolEntry) -> Self {
        Self { zone: None, entry }
    }
}

/// The DNS resolver a pool uses: the system's, or one name server of your choosing.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), volley::Error> {
/// use volley::discovery::{Pool, Resolver};
///
/// // A cluster's DNS server; `Resolver::system()` reads /etc/resolv.conf instead.
/// let cluster = Resolver::with_server("127.0.0.1:53".parse().unwrap())?;
/// let pool = Pool::resolve(vec!["127.0.0.1:7001".parse().unwrap()], cluster).await?;
/// assert_eq!(pool.current().len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Resolver(Arc<TokioResolver>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl Resolver {
    /// The system's resolver configuration (`/etc/resolv.conf`).
    pub fn system() -> Result<Self, Error> {
        let resolver = TokioResolver::builder_tokio()
            .map_err(|e| Error::Discovery(e.to_string()))?
            .build()
            .map_err(|e| Error::Discovery(e.to_string()))?;
        Ok(Self(Arc::new(resolver)))
    }

    /// One name server (UDP, then TCP), e.g. a cluster's DNS or a test's.
    pub fn with_server(server: SocketAddr) -> Result<Self, Error> {
        let mut udp = ConnectionConfig::udp();
        udp.port = server.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = server.port();
        let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            TokioRuntimeProvider::default(),
        );
        // Answers are re-read when their TTL runs out: the resolver's cache must not hold them
        // longer.
        builder.options_mut().positive_max_ttl = Some(MAX_REFRESH);
        let resolver = builder
            .build()
            .map_err(|e| Error::Discovery(e.to_string()))?;
        Ok(Self(Arc::new(resolver)))
    }

    /// The addresses `entry` names now, and until when the answer is good.
    async fn lookup(&self, entry: &PoolEntry) -> Result<(Vec<SocketAddr>, Instant), String> {
        let now = Instant::now();
        match entry {
            PoolEntry::Addr(a) => Ok((vec![*a], now + Duration::from_secs(86_400 * 365))),
            PoolEntry::Host { name, port } => {
                let found = self
                    .0
                    .lookup_ip(name.as_str())
                    .await
                    .map_err(|e| in_words(&e))?;
                let until = Instant::from_std(found.valid_until());
                let addrs = found.iter().map(|ip| SocketAddr::new(ip, *port)).collect();
                Ok((addrs, until))
            }
            PoolEntry::Srv(name) => {
                let found = self
                    .0
                    .srv_lookup(name.as_str())
                    .await
                    .map_err(|e| in_words(&e))?;
                let mut until = Instant::from_std(found.valid_until());
                let mut addrs = Vec::new();
                for record in found.answers() {
                    let RData::SRV(srv) = &record.data else {
                        continue;
                    };
                    let target = srv.target.to_string();
                    let ips = self
                        .0
                        .lookup_ip(target.as_str())
                        .await
                        .map_err(|e| format!("SRV target {target}: {}", in_words(&e)))?;
                    until = until.min(Instant::from_std(ips.valid_until()));
                    addrs.extend(ips.iter().map(|ip: IpAddr| SocketAddr::new(ip, srv.port)));
                }
                Ok((addrs, until))
            }
        }
    }
}

/// A pool kept current from its entries; cheap to clone (clones share the resolution task).
/// A `Vec<SocketAddr>` converts into a fixed pool, so the proxies take either.
///
/// A pool of names needs a DNS server to resolve them, which this example cannot count on;
/// it resolves addresses, which need none (the crate's tests run a DNS server for names).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), volley::Error> {
/// use volley::discovery::{Pool, PoolEntry, Resolver};
///
/// let fixed = Pool::fixed(vec!["127.0.0.1:7001".parse().unwrap()]);
/// assert_eq!(fixed.current(), vec!["127.0.0.1:7001".parse().unwrap()]);
///
/// let entries = vec![PoolEntry::Addr("127.0.0.1:7002".parse().unwrap())];
/// let resolver = Resolver::with_server("127.0.0.1:53".parse().unwrap())?;
/// let resolved = Pool::resolve(entries, resolver).await?;
/// assert_eq!(resolved.current(), vec!["127.0.0.1:7002".parse().unwrap()]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Pool {
    current: watch::Receiver<Vec<SocketAddr>>,
    zones: watch::Receiver<HashMap<SocketAddr, String>>,
    _task: Arc<Task>,
}

#[derive(Debug)]
struct Task(Option<tokio::task::JoinHandle<()>>);

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

impl Pool {
    /// A pool of fixed addresses (nothing to resolve).
    pub fn fixed(addrs: Vec<SocketAddr>) -> Self {
        Self::fixed_zoned(addrs.into_iter().map(|a| (a, None)).collect())
    }

    /// A pool of fixed addresses, each with its zone label if it has one.
    pub fn fixed_zoned(addrs: Vec<(SocketAddr, Option<String>)>) -> Self {
        let zones = addrs
            .iter()
            .filter_map(|(a, z)| z.clone().map(|z| (*a, z)))
            .collect();
        let addrs = addrs.into_iter().map(|(a, _)| a).collect();
        let (_tx, current) = watch::channel(addrs);
        let (_ztx, zones) = watch::channel(zones);
        Self {
            current,
            zones,
            _task: Arc::new(Task(None)),
        }
    }

    /// Resolves every entry once (an error if nothing resolves to any address), then keeps the
    /// pool current in a background task for as long as a clone of it lives.
    pub async fn resolve(entries: Vec<PoolEntry>, resolver: Resolver) -> Result<Self, Error> {
        Self::resolve_zoned(
            entries.into_iter().map(ZonedEntry::from).collect(),
            resolver,
        )
        .await
    }

    /// [`Pool::resolve`] for entries with zone labels: every address an entry resolves to is in
    /// the entry's zone ([`Pool::zones`]).
    pub async fn resolve_zoned(
        entries: Vec<ZonedEntry>,
        resolver: Resolver,
    ) -> Result<Self, Error> {
        if entries.is_empty() {
            return Err(Error::InvalidArgument("the pool has no entries"));
        }
        let mut known: Vec<(Vec<SocketAddr>, Instant)> = Vec::with_capacity(entries.len());
        let mut failures = Vec::new();
        for e in &entries {
            match resolver.lookup(&e.entry).await {
                Ok((addrs, _)) if addrs.is_empty() => {
                    failures.push(format!("{}: no address", e.entry));
                    known.push((Vec::new(), Instant::now() + RETRY));
                }
                Ok((addrs, until)) => known.push((addrs, refresh_at(until))),
                Err(err) => {
                    failures.push(format!("{}: {err}", e.entry));
                    known.push((Vec::new(), Instant::now() + RETRY));
                }
            }
        }
        let addrs = union(&known);
        if !addrs.is_empty() {
            // The pool starts with the entries that resolved; one that did not is no server
            // until it does, which an operator must hear about (a typo reads as a dead server).
            for failure in &failures {
                warn!(
                    "pool entry not resolved ({failure}): left out of the pool until it resolves \
                     (looked up again every {} s)",
                    RETRY.as_secs()
                );
            }
        }
        if addrs.is_empty() {
            return Err(Error::Discovery(format!(
                "no pool entry resolved to an address ({})",
                failures.join("; ")
            )));
        }
        let (tx, current) = watch::channel(addrs);
        let (ztx, zones) = watch::channel(zone_map(&entries, &known));
        let task = tokio::spawn(keep_current(entries, known, resolver, tx, ztx));
        Ok(Self {
            current,
            zones,
            _task: Arc::new(Task(Some(task))),
        })
    }

    /// The pool now: what the next race should use.
    pub fn current(&self) -> Vec<SocketAddr> {
        self.current.borrow().clone()
    }

    /// The zone of every labelled address of the pool now (entries without a label add none).
    pub fn zones(&self) -> HashMap<SocketAddr, String> {
        self.zones.borrow().clone()
    }

    /// Waits until the pool changes; a fixed pool never does (this then never returns).
    pub async fn changed(&mut self) {
        if self.current.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Replaces what a pool made by [`Pool::switchable`] follows (a configuration reload's new
/// pool): races started after [`PoolSwitch::set`] use the new pool; a race under way keeps the
/// servers it began with.
#[derive(Debug, Clone)]
pub struct PoolSwitch(tokio::sync::mpsc::UnboundedSender<Pool>);

impl PoolSwitch {
    /// From now on the switchable pool follows `pool` (and its DNS refreshes, if it has any).
    /// False when every clone of the switchable pool is gone.
    pub fn set(&self, pool: Pool) -> bool {
        self.0.send(pool).is_ok()
    }
}

impl Pool {
    /// A pool that follows `initial` until [`PoolSwitch::set`] hands it another: what a
    /// process that reloads its configuration (SIGHUP) gives its proxy, so that a new server
    /// list or DNS name takes effect without a restart.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use volley::discovery::Pool;
    ///
    /// let a = "127.0.0.1:7001".parse().unwrap();
    /// let b = "127.0.0.1:7002".parse().unwrap();
    /// let (mut pool, switch) = Pool::switchable(Pool::fixed(vec![a]));
    /// assert_eq!(pool.current(), vec![a]);
    /// switch.set(Pool::fixed(vec![b]));
    /// pool.changed().await;
    /// assert_eq!(pool.current(), vec![b]);
    /// # }
    /// ```
    pub fn switchable(initial: Pool) -> (Pool, PoolSwitch) {
        let (tx, current) = watch::channel(initial.current());
        let (ztx, zones) = watch::channel(initial.zones());
        let (switch, mut switched) = tokio::sync::mpsc::unbounded_channel::<Pool>();
        let task = tokio::spawn(async move {
            let mut inner = initial;
            let mut switch_open = true;
            loop {
                tokio::select! {
                    () = inner.changed() => {}
                    next = switched.recv(), if switch_open => match next {
                        Some(next) => inner = next,
                        // No switch left: follow the pool in hand for good.
                        None => switch_open = false,
                    },
                    () = tx.closed() => return,
                }
                ztx.send_replace(inner.zones());
                tx.send_replace(inner.current());
            }
        });
        (
            Self {
                current,
                zones,
                _task: Arc::new(Task(Some(task))),
            },
            PoolSwitch(switch),
        )
    }
}

impl From<Vec<SocketAddr>> for Pool {
    fn from(addrs: Vec<SocketAddr>) -> Self {
        Self::fixed(addrs)
    }
}

/// The addresses of one family, for one race (a race runs on one socket): the IPv4 ones when
/// there are any — names like `localhost` resolve to both, and servers listen on IPv4 more often
/// than not — else the IPv6 ones.
///
/// ```
/// use volley::discovery::one_family;
///
/// let v4 = "127.0.0.1:7001".parse().unwrap();
/// let v6 = "[::1]:7001".parse().unwrap();
/// assert_eq!(one_family(vec![v6, v4]), vec![v4]);
/// assert_eq!(one_family(vec![v6]), vec![v6]);
/// ```
pub fn one_family(mut addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    if addrs.iter().any(SocketAddr::is_ipv4) {
        addrs.retain(SocketAddr::is_ipv4);
    }
    addrs
}

fn refresh_at(valid_until: Instant) -> Instant {
    let now = Instant::now();
    valid_until.clamp(now + MIN_REFRESH, now + MAX_REFRESH)
}

/// Every address once, in entry order.
fn union(known: &[(Vec<SocketAddr>, Instant)]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for (addrs, _) in known {
        for a in addrs {
            if !out.contains(a) {
                out.push(*a);
            }
        }
    }
    out
}

/// Each labelled entry's addresses with its zone (the first label wins for an address two
/// entries name).
fn zone_map(
    entries: &[ZonedEntry],
    known: &[(Vec<SocketAddr>, Instant)],
) -> HashMap<SocketAddr, String> {
    let mut out = HashMap::new();
    for (e, (addrs, _)) in entries.iter().zip(known) {
        if let Some(zone) = &e.zone {
            for a in addrs {
                out.entry(*a).or_insert_with(|| zone.clone());
            }
        }
    }
    out
}

/// A failed lookup in words (hickory's own messages print the query as a Rust structure).
fn in_words(e: &NetError) -> String {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(none)) => {
            let name = none.query.name();
            if none.response_code == ResponseCode::NXDomain {
                format!("{name} does not exist (NXDOMAIN)")
            } else {
                format!("{name} has no {} record", none.query.query_type())
            }
        }
        NetError::Dns(DnsError::ResponseCode(code)) => {
            format!("the DNS server answered with an error: {code}")
        }
        NetError::Timeout => "the DNS server did not answer in time".to_string(),
        NetError::NoConnections => {
            "no DNS server could be reached (none configured, or none answers)".to_string()
        }
        NetError::Io(io) => format!("cannot reach the DNS server: {io}"),
        other => format!("DNS lookup failed: {other}"),
    }
}

async fn keep_current(
    entries: Vec<ZonedEntry>,
    mut known: Vec<(Vec<SocketAddr>, Instant)>,
    resolver: Resolver,
    tx: watch::Sender<Vec<SocketAddr>>,
    zones: watch::Sender<HashMap<SocketAddr, String>>,
) {
    loop {
        let Some(next) = known.iter().map(|(_, t)| *t).min() else {
            return;
        };
        tokio::time::sleep_until(next).await;
        let now = Instant::now();
        for (entry, slot) in entries.iter().zip(known.iter_mut()) {
            if slot.1 > now {
                continue;
            }
            match resolver.lookup(&entry.entry).await {
                Ok((addrs, until)) => *slot = (addrs, refresh_at(until)),
                Err(e) => {
                    debug!(entry = %entry.entry, error = %e, "lookup failed: keeping the last answer");
                    slot.1 = now + RETRY;
                }
            }
        }
        let addrs = union(&known);
        if addrs.is_empty() {
            // Every name failed or went empty: keep racing the last servers known.
            continue;
        }
        let labels = zone_map(&entries, &known);
        zones.send_if_modified(|current| {
            let changed = *current != labels;
            *current = labels;
            changed
        });
        tx.send_if_modified(|current| {
            if *current == addrs {
                return false;
            }
            info!(from = ?current, to = ?addrs, "pool changed");
            *current = addrs;
            true
        });
        if tx.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn d3_pool_entries_parse_addresses_names_and_srv() {
        assert_eq!(
            "127.0.0.1:7001".parse(),
            Ok(PoolEntry::Addr("127.0.0.1:7001".parse().unwrap()))
        );
        assert_eq!(
            "[::1]:7001".parse(),
            Ok(PoolEntry::Addr("[::1]:7001".parse().unwrap()))
        );
        assert_eq!(
            "pool.example.com:7001".parse(),
            Ok(PoolEntry::Host {
                name: "pool.example.com".into(),
                port: 7001
            })
        );
        assert_eq!(
            "srv:_echo._udp.example.com".parse(),
            Ok(PoolEntry::Srv("_echo._udp.example.com".into()))
        );
        assert!("pool.example.com".parse::<PoolEntry>().is_err());
        assert!("pool.example.com:99999".parse::<PoolEntry>().is_err());
        assert!("srv:".parse::<PoolEntry>().is_err());
    }

    #[test]
    fn d3_a_race_takes_one_family_ipv4_first() {
        let v4: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        assert_eq!(one_family(vec![v6, v4]), vec![v4]);
        assert_eq!(one_family(vec![v6]), vec![v6]);
    }
}
