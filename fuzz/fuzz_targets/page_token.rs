//! Page tokens (src/page_token.rs): decoding and authenticating what a client sends back, with
//! the key a server would load from `core.server_keys` made in memory.
//!
//! The first byte picks the mode. Even: the rest is a client's token, decoded as each listing's
//! position type. Odd: the rest is `query length (1) | query | age in seconds (4) | payload`,
//! sealed by the target with the server's key following the documented layout, so that the
//! payload's parsing behind the tag is reached.
//! Properties: every refusal is INVALID_ARGUMENT naming `page_token`; a token decodes only if its
//! tag is the key's; a sealed token decodes exactly when its query matches, it is at most a week
//! old and its payload is the position type; a decoded position re-encodes to a token that
//! decodes to it again.
#![no_main]

use std::sync::LazyLock;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use libfuzzer_sys::fuzz_target;
use quintet::{error::Error, page_token::PageTokens};
use quintet_fuzz::{Input, text};
use ring::{digest, hmac};
use serde::{Serialize, de::DeserializeOwned};

const KEY: &[u8; 32] = b"fuzzing page tokens, not serving";
const MAX_AGE_SECONDS: u64 = 7 * 24 * 3600;
/// The longest token the module accepts.
const MAX_TOKEN_LEN: usize = 4096;

static TOKENS: LazyLock<PageTokens> = LazyLock::new(|| PageTokens::from_key(KEY));
static HMAC_KEY: LazyLock<hmac::Key> = LazyLock::new(|| hmac::Key::new(hmac::HMAC_SHA256, KEY));

fuzz_target!(|bytes: &[u8]| {
    let mut input = Input::new(bytes);
    if input.byte() % 2 == 0 {
        let token = text(input.rest());
        client_token::<(time::OffsetDateTime, String)>(&token);
        client_token::<(time::OffsetDateTime, uuid::Uuid)>(&token);
        client_token::<String>(&token);
        client_token::<serde_json::Value>(&token);
    } else {
        let length = usize::from(input.byte());
        let query = text(input.take(length));
        let age = u64::from(input.u32());
        let payload = input.rest();
        let token = seal(&query, age, payload);
        sealed::<(time::OffsetDateTime, String)>(&query, age, payload, &token);
        sealed::<(time::OffsetDateTime, uuid::Uuid)>(&query, age, payload, &token);
        sealed::<(i64, String)>(&query, age, payload, &token);
        sealed::<serde_json::Value>(&query, age, payload, &token);
    }
});

/// A token as the module's layout describes it: version 1 | issued (8, BE) | SHA-256(query)[..8]
/// | payload | HMAC-SHA256[..16].
fn seal(query: &str, age: u64, payload: &[u8]) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
    let mut bytes = vec![1u8];
    bytes.extend_from_slice(&now.saturating_sub(age).to_be_bytes());
    bytes.extend_from_slice(&digest::digest(&digest::SHA256, query.as_bytes()).as_ref()[..8]);
    bytes.extend_from_slice(payload);
    let tag = hmac::sign(&HMAC_KEY, &bytes);
    bytes.extend_from_slice(&tag.as_ref()[..16]);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn refused_properly(error: &Error) {
    assert!(
        matches!(error, Error::InvalidArgument { field, .. } if field == "page_token"),
        "{error:?}"
    );
}

/// A decoded position re-encodes to a token that decodes to it again.
fn round_trips<T>(query: &str, position: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let token = TOKENS.encode(query, position);
    let again: Option<T> = TOKENS.decode(query, &token).expect("a fresh token decodes");
    assert_eq!(again.as_ref(), Some(position));
}

fn client_token<T>(token: &str)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    match TOKENS.decode::<T>("q", token) {
        Ok(None) => assert!(token.is_empty()),
        Ok(Some(position)) => {
            let bytes = URL_SAFE_NO_PAD
                .decode(token)
                .expect("a decoded token is base64url");
            let (signed, tag) = bytes.split_at(bytes.len() - 16);
            assert_eq!(
                &hmac::sign(&HMAC_KEY, signed).as_ref()[..16],
                tag,
                "a token decoded without the key's tag"
            );
            round_trips("q", &position);
        }
        Err(error) => refused_properly(&error),
    }
}

fn sealed<T>(query: &str, age: u64, payload: &[u8], token: &str)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let parsed = serde_json::from_slice::<T>(payload).ok();
    match TOKENS.decode::<T>(query, token) {
        Ok(position) => {
            assert!(age <= MAX_AGE_SECONDS, "a token {age} s old was accepted");
            assert!(
                token.len() <= MAX_TOKEN_LEN,
                "a token too long was accepted"
            );
            assert_eq!(position, parsed, "the position is the payload");
            if let Some(position) = position {
                round_trips(query, &position);
            }
        }
        Err(error) => {
            refused_properly(&error);
            // A second may pass between sealing and decoding.
            assert!(
                age >= MAX_AGE_SECONDS || parsed.is_none() || token.len() > MAX_TOKEN_LEN,
                "a fresh token of a valid position was refused: {error}"
            );
        }
    }
    let other = format!("{query}?");
    if let Err(error) = TOKENS.decode::<T>(&other, token) {
        refused_properly(&error);
    } else {
        panic!("a token was accepted for another query");
    }
}
