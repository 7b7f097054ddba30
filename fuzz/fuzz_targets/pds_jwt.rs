//! The PDS's session tokens (src/pds/tokens.rs): HS256 JWTs verified under the key every replica
//! shares, made in memory here.
//!
//! The first byte picks the mode: 0, the rest is a client's token; 1, the rest is
//! `header JSON 0x00 claims JSON` the target signs with the server's key, so the parsing behind
//! the signature check is reached; 2, the rest chooses the scope and text of a token the server
//! issues.
//! Properties: every refusal is UNAUTHENTICATED; a token is accepted only with the key's HMAC
//! over its first two parts, an HS256 header, the server's audience and an expiry to come, and
//! its claims are the token's; every token the server issues verifies to what it was issued with.
#![no_main]

use std::sync::LazyLock;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use libfuzzer_sys::fuzz_target;
use quintet::{
    error::Error,
    pds::tokens::{Claims, JwtKeys, Scope},
};
use quintet_fuzz::{Input, b64url, now, text};
use ring::hmac;
use serde_json::Value;

const KEY: &[u8; 32] = b"fuzzing session tokens, no users";
const AUDIENCE: &str = "did:web:pds.fuzz";

static KEYS: LazyLock<JwtKeys> = LazyLock::new(|| JwtKeys::from_key(KEY, AUDIENCE));
static HMAC_KEY: LazyLock<hmac::Key> = LazyLock::new(|| hmac::Key::new(hmac::HMAC_SHA256, KEY));

fuzz_target!(|bytes: &[u8]| {
    let mut input = Input::new(bytes);
    match input.byte() % 3 {
        0 => {
            let token = text(input.rest());
            check(&token);
        }
        1 => {
            let header = input.until(0);
            let claims = input.rest();
            let signed = format!("{}.{}", b64url(header), b64url(claims));
            let tag = hmac::sign(&HMAC_KEY, signed.as_bytes());
            let token = format!("{signed}.{}", b64url(tag.as_ref()));
            check(&token);
        }
        _ => issued(&mut input),
    }
});

fn check(token: &str) {
    let claims = match KEYS.verify(token) {
        Ok(claims) => claims,
        Err(error) => {
            assert!(matches!(error, Error::Unauthenticated(_)), "{error:?}");
            return;
        }
    };
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, tag] = parts[..] else {
        panic!("accepted a token of {} parts", parts.len());
    };
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .expect("an accepted tag is base64url");
    assert!(
        hmac::verify(&HMAC_KEY, format!("{header}.{payload}").as_bytes(), &tag).is_ok(),
        "accepted without the key's HMAC"
    );
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url")).unwrap();
    assert_eq!(header["alg"], "HS256");
    let payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).unwrap();
    assert_eq!(claims.aud, AUDIENCE);
    assert!(claims.exp > now(), "accepted an expired token");
    assert_eq!(payload["aud"], AUDIENCE);
    assert_eq!(payload["sub"].as_str(), Some(claims.sub.as_str()));
    assert_eq!(payload["jti"].as_str(), Some(claims.jti.as_str()));
    assert_eq!(payload["exp"].as_i64(), Some(claims.exp));
    assert_eq!(
        payload.get("sid").and_then(Value::as_str),
        claims.sid.as_deref()
    );
}

fn issued(input: &mut Input) {
    let scope = [Scope::Access, Scope::AppPass, Scope::Refresh][usize::from(input.byte() % 3)];
    let did = text(input.until(0));
    let jti = text(input.until(0));
    let sid = (!input.is_empty()).then(|| text(input.rest()));
    let token = KEYS.issue(scope, &did, &jti, sid.as_deref());
    let claims: Claims = KEYS
        .verify(&token)
        .unwrap_or_else(|e| panic!("an issued token is refused: {e}"));
    assert_eq!(
        (claims.scope, claims.sub, claims.jti, claims.sid),
        (scope, did, jti, sid)
    );
    check(&token);
}
