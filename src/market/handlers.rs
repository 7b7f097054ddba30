//! gRPC handlers of the market: authenticate the session, parse the request into domain values,
//! call the queries, convert back.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use ring::digest;
use sqlx::PgPool;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::{
    convert,
    crypto::{self, Encryptor, MasterKey},
    infer::{self, Inference},
    oidc::OidcVerifier,
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

#[derive(Clone)]
pub struct MarketService {
    pub pool: PgPool,
    pub blobs: BlobStore,
    pub oidc: Arc<OidcVerifier>,
    pub master_key: MasterKey,
    pub page_tokens: PageTokens,
    pub max_dataset_bytes: u64,
}

fn parse_id(field: &str, text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|_| Error::invalid_argument(field, "not a UUID"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_title(title: &str) -> Result<()> {
    let length = title.chars().count();
    if length == 0 || length > 255 {
        return Err(Error::invalid_argument("title", "1 to 255 characters"));
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
    Ok(())
}

fn check_category(category: &str) -> Result<Option<&str>> {
    if category.chars().count() > 50 {
        return Err(Error::invalid_argument("category", "at most 50 characters"));
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
        let salt = hex(&crypto::random_key());
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
            (hex(hash.as_ref()), state.size, state.inference.take())
        };
        let (schema, sample) = inference.map(Inference::finish).unwrap_or((None, None));
        let id = Uuid::now_v7();
        let row = DatasetRow {
            id,
            seller_id: seller.id,
            blob_id: stored.sha256.to_hex(),
            storage_size: stored.size as i64,
            wrapped_key: self.master_key.wrap(&key, id.as_bytes()),
            encryption_key_hash: hex(digest::digest(&digest::SHA256, &key).as_ref()),
            encryption_iv: hex(&nonce),
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
        let row = queries::datapod(&self.pool, id)
            .await?
            .ok_or_else(|| Error::not_found("datapod", id.to_string()))?;
        // Unpublished datapods exist only for their seller; a missing or dead session is just
        // not the seller (answering otherwise would tell that the datapod exists).
        if !row.published {
            let visible = match self.caller(&request).await {
                Ok(caller) => caller.id == row.seller_id,
                Err(Error::Unauthenticated(_)) => false,
                Err(other) => return Err(other.into()),
            };
            if !visible {
                return Err(Error::not_found("datapod", id.to_string()).into());
            }
        }
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
        let scope = format!("market.SearchDatapods?{search:?}&{sort:?}");
        let after: Option<(String, Uuid)> = self.page_tokens.decode(&scope, &message.page_token)?;
        let mut rows = queries::search(&self.pool, &search, sort, after, size + 1).await?;
        let next_page_token = self
            .page_tokens
            .next_page(&scope, &mut rows, size, sort_position);
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
        let scope = format!("market.ListMyDatapods?{}", seller.id);
        let after: Option<(String, Uuid)> = self.page_tokens.decode(&scope, &message.page_token)?;
        let mut rows = queries::seller_datapods(&self.pool, seller.id, after, size + 1).await?;
        let next_page_token = self
            .page_tokens
            .next_page(&scope, &mut rows, size, sort_position);
        Ok(Response::new(pb::ListMyDatapodsResponse {
            datapods: rows.into_iter().map(convert::datapod_summary).collect(),
            next_page_token,
        }))
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
