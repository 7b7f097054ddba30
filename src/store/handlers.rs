//! gRPC handlers of the store: authenticate, stream bytes through the storages while hashing,
//! commit records in one transaction, stream them back verified.

use std::{
    collections::HashSet,
    pin::Pin,
    task::Poll,
    time::{Duration, SystemTime},
};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::{
    convert,
    queries::{self, ContentRow, MANIFESTS_CHANNEL, ManifestFilter, NewContent},
};
use crate::{
    auth::AdminAuth,
    blobs::{self, BlobStore, ByteStream, Sha256},
    error::{Error, Result},
    notify::{self, Notifier},
    page_token::{PageTokens, page_size},
    proto::{
        offset_date_time,
        quintet::store::v1::{self as pb, store_service_server},
    },
};

/// Lakery's name for values kept in the database itself.
pub const INLINE: &str = "lakery.json_storage_data@v1";
/// Lakery's name for a local directory.
pub const FILE: &str = "lakery.file@v1";
/// Lakery's name for an S3 bucket.
pub const S3: &str = "lakery.aws.s3@v1";
/// The [`blobs::lock`] scope of one storage's bytes: puts, deletes and collection.
fn byte_locks(storage: &str) -> String {
    format!("store.bytes.{storage}")
}

/// Longest grace period CollectGarbage takes (ten years).
const MAX_GRACE_SECONDS: i64 = 10 * 366 * 24 * 3600;
/// Size of the byte messages sent to clients.
const SEND_CHUNK: usize = 1024 * 1024;

#[derive(Clone)]
pub struct StoreService {
    pub pool: PgPool,
    pub admin: AdminAuth,
    pub file: BlobStore,
    pub s3: Option<BlobStore>,
    pub inline_max_bytes: u64,
    pub max_content_bytes: u64,
    pub page_tokens: PageTokens,
    pub notifier: Notifier,
    pub shutdown: CancellationToken,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send>>;
type Upload = Pin<Box<futures::stream::Peekable<Streaming<pb::PutObjectRequest>>>>;

fn parse_uuid(field: &str, text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|_| Error::invalid_argument(field, "not a UUID"))
}

/// Tags as stored: the client's `Struct` as a JSON object, at most 64 KiB of it.
pub fn tags_of(field: &str, tags: Option<prost_types::Struct>) -> Result<Value> {
    let value = crate::proto::struct_to_json(tags);
    if value.to_string().len() > 64 * 1024 {
        return Err(Error::invalid_argument(field, "larger than 64 KiB"));
    }
    if crate::proto::json_has_nul(&value) {
        return Err(Error::invalid_argument(field, "contains NUL"));
    }
    Ok(value)
}

/// The first message of an upload, checked: its class id, unpacker name and tags.
pub fn check_manifest_header(manifest: pb::ManifestHeader) -> Result<(Uuid, String, Value)> {
    let class_id = parse_uuid("manifest.class_id", &manifest.class_id)?;
    if manifest.unpacker_name.is_empty() || manifest.unpacker_name.len() > 256 {
        return Err(Error::invalid_argument(
            "manifest.unpacker_name",
            "must be 1 to 256 characters",
        ));
    }
    let tags = tags_of("manifest.tags", manifest.tags)?;
    Ok((class_id, manifest.unpacker_name, tags))
}

/// What can be checked of the `index`th content header before its storage is chosen: its name
/// and type, and its serializer type and expected SHA-256, returned parsed.
pub fn check_content_header(
    index: usize,
    header: &pb::ContentHeader,
) -> Result<(&'static str, Option<Sha256>)> {
    let field = |name: &str| format!("contents[{index}].{name}");
    if header.content_name.is_empty() || header.content_name.len() > 1024 {
        return Err(Error::invalid_argument(
            field("content_name"),
            "must be 1 to 1024 characters",
        ));
    }
    if header.content_type.is_empty() || header.content_type.len() > 256 {
        return Err(Error::invalid_argument(
            field("content_type"),
            "must be 1 to 256 characters",
        ));
    }
    let serializer_type = match pb::SerializerType::try_from(header.serializer_type) {
        Ok(pb::SerializerType::Value) => "value",
        Ok(pb::SerializerType::Stream) => "stream",
        _ => {
            return Err(Error::invalid_argument(
                field("serializer_type"),
                "must be VALUE or STREAM",
            ));
        }
    };
    let expected = match header.expected_sha256.as_str() {
        "" => None,
        hex => Some(Sha256::from_hex(hex).ok_or_else(|| {
            Error::invalid_argument(field("expected_sha256"), "must be 64 hex digits")
        })?),
    };
    Ok((serializer_type, expected))
}

fn time_of(field: &str, t: Option<prost_types::Timestamp>) -> Result<Option<time::OffsetDateTime>> {
    t.map(|t| offset_date_time(field, t)).transpose()
}

fn filter_of(field: &str, filter: Option<pb::ManifestFilter>) -> Result<ManifestFilter> {
    let filter = filter.unwrap_or_default();
    Ok(ManifestFilter {
        class_id: match filter.class_id.as_str() {
            "" => None,
            id => Some(parse_uuid(&format!("{field}.class_id"), id)?),
        },
        tags: filter
            .tags
            .map(|t| tags_of(&format!("{field}.tags"), Some(t)))
            .transpose()?,
        created_after: time_of(&format!("{field}.created_after"), filter.created_after)?,
        created_before: time_of(&format!("{field}.created_before"), filter.created_before)?,
    })
}

/// The chunks that follow a content header, up to the next header or the end of the upload.
fn content_chunks(upload: &mut Upload) -> impl Stream<Item = Result<Bytes>> + Send + '_ {
    futures::stream::poll_fn(move |cx| {
        match upload.as_mut().poll_peek(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Ok(pb::PutObjectRequest {
                part: Some(pb::put_object_request::Part::Chunk(_)),
            })))
            | Poll::Ready(Some(Err(_))) => {}
            Poll::Ready(Some(Ok(_))) => return Poll::Ready(None),
        }
        match upload.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(pb::PutObjectRequest {
                part: Some(pb::put_object_request::Part::Chunk(bytes)),
            }))) => Poll::Ready(Some(Ok(bytes))),
            Poll::Ready(Some(Err(status))) => {
                Poll::Ready(Some(Err(Error::from_request_stream(&status))))
            }
            _ => Poll::Ready(None),
        }
    })
}

/// A content whose bytes are stored, waiting for the commit.
struct Staged {
    record: NewContent,
    inline: Option<Bytes>,
}

impl StoreService {
    fn storage(&self, name: &str) -> Option<(&'static str, Option<&BlobStore>)> {
        match name {
            "" | FILE => Some((FILE, Some(&self.file))),
            INLINE => Some((INLINE, None)),
            S3 => self.s3.as_ref().map(|s3| (S3, Some(s3))),
            _ => None,
        }
    }

    async fn stage(
        &self,
        index: usize,
        header: pb::ContentHeader,
        upload: &mut Upload,
    ) -> Result<Staged> {
        let field = |name: &str| format!("contents[{index}].{name}");
        let (serializer_type, expected) = check_content_header(index, &header)?;
        let (storage_name, blobs) = self.storage(&header.storage_name).ok_or_else(|| {
            Error::invalid_argument(
                field("storage_name"),
                format!(
                    "unknown storage {:?}; this server has {FILE}, {INLINE}{}",
                    header.storage_name,
                    if self.s3.is_some() {
                        format!(", {S3}")
                    } else {
                        String::new()
                    }
                ),
            )
        })?;
        let tags = tags_of(&field("tags"), header.tags)?;
        let (size, sha256, inline, storage_data) = match blobs {
            Some(blobs) => {
                let info = blobs
                    .put(
                        content_chunks(upload),
                        self.max_content_bytes,
                        &field("chunk"),
                    )
                    .await?;
                let hex = info.sha256.to_hex();
                (
                    info.size,
                    info.sha256,
                    None,
                    json!({"key": format!("sha256/{}/{hex}", &hex[..2])}),
                )
            }
            None => {
                let mut data = BytesMut::new();
                let mut chunks = std::pin::pin!(content_chunks(upload));
                while let Some(chunk) = chunks.next().await {
                    let chunk = chunk?;
                    if (data.len() + chunk.len()) as u64 > self.inline_max_bytes {
                        return Err(Error::invalid_argument(
                            field("chunk"),
                            format!(
                                "{INLINE} holds at most {} bytes; use {FILE}",
                                self.inline_max_bytes
                            ),
                        ));
                    }
                    data.extend_from_slice(&chunk);
                }
                let sha256 = Sha256::of(&data);
                (
                    data.len() as u64,
                    sha256,
                    Some(data.freeze()),
                    json!({"sha256": sha256.to_hex()}),
                )
            }
        };
        if let Some(expected) = expected
            && expected != sha256
        {
            return Err(Error::invalid_argument(
                field("expected_sha256"),
                format!("the bytes' SHA-256 is {sha256}"),
            ));
        }
        Ok(Staged {
            record: NewContent {
                content_name: header.content_name,
                content_type: header.content_type,
                content_encoding: header.content_encoding,
                size,
                sha256,
                serializer_name: header.serializer_name,
                serializer_type,
                storage_name,
                storage_data,
                tags,
            },
            inline,
        })
    }

    /// The bytes of a content, verified against its hash as they stream.
    async fn open(&self, content: &ContentRow) -> Result<ByteStream> {
        let sha256 = Sha256::from_hex(&content.content_hash).ok_or_else(|| {
            Error::DataLoss(format!("content {} has a malformed hash", content.id))
        })?;
        match self.storage(&content.storage_name) {
            Some((INLINE, _)) => {
                let data = queries::inline_value(&self.pool, &content.content_hash).await?;
                if Sha256::of(&data) != sha256 {
                    return Err(Error::DataLoss(format!(
                        "content {}: stored bytes do not match their SHA-256",
                        content.id
                    )));
                }
                Ok(Box::pin(futures::stream::iter([Ok(Bytes::from(data))])))
            }
            Some((_, Some(blobs))) => match blobs.get(&sha256).await {
                Ok((_, stream)) => Ok(stream),
                Err(Error::NotFound { .. }) => Err(Error::DataLoss(format!(
                    "content {}: its bytes are missing",
                    content.id
                ))),
                Err(e) => Err(e),
            },
            _ => Err(Error::Unavailable(format!(
                "storage {} is not configured on this server",
                content.storage_name
            ))),
        }
    }

    /// Removes bytes nothing references any more, each under its lock (see [`blobs::lock`]).
    async fn release(&self, storage: &str, sha256: &str) -> Result<bool> {
        let Some(sha) = Sha256::from_hex(sha256) else {
            return Ok(false);
        };
        let mut tx = self.pool.begin().await?;
        blobs::lock(&mut tx, &byte_locks(storage), &sha).await?;
        if queries::bytes_referenced(&mut *tx, storage, sha256).await? {
            return Ok(false);
        }
        match self.storage(storage) {
            Some((INLINE, _)) => queries::delete_inline(&mut tx, sha256).await?,
            Some((_, Some(blobs))) => blobs.delete(&sha).await?,
            _ => return Ok(false),
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Removes unreferenced bytes older than `grace` from every storage.
    pub async fn collect_garbage(&self, grace: Duration) -> Result<i64> {
        let cutoff = SystemTime::now() - grace;
        let mut removed = 0;
        let stores: Vec<(&str, &BlobStore)> = [(FILE, Some(&self.file)), (S3, self.s3.as_ref())]
            .into_iter()
            .filter_map(|(n, s)| s.map(|s| (n, s)))
            .collect();
        for (name, blobs) in stores {
            for (sha, written) in blobs.list().await? {
                if written < cutoff && self.release(name, &sha.to_hex()).await? {
                    removed += 1;
                }
            }
        }
        for sha in
            queries::unreferenced_inline(&self.pool, time::OffsetDateTime::from(cutoff)).await?
        {
            if self.release(INLINE, &sha).await? {
                removed += 1;
            }
        }
        removed += self.file.remove_stale_uploads(grace).await? as i64;
        Ok(removed)
    }
}

/// Sends `bytes` in messages of at most SEND_CHUNK, skipping the first `skip` bytes and stopping
/// after `take` (the rest is still read, so the hash is checked). Returns false once the client
/// is gone.
async fn send_bytes<T>(
    tx: &mpsc::Sender<std::result::Result<T, Status>>,
    mut bytes: ByteStream,
    mut skip: u64,
    mut take: u64,
    wrap: impl Fn(Bytes) -> T,
    shutdown: &CancellationToken,
) -> bool {
    let mut pending = BytesMut::new();
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("the server is shutting down"))).await;
                return false;
            }
            next = bytes.next() => next,
        };
        match next {
            Some(Ok(mut chunk)) => {
                let dropped = skip.min(chunk.len() as u64);
                chunk = chunk.slice(dropped as usize..);
                skip -= dropped;
                let kept = take.min(chunk.len() as u64);
                take -= kept;
                let mut chunk = chunk.slice(..kept as usize);
                // Whole messages straight from the read buffer, without a copy.
                while pending.is_empty() && chunk.len() >= SEND_CHUNK {
                    if tx.send(Ok(wrap(chunk.split_to(SEND_CHUNK)))).await.is_err() {
                        return false;
                    }
                }
                pending.extend_from_slice(&chunk);
                while pending.len() >= SEND_CHUNK {
                    if tx
                        .send(Ok(wrap(pending.split_to(SEND_CHUNK).freeze())))
                        .await
                        .is_err()
                    {
                        return false;
                    }
                }
            }
            Some(Err(error)) => {
                let _ = tx.send(Err(error.into())).await;
                return false;
            }
            None => {
                if !pending.is_empty() && tx.send(Ok(wrap(pending.freeze()))).await.is_err() {
                    return false;
                }
                return true;
            }
        }
    }
}

#[tonic::async_trait]
impl store_service_server::StoreService for StoreService {
    async fn put_object(
        &self,
        request: Request<Streaming<pb::PutObjectRequest>>,
    ) -> std::result::Result<Response<pb::PutObjectResponse>, Status> {
        use pb::put_object_request::Part;
        self.admin.require_admin(&request).await?;
        let mut upload: Upload = Box::pin(request.into_inner().peekable());
        let manifest = match upload.next().await {
            Some(Ok(pb::PutObjectRequest {
                part: Some(Part::Manifest(m)),
            })) => m,
            Some(Err(status)) => return Err(status),
            _ => {
                return Err(Error::invalid_argument(
                    "manifest",
                    "the first message must be the manifest header",
                )
                .into());
            }
        };
        let (class_id, unpacker_name, tags) = check_manifest_header(manifest)?;

        let mut staged: Vec<Staged> = Vec::new();
        let mut names = HashSet::new();
        while let Some(message) = upload.next().await {
            let index = staged.len();
            match message?.part {
                Some(Part::Content(header)) => {
                    if !names.insert(header.content_name.clone()) {
                        return Err(Error::invalid_argument(
                            format!("contents[{index}].content_name"),
                            format!("{:?} is already in this object", header.content_name),
                        )
                        .into());
                    }
                    staged.push(self.stage(index, header, &mut upload).await?);
                }
                Some(Part::Manifest(_)) => {
                    return Err(Error::invalid_argument(
                        "manifest",
                        "only the first message may be the manifest header",
                    )
                    .into());
                }
                Some(Part::Chunk(_)) | None => {
                    return Err(Error::invalid_argument(
                        "chunk",
                        "bytes must follow a content header",
                    )
                    .into());
                }
            }
        }

        // Every byte is stored and hashed: commit the records at once. Holding each blob's lock,
        // check it is still there (a concurrent delete of the last reference may have removed it).
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        let mut keys: Vec<(&str, Sha256)> = staged
            .iter()
            .map(|s| (s.record.storage_name, s.record.sha256))
            .collect();
        keys.sort();
        keys.dedup();
        for (storage, sha) in &keys {
            blobs::lock(&mut tx, &byte_locks(storage), sha).await?;
        }
        for content in &staged {
            match (&content.inline, self.storage(content.record.storage_name)) {
                (Some(data), _) => {
                    queries::insert_inline(&mut tx, &content.record.sha256, data).await?
                }
                (None, Some((_, Some(blobs)))) if !blobs.exists(&content.record.sha256).await? => {
                    return Err(Error::Aborted(
                        "stored bytes were collected concurrently; put the object again".to_owned(),
                    )
                    .into());
                }
                _ => {}
            }
        }
        let records: Vec<NewContent> = staged.into_iter().map(|s| s.record).collect();
        let (manifest, contents) =
            queries::insert_object(&mut tx, class_id, &unpacker_name, &tags, &records).await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::PutObjectResponse {
            manifest: Some(convert::manifest(&manifest)),
            contents: contents.iter().map(convert::content).collect(),
        }))
    }

    type GetObjectStream = ResponseStream<pb::GetObjectResponse>;

    async fn get_object(
        &self,
        request: Request<pb::GetObjectRequest>,
    ) -> std::result::Result<Response<Self::GetObjectStream>, Status> {
        use pb::get_object_response::Part;
        self.admin.require_admin(&request).await?;
        let id = parse_uuid("manifest_id", &request.get_ref().manifest_id)?;
        let manifest = queries::manifest(&self.pool, id).await?;
        let contents = queries::contents(&self.pool, id).await?;
        let (tx, rx) = mpsc::channel(4);
        let service = self.clone();
        tokio::spawn(async move {
            if tx
                .send(Ok(pb::GetObjectResponse {
                    part: Some(Part::Manifest(convert::manifest(&manifest))),
                }))
                .await
                .is_err()
            {
                return;
            }
            for content in &contents {
                if tx
                    .send(Ok(pb::GetObjectResponse {
                        part: Some(Part::Content(convert::content(content))),
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
                let bytes = match service.open(content).await {
                    Ok(bytes) => bytes,
                    Err(error) => {
                        let _ = tx.send(Err(error.into())).await;
                        return;
                    }
                };
                let wrap = |b| pb::GetObjectResponse {
                    part: Some(Part::Chunk(b)),
                };
                if !send_bytes(&tx, bytes, 0, u64::MAX, wrap, &service.shutdown).await {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type GetContentStream = ResponseStream<pb::GetContentResponse>;

    async fn get_content(
        &self,
        request: Request<pb::GetContentRequest>,
    ) -> std::result::Result<Response<Self::GetContentStream>, Status> {
        use pb::get_content_response::Part;
        self.admin.require_admin(&request).await?;
        let message = request.get_ref();
        let id = parse_uuid("manifest_id", &message.manifest_id)?;
        if message.offset < 0 {
            return Err(Error::invalid_argument("offset", "must not be negative").into());
        }
        if message.length < 0 {
            return Err(Error::invalid_argument("length", "must not be negative").into());
        }
        queries::manifest(&self.pool, id).await?;
        let content = queries::content(&self.pool, id, &message.content_name).await?;
        if message.offset > content.content_size {
            return Err(Error::invalid_argument(
                "offset",
                format!("beyond the content's {} bytes", content.content_size),
            )
            .into());
        }
        let take = if message.length == 0 {
            u64::MAX
        } else {
            message.length as u64
        };
        let skip = message.offset as u64;
        let bytes = self.open(&content).await?;
        let (tx, rx) = mpsc::channel(4);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            if tx
                .send(Ok(pb::GetContentResponse {
                    part: Some(Part::Content(convert::content(&content))),
                }))
                .await
                .is_err()
            {
                return;
            }
            let wrap = |b| pb::GetContentResponse {
                part: Some(Part::Chunk(b)),
            };
            send_bytes(&tx, bytes, skip, take, wrap, &shutdown).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_manifest(
        &self,
        request: Request<pb::GetManifestRequest>,
    ) -> std::result::Result<Response<pb::GetManifestResponse>, Status> {
        self.admin.require_admin(&request).await?;
        let id = parse_uuid("manifest_id", &request.get_ref().manifest_id)?;
        let manifest = queries::manifest(&self.pool, id).await?;
        let contents = queries::contents(&self.pool, id).await?;
        Ok(Response::new(pb::GetManifestResponse {
            manifest: Some(convert::manifest(&manifest)),
            contents: contents.iter().map(convert::content).collect(),
        }))
    }

    async fn list_manifests(
        &self,
        request: Request<pb::ListManifestsRequest>,
    ) -> std::result::Result<Response<pb::ListManifestsResponse>, Status> {
        self.admin.require_admin(&request).await?;
        let message = request.into_inner();
        let size = page_size("page_size", message.page_size, 100, 1000)?;
        let scope = format!("store.ListManifests?{:?}", message.filter);
        let filter = filter_of("filter", message.filter)?;
        let after: Option<(time::OffsetDateTime, Uuid)> =
            self.page_tokens.decode(&scope, &message.page_token)?;
        let mut rows = queries::list_manifests(&self.pool, &filter, after, size + 1).await?;
        let next_page_token = self
            .page_tokens
            .next_page(&scope, &mut rows, size, |last| (last.created_at, last.id));
        Ok(Response::new(pb::ListManifestsResponse {
            manifests: rows.iter().map(convert::manifest).collect(),
            next_page_token,
        }))
    }

    async fn list_contents(
        &self,
        request: Request<pb::ListContentsRequest>,
    ) -> std::result::Result<Response<pb::ListContentsResponse>, Status> {
        self.admin.require_admin(&request).await?;
        let id = parse_uuid("manifest_id", &request.get_ref().manifest_id)?;
        queries::manifest(&self.pool, id).await?;
        let contents = queries::contents(&self.pool, id).await?;
        Ok(Response::new(pb::ListContentsResponse {
            contents: contents.iter().map(convert::content).collect(),
        }))
    }

    async fn delete_object(
        &self,
        request: Request<pb::DeleteObjectRequest>,
    ) -> std::result::Result<Response<pb::DeleteObjectResponse>, Status> {
        self.admin.require_admin(&request).await?;
        let id = parse_uuid("manifest_id", &request.get_ref().manifest_id)?;
        let mut pointed = queries::delete_object(&self.pool, id).await?;
        pointed.sort();
        pointed.dedup();
        for (storage, sha) in pointed {
            self.release(&storage, &sha).await?;
        }
        Ok(Response::new(pb::DeleteObjectResponse {}))
    }

    type WatchManifestsStream = ResponseStream<pb::WatchManifestsResponse>;

    async fn watch_manifests(
        &self,
        request: Request<pb::WatchManifestsRequest>,
    ) -> std::result::Result<Response<Self::WatchManifestsStream>, Status> {
        self.admin.require_admin(&request).await?;
        let message = request.into_inner();
        if message.after_seq < 0 {
            return Err(Error::invalid_argument("after_seq", "must not be negative").into());
        }
        let filter = filter_of("filter", message.filter)?;
        let pool = self.pool.clone();
        let stream = notify::follow(
            &self.notifier,
            MANIFESTS_CHANNEL,
            self.shutdown.clone(),
            message.after_seq,
            notify::STALL,
            move |cursor, limit| {
                let (pool, filter) = (pool.clone(), filter.clone());
                async move {
                    let rows = queries::manifests_after(&pool, &filter, cursor, limit).await?;
                    Ok(rows
                        .iter()
                        .map(|row| {
                            let message = pb::WatchManifestsResponse {
                                manifest: Some(convert::manifest(row)),
                            };
                            (row.seq, message)
                        })
                        .collect())
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn collect_garbage(
        &self,
        request: Request<pb::CollectGarbageRequest>,
    ) -> std::result::Result<Response<pb::CollectGarbageResponse>, Status> {
        self.admin.require_admin(&request).await?;
        let grace = match request.get_ref().grace_seconds {
            0 => 3600,
            n if !(0..=MAX_GRACE_SECONDS).contains(&n) => {
                return Err(Error::invalid_argument(
                    "grace_seconds",
                    format!("must be 0 to {MAX_GRACE_SECONDS}"),
                )
                .into());
            }
            n => n as u64,
        };
        let removed = self.collect_garbage(Duration::from_secs(grace)).await?;
        Ok(Response::new(pb::CollectGarbageResponse { removed }))
    }
}
