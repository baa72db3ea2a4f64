//! A5: limits an attacker cannot move. One source floods a server — with PROBEs, with INITs that
//! carry a genuine cookie and a Noise message that fails, or with a genuine INIT replayed byte for
//! byte — while other sources keep probing and connecting. However the flood changes the
//! server's load, the flooder gets its per-source share once the server is pressed (PROTOCOL.md
//! §7.7: pressed holds for a quiet period, and a source refused while pressed stays limited
//! until it keeps to its rate), and everyone else keeps their answers and their sessions.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::util::*;
use crate::client::ClientConfig;
use crate::packet::kind;
use crate::server::{AdmissionConfig, ServerStats};

const FLOODER: [u8; 4] = [198, 51, 100, 7];

fn flooder_ip() -> IpAddr {
    IpAddr::from(FLOODER)
}

/// What a flood left behind.
struct Flood {
    /// Answers (any datagram) the server sent the flooder, in all and from `steady` on.
    to_flooder: u64,
    to_flooder_steady: u64,
    /// The server's counters when the steady period began, and at the end.
    at_steady: ServerStats,
    end: ServerStats,
    /// When the flooder was first refused (from the flood's start), and the server's counters
    /// and the answers it had sent the flooder just before.
    first_refused: Duration,
    before_refused: ServerStats,
    to_flooder_before_refused: u64,
    /// PROBEs the other sources sent, and OFFERs they got.
    others_probes: u64,
    others_offers: u64,
    /// The other sources' connections, and how many established.
    others: usize,
    others_established: usize,
}

/// Runs `seconds` of a flood of `datagram` from `from`, `per_ms` a millisecond, against server
/// 0 of `sim`, while a new client of another source connects every 50 ms; then one quiet second
/// for the last of them. The steady period starts one second in. With `backlog`, the test plays
/// the runtime: a wake-up a millisecond reads at most 64 datagrams, so a faster flood is a
/// socket backlog (`ServerEndpoint::set_backlog`).
fn flood(
    sim: &mut Sim,
    config: &ClientConfig,
    from: SocketAddr,
    datagram: &[u8],
    per_ms: usize,
    seconds: u64,
    backlog: bool,
) -> Flood {
    let server = sim.servers[0].addr;
    let pool = sim.pool();
    let start = sim.now;
    let steady = start + Duration::from_secs(1);
    let mut others = Vec::new();
    let mut at_steady = None;
    let mut before_refused = None;
    // Answers to the flooder so far, counted as the wire grows.
    let (mut scanned, mut answered) = (sim.sent.len(), 0u64);
    let mut answers = |sim: &Sim| {
        answered += sim.sent[scanned..]
            .iter()
            .filter(|d| d.src == server && d.dst.ip() == flooder_ip())
            .count() as u64;
        scanned = sim.sent.len();
        answered
    };
    for ms in 0..seconds * 1_000 {
        if ms % 50 == 0 {
            others.push(sim.add_client(config.clone(), pool.clone()));
        }
        if sim.now >= steady && at_steady.is_none() {
            at_steady = Some(*sim.servers[0].endpoint.stats());
        }
        for _ in 0..per_ms {
            sim.send(from, server, datagram.to_vec());
        }
        if backlog {
            let now = sim.now;
            sim.servers[0].endpoint.set_backlog(now, per_ms > 64);
        }
        let before = (
            *sim.servers[0].endpoint.stats(),
            answers(sim),
            sim.now - start,
        );
        sim.run_for(Duration::from_millis(1));
        let s = sim.servers[0].endpoint.stats();
        if before_refused.is_none() && s.probes_rate_limited + s.init_rate_limited > 0 {
            before_refused = Some(before);
        }
    }
    if backlog {
        let now = sim.now;
        sim.servers[0].endpoint.set_backlog(now, false);
    }
    sim.run_for(Duration::from_secs(1));
    let to_flooder = |since: Instant| {
        sim.sent
            .iter()
            .filter(|d| d.src == server && d.dst.ip() == flooder_ip() && d.at >= since)
            .count() as u64
    };
    let others_of = |d: &&&Sent| d.src.ip() != flooder_ip() && d.dst.ip() != flooder_ip();
    Flood {
        to_flooder: to_flooder(start),
        to_flooder_steady: to_flooder(steady),
        at_steady: at_steady.expect("ran past the first second"),
        end: *sim.servers[0].endpoint.stats(),
        first_refused: before_refused
            .unwrap_or_else(|| panic!("never refused: {:?}", sim.servers[0].endpoint.stats()))
            .2,
        before_refused: before_refused.expect("refused").0,
        to_flooder_before_refused: before_refused.expect("refused").1,
        others_probes: sim.sent_of(kind::PROBE).iter().filter(others_of).count() as u64,
        others_offers: sim.sent_of(kind::OFFER).iter().filter(others_of).count() as u64,
        others: others.len(),
        others_established: others.iter().filter(|&&c| sim.established(c)).count(),
    }
}

/// The other sources kept ≥ 95 % of their PROBEs answered and every connect succeeded.
fn assert_others_unharmed(f: &Flood) {
    let answered = f.others_offers as f64 / f.others_probes as f64;
    assert!(
        answered >= 0.95,
        "others: {} of {} PROBEs answered",
        f.others_offers,
        f.others_probes
    );
    assert_eq!(
        f.others_established, f.others,
        "others: {} of {} connects succeeded",
        f.others_established, f.others
    );
}

/// A server and a client configuration for it; `tweak` sets its admission.
fn world(seed: u64, tweak: impl Fn(&mut AdmissionConfig)) -> (Sim, ClientConfig) {
    let mut sim = Sim::new(seed);
    let key = sim.add_servers(1, |_, c| tweak(&mut c.admission));
    sim.link = Link::ms(1);
    (sim, ClientConfig::new(vec![key]))
}

#[test]
fn a5_a_one_source_probe_flood_gets_its_share_and_others_keep_their_answers() {
    for seed in seeds(2) {
        let _g = SeedGuard(seed);
        // A PROBE budget of 20,000/s against a flood of 50,000/s from one address (its ports
        // vary, its prefix does not). The budget falls below half, the server is pressed, the
        // flooder's bucket (1,000/s, burst 2,000) runs dry — and the budget, no longer spent on
        // it, refills above half at once: under a bare threshold the limit would switch off
        // there and the flooder take the whole budget again.
        let (mut sim, config) = world(seed, |a| a.probes_per_sec = 20_000);
        let mut buf = [0u8; 256];
        let tag = crate::packet::Tag([7; 16]);
        let n = crate::packet::Probe {
            tag,
            service: b"echo",
        }
        .encode(&mut buf, 256)
        .unwrap();
        let from = SocketAddr::from((FLOODER, 40_000));
        let f = flood(&mut sim, &config, from, &buf[..n], 50, 3, false);
        // Steady state (seconds 1–3): its rate, 1,000/s.
        assert!(
            f.to_flooder_steady <= 2_000 + 20,
            "the flooder got {} offers in 2 s",
            f.to_flooder_steady
        );
        // Before the server was pressed the flooder got what an idle server gives anyone (the
        // budget down to half, in a third of a second); from then on its burst and its rate.
        assert!(
            f.first_refused < Duration::from_millis(500),
            "{:?}",
            f.first_refused
        );
        let after = f.to_flooder - f.to_flooder_before_refused;
        let allowed = 2_000.0 + 1_000.0 * (3.0 - f.first_refused.as_secs_f64());
        assert!(
            after as f64 <= allowed + 20.0,
            "the flooder got {after} offers after it was first refused (share {allowed})"
        );
        assert!(f.end.probes_rate_limited > 140_000 - 16_000, "{:?}", f.end);
        assert_others_unharmed(&f);
        assert_probe_identity(&f.end, 0);
    }
}

#[test]
fn a5_a_one_source_flood_of_inits_with_a_genuine_cookie_gets_its_share() {
    for seed in seeds(2) {
        let _g = SeedGuard(seed);
        // A handshake budget of 2,000/s, a per-source INIT rate of 100/s (burst 200): scaled
        // down ten-fold from the defaults with the flood. The flooder probes once, keeps its
        // genuine cookie and sends INITs with it and a Noise message that fails — each one
        // passes the cookie and costs a handshake attempt — 20,000 a second.
        let (mut sim, config) = world(seed, |a| {
            a.handshakes_per_sec = 2_000;
            a.inits_per_source_per_sec = 100;
            a.inits_per_source_burst = 200;
        });
        let init = capture_flooders_init(&mut sim, &config, false);
        let mut forged = init.clone();
        let last = forged.len() - 1;
        forged[last] ^= 0x55; // the Noise message's tag: it fails, the cookie still verifies
        let from = SocketAddr::from((FLOODER, 40_000));
        let f = flood(&mut sim, &config, from, &forged, 20, 3, false);
        // Only the flooder's INITs fail the handshake: those are the ones it got admitted.
        let admitted = f.end.init_handshake_failed;
        let steady = admitted - f.at_steady.init_handshake_failed;
        assert!(
            steady <= 200 + 5,
            "{steady} handshakes in 2 s of steady flood"
        );
        // Before the server was pressed it got what an idle server gives anyone (the budget
        // down to half); from then on its burst and its rate.
        assert!(
            f.first_refused < Duration::from_millis(500),
            "{:?}",
            f.first_refused
        );
        let after = admitted - f.before_refused.init_handshake_failed;
        let allowed = 200.0 + 100.0 * (3.0 - f.first_refused.as_secs_f64());
        assert!(
            after as f64 <= allowed + 5.0,
            "{after} handshakes after it was first refused (share {allowed})"
        );
        assert!(f.end.init_rate_limited >= 55_000, "{:?}", f.end);
        assert_eq!(f.to_flooder, 0, "nothing answers a rate-limited source");
        assert_others_unharmed(&f);
    }
}

#[test]
fn a5_a_genuine_init_replayed_from_one_source_gets_its_share() {
    for seed in seeds(2) {
        let _g = SeedGuard(seed);
        // The flooder's INIT opens a session; then it replays that INIT byte for byte, 100,000
        // a second. Each replay is a duplicate: before any handshake, so only the source's limit
        // stands between it and one ACCEPT per replay. The flood is faster than the server
        // reads (a backlog), which presses it while sessions are open.
        let (mut sim, config) = world(seed, |_| {});
        let init = capture_flooders_init(&mut sim, &config, true);
        let from = SocketAddr::from((FLOODER, 40_000));
        let f = flood(&mut sim, &config, from, &init, 100, 3, true);
        // 1,000/s, burst 2,000 (the defaults), from the moment the flood began.
        assert!(
            f.to_flooder_steady <= 2_000 + 20,
            "{} ACCEPTs in 2 s of steady flood",
            f.to_flooder_steady
        );
        assert!(
            f.first_refused < Duration::from_millis(100),
            "{:?}",
            f.first_refused
        );
        assert!(
            f.to_flooder <= 2_000 + 3_000 + 30,
            "{} ACCEPTs in 3 s",
            f.to_flooder
        );
        assert!(f.end.init_rate_limited >= 290_000, "{:?}", f.end);
        assert_eq!(f.end.init_handshake_failed, 0);
        assert_others_unharmed(&f);
    }
}

/// Lets a client at the flooder's address race the server and captures its INIT: delivered
/// (`deliver`: its session opens) or dropped on the way (the cookie stays unused).
fn capture_flooders_init(sim: &mut Sim, config: &ClientConfig, deliver: bool) -> Vec<u8> {
    let captured: Rc<RefCell<Option<Vec<u8>>>> = Rc::default();
    let keep = Rc::clone(&captured);
    sim.filter = Some(Box::new(move |_, d| {
        if d.src.ip() == flooder_ip() && d.data.get(1) == Some(&kind::INIT) {
            keep.borrow_mut().get_or_insert_with(|| d.data.clone());
            if !deliver {
                return Verdict::Drop;
            }
        }
        Verdict::Pass
    }));
    let pool = sim.pool();
    let c = sim.add_client_at(config.clone(), pool, SocketAddr::from((FLOODER, 40_000)));
    sim.run_until(Duration::from_secs(1), |_| captured.borrow().is_some());
    let init = captured.borrow().clone().expect("the flooder's INIT");
    if deliver {
        sim.establish(c, Duration::from_secs(1));
        sim.filter = None;
    } else {
        // Its retransmissions (the identical INIT) stay dropped: its cookie opens no session.
        let genuine = init.clone();
        sim.filter = Some(Box::new(move |_, d| {
            if d.data == genuine {
                Verdict::Drop
            } else {
                Verdict::Pass
            }
        }));
    }
    init
}
