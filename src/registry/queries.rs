//! The registry's SQL. Every function takes an executor (a pool, or `&mut *tx` when it is part of
//! a larger change) and returns domain rows. Listing orders and filters come from closed enums,
//! never from client text, so the few statements assembled at run time are safe.

use serde_json::{Value, json};
use sqlx::{PgConnection, PgExecutor, PgPool, types::Json};
use time::OffsetDateTime;
use uuid::Uuid;

use super::domain::{Manifest, Scope, Semver, choose_latest};
use crate::{
    auth::TokenDigest,
    blobs::{BlobInfo, Sha256},
    error::{Error, Result},
    notify,
};

/// A statement assembled from this module's constants and closed enums (never client text).
macro_rules! sql {
    ($($format:tt)*) => {
        sqlx::AssertSqlSafe(format!($($format)*))
    };
}

/// The `NOTIFY` channel of new registry events; the payload is the event's sequence number.
pub const EVENTS_CHANNEL: &str = "registry_events";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub uuid: Uuid,
    pub username: String,
    pub avatar: String,
    pub created_at: OffsetDateTime,
}

const USER_COLUMNS: &str = "u.uuid, u.username, u.avatar, u.created_at";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PackageRow {
    pub pointer: Uuid,
    pub name: String,
    pub data: Json<Value>,
    pub package_type: String,
    pub downloads: i64,
    pub stargazers_count: i64,
    pub created: OffsetDateTime,
    pub updated: OffsetDateTime,
    pub latest_version: Option<String>,
    pub latest_engine: Option<Json<Value>>,
    pub names: Vec<String>,
}

/// Columns of a listed package (`data` without the readme).
const PACKAGE_COLUMNS: &str = "p.pointer, p.name, p.data - 'readme' AS data, p.package_type, p.downloads,
    p.stargazers_count, p.created, p.updated, lv.semver::text AS latest_version, lv.engine AS latest_engine,
    ARRAY(SELECT n.name FROM registry.names n WHERE n.pointer = p.pointer ORDER BY n.name) AS names";
const PACKAGE_FROM: &str = "registry.packages p
    LEFT JOIN registry.versions lv ON lv.package_id = p.pointer AND lv.status = 'latest'";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VersionRow {
    pub id: i32,
    pub package_id: Uuid,
    pub package_name: String,
    pub semver: String,
    pub status: String,
    pub engine: Json<Value>,
    pub license: String,
    pub meta: Json<Value>,
    pub tarball_sha256: Vec<u8>,
    pub tarball_size: i64,
    pub downloads: i64,
    pub yanked: bool,
    pub deleted_at: Option<OffsetDateTime>,
    pub created: OffsetDateTime,
}

const VERSION_SELECT: &str = "SELECT v.id, v.package_id, p.name AS package_name, v.semver::text AS semver,
    v.status::text AS status, v.engine, v.license::text AS license, v.meta, v.tarball_sha256, v.tarball_size,
    v.downloads, v.yanked, v.deleted_at, v.created
    FROM registry.versions v JOIN registry.packages p ON p.pointer = v.package_id";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiTokenRow {
    pub id: Uuid,
    pub username: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub packages: Option<Vec<String>>,
    pub expires_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub seq: i64,
    pub kind: String,
    pub package: Uuid,
    pub name: String,
    pub version: String,
    pub old_name: String,
    pub created_at: OffsetDateTime,
}

fn hex(digest: &TokenDigest) -> String {
    Sha256::from_bytes(*digest.as_bytes()).to_hex()
}

// ---- users and tokens ----

pub async fn user_by_oauth_digest(pool: &PgPool, digest: &TokenDigest) -> Result<Option<UserRow>> {
    Ok(sqlx::query_as(sql!(
        "SELECT {USER_COLUMNS} FROM registry.users u WHERE u.token = $1"
    ))
    .bind(hex(digest))
    .fetch_optional(pool)
    .await?)
}

/// Creates or updates the user an identity provider vouched for, remembering the token's digest.
pub async fn upsert_provider_user(
    pool: &PgPool,
    login: &str,
    avatar: &str,
    node_id: &str,
    digest: &TokenDigest,
) -> Result<UserRow> {
    let mut tx = pool.begin().await?;
    // Logins can change hands at the provider: a login now belonging to another account moves
    // to it, and the previous holder (even an unclaimed admin-made user, when this account
    // already has a row) keeps a disambiguated name.
    sqlx::query(
        "UPDATE registry.users SET username = username || '~' || left(uuid::text, 8)
         WHERE username = $1 AND node_id IS DISTINCT FROM $2
           AND (node_id IS NOT NULL OR EXISTS (SELECT 1 FROM registry.users WHERE node_id = $2))",
    )
    .bind(login)
    .bind(node_id)
    .execute(&mut *tx)
    .await?;
    // A user an admin created by name is claimed by the provider account of that name.
    sqlx::query(
        "UPDATE registry.users SET node_id = $2
         WHERE username = $1 AND node_id IS NULL
           AND NOT EXISTS (SELECT 1 FROM registry.users WHERE node_id = $2)",
    )
    .bind(login)
    .bind(node_id)
    .execute(&mut *tx)
    .await?;
    let user: UserRow = sqlx::query_as(sql!(
        "INSERT INTO registry.users AS u (username, avatar, node_id, token) VALUES ($1, $2, $3, $4)
         ON CONFLICT (node_id) DO UPDATE
             SET username = EXCLUDED.username, avatar = EXCLUDED.avatar, token = EXCLUDED.token
         RETURNING {USER_COLUMNS}"
    ))
    .bind(login)
    .bind(avatar)
    .bind(node_id)
    .bind(hex(digest))
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(user)
}

pub async fn create_user(pool: &PgPool, username: &str) -> Result<UserRow> {
    sqlx::query_as(sql!(
        "INSERT INTO registry.users AS u (username) VALUES ($1) RETURNING {USER_COLUMNS}"
    ))
    .bind(username)
    .fetch_one(pool)
    .await
    .map_err(|e| match Error::from(e) {
        Error::AlreadyExists { .. } => Error::already_exists("user", username),
        other => other,
    })
}

pub async fn user_by_name<'e>(executor: impl PgExecutor<'e>, username: &str) -> Result<UserRow> {
    sqlx::query_as(sql!(
        "SELECT {USER_COLUMNS} FROM registry.users u WHERE u.username = $1"
    ))
    .bind(username)
    .fetch_optional(executor)
    .await?
    .ok_or_else(|| Error::not_found("user", username))
}

pub async fn api_token_caller(
    pool: &PgPool,
    digest: &TokenDigest,
) -> Result<Option<(UserRow, Vec<Scope>, Option<Vec<String>>)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        user: UserRow,
        scopes: Vec<String>,
        packages: Option<Vec<String>>,
    }
    let row: Option<Row> = sqlx::query_as(sql!(
        "SELECT {USER_COLUMNS}, t.scopes, t.packages
         FROM registry.api_tokens t JOIN registry.users u ON u.uuid = t.user_id
         WHERE t.token_sha256 = $1 AND t.revoked_at IS NULL
           AND (t.expires_at IS NULL OR t.expires_at > now())"
    ))
    .bind(digest.as_bytes().as_slice())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| {
        let scopes = r.scopes.iter().filter_map(|s| Scope::from_db(s)).collect();
        (r.user, scopes, r.packages)
    }))
}

const TOKEN_COLUMNS: &str =
    "t.id, u.username, t.name, t.scopes, t.packages, t.expires_at, t.created_at, t.revoked_at";

pub async fn create_api_token(
    pool: &PgPool,
    user: &UserRow,
    digest: &TokenDigest,
    name: &str,
    scopes: &[Scope],
    packages: Option<&[String]>,
    expires_at: Option<OffsetDateTime>,
) -> Result<ApiTokenRow> {
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    Ok(sqlx::query_as(sql!(
        "WITH t AS (
             INSERT INTO registry.api_tokens (user_id, token_sha256, name, scopes, packages, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING *)
         SELECT {TOKEN_COLUMNS} FROM t JOIN registry.users u ON u.uuid = t.user_id"
    ))
    .bind(user.uuid)
    .bind(digest.as_bytes().as_slice())
    .bind(name)
    .bind(&scopes)
    .bind(packages)
    .bind(expires_at)
    .fetch_one(pool)
    .await?)
}

pub async fn list_api_tokens(pool: &PgPool, user: &UserRow) -> Result<Vec<ApiTokenRow>> {
    Ok(sqlx::query_as(sql!(
        "SELECT {TOKEN_COLUMNS} FROM registry.api_tokens t JOIN registry.users u ON u.uuid = t.user_id
         WHERE t.user_id = $1 ORDER BY t.created_at DESC, t.id"
    ))
    .bind(user.uuid)
    .fetch_all(pool)
    .await?)
}

/// Revokes a token; `owner` limits it to that user's tokens. NOT_FOUND if there is no such
/// (unrevoked) token.
pub async fn revoke_api_token(pool: &PgPool, id: Uuid, owner: Option<Uuid>) -> Result<()> {
    let done = sqlx::query(
        "UPDATE registry.api_tokens SET revoked_at = now()
         WHERE id = $1 AND revoked_at IS NULL AND ($2::uuid IS NULL OR user_id = $2)",
    )
    .bind(id)
    .bind(owner)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::not_found("api token", id.to_string()));
    }
    Ok(())
}

// ---- packages ----

/// The package a name (current or former) points at, if it is not deleted.
pub async fn resolve<'e>(executor: impl PgExecutor<'e>, name: &str) -> Result<Uuid> {
    sqlx::query_scalar(
        "SELECT p.pointer FROM registry.names n JOIN registry.packages p ON p.pointer = n.pointer
         WHERE n.name = $1 AND p.deleted_at IS NULL",
    )
    .bind(name)
    .fetch_optional(executor)
    .await?
    .ok_or_else(|| Error::not_found("package", name))
}

/// Locks a live package for a change and returns its current name.
pub async fn lock(tx: &mut PgConnection, name: &str) -> Result<(Uuid, String)> {
    sqlx::query_as(
        "SELECT p.pointer, p.name FROM registry.names n JOIN registry.packages p ON p.pointer = n.pointer
         WHERE n.name = $1 AND p.deleted_at IS NULL FOR UPDATE OF p",
    )
    .bind(name)
    .fetch_optional(tx)
    .await?
    .ok_or_else(|| Error::not_found("package", name))
}

pub async fn name_taken<'e>(executor: impl PgExecutor<'e>, name: &str) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM registry.names WHERE name = $1)")
            .bind(name)
            .fetch_one(executor)
            .await?,
    )
}

pub async fn is_owner<'e>(
    executor: impl PgExecutor<'e>,
    package: Uuid,
    user: Uuid,
) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM registry.owners WHERE package = $1 AND \"user\" = $2)",
    )
    .bind(package)
    .bind(user)
    .fetch_one(executor)
    .await?)
}

fn package_data(manifest: &Manifest, readme: &str) -> Value {
    json!({
        "description": manifest.description,
        "keywords": manifest.keywords,
        "repository": manifest.repository,
        "readme": readme,
    })
}

/// Bounded so the document stays under PostgreSQL's 1 MiB tsvector limit whatever the input.
const SEARCH_DOCUMENT: &str = "setweight(to_tsvector('simple', $2), 'A')
    || setweight(to_tsvector('english', left($3, 60000)), 'B')
    || setweight(to_tsvector('english', left($4, 100000)), 'D')";

fn search_text(manifest: &Manifest) -> String {
    format!("{} {}", manifest.description, manifest.keywords.join(" "))
}

fn package_type(manifest: &Manifest) -> &'static str {
    if manifest.is_theme {
        "theme"
    } else {
        "package"
    }
}

/// Creates a package and reserves its name. ALREADY_EXISTS if the name was ever taken.
pub async fn insert_package(
    tx: &mut PgConnection,
    manifest: &Manifest,
    readme: &str,
) -> Result<Uuid> {
    let name = manifest.name.as_str();
    let pointer: Uuid = sqlx::query_scalar(sql!(
        "INSERT INTO registry.packages (name, creation_method, data, package_type, search)
         VALUES ($2, 'publish', $1, $5, {SEARCH_DOCUMENT}) RETURNING pointer"
    ))
    .bind(Json(package_data(manifest, readme)))
    .bind(name)
    .bind(search_text(manifest))
    .bind(readme)
    .bind(package_type(manifest))
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| taken_as_exists(e, name))?;
    sqlx::query("INSERT INTO registry.names (name, pointer) VALUES ($1, $2)")
        .bind(name)
        .bind(pointer)
        .execute(&mut *tx)
        .await
        .map_err(|e| taken_as_exists(e, name))?;
    Ok(pointer)
}

fn taken_as_exists(error: sqlx::Error, name: &str) -> Error {
    match Error::from(error) {
        Error::AlreadyExists { .. } => Error::already_exists("package", name),
        other => other,
    }
}

/// Points `new_name` at the package and makes it current. ALREADY_EXISTS if another package ever
/// had the name.
pub async fn rename(tx: &mut PgConnection, package: Uuid, new_name: &str) -> Result<()> {
    let holder: Option<Uuid> =
        sqlx::query_scalar("SELECT pointer FROM registry.names WHERE name = $1")
            .bind(new_name)
            .fetch_optional(&mut *tx)
            .await?;
    match holder {
        Some(p) if p != package => return Err(Error::already_exists("package", new_name)),
        Some(_) => {}
        None => {
            sqlx::query("INSERT INTO registry.names (name, pointer) VALUES ($1, $2)")
                .bind(new_name)
                .bind(package)
                .execute(&mut *tx)
                .await
                .map_err(|e| taken_as_exists(e, new_name))?;
        }
    }
    sqlx::query("UPDATE registry.packages SET name = $2 WHERE pointer = $1")
        .bind(package)
        .bind(new_name)
        .execute(&mut *tx)
        .await
        .map_err(|e| taken_as_exists(e, new_name))?;
    Ok(())
}

/// Refreshes the package's listing data from a newly published manifest.
pub async fn update_package_data(
    tx: &mut PgConnection,
    package: Uuid,
    manifest: &Manifest,
    readme: &str,
) -> Result<()> {
    sqlx::query(sql!(
        "UPDATE registry.packages SET data = $1, search = {SEARCH_DOCUMENT}, package_type = $5, updated = now()
         WHERE pointer = $6"
    ))
    .bind(Json(package_data(manifest, readme)))
    .bind(manifest.name.as_str())
    .bind(search_text(manifest))
    .bind(readme)
    .bind(package_type(manifest))
    .bind(package)
    .execute(tx)
    .await?;
    Ok(())
}

/// Records a version. ALREADY_EXISTS if its number was ever used for this package.
pub async fn insert_version(
    tx: &mut PgConnection,
    package: Uuid,
    manifest: &Manifest,
    tarball: &BlobInfo,
    publisher: Option<Uuid>,
) -> Result<i32> {
    sqlx::query_scalar(
        "INSERT INTO registry.versions
             (package_id, semver, engine, license, meta, tarball_sha256, tarball_size, published_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(package)
    .bind(manifest.version.to_string())
    .bind(Json(&manifest.engines))
    .bind(&manifest.license)
    .bind(Json(&manifest.raw))
    .bind(tarball.sha256.as_bytes().as_slice())
    .bind(tarball.size as i64)
    .bind(publisher)
    .fetch_one(tx)
    .await
    .map_err(|e| match Error::from(e) {
        Error::AlreadyExists { .. } => {
            Error::already_exists("version", format!("{}@{}", manifest.name, manifest.version))
        }
        other => other,
    })
}

/// Moves `latest` to the highest offered version (releases before pre-releases).
pub async fn recompute_latest(tx: &mut PgConnection, package: Uuid) -> Result<()> {
    let offered: Vec<(i32, String)> = sqlx::query_as(
        "SELECT id, semver::text FROM registry.versions
         WHERE package_id = $1 AND NOT yanked AND deleted_at IS NULL",
    )
    .bind(package)
    .fetch_all(&mut *tx)
    .await?;
    let parsed: Vec<(Semver, i32)> = offered
        .into_iter()
        .filter_map(|(id, v)| Semver::parse("semver", &v).ok().map(|v| (v, id)))
        .collect();
    let latest = choose_latest(parsed.iter().map(|(v, id)| (v, *id)));
    sqlx::query("UPDATE registry.versions SET status = 'published' WHERE package_id = $1 AND status = 'latest'")
        .bind(package)
        .execute(&mut *tx)
        .await?;
    if let Some(id) = latest {
        sqlx::query("UPDATE registry.versions SET status = 'latest' WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

pub async fn add_owner(tx: &mut PgConnection, package: Uuid, user: Uuid) -> Result<()> {
    sqlx::query(
        "INSERT INTO registry.owners (package, \"user\") VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(package)
    .bind(user)
    .execute(tx)
    .await?;
    Ok(())
}

/// Removes an owner, refusing to remove the last one.
pub async fn remove_owner(tx: &mut PgConnection, package: Uuid, user: Uuid) -> Result<()> {
    let owners: Vec<Uuid> =
        sqlx::query_scalar("SELECT \"user\" FROM registry.owners WHERE package = $1")
            .bind(package)
            .fetch_all(&mut *tx)
            .await?;
    if !owners.contains(&user) {
        return Err(Error::not_found("owner", user.to_string()));
    }
    if owners.len() == 1 {
        return Err(Error::failed_precondition(
            "LAST_OWNER",
            "username",
            "a package keeps at least one owner; add another first",
        ));
    }
    sqlx::query("DELETE FROM registry.owners WHERE package = $1 AND \"user\" = $2")
        .bind(package)
        .bind(user)
        .execute(tx)
        .await?;
    Ok(())
}

pub async fn owners<'e>(executor: impl PgExecutor<'e>, package: Uuid) -> Result<Vec<UserRow>> {
    Ok(sqlx::query_as(sql!(
        "SELECT {USER_COLUMNS} FROM registry.owners o JOIN registry.users u ON u.uuid = o.\"user\"
         WHERE o.package = $1 ORDER BY u.username"
    ))
    .bind(package)
    .fetch_all(executor)
    .await?)
}

/// Appends an event and wakes followers on every replica once the transaction commits. The
/// advisory lock orders concurrent writers, so sequence numbers become visible in order.
pub async fn append_event(
    tx: &mut PgConnection,
    kind: &str,
    package: Uuid,
    name: &str,
    version: &str,
    old_name: &str,
) -> Result<i64> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('registry.events'))")
        .execute(&mut *tx)
        .await?;
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO registry.events (kind, package, name, version, old_name)
         VALUES ($1, $2, $3, $4, $5) RETURNING seq",
    )
    .bind(kind)
    .bind(package)
    .bind(name)
    .bind(version)
    .bind(old_name)
    .fetch_one(&mut *tx)
    .await?;
    notify::notify(&mut *tx, EVENTS_CHANNEL, &seq.to_string()).await?;
    Ok(seq)
}

pub async fn events_after(pool: &PgPool, after: i64, limit: i64) -> Result<Vec<EventRow>> {
    Ok(sqlx::query_as(
        "SELECT seq, kind, package, name, version, old_name, created_at FROM registry.events
         WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

pub async fn package<'e>(
    executor: impl PgExecutor<'e>,
    pointer: Uuid,
) -> Result<(PackageRow, String)> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        package: PackageRow,
        readme: Option<String>,
    }
    let row: Row = sqlx::query_as(sql!(
        "SELECT {PACKAGE_COLUMNS}, p.data->>'readme' AS readme FROM {PACKAGE_FROM} WHERE p.pointer = $1"
    ))
    .bind(pointer)
    .fetch_one(executor)
    .await?;
    Ok((row.package, row.readme.unwrap_or_default()))
}

/// Every version of a package, newest first by semver precedence.
pub async fn versions<'e>(executor: impl PgExecutor<'e>, package: Uuid) -> Result<Vec<VersionRow>> {
    let mut rows: Vec<VersionRow> =
        sqlx::query_as(sql!("{VERSION_SELECT} WHERE v.package_id = $1"))
            .bind(package)
            .fetch_all(executor)
            .await?;
    rows.sort_by_cached_key(|v| std::cmp::Reverse(semver::Version::parse(&v.semver).ok()));
    Ok(rows)
}

pub async fn version<'e>(
    executor: impl PgExecutor<'e>,
    package: Uuid,
    semver: &str,
) -> Result<VersionRow> {
    sqlx::query_as(sql!(
        "{VERSION_SELECT} WHERE v.package_id = $1 AND v.semver = $2"
    ))
    .bind(package)
    .bind(semver)
    .fetch_optional(executor)
    .await?
    .ok_or_else(|| Error::not_found("version", semver))
}

pub async fn latest_version<'e>(
    executor: impl PgExecutor<'e>,
    package: Uuid,
    name: &str,
) -> Result<VersionRow> {
    sqlx::query_as(sql!(
        "{VERSION_SELECT} WHERE v.package_id = $1 AND v.status = 'latest'"
    ))
    .bind(package)
    .fetch_optional(executor)
    .await?
    .ok_or_else(|| {
        Error::failed_precondition(
            "NO_LATEST_VERSION",
            name,
            "every version is yanked or deleted",
        )
    })
}

/// Counts one download of a version, exactly under concurrency (row-level increments). The
/// package row is locked before the version's, in the order publishes, yanks and deletes lock
/// them ([`lock`], then the versions): the other order deadlocks with a concurrent publish.
pub async fn count_download(pool: &PgPool, version: i32, package: Uuid) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE registry.packages SET downloads = downloads + 1 WHERE pointer = $1")
        .bind(package)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE registry.versions SET downloads = downloads + 1 WHERE id = $1")
        .bind(version)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn set_yanked(tx: &mut PgConnection, version: i32, yanked: bool) -> Result<()> {
    // Leaving `latest` first keeps the status CHECK satisfied; recompute_latest then decides.
    sqlx::query("UPDATE registry.versions SET status = 'published', yanked = $2 WHERE id = $1")
        .bind(version)
        .bind(yanked)
        .execute(tx)
        .await?;
    Ok(())
}

pub async fn mark_version_deleted(tx: &mut PgConnection, version: i32) -> Result<()> {
    sqlx::query(
        "UPDATE registry.versions SET status = 'published', deleted_at = now() WHERE id = $1",
    )
    .bind(version)
    .execute(tx)
    .await?;
    Ok(())
}

/// Whether any live version still points at these bytes (tarballs are content-addressed, so two
/// versions may share them).
pub async fn tarball_in_use<'e>(executor: impl PgExecutor<'e>, sha256: &Sha256) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM registry.versions WHERE tarball_sha256 = $1 AND deleted_at IS NULL)",
    )
    .bind(sha256.as_bytes().as_slice())
    .fetch_one(executor)
    .await?)
}

pub async fn touch(tx: &mut PgConnection, package: Uuid) -> Result<()> {
    sqlx::query("UPDATE registry.packages SET updated = now() WHERE pointer = $1")
        .bind(package)
        .execute(tx)
        .await?;
    Ok(())
}

/// Deletes a package: its versions are marked deleted, its names stay reserved. Returns the
/// tarballs that may have lost their last reference.
pub async fn mark_package_deleted(tx: &mut PgConnection, package: Uuid) -> Result<Vec<Vec<u8>>> {
    let tarballs: Vec<Vec<u8>> = sqlx::query_scalar(
        "UPDATE registry.versions SET status = 'published', deleted_at = coalesce(deleted_at, now())
         WHERE package_id = $1 RETURNING tarball_sha256",
    )
    .bind(package)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE registry.packages SET deleted_at = now(), updated = now() WHERE pointer = $1",
    )
    .bind(package)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM registry.featured WHERE pointer = $1")
        .bind(package)
        .execute(&mut *tx)
        .await?;
    Ok(tarballs)
}

// ---- stars ----

/// Stars (or unstars) a package for a user, keeping `stargazers_count` equal to the number of
/// stars. Idempotent. Returns the count after.
pub async fn set_star(pool: &PgPool, package: Uuid, user: Uuid, starred: bool) -> Result<i64> {
    let mut tx = pool.begin().await?;
    let changed = if starred {
        sqlx::query(
            "INSERT INTO registry.stars (package, \"user\") VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
    } else {
        sqlx::query("DELETE FROM registry.stars WHERE package = $1 AND \"user\" = $2")
    }
    .bind(package)
    .bind(user)
    .execute(&mut *tx)
    .await?
    .rows_affected() as i64;
    let delta = if starred { changed } else { -changed };
    let count: i64 = sqlx::query_scalar(
        "UPDATE registry.packages SET stargazers_count = stargazers_count + $2 WHERE pointer = $1
         RETURNING stargazers_count",
    )
    .bind(package)
    .bind(delta)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(count)
}

/// Position of a star in a listing: (when, whose/which).
pub type StarPosition = (OffsetDateTime, Uuid);

pub async fn stargazers(
    pool: &PgPool,
    package: Uuid,
    after: Option<StarPosition>,
    limit: i64,
) -> Result<Vec<(UserRow, OffsetDateTime)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        user: UserRow,
        starred_at: OffsetDateTime,
    }
    let rows: Vec<Row> = sqlx::query_as(sql!(
        "SELECT {USER_COLUMNS}, s.created_at AS starred_at
         FROM registry.stars s JOIN registry.users u ON u.uuid = s.\"user\"
         WHERE s.package = $1 AND ($2::timestamptz IS NULL OR (s.created_at, u.uuid) < ($2, $3))
         ORDER BY s.created_at DESC, u.uuid DESC LIMIT $4"
    ))
    .bind(package)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.user, r.starred_at)).collect())
}

pub async fn user_stars(
    pool: &PgPool,
    user: Uuid,
    after: Option<StarPosition>,
    limit: i64,
) -> Result<Vec<(PackageRow, OffsetDateTime)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        package: PackageRow,
        starred_at: OffsetDateTime,
    }
    let rows: Vec<Row> = sqlx::query_as(sql!(
        "SELECT {PACKAGE_COLUMNS}, s.created_at AS starred_at
         FROM registry.stars s JOIN {PACKAGE_FROM} ON p.pointer = s.package
         WHERE s.\"user\" = $1 AND p.deleted_at IS NULL
           AND ($2::timestamptz IS NULL OR (s.created_at, p.pointer) < ($2, $3))
         ORDER BY s.created_at DESC, p.pointer DESC LIMIT $4"
    ))
    .bind(user)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.package, r.starred_at))
        .collect())
}

// ---- featured ----

pub async fn set_featured(pool: &PgPool, package: Uuid, featured: bool) -> Result<()> {
    if featured {
        sqlx::query("INSERT INTO registry.featured (pointer) VALUES ($1) ON CONFLICT DO NOTHING")
    } else {
        sqlx::query("DELETE FROM registry.featured WHERE pointer = $1")
    }
    .bind(package)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn featured(pool: &PgPool, package_type: Option<&str>) -> Result<Vec<PackageRow>> {
    Ok(sqlx::query_as(sql!(
        "SELECT {PACKAGE_COLUMNS} FROM registry.featured f JOIN {PACKAGE_FROM} ON p.pointer = f.pointer
         WHERE p.deleted_at IS NULL AND ($1::text IS NULL OR p.package_type = $1)
         ORDER BY f.added_at DESC, p.pointer"
    ))
    .bind(package_type)
    .fetch_all(pool)
    .await?)
}

// ---- listing and search ----

/// How listings are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Downloads,
    Stars,
    Created,
    Updated,
    /// Exact name first, then full-text rank, then downloads (searches only).
    Relevance,
}

/// Where a page ends: the last row's sort values.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub enum Position {
    Count(i64, Uuid),
    Time(OffsetDateTime, Uuid),
    Relevance {
        exact: bool,
        rank: f32,
        downloads: i64,
        pointer: Uuid,
    },
}

#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub owner: Option<Uuid>,
    pub package_type: Option<&'static str>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ListedRow {
    #[sqlx(flatten)]
    pub package: PackageRow,
    pub exact: bool,
    pub rank: f32,
}

impl ListedRow {
    pub fn position(&self, order: Order) -> Position {
        let p = &self.package;
        match order {
            Order::Downloads => Position::Count(p.downloads, p.pointer),
            Order::Stars => Position::Count(p.stargazers_count, p.pointer),
            Order::Created => Position::Time(p.created, p.pointer),
            Order::Updated => Position::Time(p.updated, p.pointer),
            Order::Relevance => Position::Relevance {
                exact: self.exact,
                rank: self.rank,
                downloads: p.downloads,
                pointer: p.pointer,
            },
        }
    }
}

/// One page of packages, optionally matching a full-text `query`, after `after`.
pub async fn list(
    pool: &PgPool,
    query: Option<&str>,
    order: Order,
    ascending: bool,
    filter: &Filter,
    after: Option<Position>,
    limit: i64,
) -> Result<Vec<ListedRow>> {
    let (cmp, dir) = if ascending {
        (">", "ASC")
    } else {
        ("<", "DESC")
    };
    // $1 query, $2 owner, $3 type, $4..$7 position, $8 limit.
    let (key, sort) = match order {
        Order::Downloads => (
            "(p.downloads, p.pointer)",
            format!("p.downloads {dir}, p.pointer {dir}"),
        ),
        Order::Stars => (
            "(p.stargazers_count, p.pointer)",
            format!("p.stargazers_count {dir}, p.pointer {dir}"),
        ),
        Order::Created => (
            "(p.created, p.pointer)",
            format!("p.created {dir}, p.pointer {dir}"),
        ),
        Order::Updated => (
            "(p.updated, p.pointer)",
            format!("p.updated {dir}, p.pointer {dir}"),
        ),
        Order::Relevance => (
            "(p.name = $1, ts_rank(p.search, q.query), p.downloads, p.pointer)",
            format!("exact {dir}, rank {dir}, p.downloads {dir}, p.pointer {dir}"),
        ),
    };
    let position = match (after, order) {
        (None, _) => String::new(),
        (Some(Position::Count(..)), Order::Downloads | Order::Stars) => {
            format!("AND {key} {cmp} ($4::bigint, $7::uuid)")
        }
        (Some(Position::Time(..)), Order::Created | Order::Updated) => {
            format!("AND {key} {cmp} ($5::timestamptz, $7::uuid)")
        }
        (Some(Position::Relevance { .. }), Order::Relevance) => {
            format!("AND {key} {cmp} ($6::boolean, $9::real, $4::bigint, $7::uuid)")
        }
        _ => {
            return Err(Error::invalid_argument(
                "page_token",
                "belongs to a different order",
            ));
        }
    };
    let matching = if query.is_some() {
        "AND (p.search @@ q.query OR p.name = $1)"
    } else {
        ""
    };
    // The page is chosen from packages alone; only its rows are then joined with their latest
    // version and names (joining first made the planner hash-join every version).
    let sql = format!(
        "WITH q AS (SELECT plainto_tsquery('english', coalesce($1, '')) || plainto_tsquery('simple', coalesce($1, '')) AS query),
         page AS (
             SELECT p.pointer,
                    coalesce(p.name = $1, false) AS exact,
                    CASE WHEN $1 IS NULL THEN 0::real ELSE ts_rank(p.search, q.query) END AS rank
             FROM registry.packages p CROSS JOIN q
             WHERE p.deleted_at IS NULL {matching}
               AND ($2::uuid IS NULL OR EXISTS (SELECT 1 FROM registry.owners o WHERE o.package = p.pointer AND o.\"user\" = $2))
               AND ($3::text IS NULL OR p.package_type = $3)
               {position}
             ORDER BY {sort} LIMIT $8)
         SELECT {PACKAGE_COLUMNS}, page.exact, page.rank
         FROM page JOIN {PACKAGE_FROM} ON p.pointer = page.pointer
         ORDER BY {sort}"
    );
    let (count, time, exact, rank, pointer) = match after {
        Some(Position::Count(c, p)) => (Some(c), None, None, None, Some(p)),
        Some(Position::Time(t, p)) => (None, Some(t), None, None, Some(p)),
        Some(Position::Relevance {
            exact,
            rank,
            downloads,
            pointer,
        }) => (
            Some(downloads),
            None,
            Some(exact),
            Some(rank),
            Some(pointer),
        ),
        None => (None, None, None, None, None),
    };
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(query)
        .bind(filter.owner)
        .bind(filter.package_type)
        .bind(count)
        .bind(time)
        .bind(exact)
        .bind(pointer)
        .bind(limit)
        .bind(rank)
        .fetch_all(pool)
        .await?)
}
