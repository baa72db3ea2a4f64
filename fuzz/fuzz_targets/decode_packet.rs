//! `Packet::decode` on arbitrary bytes: it must never panic, and whatever decodes must re-encode
//! (through each message's own `encode`) to bytes that decode to the same message. Every message
//! but PROBE has exactly one encoding, so the re-encoding must also equal the input byte for byte;
//! a PROBE re-encodes to the same tag and service at the same padded length. The same bytes go to
//! `decode_versions`, whose split must account for every byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volley_proto::MAX_DATAGRAM_LEN;
use volley_proto::packet::Packet;

fuzz_target!(|data: &[u8]| {
    // A VERSIONS (PROTOCOL.md §3.9) splits into its versions and the 32-byte echo, exactly.
    if let Some((versions, echo)) = volley_proto::packet::decode_versions(data) {
        assert_eq!(data[0], 0);
        assert_eq!(usize::from(data[1]), versions.len());
        assert!(!versions.is_empty());
        assert_eq!(echo.len(), volley_proto::packet::VERSIONS_ECHO_LEN);
        assert_eq!(2 + versions.len() + echo.len(), data.len());
    }
    let Ok(packet) = Packet::decode(data) else {
        return;
    };
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    let n = match packet {
        Packet::Probe(p) => p.encode(&mut buf, data.len()),
        Packet::Offer(o) => o.encode(&mut buf),
        Packet::Init(i) => i.encode(&mut buf),
        Packet::Accept(a) => a.encode(&mut buf),
        Packet::CookieChange(c) => c.encode(&mut buf),
        Packet::Redirect(r) => r.encode(&mut buf),
        Packet::Data(h, ciphertext) => h.encode(&mut buf).map(|n| {
            buf[n..n + ciphertext.len()].copy_from_slice(ciphertext);
            n + ciphertext.len()
        }),
    }
    .expect("a decoded message re-encodes");
    let again = Packet::decode(&buf[..n]).expect("a re-encoded message decodes");
    match (packet, again) {
        (Packet::Probe(a), Packet::Probe(b)) => {
            assert_eq!(a.tag, b.tag, "probe tag round-trip");
            assert_eq!(a.service, b.service, "probe service round-trip");
            assert_eq!(n, data.len(), "probe padded to the length it came with");
            let head = 2 + 16 + 1 + a.service.len();
            assert_eq!(
                &buf[..head],
                &data[..head],
                "probe fields re-encode identically"
            );
        }
        (a, b) => {
            assert_eq!(a, b, "round-trip changed the message");
            assert_eq!(&buf[..n], data, "non-probe messages have one encoding");
        }
    }
});
