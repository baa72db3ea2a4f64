//! Backend health (O3) with real processes: `volley serve --forward` in front of a live and a
//! dead UDP service, `volley proxy` over both, and the probes an orchestrator would use.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Killed, keygen, scrape, scratch, start_ready};

const BACKEND: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
print(s.getsockname()[1], flush=True)
while True:
    data, addr = s.recvfrom(65535)
    s.sendto(b"backend says " + data, addr)
"#;

/// A Python UDP service on `port` (0: any), and the port it got.
fn backend(port: u16) -> (Killed, u16) {
    let mut child = Command::new("python3")
        .args(["-c", BACKEND, &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 starts");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    (Killed(child), line.trim().parse().expect("a port"))
}

/// `GET path` from `addr`: the status line and the body.
fn get(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).unwrap();
    let status = page.lines().next().unwrap_or_default().to_string();
    let body = page
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

/// Waits (bounded) until `GET /readyz` from `addr` answers `status`.
fn readyz_becomes(addr: &str, status: &str) -> String {
    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        let (line, body) = get(addr, "/readyz");
        if line.contains(status) {
            return body;
        }
        assert!(
            Instant::now() < give_up,
            "/readyz at {addr} still says {line:?} {body:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn serve(key: &Path, backend: u16, ready: &Path) -> (Killed, String) {
    let (child, said) = start_ready(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--key",
            key.to_str().unwrap(),
            "--forward",
            &format!("udp://127.0.0.1:{backend}"),
            "--health-send",
            "ping",
            "--health-expect",
            "backend says ping",
            "--health-interval",
            "200ms",
            "--metrics",
            "127.0.0.1:0",
        ],
        ready,
    );
    (child, said["metrics"].as_str().unwrap().to_string())
}

#[test]
fn o3_a_server_whose_backend_is_dead_wins_no_race_no_flow_is_lost_and_readyz_follows_the_backend() {
    let dir = scratch("health-o3");
    let (key, public) = keygen(&dir);
    let (_live, live_port) = backend(0);
    // A port nothing listens on (bound, then let go): the second server's backend is dead.
    let dead_port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_a, a_metrics) = serve(Path::new(&key), live_port, &dir.join("a.ready"));
    let (_b, b_metrics) = serve(Path::new(&key), dead_port, &dir.join("b.ready"));
    let a_udp = std::fs::read_to_string(dir.join("a.ready")).unwrap();
    let b_udp = std::fs::read_to_string(dir.join("b.ready")).unwrap();
    let udp = |text: &str| {
        serde_json::from_str::<serde_json::Value>(text).unwrap()["udp"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (a, b) = (udp(&a_udp), udp(&b_udp));

    // The orchestrator's view: both processes live; only the one whose backend answers is
    // ready, and the other says why.
    readyz_becomes(&a_metrics, "200");
    let why = readyz_becomes(&b_metrics, "503");
    assert!(why.contains("down") && why.contains("refused"), "{why}");
    for m in [&a_metrics, &b_metrics] {
        let (status, body) = get(m, "/healthz");
        assert!(
            status.contains("200") && body == "alive\n",
            "{status} {body}"
        );
    }

    let (_proxy, said) = start_ready(
        &[
            "proxy",
            "--listen",
            "udp://127.0.0.1:0",
            "--server-key",
            &public,
            &a,
            &b,
        ],
        &dir.join("proxy.ready"),
    );
    let listen = said["listen"]
        .as_str()
        .unwrap()
        .trim_start_matches("udp://")
        .to_string();
    // Twenty new flows (twenty application addresses): every one answered.
    let mut answered = 0;
    for i in 0..20 {
        let app = UdpSocket::bind("127.0.0.1:0").unwrap();
        app.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let text = format!("flow {i}");
        app.send_to(text.as_bytes(), &listen).unwrap();
        let mut buf = [0u8; 512];
        if let Ok((n, _)) = app.recv_from(&mut buf) {
            assert_eq!(
                String::from_utf8_lossy(&buf[..n]),
                format!("backend says {text}")
            );
            answered += 1;
        }
    }
    assert_eq!(answered, 20, "flows lost to the server with a dead backend");
    let page = scrape(&b_metrics);
    assert!(page.contains("volley_forward_backend_up 0"), "{page}");
    assert!(page.contains("volley_server_offers_sent_total 0"), "{page}");
    assert!(
        page.contains("volley_forward_backend_changes_total 1"),
        "{page}"
    );
    let page = scrape(&a_metrics);
    assert!(page.contains("volley_forward_backend_up 1"), "{page}");

    // The dead backend comes back: its server is ready again, with no restart.
    let (_revived, port) = backend(dead_port);
    assert_eq!(port, dead_port);
    readyz_becomes(&b_metrics, "200");
    let page = scrape(&b_metrics);
    assert!(page.contains("volley_forward_backend_up 1"), "{page}");
    assert!(
        page.contains("volley_forward_backend_changes_total 2"),
        "{page}"
    );
}
