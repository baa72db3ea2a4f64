//! `volley proxy --listen udp://ADDR | tcp://ADDR --server-key PUB [--key FILE] [--service NAME]
//! POOL...`:
//! the client side of the UDP proxy (D1) and the TCP proxy (D2). Applications send to (or
//! connect to) ADDR as if it were the service; each UDP flow or TCP connection races the pool
//! and rides its own encrypted session (for TCP, a stream keyed from it) to the server-side
//! proxy (`volley serve --forward udp://BACKEND | tcp://BACKEND`).

use std::time::Duration;

use anyhow::{Context, ensure};
use tokio::net::{TcpListener, UdpSocket};
use volley::proxy::{TcpProxy, UdpProxy};
use volley::{Client, ClientConfig};

use crate::target::Target;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// A TOML file with any of these settings (names as the flags', with `_` for `-`;
    /// `server_keys` and `servers` as lists); flags given as well override it. See
    /// examples/proxy.toml.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Where applications send or connect: udp://HOST:PORT or tcp://HOST:PORT, HOST an IP or a
    /// name (udp://127.0.0.1:5300, tcp://localhost:8080). The scheme is required: it says which
    /// protocol to proxy (a bare HOST:PORT is refused with the two spellings to choose from).
    /// Repeat to listen on several addresses at once, UDP and TCP alike (one pool, one client
    /// key, one metrics endpoint).
    #[arg(long, value_name = "TARGET", required_unless_present = "config")]
    listen: Vec<Target>,
    /// A pinned server public key (hex, from `volley keygen` or `volley pubkey`). Repeat for
    /// fleets with several keys.
    #[arg(long = "server-key", required_unless_present = "config")]
    server_keys: Vec<String>,
    /// This client's secret key file (from `volley keygen`; mode 0600), which every session
    /// proves: servers with an allow-list serve only the keys they list (`volley pubkey FILE`
    /// prints the public key to list). In a config file: relative to the file. Default: a random
    /// key drawn at start, which no allow-list lists.
    #[arg(long, value_name = "FILE")]
    key: Option<std::path::PathBuf>,
    /// Service to ask for (as the servers' --service) [default: echo].
    #[arg(long)]
    service: Option<String>,
    /// End a flow (UDP) after this long without a byte either way, or reset a connection (TCP)
    /// after this long without progress either way (a slow reader taking bytes is progress);
    /// e.g. 60s, 5m, a bare number is seconds [default: 60s for UDP, 300s for TCP].
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::secs)]
    idle_timeout: Option<Duration>,
    /// UDP: send each new flow's first datagram in its session's handshake as early data, so
    /// its first answer comes one round trip sooner (PROTOCOL.md §4.8). Off by default: early
    /// data has no forward secrecy (a later theft of the server's private key reveals it), and
    /// may reach a second server if the first never answers the handshake.
    #[arg(long)]
    early_data: bool,
    /// The largest DATA packet this proxy sends, in UDP payload bytes: the path MTU it assumes
    /// (1232 to 1452; 1232 for paths down to IPv6's minimum MTU, tunnels, VPNs). A datagram
    /// larger than one packet goes in fragments (PROTOCOL.md §5.7) [default: 1452].
    #[arg(long, value_name = "BYTES")]
    max_packet: Option<usize>,
    /// On SIGTERM (or SIGINT), drain for up to this long (e.g. 30s; a bare number is seconds):
    /// accept no new connection (TCP) or flow (UDP: a datagram from a new address is dropped)
    /// and relay the open ones until they end; a second SIGTERM or SIGINT stops at once. 0: no
    /// drain [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::secs)]
    drain_timeout: Option<Duration>,
    /// Serve Prometheus metrics (flows, failures, drops, answer and handshake times) at
    /// http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Resolve pool names with this DNS server (IP:PORT) instead of the system's.
    #[arg(long, value_name = "ADDR")]
    dns_server: Option<std::net::SocketAddr>,
    /// How each flow's race chooses among offers [default: earliest]. `path` weighs the path
    /// each offer measured against the server's queue: use it when the pool spans zones.
    #[arg(long, value_enum)]
    policy: Option<crate::connect::Policy>,
    /// Probe this many servers per race instead of all of them (with --zone or once paths are
    /// measured, half of them from the nearest servers).
    #[arg(long, value_name = "D")]
    fanout: Option<usize>,
    /// This proxy's zone: pool entries labelled `ZONE=…` with it are asked first from the first
    /// race on (without labels, nearness is learned from answer times).
    #[arg(long, value_name = "NAME")]
    zone: Option<String>,
    /// The servers: IP:PORT, HOST:PORT (every A/AAAA address of the name) or srv:NAME (the SRV
    /// record's targets and ports), each optionally labelled with its zone as ZONE=ENTRY. Names
    /// are re-resolved as their TTLs run out; each new flow races the pool as it is then.
    #[arg(required_unless_present = "config", value_name = "POOL")]
    servers: Vec<String>,
    /// Once the listener and the metrics endpoint (with --metrics) are bound, write one JSON
    /// object to PATH (through PATH.tmp and a rename): {"command":"proxy","pid":N,
    /// "listen":"udp://IP:PORT" or "tcp://IP:PORT","metrics":"IP:PORT" or null}, with the real
    /// ports (port 0 resolved). A flag only, not a config file setting: it is a handshake with
    /// whatever started this process.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<std::path::PathBuf>,
    /// The config file's `log_level` (re-read on SIGHUP).
    #[arg(skip)]
    log_level: Option<String>,
}

/// The settings a `proxy` config file may hold: the flags' names, every one optional.
#[derive(serde::Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// `--log-format` (main reads it before logging starts).
    #[allow(dead_code)]
    log_format: Option<crate::LogFormat>,
    log_level: Option<String>,
    listen: Option<crate::config_file::OneOrMany>,
    server_keys: Option<Vec<String>>,
    key: Option<std::path::PathBuf>,
    service: Option<String>,
    #[serde(default, deserialize_with = "crate::duration::de_secs")]
    idle_timeout: Option<Duration>,
    early_data: Option<bool>,
    max_packet: Option<usize>,
    #[serde(default, deserialize_with = "crate::duration::de_secs")]
    drain_timeout: Option<Duration>,
    metrics: Option<std::net::SocketAddr>,
    dns_server: Option<std::net::SocketAddr>,
    policy: Option<crate::connect::Policy>,
    fanout: Option<usize>,
    zone: Option<String>,
    servers: Option<Vec<String>>,
}

impl Args {
    /// `--config`, before the file is merged: where `log_format` may be.
    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config.as_deref()
    }

    /// The file's settings under the flags': a flag given wins (lists: a flag list replaces
    /// the file's).
    pub fn merge(mut self) -> anyhow::Result<Self> {
        let Some(path) = self.config.take() else {
            return Ok(self);
        };
        let file: File = crate::config_file::read(&path)?;
        if self.listen.is_empty() {
            self.listen = crate::config_file::OneOrMany::list(file.listen)
                .iter()
                .map(|l| l.parse())
                .collect::<Result<_, String>>()
                .map_err(|e| anyhow::anyhow!("listen: {e}"))?;
        }
        self.log_level = file.log_level;
        if self.server_keys.is_empty() {
            self.server_keys = file.server_keys.unwrap_or_default();
        }
        if self.servers.is_empty() {
            self.servers = file.servers.unwrap_or_default();
        }
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        self.key = self.key.or_else(|| file.key.map(|k| dir.join(k)));
        self.service = self.service.or(file.service);
        self.idle_timeout = self.idle_timeout.or(file.idle_timeout);
        self.drain_timeout = self.drain_timeout.or(file.drain_timeout);
        self.early_data = self.early_data || file.early_data.unwrap_or(false);
        self.max_packet = self.max_packet.or(file.max_packet);
        self.metrics = self.metrics.or(file.metrics);
        self.dns_server = self.dns_server.or(file.dns_server);
        self.policy = self.policy.or(file.policy);
        self.fanout = self.fanout.or(file.fanout);
        self.zone = self.zone.or(file.zone);
        Ok(self)
    }
}

/// The merged settings checked: the client configuration, with the arguments.
pub fn settings(args: Args) -> anyhow::Result<(ClientConfig, Args)> {
    let args = args.merge()?;
    ensure!(
        !args.listen.is_empty(),
        "--listen (or `listen` in the config file) is required"
    );
    if let Some(level) = &args.log_level {
        tracing_subscriber::EnvFilter::try_new(level)
            .with_context(|| format!("log_level {level:?} is not a log filter"))?;
    }
    ensure!(
        !args.server_keys.is_empty(),
        "--server-key (or `server_keys` in the config file) is required"
    );
    ensure!(
        !args.early_data || args.listen.iter().any(|l| matches!(l, Target::Udp(_))),
        "--early-data is for a UDP proxy (--listen udp://…): a TCP stream opens only after its \
         session is up"
    );
    ensure!(
        !args.servers.is_empty(),
        "servers are required (arguments, or `servers` in the config file)"
    );
    let keys = crate::target::server_keys(&args.server_keys)?;
    ensure!(
        args.idle_timeout.is_none_or(|d| !d.is_zero()),
        "--idle-timeout must be above 0"
    );
    let mut config = ClientConfig::new(keys);
    config.key = args
        .key
        .as_deref()
        .map(crate::keygen::read_key)
        .transpose()?;
    config.service = args
        .service
        .clone()
        .unwrap_or_else(|| "echo".to_string())
        .into_bytes();
    config.policy = match args.policy.unwrap_or(crate::connect::Policy::Earliest) {
        crate::connect::Policy::Earliest => volley::SelectionPolicy::Earliest,
        crate::connect::Policy::Window => volley::SelectionPolicy::window(),
        crate::connect::Policy::Path => volley::SelectionPolicy::path(),
    };
    if let Some(d) = args.fanout {
        ensure!(d >= 1, "--fanout must be at least 1");
        config.fanout = Some(d);
    }
    config.zone = args.zone.clone();
    if let Some(bytes) = args.max_packet {
        config.session.max_packet = bytes;
    }
    config
        .validate()
        .context("the client's settings do not fit together")?;
    Ok((config, args))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // What a SIGHUP re-reads: the same flags over the config file as it is then.
    let again = args.clone();
    let (config, args) = settings(args)?;
    let (pool, switch) = volley::discovery::Pool::switchable(
        crate::target::pool(&args.servers, args.dns_server).await?,
    );
    let mut listens = Vec::new();
    for target in &args.listen {
        listens.push((
            target.clone(),
            crate::target::resolve_one(target.host_port()).await?,
        ));
    }
    let servers = pool
        .current()
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let service = String::from_utf8_lossy(&config.service).into_owned();
    let identity = match &config.key {
        Some(key) => format!("client key {}", key.public().to_hex()),
        None => "an anonymous client key (no --key: no allow-list lists it)".to_string(),
    };
    // Installed before anything is announced: from the ready file on, a SIGHUP reloads and
    // never ends the proxy (its default action).
    let mut hangups = crate::serve::Hangups::new()?;
    let reloads = std::sync::Arc::new(volley::metrics::Reloads::default());
    let metrics = std::sync::Arc::new(volley::proxy::ProxyMetrics::default());
    let endpoint = match args.metrics {
        Some(addr) => {
            let registry = volley::metrics::Metrics::new()
                .proxy(std::sync::Arc::clone(&metrics))
                .reloads(std::sync::Arc::clone(&reloads));
            Some(registry.serve(addr).await?)
        }
        None => None,
    };
    // Every listener is bound before anything is announced.
    let mut bound = Vec::new();
    let mut names = Vec::new();
    for (target, addr) in &listens {
        let (b, name) = match target {
            Target::Udp(_) => {
                let socket = UdpSocket::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind udp://{addr}"))?;
                let name = format!("udp://{}", socket.local_addr()?);
                (Bound::Udp(socket), name)
            }
            Target::Tcp(_) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind tcp://{addr}"))?;
                let name = format!("tcp://{}", listener.local_addr()?);
                (Bound::Tcp(listener), name)
            }
        };
        say!(
            "volley proxy: {name} → {} server(s) ({servers}), service {service}, {identity}",
            pool.current().len(),
        );
        bound.push(b);
        names.push(name);
    }
    say_metrics(&endpoint);
    announce(&args, &names, &endpoint)?;
    let drain = crate::serve::drain_timeout(args.drain_timeout);
    let stop = crate::serve::stop_watch("proxy", drain);
    let client = Client::new(config);
    crate::target::keep_zones(&client, &pool);
    let mut proxies = tokio::task::JoinSet::new();
    for b in bound {
        let (begin, drain) = (stop.at(1), volley::Drain::new(drain, stop.at(2)));
        let (client, pool) = (client.clone(), pool.clone());
        let metrics = std::sync::Arc::clone(&metrics);
        match b {
            Bound::Udp(socket) => {
                let proxy = UdpProxy::new(client, pool)
                    .drain(drain)
                    .idle_timeout(args.idle_timeout.unwrap_or(Duration::from_secs(60)))
                    .early_data(args.early_data)
                    .metrics(metrics);
                proxies.spawn(proxy.serve(socket, begin));
            }
            Bound::Tcp(listener) => {
                let proxy = TcpProxy::new(client, pool)
                    .drain(drain)
                    .idle_timeout(args.idle_timeout.unwrap_or(Duration::from_secs(300)))
                    .metrics(metrics);
                proxies.spawn(proxy.serve(listener, begin));
            }
        }
    }
    let mut running = Running::of(&args);
    let mut failed = None;
    loop {
        tokio::select! {
            done = proxies.join_next() => match done {
                None => break,
                Some(Ok(Ok(_))) => {}
                Some(Ok(Err(e))) => failed = Some(anyhow::Error::from(e)),
                Some(Err(e)) => failed = Some(anyhow::anyhow!("a proxy task failed: {e}")),
            },
            () = hangups.next() => reload(&again, &mut running, &switch, &reloads).await,
        }
    }
    let stats = metrics.stats();
    say!(
        "volley proxy: stopped. flows {} connect failures {} dropped {}",
        stats.flows,
        stats.connect_failures,
        stats.dropped
    );
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A listener bound, before its proxy starts.
enum Bound {
    Udp(UdpSocket),
    Tcp(TcpListener),
}

/// What a reload compares the file's new settings with.
struct Running {
    servers: Vec<String>,
    dns_server: Option<std::net::SocketAddr>,
    log_level: Option<String>,
    restart_only: Vec<(&'static str, String)>,
}

impl Running {
    fn of(args: &Args) -> Self {
        Self {
            servers: args.servers.clone(),
            dns_server: args.dns_server,
            log_level: args.log_level.clone(),
            restart_only: restart_only(args),
        }
    }
}

/// The settings a running proxy cannot change, by name.
fn restart_only(a: &Args) -> Vec<(&'static str, String)> {
    vec![
        ("listen", format!("{:?}", a.listen)),
        ("server_keys", format!("{:?}", a.server_keys)),
        ("key", format!("{:?}", a.key)),
        ("service", format!("{:?}", a.service)),
        ("idle_timeout", format!("{:?}", a.idle_timeout)),
        ("early_data", a.early_data.to_string()),
        ("max_packet", format!("{:?}", a.max_packet)),
        ("drain_timeout", format!("{:?}", a.drain_timeout)),
        ("metrics", format!("{:?}", a.metrics)),
        ("policy", format!("{:?}", a.policy)),
        ("fanout", format!("{:?}", a.fanout)),
        ("zone", format!("{:?}", a.zone)),
    ]
}

/// SIGHUP: re-reads the flags over the config file. The pool (servers, DNS names, the DNS
/// server) and the log level change at once — flows and connections open keep their servers,
/// new ones race the new pool; what takes a restart is said and kept; a file that does not parse
/// or does not fit, or a pool that does not resolve, changes nothing and is counted.
async fn reload(
    again: &Args,
    running: &mut Running,
    switch: &volley::discovery::PoolSwitch,
    reloads: &volley::metrics::Reloads,
) {
    let Some(from) = again.config.as_ref().map(|p| p.display().to_string()) else {
        tracing::warn!(
            "SIGHUP: nothing to reload (proxy runs from flags alone, without --config); ignored"
        );
        return;
    };
    let new = match settings(again.clone()) {
        Ok((_, new)) => new,
        Err(e) => {
            reloads.failed();
            tracing::warn!(
                "SIGHUP: configuration not reloaded from {from}; the running one stays: {}",
                crate::causes(&e)
            );
            return;
        }
    };
    let mut said = Vec::new();
    if new.servers != running.servers || new.dns_server != running.dns_server {
        let pool = match crate::target::pool(&new.servers, new.dns_server).await {
            Ok(pool) => pool,
            Err(e) => {
                reloads.failed();
                tracing::warn!(
                    "SIGHUP: configuration not reloaded from {from}: its pool does not resolve \
                     ({}); the running pool stays",
                    crate::causes(&e)
                );
                return;
            }
        };
        said.push(format!(
            "pool {} → {} ({} server(s))",
            running.servers.join(" "),
            new.servers.join(" "),
            pool.current().len()
        ));
        switch.set(pool);
        running.servers = new.servers.clone();
        running.dns_server = new.dns_server;
    }
    if new.log_level != running.log_level {
        match crate::reload_log_level(new.log_level.as_deref(), "info") {
            Ok(what) => said.push(what),
            Err(why) => tracing::warn!("SIGHUP: log_level not applied: {why}"),
        }
        running.log_level = new.log_level.clone();
    }
    crate::serve::reloaded(
        "proxy",
        &from,
        &said,
        &restart_only(&new),
        &running.restart_only,
    );
    reloads.done();
}

fn say_metrics(endpoint: &Option<volley::metrics::MetricsEndpoint>) {
    if let Some(endpoint) = endpoint {
        say!(
            "volley proxy: metrics at http://{}/metrics",
            endpoint.local_addr()
        );
    }
}

/// Writes `--ready-file`, when given: the proxy listens on `listen`, its metrics at `endpoint`.
fn announce(
    args: &Args,
    listens: &[String],
    endpoint: &Option<volley::metrics::MetricsEndpoint>,
) -> anyhow::Result<()> {
    match &args.ready_file {
        Some(path) => crate::ready::write(
            path,
            &crate::ready::Ready::Proxy {
                pid: std::process::id(),
                listen: listens.first().cloned().unwrap_or_default(),
                listens: listens.to_vec(),
                metrics: endpoint.as_ref().map(|e| e.local_addr()),
            },
        ),
        None => Ok(()),
    }
}
