//! `quintet-bench soak`: every service at once, from many concurrent clients for a fixed window,
//! with abusive clients alongside, and the server's memory and file descriptors before, at the
//! end and after the load has settled.
//!
//! The well-behaved clients each keep one call in flight (a closed loop, no think time) and each
//! has its own account and token where the service has accounts (registry users, PDS accounts,
//! market sessions); the store, Griot's writes and the admin service only know the admin token,
//! which all of them share, so those calls are paced together under the server's per-token rate
//! limit (`--admin-rate`). Calls that carry no token (health checks, Griot's public reads) all
//! come from 127.0.0.1 and share one per-IP bucket: benches/soak.sh raises the anonymous limit.
//!
//! The abusive clients: one token flooding unary calls (it must be answered RESOURCE_EXHAUSTED,
//! reason RATE_LIMITED, while nobody else sees an error), and slow readers that open server
//! streams (the PDS firehose, registry and store watches, a Griot log follow) and never read
//! them until the window is over: the server must end them, or at least hold no more for them
//! than its bounded buffers.
//!
//! Everything else (accounts, seeded packages, objects, datapods, records) is set up before the
//! window. The verdict fails when a well-behaved call failed, when the flood was never limited
//! (or got more calls through than its limit allows), when a slow reader's stream was refused or
//! ended with anything but RESOURCE_EXHAUSTED, or when the server holds more file descriptors
//! once the load has settled than before it (plus `--fd-margin`).

use std::{
    collections::{BTreeMap, HashSet},
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use quintet::proto::quintet::{
    admin::v1::{self as admin_pb, admin_service_client::AdminServiceClient},
    griot::v1::{self as griot_pb, griot_service_client::GriotServiceClient},
    market::v1::{self as market_pb, market_service_client::MarketServiceClient},
    pds::v1::{self as pds_pb, pds_service_client::PdsServiceClient},
    registry::v1::{self as registry_pb, registry_service_client::RegistryServiceClient},
    store::v1::{self as store_pb, store_service_client::StoreServiceClient},
};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt;

use super::{
    MARKET_CATEGORIES, MARKET_WORDS, Rng, WORDS, auth, market_search, package_name, pds_post,
};

#[derive(clap::Args)]
pub struct Args {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// The server's admin token (store, Griot's writes, admin service, registry users).
    #[arg(long, env = "QUINTET_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// The server's database: market sign-in needs an identity provider, so the market clients'
    /// users and sessions are made there.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Well-behaved concurrent clients, each keeping one call in flight.
    #[arg(long, short = 'c', default_value_t = 1000)]
    clients: usize,
    /// Seconds of load.
    #[arg(long, short = 'd', default_value_t = 60)]
    duration: u64,
    /// HTTP/2 connections the well-behaved clients share (default: one each).
    #[arg(long)]
    connections: Option<usize>,
    /// The server's process, for its RSS (/proc/<pid>/status) and open file descriptors.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds to wait after the load before the last RSS and fd reading.
    #[arg(long, default_value_t = 8)]
    settle: u64,
    /// File descriptors the settled server may hold beyond what it held before the load.
    #[arg(long, default_value_t = 8)]
    fd_margin: usize,
    /// Client deadline of each call (sent as grpc-timeout).
    #[arg(long, default_value_t = 30)]
    call_timeout: u64,
    /// Seconds a Griot installation may take from its creation until its log says it ended
    /// (the installers follow it; longer counts as an error).
    #[arg(long, default_value_t = 60)]
    job_timeout: u64,
    /// Calls per second all admin-token calls together are paced to (0: unpaced). The server
    /// limits each token (QUINTET_RATE_LIMIT_PER_SEC, 500 by default) and the store, Griot's
    /// writes and the admin service all share the admin token.
    #[arg(long, default_value_t = 400)]
    admin_rate: u32,
    /// Registry packages seeded (x2 versions) for the readers, unless already there.
    #[arg(long, default_value_t = 300)]
    registry_packages: usize,
    /// Slow readers per stream kind (firehose, registry watch, store watch, Griot log follow).
    #[arg(long, default_value_t = 2)]
    slow_readers: usize,
    /// The server's QUINTET_PDS_FIREHOSE_STALL_SECS, for the report.
    #[arg(long, default_value_t = 30)]
    firehose_stall_secs: u64,
    /// Calls per second the flooding token sends, whatever the answers.
    #[arg(long, default_value_t = 2000)]
    flood_rate: u32,
    /// Most calls the flooding token has outstanding.
    #[arg(long, default_value_t = 2048)]
    flood_in_flight: usize,
    /// The server's QUINTET_RATE_LIMIT_PER_SEC, to check the flood against.
    #[arg(long, default_value_t = 500)]
    rate_limit_per_sec: u32,
    /// The server's QUINTET_RATE_LIMIT_BURST, to check the flood against.
    #[arg(long, default_value_t = 1000)]
    rate_limit_burst: u32,
}

/// What a well-behaved client does, and how many of every 1,000 clients do it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
enum Role {
    Health,
    Admin,
    RegistryReader,
    RegistryWriter,
    Store,
    GriotReader,
    GriotInstaller,
    MarketReader,
    MarketSeller,
    PdsWriter,
    PdsReader,
}

const MIX: &[(Role, usize)] = &[
    (Role::Health, 30),
    (Role::Admin, 10),
    (Role::RegistryReader, 200),
    (Role::RegistryWriter, 30),
    (Role::Store, 120),
    (Role::GriotReader, 100),
    (Role::GriotInstaller, 10),
    (Role::MarketReader, 150),
    (Role::MarketSeller, 10),
    (Role::PdsWriter, 140),
    (Role::PdsReader, 200),
];

impl Role {
    fn describe(self) -> &'static str {
        match self {
            Role::Health => "health: grpc.health.v1 Check (no token)",
            Role::Admin => "admin: GetServerInfo (admin token)",
            Role::RegistryReader => "registry readers: search, get, list, versions (own token)",
            Role::RegistryWriter => "registry writers: publish versions, star, unstar (own user)",
            Role::Store => "store: put/get small objects, manifests, lists (admin token)",
            Role::GriotReader => "griot readers: get/list packages (no token)",
            Role::GriotInstaller => "griot installers: install, follow the log (admin token)",
            Role::MarketReader => "market readers: search, get datapods, reviews (own session)",
            Role::MarketSeller => "market sellers: own datapods, price updates (own session)",
            Role::PdsWriter => "pds writers: create/get/list records in own repo (own account)",
            Role::PdsReader => "pds readers: others' records, repos (own account)",
        }
    }
}

/// Roles for `clients` clients in the proportions of [`MIX`], shuffled so that shared
/// connections carry a mix.
fn assign_roles(clients: usize) -> anyhow::Result<Vec<Role>> {
    anyhow::ensure!(
        clients >= 2 * MIX.len(),
        "--clients must be at least {}",
        2 * MIX.len()
    );
    let mut roles = Vec::with_capacity(clients);
    for &(role, per_mille) in MIX {
        let n = (per_mille * clients).div_ceil(1000).max(1);
        roles.extend(std::iter::repeat_n(role, n));
    }
    // Rounding up made a few too many: take them from the largest group.
    while roles.len() > clients {
        let position = roles
            .iter()
            .rposition(|r| *r == Role::PdsReader)
            .expect("the largest group");
        roles.remove(position);
    }
    let mut rng = Rng(0x5eed_50a4);
    for i in (1..roles.len()).rev() {
        roles.swap(i, rng.below(i + 1));
    }
    Ok(roles)
}

/// A client's own account, made during setup.
#[derive(Clone)]
enum Identity {
    None,
    Registry {
        token: String,
        /// The package a writer owns and publishes versions of.
        package: Option<String>,
    },
    Pds {
        did: String,
        token: String,
    },
    Market {
        token: String,
        /// A seller's own datapods.
        datapods: Vec<String>,
    },
}

/// Spaces the calls made with the admin token so that all of them together stay under a rate.
struct Pacer {
    interval: Duration,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Pacer {
    fn new(rate: u32) -> Self {
        Pacer {
            interval: if rate == 0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(1.0 / f64::from(rate))
            },
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    async fn wait(&self) {
        if self.interval.is_zero() {
            return;
        }
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// What every client may read: the seeded data, the admin token and its pacer.
struct Ctx {
    admin_token: String,
    pacer: Pacer,
    run: String,
    registry_packages: usize,
    /// Seeded store objects: (manifest id, content bytes).
    store_objects: Vec<(String, usize)>,
    griot_packages: Vec<String>,
    datapods: Vec<String>,
    /// The PDS writers' repositories; each holds records `soak0`..`soak4` from the setup.
    pds_repos: Vec<String>,
    stop: AtomicBool,
    job_timeout: Duration,
}

/// One operation's results: latencies of the calls that succeeded (µs), failures by code.
struct OpStats {
    latency: Histogram<u64>,
    /// Code (and ErrorInfo reason) -> (count, the first message).
    errors: BTreeMap<String, (u64, String)>,
}

impl OpStats {
    fn new() -> Self {
        OpStats {
            latency: Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
            errors: BTreeMap::new(),
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.values().map(|(n, _)| n).sum()
    }

    fn calls(&self) -> u64 {
        self.latency.len() + self.error_count()
    }

    fn add(&mut self, other: &OpStats) {
        self.latency.add(&other.latency).expect("same bounds");
        for (key, (n, message)) in &other.errors {
            let entry = self
                .errors
                .entry(key.clone())
                .or_insert((0, message.clone()));
            entry.0 += n;
        }
    }
}

#[derive(Default)]
struct Stats {
    ops: BTreeMap<&'static str, OpStats>,
}

/// `status`'s code, with its ErrorInfo reason when it has one: "ResourceExhausted/RATE_LIMITED".
fn error_key(status: &Status) -> String {
    match status.get_details_error_info() {
        Some(info) if !info.reason.is_empty() => format!("{:?}/{}", status.code(), info.reason),
        _ => format!("{:?}", status.code()),
    }
}

fn is_rate_limited(status: &Status) -> bool {
    status.code() == Code::ResourceExhausted
        && status
            .get_details_error_info()
            .is_some_and(|info| info.reason == "RATE_LIMITED")
}

impl Stats {
    fn op(&mut self, op: &'static str) -> &mut OpStats {
        self.ops.entry(op).or_insert_with(OpStats::new)
    }

    fn fail(&mut self, op: &'static str, key: String, message: &str) {
        let entry = self
            .op(op)
            .errors
            .entry(key)
            .or_insert((0, message.chars().take(240).collect()));
        entry.0 += 1;
    }

    /// Runs `call`, recording its latency under `op` if it succeeds and its code if not.
    async fn time<T>(
        &mut self,
        op: &'static str,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Option<T> {
        let started = Instant::now();
        let result = call.await;
        let micros = (started.elapsed().as_micros() as u64).max(1);
        match result {
            Ok(value) => {
                self.op(op).latency.saturating_record(micros);
                Some(value)
            }
            Err(status) => {
                self.fail(op, error_key(&status), status.message());
                None
            }
        }
    }

    fn merge(&mut self, other: Stats) {
        for (op, stats) in other.ops {
            self.op(op).add(&stats);
        }
    }
}

/// A client of every service over one channel.
struct Clients {
    health: HealthClient<Channel>,
    admin: AdminServiceClient<Channel>,
    registry: RegistryServiceClient<Channel>,
    store: StoreServiceClient<Channel>,
    griot: GriotServiceClient<Channel>,
    market: MarketServiceClient<Channel>,
    pds: PdsServiceClient<Channel>,
}

impl Clients {
    fn new(channel: &Channel) -> Self {
        Clients {
            health: HealthClient::new(channel.clone()),
            admin: AdminServiceClient::new(channel.clone()),
            registry: RegistryServiceClient::new(channel.clone()),
            store: StoreServiceClient::new(channel.clone()),
            griot: GriotServiceClient::new(channel.clone()),
            market: MarketServiceClient::new(channel.clone()),
            pds: PdsServiceClient::new(channel.clone()),
        }
    }
}

async fn connect(target: &str, timeout: Duration, window: Option<u32>) -> anyhow::Result<Channel> {
    let mut endpoint = Channel::from_shared(target.to_owned())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout);
    if let Some(window) = window {
        endpoint = endpoint.initial_stream_window_size(Some(window));
    }
    Ok(endpoint.connect().await?)
}

/// The server process's resident memory and open file descriptors at one moment.
struct ProcSnapshot {
    rss_kib: Option<u64>,
    hwm_kib: Option<u64>,
    fds: Option<FdCounts>,
}

#[derive(Clone, Copy)]
struct FdCounts {
    total: usize,
    /// Unix-domain sockets: the embedded database's pool and its LISTEN connection.
    unix: usize,
    /// Other sockets: the listener and client connections.
    tcp: usize,
    files: usize,
    other: usize,
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

fn fd_counts(pid: u32) -> Option<FdCounts> {
    let unix_inodes: HashSet<String> = std::fs::read_to_string(format!("/proc/{pid}/net/unix"))
        .ok()?
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(6).map(str::to_owned))
        .collect();
    let mut counts = FdCounts {
        total: 0,
        unix: 0,
        tcp: 0,
        files: 0,
        other: 0,
    };
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()? {
        let Ok(entry) = entry else { continue };
        // A descriptor closed between listing and reading it is simply gone.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        counts.total += 1;
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
        {
            if unix_inodes.contains(inode) {
                counts.unix += 1;
            } else {
                counts.tcp += 1;
            }
        } else if target.starts_with('/') {
            counts.files += 1;
        } else {
            counts.other += 1;
        }
    }
    Some(counts)
}

fn snapshot(pid: Option<u32>) -> ProcSnapshot {
    ProcSnapshot {
        rss_kib: pid.and_then(|pid| status_kib(pid, "VmRSS")),
        hwm_kib: pid.and_then(|pid| status_kib(pid, "VmHWM")),
        fds: pid.and_then(fd_counts),
    }
}

/// The machine's load average (`/proc/loadavg`): other work on the machine shows here.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "n/a".into())
}

/// Samples the server's database sessions during the window: how many are busy, and how many
/// wait on an advisory lock (the registry, store and PDS order their events with one each).
struct DbSampler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<DbSamples>,
}

/// A session's state, wait event type, wait event and statement.
type Session = (String, Option<String>, Option<String>, String);

#[derive(Default)]
struct DbSamples {
    samples: u64,
    /// Sessions of the server's pool (client backends, this sampler excepted).
    sessions: u64,
    /// Running a statement or inside a transaction: holding a pool connection.
    busy: u64,
    busy_max: i64,
    /// Waiting on an advisory lock, by the statement that waits.
    advisory: BTreeMap<String, (u64, i64)>,
    failed: Option<String>,
}

impl DbSampler {
    async fn start(database_url: &str) -> anyhow::Result<Self> {
        let pool = quintet::db::connect(database_url.parse()?, 1).await?;
        let stop = CancellationToken::new();
        let until = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = DbSamples::default();
            let mut ticker = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = until.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                let rows: Result<Vec<Session>, _> = sqlx::query_as(
                    "SELECT coalesce(state, ''), wait_event_type, wait_event, query
                         FROM pg_stat_activity
                         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
                           AND datname = current_database()",
                )
                .fetch_all(&pool)
                .await;
                let rows = match rows {
                    Ok(rows) => rows,
                    Err(error) => {
                        samples.failed.get_or_insert(error.to_string());
                        continue;
                    }
                };
                samples.samples += 1;
                samples.sessions += rows.len() as u64;
                let busy = rows
                    .iter()
                    .filter(|(state, ..)| {
                        state == "active" || state.starts_with("idle in transaction")
                    })
                    .count() as i64;
                samples.busy += busy as u64;
                samples.busy_max = samples.busy_max.max(busy);
                let mut waits: BTreeMap<String, i64> = BTreeMap::new();
                for (_, kind, event, query) in &rows {
                    if kind.as_deref() == Some("Lock") && event.as_deref() == Some("advisory") {
                        *waits
                            .entry(query.split_whitespace().collect::<Vec<_>>().join(" "))
                            .or_default() += 1;
                    }
                }
                for (query, n) in waits {
                    let entry = samples.advisory.entry(query).or_default();
                    entry.0 += n as u64;
                    entry.1 = entry.1.max(n);
                }
            }
            pool.close().await;
            samples
        });
        Ok(DbSampler { stop, task })
    }

    async fn finish(self) -> DbSamples {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

impl DbSamples {
    fn print(&self) {
        if let Some(error) = &self.failed {
            println!("  (database sampling failed: {error})");
        }
        if self.samples == 0 {
            return;
        }
        let n = self.samples as f64;
        println!(
            "  the server's database sessions, sampled every 0.5 s in the window: {:.1} open, {:.1} busy on average (max {})",
            self.sessions as f64 / n,
            self.busy as f64 / n,
            self.busy_max
        );
        for (query, (sum, max)) in &self.advisory {
            println!(
                "    waiting on an advisory lock in {query:?}: {:.1} on average (max {max})",
                *sum as f64 / n
            );
        }
    }
}

/// CPU seconds used so far by the server, by its descendants (the embedded PostgreSQL) and by
/// this process.
struct CpuTimes {
    server: Option<f64>,
    postgres: Option<f64>,
    bench: Option<f64>,
}

impl CpuTimes {
    fn now(server_pid: Option<u32>) -> Self {
        CpuTimes {
            server: server_pid.and_then(super::cpu_seconds),
            postgres: server_pid.map(|pid| {
                descendants(pid)
                    .into_iter()
                    .filter_map(super::cpu_seconds)
                    .sum()
            }),
            bench: super::cpu_seconds(std::process::id()),
        }
    }

    fn since(&self, before: &CpuTimes) -> Option<(f64, f64, f64)> {
        Some((
            self.server? - before.server?,
            self.postgres? - before.postgres?,
            self.bench? - before.bench?,
        ))
    }
}

/// Every process below `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // The fields after the command name (which may hold spaces) start after its ')'.
            let parent = std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    stat.rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                });
            if let Some(parent) = parent {
                parents.push((child, parent));
            }
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let of = found[i];
        found.extend(parents.iter().filter(|(_, p)| *p == of).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn print_snapshot(label: &str, s: &ProcSnapshot) {
    match s.fds {
        Some(f) => println!(
            "  {label:<28} RSS {:>10}   fds {:>5} (tcp {}, unix {}, files {}, other {})",
            mib(s.rss_kib),
            f.total,
            f.tcp,
            f.unix,
            f.files,
            f.other
        ),
        None => println!("  {label:<28} RSS {:>10}   fds n/a", mib(s.rss_kib)),
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let roles = assign_roles(args.clients)?;
    let run = format!("{:06}", super::unix_micros() % 1_000_000);
    let call_timeout = Duration::from_secs(args.call_timeout);
    let window = Duration::from_secs(args.duration);
    let mut counts: BTreeMap<Role, usize> = BTreeMap::new();
    for role in &roles {
        *counts.entry(*role).or_default() += 1;
    }
    println!(
        "== soak: {} well-behaved clients for {} s against {} (run {run})",
        args.clients, args.duration, args.target
    );
    for (role, n) in &counts {
        println!("  {n:>5} {}", role.describe());
    }
    println!(
        "  plus 1 flooding token ({} calls/s, at most {} in flight) and {} slow reader(s) per stream kind",
        args.flood_rate, args.flood_in_flight, args.slow_readers
    );
    println!(
        "  admin-token calls (store, griot writes, admin, registry user setup) paced to {} /s in all; \
         calls without a token (health, griot reads) all come from 127.0.0.1 and share one \
         anonymous bucket (benches/soak.sh raises QUINTET_ANONYMOUS_RATE_LIMIT_PER_SEC)",
        args.admin_rate
    );

    // ---- Setup, before the window.
    let idle = snapshot(args.server_pid);
    let setup_started = Instant::now();
    let mut setup_channels = Vec::new();
    for _ in 0..8 {
        setup_channels.push(connect(&args.target, call_timeout, None).await?);
    }
    let pacer = Pacer::new(args.admin_rate);
    let setup = Setup {
        target: args.target.clone(),
        channels: setup_channels,
        admin_token: args.admin_token.clone(),
        pacer: &pacer,
        run: run.clone(),
    };
    let registry_packages = setup.seed_registry(args.registry_packages).await?;
    let store_objects = setup.seed_store(100).await?;
    let griot_packages = setup.seed_griot(10).await?;
    let identities = setup
        .identities(&roles, &args.database_url)
        .await
        .context("making the clients' accounts")?;
    let pds_repos: Vec<String> = roles
        .iter()
        .zip(&identities)
        .filter(|(role, _)| **role == Role::PdsWriter)
        .filter_map(|(_, identity)| match identity {
            Identity::Pds { did, .. } => Some(did.clone()),
            _ => None,
        })
        .collect();
    let datapods: Vec<String> = identities
        .iter()
        .flat_map(|identity| match identity {
            Identity::Market { datapods, .. } => datapods.clone(),
            _ => Vec::new(),
        })
        .collect();
    anyhow::ensure!(!datapods.is_empty(), "no datapods were made");
    let flood_token = setup.registry_user("flood", &[]).await?;
    let slow_job = setup
        .installation(&griot_packages[0], "slow-reader")
        .await?;
    println!(
        "setup: {} registry packages, {} store objects, {} griot packages, {} datapods, {} pds repos, accounts for every client, in {:.1} s",
        registry_packages,
        store_objects.len(),
        griot_packages.len(),
        datapods.len(),
        pds_repos.len(),
        setup_started.elapsed().as_secs_f64()
    );
    // Brings the database pool to its working size, so that the baseline includes it.
    setup.warm_up().await;
    drop(setup);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let ctx = Arc::new(Ctx {
        admin_token: args.admin_token.clone(),
        pacer,
        run: run.clone(),
        registry_packages,
        store_objects,
        griot_packages,
        datapods,
        pds_repos,
        stop: AtomicBool::new(false),
        job_timeout: Duration::from_secs(args.job_timeout),
    });

    let before = snapshot(args.server_pid);

    // ---- Connections, opened before the window.
    let connections = args
        .connections
        .unwrap_or(args.clients)
        .clamp(1, args.clients);
    let target = args.target.clone();
    let channels: Vec<Channel> = futures::stream::iter(0..connections)
        .map(|_| connect(&target, call_timeout, None))
        .buffered(64)
        .try_collect()
        .await
        .context("connecting the clients")?;
    // Slow readers each on their own connection, with a small stream window so that what they
    // leave unread pushes back on the server at once.
    let mut slow_channels = Vec::new();
    for _ in 0..4 * args.slow_readers {
        slow_channels.push(connect(&target, call_timeout, Some(16 * 1024)).await?);
    }
    let flood_channel = connect(&target, call_timeout, None).await?;

    // ---- The window.
    println!(
        "== load: {} s, {} connections for the well-behaved clients",
        args.duration,
        channels.len()
    );
    let db_sampler = DbSampler::start(&args.database_url).await?;
    let load_before = load_average();
    let cpu_before = CpuTimes::now(args.server_pid);
    let started = Instant::now();
    let slow = start_slow_readers(&ctx, &slow_channels, args.slow_readers, &slow_job).await;
    let flood_stop = Arc::new(AtomicBool::new(false));
    let flood = (args.flood_rate > 0).then(|| {
        start_flood(
            &flood_channel,
            &flood_token,
            args.flood_rate,
            args.flood_in_flight.max(1),
            flood_stop.clone(),
        )
    });
    let mut tasks = Vec::new();
    for (i, (role, identity)) in roles.iter().zip(identities).enumerate() {
        let channel = channels[i % channels.len()].clone();
        tasks.push(tokio::spawn(client(
            *role,
            identity,
            i,
            channel,
            ctx.clone(),
        )));
    }
    // Progress every 10 s, so that a long run shows it is alive.
    let deadline = started + window;
    while Instant::now() < deadline {
        let next = (Instant::now() + Duration::from_secs(10)).min(deadline);
        tokio::time::sleep_until(next.into()).await;
        if Instant::now() < deadline {
            let now = snapshot(args.server_pid);
            println!(
                "  t={:>3.0} s: server RSS {}, fds {}; load average {}",
                started.elapsed().as_secs_f64(),
                mib(now.rss_kib),
                now.fds.map_or("n/a".into(), |f| f.total.to_string()),
                load_average()
            );
        }
    }
    let at_end = snapshot(args.server_pid);
    let cpu = CpuTimes::now(args.server_pid).since(&cpu_before);
    let load_after = load_average();
    let db = db_sampler.finish().await;
    ctx.stop.store(true, Ordering::Relaxed);
    flood_stop.store(true, Ordering::Relaxed);
    let mut stats = Stats::default();
    for task in tasks {
        stats.merge(task.await?);
    }
    let elapsed = started.elapsed();
    let flood = match flood {
        Some(flood) => Some(flood.await?),
        None => None,
    };
    // The slow readers read only now, after the load: whatever the server did to them, it did
    // while they were not reading.
    let slow = slow.finish().await;
    drop(channels);
    drop(slow_channels);
    drop(flood_channel);
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let settled = snapshot(args.server_pid);

    // ---- Report.
    println!(
        "== well-behaved clients: {} s window ({:.1} s until the last call in flight returned)",
        args.duration,
        elapsed.as_secs_f64()
    );
    println!(
        "  {:<34} {:>9} {:>8} {:>7} {:>9} {:>9} {:>9}",
        "operation", "calls", "calls/s", "errors", "p50 ms", "p99 ms", "max ms"
    );
    let seconds = window.as_secs_f64();
    let (mut total_calls, mut total_errors) = (0u64, 0u64);
    for (op, s) in &stats.ops {
        let ms = |q: f64| s.latency.value_at_quantile(q) as f64 / 1000.0;
        let (p50, p99, max) = if s.latency.is_empty() {
            ("-".into(), "-".into(), "-".into())
        } else {
            (
                format!("{:.1}", ms(0.5)),
                format!("{:.1}", ms(0.99)),
                format!("{:.1}", s.latency.max() as f64 / 1000.0),
            )
        };
        println!(
            "  {:<34} {:>9} {:>8.1} {:>7} {:>9} {:>9} {:>9}",
            op,
            s.calls(),
            s.calls() as f64 / seconds,
            s.error_count(),
            p50,
            p99,
            max
        );
        total_calls += s.calls();
        total_errors += s.error_count();
    }
    println!(
        "  total: {total_calls} calls, {:.0} calls/s, {total_errors} errors",
        total_calls as f64 / seconds
    );
    if total_errors > 0 {
        println!("  errors by operation and code (first message):");
        for (op, s) in &stats.ops {
            for (key, (n, message)) in &s.errors {
                println!("    {op} {key}: {n} ({message})");
            }
        }
    }

    println!("== abusive clients");
    let mut failures = Vec::new();
    if let Some(flood) = &flood {
        let seconds = flood.elapsed.as_secs_f64();
        // What the limiter lets one token make in that time.
        let allowed =
            f64::from(args.rate_limit_per_sec) * seconds + f64::from(args.rate_limit_burst);
        println!(
            "  flood: one registry token sending GetPackage at {}/s (at most {} in flight) for {:.1} s: {} calls ({:.0}/s)",
            args.flood_rate,
            args.flood_in_flight,
            seconds,
            flood.calls,
            flood.calls as f64 / seconds
        );
        println!(
            "    {} answered ({:.0}/s; the limit allows {:.0}: {}/s and a burst of {}), {} RESOURCE_EXHAUSTED/RATE_LIMITED{}",
            flood.ok,
            flood.ok as f64 / seconds,
            allowed,
            args.rate_limit_per_sec,
            args.rate_limit_burst,
            flood.rate_limited,
            flood.first_limited.map_or(String::new(), |t| format!(
                " (the first {:.2} s after it started)",
                t.as_secs_f64()
            ))
        );
        println!(
            "    calls outstanding (waiting at the server's concurrency limit or being served): {:.0} on average, at most {}",
            flood.in_flight_sum as f64 / flood.calls.max(1) as f64,
            flood.in_flight_max
        );
        for (key, (n, message)) in &flood.other {
            println!("    the flood also got {key}: {n} ({message})");
        }
        if flood.rate_limited == 0 {
            failures.push(
                "the flooding token was never answered RESOURCE_EXHAUSTED (RATE_LIMITED)".into(),
            );
        }
        // A few calls of slack: the bench's clock and the server's differ by a round trip.
        if flood.ok as f64 > allowed * 1.02 + 10.0 {
            failures.push(format!(
                "the flooding token had {} calls answered, more than the {allowed:.0} its limit allows",
                flood.ok
            ));
        }
    } else {
        println!("  flood: off (--flood-rate 0)");
    }
    println!(
        "  slow readers (opened at the start, never read until the load ended; firehose stall {} s, other follows 30 s):",
        args.firehose_stall_secs
    );
    let mut slow_failures = Vec::new();
    for reader in &slow {
        println!("    {:<32} {}", reader.kind, reader.outcome.describe());
        match &reader.outcome {
            SlowOutcome::Status { code, message, .. } if *code != Code::ResourceExhausted => {
                slow_failures.push(format!("{} ended with {code:?}: {message}", reader.kind))
            }
            SlowOutcome::Refused(status) => slow_failures.push(format!(
                "{} was refused: {:?} {}",
                reader.kind,
                status.code(),
                status.message()
            )),
            _ => {}
        }
    }

    println!(
        "== server (pid {})",
        args.server_pid.map_or("n/a".into(), |p| p.to_string())
    );
    print_snapshot("idle, before the setup", &idle);
    print_snapshot("before the load", &before);
    print_snapshot("at the end of the load", &at_end);
    print_snapshot(&format!("{} s after the load", args.settle), &settled);
    println!("  peak RSS (VmHWM): {}", mib(settled.hwm_kib));
    println!(
        "  load average (1, 5, 15 min; every process on the machine): {load_before} before the load, {load_after} at its end"
    );
    db.print();
    if let Some((server, postgres, bench)) = cpu {
        let of = |seconds: f64| 100.0 * seconds / window.as_secs_f64();
        println!(
            "  CPU over the window, in % of one core ({} cores): quintet {:.0}%, its PostgreSQL {:.0}%, this bench {:.0}%",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            of(server),
            of(postgres),
            of(bench)
        );
    }

    if total_errors > 0 {
        failures.push(format!("{total_errors} well-behaved calls failed"));
    }
    failures.extend(slow_failures);
    match (before.fds, settled.fds) {
        (Some(b), Some(s)) if s.total > b.total + args.fd_margin => failures.push(format!(
            "the server holds {} file descriptors after the load settled, {} before (margin {})",
            s.total, b.total, args.fd_margin
        )),
        (Some(_), Some(_)) => {}
        _ => println!("  (no --server-pid: memory and file descriptors not checked)"),
    }
    if failures.is_empty() {
        println!("== PASS");
        Ok(())
    } else {
        println!("== FAIL");
        for failure in &failures {
            println!("  {failure}");
        }
        // The verdict is the output above; an error's backtrace would only bury it.
        std::process::exit(1)
    }
}

// ---------------------------------------------------------------------------------------------
// Setup

struct Setup<'a> {
    target: String,
    channels: Vec<Channel>,
    admin_token: String,
    pacer: &'a Pacer,
    run: String,
}

/// Setup calls run this many at a time.
const SETUP_CONCURRENCY: usize = 16;

impl Setup<'_> {
    fn channel(&self, i: usize) -> Channel {
        self.channels[i % self.channels.len()].clone()
    }

    /// Seeds `packages` registry packages (two versions each) unless the first already exists;
    /// returns how many there are to read.
    async fn seed_registry(&self, packages: usize) -> anyhow::Result<usize> {
        let mut client = RegistryServiceClient::new(self.channel(0));
        let exists = client
            .get_package(registry_pb::GetPackageRequest {
                name: package_name(0),
            })
            .await;
        match exists {
            Ok(_) => {
                // Seeded before (by seed-registry or an earlier soak): count what is there.
                let mut n = 1;
                while n < packages
                    && client
                        .get_package(registry_pb::GetPackageRequest {
                            name: package_name(n),
                        })
                        .await
                        .is_ok()
                {
                    n += 1;
                }
                Ok(n)
            }
            Err(status) if status.code() == Code::NotFound => {
                self.pacer.wait().await;
                self.pacer.wait().await;
                super::seed_registry(
                    &self.target,
                    &self.admin_token,
                    packages,
                    2,
                    packages * 3,
                    SETUP_CONCURRENCY,
                )
                .await?;
                Ok(packages)
            }
            Err(status) => Err(status.into()),
        }
    }

    /// Puts `n` small objects tagged with the run; returns (id, bytes) of each.
    async fn seed_store(&self, n: usize) -> anyhow::Result<Vec<(String, usize)>> {
        futures::stream::iter(0..n)
            .map(|i| async move {
                let mut client = StoreServiceClient::new(self.channel(i));
                let bytes = 512 + (i * 97) % 3584;
                self.pacer.wait().await;
                let id = put_object(
                    &mut client,
                    &self.admin_token,
                    &self.run,
                    "seed",
                    i as u64,
                    bytes,
                )
                .await
                .context("seeding the store")?;
                anyhow::Ok((id, bytes))
            })
            .buffer_unordered(SETUP_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Registers `n` signed Griot packages of node class "soak-<run>"; returns their ids.
    async fn seed_griot(&self, n: usize) -> anyhow::Result<Vec<String>> {
        let scratch = std::env::temp_dir().join(format!("quintet-soak-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)?;
        let key = scratch.join("author.key");
        quintet::griot::sign::keygen(&key)?;
        let mut client = GriotServiceClient::new(self.channel(0));
        let mut ids = Vec::new();
        for k in 0..n {
            let artifact = {
                let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                let mut builder = tar::Builder::new(gz);
                let body = format!("soak package {k} of run {}\n", self.run);
                let mut header = tar::Header::new_gnu();
                header.set_size(body.len() as u64);
                header.set_mode(0o644);
                builder.append_data(&mut header, "run.sh", body.as_bytes())?;
                builder.into_inner()?.finish()?
            };
            let path = scratch.join(format!("p{k}.tgz"));
            std::fs::write(&path, &artifact)?;
            let manifest = quintet::griot::sign::sign_manifest(
                &key,
                &serde_json::json!({
                    "name": format!("soak-{k}"),
                    "node_class": format!("soak-{}", self.run),
                    "version": "1.0.0",
                    "description": "a package of the soak test",
                })
                .to_string(),
                Some(&path),
            )?;
            use griot_pb::register_package_request::Part;
            self.pacer.wait().await;
            let package = client
                .register_package(auth(
                    tokio_stream::iter(vec![
                        griot_pb::RegisterPackageRequest {
                            part: Some(Part::Header(griot_pb::PackageHeader {
                                manifest_json: manifest.to_string(),
                                ..Default::default()
                            })),
                        },
                        griot_pb::RegisterPackageRequest {
                            part: Some(Part::Chunk(artifact.into())),
                        },
                    ]),
                    &self.admin_token,
                ))
                .await
                .context("registering a griot package")?
                .into_inner()
                .package
                .context("no package")?;
            ids.push(package.package_id);
        }
        let _ = std::fs::remove_dir_all(&scratch);
        Ok(ids)
    }

    /// A Griot installation of `package` onto a node of its own; returns the job id.
    async fn installation(&self, package: &str, node: &str) -> anyhow::Result<String> {
        let mut client = GriotServiceClient::new(self.channel(0));
        self.pacer.wait().await;
        let job = client
            .create_installation(auth(
                griot_pb::CreateInstallationRequest {
                    package_id: package.to_owned(),
                    target_node_id: format!("soak-{}-{node}", self.run),
                    options: None,
                    idempotency_key: format!("soak-{}-{node}", self.run),
                },
                &self.admin_token,
            ))
            .await?
            .into_inner()
            .installation
            .context("no installation")?;
        Ok(job.job_id)
    }

    /// A registry user of this run with a token of `scopes`; returns the token.
    async fn registry_user(
        &self,
        name: &str,
        scopes: &[registry_pb::TokenScope],
    ) -> anyhow::Result<String> {
        let username = format!("soak{}-{name}", self.run);
        let mut client = RegistryServiceClient::new(self.channel(name.len()));
        self.pacer.wait().await;
        client
            .create_user(auth(
                registry_pb::CreateUserRequest {
                    username: username.clone(),
                },
                &self.admin_token,
            ))
            .await
            .with_context(|| format!("creating registry user {username}"))?;
        let scopes = if scopes.is_empty() {
            vec![registry_pb::TokenScope::Star as i32]
        } else {
            scopes.iter().map(|s| *s as i32).collect()
        };
        self.pacer.wait().await;
        Ok(client
            .create_api_token(auth(
                registry_pb::CreateApiTokenRequest {
                    username,
                    name: "soak".into(),
                    scopes,
                    ..Default::default()
                },
                &self.admin_token,
            ))
            .await?
            .into_inner()
            .token)
    }

    /// Every client's own account.
    async fn identities(
        &self,
        roles: &[Role],
        database_url: &str,
    ) -> anyhow::Result<Vec<Identity>> {
        let market_clients = roles
            .iter()
            .filter(|r| matches!(r, Role::MarketReader | Role::MarketSeller))
            .count();
        let mut market_tokens = market_sessions(database_url, &self.run, market_clients)
            .await
            .context("market users and sessions")?
            .into_iter();
        let mut jobs = Vec::new();
        for (i, role) in roles.iter().enumerate() {
            let market_token = match role {
                Role::MarketReader | Role::MarketSeller => market_tokens.next(),
                _ => None,
            };
            jobs.push((i, *role, market_token));
        }
        futures::stream::iter(jobs)
            .map(|(i, role, market_token)| async move {
                self.identity(i, role, market_token)
                    .await
                    .with_context(|| format!("client {i} ({role:?})"))
            })
            .buffered(SETUP_CONCURRENCY)
            .try_collect()
            .await
    }

    async fn identity(
        &self,
        i: usize,
        role: Role,
        market_token: Option<String>,
    ) -> anyhow::Result<Identity> {
        use registry_pb::TokenScope;
        let channel = self.channel(i);
        Ok(match role {
            Role::Health | Role::Admin | Role::Store | Role::GriotReader | Role::GriotInstaller => {
                Identity::None
            }
            Role::RegistryReader => Identity::Registry {
                token: self.registry_user(&format!("r{i}"), &[]).await?,
                package: None,
            },
            Role::RegistryWriter => {
                let token = self
                    .registry_user(
                        &format!("w{i}"),
                        &[
                            TokenScope::PublishNew,
                            TokenScope::PublishUpdate,
                            TokenScope::Star,
                        ],
                    )
                    .await?;
                let package = format!("soak{}-w{i}", self.run);
                let mut client = RegistryServiceClient::new(channel);
                use registry_pb::publish_package_request::Part;
                let (header, tarball) = publish_parts(&package, "1.0.0");
                client
                    .publish_package(auth(
                        tokio_stream::iter(vec![
                            registry_pb::PublishPackageRequest {
                                part: Some(Part::Header(header)),
                            },
                            registry_pb::PublishPackageRequest {
                                part: Some(Part::Chunk(tarball)),
                            },
                        ]),
                        &token,
                    ))
                    .await?;
                Identity::Registry {
                    token,
                    package: Some(package),
                }
            }
            Role::PdsWriter | Role::PdsReader => {
                let mut client = PdsServiceClient::new(channel);
                let (did, token) =
                    super::pds_account(&mut client, &format!("s{i}x{}.bench.test", self.run))
                        .await?;
                if role == Role::PdsWriter {
                    // Records the readers can name.
                    let writes = (0..5)
                        .map(|k| pds_pb::Write {
                            action: Some(pds_pb::write::Action::Create(pds_pb::WriteCreate {
                                collection: "app.bsky.feed.post".into(),
                                rkey: format!("soak{k}"),
                                value: pds_post(k),
                            })),
                        })
                        .collect();
                    client
                        .apply_writes(auth(
                            pds_pb::ApplyWritesRequest {
                                repo: did.clone(),
                                writes,
                                swap_commit: String::new(),
                            },
                            &token,
                        ))
                        .await?;
                }
                Identity::Pds { did, token }
            }
            Role::MarketReader | Role::MarketSeller => {
                let token = market_token.context("a market session")?;
                let mut datapods = Vec::new();
                if role == Role::MarketSeller {
                    let mut client = MarketServiceClient::new(channel);
                    for k in 0..3 {
                        datapods.push(create_datapod(&mut client, &token, i * 3 + k).await?);
                    }
                }
                Identity::Market { token, datapods }
            }
        })
    }

    /// Cheap database reads from 64 callers for two seconds: the pool grows to its working size
    /// now rather than during the load, so that the baseline's descriptors include it.
    async fn warm_up(&self) {
        let until = Instant::now() + Duration::from_secs(2);
        let failures = futures::stream::iter(0..64)
            .map(|i| {
                let mut client = GriotServiceClient::new(self.channel(i));
                async move {
                    let mut failures = 0u64;
                    while Instant::now() < until {
                        if client
                            .list_packages(griot_pb::ListPackagesRequest {
                                page_size: 1,
                                ..Default::default()
                            })
                            .await
                            .is_err()
                        {
                            failures += 1;
                        }
                    }
                    failures
                }
            })
            .buffer_unordered(64)
            .fold(0, |sum, n| async move { sum + n })
            .await;
        if failures > 0 {
            println!("  (warm-up: {failures} calls failed)");
        }
    }
}

/// Market users with a session each, made in the database (sign-in needs an identity
/// provider); returns their session tokens.
async fn market_sessions(database_url: &str, run: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let pool = quintet::db::connect(database_url.parse()?, 2).await?;
    let mut tx = pool.begin().await?;
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        let user: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO market.users (google_id, email, name, salt)
             VALUES ($1, $1 || '@soak.test', 'Soak client ' || $2, md5($1) || md5($1 || 'x'))
             RETURNING id",
        )
        .bind(format!("soak-{run}-{i}"))
        .bind(i as i64)
        .fetch_one(&mut *tx)
        .await?;
        tokens.push(crate::insert_market_session(&mut *tx, user).await?);
    }
    tx.commit().await?;
    pool.close().await;
    Ok(tokens)
}

/// Uploads a small CSV dataset, offers it and publishes it; returns the datapod's id.
async fn create_datapod(
    client: &mut MarketServiceClient<Channel>,
    token: &str,
    n: usize,
) -> anyhow::Result<String> {
    use market_pb::upload_dataset_request::Part;
    let mut csv = String::from("day,reading\n");
    for day in 0..50 {
        csv.push_str(&format!("{day},{}\n", (n * 31 + day * 7) % 100));
    }
    let dataset = client
        .upload_dataset(auth(
            tokio_stream::iter(vec![
                market_pb::UploadDatasetRequest {
                    part: Some(Part::Header(market_pb::DatasetHeader {
                        file_type: "text/csv".into(),
                    })),
                },
                market_pb::UploadDatasetRequest {
                    part: Some(Part::Chunk(csv.into_bytes().into())),
                },
            ]),
            token,
        ))
        .await?
        .into_inner()
        .dataset
        .context("no dataset")?;
    let word = |k: usize| MARKET_WORDS[(n * 7 + k * 13) % MARKET_WORDS.len()];
    let datapod = client
        .create_datapod(auth(
            market_pb::CreateDatapodRequest {
                dataset_id: dataset.id,
                title: format!("{} {} readings", word(0), word(1)),
                description: format!("Daily {} and {} from the soak test", word(2), word(3)),
                category: MARKET_CATEGORIES[n % MARKET_CATEGORIES.len()].into(),
                price_mist: 1_000_000 * (1 + n as i64 % 500),
            },
            token,
        ))
        .await?
        .into_inner()
        .datapod
        .context("no datapod")?;
    client
        .publish_datapod(auth(
            market_pb::PublishDatapodRequest {
                id: datapod.id.clone(),
            },
            token,
        ))
        .await?;
    Ok(datapod.id)
}

/// A registry publication's header and tarball for `package`@`version`.
fn publish_parts(package: &str, version: &str) -> (registry_pb::PublishHeader, bytes::Bytes) {
    let manifest = serde_json::json!({
        "name": package, "version": version, "description": "a package of the soak test",
        "keywords": ["soak"], "license": "MIT", "engines": {"atom": ">=1.0.0 <2.0.0"},
    });
    let header = registry_pb::PublishHeader {
        manifest_json: manifest.to_string(),
        readme: format!("# {package}\n\nPublished by the soak test."),
        tarball_sha256: String::new(),
    };
    let tarball = bytes::Bytes::from(
        [
            &[0x1f, 0x8b, 8, 0][..],
            format!("{package}@{version}").as_bytes(),
        ]
        .concat(),
    );
    (header, tarball)
}

/// Puts one object of one `bytes`-long content tagged with the run; returns its manifest id.
async fn put_object(
    client: &mut StoreServiceClient<Channel>,
    token: &str,
    run: &str,
    kind: &str,
    n: u64,
    bytes: usize,
) -> Result<String, Status> {
    use store_pb::put_object_request::Part;
    let mut data = vec![(n % 251) as u8; bytes.max(16)];
    data[..8].copy_from_slice(&n.to_le_bytes());
    data[8..16].copy_from_slice(&super::unix_micros().to_le_bytes());
    let messages = vec![
        store_pb::PutObjectRequest {
            part: Some(Part::Manifest(store_pb::ManifestHeader {
                class_id: "3f1c1a52-8a52-4a6e-9d0c-1d2f0e6a7b11".into(),
                unpacker_name: "soak@v1".into(),
                tags: quintet::proto::json_to_struct(
                    &serde_json::json!({"soak": run, "kind": kind}),
                ),
            })),
        },
        store_pb::PutObjectRequest {
            part: Some(Part::Content(store_pb::ContentHeader {
                content_name: "value".into(),
                content_type: "application/octet-stream".into(),
                serializer_name: "raw@v1".into(),
                serializer_type: store_pb::SerializerType::Stream as i32,
                ..Default::default()
            })),
        },
        store_pb::PutObjectRequest {
            part: Some(Part::Chunk(data.into())),
        },
    ];
    let stored = client
        .put_object(auth(tokio_stream::iter(messages), token))
        .await?
        .into_inner();
    stored
        .manifest
        .map(|m| m.id)
        .ok_or_else(|| Status::internal("PutObject returned no manifest"))
}

// ---------------------------------------------------------------------------------------------
// The well-behaved clients

/// What one client remembers between its calls.
#[derive(Default)]
struct Local {
    /// Objects this client put: (id, bytes).
    objects: Vec<(String, usize)>,
    /// Record keys this client created.
    rkeys: Vec<String>,
    versions: u64,
    installs: u64,
}

async fn client(
    role: Role,
    identity: Identity,
    index: usize,
    channel: Channel,
    ctx: Arc<Ctx>,
) -> Stats {
    let mut c = Clients::new(&channel);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((index as u64 + 1) * 0x2545_f491));
    let mut stats = Stats::default();
    let mut local = Local::default();
    while !ctx.stop.load(Ordering::Relaxed) {
        let token = match &identity {
            Identity::Registry { token, .. }
            | Identity::Pds { token, .. }
            | Identity::Market { token, .. } => token.as_str(),
            Identity::None => ctx.admin_token.as_str(),
        };
        let pick = rng.below(10);
        match role {
            Role::Health => {
                let reply = stats
                    .time("health.Check", async {
                        c.health.check(HealthCheckRequest::default()).await
                    })
                    .await;
                if let Some(reply) = reply
                    && reply.into_inner().status
                        != tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                {
                    stats.fail(
                        "health.Check",
                        "NOT_SERVING".into(),
                        "the server is not serving",
                    );
                }
            }
            Role::Admin => {
                ctx.pacer.wait().await;
                stats
                    .time(
                        "admin.GetServerInfo",
                        c.admin
                            .get_server_info(auth(admin_pb::GetServerInfoRequest {}, token)),
                    )
                    .await;
            }
            Role::RegistryReader => {
                registry_read(&mut c, &ctx, token, pick, &mut rng, &mut stats).await
            }
            Role::RegistryWriter => {
                let Identity::Registry {
                    package: Some(package),
                    ..
                } = &identity
                else {
                    unreachable!("a writer has a package")
                };
                match pick {
                    0..3 => {
                        local.versions += 1;
                        let version = format!("1.{}.0", local.versions);
                        let (header, tarball) = publish_parts(package, &version);
                        use registry_pb::publish_version_request::Part;
                        let messages = vec![
                            registry_pb::PublishVersionRequest {
                                part: Some(Part::Header(registry_pb::PublishVersionHeader {
                                    package_name: package.clone(),
                                    publish: Some(header),
                                })),
                            },
                            registry_pb::PublishVersionRequest {
                                part: Some(Part::Chunk(tarball)),
                            },
                        ];
                        stats
                            .time(
                                "registry.PublishVersion",
                                c.registry
                                    .publish_version(auth(tokio_stream::iter(messages), token)),
                            )
                            .await;
                    }
                    3..6 => {
                        let name = package_name(popular(&mut rng, ctx.registry_packages));
                        stats
                            .time(
                                "registry.StarPackage",
                                c.registry.star_package(auth(
                                    registry_pb::StarPackageRequest { package_name: name },
                                    token,
                                )),
                            )
                            .await;
                    }
                    6..8 => {
                        let name = package_name(popular(&mut rng, ctx.registry_packages));
                        stats
                            .time(
                                "registry.UnstarPackage",
                                c.registry.unstar_package(auth(
                                    registry_pb::UnstarPackageRequest { package_name: name },
                                    token,
                                )),
                            )
                            .await;
                    }
                    _ => {
                        stats
                            .time(
                                "registry.GetPackage",
                                c.registry.get_package(auth(
                                    registry_pb::GetPackageRequest {
                                        name: package.clone(),
                                    },
                                    token,
                                )),
                            )
                            .await;
                    }
                }
            }
            Role::Store => store_step(&mut c, &ctx, pick, &mut rng, &mut local, &mut stats).await,
            Role::GriotReader => {
                if pick < 6 {
                    let id = ctx.griot_packages[rng.below(ctx.griot_packages.len())].clone();
                    stats
                        .time(
                            "griot.GetPackage",
                            c.griot
                                .get_package(griot_pb::GetPackageRequest { package_id: id }),
                        )
                        .await;
                } else {
                    stats
                        .time(
                            "griot.ListPackages",
                            c.griot.list_packages(griot_pb::ListPackagesRequest {
                                node_class: format!("soak-{}", ctx.run),
                                page_size: 20,
                                ..Default::default()
                            }),
                        )
                        .await;
                }
            }
            Role::GriotInstaller => {
                install(&mut c, &ctx, index, &mut rng, &mut local, &mut stats).await
            }
            Role::MarketReader => {
                market_read(&mut c, &ctx, token, pick, &mut rng, &mut stats).await
            }
            Role::MarketSeller => {
                let Identity::Market { datapods, .. } = &identity else {
                    unreachable!("a seller has a session")
                };
                match pick {
                    0..4 => {
                        stats
                            .time(
                                "market.ListMyDatapods",
                                c.market.list_my_datapods(auth(
                                    market_pb::ListMyDatapodsRequest {
                                        page_size: 20,
                                        page_token: String::new(),
                                    },
                                    token,
                                )),
                            )
                            .await;
                    }
                    4..7 => {
                        let id = datapods[rng.below(datapods.len())].clone();
                        stats
                            .time(
                                "market.UpdateDatapod",
                                c.market.update_datapod(auth(
                                    market_pb::UpdateDatapodRequest {
                                        id,
                                        price_mist: 1_000_000 * (1 + rng.below(1000) as i64),
                                        update_mask: Some(prost_types::FieldMask {
                                            paths: vec!["price_mist".into()],
                                        }),
                                        ..Default::default()
                                    },
                                    token,
                                )),
                            )
                            .await;
                    }
                    _ => {
                        stats
                            .time(
                                "market.GetSellerAnalytics",
                                c.market.get_seller_analytics(auth(
                                    market_pb::GetSellerAnalyticsRequest {},
                                    token,
                                )),
                            )
                            .await;
                    }
                }
            }
            Role::PdsWriter => {
                let Identity::Pds { did, .. } = &identity else {
                    unreachable!("a PDS client has an account")
                };
                pds_write(&mut c, did, token, pick, &mut rng, &mut local, &mut stats).await
            }
            Role::PdsReader => pds_read(&mut c, &ctx, token, pick, &mut rng, &mut stats).await,
        }
    }
    stats
}

/// A package index skewed towards low numbers, as real popularity is.
fn popular(rng: &mut Rng, n: usize) -> usize {
    rng.below(n).min(rng.below(n))
}

async fn registry_read(
    c: &mut Clients,
    ctx: &Ctx,
    token: &str,
    pick: usize,
    rng: &mut Rng,
    stats: &mut Stats,
) {
    match pick {
        0..4 => {
            let query = WORDS[rng.below(WORDS.len())].to_owned();
            stats
                .time(
                    "registry.SearchPackages",
                    c.registry.search_packages(auth(
                        registry_pb::SearchPackagesRequest {
                            query,
                            page_size: 20,
                            ..Default::default()
                        },
                        token,
                    )),
                )
                .await;
        }
        4..7 => {
            let name = package_name(popular(rng, ctx.registry_packages));
            stats
                .time(
                    "registry.GetPackage",
                    c.registry
                        .get_package(auth(registry_pb::GetPackageRequest { name }, token)),
                )
                .await;
        }
        7..9 => {
            stats
                .time(
                    "registry.ListPackages",
                    c.registry.list_packages(auth(
                        registry_pb::ListPackagesRequest {
                            sort_by: registry_pb::SortBy::Downloads as i32,
                            page_size: 20,
                            ..Default::default()
                        },
                        token,
                    )),
                )
                .await;
        }
        _ => {
            let name = package_name(rng.below(ctx.registry_packages));
            stats
                .time(
                    "registry.ListVersions",
                    c.registry.list_versions(auth(
                        registry_pb::ListVersionsRequest {
                            package_name: name,
                            page_size: 20,
                            page_token: String::new(),
                        },
                        token,
                    )),
                )
                .await;
        }
    }
}

async fn store_step(
    c: &mut Clients,
    ctx: &Ctx,
    pick: usize,
    rng: &mut Rng,
    local: &mut Local,
    stats: &mut Stats,
) {
    let token = ctx.admin_token.as_str();
    ctx.pacer.wait().await;
    match pick {
        0..4 => {
            let bytes = 256 + rng.below(4096);
            let n = rng.next();
            let id = stats
                .time(
                    "store.PutObject",
                    put_object(&mut c.store, token, &ctx.run, "load", n, bytes),
                )
                .await;
            if let Some(id) = id {
                local.objects.push((id, bytes.max(16)));
            }
        }
        4..7 => {
            // Half the time one of its own objects, else one of the seeded ones.
            let (id, bytes) = if !local.objects.is_empty() && rng.below(2) == 0 {
                local.objects[rng.below(local.objects.len())].clone()
            } else {
                ctx.store_objects[rng.below(ctx.store_objects.len())].clone()
            };
            let mut client = c.store.clone();
            let received = stats
                .time("store.GetObject", async move {
                    let mut stream = client
                        .get_object(auth(store_pb::GetObjectRequest { manifest_id: id }, token))
                        .await?
                        .into_inner();
                    let mut received = 0;
                    while let Some(message) = stream.message().await? {
                        if let Some(store_pb::get_object_response::Part::Chunk(chunk)) =
                            message.part
                        {
                            received += chunk.len();
                        }
                    }
                    Ok(received)
                })
                .await;
            if let Some(received) = received
                && received != bytes
            {
                stats.fail(
                    "store.GetObject",
                    "DATA_MISMATCH".into(),
                    &format!("{received} bytes back of {bytes}"),
                );
            }
        }
        7 => {
            let id = ctx.store_objects[rng.below(ctx.store_objects.len())]
                .0
                .clone();
            stats
                .time(
                    "store.GetManifest",
                    c.store.get_manifest(auth(
                        store_pb::GetManifestRequest { manifest_id: id },
                        token,
                    )),
                )
                .await;
        }
        _ => {
            stats
                .time(
                    "store.ListManifests",
                    c.store.list_manifests(auth(
                        store_pb::ListManifestsRequest {
                            filter: Some(store_pb::ManifestFilter {
                                tags: quintet::proto::json_to_struct(
                                    &serde_json::json!({"soak": ctx.run, "kind": "seed"}),
                                ),
                                ..Default::default()
                            }),
                            page_size: 20,
                            page_token: String::new(),
                        },
                        token,
                    )),
                )
                .await;
        }
    }
}

/// Installs a package onto a fresh node and follows the job's log until it ends.
async fn install(
    c: &mut Clients,
    ctx: &Ctx,
    index: usize,
    rng: &mut Rng,
    local: &mut Local,
    stats: &mut Stats,
) {
    let token = ctx.admin_token.as_str();
    local.installs += 1;
    let node = format!("soak-{}-c{index}-{}", ctx.run, local.installs);
    let package = ctx.griot_packages[rng.below(ctx.griot_packages.len())].clone();
    ctx.pacer.wait().await;
    let job = stats
        .time(
            "griot.CreateInstallation",
            c.griot.create_installation(auth(
                griot_pb::CreateInstallationRequest {
                    package_id: package,
                    target_node_id: node.clone(),
                    options: None,
                    idempotency_key: node,
                },
                token,
            )),
        )
        .await;
    let Some(job_id) = job
        .and_then(|j| j.into_inner().installation)
        .map(|j| j.job_id)
    else {
        return;
    };
    ctx.pacer.wait().await;
    let mut client = c.griot.clone();
    let timeout = ctx.job_timeout;
    let finished = stats
        .time("griot.StreamInstallationLogs (follow)", async move {
            let follow = async {
                let mut stream = client
                    .stream_installation_logs(auth(
                        griot_pb::StreamInstallationLogsRequest {
                            job_id,
                            from_seq: 1,
                            follow: true,
                        },
                        token,
                    ))
                    .await?
                    .into_inner();
                while let Some(message) = stream.message().await? {
                    if let Some(griot_pb::stream_installation_logs_response::Event::Finished(job)) =
                        message.event
                    {
                        return Ok(Some(job));
                    }
                }
                Ok(None)
            };
            tokio::time::timeout(timeout, follow)
                .await
                .unwrap_or_else(|_| {
                    Err(Status::deadline_exceeded(format!(
                        "the job had not ended {} s into following its log",
                        timeout.as_secs()
                    )))
                })
        })
        .await;
    match finished {
        Some(Some(job)) if job.status == griot_pb::InstallationStatus::Completed as i32 => {}
        Some(Some(job)) => stats.fail(
            "griot.StreamInstallationLogs (follow)",
            format!(
                "job {}",
                griot_pb::InstallationStatus::try_from(job.status)
                    .map_or("?".into(), |s| s.as_str_name().to_owned())
            ),
            &job.status_message,
        ),
        Some(None) => stats.fail(
            "griot.StreamInstallationLogs (follow)",
            "ENDED_EARLY".into(),
            "the log ended without the job's final state",
        ),
        None => {}
    }
}

async fn market_read(
    c: &mut Clients,
    ctx: &Ctx,
    token: &str,
    pick: usize,
    rng: &mut Rng,
    stats: &mut Stats,
) {
    match pick {
        0..5 => {
            let request = market_search(rng);
            stats
                .time(
                    "market.SearchDatapods",
                    c.market.search_datapods(auth(request, token)),
                )
                .await;
        }
        5..8 => {
            let id = ctx.datapods[rng.below(ctx.datapods.len())].clone();
            stats
                .time(
                    "market.GetDatapod",
                    c.market
                        .get_datapod(auth(market_pb::GetDatapodRequest { id }, token)),
                )
                .await;
        }
        8 => {
            stats
                .time(
                    "market.GetCurrentUser",
                    c.market
                        .get_current_user(auth(market_pb::GetCurrentUserRequest {}, token)),
                )
                .await;
        }
        _ => {
            let id = ctx.datapods[rng.below(ctx.datapods.len())].clone();
            stats
                .time(
                    "market.ListReviews",
                    c.market.list_reviews(auth(
                        market_pb::ListReviewsRequest {
                            datapod_id: id,
                            page_size: 20,
                            page_token: String::new(),
                        },
                        token,
                    )),
                )
                .await;
        }
    }
}

async fn pds_write(
    c: &mut Clients,
    did: &str,
    token: &str,
    pick: usize,
    rng: &mut Rng,
    local: &mut Local,
    stats: &mut Stats,
) {
    match pick {
        0..6 => {
            let created = stats
                .time(
                    "pds.CreateRecord",
                    c.pds.create_record(auth(
                        pds_pb::CreateRecordRequest {
                            repo: did.to_owned(),
                            collection: "app.bsky.feed.post".into(),
                            record: pds_post(local.rkeys.len()),
                            ..Default::default()
                        },
                        token,
                    )),
                )
                .await;
            if let Some(created) = created
                && let Some(rkey) = created.into_inner().uri.rsplit('/').next()
            {
                local.rkeys.push(rkey.to_owned());
            }
        }
        6..8 => {
            let rkey = if local.rkeys.is_empty() {
                format!("soak{}", rng.below(5))
            } else {
                local.rkeys[rng.below(local.rkeys.len())].clone()
            };
            stats
                .time(
                    "pds.GetRecord",
                    c.pds.get_record(auth(
                        pds_pb::GetRecordRequest {
                            repo: did.to_owned(),
                            collection: "app.bsky.feed.post".into(),
                            rkey,
                            cid: String::new(),
                        },
                        token,
                    )),
                )
                .await;
        }
        _ => {
            stats
                .time(
                    "pds.ListRecords",
                    c.pds.list_records(auth(
                        pds_pb::ListRecordsRequest {
                            repo: did.to_owned(),
                            collection: "app.bsky.feed.post".into(),
                            page_size: 20,
                            ..Default::default()
                        },
                        token,
                    )),
                )
                .await;
        }
    }
}

async fn pds_read(
    c: &mut Clients,
    ctx: &Ctx,
    token: &str,
    pick: usize,
    rng: &mut Rng,
    stats: &mut Stats,
) {
    let repo = ctx.pds_repos[rng.below(ctx.pds_repos.len())].clone();
    match pick {
        0..5 => {
            stats
                .time(
                    "pds.GetRecord",
                    c.pds.get_record(auth(
                        pds_pb::GetRecordRequest {
                            repo,
                            collection: "app.bsky.feed.post".into(),
                            rkey: format!("soak{}", rng.below(5)),
                            cid: String::new(),
                        },
                        token,
                    )),
                )
                .await;
        }
        5..8 => {
            stats
                .time(
                    "pds.ListRecords",
                    c.pds.list_records(auth(
                        pds_pb::ListRecordsRequest {
                            repo,
                            collection: "app.bsky.feed.post".into(),
                            page_size: 20,
                            ..Default::default()
                        },
                        token,
                    )),
                )
                .await;
        }
        8 => {
            stats
                .time(
                    "pds.DescribeRepo",
                    c.pds
                        .describe_repo(auth(pds_pb::DescribeRepoRequest { repo }, token)),
                )
                .await;
        }
        _ => {
            stats
                .time(
                    "pds.GetLatestCommit",
                    c.pds.get_latest_commit(auth(
                        pds_pb::GetLatestCommitRequest { did: repo },
                        token,
                    )),
                )
                .await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The abusive clients

#[derive(Default)]
struct FloodResult {
    /// From the first call sent to the last answer.
    elapsed: Duration,
    calls: u64,
    ok: u64,
    rate_limited: u64,
    first_limited: Option<Duration>,
    other: BTreeMap<String, (u64, String)>,
    /// Calls outstanding, sampled as each is sent.
    in_flight_sum: u64,
    in_flight_max: usize,
}

/// GetPackage calls with one token, sent at `rate` per second whatever the answers (an open
/// loop, as a flood is: a closed loop of a few callers on a saturated server would never reach
/// the limit), with at most `max_in_flight` outstanding, until `stop`.
fn start_flood(
    channel: &Channel,
    token: &str,
    rate: u32,
    max_in_flight: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<FloodResult> {
    let client = RegistryServiceClient::new(channel.clone());
    let token = token.to_owned();
    tokio::spawn(async move {
        let started = Instant::now();
        let result = Arc::new(std::sync::Mutex::new(FloodResult::default()));
        let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
        let mut ticker =
            tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while !stop.load(Ordering::Relaxed) {
            ticker.tick().await;
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            {
                let in_flight = max_in_flight - slots.available_permits();
                let mut result = result.lock().unwrap_or_else(|e| e.into_inner());
                result.in_flight_sum += in_flight as u64;
                result.in_flight_max = result.in_flight_max.max(in_flight);
            }
            let (mut client, token, result) = (client.clone(), token.clone(), result.clone());
            tokio::spawn(async move {
                let reply = client
                    .get_package(auth(
                        registry_pb::GetPackageRequest {
                            name: package_name(0),
                        },
                        &token,
                    ))
                    .await;
                let mut result = result.lock().unwrap_or_else(|e| e.into_inner());
                result.calls += 1;
                match reply {
                    Ok(_) => result.ok += 1,
                    Err(status) if is_rate_limited(&status) => {
                        result.rate_limited += 1;
                        result.first_limited.get_or_insert(started.elapsed());
                    }
                    Err(status) => {
                        result
                            .other
                            .entry(error_key(&status))
                            .or_insert((0, status.message().to_owned()))
                            .0 += 1
                    }
                }
                drop(slot);
            });
        }
        // Every call sent has answered once all the slots are free again.
        let _ = slots.acquire_many(max_in_flight as u32).await;
        let mut result = std::mem::take(&mut *result.lock().unwrap_or_else(|e| e.into_inner()));
        result.elapsed = started.elapsed();
        result
    })
}

enum SlowOutcome {
    /// The call itself failed.
    Refused(Status),
    /// The stream ended with a status after `messages` buffered messages.
    Status {
        messages: u64,
        code: Code,
        message: String,
    },
    /// The stream ended cleanly.
    Ended { messages: u64 },
    /// Still open when the reader gave up reading: idle for a while, or still flowing.
    Open { messages: u64, idle: bool },
}

impl SlowOutcome {
    fn describe(&self) -> String {
        match self {
            SlowOutcome::Refused(status) => {
                format!("refused: {:?} {}", status.code(), status.message())
            }
            SlowOutcome::Status {
                messages,
                code: Code::ResourceExhausted,
                message,
            } => format!(
                "disconnected by the server: {messages} buffered messages, then RESOURCE_EXHAUSTED ({message})"
            ),
            SlowOutcome::Status {
                messages,
                code,
                message,
            } => format!("ended with {code:?} after {messages} messages: {message}"),
            SlowOutcome::Ended { messages } => {
                format!("ended normally after {messages} messages (the server's producer finished)")
            }
            SlowOutcome::Open {
                messages,
                idle: true,
            } => format!(
                "still open: {messages} messages were waiting, then nothing for 3 s (not ended by the server)"
            ),
            SlowOutcome::Open {
                messages,
                idle: false,
            } => format!(
                "still open and flowing after {messages} messages (not ended by the server)"
            ),
        }
    }
}

struct SlowReader {
    kind: String,
    outcome: SlowOutcome,
}

/// Streams opened and left unread; `finish` reads what each holds and how it ended.
struct SlowReaders {
    pending: Vec<(String, tokio::task::JoinHandle<SlowOutcome>)>,
    release: CancellationToken,
}

impl SlowReaders {
    async fn finish(self) -> Vec<SlowReader> {
        self.release.cancel();
        let mut readers = Vec::new();
        for (kind, task) in self.pending {
            let outcome = task
                .await
                .unwrap_or_else(|e| SlowOutcome::Refused(Status::internal(e.to_string())));
            readers.push(SlowReader { kind, outcome });
        }
        readers
    }
}

/// Opens `stream`, holds it unread until `release`, then reads what it holds for a while.
fn hold<T, F>(open: F, release: CancellationToken) -> tokio::task::JoinHandle<SlowOutcome>
where
    T: Send + 'static,
    F: Future<Output = Result<tonic::Response<tonic::Streaming<T>>, Status>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = match open.await {
            Ok(response) => response.into_inner(),
            Err(status) => return SlowOutcome::Refused(status),
        };
        release.cancelled().await;
        let mut messages = 0;
        let give_up = Instant::now() + Duration::from_secs(20);
        loop {
            if Instant::now() > give_up {
                return SlowOutcome::Open {
                    messages,
                    idle: false,
                };
            }
            match tokio::time::timeout(Duration::from_secs(3), stream.message()).await {
                Err(_) => {
                    return SlowOutcome::Open {
                        messages,
                        idle: true,
                    };
                }
                Ok(Ok(Some(_))) => messages += 1,
                Ok(Ok(None)) => return SlowOutcome::Ended { messages },
                Ok(Err(status)) => {
                    return SlowOutcome::Status {
                        messages,
                        code: status.code(),
                        message: status.message().to_owned(),
                    };
                }
            }
        }
    })
}

async fn start_slow_readers(
    ctx: &Ctx,
    channels: &[Channel],
    per_kind: usize,
    griot_job: &str,
) -> SlowReaders {
    let release = CancellationToken::new();
    let mut pending = Vec::new();
    let mut channels = channels.iter();
    for i in 0..per_kind {
        let mut pds = PdsServiceClient::new(channels.next().expect("a channel").clone());
        pending.push((
            format!("pds.SubscribeRepos #{}", i + 1),
            hold(
                async move {
                    pds.subscribe_repos(pds_pb::SubscribeReposRequest { cursor: Some(0) })
                        .await
                },
                release.clone(),
            ),
        ));
        let mut registry = RegistryServiceClient::new(channels.next().expect("a channel").clone());
        pending.push((
            format!("registry.WatchRegistryEvents #{}", i + 1),
            hold(
                async move {
                    registry
                        .watch_registry_events(registry_pb::WatchRegistryEventsRequest {
                            after_seq: 0,
                        })
                        .await
                },
                release.clone(),
            ),
        ));
        let mut store = StoreServiceClient::new(channels.next().expect("a channel").clone());
        ctx.pacer.wait().await;
        let token = ctx.admin_token.clone();
        pending.push((
            format!("store.WatchManifests #{}", i + 1),
            hold(
                async move {
                    store
                        .watch_manifests(auth(
                            store_pb::WatchManifestsRequest {
                                filter: None,
                                after_seq: 0,
                            },
                            &token,
                        ))
                        .await
                },
                release.clone(),
            ),
        ));
        let mut griot = GriotServiceClient::new(channels.next().expect("a channel").clone());
        ctx.pacer.wait().await;
        let (token, job_id) = (ctx.admin_token.clone(), griot_job.to_owned());
        pending.push((
            format!("griot.StreamInstallationLogs #{}", i + 1),
            hold(
                async move {
                    griot
                        .stream_installation_logs(auth(
                            griot_pb::StreamInstallationLogsRequest {
                                job_id,
                                from_seq: 1,
                                follow: true,
                            },
                            &token,
                        ))
                        .await
                },
                release.clone(),
            ),
        ));
    }
    SlowReaders { pending, release }
}
