//! Load distribution (L1–L4, R3): answer policies turn load into answer time, offers carry a load
//! hint, clients choose by time or by hint, spread over the fleet, and follow a refusing server's
//! REDIRECT to its peers. The speed-aware signal (L5), overload (L6) and outcomes (L7) have files
//! of their own.
//!
//! [`answer`]: answer policies and the load hint (L1, L2); [`choice`]: how clients choose and
//! spread (L3, L4); [`redirect`]: refusals that name peers (R3). The helpers here describe the
//! test servers they share.

mod answer;
mod choice;
mod redirect;
mod zones;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use super::util::*;
use crate::client::{ClientConfig, ClientEvent, SelectionPolicy};
use crate::packet::{LoadHint, Packet, Redirect, Tag, kind};
use crate::server::answer::{DEFAULT_PACE_DIVISOR, DEFAULT_PACE_MAX_DELAY, pace_delay};
use crate::server::estimate::expected_completion;
use crate::server::{AnswerPolicy, ServiceModel};
use crate::session::CloseCode;
use crate::{MAX_DATAGRAM_LEN, PROBE_MIN_LEN};

/// Slots of the test servers.
pub(super) const CAP: u32 = 4;
/// The test servers' stated mean service time (`ServiceModel::Fixed`), so that expected
/// completion times are exact.
pub(super) const SERVICE: Duration = Duration::from_millis(40);

/// The expected completion time of a test server with `n` requests and offers in flight.
pub(super) fn expected(n: u32) -> Duration {
    expected_completion(SERVICE, n, Some(CAP))
}

/// The default pace for `n` requests and offers in flight at a test server.
pub(super) fn pace(n: u32) -> Duration {
    pace_delay(expected(n), DEFAULT_PACE_DIVISOR, DEFAULT_PACE_MAX_DELAY)
}

/// The hint a test server writes with `n` requests and offers in flight.
pub(super) fn hint_of(n: u32) -> LoadHint {
    LoadHint {
        in_flight: n,
        capacity: CAP,
        expected_us: expected(n).as_micros() as u32,
    }
}

pub(super) fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Client `c`'s `Selected` events: (server, answer time, load hint).
pub(super) fn selected(sim: &Sim, c: usize) -> Vec<(SocketAddr, Duration, LoadHint)> {
    sim.client_events(c)
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::Selected {
                server,
                answer_time,
                load,
            } => Some((server, answer_time, load)),
            _ => None,
        })
        .collect()
}

/// When client `c` produced its first event matching `f`, from the start of the simulation.
pub(super) fn first_at(sim: &Sim, c: usize, f: impl Fn(&ClientEvent) -> bool) -> Option<Duration> {
    sim.clients[c]
        .events
        .iter()
        .find(|(_, e)| f(e))
        .map(|(t, _)| *t - sim.start)
}

pub(super) fn probe(tag: Tag, size: usize) -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    let n = crate::packet::Probe {
        tag,
        service: b"echo",
    }
    .encode(&mut buf, size)
    .unwrap();
    buf[..n].to_vec()
}

pub(super) fn offer_of(data: &[u8]) -> (Tag, LoadHint) {
    match Packet::decode(data) {
        Ok(Packet::Offer(o)) => (o.tag, o.load),
        other => panic!("not an offer: {other:?}"),
    }
}

pub(super) fn shuffle<T>(rng: &mut ChaCha20Rng, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        v.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
}

pub(super) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
