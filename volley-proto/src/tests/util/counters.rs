//! Counter arithmetic for tests that prove every drop is counted: the sum of a server's or a
//! client's drop counters (each destructured without `..`, so that a new counter must be
//! classified), and the difference of two snapshots.

use crate::client::ClientStats;
use crate::server::ServerStats;

/// The sum of every server counter that records a dropped or refused datagram. Destructures
/// without `..` so that a new counter must be classified here.
pub fn server_drops(s: &ServerStats) -> u64 {
    let ServerStats {
        datagrams_received: _,
        dropped_reflector_port,
        malformed_too_long,
        malformed_truncated,
        malformed_version,
        versions_sent: _,
        // Also counted in `malformed_version`.
        versions_refused: _,
        malformed_type,
        malformed_length,
        probe_too_short,
        unexpected_message,
        probes_received: _,
        offers_sent: _,
        probes_unknown_service,
        probes_withheld_full,
        probes_withheld_draining,
        probes_withheld_under_load,
        probes_over_budget,
        probes_rate_limited,
        probes_held: _,
        probes_dropped_queue_full,
        probes_dropped_hold_expired,
        offers_busy: _,
        inits_received: _,
        init_unknown_service,
        init_cookie_malformed,
        init_cookie_unknown_key,
        init_cookie_expired,
        init_cookie_bad_mac,
        cookie_changes_sent: _,
        init_duplicate: _,
        init_refused_full,
        init_refused_draining,
        init_honoured_full: _,
        init_rate_limited,
        init_under_load,
        init_handshake_failed,
        inits_unauthorized,
        early_data_received: _,
        early_data_bytes: _,
        // The session opened; only its early data was not delivered again.
        early_data_duplicate: _,
        sessions_opened: _,
        sessions_closed: _,
        sessions_idle_timeout: _,
        sessions_unresponsive: _,
        sessions_revoked: _,
        sessions_migrated: _,
        data_unknown_session,
        data_new_address: _,
        data_auth_failed,
        data_replayed,
        data_bad_frame,
        // Authentic fragments, and datagrams put together or given up: not datagram drops.
        data_fragments: _,
        data_reassembled: _,
        data_reassembly_dropped: _,
        requests_received: _,
        requests_duplicate,
        // Answered (REFUSED): not a datagram dropped unanswered.
        requests_over_limit: _,
        replies_sent: _,
        replies_dropped: _,
        replies_refused: _,
        requests_abandoned: _,
        amplification_suppressed,
        redirects_sent: _,
        init_after_close,
    } = *s;
    dropped_reflector_port
        + malformed_too_long
        + malformed_truncated
        + malformed_version
        + malformed_type
        + malformed_length
        + probe_too_short
        + unexpected_message
        + probes_unknown_service
        + probes_withheld_full
        + probes_withheld_draining
        + probes_withheld_under_load
        + probes_over_budget
        + probes_rate_limited
        + probes_dropped_queue_full
        + probes_dropped_hold_expired
        + init_unknown_service
        + init_cookie_malformed
        + init_cookie_unknown_key
        + init_cookie_expired
        + init_cookie_bad_mac
        + init_refused_full
        + init_refused_draining
        + init_rate_limited
        + init_under_load
        + init_handshake_failed
        + inits_unauthorized
        + data_unknown_session
        + data_auth_failed
        + data_replayed
        + data_bad_frame
        + requests_duplicate
        + amplification_suppressed
        + init_after_close
}

/// PROTOCOL.md §9.1: every well-formed PROBE is answered at once, withheld, dropped (over the
/// budget, over its source's rate, the held queue full) or held, and every held one is later
/// answered, dropped when due, or still held (`held` now). Panics with the counters when the
/// identity does not hold.
pub fn assert_probe_identity(s: &ServerStats, held: usize) {
    let accounted = s.probes_unknown_service
        + s.probes_withheld_under_load
        + s.probes_withheld_full
        + s.probes_withheld_draining
        + s.probes_over_budget
        + s.probes_rate_limited
        + s.probes_dropped_queue_full
        + s.probes_dropped_hold_expired
        + s.offers_sent
        + held as u64;
    assert_eq!(
        s.probes_received, accounted,
        "PROBE counters do not add up ({held} held): {s:?}"
    );
}

/// `after - before`, counter by counter.
pub fn server_delta(after: &ServerStats, before: &ServerStats) -> ServerStats {
    macro_rules! delta {
        ($($f:ident),* $(,)?) => {
            ServerStats {
                $($f: after.$f.checked_sub(before.$f).unwrap_or_else(|| {
                    panic!("counter {} went down: {} -> {}", stringify!($f), before.$f, after.$f)
                })),*
            }
        };
    }
    delta!(
        versions_sent,
        versions_refused,
        probes_over_budget,
        probes_rate_limited,
        offers_busy,
        init_honoured_full,
        probes_held,
        probes_dropped_queue_full,
        probes_dropped_hold_expired,
        init_after_close,
        redirects_sent,
        datagrams_received,
        dropped_reflector_port,
        malformed_too_long,
        malformed_truncated,
        malformed_version,
        malformed_type,
        malformed_length,
        probe_too_short,
        unexpected_message,
        probes_received,
        offers_sent,
        probes_unknown_service,
        probes_withheld_full,
        probes_withheld_draining,
        probes_withheld_under_load,
        inits_received,
        init_unknown_service,
        init_cookie_malformed,
        init_cookie_unknown_key,
        init_cookie_expired,
        init_cookie_bad_mac,
        cookie_changes_sent,
        init_duplicate,
        init_refused_full,
        init_refused_draining,
        init_rate_limited,
        init_under_load,
        init_handshake_failed,
        inits_unauthorized,
        early_data_received,
        early_data_bytes,
        early_data_duplicate,
        sessions_opened,
        sessions_closed,
        sessions_idle_timeout,
        sessions_unresponsive,
        sessions_revoked,
        sessions_migrated,
        data_unknown_session,
        data_new_address,
        data_auth_failed,
        data_replayed,
        data_bad_frame,
        data_fragments,
        data_reassembled,
        data_reassembly_dropped,
        requests_received,
        requests_duplicate,
        requests_over_limit,
        replies_sent,
        replies_dropped,
        replies_refused,
        requests_abandoned,
        amplification_suppressed,
    )
}

/// The sum of every client counter that records a datagram dropped or ignored.
pub fn client_drops(s: &ClientStats) -> u64 {
    let ClientStats {
        races: _,
        probes_sent: _,
        offers_won: _,
        offers_late,
        offers_unknown_tag,
        offers_unprobed_source,
        offers_unknown_key,
        malformed,
        versions_received: _,
        unexpected,
        inits_sent: _,
        cookie_changes: _,
        cookie_changes_ignored,
        redirects: _,
        redirect_servers_added: _,
        redirect_servers_ignored,
        offers_not_chosen: _,
        offers_duplicate,
        accepts_invalid,
        sessions_established: _,
        failovers: _,
        refusal_backoffs: _,
        ejections: _,
        ejected_skipped: _,
        data_dropped,
        early_data_sent: _,
        data_held: _,
        requests_sent: _,
        replies_received: _,
        replies_unknown,
        // Callers failed at once as their session ended: no datagram dropped.
        requests_lost: _,
    } = *s;
    offers_late
        + offers_unknown_tag
        + offers_unprobed_source
        + offers_unknown_key
        + malformed
        + unexpected
        + cookie_changes_ignored
        + redirect_servers_ignored
        + offers_duplicate
        + accepts_invalid
        + data_dropped
        + replies_unknown
}

/// `after - before`, counter by counter.
pub fn client_delta(after: &ClientStats, before: &ClientStats) -> ClientStats {
    macro_rules! delta {
        ($($f:ident),* $(,)?) => {
            ClientStats {
                $($f: after.$f.checked_sub(before.$f).unwrap_or_else(|| {
                    panic!("counter {} went down: {} -> {}", stringify!($f), before.$f, after.$f)
                })),*
            }
        };
    }
    delta!(
        refusal_backoffs,
        ejections,
        ejected_skipped,
        redirects,
        redirect_servers_added,
        redirect_servers_ignored,
        offers_not_chosen,
        offers_duplicate,
        races,
        probes_sent,
        offers_won,
        offers_late,
        offers_unknown_tag,
        offers_unprobed_source,
        offers_unknown_key,
        malformed,
        versions_received,
        unexpected,
        inits_sent,
        cookie_changes,
        cookie_changes_ignored,
        accepts_invalid,
        sessions_established,
        failovers,
        data_dropped,
        early_data_sent,
        data_held,
        requests_sent,
        replies_received,
        replies_unknown,
        requests_lost,
    )
}
