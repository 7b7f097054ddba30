//! The registry through its real gRPC client: sign-in against a fake identity provider, scoped
//! tokens, publishing, versions, renames, downloads, stars, listing and search, owners,
//! featured packages, deletion and the event stream.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use quintet::proto::quintet::registry::v1::{
    self as pb, registry_service_client::RegistryServiceClient,
};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;
use tonic::{Code, Status, transport::Channel};

use crate::harness::{TestServer, authed, field_of};

/// A GitHub-compatible identity provider on loopback: `GET /user` with a known bearer token
/// answers that user; anything else is 401. Counts the calls it gets.
#[derive(Clone, Default)]
pub struct FakeIdentity {
    users: Arc<Mutex<HashMap<String, (String, String)>>>,
    pub calls: Arc<AtomicUsize>,
}

impl FakeIdentity {
    pub async fn start() -> (Self, String) {
        let identity = FakeIdentity::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let served = identity.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let identity = served.clone();
                tokio::spawn(async move {
                    let Some((head, _)) = crate::harness::read_http_request(&mut socket).await
                    else {
                        return;
                    };
                    identity.calls.fetch_add(1, Ordering::SeqCst);
                    let token = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("authorization")
                                .then(|| v.trim().trim_start_matches("Bearer ").to_owned())
                        })
                        .unwrap_or_default();
                    let user = identity.users.lock().unwrap().get(&token).cloned();
                    let (status, body) = match (head.starts_with("GET /user "), user) {
                        (true, Some((login, node_id))) => (
                            "200 OK",
                            serde_json::json!({"login": login, "avatar_url": format!("https://avatars.example/{login}"), "node_id": node_id}).to_string(),
                        ),
                        _ => ("401 Unauthorized", r#"{"message":"Bad credentials"}"#.to_owned()),
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        (identity, url)
    }

    /// Registers an OAuth token for `login` and returns it.
    pub fn user(&self, login: &str) -> String {
        self.account(login, &format!("NODE_{login}"))
    }

    /// Registers an OAuth token for the account `node_id`, now called `login`.
    pub fn account(&self, login: &str, node_id: &str) -> String {
        let token = format!("gho_{}", uuid::Uuid::new_v4().simple());
        self.users
            .lock()
            .unwrap()
            .insert(token.clone(), (login.to_owned(), node_id.to_owned()));
        token
    }
}

pub struct Registry {
    pub server: TestServer,
    pub identity: FakeIdentity,
}

impl Registry {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut quintet::config::Config)) -> Self {
        let (identity, url) = FakeIdentity::start().await;
        let server = TestServer::start_with(|c| {
            c.registry_identity_url = url;
            adjust(c);
        })
        .await;
        Registry { server, identity }
    }

    pub fn client(&self) -> RegistryServiceClient<Channel> {
        RegistryServiceClient::new(self.server.channel.clone())
    }

    pub fn admin(&self) -> String {
        self.server.admin_token.expose().to_owned()
    }

    pub async fn sign_in(&self, login: &str) -> String {
        let token = self.identity.user(login);
        self.client()
            .sign_in(authed(pb::SignInRequest {}, &token))
            .await
            .unwrap();
        token
    }
}

/// A gzip-looking tarball with `body` in it.
pub fn tarball(body: &str) -> Vec<u8> {
    let mut bytes = vec![0x1f, 0x8b, 0x08, 0x00];
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

pub fn manifest(name: &str, version: &str) -> String {
    serde_json::json!({
        "name": name, "version": version, "description": format!("{name} does things"),
        "keywords": ["editor"], "license": "MIT", "repository": format!("https://github.com/example/{name}"),
        "engines": {"atom": ">=1.0.0 <2.0.0"},
    })
    .to_string()
}

fn publish_messages(
    manifest: String,
    readme: &str,
    tarball: &[u8],
    chunk: usize,
) -> Vec<pb::PublishPackageRequest> {
    use pb::publish_package_request::Part;
    let mut messages = vec![pb::PublishPackageRequest {
        part: Some(Part::Header(pb::PublishHeader {
            manifest_json: manifest,
            readme: readme.to_owned(),
            tarball_sha256: String::new(),
        })),
    }];
    messages.extend(
        tarball
            .chunks(chunk.max(1))
            .map(|c| pb::PublishPackageRequest {
                part: Some(Part::Chunk(c.to_vec().into())),
            }),
    );
    messages
}

pub async fn publish(
    mut client: RegistryServiceClient<Channel>,
    token: &str,
    manifest: String,
    tarball: &[u8],
) -> Result<pb::PublishPackageResponse, Status> {
    let messages = publish_messages(manifest, "# readme", tarball, 7);
    client
        .publish_package(authed(tokio_stream::iter(messages), token))
        .await
        .map(|r| r.into_inner())
}

pub async fn publish_version(
    mut client: RegistryServiceClient<Channel>,
    token: &str,
    package: &str,
    manifest: String,
    tarball: &[u8],
) -> Result<pb::PublishVersionResponse, Status> {
    use pb::publish_version_request::Part;
    let mut messages = vec![pb::PublishVersionRequest {
        part: Some(Part::Header(pb::PublishVersionHeader {
            package_name: package.to_owned(),
            publish: Some(pb::PublishHeader {
                manifest_json: manifest,
                readme: "# readme v2".to_owned(),
                tarball_sha256: String::new(),
            }),
        })),
    }];
    messages.push(pb::PublishVersionRequest {
        part: Some(Part::Chunk(tarball.to_vec().into())),
    });
    client
        .publish_version(authed(tokio_stream::iter(messages), token))
        .await
        .map(|r| r.into_inner())
}

pub async fn download(
    mut client: RegistryServiceClient<Channel>,
    package: &str,
    version: &str,
) -> Result<(pb::Version, Vec<u8>), Status> {
    use pb::download_version_response::Part;
    let mut stream = client
        .download_version(pb::DownloadVersionRequest {
            package_name: package.to_owned(),
            version: version.to_owned(),
        })
        .await?
        .into_inner();
    let Some(Part::Version(meta)) = stream.next().await.unwrap()?.part else {
        panic!("the first message is the version");
    };
    let mut bytes = Vec::new();
    while let Some(message) = stream.next().await {
        match message?.part {
            Some(Part::Chunk(chunk)) => bytes.extend_from_slice(&chunk),
            other => panic!("unexpected {other:?}"),
        }
    }
    Ok((meta, bytes))
}

async fn get(registry: &Registry, name: &str) -> Result<pb::Package, Status> {
    Ok(registry
        .client()
        .get_package(pb::GetPackageRequest {
            name: name.to_owned(),
        })
        .await?
        .into_inner()
        .package
        .unwrap())
}

#[tokio::test]
async fn sign_in_creates_the_user_once_then_matches_by_digest() {
    let registry = Registry::start().await;
    let token = registry.identity.user("octocat");
    let mut client = registry.client();
    let user = client
        .sign_in(authed(pb::SignInRequest {}, &token))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.username, "octocat");
    assert_eq!(user.avatar_url, "https://avatars.example/octocat");
    assert_eq!(registry.identity.calls.load(Ordering::SeqCst), 1);
    let again = client
        .sign_in(authed(pb::SignInRequest {}, &token))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(again.id, user.id);
    assert_eq!(
        registry.identity.calls.load(Ordering::SeqCst),
        1,
        "a known token needs no call"
    );

    let refused = client
        .sign_in(authed(pb::SignInRequest {}, "gho_unknown"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let missing = client.sign_in(pb::SignInRequest {}).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    // The OAuth token is stored only as a digest.
    let stored: Vec<String> = sqlx::query_scalar("SELECT token FROM registry.users")
        .fetch_all(
            &quintet::db::connect(registry.server.database.clone(), 1)
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(stored.iter().all(|t| t.len() == 64 && !t.contains(&token)));
}

#[tokio::test]
async fn an_unreachable_identity_provider_is_unavailable() {
    let registry =
        Registry::start_with(|c| c.registry_identity_url = "http://127.0.0.1:1".to_owned()).await;
    let error = registry
        .client()
        .sign_in(authed(pb::SignInRequest {}, "gho_x"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
}

#[tokio::test]
async fn publish_then_read_back_by_every_route() {
    let registry = Registry::start().await;
    let token = registry.sign_in("alice").await;
    let bytes = tarball("minimap 1.0.0");
    let published = publish(
        registry.client(),
        &token,
        manifest("minimap", "1.0.0"),
        &bytes,
    )
    .await
    .unwrap();
    let version = published.version.unwrap();
    assert_eq!(
        version.tarball_sha256,
        quintet::blobs::Sha256::of(&bytes).to_hex()
    );
    assert_eq!(version.status, "latest");
    assert_eq!(version.tarball_size, bytes.len() as i64);

    let package = get(&registry, "minimap").await.unwrap();
    assert_eq!(package.latest_version, "1.0.0");
    assert_eq!(package.owners, vec!["alice"]);
    assert_eq!(package.readme, "# readme");
    assert_eq!(package.versions.len(), 1);
    assert_eq!(package.description, "minimap does things");
    assert_eq!(package.repository, "https://github.com/example/minimap");

    let got = registry
        .client()
        .get_version(pb::GetVersionRequest {
            package_name: "minimap".into(),
            version: "1.0.0".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert_eq!(got.license, "MIT");
    assert!(got.engines_json.contains(">=1.0.0 <2.0.0"));
    let (meta, downloaded) = download(registry.client(), "minimap", "").await.unwrap();
    assert_eq!(meta.version, "1.0.0");
    assert_eq!(downloaded, bytes);
    assert_eq!(get(&registry, "minimap").await.unwrap().downloads, 1);

    let missing = get(&registry, "nothing-here").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let invalid = get(&registry, "Not A Name").await.unwrap_err();
    assert_eq!(
        (invalid.code(), field_of(&invalid).as_str()),
        (Code::InvalidArgument, "name")
    );

    let check = |name: &'static str| {
        let mut client = registry.client();
        async move {
            client
                .check_name_availability(pb::CheckNameAvailabilityRequest { name: name.into() })
                .await
                .unwrap()
                .into_inner()
        }
    };
    assert_eq!(check("minimap").await.reason, "TAKEN");
    assert_eq!(check("atom").await.reason, "BANNED");
    assert_eq!(check("UPPER").await.reason, "INVALID");
    assert!(check("fresh-name").await.available);
}

#[tokio::test]
async fn bad_publishes_name_their_field_and_store_nothing() {
    let registry = Registry::start_with(|c| c.registry_max_tarball_bytes = 1024).await;
    let token = registry.sign_in("alice").await;
    let ok = tarball("x");
    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        (
            manifest("Bad_Name", "1.0.0"),
            ok.clone(),
            "header.manifest_json.name",
        ),
        (
            manifest("atom", "1.0.0"),
            ok.clone(),
            "header.manifest_json.name",
        ),
        (
            manifest("good", "1.0"),
            ok.clone(),
            "header.manifest_json.version",
        ),
        (
            format!(
                r#"{{"name":"good","version":"1.0.0","x":"{}"}}"#,
                "a".repeat(300_000)
            ),
            ok.clone(),
            "header.manifest_json",
        ),
        ("not json".to_owned(), ok.clone(), "header.manifest_json"),
        (manifest("good", "1.0.0"), Vec::new(), "chunk"),
        (
            manifest("good", "1.0.0"),
            b"plain text, not gzip".to_vec(),
            "chunk",
        ),
        (
            manifest("good", "1.0.0"),
            tarball(&"z".repeat(2000)),
            "chunk",
        ),
    ];
    for (manifest, bytes, field) in cases {
        let error = publish(registry.client(), &token, manifest.clone(), &bytes)
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{field}: {error:?}");
        assert_eq!(field_of(&error), field, "{error:?}");
    }
    // A chunk first, a second header, a wrong digest.
    use pb::publish_package_request::Part;
    let chunk_first = vec![pb::PublishPackageRequest {
        part: Some(Part::Chunk(ok.clone().into())),
    }];
    let error = registry
        .client()
        .publish_package(authed(tokio_stream::iter(chunk_first), &token))
        .await
        .unwrap_err();
    assert_eq!(field_of(&error), "header");
    let mut twice = publish_messages(manifest("good", "1.0.0"), "", &ok, 100);
    twice.push(twice[0].clone());
    let error = registry
        .client()
        .publish_package(authed(tokio_stream::iter(twice), &token))
        .await
        .unwrap_err();
    assert_eq!(field_of(&error), "chunk");
    let mut wrong_digest = publish_messages(manifest("good", "1.0.0"), "", &ok, 100);
    if let Some(Part::Header(h)) = &mut wrong_digest[0].part {
        h.tarball_sha256 = "0".repeat(64);
    }
    let error = registry
        .client()
        .publish_package(authed(tokio_stream::iter(wrong_digest), &token))
        .await
        .unwrap_err();
    assert_eq!(field_of(&error), "header.tarball_sha256");
    // No token at all.
    let error = registry
        .client()
        .publish_package(tokio_stream::iter(publish_messages(
            manifest("good", "1.0.0"),
            "",
            &ok,
            100,
        )))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
    // Nothing was created along the way.
    assert_eq!(
        get(&registry, "good").await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn an_interrupted_upload_leaves_no_package() {
    let registry = Registry::start().await;
    let token = registry.sign_in("alice").await;
    use pb::publish_package_request::Part;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut client = registry.client();
    let call = tokio::spawn(async move {
        client
            .publish_package(authed(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                &token,
            ))
            .await
    });
    tx.send(publish_messages(manifest("cut-off", "1.0.0"), "", b"", 1)[0].clone())
        .await
        .unwrap();
    tx.send(pb::PublishPackageRequest {
        part: Some(Part::Chunk(tarball("partial").into())),
    })
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    call.abort();
    drop(tx);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        get(&registry, "cut-off").await.unwrap_err().code(),
        Code::NotFound
    );
    let available = registry
        .client()
        .check_name_availability(pb::CheckNameAvailabilityRequest {
            name: "cut-off".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(available.available);
}

#[tokio::test]
async fn versions_move_latest_and_numbers_are_never_reused() {
    let registry = Registry::start().await;
    let alice = registry.sign_in("alice").await;
    let bob = registry.sign_in("bob").await;
    publish(
        registry.client(),
        &alice,
        manifest("linter", "1.0.0"),
        &tarball("1.0.0"),
    )
    .await
    .unwrap();
    publish_version(
        registry.client(),
        &alice,
        "linter",
        manifest("linter", "1.1.0"),
        &tarball("1.1.0"),
    )
    .await
    .unwrap();
    let beta = publish_version(
        registry.client(),
        &alice,
        "linter",
        manifest("linter", "2.0.0-beta.1"),
        &tarball("beta"),
    )
    .await
    .unwrap();
    assert_eq!(
        beta.package.unwrap().latest_version,
        "1.1.0",
        "pre-releases do not become latest"
    );
    // A backport below the latest is fine; the same number twice is not.
    publish_version(
        registry.client(),
        &alice,
        "linter",
        manifest("linter", "1.0.1"),
        &tarball("1.0.1"),
    )
    .await
    .unwrap();
    let again = publish_version(
        registry.client(),
        &alice,
        "linter",
        manifest("linter", "1.1.0"),
        &tarball("other"),
    )
    .await
    .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    let stranger = publish_version(
        registry.client(),
        &bob,
        "linter",
        manifest("linter", "3.0.0"),
        &tarball("3"),
    )
    .await
    .unwrap_err();
    assert_eq!(stranger.code(), Code::PermissionDenied);

    let yank = |version: &'static str, token: String| {
        let mut client = registry.client();
        async move {
            client
                .yank_version(authed(
                    pb::YankVersionRequest {
                        package_name: "linter".into(),
                        version: version.into(),
                    },
                    &token,
                ))
                .await
        }
    };
    assert_eq!(
        yank("1.1.0", bob.clone()).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let yanked = yank("1.1.0", alice.clone())
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert!(yanked.yanked);
    assert_eq!(
        get(&registry, "linter").await.unwrap().latest_version,
        "1.0.1"
    );
    // Still downloadable by exact version.
    let (_, bytes) = download(registry.client(), "linter", "1.1.0")
        .await
        .unwrap();
    assert_eq!(bytes, tarball("1.1.0"));
    registry
        .client()
        .unyank_version(authed(
            pb::UnyankVersionRequest {
                package_name: "linter".into(),
                version: "1.1.0".into(),
            },
            &alice,
        ))
        .await
        .unwrap();
    assert_eq!(
        get(&registry, "linter").await.unwrap().latest_version,
        "1.1.0"
    );

    registry
        .client()
        .delete_version(authed(
            pb::DeleteVersionRequest {
                package_name: "linter".into(),
                version: "1.1.0".into(),
            },
            &alice,
        ))
        .await
        .unwrap();
    assert_eq!(
        get(&registry, "linter").await.unwrap().latest_version,
        "1.0.1"
    );
    assert_eq!(
        download(registry.client(), "linter", "1.1.0")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let reuse = publish_version(
        registry.client(),
        &alice,
        "linter",
        manifest("linter", "1.1.0"),
        &tarball("again"),
    )
    .await
    .unwrap_err();
    assert_eq!(
        reuse.code(),
        Code::AlreadyExists,
        "a deleted number stays used"
    );

    let page1 = registry
        .client()
        .list_versions(pb::ListVersionsRequest {
            package_name: "linter".into(),
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let versions: Vec<_> = page1.versions.iter().map(|v| v.version.as_str()).collect();
    assert_eq!(versions, ["2.0.0-beta.1", "1.1.0"]);
    let page2 = registry
        .client()
        .list_versions(pb::ListVersionsRequest {
            package_name: "linter".into(),
            page_size: 2,
            page_token: page1.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    let versions: Vec<_> = page2.versions.iter().map(|v| v.version.as_str()).collect();
    assert_eq!(versions, ["1.0.1", "1.0.0"]);
    assert!(page2.next_page_token.is_empty());

    let bad = registry
        .client()
        .get_version(pb::GetVersionRequest {
            package_name: "linter".into(),
            version: "one".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (bad.code(), field_of(&bad).as_str()),
        (Code::InvalidArgument, "version")
    );
}

#[tokio::test]
async fn renames_keep_every_old_name_resolving() {
    let registry = Registry::start().await;
    let alice = registry.sign_in("alice").await;
    publish(
        registry.client(),
        &alice,
        manifest("old-name", "1.0.0"),
        &tarball("1"),
    )
    .await
    .unwrap();
    let renamed = publish_version(
        registry.client(),
        &alice,
        "old-name",
        manifest("new-name", "1.1.0"),
        &tarball("2"),
    )
    .await
    .unwrap();
    let package = renamed.package.unwrap();
    assert_eq!(package.name, "new-name");
    assert_eq!(package.names, vec!["new-name", "old-name"]);
    for name in ["old-name", "new-name"] {
        assert_eq!(get(&registry, name).await.unwrap().name, "new-name");
    }
    // Someone else cannot take the old name, nor rename onto another package's name.
    let bob = registry.sign_in("bob").await;
    let taken = publish(
        registry.client(),
        &bob,
        manifest("old-name", "1.0.0"),
        &tarball("b"),
    )
    .await
    .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
    publish(
        registry.client(),
        &bob,
        manifest("bobs", "1.0.0"),
        &tarball("b"),
    )
    .await
    .unwrap();
    let onto = publish_version(
        registry.client(),
        &alice,
        "new-name",
        manifest("bobs", "2.0.0"),
        &tarball("3"),
    )
    .await
    .unwrap_err();
    assert_eq!(onto.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn concurrent_downloads_and_stars_keep_exact_counts() {
    let registry = Registry::start().await;
    let alice = registry.sign_in("alice").await;
    publish(
        registry.client(),
        &alice,
        manifest("popular", "1.0.0"),
        &tarball("p"),
    )
    .await
    .unwrap();
    let downloads: Vec<_> = (0..20)
        .map(|_| {
            let client = registry.client();
            tokio::spawn(async move { download(client, "popular", "1.0.0").await.unwrap() })
        })
        .collect();
    for d in downloads {
        d.await.unwrap();
    }
    let package = get(&registry, "popular").await.unwrap();
    assert_eq!(package.downloads, 20);
    assert_eq!(package.versions[0].downloads, 20);

    let mut tokens = Vec::new();
    for i in 0..8 {
        tokens.push(registry.sign_in(&format!("fan{i}")).await);
    }
    let stars: Vec<_> = tokens
        .iter()
        .flat_map(|t| [t.clone(), t.clone()]) // each fan stars twice, concurrently
        .map(|token| {
            let mut client = registry.client();
            tokio::spawn(async move {
                client
                    .star_package(authed(
                        pb::StarPackageRequest {
                            package_name: "popular".into(),
                        },
                        &token,
                    ))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for s in stars {
        s.await.unwrap();
    }
    assert_eq!(get(&registry, "popular").await.unwrap().stargazers_count, 8);
    let after = registry
        .client()
        .unstar_package(authed(
            pb::UnstarPackageRequest {
                package_name: "popular".into(),
            },
            &tokens[0],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.stargazers_count, 7);
    let again = registry
        .client()
        .unstar_package(authed(
            pb::UnstarPackageRequest {
                package_name: "popular".into(),
            },
            &tokens[0],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.stargazers_count, 7, "unstar is idempotent");

    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = registry
            .client()
            .list_stargazers(pb::ListStargazersRequest {
                package_name: "popular".into(),
                page_size: 3,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.users.into_iter().map(|u| u.username));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    seen.sort();
    assert_eq!(seen, (1..8).map(|i| format!("fan{i}")).collect::<Vec<_>>());
    let stars = registry
        .client()
        .list_user_stars(pb::ListUserStarsRequest {
            username: "fan3".into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stars.packages[0].name, "popular");
}

#[tokio::test]
async fn two_publishes_of_one_new_version_one_wins() {
    let registry = Registry::start().await;
    let alice = registry.sign_in("alice").await;
    publish(
        registry.client(),
        &alice,
        manifest("racy", "1.0.0"),
        &tarball("r"),
    )
    .await
    .unwrap();
    let attempts: Vec<_> = (0..2)
        .map(|i| {
            let client = registry.client();
            let token = alice.clone();
            tokio::spawn(async move {
                publish_version(
                    client,
                    &token,
                    "racy",
                    manifest("racy", "2.0.0"),
                    &tarball(&format!("r{i}")),
                )
                .await
            })
        })
        .collect();
    let mut codes = Vec::new();
    for a in attempts {
        codes.push(
            a.await
                .unwrap()
                .map(|_| Code::Ok)
                .unwrap_or_else(|e| e.code()),
        );
    }
    codes.sort_by_key(|c| *c as i32);
    assert_eq!(codes, [Code::Ok, Code::AlreadyExists]);
    // Two first publishes of one name: one wins too.
    let firsts: Vec<_> = (0..2)
        .map(|i| {
            let client = registry.client();
            let token = alice.clone();
            tokio::spawn(async move {
                publish(
                    client,
                    &token,
                    manifest("brand-new", "1.0.0"),
                    &tarball(&format!("{i}")),
                )
                .await
            })
        })
        .collect();
    let mut ok = 0;
    for f in firsts {
        match f.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), Code::AlreadyExists),
        }
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn scoped_tokens_do_only_what_they_say() {
    let registry = Registry::start().await;
    let admin = registry.admin();
    let mut client = registry.client();
    let user = client
        .create_user(authed(
            pb::CreateUserRequest {
                username: "carol".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.username, "carol");
    let duplicate = client
        .create_user(authed(
            pb::CreateUserRequest {
                username: "carol".into(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    let new_token =
        |scopes: Vec<pb::TokenScope>,
         packages: Vec<&str>,
         expire: Option<prost_types::Timestamp>| pb::CreateApiTokenRequest {
            username: "carol".into(),
            name: "ci".into(),
            scopes: scopes.into_iter().map(|s| s as i32).collect(),
            packages: packages.into_iter().map(str::to_owned).collect(),
            expire_time: expire,
        };
    let publisher = client
        .create_api_token(authed(
            new_token(
                vec![pb::TokenScope::PublishNew, pb::TokenScope::PublishUpdate],
                vec![],
                None,
            ),
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(publisher.token.starts_with("qreg_"));
    let star_only = client
        .create_api_token(authed(
            new_token(vec![pb::TokenScope::Star], vec![], None),
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .token;

    publish(
        registry.client(),
        &publisher.token,
        manifest("carols", "1.0.0"),
        &tarball("c"),
    )
    .await
    .unwrap();
    let denied = publish(
        registry.client(),
        &star_only,
        manifest("other", "1.0.0"),
        &tarball("o"),
    )
    .await
    .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let no_yank = client
        .yank_version(authed(
            pb::YankVersionRequest {
                package_name: "carols".into(),
                version: "1.0.0".into(),
            },
            &publisher.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(no_yank.code(), Code::PermissionDenied);

    // A token limited to one package.
    let limited = client
        .create_api_token(authed(
            new_token(vec![pb::TokenScope::PublishNew], vec!["only-this"], None),
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    assert_eq!(
        publish(
            registry.client(),
            &limited,
            manifest("not-this", "1.0.0"),
            &tarball("n")
        )
        .await
        .unwrap_err()
        .code(),
        Code::PermissionDenied
    );
    publish(
        registry.client(),
        &limited,
        manifest("only-this", "1.0.0"),
        &tarball("y"),
    )
    .await
    .unwrap();

    // Expiry in the past is refused; an expired token stops working.
    let past = prost_types::Timestamp {
        seconds: 1,
        nanos: 0,
    };
    let refused = client
        .create_api_token(authed(
            new_token(vec![pb::TokenScope::Star], vec![], Some(past)),
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(field_of(&refused), "expire_time");
    let soon = prost_types::Timestamp {
        seconds: time::OffsetDateTime::now_utc().unix_timestamp() + 1,
        nanos: 0,
    };
    let expiring = client
        .create_api_token(authed(
            new_token(vec![pb::TokenScope::Star], vec![], Some(soon)),
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let expired = client
        .star_package(authed(
            pb::StarPackageRequest {
                package_name: "carols".into(),
            },
            &expiring,
        ))
        .await
        .unwrap_err();
    assert_eq!(expired.code(), Code::Unauthenticated);

    // Users make their own tokens with their sign-in, not with another API token; others' are off limits.
    let dave = registry.sign_in("dave").await;
    let own = client
        .create_api_token(authed(
            pb::CreateApiTokenRequest {
                name: "mine".into(),
                scopes: vec![pb::TokenScope::Star as i32],
                ..Default::default()
            },
            &dave,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.api_token.unwrap().username, "dave");
    let via_token = client
        .create_api_token(authed(
            pb::CreateApiTokenRequest {
                name: "x".into(),
                scopes: vec![pb::TokenScope::Star as i32],
                ..Default::default()
            },
            &own.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(via_token.code(), Code::PermissionDenied);
    let for_other = client
        .create_api_token(authed(
            pb::CreateApiTokenRequest {
                username: "carol".into(),
                name: "x".into(),
                scopes: vec![pb::TokenScope::Star as i32],
                ..Default::default()
            },
            &dave,
        ))
        .await
        .unwrap_err();
    assert_eq!(for_other.code(), Code::PermissionDenied);
    let no_scope = client
        .create_api_token(authed(
            pb::CreateApiTokenRequest {
                name: "x".into(),
                ..Default::default()
            },
            &dave,
        ))
        .await
        .unwrap_err();
    assert_eq!(field_of(&no_scope), "scopes");

    // An API token cannot see or revoke its user's tokens.
    let token_lists = client
        .list_api_tokens(authed(pb::ListApiTokensRequest::default(), &own.token))
        .await
        .unwrap_err();
    assert_eq!(token_lists.code(), Code::PermissionDenied);
    let token_revokes = client
        .revoke_api_token(authed(
            pb::RevokeApiTokenRequest {
                id: uuid::Uuid::new_v4().to_string(),
            },
            &own.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(token_revokes.code(), Code::PermissionDenied);

    // Listing shows no secret; revoking stops the token; nobody else can revoke it.
    let listed = client
        .list_api_tokens(authed(pb::ListApiTokensRequest::default(), &dave))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.api_tokens.len(), 1);
    let id = listed.api_tokens[0].id.clone();
    let other = client
        .revoke_api_token(authed(
            pb::RevokeApiTokenRequest { id: id.clone() },
            &registry.sign_in("eve").await,
        ))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::NotFound);
    client
        .revoke_api_token(authed(pb::RevokeApiTokenRequest { id }, &dave))
        .await
        .unwrap();
    let revoked = client
        .star_package(authed(
            pb::StarPackageRequest {
                package_name: "carols".into(),
            },
            &own.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(revoked.code(), Code::Unauthenticated);
    let not_admin = client
        .create_user(authed(
            pb::CreateUserRequest {
                username: "mallory".into(),
            },
            &dave,
        ))
        .await
        .unwrap_err();
    assert_eq!(not_admin.code(), Code::PermissionDenied);
}

async fn names(page: &[pb::Package]) -> Vec<String> {
    page.iter().map(|p| p.name.clone()).collect()
}

#[tokio::test]
async fn listing_and_search_sort_filter_and_page() {
    let registry = Registry::start().await;
    let alice = registry.sign_in("alice").await;
    let bob = registry.sign_in("bob").await;
    for (name, who, desc) in [
        ("minimap", &alice, "A preview of the full source code"),
        (
            "minimap-autohider",
            &alice,
            "Hides the minimap when not hovering",
        ),
        ("git-plus", &bob, "Do git things without the terminal"),
        (
            "file-icons",
            &bob,
            "Assign file extension icons and colours",
        ),
    ] {
        let m = serde_json::json!({"name": name, "version": "1.0.0", "description": desc, "engines": {"atom": ">=1.0.0 <2.0.0"}}).to_string();
        publish(registry.client(), who, m, &tarball(name))
            .await
            .unwrap();
    }
    let theme = serde_json::json!({"name": "one-dark-ui", "version": "1.0.0", "theme": "ui", "description": "dark", "engines": {"atom": ">=2.0.0"}}).to_string();
    publish(registry.client(), &alice, theme, &tarball("theme"))
        .await
        .unwrap();
    for _ in 0..3 {
        download(registry.client(), "git-plus", "").await.unwrap();
    }
    download(registry.client(), "minimap-autohider", "")
        .await
        .unwrap();

    let list = |request: pb::ListPackagesRequest| {
        let mut client = registry.client();
        async move { client.list_packages(request).await.map(|r| r.into_inner()) }
    };
    let first = list(pb::ListPackagesRequest {
        page_size: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        names(&first.packages).await[..2],
        ["git-plus", "minimap-autohider"]
    );
    // A package whose downloads change while we page may move across the cursor (keyset
    // pagination's nature), but no package is ever returned twice and none whose sort key
    // stayed put is skipped.
    download(registry.client(), "file-icons", "").await.unwrap();
    let mut all = names(&first.packages).await;
    let mut token = first.next_page_token.clone();
    while !token.is_empty() {
        let page = list(pb::ListPackagesRequest {
            page_size: 2,
            page_token: token,
            ..Default::default()
        })
        .await
        .unwrap();
        all.extend(names(&page.packages).await);
        token = page.next_page_token;
    }
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), all.len(), "no duplicates: {all:?}");
    for stayed in ["git-plus", "minimap", "minimap-autohider", "one-dark-ui"] {
        assert!(
            all.iter().any(|n| n == stayed),
            "{stayed} missing from {all:?}"
        );
    }

    let forged = list(pb::ListPackagesRequest {
        page_token: "bm90IGEgdG9rZW4".into(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(
        (forged.code(), field_of(&forged).as_str()),
        (Code::InvalidArgument, "page_token")
    );
    let other_query = list(pb::ListPackagesRequest {
        page_size: 2,
        sort_by: pb::SortBy::Stars as i32,
        page_token: first.next_page_token,
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(field_of(&other_query), "page_token");
    let bad_size = list(pb::ListPackagesRequest {
        page_size: 1000,
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(field_of(&bad_size), "page_size");

    let themes = list(pb::ListPackagesRequest {
        filter: Some(pb::PackageFilter {
            r#type: pb::PackageType::Theme as i32,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(names(&themes.packages).await, ["one-dark-ui"]);
    let bobs = list(pb::ListPackagesRequest {
        sort_by: pb::SortBy::Created as i32,
        direction: pb::Direction::Ascending as i32,
        filter: Some(pb::PackageFilter {
            owner: "bob".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(names(&bobs.packages).await, ["git-plus", "file-icons"]);
    let for_editor_2 = list(pb::ListPackagesRequest {
        filter: Some(pb::PackageFilter {
            engine_version: "2.1.0".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(names(&for_editor_2.packages).await, ["one-dark-ui"]);
    let bad_engine = list(pb::ListPackagesRequest {
        filter: Some(pb::PackageFilter {
            engine_version: "two".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(field_of(&bad_engine), "filter.engine_version");

    let search = |query: &str| {
        let mut client = registry.client();
        let query = query.to_owned();
        async move {
            client
                .search_packages(pb::SearchPackagesRequest {
                    query,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    let found = search("minimap").await.unwrap();
    assert_eq!(
        names(&found.packages).await,
        ["minimap", "minimap-autohider"],
        "exact name first"
    );
    let words = search("terminal git").await.unwrap();
    assert_eq!(names(&words.packages).await, ["git-plus"]);
    let stemmed = search("colour icon").await.unwrap();
    assert_eq!(names(&stemmed.packages).await, ["file-icons"]);
    assert!(search("zzzzzz").await.unwrap().packages.is_empty());
    assert_eq!(field_of(&search("   ").await.unwrap_err()), "query");
    let paged = registry
        .client()
        .search_packages(pb::SearchPackagesRequest {
            query: "minimap".into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let rest = registry
        .client()
        .search_packages(pb::SearchPackagesRequest {
            query: "minimap".into(),
            page_size: 1,
            page_token: paged.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&rest.packages).await, ["minimap-autohider"]);
}

#[tokio::test]
async fn owners_featured_and_deletion() {
    let registry = Registry::start().await;
    let alice = registry.sign_in("alice").await;
    let bob = registry.sign_in("bob").await;
    publish(
        registry.client(),
        &alice,
        manifest("shared", "1.0.0"),
        &tarball("s"),
    )
    .await
    .unwrap();
    let mut client = registry.client();
    let refused = client
        .add_owner(authed(
            pb::AddOwnerRequest {
                package_name: "shared".into(),
                username: "bob".into(),
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let owners = client
        .add_owner(authed(
            pb::AddOwnerRequest {
                package_name: "shared".into(),
                username: "bob".into(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner()
        .owners;
    assert_eq!(owners, ["alice", "bob"]);
    publish_version(
        registry.client(),
        &bob,
        "shared",
        manifest("shared", "1.1.0"),
        &tarball("s2"),
    )
    .await
    .unwrap();
    client
        .remove_owner(authed(
            pb::RemoveOwnerRequest {
                package_name: "shared".into(),
                username: "alice".into(),
            },
            &bob,
        ))
        .await
        .unwrap();
    let last = client
        .remove_owner(authed(
            pb::RemoveOwnerRequest {
                package_name: "shared".into(),
                username: "bob".into(),
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(last.code(), Code::FailedPrecondition);
    let listed = client
        .list_owners(pb::ListOwnersRequest {
            package_name: "shared".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .owners;
    assert_eq!(
        listed
            .iter()
            .map(|u| u.username.as_str())
            .collect::<Vec<_>>(),
        ["bob"]
    );

    let not_admin = client
        .add_featured(authed(
            pb::AddFeaturedRequest {
                package_name: "shared".into(),
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(not_admin.code(), Code::PermissionDenied);
    client
        .add_featured(authed(
            pb::AddFeaturedRequest {
                package_name: "shared".into(),
            },
            &registry.admin(),
        ))
        .await
        .unwrap();
    let featured = client
        .list_featured(pb::ListFeaturedRequest::default())
        .await
        .unwrap()
        .into_inner()
        .packages;
    assert_eq!(names(&featured).await, ["shared"]);

    let stranger = client
        .delete_package(authed(
            pb::DeletePackageRequest {
                package_name: "shared".into(),
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(stranger.code(), Code::PermissionDenied);
    client
        .delete_package(authed(
            pb::DeletePackageRequest {
                package_name: "shared".into(),
            },
            &bob,
        ))
        .await
        .unwrap();
    assert_eq!(
        get(&registry, "shared").await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(
        client
            .list_featured(pb::ListFeaturedRequest::default())
            .await
            .unwrap()
            .into_inner()
            .packages
            .is_empty()
    );
    let reserved = publish(
        registry.client(),
        &alice,
        manifest("shared", "9.0.0"),
        &tarball("again"),
    )
    .await
    .unwrap_err();
    assert_eq!(
        reserved.code(),
        Code::AlreadyExists,
        "a deleted package's name stays reserved"
    );
    let blobs = registry
        .server
        .data_dir
        .path()
        .join("blobs/registry/sha256");
    let left: usize = std::fs::read_dir(&blobs)
        .into_iter()
        .flatten()
        .flatten()
        .map(|dir| {
            std::fs::read_dir(dir.path())
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(left, 0, "its tarballs are gone");
}

#[tokio::test]
async fn events_follow_live_across_replicas_and_resume_without_gaps() {
    let registry = Registry::start().await;
    let replica = registry.server.replica(|_| {}).await;
    let alice = registry.sign_in("alice").await;
    let mut follower = RegistryServiceClient::new(replica.channel.clone())
        .watch_registry_events(pb::WatchRegistryEventsRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    publish(
        registry.client(),
        &alice,
        manifest("evented", "1.0.0"),
        &tarball("e"),
    )
    .await
    .unwrap();
    publish_version(
        registry.client(),
        &alice,
        "evented",
        manifest("evented-renamed", "1.1.0"),
        &tarball("e2"),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), follower.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(event);
    }
    let kinds: Vec<_> = seen
        .iter()
        .map(|e| (e.kind(), e.package_name.as_str(), e.version.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (pb::EventKind::Published, "evented", "1.0.0"),
            (pb::EventKind::Renamed, "evented-renamed", ""),
            (pb::EventKind::Published, "evented-renamed", "1.1.0"),
        ]
    );
    assert_eq!(seen[1].old_name, "evented");
    drop(follower);
    // Resume after the first event: the rest, once each.
    let mut resumed = registry
        .client()
        .watch_registry_events(pb::WatchRegistryEventsRequest {
            after_seq: seen[0].seq,
        })
        .await
        .unwrap()
        .into_inner();
    let next = resumed.next().await.unwrap().unwrap();
    assert_eq!(next.seq, seen[1].seq);
    let negative = registry
        .client()
        .watch_registry_events(pb::WatchRegistryEventsRequest { after_seq: -1 })
        .await
        .unwrap_err();
    assert_eq!(negative.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn garbage_collection_removes_orphan_tarballs_only() {
    let registry = Registry::start().await;
    let alice = registry.sign_in("alice").await;
    let kept = tarball("kept");
    publish(registry.client(), &alice, manifest("kept", "1.0.0"), &kept)
        .await
        .unwrap();
    // A publish refused after its upload (a version number already used) leaves its bytes behind.
    let orphan = tarball("orphan bytes");
    let refused = publish_version(
        registry.client(),
        &alice,
        "kept",
        manifest("kept", "1.0.0"),
        &orphan,
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);

    // A second process on the same database and data directory runs the collection.
    let pool = quintet::db::connect(registry.server.database.clone(), 2)
        .await
        .unwrap();
    let blobs = quintet::blobs::BlobStore::local(&registry.server.data_dir.path().join("blobs"))
        .unwrap()
        .scoped("registry");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (admin, _) = quintet::auth::AdminAuth::init(
        pool.clone(),
        Some(&registry.server.admin_token),
        registry.server.data_dir.path(),
    )
    .await
    .unwrap();
    let collector = quintet::registry::RegistryService {
        pool: pool.clone(),
        blobs: blobs.clone(),
        identity: quintet::registry::Identity::new(pool.clone(), admin, "http://127.0.0.1:1")
            .unwrap(),
        page_tokens: quintet::page_token::PageTokens::load(&pool).await.unwrap(),
        notifier: quintet::notify::Notifier::start(&pool, &[], shutdown.clone())
            .await
            .unwrap(),
        shutdown: shutdown.clone(),
        max_tarball_bytes: 1 << 20,
    };
    assert_eq!(
        collector
            .collect_garbage(std::time::Duration::from_secs(3600))
            .await
            .unwrap(),
        0,
        "young bytes are spared"
    );
    assert_eq!(
        collector
            .collect_garbage(std::time::Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    let orphan_sha = quintet::blobs::Sha256::of(&orphan);
    assert!(!blobs.exists(&orphan_sha).await.unwrap());
    let (_, bytes) = download(registry.client(), "kept", "1.0.0").await.unwrap();
    assert_eq!(bytes, kept, "referenced tarballs stay");
    shutdown.cancel();
}

#[tokio::test]
async fn accounts_renamed_at_the_provider_keep_their_identity() {
    let registry = Registry::start().await;
    let mut client = registry.client();
    // The admin made "bob" by name; "robert" signed in; then robert renames himself "bob".
    client
        .create_user(authed(
            pb::CreateUserRequest {
                username: "bob".into(),
            },
            &registry.admin(),
        ))
        .await
        .unwrap();
    let robert = registry.identity.account("robert", "NODE_R");
    let before = client
        .sign_in(authed(pb::SignInRequest {}, &robert))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let renamed = registry.identity.account("bob", "NODE_R");
    let after = client
        .sign_in(authed(pb::SignInRequest {}, &renamed))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(after.id, before.id, "the same account");
    assert_eq!(after.username, "bob");
    // A new account taking a login someone had: the login moves, the old holder is renamed away.
    let carol = registry.identity.account("carol", "NODE_C1");
    let first = client
        .sign_in(authed(pb::SignInRequest {}, &carol))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let other_carol = registry.identity.account("carol", "NODE_C2");
    let second = client
        .sign_in(authed(pb::SignInRequest {}, &other_carol))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_ne!(first.id, second.id);
    assert_eq!(second.username, "carol");
}
