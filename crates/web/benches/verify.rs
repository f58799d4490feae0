//! What checking a token costs (not a test): `cargo bench -p web --bench verify`.
//!
//! Times `Verifier::verify` (header, signature, claims, caller) on one core for a token of the
//! local Ed25519 key, and for an RS256 token against a PEM public key (what an identity
//! provider usually issues), and `Signer::sign` for comparison. Prints microseconds per token.

use std::hint::black_box;
use std::time::{Duration, Instant};
use web::auth::{Issuance, KeySource, LocalKey, Role, Signer, Verifier};

const RSA_PRIVATE: &str = include_str!("../src/auth/testdata/test-only-rsa-private.pem");
const RSA_PUBLIC: &str = include_str!("../src/auth/testdata/test-only-rsa-public.pem");

fn issuance() -> Issuance {
    Issuance { issuer: "shop".into(), audience: "shop-api".into() }
}

/// Mean microseconds per call of `run` over `iterations`, after a warm-up.
fn per_call(iterations: u32, mut run: impl FnMut()) -> f64 {
    for _ in 0..iterations / 10 {
        run();
    }
    let started = Instant::now();
    for _ in 0..iterations {
        run();
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let key = LocalKey::generate();
    let signer = Signer::new(&key, issuance());
    let verifier = Verifier::new(KeySource::Local(key.clone()), &issuance()).unwrap();
    let token = signer.sign("0190a0a0-0000-7000-8000-000000000001", Role::Customer, Duration::from_secs(3600));

    let ed_verify = per_call(20_000, || {
        black_box(runtime.block_on(verifier.verify(black_box(&token))).unwrap());
    });
    let ed_sign = per_call(20_000, || {
        black_box(signer.sign("0190a0a0-0000-7000-8000-000000000001", Role::Customer, Duration::from_secs(3600)));
    });

    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("rsa.pem");
    std::fs::write(&public, RSA_PUBLIC).unwrap();
    let rsa_verifier = Verifier::new(KeySource::PublicKeyFile(public), &issuance()).unwrap();
    let claims = serde_json::json!({
        "sub": "admin", "role": "admin", "iss": "shop", "aud": "shop-api",
        "iat": jsonwebtoken::get_current_timestamp(), "exp": jsonwebtoken::get_current_timestamp() + 3600,
    });
    let rsa_key = jsonwebtoken::EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let rsa_token =
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &rsa_key).unwrap();
    let rsa_verify = per_call(5_000, || {
        black_box(runtime.block_on(rsa_verifier.verify(black_box(&rsa_token))).unwrap());
    });

    println!("token check, one core            µs per token");
    println!("verify EdDSA (local key)         {ed_verify:>8.1}");
    println!("verify RS256 (2048-bit PEM key)  {rsa_verify:>8.1}");
    println!("sign EdDSA (shop token)          {ed_sign:>8.1}");
}
