//! The test harness: one PostgreSQL per test process (the one in `DATABASE_URL`, or a throwaway
//! embedded cluster), a migrated template database, and a fresh database cloned from it for every
//! test server. Servers run in-process on `127.0.0.1:0` and are reached through real gRPC clients.

use std::{path::PathBuf, sync::OnceLock};

use quintet::{
    auth::{Secret, generate_token},
    config::{Cli, Config},
    db::{self, DatabaseMode, EmbeddedOptions, EmbeddedPostgres},
    server::{self, ServerHandle},
};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, postgres::PgConnectOptions};
use tonic::{Request, metadata::MetadataValue, transport::Channel};

enum UrlBase {
    /// `DATABASE_URL` as given.
    External(String),
    /// The embedded cluster's socket directory.
    Socket(PathBuf),
}

struct TestCluster {
    /// Connection options to the maintenance database (`postgres`), from which test databases
    /// are created.
    admin: PgConnectOptions,
    /// How a separate process reaches the cluster: a URL without the database name's path.
    url: UrlBase,
    template: String,
    /// Kept alive for the whole process; [`remove_cluster_at_exit`] stops it and removes its
    /// directory when the tests exit.
    _embedded: Option<EmbeddedPostgres>,
    _dir: Option<tempfile::TempDir>,
}

static CLUSTER: OnceLock<TestCluster> = OnceLock::new();

/// The embedded cluster's postmaster and directory, for [`remove_cluster_at_exit`].
static CLUSTER_FILES: OnceLock<(i32, PathBuf)> = OnceLock::new();

/// Statics are never dropped, so the cluster's directory (tens of megabytes) would outlive every
/// test run: at exit, the postmaster is told to shut down (fast), waited for briefly, and its
/// directory removed.
extern "C" fn remove_cluster_at_exit() {
    let Some((pid, dir)) = CLUSTER_FILES.get() else {
        return;
    };
    // SAFETY: plain syscalls on a child process of ours.
    unsafe {
        libc::kill(*pid, libc::SIGINT);
        for _ in 0..100 {
            if libc::waitpid(*pid, std::ptr::null_mut(), libc::WNOHANG) != 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn cluster() -> &'static TestCluster {
    // Set up on a thread of its own with its own runtime: tests each run on their own runtime,
    // and the cluster outlives them all.
    CLUSTER.get_or_init(|| {
        std::thread::spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(set_up_cluster())
        })
        .join()
        .expect("test cluster set-up panicked")
    })
}

async fn set_up_cluster() -> TestCluster {
    let (admin, url, embedded, dir) = match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let options: PgConnectOptions = url.parse().expect("DATABASE_URL");
            (
                options.database("postgres"),
                UrlBase::External(url),
                None,
                None,
            )
        }
        Err(_) => {
            let dir = tempfile::Builder::new()
                .prefix("quintet-test-")
                .tempdir()
                .expect("temp dir");
            let mut options = EmbeddedOptions::new(dir.path());
            options.durable = false;
            options.max_connections = 400;
            let embedded = EmbeddedPostgres::start(options)
                .await
                .expect("the test harness needs the PostgreSQL server binaries (apt-get install postgresql) or DATABASE_URL");
            let socket = UrlBase::Socket(embedded.pgdata().to_owned());
            if CLUSTER_FILES
                .set((embedded.pid(), dir.path().to_owned()))
                .is_ok()
            {
                // SAFETY: registers a plain function, once.
                unsafe { libc::atexit(remove_cluster_at_exit) };
            }
            (
                embedded.connect_options_for("postgres"),
                socket,
                Some(embedded),
                Some(dir),
            )
        }
    };
    let template = format!("quintet_template_{}", std::process::id());
    let mut conn = connect(&admin).await;
    exec(&mut conn, &format!("DROP DATABASE IF EXISTS {template}")).await;
    exec(&mut conn, &format!("CREATE DATABASE {template}")).await;
    conn.close().await.unwrap();
    let pool = db::connect(admin.clone().database(&template), 2)
        .await
        .unwrap();
    db::migrate(&pool).await.unwrap();
    pool.close().await;
    TestCluster {
        admin,
        url,
        template,
        _embedded: embedded,
        _dir: dir,
    }
}

async fn connect(options: &PgConnectOptions) -> PgConnection {
    options
        .clone()
        .disable_statement_logging()
        .connect()
        .await
        .expect("connect to the test PostgreSQL")
}

async fn exec(conn: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A fresh, migrated database of its own.
pub async fn fresh_database() -> PgConnectOptions {
    let cluster = cluster();
    let name = format!("quintet_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = connect(&cluster.admin).await;
    exec(
        &mut conn,
        &format!("CREATE DATABASE {name} TEMPLATE {}", cluster.template),
    )
    .await;
    conn.close().await.unwrap();
    cluster.admin.clone().database(&name)
}

/// A `DATABASE_URL` for a fresh, migrated database, for a separate process.
pub async fn fresh_database_url() -> String {
    let options = fresh_database().await;
    let database = options.get_database().expect("a database name").to_owned();
    match &cluster().url {
        UrlBase::Socket(dir) => format!(
            "postgres://{}@localhost/{database}?host={}",
            quintet::db::embedded::SUPERUSER,
            dir.display()
        ),
        UrlBase::External(url) => {
            let mut parsed = url::Url::parse(url).expect("DATABASE_URL");
            parsed.set_path(&database);
            parsed.to_string()
        }
    }
}

/// A pool on a fresh database.
pub async fn fresh_pool() -> PgPool {
    db::connect(fresh_database().await, 8).await.unwrap()
}

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub channel: Channel,
    pub admin_token: Secret,
    pub database: PgConnectOptions,
    pub data_dir: tempfile::TempDir,
    handle: Option<ServerHandle>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server on a fresh database; `adjust` may change its configuration first.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_on(fresh_database().await, adjust).await
    }

    /// Another server on this one's database: a second replica.
    pub async fn replica(&self, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_on(self.database.clone(), adjust).await
    }

    async fn start_on(database: PgConnectOptions, adjust: impl FnOnce(&mut Config)) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = test_config(data_dir.path().to_owned());
        adjust(&mut config);
        let pool = db::connect(database.clone(), 8).await.unwrap();
        let handle = server::start(&config, pool, DatabaseMode::External)
            .await
            .expect("start the server");
        let addr = handle.local_addr();
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("connect to the test server");
        let admin_token = match &config.admin_token {
            Some(token) => token.clone(),
            None => Secret::new(
                std::fs::read_to_string(data_dir.path().join("admin-token"))
                    .unwrap()
                    .trim(),
            ),
        };
        TestServer {
            addr,
            channel,
            admin_token,
            database,
            data_dir,
            handle: Some(handle),
        }
    }

    /// Drains the server as SIGTERM would.
    pub async fn shutdown(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown().await.unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            // Not drained: the test is over, its runtime is going away.
            drop(handle);
        }
    }
}

fn test_config(data_dir: PathBuf) -> Config {
    let mut config = default_config();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.database_url = None;
    config.data_dir = data_dir;
    config.admin_token = Some(generate_token("qadm_test_"));
    config.blob_url = None;
    // Replicas of one database must share the market's master key.
    config.market_master_key = Some(Secret::new("7".repeat(64)));
    config.pds_master_key = Some(Secret::new("8".repeat(64)));
    config.metrics_listen = None;
    config.shutdown_grace_secs = 2;
    // Tests drive thousands of calls with one token; the limiter has tests of its own.
    config.rate_limit_per_sec = 0;
    config.anonymous_rate_limit_per_sec = 0;
    config.rate_limit_in_flight = 0;
    config
}

/// A request carrying `token` as its bearer token.
pub fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    request
}

/// The defaults of an empty command line. The QUINTET_* variables of whoever runs the tests
/// would leak into it, so they are refused rather than silently used.
fn default_config() -> Config {
    use clap::Parser;
    let leaked: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("QUINTET_"))
        .collect();
    assert!(
        leaked.is_empty(),
        "unset these before running the tests: {leaked:?}"
    );
    Cli::parse_from(["quintet"]).config
}

/// The field an INVALID_ARGUMENT names (its first `BadRequest` violation); empty if none.
pub fn field_of(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations[0].field.clone())
        .unwrap_or_default()
}

/// The stable `ErrorInfo.reason` of an error; empty if none.
pub fn reason_of(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

/// Reads one HTTP/1.1 request from a loopback test server's socket: its head (request line and
/// headers) and its body (`content-length` bytes). `None` if the client went away first.
pub async fn read_http_request(socket: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&request[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse().ok())
                })
                .unwrap_or(0);
            while request.len() < end + 4 + length {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            return Some((head, request[end + 4..end + 4 + length].to_vec()));
        }
        match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
    }
}

/// The PDS's session-signing key as a test server stores it: wrapped under the harness's PDS
/// master key (`test_config`), in `core.server_keys`.
pub async fn pds_jwt_key(pool: &PgPool) -> [u8; 32] {
    let wrapped: Vec<u8> =
        sqlx::query_scalar("SELECT key FROM core.server_keys WHERE name = 'pds.jwt_key.wrapped'")
            .fetch_one(pool)
            .await
            .unwrap();
    quintet::master_key::MasterKey::from_bytes(quintet::master_key::Purpose::Pds, [0x88; 32])
        .unwrap(&wrapped, b"pds.jwt_key")
        .unwrap()
}
