//! The simulated network's addresses: server `i` is 10.0.0.(1 + i):4433; a session is an address
//! of 100.64.0.0/10 (its slot) with its generation in the port, so that an offer to a finished
//! session is not taken by the next one in the same slot.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

pub(in crate::sim) const SERVER_BASE: u32 = 0x0A00_0001; // 10.0.0.1
pub(in crate::sim) const CLIENT_BASE: u32 = 0x6440_0000; // 100.64.0.0
pub(in crate::sim) const CLIENT_PORT_BASE: u16 = 20_000;
pub(in crate::sim) const CLIENT_PORT_SPAN: u32 = 40_000;

pub(in crate::sim) fn server_addr(i: usize) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(SERVER_BASE.wrapping_add(i as u32)),
        4433,
    ))
}

pub(in crate::sim) fn server_index(addr: SocketAddr, n: usize) -> Option<u32> {
    let SocketAddr::V4(a) = addr else { return None };
    let i = u32::from(*a.ip()).checked_sub(SERVER_BASE)?;
    ((i as usize) < n).then_some(i)
}

/// A session's address: its slot in the IP, its generation in the port, so that an offer to a
/// finished session is not taken by the next one in the same slot.
pub(in crate::sim) fn client_addr(slot: u32, gen_: u32) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(CLIENT_BASE.wrapping_add(slot)),
        CLIENT_PORT_BASE + (gen_ % CLIENT_PORT_SPAN) as u16,
    )
}

/// (slot, generation modulo the port span) of a client address.
pub(in crate::sim) fn client_slot(addr: SocketAddr) -> Option<(u32, u32)> {
    let SocketAddr::V4(a) = addr else { return None };
    let slot = u32::from(*a.ip()).checked_sub(CLIENT_BASE)?;
    let g = u32::from(a.port().checked_sub(CLIENT_PORT_BASE)?);
    Some((slot, g))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        for i in [0usize, 1, 249, 250, 9_999] {
            assert_eq!(server_index(server_addr(i), 10_000), Some(i as u32));
        }
        assert_eq!(server_index(server_addr(10_000), 10_000), None);
        let a = client_addr(123_456, 40_003);
        assert_eq!(client_slot(SocketAddr::V4(a)), Some((123_456, 3)));
        assert_eq!(client_slot(server_addr(3)), None);
    }
}
