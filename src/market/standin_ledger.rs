//! A stand-in Sui full node: serves `sui.rpc.v2.LedgerService/GetTransaction` from transactions
//! put into it. For trying purchases without a chain (`quintet-bench sui-ledger`) and for the
//! tests; the server itself never uses it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tonic::{Request, Response, Status};

use crate::proto::sui::rpc::v2::{
    self as sui,
    ledger_service_server::{LedgerService, LedgerServiceServer},
};

/// What a stand-in transaction did.
#[derive(Debug, Clone)]
pub struct Transfer<'a> {
    pub sender: &'a str,
    pub recipient: &'a str,
    pub coin_type: &'a str,
    pub amount_mist: i64,
    /// In a checkpoint yet.
    pub checkpointed: bool,
    pub succeeded: bool,
}

#[derive(Clone, Default)]
pub struct StandInLedger {
    transactions: Arc<Mutex<HashMap<String, sui::ExecutedTransaction>>>,
}

impl StandInLedger {
    /// Serves the ledger on `listener` until the process ends.
    pub fn serve(&self, listener: tokio::net::TcpListener) {
        let service = LedgerServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        });
    }

    /// Records a transfer under a new random digest, which it returns.
    pub fn transfer(&self, transfer: &Transfer<'_>) -> String {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .expect("the system's random source works");
        let digest = bs58::encode(bytes).into_string();
        self.put(&digest, transfer);
        digest
    }

    /// Records (or replaces) the transaction `digest`.
    pub fn put(&self, digest: &str, t: &Transfer<'_>) {
        let change = |address: &str, coin: &str, amount: i128| sui::BalanceChange {
            address: Some(address.to_owned()),
            coin_type: Some(coin.to_owned()),
            amount: Some(amount.to_string()),
        };
        let gas = 1_000_000;
        let mut balance_changes = vec![change(t.sender, "0x2::sui::SUI", -gas)];
        if t.succeeded {
            balance_changes[0] =
                change(t.sender, "0x2::sui::SUI", -gas - i128::from(t.amount_mist));
            balance_changes.push(change(t.recipient, t.coin_type, i128::from(t.amount_mist)));
        }
        let tx = sui::ExecutedTransaction {
            digest: Some(digest.to_owned()),
            transaction: Some(sui::Transaction {
                sender: Some(t.sender.to_owned()),
            }),
            effects: Some(sui::TransactionEffects {
                status: Some(sui::ExecutionStatus {
                    success: Some(t.succeeded),
                    error: (!t.succeeded).then(|| sui::ExecutionError {
                        description: Some("InsufficientGas".into()),
                    }),
                }),
            }),
            checkpoint: t.checkpointed.then_some(1),
            timestamp: None,
            balance_changes,
        };
        self.transactions
            .lock()
            .expect("ledger")
            .insert(digest.to_owned(), tx);
    }
}

#[tonic::async_trait]
impl LedgerService for StandInLedger {
    async fn get_transaction(
        &self,
        request: Request<sui::GetTransactionRequest>,
    ) -> Result<Response<sui::GetTransactionResponse>, Status> {
        let request = request.into_inner();
        let digest = request.digest.unwrap_or_default();
        let Some(mut tx) = self
            .transactions
            .lock()
            .expect("ledger")
            .get(&digest)
            .cloned()
        else {
            return Err(Status::not_found(format!("transaction {digest} not found")));
        };
        // Like a real node: only the fields the read mask names come back.
        let mask = request.read_mask.map(|m| m.paths).unwrap_or_default();
        let asked = |path: &str| mask.iter().any(|p| p == path);
        if !asked("transaction.sender") {
            tx.transaction = None;
        }
        if !asked("effects.status") {
            tx.effects = None;
        }
        if !asked("checkpoint") {
            tx.checkpoint = None;
        }
        if !asked("balance_changes") {
            tx.balance_changes.clear();
        }
        Ok(Response::new(sui::GetTransactionResponse {
            transaction: Some(tx),
        }))
    }
}
