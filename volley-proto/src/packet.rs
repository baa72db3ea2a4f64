//! The v2 wire messages: decoding borrows from the datagram, encoding writes into a caller's slice.
//!
//! Layouts, limits and the meaning of each field are normative in `docs/PROTOCOL.md` §3; this module
//! is their one implementation. Decoding never panics and never allocates.

use crate::coding::{DecodeError, EncodeError, Reader, Writer};
use crate::{
    AEAD_TAG_LEN, DATA_HEADER_LEN, KEY_ID_LEN, MAX_COOKIE_LEN, MAX_DATAGRAM_LEN,
    MAX_INIT_NOISE_LEN, MAX_NOISE_LEN, MAX_SERVICE_LEN, PROBE_MIN_LEN, TAG_LEN, VERSION,
};

/// Message type bytes (the second byte of every datagram).
pub mod kind {
    /// PROBE: client → every server of the pool.
    pub const PROBE: u8 = 0x01;
    /// OFFER: server → client, the answer to a PROBE.
    pub const OFFER: u8 = 0x02;
    /// INIT: client → selected server, session initiation carrying the cookie.
    pub const INIT: u8 = 0x03;
    /// ACCEPT: server → client, session acceptance carrying the responder's key share.
    pub const ACCEPT: u8 = 0x04;
    /// COOKIE_CHANGE: server → client, a fresh cookie for a client whose address changed.
    pub const COOKIE_CHANGE: u8 = 0x05;
    /// REDIRECT: server → client, "not here": a refusal naming up to 8 other servers (possibly none).
    pub const REDIRECT: u8 = 0x06;
    /// DATA: an encrypted session packet, either direction. The type byte is `0x10 | phase`:
    /// its low four bits carry the sender's key phase (PROTOCOL.md §3.8, §5.5), so DATA is
    /// every type from 0x10 to 0x1F.
    pub const DATA: u8 = 0x10;
    /// Mask of the key phase in a DATA type byte.
    pub const KEY_PHASE_MASK: u8 = 0x0F;
}

/// A race tag: 16 random bytes naming one probe attempt.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag(pub [u8; TAG_LEN]);

impl std::fmt::Debug for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tag({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// Identifies a server static key: the first 8 bytes of SHA-256("volley/1 key id" ‖ public key).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

/// A server's self-reported load, carried in every OFFER.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct LoadHint {
    /// Requests in flight at the server (plus offers outstanding) when it wrote the offer.
    pub in_flight: u32,
    /// The server's capacity (requests it serves at once); 0 means "not configured / unbounded".
    pub capacity: u32,
    /// The server's estimate of how long one more request would take from arrival to
    /// completion, in microseconds; 0 means "no estimate".
    pub expected_us: u32,
}

impl LoadHint {
    /// The expected completion time, if the server gave one.
    pub fn expected(&self) -> Option<std::time::Duration> {
        (self.expected_us > 0)
            .then(|| std::time::Duration::from_micros(u64::from(self.expected_us)))
    }
}

/// PROBE: asks every server of a pool for an offer for `service`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Probe<'a> {
    /// The attempt's tag.
    pub tag: Tag,
    /// The requested service name (1..=64 bytes).
    pub service: &'a [u8],
}

/// OFFER: a server's stateless answer to a PROBE.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Offer<'a> {
    /// The tag of the PROBE it answers.
    pub tag: Tag,
    /// Which static key the server will prove in the handshake.
    pub server_key_id: KeyId,
    /// The server's load when it answered.
    pub load: LoadHint,
    /// How long the server held the PROBE before writing this OFFER, in microseconds (the
    /// answer policy's delay, §7.2; 0 when answered at once). A client subtracts it from the
    /// offer's answer time to get the path's round trip.
    pub held_us: u32,
    /// Opaque to the client; presented back in INIT.
    pub cookie: &'a [u8],
}

/// INIT: the session initiation sent to the selected server only.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Init<'a> {
    /// The tag of the race that selected this server.
    pub tag: Tag,
    /// The service asked for in the PROBE.
    pub service: &'a [u8],
    /// The cookie from the OFFER (or COOKIE_CHANGE).
    pub cookie: &'a [u8],
    /// Noise IK message 1 (`-> e, es, s, ss`), its payload possibly carrying early data.
    pub noise: &'a [u8],
}

/// ACCEPT: the server's acceptance, carrying its key share.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Accept<'a> {
    /// The client's session id (from INIT's encrypted payload), for routing at the client.
    pub receiver_id: u32,
    /// Noise IK message 2 (`<- e, ee, se`).
    pub noise: &'a [u8],
}

/// COOKIE_CHANGE: a genuine cookie came from another address; here is one for the new address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CookieChange<'a> {
    /// The tag of the INIT that carried the old cookie.
    pub tag: Tag,
    /// The new cookie.
    pub cookie: &'a [u8],
}

/// REDIRECT: the server will not serve this race; `servers` may name others to try (0..=8).
///
/// Sent today in answer to an INIT whose cookie verified but which the server refuses because it
/// is at capacity or under load, with no addresses: the client re-races the rest of its pool at
/// once instead of waiting out its handshake timeout.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Redirect<'a> {
    /// The tag of the race (PROBE or INIT) being refused.
    pub tag: Tag,
    /// Concatenated 18-byte addresses (16-byte IPv6 or IPv4-mapped, big-endian port).
    pub servers: &'a [u8],
}

impl Redirect<'_> {
    /// Bytes of a REDIRECT naming no address: version, type, tag, count.
    pub const HEADER_LEN: usize = 19;

    /// How many addresses it names.
    pub fn server_count(&self) -> usize {
        self.servers.len() / REDIRECT_ADDR_LEN
    }

    /// The addresses it names.
    pub fn servers(&self) -> impl Iterator<Item = std::net::SocketAddr> + '_ {
        self.servers.chunks_exact(REDIRECT_ADDR_LEN).map(|c| {
            let mut a = [0u8; REDIRECT_ADDR_LEN];
            a.copy_from_slice(c);
            crate::util::decode_addr(&a)
        })
    }
}

/// Bytes of one address in a REDIRECT.
pub const REDIRECT_ADDR_LEN: usize = 18;
/// Most addresses one REDIRECT names.
pub const MAX_REDIRECT_ADDRS: usize = 8;

/// The cleartext header of a DATA packet (authenticated as AEAD associated data).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DataHeader {
    /// The session id the receiver chose.
    pub receiver_id: u32,
    /// The sender's packet counter, which is also the AEAD nonce.
    pub counter: u64,
    /// The sender's key epoch modulo 16 (the low four bits of the type byte, §5.5).
    pub key_phase: u8,
}

/// Any decoded datagram.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Packet<'a> {
    /// See [`Probe`].
    Probe(Probe<'a>),
    /// See [`Offer`].
    Offer(Offer<'a>),
    /// See [`Init`].
    Init(Init<'a>),
    /// See [`Accept`].
    Accept(Accept<'a>),
    /// See [`CookieChange`].
    CookieChange(CookieChange<'a>),
    /// See [`Redirect`].
    Redirect(Redirect<'a>),
    /// A DATA header and its ciphertext (payload and AEAD tag).
    Data(DataHeader, &'a [u8]),
}

impl<'a> Packet<'a> {
    /// Decodes one datagram. Limits: [`MAX_DATAGRAM_LEN`] overall, [`PROBE_MIN_LEN`] for probes,
    /// and each field's own limit; trailing bytes are an error except a PROBE's padding.
    pub fn decode(datagram: &'a [u8]) -> Result<Self, DecodeError> {
        if datagram.len() > MAX_DATAGRAM_LEN {
            return Err(DecodeError::TooLong);
        }
        let mut r = Reader::new(datagram);
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let ty = r.u8()?;
        let packet = match ty {
            kind::PROBE => {
                if datagram.len() < PROBE_MIN_LEN {
                    return Err(DecodeError::ProbeTooShort);
                }
                let tag = Tag(r.array()?);
                let service = r.vec8(1, MAX_SERVICE_LEN)?;
                // The rest is padding; its content is ignored.
                return Ok(Packet::Probe(Probe { tag, service }));
            }
            kind::OFFER => Packet::Offer(Offer {
                tag: Tag(r.array()?),
                server_key_id: KeyId(r.array()?),
                load: LoadHint {
                    in_flight: r.u32()?,
                    capacity: r.u32()?,
                    expected_us: r.u32()?,
                },
                held_us: r.u32()?,
                cookie: r.vec8(1, MAX_COOKIE_LEN)?,
            }),
            kind::INIT => Packet::Init(Init {
                tag: Tag(r.array()?),
                service: r.vec8(1, MAX_SERVICE_LEN)?,
                cookie: r.vec8(1, MAX_COOKIE_LEN)?,
                noise: r.vec16(1, MAX_INIT_NOISE_LEN)?,
            }),
            kind::ACCEPT => Packet::Accept(Accept {
                receiver_id: r.u32()?,
                noise: r.vec16(1, MAX_NOISE_LEN)?,
            }),
            kind::COOKIE_CHANGE => Packet::CookieChange(CookieChange {
                tag: Tag(r.array()?),
                cookie: r.vec8(1, MAX_COOKIE_LEN)?,
            }),
            kind::REDIRECT => {
                let tag = Tag(r.array()?);
                let count = usize::from(r.u8()?);
                if count > MAX_REDIRECT_ADDRS {
                    return Err(DecodeError::BadLength);
                }
                Packet::Redirect(Redirect {
                    tag,
                    servers: r.bytes(count * REDIRECT_ADDR_LEN)?,
                })
            }
            t if t & !kind::KEY_PHASE_MASK == kind::DATA => {
                let header = DataHeader {
                    receiver_id: r.u32()?,
                    counter: r.u64()?,
                    key_phase: t & kind::KEY_PHASE_MASK,
                };
                let ciphertext = r.rest();
                // A frame type byte plus the AEAD tag at the least.
                if ciphertext.len() < 1 + AEAD_TAG_LEN {
                    return Err(DecodeError::Truncated);
                }
                return Ok(Packet::Data(header, ciphertext));
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(packet)
    }
}

fn header(w: &mut Writer<'_>, ty: u8) -> Result<(), EncodeError> {
    w.u8(VERSION)?;
    w.u8(ty)
}

impl Probe<'_> {
    /// Writes the probe padded with zeros to `padded_len` (at least [`PROBE_MIN_LEN`]).
    pub fn encode(&self, buf: &mut [u8], padded_len: usize) -> Result<usize, EncodeError> {
        let padded_len = padded_len.clamp(PROBE_MIN_LEN, MAX_DATAGRAM_LEN);
        let mut w = Writer::new(buf);
        header(&mut w, kind::PROBE)?;
        w.bytes(&self.tag.0)?;
        w.vec8(self.service, MAX_SERVICE_LEN)?;
        let pad = padded_len.saturating_sub(w.len());
        w.zeros(pad)?;
        Ok(w.len())
    }
}

impl Offer<'_> {
    /// Writes the offer.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        header(&mut w, kind::OFFER)?;
        w.bytes(&self.tag.0)?;
        w.bytes(&self.server_key_id.0)?;
        w.u32(self.load.in_flight)?;
        w.u32(self.load.capacity)?;
        w.u32(self.load.expected_us)?;
        w.u32(self.held_us)?;
        w.vec8(self.cookie, MAX_COOKIE_LEN)?;
        Ok(w.len())
    }
}

impl Init<'_> {
    /// Writes the initiation.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        header(&mut w, kind::INIT)?;
        w.bytes(&self.tag.0)?;
        w.vec8(self.service, MAX_SERVICE_LEN)?;
        w.vec8(self.cookie, MAX_COOKIE_LEN)?;
        w.vec16(self.noise, MAX_INIT_NOISE_LEN)?;
        Ok(w.len())
    }
}

impl Accept<'_> {
    /// Writes the acceptance.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        header(&mut w, kind::ACCEPT)?;
        w.u32(self.receiver_id)?;
        w.vec16(self.noise, MAX_NOISE_LEN)?;
        Ok(w.len())
    }
}

impl CookieChange<'_> {
    /// Writes the cookie change.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        header(&mut w, kind::COOKIE_CHANGE)?;
        w.bytes(&self.tag.0)?;
        w.vec8(self.cookie, MAX_COOKIE_LEN)?;
        Ok(w.len())
    }
}

impl Redirect<'_> {
    /// Writes the redirect.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let count = self.servers.len() / REDIRECT_ADDR_LEN;
        if !self.servers.len().is_multiple_of(REDIRECT_ADDR_LEN) || count > MAX_REDIRECT_ADDRS {
            return Err(EncodeError::FieldTooLong);
        }
        let mut w = Writer::new(buf);
        header(&mut w, kind::REDIRECT)?;
        w.bytes(&self.tag.0)?;
        w.u8(count as u8)?;
        w.bytes(self.servers)?;
        Ok(w.len())
    }
}

/// Bytes of the answered datagram a VERSIONS message carries back (PROTOCOL.md §3.9).
pub const VERSIONS_ECHO_LEN: usize = 32;

/// Writes the version-independent VERSIONS message answering `datagram`, a datagram of another
/// protocol version (PROTOCOL.md §3.9): `00`, the number of versions this side speaks, those
/// versions (here only [`VERSION`]), then the first [`VERSIONS_ECHO_LEN`] bytes of `datagram`, by which
/// its sender recognises the answer whatever its version's format.
pub fn encode_versions(datagram: &[u8], buf: &mut [u8]) -> Result<usize, EncodeError> {
    let echo = datagram
        .get(..VERSIONS_ECHO_LEN)
        .ok_or(EncodeError::FieldTooLong)?;
    let mut w = Writer::new(buf);
    w.u8(0)?;
    w.u8(1)?;
    w.u8(VERSION)?;
    w.bytes(echo)?;
    Ok(w.len())
}

/// Reads a VERSIONS message (PROTOCOL.md §3.9): the versions the server speaks and the echo of
/// the datagram it answers. None if `datagram` is not one.
pub fn decode_versions(datagram: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&marker, rest) = datagram.split_first()?;
    let (&count, rest) = rest.split_first()?;
    if marker != 0 || count == 0 || rest.len() != usize::from(count) + VERSIONS_ECHO_LEN {
        return None;
    }
    Some(rest.split_at(usize::from(count)))
}

impl DataHeader {
    /// Writes the 14-byte DATA header.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        header(&mut w, kind::DATA | (self.key_phase & kind::KEY_PHASE_MASK))?;
        w.u32(self.receiver_id)?;
        w.u64(self.counter)?;
        debug_assert_eq!(w.len(), DATA_HEADER_LEN);
        Ok(w.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag() -> Tag {
        Tag([7; TAG_LEN])
    }

    #[test]
    fn every_message_round_trips() {
        let mut buf = [0u8; MAX_DATAGRAM_LEN];
        let n = Probe {
            tag: tag(),
            service: b"echo",
        }
        .encode(&mut buf, 0)
        .unwrap();
        assert_eq!(n, PROBE_MIN_LEN);
        assert_eq!(
            Packet::decode(&buf[..n]).unwrap(),
            Packet::Probe(Probe {
                tag: tag(),
                service: b"echo"
            })
        );
        let offer = Offer {
            tag: tag(),
            server_key_id: KeyId([1; 8]),
            load: LoadHint {
                in_flight: 3,
                capacity: 9,
                expected_us: 41_250,
            },
            held_us: 312,
            cookie: &[5; 39],
        };
        let n = offer.encode(&mut buf).unwrap();
        assert_eq!(Packet::decode(&buf[..n]).unwrap(), Packet::Offer(offer));
        let init = Init {
            tag: tag(),
            service: b"echo",
            cookie: &[5; 39],
            noise: &[9; 52],
        };
        let n = init.encode(&mut buf).unwrap();
        assert_eq!(Packet::decode(&buf[..n]).unwrap(), Packet::Init(init));
        let accept = Accept {
            receiver_id: 77,
            noise: &[3; 52],
        };
        let n = accept.encode(&mut buf).unwrap();
        assert_eq!(Packet::decode(&buf[..n]).unwrap(), Packet::Accept(accept));
        let cc = CookieChange {
            tag: tag(),
            cookie: &[1; 39],
        };
        let n = cc.encode(&mut buf).unwrap();
        assert_eq!(Packet::decode(&buf[..n]).unwrap(), Packet::CookieChange(cc));
        let addrs = [crate::util::encode_addr("192.0.2.7:9".parse().unwrap()); 2].concat();
        let rd = Redirect {
            tag: tag(),
            servers: &addrs,
        };
        let n = rd.encode(&mut buf).unwrap();
        assert_eq!(n, 2 + 16 + 1 + 36);
        assert_eq!(Packet::decode(&buf[..n]).unwrap(), Packet::Redirect(rd));
        let named: Vec<std::net::SocketAddr> = rd.servers().collect();
        assert_eq!(named, vec!["192.0.2.7:9".parse().unwrap(); 2]);
        buf[18] = 9;
        assert_eq!(Packet::decode(&buf[..n]), Err(DecodeError::BadLength));
        let h = DataHeader {
            receiver_id: 5,
            counter: 1 << 40,
            key_phase: 11,
        };
        let n = h.encode(&mut buf).unwrap();
        buf[n..n + 17].fill(0xAA);
        assert_eq!(
            Packet::decode(&buf[..n + 17]).unwrap(),
            Packet::Data(h, &[0xAA; 17][..])
        );
    }

    #[test]
    fn truncation_at_every_offset_is_an_error() {
        let mut buf = [0u8; MAX_DATAGRAM_LEN];
        let init = Init {
            tag: tag(),
            service: b"echo",
            cookie: &[5; 39],
            noise: &[9; 52],
        };
        let n = init.encode(&mut buf).unwrap();
        for cut in 0..n {
            assert!(Packet::decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn short_probe_is_refused() {
        let mut buf = [0u8; MAX_DATAGRAM_LEN];
        let n = Probe {
            tag: tag(),
            service: b"echo",
        }
        .encode(&mut buf, 0)
        .unwrap();
        assert_eq!(
            Packet::decode(&buf[..n - 1]),
            Err(DecodeError::ProbeTooShort)
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut buf = [0u8; MAX_DATAGRAM_LEN];
        let n = CookieChange {
            tag: tag(),
            cookie: &[1; 39],
        }
        .encode(&mut buf)
        .unwrap();
        assert_eq!(Packet::decode(&buf[..n + 1]), Err(DecodeError::BadLength));
    }
}
