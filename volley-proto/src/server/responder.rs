//! The stateless responder: OFFER writing and INIT validation, writing any answer straight
//! into the caller's buffer. Nothing here allocates or remembers anything about a probe; the only
//! state it reads is the cookie jar and the admission counters.

use std::net::SocketAddr;
use std::time::Instant;

use tracing::trace;

use super::ServerStats;
use crate::Transmit;
use crate::cookie::{CookieBinding, CookieCheck, CookieError, CookieJar};
use crate::packet::{CookieChange, Init, KeyId, LoadHint, Offer, Tag};

/// Writes an OFFER for a probe into `out`: a fresh cookie bound to `remote`, `local`, the tag and
/// the service, the server's key id, its load hint and how long the probe was `held`. Nothing is remembered. The offer is never
/// larger than the probe (no amplification); `None` if it would be (counted) or does not fit
/// `out`.
#[allow(clippy::too_many_arguments)]
pub fn write_offer(
    now: Instant,
    jar: &CookieJar,
    stats: &mut ServerStats,
    tag: Tag,
    service: &[u8],
    probe_len: usize,
    remote: SocketAddr,
    local: SocketAddr,
    key_id: KeyId,
    load: LoadHint,
    held: std::time::Duration,
    out: &mut [u8],
) -> Option<Transmit> {
    let binding = CookieBinding {
        client: remote,
        server: local,
        tag: &tag,
        service,
    };
    let cookie = jar.mint(now, &binding);
    let offer = Offer {
        tag,
        server_key_id: key_id,
        load,
        held_us: u32::try_from(held.as_micros()).unwrap_or(u32::MAX),
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
        source: Some(local),
    })
}

/// The outcome of checking an INIT's cookie.
pub enum InitCheck {
    /// Drop silently (already counted).
    Drop,
    /// Reply with this (a COOKIE_CHANGE), already written into `out`.
    Reply(Transmit),
    /// The cookie is genuine and bound to this source: go on to admission and the handshake.
    Proceed {
        /// How long ago the cookie (the offer) was minted.
        age: std::time::Duration,
    },
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
        Ok(CookieCheck::Valid { age }) => InitCheck::Proceed { age },
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
                source: Some(local),
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
