//! What every AEAD use in volley shares: the nonce built from a packet or record counter, and a
//! raw 32-byte key bound for one seal or open. DATA seals with ChaCha20-Poly1305 (`crypto`),
//! stream records with AES-256-GCM (`stream`); both number their messages with a 64-bit counter.

use ring::aead::{Algorithm, LessSafeKey, Nonce, UnboundKey};

/// The 96-bit nonce of a counter: 32 zero bits, then the counter little-endian — Noise's
/// ChaChaPoly nonce, used as well by DATA (PROTOCOL.md §4.6) and stream records (§13.3).
pub(crate) fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// `key` bound for `algorithm` (both of volley's take 32-byte keys).
pub(crate) fn bind(algorithm: &'static Algorithm, key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(algorithm, key).expect("a 32-byte key for a 32-byte AEAD"))
}
