//! The admin service's SQL: read-only facts about the database.

use sqlx::PgPool;

use crate::error::Result;

pub struct DatabaseFacts {
    pub server_version: String,
    pub schema_version: i64,
    pub migrations_applied: i64,
    pub installation_id: uuid::Uuid,
}

pub async fn database_facts(pool: &PgPool) -> Result<DatabaseFacts> {
    let (server_version, schema_version, migrations_applied, installation_id): (
        String,
        i64,
        i64,
        uuid::Uuid,
    ) = sqlx::query_as(
        "SELECT current_setting('server_version'),
                COALESCE((SELECT max(version) FROM _sqlx_migrations WHERE success), 0),
                (SELECT count(*) FROM _sqlx_migrations WHERE success),
                (SELECT id FROM core.installation)",
    )
    .fetch_one(pool)
    .await?;
    Ok(DatabaseFacts {
        server_version,
        schema_version,
        migrations_applied,
        installation_id,
    })
}
