//! gRPC handlers of Griot: check the caller, parse the request into domain types, call the
//! queries, convert back. Installation work happens in `worker.rs`, log following in `logs.rs`.

use std::pin::Pin;

use futures::Stream;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::{
    convert,
    domain::{
        ArtifactSource, DidKey, INTEGRITY_CHECK_FAILED, Manifest, PackageId, TargetNodeId,
        blob_url, encode_signature,
    },
    logs,
    queries::{self, JOBS_CHANNEL, JobFilter, LOGS_CHANNEL, NewJob, NewPackage, PackageFilter},
    trust,
};
use crate::{
    auth::AdminAuth,
    blobs::{self, BlobStore, upload_chunks},
    error::{Error, Result},
    notify::{self, Notifier},
    page_token::{PageTokens, page_size},
    proto::quintet::griot::v1::{self as pb, griot_service_server},
};

#[derive(Clone)]
pub struct GriotService {
    pub pool: PgPool,
    pub admin: AdminAuth,
    pub blobs: BlobStore,
    pub notifier: Notifier,
    pub page_tokens: PageTokens,
    pub shutdown: CancellationToken,
    pub max_artifact_bytes: u64,
}

/// The [`blobs::lock`] scope of held artifacts: registrations and artifact collection.
const ARTIFACT_LOCKS: &str = "griot.artifact";

type ResponseStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send>>;

fn parse_job_id(field: &str, text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|_| Error::invalid_argument(field, "not a UUID"))
}

/// An optional exact-match filter: empty means any; otherwise at most `max` characters.
fn filter_text(field: &str, text: String, max: usize) -> Result<Option<String>> {
    if text.len() > max {
        return Err(Error::invalid_argument(
            field,
            format!("longer than {max} bytes"),
        ));
    }
    if text.contains('\0') {
        return Err(Error::invalid_argument(field, "contains NUL"));
    }
    Ok((!text.is_empty()).then_some(text))
}

/// The job an idempotency key created, if the request is the same as the one that created it.
fn replay(request: &NewJob<'_>, existing: queries::JobRow) -> Result<queries::JobRow> {
    if existing.package_id != request.package_id.to_string()
        || existing.target_node_id != request.target_node_id
        || existing.options.0 != *request.options
    {
        return Err(Error::failed_precondition(
            "IDEMPOTENCY_KEY_REUSED",
            existing.idempotency_key.unwrap_or_default(),
            "this idempotency key was used for a different installation",
        ));
    }
    Ok(existing)
}

impl GriotService {
    async fn job_row(&self, job_id: Uuid) -> Result<queries::JobRow> {
        queries::job(&self.pool, job_id)
            .await?
            .ok_or_else(|| Error::not_found("installation", job_id.to_string()))
    }

    /// Stores an uploaded artifact; its SHA-256 is the package id.
    async fn receive_artifact(
        &self,
        stream: Streaming<pb::RegisterPackageRequest>,
        expected: Option<PackageId>,
    ) -> Result<(PackageId, u64)> {
        let chunks = upload_chunks(stream, |m: pb::RegisterPackageRequest| match m.part {
            Some(pb::register_package_request::Part::Chunk(bytes)) => Some(bytes),
            _ => None,
        });
        let info = self
            .blobs
            .put(chunks, self.max_artifact_bytes, "chunk")
            .await?;
        if info.size == 0 {
            return Err(Error::invalid_argument(
                "header.artifact_url",
                "give the artifact's URL or upload its bytes",
            ));
        }
        let id = PackageId::from_sha256(info.sha256);
        if let Some(expected) = expected
            && expected != id
        {
            return Err(Error::invalid_argument_because(
                INTEGRITY_CHECK_FAILED,
                "header.package_id",
                format!("the uploaded artifact's SHA-256 is {id}"),
            ));
        }
        Ok((id, info.size))
    }
}

#[tonic::async_trait]
impl griot_service_server::GriotService for GriotService {
    async fn register_package(
        &self,
        request: Request<Streaming<pb::RegisterPackageRequest>>,
    ) -> std::result::Result<Response<pb::RegisterPackageResponse>, Status> {
        self.admin.require_admin(&request).await?;
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(pb::RegisterPackageRequest {
                part: Some(pb::register_package_request::Part::Header(header)),
            }) => header,
            _ => {
                return Err(Error::invalid_argument(
                    "header",
                    "the first message must be the header",
                )
                .into());
            }
        };
        let manifest = Manifest::parse(&header.manifest_json, &header.signature)?;
        trust::require(&self.pool, manifest.author.as_str()).await?;
        let given_id = match header.package_id.as_str() {
            "" => None,
            text => Some(PackageId::parse("header.package_id", text)?),
        };

        let (id, artifact_url, size) = if header.artifact_url.is_empty() {
            let (id, size) = self.receive_artifact(stream, given_id).await?;
            (id, blob_url(&id), Some(size as i64))
        } else {
            if let ArtifactSource::Blob =
                ArtifactSource::parse("header.artifact_url", &header.artifact_url)?
            {
                return Err(Error::invalid_argument(
                    "header.artifact_url",
                    "blob: URLs are the server's own; upload the bytes instead",
                )
                .into());
            }
            let id = given_id.ok_or_else(|| {
                Error::invalid_argument(
                    "header.package_id",
                    "required with artifact_url: the artifact's SHA-256",
                )
            })?;
            if stream.message().await?.is_some() {
                return Err(Error::invalid_argument(
                    "chunk",
                    "send either artifact_url or the artifact's bytes, not both",
                )
                .into());
            }
            (id, header.artifact_url.clone(), None)
        };

        if manifest.artifact != id {
            return Err(Error::invalid_argument_because(
                INTEGRITY_CHECK_FAILED,
                "header.manifest_json.artifact_sha256",
                format!(
                    "the signed manifest is for artifact {}, not {id}",
                    manifest.artifact
                ),
            )
            .into());
        }
        let signature = encode_signature(&manifest.signature);
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        if size.is_some() {
            self.blobs
                .hold(&mut tx, ARTIFACT_LOCKS, id.sha256())
                .await?;
        }
        let inserted = queries::insert_package(
            &mut tx,
            &NewPackage {
                id: &id,
                manifest: &manifest.json,
                artifact_url: &artifact_url,
                author_did: manifest.author.as_str(),
                signature: &signature,
                artifact_size: size,
            },
        )
        .await?;
        let (row, created) = match inserted {
            Some(row) => (row, true),
            None => {
                let existing = queries::package(&mut *tx, &id)
                    .await?
                    .ok_or_else(|| Error::Aborted("the package changed concurrently".into()))?;
                if existing.manifest.0 != manifest.json || existing.signature != signature {
                    return Err(Error::already_exists("package", id.to_string()).into());
                }
                match size {
                    // Registered by URL before; now the server holds the bytes too.
                    Some(size) if existing.artifact_size.is_none() => (
                        queries::hold_artifact(&mut tx, &id, &artifact_url, size).await?,
                        false,
                    ),
                    _ => (existing, false),
                }
            }
        };
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::RegisterPackageResponse {
            package: Some(convert::package(row)),
            created,
        }))
    }

    async fn get_package(
        &self,
        request: Request<pb::GetPackageRequest>,
    ) -> std::result::Result<Response<pb::GetPackageResponse>, Status> {
        let id = PackageId::parse("package_id", &request.get_ref().package_id)?;
        let row = queries::package(&self.pool, &id)
            .await?
            .ok_or_else(|| Error::not_found("package", id.to_string()))?;
        Ok(Response::new(pb::GetPackageResponse {
            package: Some(convert::package(row)),
        }))
    }

    async fn list_packages(
        &self,
        request: Request<pb::ListPackagesRequest>,
    ) -> std::result::Result<Response<pb::ListPackagesResponse>, Status> {
        let message = request.into_inner();
        let size = page_size("page_size", message.page_size, 100, 1000)?;
        let manifest_contains = match message.manifest_contains_json.as_str() {
            "" => None,
            text if text.len() > 64 * 1024 => {
                return Err(Error::invalid_argument(
                    "manifest_contains_json",
                    "larger than 64 KiB",
                )
                .into());
            }
            text => match serde_json::from_str::<Value>(text) {
                Ok(value) if crate::proto::json_has_nul(&value) => {
                    return Err(
                        Error::invalid_argument("manifest_contains_json", "contains NUL").into(),
                    );
                }
                Ok(value @ Value::Object(_)) => Some(value),
                _ => {
                    return Err(Error::invalid_argument(
                        "manifest_contains_json",
                        "must be a JSON object",
                    )
                    .into());
                }
            },
        };
        let filter = PackageFilter {
            author_did: filter_text("author_did", message.author_did, 255)?,
            node_class: filter_text("node_class", message.node_class, 128)?,
            name: filter_text("name", message.name, 214)?,
            manifest_contains,
        };
        let scope = format!("griot.ListPackages?{filter:?}");
        let after: Option<(time::OffsetDateTime, String)> =
            self.page_tokens.decode(&scope, &message.page_token)?;
        let mut rows = queries::list_packages(&self.pool, &filter, after, size + 1).await?;
        let next_page_token = self.page_tokens.next_page(&scope, &mut rows, size, |last| {
            (last.created_at, last.package_id.clone())
        });
        Ok(Response::new(pb::ListPackagesResponse {
            packages: rows.into_iter().map(convert::package).collect(),
            next_page_token,
        }))
    }

    async fn set_author_trust(
        &self,
        request: Request<pb::SetAuthorTrustRequest>,
    ) -> std::result::Result<Response<pb::SetAuthorTrustResponse>, Status> {
        self.admin.require_admin(&request).await?;
        let message = request.into_inner();
        let did = DidKey::parse(&message.author_did)
            .map_err(|why| Error::invalid_argument("author_did", why))?;
        if message.note.chars().count() > 1024 {
            return Err(Error::invalid_argument("note", "longer than 1024 characters").into());
        }
        let trust = match pb::Trust::try_from(message.trust) {
            Ok(pb::Trust::Trusted) => Some("trusted"),
            Ok(pb::Trust::Revoked) => Some("revoked"),
            Ok(pb::Trust::Unspecified) => None,
            Err(_) => return Err(Error::invalid_argument("trust", "unknown value").into()),
        };
        let author = match trust {
            Some(trust) => Some(convert::trust(
                queries::set_trust(&self.pool, did.as_str(), trust, &message.note).await?,
            )),
            None => {
                queries::remove_trust(&self.pool, did.as_str()).await?;
                None
            }
        };
        Ok(Response::new(pb::SetAuthorTrustResponse { author }))
    }

    async fn list_author_trust(
        &self,
        request: Request<pb::ListAuthorTrustRequest>,
    ) -> std::result::Result<Response<pb::ListAuthorTrustResponse>, Status> {
        self.admin.require_admin(&request).await?;
        let rows = queries::list_trust(&self.pool).await?;
        let allowlist_enforced = rows.iter().any(|row| row.trust == "trusted");
        Ok(Response::new(pb::ListAuthorTrustResponse {
            authors: rows.into_iter().map(convert::trust).collect(),
            allowlist_enforced,
        }))
    }

    async fn create_installation(
        &self,
        request: Request<pb::CreateInstallationRequest>,
    ) -> std::result::Result<Response<pb::CreateInstallationResponse>, Status> {
        self.admin.require_admin(&request).await?;
        let message = request.into_inner();
        let package_id = PackageId::parse("package_id", &message.package_id)?;
        let target = TargetNodeId::parse("target_node_id", &message.target_node_id)?;
        let options = convert::job_options(message.options).validate()?;
        let key = filter_text("idempotency_key", message.idempotency_key, 255)?;
        let options_json = serde_json::to_value(&options).map_err(Error::internal)?;
        let request = NewJob {
            package_id: &package_id,
            target_node_id: target.as_str(),
            options: &options_json,
            idempotency_key: key.as_deref(),
        };
        // A retry replays the first call's answer, whatever changed since.
        if let Some(key) = &key
            && let Some(existing) = queries::job_by_key(&self.pool, key).await?
        {
            return Ok(Response::new(pb::CreateInstallationResponse {
                installation: Some(convert::installation(
                    replay(&request, existing)?,
                    Vec::new(),
                )),
                created: false,
            }));
        }
        let package = queries::package(&self.pool, &package_id)
            .await?
            .ok_or_else(|| Error::not_found("package", package_id.to_string()))?;
        let manifest = Manifest::parse(&package.manifest.0.to_string(), &package.signature)?;
        trust::require(&self.pool, manifest.author.as_str()).await?;
        // Rollback protection, checked now for a clear answer and again when the job runs.
        if !options.allow_downgrade {
            let versions = queries::installed_versions(
                &self.pool,
                target.as_str(),
                &manifest.name,
                &manifest.node_class,
                &package_id,
            )
            .await?;
            if let Some(higher) = versions
                .iter()
                .filter_map(|v| semver::Version::parse(v).ok())
                .filter(|v| *v > manifest.version)
                .max()
            {
                return Err(Error::failed_precondition(
                    "ROLLBACK_REFUSED",
                    format!("{}/{}", target.as_str(), manifest.name),
                    format!(
                        "{} {higher} is installed on {}; installing {} needs options.allow_downgrade",
                        manifest.name,
                        target.as_str(),
                        manifest.version
                    ),
                )
                .into());
            }
        }

        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        let inserted = queries::insert_job(&mut tx, &request).await?;
        let (row, created) = match inserted {
            Some(row) => {
                notify::notify(&mut *tx, JOBS_CHANNEL, "new").await?;
                (row, true)
            }
            // A concurrent call with the same key won.
            None => {
                let key = key.as_deref().expect("only a key can conflict");
                let existing = queries::job_by_key(&mut *tx, key)
                    .await?
                    .ok_or_else(|| Error::Aborted("the job changed concurrently".into()))?;
                (replay(&request, existing)?, false)
            }
        };
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::CreateInstallationResponse {
            installation: Some(convert::installation(row, Vec::new())),
            created,
        }))
    }

    async fn get_installation(
        &self,
        request: Request<pb::GetInstallationRequest>,
    ) -> std::result::Result<Response<pb::GetInstallationResponse>, Status> {
        self.admin.require_admin(&request).await?;
        let message = request.into_inner();
        let job_id = parse_job_id("job_id", &message.job_id)?;
        let row = self.job_row(job_id).await?;
        let logs = if message.include_logs {
            queries::job_logs(&self.pool, job_id).await?
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::GetInstallationResponse {
            installation: Some(convert::installation(row, logs)),
        }))
    }

    async fn list_installations(
        &self,
        request: Request<pb::ListInstallationsRequest>,
    ) -> std::result::Result<Response<pb::ListInstallationsResponse>, Status> {
        self.admin.require_admin(&request).await?;
        let message = request.into_inner();
        let size = page_size("page_size", message.page_size, 100, 1000)?;
        let status = pb::InstallationStatus::try_from(message.status)
            .map_err(|_| Error::invalid_argument("status", "unknown value"))?;
        let filter = JobFilter {
            status: convert::status_filter(status),
            target_node_id: match message.target_node_id.as_str() {
                "" => None,
                text => Some(
                    TargetNodeId::parse("target_node_id", text)?
                        .as_str()
                        .to_owned(),
                ),
            },
            package_id: match message.package_id.as_str() {
                "" => None,
                text => Some(PackageId::parse("package_id", text)?.to_string()),
            },
        };
        let scope = format!("griot.ListInstallations?{filter:?}");
        let after: Option<(time::OffsetDateTime, Uuid)> =
            self.page_tokens.decode(&scope, &message.page_token)?;
        let mut rows = queries::list_jobs(&self.pool, &filter, after, size + 1).await?;
        let next_page_token = self.page_tokens.next_page(&scope, &mut rows, size, |last| {
            (last.created_at, last.job_id)
        });
        Ok(Response::new(pb::ListInstallationsResponse {
            installations: rows
                .into_iter()
                .map(|row| convert::installation(row, Vec::new()))
                .collect(),
            next_page_token,
        }))
    }

    async fn cancel_installation(
        &self,
        request: Request<pb::CancelInstallationRequest>,
    ) -> std::result::Result<Response<pb::CancelInstallationResponse>, Status> {
        self.admin.require_admin(&request).await?;
        let job_id = parse_job_id("job_id", &request.get_ref().job_id)?;
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        let row = queries::cancel_job(&mut tx, job_id)
            .await?
            .ok_or_else(|| Error::not_found("installation", job_id.to_string()))?;
        match row.status.as_str() {
            "completed" | "failed" => {
                return Err(Error::failed_precondition(
                    "INSTALLATION_ENDED",
                    job_id.to_string(),
                    format!("the installation already {}", row.status),
                )
                .into());
            }
            "running" => {
                notify::notify(&mut *tx, JOBS_CHANNEL, &format!("cancel {job_id}")).await?;
            }
            // Cancelled now (it was pending) or before: followers re-read and end.
            _ => {
                notify::notify(
                    &mut *tx,
                    LOGS_CHANNEL,
                    &format!(r#"{job_id} {{"end":"cancelled","last":{}}}"#, row.log_count),
                )
                .await?;
            }
        }
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::CancelInstallationResponse {
            installation: Some(convert::installation(row, Vec::new())),
        }))
    }

    type StreamInstallationLogsStream = ResponseStream<pb::StreamInstallationLogsResponse>;

    async fn stream_installation_logs(
        &self,
        request: Request<pb::StreamInstallationLogsRequest>,
    ) -> std::result::Result<Response<Self::StreamInstallationLogsStream>, Status> {
        self.admin.require_admin(&request).await?;
        let message = request.into_inner();
        let job_id = parse_job_id("job_id", &message.job_id)?;
        if message.from_seq < 0 {
            return Err(Error::invalid_argument("from_seq", "must not be negative").into());
        }
        // NOT_FOUND as the call's status rather than as a stream error.
        self.job_row(job_id).await?;
        Ok(Response::new(Box::pin(logs::stream(
            self.pool.clone(),
            &self.notifier,
            self.shutdown.clone(),
            job_id,
            message.from_seq,
            message.follow,
        ))))
    }

    async fn list_node_packages(
        &self,
        request: Request<pb::ListNodePackagesRequest>,
    ) -> std::result::Result<Response<pb::ListNodePackagesResponse>, Status> {
        self.admin.require_admin(&request).await?;
        let target = TargetNodeId::parse("target_node_id", &request.get_ref().target_node_id)?;
        let rows = queries::node_packages(&self.pool, target.as_str()).await?;
        Ok(Response::new(pb::ListNodePackagesResponse {
            packages: rows.into_iter().map(convert::node_package).collect(),
        }))
    }
}

impl GriotService {
    /// Removes held artifacts no package points at, older than `grace` (left by registrations
    /// refused after their bytes were stored). Each check-and-delete holds the artifact's lock,
    /// which registrations of the same bytes take before recording their package.
    pub async fn collect_garbage(&self, grace: std::time::Duration) -> Result<usize> {
        let cutoff = std::time::SystemTime::now() - grace;
        let mut removed = 0;
        for (sha256, written) in self.blobs.list().await? {
            if written >= cutoff {
                continue;
            }
            let id = PackageId::from_sha256(sha256);
            let mut tx = self.pool.begin().await?;
            blobs::lock(&mut tx, ARTIFACT_LOCKS, id.sha256()).await?;
            if !queries::artifact_in_use(&mut *tx, &id).await? {
                self.blobs.delete(id.sha256()).await?;
                removed += 1;
            }
            tx.commit().await?;
        }
        Ok(removed)
    }
}
