//! What `volley` says when something is wrong (O7), as a user sees it: real processes, their
//! stdout and stderr.

mod common;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use common::{HANG_GUARD, Killed, forwarding_server, keygen, ready, scratch, volley};

/// `volley ARGS… --ready-file PATH`, its stderr read line by line: the process, what its ready
/// file says, and its stderr's lines.
fn start_logging(
    args: &[&str],
    path: &Path,
) -> (Killed, serde_json::Value, mpsc::Receiver<String>) {
    let mut child: Child = volley()
        .args(args)
        .arg("--ready-file")
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("volley starts");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let said = ready(&mut child, path);
    (Killed(child), said, rx)
}

/// The first line of `lines` that contains `needle` (within [`HANG_GUARD`]); every line read
/// meanwhile is in the panic message if none does.
fn line_with(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    let give_up = Instant::now() + HANG_GUARD;
    let mut seen = Vec::new();
    loop {
        match lines.recv_timeout(give_up.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no line with {needle:?} after {HANG_GUARD:?}; saw {seen:#?}"),
        }
    }
}

/// Sends one datagram to a UDP proxy, as an application would.
fn poke(proxy: &str) {
    let app = UdpSocket::bind("127.0.0.1:0").unwrap();
    app.send_to(b"anyone?", proxy).unwrap();
}

#[test]
fn o7_the_proxy_names_a_wrong_server_key_and_an_unlisted_client_key() {
    let dir = scratch("o7-proxy-keys");
    let (key, public) = keygen(&dir);
    let backend = UdpSocket::bind("127.0.0.1:0").unwrap();
    let backend = format!("udp://{}", backend.local_addr().unwrap());
    let (_open, said) = forwarding_server(&key, &backend, &dir.join("open.ready"));
    let open = said["udp"].as_str().unwrap().to_string();
    // A second server that lists one client key, not the proxy's.
    let listed = other_key(&dir);
    std::fs::write(dir.join("clients.allow"), format!("{listed} someone\n")).unwrap();
    let (_closed, said) = common::start_ready(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--key",
            &key,
            "--allow",
            dir.join("clients.allow").to_str().unwrap(),
            "--forward",
            &backend,
        ],
        &dir.join("closed.ready"),
    );
    let closed = said["udp"].as_str().unwrap().to_string();

    let wrong = "1".repeat(64);
    let (_p1, said, lines) = start_logging(
        &[
            "proxy",
            "--listen",
            "udp://127.0.0.1:0",
            "--server-key",
            &wrong,
            &open,
        ],
        &dir.join("p1.ready"),
    );
    poke(
        said["listen"]
            .as_str()
            .unwrap()
            .trim_start_matches("udp://"),
    );
    let line = line_with(&lines, "no session");
    assert!(
        line.contains("WARN"),
        "a setting to fix is a warning: {line}"
    );
    assert!(
        line.contains("a key other than the pinned server key") && line.contains("--server-key"),
        "{line}"
    );

    let (_p2, said, lines) = start_logging(
        &[
            "proxy",
            "--listen",
            "udp://127.0.0.1:0",
            "--server-key",
            &public,
            &closed,
        ],
        &dir.join("p2.ready"),
    );
    poke(
        said["listen"]
            .as_str()
            .unwrap()
            .trim_start_matches("udp://"),
    );
    let line = line_with(&lines, "no session");
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("accepted no session for this client key")
            && line.contains("allow-list")
            && line.contains("--key"),
        "{line}"
    );
}

/// A client public key that is not the proxy's (a fresh key file's).
fn other_key(dir: &Path) -> String {
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    keygen(&other).1
}

/// A DNS server that answers every query NXDOMAIN (the name does not exist).
const NXDOMAIN_DNS: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
while True:
    q, addr = s.recvfrom(4096)
    if len(q) < 13:
        continue
    end = 12
    while end < len(q) and q[end] != 0:
        end += q[end] + 1
    end += 5
    flags = bytes([0x80 | (q[2] & 0x79), 0x80 | 3])
    s.sendto(q[:2] + flags + q[4:6] + bytes(6) + q[12:end], addr)
"#;

#[test]
fn o7_a_pool_name_that_does_not_resolve_is_warned_about_in_words() {
    let dir = scratch("o7-pool-name");
    let (key, public) = keygen(&dir);
    let (_server, said) = common::start_ready(
        &["serve", "--listen", "127.0.0.1:0", "--key", &key],
        &dir.join("serve.ready"),
    );
    let server = said["udp"].as_str().unwrap().to_string();
    let mut dns = std::process::Command::new("python3")
        .args(["-c", NXDOMAIN_DNS])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    let mut port = String::new();
    BufReader::new(dns.stdout.as_mut().unwrap())
        .read_line(&mut port)
        .unwrap();
    let _dns = Killed(dns);
    let out = common::run(&[
        "connect",
        "--dns-server",
        &format!("127.0.0.1:{}", port.trim()),
        "--server-key",
        &public,
        "--timeout",
        "10s",
        "--send",
        "hi",
        &server,
        "typo.example:7001",
    ]);
    let stderr = common::text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        common::text(&out.stdout).contains("reply:      \"hi\""),
        "the entry that resolved is raced"
    );
    let warning = stderr
        .lines()
        .find(|l| l.contains("WARN") && l.contains("typo.example:7001"))
        .unwrap_or_else(|| panic!("no warning about the entry: {stderr}"));
    assert!(
        warning.contains("typo.example. does not exist (NXDOMAIN)")
            && warning.contains("left out of the pool"),
        "{warning}"
    );
    assert!(!warning.contains("Query {"), "{warning}");
}

#[test]
fn o7_serve_listens_on_a_host_name_and_proxy_listen_says_what_to_write() {
    let dir = scratch("o7-listen");
    let (key, public) = keygen(&dir);
    let (_server, said) = common::start_ready(
        &["serve", "--listen", "localhost:0", "--key", &key],
        &dir.join("serve.ready"),
    );
    let server = said["udp"].as_str().unwrap().to_string();
    let ip = server.parse::<std::net::SocketAddr>().unwrap().ip();
    assert!(ip.is_loopback(), "{server}");
    let out = common::run(&[
        "connect",
        "--server-key",
        &public,
        "--timeout",
        "10s",
        "--send",
        "named",
        &server,
    ]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));

    let out = common::run(&["serve", "--listen", "localhost", "--key", &key]);
    let err = common::text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--listen takes IP:PORT or HOST:PORT"), "{err}");

    let out = common::run(&[
        "proxy",
        "--listen",
        "localhost:5300",
        "--server-key",
        &public,
        &server,
    ]);
    let err = common::text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("write udp://localhost:5300 or tcp://localhost:5300"),
        "{err}"
    );
    let help = common::text(&common::run(&["proxy", "--help"]).stdout);
    assert!(
        help.contains("udp://HOST:PORT or tcp://HOST:PORT") && help.contains("scheme is required"),
        "{help}"
    );
}

/// Runs `volley ARGS…` until its ready file is there, then stops it (SIGKILL: what it said up to
/// then is all that is asked of it) and returns its stdout and stderr.
fn said_at_start(args: &[&str], path: &Path, env: &[(&str, &str)]) -> (String, String) {
    let mut child = volley()
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .args(args)
        .arg("--ready-file")
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("volley starts");
    ready(&mut child, path);
    // The banner lines are flushed before the ready file is written.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let _ = child.kill();
    let out = common::finish(child);
    (common::text(&out.stdout), common::text(&out.stderr))
}

#[test]
fn o7_json_logs_carry_every_line_the_banner_is_said_once_and_names_the_backend() {
    let dir = scratch("o7-logs");
    let (key, _) = keygen(&dir);
    let backend = UdpSocket::bind("127.0.0.1:0").unwrap();
    let backend = backend.local_addr().unwrap().to_string();
    let serve = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--key",
        &key,
        "--forward",
        &format!("udp://{backend}"),
    ];
    let (stdout, stderr) = said_at_start(&serve, &dir.join("plain.ready"), &[]);
    let banners: Vec<_> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| l.contains("listening"))
        .collect();
    assert_eq!(banners.len(), 1, "one start banner: {banners:#?}");
    assert!(
        banners[0].contains(&format!("forwarding to udp://{backend}")),
        "{}",
        banners[0]
    );

    // --log-format json, and the same from a config file's log_format: every line on either
    // stream is a JSON object.
    let config = dir.join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "log_format = \"json\"\nlisten = \"127.0.0.1:0\"\nkey = \"server.key\"\nforward = \
             \"udp://{backend}\"\n"
        ),
    )
    .unwrap();
    let flag = [&serve[..], &["--log-format", "json"]].concat();
    let from_file = ["serve", "--config", config.to_str().unwrap()];
    for (n, args) in [&flag[..], &from_file[..]].into_iter().enumerate() {
        let (stdout, stderr) = said_at_start(args, &dir.join(format!("json-{n}.ready")), &[]);
        let mut messages = Vec::new();
        for line in stdout.lines().chain(stderr.lines()) {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
            messages.push(v["fields"]["message"].as_str().unwrap().to_string());
        }
        assert!(
            messages
                .iter()
                .any(|m| m.contains("volley serve: listening on")),
            "{messages:#?}"
        );
    }

    // NO_COLOR: no escape codes, even on stderr (not a terminal here either way, so this holds
    // the flag to its word rather than proving the terminal case).
    let (_, stderr) = said_at_start(&serve, &dir.join("nc.ready"), &[("NO_COLOR", "1")]);
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

#[test]
fn o6_serve_takes_one_backend_per_scheme_and_says_so() {
    let dir = scratch("o6-two-udp");
    let (key, _) = keygen(&dir);
    let out = common::run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--key",
        &key,
        "--forward",
        "udp://127.0.0.1:9000",
        "--forward",
        "udp://127.0.0.1:9001",
    ]);
    assert!(!out.status.success());
    let said = common::text(&out.stderr);
    assert!(
        said.contains("--forward takes one udp:// service"),
        "{said}"
    );
}
