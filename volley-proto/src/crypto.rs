//! Noise glue and the session key schedule.
//!
//! The handshake is `Noise_NK_25519_ChaChaPoly_SHA256` (via `snow`): the client knows the server's
//! static key in advance (pinned), sends `-> e, es` in INIT and receives `<- e, ee` in ACCEPT. The
//! prologue binds the handshake to the race: `SHA-256("volley/1 prologue" | service | tag | cookie)`.
//! After message 2 both sides take Noise's `Split()` keys and use them directly as
//! ChaCha20-Poly1305 keys (via `ring`) for DATA, with an explicit 64-bit counter as the nonce and
//! the DATA header as associated data. Randomness for Noise ephemerals comes from the injected RNG.
//!
//! X25519 itself comes from `aws-lc-rs` (AWS-LC's formally verified s2n-bignum code with its
//! ADX/BMI2 paths), plugged into snow as its `Dh`: one shared secret costs about 21 µs there
//! against 50 µs for the curve25519-dalek that snow uses by default, and a handshake needs two on
//! each side (`cargo bench -p volley-lab --bench handshake`). A shared secret of all zeros — the
//! peer sent a small-order point — fails the handshake (RFC 7748 §6.1).

use rand_core::{CryptoRngCore, RngCore, SeedableRng};
use ring::aead::{self, Aad};
use ring::digest;
use std::sync::Arc;

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use snow::resolvers::{CryptoResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use thiserror::Error;

use crate::aead::{bind, nonce};
use crate::packet::KeyId;

/// The Noise protocol name of volley v1.
pub const NOISE_PARAMS: &str = "Noise_NK_25519_ChaChaPoly_SHA256";
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

/// A server's static key pair. `Debug` never shows the private half.
#[derive(Clone)]
pub struct StaticKeypair {
    private: [u8; KEY_LEN],
    public: PublicKey,
    /// The private half as AWS-LC holds it, built once: building it computes the public key
    /// (a basepoint multiplication), which every handshake would otherwise repeat.
    agreement: Arc<PrivateKey>,
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
    ctx.update(b"volley/1 prologue");
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

/// snow's `Dh` over AWS-LC's X25519. Created per handshake for `s` and `e`; a `set` with the
/// server's own static key takes the key built once in [`StaticKeypair`] instead of building it
/// again.
struct AwsLcX25519 {
    known_static: Option<StaticKeypair>,
    private: [u8; KEY_LEN],
    public: [u8; KEY_LEN],
    key: Option<Arc<PrivateKey>>,
}

impl Dh for AwsLcX25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        KEY_LEN
    }

    fn priv_len(&self) -> usize {
        KEY_LEN
    }

    fn set(&mut self, privkey: &[u8]) {
        let mut private = [0u8; KEY_LEN];
        let n = privkey.len().min(KEY_LEN);
        private[..n].copy_from_slice(&privkey[..n]);
        self.private = private;
        if let Some(known) = self.known_static.as_ref().filter(|k| k.private == private) {
            self.public = known.public.0;
            self.key = Some(known.agreement.clone());
        } else {
            let (key, public) = x25519_key(&private);
            self.public = public;
            self.key = Some(Arc::new(key));
        }
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut private = [0u8; KEY_LEN];
        rng.try_fill_bytes(&mut private)?;
        let (key, public) = x25519_key(&private);
        self.private = private;
        self.public = public;
        self.key = Some(Arc::new(key));
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        &self.private
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let key = self.key.as_ref().ok_or(snow::Error::Dh)?;
        let peer = UnparsedPublicKey::new(&X25519, pubkey.get(..KEY_LEN).ok_or(snow::Error::Dh)?);
        // AWS-LC fails the agreement when the result is all zeros (a small-order peer point).
        agreement::agree(key, peer, snow::Error::Dh, |secret| {
            out.get_mut(..secret.len())
                .ok_or(snow::Error::Dh)?
                .copy_from_slice(secret);
            Ok(())
        })
    }
}

/// Feeds snow's ephemeral-key generation from a ChaCha20 stream seeded by the injected RNG, so a
/// seeded simulation is reproducible end to end, and gives it X25519 from AWS-LC.
struct SeededResolver {
    seed: [u8; 32],
    known_static: Option<StaticKeypair>,
}

impl SeededResolver {
    fn new(rng: &mut dyn CryptoRngCore, known_static: Option<&StaticKeypair>) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Self {
            seed,
            known_static: known_static.cloned(),
        }
    }
}

struct SeededRandom(rand_chacha::ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(rand_chacha::ChaCha20Rng::from_seed(
            self.seed,
        ))))
    }
    fn resolve_dh(&self, choice: &snow::params::DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            snow::params::DHChoice::Curve25519 => Some(Box::new(AwsLcX25519 {
                known_static: self.known_static.clone(),
                private: [0; KEY_LEN],
                public: [0; KEY_LEN],
                key: None,
            })),
            _ => None,
        }
    }
    fn resolve_hash(&self, choice: &snow::params::HashChoice) -> Option<Box<dyn Hash>> {
        RingResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &snow::params::CipherChoice) -> Option<Box<dyn Cipher>> {
        RingResolver.resolve_cipher(choice)
    }
}

/// The client's side of the handshake, between INIT and ACCEPT.
pub struct InitiatorHandshake {
    hs: snow::HandshakeState,
}

impl std::fmt::Debug for InitiatorHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InitiatorHandshake")
    }
}

impl InitiatorHandshake {
    /// Starts NK towards `server` and writes message 1 carrying `payload` into `out`.
    pub fn start(
        server: &PublicKey,
        prologue: &[u8; 32],
        payload: &[u8],
        out: &mut [u8],
        rng: &mut dyn CryptoRngCore,
    ) -> Result<(Self, usize), CryptoError> {
        let mut hs =
            snow::Builder::with_resolver(params(), Box::new(SeededResolver::new(rng, None)))
                .remote_public_key(&server.0)?
                .prologue(prologue)?
                .build_initiator()?;
        let n = hs.write_message(payload, out)?;
        Ok((Self { hs }, n))
    }

    /// Reads message 2, writing its payload into `payload`; returns the payload length and the
    /// session keys.
    pub fn finish(
        mut self,
        msg2: &[u8],
        payload: &mut [u8],
    ) -> Result<(usize, SessionKeys), CryptoError> {
        let n = self.hs.read_message(msg2, payload)?;
        let (i2r, r2i) = self.hs.dangerously_get_raw_split();
        Ok((n, SessionKeys::new(&i2r, &r2i)))
    }
}

/// The server's side: reads message 1, writes message 2, in one call after the cookie checked out.
pub fn respond(
    keypair: &StaticKeypair,
    prologue: &[u8; 32],
    msg1: &[u8],
    payload1: &mut [u8],
    rng: &mut dyn CryptoRngCore,
    payload2: impl FnOnce(&[u8]) -> [u8; 4],
    msg2: &mut [u8],
) -> Result<(usize, usize, SessionKeys), CryptoError> {
    let resolver = SeededResolver::new(rng, Some(keypair));
    let mut hs = snow::Builder::with_resolver(params(), Box::new(resolver))
        .local_private_key(&keypair.private)?
        .prologue(prologue)?
        .build_responder()?;
    let n1 = hs.read_message(msg1, payload1)?;
    let p2 = payload2(&payload1[..n1]);
    let n2 = hs.write_message(&p2, msg2)?;
    let (i2r, r2i) = hs.dangerously_get_raw_split();
    Ok((n1, n2, SessionKeys::new(&r2i, &i2r)))
}

/// One direction's AEAD keys of an established session.
///
/// Kept as the two raw 32-byte ChaCha20-Poly1305 keys (64 bytes) rather than two ring
/// `LessSafeKey`s (over 1 KiB together: ring sizes every key for an AES schedule); each seal or
/// open binds its key on the spot, which for ChaCha20 is a copy of 32 bytes. At 100,000
/// sessions that is the difference between about 2 KiB and 1 KiB per session.
pub struct SessionKeys {
    seal: [u8; 32],
    open: [u8; 32],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(<redacted>)")
    }
}

impl SessionKeys {
    /// `seal` encrypts what this side sends; `open` decrypts what it receives.
    pub fn new(seal: &[u8; 32], open: &[u8; 32]) -> Self {
        Self {
            seal: *seal,
            open: *open,
        }
    }

    /// Encrypts `in_out[..len]` in place and appends the tag; returns the new length.
    pub fn seal(
        &self,
        counter: u64,
        aad: &[u8],
        in_out: &mut [u8],
        len: usize,
    ) -> Result<usize, CryptoError> {
        if in_out.len() < len + crate::AEAD_TAG_LEN {
            return Err(CryptoError::Open);
        }
        let tag = bind(&aead::CHACHA20_POLY1305, &self.seal)
            .seal_in_place_separate_tag(nonce(counter), Aad::from(aad), &mut in_out[..len])
            .map_err(|_| CryptoError::Open)?;
        in_out[len..len + crate::AEAD_TAG_LEN].copy_from_slice(tag.as_ref());
        Ok(len + crate::AEAD_TAG_LEN)
    }

    /// The stream keys of this session (§13.1), for a side in `role` (which tells which of
    /// this side's keys is `k1`, client → server).
    pub fn stream_keys(&self, role: crate::stream::Role) -> crate::stream::StreamKeys {
        match role {
            crate::stream::Role::Client => {
                crate::stream::StreamKeys::derive(&self.seal, &self.open)
            }
            crate::stream::Role::Server => {
                crate::stream::StreamKeys::derive(&self.open, &self.seal)
            }
        }
    }

    /// Decrypts ciphertext‖tag in place; returns the plaintext.
    pub fn open<'b>(
        &self,
        counter: u64,
        aad: &[u8],
        in_out: &'b mut [u8],
    ) -> Result<&'b mut [u8], CryptoError> {
        bind(&aead::CHACHA20_POLY1305, &self.open)
            .open_in_place(nonce(counter), Aad::from(aad), in_out)
            .map_err(|_| CryptoError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn x25519_matches_rfc7748_and_refuses_small_order_points() {
        // RFC 7748 §6.1: Alice's private key, her public key, and the shared secret with Bob.
        let alice = StaticKeypair::from_private_hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        )
        .unwrap();
        assert_eq!(
            alice.public().to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        let bob =
            PublicKey::from_hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
                .unwrap();
        let mut dh = SeededResolver::new(&mut ChaCha20Rng::seed_from_u64(1), Some(&alice))
            .resolve_dh(&snow::params::DHChoice::Curve25519)
            .unwrap();
        dh.set(&alice.private);
        let mut shared = [0u8; 32];
        dh.dh(&bob.0, &mut shared).unwrap();
        assert_eq!(
            to_hex(&shared),
            "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
        );
        // A peer key of order 1, 2 or 4 makes the shared secret all zeros: refused, not used.
        for small in [[0u8; 32], {
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        }] {
            assert!(dh.dh(&small, &mut shared).is_err());
        }
    }

    #[test]
    fn nk_handshake_derives_matching_keys() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let server = StaticKeypair::generate(&mut rng);
        let pro = [3u8; 32];
        let mut m1 = [0u8; 256];
        let (init, n1) =
            InitiatorHandshake::start(&server.public(), &pro, &[1, 2, 3, 4], &mut m1, &mut rng)
                .unwrap();
        let mut p1 = [0u8; 256];
        let mut m2 = [0u8; 256];
        let (np1, n2, server_keys) = respond(
            &server,
            &pro,
            &m1[..n1],
            &mut p1,
            &mut rng,
            |_| [9, 9, 9, 9],
            &mut m2,
        )
        .unwrap();
        assert_eq!(&p1[..np1], &[1, 2, 3, 4]);
        let mut p2 = [0u8; 256];
        let (np2, client_keys) = init.finish(&m2[..n2], &mut p2).unwrap();
        assert_eq!(&p2[..np2], &[9, 9, 9, 9]);
        let mut buf = [0u8; 64];
        buf[..5].copy_from_slice(b"hello");
        let n = client_keys.seal(7, b"hdr", &mut buf, 5).unwrap();
        assert_eq!(
            server_keys.open(7, b"hdr", &mut buf[..n]).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn wrong_prologue_or_key_fails() {
        let mut rng = ChaCha20Rng::seed_from_u64(10);
        let server = StaticKeypair::generate(&mut rng);
        let other = StaticKeypair::generate(&mut rng);
        let mut m1 = [0u8; 256];
        let (_, n1) =
            InitiatorHandshake::start(&other.public(), &[0; 32], &[], &mut m1, &mut rng).unwrap();
        let mut p = [0u8; 256];
        let mut m2 = [0u8; 256];
        assert!(
            respond(
                &server,
                &[0; 32],
                &m1[..n1],
                &mut p,
                &mut rng,
                |_| [0; 4],
                &mut m2
            )
            .is_err()
        );
        let (_, n1) =
            InitiatorHandshake::start(&server.public(), &[0; 32], &[], &mut m1, &mut rng).unwrap();
        assert!(
            respond(
                &server,
                &[1; 32],
                &m1[..n1],
                &mut p,
                &mut rng,
                |_| [0; 4],
                &mut m2
            )
            .is_err()
        );
    }

    #[test]
    fn key_text_round_trips() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let kp = StaticKeypair::generate(&mut rng);
        let back = StaticKeypair::from_private_hex(&kp.private_hex()).unwrap();
        assert_eq!(back.public(), kp.public());
        assert_eq!(
            PublicKey::from_hex(&kp.public().to_hex()).unwrap(),
            kp.public()
        );
        assert!(PublicKey::from_hex("zz").is_err());
        assert!(!format!("{kp:?}").contains(&kp.private_hex()));
    }
}
