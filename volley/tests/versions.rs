//! A4 (PROTOCOL.md §3.9) over real sockets: a v2 client racing a server that speaks only
//! version 1 gets a clear error naming the version, not a silent timeout.

mod common;

use common::{BOUND, client_for};
use tokio::net::UdpSocket;
use tokio::time::timeout;
use volley::{ConnectError, Error, SelectionPolicy, StaticKeypair};

#[tokio::test]
async fn a4_a_client_racing_a_v1_server_is_told_its_version() {
    // A stand-in v1 server: every probe-sized datagram is answered with VERSIONS naming 1.
    let v1 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = v1.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = v1.recv_from(&mut buf).await {
            if n >= 256 && buf[0] != 1 {
                let mut answer = vec![0u8, 1, 1];
                answer.extend_from_slice(&buf[..32]);
                let _ = v1.send_to(&answer, from).await;
            }
        }
    });
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let result = timeout(
        BOUND,
        client_for(&key, SelectionPolicy::Earliest).connect(&[addr]),
    )
    .await
    .expect("an answer within the bound");
    match result {
        Err(Error::Connect(ConnectError::VersionMismatch(server, 1))) => assert_eq!(server, addr),
        other => panic!("{other:?}"),
    }
}
