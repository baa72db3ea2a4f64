//! Load on real loopback sockets: answer policies turn a server's load into answer time, and a
//! server counts requests from their arrival to their reply.

mod common;

use std::time::Duration;

use common::{BOUND, bind, client_for, connect, echoes, serve, until};
use tokio::time::timeout;
use volley::{
    AnswerPolicy, LoadHint, OfferFate, SelectionPolicy, ServerConfig, ServiceModel, StaticKeypair,
};

#[tokio::test]
async fn l1_gated_server_holds_the_probe_until_a_load_guard_drops() {
    const HOLD: Duration = Duration::from_millis(80);
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let (addr, server) = serve(&key, |c| {
        c.capacity = Some(1);
        c.service = ServiceModel::Fixed(Duration::from_millis(40));
        c.answer = AnswerPolicy::gated();
    })
    .await;
    // One request in flight fills the only slot.
    let guard = server.load_guard();
    until("guard counted", || server.load().app == 1).await;
    let client = client_for(&key, SelectionPolicy::Earliest);
    let connecting = tokio::spawn(async move { client.connect(&[addr]).await });
    until("probe held", || server.load().held == 1).await;
    // The probe stays held while the slot is busy.
    tokio::time::sleep(HOLD).await;
    drop(guard);
    let s = timeout(BOUND, connecting).await.unwrap().unwrap().unwrap();
    let r = s.report().unwrap();
    assert!(r.answer_time.unwrap() >= HOLD, "{:?}", r.answer_time);
    // The freed slot released the held probe at once: its offer went out as a free slot's,
    // not as the busy answer the hold's expiry would have sent, and before that expiry.
    assert_eq!(server.stats().offers_busy, 0);
    assert!(
        r.answer_time.unwrap() < volley_proto::server::answer::DEFAULT_GATE_MAX_HOLD,
        "{:?}",
        r.answer_time
    );
    assert_eq!(
        r.load,
        Some(LoadHint {
            in_flight: 0,
            capacity: 1,
            expected_us: 40_000,
        })
    );
    assert_eq!(r.stats.probes_sent, 1, "answered before any retransmission");
    echoes(&s, b"released").await;
    let stats = server.stats();
    assert_eq!(stats.probes_held, 1);
    assert_eq!(stats.probes_dropped_hold_expired, 0);
    // The echo was a request while it was served; the idle session is not load (L6).
    until("echo completed", || server.load().requests == 0).await;
    assert_eq!(server.load().sessions, 1);
}

#[tokio::test]
async fn l1_paced_answer_time_grows_with_load_guards() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    // Paced at half the expected completion, so that the gaps dwarf loopback noise.
    let paced = |c: &mut ServerConfig| {
        c.capacity = Some(4);
        c.service = ServiceModel::Fixed(Duration::from_millis(40));
        c.answer = AnswerPolicy::Paced {
            max_delay: Duration::from_millis(100),
            divisor: 2,
        };
    };
    let (busy, busy_h) = serve(&key, paced).await;
    let (idle, _) = serve(&key, paced).await;
    // Eight requests on four slots: the busy server expects 90 ms and answers 45 ms late; the
    // idle one expects 40 ms and answers 20 ms late.
    let guards: Vec<_> = (0..8).map(|_| busy_h.load_guard()).collect();
    until("guards counted", || busy_h.load().app == 8).await;
    let s = connect(&key, &[busy, idle]).await;
    assert_eq!(s.remote(), idle, "the idle server answers first");
    until("the busy server's late offer", || {
        s.report().unwrap().offers.len() == 2
    })
    .await;
    let late = s.report().unwrap().offers[1];
    assert_eq!((late.server, late.fate), (busy, OfferFate::Late));
    assert!(late.answer_time >= Duration::from_millis(45), "{late:?}");
    assert_eq!(
        late.load,
        Some(LoadHint {
            in_flight: 8,
            capacity: 4,
            expected_us: 90_000,
        }),
        "L2, L5: the hint carries the guards and the expected completion"
    );
    drop(guards);
    until("guards released", || busy_h.load().app == 0).await;
}

#[tokio::test]
async fn l5_recv_request_counts_each_request_from_arrival_to_reply() {
    let key = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let mut server = bind(&key, |c| c.capacity = Some(4)).await;
    let (addr, handle) = (server.local_addr(), server.handle());
    // The application holds each request until told to answer it.
    let (go_tx, mut go_rx) = tokio::sync::mpsc::channel::<()>(4);
    tokio::spawn(async move {
        let s = server.accept().await.expect("a session");
        while let Ok(req) = s.recv_request().await {
            if go_rx.recv().await.is_none() {
                break;
            }
            let data = req.data().to_vec();
            req.reply(&s, &data).await.unwrap();
        }
    });
    let s = connect(&key, &[addr]).await;
    // An open session with no request is no load (L6).
    until("session open", || handle.load().sessions == 1).await;
    assert_eq!(handle.load().requests, 0);
    s.send(b"one").await.unwrap();
    s.send(b"two").await.unwrap();
    // Both count from their arrival, the queued one included — no guard in the application.
    until("two requests in flight", || handle.load().requests == 2).await;
    go_tx.send(()).await.unwrap();
    assert_eq!(
        &timeout(BOUND, s.recv()).await.unwrap().unwrap()[..],
        b"one"
    );
    until("one completed", || handle.load().requests == 1).await;
    go_tx.send(()).await.unwrap();
    assert_eq!(
        &timeout(BOUND, s.recv()).await.unwrap().unwrap()[..],
        b"two"
    );
    until("both completed", || handle.load().requests == 0).await;
    // The completions are what the service-time estimate learns from: it moved off the prior.
    assert_ne!(
        handle.load().service_time,
        volley_proto::server::estimate::DEFAULT_SERVICE_PRIOR
    );
}
