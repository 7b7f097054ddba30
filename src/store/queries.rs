//! The store's SQL.

use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool, types::Json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    blobs::Sha256,
    error::{Error, Result},
    notify,
};

/// The `NOTIFY` channel of newly stored manifests; the payload is the manifest's seq.
pub const MANIFESTS_CHANNEL: &str = "store_manifests";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ManifestRow {
    pub id: Uuid,
    pub created_at: OffsetDateTime,
    pub class_id: Uuid,
    pub unpacker_name: String,
    pub tags: Json<Value>,
    pub seq: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ContentRow {
    pub id: Uuid,
    pub created_at: OffsetDateTime,
    pub manifest_id: Uuid,
    pub content_name: String,
    pub content_type: String,
    pub content_encoding: String,
    pub content_size: i64,
    pub content_hash: String,
    pub content_hash_algorithm: String,
    pub serializer_name: String,
    pub serializer_type: String,
    pub storage_name: String,
    pub storage_data: Json<Value>,
    pub tags: Json<Value>,
}

/// A content ready to be recorded.
pub struct NewContent {
    pub content_name: String,
    pub content_type: String,
    pub content_encoding: String,
    pub size: u64,
    pub sha256: Sha256,
    pub serializer_name: String,
    pub serializer_type: &'static str,
    pub storage_name: &'static str,
    pub storage_data: Value,
    pub tags: Value,
}

const MANIFEST_COLUMNS: &str = "id, created_at, class_id, unpacker_name, tags, seq";
const CONTENT_COLUMNS: &str = "id, created_at, manifest_id, content_name, content_type, content_encoding,
    content_size, content_hash, content_hash_algorithm, serializer_name, serializer_type::text AS serializer_type,
    storage_name, storage_data, tags";

pub async fn insert_inline(tx: &mut PgConnection, sha256: &Sha256, data: &[u8]) -> Result<()> {
    sqlx::query(
        "INSERT INTO store.inline_values (sha256, data) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(sha256.to_hex())
    .bind(data)
    .execute(tx)
    .await?;
    Ok(())
}

pub async fn inline_value<'e>(executor: impl PgExecutor<'e>, sha256: &str) -> Result<Vec<u8>> {
    sqlx::query_scalar("SELECT data FROM store.inline_values WHERE sha256 = $1")
        .bind(sha256)
        .fetch_optional(executor)
        .await?
        .ok_or_else(|| Error::DataLoss(format!("inline value {sha256} is missing")))
}

/// Records a manifest and its contents; the caller commits.
pub async fn insert_object(
    tx: &mut PgConnection,
    class_id: Uuid,
    unpacker_name: &str,
    tags: &Value,
    contents: &[NewContent],
) -> Result<(ManifestRow, Vec<ContentRow>)> {
    // Sequence numbers must become visible in order for followers reading `seq > cursor`.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('store.manifests.seq'))")
        .execute(&mut *tx)
        .await?;
    let manifest: ManifestRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO store.manifests (id, class_id, unpacker_name, tags) VALUES ($1, $2, $3, $4)
         RETURNING {MANIFEST_COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(class_id)
    .bind(unpacker_name)
    .bind(Json(tags))
    .fetch_one(&mut *tx)
    .await?;
    let mut rows = Vec::with_capacity(contents.len());
    for content in contents {
        let row: ContentRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO store.contents (id, manifest_id, content_name, content_type, content_encoding,
                 content_size, content_hash, serializer_name, serializer_type, storage_name, storage_data, tags)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::store.serializer_type, $10, $11, $12)
             RETURNING {CONTENT_COLUMNS}"
        )))
        .bind(Uuid::now_v7())
        .bind(manifest.id)
        .bind(&content.content_name)
        .bind(&content.content_type)
        .bind(&content.content_encoding)
        .bind(content.size as i64)
        .bind(content.sha256.to_hex())
        .bind(&content.serializer_name)
        .bind(content.serializer_type)
        .bind(content.storage_name)
        .bind(Json(&content.storage_data))
        .bind(Json(&content.tags))
        .fetch_one(&mut *tx)
        .await?;
        rows.push(row);
    }
    notify::notify(&mut *tx, MANIFESTS_CHANNEL, &manifest.seq.to_string()).await?;
    rows.sort_by(|a, b| a.content_name.cmp(&b.content_name));
    Ok((manifest, rows))
}

pub async fn manifest<'e>(executor: impl PgExecutor<'e>, id: Uuid) -> Result<ManifestRow> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MANIFEST_COLUMNS} FROM store.manifests WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(executor)
    .await?
    .ok_or_else(|| Error::not_found("manifest", id.to_string()))
}

pub async fn contents<'e>(
    executor: impl PgExecutor<'e>,
    manifest: Uuid,
) -> Result<Vec<ContentRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CONTENT_COLUMNS} FROM store.contents WHERE manifest_id = $1 ORDER BY content_name"
    )))
    .bind(manifest)
    .fetch_all(executor)
    .await?)
}

pub async fn content<'e>(
    executor: impl PgExecutor<'e>,
    manifest: Uuid,
    name: &str,
) -> Result<ContentRow> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CONTENT_COLUMNS} FROM store.contents WHERE manifest_id = $1 AND content_name = $2"
    )))
    .bind(manifest)
    .bind(name)
    .fetch_optional(executor)
    .await?
    .ok_or_else(|| Error::not_found("content", name))
}

/// Deletes a manifest and its contents; returns the (storage, hash) pairs they pointed at.
pub async fn delete_object(pool: &PgPool, id: Uuid) -> Result<Vec<(String, String)>> {
    let mut tx = pool.begin().await?;
    let pointed: Vec<(String, String)> = sqlx::query_as(
        "DELETE FROM store.contents WHERE manifest_id = $1 RETURNING storage_name, content_hash",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let deleted = sqlx::query("DELETE FROM store.manifests WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(Error::not_found("manifest", id.to_string()));
    }
    tx.commit().await?;
    Ok(pointed)
}

pub async fn bytes_referenced<'e>(
    executor: impl PgExecutor<'e>,
    storage: &str,
    sha256: &str,
) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM store.contents WHERE storage_name = $1 AND content_hash = $2)",
    )
    .bind(storage)
    .bind(sha256)
    .fetch_one(executor)
    .await?)
}

pub async fn delete_inline(tx: &mut PgConnection, sha256: &str) -> Result<()> {
    sqlx::query("DELETE FROM store.inline_values WHERE sha256 = $1")
        .bind(sha256)
        .execute(tx)
        .await?;
    Ok(())
}

/// Inline values older than `before` that no content references.
pub async fn unreferenced_inline(pool: &PgPool, before: OffsetDateTime) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT v.sha256 FROM store.inline_values v
         WHERE v.created_at < $1 AND NOT EXISTS (
             SELECT 1 FROM store.contents c
             WHERE c.storage_name = 'lakery.json_storage_data@v1' AND c.content_hash = v.sha256)",
    )
    .bind(before)
    .fetch_all(pool)
    .await?)
}

#[derive(Debug, Clone, Default)]
pub struct ManifestFilter {
    pub class_id: Option<Uuid>,
    pub tags: Option<Value>,
    pub created_after: Option<OffsetDateTime>,
    pub created_before: Option<OffsetDateTime>,
}

const FILTER: &str = "($1::uuid IS NULL OR class_id = $1)
    AND ($2::jsonb IS NULL OR tags @> $2)
    AND ($3::timestamptz IS NULL OR created_at >= $3)
    AND ($4::timestamptz IS NULL OR created_at < $4)";

/// A page of manifests, newest first, after `(created_at, id)`.
pub async fn list_manifests(
    pool: &PgPool,
    filter: &ManifestFilter,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<ManifestRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MANIFEST_COLUMNS} FROM store.manifests
         WHERE {FILTER} AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6))
         ORDER BY created_at DESC, id DESC LIMIT $7"
    )))
    .bind(filter.class_id)
    .bind(filter.tags.as_ref().map(Json))
    .bind(filter.created_after)
    .bind(filter.created_before)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Manifests after `seq` matching the filter, in seq order.
pub async fn manifests_after(
    pool: &PgPool,
    filter: &ManifestFilter,
    seq: i64,
    limit: i64,
) -> Result<Vec<ManifestRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MANIFEST_COLUMNS} FROM store.manifests WHERE {FILTER} AND seq > $5 ORDER BY seq LIMIT $6"
    )))
    .bind(filter.class_id)
    .bind(filter.tags.as_ref().map(Json))
    .bind(filter.created_after)
    .bind(filter.created_before)
    .bind(seq)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
