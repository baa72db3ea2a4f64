//! The Noise IK handshake through `snow`, with X25519 from AWS-LC and the server's store of
//! static-static secrets (PROTOCOL.md §4.5).

use std::sync::Arc;

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use rand_core::{CryptoRngCore, RngCore, SeedableRng};
use snow::resolvers::{CryptoResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::Zeroize;

use super::{CryptoError, KEY_LEN, PublicKey, StaticKeypair, params, x25519_key};

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
pub(super) struct SeededResolver {
    seed: [u8; 32],
    known_static: Option<StaticKeypair>,
    secrets: Option<Arc<StaticSecrets>>,
}

impl SeededResolver {
    pub(super) fn new(rng: &mut dyn CryptoRngCore, known_static: Option<&StaticKeypair>) -> Self {
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
    let result = (|| -> Result<Response, CryptoError> {
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
    })();
    if let Some(s) = secrets {
        if let Ok(Response::Accepted { client, .. }) = &result {
            s.keep(client);
        }
        s.forget_recent();
    }
    result
}
