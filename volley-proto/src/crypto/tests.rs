//! Unit tests of the handshake, the suites and the key chain.

use super::noise::SeededResolver;
use super::*;
use rand_chacha::ChaCha20Rng;
use snow::resolvers::CryptoResolver;

#[test]
fn x25519_matches_rfc7748_and_refuses_small_order_points() {
    // RFC 7748 §6.1: Alice's private key, her public key, and the shared secret with Bob.
    let alice = StaticKeypair::from_private_hex(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    )
    .unwrap();
    assert_eq!(
        alice.public().to_hex(),
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    );
    let bob =
        PublicKey::from_hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
            .unwrap();
    let mut dh = SeededResolver::new(&mut ChaCha20Rng::seed_from_u64(1), Some(&alice))
        .resolve_dh(&snow::params::DHChoice::Curve25519)
        .unwrap();
    dh.set(&alice.private);
    let mut shared = [0u8; 32];
    dh.dh(&bob.0, &mut shared).unwrap();
    assert_eq!(
        to_hex(&shared),
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    );
    // A peer key of order 1, 2 or 4 makes the shared secret all zeros: refused, not used.
    for small in [[0u8; 32], {
        let mut one = [0u8; 32];
        one[0] = 1;
        one
    }] {
        assert!(dh.dh(&small, &mut shared).is_err());
    }
}

/// Runs IK between `client` and `server` (as the client believes it is `server_pub`)
/// under `pro`, the server deciding by `verdict`.
fn run_ik(
    client: &StaticKeypair,
    server_pub: &PublicKey,
    server: &StaticKeypair,
    pro: [u8; 32],
    verdict: impl FnOnce(&PublicKey, &[u8]) -> Verdict,
    rng: &mut ChaCha20Rng,
) -> Result<(Response, Option<InitiatorHandshake>, Vec<u8>), CryptoError> {
    let mut m1 = [0u8; 256];
    let (init, n1) =
        InitiatorHandshake::start(client, server_pub, &pro, &[1, 2, 3, 4, 5], &mut m1, rng)?;
    let mut p1 = [0u8; 256];
    let mut m2 = [0u8; 256];
    let r = respond(server, &pro, &m1[..n1], &mut p1, rng, verdict, &mut m2)?;
    let n2 = match &r {
        Response::Accepted { msg2_len, .. } => *msg2_len,
        Response::Refused { .. } => 0,
    };
    Ok((r, Some(init), m2[..n2].to_vec()))
}

#[test]
fn a1_ik_authenticates_the_client_key_and_derives_matching_keys() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let server = StaticKeypair::generate(&mut rng);
    let client = StaticKeypair::generate(&mut rng);
    let mut seen = None;
    let (r, init, m2) = run_ik(
        &client,
        &server.public(),
        &server,
        [3; 32],
        |k, p| {
            seen = Some((*k, p.to_vec()));
            Verdict::Accept([9, 9, 9, 9, 1])
        },
        &mut rng,
    )
    .unwrap();
    assert_eq!(seen, Some((client.public(), vec![1, 2, 3, 4, 5])));
    let Response::Accepted {
        client: k, split, ..
    } = r
    else {
        panic!("refused")
    };
    assert_eq!(k, client.public());
    // 101-byte message 1 (e, encrypted s, payload) and 53-byte message 2.
    assert_eq!(m2.len(), 32 + 5 + 16);
    let mut p2 = [0u8; 256];
    let (np2, csplit) = init.unwrap().finish(&m2, &mut p2).unwrap();
    assert_eq!(&p2[..np2], &[9, 9, 9, 9, 1]);
    assert_eq!((csplit.k1, csplit.k2), (split.k1, split.k2));
    for suite in [Suite::ChaCha20Poly1305, Suite::Aes256Gcm] {
        let c = SessionKeys::from_split(&csplit, suite, crate::stream::Role::Client);
        let s = SessionKeys::from_split(&split, suite, crate::stream::Role::Server);
        let mut buf = [0u8; 64];
        buf[..5].copy_from_slice(b"hello");
        let n = c.seal.seal(7, b"hdr", &mut buf, 5).unwrap();
        assert_eq!(s.open.open(7, b"hdr", &mut buf[..n]).unwrap(), b"hello");
        let n = s.seal.seal(8, b"hdr", &mut buf, 2).unwrap();
        assert!(
            s.open.open(8, b"hdr", &mut buf[..n]).is_err(),
            "directions differ"
        );
    }
}

#[test]
fn a1_a_known_clients_static_secret_is_reused_and_a_refused_ones_is_not_kept() {
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    let server = StaticKeypair::generate(&mut rng);
    let (client, stranger) = (
        StaticKeypair::generate(&mut rng),
        StaticKeypair::generate(&mut rng),
    );
    let secrets = Arc::new(StaticSecrets::default());
    let verdict = |k: &PublicKey, _: &[u8]| {
        if *k == client.public() {
            Verdict::Accept([1, 2, 3, 4, 1])
        } else {
            Verdict::Refuse
        }
    };
    for round in 0..3 {
        for who in [&client, &stranger] {
            let mut m1 = [0u8; 256];
            let (init, n1) = InitiatorHandshake::start(
                who,
                &server.public(),
                &[0; 32],
                &[0; 5],
                &mut m1,
                &mut rng,
            )
            .unwrap();
            let (mut p1, mut m2) = ([0u8; 256], [0u8; 256]);
            let r = respond_with(
                &server,
                Some(&secrets),
                &[0; 32],
                &m1[..n1],
                &mut p1,
                &mut rng,
                verdict,
                &mut m2,
            )
            .unwrap();
            match r {
                Response::Accepted {
                    msg2_len, split, ..
                } => {
                    // With the secret from the store (rounds 1, 2) the keys still match.
                    let (_, mine) = init.finish(&m2[..msg2_len], &mut [0u8; 256]).unwrap();
                    assert_eq!((mine.k1, mine.k2), (split.k1, split.k2), "round {round}");
                }
                Response::Refused { .. } => assert_eq!(who.public(), stranger.public()),
            }
        }
        assert_eq!(
            secrets.len(),
            1,
            "only the accepted client's secret is kept"
        );
    }
    secrets.retain(|k| *k != client.public());
    assert!(secrets.is_empty());
}

#[test]
fn a1_a_refused_client_gets_no_message_2() {
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let server = StaticKeypair::generate(&mut rng);
    let client = StaticKeypair::generate(&mut rng);
    let (r, _, m2) = run_ik(
        &client,
        &server.public(),
        &server,
        [0; 32],
        |_, _| Verdict::Refuse,
        &mut rng,
    )
    .unwrap();
    assert!(matches!(r, Response::Refused { client: k } if k == client.public()));
    assert!(m2.is_empty());
}

#[test]
fn wrong_prologue_or_key_fails() {
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let server = StaticKeypair::generate(&mut rng);
    let other = StaticKeypair::generate(&mut rng);
    let client = StaticKeypair::generate(&mut rng);
    let accept = |_: &PublicKey, _: &[u8]| Verdict::Accept([0; 5]);
    assert!(run_ik(&client, &other.public(), &server, [0; 32], accept, &mut rng).is_err());
    let mut m1 = [0u8; 256];
    let (_, n1) =
        InitiatorHandshake::start(&client, &server.public(), &[0; 32], &[], &mut m1, &mut rng)
            .unwrap();
    let mut p = [0u8; 256];
    let mut m2 = [0u8; 256];
    assert!(
        respond(
            &server,
            &[1; 32],
            &m1[..n1],
            &mut p,
            &mut rng,
            accept,
            &mut m2
        )
        .is_err()
    );
}

#[test]
fn a6_suites_are_chosen_by_both_sides() {
    use CipherPolicy::*;
    assert_eq!(PreferAes.choose(PreferAes.offer()), Some(Suite::Aes256Gcm));
    assert_eq!(
        ChaCha20Poly1305.choose(PreferAes.offer()),
        Some(Suite::ChaCha20Poly1305)
    );
    assert_eq!(
        PreferAes.choose(ChaCha20Poly1305.offer()),
        Some(Suite::ChaCha20Poly1305)
    );
    assert_eq!(PreferAes.choose(0), None);
    assert_eq!(PreferAes.choose(SUITE_AES_256_GCM), Some(Suite::Aes256Gcm));
    assert_eq!(ChaCha20Poly1305.choose(SUITE_AES_256_GCM), None);
    assert_eq!(Auto.offer() & SUITE_AES_256_GCM != 0, aes_hardware());
}

#[test]
fn a3_key_updates_form_a_chain_and_advance_skips_steps() {
    let k = DirectionKey::new(Suite::Aes256Gcm, &[5; 32]);
    let two = k.next().next();
    assert_eq!(k.advance(2).raw, two.raw);
    assert_ne!(k.next().raw, k.raw);
    let mut buf = [0u8; 32];
    let n = two.seal(1, b"", &mut buf, 3).unwrap();
    // (A failed open leaves its buffer unspecified: try each key on a copy.)
    let mut copy = buf;
    assert!(k.open(1, b"", &mut copy[..n]).is_err());
    assert!(k.advance(2).open(1, b"", &mut buf[..n]).is_ok());
}

#[test]
fn key_text_round_trips() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let kp = StaticKeypair::generate(&mut rng);
    let back = StaticKeypair::from_private_hex(&kp.private_hex()).unwrap();
    assert_eq!(back.public(), kp.public());
    assert_eq!(
        PublicKey::from_hex(&kp.public().to_hex()).unwrap(),
        kp.public()
    );
    assert!(PublicKey::from_hex("zz").is_err());
    assert!(!format!("{kp:?}").contains(&kp.private_hex()));
}
