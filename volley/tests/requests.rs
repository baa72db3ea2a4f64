//! Requests and replies on real loopback sockets (P1) and the load report in every reply (P2):
//! many callers on one session, replies in any order, every way a request can end, large
//! requests, the server's load from arrival to reply, and the report a client keeps.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{BOUND, bind, connect, serve, until};
use tokio::sync::mpsc;
use tokio::time::timeout;
use volley::handler::Call;
use volley::{
    Bytes, CloseCode, CloseReason, Error, MAX_REQUESTS, Request, ServerHandle, ServiceModel,
    Session, StaticKeypair,
};

/// A server whose application hands every request it receives to the test (with its session),
/// answering nothing by itself.
async fn holding(
    key: &StaticKeypair,
    tweak: impl FnOnce(&mut volley::ServerConfig),
) -> (
    std::net::SocketAddr,
    ServerHandle,
    mpsc::UnboundedReceiver<(Arc<Session>, Request)>,
) {
    let mut server = bind(key, tweak).await;
    let (addr, handle) = (server.local_addr(), server.handle());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let session = Arc::new(session);
                while let Ok(request) = session.recv_request().await {
                    if tx.send((Arc::clone(&session), request)).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, handle, rx)
}

async fn next(
    rx: &mut mpsc::UnboundedReceiver<(Arc<Session>, Request)>,
) -> (Arc<Session>, Request) {
    timeout(BOUND, rx.recv())
        .await
        .expect("a request within the bound")
        .expect("the server runs")
}

#[tokio::test]
async fn p1_a_thousand_callers_on_one_session_each_get_their_own_reply_in_any_order() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let (addr, handle, mut held) = holding(&key, |_| {}).await;
    let session = Arc::new(connect(&key, &[addr]).await);
    // 1,000 tasks, one request each, all in flight at once.
    let callers: Vec<_> = (0..1_000u32)
        .map(|i| {
            let session = Arc::clone(&session);
            tokio::spawn(async move {
                let asked = format!("request {i}");
                let reply = timeout(BOUND, session.request(asked.clone())).await;
                (asked, reply.expect("within the bound"))
            })
        })
        .collect();
    let mut requests = Vec::new();
    while requests.len() < 1_000 {
        requests.push(next(&mut held).await);
    }
    assert!(requests.iter().all(|(_, r)| r.id().is_some()));
    until("1,000 in flight at the server", || {
        handle.load().wire == 1_000
    })
    .await;
    assert_eq!(session.requests_in_flight(), 1_000);
    // Answered in another order than they came: odd ones last, each its own bytes reversed —
    // 50 at a time, so that no burst overflows the client's socket buffer (a lost reply would
    // leave its caller to its timeout: nothing is retransmitted).
    requests.sort_by_key(|(_, r)| (r.id().unwrap() % 2, std::cmp::Reverse(r.id().unwrap())));
    let mut left = requests.len();
    let mut requests = requests.into_iter();
    while left > 0 {
        for (s, request) in requests.by_ref().take(50) {
            let mut answer = request.data().to_vec();
            answer.reverse();
            request.reply(&s, &answer).await.unwrap();
            left -= 1;
        }
        until("a batch answered", || session.requests_in_flight() == left).await;
    }
    for caller in callers {
        let (asked, reply) = caller.await.unwrap();
        let mut want = asked.into_bytes();
        want.reverse();
        assert_eq!(&reply.expect("a reply")[..], &want[..]);
    }
    assert_eq!(session.requests_in_flight(), 0);
    let stats = session.stats().protocol;
    assert_eq!((stats.replies_received, stats.replies_unknown), (1_000, 0));
    until("no request left at the server", || handle.load().wire == 0).await;
    assert_eq!(handle.stats().requests_received, 1_000);
    assert_eq!(handle.stats().replies_sent, 1_000);
}

#[tokio::test]
async fn p1_a_request_the_server_drops_or_refuses_tells_its_caller_at_once() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let (addr, handle, mut held) = holding(&key, |_| {}).await;
    let session = connect(&key, &[addr]).await;
    // Dropped unanswered by the application.
    let dropped = session.request("drop me");
    let (_, request) = next(&mut held).await;
    drop(request);
    let e = timeout(BOUND, dropped).await.unwrap().unwrap_err();
    assert!(matches!(e, Error::RequestDropped), "{e:?}");
    // Refused by it.
    let refused = session.request("refuse me");
    let (s, request) = next(&mut held).await;
    request.refuse(&s).unwrap();
    let e = timeout(BOUND, refused).await.unwrap().unwrap_err();
    assert!(matches!(e, Error::RequestRefused), "{e:?}");
    // A reply too large to send: its caller hears DROPPED, not silence.
    let large = session.request("answer me big");
    let (s, request) = next(&mut held).await;
    let e = request
        .reply(&s, &vec![0u8; volley::MAX_DATAGRAM + 1])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::TooLarge));
    let e = timeout(BOUND, large).await.unwrap().unwrap_err();
    assert!(matches!(e, Error::RequestDropped), "{e:?}");
    // Received as a plain datagram (`recv`), a request cannot be answered: DROPPED too.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut server = bind(&key, |_| {}).await;
    let plain = server.local_addr();
    tokio::spawn(async move {
        let session = server.accept().await.unwrap();
        let _ = tx.send(session.recv().await.unwrap());
        std::future::pending::<()>().await;
    });
    let s2 = connect(&key, &[plain]).await;
    let e = timeout(BOUND, s2.request("to recv"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, Error::RequestDropped), "{e:?}");
    assert_eq!(&rx.await.unwrap()[..], b"to recv");
    let stats = handle.stats();
    assert_eq!((stats.replies_dropped, stats.replies_refused), (2, 1));
}

#[tokio::test]
async fn p1_a_session_that_ends_fails_every_caller_at_once() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    // The server closes the session with ten requests in flight.
    let (addr, handle, mut held) = holding(&key, |_| {}).await;
    let session = Arc::new(connect(&key, &[addr]).await);
    let callers: Vec<_> = (0..10)
        .map(|i: u8| {
            let session = Arc::clone(&session);
            tokio::spawn(async move { session.request(vec![i]).await })
        })
        .collect();
    let mut kept = Vec::new();
    for _ in 0..10 {
        kept.push(next(&mut held).await);
    }
    kept[0].0.close();
    for caller in callers {
        let e = timeout(BOUND, caller).await.unwrap().unwrap().unwrap_err();
        assert!(
            matches!(
                e,
                Error::RequestLost(CloseReason::Remote(CloseCode::NORMAL))
            ),
            "{e:?}"
        );
    }
    // The session is over for the client: a new request fails at once.
    let e = timeout(BOUND, session.request("after"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, Error::Closed(_)), "{e:?}");
    until("the abandoned requests are no load", || {
        handle.load().wire == 0
    })
    .await;
    assert_eq!(handle.stats().requests_abandoned, 10);
    // Answering one afterwards is an error, not a panic.
    let (s, request) = kept.pop().unwrap();
    assert!(request.reply(&s, b"late").await.is_err());

    // The client closes its own session: its callers fail at once too.
    let session = Arc::new(connect(&key, &[addr]).await);
    let pending = {
        let session = Arc::clone(&session);
        tokio::spawn(async move { session.request("never answered").await })
    };
    let _held = next(&mut held).await;
    session.close();
    let e = timeout(BOUND, pending).await.unwrap().unwrap().unwrap_err();
    assert!(
        matches!(e, Error::RequestLost(CloseReason::Local(_))),
        "{e:?}"
    );
}

#[tokio::test]
async fn p1_requests_in_flight_on_a_lost_server_fail_and_the_session_fails_over() {
    let mut fleet = common::fleet(2).await;
    let client = fleet.client();
    let session = Arc::new(client.connect(&fleet.addrs).await.unwrap());
    assert_eq!(
        &timeout(BOUND, session.request("hello"))
            .await
            .unwrap()
            .unwrap()[..],
        b"hello"
    );
    assert!(session.load_report().is_some());
    let first = session.remote();
    // The server dies under a request that the echo server would have answered.
    fleet.kill(fleet.index(first));
    let lost = timeout(BOUND, session.request("into the void"))
        .await
        .unwrap();
    assert!(
        matches!(
            lost,
            Err(Error::RequestLost(
                CloseReason::Unresponsive | CloseReason::IdleTimeout
            ))
        ),
        "{lost:?}"
    );
    // The session goes on with the other server; its first request goes there.
    let reply = timeout(BOUND, session.request("again"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply[..], b"again");
    assert_ne!(session.remote(), first);
    assert_eq!(session.report().unwrap().failovers, 1);
}

#[tokio::test]
async fn p1_a_cancelled_request_is_forgotten_and_its_late_reply_counted() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let (addr, _handle, mut held) = holding(&key, |_| {}).await;
    let session = connect(&key, &[addr]).await;
    // The caller's timeout drops the future: the request is forgotten.
    let gave_up = timeout(Duration::from_millis(50), session.request("slow")).await;
    assert!(gave_up.is_err());
    assert_eq!(session.requests_in_flight(), 0);
    let (s, request) = next(&mut held).await;
    request.reply(&s, b"too late").await.unwrap();
    // The late reply is counted and dropped by the session, which had forgotten the id.
    until("the late reply counted", || {
        session.stats().protocol.replies_unknown == 1
    })
    .await;
    assert_eq!(session.stats().protocol.replies_received, 0);
    // Its report still counts (authentic, current).
    assert!(session.load_report().is_some());
    // The session goes on.
    let next_call = session.request("next");
    let (s, request) = next(&mut held).await;
    request.reply(&s, b"in time").await.unwrap();
    assert_eq!(
        &timeout(BOUND, next_call).await.unwrap().unwrap()[..],
        b"in time"
    );
}

#[tokio::test]
async fn p1_the_limit_of_requests_in_flight_is_back_pressure() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let (addr, _handle, mut held) = holding(&key, |_| {}).await;
    let session = connect(&key, &[addr]).await;
    let futures: Vec<_> = (0..MAX_REQUESTS).map(|_| session.request("x")).collect();
    assert_eq!(session.requests_in_flight(), MAX_REQUESTS);
    let e = timeout(BOUND, session.request("one too many"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, Error::TooManyRequests), "{e:?}");
    // poll_ready-style back-pressure: pending now, ready once one request ends.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(session.poll_request_ready(&mut cx).is_pending());
    let (s, request) = next(&mut held).await;
    request.reply(&s, b"done").await.unwrap();
    timeout(
        BOUND,
        std::future::poll_fn(|cx| session.poll_request_ready(cx)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(session.requests_in_flight(), MAX_REQUESTS - 1);
    drop(futures);
    assert_eq!(
        session.requests_in_flight(),
        0,
        "dropped futures are forgotten"
    );
}

#[tokio::test]
async fn p1_a_request_of_9000_bytes_and_its_reply() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let (addr, handle) = serve(&key, |_| {}).await;
    let session = connect(&key, &[addr]).await;
    for len in [9_000usize, volley::MAX_DATAGRAM] {
        let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let reply = timeout(BOUND, session.request(body.clone()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.len(), len);
        assert_eq!(&reply[..], &body[..]);
    }
    let e = timeout(BOUND, session.request(vec![0u8; volley::MAX_DATAGRAM + 1]))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, Error::TooLarge));
    // 9,000 B: 7 pieces; 65,535 B: 47.
    until("the pieces counted", || {
        handle.stats().data_fragments == 7 + 47
    })
    .await;
    assert_eq!(handle.stats().data_reassembled, 2);
}

#[tokio::test]
async fn p1_the_server_counts_a_request_from_its_arrival_to_its_reply_without_the_application() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let (addr, handle, mut held) = holding(&key, |c| c.capacity = Some(4)).await;
    let session = connect(&key, &[addr]).await;
    assert_eq!(handle.load().requests, 0);
    let pending = session.request("work");
    let (s, request) = next(&mut held).await;
    // In flight for the endpoint, with no guard taken by the application.
    until("the request is load", || handle.load().requests == 1).await;
    let load = handle.load();
    assert_eq!((load.wire, load.app), (1, 0));
    tokio::time::sleep(Duration::from_millis(60)).await;
    request.reply(&s, b"done").await.unwrap();
    assert_eq!(
        &timeout(BOUND, pending).await.unwrap().unwrap()[..],
        b"done"
    );
    until("completed", || handle.load().requests == 0).await;
    // One completion after ≥ 60 ms in service, against the 10 ms prior: S = (B + S₀) / 2.
    let s = handle.load().service_time;
    assert!(s >= Duration::from_millis(34), "service time {s:?}");
}

#[tokio::test]
async fn p2_the_report_follows_the_servers_expected_completion_and_is_fresh() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let (addr, handle) = serve(&key, |c| {
        c.capacity = Some(2);
        c.service = ServiceModel::Fixed(Duration::from_millis(10));
    })
    .await;
    let session = connect(&key, &[addr]).await;
    assert!(session.load_report().is_none(), "no reply yet");
    let ask = |s: &Session| {
        let call = s.request("x");
        async move { timeout(BOUND, call).await.unwrap().unwrap() }
    };
    ask(&session).await;
    let idle = session.load_report().unwrap();
    assert_eq!(idle.expected, Some(Duration::from_millis(10)));
    assert_eq!((idle.in_flight, idle.capacity), (0, 2));
    assert!(idle.age() < BOUND);
    // Nine requests of the application's own, taken just before the request is sent: the reply
    // counts them — its report is written when it is queued, never from an older figure.
    let guards: Vec<_> = (0..9).map(|_| handle.load_guard()).collect();
    ask(&session).await;
    let busy = session.load_report().unwrap();
    assert_eq!(busy.in_flight, 9);
    assert_eq!(
        busy.expected,
        Some(Duration::from_millis(50)),
        "10 ms × (9 + 1) / 2"
    );
    assert!(busy.at >= idle.at);
    drop(guards);
    ask(&session).await;
    assert_eq!(session.load_report().unwrap().in_flight, 0);
    let rt = session.reply_time().unwrap();
    assert!(rt > Duration::ZERO && rt < BOUND, "{rt:?}");
}

#[tokio::test]
async fn p2_a_reply_reports_the_load_of_the_moment_it_is_queued() {
    // The application takes on k requests of its own (load guards) just before it replies: the
    // report counts them every time, whichever of the two the server's driver hears of first.
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let (addr, handle, mut held) = holding(&key, |c| c.capacity = Some(64)).await;
    let session = connect(&key, &[addr]).await;
    for k in 1..=20u32 {
        let call = session.request("x");
        let (s, request) = next(&mut held).await;
        let guards: Vec<_> = (0..k).map(|_| handle.load_guard()).collect();
        request.reply(&s, b"y").await.unwrap();
        timeout(BOUND, call).await.unwrap().unwrap();
        assert_eq!(session.load_report().unwrap().in_flight, k, "round {k}");
        drop(guards);
    }
}

#[tokio::test]
async fn p1_handlers_answer_requests_by_id_and_none_is_dropped() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let server = bind(&key, |_| {}).await;
    let addr = server.local_addr();
    // Upper-cases; says nothing to "silence".
    let handler = |call: Call| async move {
        (call.data != Bytes::from_static(b"silence"))
            .then(|| Bytes::from(call.data.to_ascii_uppercase()))
    };
    tokio::spawn(volley::handler::serve(
        server,
        handler,
        std::future::pending(),
    ));
    let session = connect(&key, &[addr]).await;
    let both = async { tokio::join!(session.request("one"), session.request("two")) };
    let (a, b) = timeout(BOUND, both).await.unwrap();
    assert_eq!(
        (&a.unwrap()[..], &b.unwrap()[..]),
        (&b"ONE"[..], &b"TWO"[..])
    );
    let e = timeout(BOUND, session.request("silence"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, Error::RequestDropped), "{e:?}");
    // Datagrams are answered with datagrams, as before.
    session.send(b"dgram").await.unwrap();
    assert_eq!(
        &timeout(BOUND, session.recv()).await.unwrap().unwrap()[..],
        b"DGRAM"
    );
}

#[test]
fn p1_a_reply_future_can_be_a_tower_services_future() {
    fn service_future<F: std::future::Future + Send + Unpin + 'static>() {}
    service_future::<volley::ReplyFuture>();
}

#[tokio::test]
async fn p1_a_servers_session_sends_no_requests() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let mut server = bind(&key, |_| {}).await;
    let addr = server.local_addr();
    let accepted = tokio::spawn(async move { server.accept().await.unwrap() });
    let _client = connect(&key, &[addr]).await;
    let server_side = timeout(BOUND, accepted).await.unwrap().unwrap();
    let e = server_side.request("backwards").await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
}
