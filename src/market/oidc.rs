//! OpenID Connect ID-token verification: RS256 signatures checked with `ring` against the
//! issuer's JSON Web Key Set, fetched from a configurable URL and cached (for the `max-age` the
//! issuer sends, or an hour), refetched when a token names a key the cache does not hold (keys
//! rotate), at most every few seconds. Then issuer, audience, expiry and a verified email.
//!
//! Nothing in the token is believed before its signature checks out, and only RS256 is accepted:
//! `none` and HMAC algorithms (where a public key could be abused as a secret) are refused.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use base64::Engine;
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use crate::error::{Error, Result};

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECONDS: i64 = 60;
/// How long keys are kept when the issuer says nothing.
const DEFAULT_KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
/// Least time between two fetches triggered by unknown key ids.
const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(5);
/// Largest token accepted.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What a verified token says about the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub email: String,
    pub name: Option<String>,
    pub picture: Option<String>,
}

#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub jwks_url: String,
    pub issuers: Vec<String>,
    /// The client id tokens must be issued to; `None`: sign-in is not configured.
    pub audience: Option<String>,
}

struct RsaKey {
    n: Vec<u8>,
    e: Vec<u8>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, RsaKey>,
    fetched_at: Option<Instant>,
    /// The last fetch, successful or not: fetches are spaced out either way.
    attempted_at: Option<Instant>,
    max_age: Duration,
}

impl KeyCache {
    fn fresh(&self) -> bool {
        self.fetched_at
            .is_some_and(|at| at.elapsed() < self.max_age)
    }
}

pub struct OidcVerifier {
    config: OidcConfig,
    http: reqwest::Client,
    cache: RwLock<KeyCache>,
    /// One fetch at a time.
    fetching: Mutex<()>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Audience,
    exp: i64,
    iat: Option<i64>,
    nbf: Option<i64>,
    email: Option<String>,
    email_verified: Option<EmailVerified>,
    name: Option<String>,
    picture: Option<String>,
}

/// Google sends a boolean; some issuers send the string "true".
#[derive(Deserialize)]
#[serde(untagged)]
enum EmailVerified {
    Bool(bool),
    Text(String),
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    n: Option<String>,
    e: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
}

fn refused(why: &str) -> Error {
    Error::Unauthenticated(format!("the ID token is not valid: {why}"))
}

fn base64url(part: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()
}

impl OidcVerifier {
    pub fn new(config: OidcConfig) -> anyhow::Result<Self> {
        Ok(OidcVerifier {
            config,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(10))
                .build()?,
            cache: RwLock::default(),
            fetching: Mutex::new(()),
        })
    }

    /// Verifies `token` and returns who it identifies.
    pub async fn verify(&self, token: &str) -> Result<Identity> {
        let Some(audience) = &self.config.audience else {
            return Err(Error::failed_precondition(
                "SIGN_IN_NOT_CONFIGURED",
                "market",
                "sign-in is not configured: set QUINTET_MARKET_OIDC_AUDIENCE to the OAuth client id",
            ));
        };
        if token.len() > MAX_TOKEN_BYTES {
            return Err(refused("too large"));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(refused("not a JWT (three dot-separated parts)"));
        };
        let header: Header = base64url(header_b64)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| refused("malformed header"))?;
        if header.alg != "RS256" {
            return Err(refused(&format!(
                "algorithm {:?} is not accepted (RS256 only)",
                header.alg
            )));
        }
        let kid = header.kid.unwrap_or_default();
        let signature = base64url(signature_b64).ok_or_else(|| refused("malformed signature"))?;
        let signed = &token[..header_b64.len() + 1 + claims_b64.len()];
        self.check_signature(&kid, signed.as_bytes(), &signature)
            .await?;

        // Signed by the issuer: now the claims may be read.
        let claims: Claims = base64url(claims_b64)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| refused("malformed claims"))?;
        if !self.config.issuers.contains(&claims.iss) {
            return Err(refused(&format!("issuer {:?} is not accepted", claims.iss)));
        }
        let audience_ok = match &claims.aud {
            Audience::One(aud) => aud == audience,
            Audience::Many(auds) => auds.iter().any(|a| a == audience),
        };
        if !audience_ok {
            return Err(refused("issued to another audience"));
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if claims.exp + LEEWAY_SECONDS < now {
            return Err(refused("expired"));
        }
        if claims.nbf.is_some_and(|nbf| nbf - LEEWAY_SECONDS > now)
            || claims.iat.is_some_and(|iat| iat - LEEWAY_SECONDS > now)
        {
            return Err(refused("not valid yet"));
        }
        if claims.sub.is_empty() || claims.sub.len() > 255 {
            return Err(refused("bad subject"));
        }
        let verified = matches!(claims.email_verified, Some(EmailVerified::Bool(true)))
            || matches!(&claims.email_verified, Some(EmailVerified::Text(t)) if t == "true");
        let email = match claims.email {
            Some(email) if verified && !email.is_empty() && email.len() <= 255 => email,
            Some(_) => return Err(refused("the email address is not verified")),
            None => return Err(refused("no email address (request the email scope)")),
        };
        Ok(Identity {
            subject: claims.sub,
            email,
            name: claims.name.map(|n| n.chars().take(255).collect()),
            picture: claims.picture.filter(|p| p.len() <= 500),
        })
    }

    async fn check_signature(&self, kid: &str, message: &[u8], signature: &[u8]) -> Result<()> {
        let verify = |cache: &KeyCache| {
            cache.keys.get(kid).map(|key| {
                ring::signature::RsaPublicKeyComponents {
                    n: &key.n,
                    e: &key.e,
                }
                .verify(
                    &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                    message,
                    signature,
                )
                .is_ok()
            })
        };
        {
            let cache = self.cache.read().await;
            if cache.fresh()
                && let Some(valid) = verify(&cache)
            {
                return if valid {
                    Ok(())
                } else {
                    Err(refused("bad signature"))
                };
            }
        }
        // A failed refresh keeps the keys we had: an issuer's outage must not end sign-in for
        // tokens signed with keys we already know.
        let refreshed = self.refresh().await;
        match verify(&*self.cache.read().await) {
            Some(true) => Ok(()),
            Some(false) => Err(refused("bad signature")),
            None => refreshed.and(Err(refused(&format!("unknown key id {kid:?}")))),
        }
    }

    /// Fetches the key set, unless another caller just did.
    async fn refresh(&self) -> Result<()> {
        let _one = self.fetching.lock().await;
        if let Some(at) = self.cache.read().await.attempted_at
            && at.elapsed() < MIN_REFETCH_INTERVAL
        {
            return Ok(());
        }
        self.cache.write().await.attempted_at = Some(Instant::now());
        let unavailable = |why: String| {
            tracing::warn!(url = %self.config.jwks_url, %why, "cannot fetch the OIDC keys");
            Error::Unavailable("cannot fetch the identity provider's keys; try again".to_owned())
        };
        let response = self
            .http
            .get(&self.config.jwks_url)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(unavailable(format!("status {}", response.status())));
        }
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.split(',')
                    .filter_map(|d| d.trim().strip_prefix("max-age="))
                    .find_map(|s| s.parse::<u64>().ok())
            })
            .map(|s| Duration::from_secs(s.clamp(60, 86_400)))
            .unwrap_or(DEFAULT_KEYS_MAX_AGE);
        let jwks: Jwks = response
            .json()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        *self.cache.write().await = KeyCache {
            keys: rsa_keys(jwks),
            fetched_at: Some(Instant::now()),
            attempted_at: Some(Instant::now()),
            max_age,
        };
        Ok(())
    }

    /// Replaces the cached keys with those of `jwks`, a JSON Web Key Set document, as a fetch
    /// would (for the default time): tokens signed with them then verify without a fetch. For
    /// tests and fuzzing, which have no issuer to fetch from.
    pub async fn set_keys(&self, jwks: &[u8]) -> std::result::Result<(), serde_json::Error> {
        let jwks: Jwks = serde_json::from_slice(jwks)?;
        *self.cache.write().await = KeyCache {
            keys: rsa_keys(jwks),
            fetched_at: Some(Instant::now()),
            attempted_at: Some(Instant::now()),
            max_age: DEFAULT_KEYS_MAX_AGE,
        };
        Ok(())
    }
}

/// The RSA signing keys of a key set, by key id.
fn rsa_keys(jwks: Jwks) -> HashMap<String, RsaKey> {
    jwks.keys
        .into_iter()
        .filter(|k| k.kty == "RSA" && k.usage.as_deref().is_none_or(|u| u == "sig"))
        .filter_map(|k| {
            Some((
                k.kid.unwrap_or_default(),
                RsaKey {
                    n: base64url(k.n.as_deref()?)?,
                    e: base64url(k.e.as_deref()?)?,
                },
            ))
        })
        .collect()
}
