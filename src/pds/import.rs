//! Repository import (account migration): a CAR file replaces an account's repository, but only
//! after every block's CID is checked, the commit is shown to be the account's (its DID, signed by
//! its signing key), and the tree rebuilt from its keys gives the commit's root, so a corrupted,
//! forged or foreign file changes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};

use cid::Cid;
use ipld_core::ipld::Ipld;
use sqlx::PgPool;

use super::{
    car, data,
    keys::PublicKey,
    mst::{self, Node},
    queries,
    repo::Head,
    sequencer, syntax,
};
use crate::{
    error::{Error, Result},
    proto::quintet::pds::v1::{self as pb, subscribe_repos_response::Event},
};

/// What an import stored.
pub struct Imported {
    pub head: Head,
    pub records: usize,
    pub blocks: usize,
}

fn refuse(reason: &'static str, why: impl Into<String>) -> Error {
    Error::invalid_argument_because(reason, "chunk", why)
}

/// A repository file that passed every check of [`check`], ready to be stored.
pub struct Checked {
    /// The commit's CID, the file's root.
    pub root: Cid,
    pub rev: String,
    /// The commit block.
    pub commit: Vec<u8>,
    /// What is stored: the commit, the tree's nodes and its records, each once.
    pub blocks: Vec<(Cid, Vec<u8>)>,
    /// Every record as (collection, record key, CID), in key order.
    pub records: Vec<(String, String, String)>,
    /// The blobs each record (by path) references, for records that reference any.
    pub blob_links: Vec<(String, Vec<String>)>,
}

/// How far ahead of this server's clock an imported revision may be (clock skew between the
/// servers an account moves between).
const MAX_REV_AHEAD_MICROS: u64 = 5 * 60 * 1_000_000;

/// Checks `file` as `did`'s repository signed by `key`, then replaces the stored repository with
/// it in one transaction.
pub async fn import(pool: &PgPool, did: &str, key: &PublicKey, file: &[u8]) -> Result<Imported> {
    let Checked {
        root,
        rev,
        commit: commit_bytes,
        blocks: keep,
        records,
        blob_links,
    } = check(did, key, file)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
    check_rev_not_ahead(&rev, u64::try_from(now).unwrap_or(0))?;
    let mut tx = pool.begin().await?;
    queries::lock_repo(&mut tx, did)
        .await?
        .ok_or_else(|| Error::not_found("repo", did))?;
    queries::clear_repo(&mut tx, did).await?;
    for chunk in keep.chunks(5000) {
        queries::insert_blocks(&mut *tx, did, &rev, chunk).await?;
    }
    for chunk in records.chunks(5000) {
        queries::insert_records(&mut *tx, did, &rev, chunk).await?;
    }
    for (path, refs) in &blob_links {
        queries::set_record_blobs(&mut tx, did, path, refs).await?;
    }
    queries::update_repo(&mut *tx, did, &root.to_string(), &rev).await?;
    let mut slice = car::header(&[root]);
    slice.extend(car::block(&root, &commit_bytes));
    let event = Event::Sync(pb::SyncEvent {
        did: did.to_owned(),
        commit: root.to_string(),
        rev: rev.clone(),
        blocks: slice.into(),
    });
    sequencer::sequence(&mut tx, did, event).await?;
    tx.commit().await?;
    Ok(Imported {
        head: Head { cid: root, rev },
        records: records.len(),
        blocks: keep.len(),
    })
}

/// Refuses a revision from the future: every later commit of the repository must have a higher
/// one, so they would all carry that future time, and relays drop commits from the future.
fn check_rev_not_ahead(rev: &str, now_micros: u64) -> Result<()> {
    let micros = syntax::decode_tid(rev).map_or(0, |value| value >> 10);
    if micros > now_micros.saturating_add(MAX_REV_AHEAD_MICROS) {
        return Err(refuse(
            "INVALID_COMMIT",
            format!("the commit's rev {rev} is from the future (more than 5 minutes ahead)"),
        ));
    }
    Ok(())
}

/// Every check of [`import`], without the database: the file's blocks against their CIDs, the
/// commit against the account (its DID, signed by `key`), and the tree against the canonical one
/// for its keys.
pub fn check(did: &str, key: &PublicKey, file: &[u8]) -> Result<Checked> {
    let parsed = car::read(file).map_err(|e| refuse("INVALID_CAR", e.0))?;
    let [root] = parsed.roots[..] else {
        return Err(refuse(
            "INVALID_CAR",
            "a repository CAR has exactly one root, its commit",
        ));
    };
    let blocks: HashMap<Cid, Vec<u8>> = parsed.blocks.into_iter().collect();
    let commit_bytes = blocks
        .get(&root)
        .ok_or_else(|| refuse("INVALID_CAR", "the root commit's block is missing"))?;
    let Ok(Ipld::Map(mut commit)) = data::decode(commit_bytes) else {
        return Err(refuse("INVALID_COMMIT", "the commit is not a DAG-CBOR map"));
    };
    let Some(Ipld::Bytes(signature)) = commit.remove("sig") else {
        return Err(refuse("INVALID_COMMIT", "the commit has no signature"));
    };
    match commit.get("did") {
        Some(Ipld::String(owner)) if owner == did => {}
        Some(Ipld::String(owner)) => {
            return Err(refuse(
                "WRONG_DID",
                format!("the repository belongs to {owner}, not {did}"),
            ));
        }
        _ => return Err(refuse("INVALID_COMMIT", "the commit names no DID")),
    }
    if commit.get("version") != Some(&Ipld::Integer(3)) {
        return Err(refuse(
            "INVALID_COMMIT",
            "only version 3 commits are accepted",
        ));
    }
    let rev = match commit.get("rev") {
        Some(Ipld::String(rev)) if syntax::is_tid(rev) => rev.clone(),
        _ => return Err(refuse("INVALID_COMMIT", "the commit's rev is not a TID")),
    };
    let Some(Ipld::Link(data_root)) = commit.get("data").cloned() else {
        return Err(refuse("INVALID_COMMIT", "the commit has no data root"));
    };
    if !key.verify(&data::encode(&Ipld::Map(commit)), &signature) {
        return Err(refuse(
            "BAD_SIGNATURE",
            "the commit is not signed by the account's signing key",
        ));
    }

    // Walk the tree from the CAR's blocks alone: every node and record must be there.
    let mut leaves: BTreeMap<Vec<u8>, Cid> = BTreeMap::new();
    let mut keep: Vec<(Cid, Vec<u8>)> = vec![(root, commit_bytes.clone())];
    let mut pending = vec![data_root];
    // A tree reaches each node once; a file whose nodes point at one subtree many times would
    // otherwise be walked once per pointer, each time in full (quadratic in the file's size).
    let mut visited = HashSet::new();
    let missing = |cid: &Cid| refuse("INVALID_CAR", format!("block {cid} is missing"));
    while let Some(cid) = pending.pop() {
        if !visited.insert(cid) {
            return Err(refuse(
                "INVALID_TREE",
                format!("node {cid} is reached twice: not a tree"),
            ));
        }
        let bytes = blocks.get(&cid).ok_or_else(|| missing(&cid))?;
        let node = data::decode(bytes)
            .and_then(|value| Node::from_ipld(&value))
            .map_err(|e| refuse("INVALID_TREE", format!("node {cid}: {}", e.0)))?;
        keep.push((cid, bytes.clone()));
        pending.extend(node.left);
        for entry in node.entries {
            pending.extend(entry.right);
            let path = std::str::from_utf8(&entry.key)
                .ok()
                .and_then(|p| p.split_once('/'))
                .filter(|(c, k)| syntax::is_nsid(c) && syntax::is_record_key(k));
            if path.is_none() {
                return Err(refuse(
                    "INVALID_TREE",
                    format!(
                        "{:?} is not a collection/record-key path",
                        String::from_utf8_lossy(&entry.key)
                    ),
                ));
            }
            if leaves.insert(entry.key, entry.value).is_some() {
                return Err(refuse("INVALID_TREE", "a key appears twice"));
            }
        }
    }
    let mut records = Vec::with_capacity(leaves.len());
    let mut blob_links: Vec<(String, Vec<String>)> = Vec::new();
    let mut seen = HashSet::new();
    for (key, cid) in &leaves {
        let bytes = blocks.get(cid).ok_or_else(|| missing(cid))?;
        let value = data::decode(bytes)
            .map_err(|e| refuse("INVALID_RECORD", format!("record {cid}: {}", e.0)))?;
        let refs: Vec<String> = data::blob_refs(&value).iter().map(Cid::to_string).collect();
        if !refs.is_empty() {
            blob_links.push((String::from_utf8_lossy(key).into_owned(), refs));
        }
        if seen.insert(*cid) {
            keep.push((*cid, bytes.clone()));
        }
        let path = String::from_utf8(key.clone()).expect("checked above");
        let (collection, rkey) = path.split_once('/').expect("checked above");
        records.push((collection.to_owned(), rkey.to_owned(), cid.to_string()));
    }

    // The tree must be the canonical one for its keys.
    let sorted: Vec<(Vec<u8>, Cid)> = leaves.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let rebuilt = mst::root_of(&sorted);
    drop(sorted);
    if rebuilt != data_root {
        return Err(refuse(
            "INVALID_TREE",
            format!("the tree rebuilt from its keys has root {rebuilt}, not {data_root}"),
        ));
    }
    Ok(Checked {
        root,
        rev,
        commit: commit_bytes.clone(),
        blocks: keep,
        records,
        blob_links,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pds::{keys::SigningKey, mst::Entry, repo};

    const DID: &str = "did:plc:importtest";

    /// A signed repository file of `nodes` (the first is the tree's root) and `records`.
    fn file(key: &SigningKey, nodes: &[Node], records: &[(Cid, Vec<u8>)]) -> Vec<u8> {
        let blocks: Vec<(Cid, Vec<u8>)> = nodes.iter().map(|n| data::block(&n.to_ipld())).collect();
        let (commit, commit_bytes) =
            repo::sign_commit(DID, blocks[0].0, &syntax::encode_tid(1 << 40), key);
        let mut out = car::header(&[commit]);
        out.extend(car::block(&commit, &commit_bytes));
        for (cid, bytes) in blocks.iter().chain(records) {
            out.extend(car::block(cid, bytes));
        }
        out
    }

    #[test]
    fn a_canonical_repository_is_accepted_with_its_records() {
        let key = SigningKey::generate();
        let record = data::block(&Ipld::Map(BTreeMap::from([(
            "$type".to_owned(),
            Ipld::String("com.example.post".into()),
        )])));
        let leaves = vec![(b"com.example.post/a".to_vec(), record.0)];
        let root = Node {
            left: None,
            entries: vec![Entry {
                key: leaves[0].0.clone(),
                value: record.0,
                right: None,
            }],
        };
        assert_eq!(data::block(&root.to_ipld()).0, mst::root_of(&leaves));
        let checked = check(
            DID,
            &key.public_key(),
            &file(&key, &[root], std::slice::from_ref(&record)),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            checked.records,
            [("com.example.post".into(), "a".into(), record.0.to_string())]
        );
    }

    #[test]
    fn a_revision_from_the_future_is_refused() {
        let now = 1_800_000_000_000_000u64;
        let at = |micros: u64| syntax::encode_tid(micros << 10);
        assert!(check_rev_not_ahead(&at(now), now).is_ok());
        assert!(check_rev_not_ahead(&at(now + MAX_REV_AHEAD_MICROS), now).is_ok());
        let error = check_rev_not_ahead(&at(now + MAX_REV_AHEAD_MICROS + 1), now).unwrap_err();
        assert_eq!(error.reason(), "INVALID_COMMIT");
        assert!(check_rev_not_ahead("bzzzzzzzzzzzz", now).is_err());
    }

    #[test]
    fn a_subtree_reached_twice_is_refused_at_once() {
        // Many entries pointing at one chain of empty nodes: walked once per pointer, the chain
        // cost entries x chain length node decodes before any check could fail.
        let key = SigningKey::generate();
        let record = data::block(&Ipld::Null);
        let mut chain = vec![Node::default()];
        for _ in 0..200 {
            let below = data::block(&chain.last().unwrap().to_ipld()).0;
            chain.push(Node {
                left: Some(below),
                entries: Vec::new(),
            });
        }
        let shared = data::block(&chain.last().unwrap().to_ipld()).0;
        let root = Node {
            left: None,
            entries: (0..200)
                .map(|i| Entry {
                    key: format!("com.example.post/{i:04}").into_bytes(),
                    value: record.0,
                    right: Some(shared),
                })
                .collect(),
        };
        let mut nodes = vec![root];
        nodes.extend(chain);
        let error = match check(DID, &key.public_key(), &file(&key, &nodes, &[record])) {
            Err(error) => error,
            Ok(_) => panic!("a DAG of nodes was accepted as a tree"),
        };
        assert_eq!(error.reason(), "INVALID_TREE");
        assert!(error.to_string().contains("reached twice"), "{error}");
    }
}
