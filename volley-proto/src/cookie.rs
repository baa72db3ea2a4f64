//! Stateless cookies.
//!
//! A cookie is `key_id(1) | issued(4) | client(18) | mac(16)` = [`COOKIE_LEN`] bytes, where
//! `mac = HMAC-SHA256(key, "volley/1 cookie" | key_id | issued | client | server | tag |
//! len(service) | service)`
//! truncated to 16 bytes. It is a MAC, not a ciphertext: the server keeps nothing after minting it
//! and re-derives the MAC on presentation. `client` is the address the cookie was issued to, so a
//! genuine cookie arriving from another address (NAT rebinding) is told apart from a forged one at
//! the cost of the same single MAC, and answered with a fresh cookie.
//!
//! Two keys live at a time, current and previous, rotated on a timer; they come from the injected
//! RNG, are never persisted and never printed (the `Debug` impl redacts them).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_core::CryptoRngCore;
use ring::hmac;
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::packet::Tag;
use crate::util::encode_addr;

/// Bytes in a cookie minted by this implementation.
pub const COOKIE_LEN: usize = 1 + 4 + 18 + MAC_LEN;
const MAC_LEN: usize = 16;
const LABEL: &[u8] = b"volley/1 cookie";

/// Why a presented cookie was refused. Each has its own server counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CookieError {
    /// Wrong length: not one of ours.
    #[error("cookie malformed")]
    Malformed,
    /// Minted under a key that is neither current nor previous.
    #[error("cookie key unknown")]
    UnknownKey,
    /// Older than the cookie lifetime (or stamped in the future).
    #[error("cookie expired")]
    Expired,
    /// The MAC does not verify: forged or tampered.
    #[error("cookie MAC invalid")]
    BadMac,
}

/// A cookie that verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieCheck {
    /// Genuine, and presented from the address it was issued to.
    Valid {
        /// Time since it was minted, in whole milliseconds of the server's clock.
        age: Duration,
    },
    /// Genuine, but issued to `issued_to`, not to the address it came from.
    Moved {
        /// The address the cookie was minted for.
        issued_to: SocketAddr,
    },
}

/// What a cookie binds, besides the key and the time.
#[derive(Debug, Clone, Copy)]
pub struct CookieBinding<'a> {
    /// The client's address as the server saw it.
    pub client: SocketAddr,
    /// The server's own address the PROBE arrived on.
    pub server: SocketAddr,
    /// The race tag.
    pub tag: &'a Tag,
    /// The service name asked for.
    pub service: &'a [u8],
}

struct CookieKey {
    id: u8,
    key: hmac::Key,
}

/// The server's two cookie keys and the rotation clock.
pub struct CookieJar {
    current: CookieKey,
    previous: Option<CookieKey>,
    epoch: Instant,
    next_rotation: Instant,
    rotation: Duration,
    lifetime: Duration,
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieJar")
            .field("current_id", &self.current.id)
            .field("previous_id", &self.previous.as_ref().map(|k| k.id))
            .field("keys", &"<redacted>")
            .finish()
    }
}

fn fresh_key(id: u8, rng: &mut dyn CryptoRngCore) -> CookieKey {
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    let key = hmac::Key::new(hmac::HMAC_SHA256, &bytes);
    bytes.fill(0);
    CookieKey { id, key }
}

impl CookieJar {
    /// A jar whose first key is drawn now. `lifetime` must not exceed `rotation`, so that the
    /// previous key covers every cookie still within its lifetime.
    pub fn new(
        now: Instant,
        rotation: Duration,
        lifetime: Duration,
        rng: &mut dyn CryptoRngCore,
    ) -> Self {
        let lifetime = lifetime.min(rotation);
        let mut first_id = [0u8; 1];
        rng.fill_bytes(&mut first_id);
        Self {
            current: fresh_key(first_id[0], rng),
            previous: None,
            epoch: now,
            next_rotation: now + rotation,
            rotation,
            lifetime,
        }
    }

    /// When [`CookieJar::rotate_if_due`] next has work.
    pub fn next_rotation(&self) -> Instant {
        self.next_rotation
    }

    /// Rotates keys if the rotation time has come: current becomes previous, a new current is
    /// drawn. Returns whether it rotated.
    pub fn rotate_if_due(&mut self, now: Instant, rng: &mut dyn CryptoRngCore) -> bool {
        if now < self.next_rotation {
            return false;
        }
        let next = fresh_key(self.current.id.wrapping_add(1), rng);
        self.previous = Some(std::mem::replace(&mut self.current, next));
        // If the server slept through several periods, the old previous key is stale too.
        if now >= self.next_rotation + self.rotation {
            self.previous = None;
        }
        self.next_rotation = now + self.rotation;
        true
    }

    /// A secret value derived from the jar's first key (HMAC over a label), for keyed hashing
    /// elsewhere in the server (the per-source PROBE buckets): secret as the key, and drawn
    /// without taking anything more from the RNG.
    pub fn derive_secret(&self, label: &[u8]) -> u64 {
        let tag = hmac::sign(&self.current.key, label);
        let mut b = [0u8; 8];
        b.copy_from_slice(&tag.as_ref()[..8]);
        u64::from_le_bytes(b)
    }

    fn stamp(&self, now: Instant) -> u32 {
        // Milliseconds since the jar was made, modulo 2^32; ages are computed with wrapping
        // subtraction, which is exact for any age below ~49 days (lifetimes are seconds).
        now.saturating_duration_since(self.epoch).as_millis() as u32
    }

    fn mac(key: &CookieKey, issued: u32, issued_to: &[u8; 18], b: &CookieBinding<'_>) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&key.key);
        ctx.update(LABEL);
        ctx.update(&[key.id]);
        ctx.update(&issued.to_be_bytes());
        ctx.update(issued_to);
        ctx.update(&encode_addr(b.server));
        ctx.update(&b.tag.0);
        ctx.update(&[b.service.len() as u8]);
        ctx.update(b.service);
        ctx.sign()
    }

    /// Mints a cookie for `binding` under the current key.
    pub fn mint(&self, now: Instant, binding: &CookieBinding<'_>) -> [u8; COOKIE_LEN] {
        let issued = self.stamp(now);
        let client = encode_addr(binding.client);
        let tag = Self::mac(&self.current, issued, &client, binding);
        let mut out = [0u8; COOKIE_LEN];
        out[0] = self.current.id;
        out[1..5].copy_from_slice(&issued.to_be_bytes());
        out[5..23].copy_from_slice(&client);
        out[23..].copy_from_slice(&tag.as_ref()[..MAC_LEN]);
        out
    }

    /// Verifies a presented cookie, cheapest check first: length, key id, age, then one MAC
    /// compared in constant time. `binding.client` is the datagram's source address.
    pub fn verify(
        &self,
        now: Instant,
        cookie: &[u8],
        binding: &CookieBinding<'_>,
    ) -> Result<CookieCheck, CookieError> {
        if cookie.len() != COOKIE_LEN {
            return Err(CookieError::Malformed);
        }
        let key = if cookie[0] == self.current.id {
            &self.current
        } else {
            match &self.previous {
                Some(prev) if prev.id == cookie[0] => prev,
                _ => return Err(CookieError::UnknownKey),
            }
        };
        let issued = u32::from_be_bytes([cookie[1], cookie[2], cookie[3], cookie[4]]);
        let age = self.stamp(now).wrapping_sub(issued);
        if u128::from(age) > self.lifetime.as_millis() {
            return Err(CookieError::Expired);
        }
        let mut issued_to = [0u8; 18];
        issued_to.copy_from_slice(&cookie[5..23]);
        let expected = Self::mac(key, issued, &issued_to, binding);
        if !bool::from(expected.as_ref()[..MAC_LEN].ct_eq(&cookie[23..])) {
            return Err(CookieError::BadMac);
        }
        if issued_to == encode_addr(binding.client) {
            Ok(CookieCheck::Valid {
                age: Duration::from_millis(u64::from(age)),
            })
        } else {
            Ok(CookieCheck::Moved {
                issued_to: crate::util::decode_addr(&issued_to),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn binding<'a>(tag: &'a Tag, client: &str) -> CookieBinding<'a> {
        CookieBinding {
            client: client.parse().unwrap(),
            server: "10.0.0.1:4000".parse().unwrap(),
            tag,
            service: b"echo",
        }
    }

    #[test]
    fn minted_cookie_verifies_and_binds_every_field() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let now = Instant::now();
        let jar = CookieJar::new(
            now,
            Duration::from_secs(30),
            Duration::from_secs(10),
            &mut rng,
        );
        let tag = Tag([1; 16]);
        let b = binding(&tag, "192.0.2.1:5000");
        let c = jar.mint(now, &b);
        assert!(matches!(
            jar.verify(now, &c, &b),
            Ok(CookieCheck::Valid { .. })
        ));
        let other_tag = Tag([2; 16]);
        assert_eq!(
            jar.verify(now, &c, &binding(&other_tag, "192.0.2.1:5000")),
            Err(CookieError::BadMac)
        );
        let mut other_service = b;
        other_service.service = b"other";
        assert_eq!(
            jar.verify(now, &c, &other_service),
            Err(CookieError::BadMac)
        );
        let mut other_server = b;
        other_server.server = "10.0.0.2:4000".parse().unwrap();
        assert_eq!(jar.verify(now, &c, &other_server), Err(CookieError::BadMac));
        for i in 0..COOKIE_LEN {
            let mut t = c;
            t[i] ^= 1;
            assert!(jar.verify(now, &t, &b).is_err(), "flip at {i} accepted");
        }
        assert_eq!(
            jar.verify(now, &c, &binding(&tag, "192.0.2.1:5001")),
            Ok(CookieCheck::Moved {
                issued_to: "192.0.2.1:5000".parse().unwrap()
            })
        );
    }

    #[test]
    fn rotation_keeps_previous_then_forgets_it() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let t0 = Instant::now();
        let rot = Duration::from_secs(30);
        let mut jar = CookieJar::new(t0, rot, Duration::from_secs(30), &mut rng);
        let tag = Tag([1; 16]);
        let b = binding(&tag, "[2001:db8::1]:5000");
        let c = jar.mint(t0 + Duration::from_secs(29), &b);
        assert!(jar.rotate_if_due(t0 + rot, &mut rng));
        assert!(matches!(
            jar.verify(t0 + rot, &c, &b),
            Ok(CookieCheck::Valid { .. })
        ));
        assert!(jar.rotate_if_due(t0 + rot * 2, &mut rng));
        assert_eq!(
            jar.verify(t0 + rot * 2, &c, &b),
            Err(CookieError::UnknownKey)
        );
    }

    #[test]
    fn old_cookie_expires() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let t0 = Instant::now();
        let jar = CookieJar::new(
            t0,
            Duration::from_secs(30),
            Duration::from_secs(10),
            &mut rng,
        );
        let tag = Tag([1; 16]);
        let b = binding(&tag, "192.0.2.1:5000");
        let c = jar.mint(t0, &b);
        assert_eq!(
            jar.verify(t0 + Duration::from_millis(10_001), &c, &b),
            Err(CookieError::Expired)
        );
        assert_eq!(
            jar.verify(t0 + Duration::from_millis(10_000), &c, &b),
            Ok(CookieCheck::Valid {
                age: Duration::from_millis(10_000)
            })
        );
    }

    #[test]
    fn debug_never_prints_keys() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let jar = CookieJar::new(
            Instant::now(),
            Duration::from_secs(30),
            Duration::from_secs(10),
            &mut rng,
        );
        assert!(format!("{jar:?}").contains("redacted"));
    }
}
