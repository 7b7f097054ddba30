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

// ---- Purchases, escrow, downloads ------------------------------------------------------------

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PurchaseRow {
    pub id: Uuid,
    pub datapod_id: Uuid,
    pub datapod_title: String,
    pub datapod_category: Option<String>,
    pub seller_id: Uuid,
    pub seller_name: Option<String>,
    pub seller_image: Option<String>,
    pub seller_rating: f64,
    pub seller_sales: i32,
    pub seller_purchases: i32,
    pub seller_created_at: OffsetDateTime,
    pub buyer_id: Uuid,
    pub buyer_name: Option<String>,
    pub buyer_image: Option<String>,
    pub buyer_rating: f64,
    pub buyer_sales: i32,
    pub buyer_purchases: i32,
    pub buyer_created_at: OffsetDateTime,
    pub payment_tx_digest: String,
    pub amount_mist: i64,
    pub price_mist: i64,
    pub status: String,
    pub escrow_status: Option<String>,
    pub buyer_public_key: Vec<u8>,
    pub decryption_key: Option<String>,
    pub refund_reason: Option<String>,
    pub idempotency_key: Option<String>,
    pub created_at: OffsetDateTime,
    pub completed_at: Option<OffsetDateTime>,
    pub updated_at: OffsetDateTime,
    pub review_id: Option<Uuid>,
    pub review_rating: Option<i32>,
    pub review_comment: Option<String>,
    pub review_created_at: Option<OffsetDateTime>,
    pub review_updated_at: Option<OffsetDateTime>,
}

/// A purchase with its datapod, both users, escrow and review.
const PURCHASE_SELECT: &str = "SELECT p.id, p.datapod_id, d.title AS datapod_title,
    d.category AS datapod_category, d.seller_id, s.name AS seller_name,
    s.profile_image AS seller_image, s.average_rating::float8 AS seller_rating,
    s.total_sales AS seller_sales, s.total_purchases AS seller_purchases,
    s.created_at AS seller_created_at, p.buyer_id, b.name AS buyer_name,
    b.profile_image AS buyer_image, b.average_rating::float8 AS buyer_rating,
    b.total_sales AS buyer_sales, b.total_purchases AS buyer_purchases,
    b.created_at AS buyer_created_at, p.payment_tx_digest,
    (p.amount_sui * 1000000000)::bigint AS amount_mist,
    (p.price_sui * 1000000000)::bigint AS price_mist, p.status, e.status AS escrow_status,
    p.buyer_public_key, p.decryption_key, p.refund_reason, p.idempotency_key, p.created_at,
    p.completed_at, p.updated_at, r.id AS review_id, r.rating AS review_rating,
    r.comment AS review_comment, r.created_at AS review_created_at,
    r.updated_at AS review_updated_at
    FROM market.purchases p
    JOIN market.datapods d ON d.id = p.datapod_id
    JOIN market.users s ON s.id = d.seller_id
    JOIN market.users b ON b.id = p.buyer_id
    LEFT JOIN market.escrow_transactions e ON e.purchase_id = p.id
    LEFT JOIN market.reviews r ON r.purchase_id = p.id";

pub async fn purchase<'e>(executor: impl PgExecutor<'e>, id: Uuid) -> Result<Option<PurchaseRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{PURCHASE_SELECT} WHERE p.id = $1"
    )))
    .bind(id)
    .fetch_optional(executor)
    .await?)
}

/// The purchase a buyer made with an idempotency key.
pub async fn purchase_by_idempotency_key<'e>(
    executor: impl PgExecutor<'e>,
    buyer: Uuid,
    key: &str,
) -> Result<Option<PurchaseRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{PURCHASE_SELECT} WHERE p.buyer_id = $1 AND p.idempotency_key = $2"
    )))
    .bind(buyer)
    .bind(key)
    .fetch_optional(executor)
    .await?)
}

/// A buyer's purchases (or a seller's sales), newest first.
pub async fn purchases<'e>(
    executor: impl PgExecutor<'e>,
    user: Uuid,
    as_seller: bool,
    after: Option<(String, Uuid)>,
    limit: i64,
) -> Result<Vec<PurchaseRow>> {
    let whose = if as_seller {
        "p.datapod_id IN (SELECT id FROM market.datapods WHERE seller_id = $1)"
    } else {
        "p.buyer_id = $1"
    };
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{PURCHASE_SELECT} WHERE {whose}
           AND ($2::text IS NULL OR (p.created_at, p.id) < ($2::timestamptz, $3))
         ORDER BY p.created_at DESC, p.id DESC LIMIT $4"
    )))
    .bind(user)
    .bind(after.as_ref().map(|a| a.0.clone()))
    .bind(after.as_ref().map(|a| a.1))
    .bind(limit)
    .fetch_all(executor)
    .await?)
}

/// What CreatePurchase knows of the datapod: its seller, price, and whether it is published.
#[derive(Debug, sqlx::FromRow)]
pub struct Offer {
    pub seller_id: Uuid,
    pub published: bool,
    pub price_mist: i64,
}

pub async fn offer<'e>(executor: impl PgExecutor<'e>, datapod: Uuid) -> Result<Option<Offer>> {
    Ok(sqlx::query_as(
        "SELECT seller_id, published, (price_sui * 1000000000)::bigint AS price_mist
         FROM market.datapods WHERE id = $1",
    )
    .bind(datapod)
    .fetch_optional(executor)
    .await?)
}

pub struct NewPurchase<'a> {
    pub buyer_id: Uuid,
    pub datapod_id: Uuid,
    pub payment_tx_digest: &'a str,
    pub price_mist: i64,
    pub buyer_public_key: &'a [u8],
    pub idempotency_key: Option<&'a str>,
    /// How long the creating request has to check the payment before the worker may.
    pub lease_seconds: f64,
}

/// Records a purchase awaiting its payment check. Unique violations name their constraint.
pub async fn insert_purchase<'e>(
    executor: impl PgExecutor<'e>,
    new: &NewPurchase<'_>,
) -> Result<Uuid> {
    Ok(sqlx::query_scalar(
        "INSERT INTO market.purchases (buyer_id, datapod_id, payment_tx_digest, amount_sui,
             price_sui, buyer_public_key, idempotency_key, next_attempt_at)
         VALUES ($1, $2, $3, $4::numeric * 0.000000001, $4::numeric * 0.000000001, $5, $6,
             now() + make_interval(secs => $7))
         RETURNING id",
    )
    .bind(new.buyer_id)
    .bind(new.datapod_id)
    .bind(new.payment_tx_digest)
    .bind(new.price_mist)
    .bind(new.buyer_public_key)
    .bind(new.idempotency_key)
    .bind(new.lease_seconds)
    .fetch_one(executor)
    .await?)
}

/// Drops a buyer's unverified purchase of a datapod (replaced by a new attempt).
pub async fn delete_pending_purchase_of<'e>(
    executor: impl PgExecutor<'e>,
    buyer: Uuid,
    datapod: Uuid,
) -> Result<bool> {
    Ok(sqlx::query(
        "DELETE FROM market.purchases
         WHERE buyer_id = $1 AND datapod_id = $2 AND status = 'pending_payment'",
    )
    .bind(buyer)
    .bind(datapod)
    .execute(executor)
    .await?
    .rows_affected()
        > 0)
}

/// Schedules the next payment check of a pending purchase.
pub async fn reschedule_payment_check<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
    seconds: f64,
    why: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE market.purchases SET next_attempt_at = now() + make_interval(secs => $2),
             last_error = $3
         WHERE id = $1 AND status = 'pending_payment'",
    )
    .bind(id)
    .bind(seconds)
    .bind(why)
    .execute(executor)
    .await?;
    Ok(())
}

/// A verified payment: the purchase moves to `processing` and its payment into escrow `holding`.
/// False if it was not pending any more (another worker got there first).
pub async fn mark_paid(tx: &mut PgConnection, id: Uuid, amount_mist: i64) -> Result<bool> {
    let seller: Option<Uuid> = sqlx::query_scalar(
        "UPDATE market.purchases p SET status = 'processing',
             amount_sui = $2::numeric * 0.000000001, attempts = 0, next_attempt_at = now(),
             last_error = NULL, updated_at = now()
         FROM market.datapods d
         WHERE p.id = $1 AND p.status = 'pending_payment' AND d.id = p.datapod_id
         RETURNING d.seller_id",
    )
    .bind(id)
    .bind(amount_mist)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(seller) = seller else {
        return Ok(false);
    };
    sqlx::query(
        "INSERT INTO market.escrow_transactions (purchase_id, seller_id, amount_sui)
         VALUES ($1, $2, $3::numeric * 0.000000001)",
    )
    .bind(id)
    .bind(seller)
    .bind(amount_mist)
    .execute(&mut *tx)
    .await?;
    Ok(true)
}

/// Forgets a purchase whose payment was refused (its digest may then pay for something else).
pub async fn delete_pending_purchase<'e>(executor: impl PgExecutor<'e>, id: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM market.purchases WHERE id = $1 AND status = 'pending_payment'")
        .bind(id)
        .execute(executor)
        .await?;
    Ok(())
}

/// Work the background worker claimed: a purchase to check or fulfil.
#[derive(Debug, sqlx::FromRow)]
pub struct Due {
    pub id: Uuid,
    pub status: String,
    pub attempts: i32,
    pub created_at: OffsetDateTime,
    pub payment_tx_digest: String,
    pub price_mist: i64,
    pub buyer_address: Option<String>,
    pub buyer_public_key: Vec<u8>,
    pub dataset_id: Uuid,
    pub wrapped_key: Vec<u8>,
}

/// Claims the purchase most overdue for work: pushes its next attempt out by the backoff for
/// its attempt count (the lease: if this worker dies, the purchase is due again then).
pub async fn claim_due_purchase<'e>(executor: impl PgExecutor<'e>) -> Result<Option<Due>> {
    Ok(sqlx::query_as(
        "WITH due AS (
             SELECT id FROM market.purchases
             WHERE status IN ('pending_payment', 'processing') AND next_attempt_at <= now()
             ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED)
         UPDATE market.purchases p SET attempts = p.attempts + 1,
             next_attempt_at = now() + make_interval(secs => least(3600, 2 ^ least(p.attempts, 12)))
         FROM due, market.datapods d, market.datasets s, market.users b
         WHERE p.id = due.id AND d.id = p.datapod_id AND s.id = d.dataset_id AND b.id = p.buyer_id
         RETURNING p.id, p.status, p.attempts, p.created_at, p.payment_tx_digest,
             (p.price_sui * 1000000000)::bigint AS price_mist, b.sui_address AS buyer_address,
             p.buyer_public_key, s.id AS dataset_id, s.wrapped_key",
    )
    .fetch_optional(executor)
    .await?)
}

/// Records why an attempt failed (the next one is already scheduled by the claim).
pub async fn record_attempt_error<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
    error: &str,
) -> Result<()> {
    sqlx::query("UPDATE market.purchases SET last_error = $2 WHERE id = $1")
        .bind(id)
        .bind(error)
        .execute(executor)
        .await?;
    Ok(())
}

/// Delivers the key: the purchase completes and its escrow is released, together. False if it
/// was not processing any more (refunded meanwhile, or completed by another worker).
pub async fn complete_purchase(
    tx: &mut PgConnection,
    id: Uuid,
    decryption_key: &str,
    decryption_iv: &str,
    blob_id: &str,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE market.purchases SET status = 'completed', decryption_key = $2,
             decryption_iv = $3, encrypted_blob_id = $4, completed_at = now(),
             updated_at = now(), last_error = NULL
         WHERE id = $1 AND status = 'processing'",
    )
    .bind(id)
    .bind(decryption_key)
    .bind(decryption_iv)
    .bind(blob_id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if done {
        sqlx::query(
            "UPDATE market.escrow_transactions SET status = 'released', released_at = now()
             WHERE purchase_id = $1 AND status = 'holding'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    Ok(done)
}

#[derive(Debug, sqlx::FromRow)]
pub struct LockedPurchase {
    pub status: String,
    pub buyer_id: Uuid,
    pub seller_id: Uuid,
    pub datapod_id: Uuid,
}

/// A purchase, locked for a change.
pub async fn lock_purchase(tx: &mut PgConnection, id: Uuid) -> Result<Option<LockedPurchase>> {
    Ok(sqlx::query_as(
        "SELECT p.status, p.buyer_id, d.seller_id, p.datapod_id FROM market.purchases p
         JOIN market.datapods d ON d.id = p.datapod_id WHERE p.id = $1 FOR UPDATE OF p",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?)
}

/// Locks a datapod against purchases being made of it; false if it does not exist.
pub async fn lock_datapod(tx: &mut PgConnection, id: Uuid) -> Result<bool> {
    Ok(
        sqlx::query("SELECT 1 FROM market.datapods WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .is_some(),
    )
}

/// Whether a review of the purchase exists.
pub async fn purchase_reviewed<'e>(executor: impl PgExecutor<'e>, purchase: Uuid) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM market.reviews WHERE purchase_id = $1)")
            .bind(purchase)
            .fetch_one(executor)
            .await?,
    )
}

/// Refunds a purchase and its escrow.
pub async fn refund_purchase(tx: &mut PgConnection, id: Uuid, reason: Option<&str>) -> Result<()> {
    sqlx::query(
        "UPDATE market.purchases SET status = 'refunded', refund_reason = $2, refunded_at = now(),
             updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE market.escrow_transactions SET status = 'refunded', refunded_at = now()
         WHERE purchase_id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// What a download needs.
#[derive(Debug, sqlx::FromRow)]
pub struct Delivery {
    pub buyer_id: Uuid,
    pub datapod_id: Uuid,
    pub status: String,
    pub decryption_key: Option<String>,
    pub blob_id: String,
    pub storage_size: i64,
    pub encryption_iv: String,
    pub file_size: i64,
    pub data_hash: String,
    pub file_type: String,
}

pub async fn delivery<'e>(
    executor: impl PgExecutor<'e>,
    purchase: Uuid,
) -> Result<Option<Delivery>> {
    Ok(sqlx::query_as(
        "SELECT p.buyer_id, p.datapod_id, p.status, p.decryption_key, s.blob_id, s.storage_size,
             s.encryption_iv, s.file_size, s.data_hash, s.file_type
         FROM market.purchases p JOIN market.datapods d ON d.id = p.datapod_id
         JOIN market.datasets s ON s.id = d.dataset_id WHERE p.id = $1",
    )
    .bind(purchase)
    .fetch_optional(executor)
    .await?)
}

pub async fn log_download<'e>(
    executor: impl PgExecutor<'e>,
    purchase: Uuid,
    buyer: Uuid,
    datapod: Uuid,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO market.download_logs (purchase_id, buyer_id, datapod_id) VALUES ($1, $2, $3)",
    )
    .bind(purchase)
    .bind(buyer)
    .bind(datapod)
    .execute(executor)
    .await?;
    Ok(())
}

/// Whether a datapod has purchases (then it cannot be deleted).
pub async fn datapod_has_purchases<'e>(executor: impl PgExecutor<'e>, id: Uuid) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM market.purchases WHERE datapod_id = $1)")
            .bind(id)
            .fetch_one(executor)
            .await?,
    )
}

// ---- Reviews -----------------------------------------------------------------------------

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReviewRow {
    pub id: Uuid,
    pub purchase_id: Uuid,
    pub datapod_id: Uuid,
    pub rating: i32,
    pub comment: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub buyer_id: Uuid,
    pub buyer_name: Option<String>,
    pub buyer_image: Option<String>,
    pub buyer_rating: f64,
    pub buyer_sales: i32,
    pub buyer_purchases: i32,
    pub buyer_created_at: OffsetDateTime,
}

const REVIEW_SELECT: &str = "SELECT r.id, r.purchase_id, r.datapod_id, r.rating, r.comment,
    r.created_at, r.updated_at, r.buyer_id, b.name AS buyer_name, b.profile_image AS buyer_image,
    b.average_rating::float8 AS buyer_rating, b.total_sales AS buyer_sales,
    b.total_purchases AS buyer_purchases, b.created_at AS buyer_created_at
    FROM market.reviews r JOIN market.users b ON b.id = r.buyer_id";

pub async fn insert_review<'e>(
    executor: impl PgExecutor<'e>,
    purchase: Uuid,
    buyer: Uuid,
    datapod: Uuid,
    rating: i32,
    comment: Option<&str>,
) -> Result<Uuid> {
    Ok(sqlx::query_scalar(
        "INSERT INTO market.reviews (purchase_id, buyer_id, datapod_id, rating, comment)
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(purchase)
    .bind(buyer)
    .bind(datapod)
    .bind(rating)
    .bind(comment)
    .fetch_one(executor)
    .await?)
}

pub async fn review<'e>(executor: impl PgExecutor<'e>, id: Uuid) -> Result<Option<ReviewRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{REVIEW_SELECT} WHERE r.id = $1"
    )))
    .bind(id)
    .fetch_optional(executor)
    .await?)
}

/// Changes a review; `None` fields stay.
pub async fn update_review<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
    rating: Option<i32>,
    comment: Option<Option<&str>>,
) -> Result<()> {
    sqlx::query(
        "UPDATE market.reviews SET rating = coalesce($2, rating),
             comment = CASE WHEN $3::boolean THEN $4 ELSE comment END, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(rating)
    .bind(comment.is_some())
    .bind(comment.flatten())
    .execute(executor)
    .await?;
    Ok(())
}

pub async fn reviews<'e>(
    executor: impl PgExecutor<'e>,
    datapod: Uuid,
    after: Option<(String, Uuid)>,
    limit: i64,
) -> Result<Vec<ReviewRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{REVIEW_SELECT} WHERE r.datapod_id = $1
           AND ($2::text IS NULL OR (r.created_at, r.id) < ($2::timestamptz, $3))
         ORDER BY r.created_at DESC, r.id DESC LIMIT $4"
    )))
    .bind(datapod)
    .bind(after.as_ref().map(|a| a.0.clone()))
    .bind(after.as_ref().map(|a| a.1))
    .bind(limit)
    .fetch_all(executor)
    .await?)
}

// ---- Analytics -----------------------------------------------------------------------------

#[derive(Debug, sqlx::FromRow)]
pub struct SellerAnalytics {
    pub total_datapods: i64,
    pub published_datapods: i64,
    pub total_sales: i64,
    pub total_revenue_mist: i64,
    pub average_rating: f64,
    pub total_downloads: i64,
    pub refunded_purchases: i64,
    pub processing_purchases: i64,
}

/// The seed's seller analytics, with revenue summed from what completed purchases paid (the
/// seed multiplied today's price by the count, which a price change rewrites).
pub async fn seller_analytics<'e>(
    executor: impl PgExecutor<'e>,
    seller: Uuid,
) -> Result<SellerAnalytics> {
    Ok(sqlx::query_as(
        "WITH pods AS (SELECT * FROM market.datapods WHERE seller_id = $1),
              sold AS (SELECT p.* FROM market.purchases p JOIN pods ON pods.id = p.datapod_id)
         SELECT
             (SELECT count(*) FROM pods) AS total_datapods,
             (SELECT count(*) FILTER (WHERE published) FROM pods) AS published_datapods,
             (SELECT coalesce(sum(purchase_count), 0)::bigint FROM pods) AS total_sales,
             (SELECT coalesce(sum(amount_sui) FILTER (WHERE status = 'completed'), 0)
                  * 1000000000 FROM sold)::bigint AS total_revenue_mist,
             (SELECT coalesce(avg(average_rating) FILTER (WHERE average_rating > 0), 0)::float8
                  FROM pods) AS average_rating,
             (SELECT count(*) FROM market.download_logs l JOIN pods ON pods.id = l.datapod_id)
                  AS total_downloads,
             (SELECT count(*) FILTER (WHERE status = 'refunded') FROM sold) AS refunded_purchases,
             (SELECT count(*) FILTER (WHERE status = 'processing') FROM sold)
                  AS processing_purchases",
    )
    .bind(seller)
    .fetch_one(executor)
    .await?)
}

// ---- AI chat -----------------------------------------------------------------------------

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConversationRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub title: Option<String>,
    pub total_tokens: i32,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageRow {
    pub id: Uuid,
    pub role: String,
    pub content: String,
    pub tokens: Option<i32>,
    pub context: Option<Json<Value>>,
    pub created_at: OffsetDateTime,
}

const CONVERSATION_COLUMNS: &str = "id, user_id, title, total_tokens, created_at, updated_at";
const MESSAGE_COLUMNS: &str = "id, role, content, tokens, context, created_at";

pub async fn insert_conversation<'e>(
    executor: impl PgExecutor<'e>,
    user: Uuid,
    title: Option<&str>,
) -> Result<ConversationRow> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO market.ai_conversations (user_id, title) VALUES ($1, $2)
         RETURNING {CONVERSATION_COLUMNS}"
    )))
    .bind(user)
    .bind(title)
    .fetch_one(executor)
    .await?)
}

pub async fn conversation<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
) -> Result<Option<ConversationRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CONVERSATION_COLUMNS} FROM market.ai_conversations WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(executor)
    .await?)
}

/// A user's conversations, most recently active first.
pub async fn conversations<'e>(
    executor: impl PgExecutor<'e>,
    user: Uuid,
    after: Option<(String, Uuid)>,
    limit: i64,
) -> Result<Vec<ConversationRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CONVERSATION_COLUMNS} FROM market.ai_conversations WHERE user_id = $1
           AND ($2::text IS NULL OR (updated_at, id) < ($2::timestamptz, $3))
         ORDER BY updated_at DESC, id DESC LIMIT $4"
    )))
    .bind(user)
    .bind(after.as_ref().map(|a| a.0.clone()))
    .bind(after.as_ref().map(|a| a.1))
    .bind(limit)
    .fetch_all(executor)
    .await?)
}

/// A conversation's messages, oldest first; with `last`, only that many of the newest.
pub async fn messages<'e>(
    executor: impl PgExecutor<'e>,
    conversation: Uuid,
    last: Option<i64>,
) -> Result<Vec<MessageRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM (SELECT {MESSAGE_COLUMNS}, seq FROM market.ai_messages
             WHERE conversation_id = $1 ORDER BY seq DESC LIMIT $2) m ORDER BY seq"
    )))
    .bind(conversation)
    .bind(last)
    .fetch_all(executor)
    .await?)
}

/// Counts one message against the user's per-minute window; false if the window is full.
pub async fn take_ai_allowance<'e>(
    executor: impl PgExecutor<'e>,
    user: Uuid,
    per_minute: i32,
) -> Result<bool> {
    let count: i32 = sqlx::query_scalar(
        "INSERT INTO market.ai_rate_windows AS w (user_id, window_start, count)
         VALUES ($1, now(), 1)
         ON CONFLICT (user_id) DO UPDATE SET
             count = CASE WHEN w.window_start <= now() - interval '1 minute' THEN 1
                          ELSE w.count + 1 END,
             window_start = CASE WHEN w.window_start <= now() - interval '1 minute' THEN now()
                                 ELSE w.window_start END
         RETURNING count",
    )
    .bind(user)
    .fetch_one(executor)
    .await?;
    Ok(count <= per_minute)
}

pub struct Exchange<'a> {
    pub conversation: Uuid,
    pub question: &'a str,
    pub question_tokens: Option<i32>,
    pub answer: &'a str,
    pub answer_tokens: Option<i32>,
    pub context: Option<Value>,
    /// Set as the title if the conversation has none.
    pub title: &'a str,
}

/// Stores a question and its answer together, and adds their tokens to the conversation.
pub async fn store_exchange(
    tx: &mut PgConnection,
    exchange: &Exchange<'_>,
) -> Result<(MessageRow, MessageRow, i32)> {
    let insert = format!(
        "INSERT INTO market.ai_messages (conversation_id, role, content, tokens, context)
         VALUES ($1, $2, $3, $4, $5) RETURNING {MESSAGE_COLUMNS}"
    );
    let question: MessageRow = sqlx::query_as(sqlx::AssertSqlSafe(insert.clone()))
        .bind(exchange.conversation)
        .bind("user")
        .bind(exchange.question)
        .bind(exchange.question_tokens)
        .bind(exchange.context.clone().map(Json))
        .fetch_one(&mut *tx)
        .await?;
    let answer: MessageRow = sqlx::query_as(sqlx::AssertSqlSafe(insert))
        .bind(exchange.conversation)
        .bind("assistant")
        .bind(exchange.answer)
        .bind(exchange.answer_tokens)
        .bind(None::<Json<Value>>)
        .fetch_one(&mut *tx)
        .await?;
    let total: i32 = sqlx::query_scalar(
        "UPDATE market.ai_conversations SET
             total_tokens = least(2147483647, total_tokens::bigint + $2)::integer,
             title = coalesce(title, $3), updated_at = now()
         WHERE id = $1 RETURNING total_tokens",
    )
    .bind(exchange.conversation)
    .bind(
        i64::from(exchange.question_tokens.unwrap_or(0))
            + i64::from(exchange.answer_tokens.unwrap_or(0)),
    )
    .bind(exchange.title)
    .fetch_one(&mut *tx)
    .await?;
    Ok((question, answer, total))
}
