//! gRPC handlers of the PDS: authenticate, parse into the protocol's types, run the queries and
//! repository writes, convert back.

use std::str::FromStr;

use cid::Cid;
use ipld_core::ipld::Ipld;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{
    car, data,
    keys::{PublicKey, SigningKey},
    mst::Mst,
    plc, queries,
    queries::AccountRow,
    repo,
    repo::Op,
    sequencer, syntax,
    tokens::{self, JwtKeys, Scope},
};
use crate::{
    auth::{AdminAuth, require_bearer_token},
    blobs::{self, BlobStore, Sha256, upload_chunks},
    error::{Error, Result},
    master_key::MasterKey,
    notify::{self, Notifier},
    page_token::{PageTokens, page_size},
    proto::{
        json_to_struct,
        quintet::pds::v1::{self as pb, pds_service_server, subscribe_repos_response::Event},
        struct_to_json, timestamp,
    },
};

type ResponseStream<T> =
    std::pin::Pin<Box<dyn futures::Stream<Item = std::result::Result<T, Status>> + Send>>;

/// Bytes of CAR file per GetRepo message (the export's batches are cut to this).
const EXPORT_CHUNK: usize = 256 * 1024;
/// Most app passwords per account (each is tried at sign-in).
const MAX_APP_PASSWORDS: usize = 25;
/// The [`blobs::lock`] scope of PDS blob bytes: uploads and their collection.
const BLOB_LOCKS: &str = "pds.blob";
/// Largest repository ImportRepo accepts, in bytes of CAR.
const MAX_IMPORT_BYTES: usize = 256 * 1024 * 1024;
/// Most writes in one ApplyWrites.
const MAX_WRITES: usize = 200;
/// A password hash nobody has: sign-ins with unknown identifiers spend the same time hashing.
const DUMMY_HASH: &str =
    "$scrypt$ln=14,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

#[derive(Clone)]
pub struct PdsService {
    pub pool: PgPool,
    pub master_key: MasterKey,
    pub jwt: JwtKeys,
    pub admin: AdminAuth,
    pub page_tokens: PageTokens,
    /// This server's public URL, published as each account's PDS endpoint.
    pub endpoint: String,
    /// Handle suffixes accounts may use (empty: any domain).
    pub handle_domains: Vec<String>,
    pub notifier: Notifier,
    /// Hours the firehose keeps events.
    pub retention_hours: i64,
    /// How long a firehose consumer may leave its buffer full before it is disconnected.
    pub firehose_stall: std::time::Duration,
    /// Where blobs' bytes are (the shared blob storage, under `pds/`).
    pub blobs: BlobStore,
    /// Largest blob accepted.
    pub max_blob_bytes: u64,
    pub shutdown: CancellationToken,
}

/// The authenticated caller of an RPC.
struct Caller {
    account: AccountRow,
    /// The app password the session was opened with.
    app_password: Option<String>,
}

impl Caller {
    fn did(&self) -> &str {
        &self.account.did
    }

    /// Refuses app-password sessions (they cannot manage the account or its credentials).
    fn require_full_access(&self) -> Result<()> {
        match &self.app_password {
            None => Ok(()),
            Some(name) => Err(Error::PermissionDenied(format!(
                "this session was opened with the app password {name:?}, which cannot do this"
            ))),
        }
    }

    fn require_active(&self) -> Result<()> {
        match self.account.status.as_str() {
            "active" => Ok(()),
            status => Err(Error::failed_precondition(
                "ACCOUNT_DEACTIVATED",
                self.account.did.clone(),
                format!("the account is {status}"),
            )),
        }
    }
}

fn status_enum(status: &str) -> pb::AccountStatus {
    match status {
        "active" => pb::AccountStatus::Active,
        "takendown" => pb::AccountStatus::Takendown,
        "deactivated" => pb::AccountStatus::Deactivated,
        "deleted" => pb::AccountStatus::Deleted,
        _ => pb::AccountStatus::Unspecified,
    }
}

fn session_message(account: &AccountRow, app_password: Option<String>) -> pb::Session {
    pb::Session {
        access_jwt: String::new(),
        refresh_jwt: String::new(),
        did: account.did.clone(),
        handle: account.handle.clone().unwrap_or_default(),
        email: account.email.clone().unwrap_or_default(),
        status: status_enum(&account.status).into(),
        app_password_name: app_password.unwrap_or_default(),
    }
}

fn parse_optional_cid(field: &str, text: &str) -> Result<Option<Cid>> {
    if text.is_empty() {
        return Ok(None);
    }
    data::parse_cid(text)
        .map(Some)
        .map_err(|e| Error::invalid_argument(field, e.0))
}

fn record_value(field: &str, record: Option<prost_types::Struct>) -> Result<Ipld> {
    let Some(record) = record else {
        return Err(Error::invalid_argument(field, "required"));
    };
    data::record_from_json(&struct_to_json(Some(record)))
        .map_err(|e| Error::invalid_argument(field, e.0))
}

fn value_struct(bytes: &[u8]) -> Result<Option<prost_types::Struct>> {
    let value = data::decode(bytes).map_err(|e| Error::DataLoss(e.0))?;
    Ok(json_to_struct(&data::to_json(&value)))
}

fn commit_meta(head: &repo::Head) -> pb::CommitMeta {
    pb::CommitMeta {
        cid: head.cid.to_string(),
        rev: head.rev.clone(),
    }
}

fn check_password(password: &str) -> Result<()> {
    let length = password.chars().count();
    if !(8..=256).contains(&length) {
        return Err(Error::invalid_argument("password", "8 to 256 characters"));
    }
    Ok(())
}

fn check_email(email: &str) -> Result<String> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !email.contains(char::is_whitespace)
                && !domain.contains('@')
        });
    if !valid {
        return Err(Error::invalid_argument("email", "not an email address"));
    }
    Ok(email)
}

/// Password hashes computed at once, at most. Each scrypt takes 16 MiB and a core for tens of
/// milliseconds, and sign-in needs no token: unbounded, a flood of wrong passwords took the
/// server past 1 GiB (128 at once) on its way to the blocking pool's 512 threads.
const HASHING_AT_ONCE: usize = 4;
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(HASHING_AT_ONCE);

/// Runs a password hash off the async threads, waiting for one of the [`HASHING`] permits.
async fn hashing<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let _permit = HASHING.acquire().await.map_err(Error::internal)?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(Error::internal)
}

async fn hash_password(password: &str) -> Result<String> {
    let password = password.to_owned();
    hashing(move || tokens::hash_password(&password)).await
}

async fn password_matches(password: &str, hash: &str) -> Result<bool> {
    let (password, hash) = (password.to_owned(), hash.to_owned());
    hashing(move || tokens::verify_password(&password, &hash)).await
}

/// A new app password: four groups of four letters and digits.
fn generate_app_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system's random source works");
    bytes
        .chunks(4)
        .map(|group| {
            group
                .iter()
                .map(|b| ALPHABET[usize::from(b & 31)] as char)
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn account_event(did: &str, status: &str) -> Event {
    Event::Account(pb::AccountEvent {
        did: did.to_owned(),
        active: status == "active",
        status: status_enum(status).into(),
    })
}

fn identity_event(did: &str, handle: &str) -> Event {
    Event::Identity(pb::IdentityEvent {
        did: did.to_owned(),
        handle: handle.to_owned(),
    })
}

impl PdsService {
    /// Sets an account's status and tells the firehose, together.
    async fn change_status(&self, did: &str, status: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        queries::set_status(&mut *tx, did, status).await?;
        sequencer::sequence(&mut tx, did, account_event(did, status)).await?;
        tx.commit().await?;
        Ok(())
    }

    fn check_handle(&self, handle: &str) -> Result<String> {
        let handle = handle.trim().to_lowercase();
        if !syntax::is_handle(&handle) {
            return Err(Error::invalid_argument("handle", "not a valid handle"));
        }
        if !self.handle_domains.is_empty()
            && !self
                .handle_domains
                .iter()
                .any(|d| handle.ends_with(d.as_str()))
        {
            return Err(Error::invalid_argument(
                "handle",
                format!("must end with one of {}", self.handle_domains.join(", ")),
            ));
        }
        Ok(handle)
    }

    fn signing_key(&self, account: &AccountRow) -> Result<SigningKey> {
        self.stored_key(account, &account.signing_key_priv, "signing")
    }

    fn rotation_key(&self, account: &AccountRow) -> Result<SigningKey> {
        self.stored_key(account, &account.rotation_key_priv, "rotation")
    }

    /// One of an account's keys, unwrapped with the master key.
    fn stored_key(&self, account: &AccountRow, wrapped: &[u8], which: &str) -> Result<SigningKey> {
        let bytes = self.master_key.unwrap(wrapped, account.did.as_bytes())?;
        SigningKey::from_bytes(&bytes)
            .ok_or_else(|| Error::DataLoss(format!("a stored {which} key is not a key")))
    }

    /// The caller of an RPC that takes an access token.
    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller> {
        let token = require_bearer_token(request)?;
        let claims = self.jwt.verify(token.expose())?;
        if claims.scope == Scope::Refresh {
            return Err(Error::Unauthenticated(
                "a refresh token only refreshes or ends its session".into(),
            ));
        }
        let session = claims
            .sid
            .ok_or_else(|| Error::Unauthenticated("the token names no session".into()))?;
        let app_password = queries::session(&self.pool, &session, &claims.sub)
            .await?
            .ok_or_else(|| Error::Unauthenticated("the session has ended".into()))?;
        if (claims.scope == Scope::AppPass) != app_password.is_some() {
            return Err(Error::Unauthenticated("the token's scope is wrong".into()));
        }
        let account = self.usable_account(&claims.sub).await?;
        Ok(Caller {
            account,
            app_password,
        })
    }

    /// The account of a session token, unless deleted or taken down.
    async fn usable_account(&self, did: &str) -> Result<AccountRow> {
        let account = queries::account(&self.pool, did)
            .await?
            .filter(|a| a.status != "deleted")
            .ok_or_else(|| Error::Unauthenticated("the account is gone".into()))?;
        if account.status == "takendown" {
            return Err(Error::PermissionDenied("the account is taken down".into()));
        }
        Ok(account)
    }

    /// The claims of a refresh token whose session is live, and the session's app password.
    async fn refresh_caller<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(tokens::Claims, Option<String>)> {
        let token = require_bearer_token(request)?;
        let claims = self.jwt.verify(token.expose())?;
        if claims.scope != Scope::Refresh {
            return Err(Error::Unauthenticated(
                "this needs the session's refresh token".into(),
            ));
        }
        let app_password = queries::session(&self.pool, &claims.jti, &claims.sub)
            .await?
            .ok_or_else(|| Error::Unauthenticated("the session has ended".into()))?;
        Ok((claims, app_password))
    }

    /// Opens a session: a refresh token recorded by its id, and an access token naming it.
    async fn open_session<'e>(
        &self,
        executor: impl sqlx::PgExecutor<'e>,
        account: &AccountRow,
        app_password: Option<String>,
    ) -> Result<pb::Session> {
        let jti = uuid::Uuid::new_v4().to_string();
        let expires =
            time::OffsetDateTime::now_utc() + time::Duration::seconds(tokens::REFRESH_SECONDS);
        queries::insert_refresh_token(
            executor,
            &jti,
            &account.did,
            expires,
            app_password.as_deref(),
        )
        .await?;
        let scope = if app_password.is_some() {
            Scope::AppPass
        } else {
            Scope::Access
        };
        let mut session = session_message(account, app_password);
        session.refresh_jwt = self.jwt.issue(Scope::Refresh, &account.did, &jti, None);
        session.access_jwt = self.jwt.issue(
            scope,
            &account.did,
            &uuid::Uuid::new_v4().to_string(),
            Some(&jti),
        );
        Ok(session)
    }

    /// The DID of a repository named by handle or DID, with its account, for reading: NOT_FOUND
    /// for unknown or deleted accounts, FAILED_PRECONDITION for deactivated or taken-down ones.
    async fn readable_repo(&self, field: &str, repo: &str) -> Result<AccountRow> {
        if !(syntax::is_did(repo) || syntax::is_handle(repo)) {
            return Err(Error::invalid_argument(field, "not a handle or DID"));
        }
        let account = queries::account_by_identifier(&self.pool, repo)
            .await?
            .filter(|a| a.status != "deleted" && !repo.contains('@'))
            .ok_or_else(|| Error::not_found("repo", repo))?;
        match account.status.as_str() {
            "active" => Ok(account),
            "takendown" => Err(Error::failed_precondition(
                "REPO_TAKENDOWN",
                account.did,
                "the repository is taken down",
            )),
            _ => Err(Error::failed_precondition(
                "REPO_DEACTIVATED",
                account.did,
                "the repository is deactivated",
            )),
        }
    }

    /// A repository's current commit.
    async fn head(&self, did: &str) -> Result<Cid> {
        let (head, _) = queries::repo(&self.pool, did)
            .await?
            .ok_or_else(|| Error::not_found("repo", did))?;
        Cid::from_str(&head).map_err(|_| Error::DataLoss("a stored head is not a CID".into()))
    }

    /// The caller's own repository, for writing.
    fn writable_repo(&self, caller: &Caller, repo: &str) -> Result<()> {
        if repo != caller.did() && Some(repo) != caller.account.handle.as_deref() {
            return Err(Error::PermissionDenied(
                "you can write only your own repository".into(),
            ));
        }
        caller.require_active()
    }

    async fn write(
        &self,
        caller: &Caller,
        repo: &str,
        ops: Vec<Op>,
        swap_commit: &str,
    ) -> Result<(repo::Head, Vec<repo::Applied>)> {
        self.writable_repo(caller, repo)?;
        let swap_commit = parse_optional_cid("swap_commit", swap_commit)?;
        let key = self.signing_key(&caller.account)?;
        repo::apply(&self.pool, caller.did(), &key, ops, swap_commit).await
    }

    fn record_uri(&self, did: &str, collection: &str, rkey: &str) -> String {
        format!("at://{did}/{collection}/{rkey}")
    }
}

/// Parses one create/put: path and record.
fn create_op(
    collection: &str,
    rkey: &str,
    record: Option<prost_types::Struct>,
    field: &str,
) -> Result<Op> {
    let rkey = if rkey.is_empty() {
        syntax::next_tid(None)
    } else {
        rkey.to_owned()
    };
    repo::check_path(collection, &rkey)?;
    let record = record_value(field, record)?;
    repo::check_record(field, collection, &record)?;
    Ok(Op::Create {
        collection: collection.to_owned(),
        rkey,
        record,
    })
}

fn put_op(
    collection: &str,
    rkey: &str,
    record: Option<prost_types::Struct>,
    swap_record: &str,
    field: &str,
) -> Result<Op> {
    repo::check_path(collection, rkey)?;
    let record = record_value(field, record)?;
    repo::check_record(field, collection, &record)?;
    Ok(Op::Put {
        collection: collection.to_owned(),
        rkey: rkey.to_owned(),
        record,
        swap: parse_optional_cid("swap_record", swap_record)?.map(Some),
    })
}

#[tonic::async_trait]
impl pds_service_server::PdsService for PdsService {
    async fn create_account(
        &self,
        request: Request<pb::CreateAccountRequest>,
    ) -> std::result::Result<Response<pb::CreateAccountResponse>, Status> {
        let message = request.into_inner();
        let handle = self.check_handle(&message.handle)?;
        let email = check_email(&message.email)?;
        check_password(&message.password)?;
        // A migrating account brings its DID and signing key; a new one gets both made here.
        let migrating = match (message.did.is_empty(), message.signing_key.is_empty()) {
            (true, true) => None,
            (false, false) => {
                let did = message.did.clone();
                if !syntax::is_did(&did)
                    || !(did.starts_with("did:plc:") || did.starts_with("did:web:"))
                {
                    return Err(Error::invalid_argument("did", "not a did:plc or did:web").into());
                }
                let key = SigningKey::from_bytes(&message.signing_key).ok_or_else(|| {
                    Error::invalid_argument("signing_key", "not a 32-byte secp256k1 private key")
                })?;
                Some((did, key))
            }
            _ => {
                return Err(Error::invalid_argument(
                    "signing_key",
                    "a migrating account gives both its DID and its signing key",
                )
                .into());
            }
        };
        let rotation = SigningKey::generate();
        let signing = match &migrating {
            Some((_, key)) => key.clone(),
            None => SigningKey::generate(),
        };
        let (signing_pub, rotation_pub) = (signing.public_key(), rotation.public_key());
        let genesis = plc::sign(
            &plc::Identity {
                handle: &handle,
                signing_key: &signing_pub.did_key(),
                rotation_key: &rotation_pub.did_key(),
                endpoint: &self.endpoint,
            },
            None,
            &rotation,
        );
        let did = match &migrating {
            Some((did, _)) => did.clone(),
            None => plc::did_for(&genesis),
        };
        let password_hash = hash_password(&message.password).await?;
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        queries::insert_account(
            &mut tx,
            &queries::NewAccount {
                did: &did,
                handle: &handle,
                email: &email,
                password_hash: &password_hash,
                signing_key_priv: &self.master_key.wrap(&signing.to_bytes(), did.as_bytes()),
                signing_key_pub: &signing_pub.multikey(),
                rotation_key_priv: &self.master_key.wrap(&rotation.to_bytes(), did.as_bytes()),
                rotation_key_pub: &rotation_pub.multikey(),
            },
        )
        .await
        .map_err(|error| match error {
            Error::AlreadyExists { name, .. } if name.contains("email") => {
                Error::already_exists("email", email.clone())
            }
            Error::AlreadyExists { name, .. } if name.contains("pkey") => {
                Error::already_exists("account", did.clone())
            }
            Error::AlreadyExists { .. } => Error::already_exists("handle", handle.clone()),
            other => other,
        })?;
        // A migrated identity's PLC log lives with its owner's rotation key, not here.
        if migrating.is_none() {
            queries::insert_plc_operation(
                &mut *tx,
                &did,
                0,
                &genesis.cid.to_string(),
                &genesis.bytes,
            )
            .await?;
        }
        sequencer::sequence(&mut tx, &did, identity_event(&did, &handle)).await?;
        sequencer::sequence(&mut tx, &did, account_event(&did, "active")).await?;
        repo::create_empty(&mut tx, &did, &signing).await?;
        let account = queries::account(&mut *tx, &did)
            .await?
            .ok_or_else(|| Error::internal(anyhow::anyhow!("the new account vanished")))?;
        let session = self.open_session(&mut *tx, &account, None).await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::CreateAccountResponse {
            session: Some(session),
            plc_operation: migrating
                .is_none()
                .then(|| json_to_struct(&genesis.json))
                .flatten(),
        }))
    }

    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> std::result::Result<Response<pb::CreateSessionResponse>, Status> {
        let message = request.into_inner();
        let refused = || Error::Unauthenticated("wrong identifier or password".into());
        let identifier = message.identifier.trim();
        if identifier.is_empty() || identifier.len() > 2048 || identifier.contains(char::is_control)
        {
            return Err(Error::invalid_argument("identifier", "a handle, email or DID").into());
        }
        let account = queries::account_by_identifier(&self.pool, identifier)
            .await?
            .filter(|a| a.status != "deleted");
        let Some(account) = account else {
            // The same work as a real check, so timing does not tell which accounts exist.
            password_matches(&message.password, DUMMY_HASH).await?;
            return Err(refused().into());
        };
        let app_password = if password_matches(&message.password, &account.password_hash).await? {
            None
        } else {
            let mut found = None;
            for app in queries::app_passwords(&self.pool, &account.did).await? {
                if password_matches(&message.password, &app.password_hash).await? {
                    found = Some(app.name);
                    break;
                }
            }
            Some(found.ok_or_else(refused)?)
        };
        if account.status == "takendown" {
            return Err(Error::PermissionDenied("the account is taken down".into()).into());
        }
        let session = self
            .open_session(&self.pool, &account, app_password)
            .await?;
        Ok(Response::new(pb::CreateSessionResponse {
            session: Some(session),
        }))
    }

    async fn refresh_session(
        &self,
        request: Request<pb::RefreshSessionRequest>,
    ) -> std::result::Result<Response<pb::RefreshSessionResponse>, Status> {
        let (claims, app_password) = self.refresh_caller(&request).await?;
        let account = self.usable_account(&claims.sub).await?;
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        // Single use: of two refreshes with one token, one wins.
        if !queries::delete_refresh_token(&mut *tx, &claims.jti).await? {
            return Err(Error::Unauthenticated("the session has ended".into()).into());
        }
        let session = self.open_session(&mut *tx, &account, app_password).await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::RefreshSessionResponse {
            session: Some(session),
        }))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> std::result::Result<Response<pb::GetSessionResponse>, Status> {
        let caller = self.caller(&request).await?;
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(session_message(&caller.account, caller.app_password)),
        }))
    }

    async fn delete_session(
        &self,
        request: Request<pb::DeleteSessionRequest>,
    ) -> std::result::Result<Response<pb::DeleteSessionResponse>, Status> {
        let (claims, _) = self.refresh_caller(&request).await?;
        queries::delete_refresh_token(&self.pool, &claims.jti).await?;
        Ok(Response::new(pb::DeleteSessionResponse {}))
    }

    async fn create_app_password(
        &self,
        request: Request<pb::CreateAppPasswordRequest>,
    ) -> std::result::Result<Response<pb::CreateAppPasswordResponse>, Status> {
        let caller = self.caller(&request).await?;
        caller.require_full_access()?;
        let name = request.get_ref().name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(Error::invalid_argument("name", "1 to 64 printable characters").into());
        }
        if queries::app_passwords(&self.pool, caller.did())
            .await?
            .len()
            >= MAX_APP_PASSWORDS
        {
            return Err(Error::failed_precondition(
                "TOO_MANY_APP_PASSWORDS",
                caller.did(),
                format!("at most {MAX_APP_PASSWORDS} app passwords; revoke one first"),
            )
            .into());
        }
        let password = generate_app_password();
        let hash = hash_password(&password).await?;
        let created = queries::insert_app_password(&self.pool, caller.did(), name, &hash)
            .await
            .map_err(|error| match error {
                Error::AlreadyExists { .. } => Error::already_exists("app password", name),
                other => other,
            })?;
        Ok(Response::new(pb::CreateAppPasswordResponse {
            app_password: Some(pb::AppPassword {
                name: name.to_owned(),
                create_time: Some(timestamp(created)),
            }),
            password,
        }))
    }

    async fn list_app_passwords(
        &self,
        request: Request<pb::ListAppPasswordsRequest>,
    ) -> std::result::Result<Response<pb::ListAppPasswordsResponse>, Status> {
        let caller = self.caller(&request).await?;
        caller.require_full_access()?;
        let app_passwords = queries::app_passwords(&self.pool, caller.did())
            .await?
            .into_iter()
            .map(|a| pb::AppPassword {
                name: a.name,
                create_time: Some(timestamp(a.created_at)),
            })
            .collect();
        Ok(Response::new(pb::ListAppPasswordsResponse {
            app_passwords,
        }))
    }

    async fn revoke_app_password(
        &self,
        request: Request<pb::RevokeAppPasswordRequest>,
    ) -> std::result::Result<Response<pb::RevokeAppPasswordResponse>, Status> {
        let caller = self.caller(&request).await?;
        caller.require_full_access()?;
        let name = &request.get_ref().name;
        if name.contains(char::is_control) {
            // No app password has one (see create_app_password), and NUL cannot be looked up.
            return Err(Error::invalid_argument("name", "1 to 64 printable characters").into());
        }
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        if !queries::delete_app_password(&mut tx, caller.did(), name).await? {
            return Err(Error::not_found("app password", name.clone()).into());
        }
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::RevokeAppPasswordResponse {}))
    }

    async fn deactivate_account(
        &self,
        request: Request<pb::DeactivateAccountRequest>,
    ) -> std::result::Result<Response<pb::DeactivateAccountResponse>, Status> {
        let caller = self.caller(&request).await?;
        caller.require_full_access()?;
        self.change_status(caller.did(), "deactivated").await?;
        Ok(Response::new(pb::DeactivateAccountResponse {}))
    }

    async fn activate_account(
        &self,
        request: Request<pb::ActivateAccountRequest>,
    ) -> std::result::Result<Response<pb::ActivateAccountResponse>, Status> {
        let caller = self.caller(&request).await?;
        caller.require_full_access()?;
        self.change_status(caller.did(), "active").await?;
        Ok(Response::new(pb::ActivateAccountResponse {}))
    }

    async fn delete_account(
        &self,
        request: Request<pb::DeleteAccountRequest>,
    ) -> std::result::Result<Response<pb::DeleteAccountResponse>, Status> {
        let caller = self.caller(&request).await?;
        caller.require_full_access()?;
        if !password_matches(&request.get_ref().password, &caller.account.password_hash).await? {
            return Err(Error::PermissionDenied("the password is wrong".into()).into());
        }
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        queries::lock_repo(&mut tx, caller.did()).await?;
        queries::delete_account(&mut tx, caller.did()).await?;
        sequencer::sequence(
            &mut tx,
            caller.did(),
            account_event(caller.did(), "deleted"),
        )
        .await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::DeleteAccountResponse {}))
    }

    async fn update_handle(
        &self,
        request: Request<pb::UpdateHandleRequest>,
    ) -> std::result::Result<Response<pb::UpdateHandleResponse>, Status> {
        let caller = self.caller(&request).await?;
        caller.require_full_access()?;
        caller.require_active()?;
        let handle = self.check_handle(&request.get_ref().handle)?;
        let rotation = self.rotation_key(&caller.account)?;
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        queries::lock_repo(&mut tx, caller.did()).await?;
        let latest = queries::latest_plc_operation(&mut *tx, caller.did()).await?;
        queries::set_handle(&mut *tx, caller.did(), &handle)
            .await
            .map_err(|error| match error {
                Error::AlreadyExists { .. } => Error::already_exists("handle", handle.clone()),
                other => other,
            })?;
        // Identities this server made get a new PLC operation; a migrated one's owner signs theirs.
        if let Some((seq, previous, _)) = latest {
            let previous = data::parse_cid(&previous).map_err(|e| Error::DataLoss(e.0))?;
            let operation = plc::sign(
                &plc::Identity {
                    handle: &handle,
                    signing_key: &format!("did:key:{}", caller.account.signing_key_pub),
                    rotation_key: &format!("did:key:{}", caller.account.rotation_key_pub),
                    endpoint: &self.endpoint,
                },
                Some(&previous),
                &rotation,
            );
            queries::insert_plc_operation(
                &mut *tx,
                caller.did(),
                seq + 1,
                &operation.cid.to_string(),
                &operation.bytes,
            )
            .await?;
        }
        sequencer::sequence(&mut tx, caller.did(), identity_event(caller.did(), &handle)).await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::UpdateHandleResponse {}))
    }

    async fn set_account_takedown(
        &self,
        request: Request<pb::SetAccountTakedownRequest>,
    ) -> std::result::Result<Response<pb::SetAccountTakedownResponse>, Status> {
        self.admin.require_admin(&request).await?;
        let message = request.into_inner();
        if !syntax::is_did(&message.did) {
            return Err(Error::invalid_argument("did", "not a DID").into());
        }
        let account = queries::account(&self.pool, &message.did)
            .await?
            .filter(|a| a.status != "deleted")
            .ok_or_else(|| Error::not_found("account", message.did.clone()))?;
        let status = match (message.takendown, account.status.as_str()) {
            (true, _) => "takendown",
            (false, "takendown") => "active",
            (false, other) => other,
        };
        self.change_status(&account.did, status).await?;
        Ok(Response::new(pb::SetAccountTakedownResponse {}))
    }

    async fn create_record(
        &self,
        request: Request<pb::CreateRecordRequest>,
    ) -> std::result::Result<Response<pb::CreateRecordResponse>, Status> {
        let caller = self.caller(&request).await?;
        let message = request.into_inner();
        let op = create_op(&message.collection, &message.rkey, message.record, "record")?;
        let (head, applied) = self
            .write(&caller, &message.repo, vec![op], &message.swap_commit)
            .await?;
        let applied = &applied[0];
        Ok(Response::new(pb::CreateRecordResponse {
            uri: self.record_uri(caller.did(), &applied.collection, &applied.rkey),
            cid: applied.cid.map(|c| c.to_string()).unwrap_or_default(),
            commit: Some(commit_meta(&head)),
        }))
    }

    async fn put_record(
        &self,
        request: Request<pb::PutRecordRequest>,
    ) -> std::result::Result<Response<pb::PutRecordResponse>, Status> {
        let caller = self.caller(&request).await?;
        let message = request.into_inner();
        let op = put_op(
            &message.collection,
            &message.rkey,
            message.record,
            &message.swap_record,
            "record",
        )?;
        let (head, applied) = self
            .write(&caller, &message.repo, vec![op], &message.swap_commit)
            .await?;
        let applied = &applied[0];
        Ok(Response::new(pb::PutRecordResponse {
            uri: self.record_uri(caller.did(), &applied.collection, &applied.rkey),
            cid: applied.cid.map(|c| c.to_string()).unwrap_or_default(),
            commit: Some(commit_meta(&head)),
        }))
    }

    async fn delete_record(
        &self,
        request: Request<pb::DeleteRecordRequest>,
    ) -> std::result::Result<Response<pb::DeleteRecordResponse>, Status> {
        let caller = self.caller(&request).await?;
        let message = request.into_inner();
        repo::check_path(&message.collection, &message.rkey)?;
        let op = Op::Delete {
            collection: message.collection,
            rkey: message.rkey,
            swap: parse_optional_cid("swap_record", &message.swap_record)?.map(Some),
        };
        let (head, _) = self
            .write(&caller, &message.repo, vec![op], &message.swap_commit)
            .await?;
        Ok(Response::new(pb::DeleteRecordResponse {
            commit: Some(commit_meta(&head)),
        }))
    }

    async fn apply_writes(
        &self,
        request: Request<pb::ApplyWritesRequest>,
    ) -> std::result::Result<Response<pb::ApplyWritesResponse>, Status> {
        use pb::write::Action;
        let caller = self.caller(&request).await?;
        let message = request.into_inner();
        if message.writes.is_empty() || message.writes.len() > MAX_WRITES {
            return Err(
                Error::invalid_argument("writes", format!("1 to {MAX_WRITES} writes")).into(),
            );
        }
        let mut ops = Vec::with_capacity(message.writes.len());
        for (i, write) in message.writes.into_iter().enumerate() {
            let field = format!("writes[{i}]");
            let within = |action: &'static str| {
                let field = &field;
                move |e: Error| e.within(&format!("{field}.{action}"))
            };
            ops.push(match write.action {
                Some(Action::Create(c)) => {
                    create_op(&c.collection, &c.rkey, c.value, "value").map_err(within("create"))?
                }
                Some(Action::Update(u)) => put_op(&u.collection, &u.rkey, u.value, "", "value")
                    .map_err(within("update"))?,
                Some(Action::Delete(d)) => {
                    repo::check_path(&d.collection, &d.rkey).map_err(within("delete"))?;
                    Op::Delete {
                        collection: d.collection,
                        rkey: d.rkey,
                        swap: None,
                    }
                }
                None => return Err(Error::invalid_argument(field, "no action").into()),
            });
        }
        let (head, applied) = self
            .write(&caller, &message.repo, ops, &message.swap_commit)
            .await?;
        Ok(Response::new(pb::ApplyWritesResponse {
            commit: Some(commit_meta(&head)),
            results: applied
                .iter()
                .map(|a| pb::WriteResult {
                    uri: self.record_uri(caller.did(), &a.collection, &a.rkey),
                    cid: a.cid.map(|c| c.to_string()).unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn get_record(
        &self,
        request: Request<pb::GetRecordRequest>,
    ) -> std::result::Result<Response<pb::GetRecordResponse>, Status> {
        let message = request.into_inner();
        let account = self.readable_repo("repo", &message.repo).await?;
        repo::check_path(&message.collection, &message.rkey)?;
        let wanted = parse_optional_cid("cid", &message.cid)?;
        let uri = self.record_uri(&account.did, &message.collection, &message.rkey);
        let record = queries::record(&self.pool, &account.did, &message.collection, &message.rkey)
            .await?
            .filter(|r| wanted.is_none_or(|w| w.to_string() == r.cid))
            .ok_or_else(|| Error::not_found("record", uri.clone()))?;
        Ok(Response::new(pb::GetRecordResponse {
            uri,
            value: value_struct(&record.bytes)?,
            cid: record.cid,
        }))
    }

    async fn list_records(
        &self,
        request: Request<pb::ListRecordsRequest>,
    ) -> std::result::Result<Response<pb::ListRecordsResponse>, Status> {
        let message = request.into_inner();
        let account = self.readable_repo("repo", &message.repo).await?;
        if !syntax::is_nsid(&message.collection) {
            return Err(Error::invalid_argument("collection", "not an NSID").into());
        }
        let size = page_size("page_size", message.page_size, 50, 100)?;
        let scope = format!(
            "pds.ListRecords?{}&{}&{}",
            account.did, message.collection, message.reverse
        );
        let (rows, next_page_token) = self
            .page_tokens
            .page(
                &scope,
                &message.page_token,
                size,
                |after, limit| {
                    queries::records(
                        &self.pool,
                        &account.did,
                        &message.collection,
                        message.reverse,
                        after,
                        limit,
                    )
                },
                |r| r.rkey.clone(),
            )
            .await?;
        let records = rows
            .into_iter()
            .map(|r| {
                Ok(pb::Record {
                    uri: self.record_uri(&account.did, &message.collection, &r.rkey),
                    value: value_struct(&r.bytes)?,
                    cid: r.cid,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Response::new(pb::ListRecordsResponse {
            records,
            next_page_token,
        }))
    }

    async fn describe_repo(
        &self,
        request: Request<pb::DescribeRepoRequest>,
    ) -> std::result::Result<Response<pb::DescribeRepoResponse>, Status> {
        let account = self.readable_repo("repo", &request.get_ref().repo).await?;
        let operation = match queries::latest_plc_operation(&self.pool, &account.did).await? {
            Some((_, _, bytes)) => {
                data::to_json(&data::decode(&bytes).map_err(|e| Error::DataLoss(e.0))?)
            }
            // A migrated identity: the document this server would publish for it.
            None => serde_json::json!({
                "alsoKnownAs": [format!("at://{}", account.handle.clone().unwrap_or_default())],
                "verificationMethods": {"atproto": format!("did:key:{}", account.signing_key_pub)},
                "services": {"atproto_pds": {"endpoint": self.endpoint}},
            }),
        };
        let document = plc::did_document(&account.did, &operation);
        let handle = account.handle.clone().unwrap_or_default();
        let handle_is_correct = document["alsoKnownAs"].as_array().is_some_and(|a| {
            a.iter()
                .any(|v| v.as_str() == Some(&format!("at://{handle}")))
        });
        Ok(Response::new(pb::DescribeRepoResponse {
            collections: queries::collections(&self.pool, &account.did).await?,
            did_doc: json_to_struct(&document),
            did: account.did,
            handle,
            handle_is_correct,
        }))
    }

    type GetRepoStream = ResponseStream<pb::GetRepoResponse>;

    async fn get_repo(
        &self,
        request: Request<pb::GetRepoRequest>,
    ) -> std::result::Result<Response<Self::GetRepoStream>, Status> {
        let pb::GetRepoRequest { did, since } = request.into_inner();
        if !syntax::is_did(&did) {
            return Err(Error::invalid_argument("did", "not a DID").into());
        }
        let account = self.readable_repo("did", &did).await?;
        let head = self.head(&account.did).await?;
        if !since.is_empty() {
            if !syntax::is_tid(&since) {
                return Err(Error::invalid_argument("since", "not a revision (TID)").into());
            }
            return Ok(Response::new(self.blocks_since(account.did, head, since)));
        }
        let (tx, rx) = mpsc::channel(4);
        let (pool, shutdown) = (self.pool.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            let sender = tx.clone();
            let exported = repo::export(&pool, &account.did, head, |bytes| {
                let sender = sender.clone();
                let shutdown = shutdown.clone();
                async move {
                    if shutdown.is_cancelled() {
                        let _ = sender
                            .send(Err(Status::unavailable("the server is shutting down")))
                            .await;
                        return false;
                    }
                    for piece in bytes.chunks(EXPORT_CHUNK) {
                        let message = pb::GetRepoResponse {
                            chunk: piece.to_vec().into(),
                        };
                        if sender.send(Ok(message)).await.is_err() {
                            return false;
                        }
                    }
                    true
                }
            })
            .await;
            if let Err(error) = exported {
                let _ = tx.send(Err(error.into())).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_latest_commit(
        &self,
        request: Request<pb::GetLatestCommitRequest>,
    ) -> std::result::Result<Response<pb::GetLatestCommitResponse>, Status> {
        let did = &request.get_ref().did;
        if !syntax::is_did(did) {
            return Err(Error::invalid_argument("did", "not a DID").into());
        }
        let account = self.readable_repo("did", did).await?;
        let (cid, rev) = queries::repo(&self.pool, &account.did)
            .await?
            .ok_or_else(|| Error::not_found("repo", did.clone()))?;
        Ok(Response::new(pb::GetLatestCommitResponse { cid, rev }))
    }

    async fn list_repos(
        &self,
        request: Request<pb::ListReposRequest>,
    ) -> std::result::Result<Response<pb::ListReposResponse>, Status> {
        let message = request.into_inner();
        let size = page_size("page_size", message.page_size, 500, 1000)?;
        let (rows, next_page_token) = self
            .page_tokens
            .page(
                "pds.ListRepos",
                &message.page_token,
                size,
                |after, limit| queries::repos(&self.pool, after, limit),
                |r| r.did.clone(),
            )
            .await?;
        Ok(Response::new(pb::ListReposResponse {
            repos: rows
                .into_iter()
                .map(|r| pb::Repo {
                    active: r.status == "active",
                    status: status_enum(&r.status).into(),
                    did: r.did,
                    head: r.root_cid.unwrap_or_default(),
                    rev: r.rev.unwrap_or_default(),
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn get_repo_status(
        &self,
        request: Request<pb::GetRepoStatusRequest>,
    ) -> std::result::Result<Response<pb::GetRepoStatusResponse>, Status> {
        let did = &request.get_ref().did;
        if !syntax::is_did(did) {
            return Err(Error::invalid_argument("did", "not a DID").into());
        }
        let account = queries::account(&self.pool, did)
            .await?
            .ok_or_else(|| Error::not_found("repo", did.clone()))?;
        let rev = queries::repo(&self.pool, did)
            .await?
            .map(|(_, rev)| rev)
            .unwrap_or_default();
        Ok(Response::new(pb::GetRepoStatusResponse {
            did: account.did,
            active: account.status == "active",
            status: status_enum(&account.status).into(),
            rev,
        }))
    }

    type GetBlocksStream = ResponseStream<pb::GetBlocksResponse>;

    async fn get_blocks(
        &self,
        request: Request<pb::GetBlocksRequest>,
    ) -> std::result::Result<Response<Self::GetBlocksStream>, Status> {
        let message = request.into_inner();
        if !syntax::is_did(&message.did) {
            return Err(Error::invalid_argument("did", "not a DID").into());
        }
        if message.cids.is_empty() || message.cids.len() > 1000 {
            return Err(Error::invalid_argument("cids", "1 to 1,000 CIDs").into());
        }
        let mut cids = Vec::with_capacity(message.cids.len());
        for (i, text) in message.cids.iter().enumerate() {
            cids.push(
                data::parse_cid(text)
                    .map_err(|e| Error::invalid_argument(format!("cids[{i}]"), e.0))?,
            );
        }
        let account = self.readable_repo("did", &message.did).await?;
        let texts: Vec<String> = cids.iter().map(Cid::to_string).collect();
        let found = queries::blocks(&self.pool, &account.did, &texts).await?;
        let mut file = car::header(&[]);
        for (cid, text) in cids.iter().zip(&texts) {
            let bytes = found
                .get(text)
                .ok_or_else(|| Error::not_found("block", text.clone()))?;
            file.extend(car::block(cid, bytes));
        }
        Ok(Response::new(chunked(file, |chunk| {
            pb::GetBlocksResponse { chunk }
        })))
    }

    type GetRecordProofStream = ResponseStream<pb::GetRecordProofResponse>;

    async fn get_record_proof(
        &self,
        request: Request<pb::GetRecordProofRequest>,
    ) -> std::result::Result<Response<Self::GetRecordProofStream>, Status> {
        let message = request.into_inner();
        if !syntax::is_did(&message.did) {
            return Err(Error::invalid_argument("did", "not a DID").into());
        }
        repo::check_path(&message.collection, &message.rkey)?;
        let account = self.readable_repo("did", &message.did).await?;
        let head = self.head(&account.did).await?;
        let commit = queries::block(&self.pool, &account.did, &head.to_string())
            .await?
            .ok_or_else(|| Error::DataLoss(format!("commit {head} is missing")))?;
        let root = repo::data_of_commit(&commit)?;
        let key = format!("{}/{}", message.collection, message.rkey);
        let mut connection = self.pool.acquire().await.map_err(Error::from)?;
        let source = repo::StoredNodes {
            connection: tokio::sync::Mutex::new(&mut *connection),
            did: &account.did,
        };
        let mut tree = Mst::new(&source);
        let mut file = car::header(&[head]);
        file.extend(car::block(&head, &commit));
        for cid in tree.covering_proof(root, key.as_bytes()).await? {
            file.extend(car::block(&cid, &tree.node_block(cid).await?));
        }
        let record = tree.get(root, key.as_bytes()).await?;
        drop(tree);
        if let Some(record) = record {
            let bytes = queries::block(&self.pool, &account.did, &record.to_string())
                .await?
                .ok_or_else(|| Error::DataLoss(format!("record {record} is missing")))?;
            file.extend(car::block(&record, &bytes));
        }
        Ok(Response::new(chunked(file, |chunk| {
            pb::GetRecordProofResponse { chunk }
        })))
    }

    type SubscribeReposStream = ResponseStream<pb::SubscribeReposResponse>;

    async fn subscribe_repos(
        &self,
        request: Request<pb::SubscribeReposRequest>,
    ) -> std::result::Result<Response<Self::SubscribeReposStream>, Status> {
        let (oldest, newest) = sequencer::bounds(&self.pool).await?;
        let outdated = |message: String| -> std::result::Result<_, Status> {
            Ok(pb::SubscribeReposResponse {
                seq: 0,
                time: Some(crate::proto::timestamp(time::OffsetDateTime::now_utc())),
                event: Some(Event::Info(pb::InfoEvent {
                    name: "OutdatedCursor".into(),
                    message,
                })),
            })
        };
        let mut first = Vec::new();
        let start = match request.get_ref().cursor {
            None => newest,
            Some(cursor) if cursor < 0 => {
                return Err(Error::invalid_argument("cursor", "must not be negative").into());
            }
            Some(cursor) if cursor > newest => {
                return Err(Error::invalid_argument(
                    "cursor",
                    format!("{cursor} is in the future: the newest event is {newest}"),
                )
                .into());
            }
            // Events after the cursor were pruned: say so, and start from the oldest kept.
            Some(cursor) => match oldest {
                Some(oldest) if cursor + 1 < oldest => {
                    first.push(outdated(format!(
                        "events {} to {} are no longer kept; starting from {oldest}",
                        cursor + 1,
                        oldest - 1
                    )));
                    oldest - 1
                }
                None if cursor < newest => {
                    first.push(outdated("no events are kept; going live".into()));
                    newest
                }
                _ => cursor,
            },
        };
        let pool = self.pool.clone();
        let follow = notify::follow(
            &self.notifier,
            sequencer::SEQ_CHANNEL,
            self.shutdown.clone(),
            start,
            self.firehose_stall,
            move |after, limit| {
                let pool = pool.clone();
                async move { sequencer::events_after(&pool, after, limit).await }
            },
        );
        Ok(Response::new(Box::pin(futures::StreamExt::chain(
            futures::stream::iter(first),
            follow,
        ))))
    }

    async fn import_repo(
        &self,
        request: Request<tonic::Streaming<pb::ImportRepoRequest>>,
    ) -> std::result::Result<Response<pb::ImportRepoResponse>, Status> {
        let caller = self.caller(&request).await?;
        caller.require_full_access()?;
        let key = PublicKey::from_multikey(&caller.account.signing_key_pub)
            .ok_or_else(|| Error::DataLoss("a stored signing key is not a Multikey".into()))?;
        let mut stream = request.into_inner();
        let mut file = Vec::new();
        while let Some(message) = stream.message().await? {
            file.extend_from_slice(&message.chunk);
            if file.len() > MAX_IMPORT_BYTES {
                return Err(Error::invalid_argument(
                    "chunk",
                    format!("the repository is larger than {MAX_IMPORT_BYTES} bytes"),
                )
                .into());
            }
        }
        let imported = super::import::import(&self.pool, caller.did(), &key, &file).await?;
        Ok(Response::new(pb::ImportRepoResponse {
            commit: Some(commit_meta(&imported.head)),
            records: imported.records as i64,
            blocks: imported.blocks as i64,
        }))
    }

    async fn upload_blob(
        &self,
        request: Request<tonic::Streaming<pb::UploadBlobRequest>>,
    ) -> std::result::Result<Response<pb::UploadBlobResponse>, Status> {
        use pb::upload_blob_request::Part;
        let caller = self.caller(&request).await?;
        caller.require_active()?;
        let mut stream = request.into_inner();
        let mime_type = match stream.message().await? {
            Some(pb::UploadBlobRequest {
                part: Some(Part::Header(header)),
            }) => header.mime_type.trim().to_lowercase(),
            _ => {
                return Err(
                    Error::invalid_argument("header", "the first message is the header").into(),
                );
            }
        };
        if !is_mime_type(&mime_type) {
            return Err(Error::invalid_argument(
                "header.mime_type",
                "not a type/subtype MIME type",
            )
            .into());
        }
        let chunks = upload_chunks(stream, |m: pb::UploadBlobRequest| match m.part {
            Some(Part::Chunk(bytes)) => Some(bytes),
            _ => None,
        });
        let stored = self.blobs.put(chunks, self.max_blob_bytes, "chunk").await?;
        let cid = data::raw_cid(stored.sha256.as_bytes());
        let row = queries::BlobRow {
            cid: cid.to_string(),
            sha256: stored.sha256.as_bytes().to_vec(),
            mime_type: mime_type.clone(),
            size: stored.size as i64,
        };
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        // The bytes must still be there when the listing commits (a collector may race us).
        self.blobs.hold(&mut tx, BLOB_LOCKS, &stored.sha256).await?;
        queries::insert_blob(&mut *tx, caller.did(), &row).await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::UploadBlobResponse {
            r#ref: json_to_struct(&serde_json::json!({
                "$type": "blob",
                "ref": {"$link": row.cid},
                "mimeType": row.mime_type,
                "size": row.size,
            })),
            blob: Some(pb::BlobMeta {
                cid: row.cid,
                mime_type: row.mime_type,
                size: row.size,
            }),
        }))
    }

    type GetBlobStream = ResponseStream<pb::GetBlobResponse>;

    async fn get_blob(
        &self,
        request: Request<pb::GetBlobRequest>,
    ) -> std::result::Result<Response<Self::GetBlobStream>, Status> {
        use pb::get_blob_response::Part;
        let message = request.into_inner();
        if !syntax::is_did(&message.did) {
            return Err(Error::invalid_argument("did", "not a DID").into());
        }
        data::parse_cid(&message.cid).map_err(|e| Error::invalid_argument("cid", e.0))?;
        let account = self.readable_repo("did", &message.did).await?;
        let row = queries::blob(&self.pool, &account.did, &message.cid)
            .await?
            .ok_or_else(|| Error::not_found("blob", message.cid.clone()))?;
        let sha256 = Sha256::from_slice(&row.sha256)
            .ok_or_else(|| Error::DataLoss("a stored blob digest is malformed".into()))?;
        let (_, bytes) = self.blobs.get(&sha256).await?;
        let (tx, rx) = mpsc::channel(8);
        let shutdown = self.shutdown.clone();
        let first = pb::GetBlobResponse {
            part: Some(Part::Meta(pb::BlobMeta {
                cid: row.cid,
                mime_type: row.mime_type,
                size: row.size,
            })),
        };
        tokio::spawn(async move {
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            let chunk = |bytes| pb::GetBlobResponse {
                part: Some(Part::Chunk(bytes)),
            };
            blobs::send_chunks(&tx, bytes, EXPORT_CHUNK, &shutdown, chunk).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_blobs(
        &self,
        request: Request<pb::ListBlobsRequest>,
    ) -> std::result::Result<Response<pb::ListBlobsResponse>, Status> {
        let message = request.into_inner();
        if !syntax::is_did(&message.did) {
            return Err(Error::invalid_argument("did", "not a DID").into());
        }
        let account = self.readable_repo("did", &message.did).await?;
        let size = page_size("page_size", message.page_size, 500, 1000)?;
        let (cids, next_page_token) = self
            .page_tokens
            .page(
                &format!("pds.ListBlobs?{}", account.did),
                &message.page_token,
                size,
                |after, limit| queries::blob_cids(&self.pool, &account.did, after, limit),
                |cid: &String| cid.clone(),
            )
            .await?;
        Ok(Response::new(pb::ListBlobsResponse {
            cids,
            next_page_token,
        }))
    }
}

impl PdsService {
    /// Removes expired refresh tokens, firehose events past retention, and blobs no record has
    /// referenced within an hour of their upload (hourly).
    pub async fn collect_garbage(&self) -> Result<u64> {
        let mut removed = queries::delete_expired_refresh_tokens(&self.pool).await?
            + sequencer::prune(&self.pool, self.retention_hours).await?;
        for (did, cid) in queries::unreferenced_blobs(&self.pool).await? {
            match self.collect_blob(&did, &cid).await {
                Ok(true) => removed += 1,
                Ok(false) => {}
                // One blob that cannot go now must not stop the others.
                Err(error) => tracing::warn!(%error, did, cid, "cannot collect a blob"),
            }
        }
        Ok(removed)
    }

    /// Unlists one blob if it is still unreferenced, and deletes its bytes if no account lists
    /// them any more, under the bytes' lock (an upload of the same bytes waits).
    async fn collect_blob(&self, did: &str, cid: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let Some(sha256) = queries::delete_unreferenced_blob(&mut tx, did, cid).await? else {
            return Ok(false);
        };
        let sha256 = Sha256::from_slice(&sha256)
            .ok_or_else(|| Error::DataLoss("a stored blob digest is malformed".into()))?;
        blobs::lock(&mut tx, BLOB_LOCKS, &sha256).await?;
        if !queries::blob_bytes_listed(&mut *tx, sha256.as_bytes()).await? {
            self.blobs.delete(&sha256).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

/// Sends a file as a stream of messages of at most [`EXPORT_CHUNK`] bytes.
fn chunked<M: Send + 'static>(
    file: Vec<u8>,
    message: impl Fn(bytes::Bytes) -> M,
) -> ResponseStream<M> {
    let file = bytes::Bytes::from(file);
    let pieces: Vec<_> = (0..file.len())
        .step_by(EXPORT_CHUNK)
        .map(|at| Ok(message(file.slice(at..(at + EXPORT_CHUNK).min(file.len())))))
        .collect();
    Box::pin(futures::stream::iter(pieces))
}

impl PdsService {
    /// The blocks created after revision `since`, as a CAR rooted at the head, streamed from the
    /// database as they are read.
    fn blocks_since(
        &self,
        did: String,
        head: Cid,
        since: String,
    ) -> ResponseStream<pb::GetRepoResponse> {
        use futures::TryStreamExt;
        let (tx, rx) = mpsc::channel(4);
        let (pool, shutdown) = (self.pool.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            let mut pending = car::header(&[head]);
            let mut rows = sqlx::query_as::<_, (String, Vec<u8>)>(
                "SELECT cid, bytes FROM pds.repo_blocks WHERE repo_did = $1 AND repo_rev > $2
                 ORDER BY repo_rev, cid",
            )
            .bind(&did)
            .bind(&since)
            .fetch(&pool);
            loop {
                let row = tokio::select! {
                    _ = shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("the server is shutting down"))).await;
                        return;
                    }
                    row = rows.try_next() => row,
                };
                match row {
                    Ok(Some((text, bytes))) => match Cid::from_str(&text) {
                        Ok(cid) => pending.extend(car::block(&cid, &bytes)),
                        Err(_) => {
                            let error = Error::DataLoss(format!("stored CID {text} is malformed"));
                            let _ = tx.send(Err(error.into())).await;
                            return;
                        }
                    },
                    Ok(None) => break,
                    Err(error) => {
                        let _ = tx.send(Err(Error::from(error).into())).await;
                        return;
                    }
                }
                if pending.len() >= EXPORT_CHUNK {
                    let chunk = std::mem::take(&mut pending);
                    let message = pb::GetRepoResponse {
                        chunk: chunk.into(),
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
            }
            if !pending.is_empty() {
                let message = pb::GetRepoResponse {
                    chunk: pending.into(),
                };
                let _ = tx.send(Ok(message)).await;
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

/// A MIME type: `type/subtype`, lowercase letters, digits and `.+-_` (parameters not allowed).
fn is_mime_type(text: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".+-_".contains(&b))
    };
    text.len() <= 100
        && text
            .split_once('/')
            .is_some_and(|(t, s)| part(t) && part(s))
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    #[tokio::test]
    async fn password_hashing_runs_a_bounded_number_at_once() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..4 * HASHING_AT_ONCE)
            .map(|_| {
                let (running, most) = (running.clone(), most.clone());
                tokio::spawn(hashing(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                }))
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let most = most.load(Ordering::SeqCst);
        assert!(most <= HASHING_AT_ONCE, "{most} hashes ran at once");
        assert!(most > 1, "hashes never overlapped");
    }
}
