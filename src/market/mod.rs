//! `quintet.market.v1.MarketService`: a data marketplace after SourceNet (`market` schema).
//! Users sign in with verified OpenID Connect ID tokens; sellers upload datasets that are
//! encrypted as they stream (keys wrapped by the server's master key) and offer them as
//! datapods that anyone can search.

pub mod chat;
mod convert;
pub mod crypto;
mod handlers;
pub mod infer;
pub mod oidc;
pub mod payment;
pub mod purchases;
pub mod queries;
pub mod standin_ledger;
pub mod sui;

use std::path::Path;

use anyhow::Context;
use sqlx::PgPool;

pub use handlers::MarketService;
pub use purchases::PURCHASES_CHANNEL;

use crate::auth::Secret;

/// The name of the master key's check value in `core.server_keys`.
const CHECK_NAME: &str = "market.master_key_check";

/// Loads the master key: `configured` (64 hex digits), else `<data dir>/market-master-key`,
/// generated on first start (mode 0600). Refuses to start if the database's data was encrypted
/// under another key (replicas must share one).
pub async fn load_master_key(
    pool: &PgPool,
    configured: Option<&Secret>,
    data_dir: &Path,
) -> anyhow::Result<crypto::MasterKey> {
    let text = match configured {
        Some(secret) => secret.expose().trim().to_owned(),
        None => {
            let path = data_dir.join("market-master-key");
            match std::fs::read_to_string(&path) {
                Ok(text) => text.trim().to_owned(),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    use std::{io::Write, os::unix::fs::OpenOptionsExt};
                    let text = crypto::to_hex(&crypto::random_key());
                    std::fs::create_dir_all(data_dir)?;
                    // Written whole under a temporary name, then linked into place: a crash
                    // leaves no half-written key, and of two processes starting at once the
                    // first key wins.
                    let temporary = path.with_extension(format!("tmp.{}", std::process::id()));
                    let mut file = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&temporary)
                        .with_context(|| format!("cannot create {}", temporary.display()))?;
                    file.write_all(text.as_bytes())?;
                    file.sync_all()?;
                    let linked = std::fs::hard_link(&temporary, &path);
                    let _ = std::fs::remove_file(&temporary);
                    match linked {
                        Ok(()) => {
                            tracing::info!(path = %path.display(), "generated the market master key");
                            text
                        }
                        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                            std::fs::read_to_string(&path)
                                .with_context(|| format!("cannot read {}", path.display()))?
                                .trim()
                                .to_owned()
                        }
                        Err(error) => {
                            return Err(error)
                                .with_context(|| format!("cannot create {}", path.display()));
                        }
                    }
                }
                Err(error) => {
                    return Err(error).with_context(|| format!("cannot read {}", path.display()));
                }
            }
        }
    };
    let bytes: Vec<u8> = crypto::from_hex(&text)
        .filter(|b: &Vec<u8>| b.len() == 32)
        .context("the market master key must be 64 hex digits (32 bytes)")?;
    let key = crypto::MasterKey::from_bytes(bytes.try_into().expect("32 bytes"));
    let check = key.check_value();
    sqlx::query(
        "INSERT INTO core.server_keys (name, key) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(CHECK_NAME)
    .bind(&check)
    .execute(pool)
    .await?;
    let stored: Vec<u8> = sqlx::query_scalar("SELECT key FROM core.server_keys WHERE name = $1")
        .bind(CHECK_NAME)
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(
        stored == check,
        "the market master key differs from the one this database's datasets are encrypted with; \
         every replica needs the same key (QUINTET_MARKET_MASTER_KEY)"
    );
    Ok(key)
}
