//! Discovery against a real DNS server on loopback (D3): an in-process `hickory-server`
//! answering for `pool.test.` with a 1 s TTL, whose record set changes during the test.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server as DnsServer;
use hickory_server::proto::rr::rdata::{A, SOA, SRV, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use tokio::net::UdpSocket;
use tokio::time::timeout;
use volley::discovery::{Pool, PoolEntry, Resolver};
use volley::proxy::{UdpForward, UdpProxy};
use volley::{Client, ClientConfig, Server, ServerConfig, StaticKeypair};

const BOUND: Duration = Duration::from_secs(20);

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

/// A DNS server for `pool.test.` on loopback; the zone handler, to change its records.
async fn dns(a: Ipv4Addr, srv_port: u16) -> (SocketAddr, Arc<InMemoryZoneHandler>) {
    let origin = name("pool.test.");
    let mut zone = InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
    let soa = SOA::new(
        name("ns.pool.test."),
        name("admin.pool.test."),
        1,
        60,
        60,
        60,
        1,
    );
    zone.upsert_mut(Record::from_rdata(origin.clone(), 1, RData::SOA(soa)), 1);
    zone.upsert_mut(
        Record::from_rdata(name("servers.pool.test."), 1, RData::A(A(a))),
        1,
    );
    // A TXT answer of 4,038 bytes (O4): 16 strings of 248 bytes, 3,984 bytes of RDATA, with the
    // header (12), the question (19), the answer's fixed part (12) and EDNS's OPT (11). (4,096
    // is the most hickory's resolver reads from one UDP answer.)
    zone.upsert_mut(
        Record::from_rdata(name("big.pool.test."), 1, RData::TXT(TXT::new(big_txt()))),
        1,
    );
    zone.upsert_mut(
        Record::from_rdata(
            name("_echo._udp.pool.test."),
            1,
            RData::SRV(SRV::new(0, 0, srv_port, name("servers.pool.test."))),
        ),
        1,
    );
    let zone = Arc::new(zone);
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin), vec![zone.clone()]);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let mut server = DnsServer::new(catalog);
    server.register_socket(socket);
    tokio::spawn(async move {
        let _ = server.block_until_done().await;
    });
    (addr, zone)
}

/// The strings of `big.pool.test.`'s TXT record.
fn big_txt() -> Vec<String> {
    (0..16u8)
        .map(|i| std::iter::repeat_n(char::from(b'a' + i), 248).collect())
        .collect()
}

/// Replaces `servers.pool.test.`'s A record.
async fn move_servers(zone: &InMemoryZoneHandler, to: Ipv4Addr, serial: u32) {
    let key = RrKey::new(LowerName::new(&name("servers.pool.test.")), RecordType::A);
    zone.records_mut().await.remove(&key);
    assert!(
        zone.upsert(
            Record::from_rdata(name("servers.pool.test."), 1, RData::A(A(to))),
            serial
        )
        .await
    );
}

async fn echo_server(key: &StaticKeypair, at: SocketAddr) -> SocketAddr {
    let server = Server::bind(at, ServerConfig::new(key.clone()))
        .await
        .unwrap();
    let addr = server.local_addr();
    tokio::spawn(volley::echo::serve(server, std::future::pending()));
    addr
}

#[tokio::test]
async fn d3_a_dns_pool_follows_its_records_as_their_ttl_runs_out_and_races_use_it() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    // Two servers on one port, on two loopback addresses: the name moves from one to the other.
    let first = echo_server(&key, "127.0.0.2:0".parse().unwrap()).await;
    let port = first.port();
    let second = echo_server(&key, SocketAddr::new(IpAddr::from([127, 0, 0, 3]), port)).await;
    let (dns_addr, zone) = dns(Ipv4Addr::new(127, 0, 0, 2), port).await;
    let resolver = Resolver::with_server(dns_addr).unwrap();

    let entries = vec![PoolEntry::Host {
        name: "servers.pool.test.".into(),
        port,
    }];
    let mut pool = Pool::resolve(entries, resolver.clone()).await.unwrap();
    assert_eq!(pool.current(), vec![first]);
    let client = Client::new(ClientConfig::new(vec![key.public()]));
    let s = client.connect(&pool.current()).await.unwrap();
    assert_eq!(s.remote(), first);

    // The record set changes; within a TTL or two the pool follows, and the next race with it.
    move_servers(&zone, Ipv4Addr::new(127, 0, 0, 3), 2).await;
    timeout(BOUND, async {
        while pool.current() != vec![second] {
            pool.changed().await;
        }
    })
    .await
    .expect("the pool follows the new record");
    let s2 = client.connect(&pool.current()).await.unwrap();
    assert_eq!(s2.remote(), second);
    // The session made before the change is untouched.
    assert_eq!(s.remote(), first);

    // SRV: the targets' addresses at the record's port.
    let srv = Pool::resolve(vec!["srv:_echo._udp.pool.test.".parse().unwrap()], resolver)
        .await
        .unwrap();
    assert_eq!(srv.current(), vec![second]);
}

#[tokio::test]
async fn d3_a_pool_whose_names_resolve_nowhere_is_an_error_that_says_so() {
    let (dns_addr, _zone) = dns(Ipv4Addr::new(127, 0, 0, 2), 1).await;
    let resolver = Resolver::with_server(dns_addr).unwrap();
    let err = Pool::resolve(vec!["nothing.pool.test.:7001".parse().unwrap()], resolver)
        .await
        .unwrap_err();
    assert!(matches!(err, volley::Error::Discovery(_)), "{err:?}");
}

#[tokio::test]
async fn o7_a_failed_lookup_reads_in_words() {
    let (dns_addr, _zone) = dns(Ipv4Addr::new(127, 0, 0, 2), 1).await;
    let resolver = Resolver::with_server(dns_addr).unwrap();
    let err = Pool::resolve(vec!["nothing.pool.test.:7001".parse().unwrap()], resolver)
        .await
        .unwrap_err();
    // In words, naming the entry and why; no Rust structure (`Query { name: … }`).
    let text = err.to_string();
    assert!(
        text.contains("nothing.pool.test.:7001") && text.contains("does not exist"),
        "{text}"
    );
    assert!(!text.contains('{') && !text.contains("Query"), "{text}");
}

#[tokio::test]
async fn d1_a_dns_client_gets_its_answers_from_a_dns_server_through_the_udp_proxy() {
    // A real DNS server (hickory's) behind `serve --forward`, and a real DNS client (hickory's
    // resolver, as volley's discovery uses it) asking the client-side proxy as if it were the
    // DNS server: neither knows volley is there.
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let (dns_addr, _zone) = dns(Ipv4Addr::new(192, 0, 2, 77), 53).await;
    let server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::new(key.clone()),
    )
    .await
    .unwrap();
    let forwarder = server.local_addr();
    let handle = server.handle();
    tokio::spawn(UdpForward::new(server, dns_addr).serve(std::future::pending()));
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let proxy = socket.local_addr().unwrap();
    let client = Client::new(ClientConfig::new(vec![key.public()]));
    tokio::spawn(UdpProxy::new(client, vec![forwarder]).serve(socket, std::future::pending()));
    let resolver = Resolver::with_server(proxy).unwrap();
    let pool = timeout(
        BOUND,
        Pool::resolve(
            vec!["servers.pool.test.:7001".parse().unwrap()],
            resolver.clone(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(pool.current(), vec!["192.0.2.77:7001".parse().unwrap()]);
    let srv = timeout(
        BOUND,
        Pool::resolve(vec!["srv:_echo._udp.pool.test.".parse().unwrap()], resolver),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(srv.current(), vec!["192.0.2.77:53".parse().unwrap()]);
    assert!(
        handle.stats().sessions_opened >= 1,
        "the queries rode volley sessions"
    );
}

#[tokio::test]
async fn o4_a_4_kb_dns_answer_crosses_the_udp_proxies_from_hickorys_server_to_hickorys_resolver() {
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let (dns_addr, _zone) = dns(Ipv4Addr::new(192, 0, 2, 77), 53).await;
    let server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::new(key.clone()),
    )
    .await
    .unwrap();
    let forwarder = server.local_addr();
    let handle = server.handle();
    tokio::spawn(UdpForward::new(server, dns_addr).serve(std::future::pending()));
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let proxy = socket.local_addr().unwrap();
    let client = Client::new(ClientConfig::new(vec![key.public()]));
    tokio::spawn(UdpProxy::new(client, vec![forwarder]).serve(socket, std::future::pending()));
    // hickory's resolver over UDP only (a truncated answer cannot fall back to TCP: the proxy
    // has none), asking with EDNS for answers up to 8 KiB.
    let mut udp = ConnectionConfig::udp();
    udp.port = proxy.port();
    let ns = NameServerConfig::new(proxy.ip(), true, vec![udp]);
    let mut builder = hickory_resolver::TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    );
    builder.options_mut().edns0 = true;
    builder.options_mut().edns_payload_len = 8_192;
    let resolver = builder.build().unwrap();
    let answer = timeout(BOUND, resolver.txt_lookup("big.pool.test."))
        .await
        .unwrap()
        .unwrap();
    let strings: Vec<String> = answer
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            hickory_server::proto::rr::RData::TXT(txt) => Some(txt.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(strings, vec![big_txt().concat()]);
    assert_eq!(strings[0].len(), 16 * 248);
    let s = handle.stats();
    // The query went whole (the answer, 4,038 bytes, came back in fragments).
    assert!(s.data_fragments == 0 && s.sessions_opened >= 1, "{s:?}");
}
