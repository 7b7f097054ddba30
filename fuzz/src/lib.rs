//! What the fuzz targets share: a reader that splits libFuzzer's bytes into the parts a target
//! needs, and fixed keys standing in for the ones a server loads from its database or an issuer
//! publishes, so that targets can sign inputs and reach the code behind a signature check.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

/// Reads parts of a fuzz input front to back; past the end, every part is empty or zero.
pub struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Input { bytes }
    }

    pub fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((first, rest)) => {
                self.bytes = rest;
                *first
            }
            None => 0,
        }
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (part, rest) = self.bytes.split_at(n.min(self.bytes.len()));
        self.bytes = rest;
        part
    }

    /// The bytes up to the next `separator` (dropped), or all that is left.
    pub fn until(&mut self, separator: u8) -> &'a [u8] {
        match self.bytes.iter().position(|&b| b == separator) {
            Some(at) => {
                let part = &self.bytes[..at];
                self.bytes = &self.bytes[at + 1..];
                part
            }
            None => self.rest(),
        }
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Text as a client would send it: gRPC strings are UTF-8, so other bytes become U+FFFD.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The PDS account whose repository `repo_import` imports, with its secp256k1 signing key.
pub const PDS_DID: &str = "did:plc:fuzzfuzzfuzzfuzzfuzzfuzz";

pub fn pds_signing_key() -> quintet::pds::keys::SigningKey {
    quintet::pds::keys::SigningKey::from_bytes(&[0x42; 32]).expect("a valid secp256k1 scalar")
}

/// The griot author's Ed25519 key and its did:key.
pub fn griot_author() -> (ring::signature::Ed25519KeyPair, String) {
    use ring::signature::KeyPair;
    let key = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[0x17; 32])
        .expect("any 32-byte seed");
    let public: [u8; 32] = key.public_key().as_ref().try_into().expect("32 bytes");
    let did = quintet::griot::domain::DidKey::from_public_key(public)
        .as_str()
        .to_owned();
    (key, did)
}

/// The test-only RSA key the market's tests sign ID tokens with (tests/fixtures/).
pub fn oidc_key() -> ring::signature::RsaKeyPair {
    ring::signature::RsaKeyPair::from_der(include_bytes!(
        "../../tests/fixtures/oidc-test-key-1.der"
    ))
    .expect("the fixture is a PKCS#1 RSA key")
}

/// The key id the OIDC fixture key is published under.
pub const OIDC_KID: &str = "fuzz-1";
pub const OIDC_ISSUER: &str = "https://issuer.fuzz";
pub const OIDC_AUDIENCE: &str = "fuzz-client";

/// The JSON Web Key Set publishing [`oidc_key`] as [`OIDC_KID`].
pub fn oidc_jwks(key: &ring::signature::RsaKeyPair) -> String {
    let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(key.public());
    serde_json::json!({"keys": [{
        "kty": "RSA", "kid": OIDC_KID, "use": "sig", "alg": "RS256",
        "n": b64url(&public.n), "e": b64url(&public.e),
    }]})
    .to_string()
}

/// An RS256 JWT of the given header and claims bytes (not necessarily JSON), signed by `key`.
pub fn rs256_token(key: &ring::signature::RsaKeyPair, header: &[u8], claims: &[u8]) -> String {
    let signed = format!("{}.{}", b64url(header), b64url(claims));
    let mut signature = vec![0u8; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signed.as_bytes(),
        &mut signature,
    )
    .expect("RSA signing works");
    format!("{signed}.{}", b64url(&signature))
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
