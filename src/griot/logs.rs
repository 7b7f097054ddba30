//! Following a job's log. The rows in `installation_logs` are the truth; notifications on
//! [`LOGS_CHANNEL`] say when to look. A notification is `<job id> <json>`, either
//! `{"from": N, "count": n, "lines": [[level, unix micros, message], ...] | null}` (lines N..N+n-1
//! were committed; the lines themselves when they fitted) or `{"end": status, "last": N}` (the
//! job ended after line N). A follower that gets the next lines in the notification sends them
//! without touching the database; on anything else (a gap, lines too big to carry, a resync, the
//! end) it reads from its cursor. So many followers of one job cost one write, not one query each.

use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use super::{
    convert,
    queries::{self, LOGS_CHANNEL},
};
use crate::{
    error::{Error, Result},
    notify::{self, Notification, Notifier},
    proto::quintet::griot::v1 as pb,
};

/// Rows read per query when catching up.
const READ_BATCH: i64 = 1000;
/// A follower re-reads at least this often, in case a notification was lost unannounced.
const SAFETY_POLL: std::time::Duration = std::time::Duration::from_secs(30);

/// The lines of one batch as a notification carries them.
pub fn encode_lines(levels: &[&str], times: &[OffsetDateTime], messages: &[String]) -> String {
    let lines: Vec<Value> = levels
        .iter()
        .zip(times)
        .zip(messages)
        .map(|((level, at), message)| {
            serde_json::json!([level, (at.unix_timestamp_nanos() / 1000) as i64, message])
        })
        .collect();
    Value::Array(lines).to_string()
}

#[derive(Deserialize)]
struct Event {
    from: Option<i64>,
    count: Option<i64>,
    lines: Option<Vec<(String, i64, String)>>,
    end: Option<String>,
}

/// What a follower does with a notification.
enum Step {
    /// Not about this job, or nothing new.
    Ignore,
    /// The next lines, carried by the notification.
    Lines(Vec<queries::LogRow>),
    /// Read from the database.
    Read,
}

fn interpret(payload: &str, job: &str, cursor: i64) -> Step {
    let Some(json) = payload
        .strip_prefix(job)
        .and_then(|rest| rest.strip_prefix(' '))
    else {
        return Step::Ignore;
    };
    let Ok(event) = serde_json::from_str::<Event>(json) else {
        return Step::Read;
    };
    if event.end.is_some() {
        return Step::Read;
    }
    let (Some(from), Some(count)) = (event.from, event.count) else {
        return Step::Read;
    };
    if from + count - 1 <= cursor {
        return Step::Ignore;
    }
    match event.lines {
        Some(lines) if from == cursor + 1 && lines.len() as i64 == count => Step::Lines(
            lines
                .into_iter()
                .zip(from..)
                .map(|((level, micros, message), seq)| queries::LogRow {
                    seq,
                    logged_at: OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
                        .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                    level,
                    message,
                })
                .collect(),
        ),
        _ => Step::Read,
    }
}

fn line_message(row: queries::LogRow) -> pb::StreamInstallationLogsResponse {
    pb::StreamInstallationLogsResponse {
        event: Some(pb::stream_installation_logs_response::Event::Line(
            convert::log_line(row),
        )),
    }
}

/// Streams `job_id`'s lines from `from_seq`; with `follow`, then new ones until the job ends,
/// closing with the job's final state.
pub fn stream(
    pool: PgPool,
    notifier: &Notifier,
    shutdown: CancellationToken,
    job_id: Uuid,
    from_seq: i64,
    follow: bool,
) -> ReceiverStream<std::result::Result<pb::StreamInstallationLogsResponse, Status>> {
    // Subscribed before the first read: whatever commits after it wakes us.
    let mut wakeups = notifier.subscribe();
    let (tx, rx) = notify::follower_channel();
    tokio::spawn(async move {
        let job_text = job_id.to_string();
        let mut cursor = from_seq.max(1) - 1;
        let result: Result<()> = async {
            loop {
                // The job's state first, then its lines: if it had ended, every line is already
                // committed and this read gets them all.
                let job = queries::job(&pool, job_id)
                    .await?
                    .ok_or_else(|| Error::not_found("installation", job_text.clone()))?;
                while cursor < job.log_count {
                    let rows = queries::logs_after(&pool, job_id, cursor, READ_BATCH).await?;
                    if rows.is_empty() {
                        break;
                    }
                    for row in rows {
                        cursor = row.seq;
                        if !notify::send_or_disconnect(&tx, line_message(row), notify::STALL).await
                        {
                            return Ok(());
                        }
                    }
                }
                if !follow {
                    return Ok(());
                }
                if job.is_terminal() {
                    let finished = pb::StreamInstallationLogsResponse {
                        event: Some(pb::stream_installation_logs_response::Event::Finished(
                            convert::installation(job, Vec::new()),
                        )),
                    };
                    notify::send_or_disconnect(&tx, finished, notify::STALL).await;
                    return Ok(());
                }
                // Live: take lines from notifications until one needs a read.
                loop {
                    let woke = tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tx.closed() => return Ok(()),
                        woke = wakeups.recv_on(LOGS_CHANNEL) => woke,
                        _ = tokio::time::sleep(SAFETY_POLL) => Some(Notification::Resync),
                    };
                    match woke {
                        None => return Ok(()),
                        Some(Notification::Resync) => break,
                        Some(Notification::Message { payload, .. }) => {
                            match interpret(&payload, &job_text, cursor) {
                                Step::Ignore => {}
                                Step::Read => break,
                                Step::Lines(rows) => {
                                    for row in rows {
                                        cursor = row.seq;
                                        if !notify::send_or_disconnect(
                                            &tx,
                                            line_message(row),
                                            notify::STALL,
                                        )
                                        .await
                                        {
                                            return Ok(());
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        .await;
        if let Err(error) = result {
            let _ = tx.send(Err(error.into())).await;
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = "0190a2b4-0000-7000-8000-000000000001";

    fn payload(json: &str) -> String {
        format!("{JOB} {json}")
    }

    #[test]
    fn carried_lines_continue_the_cursor() {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let lines = encode_lines(&["info", "warn"], &[at, at], &["a".into(), "b".into()]);
        let event = payload(&format!(r#"{{"from":3,"count":2,"lines":{lines}}}"#));
        match interpret(&event, JOB, 2) {
            Step::Lines(rows) => {
                assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);
                assert_eq!(rows[1].level, "warn");
                assert_eq!(rows[0].logged_at, at);
            }
            _ => panic!("expected lines"),
        }
        // Already seen, a gap, another job, lines not carried, the end.
        assert!(matches!(interpret(&event, JOB, 4), Step::Ignore));
        assert!(matches!(interpret(&event, JOB, 1), Step::Read));
        assert!(matches!(
            interpret(&event, "0190a2b4-0000-7000-8000-000000000002", 2),
            Step::Ignore
        ));
        let uncarried = payload(r#"{"from":3,"count":2,"lines":null}"#);
        assert!(matches!(interpret(&uncarried, JOB, 2), Step::Read));
        let end = payload(r#"{"end":"completed","last":4}"#);
        assert!(matches!(interpret(&end, JOB, 4), Step::Read));
    }
}
