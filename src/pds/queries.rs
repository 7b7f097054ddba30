//! The PDS's SQL: accounts, sessions, app passwords, the PLC log, repositories, blocks and the
//! records listing.

use std::collections::HashMap;

use cid::Cid;
use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;

use crate::error::Result;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountRow {
    pub did: String,
    pub handle: Option<String>,
    pub email: Option<String>,
    pub password_hash: String,
    pub signing_key_priv: Vec<u8>,
    pub signing_key_pub: String,
    pub rotation_key_priv: Vec<u8>,
    pub rotation_key_pub: String,
    pub status: String,
    pub created_at: OffsetDateTime,
}

const ACCOUNT_COLUMNS: &str = "did, handle, email, password_hash, signing_key_priv,
    signing_key_pub, rotation_key_priv, rotation_key_pub, status, created_at";

pub struct NewAccount<'a> {
    pub did: &'a str,
    pub handle: &'a str,
    pub email: &'a str,
    pub password_hash: &'a str,
    pub signing_key_priv: &'a [u8],
    pub signing_key_pub: &'a str,
    pub rotation_key_priv: &'a [u8],
    pub rotation_key_pub: &'a str,
}

pub async fn insert_account(tx: &mut PgConnection, new: &NewAccount<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO pds.accounts (did, handle, email, password_hash, signing_key_priv,
             signing_key_pub, rotation_key_priv, rotation_key_pub)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(new.did)
    .bind(new.handle)
    .bind(new.email)
    .bind(new.password_hash)
    .bind(new.signing_key_priv)
    .bind(new.signing_key_pub)
    .bind(new.rotation_key_priv)
    .bind(new.rotation_key_pub)
    .execute(tx)
    .await?;
    Ok(())
}

pub async fn account<'e>(executor: impl PgExecutor<'e>, did: &str) -> Result<Option<AccountRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM pds.accounts WHERE did = $1"
    )))
    .bind(did)
    .fetch_optional(executor)
    .await?)
}

/// The account a handle, email or DID names (handles and emails compared case-insensitively,
/// as they are stored lowercase).
pub async fn account_by_identifier<'e>(
    executor: impl PgExecutor<'e>,
    identifier: &str,
) -> Result<Option<AccountRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM pds.accounts
         WHERE did = $1 OR handle = lower($1) OR email = lower($1) LIMIT 1"
    )))
    .bind(identifier)
    .fetch_optional(executor)
    .await?)
}

pub async fn set_status<'e>(executor: impl PgExecutor<'e>, did: &str, status: &str) -> Result<()> {
    sqlx::query("UPDATE pds.accounts SET status = $2, status_changed_at = now() WHERE did = $1")
        .bind(did)
        .bind(status)
        .execute(executor)
        .await?;
    Ok(())
}

pub async fn set_handle<'e>(executor: impl PgExecutor<'e>, did: &str, handle: &str) -> Result<()> {
    sqlx::query("UPDATE pds.accounts SET handle = $2 WHERE did = $1")
        .bind(did)
        .bind(handle)
        .execute(executor)
        .await?;
    Ok(())
}

/// Deletes an account's data and frees its handle and email; the row stays as `deleted` so the
/// DID is never reissued.
pub async fn delete_account(tx: &mut PgConnection, did: &str) -> Result<()> {
    for statement in [
        "DELETE FROM pds.records WHERE did = $1",
        "DELETE FROM pds.repos WHERE did = $1",
        "DELETE FROM pds.repo_blocks WHERE repo_did = $1",
        "DELETE FROM pds.refresh_tokens WHERE did = $1",
        "DELETE FROM pds.app_passwords WHERE did = $1",
        "DELETE FROM pds.record_blobs WHERE did = $1",
        "UPDATE pds.accounts SET status = 'deleted', handle = NULL, email = NULL,
             status_changed_at = now() WHERE did = $1",
    ] {
        sqlx::query(statement).bind(did).execute(&mut *tx).await?;
    }
    Ok(())
}

// ---- Sessions and app passwords ----------------------------------------------------------

pub async fn insert_refresh_token<'e>(
    executor: impl PgExecutor<'e>,
    jti: &str,
    did: &str,
    expires_at: OffsetDateTime,
    app_password: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO pds.refresh_tokens (jti, did, expires_at, app_password_name)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(jti)
    .bind(did)
    .bind(expires_at)
    .bind(app_password)
    .execute(executor)
    .await?;
    Ok(())
}

/// A live session: its account and app password name (`Some(None)` for a password session).
pub async fn session<'e>(
    executor: impl PgExecutor<'e>,
    jti: &str,
    did: &str,
) -> Result<Option<Option<String>>> {
    Ok(sqlx::query_scalar(
        "SELECT app_password_name FROM pds.refresh_tokens
         WHERE jti = $1 AND did = $2 AND expires_at > now()",
    )
    .bind(jti)
    .bind(did)
    .fetch_optional(executor)
    .await?)
}

/// Ends a session; true if it existed.
pub async fn delete_refresh_token<'e>(executor: impl PgExecutor<'e>, jti: &str) -> Result<bool> {
    Ok(sqlx::query("DELETE FROM pds.refresh_tokens WHERE jti = $1")
        .bind(jti)
        .execute(executor)
        .await?
        .rows_affected()
        == 1)
}

pub async fn delete_expired_refresh_tokens<'e>(executor: impl PgExecutor<'e>) -> Result<u64> {
    Ok(
        sqlx::query("DELETE FROM pds.refresh_tokens WHERE expires_at <= now()")
            .execute(executor)
            .await?
            .rows_affected(),
    )
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AppPasswordRow {
    pub name: String,
    pub password_hash: String,
    pub created_at: OffsetDateTime,
}

pub async fn app_passwords<'e>(
    executor: impl PgExecutor<'e>,
    did: &str,
) -> Result<Vec<AppPasswordRow>> {
    Ok(sqlx::query_as(
        "SELECT name, password_hash, created_at FROM pds.app_passwords WHERE did = $1 ORDER BY name",
    )
    .bind(did)
    .fetch_all(executor)
    .await?)
}

pub async fn insert_app_password<'e>(
    executor: impl PgExecutor<'e>,
    did: &str,
    name: &str,
    hash: &str,
) -> Result<OffsetDateTime> {
    Ok(sqlx::query_scalar(
        "INSERT INTO pds.app_passwords (did, name, password_hash) VALUES ($1, $2, $3)
         RETURNING created_at",
    )
    .bind(did)
    .bind(name)
    .bind(hash)
    .fetch_one(executor)
    .await?)
}

/// Deletes an app password and the sessions it opened; false if there was none.
pub async fn delete_app_password(tx: &mut PgConnection, did: &str, name: &str) -> Result<bool> {
    let deleted = sqlx::query("DELETE FROM pds.app_passwords WHERE did = $1 AND name = $2")
        .bind(did)
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query("DELETE FROM pds.refresh_tokens WHERE did = $1 AND app_password_name = $2")
        .bind(did)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    Ok(deleted == 1)
}

// ---- PLC ---------------------------------------------------------------------------------

pub async fn insert_plc_operation<'e>(
    executor: impl PgExecutor<'e>,
    did: &str,
    seq: i64,
    cid: &str,
    operation: &[u8],
) -> Result<()> {
    sqlx::query(
        "INSERT INTO pds.plc_operations (did, cid, operation, seq) VALUES ($1, $2, $3, $4)",
    )
    .bind(did)
    .bind(cid)
    .bind(operation)
    .bind(seq)
    .execute(executor)
    .await?;
    Ok(())
}

/// The latest PLC operation: (seq, cid, DAG-CBOR).
pub async fn latest_plc_operation<'e>(
    executor: impl PgExecutor<'e>,
    did: &str,
) -> Result<Option<(i64, String, Vec<u8>)>> {
    Ok(sqlx::query_as(
        "SELECT seq, cid, operation FROM pds.plc_operations WHERE did = $1
         ORDER BY seq DESC LIMIT 1",
    )
    .bind(did)
    .fetch_optional(executor)
    .await?)
}

// ---- Repositories ------------------------------------------------------------------------

pub async fn insert_repo<'e>(
    executor: impl PgExecutor<'e>,
    did: &str,
    root: &str,
    rev: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO pds.repos (did, root_cid, rev) VALUES ($1, $2, $3)")
        .bind(did)
        .bind(root)
        .bind(rev)
        .execute(executor)
        .await?;
    Ok(())
}

/// The repository's head and revision, locked until the transaction ends.
pub async fn lock_repo(tx: &mut PgConnection, did: &str) -> Result<Option<(String, String)>> {
    Ok(
        sqlx::query_as("SELECT root_cid, rev FROM pds.repos WHERE did = $1 FOR UPDATE")
            .bind(did)
            .fetch_optional(&mut *tx)
            .await?,
    )
}

pub async fn repo<'e>(
    executor: impl PgExecutor<'e>,
    did: &str,
) -> Result<Option<(String, String)>> {
    Ok(
        sqlx::query_as("SELECT root_cid, rev FROM pds.repos WHERE did = $1")
            .bind(did)
            .fetch_optional(executor)
            .await?,
    )
}

pub async fn update_repo<'e>(
    executor: impl PgExecutor<'e>,
    did: &str,
    root: &str,
    rev: &str,
) -> Result<()> {
    sqlx::query("UPDATE pds.repos SET root_cid = $2, rev = $3, updated_at = now() WHERE did = $1")
        .bind(did)
        .bind(root)
        .bind(rev)
        .execute(executor)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RepoListing {
    pub did: String,
    pub root_cid: Option<String>,
    pub rev: Option<String>,
    pub status: String,
}

/// Hosted accounts by DID, with their heads.
pub async fn repos<'e>(
    executor: impl PgExecutor<'e>,
    after: Option<String>,
    limit: i64,
) -> Result<Vec<RepoListing>> {
    Ok(sqlx::query_as(
        "SELECT a.did, r.root_cid, r.rev, a.status FROM pds.accounts a
         LEFT JOIN pds.repos r ON r.did = a.did
         WHERE ($1::text IS NULL OR a.did > $1) ORDER BY a.did LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(executor)
    .await?)
}

/// Stores blocks (those already stored are kept).
pub async fn insert_blocks<'e>(
    executor: impl PgExecutor<'e>,
    did: &str,
    rev: &str,
    blocks: &[(Cid, Vec<u8>)],
) -> Result<()> {
    let cids: Vec<String> = blocks.iter().map(|(c, _)| c.to_string()).collect();
    let bytes: Vec<&[u8]> = blocks.iter().map(|(_, b)| b.as_slice()).collect();
    let sizes: Vec<i32> = blocks.iter().map(|(_, b)| b.len() as i32).collect();
    sqlx::query(
        "INSERT INTO pds.repo_blocks (repo_did, cid, bytes, size, repo_rev)
         SELECT $1, cid, bytes, size, $2
         FROM UNNEST($3::text[], $4::bytea[], $5::integer[]) AS b (cid, bytes, size)
         ON CONFLICT (repo_did, cid) DO NOTHING",
    )
    .bind(did)
    .bind(rev)
    .bind(&cids)
    .bind(&bytes)
    .bind(&sizes)
    .execute(executor)
    .await?;
    Ok(())
}

pub async fn block<'e>(
    executor: impl PgExecutor<'e>,
    did: &str,
    cid: &str,
) -> Result<Option<Vec<u8>>> {
    Ok(
        sqlx::query_scalar("SELECT bytes FROM pds.repo_blocks WHERE repo_did = $1 AND cid = $2")
            .bind(did)
            .bind(cid)
            .fetch_optional(executor)
            .await?,
    )
}

/// Several blocks by CID.
pub async fn blocks<'e>(
    executor: impl PgExecutor<'e>,
    did: &str,
    cids: &[String],
) -> Result<HashMap<String, Vec<u8>>> {
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT cid, bytes FROM pds.repo_blocks WHERE repo_did = $1 AND cid = ANY($2)",
    )
    .bind(did)
    .bind(cids)
    .fetch_all(executor)
    .await?;
    Ok(rows.into_iter().collect())
}

// ---- Records -----------------------------------------------------------------------------

pub async fn upsert_record<'e>(
    executor: impl PgExecutor<'e>,
    did: &str,
    collection: &str,
    rkey: &str,
    cid: &str,
    rev: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO pds.records (did, collection, rkey, cid, repo_rev) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (did, collection, rkey) DO UPDATE SET cid = $4, repo_rev = $5,
             indexed_at = now()",
    )
    .bind(did)
    .bind(collection)
    .bind(rkey)
    .bind(cid)
    .bind(rev)
    .execute(executor)
    .await?;
    Ok(())
}

pub async fn delete_record<'e>(
    executor: impl PgExecutor<'e>,
    did: &str,
    collection: &str,
    rkey: &str,
) -> Result<()> {
    sqlx::query("DELETE FROM pds.records WHERE did = $1 AND collection = $2 AND rkey = $3")
        .bind(did)
        .bind(collection)
        .bind(rkey)
        .execute(executor)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RecordRow {
    pub rkey: String,
    pub cid: String,
    pub bytes: Vec<u8>,
}

pub async fn record<'e>(
    executor: impl PgExecutor<'e>,
    did: &str,
    collection: &str,
    rkey: &str,
) -> Result<Option<RecordRow>> {
    Ok(sqlx::query_as(
        "SELECT r.rkey, r.cid, b.bytes FROM pds.records r
         JOIN pds.repo_blocks b ON b.repo_did = r.did AND b.cid = r.cid
         WHERE r.did = $1 AND r.collection = $2 AND r.rkey = $3",
    )
    .bind(did)
    .bind(collection)
    .bind(rkey)
    .fetch_optional(executor)
    .await?)
}

/// A collection's records by key, descending (ascending if `reverse`), after `after`.
pub async fn records<'e>(
    executor: impl PgExecutor<'e>,
    did: &str,
    collection: &str,
    reverse: bool,
    after: Option<String>,
    limit: i64,
) -> Result<Vec<RecordRow>> {
    let (order, comparison) = if reverse { ("ASC", ">") } else { ("DESC", "<") };
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT r.rkey, r.cid, b.bytes FROM pds.records r
         JOIN pds.repo_blocks b ON b.repo_did = r.did AND b.cid = r.cid
         WHERE r.did = $1 AND r.collection = $2 AND ($3::text IS NULL OR r.rkey {comparison} $3)
         ORDER BY r.rkey {order} LIMIT $4"
    )))
    .bind(did)
    .bind(collection)
    .bind(after)
    .bind(limit)
    .fetch_all(executor)
    .await?)
}

pub async fn collections<'e>(executor: impl PgExecutor<'e>, did: &str) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT collection FROM pds.records WHERE did = $1 ORDER BY collection",
    )
    .bind(did)
    .fetch_all(executor)
    .await?)
}

/// Empties a repository's blocks and listing (an import replaces them).
pub async fn clear_repo(tx: &mut PgConnection, did: &str) -> Result<()> {
    sqlx::query("DELETE FROM pds.record_blobs WHERE did = $1")
        .bind(did)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM pds.records WHERE did = $1")
        .bind(did)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM pds.repo_blocks WHERE repo_did = $1")
        .bind(did)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Lists records (collection, rkey, CID) at `rev`.
pub async fn insert_records<'e>(
    executor: impl PgExecutor<'e>,
    did: &str,
    rev: &str,
    records: &[(String, String, String)],
) -> Result<()> {
    let collections: Vec<&str> = records.iter().map(|r| r.0.as_str()).collect();
    let rkeys: Vec<&str> = records.iter().map(|r| r.1.as_str()).collect();
    let cids: Vec<&str> = records.iter().map(|r| r.2.as_str()).collect();
    sqlx::query(
        "INSERT INTO pds.records (did, collection, rkey, cid, repo_rev)
         SELECT $1, collection, rkey, cid, $2
         FROM UNNEST($3::text[], $4::text[], $5::text[]) AS r (collection, rkey, cid)",
    )
    .bind(did)
    .bind(rev)
    .bind(&collections)
    .bind(&rkeys)
    .bind(&cids)
    .execute(executor)
    .await?;
    Ok(())
}

// ---- Blobs -------------------------------------------------------------------------------

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BlobRow {
    pub cid: String,
    pub sha256: Vec<u8>,
    pub mime_type: String,
    pub size: i64,
}

/// Lists an uploaded blob for an account (uploading the same bytes again keeps the first type).
pub async fn insert_blob<'e>(
    executor: impl PgExecutor<'e>,
    did: &str,
    blob: &BlobRow,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO pds.blobs (did, cid, sha256, mime_type, size) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (did, cid) DO UPDATE SET created_at = now()",
    )
    .bind(did)
    .bind(&blob.cid)
    .bind(&blob.sha256)
    .bind(&blob.mime_type)
    .bind(blob.size)
    .execute(executor)
    .await?;
    Ok(())
}

pub async fn blob<'e>(
    executor: impl PgExecutor<'e>,
    did: &str,
    cid: &str,
) -> Result<Option<BlobRow>> {
    Ok(sqlx::query_as(
        "SELECT cid, sha256, mime_type, size FROM pds.blobs WHERE did = $1 AND cid = $2",
    )
    .bind(did)
    .bind(cid)
    .fetch_optional(executor)
    .await?)
}

pub async fn blob_cids<'e>(
    executor: impl PgExecutor<'e>,
    did: &str,
    after: Option<String>,
    limit: i64,
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT cid FROM pds.blobs WHERE did = $1 AND ($2::text IS NULL OR cid > $2)
         ORDER BY cid LIMIT $3",
    )
    .bind(did)
    .bind(after)
    .bind(limit)
    .fetch_all(executor)
    .await?)
}

/// Of `cids`, those the account has uploaded, locked against collection until the transaction
/// ends.
pub async fn lock_blobs(tx: &mut PgConnection, did: &str, cids: &[String]) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT cid FROM pds.blobs WHERE did = $1 AND cid = ANY($2) FOR SHARE")
            .bind(did)
            .bind(cids)
            .fetch_all(&mut *tx)
            .await?,
    )
}

/// Records which blobs a record references (replacing what it referenced before).
pub async fn set_record_blobs(
    tx: &mut PgConnection,
    did: &str,
    path: &str,
    cids: &[String],
) -> Result<()> {
    sqlx::query("DELETE FROM pds.record_blobs WHERE did = $1 AND record_path = $2")
        .bind(did)
        .bind(path)
        .execute(&mut *tx)
        .await?;
    if !cids.is_empty() {
        sqlx::query(
            "INSERT INTO pds.record_blobs (did, record_path, blob_cid)
             SELECT $1, $2, blob FROM UNNEST($3::text[]) AS b (blob) ON CONFLICT DO NOTHING",
        )
        .bind(did)
        .bind(path)
        .bind(cids)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Blobs uploaded more than an hour ago that no record references: (did, cid).
pub async fn unreferenced_blobs<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT b.did, b.cid FROM pds.blobs b
         WHERE b.created_at < now() - interval '1 hour'
           AND NOT EXISTS (SELECT 1 FROM pds.record_blobs r
                           WHERE r.did = b.did AND r.blob_cid = b.cid)
         LIMIT 10000",
    )
    .fetch_all(executor)
    .await?)
}

/// Deletes a blob's listing if, under its lock, it is still unreferenced and old; returns its
/// SHA-256 if deleted.
pub async fn delete_unreferenced_blob(
    tx: &mut PgConnection,
    did: &str,
    cid: &str,
) -> Result<Option<Vec<u8>>> {
    let locked: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT sha256 FROM pds.blobs WHERE did = $1 AND cid = $2
           AND created_at < now() - interval '1 hour' FOR UPDATE",
    )
    .bind(did)
    .bind(cid)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(sha256) = locked else {
        return Ok(None);
    };
    let referenced: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pds.record_blobs WHERE did = $1 AND blob_cid = $2)",
    )
    .bind(did)
    .bind(cid)
    .fetch_one(&mut *tx)
    .await?;
    if referenced {
        return Ok(None);
    }
    sqlx::query("DELETE FROM pds.blobs WHERE did = $1 AND cid = $2")
        .bind(did)
        .bind(cid)
        .execute(&mut *tx)
        .await?;
    Ok(Some(sha256))
}

/// Whether any account still lists bytes with this SHA-256.
pub async fn blob_bytes_listed<'e>(executor: impl PgExecutor<'e>, sha256: &[u8]) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pds.blobs WHERE sha256 = $1)")
            .bind(sha256)
            .fetch_one(executor)
            .await?,
    )
}
