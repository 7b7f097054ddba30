//! Secrets never leak (issue #9). The real `quintet` binary runs with every log at trace
//! (`QUINTET_LOG=trace`: sqlx, tonic, h2 and reqwest too) in JSON, on its own embedded PostgreSQL,
//! while flows on every service carry each kind of secret, right and wrong: the admin token,
//! registry OAuth and API tokens, PDS passwords, app passwords, session JWTs and a migrating
//! account's private key, market ID tokens, sessions and a Sui wallet, the AI endpoint's key, a
//! Griot author key and pre-signed artifact URLs. Then the test learns the secrets the server made
//! itself (account keys, the session-signing key, the dataset key, the master keys) and searches
//! for every secret in every encoding it can compute (as given, hex, base64 and base64url with and
//! without padding, URL- and JSON-escaped; keys also raw, base58/multibase, base32, PKCS#8 and as
//! `Debug` prints bytes; and the tail of each, in case one is cut short):
//! 1. in the captured logs (stderr, stdout, postgres.log): never, at any level;
//! 2. in every row of every table and every file under the data directory (blobs, installed
//!    packages, PostgreSQL's own files): never in plaintext; digests, scrypt hashes and AES-GCM-
//!    wrapped keys are the point. Every stored value is also tried as the session-signing key and
//!    as each account's private key, whatever its column or encoding;
//! 3. in every answer each caller got: nobody receives someone else's secret or key material the
//!    server keeps, and no error carries any secret at all.
//!
//! Each search first proves that it finds a planted copy of every form of every secret, and a
//! canary the flows write into each place searched proves that the search reaches what was
//! written there.

use std::{
    collections::{HashMap, HashSet},
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
};
use prost::Message;
use quintet::{
    griot::domain::{DidKey, encode_signature, signing_bytes},
    market::{
        crypto,
        payment::SUI_COIN_TYPE,
        standin_ledger::{StandInLedger, Transfer},
        sui,
    },
    master_key::{MasterKey, Purpose},
    pds::keys::SigningKey,
    proto::{
        json_to_struct,
        quintet::{
            admin::v1::{self as admin_pb, admin_service_client::AdminServiceClient},
            griot::v1::{self as griot_pb, griot_service_client::GriotServiceClient},
            market::v1::{self as market_pb, market_service_client::MarketServiceClient},
            pds::v1::{self as pds_pb, pds_service_client::PdsServiceClient},
            registry::v1::{self as registry_pb, registry_service_client::RegistryServiceClient},
            store::v1::{self as store_pb, store_service_client::StoreServiceClient},
        },
    },
};
use ring::{
    rand::{SecureRandom, SystemRandom},
    signature::{Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair},
};
use serde_json::{Value, json};
use sqlx::{Connection, postgres::PgConnectOptions};
use tokio::io::AsyncWriteExt;
use tonic::{
    Code, Request, Response, Status, Streaming, metadata::MetadataValue, transport::Channel,
};

use crate::{harness::authed, registry::FakeIdentity};

const BINARY: &str = env!("CARGO_BIN_EXE_quintet");
const ISSUER: &str = "https://issuer.secrets.test";
const AUDIENCE: &str = "quintet-secrets-client";
const ESCROW: &str = "0x00000000000000000000000000000000000000000000000000000000005ec4e7";
const PRICE_MIST: i64 = 1_500_000_000;
/// Context the PDS binds its wrapped session-signing key to (src/pds/tokens.rs).
const JWT_KEY_CONTEXT: &[u8] = b"pds.jwt_key";

// ---------------------------------------------------------------------------------------------
// Secrets and the forms they may take

/// A secret and every byte string it could show up as.
#[derive(Clone, Debug)]
struct Secret {
    name: String,
    /// Callers that may receive it in a successful answer: whoever made it or was given it.
    visible_to: Vec<&'static str>,
    /// The server must keep it as it is to do its work (e.g. the query of a URL it fetches).
    kept: bool,
    forms: Vec<(String, Vec<u8>)>,
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes).unwrap();
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random token-like string: `prefix` and 192 random bits.
fn random_text(prefix: &str) -> String {
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(random::<24>()))
}

/// RFC 4648 base32, lower case, unpadded (multibase `b`).
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0);
    for &byte in bytes {
        buffer = (buffer << 8) | byte as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Hex and the four base64 alphabets/paddings of `bytes`.
fn encodings(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut forms = vec![
        ("hex".to_owned(), hex(bytes).into_bytes()),
        ("HEX".to_owned(), hex(bytes).to_uppercase().into_bytes()),
    ];
    for (name, engine) in [
        ("base64", &STANDARD),
        ("base64 unpadded", &STANDARD_NO_PAD),
        ("base64url", &URL_SAFE),
        ("base64url unpadded", &URL_SAFE_NO_PAD),
    ] {
        forms.push((name.to_owned(), engine.encode(bytes).into_bytes()));
    }
    forms
}

impl Secret {
    fn new(name: impl Into<String>, forms: Vec<(String, Vec<u8>)>) -> Self {
        let mut all: Vec<(String, Vec<u8>)> = Vec::new();
        for (form, bytes) in forms {
            // A log line may cut a value short: its tail (the random end of every secret here)
            // is searched for too.
            if bytes.len() >= 24 {
                let text = bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
                let tail = if text { 16 } else { 12 };
                all.push((
                    format!("{form}, last {tail}"),
                    bytes[bytes.len() - tail..].to_vec(),
                ));
            }
            all.push((form, bytes));
        }
        let mut seen = HashSet::new();
        all.retain(|(_, bytes)| bytes.len() >= 8 && seen.insert(bytes.clone()));
        Secret {
            name: name.into(),
            visible_to: Vec::new(),
            kept: false,
            forms: all,
        }
    }

    /// A secret string (token, password, JWT).
    fn text(name: impl Into<String>, value: &str) -> Self {
        assert!(value.len() >= 8, "secrets here are long enough to search");
        let mut forms = vec![("as given".to_owned(), value.as_bytes().to_vec())];
        let url_encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
        forms.push(("URL-encoded".to_owned(), url_encoded.into_bytes()));
        let json = serde_json::to_string(value).unwrap();
        forms.push((
            "JSON-escaped".to_owned(),
            json.as_bytes()[1..json.len() - 1].to_vec(),
        ));
        forms.extend(encodings(value.as_bytes()));
        Secret::new(name, forms)
    }

    /// Secret bytes (a key).
    fn bytes(name: impl Into<String>, value: &[u8]) -> Self {
        let mut forms = vec![("raw".to_owned(), value.to_vec())];
        forms.extend(encodings(value));
        forms.push((
            "base58 (multibase z)".to_owned(),
            bs58::encode(value).into_string().into_bytes(),
        ));
        forms.push((
            "base32 (multibase b)".to_owned(),
            base32(value).into_bytes(),
        ));
        forms.push((
            "BASE32".to_owned(),
            base32(value).to_uppercase().into_bytes(),
        ));
        let head = &value[..value.len().min(12)];
        let numbers: Vec<String> = head.iter().map(|b| b.to_string()).collect();
        forms.push((
            "Debug of a byte slice".to_owned(),
            format!("[{}", numbers.join(", ")).into_bytes(),
        ));
        forms.push((
            "JSON array".to_owned(),
            format!("[{}", numbers.join(",")).into_bytes(),
        ));
        let debug = format!("{:?}", bytes::Bytes::copy_from_slice(head));
        forms.push((
            "Debug of Bytes".to_owned(),
            debug.as_bytes()[2..debug.len() - 1].to_vec(),
        ));
        Secret::new(name, forms)
    }

    /// Adds a form (and its encodings) computed elsewhere, e.g. a key's PKCS#8 document.
    fn with_form(mut self, name: &str, value: &[u8]) -> Self {
        let mut extra = vec![(name.to_owned(), value.to_vec())];
        extra.extend(
            encodings(value)
                .into_iter()
                .map(|(form, bytes)| (format!("{name}, {form}"), bytes)),
        );
        let merged = Secret::new(self.name.clone(), extra);
        self.forms.extend(merged.forms);
        self
    }

    fn visible_to(mut self, callers: &[&'static str]) -> Self {
        self.visible_to = callers.to_vec();
        self
    }

    fn kept(mut self) -> Self {
        self.kept = true;
        self
    }
}

/// Finds every form of every secret in a byte string: an index on each form's first four bytes,
/// entered only where the first two bytes can start one.
struct Matcher {
    forms: Vec<(usize, usize, Vec<u8>)>,
    by_prefix: HashMap<[u8; 4], Vec<usize>>,
    pairs: Vec<bool>,
}

struct Found {
    secret: usize,
    form: usize,
    at: usize,
    len: usize,
}

impl Matcher {
    fn new(secrets: &[Secret]) -> Self {
        let mut forms = Vec::new();
        let mut by_prefix: HashMap<[u8; 4], Vec<usize>> = HashMap::new();
        let mut pairs = vec![false; 1 << 16];
        for (s, secret) in secrets.iter().enumerate() {
            for (f, (_, bytes)) in secret.forms.iter().enumerate() {
                pairs[(bytes[0] as usize) << 8 | bytes[1] as usize] = true;
                by_prefix
                    .entry(bytes[..4].try_into().unwrap())
                    .or_default()
                    .push(forms.len());
                forms.push((s, f, bytes.clone()));
            }
        }
        Matcher {
            forms,
            by_prefix,
            pairs,
        }
    }

    fn find(&self, haystack: &[u8]) -> Vec<Found> {
        let mut found = Vec::new();
        if haystack.len() < 4 {
            return found;
        }
        for at in 0..=haystack.len() - 4 {
            if !self.pairs[(haystack[at] as usize) << 8 | haystack[at + 1] as usize] {
                continue;
            }
            let prefix: [u8; 4] = haystack[at..at + 4].try_into().unwrap();
            if let Some(candidates) = self.by_prefix.get(&prefix) {
                for &i in candidates {
                    let (secret, form, bytes) = &self.forms[i];
                    if haystack[at..].starts_with(bytes) {
                        found.push(Found {
                            secret: *secret,
                            form: *form,
                            at,
                            len: bytes.len(),
                        });
                    }
                }
            }
        }
        found
    }
}

/// What a search turned up: where, which secret, in which form, and the bytes around it.
struct Leak {
    place: String,
    secret: String,
    form: String,
    context: String,
}

impl std::fmt::Display for Leak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} in {} ({}): …{}…",
            self.secret, self.place, self.form, self.context
        )
    }
}

fn context(haystack: &[u8], found: &Found) -> String {
    let start = found.at.saturating_sub(80);
    let end = (found.at + found.len + 80).min(haystack.len());
    String::from_utf8_lossy(&haystack[start..end])
        .escape_debug()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// What each caller was answered

#[derive(Clone, Default)]
struct Transcript(Arc<Mutex<Vec<Answer>>>);

struct Answer {
    caller: &'static str,
    rpc: &'static str,
    failed: bool,
    bytes: Vec<u8>,
}

impl Transcript {
    fn push(&self, caller: &'static str, rpc: &'static str, failed: bool, bytes: Vec<u8>) {
        self.0.lock().unwrap().push(Answer {
            caller,
            rpc,
            failed,
            bytes,
        });
    }

    /// Records an error: its message, its details (ErrorInfo, BadRequest...) and its metadata.
    fn failed(&self, caller: &'static str, rpc: &'static str, status: Status) -> Status {
        let mut bytes = status.message().as_bytes().to_vec();
        bytes.extend_from_slice(status.details());
        bytes.extend(format!("{:?}", status.metadata()).into_bytes());
        self.push(caller, rpc, true, bytes);
        status
    }

    /// Records a unary answer (its encoded message and metadata) and returns the message.
    fn unary<T: Message>(
        &self,
        caller: &'static str,
        rpc: &'static str,
        result: Result<Response<T>, Status>,
    ) -> Result<T, Status> {
        match result {
            Ok(response) => {
                let (metadata, message, _) = response.into_parts();
                let mut bytes = format!("{metadata:?}").into_bytes();
                bytes.extend(message.encode_to_vec());
                self.push(caller, rpc, false, bytes);
                Ok(message)
            }
            Err(status) => Err(self.failed(caller, rpc, status)),
        }
    }

    /// Records every message of a server stream, and the error that ends it if any.
    async fn stream<T: Message + Default>(
        &self,
        caller: &'static str,
        rpc: &'static str,
        result: Result<Response<Streaming<T>>, Status>,
    ) -> Result<Vec<T>, Status> {
        let (metadata, mut stream, _) = match result {
            Ok(response) => response.into_parts(),
            Err(status) => return Err(self.failed(caller, rpc, status)),
        };
        self.push(caller, rpc, false, format!("{metadata:?}").into_bytes());
        let mut messages = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(message)) => {
                    self.push(caller, rpc, false, message.encode_to_vec());
                    messages.push(message);
                }
                Ok(None) => break,
                Err(status) => return Err(self.failed(caller, rpc, status)),
            }
        }
        if let Ok(Some(trailers)) = stream.trailers().await {
            self.push(caller, rpc, false, format!("{trailers:?}").into_bytes());
        }
        Ok(messages)
    }
}

/// Everything the flows share: the channel, the transcript, the secrets met so far.
struct Flows {
    channel: Channel,
    seen: Transcript,
    secrets: Mutex<Vec<Secret>>,
    admin_token: String,
    canary: String,
}

impl Flows {
    fn keep(&self, secret: Secret) {
        self.secrets.lock().unwrap().push(secret);
    }

    /// Records a secret string and returns it.
    fn text(&self, name: &str, value: String, visible_to: &[&'static str]) -> String {
        self.keep(Secret::text(name, &value).visible_to(visible_to));
        value
    }
}

/// A request whose `authorization` metadata is `value` exactly.
fn with_authorization<T>(message: T, value: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", MetadataValue::try_from(value).unwrap());
    request
}

// ---------------------------------------------------------------------------------------------
// Loopback servers: the OIDC issuer's keys, the AI endpoint, an artifact host

type Handler = Arc<dyn Fn(&str, &[u8]) -> (u16, &'static str, Vec<u8>) + Send + Sync>;

/// An HTTP/1.1 server on loopback answering each request with `handler(head, body)`.
async fn http_server(handler: Handler) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let Some((head, body)) = crate::harness::read_http_request(&mut socket).await
                else {
                    return;
                };
                let (status, content_type, body) = handler(&head, &body);
                let mut response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                response.extend(body);
                let _ = socket.write_all(&response).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    url
}

fn fixture_key(n: u8) -> RsaKeyPair {
    let path = format!(
        "{}/tests/fixtures/oidc-test-key-{n}.der",
        env!("CARGO_MANIFEST_DIR")
    );
    RsaKeyPair::from_der(&std::fs::read(path).unwrap()).unwrap()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// An RS256 ID token for `claims`, signed by `key` under the key id `k1`.
fn id_token(key: &RsaKeyPair, claims: &Value) -> String {
    let header =
        URL_SAFE_NO_PAD.encode(json!({"alg": "RS256", "kid": "k1", "typ": "JWT"}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{payload}");
    let mut signature = vec![0u8; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        signed.as_bytes(),
        &mut signature,
    )
    .unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn claims(sub: &str) -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "email": format!("{sub}@example.com"),
        "email_verified": true, "name": sub, "iat": now(), "exp": now() + 3600,
    })
}

// ---------------------------------------------------------------------------------------------
// The binary

/// The running binary; killed if a failed assertion leaves it running.
struct Running {
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    stdout: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Copies a pipe into `into` until it closes, line by line, sending each line to `lines`.
fn drain(
    mut pipe: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
    lines: Option<std::sync::mpsc::Sender<Vec<u8>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 64 * 1024];
        let mut line = Vec::new();
        loop {
            let n = match pipe.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            into.lock().unwrap().extend_from_slice(&buffer[..n]);
            if let Some(lines) = &lines {
                for &byte in &buffer[..n] {
                    if byte == b'\n' {
                        let _ = lines.send(std::mem::take(&mut line));
                    } else {
                        line.push(byte);
                    }
                }
            }
        }
    })
}

fn start_binary(data_dir: &Path, envs: &[(&str, String)]) -> (Running, String) {
    let mut child = Command::new(BINARY)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("QUINTET_DATA_DIR", data_dir)
        .env("QUINTET_LISTEN", "127.0.0.1:0")
        .env("QUINTET_LOG", "trace")
        .env("QUINTET_LOG_FORMAT", "json")
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run quintet");
    let (stderr, stdout) = (Arc::default(), Arc::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let readers = vec![
        drain(child.stderr.take().unwrap(), Arc::clone(&stderr), Some(tx)),
        drain(child.stdout.take().unwrap(), Arc::clone(&stdout), None),
    ];
    let running = Running {
        child,
        stderr,
        stdout,
        readers,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("quintet did not start serving within 120 s");
        if let Ok(event) = serde_json::from_slice::<Value>(&line)
            && event["message"] == "serving gRPC (h2c)"
        {
            let addr = event["addr"].as_str().unwrap().to_owned();
            return (running, addr);
        }
    }
}

/// SIGTERM, a clean exit, and everything it wrote.
fn stop_binary(mut running: Running) -> (Vec<u8>, Vec<u8>) {
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(running.child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = running.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "quintet did not stop within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    for reader in std::mem::take(&mut running.readers) {
        reader.join().unwrap();
    }
    let stderr = std::mem::take(&mut *running.stderr.lock().unwrap());
    let stdout = std::mem::take(&mut *running.stdout.lock().unwrap());
    (stderr, stdout)
}

// ---------------------------------------------------------------------------------------------
// The flows, service by service

async fn admin_flows(f: &Flows) {
    let mut admin = AdminServiceClient::new(f.channel.clone());
    let request = || admin_pb::GetServerInfoRequest {};
    f.seen
        .unary(
            "admin",
            "GetServerInfo",
            admin
                .get_server_info(authed(request(), &f.admin_token))
                .await,
        )
        .unwrap();
    let wrong = f.text("a wrong admin token", random_text("qadm_"), &[]);
    let error = f
        .seen
        .unary(
            "anonymous",
            "GetServerInfo",
            admin.get_server_info(authed(request(), &wrong)).await,
        )
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
    // Credentials in a scheme the server does not take are refused, not echoed.
    let basic = f.text(
        "HTTP Basic credentials",
        format!("admin:{}", random_text("pw-")),
        &[],
    );
    let error = f
        .seen
        .unary(
            "anonymous",
            "GetServerInfo",
            admin
                .get_server_info(with_authorization(
                    request(),
                    &format!("Basic {}", STANDARD.encode(&basic)),
                ))
                .await,
        )
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
}

async fn store_flows(f: &Flows) {
    let mut store = StoreServiceClient::new(f.channel.clone());
    let object = || {
        use store_pb::put_object_request::Part;
        vec![
            store_pb::PutObjectRequest {
                part: Some(Part::Manifest(store_pb::ManifestHeader {
                    class_id: "3f1c1a52-8a52-4a6e-9d0c-1d2f0e6a7b11".into(),
                    unpacker_name: "secrets@v1".into(),
                    tags: json_to_struct(&json!({"kind": "secrets"})),
                })),
            },
            store_pb::PutObjectRequest {
                part: Some(Part::Content(store_pb::ContentHeader {
                    content_name: "config".into(),
                    content_type: "application/json".into(),
                    serializer_name: "json@v1".into(),
                    serializer_type: store_pb::SerializerType::Value as i32,
                    ..Default::default()
                })),
            },
            store_pb::PutObjectRequest {
                part: Some(Part::Chunk(br#"{"lr":0.01}"#.to_vec().into())),
            },
        ]
    };
    f.seen
        .unary(
            "admin",
            "PutObject",
            store
                .put_object(authed(tokio_stream::iter(object()), &f.admin_token))
                .await,
        )
        .unwrap();
    let wrong = f.text("a wrong store token", random_text("qadm_"), &[]);
    let error = f
        .seen
        .unary(
            "anonymous",
            "PutObject",
            store
                .put_object(authed(tokio_stream::iter(object()), &wrong))
                .await,
        )
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
    let error = f
        .seen
        .unary(
            "anonymous",
            "ListManifests",
            store
                .list_manifests(store_pb::ListManifestsRequest::default())
                .await,
        )
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
    f.seen
        .unary(
            "admin",
            "ListManifests",
            store
                .list_manifests(authed(
                    store_pb::ListManifestsRequest::default(),
                    &f.admin_token,
                ))
                .await,
        )
        .unwrap();
}

async fn registry_flows(f: &Flows, identity: &FakeIdentity) {
    use registry_pb::{TokenScope, publish_package_request::Part};
    let mut registry = RegistryServiceClient::new(f.channel.clone());
    let oauth = f.text("octocat's OAuth token", identity.user("octocat"), &[]);
    f.seen
        .unary(
            "octocat",
            "SignIn",
            registry
                .sign_in(authed(registry_pb::SignInRequest {}, &oauth))
                .await,
        )
        .unwrap();
    let unknown = f.text(
        "an OAuth token the identity provider does not know",
        format!("gho_{}", hex(&random::<16>())),
        &[],
    );
    let error = f
        .seen
        .unary(
            "anonymous",
            "SignIn",
            registry
                .sign_in(authed(registry_pb::SignInRequest {}, &unknown))
                .await,
        )
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);

    // Octocat mints his own API token; the admin makes Eve and a token for her.
    let token_request =
        |username: &str, scopes: &[TokenScope]| registry_pb::CreateApiTokenRequest {
            username: username.into(),
            name: "laptop".into(),
            scopes: scopes.iter().map(|s| *s as i32).collect(),
            ..Default::default()
        };
    let octocat = f
        .seen
        .unary(
            "octocat",
            "CreateApiToken",
            registry
                .create_api_token(authed(
                    token_request("", &[TokenScope::PublishNew, TokenScope::PublishUpdate]),
                    &oauth,
                ))
                .await,
        )
        .unwrap();
    let octocat_token = f.text("octocat's API token", octocat.token, &["octocat"]);
    f.seen
        .unary(
            "admin",
            "CreateUser",
            registry
                .create_user(authed(
                    registry_pb::CreateUserRequest {
                        username: "eve".into(),
                    },
                    &f.admin_token,
                ))
                .await,
        )
        .unwrap();
    let eve = f
        .seen
        .unary(
            "admin",
            "CreateApiToken",
            registry
                .create_api_token(authed(
                    token_request("eve", &[TokenScope::Star]),
                    &f.admin_token,
                ))
                .await,
        )
        .unwrap();
    let eve_token = f.text("eve's API token", eve.token, &["admin"]);
    // An API token cannot mint tokens, nor list someone else's.
    let error = f
        .seen
        .unary(
            "eve",
            "CreateApiToken",
            registry
                .create_api_token(authed(token_request("", &[TokenScope::Star]), &eve_token))
                .await,
        )
        .unwrap_err();
    assert_ne!(error.code(), Code::Ok);
    let error = f
        .seen
        .unary(
            "eve",
            "ListApiTokens",
            registry
                .list_api_tokens(authed(
                    registry_pb::ListApiTokensRequest {
                        username: "octocat".into(),
                    },
                    &eve_token,
                ))
                .await,
        )
        .unwrap_err();
    assert_ne!(error.code(), Code::Ok);

    // Publish with the API token, star with Eve's, read as anyone.
    let publish = |token: &str, version: &str| {
        let manifest = json!({
            "name": "secret-free", "version": version, "description": "keeps nothing",
            "keywords": ["editor"], "license": "MIT", "engines": {"atom": ">=1.0.0 <2.0.0"},
        });
        let mut tarball = vec![0x1f, 0x8b, 0x08, 0x00];
        tarball.extend_from_slice(format!("secret-free {version}").as_bytes());
        let messages = vec![
            registry_pb::PublishPackageRequest {
                part: Some(Part::Header(registry_pb::PublishHeader {
                    manifest_json: manifest.to_string(),
                    readme: "# secret-free".into(),
                    tarball_sha256: String::new(),
                })),
            },
            registry_pb::PublishPackageRequest {
                part: Some(Part::Chunk(tarball.into())),
            },
        ];
        authed(tokio_stream::iter(messages), token)
    };
    f.seen
        .unary(
            "octocat",
            "PublishPackage",
            registry
                .publish_package(publish(&octocat_token, "1.0.0"))
                .await,
        )
        .unwrap();
    f.seen
        .unary(
            "eve",
            "StarPackage",
            registry
                .star_package(authed(
                    registry_pb::StarPackageRequest {
                        package_name: "secret-free".into(),
                    },
                    &eve_token,
                ))
                .await,
        )
        .unwrap();
    f.seen
        .unary(
            "anonymous",
            "GetPackage",
            registry
                .get_package(registry_pb::GetPackageRequest {
                    name: "secret-free".into(),
                })
                .await,
        )
        .unwrap();
    f.seen
        .unary(
            "anonymous",
            "ListStargazers",
            registry
                .list_stargazers(registry_pb::ListStargazersRequest {
                    package_name: "secret-free".into(),
                    ..Default::default()
                })
                .await,
        )
        .unwrap();
    f.seen
        .unary(
            "admin",
            "ListApiTokens",
            registry
                .list_api_tokens(authed(
                    registry_pb::ListApiTokensRequest {
                        username: "eve".into(),
                    },
                    &f.admin_token,
                ))
                .await,
        )
        .unwrap();
    let listed = f
        .seen
        .unary(
            "octocat",
            "ListApiTokens",
            registry
                .list_api_tokens(authed(registry_pb::ListApiTokensRequest::default(), &oauth))
                .await,
        )
        .unwrap();

    // Revoked, the token is refused.
    f.seen
        .unary(
            "octocat",
            "RevokeApiToken",
            registry
                .revoke_api_token(authed(
                    registry_pb::RevokeApiTokenRequest {
                        id: listed.api_tokens[0].id.clone(),
                    },
                    &oauth,
                ))
                .await,
        )
        .unwrap();
    let error = f
        .seen
        .unary(
            "octocat",
            "PublishPackage",
            registry
                .publish_package(publish(&octocat_token, "1.0.1"))
                .await,
        )
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
    let wrong = f.text("a wrong registry token", random_text("qreg_"), &[]);
    let error = f
        .seen
        .unary(
            "anonymous",
            "PublishPackage",
            registry.publish_package(publish(&wrong, "1.0.2")).await,
        )
        .unwrap_err();
    assert_ne!(error.code(), Code::Ok);
}

fn post(text: &str) -> Option<prost_types::Struct> {
    json_to_struct(&json!({
        "$type": "app.bsky.feed.post", "text": text, "createdAt": "2026-11-24T00:00:00.000Z",
    }))
}

/// Alice, her passwords, sessions and app password; Bob, who migrates with his own key; Cat, who
/// deletes her account; and everyone reading what is public.
async fn pds_flows(f: &Flows) -> (String, String) {
    let mut pds =
        PdsServiceClient::new(f.channel.clone()).max_decoding_message_size(64 * 1024 * 1024);
    let account =
        |handle: &str, password: &str, did: &str, key: &[u8]| pds_pb::CreateAccountRequest {
            handle: handle.into(),
            email: format!("{}@example.com", handle.split('.').next().unwrap()),
            password: password.into(),
            did: did.into(),
            signing_key: key.to_vec().into(),
        };
    let sign_in = |identifier: &str, password: &str| pds_pb::CreateSessionRequest {
        identifier: identifier.into(),
        password: password.into(),
    };
    let session_secrets = |f: &Flows, who: &'static str, session: &pds_pb::Session| {
        f.text(
            &format!("{who}'s access JWT"),
            session.access_jwt.clone(),
            &[who],
        );
        f.text(
            &format!("{who}'s refresh JWT"),
            session.refresh_jwt.clone(),
            &[who],
        );
    };

    let alice_password = f.text(
        "alice's password",
        format!("correct horse {}", random_text("")),
        &[],
    );
    let first = f
        .seen
        .unary(
            "alice",
            "CreateAccount",
            pds.create_account(account("alice.test", &alice_password, "", &[]))
                .await,
        )
        .unwrap()
        .session
        .unwrap();
    session_secrets(f, "alice", &first);
    let did = first.did.clone();

    // Wrong passwords, for her and for nobody, are refused without saying which part was wrong.
    let wrong = f.text(
        "a wrong password",
        format!("wrong horse {}", random_text("")),
        &[],
    );
    for identifier in ["alice.test", "nobody.test"] {
        let error = f
            .seen
            .unary(
                "anonymous",
                "CreateSession",
                pds.create_session(sign_in(identifier, &wrong)).await,
            )
            .unwrap_err();
        assert_eq!(error.code(), Code::Unauthenticated);
    }
    let second = f
        .seen
        .unary(
            "alice",
            "CreateSession",
            pds.create_session(sign_in("alice.test", &alice_password))
                .await,
        )
        .unwrap()
        .session
        .unwrap();
    session_secrets(f, "alice", &second);

    // Refresh (single use): the old pair stops working.
    let third = f
        .seen
        .unary(
            "alice",
            "RefreshSession",
            pds.refresh_session(authed(
                pds_pb::RefreshSessionRequest {},
                &second.refresh_jwt,
            ))
            .await,
        )
        .unwrap()
        .session
        .unwrap();
    session_secrets(f, "alice", &third);
    for token in [&second.refresh_jwt, &second.access_jwt] {
        let error = f
            .seen
            .unary(
                "alice",
                "RefreshSession",
                pds.refresh_session(authed(pds_pb::RefreshSessionRequest {}, token))
                    .await,
            )
            .unwrap_err();
        assert_eq!(error.code(), Code::Unauthenticated);
    }
    let error = f
        .seen
        .unary(
            "alice",
            "GetSession",
            pds.get_session(authed(pds_pb::GetSessionRequest {}, &second.access_jwt))
                .await,
        )
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
    let access = third.access_jwt.clone();
    f.seen
        .unary(
            "alice",
            "GetSession",
            pds.get_session(authed(pds_pb::GetSessionRequest {}, &access))
                .await,
        )
        .unwrap();

    // Forged tokens: a changed signature, and a right-looking one under another key.
    let (signed, signature) = access.rsplit_once('.').unwrap();
    let mut tampered = URL_SAFE_NO_PAD.decode(signature).unwrap();
    // The last byte: the tail of the token differs from the real one's too.
    tampered[31] ^= 0x01;
    let tampered = f.text(
        "a tampered access JWT",
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tampered)),
        &[],
    );
    let other_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &random::<32>());
    let forged = f.text(
        "an access JWT signed with another key",
        format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(ring::hmac::sign(&other_key, signed.as_bytes()))
        ),
        &[],
    );
    for token in [&tampered, &forged] {
        let error = f
            .seen
            .unary(
                "anonymous",
                "GetSession",
                pds.get_session(authed(pds_pb::GetSessionRequest {}, token))
                    .await,
            )
            .unwrap_err();
        assert_eq!(error.code(), Code::Unauthenticated);
    }

    // An app password, a session with it, and what that session may not do.
    let created = f
        .seen
        .unary(
            "alice",
            "CreateAppPassword",
            pds.create_app_password(authed(
                pds_pb::CreateAppPasswordRequest { name: "ci".into() },
                &access,
            ))
            .await,
        )
        .unwrap();
    let app_password = f.text("alice's app password", created.password, &["alice"]);
    let app_session = f
        .seen
        .unary(
            "alice",
            "CreateSession",
            pds.create_session(sign_in(&did, &app_password)).await,
        )
        .unwrap()
        .session
        .unwrap();
    session_secrets(f, "alice", &app_session);
    let error = f
        .seen
        .unary(
            "alice",
            "CreateAppPassword",
            pds.create_app_password(authed(
                pds_pb::CreateAppPasswordRequest {
                    name: "more".into(),
                },
                &app_session.access_jwt,
            ))
            .await,
        )
        .unwrap_err();
    assert_ne!(error.code(), Code::Ok);
    f.seen
        .unary(
            "alice",
            "ListAppPasswords",
            pds.list_app_passwords(authed(pds_pb::ListAppPasswordsRequest {}, &access))
                .await,
        )
        .unwrap();

    // Writes: a record, a blob, a handle change (a PLC operation under her rotation key).
    f.seen
        .unary(
            "alice",
            "CreateRecord",
            pds.create_record(authed(
                pds_pb::CreateRecordRequest {
                    repo: did.clone(),
                    collection: "app.bsky.feed.post".into(),
                    rkey: String::new(),
                    record: post(&format!("hello from {}", f.canary)),
                    swap_commit: String::new(),
                },
                &app_session.access_jwt,
            ))
            .await,
        )
        .unwrap();
    let blob = vec![
        pds_pb::UploadBlobRequest {
            part: Some(pds_pb::upload_blob_request::Part::Header(
                pds_pb::BlobHeader {
                    mime_type: "text/plain".into(),
                },
            )),
        },
        pds_pb::UploadBlobRequest {
            part: Some(pds_pb::upload_blob_request::Part::Chunk(
                format!("a blob with {} inside", f.canary)
                    .into_bytes()
                    .into(),
            )),
        },
    ];
    f.seen
        .unary(
            "alice",
            "UploadBlob",
            pds.upload_blob(authed(tokio_stream::iter(blob), &access))
                .await,
        )
        .unwrap();
    f.seen
        .unary(
            "alice",
            "UpdateHandle",
            pds.update_handle(authed(
                pds_pb::UpdateHandleRequest {
                    handle: "alice2.test".into(),
                },
                &access,
            ))
            .await,
        )
        .unwrap();

    // Bob migrates with his own signing key; a key that is not one is refused.
    let bob_key = SigningKey::generate();
    f.keep(Secret::bytes(
        "bob's signing key (his own, migrating)",
        &bob_key.to_bytes(),
    ));
    let bob_password = f.text(
        "bob's password",
        format!("battery staple {}", random_text("")),
        &[],
    );
    let mut not_a_key = random::<32>();
    not_a_key[..16].fill(0xff);
    f.keep(Secret::bytes("a signing key that is not one", &not_a_key));
    let error = f
        .seen
        .unary(
            "bob",
            "CreateAccount",
            pds.create_account(account(
                "bob.test",
                &bob_password,
                "did:web:bob.example.com",
                &not_a_key,
            ))
            .await,
        )
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    let bob = f
        .seen
        .unary(
            "bob",
            "CreateAccount",
            pds.create_account(account(
                "bob.test",
                &bob_password,
                "did:web:bob.example.com",
                &bob_key.to_bytes(),
            ))
            .await,
        )
        .unwrap()
        .session
        .unwrap();
    session_secrets(f, "bob", &bob);

    // Cat deletes her account: not with a wrong password, then with hers.
    let cat_password = f.text(
        "cat's password",
        format!("tabby cat {}", random_text("")),
        &[],
    );
    let cat = f
        .seen
        .unary(
            "cat",
            "CreateAccount",
            pds.create_account(account("cat.test", &cat_password, "", &[]))
                .await,
        )
        .unwrap()
        .session
        .unwrap();
    session_secrets(f, "cat", &cat);
    let error = f
        .seen
        .unary(
            "cat",
            "DeleteAccount",
            pds.delete_account(authed(
                pds_pb::DeleteAccountRequest {
                    password: wrong.clone(),
                },
                &cat.access_jwt,
            ))
            .await,
        )
        .unwrap_err();
    assert_ne!(error.code(), Code::Ok);
    f.seen
        .unary(
            "cat",
            "DeleteAccount",
            pds.delete_account(authed(
                pds_pb::DeleteAccountRequest {
                    password: cat_password.clone(),
                },
                &cat.access_jwt,
            ))
            .await,
        )
        .unwrap();

    // Someone else's token does not make an admin.
    let error = f
        .seen
        .unary(
            "alice",
            "SetAccountTakedown",
            pds.set_account_takedown(authed(
                pds_pb::SetAccountTakedownRequest {
                    did: bob.did.clone(),
                    takendown: true,
                },
                &access,
            ))
            .await,
        )
        .unwrap_err();
    assert_ne!(error.code(), Code::Ok);

    // What anyone, and Bob, can read of Alice.
    for caller in ["anonymous", "bob"] {
        f.seen
            .unary(
                caller,
                "DescribeRepo",
                pds.describe_repo(pds_pb::DescribeRepoRequest { repo: did.clone() })
                    .await,
            )
            .unwrap();
        f.seen
            .unary(
                caller,
                "ListRecords",
                pds.list_records(pds_pb::ListRecordsRequest {
                    repo: did.clone(),
                    collection: "app.bsky.feed.post".into(),
                    ..Default::default()
                })
                .await,
            )
            .unwrap();
        f.seen
            .stream(
                caller,
                "GetRepo",
                pds.get_repo(pds_pb::GetRepoRequest {
                    did: did.clone(),
                    since: String::new(),
                })
                .await,
            )
            .await
            .unwrap();
    }
    f.seen
        .unary(
            "anonymous",
            "ListRepos",
            pds.list_repos(pds_pb::ListReposRequest::default()).await,
        )
        .unwrap();
    f.seen
        .unary(
            "anonymous",
            "GetLatestCommit",
            pds.get_latest_commit(pds_pb::GetLatestCommitRequest { did: did.clone() })
                .await,
        )
        .unwrap();
    // The firehose, replayed from the start (it then waits for more: stop when it goes quiet).
    let mut firehose = pds
        .subscribe_repos(pds_pb::SubscribeReposRequest { cursor: Some(0) })
        .await
        .unwrap()
        .into_inner();
    let mut events = 0;
    while let Ok(Ok(Some(message))) =
        tokio::time::timeout(Duration::from_secs(2), firehose.message()).await
    {
        f.seen.push(
            "anonymous",
            "SubscribeRepos",
            false,
            message.encode_to_vec(),
        );
        events += 1;
    }
    assert!(events >= 3, "the firehose replayed {events} events");

    // Signing out ends the session.
    f.seen
        .unary(
            "alice",
            "DeleteSession",
            pds.delete_session(authed(pds_pb::DeleteSessionRequest {}, &third.refresh_jwt))
                .await,
        )
        .unwrap();
    (did, access)
}

async fn market_flows(f: &Flows, ledger: &StandInLedger) {
    use market_pb::download_dataset_response::Part as Download;
    let mut market = MarketServiceClient::new(f.channel.clone());
    let key = fixture_key(1);
    let mut sessions: HashMap<&'static str, String> = HashMap::new();
    for who in ["ada", "bea", "cal"] {
        let token = f.text(
            &format!("{who}'s ID token"),
            id_token(&key, &claims(who)),
            &[],
        );
        let signed_in = f
            .seen
            .unary(
                who,
                "SignIn",
                market
                    .sign_in(market_pb::SignInRequest { id_token: token })
                    .await,
            )
            .unwrap();
        let user = signed_in.user.unwrap();
        f.keep(
            Secret::text(format!("{who}'s salt"), &user.salt)
                .visible_to(&[who])
                .kept(),
        );
        sessions.insert(
            who,
            f.text(
                &format!("{who}'s market session"),
                signed_in.session_token,
                &[who],
            ),
        );
    }
    // ID tokens that must not sign anyone in: expired, for another client, signed by a stranger.
    let mut expired = claims("ada");
    expired["iat"] = json!(now() - 7200);
    expired["exp"] = json!(now() - 3600);
    let mut elsewhere = claims("ada");
    elsewhere["aud"] = json!("another-client");
    for (what, token) in [
        ("an expired ID token", id_token(&key, &expired)),
        ("an ID token for another client", id_token(&key, &elsewhere)),
        (
            "an ID token with a bad signature",
            id_token(&fixture_key(2), &claims("ada")),
        ),
    ] {
        let token = f.text(what, token, &[]);
        let error = f
            .seen
            .unary(
                "anonymous",
                "SignIn",
                market
                    .sign_in(market_pb::SignInRequest { id_token: token })
                    .await,
            )
            .unwrap_err();
        assert_eq!(error.code(), Code::Unauthenticated, "{what}");
    }
    let (ada, bea, cal) = (
        sessions["ada"].clone(),
        sessions["bea"].clone(),
        sessions["cal"].clone(),
    );
    for who in ["ada", "bea", "cal"] {
        f.seen
            .unary(
                who,
                "GetCurrentUser",
                market
                    .get_current_user(authed(market_pb::GetCurrentUserRequest {}, &sessions[who]))
                    .await,
            )
            .unwrap();
    }
    // A second session of Ada's, signed out, then refused.
    let extra = f
        .seen
        .unary(
            "ada",
            "SignIn",
            market
                .sign_in(market_pb::SignInRequest {
                    id_token: f.text("ada's second ID token", id_token(&key, &claims("ada")), &[]),
                })
                .await,
        )
        .unwrap()
        .session_token;
    let extra = f.text("ada's signed-out session", extra, &["ada"]);
    f.seen
        .unary(
            "ada",
            "SignOut",
            market
                .sign_out(authed(market_pb::SignOutRequest {}, &extra))
                .await,
        )
        .unwrap();
    let wrong = f.text("a wrong market session", random_text("qmkt_"), &[]);
    for token in [&extra, &wrong] {
        let error = f
            .seen
            .unary(
                "anonymous",
                "GetCurrentUser",
                market
                    .get_current_user(authed(market_pb::GetCurrentUserRequest {}, token))
                    .await,
            )
            .unwrap_err();
        assert_eq!(error.code(), Code::Unauthenticated);
    }

    // Bea proves her Sui address with her wallet.
    let seed = random::<32>();
    f.keep(Secret::bytes("bea's Sui wallet key", &seed));
    let wallet = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
    let challenge = f
        .seen
        .unary(
            "bea",
            "GetSuiAddressChallenge",
            market
                .get_sui_address_challenge(authed(
                    market_pb::GetSuiAddressChallengeRequest {},
                    &bea,
                ))
                .await,
        )
        .unwrap()
        .message;
    let address = f
        .seen
        .unary(
            "bea",
            "ProveSuiAddress",
            market
                .prove_sui_address(authed(
                    market_pb::ProveSuiAddressRequest {
                        signature: sui::sign_personal_message(&wallet, challenge.as_bytes()),
                    },
                    &bea,
                ))
                .await,
        )
        .unwrap()
        .user
        .unwrap()
        .sui_address;

    // Ada sells a dataset.
    let data = b"city,temp_c\nOslo,4.5\nLima,19\nNuuk,-7\n".to_vec();
    let upload = vec![
        market_pb::UploadDatasetRequest {
            part: Some(market_pb::upload_dataset_request::Part::Header(
                market_pb::DatasetHeader {
                    file_type: "text/csv".into(),
                },
            )),
        },
        market_pb::UploadDatasetRequest {
            part: Some(market_pb::upload_dataset_request::Part::Chunk(
                data.clone().into(),
            )),
        },
    ];
    let dataset = f
        .seen
        .unary(
            "ada",
            "UploadDataset",
            market
                .upload_dataset(authed(tokio_stream::iter(upload), &ada))
                .await,
        )
        .unwrap()
        .dataset
        .unwrap();
    let datapod = f
        .seen
        .unary(
            "ada",
            "CreateDatapod",
            market
                .create_datapod(authed(
                    market_pb::CreateDatapodRequest {
                        dataset_id: dataset.id,
                        title: "City temperatures".into(),
                        description: "Daily readings".into(),
                        category: "weather".into(),
                        price_mist: PRICE_MIST,
                    },
                    &ada,
                ))
                .await,
        )
        .unwrap()
        .datapod
        .unwrap();
    f.seen
        .unary(
            "ada",
            "PublishDatapod",
            market
                .publish_datapod(authed(
                    market_pb::PublishDatapodRequest {
                        id: datapod.id.clone(),
                    },
                    &ada,
                ))
                .await,
        )
        .unwrap();

    // Bea pays and buys; only she downloads, and only she can unwrap the key.
    let digest = ledger.transfer(&Transfer {
        sender: &address,
        recipient: ESCROW,
        coin_type: SUI_COIN_TYPE,
        amount_mist: PRICE_MIST,
        checkpointed: true,
        succeeded: true,
    });
    let private = ring::agreement::EphemeralPrivateKey::generate(
        &ring::agreement::X25519,
        &SystemRandom::new(),
    )
    .unwrap();
    let public = private.compute_public_key().unwrap().as_ref().to_vec();
    let purchase = f
        .seen
        .unary(
            "bea",
            "CreatePurchase",
            market
                .create_purchase(authed(
                    market_pb::CreatePurchaseRequest {
                        datapod_id: datapod.id.clone(),
                        payment_tx_digest: digest,
                        buyer_public_key: public.into(),
                        idempotency_key: "bea-1".into(),
                    },
                    &bea,
                ))
                .await,
        )
        .unwrap()
        .purchase
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = f
            .seen
            .unary(
                "bea",
                "GetPurchase",
                market
                    .get_purchase(authed(
                        market_pb::GetPurchaseRequest {
                            id: purchase.id.clone(),
                        },
                        &bea,
                    ))
                    .await,
            )
            .unwrap()
            .purchase
            .unwrap();
        if now.status() == market_pb::PurchaseStatus::Completed {
            break;
        }
        assert!(Instant::now() < deadline, "the purchase never completed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let download = |session: &str| {
        authed(
            market_pb::DownloadDatasetRequest {
                purchase_id: purchase.id.clone(),
            },
            session,
        )
    };
    let messages = f
        .seen
        .stream(
            "bea",
            "DownloadDataset",
            market.download_dataset(download(&bea)).await,
        )
        .await
        .unwrap();
    let mut header = None;
    let mut ciphertext = Vec::new();
    for message in messages {
        match message.part.unwrap() {
            Download::Header(h) => header = Some(h),
            Download::Chunk(chunk) => ciphertext.extend_from_slice(&chunk),
        }
    }
    let header = header.unwrap();
    let dataset_key = crypto::unwrap_as_buyer(private, &header.wrapped_key, &purchase.id).unwrap();
    let nonce: [u8; 12] = header.base_nonce.as_ref().try_into().unwrap();
    assert_eq!(
        crypto::decrypt(&dataset_key, nonce, &ciphertext).unwrap(),
        data
    );
    // Nobody is ever given the dataset key in the clear, not even its buyer.
    f.keep(Secret::bytes("the dataset key", &dataset_key));
    for (who, session) in [("ada", &ada), ("cal", &cal)] {
        let error = f
            .seen
            .stream(
                who,
                "DownloadDataset",
                market.download_dataset(download(session)).await,
            )
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::NotFound, "{who}");
    }
    let error = f
        .seen
        .unary(
            "cal",
            "GetPurchase",
            market
                .get_purchase(authed(
                    market_pb::GetPurchaseRequest {
                        id: purchase.id.clone(),
                    },
                    &cal,
                ))
                .await,
        )
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);

    // Reads of the datapod by its buyer, a stranger and anyone.
    for (who, session) in [
        ("bea", Some(&bea)),
        ("cal", Some(&cal)),
        ("anonymous", None),
    ] {
        let request = market_pb::GetDatapodRequest {
            id: datapod.id.clone(),
        };
        let request = match session {
            Some(session) => authed(request, session),
            None => Request::new(request),
        };
        f.seen
            .unary(who, "GetDatapod", market.get_datapod(request).await)
            .unwrap();
        let request = market_pb::SearchDatapodsRequest {
            query: "temperatures".into(),
            ..Default::default()
        };
        let request = match session {
            Some(session) => authed(request, session),
            None => Request::new(request),
        };
        f.seen
            .unary(who, "SearchDatapods", market.search_datapods(request).await)
            .unwrap();
    }
    f.seen
        .unary(
            "ada",
            "ListMyDatapods",
            market
                .list_my_datapods(authed(market_pb::ListMyDatapodsRequest::default(), &ada))
                .await,
        )
        .unwrap();
    f.seen
        .unary(
            "ada",
            "GetSellerAnalytics",
            market
                .get_seller_analytics(authed(market_pb::GetSellerAnalyticsRequest {}, &ada))
                .await,
        )
        .unwrap();
    for (who, session) in [("ada", &ada), ("bea", &bea)] {
        f.seen
            .unary(
                who,
                "ListPurchaseHistory",
                market
                    .list_purchase_history(authed(
                        market_pb::ListPurchaseHistoryRequest::default(),
                        session,
                    ))
                    .await,
            )
            .unwrap();
    }

    // AI chat: the endpoint gets the key; its failure reaches Bea without it.
    let conversation = f
        .seen
        .unary(
            "bea",
            "CreateConversation",
            market
                .create_conversation(authed(
                    market_pb::CreateConversationRequest {
                        title: "Weather".into(),
                    },
                    &bea,
                ))
                .await,
        )
        .unwrap()
        .conversation
        .unwrap();
    let send = |content: &str| {
        authed(
            market_pb::SendMessageRequest {
                conversation_id: conversation.id.clone(),
                content: content.into(),
                datapod_id: datapod.id.clone(),
            },
            &bea,
        )
    };
    f.seen
        .stream(
            "bea",
            "SendMessage",
            market.send_message(send("What columns are there?")).await,
        )
        .await
        .unwrap();
    let error = f
        .seen
        .stream(
            "bea",
            "SendMessage",
            market.send_message(send("please fail")).await,
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    f.seen
        .unary(
            "bea",
            "GetConversation",
            market
                .get_conversation(authed(
                    market_pb::GetConversationRequest {
                        id: conversation.id.clone(),
                    },
                    &bea,
                ))
                .await,
        )
        .unwrap();
}

/// A gzip'd tar holding `files`, stored uncompressed so that its contents stay searchable.
fn tarball(files: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
    let mut builder = tar::Builder::new(gz);
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// PKCS#8 v1 of an Ed25519 seed (RFC 8410): what `openssl genpkey` writes.
fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    let mut document = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    document.extend_from_slice(seed);
    document
}

/// Packages signed by an author whose key never leaves the test, one uploaded and two by
/// pre-signed URLs (one of which fails), installed and followed.
async fn griot_flows(f: &Flows, artifacts: &str, good_query: &str, bad_query: &str) -> String {
    let mut griot = GriotServiceClient::new(f.channel.clone());
    let seed = random::<32>();
    let key = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
    f.keep(
        Secret::bytes("the Griot author's key", &seed)
            .with_form("PKCS#8", &ed25519_pkcs8(&seed))
            .with_form(
                "multicodec ed25519-priv",
                &[&[0x80, 0x26][..], &seed].concat(),
            ),
    );
    let author = DidKey::from_public_key(key.public_key().as_ref().try_into().unwrap())
        .as_str()
        .to_owned();
    let signed = |name: &str, artifact: &[u8]| {
        let manifest = json!({
            "name": name, "node_class": "sensor", "version": "1.0.0", "author": author,
            "description": "reads the temperature", "artifact_sha256": sha256_hex(artifact),
        });
        let signature = encode_signature(key.sign(&signing_bytes(&manifest).unwrap()).as_ref());
        (manifest.to_string(), signature)
    };
    let header = |manifest_json: String, signature: String, package_id: &str, url: &str| {
        griot_pb::RegisterPackageRequest {
            part: Some(griot_pb::register_package_request::Part::Header(
                griot_pb::PackageHeader {
                    manifest_json,
                    signature,
                    package_id: package_id.into(),
                    artifact_url: url.into(),
                },
            )),
        }
    };

    // Uploaded: the artifact carries the canary to the blob storage and the node.
    let uploaded = tarball(&[("run.sh", format!("echo {}", f.canary).as_bytes())]);
    let (manifest, signature) = signed("thermo", &uploaded);
    let messages = vec![
        header(manifest, signature, "", ""),
        griot_pb::RegisterPackageRequest {
            part: Some(griot_pb::register_package_request::Part::Chunk(
                uploaded.clone().into(),
            )),
        },
    ];
    let thermo = f
        .seen
        .unary(
            "admin",
            "RegisterPackage",
            griot
                .register_package(authed(tokio_stream::iter(messages.clone()), &f.admin_token))
                .await,
        )
        .unwrap()
        .package
        .unwrap()
        .package_id;
    let wrong = f.text("a wrong Griot token", random_text("qadm_"), &[]);
    let error = f
        .seen
        .unary(
            "anonymous",
            "RegisterPackage",
            griot
                .register_package(authed(tokio_stream::iter(messages), &wrong))
                .await,
        )
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);

    // By pre-signed URL: its query is a credential of the artifact host.
    let fetched = tarball(&[("run.sh", b"echo fetched")]);
    let (manifest, signature) = signed("hygro", &fetched);
    let url = format!("{artifacts}/hygro.tgz?X-Amz-Signature={good_query}");
    let hygro = f
        .seen
        .unary(
            "admin",
            "RegisterPackage",
            griot
                .register_package(authed(
                    tokio_stream::iter(vec![header(
                        manifest.clone(),
                        signature.clone(),
                        &sha256_hex(&fetched),
                        &url,
                    )]),
                    &f.admin_token,
                ))
                .await,
        )
        .unwrap()
        .package
        .unwrap()
        .package_id;
    // A bad signature, and credentials in the URL itself, are refused without echoing them.
    let user_password = f.text("a password in an artifact URL", random_text("pw-"), &[]);
    let (_, other_signature) = signed("other", b"other");
    for (signature, url) in [
        (other_signature, url.clone()),
        (
            signature.clone(),
            format!("http://user:{user_password}@127.0.0.1:1/hygro.tgz"),
        ),
    ] {
        let error = f
            .seen
            .unary(
                "admin",
                "RegisterPackage",
                griot
                    .register_package(authed(
                        tokio_stream::iter(vec![header(
                            manifest.clone(),
                            signature,
                            &sha256_hex(&fetched),
                            &url,
                        )]),
                        &f.admin_token,
                    ))
                    .await,
            )
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{}", error.message());
    }
    // A URL the host refuses: the job fails, and says so without the query.
    let missing = tarball(&[("run.sh", b"echo missing")]);
    let (manifest, signature) = signed("baro", &missing);
    let baro = f
        .seen
        .unary(
            "admin",
            "RegisterPackage",
            griot
                .register_package(authed(
                    tokio_stream::iter(vec![header(
                        manifest,
                        signature,
                        &sha256_hex(&missing),
                        &format!("{artifacts}/baro.tgz?X-Amz-Signature={bad_query}"),
                    )]),
                    &f.admin_token,
                ))
                .await,
        )
        .unwrap()
        .package
        .unwrap()
        .package_id;

    for (package, outcome) in [
        (&thermo, griot_pb::InstallationStatus::Completed),
        (&hygro, griot_pb::InstallationStatus::Completed),
        (&baro, griot_pb::InstallationStatus::Failed),
    ] {
        let job = f
            .seen
            .unary(
                "admin",
                "CreateInstallation",
                griot
                    .create_installation(authed(
                        griot_pb::CreateInstallationRequest {
                            package_id: package.clone(),
                            target_node_id: "node-1".into(),
                            options: None,
                            idempotency_key: String::new(),
                        },
                        &f.admin_token,
                    ))
                    .await,
            )
            .unwrap()
            .installation
            .unwrap()
            .job_id;
        let events = tokio::time::timeout(
            Duration::from_secs(60),
            f.seen.stream(
                "admin",
                "StreamInstallationLogs",
                griot
                    .stream_installation_logs(authed(
                        griot_pb::StreamInstallationLogsRequest {
                            job_id: job.clone(),
                            from_seq: 0,
                            follow: true,
                        },
                        &f.admin_token,
                    ))
                    .await,
            ),
        )
        .await
        .expect("the job ends within 60 s")
        .unwrap();
        let Some(griot_pb::stream_installation_logs_response::Event::Finished(done)) =
            events.last().and_then(|e| e.event.clone())
        else {
            panic!("the log ends with the job");
        };
        assert_eq!(done.status(), outcome, "{}", done.status_message);
    }
    for package in [&thermo, &hygro, &baro] {
        f.seen
            .unary(
                "anonymous",
                "GetPackage",
                griot
                    .get_package(griot_pb::GetPackageRequest {
                        package_id: package.clone(),
                    })
                    .await,
            )
            .unwrap();
    }
    f.seen
        .unary(
            "anonymous",
            "ListPackages",
            griot
                .list_packages(griot_pb::ListPackagesRequest::default())
                .await,
        )
        .unwrap();
    thermo
}

// ---------------------------------------------------------------------------------------------
// What the server stored

/// Every row of every table outside PostgreSQL's own schemas, as (schema.table, JSON).
async fn dump_rows(db: &mut sqlx::PgConnection) -> Vec<(String, String)> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables
         WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')
         ORDER BY 1, 2",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    let schemas: HashSet<&str> = tables.iter().map(|(s, _)| s.as_str()).collect();
    for schema in ["core", "registry", "store", "market", "griot", "pds"] {
        assert!(
            schemas.contains(schema),
            "no tables in {schema}: {tables:?}"
        );
    }
    let mut rows = Vec::new();
    for (schema, table) in tables {
        let sql = format!(
            "SELECT to_jsonb(t)::text FROM \"{}\".\"{}\" t",
            schema.replace('"', "\"\""),
            table.replace('"', "\"\"")
        );
        let texts: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *db)
            .await
            .unwrap();
        rows.extend(texts.into_iter().map(|t| (format!("{schema}.{table}"), t)));
    }
    rows
}

/// Every value of a row that could be a key: its strings, and what they decode to as bytea,
/// hex or base64.
fn candidate_values(value: &Value, out: &mut Vec<Vec<u8>>) {
    match value {
        Value::String(text) => {
            out.push(text.as_bytes().to_vec());
            if let Some(bytea) = text.strip_prefix("\\x")
                && let Some(bytes) = quintet::hex::from_hex(bytea)
            {
                out.push(bytes);
            }
            if let Some(bytes) = quintet::hex::from_hex(text) {
                out.push(bytes);
            }
            for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                if let Ok(bytes) = engine.decode(text) {
                    out.push(bytes);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| candidate_values(v, out)),
        Value::Object(fields) => fields.values().for_each(|v| candidate_values(v, out)),
        _ => {}
    }
}

/// Whether `key` is the HMAC-SHA256 key that signed the JWT `token`.
fn signs(key: &[u8], token: &str) -> bool {
    let Some((signed, signature)) = token.rsplit_once('.') else {
        return false;
    };
    let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::verify(&key, signed.as_bytes(), &signature).is_ok()
}

/// Every regular file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    files
}

// ---------------------------------------------------------------------------------------------
// The test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_logged_stored_in_plaintext_or_shown_to_anyone_else() {
    let canary = format!("canary{}", hex(&random::<10>()));

    // The servers the binary talks to.
    let (identity, identity_url) = FakeIdentity::start().await;
    let key = fixture_key(1);
    let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(key.public());
    let jwks = json!({"keys": [{
        "kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256",
        "n": URL_SAFE_NO_PAD.encode(&public.n), "e": URL_SAFE_NO_PAD.encode(&public.e),
    }]})
    .to_string();
    let jwks_url = http_server(Arc::new(move |_: &str, _: &[u8]| {
        (200, "application/json", jwks.clone().into_bytes())
    }))
    .await;
    let ai_requests = Arc::new(Mutex::new(Vec::<String>::new()));
    let requests = ai_requests.clone();
    let ai_url = http_server(Arc::new(move |head: &str, body: &[u8]| {
        requests.lock().unwrap().push(head.to_owned());
        if String::from_utf8_lossy(body).contains("please fail") {
            return (500, "text/plain", b"upstream trouble".to_vec());
        }
        let mut events = String::new();
        for piece in ["It has ", "city and temp_c."] {
            let event = json!({"choices": [{"index": 0, "delta": {"content": piece}}]});
            events.push_str(&format!("data: {event}\n\n"));
        }
        let usage = json!({"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 5}});
        events.push_str(&format!("data: {usage}\n\ndata: [DONE]\n\n"));
        (200, "text/event-stream", events.into_bytes())
    }))
    .await;
    let good_query = random_text("");
    let bad_query = random_text("");
    let artifact = tarball(&[("run.sh", b"echo fetched")]);
    let wanted = format!("GET /hygro.tgz?X-Amz-Signature={good_query} ");
    let artifacts_url = http_server(Arc::new(move |head: &str, _: &[u8]| {
        if head.starts_with(&wanted) {
            (200, "application/gzip", artifact.clone())
        } else {
            (403, "text/plain", b"AccessDenied".to_vec())
        }
    }))
    .await;
    let ledger = StandInLedger::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ledger_url = format!("http://{}", listener.local_addr().unwrap());
    ledger.serve(listener);

    // The binary, on a data directory of its own whose name is the canary (so the log has it).
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join(&canary);
    let market_master_key = hex(&random::<32>());
    let ai_key = random_text("sk-test-");
    let (running, addr) = start_binary(
        &data_dir,
        &[
            ("QUINTET_REGISTRY_IDENTITY_URL", identity_url),
            ("QUINTET_MARKET_OIDC_JWKS_URL", format!("{jwks_url}/jwks")),
            ("QUINTET_MARKET_OIDC_ISSUERS", ISSUER.to_owned()),
            ("QUINTET_MARKET_OIDC_AUDIENCE", AUDIENCE.to_owned()),
            ("QUINTET_MARKET_MASTER_KEY", market_master_key.clone()),
            ("QUINTET_MARKET_SUI_RPC_URL", ledger_url),
            ("QUINTET_MARKET_ESCROW_ADDRESS", ESCROW.to_owned()),
            ("QUINTET_MARKET_AI_URL", format!("{ai_url}/v1")),
            ("QUINTET_MARKET_AI_MODEL", "secret-model".to_owned()),
            ("QUINTET_MARKET_AI_API_KEY", ai_key.clone()),
        ],
    );
    let admin_token = std::fs::read_to_string(data_dir.join("admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    let pds_master_key = std::fs::read_to_string(data_dir.join("pds-master-key"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        !data_dir.join("market-master-key").exists(),
        "the configured market key is used"
    );
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let flows = Flows {
        channel,
        seen: Transcript::default(),
        secrets: Mutex::new(Vec::new()),
        admin_token: admin_token.clone(),
        canary: canary.clone(),
    };
    flows.keep(Secret::text("the admin token", &admin_token));
    flows.keep(Secret::bytes(
        "the PDS master key",
        &quintet::hex::from_hex(&pds_master_key).unwrap(),
    ));
    flows.keep(Secret::bytes(
        "the market master key",
        &quintet::hex::from_hex(&market_master_key).unwrap(),
    ));
    flows.keep(Secret::text("the AI endpoint's API key", &ai_key));
    flows.keep(Secret::text("a pre-signed artifact URL's query", &good_query).kept());
    flows.keep(Secret::text("a refused artifact URL's query", &bad_query).kept());

    admin_flows(&flows).await;
    store_flows(&flows).await;
    registry_flows(&flows, &identity).await;
    let (alice_did, alice_access) = pds_flows(&flows).await;
    market_flows(&flows, &ledger).await;
    let thermo = griot_flows(&flows, &artifacts_url, &good_query, &bad_query).await;
    // The AI endpoint was sent its key: the flows did carry it.
    assert!(
        ai_requests
            .lock()
            .unwrap()
            .iter()
            .all(|head| head.contains(&format!("Bearer {ai_key}"))),
        "every AI request carries the key"
    );

    // What the database holds, read while the server still runs.
    let mut db = sqlx::PgConnection::connect_with(
        &PgConnectOptions::new()
            .socket(data_dir.join("postgres"))
            .port(5432)
            .username(quintet::db::embedded::SUPERUSER)
            .database(quintet::db::embedded::DATABASE),
    )
    .await
    .unwrap();
    let rows = dump_rows(&mut db).await;
    let pds_master = MasterKey::from_bytes(
        Purpose::Pds,
        quintet::hex::from_hex(&pds_master_key)
            .unwrap()
            .try_into()
            .unwrap(),
    );
    // The keys the server made for its accounts, unwrapped as the server does.
    // (did, wrapped signing key, its public key, wrapped rotation key, its public key)
    type Keys = (String, Vec<u8>, String, Vec<u8>, String);
    let accounts: Vec<Keys> = sqlx::query_as(
        "SELECT did, signing_key_priv, signing_key_pub, rotation_key_priv, rotation_key_pub
         FROM pds.accounts ORDER BY did",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(accounts.len(), 3);
    let mut public_keys = HashMap::new();
    for (did, signing, signing_pub, rotation, rotation_pub) in &accounts {
        for (which, wrapped, public) in [
            ("signing", signing, signing_pub),
            ("rotation", rotation, rotation_pub),
        ] {
            let private = pds_master.unwrap(wrapped, did.as_bytes()).unwrap();
            let key = SigningKey::from_bytes(&private).unwrap();
            assert_eq!(&key.public_key().multikey(), public, "{did} {which}");
            public_keys.insert(public.clone(), format!("{did}'s {which} key"));
            flows.keep(
                Secret::bytes(format!("{did}'s {which} key"), &private).with_form(
                    "multicodec secp256k1-priv",
                    &[&[0x81, 0x26][..], &private].concat(),
                ),
            );
        }
    }
    // The session-signing key: stored wrapped under the PDS master key, or found in plaintext
    // below (which fails the test).
    let server_keys: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT name, key FROM core.server_keys ORDER BY name")
            .fetch_all(&mut db)
            .await
            .unwrap();
    let mut jwt_key = server_keys.iter().find_map(|(_, key)| {
        pds_master
            .unwrap(key, JWT_KEY_CONTEXT)
            .ok()
            .map(|k| k.to_vec())
            .filter(|k| signs(k, &alice_access))
    });
    // The page-token MAC key only authenticates cursors (it opens nothing): kept as it is, but
    // never logged or shown.
    let page_key = server_keys
        .iter()
        .find(|(name, _)| name == "page_token_hmac")
        .map(|(_, key)| key.clone())
        .expect("the page-token key");
    flows.keep(Secret::bytes("the page-token MAC key", &page_key).kept());
    db.close().await.unwrap();

    let (stderr, stdout) = stop_binary(running);
    let postgres_log = std::fs::read(data_dir.join("postgres.log")).unwrap();

    // Any stored value that works as the session-signing key or as an account's private key is
    // a key in plaintext, whatever its column or encoding.
    let mut leaks: Vec<String> = Vec::new();
    for (table, row) in &rows {
        let mut values = Vec::new();
        candidate_values(&serde_json::from_str(row).unwrap(), &mut values);
        for value in values {
            if (16..=128).contains(&value.len()) && signs(&value, &alice_access) {
                leaks.push(format!(
                    "the PDS session-signing key is stored in plaintext in {table}: {row}"
                ));
                jwt_key.get_or_insert(value.clone());
            }
            if value.len() == 32
                && let Some(key) = SigningKey::from_bytes(&value)
                && let Some(whose) = public_keys.get(&key.public_key().multikey())
            {
                leaks.push(format!("{whose} is stored in plaintext in {table}"));
            }
        }
    }
    let jwt_key = jwt_key.expect("the PDS session-signing key, wrapped or not");
    flows.keep(Secret::bytes("the PDS session-signing key", &jwt_key));

    let secrets = flows.secrets.lock().unwrap().clone();
    let canary_index = secrets.len();
    let mut all = secrets.clone();
    all.push(Secret::text("the canary", &canary));
    let matcher = Matcher::new(&all);

    // Each search finds a planted copy of every form of every secret, amid noise and in a log
    // line, and nothing in the noise alone.
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert!(matcher.find(&noise).is_empty());
    for (s, secret) in all.iter().enumerate() {
        for (form, bytes) in &secret.forms {
            let mut planted = noise.clone();
            planted.extend_from_slice(br#"{"level":"TRACE","message":"x="#);
            planted.extend_from_slice(bytes);
            planted.extend_from_slice(br#"","target":"h2"}"#);
            planted.extend_from_slice(&noise);
            assert!(
                matcher.find(&planted).iter().any(|found| found.secret == s),
                "the search misses {} as {form}",
                secret.name
            );
        }
    }

    // 1. The logs: nothing, at any level. The log is the real one, at trace, from every crate.
    let log_text = String::from_utf8_lossy(&stderr);
    for wanted in [
        r#""level":"TRACE""#,
        r#""target":"h2"#,
        r#""target":"sqlx"#,
        r#""target":"quintet"#,
    ] {
        assert!(log_text.contains(wanted), "the log has {wanted}");
    }
    let mut canary_places = HashSet::new();
    let mut shown_as_allowed = HashSet::new();
    let mut search = |place: &str, haystack: &[u8], allowed: &dyn Fn(&Secret) -> bool| {
        for found in matcher.find(haystack) {
            if found.secret == canary_index {
                // Logs by file; everything else by kind of place.
                let kind = if place.starts_with("log") {
                    place
                } else {
                    place.split(':').next().unwrap()
                };
                canary_places.insert(kind.to_owned());
                continue;
            }
            let secret = &all[found.secret];
            if allowed(secret) {
                shown_as_allowed
                    .insert((place.split(':').next().unwrap().to_owned(), found.secret));
            } else {
                leaks.push(
                    Leak {
                        place: place.to_owned(),
                        secret: secret.name.clone(),
                        form: secret.forms[found.form].0.clone(),
                        context: context(haystack, &found),
                    }
                    .to_string(),
                );
            }
        }
    };
    search("log: stderr", &stderr, &|_: &Secret| false);
    search("log: stdout", &stdout, &|_: &Secret| false);
    search("log: postgres.log", &postgres_log, &|_: &Secret| false);

    // 2. At rest: every row, then every file under the data directory (after PostgreSQL has
    // stopped and flushed). The key files are the keys' own homes.
    for (table, row) in &rows {
        search(&format!("rows: {table}"), row.as_bytes(), &|s: &Secret| {
            s.kept
        });
    }
    let key_files = [
        data_dir.join("admin-token"),
        data_dir.join("pds-master-key"),
    ];
    for file in &key_files {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is private", file.display());
    }
    let files = files_under(&data_dir);
    for file in &files {
        if key_files.contains(file) || file.ends_with("postgres.log") {
            continue;
        }
        let relative = file.strip_prefix(&data_dir).unwrap();
        let place = match relative.components().next().unwrap().as_os_str().to_str() {
            Some("postgres") => "PostgreSQL files",
            Some("blobs") => "blob storage",
            Some("nodes") => "installed packages",
            _ => "data directory",
        };
        let bytes = std::fs::read(file).unwrap();
        search(
            &format!("{place}: {}", relative.display()),
            &bytes,
            &|s: &Secret| s.kept && place == "PostgreSQL files",
        );
    }

    // 3. Answers: to each caller, only what it may see; in errors, nothing.
    for answer in flows.seen.0.lock().unwrap().iter() {
        let place = format!(
            "answers: {} of {} to {}",
            if answer.failed {
                "an error"
            } else {
                "an answer"
            },
            answer.rpc,
            answer.caller
        );
        search(&place, &answer.bytes, &|s: &Secret| {
            !answer.failed && s.visible_to.contains(&answer.caller)
        });
    }

    // The canary reached every place searched: the searches read what was written there.
    for place in [
        "log: stderr",
        "rows",
        "PostgreSQL files",
        "blob storage",
        "installed packages",
    ] {
        assert!(
            canary_places.contains(place),
            "the canary was not found in {place}: that search reads nothing ({canary_places:?})"
        );
    }
    // Every secret handed to its owner was found in an answer to them: the answers searched
    // are the ones given.
    for (s, secret) in secrets.iter().enumerate() {
        if !secret.visible_to.is_empty() {
            assert!(
                shown_as_allowed.contains(&("answers".to_owned(), s)),
                "{} was never found in an answer to {:?}",
                secret.name,
                secret.visible_to
            );
        }
    }
    assert!(
        files.iter().any(|f| f.to_string_lossy().contains(&thermo)),
        "the installed package is among the files searched"
    );
    assert!(rows.len() > 50, "{} rows", rows.len());
    assert!(!alice_did.is_empty());

    leaks.sort();
    leaks.dedup();
    assert!(
        leaks.is_empty(),
        "{} secret leak(s):\n{}",
        leaks.len(),
        leaks.join("\n")
    );
    eprintln!(
        "searched {} secrets in {} forms: {} bytes of logs, {} rows, {} files, {} answers",
        secrets.len(),
        secrets.iter().map(|s| s.forms.len()).sum::<usize>(),
        stderr.len() + stdout.len() + postgres_log.len(),
        rows.len(),
        files.len(),
        flows.seen.0.lock().unwrap().len(),
    );
}

#[tokio::test]
async fn a_session_key_an_earlier_server_kept_in_plaintext_is_wrapped_and_its_row_removed() {
    let server = crate::harness::TestServer::start().await;
    let pool = sqlx::PgPool::connect_with(server.database.clone())
        .await
        .unwrap();
    // As an earlier server left the database: the key in plaintext, nothing wrapped.
    let earlier = random::<32>();
    sqlx::query("DELETE FROM core.server_keys WHERE name LIKE 'pds.jwt_key%'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO core.server_keys (name, key) VALUES ('pds.jwt_key', $1)")
        .bind(&earlier[..])
        .execute(&pool)
        .await
        .unwrap();
    let _replica = server.replica(|_| {}).await;
    // The same key (its sessions stay valid), now only wrapped.
    assert_eq!(crate::harness::pds_jwt_key(&pool).await, earlier);
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM core.server_keys WHERE name LIKE 'pds.jwt_key%'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(names, ["pds.jwt_key.wrapped"]);
    let keys: Vec<Vec<u8>> = sqlx::query_scalar("SELECT key FROM core.server_keys")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(
        keys.iter().all(|k| !k.windows(32).any(|w| w == earlier)),
        "the key is nowhere in plaintext"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_password_and_a_configured_admin_token_are_never_logged() {
    let canary = format!("canary{}", hex(&random::<10>()));
    // The harness's PostgreSQL trusts local connections, so any password is accepted; one that a
    // DATABASE_URL of the environment already has is used as it is.
    let mut url = url::Url::parse(&crate::harness::fresh_database_url().await).unwrap();
    let password = match url.password() {
        Some(password) => password.to_owned(),
        None => {
            let password = random_text("pg-");
            url.set_password(Some(&password)).unwrap();
            password
        }
    };
    let admin_token = random_text("qadm_configured_");
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join(&canary);
    let (running, addr) = start_binary(
        &data_dir,
        &[
            ("DATABASE_URL", url.to_string()),
            ("QUINTET_ADMIN_TOKEN", admin_token.clone()),
        ],
    );
    assert!(
        !data_dir.join("admin-token").exists(),
        "the configured token is used"
    );
    let mut secrets = vec![
        Secret::text("the DATABASE_URL password", &password),
        Secret::text("the configured admin token", &admin_token),
    ];
    for file in ["pds-master-key", "market-master-key"] {
        let key = std::fs::read_to_string(data_dir.join(file)).unwrap();
        secrets.push(Secret::bytes(
            file,
            &quintet::hex::from_hex(key.trim()).unwrap(),
        ));
    }
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = AdminServiceClient::new(channel);
    let info = admin
        .get_server_info(authed(admin_pb::GetServerInfoRequest {}, &admin_token))
        .await
        .unwrap()
        .into_inner();
    let mut answers = info.encode_to_vec();
    let wrong = random_text("qadm_");
    secrets.push(Secret::text("a wrong admin token", &wrong));
    let error = admin
        .get_server_info(authed(admin_pb::GetServerInfoRequest {}, &wrong))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
    answers.extend_from_slice(error.message().as_bytes());
    answers.extend_from_slice(error.details());
    let (stderr, stdout) = stop_binary(running);

    let canary_index = secrets.len();
    secrets.push(Secret::text("the canary", &canary));
    let matcher = Matcher::new(&secrets);
    let mut planted = stderr.clone();
    for (_, form) in &secrets[0].forms {
        planted.extend_from_slice(form);
        assert!(matcher.find(&planted).iter().any(|f| f.secret == 0));
        planted.truncate(stderr.len());
    }
    let mut leaks = Vec::new();
    let mut canary_seen = false;
    for (place, haystack) in [
        ("stderr", &stderr),
        ("stdout", &stdout),
        ("answers", &answers),
    ] {
        for found in matcher.find(haystack) {
            if found.secret == canary_index {
                canary_seen |= place == "stderr";
                continue;
            }
            let secret = &secrets[found.secret];
            leaks.push(
                Leak {
                    place: place.to_owned(),
                    secret: secret.name.clone(),
                    form: secret.forms[found.form].0.clone(),
                    context: context(haystack, &found),
                }
                .to_string(),
            );
        }
    }
    assert!(canary_seen, "the log searched is the server's");
    assert!(
        String::from_utf8_lossy(&stderr).contains(r#""target":"sqlx"#),
        "sqlx logs at trace"
    );
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}
