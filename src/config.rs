//! Command line and environment configuration. Every setting is a flag with an environment
//! fallback, and every default works on a developer machine with no configuration at all.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

use crate::auth::Secret;

#[derive(Debug, Parser)]
#[command(
    name = "quintet",
    version,
    about = "One gRPC server hosting five services (registry, store, market, griot, pds) over one PostgreSQL database",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (the default when no subcommand is given).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Create a Griot author key (Ed25519, PKCS#8 file, mode 0600) and print its did:key.
    GriotKeygen {
        /// Where to write the key; never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a Griot package manifest (JSON file, `-` for stdin) and print it with its `author`
    /// and `signature` fields, ready for RegisterPackage.
    GriotSign {
        /// The author's key file (from griot-keygen).
        #[arg(long)]
        key: PathBuf,
        /// The package's `.tar.gz`: its SHA-256 becomes the manifest's `artifact_sha256`.
        #[arg(long)]
        artifact: Option<PathBuf>,
        /// The manifest file.
        manifest: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Human,
    /// One JSON object per event.
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address of the gRPC listener (plain HTTP/2, h2c).
    #[arg(
        long,
        env = "QUINTET_LISTEN",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub listen: SocketAddr,

    /// PostgreSQL server to use. When unset, quintet runs its own cluster under the data directory.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Directory for the embedded PostgreSQL cluster, local blobs and the generated admin token.
    #[arg(
        long,
        env = "QUINTET_DATA_DIR",
        default_value = "quintet-data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Log filter, in `tracing`'s EnvFilter syntax (e.g. `info,quintet=debug`).
    #[arg(long, env = "QUINTET_LOG", default_value = "info", global = true)]
    pub log: String,

    /// Log format.
    #[arg(
        long,
        env = "QUINTET_LOG_FORMAT",
        value_enum,
        default_value = "human",
        global = true
    )]
    pub log_format: LogFormat,

    /// Address of the Prometheus metrics endpoint (HTTP, `/metrics`). Off when unset.
    #[arg(long, env = "QUINTET_METRICS_LISTEN", global = true)]
    pub metrics_listen: Option<SocketAddr>,

    /// Admin token. When unset, one is generated on first start and written to
    /// `<data dir>/admin-token` (mode 0600).
    #[arg(
        long,
        env = "QUINTET_ADMIN_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub admin_token: Option<Secret>,

    /// Blob storage URL (`file:///path`, `s3://bucket/prefix` with the usual `AWS_*` variables,
    /// e.g. `AWS_ENDPOINT` for an S3-compatible server). Default: `<data dir>/blobs`.
    #[arg(long, env = "QUINTET_BLOB_URL", global = true)]
    pub blob_url: Option<String>,

    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, env = "QUINTET_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024, global = true)]
    pub max_message_bytes: usize,

    /// Upper bound on any request's handling time in seconds; a shorter client `grpc-timeout` wins.
    #[arg(
        long,
        env = "QUINTET_REQUEST_TIMEOUT_SECS",
        default_value_t = 30,
        global = true
    )]
    pub request_timeout_secs: u64,

    /// Requests handled at once across all connections; more wait for a slot.
    #[arg(
        long,
        env = "QUINTET_CONCURRENCY_LIMIT",
        default_value_t = 1024,
        global = true
    )]
    pub concurrency_limit: usize,

    /// Calls per second one bearer token may make, sustained (a token bucket per token, per
    /// process); over it a call fails with RESOURCE_EXHAUSTED. 0 turns the limit off.
    #[arg(
        long,
        env = "QUINTET_RATE_LIMIT_PER_SEC",
        default_value_t = 500,
        global = true
    )]
    pub rate_limit_per_sec: u32,

    /// Calls one bearer token may make at once above its sustained rate (the bucket's size).
    #[arg(
        long,
        env = "QUINTET_RATE_LIMIT_BURST",
        default_value_t = 1000,
        global = true
    )]
    pub rate_limit_burst: u32,

    /// Calls one bearer token may have in flight at once (four times as many for a client
    /// address without a token); past that a call fails with RESOURCE_EXHAUSTED. 0: no cap.
    #[arg(
        long,
        env = "QUINTET_RATE_LIMIT_IN_FLIGHT",
        default_value_t = 128,
        global = true
    )]
    pub rate_limit_in_flight: u32,

    /// Calls per second from one client IP address that carry no token (bursts of twice as
    /// many). 0 turns the limit off.
    #[arg(
        long,
        env = "QUINTET_ANONYMOUS_RATE_LIMIT_PER_SEC",
        default_value_t = 2000,
        global = true
    )]
    pub anonymous_rate_limit_per_sec: u32,

    /// Largest number of database connections this process opens.
    #[arg(
        long,
        env = "QUINTET_DB_MAX_CONNECTIONS",
        default_value_t = 32,
        global = true
    )]
    pub db_max_connections: u32,

    /// How long a graceful shutdown may take before in-flight calls are dropped, in seconds.
    #[arg(
        long,
        env = "QUINTET_SHUTDOWN_GRACE_SECS",
        default_value_t = 10,
        global = true
    )]
    pub shutdown_grace_secs: u64,

    /// Base URL of the registry's GitHub-compatible identity provider (`GET <url>/user`).
    #[arg(
        long,
        env = "QUINTET_REGISTRY_IDENTITY_URL",
        default_value = "https://api.github.com",
        global = true
    )]
    pub registry_identity_url: String,

    /// Largest package tarball the registry accepts, in bytes.
    #[arg(long, env = "QUINTET_REGISTRY_MAX_TARBALL_BYTES", default_value_t = 50 * 1024 * 1024, global = true)]
    pub registry_max_tarball_bytes: u64,

    /// Bucket of the store's `lakery.aws.s3@v1` storage (`s3://bucket/prefix`, with the usual
    /// `AWS_*` variables). Unset: that storage is not offered.
    #[arg(long, env = "QUINTET_STORE_S3_URL", global = true)]
    pub store_s3_url: Option<String>,

    /// Largest content the store keeps inline in the database (`lakery.json_storage_data@v1`).
    #[arg(long, env = "QUINTET_STORE_INLINE_MAX_BYTES", default_value_t = 100 * 1024, global = true)]
    pub store_inline_max_bytes: u64,

    /// Largest single content the store accepts, in bytes.
    #[arg(long, env = "QUINTET_STORE_MAX_CONTENT_BYTES", default_value_t = 64 * 1024 * 1024 * 1024, global = true)]
    pub store_max_content_bytes: u64,

    /// JSON Web Key Set of the market's OpenID Connect issuer (ID-token signing keys).
    #[arg(
        long,
        env = "QUINTET_MARKET_OIDC_JWKS_URL",
        default_value = "https://www.googleapis.com/oauth2/v3/certs",
        global = true
    )]
    pub market_oidc_jwks_url: String,

    /// Accepted `iss` values of ID tokens, comma-separated.
    #[arg(
        long,
        env = "QUINTET_MARKET_OIDC_ISSUERS",
        default_value = "https://accounts.google.com,accounts.google.com",
        value_delimiter = ',',
        global = true
    )]
    pub market_oidc_issuers: Vec<String>,

    /// The OAuth client id ID tokens must be issued to (`aud`). Unset: market sign-in is off.
    #[arg(long, env = "QUINTET_MARKET_OIDC_AUDIENCE", global = true)]
    pub market_oidc_audience: Option<String>,

    /// The market's master key (64 hex digits) wrapping dataset keys; every replica needs the
    /// same. Unset: generated once into `<data dir>/market-master-key` (mode 0600).
    #[arg(
        long,
        env = "QUINTET_MARKET_MASTER_KEY",
        global = true,
        hide_env_values = true
    )]
    pub market_master_key: Option<Secret>,

    /// Largest dataset accepted, in bytes of plaintext.
    #[arg(long, env = "QUINTET_MARKET_MAX_DATASET_BYTES", default_value_t = 1024 * 1024 * 1024, global = true)]
    pub market_max_dataset_bytes: u64,

    /// The Sui full node whose gRPC ledger API verifies market payments.
    #[arg(
        long,
        env = "QUINTET_MARKET_SUI_RPC_URL",
        default_value = "https://fullnode.mainnet.sui.io:443",
        global = true
    )]
    pub market_sui_rpc_url: String,

    /// The Sui address buyers pay (the marketplace's escrow). Unset: purchases are off.
    #[arg(long, env = "QUINTET_MARKET_ESCROW_ADDRESS", global = true)]
    pub market_escrow_address: Option<String>,

    /// Base URL of an OpenAI-compatible API for the market's AI chat (`<url>/chat/completions`).
    /// Unset: SendMessage answers FAILED_PRECONDITION.
    #[arg(long, env = "QUINTET_MARKET_AI_URL", global = true)]
    pub market_ai_url: Option<String>,

    /// The chat model to ask.
    #[arg(
        long,
        env = "QUINTET_MARKET_AI_MODEL",
        default_value = "gpt-4o-mini",
        global = true
    )]
    pub market_ai_model: String,

    /// The API key sent as `Authorization: Bearer` to the AI endpoint.
    #[arg(
        long,
        env = "QUINTET_MARKET_AI_API_KEY",
        global = true,
        hide_env_values = true
    )]
    pub market_ai_api_key: Option<Secret>,

    /// AI chat messages each user may send per minute (across all replicas).
    #[arg(
        long,
        env = "QUINTET_MARKET_AI_MESSAGES_PER_MINUTE",
        default_value_t = 10,
        global = true
    )]
    pub market_ai_messages_per_minute: u32,

    /// The PDS's public URL: published as every account's PDS endpoint in its DID document, and
    /// the audience (`did:web:<host>`) of its session tokens.
    #[arg(
        long,
        env = "QUINTET_PDS_PUBLIC_URL",
        default_value = "http://localhost:50051",
        global = true
    )]
    pub pds_public_url: String,

    /// Handle suffixes PDS accounts may take, comma-separated (e.g. `.example.com`); empty: any.
    #[arg(
        long,
        env = "QUINTET_PDS_HANDLE_DOMAINS",
        value_delimiter = ',',
        global = true
    )]
    pub pds_handle_domains: Vec<String>,

    /// The PDS's master key (64 hex digits) wrapping account keys; every replica needs the same.
    /// Unset: generated once into `<data dir>/pds-master-key` (mode 0600).
    #[arg(
        long,
        env = "QUINTET_PDS_MASTER_KEY",
        global = true,
        hide_env_values = true
    )]
    pub pds_master_key: Option<Secret>,

    /// Hours the PDS firehose keeps events for replay (older cursors start from the oldest kept).
    #[arg(
        long,
        env = "QUINTET_PDS_FIREHOSE_RETENTION_HOURS",
        default_value_t = 72,
        global = true
    )]
    pub pds_firehose_retention_hours: i64,

    /// Seconds a firehose consumer may leave its buffer full (64 events) before it is
    /// disconnected with RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "QUINTET_PDS_FIREHOSE_STALL_SECS",
        default_value_t = 30,
        global = true
    )]
    pub pds_firehose_stall_secs: u64,

    /// Largest blob a PDS account may upload, in bytes.
    #[arg(long, env = "QUINTET_PDS_MAX_BLOB_BYTES", default_value_t = 50 * 1024 * 1024, global = true)]
    pub pds_max_blob_bytes: u64,

    /// Installation workers each server process runs (0: this process runs no jobs).
    #[arg(
        long,
        env = "QUINTET_GRIOT_WORKERS",
        default_value_t = 2,
        global = true
    )]
    pub griot_workers: usize,

    /// Largest package artifact Griot accepts or fetches, in bytes.
    #[arg(long, env = "QUINTET_GRIOT_MAX_ARTIFACT_BYTES", default_value_t = 256 * 1024 * 1024, global = true)]
    pub griot_max_artifact_bytes: u64,

    /// Most bytes one package may unpack to (decompression bombs stop there).
    #[arg(long, env = "QUINTET_GRIOT_MAX_UNPACKED_BYTES", default_value_t = 1024 * 1024 * 1024, global = true)]
    pub griot_max_unpacked_bytes: u64,

    /// Most entries (files, directories, links) one package archive may hold.
    #[arg(
        long,
        env = "QUINTET_GRIOT_MAX_ENTRIES",
        default_value_t = 10_000,
        global = true
    )]
    pub griot_max_entries: u64,

    /// Directory holding the PostgreSQL server binaries (`initdb`, `postgres`) for the embedded
    /// cluster. Default: `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`.
    #[arg(long, env = "QUINTET_PG_BINDIR", global = true)]
    pub pg_bindir: Option<PathBuf>,

    /// System user that runs the embedded PostgreSQL when quintet itself runs as root
    /// (PostgreSQL refuses to run as root).
    #[arg(
        long,
        env = "QUINTET_PG_USER",
        default_value = "postgres",
        global = true
    )]
    pub pg_user: String,
}

impl Config {
    /// The configuration `quintet` gets with no flags: defaults plus the environment.
    pub fn from_env() -> Self {
        Cli::parse_from(["quintet"]).config
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subcommand_defaults_to_serve_and_flags_work_after_it() {
        let cli = Cli::parse_from(["quintet", "migrate", "--listen", "127.0.0.1:1"]);
        assert!(matches!(cli.command, Some(Command::Migrate)));
        assert_eq!(cli.config.listen.port(), 1);
        assert!(Cli::parse_from(["quintet"]).command.is_none());
    }

    #[test]
    fn admin_token_debug_is_redacted() {
        let cli = Cli::parse_from(["quintet", "--admin-token", "very-secret-value"]);
        assert!(!format!("{cli:?}").contains("very-secret-value"));
    }
}
