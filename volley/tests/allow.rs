//! Only your clients, on real loopback sockets: a server with an allow-list opens sessions for
//! the client keys it lists and no other (A1), and a list replaced on the running server ends
//! the sessions of the keys it drops (A2).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{BOUND, echoes, fast_session, until};
use tokio::time::timeout;
use volley::handler::Call;
use volley::{
    AllowList, Bytes, Client, ClientConfig, CloseCode, CloseReason, ConnectError, Error, Server,
    StaticKeypair,
};

fn keypair() -> StaticKeypair {
    StaticKeypair::generate(&mut volley::OsRng)
}

/// A client pinning `server`, proving `key` (None: anonymous), with fast timers.
fn client(server: &StaticKeypair, key: Option<&StaticKeypair>) -> Client {
    let mut cfg = ClientConfig::new(vec![server.public()]);
    cfg.key = key.cloned();
    cfg.session = fast_session();
    // Shorter than the fast idle timeout (R10).
    cfg.handshake_timeout = Duration::from_millis(500);
    Client::new(cfg)
}

fn list(listed: &[(&StaticKeypair, Option<&str>)]) -> Arc<AllowList> {
    let mut list = AllowList::new();
    for (k, name) in listed {
        list.insert(k.public(), *name);
    }
    Arc::new(list)
}

/// A server with `key` whose allow-list names `listed` (key, name).
async fn server_allowing(key: &StaticKeypair, listed: &[(&StaticKeypair, Option<&str>)]) -> Server {
    let list = list(listed);
    common::bind(key, |cfg| cfg.allow = Some(list)).await
}

#[tokio::test]
async fn a1_a_listed_key_opens_a_session_that_names_its_client() {
    let server_key = keypair();
    let (alice, bob) = (keypair(), keypair());
    let mut server = server_allowing(&server_key, &[(&alice, Some("alice")), (&bob, None)]).await;
    let pool = [server.local_addr()];
    assert_eq!(server.allow_list_len(), Some(2));

    let alices = client(&server_key, Some(&alice));
    let session = timeout(BOUND, alices.connect(&pool))
        .await
        .unwrap()
        .expect("a listed key gets a session");
    let accepted = timeout(BOUND, server.accept()).await.unwrap().unwrap();
    assert_eq!(accepted.client_key(), Some(alice.public()));
    assert_eq!(accepted.client_name(), Some("alice"));
    assert_eq!(Some(accepted.remote()), alices.local_addr(pool[0]));
    // A client's session has no client of its own to name.
    assert_eq!(session.client_key(), None);

    // Listed without a name.
    let _bobs = timeout(BOUND, client(&server_key, Some(&bob)).connect(&pool))
        .await
        .unwrap()
        .expect("a listed key gets a session");
    let accepted = timeout(BOUND, server.accept()).await.unwrap().unwrap();
    assert_eq!(accepted.client_key(), Some(bob.public()));
    assert_eq!(accepted.client_name(), None);
    assert_eq!(server.stats().inits_unauthorized, 0);
}

#[tokio::test]
async fn a1_a_handler_sees_the_clients_key_and_name() {
    let server_key = keypair();
    let alice = keypair();
    let server = server_allowing(&server_key, &[(&alice, Some("alice"))]).await;
    let pool = [server.local_addr()];
    let who = |call: Call| async move {
        let name = call.client.name.as_deref().unwrap_or("?").to_string();
        Some(Bytes::from(format!("{name} {}", call.client.key.to_hex())))
    };
    tokio::spawn(volley::handler::serve(server, who, std::future::pending()));
    let session = timeout(BOUND, client(&server_key, Some(&alice)).connect(&pool))
        .await
        .unwrap()
        .unwrap();
    session.send(b"who am I?").await.unwrap();
    let reply = timeout(BOUND, session.recv()).await.unwrap().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&reply),
        format!("alice {}", alice.public().to_hex())
    );
}

#[tokio::test]
async fn a1_an_unlisted_key_gets_no_session_and_is_told_so() {
    let server_key = keypair();
    let (alice, mallory) = (keypair(), keypair());
    let server = server_allowing(&server_key, &[(&alice, Some("alice"))]).await;
    let pool = [server.local_addr()];
    let handle = server.handle();
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut server = server;
        while let Some(s) = server.accept().await {
            let _ = accepted_tx.send(s);
        }
    });

    // An unlisted key, and an anonymous client (a random key no list holds).
    for key in [Some(&mallory), None] {
        let started = Instant::now();
        let result = timeout(BOUND, client(&server_key, key).connect(&pool))
            .await
            .expect("the connect gives up on its own");
        let err = match result {
            Err(Error::Connect(e @ ConnectError::HandshakeTimeout(server, n))) => {
                assert_eq!(server, pool[0]);
                assert!(n >= 1, "{n}");
                e
            }
            other => panic!("expected HandshakeTimeout, got {other:?}"),
        };
        assert!(
            err.to_string()
                .contains("the servers answered but accepted no session for this client key"),
            "{err}"
        );
        // Two handshakes of 0.5 s, not the whole race deadline again and again.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    until("the server counted the unlisted INITs", || {
        handle.stats().inits_unauthorized >= 2
    })
    .await;
    let stats = handle.stats();
    assert_eq!(stats.sessions_opened, 0, "{stats:?}");
    assert!(
        stats.offers_sent >= 2,
        "probes are still answered: {stats:?}"
    );
    assert!(
        accepted.try_recv().is_err(),
        "no session reached the application"
    );

    // Alice still gets in.
    let session = timeout(BOUND, client(&server_key, Some(&alice)).connect(&pool))
        .await
        .unwrap()
        .unwrap();
    let s = timeout(BOUND, accepted.recv()).await.unwrap().unwrap();
    assert_eq!(s.client_name(), Some("alice"));
    drop(session);
}

#[tokio::test]
async fn a2_a_replaced_list_revokes_the_sessions_of_dropped_keys_at_once() {
    let server_key = keypair();
    let (alice, carol) = (keypair(), keypair());
    let mut server = server_allowing(
        &server_key,
        &[(&alice, Some("alice")), (&carol, Some("carol"))],
    )
    .await;
    let pool = [server.local_addr()];
    let handle = server.handle();

    let alices = timeout(BOUND, client(&server_key, Some(&alice)).connect(&pool))
        .await
        .unwrap()
        .unwrap();
    let alice_server = timeout(BOUND, server.accept()).await.unwrap().unwrap();
    let carols = timeout(BOUND, client(&server_key, Some(&carol)).connect(&pool))
        .await
        .unwrap()
        .unwrap();
    let carol_server = timeout(BOUND, server.accept()).await.unwrap().unwrap();
    assert_eq!(alice_server.client_name(), Some("alice"));
    // Keep both sessions busy both ways while the list changes: echo on the server side.
    let mut server_sessions = Vec::new();
    for s in [alice_server, carol_server] {
        let s = Arc::new(s);
        server_sessions.push(Arc::clone(&s));
        tokio::spawn(async move {
            while let Ok(d) = s.recv().await {
                let _ = s.send_bytes(d).await;
            }
        });
    }
    echoes(&alices, b"before").await;
    echoes(&carols, b"before").await;

    // Carol only, from now on.
    let started = Instant::now();
    let revoked = handle
        .set_allow_list(Some(list(&[(&carol, Some("carol"))])))
        .await;
    assert_eq!(revoked, 1);
    assert_eq!(handle.allow_list_len(), Some(1));
    // The server side's handle and the client's both see why, well within a second.
    let reason = timeout(BOUND, server_sessions[0].closed()).await.unwrap();
    assert_eq!(reason, CloseReason::Local(CloseCode::REVOKED));
    let reason = timeout(BOUND, alices.closed()).await.unwrap();
    let took = started.elapsed();
    assert_eq!(reason, CloseReason::Remote(CloseCode::REVOKED));
    assert!(took < Duration::from_secs(1), "revoked in {took:?}");
    match alices.recv().await {
        Err(Error::Closed(CloseReason::Remote(CloseCode::REVOKED))) => {}
        other => panic!("{other:?}"),
    }
    match alices.send(b"after").await {
        Err(Error::Closed(CloseReason::Remote(CloseCode::REVOKED))) => {}
        other => panic!("{other:?}"),
    }
    until("the revocation is counted", || {
        handle.stats().sessions_revoked == 1
    })
    .await;
    // Carol's session goes on, and she gets new ones; Alice does not.
    echoes(&carols, b"after").await;
    assert!(server_sessions[1].close_reason().is_none());
    let result = timeout(BOUND, client(&server_key, Some(&alice)).connect(&pool))
        .await
        .unwrap();
    assert!(
        matches!(
            result,
            Err(Error::Connect(ConnectError::HandshakeTimeout(..)))
        ),
        "{result:?}"
    );
    let stats = handle.stats();
    assert_eq!(stats.sessions_revoked, 1, "{stats:?}");
    assert!(stats.inits_unauthorized >= 1, "{stats:?}");

    // No list at all: anyone again (the server's sessions are untouched).
    assert_eq!(handle.set_allow_list(None).await, 0);
    assert_eq!(handle.allow_list_len(), None);
    let _again = timeout(BOUND, client(&server_key, Some(&alice)).connect(&pool))
        .await
        .unwrap()
        .expect("no list: any key");
    echoes(&carols, b"still").await;
}

#[tokio::test]
async fn a2_revoking_a_key_with_many_sessions_ends_them_all() {
    let server_key = keypair();
    let (alice, carol) = (keypair(), keypair());
    let server = server_allowing(&server_key, &[(&alice, None), (&carol, None)]).await;
    let pool = [server.local_addr()];
    let handle = server.handle();
    tokio::spawn(volley::echo::serve(server, std::future::pending()));
    // One client, several sessions, all with Alice's key.
    let alices = client(&server_key, Some(&alice));
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(
            timeout(BOUND, alices.connect(&pool))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let carols = timeout(BOUND, client(&server_key, Some(&carol)).connect(&pool))
        .await
        .unwrap()
        .unwrap();
    let revoked = handle.set_allow_list(Some(list(&[(&carol, None)]))).await;
    assert_eq!(revoked, 5);
    for s in &sessions {
        assert_eq!(
            timeout(BOUND, s.closed()).await.unwrap(),
            CloseReason::Remote(CloseCode::REVOKED)
        );
    }
    until("five revocations counted", || {
        handle.stats().sessions_revoked == 5
    })
    .await;
    echoes(&carols, b"unaffected").await;
}

#[tokio::test]
async fn a2_metrics_show_the_allow_lists_size_and_its_counters() {
    let server_key = keypair();
    let (alice, bob) = (keypair(), keypair());
    let server = server_allowing(&server_key, &[(&alice, None), (&bob, None)]).await;
    let handle = server.handle();
    let metrics = volley::metrics::Metrics::new().server(handle.clone());
    let page = metrics.render();
    for line in [
        "volley_server_allow_list_keys 2\n",
        "volley_server_inits_unauthorized_total 0\n",
        "volley_server_sessions_revoked_total 0\n",
        "volley_server_sessions_migrated_total 0\n",
    ] {
        assert!(page.contains(line), "{line:?} missing: {page}");
    }
    handle.set_allow_list(Some(list(&[(&alice, None)]))).await;
    assert!(
        metrics
            .render()
            .contains("volley_server_allow_list_keys 1\n")
    );
    // No list: no size to show (an empty list, 0, would mean nobody gets in).
    handle.set_allow_list(None).await;
    assert!(!metrics.render().contains("volley_server_allow_list_keys"));
    drop(server);
}
