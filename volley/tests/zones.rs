//! Z2 over real sockets: a client told its zone asks that zone's servers in every race from its
//! first one on, from labels set by hand or by a pool's `ZONE=ENTRY` entries.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::{BOUND, serve};
use tokio::time::timeout;
use volley::discovery::{Pool, ZonedEntry};
use volley::{Client, ClientConfig, SelectionPolicy, StaticKeypair};

#[tokio::test]
async fn z2_a_client_asks_its_labelled_zone_in_every_race() {
    let key = StaticKeypair::generate(&mut volley::OsRng);
    let mut servers = Vec::new();
    for _ in 0..6 {
        servers.push(serve(&key, |_| {}).await);
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(|(a, _)| *a).collect();
    // Zone "b" is the last two of six; the client probes 2 per race.
    let entries: Vec<ZonedEntry> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let zone = if i >= 4 { "b" } else { "a" };
            format!("{zone}={a}").parse().unwrap()
        })
        .collect();
    let labelled: Vec<(SocketAddr, Option<String>)> = entries
        .iter()
        .zip(&addrs)
        .map(|(e, a)| (*a, e.zone.clone()))
        .collect();
    let pool = Pool::fixed_zoned(labelled);
    let zones: HashMap<SocketAddr, String> = pool.zones();
    assert_eq!(zones.values().filter(|z| *z == "b").count(), 2);

    let mut config = ClientConfig::new(vec![key.public()]);
    config.policy = SelectionPolicy::path();
    config.fanout = Some(2);
    config.zone = Some("b".into());
    let client = Client::new(config);
    client.set_server_zones(zones);
    let probes_b = |servers: &[(SocketAddr, volley::ServerHandle)]| -> u64 {
        servers[4..]
            .iter()
            .map(|(_, h)| h.stats().probes_received)
            .sum()
    };
    for _ in 0..12 {
        let before = probes_b(&servers);
        let session = timeout(BOUND, client.connect(&pool.current()))
            .await
            .expect("bounded")
            .expect("a session");
        common::until("the zone's probe counted", || probes_b(&servers) > before).await;
        session.close();
    }
}
