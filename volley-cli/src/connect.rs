//! `volley connect --server-key PUBKEY [--key FILE] [--policy earliest|window|path] [--fanout D]
//! [--n-best K] [--send TEXT] ADDR...`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

// Tokio's clock, as the volley runtime's: on a paused runtime (the tests) the whole command,
// deadlines included, runs in virtual time.
use tokio::time::Instant;

use anyhow::{Context, bail, ensure};
use volley::{Client, ClientConfig, ConnectReport, LoadHint, OfferFate, SelectionPolicy, Session};
use volley_proto::client::{DEFAULT_HOT_QUANTILE, DEFAULT_WINDOW};

/// How the client chooses among offers (L3).
#[derive(clap::ValueEnum, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// The earliest valid offer wins.
    Earliest,
    /// Collect offers for --window after the first (or until every server answered), then
    /// take the server expected to complete a request soonest (the offers' load hints).
    Window,
    /// Path-aware: the server expected to finish the session's work first, counting the path
    /// each offer's answer measured once per round trip and the server's expected completion
    /// once per request; stops waiting as soon as no later offer could win (across zones).
    Path,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A TOML file with any of these settings (names as the flags', with `_` for `-`;
    /// `server_keys` and `servers` as lists); flags given as well override it. See
    /// examples/connect.toml.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A pinned server public key (hex, from `volley keygen` or `volley pubkey`). Repeat for
    /// fleets with several keys.
    #[arg(long = "server-key", required_unless_present = "config")]
    server_keys: Vec<String>,
    /// This client's secret key file (from `volley keygen`; mode 0600), which the handshake
    /// proves: servers with an allow-list serve only the keys they list (`volley pubkey FILE`
    /// prints the public key to list). In a config file: relative to the file. Default: a new
    /// random key each run, which no allow-list lists.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Service to ask for [default: echo].
    #[arg(long)]
    service: Option<String>,
    /// How to choose among the offers [default: earliest].
    #[arg(long, value_enum)]
    policy: Option<Policy>,
    // Help built from the library's default, so it cannot drift.
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::secs, help = format!(
        "With --policy window or --n-best: how long to collect offers after the first (e.g. \
         2ms) [default: {}]",
        crate::duration::show(DEFAULT_WINDOW)
    ))]
    window: Option<Duration>,
    /// The old spelling of --window: a bare number is milliseconds.
    #[arg(long, hide = true, value_parser = crate::duration::millis, conflicts_with = "window")]
    window_ms: Option<Duration>,
    /// Probe a subset of this many servers instead of all of them (with --zone, half of them
    /// from this client's zone).
    #[arg(long, value_name = "D")]
    fanout: Option<usize>,
    /// This client's zone: servers labelled `ZONE=…` with it are asked first.
    #[arg(long, value_name = "NAME")]
    zone: Option<String>,
    /// Open sessions with the K best servers of one race (and send --send on each).
    #[arg(long, value_name = "K", conflicts_with = "policy")]
    n_best: Option<usize>,
    /// Send this text over the session and print the reply. It rides in the handshake as
    /// early data (the race plus one round trip instead of two; PROTOCOL.md §4.8): it is then
    /// encrypted without forward secrecy, and may reach a second server if the first never
    /// answers the handshake. Sent after the handshake instead with --no-early-data, with
    /// --n-best, or when longer than 1201 bytes. It is sent once per session: every copy would
    /// reach the service behind a forwarding server as a new request. If it or its reply is
    /// lost, the command waits out --timeout and fails with "no reply" (exit status 1); run it
    /// again, or give --resend-every.
    #[arg(long)]
    send: Option<String>,
    /// Send --send's text again after this long without a reply (e.g. 500ms, 1s; at least
    /// 100ms), until a reply or --timeout. Off by default: each copy reaches the service as a
    /// new request (a forwarding server cannot tell a copy from a repeat), so use it only for
    /// a service where doing a request twice is harmless, on a path that loses datagrams.
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::secs)]
    resend_every: Option<Duration>,
    /// Send --send's text only once the session is up, not as early data in the handshake.
    #[arg(long)]
    no_early_data: bool,
    /// Give up after this long in all — the race, the handshake and --send's exchange (e.g.
    /// 3s, 500ms; a bare number is seconds) [default: 3s].
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::secs)]
    timeout: Option<Duration>,
    /// Resolve server names with this DNS server (IP:PORT) instead of the system's.
    #[arg(long, value_name = "ADDR")]
    dns_server: Option<SocketAddr>,
    /// Servers to race: IP:PORT, HOST:PORT (every A/AAAA address of the name) or srv:NAME,
    /// each optionally labelled with its zone as ZONE=ENTRY.
    #[arg(required_unless_present = "config", value_name = "SERVER")]
    pool: Vec<String>,
    /// The pool resolved (when the command runs).
    #[arg(skip)]
    servers: Vec<SocketAddr>,
}

/// The settings a `connect` config file may hold: the flags' names, every one optional.
#[derive(serde::Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// `--log-format` (main reads it before logging starts).
    #[allow(dead_code)]
    log_format: Option<crate::LogFormat>,
    /// The log filter (main reads it before logging starts).
    #[allow(dead_code)]
    log_level: Option<String>,
    server_keys: Option<Vec<String>>,
    key: Option<PathBuf>,
    service: Option<String>,
    policy: Option<Policy>,
    #[serde(default, deserialize_with = "crate::duration::de_secs")]
    window: Option<Duration>,
    #[serde(default, deserialize_with = "crate::duration::de_millis")]
    window_ms: Option<Duration>,
    fanout: Option<usize>,
    zone: Option<String>,
    n_best: Option<usize>,
    send: Option<String>,
    #[serde(default, deserialize_with = "crate::duration::de_secs")]
    resend_every: Option<Duration>,
    no_early_data: Option<bool>,
    #[serde(default, deserialize_with = "crate::duration::de_secs")]
    timeout: Option<Duration>,
    dns_server: Option<SocketAddr>,
    servers: Option<Vec<String>>,
}

impl Args {
    /// `--config`, before the file is merged: where `log_format` may be.
    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config.as_deref()
    }

    /// `--timeout`, or its default.
    fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    /// The file's settings under the flags': a flag given wins (lists: a flag list replaces
    /// the file's).
    fn merge(mut self) -> anyhow::Result<Self> {
        // The old spelling --window-ms (hidden; its bare numbers are milliseconds).
        self.window = self.window.or(self.window_ms.take());
        let Some(path) = self.config.take() else {
            return Ok(self);
        };
        let file: File = crate::config_file::read(&path)?;
        if self.server_keys.is_empty() {
            self.server_keys = file.server_keys.unwrap_or_default();
        }
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        self.key = self.key.or_else(|| file.key.map(|k| dir.join(k)));
        self.dns_server = self.dns_server.or(file.dns_server);
        if self.pool.is_empty() {
            self.pool = file.servers.unwrap_or_default();
        }
        self.service = self.service.or(file.service);
        // An explicit --n-best or --policy replaces the file's choice of either.
        if self.policy.is_none() && self.n_best.is_none() {
            self.policy = file.policy;
            self.n_best = file.n_best;
        }
        self.window = self.window.or(file.window).or(file.window_ms);
        self.fanout = self.fanout.or(file.fanout);
        self.zone = self.zone.or(file.zone);
        self.send = self.send.or(file.send);
        self.resend_every = self.resend_every.or(file.resend_every);
        self.no_early_data = self.no_early_data || file.no_early_data.unwrap_or(false);
        self.timeout = self.timeout.or(file.timeout);
        Ok(self)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn load(hint: Option<LoadHint>) -> String {
    let Some(h) = hint else {
        return "load   ?    expected     ?    ".to_string();
    };
    let slots = if h.capacity == 0 {
        "-  ".to_string()
    } else {
        format!("{:<3}", h.capacity)
    };
    let expected = match h.expected() {
        Some(e) => format!("{:>8.3} ms", e.as_secs_f64() * 1e3),
        None => "       ?   ".to_string(),
    };
    format!("load {:>3}/{slots} expected {expected}", h.in_flight)
}

/// Flags over the config file over the defaults, checked: the client's configuration and the
/// arguments it was built from (merged).
pub fn settings(args: Args) -> anyhow::Result<(ClientConfig, Args)> {
    let args = args.merge()?;
    ensure!(
        !args.server_keys.is_empty(),
        "--server-key (or `server_keys` in the config file) is required"
    );
    ensure!(
        !args.pool.is_empty(),
        "servers to race are required (arguments, or `servers` in the config file)"
    );
    if let Some(every) = args.resend_every {
        ensure!(
            every >= MIN_RESEND_EVERY,
            "--resend-every must be at least {} (a shorter interval only multiplies the \
             requests a slow service sees)",
            crate::duration::show(MIN_RESEND_EVERY)
        );
        ensure!(args.send.is_some(), "--resend-every applies to --send only");
    }
    let config = config(&args)?;
    Ok((config, args))
}

/// `--timeout` when none is given.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// The shortest `--resend-every`: copies sent faster than a slow service answers are only more
/// work for it.
pub const MIN_RESEND_EVERY: Duration = Duration::from_millis(100);

/// The longest one INIT is retried (the library's default handshake timeout).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

fn config(args: &Args) -> anyhow::Result<ClientConfig> {
    let keys = crate::target::server_keys(&args.server_keys)?;
    let timeout = args.timeout();
    ensure!(
        !timeout.is_zero() && timeout < Duration::from_secs(3600),
        "--timeout must be above 0 and below 1h"
    );
    let window = match args.window {
        None => DEFAULT_WINDOW,
        Some(w) if w <= Duration::from_secs(10) => w,
        Some(_) => bail!("--window must be at most 10s"),
    };
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
    // --timeout bounds the whole command (race, handshake, --send; R10): the race may take all
    // of it, one INIT's retries at most HANDSHAKE_TIMEOUT (a server drops a half-open session
    // after its 5 s idle timeout; later retries of that INIT could never succeed) and at most
    // half of --timeout, after which `run` races again while time is left: two unanswered
    // handshakes fit, which is how a key the servers do not list shows (A1).
    config.race.deadline = timeout;
    config.handshake_timeout = (timeout / 2).min(HANDSHAKE_TIMEOUT);
    config.max_failovers = 0;
    config.policy = match (args.policy.unwrap_or(Policy::Earliest), args.n_best) {
        (_, Some(k)) => {
            ensure!(k >= 1, "--n-best must be at least 1");
            SelectionPolicy::NBest { k, delta: window }
        }
        (Policy::Path, None) => {
            ensure!(
                args.window.is_none(),
                "--window applies to --policy window and --n-best only: the path policy \
                 decides by itself when no later offer could win"
            );
            SelectionPolicy::path()
        }
        (Policy::Window, None) => SelectionPolicy::Window {
            delta: window,
            quantile: DEFAULT_HOT_QUANTILE,
        },
        (Policy::Earliest, None) => {
            ensure!(
                args.window.is_none(),
                "--window applies to --policy window and --n-best only"
            );
            SelectionPolicy::Earliest
        }
    };
    if let Some(d) = args.fanout {
        ensure!(d >= 1, "--fanout must be at least 1");
        config.fanout = Some(d);
    }
    config.zone = args.zone.clone();
    config
        .validate()
        .context("the client's settings do not fit together")?;
    Ok(config)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (config, mut args) = settings(args)?;
    // Names that resolve to both families (`localhost`) race one of them.
    let pool = crate::target::pool(&args.pool, args.dns_server).await?;
    args.servers = volley::discovery::one_family(pool.current());
    let client = Client::new(config);
    client.set_server_zones(pool.zones());
    let started = Instant::now();
    // The race's own deadline is the same length but starts a moment later; the margin lets a
    // race that got no offer fail with its own diagnosis (no answer, unpinned key) first.
    let deadline = started + args.timeout();
    let connect_deadline = deadline + Duration::from_millis(50);
    // Race again after a handshake that timed out, while the deadline allows (R10) — but not
    // after two: servers that send offers and never an ACCEPT are not losing INITs, they do not
    // take this client's key (the library's own rule for one connection).
    let mut unanswered = 0;
    // --send's text as early data, when it may ride (one session, within the size, not refused).
    let early = args
        .send
        .as_ref()
        .filter(|_| args.n_best.is_none() && !args.no_early_data)
        .and_then(|t| volley_proto::EarlyData::new(volley::Bytes::from(t.clone())).ok());
    let connected = loop {
        let attempt = async {
            match (args.n_best, &early) {
                (Some(k), _) => client.connect_n(&args.servers, k).await,
                (None, Some(first)) => client
                    .connect_with_early(&args.servers, first.bytes().clone())
                    .await
                    .map(|s| vec![s]),
                (None, None) => client.connect(&args.servers).await.map(|s| vec![s]),
            }
        };
        match tokio::time::timeout_at(connect_deadline, attempt).await {
            Err(_) if unanswered > 0 => bail!("{}", not_accepted(&args, unanswered)),
            Err(_) => bail!(
                "no session within {} (--timeout; {} server(s) probed; check addresses, \
                 --server-key and --service)",
                crate::duration::show(args.timeout()),
                args.servers.len()
            ),
            Ok(Err(volley::Error::Connect(volley::ConnectError::HandshakeTimeout(_, n)))) => {
                unanswered += n.max(1);
                if unanswered >= 2 || Instant::now() >= deadline {
                    bail!("{}", not_accepted(&args, unanswered));
                }
            }
            Ok(r) => break r,
        }
    };
    let mut sessions = match connected {
        Ok(s) => s,
        Err(volley::Error::Connect(volley::ConnectError::NoOffer(_))) => bail!(
            "no server answered within {} ({} probed; check addresses, --server-key and --service)",
            crate::duration::show(args.timeout()),
            args.servers.len()
        ),
        Err(volley::Error::Connect(volley::ConnectError::UnpinnedKey(n))) => bail!(
            "servers answered, but with a key other than --server-key ({n} offers from unpinned \
             keys): check the key (`volley pubkey KEYFILE` prints a key file's public key)"
        ),
        Err(e) => return Err(explain(e)),
    };
    let connect_time = started.elapsed();
    let main = sessions.first().context("at least one session")?;
    // Give the losers a moment to answer, so their (voided) offers are measured too.
    let expected = args
        .fanout
        .map_or(args.servers.len(), |d| d.min(args.servers.len()));
    let wait_until = (Instant::now() + Duration::from_millis(100)).min(deadline);
    while main
        .report()
        .is_some_and(|r| r.offers.len() < expected && r.redirected_to.is_empty())
        && Instant::now() < wait_until
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let report = main.report().context("client session has a report")?;
    print_race(&args, main, &report, &sessions);
    if sessions.len() > 1 {
        say!("sessions:   {} (n-best)", sessions.len());
        for s in &sessions {
            let r = s.report().unwrap_or_default();
            say!(
                "  session   {:<22} answered in {:>10}  {}  handshake {}",
                s.remote().to_string(),
                r.answer_time.map_or("—".to_string(), ms),
                load(r.load),
                r.handshake_time.map_or("—".to_string(), ms),
            );
        }
    } else if let Some(h) = report.handshake_time {
        say!("handshake:  {}", ms(h));
    }
    say!(
        "connect:    {} (race + handshake{})",
        ms(connect_time),
        if sessions.len() > 1 { "s" } else { "" }
    );
    if let Some(text) = &args.send {
        for s in &mut sessions {
            let sent_early = early.is_some().then_some(started);
            exchange(
                s,
                text,
                sessions_label(args.n_best, s),
                deadline,
                sent_early,
                args.resend_every,
            )
            .await?;
        }
    }
    for s in &sessions {
        s.close();
    }
    // Let the driver send the CLOSEs before the runtime stops.
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(())
}

/// Offers came, sessions did not: what a client whose key is not on the servers' allow-list
/// sees (an unlisted INIT is dropped without an answer).
fn not_accepted(args: &Args, unanswered: u32) -> String {
    let key = match &args.key {
        Some(path) => format!(
            "is this client's public key (`volley pubkey {}`) on their --allow list?",
            path.display()
        ),
        None => "this client ran without --key: its random key is on no allow-list; give it \
                 a listed key with --key"
            .to_string(),
    };
    format!(
        "the servers answered but accepted no session for this client key ({unanswered} \
         handshake(s) unanswered): {key}"
    )
}

/// A library error as one line for the user; a revoked key says so.
fn explain(e: volley::Error) -> anyhow::Error {
    match e {
        volley::Error::Closed(volley_proto::CloseReason::Remote(
            volley_proto::CloseCode::REVOKED,
        ))
        | volley::Error::Connect(volley::ConnectError::Revoked(_)) => anyhow::anyhow!(
            "revoked: the server ended the session because its allow-list no longer holds this \
             client's key"
        ),
        other => other.into(),
    }
}

fn sessions_label(n_best: Option<usize>, s: &Session) -> String {
    match n_best {
        Some(_) => format!(" ({})", s.remote()),
        None => String::new(),
    }
}

fn print_race(args: &Args, main: &Session, report: &ConnectReport, sessions: &[Session]) {
    let policy = match args.n_best {
        Some(k) => format!("n-best {k}"),
        None => format!("{:?}", args.policy.unwrap_or(Policy::Earliest)).to_lowercase(),
    };
    say!("winner:     {}  (policy {policy})", main.remote());
    for o in &report.offers {
        let note = match o.fate {
            OfferFate::Selected => "selected",
            OfferFate::Collected if sessions.iter().any(|s| s.remote() == o.server) => {
                "selected (n-best)"
            }
            OfferFate::Collected => "collected, not chosen",
            OfferFate::Late => "late, voided",
            _ => "",
        };
        say!(
            "  offer     {:<22} answered in {:>10}  {}  ({note})",
            o.server.to_string(),
            ms(o.answer_time),
            load(o.load)
        );
    }
    let unanswered = if args.fanout.is_some_and(|d| d < args.servers.len()) {
        "no answer, or not in the fan-out"
    } else {
        "no answer"
    };
    for server in args
        .servers
        .iter()
        .filter(|s| !report.offers.iter().any(|o| o.server == **s))
    {
        say!("  offer     {server:<22} {unanswered}");
    }
    for to in &report.redirected_to {
        say!("  redirect  {to:<22} (named by a refusing server, added to the race)");
    }
    say!("late offers voided: {}", report.late_offers);
}

/// Sends `text` on `session` and prints the reply; `early`: it already went in the handshake
/// (at that time), so the first wait sends nothing. The text goes once (a copy is a new request
/// to the service: many clients re-sending to a slow one would only lengthen its queue until
/// none is answered), again every `resend_every` only when the user asked for it.
async fn exchange(
    session: &mut Session,
    text: &str,
    label: String,
    deadline: Instant,
    early: Option<Instant>,
    resend_every: Option<Duration>,
) -> anyhow::Result<()> {
    let sent = early.unwrap_or_else(Instant::now);
    if early.is_none() {
        session.send(text.as_bytes()).await.map_err(explain)?;
    }
    let mut copies = 1u32;
    let reply = loop {
        let until = match resend_every {
            Some(every) => (Instant::now() + every).min(deadline),
            None => deadline,
        };
        match tokio::time::timeout_at(until, session.recv()).await {
            Ok(r) => break Some(r.map_err(explain)?),
            Err(_) if Instant::now() < deadline => {
                session.send(text.as_bytes()).await.map_err(explain)?;
                copies += 1;
            }
            Err(_) => break None,
        }
    };
    let copies = if copies > 1 {
        format!(", {copies} copies sent (--resend-every)")
    } else {
        String::new()
    };
    let reply = reply.with_context(|| {
        format!(
            "no reply to --send within --timeout ({:.1} s in all{copies}){label}: the text \
             or its reply was lost, or the service did not answer in time",
            (deadline - sent).as_secs_f64()
        )
    })?;
    if early.is_some() {
        say!("sent:       {text:?}{label} (early data, in the handshake{copies})");
        say!(
            "reply:      {:?} in {} (race, handshake and reply)",
            String::from_utf8_lossy(&reply),
            ms(sent.elapsed())
        );
    } else {
        say!(
            "sent:       {text:?}{label}{}",
            copies.replacen(", ", "; ", 1)
        );
        say!(
            "reply:      {:?} in {}",
            String::from_utf8_lossy(&reply),
            ms(sent.elapsed())
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! `--timeout` bounds the whole command (R10), shown on a paused runtime: every wait, the
    //! client's and the server's timers included, runs in virtual time, so the elapsed time is
    //! the program's own arithmetic, not the machine's speed.

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Connect {
        #[command(flatten)]
        args: Args,
    }

    /// Runs `volley connect ARGV…`, which must fail: its error, and the virtual time it took.
    async fn failing(argv: &[&str]) -> (String, Duration) {
        let mut all = vec!["connect"];
        all.extend_from_slice(argv);
        let args = Connect::try_parse_from(all).expect("valid flags").args;
        let started = Instant::now();
        let err = run(args).await.expect_err("connect fails");
        (format!("{err:#}"), started.elapsed())
    }

    #[test]
    fn a2_a_revoked_session_reads_as_revoked() {
        use volley_proto::{CloseCode, CloseReason};
        for e in [
            volley::Error::Closed(CloseReason::Remote(CloseCode::REVOKED)),
            volley::Error::Connect(volley::ConnectError::Revoked(
                "127.0.0.1:1".parse().unwrap(),
            )),
        ] {
            let text = format!("{:#}", explain(e));
            assert!(text.starts_with("revoked:"), "{text}");
            assert!(text.contains("allow-list"), "{text}");
        }
        let other = format!(
            "{:#}",
            explain(volley::Error::Closed(CloseReason::IdleTimeout))
        );
        assert!(!other.contains("revoked"), "{other}");
    }

    #[tokio::test(start_paused = true)]
    async fn r10_connect_to_a_silent_address_gives_up_at_the_timeout_in_virtual_time() {
        // Bound and never read: probes go nowhere.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let (err, took) =
            failing(&["--server-key", &"1".repeat(64), "--timeout", "1", &addr]).await;
        assert!(err.contains("no server answered within 1s"), "{err}");
        // The race's own deadline, inside the command's 50 ms margin.
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_millis(1_050),
            "{took:?} of virtual time"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn r10_connect_timeout_bounds_the_whole_command_send_included() {
        // A server that accepts every session and never answers: the race and the handshake
        // succeed, then --send waits for a reply that never comes. --timeout 2 bounds it all
        // (before R10, --send added its own 3 s after the connect).
        let key = volley::StaticKeypair::generate(&mut volley::OsRng);
        let mut server = volley::Server::bind(
            "127.0.0.1:0".parse().unwrap(),
            volley::ServerConfig::new(key.clone()),
        )
        .await
        .unwrap();
        let addr = server.local_addr().to_string();
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(session) = server.accept().await {
                held.push(session);
            }
        });
        let key = key.public().to_hex();
        let (err, took) = failing(&[
            "--server-key",
            &key,
            "--timeout",
            "2",
            "--send",
            "anyone there?",
            &addr,
        ])
        .await;
        holder.abort();
        assert!(err.contains("no reply to --send within --timeout"), "{err}");
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_millis(2_100),
            "{took:?} of virtual time"
        );
    }
}
