//! Streams: a TCP byte stream between the two proxies, encrypted and authenticated with
//! keys derived from one volley session (`docs/PROTOCOL.md` §13).
//!
//! After the race and the handshake, the client side opens a TCP connection to the server's
//! address (the same IP and port as its UDP socket) and sends a HELLO naming the session and
//! proving it holds the session's keys; the server answers with a HELLO of its own once the
//! backend is reached, and from then on each direction is a sequence of records:
//! `length (u16) ‖ AES-256-GCM(plaintext)`.
//!
//! Records use AES-256-GCM rather than DATA's ChaCha20-Poly1305: a stream is bulk, and with
//! AES instructions (x86 AES-NI/VAES, ARMv8 crypto extensions) AES-GCM seals about four times
//! as fast (10.8 against 2.6 GB/s for 32 KiB on the benchmark machine), which is the difference
//! between the proxy's crypto and its copies setting the pace. An empty record ends its direction (a
//! half-close), so a truncation by the network is told apart from an end.
//!
//! Pure codec, like the rest of the crate: no sockets. Keys come from [`StreamTicket`]s, which
//! the server endpoint and the client connection hand out for their established sessions.

use std::net::SocketAddr;

use ring::aead::{self, Aad, LessSafeKey};
use ring::hkdf;
use thiserror::Error;

use crate::AEAD_TAG_LEN;
use crate::aead::nonce;

/// The first four bytes of a stream HELLO: `VLYS`.
pub const STREAM_MAGIC: [u8; 4] = *b"VLYS";
/// The stream format version this crate speaks.
pub const STREAM_VERSION: u8 = 1;
/// Bytes in a HELLO: magic, version, session id, tag.
pub const HELLO_LEN: usize = 4 + 1 + 4 + AEAD_TAG_LEN;
/// Bytes of a record's length prefix.
pub const RECORD_HEADER_LEN: usize = 2;
/// Largest record body (ciphertext and tag), the most a u16 length says.
pub const MAX_RECORD_LEN: usize = u16::MAX as usize;
/// Largest plaintext in one record.
pub const MAX_RECORD_PLAINTEXT: usize = MAX_RECORD_LEN - AEAD_TAG_LEN;
/// A direction's records are numbered 1, 2, …; a sender stops (the stream fails) before this.
pub const MAX_STREAM_COUNTER: u64 = 1 << 60;

/// The close codes of a session ended for its stream's sake (PROTOCOL.md §13.4). Code 2 is
/// another's; these start at 3.
impl crate::session::CloseCode {
    /// The stream broke: a record that did not authenticate or came out of order, bytes after
    /// END, a truncation, a reset, a timeout while it was set up.
    pub const STREAM_BROKEN: Self = Self(3);
    /// The stream moved no byte either way for the side's idle timeout.
    pub const STREAM_IDLE: Self = Self(4);
    /// Server side: no valid stream came for the session within its wait.
    pub const NO_STREAM: Self = Self(5);
    /// Server side: the backend could not be reached for the session's stream.
    pub const BACKEND_UNREACHABLE: Self = Self(6);
}

/// Which end of a stream: the client side (it connects and speaks first) or the server side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that raced the pool and opened the session (the initiator).
    Client,
    /// The side that answered (the responder).
    Server,
}

/// Why a stream's bytes were refused. The stream is over after any of them.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamError {
    /// The HELLO did not start with [`STREAM_MAGIC`]: not a volley stream.
    #[error("not a volley stream (bad magic)")]
    BadMagic,
    /// The HELLO names a stream version this side does not speak.
    #[error("stream version {0} is not supported")]
    UnsupportedVersion(u8),
    /// A HELLO or record failed authentication: wrong session, wrong keys, forged or damaged.
    #[error("stream authentication failed")]
    Auth,
    /// A record length below the tag's 16 bytes.
    #[error("record length {0} is shorter than its tag")]
    ShortRecord(usize),
    /// The direction's counter reached [`MAX_STREAM_COUNTER`].
    #[error("stream counter exhausted")]
    CounterExhausted,
    /// A record's plaintext above [`MAX_RECORD_PLAINTEXT`], or a buffer too small for it.
    #[error("record does not fit")]
    TooLarge,
}

/// The two directions' keys of a stream, derived from a session's keys. `Debug` never shows
/// them.
#[derive(Clone)]
pub struct StreamKeys {
    client_to_server: [u8; 32],
    server_to_client: [u8; 32],
}

impl std::fmt::Debug for StreamKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamKeys(<redacted>)")
    }
}

fn expand(prk: &hkdf::Prk, info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    prk.expand(&[info], hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is within HKDF-SHA256's limit");
    out
}

fn bind(key: &[u8; 32]) -> LessSafeKey {
    crate::aead::bind(&aead::AES_256_GCM, key)
}

impl StreamKeys {
    /// Derives the stream keys from a session's DATA keys: `k1` (client → server) and `k2`
    /// (server → client), the two outputs of Noise `Split()` (§4.6).
    ///
    /// PRK = HKDF-Extract(salt = "volley/1 stream", IKM = k1 ‖ k2);
    /// client → server key = HKDF-Expand(PRK, "volley/1 stream c2s", 32);
    /// server → client key = HKDF-Expand(PRK, "volley/1 stream s2c", 32).
    pub fn derive(k1: &[u8; 32], k2: &[u8; 32]) -> Self {
        let mut ikm = [0u8; 64];
        ikm[..32].copy_from_slice(k1);
        ikm[32..].copy_from_slice(k2);
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"volley/1 stream").extract(&ikm);
        Self {
            client_to_server: expand(&prk, b"volley/1 stream c2s"),
            server_to_client: expand(&prk, b"volley/1 stream s2c"),
        }
    }

    fn key_from(&self, sender: Role) -> &[u8; 32] {
        match sender {
            Role::Client => &self.client_to_server,
            Role::Server => &self.server_to_client,
        }
    }

    /// The HELLO that `sender` sends for session `session_id` (the id the server gave the
    /// session, the receiver id of the client's DATA): magic, version, id, and the tag of an
    /// empty plaintext sealed with the sender's key at counter 0 over those 9 bytes.
    pub fn hello(&self, sender: Role, session_id: u32) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[..4].copy_from_slice(&STREAM_MAGIC);
        out[4] = STREAM_VERSION;
        out[5..9].copy_from_slice(&session_id.to_be_bytes());
        let tag = bind(self.key_from(sender))
            .seal_in_place_separate_tag(nonce(0), Aad::from(&out[..9]), &mut [])
            .expect("an empty plaintext always seals");
        out[9..].copy_from_slice(tag.as_ref());
        out
    }

    /// Checks a HELLO from `sender` for `session_id` (constant-time tag check).
    pub fn check_hello(
        &self,
        sender: Role,
        session_id: u32,
        hello: &[u8; HELLO_LEN],
    ) -> Result<(), StreamError> {
        if hello_session(hello)? != session_id {
            return Err(StreamError::Auth);
        }
        let mut tag = [0u8; AEAD_TAG_LEN];
        tag.copy_from_slice(&hello[9..]);
        bind(self.key_from(sender))
            .open_in_place(nonce(0), Aad::from(&hello[..9]), &mut tag)
            .map(|_| ())
            .map_err(|_| StreamError::Auth)
    }

    /// The sealer for what `me` sends (records numbered from 1: the HELLO used 0).
    pub fn sealer(&self, me: Role) -> RecordSealer {
        RecordSealer {
            key: bind(self.key_from(me)),
            counter: 1,
        }
    }

    /// The opener for what `me` receives from the other side.
    pub fn opener(&self, me: Role) -> RecordOpener {
        let peer = match me {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        };
        RecordOpener {
            key: bind(self.key_from(peer)),
            counter: 1,
        }
    }
}

/// The session id a HELLO names, after checking its magic and version; the tag is checked by
/// [`StreamKeys::check_hello`] once the session's keys are found.
pub fn hello_session(hello: &[u8; HELLO_LEN]) -> Result<u32, StreamError> {
    if hello[..4] != STREAM_MAGIC {
        return Err(StreamError::BadMagic);
    }
    if hello[4] != STREAM_VERSION {
        return Err(StreamError::UnsupportedVersion(hello[4]));
    }
    Ok(u32::from_be_bytes([hello[5], hello[6], hello[7], hello[8]]))
}

/// What a side needs to open a stream for one established session.
#[derive(Debug, Clone)]
pub struct StreamTicket {
    /// The id the server gave the session (the receiver id of the client's DATA).
    pub session_id: u32,
    /// The peer: for the client, the server's address (where the stream connects); for the
    /// server, the client's.
    pub peer: SocketAddr,
    /// The stream keys.
    pub keys: StreamKeys,
}

/// Seals one direction's records, numbering them.
pub struct RecordSealer {
    key: LessSafeKey,
    counter: u64,
}

impl std::fmt::Debug for RecordSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSealer")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl RecordSealer {
    /// Seals the `len` plaintext bytes at `buf[RECORD_HEADER_LEN..]` into a whole record in
    /// place: writes the length prefix and appends the tag. Returns the record's size
    /// (`RECORD_HEADER_LEN + len + AEAD_TAG_LEN`). `len` 0 is the END record.
    pub fn seal(&mut self, buf: &mut [u8], len: usize) -> Result<usize, StreamError> {
        if len > MAX_RECORD_PLAINTEXT || buf.len() < RECORD_HEADER_LEN + len + AEAD_TAG_LEN {
            return Err(StreamError::TooLarge);
        }
        if self.counter >= MAX_STREAM_COUNTER {
            return Err(StreamError::CounterExhausted);
        }
        let body = len + AEAD_TAG_LEN;
        let header = (body as u16).to_be_bytes();
        buf[..RECORD_HEADER_LEN].copy_from_slice(&header);
        let (_, rest) = buf.split_at_mut(RECORD_HEADER_LEN);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(self.counter), Aad::from(&header), &mut rest[..len])
            .map_err(|_| StreamError::TooLarge)?;
        rest[len..body].copy_from_slice(tag.as_ref());
        self.counter += 1;
        Ok(RECORD_HEADER_LEN + body)
    }

    /// The counter the next record gets.
    pub fn next_counter(&self) -> u64 {
        self.counter
    }
}

/// Opens one direction's records, in order.
pub struct RecordOpener {
    key: LessSafeKey,
    counter: u64,
}

impl std::fmt::Debug for RecordOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordOpener")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl RecordOpener {
    /// The body length a record's prefix announces (tag included), refused below the tag's
    /// size.
    pub fn body_len(header: [u8; RECORD_HEADER_LEN]) -> Result<usize, StreamError> {
        let len = u16::from_be_bytes(header) as usize;
        if len < AEAD_TAG_LEN {
            return Err(StreamError::ShortRecord(len));
        }
        Ok(len)
    }

    /// Opens a record in place: `header` is its length prefix, `body` the bytes it announced.
    /// Returns the plaintext; empty means the END record.
    pub fn open<'b>(
        &mut self,
        header: [u8; RECORD_HEADER_LEN],
        body: &'b mut [u8],
    ) -> Result<&'b mut [u8], StreamError> {
        if Self::body_len(header)? != body.len() {
            return Err(StreamError::Auth);
        }
        if self.counter >= MAX_STREAM_COUNTER {
            return Err(StreamError::CounterExhausted);
        }
        let plain = self
            .key
            .open_in_place(nonce(self.counter), Aad::from(&header), body)
            .map_err(|_| StreamError::Auth)?;
        self.counter += 1;
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> StreamKeys {
        StreamKeys::derive(&[1; 32], &[2; 32])
    }

    #[test]
    fn hello_checks_out_only_with_the_right_keys_sender_and_session() {
        let k = keys();
        let h = k.hello(Role::Client, 7);
        assert_eq!(hello_session(&h), Ok(7));
        assert_eq!(k.check_hello(Role::Client, 7, &h), Ok(()));
        // The server's key, another session, other keys, a flipped bit: all refused.
        assert_eq!(k.check_hello(Role::Server, 7, &h), Err(StreamError::Auth));
        assert_eq!(k.check_hello(Role::Client, 8, &h), Err(StreamError::Auth));
        let other = StreamKeys::derive(&[1; 32], &[3; 32]);
        assert_eq!(
            other.check_hello(Role::Client, 7, &h),
            Err(StreamError::Auth)
        );
        let mut bad = h;
        bad[20] ^= 1;
        assert_eq!(k.check_hello(Role::Client, 7, &bad), Err(StreamError::Auth));
        let mut bad = h;
        bad[0] = b'X';
        assert_eq!(hello_session(&bad), Err(StreamError::BadMagic));
        let mut bad = h;
        bad[4] = 2;
        assert_eq!(hello_session(&bad), Err(StreamError::UnsupportedVersion(2)));
    }

    #[test]
    fn records_round_trip_in_order_and_refuse_reorder_tamper_and_truncation() {
        let k = keys();
        let mut tx = k.sealer(Role::Client);
        let mut rx = k.opener(Role::Server);
        let mut wire = Vec::new();
        for msg in [&b"GET / HTTP/1.1\r\n"[..], b"", b"x"] {
            let mut buf = vec![0u8; RECORD_HEADER_LEN + msg.len() + AEAD_TAG_LEN];
            buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + msg.len()].copy_from_slice(msg);
            let n = tx.seal(&mut buf, msg.len()).unwrap();
            assert_eq!(n, buf.len());
            wire.push(buf);
        }
        // Out of order: the counter does not match.
        let mut third = wire[2].clone();
        let h = [third[0], third[1]];
        assert_eq!(
            rx.open(h, &mut third[RECORD_HEADER_LEN..]),
            Err(StreamError::Auth)
        );
        for (i, rec) in wire.iter().enumerate() {
            let mut rec = rec.clone();
            let h = [rec[0], rec[1]];
            let plain = rx.open(h, &mut rec[RECORD_HEADER_LEN..]).unwrap().to_vec();
            assert_eq!(plain.len(), [16, 0, 1][i]);
        }
        // Tampered length or body.
        let mut tx = k.sealer(Role::Server);
        let mut rx = k.opener(Role::Client);
        let mut buf = vec![0u8; 2 + 3 + 16];
        buf[2..5].copy_from_slice(b"abc");
        tx.seal(&mut buf, 3).unwrap();
        let mut bad = buf.clone();
        bad[4] ^= 0x80;
        assert_eq!(
            rx.open([bad[0], bad[1]], &mut bad[2..]),
            Err(StreamError::Auth)
        );
        assert_eq!(
            rx.open([0, 20], &mut buf.clone()[2..]),
            Err(StreamError::Auth)
        );
        assert_eq!(
            RecordOpener::body_len([0, 15]),
            Err(StreamError::ShortRecord(15))
        );
        // The client's opener cannot read what the client sealed (directions have own keys).
        let mut tx = k.sealer(Role::Client);
        let mut rx = k.opener(Role::Client);
        let mut buf = vec![0u8; 2 + 1 + 16];
        tx.seal(&mut buf, 1).unwrap();
        assert_eq!(
            rx.open([buf[0], buf[1]], &mut buf[2..]),
            Err(StreamError::Auth)
        );
        // Too large for one record.
        let mut big = vec![0u8; MAX_RECORD_LEN + 2 + 16];
        assert_eq!(
            tx.seal(&mut big, MAX_RECORD_PLAINTEXT + 1),
            Err(StreamError::TooLarge)
        );
        assert!(tx.seal(&mut big, MAX_RECORD_PLAINTEXT).is_ok());
    }
}
