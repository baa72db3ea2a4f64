//! What a run measures, kept as it goes: utilisation within the measurement window, herding,
//! each measured session's latencies, probes and races, and the server counters at the end.

use rand::Rng;

use super::{Nanos, Outcome, ServerTotals, World};

impl World<'_> {
    /// Utilisation bookkeeping up to `now`, clipped to the measurement window.
    pub(super) fn account(&mut self, server: u32, now: Nanos) {
        let lo = self.s.warmup;
        let hi = if self.measuring || self.measured_arrivals == 0 {
            Nanos::MAX
        } else {
            self.last_arrival
        };
        let srv = &mut self.servers[server as usize];
        let from = srv.last.max(lo);
        let to = now.min(hi);
        if to > from {
            srv.busy_ns += f64::from(srv.busy) * (to - from) as f64;
        }
        srv.last = now;
    }

    pub(super) fn record_pick(&mut self, now: Nanos, server: u32) {
        if now < self.s.warmup || !self.measuring {
            return;
        }
        let bin = now / self.s.herd_window.max(1);
        let bump = |h: &mut (u64, u32)| {
            if h.0 == bin {
                h.1 += 1;
            } else {
                *h = (bin, 1);
            }
            h.1
        };
        let c = bump(&mut self.servers[server as usize].herd);
        self.out.herd_max = self.out.herd_max.max(c);
        let r = self.herd_rng.gen_range(0..self.servers.len());
        let c = bump(&mut self.servers[r].herd_uniform);
        self.out.herd_max_uniform = self.out.herd_max_uniform.max(c);
    }

    /// The session is done (completed or failed): count its probes and races.
    pub(super) fn count_probes(&mut self, slot: u32) {
        let sess = &self.sessions[slot as usize];
        let probes = sess.probes + sess.race.as_ref().map_or(0, |r| r.probes_sent());
        self.out.probes += probes;
        self.out.races += u64::from(sess.races);
        self.out.retransmitted += u64::from(sess.retransmitted);
    }

    pub(super) fn fail(&mut self, slot: u32) {
        if self.sessions[slot as usize].measured() {
            self.out.failed += 1;
            self.count_probes(slot);
            self.measured_done += 1;
        }
        self.release(slot);
    }

    pub(super) fn complete(&mut self, now: Nanos, slot: u32) {
        let reply = self.leg();
        let (client, server, selected_at) = {
            let sess = &self.sessions[slot as usize];
            (sess.client, sess.server, sess.selected_at)
        };
        // The client's own view learns of the reply (p2c's pending count and response time).
        self.peer_done(
            now + reply,
            client,
            server,
            (now + reply - selected_at) as f64,
        );
        // Per-request selectors: the reply carries its server's report to the client.
        let (work, member) = {
            let sess = &self.sessions[slot as usize];
            (sess.work, sess.member)
        };
        let service_ns = work / self.servers[server as usize].speed;
        if let Some(report) = self.reply_report(now, server, service_ns, member) {
            self.send_reply(
                now + reply,
                client,
                server,
                now + reply - selected_at,
                report,
            );
        }
        let Some(half) = self.sessions[slot as usize].half else {
            return self.release(slot);
        };
        let sess = &self.sessions[slot as usize];
        let e2e = (now + reply - sess.arrived) as f64;
        let in_system = (now - sess.job_arrived) as f64;
        let selection = sess.selected_at - sess.arrived;
        let to_server = (sess.job_arrived - sess.arrived) as f64;
        let o = &mut self.out;
        o.completed += 1;
        o.sum_e2e += e2e;
        o.halves[half].0 += e2e;
        o.halves[half].1 += 1;
        o.sum_in_system += in_system;
        o.sum_selection += selection as f64;
        o.sum_to_server += to_server;
        o.max_selection = o.max_selection.max(selection);
        if self.s.keep_latencies {
            o.e2e.push(e2e);
            o.selection.push(selection as f64);
        }
        self.count_probes(slot);
        self.measured_done += 1;
        self.release(slot);
    }

    pub(super) fn finish(mut self) -> Outcome {
        self.out.measured = self.measured_arrivals;
        self.out.window = self.last_arrival.saturating_sub(self.s.warmup) as f64;
        let mut totals = ServerTotals::default();
        for (i, srv) in self.servers.iter().enumerate() {
            self.out.busy[i] = srv.busy_ns;
            if let Some(ep) = srv.ep.as_ref() {
                let st = ep.stats();
                totals.probes_received += st.probes_received;
                totals.offers_sent += st.offers_sent;
                totals.probes_held += st.probes_held;
                totals.offers_busy += st.offers_busy;
                totals.probes_dropped_queue_full += st.probes_dropped_queue_full;
            }
        }
        self.out.server = totals;
        self.count_pools();
        self.out
    }
}
