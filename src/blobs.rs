//! Content-addressed blob storage shared by every service, over the `object_store` crate: a local
//! directory under the data directory by default, or any S3-compatible bucket by URL.
//!
//! Bytes live at `sha256/<first two hex digits>/<64 hex digits>`. A put streams the bytes while
//! hashing them with SHA-256. Blobs up to [`SMALL_BLOB`] are hashed in memory and written straight
//! to their address in one atomic put; larger ones go to `tmp/<uuid>` as a multipart upload and
//! are moved to their address only once complete, so a reader never sees a partial blob and an
//! interrupted upload leaves at most a temporary object, which [`BlobStore::remove_stale_uploads`]
//! removes. Identical contents are stored once. A get re-hashes the bytes as it streams them and
//! ends the stream with DATA_LOSS if they do not match their address.

use std::{fmt, pin::Pin, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::{
    ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart, local::LocalFileSystem,
    path::Path as StorePath,
};
use ring::digest;

use crate::error::{Error, Result};

/// Blobs up to this size are buffered and written in one put; larger ones are streamed.
pub const SMALL_BLOB: usize = 8 * 1024 * 1024;
/// Part size of multipart uploads (S3 requires at least 5 MiB).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploaded concurrently per blob.
const PART_CONCURRENCY: usize = 2;

/// A SHA-256 digest: the address of a blob.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256([u8; 32]);

impl Sha256 {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Sha256(bytes)
    }

    /// Parses raw bytes (e.g. a `bytea` column or a protobuf `bytes` field).
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Sha256)
    }

    /// Parses 64 lowercase or uppercase hex digits.
    pub fn from_hex(hex: &str) -> Option<Self> {
        // Checked first: `u8::from_str_radix` would also take a sign ("+a").
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).ok()?;
            out[i] = u8::from_str_radix(text, 16).ok()?;
        }
        Some(Sha256(out))
    }

    pub fn of(bytes: &[u8]) -> Self {
        Sha256::from_context(digest::digest(&digest::SHA256, bytes))
    }

    fn from_context(digest: digest::Digest) -> Self {
        Sha256(digest.as_ref().try_into().expect("SHA-256 is 32 bytes"))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn location(&self) -> StorePath {
        let hex = self.to_hex();
        StorePath::from(format!("sha256/{}/{hex}", &hex[..2]))
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", self.to_hex())
    }
}

/// What a put stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobInfo {
    pub sha256: Sha256,
    pub size: u64,
}

/// Serialises, for the rest of `tx`, everything that records a reference to `sha256`'s bytes in
/// `scope` (e.g. `registry.tarball`) with everything that checks for references and removes
/// them: bytes are content-addressed and shared, so a collector that found none must not delete
/// bytes a concurrent writer is about to point at. Every service's writers and collectors of
/// one scope take this lock.
pub async fn lock(tx: &mut sqlx::PgConnection, scope: &str, sha256: &Sha256) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '.' || $2, 0))")
        .bind(scope)
        .bind(sha256.to_hex())
        .execute(tx)
        .await?;
    Ok(())
}

/// A stream of blob bytes; an error item ends it.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// The bytes of a client-streamed upload whose first message (already taken) was a header:
/// every later message must be a chunk (`chunk_of` returns `None` for anything else).
pub fn upload_chunks<M, F>(
    stream: tonic::Streaming<M>,
    chunk_of: F,
) -> impl Stream<Item = Result<Bytes>> + Send
where
    M: Send + 'static,
    F: Fn(M) -> Option<Bytes> + Send + 'static,
{
    stream.map(move |message| match message {
        Ok(message) => chunk_of(message).ok_or_else(|| {
            Error::invalid_argument("chunk", "only the first message may be a header")
        }),
        Err(status) => Err(Error::from_request_stream(&status)),
    })
}

/// Sends a blob's bytes down a server stream in messages of at most `chunk_size` bytes, each
/// made by `message`. Returns true if all were sent; false if the client went away, the server
/// is shutting down (the client is told UNAVAILABLE), or reading failed (the client gets the
/// error).
pub async fn send_chunks<M>(
    tx: &tokio::sync::mpsc::Sender<std::result::Result<M, tonic::Status>>,
    mut bytes: ByteStream,
    chunk_size: usize,
    shutdown: &tokio_util::sync::CancellationToken,
    message: impl Fn(Bytes) -> M,
) -> bool {
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = tx.send(Err(tonic::Status::unavailable("the server is shutting down"))).await;
                return false;
            }
            _ = tx.closed() => return false,
            next = bytes.next() => next,
        };
        match next {
            Some(Ok(chunk)) => {
                for piece in chunk.chunks(chunk_size) {
                    if tx.send(Ok(message(chunk.slice_ref(piece)))).await.is_err() {
                        return false;
                    }
                }
            }
            Some(Err(error)) => {
                let _ = tx.send(Err(error.into())).await;
                return false;
            }
            None => return true,
        }
    }
}

#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    description: String,
    /// For a local directory: where it is, so reads can use large buffers (object_store's
    /// local reads come in 8 KiB pieces, each its own blocking task).
    local_root: Option<std::path::PathBuf>,
}

/// Read size for local blobs.
const LOCAL_READ: usize = 1024 * 1024;

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

impl BlobStore {
    /// A store in a local directory, created if missing.
    pub fn local(dir: &std::path::Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let store = LocalFileSystem::new_with_prefix(dir)?;
        Ok(BlobStore {
            store: Arc::new(store),
            description: format!("file://{}", dir.display()),
            local_root: Some(dir.canonicalize()?),
        })
    }

    /// A store from a URL (`file:///dir`, `s3://bucket/prefix`, `memory:///`). Options for S3
    /// come from the `AWS_*` environment variables (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`...).
    pub fn from_url(url: &str) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(url)
            .map_err(|e| anyhow::anyhow!("QUINTET_BLOB_URL is not a URL ({e})"))?;
        if parsed.scheme() == "file" {
            let dir = parsed
                .to_file_path()
                .map_err(|_| anyhow::anyhow!("QUINTET_BLOB_URL: not a local path: {url}"))?;
            return Self::local(&dir);
        }
        // Only the variables object_store knows: an unrelated AWS_* (AWS_PROFILE...) must not stop
        // the server from starting.
        let options = std::env::vars()
            .filter(|(key, _)| key.starts_with("AWS_"))
            .map(|(key, value)| (key.to_ascii_lowercase(), value))
            .filter(|(key, _)| key.parse::<object_store::aws::AmazonS3ConfigKey>().is_ok());
        let (store, prefix) = object_store::parse_url_opts(&parsed, options)
            .map_err(|e| anyhow::anyhow!("QUINTET_BLOB_URL {url}: {e}"))?;
        let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            Arc::from(store)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
        };
        Ok(BlobStore {
            store,
            description: parsed.to_string(),
            local_root: None,
        })
    }

    /// The same storage under `prefix`: each service keeps its bytes apart, so that one's
    /// garbage collection can never remove another's.
    pub fn scoped(&self, prefix: &str) -> BlobStore {
        BlobStore {
            store: Arc::new(object_store::prefix::PrefixStore::new(
                self.store.clone(),
                prefix,
            )),
            description: format!("{}/{prefix}", self.description.trim_end_matches('/')),
            local_root: self.local_root.as_ref().map(|root| root.join(prefix)),
        }
    }

    /// Every stored blob with when it was written, for garbage collection.
    pub async fn list(&self) -> Result<Vec<(Sha256, std::time::SystemTime)>> {
        let prefix = StorePath::from("sha256");
        self.store
            .list(Some(&prefix))
            .try_filter_map(|meta| async move {
                Ok(meta
                    .location
                    .filename()
                    .and_then(Sha256::from_hex)
                    .map(|sha| (sha, std::time::SystemTime::from(meta.last_modified))))
            })
            .try_collect()
            .await
            .map_err(storage_error)
    }

    /// Stores a stream of bytes, refusing with INVALID_ARGUMENT on `field` once it exceeds
    /// `max_size`. An error item from the stream aborts the put and is returned unchanged.
    pub async fn put<S>(&self, bytes: S, max_size: u64, field: &str) -> Result<BlobInfo>
    where
        S: Stream<Item = Result<Bytes>> + Send,
    {
        let mut bytes = std::pin::pin!(bytes);
        let mut hasher = digest::Context::new(&digest::SHA256);
        let mut size = 0u64;
        let mut head = BytesMut::new();
        let too_large = || Error::invalid_argument(field, format!("larger than {max_size} bytes"));

        // Small blobs: hash in memory, then one atomic put at their address.
        while head.len() <= SMALL_BLOB {
            match bytes.next().await.transpose()? {
                Some(chunk) => {
                    size += chunk.len() as u64;
                    if size > max_size {
                        return Err(too_large());
                    }
                    hasher.update(&chunk);
                    head.extend_from_slice(&chunk);
                }
                None => {
                    let sha256 = Sha256::from_context(hasher.finish());
                    let location = sha256.location();
                    if !self.exists_at(&location).await? {
                        self.store
                            .put(&location, PutPayload::from(head.freeze()))
                            .await
                            .map_err(storage_error)?;
                        self.sync(&sha256).await?;
                    }
                    return Ok(BlobInfo { sha256, size });
                }
            }
        }

        if let Some(root) = &self.local_root {
            return self
                .put_local(root, head.freeze(), bytes, hasher, size, max_size, field)
                .await;
        }

        // Large blobs: multipart upload to a temporary name, moved into place once complete.
        let temporary = StorePath::from(format!("tmp/{}", uuid::Uuid::new_v4()));
        let upload = self
            .store
            .put_multipart(&temporary)
            .await
            .map_err(storage_error)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        writer.put(head.freeze());
        let streamed: Result<()> = async {
            while let Some(chunk) = bytes.next().await.transpose()? {
                size += chunk.len() as u64;
                if size > max_size {
                    return Err(too_large());
                }
                hasher.update(&chunk);
                writer
                    .wait_for_capacity(PART_CONCURRENCY)
                    .await
                    .map_err(storage_error)?;
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        if let Err(e) = streamed {
            let _ = writer.abort().await;
            return Err(e);
        }
        writer.finish().await.map_err(storage_error)?;
        let sha256 = Sha256::from_context(hasher.finish());
        self.move_into_place(&temporary, &sha256.location()).await?;
        self.sync(&sha256).await?;
        Ok(BlobInfo { sha256, size })
    }

    /// A large blob into a local directory: written by a blocking thread to `tmp/<uuid>`, with
    /// write-back started every few MiB so that the final fdatasync is short, then renamed to its
    /// address and its directory synced. (object_store's local backend neither syncs nor lets us.)
    #[allow(clippy::too_many_arguments)]
    async fn put_local<S>(
        &self,
        root: &std::path::Path,
        head: Bytes,
        mut bytes: Pin<&mut S>,
        mut hasher: digest::Context,
        mut size: u64,
        max_size: u64,
        field: &str,
    ) -> Result<BlobInfo>
    where
        S: Stream<Item = Result<Bytes>> + Send,
    {
        let io = |e: std::io::Error| Error::Unavailable(format!("blob storage: {e}"));
        let temporary = root.join("tmp").join(uuid::Uuid::new_v4().to_string());
        std::fs::create_dir_all(root.join("tmp")).map_err(io)?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let path = temporary.clone();
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::{io::Write, os::fd::AsRawFd};
            const KICK: u64 = 32 * 1024 * 1024;
            let mut file = std::fs::File::create(&path)?;
            let (mut written, mut kicked) = (0u64, 0u64);
            while let Some(chunk) = rx.blocking_recv() {
                file.write_all(&chunk)?;
                written += chunk.len() as u64;
                if written - kicked >= KICK {
                    // SAFETY: a plain syscall on an open descriptor; only starts write-back.
                    unsafe {
                        libc::sync_file_range(
                            file.as_raw_fd(),
                            kicked as i64,
                            (written - kicked) as i64,
                            libc::SYNC_FILE_RANGE_WRITE,
                        );
                    }
                    kicked = written;
                }
            }
            file.sync_data()
        });
        let streamed: Result<()> = async {
            let mut next = Some(head);
            loop {
                if let Some(chunk) = next.take() {
                    tx.send(chunk).await.map_err(|_| {
                        Error::Unavailable("blob storage: the writer failed".to_owned())
                    })?;
                }
                let Some(chunk) = bytes.next().await.transpose()? else {
                    return Ok(());
                };
                size += chunk.len() as u64;
                if size > max_size {
                    return Err(Error::invalid_argument(
                        field,
                        format!("larger than {max_size} bytes"),
                    ));
                }
                hasher.update(&chunk);
                next = Some(chunk);
            }
        }
        .await;
        drop(tx);
        let written = writer
            .await
            .map_err(|e| Error::internal(anyhow::anyhow!("blob writer: {e}")))?;
        if let Err(e) = streamed.and(written.map_err(io)) {
            let _ = std::fs::remove_file(&temporary);
            return Err(e);
        }
        let sha256 = Sha256::from_context(hasher.finish());
        let target = root.join(sha256.location().as_ref());
        let dir = target
            .parent()
            .expect("addresses have a directory")
            .to_owned();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            // Identical bytes already there (or arriving concurrently) are the same bytes.
            std::fs::rename(&temporary, &target)?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(|e| Error::internal(anyhow::anyhow!("blob rename: {e}")))?
        .map_err(io)?;
        Ok(BlobInfo { sha256, size })
    }

    /// Stores bytes already in memory.
    pub async fn put_bytes(&self, bytes: Bytes) -> Result<BlobInfo> {
        let len = bytes.len() as u64;
        self.put(futures::stream::once(async { Ok(bytes) }), len, "bytes")
            .await
    }

    /// Makes a local blob durable before anything records it: its bytes and its directory entry
    /// reach the disk (object_store's local backend does not fsync). Remote stores acknowledge
    /// durably themselves.
    async fn sync(&self, sha256: &Sha256) -> Result<()> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let path = root.join(sha256.location().as_ref());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::File::open(&path)?.sync_all()?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::internal(anyhow::anyhow!("fsync task: {e}")))?
        .map_err(|e| Error::Unavailable(format!("blob storage: cannot sync: {e}")))
    }

    async fn move_into_place(&self, temporary: &StorePath, location: &StorePath) -> Result<()> {
        match self.store.rename_if_not_exists(temporary, location).await {
            Ok(()) => Ok(()),
            // Someone stored the same bytes first: theirs are ours.
            Err(object_store::Error::AlreadyExists { .. }) => self.delete_quietly(temporary).await,
            // Stores without an atomic create-if-absent (plain S3): the address names the bytes,
            // so overwriting identical bytes is harmless.
            Err(
                object_store::Error::NotSupported { .. }
                | object_store::Error::NotImplemented { .. },
            ) => self
                .store
                .rename(temporary, location)
                .await
                .map_err(storage_error),
            Err(e) => {
                self.delete_quietly(temporary).await?;
                Err(storage_error(e))
            }
        }
    }

    async fn delete_quietly(&self, location: &StorePath) -> Result<()> {
        match self.store.delete(location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(storage_error(e)),
        }
    }

    async fn exists_at(&self, location: &StorePath) -> Result<bool> {
        match self.store.head(location).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(storage_error(e)),
        }
    }

    /// Takes `sha256`'s lock in `scope` (see [`lock`]) and checks the bytes are still stored,
    /// before `tx` records a reference to them: ABORTED if a collector removed them meanwhile
    /// (the client sends them again).
    pub async fn hold(
        &self,
        tx: &mut sqlx::PgConnection,
        scope: &str,
        sha256: &Sha256,
    ) -> Result<()> {
        lock(tx, scope, sha256).await?;
        if self.exists(sha256).await? {
            Ok(())
        } else {
            Err(Error::Aborted(
                "the uploaded bytes were removed concurrently; send them again".to_owned(),
            ))
        }
    }

    pub async fn exists(&self, sha256: &Sha256) -> Result<bool> {
        self.exists_at(&sha256.location()).await
    }

    /// The blob's bytes, verified against its address as they stream: if they do not hash to
    /// `sha256`, the stream's last item is DATA_LOSS. NOT_FOUND if there is no such blob.
    pub async fn get(&self, sha256: &Sha256) -> Result<(u64, ByteStream)> {
        let (size, inner) = self.get_unverified(sha256).await?;
        let expected = *sha256;
        let stream = futures::stream::unfold(
            (inner.boxed(), Some(digest::Context::new(&digest::SHA256))),
            move |(mut inner, hasher)| async move {
                let mut hasher = hasher?;
                match inner.next().await {
                    Some(Ok(chunk)) => {
                        hasher.update(&chunk);
                        Some((Ok(chunk), (inner, Some(hasher))))
                    }
                    Some(Err(e)) => Some((Err(e), (inner, None))),
                    None if Sha256::from_context(hasher.finish()) == expected => None,
                    None => Some((
                        Err(Error::DataLoss(format!(
                            "blob {expected}: stored bytes do not match their SHA-256"
                        ))),
                        (inner, None),
                    )),
                }
            },
        );
        Ok((size, Box::pin(stream)))
    }

    async fn get_unverified(&self, sha256: &Sha256) -> Result<(u64, ByteStream)> {
        if let Some(root) = &self.local_root {
            let path = root.join(sha256.location().as_ref());
            let file = match tokio::fs::File::open(&path).await {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::not_found("blob", sha256.to_hex()));
                }
                Err(e) => return Err(Error::Unavailable(format!("blob storage: {e}"))),
            };
            let size = file
                .metadata()
                .await
                .map_err(|e| Error::Unavailable(format!("blob storage: {e}")))?
                .len();
            let stream = tokio_util::io::ReaderStream::with_capacity(file, LOCAL_READ)
                .map_err(|e| Error::Unavailable(format!("blob storage: {e}")));
            return Ok((size, Box::pin(stream)));
        }
        let result = match self.store.get(&sha256.location()).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::not_found("blob", sha256.to_hex()));
            }
            Err(e) => return Err(storage_error(e)),
        };
        let size = result.meta.size;
        Ok((size, Box::pin(result.into_stream().map_err(storage_error))))
    }

    /// Reads a whole blob into memory, verified. For small blobs only.
    pub async fn get_bytes(&self, sha256: &Sha256) -> Result<Bytes> {
        let (size, stream) = self.get(sha256).await?;
        let mut out = BytesMut::with_capacity(size as usize);
        let mut stream = stream;
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out.freeze())
    }

    /// Removes a blob; removing a missing blob succeeds. Callers decide whether anything still
    /// references it.
    pub async fn delete(&self, sha256: &Sha256) -> Result<()> {
        self.delete_quietly(&sha256.location()).await
    }

    /// Removes temporary objects of uploads that started more than `older_than` ago and never
    /// completed (a client that vanished, a killed server). Returns how many were removed.
    pub async fn remove_stale_uploads(&self, older_than: Duration) -> Result<usize> {
        let cutoff = std::time::SystemTime::now() - older_than;
        let prefix = StorePath::from("tmp");
        let stale: Vec<StorePath> = self
            .store
            .list(Some(&prefix))
            .try_filter_map(|meta| async move {
                Ok((std::time::SystemTime::from(meta.last_modified) < cutoff)
                    .then_some(meta.location))
            })
            .try_collect()
            .await
            .map_err(storage_error)?;
        for location in &stale {
            self.delete_quietly(location).await?;
        }
        Ok(stale.len())
    }
}

fn storage_error(error: object_store::Error) -> Error {
    match error {
        object_store::Error::NotFound { path, .. } => Error::not_found("blob", path),
        other => Error::Unavailable(format!("blob storage: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(data: &[u8], size: usize) -> impl Stream<Item = Result<Bytes>> + Send + use<> {
        let parts: Vec<Result<Bytes>> = data
            .chunks(size.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(parts)
    }

    fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(d).unwrap().flatten() {
                if entry.path().is_dir() {
                    stack.push(entry.path());
                } else {
                    out.push(entry.path());
                }
            }
        }
        out
    }

    #[test]
    fn hex_round_trip() {
        let digest = Sha256::of(b"abc");
        assert_eq!(
            digest.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Sha256::from_hex(&digest.to_hex()), Some(digest));
        assert_eq!(Sha256::from_hex("zz"), None);
        assert_eq!(Sha256::from_hex(&"g".repeat(64)), None);
        // A sign is not a hex digit, though `u8::from_str_radix` takes one: found by the
        // store_manifest fuzz target (an `expected_sha256` of "+a+a...").
        assert_eq!(Sha256::from_hex(&"+a".repeat(32)), None);
    }

    #[tokio::test]
    async fn small_and_large_blobs_round_trip_at_their_address() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        for (len, chunk) in [
            (0usize, 1usize),
            (3, 1),
            (SMALL_BLOB + PART_SIZE * 2 + 17, 100_003),
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let info = store
                .put(chunks(&data, chunk), u64::MAX, "data")
                .await
                .unwrap();
            assert_eq!(info.size, len as u64);
            assert_eq!(info.sha256, Sha256::of(&data));
            assert_eq!(store.get_bytes(&info.sha256).await.unwrap(), data);
            let hex = info.sha256.to_hex();
            assert!(
                dir.path()
                    .join("sha256")
                    .join(&hex[..2])
                    .join(&hex)
                    .is_file()
            );
        }
        // Nothing temporary is left behind.
        assert!(
            files_under(dir.path())
                .iter()
                .all(|p| p.starts_with(dir.path().join("sha256")))
        );
    }

    #[tokio::test]
    async fn identical_contents_are_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let data = vec![7u8; SMALL_BLOB + 1];
        let a = store
            .put(chunks(&data, 1 << 20), u64::MAX, "data")
            .await
            .unwrap();
        let b = store
            .put(chunks(&data, 3 << 20), u64::MAX, "data")
            .await
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(files_under(dir.path()).len(), 1);
    }

    #[tokio::test]
    async fn oversize_and_failed_uploads_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let data = vec![1u8; SMALL_BLOB * 2];
        let error = store
            .put(chunks(&data, 1 << 20), 1000, "tarball")
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(error.to_string().starts_with("tarball:"));

        let failing = chunks(&data, 1 << 20).chain(futures::stream::once(async {
            Err(Error::Cancelled("client went away".into()))
        }));
        let error = store.put(failing, u64::MAX, "data").await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::Cancelled);
        assert!(
            files_under(dir.path()).is_empty(),
            "{:?}",
            files_under(dir.path())
        );
    }

    #[tokio::test]
    async fn corrupted_bytes_end_the_stream_with_data_loss() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let info = store
            .put_bytes(Bytes::from_static(b"precious bytes"))
            .await
            .unwrap();
        let hex = info.sha256.to_hex();
        let path = dir.path().join("sha256").join(&hex[..2]).join(&hex);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
        let error = store.get_bytes(&info.sha256).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::DataLoss);
    }

    #[tokio::test]
    async fn missing_blob_is_not_found_and_delete_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let missing = Sha256::of(b"never stored");
        let Err(error) = store.get(&missing).await else {
            panic!("found a blob never stored")
        };
        assert_eq!(error.code(), tonic::Code::NotFound);
        assert!(!store.exists(&missing).await.unwrap());
        let info = store.put_bytes(Bytes::from_static(b"x")).await.unwrap();
        assert!(store.exists(&info.sha256).await.unwrap());
        store.delete(&info.sha256).await.unwrap();
        store.delete(&info.sha256).await.unwrap();
        assert!(!store.exists(&info.sha256).await.unwrap());
    }

    #[tokio::test]
    async fn stale_temporary_uploads_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        store
            .store
            .put(
                &StorePath::from("tmp/abandoned"),
                PutPayload::from_static(b"partial"),
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .remove_stale_uploads(Duration::from_secs(3600))
                .await
                .unwrap(),
            0
        );
        assert_eq!(store.remove_stale_uploads(Duration::ZERO).await.unwrap(), 1);
        assert!(files_under(dir.path()).is_empty());
    }
}
