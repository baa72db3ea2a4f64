//! The first run, as a new user meets it: the `volley` binary's messages for the usual mistakes,
//! run as a process (loopback only, every wait bounded).

mod common;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{
    Killed, finish, forwarding_server, free_port, keygen, run, scratch, start_ready, text, volley,
};

/// `volley serve` on `addr`, once its ready file says it listens.
fn serve(key: &str, addr: &str) -> Killed {
    let ready_file = Path::new(key).with_extension("ready");
    let _ = std::fs::remove_file(&ready_file);
    let (server, said) = start_ready(&["serve", "--listen", addr, "--key", key], &ready_file);
    assert_eq!(said["udp"], addr, "{said}");
    server
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn keygen_keeps_an_existing_key_and_says_how_to_replace_it_and_pubkey_reads_it_back() {
    let dir = scratch("keygen");
    let (key, public) = keygen(&dir);
    let again = run(&["keygen", "--out", &key]);
    assert!(!again.status.success());
    let err = text(&again.stderr);
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    // A missing directory is not an "exists" problem: no --force hint.
    let missing = dir.join("no/such/dir/k.key");
    let out = run(&["keygen", "--out", missing.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(!out.status.success() && !err.contains("--force"), "{err}");
    // pubkey prints the public key keygen printed.
    let out = run(&["pubkey", &key]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), public);
}

#[test]
fn serve_refuses_a_capacity_of_zero_and_names_an_address_in_use_once() {
    let dir = scratch("serve-errors");
    let (key, _) = keygen(&dir);
    let out = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--key",
        &key,
        "--capacity",
        "0",
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--capacity must be at least 1"));
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&["serve", "--listen", &addr, "--key", &key]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("cannot bind {addr}")), "{err}");
    assert_eq!(err.matches("in use").count(), 1, "said once: {err}");
}

#[test]
fn connect_with_the_wrong_server_key_says_so_rather_than_no_answer() {
    let dir = scratch("wrong-key");
    let (key, public) = keygen(&dir);
    let addr = format!("127.0.0.1:{}", free_port());
    let server = serve(&key, &addr);
    let wrong = "1".repeat(64);
    let out = run(&["connect", "--server-key", &wrong, "--timeout", "1", &addr]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("key other than --server-key"), "{err}");
    // And the right key works.
    let out = run(&["connect", "--server-key", &public, "--send", "hi", &addr]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("reply:"));
    // A pool of both families is refused, not half raced.
    let out = run(&["connect", "--server-key", &public, &addr, "[::1]:9"]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("mixes IPv4 and IPv6"),
        "{err}"
    );
    drop(server);
}

#[test]
fn serve_into_a_closed_pipe_ends_quietly() {
    // `volley serve | head -1`: the reader goes away after the first line.
    let dir = scratch("closed-stdout");
    let (key, _) = keygen(&dir);
    let mut child = volley()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--key",
            &key,
            "--load-every",
            "0.1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    drop(stdout);
    // Its next load line (0.1 s later) meets the closed pipe and ends it: wait for that end.
    let out = finish(child);
    let err = text(&out.stderr);
    assert!(out.status.success(), "status {}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn the_tours_key_file_is_ignored_by_git() {
    let ignore =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../.gitignore")).unwrap();
    assert!(
        ignore
            .lines()
            .any(|l| l.trim() == "*.key" || l.trim() == "/server.key"),
        "the README's tour writes server.key in the checkout"
    );
}

#[test]
fn d5_logs_are_json_lines_on_request_and_plain_without_colour_codes_off_a_terminal() {
    let dir = scratch("logs");
    let (key, _) = keygen(&dir);
    for (format, check) in [
        (
            "json",
            (|l: &str| l.starts_with('{') && l.contains("\"level\":\"INFO\"")) as fn(&str) -> bool,
        ),
        ("plain", |l: &str| {
            l.starts_with("volley serve: listening on") && !l.contains('\u{1b}')
        }),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_volley"))
            .env("RUST_LOG", "info")
            .args([
                "--log-format",
                format,
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--key",
                &key,
            ])
            // The start banner is said once, on stdout (O7): with json, as a JSON line too.
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        stop(child);
        assert!(check(&line), "{format}: {line:?}");
    }
}

#[test]
fn r10_connect_send_to_a_service_that_never_answers_says_no_reply_within_the_timeout() {
    // A server whose service never answers (it forwards to a port nobody reads): the race and the
    // handshake succeed, then --send waits for a reply that never comes and gives up with its own
    // diagnosis. That --timeout bounds the whole command, --send included, connect.rs's tests
    // show in virtual time.
    let dir = scratch("r10-timeout");
    let (key, public) = keygen(&dir);
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let backend = format!("udp://{}", silent.local_addr().unwrap());
    let (server, said) = forwarding_server(&key, &backend, &dir.join("serve.ready"));
    let addr = said["udp"].as_str().unwrap().to_string();
    let out = run(&[
        "connect",
        "--server-key",
        &public,
        "--timeout",
        "2",
        "--send",
        "anyone there?",
        &addr,
    ]);
    drop(server);
    assert!(!out.status.success());
    assert!(text(&out.stdout).contains("connect:"), "connected first");
    let err = text(&out.stderr);
    assert!(err.contains("no reply to --send within --timeout"), "{err}");
}

#[test]
fn r10_connect_to_a_silent_address_says_no_server_answered_within_the_timeout() {
    // Nothing listens there: the race's own diagnosis, not a generic timeout (connect.rs's
    // tests show the --timeout bound in virtual time).
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let out = run(&[
        "connect",
        "--server-key",
        &"1".repeat(64),
        "--timeout",
        "1",
        &addr,
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("no server answered within 1s"), "{err}");
}

#[cfg(unix)]
fn chmod(path: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a1_keygen_makes_client_keys_and_a_key_file_open_to_others_or_garbled_is_refused() {
    let dir = scratch("allow-keys");
    let (key, public) = keygen(&dir);
    // A client's key is a key like a server's: keygen makes it, pubkey reads it.
    let client = dir.join("client.key");
    std::fs::rename(&key, &client).unwrap();
    let key = client.to_str().unwrap().to_string();
    let out = run(&["pubkey", &key]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), public);
    let help = text(&run(&["keygen", "--help"]).stdout);
    assert!(help.contains("server or client"), "{help}");

    #[cfg(unix)]
    for mode in [0o644, 0o640, 0o604, 0o620] {
        chmod(&key, mode);
        for argv in [
            vec!["pubkey", &key],
            vec![
                "connect",
                "--server-key",
                &public,
                "--key",
                &key,
                "127.0.0.1:9",
            ],
            vec!["serve", "--listen", "127.0.0.1:0", "--key", &key],
        ] {
            let out = run(&argv);
            let err = text(&out.stderr);
            assert!(!out.status.success(), "{argv:?} with mode {mode:o}");
            assert!(
                err.contains(&key)
                    && err.contains(&format!("mode {mode:04o}"))
                    && err.contains(&format!("chmod 600 {key}")),
                "{argv:?}: {err}"
            );
        }
    }
    #[cfg(unix)]
    chmod(&key, 0o600);
    assert!(run(&["pubkey", &key]).status.success());

    let garbled = dir.join("garbled.key");
    std::fs::write(&garbled, "not a key\n").unwrap();
    #[cfg(unix)]
    chmod(garbled.to_str().unwrap(), 0o600);
    let out = run(&["pubkey", garbled.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("garbled.key is not a volley key file") && err.contains("64 hex digits"),
        "{err}"
    );
}

#[test]
fn o5_proxy_protocol_is_refused_without_a_tcp_backend_and_says_why() {
    let dir = scratch("proxy-protocol");
    let (key, _) = keygen(&dir);
    for forward in [None, Some("udp://127.0.0.1:9")] {
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--key",
            &key,
            "--proxy-protocol",
        ];
        if let Some(f) = forward {
            args.extend(["--forward", f]);
        }
        let out = run(&args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{forward:?}");
        assert!(
            err.contains("--proxy-protocol") && err.contains("tcp://"),
            "{err}"
        );
    }
}

#[test]
fn o7_pubkey_says_when_a_file_may_hold_a_public_key_and_keygen_marks_its_secret_keys() {
    let dir = scratch("o7-pubkey");
    let (key, public) = keygen(&dir);
    // keygen's file says what it holds; pubkey reads it without a word on stderr.
    let written = std::fs::read_to_string(&key).unwrap();
    assert!(written.starts_with("# volley secret key"), "{written:?}");
    let out = run(&["pubkey", &key]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), public);
    assert_eq!(text(&out.stderr), "", "no warning for keygen's own file");

    // The public key saved to a file (mode 0600, as a careful user keeps everything): 64 hex
    // digits alone, as an older keygen's secret key file. pubkey cannot tell them apart: it
    // prints the key derived from the digits and says the file may hold a public key.
    let saved = dir.join("server.pub");
    std::fs::write(&saved, format!("{public}\n")).unwrap();
    #[cfg(unix)]
    chmod(saved.to_str().unwrap(), 0o600);
    let out = run(&["pubkey", saved.to_str().unwrap()]);
    let (printed, err) = (text(&out.stdout), text(&out.stderr));
    assert_ne!(printed.trim(), public, "a key derived from the public key");
    assert!(
        err.contains("server.pub has no `# volley secret key` line")
            && err.contains("If the file holds a public key")
            && err.contains("NOT it"),
        "{err}"
    );
    // Open to others, it is refused as a secret key would be, with the hint that a public key
    // file needs no pubkey.
    #[cfg(unix)]
    {
        chmod(saved.to_str().unwrap(), 0o644);
        let out = run(&["pubkey", saved.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("mode 0644") && err.contains("it is that key already"),
            "{err}"
        );
    }

    // An older keygen's secret key file (the digits alone) still works everywhere: pubkey
    // prints its public key (with the warning) and serve takes it.
    let secret: Vec<&str> = written.lines().filter(|l| !l.starts_with('#')).collect();
    let old = dir.join("old.key");
    std::fs::write(&old, format!("{}\n", secret[0])).unwrap();
    #[cfg(unix)]
    chmod(old.to_str().unwrap(), 0o600);
    let old = old.to_str().unwrap();
    let out = run(&["pubkey", old]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), public);
    assert!(text(&out.stderr).contains("older `volley keygen`"));
    let (server, said) = start_ready(
        &["serve", "--listen", "127.0.0.1:0", "--key", old],
        &dir.join("old.ready"),
    );
    assert_eq!(said["public_key"], public.as_str());
    drop(server);
}
