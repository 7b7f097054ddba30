//! The purchase lifecycle's background side: checking payments the ledger could not confirm at
//! once, and fulfilment (wrapping the dataset key for the buyer, completing the purchase and
//! releasing the escrow).
//!
//! Work is claimed from the database with `FOR UPDATE SKIP LOCKED`, and the claim pushes the
//! purchase's `next_attempt_at` out by a backoff that doubles per attempt (up to an hour): that is
//! both the retry schedule and the lease, so a worker that dies mid-way leaves the purchase due
//! again later, on any replica. Every step is idempotent: its update applies only from the state
//! it expects.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    crypto::{self, MasterKey},
    payment::{Payment, PaymentVerifier, Verdict},
    queries::{self, Due},
};
use crate::{
    error::{Error, Result},
    notify::{self, Notifier},
};

/// Woken when a purchase is paid (its fulfilment is due).
pub const PURCHASES_CHANNEL: &str = "market_purchases";
/// How often an idle worker looks for due work without being woken.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// A payment the ledger has not confirmed this long after the purchase is given up (the purchase
/// is forgotten; the digest can be submitted again).
const PAYMENT_DEADLINE: time::Duration = time::Duration::hours(1);
/// When a payment the ledger does not know yet is checked again.
pub const RECHECK_SECONDS: f64 = 2.0;

/// How a payment check ended.
pub enum Settled {
    /// Paid: the purchase is processing, its payment held in escrow.
    Paid,
    /// The payment was refused; the purchase is forgotten.
    Rejected(Error),
    /// Not decided yet (unknown or unfinal transaction, unreachable ledger): why.
    Waiting(String),
}

/// Checks a pending purchase's payment and moves it on.
pub async fn settle(
    pool: &PgPool,
    verifier: &dyn PaymentVerifier,
    purchase: Uuid,
    payment: &Payment<'_>,
) -> Result<Settled> {
    let verdict = match verifier.verify(payment).await {
        Ok(verdict) => verdict,
        Err(Error::Unavailable(why)) => return Ok(Settled::Waiting(why)),
        Err(other) => return Err(other),
    };
    match verdict {
        Verdict::Paid { amount_mist } => {
            let mut tx = pool.begin().await?;
            if queries::mark_paid(&mut tx, purchase, amount_mist).await? {
                notify::notify(&mut *tx, PURCHASES_CHANNEL, &purchase.to_string()).await?;
            }
            tx.commit().await?;
            Ok(Settled::Paid)
        }
        Verdict::Rejected(error) => {
            queries::delete_pending_purchase(pool, purchase).await?;
            Ok(Settled::Rejected(error))
        }
        Verdict::NotFound => Ok(Settled::Waiting(
            "the ledger does not know the transaction yet".into(),
        )),
        Verdict::NotFinal => Ok(Settled::Waiting(
            "the transaction is not final (checkpointed) yet".into(),
        )),
    }
}

/// Runs one background worker per process.
pub struct Worker {
    pub pool: PgPool,
    pub notifier: Notifier,
    pub verifier: Arc<dyn PaymentVerifier>,
    pub master_key: MasterKey,
    pub shutdown: CancellationToken,
}

impl Worker {
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.work().await })
    }

    async fn work(self) {
        let mut wakeups = self.notifier.subscribe();
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            match queries::claim_due_purchase(&self.pool).await {
                Ok(Some(due)) => {
                    let id = due.id;
                    if let Err(error) = self.advance(due).await {
                        tracing::warn!(purchase_id = %id, %error, "purchase work failed; retrying later");
                        let _ =
                            queries::record_attempt_error(&self.pool, id, &error.to_string()).await;
                    }
                }
                Ok(None) => {
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        woke = wakeups.recv_on(PURCHASES_CHANNEL) => if woke.is_none() { return },
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot claim purchase work");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    async fn advance(&self, due: Due) -> Result<()> {
        match due.status.as_str() {
            "pending_payment" => self.check_payment(due).await,
            "processing" => self.fulfil(due).await,
            _ => Ok(()),
        }
    }

    async fn check_payment(&self, due: Due) -> Result<()> {
        let Some(sender) = due.buyer_address.as_deref() else {
            queries::delete_pending_purchase(&self.pool, due.id).await?;
            return Ok(());
        };
        let payment = Payment {
            digest: &due.payment_tx_digest,
            sender,
            price_mist: due.price_mist,
        };
        match settle(&self.pool, self.verifier.as_ref(), due.id, &payment).await? {
            Settled::Paid => Ok(()),
            Settled::Rejected(error) => {
                tracing::info!(purchase_id = %due.id, %error, "payment refused; purchase dropped");
                Ok(())
            }
            Settled::Waiting(why) => {
                if time::OffsetDateTime::now_utc() - due.created_at > PAYMENT_DEADLINE {
                    tracing::info!(purchase_id = %due.id, why, "payment never confirmed; purchase dropped");
                    queries::delete_pending_purchase(&self.pool, due.id).await?;
                    return Ok(());
                }
                queries::record_attempt_error(&self.pool, due.id, &why).await
            }
        }
    }

    /// Wraps the dataset key for the buyer and completes the purchase, releasing the escrow.
    async fn fulfil(&self, due: Due) -> Result<()> {
        let key = self
            .master_key
            .unwrap(&due.wrapped_key, due.dataset_id.as_bytes())?;
        let wrapped = crypto::wrap_for_buyer(&key, &due.buyer_public_key, &due.id.to_string())?;
        let Some(delivery) = queries::delivery(&self.pool, due.id).await? else {
            return Ok(());
        };
        let mut tx = self.pool.begin().await?;
        let done = queries::complete_purchase(
            &mut tx,
            due.id,
            &base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &wrapped),
            &delivery.encryption_iv,
            &delivery.blob_id,
        )
        .await?;
        tx.commit().await?;
        if done {
            tracing::info!(purchase_id = %due.id, attempts = due.attempts, "purchase completed");
        }
        Ok(())
    }
}
