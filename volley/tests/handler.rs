//! The handler API on real loopback sockets (D6): a function or a tower service answers each
//! request, and the server counts each request from its arrival to its reply with no guards in
//! the application's code.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::timeout;
use volley::handler::Call;
use volley::{Bytes, Client, ClientConfig, Server, ServerConfig, StaticKeypair};

const BOUND: Duration = Duration::from_secs(20);

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    timeout(BOUND, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never: {what}"));
}

#[tokio::test]
async fn d6_a_handler_function_is_load_from_each_requests_arrival_to_its_reply() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let mut cfg = ServerConfig::new(key.clone());
    cfg.capacity = Some(4);
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    let (addr, handle) = (server.local_addr(), server.handle());
    let release = Arc::new(Notify::new());
    let gate = Arc::clone(&release);
    tokio::spawn(volley::handler::serve(
        server,
        move |call: Call| {
            let gate = Arc::clone(&gate);
            async move {
                gate.notified().await;
                Some(Bytes::from(call.data.to_ascii_uppercase()))
            }
        },
        std::future::pending(),
    ));
    let session = Client::new(ClientConfig::new(vec![key.public()]))
        .connect(&[addr])
        .await
        .unwrap();
    session.send(b"hello").await.unwrap();
    // The handler holds the request: the server counts it, with no guard in this code.
    until("the request counts as load", || handle.load().requests == 1).await;
    release.notify_one();
    let reply = timeout(BOUND, session.recv()).await.unwrap().unwrap();
    assert_eq!(&reply[..], b"HELLO");
    until("the request completed", || handle.load().requests == 0).await;
}

/// A tower service that upper-cases, counting its `poll_ready` and `call`s.
#[derive(Clone, Default)]
struct Upper {
    ready: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

impl tower_service::Service<Call> for Upper {
    type Response = Option<Bytes>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Option<Bytes>, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.ready.fetch_add(1, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        // An empty request gets no reply.
        let reply = (!call.data.is_empty()).then(|| Bytes::from(call.data.to_ascii_uppercase()));
        Box::pin(async move { Ok(reply) })
    }
}

#[tokio::test]
async fn d6_a_tower_service_answers_each_request_after_poll_ready() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::new(key.clone()),
    )
    .await
    .unwrap();
    let (addr, handle) = (server.local_addr(), server.handle());
    let upper = Upper::default();
    let (ready, calls) = (Arc::clone(&upper.ready), Arc::clone(&upper.calls));
    tokio::spawn(volley::handler::serve_service(
        server,
        upper,
        std::future::pending(),
    ));
    let session = Client::new(ClientConfig::new(vec![key.public()]))
        .connect(&[addr])
        .await
        .unwrap();
    session.send(b"").await.unwrap();
    session.send(b"tower").await.unwrap();
    let reply = timeout(BOUND, session.recv()).await.unwrap().unwrap();
    assert_eq!(&reply[..], b"TOWER", "the empty request got no reply");
    until("both requests completed", || {
        calls.load(Ordering::Relaxed) == 2 && handle.load().requests == 0
    })
    .await;
    assert!(
        ready.load(Ordering::Relaxed) >= 2,
        "poll_ready before each call"
    );
}
