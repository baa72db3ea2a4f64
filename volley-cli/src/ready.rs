//! `--ready-file PATH` of `serve` and `proxy`: once every listener is bound, the process writes
//! one JSON object naming its real addresses (port 0 resolved), so that whatever started it
//! (a test, a lab harness, a supervisor) learns where it serves without reading its log lines,
//! whose wording is for people and may change.
//!
//! The object is written to `PATH.tmp` and renamed to `PATH`: a rename within one directory is
//! atomic, so a reader polling for `PATH` sees either nothing or the whole object.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

/// What the ready file says. The field names are a stable interface (the flags' help and the
/// README name them); add fields rather than rename them.
#[derive(Debug, Serialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Ready {
    /// `volley serve`.
    Serve {
        pid: u32,
        /// The UDP socket the server answers on.
        udp: SocketAddr,
        /// The TCP stream listener, when forwarding to a tcp:// service.
        tcp: Option<SocketAddr>,
        /// The metrics endpoint, with `--metrics`.
        metrics: Option<SocketAddr>,
        /// The server's static public key, hex.
        public_key: String,
    },
    /// `volley proxy`.
    Proxy {
        pid: u32,
        /// Where applications send or connect: `udp://IP:PORT` or `tcp://IP:PORT` (the first
        /// `--listen`).
        listen: String,
        /// Every `--listen`, in order.
        listens: Vec<String>,
        /// The metrics endpoint, with `--metrics`.
        metrics: Option<SocketAddr>,
    },
}

/// Writes `ready` as one line of JSON to `path`, through `path.tmp` and a rename.
pub fn write(path: &Path, ready: &Ready) -> anyhow::Result<()> {
    let mut line = serde_json::to_string(ready).context("encoding the ready file")?;
    line.push('\n');
    let tmp = tmp_path(path);
    std::fs::write(&tmp, line).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// `PATH.tmp`: beside `PATH`, so that the rename stays within one file system.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_file_is_one_json_line_with_the_command_first_and_no_leftover_tmp() {
        let dir = std::env::temp_dir().join(format!("volley-ready-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("serve.json");
        let ready = Ready::Serve {
            pid: 42,
            udp: "127.0.0.1:7001".parse().unwrap(),
            tcp: None,
            metrics: Some("127.0.0.1:9100".parse().unwrap()),
            public_key: "ab".repeat(32),
        };
        write(&path, &ready).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.ends_with('\n'));
        assert!(text.starts_with(r#"{"command":"serve","pid":42,"udp":"127.0.0.1:7001","tcp":null,"metrics":"127.0.0.1:9100","public_key":""#), "{text}");
        assert!(!tmp_path(&path).exists(), "renamed, not copied");
        let proxy = Ready::Proxy {
            pid: 7,
            listen: "udp://127.0.0.1:5300".into(),
            listens: vec!["udp://127.0.0.1:5300".into(), "tcp://127.0.0.1:8080".into()],
            metrics: None,
        };
        write(&path, &proxy).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"command\":\"proxy\",\"pid\":7,\"listen\":\"udp://127.0.0.1:5300\",\"listens\":[\"udp://127.0.0.1:5300\",\"tcp://127.0.0.1:8080\"],\"metrics\":null}\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
