//! The market's SQL: users and sessions, datasets, datapods and their search.

use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, types::Json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{auth::TokenDigest, blobs::Sha256, error::Result};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub google_id: String,
    pub email: String,
    pub name: Option<String>,
    pub profile_image: Option<String>,
    pub sui_address: Option<String>,
    pub salt: String,
    pub average_rating: f64,
    pub total_sales: i32,
    pub total_purchases: i32,
    pub created_at: OffsetDateTime,
}

const USER_COLUMNS: &str = "u.id, u.google_id, u.email, u.name, u.profile_image, u.sui_address,
    u.salt, u.average_rating::float8 AS average_rating, u.total_sales, u.total_purchases, u.created_at";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DatasetRow {
    pub id: Uuid,
    pub seller_id: Uuid,
    pub blob_id: String,
    pub storage_size: i64,
    pub wrapped_key: Vec<u8>,
    pub encryption_key_hash: String,
    pub encryption_iv: String,
    pub file_type: String,
    pub file_size: i64,
    pub data_hash: String,
    pub schema: Option<Json<Value>>,
    pub sample_data: Option<Json<Value>>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DatapodRow {
    pub id: Uuid,
    pub seller_id: Uuid,
    pub title: String,
    pub description: Option<String>,
    pub category: Option<String>,
    pub price_mist: i64,
    pub walrus_blob_id: String,
    pub walrus_storage_size: Option<i64>,
    pub encryption_key_hash: String,
    pub encryption_iv: String,
    pub file_type: Option<String>,
    pub file_size: Option<i64>,
    pub data_hash: Option<String>,
    pub schema: Option<Json<Value>>,
    pub sample_data: Option<Json<Value>>,
    pub published: bool,
    pub purchase_count: i32,
    pub average_rating: f64,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub dataset_id: Uuid,
    pub seller_name: Option<String>,
    pub seller_image: Option<String>,
    pub seller_rating: f64,
    pub seller_sales: i32,
    pub seller_purchases: i32,
    pub seller_created_at: OffsetDateTime,
    /// The value of the listing's sort key, as PostgreSQL prints it (for page tokens).
    pub sort_key: Option<String>,
}

/// A datapod with its seller, from `d` joined to `u`; `{sort}` is the sort key expression.
const DATAPOD_SELECT: &str = "SELECT d.id, d.seller_id, d.title, d.description, d.category,
    (d.price_sui * 1000000000)::bigint AS price_mist, d.walrus_blob_id, d.walrus_storage_size,
    d.encryption_key_hash, d.encryption_iv, d.file_type, d.file_size, d.data_hash, d.schema,
    d.sample_data, d.published, d.purchase_count, d.average_rating::float8 AS average_rating,
    d.created_at, d.updated_at, d.dataset_id, u.name AS seller_name,
    u.profile_image AS seller_image, u.average_rating::float8 AS seller_rating,
    u.total_sales AS seller_sales, u.total_purchases AS seller_purchases,
    u.created_at AS seller_created_at, ({sort})::text AS sort_key
    FROM market.datapods d JOIN market.users u ON u.id = d.seller_id";

fn datapod_select(sort: &str) -> String {
    DATAPOD_SELECT.replace("{sort}", sort)
}

/// The document full-text search matches: a stored generated column with the GIN index.
const DOCUMENT: &str = "d.search_document";

pub struct SignedIn<'a> {
    pub google_id: &'a str,
    pub email: &'a str,
    pub name: Option<&'a str>,
    pub picture: Option<&'a str>,
    /// Used only if the user is new: the salt is generated once.
    pub new_salt: &'a str,
}

/// Creates the user on first sign-in, or refreshes their profile; whether it was created.
pub async fn upsert_user(tx: &mut PgConnection, who: &SignedIn<'_>) -> Result<(UserRow, bool)> {
    let (id, created): (Uuid, bool) = sqlx::query_as(
        "INSERT INTO market.users AS u (google_id, email, name, profile_image, salt)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (google_id) DO UPDATE SET email = $2, name = $3, profile_image = $4,
             updated_at = now()
         RETURNING u.id, (xmax = 0) AS created",
    )
    .bind(who.google_id)
    .bind(who.email)
    .bind(who.name)
    .bind(who.picture)
    .bind(who.new_salt)
    .fetch_one(&mut *tx)
    .await?;
    Ok((user(&mut *tx, id).await?, created))
}

pub async fn user<'e>(executor: impl PgExecutor<'e>, id: Uuid) -> Result<UserRow> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM market.users u WHERE u.id = $1"
    )))
    .bind(id)
    .fetch_one(executor)
    .await?)
}

/// Records a user's proven Sui address (ALREADY_EXISTS if another user proved it).
pub async fn set_sui_address<'e>(
    executor: impl PgExecutor<'e>,
    user_id: Uuid,
    address: &str,
) -> Result<()> {
    sqlx::query("UPDATE market.users SET sui_address = $2, updated_at = now() WHERE id = $1")
        .bind(user_id)
        .bind(address)
        .execute(executor)
        .await?;
    Ok(())
}

pub async fn create_session<'e>(
    executor: impl PgExecutor<'e>,
    digest: &TokenDigest,
    user_id: Uuid,
    expires_at: OffsetDateTime,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO market.sessions (token_sha256, user_id, expires_at) VALUES ($1, $2, $3)",
    )
    .bind(&digest.as_bytes()[..])
    .bind(user_id)
    .bind(expires_at)
    .execute(executor)
    .await?;
    Ok(())
}

/// The user of a live session.
pub async fn session_user<'e>(
    executor: impl PgExecutor<'e>,
    digest: &TokenDigest,
) -> Result<Option<UserRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM market.sessions s JOIN market.users u ON u.id = s.user_id
         WHERE s.token_sha256 = $1 AND s.expires_at > now()"
    )))
    .bind(&digest.as_bytes()[..])
    .fetch_optional(executor)
    .await?)
}

pub async fn delete_session<'e>(executor: impl PgExecutor<'e>, digest: &TokenDigest) -> Result<()> {
    sqlx::query("DELETE FROM market.sessions WHERE token_sha256 = $1")
        .bind(&digest.as_bytes()[..])
        .execute(executor)
        .await?;
    Ok(())
}

/// Deletes datasets uploaded more than `days` ago that never became a datapod; returns their
/// blobs.
pub async fn expire_unused_datasets<'e>(
    executor: impl PgExecutor<'e>,
    days: i32,
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "DELETE FROM market.datasets d
         WHERE d.created_at < now() - make_interval(days => $1)
           AND NOT EXISTS (SELECT 1 FROM market.datapods p WHERE p.dataset_id = d.id)
         RETURNING d.blob_id",
    )
    .bind(days)
    .fetch_all(executor)
    .await?)
}

/// Removes expired sessions (hourly).
pub async fn delete_expired_sessions<'e>(executor: impl PgExecutor<'e>) -> Result<u64> {
    Ok(
        sqlx::query("DELETE FROM market.sessions WHERE expires_at <= now()")
            .execute(executor)
            .await?
            .rows_affected(),
    )
}

pub async fn blob_in_use<'e>(executor: impl PgExecutor<'e>, sha256: &Sha256) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM market.datasets WHERE blob_id = $1)")
            .bind(sha256.to_hex())
            .fetch_one(executor)
            .await?,
    )
}

pub async fn insert_dataset(tx: &mut PgConnection, row: &DatasetRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO market.datasets (id, seller_id, blob_id, storage_size, wrapped_key,
             encryption_key_hash, encryption_iv, file_type, file_size, data_hash, schema, sample_data)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(row.id)
    .bind(row.seller_id)
    .bind(&row.blob_id)
    .bind(row.storage_size)
    .bind(&row.wrapped_key)
    .bind(&row.encryption_key_hash)
    .bind(&row.encryption_iv)
    .bind(&row.file_type)
    .bind(row.file_size)
    .bind(&row.data_hash)
    .bind(&row.schema)
    .bind(&row.sample_data)
    .execute(tx)
    .await?;
    Ok(())
}

pub struct NewDatapod<'a> {
    pub seller_id: Uuid,
    pub dataset_id: Uuid,
    pub title: &'a str,
    pub description: &'a str,
    pub category: Option<&'a str>,
    pub price_mist: i64,
}

/// Creates a datapod from one of the seller's datasets; `None` if it is not theirs.
pub async fn insert_datapod<'e>(
    executor: impl PgExecutor<'e>,
    new: &NewDatapod<'_>,
) -> Result<Option<Uuid>> {
    Ok(sqlx::query_scalar(
        "INSERT INTO market.datapods (seller_id, title, description, category, price_sui,
             walrus_blob_id, walrus_storage_size, encryption_key_hash, encryption_iv, file_type,
             file_size, data_hash, schema, sample_data, dataset_id)
         SELECT $1, $2, $3, $4, $5::numeric * 0.000000001, blob_id, storage_size,
             encryption_key_hash, encryption_iv, file_type, file_size, data_hash, schema,
             sample_data, id
         FROM market.datasets WHERE id = $6 AND seller_id = $1
         RETURNING id",
    )
    .bind(new.seller_id)
    .bind(new.title)
    .bind(new.description)
    .bind(new.category)
    .bind(new.price_mist)
    .bind(new.dataset_id)
    .fetch_optional(executor)
    .await?)
}

pub async fn datapod<'e>(executor: impl PgExecutor<'e>, id: Uuid) -> Result<Option<DatapodRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{} WHERE d.id = $1",
        datapod_select("NULL")
    )))
    .bind(id)
    .fetch_optional(executor)
    .await?)
}

/// The seller of a datapod and whether it is published, if it exists.
pub async fn datapod_seller<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
) -> Result<Option<(Uuid, bool)>> {
    Ok(
        sqlx::query_as("SELECT seller_id, published FROM market.datapods WHERE id = $1")
            .bind(id)
            .fetch_optional(executor)
            .await?,
    )
}

pub struct DatapodChanges<'a> {
    pub title: Option<&'a str>,
    pub description: Option<&'a str>,
    pub category: Option<Option<&'a str>>,
    pub price_mist: Option<i64>,
    pub published: Option<bool>,
}

pub async fn update_datapod<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
    changes: &DatapodChanges<'_>,
) -> Result<()> {
    sqlx::query(
        "UPDATE market.datapods SET
             title = coalesce($2, title),
             description = CASE WHEN $3::boolean THEN $4 ELSE description END,
             category = CASE WHEN $5::boolean THEN $6 ELSE category END,
             price_sui = coalesce($7::numeric * 0.000000001, price_sui),
             published = coalesce($8, published),
             updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(changes.title)
    .bind(changes.description.is_some())
    .bind(changes.description)
    .bind(changes.category.is_some())
    .bind(changes.category.flatten())
    .bind(changes.price_mist)
    .bind(changes.published)
    .execute(executor)
    .await?;
    Ok(())
}

/// Deletes a datapod and its dataset; returns the dataset's blob.
pub async fn delete_datapod(tx: &mut PgConnection, id: Uuid) -> Result<Option<String>> {
    let dataset: Option<Uuid> =
        sqlx::query_scalar("DELETE FROM market.datapods WHERE id = $1 RETURNING dataset_id")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(dataset) = dataset else {
        return Ok(None);
    };
    Ok(
        sqlx::query_scalar("DELETE FROM market.datasets WHERE id = $1 RETURNING blob_id")
            .bind(dataset)
            .fetch_optional(&mut *tx)
            .await?,
    )
}

/// How a listing is ordered: the sort key's SQL, its type, and its direction. Page tokens hold
/// the key as PostgreSQL prints it, read back with the same type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Newest,
    PriceAscending,
    PriceDescending,
    Rating,
    Sales,
    Relevance,
}

impl Sort {
    fn key(self) -> String {
        match self {
            Sort::Newest => "d.created_at".into(),
            Sort::PriceAscending | Sort::PriceDescending => "d.price_sui".into(),
            Sort::Rating => "d.average_rating".into(),
            Sort::Sales => "d.purchase_count".into(),
            Sort::Relevance => format!("ts_rank({DOCUMENT}, plainto_tsquery('english', $1))"),
        }
    }

    fn sql_type(self) -> &'static str {
        match self {
            Sort::Newest => "timestamptz",
            Sort::PriceAscending | Sort::PriceDescending | Sort::Rating => "numeric",
            Sort::Sales => "integer",
            Sort::Relevance => "real",
        }
    }

    fn descending(self) -> bool {
        self != Sort::PriceAscending
    }
}

#[derive(Debug, Clone, Default)]
pub struct Search {
    pub query: String,
    pub category: Option<String>,
    pub min_price_mist: i64,
    pub max_price_mist: Option<i64>,
    pub min_rating: f64,
}

/// The search statement for `sort`. Parameters: $1 query ('' for all), $2 category, $3 lowest
/// price and $4 highest price in MIST, $5 lowest rating, $6 the sort key after which to start
/// (text) and $7 the id, $8 the limit.
pub fn search_sql(sort: Sort) -> String {
    let key = sort.key();
    let (direction, comparison) = if sort.descending() {
        ("DESC", "<")
    } else {
        ("ASC", ">")
    };
    format!(
        "{select}
         WHERE d.published
           AND ($1 = '' OR {DOCUMENT} @@ plainto_tsquery('english', $1))
           AND ($2::text IS NULL OR d.category = $2)
           AND d.price_sui >= $3::numeric * 0.000000001
           AND ($4::bigint IS NULL OR d.price_sui <= $4::numeric * 0.000000001)
           AND d.average_rating >= $5
           AND ($6::text IS NULL OR ({key}, d.id) {comparison} ($6::{ty}, $7))
         ORDER BY {key} {direction}, d.id {direction} LIMIT $8",
        select = datapod_select(&key),
        ty = sort.sql_type(),
    )
}

/// Published datapods matching `search`, in `sort` order, after `after` (key text, id).
pub async fn search<'e>(
    executor: impl PgExecutor<'e>,
    search: &Search,
    sort: Sort,
    after: Option<(String, Uuid)>,
    limit: i64,
) -> Result<Vec<DatapodRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(search_sql(sort)))
        .bind(&search.query)
        .bind(&search.category)
        .bind(search.min_price_mist)
        .bind(search.max_price_mist)
        .bind(search.min_rating)
        .bind(after.as_ref().map(|a| a.0.clone()))
        .bind(after.as_ref().map(|a| a.1))
        .bind(limit)
        .fetch_all(executor)
        .await?)
}

/// A seller's datapods, newest first.
pub async fn seller_datapods<'e>(
    executor: impl PgExecutor<'e>,
    seller: Uuid,
    after: Option<(String, Uuid)>,
    limit: i64,
) -> Result<Vec<DatapodRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{} WHERE d.seller_id = $1
           AND ($2::text IS NULL OR (d.created_at, d.id) < ($2::timestamptz, $3))
         ORDER BY d.created_at DESC, d.id DESC LIMIT $4",
        datapod_select("d.created_at")
    )))
    .bind(seller)
    .bind(after.as_ref().map(|a| a.0.clone()))
    .bind(after.as_ref().map(|a| a.1))
    .bind(limit)
    .fetch_all(executor)
    .await?)
}
