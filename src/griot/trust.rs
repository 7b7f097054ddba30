//! The trust policy: authors listed as trusted or revoked. Revoked authors are always refused;
//! while any author is trusted, unlisted authors are refused too. Checked at registration and
//! again when a job runs, since the policy may change in between.

use sqlx::PgExecutor;

use super::queries;
use crate::error::{Error, Result};

/// The stable reason of a refusal.
pub const AUTHOR_NOT_TRUSTED: &str = "AUTHOR_NOT_TRUSTED";

pub enum TrustDecision {
    Allowed,
    /// Why the author is refused.
    Refused(String),
}

pub async fn decide<'e>(executor: impl PgExecutor<'e>, author_did: &str) -> Result<TrustDecision> {
    let (entry, allowlist) = queries::trust_of(executor, author_did).await?;
    Ok(match entry.as_deref() {
        Some("revoked") => TrustDecision::Refused(format!("the author {author_did} is revoked")),
        Some("trusted") => TrustDecision::Allowed,
        _ if allowlist => TrustDecision::Refused(format!(
            "the author {author_did} is not in the trust policy's trusted authors"
        )),
        _ => TrustDecision::Allowed,
    })
}

/// FAILED_PRECONDITION unless the author is allowed.
pub async fn require<'e>(executor: impl PgExecutor<'e>, author_did: &str) -> Result<()> {
    match decide(executor, author_did).await? {
        TrustDecision::Allowed => Ok(()),
        TrustDecision::Refused(why) => Err(Error::failed_precondition(
            AUTHOR_NOT_TRUSTED,
            author_did,
            why,
        )),
    }
}
