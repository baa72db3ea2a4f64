//! Authentic DATA with fuzzer-chosen plaintext: the recorded session's keys (recovered once, see
//! [`crate::Recorded::secrets`]) seal any frame at any counter and key epoch, so that the fuzzer
//! reaches what lies behind the AEAD — above all the reassembly of FRAGMENT frames (PROTOCOL.md
//! §5.7) — which a patched ciphertext never does. A [`Ledger`] remembers what was sealed and checks
//! every datagram an endpoint delivers against it.
//!
//! A sealed record's payload (both stateful targets):
//!
//! ```text
//! counter u8 | flags u8 | body
//! ```
//!
//! - counter: 0 = the next counter of the harness's own run (from [`FIRST_SEALED_COUNTER`] up,
//!   one per use), k ≥ 1 = counter k − 1 (a replay, or one reordered behind the window);
//! - flags: bits 0–2 = the key epoch (0–7, sent as the phase; a receiver follows at most
//!   7 epochs ahead), bit 3 = the body is a compact FRAGMENT (below), else it is the plaintext
//!   itself: a frame type byte and the frame's body; bits 4–7 are ignored;
//! - compact FRAGMENT: `id u8 | index u8 | count u8 | piece length u16` (missing bytes read as
//!   0): the frame `0x06 | id as u32 | index | count | piece`, with the piece's length taken
//!   mod ([`MAX_PIECE`] + 1) and its bytes made by [`piece_byte`]. Index and count go out as
//!   given, so malformed ones stay reachable, and 47 records of 11 bytes carry a 65,535-byte
//!   datagram (or overrun one), which a 1,500-byte input could not spell out in plain form.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::OnceLock;
use std::time::Instant;

use volley_proto::crypto::{DirectionKey, Suite};
use volley_proto::packet::DataHeader;
use volley_proto::session::{FRAGMENT_HEADER_LEN, MAX_FRAGMENTS, REASSEMBLY_TIMEOUT, frame};
use volley_proto::{AEAD_TAG_LEN, DATA_HEADER_LEN, MAX_DATAGRAM, MAX_DATAGRAM_LEN};

use crate::{Input, recorded};

/// The counter a harness's first "next counter" seals at: above every recorded DATA's.
pub const FIRST_SEALED_COUNTER: u64 = 16;
/// Key epochs a sealed record can choose (0 ..= 7: a receiver at epoch 0 follows up to 7 ahead).
pub const EPOCHS: u32 = 8;
/// The largest piece one full-size DATA packet carries in a FRAGMENT (1,415 bytes).
pub const MAX_PIECE: usize =
    MAX_DATAGRAM_LEN - DATA_HEADER_LEN - AEAD_TAG_LEN - 1 - FRAGMENT_HEADER_LEN;

/// The raw DATA keys of the recorded session (Noise `Split()`, epoch 0).
#[derive(Clone)]
pub struct SessionSecrets {
    /// The DATA cipher suite the handshake chose.
    pub suite: Suite,
    /// `k1`: seals client → server.
    pub client_to_server: [u8; 32],
    /// `k2`: seals server → client.
    pub server_to_client: [u8; 32],
}

impl std::fmt::Debug for SessionSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionSecrets({:?}, <keys>)", self.suite)
    }
}

/// Which way sealed DATA goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the recorded client to the recorded server's session (the server target).
    ClientToServer,
    /// From the recorded server to the recorded client's session (the client target).
    ServerToClient,
}

/// The keys of epochs 0 ..= 7 of one direction, derived once per process.
fn epoch_keys(direction: Direction) -> &'static [DirectionKey] {
    static C2S: OnceLock<Vec<DirectionKey>> = OnceLock::new();
    static S2C: OnceLock<Vec<DirectionKey>> = OnceLock::new();
    let (cell, raw) = match direction {
        Direction::ClientToServer => (&C2S, recorded().secrets.client_to_server),
        Direction::ServerToClient => (&S2C, recorded().secrets.server_to_client),
    };
    cell.get_or_init(|| {
        let first = DirectionKey::new(recorded().secrets.suite, &raw);
        let mut keys: Vec<DirectionKey> = (1..EPOCHS).map(|e| first.advance(e)).collect();
        keys.insert(0, first);
        keys
    })
}

/// The byte at `offset` of a compact FRAGMENT's piece: a function of its id, index and place,
/// so that pieces of different datagrams or places differ.
pub fn piece_byte(id: u8, index: u8, offset: usize) -> u8 {
    (offset as u8).wrapping_mul(31) ^ id ^ index.rotate_left(4) ^ (offset >> 8) as u8
}

/// A frame as PROTOCOL.md §5 defines it, read by the harness itself (not by `volley-proto`), so
/// that the ledger's idea of a valid fragment is the specification's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// DATAGRAM (0x00): the body is the application datagram.
    Datagram(Vec<u8>),
    /// A FRAGMENT (0x06) that §5.7 does not call malformed by itself: a piece of 1 byte or more,
    /// count 2 ..= 64, index below the count.
    Fragment {
        /// The datagram's id.
        id: u32,
        /// The piece's place.
        index: u8,
        /// Pieces of the datagram.
        count: u8,
        /// The piece.
        piece: Vec<u8>,
    },
    /// Anything else (other frame types, malformed FRAGMENTs, nothing at all).
    Other,
}

impl Frame {
    /// Reads a plaintext: type byte, then body.
    pub fn read(plaintext: &[u8]) -> Self {
        match plaintext.split_first() {
            Some((&frame::DATAGRAM, body)) => Self::Datagram(body.to_vec()),
            Some((&frame::FRAGMENT, body)) if body.len() > FRAGMENT_HEADER_LEN => {
                let id = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                let (index, count) = (body[4], body[5]);
                if (2..=MAX_FRAGMENTS).contains(&usize::from(count)) && index < count {
                    Self::Fragment {
                        id,
                        index,
                        count,
                        piece: body[FRAGMENT_HEADER_LEN..].to_vec(),
                    }
                } else {
                    Self::Other
                }
            }
            _ => Self::Other,
        }
    }
}

/// One sealed record: the DATA packet and what its plaintext was.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The DATA packet.
    pub datagram: Vec<u8>,
    /// Its plaintext.
    pub plaintext: Vec<u8>,
    /// Its counter.
    pub counter: u64,
}

/// Seals DATA as one side of the recorded session.
#[derive(Debug)]
pub struct Sealer {
    direction: Direction,
    receiver_id: u32,
    next: u64,
}

impl Sealer {
    /// Seals as the recorded client, to the recorded server's session.
    pub fn client_to_server() -> Self {
        Self {
            direction: Direction::ClientToServer,
            receiver_id: recorded().server_session_id,
            next: FIRST_SEALED_COUNTER,
        }
    }

    /// Seals as the recorded server, to the recorded client's session.
    pub fn server_to_client() -> Self {
        Self {
            direction: Direction::ServerToClient,
            receiver_id: recorded().client_session_id,
            next: FIRST_SEALED_COUNTER,
        }
    }

    /// `plaintext` as a DATA packet at `counter` under key epoch `epoch` (mod [`EPOCHS`]).
    pub fn seal(&self, counter: u64, epoch: u32, plaintext: &[u8]) -> Vec<u8> {
        let epoch = epoch % EPOCHS;
        let header = DataHeader {
            receiver_id: self.receiver_id,
            counter,
            key_phase: epoch as u8,
        };
        let mut out = vec![0u8; DATA_HEADER_LEN + plaintext.len() + AEAD_TAG_LEN];
        let h = header.encode(&mut out).expect("room for the header");
        let (head, body) = out.split_at_mut(h);
        body[..plaintext.len()].copy_from_slice(plaintext);
        let n = epoch_keys(self.direction)[epoch as usize]
            .seal(counter, head, body, plaintext.len())
            .expect("room for the tag");
        out.truncate(h + n);
        out
    }

    /// A sealed record's payload (see the module's documentation) as a DATA packet.
    pub fn record(&mut self, payload: &[u8]) -> Sealed {
        let mut input = Input::new(payload);
        let counter = match input.u8().unwrap_or(0) {
            0 => {
                self.next += 1;
                self.next - 1
            }
            k => u64::from(k - 1),
        };
        let flags = input.u8().unwrap_or(0);
        let plaintext = if flags & 0x08 != 0 {
            let id = input.u8().unwrap_or(0);
            let index = input.u8().unwrap_or(0);
            let count = input.u8().unwrap_or(0);
            let len = usize::from(input.u16().unwrap_or(0)) % (MAX_PIECE + 1);
            let mut p = Vec::with_capacity(1 + FRAGMENT_HEADER_LEN + len);
            p.push(frame::FRAGMENT);
            p.extend_from_slice(&u32::from(id).to_be_bytes());
            p.extend_from_slice(&[index, count]);
            p.extend((0..len).map(|i| piece_byte(id, index, i)));
            p
        } else {
            input.rest().to_vec()
        };
        Sealed {
            datagram: self.seal(counter, u32::from(flags & 7), &plaintext),
            plaintext,
            counter,
        }
    }
}

/// How a delivered datagram is explained by what was sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The body of one DATAGRAM frame (sealed, or recorded).
    Whole,
    /// Every piece of one fragmented datagram, concatenated in index order.
    Reassembled,
}

/// What a sealing peer sent: every DATAGRAM body and every valid FRAGMENT piece, by datagram id
/// and count and index, with the time it was handed to the endpoint (None: the endpoint may
/// have taken it later, e.g. a client holding DATA that overtook its ACCEPT).
#[derive(Debug, Default)]
pub struct Ledger {
    wholes: HashSet<Vec<u8>>,
    pieces: HashMap<(u32, u8), Vec<Slot>>,
}

/// The pieces sent for one place of one datagram, each with the latest time it was handed over.
type Slot = Vec<(Vec<u8>, Option<Instant>)>;

impl Ledger {
    /// A ledger that knows the datagrams of the recorded DATA (they authenticate as recorded).
    pub fn new(recorded: &[&[u8]]) -> Self {
        Self {
            wholes: recorded.iter().map(|d| d.to_vec()).collect(),
            pieces: HashMap::new(),
        }
    }

    /// Notes a sealed plaintext handed to the endpoint at `at`.
    pub fn sent(&mut self, plaintext: &[u8], at: Option<Instant>) {
        match Frame::read(plaintext) {
            Frame::Datagram(body) => {
                self.wholes.insert(body);
            }
            Frame::Fragment {
                id,
                index,
                count,
                piece,
            } => {
                let slots = self
                    .pieces
                    .entry((id, count))
                    .or_insert_with(|| vec![Vec::new(); usize::from(count)]);
                let slot = &mut slots[usize::from(index)];
                match slot.iter_mut().find(|(p, _)| *p == piece) {
                    // The same bytes again: the latest time is the one that may still count.
                    Some((_, t)) => *t = at.and_then(|at| Some((*t)?.max(at))),
                    None => slot.push((piece, at)),
                }
            }
            Frame::Other => {}
        }
    }

    /// Whether `data`, delivered at `now`, is a datagram the peer sent: the body of a DATAGRAM
    /// frame, or the pieces 0 .. count − 1 of one id and count, in order, each sent less than
    /// [`REASSEMBLY_TIMEOUT`] ago (an incomplete datagram is dropped that long after its first
    /// piece). None: nothing sent makes it — delivered from an incomplete set, or made up.
    pub fn explain(&self, now: Instant, data: &[u8]) -> Option<Delivery> {
        if self.wholes.contains(data) {
            return Some(Delivery::Whole);
        }
        let fresh = |t: &Option<Instant>| {
            t.is_none_or(|t| now.saturating_duration_since(t) < REASSEMBLY_TIMEOUT)
        };
        self.pieces
            .values()
            .any(|slots| {
                let mut ends: BTreeSet<usize> = BTreeSet::from([0]);
                for slot in slots {
                    let mut next = BTreeSet::new();
                    for &at in &ends {
                        for (piece, _) in slot.iter().filter(|(_, t)| fresh(t)) {
                            if data[at..].starts_with(piece) {
                                next.insert(at + piece.len());
                            }
                        }
                    }
                    if next.is_empty() {
                        return false;
                    }
                    ends = next;
                }
                ends.contains(&data.len())
            })
            .then_some(Delivery::Reassembled)
    }

    /// Checks a delivered datagram: at most [`MAX_DATAGRAM`] bytes, and explained by what was
    /// sent (see [`Ledger::explain`]). Panics otherwise.
    pub fn check(&self, now: Instant, data: &[u8]) -> Delivery {
        assert!(
            data.len() <= MAX_DATAGRAM,
            "a {}-byte datagram delivered (more than MAX_DATAGRAM)",
            data.len()
        );
        match self.explain(now, data) {
            Some(d) => d,
            None => panic!(
                "a {}-byte datagram delivered that no DATAGRAM and no complete, fresh set of \
                 FRAGMENTs sent makes",
                data.len()
            ),
        }
    }
}
