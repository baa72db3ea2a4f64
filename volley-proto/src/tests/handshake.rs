//! End-to-end race, handshake and session over the simulated network.

use std::time::Duration;

use super::util::*;
use crate::client::{ClientConfig, ClientEvent};
use crate::server::ServerEvent;

#[test]
fn c6_session_with_earliest_server_carries_encrypted_datagrams() {
    for seed in seeds(20) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(3, |_, _| {});
        // Server 1 is nearest.
        sim.links.insert(server_addr(0), Link { latency: Duration::from_millis(5), ..Link::default() });
        sim.links.insert(server_addr(1), Link { latency: Duration::from_millis(1), ..Link::default() });
        sim.links.insert(server_addr(2), Link { latency: Duration::from_millis(9), ..Link::default() });
        let pool = sim.pool();
        let c = sim.add_client(ClientConfig::new(vec![key]), pool);
        assert!(sim.run_until(Duration::from_secs(5), |s| s.established(c)));
        assert_eq!(sim.clients[c].conn.server(), Some(server_addr(1)));
        sim.clients[c].conn.send_datagram(b"ping over volley").unwrap();
        assert!(sim.run_until(Duration::from_secs(1), |s| s
            .client_events(c)
            .contains(&ClientEvent::Datagram(b"ping over volley".to_vec()))));
        assert_eq!(sim.servers[1].endpoint.session_count(), 1);
        assert_eq!(sim.servers[0].endpoint.session_count(), 0);
        assert!(matches!(sim.servers[1].events[0], ServerEvent::Opened { .. }));
    }
}
