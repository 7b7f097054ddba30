//! gRPC handlers of the registry: authenticate, validate into domain types, run the queries in a
//! transaction, encode.

use std::{pin::Pin, time::Duration};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::{
    convert,
    domain::{
        EditorVersion, MAX_README_BYTES, Manifest, NameProblem, PackageName, Scope, Semver,
        lookup_name, parse_username,
    },
    identity::{API_TOKEN_PREFIX, Caller, Grant, Identity},
    queries::{self, EVENTS_CHANNEL, Filter, Order, Position},
};
use crate::{
    auth::generate_token,
    blobs::{self, BlobInfo, BlobStore, Sha256, upload_chunks},
    error::{Error, Result},
    notify::{self, Notifier},
    page_token::{PageTokens, page_size},
    proto::{
        offset_date_time,
        quintet::registry::v1::{self as pb, registry_service_server},
    },
};

/// Rows examined per listing call when an engine filter discards most of them; the page may come
/// back short, with a token to go on.
const MAX_SCAN: usize = 2000;
/// Size of the chunks a download is sent in.
const DOWNLOAD_CHUNK: usize = 64 * 1024;

#[derive(Clone)]
pub struct RegistryService {
    pub pool: PgPool,
    pub blobs: BlobStore,
    pub identity: Identity,
    pub page_tokens: PageTokens,
    pub notifier: Notifier,
    pub shutdown: CancellationToken,
    pub max_tarball_bytes: u64,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send>>;

/// A parsed publish header.
struct Publish {
    manifest: Manifest,
    readme: String,
    expected: Option<Sha256>,
}

fn parse_publish(field: &str, header: pb::PublishHeader) -> Result<Publish> {
    let manifest = Manifest::parse(&format!("{field}.manifest_json"), &header.manifest_json)?;
    if header.readme.len() > MAX_README_BYTES {
        return Err(Error::invalid_argument(
            format!("{field}.readme"),
            "larger than 1 MiB",
        ));
    }
    let expected = match header.tarball_sha256.as_str() {
        "" => None,
        hex => Some(Sha256::from_hex(hex).ok_or_else(|| {
            Error::invalid_argument(format!("{field}.tarball_sha256"), "must be 64 hex digits")
        })?),
    };
    Ok(Publish {
        manifest,
        readme: header.readme,
        expected,
    })
}

/// The [`blobs::lock`] scope of tarballs: publishes and tarball collection.
const TARBALL_LOCKS: &str = "registry.tarball";

impl RegistryService {
    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller> {
        self.identity.caller(request).await
    }

    async fn require_admin<T>(&self, request: &Request<T>) -> Result<()> {
        if self.caller(request).await?.is_admin() {
            Ok(())
        } else {
            Err(Error::PermissionDenied(
                "only the admin may do this".to_owned(),
            ))
        }
    }

    async fn require_owner(&self, caller: &Caller, package: Uuid, action: &str) -> Result<()> {
        if caller.is_admin() || queries::is_owner(&self.pool, package, caller.user()?.uuid).await? {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "only the package's owners may {action}"
            )))
        }
    }

    /// Streams the tarball into blob storage and checks it: not empty, gzip, the expected digest.
    async fn receive_tarball(
        &self,
        chunks: impl Stream<Item = Result<Bytes>> + Send,
        expected: Option<Sha256>,
    ) -> Result<BlobInfo> {
        let mut head: Vec<u8> = Vec::with_capacity(2);
        let chunks = chunks.map(|chunk| {
            if let Ok(bytes) = &chunk
                && head.len() < 2
            {
                head.extend(bytes.iter().take(2 - head.len()));
            }
            chunk
        });
        let info = self
            .blobs
            .put(chunks, self.max_tarball_bytes, "chunk")
            .await?;
        if info.size == 0 {
            return Err(Error::invalid_argument("chunk", "the tarball is empty"));
        }
        if head != [0x1f, 0x8b] {
            return Err(Error::invalid_argument(
                "chunk",
                "the tarball is not gzip-compressed",
            ));
        }
        if let Some(expected) = expected
            && expected != info.sha256
        {
            return Err(Error::invalid_argument(
                "header.tarball_sha256",
                format!("the tarball's SHA-256 is {}", info.sha256),
            ));
        }
        Ok(info)
    }

    async fn resolve(&self, field: &str, name: &str) -> Result<Uuid> {
        queries::resolve(&self.pool, &lookup_name(field, name)?).await
    }

    async fn full_package(&self, pointer: Uuid) -> Result<pb::Package> {
        let (row, readme) = queries::package(&self.pool, pointer).await?;
        let mut package = convert::package(&row);
        package.readme = readme;
        package.owners = queries::owners(&self.pool, pointer)
            .await?
            .into_iter()
            .map(|u| u.username)
            .collect();
        package.versions = queries::versions(&self.pool, pointer)
            .await?
            .iter()
            .map(convert::version)
            .collect();
        Ok(package)
    }

    /// One page of a listing or search, applying the engine filter (which SQL cannot) by reading
    /// on until the page is full.
    #[allow(clippy::too_many_arguments)]
    async fn page(
        &self,
        query: Option<&str>,
        order: Order,
        ascending: bool,
        filter: &Filter,
        engine: Option<&EditorVersion>,
        mut after: Option<Position>,
        size: usize,
    ) -> Result<(Vec<pb::Package>, Option<Position>)> {
        let batch = if engine.is_some() { 200 } else { size + 1 };
        let mut out: Vec<(pb::Package, Position)> = Vec::with_capacity(size);
        let mut scanned = 0;
        loop {
            let rows = queries::list(
                &self.pool,
                query,
                order,
                ascending,
                filter,
                after,
                batch as i64,
            )
            .await?;
            for row in &rows {
                if out.len() == size {
                    // A further row exists: the page is full and not the last.
                    let next = out.last().map(|(_, position)| *position);
                    return Ok((out.into_iter().map(|(p, _)| p).collect(), next));
                }
                scanned += 1;
                let accepted = match engine {
                    None => true,
                    Some(version) => row
                        .package
                        .latest_engine
                        .as_ref()
                        .and_then(|e| Manifest::editor_range(&e.0))
                        .is_none_or(|range| range.accepts(version)),
                };
                after = Some(row.position(order));
                if accepted {
                    out.push((convert::package(&row.package), row.position(order)));
                }
            }
            if rows.len() < batch {
                return Ok((out.into_iter().map(|(p, _)| p).collect(), None));
            }
            if scanned >= MAX_SCAN {
                return Ok((out.into_iter().map(|(p, _)| p).collect(), after));
            }
        }
    }
}

/// Some actions need the user's own sign-in: a leaked API token must not manage tokens or take a
/// package over.
fn refuse_api_tokens(caller: &Caller, action: &str) -> Result<()> {
    match caller {
        Caller::User {
            grant: Grant::Token { .. },
            ..
        } => Err(Error::PermissionDenied(format!(
            "{action} needs the owner's sign-in, not an API token"
        ))),
        _ => Ok(()),
    }
}

fn order_of(sort: pb::SortBy, search: bool) -> Result<Order> {
    Ok(match sort {
        pb::SortBy::Unspecified if search => Order::Relevance,
        pb::SortBy::Unspecified | pb::SortBy::Downloads => Order::Downloads,
        pb::SortBy::Stars => Order::Stars,
        pb::SortBy::Created => Order::Created,
        pb::SortBy::Updated => Order::Updated,
        pb::SortBy::Relevance if search => Order::Relevance,
        pb::SortBy::Relevance => {
            return Err(Error::invalid_argument(
                "sort_by",
                "relevance needs a search query",
            ));
        }
    })
}

fn type_filter(value: i32, field: &str) -> Result<Option<&'static str>> {
    match pb::PackageType::try_from(value) {
        Ok(pb::PackageType::Unspecified) => Ok(None),
        Ok(pb::PackageType::Package) => Ok(Some("package")),
        Ok(pb::PackageType::Theme) => Ok(Some("theme")),
        Err(_) => Err(Error::invalid_argument(field, "unknown package type")),
    }
}

fn enum_value<E: TryFrom<i32>>(value: i32, field: &str) -> Result<E> {
    E::try_from(value).map_err(|_| Error::invalid_argument(field, format!("unknown value {value}")))
}

fn parse_version_text(field: &str, text: &str) -> Result<String> {
    Ok(Semver::parse(field, text)?.to_string())
}

#[tonic::async_trait]
impl registry_service_server::RegistryService for RegistryService {
    async fn sign_in(
        &self,
        request: Request<pb::SignInRequest>,
    ) -> std::result::Result<Response<pb::SignInResponse>, Status> {
        let caller = self.caller(&request).await?;
        Ok(Response::new(pb::SignInResponse {
            user: Some(convert::user(caller.user()?)),
        }))
    }

    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> std::result::Result<Response<pb::CreateUserResponse>, Status> {
        self.require_admin(&request).await?;
        let username = parse_username("username", &request.get_ref().username)?;
        let user = queries::create_user(&self.pool, &username).await?;
        Ok(Response::new(pb::CreateUserResponse {
            user: Some(convert::user(&user)),
        }))
    }

    async fn create_api_token(
        &self,
        request: Request<pb::CreateApiTokenRequest>,
    ) -> std::result::Result<Response<pb::CreateApiTokenResponse>, Status> {
        let caller = self.caller(&request).await?;
        let message = request.into_inner();
        let user = match (&caller, message.username.as_str()) {
            (Caller::Admin, "") => {
                return Err(
                    Error::invalid_argument("username", "the admin must name the user").into(),
                );
            }
            (Caller::Admin, name) => {
                queries::user_by_name(&self.pool, &parse_username("username", name)?).await?
            }
            (
                Caller::User {
                    grant: Grant::Token { .. },
                    ..
                },
                _,
            ) => {
                return Err(Error::PermissionDenied(
                    "API tokens cannot create tokens; sign in with your OAuth token".to_owned(),
                )
                .into());
            }
            (Caller::User { user, .. }, name) if name.is_empty() || name == user.username => {
                user.clone()
            }
            (Caller::User { .. }, _) => {
                return Err(Error::PermissionDenied(
                    "only the admin may create tokens for other users".to_owned(),
                )
                .into());
            }
        };
        let name = message.name.trim();
        if name.is_empty() || name.chars().count() > 64 {
            return Err(Error::invalid_argument("name", "must be 1 to 64 characters").into());
        }
        if message.scopes.is_empty() {
            return Err(Error::invalid_argument("scopes", "at least one scope is required").into());
        }
        let mut scopes = Vec::new();
        for (i, value) in message.scopes.iter().enumerate() {
            let scope = convert::scope_from_pb(enum_value(*value, &format!("scopes[{i}]"))?)
                .ok_or_else(|| Error::invalid_argument(format!("scopes[{i}]"), "must be set"))?;
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        let packages = message
            .packages
            .iter()
            .enumerate()
            .map(|(i, p)| lookup_name(&format!("packages[{i}]"), p))
            .collect::<Result<Vec<_>>>()?;
        let expires_at = match message.expire_time {
            None => None,
            Some(t) => {
                let when = offset_date_time("expire_time", t)?;
                if when <= time::OffsetDateTime::now_utc() {
                    return Err(
                        Error::invalid_argument("expire_time", "must be in the future").into(),
                    );
                }
                Some(when)
            }
        };
        let token = generate_token(API_TOKEN_PREFIX);
        let row = queries::create_api_token(
            &self.pool,
            &user,
            &token.digest(),
            name,
            &scopes,
            (!packages.is_empty()).then_some(packages.as_slice()),
            expires_at,
        )
        .await?;
        Ok(Response::new(pb::CreateApiTokenResponse {
            token: token.expose().to_owned(),
            api_token: Some(convert::api_token(&row)),
        }))
    }

    async fn list_api_tokens(
        &self,
        request: Request<pb::ListApiTokensRequest>,
    ) -> std::result::Result<Response<pb::ListApiTokensResponse>, Status> {
        let caller = self.caller(&request).await?;
        refuse_api_tokens(&caller, "managing tokens")?;
        let wanted = request.get_ref().username.as_str();
        let user = match &caller {
            Caller::Admin if wanted.is_empty() => {
                return Err(
                    Error::invalid_argument("username", "the admin must name the user").into(),
                );
            }
            Caller::Admin => {
                queries::user_by_name(&self.pool, &parse_username("username", wanted)?).await?
            }
            Caller::User { user, .. } if wanted.is_empty() || wanted == user.username => {
                user.clone()
            }
            Caller::User { .. } => {
                return Err(Error::PermissionDenied(
                    "only the admin may list other users' tokens".to_owned(),
                )
                .into());
            }
        };
        let tokens = queries::list_api_tokens(&self.pool, &user).await?;
        Ok(Response::new(pb::ListApiTokensResponse {
            api_tokens: tokens.iter().map(convert::api_token).collect(),
        }))
    }

    async fn revoke_api_token(
        &self,
        request: Request<pb::RevokeApiTokenRequest>,
    ) -> std::result::Result<Response<pb::RevokeApiTokenResponse>, Status> {
        let caller = self.caller(&request).await?;
        refuse_api_tokens(&caller, "managing tokens")?;
        let id = Uuid::parse_str(&request.get_ref().id)
            .map_err(|_| Error::invalid_argument("id", "not a token id"))?;
        let owner = match &caller {
            Caller::Admin => None,
            Caller::User { user, .. } => Some(user.uuid),
        };
        queries::revoke_api_token(&self.pool, id, owner).await?;
        Ok(Response::new(pb::RevokeApiTokenResponse {}))
    }

    async fn publish_package(
        &self,
        request: Request<Streaming<pb::PublishPackageRequest>>,
    ) -> std::result::Result<Response<pb::PublishPackageResponse>, Status> {
        use pb::publish_package_request::Part;
        let caller = self.caller(&request).await?;
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(pb::PublishPackageRequest {
                part: Some(Part::Header(header)),
            }) => header,
            _ => {
                return Err(Error::invalid_argument(
                    "header",
                    "the first message must be the header",
                )
                .into());
            }
        };
        let publish = parse_publish("header", header)?;
        let name = publish.manifest.name.clone();
        caller.require_scope(Scope::PublishNew, Some(name.as_str()))?;
        let publisher = caller.user()?.clone();
        if queries::name_taken(&self.pool, name.as_str()).await? {
            return Err(Error::already_exists("package", name.as_str()).into());
        }
        let chunks = upload_chunks(stream, |m: pb::PublishPackageRequest| match m.part {
            Some(Part::Chunk(bytes)) => Some(bytes),
            _ => None,
        });
        let tarball = self.receive_tarball(chunks, publish.expected).await?;

        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        self.blobs
            .hold(&mut tx, TARBALL_LOCKS, &tarball.sha256)
            .await?;
        let pointer = queries::insert_package(&mut tx, &publish.manifest, &publish.readme).await?;
        queries::insert_version(
            &mut tx,
            pointer,
            &publish.manifest,
            &tarball,
            Some(publisher.uuid),
        )
        .await?;
        queries::recompute_latest(&mut tx, pointer).await?;
        queries::add_owner(&mut tx, pointer, publisher.uuid).await?;
        let version_text = publish.manifest.version.to_string();
        queries::append_event(
            &mut tx,
            "published",
            pointer,
            name.as_str(),
            &version_text,
            "",
        )
        .await?;
        tx.commit().await.map_err(Error::from)?;

        let version = queries::version(&self.pool, pointer, &version_text).await?;
        let (row, _) = queries::package(&self.pool, pointer).await?;
        Ok(Response::new(pb::PublishPackageResponse {
            package: Some(convert::package(&row)),
            version: Some(convert::version(&version)),
        }))
    }

    async fn publish_version(
        &self,
        request: Request<Streaming<pb::PublishVersionRequest>>,
    ) -> std::result::Result<Response<pb::PublishVersionResponse>, Status> {
        use pb::publish_version_request::Part;
        let caller = self.caller(&request).await?;
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(pb::PublishVersionRequest {
                part: Some(Part::Header(header)),
            }) => header,
            _ => {
                return Err(Error::invalid_argument(
                    "header",
                    "the first message must be the header",
                )
                .into());
            }
        };
        let requested = lookup_name("header.package_name", &header.package_name)?;
        let publish = parse_publish(
            "header.publish",
            header
                .publish
                .ok_or_else(|| Error::invalid_argument("header.publish", "is required"))?,
        )?;
        let pointer = queries::resolve(&self.pool, &requested).await?;
        let (current, _) = queries::package(&self.pool, pointer).await?;
        caller.require_scope(Scope::PublishUpdate, Some(&current.name))?;
        self.require_owner(&caller, pointer, "publish versions")
            .await?;
        if publish.manifest.name.as_str() != current.name {
            match PackageName::check(publish.manifest.name.as_str()) {
                Err((NameProblem::Banned, why)) => {
                    return Err(
                        Error::invalid_argument("header.publish.manifest_json.name", why).into(),
                    );
                }
                _ if queries::resolve(&self.pool, publish.manifest.name.as_str())
                    .await
                    .is_ok_and(|p| p != pointer) =>
                {
                    return Err(
                        Error::already_exists("package", publish.manifest.name.as_str()).into(),
                    );
                }
                _ => {}
            }
        }
        let chunks = upload_chunks(stream, |m: pb::PublishVersionRequest| match m.part {
            Some(Part::Chunk(bytes)) => Some(bytes),
            _ => None,
        });
        let tarball = self.receive_tarball(chunks, publish.expected).await?;

        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        let (pointer, old_name) = queries::lock(&mut tx, &requested).await?;
        if let Caller::User { user, .. } = &caller
            && !queries::is_owner(&mut *tx, pointer, user.uuid).await?
        {
            return Err(Error::PermissionDenied(
                "only the package's owners may publish versions".to_owned(),
            )
            .into());
        }
        self.blobs
            .hold(&mut tx, TARBALL_LOCKS, &tarball.sha256)
            .await?;
        let new_name = publish.manifest.name.as_str();
        if new_name != old_name {
            queries::rename(&mut tx, pointer, new_name).await?;
            queries::append_event(&mut tx, "renamed", pointer, new_name, "", &old_name).await?;
        }
        let publisher = match &caller {
            Caller::User { user, .. } => Some(user.uuid),
            Caller::Admin => None,
        };
        queries::insert_version(&mut tx, pointer, &publish.manifest, &tarball, publisher).await?;
        queries::update_package_data(&mut tx, pointer, &publish.manifest, &publish.readme).await?;
        queries::recompute_latest(&mut tx, pointer).await?;
        let version_text = publish.manifest.version.to_string();
        queries::append_event(&mut tx, "published", pointer, new_name, &version_text, "").await?;
        tx.commit().await.map_err(Error::from)?;

        let version = queries::version(&self.pool, pointer, &version_text).await?;
        let (row, _) = queries::package(&self.pool, pointer).await?;
        Ok(Response::new(pb::PublishVersionResponse {
            package: Some(convert::package(&row)),
            version: Some(convert::version(&version)),
        }))
    }

    async fn get_package(
        &self,
        request: Request<pb::GetPackageRequest>,
    ) -> std::result::Result<Response<pb::GetPackageResponse>, Status> {
        let pointer = self.resolve("name", &request.get_ref().name).await?;
        Ok(Response::new(pb::GetPackageResponse {
            package: Some(self.full_package(pointer).await?),
        }))
    }

    async fn get_version(
        &self,
        request: Request<pb::GetVersionRequest>,
    ) -> std::result::Result<Response<pb::GetVersionResponse>, Status> {
        let message = request.get_ref();
        let pointer = self.resolve("package_name", &message.package_name).await?;
        let version = parse_version_text("version", &message.version)?;
        let row = queries::version(&self.pool, pointer, &version).await?;
        Ok(Response::new(pb::GetVersionResponse {
            version: Some(convert::version(&row)),
        }))
    }

    async fn list_versions(
        &self,
        request: Request<pb::ListVersionsRequest>,
    ) -> std::result::Result<Response<pb::ListVersionsResponse>, Status> {
        let message = request.get_ref();
        let size = page_size("page_size", message.page_size, 100, 1000)? as usize;
        let pointer = self.resolve("package_name", &message.package_name).await?;
        let scope = format!("registry.ListVersions?{pointer}");
        let after: Option<String> = self.page_tokens.decode(&scope, &message.page_token)?;
        let versions = queries::versions(&self.pool, pointer).await?;
        let start = match &after {
            None => 0,
            Some(last) => versions
                .iter()
                .position(|v| &v.semver == last)
                .map(|i| i + 1)
                .ok_or_else(|| {
                    Error::invalid_argument("page_token", "its version no longer exists")
                })?,
        };
        let page: Vec<_> = versions.iter().skip(start).take(size).collect();
        let next_page_token = if start + page.len() < versions.len() {
            self.page_tokens
                .encode(&scope, &page.last().map(|v| v.semver.clone()))
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListVersionsResponse {
            versions: page.into_iter().map(convert::version).collect(),
            next_page_token,
        }))
    }

    async fn check_name_availability(
        &self,
        request: Request<pb::CheckNameAvailabilityRequest>,
    ) -> std::result::Result<Response<pb::CheckNameAvailabilityResponse>, Status> {
        let name = &request.get_ref().name;
        let (available, reason, message) = match PackageName::check(name) {
            Err((NameProblem::Invalid, why)) => (false, "INVALID", why),
            Err((NameProblem::Banned, why)) => (false, "BANNED", why),
            Ok(name) if queries::name_taken(&self.pool, name.as_str()).await? => {
                (false, "TAKEN", "a package has or had this name".to_owned())
            }
            Ok(_) => (true, "", String::new()),
        };
        Ok(Response::new(pb::CheckNameAvailabilityResponse {
            available,
            reason: reason.to_owned(),
            message,
        }))
    }

    type DownloadVersionStream = ResponseStream<pb::DownloadVersionResponse>;

    async fn download_version(
        &self,
        request: Request<pb::DownloadVersionRequest>,
    ) -> std::result::Result<Response<Self::DownloadVersionStream>, Status> {
        use pb::download_version_response::Part;
        let message = request.get_ref();
        let requested = lookup_name("package_name", &message.package_name)?;
        let pointer = queries::resolve(&self.pool, &requested).await?;
        let version = match message.version.as_str() {
            "" => queries::latest_version(&self.pool, pointer, &requested).await?,
            v => queries::version(&self.pool, pointer, &parse_version_text("version", v)?).await?,
        };
        if version.deleted_at.is_some() {
            return Err(Error::not_found(
                "version",
                format!("{requested}@{} (deleted)", version.semver),
            )
            .into());
        }
        let sha256 = Sha256::from_slice(&version.tarball_sha256).ok_or_else(|| {
            Error::internal(anyhow::anyhow!(
                "version {} has a malformed digest",
                version.id
            ))
        })?;
        let (_, bytes) = self.blobs.get(&sha256).await?;
        let (tx, rx) = mpsc::channel(8);
        let (pool, shutdown) = (self.pool.clone(), self.shutdown.clone());
        let first = pb::DownloadVersionResponse {
            part: Some(Part::Version(convert::version(&version))),
        };
        tokio::spawn(async move {
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            let chunk = |bytes| pb::DownloadVersionResponse {
                part: Some(Part::Chunk(bytes)),
            };
            if !blobs::send_chunks(&tx, bytes, DOWNLOAD_CHUNK, &shutdown, chunk).await {
                return;
            }
            // Counted once the whole tarball is handed over.
            if let Err(error) = queries::count_download(&pool, version.id, version.package_id).await
            {
                let _ = tx.send(Err(error.into())).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_packages(
        &self,
        request: Request<pb::ListPackagesRequest>,
    ) -> std::result::Result<Response<pb::ListPackagesResponse>, Status> {
        let message = request.into_inner();
        let (packages, next_page_token) = self
            .listing(
                None,
                message.sort_by,
                message.direction,
                message.filter.unwrap_or_default(),
                message.page_size,
                &message.page_token,
            )
            .await?;
        Ok(Response::new(pb::ListPackagesResponse {
            packages,
            next_page_token,
        }))
    }

    async fn search_packages(
        &self,
        request: Request<pb::SearchPackagesRequest>,
    ) -> std::result::Result<Response<pb::SearchPackagesResponse>, Status> {
        let message = request.into_inner();
        let query = message.query.trim();
        if query.is_empty()
            || query.chars().count() > 256
            || !query.chars().any(char::is_alphanumeric)
            || query.contains('\0')
        {
            return Err(Error::invalid_argument(
                "query",
                "must be 1 to 256 characters with at least one letter or digit, and no NUL",
            )
            .into());
        }
        let (packages, next_page_token) = self
            .listing(
                Some(query),
                message.sort_by,
                message.direction,
                message.filter.unwrap_or_default(),
                message.page_size,
                &message.page_token,
            )
            .await?;
        Ok(Response::new(pb::SearchPackagesResponse {
            packages,
            next_page_token,
        }))
    }

    async fn star_package(
        &self,
        request: Request<pb::StarPackageRequest>,
    ) -> std::result::Result<Response<pb::StarPackageResponse>, Status> {
        let count = self.star(request, true).await?;
        Ok(Response::new(pb::StarPackageResponse {
            stargazers_count: count,
        }))
    }

    async fn unstar_package(
        &self,
        request: Request<pb::UnstarPackageRequest>,
    ) -> std::result::Result<Response<pb::UnstarPackageResponse>, Status> {
        let name = request.get_ref().package_name.clone();
        let count = self
            .star(
                request.map(|_| pb::StarPackageRequest { package_name: name }),
                false,
            )
            .await?;
        Ok(Response::new(pb::UnstarPackageResponse {
            stargazers_count: count,
        }))
    }

    async fn list_stargazers(
        &self,
        request: Request<pb::ListStargazersRequest>,
    ) -> std::result::Result<Response<pb::ListStargazersResponse>, Status> {
        let message = request.get_ref();
        let size = page_size("page_size", message.page_size, 100, 1000)?;
        let pointer = self.resolve("package_name", &message.package_name).await?;
        let scope = format!("registry.ListStargazers?{pointer}");
        let after = self.star_position(&scope, &message.page_token)?;
        let rows = queries::stargazers(&self.pool, pointer, after, size + 1).await?;
        let next_page_token = self.next_star_token(&scope, &rows, size, |(u, at)| (*at, u.uuid));
        Ok(Response::new(pb::ListStargazersResponse {
            users: rows
                .iter()
                .take(size as usize)
                .map(|(u, _)| convert::user(u))
                .collect(),
            next_page_token,
        }))
    }

    async fn list_user_stars(
        &self,
        request: Request<pb::ListUserStarsRequest>,
    ) -> std::result::Result<Response<pb::ListUserStarsResponse>, Status> {
        let message = request.get_ref();
        let size = page_size("page_size", message.page_size, 30, 100)?;
        let user =
            queries::user_by_name(&self.pool, &parse_username("username", &message.username)?)
                .await?;
        let scope = format!("registry.ListUserStars?{}", user.uuid);
        let after = self.star_position(&scope, &message.page_token)?;
        let rows = queries::user_stars(&self.pool, user.uuid, after, size + 1).await?;
        let next_page_token = self.next_star_token(&scope, &rows, size, |(p, at)| (*at, p.pointer));
        Ok(Response::new(pb::ListUserStarsResponse {
            packages: rows
                .iter()
                .take(size as usize)
                .map(|(p, _)| convert::package(p))
                .collect(),
            next_page_token,
        }))
    }

    async fn yank_version(
        &self,
        request: Request<pb::YankVersionRequest>,
    ) -> std::result::Result<Response<pb::YankVersionResponse>, Status> {
        let message = request.get_ref();
        let version = self
            .set_yanked(&request, &message.package_name, &message.version, true)
            .await?;
        Ok(Response::new(pb::YankVersionResponse {
            version: Some(version),
        }))
    }

    async fn unyank_version(
        &self,
        request: Request<pb::UnyankVersionRequest>,
    ) -> std::result::Result<Response<pb::UnyankVersionResponse>, Status> {
        let message = request.get_ref();
        let version = self
            .set_yanked(&request, &message.package_name, &message.version, false)
            .await?;
        Ok(Response::new(pb::UnyankVersionResponse {
            version: Some(version),
        }))
    }

    async fn delete_version(
        &self,
        request: Request<pb::DeleteVersionRequest>,
    ) -> std::result::Result<Response<pb::DeleteVersionResponse>, Status> {
        let caller = self.caller(&request).await?;
        let message = request.get_ref();
        let requested = lookup_name("package_name", &message.package_name)?;
        let semver = parse_version_text("version", &message.version)?;
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        let (pointer, name) = queries::lock(&mut tx, &requested).await?;
        caller.require_scope(Scope::Yank, Some(&name))?;
        self.require_owner(&caller, pointer, "delete versions")
            .await?;
        let version = queries::version(&mut *tx, pointer, &semver).await?;
        if version.deleted_at.is_some() {
            return Ok(Response::new(pb::DeleteVersionResponse {}));
        }
        queries::mark_version_deleted(&mut tx, version.id).await?;
        queries::recompute_latest(&mut tx, pointer).await?;
        queries::touch(&mut tx, pointer).await?;
        queries::append_event(&mut tx, "version_deleted", pointer, &name, &semver, "").await?;
        tx.commit().await.map_err(Error::from)?;
        self.release_tarballs(&[version.tarball_sha256]).await?;
        Ok(Response::new(pb::DeleteVersionResponse {}))
    }

    async fn delete_package(
        &self,
        request: Request<pb::DeletePackageRequest>,
    ) -> std::result::Result<Response<pb::DeletePackageResponse>, Status> {
        let caller = self.caller(&request).await?;
        let requested = lookup_name("package_name", &request.get_ref().package_name)?;
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        let (pointer, name) = queries::lock(&mut tx, &requested).await?;
        refuse_api_tokens(&caller, "deleting a package")?;
        self.require_owner(&caller, pointer, "delete the package")
            .await?;
        let tarballs = queries::mark_package_deleted(&mut tx, pointer).await?;
        queries::append_event(&mut tx, "package_deleted", pointer, &name, "", "").await?;
        tx.commit().await.map_err(Error::from)?;
        self.release_tarballs(&tarballs).await?;
        Ok(Response::new(pb::DeletePackageResponse {}))
    }

    async fn add_owner(
        &self,
        request: Request<pb::AddOwnerRequest>,
    ) -> std::result::Result<Response<pb::AddOwnerResponse>, Status> {
        let owners = self
            .change_owner(
                &request,
                &request.get_ref().package_name,
                &request.get_ref().username,
                true,
            )
            .await?;
        Ok(Response::new(pb::AddOwnerResponse { owners }))
    }

    async fn remove_owner(
        &self,
        request: Request<pb::RemoveOwnerRequest>,
    ) -> std::result::Result<Response<pb::RemoveOwnerResponse>, Status> {
        let owners = self
            .change_owner(
                &request,
                &request.get_ref().package_name,
                &request.get_ref().username,
                false,
            )
            .await?;
        Ok(Response::new(pb::RemoveOwnerResponse { owners }))
    }

    async fn list_owners(
        &self,
        request: Request<pb::ListOwnersRequest>,
    ) -> std::result::Result<Response<pb::ListOwnersResponse>, Status> {
        let pointer = self
            .resolve("package_name", &request.get_ref().package_name)
            .await?;
        let owners = queries::owners(&self.pool, pointer).await?;
        Ok(Response::new(pb::ListOwnersResponse {
            owners: owners.iter().map(convert::user).collect(),
        }))
    }

    async fn add_featured(
        &self,
        request: Request<pb::AddFeaturedRequest>,
    ) -> std::result::Result<Response<pb::AddFeaturedResponse>, Status> {
        self.require_admin(&request).await?;
        let pointer = self
            .resolve("package_name", &request.get_ref().package_name)
            .await?;
        queries::set_featured(&self.pool, pointer, true).await?;
        Ok(Response::new(pb::AddFeaturedResponse {}))
    }

    async fn remove_featured(
        &self,
        request: Request<pb::RemoveFeaturedRequest>,
    ) -> std::result::Result<Response<pb::RemoveFeaturedResponse>, Status> {
        self.require_admin(&request).await?;
        let pointer = self
            .resolve("package_name", &request.get_ref().package_name)
            .await?;
        queries::set_featured(&self.pool, pointer, false).await?;
        Ok(Response::new(pb::RemoveFeaturedResponse {}))
    }

    async fn list_featured(
        &self,
        request: Request<pb::ListFeaturedRequest>,
    ) -> std::result::Result<Response<pb::ListFeaturedResponse>, Status> {
        let package_type = type_filter(request.get_ref().r#type, "type")?;
        let rows = queries::featured(&self.pool, package_type).await?;
        Ok(Response::new(pb::ListFeaturedResponse {
            packages: rows.iter().map(convert::package).collect(),
        }))
    }

    type WatchRegistryEventsStream = ResponseStream<pb::WatchRegistryEventsResponse>;

    async fn watch_registry_events(
        &self,
        request: Request<pb::WatchRegistryEventsRequest>,
    ) -> std::result::Result<Response<Self::WatchRegistryEventsStream>, Status> {
        let cursor = request.get_ref().after_seq;
        if cursor < 0 {
            return Err(Error::invalid_argument("after_seq", "must not be negative").into());
        }
        let pool = self.pool.clone();
        let stream = notify::follow(
            &self.notifier,
            EVENTS_CHANNEL,
            self.shutdown.clone(),
            cursor,
            notify::STALL,
            move |after, limit| {
                let pool = pool.clone();
                async move {
                    let events = queries::events_after(&pool, after, limit).await?;
                    Ok(events.iter().map(|e| (e.seq, convert::event(e))).collect())
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

impl RegistryService {
    async fn listing(
        &self,
        query: Option<&str>,
        sort_by: i32,
        direction: i32,
        filter: pb::PackageFilter,
        page_size_requested: i32,
        page_token: &str,
    ) -> Result<(Vec<pb::Package>, String)> {
        let order = order_of(enum_value(sort_by, "sort_by")?, query.is_some())?;
        let ascending = matches!(
            enum_value(direction, "direction")?,
            pb::Direction::Ascending
        );
        let size = page_size("page_size", page_size_requested, 30, 100)? as usize;
        let owner = match filter.owner.as_str() {
            "" => None,
            name => Some(
                queries::user_by_name(&self.pool, &parse_username("filter.owner", name)?)
                    .await?
                    .uuid,
            ),
        };
        let package_type = type_filter(filter.r#type, "filter.type")?;
        let engine = match filter.engine_version.as_str() {
            "" => None,
            v => Some(EditorVersion::parse("filter.engine_version", v)?),
        };
        let scope = format!(
            "registry.{}?q={}&order={order:?}&asc={ascending}&owner={}&type={}&engine={}",
            if query.is_some() { "Search" } else { "List" },
            query.unwrap_or_default(),
            filter.owner,
            filter.r#type,
            filter.engine_version,
        );
        let after: Option<Position> = self.page_tokens.decode(&scope, page_token)?;
        let filter = Filter {
            owner,
            package_type,
        };
        let (packages, next) = self
            .page(
                query,
                order,
                ascending,
                &filter,
                engine.as_ref(),
                after,
                size,
            )
            .await?;
        let token = next
            .map(|p| self.page_tokens.encode(&scope, &p))
            .unwrap_or_default();
        Ok((packages, token))
    }

    async fn star(&self, request: Request<pb::StarPackageRequest>, starred: bool) -> Result<i64> {
        let caller = self.caller(&request).await?;
        let requested = lookup_name("package_name", &request.get_ref().package_name)?;
        let pointer = queries::resolve(&self.pool, &requested).await?;
        caller.require_scope(Scope::Star, Some(&requested))?;
        queries::set_star(&self.pool, pointer, caller.user()?.uuid, starred).await
    }

    fn star_position(&self, scope: &str, token: &str) -> Result<Option<queries::StarPosition>> {
        self.page_tokens.decode(scope, token)
    }

    fn next_star_token<T>(
        &self,
        scope: &str,
        rows: &[T],
        size: i64,
        key: impl Fn(&T) -> queries::StarPosition,
    ) -> String {
        if rows.len() as i64 <= size {
            return String::new();
        }
        self.page_tokens
            .encode(scope, &key(&rows[size as usize - 1]))
    }

    async fn set_yanked<T>(
        &self,
        request: &Request<T>,
        package: &str,
        version: &str,
        yanked: bool,
    ) -> Result<pb::Version> {
        let caller = self.caller(request).await?;
        let requested = lookup_name("package_name", package)?;
        let semver = parse_version_text("version", version)?;
        let mut tx = self.pool.begin().await?;
        let (pointer, name) = queries::lock(&mut tx, &requested).await?;
        caller.require_scope(Scope::Yank, Some(&name))?;
        self.require_owner(&caller, pointer, "yank versions")
            .await?;
        let row = queries::version(&mut *tx, pointer, &semver).await?;
        if row.deleted_at.is_some() {
            return Err(Error::failed_precondition(
                "VERSION_DELETED",
                format!("{name}@{semver}"),
                "the version was deleted",
            ));
        }
        if row.yanked != yanked {
            queries::set_yanked(&mut tx, row.id, yanked).await?;
            queries::recompute_latest(&mut tx, pointer).await?;
            queries::touch(&mut tx, pointer).await?;
            let kind = if yanked { "yanked" } else { "unyanked" };
            queries::append_event(&mut tx, kind, pointer, &name, &semver, "").await?;
        }
        let row = queries::version(&mut *tx, pointer, &semver).await?;
        tx.commit().await?;
        Ok(convert::version(&row))
    }

    async fn change_owner<T>(
        &self,
        request: &Request<T>,
        package: &str,
        username: &str,
        add: bool,
    ) -> Result<Vec<String>> {
        let caller = self.caller(request).await?;
        refuse_api_tokens(&caller, "changing owners")?;
        let requested = lookup_name("package_name", package)?;
        let user =
            queries::user_by_name(&self.pool, &parse_username("username", username)?).await?;
        let mut tx = self.pool.begin().await?;
        let (pointer, _) = queries::lock(&mut tx, &requested).await?;
        self.require_owner(&caller, pointer, "change owners")
            .await?;
        if add {
            queries::add_owner(&mut tx, pointer, user.uuid).await?;
        } else {
            queries::remove_owner(&mut tx, pointer, user.uuid).await?;
        }
        let owners = queries::owners(&mut *tx, pointer).await?;
        tx.commit().await?;
        Ok(owners.into_iter().map(|u| u.username).collect())
    }

    /// Removes tarballs older than `grace` that no live version points at: those of publishes
    /// that failed after their upload (refused manifest, lost race, client gone). A publish
    /// still in flight past the grace period finds its bytes gone and is told to retry.
    pub async fn collect_garbage(&self, grace: Duration) -> Result<usize> {
        let cutoff = std::time::SystemTime::now() - grace;
        let mut removed = 0;
        for (sha256, written) in self.blobs.list().await? {
            if written < cutoff && self.release_tarball(&sha256).await? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes tarballs no live version points at any more. Each check-and-delete holds the
    /// tarball's lock, which publishers of the same bytes take before recording their version.
    async fn release_tarballs(&self, tarballs: &[Vec<u8>]) -> Result<()> {
        for sha256 in tarballs
            .iter()
            .filter_map(|bytes| Sha256::from_slice(bytes))
        {
            self.release_tarball(&sha256).await?;
        }
        Ok(())
    }

    /// Removes one tarball if no live version points at it, holding its lock (which publishers
    /// of the same bytes take before recording their version). Whether it was removed.
    async fn release_tarball(&self, sha256: &Sha256) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        blobs::lock(&mut tx, TARBALL_LOCKS, sha256).await?;
        let unused = !queries::tarball_in_use(&mut *tx, sha256).await?;
        if unused {
            self.blobs.delete(sha256).await?;
        }
        tx.commit().await?;
        Ok(unused)
    }
}
