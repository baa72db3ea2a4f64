//! Small helpers shared by the codec and the cookie.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Encodes an address as 16 bytes of IPv6 (IPv4 as `::ffff:a.b.c.d`) and a big-endian port.
pub fn encode_addr(addr: SocketAddr) -> [u8; 18] {
    let v6 = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let mut out = [0u8; 18];
    out[..16].copy_from_slice(&v6.octets());
    out[16..].copy_from_slice(&addr.port().to_be_bytes());
    out
}

/// The inverse of [`encode_addr`]; IPv4-mapped addresses come back as IPv4.
pub fn decode_addr(bytes: &[u8; 18]) -> SocketAddr {
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&bytes[..16]);
    let v6 = Ipv6Addr::from(ip);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, u16::from_be_bytes([bytes[16], bytes[17]]))
}

/// The canonical form of an address for comparisons: IPv4-mapped IPv6 becomes IPv4.
/// IPv6 addresses keep their scope id and flow label, so replies to a link-local peer still route.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// A hasher for session ids the server drew itself from its CSPRNG: they are uniformly random,
/// so a multiplicative mix is as good as SipHash for spreading them and an attacker cannot choose
/// which ids exist (lookups of forged ids insert nothing). One multiply instead of SipHash's
/// rounds on every DATA packet.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u32` is used by the id maps; anything else still hashes deterministically.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        // Fibonacci hashing: the high bits (which hashbrown uses for its control bytes) depend
        // on every bit of the id.
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by locally drawn session ids (see [`IdHasher`]).
pub type IdMap<V> = std::collections::HashMap<u32, V, std::hash::BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod id_hasher_tests {
    use std::hash::{BuildHasher, BuildHasherDefault};

    use super::*;

    #[test]
    fn id_hasher_spreads_ids_over_the_high_bits() {
        let build = BuildHasherDefault::<IdHasher>::default();
        let mut tops = std::collections::HashSet::new();
        for id in 0..1000u32 {
            tops.insert(build.hash_one(id) >> 57);
        }
        // Identity hashing would put every small id in one control-byte bucket (top bits 0).
        assert!(tops.len() > 100, "{}", tops.len());
        let mut map: IdMap<u32> = IdMap::default();
        for id in 0..1000u32 {
            map.insert(id.wrapping_mul(7919), id);
        }
        assert!((0..1000u32).all(|id| map[&id.wrapping_mul(7919)] == id));
    }
}
