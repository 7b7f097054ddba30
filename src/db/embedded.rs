//! The embedded PostgreSQL: a private cluster under quintet's data directory, run with the
//! PostgreSQL server binaries already installed on the machine (it never downloads anything).
//!
//! - `initdb` runs once, into a temporary directory renamed into place only when it succeeded,
//!   so an interrupted first start leaves nothing half-initialised.
//! - `postgres` listens on a Unix socket inside its data directory and on no TCP port; the
//!   socket's directory is private (0700), which is what makes `trust` authentication safe there.
//! - `postgres` runs as a child of a dedicated thread that waits on it. It is started in its own
//!   process group (a terminal's Ctrl-C reaches quintet, which stops PostgreSQL last, after
//!   draining) and with a parent-death signal, so it shuts down even if quintet is SIGKILLed.
//! - PostgreSQL refuses to run as root: when quintet is root, the cluster belongs to, and runs as,
//!   an unprivileged system user (`postgres` by default).

use std::{
    ffi::CString,
    fs,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use sqlx::{ConnectOptions, Connection, postgres::PgConnectOptions};
use tokio::sync::oneshot;

/// The database quintet's data lives in, inside the embedded cluster (spelled out again in
/// `ensure_database`, whose statement must be a literal).
pub const DATABASE: &str = "quintet";
/// The cluster's superuser.
pub const SUPERUSER: &str = "quintet";
/// The socket's port number (it names the socket file; there is no TCP listener).
const PORT: u16 = 5432;
/// Unix socket paths are limited to 108 bytes on Linux, NUL included.
const MAX_SOCKET_PATH: usize = 107;
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// The cluster lives in `<data_dir>/postgres`, its log in `<data_dir>/postgres.log`.
    pub data_dir: PathBuf,
    /// Where `initdb` and `postgres` are; found automatically when `None`.
    pub bindir: Option<PathBuf>,
    /// The user to run PostgreSQL as when quintet runs as root.
    pub run_as_when_root: String,
    /// Turn off fsync: only for throwaway test clusters, where speed matters and durability not.
    pub durable: bool,
    /// `max_connections` of the cluster.
    pub max_connections: u32,
}

impl EmbeddedOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EmbeddedOptions {
            data_dir: data_dir.into(),
            bindir: None,
            run_as_when_root: "postgres".to_owned(),
            durable: true,
            max_connections: 200,
        }
    }
}

/// A running embedded cluster. Stop it with [`EmbeddedPostgres::stop`]; dropping it without
/// stopping asks PostgreSQL to shut down but does not wait.
pub struct EmbeddedPostgres {
    pgdata: PathBuf,
    pid: i32,
    exited: Option<oneshot::Receiver<std::io::Result<ExitStatus>>>,
    server_version: String,
}

impl std::fmt::Debug for EmbeddedPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedPostgres")
            .field("pgdata", &self.pgdata)
            .field("pid", &self.pid)
            .finish()
    }
}

#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

impl EmbeddedPostgres {
    /// Initialises the cluster if needed, starts it and waits until it accepts connections, then
    /// makes sure the `quintet` database exists.
    pub async fn start(options: EmbeddedOptions) -> anyhow::Result<Self> {
        let bindir = find_bindir(options.bindir.as_deref())?;
        let run_as = run_as(&options.run_as_when_root)?;
        let data_dir = absolute(&options.data_dir)?;
        let pgdata = data_dir.join("postgres");
        let socket = pgdata.join(format!(".s.PGSQL.{PORT}"));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "the data directory path is too long for a Unix socket ({} > {MAX_SOCKET_PATH} bytes): {}; choose a shorter QUINTET_DATA_DIR",
                socket.as_os_str().len(),
                socket.display()
            );
        }
        create_data_dir(&data_dir)?;
        let version = {
            let bindir = bindir.clone();
            let pgdata = pgdata.clone();
            let durable = options.durable;
            tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
                if !pgdata.join("PG_VERSION").exists() {
                    initdb(&bindir, &pgdata, run_as, durable)?;
                }
                wait_for_previous_postmaster(&pgdata)?;
                Ok(fs::read_to_string(pgdata.join("PG_VERSION"))?
                    .trim()
                    .to_owned())
            })
            .await??
        };

        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("postgres.log"))
            .context("cannot open postgres.log in the data directory")?;
        let mut command = Command::new(bindir.join("postgres"));
        command
            .arg("-D")
            .arg(&pgdata)
            .arg("-k")
            .arg(&pgdata)
            .arg("-p")
            .arg(PORT.to_string())
            .args(["-c", "listen_addresses="])
            .args(["-c", "unix_socket_permissions=0700"])
            .args([
                "-c",
                &format!("max_connections={}", options.max_connections),
            ])
            .args(["-c", "logging_collector=off"])
            .current_dir(&pgdata)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        if !options.durable {
            command.args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]);
        }
        if let Some(run_as) = run_as {
            command.uid(run_as.uid).gid(run_as.gid);
        }
        // SAFETY: prctl is async-signal-safe; this runs in the child between fork and exec, after
        // the uid change (which would clear the parent-death signal).
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }

        let (spawned_tx, spawned_rx) = oneshot::channel();
        let (exit_tx, exit_rx) = oneshot::channel();
        // The parent-death signal fires when the spawning *thread* exits, so the spawning thread
        // is one that lives exactly as long as PostgreSQL: it waits on it.
        std::thread::Builder::new()
            .name("embedded-postgres".to_owned())
            .spawn(move || match command.spawn() {
                Ok(mut child) => {
                    let _ = spawned_tx.send(Ok(child.id() as i32));
                    let _ = exit_tx.send(child.wait());
                }
                Err(e) => {
                    let _ = spawned_tx.send(Err(e));
                }
            })?;
        let pid = spawned_rx
            .await?
            .with_context(|| format!("cannot run {}", bindir.join("postgres").display()))?;

        let mut cluster = EmbeddedPostgres {
            pgdata,
            pid,
            exited: Some(exit_rx),
            server_version: version,
        };
        if let Err(e) = cluster.wait_ready().await {
            cluster.signal(libc::SIGQUIT);
            return Err(e);
        }
        cluster.ensure_database().await?;
        tracing::info!(pgdata = %cluster.pgdata.display(), pid, version = %cluster.server_version, "embedded PostgreSQL ready");
        Ok(cluster)
    }

    /// Connection options for the `quintet` database over the cluster's Unix socket.
    pub fn connect_options(&self) -> PgConnectOptions {
        self.connect_options_for(DATABASE)
    }

    /// Connection options for any database of the cluster (the test harness makes many).
    pub fn connect_options_for(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.pgdata)
            .port(PORT)
            .username(SUPERUSER)
            .database(database)
            .application_name("quintet")
    }

    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Fast shutdown (clients are disconnected, transactions rolled back, a checkpoint written),
    /// waiting for the server to exit; immediate shutdown if it does not within 30 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let Some(exited) = self.exited.take() else {
            return Ok(());
        };
        self.signal(libc::SIGINT);
        let status = match tokio::time::timeout(STOP_TIMEOUT, exited).await {
            Ok(status) => status??,
            Err(_) => {
                tracing::warn!(
                    pid = self.pid,
                    "PostgreSQL did not stop in time; stopping it immediately"
                );
                self.signal(libc::SIGQUIT);
                bail!(
                    "PostgreSQL (pid {}) did not stop within {STOP_TIMEOUT:?}",
                    self.pid
                );
            }
        };
        tracing::info!(%status, "embedded PostgreSQL stopped");
        Ok(())
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: plain syscall on a pid we spawned and have not reaped (the waiting thread reaps).
        unsafe {
            libc::kill(self.pid, signal);
        }
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let options = self
            .connect_options_for("postgres")
            .disable_statement_logging();
        loop {
            if let Some(exited) = self.exited.as_mut()
                && let Ok(status) = exited.try_recv()
            {
                self.exited = None;
                let status = status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                bail!(
                    "PostgreSQL exited during start-up ({status}); see {}",
                    self.pgdata.with_file_name("postgres.log").display()
                );
            }
            match options.connect().await {
                Ok(conn) => {
                    let _ = conn.close().await;
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(anyhow::Error::new(e)
                        .context("PostgreSQL did not accept connections within 60 s"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    async fn ensure_database(&self) -> anyhow::Result<()> {
        let mut conn = self
            .connect_options_for("postgres")
            .disable_statement_logging()
            .connect()
            .await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(DATABASE)
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            sqlx::raw_sql("CREATE DATABASE quintet")
                .execute(&mut conn)
                .await?;
        }
        conn.close().await?;
        Ok(())
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if self.exited.is_some() {
            self.signal(libc::SIGINT);
        }
    }
}

/// Finds a directory with both `initdb` and `postgres`.
fn find_bindir(configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    let has_server = |dir: &Path| dir.join("postgres").is_file() && dir.join("initdb").is_file();
    if let Some(dir) = configured {
        if has_server(dir) {
            return Ok(dir.to_owned());
        }
        bail!(
            "QUINTET_PG_BINDIR={} holds no PostgreSQL server (initdb and postgres)",
            dir.display()
        );
    }
    let mut candidates = Vec::new();
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        candidates.push(PathBuf::from(
            String::from_utf8_lossy(&output.stdout).trim(),
        ));
    }
    // Debian and Ubuntu install each major version side by side; prefer the newest.
    let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .collect();
    versioned.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    candidates.extend(versioned.into_iter().map(|(_, dir)| dir));
    candidates.extend(["/usr/local/pgsql/bin", "/usr/pgsql/bin"].map(PathBuf::from));
    candidates.into_iter().find(|dir| has_server(dir)).ok_or_else(|| {
        anyhow::anyhow!(
            "no PostgreSQL server found (looked for initdb and postgres via pg_config and in /usr/lib/postgresql/*/bin): install it with `sudo apt-get install postgresql`, point QUINTET_PG_BINDIR at its bin directory, or set DATABASE_URL to use an existing server"
        )
    })
}

/// The user PostgreSQL must run as: none when quintet is not root.
fn run_as(user: &str) -> anyhow::Result<Option<RunAs>> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new(user)?;
    let mut passwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to live, correctly sized storage owned by this frame.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut passwd,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        bail!(
            "quintet runs as root, and PostgreSQL refuses to: it runs PostgreSQL as the system user {user:?}, which does not exist; create it (installing the `postgresql` package does), set QUINTET_PG_USER to another user, or run quintet as a normal user"
        );
    }
    Ok(Some(RunAs {
        uid: passwd.pw_uid,
        gid: passwd.pw_gid,
    }))
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_owned())
    } else {
        Ok(std::env::current_dir()?.join(path))
    }
}

fn create_data_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    // Others may traverse (the PostgreSQL user must reach its cluster when quintet is root) but
    // not list; what is secret inside has its own stricter mode.
    let mut permissions = fs::metadata(dir)?.permissions();
    if permissions.mode() & 0o077 != 0o011 {
        permissions.set_mode(0o711);
        fs::set_permissions(dir, permissions)?;
    }
    Ok(())
}

fn initdb(
    bindir: &Path,
    pgdata: &Path,
    run_as: Option<RunAs>,
    durable: bool,
) -> anyhow::Result<()> {
    let staging = pgdata.with_file_name("postgres.initdb");
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot remove the leftover {}", staging.display()))?;
    }
    fs::create_dir(&staging)?;
    fs::set_permissions(&staging, fs::Permissions::from_mode(0o700))?;
    if let Some(run_as) = run_as {
        std::os::unix::fs::chown(&staging, Some(run_as.uid), Some(run_as.gid))?;
    }
    let mut command = Command::new(bindir.join("initdb"));
    command
        .arg("-D")
        .arg(&staging)
        .args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ])
        .current_dir(&staging)
        .stdin(Stdio::null());
    if !durable {
        command.arg("--no-sync");
    }
    if let Some(run_as) = run_as {
        command.uid(run_as.uid).gid(run_as.gid);
    }
    let output = command
        .output()
        .with_context(|| format!("cannot run {}", bindir.join("initdb").display()))?;
    if !output.status.success() {
        bail!(
            "initdb failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    fs::rename(&staging, pgdata)?;
    tracing::info!(pgdata = %pgdata.display(), "initialised a new PostgreSQL cluster");
    Ok(())
}

/// A PostgreSQL left running by a quintet that died is shutting down on its parent-death signal;
/// wait for it rather than fail on its lock file.
fn wait_for_previous_postmaster(pgdata: &Path) -> anyhow::Result<()> {
    let pid_file = pgdata.join("postmaster.pid");
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        let Ok(text) = fs::read_to_string(&pid_file) else {
            return Ok(());
        };
        let Some(pid) = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
        else {
            return Ok(());
        };
        // SAFETY: signal 0 only checks that the process exists. A pid reused by an unrelated
        // program after a reboot is not a postmaster: PostgreSQL itself handles that lock file.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            && fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == "postgres");
        if !alive {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "another PostgreSQL (pid {pid}) is running on {}; is another quintet using this data directory?",
                pgdata.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
