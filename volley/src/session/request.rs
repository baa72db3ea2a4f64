//! A request received on a server session ([`Request`]): its bytes, and the load guard that
//! counts it in flight until it is answered or let go.

use bytes::Bytes;

use super::Session;
use crate::error::Error;
use crate::load::LoadGuard;

/// One request received on a server session ([`Session::recv_request`]): the datagram and the
/// [`LoadGuard`] that has counted it as a request in flight since it arrived. The server counts
/// the request as completed when this is dropped — after [`Request::reply`], or when you let it
/// go — and learns its service time from those completions.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), volley::Error> {
/// use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};
///
/// let key = StaticKeypair::generate(&mut volley::OsRng);
/// let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
/// let pool = vec![server.local_addr()];
/// tokio::spawn(async move {
///     while let Some(session) = server.accept().await {
///         tokio::spawn(async move {
///             // Each request counts as load from its arrival until its reply is queued.
///             while let Ok(request) = session.recv_request().await {
///                 let answer = request.data().len().to_string();
///                 if request.reply(&session, answer.as_bytes()).await.is_err() {
///                     break;
///                 }
///             }
///         });
///     }
/// });
/// let session = Client::new(ClientConfig::new(vec![key.public()])).connect(&pool).await?;
/// session.send(b"four").await?;
/// assert_eq!(&session.recv().await?[..], b"4");
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "the request counts as in flight until it is dropped"]
pub struct Request {
    data: Bytes,
    guard: Option<LoadGuard>,
}

impl Request {
    /// A request that arrived as `data`, counted by `guard` (none on a client session).
    pub(super) fn new(data: Bytes, guard: Option<LoadGuard>) -> Self {
        Self { data, guard }
    }

    /// The request's bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Sends `reply` on `session` and completes the request.
    pub async fn reply(self, session: &Session, reply: &[u8]) -> Result<(), Error> {
        let sent = session.send(reply).await;
        drop(self);
        sent
    }

    /// Sends `reply`, a datagram the application owns, on `session` without copying it, and
    /// completes the request.
    pub async fn reply_vec(self, session: &Session, reply: Vec<u8>) -> Result<(), Error> {
        self.reply_bytes(session, Bytes::from(reply)).await
    }

    /// Sends `reply` ([`Bytes`], e.g. a slice of the request itself) on `session` without
    /// copying it, and completes the request.
    pub async fn reply_bytes(self, session: &Session, reply: Bytes) -> Result<(), Error> {
        let sent = session.send_bytes(reply).await;
        drop(self);
        sent
    }

    /// Echoes the request's own bytes back on `session` without copying them, and completes
    /// the request.
    pub async fn echo(self, session: &Session) -> Result<(), Error> {
        let Request { data, guard } = self;
        let sent = session.send_bytes(data).await;
        drop(guard);
        sent
    }

    /// The bytes, with the request still counted until the returned guard is dropped (for
    /// handing the request on to other code; `None` on a client session).
    pub fn into_parts(self) -> (Bytes, Option<LoadGuard>) {
        (self.data, self.guard)
    }
}
