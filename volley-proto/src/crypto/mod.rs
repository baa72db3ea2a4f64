//! Noise glue and the session key schedule.
//!
//! The handshake is `Noise_IK_25519_ChaChaPoly_SHA256` (via `snow`): the client knows the server's
//! static key in advance (pinned) and proves its own, sending `-> e, es, s, ss` in INIT and
//! receiving `<- e, ee, se` in ACCEPT. The server learns and authenticates the client's key from
//! message 1 and decides (its allow-list) before it writes message 2 or keeps anything. The
//! prologue binds the handshake to the race: `SHA-256("volley/2 prologue" | service | tag |
//! cookie)`. After message 2 both sides take Noise's `Split()` keys and use them directly as DATA
//! keys of the suite the handshake chose (ChaCha20-Poly1305 or AES-256-GCM, via `ring`), with an
//! explicit 64-bit counter as the nonce and the DATA header as associated data; each direction's
//! key is replaced by a KDF of itself at every key update ([`DirectionKey::next`]). Randomness
//! for Noise ephemerals comes from the injected RNG.
//!
//! X25519 itself comes from `aws-lc-rs` (AWS-LC's formally verified s2n-bignum code with its
//! ADX/BMI2 paths), plugged into snow as its `Dh`: one shared secret costs about 21 µs there
//! against 50 µs for the curve25519-dalek that snow uses by default
//! (`cargo bench -p volley-lab --bench handshake`). A shared secret of all zeros — the peer sent a
//! small-order point — fails the handshake (RFC 7748 §6.1).

use rand_core::{CryptoRngCore, RngCore, SeedableRng};
use ring::digest;
use std::sync::Arc;

use aws_lc_rs::agreement::{PrivateKey, X25519};
use thiserror::Error;
use zeroize::Zeroize;

use crate::packet::KeyId;

/// The Noise protocol name of volley v2.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_SHA256";
/// Length of an X25519 public or private key.
pub const KEY_LEN: usize = 32;

/// A failure in the handshake or the AEAD. Peers' bad input lands here; the caller drops the
/// datagram and counts it.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// Noise rejected a message (bad key share, MAC failure, wrong state).
    #[error("noise handshake failed: {0}")]
    Handshake(#[from] snow::Error),
    /// AEAD open failed: forged, corrupted or wrong key.
    #[error("packet authentication failed")]
    Open,
    /// A key string was not 64 hex digits.
    #[error("key must be 64 hex digits")]
    BadKeyText,
}

/// A server's static public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl PublicKey {
    /// The key id carried in OFFERs: first 8 bytes of SHA-256("volley/1 key id" | key).
    pub fn key_id(&self) -> KeyId {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"volley/1 key id");
        ctx.update(&self.0);
        let d = ctx.finish();
        let mut id = [0u8; 8];
        id.copy_from_slice(&d.as_ref()[..8]);
        KeyId(id)
    }

    /// Lower-case hex, 64 digits.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    /// Parses 64 hex digits (surrounding white space ignored).
    pub fn from_hex(s: &str) -> Result<Self, CryptoError> {
        from_hex(s).map(PublicKey)
    }
}

/// A static key pair (a server's, or a client's). `Debug` never shows the private half; the
/// private half is erased on drop.
#[derive(Clone)]
pub struct StaticKeypair {
    private: [u8; KEY_LEN],
    public: PublicKey,
    /// The private half as AWS-LC holds it, built once: building it computes the public key
    /// (a basepoint multiplication), which every handshake would otherwise repeat.
    agreement: Arc<PrivateKey>,
}

impl Drop for StaticKeypair {
    fn drop(&mut self) {
        self.private.zeroize();
    }
}

impl std::fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl StaticKeypair {
    /// Draws a new key pair from `rng`.
    pub fn generate(rng: &mut dyn CryptoRngCore) -> Self {
        // Through the same seeded stream as Noise's ephemerals, so a seed gives the key it always
        // gave (the test vectors depend on it).
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let mut private = [0u8; KEY_LEN];
        rand_chacha::ChaCha20Rng::from_seed(seed).fill_bytes(&mut private);
        Self::from_private(private)
    }

    /// Rebuilds the pair from its private half (any 32 bytes; X25519 clamps them).
    pub fn from_private(private: [u8; KEY_LEN]) -> Self {
        let (agreement, public) = x25519_key(&private);
        Self {
            private,
            public: PublicKey(public),
            agreement: Arc::new(agreement),
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The private half as hex, for writing a key file. Handle with care.
    pub fn private_hex(&self) -> String {
        to_hex(&self.private)
    }

    /// Parses a private key written by [`StaticKeypair::private_hex`].
    pub fn from_private_hex(s: &str) -> Result<Self, CryptoError> {
        from_hex(s).map(Self::from_private)
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Result<[u8; KEY_LEN], CryptoError> {
    let s = s.trim().as_bytes();
    if s.len() != KEY_LEN * 2 {
        return Err(CryptoError::BadKeyText);
    }
    let nibble = |c: u8| -> Result<u8, CryptoError> {
        (c as char)
            .to_digit(16)
            .map(|d| d as u8)
            .ok_or(CryptoError::BadKeyText)
    };
    let mut out = [0u8; KEY_LEN];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Ok(out)
}

fn params() -> snow::params::NoiseParams {
    NOISE_PARAMS.parse().expect("valid noise params")
}

/// The handshake prologue: binds service, tag and cookie into the Noise transcript.
pub fn prologue(service: &[u8], tag: &crate::packet::Tag, cookie: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"volley/2 prologue");
    ctx.update(&[service.len() as u8]);
    ctx.update(service);
    ctx.update(&tag.0);
    ctx.update(&[cookie.len() as u8]);
    ctx.update(cookie);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// An X25519 private key as AWS-LC holds it, and its public key.
fn x25519_key(private: &[u8; KEY_LEN]) -> (PrivateKey, [u8; KEY_LEN]) {
    // Any 32 bytes are an X25519 private key; AWS-LC refuses only a wrong length.
    let key = PrivateKey::from_private_key(&X25519, private).expect("32-byte X25519 key");
    let mut public = [0u8; KEY_LEN];
    public.copy_from_slice(
        key.compute_public_key()
            .expect("X25519 public key of a valid private key")
            .as_ref(),
    );
    (key, public)
}

mod noise;
mod suite;

pub use noise::{
    ACCEPT_PAYLOAD_LEN, INIT_PAYLOAD_LEN, InitiatorHandshake, RawSplit, Response, StaticSecrets,
    Verdict, respond, respond_with,
};
pub use suite::{
    CipherPolicy, DirectionKey, KEY_UPDATE_LABEL, SUITE_AES_256_GCM, SUITE_CHACHA20_POLY1305,
    SessionKeys, Suite, aes_hardware,
};

#[cfg(test)]
mod tests;
