//! What the process tests share: running the `volley` binary, scratch folders and keys, and
//! waiting for a process — to say it is ready, or to end — with a bound far above what it should
//! take (a hang guard, never a timing assertion: a slow machine only makes them wait longer).

// Each test file uses a part of these helpers.
#![allow(dead_code)]

use std::io::Read;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a process may take to start, or to end once it should: far above what any of
/// them needs, so that reaching it means a hang, not a slow machine.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

pub fn volley() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_volley"));
    c.env("RUST_LOG", "warn");
    c
}

/// Runs `volley ARGS…` to its end (within [`HANG_GUARD`]).
pub fn run(args: &[&str]) -> Output {
    let child = volley()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("volley runs");
    finish(child)
}

/// Waits for `child` to end, collecting whatever of its stdout and stderr is piped. It ends when
/// both pipes close (the process exited); a process still running after [`HANG_GUARD`] is killed
/// and the test fails.
pub fn finish(mut child: Child) -> Output {
    let (tx, rx) = mpsc::channel();
    let mut readers = 0;
    for (which, pipe) in [
        (
            0,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            1,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        if let Some(mut pipe) = pipe {
            readers += 1;
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                let _ = tx.send((which, bytes));
            });
        }
    }
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let give_up = Instant::now() + HANG_GUARD;
    for _ in 0..readers {
        match rx.recv_timeout(give_up.saturating_duration_since(Instant::now())) {
            Ok((0, bytes)) => stdout = bytes,
            Ok((_, bytes)) => stderr = bytes,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("volley still running after {HANG_GUARD:?}: it hangs");
            }
        }
    }
    let status = child.wait().expect("waits for volley");
    Output {
        status,
        stdout,
        stderr,
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh directory under the target dir for this test's files.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A new key file in `dir`: its path and its public key.
pub fn keygen(dir: &Path) -> (String, String) {
    let key = dir.join("server.key");
    let out = run(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    (
        key.to_str().unwrap().to_string(),
        text(&out.stdout).trim().to_string(),
    )
}

/// A free loopback UDP port (bound, then released for the server to take).
pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when the test ends, however it ends.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What `child` wrote to its `--ready-file` `path`, once it is there. The process ending first
/// fails the test with its status, and so does [`HANG_GUARD`] passing.
pub fn ready(child: &mut Child, path: &Path) -> serde_json::Value {
    let give_up = Instant::now() + HANG_GUARD;
    loop {
        // The file appears whole (written aside, then renamed) or not at all.
        if let Ok(text) = std::fs::read_to_string(path) {
            return serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: {e}: {text:?}", path.display()));
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("volley ended ({status}) before writing {}", path.display());
        }
        assert!(
            Instant::now() < give_up,
            "no {} after {HANG_GUARD:?}: volley hangs",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `volley ARGS… --ready-file PATH` and returns it with what it wrote there.
pub fn start_ready(args: &[&str], path: &Path) -> (Killed, serde_json::Value) {
    let mut child = volley()
        .args(args)
        .arg("--ready-file")
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("volley starts");
    let said = ready(&mut child, path);
    (Killed(child), said)
}

/// `volley serve --forward BACKEND` on a port of the kernel's choosing, once ready, and what its
/// ready file (`path`) says.
pub fn forwarding_server(key: &str, backend: &str, path: &Path) -> (Killed, serde_json::Value) {
    let listen = ["serve", "--listen", "127.0.0.1:0", "--key", key];
    start_ready(&[&listen[..], &["--forward", backend]].concat(), path)
}

/// The page `GET /metrics` returns from `addr`.
pub fn scrape(addr: &str) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).unwrap();
    page
}
