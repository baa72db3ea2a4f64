//! `volley connect --send` in front of a slow service (O7): copies of a request must not become
//! new work for the backend. Many clients at once against a backend slower than their patience
//! once made a retry storm (every client re-sent its datagram every few round trips, a
//! forwarding server handed every copy to the backend, and the queue only grew).

mod common;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Killed, finish, forwarding_server, keygen, scratch, text, volley};

/// A UDP service with 4 workers that take 200 ms per request and count the requests they get;
/// `COUNT?` (not counted) asks for the count.
const SLOW_BACKEND: &str = r#"
import socket, threading, queue, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
work = queue.Queue()
count = 0
def worker():
    while True:
        data, addr = work.get()
        time.sleep(0.2)
        s.sendto(b"backend says " + data, addr)
for _ in range(4):
    threading.Thread(target=worker, daemon=True).start()
while True:
    data, addr = s.recvfrom(65535)
    if data == b"COUNT?":
        s.sendto(str(count).encode(), addr)
        continue
    count += 1
    work.put((data, addr))
"#;

/// Asks the backend how many requests it got.
fn requests_seen(backend: &str) -> u64 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.send_to(b"COUNT?", backend).unwrap();
    let mut buf = [0u8; 64];
    let n = s.recv(&mut buf).expect("the backend answers COUNT?");
    String::from_utf8_lossy(&buf[..n]).parse().unwrap()
}

#[test]
fn o7_concurrent_connect_send_to_a_slow_backend_makes_one_request_each() {
    const CLIENTS: usize = 16;
    let dir = scratch("o7-send-once");
    let (key, public) = keygen(&dir);
    let mut backend = Command::new("python3")
        .args(["-c", SLOW_BACKEND])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    let mut port = String::new();
    BufReader::new(backend.stdout.as_mut().unwrap())
        .read_line(&mut port)
        .unwrap();
    let _backend = Killed(backend);
    let backend = format!("127.0.0.1:{}", port.trim());
    let (_server, ready) =
        forwarding_server(&key, &format!("udp://{backend}"), &dir.join("serve.ready"));
    let server = ready["udp"].as_str().unwrap().to_string();

    // 16 requests on 4 workers of 200 ms: the last reply comes after about 800 ms, several
    // times the round trip any re-sending client would have waited before sending again.
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            volley()
                .args([
                    "connect",
                    "--server-key",
                    &public,
                    "--timeout",
                    "30s",
                    "--send",
                    &format!("client {i}"),
                    &server,
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("volley connect starts")
        })
        .collect();
    for (i, child) in clients.into_iter().enumerate() {
        let out = finish(child);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "client {i}: {}\n{stdout}",
            text(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("reply:      \"backend says client {i}\"")),
            "client {i}: {stdout}"
        );
    }
    assert_eq!(
        requests_seen(&backend),
        CLIENTS as u64,
        "one request per client reached the backend, not a copy more"
    );
}

#[test]
fn o7_resend_every_is_opt_in_bounded_and_documented() {
    let key = "1".repeat(64);
    let out = common::run(&[
        "connect",
        "--server-key",
        &key,
        "--send",
        "x",
        "--resend-every",
        "20ms",
        "127.0.0.1:9",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("--resend-every must be at least 100ms"),
        "{err}"
    );
    let out = common::run(&["connect", "--help"]);
    let help = text(&out.stdout);
    assert!(help.contains("--resend-every <DURATION>"), "{help}");
    assert!(help.contains("sent once per session"), "{help}");
}
