//! The handshake's CPU cost, side by side in one run: an ephemeral X25519 public key as volley
//! computes it (with the precomputed basepoint table the workspace enables), the Edwards-form
//! basepoint multiplication inside it with the table and without it (what snow's dependency gets
//! with no features: the key then costs the difference more), and a whole NK handshake (INIT
//! written, answered, ACCEPT read).
//!
//! `cargo bench -p volley-lab --bench handshake`

use criterion::{Criterion, criterion_group, criterion_main};
use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use std::hint::black_box;
use volley_proto::StaticKeypair;
use volley_proto::crypto::{InitiatorHandshake, respond};

fn ephemeral_key(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    let scalar = Scalar::from_bytes_mod_order(bytes);
    let mut g = c.benchmark_group("ephemeral key");
    g.bench_function(
        "X25519 public key, with the table (what volley does)",
        |b| b.iter(|| MontgomeryPoint::mul_base_clamped(black_box(bytes))),
    );
    g.bench_function("Edwards basepoint multiplication, with the table", |b| {
        b.iter(|| EdwardsPoint::mul_base(black_box(&scalar)))
    });
    g.bench_function(
        "Edwards basepoint multiplication, variable-base (without the table)",
        |b| b.iter(|| black_box(&scalar) * ED25519_BASEPOINT_POINT),
    );
    g.finish();
}

fn nk_handshake(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let server = StaticKeypair::generate(&mut rng);
    let prologue = [7u8; 32];
    c.bench_function("NK handshake, both sides", |b| {
        b.iter(|| {
            let (mut m1, mut m2, mut p1, mut p2) = ([0u8; 256], [0u8; 256], [0u8; 256], [0u8; 256]);
            let (init, n1) = InitiatorHandshake::start(
                &server.public(),
                &prologue,
                &[1, 2, 3, 4],
                &mut m1,
                &mut rng,
            )
            .expect("start");
            let (_, n2, _) = respond(
                &server,
                &prologue,
                &m1[..n1],
                &mut p1,
                &mut rng,
                |_| [9, 9, 9, 9],
                &mut m2,
            )
            .expect("respond");
            black_box(init.finish(&m2[..n2], &mut p2).expect("finish"))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(3));
    targets = ephemeral_key, nk_handshake
}
criterion_main!(benches);
