//! The handshake's CPU cost, side by side in one run: X25519 as volley computes it (AWS-LC,
//! plugged into snow) against curve25519-dalek, which snow uses by default — a public key from a
//! private one and a shared secret — and a whole IK handshake (INIT written, answered, ACCEPT
//! read), and the responder's half of it alone (what `handshakes/s/core` counts), with and
//! without an allow-list deciding on the client's key.
//!
//! `cargo bench -p volley-lab --bench handshake`

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use criterion::{Criterion, criterion_group, criterion_main};
use curve25519_dalek::montgomery::MontgomeryPoint;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use std::hint::black_box;
use volley_proto::StaticKeypair;
use volley_proto::allow::AllowList;
use volley_proto::crypto::{InitiatorHandshake, Response, Verdict, respond};

fn x25519(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let (mut mine, mut theirs) = ([0u8; 32], [0u8; 32]);
    rng.fill_bytes(&mut mine);
    rng.fill_bytes(&mut theirs);
    let mut g = c.benchmark_group("X25519");
    g.bench_function("public key, AWS-LC (volley)", |b| {
        b.iter(|| {
            PrivateKey::from_private_key(&X25519, black_box(&mine))
                .unwrap()
                .compute_public_key()
                .unwrap()
        })
    });
    g.bench_function("public key, curve25519-dalek with its table", |b| {
        b.iter(|| MontgomeryPoint::mul_base_clamped(black_box(mine)))
    });
    let their_public = MontgomeryPoint::mul_base_clamped(theirs);
    let key = PrivateKey::from_private_key(&X25519, &mine).unwrap();
    let peer = UnparsedPublicKey::new(&X25519, their_public.0);
    g.bench_function("shared secret, AWS-LC (volley)", |b| {
        b.iter(|| agreement::agree(&key, black_box(&peer), (), |s| Ok(s[0])).unwrap())
    });
    g.bench_function("shared secret, curve25519-dalek", |b| {
        b.iter(|| black_box(their_public).mul_clamped(black_box(mine)))
    });
    g.finish();
}

/// The client's INIT to `server`, written into `m1`: the handshake under way and the INIT's length.
fn initiate(
    client: &StaticKeypair,
    server: &StaticKeypair,
    prologue: &[u8; 32],
    m1: &mut [u8],
    rng: &mut ChaCha20Rng,
) -> (InitiatorHandshake, usize) {
    InitiatorHandshake::start(
        client,
        &server.public(),
        prologue,
        &[1, 2, 3, 4, 1],
        m1,
        rng,
    )
    .expect("start")
}

fn ik_handshake(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let server = StaticKeypair::generate(&mut rng);
    let client = StaticKeypair::generate(&mut rng);
    let prologue = [7u8; 32];
    let accept = |_: &volley_proto::PublicKey, _: &[u8]| Verdict::Accept([9, 9, 9, 9, 1]);
    c.bench_function("IK handshake, both sides", |b| {
        b.iter(|| {
            let (mut m1, mut m2, mut p1, mut p2) = ([0u8; 256], [0u8; 256], [0u8; 256], [0u8; 256]);
            let (init, n1) = initiate(&client, &server, &prologue, &mut m1, &mut rng);
            let Response::Accepted { msg2_len, .. } = respond(
                &server,
                &prologue,
                &m1[..n1],
                &mut p1,
                &mut rng,
                accept,
                &mut m2,
            )
            .expect("respond") else {
                panic!("refused")
            };
            black_box(init.finish(&m2[..msg2_len], &mut p2).expect("finish"))
        })
    });
    // The server's share alone (what `handshakes/s/core` counts): read INIT, write ACCEPT.
    let (mut m1, mut m2, mut p1) = ([0u8; 256], [0u8; 256], [0u8; 256]);
    let (_init, n1) = initiate(&client, &server, &prologue, &mut m1, &mut rng);
    c.bench_function("IK handshake, responder only", |b| {
        b.iter(|| {
            black_box(
                respond(
                    &server,
                    &prologue,
                    black_box(&m1[..n1]),
                    &mut p1,
                    &mut rng,
                    accept,
                    &mut m2,
                )
                .expect("respond"),
            )
        })
    });
    // With an allow-list of 10,000 keys deciding (listed: the whole handshake; unlisted: message
    // 1 read, nothing written).
    let mut list = AllowList::new();
    for _ in 0..10_000 {
        list.insert(StaticKeypair::generate(&mut rng).public(), None);
    }
    list.insert(client.public(), Some("bench"));
    let decide = |k: &volley_proto::PublicKey, _: &[u8]| {
        if list.contains(k) {
            Verdict::Accept([9, 9, 9, 9, 1])
        } else {
            Verdict::Refuse
        }
    };
    c.bench_function("IK handshake, responder only, listed key", |b| {
        b.iter(|| {
            black_box(
                respond(
                    &server,
                    &prologue,
                    black_box(&m1[..n1]),
                    &mut p1,
                    &mut rng,
                    decide,
                    &mut m2,
                )
                .expect("respond"),
            )
        })
    });
    let stranger = StaticKeypair::generate(&mut rng);
    let (_init, n1s) = initiate(&stranger, &server, &prologue, &mut m1, &mut rng);
    c.bench_function("IK handshake, responder only, unlisted key refused", |b| {
        b.iter(|| {
            black_box(
                respond(
                    &server,
                    &prologue,
                    black_box(&m1[..n1s]),
                    &mut p1,
                    &mut rng,
                    decide,
                    &mut m2,
                )
                .expect("respond"),
            )
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(3));
    targets = x25519, ik_handshake
}
criterion_main!(benches);
