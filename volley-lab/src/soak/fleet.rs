//! The soak's processes: `--servers` `volley serve` processes (echo service, `--metrics`) and
//! one `volley proxy` in front of them. Server 0 is never restarted; the others are restarted in
//! turn, each time on its port with the other of two static keys (both pinned by every client).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use volley::PublicKey;

use super::SoakArgs;
use super::metrics::{scrape, session_counts};
use crate::harness::process::{EPHEMERAL, VolleyProcess, keygen};

/// How long a server drains on SIGTERM before it says it is going away: the restart cycle's
/// graceful half drains (`serve --drain-timeout`), briefly.
const DRAIN: Duration = Duration::from_secs(2);

/// The `max_sessions` server 0's config file alternates between, one SIGHUP reload each time
/// (a live change that touches no session).
pub(super) const RELOADED: [u32; 2] = [100_000, 90_000];

/// Writes server 0's config file: its session limit.
pub(super) fn write_config(path: &Path, max_sessions: u32) -> anyhow::Result<()> {
    std::fs::write(path, format!("max_sessions = {max_sessions}\n"))?;
    Ok(())
}
/// A restart of one server.
#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    pub t_s: f64,
    pub server: usize,
    pub how: &'static str,
    /// The static key it came back with: "A" or "B".
    pub key: &'static str,
    /// Its counters just before (the last scrape of the incarnation that ended).
    pub opened_before: u64,
    pub closed_before: u64,
}

/// The servers, the two keys they alternate between, and how often each was restarted.
pub(super) struct Fleet {
    volley: PathBuf,
    keys: [PathBuf; 2],
    pub(super) servers: Vec<VolleyProcess>,
    /// Which key each server runs with (index into `keys`).
    key_of: Vec<usize>,
    pub(super) incarnation: Vec<u32>,
}

impl Fleet {
    /// Writes the two keys into `args.out` (unless there) and starts every server with the
    /// first; returns the fleet and both public keys.
    pub(super) fn start(args: &SoakArgs, volley: &Path) -> anyhow::Result<(Fleet, Vec<PublicKey>)> {
        let keys = [args.out.join("soak-a.key"), args.out.join("soak-b.key")];
        let publics = vec![keygen(volley, &keys[0])?, keygen(volley, &keys[1])?];
        let mut servers = Vec::new();
        // Server 0, never restarted, reloads its config file in the restart cycle instead.
        let config = args.out.join("soak-0.toml");
        write_config(&config, RELOADED[0])?;
        for i in 0..args.servers {
            servers.push(VolleyProcess::serve_draining(
                volley,
                &keys[0],
                EPHEMERAL,
                true,
                DRAIN,
                (i == 0).then_some(config.as_path()),
            )?);
        }
        let fleet = Fleet {
            volley: volley.to_path_buf(),
            keys,
            servers,
            key_of: vec![0; args.servers],
            incarnation: vec![0; args.servers],
        };
        Ok((fleet, publics))
    }

    /// Every server's address: the pool the clients race.
    pub(super) fn pool(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(|s| s.addr).collect()
    }

    /// The proxy in front of the fleet, pinning both keys; its flows idle out after 10 s.
    pub(super) fn proxy(&self, publics: &[PublicKey]) -> anyhow::Result<VolleyProcess> {
        let mut args = vec![
            "proxy".to_string(),
            "--listen".into(),
            format!("udp://{EPHEMERAL}"),
            "--idle-timeout".into(),
            "10".into(),
            "--metrics".into(),
            EPHEMERAL.to_string(),
        ];
        for p in publics {
            args.push("--server-key".into());
            args.push(p.to_hex());
        }
        args.extend(self.pool().iter().map(SocketAddr::to_string));
        Ok(VolleyProcess::start(&self.volley, &args)?)
    }

    /// Restarts server `i` (kill -9 or SIGTERM) on its port with the other static key.
    pub(super) async fn restart(
        &mut self,
        start: Instant,
        i: usize,
        how: &'static str,
        last_counts: &mut [(u64, u64)],
    ) -> anyhow::Result<Restart> {
        // Its counters just before it goes.
        if let Some(m) = scrape(self.servers[i].metrics).await {
            last_counts[i] = session_counts(&m);
        }
        let t_s = start.elapsed().as_secs_f64();
        let server = &mut self.servers[i];
        if how == "SIGTERM" {
            server.terminate();
        } else {
            server.kill();
        }
        let child = &mut server.child;
        // A graceful stop closes its sessions first; give it 10 s, then kill.
        let give_up = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() {
            if Instant::now() >= give_up {
                let _ = child.kill();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let addr = server.addr;
        self.key_of[i] = 1 - self.key_of[i];
        self.incarnation[i] += 1;
        self.servers[i] = VolleyProcess::serve_draining(
            &self.volley,
            &self.keys[self.key_of[i]],
            addr,
            true,
            DRAIN,
            None,
        )?;
        let (opened_before, closed_before) = last_counts[i];
        Ok(Restart {
            t_s,
            server: i,
            how,
            key: if self.key_of[i] == 0 { "A" } else { "B" },
            opened_before,
            closed_before,
        })
    }
}
