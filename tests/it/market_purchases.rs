//! The market's purchase lifecycle, reviews, analytics and AI chat through the real client,
//! against a stand-in Sui ledger (the `sui.rpc.v2.LedgerService` messages the server reads) and
//! a stand-in OpenAI-compatible endpoint, both on loopback.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use quintet::{
    market::{
        crypto,
        payment::SUI_COIN_TYPE,
        standin_ledger::{StandInLedger, Transfer},
        sui as sui_proof,
    },
    proto::quintet::market::v1::{self as pb},
};
use ring::{agreement, rand::SystemRandom, signature::Ed25519KeyPair};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tonic::{Code, Status};

use crate::{
    harness::{authed, field_of, reason_of},
    market::Market,
};

const ESCROW: &str = "0x00000000000000000000000000000000000000000000000000000000000e5c40";
const SUI: i64 = 1_000_000_000;

/// The stand-in ledger, with the tests' shorthand.
struct Ledger(StandInLedger);

impl Ledger {
    async fn start() -> (Self, String) {
        let ledger = StandInLedger::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        ledger.serve(listener);
        (Ledger(ledger), url)
    }

    /// Records a transaction from `sender` moving `amount` MIST of `coin` to `to`; returns its
    /// digest.
    fn pay(
        &self,
        sender: &str,
        to: &str,
        coin: &str,
        amount: i64,
        final_: bool,
        ok: bool,
    ) -> String {
        self.0
            .transfer(&transfer(sender, to, coin, amount, final_, ok))
    }

    #[allow(clippy::too_many_arguments)]
    fn put(
        &self,
        digest: &str,
        sender: &str,
        to: &str,
        coin: &str,
        amount: i64,
        final_: bool,
        ok: bool,
    ) {
        self.0
            .put(digest, &transfer(sender, to, coin, amount, final_, ok))
    }
}

fn transfer<'a>(
    sender: &'a str,
    recipient: &'a str,
    coin_type: &'a str,
    amount_mist: i64,
    checkpointed: bool,
    succeeded: bool,
) -> Transfer<'a> {
    Transfer {
        sender,
        recipient,
        coin_type,
        amount_mist,
        checkpointed,
        succeeded,
    }
}

async fn market_with_ledger() -> (Market, Ledger) {
    let (ledger, url) = Ledger::start().await;
    let market = Market::start_with(|c| {
        c.market_sui_rpc_url = url;
        c.market_escrow_address = Some(ESCROW.to_owned());
    })
    .await;
    (market, ledger)
}

/// Signs `sub` in and proves a Sui address from a wallet seeded with `seed`.
async fn buyer(market: &Market, sub: &str, seed: u8) -> (String, String) {
    let session = market.user(sub).await;
    let mut client = market.client();
    let challenge = client
        .get_sui_address_challenge(authed(pb::GetSuiAddressChallengeRequest {}, &session))
        .await
        .unwrap()
        .into_inner()
        .message;
    let wallet = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
    let user = client
        .prove_sui_address(authed(
            pb::ProveSuiAddressRequest {
                signature: sui_proof::sign_personal_message(&wallet, challenge.as_bytes()),
            },
            &session,
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    (session, user.sui_address)
}

fn x25519() -> (agreement::EphemeralPrivateKey, Vec<u8>) {
    let private =
        agreement::EphemeralPrivateKey::generate(&agreement::X25519, &SystemRandom::new()).unwrap();
    let public = private.compute_public_key().unwrap().as_ref().to_vec();
    (private, public)
}

fn purchase_request(
    datapod: &str,
    digest: &str,
    public: &[u8],
    key: &str,
) -> pb::CreatePurchaseRequest {
    pb::CreatePurchaseRequest {
        datapod_id: datapod.to_owned(),
        payment_tx_digest: digest.to_owned(),
        buyer_public_key: public.to_vec().into(),
        idempotency_key: key.to_owned(),
    }
}

async fn buy(
    market: &Market,
    session: &str,
    request: pb::CreatePurchaseRequest,
) -> Result<pb::Purchase, Status> {
    market
        .client()
        .create_purchase(authed(request, session))
        .await
        .map(|r| r.into_inner().purchase.unwrap())
}

async fn get_purchase(market: &Market, session: &str, id: &str) -> Result<pb::Purchase, Status> {
    market
        .client()
        .get_purchase(authed(
            pb::GetPurchaseRequest { id: id.to_owned() },
            session,
        ))
        .await
        .map(|r| r.into_inner().purchase.unwrap())
}

/// Waits (up to 20 s) for the purchase to reach `status`.
async fn until_status(
    market: &Market,
    session: &str,
    id: &str,
    status: pb::PurchaseStatus,
) -> pb::Purchase {
    for _ in 0..200 {
        let purchase = get_purchase(market, session, id).await.unwrap();
        if purchase.status() == status {
            return purchase;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("purchase {id} never became {status:?}");
}

async fn conversation_of(market: &Market, session: &str, id: &str) -> pb::Conversation {
    market
        .client()
        .get_conversation(authed(
            pb::GetConversationRequest { id: id.to_owned() },
            session,
        ))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
}

async fn get_datapod(market: &Market, id: &str) -> pb::Datapod {
    market
        .client()
        .get_datapod(pb::GetDatapodRequest { id: id.to_owned() })
        .await
        .unwrap()
        .into_inner()
        .datapod
        .unwrap()
}

async fn me(market: &Market, session: &str) -> pb::User {
    market
        .client()
        .get_current_user(authed(pb::GetCurrentUserRequest {}, session))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
        .user
        .unwrap()
}

/// Downloads a purchase: the header and the concatenated ciphertext.
async fn download(
    market: &Market,
    session: &str,
    purchase: &str,
) -> Result<(pb::DownloadHeader, Vec<u8>), Status> {
    use pb::download_dataset_response::Part;
    let mut stream = market
        .client()
        .download_dataset(authed(
            pb::DownloadDatasetRequest {
                purchase_id: purchase.to_owned(),
            },
            session,
        ))
        .await?
        .into_inner();
    let mut header = None;
    let mut bytes = Vec::new();
    while let Some(message) = stream.message().await? {
        match message.part.unwrap() {
            Part::Header(h) => header = Some(h),
            Part::Chunk(chunk) => bytes.extend_from_slice(&chunk),
        }
    }
    Ok((header.unwrap(), bytes))
}

#[tokio::test]
async fn a_purchase_is_paid_fulfilled_downloaded_decrypted_reviewed_and_refunded() {
    let (market, ledger) = market_with_ledger().await;
    let ada = market.user("ada").await;
    let (bob, bob_address) = buyer(&market, "bob", 1).await;
    let (carol, _) = buyer(&market, "carol", 2).await;
    let mut client = market.client();

    // Ada sells a CSV of several encryption segments.
    let mut data = b"id,reading\n".to_vec();
    for i in 0..20_000 {
        data.extend_from_slice(format!("{i},{}\n", i * 37 % 1000).as_bytes());
    }
    assert!(data.len() > 2 * crypto::SEGMENT);
    let dataset = market.upload(&ada, "text/csv", &data).await.unwrap();
    let datapod = client
        .create_datapod(authed(
            pb::CreateDatapodRequest {
                dataset_id: dataset.id,
                title: "Sensor readings".into(),
                description: "Twenty thousand readings".into(),
                category: "iot".into(),
                price_mist: 2 * SUI + SUI / 2,
            },
            &ada,
        ))
        .await
        .unwrap()
        .into_inner()
        .datapod
        .unwrap();
    client
        .publish_datapod(authed(
            pb::PublishDatapodRequest {
                id: datapod.id.clone(),
            },
            &ada,
        ))
        .await
        .unwrap();

    // Bob pays 2.5 SUI to the escrow address and claims the purchase.
    let digest = ledger.pay(
        &bob_address,
        ESCROW,
        SUI_COIN_TYPE,
        2 * SUI + SUI / 2,
        true,
        true,
    );
    let (private, public) = x25519();
    let purchase = buy(
        &market,
        &bob,
        purchase_request(&datapod.id, &digest, &public, "bob-1"),
    )
    .await
    .unwrap();
    assert!(matches!(
        purchase.status(),
        pb::PurchaseStatus::Processing | pb::PurchaseStatus::Completed
    ));
    assert_eq!(purchase.amount_mist, 2 * SUI + SUI / 2);
    assert_eq!(purchase.price_mist, 2 * SUI + SUI / 2);
    assert_eq!(purchase.payment_tx_digest, digest);
    let purchase = until_status(&market, &bob, &purchase.id, pb::PurchaseStatus::Completed).await;
    assert_eq!(purchase.escrow_status(), pb::EscrowStatus::Released);
    assert!(purchase.complete_time.is_some());

    // Counted once, on completion.
    assert_eq!(get_datapod(&market, &datapod.id).await.purchase_count, 1);
    assert_eq!(me(&market, &bob).await.total_purchases, 1);
    assert_eq!(me(&market, &ada).await.total_sales, 1);

    // Only Bob downloads, and only he can decrypt what he downloads.
    let (header, ciphertext) = download(&market, &bob, &purchase.id).await.unwrap();
    assert_eq!(header.ciphertext_size as usize, ciphertext.len());
    assert_eq!(header.file_size as usize, data.len());
    assert_eq!(header.segment_size as usize, crypto::SEGMENT);
    assert_eq!(header.file_type, "text/csv");
    assert_ne!(&ciphertext[..64], &data[..64]);
    let key = crypto::unwrap_as_buyer(private, &header.wrapped_key, &purchase.id).unwrap();
    let nonce: [u8; 12] = header.base_nonce.as_ref().try_into().unwrap();
    let plaintext = crypto::decrypt(&key, nonce, &ciphertext).unwrap();
    assert_eq!(plaintext, data);
    let hash: String = ring::digest::digest(&ring::digest::SHA256, &plaintext)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(header.data_hash, hash);
    for (who, session) in [("seller", &ada), ("stranger", &carol)] {
        let error = download(&market, session, &purchase.id).await.unwrap_err();
        assert_eq!(error.code(), Code::NotFound, "{who}");
    }
    let error = market
        .client()
        .download_dataset(pb::DownloadDatasetRequest {
            purchase_id: purchase.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
    assert_eq!(
        get_purchase(&market, &carol, &purchase.id)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        get_purchase(&market, &ada, &purchase.id).await.unwrap().id,
        purchase.id
    );

    // Reviews: by the buyer, once, 1 to 5; the averages follow every change.
    let review = |session: &str, purchase: &str, rating: i32| {
        let mut client = market.client();
        let (session, purchase) = (session.to_owned(), purchase.to_owned());
        async move {
            client
                .create_review(authed(
                    pb::CreateReviewRequest {
                        purchase_id: purchase,
                        rating,
                        comment: "clean data".into(),
                    },
                    &session,
                ))
                .await
                .map(|r| r.into_inner().review.unwrap())
        }
    };
    let error = review(&bob, &purchase.id, 6).await.unwrap_err();
    assert_eq!(field_of(&error), "rating");
    assert_eq!(
        review(&carol, &purchase.id, 5).await.unwrap_err().code(),
        Code::NotFound
    );
    let written = review(&bob, &purchase.id, 4).await.unwrap();
    assert_eq!(written.rating, 4);
    assert_eq!(
        review(&bob, &purchase.id, 5).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    assert_eq!(get_datapod(&market, &datapod.id).await.average_rating, 4.0);
    assert_eq!(me(&market, &ada).await.average_rating, 4.0);
    let update = |session: &str, rating: i32, paths: &[&str]| {
        let mut client = market.client();
        let request = authed(
            pb::UpdateReviewRequest {
                id: written.id.clone(),
                rating,
                comment: String::new(),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                }),
            },
            session,
        );
        async move {
            client
                .update_review(request)
                .await
                .map(|r| r.into_inner().review.unwrap())
        }
    };
    assert_eq!(
        update(&carol, 2, &["rating"]).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        field_of(&update(&bob, 2, &["price"]).await.unwrap_err()),
        "update_mask"
    );
    let changed = update(&bob, 2, &["rating", "comment"]).await.unwrap();
    assert_eq!((changed.rating, changed.comment.as_str()), (2, ""));
    assert_eq!(get_datapod(&market, &datapod.id).await.average_rating, 2.0);
    assert_eq!(me(&market, &ada).await.average_rating, 2.0);
    let reviews = client
        .list_reviews(pb::ListReviewsRequest {
            datapod_id: datapod.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .reviews;
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0].buyer.as_ref().unwrap().name, "bob");

    // Histories, for the buyer and for the seller, with the review.
    for (session, role) in [(&bob, pb::Role::Buyer), (&ada, pb::Role::Seller)] {
        let history = client
            .list_purchase_history(authed(
                pb::ListPurchaseHistoryRequest {
                    role: role.into(),
                    ..Default::default()
                },
                session,
            ))
            .await
            .unwrap()
            .into_inner()
            .purchases;
        assert_eq!(history.len(), 1, "{role:?}");
        assert_eq!(history[0].datapod_title, "Sensor readings");
        assert_eq!(history[0].review.as_ref().unwrap().rating, 2);
    }
    let history = client
        .list_purchase_history(authed(pb::ListPurchaseHistoryRequest::default(), &carol))
        .await
        .unwrap()
        .into_inner();
    assert!(history.purchases.is_empty());

    let analytics = client
        .get_seller_analytics(authed(pb::GetSellerAnalyticsRequest {}, &ada))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            analytics.total_datapods,
            analytics.published_datapods,
            analytics.total_sales,
            analytics.total_revenue_mist,
            analytics.average_rating,
            analytics.total_downloads,
        ),
        (1, 1, 1, 2 * SUI + SUI / 2, 2.0, 1)
    );

    // A bought datapod stays: its buyers keep access.
    let error = client
        .delete_datapod(authed(
            pb::DeleteDatapodRequest {
                id: datapod.id.clone(),
            },
            &ada,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&error), "HAS_PURCHASES");

    // Refunds: not by the buyer once delivered; by the seller, which uncounts the sale.
    let refund = |session: &str| {
        let mut client = market.client();
        let request = authed(
            pb::RefundPurchaseRequest {
                id: purchase.id.clone(),
                reason: "data was stale".into(),
            },
            session,
        );
        async move {
            client
                .refund_purchase(request)
                .await
                .map(|r| r.into_inner().purchase.unwrap())
        }
    };
    assert_eq!(
        refund(&bob).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(refund(&carol).await.unwrap_err().code(), Code::NotFound);
    let refunded = refund(&ada).await.unwrap();
    assert_eq!(refunded.status(), pb::PurchaseStatus::Refunded);
    assert_eq!(refunded.escrow_status(), pb::EscrowStatus::Refunded);
    assert_eq!(refunded.refund_reason, "data was stale");
    assert_eq!(
        reason_of(&refund(&ada).await.unwrap_err()),
        "ALREADY_REFUNDED"
    );
    assert_eq!(get_datapod(&market, &datapod.id).await.purchase_count, 0);
    assert_eq!(me(&market, &bob).await.total_purchases, 0);
    assert_eq!(me(&market, &ada).await.total_sales, 0);
    let error = download(&market, &bob, &purchase.id).await.unwrap_err();
    assert_eq!(reason_of(&error), "NOT_COMPLETED");

    // The lifecycle is enforced by the database too.
    let pool = sqlx::PgPool::connect_with(market.server.database.clone())
        .await
        .unwrap();
    let error =
        sqlx::query("UPDATE market.purchases SET status = 'completed' WHERE status = 'refunded'")
            .execute(&pool)
            .await
            .unwrap_err();
    assert!(
        error.to_string().contains("cannot move from refunded"),
        "{error}"
    );
}

#[tokio::test]
async fn payments_must_be_final_sufficient_from_the_buyer_and_used_once() {
    let (market, ledger) = market_with_ledger().await;
    let ada = market.user("ada").await;
    let (bob, bob_address) = buyer(&market, "bob", 3).await;
    let (carol, carol_address) = buyer(&market, "carol", 4).await;
    let unproven = market.user("dan").await;
    let first = market.datapod(&ada, "First", "one", "x", SUI).await;
    let second = market.datapod(&ada, "Second", "two", "x", SUI).await;
    let (_, public) = x25519();
    let request = |pod: &pb::Datapod, digest: &str, key: &str| {
        purchase_request(&pod.id, digest, &public, key)
    };

    // Malformed requests name their field.
    for (bad, field) in [
        (purchase_request("nope", "x", &public, ""), "datapod_id"),
        (
            purchase_request(&first.id, "0OIl", &public, ""),
            "payment_tx_digest",
        ),
        (
            purchase_request(
                &first.id,
                &bs58::encode([1u8; 32]).into_string(),
                &[0u8; 32],
                "",
            ),
            "buyer_public_key",
        ),
        (
            purchase_request(
                &first.id,
                &bs58::encode([1u8; 32]).into_string(),
                &public[..31],
                "",
            ),
            "buyer_public_key",
        ),
    ] {
        let error = buy(&market, &bob, bad).await.unwrap_err();
        assert_eq!(
            (error.code(), field_of(&error)),
            (Code::InvalidArgument, field.to_owned())
        );
    }
    let digest = ledger.pay(&bob_address, ESCROW, SUI_COIN_TYPE, SUI, true, true);
    let error = buy(&market, &ada, request(&first, &digest, ""))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&error), "OWN_DATAPOD");
    let error = buy(&market, &unproven, request(&first, &digest, ""))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&error), "NO_SUI_ADDRESS");
    let error = market
        .client()
        .create_purchase(request(&first, &digest, ""))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);

    // Someone else's payment, too little, a failed transaction, another coin or another payee.
    let carols = ledger.pay(&carol_address, ESCROW, SUI_COIN_TYPE, SUI, true, true);
    let error = buy(&market, &bob, request(&first, &carols, ""))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    let cases = [
        (
            ledger.pay(&bob_address, ESCROW, SUI_COIN_TYPE, SUI - 1, true, true),
            "UNDERPAID",
        ),
        (
            ledger.pay(&bob_address, ESCROW, SUI_COIN_TYPE, SUI, true, false),
            "PAYMENT_FAILED",
        ),
        (
            ledger.pay(&bob_address, ESCROW, "0x5::coin::USDC", SUI, true, true),
            "UNDERPAID",
        ),
        (
            ledger.pay(&bob_address, &carol_address, SUI_COIN_TYPE, SUI, true, true),
            "UNDERPAID",
        ),
    ];
    for (digest, reason) in &cases {
        let error = buy(&market, &bob, request(&first, digest, ""))
            .await
            .unwrap_err();
        assert_eq!(
            (error.code(), reason_of(&error)),
            (Code::FailedPrecondition, reason.to_string())
        );
    }
    // Refused payments leave nothing behind: Carol's own payment still buys for her.
    let history = market
        .client()
        .list_purchase_history(authed(pb::ListPurchaseHistoryRequest::default(), &bob))
        .await
        .unwrap()
        .into_inner();
    assert!(history.purchases.is_empty());
    let carol_purchase = buy(&market, &carol, request(&first, &carols, ""))
        .await
        .unwrap();
    until_status(
        &market,
        &carol,
        &carol_purchase.id,
        pb::PurchaseStatus::Completed,
    )
    .await;

    // The same idempotency key replays; with another request it is refused.
    let bought = buy(&market, &bob, request(&first, &digest, "k1"))
        .await
        .unwrap();
    let again = buy(&market, &bob, request(&first, &digest, "k1"))
        .await
        .unwrap();
    assert_eq!(again.id, bought.id);
    assert_eq!(again.idempotency_key, "k1");
    let other = ledger.pay(&bob_address, ESCROW, SUI_COIN_TYPE, SUI, true, true);
    let error = buy(&market, &bob, request(&second, &other, "k1"))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&error), "IDEMPOTENCY_KEY_REUSED");
    // A digest pays once, ever: not for another datapod, not for another buyer.
    let error = buy(&market, &bob, request(&second, &digest, ""))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists);
    let error = buy(&market, &carol, request(&second, &digest, ""))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists);
    // And a datapod is bought once (until refunded).
    let error = buy(&market, &bob, request(&first, &other, ""))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&error), "ALREADY_PURCHASED");

    // Concurrent duplicates: one purchase, whatever the interleaving.
    let digest = ledger.pay(&bob_address, ESCROW, SUI_COIN_TYPE, SUI, true, true);
    let attempts = (0..8).map(|i| {
        let market = &market;
        let (bob, request) = (bob.clone(), request(&second, &digest, &format!("c{i}")));
        async move { buy(market, &bob, request).await }
    });
    let results = futures::future::join_all(attempts).await;
    let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    for lost in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(lost.code(), Code::AlreadyExists | Code::FailedPrecondition),
            "{lost:?}"
        );
    }
    until_status(&market, &bob, &won[0].id, pb::PurchaseStatus::Completed).await;
    assert_eq!(get_datapod(&market, &second.id).await.purchase_count, 1);
    assert_eq!(get_datapod(&market, &first.id).await.purchase_count, 2);
    assert_eq!(me(&market, &ada).await.total_sales, 3);
    assert_eq!(me(&market, &bob).await.total_purchases, 2);
}

#[tokio::test]
async fn a_payment_the_ledger_has_not_finalised_is_checked_again_in_the_background() {
    let (market, ledger) = market_with_ledger().await;
    let ada = market.user("ada").await;
    let (bob, bob_address) = buyer(&market, "bob", 5).await;
    let pod = market.datapod(&ada, "Later", "pending", "x", SUI).await;
    let (_, public) = x25519();

    // Executed but not checkpointed: the purchase waits, its payment unverified.
    let digest = ledger.pay(&bob_address, ESCROW, SUI_COIN_TYPE, SUI, false, true);
    let purchase = buy(
        &market,
        &bob,
        purchase_request(&pod.id, &digest, &public, ""),
    )
    .await
    .unwrap();
    assert_eq!(purchase.status(), pb::PurchaseStatus::PendingPayment);
    assert_eq!(purchase.escrow_status(), pb::EscrowStatus::Unspecified);
    assert_eq!(
        reason_of(
            &market
                .client()
                .refund_purchase(authed(
                    pb::RefundPurchaseRequest {
                        id: purchase.id.clone(),
                        reason: String::new()
                    },
                    &ada
                ))
                .await
                .unwrap_err()
        ),
        "PAYMENT_NOT_VERIFIED"
    );
    assert_eq!(get_datapod(&market, &pod.id).await.purchase_count, 0);
    // Checkpointed: the worker finds it and completes the purchase.
    ledger.put(
        &digest,
        &bob_address,
        ESCROW,
        SUI_COIN_TYPE,
        SUI,
        true,
        true,
    );
    let done = until_status(&market, &bob, &purchase.id, pb::PurchaseStatus::Completed).await;
    assert_eq!(done.escrow_status(), pb::EscrowStatus::Released);
    assert_eq!(get_datapod(&market, &pod.id).await.purchase_count, 1);

    // A digest the ledger never heard of (a typo) does not block a corrected attempt.
    let other = market.datapod(&ada, "Other", "pending", "x", SUI).await;
    let typo = bs58::encode([7u8; 32]).into_string();
    let stuck = buy(
        &market,
        &bob,
        purchase_request(&other.id, &typo, &public, ""),
    )
    .await
    .unwrap();
    assert_eq!(stuck.status(), pb::PurchaseStatus::PendingPayment);
    let digest = ledger.pay(&bob_address, ESCROW, SUI_COIN_TYPE, SUI, true, true);
    let fixed = buy(
        &market,
        &bob,
        purchase_request(&other.id, &digest, &public, ""),
    )
    .await
    .unwrap();
    assert_ne!(fixed.id, stuck.id);
    assert_eq!(
        get_purchase(&market, &bob, &stuck.id)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    until_status(&market, &bob, &fixed.id, pb::PurchaseStatus::Completed).await;
}

#[tokio::test]
async fn purchases_and_chat_are_refused_when_not_configured() {
    let market = Market::start().await;
    let ada = market.user("ada").await;
    let (bob, _) = buyer(&market, "bob", 6).await;
    let pod = market.datapod(&ada, "Off", "", "", SUI).await;
    let (_, public) = x25519();
    let digest = bs58::encode([3u8; 32]).into_string();
    let error = buy(
        &market,
        &bob,
        purchase_request(&pod.id, &digest, &public, ""),
    )
    .await
    .unwrap_err();
    assert_eq!(reason_of(&error), "PURCHASES_DISABLED");
    let conversation = market
        .client()
        .create_conversation(authed(pb::CreateConversationRequest::default(), &bob))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    let error = market
        .client()
        .send_message(authed(
            pb::SendMessageRequest {
                conversation_id: conversation.id,
                content: "hello".into(),
                datapod_id: String::new(),
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&error), "AI_CHAT_DISABLED");
}

/// The stand-in chat-completions endpoint: streams a fixed answer as server-sent events, in
/// pieces, with usage at the end; answers HTTP 500 to questions containing "fail". Keeps each
/// request's headers and body.
async fn chat_endpoint() -> (String, Arc<Mutex<Vec<(String, Value)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let Some((head, body)) = crate::harness::read_http_request(&mut socket).await
                else {
                    return;
                };
                let body: Value = serde_json::from_slice(&body).unwrap();
                let failing = body.to_string().contains("fail");
                kept.lock().unwrap().push((head, body));
                if failing {
                    let _ = socket
                        .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return;
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
                    .await;
                for piece in ["Hel", "lo", ", this is", " the answer."] {
                    let event =
                        serde_json::json!({"choices": [{"index": 0, "delta": {"content": piece}}]});
                    let _ = socket
                        .write_all(format!("data: {event}\n\n").as_bytes())
                        .await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let usage = serde_json::json!({"choices": [], "usage": {"prompt_tokens": 42, "completion_tokens": 7}});
                let _ = socket
                    .write_all(format!("data: {usage}\n\ndata: [DONE]\n\n").as_bytes())
                    .await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn the_ai_chat_streams_answers_stores_both_messages_and_limits_each_user() {
    let (url, seen) = chat_endpoint().await;
    let market = Market::start_with(|c| {
        c.market_ai_url = Some(url);
        c.market_ai_model = "test-model".into();
        c.market_ai_api_key = Some(quintet::auth::Secret::new("test-ai-key"));
        c.market_ai_messages_per_minute = 4;
    })
    .await;
    let ada = market.user("ada").await;
    let bob = market.user("bob").await;
    let pod = market
        .datapod(&ada, "Harbour tides", "Hourly tide heights", "ocean", SUI)
        .await;
    let mut client = market.client();
    let conversation = client
        .create_conversation(authed(pb::CreateConversationRequest::default(), &bob))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    let send = |session: &str, conversation: &str, content: &str, datapod: &str| {
        let mut client = market.client();
        let request = authed(
            pb::SendMessageRequest {
                conversation_id: conversation.to_owned(),
                content: content.to_owned(),
                datapod_id: datapod.to_owned(),
            },
            session,
        );
        async move {
            let mut stream = client.send_message(request).await?.into_inner();
            let mut deltas = Vec::new();
            let mut result = None;
            while let Some(message) = stream.message().await? {
                match message.event.unwrap() {
                    pb::send_message_response::Event::Delta(text) => deltas.push(text),
                    pb::send_message_response::Event::Result(r) => result = Some(r),
                }
            }
            Ok::<_, Status>((deltas, result.unwrap()))
        }
    };

    let (deltas, result) = send(&bob, &conversation.id, "What is in this dataset?", &pod.id)
        .await
        .unwrap();
    assert_eq!(deltas.len(), 4, "the answer arrives in pieces");
    let answer = result.assistant_message.unwrap();
    assert_eq!(answer.content, deltas.concat());
    assert_eq!(answer.content, "Hello, this is the answer.");
    assert_eq!((answer.role.as_str(), answer.tokens), ("assistant", 7));
    let question = result.user_message.unwrap();
    assert_eq!((question.role.as_str(), question.tokens), ("user", 42));
    assert_eq!(question.datapod_id, pod.id);
    assert_eq!(result.total_tokens, 49);
    {
        let seen = seen.lock().unwrap();
        let (head, body) = &seen[0];
        assert!(
            head.to_ascii_lowercase()
                .contains("authorization: bearer test-ai-key"),
            "{head}"
        );
        assert!(head.starts_with("POST /v1/chat/completions "), "{head}");
        assert_eq!(body["model"], "test-model");
        assert_eq!(body["stream"], true);
        assert!(
            body["messages"].to_string().contains("Harbour tides"),
            "the datapod is the context"
        );
    }

    // The second question carries the first exchange as history.
    let (_, result) = send(&bob, &conversation.id, "And its columns?", "")
        .await
        .unwrap();
    assert_eq!(result.total_tokens, 98);
    let history = seen.lock().unwrap()[1].1["messages"].to_string();
    assert!(
        history.contains("What is in this dataset?")
            && history.contains("Hello, this is the answer.")
    );

    let stored = conversation_of(&market, &bob, &conversation.id).await;
    assert_eq!(stored.title, "What is in this dataset?");
    assert_eq!(stored.total_tokens, 98);
    let roles: Vec<_> = stored.messages.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    let listed = client
        .list_conversations(authed(pb::ListConversationsRequest::default(), &bob))
        .await
        .unwrap()
        .into_inner()
        .conversations;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].messages.is_empty());

    // Others' conversations do not exist for Ada; bad input names its field.
    let error = client
        .get_conversation(authed(
            pb::GetConversationRequest {
                id: conversation.id.clone(),
            },
            &ada,
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert_eq!(
        send(&ada, &conversation.id, "hi", "")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        field_of(&send(&bob, &conversation.id, " ", "").await.unwrap_err()),
        "content"
    );
    assert_eq!(
        field_of(&send(&bob, &conversation.id, "hi", "x").await.unwrap_err()),
        "datapod_id"
    );

    // A failing endpoint is UNAVAILABLE and stores nothing.
    let error = send(&bob, &conversation.id, "please fail", "")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    let stored = conversation_of(&market, &bob, &conversation.id).await;
    assert_eq!(stored.messages.len(), 4);

    // Three messages were counted this minute; the fourth passes, the fifth is refused.
    send(&bob, &conversation.id, "One more", "").await.unwrap();
    let error = send(&bob, &conversation.id, "And another", "")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted);
    // Ada's allowance is her own.
    let hers = client
        .create_conversation(authed(
            pb::CreateConversationRequest {
                title: "Mine".into(),
            },
            &ada,
        ))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    send(&ada, &hers.id, "Hello", "").await.unwrap();
}
