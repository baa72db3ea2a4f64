//! INIT acceptance: the checks between a cookie-bearing INIT and a new session (S2, S3, L6) —
//! the stateless cookie check of [`super::responder`], the duplicate and ended-session filters,
//! the `max_sessions` limit and the offers it honours, admission, then Noise. A session exists only
//! after every check passed; a refusal is a REDIRECT naming peers, never state.

use std::net::SocketAddr;
use std::time::Instant;

use tracing::{debug, trace};

use super::ServerEndpoint;
use super::admission::Refusal;
use super::endpoint::{ServerEvent, SessionId};
use super::responder::{self, InitCheck};
use super::sessions::Served;
use crate::crypto;
use crate::packet::{Accept, Init, MAX_REDIRECT_ADDRS, REDIRECT_ADDR_LEN, Redirect, Tag};
use crate::session::Session;
use crate::util::encode_addr;
use crate::{INIT_AMPLIFICATION, MAX_NOISE_LEN, Transmit};

impl ServerEndpoint {
    pub(super) fn handle_init(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local: SocketAddr,
        init: &Init<'_>,
        init_len: usize,
        out: &mut [u8],
    ) -> Option<Transmit> {
        self.stats.inits_received += 1;
        self.last_init = Some(now);
        if !self.config.services.iter().any(|s| s == init.service) {
            self.stats.init_unknown_service += 1;
            return None;
        }
        let cookie_age = match responder::check_init(
            now,
            &self.jar,
            &mut self.stats,
            init,
            init_len,
            remote,
            local,
            out,
        ) {
            InitCheck::Drop => return None,
            InitCheck::Reply(t) => return Some(t),
            InitCheck::Proceed { age } => age,
        };
        // Duplicate filter, consulted only after the MAC (R1): same client, same race → same ACCEPT.
        if let Some(served) = self.sessions.by_origin(&(remote, init.tag)) {
            self.stats.init_duplicate += 1;
            let size = served.accept.len();
            out.get_mut(..size)?.copy_from_slice(&served.accept);
            return Some(Transmit {
                destination: remote,
                size,
                source: Some(local),
            });
        }
        if self.sessions.ended_recently(now, &(remote, init.tag)) {
            self.stats.init_after_close += 1;
            trace!(%remote, "INIT dropped: its session already ended");
            return None;
        }
        let mut honoured = false;
        if self.full() {
            // An offer made moments ago (within its reservation) promised this client a slot:
            // keep the promise (L6). Bounded: a server at `max_sessions` makes no new offers.
            // With reservations off, offers promise nothing.
            if cookie_age >= self.config.reservation {
                self.stats.init_refused_full += 1;
                return self.refuse(remote, local, &init.tag, init_len, out);
            }
            honoured = true;
        }
        match self.admission.admit(now, remote.ip()) {
            Ok(()) => {}
            Err(Refusal::RateLimited) => {
                // An abusive source gets nothing, not even a refusal.
                self.stats.init_rate_limited += 1;
                return None;
            }
            Err(Refusal::UnderLoad) => {
                self.stats.init_under_load += 1;
                return self.refuse(remote, local, &init.tag, init_len, out);
            }
        }
        let prologue = crypto::prologue(init.service, &init.tag, init.cookie);
        let local_id = self.fresh_session_id();
        let mut payload1 = [0u8; MAX_NOISE_LEN];
        let mut msg2 = [0u8; MAX_NOISE_LEN];
        let mut client_id = None;
        let result = crypto::respond(
            &self.config.keypair,
            &prologue,
            init.noise,
            &mut payload1,
            &mut *self.rng,
            |p| {
                if let Ok(id) = <[u8; 4]>::try_from(p) {
                    client_id = Some(u32::from_be_bytes(id));
                }
                local_id.to_be_bytes()
            },
            &mut msg2,
        );
        let (keys, n2, client_id) = match (result, client_id) {
            (Ok((_, n2, keys)), Some(cid)) => (keys, n2, cid),
            _ => {
                self.stats.init_handshake_failed += 1;
                trace!(%remote, "INIT dropped: handshake failed");
                return None;
            }
        };
        let size = Accept {
            receiver_id: client_id,
            noise: &msg2[..n2],
        }
        .encode(out)
        .ok()?;
        if size > init_len.saturating_mul(INIT_AMPLIFICATION) {
            self.stats.amplification_suppressed += 1;
            return None;
        }
        let session = Session::new(now, local_id, client_id, remote, keys, self.config.session);
        // The offer this session came from stays outstanding until it turns into load: now if
        // sessions count as load, else when the session's first request arrives.
        let counts = self.config.count_sessions;
        self.sessions.insert(
            local_id,
            Served {
                session,
                local,
                origin: (remote, init.tag),
                accept: out[..size].to_vec(),
                holds_reservation: !counts,
            },
        );
        if counts {
            self.reserved.release_one();
            self.record_service(now, 0);
        }
        if honoured {
            self.stats.init_honoured_full += 1;
        }
        self.stats.sessions_opened += 1;
        self.events.push_back(ServerEvent::Opened {
            id: local_id,
            remote,
        });
        debug!(%remote, id = local_id, "session opened");
        Some(Transmit {
            destination: remote,
            size,
            source: Some(local),
        })
    }

    /// Tells a client whose cookie verified (so its address is proven) that this server will not
    /// take it, so it re-races elsewhere at once: a REDIRECT naming up to
    /// [`MAX_REDIRECT_ADDRS`] of the configured peers (R3), as many as fit within the INIT's
    /// size. Successive refusals start at successive peers, so redirected clients spread.
    pub(super) fn refuse(
        &mut self,
        remote: SocketAddr,
        local: SocketAddr,
        tag: &Tag,
        init_len: usize,
        out: &mut [u8],
    ) -> Option<Transmit> {
        let fit = init_len.saturating_sub(Redirect::HEADER_LEN) / REDIRECT_ADDR_LEN;
        let peers: Vec<SocketAddr> = self
            .config
            .peers
            .iter()
            .copied()
            .filter(|p| *p != remote && *p != local)
            .collect();
        let n = peers.len().min(MAX_REDIRECT_ADDRS).min(fit);
        let mut addrs = [0u8; MAX_REDIRECT_ADDRS * REDIRECT_ADDR_LEN];
        for i in 0..n {
            let peer = peers[(self.peer_cursor + i) % peers.len()];
            addrs[i * REDIRECT_ADDR_LEN..(i + 1) * REDIRECT_ADDR_LEN]
                .copy_from_slice(&encode_addr(peer));
        }
        if !peers.is_empty() {
            self.peer_cursor = (self.peer_cursor + 1) % peers.len();
        }
        let size = Redirect {
            tag: *tag,
            servers: &addrs[..n * REDIRECT_ADDR_LEN],
        }
        .encode(out)
        .ok()?;
        if size > init_len {
            self.stats.amplification_suppressed += 1;
            return None;
        }
        self.stats.redirects_sent += 1;
        trace!(%remote, peers = n, "INIT refused: redirect sent");
        Some(Transmit {
            destination: remote,
            size,
            source: Some(local),
        })
    }

    pub(super) fn fresh_session_id(&mut self) -> SessionId {
        loop {
            let id = self.rng.next_u32();
            if id != 0 && !self.sessions.contains(id) {
                return id;
            }
        }
    }
}
