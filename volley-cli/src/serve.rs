//! `volley serve --listen ADDR --key FILE [--allow FILE] [--service NAME] [--capacity N]
//! [--answer POLICY] [--max-sessions N] [--peer ADDR]...`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use volley::proxy::{ForwardLimits, Forwarding};
use volley::{AnswerPolicy, Server, ServerConfig, ServerHandle, ServerStats, ServiceModel};
use volley_proto::server::answer::{
    DEFAULT_GATE_MAX_HOLD, DEFAULT_PACE_DIVISOR, DEFAULT_PACE_MAX_DELAY,
};

/// How the server turns load into answer time (L1).
#[derive(clap::ValueEnum, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Answer {
    /// Answer every probe at once; the load shows only in the offer's hint.
    Immediate,
    /// Delay each offer by a share of the expected completion time of one more request (1/32 by
    /// default, up to --pace-max-ms).
    Paced,
    /// Answer at once while a slot is free; otherwise hold the probe until one frees (or, after
    /// --max-hold-ms, answer it anyway, busy).
    Gated,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// A TOML file with any of these settings (names as the flags', with `_` for `-`); flags
    /// given as well override it. See examples/serve.toml.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on: IP:PORT or HOST:PORT (a name is resolved at start and its first
    /// address taken), e.g. 127.0.0.1:7001, localhost:7020, [::]:7001.
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "config")]
    listen: Option<String>,
    /// Secret key file written by `volley keygen` (in a config file: relative to the file).
    #[arg(long, required_unless_present = "config")]
    key: Option<PathBuf>,
    /// Open sessions only for the client keys this file lists (one public key per line, from
    /// `volley keygen`/`volley pubkey`, optionally followed by a name; `#` starts a comment).
    /// Other clients get no session and never reach the service (they still get offers: probes
    /// are not authenticated). SIGHUP re-reads it: sessions of keys no longer listed end at once
    /// (revoked); a file that does not parse keeps the old list. In a config file: `allow =
    /// ["KEY name", …]` or `allow_file = "PATH"` (relative to the file). Default: any client.
    #[arg(long, value_name = "FILE")]
    allow: Option<PathBuf>,
    /// Service name to answer probes for [default: echo].
    #[arg(long)]
    service: Option<String>,
    /// Requests served at once (parallel slots); more wait their turn. The server estimates how
    /// long one more request would take from its requests in flight, these slots and the service
    /// time it measures, and answers probes later the longer that is. Each echoed datagram is one
    /// request.
    #[arg(long)]
    capacity: Option<u32>,
    /// How load turns into answer time [default: paced with --capacity; immediate without,
    /// since pacing and gating need the slots to estimate a queue].
    #[arg(long, value_enum)]
    answer: Option<Answer>,
    /// Most sessions open at once (a hard limit): at it, probes are not answered and new
    /// sessions are refused (except, with --capacity, those an offer just promised). Default:
    /// unbounded; with --forward, what the open-file limit holds (raised to its hard limit
    /// first): (limit − 64) sessions for udp://, (limit − 64 − pending) / 2 for tcp://, where
    /// pending = min(1024, (limit − 64) / 8) connections may wait for their HELLO.
    #[arg(long, value_name = "N")]
    max_sessions: Option<u32>,
    /// Count every open session as a request in flight (for services where a session is the
    /// unit of work); by default only requests count, so idle sessions fill nothing.
    #[arg(long)]
    count_sessions: bool,
    /// State the mean service time of one request (e.g. 20ms) instead of measuring it.
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::secs)]
    service_time: Option<Duration>,
    /// The old spelling of --service-time: a bare number is milliseconds.
    #[arg(long, hide = true, value_parser = crate::duration::millis, conflicts_with = "service_time")]
    service_ms: Option<Duration>,
    // Help texts built from the library's defaults, so they cannot drift.
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::secs, help = format!(
        "With --answer paced: the longest answer delay (e.g. 10ms) [default: {}]",
        crate::duration::show(DEFAULT_PACE_MAX_DELAY)
    ))]
    pace_max: Option<Duration>,
    /// The old spelling of --pace-max: a bare number is milliseconds.
    #[arg(long, hide = true, value_parser = crate::duration::millis, conflicts_with = "pace_max")]
    pace_max_ms: Option<Duration>,
    #[arg(long, value_name = "N", help = format!(
        "With --answer paced: the answer delay is the expected completion time divided by N \
         [default: {DEFAULT_PACE_DIVISOR}]"
    ))]
    pace_divisor: Option<u32>,
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::secs, help = format!(
        "With --answer gated: how long a probe may wait for a free slot (e.g. 200ms) \
         [default: {}]",
        crate::duration::show(DEFAULT_GATE_MAX_HOLD)
    ))]
    max_hold: Option<Duration>,
    /// The old spelling of --max-hold: a bare number is milliseconds.
    #[arg(long, hide = true, value_parser = crate::duration::millis, conflicts_with = "max_hold")]
    max_hold_ms: Option<Duration>,
    /// Another server of the pool, named in the REDIRECT that refuses a session when this one
    /// is at --max-sessions (repeat for several).
    #[arg(long = "peer", value_name = "ADDR")]
    peers: Vec<SocketAddr>,
    /// Send a keepalive after this long without traffic (e.g. 1s, 500ms) [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::secs)]
    keepalive: Option<Duration>,
    /// The old spelling of --keepalive: a bare number is milliseconds.
    #[arg(long, hide = true, value_parser = crate::duration::millis, conflicts_with = "keepalive")]
    keepalive_ms: Option<Duration>,
    /// End a session after this long without traffic (e.g. 5s, 2m) [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::secs)]
    idle_timeout: Option<Duration>,
    /// The largest DATA packet this server sends, in UDP payload bytes: the path MTU it assumes
    /// (1232 to 1452; 1232 for paths down to IPv6's minimum MTU, tunnels, VPNs). A datagram
    /// larger than one packet goes in fragments (PROTOCOL.md §5.7) [default: 1452].
    #[arg(long, value_name = "BYTES")]
    max_packet: Option<usize>,
    /// The old spelling of --idle-timeout: a bare number is milliseconds.
    #[arg(long, hide = true, value_parser = crate::duration::millis, conflicts_with = "idle_timeout")]
    idle_timeout_ms: Option<Duration>,
    /// Print a load line this often when something changed (e.g. 5s, 500ms; a bare number is
    /// seconds) [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::secs)]
    load_every: Option<Duration>,
    /// Forward each session to this service instead of echoing: the server side of `volley
    /// proxy`. udp://HOST:PORT: each session's datagrams go to the UDP service and its answers
    /// back. tcp://HOST:PORT: each session's stream (TCP on --listen's address, keyed from the
    /// session) is spliced to a connection of its own to the TCP service. Give both (one
    /// udp:// and one tcp://) to serve UDP and TCP clients from one fleet: a session's first use
    /// (a datagram or a stream) decides where it goes.
    #[arg(long, value_name = "TARGET")]
    forward: Vec<crate::target::Target>,
    /// With --forward tcp://: start every backend connection with a PROXY protocol v2 header
    /// (HAProxy's), whose source is the client's address and whose TLVs 0xE0 and 0xE1 carry
    /// its static key and its allow-list name. Only for a backend that expects the header
    /// (nginx `listen ... proxy_protocol`, HAProxy `accept-proxy`).
    #[arg(long)]
    proxy_protocol: bool,
    /// On SIGTERM (or SIGINT), drain for up to this long (e.g. 30s, 2m; a bare number is
    /// seconds): offer no new session (the server wins no race), keep serving the open sessions
    /// and streams until they end, then close the rest with GOING_AWAY. A second SIGTERM or
    /// SIGINT stops at once. 0: no drain [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::secs)]
    drain_timeout: Option<Duration>,
    /// With --forward: check the backend this often (e.g. 2s, 500ms; a bare number is seconds),
    /// and win no race while it is down (the server offers nothing and sends new sessions
    /// elsewhere; its open sessions go on). TCP: a connection opened and closed. UDP: the
    /// --health-send datagram, or without it passively (a datagram the backend refuses, ICMP
    /// port unreachable, takes it down for 10 s). Two failures in a row take it down, two passes
    /// bring it back; at the start the first result decides. 0: no active check, refusals only
    /// [default: 2s].
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::secs)]
    health_interval: Option<Duration>,
    /// With --forward udp://: the datagram each health check sends to the backend (text, or
    /// hex:HEX for bytes). A reply within a second passes.
    #[arg(long, value_name = "PAYLOAD")]
    health_send: Option<String>,
    /// With --health-send: a reply passes only when it starts with this (text, or hex:HEX)
    /// [default: any reply].
    #[arg(long, value_name = "PAYLOAD")]
    health_expect: Option<String>,
    /// Serve Prometheus metrics (every counter, load gauges, the answer-delay histogram) at
    /// http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Once the UDP socket, the TCP stream listener (with --forward tcp://) and the metrics
    /// endpoint (with --metrics) are bound, write one JSON object to PATH (through PATH.tmp and
    /// a rename): {"command":"serve","pid":N,"udp":"IP:PORT","tcp":"IP:PORT" or null,
    /// "metrics":"IP:PORT" or null,"public_key":"HEX"}, with the real ports (port 0 resolved).
    /// A flag only, not a config file setting: it is a handshake with whatever started this
    /// process.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// The config file, when it names the allow-list (`allow` or `allow_file`) and no --allow
    /// overrides it: re-read on SIGHUP.
    #[arg(skip)]
    allow_config: Option<PathBuf>,
    /// The config file's `log_level` (re-read on SIGHUP).
    #[arg(skip)]
    log_level: Option<String>,
}

/// The settings a `serve` config file may hold: the flags' names, every one optional.
#[derive(serde::Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// `--log-format` (main reads it before logging starts).
    #[allow(dead_code)]
    log_format: Option<crate::LogFormat>,
    log_level: Option<String>,
    listen: Option<String>,
    key: Option<PathBuf>,
    allow: Option<Vec<String>>,
    allow_file: Option<PathBuf>,
    service: Option<String>,
    capacity: Option<u32>,
    answer: Option<Answer>,
    max_sessions: Option<u32>,
    count_sessions: Option<bool>,
    #[serde(default, deserialize_with = "crate::duration::de_secs")]
    service_time: Option<Duration>,
    #[serde(default, deserialize_with = "crate::duration::de_millis")]
    service_ms: Option<Duration>,
    #[serde(default, deserialize_with = "crate::duration::de_secs")]
    pace_max: Option<Duration>,
    #[serde(default, deserialize_with = "crate::duration::de_millis")]
    pace_max_ms: Option<Duration>,
    pace_divisor: Option<u32>,
    #[serde(default, deserialize_with = "crate::duration::de_secs")]
    max_hold: Option<Duration>,
    #[serde(default, deserialize_with = "crate::duration::de_millis")]
    max_hold_ms: Option<Duration>,
    peers: Option<Vec<SocketAddr>>,
    #[serde(default, deserialize_with = "crate::duration::de_secs")]
    keepalive: Option<Duration>,
    #[serde(default, deserialize_with = "crate::duration::de_millis")]
    keepalive_ms: Option<Duration>,
    #[serde(default, deserialize_with = "crate::duration::de_secs")]
    idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "crate::duration::de_millis")]
    idle_timeout_ms: Option<Duration>,
    #[serde(default, deserialize_with = "crate::duration::de_secs")]
    load_every: Option<Duration>,
    max_packet: Option<usize>,
    forward: Option<crate::config_file::OneOrMany>,
    proxy_protocol: Option<bool>,
    #[serde(default, deserialize_with = "crate::duration::de_secs")]
    drain_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "crate::duration::de_secs")]
    health_interval: Option<Duration>,
    health_send: Option<String>,
    health_expect: Option<String>,
    metrics: Option<SocketAddr>,
}

impl Args {
    /// `--config`, before the file is merged: where `log_format` may be.
    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config.as_deref()
    }

    /// The file's settings under the flags': a flag given wins (in either spelling).
    fn merge(mut self) -> anyhow::Result<Self> {
        // The old `--…-ms` spellings (hidden; their bare numbers are milliseconds).
        self.service_time = self.service_time.or(self.service_ms.take());
        self.pace_max = self.pace_max.or(self.pace_max_ms.take());
        self.max_hold = self.max_hold.or(self.max_hold_ms.take());
        self.keepalive = self.keepalive.or(self.keepalive_ms.take());
        self.idle_timeout = self.idle_timeout.or(self.idle_timeout_ms.take());
        let Some(path) = self.config.take() else {
            return Ok(self);
        };
        let file: File = crate::config_file::read(&path)?;
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        self.listen = self.listen.or(file.listen);
        self.key = self.key.or_else(|| file.key.map(|k| dir.join(k)));
        let allow = crate::allow::Settings {
            allow: file.allow,
            allow_file: file.allow_file,
        };
        // Both in one file is refused even under --allow: the file is wrong either way.
        if allow.present(&path)? && self.allow.is_none() {
            self.allow_config = Some(path.clone());
        }
        self.service = self.service.or(file.service);
        self.capacity = self.capacity.or(file.capacity);
        self.answer = self.answer.or(file.answer);
        self.max_sessions = self.max_sessions.or(file.max_sessions);
        self.count_sessions |= file.count_sessions.unwrap_or(false);
        self.proxy_protocol |= file.proxy_protocol.unwrap_or(false);
        self.drain_timeout = self.drain_timeout.or(file.drain_timeout);
        self.health_interval = self.health_interval.or(file.health_interval);
        self.log_level = file.log_level;
        self.max_packet = self.max_packet.or(file.max_packet);
        self.health_send = self.health_send.or(file.health_send);
        self.health_expect = self.health_expect.or(file.health_expect);
        // The file's keys in either spelling (the old `_ms` ones count bare numbers in ms).
        self.service_time = self.service_time.or(file.service_time).or(file.service_ms);
        self.pace_max = self.pace_max.or(file.pace_max).or(file.pace_max_ms);
        self.pace_divisor = self.pace_divisor.or(file.pace_divisor);
        self.max_hold = self.max_hold.or(file.max_hold).or(file.max_hold_ms);
        if self.peers.is_empty() {
            self.peers = file.peers.unwrap_or_default();
        }
        self.keepalive = self.keepalive.or(file.keepalive).or(file.keepalive_ms);
        self.idle_timeout = self
            .idle_timeout
            .or(file.idle_timeout)
            .or(file.idle_timeout_ms);
        self.load_every = self.load_every.or(file.load_every);
        self.metrics = self.metrics.or(file.metrics);
        if self.forward.is_empty() {
            self.forward = crate::config_file::OneOrMany::list(file.forward)
                .iter()
                .map(|f| f.parse())
                .collect::<Result<_, String>>()
                .map_err(|e| anyhow::anyhow!("forward: {e}"))?;
        }
        Ok(self)
    }
}

fn at_most_a_minute(flag: &str, d: Duration) -> anyhow::Result<Duration> {
    ensure!(d <= Duration::from_secs(60), "{flag} must be at most 1m");
    Ok(d)
}

/// The answer policy the flags ask for, or why they do not make sense together.
fn answer_policy(args: &Args) -> anyhow::Result<AnswerPolicy> {
    let answer = match (args.answer, args.capacity) {
        (Some(a @ (Answer::Paced | Answer::Gated)), None) => bail!(
            "--answer {} needs --capacity: it estimates the queue from the slots",
            if a == Answer::Paced { "paced" } else { "gated" }
        ),
        (Some(a), _) => a,
        (None, Some(_)) => Answer::Paced,
        (None, None) => Answer::Immediate,
    };
    if args.pace_max.is_some() && answer != Answer::Paced {
        bail!("--pace-max applies to --answer paced only");
    }
    if args.pace_divisor.is_some() && answer != Answer::Paced {
        bail!("--pace-divisor applies to --answer paced only");
    }
    if args.pace_divisor == Some(0) {
        bail!("--pace-divisor must be at least 1");
    }
    if args.max_hold.is_some() && answer != Answer::Gated {
        bail!("--max-hold applies to --answer gated only");
    }
    Ok(match answer {
        Answer::Immediate => AnswerPolicy::Immediate,
        Answer::Paced => AnswerPolicy::Paced {
            max_delay: match args.pace_max {
                Some(d) => at_most_a_minute("--pace-max", d)?,
                None => DEFAULT_PACE_MAX_DELAY,
            },
            divisor: args.pace_divisor.unwrap_or(DEFAULT_PACE_DIVISOR),
        },
        Answer::Gated => match args.max_hold {
            Some(d) => AnswerPolicy::Gated {
                max_hold: at_most_a_minute("--max-hold", d)?,
            },
            None => AnswerPolicy::gated(),
        },
    })
}

fn describe(policy: AnswerPolicy) -> String {
    match policy {
        AnswerPolicy::Paced { max_delay, divisor } => format!(
            "paced, 1/{divisor} of the expected completion, up to {:.1} ms",
            max_delay.as_secs_f64() * 1e3
        ),
        AnswerPolicy::Gated { max_hold } => {
            format!("gated, hold up to {:.0} ms", max_hold.as_secs_f64() * 1e3)
        }
        other => other.name().to_string(),
    }
}

/// One line with the load and the answer counters.
fn load_line(handle: &ServerHandle, stats: &ServerStats) -> String {
    let l = handle.load();
    let capacity = if l.capacity == 0 {
        "unbounded".to_string()
    } else {
        l.capacity.to_string()
    };
    format!(
        "load: requests {} (sessions {}) reserved {} held {} / capacity {capacity}, service \
         {:.1} ms, expected {:.1} ms | offers {} (busy {}) probes held {} dropped (queue full \
         {}, hold expired {}) withheld (max sessions) {}",
        l.requests,
        l.sessions,
        l.reserved,
        l.held,
        l.service_time.as_secs_f64() * 1e3,
        l.expected.as_secs_f64() * 1e3,
        stats.offers_sent,
        stats.offers_busy,
        stats.probes_held,
        stats.probes_dropped_queue_full,
        stats.probes_dropped_hold_expired,
        stats.probes_withheld_full,
    )
}

/// What `serve` runs with: the server's configuration (validated), where to listen, and how
/// often to print the load.
#[derive(Debug)]
pub struct Settings {
    pub config: ServerConfig,
    /// `--listen`: resolved when serving starts.
    pub listen: String,
    pub service: String,
    pub load_every: Duration,
    /// `--forward`: the backends (resolved when serving starts).
    pub forward: Backends,
    /// `--proxy-protocol`: a PROXY protocol v2 header before each backend connection's bytes.
    pub proxy_protocol: bool,
    /// `--drain-timeout`: how long a SIGTERM drains before the sessions left are closed.
    pub drain_timeout: Duration,
    /// `--health-interval`, `--health-send`, `--health-expect`: how the backend is checked
    /// (with `--forward`).
    pub health: Option<volley::proxy::HealthCheck>,
    /// `--metrics`: where to serve Prometheus metrics.
    pub metrics: Option<SocketAddr>,
    /// `--ready-file`: where to say that every listener is bound.
    pub ready_file: Option<PathBuf>,
    /// The config file's `log_level` (checked; RUST_LOG overrides it).
    pub log_level: Option<String>,
    /// Where the allow-list came from (`config.allow` holds it): re-read on SIGHUP.
    pub allow: Option<crate::allow::Source>,
}

/// Flags over the config file over the defaults, checked.
pub fn settings(args: Args) -> anyhow::Result<Settings> {
    let args = args.merge()?;
    let listen = args
        .listen
        .clone()
        .context("--listen (or `listen` in the config file) is required")?;
    ensure!(
        listen.parse::<SocketAddr>().is_ok()
            || listen
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()),
        "--listen takes IP:PORT or HOST:PORT (e.g. 127.0.0.1:7001 or localhost:7001), not `{listen}`"
    );
    let key_path = args
        .key
        .clone()
        .context("--key (or `key` in the config file) is required")?;
    let key = crate::keygen::read_key(&key_path)?;
    let service = args.service.clone().unwrap_or_else(|| "echo".to_string());
    let load_every = args.load_every.unwrap_or(Duration::from_secs(5));
    ensure!(
        load_every >= Duration::from_millis(100),
        "--load-every must be at least 100ms"
    );
    ensure!(
        args.capacity != Some(0),
        "--capacity must be at least 1 (leave it out for no limit)"
    );
    ensure!(
        args.max_sessions != Some(0),
        "--max-sessions must be at least 1 (leave it out for no limit)"
    );
    let allow = match (&args.allow, &args.allow_config) {
        (Some(file), _) => Some(crate::allow::Source::File(file.clone())),
        (None, Some(config)) => Some(crate::allow::Source::Config(config.clone())),
        (None, None) => None,
    };
    let mut config = ServerConfig::new(key);
    config.allow = allow.as_ref().map(|s| s.load()).transpose()?.map(Arc::new);
    config.services = vec![service.clone().into_bytes()];
    config.capacity = args.capacity;
    config.max_sessions = args.max_sessions;
    config.count_sessions = args.count_sessions;
    if let Some(d) = args.service_time {
        ensure!(
            !d.is_zero() && d <= Duration::from_secs(3600),
            "--service-time must be above 0 and at most 1h"
        );
        config.service = ServiceModel::Fixed(d);
    }
    if let Some(d) = args.keepalive {
        config.session.keepalive_interval = positive("--keepalive", d)?;
    }
    if let Some(d) = args.idle_timeout {
        config.session.idle_timeout = positive("--idle-timeout", d)?;
    }
    if let Some(bytes) = args.max_packet {
        config.session.max_packet = bytes;
    }
    config.answer = answer_policy(&args)?;
    config.peers = args.peers.clone();
    config
        .validate()
        .context("the server's settings do not fit together")?;
    let forward = Backends::of(&args.forward)?;
    ensure!(
        !args.proxy_protocol || forward.tcp.is_some(),
        "--proxy-protocol (proxy_protocol) needs --forward tcp://HOST:PORT: a UDP backend gets \
         each datagram as it was sent, with nothing before it"
    );
    let metrics = args.metrics;
    let drain_timeout = drain_timeout(args.drain_timeout);
    let health = health_check(&args, &forward)?;
    if let Some(level) = &args.log_level {
        tracing_subscriber::EnvFilter::try_new(level)
            .with_context(|| format!("log_level {level:?} is not a log filter"))?;
    }
    Ok(Settings {
        config,
        listen,
        service,
        load_every,
        forward,
        proxy_protocol: args.proxy_protocol,
        drain_timeout,
        health,
        metrics,
        ready_file: args.ready_file,
        allow,
        log_level: args.log_level,
    })
}

/// `--forward`'s backends: at most one UDP and one TCP service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backends {
    /// `udp://HOST:PORT`: where datagram sessions go.
    pub udp: Option<String>,
    /// `tcp://HOST:PORT`: where stream sessions go.
    pub tcp: Option<String>,
}

impl Backends {
    fn of(targets: &[crate::target::Target]) -> anyhow::Result<Self> {
        let mut backends = Self::default();
        for target in targets {
            let (slot, scheme) = match target {
                crate::target::Target::Udp(_) => (&mut backends.udp, "udp"),
                crate::target::Target::Tcp(_) => (&mut backends.tcp, "tcp"),
            };
            ensure!(
                slot.is_none(),
                "--forward takes one {scheme}:// service (and at most one of the other scheme):                  a session goes to one backend; to spread over several, put a volley server in                  front of each"
            );
            *slot = Some(target.host_port().to_string());
        }
        Ok(backends)
    }

    /// Forwarding at all (else the echo).
    fn any(&self) -> bool {
        self.udp.is_some() || self.tcp.is_some()
    }
}

/// The backend's health check, from `--health-interval`, `--health-send` and
/// `--health-expect` (None without `--forward`). With both backends one check decides:
/// `--health-send` checks the UDP one, otherwise a connection checks the TCP one.
fn health_check(
    args: &Args,
    forward: &Backends,
) -> anyhow::Result<Option<volley::proxy::HealthCheck>> {
    use volley::proxy::HealthCheck;
    let udp = forward.udp.is_some();
    ensure!(
        args.health_send.is_none() || udp,
        "--health-send (health_send) is for --forward udp://HOST:PORT: a TCP backend is checked \
         by connecting to it"
    );
    ensure!(
        args.health_expect.is_none() || args.health_send.is_some(),
        "--health-expect (health_expect) needs --health-send: the reply it checks answers that \
         datagram"
    );
    if !forward.any() {
        ensure!(
            args.health_interval.is_none(),
            "--health-interval (health_interval) needs --forward: only a backend is checked"
        );
        return Ok(None);
    }
    let interval = args.health_interval.unwrap_or(Duration::from_secs(2));
    ensure!(
        interval.is_zero()
            || (Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&interval),
        "--health-interval must be 0 (no active check) or 10ms to 1h"
    );
    let send = args.health_send.as_deref().map(payload).transpose()?;
    let expect = args.health_expect.as_deref().map(payload).transpose()?;
    let check = match send {
        _ if interval.is_zero() => HealthCheck::passive(),
        Some(send) => HealthCheck::udp(send, expect.map(Into::into)),
        None if forward.tcp.is_some() => HealthCheck::tcp(),
        None => HealthCheck::passive(),
    };
    Ok(Some(
        check.interval(interval.max(Duration::from_millis(10))),
    ))
}

/// A health-check payload: text as it is, or `hex:` followed by hex digits.
fn payload(text: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = match text.strip_prefix("hex:") {
        Some(digits) => {
            let digits: String = digits.chars().filter(|c| !c.is_whitespace()).collect();
            ensure!(
                digits.len().is_multiple_of(2) && digits.chars().all(|c| c.is_ascii_hexdigit()),
                "a health payload after hex: takes pairs of hex digits, e.g. hex:00ff"
            );
            (0..digits.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&digits[i..i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()?
        }
        None => text.as_bytes().to_vec(),
    };
    ensure!(
        !bytes.is_empty() && bytes.len() <= 1400,
        "a health payload takes 1 to 1,400 bytes"
    );
    Ok(bytes)
}

/// How `check` works, said once at the start.
fn describe_check(check: &volley::proxy::HealthCheck) -> String {
    if check.is_active() {
        format!(
            "every {} s (no race won while it is down)",
            check.interval_of().as_secs_f64()
        )
    } else {
        "passively (a refused datagram or connection takes it down for 10 s)".to_string()
    }
}

fn health_addr(health: &Option<volley::proxy::BackendHealth>) -> String {
    health
        .as_ref()
        .map_or_else(String::new, |h| h.backend().to_string())
}

/// The default drain (`--drain-timeout`, `drain_timeout`).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// `--drain-timeout` (0: no drain; at most a day, as every duration flag), or the default.
pub fn drain_timeout(d: Option<Duration>) -> Duration {
    d.unwrap_or(DEFAULT_DRAIN_TIMEOUT)
}

fn positive(flag: &str, d: Duration) -> anyhow::Result<Duration> {
    ensure!(!d.is_zero(), "{flag} must be above 0");
    Ok(d)
}

/// With `--forward`, the session limit the open files allow: raises the soft open-file limit
/// to the hard one, derives the limits from it (`volley::proxy::ForwardLimits`: each forwarded
/// session holds one socket for UDP, two for TCP, and 64 descriptors stay for the process), and
/// makes the server's `max_sessions` that unless `--max-sessions` set one. None without
/// `--forward`.
/// Returns the limits and what to say about them (once the server says where it listens).
fn forward_limits(
    forward: &Backends,
    config: &mut ServerConfig,
) -> anyhow::Result<(Option<ForwardLimits>, Option<String>)> {
    if !forward.any() {
        return Ok((None, None));
    }
    // A stream session holds two descriptors, a datagram session one: with both, the larger.
    let kind = if forward.tcp.is_some() {
        Forwarding::Tcp
    } else {
        Forwarding::Udp
    };
    let open_files =
        volley::proxy::raise_open_files_limit().context("reading the open-file limit")?;
    let Some(limits) = ForwardLimits::for_open_files(kind, open_files) else {
        bail!(
            "the open-file limit ({open_files}) leaves no room for a forwarded session: raise it \
             (ulimit -n) to at least {}",
            volley::proxy::RESERVED_FDS + 4
        );
    };
    let note = match config.max_sessions {
        None => {
            config.max_sessions = Some(limits.max_sessions);
            Some(format!(
                "volley serve: at most {} sessions at once (from the open-file limit {}; \
                 --max-sessions to set it)",
                limits.max_sessions, open_files
            ))
        }
        Some(m) if m > limits.max_sessions => Some(format!(
            "volley serve: warning: --max-sessions {m} is more than the open-file limit {} \
             holds ({}): sessions past it may fail for want of descriptors",
            open_files, limits.max_sessions
        )),
        Some(_) => None,
    };
    Ok((Some(limits), note))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // What a SIGHUP re-reads: the same flags over the config file as it is then.
    let again = args.clone();
    let first = settings(args)?;
    let mut running = Running::of(&first);
    let reloads = Arc::new(volley::metrics::Reloads::default());
    let Settings {
        mut config,
        listen,
        service,
        load_every,
        forward,
        proxy_protocol,
        drain_timeout,
        health,
        metrics,
        ready_file,
        allow,
        log_level: _,
    } = first;
    // Installed before anything is announced: from the ready file on, a SIGHUP reloads the
    // allow-list and never ends the process (its default action).
    let mut hangups = Hangups::new()?;
    let (limits, limits_note) = forward_limits(&forward, &mut config)?;
    let udp_backend = match &forward.udp {
        Some(host_port) => Some(crate::target::resolve_one(host_port).await?),
        None => None,
    };
    let tcp_backend = match &forward.tcp {
        Some(host_port) => Some(crate::target::resolve_one(host_port).await?),
        None => None,
    };
    let answer = config.answer;
    let capacity = config.capacity;
    let peers = config.peers.clone();
    let listen = crate::target::resolve_one(&listen).await?;
    let server = Server::bind(listen, config).await?;
    // The TCP forwarder's streams arrive on the server's own address, for TCP.
    let streams = match tcp_backend {
        Some(_) => {
            let addr = server.local_addr();
            let bound = tokio::net::TcpListener::bind(addr).await;
            Some(bound.with_context(|| format!("cannot bind {addr}"))?)
        }
        None => None,
    };
    // What the sessions reach: the echo, or the backends a forward hands them to.
    let serving_what = match (udp_backend, tcp_backend) {
        (Some(udp), Some(tcp)) => {
            format!("forwarding to udp://{udp} and tcp://{tcp} as service {service}")
        }
        (Some(udp), None) => format!("forwarding to udp://{udp} as service {service}"),
        (None, Some(tcp)) => format!("forwarding to tcp://{tcp} as service {service}"),
        (None, None) => format!("echo, service {service}"),
    };
    say!(
        "volley serve: listening on {} ({}, capacity {}, answer {}{}), public key {}",
        server.local_addr(),
        serving_what,
        capacity.map_or("unbounded".to_string(), |c| c.to_string()),
        describe(answer),
        if peers.is_empty() {
            String::new()
        } else {
            format!(
                ", redirects to {}",
                peers
                    .iter()
                    .map(SocketAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        },
        server.public_key().to_hex()
    );
    match (&allow, server.allow_list_len()) {
        (Some(source), Some(keys)) => {
            say!(
                "volley serve: allow-list {source}: {keys} client key(s); other clients get no \
                 session (SIGHUP reloads it)"
            );
            if keys == 0 {
                tracing::warn!(%source, "the allow-list is empty: no client can open a session");
            }
        }
        _ => say!(
            "volley serve: no allow-list: any client with this server's public key gets a session"
        ),
    }
    if let Some(note) = limits_note {
        say!("{note}");
    }
    let handle = server.handle();
    // The backend's health decides whether this server offers sessions.
    // With both backends one check decides: a UDP probe checks the UDP one, else the TCP one
    // is checked by connecting (refusals of either count, passively).
    let checked = match (udp_backend, tcp_backend, &health) {
        (Some(udp), _, Some(check)) if check.is_udp() => Some(("udp", udp)),
        (_, Some(tcp), _) => Some(("tcp", tcp)),
        (Some(udp), None, _) => Some(("udp", udp)),
        (None, None, _) => None,
    };
    let health = match (checked, health) {
        (Some((scheme, backend)), Some(check)) => {
            say!(
                "volley serve: backend {scheme}://{backend} checked {}",
                describe_check(&check)
            );
            Some(volley::proxy::BackendHealth::start(
                handle.clone(),
                backend,
                check,
            ))
        }
        _ => None,
    };
    // Set by the first SIGTERM: `/readyz` says "draining" from then on.
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let forward_metrics = Arc::new(volley::proxy::ForwardMetrics::default());
    let metrics_endpoint = match metrics {
        Some(addr) => {
            let mut registry = volley::metrics::Metrics::new()
                .server(handle.clone())
                .reloads(Arc::clone(&reloads));
            if streams.is_some() {
                registry = registry.forward(Arc::clone(&forward_metrics));
            }
            if let Some(h) = &health {
                registry = registry.health(h.clone());
            }
            let (health, draining) = (health.clone(), Arc::clone(&draining));
            registry = registry.readiness(move || {
                if draining.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err("draining (stopping)".to_string());
                }
                match health.as_ref().and_then(|h| h.reason()) {
                    Some(why) => Err(format!("backend {} down: {why}", health_addr(&health))),
                    None => Ok(()),
                }
            });
            let endpoint = registry.serve(addr).await?;
            say!(
                "volley serve: metrics at http://{}/metrics",
                endpoint.local_addr()
            );
            Some(endpoint)
        }
        None => None,
    };
    if let Some(path) = &ready_file {
        crate::ready::write(
            path,
            &crate::ready::Ready::Serve {
                pid: std::process::id(),
                udp: server.local_addr(),
                tcp: streams.as_ref().map(|l| l.local_addr()).transpose()?,
                metrics: metrics_endpoint.as_ref().map(|m| m.local_addr()),
                public_key: server.public_key().to_hex(),
            },
        )?;
    }
    let (stats_tx, stats_rx) = tokio::sync::oneshot::channel();
    let (begin, now) = stop_signals("serve", drain_timeout);
    let begin = {
        let draining = Arc::clone(&draining);
        async move {
            begin.await;
            draining.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let drain = volley::Drain::new(drain_timeout, now);
    let serving = async move {
        let stats = match (udp_backend, tcp_backend.zip(streams)) {
            (udp, Some((backend, listener))) => {
                say!(
                    "volley serve: forwarding each session's stream (tcp://{}) to tcp://{backend}",
                    server.local_addr()
                );
                let mut forward =
                    volley::proxy::TcpForward::from_listener(server, listener, backend)
                        .metrics(forward_metrics)
                        .proxy_protocol(proxy_protocol)
                        .drain(drain);
                if let Some(udp) = udp {
                    say!(
                        "volley serve: a session whose first use is a datagram goes to udp://{udp}"
                    );
                    forward = forward.datagrams(udp);
                }
                if let Some(l) = limits {
                    forward = forward.max_pending(l.max_pending_streams);
                }
                if let Some(h) = health {
                    forward = forward.health(h);
                }
                let s = forward.serve(begin).await;
                say!(
                    "volley serve: streams {} refused {} backend failures {} broken {}",
                    s.streams,
                    s.refused,
                    s.backend_failures,
                    s.broken
                );
                s.server
            }
            (Some(backend), None) => {
                say!("volley serve: forwarding each session to udp://{backend}");
                let mut forward = volley::proxy::UdpForward::new(server, backend).drain(drain);
                if let Some(h) = health {
                    forward = forward.health(h);
                }
                forward.serve(begin).await
            }
            (None, None) => volley::echo::serve_draining(server, begin, drain).await,
        };
        let _ = stats_tx.send(stats);
    };
    tokio::pin!(serving);
    let mut every = tokio::time::interval(load_every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last = String::new();
    loop {
        tokio::select! {
            _ = &mut serving => break,
            () = hangups.next() => reload(&again, &mut running, &handle, &reloads).await,
            _ = every.tick() => {
                let line = load_line(&handle, &handle.stats());
                if line != last {
                    say!("volley serve: {line}");
                    last = line;
                }
            }
        }
    }
    if let Ok(s) = stats_rx.await {
        say!("volley serve: stopped. {}", load_line(&handle, &s));
        say!(
            "volley serve: probes {} offers {} sessions opened {} closed {} refused (max \
             sessions) {} redirects {} cookie rejects {} rate-limited {} malformed {} \
             unauthorized {} revoked {}",
            s.probes_received,
            s.offers_sent,
            s.sessions_opened,
            s.sessions_closed,
            s.init_refused_full,
            s.redirects_sent,
            s.init_cookie_bad_mac
                + s.init_cookie_expired
                + s.init_cookie_unknown_key
                + s.init_cookie_malformed,
            s.init_rate_limited,
            s.malformed_truncated
                + s.malformed_length
                + s.malformed_type
                + s.malformed_version
                + s.malformed_too_long,
            s.inits_unauthorized,
            s.sessions_revoked,
        );
    }
    Ok(())
}

/// SIGTERM and SIGINT, counted: the first resolves the first future (begin a drain of up to
/// `drain`, or stop when it is zero), the second the second (stop at once). Each is said on
/// stderr. Handlers are installed now, once, so that no signal between the two is missed.
pub fn stop_signals(
    command: &'static str,
    drain: Duration,
) -> (
    impl Future<Output = ()> + Send + 'static,
    impl Future<Output = ()> + Send + 'static,
) {
    let stop = stop_watch(command, drain);
    (stop.at(1), stop.at(2))
}

/// The stop signals counted so far (see [`stop_signals`]), for several listeners at once.
pub struct Stop(tokio::sync::watch::Receiver<u32>);

impl Stop {
    /// Resolves once `k` signals came (1: begin the drain, 2: stop now).
    pub fn at(&self, k: u32) -> impl Future<Output = ()> + Send + 'static + use<> {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|n| *n >= k).await;
        }
    }
}

/// [`stop_signals`], as a [`Stop`] that hands out any number of futures.
pub fn stop_watch(command: &'static str, drain: Duration) -> Stop {
    let (tx, rx) = tokio::sync::watch::channel(0u32);
    #[cfg(unix)]
    let streams = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::quit()).ok(),
        )
    };
    ignored_signals(command);
    tokio::spawn(async move {
        #[cfg(unix)]
        let (mut term, mut int, mut quit) = streams;
        loop {
            #[cfg(unix)]
            let mut now = false;
            #[cfg(unix)]
            {
                let term_recv = async {
                    match term.as_mut() {
                        Some(t) => t.recv().await,
                        None => std::future::pending().await,
                    }
                };
                let int_recv = async {
                    match int.as_mut() {
                        Some(i) => i.recv().await,
                        None => std::future::pending().await,
                    }
                };
                let quit_recv = async {
                    match quit.as_mut() {
                        Some(q) => q.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = term_recv => {}
                    _ = int_recv => {}
                    // SIGQUIT: stop at once (still with a clean close and the counters).
                    _ = quit_recv => now = true,
                }
            }
            #[cfg(not(unix))]
            let now = false;
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
            }
            let n = if now { 2 } else { *tx.borrow() + 1 };
            if n == 1 && !drain.is_zero() {
                say!(
                    "volley {command}: draining for up to {} s (no new sessions; the open ones go \
                     on); a second SIGTERM or SIGINT stops at once",
                    drain.as_secs_f64()
                );
            } else {
                say!("volley {command}: stopping");
            }
            tx.send_replace(n);
            if n >= 2 {
                return;
            }
        }
    });
    Stop(rx)
}

/// Signals whose default action would end the process without its counters or a clean close,
/// and that mean nothing to volley (SIGUSR1, SIGUSR2, SIGALRM, SIGVTALRM, SIGIO, SIGPWR, SIGXCPU,
/// SIGXFSZ): each is logged and ignored. (SIGPIPE is ignored by the Rust runtime; SIGKILL and
/// SIGSTOP cannot be caught.)
fn ignored_signals(command: &'static str) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut kinds = vec![
            ("SIGUSR1", SignalKind::user_defined1()),
            ("SIGUSR2", SignalKind::user_defined2()),
            ("SIGALRM", SignalKind::alarm()),
            ("SIGIO", SignalKind::io()),
        ];
        #[cfg(target_os = "linux")]
        kinds.extend([
            ("SIGXCPU", SignalKind::from_raw(24)),
            ("SIGXFSZ", SignalKind::from_raw(25)),
            ("SIGVTALRM", SignalKind::from_raw(26)),
            ("SIGPWR", SignalKind::from_raw(30)),
        ]);
        for (name, kind) in kinds {
            let Ok(mut stream) = signal(kind) else {
                continue;
            };
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    tracing::warn!(
                        "{name} received and ignored (volley {command} stops on SIGTERM, SIGINT \
                         or SIGQUIT, and reloads on SIGHUP)"
                    );
                }
            });
        }
    }
    #[cfg(not(unix))]
    let _ = command;
}

/// SIGHUP, as a stream of wake-ups (never on platforms without it).
pub(crate) struct Hangups {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Hangups {
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Self {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("cannot handle SIGHUP")?,
        })
    }

    /// The next SIGHUP.
    pub(crate) async fn next(&mut self) {
        #[cfg(unix)]
        {
            if self.signal.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

/// SIGHUP: re-reads the allow-list from where it came from and puts it in force, or keeps the
/// old one and says why.
/// What a reload compares the file's new settings with: the values that change live, and those
/// that take a restart.
struct Running {
    capacity: Option<u32>,
    max_sessions: Option<u32>,
    allow: Option<crate::allow::Source>,
    log_level: Option<String>,
    restart_only: Vec<(&'static str, String)>,
}

impl Running {
    fn of(s: &Settings) -> Self {
        Self {
            capacity: s.config.capacity,
            max_sessions: s.config.max_sessions,
            allow: s.allow.clone(),
            log_level: s.log_level.clone(),
            restart_only: restart_only(s),
        }
    }
}

/// The settings a running server cannot change, by name (the key by its public half).
fn restart_only(s: &Settings) -> Vec<(&'static str, String)> {
    vec![
        ("listen", s.listen.to_string()),
        ("key", s.config.keypair.public().to_hex()),
        ("service", s.service.clone()),
        ("forward", format!("{:?}", s.forward)),
        ("proxy_protocol", s.proxy_protocol.to_string()),
        ("drain_timeout", format!("{:?}", s.drain_timeout)),
        ("health", format!("{:?}", s.health)),
        ("metrics", format!("{:?}", s.metrics)),
        ("answer", format!("{:?}", s.config.answer)),
        ("session", format!("{:?}", s.config.session)),
        ("peers", format!("{:?}", s.config.peers)),
        ("count_sessions", s.config.count_sessions.to_string()),
        ("load_every", format!("{:?}", s.load_every)),
    ]
}

/// SIGHUP: re-reads the flags over the config file. What a running server can change takes
/// effect (capacity, max sessions, the allow-list); what it cannot is said and kept; a file that
/// does not parse or does not fit changes nothing, is logged with its cause and counted.
async fn reload(
    again: &Args,
    running: &mut Running,
    handle: &ServerHandle,
    reloads: &volley::metrics::Reloads,
) {
    let from = match (&again.config, &running.allow) {
        (Some(path), _) => path.display().to_string(),
        (None, Some(source)) => source.to_string(),
        (None, None) => {
            tracing::warn!(
                "SIGHUP: nothing to reload (serve runs from flags alone, without --config or                  --allow); ignored"
            );
            return;
        }
    };
    let new = match settings(again.clone()) {
        Ok(new) => new,
        Err(e) => {
            reloads.failed();
            tracing::warn!(
                "SIGHUP: configuration and allow-list not reloaded from {from}; the running ones \
                 stay: {e:#}"
            );
            return;
        }
    };
    let mut said = Vec::new();
    if new.config.capacity != running.capacity {
        handle.set_capacity(new.config.capacity);
        said.push(format!(
            "capacity {} → {}",
            limit(running.capacity),
            limit(new.config.capacity)
        ));
        running.capacity = new.config.capacity;
    }
    if new.config.max_sessions != running.max_sessions {
        // No limit in the file: the one derived at the start (from the open-file limit, for a
        // forwarder) is not re-derived; a number replaces it.
        if new.config.max_sessions.is_some() {
            handle.set_max_sessions(new.config.max_sessions);
        }
        said.push(format!(
            "max sessions {} → {}",
            limit(running.max_sessions),
            limit(new.config.max_sessions)
        ));
        running.max_sessions = new.config.max_sessions;
    }
    if let Some(source) = &new.allow {
        let keys = new.config.allow.as_ref().map_or(0, |l| l.len());
        let revoked = handle.set_allow_list(new.config.allow.clone()).await;
        said.push(format!(
            "allow-list reloaded from {source}: {keys} client key(s), {revoked} session(s) \
             revoked"
        ));
        if keys == 0 {
            tracing::warn!(%source, "the allow-list is empty: no client can open a session");
        }
    } else if running.allow.is_some() {
        let revoked = handle.set_allow_list(None).await;
        said.push(format!(
            "no allow-list any more: any client with the public key gets a session ({revoked} revoked)"
        ));
    }
    running.allow = new.allow.clone();
    if new.log_level != running.log_level {
        match crate::reload_log_level(new.log_level.as_deref(), "info") {
            Ok(what) => said.push(what),
            Err(why) => tracing::warn!("SIGHUP: log_level not applied: {why}"),
        }
        running.log_level = new.log_level.clone();
    }
    reloaded(
        "serve",
        &from,
        &said,
        &restart_only(&new),
        &running.restart_only,
    );
    reloads.done();
}

/// The end of a reload that took effect: warns of the restart-only settings that changed
/// (`now` against `then`, name by name) and says what changed live.
pub(crate) fn reloaded(
    command: &str,
    from: &str,
    said: &[String],
    now: &[(&'static str, String)],
    then: &[(&'static str, String)],
) {
    let changed: Vec<&str> = now
        .iter()
        .zip(then)
        .filter(|(now, then)| now.1 != then.1)
        .map(|(now, _)| now.0)
        .collect();
    if !changed.is_empty() {
        tracing::warn!(
            "SIGHUP: {} changed in {from}: that takes a restart; the running value(s) stay",
            changed.join(", ")
        );
    }
    say!(
        "volley {command}: reloaded {from}: {}",
        if said.is_empty() {
            "nothing that changes live changed".to_string()
        } else {
            said.join("; ")
        }
    );
}

fn limit(n: Option<u32>) -> String {
    n.map_or("unbounded".to_string(), |n| n.to_string())
}
