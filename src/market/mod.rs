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

use sqlx::PgPool;

pub use handlers::MarketService;
pub use purchases::PURCHASES_CHANNEL;

use crate::auth::Secret;

/// Loads the market's master key: `configured` (64 hex digits), else
/// `<data dir>/market-master-key`, generated on first start (mode 0600). Refuses to start if the
/// database's datasets were encrypted under another key (replicas must share one).
pub async fn load_master_key(
    pool: &PgPool,
    configured: Option<&Secret>,
    data_dir: &Path,
) -> anyhow::Result<crypto::MasterKey> {
    crate::master_key::load(
        pool,
        crate::master_key::Purpose::Market,
        configured,
        data_dir,
    )
    .await
}
