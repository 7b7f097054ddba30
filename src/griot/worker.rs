//! Installation workers. Every server process runs a few; each claims the oldest claimable job
//! with `FOR UPDATE SKIP LOCKED` (so replicas share the queue and no job runs twice), holds it
//! under a lease it renews, and runs it: resolve dependencies, then for each package not yet on
//! the target: fetch the artifact, verify hash, signature and trust, unpack it into a staging
//! directory and move it into place. Every step is a log line. A worker that dies loses its lease
//! and the job is claimed again and redone from the start (finished packages are skipped).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use ring::digest;
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::{io::AsyncWriteExt, sync::mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::{
    domain::{ArtifactSource, JobOptions, Manifest, PackageId},
    queries::{self, Appended, Installed, JOBS_CHANNEL, JobRow, PackageRow},
    trust::{self, TrustDecision},
    unpack::{self, UnpackError},
};
use crate::{
    blobs::{BlobStore, Sha256},
    error::Error,
    notify::{Notification, Notifier},
};

/// How long a claim lasts without renewal. A worker renews every third of it.
pub const LEASE: Duration = Duration::from_secs(30);
/// Claims after which a job whose workers keep dying (a crash it causes, say) fails.
const MAX_ATTEMPTS: i32 = 5;
/// How often idle workers look for claimable jobs without a notification (expired leases do not
/// notify).
const IDLE_POLL: Duration = Duration::from_secs(5);
/// Longest log message kept, in bytes.
const MAX_LOG_MESSAGE: usize = 8 * 1024;
/// Notifications carry the lines themselves when they fit in this many bytes.
const NOTIFY_LINES_BUDGET: usize = 7000;
/// Most lines written in one statement.
const LOG_BATCH: usize = 512;

/// What workers need.
pub struct Runner {
    pub pool: PgPool,
    pub blobs: BlobStore,
    pub notifier: Notifier,
    pub shutdown: CancellationToken,
    /// `<data dir>/nodes`.
    pub nodes_dir: PathBuf,
    pub limits: unpack::Limits,
    pub max_artifact_bytes: u64,
    pub http: reqwest::Client,
    pub worker_id: Uuid,
}

/// Starts `count` worker loops; they end after `runner.shutdown`, once their job is handed back.
/// First sweeps staging directories that no live run can own any more.
pub fn spawn_workers(runner: Arc<Runner>, count: usize) -> Vec<tokio::task::JoinHandle<()>> {
    if count > 0 {
        let sweeper = runner.clone();
        tokio::spawn(async move { sweeper.sweep_staging().await });
    }
    (0..count)
        .map(|_| {
            let runner = runner.clone();
            tokio::spawn(async move { runner.work().await })
        })
        .collect()
}

/// A package of a job and its verified manifest.
type Resolved = (PackageRow, Manifest);

/// Why a job stopped short.
#[derive(Debug)]
enum Stop {
    /// A failure a retry will not fix, or retries ran out.
    Failed(String),
    Cancelled,
    TimedOut,
    /// This process is shutting down: the job goes back to the queue.
    Shutdown,
    /// Another worker holds the job now (this one stalled past its lease).
    LostLease,
    /// Something outside the job failed (the database, while taking the target's lock): the
    /// job goes back to the queue for another attempt.
    Interrupted(String),
}

/// How an error of one of the job's steps stops it: a database that is unavailable (or a
/// conflicting concurrent change) says nothing about the job, which goes back to the queue as if
/// its worker had died; anything else fails it.
fn stop_for(error: Error) -> Stop {
    match error {
        Error::Unavailable(_) | Error::Aborted(_) => {
            Stop::Interrupted(format!("{error}; the job goes back to the queue"))
        }
        other => Stop::Failed(other.to_string()),
    }
}

/// A fetch failure: transient ones (network) are retried.
enum FetchError {
    Transient(String),
    Permanent(String),
    Stopped,
}

impl Runner {
    /// Removes `<nodes>/<target>/.staging/<job>` directories of jobs that are not running, left
    /// by a run that died when the job was then finished elsewhere (another replica with its
    /// own data directory, say). A running job's directory is its run's, or its next claim's.
    async fn sweep_staging(&self) {
        let Ok(mut targets) = tokio::fs::read_dir(&self.nodes_dir).await else {
            return;
        };
        while let Ok(Some(target)) = targets.next_entry().await {
            let Ok(mut jobs) = tokio::fs::read_dir(target.path().join(".staging")).await else {
                continue;
            };
            while let Ok(Some(entry)) = jobs.next_entry().await {
                let name = entry.file_name();
                let job = name.to_str().and_then(|n| Uuid::parse_str(n).ok());
                let running = match job {
                    Some(job) => match queries::job(&self.pool, job).await {
                        Ok(row) => row.is_some_and(|row| row.status == "running"),
                        // Unsure: leave it for the next start.
                        Err(_) => true,
                    },
                    None => false,
                };
                if !running {
                    match tokio::fs::remove_dir_all(entry.path()).await {
                        Ok(()) => {
                            tracing::info!(path = %entry.path().display(), "removed a stale staging directory")
                        }
                        Err(error) => {
                            tracing::warn!(%error, path = %entry.path().display(), "cannot remove a stale staging directory")
                        }
                    }
                }
            }
        }
    }

    async fn work(self: Arc<Self>) {
        let mut wakeups = self.notifier.subscribe();
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            // A fresh token per claim: every write of the run is fenced by it, so a run that lost
            // its lease (even to a sibling worker of this process) cannot touch the job again.
            let claim = Uuid::new_v4();
            match queries::claim_job(&self.pool, claim, LEASE.as_secs_f64()).await {
                Ok(Some(job)) => {
                    let span = tracing::info_span!("installation", job_id = %job.job_id);
                    self.run(job, claim).instrument(span).await
                }
                Ok(None) => {
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        woke = wakeups.recv_on(JOBS_CHANNEL) => if woke.is_none() { return },
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot claim installation jobs");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Runs one claimed job to its end (or until this process stops or loses the job).
    async fn run(&self, job: JobRow, claim: Uuid) {
        let job_id = job.job_id;
        let options: JobOptions = serde_json::from_value(job.options.0.clone()).unwrap_or_default();
        let log = JobLog::start(self.pool.clone(), job_id, claim, job.log_count);
        let stop = CancellationToken::new();
        let done = CancellationToken::new();
        let reason: Arc<Mutex<Option<Stop>>> = Arc::default();
        // The timeout runs from the job's first start, across attempts.
        let elapsed = job
            .started_at
            .map(|at| (OffsetDateTime::now_utc() - at).max(time::Duration::ZERO))
            .unwrap_or_default();
        let timeout = Duration::from_secs(u64::from(options.timeout_seconds.max(1)))
            .saturating_sub(elapsed.unsigned_abs());
        let watcher = tokio::spawn(watch(
            WatchContext {
                pool: self.pool.clone(),
                notifier: self.notifier.clone(),
                shutdown: self.shutdown.clone(),
                job_id,
                claim,
                timeout,
                already_cancelled: job.cancel_requested,
            },
            stop.clone(),
            done.clone(),
            reason.clone(),
        ));

        // One job per target at a time, whichever replica runs it: a session lock held for the
        // whole run (released by PostgreSQL if this process dies).
        let lock = self.lock_target(&job.target_node_id, &log, &stop).await;
        let result = match &lock {
            Ok(_) if job.attempts > MAX_ATTEMPTS => Err(Stop::Failed(format!(
                "gave up after {MAX_ATTEMPTS} attempts: the workers running it kept stopping"
            ))),
            Ok(_) => self.install(&job, claim, &options, &log, &stop).await,
            Err(_) if stop.is_cancelled() => Err(Stop::Cancelled),
            Err(error) => Err(Stop::Interrupted(format!(
                "cannot take the target's lock ({error}); the job goes back to the queue"
            ))),
        };
        stop.cancel();
        let stop_reason = reason.lock().unwrap().take();
        let outcome = match result {
            Ok(message) => Ok(message),
            // A stop signal wins over the error it caused (an interrupted fetch...).
            Err(error) => Err(stop_reason.unwrap_or(error)),
        };

        let staging = self.staging_dir(&job.target_node_id, job_id);
        let mut release = false;
        let finish = match outcome {
            Ok(message) => Some(("completed", message)),
            Err(Stop::Shutdown) => {
                let _ = tokio::fs::remove_dir_all(&staging).await;
                // What is installed stays: the next worker skips it.
                log.info("this server is shutting down; the job goes back to the queue")
                    .await;
                release = true;
                None
            }
            Err(Stop::Interrupted(message)) => {
                log.warn(&message).await;
                release = true;
                None
            }
            Err(Stop::LostLease) => {
                // Nothing here is ours any more, not even the staging directory.
                tracing::warn!("lost the lease on the job; another worker has it");
                None
            }
            Err(Stop::Cancelled) => {
                self.roll_back(&job, claim, &log).await;
                Some((
                    "cancelled",
                    "cancelled; what the job unpacked was removed".to_owned(),
                ))
            }
            Err(Stop::TimedOut) => {
                if options.rollback_on_failure {
                    self.roll_back(&job, claim, &log).await;
                }
                Some((
                    "failed",
                    format!("timed out after {} s", options.timeout_seconds),
                ))
            }
            Err(Stop::Failed(message)) => {
                if options.rollback_on_failure {
                    self.roll_back(&job, claim, &log).await;
                }
                Some(("failed", message))
            }
        };
        if let Some((status, message)) = &finish {
            let _ = tokio::fs::remove_dir_all(&staging).await;
            match *status {
                "completed" => log.info(message).await,
                "cancelled" => log.warn(message).await,
                _ => log.error(message).await,
            }
        }
        log.close().await;
        if release && let Err(error) = queries::release_job(&self.pool, job_id, claim).await {
            tracing::warn!(%error, "cannot release the job; its lease will expire");
        }
        if let Some((status, message)) = finish {
            match queries::finish_job(&self.pool, job_id, claim, status, &message).await {
                Ok(true) => tracing::info!(status, "installation ended"),
                Ok(false) => tracing::warn!("the job was taken over before it could end"),
                Err(error) => {
                    tracing::warn!(%error, "cannot record the job's end; its lease will expire and it will run again")
                }
            }
        }
        // Renewal stops only now: until the job's end is recorded, nobody may take it over.
        done.cancel();
        let _ = watcher.await;
        if let Ok(mut connection) = lock {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock_all()")
                .execute(&mut *connection)
                .await;
            if unlocked.is_err() {
                // A connection that may still hold the lock must not go back to the pool.
                let _ = sqlx::Connection::close(connection.detach()).await;
            }
        }
    }

    /// Takes the target's lock on a connection of its own, waiting (and saying so in the log)
    /// while another job installs onto the same target.
    async fn lock_target(
        &self,
        target: &str,
        log: &JobLog,
        stop: &CancellationToken,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, Error> {
        let mut connection = self.pool.acquire().await?;
        let mut said = false;
        loop {
            let locked: bool = sqlx::query_scalar(
                "SELECT pg_try_advisory_lock(hashtextextended('griot.target.' || $1, 0))",
            )
            .bind(target)
            .fetch_one(&mut *connection)
            .await?;
            if locked {
                return Ok(connection);
            }
            if !said {
                log.info(&format!(
                    "waiting for another installation onto {target} to end"
                ))
                .await;
                said = true;
            }
            tokio::select! {
                _ = stop.cancelled() => return Err(Error::Cancelled("stopped while waiting".into())),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    fn staging_dir(&self, target: &str, job_id: Uuid) -> PathBuf {
        self.nodes_dir
            .join(target)
            .join(".staging")
            .join(job_id.to_string())
    }

    /// Removes the packages this job installed (in any of its attempts), newest first: each
    /// record first, then, only if this run still held the job and removed it, the directory.
    async fn roll_back(&self, job: &JobRow, claim: Uuid, log: &JobLog) {
        let installed = match queries::installed_by_job(&self.pool, job.job_id).await {
            Ok(installed) => installed,
            Err(error) => {
                log.warn(&format!("cannot roll back: {error}")).await;
                return;
            }
        };
        for id in installed {
            match queries::forget_installed(&self.pool, &job.target_node_id, &id, job.job_id, claim)
                .await
            {
                Ok(true) => {
                    let dir = self
                        .nodes_dir
                        .join(&job.target_node_id)
                        .join(id.to_string());
                    match tokio::fs::remove_dir_all(&dir).await {
                        Ok(()) => log.info(&format!("rolled back {id}")).await,
                        Err(error) => {
                            log.warn(&format!("could not remove {}: {error}", dir.display()))
                                .await
                        }
                    }
                }
                Ok(false) => return,
                Err(error) => {
                    log.warn(&format!("could not roll back {id}: {error}"))
                        .await
                }
            }
        }
    }

    async fn install(
        &self,
        job: &JobRow,
        claim: Uuid,
        options: &JobOptions,
        log: &JobLog,
        stop: &CancellationToken,
    ) -> Result<String, Stop> {
        let failed = stop_for;
        log.info(&format!(
            "claimed by worker {} (attempt {})",
            self.worker_id, job.attempts
        ))
        .await;
        if job.cancel_requested {
            return Err(Stop::Cancelled);
        }
        let staging = self.staging_dir(&job.target_node_id, job.job_id);
        // A previous attempt's leftovers (its worker died).
        let _ = tokio::fs::remove_dir_all(&staging).await;
        tokio::fs::create_dir_all(&staging)
            .await
            .map_err(|e| Stop::Failed(format!("cannot create {}: {e}", staging.display())))?;

        let root = PackageId::parse("package_id", &job.package_id).map_err(failed)?;
        let order = self.resolve(&root).await?;
        log.info(&format!(
            "resolved {} package(s): {}",
            order.len(),
            order
                .iter()
                .map(|(_, m)| format!("{}@{}", m.name, m.version))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await;

        let mut fresh = 0;
        for (row, manifest) in &order {
            if stop.is_cancelled() {
                return Err(Stop::Cancelled);
            }
            let id = PackageId::parse("package_id", &row.package_id).map_err(failed)?;
            let label = format!("{}@{} ({id})", manifest.name, manifest.version);
            self.check_package(job, options, &id, manifest).await?;
            let dir = self
                .nodes_dir
                .join(&job.target_node_id)
                .join(id.to_string());
            let recorded = queries::is_installed(&self.pool, &job.target_node_id, &id)
                .await
                .map_err(failed)?;
            if recorded && tokio::fs::metadata(&dir).await.is_ok() {
                log.info(&format!("{label} is already installed")).await;
                continue;
            }

            let archive = staging.join(format!("{id}.tar.gz"));
            let source =
                ArtifactSource::parse("artifact_url", &row.artifact_url).map_err(failed)?;
            log.info(&format!(
                "fetching {label} from {}",
                super::domain::redact_url(&row.artifact_url)
            ))
            .await;
            let (sha256, size) = self
                .fetch_with_retries(&source, &id, &archive, options.max_retries, log, stop)
                .await?;
            if sha256 != *id.sha256() {
                return Err(Stop::Failed(format!(
                    "INTEGRITY_CHECK_FAILED: the artifact of {label} has SHA-256 {}",
                    sha256.to_hex()
                )));
            }
            log.info(&format!(
                "verified {size} bytes: SHA-256 matches, signature by {} valid",
                manifest.author.as_str()
            ))
            .await;

            let unpacked_dir = staging.join(id.to_string());
            let limits = self.limits;
            let flag = Arc::new(AtomicBool::new(false));
            let poll = flag.clone();
            let watch_stop = stop.clone();
            let watcher = tokio::spawn(async move {
                watch_stop.cancelled().await;
                poll.store(true, Ordering::Relaxed);
            });
            let archive_path = archive.clone();
            let into = unpacked_dir.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                unpack::unpack(&archive_path, &into, limits, &|| {
                    flag.load(Ordering::Relaxed)
                })
            })
            .await;
            watcher.abort();
            let unpacked = match outcome {
                Ok(Ok(unpacked)) => unpacked,
                Ok(Err(UnpackError::Cancelled)) => return Err(Stop::Cancelled),
                Ok(Err(error)) => return Err(Stop::Failed(format!("{label}: {error}"))),
                Err(error) => {
                    return Err(Stop::Failed(format!("{label}: unpacking crashed: {error}")));
                }
            };
            let _ = tokio::fs::remove_file(&archive).await;
            // A directory here that the database does not record is a leftover: replace it.
            let _ = tokio::fs::remove_dir_all(&dir).await;
            tokio::fs::rename(&unpacked_dir, &dir)
                .await
                .map_err(|e| Stop::Failed(format!("cannot move {label} into place: {e}")))?;
            let recorded = queries::record_installed(
                &self.pool,
                &Installed {
                    target: &job.target_node_id,
                    id: &id,
                    name: &manifest.name,
                    node_class: &manifest.node_class,
                    version: &manifest.version.to_string(),
                    job_id: job.job_id,
                },
                claim,
            )
            .await
            .map_err(failed)?;
            if !recorded {
                return Err(Stop::LostLease);
            }
            fresh += 1;
            log.info(&format!(
                "installed {label}: {} entries, {} bytes, in {}",
                unpacked.entries,
                unpacked.bytes,
                dir.display()
            ))
            .await;
        }
        let (_, root_manifest) = order.last().expect("the root package is resolved");
        Ok(format!(
            "installed {}@{} on {} ({fresh} package(s) unpacked, {} already there)",
            root_manifest.name,
            root_manifest.version,
            job.target_node_id,
            order.len() - fresh
        ))
    }

    /// The package and its dependencies, dependencies first; refuses cycles and missing packages.
    async fn resolve(&self, root: &PackageId) -> Result<Vec<Resolved>, Stop> {
        enum Mark {
            Visiting,
            Done,
        }
        let mut marks: HashMap<PackageId, Mark> = HashMap::new();
        let mut order = Vec::new();
        // Depth-first with an explicit stack: (package, the dependent that asked for it, next
        // dependency index); the path from the root is the stack itself.
        let mut stack: Vec<(PackageId, Option<Resolved>, usize)> = vec![(*root, None, 0)];
        while let Some((id, loaded, next)) = stack.last_mut() {
            if loaded.is_none() {
                let row = queries::package(&self.pool, id)
                    .await
                    .map_err(stop_for)?
                    .ok_or_else(|| Stop::Failed(format!("dependency {id} is not registered")))?;
                let manifest = Manifest::parse(&row.manifest.0.to_string(), &row.signature)
                    .map_err(|e| Stop::Failed(format!("package {id}: SIGNATURE_FAILED: {e}")))?;
                if manifest.artifact != *id {
                    return Err(Stop::Failed(format!(
                        "INTEGRITY_CHECK_FAILED: package {id}'s signed manifest is for artifact {}",
                        manifest.artifact
                    )));
                }
                marks.insert(*id, Mark::Visiting);
                *loaded = Some((row, manifest));
            }
            let (_, manifest) = loaded.as_ref().expect("loaded above");
            if let Some(dependency) = manifest.dependencies.get(*next).copied() {
                *next += 1;
                match marks.get(&dependency) {
                    Some(Mark::Done) => {}
                    Some(Mark::Visiting) => {
                        let mut path: Vec<String> = stack
                            .iter()
                            .skip_while(|(p, _, _)| *p != dependency)
                            .map(|(_, l, _)| {
                                let m = &l.as_ref().expect("on the path").1;
                                format!("{}@{}", m.name, m.version)
                            })
                            .collect();
                        path.push(path[0].clone());
                        return Err(Stop::Failed(format!(
                            "dependency cycle: {}",
                            path.join(" -> ")
                        )));
                    }
                    None => stack.push((dependency, None, 0)),
                }
            } else {
                let (id, loaded, _) = stack.pop().expect("not empty");
                marks.insert(id, Mark::Done);
                order.push(loaded.expect("loaded"));
            }
        }
        Ok(order)
    }

    /// Trust and rollback protection, checked when the job runs (the policy may have changed
    /// since the package was registered or the job queued).
    async fn check_package(
        &self,
        job: &JobRow,
        options: &JobOptions,
        id: &PackageId,
        manifest: &Manifest,
    ) -> Result<(), Stop> {
        let failed = stop_for;
        if let TrustDecision::Refused(why) = trust::decide(&self.pool, manifest.author.as_str())
            .await
            .map_err(failed)?
        {
            return Err(Stop::Failed(format!(
                "AUTHOR_NOT_TRUSTED: {}@{}: {why}",
                manifest.name, manifest.version
            )));
        }
        if !options.allow_downgrade {
            let versions = queries::installed_versions(
                &self.pool,
                &job.target_node_id,
                &manifest.name,
                &manifest.node_class,
                id,
            )
            .await
            .map_err(failed)?;
            if let Some(higher) = versions
                .iter()
                .filter_map(|v| semver::Version::parse(v).ok())
                .filter(|v| *v > manifest.version)
                .max()
            {
                return Err(Stop::Failed(format!(
                    "ROLLBACK_REFUSED: {} {higher} is installed on {}; refusing {} (allow_downgrade permits it)",
                    manifest.name, job.target_node_id, manifest.version
                )));
            }
        }
        Ok(())
    }

    async fn fetch_with_retries(
        &self,
        source: &ArtifactSource,
        id: &PackageId,
        into: &Path,
        max_retries: u32,
        log: &JobLog,
        stop: &CancellationToken,
    ) -> Result<(Sha256, u64), Stop> {
        let mut backoff = Duration::from_millis(500);
        let mut attempt = 0;
        loop {
            match self.fetch(source, id, into, stop).await {
                Ok(fetched) => return Ok(fetched),
                Err(FetchError::Stopped) => return Err(Stop::Cancelled),
                Err(FetchError::Permanent(message)) => return Err(Stop::Failed(message)),
                Err(FetchError::Transient(message)) if attempt < max_retries => {
                    attempt += 1;
                    log.warn(&format!(
                        "fetch failed: {message}; retry {attempt} of {max_retries} in {} ms",
                        backoff.as_millis()
                    ))
                    .await;
                    tokio::select! {
                        _ = stop.cancelled() => return Err(Stop::Cancelled),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(FetchError::Transient(message)) => {
                    return Err(Stop::Failed(format!(
                        "fetch failed after {attempt} retries: {message}"
                    )));
                }
            }
        }
    }

    /// Copies the artifact into `into`, hashing it, up to the size limit.
    async fn fetch(
        &self,
        source: &ArtifactSource,
        id: &PackageId,
        into: &Path,
        stop: &CancellationToken,
    ) -> Result<(Sha256, u64), FetchError> {
        let io =
            |e: std::io::Error| FetchError::Permanent(format!("cannot write the artifact: {e}"));
        let mut out = tokio::fs::File::create(into).await.map_err(io)?;
        let mut hasher = digest::Context::new(&digest::SHA256);
        let mut size = 0u64;
        let mut stream: crate::blobs::ByteStream = match source {
            ArtifactSource::Blob => match tokio::select! {
                _ = stop.cancelled() => return Err(FetchError::Stopped),
                got = self.blobs.get(id.sha256()) => got,
            } {
                Ok((_, stream)) => stream,
                Err(Error::NotFound { .. }) => {
                    return Err(FetchError::Permanent(
                        "the artifact is missing from the blob storage".to_owned(),
                    ));
                }
                Err(error) => return Err(FetchError::Transient(error.to_string())),
            },
            ArtifactSource::File(path) => {
                let file = tokio::fs::File::open(path).await.map_err(|e| {
                    FetchError::Permanent(format!("cannot open {}: {e}", path.display()))
                })?;
                Box::pin(
                    tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)
                        .map(|r| r.map_err(Error::internal)),
                )
            }
            ArtifactSource::Http(url) => {
                let shown = super::domain::redact_url(url.as_str());
                let response = tokio::select! {
                    _ = stop.cancelled() => return Err(FetchError::Stopped),
                    sent = self.http.get(url.clone()).send() => sent,
                }
                .map_err(|e| FetchError::Transient(format!("{shown}: {}", without_url(&e))))?;
                let status = response.status();
                if !status.is_success() {
                    let message = format!("{shown} answered {status}");
                    return Err(
                        if status.is_server_error()
                            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                            || status == reqwest::StatusCode::REQUEST_TIMEOUT
                        {
                            FetchError::Transient(message)
                        } else {
                            FetchError::Permanent(message)
                        },
                    );
                }
                Box::pin(
                    response
                        .bytes_stream()
                        .map(|r| r.map_err(|e| Error::Unavailable(without_url(&e)))),
                )
            }
        };
        loop {
            let chunk = tokio::select! {
                _ = stop.cancelled() => return Err(FetchError::Stopped),
                chunk = stream.next() => chunk,
            };
            let Some(chunk) = chunk else { break };
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(Error::DataLoss(message)) => {
                    return Err(FetchError::Permanent(format!(
                        "INTEGRITY_CHECK_FAILED: {message}"
                    )));
                }
                Err(error) => {
                    return Err(FetchError::Transient(format!(
                        "reading the artifact: {error}"
                    )));
                }
            };
            size += chunk.len() as u64;
            if size > self.max_artifact_bytes {
                return Err(FetchError::Permanent(format!(
                    "the artifact is larger than {} bytes",
                    self.max_artifact_bytes
                )));
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(io)?;
        }
        out.flush().await.map_err(io)?;
        Ok((
            Sha256::from_slice(hasher.finish().as_ref()).expect("32 bytes"),
            size,
        ))
    }
}

/// A reqwest error without the URL (already in the message) and its query string.
fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), "");
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.trim().to_owned()
}

struct WatchContext {
    pool: PgPool,
    notifier: Notifier,
    shutdown: CancellationToken,
    job_id: Uuid,
    claim: Uuid,
    timeout: Duration,
    already_cancelled: bool,
}

/// Renews the lease until `done`, and fires `stop` (recording why, once) on cancellation,
/// timeout, shutdown or a lost lease. Renewal goes on after `stop`, while the run cleans up and
/// records the end, so that nobody takes the job over meanwhile.
async fn watch(
    context: WatchContext,
    stop: CancellationToken,
    done: CancellationToken,
    reason: Arc<Mutex<Option<Stop>>>,
) {
    let mut wakeups = context.notifier.subscribe();
    let deadline = tokio::time::Instant::now() + context.timeout;
    let cancel_payload = format!("cancel {}", context.job_id);
    // The first tick is immediate: a cancellation sent before we subscribed is seen at once.
    let mut renew = tokio::time::interval(LEASE / 3);
    let set = |why: Stop| {
        reason.lock().unwrap().get_or_insert(why);
        stop.cancel();
    };
    if context.already_cancelled {
        set(Stop::Cancelled);
    }
    loop {
        let stopping = stop.is_cancelled();
        tokio::select! {
            _ = done.cancelled() => return,
            _ = context.shutdown.cancelled(), if !stopping => set(Stop::Shutdown),
            _ = tokio::time::sleep_until(deadline), if !stopping => set(Stop::TimedOut),
            _ = renew.tick() => {
                match queries::renew_lease(&context.pool, context.job_id, context.claim, LEASE.as_secs_f64()).await {
                    Ok(Some(true)) if !stopping => set(Stop::Cancelled),
                    Ok(Some(_)) => {}
                    Ok(None) => return set(Stop::LostLease),
                    Err(error) => tracing::warn!(%error, "cannot renew the job's lease"),
                }
            }
            woke = wakeups.recv_on(JOBS_CHANNEL), if !stopping => match woke {
                Some(Notification::Message { payload, .. }) if *payload == *cancel_payload => {
                    set(Stop::Cancelled);
                }
                // A missed notification may have been our cancellation: check now.
                Some(Notification::Resync) => renew.reset_immediately(),
                Some(_) => {}
                None => return,
            },
        }
    }
}

struct Line {
    level: &'static str,
    at: OffsetDateTime,
    message: String,
}

/// A job's log: lines are queued and written in batches (one statement per batch, which also
/// notifies followers), in order, by the job's worker only.
pub struct JobLog {
    sender: mpsc::Sender<Line>,
    writer: tokio::task::JoinHandle<()>,
}

impl JobLog {
    /// Starts the writer of `job_id`'s log for the worker holding it, which has `written` lines
    /// (from earlier attempts).
    pub fn start(pool: PgPool, job_id: Uuid, worker_id: Uuid, written: i64) -> Self {
        let (sender, receiver) = mpsc::channel(4 * LOG_BATCH);
        let writer = tokio::spawn(write_lines(pool, job_id, worker_id, written, receiver));
        JobLog { sender, writer }
    }

    pub async fn info(&self, message: &str) {
        self.line("info", message).await
    }

    pub async fn warn(&self, message: &str) {
        self.line("warn", message).await
    }

    pub async fn error(&self, message: &str) {
        self.line("error", message).await
    }

    async fn line(&self, level: &'static str, message: &str) {
        let mut message = message.to_owned();
        if message.len() > MAX_LOG_MESSAGE {
            let mut cut = MAX_LOG_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let _ = self
            .sender
            .send(Line {
                level,
                at: OffsetDateTime::now_utc(),
                message,
            })
            .await;
    }

    /// Writes what is queued and stops.
    pub async fn close(self) {
        drop(self.sender);
        let _ = self.writer.await;
    }
}

async fn write_lines(
    pool: PgPool,
    job_id: Uuid,
    worker_id: Uuid,
    mut written: i64,
    mut receiver: mpsc::Receiver<Line>,
) {
    let mut batch = Vec::with_capacity(LOG_BATCH);
    let mut unsure = false;
    while let Some(first) = receiver.recv().await {
        batch.push(first);
        while batch.len() < LOG_BATCH {
            match receiver.try_recv() {
                Ok(line) => batch.push(line),
                Err(_) => break,
            }
        }
        let levels: Vec<&str> = batch.iter().map(|l| l.level).collect();
        let times: Vec<OffsetDateTime> = batch.iter().map(|l| l.at).collect();
        let messages: Vec<String> = batch
            .iter_mut()
            .map(|l| std::mem::take(&mut l.message))
            .collect();
        let lines = super::logs::encode_lines(&levels, &times, &messages);
        let lines = (lines.len() <= NOTIFY_LINES_BUDGET).then_some(lines);
        if unsure {
            // A batch was given up on: it may have been written after all.
            match queries::held_log_count(&pool, job_id, worker_id).await {
                Ok(Some(count)) => {
                    written = count;
                    unsure = false;
                }
                Ok(None) => return,
                Err(_) => {}
            }
        }
        let mut delay = Duration::from_millis(100);
        loop {
            match queries::append_logs(
                &pool,
                job_id,
                worker_id,
                written,
                &levels,
                &times,
                &messages,
                lines.as_deref(),
            )
            .await
            {
                Ok(Appended::Now { .. } | Appended::Before) => {
                    written += batch.len() as i64;
                    break;
                }
                Ok(Appended::NotHeld) => {
                    // The job is no longer this worker's: nothing more may be written.
                    return;
                }
                Err(error) if delay <= Duration::from_secs(10) => {
                    tracing::warn!(%error, "cannot write log lines; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(error) => {
                    tracing::error!(%error, lines = batch.len(), "log lines lost");
                    unsure = true;
                    break;
                }
            }
        }
        batch.clear();
    }
}
