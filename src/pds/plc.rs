//! did:plc identities (web.plc.directory/spec/v0.1/did-plc): operations naming an account's
//! rotation key, signing key, handle and PDS, signed by a rotation key over their DAG-CBOR; the
//! DID is `did:plc:` and the first 24 characters of the base32 SHA-256 of the signed genesis
//! operation. Later operations (a handle change) point to the previous one by CID.

use std::collections::BTreeMap;

use base64::Engine;
use cid::Cid;
use ipld_core::ipld::Ipld;
use serde_json::{Value, json};

use super::{data, keys::SigningKey};

/// What an operation declares.
pub struct Identity<'a> {
    pub handle: &'a str,
    pub signing_key: &'a str,
    pub rotation_key: &'a str,
    pub endpoint: &'a str,
}

/// A signed operation: its DAG-CBOR bytes, CID, and JSON form.
pub struct Operation {
    pub bytes: Vec<u8>,
    pub cid: Cid,
    pub json: Value,
}

fn text(s: &str) -> Ipld {
    Ipld::String(s.to_owned())
}

fn unsigned(identity: &Identity<'_>, prev: Option<&Cid>) -> BTreeMap<String, Ipld> {
    BTreeMap::from([
        ("type".into(), text("plc_operation")),
        (
            "rotationKeys".into(),
            Ipld::List(vec![text(identity.rotation_key)]),
        ),
        (
            "verificationMethods".into(),
            Ipld::Map(BTreeMap::from([(
                "atproto".into(),
                text(identity.signing_key),
            )])),
        ),
        (
            "alsoKnownAs".into(),
            Ipld::List(vec![text(&format!("at://{}", identity.handle))]),
        ),
        (
            "services".into(),
            Ipld::Map(BTreeMap::from([(
                "atproto_pds".into(),
                Ipld::Map(BTreeMap::from([
                    ("type".into(), text("AtprotoPersonalDataServer")),
                    ("endpoint".into(), text(identity.endpoint)),
                ])),
            )])),
        ),
        (
            "prev".into(),
            prev.map_or(Ipld::Null, |c| text(&c.to_string())),
        ),
    ])
}

/// Signs an operation with the rotation key.
pub fn sign(identity: &Identity<'_>, prev: Option<&Cid>, rotation: &SigningKey) -> Operation {
    let mut operation = unsigned(identity, prev);
    let signature = rotation.sign(&data::encode(&Ipld::Map(operation.clone())));
    operation.insert(
        "sig".into(),
        text(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature)),
    );
    let value = Ipld::Map(operation);
    let (cid, bytes) = data::block(&value);
    Operation {
        json: data::to_json(&value),
        bytes,
        cid,
    }
}

/// The DID a genesis operation creates.
pub fn did_for(genesis: &Operation) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, &genesis.bytes);
    format!("did:plc:{}", &base32(digest.as_ref())[..24])
}

/// RFC 4648 base32, lowercase, without padding.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0);
    for byte in bytes {
        buffer = (buffer << 8) | u32::from(*byte);
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

/// The DID document an operation describes.
pub fn did_document(did: &str, operation: &Value) -> Value {
    let signing = operation["verificationMethods"]["atproto"]
        .as_str()
        .unwrap_or_default();
    json!({
        "@context": [
            "https://www.w3.org/ns/did/v1",
            "https://w3id.org/security/multikey/v1",
            "https://w3id.org/security/suites/secp256k1-2019/v1"
        ],
        "id": did,
        "alsoKnownAs": operation["alsoKnownAs"],
        "verificationMethod": [{
            "id": format!("{did}#atproto"),
            "type": "Multikey",
            "controller": did,
            "publicKeyMultibase": signing.strip_prefix("did:key:").unwrap_or(signing),
        }],
        "service": [{
            "id": "#atproto_pds",
            "type": "AtprotoPersonalDataServer",
            "serviceEndpoint": operation["services"]["atproto_pds"]["endpoint"],
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pds::{keys::PublicKey, syntax};

    #[test]
    fn a_genesis_operation_is_signed_by_the_rotation_key_and_names_its_did() {
        let (signing, rotation) = (SigningKey::generate(), SigningKey::generate());
        let identity = Identity {
            handle: "alice.test",
            signing_key: &signing.public_key().did_key(),
            rotation_key: &rotation.public_key().did_key(),
            endpoint: "https://pds.test",
        };
        let genesis = sign(&identity, None, &rotation);
        let did = did_for(&genesis);
        assert!(syntax::is_did(&did) && did.len() == 32, "{did}");
        // The signature covers the operation without `sig`.
        let mut unsigned = genesis.json.clone();
        let sig = unsigned.as_object_mut().unwrap().remove("sig").unwrap();
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig.as_str().unwrap())
            .unwrap();
        let bytes = data::encode(&data::record_from_json(&unsigned).unwrap());
        let rotation_public = PublicKey::from_did_key(identity.rotation_key).unwrap();
        assert!(rotation_public.verify(&bytes, &sig));
        let document = did_document(&did, &genesis.json);
        assert_eq!(document["alsoKnownAs"][0], "at://alice.test");
        assert_eq!(base32(b"foobar"), "mzxw6ytboi");
    }
}
