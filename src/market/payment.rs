//! Payment verification: whether a Sui transaction paid for a purchase.
//!
//! [`PaymentVerifier`] is what purchases depend on; [`SuiPaymentVerifier`] asks a Sui full node's
//! gRPC ledger API (`sui.rpc.v2.LedgerService/GetTransaction`) and judges the answer with
//! [`judge`]: the transaction must be checkpointed (final), successful, sent by the buyer's
//! proven address, and move at least the price in SUI to the escrow address. Amounts are integer
//! MIST (`i128` from the ledger's decimal text), never floats.

use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::{
    error::{Error, Result},
    proto::sui::rpc::v2::{self as sui, ledger_service_client::LedgerServiceClient},
};

/// The SUI coin's type, in the long form the ledger API prints.
pub const SUI_COIN_TYPE: &str =
    "0x0000000000000000000000000000000000000000000000000000000000000002::sui::SUI";

/// What a payment must do.
#[derive(Debug, Clone)]
pub struct Payment<'a> {
    /// The transaction digest, Base58 (checked by [`parse_digest`]).
    pub digest: &'a str,
    /// The buyer's proven address, normalised.
    pub sender: &'a str,
    /// The price, in MIST.
    pub price_mist: i64,
}

/// The ledger's verdict on a payment.
#[derive(Debug)]
pub enum Verdict {
    /// Final and sufficient: what reached the escrow address, in MIST.
    Paid { amount_mist: i64 },
    /// The ledger does not know the transaction (yet).
    NotFound,
    /// Executed but not yet in a checkpoint.
    NotFinal,
    /// Final and not a valid payment: the error to answer (never retried).
    Rejected(Error),
}

/// Checks payments. Errors are the verifier's own failures (the ledger is unreachable), to be
/// retried; a bad payment is a [`Verdict::Rejected`].
#[tonic::async_trait]
pub trait PaymentVerifier: Send + Sync {
    /// FAILED_PRECONDITION if payments cannot be accepted at all (not configured).
    fn check_enabled(&self) -> Result<()>;
    async fn verify(&self, payment: &Payment<'_>) -> Result<Verdict>;
}

/// The facts of a transaction the verdict needs, as the ledger reported them.
#[derive(Debug, Clone, Default)]
pub struct LedgerTransaction {
    pub sender: Option<String>,
    pub checkpoint: Option<u64>,
    pub success: Option<bool>,
    pub failure: Option<String>,
    /// (address, coin type, signed amount as decimal text).
    pub balance_changes: Vec<(String, String, String)>,
}

/// A Base58 transaction digest of 32 bytes.
pub fn parse_digest(field: &str, text: &str) -> Result<String> {
    // 32 bytes are at most 44 Base58 digits. Decoding takes time quadratic in the length: a
    // client's megabyte of digits would hold a core for minutes.
    if text.len() > 44 {
        return Err(Error::invalid_argument(
            field,
            "not a Sui transaction digest (Base58 of 32 bytes)",
        ));
    }
    match bs58::decode(text).into_vec() {
        Ok(bytes) if bytes.len() == 32 => Ok(text.to_owned()),
        _ => Err(Error::invalid_argument(
            field,
            "not a Sui transaction digest (Base58 of 32 bytes)",
        )),
    }
}

/// A Sui address as `0x` and 64 lowercase hex digits (short forms such as `0x2` are padded).
pub fn normalize_address(text: &str) -> Option<String> {
    let hex = text.strip_prefix("0x").unwrap_or(text);
    if hex.is_empty() || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!("0x{:0>64}", hex.to_ascii_lowercase()))
}

/// A coin type with its address part normalised (`0x2::sui::SUI` is [`SUI_COIN_TYPE`]).
fn normalize_coin_type(text: &str) -> Option<String> {
    let (address, rest) = text.split_once("::")?;
    Some(format!("{}::{rest}", normalize_address(address)?))
}

/// Judges a transaction as payment of `payment` to `escrow` (normalised).
pub fn judge(tx: &LedgerTransaction, payment: &Payment<'_>, escrow: &str) -> Verdict {
    if tx.checkpoint.is_none() {
        return Verdict::NotFinal;
    }
    match tx.success {
        Some(true) => {}
        Some(false) => {
            return Verdict::Rejected(Error::failed_precondition(
                "PAYMENT_FAILED",
                payment.digest,
                format!(
                    "the payment transaction failed on chain: {}",
                    tx.failure.as_deref().unwrap_or("no reason given")
                ),
            ));
        }
        None => return Verdict::NotFinal,
    }
    let sender = tx.sender.as_deref().and_then(normalize_address);
    if sender.as_deref() != Some(payment.sender) {
        return Verdict::Rejected(Error::PermissionDenied(format!(
            "the payment was sent by {}, not by your proven address {}",
            tx.sender.as_deref().unwrap_or("an unknown sender"),
            payment.sender
        )));
    }
    // A final, successful transaction always changes the sender's balance (gas): no balance
    // changes at all means the node did not report them, not that nothing was paid.
    if tx.balance_changes.is_empty() {
        return Verdict::NotFinal;
    }
    let mut paid: i128 = 0;
    for (address, coin_type, amount) in &tx.balance_changes {
        if normalize_address(address).as_deref() != Some(escrow)
            || normalize_coin_type(coin_type).as_deref() != Some(SUI_COIN_TYPE)
        {
            continue;
        }
        let Ok(amount) = amount.parse::<i128>() else {
            return Verdict::Rejected(Error::failed_precondition(
                "PAYMENT_UNREADABLE",
                payment.digest,
                format!("the ledger reported an unreadable amount {amount:?}"),
            ));
        };
        paid = paid.saturating_add(amount);
    }
    if paid < i128::from(payment.price_mist) {
        return Verdict::Rejected(Error::failed_precondition(
            "UNDERPAID",
            payment.digest,
            format!(
                "the payment moved {paid} MIST of SUI to the escrow address {escrow}; the price is {} MIST",
                payment.price_mist
            ),
        ));
    }
    Verdict::Paid {
        amount_mist: i64::try_from(paid).unwrap_or(i64::MAX),
    }
}

/// Verifies payments with a Sui full node's ledger API.
pub struct SuiPaymentVerifier {
    client: LedgerServiceClient<Channel>,
    /// The escrow address, normalised; `None`: purchases are off.
    escrow: Option<String>,
}

impl SuiPaymentVerifier {
    /// Connects lazily to `url` (`https://` with the system's roots, or `http://`).
    pub fn new(url: &str, escrow: Option<&str>) -> anyhow::Result<Self> {
        let escrow = escrow
            .map(|text| {
                normalize_address(text).ok_or_else(|| {
                    anyhow::anyhow!("QUINTET_MARKET_ESCROW_ADDRESS is not a Sui address: {text:?}")
                })
            })
            .transpose()?;
        let mut endpoint = Endpoint::from_shared(url.to_owned())?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10));
        if url.starts_with("https://") {
            endpoint = endpoint.tls_config(ClientTlsConfig::new().with_native_roots())?;
        }
        Ok(SuiPaymentVerifier {
            client: LedgerServiceClient::new(endpoint.connect_lazy()),
            escrow,
        })
    }

    async fn transaction(&self, digest: &str) -> Result<Option<LedgerTransaction>> {
        let request = sui::GetTransactionRequest {
            digest: Some(digest.to_owned()),
            read_mask: Some(prost_types::FieldMask {
                paths: [
                    "digest",
                    "transaction.sender",
                    "effects.status",
                    "checkpoint",
                    "timestamp",
                    "balance_changes",
                ]
                .map(str::to_owned)
                .to_vec(),
            }),
        };
        let response = match self.client.clone().get_transaction(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => return Ok(None),
            Err(status) => {
                return Err(Error::Unavailable(format!(
                    "the Sui ledger did not answer: {} {}",
                    status.code(),
                    status.message()
                )));
            }
        };
        let Some(tx) = response.transaction else {
            return Ok(None);
        };
        let status = tx.effects.and_then(|e| e.status);
        Ok(Some(LedgerTransaction {
            sender: tx.transaction.and_then(|t| t.sender),
            checkpoint: tx.checkpoint,
            success: status.as_ref().and_then(|s| s.success),
            failure: status.and_then(|s| s.error).and_then(|e| e.description),
            balance_changes: tx
                .balance_changes
                .into_iter()
                .map(|c| {
                    (
                        c.address.unwrap_or_default(),
                        c.coin_type.unwrap_or_default(),
                        c.amount.unwrap_or_default(),
                    )
                })
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl PaymentVerifier for SuiPaymentVerifier {
    fn check_enabled(&self) -> Result<()> {
        match self.escrow {
            Some(_) => Ok(()),
            None => Err(Error::failed_precondition(
                "PURCHASES_DISABLED",
                "market",
                "purchases are off: the server has no escrow address (QUINTET_MARKET_ESCROW_ADDRESS)",
            )),
        }
    }

    async fn verify(&self, payment: &Payment<'_>) -> Result<Verdict> {
        self.check_enabled()?;
        let escrow = self.escrow.as_deref().unwrap_or_default();
        Ok(match self.transaction(payment.digest).await? {
            None => Verdict::NotFound,
            Some(tx) => judge(&tx, payment, escrow),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUYER: &str = "0x00000000000000000000000000000000000000000000000000000000000000b1";
    const ESCROW: &str = "0x00000000000000000000000000000000000000000000000000000000000000e5";

    fn paid(amount: &str) -> LedgerTransaction {
        LedgerTransaction {
            sender: Some(BUYER.into()),
            checkpoint: Some(7),
            success: Some(true),
            failure: None,
            balance_changes: vec![
                (BUYER.into(), "0x2::sui::SUI".into(), format!("-{amount}")),
                (ESCROW.into(), SUI_COIN_TYPE.into(), amount.into()),
            ],
        }
    }

    fn payment(price_mist: i64) -> Payment<'static> {
        Payment {
            digest: "d",
            sender: BUYER,
            price_mist,
        }
    }

    #[test]
    fn addresses_and_coin_types_normalise() {
        assert_eq!(
            normalize_address("0x2").unwrap(),
            "0x0000000000000000000000000000000000000000000000000000000000000002"
        );
        assert_eq!(
            normalize_address(&BUYER.to_uppercase()[2..]).unwrap(),
            BUYER
        );
        assert!(normalize_address("0x").is_none());
        assert!(normalize_address("0xzz").is_none());
        assert!(normalize_address(&format!("0x{}", "1".repeat(65))).is_none());
        assert_eq!(normalize_coin_type("0x2::sui::SUI").unwrap(), SUI_COIN_TYPE);
    }

    #[test]
    fn digests_are_base58_of_32_bytes() {
        let digest = bs58::encode([9u8; 32]).into_string();
        assert!(parse_digest("d", &digest).is_ok());
        assert!(parse_digest("d", &bs58::encode([9u8; 31]).into_string()).is_err());
        assert!(parse_digest("d", "0OIl").is_err());
        assert!(parse_digest("d", "").is_err());
        // Refused before decoding, at once: Base58 decoding is quadratic.
        let started = std::time::Instant::now();
        assert!(parse_digest("d", &"x".repeat(1 << 20)).is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn a_final_sufficient_payment_from_the_buyer_is_paid() {
        match judge(&paid("2500"), &payment(2500), ESCROW) {
            Verdict::Paid { amount_mist } => assert_eq!(amount_mist, 2500),
            other => panic!("{other:?}"),
        }
        // Overpaying is paying; amounts beyond i64 are not floats either.
        assert!(matches!(
            judge(
                &paid("170141183460469231731687303715884105727"),
                &payment(1),
                ESCROW
            ),
            Verdict::Paid {
                amount_mist: i64::MAX
            }
        ));
    }

    #[test]
    fn everything_else_is_refused_or_pending() {
        let code = |v: Verdict| match v {
            Verdict::Rejected(e) => format!("{:?}/{}", e.code(), e.reason()),
            other => format!("{other:?}"),
        };
        assert_eq!(
            code(judge(&paid("2499"), &payment(2500), ESCROW)),
            "FailedPrecondition/UNDERPAID"
        );
        let mut other_sender = paid("2500");
        other_sender.sender = Some(ESCROW.into());
        assert_eq!(
            code(judge(&other_sender, &payment(2500), ESCROW)),
            "PermissionDenied/PERMISSION_DENIED"
        );
        let mut failed = paid("2500");
        failed.success = Some(false);
        assert_eq!(
            code(judge(&failed, &payment(2500), ESCROW)),
            "FailedPrecondition/PAYMENT_FAILED"
        );
        let mut unfinal = paid("2500");
        unfinal.checkpoint = None;
        assert_eq!(code(judge(&unfinal, &payment(2500), ESCROW)), "NotFinal");
        let mut unreported = paid("2500");
        unreported.balance_changes.clear();
        assert_eq!(code(judge(&unreported, &payment(2500), ESCROW)), "NotFinal");
        // Another coin, or SUI to another address, pays nothing.
        let mut other_coin = paid("2500");
        other_coin.balance_changes[1].1 = "0x5::usdc::USDC".into();
        assert_eq!(
            code(judge(&other_coin, &payment(2500), ESCROW)),
            "FailedPrecondition/UNDERPAID"
        );
        let mut elsewhere = paid("2500");
        elsewhere.balance_changes[1].0 = BUYER.into();
        assert_eq!(
            code(judge(&elsewhere, &payment(1), ESCROW)),
            "FailedPrecondition/UNDERPAID"
        );
        let mut garbage = paid("2500");
        garbage.balance_changes[1].2 = "2.5e3".into();
        assert_eq!(
            code(judge(&garbage, &payment(2500), ESCROW)),
            "FailedPrecondition/PAYMENT_UNREADABLE"
        );
    }
}
