//! The datapath's per-datagram CPU costs (docs/BENCHMARKS.md §1), for comparison with the anchors of
//! this kind of machine: HMAC-SHA256 ≈ 0.15 µs, ChaCha20-Poly1305 seal of 64 B ≈ 0.2 µs, and a
//! user-space budget per probe of ≤ 0.5 µs. Decode of a PROBE and a DATA header, a cookie
//! minted and verified, an OFFER encoded, 64 and 1,200 bytes sealed and opened under each DATA suite
//! (ChaCha20-Poly1305, AES-256-GCM), and a whole PROBE → OFFER
//! through the server endpoint.
//!
//! `cargo bench -p volley-lab --bench datapath`

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use volley_proto::cookie::{CookieBinding, CookieJar};
use volley_proto::crypto::{SessionKeys, Suite};
use volley_proto::packet::{DataHeader, LoadHint, Offer, Packet, Probe, Tag};
use volley_proto::{
    AnswerPolicy, MAX_DATAGRAM_LEN, PROBE_MIN_LEN, ServerConfig, ServerEndpoint, StaticKeypair,
};

fn probe_bytes() -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    let n = Probe {
        tag: Tag([7; 16]),
        service: b"echo",
    }
    .encode(&mut buf, PROBE_MIN_LEN)
    .unwrap();
    buf[..n].to_vec()
}

fn decode(c: &mut Criterion) {
    let probe = probe_bytes();
    let mut data = [0u8; 64];
    DataHeader {
        receiver_id: 9,
        counter: 1,
        key_phase: 0,
    }
    .encode(&mut data)
    .unwrap();
    let mut g = c.benchmark_group("decode");
    g.bench_function("PROBE (256 B)", |b| {
        b.iter(|| Packet::decode(black_box(&probe)).is_ok())
    });
    g.bench_function("DATA (64 B)", |b| {
        b.iter(|| Packet::decode(black_box(&data)).is_ok())
    });
    g.finish();
}

fn cookie(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let now = Instant::now();
    let jar = CookieJar::new(
        now,
        Duration::from_secs(30),
        Duration::from_secs(10),
        &mut rng,
    );
    let tag = Tag([3; 16]);
    let binding = CookieBinding {
        client: "192.0.2.1:50000".parse::<SocketAddr>().unwrap(),
        server: "198.51.100.1:4433".parse::<SocketAddr>().unwrap(),
        tag: &tag,
        service: b"echo",
    };
    let minted = jar.mint(now, &binding);
    let mut g = c.benchmark_group("cookie");
    g.bench_function("mint", |b| b.iter(|| jar.mint(now, black_box(&binding))));
    g.bench_function("verify", |b| {
        b.iter(|| jar.verify(now, black_box(&minted), &binding).is_ok())
    });
    g.finish();
}

fn offer(c: &mut Criterion) {
    let cookie = [5u8; 39];
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    c.bench_function("OFFER encode", |b| {
        b.iter(|| {
            Offer {
                tag: Tag([1; 16]),
                server_key_id: volley_proto::KeyId([2; 8]),
                load: LoadHint::default(),
                held_us: 0,
                cookie: black_box(&cookie),
            }
            .encode(&mut buf)
            .unwrap()
        })
    });
}

fn aead(c: &mut Criterion) {
    let aad = [0u8; 14];
    for suite in [Suite::ChaCha20Poly1305, Suite::Aes256Gcm] {
        let keys = SessionKeys::new(suite, &[1; 32], &[1; 32]);
        for len in [64usize, 1200] {
            let mut g = c.benchmark_group(format!("{suite:?}, {len} B"));
            let mut buf = vec![0u8; len + 16];
            g.bench_function("seal", |b| {
                b.iter(|| keys.seal.seal(1, &aad, black_box(&mut buf), len).unwrap())
            });
            let mut sealed = vec![0u8; len + 16];
            keys.seal.seal(1, &aad, &mut sealed, len).unwrap();
            g.bench_function("open", |b| {
                b.iter(|| {
                    let mut x = sealed.clone();
                    keys.open.open(1, &aad, black_box(&mut x)).is_ok()
                })
            });
            g.finish();
        }
    }
}

fn responder(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut cfg = ServerConfig::new(StaticKeypair::generate(&mut rng));
    cfg.answer = AnswerPolicy::Immediate;
    // The same instant for every iteration: no refill, so no budget may bind.
    cfg.admission.probes_per_sec = u32::MAX;
    let now = Instant::now();
    let mut server = ServerEndpoint::new(now, cfg, Box::new(ChaCha20Rng::seed_from_u64(3)));
    let probe = probe_bytes();
    let from: SocketAddr = "192.0.2.1:50000".parse().unwrap();
    let local: SocketAddr = "198.51.100.1:4433".parse().unwrap();
    let mut out = [0u8; MAX_DATAGRAM_LEN];
    c.bench_function("PROBE → OFFER (ServerEndpoint::handle)", |b| {
        b.iter(|| {
            server
                .handle(now, from, local, black_box(&probe), &mut out)
                .is_some()
        })
    });
}

criterion_group!(benches, decode, cookie, offer, aead, responder);
criterion_main!(benches);
