//! Credentials: scrypt password hashes in a versioned text format, and the session JWTs (HS256
//! under a key every replica shares from `core.server_keys`, stored there only wrapped under the
//! PDS master key: whoever can read the database cannot mint sessions).
//!
//! Access tokens (`com.atproto.access`, or `com.atproto.appPass` for app-password sessions) last
//! two hours; refresh tokens (`com.atproto.refresh`) ninety days and one use. An access token
//! carries its session's refresh-token id (`sid`), so ending or rotating a session ends its
//! access tokens too.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::hmac;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::{
    error::{Error, Result},
    master_key::MasterKey,
};

/// The `core.server_keys` row holding the JWT key, wrapped under the PDS master key.
const WRAPPED_KEY_NAME: &str = "pds.jwt_key.wrapped";
/// What the wrapped JWT key is bound to (the wrapping's associated data).
const KEY_CONTEXT: &[u8] = b"pds.jwt_key";
/// Where earlier servers kept the JWT key in plaintext.
const PLAINTEXT_KEY_NAME: &str = "pds.jwt_key";

/// How long an access token lasts.
pub const ACCESS_SECONDS: i64 = 2 * 3600;
/// How long a refresh token lasts.
pub const REFRESH_SECONDS: i64 = 90 * 24 * 3600;
/// scrypt cost: N = 2^14, r = 8, p = 1 (16 MiB, tens of milliseconds).
const SCRYPT_LOG_N: u8 = 14;
const SCRYPT_R: u32 = 8;
const SCRYPT_P: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scope {
    #[serde(rename = "com.atproto.access")]
    Access,
    #[serde(rename = "com.atproto.appPass")]
    AppPass,
    #[serde(rename = "com.atproto.refresh")]
    Refresh,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub scope: Scope,
    pub sub: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    /// The session (its refresh token's `jti`) an access token belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// Signs and checks session tokens.
#[derive(Clone)]
pub struct JwtKeys {
    key: hmac::Key,
    audience: String,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(..)")
    }
}

fn unauthenticated(why: &str) -> Error {
    Error::Unauthenticated(format!("the token is not valid: {why}"))
}

impl JwtKeys {
    pub fn from_key(key: &[u8], audience: &str) -> Self {
        JwtKeys {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            audience: audience.to_owned(),
        }
    }

    /// The shared key, created by the first replica to start and stored only wrapped under the
    /// PDS master key. A plaintext key left by an earlier server is wrapped (its sessions stay
    /// valid) and its plaintext row deleted.
    pub async fn load(
        pool: &PgPool,
        audience: &str,
        master_key: &MasterKey,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let plaintext: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT key FROM core.server_keys WHERE name = $1")
                .bind(PLAINTEXT_KEY_NAME)
                .fetch_optional(pool)
                .await?;
        let fresh = match plaintext.as_deref().map(<[u8; 32]>::try_from) {
            Some(Ok(key)) => key,
            _ => {
                let mut fresh = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut fresh)
                    .map_err(|_| anyhow::anyhow!("no randomness"))?;
                fresh
            }
        };
        // Wrapped first, then the plaintext removed: a replica starting meanwhile ends with the
        // same key either way.
        sqlx::query(
            "INSERT INTO core.server_keys (name, key) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(WRAPPED_KEY_NAME)
        .bind(master_key.wrap(&fresh, KEY_CONTEXT))
        .execute(pool)
        .await?;
        sqlx::query("DELETE FROM core.server_keys WHERE name = $1")
            .bind(PLAINTEXT_KEY_NAME)
            .execute(pool)
            .await?;
        let wrapped: Vec<u8> =
            sqlx::query_scalar("SELECT key FROM core.server_keys WHERE name = $1")
                .bind(WRAPPED_KEY_NAME)
                .fetch_one(pool)
                .await?;
        let key = master_key
            .unwrap(&wrapped, KEY_CONTEXT)
            .context("the PDS session key does not unwrap with the PDS master key")?;
        Ok(Self::from_key(&key, audience))
    }

    pub fn issue(&self, scope: Scope, did: &str, jti: &str, sid: Option<&str>) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let (typ, lifetime) = match scope {
            Scope::Refresh => ("refresh+jwt", REFRESH_SECONDS),
            Scope::Access | Scope::AppPass => ("at+jwt", ACCESS_SECONDS),
        };
        let claims = Claims {
            scope,
            sub: did.to_owned(),
            aud: self.audience.clone(),
            iat: now,
            exp: now + lifetime,
            jti: jti.to_owned(),
            sid: sid.map(str::to_owned),
        };
        let header = serde_json::json!({"alg": "HS256", "typ": typ});
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"))
        );
        let tag = hmac::sign(&self.key, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The claims of a token this server signed that has not expired (UNAUTHENTICATED otherwise).
    pub fn verify(&self, token: &str) -> Result<Claims> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(unauthenticated("not a JWT"));
        };
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| unauthenticated("not a JWT"))?;
        hmac::verify(&self.key, format!("{header}.{payload}").as_bytes(), &tag)
            .map_err(|_| unauthenticated("bad signature"))?;
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or_else(|| unauthenticated("not a JWT"))?;
        if header["alg"] != "HS256" {
            return Err(unauthenticated("unexpected algorithm"));
        }
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or_else(|| unauthenticated("malformed claims"))?;
        if claims.aud != self.audience {
            return Err(unauthenticated("issued for another service"));
        }
        if claims.exp <= time::OffsetDateTime::now_utc().unix_timestamp() {
            return Err(unauthenticated("expired"));
        }
        Ok(claims)
    }
}

/// Hashes a password: `$scrypt$ln=14,r=8,p=1$<salt>$<hash>` (base64url, 16-byte salt, 32-byte
/// hash). The parameters travel with the hash, so they can be raised later.
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .expect("the system's random source works");
    let hash = derive(password, &salt, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P).expect("valid parameters");
    format!(
        "$scrypt$ln={SCRYPT_LOG_N},r={SCRYPT_R},p={SCRYPT_P}${}${}",
        URL_SAFE_NO_PAD.encode(salt),
        URL_SAFE_NO_PAD.encode(hash)
    )
}

fn derive(password: &str, salt: &[u8], log_n: u8, r: u32, p: u32) -> Option<[u8; 32]> {
    let params = scrypt::Params::new(log_n, r, p).ok()?;
    let mut out = [0u8; 32];
    scrypt::scrypt(password.as_bytes(), salt, &params, &mut out).ok()?;
    Some(out)
}

/// Whether `password` matches a hash made by [`hash_password`] (in constant time).
pub fn verify_password(password: &str, stored: &str) -> bool {
    let parts: Vec<&str> = stored.split('$').collect();
    let ["", "scrypt", params, salt, hash] = parts[..] else {
        return false;
    };
    let mut log_n = None;
    let (mut r, mut p) = (None, None);
    for param in params.split(',') {
        match param.split_once('=') {
            Some(("ln", v)) => log_n = v.parse::<u8>().ok().filter(|n| (10..=20).contains(n)),
            Some(("r", v)) => r = v.parse::<u32>().ok().filter(|n| (1..=32).contains(n)),
            Some(("p", v)) => p = v.parse::<u32>().ok().filter(|n| (1..=16).contains(n)),
            _ => return false,
        }
    }
    let (Some(log_n), Some(r), Some(p)) = (log_n, r, p) else {
        return false;
    };
    let (Ok(salt), Ok(expected)) = (URL_SAFE_NO_PAD.decode(salt), URL_SAFE_NO_PAD.decode(hash))
    else {
        return false;
    };
    let Some(actual) = derive(password, &salt, log_n, r, p) else {
        return false;
    };
    expected.len() == actual.len()
        && expected
            .iter()
            .zip(actual)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_themselves() {
        let hash = hash_password("correct horse");
        assert!(hash.starts_with("$scrypt$ln=14,r=8,p=1$"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("correct horsE", &hash));
        assert!(!verify_password(
            "correct horse",
            "$scrypt$ln=99,r=8,p=1$AA$AA"
        ));
        assert!(!verify_password("x", "plaintext"));
        assert_ne!(hash, hash_password("correct horse"));
    }

    #[test]
    fn tokens_verify_only_with_their_key_audience_and_time() {
        let keys = JwtKeys::from_key(&[1; 32], "did:web:pds.test");
        let token = keys.issue(Scope::Access, "did:plc:abc", "j1", Some("s1"));
        let claims = keys.verify(&token).unwrap();
        assert_eq!(
            (claims.scope, claims.sid.as_deref()),
            (Scope::Access, Some("s1"))
        );
        assert!(
            JwtKeys::from_key(&[2; 32], "did:web:pds.test")
                .verify(&token)
                .is_err()
        );
        assert!(
            JwtKeys::from_key(&[1; 32], "did:web:other")
                .verify(&token)
                .is_err()
        );
        let mut forged = token.clone();
        forged.insert(forged.find('.').unwrap() + 2, 'x');
        assert!(keys.verify(&forged).is_err());
        assert!(keys.verify("a.b").is_err());
    }
}
