//! Start-up and shutdown of the gRPC server: the shared state every service gets, the router
//! with its layers (tracing and metrics, per-caller rate limits, concurrency limit, request
//! timeout), health, reflection, and the graceful drain.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::Context;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{codec::CompressionEncoding, transport::server::TcpIncoming};
use tower::ServiceBuilder;

use crate::{
    admin::AdminService,
    auth::AdminAuth,
    blobs::BlobStore,
    config::Config,
    db::DatabaseMode,
    griot::{GriotService, worker},
    health::ServiceHealth,
    market::MarketService,
    notify::Notifier,
    page_token::PageTokens,
    proto::{
        self,
        quintet::{
            admin::v1::admin_service_server::AdminServiceServer,
            griot::v1::griot_service_server::GriotServiceServer,
            market::v1::market_service_server::MarketServiceServer,
            pds::v1::pds_service_server::PdsServiceServer,
            registry::v1::registry_service_server::RegistryServiceServer,
            store::v1::store_service_server::StoreServiceServer,
        },
    },
    rate_limit::{Rate, RateLimitLayer, RateLimiter},
    registry::{Identity, RegistryService},
    store::StoreService,
    telemetry::{RpcLayer, method_paths},
};

/// The `NOTIFY` channels services listen on; each service adds its own.
const CHANNELS: &[&str] = &[
    crate::registry::EVENTS_CHANNEL,
    crate::store::MANIFESTS_CHANNEL,
    crate::griot::JOBS_CHANNEL,
    crate::griot::LOGS_CHANNEL,
    crate::market::PURCHASES_CHANNEL,
    crate::pds::SEQ_CHANNEL,
];
/// How often the database is probed for the health service.
const DB_PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// Uploads unfinished after this long are abandoned and their temporary bytes collected.
const STALE_UPLOAD_AGE: Duration = Duration::from_secs(24 * 3600);
/// Unreferenced bytes younger than this are spared: their upload may still be committing.
const COLLECT_GRACE: Duration = Duration::from_secs(3600);

/// What every service shares: the database, blob storage, notifications, page tokens, the admin
/// check, and the token that tells long-running work to stop.
#[derive(Clone)]
pub struct Shared {
    pub pool: PgPool,
    pub blobs: BlobStore,
    pub notifier: Notifier,
    pub page_tokens: PageTokens,
    pub admin: AdminAuth,
    pub shutdown: CancellationToken,
    pub config: Config,
}

/// A running server.
pub struct ServerHandle {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    stop_accepting: CancellationToken,
    health: ServiceHealth,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    /// Background workers that must hand their work back before the database goes away.
    workers: Vec<JoinHandle<()>>,
    grace: Duration,
    /// Set when this start generated the admin token.
    pub generated_admin_token: Option<PathBuf>,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Drains the server: health turns NOT_SERVING, long streams and workers are told to stop,
    /// new connections are refused and in-flight calls may finish within the grace period.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.health.set_all(false).await;
        self.shutdown.cancel();
        // Workers first: a job handed back now is resumed by another replica at once.
        let workers = futures::future::join_all(std::mem::take(&mut self.workers));
        if tokio::time::timeout(self.grace, workers).await.is_err() {
            tracing::warn!(grace = ?self.grace, "workers still busy after the grace period");
        }
        self.stop_accepting.cancel();
        match tokio::time::timeout(self.grace, &mut self.task).await {
            Ok(result) => result?.context("the gRPC server failed")?,
            Err(_) => {
                tracing::warn!(grace = ?self.grace, "calls still running after the grace period; dropping them");
                self.task.abort();
            }
        }
        Ok(())
    }

    /// Waits until the server stops on its own (it only does on a fatal error).
    pub async fn stopped(&mut self) -> anyhow::Result<()> {
        (&mut self.task).await?.context("the gRPC server failed")
    }
}

/// Starts every service on `config.listen` over an already migrated database.
pub async fn start(
    config: &Config,
    pool: PgPool,
    mode: DatabaseMode,
) -> anyhow::Result<ServerHandle> {
    let shutdown = CancellationToken::new();
    let (admin, generated_admin_token) =
        AdminAuth::init(pool.clone(), config.admin_token.as_ref(), &config.data_dir).await?;
    if let Some(path) = &generated_admin_token {
        tracing::info!(path = %path.display(), "generated the admin token");
    }
    let blobs = match &config.blob_url {
        Some(url) => BlobStore::from_url(url)?,
        None => BlobStore::local(&config.data_dir.join("blobs"))?,
    };
    let shared = Shared {
        page_tokens: PageTokens::load(&pool).await?,
        notifier: Notifier::start(&pool, CHANNELS, shutdown.clone()).await?,
        pool: pool.clone(),
        blobs,
        admin,
        shutdown: shutdown.clone(),
        config: config.clone(),
    };
    spawn_upload_collector(shared.clone());

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = ServiceHealth::new(
        reporter,
        &[
            "quintet.admin.v1.AdminService",
            "quintet.registry.v1.RegistryService",
            "quintet.store.v1.StoreService",
            "quintet.griot.v1.GriotService",
            "quintet.market.v1.MarketService",
            "quintet.pds.v1.PdsService",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ],
    );
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // The rich error details' types, so that grpcurl and other reflection clients can
            // print an ErrorInfo or BadRequest instead of opaque bytes.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let known_methods = method_paths(&[
        proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]);

    let max = config.max_message_bytes;
    let gzip = CompressionEncoding::Gzip;
    let admin_service = AdminServiceServer::new(AdminService {
        auth: shared.admin.clone(),
        pool: pool.clone(),
        mode,
        started_at: SystemTime::now(),
        health: health.clone(),
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(max)
    .accept_compressed(gzip)
    .send_compressed(gzip);

    let registry = RegistryService {
        pool: pool.clone(),
        blobs: shared.blobs.scoped("registry"),
        identity: Identity::new(
            pool.clone(),
            shared.admin.clone(),
            &config.registry_identity_url,
        )?,
        page_tokens: shared.page_tokens.clone(),
        notifier: shared.notifier.clone(),
        shutdown: shutdown.clone(),
        max_tarball_bytes: config.registry_max_tarball_bytes,
    };
    let collector = registry.clone();
    spawn_hourly_collector("registry tarballs", shutdown.clone(), move || {
        let collector = collector.clone();
        async move { Ok(collector.collect_garbage(COLLECT_GRACE).await? as u64) }
    });
    let registry_service = RegistryServiceServer::new(registry)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max)
        .accept_compressed(gzip)
        .send_compressed(gzip);

    let store = StoreService {
        pool: pool.clone(),
        admin: shared.admin.clone(),
        file: shared.blobs.scoped("store"),
        s3: config
            .store_s3_url
            .as_deref()
            .map(BlobStore::from_url)
            .transpose()
            .context("QUINTET_STORE_S3_URL")?,
        inline_max_bytes: config.store_inline_max_bytes,
        max_content_bytes: config.store_max_content_bytes,
        page_tokens: shared.page_tokens.clone(),
        notifier: shared.notifier.clone(),
        shutdown: shutdown.clone(),
    };
    let collector = store.clone();
    spawn_hourly_collector("store bytes", shutdown.clone(), move || {
        let collector = collector.clone();
        async move { Ok(collector.collect_garbage(COLLECT_GRACE).await? as u64) }
    });
    let store_service = StoreServiceServer::new(store)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max)
        .accept_compressed(gzip)
        .send_compressed(gzip);

    let griot = GriotService {
        pool: pool.clone(),
        admin: shared.admin.clone(),
        blobs: shared.blobs.scoped("griot"),
        notifier: shared.notifier.clone(),
        page_tokens: shared.page_tokens.clone(),
        shutdown: shutdown.clone(),
        max_artifact_bytes: config.griot_max_artifact_bytes,
    };
    let collector = griot.clone();
    spawn_hourly_collector("griot artifacts", shutdown.clone(), move || {
        let collector = collector.clone();
        async move { Ok(collector.collect_garbage(COLLECT_GRACE).await? as u64) }
    });
    let workers = worker::spawn_workers(
        std::sync::Arc::new(worker::Runner {
            pool: pool.clone(),
            blobs: shared.blobs.scoped("griot"),
            notifier: shared.notifier.clone(),
            shutdown: shutdown.clone(),
            nodes_dir: config.data_dir.join("nodes"),
            limits: crate::griot::unpack::Limits {
                max_bytes: config.griot_max_unpacked_bytes,
                max_entries: config.griot_max_entries,
            },
            max_artifact_bytes: config.griot_max_artifact_bytes,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(60))
                .build()
                .context("HTTP client for Griot")?,
            worker_id: uuid::Uuid::new_v4(),
        }),
        config.griot_workers,
    );
    let griot_service = GriotServiceServer::new(griot)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max)
        .accept_compressed(gzip)
        .send_compressed(gzip);

    let market = MarketService {
        pool: pool.clone(),
        blobs: shared.blobs.scoped("market"),
        oidc: std::sync::Arc::new(crate::market::oidc::OidcVerifier::new(
            crate::market::oidc::OidcConfig {
                jwks_url: config.market_oidc_jwks_url.clone(),
                issuers: config.market_oidc_issuers.clone(),
                audience: config.market_oidc_audience.clone(),
            },
        )?),
        master_key: crate::market::load_master_key(
            &pool,
            config.market_master_key.as_ref(),
            &config.data_dir,
        )
        .await?,
        page_tokens: shared.page_tokens.clone(),
        max_dataset_bytes: config.market_max_dataset_bytes,
        verifier: std::sync::Arc::new(
            crate::market::payment::SuiPaymentVerifier::new(
                &config.market_sui_rpc_url,
                config.market_escrow_address.as_deref(),
            )
            .context("the market's Sui ledger")?,
        ),
        chat: config
            .market_ai_url
            .as_deref()
            .map(|url| {
                crate::market::chat::ChatEndpoint::new(
                    url,
                    &config.market_ai_model,
                    config.market_ai_api_key.clone(),
                    config.market_ai_messages_per_minute,
                )
                .map(std::sync::Arc::new)
            })
            .transpose()
            .context("the market's AI endpoint")?,
        shutdown: shutdown.clone(),
    };
    let mut workers = workers;
    workers.push(
        crate::market::purchases::Worker {
            pool: pool.clone(),
            notifier: shared.notifier.clone(),
            verifier: market.verifier.clone(),
            master_key: market.master_key.clone(),
            shutdown: shutdown.clone(),
        }
        .spawn(),
    );
    let collector = market.clone();
    spawn_hourly_collector(
        "market datasets and sessions",
        shutdown.clone(),
        move || {
            let collector = collector.clone();
            async move { Ok(collector.collect_garbage(COLLECT_GRACE).await? as u64) }
        },
    );
    let market_service = MarketServiceServer::new(market)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max)
        .accept_compressed(gzip)
        .send_compressed(gzip);

    let pds_audience = url::Url::parse(&config.pds_public_url)
        .ok()
        .and_then(|u| u.host_str().map(|h| format!("did:web:{h}")))
        .context("QUINTET_PDS_PUBLIC_URL is not a URL with a host")?;
    let pds_master_key = crate::master_key::load(
        &pool,
        crate::master_key::Purpose::Pds,
        config.pds_master_key.as_ref(),
        &config.data_dir,
    )
    .await?;
    let pds = crate::pds::PdsService {
        pool: pool.clone(),
        jwt: crate::pds::tokens::JwtKeys::load(&pool, &pds_audience, &pds_master_key).await?,
        master_key: pds_master_key,
        admin: shared.admin.clone(),
        page_tokens: shared.page_tokens.clone(),
        endpoint: config.pds_public_url.trim_end_matches('/').to_owned(),
        handle_domains: config
            .pds_handle_domains
            .iter()
            .filter(|d| !d.is_empty())
            .map(|d| d.to_lowercase())
            .collect(),
        notifier: shared.notifier.clone(),
        retention_hours: config.pds_firehose_retention_hours.max(1),
        firehose_stall: Duration::from_secs(config.pds_firehose_stall_secs.max(1)),
        blobs: shared.blobs.scoped("pds"),
        max_blob_bytes: config.pds_max_blob_bytes,
        shutdown: shutdown.clone(),
    };
    let collector = pds.clone();
    spawn_hourly_collector("pds sessions", shutdown.clone(), move || {
        let collector = collector.clone();
        async move { collector.collect_garbage().await }
    });
    let pds_service = PdsServiceServer::new(pds)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max)
        .accept_compressed(gzip)
        .send_compressed(gzip);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local_addr = listener.local_addr()?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));

    let layers = ServiceBuilder::new()
        .layer(RpcLayer::new(known_methods))
        // Before the concurrency limit: a flooding caller is turned away without taking a slot.
        .layer(RateLimitLayer::new(RateLimiter::new(
            Rate::new(config.rate_limit_per_sec, config.rate_limit_burst),
            Rate::new(
                config.anonymous_rate_limit_per_sec,
                config.anonymous_rate_limit_per_sec.saturating_mul(2),
            ),
            config.rate_limit_in_flight,
        )))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            config.concurrency_limit,
        ))
        .layer(crate::error::UndecodableRequestLayer);
    let router = tonic::transport::Server::builder()
        .timeout(config.request_timeout())
        // Large flow-control windows: uploads of big contents are not held to round trips.
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        // Larger frames: a 1 MiB chunk in 64 frames of 16 KiB costs more than the bytes do.
        .max_frame_size(Some(1024 * 1024 - 1))
        .layer(layers)
        .add_service(
            health_service
                .max_decoding_message_size(max)
                .max_encoding_message_size(max)
                .accept_compressed(gzip)
                .send_compressed(gzip),
        )
        .add_service(
            reflection_v1
                .max_decoding_message_size(max)
                .max_encoding_message_size(max)
                .accept_compressed(gzip)
                .send_compressed(gzip),
        )
        .add_service(
            reflection_v1alpha
                .max_decoding_message_size(max)
                .max_encoding_message_size(max)
                .accept_compressed(gzip)
                .send_compressed(gzip),
        )
        .add_service(admin_service)
        .add_service(registry_service)
        .add_service(store_service)
        .add_service(griot_service)
        .add_service(market_service)
        .add_service(pds_service);

    let stop_accepting = CancellationToken::new();
    let stop = stop_accepting.clone();
    let task = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await
    });
    health.set_all(true).await;
    health.watch_database(pool, DB_PROBE_INTERVAL, shutdown.clone());
    tracing::info!(addr = %local_addr, "serving gRPC (h2c)");
    Ok(ServerHandle {
        local_addr,
        shutdown,
        stop_accepting,
        health,
        task,
        workers,
        grace: config.shutdown_grace(),
        generated_admin_token,
    })
}

/// Runs `collect` every hour until shutdown, logging what it removed: each service's garbage
/// collection (tarballs of failed publishes, bytes of cut-off uploads), with an hour's grace for
/// uploads still in flight.
fn spawn_hourly_collector<F, Fut>(what: &'static str, shutdown: CancellationToken, mut collect: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = crate::error::Result<u64>> + Send,
{
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            }
            match collect().await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, what, "garbage collected"),
                Err(error) => tracing::warn!(%error, what, "garbage collection failed"),
            }
        }
    });
}

/// Collects the temporary bytes of abandoned uploads, hourly.
fn spawn_upload_collector(shared: Shared) {
    tokio::spawn(async move {
        let scopes = [
            shared.blobs.clone(),
            shared.blobs.scoped("registry"),
            shared.blobs.scoped("store"),
            shared.blobs.scoped("griot"),
            shared.blobs.scoped("market"),
            shared.blobs.scoped("pds"),
        ];
        loop {
            for blobs in &scopes {
                match blobs.remove_stale_uploads(STALE_UPLOAD_AGE).await {
                    Ok(0) => {}
                    Ok(removed) => tracing::info!(removed, ?blobs, "removed abandoned uploads"),
                    Err(error) => {
                        tracing::warn!(%error, ?blobs, "cannot collect abandoned uploads")
                    }
                }
            }
            tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            }
        }
    });
}
