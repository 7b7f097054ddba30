//! Callers and tokens, shared by every service: the `authorization: Bearer <token>` extractor,
//! SHA-256 token digests (the only form in which a token is stored), token generation, a
//! [`Secret`] wrapper whose `Debug` never prints the value, and the admin token.
//!
//! The admin token comes from configuration, or is generated on first start and written to
//! `<data dir>/admin-token` (mode 0600). Either way its digest is recorded in `core.admin_tokens`
//! so that every replica sharing the database accepts it; checks read that table, never process
//! memory alone.

use std::{fmt, io::Write, path::Path, str::FromStr};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{
    digest,
    rand::{SecureRandom, SystemRandom},
};
use sqlx::PgPool;
use tonic::Request;

use crate::error::{Error, Result};

/// A secret string (token, password, key). Its `Debug` and `Display` print a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; call only where it is used, never to log or format it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn digest(&self) -> TokenDigest {
        TokenDigest::of(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// The SHA-256 digest of a token: what the database stores and looks tokens up by.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn of(token: &str) -> Self {
        let digest = digest::digest(&digest::SHA256, token.as_bytes());
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        TokenDigest(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A prefix is enough to tell digests apart in logs.
        write!(
            f,
            "TokenDigest({:02x}{:02x}{:02x}{:02x}..)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// A new random token: `prefix` followed by 256 bits of randomness, base64url-encoded. The
/// prefix tells a leaked token's kind at a glance, as GitHub's and crates.io's do.
pub fn generate_token(prefix: &str) -> Secret {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random number generator failed");
    Secret(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// The bearer token of a request, if it has an `authorization` header. A header that is present
/// but not `Bearer <token>` is refused rather than ignored.
pub fn bearer_token<T>(request: &Request<T>) -> Result<Option<Secret>> {
    let Some(value) = request.metadata().get("authorization") else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Error::Unauthenticated("authorization: not valid ASCII".to_owned()))?;
    let (scheme, token) = value.split_once(' ').ok_or_else(|| {
        Error::Unauthenticated("authorization: expected `Bearer <token>`".to_owned())
    })?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(Error::Unauthenticated(
            "authorization: expected `Bearer <token>`".to_owned(),
        ));
    }
    Ok(Some(Secret(token.to_owned())))
}

/// The bearer token of a request, which must have one.
pub fn require_bearer_token<T>(request: &Request<T>) -> Result<Secret> {
    bearer_token(request)?.ok_or_else(|| {
        Error::Unauthenticated("missing `authorization: Bearer <token>` metadata".to_owned())
    })
}

/// Admin-token checks, backed by `core.admin_tokens`.
#[derive(Clone)]
pub struct AdminAuth {
    pool: PgPool,
}

/// Prefix of generated admin tokens.
pub const ADMIN_TOKEN_PREFIX: &str = "qadm_";
/// File name of the generated admin token in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

impl AdminAuth {
    /// Records the configured admin token, or the one in the data directory, creating it there on
    /// first start. Returns the checker and, when a token was just generated, its path.
    pub async fn init(
        pool: PgPool,
        configured: Option<&Secret>,
        data_dir: &Path,
    ) -> anyhow::Result<(Self, Option<std::path::PathBuf>)> {
        let (token, origin, created) = match configured {
            Some(token) => (token.clone(), "config", None),
            None => {
                std::fs::create_dir_all(data_dir).map_err(|e| {
                    anyhow::Error::new(e).context(format!(
                        "cannot create the data directory {}",
                        data_dir.display()
                    ))
                })?;
                let path = data_dir.join(ADMIN_TOKEN_FILE);
                match std::fs::read_to_string(&path) {
                    Ok(text) if !text.trim().is_empty() => {
                        (Secret(text.trim().to_owned()), "data-dir", None)
                    }
                    Ok(_) => anyhow::bail!(
                        "{} is empty; delete it to generate a new token",
                        path.display()
                    ),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let token = generate_token(ADMIN_TOKEN_PREFIX);
                        write_private_file(&path, token.expose()).map_err(|e| {
                            e.context(format!(
                                "cannot write the admin token to {}",
                                path.display()
                            ))
                        })?;
                        (token, "data-dir", Some(path))
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "cannot read the admin token at {}",
                            path.display()
                        )));
                    }
                }
            }
        };
        sqlx::query(
            "INSERT INTO core.admin_tokens (token_sha256, origin) VALUES ($1, $2)
             ON CONFLICT (token_sha256) DO NOTHING",
        )
        .bind(token.digest().as_bytes().as_slice())
        .bind(origin)
        .execute(&pool)
        .await?;
        Ok((AdminAuth { pool }, created))
    }

    /// Whether `token` is an admin token.
    pub async fn is_admin_token(&self, token: &Secret) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM core.admin_tokens WHERE token_sha256 = $1)",
        )
        .bind(token.digest().as_bytes().as_slice())
        .fetch_one(&self.pool)
        .await?)
    }

    /// Succeeds only for a request carrying an admin token.
    pub async fn require_admin<T>(&self, request: &Request<T>) -> Result<()> {
        let token = require_bearer_token(request)?;
        if self.is_admin_token(&token).await? {
            Ok(())
        } else {
            Err(Error::Unauthenticated(
                "the token is not an admin token".to_owned(),
            ))
        }
    }
}

/// Writes `contents` to a new file readable only by its owner, atomically: a crash leaves either
/// no file or the whole token, never a truncated one.
fn write_private_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_with(header: &str) -> Request<()> {
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert("authorization", header.parse().unwrap());
        request
    }

    #[test]
    fn extracts_bearer_tokens() {
        let token = bearer_token(&request_with("Bearer abc.def"))
            .unwrap()
            .unwrap();
        assert_eq!(token.expose(), "abc.def");
        let token = bearer_token(&request_with("bearer xyz")).unwrap().unwrap();
        assert_eq!(token.expose(), "xyz");
        assert!(bearer_token(&Request::new(())).unwrap().is_none());
    }

    #[test]
    fn refuses_malformed_authorization() {
        for header in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "token"] {
            let error = bearer_token(&request_with(header)).unwrap_err();
            assert_eq!(error.code(), tonic::Code::Unauthenticated, "{header}");
        }
        let error = require_bearer_token(&Request::new(())).unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn digests_are_sha256() {
        // SHA-256("abc") from FIPS 180-2, appendix B.1.
        let digest = TokenDigest::of("abc");
        assert_eq!(digest.as_bytes()[..4], [0xba, 0x78, 0x16, 0xbf],);
    }

    #[test]
    fn generated_tokens_are_distinct_and_prefixed() {
        let a = generate_token("qadm_");
        let b = generate_token("qadm_");
        assert_ne!(a, b);
        assert!(a.expose().starts_with("qadm_"));
        assert_eq!(a.expose().len(), 5 + 43);
        assert!(!format!("{a:?}").contains(a.expose()));
    }

    #[test]
    fn private_file_is_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        write_private_file(&path, "secret").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "secret\n");
    }
}
