//! The PDS through its real gRPC client: accounts and their identities, sessions and their
//! revocation, app passwords, account status, records with compare-and-swap, atomic batches,
//! concurrent writers, and an export that re-parses into the same records under a valid
//! signature.

use std::collections::{BTreeMap, HashMap};

use cid::Cid;
use futures::StreamExt;
use ipld_core::ipld::Ipld;
use quintet::{
    pds::{car, data, keys::PublicKey, mst},
    proto::{
        json_to_struct,
        quintet::pds::v1::{self as pb, pds_service_client::PdsServiceClient},
        struct_to_json,
    },
};
use serde_json::{Value, json};
use tonic::{Code, transport::Channel};

use crate::harness::{TestServer, authed, field_of, reason_of};

fn client(server: &TestServer) -> PdsServiceClient<Channel> {
    PdsServiceClient::new(server.channel.clone()).max_decoding_message_size(64 * 1024 * 1024)
}

pub(crate) async fn create_account(server: &TestServer, handle: &str) -> pb::Session {
    client(server)
        .create_account(pb::CreateAccountRequest {
            handle: handle.into(),
            email: format!("{}@example.com", handle.split('.').next().unwrap()),
            password: "correct horse battery".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
}

pub(crate) fn post(text: &str) -> Option<prost_types::Struct> {
    json_to_struct(&json!({
        "$type": "app.bsky.feed.post",
        "text": text,
        "createdAt": "2026-11-24T00:00:00.000Z",
    }))
}

async fn create_post(
    server: &TestServer,
    session: &pb::Session,
    text: &str,
) -> Result<pb::CreateRecordResponse, tonic::Status> {
    client(server)
        .create_record(authed(
            pb::CreateRecordRequest {
                repo: session.did.clone(),
                collection: "app.bsky.feed.post".into(),
                rkey: String::new(),
                record: post(text),
                swap_commit: String::new(),
            },
            &session.access_jwt,
        ))
        .await
        .map(|r| r.into_inner())
}

async fn sign_in(
    server: &TestServer,
    identifier: &str,
    password: &str,
) -> Result<pb::Session, tonic::Status> {
    client(server)
        .create_session(pb::CreateSessionRequest {
            identifier: identifier.into(),
            password: password.into(),
        })
        .await
        .map(|r| r.into_inner().session.unwrap())
}

/// `token` with its expiry moved into the past, signed again with the server's own key.
pub(crate) async fn expired_copy(server: &TestServer, token: &str) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let pool = sqlx::PgPool::connect_with(server.database.clone())
        .await
        .unwrap();
    let key = crate::harness::pds_jwt_key(&pool).await;
    let mut parts = token.split('.');
    let header = parts.next().unwrap();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap()).unwrap();
    claims["exp"] = json!(time::OffsetDateTime::now_utc().unix_timestamp() - 60);
    let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        signed.as_bytes(),
    );
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// Why signing in fails.
async fn sign_in_refused(server: &TestServer, identifier: &str, password: &str) -> Code {
    sign_in(server, identifier, password)
        .await
        .unwrap_err()
        .code()
}

/// Why a token no longer opens its session.
async fn session_refused(server: &TestServer, token: &str) -> Code {
    get_session(server, token).await.unwrap_err().code()
}

async fn get_session(server: &TestServer, token: &str) -> Result<pb::Session, tonic::Status> {
    client(server)
        .get_session(authed(pb::GetSessionRequest {}, token))
        .await
        .map(|r| r.into_inner().session.unwrap())
}

#[tokio::test]
async fn accounts_get_a_plc_identity_and_sessions_end_when_they_should() {
    let server = TestServer::start().await;
    let mut pds = client(&server);
    let alice = create_account(&server, "alice.test").await;
    assert!(
        alice.did.starts_with("did:plc:") && alice.did.len() == 32,
        "{}",
        alice.did
    );
    assert_eq!(alice.handle, "alice.test");
    assert_eq!(alice.status(), pb::AccountStatus::Active);

    // The identity: a DID document naming the handle, the signing key and this server.
    let described = pds
        .describe_repo(pb::DescribeRepoRequest {
            repo: "alice.test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.did, alice.did);
    assert!(described.handle_is_correct);
    let document = struct_to_json(described.did_doc);
    assert_eq!(document["alsoKnownAs"][0], "at://alice.test");
    let multikey = document["verificationMethod"][0]["publicKeyMultibase"]
        .as_str()
        .unwrap();
    assert!(PublicKey::from_multikey(multikey).is_some());
    let head = pds
        .get_latest_commit(pb::GetLatestCommitRequest {
            did: alice.did.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(head.cid.starts_with("bafyrei") && head.rev.len() == 13);

    // Bad input and taken names.
    for (request, field) in [
        (
            pb::CreateAccountRequest {
                handle: "no_underscores.test".into(),
                email: "a@b.co".into(),
                password: "long enough".into(),
                ..Default::default()
            },
            "handle",
        ),
        (
            pb::CreateAccountRequest {
                handle: "bob.test".into(),
                email: "not-an-email".into(),
                password: "long enough".into(),
                ..Default::default()
            },
            "email",
        ),
        (
            pb::CreateAccountRequest {
                handle: "bob.test".into(),
                email: "bob@b.co".into(),
                password: "short".into(),
                ..Default::default()
            },
            "password",
        ),
    ] {
        let error = pds.create_account(request).await.unwrap_err();
        assert_eq!(
            (error.code(), field_of(&error)),
            (Code::InvalidArgument, field.to_owned())
        );
    }
    let error = pds
        .create_account(pb::CreateAccountRequest {
            handle: "ALICE.test".into(),
            email: "other@example.com".into(),
            password: "long enough".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists);

    // Sign-in by handle, email or DID; a wrong password is refused.
    for identifier in ["alice.test", "alice@example.com", alice.did.as_str()] {
        let session = sign_in(&server, identifier, "correct horse battery")
            .await
            .unwrap();
        assert_eq!(session.did, alice.did);
    }
    assert_eq!(
        sign_in_refused(&server, "alice.test", "wrong").await,
        Code::Unauthenticated
    );
    assert_eq!(
        sign_in_refused(&server, "nobody.test", "wrong").await,
        Code::Unauthenticated
    );

    // Tokens: garbage, a refresh token where an access token goes, rotation, sign-out.
    assert_eq!(
        session_refused(&server, "garbage").await,
        Code::Unauthenticated
    );
    assert_eq!(
        session_refused(&server, &alice.refresh_jwt).await,
        Code::Unauthenticated
    );
    let refreshed = pds
        .refresh_session(authed(pb::RefreshSessionRequest {}, &alice.refresh_jwt))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(
        get_session(&server, &refreshed.access_jwt)
            .await
            .unwrap()
            .did,
        alice.did
    );
    assert_eq!(
        session_refused(&server, &alice.access_jwt).await,
        Code::Unauthenticated
    );
    let error = pds
        .refresh_session(authed(pb::RefreshSessionRequest {}, &alice.refresh_jwt))
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Code::Unauthenticated,
        "a refresh token works once"
    );
    pds.delete_session(authed(pb::DeleteSessionRequest {}, &refreshed.refresh_jwt))
        .await
        .unwrap();
    assert_eq!(
        session_refused(&server, &refreshed.access_jwt).await,
        Code::Unauthenticated
    );
    // A token past its expiry is refused, even for a live session and with the right key.
    let live = sign_in(&server, "alice.test", "correct horse battery")
        .await
        .unwrap();
    let expired = expired_copy(&server, &live.access_jwt).await;
    assert_eq!(
        session_refused(&server, &expired).await,
        Code::Unauthenticated
    );
    get_session(&server, &live.access_jwt).await.unwrap();
    // A token signed by another server is refused.
    let other = TestServer::start().await;
    let foreign = create_account(&other, "mallory.test").await;
    assert_eq!(
        session_refused(&server, &foreign.access_jwt).await,
        Code::Unauthenticated
    );

    // App passwords: sessions marked with their name, unable to manage credentials, revocable.
    let alice = sign_in(&server, "alice.test", "correct horse battery")
        .await
        .unwrap();
    let app = pds
        .create_app_password(authed(
            pb::CreateAppPasswordRequest {
                name: "phone".into(),
            },
            &alice.access_jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(app.password.len(), 19);
    let phone = sign_in(&server, "alice.test", &app.password).await.unwrap();
    assert_eq!(phone.app_password_name, "phone");
    create_post(&server, &phone, "from my phone").await.unwrap();
    let error = pds
        .create_app_password(authed(
            pb::CreateAppPasswordRequest {
                name: "laptop".into(),
            },
            &phone.access_jwt,
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    let listed = pds
        .list_app_passwords(authed(pb::ListAppPasswordsRequest {}, &alice.access_jwt))
        .await
        .unwrap()
        .into_inner()
        .app_passwords;
    assert_eq!(listed.len(), 1);
    pds.revoke_app_password(authed(
        pb::RevokeAppPasswordRequest {
            name: "phone".into(),
        },
        &alice.access_jwt,
    ))
    .await
    .unwrap();
    assert_eq!(
        session_refused(&server, &phone.access_jwt).await,
        Code::Unauthenticated
    );
    assert_eq!(
        sign_in_refused(&server, "alice.test", &app.password).await,
        Code::Unauthenticated
    );

    // Another account cannot write here.
    let bob = create_account(&server, "bob.test").await;
    let error = pds
        .create_record(authed(
            pb::CreateRecordRequest {
                repo: alice.did.clone(),
                collection: "app.bsky.feed.post".into(),
                record: post("not mine"),
                ..Default::default()
            },
            &bob.access_jwt,
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);

    // Status: deactivated refuses writes and hides the repository; takedown refuses sign-in.
    pds.deactivate_account(authed(pb::DeactivateAccountRequest {}, &alice.access_jwt))
        .await
        .unwrap();
    assert_eq!(
        reason_of(&create_post(&server, &alice, "x").await.unwrap_err()),
        "ACCOUNT_DEACTIVATED"
    );
    let error = pds
        .describe_repo(pb::DescribeRepoRequest {
            repo: alice.did.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason_of(&error), "REPO_DEACTIVATED");
    pds.activate_account(authed(pb::ActivateAccountRequest {}, &alice.access_jwt))
        .await
        .unwrap();
    create_post(&server, &alice, "back").await.unwrap();
    let admin = server.admin_token.expose().to_owned();
    let takedown = |down: bool| {
        let mut pds = client(&server);
        let request = authed(
            pb::SetAccountTakedownRequest {
                did: bob.did.clone(),
                takendown: down,
            },
            &admin,
        );
        async move { pds.set_account_takedown(request).await }
    };
    let error = pds
        .set_account_takedown(authed(
            pb::SetAccountTakedownRequest {
                did: bob.did.clone(),
                takendown: true,
            },
            &alice.access_jwt,
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated, "admins only");
    takedown(true).await.unwrap();
    assert_eq!(
        sign_in_refused(&server, "bob.test", "correct horse battery").await,
        Code::PermissionDenied
    );
    assert_eq!(
        session_refused(&server, &bob.access_jwt).await,
        Code::PermissionDenied
    );
    takedown(false).await.unwrap();
    get_session(&server, &bob.access_jwt).await.unwrap();

    // A new handle is a new PLC operation; the document follows.
    pds.update_handle(authed(
        pb::UpdateHandleRequest {
            handle: "alice2.test".into(),
        },
        &alice.access_jwt,
    ))
    .await
    .unwrap();
    let described = pds
        .describe_repo(pb::DescribeRepoRequest {
            repo: "alice2.test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(described.handle_is_correct);
    assert_eq!(
        struct_to_json(described.did_doc)["alsoKnownAs"][0],
        "at://alice2.test"
    );

    // Deletion needs the password; afterwards the DID is gone and the handle free.
    let error = pds
        .delete_account(authed(
            pb::DeleteAccountRequest {
                password: "wrong".into(),
            },
            &alice.access_jwt,
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    pds.delete_account(authed(
        pb::DeleteAccountRequest {
            password: "correct horse battery".into(),
        },
        &alice.access_jwt,
    ))
    .await
    .unwrap();
    let status = pds
        .get_repo_status(pb::GetRepoStatusRequest {
            did: alice.did.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (status.active, status.status()),
        (false, pb::AccountStatus::Deleted)
    );
    assert_eq!(
        sign_in_refused(&server, &alice.did, "correct horse battery").await,
        Code::Unauthenticated
    );
    assert_eq!(
        session_refused(&server, &alice.access_jwt).await,
        Code::Unauthenticated
    );
    create_account(&server, "alice2.test").await;
}

#[tokio::test]
async fn records_are_written_read_listed_swapped_and_batched() {
    let server = TestServer::start().await;
    let mut pds = client(&server);
    let carol = create_account(&server, "carol.test").await;
    let token = carol.access_jwt.clone();
    let created = create_post(&server, &carol, "hello").await.unwrap();
    assert!(
        created
            .uri
            .starts_with(&format!("at://{}/app.bsky.feed.post/", carol.did))
    );
    let rkey = created.uri.rsplit('/').next().unwrap().to_owned();
    assert!(quintet::pds::syntax::is_tid(&rkey));
    let got = pds
        .get_record(pb::GetRecordRequest {
            repo: "carol.test".into(),
            collection: "app.bsky.feed.post".into(),
            rkey: rkey.clone(),
            cid: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.cid, created.cid);
    assert_eq!(struct_to_json(got.value)["text"], "hello");

    // Malformed records and paths name their field; nothing is written.
    let bad_records = [
        json!({"$type": "app.bsky.feed.post", "n": 1.5}),
        json!({"$type": "app.bsky.feed.like", "text": "wrong type"}),
        json!({"text": "no type"}),
        json!({"$type": "app.bsky.feed.post", "link": {"$link": "not a cid"}}),
    ];
    for record in bad_records {
        let error = pds
            .create_record(authed(
                pb::CreateRecordRequest {
                    repo: carol.did.clone(),
                    collection: "app.bsky.feed.post".into(),
                    record: json_to_struct(&record),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{record}");
        assert!(
            field_of(&error).starts_with("record"),
            "{record}: {}",
            field_of(&error)
        );
    }
    for (collection, rkey, field) in [
        ("not an nsid", "", "collection"),
        ("app.bsky.feed.post", "../x", "rkey"),
    ] {
        let error = pds
            .create_record(authed(
                pb::CreateRecordRequest {
                    repo: carol.did.clone(),
                    collection: collection.into(),
                    rkey: rkey.into(),
                    record: post("x"),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap_err();
        assert_eq!(field_of(&error), field);
    }

    // Put with compare-and-swap on the record and on the commit.
    let head = pds
        .get_latest_commit(pb::GetLatestCommitRequest {
            did: carol.did.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let put = |text: &str, swap_record: &str, swap_commit: &str| {
        let mut pds = client(&server);
        let request = authed(
            pb::PutRecordRequest {
                repo: carol.did.clone(),
                collection: "app.bsky.feed.post".into(),
                rkey: rkey.clone(),
                record: post(text),
                swap_record: swap_record.into(),
                swap_commit: swap_commit.into(),
            },
            &token,
        );
        async move { pds.put_record(request).await.map(|r| r.into_inner()) }
    };
    let stale = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm";
    assert_eq!(
        reason_of(&put("edited", stale, "").await.unwrap_err()),
        "INVALID_SWAP"
    );
    assert_eq!(
        reason_of(&put("edited", "", stale).await.unwrap_err()),
        "INVALID_SWAP"
    );
    let edited = put("edited", &created.cid, &head.cid).await.unwrap();
    assert_ne!(edited.cid, created.cid);
    assert!(edited.commit.as_ref().unwrap().rev > head.rev);

    // A batch is all or nothing.
    let before = pds
        .get_latest_commit(pb::GetLatestCommitRequest {
            did: carol.did.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let create = |rkey: &str| pb::Write {
        action: Some(pb::write::Action::Create(pb::WriteCreate {
            collection: "app.bsky.feed.post".into(),
            rkey: rkey.into(),
            value: post(rkey),
        })),
    };
    let missing = pb::Write {
        action: Some(pb::write::Action::Delete(pb::WriteDelete {
            collection: "app.bsky.feed.post".into(),
            rkey: "missing".into(),
        })),
    };
    let error = pds
        .apply_writes(authed(
            pb::ApplyWritesRequest {
                repo: carol.did.clone(),
                writes: vec![create("a1"), missing],
                swap_commit: String::new(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    let after = pds
        .get_latest_commit(pb::GetLatestCommitRequest {
            did: carol.did.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.cid, before.cid);
    let applied = pds
        .apply_writes(authed(
            pb::ApplyWritesRequest {
                repo: carol.did.clone(),
                writes: vec![create("a1"), create("a2"), create("a3")],
                swap_commit: String::new(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.results.len(), 3);
    let error = pds
        .apply_writes(authed(
            pb::ApplyWritesRequest {
                repo: carol.did.clone(),
                writes: vec![create("a1")],
                swap_commit: String::new(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists);

    // Listing: descending by key, or ascending with reverse, in pages.
    let list = |reverse: bool, page_token: String| {
        let mut pds = client(&server);
        let request = pb::ListRecordsRequest {
            repo: carol.did.clone(),
            collection: "app.bsky.feed.post".into(),
            page_size: 2,
            page_token,
            reverse,
        };
        async move { pds.list_records(request).await.unwrap().into_inner() }
    };
    let mut keys = Vec::new();
    let mut page = list(true, String::new()).await;
    loop {
        keys.extend(
            page.records
                .iter()
                .map(|r| r.uri.rsplit('/').next().unwrap().to_owned()),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        page = list(true, page.next_page_token).await;
    }
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(keys.len(), 4);
    let descending = list(false, String::new()).await;
    assert_eq!(
        descending.records[0].uri.rsplit('/').next().unwrap(),
        keys[3]
    );

    // Delete, then the record is gone.
    pds.delete_record(authed(
        pb::DeleteRecordRequest {
            repo: carol.did.clone(),
            collection: "app.bsky.feed.post".into(),
            rkey: "a2".into(),
            ..Default::default()
        },
        &token,
    ))
    .await
    .unwrap();
    let error = pds
        .get_record(pb::GetRecordRequest {
            repo: carol.did.clone(),
            collection: "app.bsky.feed.post".into(),
            rkey: "a2".into(),
            cid: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    let described = pds
        .describe_repo(pb::DescribeRepoRequest {
            repo: carol.did.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.collections, ["app.bsky.feed.post"]);
}

/// Walks an exported tree from its CAR blocks: key -> record CID.
fn walk(blocks: &HashMap<Cid, Vec<u8>>, node: Cid, out: &mut BTreeMap<String, Cid>) -> usize {
    let mut nodes = 1;
    let value = data::decode(&blocks[&node]).unwrap();
    let node = mst::Node::from_ipld(&value).unwrap();
    if let Some(left) = node.left {
        nodes += walk(blocks, left, out);
    }
    for entry in node.entries {
        assert!(blocks.contains_key(&entry.value), "record block missing");
        out.insert(String::from_utf8(entry.key).unwrap(), entry.value);
        if let Some(right) = entry.right {
            nodes += walk(blocks, right, out);
        }
    }
    nodes
}

#[tokio::test]
async fn a_thousand_writes_export_as_a_car_that_reparses_into_the_same_records() {
    let server = TestServer::start().await;
    let mut pds = client(&server);
    let dave = create_account(&server, "dave.test").await;
    // 1,000 records: 100 batches of 10, plus concurrent single writers on the same repository.
    let batches = (0..100).map(|b| {
        let mut pds = client(&server);
        let (did, token) = (dave.did.clone(), dave.access_jwt.clone());
        async move {
            let writes = (0..10)
                .map(|i| pb::Write {
                    action: Some(pb::write::Action::Create(pb::WriteCreate {
                        collection: "app.bsky.feed.post".into(),
                        rkey: format!("r{b:03}{i}"),
                        value: post(&format!("post {b} {i}")),
                    })),
                })
                .collect();
            pds.apply_writes(authed(
                pb::ApplyWritesRequest {
                    repo: did,
                    writes,
                    swap_commit: String::new(),
                },
                &token,
            ))
            .await
            .unwrap()
        }
    });
    futures::stream::iter(batches)
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;

    let head = pds
        .get_latest_commit(pb::GetLatestCommitRequest {
            did: dave.did.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut stream = pds
        .get_repo(pb::GetRepoRequest {
            did: dave.did.clone(),
            since: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut file = Vec::new();
    while let Some(message) = stream.next().await {
        file.extend_from_slice(&message.unwrap().chunk);
    }
    let parsed = car::read(&file).unwrap();
    assert_eq!(parsed.roots[0].to_string(), head.cid);
    let blocks: HashMap<Cid, Vec<u8>> = parsed.blocks.into_iter().collect();

    // The commit verifies with the key in the DID document.
    let Ipld::Map(mut commit) = data::decode(&blocks[&parsed.roots[0]]).unwrap() else {
        panic!("commit")
    };
    let Some(Ipld::Bytes(signature)) = commit.remove("sig") else {
        panic!("no sig")
    };
    assert_eq!(commit.get("version"), Some(&Ipld::Integer(3)));
    assert_eq!(commit.get("did"), Some(&Ipld::String(dave.did.clone())));
    assert_eq!(commit.get("rev"), Some(&Ipld::String(head.rev.clone())));
    let document = struct_to_json(
        pds.describe_repo(pb::DescribeRepoRequest {
            repo: dave.did.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .did_doc,
    );
    let key = PublicKey::from_multikey(
        document["verificationMethod"][0]["publicKeyMultibase"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(key.verify(&data::encode(&Ipld::Map(commit.clone())), &signature));

    // The tree holds exactly the 1,000 records the listing shows, with their values.
    let Some(Ipld::Link(root)) = commit.get("data") else {
        panic!("no data")
    };
    let mut tree = BTreeMap::new();
    let nodes = walk(&blocks, *root, &mut tree);
    assert_eq!(tree.len(), 1000);
    let mut listed = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let page = pds
            .list_records(pb::ListRecordsRequest {
                repo: dave.did.clone(),
                collection: "app.bsky.feed.post".into(),
                page_size: 100,
                page_token,
                reverse: true,
            })
            .await
            .unwrap()
            .into_inner();
        for record in page.records {
            // at://<did>/<collection>/<rkey> -> <collection>/<rkey>
            let key = record.uri.splitn(4, '/').nth(3).unwrap().to_owned();
            let value: Value = struct_to_json(record.value);
            listed.insert(key, (record.cid, value));
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(listed.len(), 1000);
    for (key, cid) in &tree {
        let (listed_cid, value) = &listed[key];
        assert_eq!(&cid.to_string(), listed_cid);
        assert_eq!(data::to_json(&data::decode(&blocks[cid]).unwrap()), *value);
    }
    // Nothing else is in the file: the commit, the nodes walked, the records.
    let records: std::collections::HashSet<_> = tree.values().collect();
    assert_eq!(blocks.len(), 1 + nodes + records.len());
}
