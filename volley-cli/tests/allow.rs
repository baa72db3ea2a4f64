//! Only your clients, with the `volley` binary as processes (A1, A2): client key files, `serve
//! --allow` and its config-file forms, SIGHUP reloads, and curl reaching Python's HTTP server
//! through `volley proxy` and `volley serve --forward tcp://` only with a listed key.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{HANG_GUARD, Killed, ready, run, scrape, scratch, text, volley};

/// `volley keygen --out DIR/NAME`: the key file's path and its public key.
fn keygen(dir: &Path, name: &str) -> (String, String) {
    let key = dir.join(name);
    let out = run(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    (
        key.to_str().unwrap().to_string(),
        text(&out.stdout).trim().to_string(),
    )
}

/// A process whose stdout and stderr go to files beside `base` (`base.out`, `base.err`), with
/// `RUST_LOG=info`, started with `--ready-file base.ready`; returned with what it wrote there.
fn start_logged(args: &[&str], base: &Path) -> (Killed, serde_json::Value) {
    let ready_file = base.with_extension("ready");
    let _ = std::fs::remove_file(&ready_file);
    let mut child = volley()
        .env("RUST_LOG", "info")
        .args(args)
        .arg("--ready-file")
        .arg(&ready_file)
        .stdout(std::fs::File::create(base.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(base.with_extension("err")).unwrap())
        .spawn()
        .expect("volley starts");
    let said = ready(&mut child, &ready_file);
    (Killed(child), said)
}

/// Everything `base`'s process wrote so far, stdout and stderr.
fn logs(base: &Path) -> String {
    let out = std::fs::read_to_string(base.with_extension("out")).unwrap_or_default();
    let err = std::fs::read_to_string(base.with_extension("err")).unwrap_or_default();
    format!("{out}{err}")
}

/// Waits (bounded by the hang guard) until `base`'s logs hold `what`, `times` times.
fn until_logged(base: &Path, what: &str, times: usize) -> String {
    let give_up = Instant::now() + HANG_GUARD;
    loop {
        let l = logs(base);
        if l.matches(what).count() >= times {
            return l;
        }
        assert!(
            Instant::now() < give_up,
            "{what:?} ×{times} never logged by {}:\n{l}",
            base.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn hangup(child: &Child) {
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

fn still_running(child: &mut Killed, what: &str) {
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "{what} ended: {:?}",
        child.0.try_wait()
    );
}

/// A counter of the metrics page at `addr`.
fn metric(addr: &str, name: &str) -> Option<u64> {
    scrape(addr)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(|v| v.trim().parse().unwrap())
}

#[test]
fn a1_connect_with_a_listed_key_gets_a_session_and_an_unlisted_one_is_told_why() {
    let dir = scratch("allow-connect");
    let (server_key, server_public) = keygen(&dir, "server.key");
    let (alice, alice_public) = keygen(&dir, "alice.key");
    let (mallory, _) = keygen(&dir, "mallory.key");
    let list = dir.join("clients.allow");
    std::fs::write(&list, format!("# who may connect\n{alice_public} alice\n")).unwrap();
    let base = dir.join("serve");
    let (_server, said) = start_logged(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--key",
            &server_key,
            "--allow",
            list.to_str().unwrap(),
        ],
        &base,
    );
    let addr = said["udp"].as_str().unwrap().to_string();
    let l = until_logged(&base, "allow-list", 1);
    assert!(l.contains("1 client key(s)"), "{l}");

    let out = run(&[
        "connect",
        "--server-key",
        &server_public,
        "--key",
        &alice,
        "--send",
        "hi",
        &addr,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("reply:"));

    for key in [Some(&mallory), None] {
        let mut argv = vec!["connect", "--server-key", &server_public, "--timeout", "2"];
        if let Some(k) = key {
            argv.extend(["--key", k]);
        }
        argv.push(&addr);
        let out = run(&argv);
        let err = text(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("the servers answered but accepted no session for this client key"),
            "{err}"
        );
        assert!(!err.contains("no server answered"), "{err}");
        match key {
            Some(k) => assert!(err.contains(&format!("volley pubkey {k}")), "{err}"),
            None => assert!(err.contains("without --key"), "{err}"),
        }
    }
}

#[test]
fn a1_serve_reads_its_allow_list_from_a_config_file_and_names_a_bad_file_and_line() {
    let dir = scratch("allow-config");
    let (_, server_public) = keygen(&dir, "server.key");
    let (alice, alice_public) = keygen(&dir, "alice.key");
    let (_, bob_public) = keygen(&dir, "bob.key");
    let config = dir.join("serve.toml");
    let write_config = |allow: &str| {
        std::fs::write(
            &config,
            format!("listen = \"127.0.0.1:0\"\nkey = \"server.key\"\n{allow}\n"),
        )
        .unwrap();
    };
    let serve = |extra: &[&str]| {
        let mut argv = vec!["serve", "--config", config.to_str().unwrap()];
        argv.extend_from_slice(extra);
        run(&argv)
    };

    // A bad entry, a bad line in a file, and two lists at once: each refused, naming where.
    write_config(&format!("allow = [\"{alice_public} alice\", \"zz bob\"]"));
    let err = text(&serve(&[]).stderr);
    assert!(
        err.contains("serve.toml") && err.contains("entry 2") && err.contains("\"zz\""),
        "{err}"
    );
    let list = dir.join("clients.allow");
    std::fs::write(
        &list,
        format!("{alice_public} alice\n\n{bob_public}x bob\n"),
    )
    .unwrap();
    write_config("allow_file = \"clients.allow\"");
    let err = text(&serve(&[]).stderr);
    assert!(
        err.contains(list.to_str().unwrap()) && err.contains("line 3"),
        "{err}"
    );
    let err = text(&serve(&["--allow", list.to_str().unwrap()]).stderr);
    assert!(err.contains("line 3"), "--allow names the file too: {err}");
    write_config(&format!(
        "allow = [\"{alice_public}\"]\nallow_file = \"clients.allow\""
    ));
    let err = text(&serve(&[]).stderr);
    assert!(err.contains("`allow` and `allow_file`"), "{err}");

    // Inline entries, then replaced in the file and reloaded with SIGHUP.
    write_config(&format!("allow = [\"{alice_public} alice\"]"));
    let base = dir.join("serve");
    let (mut server, said) = start_logged(&["serve", "--config", config.to_str().unwrap()], &base);
    let addr = said["udp"].as_str().unwrap().to_string();
    let connect = |key: &str| {
        run(&[
            "connect",
            "--server-key",
            &server_public,
            "--key",
            key,
            "--timeout",
            "2",
            &addr,
        ])
    };
    assert!(connect(&alice).status.success());
    write_config(&format!("allow = [\"{bob_public} bob\"]"));
    hangup(&server.0);
    let l = until_logged(&base, "allow-list reloaded", 1);
    assert!(l.contains("serve.toml: 1 client key(s)"), "{l}");
    still_running(&mut server, "serve after SIGHUP");
    let out = connect(&alice);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("accepted no session"));
}

/// Bytes of `/slow`, which Python's server sends in 16 KiB pieces 50 ms apart: 10 s of transfer.
const SLOW_LEN: u64 = 200 * 16384;

/// Python's HTTP server on loopback, serving `site`, that says "connection" on stdout for each
/// TCP connection it accepts (counted into the returned counter), and serves `/slow` slowly (a
/// slow backend: whatever the client has received is all that was sent, no buffer to drain).
fn http_server(site: &Path) -> (Killed, u16, Arc<AtomicUsize>) {
    const SERVER: &str = r#"
import functools, http.server, sys, time
class Handler(http.server.SimpleHTTPRequestHandler):
    def setup(self):
        print("connection", flush=True)
        super().setup()
    def do_GET(self):
        if self.path != "/slow":
            return super().do_GET()
        self.send_response(200)
        self.send_header("Content-Length", str(200 * 16384))
        self.end_headers()
        for _ in range(200):
            self.wfile.write(b"x" * 16384)
            self.wfile.flush()
            time.sleep(0.05)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(
    ("127.0.0.1", 0), functools.partial(Handler, directory=sys.argv[1]))
print(server.server_address[1], flush=True)
server.serve_forever()
"#;
    let mut child = Command::new("python3")
        .args(["-u", "-c", SERVER, site.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = lines
        .next()
        .expect("the port")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line.trim() == "connection" {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (Killed(child), port, connections)
}

/// `curl http://proxy/path`: its output and whether it succeeded.
fn curl(proxy: &str, path: &str) -> (bool, Vec<u8>, String) {
    let out = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--fail",
            "--max-time",
            "20",
            &format!("http://{proxy}/{path}"),
        ])
        .output()
        .expect("curl runs");
    (out.status.success(), out.stdout, text(&out.stderr))
}

fn tcp_listen(said: &serde_json::Value) -> String {
    said["listen"]
        .as_str()
        .unwrap()
        .strip_prefix("tcp://")
        .unwrap()
        .to_string()
}

#[test]
fn a2_curl_reaches_the_backend_only_with_a_listed_key_and_sighup_ends_a_revoked_transfer() {
    let dir = scratch("allow-e2e");
    let site = dir.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("hello.txt"), "hello, listed client\n").unwrap();
    let (_http, http_port, connections) = http_server(&site);

    let (server_key, server_public) = keygen(&dir, "server.key");
    let (alice, alice_public) = keygen(&dir, "alice.key");
    let (mallory, mallory_public) = keygen(&dir, "mallory.key");
    let (_, bob_public) = keygen(&dir, "bob.key");
    let list = dir.join("clients.allow");
    std::fs::write(&list, format!("{alice_public} alice\n{bob_public} bob\n")).unwrap();

    let serve_log = dir.join("serve");
    let (mut server, said) = start_logged(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--key",
            &server_key,
            "--allow",
            list.to_str().unwrap(),
            "--forward",
            &format!("tcp://127.0.0.1:{http_port}"),
            // Passive health checks only: the backend's connection count is what this test
            // reads, and an active check would add one every 2 s.
            "--health-interval",
            "0",
            "--metrics",
            "127.0.0.1:0",
        ],
        &serve_log,
    );
    let udp = said["udp"].as_str().unwrap().to_string();
    let metrics = said["metrics"].as_str().unwrap().to_string();
    assert_eq!(metric(&metrics, "volley_server_allow_list_keys"), Some(2));

    let proxy = |name: &str, key: &str| {
        let base = dir.join(name);
        let (child, said) = start_logged(
            &[
                "proxy",
                "--listen",
                "tcp://127.0.0.1:0",
                "--server-key",
                &server_public,
                "--key",
                key,
                &udp,
            ],
            &base,
        );
        (child, tcp_listen(&said), base)
    };
    let (mut alices, alice_listen, alice_log) = proxy("alice-proxy", &alice);
    let (_mallorys, mallory_listen, mallory_log) = proxy("mallory-proxy", &mallory);

    // A listed key: the page, and the forwarder names who reached the backend.
    let (ok, body, err) = curl(&alice_listen, "hello.txt");
    assert!(ok, "curl: {err}");
    assert_eq!(body, b"hello, listed client\n");
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    let l = until_logged(&serve_log, "stream spliced to the backend", 1);
    assert!(
        l.contains(&alice_public) && l.contains("alice"),
        "the forwarder logs the client key and name: {l}"
    );

    // An unlisted key: nothing, and the backend never sees a connection.
    let (ok, body, err) = curl(&mallory_listen, "hello.txt");
    assert!(!ok && body.is_empty(), "{err}");
    let l = until_logged(
        &mallory_log,
        "the servers answered but accepted no session for this client key",
        1,
    );
    assert!(!l.contains("no server answered"), "{l}");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "mallory reached the backend"
    );
    assert!(metric(&metrics, "volley_server_inits_unauthorized_total").unwrap() >= 1);
    assert_eq!(metric(&metrics, "volley_forward_streams_total"), Some(1));
    assert!(!logs(&serve_log).contains(&mallory_public));

    // A slow download by Alice, under way ...
    let partial = dir.join("slow.part");
    let mut download = Killed(
        Command::new("curl")
            .args([
                "--silent",
                "--max-time",
                "120",
                "--output",
                partial.to_str().unwrap(),
                &format!("http://{alice_listen}/slow"),
            ])
            .spawn()
            .expect("curl runs"),
    );
    let give_up = Instant::now() + HANG_GUARD;
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) == 0 {
        assert!(Instant::now() < give_up, "the download never started");
        assert!(download.0.try_wait().unwrap().is_none(), "curl ended early");
        std::thread::sleep(Duration::from_millis(10));
    }
    // ... when her key leaves the list: SIGHUP ends it at once.
    std::fs::write(&list, format!("# alice left\n{bob_public} bob\n")).unwrap();
    let signalled = Instant::now();
    hangup(&server.0);
    let status = loop {
        if let Some(status) = download.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "the revoked download still runs 10 s after SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let took = signalled.elapsed();
    eprintln!("SIGHUP to the end of the revoked transfer: {took:?}");
    assert!(!status.success(), "the transfer was cut, not completed");
    let got = std::fs::metadata(&partial).unwrap().len();
    assert!(got < SLOW_LEN, "{got} bytes: all of it");
    // The requirement: within 1 s (it takes milliseconds; the rest is margin for a loaded
    // machine).
    assert!(took < Duration::from_secs(1), "ended {took:?} after SIGHUP");

    let l = until_logged(&serve_log, "allow-list reloaded", 1);
    assert!(l.contains("1 client key(s), 1 session(s) revoked"), "{l}");
    still_running(&mut server, "serve after SIGHUP");
    assert_eq!(
        metric(&metrics, "volley_server_sessions_revoked_total"),
        Some(1)
    );
    assert_eq!(metric(&metrics, "volley_server_allow_list_keys"), Some(1));
    until_logged(&alice_log, "revoked", 1);
    let connections_before = connections.load(Ordering::SeqCst);
    let (ok, _, _) = curl(&alice_listen, "hello.txt");
    assert!(!ok, "a revoked key gets no new session");
    assert_eq!(connections.load(Ordering::SeqCst), connections_before);

    // A list that does not parse keeps the old one, and says which file and line.
    std::fs::write(&list, format!("{alice_public} alice\nnot-a-key bob\n")).unwrap();
    hangup(&server.0);
    let l = until_logged(&serve_log, "allow-list not reloaded", 1);
    assert!(
        l.contains(list.to_str().unwrap()) && l.contains("line 2"),
        "{l}"
    );
    still_running(&mut server, "serve after a bad list");
    assert_eq!(metric(&metrics, "volley_server_allow_list_keys"), Some(1));
    let (ok, _, _) = curl(&alice_listen, "hello.txt");
    assert!(!ok, "the old list (without alice) stays in force");

    // Alice back on the list: in again.
    std::fs::write(&list, format!("{alice_public} alice\n")).unwrap();
    hangup(&server.0);
    until_logged(&serve_log, "allow-list reloaded", 2);
    let (ok, body, err) = curl(&alice_listen, "hello.txt");
    assert!(ok, "curl: {err}");
    assert_eq!(body, b"hello, listed client\n");

    // SIGHUP never ends the proxy either.
    hangup(&alices.0);
    until_logged(&alice_log, "SIGHUP: nothing to reload", 1);
    still_running(&mut alices, "proxy after SIGHUP");
    let (ok, _, err) = curl(&alice_listen, "hello.txt");
    assert!(ok, "curl after the proxy's SIGHUP: {err}");
}
