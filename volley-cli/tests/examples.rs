//! The README's tour and its "Put volley in front of…" section, run with the shipped example
//! files from a scratch copy of the checkout's layout (`examples/…` beside the `server.key` the
//! tour writes), as real processes on loopback. Addresses are the kernel's (port 0) rather than
//! the README's fixed ports, given as flags, which win over the files; every other setting is
//! the files' own, so an example that does not run as shipped (a key path, a setting refused)
//! fails here.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::{HANG_GUARD, Killed, finish, ready, scratch, text, volley};

/// `volley ARGS…` run in `dir` (the scratch checkout), to its end.
fn run_in(dir: &Path, args: &[&str]) -> Output {
    let child = volley()
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("volley runs");
    finish(child)
}

/// `volley ARGS… --ready-file FILE` started in `dir`, once ready, with what it wrote.
fn start_in(dir: &Path, name: &str, args: &[&str]) -> (Killed, serde_json::Value) {
    let file = dir.join(format!("{name}.ready"));
    // A file left by an earlier process of the same name would be read as this one's.
    let _ = std::fs::remove_file(&file);
    let mut child = volley()
        .current_dir(dir)
        .args(args)
        .arg("--ready-file")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("volley starts");
    let said = ready(&mut child, &file);
    (Killed(child), said)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The status line and body of `GET path` on `addr`.
fn get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).unwrap();
    let (head, body) = page.split_once("\r\n\r\n").unwrap_or((&page, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// The README's stand-in UDP service: answers each datagram in capitals (a thread, for the
/// test's life).
fn upper_case_service() -> String {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut buf = vec![0; 65535];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n].to_ascii_uppercase(), from);
        }
    });
    addr
}

/// What the service behind `proxy` (a udp:// listener) answers to `msg`.
fn through(proxy: &str, msg: &[u8]) -> Vec<u8> {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(HANG_GUARD)).unwrap();
    c.send_to(msg, proxy.trim_start_matches("udp://")).unwrap();
    let mut buf = [0; 100];
    let n = c.recv(&mut buf).expect("an answer through the proxy");
    buf[..n].to_vec()
}

#[test]
fn o7_the_readme_tour_runs_with_the_shipped_examples() {
    // The checkout: examples/ as shipped, and the tour run from its root.
    let root = scratch("o7-readme-tour");
    copy_tree(
        &PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")),
        &root.join("examples"),
    );

    // PUB=$($V keygen --out server.key --force); $V pubkey server.key prints it again.
    let public = ok(
        &run_in(&root, &["keygen", "--out", "server.key", "--force"]),
        "keygen",
    )
    .trim()
    .to_string();
    assert_eq!(public.len(), 64, "{public}");
    let again = ok(&run_in(&root, &["pubkey", "server.key"]), "pubkey");
    assert_eq!(again.trim(), public);

    // The tour's three servers, then its four connects.
    let tour_servers = |first: &[&str]| {
        let (s1, one) = start_in(&root, "s1", first);
        let a1 = one["udp"].as_str().unwrap().to_string();
        assert_eq!(
            one["public_key"],
            public.as_str(),
            "s1 serves the tour's key"
        );
        let (s2, two) = start_in(
            &root,
            "s2",
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--key",
                "server.key",
                "--capacity",
                "16",
                "--answer",
                "immediate",
            ],
        );
        let (s3, three) = start_in(
            &root,
            "s3",
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--key",
                "server.key",
                "--capacity",
                "1",
                "--answer",
                "gated",
                "--peer",
                &a1,
            ],
        );
        let addrs = [
            a1,
            two["udp"].as_str().unwrap().to_string(),
            three["udp"].as_str().unwrap().to_string(),
        ];
        ([s1, s2, s3], addrs)
    };
    let (servers, addrs) = tour_servers(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--key",
        "server.key",
        "--capacity",
        "16",
    ]);
    let pool: Vec<&str> = addrs.iter().map(String::as_str).collect();
    for (flags, expect) in [
        (
            &["--send", "hello volley"][..],
            "reply:      \"hello volley\"",
        ),
        (&["--policy", "window"][..], "(policy window)"),
        (&["--n-best", "2", "--send", "hi"][..], "sessions:   2"),
        (&["--fanout", "2"][..], "winner:"),
    ] {
        let argv = [&["connect", "--server-key", &public][..], flags, &pool].concat();
        let out = ok(&run_in(&root, &argv), &format!("{argv:?}"));
        assert!(out.contains(expect), "{argv:?}: {out}");
    }
    drop(servers);

    // The same from the files: serve.toml's key is the checkout's server.key (the ready file's
    // public key says which key it read), connect.toml's settings with the tour's key.
    let (servers, addrs) = tour_servers(&[
        "serve",
        "--config",
        "examples/serve.toml",
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let pool: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let argv = [
        &[
            "connect",
            "--config",
            "examples/connect.toml",
            "--server-key",
            &public,
        ][..],
        &pool,
    ]
    .concat();
    let out = ok(
        &run_in(&root, &argv),
        "connect --config examples/connect.toml",
    );
    assert!(
        out.contains("(policy window)") && out.contains("reply:      \"hello volley\""),
        "{out}"
    );
    drop(servers);

    // Put volley in front of a UDP service: two forwarding servers, and the proxy from
    // examples/proxy.toml with the tour's key.
    let backend = upper_case_service();
    let forward = format!("udp://{backend}");
    let mut pool = Vec::new();
    let mut forwarders = Vec::new();
    for name in ["f1", "f2"] {
        let (f, said) = start_in(
            &root,
            name,
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--key",
                "server.key",
                "--forward",
                &forward,
            ],
        );
        forwarders.push(f);
        pool.push(said["udp"].as_str().unwrap().to_string());
    }
    let argv = [
        &[
            "proxy",
            "--config",
            "examples/proxy.toml",
            "--server-key",
            &public,
            "--listen",
            "udp://127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ][..],
        &pool.iter().map(String::as_str).collect::<Vec<_>>(),
    ]
    .concat();
    let (proxy, said) = start_in(&root, "proxy", &argv);
    let listen = said["listen"].as_str().unwrap();
    assert_eq!(through(listen, b"hello volley"), b"HELLO VOLLEY");
    drop(proxy);

    // The systemd unit's ExecStart, with examples/serve.toml copied to /etc/volley as its
    // header says and the key as a credential (paths under the scratch root; loopback ports).
    let unit = std::fs::read_to_string(root.join("examples/systemd/volley-serve.service")).unwrap();
    // systemd waits out the 30 s drain (the default --drain-timeout) before its SIGKILL.
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec")
        .parse()
        .unwrap();
    assert!(stop > 30, "TimeoutStopSec={stop}");
    let etc = root.join("etc/volley");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::copy(root.join("examples/serve.toml"), etc.join("serve.toml")).unwrap();
    let creds = root.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::copy(root.join("server.key"), creds.join("server.key")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let argv: Vec<String> = exec
        .split_whitespace()
        .skip(1)
        .map(|a| {
            a.replace("${CREDENTIALS_DIRECTORY}", creds.to_str().unwrap())
                .replace("/etc/volley", etc.to_str().unwrap())
                .replace("0.0.0.0:7001", "127.0.0.1:0")
                .replace("udp://127.0.0.1:53", &forward)
                .replace("127.0.0.1:9100", "127.0.0.1:0")
        })
        .collect();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (unit_server, said) = start_in(&root, "unit", &argv);
    assert_eq!(said["public_key"], public.as_str(), "{argv:?}");
    let addr = said["udp"].as_str().unwrap();
    let out = ok(
        &run_in(
            &root,
            &["connect", "--server-key", &public, "--send", "hi", addr],
        ),
        "connect to the unit's server",
    );
    assert!(out.contains("reply:      \"HI\""), "{out}");
    drop(unit_server);

    // The Kubernetes server sidecar's arguments (its key where the secret is mounted, loopback
    // ports): its probes' paths answer on its metrics port.
    let k8s = std::fs::read_to_string(root.join("examples/kubernetes/volley.yaml")).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&k8s).unwrap();
    let sidecar = docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("Deployment"))
        .flat_map(|d| {
            d["spec"]["template"]["spec"]["containers"]
                .as_vec()
                .unwrap()
        })
        .find(|c| {
            c["args"]
                .as_vec()
                .is_some_and(|a| a.iter().any(|a| a.as_str() == Some("serve")))
        })
        .expect("a serve sidecar");
    let argv: Vec<String> = sidecar["args"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace("/etc/volley/server.key", "server.key")
                .replace("0.0.0.0:7001", "127.0.0.1:0")
                .replace("udp://127.0.0.1:53", &forward)
                .replace("0.0.0.0:9100", "127.0.0.1:0")
        })
        .collect();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (pod, said) = start_in(&root, "pod", &argv);
    let metrics = said["metrics"]
        .as_str()
        .expect("the sidecar serves metrics");
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = sidecar[probe]["httpGet"]["path"].as_str().unwrap();
        // Ready once the first backend check passed (the first result decides): a bounded wait.
        let give_up = std::time::Instant::now() + HANG_GUARD;
        loop {
            let (status, body) = get(metrics, path);
            if status.contains(" 200 ") {
                break;
            }
            assert!(
                std::time::Instant::now() < give_up,
                "{probe} GET {path}: {status} {body}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    drop(pod);
    drop(forwarders);
}

#[test]
fn o7_the_dockerfile_builds_volley_and_ships_only_the_binary_run_by_a_non_root_user() {
    // `docker build` needs a daemon, which tests cannot count on: the file's structure is
    // checked here.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let file = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    let lines: Vec<&str> = file
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let stages: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let (build, runtime) = (&lines[stages[0]..stages[1]], &lines[stages[1]..]);
    assert!(build[0].contains(" AS build"), "{}", build[0]);
    assert!(
        build
            .iter()
            .any(|l| l.contains("cargo build --release") && l.contains("-p volley-cli")),
        "{build:?}"
    );
    // The runtime stage takes the binary alone, as a user other than root.
    let copies: Vec<&&str> = runtime.iter().filter(|l| l.starts_with("COPY")).collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(
        copies[0].starts_with("COPY --from=build /volley "),
        "{copies:?}"
    );
    let user = runtime
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "0" && uid != "root", "{user}");
    // The ports the Kubernetes example's server uses: its UDP port and its metrics port.
    let expose: Vec<&str> = runtime
        .iter()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(str::split_whitespace)
        .collect();
    for port in ["7001/udp", "9100/tcp"] {
        assert!(expose.contains(&port), "EXPOSE {expose:?} lacks {port}");
    }
    let entry = runtime
        .iter()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("an ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(entry).expect("ENTRYPOINT in exec form");
    assert!(entry[0].ends_with("/volley"), "{entry:?}");
    // The build context leaves out build output, history and key files.
    let ignore = std::fs::read_to_string(format!("{root}/.dockerignore")).unwrap();
    for pattern in ["target/", ".git/", "**/*.key"] {
        assert!(ignore.lines().any(|l| l.trim() == pattern), "{pattern}");
    }
}
