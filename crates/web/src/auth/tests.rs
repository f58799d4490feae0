//! The verifier against tokens made every way a client (or an attacker) might make them.

use super::*;
use axum::http::StatusCode;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const RSA_PRIVATE: &str = include_str!("testdata/test-only-rsa-private.pem");
const RSA_PUBLIC: &str = include_str!("testdata/test-only-rsa-public.pem");

fn issuance() -> Issuance {
    Issuance { issuer: "shop".into(), audience: "shop-api".into() }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Claims that pass every check, to be spoiled one at a time.
fn claims(role: &str, sub: &str) -> Value {
    json!({ "sub": sub, "role": role, "iss": "shop", "aud": "shop-api", "iat": now(), "exp": now() + 600 })
}

fn sign(key: &EncodingKey, algorithm: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn local() -> (LocalKey, Verifier) {
    let key = LocalKey::generate();
    let verifier = Verifier::new(KeySource::Local(key.clone()), &issuance()).unwrap();
    (key, verifier)
}

fn with(mut claims: Value, field: &str, value: Value) -> Value {
    claims[field] = value;
    claims
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test]
async fn tokens_of_the_local_key_name_their_caller() {
    let (key, verifier) = local();
    let signer = Signer::new(&key, issuance());
    let customer = Uuid::now_v7();
    let token = signer.sign(&customer.to_string(), Role::Customer, Duration::from_secs(60));
    assert_eq!(verifier.verify(&token).await, Ok(Caller::Customer(customer)));
    let token = signer.sign("ops-alice", Role::Admin, Duration::from_secs(60));
    assert_eq!(verifier.verify(&token).await, Ok(Caller::Admin { subject: "ops-alice".into() }));
}

#[tokio::test]
async fn an_accepted_token_is_remembered_until_it_expires_and_for_a_minute_at_most() {
    let (key, verifier) = local();
    let signer = Signer::new(&key, issuance());
    let started = std::time::Instant::now();
    let short = signer.sign("root", Role::Admin, Duration::from_secs(20));
    let long = signer.sign("root", Role::Admin, Duration::from_secs(3600));
    for token in [&short, &long] {
        assert!(verifier.verify(token).await.is_ok());
        assert_eq!(verifier.verify(token).await, Ok(Caller::Admin { subject: "root".into() }), "remembered");
    }
    let until = |token| verifier.remembered_until(token).unwrap().duration_since(started);
    assert!(until(&short) <= Duration::from_secs(20), "past its expiry: {:?}", until(&short));
    assert!(until(&long) <= Duration::from_secs(61), "past a minute: {:?}", until(&long));

    let stranger = Signer::new(&LocalKey::generate(), issuance()).sign("root", Role::Admin, Duration::from_secs(60));
    assert_eq!(verifier.verify(&stranger).await, Err(AuthError::BadSignature));
    assert_eq!(verifier.remembered_until(&stranger), None, "a refused token was remembered");
}

#[tokio::test]
async fn expiry_allows_only_a_small_clock_skew() {
    let (key, verifier) = local();
    let signer = Signer::new(&key, issuance());
    let issued = |ago: u64| SystemTime::now() - Duration::from_secs(ago);
    let hour = Duration::from_secs(3600);
    let skewed = signer.sign_issued_at("root", Role::Admin, issued(3600 + 5), hour);
    assert!(verifier.verify(&skewed).await.is_ok(), "expired 5 s ago is within the leeway");
    let expired = signer.sign_issued_at("root", Role::Admin, issued(3600 + LEEWAY.as_secs() + 5), hour);
    assert_eq!(verifier.verify(&expired).await, Err(AuthError::Expired));
    let early =
        sign(&key.encoding_key(), Algorithm::EdDSA, None, &with(claims("admin", "root"), "nbf", json!(now() + 300)));
    assert_eq!(verifier.verify(&early).await, Err(AuthError::NotYetValid));
}

#[tokio::test]
async fn a_changed_or_foreign_signature_is_refused() {
    let (key, verifier) = local();
    let token = Signer::new(&key, issuance()).sign("root", Role::Admin, Duration::from_secs(60));
    let (rest, signature) = token.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{rest}.{flipped}{}", &signature[1..]);
    assert_eq!(verifier.verify(&tampered).await, Err(AuthError::BadSignature));
    // Claims changed under the original signature: an admin made of a customer.
    let customer =
        Signer::new(&key, issuance()).sign(&Uuid::now_v7().to_string(), Role::Customer, Duration::from_secs(60));
    let parts: Vec<&str> = customer.split('.').collect();
    let promoted = format!("{}.{}.{}", parts[0], b64(&claims("admin", "root").to_string()), parts[2]);
    assert_eq!(verifier.verify(&promoted).await, Err(AuthError::BadSignature));
    let foreign = Signer::new(&LocalKey::generate(), issuance()).sign("root", Role::Admin, Duration::from_secs(60));
    assert_eq!(verifier.verify(&foreign).await, Err(AuthError::BadSignature));
}

#[tokio::test]
async fn another_audience_or_issuer_is_refused() {
    let (key, verifier) = local();
    let other = |issuer: &str, audience: &str| {
        let issuance = Issuance { issuer: issuer.into(), audience: audience.into() };
        Signer::new(&key, issuance).sign("root", Role::Admin, Duration::from_secs(60))
    };
    assert_eq!(verifier.verify(&other("shop", "billing-api")).await, Err(AuthError::WrongAudience));
    assert_eq!(verifier.verify(&other("someone-else", "shop-api")).await, Err(AuthError::WrongIssuer));
}

#[tokio::test]
async fn the_algorithm_is_the_keys_not_the_tokens() {
    let (key, verifier) = local();
    // The classic confusion: HS256 with the public key as the shared secret.
    let public = key.public_key_pem();
    let confused = sign(&EncodingKey::from_secret(public.as_bytes()), Algorithm::HS256, None, &claims("admin", "root"));
    assert_eq!(verifier.verify(&confused).await, Err(AuthError::WrongAlgorithm(Algorithm::HS256)));
    let raw = sign(
        &EncodingKey::from_secret(key.decoding_key().try_get_as_bytes().unwrap()),
        Algorithm::HS256,
        None,
        &claims("admin", "root"),
    );
    assert!(verifier.verify(&raw).await.is_err());
    // Unsigned.
    let unsigned = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&claims("admin", "root").to_string()));
    assert!(matches!(verifier.verify(&unsigned).await, Err(AuthError::Malformed(_))));
    // RS256 against an Ed25519 key.
    let rsa = sign(
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
        Algorithm::RS256,
        None,
        &claims("admin", "root"),
    );
    assert_eq!(verifier.verify(&rsa).await, Err(AuthError::WrongAlgorithm(Algorithm::RS256)));
}

#[tokio::test]
async fn claims_of_the_wrong_shape_are_malformed() {
    let (key, verifier) = local();
    let key = key.encoding_key();
    let refused = async |claims: Value| match verifier.verify(&sign(&key, Algorithm::EdDSA, None, &claims)).await {
        Err(AuthError::Malformed(detail)) => detail,
        other => panic!("{claims}: {other:?}"),
    };
    assert!(refused(claims("customer", "bob")).await.contains("UUID"));
    assert!(refused(claims("superuser", "root")).await.contains("role"));
    let mut no_role = claims("admin", "root");
    no_role.as_object_mut().unwrap().remove("role");
    assert!(refused(no_role).await.contains("role"));
    let mut no_expiry = claims("admin", "root");
    no_expiry.as_object_mut().unwrap().remove("exp");
    assert!(refused(no_expiry).await.contains("exp"));
    assert!(matches!(verifier.verify("not-a-token").await, Err(AuthError::Malformed(_))));
    assert!(matches!(verifier.verify("a.b.c").await, Err(AuthError::Malformed(_))));
}

#[tokio::test]
async fn a_pem_public_key_file_is_trusted_for_its_kind_of_key() {
    let dir = tempfile::tempdir().unwrap();
    let rsa_path = dir.path().join("rsa.pem");
    std::fs::write(&rsa_path, RSA_PUBLIC).unwrap();
    let verifier = Verifier::new(KeySource::PublicKeyFile(rsa_path), &issuance()).unwrap();
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    for algorithm in [Algorithm::RS256, Algorithm::PS512] {
        let token = sign(&rsa, algorithm, None, &claims("admin", "idp-admin"));
        assert_eq!(verifier.verify(&token).await, Ok(Caller::Admin { subject: "idp-admin".into() }), "{algorithm:?}");
    }
    let ed = LocalKey::generate();
    let ed_path = dir.path().join("ed.pem");
    std::fs::write(&ed_path, ed.public_key_pem()).unwrap();
    let verifier = Verifier::new(KeySource::PublicKeyFile(ed_path), &issuance()).unwrap();
    assert!(
        verifier.verify(&Signer::new(&ed, issuance()).sign("root", Role::Admin, Duration::from_secs(60))).await.is_ok()
    );
    assert!(verifier.verify(&sign(&rsa, Algorithm::RS256, None, &claims("admin", "root"))).await.is_err());

    let not_a_key = dir.path().join("nonsense.pem");
    std::fs::write(&not_a_key, "hello").unwrap();
    let error = Verifier::new(KeySource::PublicKeyFile(not_a_key), &issuance()).err().unwrap();
    assert!(matches!(error, KeyError::NotPublicKey { .. }), "{error}");
}

/// A JWKS endpoint on a local port that counts how often it is fetched.
struct JwksServer {
    url: String,
    document: Arc<std::sync::Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(document: Value) -> Self {
        let document = Arc::new(std::sync::Mutex::new(document));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (document.clone(), fetches.clone());
        let app = Router::new().route(
            "/jwks.json",
            axum::routing::get(async move || {
                counted.fetch_add(1, Ordering::SeqCst);
                axum::Json(served.lock().unwrap().clone())
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(axum::serve(listener, app).into_future());
        Self { url, document, fetches }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn rsa_jwk(kid: &str) -> Value {
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(kid.into());
    serde_json::to_value(jwk).unwrap()
}

fn ed_jwk(key: &LocalKey, kid: &str) -> Value {
    use base64::Engine;
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.decoding_key().try_get_as_bytes().unwrap());
    json!({ "kty": "OKP", "crv": "Ed25519", "use": "sig", "kid": kid, "x": x })
}

fn jwks_verifier(url: &str, refetch_interval: Duration) -> Verifier {
    let settings = JwksSettings { refetch_interval, ..JwksSettings::new(url) };
    Verifier::new(KeySource::Jwks(settings), &issuance()).unwrap()
}

#[tokio::test]
async fn jwks_keys_are_cached_and_fetched_again_for_a_new_key_id() {
    let local = LocalKey::generate();
    let (first, second) = (local.encoding_key(), EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap());
    let server = JwksServer::start(json!({ "keys": [ed_jwk(&local, "first")] })).await;
    let verifier = jwks_verifier(&server.url, Duration::ZERO);
    assert_eq!(server.fetches(), 0, "fetched before any token needed it");

    let token = sign(&first, Algorithm::EdDSA, Some("first"), &claims("admin", "root"));
    for _ in 0..20 {
        assert_eq!(verifier.verify(&token).await, Ok(Caller::Admin { subject: "root".into() }));
    }
    assert_eq!(server.fetches(), 1, "the key set is fetched once, not per token");

    // The provider rotates: a token signed with the new key makes the verifier look again.
    *server.document.lock().unwrap() = json!({ "keys": [ed_jwk(&local, "first"), rsa_jwk("second")] });
    let rotated = sign(&second, Algorithm::RS256, Some("second"), &claims("admin", "root"));
    assert!(verifier.verify(&rotated).await.is_ok());
    assert_eq!(server.fetches(), 2);
    assert!(verifier.verify(&rotated).await.is_ok() && verifier.verify(&token).await.is_ok());
    assert_eq!(server.fetches(), 2);
    // The JWK names RS256: a PS256 token with that key is refused.
    let other_algorithm = sign(&second, Algorithm::PS256, Some("second"), &claims("admin", "root"));
    assert_eq!(verifier.verify(&other_algorithm).await, Err(AuthError::WrongAlgorithm(Algorithm::PS256)));
}

#[tokio::test]
async fn made_up_key_ids_do_not_make_the_verifier_fetch_on_every_request() {
    let local = LocalKey::generate();
    let key = local.encoding_key();
    let server = JwksServer::start(json!({ "keys": [ed_jwk(&local, "real")] })).await;
    let verifier = jwks_verifier(&server.url, Duration::from_secs(3600));
    assert!(verifier.verify(&sign(&key, Algorithm::EdDSA, Some("real"), &claims("admin", "root"))).await.is_ok());
    for n in 0..10 {
        let forged = sign(&key, Algorithm::EdDSA, Some(&format!("made-up-{n}")), &claims("admin", "root"));
        assert_eq!(verifier.verify(&forged).await, Err(AuthError::UnknownKey));
    }
    assert_eq!(server.fetches(), 1);
}

#[tokio::test]
async fn shared_secrets_in_a_jwks_are_never_trusted() {
    let secret = EncodingKey::from_secret(b"published for all to see");
    let oct = json!({ "kty": "oct", "kid": "secret", "alg": "HS256", "k": b64("published for all to see") });
    let server = JwksServer::start(json!({ "keys": [oct] })).await;
    let verifier = jwks_verifier(&server.url, Duration::ZERO);
    let token = sign(&secret, Algorithm::HS256, Some("secret"), &claims("admin", "root"));
    assert_eq!(verifier.verify(&token).await, Err(AuthError::WrongAlgorithm(Algorithm::HS256)));
    // Even a token claiming an accepted algorithm finds no key under that id.
    let ed = LocalKey::generate().encoding_key();
    let token = sign(&ed, Algorithm::EdDSA, Some("secret"), &claims("admin", "root"));
    assert_eq!(verifier.verify(&token).await, Err(AuthError::UnknownKey));
}

#[tokio::test]
async fn an_unreachable_jwks_is_a_503_not_a_401() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let verifier = jwks_verifier(&format!("http://127.0.0.1:{port}/jwks.json"), Duration::ZERO);
    let token = sign(&LocalKey::generate().encoding_key(), Algorithm::EdDSA, Some("k"), &claims("admin", "root"));
    let error = verifier.verify(&token).await.unwrap_err();
    assert_eq!(error, AuthError::KeysUnavailable);
    assert_eq!(error.into_response().status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(matches!(
        Verifier::new(KeySource::Jwks(JwksSettings::new("file:///etc/keys")), &issuance()),
        Err(KeyError::JwksUrl(_))
    ));
}

#[test]
fn a_refused_token_is_a_401_problem_with_a_bearer_challenge() {
    let response = AuthError::Expired.into_response();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer error="invalid_token", error_description="the token has expired""#
    );
    assert_eq!(AuthError::Missing.into_response().headers()["www-authenticate"], "Bearer");
}

#[test]
fn the_openapi_modifier_requires_the_token_on_api_operations_only() {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem, PathsBuilder};
    let mut document = utoipa::openapi::OpenApiBuilder::new()
        .paths(
            PathsBuilder::new()
                .path("/api/things", PathItem::new(HttpMethod::Get, OperationBuilder::new().build()))
                .path("/health/live", PathItem::new(HttpMethod::Get, OperationBuilder::new().build())),
        )
        .build();
    utoipa::Modify::modify(&BearerAuth, &mut document);
    let document = serde_json::to_value(&document).unwrap();
    assert_eq!(document["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");
    assert_eq!(document["paths"]["/api/things"]["get"]["security"], json!([{ "bearerAuth": [] }]));
    assert!(document["paths"]["/api/things"]["get"]["responses"]["401"].is_object());
    assert!(document["paths"]["/health/live"]["get"]["security"].is_null());
}

#[test]
fn jwks_sets_parse_as_providers_publish_them() {
    // Shape of a real provider's document: an RSA signing key and an encryption key.
    let rsa =
        Jwk::from_encoding_key(&EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(), Algorithm::RS256).unwrap();
    let mut encryption = rsa.clone();
    encryption.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Encryption);
    let set: JwkSet = serde_json::from_value(json!({ "keys": [rsa, encryption] })).unwrap();
    let usable: Vec<_> = set.keys.iter().filter_map(verifier::jwk_algorithms).collect();
    assert_eq!(usable, vec![vec![Algorithm::RS256]]);
}

#[test]
fn the_token_comes_from_a_bearer_authorization_header() {
    use axum::http::{HeaderValue, header};
    let headers = |value: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    };
    assert_eq!(bearer_token(&headers("Bearer a.b.c")), Ok("a.b.c"));
    assert_eq!(bearer_token(&headers("bearer  a.b.c ")), Ok("a.b.c"));
    assert_eq!(bearer_token(&HeaderMap::new()), Err(AuthError::Missing));
    assert_eq!(bearer_token(&headers("Basic dXNlcjpwYXNz")), Err(AuthError::NotBearer));
    assert_eq!(bearer_token(&headers("a.b.c")), Err(AuthError::NotBearer));
}
