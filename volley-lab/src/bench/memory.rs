//! Memory per idle session of a whole server — runtime, protocol core and the default echo
//! service's task per session — rather than the protocol core alone ([`super::core`]).
//!
//! The server runs in a child process (this binary, hidden subcommand `memory-server`) so that
//! its resident memory is its own: `volley::Server` with default settings, served by
//! `volley::echo::serve`. The bench opens sessions to it from one `volley::Client` (one socket,
//! 16 connects in flight), each echoing one datagram so that every session's task has run, then
//! reads the child's VmRSS: after a warm-up of 1,000 sessions, and after `n` more. The growth ÷ `n`
//! is the figure (allocator slack included).
//!
//! `VOLLEY_MEMORY_DEBUG=1` makes the child print its counters to stderr every 2 s (to see why a
//! run failed: refusals, timeouts).
//!
//! Both sides use a 15 s keepalive and a 60 s idle timeout (`IDLE`): with the defaults (1 s,
//! 5 s) 100,000 idle sessions exchange about 200,000 keepalive datagrams a second each way, more
//! than one core serves next to the handshakes, and sessions time out before the run ends.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use volley::{Client, ClientConfig, PublicKey, Server, ServerConfig, StaticKeypair};

use crate::harness::footprint;
use crate::harness::process::pin_to;

/// What one measurement found.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryResult {
    /// Sessions opened after the warm-up.
    pub sessions: usize,
    /// The child's VmRSS growth per session, bytes.
    pub bytes_per_session: f64,
    /// Its VmRSS after the warm-up and at the end, bytes.
    pub rss_warm: u64,
    pub rss_end: u64,
    /// Sessions open on the server at the end (its counters).
    pub server_sessions: u64,
    /// Seconds the connects took.
    pub connect_seconds: f64,
}

const WARM_UP: usize = 1_000;

/// Keepalive and idle timeout of both sides (see the module docs).
const IDLE: volley::SessionConfig = volley::SessionConfig {
    keepalive_interval: Duration::from_secs(15),
    idle_timeout: Duration::from_secs(60),
    liveness_probes: 12,
    min_probe_timeout: Duration::from_millis(50),
    max_probe_timeout: Duration::from_secs(1),
    initial_probe_timeout: Duration::from_millis(200),
    rekey_after_packets: volley_proto::session::DEFAULT_REKEY_AFTER_PACKETS,
    rekey_after_time: volley_proto::session::DEFAULT_REKEY_AFTER_TIME,
    cipher: volley_proto::crypto::CipherPolicy::Auto,
    max_packet: volley_proto::MAX_DATAGRAM_LEN,
};
/// Connects in flight. Kept below what fills two receive batches at once: a server whose socket
/// backs up while handshakes are active engages its per-source INIT limit (PROTOCOL.md §7.7),
/// and every connect here comes from one address.
const IN_FLIGHT: usize = 16;

/// Resident memory of process `pid`, bytes.
fn rss_of(pid: u32) -> anyhow::Result<u64> {
    let kb = footprint::rss_kb(pid).ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))?;
    Ok(kb * 1024)
}

/// The child: serves echo sessions on 127.0.0.1 with default settings but for the session timers
/// (`IDLE`) and the per-source INIT limit, prints its address and
/// public key, and stops when its stdin closes.
pub fn serve_child() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
        let mut config = ServerConfig::new(key.clone());
        config.session = IDLE;
        // Every connect comes from one address, as fast as the server takes them: the
        // per-source INIT limit (for an abusive source, engaged while the server is pressed)
        // would throttle the measurement itself.
        config.admission.inits_per_source_per_sec = 1_000_000;
        config.admission.inits_per_source_burst = 1_000_000;
        let server = Server::bind("127.0.0.1:0".parse()?, config).await?;
        println!("{} {}", server.local_addr(), key.public().to_hex());
        std::io::stdout().flush()?;
        if std::env::var_os("VOLLEY_MEMORY_DEBUG").is_some() {
            let handle = server.handle();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    eprintln!("{:?}", handle.stats());
                }
            });
        }
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin()
                .read_line(&mut line)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                line.clear();
            }
        });
        volley::echo::serve(server, async {
            let _ = stdin_closed.await;
        })
        .await;
        anyhow::Ok(())
    })
}

/// Opens `WARM_UP` then `n` sessions against a child server and reads its RSS.
pub fn run(n: usize, cpu: usize) -> anyhow::Result<MemoryResult> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("memory-server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    )
    .read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let addr: SocketAddr = parts
        .next()
        .ok_or_else(|| anyhow::anyhow!("child said {line:?}"))?
        .parse()?;
    let key = PublicKey::from_hex(parts.next().unwrap_or_default())?;
    pin_to(cpu);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async move {
        let mut config = ClientConfig::new(vec![key]);
        config.session = IDLE;
        let client = Client::new(config);
        let mut sessions = Vec::with_capacity(WARM_UP + n);
        open(&client, addr, WARM_UP, &mut sessions).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_warm = rss_of(pid)?;
        let started = Instant::now();
        open(&client, addr, n, &mut sessions).await?;
        let connect_seconds = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_end = rss_of(pid)?;
        anyhow::Ok(MemoryResult {
            sessions: n,
            bytes_per_session: rss_end.saturating_sub(rss_warm) as f64 / n as f64,
            rss_warm,
            rss_end,
            server_sessions: sessions.len() as u64,
            connect_seconds,
        })
    });
    // Closing its stdin stops the child; it is killed if it does not go.
    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.wait();
    result
}

/// Opens `n` sessions, `IN_FLIGHT` at a time, each echoing one datagram.
async fn open(
    client: &Client,
    addr: SocketAddr,
    n: usize,
    sessions: &mut Vec<volley::Session>,
) -> anyhow::Result<()> {
    let pool = [addr];
    let mut tasks = tokio::task::JoinSet::new();
    let mut started = 0;
    while started < n || !tasks.is_empty() {
        while started < n && tasks.len() < IN_FLIGHT {
            let client = client.clone();
            tasks.spawn(async move {
                let s =
                    tokio::time::timeout(Duration::from_secs(30), client.connect(&pool)).await??;
                // Datagrams: a lost one is sent again (a few times, then the run fails).
                for _ in 0..10 {
                    s.send(b"hello").await?;
                    if let Ok(echo) = tokio::time::timeout(Duration::from_secs(1), s.recv()).await {
                        echo?;
                        return anyhow::Ok(s);
                    }
                }
                anyhow::bail!("no echo in 10 tries")
            });
            started += 1;
        }
        if let Some(done) = tasks.join_next().await {
            sessions.push(done?.with_context(|| format!("after {} sessions", sessions.len()))?);
        }
    }
    Ok(())
}
