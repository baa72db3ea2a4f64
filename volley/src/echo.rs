//! The default service: echo every session datagram back to its sender.

use std::future::Future;

use tracing::debug;

use crate::server::Server;

/// Serves echo sessions on `server` until `shutdown` resolves, then shuts the server down
/// gracefully (clients are told to go elsewhere).
pub async fn serve(mut server: Server, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            session = server.accept() => {
                let Some(mut session) = session else { break };
                // One task per session: sessions are independent and may block on a slow peer.
                tokio::spawn(async move {
                    let peer = session.remote();
                    while let Ok(data) = session.recv().await {
                        if session.send(&data).await.is_err() {
                            break;
                        }
                    }
                    debug!(%peer, "echo session ended");
                });
            }
            _ = &mut shutdown => break,
        }
    }
    server.shutdown().await;
}
