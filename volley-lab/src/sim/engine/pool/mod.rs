//! volley pools ([`Selector::Pool`], issue 25 P5): every client keeps a pool of `k` long-lived
//! sessions and balances each of its requests over them with the real
//! [`volley_proto::balance::Balancer`].
//!
//! - **Opening.** A client opens its pool at its first request, with one real race: a `Race`
//!   under `SelectionPolicy::NBest { k, 2 ms }` against `open_fanout` servers drawn uniformly
//!   (the k earliest offers are the k best under paced servers). Its winners join after the
//!   handshake, skipped as everywhere in `sim` but paid in time: one round trip (INIT out, ACCEPT
//!   back). Requests that arrive before the first member joins wait for it.
//! - **Requests.** Each request goes to `Balancer::pick` (`sent`), then crosses to the member's
//!   server, waits for a slot, is served and its reply crosses back (the same legs and FIFO
//!   slots as every other selector). A member's first request releases the reservation its
//!   offer took at the server, as a session's first request does in the real stack.
//! - **Reports.** Every reply carries its server's report, read from the real `ServerEndpoint`
//!   when the reply leaves, as the wire carries it (`volley_proto::LoadReport`, PROTOCOL.md
//!   §5.8: 8 bytes): its expected completion of one more request (`ServerLoad::expected`, whole
//!   microseconds), its requests in flight and offers outstanding, and its capacity. When the
//!   reply reaches the client it goes to `Balancer::replied` as a `balance::Report` (with no
//!   round-trip sample: `volley::Pool` has none either).
//! - **Races.** After every request and every reply the client asks `Balancer::poll_shrink`
//!   (a grown pool may retire a member) and `Balancer::poll_race`; a race it asks for runs as
//!   a real race (`SelectionPolicy::Earliest`, the client default; a growth by n, `NBest` of n
//!   over n times the opening's fan-out per member) against `race_fanout` servers (at least)
//!   drawn uniformly from those not in the pool, and its winner
//!   joins after the handshake's round trip through `Balancer::race_won` (the retired member
//!   leaves once its requests are answered: `idle_retired`, `remove`); a race whose deadline
//!   passes with no offer is `Balancer::race_failed`. The member's path is the race's measured
//!   round trip (the answer time less the server's hold).
//!
//! A pool client's address is 198.18.0.0/15 (RFC 2544's benchmarking range) plus its index,
//! with its race's generation in the port, so that an offer to an older race of the client is
//! not taken by the current one. The races are `race`'s.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use volley_proto::LoadReport;
use volley_proto::SelectionPolicy;
use volley_proto::balance::{Balancer, MemberKey, RaceReason};
use volley_proto::client::DEFAULT_WINDOW;
use volley_proto::client::race::{Race, Winner};

use super::addr::{CLIENT_PORT_BASE, CLIENT_PORT_SPAN, server_index};
use super::{Kind, Nanos, PoolSetup, Selector, World};

/// The service every race asks for (the endpoint's default).
const SERVICE: &[u8] = b"echo";

/// The first pool client's address: 198.18.0.0.
const POOL_BASE: u32 = 0xC612_0000;
/// Most pool clients: the size of 198.18.0.0/15.
pub const MAX_POOL_CLIENTS: usize = 1 << 17;

/// Client `client`'s address for its race of generation `gen_`.
pub(super) fn pool_addr(client: u32, gen_: u32) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(POOL_BASE.wrapping_add(client)),
        CLIENT_PORT_BASE + (gen_ % CLIENT_PORT_SPAN) as u16,
    )
}

/// (client, race generation modulo the port span) of a pool client's address.
pub(super) fn pool_client(addr: SocketAddrV4) -> Option<(u32, u32)> {
    let i = u32::from(*addr.ip()).checked_sub(POOL_BASE)?;
    if i as usize >= MAX_POOL_CLIENTS {
        return None;
    }
    let g = u32::from(addr.port().checked_sub(CLIENT_PORT_BASE)?);
    Some((i, g))
}

/// One member of a pool, beside what the balancer keeps.
#[derive(Debug, Clone, Copy)]
struct Member {
    key: MemberKey,
    server: u32,
    /// Until when the offer it came from holds a reservation at its server (0: released).
    reservation_until: Nanos,
}

/// A race of a pool client.
#[derive(Debug)]
struct PoolRace {
    race: Race,
    /// Its pending timer.
    timer: Option<Nanos>,
    /// `None`: the race that opens the pool; otherwise why the balancer asked for it.
    reason: Option<RaceReason>,
    /// Offers taken: (server, sent at).
    offers: Vec<(u32, Nanos)>,
    /// Started in the measurement window.
    counted: bool,
    /// Decided: the servers chosen, waiting for their handshake, with their reservations' ends.
    winners: Vec<(Winner, Nanos)>,
}

/// One client's pool.
#[derive(Debug)]
pub(super) struct PoolClient {
    balancer: Balancer,
    members: Vec<Member>,
    /// Requests (session slots) waiting for a live member, in arrival order.
    waiting: VecDeque<u32>,
    race: Option<PoolRace>,
    /// Races started, the current one's generation.
    gen_: u32,
    /// The opening race was started.
    opened: bool,
    /// A pending `PoolPoll`.
    poll_at: Option<Nanos>,
}

impl PoolClient {
    pub(super) fn new(p: &PoolSetup) -> Self {
        Self {
            balancer: Balancer::new(p.balance),
            members: Vec::new(),
            waiting: VecDeque::new(),
            race: None,
            gen_: 0,
            opened: false,
            poll_at: None,
        }
    }

    /// Live members (not retiring).
    pub(super) fn live(&self) -> usize {
        self.balancer.live()
    }

    /// Whether the opening race was started.
    pub(super) fn opened(&self) -> bool {
        self.opened
    }

    /// The balancer (tests).
    #[cfg(test)]
    pub(super) fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// The server of member `key` (tests).
    #[cfg(test)]
    pub(super) fn server_of(&self, key: MemberKey) -> Option<u32> {
        self.members.iter().find(|m| m.key == key).map(|m| m.server)
    }
}

/// What a reply tells its client, beside the reply itself.
#[derive(Debug, Clone, Copy)]
pub(super) enum Report {
    /// A volley pool member's report, as a REPLY carries it.
    Pool {
        /// The member.
        key: MemberKey,
        /// The server's report when the reply left.
        report: LoadReport,
    },
    /// The server's weight as an ORCA report gives it to weighted round robin: qps ÷
    /// utilisation.
    Wrr {
        /// `None`: an empty report (no utilisation or no qps yet), ignored.
        weight: Option<f64>,
    },
    /// C3's feedback: the server's queue after this request left and the request's service
    /// time.
    C3 {
        /// Requests in flight at the server after this one left.
        queue: u32,
        /// This request's service time, ns.
        service_ns: f64,
    },
}

impl World<'_> {
    fn pool_setup(&self) -> Option<PoolSetup> {
        match self.s.selector {
            Selector::Pool(p) => Some(p),
            _ => None,
        }
    }

    /// A request (session `slot`) of client `client` under a pool: it waits for a member, the
    /// pool opening first if this is the client's first request.
    pub(super) fn pool_request(&mut self, now: Nanos, slot: u32, client: u32) {
        let pc = &mut self.pools[client as usize];
        pc.waiting.push_back(slot);
        if !pc.opened {
            pc.opened = true;
            self.open_pool(now, client);
        }
        self.pool_dispatch(now, client);
        self.pool_poll(now, client);
    }

    /// The race that opens client `client`'s pool: `NBest` of `k` over `open_fanout` servers.
    fn open_pool(&mut self, now: Nanos, client: u32) {
        let Some(p) = self.pool_setup() else { return };
        let targets = self.pick_distinct(p.open_fanout, None);
        let policy = SelectionPolicy::NBest {
            k: p.balance.members,
            delta: DEFAULT_WINDOW,
        };
        self.start_pool_race(now, client, targets, policy, None);
    }

    /// Sends the waiting requests of `client` to the members its balancer picks.
    pub(super) fn pool_dispatch(&mut self, now: Nanos, client: u32) {
        let at = self.at(now);
        let span = self.in_span(now);
        loop {
            let pc = &mut self.pools[client as usize];
            let Some(&slot) = pc.waiting.front() else {
                return;
            };
            let Some(key) = pc.balancer.pick(at) else {
                return;
            };
            let Some(m) = pc.members.iter_mut().find(|m| m.key == key) else {
                // Never: every key the balancer holds is a member here.
                pc.balancer.failed(key);
                continue;
            };
            pc.waiting.pop_front();
            pc.balancer.sent(at, key);
            self.out.pool.span_requests += u64::from(span);
            let server = m.server;
            let until = std::mem::take(&mut m.reservation_until);
            let sess = &mut self.sessions[slot as usize];
            sess.member = Some(key);
            sess.reservation_until = until;
            self.decide_direct(now, slot, server);
        }
    }

    /// Asks client `client`'s balancer whether a race should start, and starts it.
    pub(super) fn pool_poll(&mut self, now: Nanos, client: u32) {
        let Some(p) = self.pool_setup() else { return };
        let at = self.at(now);
        let pc = &mut self.pools[client as usize];
        if pc.race.is_some() || !pc.opened {
            return;
        }
        if pc.balancer.poll_shrink(at).is_some() {
            self.pool_reap(client);
        }
        let pc = &mut self.pools[client as usize];
        let Some(req) = pc.balancer.poll_race(at) else {
            // Short of members but within the least gap between races: look again then.
            if pc.balancer.live() < pc.balancer.target() && pc.poll_at.is_none() {
                let t = now + (p.balance.min_race_gap.as_nanos() as Nanos).max(1);
                pc.poll_at = Some(t);
                self.q.push(t, Kind::PoolPoll { client });
            }
            return;
        };
        let n = self.servers.len();
        let exclude: Vec<u32> = req
            .exclude
            .iter()
            .filter_map(|a| server_index(*a, n))
            .collect();
        // A growth by n races n-best over as many servers per member as the opening does.
        let wanted = req.wanted();
        let per_member = p.open_fanout.div_ceil(p.balance.members.max(1));
        let fanout = p.race_fanout.max(per_member * wanted);
        let targets = self.pick_excluding(fanout, &exclude);
        if targets.is_empty() {
            // Every server is in the pool: nothing to race.
            self.pools[client as usize].balancer.race_failed();
            return;
        }
        let policy = if wanted > 1 {
            SelectionPolicy::NBest {
                k: wanted.min(targets.len()),
                delta: DEFAULT_WINDOW,
            }
        } else {
            SelectionPolicy::Earliest
        };
        self.start_pool_race(now, client, targets, policy, Some(req.reason));
    }

    /// Whether `now` is in the steady span ([`super::PoolCounts::span_races`]).
    fn in_span(&self, now: Nanos) -> bool {
        now >= self.s.warmup / 2 && (self.measuring || self.measured_arrivals == 0)
    }

    /// A scheduled look at client `client`'s balancer.
    pub(super) fn on_pool_poll(&mut self, now: Nanos, client: u32) {
        let pc = &mut self.pools[client as usize];
        if pc.poll_at != Some(now) {
            return;
        }
        pc.poll_at = None;
        self.pool_poll(now, client);
        self.pool_dispatch(now, client);
    }

    /// Retired members with nothing in flight leave the pool (their sessions close).
    fn pool_reap(&mut self, client: u32) {
        let pc = &mut self.pools[client as usize];
        for key in pc.balancer.idle_retired() {
            pc.balancer.remove(key);
            pc.members.retain(|m| m.key != key);
        }
    }

    /// A member's reply reaches client `client` with its server's report.
    pub(super) fn on_pool_reply(
        &mut self,
        now: Nanos,
        client: u32,
        key: MemberKey,
        report: LoadReport,
    ) {
        let at = self.at(now);
        let report = report.expected().map(|e| {
            volley_proto::balance::Report::new(
                e,
                u32::from(report.in_flight),
                u32::from(report.capacity),
            )
        });
        let pc = &mut self.pools[client as usize];
        pc.balancer.replied(at, key, None, report);
        self.pool_reap(client);
        self.pool_poll(now, client);
        if !self.pools[client as usize].waiting.is_empty() {
            self.pool_dispatch(now, client);
        }
    }

    /// The report a member's reply carries, read from its server's endpoint as the reply
    /// leaves (the request it answers no longer counted): what `ServerEndpoint::reply` writes.
    pub(super) fn pool_report(&self, now: Nanos, server: u32, key: MemberKey) -> Report {
        let report = match self.servers[server as usize].ep.as_ref() {
            Some(ep) => {
                let l = ep.load(self.at(now));
                LoadReport::new(l.expected, l.effective(), l.capacity)
            }
            None => LoadReport::new(Duration::ZERO, 0, 0),
        };
        Report::Pool { key, report }
    }

    /// Pools opened and their live members, into the outcome.
    pub(super) fn count_pools(&mut self) {
        for pc in &self.pools {
            self.out.pool.members_end += pc.live() as u64;
            self.out.pool.pools_end += u64::from(pc.opened());
        }
    }
}

mod race;
#[cfg(test)]
mod tests;
