//! The default service: echo every session datagram back to its sender, each one counted as a
//! request in flight until its echo is sent (L5).

use std::future::Future;

use crate::server::Server;

/// Serves echo sessions on `server` until `shutdown` resolves, then shuts the server down
/// gracefully (clients are told to go elsewhere).
pub async fn serve(server: Server, shutdown: impl Future<Output = ()>) {
    serve_with(server, shutdown, |_| {}).await;
}

/// Like [`serve`], and hands the server's final counters to `on_stop` after shutdown.
pub async fn serve_with(
    server: Server,
    shutdown: impl Future<Output = ()>,
    on_stop: impl FnOnce(crate::ServerStats),
) {
    let stats = crate::handler::serve_sessions(server, shutdown, |session| async move {
        // Each datagram is a request: the server counts it until it is echoed.
        while let Ok(request) = session.recv_request().await {
            // The request's own bytes go back: moved, never copied.
            if request.echo(&session).await.is_err() {
                break;
            }
        }
    })
    .await;
    on_stop(stats);
}
