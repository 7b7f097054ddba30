//! The market through its real gRPC client, against its own OpenID Connect issuer on loopback
//! (RSA keys from tests/fixtures, a JWKS endpoint that can rotate keys): sign-in and its refusals,
//! sessions, encrypted uploads with inferred schemas, the datapod lifecycle and its ownership
//! rules, and search.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use base64::Engine;
use quintet::{
    market::crypto::{self, MasterKey},
    proto::quintet::market::v1::{self as pb, market_service_client::MarketServiceClient},
};
use ring::{
    digest,
    rsa::PublicKeyComponents,
    signature::{RSA_PKCS1_SHA256, RsaKeyPair},
};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tonic::{Code, Status, transport::Channel};

use crate::harness::{TestServer, authed, field_of};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "quintet-test-client";
/// The harness's market master key (tests/it/harness.rs).
const TEST_MASTER_KEY: [u8; 32] = [0x77; 32];

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn fixture_key(n: u8) -> RsaKeyPair {
    let path = format!(
        "{}/tests/fixtures/oidc-test-key-{n}.der",
        env!("CARGO_MANIFEST_DIR")
    );
    RsaKeyPair::from_der(&std::fs::read(path).unwrap()).unwrap()
}

fn jwk(key: &RsaKeyPair, kid: &str) -> Value {
    let public = PublicKeyComponents::<Vec<u8>>::from(key.public());
    json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(&public.n), "e": b64(&public.e)})
}

/// An ID token with `claims`, signed by `key` under `kid` with `alg`.
fn id_token(key: &RsaKeyPair, kid: &str, alg: &str, claims: &Value) -> String {
    let header = b64(json!({"alg": alg, "kid": kid, "typ": "JWT"})
        .to_string()
        .as_bytes());
    let payload = b64(claims.to_string().as_bytes());
    let signed = format!("{header}.{payload}");
    let mut signature = vec![0u8; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signed.as_bytes(),
        &mut signature,
    )
    .unwrap();
    format!("{signed}.{}", b64(&signature))
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn claims(sub: &str, name: &str) -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "email": format!("{sub}@example.com"),
        "email_verified": true, "name": name, "picture": "https://example.com/p.png",
        "iat": now(), "exp": now() + 3600,
    })
}

/// The issuer's JWKS endpoint: serves whatever keys are set, counting fetches.
struct Issuer {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
}

impl Issuer {
    async fn start(keys: Vec<Value>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counter) = (keys.clone(), fetches.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (served, counter) = (served.clone(), counter.clone());
                tokio::spawn(async move {
                    if crate::harness::read_http_request(&mut socket)
                        .await
                        .is_none()
                    {
                        return;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body = json!({"keys": *served.lock().unwrap()}).to_string();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: public, max-age=3600\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        Issuer { url, keys, fetches }
    }
}

/// A server with its own OpenID Connect issuer (market_purchases.rs uses it too).
pub(crate) struct Market {
    pub(crate) server: TestServer,
    issuer: Issuer,
    key: RsaKeyPair,
}

impl Market {
    pub(crate) async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// `adjust` may change the configuration further.
    pub(crate) async fn start_with(adjust: impl FnOnce(&mut quintet::config::Config)) -> Self {
        let key = fixture_key(1);
        let issuer = Issuer::start(vec![jwk(&key, "k1")]).await;
        let url = issuer.url.clone();
        let server = TestServer::start_with(|c| {
            c.market_oidc_jwks_url = url;
            c.market_oidc_issuers = vec![ISSUER.to_owned()];
            c.market_oidc_audience = Some(AUDIENCE.to_owned());
            adjust(c);
        })
        .await;
        Market {
            server,
            issuer,
            key,
        }
    }

    pub(crate) fn client(&self) -> MarketServiceClient<Channel> {
        MarketServiceClient::new(self.server.channel.clone())
    }

    async fn sign_in_with(&self, token: String) -> Result<pb::SignInResponse, Status> {
        self.client()
            .sign_in(pb::SignInRequest { id_token: token })
            .await
            .map(|r| r.into_inner())
    }

    /// A valid ID token for `sub`, signed by the test issuer.
    pub(crate) fn id_token(&self, sub: &str) -> String {
        id_token(&self.key, "k1", "RS256", &claims(sub, sub))
    }

    /// Signs `sub` in; returns the session token.
    pub(crate) async fn user(&self, sub: &str) -> String {
        self.sign_in_with(self.id_token(sub))
            .await
            .unwrap()
            .session_token
    }

    pub(crate) async fn upload(
        &self,
        session: &str,
        file_type: &str,
        data: &[u8],
    ) -> Result<pb::Dataset, Status> {
        let mut messages = vec![pb::UploadDatasetRequest {
            part: Some(pb::upload_dataset_request::Part::Header(
                pb::DatasetHeader {
                    file_type: file_type.to_owned(),
                },
            )),
        }];
        for chunk in data.chunks(7_777) {
            messages.push(pb::UploadDatasetRequest {
                part: Some(pb::upload_dataset_request::Part::Chunk(
                    chunk.to_vec().into(),
                )),
            });
        }
        self.client()
            .upload_dataset(authed(tokio_stream::iter(messages), session))
            .await
            .map(|r| r.into_inner().dataset.unwrap())
    }

    pub(crate) async fn datapod(
        &self,
        session: &str,
        title: &str,
        description: &str,
        category: &str,
        price_mist: i64,
    ) -> pb::Datapod {
        let dataset = self
            .upload(session, "text/plain", title.as_bytes())
            .await
            .unwrap();
        let datapod = self
            .client()
            .create_datapod(authed(
                pb::CreateDatapodRequest {
                    dataset_id: dataset.id,
                    title: title.into(),
                    description: description.into(),
                    category: category.into(),
                    price_mist,
                },
                session,
            ))
            .await
            .unwrap()
            .into_inner()
            .datapod
            .unwrap();
        self.client()
            .publish_datapod(authed(
                pb::PublishDatapodRequest {
                    id: datapod.id.clone(),
                },
                session,
            ))
            .await
            .unwrap()
            .into_inner()
            .datapod
            .unwrap()
    }
}

#[tokio::test]
async fn sign_in_creates_the_user_once_and_sessions_work_until_sign_out() {
    let market = Market::start().await;
    let first = market
        .sign_in_with(id_token(&market.key, "k1", "RS256", &claims("g-1", "Ada")))
        .await
        .unwrap();
    assert!(first.created);
    let user = first.user.unwrap();
    assert_eq!(user.google_id, "g-1");
    assert_eq!(user.email, "g-1@example.com");
    assert_eq!(user.salt.len(), 64);
    assert!(user.salt.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(user.sui_address.is_empty(), "no address without a proof");

    // Again, renamed: the same user and salt, the new name, a second session.
    let second = market
        .sign_in_with(id_token(
            &market.key,
            "k1",
            "RS256",
            &claims("g-1", "Ada L."),
        ))
        .await
        .unwrap();
    assert!(!second.created);
    let again = second.user.unwrap();
    assert_eq!(
        again.user.as_ref().unwrap().id,
        user.user.as_ref().unwrap().id
    );
    assert_eq!(again.salt, user.salt);
    assert_eq!(again.user.unwrap().name, "Ada L.");
    assert_ne!(first.session_token, second.session_token);

    let mut client = market.client();
    let me = client
        .get_current_user(authed(pb::GetCurrentUserRequest {}, &first.session_token))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(me.salt, user.salt);
    client
        .sign_out(authed(pb::SignOutRequest {}, &first.session_token))
        .await
        .unwrap();
    let gone = client
        .get_current_user(authed(pb::GetCurrentUserRequest {}, &first.session_token))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::Unauthenticated);
    // The other session lives on; sessions are stored only as digests.
    client
        .get_current_user(authed(pb::GetCurrentUserRequest {}, &second.session_token))
        .await
        .unwrap();
    let pool = quintet::db::connect(market.server.database.clone(), 1)
        .await
        .unwrap();
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM market.sessions WHERE encode(token_sha256, 'escape') LIKE '%qmkt_%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored, 0);
    // An address that moved to another account (a recreated one, say) does not lock it out.
    let mut moved = claims("g-1-recreated", "Ada");
    moved["email"] = json!("g-1@example.com");
    let recreated = market
        .sign_in_with(id_token(&market.key, "k1", "RS256", &moved))
        .await
        .unwrap();
    assert!(recreated.created);
    for token in ["", "garbage", "qmkt_nope"] {
        let error = client
            .get_current_user(authed(pb::GetCurrentUserRequest {}, token))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::Unauthenticated, "{token:?}");
    }
}

#[tokio::test]
async fn forged_expired_and_misdirected_id_tokens_are_refused() {
    let market = Market::start().await;
    let other_key = fixture_key(2);
    let valid = claims("g-2", "Bob");
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = valid.clone();
        change(&mut c);
        c
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "signed by another key",
            id_token(&other_key, "k1", "RS256", &valid),
        ),
        (
            "expired",
            id_token(
                &market.key,
                "k1",
                "RS256",
                &with(&|c| c["exp"] = json!(now() - 3600)),
            ),
        ),
        (
            "another audience",
            id_token(
                &market.key,
                "k1",
                "RS256",
                &with(&|c| c["aud"] = json!("someone-else")),
            ),
        ),
        (
            "another issuer",
            id_token(
                &market.key,
                "k1",
                "RS256",
                &with(&|c| c["iss"] = json!("https://evil.test")),
            ),
        ),
        (
            "unverified email",
            id_token(
                &market.key,
                "k1",
                "RS256",
                &with(&|c| c["email_verified"] = json!(false)),
            ),
        ),
        (
            "not yet valid",
            id_token(
                &market.key,
                "k1",
                "RS256",
                &with(&|c| c["iat"] = json!(now() + 3600)),
            ),
        ),
        (
            "unknown key id",
            id_token(&market.key, "k9", "RS256", &valid),
        ),
        ("garbage", "a.b.c".to_owned()),
        ("two parts", "a.b".to_owned()),
    ];
    for (what, token) in cases {
        let error = market.sign_in_with(token).await.unwrap_err();
        assert_eq!(error.code(), Code::Unauthenticated, "{what}: {error:?}");
    }
    // Tampered claims under a valid signature; alg none; HS256 with the public key as secret.
    let token = id_token(&market.key, "k1", "RS256", &valid);
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = b64(with(&|c| c["sub"] = json!("admin")).to_string().as_bytes());
    let error = market.sign_in_with(parts.join(".")).await.unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","kid":"k1"}"#),
        b64(valid.to_string().as_bytes())
    );
    let error = market.sign_in_with(none).await.unwrap_err();
    assert!(error.message().contains("RS256"), "{error:?}");
    let hs = format!(
        "{}.{}.{}",
        b64(br#"{"alg":"HS256","kid":"k1"}"#),
        b64(valid.to_string().as_bytes()),
        b64(b"x")
    );
    assert_eq!(
        market.sign_in_with(hs).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let error = market.sign_in_with(String::new()).await.unwrap_err();
    assert_eq!(field_of(&error), "id_token");

    // None of that created the user.
    let first = market
        .sign_in_with(id_token(&market.key, "k1", "RS256", &valid))
        .await
        .unwrap();
    assert!(first.created);
}

#[tokio::test]
async fn rotated_keys_are_fetched_when_a_token_names_them() {
    let market = Market::start().await;
    market.user("g-3").await;
    let fetched = market.issuer.fetches.load(Ordering::SeqCst);
    assert_eq!(fetched, 1, "keys are cached");
    market.user("g-3").await;
    assert_eq!(market.issuer.fetches.load(Ordering::SeqCst), 1);

    // The issuer rotates to a new key.
    let new_key = fixture_key(2);
    market.issuer.keys.lock().unwrap().push(jwk(&new_key, "k2"));
    // Refetches on unknown key ids are spaced out (5 s) so that forged kids cannot hammer it.
    tokio::time::sleep(std::time::Duration::from_millis(5200)).await;
    let signed_in = market
        .sign_in_with(id_token(&new_key, "k2", "RS256", &claims("g-3", "Cy")))
        .await
        .unwrap();
    assert!(!signed_in.created);
    assert_eq!(market.issuer.fetches.load(Ordering::SeqCst), 2);

    // Sign-in without an audience configured is refused as not configured.
    let unconfigured = TestServer::start().await;
    let error = MarketServiceClient::new(unconfigured.channel.clone())
        .sign_in(pb::SignInRequest {
            id_token: "a.b.c".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn uploads_are_encrypted_at_rest_with_an_inferred_schema() {
    let market = Market::start().await;
    let seller = market.user("seller").await;
    let mut csv = String::from("city,temp_c,rainy\n");
    for i in 0..5000 {
        csv.push_str(&format!(
            "\"Town {i}, North\",{}.5,{}\n",
            i % 40,
            i % 3 == 0
        ));
    }
    let dataset = market
        .upload(&seller, "text/csv", csv.as_bytes())
        .await
        .unwrap();
    assert_eq!(dataset.file_size, csv.len() as i64);
    assert_eq!(
        dataset.data_hash,
        hex(digest::digest(&digest::SHA256, csv.as_bytes()).as_ref())
    );
    let schema = quintet::proto::struct_to_json(dataset.schema.clone());
    assert_eq!(schema["format"], "csv");
    assert_eq!(schema["row_count"], 5000);
    assert_eq!(
        schema["columns"][1],
        json!({"name": "temp_c", "type": "number"})
    );
    let sample = dataset.sample_data.clone().unwrap();
    assert_eq!(sample.values.len(), 10);

    // What is stored is ciphertext; the dataset key, unwrapped with the master key, opens it.
    let blob = market
        .server
        .data_dir
        .path()
        .join("blobs/market/sha256")
        .join(&dataset.blob_id[..2])
        .join(&dataset.blob_id);
    let stored = std::fs::read(&blob).unwrap();
    assert_eq!(stored.len() as i64, dataset.storage_size);
    assert!(!stored.windows(12).any(|w| w == b"Town 1, Nort"));
    let pool = quintet::db::connect(market.server.database.clone(), 1)
        .await
        .unwrap();
    let (wrapped, key_hash): (Vec<u8>, String) = sqlx::query_as(
        "SELECT wrapped_key, encryption_key_hash FROM market.datasets WHERE id = $1::uuid",
    )
    .bind(&dataset.id)
    .fetch_one(&pool)
    .await
    .unwrap();
    let id = uuid::Uuid::parse_str(&dataset.id).unwrap();
    let key = MasterKey::from_bytes(quintet::master_key::Purpose::Market, TEST_MASTER_KEY)
        .unwrap(&wrapped, id.as_bytes())
        .unwrap();
    assert_eq!(
        hex(digest::digest(&digest::SHA256, &key).as_ref()),
        key_hash
    );
    assert_eq!(key_hash, dataset.encryption_key_hash);
    let nonce: [u8; 12] = unhex(&dataset.encryption_iv).try_into().unwrap();
    assert_eq!(
        crypto::decrypt(&key, nonce, &stored).unwrap(),
        csv.as_bytes()
    );

    // JSON lines get a schema too; other types none; limits and order are enforced.
    let jsonl = b"{\"id\":1,\"tags\":[\"a\"]}\n{\"id\":2,\"tags\":[]}\n";
    let dataset = market
        .upload(&seller, "application/x-ndjson", jsonl)
        .await
        .unwrap();
    assert_eq!(
        quintet::proto::struct_to_json(dataset.schema)["row_count"],
        2
    );
    let binary = market
        .upload(&seller, "application/octet-stream", &[0u8; 10])
        .await
        .unwrap();
    assert!(binary.schema.is_none() && binary.sample_data.is_none());
    let error = market
        .client()
        .upload_dataset(authed(
            tokio_stream::iter(vec![pb::UploadDatasetRequest {
                part: Some(pb::upload_dataset_request::Part::Chunk(vec![1].into())),
            }]),
            &seller,
        ))
        .await
        .unwrap_err();
    assert_eq!(field_of(&error), "header");
    let error = market
        .upload("not-a-session", "text/csv", b"a")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn only_sellers_change_their_datapods_and_unpublished_ones_are_private() {
    let market = Market::start().await;
    let seller = market.user("seller").await;
    let other = market.user("other").await;
    let mut client = market.client();
    let dataset = market
        .upload(&seller, "text/csv", b"a,b\n1,2\n")
        .await
        .unwrap();
    let create = |dataset_id: &str, session: &str| {
        authed(
            pb::CreateDatapodRequest {
                dataset_id: dataset_id.to_owned(),
                title: "Rain in Spain".into(),
                description: "Daily rainfall".into(),
                category: "weather".into(),
                price_mist: 2_500_000_000,
            },
            session,
        )
    };
    let error = client
        .create_datapod(create(&dataset.id, &other))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "another seller's dataset");
    let datapod = client
        .create_datapod(create(&dataset.id, &seller))
        .await
        .unwrap()
        .into_inner()
        .datapod
        .unwrap();
    assert!(!datapod.published);
    assert_eq!(datapod.price_mist, 2_500_000_000);
    assert_eq!(datapod.dataset.as_ref().unwrap().blob_id, dataset.blob_id);
    let error = client
        .create_datapod(create(&dataset.id, &seller))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists, "one datapod per dataset");

    // Unpublished: only the seller sees it.
    let get = |session: Option<&str>| {
        let request = pb::GetDatapodRequest {
            id: datapod.id.clone(),
        };
        match session {
            Some(session) => authed(request, session),
            None => tonic::Request::new(request),
        }
    };
    assert_eq!(
        client.get_datapod(get(None)).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        client
            .get_datapod(get(Some(&other)))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    client.get_datapod(get(Some(&seller))).await.unwrap();

    // Nobody else may change it.
    let update = |session: &str, paths: &[&str]| {
        authed(
            pb::UpdateDatapodRequest {
                id: datapod.id.clone(),
                title: "Rain in Spain, 1990-2020".into(),
                price_mist: 3_000_000_000,
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                }),
                ..Default::default()
            },
            session,
        )
    };
    // Someone else's unpublished datapod does not exist for them, even to change.
    assert_eq!(
        client
            .update_datapod(update(&other, &["title"]))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let publish = |session: &str| {
        authed(
            pb::PublishDatapodRequest {
                id: datapod.id.clone(),
            },
            session,
        )
    };
    assert_eq!(
        client
            .publish_datapod(publish(&other))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let delete = |session: &str| {
        authed(
            pb::DeleteDatapodRequest {
                id: datapod.id.clone(),
            },
            session,
        )
    };
    assert_eq!(
        client
            .delete_datapod(delete(&other))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // A dead session is no one: still NOT_FOUND, not UNAUTHENTICATED.
    assert_eq!(
        client
            .get_datapod(get(Some("qmkt_dead")))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // The seller updates by mask: unnamed fields stay.
    let updated = client
        .update_datapod(update(&seller, &["title", "price_mist"]))
        .await
        .unwrap()
        .into_inner()
        .datapod
        .unwrap();
    assert_eq!(updated.title, "Rain in Spain, 1990-2020");
    assert_eq!(updated.price_mist, 3_000_000_000);
    assert_eq!(updated.description, "Daily rainfall");
    for (paths, field) in [
        (&[][..], "update_mask"),
        (&["published"][..], "update_mask"),
    ] {
        let error = client
            .update_datapod(update(&seller, paths))
            .await
            .unwrap_err();
        assert_eq!(field_of(&error), field);
    }

    client.publish_datapod(publish(&seller)).await.unwrap();
    // Published, it is visible, and others are told they may not change it.
    for code in [
        client
            .update_datapod(update(&other, &["title"]))
            .await
            .unwrap_err()
            .code(),
        client
            .delete_datapod(delete(&other))
            .await
            .unwrap_err()
            .code(),
        client
            .publish_datapod(publish(&other))
            .await
            .unwrap_err()
            .code(),
    ] {
        assert_eq!(code, Code::PermissionDenied);
    }
    // Prices are exact to the MIST, up to the largest accepted.
    for price in [123_456_789_012_345_678i64, 1_000_000_000_000_000_000, 1] {
        let exact = client
            .update_datapod(authed(
                pb::UpdateDatapodRequest {
                    id: datapod.id.clone(),
                    price_mist: price,
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["price_mist".into()],
                    }),
                    ..Default::default()
                },
                &seller,
            ))
            .await
            .unwrap()
            .into_inner()
            .datapod
            .unwrap();
        assert_eq!(exact.price_mist, price);
    }
    let public = client
        .get_datapod(get(None))
        .await
        .unwrap()
        .into_inner()
        .datapod
        .unwrap();
    assert_eq!(public.seller.unwrap().name, "seller");
    let mine = client
        .list_my_datapods(authed(pb::ListMyDatapodsRequest::default(), &seller))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.datapods.len(), 1);
    client
        .unpublish_datapod(authed(
            pb::UnpublishDatapodRequest {
                id: datapod.id.clone(),
            },
            &seller,
        ))
        .await
        .unwrap();
    assert_eq!(
        client.get_datapod(get(None)).await.unwrap_err().code(),
        Code::NotFound
    );

    // Deleting removes the datapod, its dataset and its stored bytes.
    let blob = market
        .server
        .data_dir
        .path()
        .join("blobs/market/sha256")
        .join(&dataset.blob_id[..2])
        .join(&dataset.blob_id);
    assert!(blob.exists());
    client.delete_datapod(delete(&seller)).await.unwrap();
    assert!(!blob.exists());
    assert_eq!(
        client
            .get_datapod(get(Some(&seller)))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        client
            .delete_datapod(delete(&seller))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    let error = client
        .create_datapod(authed(
            pb::CreateDatapodRequest {
                dataset_id: "nope".into(),
                title: "t".into(),
                ..Default::default()
            },
            &seller,
        ))
        .await
        .unwrap_err();
    assert_eq!(field_of(&error), "dataset_id");
    let dataset = market.upload(&seller, "text/csv", b"x\n1\n").await.unwrap();
    for (title, price, field) in [("", 1, "title"), ("ok", -1, "price_mist")] {
        let error = client
            .create_datapod(authed(
                pb::CreateDatapodRequest {
                    dataset_id: dataset.id.clone(),
                    title: title.into(),
                    price_mist: price,
                    ..Default::default()
                },
                &seller,
            ))
            .await
            .unwrap_err();
        assert_eq!(field_of(&error), field);
    }
}

#[tokio::test]
async fn search_finds_published_datapods_by_words_filters_and_sorts_in_pages() {
    let market = Market::start().await;
    let seller = market.user("seller").await;
    let sui = 1_000_000_000;
    market
        .datapod(
            &seller,
            "Weather stations of Europe",
            "hourly readings",
            "weather",
            5 * sui,
        )
        .await;
    market
        .datapod(
            &seller,
            "Rainfall",
            "daily weather observations",
            "weather",
            2 * sui,
        )
        .await;
    market
        .datapod(
            &seller,
            "Stock prices",
            "end of day quotes",
            "finance",
            9 * sui,
        )
        .await;
    market
        .datapod(
            &seller,
            "Crypto trades",
            "every trade, no weather",
            "finance",
            sui / 2,
        )
        .await;
    // Unpublished: never found.
    let dataset = market
        .upload(&seller, "text/plain", b"hidden")
        .await
        .unwrap();
    market
        .client()
        .create_datapod(authed(
            pb::CreateDatapodRequest {
                dataset_id: dataset.id,
                title: "Hidden weather".into(),
                price_mist: 1,
                ..Default::default()
            },
            &seller,
        ))
        .await
        .unwrap();

    let search = |request: pb::SearchDatapodsRequest| {
        let mut client = market.client();
        async move {
            client
                .search_datapods(request)
                .await
                .map(|r| r.into_inner())
        }
    };
    let titles = |response: &pb::SearchDatapodsResponse| -> Vec<String> {
        response.datapods.iter().map(|d| d.title.clone()).collect()
    };

    // Stemming ("weathers" finds "weather"), ranking by relevance, published only.
    let found = search(pb::SearchDatapodsRequest {
        query: "weathers".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(found.datapods.len(), 3, "{:?}", titles(&found));
    assert!(!titles(&found).contains(&"Hidden weather".to_owned()));
    let in_finance = search(pb::SearchDatapodsRequest {
        query: "weather".into(),
        category: "finance".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(titles(&in_finance), ["Crypto trades"]);
    let priced = search(pb::SearchDatapodsRequest {
        min_price_mist: sui,
        max_price_mist: 6 * sui,
        sort_by: pb::SortBy::PriceAsc as i32,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(titles(&priced), ["Rainfall", "Weather stations of Europe"]);

    // Pages in every order cover everything once, in order.
    for (sort, expected) in [
        (
            pb::SortBy::PriceDesc,
            vec![
                "Stock prices",
                "Weather stations of Europe",
                "Rainfall",
                "Crypto trades",
            ],
        ),
        (
            pb::SortBy::PriceAsc,
            vec![
                "Crypto trades",
                "Rainfall",
                "Weather stations of Europe",
                "Stock prices",
            ],
        ),
        (
            pb::SortBy::Newest,
            vec![
                "Crypto trades",
                "Stock prices",
                "Rainfall",
                "Weather stations of Europe",
            ],
        ),
    ] {
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = search(pb::SearchDatapodsRequest {
                sort_by: sort as i32,
                page_size: 3,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap();
            seen.extend(titles(&page));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen, expected, "{sort:?}");
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = search(pb::SearchDatapodsRequest {
            query: "weather".into(),
            page_size: 1,
            page_token: token,
            ..Default::default()
        })
        .await
        .unwrap();
        seen.extend(titles(&page));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    seen.sort();
    assert_eq!(
        seen,
        ["Crypto trades", "Rainfall", "Weather stations of Europe"]
    );

    for (request, field) in [
        (
            pb::SearchDatapodsRequest {
                min_rating: 6.0,
                ..Default::default()
            },
            "min_rating",
        ),
        (
            pb::SearchDatapodsRequest {
                sort_by: pb::SortBy::Relevance as i32,
                ..Default::default()
            },
            "sort_by",
        ),
        (
            pb::SearchDatapodsRequest {
                page_size: 1000,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::SearchDatapodsRequest {
                max_price_mist: -5,
                ..Default::default()
            },
            "max_price_mist",
        ),
    ] {
        let error = search(request).await.unwrap_err();
        assert_eq!(field_of(&error), field);
    }
    let forged = search(pb::SearchDatapodsRequest {
        page_token: "forged".into(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(forged.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_sui_address_is_recorded_only_with_a_signature_by_its_key() {
    use quintet::market::sui;
    let market = Market::start().await;
    let ada = market.user("ada").await;
    let bob = market.user("bob").await;
    let mut client = market.client();
    let challenge = |session: &str| {
        let mut client = market.client();
        let session = session.to_owned();
        async move {
            client
                .get_sui_address_challenge(authed(pb::GetSuiAddressChallengeRequest {}, &session))
                .await
                .unwrap()
                .into_inner()
                .message
        }
    };
    let wallet = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[42; 32]).unwrap();
    let ada_challenge = challenge(&ada).await;
    let signature = sui::sign_personal_message(&wallet, ada_challenge.as_bytes());
    let proven = client
        .prove_sui_address(authed(
            pb::ProveSuiAddressRequest {
                signature: signature.clone(),
            },
            &ada,
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let public: [u8; 32] = ring::signature::KeyPair::public_key(&wallet)
        .as_ref()
        .try_into()
        .unwrap();
    assert_eq!(proven.sui_address, sui::ed25519_address(&public));

    // Ada's proof does not work for Bob (the challenge names the user), nor does a signature of
    // Bob's challenge for an address Ada holds.
    let error = client
        .prove_sui_address(authed(pb::ProveSuiAddressRequest { signature }, &bob))
        .await
        .unwrap_err();
    assert_eq!(field_of(&error), "signature");
    let bob_challenge = challenge(&bob).await;
    let error = client
        .prove_sui_address(authed(
            pb::ProveSuiAddressRequest {
                signature: sui::sign_personal_message(&wallet, bob_challenge.as_bytes()),
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists);
    let error = client
        .prove_sui_address(pb::ProveSuiAddressRequest {
            signature: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
}
