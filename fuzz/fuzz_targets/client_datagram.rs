//! A client `Connection` racing a pool of two servers, fed a sequence of datagrams (from the pool's
//! servers and from other addresses), clock steps and API calls. It must never panic, it must
//! never send to an address outside the pool, its PROBEs are never below `PROBE_MIN_LEN`, and a
//! datagram from an address outside the pool (whatever it carries) must change nothing: no state
//! change, no event, nothing sent. Every datagram it delivers is at most `MAX_DATAGRAM` bytes and
//! is either the body of a DATAGRAM frame that was sent (the recorded "hi" or a sealed one) or the
//! pieces 0 .. count − 1 of one fragmented datagram (one id, one count), each sealed and sent
//! less than `REASSEMBLY_TIMEOUT` before (or before the session was up: a DATA that overtakes
//! the ACCEPT is held) — nothing is delivered from an incomplete set (PROTOCOL.md §5.7,
//! `volley_fuzz::sealed::Ledger`).
//!
//! Genuine server datagrams recorded once (OFFER, COOKIE_CHANGE, REDIRECT, ACCEPT and three DATA
//! packets, all valid for this seeded client) are available as templates, so the fuzzer reaches the
//! handshake, the session and failover.
//!
//! Input: mode u8, then records. mode % 3 picks the selection policy (earliest, window, n-best
//! of 2), (mode / 3) % 3 the fan-out (all, 1, 2). Addresses a REDIRECT made the client add
//! (`redirect_servers_added`) join the pool the checks allow.
//!
//! Record: selector u8 | clock step u8 (see `volley_fuzz::advance`) | length u16 (mod 1601) |
//! that many bytes. Selector bits 0-2 pick the source address, bits 4-6 a template (0 = none: the
//! bytes are the datagram; 1 OFFER, 2 COOKIE_CHANGE, 3 ACCEPT, 4 DATA "hi", 5 a PATH_CHALLENGE
//! (DATA, key epoch 1), 6 DATA CLOSE — or, when bit 0x40 of the mode is set, a VERSIONS echoing the
//! recorded PROBE — 7 REDIRECT, each patched by the bytes, see `volley_fuzz::patched`), bit 3
//! makes it a sealed record instead (template ignored): the bytes ask for an authentic DATA packet
//! of the recorded server's session, `counter u8 | flags u8 | plaintext frame or compact
//! FRAGMENT`, see `volley_fuzz::sealed` — it authenticates once the client took the recorded
//! ACCEPT (template 3) from the recorded server — and bit 7 turns the record into an API call.
//!
//! A sealed record's bytes: `counter u8 | flags u8 | body`. Counter 0 = the harness's next (16,
//! 17, …), k = counter k − 1 (replays, reordering). Flags bits 0–2 = the key epoch (0–7, sent as
//! the phase), bit 3 = the body is a compact FRAGMENT `id u8 | index u8 | count u8 | piece length
//! u16` (length mod 1,416; the harness fills the piece, missing bytes read as 0), else the body is
//! the plaintext frame itself (type byte, then the frame's body). See `volley_fuzz::sealed`.
//!
//! The harness is `volley_fuzz::client_datagram::run`, so that `cargo test` runs the seeds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    volley_fuzz::client_datagram::run(data);
});
