//! `CookieJar::verify` on arbitrary bytes. One jar (fixed-seed ChaCha20) mints one genuine cookie
//! for a fixed binding; the fuzzer picks the client and server ports the cookie is presented with,
//! when it is presented, whether the keys rotated meanwhile, and the cookie bytes (verbatim, or as
//! an XOR patch over the genuine cookie). verify must never panic, and only the exact minted bytes
//! presented to the server address they were minted for, within their lifetime, may return Ok.
//!
//! Input: client port u16 | server port u16 | time offset u16 (ms) | flags u8 | cookie or patch.
//! flags bit 0: the rest is the cookie verbatim (else an XOR patch over the genuine cookie);
//! bit 1: mint 25 s after the jar was made and rotate the keys once at 30 s before verifying;
//! bit 2: verify *before* the mint time (a cookie stamped in the future), but not before the jar
//! was made.
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use volley_fuzz::Input;
use volley_proto::cookie::{CookieBinding, CookieCheck, CookieJar};
use volley_proto::packet::Tag;

const CLIENT_IP: [u8; 4] = [192, 0, 2, 1];
const SERVER_IP: [u8; 4] = [10, 0, 0, 1];
const MINT_CLIENT_PORT: u16 = 5000;
const MINT_SERVER_PORT: u16 = 4000;
const LIFETIME: Duration = Duration::from_secs(10);
const ROTATION: Duration = Duration::from_secs(30);

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let (Some(cport), Some(sport), Some(offset), Some(flags)) =
        (input.u16(), input.u16(), input.u16(), input.u8())
    else {
        return;
    };
    let offset = Duration::from_millis(u64::from(offset));
    let rotate = flags & 2 != 0;
    let future = flags & 4 != 0;

    let mut rng = ChaCha20Rng::seed_from_u64(7);
    // A base far enough from "now" that subtracting the offset below cannot underflow an Instant.
    let t0 = Instant::now() + Duration::from_secs(120);
    let mut jar = CookieJar::new(t0, ROTATION, LIFETIME, &mut rng);
    let tag = Tag([0x5a; 16]);
    let minted_binding = CookieBinding {
        client: SocketAddr::from((CLIENT_IP, MINT_CLIENT_PORT)),
        server: SocketAddr::from((SERVER_IP, MINT_SERVER_PORT)),
        tag: &tag,
        service: b"echo",
    };
    let mint_at = if rotate {
        t0 + Duration::from_secs(25)
    } else {
        t0
    };
    let genuine = jar.mint(mint_at, &minted_binding);
    if rotate {
        assert!(jar.rotate_if_due(t0 + ROTATION, &mut rng));
    }

    let rest = input.rest();
    let cookie: Vec<u8> = if flags & 1 != 0 {
        rest.to_vec()
    } else {
        let mut c = genuine.to_vec();
        for (i, &m) in rest.iter().enumerate() {
            match c.get_mut(i) {
                Some(b) => *b ^= m,
                None => c.push(m),
            }
        }
        c
    };

    // Monotonic time never goes back before the jar was made, so neither does the harness.
    let verify_at = if future {
        (mint_at - offset).max(t0)
    } else {
        mint_at + offset
    };
    let presented = CookieBinding {
        client: SocketAddr::from((CLIENT_IP, cport)),
        server: SocketAddr::from((SERVER_IP, sport)),
        ..minted_binding
    };
    let result = jar.verify(verify_at, &cookie, &presented);

    // Genuine means: the very bytes this jar mints (or would have minted: minting is stateless,
    // so a cookie equal to what the jar's key produces for this binding at the time the cookie
    // names is as good as one it handed out) for this binding, presented to the server address it
    // was minted for. The fuzzer can learn such a cookie from another input: with the same seed,
    // the same key mints the same bytes at the same `issued` time (the crash input kept as
    // seeds/cookie_verify/regression_equivalent_cookie was one, minted at ms 0 and presented in a
    // run that minted its own at 25 s).
    let minted = equivalent_mint_time(t0, rotate, &minted_binding, &cookie);
    let is_genuine = minted.is_some() && sport == MINT_SERVER_PORT;
    debug_assert!(cookie[..] != genuine[..] || minted == Some(mint_at));
    // Both instants are whole milliseconds after the jar's epoch, so the cookie's millisecond
    // stamp measures the age exactly: a genuine cookie is valid iff its age is within the lifetime.
    let in_lifetime = minted.is_some_and(|m| verify_at >= m && verify_at - m <= LIFETIME);
    match result {
        Ok(check) => {
            assert!(
                is_genuine,
                "forged or tampered cookie accepted: {cookie:02x?} sport {sport}"
            );
            assert!(in_lifetime, "cookie accepted outside its lifetime");
            match check {
                CookieCheck::Valid { .. } => assert_eq!(cport, MINT_CLIENT_PORT),
                CookieCheck::Moved { issued_to } => {
                    assert_ne!(cport, MINT_CLIENT_PORT);
                    assert_eq!(issued_to, minted_binding.client);
                }
            }
        }
        Err(e) => assert!(
            !(is_genuine && in_lifetime),
            "genuine live cookie refused: {e}"
        ),
    }
});

/// When this jar (same seed; rotated at 30 s when `rotate`) would have minted exactly `cookie` for
/// `binding`, if it would have: at the time its `issued` field names, with the key current then.
fn equivalent_mint_time(
    t0: Instant,
    rotate: bool,
    binding: &CookieBinding<'_>,
    cookie: &[u8],
) -> Option<Instant> {
    let issued = u32::from_be_bytes(cookie.get(1..5)?.try_into().ok()?);
    let at = t0 + Duration::from_millis(u64::from(issued));
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let mut jar = CookieJar::new(t0, ROTATION, LIFETIME, &mut rng);
    if rotate && at >= t0 + ROTATION {
        jar.rotate_if_due(t0 + ROTATION, &mut rng);
    }
    (jar.mint(at, binding)[..] == cookie[..]).then_some(at)
}
