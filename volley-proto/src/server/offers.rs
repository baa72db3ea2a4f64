//! The offer desk: how load turns into an answer to a PROBE. The answer policy's decision (now,
//! later from the held queue, or not at all), the OFFER itself with the load hint it carries,
//! the reservation it makes, and VERSIONS for probes of other versions. Everything
//! here is stateless towards the prober: a held probe is a fixed-size entry in a bounded queue, an
//! offer a reservation's expiry time.

use std::net::SocketAddr;
use std::time::Instant;

use tracing::trace;

use super::admission::ProbeRefusal;
use super::answer::{AnswerDelays, AnswerPolicy, Held, HeldQueue, pace_delay};
use super::context::Context;
use super::responder;
use crate::Transmit;
use crate::packet::{KeyId, Probe};

/// Probes held for a later offer, and how long answered probes waited.
pub(super) struct OfferDesk {
    /// The server's key id, named in every offer.
    key_id: KeyId,
    /// Probes held for a later offer: bounded by `max_held`, fixed-size entries.
    held: HeldQueue,
    /// From each probe's arrival to its OFFER, for operators.
    answer_delays: AnswerDelays,
}

impl OfferDesk {
    pub(super) fn new(key_id: KeyId) -> Self {
        Self {
            key_id,
            held: HeldQueue::default(),
            answer_delays: AnswerDelays::default(),
        }
    }

    /// Probes held now.
    pub(super) fn held(&self) -> usize {
        self.held.len()
    }

    /// When the first held probe is due (a paced offer's send time, a gated probe's hold end).
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.held.next_due()
    }

    /// How long the answered probes waited for their offers.
    pub(super) fn answer_delays(&self) -> &AnswerDelays {
        &self.answer_delays
    }

    /// A probe-sized datagram of another version gets VERSIONS (PROTOCOL.md §3.9): the one version this crate speaks
    /// is all this server speaks. Never for version 0 (itself a VERSIONS: two servers must not
    /// answer each other), never to a datagram shorter than a PROBE (no amplification), and
    /// charged like a PROBE: the PROBE budget and the source's PROBE bucket (§7.7).
    pub(super) fn answer_versions(
        cx: &mut Context<'_>,
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
        // Charged like a PROBE (the budget and the source's PROBE bucket), counted apart: the
        // PROBE counters add up to `probes_received` (PROTOCOL.md §9.1).
        if let Err(refusal) = cx.admission.admit_probe(now, remote.ip()) {
            cx.stats.versions_refused += 1;
            trace!(%remote, version, ?refusal, "other version: VERSIONS refused");
            return None;
        }
        let size = crate::packet::encode_versions(datagram, out).ok()?;
        cx.stats.versions_sent += 1;
        trace!(%remote, version, "other version: VERSIONS sent");
        Some(Transmit {
            destination: remote,
            size,
            source: Some(local),
        })
    }

    /// PROBE → OFFER now, later, or never, by the answer policy. Nothing about the probe is kept
    /// unless it is held, and a held probe is a fixed-size entry in a bounded queue.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn handle_probe(
        &mut self,
        cx: &mut Context<'_>,
        now: Instant,
        remote: SocketAddr,
        local: SocketAddr,
        probe: &Probe<'_>,
        probe_len: usize,
        out: &mut [u8],
    ) -> Option<Transmit> {
        cx.stats.probes_received += 1;
        let Some(service) = cx.config.services.iter().position(|s| s == probe.service) else {
            cx.stats.probes_unknown_service += 1;
            trace!(%remote, "probe withheld: unknown service");
            return None;
        };
        if cx.admission.under_load(now) {
            cx.stats.probes_withheld_under_load += 1;
            trace!(%remote, "probe withheld: under load");
            return None;
        }
        if cx.draining {
            cx.stats.probes_withheld_draining += 1;
            trace!(%remote, "probe withheld: draining");
            return None;
        }
        if cx.full() {
            cx.stats.probes_withheld_full += 1;
            trace!(%remote, "probe withheld: at max_sessions");
            return None;
        }
        match cx.admission.admit_probe(now, remote.ip()) {
            Ok(()) => {}
            Err(ProbeRefusal::OverBudget) => {
                cx.stats.probes_over_budget += 1;
                trace!(%remote, "probe dropped: probe budget spent");
                return None;
            }
            Err(ProbeRefusal::RateLimited) => {
                cx.stats.probes_rate_limited += 1;
                trace!(%remote, "probe dropped: source over its rate while pressed");
                return None;
            }
        }
        // (when the offer leaves, whether it reserves at arrival)
        let (due, reserve_early) = match (cx.config.answer, cx.config.capacity) {
            (AnswerPolicy::Gated { max_hold }, Some(_)) => {
                if cx.slot_free(now) && self.held.len() == 0 {
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
                let effective = cx.effective(now);
                let expected = cx.expected(now, effective);
                (
                    now + pace_delay(expected, divisor, max_delay),
                    !cx.config.reservation.is_zero(),
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
                cx.reserve(now);
            }
            let t = self.write_offer(cx, now, &held, out);
            if t.is_some() && !reserve_early {
                cx.reserve(now);
            }
            return t;
        }
        if !self.held.push(held, cx.config.max_held) {
            cx.stats.probes_dropped_queue_full += 1;
            trace!(%remote, "probe dropped: held queue full");
            return None;
        }
        if reserve_early {
            // Reserved on arrival, so the next probe of a burst already sees this offer (L4).
            cx.reserve(due);
        }
        cx.stats.probes_held += 1;
        None
    }

    fn write_offer(
        &mut self,
        cx: &mut Context<'_>,
        now: Instant,
        held: &Held,
        out: &mut [u8],
    ) -> Option<Transmit> {
        let load = cx.hint(now, held.reserved);
        let busy = cx.busy();
        let service = cx.config.services.get(usize::from(held.service))?;
        let t = responder::write_offer(
            now,
            cx.jar,
            cx.stats,
            held.tag,
            service,
            usize::from(held.probe_len),
            held.remote,
            held.local,
            self.key_id,
            load,
            now.saturating_duration_since(held.arrived),
            out,
        );
        if t.is_some() {
            if busy {
                cx.stats.offers_busy += 1;
            }
            self.answer_delays
                .record(now.saturating_duration_since(held.arrived));
        }
        t
    }

    /// Sends the next held offer that is due (paced), has a free slot or has waited `max_hold`
    /// (gated), dropping held probes the server can no longer answer (`max_sessions` reached,
    /// under load, draining).
    pub(super) fn release_held(
        &mut self,
        cx: &mut Context<'_>,
        now: Instant,
        out: &mut [u8],
    ) -> Option<Transmit> {
        while let Some(front) = self.held.front().copied() {
            let gated = matches!(cx.config.answer, AnswerPolicy::Gated { .. });
            let due = front.due <= now;
            if gated {
                // Gated: a free slot releases the first in line; `due` is its hold's end, when
                // it is answered anyway (busy, L6). Capacity removed: every slot is free.
                if !due
                    && (!cx.slot_free(now)
                        || cx.admission.under_load(now)
                        || cx.full()
                        || cx.draining)
                {
                    return None;
                }
            } else if !due {
                return None;
            }
            self.held.pop();
            if cx.full() || cx.draining || cx.admission.under_load(now) {
                cx.stats.probes_dropped_hold_expired += 1;
                trace!(remote = %front.remote, "held probe dropped: full or under load");
                continue;
            }
            if let Some(t) = self.write_offer(cx, now, &front, out) {
                if gated {
                    cx.reserve(now);
                }
                return Some(t);
            }
        }
        None
    }
}
