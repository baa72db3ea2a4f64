//! The peers' long-lived connections: one client's plain request path to every server of the
//! fleet (`fleet.rs`, `direct_port`), opened once at the start of the run — one round trip per
//! server, as a QUIC or TCP connection would cost — and then carrying every request the client
//! sends there, many in flight at once, each reply finding its caller by (connection, seq) and
//! bringing the server's load report (`fleet::LoadReport`).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::LlRequest;
use crate::select::fleet::{
    DIRECT_OPEN, DIRECT_OPENED, DIRECT_REPLY, DIRECT_REPLY_LEN, DIRECT_REQUEST, LoadReport,
};

/// A server's answer to one request: which server, its status, its load report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answer {
    /// The server that answered (its index in the fleet).
    pub server: usize,
    /// The server's status byte: 0 done, anything else failed.
    pub status: u8,
    /// The server's load as the reply left it.
    pub report: LoadReport,
}

/// What the receiver hands back for one (connection, seq).
type Pending = Arc<Mutex<HashMap<(u64, u32), oneshot::Sender<(u8, LoadReport)>>>>;

/// Why a request found no answer on its connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The socket refused the datagram.
    #[error("sending to server {server}: {source}")]
    Send {
        /// The server the request was for.
        server: usize,
        /// What the socket said.
        source: std::io::Error,
    },
    /// The client's receiver is gone (the run is ending).
    #[error("the connection to server {0} closed")]
    Closed(usize),
    /// No answer within the request timeout.
    #[error("server {0} did not answer")]
    Unanswered(usize),
}

/// One client's connections to every server: one socket, a connection id per server.
pub struct PlainClient {
    socket: Arc<UdpSocket>,
    targets: Vec<SocketAddr>,
    /// Each server's connection id.
    ids: Vec<u64>,
    pending: Pending,
    seq: AtomicU32,
    receiver: JoinHandle<()>,
}

impl Drop for PlainClient {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

/// Removes a request's entry when its caller stops waiting (answered or given up).
struct Waiting<'a> {
    pending: &'a Pending,
    key: (u64, u32),
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

impl PlainClient {
    /// Opens client `tag`'s connection to each of `targets` (the servers' plain request paths,
    /// in server order): an `OPEN` each, then every `OPENED` within `timeout`.
    pub async fn connect(
        targets: &[SocketAddr],
        tag: u64,
        timeout: Duration,
    ) -> anyhow::Result<Arc<PlainClient>> {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let pending: Pending = Arc::default();
        let ids: Vec<u64> = (0..targets.len() as u64).map(|s| (tag << 20) | s).collect();
        let (opened_tx, mut opened_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let receiver = tokio::spawn(receive(
            Arc::clone(&socket),
            Arc::clone(&pending),
            opened_tx,
        ));
        let client = PlainClient {
            socket,
            targets: targets.to_vec(),
            ids,
            pending,
            seq: AtomicU32::new(0),
            receiver,
        };
        for (s, &target) in targets.iter().enumerate() {
            let mut open = [0u8; 9];
            open[0] = DIRECT_OPEN;
            open[1..9].copy_from_slice(&client.ids[s].to_be_bytes());
            client.socket.send_to(&open, target).await?;
        }
        let mut open = vec![false; targets.len()];
        let all = async {
            while open.iter().any(|o| !o) {
                match opened_rx.recv().await {
                    Some(id) => {
                        if let Some(s) = client.ids.iter().position(|&x| x == id) {
                            open[s] = true;
                        }
                    }
                    None => return false,
                }
            }
            true
        };
        anyhow::ensure!(
            tokio::time::timeout(timeout, all).await == Ok(true),
            "client {tag}: not every server opened its connection within {timeout:?}"
        );
        Ok(Arc::new(client))
    }

    /// Servers this client is connected to.
    pub fn servers(&self) -> usize {
        self.targets.len()
    }

    /// One request of `work_us` on the connection to `server`; its answer when it comes. The
    /// caller gives up by dropping the future.
    pub async fn request(&self, server: usize, work_us: u32) -> Result<Answer, ConnError> {
        let (Some(&target), Some(&id)) = (self.targets.get(server), self.ids.get(server)) else {
            return Err(ConnError::Closed(server));
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let key = (id, seq);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, tx);
        let _waiting = Waiting {
            pending: &self.pending,
            key,
        };
        let mut req = [0u8; 17];
        req[0] = DIRECT_REQUEST;
        req[1..9].copy_from_slice(&id.to_be_bytes());
        req[9..13].copy_from_slice(&seq.to_be_bytes());
        req[13..17].copy_from_slice(&work_us.to_be_bytes());
        self.socket
            .send_to(&req, target)
            .await
            .map_err(|source| ConnError::Send { server, source })?;
        let (status, report) = rx.await.map_err(|_| ConnError::Closed(server))?;
        Ok(Answer {
            server,
            status,
            report,
        })
    }
}

/// The client's receiver: `OPENED`s to the opener, `REPLY`s to their callers; anything else,
/// and replies nobody waits for any more, dropped.
async fn receive(
    socket: Arc<UdpSocket>,
    pending: Pending,
    opened: tokio::sync::mpsc::UnboundedSender<u64>,
) {
    let mut buf = [0u8; 64];
    loop {
        let Ok((n, _)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let id = |b: &[u8]| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[1..9]);
            u64::from_be_bytes(x)
        };
        match (buf[0], n) {
            (DIRECT_OPENED, 9) => {
                let _ = opened.send(id(&buf));
            }
            (DIRECT_REPLY, DIRECT_REPLY_LEN) => {
                let seq = u32::from_be_bytes([buf[9], buf[10], buf[11], buf[12]]);
                let Some(report) = LoadReport::decode(&buf[14..n]) else {
                    continue;
                };
                let waiter = pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&(id(&buf), seq));
                if let Some(tx) = waiter {
                    let _ = tx.send((buf[13], report));
                }
            }
            _ => {}
        }
    }
}

/// One client's persistent connection to one server as a tower service: each call is one
/// request on it. Always ready (the connection multiplexes).
#[derive(Clone)]
pub struct Conn {
    pub client: Arc<PlainClient>,
    pub server: usize,
}

type ConnFuture = Pin<Box<dyn Future<Output = Result<Answer, ConnError>> + Send>>;

impl tower::Service<LlRequest> for Conn {
    type Response = Answer;
    type Error = ConnError;
    type Future = ConnFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: LlRequest) -> ConnFuture {
        let (client, server) = (Arc::clone(&self.client), self.server);
        Box::pin(async move { client.request(server, req.work_us).await })
    }
}
