//! `quintet-bench crash`: crash safety of the whole server.
//!
//! Runs its own PostgreSQL (a private cluster in a work directory, started with this machine's
//! server binaries exactly as the embedded one is) and the real `quintet` binary on it, with its
//! own data directory kept across restarts. Writers drive every service at once: registry
//! publishes, stars and downloads; store puts; griot registrations and installations; market
//! uploads, datapods, purchases (paid on a stand-in Sui ledger in this process) and reviews; PDS
//! record writes. Each writer books every write the server acknowledged (an OK response) with
//! what can be checked later; idempotent writes (installations, purchases) whose outcome a kill
//! left unknown are retried with their idempotency key until the server answers. Then, after a
//! random stretch of writes, as soon as every service has a write in flight (writers write back
//! to back meanwhile):
//! - quintet is killed with SIGKILL, restarted, and waited for until healthy;
//! - or PostgreSQL's postmaster is killed with SIGKILL and restarted, quintet left running: every
//!   call that failed while the database was away (writers' and probes', unary and streaming,
//!   on every service) must have failed with UNAVAILABLE, never INTERNAL or UNKNOWN, and once it
//!   is back every service must answer again within a bound, by the same quintet process.
//!
//! After every restart, and once more at the end over everything, it checks:
//! - every acknowledged write is there, read back through gRPC;
//! - nothing half-written is visible: every registry version downloads and hashes to its digest,
//!   every store manifest has all its contents and their bytes hash to their digests, every PDS
//!   repository exports as a CAR whose signed head commit reaches every block and record, every
//!   installed griot package is on disk with its bytes, every completed purchase delivers a key
//!   that decrypts the dataset it sold;
//! - no background work is stuck: no griot job left pending or running on a dead worker's lease,
//!   no market purchase left due and unworked (and at the end, all of them finished);
//! - every denormalised counter equals what it counts, read with SQL straight from the database
//!   (one statement each, so each comparison sees one snapshot while writers go on).
//!
//! A check after a restart reads back the writes acknowledged since the previous check (and
//! every repository, and every invariant over whole tables); the final check, once the writers
//! stopped and background work finished, reads back all of them.
//!
//! PostgreSQL runs with synchronous_commit on (an acknowledged commit is in the WAL that the
//! kernel holds) and, unless `--pg-fsync`, fsync off: SIGKILLs lose no page cache, so that
//! changes nothing this test can observe, and spares the CI machine's disk.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bytes::Bytes;
use cid::Cid;
use ipld_core::ipld::Ipld;
use quintet::{
    blobs::Sha256,
    db::{EmbeddedOptions, EmbeddedPostgres},
    hex::to_hex,
    market::{
        crypto,
        payment::SUI_COIN_TYPE,
        standin_ledger::{StandInLedger, Transfer},
    },
    pds::{car, data, keys::PublicKey, mst},
    proto::quintet::{
        griot::v1::{self as griot_pb, griot_service_client::GriotServiceClient},
        market::v1::{self as market_pb, market_service_client::MarketServiceClient},
        pds::v1::{self as pds_pb, pds_service_client::PdsServiceClient},
        registry::v1::{self as registry_pb, registry_service_client::RegistryServiceClient},
        store::v1::{self as store_pb, store_service_client::StoreServiceClient},
    },
};
use ring::{agreement, rand::SystemRandom};
use sqlx::PgPool;
use tonic::{Code, Status, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{Rng, auth};

#[derive(clap::Args)]
pub struct Args {
    /// The quintet binary to run (default: `quintet` beside this program, else
    /// target/debug/quintet).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// How many times to SIGKILL quintet.
    #[arg(long, default_value_t = 25)]
    kills: usize,
    /// How many times to SIGKILL PostgreSQL's postmaster (quintet keeps running).
    #[arg(long, default_value_t = 5)]
    pg_kills: usize,
    /// Seed of the schedule and the generated data (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Longest stretch of writes between a recovery and the next kill, in milliseconds (each
    /// stretch is random, from a quarter of it up to it).
    #[arg(long, default_value_t = 3000)]
    interval_ms: u64,
    /// How long PostgreSQL stays down, in seconds: long enough for quintet's connection pool to
    /// give up (5 s), so that calls are answered while it is down.
    #[arg(long, default_value_t = 6.5)]
    pg_down_secs: f64,
    /// Calls must succeed again within this many seconds of PostgreSQL accepting connections.
    #[arg(long, default_value_t = 15)]
    pg_recovery_secs: u64,
    /// After the last restart, griot jobs and market purchases must all finish within this many
    /// seconds (a dead worker's job waits for its 30 s lease to expire).
    #[arg(long, default_value_t = 90)]
    settle_secs: u64,
    /// Writers per service (the market has as many sellers and one more buyer).
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Each writer's pause after an acknowledged write, in milliseconds (after a failed one it
    /// waits at least 100 ms): what is written must stay checkable after every restart.
    #[arg(long, default_value_t = 100)]
    pace_ms: u64,
    /// Keep PostgreSQL's fsync on. A SIGKILL loses no page cache, so fsync changes nothing about
    /// what this test kills; synchronous_commit stays on either way.
    #[arg(long)]
    pg_fsync: bool,
    /// Work directory (default: a fresh one under the temporary directory, removed after a clean
    /// run and kept after a failed one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the work directory even after a clean run.
    #[arg(long)]
    keep: bool,
    /// Where PostgreSQL's `initdb` and `postgres` are (default: found as quintet finds them).
    #[arg(long, env = "QUINTET_PG_BINDIR")]
    pg_bindir: Option<PathBuf>,
}

/// The market's escrow address on the stand-in ledger.
const ESCROW: &str = "0x00000000000000000000000000000000000000000000000000000000c4a5e5c0";
const STORE_CLASS: &str = "6c7a3e2b-5f0d-4e4b-9a61-2d8f3c1b0e77";
const POST: &str = "app.bsky.feed.post";
/// Per-call deadline of every client (the server gives up on the database after 5 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Svc {
    Registry,
    Store,
    Griot,
    Market,
    Pds,
}

const SERVICES: [Svc; 5] = [Svc::Registry, Svc::Store, Svc::Griot, Svc::Market, Svc::Pds];

impl Svc {
    fn name(self) -> &'static str {
        match self {
            Svc::Registry => "registry",
            Svc::Store => "store",
            Svc::Griot => "griot",
            Svc::Market => "market",
            Svc::Pds => "pds",
        }
    }

    fn i(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// An acknowledged write is not there (or not as acknowledged).
    Lost,
    /// Something visible is incomplete.
    Half,
    /// A denormalised counter differs from what it counts.
    Counter,
    /// Background work that should have moved did not.
    Stuck,
}

#[derive(Default, Clone, Copy)]
struct Tally {
    verified: u64,
    counters_checked: u64,
    lost: u64,
    half: u64,
    counters: u64,
    stuck: u64,
}

/// A failed call of a writer or probe, for judging what clients saw during database outages.
struct Failure {
    svc: Svc,
    code: Code,
    started: Instant,
    ended: Instant,
    message: String,
}

/// What writers, probes, the checker and the schedule share.
struct Shared {
    stop: AtomicBool,
    /// Milliseconds a writer pauses after an acknowledged write.
    pace_ms: u64,
    /// Set while a kill waits for every service to have a write in flight: writers then write
    /// back to back.
    hurry: AtomicBool,
    flights: [AtomicUsize; 5],
    acks: [AtomicU64; 5],
    failures: Mutex<Vec<Failure>>,
    tallies: Mutex<[Tally; 5]>,
    messages: Mutex<Vec<String>>,
    registry: Mutex<RegistryBook>,
    store: Mutex<StoreBook>,
    griot: Mutex<GriotBook>,
    market: Mutex<MarketBook>,
    pds: Mutex<PdsBook>,
}

/// Counts a write as in flight until it is dropped.
struct Flight<'a>(&'a AtomicUsize);

impl<'a> Flight<'a> {
    fn start(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Flight(counter)
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    fn new(pace_ms: u64) -> Self {
        Shared {
            stop: AtomicBool::new(false),
            pace_ms,
            hurry: AtomicBool::new(false),
            flights: Default::default(),
            acks: Default::default(),
            failures: Mutex::default(),
            tallies: Mutex::default(),
            messages: Mutex::default(),
            registry: Mutex::default(),
            store: Mutex::default(),
            griot: Mutex::default(),
            market: Mutex::default(),
            pds: Mutex::default(),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// A writer's pause between writes.
    async fn pause(&self, ok: bool) {
        let ms = match (ok, self.hurry.load(Ordering::Relaxed)) {
            (true, true) => return tokio::task::yield_now().await,
            (true, false) => self.pace_ms,
            (false, _) => self.pace_ms.max(100),
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Records a violation, once: a later check finding the same thing again says nothing new.
    fn violation(&self, svc: Svc, kind: Kind, message: String) {
        let line = format!("[{}] {kind:?}: {message}", svc.name());
        if self.messages.lock().unwrap().contains(&line) {
            return;
        }
        eprintln!("VIOLATION {line}");
        {
            let mut tallies = self.tallies.lock().unwrap();
            let tally = &mut tallies[svc.i()];
            match kind {
                Kind::Lost => tally.lost += 1,
                Kind::Half => tally.half += 1,
                Kind::Counter => tally.counters += 1,
                Kind::Stuck => tally.stuck += 1,
            }
        }
        self.messages.lock().unwrap().push(line);
    }

    fn verified(&self, svc: Svc, n: u64) {
        self.tallies.lock().unwrap()[svc.i()].verified += n;
    }

    fn counters_checked(&self, svc: Svc, n: u64) {
        self.tallies.lock().unwrap()[svc.i()].counters_checked += n;
    }

    /// One write: in flight while it runs, acknowledged if OK, its failure recorded.
    async fn write<T>(
        &self,
        svc: Svc,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let _flight = Flight::start(&self.flights[svc.i()]);
        let started = Instant::now();
        let result = call.await;
        match &result {
            Ok(_) => {
                self.acks[svc.i()].fetch_add(1, Ordering::Relaxed);
            }
            Err(status) => self.failed(svc, status, started),
        }
        result
    }

    /// A read by a writer or probe: only its failure is recorded.
    async fn read<T>(
        &self,
        svc: Svc,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let result = call.await;
        if let Err(status) = &result {
            self.failed(svc, status, started);
        }
        result
    }

    fn failed(&self, svc: Svc, status: &Status, started: Instant) {
        let message = status.message().chars().take(200).collect();
        self.failures.lock().unwrap().push(Failure {
            svc,
            code: status.code(),
            started,
            ended: Instant::now(),
            message,
        });
    }
}

/// Whether a call may or may not have happened: the server went away (or timed out) before it
/// answered.
fn ambiguous(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

/// Retries an idempotent write (the same request, the same idempotency key) for as long as its
/// outcome is unknown: after a restart the server must answer with the one it stored.
async fn idempotent<T, F, Fut>(shared: &Shared, mut attempt: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(status) if ambiguous(&status) && tries < 100 && !shared.stopped() => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

/// Retries a checker's read while the answer is a transport failure or ABORTED (a concurrent
/// change won; the documented answer is to retry), not the server's verdict.
async fn retry<T, F, Fut>(mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut tries = 0;
    loop {
        match call().await {
            Err(status) if (ambiguous(&status) || status.code() == Code::Aborted) && tries < 40 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => return other,
        }
    }
}

fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        bytes.extend_from_slice(&rng.next().to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::of(bytes).to_hex()
}

fn pick<T: Clone>(rng: &mut Rng, items: &[T]) -> Option<T> {
    (!items.is_empty()).then(|| items[rng.below(items.len())].clone())
}

// ----------------------------------------------------------------------------------------------
// What was acknowledged.

#[derive(Clone)]
struct Published {
    package: String,
    version: String,
    sha256: String,
    size: i64,
}

#[derive(Default)]
struct RegistryBook {
    /// (username, API token) of each writer.
    users: Vec<(String, String)>,
    published: Vec<Published>,
    packages: Vec<String>,
    /// (package, username).
    stars: Vec<(String, String)>,
    /// Complete downloads (writers' and the checker's) per (package, version).
    downloads: HashMap<(String, String), u64>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
struct StoredContent {
    name: String,
    sha256: String,
    size: i64,
}

#[derive(Default)]
struct StoreBook {
    objects: Vec<(String, Vec<StoredContent>)>,
}

#[derive(Default)]
struct GriotBook {
    /// The `run.sh` of every artifact sent, acknowledged or not, by package id.
    artifacts: HashMap<String, String>,
    /// (package id, artifact size).
    packages: Vec<(String, i64)>,
    /// (job, package, target).
    jobs: Vec<(String, String, String)>,
}

struct Buyer {
    session: String,
    address: String,
}

#[derive(Clone)]
struct Pod {
    id: String,
    seller: usize,
    title: String,
    price_mist: i64,
    plaintext_sha256: String,
    published: bool,
}

struct Bought {
    id: String,
    buyer: usize,
    datapod: String,
    /// The X25519 key the dataset key is wrapped for; used (and consumed) once, to check the
    /// delivery.
    key: Option<agreement::EphemeralPrivateKey>,
}

#[derive(Default)]
struct MarketBook {
    sellers: Vec<String>,
    buyers: Vec<Buyer>,
    datapods: Vec<Pod>,
    purchases: Vec<Bought>,
    /// (purchase, buyer, rating).
    reviews: Vec<(String, usize, i32)>,
    /// (buyer, datapod) pairs bought or tried.
    tried: HashSet<(usize, String)>,
    /// Purchases reviewed or tried.
    reviewed: HashSet<String>,
}

#[derive(Clone)]
struct PdsAccount {
    did: String,
    token: String,
}

#[derive(Default)]
struct PdsBook {
    accounts: Vec<PdsAccount>,
    /// (did, collection/rkey, record CID).
    records: Vec<(String, String, String)>,
}

// ----------------------------------------------------------------------------------------------
// The processes.

/// The quintet server, a child process that dies with this one.
struct Server {
    bin: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<tokio::process::Child>,
}

impl Server {
    fn spawn(&mut self) -> anyhow::Result<u32> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = tokio::process::Command::new(&self.bin);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("QUINTET_") || key == "DATABASE_URL" {
                command.env_remove(key);
            }
        }
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; it runs in the child between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        let pid = child.id().context("the server has no pid")?;
        self.child = Some(child);
        Ok(pid)
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it does not exit within 20 s.
    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                // SAFETY: a plain syscall on our own child, not yet reaped.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
            if tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .is_err()
            {
                child.start_kill()?;
                child.wait().await?;
            }
        }
        Ok(())
    }

    async fn wait_healthy(&mut self, channel: &Channel, bound: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if !self.alive() {
                bail!(
                    "the server exited while starting; see {}",
                    self.log.display()
                );
            }
            let mut health = HealthClient::new(channel.clone());
            let check = health.check(HealthCheckRequest {
                service: String::new(),
            });
            if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(2), check).await
                && response.into_inner().status() == ServingStatus::Serving
            {
                return Ok(());
            }
            if started.elapsed() > bound {
                bail!(
                    "the server was not healthy within {bound:?}; see {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The PostgreSQL cluster this tool owns (so that it can kill it).
struct Postgres {
    options: EmbeddedOptions,
    cluster: Option<EmbeddedPostgres>,
}

impl Postgres {
    /// Starts the cluster, retrying for a while: right after a SIGKILL of the postmaster its
    /// orphaned backends may still hold the shared memory, and PostgreSQL refuses to start until
    /// they are gone.
    async fn start(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match EmbeddedPostgres::start(self.options.clone()).await {
                Ok(cluster) => {
                    self.cluster = Some(cluster);
                    return Ok(());
                }
                Err(error) if Instant::now() < deadline => {
                    tracing::debug!(%error, "PostgreSQL did not start yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error.context("PostgreSQL did not restart")),
            }
        }
    }

    /// SIGKILLs the postmaster.
    async fn kill(&mut self) {
        let Some(cluster) = self.cluster.take() else {
            return;
        };
        let pid = cluster.pid();
        // SAFETY: a plain syscall on the postmaster, which its supervising thread has not reaped.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        // That thread reaps it. Until then the pid is still the postmaster's; after, dropping the
        // handle would signal a pid that may be someone else's, so it is forgotten instead.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        std::mem::forget(cluster);
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(cluster) = self.cluster.take() {
            cluster.stop().await?;
        }
        Ok(())
    }
}

// ----------------------------------------------------------------------------------------------
// Writers.

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

fn registry_manifest(name: &str, version: &str) -> String {
    serde_json::json!({
        "name": name, "version": version, "description": "written by quintet-bench crash",
        "keywords": ["crash"], "license": "MIT", "engines": {"atom": ">=1.0.0 <2.0.0"},
    })
    .to_string()
}

async fn publish(
    client: &RegistryServiceClient<Channel>,
    token: &str,
    new_package: bool,
    name: &str,
    version: &str,
    tarball: &[u8],
) -> Result<Option<registry_pb::Version>, Status> {
    let header = registry_pb::PublishHeader {
        manifest_json: registry_manifest(name, version),
        readme: format!("# {name}\n\nA package the crash test publishes."),
        tarball_sha256: String::new(),
    };
    let chunks: Vec<Bytes> = tarball
        .chunks(16 * 1024)
        .map(Bytes::copy_from_slice)
        .collect();
    let mut client = client.clone();
    if new_package {
        use registry_pb::publish_package_request::Part;
        let messages = std::iter::once(Part::Header(header))
            .chain(chunks.into_iter().map(Part::Chunk))
            .map(|part| registry_pb::PublishPackageRequest { part: Some(part) });
        let response = client
            .publish_package(auth(tokio_stream::iter(messages), token))
            .await?;
        Ok(response.into_inner().version)
    } else {
        use registry_pb::publish_version_request::Part;
        let first = Part::Header(registry_pb::PublishVersionHeader {
            package_name: name.to_owned(),
            publish: Some(header),
        });
        let messages = std::iter::once(first)
            .chain(chunks.into_iter().map(Part::Chunk))
            .map(|part| registry_pb::PublishVersionRequest { part: Some(part) });
        let response = client
            .publish_version(auth(tokio_stream::iter(messages), token))
            .await?;
        Ok(response.into_inner().version)
    }
}

/// Downloads a version: what the first message says, and the SHA-256 and size of the bytes.
async fn download(
    client: &RegistryServiceClient<Channel>,
    package: &str,
    version: &str,
) -> Result<(registry_pb::Version, String, i64), Status> {
    use registry_pb::download_version_response::Part;
    let mut stream = client
        .clone()
        .download_version(registry_pb::DownloadVersionRequest {
            package_name: package.to_owned(),
            version: version.to_owned(),
        })
        .await?
        .into_inner();
    let (mut header, mut bytes) = (None, Vec::new());
    while let Some(message) = stream.message().await? {
        match message.part {
            Some(Part::Version(v)) => header = Some(v),
            Some(Part::Chunk(chunk)) => bytes.extend_from_slice(&chunk),
            None => {}
        }
    }
    let header = header.ok_or_else(|| Status::data_loss("the download named no version"))?;
    Ok((header, sha_hex(&bytes), bytes.len() as i64))
}

async fn registry_writer(shared: Arc<Shared>, channel: Channel, w: usize, mut rng: Rng) {
    let (username, token) = shared.registry.lock().unwrap().users[w].clone();
    let client = RegistryServiceClient::new(channel);
    // Own packages and the next minor version of each.
    let mut own: Vec<(String, u32)> = Vec::new();
    let mut n = 0;
    while !shared.stopped() {
        n += 1;
        let roll = rng.below(10);
        let ok = if own.is_empty() || roll < 3 || roll < 6 {
            let new_package = own.is_empty() || roll < 3;
            let (name, version) = if new_package {
                (format!("crash-{w}-{n}"), "1.0.0".to_owned())
            } else {
                let i = rng.below(own.len());
                own[i].1 += 1;
                (own[i].0.clone(), format!("1.{}.0", own[i].1 - 1))
            };
            let mut content = format!("{name}@{version}\n").into_bytes();
            let len = 512 + rng.below(24 * 1024);
            content.extend(random_bytes(&mut rng, len));
            let tarball = gzip(&content);
            let sha256 = sha_hex(&tarball);
            let call = publish(&client, &token, new_package, &name, &version, &tarball);
            match shared.write(Svc::Registry, call).await {
                Ok(answered) => {
                    if answered.as_ref().map(|v| v.tarball_sha256.as_str()) != Some(&sha256) {
                        shared.violation(
                            Svc::Registry,
                            Kind::Half,
                            format!("publishing {name}@{version} answered another tarball"),
                        );
                    }
                    let mut book = shared.registry.lock().unwrap();
                    book.published.push(Published {
                        package: name.clone(),
                        version,
                        sha256,
                        size: tarball.len() as i64,
                    });
                    if new_package {
                        book.packages.push(name.clone());
                        own.push((name, 1));
                    }
                    true
                }
                Err(_) => false,
            }
        } else if roll < 9 {
            let package = pick(&mut rng, &shared.registry.lock().unwrap().packages);
            let Some(package) = package else { continue };
            let mut client = client.clone();
            let request = auth(
                registry_pb::StarPackageRequest {
                    package_name: package.clone(),
                },
                &token,
            );
            match shared
                .write(Svc::Registry, client.star_package(request))
                .await
            {
                Ok(_) => {
                    shared
                        .registry
                        .lock()
                        .unwrap()
                        .stars
                        .push((package, username.clone()));
                    true
                }
                Err(_) => false,
            }
        } else {
            let chosen = pick(&mut rng, &shared.registry.lock().unwrap().published);
            let Some(chosen) = chosen else { continue };
            let call = download(&client, &chosen.package, &chosen.version);
            match shared.write(Svc::Registry, call).await {
                Ok((_, sha256, size)) => {
                    if sha256 != chosen.sha256 || size != chosen.size {
                        shared.violation(
                            Svc::Registry,
                            Kind::Half,
                            format!(
                                "{}@{} downloaded other bytes",
                                chosen.package, chosen.version
                            ),
                        );
                    }
                    *shared
                        .registry
                        .lock()
                        .unwrap()
                        .downloads
                        .entry((chosen.package, chosen.version))
                        .or_default() += 1;
                    true
                }
                Err(_) => false,
            }
        };
        shared.pause(ok).await;
    }
}

fn store_content(
    name: &str,
    storage: &str,
    serializer: store_pb::SerializerType,
    content_type: &str,
) -> store_pb::PutObjectRequest {
    store_pb::PutObjectRequest {
        part: Some(store_pb::put_object_request::Part::Content(
            store_pb::ContentHeader {
                content_name: name.to_owned(),
                content_type: content_type.to_owned(),
                serializer_name: if serializer == store_pb::SerializerType::Value {
                    "json@v1".to_owned()
                } else {
                    "raw@v1".to_owned()
                },
                serializer_type: serializer as i32,
                storage_name: storage.to_owned(),
                ..Default::default()
            },
        )),
    }
}

async fn store_writer(
    shared: Arc<Shared>,
    channel: Channel,
    admin: String,
    run: String,
    w: usize,
    mut rng: Rng,
) {
    use store_pb::{SerializerType, put_object_request::Part};
    let client = StoreServiceClient::new(channel);
    let mut n = 0;
    while !shared.stopped() {
        n += 1;
        let config = serde_json::json!({"writer": w, "n": n, "rate": rng.below(1000)})
            .to_string()
            .into_bytes();
        let weights_len = 4096 + rng.below(192 * 1024);
        let weights = random_bytes(&mut rng, weights_len);
        let notes_len = 1 + rng.below(8 * 1024);
        let notes = random_bytes(&mut rng, notes_len);
        let contents = [
            (
                "config",
                quintet::store::INLINE,
                SerializerType::Value,
                "application/json",
                config,
            ),
            (
                "weights",
                quintet::store::FILE,
                SerializerType::Stream,
                "application/octet-stream",
                weights,
            ),
            (
                "notes",
                quintet::store::FILE,
                SerializerType::Stream,
                "application/octet-stream",
                notes,
            ),
        ];
        let tags = serde_json::json!({
            "crash": run, "contents": contents.len().to_string(), "writer": w.to_string(),
            "n": n.to_string(),
        });
        let mut messages = vec![store_pb::PutObjectRequest {
            part: Some(Part::Manifest(store_pb::ManifestHeader {
                class_id: STORE_CLASS.to_owned(),
                unpacker_name: "crash@v1".to_owned(),
                tags: quintet::proto::json_to_struct(&tags),
            })),
        }];
        let mut expected = Vec::new();
        for (name, storage, serializer, content_type, bytes) in &contents {
            messages.push(store_content(name, storage, *serializer, content_type));
            for chunk in bytes.chunks(64 * 1024) {
                messages.push(store_pb::PutObjectRequest {
                    part: Some(Part::Chunk(Bytes::copy_from_slice(chunk))),
                });
            }
            expected.push(StoredContent {
                name: (*name).to_owned(),
                sha256: sha_hex(bytes),
                size: bytes.len() as i64,
            });
        }
        let mut c = client.clone();
        let call = c.put_object(auth(tokio_stream::iter(messages), &admin));
        let ok = match shared.write(Svc::Store, call).await {
            Ok(response) => {
                let response = response.into_inner();
                let mut answered: Vec<StoredContent> = response
                    .contents
                    .iter()
                    .map(|c| StoredContent {
                        name: c.content_name.clone(),
                        sha256: c.content_hash.clone(),
                        size: c.content_size,
                    })
                    .collect();
                answered.sort_by(|a, b| a.name.cmp(&b.name));
                let mut sorted = expected.clone();
                sorted.sort_by(|a, b| a.name.cmp(&b.name));
                if answered != sorted {
                    shared.violation(
                        Svc::Store,
                        Kind::Half,
                        format!("PutObject answered other contents: {answered:?}"),
                    );
                }
                let id = response.manifest.map(|m| m.id).unwrap_or_default();
                shared.store.lock().unwrap().objects.push((id, expected));
                true
            }
            Err(_) => false,
        };
        shared.pause(ok).await;
    }
}

/// A gzipped tar holding one executable `run.sh`.
fn griot_artifact(script: &str) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_size(script.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    builder
        .append_data(&mut header, "run.sh", script.as_bytes())
        .expect("writing to memory");
    builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .expect("writing to memory")
}

#[allow(clippy::too_many_arguments)]
async fn griot_writer(
    shared: Arc<Shared>,
    channel: Channel,
    admin: String,
    key: PathBuf,
    run: String,
    w: usize,
    mut rng: Rng,
) {
    let client = GriotServiceClient::new(channel);
    let mut n = 0;
    while !shared.stopped() {
        n += 1;
        let package = pick(&mut rng, &shared.griot.lock().unwrap().packages);
        let ok = match package {
            Some((package_id, _)) if rng.below(10) >= 4 => {
                let request = griot_pb::CreateInstallationRequest {
                    package_id: package_id.clone(),
                    target_node_id: format!("node-{w}-{n}"),
                    options: None,
                    idempotency_key: format!("crash-{run}-{w}-{n}"),
                };
                let attempt = || {
                    let mut client = client.clone();
                    let request = auth(request.clone(), &admin);
                    shared.write(Svc::Griot, async move {
                        client.create_installation(request).await
                    })
                };
                match idempotent(&shared, attempt).await {
                    Ok(response) => {
                        let job = response.into_inner().installation.unwrap_or_default();
                        shared.griot.lock().unwrap().jobs.push((
                            job.job_id,
                            package_id,
                            request.target_node_id,
                        ));
                        true
                    }
                    Err(_) => false,
                }
            }
            _ => {
                let script = format!("#!/bin/sh\necho crash {run} {w} {n} {}\n", rng.next());
                let artifact = griot_artifact(&script);
                let sha256 = sha_hex(&artifact);
                let manifest = serde_json::json!({
                    "name": format!("crash-{w}-{n}"), "node_class": "crash", "version": "1.0.0",
                    "description": "written by quintet-bench crash", "artifact_sha256": sha256,
                })
                .to_string();
                let signed = match quintet::griot::sign::sign_manifest(&key, &manifest, None) {
                    Ok(signed) => signed,
                    Err(error) => {
                        eprintln!("cannot sign a griot manifest: {error:#}");
                        return;
                    }
                };
                shared
                    .griot
                    .lock()
                    .unwrap()
                    .artifacts
                    .insert(sha256.clone(), script);
                use griot_pb::register_package_request::Part;
                let messages = [
                    Part::Header(griot_pb::PackageHeader {
                        manifest_json: signed.to_string(),
                        ..Default::default()
                    }),
                    Part::Chunk(artifact.clone().into()),
                ]
                .map(|part| griot_pb::RegisterPackageRequest { part: Some(part) });
                let mut c = client.clone();
                let call = c.register_package(auth(tokio_stream::iter(messages), &admin));
                match shared.write(Svc::Griot, call).await {
                    Ok(response) => {
                        let package = response.into_inner().package.unwrap_or_default();
                        if package.package_id != sha256 {
                            shared.violation(
                                Svc::Griot,
                                Kind::Half,
                                format!(
                                    "RegisterPackage of {sha256} answered {}",
                                    package.package_id
                                ),
                            );
                        }
                        shared
                            .griot
                            .lock()
                            .unwrap()
                            .packages
                            .push((sha256, artifact.len() as i64));
                        true
                    }
                    Err(_) => false,
                }
            }
        };
        shared.pause(ok).await;
    }
}

async fn market_seller(shared: Arc<Shared>, channel: Channel, s: usize, mut rng: Rng) {
    use market_pb::upload_dataset_request::Part;
    let session = shared.market.lock().unwrap().sellers[s].clone();
    let client = MarketServiceClient::new(channel);
    let mut n = 0;
    while !shared.stopped() {
        n += 1;
        let mut csv = String::from("station,reading,n\n");
        for row in 0..20 + rng.below(200) {
            csv.push_str(&format!("s{s}-{n},{},{row}\n", rng.below(100_000)));
        }
        let plaintext_sha256 = sha_hex(csv.as_bytes());
        let messages = [
            Part::Header(market_pb::DatasetHeader {
                file_type: "text/csv".to_owned(),
            }),
            Part::Chunk(csv.into_bytes().into()),
        ]
        .map(|part| market_pb::UploadDatasetRequest { part: Some(part) });
        let mut c = client.clone();
        let call = c.upload_dataset(auth(tokio_stream::iter(messages), &session));
        let dataset = match shared.write(Svc::Market, call).await {
            Ok(response) => response.into_inner().dataset.unwrap_or_default(),
            Err(_) => {
                shared.pause(false).await;
                continue;
            }
        };
        if dataset.data_hash != plaintext_sha256 {
            shared.violation(
                Svc::Market,
                Kind::Half,
                format!("UploadDataset {} answered another data hash", dataset.id),
            );
        }
        let title = format!("Crash readings {s}-{n}");
        let price_mist = (1 + rng.below(40) as i64) * 100_000_000;
        let request = auth(
            market_pb::CreateDatapodRequest {
                dataset_id: dataset.id.clone(),
                title: title.clone(),
                description: "readings written by quintet-bench crash".to_owned(),
                category: "crash".to_owned(),
                price_mist,
            },
            &session,
        );
        let mut c = client.clone();
        let datapod = match shared.write(Svc::Market, c.create_datapod(request)).await {
            Ok(response) => response.into_inner().datapod.unwrap_or_default(),
            Err(_) => {
                shared.pause(false).await;
                continue;
            }
        };
        let index = {
            let mut book = shared.market.lock().unwrap();
            book.datapods.push(Pod {
                id: datapod.id.clone(),
                seller: s,
                title,
                price_mist,
                plaintext_sha256,
                published: false,
            });
            book.datapods.len() - 1
        };
        let request = auth(
            market_pb::PublishDatapodRequest {
                id: datapod.id.clone(),
            },
            &session,
        );
        let mut c = client.clone();
        let ok = shared
            .write(Svc::Market, c.publish_datapod(request))
            .await
            .is_ok();
        if ok {
            shared.market.lock().unwrap().datapods[index].published = true;
        }
        shared.pause(ok).await;
    }
}

async fn market_buyer(
    shared: Arc<Shared>,
    channel: Channel,
    ledger: StandInLedger,
    run: String,
    b: usize,
    mut rng: Rng,
) {
    let (session, address) = {
        let book = shared.market.lock().unwrap();
        (
            book.buyers[b].session.clone(),
            book.buyers[b].address.clone(),
        )
    };
    let client = MarketServiceClient::new(channel);
    let mut n = 0;
    while !shared.stopped() {
        n += 1;
        if rng.below(10) < 6 {
            let pod = {
                let mut book = shared.market.lock().unwrap();
                let open: Vec<Pod> = book
                    .datapods
                    .iter()
                    .filter(|p| p.published && !book.tried.contains(&(b, p.id.clone())))
                    .cloned()
                    .collect();
                let pod = pick(&mut rng, &open);
                if let Some(pod) = &pod {
                    book.tried.insert((b, pod.id.clone()));
                }
                pod
            };
            let Some(pod) = pod else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let private =
                agreement::EphemeralPrivateKey::generate(&agreement::X25519, &SystemRandom::new())
                    .expect("the system's random source works");
            let public = private
                .compute_public_key()
                .expect("an X25519 public key")
                .as_ref()
                .to_vec();
            let digest = ledger.transfer(&Transfer {
                sender: &address,
                recipient: ESCROW,
                coin_type: SUI_COIN_TYPE,
                amount_mist: pod.price_mist,
                checkpointed: true,
                succeeded: true,
            });
            let request = market_pb::CreatePurchaseRequest {
                datapod_id: pod.id.clone(),
                payment_tx_digest: digest,
                buyer_public_key: public.into(),
                idempotency_key: format!("crash-{run}-{b}-{n}"),
            };
            let attempt = || {
                let mut client = client.clone();
                let request = auth(request.clone(), &session);
                shared.write(
                    Svc::Market,
                    async move { client.create_purchase(request).await },
                )
            };
            let ok = match idempotent(&shared, attempt).await {
                Ok(response) => {
                    let purchase = response.into_inner().purchase.unwrap_or_default();
                    shared.market.lock().unwrap().purchases.push(Bought {
                        id: purchase.id,
                        buyer: b,
                        datapod: pod.id,
                        key: Some(private),
                    });
                    true
                }
                Err(_) => false,
            };
            shared.pause(ok).await;
        } else {
            let mine: Vec<String> = {
                let book = shared.market.lock().unwrap();
                book.purchases
                    .iter()
                    .filter(|p| p.buyer == b && !book.reviewed.contains(&p.id))
                    .map(|p| p.id.clone())
                    .collect()
            };
            let Some(id) = pick(&mut rng, &mine) else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let mut c = client.clone();
            let request = auth(market_pb::GetPurchaseRequest { id: id.clone() }, &session);
            let purchase = match shared.read(Svc::Market, c.get_purchase(request)).await {
                Ok(response) => response.into_inner().purchase.unwrap_or_default(),
                Err(_) => {
                    shared.pause(false).await;
                    continue;
                }
            };
            if purchase.status() != market_pb::PurchaseStatus::Completed {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            shared.market.lock().unwrap().reviewed.insert(id.clone());
            let rating = 1 + rng.below(5) as i32;
            let request = auth(
                market_pb::CreateReviewRequest {
                    purchase_id: id.clone(),
                    rating,
                    comment: format!("review {n} by buyer {b}"),
                },
                &session,
            );
            let mut c = client.clone();
            let ok = match shared.write(Svc::Market, c.create_review(request)).await {
                Ok(_) => {
                    shared.market.lock().unwrap().reviews.push((id, b, rating));
                    true
                }
                Err(_) => false,
            };
            shared.pause(ok).await;
        }
    }
}

fn post(text: &str) -> Option<prost_types::Struct> {
    quintet::proto::json_to_struct(&serde_json::json!({
        "$type": POST, "text": text, "createdAt": "2026-11-24T12:00:00.000Z",
    }))
}

async fn pds_writer(shared: Arc<Shared>, channel: Channel, w: usize, writers: usize, mut rng: Rng) {
    let accounts: Vec<PdsAccount> = shared
        .pds
        .lock()
        .unwrap()
        .accounts
        .iter()
        .enumerate()
        .filter(|(i, _)| i % writers == w)
        .map(|(_, a)| a.clone())
        .collect();
    let client = PdsServiceClient::new(channel);
    let mut n = 0;
    while !shared.stopped() {
        n += 1;
        let Some(account) = pick(&mut rng, &accounts) else {
            return;
        };
        let mut c = client.clone();
        let ok = if rng.below(10) < 7 {
            let rkey = format!("w{w}n{n}");
            let request = auth(
                pds_pb::CreateRecordRequest {
                    repo: account.did.clone(),
                    collection: POST.to_owned(),
                    rkey: rkey.clone(),
                    record: post(&format!("post {n} of writer {w}: {}", rng.next())),
                    swap_commit: String::new(),
                },
                &account.token,
            );
            match shared.write(Svc::Pds, c.create_record(request)).await {
                Ok(response) => {
                    let cid = response.into_inner().cid;
                    shared.pds.lock().unwrap().records.push((
                        account.did.clone(),
                        format!("{POST}/{rkey}"),
                        cid,
                    ));
                    true
                }
                Err(_) => false,
            }
        } else {
            let count = 2 + rng.below(3);
            let rkeys: Vec<String> = (0..count).map(|k| format!("w{w}n{n}b{k}")).collect();
            let writes = rkeys
                .iter()
                .map(|rkey| pds_pb::Write {
                    action: Some(pds_pb::write::Action::Create(pds_pb::WriteCreate {
                        collection: POST.to_owned(),
                        rkey: rkey.clone(),
                        value: post(&format!("batch {n} of writer {w}, {rkey}")),
                    })),
                })
                .collect();
            let request = auth(
                pds_pb::ApplyWritesRequest {
                    repo: account.did.clone(),
                    writes,
                    swap_commit: String::new(),
                },
                &account.token,
            );
            match shared.write(Svc::Pds, c.apply_writes(request)).await {
                Ok(response) => {
                    let results = response.into_inner().results;
                    if results.len() != rkeys.len() {
                        shared.violation(
                            Svc::Pds,
                            Kind::Half,
                            format!("ApplyWrites of {count} creates answered {}", results.len()),
                        );
                    }
                    let mut book = shared.pds.lock().unwrap();
                    for (rkey, result) in rkeys.iter().zip(results) {
                        book.records.push((
                            account.did.clone(),
                            format!("{POST}/{rkey}"),
                            result.cid,
                        ));
                    }
                    true
                }
                Err(_) => false,
            }
        };
        shared.pause(ok).await;
    }
}

// ----------------------------------------------------------------------------------------------
// Setup: users, tokens, accounts, and one item per service for the probes.

/// Calls `call` until it is answered, for setup steps (the server is up; this only rides out a
/// slow start).
async fn setup_call<T, F, Fut>(what: &str, call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    retry(call)
        .await
        .map_err(|status| anyhow::anyhow!("setup: {what}: {status}"))
}

struct ProbeTargets {
    package: String,
    manifest: String,
    griot_package: String,
    job: String,
    datapod: String,
    buyer: String,
    did: String,
}

#[allow(clippy::too_many_arguments)]
async fn setup(
    shared: &Shared,
    channel: &Channel,
    pool: &PgPool,
    admin: &str,
    run: &str,
    writers: usize,
    key: &Path,
) -> anyhow::Result<()> {
    // Registry: a user and a scoped API token per writer.
    let registry = RegistryServiceClient::new(channel.clone());
    for w in 0..writers {
        let username = format!("crash-{run}-{w}");
        setup_call("CreateUser", || {
            let mut client = registry.clone();
            let request = auth(
                registry_pb::CreateUserRequest {
                    username: username.clone(),
                },
                admin,
            );
            async move { client.create_user(request).await }
        })
        .await?;
        let token = setup_call("CreateApiToken", || {
            let mut client = registry.clone();
            let request = auth(
                registry_pb::CreateApiTokenRequest {
                    username: username.clone(),
                    name: "crash".to_owned(),
                    scopes: vec![
                        registry_pb::TokenScope::PublishNew as i32,
                        registry_pb::TokenScope::PublishUpdate as i32,
                        registry_pb::TokenScope::Star as i32,
                    ],
                    ..Default::default()
                },
                admin,
            );
            async move { client.create_api_token(request).await }
        })
        .await?
        .into_inner()
        .token;
        shared
            .registry
            .lock()
            .unwrap()
            .users
            .push((username, token));
    }

    // Griot: the author key.
    quintet::griot::sign::keygen(key)?;

    // Market: sellers and buyers signed in through the database (sign-in is not what is tested
    // here, and needs an OpenID provider), buyers with a proven Sui address.
    let market = MarketServiceClient::new(channel.clone());
    for (i, seller) in (0..writers * 2 + 1).map(|i| (i, i < writers)) {
        let salt = Sha256::of(format!("{run}-{i}").as_bytes()).to_hex();
        let user: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO market.users (google_id, email, name, salt)
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(format!("crash-{run}-{i}"))
        .bind(format!("crash-{run}-{i}@example.com"))
        .bind(format!("Crash user {i}"))
        .bind(salt)
        .fetch_one(pool)
        .await?;
        let session = crate::insert_market_session(pool, user).await?;
        if seller {
            shared.market.lock().unwrap().sellers.push(session);
            continue;
        }
        let challenge = setup_call("GetSuiAddressChallenge", || {
            let mut client = market.clone();
            let request = auth(market_pb::GetSuiAddressChallengeRequest {}, &session);
            async move { client.get_sui_address_challenge(request).await }
        })
        .await?
        .into_inner()
        .message;
        let wallet = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[40 + i as u8; 32])
            .map_err(|_| anyhow::anyhow!("not an Ed25519 seed"))?;
        let signature = quintet::market::sui::sign_personal_message(&wallet, challenge.as_bytes());
        let user = setup_call("ProveSuiAddress", || {
            let mut client = market.clone();
            let request = auth(
                market_pb::ProveSuiAddressRequest {
                    signature: signature.clone(),
                },
                &session,
            );
            async move { client.prove_sui_address(request).await }
        })
        .await?
        .into_inner()
        .user
        .unwrap_or_default();
        shared.market.lock().unwrap().buyers.push(Buyer {
            session,
            address: user.sui_address,
        });
    }

    // PDS: two accounts per writer.
    let pds = PdsServiceClient::new(channel.clone());
    for a in 0..writers * 2 {
        let handle = format!("c{a}x{run}.crash.test");
        let session = setup_call("CreateAccount", || {
            let mut client = pds.clone();
            let request = pds_pb::CreateAccountRequest {
                handle: handle.clone(),
                email: format!("c{a}x{run}@crash.test"),
                password: "crash test password".to_owned(),
                ..Default::default()
            };
            async move { client.create_account(request).await }
        })
        .await?
        .into_inner()
        .session
        .unwrap_or_default();
        shared.pds.lock().unwrap().accounts.push(PdsAccount {
            did: session.did,
            token: session.access_jwt,
        });
    }
    Ok(())
}

/// Waits until every service has acknowledged a write, and names one item of each for the
/// probes.
async fn probe_targets(shared: &Shared) -> anyhow::Result<ProbeTargets> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let targets = (|| {
            let (griot_package, job) = {
                let book = shared.griot.lock().unwrap();
                (
                    book.packages.first()?.0.clone(),
                    book.jobs.first()?.0.clone(),
                )
            };
            let (datapod, buyer) = {
                let book = shared.market.lock().unwrap();
                let pod = book.datapods.iter().find(|p| p.published)?;
                (pod.id.clone(), book.buyers.first()?.session.clone())
            };
            Some(ProbeTargets {
                package: shared.registry.lock().unwrap().packages.first()?.clone(),
                manifest: shared.store.lock().unwrap().objects.first()?.0.clone(),
                griot_package,
                job,
                datapod,
                buyer,
                did: shared.pds.lock().unwrap().accounts.first()?.did.clone(),
            })
        })();
        if let Some(targets) = targets {
            return Ok(targets);
        }
        if Instant::now() > deadline {
            bail!("not every service acknowledged a write within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads a server stream to its end.
async fn drain<T>(
    stream: Result<tonic::Response<tonic::Streaming<T>>, Status>,
) -> Result<(), Status> {
    let mut stream = stream?.into_inner();
    while stream.message().await?.is_some() {}
    Ok(())
}

/// A read of each service that needs the database: a unary one, or (`streaming`) one whose
/// answer streams (the database is read before, and for some while, it streams).
async fn probe(
    svc: Svc,
    streaming: bool,
    channel: &Channel,
    admin: &str,
    targets: &ProbeTargets,
) -> Result<(), Status> {
    let channel = channel.clone();
    match (svc, streaming) {
        (Svc::Registry, false) => RegistryServiceClient::new(channel)
            .get_package(registry_pb::GetPackageRequest {
                name: targets.package.clone(),
            })
            .await
            .map(drop),
        (Svc::Registry, true) => {
            let request = registry_pb::DownloadVersionRequest {
                package_name: targets.package.clone(),
                version: String::new(),
            };
            drain(
                RegistryServiceClient::new(channel)
                    .download_version(request)
                    .await,
            )
            .await
        }
        (Svc::Store, false) => StoreServiceClient::new(channel)
            .get_manifest(auth(
                store_pb::GetManifestRequest {
                    manifest_id: targets.manifest.clone(),
                },
                admin,
            ))
            .await
            .map(drop),
        (Svc::Store, true) => {
            let request = auth(
                store_pb::GetObjectRequest {
                    manifest_id: targets.manifest.clone(),
                },
                admin,
            );
            drain(StoreServiceClient::new(channel).get_object(request).await).await
        }
        (Svc::Griot, false) => GriotServiceClient::new(channel)
            .get_package(griot_pb::GetPackageRequest {
                package_id: targets.griot_package.clone(),
            })
            .await
            .map(drop),
        (Svc::Griot, true) => {
            let request = auth(
                griot_pb::StreamInstallationLogsRequest {
                    job_id: targets.job.clone(),
                    from_seq: 1,
                    follow: false,
                },
                admin,
            );
            let mut client = GriotServiceClient::new(channel);
            drain(client.stream_installation_logs(request).await).await
        }
        (Svc::Market, false) => MarketServiceClient::new(channel)
            .get_datapod(market_pb::GetDatapodRequest {
                id: targets.datapod.clone(),
            })
            .await
            .map(drop),
        (Svc::Market, true) => MarketServiceClient::new(channel)
            .list_purchase_history(auth(
                market_pb::ListPurchaseHistoryRequest::default(),
                &targets.buyer,
            ))
            .await
            .map(drop),
        (Svc::Pds, false) => PdsServiceClient::new(channel)
            .get_latest_commit(pds_pb::GetLatestCommitRequest {
                did: targets.did.clone(),
            })
            .await
            .map(drop),
        (Svc::Pds, true) => {
            let request = pds_pb::GetRepoRequest {
                did: targets.did.clone(),
                since: String::new(),
            };
            drain(PdsServiceClient::new(channel).get_repo(request).await).await
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Checks.

struct Checker {
    shared: Arc<Shared>,
    pool: PgPool,
    channel: Channel,
    admin: String,
    run: String,
    nodes: PathBuf,
    /// Where the previous check stopped in each book.
    published_from: usize,
    stars_from: usize,
    objects_from: usize,
    griot_packages_from: usize,
    jobs_from: usize,
    datapods_from: usize,
    purchases_from: usize,
    reviews_from: usize,
    /// Download counts as last checked.
    downloads_checked: HashMap<(String, String), u64>,
    /// Rows already checked for being whole.
    versions_seen: HashSet<i32>,
    manifests_seen: HashSet<String>,
    installed_seen: HashSet<(String, String)>,
    did_keys: HashMap<String, PublicKey>,
}

/// How many reads a check has in flight at once.
const CHECKS_AT_ONCE: usize = 8;

/// Runs `check` over `items`, [`CHECKS_AT_ONCE`] at a time.
async fn each<T, R, F, Fut>(items: Vec<T>, check: F) -> Vec<R>
where
    F: FnMut(T) -> Fut,
    Fut: Future<Output = R>,
{
    use futures::StreamExt;
    futures::stream::iter(items)
        .map(check)
        .buffer_unordered(CHECKS_AT_ONCE)
        .collect()
        .await
}

/// Rows `query` returns, as violations of `kind` described by `describe`.
async fn sql_violations<R, F>(
    checker: &Checker,
    svc: Svc,
    kind: Kind,
    query: &'static str,
    describe: F,
) -> anyhow::Result<()>
where
    R: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    F: Fn(R) -> String,
{
    let rows: Vec<R> = sqlx::query_as(query)
        .fetch_all(&checker.pool)
        .await
        .with_context(|| format!("checking {query}"))?;
    for row in rows {
        checker.shared.violation(svc, kind, describe(row));
    }
    Ok(())
}

/// `from..` of a book's list, moving `from` to its end (everything when `full`).
fn take_new<T: Clone>(list: &[T], from: &mut usize, full: bool) -> Vec<T> {
    let start = if full { 0 } else { (*from).min(list.len()) };
    *from = list.len();
    list[start..].to_vec()
}

impl Checker {
    /// Checks every service; returns how long each took.
    async fn check(&mut self, full: bool) -> anyhow::Result<[Duration; 5]> {
        let mut took = [Duration::ZERO; 5];
        for svc in SERVICES {
            let started = Instant::now();
            match svc {
                Svc::Registry => self.check_registry(full).await?,
                Svc::Store => self.check_store(full).await?,
                Svc::Griot => self.check_griot(full).await?,
                Svc::Market => self.check_market(full).await?,
                Svc::Pds => self.check_pds().await?,
            }
            took[svc.i()] = started.elapsed();
        }
        Ok(took)
    }

    async fn check_registry(&mut self, full: bool) -> anyhow::Result<()> {
        let svc = Svc::Registry;
        let client = RegistryServiceClient::new(self.channel.clone());
        let (published, stars, downloads) = {
            let book = self.shared.registry.lock().unwrap();
            let downloads: Vec<((String, String), u64)> = book
                .downloads
                .iter()
                .filter(|(k, n)| full || self.downloads_checked.get(*k) != Some(*n))
                .map(|(k, n)| (k.clone(), *n))
                .collect();
            (
                take_new(&book.published, &mut self.published_from, full),
                take_new(&book.stars, &mut self.stars_from, full),
                downloads,
            )
        };
        let version = |package: String, version: String| {
            let client = client.clone();
            async move {
                retry(|| {
                    let mut client = client.clone();
                    let request = registry_pb::GetVersionRequest {
                        package_name: package.clone(),
                        version: version.clone(),
                    };
                    async move { client.get_version(request).await }
                })
                .await
                .map(|r| r.into_inner().version.unwrap_or_default())
            }
        };
        // Acknowledged publishes: the version is there, with the digest of the bytes sent.
        let results = each(published, |p| {
            let got = version(p.package.clone(), p.version.clone());
            async move { (p, got.await) }
        })
        .await;
        for (p, got) in results {
            match got {
                Ok(v) if v.tarball_sha256 == p.sha256 && v.tarball_size == p.size && !v.deleted => {
                    self.shared.verified(svc, 1)
                }
                Ok(v) => self.shared.violation(
                    svc,
                    Kind::Lost,
                    format!(
                        "{}@{} was published with tarball {} ({} B) but is {} ({} B, deleted {})",
                        p.package,
                        p.version,
                        p.sha256,
                        p.size,
                        v.tarball_sha256,
                        v.tarball_size,
                        v.deleted
                    ),
                ),
                Err(status) => self.shared.violation(
                    svc,
                    Kind::Lost,
                    format!("{}@{} was published: {status}", p.package, p.version),
                ),
            }
        }
        // Acknowledged stars, through each user's list of starred packages.
        let mut by_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (package, user) in stars {
            by_user.entry(user).or_default().push(package);
        }
        for (user, packages) in by_user {
            match user_stars(&client, &user).await {
                Ok(starred) => {
                    for package in packages {
                        if starred.contains(&package) {
                            self.shared.verified(svc, 1);
                        } else {
                            self.shared.violation(
                                svc,
                                Kind::Lost,
                                format!("{user} starred {package}, which the user's stars lack"),
                            );
                        }
                    }
                }
                Err(status) => {
                    self.shared
                        .violation(svc, Kind::Lost, format!("the stars of {user}: {status}"))
                }
            }
        }
        // Completed downloads: each version counts at least as many.
        let results = each(downloads, |(key, acknowledged)| {
            let got = version(key.0.clone(), key.1.clone());
            async move { (key, acknowledged, got.await) }
        })
        .await;
        for ((package, version), acknowledged, got) in results {
            match got {
                Ok(v) if v.downloads as u64 >= acknowledged => {
                    self.shared.verified(svc, 1);
                    self.downloads_checked
                        .insert((package, version), acknowledged);
                }
                Ok(v) => self.shared.violation(
                    svc,
                    Kind::Lost,
                    format!(
                        "{package}@{version} counts {} downloads, {acknowledged} were completed",
                        v.downloads
                    ),
                ),
                Err(status) => {
                    self.shared
                        .violation(svc, Kind::Lost, format!("{package}@{version}: {status}"))
                }
            }
        }
        // Half-written: every version visible downloads, and its bytes hash to its digest.
        let rows: Vec<(i32, String, String, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT v.id, p.name, v.semver, v.tarball_sha256, v.tarball_size
             FROM registry.versions v JOIN registry.packages p ON p.pointer = v.package_id
             WHERE v.deleted_at IS NULL ORDER BY v.id",
        )
        .fetch_all(&self.pool)
        .await?;
        let rows: Vec<_> = rows
            .into_iter()
            .filter(|row| self.versions_seen.insert(row.0) || full)
            .collect();
        let results = each(rows, |(_, package, version, sha256, size)| {
            let client = client.clone();
            async move {
                let got = retry(|| download(&client, &package, &version)).await;
                (package, version, to_hex(&sha256), size, got)
            }
        })
        .await;
        for (package, version, sha256, size, got) in results {
            match got {
                Ok((_, got, got_size)) if got == sha256 && got_size == size => {
                    *self
                        .shared
                        .registry
                        .lock()
                        .unwrap()
                        .downloads
                        .entry((package, version))
                        .or_default() += 1;
                }
                Ok((_, got, got_size)) => self.shared.violation(
                    svc,
                    Kind::Half,
                    format!(
                        "{package}@{version} downloads {got_size} B hashing to {got}, not {size} B hashing to {sha256}"
                    ),
                ),
                Err(status) => self.shared.violation(
                    svc,
                    Kind::Half,
                    format!("{package}@{version} is listed but does not download: {status}"),
                ),
            }
        }
        sql_violations(
            self,
            svc,
            Kind::Half,
            "SELECT p.name FROM registry.packages p
             WHERE NOT EXISTS (SELECT 1 FROM registry.versions v WHERE v.package_id = p.pointer)
                OR NOT EXISTS (SELECT 1 FROM registry.owners o WHERE o.package = p.pointer)
                OR NOT EXISTS (SELECT 1 FROM registry.names n
                               WHERE n.name = p.name AND n.pointer = p.pointer)
                OR NOT EXISTS (SELECT 1 FROM registry.versions v
                               WHERE v.package_id = p.pointer AND v.status = 'latest')",
            |(name,): (String,)| {
                format!("package {name} lacks a version, an owner, its name or its latest")
            },
        )
        .await?;
        sql_violations(
            self,
            svc,
            Kind::Half,
            "SELECT p.name, v.semver FROM registry.versions v
             JOIN registry.packages p ON p.pointer = v.package_id
             WHERE NOT EXISTS (SELECT 1 FROM registry.events e WHERE e.package = v.package_id
                               AND e.kind = 'published' AND e.version = v.semver)",
            |(name, version): (String, String)| {
                format!("{name}@{version} has no 'published' event")
            },
        )
        .await?;
        // Counters.
        sql_violations(
            self,
            svc,
            Kind::Counter,
            "SELECT p.name, p.stargazers_count, s.n FROM registry.packages p
             CROSS JOIN LATERAL (SELECT count(*) AS n FROM registry.stars s
                                 WHERE s.package = p.pointer) s
             WHERE p.stargazers_count <> s.n",
            |(name, count, rows): (String, i64, i64)| {
                format!("{name}: stargazers_count {count}, {rows} stars")
            },
        )
        .await?;
        sql_violations(
            self,
            svc,
            Kind::Counter,
            "SELECT p.name, p.downloads, d.n FROM registry.packages p
             CROSS JOIN LATERAL (SELECT coalesce(sum(v.downloads), 0)::bigint AS n
                                 FROM registry.versions v WHERE v.package_id = p.pointer) d
             WHERE p.downloads <> d.n",
            |(name, count, sum): (String, i64, i64)| {
                format!("{name}: downloads {count}, its versions' sum to {sum}")
            },
        )
        .await?;
        let packages: i64 = sqlx::query_scalar("SELECT count(*) FROM registry.packages")
            .fetch_one(&self.pool)
            .await?;
        self.shared.counters_checked(svc, 2 * packages as u64);
        Ok(())
    }

    async fn check_store(&mut self, full: bool) -> anyhow::Result<()> {
        let svc = Svc::Store;
        let client = StoreServiceClient::new(self.channel.clone());
        let objects = {
            let book = self.shared.store.lock().unwrap();
            take_new(&book.objects, &mut self.objects_from, full)
        };
        // Acknowledged puts: the manifest lists the contents the put answered.
        let admin = self.admin.as_str();
        let results = each(objects, |(id, expected)| {
            let client = client.clone();
            async move {
                let got = retry(|| {
                    let mut client = client.clone();
                    let request = auth(
                        store_pb::GetManifestRequest {
                            manifest_id: id.clone(),
                        },
                        admin,
                    );
                    async move { client.get_manifest(request).await }
                })
                .await;
                (id, expected, got)
            }
        })
        .await;
        for (id, mut expected, got) in results {
            match got {
                Ok(response) => {
                    let mut listed: Vec<StoredContent> = response
                        .into_inner()
                        .contents
                        .into_iter()
                        .map(|c| StoredContent {
                            name: c.content_name,
                            sha256: c.content_hash,
                            size: c.content_size,
                        })
                        .collect();
                    listed.sort_by(|a, b| a.name.cmp(&b.name));
                    expected.sort_by(|a, b| a.name.cmp(&b.name));
                    if listed == expected {
                        self.shared.verified(svc, 1);
                    } else {
                        self.shared.violation(
                            svc,
                            Kind::Lost,
                            format!("object {id} was put with {expected:?} but lists {listed:?}"),
                        );
                    }
                }
                Err(status) => {
                    self.shared
                        .violation(svc, Kind::Lost, format!("object {id} was put: {status}"))
                }
            }
        }
        // Half-written: every manifest of this run has all its contents, whose bytes hash to
        // their digests.
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT id::text, coalesce(tags->>'contents', '') FROM store.manifests
             WHERE tags->>'crash' = $1 ORDER BY seq",
        )
        .bind(&self.run)
        .fetch_all(&self.pool)
        .await?;
        let rows: Vec<_> = rows
            .into_iter()
            .filter(|row| self.manifests_seen.insert(row.0.clone()) || full)
            .collect();
        let results = each(rows, |(id, contents)| {
            let client = client.clone();
            async move {
                let got = retry(|| get_object(&client, admin, &id)).await;
                (id, contents, got)
            }
        })
        .await;
        for (id, contents, got) in results {
            match got {
                Ok(got) => {
                    if got.len().to_string() != contents {
                        self.shared.violation(
                            svc,
                            Kind::Half,
                            format!("object {id} has {} of its {contents} contents", got.len()),
                        );
                    }
                    for (content, sha256, size) in got {
                        if content.content_hash != sha256 || content.content_size != size {
                            self.shared.violation(
                                svc,
                                Kind::Half,
                                format!(
                                    "object {id}'s {} is {size} B hashing to {sha256}, not {} B hashing to {}",
                                    content.content_name, content.content_size, content.content_hash
                                ),
                            );
                        }
                    }
                }
                Err(status) => self.shared.violation(
                    svc,
                    Kind::Half,
                    format!("object {id} is listed but does not read: {status}"),
                ),
            }
        }
        Ok(())
    }

    async fn check_griot(&mut self, full: bool) -> anyhow::Result<()> {
        let svc = Svc::Griot;
        let client = GriotServiceClient::new(self.channel.clone());
        let (packages, jobs) = {
            let book = self.shared.griot.lock().unwrap();
            (
                take_new(&book.packages, &mut self.griot_packages_from, full),
                take_new(&book.jobs, &mut self.jobs_from, full),
            )
        };
        let results = each(packages, |(id, size)| {
            let client = client.clone();
            async move {
                let got = retry(|| {
                    let mut client = client.clone();
                    let request = griot_pb::GetPackageRequest {
                        package_id: id.clone(),
                    };
                    async move { client.get_package(request).await }
                })
                .await;
                (
                    id,
                    size,
                    got.map(|r| r.into_inner().package.unwrap_or_default()),
                )
            }
        })
        .await;
        for (id, size, got) in results {
            match got {
                Ok(p) if p.package_id == id && p.artifact_size == size => {
                    self.shared.verified(svc, 1)
                }
                Ok(p) => self.shared.violation(
                    svc,
                    Kind::Lost,
                    format!("package {id} was registered but reads as {p:?}"),
                ),
                Err(status) => self.shared.violation(
                    svc,
                    Kind::Lost,
                    format!("package {id} was registered: {status}"),
                ),
            }
        }
        let admin = self.admin.as_str();
        let results = each(jobs, |(job, package, target)| {
            let client = client.clone();
            async move {
                let got = retry(|| {
                    let mut client = client.clone();
                    let request = auth(
                        griot_pb::GetInstallationRequest {
                            job_id: job.clone(),
                            include_logs: false,
                        },
                        admin,
                    );
                    async move { client.get_installation(request).await }
                })
                .await;
                let got = got.map(|r| r.into_inner().installation.unwrap_or_default());
                (job, package, target, got)
            }
        })
        .await;
        for (job, package, target, got) in results {
            match got {
                Ok(i) if i.package_id == package && i.target_node_id == target => {
                    self.shared.verified(svc, 1)
                }
                Ok(i) => self.shared.violation(
                    svc,
                    Kind::Lost,
                    format!("job {job} was created for {package} on {target} but reads as {i:?}"),
                ),
                Err(status) => self.shared.violation(
                    svc,
                    Kind::Lost,
                    format!("job {job} was created: {status}"),
                ),
            }
        }
        // Half-written: a completed job's package is recorded on its node, and every recorded
        // package is on disk with its artifact's bytes.
        sql_violations(
            self,
            svc,
            Kind::Half,
            "SELECT i.job_id::text FROM griot.installations i
             WHERE i.status = 'completed' AND NOT EXISTS (
                 SELECT 1 FROM griot.node_packages n
                 WHERE n.target_node_id = i.target_node_id AND n.package_id = i.package_id)",
            |(job,): (String,)| format!("job {job} completed but its package is not recorded"),
        )
        .await?;
        let installed: Vec<(String, String)> =
            sqlx::query_as("SELECT target_node_id, package_id FROM griot.node_packages")
                .fetch_all(&self.pool)
                .await?;
        for (target, package) in installed {
            if !self
                .installed_seen
                .insert((target.clone(), package.clone()))
                && !full
            {
                continue;
            }
            let path = self.nodes.join(&target).join(&package).join("run.sh");
            let on_disk = std::fs::read_to_string(&path).ok();
            // Every artifact is booked before it is sent.
            let sent = self
                .shared
                .griot
                .lock()
                .unwrap()
                .artifacts
                .get(&package)
                .cloned();
            match (on_disk, sent) {
                (Some(text), Some(sent)) if text == sent => self.shared.verified(svc, 1),
                (on_disk, _) => self.shared.violation(
                    svc,
                    Kind::Half,
                    format!(
                        "{package} is recorded on {target} but {} {}",
                        path.display(),
                        if on_disk.is_some() {
                            "holds other bytes"
                        } else {
                            "is missing"
                        }
                    ),
                ),
            }
        }
        // Stuck: claimable work nobody claimed for 20 s although servers were up (a restarted
        // server claims such work at once, and polls every 5 s anyway).
        sql_violations(
            self,
            svc,
            Kind::Stuck,
            "SELECT job_id::text, status, attempts FROM griot.installations
             WHERE (status = 'pending' AND created_at < now() - make_interval(secs => 20))
                OR (status = 'running' AND lease_until < now() - make_interval(secs => 20))",
            |(job, status, attempts): (String, String, i32)| {
                format!("job {job} is {status} (attempt {attempts}) and nobody works on it")
            },
        )
        .await?;
        // Counters: each job's log_count is its number of lines, and its last line's seq.
        sql_violations(
            self,
            svc,
            Kind::Counter,
            "SELECT i.job_id::text, i.log_count, l.n, l.last FROM griot.installations i
             CROSS JOIN LATERAL (SELECT count(*) AS n, coalesce(max(seq), 0) AS last
                                 FROM griot.installation_logs g WHERE g.job_id = i.job_id) l
             WHERE i.log_count <> l.n OR i.log_count <> l.last",
            |(job, count, n, last): (String, i64, i64, i64)| {
                format!("job {job}: log_count {count}, {n} lines, last seq {last}")
            },
        )
        .await?;
        let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM griot.installations")
            .fetch_one(&self.pool)
            .await?;
        self.shared.counters_checked(svc, jobs as u64);
        Ok(())
    }

    async fn check_market(&mut self, full: bool) -> anyhow::Result<()> {
        let svc = Svc::Market;
        let client = MarketServiceClient::new(self.channel.clone());
        let (datapods, purchases, reviews, buyers, sellers) = {
            let book = self.shared.market.lock().unwrap();
            let from = if full {
                0
            } else {
                self.purchases_from.min(book.purchases.len())
            };
            let purchases: Vec<(String, usize, String)> = book.purchases[from..]
                .iter()
                .map(|p| (p.id.clone(), p.buyer, p.datapod.clone()))
                .collect();
            self.purchases_from = book.purchases.len();
            (
                take_new(&book.datapods, &mut self.datapods_from, full),
                purchases,
                take_new(&book.reviews, &mut self.reviews_from, full),
                book.buyers
                    .iter()
                    .map(|b| b.session.clone())
                    .collect::<Vec<_>>(),
                book.sellers.clone(),
            )
        };
        let (buyers, sellers) = (&buyers, &sellers);
        let results = each(datapods, |pod| {
            let client = client.clone();
            async move {
                let got = retry(|| {
                    let mut client = client.clone();
                    let request = auth(
                        market_pb::GetDatapodRequest { id: pod.id.clone() },
                        &sellers[pod.seller],
                    );
                    async move { client.get_datapod(request).await }
                })
                .await;
                (pod, got.map(|r| r.into_inner().datapod.unwrap_or_default()))
            }
        })
        .await;
        for (pod, got) in results {
            match got {
                Ok(d) if d.title == pod.title && (d.published || !pod.published) => {
                    self.shared.verified(svc, 1)
                }
                Ok(d) => self.shared.violation(
                    svc,
                    Kind::Lost,
                    format!(
                        "datapod {} ({}, published {}) reads as {} (published {})",
                        pod.id, pod.title, pod.published, d.title, d.published
                    ),
                ),
                Err(status) => self.shared.violation(
                    svc,
                    Kind::Lost,
                    format!("datapod {} was created: {status}", pod.id),
                ),
            }
        }
        let results = each(purchases, |(id, buyer, datapod)| {
            let client = client.clone();
            async move {
                let got = get_purchase(&client, &buyers[buyer], &id).await;
                (id, datapod, got)
            }
        })
        .await;
        for (id, datapod, got) in results {
            match got {
                Ok(p) if p.datapod_id == datapod => self.shared.verified(svc, 1),
                Ok(p) => self.shared.violation(
                    svc,
                    Kind::Lost,
                    format!(
                        "purchase {id} of {datapod} reads as one of {}",
                        p.datapod_id
                    ),
                ),
                Err(status) => self.shared.violation(
                    svc,
                    Kind::Lost,
                    format!("purchase {id} was created: {status}"),
                ),
            }
        }
        let results = each(reviews, |(purchase, buyer, rating)| {
            let client = client.clone();
            async move {
                let got = get_purchase(&client, &buyers[buyer], &purchase).await;
                (purchase, rating, got)
            }
        })
        .await;
        for (purchase, rating, got) in results {
            match got {
                Ok(p) if p.review.as_ref().map(|r| r.rating) == Some(rating) => {
                    self.shared.verified(svc, 1)
                }
                Ok(p) => self.shared.violation(
                    svc,
                    Kind::Lost,
                    format!(
                        "purchase {purchase} was reviewed {rating} but shows {:?}",
                        p.review.map(|r| r.rating)
                    ),
                ),
                Err(status) => self.shared.violation(
                    svc,
                    Kind::Lost,
                    format!("the review of {purchase}: {status}"),
                ),
            }
        }
        // Deliveries: each completed purchase delivers a key that decrypts what was sold. Its
        // buyer's key is used (and consumed) once, after the purchase completed.
        let completed: HashSet<String> =
            sqlx::query_scalar("SELECT id::text FROM market.purchases WHERE status = 'completed'")
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .collect();
        let deliveries: Vec<_> = {
            let mut book = self.shared.market.lock().unwrap();
            let sold: HashMap<String, String> = book
                .datapods
                .iter()
                .map(|d| (d.id.clone(), d.plaintext_sha256.clone()))
                .collect();
            book.purchases
                .iter_mut()
                .filter(|p| p.key.is_some() && completed.contains(&p.id))
                .map(|p| {
                    let sha256 = sold.get(&p.datapod).cloned().unwrap_or_default();
                    (
                        p.id.clone(),
                        p.buyer,
                        sha256,
                        p.key.take().expect("filtered"),
                    )
                })
                .collect()
        };
        let results = each(deliveries, |(id, buyer, sold, key)| {
            let client = client.clone();
            async move {
                let got = delivery(&client, &buyers[buyer], &id, key).await;
                (id, sold, got)
            }
        })
        .await;
        for (id, sold, got) in results {
            match got {
                Ok(sha256) if sha256 == sold => self.shared.verified(svc, 1),
                Ok(sha256) => self.shared.violation(
                    svc,
                    Kind::Half,
                    format!("purchase {id} delivers data hashing to {sha256}, not what was sold"),
                ),
                Err(why) => self.shared.violation(
                    svc,
                    Kind::Half,
                    format!("purchase {id} is completed but cannot be delivered: {why:#}"),
                ),
            }
        }
        // Half-written: a completed purchase has its key and released escrow; a processing one
        // its escrow.
        sql_violations(
            self,
            svc,
            Kind::Half,
            "SELECT p.id::text, p.status, coalesce(e.status, 'none') FROM market.purchases p
             LEFT JOIN market.escrow_transactions e ON e.purchase_id = p.id
             WHERE (p.status = 'completed' AND (p.decryption_key IS NULL
                    OR p.completed_at IS NULL OR e.status IS DISTINCT FROM 'released'))
                OR (p.status = 'processing' AND e.id IS NULL)",
            |(id, status, escrow): (String, String, String)| {
                format!("purchase {id} is {status} with escrow {escrow} (or without its key)")
            },
        )
        .await?;
        sql_violations(
            self,
            svc,
            Kind::Stuck,
            "SELECT id::text, status, attempts, coalesce(last_error, '') FROM market.purchases
             WHERE status IN ('pending_payment', 'processing')
               AND next_attempt_at < now() - make_interval(secs => 20)",
            |(id, status, attempts, error): (String, String, i32, String)| {
                format!("purchase {id} is {status}, due and unworked (attempt {attempts}: {error})")
            },
        )
        .await?;
        // Counters.
        sql_violations(
            self,
            svc,
            Kind::Counter,
            "SELECT d.id::text, d.purchase_count, c.n FROM market.datapods d
             CROSS JOIN LATERAL (SELECT count(*) AS n FROM market.purchases p
                                 WHERE p.datapod_id = d.id AND p.status = 'completed') c
             WHERE d.purchase_count <> c.n",
            |(id, count, n): (String, i32, i64)| {
                format!("datapod {id}: purchase_count {count}, {n} completed purchases")
            },
        )
        .await?;
        sql_violations(
            self,
            svc,
            Kind::Counter,
            "SELECT u.id::text, u.total_purchases, b.n, u.total_sales, s.n FROM market.users u
             CROSS JOIN LATERAL (SELECT count(*) AS n FROM market.purchases p
                                 WHERE p.buyer_id = u.id AND p.status = 'completed') b
             CROSS JOIN LATERAL (SELECT count(*) AS n FROM market.purchases p
                                 JOIN market.datapods d ON d.id = p.datapod_id
                                 WHERE d.seller_id = u.id AND p.status = 'completed') s
             WHERE u.total_purchases <> b.n OR u.total_sales <> s.n",
            |(id, purchases, bought, sales, sold): (String, i32, i64, i32, i64)| {
                format!(
                    "user {id}: total_purchases {purchases} ({bought} completed), total_sales {sales} ({sold} completed)"
                )
            },
        )
        .await?;
        sql_violations(
            self,
            svc,
            Kind::Counter,
            "SELECT d.id::text, d.average_rating::text, r.avg::text FROM market.datapods d
             CROSS JOIN LATERAL (SELECT coalesce(round(avg(rating), 2), 0) AS avg
                                 FROM market.reviews r WHERE r.datapod_id = d.id) r
             WHERE d.average_rating <> r.avg",
            |(id, stored, computed): (String, String, String)| {
                format!("datapod {id}: average_rating {stored}, its reviews average {computed}")
            },
        )
        .await?;
        sql_violations(
            self,
            svc,
            Kind::Counter,
            "SELECT u.id::text, u.average_rating::text, r.avg::text FROM market.users u
             CROSS JOIN LATERAL (SELECT coalesce(round(avg(average_rating), 2), 0) AS avg
                                 FROM market.datapods d
                                 WHERE d.seller_id = u.id AND d.average_rating > 0) r
             WHERE u.average_rating <> r.avg",
            |(id, stored, computed): (String, String, String)| {
                format!("seller {id}: average_rating {stored}, their datapods average {computed}")
            },
        )
        .await?;
        let (pods, users): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM market.datapods), (SELECT count(*) FROM market.users)",
        )
        .fetch_one(&self.pool)
        .await?;
        self.shared
            .counters_checked(svc, 2 * pods as u64 + 3 * users as u64);
        Ok(())
    }

    async fn check_pds(&mut self) -> anyhow::Result<()> {
        let svc = Svc::Pds;
        let client = PdsServiceClient::new(self.channel.clone());
        let (accounts, records) = {
            let book = self.shared.pds.lock().unwrap();
            (book.accounts.clone(), book.records.clone())
        };
        // The signing key of each account, from its DID document (once).
        for account in &accounts {
            if self.did_keys.contains_key(&account.did) {
                continue;
            }
            let described = retry(|| {
                let mut client = client.clone();
                let request = pds_pb::DescribeRepoRequest {
                    repo: account.did.clone(),
                };
                async move { client.describe_repo(request).await }
            })
            .await?
            .into_inner();
            let document = quintet::proto::struct_to_json(described.did_doc);
            let key = document["verificationMethod"][0]["publicKeyMultibase"]
                .as_str()
                .and_then(PublicKey::from_multikey)
                .context("a DID document has no signing key")?;
            self.did_keys.insert(account.did.clone(), key);
        }
        let keys = &self.did_keys;
        let results = each(accounts, |account| {
            let client = client.clone();
            async move {
                let got = export(&client, &account.did, &keys[&account.did]).await;
                (account.did, got)
            }
        })
        .await;
        for (did, got) in results {
            let (rev, tree) = match got {
                Ok(exported) => exported,
                Err(why) => {
                    self.shared.violation(
                        svc,
                        Kind::Half,
                        format!("the repository of {did} does not export whole: {why:#}"),
                    );
                    continue;
                }
            };
            // Every record acknowledged before the export is in it.
            for (_, path, cid) in records.iter().filter(|r| r.0 == did) {
                match tree.get(path) {
                    Some(found) if found == cid => self.shared.verified(svc, 1),
                    found => self.shared.violation(
                        svc,
                        Kind::Lost,
                        format!("{did}/{path} was written as {cid}; the repository has {found:?}"),
                    ),
                }
            }
            // The records listing follows the tree: at this revision, the same records.
            let listed: BTreeMap<String, String> = sqlx::query_as(
                "SELECT collection || '/' || rkey, cid FROM pds.records
                 WHERE did = $1 AND repo_rev <= $2",
            )
            .bind(&did)
            .bind(&rev)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .collect();
            self.shared.counters_checked(svc, tree.len() as u64);
            if listed != tree {
                let missing = tree.keys().filter(|k| !listed.contains_key(*k)).count();
                let extra = listed.keys().filter(|k| !tree.contains_key(*k)).count();
                self.shared.violation(
                    svc,
                    Kind::Counter,
                    format!(
                        "{did}: the records listing at {rev} differs from the tree ({} in the tree, {} listed, {missing} missing, {extra} extra)",
                        tree.len(),
                        listed.len()
                    ),
                );
            }
        }
        Ok(())
    }
}

async fn user_stars(
    client: &RegistryServiceClient<Channel>,
    user: &str,
) -> Result<HashSet<String>, Status> {
    let mut starred = HashSet::new();
    let mut page_token = String::new();
    loop {
        let page = retry(|| {
            let mut client = client.clone();
            let request = registry_pb::ListUserStarsRequest {
                username: user.to_owned(),
                page_size: 100,
                page_token: page_token.clone(),
            };
            async move { client.list_user_stars(request).await }
        })
        .await?
        .into_inner();
        starred.extend(page.packages.into_iter().map(|p| p.name));
        if page.next_page_token.is_empty() {
            return Ok(starred);
        }
        page_token = page.next_page_token;
    }
}

async fn get_purchase(
    client: &MarketServiceClient<Channel>,
    session: &str,
    id: &str,
) -> Result<market_pb::Purchase, Status> {
    retry(|| {
        let mut client = client.clone();
        let request = auth(market_pb::GetPurchaseRequest { id: id.to_owned() }, session);
        async move { client.get_purchase(request).await }
    })
    .await
    .map(|r| r.into_inner().purchase.unwrap_or_default())
}

/// Downloads a purchase as its buyer, unwraps the key and decrypts: the plaintext's SHA-256.
async fn delivery(
    client: &MarketServiceClient<Channel>,
    session: &str,
    id: &str,
    key: agreement::EphemeralPrivateKey,
) -> anyhow::Result<String> {
    use market_pb::download_dataset_response::Part;
    let (header, ciphertext) = retry(|| {
        let mut client = client.clone();
        let request = auth(
            market_pb::DownloadDatasetRequest {
                purchase_id: id.to_owned(),
            },
            session,
        );
        async move {
            let mut stream = client.download_dataset(request).await?.into_inner();
            let (mut header, mut ciphertext) = (None, Vec::new());
            while let Some(message) = stream.message().await? {
                match message.part {
                    Some(Part::Header(h)) => header = Some(h),
                    Some(Part::Chunk(c)) => ciphertext.extend_from_slice(&c),
                    None => {}
                }
            }
            Ok::<_, Status>((header, ciphertext))
        }
    })
    .await?;
    let header = header.context("no download header")?;
    anyhow::ensure!(
        ciphertext.len() as i64 == header.ciphertext_size,
        "{} ciphertext bytes of {}",
        ciphertext.len(),
        header.ciphertext_size
    );
    let dataset_key = crypto::unwrap_as_buyer(key, &header.wrapped_key, id)?;
    let nonce: [u8; 12] = header.base_nonce[..]
        .try_into()
        .context("a nonce of another length")?;
    let plaintext = crypto::decrypt(&dataset_key, nonce, &ciphertext)?;
    Ok(sha_hex(&plaintext))
}

/// Exports a repository and verifies it: the head commit is the latest (or newer), signed by
/// the account's key, and every node and record block of its tree is in the file. Returns the
/// commit's revision and the tree's records (path -> CID).
async fn export(
    client: &PdsServiceClient<Channel>,
    did: &str,
    key: &PublicKey,
) -> anyhow::Result<(String, BTreeMap<String, String>)> {
    let latest = retry(|| {
        let mut client = client.clone();
        let request = pds_pb::GetLatestCommitRequest {
            did: did.to_owned(),
        };
        async move { client.get_latest_commit(request).await }
    })
    .await?
    .into_inner();
    let file = retry(|| {
        let mut client = client.clone();
        let request = pds_pb::GetRepoRequest {
            did: did.to_owned(),
            since: String::new(),
        };
        async move {
            let mut stream = client.get_repo(request).await?.into_inner();
            let mut file = Vec::new();
            while let Some(message) = stream.message().await? {
                file.extend_from_slice(&message.chunk);
            }
            Ok::<_, Status>(file)
        }
    })
    .await?;
    let parsed = car::read(&file)?;
    let root = *parsed.roots.first().context("the CAR has no root")?;
    let blocks: HashMap<Cid, Vec<u8>> = parsed.blocks.into_iter().collect();
    let commit = blocks.get(&root).context("the head commit is missing")?;
    let Ipld::Map(mut commit) = data::decode(commit)? else {
        bail!("the head commit is not a map");
    };
    let Some(Ipld::Bytes(signature)) = commit.remove("sig") else {
        bail!("the head commit is not signed");
    };
    anyhow::ensure!(
        commit.get("did") == Some(&Ipld::String(did.to_owned())),
        "the head commit is another account's"
    );
    anyhow::ensure!(
        key.verify(&data::encode(&Ipld::Map(commit.clone())), &signature),
        "the head commit's signature does not verify"
    );
    let Some(Ipld::String(rev)) = commit.get("rev").cloned() else {
        bail!("the head commit has no rev");
    };
    anyhow::ensure!(
        rev >= latest.rev,
        "the export's head {rev} is older than the latest commit {}",
        latest.rev
    );
    let Some(Ipld::Link(data_root)) = commit.get("data").cloned() else {
        bail!("the head commit has no data");
    };
    let mut tree = BTreeMap::new();
    walk(&blocks, data_root, &mut tree)?;
    Ok((rev, tree))
}

/// Walks an MST from `node`, collecting path -> record CID; every block must be present.
fn walk(
    blocks: &HashMap<Cid, Vec<u8>>,
    node: Cid,
    out: &mut BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let bytes = blocks
        .get(&node)
        .with_context(|| format!("tree node {node} is missing"))?;
    let node = mst::Node::from_ipld(&data::decode(bytes)?)?;
    if let Some(left) = node.left {
        walk(blocks, left, out)?;
    }
    for entry in node.entries {
        anyhow::ensure!(
            blocks.contains_key(&entry.value),
            "record block {} is missing",
            entry.value
        );
        out.insert(String::from_utf8(entry.key)?, entry.value.to_string());
        if let Some(right) = entry.right {
            walk(blocks, right, out)?;
        }
    }
    Ok(())
}

/// Reads a whole object: each content's header with the SHA-256 and size of its bytes.
async fn get_object(
    client: &StoreServiceClient<Channel>,
    admin: &str,
    id: &str,
) -> Result<Vec<(store_pb::Content, String, i64)>, Status> {
    use store_pb::get_object_response::Part;
    let mut stream = client
        .clone()
        .get_object(auth(
            store_pb::GetObjectRequest {
                manifest_id: id.to_owned(),
            },
            admin,
        ))
        .await?
        .into_inner();
    let mut contents: Vec<(store_pb::Content, Vec<u8>)> = Vec::new();
    while let Some(message) = stream.message().await? {
        match message.part {
            Some(Part::Content(c)) => contents.push((c, Vec::new())),
            Some(Part::Chunk(chunk)) => match contents.last_mut() {
                Some((_, bytes)) => bytes.extend_from_slice(&chunk),
                None => return Err(Status::data_loss("bytes before any content")),
            },
            Some(Part::Manifest(_)) | None => {}
        }
    }
    Ok(contents
        .into_iter()
        .map(|(c, bytes)| (c, sha_hex(&bytes), bytes.len() as i64))
        .collect())
}

// ----------------------------------------------------------------------------------------------
// The schedule.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Event {
    Server,
    Postgres,
}

/// What one PostgreSQL kill showed.
struct Outage {
    /// quintet's pid, the same before and after.
    pid: u32,
    down: Duration,
    recovered: Option<Duration>,
    /// Calls that failed while the database was away, by service and code.
    codes: BTreeMap<(Svc, i32), u64>,
    first_other: Option<String>,
}

/// Waits (up to `bound`, writers writing back to back meanwhile) until every service has a
/// write in flight; returns how many each has at that moment.
async fn in_flight(shared: &Shared, bound: Duration) -> [usize; 5] {
    let deadline = Instant::now() + bound;
    shared.hurry.store(true, Ordering::Relaxed);
    let now = loop {
        let now = SERVICES.map(|s| shared.flights[s.i()].load(Ordering::SeqCst));
        if now.iter().all(|&n| n > 0) || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    shared.hurry.store(false, Ordering::Relaxed);
    now
}

struct Run {
    args: Args,
    shared: Arc<Shared>,
    server: Server,
    postgres: Postgres,
    channel: Channel,
    admin: String,
    targets: Option<ProbeTargets>,
    outages: Vec<Outage>,
    restarts: Vec<Duration>,
    kills_covered: [usize; 5],
    problems: Vec<String>,
}

impl Run {
    async fn kill_server(&mut self) -> anyhow::Result<()> {
        self.server.kill().await?;
        let started = Instant::now();
        self.server.spawn()?;
        self.server
            .wait_healthy(&self.channel, Duration::from_secs(120))
            .await?;
        self.restarts.push(started.elapsed());
        Ok(())
    }

    /// Kills PostgreSQL under load and restarts it, with quintet left running; probes every
    /// service throughout and judges what clients saw.
    async fn kill_postgres(&mut self, rng: &mut Rng) -> anyhow::Result<()> {
        let pid = self.server.pid();
        let targets = Arc::new(self.targets.take().context("no probe targets")?);
        let stop = Arc::new(AtomicBool::new(false));
        // Per service and kind of probe (unary, streaming): when one that started after
        // PostgreSQL was back first succeeded.
        let ready_at: Arc<Mutex<Option<Instant>>> = Arc::default();
        let recovered: Arc<Mutex<[[Option<Instant>; 2]; 5]>> = Arc::default();
        let mut probes = Vec::new();
        for svc in SERVICES {
            let (shared, channel, admin) = (
                self.shared.clone(),
                self.channel.clone(),
                self.admin.clone(),
            );
            let (targets, stop, ready_at, recovered) = (
                targets.clone(),
                stop.clone(),
                ready_at.clone(),
                recovered.clone(),
            );
            probes.push(tokio::spawn(async move {
                let mut streaming = false;
                while !stop.load(Ordering::Relaxed) {
                    streaming = !streaming;
                    let started = Instant::now();
                    let call = probe(svc, streaming, &channel, &admin, &targets);
                    let result = shared.read(svc, call).await;
                    let after_ready = ready_at.lock().unwrap().is_some_and(|r| started >= r);
                    if result.is_ok() && after_ready {
                        recovered.lock().unwrap()[svc.i()][usize::from(streaming)]
                            .get_or_insert_with(Instant::now);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }));
        }
        let killed = Instant::now();
        self.postgres.kill().await;
        let down_for = self.args.pg_down_secs * (1.0 + rng.below(300) as f64 / 1000.0);
        tokio::time::sleep(Duration::from_secs_f64(down_for)).await;
        self.postgres.start().await?;
        let ready = Instant::now();
        *ready_at.lock().unwrap() = Some(ready);
        let bound = Duration::from_secs(self.args.pg_recovery_secs);
        let all_back = loop {
            let back = *recovered.lock().unwrap();
            if back.iter().flatten().all(Option::is_some) {
                break back.iter().flatten().flatten().max().copied();
            }
            if ready.elapsed() > bound + Duration::from_secs(5) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        stop.store(true, Ordering::Relaxed);
        for probe in probes {
            probe.await?;
        }
        self.targets = Arc::into_inner(targets);

        let end = all_back.unwrap_or_else(Instant::now);
        let mut codes = BTreeMap::new();
        let mut first_other = None;
        for failure in self.shared.failures.lock().unwrap().iter() {
            if failure.ended >= killed && failure.started <= end {
                *codes.entry((failure.svc, failure.code as i32)).or_default() += 1;
                if failure.code != Code::Unavailable && first_other.is_none() {
                    first_other = Some(format!(
                        "{}: {:?} {}",
                        failure.svc.name(),
                        failure.code,
                        failure.message
                    ));
                }
            }
        }
        let recovered_after = all_back.map(|at| at.saturating_duration_since(ready));
        let n = self.outages.len() + 1;
        match recovered_after {
            Some(after) if after <= bound => {}
            Some(after) => self.problems.push(format!(
                "PostgreSQL restart {n}: calls succeeded again only {after:.1?} after it was back (bound {bound:?})"
            )),
            None => self.problems.push(format!(
                "PostgreSQL restart {n}: not every service answered again within {bound:?}"
            )),
        }
        if let Some(other) = &first_other {
            self.problems.push(format!(
                "PostgreSQL restart {n}: a client got another code than UNAVAILABLE ({other})"
            ));
        }
        for svc in SERVICES {
            if !codes.contains_key(&(svc, Code::Unavailable as i32)) {
                self.problems.push(format!(
                    "PostgreSQL restart {n}: {} never answered UNAVAILABLE while the database was down",
                    svc.name()
                ));
            }
        }
        if self.server.pid() != pid || !self.server.alive() {
            bail!("quintet did not survive PostgreSQL's restart");
        }

        self.outages.push(Outage {
            pid: pid.unwrap_or_default(),
            down: ready - killed,
            recovered: recovered_after,
            codes,
            first_other,
        });
        Ok(())
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let mut rng = Rng(seed | 1);
    let run_id = format!("{:06}", seed % 1_000_000);
    let server_bin = match &args.server_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|dir| dir.join("quintet"))
            .filter(|bin| bin.is_file())
            .unwrap_or_else(|| PathBuf::from("target/debug/quintet")),
    };
    anyhow::ensure!(
        server_bin.is_file(),
        "no server binary at {}",
        server_bin.display()
    );
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("quintet-crash-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    // PostgreSQL may run as another user (when this runs as root): it must reach its directory.
    std::fs::set_permissions(
        &dir,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o711),
    )?;
    let dir = std::fs::canonicalize(&dir)?;
    eprintln!(
        "crash: seed {seed}, {} server kills, {} PostgreSQL kills, server {}, work directory {}",
        args.kills,
        args.pg_kills,
        server_bin.display(),
        dir.display()
    );

    // PostgreSQL.
    let mut options = EmbeddedOptions::new(dir.join("pg"));
    options.bindir = args.pg_bindir.clone();
    let mut postgres = Postgres {
        options,
        cluster: None,
    };
    postgres.start().await?;
    let pgdata = dir.join("pg").join("postgres");
    let database_url = format!(
        "postgres://{}@localhost/{}?host={}",
        quintet::db::embedded::SUPERUSER,
        quintet::db::embedded::DATABASE,
        pgdata.display()
    );
    let pool = quintet::db::connect(database_url.parse()?, 4).await?;
    if !args.pg_fsync {
        sqlx::raw_sql("ALTER SYSTEM SET fsync = off")
            .execute(&pool)
            .await?;
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&pool)
            .await?;
    }

    // The stand-in Sui ledger buyers pay on.
    let ledger = StandInLedger::default();
    let ledger_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ledger_url = format!("http://{}", ledger_listener.local_addr()?);
    ledger.serve(ledger_listener);

    // quintet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let admin = quintet::auth::generate_token(quintet::auth::ADMIN_TOKEN_PREFIX)
        .expose()
        .to_owned();
    let server_dir = dir.join("server");
    let env = [
        ("QUINTET_LISTEN", format!("127.0.0.1:{port}")),
        ("DATABASE_URL", database_url.clone()),
        ("QUINTET_DATA_DIR", server_dir.display().to_string()),
        ("QUINTET_ADMIN_TOKEN", admin.clone()),
        ("QUINTET_LOG", "warn".to_owned()),
        ("QUINTET_MARKET_ESCROW_ADDRESS", ESCROW.to_owned()),
        ("QUINTET_MARKET_SUI_RPC_URL", ledger_url),
        ("QUINTET_RATE_LIMIT_PER_SEC", "0".to_owned()),
        ("QUINTET_ANONYMOUS_RATE_LIMIT_PER_SEC", "0".to_owned()),
        ("QUINTET_SHUTDOWN_GRACE_SECS", "5".to_owned()),
    ]
    .map(|(k, v)| (k.to_owned(), v))
    .to_vec();
    let mut server = Server {
        bin: server_bin,
        env,
        log: dir.join("server.log"),
        child: None,
    };
    server.spawn()?;
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy();
    server
        .wait_healthy(&channel, Duration::from_secs(120))
        .await?;

    let shared = Arc::new(Shared::new(args.pace_ms));
    setup(
        &shared,
        &channel,
        &pool,
        &admin,
        &run_id,
        args.writers,
        &dir.join("author.key"),
    )
    .await?;

    // Writers.
    let mut writers = Vec::new();
    let mut seeds = || Rng(rng.next() | 1);
    for w in 0..args.writers {
        let (s, c) = (shared.clone(), channel.clone());
        writers.push(tokio::spawn(registry_writer(s, c, w, seeds())));
        let (s, c) = (shared.clone(), channel.clone());
        writers.push(tokio::spawn(store_writer(
            s,
            c,
            admin.clone(),
            run_id.clone(),
            w,
            seeds(),
        )));
        let (s, c) = (shared.clone(), channel.clone());
        writers.push(tokio::spawn(griot_writer(
            s,
            c,
            admin.clone(),
            dir.join("author.key"),
            run_id.clone(),
            w,
            seeds(),
        )));
        let (s, c) = (shared.clone(), channel.clone());
        writers.push(tokio::spawn(market_seller(s, c, w, seeds())));
        let (s, c) = (shared.clone(), channel.clone());
        writers.push(tokio::spawn(pds_writer(s, c, w, args.writers, seeds())));
    }
    for b in 0..args.writers + 1 {
        let (s, c) = (shared.clone(), channel.clone());
        writers.push(tokio::spawn(market_buyer(
            s,
            c,
            ledger.clone(),
            run_id.clone(),
            b,
            seeds(),
        )));
    }
    let targets = probe_targets(&shared).await?;

    let mut checker = Checker {
        shared: shared.clone(),
        pool: pool.clone(),
        channel: channel.clone(),
        admin: admin.clone(),
        run: run_id.clone(),
        nodes: server_dir.join("nodes"),
        published_from: 0,
        stars_from: 0,
        objects_from: 0,
        griot_packages_from: 0,
        jobs_from: 0,
        datapods_from: 0,
        purchases_from: 0,
        reviews_from: 0,
        downloads_checked: HashMap::new(),
        versions_seen: HashSet::new(),
        manifests_seen: HashSet::new(),
        installed_seen: HashSet::new(),
        did_keys: HashMap::new(),
    };
    let mut run = Run {
        args,
        shared: shared.clone(),
        server,
        postgres,
        channel: channel.clone(),
        admin: admin.clone(),
        targets: Some(targets),
        outages: Vec::new(),
        restarts: Vec::new(),
        kills_covered: [0; 5],
        problems: Vec::new(),
    };

    // The schedule: server and PostgreSQL kills, shuffled.
    let mut plan: Vec<Event> = std::iter::repeat_n(Event::Server, run.args.kills)
        .chain(std::iter::repeat_n(Event::Postgres, run.args.pg_kills))
        .collect();
    for i in (1..plan.len()).rev() {
        plan.swap(i, rng.below(i + 1));
    }
    let outcome: anyhow::Result<()> = async {
        for (k, event) in plan.iter().enumerate() {
            let interval = run.args.interval_ms.max(4);
            let wait = interval / 4 + rng.below((interval * 3 / 4) as usize) as u64;
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let flying = in_flight(&shared, Duration::from_secs(10)).await;
            let what = match event {
                Event::Server => {
                    run.kill_server().await?;
                    "quintet"
                }
                Event::Postgres => {
                    run.kill_postgres(&mut rng).await?;
                    "PostgreSQL"
                }
            };
            for svc in SERVICES {
                if flying[svc.i()] > 0 {
                    run.kills_covered[svc.i()] += 1;
                } else {
                    run.problems.push(format!(
                        "kill {} ({what}): {} had no write in flight",
                        k + 1,
                        svc.name()
                    ));
                }
            }
            let took = checker.check(false).await?;
            eprintln!(
                "kill {:>2}/{} {what:<10} at {:>6.1} s, in flight {flying:?}; checked in {:.1} s {:.1?}",
                k + 1,
                plan.len(),
                started.elapsed().as_secs_f64(),
                took.iter().sum::<Duration>().as_secs_f64(),
                took.map(|t| t.as_secs_f64())
            );
        }
        Ok(())
    }
    .await;

    // Stop writing; let background work finish; check everything.
    shared.stop.store(true, Ordering::Relaxed);
    for writer in writers {
        let _ = writer.await;
    }
    let mut settled = None;
    let outcome = match outcome {
        Ok(()) => {
            let mut after = None;
            let finished = finish(&mut checker, &pool, &run.args, &mut after).await;
            settled = Some(after);
            finished
        }
        failed => failed,
    };
    let server_log = run.server.log.clone();
    let stopped = run.server.stop().await;
    pool.close().await;
    let pg_stopped = run.postgres.stop().await;
    let outcome = outcome.and(stopped).and(pg_stopped);

    // A clean run's directory goes before the summary, whose time is then the whole run's.
    let clean = outcome.is_ok() && violations(&run, &shared) == 0;
    if clean && !run.args.keep && run.args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let violations = report(&run, &shared, started.elapsed(), settled, seed);
    if !clean {
        eprintln!(
            "work directory kept: {} (server log {})",
            dir.display(),
            server_log.display()
        );
        outcome?;
        bail!("{violations} violation(s)");
    }
    Ok(())
}

fn violations(run: &Run, shared: &Shared) -> usize {
    let tallies = *shared.tallies.lock().unwrap();
    let found: u64 = tallies
        .iter()
        .map(|t| t.lost + t.half + t.counters + t.stuck)
        .sum();
    found as usize + run.problems.len()
}

/// After the writers stopped: waits (within the bound) for background work to finish, checks
/// everything, and requires every job and purchase to have completed.
async fn finish(
    checker: &mut Checker,
    pool: &PgPool,
    args: &Args,
    settled: &mut Option<Duration>,
) -> anyhow::Result<()> {
    let settling = Instant::now();
    let bound = Duration::from_secs(args.settle_secs);
    loop {
        let (jobs, purchases): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM griot.installations
                     WHERE status IN ('pending', 'running')),
                    (SELECT count(*) FROM market.purchases
                     WHERE status IN ('pending_payment', 'processing'))",
        )
        .fetch_one(pool)
        .await?;
        if jobs == 0 && purchases == 0 {
            *settled = Some(settling.elapsed());
            break;
        }
        if settling.elapsed() > bound {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    checker.check(true).await?;
    sql_violations(
        checker,
        Svc::Griot,
        Kind::Stuck,
        "SELECT job_id::text, status, coalesce(status_message, '') FROM griot.installations
         WHERE status <> 'completed'",
        |(job, status, message): (String, String, String)| {
            format!("job {job} ended {status}, not completed, after the run: {message}")
        },
    )
    .await?;
    sql_violations(
        checker,
        Svc::Market,
        Kind::Stuck,
        "SELECT id::text, status, coalesce(last_error, '') FROM market.purchases
         WHERE status <> 'completed'",
        |(id, status, error): (String, String, String)| {
            format!("purchase {id} is {status}, not completed, after the run: {error}")
        },
    )
    .await?;
    Ok(())
}

/// Prints the summary; returns the number of violations.
fn report(
    run: &Run,
    shared: &Shared,
    elapsed: Duration,
    settled: Option<Option<Duration>>,
    seed: u64,
) -> usize {
    let tallies = *shared.tallies.lock().unwrap();
    let kills = run.args.kills + run.args.pg_kills;
    println!(
        "crash: {} quintet kills, {} PostgreSQL kills, seed {seed}, {:.0} s",
        run.args.kills,
        run.args.pg_kills,
        elapsed.as_secs_f64()
    );
    if !run.restarts.is_empty() {
        let mut restarts = run.restarts.clone();
        restarts.sort();
        println!(
            "quintet restarts until healthy: median {:.2} s, max {:.2} s",
            restarts[restarts.len() / 2].as_secs_f64(),
            restarts[restarts.len() - 1].as_secs_f64()
        );
    }
    match settled {
        Some(Some(after)) => println!(
            "background work (griot jobs, purchases) finished {:.1} s after the writers stopped",
            after.as_secs_f64()
        ),
        Some(None) => println!(
            "background work did not finish within {} s of the writers stopping",
            run.args.settle_secs
        ),
        None => println!("the run stopped early: no final check"),
    }
    println!(
        "{:<9} {:>6} {:>7} {:>8} {:>5} {:>5} {:>16} {:>5}",
        "service", "kills", "acked", "checked", "lost", "half", "counters (rows)", "stuck"
    );
    for svc in SERVICES {
        let t = tallies[svc.i()];
        // The store keeps no counters; only griot and the market have background work.
        let counters = match svc {
            Svc::Store => "-".to_owned(),
            _ => format!("{} ({})", t.counters, t.counters_checked),
        };
        let stuck = match svc {
            Svc::Griot | Svc::Market => t.stuck.to_string(),
            _ => "-".to_owned(),
        };
        println!(
            "{:<9} {:>6} {:>7} {:>8} {:>5} {:>5} {:>16} {:>5}",
            svc.name(),
            format!("{}/{kills}", run.kills_covered[svc.i()]),
            shared.acks[svc.i()].load(Ordering::Relaxed),
            t.verified,
            t.lost,
            t.half,
            counters,
            stuck
        );
    }
    println!(
        "  kills: kills (quintet's and PostgreSQL's) with writes of the service in flight; acked: \
         writes answered OK; checked: reads that verified an acknowledged write or a visible item \
         (every check re-reads the new ones, the final one all); lost, half(-written), counters \
         (mismatches, and rows compared) and stuck must be 0"
    );
    if !run.outages.is_empty() {
        println!("PostgreSQL restarts (quintet kept running: same pid before and after):");
        println!(
            "{:>3} {:>8} {:>6} {:>40} {:>12} {:>11}",
            "#",
            "pid",
            "down",
            "UNAVAILABLE (registry/store/griot/market/pds)",
            "other codes",
            "back after"
        );
        for (i, outage) in run.outages.iter().enumerate() {
            let count = |svc: Svc| {
                outage
                    .codes
                    .get(&(svc, Code::Unavailable as i32))
                    .copied()
                    .unwrap_or(0)
            };
            let per_service: Vec<String> = SERVICES.iter().map(|s| count(*s).to_string()).collect();
            let unavailable: u64 = SERVICES.iter().map(|s| count(*s)).sum();
            let others: u64 = outage
                .codes
                .iter()
                .filter(|((_, code), _)| *code != Code::Unavailable as i32)
                .map(|(_, n)| n)
                .sum();
            println!(
                "{:>3} {:>8} {:>5.1}s {:>40} {:>12} {:>11}",
                i + 1,
                outage.pid,
                outage.down.as_secs_f64(),
                format!("{unavailable} ({})", per_service.join("/")),
                others,
                outage
                    .recovered
                    .map(|d| format!("{:.2} s", d.as_secs_f64()))
                    .unwrap_or_else(|| "never".to_owned())
            );
            if let Some(other) = &outage.first_other {
                println!("      first other code: {other}");
            }
        }
        println!(
            "  down: from the SIGKILL until PostgreSQL accepted connections again; UNAVAILABLE: \
             failed calls (writers' and probes') while it was away; back after: until every \
             service answered a call again, counted from PostgreSQL being back"
        );
    }
    for problem in &run.problems {
        println!("PROBLEM: {problem}");
    }
    let messages = shared.messages.lock().unwrap();
    for message in messages.iter().take(40) {
        println!("VIOLATION {message}");
    }
    if messages.len() > 40 {
        println!("... and {} more", messages.len() - 40);
    }
    let violations = violations(run, shared);
    println!(
        "result: {}",
        if violations == 0 {
            "OK".to_owned()
        } else {
            format!("FAILED, {violations} violation(s)")
        }
    );
    violations
}
