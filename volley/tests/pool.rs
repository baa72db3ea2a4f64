//! `volley::Pool` (P3): every request balanced over a few sessions, on loopback servers that
//! answer through the handler API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use volley::handler::Call;
use volley::{Bytes, Client, ClientConfig, Pool, PoolConfig, Server, ServerConfig, StaticKeypair};

/// Bounds every wait of a test: a hang fails instead of blocking CI.
const BOUND: Duration = Duration::from_secs(30);

/// A server whose handler answers `<index>:<request>` after its current delay, `capacity`
/// requests at a time; the handles to change the delay and to stop it (abruptly: its socket
/// closes, no CLOSE is sent).
struct Fleet {
    addrs: Vec<SocketAddr>,
    delays: Vec<Arc<AtomicU64>>,
    served: Vec<Arc<AtomicU64>>,
    tasks: Vec<tokio::task::JoinHandle<volley::ServerStats>>,
}

async fn fleet(key: &StaticKeypair, n: usize, capacity: u32) -> Fleet {
    let mut fleet = Fleet {
        addrs: Vec::new(),
        delays: Vec::new(),
        served: Vec::new(),
        tasks: Vec::new(),
    };
    for i in 0..n {
        let mut config = ServerConfig::new(key.clone());
        config.capacity = Some(capacity);
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap();
        fleet.addrs.push(server.local_addr());
        let delay = Arc::new(AtomicU64::new(1));
        let served = Arc::new(AtomicU64::new(0));
        fleet.delays.push(Arc::clone(&delay));
        fleet.served.push(Arc::clone(&served));
        // It serves `capacity` requests at once, as its configuration says; the rest wait.
        let slots = Arc::new(tokio::sync::Semaphore::new(capacity as usize));
        let handler = move |call: Call| {
            let (delay, served) = (Arc::clone(&delay), Arc::clone(&served));
            let slots = Arc::clone(&slots);
            async move {
                let _slot = slots.acquire().await.ok()?;
                tokio::time::sleep(Duration::from_millis(delay.load(Ordering::Relaxed))).await;
                served.fetch_add(1, Ordering::Relaxed);
                let mut reply = format!("{i}:").into_bytes();
                reply.extend_from_slice(&call.data);
                Some(Bytes::from(reply))
            }
        };
        fleet.tasks.push(tokio::spawn(volley::handler::serve(
            server,
            handler,
            std::future::pending(),
        )));
    }
    fleet
}

fn client(key: &StaticKeypair) -> Client {
    let mut config = ClientConfig::new(vec![key.public()]);
    // A dead server is noticed within a second.
    config.session.keepalive_interval = Duration::from_millis(100);
    config.session.idle_timeout = Duration::from_millis(800);
    config.handshake_timeout = Duration::from_millis(500);
    Client::new(config)
}

/// Which server answered: the reply's `<index>:` prefix.
fn server_of(reply: &[u8]) -> usize {
    let text = std::str::from_utf8(reply).unwrap();
    text.split_once(':').unwrap().0.parse().unwrap()
}

#[tokio::test]
async fn p3_a_reply_reaches_its_caller_with_many_in_flight_over_the_members() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let fleet = fleet(&key, 4, 4).await;
    // A fixed pool (600 requests at once would grow it: see the next test).
    let mut config = PoolConfig::members(3);
    config.balance.max_members = 3;
    let pool = Pool::connect(&client(&key), &fleet.addrs, config)
        .await
        .unwrap();
    assert_eq!(pool.members().len(), 3);
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..600u32 {
        let pool = pool.clone();
        calls.spawn(async move {
            let body = format!("request {n}");
            let reply = tokio::time::timeout(BOUND / 2, pool.request(Bytes::from(body.clone())))
                .await
                .unwrap_or_else(|_| panic!("no reply to {body}"))
                .unwrap();
            let text = std::str::from_utf8(&reply).unwrap().to_string();
            assert!(text.ends_with(&format!(":{body}")), "{text} for {body}");
            server_of(&reply)
        });
    }
    let mut used = std::collections::HashSet::new();
    tokio::time::timeout(BOUND, async {
        while let Some(server) = calls.join_next().await {
            used.insert(server.unwrap());
        }
    })
    .await
    .unwrap();
    // Every member served some of them; no server outside the pool did.
    assert_eq!(used.len(), 3, "{used:?}");
    let stats = pool.stats();
    assert_eq!(stats.balance.requests, 600);
    assert_eq!(stats.failed_requests, 0);
}

/// Runs `n` requests through `pool` from `workers` callers at once, each sending its next
/// request when its last is answered; the servers that answered.
async fn closed_loop(pool: &Pool, workers: u32, n: u32) -> std::collections::HashSet<usize> {
    let mut calls = tokio::task::JoinSet::new();
    for w in 0..workers {
        let pool = pool.clone();
        calls.spawn(async move {
            let mut used = std::collections::HashSet::new();
            for i in (w..n).step_by(workers as usize) {
                let reply = pool.request(Bytes::from(i.to_string())).await.unwrap();
                used.insert(server_of(&reply));
            }
            used
        });
    }
    let mut used = std::collections::HashSet::new();
    tokio::time::timeout(BOUND, async {
        while let Some(u) = calls.join_next().await {
            used.extend(u.unwrap());
        }
    })
    .await
    .unwrap();
    used
}

#[tokio::test]
async fn p3_a_single_client_carrying_a_fleets_load_grows_its_pool() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    // 8 servers of 2 slots, 20 ms a request; one client keeps 24 requests in flight: two
    // members' 4 slots cannot carry it.
    let fleet = fleet(&key, 8, 2).await;
    for d in &fleet.delays {
        d.store(20, Ordering::Relaxed);
    }
    let live = |pool: &Pool| pool.members().iter().filter(|m| !m.retiring).count();
    // A pool that may not grow (max_members = k) keeps two live members (its races replace
    // them, for the whole pool queues, but never add one).
    let mut fixed = PoolConfig::members(2);
    fixed.balance.max_members = 2;
    let pool = Pool::connect(&client(&key), &fleet.addrs, fixed)
        .await
        .unwrap();
    closed_loop(&pool, 24, 240).await;
    assert_eq!(live(&pool), 2);
    assert_eq!(pool.stats().balance.grow_races, 0);
    pool.close();
    // The default pool grows: the slots its requests keep busy (their rate × 20 ms) pass half
    // its members', and races bring as many members as they need (here every server).
    let pool = Pool::connect(&client(&key), &fleet.addrs, PoolConfig::members(2))
        .await
        .unwrap();
    let used = closed_loop(&pool, 24, 960).await;
    let stats = pool.stats();
    assert!(stats.balance.grow_races >= 1, "{stats:?}");
    assert!(live(&pool) >= 6, "{stats:?}");
    assert!(
        used.len() >= 6,
        "only {used:?} served: {stats:?} {:#?}",
        pool.members()
    );
    assert_eq!(stats.failed_requests, 0);
}

#[tokio::test]
async fn p3_a_member_that_turns_slow_stops_getting_requests() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let fleet = fleet(&key, 2, 4).await;
    let pool = Pool::connect(&client(&key), &fleet.addrs, PoolConfig::members(2))
        .await
        .unwrap();
    // While they are alike, the member with the shorter path takes most requests.
    let send = |n: u32| {
        let pool = pool.clone();
        async move {
            let mut calls = tokio::task::JoinSet::new();
            for i in 0..n {
                let pool = pool.clone();
                calls.spawn(async move { pool.request(Bytes::from(i.to_string())).await });
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let mut by_server = [0u32; 2];
            while let Some(r) = calls.join_next().await {
                by_server[server_of(&r.unwrap().unwrap())] += 1;
            }
            by_server
        }
    };
    let before = tokio::time::timeout(BOUND, send(200)).await.unwrap();
    let (busy, other) = if before[0] >= before[1] {
        (0, 1)
    } else {
        (1, 0)
    };
    // That one turns slow (60 ms a request where the other takes 1): its reports say so, and
    // the requests go to the other.
    fleet.delays[busy].store(60, Ordering::Relaxed);
    let _ = tokio::time::timeout(BOUND, send(50)).await.unwrap();
    let after = tokio::time::timeout(BOUND, send(300)).await.unwrap();
    assert!(
        after[busy] * 10 < after[other],
        "the slow member still took {} of {} (before: {before:?})",
        after[busy],
        after[0] + after[1]
    );
}

#[tokio::test]
async fn p3_a_member_whose_server_dies_is_replaced_and_a_retry_layer_loses_nothing() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let fleet = fleet(&key, 4, 4).await;
    let pool = Pool::connect(&client(&key), &fleet.addrs, PoolConfig::members(2))
        .await
        .unwrap();
    let members: Vec<SocketAddr> = pool.members().iter().map(|m| m.server).collect();
    let victim = fleet.addrs.iter().position(|a| *a == members[0]).unwrap();
    for d in &fleet.delays {
        d.store(20, Ordering::Relaxed);
    }
    // Requests in flight everywhere, then the member's server vanishes (no CLOSE).
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let pool = pool.clone();
        calls.spawn(async move {
            // The retry a caller (or tower's retry layer) would do: a request that failed is
            // sent again, up to 3 times.
            let mut last = None;
            for _ in 0..3 {
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    pool.request(Bytes::from(i.to_string())),
                )
                .await
                {
                    Ok(Ok(reply)) => return Ok(server_of(&reply)),
                    Ok(Err(e)) => last = Some(e.to_string()),
                    Err(_) => last = Some("timed out".to_string()),
                }
            }
            Err(last.unwrap())
        });
        if i == 50 {
            fleet.tasks[victim].abort();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut answered = 0;
    tokio::time::timeout(BOUND, async {
        while let Some(r) = calls.join_next().await {
            let server = r.unwrap().expect("every request answered after retries");
            assert!(server != victim || answered < 200);
            answered += 1;
        }
    })
    .await
    .unwrap();
    assert_eq!(answered, 200);
    // The pool is back to two live members, neither of them the dead server.
    tokio::time::timeout(BOUND, async {
        loop {
            let live: Vec<SocketAddr> = pool
                .members()
                .iter()
                .filter(|m| !m.retiring)
                .map(|m| m.server)
                .collect();
            if live.len() == 2 && !live.contains(&fleet.addrs[victim]) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("two live members again");
    let stats = pool.stats();
    assert!(
        stats.balance.fill_races + stats.balance.behind_races >= 1 && stats.balance.failed >= 1,
        "{stats:?}"
    );
}

#[tokio::test]
async fn p3_the_pool_is_a_tower_service_with_back_pressure() {
    use tower_service::Service;
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let fleet = fleet(&key, 2, 4).await;
    for d in &fleet.delays {
        d.store(50, Ordering::Relaxed);
    }
    let mut config = PoolConfig::members(2);
    config.max_in_flight = 2;
    let mut pool = Pool::connect(&client(&key), &fleet.addrs, config)
        .await
        .unwrap();
    let ready = |pool: &mut Pool| {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        pool.poll_ready(&mut cx).is_ready()
    };
    assert!(ready(&mut pool));
    let first = pool.call(Bytes::from_static(b"a"));
    assert!(ready(&mut pool));
    let second = pool.call(Bytes::from_static(b"b"));
    // Two in flight: the third waits for one of them.
    assert!(!ready(&mut pool), "a third call must wait");
    let (a, b) = tokio::time::timeout(BOUND, async { (first.await, second.await) })
        .await
        .unwrap();
    assert!(a.unwrap().ends_with(b":a") && b.unwrap().ends_with(b":b"));
    assert!(ready(&mut pool), "ready again once a request is answered");
}

#[tokio::test]
async fn p3_a_member_whose_server_answers_errors_at_once_takes_almost_no_request() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    // Two servers answer `<i>:<request>` after 2 ms; a third answers `E` at once: its reports
    // say it is idle and the fastest, only the replies say otherwise. All three are members.
    let fleet = fleet(&key, 2, 4).await;
    for d in &fleet.delays {
        d.store(2, Ordering::Relaxed);
    }
    let mut config = ServerConfig::new(key.clone());
    config.capacity = Some(4);
    let sink = Server::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let sink_addr = sink.local_addr();
    let answer_errors = |_: Call| async { Some(Bytes::from_static(b"E")) };
    tokio::spawn(volley::handler::serve(
        sink,
        answer_errors,
        std::future::pending(),
    ));
    let mut servers = fleet.addrs.clone();
    servers.push(sink_addr);
    let failed: volley::ReplyClassifier = Arc::new(|reply: &Bytes| reply.starts_with(b"E"));
    let pool = Pool::connect_with(&client(&key), &servers, PoolConfig::members(3), failed)
        .await
        .unwrap();
    assert!(pool.members().iter().any(|m| m.server == sink_addr));
    let errors = erring_replies(&pool, 300).await;
    // Three errors make it failing for a second; then one probe, failing again, each second
    // (the 300 requests take about one to two seconds).
    assert!(
        (3..=6).contains(&errors),
        "{errors} of 300 requests went to the erring server"
    );
    // Without the classifier, its replies are successes and it is the fastest member: it takes
    // most requests (what the classifier is for).
    let pool = Pool::connect(&client(&key), &servers, PoolConfig::members(3))
        .await
        .unwrap();
    let sunk = erring_replies(&pool, 100).await;
    assert!(
        sunk > 50,
        "without a classifier the erring server took {sunk} of 100"
    );
}

/// Sends `n` requests one after another, 1 ms apart; how many were answered `E`.
async fn erring_replies(pool: &Pool, n: u32) -> u32 {
    let mut errors = 0;
    for i in 0..n {
        let reply = tokio::time::timeout(BOUND, pool.request(Bytes::from(i.to_string())))
            .await
            .unwrap()
            .unwrap();
        if reply.starts_with(b"E") {
            errors += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    errors
}
