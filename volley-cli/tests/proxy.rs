//! `volley proxy` and `volley serve --forward` as processes, in front of a UDP service that is
//! not ours (a Python program), on loopback (D1).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Killed, free_port, scrape, volley};

const BACKEND: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
while True:
    data, addr = s.recvfrom(65535)
    s.sendto(b"backend says " + data, addr)
"#;

/// Starts `cmd` and returns it with its first line of stdout.
fn start(cmd: &mut Command) -> (Killed, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    (Killed(child), line)
}

#[test]
fn d1_volley_proxy_and_serve_forward_carry_a_real_udp_service() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("proxy-e2e");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("server.key");
    let out = volley()
        .args(["keygen", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let (_backend, port) = start(Command::new("python3").args(["-c", BACKEND]));
    let backend = format!("udp://127.0.0.1:{}", port.trim());
    let servers: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let mut _serving = Vec::new();
    for s in &servers {
        let (child, line) = start(volley().args([
            "serve",
            "--listen",
            s,
            "--key",
            key.to_str().unwrap(),
            "--forward",
            &backend,
        ]));
        assert!(line.contains("listening on"), "{line}");
        _serving.push(child);
    }
    let listen = format!("127.0.0.1:{}", free_port());
    let metrics = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let (mut proxy, line) = start(volley().args([
        "proxy",
        "--listen",
        &format!("udp://{listen}"),
        "--server-key",
        &public,
        "--metrics",
        &metrics,
        &servers[0],
        &servers[1],
    ]));
    assert!(line.contains("volley proxy: udp://"), "{line}");

    // Two applications, unaware of volley: each gets its own answers.
    for i in 0..2 {
        let app = UdpSocket::bind("127.0.0.1:0").unwrap();
        app.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for round in 0..3 {
            let text = format!("app {i} round {round}");
            app.send_to(text.as_bytes(), &listen).unwrap();
            let mut buf = [0u8; 512];
            let (n, from) = app
                .recv_from(&mut buf)
                .expect("an answer through both proxies");
            assert_eq!(from.to_string(), listen, "answers come from the proxy");
            assert_eq!(
                String::from_utf8_lossy(&buf[..n]),
                format!("backend says {text}")
            );
        }
    }
    // D5: the proxy's metrics, scraped over HTTP.
    let page = scrape(&metrics);
    assert!(page.contains("volley_proxy_flows_total 2"), "{page}");
    assert!(
        page.contains("volley_proxy_connect_failures_total 0"),
        "{page}"
    );
    assert!(
        page.contains("volley_proxy_answer_time_seconds_count 2"),
        "{page}"
    );
    // The proxy runs until told to stop; it must not have exited meanwhile.
    assert!(proxy.0.try_wait().unwrap().is_none());
    let mut rest = String::new();
    let _ = proxy.0.kill();
    let _ = proxy.0.stdout.as_mut().unwrap().read_to_string(&mut rest);
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn d2_curl_reaches_a_real_http_server_through_volley_proxy_and_serve_forward() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("proxy-tcp-e2e");
    let _ = std::fs::remove_dir_all(&dir);
    let site = dir.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("hello.txt"), "hello through volley\n").unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(site.join("big.bin"), &big).unwrap();
    let key = dir.join("server.key");
    let out = volley()
        .args(["keygen", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();

    // A real HTTP server (Python's), unaware of volley.
    let http_port = free_tcp_port().to_string();
    let (_http, line) = start(Command::new("python3").args([
        "-u",
        "-m",
        "http.server",
        &http_port,
        "--bind",
        "127.0.0.1",
        "--directory",
        site.to_str().unwrap(),
    ]));
    assert!(line.contains("Serving HTTP"), "{line}");
    let backend = format!("tcp://127.0.0.1:{http_port}");
    let servers: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_tcp_port()))
        .collect();
    let mut _serving = Vec::new();
    let mut metrics = Vec::new();
    for s in &servers {
        let m = format!("127.0.0.1:{}", free_tcp_port());
        let (child, line) = start(volley().args([
            "serve",
            "--listen",
            s,
            "--key",
            key.to_str().unwrap(),
            "--forward",
            &backend,
            "--metrics",
            &m,
        ]));
        assert!(line.contains("listening on"), "{line}");
        _serving.push(child);
        metrics.push(m);
    }
    let listen = format!("127.0.0.1:{}", free_tcp_port());
    let (mut proxy, line) = start(volley().args([
        "proxy",
        "--listen",
        &format!("tcp://{listen}"),
        "--server-key",
        &public,
        &servers[0],
        &servers[1],
    ]));
    assert!(line.contains("volley proxy: tcp://"), "{line}");

    // A real HTTP client (curl), unaware of volley.
    let curl = |path: &str| {
        let out = Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--fail",
                "--max-time",
                "20",
                &format!("http://{listen}/{path}"),
            ])
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    for _ in 0..3 {
        assert_eq!(curl("hello.txt"), b"hello through volley\n");
    }
    assert!(curl("big.bin") == big, "3 MB body arrives byte for byte");
    // D5: the forwarders' stream counters, scraped over HTTP: four streams in all, none refused.
    let counter = |page: &str, name: &str| -> u64 {
        page.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing: {page}"))
            .trim()
            .parse()
            .unwrap()
    };
    let pages: Vec<String> = metrics.iter().map(|m| scrape(m)).collect();
    let streams: u64 = pages
        .iter()
        .map(|p| counter(p, "volley_forward_streams_total"))
        .sum();
    assert_eq!(streams, 4);
    for p in &pages {
        assert_eq!(counter(p, "volley_forward_refused_total"), 0);
        assert_eq!(counter(p, "volley_forward_broken_total"), 0);
    }
    assert!(proxy.0.try_wait().unwrap().is_none());
}

#[test]
fn o1_sigterm_drains_a_serve_a_50_mb_download_completes_and_new_connections_go_elsewhere() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("drain-e2e");
    let _ = std::fs::remove_dir_all(&dir);
    let site = dir.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("hello.txt"), "hello\n").unwrap();
    let big: Vec<u8> = (0..50 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(site.join("big.bin"), &big).unwrap();
    let key = dir.join("server.key");
    let out = volley()
        .args(["keygen", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let http_port = free_tcp_port().to_string();
    let (_http, line) = start(Command::new("python3").args([
        "-u",
        "-m",
        "http.server",
        &http_port,
        "--bind",
        "127.0.0.1",
        "--directory",
        site.to_str().unwrap(),
    ]));
    assert!(line.contains("Serving HTTP"), "{line}");
    let backend = format!("tcp://127.0.0.1:{http_port}");
    let mut servers = Vec::new();
    let mut serving = Vec::new();
    let mut metrics = Vec::new();
    for _ in 0..2 {
        let s = format!("127.0.0.1:{}", free_tcp_port());
        let m = format!("127.0.0.1:{}", free_tcp_port());
        let (child, line) = start(volley().args([
            "serve",
            "--listen",
            &s,
            "--key",
            key.to_str().unwrap(),
            "--forward",
            &backend,
            "--metrics",
            &m,
        ]));
        assert!(line.contains("listening on"), "{line}");
        servers.push(s);
        serving.push(Some(child));
        metrics.push(m);
    }
    let listen = format!("127.0.0.1:{}", free_tcp_port());
    let (_proxy, line) = start(volley().args([
        "proxy",
        "--listen",
        &format!("tcp://{listen}"),
        "--server-key",
        &public,
        &servers[0],
        &servers[1],
    ]));
    assert!(line.contains("volley proxy: tcp://"), "{line}");
    let gauge = |m: &str, name: &str| -> u64 {
        scrape(m)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing"))
            .trim()
            .parse()
            .unwrap()
    };

    // A download slowed to ~25 MB/s by curl, so that it is under way for about two seconds.
    let download = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--fail",
            "--max-time",
            "60",
            "--limit-rate",
            "25M",
            &format!("http://{listen}/big.bin"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl runs");
    let start_wait = std::time::Instant::now();
    let busy = loop {
        if let Some(i) = (0..2).find(|i| gauge(&metrics[*i], "volley_forward_open_streams") == 1) {
            break i;
        }
        assert!(
            start_wait.elapsed() < Duration::from_secs(20),
            "no stream opened"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let other = 1 - busy;
    let pid = serving[busy].as_ref().unwrap().0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_millis(200));

    // New connections meanwhile: every one served, by the other server.
    let before = gauge(&metrics[other], "volley_forward_streams_total");
    for _ in 0..3 {
        let out = Command::new("curl")
            .args([
                "--silent",
                "--fail",
                "--max-time",
                "20",
                &format!("http://{listen}/hello.txt"),
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"hello\n");
    }
    assert_eq!(
        gauge(&metrics[other], "volley_forward_streams_total"),
        before + 3
    );
    assert_eq!(gauge(&metrics[busy], "volley_forward_streams_total"), 1);

    // The download completes, byte for byte, and the drained server then exits by itself.
    let out = download.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == big,
        "50 MB arrive byte for byte ({} bytes)",
        out.stdout.len()
    );
    let mut drained = serving[busy].take().unwrap();
    let give_up = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = drained.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "the drained server did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let mut said = String::new();
    let _ = drained.0.stdout.as_mut().unwrap().read_to_string(&mut said);
    assert!(said.contains("draining"), "{said}");
    assert!(said.contains("stopped"), "{said}");
}

/// A service on one port for UDP and TCP alike, as DNS servers are: a datagram is answered
/// `udp says …`; a connection gets `tcp says ` and then its own bytes, until it half-closes.
const DUAL_BACKEND: &str = r#"
import socket, threading
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("127.0.0.1", 0))
port = u.getsockname()[1]
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("127.0.0.1", port))
t.listen(64)
def udp():
    while True:
        data, addr = u.recvfrom(65535)
        u.sendto(b"udp says " + data, addr)
def conn(c):
    c.sendall(b"tcp says ")
    while True:
        data = c.recv(65536)
        if not data:
            break
        c.sendall(data)
    c.close()
threading.Thread(target=udp, daemon=True).start()
print(port, flush=True)
while True:
    c, _ = t.accept()
    threading.Thread(target=conn, args=(c,), daemon=True).start()
"#;

#[test]
fn o6_one_proxy_listens_on_udp_and_tcp_and_one_fleet_forwards_both() {
    use std::io::Write;
    let dir = common::scratch("o6-udp-and-tcp");
    let (key, public) = common::keygen(&dir);
    let (_backend, port) = start(Command::new("python3").args(["-c", DUAL_BACKEND]));
    let port = port.trim().to_string();
    let (udp, tcp) = (
        format!("udp://127.0.0.1:{port}"),
        format!("tcp://127.0.0.1:{port}"),
    );
    // Two servers, each forwarding a session to the UDP or the TCP service by its first use.
    let mut servers = Vec::new();
    for i in 0..2 {
        let (child, said) = common::start_ready(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--key",
                &key,
                "--forward",
                &udp,
                "--forward",
                &tcp,
                "--metrics",
                "127.0.0.1:0",
            ],
            &dir.join(format!("s{i}.ready")),
        );
        assert!(said["tcp"].is_string(), "a stream listener: {said}");
        servers.push((child, said));
    }
    let pool: Vec<String> = servers
        .iter()
        .map(|(_, s)| s["udp"].as_str().unwrap().to_string())
        .collect();
    let (_proxy, said) = common::start_ready(
        &[
            "proxy",
            "--listen",
            "udp://127.0.0.1:0",
            "--listen",
            "tcp://127.0.0.1:0",
            "--server-key",
            &public,
            &pool[0],
            &pool[1],
        ],
        &dir.join("proxy.ready"),
    );
    let listens: Vec<String> = said["listens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    let udp_listen = listens
        .iter()
        .find_map(|l| l.strip_prefix("udp://"))
        .unwrap();
    let tcp_listen = listens
        .iter()
        .find_map(|l| l.strip_prefix("tcp://"))
        .unwrap();
    const FLOWS: usize = 8;
    for i in 0..FLOWS {
        // A UDP flow: a socket of its own, one datagram and its answer.
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.send_to(format!("dgram {i}").as_bytes(), udp_listen)
            .unwrap();
        let mut buf = [0u8; 1500];
        let n = s.recv(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            format!("udp says dgram {i}")
        );
        // A TCP connection: its bytes come back after the service's greeting.
        let mut c = std::net::TcpStream::connect(tcp_listen).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(format!("stream {i}").as_bytes()).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert_eq!(got, format!("tcp says stream {i}"));
    }
    // Each UDP flow was a datagram session and each connection a stream, on the two servers.
    let total = |name: &str| -> u64 {
        servers
            .iter()
            .map(|(_, s)| {
                let page = scrape(s["metrics"].as_str().unwrap());
                page.lines()
                    .find_map(|l| l.strip_prefix(&format!("{name} ")[..]))
                    .unwrap_or_else(|| panic!("no {name} in {page}"))
                    .parse::<u64>()
                    .unwrap()
            })
            .sum()
    };
    assert_eq!(
        total("volley_forward_datagram_sessions_total"),
        FLOWS as u64
    );
    assert_eq!(total("volley_forward_streams_total"), FLOWS as u64);
    assert_eq!(total("volley_forward_datagrams_dropped_total"), 0);
}
