//! Callers of the registry: who a bearer token belongs to, and what it may do.
//!
//! A token is, in order: a scoped API token (`qreg_` prefix, looked up by digest), an OAuth token
//! already seen (by digest, without a call), the server's admin token, or a new OAuth token of the
//! identity provider, resolved with `GET <identity url>/user` (GitHub's API or anything answering
//! `login`, `avatar_url` and `node_id`), which creates or updates the user.

use std::time::Duration;

use serde::Deserialize;
use sqlx::PgPool;
use tonic::Request;

use super::{
    domain::Scope,
    queries::{self, UserRow},
};
use crate::{
    auth::{AdminAuth, Secret, require_bearer_token},
    error::{Error, Result},
};

/// Prefix of registry API tokens.
pub const API_TOKEN_PREFIX: &str = "qreg_";

/// What a caller was granted.
#[derive(Debug, Clone)]
pub enum Grant {
    /// Signed in with the identity provider: everything the user may do.
    Full,
    /// An API token: only these scopes, and if `packages` is set, only those packages.
    Token {
        scopes: Vec<Scope>,
        packages: Option<Vec<String>>,
    },
}

#[derive(Debug, Clone)]
pub enum Caller {
    Admin,
    User { user: UserRow, grant: Grant },
}

impl Caller {
    /// Refuses a caller whose token lacks `scope` (or is limited to other packages).
    pub fn require_scope(&self, scope: Scope, package: Option<&str>) -> Result<()> {
        match self {
            Caller::Admin
            | Caller::User {
                grant: Grant::Full, ..
            } => Ok(()),
            Caller::User {
                grant: Grant::Token { scopes, packages },
                ..
            } => {
                if !scopes.contains(&scope) {
                    return Err(Error::PermissionDenied(format!(
                        "the token lacks the {} scope",
                        scope.as_str()
                    )));
                }
                if let (Some(allowed), Some(package)) = (packages, package)
                    && !allowed.iter().any(|p| p == package)
                {
                    return Err(Error::PermissionDenied(format!(
                        "the token may not act on package {package:?}"
                    )));
                }
                Ok(())
            }
        }
    }

    /// The user behind the caller; admins act as no user.
    pub fn user(&self) -> Result<&UserRow> {
        match self {
            Caller::User { user, .. } => Ok(user),
            Caller::Admin => Err(Error::failed_precondition(
                "USER_REQUIRED",
                "caller",
                "the admin token acts as no user; use a user's token",
            )),
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Admin)
    }
}

#[derive(Deserialize)]
struct ProviderUser {
    login: String,
    #[serde(default)]
    avatar_url: String,
    node_id: String,
}

/// Resolves bearer tokens into callers.
#[derive(Clone)]
pub struct Identity {
    pool: PgPool,
    admin: AdminAuth,
    http: reqwest::Client,
    /// Base URL of the identity provider, without a trailing slash.
    base_url: String,
}

impl Identity {
    pub fn new(pool: PgPool, admin: AdminAuth, base_url: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("quintet/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Identity {
            pool,
            admin,
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
        })
    }

    /// The caller of a request, which must carry a token.
    pub async fn caller<T>(&self, request: &Request<T>) -> Result<Caller> {
        let token = require_bearer_token(request)?;
        if token.expose().starts_with(API_TOKEN_PREFIX) {
            let (user, scopes, packages) = queries::api_token_caller(&self.pool, &token.digest())
                .await?
                .ok_or_else(|| {
                    Error::Unauthenticated(
                        "the API token is unknown, expired or revoked".to_owned(),
                    )
                })?;
            return Ok(Caller::User {
                user,
                grant: Grant::Token { scopes, packages },
            });
        }
        // Signed-in users are the common case: one lookup for them, the admin check only after.
        let user = match queries::user_by_oauth_digest(&self.pool, &token.digest()).await? {
            Some(user) => user,
            None if self.admin.is_admin_token(&token).await? => return Ok(Caller::Admin),
            None => self.sign_in_with_provider(&token).await?,
        };
        Ok(Caller::User {
            user,
            grant: Grant::Full,
        })
    }

    async fn sign_in_with_provider(&self, token: &Secret) -> Result<UserRow> {
        let response = self
            .http
            .get(format!("{}/user", self.base_url))
            .bearer_auth(token.expose())
            .header("accept", "application/vnd.github+json")
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "identity provider unreachable");
                Error::Unavailable("the identity provider is unreachable".to_owned())
            })?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(Error::Unauthenticated(
                "the identity provider does not accept this token".to_owned(),
            ));
        }
        if !status.is_success() {
            tracing::warn!(%status, "identity provider failed");
            return Err(Error::Unavailable(format!(
                "the identity provider answered {status}"
            )));
        }
        let user: ProviderUser = response.json().await.map_err(|e| {
            tracing::warn!(error = %e, "identity provider sent an unexpected answer");
            Error::Unavailable("the identity provider sent an unexpected answer".to_owned())
        })?;
        let login = super::domain::parse_username("login", &user.login).map_err(|_| {
            Error::Unavailable("the identity provider sent an invalid login".to_owned())
        })?;
        if user.node_id.is_empty() || user.node_id.len() > 256 {
            return Err(Error::Unavailable(
                "the identity provider sent no node_id".to_owned(),
            ));
        }
        queries::upsert_provider_user(
            &self.pool,
            &login,
            &user.avatar_url,
            &user.node_id,
            &token.digest(),
        )
        .await
    }
}
