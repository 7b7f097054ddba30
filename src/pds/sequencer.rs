//! The firehose's sequence: repository events in commit order (`pds.repo_seq`), written in the
//! transaction of what they describe, announced with `NOTIFY` so followers on every replica wake,
//! and pruned after a retention window.

use prost::Message;
use sqlx::{PgConnection, PgPool};

use crate::{
    error::{Error, Result},
    notify,
    proto::{quintet::pds::v1 as pb, timestamp},
};

/// Woken for every new event.
pub const SEQ_CHANNEL: &str = "pds_seq";
/// The advisory lock that orders sequencing (any constant no other lock uses).
const SEQ_LOCK: i64 = 0x7064_735f_7365_7121;

fn event_type(event: &pb::subscribe_repos_response::Event) -> &'static str {
    use pb::subscribe_repos_response::Event;
    match event {
        Event::Commit(_) => "commit",
        Event::Identity(_) => "identity",
        Event::Account(_) | Event::Info(_) => "account",
        Event::Sync(_) => "sync",
    }
}

/// Appends an event inside the transaction that makes it true; it is numbered at the lock, which
/// is held until commit, so numbers follow commit order.
pub async fn sequence(
    tx: &mut PgConnection,
    did: &str,
    event: pb::subscribe_repos_response::Event,
) -> Result<i64> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SEQ_LOCK)
        .execute(&mut *tx)
        .await?;
    let (seq, time): (i64, time::OffsetDateTime) =
        sqlx::query_as("SELECT nextval('pds.repo_seq_seq'), clock_timestamp()")
            .fetch_one(&mut *tx)
            .await?;
    let kind = event_type(&event);
    let message = pb::SubscribeReposResponse {
        seq,
        time: Some(timestamp(time)),
        event: Some(event),
    };
    sqlx::query(
        "INSERT INTO pds.repo_seq (seq, did, event_type, event, sequenced_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(seq)
    .bind(did)
    .bind(kind)
    .bind(message.encode_to_vec())
    .bind(time)
    .execute(&mut *tx)
    .await?;
    notify::notify(&mut *tx, SEQ_CHANNEL, &seq.to_string()).await?;
    Ok(seq)
}

/// Events after `cursor`, in order.
pub async fn events_after(
    pool: &PgPool,
    cursor: i64,
    limit: i64,
) -> Result<Vec<(i64, pb::SubscribeReposResponse)>> {
    let rows: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, event FROM pds.repo_seq WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(cursor)
            .bind(limit)
            .fetch_all(pool)
            .await?;
    rows.into_iter()
        .map(|(seq, bytes)| {
            pb::SubscribeReposResponse::decode(bytes.as_slice())
                .map(|event| (seq, event))
                .map_err(|_| Error::DataLoss(format!("event {seq} does not decode")))
        })
        .collect()
}

/// The oldest kept event's number (`None` when none is kept) and the newest number handed out
/// (0 before the first; pruning does not lower it).
pub async fn bounds(pool: &PgPool) -> Result<(Option<i64>, i64)> {
    let oldest: Option<i64> = sqlx::query_scalar("SELECT min(seq) FROM pds.repo_seq")
        .fetch_one(pool)
        .await?;
    let (last, called): (i64, bool) =
        sqlx::query_as("SELECT last_value, is_called FROM pds.repo_seq_seq")
            .fetch_one(pool)
            .await?;
    Ok((oldest, if called { last } else { 0 }))
}

/// Deletes events older than `hours` (hourly).
pub async fn prune(pool: &PgPool, hours: i64) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM pds.repo_seq WHERE sequenced_at < now() - make_interval(hours => $1::int)",
    )
    .bind(hours)
    .execute(pool)
    .await?
    .rows_affected())
}
