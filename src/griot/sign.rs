//! Author tooling behind `quintet griot-keygen` and `quintet griot-sign`: an Ed25519 key in a
//! PKCS#8 file (the format `openssl pkey` reads), and manifests signed the way Griot verifies
//! them, so that users need nothing else to publish.

use std::path::Path;

use anyhow::{Context, bail};
use ring::{
    rand::SystemRandom,
    signature::{Ed25519KeyPair, KeyPair},
};
use serde_json::Value;

use super::domain::{DidKey, encode_signature, signing_bytes};

/// Creates a key file (mode 0600; refuses to overwrite) and returns the author's DID.
pub fn keygen(path: &Path) -> anyhow::Result<String> {
    let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("cannot generate a key"))?;
    {
        use std::{io::Write, os::unix::fs::OpenOptionsExt};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(document.as_ref())?;
        file.sync_all()?;
    }
    Ok(did_of(&load(path)?))
}

fn load(path: &Path) -> anyhow::Result<Ed25519KeyPair> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a PKCS#8 Ed25519 key: {e}", path.display()))
}

fn did_of(key: &Ed25519KeyPair) -> String {
    let public: [u8; 32] = key
        .public_key()
        .as_ref()
        .try_into()
        .expect("Ed25519 public keys have 32 bytes");
    DidKey::from_public_key(public).as_str().to_owned()
}

/// Signs a manifest: sets `author` to the key's DID when missing (refuses another author) and
/// `artifact_sha256` to the artifact's hash when given, and returns the manifest with its
/// `signature` field.
pub fn sign_manifest(
    key_path: &Path,
    manifest: &str,
    artifact: Option<&Path>,
) -> anyhow::Result<Value> {
    let key = load(key_path)?;
    let did = did_of(&key);
    let mut manifest: Value = serde_json::from_str(manifest).context("the manifest is not JSON")?;
    let Value::Object(object) = &mut manifest else {
        bail!("the manifest must be a JSON object");
    };
    match object.get("author") {
        None => {
            object.insert("author".into(), Value::String(did));
        }
        Some(Value::String(author)) if *author == did => {}
        Some(other) => bail!("the manifest's author is {other}, but this key is {did}"),
    }
    if let Some(path) = artifact {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        object.insert(
            "artifact_sha256".into(),
            Value::String(crate::blobs::Sha256::of(&bytes).to_hex()),
        );
    }
    let signature = key.sign(&signing_bytes(&manifest).map_err(|e| anyhow::anyhow!("{e}"))?);
    manifest["signature"] = Value::String(encode_signature(signature.as_ref()));
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::griot::domain::Manifest;

    #[test]
    fn signed_manifests_pass_verification() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("author.key");
        let did = keygen(&key).unwrap();
        assert!(keygen(&key).is_err(), "never overwrites a key");
        let artifact = dir.path().join("a.tgz");
        std::fs::write(&artifact, b"bytes").unwrap();
        let signed = sign_manifest(
            &key,
            r#"{"name":"n","node_class":"c","version":"1.0.0","extra":{"b":2,"a":1}}"#,
            Some(&artifact),
        )
        .unwrap();
        assert_eq!(
            signed["artifact_sha256"],
            crate::blobs::Sha256::of(b"bytes").to_hex()
        );
        assert_eq!(signed["author"], Value::String(did));
        Manifest::parse(&signed.to_string(), "").unwrap();
        let other = dir.path().join("other.key");
        keygen(&other).unwrap();
        assert!(sign_manifest(&other, &signed.to_string(), None).is_err());
    }
}
