//! Regressions that `quintet-bench crash` found: each reproduces, in a test, a failure the crash
//! tool saw under concurrent writes, server kills and database restarts.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use quintet::{
    griot::domain::{DidKey, encode_signature, signing_bytes},
    proto::quintet::{
        griot::v1::{self as griot_pb, griot_service_client::GriotServiceClient},
        registry::v1 as registry_pb,
    },
};
use ring::signature::{Ed25519KeyPair, KeyPair};
use sqlx::postgres::PgConnectOptions;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream, UnixStream},
    sync::Notify,
};
use tokio_util::sync::CancellationToken;

use crate::{
    harness::{TestServer, authed},
    registry::{Registry, download, manifest, publish, publish_version, tarball},
};

/// Downloads count in the package row and the version row in one transaction; publishes lock the
/// package row and then update its versions. Downloads that took the rows in the other order
/// deadlocked with publishes of the same package, and ended with ABORTED after every byte.
#[tokio::test]
async fn downloads_during_publishes_of_their_package_all_complete_and_count() {
    let registry = Registry::start().await;
    let alice = registry.sign_in("alice").await;
    publish(
        registry.client(),
        &alice,
        manifest("busy", "1.0.0"),
        &tarball("v1.0.0"),
    )
    .await
    .unwrap();
    // Downloaders fetch the latest version: the row each publish moves `latest` away from.
    let downloaders: Vec<_> = (0..6)
        .map(|_| {
            let client = registry.client();
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for _ in 0..40 {
                    if let Err(status) = download(client.clone(), "busy", "").await {
                        failures.push(status);
                    }
                }
                failures
            })
        })
        .collect();
    for minor in 1..=30 {
        let version = format!("1.{minor}.0");
        publish_version(
            registry.client(),
            &alice,
            "busy",
            manifest("busy", &version),
            &tarball(&version),
        )
        .await
        .unwrap();
    }
    let mut failures = Vec::new();
    for downloader in downloaders {
        failures.extend(downloader.await.unwrap());
    }
    assert!(failures.is_empty(), "downloads failed: {failures:?}");
    let package = registry
        .client()
        .get_package(registry_pb::GetPackageRequest {
            name: "busy".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .package
        .unwrap();
    assert_eq!(package.downloads, 240);
    assert_eq!(
        package.versions.iter().map(|v| v.downloads).sum::<i64>(),
        240
    );
}

/// A TCP proxy in front of the test PostgreSQL that can be cut: every connection through it is
/// dropped and new ones are refused, as when the database server dies, until it is restored.
struct Proxy {
    addr: SocketAddr,
    target: Arc<Target>,
    running: Option<CancellationToken>,
}

enum Target {
    Unix(PathBuf),
    Tcp(String),
}

impl Proxy {
    async fn start(database: &PgConnectOptions) -> Self {
        let target = match database.get_socket() {
            Some(dir) => Target::Unix(dir.join(format!(".s.PGSQL.{}", database.get_port()))),
            None => Target::Tcp(format!("{}:{}", database.get_host(), database.get_port())),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            target: Arc::new(target),
            running: None,
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: TcpListener) {
        let running = CancellationToken::new();
        let (stop, target) = (running.clone(), self.target.clone());
        tokio::spawn(async move {
            loop {
                let mut client = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => return,
                    },
                };
                let (stop, target) = (stop.clone(), target.clone());
                tokio::spawn(async move {
                    let copied = async {
                        match &*target {
                            Target::Unix(path) => {
                                let mut server = UnixStream::connect(path).await?;
                                tokio::io::copy_bidirectional(&mut client, &mut server).await
                            }
                            Target::Tcp(addr) => {
                                let mut server = TcpStream::connect(addr).await?;
                                tokio::io::copy_bidirectional(&mut client, &mut server).await
                            }
                        }
                    };
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = copied => {}
                    }
                });
            }
        });
        self.running = Some(running);
    }

    /// Drops every connection and closes the listener.
    fn cut(&mut self) {
        if let Some(running) = self.running.take() {
            running.cancel();
        }
    }

    async fn restore(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    /// `database` reached through the proxy.
    fn options(&self, database: &PgConnectOptions) -> PgConnectOptions {
        let mut options = PgConnectOptions::new_without_pgpass()
            .host("127.0.0.1")
            .port(self.addr.port())
            .username(database.get_username())
            .database(database.get_database().expect("a database name"));
        if let Some(password) = std::env::var("DATABASE_URL")
            .ok()
            .and_then(|url| url::Url::parse(&url).ok())
            .and_then(|url| url.password().map(str::to_owned))
        {
            options = options.password(&password);
        }
        options
    }
}

/// An artifact server whose first answer waits until released.
struct HeldArtifact {
    url: String,
    requested: Arc<Notify>,
    release: Arc<Notify>,
    requests: Arc<AtomicUsize>,
}

impl HeldArtifact {
    async fn start(body: Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/held.tar.gz", listener.local_addr().unwrap());
        let (requested, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let (r1, r2, count) = (requested.clone(), release.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (requested, release, body) = (r1.clone(), r2.clone(), body.clone());
                let n = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if crate::harness::read_http_request(&mut socket)
                        .await
                        .is_none()
                    {
                        return;
                    }
                    if n == 0 {
                        requested.notify_one();
                        release.notified().await;
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(&body).await;
                });
            }
        });
        HeldArtifact {
            url,
            requested,
            release,
            requests,
        }
    }
}

/// A job whose database went away mid-run (PostgreSQL restarted) failed for good with
/// "database unavailable", although nothing was wrong with it: the step's database error was
/// taken for the job's. It must go back to the queue and complete once the database is back.
#[tokio::test]
async fn an_installation_interrupted_by_a_database_outage_completes_afterwards() {
    // A server without workers owns the database; its replica, which runs the jobs, reaches the
    // database through a proxy that can be cut.
    let mut owner = TestServer::start_with(|c| c.griot_workers = 0).await;
    let mut proxy = Proxy::start(&owner.database).await;
    owner.database = proxy.options(&owner.database);
    let server = owner.replica(|_| {}).await;
    let admin = server.admin_token.expose().to_owned();
    let mut client = GriotServiceClient::new(server.channel.clone());

    let artifact = {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, "run.sh", &b"ok\n"[..])
            .unwrap();
        builder.into_inner().unwrap().finish().unwrap()
    };
    let package_id = quintet::blobs::Sha256::of(&artifact).to_hex();
    let held = HeldArtifact::start(artifact).await;
    let author = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
    let did = DidKey::from_public_key(author.public_key().as_ref().try_into().unwrap());
    let manifest = serde_json::json!({
        "name": "outage", "node_class": "sensor", "version": "1.0.0", "author": did.as_str(),
        "artifact_sha256": package_id,
    });
    let signature = encode_signature(author.sign(&signing_bytes(&manifest).unwrap()).as_ref());
    let header = griot_pb::RegisterPackageRequest {
        part: Some(griot_pb::register_package_request::Part::Header(
            griot_pb::PackageHeader {
                manifest_json: manifest.to_string(),
                signature,
                package_id: package_id.clone(),
                artifact_url: held.url.clone(),
            },
        )),
    };
    client
        .register_package(authed(tokio_stream::iter(vec![header]), &admin))
        .await
        .unwrap();
    let job = client
        .create_installation(authed(
            griot_pb::CreateInstallationRequest {
                package_id: package_id.clone(),
                target_node_id: "node-1".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .installation
        .unwrap()
        .job_id;

    // The job is fetching; the database goes away; the fetch ends while it is away, for longer
    // than the pool waits for a connection (5 s), so the job's next step gets UNAVAILABLE.
    tokio::time::timeout(Duration::from_secs(30), held.requested.notified())
        .await
        .expect("the job fetches its artifact");
    proxy.cut();
    held.release.notify_one();
    tokio::time::sleep(Duration::from_secs(7)).await;
    proxy.restore().await;

    let mut installation = griot_pb::Installation::default();
    for _ in 0..600 {
        installation = client
            .get_installation(authed(
                griot_pb::GetInstallationRequest {
                    job_id: job.clone(),
                    include_logs: true,
                },
                &admin,
            ))
            .await
            .unwrap()
            .into_inner()
            .installation
            .unwrap();
        if !matches!(
            installation.status(),
            griot_pb::InstallationStatus::Pending | griot_pb::InstallationStatus::Running
        ) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        installation.status(),
        griot_pb::InstallationStatus::Completed,
        "{:?}",
        installation.logs
    );
    assert!(
        installation
            .logs
            .iter()
            .any(|l| l.contains("goes back to the queue")),
        "the interrupted attempt says why it stopped: {:?}",
        installation.logs
    );
    assert!(installation.attempts >= 2);
    assert!(held.requests.load(Ordering::SeqCst) >= 2);
    let installed = client
        .list_node_packages(authed(
            griot_pb::ListNodePackagesRequest {
                target_node_id: "node-1".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .packages;
    assert_eq!(installed.len(), 1);
    assert_eq!(installed[0].package_id, package_id);
}
