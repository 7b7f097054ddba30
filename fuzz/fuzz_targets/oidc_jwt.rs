//! The market's OpenID Connect ID-token verification (src/market/oidc.rs) without a network:
//! the issuer's key set is given in memory (the test-only RSA key of tests/fixtures/), and the
//! key set URL is not one that can be fetched.
//!
//! The first byte picks the mode: 0, the rest is a client's token; 1, the rest is
//! `header JSON 0x00 claims JSON` the target signs with the issuer's key, so that the claims'
//! parsing and checks behind the signature are reached; 2, the rest is the issuer's key set,
//! then a well-formed token signed by the fixture key is verified against it.
//! Properties: every refusal is UNAUTHENTICATED; a token is accepted only with a valid RS256
//! signature by the issuer's key over its first two parts, from an accepted issuer, for the
//! audience, not expired, with a verified email, and the identity is the claims'; a key set
//! verifies a token only if it publishes the token's key id.
#![no_main]

use std::sync::LazyLock;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use libfuzzer_sys::fuzz_target;
use quintet::{
    error::Error,
    market::oidc::{Identity, OidcConfig, OidcVerifier},
};
use quintet_fuzz::{
    Input, OIDC_AUDIENCE, OIDC_ISSUER, OIDC_KID, now, oidc_jwks, oidc_key, rs256_token, text,
};
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaKeyPair, UnparsedPublicKey};
use serde_json::{Value, json};

/// Clock skew the verifier tolerates.
const LEEWAY_SECONDS: i64 = 60;

static KEY: LazyLock<RsaKeyPair> = LazyLock::new(oidc_key);
static JWKS: LazyLock<String> = LazyLock::new(|| oidc_jwks(&KEY));
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
});
static VERIFIER: LazyLock<OidcVerifier> = LazyLock::new(|| {
    OidcVerifier::new(OidcConfig {
        // Not a URL any fetch can reach: every key the verifier has is the one given.
        jwks_url: "fuzz:no-network".to_owned(),
        issuers: vec![OIDC_ISSUER.to_owned()],
        audience: Some(OIDC_AUDIENCE.to_owned()),
    })
    .expect("a verifier")
});

fuzz_target!(|bytes: &[u8]| {
    let mut input = Input::new(bytes);
    match input.byte() % 3 {
        0 => {
            set_keys(JWKS.as_bytes());
            let token = text(input.rest());
            check(&token, verify(&token));
        }
        1 => {
            set_keys(JWKS.as_bytes());
            let header = input.until(0);
            let claims = input.rest();
            let token = rs256_token(&KEY, header, claims);
            check(&token, verify(&token));
        }
        _ => key_set(input.rest()),
    }
});

fn set_keys(jwks: &[u8]) -> bool {
    RUNTIME.block_on(VERIFIER.set_keys(jwks)).is_ok()
}

fn verify(token: &str) -> Result<Identity, Error> {
    RUNTIME.block_on(VERIFIER.verify(token))
}

fn part(part: &str) -> Value {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .expect("an accepted part is base64url");
    serde_json::from_slice(&bytes).expect("an accepted part is JSON")
}

fn check(token: &str, result: Result<Identity, Error>) {
    let identity = match result {
        Ok(identity) => identity,
        Err(error) => {
            assert!(matches!(error, Error::Unauthenticated(_)), "{error:?}");
            return;
        }
    };
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        panic!("accepted a token of {} parts", parts.len());
    };
    let signature = URL_SAFE_NO_PAD
        .decode(signature.trim_end_matches('='))
        .expect("an accepted signature is base64url");
    assert!(
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, KEY.public().as_ref())
            .verify(format!("{header}.{claims}").as_bytes(), &signature)
            .is_ok(),
        "accepted without the issuer's signature"
    );
    let header = part(header);
    assert_eq!(header["alg"], "RS256");
    let claims = part(claims);
    assert_eq!(claims["iss"], OIDC_ISSUER);
    let audience_ok = match &claims["aud"] {
        Value::String(aud) => aud == OIDC_AUDIENCE,
        Value::Array(auds) => auds.iter().any(|a| a == OIDC_AUDIENCE),
        _ => false,
    };
    assert!(
        audience_ok,
        "accepted for another audience: {}",
        claims["aud"]
    );
    let exp = claims["exp"].as_i64().expect("an expiry");
    assert!(exp + LEEWAY_SECONDS >= now(), "accepted an expired token");
    assert!(
        claims["email_verified"] == json!(true) || claims["email_verified"] == json!("true"),
        "accepted an unverified email"
    );
    assert_eq!(claims["sub"].as_str(), Some(identity.subject.as_str()));
    assert_eq!(claims["email"].as_str(), Some(identity.email.as_str()));
    assert!(!identity.subject.is_empty() && identity.subject.len() <= 255);
    assert!(identity.email.len() <= 255);
}

fn key_set(jwks: &[u8]) {
    // A key set that does not parse leaves the last one in force: start from none.
    set_keys(br#"{"keys": []}"#);
    let parsed = set_keys(jwks);
    let claims = json!({
        "iss": OIDC_ISSUER, "aud": OIDC_AUDIENCE, "sub": "fuzz-user", "exp": now() + 3600,
        "email": "user@fuzz.example", "email_verified": true,
    });
    let header = json!({"alg": "RS256", "kid": OIDC_KID, "typ": "JWT"});
    let token = rs256_token(
        &KEY,
        header.to_string().as_bytes(),
        claims.to_string().as_bytes(),
    );
    let result = verify(&token);
    if result.is_ok() {
        assert!(parsed, "verified with a key set that did not parse");
        // serde_json skips the fields the key set's type ignores without checking their escapes
        // (a lone surrogate), so the document may not read as a JSON value: then no cross-check.
        if let Ok(document) = serde_json::from_slice::<Value>(jwks) {
            let published = document["keys"]
                .as_array()
                .is_some_and(|keys| keys.iter().any(|k| k["kid"] == OIDC_KID));
            assert!(
                published,
                "verified with a key set without key id {OIDC_KID}"
            );
        }
    }
    check(&token, result);
}
