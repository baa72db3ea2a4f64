//! O2 with a real `volley serve`: SIGHUP re-reads its config file without dropping a session; a
//! file that does not parse keeps the running configuration, says why and is counted; signals
//! that would end the process by default do not, and SIGQUIT stops it cleanly.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
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
