//! `--ready-file`: `volley serve` and `volley proxy` started on ephemeral ports (port 0) say
//! where they listen in one JSON object, and those addresses are the ones that work.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};

use common::{HANG_GUARD, forwarding_server, keygen, run, scrape, scratch, start_ready, text};

/// A proxy's `listen`: `SCHEME://IP:PORT`.
fn listening(said: &serde_json::Value, scheme: &str) -> SocketAddr {
    said["listen"]
        .as_str()
        .and_then(|l| l.strip_prefix(scheme)?.strip_prefix("://"))
        .unwrap_or_else(|| panic!("{scheme}://…, not {}", said["listen"]))
        .parse()
        .unwrap()
}

fn addr(v: &serde_json::Value) -> SocketAddr {
    v.as_str()
        .unwrap_or_else(|| panic!("an address, not {v}"))
        .parse()
        .unwrap()
}

#[test]
fn serve_and_proxy_on_port_0_name_their_real_udp_addresses_in_the_ready_file() {
    let dir = scratch("ready-udp");
    let (key, public) = keygen(&dir);
    let (serve, said) = start_ready(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--key",
            &key,
            "--metrics",
            "127.0.0.1:0",
        ],
        &dir.join("serve.json"),
    );
    assert_eq!(said["command"], "serve");
    assert_eq!(said["pid"], serve.0.id());
    assert_eq!(said["public_key"], public.as_str());
    assert!(said["tcp"].is_null(), "no stream listener without tcp://");
    let udp = addr(&said["udp"]);
    assert_ne!(udp.port(), 0, "the port the kernel chose");
    assert!(!dir.join("serve.json.tmp").exists());
    // The address works: a client races it and gets its echo.
    let out = run(&[
        "connect",
        "--server-key",
        &public,
        "--send",
        "where are you?",
        &udp.to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(r#"reply:      "where are you?""#));
    let page = scrape(&addr(&said["metrics"]).to_string());
    assert!(
        page.contains("volley_server_sessions_opened_total"),
        "{page}"
    );

    let (proxy, said) = start_ready(
        &[
            "proxy",
            "--listen",
            "udp://127.0.0.1:0",
            "--server-key",
            &public,
            "--metrics",
            "127.0.0.1:0",
            &udp.to_string(),
        ],
        &dir.join("proxy.json"),
    );
    assert_eq!(said["command"], "proxy");
    assert_eq!(said["pid"], proxy.0.id());
    let listen = listening(&said, "udp");
    assert_ne!(listen.port(), 0);
    // A datagram through the proxy comes back from the server's echo service.
    let app = UdpSocket::bind("127.0.0.1:0").unwrap();
    app.set_read_timeout(Some(HANG_GUARD)).unwrap();
    app.send_to(b"through the proxy", listen).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = app.recv_from(&mut buf).expect("the echo");
    assert_eq!((&buf[..n], from), (&b"through the proxy"[..], listen));
    let page = scrape(&addr(&said["metrics"]).to_string());
    assert!(page.contains("volley_proxy_flows_total 1"), "{page}");
}

#[test]
fn a_forwarding_server_and_a_tcp_proxy_name_their_stream_listeners() {
    let dir = scratch("ready-tcp");
    let (key, public) = keygen(&dir);
    // A TCP echo: the service behind the forwarder.
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in backend.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let (_serve, said) = forwarding_server(
        &key,
        &format!("tcp://{backend_addr}"),
        &dir.join("serve.json"),
    );
    let udp = addr(&said["udp"]);
    assert_eq!(addr(&said["tcp"]), udp, "streams arrive on the UDP address");
    assert!(said["metrics"].is_null(), "no metrics without --metrics");

    let (_proxy, said) = start_ready(
        &[
            "proxy",
            "--listen",
            "tcp://127.0.0.1:0",
            "--server-key",
            &public,
            &udp.to_string(),
        ],
        &dir.join("proxy.json"),
    );
    assert!(said["metrics"].is_null());
    let listen = listening(&said, "tcp");
    let mut conn = TcpStream::connect(listen).unwrap();
    conn.set_read_timeout(Some(HANG_GUARD)).unwrap();
    conn.write_all(b"a stream through volley").unwrap();
    let mut back = [0u8; 23];
    conn.read_exact(&mut back).expect("the backend's echo");
    assert_eq!(&back, b"a stream through volley");
}
