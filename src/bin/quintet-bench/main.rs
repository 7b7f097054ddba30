//! `quintet-bench`: drives one RPC scenario against a running server with N concurrent clients
//! for T seconds over real tonic channels, and prints throughput and latency percentiles (HDR
//! histograms, microsecond resolution). `baseline-server` runs a bare tonic server with nothing
//! but the health service, to measure the framework's own limit on the same machine.
//!
//! Each service adds its scenarios to [`Scenario`].

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

mod crash;
mod soak;

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use quintet::proto::quintet::{
    admin::v1::{GetServerInfoRequest, admin_service_client::AdminServiceClient},
    market::v1::{self as market_pb, market_service_client::MarketServiceClient},
};
use tonic::{Request, metadata::MetadataValue, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Parser)]
#[command(name = "quintet-bench", about = "Load generator for quintet")]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Crash safety: drives writes on every service against a spawned server, kills it (and
    /// PostgreSQL) with SIGKILL at random moments, restarts it and checks the invariants.
    Crash(crash::Args),
    /// Soak: a mix of every service's calls from many concurrent clients, plus abusive clients,
    /// with the server's RSS and open file descriptors before and after.
    Soak(soak::Args),
    /// Drive a scenario against a server and report throughput and latency.
    Run(RunArgs),
    /// PDS: record writes per second to one repository and to many in parallel, GetRecord
    /// latency, and the export (GetRepo) of a repository of `records` records.
    Pds {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
        /// Records in the repository that is read and exported.
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        /// Repositories written in parallel.
        #[arg(long, default_value_t = 64)]
        repos: usize,
        /// Seconds each write and read phase runs.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Server process to report the peak RSS (VmHWM) of.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// PDS firehose: `consumers` subscribers while `writers` clients write records into their
    /// own repositories for `seconds`; events per second delivered and write-to-delivery latency
    /// (from the event's sequencing time).
    PdsFirehose {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
        #[arg(long, default_value_t = 100)]
        consumers: usize,
        #[arg(long, default_value_t = 16)]
        writers: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Server process to report CPU and peak RSS of.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// A stand-in Sui full node for trying market purchases without a chain: records one
    /// transfer per `--pay SENDER:RECIPIENT:MIST` (SUI, successful, checkpointed), prints each
    /// one's digest, and serves them on the ledger API until stopped.
    SuiLedger {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        #[arg(long = "pay", value_name = "SENDER:RECIPIENT:MIST")]
        payments: Vec<String>,
    },
    /// A stand-in Sui wallet: signs MESSAGE as a personal message with the Ed25519 key of a
    /// 32-byte seed and prints the wallet's address and the serialized signature (as
    /// ProveSuiAddress takes it).
    SuiSign {
        /// 64 hex digits.
        #[arg(long)]
        seed: String,
        message: String,
    },
    /// Fill a server's registry with generated packages (through the RPCs, as publishers would):
    /// `packages` packages with `versions` versions each, then `downloads` random downloads.
    SeedRegistry {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
        #[arg(long, env = "QUINTET_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: String,
        #[arg(long, default_value_t = 10_000)]
        packages: usize,
        #[arg(long, default_value_t = 3)]
        versions: usize,
        #[arg(long, default_value_t = 20_000)]
        downloads: usize,
        #[arg(long, short = 'c', default_value_t = 32)]
        concurrency: usize,
    },
    /// Store throughput: one large content put and got back, then many small objects, with
    /// ring's SHA-256 speed on the same buffer size measured in the same process for reference.
    Store {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
        #[arg(long, env = "QUINTET_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: String,
        /// Size of the large content, in MiB.
        #[arg(long, default_value_t = 1024)]
        large_mib: usize,
        /// Number of small objects.
        #[arg(long, default_value_t = 10_000)]
        small: usize,
        /// Size of each small object's one content, in bytes.
        #[arg(long, default_value_t = 4096)]
        small_bytes: usize,
        /// Concurrent clients for the small objects.
        #[arg(long, short = 'c', default_value_t = 16)]
        concurrency: usize,
        /// Server process to report the peak RSS (VmHWM) of.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Griot log streaming: how many lines per second one job's log takes (written as a worker
    /// writes them, through the database), then `followers` clients following one job while
    /// lines are written at `rate` per second: delivery latency from write to receipt, and the
    /// server's CPU and RSS. The server must run with QUINTET_GRIOT_WORKERS=0 (this tool is the
    /// worker) and share `database_url`.
    GriotLogs {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
        #[arg(long, env = "QUINTET_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: String,
        /// The server's database.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Lines written as fast as possible, for the throughput figure.
        #[arg(long, default_value_t = 100_000)]
        lines: usize,
        /// Clients following one job.
        #[arg(long, default_value_t = 1000)]
        followers: usize,
        /// Lines per second written while they follow.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// Seconds of following.
        #[arg(long, short = 'd', default_value_t = 20)]
        duration: u64,
        /// HTTP/2 connections the followers share.
        #[arg(long, default_value_t = 20)]
        connections: usize,
        /// Server process to report CPU and RSS of.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Fill the market with generated published datapods, straight into the database (the
    /// search benchmark measures reads, not how the rows arrived): `sellers` users, `datapods`
    /// datasets and datapods with titles and descriptions from a fixed vocabulary. Then prints
    /// EXPLAIN ANALYZE of SearchDatapods' statement.
    SeedMarket {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[arg(long, default_value_t = 100_000)]
        datapods: i64,
        #[arg(long, default_value_t = 1000)]
        sellers: i64,
    },
    /// Upload throughput of the market (plaintext in, encrypted and stored), next to ring's
    /// AES-256-GCM speed on the same segment size measured in this process. Signs a bench user
    /// in through the database.
    MarketUpload {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Size of each upload, in MiB.
        #[arg(long, default_value_t = 256)]
        mib: usize,
        /// Uploads, one after the other.
        #[arg(long, default_value_t = 3)]
        uploads: usize,
    },
    /// Serve only grpc.health.v1 on a bare tonic server (no layers, no database): the
    /// framework's limit, to compare `health` runs against.
    BaselineServer {
        #[arg(long, default_value = "127.0.0.1:50052")]
        listen: SocketAddr,
    },
}

#[derive(Parser)]
struct RunArgs {
    /// What to call.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Concurrent clients (each keeps one call in flight).
    #[arg(long, short = 'c', default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the clients share, round-robin.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Measured seconds.
    #[arg(long, short = 'd', default_value_t = 10)]
    duration: u64,
    /// Unmeasured seconds before, to warm connections and caches.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// For registry-list: which page to fetch repeatedly (walked to once, before measuring).
    #[arg(long, default_value_t = 1)]
    page: usize,
    /// For registry-list and registry-search: the page size.
    #[arg(long, default_value_t = 50)]
    page_size: i32,
    /// For registry scenarios: how many packages seed-registry made.
    #[arg(long, default_value_t = 10_000)]
    packages: usize,
    /// Admin token, for scenarios that need one.
    #[arg(long, env = "QUINTET_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Scenario {
    /// grpc.health.v1.Health/Check for the whole server.
    Health,
    /// quintet.admin.v1.AdminService/GetServerInfo (one database round trip plus the admin
    /// token check: two queries).
    ServerInfo,
    /// RegistryService/GetPackage of a random seeded package (versions, owners, readme).
    RegistryGetPackage,
    /// RegistryService/SearchPackages for a random word of the generated descriptions.
    RegistrySearch,
    /// RegistryService/ListPackages sorted by downloads, the same page each time.
    RegistryList,
    /// MarketService/SearchDatapods: a random word of the seeded vocabulary, a category one
    /// time in three, the sort cycling through relevance, newest, price, rating and sales.
    MarketSearch,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        BenchCommand::Crash(args) => crash::run(args).await,
        BenchCommand::Soak(args) => soak::run(args).await,
        BenchCommand::Pds {
            target,
            records,
            repos,
            seconds,
            server_pid,
        } => {
            pds_bench(
                &target,
                records,
                repos,
                Duration::from_secs(seconds),
                server_pid,
            )
            .await
        }
        BenchCommand::PdsFirehose {
            target,
            consumers,
            writers,
            seconds,
            server_pid,
        } => {
            pds_firehose_bench(
                &target,
                consumers,
                writers,
                Duration::from_secs(seconds),
                server_pid,
            )
            .await
        }
        BenchCommand::SuiLedger { listen, payments } => sui_ledger(listen, &payments).await,
        BenchCommand::SuiSign { seed, message } => sui_sign(&seed, &message),
        BenchCommand::BaselineServer { listen } => baseline_server(listen).await,
        BenchCommand::Run(args) => run(args).await,
        BenchCommand::SeedMarket {
            database_url,
            datapods,
            sellers,
        } => seed_market(&database_url, datapods, sellers).await,
        BenchCommand::MarketUpload {
            target,
            database_url,
            mib,
            uploads,
        } => market_upload(&target, &database_url, mib, uploads).await,
        BenchCommand::GriotLogs {
            target,
            admin_token,
            database_url,
            lines,
            followers,
            rate,
            duration,
            connections,
            server_pid,
        } => {
            griot_logs_bench(GriotLogsArgs {
                target,
                admin_token,
                database_url,
                lines,
                followers,
                rate,
                duration: Duration::from_secs(duration),
                connections,
                server_pid,
            })
            .await
        }
        BenchCommand::Store {
            target,
            admin_token,
            large_mib,
            small,
            small_bytes,
            concurrency,
            server_pid,
        } => {
            store_bench(
                &target,
                &admin_token,
                large_mib,
                small,
                small_bytes,
                concurrency,
                server_pid,
            )
            .await
        }
        BenchCommand::SeedRegistry {
            target,
            admin_token,
            packages,
            versions,
            downloads,
            concurrency,
        } => {
            seed_registry(
                &target,
                &admin_token,
                packages,
                versions,
                downloads,
                concurrency,
            )
            .await
        }
    }
}

/// Words the generated descriptions are made of, and that registry-search looks for.
const WORDS: &[&str] = &[
    "syntax",
    "highlighting",
    "linter",
    "git",
    "terminal",
    "minimap",
    "theme",
    "dark",
    "light",
    "autocomplete",
    "snippets",
    "markdown",
    "preview",
    "python",
    "rust",
    "javascript",
    "format",
    "beautify",
    "icons",
    "files",
    "tree",
    "project",
    "search",
    "replace",
    "vim",
    "emacs",
    "keybindings",
    "tabs",
    "split",
    "panes",
    "status",
    "bar",
    "debugger",
    "language",
    "server",
    "docker",
    "yaml",
    "json",
    "color",
    "picker",
    "emoji",
    "spell",
    "checker",
    "clock",
    "todo",
    "notes",
    "sql",
    "database",
    "remote",
    "sync",
];

/// A tiny deterministic generator (xorshift64*): benchmarks need repeatable spread, not secrecy.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A market search as the `market-search` scenario and the soak make it: a random word of the
/// seeded vocabulary, a category one time in three, the sort cycling through every order.
fn market_search(rng: &mut Rng) -> market_pb::SearchDatapodsRequest {
    let sorts = [
        market_pb::SortBy::Relevance,
        market_pb::SortBy::Newest,
        market_pb::SortBy::PriceAsc,
        market_pb::SortBy::Rating,
        market_pb::SortBy::Sales,
    ];
    market_pb::SearchDatapodsRequest {
        query: MARKET_WORDS[rng.below(MARKET_WORDS.len())].to_owned(),
        category: if rng.below(3) == 0 {
            MARKET_CATEGORIES[rng.below(MARKET_CATEGORIES.len())].to_owned()
        } else {
            String::new()
        },
        sort_by: sorts[rng.below(sorts.len())] as i32,
        page_size: 20,
        ..Default::default()
    }
}

/// A day-long market session for `user`, made in the database (sign-in needs an identity
/// provider); its token.
pub(crate) async fn insert_market_session<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    user: uuid::Uuid,
) -> anyhow::Result<String> {
    let token = quintet::auth::generate_token("qmkt_");
    let expires_at = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    quintet::market::queries::create_session(executor, &token.digest(), user, expires_at).await?;
    Ok(token.expose().to_owned())
}

pub(crate) fn auth<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("tokens are ASCII"),
    );
    request
}

fn package_name(i: usize) -> String {
    format!("bench-package-{i:05}")
}

async fn seed_registry(
    target: &str,
    admin_token: &str,
    packages: usize,
    versions: usize,
    downloads: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    use quintet::proto::quintet::registry::v1::{
        self as pb, registry_service_client::RegistryServiceClient,
    };
    let channel = Channel::from_shared(target.to_owned())?.connect().await?;
    let mut client = RegistryServiceClient::new(channel.clone());
    let _ = client
        .create_user(auth(
            pb::CreateUserRequest {
                username: "bench".into(),
            },
            admin_token,
        ))
        .await;
    let token = client
        .create_api_token(auth(
            pb::CreateApiTokenRequest {
                username: "bench".into(),
                name: "seed".into(),
                scopes: vec![
                    pb::TokenScope::PublishNew as i32,
                    pb::TokenScope::PublishUpdate as i32,
                ],
                ..Default::default()
            },
            admin_token,
        ))
        .await?
        .into_inner()
        .token;
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (channel, token, next) = (channel.clone(), token.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = RegistryServiceClient::new(channel);
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (worker as u64 + 1));
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= packages {
                    return anyhow::Ok(());
                }
                let name = package_name(i);
                let description: Vec<&str> = (0..6).map(|_| WORDS[rng.below(WORDS.len())]).collect();
                let keywords: Vec<&str> = (0..3).map(|_| WORDS[rng.below(WORDS.len())]).collect();
                let readme = format!("# {name}\n\n{} {}.", description.join(" "), keywords.join(", "));
                for v in 0..versions {
                    let manifest = serde_json::json!({
                        "name": name, "version": format!("1.{v}.0"), "description": description.join(" "),
                        "keywords": keywords, "license": "MIT",
                        "engines": {"atom": format!(">=1.{}.0 <2.0.0", rng.below(60))},
                    })
                    .to_string();
                    let header = pb::PublishHeader { manifest_json: manifest, readme: readme.clone(), tarball_sha256: String::new() };
                    let tarball = bytes::Bytes::from([&[0x1f, 0x8b, 8, 0][..], format!("{name}@1.{v}.0").as_bytes()].concat());
                    if v == 0 {
                        use pb::publish_package_request::Part;
                        let messages = vec![
                            pb::PublishPackageRequest { part: Some(Part::Header(header)) },
                            pb::PublishPackageRequest { part: Some(Part::Chunk(tarball)) },
                        ];
                        client.publish_package(auth(tokio_stream::iter(messages), &token)).await?;
                    } else {
                        use pb::publish_version_request::Part;
                        let messages = vec![
                            pb::PublishVersionRequest {
                                part: Some(Part::Header(pb::PublishVersionHeader { package_name: name.clone(), publish: Some(header) })),
                            },
                            pb::PublishVersionRequest { part: Some(Part::Chunk(tarball)) },
                        ];
                        client.publish_version(auth(tokio_stream::iter(messages), &token)).await?;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    println!(
        "published {packages} packages x {versions} versions in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (channel, next) = (channel.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = RegistryServiceClient::new(channel);
            let mut rng = Rng(0x51_7cc1_b727_220a ^ (worker as u64 + 1));
            while next.fetch_add(1, Ordering::Relaxed) < downloads {
                // Skewed towards low numbers, as real popularity is.
                let i = rng.below(packages).min(rng.below(packages));
                let mut stream = client
                    .download_version(pb::DownloadVersionRequest {
                        package_name: package_name(i),
                        version: String::new(),
                    })
                    .await?
                    .into_inner();
                while stream.message().await?.is_some() {}
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    println!(
        "made {downloads} downloads in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn baseline_server(listen: SocketAddr) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("baseline tonic server on {}", listener.local_addr()?);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(
            Channel::from_shared(args.target.clone())?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    let token: Option<MetadataValue<_>> = match (&args.admin_token, args.scenario) {
        (Some(token), _) => Some(format!("Bearer {token}").parse()?),
        (None, Scenario::ServerInfo) => anyhow::bail!("server-info needs --admin-token"),
        (None, _) => None,
    };

    use quintet::proto::quintet::registry::v1::{
        self as pb, registry_service_client::RegistryServiceClient,
    };
    // registry-list fetches one page over and over: walk to it once.
    let mut list_token = String::new();
    if matches!(args.scenario, Scenario::RegistryList) {
        let mut client = RegistryServiceClient::new(channels[0].clone());
        for _ in 1..args.page {
            list_token = client
                .list_packages(pb::ListPackagesRequest {
                    sort_by: pb::SortBy::Downloads as i32,
                    page_size: args.page_size,
                    page_token: list_token.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .next_page_token;
        }
    }
    let (page_size, packages) = (args.page_size, args.packages.max(1));

    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..args.concurrency {
        let channel = channels[i % channels.len()].clone();
        let (measuring, stop, token) = (measuring.clone(), stop.clone(), token.clone());
        let scenario = args.scenario;
        let list_token = list_token.clone();
        tasks.push(tokio::spawn(async move {
            let mut registry = RegistryServiceClient::new(channel.clone());
            let mut market = MarketServiceClient::new(channel.clone());
            let mut rng = Rng(0xdead_beef ^ (i as u64 + 1));
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut errors = 0u64;
            let mut health = HealthClient::new(channel.clone());
            let mut admin = AdminServiceClient::new(channel);
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let ok = match scenario {
                    Scenario::Health => health.check(HealthCheckRequest::default()).await.is_ok(),
                    Scenario::ServerInfo => {
                        let mut request = Request::new(GetServerInfoRequest {});
                        if let Some(token) = &token {
                            request
                                .metadata_mut()
                                .insert("authorization", token.clone());
                        }
                        admin.get_server_info(request).await.is_ok()
                    }
                    Scenario::RegistryGetPackage => registry
                        .get_package(pb::GetPackageRequest {
                            name: package_name(rng.below(packages)),
                        })
                        .await
                        .is_ok(),
                    Scenario::RegistrySearch => registry
                        .search_packages(pb::SearchPackagesRequest {
                            query: WORDS[rng.below(WORDS.len())].to_owned(),
                            page_size,
                            ..Default::default()
                        })
                        .await
                        .is_ok(),
                    Scenario::MarketSearch => market
                        .search_datapods(market_search(&mut rng))
                        .await
                        .is_ok(),
                    Scenario::RegistryList => registry
                        .list_packages(pb::ListPackagesRequest {
                            sort_by: pb::SortBy::Downloads as i32,
                            page_size,
                            page_token: list_token.clone(),
                            ..Default::default()
                        })
                        .await
                        .is_ok(),
                };
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        histogram.saturating_record(start.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            (histogram, errors)
        }));
    }

    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);

    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for task in tasks {
        let (histogram, task_errors) = task.await?;
        total.add(&histogram)?;
        errors += task_errors;
    }
    let ms = |q: f64| total.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "scenario={} concurrency={} connections={} duration={:.1}s",
        scenario_name(args.scenario),
        args.concurrency,
        channels.len(),
        elapsed.as_secs_f64()
    );
    println!(
        "requests={} errors={} throughput={:.0}/s",
        total.len(),
        errors,
        total.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency_ms p50={:.3} p90={:.3} p99={:.3} max={:.3}",
        ms(0.50),
        ms(0.90),
        ms(0.99),
        total.max() as f64 / 1000.0
    );
    if errors > 0 {
        anyhow::bail!("{errors} requests failed");
    }
    Ok(())
}

fn scenario_name(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::Health => "health",
        Scenario::ServerInfo => "server-info",
        Scenario::RegistryGetPackage => "registry-get-package",
        Scenario::RegistrySearch => "registry-search",
        Scenario::RegistryList => "registry-list",
        Scenario::MarketSearch => "market-search",
    }
}

const MIB: usize = 1024 * 1024;

const MARKET_WORDS: &[&str] = &[
    "weather",
    "rainfall",
    "temperature",
    "stock",
    "prices",
    "crypto",
    "trades",
    "traffic",
    "sensors",
    "energy",
    "solar",
    "wind",
    "health",
    "hospital",
    "census",
    "population",
    "retail",
    "sales",
    "transactions",
    "satellite",
    "imagery",
    "shipping",
    "ports",
    "flights",
    "airline",
    "housing",
    "rents",
    "mortgage",
    "elections",
    "votes",
    "sports",
    "football",
    "music",
    "streaming",
    "social",
    "sentiment",
    "news",
    "climate",
    "ocean",
    "forest",
];
const MARKET_CATEGORIES: &[&str] = &[
    "weather",
    "finance",
    "health",
    "mobility",
    "energy",
    "society",
    "media",
    "environment",
];

async fn seed_market(database_url: &str, datapods: i64, sellers: i64) -> anyhow::Result<()> {
    let pool = quintet::db::connect(database_url.parse()?, 2).await?;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO market.users (google_id, email, name, salt)
         SELECT 'bench-' || i, 'bench-' || i || '@example.com', 'Seller ' || i,
                md5(i::text) || md5((i + 1)::text)
         FROM generate_series(1, $1) i ON CONFLICT DO NOTHING",
    )
    .bind(sellers)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO market.datasets (id, seller_id, blob_id, storage_size, wrapped_key,
             encryption_key_hash, encryption_iv, file_type, file_size, data_hash)
         SELECT gen_random_uuid(), s.id, md5('b' || i || s.id) || md5('c' || i || s.id), 1016,
                '\\x00'::bytea, md5('k' || i) || md5('l' || i), substr(md5('n' || i), 1, 24),
                'text/csv', 1000, md5('d' || i) || md5('e' || i)
         FROM generate_series(1, $1) i
         JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM market.users
               WHERE google_id LIKE 'bench-%') s ON s.n = i % $2",
    )
    .bind(datapods)
    .bind(sellers)
    .execute(&pool)
    .await?;
    let word =
        |salt: &str| format!("w[1 + abs(hashtext(ds.id::text || '{salt}')) % cardinality(w)]");
    let title = format!(
        "initcap({}) || ' ' || {} || ' data'",
        word("t1"),
        word("t2")
    );
    let description = (1..=8)
        .map(|k| word(&format!("d{k}")))
        .collect::<Vec<_>>()
        .join(" || ' ' || ");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO market.datapods (seller_id, title, description, category, price_sui,
             walrus_blob_id, walrus_storage_size, encryption_key_hash, encryption_iv, file_type,
             file_size, data_hash, published, purchase_count, average_rating, dataset_id, created_at)
         SELECT ds.seller_id, {title}, {description}, c[1 + h % cardinality(c)],
                (h % 100000)::numeric / 100, ds.blob_id, ds.storage_size, ds.encryption_key_hash,
                ds.encryption_iv, ds.file_type, ds.file_size, ds.data_hash, h % 10 <> 0, h % 500,
                ((h / 7) % 501)::numeric / 100, ds.id, now() - (h % 10000000) * interval '1 second'
         FROM market.datasets ds
         CROSS JOIN LATERAL (SELECT abs(hashtext(ds.id::text)) AS h) x
         CROSS JOIN (SELECT $1::text[] AS w, $2::text[] AS c) v
         WHERE NOT EXISTS (SELECT 1 FROM market.datapods p WHERE p.dataset_id = ds.id)"
    )))
    .bind(MARKET_WORDS)
    .bind(MARKET_CATEGORIES)
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE market.datapods, market.users")
        .execute(&pool)
        .await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM market.datapods WHERE published")
        .fetch_one(&pool)
        .await?;
    println!(
        "seeded in {:.1} s: {count} published datapods",
        started.elapsed().as_secs_f64()
    );
    use quintet::market::queries::{Sort, search_sql};
    for (sort, query, category) in [
        (Sort::Relevance, "weather", None),
        (Sort::Newest, "weather", Some("finance")),
        (Sort::PriceAscending, "", None),
    ] {
        println!("\n== EXPLAIN ANALYZE: sort {sort:?}, query {query:?}, category {category:?}");
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {}",
            search_sql(sort)
        )))
        .bind(query)
        .bind(category)
        .bind(0i64)
        .bind(None::<i64>)
        .bind(0f64)
        .bind(None::<String>)
        .bind(None::<uuid::Uuid>)
        .bind(21i64)
        .fetch_all(&pool)
        .await?;
        for line in plan {
            println!("{line}");
        }
    }
    pool.close().await;
    Ok(())
}

async fn market_upload(
    target: &str,
    database_url: &str,
    mib: usize,
    uploads: usize,
) -> anyhow::Result<()> {
    use quintet::market::crypto;
    // ring's AES-256-GCM on the market's segment size, in this process, for reference.
    let key = crypto::random_key();
    let sealer = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &key)
            .map_err(|_| anyhow::anyhow!("AES key"))?,
    );
    let mut segment = vec![7u8; crypto::SEGMENT];
    let rounds = (mib * MIB / crypto::SEGMENT).max(1);
    let started = Instant::now();
    for i in 0..rounds {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&(i as u64).to_be_bytes());
        let tag = sealer
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::empty(),
                &mut segment,
            )
            .map_err(|_| anyhow::anyhow!("seal"))?;
        let _ = std::hint::black_box(tag);
    }
    let ring_rate =
        (rounds * crypto::SEGMENT) as f64 / MIB as f64 / started.elapsed().as_secs_f64();
    println!("ring AES-256-GCM, 64 KiB segments, one core: {ring_rate:.0} MiB/s");

    // A bench user with a session, made in the database (sign-in needs an identity provider).
    let pool = quintet::db::connect(database_url.parse()?, 1).await?;
    let token = quintet::auth::generate_token("qmkt_");
    let user: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO market.users (google_id, email, name, salt)
         VALUES ('bench-uploader', 'bench-uploader@example.com', 'Uploader', repeat('0', 64))
         ON CONFLICT (google_id) DO UPDATE SET updated_at = now() RETURNING id",
    )
    .fetch_one(&pool)
    .await?;
    let expires_at = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    quintet::market::queries::create_session(&pool, &token.digest(), user, expires_at).await?;
    pool.close().await;

    let channel = Channel::from_shared(target.to_owned())?
        .initial_stream_window_size(Some(8 * MIB as u32))
        .initial_connection_window_size(Some(16 * MIB as u32))
        .connect()
        .await?;
    let mut client = MarketServiceClient::new(channel).max_encoding_message_size(4 * MIB);
    let chunk = bytes::Bytes::from((0..MIB).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>());
    for round in 0..uploads {
        let messages = std::iter::once(market_pb::UploadDatasetRequest {
            part: Some(market_pb::upload_dataset_request::Part::Header(
                market_pb::DatasetHeader {
                    file_type: "application/octet-stream".into(),
                },
            )),
        })
        .chain((0..mib).map({
            let chunk = chunk.clone();
            move |i| {
                // Each upload's bytes differ, so that nothing is deduplicated.
                let mut bytes = chunk.to_vec();
                bytes[..8].copy_from_slice(&((round * mib + i) as u64).to_be_bytes());
                market_pb::UploadDatasetRequest {
                    part: Some(market_pb::upload_dataset_request::Part::Chunk(bytes.into())),
                }
            }
        }));
        let mut request = Request::new(tokio_stream::iter(messages));
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", token.expose()).parse()?,
        );
        let started = Instant::now();
        let dataset = client.upload_dataset(request).await?.into_inner().dataset;
        let seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            dataset.map(|d| d.file_size) == Some((mib * MIB) as i64),
            "the upload stored another size"
        );
        println!(
            "upload {}: {mib} MiB in {seconds:.2} s = {:.0} MiB/s ({:.0}% of ring's AES-GCM alone)",
            round + 1,
            mib as f64 / seconds,
            100.0 * (mib as f64 / seconds) / ring_rate
        );
    }
    Ok(())
}

/// A memory figure of a process from `/proc/<pid>/status` (`VmHWM`, `VmRSS`...), in MiB.
fn status_mib(pid: Option<u32>, field: &str) -> String {
    pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .and_then(|status| {
            status
                .lines()
                .find(|l| {
                    l.strip_prefix(field)
                        .is_some_and(|rest| rest.starts_with(':'))
                })
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| format!("{:.1} MiB", kb / 1024.0))
        .unwrap_or_else(|| "n/a".to_owned())
}

/// Peak resident memory so far.
fn peak_rss_mib(pid: Option<u32>) -> String {
    status_mib(pid, "VmHWM")
}

async fn store_bench(
    target: &str,
    admin_token: &str,
    large_mib: usize,
    small: usize,
    small_bytes: usize,
    concurrency: usize,
    server_pid: Option<u32>,
) -> anyhow::Result<()> {
    use pb::put_object_request::Part;
    use quintet::proto::quintet::store::v1::{
        self as pb, store_service_client::StoreServiceClient,
    };
    let channel = Channel::from_shared(target.to_owned())?
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 * MIB as u32))
        .initial_connection_window_size(Some(16 * MIB as u32))
        .max_frame_size(MIB as u32 - 1)
        .connect()
        .await?;
    let client = || {
        StoreServiceClient::new(channel.clone())
            .max_decoding_message_size(64 * MIB)
            .max_encoding_message_size(64 * MIB)
    };
    let header = |name: &str| pb::PutObjectRequest {
        part: Some(Part::Content(pb::ContentHeader {
            content_name: name.to_owned(),
            content_type: "application/octet-stream".to_owned(),
            serializer_name: "raw@v1".to_owned(),
            serializer_type: pb::SerializerType::Stream as i32,
            ..Default::default()
        })),
    };
    let manifest = || pb::PutObjectRequest {
        part: Some(Part::Manifest(pb::ManifestHeader {
            class_id: "3f1c1a52-8a52-4a6e-9d0c-1d2f0e6a7b11".to_owned(),
            unpacker_name: "bench@v1".to_owned(),
            tags: None,
        })),
    };

    // ring's SHA-256 on 1 MiB buffers: the hashing limit both directions pay.
    let buffer = vec![0x5au8; MIB];
    let started = Instant::now();
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for _ in 0..1024 {
        context.update(&buffer);
    }
    std::hint::black_box(context.finish());
    println!(
        "ring sha256 (1 MiB buffers): {:.0} MB/s",
        1024.0 * MIB as f64 / 1e6 / started.elapsed().as_secs_f64()
    );

    // One large content in 1 MiB messages, each different so nothing deduplicates.
    let base = bytes::Bytes::from(vec![0xa5u8; MIB]);
    let seed = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos(),
    );
    let header_large = header("large");
    let first = manifest();
    let messages =
        futures::StreamExt::map(futures::stream::iter(0..large_mib + 2), move |i| match i {
            0 => first.clone(),
            1 => header_large.clone(),
            n => {
                let mut piece = bytes::BytesMut::from(&base[..]);
                piece[..8].copy_from_slice(&(n as u64 ^ seed).to_le_bytes());
                pb::PutObjectRequest {
                    part: Some(Part::Chunk(piece.freeze())),
                }
            }
        });
    let started = Instant::now();
    let stored = client()
        .put_object(auth(messages, admin_token))
        .await?
        .into_inner();
    let put_secs = started.elapsed().as_secs_f64();
    let total = (large_mib * MIB) as f64;
    println!(
        "put {large_mib} MiB: {put_secs:.2}s, {:.0} MB/s",
        total / 1e6 / put_secs
    );
    let id = stored.manifest.map(|m| m.id).unwrap_or_default();
    let started = Instant::now();
    let mut stream = client()
        .get_object(auth(pb::GetObjectRequest { manifest_id: id }, admin_token))
        .await?
        .into_inner();
    let mut received = 0usize;
    while let Some(message) = stream.message().await? {
        if let Some(pb::get_object_response::Part::Chunk(bytes)) = message.part {
            received += bytes.len();
        }
    }
    let get_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(received == large_mib * MIB, "got {received} bytes back");
    println!(
        "get {large_mib} MiB (verified): {get_secs:.2}s, {:.0} MB/s",
        total / 1e6 / get_secs
    );
    println!("server peak RSS so far: {}", peak_rss_mib(server_pid));

    // Many small objects.
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ids = Arc::new(std::sync::Mutex::new(Vec::with_capacity(small)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, ids, token) = (next.clone(), ids.clone(), admin_token.to_owned());
        let (mut client, first, value) = (client(), manifest(), header("value"));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= small {
                    return anyhow::Ok(());
                }
                let mut data = vec![(i % 251) as u8; small_bytes.max(8)];
                data[..8].copy_from_slice(&(i as u64 ^ seed).to_le_bytes());
                let messages = vec![
                    first.clone(),
                    value.clone(),
                    pb::PutObjectRequest {
                        part: Some(Part::Chunk(data.into())),
                    },
                ];
                let stored = client
                    .put_object(auth(tokio_stream::iter(messages), &token))
                    .await?
                    .into_inner();
                ids.lock()
                    .unwrap()
                    .push(stored.manifest.map(|m| m.id).unwrap_or_default());
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "put {small} objects of {small_bytes} B: {secs:.1}s, {:.0} objects/s, {:.1} MB/s",
        small as f64 / secs,
        (small * small_bytes) as f64 / 1e6 / secs
    );
    let ids: Vec<String> = std::mem::take(&mut *ids.lock().unwrap());
    let ids = Arc::new(ids);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, ids, token) = (next.clone(), ids.clone(), admin_token.to_owned());
        let mut client = client();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(id) = ids.get(i) else {
                    return anyhow::Ok(());
                };
                let mut stream = client
                    .get_object(auth(
                        pb::GetObjectRequest {
                            manifest_id: id.clone(),
                        },
                        &token,
                    ))
                    .await?
                    .into_inner();
                while stream.message().await?.is_some() {}
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "get {small} objects: {secs:.1}s, {:.0} objects/s, {:.1} MB/s",
        small as f64 / secs,
        (small * small_bytes) as f64 / 1e6 / secs
    );
    println!("server peak RSS: {}", peak_rss_mib(server_pid));
    Ok(())
}

struct GriotLogsArgs {
    target: String,
    admin_token: String,
    database_url: String,
    lines: usize,
    followers: usize,
    rate: u64,
    duration: Duration,
    connections: usize,
    server_pid: Option<u32>,
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces) start after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks_per_second())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Resident memory now.
fn rss_mib(pid: Option<u32>) -> String {
    status_mib(pid, "VmRSS")
}

fn unix_micros() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

async fn griot_logs_bench(args: GriotLogsArgs) -> anyhow::Result<()> {
    use quintet::{
        griot::{queries, worker::JobLog},
        proto::quintet::griot::v1::{
            self as pb, griot_service_client::GriotServiceClient,
            stream_installation_logs_response::Event,
        },
    };
    use tokio_stream::StreamExt;

    let pool = quintet::db::connect(args.database_url.parse()?, 4).await?;
    let bearer: MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {}", args.admin_token).parse()?;
    fn with<T>(message: T, bearer: &MetadataValue<tonic::metadata::Ascii>) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", bearer.clone());
        request
    }
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(Channel::from_shared(args.target.clone())?.connect().await?);
    }
    let mut client = GriotServiceClient::new(channels[0].clone());

    // One package to install; its jobs are claimed by this process, acting as the worker.
    let artifact = {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        builder.append_data(&mut header, "bench", &b"ok"[..])?;
        builder.into_inner()?.finish()?
    };
    let scratch = std::env::temp_dir().join(format!("quintet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let (key, artifact_path) = (scratch.join("author.key"), scratch.join("bench.tgz"));
    std::fs::write(&artifact_path, &artifact)?;
    quintet::griot::sign::keygen(&key)?;
    let manifest = quintet::griot::sign::sign_manifest(
        &key,
        r#"{"name":"bench","node_class":"bench","version":"1.0.0"}"#,
        Some(&artifact_path),
    )?;
    let _ = std::fs::remove_dir_all(&scratch);
    let package = client
        .register_package(with(
            tokio_stream::iter(vec![
                pb::RegisterPackageRequest {
                    part: Some(pb::register_package_request::Part::Header(
                        pb::PackageHeader {
                            manifest_json: manifest.to_string(),
                            ..Default::default()
                        },
                    )),
                },
                pb::RegisterPackageRequest {
                    part: Some(pb::register_package_request::Part::Chunk(artifact.into())),
                },
            ]),
            &bearer,
        ))
        .await?
        .into_inner()
        .package
        .expect("a package");
    let worker_id = uuid::Uuid::new_v4();
    let mut claim = async |target: &str| -> anyhow::Result<(uuid::Uuid, i64)> {
        let job = client
            .create_installation(with(
                pb::CreateInstallationRequest {
                    package_id: package.package_id.clone(),
                    target_node_id: target.to_owned(),
                    ..Default::default()
                },
                &bearer,
            ))
            .await?
            .into_inner()
            .installation
            .expect("a job");
        let claimed = queries::claim_job(&pool, worker_id, 3600.0)
            .await?
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no job to claim: is the server running with QUINTET_GRIOT_WORKERS=0?"
                )
            })?;
        anyhow::ensure!(
            claimed.job_id.to_string() == job.job_id,
            "claimed another job"
        );
        Ok((claimed.job_id, claimed.log_count))
    };

    // 1. Throughput of one job's log.
    let (job, written) = claim("bench-throughput").await?;
    let log = JobLog::start(pool.clone(), job, worker_id, written);
    let started = Instant::now();
    for i in 0..args.lines {
        log.info(&format!("line {i} of the throughput run")).await;
    }
    log.close().await;
    let elapsed = started.elapsed();
    let stored: i64 =
        sqlx::query_scalar("SELECT log_count FROM griot.installations WHERE job_id = $1")
            .bind(job)
            .fetch_one(&pool)
            .await?;
    anyhow::ensure!(
        stored == args.lines as i64,
        "{stored} lines stored of {}",
        args.lines
    );
    println!(
        "one job's log: {} lines in {:.2} s = {:.0} lines/s (committed, notified)",
        args.lines,
        elapsed.as_secs_f64(),
        args.lines as f64 / elapsed.as_secs_f64()
    );
    queries::finish_job(&pool, job, worker_id, "completed", "bench").await?;

    // 2. Many followers of one job.
    let (job, written) = claim("bench-followers").await?;
    let log = JobLog::start(pool.clone(), job, worker_id, written);
    log.info("warm-up").await;
    let mut followers = Vec::new();
    for i in 0..args.followers {
        let mut client = GriotServiceClient::new(channels[i % channels.len()].clone());
        let request = with(
            pb::StreamInstallationLogsRequest {
                job_id: job.to_string(),
                from_seq: 1,
                follow: true,
            },
            &bearer,
        );
        followers.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut stream = client.stream_installation_logs(request).await?.into_inner();
            let mut lines = 0u64;
            let mut ready = Some(());
            while let Some(message) = stream.next().await {
                match message?.event {
                    Some(Event::Line(line)) => {
                        lines += 1;
                        if line.message == "warm-up" {
                            ready.take();
                        } else if let Some(sent) = line
                            .message
                            .rsplit(' ')
                            .next()
                            .and_then(|t| t.parse::<i64>().ok())
                        {
                            histogram.record((unix_micros() - sent).max(1) as u64)?;
                        }
                    }
                    Some(Event::Finished(_)) => break,
                    None => {}
                }
            }
            anyhow::ensure!(ready.is_none(), "the follower missed the first line");
            Ok::<_, anyhow::Error>((lines, histogram))
        }));
    }
    // Until every follower has its stream open and has caught up (each reads the warm-up line).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_before = args.server_pid.and_then(cpu_seconds);
    println!(
        "server RSS with {} followers attached: {}",
        args.followers,
        rss_mib(args.server_pid)
    );
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut ticker = tokio::time::interval(interval);
    let total = args.rate * args.duration.as_secs();
    let started = Instant::now();
    for i in 0..total {
        ticker.tick().await;
        log.info(&format!("line {i} written at {}", unix_micros()))
            .await;
    }
    log.close().await;
    let wall = started.elapsed();
    queries::finish_job(&pool, job, worker_id, "completed", "bench").await?;
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut delivered = 0u64;
    for follower in followers {
        let (lines, histogram) = follower.await??;
        delivered += lines;
        all.add(histogram)?;
    }
    // Until the last follower had its last line, which may be after the last write.
    let delivery_wall = started.elapsed();
    let cpu_after = args.server_pid.and_then(cpu_seconds);
    let expected = (total + 1) * args.followers as u64;
    anyhow::ensure!(
        delivered == expected,
        "{delivered} lines delivered of {expected}"
    );
    println!(
        "{} followers x {} lines at {}/s: {} deliveries in {:.1} s, {:.0}/s; latency write->receipt p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.followers,
        total,
        args.rate,
        delivered,
        delivery_wall.as_secs_f64(),
        delivered as f64 / delivery_wall.as_secs_f64(),
        all.value_at_quantile(0.50) as f64 / 1000.0,
        all.value_at_quantile(0.99) as f64 / 1000.0,
        all.max() as f64 / 1000.0,
    );
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        println!(
            "server CPU while following: {:.2} s over {:.1} s = {:.0}% of one core; RSS now {}, peak {}",
            after - before,
            wall.as_secs_f64(),
            100.0 * (after - before) / wall.as_secs_f64(),
            rss_mib(args.server_pid),
            peak_rss_mib(args.server_pid)
        );
    }
    pool.close().await;
    Ok(())
}

async fn sui_ledger(listen: SocketAddr, payments: &[String]) -> anyhow::Result<()> {
    use quintet::market::standin_ledger::{StandInLedger, Transfer};
    let ledger = StandInLedger::default();
    for payment in payments {
        let parts: Vec<&str> = payment.split(':').collect();
        let [sender, recipient, mist] = parts[..] else {
            anyhow::bail!("--pay takes SENDER:RECIPIENT:MIST, not {payment:?}");
        };
        let digest = ledger.transfer(&Transfer {
            sender,
            recipient,
            coin_type: quintet::market::payment::SUI_COIN_TYPE,
            amount_mist: mist.parse()?,
            checkpointed: true,
            succeeded: true,
        });
        println!("{digest}");
    }
    ledger.serve(tokio::net::TcpListener::bind(listen).await?);
    eprintln!("stand-in Sui ledger on http://{listen}");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

fn sui_sign(seed: &str, message: &str) -> anyhow::Result<()> {
    let bytes: Vec<u8> = quintet::market::crypto::from_hex(seed)
        .filter(|b: &Vec<u8>| b.len() == 32)
        .ok_or_else(|| anyhow::anyhow!("--seed must be 64 hex digits"))?;
    let key = ring::signature::Ed25519KeyPair::from_seed_unchecked(&bytes)
        .map_err(|_| anyhow::anyhow!("not an Ed25519 seed"))?;
    let public: [u8; 32] = ring::signature::KeyPair::public_key(&key)
        .as_ref()
        .try_into()?;
    println!(
        "{}",
        serde_json::json!({
            "address": quintet::market::sui::ed25519_address(&public),
            "signature": quintet::market::sui::sign_personal_message(&key, message.as_bytes()),
        })
    );
    Ok(())
}

type PdsClient = quintet::proto::quintet::pds::v1::pds_service_client::PdsServiceClient<Channel>;

/// Creates a PDS account; returns (did, access token).
async fn pds_account(client: &mut PdsClient, handle: &str) -> anyhow::Result<(String, String)> {
    use quintet::proto::quintet::pds::v1 as pb;
    let session = client
        .create_account(pb::CreateAccountRequest {
            handle: handle.into(),
            email: format!("{}@bench.test", handle.replace('.', "-")),
            password: "bench password".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .session
        .ok_or_else(|| anyhow::anyhow!("no session"))?;
    Ok((session.did, session.access_jwt))
}

fn pds_post(i: usize) -> Option<prost_types::Struct> {
    quintet::proto::json_to_struct(&serde_json::json!({
        "$type": "app.bsky.feed.post",
        "text": format!("benchmark post number {i}, with a little text to make it realistic"),
        "createdAt": "2026-11-24T00:00:00.000Z",
    }))
}

/// Single CreateRecord calls from `clients` tasks, each writing to repository `i % repos`, for
/// `duration`: writes/s and latency.
async fn pds_writes(
    channel: &Channel,
    repos: &[(String, String)],
    clients: usize,
    duration: Duration,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    use quintet::proto::quintet::pds::v1 as pb;
    let stop = Instant::now() + duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = PdsClient::new(channel.clone());
        let (did, token) = repos[c % repos.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("histogram");
            let mut i = 0;
            while Instant::now() < stop {
                let started = Instant::now();
                client
                    .create_record(auth(
                        pb::CreateRecordRequest {
                            repo: did.clone(),
                            collection: "app.bsky.feed.post".into(),
                            record: pds_post(i),
                            ..Default::default()
                        },
                        &token,
                    ))
                    .await?;
                histogram.record(started.elapsed().as_micros() as u64)?;
                i += 1;
            }
            anyhow::Ok(histogram)
        }));
    }
    let started = Instant::now();
    let mut total = Histogram::<u64>::new(3)?;
    for task in tasks {
        total.add(task.await??)?;
    }
    Ok((total.len() as f64 / started.elapsed().as_secs_f64(), total))
}

fn latency_line(histogram: &Histogram<u64>) -> String {
    format!(
        "p50 {:.2} ms, p99 {:.2} ms",
        histogram.value_at_quantile(0.5) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0
    )
}

async fn pds_bench(
    target: &str,
    records: usize,
    repo_count: usize,
    duration: Duration,
    server_pid: Option<u32>,
) -> anyhow::Result<()> {
    use quintet::proto::quintet::pds::v1 as pb;
    let channel = Channel::from_shared(target.to_owned())?.connect().await?;
    let mut client = PdsClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let run = unix_micros() % 1_000_000;

    // Writes to one repository (serialised by its lock), from 4 clients to keep it busy.
    let one = vec![pds_account(&mut client, &format!("one{run}.bench.test")).await?];
    let (rate, histogram) = pds_writes(&channel, &one, 4, duration).await?;
    println!(
        "CreateRecord, one repository, 4 clients: {rate:.0} writes/s, {}",
        latency_line(&histogram)
    );

    // Writes to many repositories at once, one client each.
    let mut many = Vec::new();
    for r in 0..repo_count {
        many.push(pds_account(&mut client, &format!("r{r}x{run}.bench.test")).await?);
    }
    let (rate, histogram) = pds_writes(&channel, &many, repo_count, duration).await?;
    println!(
        "CreateRecord, {repo_count} repositories in parallel: {rate:.0} writes/s, {}",
        latency_line(&histogram)
    );

    // A repository of `records` records, filled in batches of 200.
    let (did, token) = pds_account(&mut client, &format!("big{run}.bench.test")).await?;
    let started = Instant::now();
    let batches: Vec<Vec<pb::Write>> = (0..records)
        .collect::<Vec<_>>()
        .chunks(200)
        .map(|chunk| {
            chunk
                .iter()
                .map(|i| pb::Write {
                    action: Some(pb::write::Action::Create(pb::WriteCreate {
                        collection: "app.bsky.feed.post".into(),
                        rkey: format!("p{i:08}"),
                        value: pds_post(*i),
                    })),
                })
                .collect()
        })
        .collect();
    for writes in batches {
        client
            .apply_writes(auth(
                pb::ApplyWritesRequest {
                    repo: did.clone(),
                    writes,
                    swap_commit: String::new(),
                },
                &token,
            ))
            .await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "ApplyWrites, 200 records a commit, into one repository: {records} records in {elapsed:.1} s ({:.0} records/s)",
        records as f64 / elapsed
    );

    // GetRecord: random keys, 16 clients.
    let stop = Instant::now() + duration;
    let mut tasks = Vec::new();
    for c in 0..16u64 {
        let mut client = PdsClient::new(channel.clone());
        let did = did.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("histogram");
            let mut rng = Rng(c * 7919 + 1);
            while Instant::now() < stop {
                let key = format!("p{:08}", rng.below(records));
                let started = Instant::now();
                client
                    .get_record(pb::GetRecordRequest {
                        repo: did.clone(),
                        collection: "app.bsky.feed.post".into(),
                        rkey: key,
                        cid: String::new(),
                    })
                    .await?;
                histogram.record(started.elapsed().as_micros() as u64)?;
            }
            anyhow::Ok(histogram)
        }));
    }
    let started = Instant::now();
    let mut reads = Histogram::<u64>::new(3)?;
    for task in tasks {
        reads.add(task.await??)?;
    }
    println!(
        "GetRecord, 16 clients: {:.0} reads/s, {}",
        reads.len() as f64 / started.elapsed().as_secs_f64(),
        latency_line(&reads)
    );

    // The export, counted as it streams: right after the writes, and again once the database
    // has settled (vacuum, caches); the second file is then imported back (ImportRepo replaces
    // the repository with it after checking every block, the signature and the tree).
    let mut exported = Vec::new();
    for pass in ["just after the writes", "again"] {
        let started = Instant::now();
        let mut stream = client
            .get_repo(pb::GetRepoRequest {
                did: did.clone(),
                since: String::new(),
            })
            .await?
            .into_inner();
        let mut file = Vec::new();
        while let Some(message) = stream.message().await? {
            file.extend_from_slice(&message.chunk);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let blocks = quintet::pds::car::read(&file)?.blocks.len();
        println!(
            "GetRepo of {records} records, {pass}: {:.1} MB in {elapsed:.2} s = {:.1} MB/s, {blocks} blocks = {:.0} blocks/s",
            file.len() as f64 / 1e6,
            file.len() as f64 / 1e6 / elapsed,
            blocks as f64 / elapsed
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        exported = file;
    }
    let started = Instant::now();
    let chunks: Vec<pb::ImportRepoRequest> = exported
        .chunks(1 << 20)
        .map(|c| pb::ImportRepoRequest {
            chunk: c.to_vec().into(),
        })
        .collect();
    let imported = client
        .import_repo(auth(tokio_stream::iter(chunks), &token))
        .await?
        .into_inner();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "ImportRepo of the same file: {} blocks, {} records in {elapsed:.2} s = {:.0} blocks/s",
        imported.blocks,
        imported.records,
        imported.blocks as f64 / elapsed
    );
    println!("server peak RSS: {}", peak_rss_mib(server_pid));
    Ok(())
}

async fn pds_firehose_bench(
    target: &str,
    consumers: usize,
    writers: usize,
    duration: Duration,
    server_pid: Option<u32>,
) -> anyhow::Result<()> {
    use quintet::proto::quintet::pds::v1::{self as pb, subscribe_repos_response::Event};
    let channel = Channel::from_shared(target.to_owned())?.connect().await?;
    let mut client = PdsClient::new(channel.clone());
    let run = unix_micros() % 1_000_000;
    let mut repos = Vec::new();
    for w in 0..writers {
        repos.push(pds_account(&mut client, &format!("fw{w}x{run}.bench.test")).await?);
    }
    // Subscribers: live from now, each on its own connection's stream.
    let stop = Arc::new(AtomicBool::new(false));
    let mut followers = Vec::new();
    for _ in 0..consumers {
        let mut client = PdsClient::new(channel.clone()).max_decoding_message_size(64 << 20);
        let mut stream = client
            .subscribe_repos(pb::SubscribeReposRequest { cursor: None })
            .await?
            .into_inner();
        let stop = stop.clone();
        followers.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new(3).expect("histogram");
            let mut events = 0u64;
            let mut last_seq = 0;
            let mut gaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let next = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
                let Ok(message) = next else { continue };
                let Some(event) = message? else { break };
                if last_seq > 0 && event.seq != last_seq + 1 {
                    gaps += 1;
                }
                last_seq = event.seq;
                events += 1;
                if let (Some(Event::Commit(_)), Some(time)) = (&event.event, &event.time) {
                    let sent = time.seconds * 1_000_000 + i64::from(time.nanos) / 1000;
                    latency.record((unix_micros() - sent).max(0) as u64)?;
                }
            }
            anyhow::Ok((events, gaps, latency))
        }));
    }
    let cpu_before = server_pid.and_then(cpu_seconds);
    let (rate, _) = pds_writes(&channel, &repos, writers, duration).await?;
    // Let the followers drain what was written.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let cpu = server_pid
        .and_then(cpu_seconds)
        .zip(cpu_before)
        .map(|(after, before)| (after - before) / (duration.as_secs_f64() + 2.0));
    let mut latency = Histogram::<u64>::new(3)?;
    let (mut delivered, mut gaps) = (0u64, 0u64);
    for follower in followers {
        let (events, missed, histogram) = follower.await??;
        delivered += events;
        gaps += missed;
        latency.add(histogram)?;
    }
    let seconds = duration.as_secs_f64();
    println!(
        "{writers} writers: {rate:.0} commits/s; {consumers} consumers: {:.0} events/s delivered in all ({:.0} per consumer), {gaps} gaps",
        delivered as f64 / seconds,
        delivered as f64 / seconds / consumers as f64
    );
    println!("write-to-delivery latency: {}", latency_line(&latency));
    if let Some(cpu) = cpu {
        println!("server CPU: {:.0}% of a core", cpu * 100.0);
    }
    println!("server peak RSS: {}", peak_rss_mib(server_pid));
    Ok(())
}
