//! O1: a draining server wins no race — it answers no PROBE and refuses every new INIT with a
//! REDIRECT — and keeps serving the sessions it has (PROTOCOL.md §7.8).

use std::time::Duration;

use super::util::*;
use crate::client::{ClientConfig, ClientEvent};

#[test]
fn o1_a_draining_server_wins_no_race_refuses_inits_in_flight_and_keeps_its_sessions() {
    for seed in seeds(5) {
        let _g = SeedGuard(seed);
        let mut sim = Sim::new(seed);
        let key = sim.add_servers(2, |_, _| {});
        // Server 0 is the nearer: it wins every race while it offers.
        sim.set_latency(server_addr(0), 1);
        sim.set_latency(server_addr(1), 3);
        let pool = sim.pool();
        let kept = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        sim.establish(kept, Duration::from_secs(1));
        assert_eq!(sim.clients[kept].conn.server(), Some(server_addr(0)));

        // A client whose race server 0 won just before the drain: its INIT is on the wire.
        let in_flight = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        let selected = |sim: &Sim| {
            sim.clients[in_flight]
                .events
                .iter()
                .find_map(|(_, e)| match e {
                    ClientEvent::Selected { server, .. } => Some(*server),
                    _ => None,
                })
        };
        assert!(sim.run_until(Duration::from_secs(1), |s| selected(s).is_some()));
        assert_eq!(selected(&sim), Some(server_addr(0)));
        assert!(!sim.established(in_flight));
        sim.servers[0].endpoint.set_draining(true);
        assert!(sim.servers[0].endpoint.is_draining());

        // Refused with a REDIRECT: it fails over to server 1 at once.
        sim.establish(in_flight, Duration::from_secs(1));
        assert_eq!(sim.clients[in_flight].conn.server(), Some(server_addr(1)));
        let st = sim.servers[0].endpoint.stats();
        assert_eq!(st.init_refused_draining, 1);
        assert!(st.redirects_sent >= 1);

        // A new client's race: server 0 is silent, server 1 wins on its own answer.
        let fresh = sim.add_client(ClientConfig::new(vec![key]), pool.clone());
        sim.establish(fresh, Duration::from_secs(1));
        assert_eq!(sim.clients[fresh].conn.server(), Some(server_addr(1)));
        let st = sim.servers[0].endpoint.stats();
        assert!(st.probes_withheld_draining >= 1, "{st:?}");
        assert_eq!(st.sessions_opened, 1, "no session opened while draining");
        assert_probe_identity(st, 0);

        // The session it had goes on.
        for i in 0..5u8 {
            assert!(sim.echo(kept, &[i; 40], Duration::from_secs(1)), "echo {i}");
        }
        assert_eq!(sim.clients[kept].conn.server(), Some(server_addr(0)));

        // Drained no more: it offers again.
        sim.servers[0].endpoint.set_draining(false);
        let again = sim.add_client(ClientConfig::new(vec![key]), pool);
        sim.establish(again, Duration::from_secs(1));
        assert_eq!(sim.clients[again].conn.server(), Some(server_addr(0)));
    }
}
