//! Griot's domain types, parsed once at the edge: package ids, `did:key` Ed25519 authors,
//! signed manifests (RFC 8785 canonical JSON + Ed25519), target node ids, job options.

use std::fmt;

use base64::Engine;
use ring::signature::{ED25519, UnparsedPublicKey};
use serde_json::{Map, Value};

use crate::{
    blobs::Sha256,
    error::{Error, Result},
};

/// Stable reasons clients can match on.
pub const MANIFEST_VALIDATION_FAILED: &str = "MANIFEST_VALIDATION_FAILED";
pub const SIGNATURE_FAILED: &str = "SIGNATURE_FAILED";
pub const INTEGRITY_CHECK_FAILED: &str = "INTEGRITY_CHECK_FAILED";

/// Largest manifest accepted, as JSON text.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// Most dependencies one package may declare.
const MAX_DEPENDENCIES: usize = 256;
/// The multicodec code of an Ed25519 public key (0xed), as its unsigned varint.
const ED25519_PUB_MULTICODEC: [u8; 2] = [0xed, 0x01];

/// A package id: the SHA-256 of the artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackageId(Sha256);

impl PackageId {
    pub fn parse(field: &str, text: &str) -> Result<Self> {
        if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(Error::invalid_argument(
                field,
                "not a package id (64 lowercase hex digits of a SHA-256)",
            ));
        }
        Sha256::from_hex(text)
            .map(PackageId)
            .ok_or_else(|| Error::invalid_argument(field, "not a package id"))
    }

    pub fn sha256(&self) -> &Sha256 {
        &self.0
    }

    pub fn from_sha256(sha256: Sha256) -> Self {
        PackageId(sha256)
    }
}

impl fmt::Display for PackageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_hex())
    }
}

/// An author: `did:key:z<base58btc(0xed01 || 32-byte Ed25519 public key)>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DidKey {
    did: String,
    public_key: [u8; 32],
}

impl DidKey {
    /// Parses a `did:key` Ed25519 DID; the error says what is wrong with it.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let Some(multibase) = text.strip_prefix("did:key:") else {
            return Err("not a did:key DID".to_owned());
        };
        let Some(base58) = multibase.strip_prefix('z') else {
            return Err("a did:key must be multibase base58btc (starting with z)".to_owned());
        };
        // An Ed25519 key with its multicodec is 34 bytes, 48 Base58 digits; Base58 decoding
        // takes time quadratic in the length, so longer text is refused undecoded.
        if base58.len() > 64 {
            return Err("too long for an Ed25519 did:key".to_owned());
        }
        let bytes = bs58::decode(base58)
            .into_vec()
            .map_err(|_| "the did:key is not valid base58btc".to_owned())?;
        let Some(key) = bytes.strip_prefix(&ED25519_PUB_MULTICODEC) else {
            return Err("the did:key is not an Ed25519 key (multicodec 0xed)".to_owned());
        };
        let public_key: [u8; 32] = key
            .try_into()
            .map_err(|_| format!("an Ed25519 key has 32 bytes, not {}", key.len()))?;
        Ok(DidKey {
            did: text.to_owned(),
            public_key,
        })
    }

    /// The DID of an Ed25519 public key.
    pub fn from_public_key(public_key: [u8; 32]) -> Self {
        let mut bytes = ED25519_PUB_MULTICODEC.to_vec();
        bytes.extend_from_slice(&public_key);
        DidKey {
            did: format!("did:key:z{}", bs58::encode(bytes).into_string()),
            public_key,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.did
    }

    /// Whether `signature` is this key's Ed25519 signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(message, signature)
            .is_ok()
    }
}

/// A validated manifest: the fields Griot relies on, the whole object as given, and the bytes
/// its signature covers.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub name: String,
    pub node_class: String,
    pub version: semver::Version,
    pub author: DidKey,
    pub dependencies: Vec<PackageId>,
    pub description: String,
    /// The artifact the author signed for: its SHA-256, which must be the package id. Without
    /// it a signed manifest could be registered with any bytes.
    pub artifact: PackageId,
    /// The whole manifest as given (its `signature` field included, if it had one).
    pub json: Value,
    /// The signature, decoded.
    pub signature: Vec<u8>,
}

fn manifest_error(field: &str, description: impl Into<String>) -> Error {
    Error::invalid_argument_because(
        MANIFEST_VALIDATION_FAILED,
        format!("header.manifest_json.{field}"),
        description,
    )
}

fn manifest_string<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a str> {
    match object.get(field) {
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(manifest_error(field, "must be a string")),
        None => Err(manifest_error(field, "is required")),
    }
}

/// Checks a manifest `name`: 1 to 214 of `a-z 0-9 - _ .`, starting with a letter or digit.
fn valid_name(name: &str) -> bool {
    (1..=214).contains(&name.len())
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

/// Checks a `node_class`: 1 to 128 of `A-Z a-z 0-9 - _ . :`.
fn valid_node_class(class: &str) -> bool {
    (1..=128).contains(&class.len())
        && class
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Decodes a signature: base64url without padding (padding and the standard alphabet are
/// tolerated, since signers differ), 64 bytes.
pub fn decode_signature(field: &str, text: &str) -> Result<Vec<u8>> {
    let trimmed = text.trim_end_matches('=');
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
        .map_err(|_| {
            Error::invalid_argument_because(
                SIGNATURE_FAILED,
                field,
                "not base64url: the signature is base64url (no padding) of 64 bytes",
            )
        })?;
    if bytes.len() != 64 {
        return Err(Error::invalid_argument_because(
            SIGNATURE_FAILED,
            field,
            format!("an Ed25519 signature has 64 bytes, not {}", bytes.len()),
        ));
    }
    Ok(bytes)
}

/// The signature as stored and returned: base64url without padding.
pub fn encode_signature(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The bytes a manifest's signature covers: its RFC 8785 canonical JSON without `signature`.
pub fn signing_bytes(manifest: &Value) -> Result<Vec<u8>> {
    let mut unsigned = manifest.clone();
    if let Value::Object(object) = &mut unsigned {
        object.remove("signature");
    }
    serde_jcs::to_vec(&unsigned)
        .map_err(|e| manifest_error("", format!("cannot canonicalize: {e}")))
}

impl Manifest {
    /// Parses and validates a manifest and its signature (from the manifest's `signature` field
    /// or `signature`, which must agree when both are given), and verifies the signature.
    pub fn parse(text: &str, signature: &str) -> Result<Self> {
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(Error::invalid_argument_because(
                MANIFEST_VALIDATION_FAILED,
                "header.manifest_json",
                format!("larger than {MAX_MANIFEST_BYTES} bytes"),
            ));
        }
        let json: Value = serde_json::from_str(text).map_err(|e| {
            Error::invalid_argument_because(
                MANIFEST_VALIDATION_FAILED,
                "header.manifest_json",
                format!("not JSON: {e}"),
            )
        })?;
        let Value::Object(object) = &json else {
            return Err(Error::invalid_argument_because(
                MANIFEST_VALIDATION_FAILED,
                "header.manifest_json",
                "must be a JSON object",
            ));
        };
        let name = manifest_string(object, "name")?;
        if !valid_name(name) {
            return Err(manifest_error(
                "name",
                "1 to 214 of a-z 0-9 - _ . starting with a letter or digit",
            ));
        }
        let node_class = manifest_string(object, "node_class")?;
        if !valid_node_class(node_class) {
            return Err(manifest_error(
                "node_class",
                "1 to 128 of A-Z a-z 0-9 - _ . :",
            ));
        }
        let version = semver::Version::parse(manifest_string(object, "version")?)
            .map_err(|e| manifest_error("version", format!("not a semantic version: {e}")))?;
        let author = DidKey::parse(manifest_string(object, "author")?)
            .map_err(|e| manifest_error("author", e))?;
        let dependencies = match object.get("dependencies") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                if items.len() > MAX_DEPENDENCIES {
                    return Err(manifest_error(
                        "dependencies",
                        format!("more than {MAX_DEPENDENCIES}"),
                    ));
                }
                let mut ids = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let field = format!("header.manifest_json.dependencies[{i}]");
                    let id = item
                        .as_str()
                        .ok_or_else(|| {
                            Error::invalid_argument_because(
                                MANIFEST_VALIDATION_FAILED,
                                &field,
                                "must be a package id string",
                            )
                        })
                        .and_then(|text| {
                            PackageId::parse(&field, text).map_err(|_| {
                                Error::invalid_argument_because(
                                    MANIFEST_VALIDATION_FAILED,
                                    &field,
                                    "not a package id (64 lowercase hex digits)",
                                )
                            })
                        })?;
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                ids
            }
            Some(_) => return Err(manifest_error("dependencies", "must be an array")),
        };
        let artifact = PackageId::parse(
            "header.manifest_json.artifact_sha256",
            manifest_string(object, "artifact_sha256")?,
        )
        .map_err(|_| {
            manifest_error(
                "artifact_sha256",
                "the artifact's SHA-256, 64 lowercase hex digits",
            )
        })?;
        let description = match object.get("description") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(text)) => text.clone(),
            Some(_) => return Err(manifest_error("description", "must be a string")),
        };
        let embedded = match object.get("signature") {
            None => None,
            Some(Value::String(text)) => Some(text.as_str()),
            Some(_) => return Err(manifest_error("signature", "must be a string")),
        };
        let signature = match (embedded, signature.is_empty()) {
            (Some(embedded), given_empty) => {
                let bytes = decode_signature("header.manifest_json.signature", embedded)?;
                // Compared as bytes: encodings of one signature differ (padding, alphabet).
                if !given_empty && decode_signature("header.signature", signature)? != bytes {
                    return Err(Error::invalid_argument_because(
                        SIGNATURE_FAILED,
                        "header.signature",
                        "differs from the manifest's signature field",
                    ));
                }
                bytes
            }
            (None, false) => decode_signature("header.signature", signature)?,
            (None, true) => {
                return Err(Error::invalid_argument_because(
                    SIGNATURE_FAILED,
                    "header.signature",
                    "is required (or a signature field in the manifest)",
                ));
            }
        };
        let manifest = Manifest {
            name: name.to_owned(),
            node_class: node_class.to_owned(),
            version,
            author,
            dependencies,
            description,
            artifact,
            signature,
            json: json.clone(),
        };
        manifest.verify()?;
        Ok(manifest)
    }

    /// Verifies the signature against the author's key; SIGNATURE_FAILED otherwise.
    pub fn verify(&self) -> Result<()> {
        let message = signing_bytes(&self.json)?;
        if self.author.verifies(&message, &self.signature) {
            Ok(())
        } else {
            Err(Error::invalid_argument_because(
                SIGNATURE_FAILED,
                "header.signature",
                format!(
                    "not a valid signature of the manifest by {}",
                    self.author.as_str()
                ),
            ))
        }
    }
}

/// A target node id, which names a directory: 1 to 255 of `A-Z a-z 0-9 . _ : -`, not starting
/// with a dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetNodeId(String);

impl TargetNodeId {
    pub fn parse(field: &str, text: &str) -> Result<Self> {
        let ok = (1..=255).contains(&text.len())
            && !text.starts_with('.')
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if ok {
            Ok(TargetNodeId(text.to_owned()))
        } else {
            Err(Error::invalid_argument(
                field,
                "1 to 255 of A-Z a-z 0-9 . _ : - not starting with a dot",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where an artifact comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactSource {
    /// The server's blob storage.
    Blob,
    /// A local file.
    File(std::path::PathBuf),
    /// An `http(s)://` URL.
    Http(url::Url),
}

/// The `artifact_url` of a held artifact.
pub fn blob_url(id: &PackageId) -> String {
    format!("blob:sha256:{id}")
}

impl ArtifactSource {
    /// Parses a client-given or stored artifact URL.
    pub fn parse(field: &str, text: &str) -> Result<Self> {
        if text.starts_with("blob:") {
            return Ok(ArtifactSource::Blob);
        }
        if text.len() > 2048 {
            return Err(Error::invalid_argument(
                field,
                "longer than 2048 characters",
            ));
        }
        let url = url::Url::parse(text)
            .map_err(|e| Error::invalid_argument(field, format!("not a URL: {e}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Error::invalid_argument(
                field,
                "credentials in URLs would be shown to everyone; use a pre-signed query instead",
            ));
        }
        match url.scheme() {
            "http" | "https" if url.host().is_some() => Ok(ArtifactSource::Http(url)),
            "file" => url
                .to_file_path()
                .map(ArtifactSource::File)
                .map_err(|_| Error::invalid_argument(field, "not a local file path")),
            _ => Err(Error::invalid_argument(
                field,
                "only http://, https:// and file:// URLs are fetched",
            )),
        }
    }
}

/// An artifact URL as shown publicly and in logs: without its query and fragment, which may
/// carry access tokens (pre-signed URLs).
pub fn redact_url(text: &str) -> String {
    match text.find(['?', '#']) {
        Some(cut) => format!("{}?…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// How a job runs, as stored in `installations.options`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobOptions {
    pub timeout_seconds: u32,
    pub max_retries: u32,
    pub rollback_on_failure: bool,
    pub allow_downgrade: bool,
}

/// The default and largest job timeouts.
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 3600;
const MAX_TIMEOUT_SECONDS: u32 = 86_400;
const MAX_RETRIES: u32 = 10;

impl JobOptions {
    pub fn validate(mut self) -> Result<Self> {
        if self.timeout_seconds > MAX_TIMEOUT_SECONDS {
            return Err(Error::invalid_argument(
                "options.timeout_seconds",
                format!("at most {MAX_TIMEOUT_SECONDS}"),
            ));
        }
        if self.timeout_seconds == 0 {
            self.timeout_seconds = DEFAULT_TIMEOUT_SECONDS;
        }
        if self.max_retries > MAX_RETRIES {
            return Err(Error::invalid_argument(
                "options.max_retries",
                format!("at most {MAX_RETRIES}"),
            ));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use ring::signature::{Ed25519KeyPair, KeyPair};
    use serde_json::json;

    use super::*;

    fn key(seed: u8) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap()
    }

    fn did_of(key: &Ed25519KeyPair) -> DidKey {
        DidKey::from_public_key(key.public_key().as_ref().try_into().unwrap())
    }

    fn signed(key: &Ed25519KeyPair, manifest: &Value) -> String {
        encode_signature(key.sign(&signing_bytes(manifest).unwrap()).as_ref())
    }

    #[test]
    fn did_key_round_trips_and_matches_the_spec_example() {
        // The did:key spec's Ed25519 example: its multibase decodes to 0xed01 + 32 bytes.
        let did = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK";
        let parsed = DidKey::parse(did).unwrap();
        assert_eq!(DidKey::from_public_key(parsed.public_key).as_str(), did);
        assert!(did_of(&key(1)).as_str().starts_with("did:key:z6Mk"));
    }

    #[test]
    fn wrong_did_forms_are_refused() {
        for bad in [
            "did:web:example.com",
            "did:key:f00",
            "did:key:z0OIl",
            // A secp256k1 key (multicodec 0xe7).
            "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme",
            // Ed25519 multicodec with 31 key bytes.
            &format!(
                "did:key:z{}",
                bs58::encode([&[0xed, 0x01][..], &[7u8; 31]].concat()).into_string()
            ),
            // A megabyte of digits: refused undecoded, at once.
            &format!("did:key:z{}", "x".repeat(1 << 20)),
        ] {
            let started = std::time::Instant::now();
            assert!(DidKey::parse(bad).is_err(), "{bad}");
            assert!(started.elapsed() < std::time::Duration::from_secs(1));
        }
    }

    #[test]
    fn canonical_json_sorts_keys_and_drops_the_signature() {
        let manifest =
            json!({"b": 1, "a": [true, null, "x"], "signature": "s", "c": {"z": 1.5, "y": 1e21}});
        assert_eq!(
            String::from_utf8(signing_bytes(&manifest).unwrap()).unwrap(),
            r#"{"a":[true,null,"x"],"b":1,"c":{"y":1e+21,"z":1.5}}"#
        );
    }

    #[test]
    fn signed_manifests_verify_and_tampered_ones_do_not() {
        let key = key(2);
        let mut manifest = json!({
            "name": "weather-sensor", "node_class": "sensor", "version": "1.2.3",
            "author": did_of(&key).as_str(), "dependencies": [], "description": "reads the sky",
            "artifact_sha256": "a".repeat(64),
        });
        let signature = signed(&key, &manifest);
        let parsed = Manifest::parse(&manifest.to_string(), &signature).unwrap();
        assert_eq!(parsed.version, semver::Version::new(1, 2, 3));

        // Embedded in the manifest, the signature is left out of what it signs; any base64
        // spelling of it is the same signature.
        manifest["signature"] = Value::String(signature.clone());
        Manifest::parse(&manifest.to_string(), "").unwrap();
        let padded = base64::engine::general_purpose::URL_SAFE
            .encode(decode_signature("s", &signature).unwrap());
        Manifest::parse(&manifest.to_string(), &padded).unwrap();

        manifest["description"] = Value::String("reads the sea".into());
        let error = Manifest::parse(&manifest.to_string(), "").unwrap_err();
        assert_eq!(error.reason(), SIGNATURE_FAILED);

        // Signed by another key than the author's.
        let other = json!({
            "name": "weather-sensor", "node_class": "sensor", "version": "1.2.3",
            "author": did_of(&key).as_str(), "artifact_sha256": "b".repeat(64),
        });
        let forged = signed(&super::tests::key(3), &other);
        let error = Manifest::parse(&other.to_string(), &forged).unwrap_err();
        assert_eq!(error.reason(), SIGNATURE_FAILED);
    }

    #[test]
    fn malformed_manifests_name_the_field() {
        let key = key(4);
        let base = json!({"name": "n", "node_class": "c", "version": "1.0.0", "author": did_of(&key).as_str(), "artifact_sha256": "c".repeat(64)});
        for (field, value) in [
            ("name", json!("Bad Name")),
            ("node_class", json!("")),
            ("version", json!("1.0")),
            ("author", json!("did:web:x")),
            ("dependencies", json!(["nothex"])),
            ("description", json!(5)),
            ("artifact_sha256", json!("ABC")),
        ] {
            let mut manifest = base.clone();
            manifest[field] = value;
            let error =
                Manifest::parse(&manifest.to_string(), &signed(&key, &manifest)).unwrap_err();
            assert_eq!(error.reason(), MANIFEST_VALIDATION_FAILED, "{field}");
            assert!(error.to_string().contains(field), "{field}: {error}");
        }
        let error = Manifest::parse("[1]", "").unwrap_err();
        assert_eq!(error.reason(), MANIFEST_VALIDATION_FAILED);
    }

    #[test]
    fn target_node_ids_cannot_leave_the_nodes_directory() {
        for bad in ["", ".", "..", "../x", "a/b", ".hidden", "a b"] {
            assert!(TargetNodeId::parse("t", bad).is_err(), "{bad}");
        }
        TargetNodeId::parse("t", "did:key:z6Mk.node-1_a").unwrap();
    }

    #[test]
    fn artifact_urls() {
        assert!(matches!(
            ArtifactSource::parse("u", "https://example.com/a.tgz").unwrap(),
            ArtifactSource::Http(_)
        ));
        assert_eq!(
            ArtifactSource::parse("u", "file:///srv/a.tgz").unwrap(),
            ArtifactSource::File("/srv/a.tgz".into())
        );
        assert_eq!(
            redact_url("https://h/a.tgz?X-Sig=secret"),
            "https://h/a.tgz?…"
        );
        for bad in [
            "ftp://x/a",
            "nonsense",
            "https://",
            "data:text/plain,x",
            "https://u:p@h/a",
        ] {
            assert!(ArtifactSource::parse("u", bad).is_err(), "{bad}");
        }
    }
}
