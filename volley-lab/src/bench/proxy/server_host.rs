//! The server host: the backends — a UDP echo, a TCP echo and a TCP sink (reads and discards) —
//! and in front of each a volley server with the forwarder (`volley serve --forward`'s code, the
//! servers' default settings), on one pinned thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use volley::proxy::{TcpForward, UdpForward};
use volley::{PublicKey, Server, ServerConfig, StaticKeypair};

use crate::harness::cpu::thread_cpu_us;

/// Where everything on the server host listens.
#[derive(Debug, Clone, Copy)]
pub(super) struct ServerHost {
    pub(super) udp_echo: SocketAddr,
    pub(super) tcp_echo: SocketAddr,
    pub(super) tcp_sink: SocketAddr,
    pub(super) fwd_udp: SocketAddr,
    pub(super) fwd_tcp_echo: SocketAddr,
    pub(super) fwd_tcp_sink: SocketAddr,
    pub(super) key: PublicKey,
}

/// What the client host asks of the server host.
pub(super) enum Ctl {
    /// The server thread's CPU time and the sink's byte count.
    Mark(oneshot::Sender<(u64, u64)>),
    Stop,
}

/// The server host's thread: starts the backends and their forwarders, says where they listen,
/// then answers marks until told to stop.
pub(super) async fn server_host(
    ready: std_mpsc::Sender<Result<ServerHost, String>>,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
) {
    let sunk = Arc::new(AtomicU64::new(0));
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let started: anyhow::Result<ServerHost> = async {
        let any: SocketAddr = "127.0.0.1:0".parse()?;
        let udp = UdpSocket::bind(any).await?;
        let udp_echo = udp.local_addr()?;
        tokio::spawn(udp_echo_service(udp));
        let echo = TcpListener::bind(any).await?;
        let tcp_echo = echo.local_addr()?;
        tokio::spawn(tcp_service(echo, None));
        let sink = TcpListener::bind(any).await?;
        let tcp_sink = sink.local_addr()?;
        tokio::spawn(tcp_service(sink, Some(Arc::clone(&sunk))));
        let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
        // The servers' defaults, as `volley serve --forward` runs them.
        let bind = || Server::bind(any, ServerConfig::new(key.clone()));
        let server = bind().await?;
        let fwd_udp = server.local_addr();
        let mut stop = stop_tx.subscribe();
        tokio::spawn(UdpForward::new(server, udp_echo).serve(async move {
            let _ = stop.recv().await;
        }));
        let mut tcp_fwd = Vec::new();
        for backend in [tcp_echo, tcp_sink] {
            let server = bind().await?;
            tcp_fwd.push(server.local_addr());
            let forward = TcpForward::bind(server, backend).await?;
            let mut stop = stop_tx.subscribe();
            tokio::spawn(forward.serve(async move {
                let _ = stop.recv().await;
            }));
        }
        Ok(ServerHost {
            udp_echo,
            tcp_echo,
            tcp_sink,
            fwd_udp,
            fwd_tcp_echo: tcp_fwd[0],
            fwd_tcp_sink: tcp_fwd[1],
            key: key.public(),
        })
    }
    .await;
    let ok = started.is_ok();
    let _ = ready.send(started.map_err(|e| e.to_string()));
    if !ok {
        return;
    }
    while let Some(c) = ctl.recv().await {
        match c {
            Ctl::Mark(reply) => {
                let _ = reply.send((thread_cpu_us(), sunk.load(Ordering::Relaxed)));
            }
            Ctl::Stop => break,
        }
    }
    let _ = stop_tx.send(());
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The UDP service: every datagram straight back to its sender.
async fn udp_echo_service(socket: UdpSocket) {
    let mut buf = vec![0u8; 65_536];
    while let Ok((n, from)) = socket.recv_from(&mut buf).await {
        let _ = socket.send_to(&buf[..n], from).await;
    }
}

/// The TCP services: an echo (`sink` None) or a sink counting what it read.
async fn tcp_service(listener: TcpListener, sink: Option<Arc<AtomicU64>>) {
    while let Ok((mut conn, _)) = listener.accept().await {
        let _ = conn.set_nodelay(true);
        let sink = sink.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                match &sink {
                    Some(count) => {
                        count.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    None => {
                        if conn.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

/// The server thread's CPU time (µs) and the sink's byte count, now.
pub(super) async fn mark(ctl: &mpsc::UnboundedSender<Ctl>) -> anyhow::Result<(u64, u64)> {
    let (tx, rx) = oneshot::channel();
    ctl.send(Ctl::Mark(tx)).ok().context("server gone")?;
    rx.await.context("server gone")
}
