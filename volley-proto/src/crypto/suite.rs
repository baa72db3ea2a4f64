//! The DATA cipher suites, one direction's key at one epoch and its successor, and a session's
//! keys at the handshake (PROTOCOL.md §4.6, §5.5).

use ring::aead::{self, Aad};
use zeroize::Zeroize;

use super::{CryptoError, RawSplit};
use crate::aead::{bind, nonce};

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

/// One direction's DATA key at one key epoch (PROTOCOL.md §4.6, §5.5).
///
/// ChaCha20-Poly1305 keys are kept raw (32 bytes) and bound for each seal or open, which for
/// ChaCha20 is a copy; AES-256-GCM keys are expanded once (the key schedule and the GHASH table
/// are too costly per packet) and boxed, so that a ChaCha20 session does not carry their size.
/// The raw key is erased on drop.
pub struct DirectionKey {
    suite: Suite,
    pub(super) raw: [u8; 32],
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
