//! Opaque page tokens for keyset pagination.
//!
//! A token carries the last row's sort key (any serde value), the moment it was issued, and a
//! fingerprint of the query it belongs to, all authenticated with HMAC-SHA256 under a key every
//! replica loads from `core.server_keys`. Decoding refuses, with INVALID_ARGUMENT naming
//! `page_token`, anything that is not base64, was not issued by this database's servers, belongs
//! to another query (other filters or sort), or is older than [`MAX_AGE`].
//!
//! Layout before base64url: version (1) | issued_at seconds (8, BE) | query fingerprint (8) |
//! payload JSON (n) | tag (16).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{
    digest, hmac,
    rand::{SecureRandom, SystemRandom},
};
use serde::{Serialize, de::DeserializeOwned};
use sqlx::PgPool;

use crate::error::{Error, Result};

const VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 8 + 8;
const TAG_LEN: usize = 16;
/// Tokens older than this are refused: a listing is not resumed a week later.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest token accepted; real ones are far shorter.
const MAX_TOKEN_LEN: usize = 4096;
const KEY_NAME: &str = "page_token_hmac";
const FIELD: &str = "page_token";

#[derive(Clone)]
pub struct PageTokens {
    key: hmac::Key,
}

impl PageTokens {
    pub fn from_key(key: &[u8]) -> Self {
        PageTokens {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// Loads the shared key, creating it if this is the database's first server.
    pub async fn load(pool: &PgPool) -> anyhow::Result<Self> {
        let mut fresh = [0u8; 32];
        SystemRandom::new()
            .fill(&mut fresh)
            .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
        // Insert-or-read in one statement, so that racing replicas all end with the winner's key.
        sqlx::query(
            "INSERT INTO core.server_keys (name, key) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(KEY_NAME)
        .bind(fresh.as_slice())
        .execute(pool)
        .await?;
        let key: Vec<u8> = sqlx::query_scalar("SELECT key FROM core.server_keys WHERE name = $1")
            .bind(KEY_NAME)
            .fetch_one(pool)
            .await?;
        Ok(Self::from_key(&key))
    }

    /// A token resuming `query` after `position`. `query` names the listing and every parameter
    /// that shapes its order or filter, e.g. `registry.ListPackages?sort=downloads&owner=ann`.
    pub fn encode<T: Serialize>(&self, query: &str, position: &T) -> String {
        self.encode_at(query, position, SystemTime::now())
    }

    fn encode_at<T: Serialize>(&self, query: &str, position: &T, now: SystemTime) -> String {
        let payload = serde_json::to_vec(position).expect("page positions serialize to JSON");
        let issued = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len() + TAG_LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(&issued.to_be_bytes());
        bytes.extend_from_slice(&fingerprint(query));
        bytes.extend_from_slice(&payload);
        let tag = hmac::sign(&self.key, &bytes);
        bytes.extend_from_slice(&tag.as_ref()[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Ends a page fetched with one row more than `size` (the probe for a next page): cuts
    /// `rows` to the page and returns the token resuming after its last row, or an empty token
    /// when there was no extra row (the last page).
    pub fn next_page<R, T: Serialize>(
        &self,
        query: &str,
        rows: &mut Vec<R>,
        size: i64,
        position: impl FnOnce(&R) -> T,
    ) -> String {
        let size = size as usize;
        if rows.len() <= size {
            return String::new();
        }
        rows.truncate(size);
        rows.last()
            .map(|last| self.encode(query, &position(last)))
            .unwrap_or_default()
    }

    /// One page of a keyset listing: decodes `token`, fetches `size + 1` rows after its position
    /// with `fetch(after, limit)`, and returns the page with the token of the next one.
    pub async fn page<R, T, F, Fut>(
        &self,
        query: &str,
        token: &str,
        size: i64,
        fetch: F,
        position: impl FnOnce(&R) -> T,
    ) -> Result<(Vec<R>, String)>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(Option<T>, i64) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<R>>>,
    {
        let after = self.decode(query, token)?;
        let mut rows = fetch(after, size + 1).await?;
        let next = self.next_page(query, &mut rows, size, position);
        Ok((rows, next))
    }

    /// The position a token resumes from; `None` for the empty token (the first page).
    pub fn decode<T: DeserializeOwned>(&self, query: &str, token: &str) -> Result<Option<T>> {
        self.decode_at(query, token, SystemTime::now())
    }

    fn decode_at<T: DeserializeOwned>(
        &self,
        query: &str,
        token: &str,
        now: SystemTime,
    ) -> Result<Option<T>> {
        if token.is_empty() {
            return Ok(None);
        }
        let invalid = |why: &str| Error::invalid_argument(FIELD, why);
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid("too long"));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| invalid("not a page token"))?;
        if bytes.len() < HEADER_LEN + TAG_LEN || bytes[0] != VERSION {
            return Err(invalid("not a page token"));
        }
        let (signed, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let expected = hmac::sign(&self.key, signed);
        if !constant_time_eq(&expected.as_ref()[..TAG_LEN], tag) {
            return Err(invalid("not a page token issued by this server"));
        }
        if signed[9..HEADER_LEN] != fingerprint(query) {
            return Err(invalid(
                "belongs to a different query; keep the same filters and order",
            ));
        }
        let issued = u64::from_be_bytes(signed[1..9].try_into().expect("8 bytes"));
        let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if now_secs.saturating_sub(issued) > MAX_AGE.as_secs() {
            return Err(invalid("expired; start the listing again"));
        }
        serde_json::from_slice(&signed[HEADER_LEN..])
            .map(Some)
            .map_err(|_| invalid("not a page token"))
    }
}

/// A requested page size: 0 means `default`, anything negative or above `max` is refused.
pub fn page_size(field: &str, requested: i32, default: i64, max: i64) -> Result<i64> {
    match requested {
        0 => Ok(default),
        n if n < 0 => Err(Error::invalid_argument(field, "must not be negative")),
        n if i64::from(n) > max => Err(Error::invalid_argument(
            field,
            format!("must be at most {max}"),
        )),
        n => Ok(i64::from(n)),
    }
}

fn fingerprint(query: &str) -> [u8; 8] {
    let digest = digest::digest(&digest::SHA256, query.as_bytes());
    digest.as_ref()[..8].try_into().expect("8 bytes")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    type Position = (i64, String);

    fn codec() -> PageTokens {
        PageTokens::from_key(b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn next_page_cuts_the_probe_row_and_resumes_after_the_page() {
        let tokens = codec();
        let mut rows = vec![1i64, 2, 3];
        let token = tokens.next_page("q", &mut rows, 2, |last| (*last, "x".to_owned()));
        assert_eq!(rows, [1, 2]);
        let position: Option<Position> = tokens.decode("q", &token).unwrap();
        assert_eq!(position, Some((2, "x".to_owned())));
        let mut last_page = vec![1i64, 2];
        assert_eq!(tokens.next_page("q", &mut last_page, 2, |l| *l), "");
        assert_eq!(last_page, [1, 2]);
    }

    #[test]
    fn round_trips_a_position() {
        let token = codec().encode("q", &(42i64, "left-pad".to_owned()));
        let position: Option<Position> = codec().decode("q", &token).unwrap();
        assert_eq!(position, Some((42, "left-pad".to_owned())));
    }

    #[test]
    fn empty_token_is_the_first_page() {
        assert_eq!(codec().decode::<Position>("q", "").unwrap(), None);
    }

    #[test]
    fn refuses_garbage_forgery_other_queries_and_old_tokens() {
        let c = codec();
        let token = c.encode("q", &(1i64, "a".to_owned()));
        let refused = |t: &str, q: &str| {
            let e = c.decode::<Position>(q, t).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            e.to_string()
        };
        assert!(refused("!!!", "q").starts_with("page_token:"));
        assert!(refused("AAAA", "q").contains("not a page token"));
        assert!(refused(&token, "other").contains("different query"));
        // Flip one bit anywhere: the tag no longer matches.
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[HEADER_LEN] ^= 1;
        assert!(refused(&URL_SAFE_NO_PAD.encode(&bytes), "q").contains("issued by this server"));
        // Another server's key.
        let other =
            PageTokens::from_key(b"another key, another database...").encode("q", &(1, "a"));
        assert!(refused(&other, "q").contains("issued by this server"));
        // Too old.
        let old = c.encode_at(
            "q",
            &(1, "a"),
            SystemTime::now() - MAX_AGE - Duration::from_secs(60),
        );
        assert!(refused(&old, "q").contains("expired"));
        assert!(refused(&"A".repeat(MAX_TOKEN_LEN + 1), "q").contains("too long"));
    }

    #[test]
    fn a_valid_tag_over_the_wrong_shape_is_refused_not_a_panic() {
        let c = codec();
        let token = c.encode("q", &"just a string");
        let error = c.decode::<Position>("q", &token).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
    }

    proptest::proptest! {
        /// Whatever a client sends as a token, decoding answers INVALID_ARGUMENT or a position,
        /// never a panic; and any position round-trips.
        #[test]
        fn arbitrary_tokens_never_panic(token in ".{0,300}", bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let c = codec();
            for candidate in [token, URL_SAFE_NO_PAD.encode(&bytes)] {
                if let Err(e) = c.decode::<Position>("q", &candidate) {
                    proptest::prop_assert_eq!(e.code(), tonic::Code::InvalidArgument);
                }
            }
        }

        #[test]
        fn positions_round_trip(n in proptest::prelude::any::<i64>(), s in ".{0,64}", query in ".{0,64}") {
            let c = codec();
            let token = c.encode(&query, &(n, s.clone()));
            proptest::prop_assert_eq!(c.decode::<Position>(&query, &token).unwrap(), Some((n, s)));
        }
    }
}
