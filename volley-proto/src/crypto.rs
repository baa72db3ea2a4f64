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
use ring::aead::{self, Aad};
use ring::digest;
use std::sync::Arc;

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use snow::resolvers::{CryptoResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use thiserror::Error;
use zeroize::Zeroize;

use crate::aead::{bind, nonce};
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

/// snow's `Dh` over AWS-LC's X25519. Created per handshake for `s` and `e`; a `set` with the
/// server's own static key takes the key built once in [`StaticKeypair`] instead of building it
/// again.
struct AwsLcX25519 {
    known_static: Option<StaticKeypair>,
    private: [u8; KEY_LEN],
    public: [u8; KEY_LEN],
    key: Option<Arc<PrivateKey>>,
    /// This is the known static key (its shared secrets may come from `secrets`).
    is_static: bool,
    secrets: Option<Arc<StaticSecrets>>,
}

impl Drop for AwsLcX25519 {
    fn drop(&mut self) {
        self.private.zeroize();
    }
}

/// The static-static secrets (`ss`, PROTOCOL.md §4.5) of clients a server accepted before, so
/// that a client's later handshakes cost the server three X25519 operations instead of four.
///
/// A secret enters only after the handshake that computed it was accepted (its key passed the
/// allow-list), at most [`StaticSecrets::MAX`] are kept (beyond, the store starts over), and a
/// reloaded allow-list drops those of keys it no longer lists. Holding them exposes nothing the
/// server's own private key does not: with it anyone can compute them. Erased on drop.
#[derive(Default)]
pub struct StaticSecrets {
    inner: std::sync::Mutex<SecretsInner>,
}

#[derive(Default)]
struct SecretsInner {
    kept: std::collections::HashMap<[u8; KEY_LEN], [u8; KEY_LEN]>,
    /// The last shared secrets computed with the static key (the `es` and `ss` of the handshake
    /// under way), until the handshake's verdict.
    recent: Vec<([u8; KEY_LEN], [u8; KEY_LEN])>,
}

impl Drop for SecretsInner {
    fn drop(&mut self) {
        for s in self.kept.values_mut() {
            s.zeroize();
        }
        for (_, s) in &mut self.recent {
            s.zeroize();
        }
    }
}

impl std::fmt::Debug for StaticSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaticSecrets({} kept)", self.len())
    }
}

impl StaticSecrets {
    /// Most secrets kept.
    pub const MAX: usize = 65_536;

    fn lock(&self) -> std::sync::MutexGuard<'_, SecretsInner> {
        // A panic elsewhere cannot leave the map inconsistent: recover it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many are kept.
    pub fn len(&self) -> usize {
        self.lock().kept.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (snow hands over the peer's key in a buffer sized for its largest curve: the first 32
    /// bytes are the X25519 key.)
    fn get(&self, peer: &[u8]) -> Option<[u8; KEY_LEN]> {
        let peer: [u8; KEY_LEN] = peer.get(..KEY_LEN)?.try_into().ok()?;
        self.lock().kept.get(&peer).copied()
    }

    fn note(&self, peer: &[u8], secret: &[u8]) {
        let (Some(Ok(peer)), Some(Ok(secret))) = (
            peer.get(..KEY_LEN).map(<[u8; KEY_LEN]>::try_from),
            secret.get(..KEY_LEN).map(<[u8; KEY_LEN]>::try_from),
        ) else {
            return;
        };
        let mut inner = self.lock();
        if inner.recent.len() >= 2 {
            let (_, mut old) = inner.recent.remove(0);
            old.zeroize();
        }
        inner.recent.push((peer, secret));
    }

    /// Keeps the secret just computed with `client` (its handshake was accepted).
    fn keep(&self, client: &PublicKey) {
        let mut inner = self.lock();
        let Some(i) = inner.recent.iter().position(|(p, _)| *p == client.0) else {
            return;
        };
        let (peer, secret) = inner.recent.swap_remove(i);
        if inner.kept.len() >= Self::MAX && !inner.kept.contains_key(&peer) {
            for s in inner.kept.values_mut() {
                s.zeroize();
            }
            inner.kept.clear();
        }
        inner.kept.insert(peer, secret);
    }

    /// Forgets the handshake under way's secrets (it was refused or failed).
    fn forget_recent(&self) {
        let mut inner = self.lock();
        for (_, s) in &mut inner.recent {
            s.zeroize();
        }
        inner.recent.clear();
    }

    /// Keeps only the secrets of keys `keep` says yes to (a reloaded allow-list).
    pub fn retain(&self, keep: impl Fn(&PublicKey) -> bool) {
        self.lock().kept.retain(|peer, secret| {
            let yes = keep(&PublicKey(*peer));
            if !yes {
                secret.zeroize();
            }
            yes
        });
    }
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
            self.is_static = true;
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
        let secrets = self.secrets.as_ref().filter(|_| self.is_static);
        if let Some(secret) = secrets.and_then(|s| s.get(pubkey)) {
            out.get_mut(..KEY_LEN)
                .ok_or(snow::Error::Dh)?
                .copy_from_slice(&secret);
            return Ok(());
        }
        let key = self.key.as_ref().ok_or(snow::Error::Dh)?;
        let peer = UnparsedPublicKey::new(&X25519, pubkey.get(..KEY_LEN).ok_or(snow::Error::Dh)?);
        // AWS-LC fails the agreement when the result is all zeros (a small-order peer point).
        agreement::agree(key, peer, snow::Error::Dh, |secret| {
            out.get_mut(..secret.len())
                .ok_or(snow::Error::Dh)?
                .copy_from_slice(secret);
            if let Some(s) = secrets {
                s.note(pubkey, secret);
            }
            Ok(())
        })
    }
}

/// Feeds snow's ephemeral-key generation from a ChaCha20 stream seeded by the injected RNG, so a
/// seeded simulation is reproducible end to end, and gives it X25519 from AWS-LC.
struct SeededResolver {
    seed: [u8; 32],
    known_static: Option<StaticKeypair>,
    secrets: Option<Arc<StaticSecrets>>,
}

impl SeededResolver {
    fn new(rng: &mut dyn CryptoRngCore, known_static: Option<&StaticKeypair>) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Self {
            seed,
            known_static: known_static.cloned(),
            secrets: None,
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
                is_static: false,
                secrets: self.secrets.clone(),
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

/// The DATA cipher suite of a session (PROTOCOL.md §4.6), chosen in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Suite {
    /// ChaCha20-Poly1305 (RFC 8439): every implementation supports it.
    ChaCha20Poly1305,
    /// AES-256-GCM: chosen when both ends have AES hardware.
    Aes256Gcm,
}

/// Suite bit of ChaCha20-Poly1305 in INIT's `suites` byte; always set.
pub const SUITE_CHACHA20_POLY1305: u8 = 0x01;
/// Suite bit of AES-256-GCM in INIT's `suites` byte.
pub const SUITE_AES_256_GCM: u8 = 0x02;

impl Suite {
    /// The suite's identifier in ACCEPT's payload.
    pub fn id(self) -> u8 {
        match self {
            Suite::ChaCha20Poly1305 => SUITE_CHACHA20_POLY1305,
            Suite::Aes256Gcm => SUITE_AES_256_GCM,
        }
    }

    /// The suite an ACCEPT names, if it is one of ours.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            SUITE_CHACHA20_POLY1305 => Some(Suite::ChaCha20Poly1305),
            SUITE_AES_256_GCM => Some(Suite::Aes256Gcm),
            _ => None,
        }
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Suite::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
            Suite::Aes256Gcm => &aead::AES_256_GCM,
        }
    }
}

/// Which DATA suites a side offers (client) or accepts (server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CipherPolicy {
    /// AES-256-GCM when this machine has AES instructions (x86-64 AES-NI and PCLMULQDQ,
    /// aarch64 AES and PMULL), ChaCha20-Poly1305 otherwise. The default.
    #[default]
    Auto,
    /// ChaCha20-Poly1305 only.
    ChaCha20Poly1305,
    /// Offer and accept AES-256-GCM whatever the hardware (for tests and benchmarks).
    PreferAes,
}

impl CipherPolicy {
    /// Whether this side offers (client) or takes (server) AES-256-GCM.
    pub fn wants_aes(self) -> bool {
        match self {
            CipherPolicy::Auto => aes_hardware(),
            CipherPolicy::ChaCha20Poly1305 => false,
            CipherPolicy::PreferAes => true,
        }
    }

    /// INIT's `suites` byte under this policy.
    pub fn offer(self) -> u8 {
        SUITE_CHACHA20_POLY1305
            | if self.wants_aes() {
                SUITE_AES_256_GCM
            } else {
                0
            }
    }

    /// The server's choice from a client's `suites` byte: AES-256-GCM when both want it,
    /// ChaCha20-Poly1305 otherwise. None when the client offered neither.
    pub fn choose(self, offered: u8) -> Option<Suite> {
        if offered & SUITE_AES_256_GCM != 0 && self.wants_aes() {
            Some(Suite::Aes256Gcm)
        } else if offered & SUITE_CHACHA20_POLY1305 != 0 {
            Some(Suite::ChaCha20Poly1305)
        } else {
            None
        }
    }
}

/// Whether this CPU has the instructions that make AES-GCM fast and constant-time.
pub fn aes_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Bytes of INIT's Noise payload: client session id (4) ‖ suites (1).
pub const INIT_PAYLOAD_LEN: usize = 5;
/// Bytes of ACCEPT's Noise payload: server session id (4) ‖ suite (1).
pub const ACCEPT_PAYLOAD_LEN: usize = 5;

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
    /// Starts IK towards `server` as `client` (its static key) and writes message 1 carrying
    /// `payload` into `out`.
    pub fn start(
        client: &StaticKeypair,
        server: &PublicKey,
        prologue: &[u8; 32],
        payload: &[u8],
        out: &mut [u8],
        rng: &mut dyn CryptoRngCore,
    ) -> Result<(Self, usize), CryptoError> {
        let mut hs = snow::Builder::with_resolver(
            params(),
            Box::new(SeededResolver::new(rng, Some(client))),
        )
        .local_private_key(&client.private)?
        .remote_public_key(&server.0)?
        .prologue(prologue)?
        .build_initiator()?;
        let n = hs.write_message(payload, out)?;
        Ok((Self { hs }, n))
    }

    /// Reads message 2, writing its payload into `payload`; returns the payload length and the
    /// raw split keys: `k1` (client → server), `k2` (server → client).
    pub fn finish(
        mut self,
        msg2: &[u8],
        payload: &mut [u8],
    ) -> Result<(usize, RawSplit), CryptoError> {
        let n = self.hs.read_message(msg2, payload)?;
        let (i2r, r2i) = self.hs.dangerously_get_raw_split();
        Ok((n, RawSplit { k1: i2r, k2: r2i }))
    }
}

/// The two raw outputs of Noise `Split()`: `k1` encrypts client → server, `k2` server →
/// client. Erased when dropped.
pub struct RawSplit {
    /// Client → server.
    pub k1: [u8; 32],
    /// Server → client.
    pub k2: [u8; 32],
}

impl Drop for RawSplit {
    fn drop(&mut self) {
        self.k1.zeroize();
        self.k2.zeroize();
    }
}

impl std::fmt::Debug for RawSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawSplit(<redacted>)")
    }
}

/// What the server decided after reading message 1 and learning the client's static key.
pub enum Verdict {
    /// Go on: write message 2 with this payload.
    Accept([u8; ACCEPT_PAYLOAD_LEN]),
    /// Stop here: no message 2, nothing kept.
    Refuse,
}

/// What [`respond`] gives back.
pub enum Response {
    /// Message 1 authenticated, the client's key is `client`, and message 2 (of `msg2_len`
    /// bytes) was written with these keys.
    Accepted {
        /// The client's static key, authenticated by message 1.
        client: PublicKey,
        /// Length of message 2 in the caller's buffer.
        msg2_len: usize,
        /// The raw split keys.
        split: RawSplit,
    },
    /// Message 1 authenticated, but the verdict was [`Verdict::Refuse`].
    Refused {
        /// The client's static key.
        client: PublicKey,
    },
}

/// The server's side: reads message 1 (payload into `payload1`), learns and authenticates the
/// client's static key, asks `verdict` what to do with it, and if accepted writes message 2.
pub fn respond(
    keypair: &StaticKeypair,
    prologue: &[u8; 32],
    msg1: &[u8],
    payload1: &mut [u8],
    rng: &mut dyn CryptoRngCore,
    verdict: impl FnOnce(&PublicKey, &[u8]) -> Verdict,
    msg2: &mut [u8],
) -> Result<Response, CryptoError> {
    respond_with(keypair, None, prologue, msg1, payload1, rng, verdict, msg2)
}

/// [`respond`], reusing the static-static secret of a client accepted before from `secrets` and
/// keeping this one's if it is accepted.
#[allow(clippy::too_many_arguments)]
pub fn respond_with(
    keypair: &StaticKeypair,
    secrets: Option<&Arc<StaticSecrets>>,
    prologue: &[u8; 32],
    msg1: &[u8],
    payload1: &mut [u8],
    rng: &mut dyn CryptoRngCore,
    verdict: impl FnOnce(&PublicKey, &[u8]) -> Verdict,
    msg2: &mut [u8],
) -> Result<Response, CryptoError> {
    let result = respond_inner(
        keypair, secrets, prologue, msg1, payload1, rng, verdict, msg2,
    );
    if let Some(s) = secrets {
        if let Ok(Response::Accepted { client, .. }) = &result {
            s.keep(client);
        }
        s.forget_recent();
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn respond_inner(
    keypair: &StaticKeypair,
    secrets: Option<&Arc<StaticSecrets>>,
    prologue: &[u8; 32],
    msg1: &[u8],
    payload1: &mut [u8],
    rng: &mut dyn CryptoRngCore,
    verdict: impl FnOnce(&PublicKey, &[u8]) -> Verdict,
    msg2: &mut [u8],
) -> Result<Response, CryptoError> {
    let mut resolver = SeededResolver::new(rng, Some(keypair));
    resolver.secrets = secrets.cloned();
    let mut hs = snow::Builder::with_resolver(params(), Box::new(resolver))
        .local_private_key(&keypair.private)?
        .prologue(prologue)?
        .build_responder()?;
    let n1 = hs.read_message(msg1, payload1)?;
    let client = hs
        .get_remote_static()
        .and_then(|k| <[u8; KEY_LEN]>::try_from(k).ok())
        .map(PublicKey)
        .ok_or(CryptoError::Handshake(snow::Error::Dh))?;
    match verdict(&client, &payload1[..n1]) {
        Verdict::Refuse => Ok(Response::Refused { client }),
        Verdict::Accept(p2) => {
            let msg2_len = hs.write_message(&p2, msg2)?;
            let (i2r, r2i) = hs.dangerously_get_raw_split();
            Ok(Response::Accepted {
                client,
                msg2_len,
                split: RawSplit { k1: i2r, k2: r2i },
            })
        }
    }
}

/// One direction's DATA key at one key epoch (PROTOCOL.md §4.6, §5.5).
///
/// ChaCha20-Poly1305 keys are kept raw (32 bytes) and bound for each seal or open, which for
/// ChaCha20 is a copy; AES-256-GCM keys are expanded once (the key schedule and the GHASH table
/// are too costly per packet) and boxed, so that a ChaCha20 session does not carry their size.
/// The raw key is erased on drop.
pub struct DirectionKey {
    suite: Suite,
    raw: [u8; 32],
    expanded: Option<Box<aead::LessSafeKey>>,
}

impl std::fmt::Debug for DirectionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DirectionKey({:?}, <redacted>)", self.suite)
    }
}

impl Drop for DirectionKey {
    fn drop(&mut self) {
        self.raw.zeroize();
    }
}

/// The label of the key update KDF (PROTOCOL.md §5.5).
pub const KEY_UPDATE_LABEL: &[u8] = b"volley/2 key update";

impl DirectionKey {
    /// The key `raw` for `suite`.
    pub fn new(suite: Suite, raw: &[u8; 32]) -> Self {
        let expanded = match suite {
            Suite::ChaCha20Poly1305 => None,
            Suite::Aes256Gcm => Some(Box::new(bind(suite.algorithm(), raw))),
        };
        Self {
            suite,
            raw: *raw,
            expanded,
        }
    }

    /// The suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The next epoch's key: HKDF-Expand(PRK = this key, info = "volley/2 key update", 32),
    /// i.e. HMAC-SHA256(key, "volley/2 key update" ‖ 0x01).
    pub fn next(&self) -> Self {
        self.advance(1)
    }

    /// The key `steps` epochs on (`steps` ≥ 1), expanded once at the end.
    pub fn advance(&self, steps: u32) -> Self {
        let mut raw = self.raw;
        for _ in 0..steps.max(1) {
            let mac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &raw);
            let mut ctx = ring::hmac::Context::with_key(&mac);
            ctx.update(KEY_UPDATE_LABEL);
            ctx.update(&[1]);
            raw.copy_from_slice(ctx.sign().as_ref());
        }
        let next = Self::new(self.suite, &raw);
        raw.zeroize();
        next
    }

    fn with<R>(&self, f: impl FnOnce(&aead::LessSafeKey) -> R) -> R {
        match &self.expanded {
            Some(k) => f(k),
            None => f(&bind(self.suite.algorithm(), &self.raw)),
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
        let tag = self
            .with(|k| {
                k.seal_in_place_separate_tag(nonce(counter), Aad::from(aad), &mut in_out[..len])
            })
            .map_err(|_| CryptoError::Open)?;
        in_out[len..len + crate::AEAD_TAG_LEN].copy_from_slice(tag.as_ref());
        Ok(len + crate::AEAD_TAG_LEN)
    }

    /// Decrypts ciphertext‖tag in place; returns the plaintext.
    pub fn open<'b>(
        &self,
        counter: u64,
        aad: &[u8],
        in_out: &'b mut [u8],
    ) -> Result<&'b mut [u8], CryptoError> {
        self.with(|k| k.open_in_place(nonce(counter), Aad::from(aad), in_out))
            .map_err(|_| CryptoError::Open)
    }
}

/// An established session's keys at the handshake: the epoch-0 key each way and the stream
/// keys (§13.1, derived once from the epoch-0 keys, so that rekeying DATA leaves streams
/// alone).
pub struct SessionKeys {
    /// Encrypts what this side sends (epoch 0).
    pub seal: DirectionKey,
    /// Decrypts what this side receives (epoch 0).
    pub open: DirectionKey,
    /// The session's stream keys.
    pub stream: crate::stream::StreamKeys,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(<redacted>)")
    }
}

impl SessionKeys {
    /// The keys of a side in `role` from the handshake's split, for `suite`.
    pub fn from_split(split: &RawSplit, suite: Suite, role: crate::stream::Role) -> Self {
        let stream = crate::stream::StreamKeys::derive(&split.k1, &split.k2);
        let (seal, open) = match role {
            crate::stream::Role::Client => (&split.k1, &split.k2),
            crate::stream::Role::Server => (&split.k2, &split.k1),
        };
        Self {
            seal: DirectionKey::new(suite, seal),
            open: DirectionKey::new(suite, open),
            stream,
        }
    }

    /// `seal` encrypts what this side sends; `open` decrypts what it receives. The stream keys
    /// are derived as for a client (seal = k1).
    pub fn new(suite: Suite, seal: &[u8; 32], open: &[u8; 32]) -> Self {
        Self {
            seal: DirectionKey::new(suite, seal),
            open: DirectionKey::new(suite, open),
            stream: crate::stream::StreamKeys::derive(seal, open),
        }
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

    /// Runs IK between `client` and `server` (as the client believes it is `server_pub`)
    /// under `pro`, the server deciding by `verdict`.
    fn run_ik(
        client: &StaticKeypair,
        server_pub: &PublicKey,
        server: &StaticKeypair,
        pro: [u8; 32],
        verdict: impl FnOnce(&PublicKey, &[u8]) -> Verdict,
        rng: &mut ChaCha20Rng,
    ) -> Result<(Response, Option<InitiatorHandshake>, Vec<u8>), CryptoError> {
        let mut m1 = [0u8; 256];
        let (init, n1) =
            InitiatorHandshake::start(client, server_pub, &pro, &[1, 2, 3, 4, 5], &mut m1, rng)?;
        let mut p1 = [0u8; 256];
        let mut m2 = [0u8; 256];
        let r = respond(server, &pro, &m1[..n1], &mut p1, rng, verdict, &mut m2)?;
        let n2 = match &r {
            Response::Accepted { msg2_len, .. } => *msg2_len,
            Response::Refused { .. } => 0,
        };
        Ok((r, Some(init), m2[..n2].to_vec()))
    }

    #[test]
    fn a1_ik_authenticates_the_client_key_and_derives_matching_keys() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let server = StaticKeypair::generate(&mut rng);
        let client = StaticKeypair::generate(&mut rng);
        let mut seen = None;
        let (r, init, m2) = run_ik(
            &client,
            &server.public(),
            &server,
            [3; 32],
            |k, p| {
                seen = Some((*k, p.to_vec()));
                Verdict::Accept([9, 9, 9, 9, 1])
            },
            &mut rng,
        )
        .unwrap();
        assert_eq!(seen, Some((client.public(), vec![1, 2, 3, 4, 5])));
        let Response::Accepted {
            client: k, split, ..
        } = r
        else {
            panic!("refused")
        };
        assert_eq!(k, client.public());
        // 101-byte message 1 (e, encrypted s, payload) and 53-byte message 2.
        assert_eq!(m2.len(), 32 + 5 + 16);
        let mut p2 = [0u8; 256];
        let (np2, csplit) = init.unwrap().finish(&m2, &mut p2).unwrap();
        assert_eq!(&p2[..np2], &[9, 9, 9, 9, 1]);
        assert_eq!((csplit.k1, csplit.k2), (split.k1, split.k2));
        for suite in [Suite::ChaCha20Poly1305, Suite::Aes256Gcm] {
            let c = SessionKeys::from_split(&csplit, suite, crate::stream::Role::Client);
            let s = SessionKeys::from_split(&split, suite, crate::stream::Role::Server);
            let mut buf = [0u8; 64];
            buf[..5].copy_from_slice(b"hello");
            let n = c.seal.seal(7, b"hdr", &mut buf, 5).unwrap();
            assert_eq!(s.open.open(7, b"hdr", &mut buf[..n]).unwrap(), b"hello");
            let n = s.seal.seal(8, b"hdr", &mut buf, 2).unwrap();
            assert!(
                s.open.open(8, b"hdr", &mut buf[..n]).is_err(),
                "directions differ"
            );
        }
    }

    #[test]
    fn a1_a_known_clients_static_secret_is_reused_and_a_refused_ones_is_not_kept() {
        let mut rng = ChaCha20Rng::seed_from_u64(13);
        let server = StaticKeypair::generate(&mut rng);
        let (client, stranger) = (
            StaticKeypair::generate(&mut rng),
            StaticKeypair::generate(&mut rng),
        );
        let secrets = Arc::new(StaticSecrets::default());
        let verdict = |k: &PublicKey, _: &[u8]| {
            if *k == client.public() {
                Verdict::Accept([1, 2, 3, 4, 1])
            } else {
                Verdict::Refuse
            }
        };
        for round in 0..3 {
            for who in [&client, &stranger] {
                let mut m1 = [0u8; 256];
                let (init, n1) = InitiatorHandshake::start(
                    who,
                    &server.public(),
                    &[0; 32],
                    &[0; 5],
                    &mut m1,
                    &mut rng,
                )
                .unwrap();
                let (mut p1, mut m2) = ([0u8; 256], [0u8; 256]);
                let r = respond_with(
                    &server,
                    Some(&secrets),
                    &[0; 32],
                    &m1[..n1],
                    &mut p1,
                    &mut rng,
                    verdict,
                    &mut m2,
                )
                .unwrap();
                match r {
                    Response::Accepted {
                        msg2_len, split, ..
                    } => {
                        // With the secret from the store (rounds 1, 2) the keys still match.
                        let (_, mine) = init.finish(&m2[..msg2_len], &mut [0u8; 256]).unwrap();
                        assert_eq!((mine.k1, mine.k2), (split.k1, split.k2), "round {round}");
                    }
                    Response::Refused { .. } => assert_eq!(who.public(), stranger.public()),
                }
            }
            assert_eq!(
                secrets.len(),
                1,
                "only the accepted client's secret is kept"
            );
        }
        secrets.retain(|k| *k != client.public());
        assert!(secrets.is_empty());
    }

    #[test]
    fn a1_a_refused_client_gets_no_message_2() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let server = StaticKeypair::generate(&mut rng);
        let client = StaticKeypair::generate(&mut rng);
        let (r, _, m2) = run_ik(
            &client,
            &server.public(),
            &server,
            [0; 32],
            |_, _| Verdict::Refuse,
            &mut rng,
        )
        .unwrap();
        assert!(matches!(r, Response::Refused { client: k } if k == client.public()));
        assert!(m2.is_empty());
    }

    #[test]
    fn wrong_prologue_or_key_fails() {
        let mut rng = ChaCha20Rng::seed_from_u64(10);
        let server = StaticKeypair::generate(&mut rng);
        let other = StaticKeypair::generate(&mut rng);
        let client = StaticKeypair::generate(&mut rng);
        let accept = |_: &PublicKey, _: &[u8]| Verdict::Accept([0; 5]);
        assert!(run_ik(&client, &other.public(), &server, [0; 32], accept, &mut rng).is_err());
        let mut m1 = [0u8; 256];
        let (_, n1) =
            InitiatorHandshake::start(&client, &server.public(), &[0; 32], &[], &mut m1, &mut rng)
                .unwrap();
        let mut p = [0u8; 256];
        let mut m2 = [0u8; 256];
        assert!(
            respond(
                &server,
                &[1; 32],
                &m1[..n1],
                &mut p,
                &mut rng,
                accept,
                &mut m2
            )
            .is_err()
        );
    }

    #[test]
    fn a6_suites_are_chosen_by_both_sides() {
        use CipherPolicy::*;
        assert_eq!(PreferAes.choose(PreferAes.offer()), Some(Suite::Aes256Gcm));
        assert_eq!(
            ChaCha20Poly1305.choose(PreferAes.offer()),
            Some(Suite::ChaCha20Poly1305)
        );
        assert_eq!(
            PreferAes.choose(ChaCha20Poly1305.offer()),
            Some(Suite::ChaCha20Poly1305)
        );
        assert_eq!(PreferAes.choose(0), None);
        assert_eq!(PreferAes.choose(SUITE_AES_256_GCM), Some(Suite::Aes256Gcm));
        assert_eq!(ChaCha20Poly1305.choose(SUITE_AES_256_GCM), None);
        assert_eq!(Auto.offer() & SUITE_AES_256_GCM != 0, aes_hardware());
    }

    #[test]
    fn a3_key_updates_form_a_chain_and_advance_skips_steps() {
        let k = DirectionKey::new(Suite::Aes256Gcm, &[5; 32]);
        let two = k.next().next();
        assert_eq!(k.advance(2).raw, two.raw);
        assert_ne!(k.next().raw, k.raw);
        let mut buf = [0u8; 32];
        let n = two.seal(1, b"", &mut buf, 3).unwrap();
        // (A failed open leaves its buffer unspecified: try each key on a copy.)
        let mut copy = buf;
        assert!(k.open(1, b"", &mut copy[..n]).is_err());
        assert!(k.advance(2).open(1, b"", &mut buf[..n]).is_ok());
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
