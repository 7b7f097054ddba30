//! The AT Protocol interop vectors (`../shared/vectors/atproto-interop-tests/`, or the CC0 copy in
//! `tests/vectors/`): identifier syntaxes, MST key heights, prefixes and commit roots and proofs,
//! the data model's JSON -> DAG-CBOR -> CID fixtures, signatures and did:keys. Missing vectors
//! fail loudly.

use std::{collections::HashMap, path::PathBuf};

use base64::Engine;
use quintet::pds::{
    data,
    keys::{Curve, PublicKey, SigningKey},
    mst::{self, Mst, Node, NodeSource},
    syntax,
};
use serde_json::Value;

fn vectors() -> PathBuf {
    // The workspace's copy is the reference; the CC0 copy committed under tests/vectors keeps the
    // tests running where the workspace is not beside the checkout (a fresh CI clone).
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = manifest.join("../shared/vectors/atproto-interop-tests");
    let committed = manifest.join("tests/vectors/atproto-interop-tests");
    for dir in [shared, committed] {
        if dir.is_dir() {
            return dir;
        }
    }
    panic!(
        "the AT Protocol interop vectors are missing: neither ../shared/vectors nor tests/vectors has them"
    );
}

fn json(path: &str) -> Value {
    serde_json::from_slice(&std::fs::read(vectors().join(path)).unwrap()).unwrap()
}

/// The lines of a syntax file that are cases (not comments, not blank), exactly as written.
fn cases(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(vectors().join("syntax").join(name)).unwrap();
    text.split('\n')
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

fn b64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(text.trim_end_matches('='))
        .unwrap()
}

#[test]
fn identifier_syntaxes_match_the_vectors() {
    type Check = fn(&str) -> bool;
    let checks: [(&str, Check); 6] = [
        ("handle", syntax::is_handle),
        ("did", syntax::is_did),
        ("nsid", syntax::is_nsid),
        ("recordkey", syntax::is_record_key),
        ("tid", syntax::is_tid),
        ("aturi", syntax::is_at_uri),
    ];
    for (name, check) in checks {
        let valid = cases(&format!("{name}_syntax_valid.txt"));
        let invalid = cases(&format!("{name}_syntax_invalid.txt"));
        assert!(
            valid.len() >= 2 && invalid.len() >= 2,
            "{name}: too few cases"
        );
        for case in valid {
            assert!(check(&case), "{name}: {case:?} should be valid");
        }
        for case in invalid {
            assert!(!check(&case), "{name}: {case:?} should be invalid");
        }
    }
}

#[test]
fn mst_key_heights_and_common_prefixes_match_the_vectors() {
    for case in json("mst/key_heights.json").as_array().unwrap() {
        let key = case["key"].as_str().unwrap();
        assert_eq!(
            u64::from(mst::height(key.as_bytes())),
            case["height"].as_u64().unwrap(),
            "{key:?}"
        );
    }
    for case in json("mst/common_prefix.json").as_array().unwrap() {
        let (left, right) = (
            case["left"].as_str().unwrap(),
            case["right"].as_str().unwrap(),
        );
        assert_eq!(
            mst::common_prefix_len(left.as_bytes(), right.as_bytes()) as u64,
            case["len"].as_u64().unwrap(),
            "{left:?} {right:?}"
        );
    }
}

#[test]
fn data_model_fixtures_encode_to_their_bytes_and_cids() {
    let fixtures = json("data-model/data-model-fixtures.json");
    for case in fixtures.as_array().unwrap() {
        let value = data::record_from_json(&case["json"]).unwrap();
        let (cid, bytes) = data::block(&value);
        assert_eq!(
            bytes,
            b64(case["cbor_base64"].as_str().unwrap()),
            "{}",
            case["json"]
        );
        assert_eq!(cid.to_string(), case["cid"].as_str().unwrap());
        // And back: the bytes decode to the same JSON.
        assert_eq!(data::to_json(&data::decode(&bytes).unwrap()), case["json"]);
    }
    for case in json("data-model/data-model-valid.json").as_array().unwrap() {
        assert!(
            data::record_from_json(&case["json"]).is_ok(),
            "{}",
            case["note"]
        );
    }
    for case in json("data-model/data-model-invalid.json")
        .as_array()
        .unwrap()
    {
        assert!(
            data::record_from_json(&case["json"]).is_err(),
            "{}",
            case["note"]
        );
    }
}

#[test]
fn signature_fixtures_verify_as_expected_and_high_s_is_refused() {
    let fixtures = json("crypto/signature-fixtures.json");
    for case in fixtures.as_array().unwrap() {
        let key = PublicKey::from_did_key(case["publicKeyDid"].as_str().unwrap()).unwrap();
        let expected_curve = match case["algorithm"].as_str().unwrap() {
            "ES256K" => Curve::Secp256k1,
            _ => Curve::P256,
        };
        assert_eq!(key.curve, expected_curve);
        let message = b64(case["messageBase64"].as_str().unwrap());
        let signature = b64(case["signatureBase64"].as_str().unwrap());
        assert_eq!(
            key.verify(&message, &signature),
            case["validSignature"].as_bool().unwrap(),
            "{}",
            case["comment"]
        );
    }
}

#[test]
fn did_key_fixtures_match_their_private_keys() {
    for case in json("crypto/w3c_didkey_K256.json").as_array().unwrap() {
        let private = hex(case["privateKeyBytesHex"].as_str().unwrap());
        let key = SigningKey::from_bytes(&private).unwrap();
        assert_eq!(
            key.public_key().did_key(),
            case["publicDidKey"].as_str().unwrap()
        );
    }
    for case in json("crypto/w3c_didkey_P256.json").as_array().unwrap() {
        let private = bs58::decode(case["privateKeyBytesBase58"].as_str().unwrap())
            .into_vec()
            .unwrap();
        let secret = p256::SecretKey::from_slice(&private).unwrap();
        let public = PublicKey {
            curve: Curve::P256,
            compressed: p256::elliptic_curve::sec1::ToSec1Point::to_sec1_point(
                &secret.public_key(),
                true,
            )
            .as_bytes()
            .to_vec(),
        };
        let did = case["publicDidKey"].as_str().unwrap();
        assert_eq!(public.did_key(), did);
        assert_eq!(PublicKey::from_did_key(did).unwrap(), public);
    }
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

struct NoBlocks;

impl NodeSource for NoBlocks {
    fn node(
        &self,
        cid: cid::Cid,
    ) -> futures::future::BoxFuture<'_, Result<Node, quintet::error::Error>> {
        Box::pin(async move { panic!("block {cid} was never written") })
    }
}

#[tokio::test]
async fn commit_fixtures_give_the_roots_before_and_after() {
    let fixtures = json("firehose/commit-proof-fixtures.json");
    for case in fixtures.as_array().unwrap() {
        let name = case["comment"].as_str().unwrap();
        let leaf = data::parse_cid(case["leafValue"].as_str().unwrap()).unwrap();
        let mut tree = Mst::new(&NoBlocks);
        let mut root = tree.empty_root();
        for key in case["keys"].as_array().unwrap() {
            root = tree
                .put(root, key.as_str().unwrap().as_bytes(), leaf)
                .await
                .unwrap();
        }
        assert_eq!(
            root.to_string(),
            case["rootBeforeCommit"].as_str().unwrap(),
            "{name}"
        );
        for key in case["adds"].as_array().unwrap() {
            root = tree
                .put(root, key.as_str().unwrap().as_bytes(), leaf)
                .await
                .unwrap();
        }
        for key in case["dels"].as_array().unwrap() {
            root = tree
                .delete(root, key.as_str().unwrap().as_bytes())
                .await
                .unwrap();
        }
        assert_eq!(
            root.to_string(),
            case["rootAfterCommit"].as_str().unwrap(),
            "{name}"
        );

        // The covering proofs of the changed keys hold every block the fixture lists, and with
        // nothing but them the commit inverts, in every order, to the root before.
        let changed: Vec<(String, bool)> = case["adds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| (k.as_str().unwrap().to_owned(), true))
            .chain(
                case["dels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| (k.as_str().unwrap().to_owned(), false)),
            )
            .collect();
        let mut proof = HashMap::new();
        for (key, _) in &changed {
            for cid in tree.covering_proof(root, key.as_bytes()).await.unwrap() {
                let bytes = tree.node_block(cid).await.unwrap();
                proof.insert(
                    cid,
                    Node::from_ipld(&data::decode(&bytes).unwrap()).unwrap(),
                );
            }
        }
        for expected in case["blocksInProof"].as_array().unwrap() {
            let cid = data::parse_cid(expected.as_str().unwrap()).unwrap();
            assert!(
                proof.contains_key(&cid),
                "{name}: {cid} missing from the proof"
            );
        }
        let source = ProofBlocks(proof);
        for order in permutations(&changed) {
            let mut inverter = Mst::new(&source);
            let mut at = root;
            for (key, added) in order {
                at = if added {
                    inverter.delete(at, key.as_bytes()).await.unwrap()
                } else {
                    inverter.put(at, key.as_bytes(), leaf).await.unwrap()
                };
            }
            assert_eq!(
                at.to_string(),
                case["rootBeforeCommit"].as_str().unwrap(),
                "{name}: inverted"
            );
        }
    }
}

/// Nodes from a proof only.
struct ProofBlocks(HashMap<cid::Cid, Node>);

impl NodeSource for ProofBlocks {
    fn node(
        &self,
        cid: cid::Cid,
    ) -> futures::future::BoxFuture<'_, Result<Node, quintet::error::Error>> {
        Box::pin(async move {
            self.0.get(&cid).cloned().ok_or_else(|| {
                quintet::error::Error::DataLoss(format!("{cid} is not in the proof"))
            })
        })
    }
}

fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, first.clone());
            out.push(tail);
        }
    }
    out
}
