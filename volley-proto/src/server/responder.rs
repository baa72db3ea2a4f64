//! The stateless responder (S1–S3): PROBE → OFFER and INIT validation, writing any answer
//! straight into the caller's buffer. Nothing here allocates or remembers anything about a
//! probe; the only state it reads is the cookie jar and the admission counters.

use std::net::SocketAddr;
use std::time::Instant;

use tracing::trace;

use super::ServerStats;
use crate::Transmit;
use crate::cookie::{CookieBinding, CookieCheck, CookieError, CookieJar};
use crate::packet::{CookieChange, Init, KeyId, LoadHint, Offer, Probe};

/// Answers a PROBE with an OFFER written into `out`, or withholds. `full` and `under_load` come
/// from the endpoint. The offer is never larger than the probe (R6).
#[allow(clippy::too_many_arguments)]
pub fn answer_probe(
    now: Instant,
    jar: &CookieJar,
    stats: &mut ServerStats,
    probe: &Probe<'_>,
    probe_len: usize,
    remote: SocketAddr,
    local: SocketAddr,
    key_id: KeyId,
    load: LoadHint,
    services: &[Vec<u8>],
    full: bool,
    under_load: bool,
    out: &mut [u8],
) -> Option<Transmit> {
    stats.probes_received += 1;
    if !services.iter().any(|s| s == probe.service) {
        stats.probes_unknown_service += 1;
        trace!(%remote, "probe withheld: unknown service");
        return None;
    }
    if full {
        stats.probes_withheld_full += 1;
        trace!(%remote, "probe withheld: at capacity");
        return None;
    }
    if under_load {
        stats.probes_withheld_under_load += 1;
        trace!(%remote, "probe withheld: under load");
        return None;
    }
    let binding = CookieBinding {
        client: remote,
        server: local,
        tag: &probe.tag,
        service: probe.service,
    };
    let cookie = jar.mint(now, &binding);
    let offer = Offer {
        tag: probe.tag,
        server_key_id: key_id,
        load,
        cookie: &cookie,
    };
    let size = offer.encode(out).ok()?;
    if size > probe_len {
        stats.amplification_suppressed += 1;
        return None;
    }
    stats.offers_sent += 1;
    Some(Transmit {
        destination: remote,
        size,
    })
}

/// The outcome of checking an INIT's cookie.
pub enum InitCheck {
    /// Drop silently (already counted).
    Drop,
    /// Reply with this (a COOKIE_CHANGE), already written into `out`.
    Reply(Transmit),
    /// The cookie is genuine and bound to this source: go on to admission and the handshake.
    Proceed,
}

/// Validates an INIT's cookie, cheapest first (length → key id → age → MAC). A genuine cookie from
/// a moved client gets a COOKIE_CHANGE with a fresh cookie, no larger than the INIT.
#[allow(clippy::too_many_arguments)]
pub fn check_init(
    now: Instant,
    jar: &CookieJar,
    stats: &mut ServerStats,
    init: &Init<'_>,
    init_len: usize,
    remote: SocketAddr,
    local: SocketAddr,
    out: &mut [u8],
) -> InitCheck {
    let binding = CookieBinding {
        client: remote,
        server: local,
        tag: &init.tag,
        service: init.service,
    };
    match jar.verify(now, init.cookie, &binding) {
        Ok(CookieCheck::Valid) => InitCheck::Proceed,
        Ok(CookieCheck::Moved { issued_to }) => {
            let cookie = jar.mint(now, &binding);
            let Ok(size) = (CookieChange {
                tag: init.tag,
                cookie: &cookie,
            })
            .encode(out) else {
                return InitCheck::Drop;
            };
            // It goes to an address not yet proven: no larger than the INIT that caused it.
            if size > init_len {
                stats.amplification_suppressed += 1;
                return InitCheck::Drop;
            }
            stats.cookie_changes_sent += 1;
            trace!(%remote, %issued_to, "cookie change");
            InitCheck::Reply(Transmit {
                destination: remote,
                size,
            })
        }
        Err(e) => {
            match e {
                CookieError::Malformed => stats.init_cookie_malformed += 1,
                CookieError::UnknownKey => stats.init_cookie_unknown_key += 1,
                CookieError::Expired => stats.init_cookie_expired += 1,
                CookieError::BadMac => stats.init_cookie_bad_mac += 1,
            }
            trace!(%remote, error = %e, "INIT dropped: cookie");
            InitCheck::Drop
        }
    }
}
