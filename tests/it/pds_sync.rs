//! The PDS's sync surface through the real client: the firehose (order, replay from a cursor,
//! reconstruction of every repository from its events, outdated and future cursors), diffs since
//! a revision, GetBlocks and record proofs.

use std::collections::{BTreeMap, HashMap};

use cid::Cid;
use futures::{StreamExt, future::BoxFuture};
use quintet::{
    pds::{
        car, data,
        mst::{Mst, Node, NodeSource},
    },
    proto::{
        json_to_struct,
        quintet::pds::v1::{
            self as pb, pds_service_client::PdsServiceClient, subscribe_repos_response::Event,
        },
    },
};
use serde_json::json;
use tonic::{Code, Streaming, transport::Channel};

use crate::harness::{TestServer, authed, field_of};

fn client(server: &TestServer) -> PdsServiceClient<Channel> {
    PdsServiceClient::new(server.channel.clone()).max_decoding_message_size(64 * 1024 * 1024)
}

async fn account(server: &TestServer, name: &str) -> pb::Session {
    client(server)
        .create_account(pb::CreateAccountRequest {
            handle: format!("{name}.test"),
            email: format!("{name}@example.com"),
            password: "correct horse battery".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
}

/// `count` records in one commit, keys `<prefix><i>`.
async fn write_batch(server: &TestServer, session: &pb::Session, prefix: &str, count: usize) {
    let writes = (0..count)
        .map(|i| pb::Write {
            action: Some(pb::write::Action::Create(pb::WriteCreate {
                collection: "app.bsky.feed.post".into(),
                rkey: format!("{prefix}{i}"),
                value: json_to_struct(
                    &json!({"$type": "app.bsky.feed.post", "text": format!("{prefix} {i}")}),
                ),
            })),
        })
        .collect();
    client(server)
        .apply_writes(authed(
            pb::ApplyWritesRequest {
                repo: session.did.clone(),
                writes,
                swap_commit: String::new(),
            },
            &session.access_jwt,
        ))
        .await
        .unwrap();
}

async fn subscribe(
    server: &TestServer,
    cursor: Option<i64>,
) -> Result<Streaming<pb::SubscribeReposResponse>, tonic::Status> {
    client(server)
        .subscribe_repos(pb::SubscribeReposRequest { cursor })
        .await
        .map(|r| r.into_inner())
}

async fn next(stream: &mut Streaming<pb::SubscribeReposResponse>) -> pb::SubscribeReposResponse {
    tokio::time::timeout(std::time::Duration::from_secs(20), stream.message())
        .await
        .expect("an event within 20 s")
        .unwrap()
        .expect("the stream goes on")
}

async fn head(server: &TestServer, did: &str) -> pb::GetLatestCommitResponse {
    client(server)
        .get_latest_commit(pb::GetLatestCommitRequest { did: did.into() })
        .await
        .unwrap()
        .into_inner()
}

/// Nodes from a set of blocks only.
struct Blocks(HashMap<Cid, Vec<u8>>);

impl NodeSource for Blocks {
    fn node(&self, cid: Cid) -> BoxFuture<'_, Result<Node, quintet::error::Error>> {
        Box::pin(async move {
            let bytes = self
                .0
                .get(&cid)
                .ok_or_else(|| quintet::error::Error::DataLoss(format!("{cid} not delivered")))?;
            Ok(Node::from_ipld(&data::decode(bytes).unwrap()).unwrap())
        })
    }
}

/// Every key and value under `root`, from the blocks at hand.
fn leaves(blocks: &HashMap<Cid, Vec<u8>>, root: Cid, out: &mut BTreeMap<String, Cid>) {
    let node = Node::from_ipld(&data::decode(&blocks[&root]).unwrap()).unwrap();
    if let Some(left) = node.left {
        leaves(blocks, left, out);
    }
    for entry in node.entries {
        assert!(
            blocks.contains_key(&entry.value),
            "record block not delivered"
        );
        out.insert(String::from_utf8(entry.key).unwrap(), entry.value);
        if let Some(right) = entry.right {
            leaves(blocks, right, out);
        }
    }
}

/// The bytes of a stream of CAR pieces.
async fn gather<M>(mut stream: Streaming<M>, chunk: impl Fn(M) -> bytes::Bytes) -> Vec<u8> {
    let mut file = Vec::new();
    while let Some(message) = stream.next().await {
        file.extend_from_slice(&chunk(message.unwrap()));
    }
    file
}

fn commit_data(bytes: &[u8]) -> Cid {
    quintet::pds::repo::data_of_commit(bytes).unwrap()
}

#[tokio::test]
async fn a_follower_of_the_firehose_reconstructs_every_repository() {
    let server = TestServer::start().await;
    let mut firehose = subscribe(&server, None).await.unwrap();
    // 50 repositories, 10,000 records: 20 commits of 10 records each, written concurrently.
    let mut sessions = Vec::new();
    for i in 0..50 {
        sessions.push(account(&server, &format!("user{i}")).await);
    }
    let writers = sessions.iter().map(|session| {
        let server = &server;
        async move {
            for b in 0..20 {
                write_batch(server, session, &format!("b{b:02}r"), 10).await;
            }
        }
    });
    futures::future::join_all(writers).await;

    // 50 x (identity, account, first commit) + 1,000 commits, in order, without gaps.
    let expected = 50 * 3 + 1000;
    let mut blocks: HashMap<String, HashMap<Cid, Vec<u8>>> = HashMap::new();
    let mut last_commit: HashMap<String, String> = HashMap::new();
    let mut previous = 0;
    let mut events = Vec::new();
    for _ in 0..expected {
        let event = next(&mut firehose).await;
        if previous > 0 {
            assert_eq!(event.seq, previous + 1, "no gap, no repeat");
        }
        previous = event.seq;
        if let Some(Event::Commit(commit)) = &event.event {
            let slice = car::read(&commit.blocks).unwrap();
            assert_eq!(slice.roots[0].to_string(), commit.commit);
            let repo = blocks.entry(commit.repo.clone()).or_default();
            repo.extend(slice.blocks);
            last_commit.insert(commit.repo.clone(), commit.commit.clone());
        }
        events.push(event);
    }
    for session in &sessions {
        let head = head(&server, &session.did).await;
        assert_eq!(
            last_commit[&session.did], head.cid,
            "the last commit is the head"
        );
        let repo = &blocks[&session.did];
        let commit: Cid = head.cid.parse().unwrap();
        let mut records = BTreeMap::new();
        leaves(repo, commit_data(&repo[&commit]), &mut records);
        assert_eq!(records.len(), 200, "every record arrived with its blocks");
    }

    // A consumer that reconnects from a seq gets exactly what followed it.
    let middle = events[events.len() / 2].seq;
    let mut again = subscribe(&server, Some(middle)).await.unwrap();
    for expected in &events[events.len() / 2 + 1..] {
        assert_eq!(next(&mut again).await, *expected);
    }
    // The first events of an account: identity, then account, then its first commit.
    let first = &events[..3];
    assert!(matches!(first[0].event, Some(Event::Identity(_))));
    assert!(matches!(first[1].event, Some(Event::Account(ref a)) if a.active));
    assert!(matches!(first[2].event, Some(Event::Commit(ref c)) if c.ops.is_empty()));
    // Ops carry their paths, actions and CIDs.
    let Some(Event::Commit(commit)) = &events.last().unwrap().event else {
        panic!("commit")
    };
    assert_eq!(commit.ops.len(), 10);
    assert!(commit.ops.iter().all(|op| op.action == "create"
        && op.path.starts_with("app.bsky.feed.post/b19r")
        && !op.cid.is_empty()));
    assert!(!commit.since.is_empty() && !commit.prev_data.is_empty());
}

#[tokio::test]
async fn cursors_in_the_future_are_refused_and_pruned_ones_start_from_the_oldest() {
    let server = TestServer::start().await;
    let erin = account(&server, "erin").await;
    write_batch(&server, &erin, "a", 3).await;
    // Events 1-4: identity, account, first commit, the batch.
    let error = subscribe(&server, Some(99)).await.unwrap_err();
    assert_eq!(
        (error.code(), field_of(&error)),
        (Code::InvalidArgument, "cursor".to_owned())
    );
    let mut replay = subscribe(&server, Some(0)).await.unwrap();
    assert_eq!(next(&mut replay).await.seq, 1);

    // Prune the first two as retention would; an old cursor learns it and starts at 3.
    let pool = sqlx::PgPool::connect_with(server.database.clone())
        .await
        .unwrap();
    sqlx::query("DELETE FROM pds.repo_seq WHERE seq <= 2")
        .execute(&pool)
        .await
        .unwrap();
    let mut outdated = subscribe(&server, Some(0)).await.unwrap();
    let info = next(&mut outdated).await;
    assert!(
        matches!(info.event, Some(Event::Info(ref i)) if i.name == "OutdatedCursor"),
        "{info:?}"
    );
    assert_eq!(next(&mut outdated).await.seq, 3);
    assert_eq!(next(&mut outdated).await.seq, 4);

    // Status and handle changes are events too.
    let mut live = subscribe(&server, None).await.unwrap();
    client(&server)
        .update_handle(authed(
            pb::UpdateHandleRequest {
                handle: "erin2.test".into(),
            },
            &erin.access_jwt,
        ))
        .await
        .unwrap();
    client(&server)
        .deactivate_account(authed(pb::DeactivateAccountRequest {}, &erin.access_jwt))
        .await
        .unwrap();
    assert!(
        matches!(next(&mut live).await.event, Some(Event::Identity(ref i)) if i.handle == "erin2.test")
    );
    assert!(
        matches!(next(&mut live).await.event, Some(Event::Account(ref a)) if !a.active && a.status() == pb::AccountStatus::Deactivated)
    );
}

#[tokio::test]
async fn diffs_blocks_and_record_proofs() {
    let server = TestServer::start().await;
    let fay = account(&server, "fay").await;
    write_batch(&server, &fay, "old", 20).await;
    let before = head(&server, &fay.did).await;
    write_batch(&server, &fay, "new", 5).await;
    let after = head(&server, &fay.did).await;
    let mut pds = client(&server);

    let fetch = |since: &str| {
        let mut pds = client(&server);
        let request = pb::GetRepoRequest {
            did: fay.did.clone(),
            since: since.into(),
        };
        async move {
            let mut stream = pds.get_repo(request).await?.into_inner();
            let mut file = Vec::new();
            while let Some(message) = stream.next().await {
                file.extend_from_slice(&message?.chunk);
            }
            Ok::<_, tonic::Status>(car::read(&file).unwrap())
        }
    };
    // Since the earlier revision: the new commit, its new nodes and the 5 new records only.
    let diff = fetch(&before.rev).await.unwrap();
    assert_eq!(diff.roots[0].to_string(), after.cid);
    let cids: Vec<String> = diff.blocks.iter().map(|(c, _)| c.to_string()).collect();
    assert!(cids.contains(&after.cid) && !cids.contains(&before.cid));
    let full = fetch("").await.unwrap();
    assert!(diff.blocks.len() < full.blocks.len());
    let records_in_diff = diff
        .blocks
        .iter()
        .filter(|(_, b)| String::from_utf8_lossy(b).contains("new "))
        .count();
    assert_eq!(records_in_diff, 5);
    assert_eq!(field_of(&fetch("yesterday").await.unwrap_err()), "since");

    // GetBlocks: the named blocks, or NOT_FOUND naming the first missing one.
    let wanted: Vec<String> = full
        .blocks
        .iter()
        .take(3)
        .map(|(c, _)| c.to_string())
        .collect();
    let stream = pds
        .get_blocks(pb::GetBlocksRequest {
            did: fay.did.clone(),
            cids: wanted.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let got = car::read(&gather(stream, |m| m.chunk).await).unwrap();
    assert!(got.roots.is_empty());
    assert_eq!(
        got.blocks
            .iter()
            .map(|(c, _)| c.to_string())
            .collect::<Vec<_>>(),
        wanted
    );
    let missing = data::cid_for(data::DAG_CBOR, b"never stored").to_string();
    let missing = missing.as_str();
    let error = pds
        .get_blocks(pb::GetBlocksRequest {
            did: fay.did.clone(),
            cids: vec![wanted[0].clone(), missing.into()],
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert!(error.message().contains(missing));

    // Record proofs: with only the proof's blocks, the key resolves (or provably does not).
    for (rkey, present) in [("new3", true), ("absent", false)] {
        let stream = pds
            .get_record_proof(pb::GetRecordProofRequest {
                did: fay.did.clone(),
                collection: "app.bsky.feed.post".into(),
                rkey: rkey.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let proof = car::read(&gather(stream, |m| m.chunk).await).unwrap();
        assert_eq!(proof.roots[0].to_string(), after.cid);
        let blocks: HashMap<Cid, Vec<u8>> = proof.blocks.into_iter().collect();
        let root = commit_data(&blocks[&proof.roots[0]]);
        let source = Blocks(blocks.clone());
        let mut tree = Mst::new(&source);
        let found = tree
            .get(root, format!("app.bsky.feed.post/{rkey}").as_bytes())
            .await
            .unwrap();
        assert_eq!(found.is_some(), present, "{rkey}");
        if let Some(record) = found {
            assert!(blocks.contains_key(&record), "the record is in the proof");
        }
    }
}

/// The whole repository as a CAR file.
async fn export(server: &TestServer, did: &str) -> Vec<u8> {
    let stream = client(server)
        .get_repo(pb::GetRepoRequest {
            did: did.into(),
            since: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    gather(stream, |m| m.chunk).await
}

async fn import(
    server: &TestServer,
    session: &pb::Session,
    file: Vec<u8>,
) -> Result<pb::ImportRepoResponse, tonic::Status> {
    let chunks: Vec<pb::ImportRepoRequest> = file
        .chunks(100_000)
        .map(|c| pb::ImportRepoRequest {
            chunk: c.to_vec().into(),
        })
        .collect();
    client(server)
        .import_repo(authed(tokio_stream::iter(chunks), &session.access_jwt))
        .await
        .map(|r| r.into_inner())
}

/// An account's signing key, read the way only its server can (the harness's PDS master key).
async fn signing_key(server: &TestServer, did: &str) -> Vec<u8> {
    let pool = sqlx::PgPool::connect_with(server.database.clone())
        .await
        .unwrap();
    let wrapped: Vec<u8> =
        sqlx::query_scalar("SELECT signing_key_priv FROM pds.accounts WHERE did = $1")
            .bind(did)
            .fetch_one(&pool)
            .await
            .unwrap();
    let master =
        quintet::master_key::MasterKey::from_bytes(quintet::master_key::Purpose::Pds, [0x88; 32]);
    master.unwrap(&wrapped, did.as_bytes()).unwrap().to_vec()
}

async fn migrate(
    server: &TestServer,
    name: &str,
    did: &str,
    key: Vec<u8>,
) -> Result<pb::Session, tonic::Status> {
    client(server)
        .create_account(pb::CreateAccountRequest {
            handle: format!("{name}.test"),
            email: format!("{name}@example.com"),
            password: "correct horse battery".into(),
            did: did.into(),
            signing_key: key.into(),
        })
        .await
        .map(|r| r.into_inner().session.unwrap())
}

#[tokio::test]
async fn an_exported_repository_imports_elsewhere_with_the_same_root_and_bad_ones_change_nothing() {
    let old = TestServer::start().await;
    let gus = account(&old, "gus").await;
    for b in 0..5 {
        write_batch(&old, &gus, &format!("b{b}r"), 10).await;
    }
    let exported = export(&old, &gus.did).await;
    let old_head = head(&old, &gus.did).await;

    // A fresh server: the account arrives with its DID and signing key, then its repository.
    let new = TestServer::start().await;
    let key = signing_key(&old, &gus.did).await;
    let moved = migrate(&new, "gus", &gus.did, key.clone()).await.unwrap();
    assert_eq!(moved.did, gus.did);
    let imported = import(&new, &moved, exported.clone()).await.unwrap();
    assert_eq!(imported.commit.unwrap().cid, old_head.cid);
    assert_eq!(imported.records, 50);
    let new_head = head(&new, &gus.did).await;
    assert_eq!(
        (new_head.cid.as_str(), new_head.rev.as_str()),
        (old_head.cid.as_str(), old_head.rev.as_str())
    );
    let listed = client(&new)
        .list_records(pb::ListRecordsRequest {
            repo: gus.did.clone(),
            collection: "app.bsky.feed.post".into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.records.len(), 50);
    let reexported = car::read(&export(&new, &gus.did).await).unwrap();
    let original = car::read(&exported).unwrap();
    let mut a: Vec<_> = original.blocks.iter().map(|(c, _)| *c).collect();
    let mut b: Vec<_> = reexported.blocks.iter().map(|(c, _)| *c).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "the same blocks");
    // Writing goes on from the imported head.
    write_batch(&new, &moved, "after", 1).await;
    assert!(head(&new, &gus.did).await.rev > old_head.rev);

    // Refusals change nothing: a corrupted file, another account's repository, a forged signature.
    let before = head(&new, &gus.did).await;
    let mut corrupted = exported.clone();
    let last = corrupted.len() - 5;
    corrupted[last] ^= 0x55;
    let error = import(&new, &moved, corrupted).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    let ivy = account(&old, "ivy").await;
    let error = import(&new, &moved, export(&old, &ivy.did).await)
        .await
        .unwrap_err();
    assert_eq!(crate::harness::reason_of(&error), "WRONG_DID");
    let forger = TestServer::start().await;
    let forged_account = migrate(
        &forger,
        "gus",
        &gus.did,
        quintet::pds::keys::SigningKey::generate()
            .to_bytes()
            .to_vec(),
    )
    .await
    .unwrap();
    write_batch(&forger, &forged_account, "evil", 3).await;
    let error = import(&new, &moved, export(&forger, &gus.did).await)
        .await
        .unwrap_err();
    assert_eq!(crate::harness::reason_of(&error), "BAD_SIGNATURE");
    assert_eq!(head(&new, &gus.did).await.cid, before.cid);
    // An existing DID cannot be taken over by a second account.
    assert_eq!(
        migrate(&new, "gus2", &gus.did, key)
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
}

async fn upload(
    server: &TestServer,
    session: &pb::Session,
    mime: &str,
    bytes: &[u8],
) -> Result<pb::UploadBlobResponse, tonic::Status> {
    use pb::upload_blob_request::Part;
    let mut messages = vec![pb::UploadBlobRequest {
        part: Some(Part::Header(pb::BlobHeader {
            mime_type: mime.into(),
        })),
    }];
    for chunk in bytes.chunks(64 * 1024) {
        messages.push(pb::UploadBlobRequest {
            part: Some(Part::Chunk(chunk.to_vec().into())),
        });
    }
    client(server)
        .upload_blob(authed(tokio_stream::iter(messages), &session.access_jwt))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn blobs_are_uploaded_served_referenced_and_collected_when_unreferenced() {
    let server = TestServer::start_with(|c| c.pds_max_blob_bytes = 1024 * 1024).await;
    let jo = account(&server, "jo").await;
    let picture: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let uploaded = upload(&server, &jo, "image/png", &picture).await.unwrap();
    let meta = uploaded.blob.clone().unwrap();
    assert!(
        meta.cid.starts_with("bafkrei"),
        "raw sha2-256: {}",
        meta.cid
    );
    assert_eq!((meta.size, meta.mime_type.as_str()), (300_000, "image/png"));
    // The same CID the data model gives the bytes.
    let sha: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &picture)
        .as_ref()
        .try_into()
        .unwrap();
    assert_eq!(meta.cid, data::raw_cid(&sha).to_string());

    // Served back whole; listed.
    let mut stream = client(&server)
        .get_blob(pb::GetBlobRequest {
            did: jo.did.clone(),
            cid: meta.cid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    let mut served_meta = None;
    while let Some(message) = stream.next().await {
        match message.unwrap().part.unwrap() {
            pb::get_blob_response::Part::Meta(m) => served_meta = Some(m),
            pb::get_blob_response::Part::Chunk(c) => bytes.extend_from_slice(&c),
        }
    }
    assert_eq!(served_meta.unwrap(), meta);
    assert_eq!(bytes, picture);
    let listed = client(&server)
        .list_blobs(pb::ListBlobsRequest {
            did: jo.did.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.cids, vec![meta.cid.clone()]);

    // Limits: MIME syntax and size.
    assert_eq!(
        field_of(&upload(&server, &jo, "not a type", b"x").await.unwrap_err()),
        "header.mime_type"
    );
    let error = upload(
        &server,
        &jo,
        "application/octet-stream",
        &vec![0u8; 2 * 1024 * 1024],
    )
    .await
    .unwrap_err();
    assert_eq!(
        (error.code(), field_of(&error)),
        (Code::InvalidArgument, "chunk".to_owned())
    );

    // A record may reference an uploaded blob, not an unknown one.
    let post = |blob: serde_json::Value| pb::CreateRecordRequest {
        repo: jo.did.clone(),
        collection: "app.bsky.feed.post".into(),
        record: json_to_struct(
            &json!({"$type": "app.bsky.feed.post", "text": "look", "embed": {"image": blob}}),
        ),
        ..Default::default()
    };
    let reference = quintet::proto::struct_to_json(uploaded.r#ref.clone());
    client(&server)
        .create_record(authed(post(reference), &jo.access_jwt))
        .await
        .unwrap();
    let unknown = json!({"$type": "blob", "ref": {"$link": data::raw_cid(&[7; 32]).to_string()}, "mimeType": "image/png", "size": 1});
    let error = client(&server)
        .create_record(authed(post(unknown), &jo.access_jwt))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), field_of(&error)),
        (Code::InvalidArgument, "record".to_owned())
    );

    // An unreferenced upload is collected once old; the referenced one and its bytes stay.
    let orphan = upload(&server, &jo, "text/plain", b"nobody links me")
        .await
        .unwrap()
        .blob
        .unwrap();
    let pool = quintet::db::connect(server.database.clone(), 2)
        .await
        .unwrap();
    let collector = collector(&server, pool.clone()).await;
    assert_eq!(
        collector.collect_garbage().await.unwrap(),
        0,
        "young blobs are spared"
    );
    sqlx::query("UPDATE pds.blobs SET created_at = now() - interval '2 hours'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(collector.collect_garbage().await.unwrap(), 1);
    let gone = client(&server)
        .get_blob(pb::GetBlobRequest {
            did: jo.did.clone(),
            cid: orphan.cid.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let orphan_sha = quintet::blobs::Sha256::of(b"nobody links me");
    assert!(
        !collector.blobs.exists(&orphan_sha).await.unwrap(),
        "its bytes are deleted"
    );
    client(&server)
        .get_blob(pb::GetBlobRequest {
            did: jo.did.clone(),
            cid: meta.cid.clone(),
        })
        .await
        .unwrap();
}

/// A second PDS process on the test server's database and data directory, to run collection.
async fn collector(server: &TestServer, pool: sqlx::PgPool) -> quintet::pds::PdsService {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (admin, _) = quintet::auth::AdminAuth::init(
        pool.clone(),
        Some(&server.admin_token),
        server.data_dir.path(),
    )
    .await
    .unwrap();
    quintet::pds::PdsService {
        pool: pool.clone(),
        master_key: quintet::master_key::MasterKey::from_bytes(
            quintet::master_key::Purpose::Pds,
            [0x88; 32],
        ),
        jwt: quintet::pds::tokens::JwtKeys::load(
            &pool,
            "did:web:localhost",
            &quintet::master_key::MasterKey::from_bytes(
                quintet::master_key::Purpose::Pds,
                [0x88; 32],
            ),
        )
        .await
        .unwrap(),
        admin,
        page_tokens: quintet::page_token::PageTokens::load(&pool).await.unwrap(),
        endpoint: "http://localhost".into(),
        handle_domains: Vec::new(),
        notifier: quintet::notify::Notifier::start(&pool, &[], shutdown.clone())
            .await
            .unwrap(),
        retention_hours: 72,
        firehose_stall: std::time::Duration::from_secs(30),
        blobs: quintet::blobs::BlobStore::local(&server.data_dir.path().join("blobs"))
            .unwrap()
            .scoped("pds"),
        max_blob_bytes: 1 << 20,
        shutdown,
    }
}

#[tokio::test]
async fn a_consumer_that_stops_reading_is_disconnected_without_slowing_the_others() {
    let server = TestServer::start_with(|c| c.pds_firehose_stall_secs = 1).await;
    let kim = account(&server, "kim").await;
    // The stalled consumer's connection takes little before it stops accepting (a small HTTP/2
    // window), as a slow client's would.
    let narrow = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect()
        .await
        .unwrap();
    let mut stalled = PdsServiceClient::new(narrow)
        .subscribe_repos(pb::SubscribeReposRequest { cursor: None })
        .await
        .unwrap()
        .into_inner();
    let mut reader = subscribe(&server, None).await.unwrap();
    // Enough events, each carrying a few KiB of blocks, to fill the stalled consumer's window
    // and buffer.
    let reading = tokio::spawn(async move {
        let mut seen = 0;
        while seen < 300 {
            next(&mut reader).await;
            seen += 1;
        }
        seen
    });
    for b in 0..300 {
        write_batch(&server, &kim, &format!("s{b:03}r"), 5).await;
    }
    assert_eq!(
        reading.await.unwrap(),
        300,
        "the reading consumer got everything"
    );
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    // The stalled one gets what was buffered, then the reason it was cut off.
    let mut received = 0;
    let status = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(20), stalled.message()).await {
            Ok(Ok(Some(_))) => received += 1,
            Ok(Ok(None)) => panic!("the stream ended without a status after {received} events"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("no status after {received} events"),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        received < 300,
        "it was cut off, not served everything ({received})"
    );
}

#[tokio::test]
async fn the_firehose_of_one_replica_carries_the_commits_of_another() {
    let server = TestServer::start().await;
    let replica = server.replica(|_| {}).await;
    let mut firehose = subscribe(&replica, None).await.unwrap();
    let lee = account(&server, "lee").await;
    write_batch(&server, &lee, "x", 2).await;
    let mut kinds = Vec::new();
    for _ in 0..4 {
        kinds.push(match next(&mut firehose).await.event {
            Some(Event::Identity(_)) => "identity",
            Some(Event::Account(_)) => "account",
            Some(Event::Commit(c)) if c.repo == lee.did => "commit",
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(kinds, ["identity", "account", "commit", "commit"]);
}
