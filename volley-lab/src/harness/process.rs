//! The `volley` binary as the experiments run it: finding it, `volley keygen`, `volley serve`
//! and `volley proxy` processes — where they listen is learnt from their `--ready-file`, never
//! from the wording of their log lines, which is for people — stopping them, and pinning a
//! thread to a CPU.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Deserialize;
use volley::PublicKey;

/// How long a `volley` process may take to bind its listeners: far more than it needs (tens of
/// milliseconds), so that only a process that hangs reaches it.
const READY_WAIT: Duration = Duration::from_secs(30);
/// How often the ready file is looked for while waiting.
const READY_POLL: Duration = Duration::from_millis(5);

/// Why a `volley` process did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot run {}: {source}", .program.display())]
    Run {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`volley {command}` exited ({status}) before it was ready")]
    Exited { command: String, status: ExitStatus },
    #[error("`volley {command}` wrote no ready file within {waited:?}")]
    NotReady { command: String, waited: Duration },
    #[error("`volley {command}`: unreadable ready file {}: {detail}", .path.display())]
    ReadyFile {
        command: String,
        path: PathBuf,
        detail: String,
    },
}

/// What `--ready-file` says (the fields the lab reads; `volley serve --help` lists them all).
#[derive(Debug, Deserialize)]
struct Ready {
    /// `serve`: the UDP socket.
    udp: Option<SocketAddr>,
    /// `proxy`: `udp://IP:PORT` or `tcp://IP:PORT`.
    listen: Option<String>,
    metrics: Option<SocketAddr>,
}

impl Ready {
    /// The address the process serves on: a server's UDP socket, a proxy's listener.
    fn addr(&self) -> Option<SocketAddr> {
        self.udp.or_else(|| {
            let listen = self.listen.as_deref()?;
            let (_scheme, addr) = listen.split_once("://")?;
            addr.parse().ok()
        })
    }
}

/// A `volley serve` or `volley proxy` process, killed when dropped.
pub struct VolleyProcess {
    pub child: Child,
    /// Where it serves (its ready file's `udp`, or a proxy's `listen`).
    pub addr: SocketAddr,
    /// Its metrics endpoint, when it was started with `--metrics`.
    pub metrics: Option<SocketAddr>,
}

impl VolleyProcess {
    /// Runs `volley ARGS… --ready-file PATH` and waits until PATH says every listener is bound;
    /// a process that ends first, or that takes longer than `READY_WAIT` (30 s), did not start.
    pub fn start(volley: &Path, args: &[String]) -> Result<VolleyProcess, StartError> {
        let command = args.join(" ");
        let ready_file = fresh_ready_file();
        let mut child = Command::new(volley)
            .args(args)
            .arg("--ready-file")
            .arg(&ready_file)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| StartError::Run {
                program: volley.to_path_buf(),
                source,
            })?;
        let ready = wait_ready(&mut child, &ready_file, &command).and_then(|ready| {
            let addr = ready.addr().ok_or_else(|| StartError::ReadyFile {
                command: command.clone(),
                path: ready_file.clone(),
                detail: "no udp or listen address".into(),
            })?;
            Ok((addr, ready.metrics))
        });
        let _ = std::fs::remove_file(&ready_file);
        match ready {
            Ok((addr, metrics)) => Ok(VolleyProcess {
                child,
                addr,
                metrics,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// `volley serve --listen ADDR --key KEY` (echo service), with `--metrics` on an ephemeral
    /// port when `metrics`.
    pub fn serve(
        volley: &Path,
        key: &Path,
        addr: SocketAddr,
        metrics: bool,
    ) -> Result<VolleyProcess, StartError> {
        Self::serve_draining(volley, key, addr, metrics, Duration::ZERO, None)
    }

    /// [`VolleyProcess::serve`] whose SIGTERM drains its sessions for `drain` before it says it
    /// is going away (zero, as `serve`: at once), with `config` as its `--config` file (which a
    /// SIGHUP re-reads).
    pub fn serve_draining(
        volley: &Path,
        key: &Path,
        addr: SocketAddr,
        metrics: bool,
        drain: Duration,
        config: Option<&Path>,
    ) -> Result<VolleyProcess, StartError> {
        let mut args = vec![
            "serve".to_string(),
            "--listen".into(),
            addr.to_string(),
            "--key".into(),
            key.display().to_string(),
            "--drain-timeout".into(),
            format!("{}ms", drain.as_millis()),
        ];
        if let Some(config) = config {
            args.extend(["--config".into(), config.display().to_string()]);
        }
        if metrics {
            args.extend(["--metrics".into(), "127.0.0.1:0".into()]);
        }
        VolleyProcess::start(volley, &args)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks it to stop gracefully (SIGTERM): a server drains for its drain time (none unless
    /// started with [`VolleyProcess::serve_draining`]), then tells its clients it is going away.
    pub fn terminate(&self) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }

    /// Asks it to reload its configuration (SIGHUP).
    pub fn hangup(&self) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP);
    }

    /// Kills it at once (SIGKILL): a crash, as its clients see it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }
}

impl Drop for VolleyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A ready-file path of its own for every process this lab starts.
fn fresh_ready_file() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("volley-lab-{}-{n}.ready", std::process::id()));
    // A leftover of an earlier lab process with the same pid would read as ready at once.
    let _ = std::fs::remove_file(&path);
    path
}

/// Waits for `path` to appear (it appears whole: `volley` writes it aside and renames it), while
/// noticing `child` end first.
fn wait_ready(child: &mut Child, path: &Path, command: &str) -> Result<Ready, StartError> {
    let give_up = Instant::now() + READY_WAIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return serde_json::from_str(&text).map_err(|e| StartError::ReadyFile {
                command: command.to_string(),
                path: path.to_path_buf(),
                detail: e.to_string(),
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(StartError::Exited {
                command: command.to_string(),
                status,
            });
        }
        if Instant::now() >= give_up {
            return Err(StartError::NotReady {
                command: command.to_string(),
                waited: READY_WAIT,
            });
        }
        std::thread::sleep(READY_POLL);
    }
}

/// The `volley` binary: `given`, or the one beside this executable; it must exist.
pub fn volley_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let volley = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("volley"),
    };
    anyhow::ensure!(
        volley.exists(),
        "{} not found: build it first (cargo build --release -p volley-cli) or pass --volley",
        volley.display()
    );
    Ok(volley)
}

/// The public key of the secret key file `file`, which `volley keygen` writes first if it is
/// missing.
pub fn keygen(volley: &Path, file: &Path) -> anyhow::Result<PublicKey> {
    if !file.exists() {
        let out = Command::new(volley)
            .args(["keygen", "--out"])
            .arg(file)
            .output()?;
        anyhow::ensure!(out.status.success(), "keygen failed");
    }
    let out = Command::new(volley).arg("pubkey").arg(file).output()?;
    PublicKey::from_hex(String::from_utf8_lossy(&out.stdout).trim())
        .map_err(|e| anyhow::anyhow!("pubkey: {e}"))
}

/// A loopback address whose port the kernel picks: a process started on it names the port in
/// its ready file ([`VolleyProcess::addr`]), and is restarted on that address.
pub const EPHEMERAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// The runtime of the experiments that drive `volley` processes and library clients together:
/// two worker threads, one per core of the machines the lab is sized for.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Pins the calling thread to `cpu` and builds the single-threaded runtime it is to run: one
/// side of a measurement, alone on its core.
pub fn pinned_runtime(cpu: usize) -> std::io::Result<tokio::runtime::Runtime> {
    pin_to(cpu);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Pins the calling thread to one CPU (best effort: a failure only costs isolation).
pub fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok()
        && let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
    {
        tracing::warn!(cpu, error = %e, "could not pin thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_file_names_a_servers_udp_socket_or_a_proxys_listener() {
        let serve: Ready = serde_json::from_str(
            r#"{"command":"serve","pid":1,"udp":"127.0.0.1:7001","tcp":null,"metrics":"127.0.0.1:9100","public_key":"00"}"#,
        )
        .unwrap();
        assert_eq!(serve.addr(), Some("127.0.0.1:7001".parse().unwrap()));
        assert_eq!(serve.metrics, Some("127.0.0.1:9100".parse().unwrap()));
        let proxy: Ready = serde_json::from_str(
            r#"{"command":"proxy","pid":2,"listen":"tcp://127.0.0.1:8000","metrics":null}"#,
        )
        .unwrap();
        assert_eq!(proxy.addr(), Some("127.0.0.1:8000".parse().unwrap()));
        assert_eq!(proxy.metrics, None);
    }

    #[test]
    fn a_process_is_started_once_its_ready_file_appears_and_killed_when_dropped() {
        // A stand-in for `volley serve` that writes its ready file as volley does (aside, then
        // renamed) a moment after it starts, then stays up.
        let script = r#"sleep 0.2
printf '{"command":"serve","pid":%d,"udp":"127.0.0.1:7001","tcp":null,"metrics":"127.0.0.1:9100","public_key":"00"}\n' $$ > "$2.tmp"
mv "$2.tmp" "$2"
exec sleep 60"#;
        let args = ["-c".to_string(), script.to_string(), "serve".to_string()];
        let mut started = VolleyProcess::start(Path::new("sh"), &args).expect("ready");
        assert_eq!(started.addr, "127.0.0.1:7001".parse().unwrap());
        assert_eq!(started.metrics, Some("127.0.0.1:9100".parse().unwrap()));
        assert!(started.child.try_wait().unwrap().is_none(), "still serving");
        let pid = started.pid();
        drop(started);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "killed and reaped"
        );
    }

    #[test]
    fn a_process_that_ends_before_it_is_ready_is_reported_with_its_status() {
        // `false` ignores its arguments and exits 1 at once: it never writes a ready file.
        let err = VolleyProcess::start(Path::new("false"), &["serve".into()])
            .err()
            .expect("not started");
        assert!(matches!(err, StartError::Exited { .. }), "{err}");
        assert!(err.to_string().contains("exited"), "{err}");
        let err = VolleyProcess::start(Path::new("/no/such/volley"), &["serve".into()])
            .err()
            .expect("not started");
        assert!(matches!(err, StartError::Run { .. }), "{err}");
    }
}
