//! Datagrams larger than one DATA packet: cut into FRAGMENT frames by the sender, put back
//! together by the receiver within bounded memory and time (PROTOCOL.md §5.7). Requests and
//! replies larger than one packet go the same way in FRAME_FRAGMENT frames, whose pieces put
//! together make a whole frame (§5.8); both kinds share one numbering and one reassembly.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

/// Bytes of a FRAGMENT frame's body before its piece: id (u32), index (u8), count (u8).
pub const FRAGMENT_HEADER_LEN: usize = 6;
/// Largest application datagram a session carries (in fragments when it does not fit one
/// packet): the largest UDP payload there is.
pub const MAX_DATAGRAM: usize = 65_535;
/// Most fragments of one datagram.
pub const MAX_FRAGMENTS: usize = 64;
/// Datagrams (and frames) a receiver puts together at once; a fragment of another evicts the
/// oldest. Sixteen so that requests sent many at a time, whose pieces a reordering path
/// interleaves, are not evicted one by the next (PROTOCOL.md §5.7).
pub const MAX_PARTIALS: usize = 16;
/// Bytes a receiver holds for incomplete datagrams and frames at once (per session): two of the
/// largest frames ([`super::request::MAX_FRAME`]); a fragment beyond evicts the oldest
/// incomplete ones.
pub const MAX_REASSEMBLY_BYTES: usize = 2 * super::request::MAX_FRAME;
/// An incomplete datagram is dropped this long after its first fragment arrived.
pub const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(2);

/// A FRAGMENT frame's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentHeader {
    /// The datagram's number (the sender's, one per fragmented datagram).
    pub id: u32,
    /// This fragment's place, 0-based.
    pub index: u8,
    /// Fragments of the datagram, 2 ..= [`MAX_FRAGMENTS`].
    pub count: u8,
}

impl FragmentHeader {
    /// Reads the header from a FRAGMENT frame's body; None when it is malformed (fewer than 6
    /// bytes, no piece, a count out of 2..=64, an index not below the count).
    pub fn decode(body: &[u8]) -> Option<(Self, &[u8])> {
        if body.len() <= FRAGMENT_HEADER_LEN {
            return None;
        }
        let id = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        let (index, count) = (body[4], body[5]);
        if !(2..=MAX_FRAGMENTS).contains(&usize::from(count)) || index >= count {
            return None;
        }
        Some((Self { id, index, count }, &body[FRAGMENT_HEADER_LEN..]))
    }

    /// Writes the header into the first [`FRAGMENT_HEADER_LEN`] bytes of `out`.
    pub fn encode(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.id.to_be_bytes());
        out[4] = self.index;
        out[5] = self.count;
    }
}

/// How a datagram of `len` bytes is cut when one fragment's piece holds at most `piece`
/// bytes: as few fragments as fit, of equal size but the last (each `ceil(len / count)`).
/// None when it needs more than [`MAX_FRAGMENTS`].
pub fn cut(len: usize, piece: usize) -> Option<(usize, usize)> {
    let piece = piece.max(1);
    let count = len.div_ceil(piece).max(2);
    if count > MAX_FRAGMENTS {
        return None;
    }
    Some((count, len.div_ceil(count)))
}

/// What a fragment did to the receiver's reassembly.
#[derive(Debug, PartialEq, Eq)]
pub enum Reassembled {
    /// The datagram is whole: here it is.
    Whole(Bytes),
    /// Kept; the datagram is not whole yet.
    Kept,
    /// Dropped: a second copy of a piece, a count or a kind (FRAGMENT or FRAME_FRAGMENT) that
    /// disagrees with the datagram's first fragment, or pieces that would exceed their kind's
    /// bound ([`MAX_DATAGRAM`], [`super::request::MAX_FRAME`]) (the incomplete datagram is
    /// dropped with it).
    Malformed,
}

/// Counters of one session's reassembly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// FRAGMENT frames received (authentic).
    pub fragments_received: u64,
    /// Datagrams put back together and delivered.
    pub reassembled: u64,
    /// Incomplete datagrams dropped after [`REASSEMBLY_TIMEOUT`].
    pub timed_out: u64,
    /// Incomplete datagrams evicted to stay within [`MAX_PARTIALS`] or
    /// [`MAX_REASSEMBLY_BYTES`].
    pub evicted: u64,
}

#[derive(Debug)]
struct Partial {
    id: u32,
    /// The frame type its pieces came in (FRAGMENT or FRAME_FRAGMENT).
    kind: u8,
    count: u8,
    started: Instant,
    pieces: Vec<Option<Bytes>>,
    got: usize,
    bytes: usize,
}

/// A session's incomplete datagrams: at most [`MAX_PARTIALS`] of them and
/// [`MAX_REASSEMBLY_BYTES`] in all, each for at most [`REASSEMBLY_TIMEOUT`].
#[derive(Debug, Default)]
pub struct Reassembly {
    partials: Vec<Partial>,
    bytes: usize,
    stats: ReassemblyStats,
}

impl Reassembly {
    /// Takes one authentic fragment in, a piece of a datagram (`kind` FRAGMENT, at most
    /// [`MAX_DATAGRAM`] bytes in all) or of a frame (FRAME_FRAGMENT, at most
    /// [`super::request::MAX_FRAME`]).
    pub fn take(
        &mut self,
        now: Instant,
        kind: u8,
        header: FragmentHeader,
        piece: &[u8],
    ) -> Reassembled {
        self.stats.fragments_received += 1;
        self.expire(now);
        let at = match self.partials.iter().position(|p| p.id == header.id) {
            Some(at) => {
                let p = &self.partials[at];
                if p.count != header.count
                    || p.kind != kind
                    || p.pieces[usize::from(header.index)].is_some()
                {
                    self.remove(at);
                    return Reassembled::Malformed;
                }
                at
            }
            None => {
                if self.partials.len() >= MAX_PARTIALS {
                    self.evict_oldest();
                }
                self.partials.push(Partial {
                    id: header.id,
                    kind,
                    count: header.count,
                    started: now,
                    pieces: vec![None; usize::from(header.count)],
                    got: 0,
                    bytes: 0,
                });
                self.partials.len() - 1
            }
        };
        let bound = if kind == super::frame::FRAGMENT {
            MAX_DATAGRAM
        } else {
            super::request::MAX_FRAME
        };
        if self.partials[at].bytes + piece.len() > bound {
            self.remove(at);
            return Reassembled::Malformed;
        }
        // Room within the session's bound: the oldest other datagrams go first.
        let id = header.id;
        while self.bytes + piece.len() > MAX_REASSEMBLY_BYTES {
            let Some(oldest) = self
                .partials
                .iter()
                .enumerate()
                .filter(|(_, p)| p.id != id)
                .min_by_key(|(_, p)| p.started)
                .map(|(i, _)| i)
            else {
                break;
            };
            self.remove(oldest);
            self.stats.evicted += 1;
        }
        let Some(at) = self.partials.iter().position(|p| p.id == id) else {
            return Reassembled::Malformed;
        };
        let p = &mut self.partials[at];
        p.pieces[usize::from(header.index)] = Some(Bytes::copy_from_slice(piece));
        p.got += 1;
        p.bytes += piece.len();
        self.bytes += piece.len();
        if p.got < usize::from(p.count) {
            return Reassembled::Kept;
        }
        let p = self.partials.swap_remove(at);
        self.bytes -= p.bytes;
        let mut whole = BytesMut::with_capacity(p.bytes);
        for piece in p.pieces.into_iter().flatten() {
            whole.extend_from_slice(&piece);
        }
        self.stats.reassembled += 1;
        Reassembled::Whole(whole.freeze())
    }

    /// Drops the incomplete datagrams whose time is up.
    pub fn expire(&mut self, now: Instant) {
        while let Some(at) = self
            .partials
            .iter()
            .position(|p| now >= p.started + REASSEMBLY_TIMEOUT)
        {
            self.remove(at);
            self.stats.timed_out += 1;
        }
    }

    /// When the oldest incomplete datagram times out, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.partials
            .iter()
            .map(|p| p.started + REASSEMBLY_TIMEOUT)
            .min()
    }

    /// Bytes held for incomplete datagrams now.
    pub fn held(&self) -> usize {
        self.bytes
    }

    /// The counters.
    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    fn evict_oldest(&mut self) {
        if let Some(at) = self
            .partials
            .iter()
            .enumerate()
            .min_by_key(|(_, p)| p.started)
            .map(|(i, _)| i)
        {
            self.remove(at);
            self.stats.evicted += 1;
        }
    }

    fn remove(&mut self, at: usize) {
        let p = self.partials.swap_remove(at);
        self.bytes -= p.bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::session::request::MAX_FRAME;

    const F: u8 = super::super::frame::FRAGMENT;
    const FF: u8 = super::super::frame::FRAME_FRAGMENT;

    #[test]
    fn p1_frame_pieces_reassemble_up_to_the_largest_reply_and_never_mix_with_a_datagram() {
        let now = Instant::now();
        let mut r = Reassembly::default();
        // Pieces of one id in two kinds: a sender's bug or a forgery, dropped with its partial.
        assert_eq!(r.take(now, FF, header(3, 0, 2), b"a"), Reassembled::Kept);
        assert_eq!(
            r.take(now, F, header(3, 1, 2), b"b"),
            Reassembled::Malformed
        );
        assert_eq!(r.held(), 0);
        // A frame may pass MAX_DATAGRAM by its header (a REPLY of 65,535 bytes is 65,549).
        let piece = vec![0u8; MAX_FRAME / 47 + 1];
        let mut got = None;
        let mut total = 0;
        for index in 0..47u8 {
            let len = piece.len().min(MAX_FRAME - total);
            total += len;
            got = Some(r.take(now, FF, header(4, index, 47), &piece[..len]));
        }
        assert_eq!(total, MAX_FRAME);
        assert!(matches!(got, Some(Reassembled::Whole(d)) if d.len() == MAX_FRAME));
        // The same pieces as a datagram are too many bytes.
        let mut r = Reassembly::default();
        let mut last = None;
        for index in 0..47u8 {
            last = Some(r.take(now, F, header(4, index, 47), &piece));
            if last == Some(Reassembled::Malformed) {
                break;
            }
        }
        assert_eq!(last, Some(Reassembled::Malformed));
    }

    fn header(id: u32, index: u8, count: u8) -> FragmentHeader {
        FragmentHeader { id, index, count }
    }

    #[test]
    fn o4_pieces_in_any_order_make_the_datagram_once() {
        let now = Instant::now();
        let mut r = Reassembly::default();
        assert_eq!(r.take(now, F, header(7, 2, 3), b"ef"), Reassembled::Kept);
        assert_eq!(r.take(now, F, header(7, 0, 3), b"ab"), Reassembled::Kept);
        assert_eq!(r.held(), 4);
        assert_eq!(
            r.take(now, F, header(7, 1, 3), b"cd"),
            Reassembled::Whole(Bytes::from_static(b"abcdef"))
        );
        assert_eq!(r.held(), 0);
        assert_eq!(r.stats().reassembled, 1);
    }

    #[test]
    fn o4_a_second_copy_of_a_piece_or_a_changed_count_drops_the_datagram() {
        let now = Instant::now();
        let mut r = Reassembly::default();
        assert_eq!(r.take(now, F, header(1, 0, 2), b"a"), Reassembled::Kept);
        assert_eq!(
            r.take(now, F, header(1, 0, 2), b"a"),
            Reassembled::Malformed
        );
        assert_eq!(r.held(), 0);
        assert_eq!(r.take(now, F, header(2, 0, 2), b"a"), Reassembled::Kept);
        assert_eq!(
            r.take(now, F, header(2, 1, 3), b"b"),
            Reassembled::Malformed
        );
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn o4_reassembly_memory_and_time_are_bounded() {
        let t0 = Instant::now();
        let mut r = Reassembly::default();
        let big = vec![0u8; 1400];
        // Many datagrams, one piece each: never more than MAX_PARTIALS kept.
        for id in 0..100 {
            r.take(t0, F, header(id, 0, 2), &big);
            assert!(r.partials.len() <= MAX_PARTIALS);
        }
        assert_eq!(r.stats().evicted, 100 - MAX_PARTIALS as u64);
        // Pieces of one datagram larger than MAX_DATAGRAM in all: dropped.
        let mut r = Reassembly::default();
        for index in 0..46 {
            assert_eq!(r.take(t0, F, header(9, index, 64), &big), Reassembled::Kept);
        }
        // 47 × 1,400 = 65,800 bytes.
        assert_eq!(
            r.take(t0, F, header(9, 46, 64), &big),
            Reassembled::Malformed
        );
        assert_eq!(r.held(), 0);
        // Two nearly whole datagrams fill the bound; a third evicts the oldest.
        let mut r = Reassembly::default();
        for id in 0..3u32 {
            for index in 0..46 {
                r.take(
                    t0 + Duration::from_millis(u64::from(id)),
                    F,
                    header(id, index, 47),
                    &big,
                );
                assert!(r.held() <= MAX_REASSEMBLY_BYTES);
            }
        }
        assert!(r.stats().evicted >= 1);
        // Time: an incomplete datagram is gone after REASSEMBLY_TIMEOUT.
        let mut r = Reassembly::default();
        r.take(t0, F, header(5, 0, 2), b"x");
        assert_eq!(r.deadline(), Some(t0 + REASSEMBLY_TIMEOUT));
        r.expire(t0 + REASSEMBLY_TIMEOUT);
        assert_eq!((r.held(), r.stats().timed_out), (0, 1));
        assert_eq!(r.take(t0, F, header(5, 1, 2), b"y"), Reassembled::Kept);
    }

    #[test]
    fn o4_any_fragments_a_peer_sends_keep_reassembly_within_its_bounds_and_never_panic() {
        use rand_chacha::ChaCha8Rng;
        use rand_core::{RngCore, SeedableRng};
        let mut rng = ChaCha8Rng::seed_from_u64(24);
        let t0 = Instant::now();
        let mut r = Reassembly::default();
        let mut now = t0;
        let mut whole = 0u64;
        for _ in 0..200_000 {
            now += Duration::from_micros(u64::from(rng.next_u32() % 2_000));
            // Few ids, so that pieces collide; any body, valid or not.
            let mut body = vec![0u8; (rng.next_u32() % 1_500) as usize];
            rng.fill_bytes(&mut body);
            if body.len() >= FRAGMENT_HEADER_LEN {
                body[..4].copy_from_slice(&(rng.next_u32() % 8).to_be_bytes());
                body[5] = (rng.next_u32() % 70) as u8;
                body[4] = (rng.next_u32() % u32::from(body[5].max(1))) as u8;
            }
            let Some((header, piece)) = FragmentHeader::decode(&body) else {
                continue;
            };
            // Either kind, so that kinds collide under one id too.
            let (kind, bound) = if rng.next_u32() % 2 == 0 {
                (F, MAX_DATAGRAM)
            } else {
                (FF, MAX_FRAME)
            };
            if let Reassembled::Whole(d) = r.take(now, kind, header, piece) {
                assert!(d.len() <= bound);
                whole += 1;
            }
            assert!(r.held() <= MAX_REASSEMBLY_BYTES);
            assert!(r.partials.len() <= MAX_PARTIALS);
            assert_eq!(r.held(), r.partials.iter().map(|p| p.bytes).sum::<usize>());
            if rng.next_u32() % 100 == 0 {
                r.expire(now);
            }
        }
        // Random pieces of two-piece datagrams do complete now and then.
        assert!(whole > 0);
    }

    #[test]
    fn o4_a_datagram_is_cut_into_as_few_equal_pieces_as_fit() {
        assert_eq!(cut(65_535, 1415), Some((47, 1395)));
        assert_eq!(cut(1500, 1415), Some((2, 750)));
        assert_eq!(cut(90_561, 1415), None);
        let (h, piece) = FragmentHeader::decode(&[0, 0, 0, 7, 1, 2, 0xAA]).unwrap();
        assert_eq!((h, piece), (header(7, 1, 2), &[0xAA][..]));
        assert!(FragmentHeader::decode(&[0, 0, 0, 7, 2, 2, 0xAA]).is_none());
        assert!(FragmentHeader::decode(&[0, 0, 0, 7, 0, 1, 0xAA]).is_none());
        assert!(FragmentHeader::decode(&[0, 0, 0, 7, 0, 65, 0xAA]).is_none());
        assert!(FragmentHeader::decode(&[0, 0, 0, 7, 0, 2]).is_none());
    }
}
