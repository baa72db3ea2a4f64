//! A server session follows its client to a new address (PROTOCOL.md §5.6): the runtime's
//! `Session::remote` on the server side moves with the core's session once the new address is
//! validated.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{BOUND, client_for, echoes, until};
use tokio::net::UdpSocket;
use tokio::time::timeout;
use volley::{SelectionPolicy, StaticKeypair};

/// A relay standing for a NAT between a client and a server: the client's datagrams leave it
/// from one socket, then — after `rebind` — from another, as a NAT that changed the client's
/// port; the server's answers, to either, go back to the client.
struct Rebinding {
    front: SocketAddr,
    rebind: tokio::sync::mpsc::UnboundedSender<()>,
    outer: [SocketAddr; 2],
}

async fn rebinding(server: SocketAddr) -> Rebinding {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let outer = [
        Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()),
        Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()),
    ];
    let addrs = [
        outer[0].local_addr().unwrap(),
        outer[1].local_addr().unwrap(),
    ];
    let (rebind, mut rebound) = tokio::sync::mpsc::unbounded_channel::<()>();
    let client = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    // Server → client, from either outer socket.
    for o in &outer {
        let (o, front, client) = (Arc::clone(o), Arc::clone(&front), Arc::clone(&client));
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, _)) = o.recv_from(&mut buf).await {
                let to = *client.lock().unwrap();
                if let Some(to) = to {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        });
    }
    // Client → server, from the current outer socket.
    let front_addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        let mut current = 0;
        loop {
            tokio::select! {
                r = front.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { break };
                    *client.lock().unwrap() = Some(from);
                    let _ = outer[current].send_to(&buf[..n], server).await;
                }
                Some(()) = rebound.recv() => current = 1,
            }
        }
    });
    Rebinding {
        front: front_addr,
        rebind,
        outer: addrs,
    }
}

#[tokio::test]
async fn a4_a_server_session_follows_its_client_to_a_new_address() {
    let server_key = StaticKeypair::generate(&mut volley::OsRng);
    let mut server = common::bind(&server_key, |_| {}).await;
    let handle = server.handle();
    let nat = rebinding(server.local_addr()).await;
    // The client knows the server by the relay's address and pins the server's key: the
    // session is the server's, carried through the relay.
    let session = timeout(
        BOUND,
        client_for(&server_key, SelectionPolicy::Earliest).connect(&[nat.front]),
    )
    .await
    .unwrap()
    .unwrap();
    let accepted = Arc::new(timeout(BOUND, server.accept()).await.unwrap().unwrap());
    assert_eq!(accepted.remote(), nat.outer[0]);
    let echo = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok(d) = echo.recv().await {
            let _ = echo.send_bytes(d).await;
        }
    });
    echoes(&session, b"from the first port").await;

    // The NAT moves the client: the server validates the new address and follows it.
    nat.rebind.send(()).unwrap();
    timeout(BOUND, async {
        let mut i = 0u32;
        while accepted.remote() != nat.outer[1] {
            i += 1;
            echoes(&session, format!("from the second port {i}").as_bytes()).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the server session's remote follows the client");
    assert_eq!(accepted.close_reason(), None, "the same session");
    until("the move is counted", || {
        handle.stats().sessions_migrated == 1
    })
    .await;
    echoes(&session, b"after the move").await;
    let stats = handle.stats();
    assert_eq!(stats.sessions_opened, 1, "no second handshake, no failover");
    assert!(stats.data_new_address >= 1);
}
