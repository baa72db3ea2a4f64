//! The acceptor: the checks between a cookie-bearing INIT and a new session — the stateless
//! cookie check of [`super::responder`], the source's rate, the duplicate and ended-session
//! filters, the `max_sessions` limit and the offers it honours, the handshake budget, then
//! Noise IK and the allow-list. It decides and builds; the endpoint adds the session it hands
//! back to its table. A refusal is a REDIRECT naming peers, never state.

use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::CryptoRngCore;
use tracing::{debug, trace};

use super::context::Context;
use super::responder::{self, InitCheck};
use super::sessions::{Served, SessionId};
use crate::allow::{AllowEntry, AllowList};
use crate::crypto::{
    self, ACCEPT_PAYLOAD_LEN, INIT_PAYLOAD_LEN, Response, SessionKeys, StaticSecrets, Verdict,
};
use crate::packet::{Accept, Init, MAX_REDIRECT_ADDRS, REDIRECT_ADDR_LEN, Redirect, Tag};
use crate::session::Session;
use crate::stream::Role;
use crate::util::encode_addr;
use crate::{INIT_AMPLIFICATION, MAX_EARLY_DATA, MAX_INIT_NOISE_LEN, MAX_NOISE_LEN, Transmit};

/// How long after an INIT the server counts as handshaking (a backlog then presses it, §7.7).
const HANDSHAKING: Duration = Duration::from_secs(1);

/// What became of an INIT.
// Returned by value once per INIT and moved straight into the session table: boxing the large
// variant would only add an allocation per handshake.
#[allow(clippy::large_enum_variant)]
pub(super) enum InitOutcome {
    /// Dropped, or answered statelessly (COOKIE_CHANGE, REDIRECT, a duplicate's ACCEPT); counted.
    Answer(Option<Transmit>),
    /// Every check passed: a new session, and its ACCEPT (already written into `out`).
    Open {
        id: SessionId,
        served: Served,
        /// Accepted at `max_sessions` because it answers an offer just made.
        honoured: bool,
        accept: Transmit,
        /// The early data message 1 carried (none when empty), for the endpoint to deliver
        /// once the session is in its table (PROTOCOL.md §4.8).
        early: Option<Bytes>,
    },
}

/// What the acceptor remembers between INITs: where the next REDIRECT starts naming peers, and
/// when the last INIT arrived.
#[derive(Default)]
pub(super) struct Acceptor {
    /// Where the next REDIRECT starts naming peers, so refusals spread over them.
    peer_cursor: usize,
    /// When the last well-formed INIT arrived (handshakes compete with a PROBE flood).
    last_init: Option<Instant>,
    /// Static-static secrets of clients accepted before (one X25519 fewer per handshake).
    secrets: Arc<StaticSecrets>,
}

impl Acceptor {
    /// Keeps only the static-static secrets of keys `list` holds (None: any key).
    pub(super) fn retain_secrets(&self, list: Option<&AllowList>) {
        if let Some(list) = list {
            self.secrets.retain(|k| list.contains(k));
        }
    }

    /// Whether an INIT arrived within the last second at `now`.
    pub(super) fn handshaking(&self, now: Instant) -> bool {
        self.last_init
            .is_some_and(|t| now.saturating_duration_since(t) < HANDSHAKING)
    }

    /// Runs an INIT through every check, cheapest first; a new session only after all passed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn handle_init(
        &mut self,
        cx: &mut Context<'_>,
        rng: &mut dyn CryptoRngCore,
        now: Instant,
        remote: SocketAddr,
        local: SocketAddr,
        init: &Init<'_>,
        init_len: usize,
        out: &mut [u8],
    ) -> InitOutcome {
        cx.stats.inits_received += 1;
        self.last_init = Some(now);
        if !cx.config.services.iter().any(|s| s == init.service) {
            cx.stats.init_unknown_service += 1;
            return InitOutcome::Answer(None);
        }
        let cookie_age = match responder::check_init(
            now, cx.jar, cx.stats, init, init_len, remote, local, out,
        ) {
            InitCheck::Drop => return InitOutcome::Answer(None),
            InitCheck::Reply(t) => return InitOutcome::Answer(Some(t)),
            InitCheck::Proceed { age } => age,
        };
        // The source's limit (PROTOCOL.md §7.3 step 6a): every INIT whose cookie verified,
        // duplicates and refusals included. An abusive source gets nothing, not even a refusal.
        if cx.admission.admit_source(now, remote.ip()).is_err() {
            cx.stats.init_rate_limited += 1;
            trace!(%remote, "INIT dropped: source over its rate");
            return InitOutcome::Answer(None);
        }
        // Duplicate filter, consulted only after the MAC (R1): same client, same race → same ACCEPT.
        if let Some(served) = cx.sessions.by_origin(&(remote, init.tag)) {
            cx.stats.init_duplicate += 1;
            let size = served.accept.len();
            let Some(slot) = out.get_mut(..size) else {
                return InitOutcome::Answer(None);
            };
            slot.copy_from_slice(&served.accept);
            return InitOutcome::Answer(Some(Transmit {
                destination: remote,
                size,
                source: Some(local),
            }));
        }
        if cx.sessions.ended_recently(now, &(remote, init.tag)) {
            cx.stats.init_after_close += 1;
            trace!(%remote, "INIT dropped: its session already ended");
            return InitOutcome::Answer(None);
        }
        if cx.draining {
            // A draining server opens nothing, not even for its own recent offers: the
            // REDIRECT sends the client on at once (§7.8).
            cx.stats.init_refused_draining += 1;
            return InitOutcome::Answer(self.refuse(cx, remote, local, &init.tag, init_len, out));
        }
        let mut honoured = false;
        if cx.full() {
            // An offer made moments ago (within its reservation) promised this client a slot:
            // keep the promise (L6). Bounded: a server at `max_sessions` makes no new offers.
            // Only offers that took a reservation promise anything: none without a capacity,
            // none with reservations off (PROTOCOL.md §7.2.3, §7.3 step 8).
            let promised =
                cx.config.capacity.is_some() && cookie_age < cx.load.reservation(cx.config);
            if !promised {
                cx.stats.init_refused_full += 1;
                return InitOutcome::Answer(
                    self.refuse(cx, remote, local, &init.tag, init_len, out),
                );
            }
            honoured = true;
        }
        if cx.admission.admit_handshake(now).is_err() {
            cx.stats.init_under_load += 1;
            return InitOutcome::Answer(self.refuse(cx, remote, local, &init.tag, init_len, out));
        }
        let prologue = crypto::prologue(init.service, &init.tag, init.cookie);
        let local_id = fresh_session_id(cx, rng);
        let mut payload1 = [0u8; MAX_INIT_NOISE_LEN];
        let mut msg2 = [0u8; MAX_NOISE_LEN];
        let mut opened = None;
        let allow = cx.config.allow.as_deref();
        let cipher = cx.config.session.cipher;
        let result = crypto::respond_with(
            &cx.config.keypair,
            Some(&self.secrets),
            &prologue,
            init.noise,
            &mut payload1,
            rng,
            |client, p| {
                // The client's key is authenticated here (message 1 decrypted under ss); only
                // now can the allow-list be asked, and a refusal writes nothing and keeps nothing.
                let entry = match allow {
                    None => AllowEntry {
                        key: *client,
                        name: None,
                    },
                    Some(list) => match list.get(client) {
                        Some(entry) => entry,
                        None => return Verdict::Refuse,
                    },
                };
                // The 5 fixed bytes, then early data (§4.8): none when nothing follows.
                let (Some(fixed), Some(early)) =
                    (p.get(..INIT_PAYLOAD_LEN), p.get(INIT_PAYLOAD_LEN..))
                else {
                    return Verdict::Refuse;
                };
                if early.len() > MAX_EARLY_DATA {
                    return Verdict::Refuse;
                }
                let client_id = u32::from_be_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]);
                let Some(suite) = cipher.choose(fixed[4]) else {
                    return Verdict::Refuse;
                };
                let early = (!early.is_empty()).then(|| Bytes::copy_from_slice(early));
                opened = Some((client_id, suite, entry, early));
                let mut p2 = [0u8; ACCEPT_PAYLOAD_LEN];
                p2[..4].copy_from_slice(&local_id.to_be_bytes());
                p2[4] = suite.id();
                Verdict::Accept(p2)
            },
            &mut msg2,
        );
        let (split, n2, client_id, suite, client, early) = match (result, opened) {
            (
                Ok(Response::Accepted {
                    split, msg2_len, ..
                }),
                Some((cid, suite, entry, early)),
            ) => (split, msg2_len, cid, suite, entry, early),
            (Ok(Response::Refused { client }), None)
                if allow.is_some_and(|l| !l.contains(&client)) =>
            {
                // Nothing an unlisted client could not have had without trying: no ACCEPT, no
                // error, no state (§4.7).
                cx.stats.inits_unauthorized += 1;
                trace!(%remote, "INIT dropped: client key not on the allow-list");
                return InitOutcome::Answer(None);
            }
            _ => {
                cx.stats.init_handshake_failed += 1;
                trace!(%remote, "INIT dropped: handshake failed");
                return InitOutcome::Answer(None);
            }
        };
        let keys = SessionKeys::from_split(&split, suite, Role::Server);
        let Ok(size) = (Accept {
            receiver_id: client_id,
            noise: &msg2[..n2],
        })
        .encode(out) else {
            return InitOutcome::Answer(None);
        };
        if size > init_len.saturating_mul(INIT_AMPLIFICATION) {
            cx.stats.amplification_suppressed += 1;
            return InitOutcome::Answer(None);
        }
        let session = Session::new(now, local_id, client_id, remote, keys, cx.config.session)
            .with_migration()
            .serving();
        debug!(%remote, id = local_id, client = %client.key.to_hex(), name = client.name.as_deref().unwrap_or(""), "session opened");
        InitOutcome::Open {
            id: local_id,
            served: Served {
                session,
                local,
                origin: (remote, init.tag),
                accept: out[..size].to_vec(),
                client,
                // The offer this session came from stays outstanding until it turns into load:
                // now if sessions count as load, else when the session's first request arrives.
                holds_reservation: !cx.config.count_sessions,
                early: false,
            },
            honoured,
            early,
            accept: Transmit {
                destination: remote,
                size,
                source: Some(local),
            },
        }
    }

    /// Tells a client whose cookie verified (so its address is proven) that this server will not
    /// take it, so it re-races elsewhere at once: a REDIRECT naming up to
    /// [`MAX_REDIRECT_ADDRS`] of the configured peers, as many as fit within the INIT's size.
    /// Successive refusals start at successive peers, so redirected clients spread.
    fn refuse(
        &mut self,
        cx: &mut Context<'_>,
        remote: SocketAddr,
        local: SocketAddr,
        tag: &Tag,
        init_len: usize,
        out: &mut [u8],
    ) -> Option<Transmit> {
        let fit = init_len.saturating_sub(Redirect::HEADER_LEN) / REDIRECT_ADDR_LEN;
        let peers: Vec<SocketAddr> = cx
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
            cx.stats.amplification_suppressed += 1;
            return None;
        }
        cx.stats.redirects_sent += 1;
        trace!(%remote, peers = n, "INIT refused: redirect sent");
        Some(Transmit {
            destination: remote,
            size,
            source: Some(local),
        })
    }
}

/// A session id no open session holds (never 0).
fn fresh_session_id(cx: &Context<'_>, rng: &mut dyn CryptoRngCore) -> SessionId {
    loop {
        let id = rng.next_u32();
        if id != 0 && !cx.sessions.contains(id) {
            return id;
        }
    }
}
