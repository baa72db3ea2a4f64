//! A `ServerEndpoint` fed a sequence of datagrams and clock steps. It must never panic, and:
//! - every answer `handle` returns is at most 3× the datagram that caused it (R6), and at most the
//!   datagram's size when that datagram is a PROBE (type byte 0x01);
//! - every answer goes back to the datagram's (canonical) source and is an OFFER (to a PROBE),
//!   a COOKIE_CHANGE or a REDIRECT (to an INIT, no larger than it, naming only configured peers
//!   and never the client itself) or an ACCEPT;
//! - `poll_transmit` sends session traffic only to addresses that were sent an ACCEPT or that a
//!   session validly moved to (PROTOCOL.md §5.6), and to any other address at most 3× the DATA
//!   bytes it sent; held OFFERs only to addresses that sent a PROBE with that tag, no larger than
//!   the smallest probe;
//! - with an allow-list, sessions open only for listed client keys;
//! - a PROBE leaves no state behind (S2) beyond at most one held probe, and never more than
//!   `max_held`; a session is created only by a datagram answered with an ACCEPT, one at a
//!   time; the amplification bug guard never fires;
//! - every datagram the server delivers is at most `MAX_DATAGRAM` bytes and is either the body
//!   of a DATAGRAM frame that was sent (the recorded "hello" or a sealed one) or the pieces
//!   0 .. count − 1 of one fragmented datagram (one id, one count), each sealed and sent less than
//!   `REASSEMBLY_TIMEOUT` before — nothing is delivered from an incomplete set (PROTOCOL.md §5.7,
//!   `volley_fuzz::sealed::Ledger`); `data_reassembled` never exceeds half of `data_fragments`.
//!
//! Input: mode u8, then records until the input ends. (mode / 12) % 3 picks the allow-list: none,
//! the recorded client's key, or another key only. (mode / 3) % 4 picks the answer policy:
//! 0 = default (paced, no capacity), 1 = immediate, 2 = paced, 3 = gated (1–3 with capacity 4,
//! at most 16 held probes). mode % 3: 0 = raw datagrams only;
//! 1 = a recorded genuine INIT (real cookie, real Noise message, from `client_addr`) and PROBE
//! are available as templates; 2 = as 1, and the INIT was already delivered (a session is open),
//! with the client's recorded DATA packets (epochs 0 and 1) and its PATH_RESPONSE as further
//! templates (the INIT is pre-delivered only when the allow-list admits the recorded client).
//! Record: selector u8 | clock step u8 (see `volley_fuzz::advance`) | length u16 (mod 1601) |
//! that many bytes. Selector bits 0-2 pick the source address, bit 3 the local address, bits 4-6
//! a template (0 = none: the bytes are the datagram; k = 1 ..= 6: template k-1 patched by the
//! bytes, see `volley_fuzz::patched`; 7 = a sealed record: the bytes ask for an authentic DATA
//! packet of the recorded client's session, `counter u8 | flags u8 | plaintext frame or compact
//! FRAGMENT`, see `volley_fuzz::sealed` — it authenticates when that session is open, as in
//! mode 2), bit 7 turns the record into an API call chosen by its first byte (op 6 reloads the
//! allow-list: none, the client's key, or another key only).
//!
//! A sealed record's bytes: `counter u8 | flags u8 | body`. Counter 0 = the harness's next (16,
//! 17, …), k = counter k − 1 (replays, reordering). Flags bits 0–2 = the key epoch (0–7, sent as
//! the phase), bit 3 = the body is a compact FRAGMENT `id u8 | index u8 | count u8 | piece length
//! u16` (length mod 1,416; the harness fills the piece, missing bytes read as 0), else the body is
//! the plaintext frame itself (type byte, then the frame's body). See `volley_fuzz::sealed`.
//!
//! The harness is `volley_fuzz::server_datagram::run`, so that `cargo test` runs the seeds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    volley_fuzz::server_datagram::run(data);
});
