//! Griot's signed package manifests (src/griot/domain.rs): JSON checked field by field, the
//! author's did:key parsed, the signature verified over the RFC 8785 canonical form.
//!
//! The first byte picks the mode. Even: the rest is `manifest text 0xff signature text`, as a
//! client sends them. Odd: the rest is a manifest the target signs as `quintet griot-sign` would
//! (author set to the target's key, signed over the canonical JSON without `signature`), with the
//! signature in the manifest, in the request, or both (in two base64 spellings).
//! Properties: only MANIFEST_VALIDATION_FAILED and SIGNATURE_FAILED refusals; an accepted
//! manifest's signature verifies independently under its author's key, its fields are the JSON's,
//! and its author's DID is the canonical one of its key; a manifest signed by its author is never
//! refused for its signature, whatever else it holds.
#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use quintet::{
    error::Error,
    griot::domain::{DidKey, MANIFEST_VALIDATION_FAILED, Manifest, SIGNATURE_FAILED},
};
use quintet_fuzz::{Input, b64url, griot_author, text};
use ring::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};
use serde_json::Value;

static AUTHOR: LazyLock<(Ed25519KeyPair, String)> = LazyLock::new(griot_author);

fuzz_target!(|bytes: &[u8]| {
    let mut input = Input::new(bytes);
    let mode = input.byte();
    if mode % 2 == 0 {
        let manifest = text(input.until(0xff));
        let signature = text(input.rest());
        match Manifest::parse(&manifest, &signature) {
            Ok(parsed) => accepted(&parsed),
            Err(error) => refused_properly(&error),
        }
    } else {
        signed(mode >> 1, input.rest());
    }
});

fn refused_properly(error: &Error) {
    assert!(
        matches!(error, Error::InvalidArgument { reason, .. }
            if *reason == MANIFEST_VALIDATION_FAILED || *reason == SIGNATURE_FAILED),
        "{error:?}"
    );
}

/// The canonical bytes a signature covers, computed here without the module's help.
fn canonical_unsigned(manifest: &Value) -> Option<Vec<u8>> {
    let mut unsigned = manifest.clone();
    unsigned.as_object_mut()?.remove("signature");
    serde_jcs::to_vec(&unsigned).ok()
}

fn accepted(parsed: &Manifest) {
    let object = parsed.json.as_object().expect("a manifest is an object");
    let field = |name: &str| object.get(name).and_then(Value::as_str);
    assert_eq!(field("name"), Some(parsed.name.as_str()));
    assert_eq!(field("node_class"), Some(parsed.node_class.as_str()));
    assert_eq!(field("author"), Some(parsed.author.as_str()));
    assert_eq!(
        field("artifact_sha256"),
        Some(parsed.artifact.to_string().as_str())
    );
    let version = field("version").expect("a version");
    assert_eq!(
        semver::Version::parse(version).ok().as_ref(),
        Some(&parsed.version)
    );

    // The author's key, decoded here: did:key:z + base58btc(0xed 0x01 || 32 bytes).
    let did = parsed.author.as_str();
    let decoded = bs58::decode(did.strip_prefix("did:key:z").expect("did:key:z"))
        .into_vec()
        .expect("base58btc");
    let key = decoded
        .strip_prefix(&[0xed, 0x01])
        .expect("an Ed25519 multicodec");
    let public: [u8; 32] = key.try_into().expect("32 bytes");
    assert_eq!(
        DidKey::from_public_key(public).as_str(),
        did,
        "a non-canonical did:key"
    );
    let message = canonical_unsigned(&parsed.json).expect("an accepted manifest canonicalizes");
    assert!(
        UnparsedPublicKey::new(&ED25519, public)
            .verify(&message, &parsed.signature)
            .is_ok(),
        "accepted without its author's signature"
    );
}

fn signed(how: u8, bytes: &[u8]) {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    let (key, did) = &*AUTHOR;
    object.insert("author".to_owned(), Value::String(did.clone()));
    object.remove("signature");
    let mut manifest = Value::Object(object);
    let Some(message) = canonical_unsigned(&manifest) else {
        return;
    };
    let signature = key.sign(&message);
    let unpadded = b64url(signature.as_ref());
    let padded = base64::engine::general_purpose::STANDARD.encode(signature.as_ref());
    let in_request = match how % 3 {
        0 => unpadded,
        1 => {
            manifest["signature"] = Value::String(unpadded);
            String::new()
        }
        _ => {
            manifest["signature"] = Value::String(unpadded);
            padded
        }
    };
    // What the author's tool prints is what the server parses.
    match Manifest::parse(&manifest.to_string(), &in_request) {
        Ok(parsed) => {
            accepted(&parsed);
            assert_eq!(parsed.json, manifest);
        }
        Err(error) => {
            refused_properly(&error);
            assert_ne!(
                error.reason(),
                SIGNATURE_FAILED,
                "a manifest signed by its author was refused: {error}"
            );
        }
    }
}
