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
