//! The store through its real gRPC client: round trips from empty to 1 GiB, many contents,
//! deduplication, ranges, corruption detection, tag queries, deletes racing puts, bad input,
//! interrupted uploads, the manifest stream, and an S3-compatible bucket (moto).

use std::time::Duration;

use quintet::proto::quintet::store::v1::{self as pb, store_service_client::StoreServiceClient};
use ring::digest;
use tokio_stream::StreamExt;
use tonic::{Code, Status, transport::Channel};

use crate::harness::{TestServer, authed, field_of};

const CLASS: &str = "3f1c1a52-8a52-4a6e-9d0c-1d2f0e6a7b11";

fn client(server: &TestServer) -> StoreServiceClient<Channel> {
    StoreServiceClient::new(server.channel.clone())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

fn tags(json: serde_json::Value) -> Option<prost_types::Struct> {
    let serde_json::Value::Object(map) = json else {
        return None;
    };
    Some(prost_types::Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| {
                let kind = match v {
                    serde_json::Value::String(s) => prost_types::value::Kind::StringValue(s),
                    serde_json::Value::Number(n) => {
                        prost_types::value::Kind::NumberValue(n.as_f64().unwrap())
                    }
                    serde_json::Value::Bool(b) => prost_types::value::Kind::BoolValue(b),
                    other => panic!("test tags are flat: {other}"),
                };
                (k, prost_types::Value { kind: Some(kind) })
            })
            .collect(),
    })
}

fn manifest(tag_json: serde_json::Value) -> pb::PutObjectRequest {
    pb::PutObjectRequest {
        part: Some(pb::put_object_request::Part::Manifest(pb::ManifestHeader {
            class_id: CLASS.into(),
            unpacker_name: "test.unpacker@v1".into(),
            tags: tags(tag_json),
        })),
    }
}

fn header(name: &str, storage: &str) -> pb::PutObjectRequest {
    pb::PutObjectRequest {
        part: Some(pb::put_object_request::Part::Content(pb::ContentHeader {
            content_name: name.into(),
            content_type: "application/octet-stream".into(),
            content_encoding: String::new(),
            serializer_name: "raw@v1".into(),
            serializer_type: pb::SerializerType::Value as i32,
            storage_name: storage.into(),
            tags: None,
            expected_sha256: String::new(),
        })),
    }
}

fn chunk(bytes: &[u8]) -> pb::PutObjectRequest {
    pb::PutObjectRequest {
        part: Some(pb::put_object_request::Part::Chunk(bytes.to_vec().into())),
    }
}

/// An object's messages: the manifest, then each content's header and its bytes in `chunk_size`
/// pieces.
pub(crate) fn object(
    contents: &[(&str, &str, &[u8])],
    chunk_size: usize,
) -> Vec<pb::PutObjectRequest> {
    let mut messages = vec![manifest(serde_json::json!({"kind": "test"}))];
    for (name, storage, bytes) in contents {
        messages.push(header(name, storage));
        messages.extend(bytes.chunks(chunk_size.max(1)).map(chunk));
    }
    messages
}

pub(crate) async fn put(
    server: &TestServer,
    messages: Vec<pb::PutObjectRequest>,
) -> Result<pb::PutObjectResponse, Status> {
    client(server)
        .put_object(authed(
            tokio_stream::iter(messages),
            server.admin_token.expose(),
        ))
        .await
        .map(|r| r.into_inner())
}

/// Every content of an object as (record, bytes).
async fn get(server: &TestServer, id: &str) -> Result<Vec<(pb::Content, Vec<u8>)>, Status> {
    use pb::get_object_response::Part;
    let mut stream = client(server)
        .get_object(authed(
            pb::GetObjectRequest {
                manifest_id: id.into(),
            },
            server.admin_token.expose(),
        ))
        .await?
        .into_inner();
    let Some(Part::Manifest(_)) = stream.next().await.unwrap()?.part else {
        panic!("manifest first")
    };
    let mut out: Vec<(pb::Content, Vec<u8>)> = Vec::new();
    while let Some(message) = stream.next().await {
        match message?.part.unwrap() {
            Part::Content(c) => out.push((c, Vec::new())),
            Part::Chunk(bytes) => out.last_mut().unwrap().1.extend_from_slice(&bytes),
            Part::Manifest(_) => panic!("one manifest"),
        }
    }
    Ok(out)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(d).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else {
                out.push(entry.path());
            }
        }
    }
    out
}

#[tokio::test]
async fn objects_round_trip_in_every_shape_and_storage() {
    let server = TestServer::start().await;
    let empty: &[u8] = b"";
    let tiny = b"tiny".to_vec();
    let multi = pattern(3 * 1024 * 1024 + 7, 1);
    let inline = br#"{"a": 1}"#.to_vec();
    let put_result = put(
        &server,
        object(
            &[
                ("empty", "", empty),
                ("tiny", "lakery.file@v1", &tiny),
                ("multi", "lakery.file@v1", &multi),
                ("inline", "lakery.json_storage_data@v1", &inline),
            ],
            100_003,
        ),
    )
    .await
    .unwrap();
    let manifest = put_result.manifest.unwrap();
    assert_eq!(put_result.contents.len(), 4);
    let got = get(&server, &manifest.id).await.unwrap();
    let by_name: std::collections::HashMap<_, _> = got
        .iter()
        .map(|(c, b)| (c.content_name.as_str(), (c, b)))
        .collect();
    for (name, expected) in [
        ("empty", empty.to_vec()),
        ("tiny", tiny),
        ("multi", multi),
        ("inline", inline),
    ] {
        let (record, bytes) = by_name[name];
        assert_eq!(bytes, &expected, "{name}");
        assert_eq!(record.content_size, expected.len() as i64);
        assert_eq!(
            record.content_hash,
            quintet::blobs::Sha256::of(&expected).to_hex()
        );
        assert_eq!(record.content_hash_algorithm, "sha256");
    }
    assert_eq!(
        by_name["inline"].0.storage_name,
        "lakery.json_storage_data@v1"
    );
    assert_eq!(by_name["empty"].0.storage_name, "lakery.file@v1");

    let described = client(&server)
        .get_manifest(authed(
            pb::GetManifestRequest {
                manifest_id: manifest.id.clone(),
            },
            server.admin_token.expose(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        described.manifest.unwrap().unpacker_name,
        "test.unpacker@v1"
    );
    let names: Vec<_> = described
        .contents
        .iter()
        .map(|c| c.content_name.as_str())
        .collect();
    assert_eq!(names, ["empty", "inline", "multi", "tiny"]);
    let listed = client(&server)
        .list_contents(authed(
            pb::ListContentsRequest {
                manifest_id: manifest.id.clone(),
            },
            server.admin_token.expose(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.contents.len(), 4);
}

#[tokio::test]
async fn many_contents_dedup_and_ranges() {
    let server = TestServer::start().await;
    let shared = pattern(200_000, 9);
    let contents: Vec<(String, Vec<u8>)> = (0..50)
        .map(|i| {
            (
                format!("part-{i:02}"),
                if i % 2 == 0 {
                    shared.clone()
                } else {
                    pattern(1000 + i, i as u8)
                },
            )
        })
        .collect();
    let refs: Vec<(&str, &str, &[u8])> = contents
        .iter()
        .map(|(n, b)| (n.as_str(), "", b.as_slice()))
        .collect();
    let first = put(&server, object(&refs, 65_536)).await.unwrap();
    let second = put(&server, object(&[("again", "", &shared)], 1_000_000))
        .await
        .unwrap();
    let got = get(&server, &first.manifest.unwrap().id).await.unwrap();
    assert_eq!(got.len(), 50);
    for ((record, bytes), (name, expected)) in got.iter().zip(&contents) {
        assert_eq!((&record.content_name, bytes), (name, expected));
    }
    // 25 distinct odd contents + one shared: 26 files.
    assert_eq!(
        files_under(&server.data_dir.path().join("blobs/store/sha256")).len(),
        26
    );

    let id = second.manifest.unwrap().id;
    let range = |offset: i64, length: i64| {
        let mut c = client(&server);
        let (id, token) = (id.clone(), server.admin_token.expose().to_owned());
        async move {
            use pb::get_content_response::Part;
            let mut stream = c
                .get_content(authed(
                    pb::GetContentRequest {
                        manifest_id: id,
                        content_name: "again".into(),
                        offset,
                        length,
                    },
                    &token,
                ))
                .await?
                .into_inner();
            let Some(Part::Content(_)) = stream.next().await.unwrap()?.part else {
                panic!("record first")
            };
            let mut bytes = Vec::new();
            while let Some(m) = stream.next().await {
                if let Some(Part::Chunk(b)) = m?.part {
                    bytes.extend_from_slice(&b);
                }
            }
            Ok::<_, Status>(bytes)
        }
    };
    assert_eq!(range(0, 0).await.unwrap(), shared);
    assert_eq!(range(1000, 10).await.unwrap(), shared[1000..1010]);
    assert_eq!(range(199_990, 1000).await.unwrap(), shared[199_990..]);
    assert_eq!(range(200_000, 0).await.unwrap(), b"");
    assert_eq!(field_of(&range(200_001, 0).await.unwrap_err()), "offset");
    assert_eq!(field_of(&range(-1, 0).await.unwrap_err()), "offset");
}

#[tokio::test]
async fn corrupted_bytes_end_reads_with_data_loss() {
    let server = TestServer::start().await;
    let bytes = pattern(5_000_000, 3);
    let stored = put(&server, object(&[("data", "", &bytes)], 1 << 20))
        .await
        .unwrap();
    let hash = stored.contents[0].content_hash.clone();
    let path = server
        .data_dir
        .path()
        .join("blobs/store/sha256")
        .join(&hash[..2])
        .join(&hash);
    let mut on_disk = std::fs::read(&path).unwrap();
    on_disk[4_000_000] ^= 0x01;
    std::fs::write(&path, on_disk).unwrap();
    let error = get(&server, &stored.manifest.unwrap().id)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::DataLoss);

    let inline = put(
        &server,
        object(&[("v", "lakery.json_storage_data@v1", b"[1,2,3]")], 100),
    )
    .await
    .unwrap();
    let pool = quintet::db::connect(server.database.clone(), 1)
        .await
        .unwrap();
    sqlx::query("UPDATE store.inline_values SET data = 'x'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        get(&server, &inline.manifest.unwrap().id)
            .await
            .unwrap_err()
            .code(),
        Code::DataLoss
    );
}

#[tokio::test]
async fn bad_uploads_are_refused_by_field_and_store_nothing() {
    let server = TestServer::start_with(|c| c.store_inline_max_bytes = 10).await;
    let cases: Vec<(Vec<pb::PutObjectRequest>, &str)> = vec![
        (vec![header("a", ""), chunk(b"x")], "manifest"),
        (vec![chunk(b"x")], "manifest"),
        (
            object(&[("a", "no.such.storage@v1", b"x")], 1),
            "contents[0].storage_name",
        ),
        (
            object(&[("a", "", b"x"), ("a", "", b"y")], 1),
            "contents[1].content_name",
        ),
        (
            object(
                &[("big", "lakery.json_storage_data@v1", b"more than ten bytes")],
                4,
            ),
            "contents[0].chunk",
        ),
        (object(&[("", "", b"x")], 1), "contents[0].content_name"),
        (
            {
                let mut m = object(&[], 1);
                m.push(chunk(b"stray"));
                m
            },
            "chunk",
        ),
        (
            {
                let mut m = object(&[("a", "", b"x")], 1);
                m.push(manifest(serde_json::json!({})));
                m
            },
            "manifest",
        ),
        (
            {
                let mut m = object(&[("a", "", b"x")], 1);
                if let Some(pb::put_object_request::Part::Content(h)) = &mut m[1].part {
                    h.expected_sha256 = "00".repeat(32);
                }
                m
            },
            "contents[0].expected_sha256",
        ),
        (
            {
                let mut m = object(&[("a", "", b"x")], 1);
                if let Some(pb::put_object_request::Part::Manifest(h)) = &mut m[0].part {
                    h.class_id = "not-a-uuid".into();
                }
                m
            },
            "manifest.class_id",
        ),
    ];
    for (messages, field) in cases {
        let error = put(&server, messages).await.unwrap_err();
        assert_eq!(
            (error.code(), field_of(&error)),
            (Code::InvalidArgument, field.to_owned()),
            "{error:?}"
        );
    }
    let forever = client(&server)
        .collect_garbage(authed(
            pb::CollectGarbageRequest {
                grace_seconds: i64::MAX,
            },
            server.admin_token.expose(),
        ))
        .await
        .unwrap_err();
    assert_eq!(field_of(&forever), "grace_seconds");
    let anonymous = client(&server)
        .put_object(tokio_stream::iter(object(&[("a", "", b"x")], 1)))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let listed = client(&server)
        .list_manifests(authed(
            pb::ListManifestsRequest::default(),
            server.admin_token.expose(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.manifests.is_empty());
}

#[tokio::test]
async fn an_upload_cut_off_leaves_no_manifest_and_gc_removes_its_bytes() {
    let server = TestServer::start().await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut c = client(&server);
    let token = server.admin_token.expose().to_owned();
    let call = tokio::spawn(async move {
        c.put_object(authed(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            &token,
        ))
        .await
    });
    for message in object(
        &[
            ("complete", "", &pattern(20_000_000, 5)),
            ("partial", "", &pattern(1000, 6)),
        ],
        1 << 20,
    ) {
        tx.send(message).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    call.abort();
    drop(tx);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listed = client(&server)
        .list_manifests(authed(
            pb::ListManifestsRequest::default(),
            server.admin_token.expose(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.manifests.is_empty(),
        "no manifest for a cut-off upload"
    );
    // The completed content's bytes are stored but unreferenced: collected once past the grace.
    assert!(!files_under(&server.data_dir.path().join("blobs/store")).is_empty());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let removed = client(&server)
        .collect_garbage(authed(
            pb::CollectGarbageRequest { grace_seconds: 1 },
            server.admin_token.expose(),
        ))
        .await
        .unwrap()
        .into_inner()
        .removed;
    assert!(removed >= 1);
    assert!(
        files_under(&server.data_dir.path().join("blobs/store")).is_empty(),
        "{:?}",
        files_under(&server.data_dir.path().join("blobs/store"))
    );
}

#[tokio::test]
async fn tag_class_and_time_queries_page_newest_first() {
    let server = TestServer::start().await;
    let before = prost_types::Timestamp {
        seconds: time::OffsetDateTime::now_utc().unix_timestamp() - 5,
        nanos: 0,
    };
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut messages = object(&[("v", "", format!("value {i}").as_bytes())], 100);
        messages[0] =
            manifest(serde_json::json!({"team": if i % 2 == 0 { "ml" } else { "web" }, "n": i}));
        ids.push(put(&server, messages).await.unwrap().manifest.unwrap().id);
    }
    let list = |filter: pb::ManifestFilter, page_size: i32, page_token: String| {
        let mut c = client(&server);
        let token = server.admin_token.expose().to_owned();
        async move {
            c.list_manifests(authed(
                pb::ListManifestsRequest {
                    filter: Some(filter),
                    page_size,
                    page_token,
                },
                &token,
            ))
            .await
            .map(|r| r.into_inner())
        }
    };
    let ml = pb::ManifestFilter {
        tags: tags(serde_json::json!({"team": "ml"})),
        ..Default::default()
    };
    let first = list(ml.clone(), 3, String::new()).await.unwrap();
    let second = list(ml.clone(), 3, first.next_page_token.clone())
        .await
        .unwrap();
    let got: Vec<_> = first
        .manifests
        .iter()
        .chain(&second.manifests)
        .map(|m| m.id.clone())
        .collect();
    assert_eq!(
        got,
        [
            ids[6].clone(),
            ids[4].clone(),
            ids[2].clone(),
            ids[0].clone()
        ],
        "newest first"
    );
    assert!(second.next_page_token.is_empty());
    let exact = list(
        pb::ManifestFilter {
            tags: tags(serde_json::json!({"n": 3})),
            ..Default::default()
        },
        0,
        String::new(),
    )
    .await
    .unwrap();
    assert_eq!(
        exact
            .manifests
            .iter()
            .map(|m| m.id.clone())
            .collect::<Vec<_>>(),
        [ids[3].clone()]
    );
    let other_class = list(
        pb::ManifestFilter {
            class_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        },
        0,
        String::new(),
    )
    .await
    .unwrap();
    assert!(other_class.manifests.is_empty());
    let in_window = list(
        pb::ManifestFilter {
            created_after: Some(before),
            ..Default::default()
        },
        0,
        String::new(),
    )
    .await
    .unwrap();
    assert_eq!(in_window.manifests.len(), 7);
    let before_window = list(
        pb::ManifestFilter {
            created_before: Some(before),
            ..Default::default()
        },
        0,
        String::new(),
    )
    .await
    .unwrap();
    assert!(before_window.manifests.is_empty());
    let mismatched = list(pb::ManifestFilter::default(), 3, first.next_page_token)
        .await
        .unwrap_err();
    assert_eq!(field_of(&mismatched), "page_token");
    let bad_class = list(
        pb::ManifestFilter {
            class_id: "x".into(),
            ..Default::default()
        },
        0,
        String::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(field_of(&bad_class), "filter.class_id");
}

#[tokio::test]
async fn deletes_racing_puts_of_the_same_bytes_never_lose_referenced_bytes() {
    let server = TestServer::start().await;
    let bytes = pattern(300_000, 42);
    let mut survivors = Vec::new();
    for round in 0..10 {
        let victim = put(&server, object(&[("x", "", &bytes)], 50_000))
            .await
            .unwrap()
            .manifest
            .unwrap()
            .id;
        let mut c = client(&server);
        let token = server.admin_token.expose().to_owned();
        let delete = tokio::spawn(async move {
            c.delete_object(authed(
                pb::DeleteObjectRequest {
                    manifest_id: victim,
                },
                &token,
            ))
            .await
        });
        let again = put(&server, object(&[("x", "", &bytes)], 50_000)).await;
        delete.await.unwrap().unwrap();
        match again {
            Ok(stored) => survivors.push(stored.manifest.unwrap().id),
            // The only acceptable failure: told to retry because the bytes vanished first.
            Err(status) => assert_eq!(status.code(), Code::Aborted, "round {round}: {status:?}"),
        }
    }
    assert!(!survivors.is_empty());
    for id in survivors {
        let got = get(&server, &id).await.unwrap();
        assert_eq!(got[0].1, bytes, "bytes of a live object are intact");
    }
    // Deleting the last reference removes the bytes; deleting twice is NOT_FOUND.
    let last = put(&server, object(&[("only", "", b"solo bytes")], 4))
        .await
        .unwrap()
        .manifest
        .unwrap()
        .id;
    let mut c = client(&server);
    c.delete_object(authed(
        pb::DeleteObjectRequest {
            manifest_id: last.clone(),
        },
        server.admin_token.expose(),
    ))
    .await
    .unwrap();
    let twice = c
        .delete_object(authed(
            pb::DeleteObjectRequest { manifest_id: last },
            server.admin_token.expose(),
        ))
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::NotFound);
}

#[tokio::test]
async fn watchers_see_matching_manifests_live_on_another_replica() {
    let server = TestServer::start().await;
    let replica = server.replica(|_| {}).await;
    let filter = pb::ManifestFilter {
        tags: tags(serde_json::json!({"watch": "me"})),
        ..Default::default()
    };
    let mut watch = client(&replica)
        .watch_manifests(authed(
            pb::WatchManifestsRequest {
                filter: Some(filter.clone()),
                after_seq: 0,
            },
            server.admin_token.expose(),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut ignored = object(&[("v", "", b"1")], 10);
    ignored[0] = manifest(serde_json::json!({"watch": "not me"}));
    put(&server, ignored).await.unwrap();
    let mut wanted = object(&[("v", "", b"2")], 10);
    wanted[0] = manifest(serde_json::json!({"watch": "me"}));
    let stored = put(&server, wanted).await.unwrap().manifest.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.manifest.unwrap().id, stored.id);
    drop(watch);
    let mut resumed = client(&server)
        .watch_manifests(authed(
            pb::WatchManifestsRequest {
                filter: Some(filter),
                after_seq: stored.seq,
            },
            server.admin_token.expose(),
        ))
        .await
        .unwrap()
        .into_inner();
    let nothing = tokio::time::timeout(Duration::from_millis(300), resumed.next()).await;
    assert!(nothing.is_err(), "nothing after the last seen seq");
}

/// 1 GiB through PutObject and GetObject, generated and checked on the fly (flat memory on both
/// sides).
#[tokio::test]
async fn a_one_gib_content_round_trips() {
    const SIZE: usize = 1 << 30;
    const PIECE: usize = 4 << 20;
    let server = TestServer::start().await;
    let block = pattern(PIECE, 77);
    let mut expected = digest::Context::new(&digest::SHA256);
    for i in 0..SIZE / PIECE {
        let mut piece = block.clone();
        piece[0] = i as u8;
        expected.update(&piece);
    }
    let expected = expected.finish();
    let uploads = futures::stream::iter(0..SIZE / PIECE + 2).map({
        let block = block.clone();
        move |i| match i {
            0 => manifest(serde_json::json!({"size": "1GiB"})),
            1 => header("big", ""),
            n => {
                let mut piece = block.clone();
                piece[0] = (n - 2) as u8;
                chunk(&piece)
            }
        }
    });
    let stored = client(&server)
        .put_object(authed(uploads, server.admin_token.expose()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.contents[0].content_size, SIZE as i64);
    assert_eq!(stored.contents[0].content_hash, hex(expected.as_ref()));

    use pb::get_object_response::Part;
    let mut stream = client(&server)
        .get_object(authed(
            pb::GetObjectRequest {
                manifest_id: stored.manifest.unwrap().id,
            },
            server.admin_token.expose(),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut got = digest::Context::new(&digest::SHA256);
    let mut size = 0;
    while let Some(message) = stream.next().await {
        if let Some(Part::Chunk(bytes)) = message.unwrap().part {
            size += bytes.len();
            got.update(&bytes);
        }
    }
    assert_eq!(size, SIZE);
    assert_eq!(hex(got.finish().as_ref()), hex(expected.as_ref()));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `lakery.aws.s3@v1` storage against moto's S3 server (PyPI `moto[server]`, which .ci/run
/// installs). Without `moto_server` the test says so loudly and passes only outside CI.
#[tokio::test]
async fn an_s3_compatible_bucket_works_as_a_storage() {
    let Ok(moto) = which("moto_server") else {
        assert!(
            std::env::var("CI").is_err(),
            "moto_server is required in CI"
        );
        eprintln!(
            "SKIPPED an_s3_compatible_bucket_works_as_a_storage: moto_server not on PATH (pip install 'moto[server]')"
        );
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(moto)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "moto_server did not start");
    // Create the bucket with a plain S3 request (moto accepts unsigned requests).
    let bucket = format!("quintet-{}", uuid::Uuid::new_v4().simple());
    http_put(port, &format!("/{bucket}")).await;
    // SAFETY: set before the server reads them, in this test only (object_store reads AWS_*).
    unsafe {
        std::env::set_var("AWS_ENDPOINT", &endpoint);
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_ALLOW_HTTP", "true");
    }
    let url = format!("s3://{bucket}/objects");
    let server = TestServer::start_with(|c| c.store_s3_url = Some(url)).await;
    let big = pattern(12 * 1024 * 1024 + 5, 8);
    let stored = put(
        &server,
        object(
            &[
                ("small", "lakery.aws.s3@v1", b"hello s3"),
                ("big", "lakery.aws.s3@v1", &big),
            ],
            1 << 20,
        ),
    )
    .await
    .unwrap();
    let got = get(&server, &stored.manifest.unwrap().id).await.unwrap();
    assert_eq!(got[0].1, big);
    assert_eq!(got[1].1, b"hello s3");
    assert_eq!(got[0].0.storage_name, "lakery.aws.s3@v1");
    child.kill().await.ok();
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(program))
                .find(|p| p.is_file())
        })
        .ok_or(())
}

async fn http_put(port: u16, path: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}
