//! The authorization matrix: every RPC the server serves, listed through reflection, against six
//! callers: no token, a garbage token, an expired token, another user's token, a token lacking
//! the scope, and the right token. Each cell names the code the caller must get; a cell that
//! cannot exist says why (the admin token never expires, market sessions carry no scopes). A
//! served method missing from the table fails the test, and so does a row for a method that is
//! not served.
//!
//! Calls go through one dynamic client built from the server's own descriptors, with requests
//! written as proto3 JSON. The wrong callers run first over the whole table, then the right ones,
//! in table order, so that the rows that end something (sign-out, deletion) come last.

use std::{collections::BTreeSet, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD};
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor, MethodDescriptor};
use quintet::proto::quintet::{
    market::v1 as market_pb, pds::v1 as pds_pb, registry::v1 as registry_pb,
};
use serde_json::{Value, json};
use tonic::{
    Code, Request, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

use crate::{
    harness::authed,
    market::Market,
    pds::{create_account, expired_copy, post},
    registry::{FakeIdentity, manifest, publish, tarball},
};

/// What a caller must get.
#[derive(Clone, Debug)]
enum Expect {
    /// Exactly this code.
    Code(Code),
    /// Past authorization: any answer but UNAUTHENTICATED or PERMISSION_DENIED (nor INTERNAL,
    /// UNKNOWN or UNIMPLEMENTED). The right caller's request may still be refused on its merits.
    Authorized,
    /// No such caller exists for this RPC, and why.
    NotApplicable(&'static str),
}

const U: Expect = Expect::Code(Code::Unauthenticated);
const P: Expect = Expect::Code(Code::PermissionDenied);
const NF: Expect = Expect::Code(Code::NotFound);
const OK: Expect = Expect::Authorized;
const NEVER_EXPIRES: Expect = Expect::NotApplicable("the admin token does not expire");
const NO_SCOPES: Expect = Expect::NotApplicable("the admin token has no scopes");
const PUBLIC: Expect = Expect::NotApplicable("public: the call reads no token");
const SESSIONS_UNSCOPED: Expect = Expect::NotApplicable("market sessions carry no scopes");

const VARIANTS: [&str; 6] = [
    "no token",
    "garbage token",
    "expired token",
    "another user's token",
    "token lacking the scope",
    "right token",
];

/// One cell: the token sent (none: no `authorization` header) and what must come back.
#[derive(Clone)]
struct Cell(Option<String>, Expect);

struct Row {
    method: &'static str,
    requests: Vec<Value>,
    cells: [Cell; 6],
}

fn cell(token: &str, expect: Expect) -> Cell {
    Cell(Some(token.to_owned()), expect)
}

fn na(expect: Expect) -> Cell {
    Cell(None, expect)
}

const GARBAGE: &str = "garbage-0123456789";

fn row(method: &'static str, request: Value, cells: [Cell; 6]) -> Row {
    Row {
        method,
        requests: vec![request],
        cells,
    }
}

fn stream_row(method: &'static str, requests: Vec<Value>, cells: [Cell; 6]) -> Row {
    Row {
        method,
        requests,
        cells,
    }
}

/// A public read: anyone may call it, with or without a token.
fn public(method: &'static str, request: Value) -> Row {
    row(
        method,
        request,
        [
            Cell(None, OK),
            cell(GARBAGE, OK),
            na(PUBLIC),
            na(PUBLIC),
            na(PUBLIC),
            Cell(None, OK),
        ],
    )
}

/// Callers of a service whose only credential is the admin token (store, griot, admin).
struct AdminOnly {
    admin: String,
    /// A valid credential of someone else: a registry user's API token.
    someone: String,
}

impl AdminOnly {
    fn row(&self, method: &'static str, request: Value) -> Row {
        self.stream(method, vec![request])
    }

    fn stream(&self, method: &'static str, requests: Vec<Value>) -> Row {
        stream_row(
            method,
            requests,
            [
                Cell(None, U),
                cell(GARBAGE, U),
                na(NEVER_EXPIRES),
                cell(&self.someone, U),
                na(NO_SCOPES),
                cell(&self.admin, OK),
            ],
        )
    }
}

// ---- The dynamic client --------------------------------------------------------------------

#[derive(Clone)]
struct DynamicCodec(MessageDescriptor);

struct DynamicEncoder;
struct DynamicDecoder(MessageDescriptor);

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder(self.0.clone())
    }
}

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encode: {e}")))
    }
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decode: {e}")))
    }
}

/// Calls `method` with `requests` (proto3 JSON) as `token`'s holder; the code of the answer. A
/// stream that is still open after a moment has been let through: OK.
async fn call(
    channel: &Channel,
    method: &MethodDescriptor,
    requests: &[Value],
    token: Option<&str>,
) -> Status {
    let messages: Vec<DynamicMessage> = requests
        .iter()
        .map(|json| {
            DynamicMessage::deserialize(method.input(), json)
                .unwrap_or_else(|e| panic!("{}: request {json}: {e}", method.full_name()))
        })
        .collect();
    let path: http::uri::PathAndQuery =
        format!("/{}/{}", method.parent_service().full_name(), method.name())
            .parse()
            .unwrap();
    fn with<T>(token: Option<&str>, message: T) -> Request<T> {
        match token {
            Some(token) => authed(message, token),
            None => Request::new(message),
        }
    }
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let codec = DynamicCodec(method.output());
    let outcome = match (method.is_client_streaming(), method.is_server_streaming()) {
        (false, false) => grpc
            .unary(
                with(token, messages.into_iter().next().unwrap()),
                path,
                codec,
            )
            .await
            .map(|_| ()),
        (false, true) => match grpc
            .server_streaming(
                with(token, messages.into_iter().next().unwrap()),
                path,
                codec,
            )
            .await
        {
            Ok(response) => {
                let mut stream = response.into_inner();
                match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
                    Ok(first) => first.map(|_| ()),
                    Err(_) => Ok(()),
                }
            }
            Err(status) => Err(status),
        },
        (true, false) => grpc
            .client_streaming(with(token, tokio_stream::iter(messages)), path, codec)
            .await
            .map(|_| ()),
        (true, true) => match grpc
            .streaming(with(token, tokio_stream::iter(messages)), path, codec)
            .await
        {
            Ok(response) => response.into_inner().message().await.map(|_| ()),
            Err(status) => Err(status),
        },
    };
    outcome.err().unwrap_or_else(|| Status::ok(""))
}

fn meets(status: &Status, expect: &Expect) -> bool {
    match expect {
        Expect::Code(code) => status.code() == *code,
        Expect::Authorized => !matches!(
            status.code(),
            Code::Unauthenticated
                | Code::PermissionDenied
                | Code::Internal
                | Code::Unknown
                | Code::Unimplemented
        ),
        Expect::NotApplicable(_) => true,
    }
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

// ---- The table -----------------------------------------------------------------------------

#[tokio::test]
async fn every_rpc_answers_each_caller_as_the_table_says() {
    let (identity, identity_url) = FakeIdentity::start().await;
    let market = Market::start_with(|c| c.registry_identity_url = identity_url).await;
    let server = &market.server;
    let channel = server.channel.clone();
    let admin = server.admin_token.expose().to_owned();
    let pool = sqlx::PgPool::connect_with(server.database.clone())
        .await
        .unwrap();
    let mut rows = Vec::new();

    // Registry: alice owns `authz-a` (two versions) and `authz-gone`; bob is anyone else.
    let registry =
        registry_pb::registry_service_client::RegistryServiceClient::new(channel.clone());
    let alice = identity.user("alice");
    let bob = identity.user("bob");
    for token in [&alice, &bob] {
        registry
            .clone()
            .sign_in(authed(registry_pb::SignInRequest {}, token))
            .await
            .unwrap();
    }
    for (name, version) in [("authz-a", "1.0.0"), ("authz-gone", "1.0.0")] {
        publish(
            registry.clone(),
            &alice,
            manifest(name, version),
            &tarball(name),
        )
        .await
        .unwrap();
    }
    crate::registry::publish_version(
        registry.clone(),
        &alice,
        "authz-a",
        manifest("authz-a", "1.1.0"),
        &tarball("authz-a 1.1"),
    )
    .await
    .unwrap();
    let api_token = |name: &str, scopes: &[registry_pb::TokenScope]| {
        let mut registry = registry.clone();
        let request = registry_pb::CreateApiTokenRequest {
            name: name.to_owned(),
            scopes: scopes.iter().map(|s| *s as i32).collect(),
            ..Default::default()
        };
        let alice = alice.clone();
        async move {
            let created = registry
                .create_api_token(authed(request, &alice))
                .await
                .unwrap()
                .into_inner();
            (created.token, created.api_token.unwrap().id)
        }
    };
    use registry_pb::TokenScope as S;
    let all = [S::PublishNew, S::PublishUpdate, S::Yank, S::Star];
    let (alice_all, _) = api_token("all", &all).await;
    let (alice_star, _) = api_token("star only", &[S::Star]).await;
    let (alice_publish, _) = api_token("publish only", &[S::PublishNew]).await;
    let (alice_expired, _) = api_token("expired", &all).await;
    let (_, revocable) = api_token("to revoke", &[S::Star]).await;
    sqlx::query(
        "UPDATE registry.api_tokens SET expires_at = now() - interval '1 minute' WHERE name = 'expired'",
    )
    .execute(&pool)
    .await
    .unwrap();

    let r = "quintet.registry.v1.RegistryService/";
    // An RPC for the signed-in user's own account: anyone signed in may call it for themselves;
    // `lacking` is what a scoped API token gets.
    let own = |method: &'static str, request: Value, lacking: Expect| {
        row(
            method,
            request,
            [
                Cell(None, U),
                cell(GARBAGE, U),
                cell(&alice_expired, U),
                cell(&bob, OK),
                cell(&alice_star, lacking),
                cell(&alice, OK),
            ],
        )
    };
    // An RPC on alice's package: bob is refused; `lacking` holds a token without the scope.
    let owned = |method: &'static str, requests: Vec<Value>, lacking: &str, right: &str| {
        stream_row(
            method,
            requests,
            [
                Cell(None, U),
                cell(GARBAGE, U),
                cell(&alice_expired, U),
                cell(&bob, P),
                cell(lacking, P),
                cell(right, OK),
            ],
        )
    };
    let registry_admin = |method: &'static str, request: Value| {
        row(
            method,
            request,
            [
                Cell(None, U),
                cell(GARBAGE, U),
                cell(&alice_expired, U),
                cell(&bob, P),
                cell(&alice_all, P),
                cell(&admin, OK),
            ],
        )
    };
    let publish_json = |name: &str, version: &str| json!({"header": {"manifest_json": manifest(name, version), "readme": "# r", "tarball_sha256": ""}});
    let chunk = |body: &str| json!({"chunk": b64(&tarball(body))});
    rows.extend([
        own(leak(format!("{r}SignIn")), json!({}), OK),
        registry_admin(leak(format!("{r}CreateUser")), json!({"username": "carol"})),
        own(
            leak(format!("{r}CreateApiToken")),
            json!({"name": "matrix", "scopes": ["TOKEN_SCOPE_STAR"]}),
            P,
        ),
        own(leak(format!("{r}ListApiTokens")), json!({}), P),
        stream_row(
            leak(format!("{r}PublishPackage")),
            vec![publish_json("authz-new", "1.0.0"), chunk("new")],
            [
                Cell(None, U),
                cell(GARBAGE, U),
                cell(&alice_expired, U),
                na(Expect::NotApplicable(
                    "publishing a new name acts for the caller alone",
                )),
                cell(&alice_star, P),
                cell(&alice_publish, OK),
            ],
        ),
        owned(
            leak(format!("{r}PublishVersion")),
            vec![
                json!({"header": {"package_name": "authz-a", "publish": publish_json("authz-a", "1.2.0")["header"]}}),
                chunk("1.2"),
            ],
            &alice_star,
            &alice_all,
        ),
        public(leak(format!("{r}GetPackage")), json!({"name": "authz-a"})),
        public(
            leak(format!("{r}GetVersion")),
            json!({"package_name": "authz-a", "version": "1.0.0"}),
        ),
        public(
            leak(format!("{r}ListVersions")),
            json!({"package_name": "authz-a"}),
        ),
        public(
            leak(format!("{r}CheckNameAvailability")),
            json!({"name": "authz-free"}),
        ),
        public(
            leak(format!("{r}DownloadVersion")),
            json!({"package_name": "authz-a", "version": "1.0.0"}),
        ),
        public(leak(format!("{r}ListPackages")), json!({})),
        public(leak(format!("{r}SearchPackages")), json!({"query": "authz"})),
        own(
            leak(format!("{r}StarPackage")),
            json!({"package_name": "authz-a"}),
            OK,
        ),
        own(
            leak(format!("{r}UnstarPackage")),
            json!({"package_name": "authz-a"}),
            OK,
        ),
        public(
            leak(format!("{r}ListStargazers")),
            json!({"package_name": "authz-a"}),
        ),
        public(leak(format!("{r}ListUserStars")), json!({"username": "alice"})),
        owned(
            leak(format!("{r}YankVersion")),
            vec![json!({"package_name": "authz-a", "version": "1.0.0"})],
            &alice_star,
            &alice_all,
        ),
        owned(
            leak(format!("{r}UnyankVersion")),
            vec![json!({"package_name": "authz-a", "version": "1.0.0"})],
            &alice_star,
            &alice_all,
        ),
        owned(
            leak(format!("{r}AddOwner")),
            vec![json!({"package_name": "authz-a", "username": "bob"})],
            &alice_all,
            &alice,
        ),
        owned(
            leak(format!("{r}RemoveOwner")),
            vec![json!({"package_name": "authz-a", "username": "bob"})],
            &alice_all,
            &alice,
        ),
        public(leak(format!("{r}ListOwners")), json!({"package_name": "authz-a"})),
        registry_admin(
            leak(format!("{r}AddFeatured")),
            json!({"package_name": "authz-a"}),
        ),
        registry_admin(
            leak(format!("{r}RemoveFeatured")),
            json!({"package_name": "authz-a"}),
        ),
        public(leak(format!("{r}ListFeatured")), json!({})),
        public(leak(format!("{r}WatchRegistryEvents")), json!({})),
        owned(
            leak(format!("{r}DeleteVersion")),
            vec![json!({"package_name": "authz-a", "version": "1.1.0"})],
            &alice_star,
            &alice_all,
        ),
        owned(
            leak(format!("{r}DeletePackage")),
            vec![json!({"package_name": "authz-gone"})],
            &alice_all,
            &alice,
        ),
        row(
            leak(format!("{r}RevokeApiToken")),
            json!({"id": revocable}),
            [
                Cell(None, U),
                cell(GARBAGE, U),
                cell(&alice_expired, U),
                cell(&bob, NF),
                cell(&alice_star, P),
                cell(&alice, OK),
            ],
        ),
    ]);

    // Store, Griot and the admin service: the admin token alone.
    let only = AdminOnly {
        admin: admin.clone(),
        someone: alice_all.clone(),
    };
    let manifest_id = crate::store::put(
        server,
        crate::store::object(&[("a", "", b"hello"), ("b", "", b"world")], 3),
    )
    .await
    .unwrap()
    .manifest
    .unwrap()
    .id;
    let s = "quintet.store.v1.StoreService/";
    rows.extend([
        only.stream(
            leak(format!("{s}PutObject")),
            vec![
                json!({"manifest": {"class_id": uuid::Uuid::new_v4().to_string(), "unpacker_name": "u"}}),
                json!({"content": {"content_name": "a", "content_type": "text/plain", "serializer_name": "raw@v1", "serializer_type": "SERIALIZER_TYPE_VALUE"}}),
                json!({"chunk": b64(b"hello")}),
            ],
        ),
        only.row(
            leak(format!("{s}GetObject")),
            json!({"manifest_id": manifest_id}),
        ),
        only.row(
            leak(format!("{s}GetContent")),
            json!({"manifest_id": manifest_id, "content_name": "a"}),
        ),
        only.row(
            leak(format!("{s}GetManifest")),
            json!({"manifest_id": manifest_id}),
        ),
        only.row(leak(format!("{s}ListManifests")), json!({})),
        only.row(
            leak(format!("{s}ListContents")),
            json!({"manifest_id": manifest_id}),
        ),
        only.row(leak(format!("{s}WatchManifests")), json!({})),
        only.row(leak(format!("{s}CollectGarbage")), json!({"grace_seconds": 3600})),
        only.row(
            leak(format!("{s}DeleteObject")),
            json!({"manifest_id": manifest_id}),
        ),
    ]);
    let g = "quintet.griot.v1.GriotService/";
    let job = uuid::Uuid::new_v4().to_string();
    let package = "ab".repeat(32);
    rows.extend([
        only.stream(
            leak(format!("{g}RegisterPackage")),
            vec![json!({"header": {"manifest_json": "{}"}})],
        ),
        public(leak(format!("{g}GetPackage")), json!({"package_id": package})),
        public(leak(format!("{g}ListPackages")), json!({})),
        only.row(
            leak(format!("{g}SetAuthorTrust")),
            json!({"author_did": "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK", "trust": "TRUST_TRUSTED"}),
        ),
        only.row(leak(format!("{g}ListAuthorTrust")), json!({})),
        only.row(
            leak(format!("{g}CreateInstallation")),
            json!({"package_id": package, "target_node_id": "node-1"}),
        ),
        only.row(leak(format!("{g}GetInstallation")), json!({"job_id": job})),
        only.row(leak(format!("{g}ListInstallations")), json!({})),
        only.row(leak(format!("{g}CancelInstallation")), json!({"job_id": job})),
        only.row(
            leak(format!("{g}StreamInstallationLogs")),
            json!({"job_id": job}),
        ),
        only.row(
            leak(format!("{g}ListNodePackages")),
            json!({"target_node_id": "node-1"}),
        ),
    ]);
    rows.push(only.row("quintet.admin.v1.AdminService/GetServerInfo", json!({})));

    // Market: sessions of two users; seller alice has a dataset, a draft, a published datapod
    // and a conversation. Unpublished datapods and conversations exist only for their owner:
    // anyone else is told NOT_FOUND, not PERMISSION_DENIED.
    let seller = market.user("alice").await;
    let buyer = market.user("bob").await;
    let expired_session = market.user("alice").await;
    sqlx::query(
        "UPDATE market.sessions SET expires_at = now() - interval '1 minute' WHERE token_sha256 = $1",
    )
    .bind(quintet::auth::TokenDigest::of(&expired_session).as_bytes().as_slice())
    .execute(&pool)
    .await
    .unwrap();
    let leaving = market.user("alice").await;
    let dataset = market.upload(&seller, "text/plain", b"rows").await.unwrap();
    let spare = market
        .upload(&seller, "text/plain", b"more rows")
        .await
        .unwrap();
    let published = market
        .datapod(&seller, "Weather", "daily weather", "climate", 1_000)
        .await;
    let draft = market
        .client()
        .create_datapod(authed(
            market_pb::CreateDatapodRequest {
                dataset_id: spare.id.clone(),
                title: "Draft".into(),
                description: "not yet".into(),
                category: "climate".into(),
                price_mist: 5,
            },
            &seller,
        ))
        .await
        .unwrap()
        .into_inner()
        .datapod
        .unwrap();
    let conversation = market
        .client()
        .create_conversation(authed(
            market_pb::CreateConversationRequest {
                title: "questions".into(),
            },
            &seller,
        ))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    let unknown = uuid::Uuid::new_v4().to_string();
    let m = "quintet.market.v1.MarketService/";
    let session = |method: &'static str, request: Value, other: Expect, right: &str| {
        row(
            method,
            request,
            [
                Cell(None, U),
                cell(GARBAGE, U),
                cell(&expired_session, U),
                cell(&buyer, other),
                na(SESSIONS_UNSCOPED),
                cell(right, OK),
            ],
        )
    };
    let upload = |header: Value| vec![header, json!({"chunk": b64(b"a,b\n1,2\n")})];
    rows.extend([
        row(
            leak(format!("{m}SignIn")),
            json!({"id_token": market.id_token("dave")}),
            [
                Cell(None, OK),
                cell(GARBAGE, OK),
                na(Expect::NotApplicable(
                    "the credential is the request's ID token, not a bearer token",
                )),
                na(Expect::NotApplicable(
                    "the credential is the request's ID token, not a bearer token",
                )),
                na(SESSIONS_UNSCOPED),
                Cell(None, OK),
            ],
        ),
        session(leak(format!("{m}GetCurrentUser")), json!({}), OK, &seller),
        session(leak(format!("{m}GetSuiAddressChallenge")), json!({}), OK, &seller),
        session(
            leak(format!("{m}ProveSuiAddress")),
            json!({"signature": "AAAA"}),
            Expect::Code(Code::InvalidArgument),
            &seller,
        ),
        Row {
            method: leak(format!("{m}UploadDataset")),
            requests: upload(json!({"header": {"file_type": "text/csv"}})),
            cells: [
                Cell(None, U),
                cell(GARBAGE, U),
                cell(&expired_session, U),
                cell(&buyer, OK),
                na(SESSIONS_UNSCOPED),
                cell(&seller, OK),
            ],
        },
        session(
            leak(format!("{m}CreateDatapod")),
            json!({"dataset_id": dataset.id, "title": "T", "description": "d", "category": "climate", "price_mist": 7}),
            NF,
            &seller,
        ),
        session(
            leak(format!("{m}UpdateDatapod")),
            json!({"id": published.id, "title": "Weather!", "update_mask": "title"}),
            P,
            &seller,
        ),
        session(
            leak(format!("{m}PublishDatapod")),
            json!({"id": draft.id}),
            NF,
            &seller,
        ),
        public(leak(format!("{m}GetDatapod")), json!({"id": published.id})),
        public(leak(format!("{m}SearchDatapods")), json!({"query": "weather"})),
        session(leak(format!("{m}ListMyDatapods")), json!({}), OK, &seller),
        session(
            leak(format!("{m}CreatePurchase")),
            json!({"datapod_id": published.id, "payment_tx_digest": "4vJ9JU1bJJE96FWSJKvHsmmFADCg4gpZQff4P3bkLKi", "buyer_public_key": b64(&[9u8; 32]), "idempotency_key": "k1"}),
            OK,
            &buyer,
        ),
        session(leak(format!("{m}GetPurchase")), json!({"id": unknown}), NF, &buyer),
        session(leak(format!("{m}ListPurchaseHistory")), json!({}), OK, &buyer),
        session(
            leak(format!("{m}RefundPurchase")),
            json!({"id": unknown, "reason": "no"}),
            NF,
            &buyer,
        ),
        session(
            leak(format!("{m}DownloadDataset")),
            json!({"purchase_id": unknown}),
            NF,
            &buyer,
        ),
        session(
            leak(format!("{m}CreateReview")),
            json!({"purchase_id": unknown, "rating": 5, "comment": "good"}),
            NF,
            &buyer,
        ),
        session(
            leak(format!("{m}UpdateReview")),
            json!({"id": unknown, "rating": 4, "update_mask": "rating"}),
            NF,
            &buyer,
        ),
        public(
            leak(format!("{m}ListReviews")),
            json!({"datapod_id": published.id}),
        ),
        session(
            leak(format!("{m}UnpublishDatapod")),
            json!({"id": published.id}),
            P,
            &seller,
        ),
        session(leak(format!("{m}GetSellerAnalytics")), json!({}), OK, &seller),
        session(
            leak(format!("{m}CreateConversation")),
            json!({"title": "more"}),
            OK,
            &seller,
        ),
        session(leak(format!("{m}ListConversations")), json!({}), OK, &seller),
        session(
            leak(format!("{m}GetConversation")),
            json!({"id": conversation.id}),
            NF,
            &seller,
        ),
        session(
            leak(format!("{m}SendMessage")),
            json!({"conversation_id": conversation.id, "content": "hello"}),
            NF,
            &seller,
        ),
        session(
            leak(format!("{m}DeleteDatapod")),
            json!({"id": draft.id}),
            NF,
            &seller,
        ),
        row(
            leak(format!("{m}SignOut")),
            json!({}),
            [
                Cell(None, U),
                cell(GARBAGE, U),
                cell(&expired_session, U),
                na(Expect::NotApplicable(
                    "signing out ends the caller's own session",
                )),
                na(SESSIONS_UNSCOPED),
                cell(&leaving, OK),
            ],
        ),
    ]);

    // PDS: alice and bob have accounts; alice also an app-password session. Carol's account is
    // the one that gets deactivated and deleted, with sessions of her own.
    let pds = pds_pb::pds_service_client::PdsServiceClient::new(channel.clone());
    let alice_pds = create_account(server, "alice.test").await;
    let bob_pds = create_account(server, "bob.test").await;
    let carol_pds = create_account(server, "carol.test").await;
    let app_session = |who: pds_pb::Session| {
        let mut pds = pds.clone();
        async move {
            let password = pds
                .create_app_password(authed(
                    pds_pb::CreateAppPasswordRequest {
                        name: "phone".into(),
                    },
                    &who.access_jwt,
                ))
                .await
                .unwrap()
                .into_inner()
                .password;
            pds.create_session(pds_pb::CreateSessionRequest {
                identifier: who.handle.clone(),
                password,
            })
            .await
            .unwrap()
            .into_inner()
            .session
            .unwrap()
        }
    };
    let alice_app = app_session(alice_pds.clone()).await;
    let carol_app = app_session(carol_pds.clone()).await;
    let alice_expired = expired_copy(server, &alice_pds.access_jwt).await;
    let alice_refresh_expired = expired_copy(server, &alice_pds.refresh_jwt).await;
    let carol_expired = expired_copy(server, &carol_pds.access_jwt).await;
    let record = pds
        .clone()
        .create_record(authed(
            pds_pb::CreateRecordRequest {
                repo: alice_pds.did.clone(),
                collection: "app.bsky.feed.post".into(),
                record: post("first"),
                ..Default::default()
            },
            &alice_pds.access_jwt,
        ))
        .await
        .unwrap()
        .into_inner();
    let rkey = record.uri.rsplit('/').next().unwrap().to_owned();
    let post_json = json!({"$type": "app.bsky.feed.post", "text": "matrix", "createdAt": "2026-11-24T00:00:00.000Z"});
    let did = alice_pds.did.clone();
    let p = "quintet.pds.v1.PdsService/";
    // An RPC on the caller's own account or repo: bob acting on alice's repo is refused;
    // `lacking` is what an app-password session gets.
    let repo = |method: &'static str, requests: Vec<Value>, other: Expect, lacking: Expect| {
        stream_row(
            method,
            requests,
            [
                Cell(None, U),
                cell(GARBAGE, U),
                cell(&alice_expired, U),
                cell(&bob_pds.access_jwt, other),
                cell(&alice_app.access_jwt, lacking),
                cell(&alice_pds.access_jwt, OK),
            ],
        )
    };
    let carol = |method: &'static str, request: Value| {
        row(
            method,
            request,
            [
                Cell(None, U),
                cell(GARBAGE, U),
                cell(&carol_expired, U),
                na(Expect::NotApplicable(
                    "acts on the caller's own account: another user's token acts on theirs",
                )),
                cell(&carol_app.access_jwt, P),
                cell(&carol_pds.access_jwt, OK),
            ],
        )
    };
    let credential_in_request = Expect::NotApplicable("the credential is the request's password");
    rows.extend([
        row(
            leak(format!("{p}CreateAccount")),
            json!({"handle": "dave.test", "email": "dave@example.com", "password": "correct horse battery"}),
            [
                Cell(None, OK),
                cell(GARBAGE, OK),
                na(PUBLIC),
                na(PUBLIC),
                na(PUBLIC),
                Cell(None, OK),
            ],
        ),
        row(
            leak(format!("{p}CreateSession")),
            json!({"identifier": "alice.test", "password": "correct horse battery"}),
            [
                Cell(None, OK),
                cell(GARBAGE, OK),
                na(credential_in_request.clone()),
                na(credential_in_request.clone()),
                na(credential_in_request),
                Cell(None, OK),
            ],
        ),
        row(
            leak(format!("{p}RefreshSession")),
            json!({}),
            [
                Cell(None, U),
                cell(GARBAGE, U),
                cell(&alice_refresh_expired, U),
                na(Expect::NotApplicable(
                    "a refresh token refreshes its own session only",
                )),
                // An access token is not a refresh token.
                cell(&alice_pds.access_jwt, U),
                cell(&bob_pds.refresh_jwt, OK),
            ],
        ),
        repo(leak(format!("{p}GetSession")), vec![json!({})], OK, OK),
        repo(
            leak(format!("{p}CreateAppPassword")),
            vec![json!({"name": "laptop"})],
            OK,
            P,
        ),
        repo(leak(format!("{p}ListAppPasswords")), vec![json!({})], OK, P),
        // By name, among the caller's own: bob revokes his own `laptop`, never alice's.
        repo(
            leak(format!("{p}RevokeAppPassword")),
            vec![json!({"name": "laptop"})],
            OK,
            P,
        ),
        repo(
            leak(format!("{p}UpdateHandle")),
            vec![json!({"handle": "alice2.test"})],
            OK,
            P,
        ),
        row(
            leak(format!("{p}SetAccountTakedown")),
            json!({"did": bob_pds.did, "takendown": false}),
            [
                Cell(None, U),
                cell(GARBAGE, U),
                na(NEVER_EXPIRES),
                cell(&alice_pds.access_jwt, U),
                na(NO_SCOPES),
                cell(&admin, OK),
            ],
        ),
        repo(
            leak(format!("{p}CreateRecord")),
            vec![json!({"repo": did, "collection": "app.bsky.feed.post", "record": post_json})],
            P,
            OK,
        ),
        repo(
            leak(format!("{p}PutRecord")),
            vec![json!({"repo": did, "collection": "app.bsky.feed.post", "rkey": rkey, "record": post_json})],
            P,
            OK,
        ),
        repo(
            leak(format!("{p}ApplyWrites")),
            vec![json!({"repo": did, "writes": [{"create": {"collection": "app.bsky.feed.post", "value": post_json}}]})],
            P,
            OK,
        ),
        public(
            leak(format!("{p}GetRecord")),
            json!({"repo": did, "collection": "app.bsky.feed.post", "rkey": rkey}),
        ),
        public(
            leak(format!("{p}ListRecords")),
            json!({"repo": did, "collection": "app.bsky.feed.post"}),
        ),
        public(leak(format!("{p}DescribeRepo")), json!({"repo": did})),
        public(leak(format!("{p}GetRepo")), json!({"did": did})),
        public(leak(format!("{p}GetLatestCommit")), json!({"did": did})),
        public(leak(format!("{p}ListRepos")), json!({})),
        public(leak(format!("{p}GetRepoStatus")), json!({"did": did})),
        public(
            leak(format!("{p}GetBlocks")),
            json!({"did": did, "cids": [record.cid]}),
        ),
        public(
            leak(format!("{p}GetRecordProof")),
            json!({"did": did, "collection": "app.bsky.feed.post", "rkey": rkey}),
        ),
        public(leak(format!("{p}SubscribeRepos")), json!({})),
        repo(
            leak(format!("{p}UploadBlob")),
            vec![
                json!({"header": {"mime_type": "text/plain"}}),
                json!({"chunk": b64(b"blob bytes")}),
            ],
            OK,
            OK,
        ),
        public(
            leak(format!("{p}GetBlob")),
            json!({"did": did, "cid": "bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy"}),
        ),
        public(leak(format!("{p}ListBlobs")), json!({"did": did})),
        repo(
            leak(format!("{p}DeleteRecord")),
            vec![json!({"repo": did, "collection": "app.bsky.feed.post", "rkey": rkey})],
            P,
            OK,
        ),
        repo(
            leak(format!("{p}ImportRepo")),
            vec![json!({"chunk": b64(b"not a car file")})],
            OK,
            P,
        ),
        carol(leak(format!("{p}DeactivateAccount")), json!({})),
        carol(leak(format!("{p}ActivateAccount")), json!({})),
        row(
            leak(format!("{p}DeleteSession")),
            json!({}),
            [
                Cell(None, U),
                cell(GARBAGE, U),
                cell(&alice_refresh_expired, U),
                na(Expect::NotApplicable(
                    "a refresh token ends its own session only",
                )),
                cell(&carol_pds.access_jwt, U),
                cell(&carol_app.refresh_jwt, OK),
            ],
        ),
        carol(
            leak(format!("{p}DeleteAccount")),
            json!({"password": "correct horse battery"}),
        ),
    ]);

    // Health and reflection are open to all.
    for method in ["grpc.health.v1.Health/Check", "grpc.health.v1.Health/Watch"] {
        rows.push(public(method, json!({})));
    }
    for method in [
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ] {
        rows.push(Row {
            requests: vec![json!({"list_services": ""})],
            ..public(method, json!({}))
        });
    }

    // Every served method has a row, and every row a served method.
    let served = crate::reflection::served_methods(&channel).await;
    let served_names: BTreeSet<String> = served
        .iter()
        .map(|m| format!("{}/{}", m.parent_service().full_name(), m.name()))
        .collect();
    let table_names: BTreeSet<String> = rows.iter().map(|r| r.method.to_owned()).collect();
    let missing: Vec<_> = served_names.difference(&table_names).collect();
    let unknown_rows: Vec<_> = table_names.difference(&served_names).collect();
    assert!(
        missing.is_empty(),
        "served RPCs missing from the matrix: {missing:?}"
    );
    assert!(
        unknown_rows.is_empty(),
        "rows for RPCs not served: {unknown_rows:?}"
    );
    assert_eq!(rows.len(), table_names.len(), "a method has two rows");

    let descriptor = |name: &str| {
        served
            .iter()
            .find(|m| format!("{}/{}", m.parent_service().full_name(), m.name()) == name)
            .unwrap()
            .clone()
    };
    let mut failures = Vec::new();
    // Per service: (RPCs, cells checked, cells not applicable).
    let mut tally: std::collections::BTreeMap<&str, (usize, usize, usize)> = Default::default();
    for row in &rows {
        tally
            .entry(row.method.split('/').next().unwrap())
            .or_default()
            .0 += 1;
    }
    // Wrong callers over the whole table first, then the right ones.
    for pass in [0..5, 5..6] {
        for row in &rows {
            let method = descriptor(row.method);
            for variant in pass.clone() {
                let Cell(token, expect) = &row.cells[variant];
                let counts = tally
                    .get_mut(row.method.split('/').next().unwrap())
                    .unwrap();
                if let Expect::NotApplicable(why) = expect {
                    assert!(!why.is_empty());
                    counts.2 += 1;
                    continue;
                }
                let status = call(&channel, &method, &row.requests, token.as_deref()).await;
                counts.1 += 1;
                if !meets(&status, expect) {
                    failures.push(format!(
                        "{} with {}: expected {expect:?}, got {:?} {:?}",
                        row.method,
                        VARIANTS[variant],
                        status.code(),
                        status.message()
                    ));
                }
            }
        }
    }
    for (service, (rpcs, checked, not_applicable)) in &tally {
        println!(
            "authorization matrix: {service}: {rpcs} RPCs, {checked} cells checked, {not_applicable} not applicable"
        );
    }
    println!(
        "authorization matrix: {} RPCs x {} callers = {} cells, {} failed, 0 RPCs missing",
        rows.len(),
        VARIANTS.len(),
        rows.len() * VARIANTS.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The table's method names live as long as the test.
fn leak(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}
