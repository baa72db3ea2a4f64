//! The default service: every datagram a session receives goes back to its sender, and every
//! request ([`crate::Session::request`]) is answered with its own bytes; each is counted as a
//! request in flight until its echo is queued. What `volley serve` runs without
//! `--forward`, and a server to try clients against:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), volley::Error> {
//! use volley::{Server, ServerConfig, StaticKeypair};
//!
//! let key = StaticKeypair::generate(&mut volley::OsRng);
//! let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key)).await?;
//! // Serves until the shutdown future resolves: here, at once.
//! let stats = volley::echo::serve(server, async {}).await;
//! assert_eq!(stats.sessions_opened, 0);
//! # Ok(()) }
//! ```

use std::future::Future;

use crate::server::Server;

/// Serves echo sessions on `server` until `shutdown` resolves, then shuts the server down
/// gracefully (clients are told to go elsewhere) and returns its final counters.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), volley::Error> {
/// use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};
///
/// let key = StaticKeypair::generate(&mut volley::OsRng);
/// let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(key.clone())).await?;
/// let pool = vec![server.local_addr()];
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let serving = tokio::spawn(volley::echo::serve(server, async { let _ = stopped.await; }));
///
/// let session = Client::new(ClientConfig::new(vec![key.public()])).connect(&pool).await?;
/// session.send(b"ping").await?;
/// assert_eq!(&session.recv().await?[..], b"ping");
///
/// let _ = stop.send(());
/// let stats = serving.await.unwrap();
/// assert_eq!(stats.sessions_opened, 1);
/// # Ok(()) }
/// ```
pub async fn serve(server: Server, shutdown: impl Future<Output = ()>) -> crate::ServerStats {
    serve_draining(server, shutdown, crate::Drain::default()).await
}

/// Like [`serve`], draining as `drain` says once `shutdown` resolves (PROTOCOL.md §7.9): no new
/// sessions, the open ones echoed until they end, the drain's timeout passes or its stop
/// resolves.
pub async fn serve_draining(
    server: Server,
    shutdown: impl Future<Output = ()>,
    drain: crate::Drain,
) -> crate::ServerStats {
    crate::handler::serve_sessions(server, shutdown, drain, |session| async move {
        // Each datagram is a request: the server counts it until it is echoed.
        while let Ok(request) = session.recv_request().await {
            // The request's own bytes go back: moved, never copied.
            if request.echo(&session).await.is_err() {
                break;
            }
        }
    })
    .await
}
