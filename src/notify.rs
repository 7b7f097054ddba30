//! Cross-replica wake-ups over PostgreSQL `LISTEN/NOTIFY`.
//!
//! Live streams never trust process memory for what happened: they read rows from a cursor, and
//! use notifications only to learn *when* to read again. A writer calls [`notify`] inside the
//! transaction that stores its rows, so the notification is delivered, to every replica, only
//! after the rows are committed. Each process keeps one listening connection ([`Notifier`]) and
//! fans notifications out to local subscribers. Whenever notifications may have been lost (the
//! listening connection dropped, or a subscriber fell behind) subscribers receive
//! [`Notification::Resync`] and must re-read from their cursor.

use std::{sync::Arc, time::Duration};

use sqlx::{PgExecutor, PgPool, postgres::PgListener};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// Notifications buffered per subscriber before it is told to resync.
const BUFFER: usize = 4096;
/// PostgreSQL refuses payloads of 8000 bytes or more.
pub const MAX_PAYLOAD: usize = 7999;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// A `NOTIFY` on one of the channels.
    Message {
        channel: Arc<str>,
        payload: Arc<str>,
    },
    /// Notifications may have been missed: re-read from your cursor.
    Resync,
}

/// One process's listening connection, shared by all its subscribers.
#[derive(Clone)]
pub struct Notifier {
    sender: broadcast::Sender<Notification>,
}

impl Notifier {
    /// Listens on `channels` (each service declares the channels it uses) until `shutdown`.
    /// Returns once the `LISTEN`s are active: a subscriber that subscribes and then reads misses
    /// nothing committed after its read.
    pub async fn start(
        pool: &PgPool,
        channels: &[&str],
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let mut listener = PgListener::connect_with(pool).await?;
        let channels: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
        listener
            .listen_all(channels.iter().map(String::as_str))
            .await?;
        let (sender, _) = broadcast::channel(BUFFER);
        let notifier = Notifier {
            sender: sender.clone(),
        };
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    received = listener.try_recv() => received,
                };
                match received {
                    Ok(Some(notification)) => {
                        let _ = sender.send(Notification::Message {
                            channel: notification.channel().into(),
                            payload: notification.payload().into(),
                        });
                    }
                    // The connection dropped and was re-established with the same LISTENs;
                    // whatever was sent in between is lost.
                    Ok(None) => {
                        tracing::warn!("LISTEN connection was lost and re-established");
                        let _ = sender.send(Notification::Resync);
                    }
                    // The pool closes only when the server is shutting down.
                    Err(sqlx::Error::PoolClosed) => break,
                    Err(error) => {
                        tracing::warn!(%error, "LISTEN connection failed; reconnecting");
                        let _ = sender.send(Notification::Resync);
                        let mut backoff = Duration::from_millis(100);
                        loop {
                            tokio::select! {
                                _ = shutdown.cancelled() => return,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            if listener
                                .listen_all(channels.iter().map(String::as_str))
                                .await
                                .is_ok()
                            {
                                tracing::info!("LISTEN connection re-established");
                                let _ = sender.send(Notification::Resync);
                                break;
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            }
        });
        Ok(notifier)
    }

    pub fn subscribe(&self) -> Subscription {
        Subscription {
            receiver: self.sender.subscribe(),
        }
    }
}

pub struct Subscription {
    receiver: broadcast::Receiver<Notification>,
}

impl Subscription {
    /// The next notification; [`Notification::Resync`] if this subscriber fell behind. `None`
    /// once the notifier has stopped.
    pub async fn recv(&mut self) -> Option<Notification> {
        match self.receiver.recv().await {
            Ok(notification) => Some(notification),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Notification::Resync),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next notification on `channel` (or a resync), skipping other channels.
    pub async fn recv_on(&mut self, channel: &str) -> Option<Notification> {
        loop {
            match self.recv().await? {
                Notification::Message { channel: c, .. } if &*c != channel => continue,
                other => return Some(other),
            }
        }
    }
}

/// Sends `payload` on `channel`. Inside a transaction it is delivered on commit, and not at all
/// on rollback.
pub async fn notify<'e, E: PgExecutor<'e>>(
    executor: E,
    channel: &str,
    payload: &str,
) -> Result<()> {
    if payload.len() > MAX_PAYLOAD {
        return Err(Error::internal(anyhow::anyhow!(
            "notification payload of {} bytes on {channel} exceeds PostgreSQL's limit",
            payload.len()
        )));
    }
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(executor)
        .await?;
    Ok(())
}

/// How long a follower sleeps without a notification before it reads again anyway: a safety net
/// should a notification be lost without a resync.
const FOLLOW_POLL: Duration = Duration::from_secs(30);

/// How long a follower may leave its buffer full before it is disconnected (unless a caller
/// chooses otherwise).
pub const STALL: Duration = Duration::from_secs(30);
/// Messages a follower buffers; one more slot is kept for the status that disconnects it.
const FOLLOW_BUFFER: usize = 64;

/// What a follower's task sends its server stream.
pub type FollowerSender<T> = tokio::sync::mpsc::Sender<std::result::Result<T, tonic::Status>>;

/// The channel between a follower's task and its server stream, for [`send_or_disconnect`].
pub fn follower_channel<T>() -> (
    FollowerSender<T>,
    tokio::sync::mpsc::Receiver<std::result::Result<T, tonic::Status>>,
) {
    tokio::sync::mpsc::channel(FOLLOW_BUFFER + 1)
}

/// Sends `message` unless the receiver keeps its buffer full for `stall`: then the slot kept
/// free carries RESOURCE_EXHAUSTED and the follower ends (false), so one slow consumer holds no
/// more than its own buffer and learns why when it reads again. `tx` is one of
/// [`follower_channel`]'s, with one producer.
pub async fn send_or_disconnect<T>(tx: &FollowerSender<T>, message: T, stall: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + stall;
    loop {
        // One producer: free capacity only grows between this check and the send.
        if tx.capacity() > 1 {
            return tx.send(Ok(message)).await.is_ok();
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = tx.try_send(Err(tonic::Status::resource_exhausted(format!(
                "the consumer fell more than {FOLLOW_BUFFER} messages behind for {} s; \
                 reconnect from the last cursor it received",
                stall.as_secs_f64()
            ))));
            return false;
        }
        tokio::select! {
            _ = tx.closed() => return false,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// A server stream of rows after `cursor`, then of new rows as they are committed on any replica.
/// `fetch(cursor, limit)` returns up to `limit` `(seq, message)` pairs with `seq > cursor`, in seq
/// order; the stream wakes on notifications on `channel`, and ends when the client goes away,
/// the server shuts down, `fetch` fails (with its error), or the client leaves its buffer full for
/// `stall` (RESOURCE_EXHAUSTED).
pub fn follow<T, F, Fut>(
    notifier: &Notifier,
    channel: &'static str,
    shutdown: CancellationToken,
    mut cursor: i64,
    stall: Duration,
    mut fetch: F,
) -> tokio_stream::wrappers::ReceiverStream<std::result::Result<T, tonic::Status>>
where
    T: Send + 'static,
    F: FnMut(i64, i64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Vec<(i64, T)>>> + Send,
{
    const BATCH: i64 = 500;
    // Subscribe before the first read: whatever commits after that read wakes us.
    let mut wakeups = notifier.subscribe();
    let (tx, rx) = follower_channel();
    tokio::spawn(async move {
        loop {
            let rows = match fetch(cursor, BATCH).await {
                Ok(rows) => rows,
                Err(error) => {
                    let _ = tx.send(Err(error.into())).await;
                    return;
                }
            };
            let caught_up = (rows.len() as i64) < BATCH;
            for (seq, message) in rows {
                if !send_or_disconnect(&tx, message, stall).await {
                    return;
                }
                cursor = seq;
            }
            if caught_up {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    woke = wakeups.recv_on(channel) => if woke.is_none() { return },
                    _ = tokio::time::sleep(FOLLOW_POLL) => {}
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
