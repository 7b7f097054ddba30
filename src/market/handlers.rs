//! gRPC handlers of the market: authenticate the session, parse the request into domain values,
//! call the queries, convert back.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use ring::digest;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::{
    chat::{ChatEndpoint, ChatEvent},
    convert,
    crypto::{self, Encryptor, MasterKey},
    infer::{self, Inference},
    oidc::OidcVerifier,
    payment::{self, Payment, PaymentVerifier},
    purchases::{self, Settled},
    queries::{self, DatapodChanges, DatasetRow, NewDatapod, Search, SignedIn, Sort, UserRow},
    sui,
};
use crate::{
    auth::{generate_token, require_bearer_token},
    blobs::{self, BlobStore, Sha256, upload_chunks},
    error::{Error, Result},
    page_token::{PageTokens, page_size},
    proto::{
        quintet::market::v1::{self as pb, market_service_server},
        timestamp,
    },
};

/// The [`blobs::lock`] scope of dataset bytes: uploads and their collection.
const DATASET_LOCKS: &str = "market.blob";
/// How long a session lasts.
const SESSION_DAYS: i64 = 30;
/// Days an uploaded dataset may wait to become a datapod before it is deleted.
pub const UNUSED_DATASET_DAYS: i32 = 7;
/// Highest price, in MIST (10^9 SUI), within the seed's DECIMAL(20, 9).
const MAX_PRICE_MIST: i64 = 1_000_000_000_000_000_000;
/// How long CreatePurchase has to check a payment before the background worker may.
const PAYMENT_CHECK_LEASE_SECONDS: f64 = 30.0;
/// Bytes of ciphertext per download message.
const DOWNLOAD_CHUNK: usize = 256 * 1024;
/// Earlier messages of a conversation the model is given.
const CHAT_HISTORY: i64 = 20;
/// What the model is told it is.
const CHAT_SYSTEM_PROMPT: &str = "You are the assistant of a data marketplace. Help buyers \
    understand and choose datasets, and sellers describe theirs. Be concise and accurate; say \
    when you do not know.";

type ResponseStream<T> =
    std::pin::Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send>>;

#[derive(Clone)]
pub struct MarketService {
    pub pool: PgPool,
    pub blobs: BlobStore,
    pub oidc: Arc<OidcVerifier>,
    pub master_key: MasterKey,
    pub page_tokens: PageTokens,
    pub max_dataset_bytes: u64,
    pub verifier: Arc<dyn PaymentVerifier>,
    /// The AI chat's model; `None` when no endpoint is configured.
    pub chat: Option<Arc<ChatEndpoint>>,
    pub shutdown: CancellationToken,
}

fn parse_id(field: &str, text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|_| Error::invalid_argument(field, "not a UUID"))
}

fn check_title(title: &str) -> Result<()> {
    let length = title.chars().count();
    if length == 0 || length > 255 {
        return Err(Error::invalid_argument("title", "1 to 255 characters"));
    }
    if title.contains('\0') {
        return Err(Error::invalid_argument("title", "contains NUL"));
    }
    Ok(())
}

fn check_description(description: &str) -> Result<()> {
    if description.chars().count() > 10_000 {
        return Err(Error::invalid_argument(
            "description",
            "at most 10,000 characters",
        ));
    }
    if description.contains('\0') {
        return Err(Error::invalid_argument("description", "contains NUL"));
    }
    Ok(())
}

fn check_category(category: &str) -> Result<Option<&str>> {
    if category.chars().count() > 50 {
        return Err(Error::invalid_argument("category", "at most 50 characters"));
    }
    if category.contains('\0') {
        return Err(Error::invalid_argument("category", "contains NUL"));
    }
    Ok((!category.is_empty()).then_some(category))
}

fn check_price(field: &str, price: i64) -> Result<i64> {
    if !(0..=MAX_PRICE_MIST).contains(&price) {
        return Err(Error::invalid_argument(
            field,
            format!("0 to {MAX_PRICE_MIST} MIST"),
        ));
    }
    Ok(price)
}

/// What an upload accumulates besides the ciphertext.
struct UploadState {
    encryptor: Option<Encryptor>,
    plaintext: digest::Context,
    size: u64,
    inference: Option<Inference>,
}

impl MarketService {
    /// The signed-in user; UNAUTHENTICATED without a live session.
    async fn caller<T>(&self, request: &Request<T>) -> Result<UserRow> {
        let token = require_bearer_token(request)?;
        queries::session_user(&self.pool, &token.digest())
            .await?
            .ok_or_else(|| Error::Unauthenticated("the session is unknown or expired".to_owned()))
    }

    /// The datapod, if `caller` sells it: NOT_FOUND if it does not exist or is someone else's
    /// unpublished one (which exists only for its seller), PERMISSION_DENIED if someone else
    /// sells it.
    async fn own_datapod(&self, caller: &UserRow, field: &str, id: &str) -> Result<Uuid> {
        let id = parse_id(field, id)?;
        match queries::datapod_seller(&self.pool, id).await? {
            Some((seller, _)) if seller == caller.id => Ok(id),
            Some((_, true)) => Err(Error::PermissionDenied(
                "only the datapod's seller may change it".to_owned(),
            )),
            Some((_, false)) | None => Err(Error::not_found("datapod", id.to_string())),
        }
    }

    async fn datapod_message(&self, id: Uuid) -> Result<pb::Datapod> {
        let row = queries::datapod(&self.pool, id)
            .await?
            .ok_or_else(|| Error::not_found("datapod", id.to_string()))?;
        Ok(convert::datapod(row))
    }

    async fn set_published(
        &self,
        request: Request<String>,
        published: bool,
    ) -> Result<pb::Datapod> {
        let caller = self.caller(&request).await?;
        let id = self.own_datapod(&caller, "id", request.get_ref()).await?;
        queries::update_datapod(
            &self.pool,
            id,
            &DatapodChanges {
                title: None,
                description: None,
                category: None,
                price_mist: None,
                published: Some(published),
            },
        )
        .await?;
        self.datapod_message(id).await
    }

    /// Encrypts the plaintext chunks as they arrive, hashing and inferring on the way.
    fn encrypt_stream(
        plaintext: impl Stream<Item = Result<Bytes>> + Send + 'static,
        state: Arc<Mutex<UploadState>>,
        max: u64,
    ) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
        let finished = state.clone();
        plaintext
            .map(move |chunk| {
                let chunk = chunk?;
                let mut state = state.lock().expect("upload state");
                state.size += chunk.len() as u64;
                if state.size > max {
                    return Err(Error::invalid_argument(
                        "chunk",
                        format!("the dataset is larger than {max} bytes"),
                    ));
                }
                state.plaintext.update(&chunk);
                if let Some(inference) = &mut state.inference {
                    inference.push(&chunk);
                }
                let encryptor = state.encryptor.as_mut().expect("not finished");
                Ok(Bytes::from(encryptor.push(&chunk)))
            })
            .chain(futures::stream::once(async move {
                let mut state = finished.lock().expect("upload state");
                let encryptor = state.encryptor.take().expect("finished once");
                Ok(Bytes::from(encryptor.finish()))
            }))
    }
}

#[tonic::async_trait]
impl market_service_server::MarketService for MarketService {
    async fn sign_in(
        &self,
        request: Request<pb::SignInRequest>,
    ) -> std::result::Result<Response<pb::SignInResponse>, Status> {
        let token = &request.get_ref().id_token;
        if token.is_empty() {
            return Err(Error::invalid_argument("id_token", "required").into());
        }
        let identity = self.oidc.verify(token).await?;
        let salt = crypto::to_hex(&crypto::random_key());
        let session = generate_token("qmkt_");
        let expires_at = time::OffsetDateTime::now_utc() + time::Duration::days(SESSION_DAYS);
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        let (user, created) = queries::upsert_user(
            &mut tx,
            &SignedIn {
                google_id: &identity.subject,
                email: &identity.email,
                name: identity.name.as_deref(),
                picture: identity.picture.as_deref(),
                new_salt: &salt,
            },
        )
        .await?;
        queries::create_session(&mut *tx, &session.digest(), user.id, expires_at).await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::SignInResponse {
            session_token: session.expose().to_owned(),
            expire_time: Some(timestamp(expires_at)),
            user: Some(convert::current_user(user)),
            created,
        }))
    }

    async fn get_current_user(
        &self,
        request: Request<pb::GetCurrentUserRequest>,
    ) -> std::result::Result<Response<pb::GetCurrentUserResponse>, Status> {
        let user = self.caller(&request).await?;
        Ok(Response::new(pb::GetCurrentUserResponse {
            user: Some(convert::current_user(user)),
        }))
    }

    async fn sign_out(
        &self,
        request: Request<pb::SignOutRequest>,
    ) -> std::result::Result<Response<pb::SignOutResponse>, Status> {
        self.caller(&request).await?;
        let token = require_bearer_token(&request)?;
        queries::delete_session(&self.pool, &token.digest()).await?;
        Ok(Response::new(pb::SignOutResponse {}))
    }

    async fn get_sui_address_challenge(
        &self,
        request: Request<pb::GetSuiAddressChallengeRequest>,
    ) -> std::result::Result<Response<pb::GetSuiAddressChallengeResponse>, Status> {
        let user = self.caller(&request).await?;
        Ok(Response::new(pb::GetSuiAddressChallengeResponse {
            message: sui::proof_message(user.id),
        }))
    }

    async fn prove_sui_address(
        &self,
        request: Request<pb::ProveSuiAddressRequest>,
    ) -> std::result::Result<Response<pb::ProveSuiAddressResponse>, Status> {
        let user = self.caller(&request).await?;
        let address = sui::verify_personal_message(
            "signature",
            &request.get_ref().signature,
            sui::proof_message(user.id).as_bytes(),
        )?;
        queries::set_sui_address(&self.pool, user.id, &address)
            .await
            .map_err(|error| match error {
                Error::AlreadyExists { .. } => {
                    Error::already_exists("sui address", address.clone())
                }
                other => other,
            })?;
        Ok(Response::new(pb::ProveSuiAddressResponse {
            user: Some(convert::current_user(
                queries::user(&self.pool, user.id).await?,
            )),
        }))
    }

    async fn upload_dataset(
        &self,
        request: Request<Streaming<pb::UploadDatasetRequest>>,
    ) -> std::result::Result<Response<pb::UploadDatasetResponse>, Status> {
        let seller = self.caller(&request).await?;
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(pb::UploadDatasetRequest {
                part: Some(pb::upload_dataset_request::Part::Header(header)),
            }) => header,
            _ => {
                return Err(Error::invalid_argument(
                    "header",
                    "the first message must be the header",
                )
                .into());
            }
        };
        let file_type = match header.file_type.trim() {
            "" => "application/octet-stream".to_owned(),
            text if text.chars().count() > 100 => {
                return Err(
                    Error::invalid_argument("header.file_type", "at most 100 characters").into(),
                );
            }
            text if text.contains(char::is_control) => {
                return Err(Error::invalid_argument(
                    "header.file_type",
                    "a MIME type, no control characters",
                )
                .into());
            }
            text => text.to_owned(),
        };
        let format = infer::format_of(&file_type);

        let key = crypto::random_key();
        let nonce = crypto::random_nonce();
        let state = Arc::new(Mutex::new(UploadState {
            encryptor: Some(Encryptor::new(&key, nonce)),
            plaintext: digest::Context::new(&digest::SHA256),
            size: 0,
            inference: (format != infer::Format::Other).then(|| Inference::new(format)),
        }));
        let plaintext = upload_chunks(stream, |m: pb::UploadDatasetRequest| match m.part {
            Some(pb::upload_dataset_request::Part::Chunk(bytes)) => Some(bytes),
            _ => None,
        });
        let ciphertext = Self::encrypt_stream(plaintext, state.clone(), self.max_dataset_bytes);
        let max_ciphertext = self.max_dataset_bytes
            + (self.max_dataset_bytes / crypto::SEGMENT as u64 + 1) * crypto::TAG as u64;
        let stored = self.blobs.put(ciphertext, max_ciphertext, "chunk").await?;

        let (data_hash, file_size, inference) = {
            let mut state = state.lock().expect("upload state");
            let hash =
                std::mem::replace(&mut state.plaintext, digest::Context::new(&digest::SHA256))
                    .finish();
            (
                crypto::to_hex(hash.as_ref()),
                state.size,
                state.inference.take(),
            )
        };
        let (schema, sample) = inference.map(Inference::finish).unwrap_or((None, None));
        let id = Uuid::now_v7();
        let row = DatasetRow {
            id,
            seller_id: seller.id,
            blob_id: stored.sha256.to_hex(),
            storage_size: stored.size as i64,
            wrapped_key: self.master_key.wrap(&key, id.as_bytes()),
            encryption_key_hash: crypto::to_hex(digest::digest(&digest::SHA256, &key).as_ref()),
            encryption_iv: crypto::to_hex(&nonce),
            file_type,
            file_size: file_size as i64,
            data_hash,
            schema: schema.map(sqlx::types::Json),
            sample_data: sample.map(sqlx::types::Json),
        };
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        self.blobs
            .hold(&mut tx, DATASET_LOCKS, &stored.sha256)
            .await?;
        queries::insert_dataset(&mut tx, &row).await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::UploadDatasetResponse {
            dataset: Some(convert::dataset(&row)),
        }))
    }

    async fn create_datapod(
        &self,
        request: Request<pb::CreateDatapodRequest>,
    ) -> std::result::Result<Response<pb::CreateDatapodResponse>, Status> {
        let seller = self.caller(&request).await?;
        let message = request.into_inner();
        let dataset_id = parse_id("dataset_id", &message.dataset_id)?;
        check_title(&message.title)?;
        check_description(&message.description)?;
        let category = check_category(&message.category)?;
        let price_mist = check_price("price_mist", message.price_mist)?;
        let created = queries::insert_datapod(
            &self.pool,
            &NewDatapod {
                seller_id: seller.id,
                dataset_id,
                title: &message.title,
                description: &message.description,
                category,
                price_mist,
            },
        )
        .await
        .map_err(|error| match error {
            Error::AlreadyExists { .. } => {
                Error::already_exists("datapod for dataset", dataset_id.to_string())
            }
            other => other,
        })?
        .ok_or_else(|| Error::not_found("dataset", dataset_id.to_string()))?;
        Ok(Response::new(pb::CreateDatapodResponse {
            datapod: Some(self.datapod_message(created).await?),
        }))
    }

    async fn update_datapod(
        &self,
        request: Request<pb::UpdateDatapodRequest>,
    ) -> std::result::Result<Response<pb::UpdateDatapodResponse>, Status> {
        let seller = self.caller(&request).await?;
        let message = request.into_inner();
        let paths = message.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(Error::invalid_argument("update_mask", "name at least one field").into());
        }
        let mut changes = DatapodChanges {
            title: None,
            description: None,
            category: None,
            price_mist: None,
            published: None,
        };
        for path in &paths {
            match path.as_str() {
                "title" => {
                    check_title(&message.title)?;
                    changes.title = Some(&message.title);
                }
                "description" => {
                    check_description(&message.description)?;
                    changes.description = Some(&message.description);
                }
                "category" => changes.category = Some(check_category(&message.category)?),
                "price_mist" => {
                    changes.price_mist = Some(check_price("price_mist", message.price_mist)?)
                }
                other => {
                    return Err(Error::invalid_argument(
                        "update_mask",
                        format!(
                            "{other:?} cannot be updated (title, description, category, price_mist)"
                        ),
                    )
                    .into());
                }
            }
        }
        let id = self.own_datapod(&seller, "id", &message.id).await?;
        queries::update_datapod(&self.pool, id, &changes).await?;
        Ok(Response::new(pb::UpdateDatapodResponse {
            datapod: Some(self.datapod_message(id).await?),
        }))
    }

    async fn publish_datapod(
        &self,
        request: Request<pb::PublishDatapodRequest>,
    ) -> std::result::Result<Response<pb::PublishDatapodResponse>, Status> {
        let datapod = self.set_published(request.map(|m| m.id), true).await?;
        Ok(Response::new(pb::PublishDatapodResponse {
            datapod: Some(datapod),
        }))
    }

    async fn unpublish_datapod(
        &self,
        request: Request<pb::UnpublishDatapodRequest>,
    ) -> std::result::Result<Response<pb::UnpublishDatapodResponse>, Status> {
        let datapod = self.set_published(request.map(|m| m.id), false).await?;
        Ok(Response::new(pb::UnpublishDatapodResponse {
            datapod: Some(datapod),
        }))
    }

    async fn delete_datapod(
        &self,
        request: Request<pb::DeleteDatapodRequest>,
    ) -> std::result::Result<Response<pb::DeleteDatapodResponse>, Status> {
        let seller = self.caller(&request).await?;
        let id = self
            .own_datapod(&seller, "id", &request.get_ref().id)
            .await?;
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        // Locked first: a purchase being made now either commits before the check sees it, or
        // waits and then finds the datapod gone.
        if !queries::lock_datapod(&mut tx, id).await? {
            return Err(Error::not_found("datapod", id.to_string()).into());
        }
        if queries::datapod_has_purchases(&mut *tx, id).await? {
            return Err(Error::failed_precondition(
                "HAS_PURCHASES",
                id.to_string(),
                "the datapod was bought: its buyers keep access, so it cannot be deleted; unpublish it instead",
            )
            .into());
        }
        let blob = queries::delete_datapod(&mut tx, id).await?;
        tx.commit().await.map_err(Error::from)?;
        // The datapod is gone; bytes that cannot be removed now are collected later.
        if let Some(sha256) = blob.as_deref().and_then(Sha256::from_hex)
            && let Err(error) = self.release_blob(&sha256).await
        {
            tracing::warn!(%error, "cannot remove a deleted dataset's bytes yet");
        }
        Ok(Response::new(pb::DeleteDatapodResponse {}))
    }

    async fn get_datapod(
        &self,
        request: Request<pb::GetDatapodRequest>,
    ) -> std::result::Result<Response<pb::GetDatapodResponse>, Status> {
        let id = parse_id("id", &request.get_ref().id)?;
        let row = self.visible_datapod(&request, id).await?;
        Ok(Response::new(pb::GetDatapodResponse {
            datapod: Some(convert::datapod(row)),
        }))
    }

    async fn search_datapods(
        &self,
        request: Request<pb::SearchDatapodsRequest>,
    ) -> std::result::Result<Response<pb::SearchDatapodsResponse>, Status> {
        let message = request.into_inner();
        let size = page_size("page_size", message.page_size, 20, 100)?;
        if message.query.chars().count() > 500 {
            return Err(Error::invalid_argument("query", "at most 500 characters").into());
        }
        if message.query.contains('\0') {
            return Err(Error::invalid_argument("query", "contains NUL").into());
        }
        let min_price_mist = check_price("min_price_mist", message.min_price_mist)?;
        let max_price_mist = match message.max_price_mist {
            0 => None,
            max => Some(check_price("max_price_mist", max)?),
        };
        if !(0.0..=5.0).contains(&message.min_rating) {
            return Err(Error::invalid_argument("min_rating", "0 to 5").into());
        }
        let query = message.query.trim().to_owned();
        let sort = match pb::SortBy::try_from(message.sort_by) {
            Ok(pb::SortBy::Unspecified) if query.is_empty() => Sort::Newest,
            Ok(pb::SortBy::Unspecified) | Ok(pb::SortBy::Relevance) => {
                if query.is_empty() {
                    return Err(
                        Error::invalid_argument("sort_by", "relevance needs a query").into(),
                    );
                }
                Sort::Relevance
            }
            Ok(pb::SortBy::Newest) => Sort::Newest,
            Ok(pb::SortBy::PriceAsc) => Sort::PriceAscending,
            Ok(pb::SortBy::PriceDesc) => Sort::PriceDescending,
            Ok(pb::SortBy::Rating) => Sort::Rating,
            Ok(pb::SortBy::Sales) => Sort::Sales,
            Err(_) => return Err(Error::invalid_argument("sort_by", "unknown value").into()),
        };
        let search = Search {
            query,
            category: check_category(&message.category)?.map(str::to_owned),
            min_price_mist,
            max_price_mist,
            min_rating: message.min_rating,
        };
        let (rows, next_page_token) = self
            .page_tokens
            .page(
                &format!("market.SearchDatapods?{search:?}&{sort:?}"),
                &message.page_token,
                size,
                |after, limit| queries::search(&self.pool, &search, sort, after, limit),
                sort_position,
            )
            .await?;
        Ok(Response::new(pb::SearchDatapodsResponse {
            datapods: rows.into_iter().map(convert::datapod_summary).collect(),
            next_page_token,
        }))
    }

    async fn list_my_datapods(
        &self,
        request: Request<pb::ListMyDatapodsRequest>,
    ) -> std::result::Result<Response<pb::ListMyDatapodsResponse>, Status> {
        let seller = self.caller(&request).await?;
        let message = request.into_inner();
        let size = page_size("page_size", message.page_size, 20, 100)?;
        let (rows, next_page_token) = self
            .page_tokens
            .page(
                &format!("market.ListMyDatapods?{}", seller.id),
                &message.page_token,
                size,
                |after, limit| queries::seller_datapods(&self.pool, seller.id, after, limit),
                sort_position,
            )
            .await?;
        Ok(Response::new(pb::ListMyDatapodsResponse {
            datapods: rows.into_iter().map(convert::datapod_summary).collect(),
            next_page_token,
        }))
    }

    async fn create_purchase(
        &self,
        request: Request<pb::CreatePurchaseRequest>,
    ) -> std::result::Result<Response<pb::CreatePurchaseResponse>, Status> {
        let buyer = self.caller(&request).await?;
        let message = request.into_inner();
        let datapod_id = parse_id("datapod_id", &message.datapod_id)?;
        let digest = payment::parse_digest("payment_tx_digest", &message.payment_tx_digest)?;
        if !crypto::check_buyer_public_key(&message.buyer_public_key) {
            return Err(Error::invalid_argument(
                "buyer_public_key",
                "not a usable X25519 public key (32 bytes, not of low order)",
            )
            .into());
        }
        if message.idempotency_key.len() > 255 {
            return Err(Error::invalid_argument("idempotency_key", "longer than 255 bytes").into());
        }
        let idempotency_key =
            (!message.idempotency_key.is_empty()).then_some(message.idempotency_key.as_str());
        let request = PurchaseRequest {
            datapod_id,
            digest: &digest,
            public_key: &message.buyer_public_key,
            idempotency_key,
        };
        if let Some(existing) = self.replay_purchase(buyer.id, &request).await? {
            return Ok(Response::new(pb::CreatePurchaseResponse {
                purchase: Some(existing),
            }));
        }
        self.verifier.check_enabled()?;
        let offer = queries::offer(&self.pool, datapod_id)
            .await?
            .filter(|o| o.published || o.seller_id == buyer.id)
            .ok_or_else(|| Error::not_found("datapod", datapod_id.to_string()))?;
        if offer.seller_id == buyer.id {
            return Err(Error::failed_precondition(
                "OWN_DATAPOD",
                datapod_id.to_string(),
                "you sell this datapod",
            )
            .into());
        }
        let Some(sender) = buyer.sui_address.as_deref() else {
            return Err(Error::failed_precondition(
                "NO_SUI_ADDRESS",
                buyer.id.to_string(),
                "prove the Sui address you pay from first (GetSuiAddressChallenge, ProveSuiAddress)",
            )
            .into());
        };
        let new = queries::NewPurchase {
            buyer_id: buyer.id,
            datapod_id,
            payment_tx_digest: &digest,
            price_mist: offer.price_mist,
            buyer_public_key: &message.buyer_public_key,
            idempotency_key,
            lease_seconds: PAYMENT_CHECK_LEASE_SECONDS,
        };
        let id = match self.insert_purchase(buyer.id, &new, &request).await? {
            Inserted::New(id) => id,
            Inserted::Replayed(existing) => {
                return Ok(Response::new(pb::CreatePurchaseResponse {
                    purchase: Some(*existing),
                }));
            }
        };
        let payment = Payment {
            digest: &digest,
            sender,
            price_mist: offer.price_mist,
        };
        match purchases::settle(&self.pool, self.verifier.as_ref(), id, &payment).await? {
            Settled::Paid => {}
            Settled::Rejected(error) => return Err(error.into()),
            Settled::Waiting(why) => {
                queries::reschedule_payment_check(&self.pool, id, purchases::RECHECK_SECONDS, &why)
                    .await?;
            }
        }
        Ok(Response::new(pb::CreatePurchaseResponse {
            purchase: Some(self.purchase_message(id).await?),
        }))
    }

    async fn get_purchase(
        &self,
        request: Request<pb::GetPurchaseRequest>,
    ) -> std::result::Result<Response<pb::GetPurchaseResponse>, Status> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        let row = queries::purchase(&self.pool, id)
            .await?
            .filter(|p| p.buyer_id == caller.id || p.seller_id == caller.id)
            .ok_or_else(|| Error::not_found("purchase", id.to_string()))?;
        Ok(Response::new(pb::GetPurchaseResponse {
            purchase: Some(convert::purchase(row)),
        }))
    }

    async fn list_purchase_history(
        &self,
        request: Request<pb::ListPurchaseHistoryRequest>,
    ) -> std::result::Result<Response<pb::ListPurchaseHistoryResponse>, Status> {
        let caller = self.caller(&request).await?;
        let message = request.into_inner();
        let as_seller = match pb::Role::try_from(message.role) {
            Ok(pb::Role::Unspecified | pb::Role::Buyer) => false,
            Ok(pb::Role::Seller) => true,
            Err(_) => return Err(Error::invalid_argument("role", "unknown value").into()),
        };
        let size = page_size("page_size", message.page_size, 20, 100)?;
        let scope = format!("market.ListPurchaseHistory?{}&{as_seller}", caller.id);
        let (rows, next_page_token) = self
            .page_tokens
            .page(
                &scope,
                &message.page_token,
                size,
                |after, limit| queries::purchases(&self.pool, caller.id, as_seller, after, limit),
                |p| (timestamp_text(p.created_at), p.id),
            )
            .await?;
        Ok(Response::new(pb::ListPurchaseHistoryResponse {
            purchases: rows.into_iter().map(convert::purchase).collect(),
            next_page_token,
        }))
    }

    async fn refund_purchase(
        &self,
        request: Request<pb::RefundPurchaseRequest>,
    ) -> std::result::Result<Response<pb::RefundPurchaseResponse>, Status> {
        let caller = self.caller(&request).await?;
        let message = request.into_inner();
        let id = parse_id("id", &message.id)?;
        if message.reason.chars().count() > 1000 {
            return Err(Error::invalid_argument("reason", "at most 1,000 characters").into());
        }
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        let purchase = queries::lock_purchase(&mut tx, id)
            .await?
            .filter(|p| p.buyer_id == caller.id || p.seller_id == caller.id)
            .ok_or_else(|| Error::not_found("purchase", id.to_string()))?;
        let is_seller = purchase.seller_id == caller.id;
        match purchase.status.as_str() {
            "processing" => {}
            "completed" if is_seller => {}
            "completed" => {
                return Err(Error::PermissionDenied(
                    "the dataset was delivered: only the seller can refund this purchase now"
                        .into(),
                )
                .into());
            }
            "pending_payment" => {
                return Err(Error::failed_precondition(
                    "PAYMENT_NOT_VERIFIED",
                    id.to_string(),
                    "the payment is not verified yet: nothing to refund",
                )
                .into());
            }
            _ => {
                return Err(Error::failed_precondition(
                    "ALREADY_REFUNDED",
                    id.to_string(),
                    "the purchase is already refunded",
                )
                .into());
            }
        }
        let reason = (!message.reason.is_empty()).then_some(message.reason.as_str());
        queries::refund_purchase(&mut tx, id, reason).await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::RefundPurchaseResponse {
            purchase: Some(self.purchase_message(id).await?),
        }))
    }

    type DownloadDatasetStream = ResponseStream<pb::DownloadDatasetResponse>;

    async fn download_dataset(
        &self,
        request: Request<pb::DownloadDatasetRequest>,
    ) -> std::result::Result<Response<Self::DownloadDatasetStream>, Status> {
        use pb::download_dataset_response::Part;
        let caller = self.caller(&request).await?;
        let id = parse_id("purchase_id", &request.get_ref().purchase_id)?;
        let delivery = queries::delivery(&self.pool, id)
            .await?
            .filter(|d| d.buyer_id == caller.id)
            .ok_or_else(|| Error::not_found("purchase", id.to_string()))?;
        let wrapped_key = match (delivery.status.as_str(), &delivery.decryption_key) {
            ("completed", Some(key)) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(key)
                    .map_err(|_| Error::DataLoss("a stored wrapped key is not base64".into()))?
            }
            (status, _) => {
                return Err(Error::failed_precondition(
                    "NOT_COMPLETED",
                    id.to_string(),
                    format!("the purchase is {status}, not completed: nothing to download"),
                )
                .into());
            }
        };
        let sha256 = Sha256::from_hex(&delivery.blob_id).ok_or_else(|| {
            Error::internal(anyhow::anyhow!("dataset blob id {:?}", delivery.blob_id))
        })?;
        let base_nonce = crypto::from_hex(&delivery.encryption_iv)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("dataset iv is not hex")))?;
        let (size, bytes) = self.blobs.get(&sha256).await?;
        queries::log_download(&self.pool, id, caller.id, delivery.datapod_id).await?;
        let header = pb::DownloadHeader {
            purchase: Some(self.purchase_message(id).await?),
            wrapped_key: wrapped_key.into(),
            base_nonce: base_nonce.into(),
            segment_size: crypto::SEGMENT as i32,
            ciphertext_size: size as i64,
            file_size: delivery.file_size,
            data_hash: delivery.data_hash,
            file_type: delivery.file_type,
        };
        let (tx, rx) = mpsc::channel(8);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let first = pb::DownloadDatasetResponse {
                part: Some(Part::Header(header)),
            };
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            let chunk = |bytes| pb::DownloadDatasetResponse {
                part: Some(Part::Chunk(bytes)),
            };
            blobs::send_chunks(&tx, bytes, DOWNLOAD_CHUNK, &shutdown, chunk).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn create_review(
        &self,
        request: Request<pb::CreateReviewRequest>,
    ) -> std::result::Result<Response<pb::CreateReviewResponse>, Status> {
        let caller = self.caller(&request).await?;
        let message = request.into_inner();
        let purchase_id = parse_id("purchase_id", &message.purchase_id)?;
        let rating = check_rating(message.rating)?;
        let comment = check_comment(&message.comment)?;
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        let purchase = queries::lock_purchase(&mut tx, purchase_id)
            .await?
            .filter(|p| p.buyer_id == caller.id)
            .ok_or_else(|| Error::not_found("purchase", purchase_id.to_string()))?;
        if purchase.status != "completed" {
            return Err(Error::failed_precondition(
                "NOT_COMPLETED",
                purchase_id.to_string(),
                format!(
                    "the purchase is {}: only completed purchases can be reviewed",
                    purchase.status
                ),
            )
            .into());
        }
        if queries::purchase_reviewed(&mut *tx, purchase_id).await? {
            return Err(Error::already_exists("review", purchase_id.to_string()).into());
        }
        let id = queries::insert_review(
            &mut *tx,
            purchase_id,
            caller.id,
            purchase.datapod_id,
            rating,
            comment,
        )
        .await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::CreateReviewResponse {
            review: Some(self.review_message(id).await?),
        }))
    }

    async fn update_review(
        &self,
        request: Request<pb::UpdateReviewRequest>,
    ) -> std::result::Result<Response<pb::UpdateReviewResponse>, Status> {
        let caller = self.caller(&request).await?;
        let message = request.into_inner();
        let id = parse_id("id", &message.id)?;
        let paths = message.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(Error::invalid_argument("update_mask", "name at least one field").into());
        }
        let (mut rating, mut comment) = (None, None);
        for path in &paths {
            match path.as_str() {
                "rating" => rating = Some(check_rating(message.rating)?),
                "comment" => comment = Some(check_comment(&message.comment)?),
                other => {
                    return Err(Error::invalid_argument(
                        "update_mask",
                        format!("{other:?} cannot be updated (rating, comment)"),
                    )
                    .into());
                }
            }
        }
        let review = queries::review(&self.pool, id)
            .await?
            .ok_or_else(|| Error::not_found("review", id.to_string()))?;
        if review.buyer_id != caller.id {
            return Err(
                Error::PermissionDenied("only its author may change a review".into()).into(),
            );
        }
        queries::update_review(&self.pool, id, rating, comment).await?;
        Ok(Response::new(pb::UpdateReviewResponse {
            review: Some(self.review_message(id).await?),
        }))
    }

    async fn list_reviews(
        &self,
        request: Request<pb::ListReviewsRequest>,
    ) -> std::result::Result<Response<pb::ListReviewsResponse>, Status> {
        let datapod = parse_id("datapod_id", &request.get_ref().datapod_id)?;
        self.visible_datapod(&request, datapod).await?;
        let message = request.into_inner();
        let size = page_size("page_size", message.page_size, 20, 100)?;
        let (rows, next_page_token) = self
            .page_tokens
            .page(
                &format!("market.ListReviews?{datapod}"),
                &message.page_token,
                size,
                |after, limit| queries::reviews(&self.pool, datapod, after, limit),
                |r| (timestamp_text(r.created_at), r.id),
            )
            .await?;
        Ok(Response::new(pb::ListReviewsResponse {
            reviews: rows.into_iter().map(convert::review).collect(),
            next_page_token,
        }))
    }

    async fn get_seller_analytics(
        &self,
        request: Request<pb::GetSellerAnalyticsRequest>,
    ) -> std::result::Result<Response<pb::GetSellerAnalyticsResponse>, Status> {
        let seller = self.caller(&request).await?;
        let a = queries::seller_analytics(&self.pool, seller.id).await?;
        let small = |n: i64| i32::try_from(n).unwrap_or(i32::MAX);
        Ok(Response::new(pb::GetSellerAnalyticsResponse {
            total_datapods: small(a.total_datapods),
            published_datapods: small(a.published_datapods),
            total_sales: small(a.total_sales),
            total_revenue_mist: a.total_revenue_mist,
            average_rating: a.average_rating,
            total_downloads: a.total_downloads,
            refunded_purchases: small(a.refunded_purchases),
            processing_purchases: small(a.processing_purchases),
        }))
    }

    async fn create_conversation(
        &self,
        request: Request<pb::CreateConversationRequest>,
    ) -> std::result::Result<Response<pb::CreateConversationResponse>, Status> {
        let caller = self.caller(&request).await?;
        let title = request.get_ref().title.trim();
        if title.chars().count() > 255 {
            return Err(Error::invalid_argument("title", "at most 255 characters").into());
        }
        if title.contains('\0') {
            return Err(Error::invalid_argument("title", "contains NUL").into());
        }
        let row = queries::insert_conversation(
            &self.pool,
            caller.id,
            (!title.is_empty()).then_some(title),
        )
        .await?;
        Ok(Response::new(pb::CreateConversationResponse {
            conversation: Some(convert::conversation(row, Vec::new())),
        }))
    }

    async fn list_conversations(
        &self,
        request: Request<pb::ListConversationsRequest>,
    ) -> std::result::Result<Response<pb::ListConversationsResponse>, Status> {
        let caller = self.caller(&request).await?;
        let message = request.into_inner();
        let size = page_size("page_size", message.page_size, 20, 100)?;
        let (rows, next_page_token) = self
            .page_tokens
            .page(
                &format!("market.ListConversations?{}", caller.id),
                &message.page_token,
                size,
                |after, limit| queries::conversations(&self.pool, caller.id, after, limit),
                |c| (timestamp_text(c.updated_at), c.id),
            )
            .await?;
        Ok(Response::new(pb::ListConversationsResponse {
            conversations: rows
                .into_iter()
                .map(|c| convert::conversation(c, Vec::new()))
                .collect(),
            next_page_token,
        }))
    }

    async fn get_conversation(
        &self,
        request: Request<pb::GetConversationRequest>,
    ) -> std::result::Result<Response<pb::GetConversationResponse>, Status> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        let row = self.own_conversation(&caller, id).await?;
        let messages = queries::messages(&self.pool, id, None).await?;
        Ok(Response::new(pb::GetConversationResponse {
            conversation: Some(convert::conversation(row, messages)),
        }))
    }

    type SendMessageStream = ResponseStream<pb::SendMessageResponse>;

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> std::result::Result<Response<Self::SendMessageStream>, Status> {
        use pb::send_message_response::Event;
        let caller = self.caller(&request).await?;
        let conversation = parse_id("conversation_id", &request.get_ref().conversation_id)?;
        let datapod = match request.get_ref().datapod_id.as_str() {
            "" => None,
            id => Some(parse_id("datapod_id", id)?),
        };
        let question = request.get_ref().content.trim().to_owned();
        let length = question.chars().count();
        if length == 0 || length > 8000 {
            return Err(Error::invalid_argument("content", "1 to 8,000 characters").into());
        }
        let conversation_row = self.own_conversation(&caller, conversation).await?;
        let context = match datapod {
            Some(id) => Some(self.visible_datapod(&request, id).await?),
            None => None,
        };
        let Some(chat) = self.chat.clone() else {
            return Err(Error::failed_precondition(
                "AI_CHAT_DISABLED",
                "market",
                "the AI chat is off: the server has no model endpoint (QUINTET_MARKET_AI_URL)",
            )
            .into());
        };
        let per_minute = i32::try_from(chat.per_minute).unwrap_or(i32::MAX);
        if !queries::take_ai_allowance(&self.pool, caller.id, per_minute).await? {
            return Err(Error::ResourceExhausted(format!(
                "at most {per_minute} AI messages per minute; wait and retry"
            ))
            .into());
        }
        let mut prompt = vec![serde_json::json!({"role": "system", "content": CHAT_SYSTEM_PROMPT})];
        if let Some(datapod) = &context {
            prompt.push(serde_json::json!({"role": "system", "content": datapod_context(datapod)}));
        }
        for earlier in queries::messages(&self.pool, conversation, Some(CHAT_HISTORY)).await? {
            prompt.push(serde_json::json!({"role": earlier.role, "content": earlier.content}));
        }
        prompt.push(serde_json::json!({"role": "user", "content": question}));
        let mut answer_stream = chat.ask(prompt).await?;
        let (tx, rx) = mpsc::channel(64);
        let (pool, shutdown) = (self.pool.clone(), self.shutdown.clone());
        let title: String = question.chars().take(60).collect();
        let stored_context = datapod.map(|id| serde_json::json!({"datapod_id": id.to_string()}));
        drop(conversation_row);
        tokio::spawn(async move {
            let mut answer = String::new();
            let mut usage = None;
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("the server is shutting down"))).await;
                        return;
                    }
                    // A client that leaves gets nothing stored: no question without its answer.
                    _ = tx.closed() => return,
                    next = answer_stream.next() => next,
                };
                match next {
                    Ok(Some(ChatEvent::Delta(text))) => {
                        answer.push_str(&text);
                        let event = pb::SendMessageResponse {
                            event: Some(Event::Delta(text)),
                        };
                        if tx.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(ChatEvent::Usage { prompt, completion })) => {
                        usage = Some((prompt, completion))
                    }
                    Ok(None) => break,
                    Err(error) => {
                        let _ = tx.send(Err(error.into())).await;
                        return;
                    }
                }
            }
            let exchange = queries::Exchange {
                conversation,
                question: &question,
                question_tokens: usage.map(|u| u.0),
                answer: &answer,
                answer_tokens: usage.map(|u| u.1),
                context: stored_context,
                title: &title,
            };
            let stored = async {
                let mut db = pool.begin().await?;
                let stored = queries::store_exchange(&mut db, &exchange).await?;
                db.commit().await?;
                Ok::<_, Error>(stored)
            }
            .await;
            let event = stored.map(|(question, answer, total_tokens)| pb::SendMessageResponse {
                event: Some(Event::Result(pb::SendMessageResult {
                    user_message: Some(convert::chat_message(question)),
                    assistant_message: Some(convert::chat_message(answer)),
                    total_tokens,
                })),
            });
            let _ = tx.send(event.map_err(Status::from)).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Where a datapod listing resumes: its sort key as PostgreSQL printed it, and the id.
fn sort_position(row: &queries::DatapodRow) -> (String, Uuid) {
    (row.sort_key.clone().unwrap_or_default(), row.id)
}

impl MarketService {
    /// Removes a stored dataset blob if no dataset points at it, holding its lock.
    async fn release_blob(&self, sha256: &Sha256) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        blobs::lock(&mut tx, DATASET_LOCKS, sha256).await?;
        let unused = !queries::blob_in_use(&mut *tx, sha256).await?;
        if unused {
            self.blobs.delete(sha256).await?;
        }
        tx.commit().await?;
        Ok(unused)
    }

    /// Removes expired sessions, datasets that never became a datapod within
    /// [`UNUSED_DATASET_DAYS`], and blobs no dataset points at that are older than `grace`
    /// (uploads cut off after their bytes were stored).
    pub async fn collect_garbage(&self, grace: std::time::Duration) -> Result<usize> {
        let cutoff = std::time::SystemTime::now() - grace;
        let mut removed = queries::delete_expired_sessions(&self.pool).await? as usize;
        removed += queries::expire_unused_datasets(&self.pool, UNUSED_DATASET_DAYS)
            .await?
            .len();
        for (sha256, written) in self.blobs.list().await? {
            if written >= cutoff {
                continue;
            }
            match self.release_blob(&sha256).await {
                Ok(true) => removed += 1,
                Ok(false) => {}
                // One blob that cannot go now must not stop the others.
                Err(error) => {
                    tracing::warn!(%error, blob = %sha256, "cannot collect a dataset blob")
                }
            }
        }
        Ok(removed)
    }
}

fn check_rating(rating: i32) -> Result<i32> {
    if !(1..=5).contains(&rating) {
        return Err(Error::invalid_argument("rating", "1 to 5"));
    }
    Ok(rating)
}

fn check_comment(comment: &str) -> Result<Option<&str>> {
    if comment.chars().count() > 5000 {
        return Err(Error::invalid_argument(
            "comment",
            "at most 5,000 characters",
        ));
    }
    Ok((!comment.is_empty()).then_some(comment))
}

/// A time as PostgreSQL prints `timestamptz` text, for page tokens read back as `timestamptz`.
fn timestamp_text(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// What the model is told about a datapod a question is about.
fn datapod_context(datapod: &queries::DatapodRow) -> String {
    let json = |v: &Option<sqlx::types::Json<serde_json::Value>>| {
        v.as_ref().map(|j| j.0.to_string()).unwrap_or_default()
    };
    let mut sample = json(&datapod.sample_data);
    if sample.len() > 16 * 1024 {
        let mut cut = 16 * 1024;
        while !sample.is_char_boundary(cut) {
            cut -= 1;
        }
        sample.truncate(cut);
    }
    format!(
        "The user asks about this dataset.\nTitle: {}\nDescription: {}\nCategory: {}\n\
         Price: {} MIST\nFile type: {}\nSchema: {}\nSample rows: {}",
        datapod.title,
        datapod.description.as_deref().unwrap_or(""),
        datapod.category.as_deref().unwrap_or(""),
        datapod.price_mist,
        datapod.file_type.as_deref().unwrap_or(""),
        json(&datapod.schema),
        sample,
    )
}

/// What CreatePurchase was asked, to compare with what an idempotency key created.
struct PurchaseRequest<'a> {
    datapod_id: Uuid,
    digest: &'a str,
    public_key: &'a [u8],
    idempotency_key: Option<&'a str>,
}

enum Inserted {
    New(Uuid),
    Replayed(Box<pb::Purchase>),
}

impl MarketService {
    async fn purchase_message(&self, id: Uuid) -> Result<pb::Purchase> {
        queries::purchase(&self.pool, id)
            .await?
            .map(convert::purchase)
            .ok_or_else(|| Error::not_found("purchase", id.to_string()))
    }

    async fn review_message(&self, id: Uuid) -> Result<pb::Review> {
        queries::review(&self.pool, id)
            .await?
            .map(convert::review)
            .ok_or_else(|| Error::not_found("review", id.to_string()))
    }

    /// The purchase an idempotency key already made, if the request is the same.
    async fn replay_purchase(
        &self,
        buyer: Uuid,
        request: &PurchaseRequest<'_>,
    ) -> Result<Option<pb::Purchase>> {
        let Some(key) = request.idempotency_key else {
            return Ok(None);
        };
        let Some(existing) = queries::purchase_by_idempotency_key(&self.pool, buyer, key).await?
        else {
            return Ok(None);
        };
        if existing.datapod_id != request.datapod_id
            || existing.payment_tx_digest != request.digest
            || existing.buyer_public_key != request.public_key
        {
            return Err(Error::failed_precondition(
                "IDEMPOTENCY_KEY_REUSED",
                key,
                "this idempotency key was used for a different purchase",
            ));
        }
        Ok(Some(convert::purchase(existing)))
    }

    /// Records a purchase awaiting its payment check. A buyer's own unverified purchase of the
    /// same datapod is replaced (a mistyped digest must not block them until it expires); a
    /// concurrent twin with the same idempotency key is replayed.
    async fn insert_purchase(
        &self,
        buyer: Uuid,
        new: &queries::NewPurchase<'_>,
        request: &PurchaseRequest<'_>,
    ) -> Result<Inserted> {
        let mut replaced = false;
        loop {
            let error = match queries::insert_purchase(&self.pool, new).await {
                Ok(id) => return Ok(Inserted::New(id)),
                Err(error) => error,
            };
            let Error::AlreadyExists { name, .. } = &error else {
                return Err(error);
            };
            if let Some(existing) = self.replay_purchase(buyer, request).await? {
                return Ok(Inserted::Replayed(Box::new(existing)));
            }
            match name.as_str() {
                "purchases_payment_tx_digest_key" => {
                    return Err(Error::already_exists("payment", request.digest));
                }
                "unique_buyer_datapod"
                    if !replaced
                        && queries::delete_pending_purchase_of(
                            &self.pool,
                            buyer,
                            request.datapod_id,
                        )
                        .await? =>
                {
                    replaced = true;
                }
                "unique_buyer_datapod" => {
                    return Err(Error::failed_precondition(
                        "ALREADY_PURCHASED",
                        request.datapod_id.to_string(),
                        "you already bought this datapod",
                    ));
                }
                _ => return Err(error),
            }
        }
    }

    /// The caller's conversation; NOT_FOUND for anyone else's.
    async fn own_conversation(
        &self,
        caller: &UserRow,
        id: Uuid,
    ) -> Result<queries::ConversationRow> {
        queries::conversation(&self.pool, id)
            .await?
            .filter(|c| c.user_id == caller.id)
            .ok_or_else(|| Error::not_found("conversation", id.to_string()))
    }

    /// A datapod the caller may see: published, or their own. Unpublished datapods exist only
    /// for their seller; a missing or dead session is just not the seller (answering otherwise
    /// would tell that the datapod exists).
    async fn visible_datapod<T>(
        &self,
        request: &Request<T>,
        id: Uuid,
    ) -> Result<queries::DatapodRow> {
        let row = queries::datapod(&self.pool, id)
            .await?
            .ok_or_else(|| Error::not_found("datapod", id.to_string()))?;
        if !row.published {
            let visible = match self.caller(request).await {
                Ok(caller) => caller.id == row.seller_id,
                Err(Error::Unauthenticated(_)) => false,
                Err(other) => return Err(other),
            };
            if !visible {
                return Err(Error::not_found("datapod", id.to_string()));
            }
        }
        Ok(row)
    }
}
