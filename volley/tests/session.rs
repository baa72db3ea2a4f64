//! One session shared by tasks (`Arc<Session>`): a task receives while another sends on the
//! same session, on the client side and on the server side, as with a shared tokio
//! `UdpSocket`.

mod common;

use std::sync::Arc;

use common::{BOUND, bind, client_for, serve};
use tokio::sync::oneshot;
use tokio::time::timeout;
use volley::{Error, SelectionPolicy, Session, StaticKeypair};

/// Datagrams each way: few enough that loopback loses none of them.
const N: u32 = 64;

/// Receives `n` datagrams of `N` numbered ones and returns their numbers, sorted (datagrams
/// may be reordered).
async fn receive_numbers(session: &Session, n: u32) -> Vec<u32> {
    let mut got = Vec::new();
    for _ in 0..n {
        let d = session.recv().await.unwrap();
        got.push(u32::from_be_bytes(d[..].try_into().unwrap()));
    }
    got.sort_unstable();
    got
}

/// Sends the numbers `0..N`, one datagram each.
async fn send_numbers(session: &Session) {
    for i in 0..N {
        session.send(&i.to_be_bytes()).await.unwrap();
    }
}

#[tokio::test]
async fn r5_a_client_session_is_read_by_one_task_and_written_by_another_at_once() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let (addr, _server) = serve(&key, |_| {}).await;
    let client = client_for(&key, SelectionPolicy::Earliest);
    let session = Arc::new(
        timeout(BOUND, client.connect(&[addr]))
            .await
            .unwrap()
            .unwrap(),
    );
    // The reader waits in `recv` while the writer sends on the same session; the echo server
    // sends every datagram back.
    let reader = {
        let s = Arc::clone(&session);
        tokio::spawn(async move { receive_numbers(&s, N).await })
    };
    let writer = {
        let s = Arc::clone(&session);
        tokio::spawn(async move { send_numbers(&s).await })
    };
    timeout(BOUND, writer).await.unwrap().unwrap();
    let echoed = timeout(BOUND, reader).await.unwrap().unwrap();
    assert_eq!(echoed, (0..N).collect::<Vec<_>>());
    assert_eq!(session.stats().datagrams_sent, u64::from(N));
    assert_eq!(session.stats().datagrams_received, u64::from(N));
}

#[tokio::test]
async fn r5_a_server_session_is_read_by_one_task_and_written_by_another_at_once() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let mut server = bind(&key, |_| {}).await;
    let pool = vec![server.local_addr()];
    let client = client_for(&key, SelectionPolicy::Earliest);
    let up = Arc::new(
        timeout(BOUND, client.connect(&pool))
            .await
            .unwrap()
            .unwrap(),
    );
    let down = Arc::new(timeout(BOUND, server.accept()).await.unwrap().unwrap());

    // Server side: one task receives everything the client sends, then waits on for the
    // client's close; another sends to the client meanwhile.
    let (all_in, all_in_rx) = oneshot::channel();
    let server_reader = {
        let s = Arc::clone(&down);
        tokio::spawn(async move {
            let got = receive_numbers(&s, N).await;
            let _ = all_in.send(());
            (got, s.recv().await)
        })
    };
    let server_writer = {
        let s = Arc::clone(&down);
        tokio::spawn(async move { send_numbers(&s).await })
    };
    // Client side, the same at once.
    let client_reader = {
        let s = Arc::clone(&up);
        tokio::spawn(async move { receive_numbers(&s, N).await })
    };
    send_numbers(&up).await;

    timeout(BOUND, server_writer).await.unwrap().unwrap();
    let from_server = timeout(BOUND, client_reader).await.unwrap().unwrap();
    assert_eq!(from_server, (0..N).collect::<Vec<_>>());
    // Once the server has everything, the client closes: the server's reader, waiting in
    // `recv`, wakes to the end.
    timeout(BOUND, all_in_rx).await.unwrap().unwrap();
    up.close();
    let (from_client, end) = timeout(BOUND, server_reader).await.unwrap().unwrap();
    assert_eq!(from_client, (0..N).collect::<Vec<_>>());
    assert!(matches!(end, Err(Error::Closed(_))), "{end:?}");
}
