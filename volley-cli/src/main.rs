//! `volley`: keygen, pubkey, serve, connect, demo. Each subcommand lives in its own module; this file only
//! parses arguments, sets up logging and maps errors to one line and an exit code.

/// `println!` that never panics: when stdout is closed (`volley serve | head -1`) the process
/// ends quietly with status 0, as a Unix tool that dies of SIGPIPE would end; another write
/// error ends it with one line on stderr and status 1.
macro_rules! say {
    () => {
        $crate::say_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::say_line(format_args!($($arg)*))
    };
}

mod allow;
mod config_file;
mod connect;
mod demo;
mod duration;
mod keygen;
mod proxy;
mod pubkey;
mod ready;
mod serve;
mod target;

use clap::{Parser, Subcommand};

/// Client-driven server load distribution over UDP.
#[derive(Parser, Debug)]
#[command(name = "volley", version, about)]
struct Cli {
    /// Log lines as plain text or one JSON object per line (levels and targets from RUST_LOG;
    /// with json, the lines on stdout are JSON objects too). Also `log_format` in a config file
    /// [default: plain]. Plain text is coloured only on a terminal and never when NO_COLOR is
    /// set.
    #[arg(long, value_enum, global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    Plain,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a new server or client secret key to a file (mode 0600) and print its public key.
    Keygen(keygen::Args),
    /// Print the public key of a server or client key file written by `keygen`.
    Pubkey(pubkey::Args),
    /// Serve the echo service (or --forward to one) until SIGINT or SIGTERM; SIGHUP reloads the
    /// allow-list.
    Serve(Box<serve::Args>),
    /// Race servers, open a session with the winner (or the K best), optionally send a datagram.
    Connect(connect::Args),
    /// Put volley in front of a UDP service: applications send here, each flow races the pool.
    Proxy(proxy::Args),
    /// Race clients against an in-process fleet with uneven load on loopback, once per answer
    /// policy, and show where the sessions went.
    Demo(demo::Args),
}

fn main() {
    let cli = Cli::parse();
    let default = match cli.command {
        Command::Serve(_) | Command::Proxy(_) => "info",
        _ => "warn",
    };
    // The flag, else the config file's `log_format` (a file that cannot be read is reported by
    // the command itself, in whichever format).
    let config = match &cli.command {
        Command::Serve(a) => a.config_path(),
        Command::Connect(a) => a.config_path(),
        Command::Proxy(a) => a.config_path(),
        _ => None,
    };
    // RUST_LOG, else the config file's `log_level` (re-read on SIGHUP), else the default.
    let level = config.and_then(config_file::log_level);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        level
            .as_deref()
            .and_then(|l| tracing_subscriber::EnvFilter::try_new(l).ok())
            .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default))
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let format = cli
        .log_format
        .or_else(|| config.and_then(config_file::log_format))
        .unwrap_or(LogFormat::Plain);
    match format {
        LogFormat::Json => {
            JSON_STDOUT.store(true, std::sync::atomic::Ordering::Relaxed);
            let logs = logs.json().with_filter_reloading();
            let handle = logs.reload_handle();
            keep_log_level(move |f| handle.reload(f).map_err(|e| e.to_string()));
            logs.init()
        }
        // Colour codes only on a terminal (not in a log file, a pipe or a journal), and never
        // when NO_COLOR is set to anything (no-color.org).
        LogFormat::Plain => {
            let logs = logs
                .with_ansi(
                    std::io::IsTerminal::is_terminal(&std::io::stderr())
                        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
                )
                .with_filter_reloading();
            let handle = logs.reload_handle();
            keep_log_level(move |f| handle.reload(f).map_err(|e| e.to_string()));
            logs.init()
        }
    }
    let result = match cli.command {
        Command::Keygen(a) => keygen::run(a),
        Command::Pubkey(a) => pubkey::run(a),
        Command::Serve(a) => runtime().and_then(|rt| rt.block_on(serve::run(*a))),
        Command::Connect(a) => runtime().and_then(|rt| rt.block_on(connect::run(a))),
        Command::Proxy(a) => runtime().and_then(|rt| rt.block_on(proxy::run(a))),
        Command::Demo(a) => runtime().and_then(|rt| rt.block_on(demo::run(a))),
    };
    if let Err(e) = result {
        eprintln!("volley: {}", causes(&e));
        std::process::exit(1);
    }
}

type SetFilter = Box<dyn Fn(tracing_subscriber::EnvFilter) -> Result<(), String> + Send + Sync>;

/// How to change the log filter of the running process (set once, at the start).
static LOG_FILTER: std::sync::OnceLock<SetFilter> = std::sync::OnceLock::new();

fn keep_log_level(
    set: impl Fn(tracing_subscriber::EnvFilter) -> Result<(), String> + Send + Sync + 'static,
) {
    let _ = LOG_FILTER.set(Box::new(set));
}

/// A reload's `log_level` (None: the default `default`): applied unless RUST_LOG rules the
/// logs. Says what it did, or why not, for the reload's line.
pub(crate) fn reload_log_level(level: Option<&str>, default: &str) -> Result<String, String> {
    if std::env::var_os("RUST_LOG").is_some_and(|v| !v.is_empty()) {
        return Err("RUST_LOG is set and rules the logs".to_string());
    }
    let directive = level.unwrap_or(default);
    let filter = tracing_subscriber::EnvFilter::try_new(directive)
        .map_err(|e| format!("log_level {directive:?}: {e}"))?;
    let set = LOG_FILTER
        .get()
        .ok_or_else(|| "no log filter to change".to_string())?;
    set(filter)?;
    Ok(format!("log level {directive}"))
}

/// `e` and its causes on one line, `what: why: why`, each said once: volley's library errors
/// already end with the cause they wrap, which anyhow's `{:#}` would repeat.
pub(crate) fn causes(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// With `--log-format json`: stdout's lines are JSON objects too, so that a log collector
/// reading both streams never meets a plain line.
static JSON_STDOUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// One stdout line as a JSON object of the shape tracing's JSON lines have (`timestamp`,
/// `level`, `fields.message`, `target`).
fn json_line(message: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    serde_json::json!({
        "timestamp": rfc3339(now),
        "level": "INFO",
        "fields": { "message": message },
        "target": "volley",
    })
    .to_string()
}

/// `since_epoch` as an RFC 3339 UTC time with microseconds (Howard Hinnant's civil_from_days).
fn rfc3339(since_epoch: std::time::Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since_epoch.subsec_micros()
    )
}

/// Writes one line to stdout (see [`say!`]): as it is, or as a JSON object with
/// `--log-format json`.
pub(crate) fn say_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = if JSON_STDOUT.load(std::sync::atomic::Ordering::Relaxed) {
        out.write_all(json_line(&args.to_string()).as_bytes())
    } else {
        out.write_fmt(args)
    };
    let written = written
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("volley: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod log_tests {
    #[test]
    fn o7_rfc3339_dates_are_right() {
        let at = |s| super::rfc3339(std::time::Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00.000000Z");
        assert_eq!(at(1_798_761_599), "2026-12-31T23:59:59.000000Z");
    }
}

#[cfg(test)]
mod error_tests {
    #[test]
    fn o7_an_error_line_gives_every_cause_once() {
        let e = anyhow::Error::new(volley::Error::Connect(volley::ConnectError::UnpinnedKey(2)))
            .context("proxy");
        assert_eq!(
            super::causes(&e),
            "proxy: connect failed: 2 offers came from servers whose keys are not pinned, and \
             none from a pinned one"
        );
        let bind = volley::Error::Bind {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use"),
        };
        assert_eq!(
            super::causes(&anyhow::Error::new(bind)),
            "cannot bind 127.0.0.1:1: address in use"
        );
    }
}

#[cfg(test)]
mod packaging_tests {
    //! The packaging examples stay true: their volley command lines parse with this binary's
    //! own parser, and the Kubernetes manifest holds a headless service the proxy resolves.

    use clap::Parser;

    use super::{Cli, Command};

    fn example(path: &str) -> String {
        std::fs::read_to_string(format!("{}/../examples/{path}", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
    }

    #[test]
    fn d4_the_systemd_unit_runs_a_command_line_volley_accepts() {
        let unit = example("systemd/volley-serve.service");
        for section in ["[Unit]", "[Service]", "[Install]"] {
            assert!(unit.contains(section), "{section}");
        }
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("ExecStart");
        let mut argv: Vec<String> = exec
            .split_whitespace()
            .map(|a| a.replace("${CREDENTIALS_DIRECTORY}", "/run/credentials/volley"))
            .collect();
        assert_eq!(argv[0], "/usr/local/bin/volley");
        argv[0] = "volley".into();
        let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(cli.command, Command::Serve(_)));
    }

    #[test]
    fn d3_the_kubernetes_example_races_a_headless_service_with_arguments_volley_accepts() {
        let docs = yaml_rust2::YamlLoader::load_from_str(&example("kubernetes/volley.yaml"))
            .expect("valid YAML");
        let service = docs
            .iter()
            .find(|d| d["kind"].as_str() == Some("Service"))
            .expect("a Service");
        assert_eq!(
            service["spec"]["clusterIP"].as_str(),
            Some("None"),
            "headless"
        );
        let name = service["metadata"]["name"].as_str().unwrap();
        let port = service["spec"]["ports"][0]["port"].as_i64().unwrap();
        let mut parsed = Vec::new();
        for d in docs
            .iter()
            .filter(|d| d["kind"].as_str() == Some("Deployment"))
        {
            for c in d["spec"]["template"]["spec"]["containers"]
                .as_vec()
                .unwrap()
            {
                if !c["image"].as_str().unwrap_or("").contains("/volley:") {
                    continue;
                }
                let mut argv = vec!["volley".to_string()];
                argv.extend(
                    c["args"]
                        .as_vec()
                        .unwrap()
                        .iter()
                        .map(|a| a.as_str().unwrap().to_string()),
                );
                let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{e}"));
                // Both sidecars drain 30 s on SIGTERM (the default): the pod waits longer.
                let grace = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_i64();
                assert!(grace.is_some_and(|g| g > 30), "grace {grace:?}");
                if let Command::Serve(_) = cli.command {
                    // The probes GET /readyz and /healthz on the port --metrics serves.
                    let metrics = &argv[argv.iter().position(|a| a == "--metrics").unwrap() + 1];
                    assert!(
                        metrics.starts_with("0.0.0.0:"),
                        "{metrics}: reachable by kubelet"
                    );
                    let port: i64 = metrics.rsplit(':').next().unwrap().parse().unwrap();
                    for (probe, path) in
                        [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]
                    {
                        let get = &c[probe]["httpGet"];
                        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
                        let probed = match &get["port"] {
                            yaml_rust2::Yaml::Integer(p) => *p,
                            yaml_rust2::Yaml::String(name) => c["ports"]
                                .as_vec()
                                .unwrap()
                                .iter()
                                .find(|p| p["name"].as_str() == Some(name))
                                .and_then(|p| p["containerPort"].as_i64())
                                .unwrap_or_else(|| panic!("{probe}: no port named {name}")),
                            other => panic!("{probe}: port {other:?}"),
                        };
                        assert_eq!(probed, port, "{probe} probes the metrics port");
                    }
                }
                if let Command::Proxy(_) = cli.command {
                    let pool = argv.last().unwrap();
                    assert_eq!(
                        pool,
                        &format!("{name}.default.svc.cluster.local:{port}"),
                        "the proxy races the headless service's name"
                    );
                    assert!(pool.parse::<volley::discovery::PoolEntry>().is_ok());
                }
                parsed.push(
                    argv[argv
                        .iter()
                        .position(|a| a == "serve" || a == "proxy")
                        .unwrap()]
                    .clone(),
                );
            }
        }
        parsed.sort();
        assert_eq!(parsed, ["proxy", "serve"]);
    }
}
