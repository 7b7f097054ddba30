//! Griot's SQL: packages, the trust policy, installation jobs (queue, lease, log), and what is
//! installed on each node.

use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool, types::Json};
use time::OffsetDateTime;
use uuid::Uuid;

use super::domain::PackageId;
use crate::error::Result;

/// `NOTIFY` channel waking workers: payload `new` (a job was queued) or `cancel <job id>`.
pub const JOBS_CHANNEL: &str = "griot_jobs";
/// `NOTIFY` channel of log lines and job ends: payload `<job id> <json>` (see `logs.rs`).
pub const LOGS_CHANNEL: &str = "griot_logs";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PackageRow {
    pub package_id: String,
    pub manifest: Json<Value>,
    pub artifact_url: String,
    pub author_did: String,
    pub signature: String,
    pub created_at: OffsetDateTime,
    pub artifact_size: Option<i64>,
}

const PACKAGE_COLUMNS: &str =
    "package_id, manifest, artifact_url, author_did, signature, created_at, artifact_size";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub job_id: Uuid,
    pub package_id: String,
    pub target_node_id: String,
    pub status: String,
    pub status_message: Option<String>,
    pub created_at: OffsetDateTime,
    pub started_at: Option<OffsetDateTime>,
    pub completed_at: Option<OffsetDateTime>,
    pub idempotency_key: Option<String>,
    pub options: Json<Value>,
    pub attempts: i32,
    pub cancel_requested: bool,
    pub log_count: i64,
}

impl JobRow {
    pub fn is_terminal(&self) -> bool {
        is_terminal(&self.status)
    }
}

pub fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

const JOB_COLUMNS: &str = "job_id, package_id, target_node_id, status, status_message, created_at,
    started_at, completed_at, idempotency_key, options, attempts, cancel_requested, log_count";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LogRow {
    pub seq: i64,
    pub logged_at: OffsetDateTime,
    pub level: String,
    pub message: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TrustRow {
    pub author_did: String,
    pub trust: String,
    pub note: String,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NodePackageRow {
    pub package_id: String,
    pub name: String,
    pub node_class: String,
    pub version: String,
    pub job_id: Uuid,
    pub installed_at: OffsetDateTime,
}

pub struct NewPackage<'a> {
    pub id: &'a PackageId,
    pub manifest: &'a Value,
    pub artifact_url: &'a str,
    pub author_did: &'a str,
    pub signature: &'a str,
    pub artifact_size: Option<i64>,
}

/// Inserts a package; `None` if its id is taken.
pub async fn insert_package(
    tx: &mut PgConnection,
    package: &NewPackage<'_>,
) -> Result<Option<PackageRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO griot.packages (package_id, manifest, artifact_url, author_did, signature, artifact_size)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (package_id) DO NOTHING RETURNING {PACKAGE_COLUMNS}"
    )))
    .bind(package.id.to_string())
    .bind(Json(package.manifest))
    .bind(package.artifact_url)
    .bind(package.author_did)
    .bind(package.signature)
    .bind(package.artifact_size)
    .fetch_optional(tx)
    .await?)
}

/// Points a package registered by URL at bytes the server now holds.
pub async fn hold_artifact(
    tx: &mut PgConnection,
    id: &PackageId,
    url: &str,
    size: i64,
) -> Result<PackageRow> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE griot.packages SET artifact_url = $2, artifact_size = $3 WHERE package_id = $1
         RETURNING {PACKAGE_COLUMNS}"
    )))
    .bind(id.to_string())
    .bind(url)
    .bind(size)
    .fetch_one(tx)
    .await?)
}

pub async fn package<'e>(
    executor: impl PgExecutor<'e>,
    id: &PackageId,
) -> Result<Option<PackageRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PACKAGE_COLUMNS} FROM griot.packages WHERE package_id = $1"
    )))
    .bind(id.to_string())
    .fetch_optional(executor)
    .await?)
}

/// Whether a package holds these bytes (garbage collection's question).
pub async fn artifact_in_use<'e>(executor: impl PgExecutor<'e>, id: &PackageId) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM griot.packages WHERE package_id = $1 AND artifact_size IS NOT NULL)",
    )
    .bind(id.to_string())
    .fetch_one(executor)
    .await?)
}

#[derive(Debug, Default, Clone)]
pub struct PackageFilter {
    pub author_did: Option<String>,
    pub node_class: Option<String>,
    pub name: Option<String>,
    pub manifest_contains: Option<Value>,
}

pub async fn list_packages<'e>(
    executor: impl PgExecutor<'e>,
    filter: &PackageFilter,
    after: Option<(OffsetDateTime, String)>,
    limit: i64,
) -> Result<Vec<PackageRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PACKAGE_COLUMNS} FROM griot.packages
         WHERE ($1::text IS NULL OR author_did = $1)
           AND ($2::text IS NULL OR node_class = $2)
           AND ($3::text IS NULL OR name = $3)
           AND ($4::jsonb IS NULL OR manifest @> $4)
           AND ($5::timestamptz IS NULL OR (created_at, package_id) < ($5, $6))
         ORDER BY created_at DESC, package_id DESC LIMIT $7"
    )))
    .bind(&filter.author_did)
    .bind(&filter.node_class)
    .bind(&filter.name)
    .bind(filter.manifest_contains.as_ref().map(Json))
    .bind(after.as_ref().map(|a| a.0))
    .bind(after.as_ref().map(|a| a.1.clone()))
    .bind(limit)
    .fetch_all(executor)
    .await?)
}

/// The policy's view of one author: its entry (`trusted`/`revoked`), and whether any author is
/// trusted (so that unlisted ones are refused).
pub async fn trust_of<'e>(
    executor: impl PgExecutor<'e>,
    author_did: &str,
) -> Result<(Option<String>, bool)> {
    Ok(sqlx::query_as(
        "SELECT (SELECT trust FROM griot.author_trust WHERE author_did = $1),
                EXISTS (SELECT 1 FROM griot.author_trust WHERE trust = 'trusted')",
    )
    .bind(author_did)
    .fetch_one(executor)
    .await?)
}

pub async fn set_trust<'e>(
    executor: impl PgExecutor<'e>,
    author_did: &str,
    trust: &str,
    note: &str,
) -> Result<TrustRow> {
    Ok(sqlx::query_as(
        "INSERT INTO griot.author_trust (author_did, trust, note) VALUES ($1, $2, $3)
         ON CONFLICT (author_did) DO UPDATE SET trust = $2, note = $3, updated_at = now()
         RETURNING author_did, trust, note, updated_at",
    )
    .bind(author_did)
    .bind(trust)
    .bind(note)
    .fetch_one(executor)
    .await?)
}

pub async fn remove_trust<'e>(executor: impl PgExecutor<'e>, author_did: &str) -> Result<()> {
    sqlx::query("DELETE FROM griot.author_trust WHERE author_did = $1")
        .bind(author_did)
        .execute(executor)
        .await?;
    Ok(())
}

pub async fn list_trust<'e>(executor: impl PgExecutor<'e>) -> Result<Vec<TrustRow>> {
    Ok(sqlx::query_as(
        "SELECT author_did, trust, note, updated_at FROM griot.author_trust ORDER BY author_did",
    )
    .fetch_all(executor)
    .await?)
}

pub struct NewJob<'a> {
    pub package_id: &'a PackageId,
    pub target_node_id: &'a str,
    pub options: &'a Value,
    pub idempotency_key: Option<&'a str>,
}

/// Queues a job; `None` when its idempotency key is taken.
pub async fn insert_job(tx: &mut PgConnection, job: &NewJob<'_>) -> Result<Option<JobRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO griot.installations (package_id, target_node_id, status, status_message, options, idempotency_key)
         VALUES ($1, $2, 'pending', 'queued', $3, $4)
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING {JOB_COLUMNS}"
    )))
    .bind(job.package_id.to_string())
    .bind(job.target_node_id)
    .bind(Json(job.options))
    .bind(job.idempotency_key)
    .fetch_optional(tx)
    .await?)
}

pub async fn job_by_key<'e>(executor: impl PgExecutor<'e>, key: &str) -> Result<Option<JobRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM griot.installations WHERE idempotency_key = $1"
    )))
    .bind(key)
    .fetch_optional(executor)
    .await?)
}

pub async fn job<'e>(executor: impl PgExecutor<'e>, job_id: Uuid) -> Result<Option<JobRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM griot.installations WHERE job_id = $1"
    )))
    .bind(job_id)
    .fetch_optional(executor)
    .await?)
}

/// Every log message of a job, in order: the seed's `logs` column, through its view.
pub async fn job_logs<'e>(executor: impl PgExecutor<'e>, job_id: Uuid) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT logs FROM griot.installations_with_logs WHERE job_id = $1")
            .bind(job_id)
            .fetch_optional(executor)
            .await?
            .unwrap_or_default(),
    )
}

#[derive(Debug, Default, Clone)]
pub struct JobFilter {
    pub status: Option<&'static str>,
    pub target_node_id: Option<String>,
    pub package_id: Option<String>,
}

pub async fn list_jobs<'e>(
    executor: impl PgExecutor<'e>,
    filter: &JobFilter,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<JobRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM griot.installations
         WHERE ($1::text IS NULL OR status = $1)
           AND ($2::text IS NULL OR target_node_id = $2)
           AND ($3::text IS NULL OR package_id = $3)
           AND ($4::timestamptz IS NULL OR (created_at, job_id) < ($4, $5))
         ORDER BY created_at DESC, job_id DESC LIMIT $6"
    )))
    .bind(filter.status)
    .bind(&filter.target_node_id)
    .bind(&filter.package_id)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(executor)
    .await?)
}

/// Cancels a pending job at once, or asks a running one's worker to stop. Returns the job after
/// the change; the caller notifies.
pub async fn cancel_job(tx: &mut PgConnection, job_id: Uuid) -> Result<Option<JobRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE griot.installations SET
             status = CASE WHEN status = 'pending' THEN 'cancelled' ELSE status END,
             status_message = CASE WHEN status = 'pending' THEN 'cancelled before it started'
                                   ELSE status_message END,
             completed_at = CASE WHEN status = 'pending' THEN now() ELSE completed_at END,
             cancel_requested = cancel_requested OR status IN ('pending', 'running')
         WHERE job_id = $1 RETURNING {JOB_COLUMNS}"
    )))
    .bind(job_id)
    .fetch_optional(tx)
    .await?)
}

/// Claims the oldest pending job, or a running one whose worker's lease expired (that worker
/// died), for `lease_seconds`, skipping targets another job is installing onto. `FOR UPDATE SKIP LOCKED`: concurrent workers on any replica each
/// get a different job, and none waits for another.
pub async fn claim_job<'e>(
    executor: impl PgExecutor<'e>,
    worker_id: Uuid,
    lease_seconds: f64,
) -> Result<Option<JobRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH next AS (
             SELECT job_id FROM griot.installations c
             WHERE (status = 'pending' OR (status = 'running' AND lease_until < now()))
               -- Not while another job installs onto the same target (the run's target lock
               -- settles the rare race of two claims at once).
               AND NOT EXISTS (SELECT 1 FROM griot.installations r
                               WHERE r.target_node_id = c.target_node_id AND r.job_id <> c.job_id
                                 AND r.status = 'running' AND r.lease_until >= now())
             ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
         UPDATE griot.installations i SET
             status = 'running', worker_id = $1, lease_until = now() + make_interval(secs => $2),
             started_at = coalesce(i.started_at, now()), attempts = i.attempts + 1,
             status_message = 'running'
         FROM next WHERE i.job_id = next.job_id RETURNING {}",
        JOB_COLUMNS.replace("job_id,", "i.job_id,")
    )))
    .bind(worker_id)
    .bind(lease_seconds)
    .fetch_optional(executor)
    .await?)
}

/// Extends a worker's lease. `None` if the worker lost the job (its lease expired and another
/// worker claimed it, or it ended); otherwise whether cancellation was requested.
pub async fn renew_lease<'e>(
    executor: impl PgExecutor<'e>,
    job_id: Uuid,
    worker_id: Uuid,
    lease_seconds: f64,
) -> Result<Option<bool>> {
    Ok(sqlx::query_scalar(
        "UPDATE griot.installations SET lease_until = now() + make_interval(secs => $3)
         WHERE job_id = $1 AND worker_id = $2 AND status = 'running' RETURNING cancel_requested",
    )
    .bind(job_id)
    .bind(worker_id)
    .bind(lease_seconds)
    .fetch_optional(executor)
    .await?)
}

/// Gives a job back on shutdown: its lease ends now, so another worker resumes it at once.
pub async fn release_job<'e>(
    executor: impl PgExecutor<'e>,
    job_id: Uuid,
    worker_id: Uuid,
) -> Result<()> {
    sqlx::query(
        "UPDATE griot.installations SET lease_until = now(), status_message = 'waiting for a worker'
         WHERE job_id = $1 AND worker_id = $2 AND status = 'running'",
    )
    .bind(job_id)
    .bind(worker_id)
    .execute(executor)
    .await?;
    Ok(())
}

/// What became of a batch of log lines.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    /// Written now, the first numbered `from`.
    Now { from: i64 },
    /// Written by an earlier attempt whose answer was lost (its commit was cut off from us).
    Before,
    /// The job is no longer this worker's: nothing may be written.
    NotHeld,
}

/// Appends log lines after the job's last and notifies followers, all in one statement (one
/// transaction). `written` is how many lines the job has as far as its writer knows: the lines
/// go in only if that is still so, which makes a retried batch idempotent (a batch whose commit
/// succeeded but whose answer never came would otherwise be appended twice). Only the job's
/// current worker may write. `lines_json` is the lines as followers' notifications carry them,
/// or `None` when too large for a notification (followers then read the rows).
#[allow(clippy::too_many_arguments)]
pub async fn append_logs(
    pool: &PgPool,
    job_id: Uuid,
    worker_id: Uuid,
    written: i64,
    levels: &[&str],
    times: &[OffsetDateTime],
    messages: &[String],
    lines_json: Option<&str>,
) -> Result<Appended> {
    let from: Option<i64> = sqlx::query_scalar(
        "WITH bumped AS (
             UPDATE griot.installations SET log_count = log_count + cardinality($3::text[])
             WHERE job_id = $1 AND worker_id = $2 AND status = 'running' AND log_count = $8
             RETURNING log_count - cardinality($3::text[]) AS base),
         inserted AS (
             INSERT INTO griot.installation_logs (job_id, seq, logged_at, level, message)
             SELECT $1, bumped.base + l.ord, l.at, l.level, l.message
             FROM bumped, unnest($3::text[], $4::timestamptz[], $5::text[])
                 WITH ORDINALITY AS l(level, at, message, ord))
         SELECT base + 1 FROM bumped,
             LATERAL (SELECT pg_notify($6, $1::text || ' ' || json_build_object(
                 'from', base + 1, 'count', cardinality($3::text[]), 'lines', $7::json)::text)) AS n",
    )
    .bind(job_id)
    .bind(worker_id)
    .bind(levels)
    .bind(times)
    .bind(messages)
    .bind(LOGS_CHANNEL)
    .bind(lines_json)
    .bind(written)
    .fetch_optional(pool)
    .await?;
    if let Some(from) = from {
        return Ok(Appended::Now { from });
    }
    let count = held_log_count(pool, job_id, worker_id).await?;
    // Only the job's worker writes its lines, one batch at a time: a count that moved on by
    // exactly this batch is this batch.
    Ok(match count {
        Some(count) if count == written + levels.len() as i64 => Appended::Before,
        _ => Appended::NotHeld,
    })
}

/// How many log lines a job has, if `worker_id` still holds it.
pub async fn held_log_count(pool: &PgPool, job_id: Uuid, worker_id: Uuid) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT log_count FROM griot.installations
         WHERE job_id = $1 AND worker_id = $2 AND status = 'running'",
    )
    .bind(job_id)
    .bind(worker_id)
    .fetch_optional(pool)
    .await?)
}

/// Ends a job (completed, failed or cancelled) and tells followers, if this worker still holds
/// it. Whether it did.
pub async fn finish_job<'e>(
    executor: impl PgExecutor<'e>,
    job_id: Uuid,
    worker_id: Uuid,
    status: &str,
    message: &str,
) -> Result<bool> {
    let done: Option<i64> = sqlx::query_scalar(
        "WITH done AS (
             UPDATE griot.installations SET status = $3, status_message = $4, completed_at = now(),
                 lease_until = NULL
             WHERE job_id = $1 AND worker_id = $2 AND status = 'running' RETURNING log_count)
         SELECT log_count FROM done,
             LATERAL (SELECT pg_notify($5, $1::text || ' ' ||
                 json_build_object('end', $3::text, 'last', log_count)::text)) AS n",
    )
    .bind(job_id)
    .bind(worker_id)
    .bind(status)
    .bind(message)
    .bind(LOGS_CHANNEL)
    .fetch_optional(executor)
    .await?;
    Ok(done.is_some())
}

/// Log lines of a job after `after_seq`, in order.
pub async fn logs_after<'e>(
    executor: impl PgExecutor<'e>,
    job_id: Uuid,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<LogRow>> {
    Ok(sqlx::query_as(
        "SELECT seq, logged_at, level, message FROM griot.installation_logs
         WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(job_id)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(executor)
    .await?)
}

pub async fn node_packages<'e>(
    executor: impl PgExecutor<'e>,
    target: &str,
) -> Result<Vec<NodePackageRow>> {
    Ok(sqlx::query_as(
        "SELECT package_id, name, node_class, version, job_id, installed_at FROM griot.node_packages
         WHERE target_node_id = $1 ORDER BY name, node_class, installed_at",
    )
    .bind(target)
    .fetch_all(executor)
    .await?)
}

/// Versions of a name and node class installed on a target, other than `except`'s.
pub async fn installed_versions<'e>(
    executor: impl PgExecutor<'e>,
    target: &str,
    name: &str,
    node_class: &str,
    except: &PackageId,
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT version FROM griot.node_packages
         WHERE target_node_id = $1 AND name = $2 AND node_class = $3 AND package_id <> $4",
    )
    .bind(target)
    .bind(name)
    .bind(node_class)
    .bind(except.to_string())
    .fetch_all(executor)
    .await?)
}

pub async fn is_installed<'e>(
    executor: impl PgExecutor<'e>,
    target: &str,
    id: &PackageId,
) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM griot.node_packages WHERE target_node_id = $1 AND package_id = $2)",
    )
    .bind(target)
    .bind(id.to_string())
    .fetch_one(executor)
    .await?)
}

pub struct Installed<'a> {
    pub target: &'a str,
    pub id: &'a PackageId,
    pub name: &'a str,
    pub node_class: &'a str,
    pub version: &'a str,
    pub job_id: Uuid,
}

/// Records a package as installed on its target, if `claim` still holds the job. Whether it did.
pub async fn record_installed<'e>(
    executor: impl PgExecutor<'e>,
    installed: &Installed<'_>,
    claim: Uuid,
) -> Result<bool> {
    Ok(sqlx::query(
        "INSERT INTO griot.node_packages (target_node_id, package_id, name, node_class, version, job_id)
         SELECT $1, $2, $3, $4, $5, $6
         WHERE EXISTS (SELECT 1 FROM griot.installations
                       WHERE job_id = $6 AND worker_id = $7 AND status = 'running')
         ON CONFLICT (target_node_id, package_id) DO UPDATE SET job_id = $6, installed_at = now()",
    )
    .bind(installed.target)
    .bind(installed.id.to_string())
    .bind(installed.name)
    .bind(installed.node_class)
    .bind(installed.version)
    .bind(installed.job_id)
    .bind(claim)
    .execute(executor)
    .await?
    .rows_affected()
        == 1)
}

/// Forgets a package a job installed (rollback), if `claim` still holds the job. Whether it
/// did: only then may its directory go.
pub async fn forget_installed<'e>(
    executor: impl PgExecutor<'e>,
    target: &str,
    id: &PackageId,
    job_id: Uuid,
    claim: Uuid,
) -> Result<bool> {
    Ok(sqlx::query(
        "DELETE FROM griot.node_packages
         WHERE target_node_id = $1 AND package_id = $2 AND job_id = $3
           AND EXISTS (SELECT 1 FROM griot.installations
                       WHERE job_id = $3 AND worker_id = $4 AND status = 'running')",
    )
    .bind(target)
    .bind(id.to_string())
    .bind(job_id)
    .bind(claim)
    .execute(executor)
    .await?
    .rows_affected()
        == 1)
}

/// The packages a job installed, newest first.
pub async fn installed_by_job<'e>(
    executor: impl PgExecutor<'e>,
    job_id: Uuid,
) -> Result<Vec<PackageId>> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT package_id FROM griot.node_packages WHERE job_id = $1 ORDER BY installed_at DESC",
    )
    .bind(job_id)
    .fetch_all(executor)
    .await?;
    ids.iter()
        .map(|id| PackageId::parse("package_id", id))
        .collect()
}
