//! Master keys: the 256-bit keys that wrap other secrets at rest (the market's dataset keys, the
//! PDS's account keys) with AES-256-GCM, one per purpose. A key comes from configuration or is
//! generated once into the data directory; a check value in `core.server_keys` makes a replica
//! with a different key refuse to start instead of writing what nobody else can read.
//!
//! Wrapped form: `nonce (12) || AES-256-GCM(master, aad = <purpose label> || context, secret)`.

use std::path::Path;

use anyhow::Context;
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom, SystemRandom},
};
use sqlx::PgPool;

use crate::{
    auth::Secret,
    error::{Error, Result},
};

const TAG_LEN: usize = 16;

/// What a master key is for: each purpose has its own key, labels and check value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Market,
    Pds,
}

impl Purpose {
    fn aad_label(self) -> &'static [u8] {
        match self {
            Purpose::Market => b"quintet.market.key.v1",
            Purpose::Pds => b"quintet.pds.key.v1",
        }
    }

    fn check_message(self) -> &'static [u8] {
        match self {
            Purpose::Market => b"quintet market master key check v1",
            Purpose::Pds => b"quintet pds master key check v1",
        }
    }

    fn check_name(self) -> &'static str {
        match self {
            Purpose::Market => "market.master_key_check",
            Purpose::Pds => "pds.master_key_check",
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            Purpose::Market => "market-master-key",
            Purpose::Pds => "pds-master-key",
        }
    }

    fn variable(self) -> &'static str {
        match self {
            Purpose::Market => "QUINTET_MARKET_MASTER_KEY",
            Purpose::Pds => "QUINTET_PDS_MASTER_KEY",
        }
    }
}

/// A master key. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct MasterKey {
    key: [u8; 32],
    purpose: Purpose,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({:?}, ..)", self.purpose)
    }
}

fn aes(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key"))
}

impl MasterKey {
    pub fn from_bytes(purpose: Purpose, key: [u8; 32]) -> Self {
        MasterKey { key, purpose }
    }

    /// A value that shows whether two replicas hold the same key without revealing it.
    pub fn check_value(&self) -> Vec<u8> {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.key);
        ring::hmac::sign(&key, self.purpose.check_message())
            .as_ref()
            .to_vec()
    }

    fn aad(&self, context: &[u8]) -> Vec<u8> {
        [self.purpose.aad_label(), context].concat()
    }

    /// Wraps a 32-byte secret, bound to `context` (what it belongs to).
    pub fn wrap(&self, secret: &[u8; 32], context: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system's random source works");
        let mut sealed = secret.to_vec();
        aes(&self.key)
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad(context)),
                &mut sealed,
            )
            .expect("AES-GCM sealing of 32 bytes");
        [&nonce[..], &sealed].concat()
    }

    /// Unwraps a secret; DATA_LOSS if it was not wrapped by this key for this context.
    pub fn unwrap(&self, wrapped: &[u8], context: &[u8]) -> Result<[u8; 32]> {
        if wrapped.len() != NONCE_LEN + 32 + TAG_LEN {
            return Err(Error::DataLoss("a wrapped key has the wrong length".into()));
        }
        let (nonce, sealed) = wrapped.split_at(NONCE_LEN);
        let mut buffer = sealed.to_vec();
        let secret = aes(&self.key)
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).expect("12 bytes"),
                Aad::from(self.aad(context)),
                &mut buffer,
            )
            .map_err(|_| {
                Error::DataLoss("a wrapped key does not unwrap with the master key".into())
            })?;
        Ok(secret.try_into().expect("32 bytes"))
    }
}

/// Reads `<data dir>/<file>`, or generates it (mode 0600) if missing: written whole under a
/// temporary name, then linked into place, so a crash leaves no half-written key and of two
/// processes starting at once the first key wins.
fn read_or_generate(path: &Path, data_dir: &Path) -> anyhow::Result<String> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    match std::fs::read_to_string(path) {
        Ok(text) => return Ok(text.trim().to_owned()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", path.display()));
        }
    }
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    let text = crate::hex::to_hex(&key);
    std::fs::create_dir_all(data_dir)?;
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
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "generated a master key");
            Ok(text)
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .trim()
                .to_owned())
        }
        Err(error) => Err(error).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// Loads the master key for `purpose`: `configured` (64 hex digits), else the data directory's
/// file, generated on first start. Refuses to start if the database's secrets were wrapped under
/// another key (replicas must share one).
pub async fn load(
    pool: &PgPool,
    purpose: Purpose,
    configured: Option<&Secret>,
    data_dir: &Path,
) -> anyhow::Result<MasterKey> {
    let text = match configured {
        Some(secret) => secret.expose().trim().to_owned(),
        None => read_or_generate(&data_dir.join(purpose.file_name()), data_dir)?,
    };
    let bytes: [u8; 32] = crate::hex::from_hex(&text)
        .and_then(|b| b.try_into().ok())
        .with_context(|| {
            format!(
                "the {} master key must be 64 hex digits (32 bytes)",
                purpose.variable()
            )
        })?;
    let key = MasterKey::from_bytes(purpose, bytes);
    let check = key.check_value();
    sqlx::query(
        "INSERT INTO core.server_keys (name, key) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(purpose.check_name())
    .bind(&check)
    .execute(pool)
    .await?;
    let stored: Vec<u8> = sqlx::query_scalar("SELECT key FROM core.server_keys WHERE name = $1")
        .bind(purpose.check_name())
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(
        stored == check,
        "the master key differs from the one this database's secrets are wrapped with; every \
         replica needs the same key ({})",
        purpose.variable()
    );
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_do_not_share_wrapped_secrets_or_check_values() {
        let bytes = [5u8; 32];
        let market = MasterKey::from_bytes(Purpose::Market, bytes);
        let pds = MasterKey::from_bytes(Purpose::Pds, bytes);
        let wrapped = market.wrap(&[9u8; 32], b"x");
        assert_eq!(market.unwrap(&wrapped, b"x").unwrap(), [9u8; 32]);
        assert!(pds.unwrap(&wrapped, b"x").is_err());
        assert_ne!(market.check_value(), pds.check_value());
        assert_eq!(format!("{pds:?}"), "MasterKey(Pds, ..)");
    }
}
