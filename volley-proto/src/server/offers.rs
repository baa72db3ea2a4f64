//! Offers: how load turns into an answer to a PROBE (L1, L2, L4–L6). The load the server counts
//! (requests in flight, outstanding offers), the hint an OFFER carries, reservations, the answer
//! policy's decision (now, later from the held queue, or not at all), and VERSIONS for probes of
//! other versions. Everything here is stateless towards the prober: a held probe is a fixed-size
//! entry, an offer a reservation's expiry time.

use std::net::SocketAddr;
use std::time::Instant;

use tracing::trace;

use super::ServerEndpoint;
use super::admission::ProbeRefusal;
use super::answer::{AnswerPolicy, Held, pace_delay};
use super::estimate::expected_completion;
use super::responder;
use crate::Transmit;
use crate::packet::{LoadHint, Probe};

impl ServerEndpoint {
    /// Tells the service estimate how many requests are in service from `now`, and how many
    /// just completed.
    pub(super) fn record_service(&mut self, now: Instant, completed: u64) {
        let requests = self.in_flight();
        let in_service = self.config.capacity.map_or(requests, |c| requests.min(c));
        self.service.record(now, in_service, completed);
    }

    /// Requests in flight: the application's, plus the sessions when they count as load.
    pub(super) fn in_flight(&self) -> u32 {
        let sessions = if self.config.count_sessions {
            self.sessions.len() as u32
        } else {
            0
        };
        sessions.saturating_add(self.app_load)
    }

    /// Requests in flight plus offers outstanding: what the answer policy and the hint weigh.
    pub(super) fn effective(&mut self, now: Instant) -> u32 {
        self.in_flight().saturating_add(self.reserved.count(now))
    }

    /// The expected completion time of one more request with `effective` requests and offers
    /// in flight (L5).
    pub(super) fn expected(&self, now: Instant, effective: u32) -> std::time::Duration {
        expected_completion(self.service.mean(now), effective, self.config.capacity)
    }

    /// The load hint an offer written now carries (L2, L5); `own_reserved`: the offer's own
    /// reservation is already counted and must be left out.
    pub(super) fn hint(&mut self, now: Instant, own_reserved: bool) -> LoadHint {
        let mut effective = self.effective(now);
        if own_reserved {
            effective = effective.saturating_sub(1);
        }
        let expected = self.expected(now, effective);
        LoadHint {
            in_flight: effective,
            capacity: self.config.capacity.unwrap_or(0),
            expected_us: expected.as_micros().clamp(1, u128::from(u32::MAX)) as u32,
        }
    }

    /// Whether every slot is taken by requests in flight (L6: such a server still answers).
    pub(super) fn busy(&self) -> bool {
        self.config.capacity.is_some_and(|c| self.in_flight() >= c)
    }

    /// Whether a slot is free for one more request, counting offers outstanding (gated).
    pub(super) fn slot_free(&mut self, now: Instant) -> bool {
        let effective = self.effective(now);
        self.config.capacity.is_none_or(|c| effective < c)
    }

    /// Whether the server cannot open another session: the hard `max_sessions` limit.
    pub(super) fn full(&self) -> bool {
        self.config
            .max_sessions
            .is_some_and(|m| self.sessions.len() as u32 >= m)
    }

    /// Counts an offer as load for `config.reservation` from `from` (L4). Only with a capacity:
    /// without one there is nothing to reserve. At most 4 × capacity are kept (a flood of
    /// spoofed probes raises the expected completion by at most 4 service times).
    pub(super) fn reserve(&mut self, from: Instant) {
        match self.config.capacity {
            Some(c) if !self.config.reservation.is_zero() => {
                let bound = (c as usize).saturating_mul(4).max(1);
                self.reserved.add(from + self.config.reservation, bound);
            }
            _ => {}
        }
    }

    /// A probe-sized datagram of another version gets VERSIONS (PROTOCOL.md §3.9): version 1
    /// is all this server speaks. Never for version 0 (itself a VERSIONS: two servers must not
    /// answer each other), never to a datagram shorter than a PROBE (no amplification), and
    /// charged to the PROBE budget like a PROBE.
    pub(super) fn answer_versions(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local: SocketAddr,
        version: u8,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Option<Transmit> {
        if version == 0 || datagram.len() < crate::PROBE_MIN_LEN {
            return None;
        }
        match self.admission.admit_probe(now, remote.ip()) {
            Ok(()) => {}
            Err(ProbeRefusal::OverBudget) => {
                self.stats.probes_over_budget += 1;
                return None;
            }
            Err(ProbeRefusal::RateLimited) => {
                self.stats.probes_rate_limited += 1;
                return None;
            }
        }
        let size = crate::packet::encode_versions(datagram, out).ok()?;
        self.stats.versions_sent += 1;
        trace!(%remote, version, "other version: VERSIONS sent");
        Some(Transmit {
            destination: remote,
            size,
            source: Some(local),
        })
    }

    /// PROBE → OFFER now, later, or never, by the answer policy (L1). Nothing about the probe is
    /// kept unless it is held, and a held probe is a fixed-size entry in a bounded queue.
    pub(super) fn handle_probe(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local: SocketAddr,
        probe: &Probe<'_>,
        probe_len: usize,
        out: &mut [u8],
    ) -> Option<Transmit> {
        self.stats.probes_received += 1;
        let Some(service) = self.config.services.iter().position(|s| s == probe.service) else {
            self.stats.probes_unknown_service += 1;
            trace!(%remote, "probe withheld: unknown service");
            return None;
        };
        if self.admission.under_load(now) {
            self.stats.probes_withheld_under_load += 1;
            trace!(%remote, "probe withheld: under load");
            return None;
        }
        if self.full() {
            self.stats.probes_withheld_full += 1;
            trace!(%remote, "probe withheld: at max_sessions");
            return None;
        }
        match self.admission.admit_probe(now, remote.ip()) {
            Ok(()) => {}
            Err(ProbeRefusal::OverBudget) => {
                self.stats.probes_over_budget += 1;
                trace!(%remote, "probe dropped: probe budget spent");
                return None;
            }
            Err(ProbeRefusal::RateLimited) => {
                self.stats.probes_rate_limited += 1;
                trace!(%remote, "probe dropped: source over its rate while pressed");
                return None;
            }
        }
        // (when the offer leaves, whether it reserves at arrival)
        let (due, reserve_early) = match (self.config.answer, self.config.capacity) {
            (AnswerPolicy::Gated { max_hold }, Some(_)) => {
                if self.slot_free(now) && self.held.len() == 0 {
                    (now, false)
                } else if max_hold.is_zero() {
                    // Nowhere to wait: answer at once, busy (L6).
                    (now, false)
                } else {
                    // No free slot (or earlier probes wait first): hold until one frees.
                    (now + max_hold, false)
                }
            }
            (AnswerPolicy::Paced { max_delay, divisor }, Some(_)) => {
                let effective = self.effective(now);
                let expected = self.expected(now, effective);
                (
                    now + pace_delay(expected, divisor, max_delay),
                    !self.config.reservation.is_zero(),
                )
            }
            _ => (now, false),
        };
        let held = Held {
            remote,
            local,
            tag: probe.tag,
            service: service as u16,
            probe_len: probe_len.min(usize::from(u16::MAX)) as u16,
            due,
            arrived: now,
            reserved: reserve_early,
        };
        if due == now {
            if reserve_early {
                self.reserve(now);
            }
            let t = self.write_offer(now, &held, out);
            if t.is_some() && !reserve_early {
                self.reserve(now);
            }
            return t;
        }
        if !self.held.push(held, self.config.max_held) {
            self.stats.probes_dropped_queue_full += 1;
            trace!(%remote, "probe dropped: held queue full");
            return None;
        }
        if reserve_early {
            // Reserved on arrival, so the next probe of a burst already sees this offer (L4).
            self.reserve(due);
        }
        self.stats.probes_held += 1;
        None
    }

    pub(super) fn write_offer(
        &mut self,
        now: Instant,
        held: &Held,
        out: &mut [u8],
    ) -> Option<Transmit> {
        let load = self.hint(now, held.reserved);
        let busy = self.busy();
        let service = self.config.services.get(usize::from(held.service))?;
        let t = responder::write_offer(
            now,
            &self.jar,
            &mut self.stats,
            held.tag,
            service,
            usize::from(held.probe_len),
            held.remote,
            held.local,
            self.key_id,
            load,
            out,
        );
        if t.is_some() {
            if busy {
                self.stats.offers_busy += 1;
            }
            self.answer_delays
                .record(now.saturating_duration_since(held.arrived));
        }
        t
    }

    /// Sends the next held offer that is due (paced), has a free slot or has waited `max_hold`
    /// (gated), dropping held probes the server can no longer answer (`max_sessions` reached,
    /// under load).
    pub(super) fn release_held(&mut self, now: Instant, out: &mut [u8]) -> Option<Transmit> {
        while let Some(front) = self.held.front().copied() {
            let gated = matches!(self.config.answer, AnswerPolicy::Gated { .. });
            let due = front.due <= now;
            if gated {
                // Gated: a free slot releases the first in line; `due` is its hold's end, when
                // it is answered anyway (busy, L6). Capacity removed: every slot is free.
                if !due && (!self.slot_free(now) || self.admission.under_load(now) || self.full()) {
                    return None;
                }
            } else if !due {
                return None;
            }
            self.held.pop();
            if self.full() || self.admission.under_load(now) {
                self.stats.probes_dropped_hold_expired += 1;
                trace!(remote = %front.remote, "held probe dropped: full or under load");
                continue;
            }
            if let Some(t) = self.write_offer(now, &front, out) {
                if gated {
                    self.reserve(now);
                }
                return Some(t);
            }
        }
        None
    }
}
