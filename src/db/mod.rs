//! The database: the connection pool, the migrations, and the embedded PostgreSQL used when no
//! `DATABASE_URL` is configured.

pub mod embedded;

use std::time::Duration;

use anyhow::Context;
use sqlx::{
    PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

pub use embedded::{EmbeddedOptions, EmbeddedPostgres};

use crate::config::Config;

/// Every schema's migrations, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Where the database comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseMode {
    Embedded,
    External,
}

/// The database a server runs on: the pool, and the embedded cluster when quintet owns one.
pub struct Database {
    pub pool: PgPool,
    pub mode: DatabaseMode,
    pub embedded: Option<EmbeddedPostgres>,
}

impl Database {
    /// Connects to `DATABASE_URL`, or starts the embedded cluster when it is unset.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        match &config.database_url {
            Some(url) => {
                let options: PgConnectOptions = url.parse().with_context(|| {
                    format!("DATABASE_URL is not a PostgreSQL URL: {}", redact_url(url))
                })?;
                let pool = connect(options, config.db_max_connections)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot connect to the database at {} (check DATABASE_URL, or unset it to use the embedded PostgreSQL)",
                            redact_url(url)
                        )
                    })?;
                Ok(Database {
                    pool,
                    mode: DatabaseMode::External,
                    embedded: None,
                })
            }
            None => {
                let mut options = EmbeddedOptions::new(&config.data_dir);
                options.bindir = config.pg_bindir.clone();
                options.run_as_when_root = config.pg_user.clone();
                let embedded = EmbeddedPostgres::start(options).await?;
                let pool = connect(embedded.connect_options(), config.db_max_connections).await?;
                Ok(Database {
                    pool,
                    mode: DatabaseMode::Embedded,
                    embedded: Some(embedded),
                })
            }
        }
    }

    /// Closes the pool, then stops the embedded cluster if there is one.
    pub async fn close(self) -> anyhow::Result<()> {
        self.pool.close().await;
        if let Some(embedded) = self.embedded {
            embedded.stop().await?;
        }
        Ok(())
    }
}

/// A pool that gives up on a connection after 5 s, so that a database outage answers
/// UNAVAILABLE quickly instead of hanging every request.
pub async fn connect(options: PgConnectOptions, max_connections: u32) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(300))
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// Applies pending migrations. Safe to run from several replicas at once: sqlx serialises them
/// with an advisory lock.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("cannot apply the database migrations")
}

/// `url` with its password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparseable URL>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db.example:5432/quintet"),
            "postgres://app:***@db.example:5432/quintet"
        );
        assert_eq!(redact_url("postgres://db/quintet"), "postgres://db/quintet");
        assert!(!redact_url("not a url s3cret").contains("s3cret"));
    }
}
