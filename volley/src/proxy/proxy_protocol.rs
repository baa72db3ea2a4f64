//! The PROXY protocol, version 2 (HAProxy's "The PROXY protocol", §2.2): the header a TCP
//! forwarder may write to its backend before a stream's first byte, so that the backend learns
//! the client's address (and, as TLVs, the client's key and its name on the allow-list) instead of
//! the forwarder's.
//!
//! The header is binary: the 12-byte signature, `0x21` (version 2, command PROXY), the address
//! family and transport (`0x11` TCP over IPv4, `0x21` TCP over IPv6), a big-endian length, the
//! source and destination addresses and ports, then TLVs. volley writes two TLVs of the range
//! HAProxy reserves for applications (`PP2_TYPE_MIN_CUSTOM` 0xE0 to 0xEF):
//!
//! | type | value |
//! |---|---|
//! | [`TLV_CLIENT_KEY`] (0xE0) | the client's static public key, 32 bytes |
//! | [`TLV_CLIENT_NAME`] (0xE1) | its name on the server's allow-list, UTF-8 (absent without one) |

use std::net::{IpAddr, SocketAddr};

/// The signature every version 2 header starts with.
pub const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// TLV type of the client's static public key (32 bytes).
pub const TLV_CLIENT_KEY: u8 = 0xE0;

/// TLV type of the client's name on the allow-list (UTF-8).
pub const TLV_CLIENT_NAME: u8 = 0xE1;

/// The longest client name written as a TLV; a longer one is left out (the key identifies the
/// client all the same).
pub const MAX_NAME_TLV: usize = 1024;

/// The version 2 header for a TCP stream from `source` (the client) to `destination` (the
/// address it reached), with the client's static key and, if it has one, its name. When one
/// address is IPv4 and the other IPv6, the IPv4 one is written IPv4-mapped.
pub fn header_v2(
    source: SocketAddr,
    destination: SocketAddr,
    client_key: Option<&[u8; 32]>,
    client_name: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36 + 3 + 32 + 3 + 64);
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21); // version 2, PROXY
    let mut body = Vec::with_capacity(36 + 3 + 32 + 3 + 64);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11); // AF_INET, STREAM
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(0x21); // AF_INET6, STREAM
            body.extend_from_slice(&v6(s).octets());
            body.extend_from_slice(&v6(d).octets());
        }
    }
    body.extend_from_slice(&source.port().to_be_bytes());
    body.extend_from_slice(&destination.port().to_be_bytes());
    if let Some(key) = client_key {
        tlv(&mut body, TLV_CLIENT_KEY, key);
    }
    if let Some(name) = client_name.filter(|n| !n.is_empty() && n.len() <= MAX_NAME_TLV) {
        tlv(&mut body, TLV_CLIENT_NAME, name.as_bytes());
    }
    let len = u16::try_from(body.len()).expect("at most 36 + 35 + 1027 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The version 2 header with the command LOCAL and no address (for a connection whose
/// addresses cannot be told: the backend then uses the connection's own).
pub fn header_local() -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    out
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    let len = u16::try_from(value.len()).expect("TLV values here are at most 1024 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn o5_an_ipv4_header_is_byte_for_byte_the_spec_s_layout() {
        let h = header_v2(
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:7020".parse().unwrap(),
            None,
            None,
        );
        let mut want = SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 10, 0, 0, 1, 10, 0, 0, 2]);
        want.extend_from_slice(&40000u16.to_be_bytes());
        want.extend_from_slice(&7020u16.to_be_bytes());
        assert_eq!(h, want);
    }

    #[test]
    fn o5_mixed_families_are_written_as_ipv6_with_the_tlvs_after_the_addresses() {
        let h = header_v2(
            "10.0.0.1:1".parse().unwrap(),
            "[::1]:2".parse().unwrap(),
            Some(&[7; 32]),
            Some("alice"),
        );
        assert_eq!(h[13], 0x21);
        let len = u16::from_be_bytes([h[14], h[15]]) as usize;
        assert_eq!(h.len(), 16 + len);
        assert_eq!(len, 36 + 3 + 32 + 3 + 5);
        assert_eq!(
            &h[16..32],
            &"::ffff:10.0.0.1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(&h[52..55], &[TLV_CLIENT_KEY, 0, 32]);
        assert_eq!(&h[87..90], &[TLV_CLIENT_NAME, 0, 5]);
        assert_eq!(&h[90..], b"alice");
        // A name too long for the TLV is left out, never truncated.
        let long = "x".repeat(MAX_NAME_TLV + 1);
        let h = header_v2(
            "10.0.0.1:1".parse().unwrap(),
            "10.0.0.2:2".parse().unwrap(),
            None,
            Some(&long),
        );
        assert_eq!(h.len(), 16 + 12);
    }
}
