//! The server side of a case: a bare batched echo, volley servers with the echo service, or
//! quinn servers, on a thread of their own pinned to the server's CPU, reporting their thread's
//! CPU time and counters when the generator marks the measured period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use volley::unstable::udp::{self, RecvBatch, SendBatch};
use volley::{AnswerPolicy, PublicKey, Server, ServerConfig, ServerStats, StaticKeypair};

use super::connect;
use crate::harness::cpu::thread_cpu_us;
use crate::harness::process::pinned_runtime;

/// What the server thread reports at a mark.
#[derive(Debug, Clone, Copy)]
pub(super) struct ServerMark {
    pub(super) cpu_us: u64,
    pub(super) stats: Option<ServerStats>,
}

pub(super) enum Ctl {
    Mark(oneshot::Sender<ServerMark>),
    Stop,
}

/// What the server thread runs.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    BareEcho,
    /// This many volley servers (answer policy `immediate`) with the echo service.
    Volley(usize),
    /// This many quinn servers.
    Quinn(usize),
}

impl Kind {
    pub(super) fn of(case: &str) -> Self {
        match case {
            c if c.starts_with("echo") => Kind::BareEcho,
            "connect-volley" | "flood+connect" => Kind::Volley(8),
            "abuse" | "abuse-clean" => Kind::Volley(1),
            "connect-quinn" => Kind::Quinn(1),
            "race8-quinn" => Kind::Quinn(8),
            _ => Kind::Volley(1),
        }
    }
}

/// A server running on its own pinned thread.
pub(super) struct ServerThread {
    pub(super) addrs: Vec<SocketAddr>,
    pub(super) key: Option<PublicKey>,
    pub(super) ctl: mpsc::UnboundedSender<Ctl>,
    join: thread::JoinHandle<()>,
}

impl ServerThread {
    pub(super) fn start(
        kind: Kind,
        cpu: usize,
        tls: Option<Arc<connect::Tls>>,
    ) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let (ctl, mut ctl_rx) = mpsc::unbounded_channel();
        let join = thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                let rt = pinned_runtime(cpu).expect("runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    let mut handles = Vec::new();
                    let mut quinns = Vec::new();
                    let (stop_all, _) = tokio::sync::broadcast::channel::<()>(1);
                    let started: anyhow::Result<(Vec<SocketAddr>, Option<PublicKey>)> = async {
                        let any: SocketAddr = "127.0.0.1:0".parse()?;
                        match kind {
                            Kind::Volley(n) => {
                                let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
                                let mut addrs = Vec::new();
                                for _ in 0..n {
                                    let mut cfg = ServerConfig::new(key.clone());
                                    cfg.answer = AnswerPolicy::Immediate;
                                    let server = Server::bind(any, cfg).await?;
                                    addrs.push(server.local_addr());
                                    handles.push(server.handle());
                                    let mut stop = stop_all.subscribe();
                                    tokio::task::spawn_local(volley::echo::serve(
                                        server,
                                        async move {
                                            let _ = stop.recv().await;
                                        },
                                    ));
                                }
                                Ok((addrs, Some(key.public())))
                            }
                            Kind::Quinn(n) => {
                                let tls = tls.context("quinn needs a certificate")?;
                                let mut addrs = Vec::new();
                                for _ in 0..n {
                                    let (endpoint, addr) = connect::quinn_server(&tls)?;
                                    quinns.push(endpoint);
                                    addrs.push(addr);
                                }
                                Ok((addrs, None))
                            }
                            Kind::BareEcho => {
                                let socket = UdpSocket::bind(any).await?;
                                let addr = socket.local_addr()?;
                                tokio::task::spawn_local(bare_echo(socket));
                                Ok((vec![addr], None))
                            }
                        }
                    }
                    .await;
                    let ok = started.is_ok();
                    let _ = ready_tx.send(started.map_err(|e| e.to_string()));
                    if !ok {
                        return;
                    }
                    while let Some(c) = ctl_rx.recv().await {
                        match c {
                            Ctl::Mark(reply) => {
                                // Let the driver publish its counters first.
                                tokio::task::yield_now().await;
                                let stats = (!handles.is_empty()).then(|| {
                                    handles.iter().map(|h| h.stats()).fold(
                                        ServerStats::default(),
                                        |mut sum, s| {
                                            sum.offers_sent += s.offers_sent;
                                            sum.init_cookie_bad_mac += s.init_cookie_bad_mac;
                                            sum.sessions_opened += s.sessions_opened;
                                            sum.init_handshake_failed += s.init_handshake_failed;
                                            sum
                                        },
                                    )
                                });
                                let _ = reply.send(ServerMark {
                                    cpu_us: thread_cpu_us(),
                                    stats,
                                });
                            }
                            Ctl::Stop => break,
                        }
                    }
                    let _ = stop_all.send(());
                    for q in &quinns {
                        q.close(0u32.into(), b"bye");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                });
            })?;
        let (addrs, key) = ready_rx
            .recv()
            .context("server thread died")?
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(Self {
            addrs,
            key,
            ctl,
            join,
        })
    }

    pub(super) fn stop(self) {
        let _ = self.ctl.send(Ctl::Stop);
        let _ = self.join.join();
    }
}

/// The bare echo: every datagram straight back, a batch per system call each way, with GRO and
/// GSO where the kernel has them — the same socket handling as volley's server driver.
async fn bare_echo(socket: UdpSocket) {
    let mut rx = RecvBatch::with_gro(false, udp::enable_gro(&socket));
    let mut tx = SendBatch::with_gso(udp::gso_supported(&socket));
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        while rx.recv(&socket).is_ok() {
            for (meta, data) in rx.iter() {
                if data.len() > volley_proto::MAX_DATAGRAM_LEN {
                    continue;
                }
                tx.slot()[..data.len()].copy_from_slice(data);
                tx.commit(data.len(), meta.from, None);
            }
            tx.flush(&socket).await;
        }
    }
}

/// Asks the server thread for its figures now.
pub(super) async fn mark(ctl: &mpsc::UnboundedSender<Ctl>) -> anyhow::Result<ServerMark> {
    let (tx, rx) = oneshot::channel();
    ctl.send(Ctl::Mark(tx)).ok().context("server gone")?;
    rx.await.context("server gone")
}
