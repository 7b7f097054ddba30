//! Hostile input: a protocol fuzzer over every method the server serves.
//!
//! It learns the methods the way any client can, through server reflection, then sends each a
//! few hundred hostile requests built from the reflected descriptors: random messages with
//! hostile field values, boundary values, truncated and mutated encodings, raw bytes and
//! malformed wire data; streams of them to streaming methods; with no token, a garbage token,
//! the admin token and a signed-in user's token (market, PDS and registry have users of their
//! own). Every answer is checked: bad input is the caller's error (never INTERNAL, UNKNOWN,
//! DATA_LOSS, CANCELLED or UNIMPLEMENTED), an INVALID_ARGUMENT names a field of the request, no
//! answer leaks SQL, database errors, server paths, panic text or secrets, no handler panics,
//! and the server stays healthy. All findings are collected and reported together with the seed
//! that reproduces them.
//!
//! `PROTOCOL_FUZZ_SEED` replays a run, `PROTOCOL_FUZZ_CASES` sets the requests per method and
//! `PROTOCOL_FUZZ_METHOD` keeps only the methods whose path contains it; `PROTOCOL_FUZZ_CASE`
//! replays one case and shows what it sends; `PROTOCOL_FUZZ_SHOW_CODES=Unavailable,...` prints
//! every answer with one of those codes.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex, Once},
    time::{Duration, Instant},
};

use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes};
use futures::StreamExt as _;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    MethodDescriptor, Value,
};
use tonic::{
    Code, Request, Status, Streaming,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::MetadataValue,
    transport::Channel,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::harness::TestServer;

/// Requests per method unless `PROTOCOL_FUZZ_CASES` says otherwise.
const DEFAULT_CASES: u64 = 300;
/// Requests in flight at once against one method.
const IN_FLIGHT: usize = 16;
/// A unary answer (or a stream's first answer) slower than this is a hang.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long to wait for each further message of a server stream before dropping it: follow
/// streams legitimately stay open.
const STREAM_READ_TIMEOUT: Duration = Duration::from_millis(300);
/// Messages read from a server stream before it is dropped.
const STREAM_READS: usize = 4;
/// Threads of the fuzzer's runtime (client and server both run on it): panics on them are the
/// server's.
const RUNTIME_THREADS: &str = "protocol-fuzz-rt";
/// Codes that bad input must never produce. CANCELLED too: the fuzzer never cancels a call
/// before its answer, so such an answer blames the client for the server's choice.
const FORBIDDEN_CODES: &[Code] = &[
    Code::Internal,
    Code::Unknown,
    Code::Unimplemented,
    Code::DataLoss,
    Code::Cancelled,
];

// ---------------------------------------------------------------------------------------------
// The test.

#[test]
fn every_served_method_survives_hostile_input() {
    install_panic_recorder();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(RUNTIME_THREADS)
        .enable_all()
        .build()
        .unwrap()
        .block_on(fuzz_every_method());
}

async fn fuzz_every_method() {
    let seed = std::env::var("PROTOCOL_FUZZ_SEED")
        .ok()
        .map(|s| parse_seed(&s))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let cases: u64 = std::env::var("PROTOCOL_FUZZ_CASES")
        .ok()
        .map(|s| s.parse().expect("PROTOCOL_FUZZ_CASES is a number"))
        .unwrap_or(DEFAULT_CASES);
    let only = std::env::var("PROTOCOL_FUZZ_METHOD").ok();
    let only_case: Option<u64> = std::env::var("PROTOCOL_FUZZ_CASE")
        .ok()
        .map(|s| s.parse().expect("PROTOCOL_FUZZ_CASE is a number"));
    println!("protocol fuzz: seed {seed} (replay with PROTOCOL_FUZZ_SEED={seed})");

    let started = Instant::now();
    // The market's harness runs an OpenID Connect issuer, so the fuzzer can sign a market user
    // in. Upstreams the server would call on a client's behalf point at a closed loopback port:
    // the fuzzer must not reach the internet, and a dead upstream is hostile input too.
    let mut market = crate::market::Market::start_with(|c| {
        c.registry_identity_url = "http://127.0.0.1:1".to_owned();
        c.market_sui_rpc_url = "http://127.0.0.1:1".to_owned();
    })
    .await;
    let mut users = Users::sign_up(&market.server).await;
    let mut target = Target::of(&market.server, users.known());
    let server = &market.server;
    let (pool, listed) = crate::reflection::reflected_pool(&server.channel).await;
    for expected in [
        "quintet.admin.v1.AdminService",
        "quintet.registry.v1.RegistryService",
        "quintet.store.v1.StoreService",
        "quintet.griot.v1.GriotService",
        "quintet.market.v1.MarketService",
        "quintet.pds.v1.PdsService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            listed.iter().any(|s| s == expected),
            "reflection does not list {expected}: {listed:?}"
        );
    }
    let mut methods = Vec::new();
    for name in &listed {
        let service = pool
            .get_service_by_name(name)
            .unwrap_or_else(|| panic!("reflection lists {name} but describes no such service"));
        methods.extend(service.methods());
    }
    methods.sort_by(|a, b| a.full_name().cmp(b.full_name()));
    if let Some(only) = &only {
        methods.retain(|m| path_of(m).contains(only.as_str()));
    }

    let mut findings = Vec::new();
    // Answers per service and code: how far past validation and authorization the requests got.
    let mut answers: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut calls = 0u64;
    let mut messages = 0u64;
    for method in &methods {
        let path = path_of(method);
        // A fresh user token for each method: the previous one may have signed itself out.
        // Each method on a connection of its own: h2's defences against rapid stream resets
        // (which dropping streams early looks like) end a connection, not the fuzzer's run.
        target.channel = Channel::from_shared(format!("http://{}", target.addr))
            .unwrap()
            .connect()
            .await
            .expect("a connection to the server");
        target.user_token = users.token_for(server, &market, method).await;
        target.known = Arc::new(users.known());
        let range = match only_case {
            Some(case) => case..case + 1,
            None => 0..cases,
        };
        let mut outcomes = futures::stream::iter(range)
            .map(|case| run_case(&target, method, seed, case, only_case.is_some()))
            .buffer_unordered(IN_FLIGHT);
        while let Some(outcome) = outcomes.next().await {
            calls += 1;
            messages += outcome.messages_sent;
            let code = outcome
                .code
                .map(|c| format!("{c:?}"))
                .unwrap_or("hang".into());
            *answers
                .entry((method.parent_service().name().to_owned(), code))
                .or_default() += 1;
            findings.extend(outcome.findings);
        }
        for panic in take_panics() {
            findings.push(Finding::server(
                &path,
                format!("a handler panicked: {panic}"),
            ));
        }
        if let Err(problem) = target.healthy().await {
            findings.push(Finding::server(&path, problem));
            break;
        }
    }

    // The server task itself must have survived: it drains cleanly on shutdown.
    if tokio::time::timeout(Duration::from_secs(30), market.server.shutdown())
        .await
        .is_err()
    {
        findings.push(Finding::server(
            "shutdown",
            "did not drain within 30 s".to_owned(),
        ));
    }
    for panic in take_panics() {
        findings.push(Finding::server("background", format!("panicked: {panic}")));
    }

    let services = {
        let mut names: Vec<_> = methods
            .iter()
            .map(|m| m.parent_service().full_name().to_owned())
            .collect();
        names.dedup();
        names.len()
    };
    let mut by_service = String::new();
    for ((service, code), count) in &answers {
        let _ = write!(by_service, " {service}/{code}={count}");
    }
    println!("protocol fuzz answers:{by_service}");
    println!(
        "protocol fuzz summary: {} methods of {services} services covered, {calls} calls, \
         {messages} messages sent, {} findings, seed {seed}, {:.1} s",
        methods.len(),
        findings.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(findings.is_empty(), "{}", report(&findings, seed));
}

fn parse_seed(text: &str) -> u64 {
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .expect("PROTOCOL_FUZZ_SEED is a number")
}

fn path_of(method: &MethodDescriptor) -> String {
    format!("/{}/{}", method.parent_service().full_name(), method.name())
}

// ---------------------------------------------------------------------------------------------
// One case: a hostile request, its answer, and what is wrong with it.

/// The server under test and what it must never reveal.
struct Target {
    addr: SocketAddr,
    channel: Channel,
    admin_token: String,
    /// A signed-in user of the service under test, if it has users of its own.
    user_token: Option<String>,
    /// Identifiers the server gave the fuzzer's users, for plausible requests.
    known: Arc<Known>,
    secrets: Secrets,
}

impl Target {
    fn of(server: &TestServer, known: Known) -> Self {
        Target {
            addr: server.addr,
            channel: server.channel.clone(),
            admin_token: server.admin_token.expose().to_owned(),
            user_token: None,
            known: Arc::new(known),
            secrets: Secrets {
                secrets: vec![
                    server.admin_token.expose().to_owned(),
                    "7".repeat(64),
                    "8".repeat(64),
                ],
                paths: vec![
                    server.data_dir.path().display().to_string(),
                    env!("CARGO_MANIFEST_DIR").to_owned(),
                ],
            },
        }
    }

    /// Health answers SERVING on the connection the fuzzer used and on a fresh one.
    async fn healthy(&self) -> Result<(), String> {
        let fresh = tokio::time::timeout(
            Duration::from_secs(10),
            Channel::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect(),
        )
        .await
        .map_err(|_| "the server accepts no new connection within 10 s".to_owned())?
        .map_err(|e| format!("the server accepts no new connection: {e}"))?;
        for channel in [self.channel.clone(), fresh] {
            let answer = tokio::time::timeout(
                Duration::from_secs(10),
                HealthClient::new(channel).check(HealthCheckRequest {
                    service: String::new(),
                }),
            )
            .await
            .map_err(|_| "health did not answer within 10 s".to_owned())?
            .map_err(|s| format!("health check failed: {s:?}"))?;
            let status = answer.into_inner().status();
            if status != ServingStatus::Serving {
                return Err(format!("health answered {status:?}"));
            }
        }
        Ok(())
    }
}

/// Who calls.
#[derive(Debug, Clone)]
enum Caller {
    Anonymous,
    Garbage(String),
    Admin,
    /// A signed-in user of the service (market, PDS, registry); its bearer token.
    User(String),
}

impl Caller {
    fn label(&self) -> &'static str {
        match self {
            Caller::Anonymous => "no token",
            Caller::Garbage(_) => "garbage token",
            Caller::Admin => "admin token",
            Caller::User(_) => "user token",
        }
    }

    fn choose(rng: &mut Rng, user_token: Option<&str>) -> Self {
        match (rng.below(20), user_token) {
            (0..=2, _) => Caller::Anonymous,
            (3..=5, _) => Caller::Garbage(garbage_authorization(rng)),
            (6..=12, Some(token)) => Caller::User(token.to_owned()),
            _ => Caller::Admin,
        }
    }
}

/// Identifiers of the fuzzer's own users.
#[derive(Debug, Default)]
struct Known {
    dids: Vec<String>,
    handles: Vec<String>,
    usernames: Vec<String>,
}

/// The fuzzer's users: a registry user, a PDS account and a market user, each signed in anew
/// for every method of its service.
struct Users {
    registry_user: String,
    pds_accounts: Vec<quintet::proto::quintet::pds::v1::Session>,
    tokens_made: u32,
}

const PDS_PASSWORD: &str = "correct horse battery";

impl Users {
    async fn sign_up(server: &TestServer) -> Self {
        use quintet::proto::quintet::registry::v1 as registry;
        let registry_user = "fuzzer".to_owned();
        registry::registry_service_client::RegistryServiceClient::new(server.channel.clone())
            .create_user(crate::harness::authed(
                registry::CreateUserRequest {
                    username: registry_user.clone(),
                },
                server.admin_token.expose(),
            ))
            .await
            .expect("the fuzzer's registry user");
        let account = crate::pds::create_account(server, "fuzzer.test").await;
        Users {
            registry_user,
            pds_accounts: vec![account],
            tokens_made: 0,
        }
    }

    fn known(&self) -> Known {
        Known {
            dids: self.pds_accounts.iter().map(|a| a.did.clone()).collect(),
            handles: self.pds_accounts.iter().map(|a| a.handle.clone()).collect(),
            usernames: vec![self.registry_user.clone()],
        }
    }

    async fn token_for(
        &mut self,
        server: &TestServer,
        market: &crate::market::Market,
        method: &MethodDescriptor,
    ) -> Option<String> {
        use quintet::proto::quintet::{pds::v1 as pds, registry::v1 as registry};
        self.tokens_made += 1;
        match method.parent_service().full_name() {
            "quintet.market.v1.MarketService" => Some(market.user("fuzzer").await),
            "quintet.registry.v1.RegistryService" => {
                let made = registry::registry_service_client::RegistryServiceClient::new(
                    server.channel.clone(),
                )
                .create_api_token(crate::harness::authed(
                    registry::CreateApiTokenRequest {
                        username: self.registry_user.clone(),
                        name: format!("fuzz {}", self.tokens_made),
                        scopes: (1..=4).collect(),
                        packages: Vec::new(),
                        expire_time: None,
                    },
                    server.admin_token.expose(),
                ))
                .await
                .expect("a registry token for the fuzzer");
                Some(made.into_inner().token)
            }
            "quintet.pds.v1.PdsService" => {
                let account = self.pds_accounts.last().unwrap();
                let session =
                    pds::pds_service_client::PdsServiceClient::new(server.channel.clone())
                        .create_session(pds::CreateSessionRequest {
                            identifier: account.did.clone(),
                            password: PDS_PASSWORD.to_owned(),
                        })
                        .await;
                match session {
                    Ok(session) => session.into_inner().session.map(|s| s.access_jwt),
                    // The fuzzer deleted, deactivated or took down its account: a new one.
                    Err(_) => {
                        let handle = format!("fuzzer{}.test", self.tokens_made);
                        let account = crate::pds::create_account(server, &handle).await;
                        let token = account.access_jwt.clone();
                        self.pds_accounts.push(account);
                        Some(token)
                    }
                }
            }
            _ => None,
        }
    }
}

/// An `authorization` header value that must not authenticate anyone.
fn garbage_authorization(rng: &mut Rng) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let random_token: String = (0..rng.below(64) + 1)
        .map(|_| {
            *rng.pick(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") as char
        })
        .collect();
    match rng.below(9) {
        0 => format!("Bearer {random_token}"),
        1 => format!("Bearer qadm_{random_token}"),
        2 => format!(
            "Bearer {}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(
                br#"{"sub":"did:plc:ewvi7nxzyoun6zhxrhs64oiz","scope":"com.atproto.access","aud":"did:web:localhost","exp":99999999999}"#
            )
        ),
        3 => format!(
            "Bearer {}.{}.{}",
            b64.encode(br#"{"alg":"ES256K","typ":"at+jwt"}"#),
            b64.encode(br#"{"sub":"did:plc:ewvi7nxzyoun6zhxrhs64oiz","exp":-1}"#),
            b64.encode(rng.bytes(64))
        ),
        4 => "Basic YWRtaW46YWRtaW4=".to_owned(),
        5 => format!("bearer {random_token}"),
        6 => "Bearer".to_owned(),
        7 => format!("Bearer {}", "a".repeat(4000)),
        _ => format!("Bearer a.b.c{random_token}"),
    }
}

#[derive(Default)]
struct Outcome {
    messages_sent: u64,
    /// The answer's code: OK, an error, or `None` for a hang.
    code: Option<Code>,
    findings: Vec<Finding>,
}

#[derive(Debug)]
struct Finding {
    method: String,
    case: Option<u64>,
    input: String,
    caller: &'static str,
    code: Option<Code>,
    problem: String,
    message: String,
}

impl Finding {
    fn server(method: &str, problem: String) -> Self {
        Finding {
            method: method.to_owned(),
            case: None,
            input: String::new(),
            caller: "",
            code: None,
            problem,
            message: String::new(),
        }
    }
}

async fn run_case(
    target: &Target,
    method: &MethodDescriptor,
    seed: u64,
    case: u64,
    show: bool,
) -> Outcome {
    let mut rng = Rng::for_case(seed, method.full_name(), case).knowing(target.known.clone());
    let caller = Caller::choose(&mut rng, target.user_token.as_deref());
    let input = method.input();
    let (messages, kinds): (Vec<Bytes>, Vec<&'static str>) = if method.is_client_streaming() {
        let count = match rng.below(10) {
            0 => 0,
            1 => rng.below(40) as usize,
            _ => rng.below(6) as usize + 1,
        };
        (0..count)
            .map(|_| hostile_input(&mut rng, &input, case))
            .unzip()
    } else {
        let (bytes, kind) = hostile_input(&mut rng, &input, case);
        (vec![bytes], vec![kind])
    };
    let mut outcome = Outcome {
        messages_sent: messages.len() as u64,
        ..Outcome::default()
    };
    if show {
        // Replaying one case: show what it sends.
        for (bytes, kind) in messages.iter().zip(&kinds) {
            let shown = match DynamicMessage::decode(input.clone(), bytes.clone()) {
                Ok(message) => serde_json::to_string(&message).unwrap_or_default(),
                Err(_) => format!("{bytes:?}"),
            };
            println!(
                "{} case {case} ({}), {kind}: {}",
                path_of(method),
                caller.label(),
                shorten(&shown)
            );
        }
    }
    let answer = call(target, method, &caller, messages.clone()).await;
    outcome.code = match (&answer.status, answer.hung) {
        (_, true) => None,
        (Some(status), _) => Some(status.code()),
        (None, _) => Some(Code::Ok),
    };
    if show {
        println!("  answered {:?}", answer.status);
    }
    if let (Ok(codes), Some(status)) = (std::env::var("PROTOCOL_FUZZ_SHOW_CODES"), &answer.status)
        && codes
            .split(',')
            .any(|c| c == format!("{:?}", status.code()))
    {
        println!(
            "{} case {case} ({}): {:?} {}",
            path_of(method),
            caller.label(),
            status.code(),
            shorten(status.message())
        );
    }
    let mut problems = judge(&answer, &target.secrets, &messages);
    if let Some(status) = &answer.status
        && let Some(problem) = unnamed_field(status, &input, method.is_client_streaming())
    {
        problems.push(problem);
    }
    if !problems.is_empty() {
        let input = if kinds.is_empty() {
            "an empty stream".to_owned()
        } else {
            kinds.join("+")
        };
        let (code, message) = match &answer.status {
            Some(s) => (Some(s.code()), shorten(s.message())),
            None => (None, String::new()),
        };
        for problem in problems {
            outcome.findings.push(Finding {
                method: path_of(method),
                case: Some(case),
                input: input.clone(),
                caller: caller.label(),
                code,
                problem,
                message: message.clone(),
            });
        }
    }
    outcome
}

/// What came back from one call.
#[derive(Default)]
struct Answer {
    /// Response messages (unary: one; streams: the first few).
    messages: Vec<Bytes>,
    /// The error status, if the call or its stream ended with one.
    status: Option<Status>,
    /// The call did not answer in time.
    hung: bool,
}

async fn call(
    target: &Target,
    method: &MethodDescriptor,
    caller: &Caller,
    messages: Vec<Bytes>,
) -> Answer {
    let mut answer = Answer::default();
    let mut grpc = tonic::client::Grpc::new(target.channel.clone())
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    if let Err(error) = grpc.ready().await {
        answer.status = Some(Status::unavailable(format!("channel not ready: {error}")));
        return answer;
    }
    let path: http::uri::PathAndQuery = path_of(method).parse().unwrap();
    match (method.is_client_streaming(), method.is_server_streaming()) {
        (false, false) => {
            let mut request = Request::new(messages.into_iter().next().unwrap_or_default());
            authorize(&mut request, caller, &target.admin_token);
            match tokio::time::timeout(ANSWER_TIMEOUT, grpc.unary(request, path, RawCodec)).await {
                Ok(Ok(response)) => answer.messages.push(response.into_inner()),
                Ok(Err(status)) => answer.status = Some(status),
                Err(_) => answer.hung = true,
            }
        }
        (true, false) => {
            let mut request = Request::new(tokio_stream::iter(messages));
            authorize(&mut request, caller, &target.admin_token);
            match tokio::time::timeout(
                ANSWER_TIMEOUT,
                grpc.client_streaming(request, path, RawCodec),
            )
            .await
            {
                Ok(Ok(response)) => answer.messages.push(response.into_inner()),
                Ok(Err(status)) => answer.status = Some(status),
                Err(_) => answer.hung = true,
            }
        }
        (false, true) => {
            let mut request = Request::new(messages.into_iter().next().unwrap_or_default());
            authorize(&mut request, caller, &target.admin_token);
            match tokio::time::timeout(
                ANSWER_TIMEOUT,
                grpc.server_streaming(request, path, RawCodec),
            )
            .await
            {
                Ok(Ok(response)) => {
                    read_some(response.into_inner(), &mut answer, STREAM_READS).await
                }
                Ok(Err(status)) => answer.status = Some(status),
                Err(_) => answer.hung = true,
            }
        }
        (true, true) => {
            // Bidi streams (reflection) answer each request and end with the requests: read them
            // out. Dropping hundreds of them half-read looks like a rapid-reset attack to h2,
            // which then closes the connection, an answer about the fuzzer, not the server.
            let limit = messages.len() + 1;
            let mut request = Request::new(tokio_stream::iter(messages));
            authorize(&mut request, caller, &target.admin_token);
            match tokio::time::timeout(ANSWER_TIMEOUT, grpc.streaming(request, path, RawCodec))
                .await
            {
                Ok(Ok(response)) => read_some(response.into_inner(), &mut answer, limit).await,
                Ok(Err(status)) => answer.status = Some(status),
                Err(_) => answer.hung = true,
            }
        }
    }
    answer
}

fn authorize<T>(request: &mut Request<T>, caller: &Caller, admin_token: &str) {
    let value = match caller {
        Caller::Anonymous => return,
        Caller::Garbage(value) => value.clone(),
        Caller::Admin => format!("Bearer {admin_token}"),
        Caller::User(token) => format!("Bearer {token}"),
    };
    request
        .metadata_mut()
        .insert("authorization", MetadataValue::try_from(value).unwrap());
}

/// Reads up to `limit` messages of a server stream, then drops it: follow streams never end by
/// themselves, and a dropped stream is a client going away, which the server must handle.
async fn read_some(mut stream: Streaming<Bytes>, answer: &mut Answer, limit: usize) {
    for _ in 0..limit {
        match tokio::time::timeout(STREAM_READ_TIMEOUT, stream.message()).await {
            Ok(Ok(Some(message))) => answer.messages.push(message),
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(status)) => {
                answer.status = Some(status);
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Judging answers.

/// What no answer may contain.
struct Secrets {
    /// Never, in any answer.
    secrets: Vec<String>,
    /// The server's own directories.
    paths: Vec<String>,
}

/// Text that gives away the database or its queries; matched case-sensitively.
const SQL_KEYWORDS: &[&str] = &[
    "SELECT ",
    "INSERT INTO",
    "UPDATE ",
    "DELETE FROM",
    " WHERE ",
    "RETURNING ",
];
/// Text that gives away the database or its errors; matched in lowercase.
const DATABASE_WORDS: &[&str] = &[
    "syntax error",
    "sqlx",
    "sqlstate",
    "pg_",
    "postgres",
    "duplicate key",
    "violates",
    "relation \"",
    "column \"",
    "invalid input syntax",
    "out of range for type",
    "invalid byte sequence",
    "unsupported unicode escape",
    "cannot be converted to text",
    "value too long for type",
    "invalid input value for enum",
    "date/time field value out of range",
    "integer out of range",
    "bigint out of range",
    "numeric field overflow",
    "division by zero",
    "_pkey",
    "_fkey",
    "quintet_test_",
    "quintet_template",
    "quintet-test-",
];
/// Text that gives away a panic or the server's source.
const PANIC_WORDS: &[&str] = &[
    "panicked at",
    "RUST_BACKTRACE",
    "stack backtrace",
    "called `Option::unwrap()`",
    "called `Result::unwrap()`",
    ".rs:",
    "/.cargo/registry",
    "/rustc/",
];

/// Every problem with one answer. Words that the request itself carried do not count as leaks
/// when answered back (a NOT_FOUND may quote the name asked for); secrets always count.
fn judge(answer: &Answer, secrets: &Secrets, request: &[Bytes]) -> Vec<String> {
    let mut problems = Vec::new();
    if answer.hung {
        problems.push(format!("no answer within {ANSWER_TIMEOUT:?}"));
    }
    let echoed = |needle: &str| {
        let needle = needle.to_lowercase();
        request
            .iter()
            .any(|m| String::from_utf8_lossy(m).to_lowercase().contains(&needle))
    };
    if let Some(status) = &answer.status {
        // A status with a source is the client's own, about the connection (the server's
        // answers arrive as plain statuses): a connection that went away is CANCELLED or
        // UNAVAILABLE on the client's side and is no finding; an HTTP/2 protocol error (INTERNAL)
        // still is.
        let connection_lost = std::error::Error::source(status).is_some()
            && matches!(status.code(), Code::Cancelled | Code::Unavailable);
        if FORBIDDEN_CODES.contains(&status.code()) && !connection_lost {
            problems.push(format!("answered {:?}", status.code()));
        }
        let mut texts = vec![
            status.message().to_owned(),
            String::from_utf8_lossy(status.details()).into_owned(),
        ];
        for entry in status.metadata().iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(key, value) = entry {
                texts.push(format!("{}: {}", key, value.to_str().unwrap_or_default()));
            }
        }
        for text in &texts {
            let lower = text.to_lowercase();
            for word in SQL_KEYWORDS.iter().chain(PANIC_WORDS) {
                if text.contains(word) && !echoed(word) {
                    problems.push(format!("leaks {word:?}"));
                }
            }
            for word in DATABASE_WORDS {
                if lower.contains(word) && !echoed(word) {
                    problems.push(format!("leaks database text {word:?}"));
                }
            }
            for path in &secrets.paths {
                if text.contains(path.as_str()) {
                    problems.push(format!("leaks the server path {path:?}"));
                }
            }
        }
    }
    let status_text = answer
        .status
        .iter()
        .flat_map(|s| [s.message().as_bytes().to_vec(), s.details().to_vec()]);
    for text in answer
        .messages
        .iter()
        .map(|m| m.to_vec())
        .chain(status_text)
    {
        for secret in &secrets.secrets {
            if contains(&text, secret.as_bytes()) {
                problems.push("leaks a secret (the admin token or a master key)".to_owned());
            }
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

/// An INVALID_ARGUMENT must name the request field that is wrong (`manifest.tags`,
/// `contents[2].content_name`, `part.class_id` for a oneof); `request` only for a message that
/// does not decode at all. A path may go on inside a field's own content: JSON text, a
/// `google.protobuf.Struct`. A client stream may name a message by its place among its kind
/// (`contents[2].content_name`: the third content header). Checked for quintet's services, whose
/// house style this is.
fn unnamed_field(status: &Status, input: &MessageDescriptor, stream: bool) -> Option<String> {
    use tonic_types::StatusExt;
    if status.code() != Code::InvalidArgument || !input.package_name().starts_with("quintet.") {
        return None;
    }
    let details = status.get_error_details();
    let Some(violation) = details
        .bad_request()
        .and_then(|b| b.field_violations.first())
    else {
        return Some("INVALID_ARGUMENT without a field violation".to_owned());
    };
    let path = violation.field.as_str();
    if path == "request" && violation.description.starts_with("does not decode") {
        return None;
    }
    let unnamed = || Some(format!("names {path:?}, not a field of the request"));
    // The messages the next segment may be a field of (several after a oneof's name).
    let mut candidates = vec![input.clone()];
    let segments: Vec<&str> = path.split('.').collect();
    for (i, segment) in segments.iter().enumerate() {
        let clipped = i + 1 == segments.len() && segment.ends_with('…');
        let name = segment.split('[').next().unwrap_or_default();
        let mut next = Vec::new();
        let mut found = false;
        for message in &candidates {
            if let Some(field) = message.get_field_by_name(name) {
                found = true;
                match field.kind() {
                    Kind::Message(inner) if field.is_map() => {
                        match inner.map_entry_value_field().kind() {
                            Kind::Message(value) => next.push(value),
                            // Further segments are map keys.
                            _ => return None,
                        }
                    }
                    Kind::Message(inner) if inner.package_name() == "google.protobuf" => {
                        // Inside a Struct, Value or Timestamp: JSON keys and the like.
                        return None;
                    }
                    Kind::Message(inner) => next.push(inner),
                    // A scalar: further segments are inside its text (JSON).
                    _ => return None,
                }
            } else if let Some(oneof) = message.oneofs().find(|o| o.name() == name) {
                found = true;
                next.extend(oneof.fields().filter_map(|f| match f.kind() {
                    Kind::Message(inner) => Some(inner),
                    _ => None,
                }));
            }
        }
        if clipped {
            return None;
        }
        if !found && stream && i == 0 && segment.ends_with(']') {
            // The nth message of some kind: its fields are those of one of the oneof's variants.
            for oneof in input.oneofs() {
                next.extend(oneof.fields().filter_map(|f| match f.kind() {
                    Kind::Message(inner) => Some(inner),
                    _ => None,
                }));
            }
            found = !next.is_empty();
        }
        if !found {
            return unnamed();
        }
        candidates = next;
    }
    None
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn shorten(text: &str) -> String {
    const SHOWN: usize = 400;
    if text.chars().count() <= SHOWN {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(SHOWN).collect::<String>())
    }
}

/// All findings, grouped by method, problem and code, with the first few cases of each.
fn report(findings: &[Finding], seed: u64) -> String {
    let mut groups: BTreeMap<(String, String, String), Vec<&Finding>> = BTreeMap::new();
    for finding in findings {
        groups
            .entry((
                finding.method.clone(),
                finding.problem.clone(),
                finding.code.map(|c| format!("{c:?}")).unwrap_or_default(),
            ))
            .or_default()
            .push(finding);
    }
    let mut text = format!(
        "{} findings in {} groups (replay with PROTOCOL_FUZZ_SEED={seed}):\n",
        findings.len(),
        groups.len()
    );
    for ((method, problem, code), cases) in &groups {
        let _ = writeln!(text, "- {method}: {problem} [{code}] ×{}", cases.len());
        for finding in cases.iter().take(3) {
            if let Some(case) = finding.case {
                let _ = writeln!(
                    text,
                    "    case {case}, {} with {}: {:?}",
                    finding.input, finding.caller, finding.message
                );
            }
        }
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Panics: recorded from the fuzzer's own runtime threads, where the server's handlers run.

static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn install_panic_recorder() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or_default();
            if name.starts_with("protocol-fuzz") {
                PANICS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("[{name}] {info}"));
            }
            previous(info);
        }));
    });
}

/// The panics recorded on the fuzzer's runtime since the last call.
fn take_panics() -> Vec<String> {
    let mut panics = PANICS.lock().unwrap_or_else(|e| e.into_inner());
    let (ours, others): (Vec<_>, Vec<_>) = panics.drain(..).partition(|p| on_the_runtime(p));
    *panics = others;
    ours
}

/// Whether a recorded panic happened on the fuzzer's runtime (its threads all have one name).
fn on_the_runtime(recorded: &str) -> bool {
    recorded.starts_with(&format!("[{RUNTIME_THREADS}]"))
}

// ---------------------------------------------------------------------------------------------
// The checks themselves must be able to fail.

#[test]
fn the_fuzzers_checks_catch_what_they_claim_to() {
    let secrets = Secrets {
        secrets: vec!["qadm_test_sekrit".to_owned(), "7".repeat(64)],
        paths: vec!["/tmp/.tmpDataDir".to_owned()],
    };
    let request = [Bytes::from_static(b"\x0a\x08left-pad")];
    let failed = |status: Status| Answer {
        status: Some(status),
        ..Answer::default()
    };
    let judged = |answer: Answer| judge(&answer, &secrets, &request);

    // Clean answers pass, including one quoting the request back.
    assert!(judged(failed(Status::invalid_argument("name: must be lowercase"))).is_empty());
    assert!(judged(failed(Status::not_found("package \"left-pad\" not found"))).is_empty());
    assert!(
        judged(Answer {
            messages: vec![Bytes::from_static(b"\x0a\x05hello")],
            ..Answer::default()
        })
        .is_empty()
    );

    // Each planted leak or bad code is caught.
    for (status, expected) in [
        (
            Status::internal("internal error (incident 1)"),
            "answered Internal",
        ),
        (Status::unknown("boom"), "answered Unknown"),
        (Status::unimplemented(""), "answered Unimplemented"),
        (Status::data_loss("block missing"), "answered DataLoss"),
        (
            Status::cancelled("upload interrupted"),
            "answered Cancelled",
        ),
        (
            Status::invalid_argument("error returned from database: SELECT id FROM packages"),
            "leaks \"SELECT \"",
        ),
        (
            Status::already_exists("duplicate key value violates unique constraint"),
            "leaks database text \"duplicate key\"",
        ),
        (
            Status::invalid_argument("invalid input syntax for type uuid"),
            "leaks database text \"invalid input syntax\"",
        ),
        (
            Status::invalid_argument("thread 'x' panicked at src/pds/mst.rs:12:5"),
            "leaks \"panicked at\"",
        ),
        (
            Status::not_found("cannot open /tmp/.tmpDataDir/blobs/x"),
            "leaks the server path \"/tmp/.tmpDataDir\"",
        ),
        (
            Status::unauthenticated("token qadm_test_sekrit is wrong"),
            "leaks a secret (the admin token or a master key)",
        ),
    ] {
        let problems = judged(failed(status.clone()));
        assert!(
            problems.iter().any(|p| p == expected),
            "{status:?} should be caught as {expected:?}, got {problems:?}"
        );
    }
    // A secret in a successful answer, and in error details, is caught too.
    let mut body = b"\x0a\x40".to_vec();
    body.extend("7".repeat(64).as_bytes());
    assert!(
        !judged(Answer {
            messages: vec![Bytes::from(body)],
            ..Answer::default()
        })
        .is_empty()
    );
    let with_details = Status::with_details(
        Code::InvalidArgument,
        "bad",
        Bytes::from("pg_catalog.pg_class"),
    );
    assert!(!judged(failed(with_details)).is_empty());
    // A hang is a finding.
    assert!(
        !judged(Answer {
            hung: true,
            ..Answer::default()
        })
        .is_empty()
    );

    // Panics on the fuzzer's threads are recorded; others are not counted.
    install_panic_recorder();
    // (Not on a thread named like the runtime's: the fuzz test may be running beside this one.)
    let planted = std::thread::Builder::new()
        .name("protocol-fuzz-selftest".to_owned())
        .spawn(|| panic!("planted panic"))
        .unwrap()
        .join();
    assert!(planted.is_err());
    let elsewhere = std::thread::Builder::new()
        .name("unrelated-test-thread".to_owned())
        .spawn(|| panic!("a panic elsewhere"))
        .unwrap()
        .join();
    assert!(elsewhere.is_err());
    let recorded: Vec<String> = {
        let mut panics = PANICS.lock().unwrap_or_else(|e| e.into_inner());
        let (planted, others) = panics.drain(..).partition(|p| p.contains("planted panic"));
        *panics = others;
        planted
    };
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert!(recorded[0].starts_with("[protocol-fuzz-selftest] "));
    assert!(!on_the_runtime(&recorded[0]));
    assert!(on_the_runtime(&format!(
        "[{RUNTIME_THREADS}] panicked at src/x.rs:1:1"
    )));
    assert!(
        !PANICS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|p| p.contains("a panic elsewhere"))
    );

    // The generator is reproducible: one seed, one case, the same bytes.
    let pool = DescriptorPool::decode(quintet::proto::FILE_DESCRIPTOR_SET).unwrap();
    let put = pool
        .get_message_by_name("quintet.store.v1.PutObjectRequest")
        .unwrap();
    for case in 0..50 {
        let mut a = Rng::for_case(42, "m", case);
        let mut b = Rng::for_case(42, "m", case);
        assert_eq!(
            hostile_input(&mut a, &put, case),
            hostile_input(&mut b, &put, case)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// What the fuzzer found, each as one focused request that must stay fixed.

#[tokio::test]
async fn what_the_fuzzer_found_stays_fixed() {
    use crate::harness::{authed, field_of};
    use quintet::proto::quintet::{
        griot::v1 as griot, market::v1 as market, pds::v1 as pds, store::v1 as store,
    };

    let market_server = crate::market::Market::start().await;
    let server = &market_server.server;
    let channel = &server.channel;
    let admin = server.admin_token.expose();
    let invalid = |result: Result<(), Status>| -> String {
        let status = result.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        field_of(&status)
    };

    // Requests that do not decode: INVALID_ARGUMENT naming the field (tonic says INTERNAL),
    // on quintet's services and on health alike; in the middle of an upload, too (was CANCELLED).
    let truncated_string = Bytes::from_static(b"\x0a\x05ab");
    let raw = async |path: &str, token: Option<&str>, messages: Vec<Bytes>, streaming: bool| {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let path: http::uri::PathAndQuery = path.parse().unwrap();
        let caller = match token {
            Some(token) => Caller::User(token.to_owned()),
            None => Caller::Anonymous,
        };
        if streaming {
            let mut request = Request::new(tokio_stream::iter(messages));
            authorize(&mut request, &caller, "");
            grpc.client_streaming::<_, _, Bytes, _>(request, path, RawCodec)
                .await
                .map(drop)
        } else {
            let mut request = Request::new(messages.into_iter().next().unwrap());
            authorize(&mut request, &caller, "");
            grpc.unary::<_, Bytes, _>(request, path, RawCodec)
                .await
                .map(drop)
        }
    };
    let health = raw(
        "/grpc.health.v1.Health/Check",
        None,
        vec![truncated_string.clone()],
        false,
    );
    assert_eq!(invalid(health.await), "service");
    let admin_info = raw(
        "/quintet.admin.v1.AdminService/GetServerInfo",
        Some(admin),
        vec![Bytes::from_static(b"\x0e\x00")],
        false,
    );
    assert_eq!(invalid(admin_info.await), "request");
    let manifest = store::PutObjectRequest {
        part: Some(store::put_object_request::Part::Manifest(
            store::ManifestHeader {
                class_id: uuid::Uuid::new_v4().to_string(),
                unpacker_name: "fuzz".into(),
                tags: None,
            },
        )),
    };
    let content = store::PutObjectRequest {
        part: Some(store::put_object_request::Part::Content(
            store::ContentHeader {
                content_name: "c".into(),
                content_type: "text/plain".into(),
                serializer_type: store::SerializerType::Value as i32,
                ..Default::default()
            },
        )),
    };
    let put = raw(
        "/quintet.store.v1.StoreService/PutObject",
        Some(admin),
        vec![
            manifest.encode_to_vec().into(),
            content.encode_to_vec().into(),
            Bytes::from_static(b"\x1a\x10ab"),
        ],
        true,
    );
    assert_eq!(invalid(put.await), "part");
    let user = market_server.user("fuzz-regression").await;
    let header = market::UploadDatasetRequest {
        part: Some(market::upload_dataset_request::Part::Header(
            market::DatasetHeader {
                file_type: "text/csv".into(),
            },
        )),
    };
    let upload = raw(
        "/quintet.market.v1.MarketService/UploadDataset",
        Some(&user),
        vec![
            header.encode_to_vec().into(),
            Bytes::from_static(b"\x12\x10ab"),
        ],
        true,
    );
    assert_eq!(invalid(upload.await), "part");

    // NUL, which PostgreSQL cannot store, refused at the edge by name (was the database's own
    // message, "invalid byte sequence for encoding \"UTF8\": 0x00", or no field at all).
    let mut pds_client = pds::pds_service_client::PdsServiceClient::new(channel.clone());
    let session = pds_client
        .create_session(pds::CreateSessionRequest {
            identifier: "alice\0.test".into(),
            password: "x".into(),
        })
        .await
        .map(drop);
    assert_eq!(invalid(session), "identifier");
    let takedown = |did: String| pds::SetAccountTakedownRequest {
        did,
        takendown: true,
    };
    let nul_did = pds_client.set_account_takedown(authed(takedown("did:plc:a\0".into()), admin));
    assert_eq!(invalid(nul_did.await.map(drop)), "did");
    let account = crate::pds::create_account(server, "regression.test").await;
    let revoke = pds_client
        .revoke_app_password(authed(
            pds::RevokeAppPasswordRequest {
                name: "a\0b".into(),
            },
            &account.access_jwt,
        ))
        .await
        .map(drop);
    assert_eq!(invalid(revoke), "name");
    let mut griot_client = griot::griot_service_client::GriotServiceClient::new(channel.clone());
    for (request, field) in [
        (
            griot::ListPackagesRequest {
                name: "a\0".into(),
                ..Default::default()
            },
            "name",
        ),
        (
            griot::ListPackagesRequest {
                manifest_contains_json: r#"{"a":"\u0000"}"#.into(),
                ..Default::default()
            },
            "manifest_contains_json",
        ),
    ] {
        let listed = griot_client.list_packages(authed(request, admin)).await;
        assert_eq!(invalid(listed.map(drop)), field);
    }
    let mut market_client =
        market::market_service_client::MarketServiceClient::new(channel.clone());
    let search = market_client
        .search_datapods(market::SearchDatapodsRequest {
            query: "a\0".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(invalid(search.map(drop)), "query");
    let conversation = market_client
        .create_conversation(authed(
            market::CreateConversationRequest { title: "\0".into() },
            &user,
        ))
        .await;
    assert_eq!(invalid(conversation.map(drop)), "title");
    let nul_tags = crate::pds::post("a\0b");
    let listed = store::store_service_client::StoreServiceClient::new(channel.clone())
        .list_manifests(authed(
            store::ListManifestsRequest {
                filter: Some(store::ManifestFilter {
                    tags: nul_tags,
                    ..Default::default()
                }),
                ..Default::default()
            },
            admin,
        ))
        .await;
    assert_eq!(invalid(listed.map(drop)), "filter.tags");

    // A huge value quoted back in an error: the answer still arrives (was an HTTP/2 protocol
    // error, as the status outgrew the headers a client accepts).
    let huge = "[".repeat(5000);
    let blob = pds_client
        .get_blob(pds::GetBlobRequest {
            did: account.did.clone(),
            cid: huge.clone(),
        })
        .await;
    assert_eq!(invalid(blob.map(drop)), "cid");
    let huge_did = pds_client.set_account_takedown(authed(takedown(huge), admin));
    assert_eq!(invalid(huge_did.await.map(drop)), "did");

    // A bad write in a batch names its place in the batch (was `collection`).
    let writes = pds_client
        .apply_writes(authed(
            pds::ApplyWritesRequest {
                repo: account.did.clone(),
                writes: vec![pds::Write {
                    action: Some(pds::write::Action::Create(pds::WriteCreate {
                        collection: "not an nsid".into(),
                        rkey: String::new(),
                        value: crate::pds::post("hi"),
                    })),
                }],
                swap_commit: String::new(),
            },
            &account.access_jwt,
        ))
        .await;
    assert_eq!(invalid(writes.map(drop)), "writes[0].create.collection");
}

// ---------------------------------------------------------------------------------------------
// Hostile inputs.

/// One hostile request message and a short name for how it was made.
fn hostile_input(rng: &mut Rng, input: &MessageDescriptor, case: u64) -> (Bytes, &'static str) {
    if case == 0 {
        return (Bytes::new(), "empty message");
    }
    match rng.below(100) {
        0..=44 => (
            Bytes::from(random_message(rng, input, 0).encode_to_vec()),
            "random message",
        ),
        45..=54 => (
            Bytes::from(boundary_message(rng, input, 0).encode_to_vec()),
            "boundary values",
        ),
        55..=66 => {
            let whole = random_message(rng, input, 0).encode_to_vec();
            let cut = rng.below(whole.len() as u64) as usize;
            (Bytes::copy_from_slice(&whole[..cut]), "truncated encoding")
        }
        67..=76 => {
            let whole = random_message(rng, input, 0).encode_to_vec();
            (Bytes::from(mutated(rng, whole)), "mutated encoding")
        }
        77..=84 => {
            let len = if rng.one_in(10) {
                4096
            } else {
                rng.below(200) as usize
            };
            (Bytes::from(rng.bytes(len)), "raw random bytes")
        }
        _ => malformed_wire(rng, input),
    }
}

fn random_message(rng: &mut Rng, desc: &MessageDescriptor, depth: u32) -> DynamicMessage {
    let mut message = DynamicMessage::new(desc.clone());
    // Deep enough to reach every nested field; recursive types (Struct, Value) stop here.
    let max_depth = 5;
    for oneof in desc.oneofs() {
        let fields: Vec<_> = oneof.fields().collect();
        if depth < max_depth && !rng.one_in(4) {
            let field = rng.pick(&fields).clone();
            let value = field_value(rng, &field, depth);
            message.set_field(&field, value);
        }
    }
    for field in desc.fields() {
        if field.containing_oneof().is_some() || depth >= max_depth || rng.one_in(3) {
            continue;
        }
        let value = field_value(rng, &field, depth);
        message.set_field(&field, value);
    }
    message
}

/// Every field set, each to an extreme of its type.
fn boundary_message(rng: &mut Rng, desc: &MessageDescriptor, depth: u32) -> DynamicMessage {
    let mut message = DynamicMessage::new(desc.clone());
    for field in desc.fields() {
        if depth >= 3 {
            break;
        }
        if let Some(oneof) = field.containing_oneof()
            && oneof.fields().next().map(|f| f.number()) != Some(field.number())
            && !rng.one_in(2)
        {
            continue;
        }
        let value = if field.is_map() || field.is_list() {
            field_value(rng, &field, depth)
        } else {
            extreme_value(rng, &field.kind(), depth)
        };
        message.set_field(&field, value);
    }
    message
}

fn extreme_value(rng: &mut Rng, kind: &Kind, depth: u32) -> Value {
    match kind {
        Kind::Double => Value::F64(*rng.pick(&[
            f64::MAX,
            f64::MIN,
            f64::NAN,
            f64::INFINITY,
            -0.0,
            f64::MIN_POSITIVE,
        ])),
        Kind::Float => Value::F32(*rng.pick(&[f32::MAX, f32::MIN, f32::NAN, f32::NEG_INFINITY])),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(*rng.pick(&[i32::MIN, i32::MAX, -1]))
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(*rng.pick(&[i64::MIN, i64::MAX, -1]))
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(u32::MAX),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(*rng.pick(&[u64::MAX, i64::MAX as u64 + 1])),
        Kind::Bool => Value::Bool(true),
        Kind::String => Value::String(match rng.below(4) {
            0 => "x".repeat(100_000),
            1 => "\0".to_owned(),
            2 => "\u{10ffff}".repeat(1000),
            _ => String::new(),
        }),
        Kind::Bytes => Value::Bytes(if rng.one_in(2) {
            Bytes::from(rng.bytes(200_000))
        } else {
            Bytes::new()
        }),
        Kind::Enum(e) => Value::EnumNumber(*rng.pick(&[
            i32::MAX,
            i32::MIN,
            -1,
            e.values().map(|v| v.number()).max().unwrap_or(0) + 1,
        ])),
        Kind::Message(m) => Value::Message(boundary_message(rng, m, depth + 1)),
    }
}

fn field_value(rng: &mut Rng, field: &FieldDescriptor, depth: u32) -> Value {
    let kind = field.kind();
    if field.is_map() {
        let Kind::Message(entry) = &kind else {
            unreachable!()
        };
        let key_field = entry.map_entry_key_field();
        let value_field = entry.map_entry_value_field();
        // At most one entry: a map's encoding follows its HashMap's order, which would make the
        // bytes of a case differ from run to run.
        let count = rng.below(2);
        let mut map = HashMap::new();
        for _ in 0..count {
            let key = match single_value(rng, &key_field, depth + 1) {
                Value::Bool(b) => MapKey::Bool(b),
                Value::I32(v) => MapKey::I32(v),
                Value::I64(v) => MapKey::I64(v),
                Value::U32(v) => MapKey::U32(v),
                Value::U64(v) => MapKey::U64(v),
                Value::String(s) => MapKey::String(s),
                other => unreachable!("map key {other:?}"),
            };
            map.insert(key, single_value(rng, &value_field, depth + 1));
        }
        Value::Map(map)
    } else if field.is_list() {
        let count = repeat_count(rng, depth);
        // Many items of one value, or a few different ones.
        if count > 8 {
            let item = single_value(rng, field, depth + 1);
            Value::List(vec![item; count])
        } else {
            Value::List(
                (0..count)
                    .map(|_| single_value(rng, field, depth + 1))
                    .collect(),
            )
        }
    } else {
        single_value(rng, field, depth)
    }
}

fn repeat_count(rng: &mut Rng, depth: u32) -> usize {
    match rng.below(12) {
        0 if depth == 0 => 1000,
        1 => 0,
        2 => 20,
        _ => rng.below(4) as usize + 1,
    }
}

fn single_value(rng: &mut Rng, field: &FieldDescriptor, depth: u32) -> Value {
    let name = field.name();
    let random = rng.next();
    let small = rng.below(200) as i32 - 100;
    match field.kind() {
        Kind::Double => Value::F64(*rng.pick(&[
            0.0,
            -0.0,
            1.0,
            -1.0,
            3.5,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            f64::MIN_POSITIVE,
            1e-320,
            (random as f64) / 1e6,
        ])),
        Kind::Float => Value::F32(*rng.pick(&[0.0, 1.0, -1.0, f32::NAN, f32::INFINITY, f32::MAX])),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(*rng.pick(&[
            0,
            1,
            -1,
            2,
            5,
            10,
            100,
            1000,
            i32::MIN,
            i32::MAX,
            random as i32,
            small,
        ])),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(*rng.pick(&[
            0,
            1,
            -1,
            10,
            1000,
            i64::MIN,
            i64::MAX,
            i32::MAX as i64 + 1,
            i32::MIN as i64 - 1,
            1 << 53,
            253_402_300_800, // year 10000
            -62_135_596_801, // before year 1
            random as i64,
        ])),
        Kind::Uint32 | Kind::Fixed32 => {
            Value::U32(*rng.pick(&[0, 1, 10, u32::MAX, 1 << 31, random as u32]))
        }
        Kind::Uint64 | Kind::Fixed64 => {
            Value::U64(*rng.pick(&[0, 1, u64::MAX, i64::MAX as u64 + 1, random]))
        }
        Kind::Bool => Value::Bool(rng.one_in(2)),
        Kind::String => Value::String(string_value(rng, name)),
        Kind::Bytes => Value::Bytes(bytes_value(rng)),
        Kind::Enum(e) => {
            let known: Vec<i32> = e.values().map(|v| v.number()).collect();
            Value::EnumNumber(match rng.below(5) {
                0 => *rng.pick(&[-1, 999, i32::MAX, i32::MIN]),
                _ => *rng.pick(&known),
            })
        }
        Kind::Message(m) if m.full_name() == "google.protobuf.Value" && rng.one_in(12) => {
            // JSON nested deeper than any handler expects: within the decoder's recursion limit
            // of 100 messages, and past it.
            let levels = *rng.pick(&[20, 45, 60]);
            Value::Message(deep_json(&m, levels))
        }
        Kind::Message(m) => Value::Message(random_message(rng, &m, depth + 1)),
    }
}

/// A `google.protobuf.Value` of `levels` nested JSON arrays around a number.
fn deep_json(value_desc: &MessageDescriptor, levels: u32) -> DynamicMessage {
    let list_field = value_desc.get_field_by_name("list_value").unwrap();
    let Kind::Message(list_desc) = list_field.kind() else {
        unreachable!()
    };
    let values_field = list_desc.get_field_by_name("values").unwrap();
    let mut value = DynamicMessage::new(value_desc.clone());
    value.set_field_by_name("number_value", Value::F64(1.0));
    for _ in 0..levels {
        let mut list = DynamicMessage::new(list_desc.clone());
        list.set_field(&values_field, Value::List(vec![Value::Message(value)]));
        value = DynamicMessage::new(value_desc.clone());
        value.set_field(&list_field, Value::Message(list));
    }
    value
}

fn string_value(rng: &mut Rng, field: &str) -> String {
    match rng.below(10) {
        0..=3 => plausible_string(rng, field),
        4..=7 => hostile_string(rng),
        _ => random_text(rng),
    }
}

/// Hostile text any field may receive.
const HOSTILE_STRINGS: &[&str] = &[
    "",
    " ",
    "\t\r\n",
    "\0",
    "a\0b",
    "' OR 1=1 --",
    "'; DROP TABLE packages; --",
    "\" OR \"\"=\"",
    "\\",
    "%",
    "_",
    "%_%",
    "$1",
    "?",
    ":name",
    "../../../../etc/passwd",
    "..",
    ".",
    "/",
    "//",
    "..\\..\\boot.ini",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "file:///etc/passwd",
    "file:///nonexistent/artifact.tgz",
    "http://127.0.0.1:1/artifact.tgz",
    "http://[::1]:1/",
    "blob:sha256:0000",
    "🦀",
    "\u{202e}gnp.exe",
    "e\u{301}\u{301}\u{301}",
    "\u{feff}",
    "\u{fffd}",
    "\u{10ffff}",
    "\u{200b}",
    "İ",
    "ß",
    "𝕢𝕦𝕚𝕟𝕥𝕖𝕥",
    "-1",
    "0",
    "18446744073709551616",
    "9223372036854775808",
    "NaN",
    "-Infinity",
    "1e309",
    "null",
    "true",
    "{}",
    "[]",
    "{\"a\":",
    "[1e999]",
    "{\"a\":\"\\u0000\"}",
    "{\"a\":\"\\ud800\"}",
    "${jndi:ldap://127.0.0.1:1/a}",
    "<script>alert(1)</script>",
    "%s%s%s%n",
    "{{7*7}}",
    "\u{1b}[31m",
    "*",
    "^",
    ">=0",
    "1.0.0",
    "x@y",
];

fn hostile_string(rng: &mut Rng) -> String {
    match rng.below(16) {
        0 => "a".repeat(*rng.pick(&[64, 65, 256, 257, 1025, 2049, 4097, 65_537])),
        1 => {
            if rng.one_in(6) {
                "x".repeat(1 << 20)
            } else {
                "é".repeat(20_000)
            }
        }
        2 => format!(
            "{}\0{}",
            plausible_string(rng, "name"),
            plausible_string(rng, "id")
        ),
        3 => format!(
            "{}{}",
            plausible_string(rng, "name"),
            rng.pick(HOSTILE_STRINGS)
        ),
        4 => "[".repeat(5000),
        _ => rng.pick(HOSTILE_STRINGS).to_string(),
    }
}

fn random_text(rng: &mut Rng) -> String {
    let len = rng.below(48);
    (0..len)
        .map(|_| match rng.below(6) {
            0 => char::from_u32(rng.below(0x20) as u32).unwrap(),
            1 => char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('\u{fffd}'),
            _ => char::from(rng.below(95) as u8 + 0x20),
        })
        .collect()
}

/// Text shaped like what the field expects, so requests get past the first checks.
fn plausible_string(rng: &mut Rng, field: &str) -> String {
    let uuid = uuid::Uuid::from_u64_pair(rng.next(), rng.next()).to_string();
    let hex64: String = rng.bytes(32).iter().map(|b| format!("{b:02x}")).collect();
    let tid = "3jzfcijpj2z2a".to_owned();
    let did = rng
        .pick(&[
            "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
            "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa",
            "did:web:localhost",
            "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme",
            "did:plc:",
            "did:",
        ])
        .to_string();
    let known = rng.known.clone();
    let options: Vec<String> = if field.contains("did") || field == "repo" || field == "repos" {
        let mut dids = vec![did];
        dids.extend(known.dids.iter().cloned());
        dids.extend(known.dids.iter().cloned());
        dids
    } else if field.contains("handle") {
        let mut handles = vec![
            "alice.test".into(),
            "bob.localhost".into(),
            "a".into(),
            "x.invalid".into(),
        ];
        handles.extend(known.handles.iter().cloned());
        handles
    } else if field.contains("username") || field == "owner" || field == "owners" {
        let mut names = vec!["a".into(), "-".into(), "Ünïcode".into()];
        names.extend(known.usernames.iter().cloned());
        names.extend(known.usernames.iter().cloned());
        names
    } else if field.contains("cid")
        || field == "head"
        || field == "commit"
        || field.starts_with("swap_")
        || field == "prev"
    {
        vec![
            "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm".into(),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku".into(),
            "bafy".into(),
            "Qmaaaa".into(),
        ]
    } else if field.contains("uri") {
        vec![
            "at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/app.bsky.feed.post/3jzfcijpj2z2a".into(),
            "at://alice.test".into(),
        ]
    } else if field.contains("collection") {
        vec![
            "app.bsky.feed.post".into(),
            "com.example.record".into(),
            "a.b".into(),
        ]
    } else if field == "rkey" || field == "rev" || field == "since" {
        vec![tid, "self".into(), "a".repeat(513)]
    } else if field.contains("version") {
        vec![
            "1.0.0".into(),
            "0.0.1-alpha.1+build.5".into(),
            "99999999999999999999.0.0".into(),
            "v1".into(),
            "^1.2.3 || >=2".into(),
        ]
    } else if field.ends_with("_id") || field == "id" || field.ends_with("_ids") {
        vec![
            uuid,
            "00000000-0000-0000-0000-000000000000".into(),
            "1".into(),
            hex64,
        ]
    } else if field.contains("sha256") || field.contains("hash") || field.contains("digest") {
        vec![
            hex64.clone(),
            format!("sha256:{hex64}"),
            hex64.to_uppercase(),
        ]
    } else if field.ends_with("_json") || field == "manifest_contains_json" {
        vec![
            "{}".into(),
            "{\"name\":\"left-pad\",\"version\":\"1.0.0\"}".into(),
            "[".repeat(200),
            "{\"a\":1e999}".into(),
        ]
    } else if field.contains("url") {
        vec![
            "http://127.0.0.1:1/artifact.tgz".into(),
            "file:///nonexistent/artifact.tgz".into(),
            "blob:sha256:00".into(),
        ]
    } else if field.contains("email") {
        vec!["alice@example.test".into(), "@".into()]
    } else if field.contains("address") {
        vec![format!("0x{hex64}"), "0x".into()]
    } else if field.contains("token") || field.contains("jwt") {
        vec![
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rng.bytes(24)),
            "a.b.c".into(),
        ]
    } else if field.contains("password") {
        vec!["correct horse battery staple".into(), "x".into()]
    } else if field.contains("mime") || field.contains("content_type") {
        vec![
            "application/json".into(),
            "image/png".into(),
            "text/plain; charset=utf-8".into(),
        ]
    } else if field.contains("name")
        || field == "package"
        || field == "packages"
        || field == "query"
    {
        vec![
            "left-pad".into(),
            "@scope/pkg".into(),
            "quintet".into(),
            "A".into(),
            "a".repeat(215),
        ]
    } else {
        vec!["a".into(), "left-pad".into(), "hello world".into(), uuid]
    };
    rng.pick(&options).clone()
}

fn bytes_value(rng: &mut Rng) -> Bytes {
    Bytes::from(match rng.below(10) {
        0 => Vec::new(),
        1 => {
            let len = rng.below(64) as usize + 1;
            rng.bytes(len)
        }
        2 => {
            let len = if rng.one_in(8) { 1 << 20 } else { 70_000 };
            rng.bytes(len)
        }
        3 => vec![0; rng.below(1024) as usize + 1],
        // Starts of formats the server parses: gzip, a CAR header, DAG-CBOR, a tar header.
        4 => b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03".to_vec(),
        5 => b"\x3a\xa2\x65roots\x80\x67version\x01".to_vec(),
        6 => b"\xa2\x65$type\x72app.bsky.feed.post\x64text\x62hi".to_vec(),
        7 => {
            let mut header = vec![0u8; 512];
            header[..16].copy_from_slice(b"../../etc/passwd");
            header
        }
        _ => {
            let len = rng.below(300) as usize;
            rng.bytes(len)
        }
    })
}

/// A valid encoding with random damage.
fn mutated(rng: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.below(8) + 1 {
        let at = rng.below(bytes.len() as u64 + 1) as usize;
        match rng.below(5) {
            0 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
            1 if at < bytes.len() => bytes[at] = rng.next() as u8,
            2 => bytes.insert(at, rng.next() as u8),
            3 if at < bytes.len() => {
                bytes.remove(at);
            }
            _ => {
                let end = (at + rng.below(16) as usize).min(bytes.len());
                let chunk = bytes[at..end].to_vec();
                bytes.splice(at..at, chunk);
            }
        }
    }
    bytes
}

/// Wire data no encoder produces.
fn malformed_wire(rng: &mut Rng, desc: &MessageDescriptor) -> (Bytes, &'static str) {
    let mut out = Vec::new();
    let kind = match rng.below(9) {
        0 => {
            if let Some(bytes) = invalid_utf8(desc, 0) {
                out = bytes;
            } else {
                put_tag(&mut out, 1, 2);
                put_varint(&mut out, 2);
                out.extend([0xff, 0xfe]);
            }
            "invalid UTF-8 in a string"
        }
        1 => {
            put_tag(&mut out, 1, 2);
            put_varint(&mut out, u32::MAX as u64);
            out.extend(b"short");
            "a length beyond the end"
        }
        2 => {
            put_tag(&mut out, 1, 0);
            out.extend([0xff; 11]);
            "an overlong varint"
        }
        3 => {
            out.extend([0x02, 0x01, 0x00]);
            "field number 0"
        }
        4 => {
            out.extend([0x0e, 0x00, 0x0f, 0x00]);
            "wire types 6 and 7"
        }
        5 => {
            // Groups nest without bounds unless the decoder limits them.
            for _ in 0..200 {
                put_tag(&mut out, 99, 3);
            }
            for _ in 0..200 {
                put_tag(&mut out, 99, 4);
            }
            "groups nested 200 deep"
        }
        6 => {
            // A known field sent with the wrong wire type.
            let fields: Vec<_> = desc.fields().collect();
            if fields.is_empty() {
                put_tag(&mut out, 1, 5);
                out.extend([0, 0, 0, 0]);
            } else {
                let field = rng.pick(&fields).clone();
                let wire = match field.kind() {
                    Kind::String | Kind::Bytes | Kind::Message(_) => 0,
                    _ => 2,
                };
                put_tag(&mut out, field.number(), wire);
                if wire == 0 {
                    put_varint(&mut out, 7);
                } else {
                    put_varint(&mut out, 3);
                    out.extend([1, 2, 3]);
                }
            }
            "a field with the wrong wire type"
        }
        7 => {
            // An end-group with no start, and a field number past the maximum.
            put_tag(&mut out, 5, 4);
            put_varint(&mut out, (1u64 << 32) | 2);
            "an unmatched end-group"
        }
        _ => {
            // A valid message followed by unknown fields of every wire type.
            out = random_message(rng, desc, 0).encode_to_vec();
            put_tag(&mut out, 536_870_911, 0);
            put_varint(&mut out, u64::MAX);
            put_tag(&mut out, 536_870_910, 2);
            put_varint(&mut out, 3);
            out.extend([1, 2, 3]);
            put_tag(&mut out, 536_870_909, 1);
            out.extend([0; 8]);
            put_tag(&mut out, 536_870_908, 5);
            out.extend([0; 4]);
            "unknown fields with the largest numbers"
        }
    };
    (Bytes::from(out), kind)
}

/// A message whose first reachable string field holds bytes that are not UTF-8.
fn invalid_utf8(desc: &MessageDescriptor, depth: u32) -> Option<Vec<u8>> {
    if depth > 4 {
        return None;
    }
    let mut out = Vec::new();
    if let Some(field) = desc
        .fields()
        .find(|f| matches!(f.kind(), Kind::String) && !f.is_map())
    {
        put_tag(&mut out, field.number(), 2);
        put_varint(&mut out, 3);
        out.extend([b'a', 0xc3, 0x28]);
        return Some(out);
    }
    for field in desc.fields().filter(|f| !f.is_map()) {
        if let Kind::Message(inner) = field.kind()
            && let Some(nested) = invalid_utf8(&inner, depth + 1)
        {
            put_tag(&mut out, field.number(), 2);
            put_varint(&mut out, nested.len() as u64);
            out.extend(nested);
            return Some(out);
        }
    }
    None
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, ((field as u64) << 3) | wire as u64);
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

// ---------------------------------------------------------------------------------------------
// A reproducible random source (SplitMix64): one stream per seed, method and case.

struct Rng {
    state: u64,
    /// Identifiers the server gave out, offered where a field wants one.
    known: Arc<Known>,
}

impl Rng {
    fn for_case(seed: u64, method: &str, case: u64) -> Self {
        // FNV-1a of the method name, mixed with the seed and the case number.
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for byte in method.bytes() {
            hash = (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
        }
        let mut rng = Rng {
            state: seed ^ hash ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            known: Arc::default(),
        };
        rng.next();
        rng
    }

    fn knowing(self, known: Arc<Known>) -> Self {
        Rng { known, ..self }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend(self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

// ---------------------------------------------------------------------------------------------
// A codec that sends and receives raw message bytes: the fuzzer writes the wire format itself.

#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;

struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
