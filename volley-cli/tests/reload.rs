//! O2 with a real `volley serve`: SIGHUP re-reads its config file without dropping a session; a
//! file that does not parse keeps the running configuration, says why and is counted; signals
//! that would end the process by default do not, and SIGQUIT stops it cleanly.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{HANG_GUARD, Killed, keygen, ready, scrape, scratch, volley};

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// A gauge or counter of the metrics page at `addr`.
fn metric(addr: &str, name: &str) -> Option<u64> {
    scrape(addr)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
}

/// Waits (bounded) until `name` reads `value` at `addr`.
fn until_metric(addr: &str, name: &str, value: u64) {
    let give_up = Instant::now() + HANG_GUARD;
    while metric(addr, name) != Some(value) {
        assert!(
            Instant::now() < give_up,
            "{name} never became {value}: {:?}",
            metric(addr, name)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn config(path: &Path, capacity: u32, extra: &str) {
    std::fs::write(
        path,
        format!(
            "listen = \"127.0.0.1:0\"\nkey = \"server.key\"\ncapacity = {capacity}\n\
             metrics = \"127.0.0.1:0\"\n{extra}"
        ),
    )
    .unwrap();
}

#[test]
fn o2_sighup_reloads_the_config_file_without_dropping_a_session_and_keeps_it_when_it_is_broken() {
    let dir = scratch("reload-o2");
    let (_, public) = keygen(&dir);
    let file = dir.join("serve.toml");
    config(&file, 4, "");
    let ready_file = dir.join("serve.ready");
    let log = dir.join("serve.err");
    let out = dir.join("serve.out");
    let mut child = volley()
        // The file's log_level rules only without RUST_LOG.
        .env_remove("RUST_LOG")
        .args(["serve", "--config", file.to_str().unwrap(), "--ready-file"])
        .arg(&ready_file)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let said = ready(&mut child, &ready_file);
    let mut child = Killed(child);
    let udp: std::net::SocketAddr = said["udp"].as_str().unwrap().parse().unwrap();
    let metrics = said["metrics"].as_str().unwrap().to_string();
    assert_eq!(metric(&metrics, "volley_server_capacity"), Some(4));

    // A session, open across every reload below.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = volley::PublicKey::from_hex(&public).unwrap();
    let session = rt
        .block_on(volley::Client::new(volley::ClientConfig::new(vec![key])).connect(&[udp]))
        .unwrap();
    let echo = |text: &str| {
        rt.block_on(async {
            session.send(text.as_bytes()).await.unwrap();
            tokio::time::timeout(Duration::from_secs(10), session.recv())
                .await
                .expect("an echo")
                .unwrap()
        })
    };
    assert_eq!(&echo("before")[..], b"before");

    // A new capacity and log level take effect.
    config(&file, 8, "log_level = \"debug\"\n");
    signal(&child.0, "HUP");
    until_metric(&metrics, "volley_config_reloads_total", 1);
    until_metric(&metrics, "volley_server_capacity", 8);
    let said = std::fs::read_to_string(&out).unwrap();
    assert!(
        said.contains("capacity 4 → 8") && said.contains("log level debug"),
        "{said}"
    );
    assert_eq!(&echo("after a reload")[..], b"after a reload");

    // A file that does not parse: nothing changes, the failure is counted and said.
    std::fs::write(&file, "capacity = \"many\"\n").unwrap();
    signal(&child.0, "HUP");
    until_metric(&metrics, "volley_config_reload_failures_total", 1);
    assert_eq!(metric(&metrics, "volley_server_capacity"), Some(8));
    assert_eq!(metric(&metrics, "volley_config_reloads_total"), Some(1));
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("not reloaded from") && said.contains("the running ones stay"),
        "{said}"
    );
    // A setting that takes a restart: said, and the running value kept.
    config(&file, 8, "log_level = \"debug\"\nservice = \"other\"\n");
    signal(&child.0, "HUP");
    until_metric(&metrics, "volley_config_reloads_total", 2);
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("service changed"), "{said}");

    // Signals whose default action ends a process are logged and ignored.
    for name in ["USR1", "USR2", "ALRM"] {
        signal(&child.0, name);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "a signal ended serve"
    );
    assert_eq!(&echo("still here")[..], b"still here");
    assert_eq!(
        metric(&metrics, "volley_server_sessions_opened_total"),
        Some(1)
    );

    // SIGQUIT stops at once, cleanly: the session is told, the counters are printed.
    signal(&child.0, "QUIT");
    let give_up = Instant::now() + HANG_GUARD;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < give_up, "serve did not stop on SIGQUIT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let closed =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), session.recv()).await });
    assert!(
        matches!(closed, Ok(Err(volley::Error::Closed(_)))),
        "{closed:?}"
    );
}

/// `volley serve` (echo) on a port of the kernel's choosing: the process and its UDP address.
fn echo_server(key: &str, ready_file: &Path) -> (Killed, String) {
    let (child, said) = common::start_ready(
        &["serve", "--listen", "127.0.0.1:0", "--key", key],
        ready_file,
    );
    (child, said["udp"].as_str().unwrap().to_string())
}

/// One datagram to `proxy` from a new application address, and its echo.
fn flow(proxy: &str, text: &str) -> String {
    let app = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    app.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    app.send_to(text.as_bytes(), proxy).unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = app.recv_from(&mut buf).expect("an echo through the proxy");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn o2_o6_a_proxy_listens_on_two_addresses_and_sighup_moves_new_flows_to_the_reloaded_pool() {
    let dir = scratch("reload-proxy");
    let (key, public) = keygen(&dir);
    let (_a, a) = echo_server(&key, &dir.join("a.ready"));
    let (_b, b) = echo_server(&key, &dir.join("b.ready"));
    let file = dir.join("proxy.toml");
    let write = |servers: &str, extra: &str| {
        std::fs::write(
            &file,
            format!(
                "listen = [\"udp://127.0.0.1:0\", \"udp://127.0.0.1:0\"]\n\
                 server_keys = [\"{public}\"]\nservers = [{servers}]\n\
                 metrics = \"127.0.0.1:0\"\n{extra}"
            ),
        )
        .unwrap();
    };
    write(&format!("\"{a}\""), "");
    let (mut proxy, said) = common::start_ready(
        &["proxy", "--config", file.to_str().unwrap()],
        &dir.join("proxy.ready"),
    );
    let listens: Vec<String> = said["listens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().trim_start_matches("udp://").to_string())
        .collect();
    assert_eq!(listens.len(), 2, "{said}");
    let metrics = said["metrics"].as_str().unwrap().to_string();
    // Both addresses carry flows, over the one pool.
    for (i, l) in listens.iter().enumerate() {
        assert_eq!(flow(l, &format!("via {i}")), format!("via {i}"));
    }
    let flows = |server: &str| {
        metric(
            &metrics,
            &format!("volley_proxy_server_flows_total{{server=\"{server}\"}}"),
        )
        .unwrap_or(0)
    };
    assert_eq!((flows(&a), flows(&b)), (2, 0));

    // The pool now names b only: new flows go there, without a restart.
    write(&format!("\"{b}\""), "");
    signal(&proxy.0, "HUP");
    until_metric(&metrics, "volley_config_reloads_total", 1);
    for l in &listens {
        assert_eq!(flow(l, "after"), "after");
    }
    assert_eq!((flows(&a), flows(&b)), (2, 2));

    // A pool that does not parse: counted, and the running pool stays.
    write("\"not an address\"", "");
    signal(&proxy.0, "HUP");
    until_metric(&metrics, "volley_config_reload_failures_total", 1);
    assert_eq!(flow(&listens[0], "still"), "still");
    assert_eq!(flows(&b), 3);
    assert!(proxy.0.try_wait().unwrap().is_none());
}
