//! Repository writes and exports. A write takes the repository's row lock (so writes to one
//! repository are serialised across replicas, never lost), applies its operations to the MST,
//! signs a new commit (version 3: `did`, `data`, `rev`, `prev`, `sig` = ECDSA secp256k1, low-S,
//! over the DAG-CBOR of the unsigned commit), and stores the new blocks, the records listing and
//! the new head in the same transaction.

use std::collections::BTreeMap;

use cid::Cid;
use futures::future::BoxFuture;
use ipld_core::ipld::Ipld;
use sqlx::{PgConnection, PgPool};

use super::{
    car, data,
    keys::SigningKey,
    mst::{Mst, Node, NodeSource},
    queries, sequencer, syntax,
};
use crate::{
    error::{Error, Result},
    proto::quintet::pds::v1::{self as pb, subscribe_repos_response::Event},
};

/// Largest record, as DAG-CBOR.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Reads a repository's stored MST nodes through the writing transaction's connection (so a
/// write needs one connection however many writers wait for the repository's lock).
pub struct StoredNodes<'a> {
    pub connection: tokio::sync::Mutex<&'a mut PgConnection>,
    pub did: &'a str,
}

impl NodeSource for StoredNodes<'_> {
    fn node(&self, cid: Cid) -> BoxFuture<'_, Result<Node>> {
        Box::pin(async move {
            let mut connection = self.connection.lock().await;
            let bytes = queries::block(&mut **connection, self.did, &cid.to_string())
                .await?
                .ok_or_else(|| Error::DataLoss(format!("block {cid} is missing")))?;
            Node::from_ipld(&data::decode(&bytes).map_err(|e| Error::DataLoss(e.0))?)
                .map_err(|e| Error::DataLoss(e.0))
        })
    }
}

/// One change of a write.
#[derive(Debug, Clone)]
pub enum Op {
    /// Fails if the key exists.
    Create {
        collection: String,
        rkey: String,
        record: Ipld,
    },
    /// Creates or replaces; `swap` is the CID the record must have now (`Some(None)`: must not
    /// exist).
    Put {
        collection: String,
        rkey: String,
        record: Ipld,
        swap: Option<Option<Cid>>,
    },
    Delete {
        collection: String,
        rkey: String,
        swap: Option<Option<Cid>>,
    },
}

/// What an operation did: the record's path and CID (`None` for deletes), and the CID it had.
#[derive(Debug, Clone)]
pub struct Applied {
    pub collection: String,
    pub rkey: String,
    pub cid: Option<Cid>,
    pub prev: Option<Cid>,
}

/// A new head.
#[derive(Debug, Clone)]
pub struct Head {
    pub cid: Cid,
    pub rev: String,
}

/// Checks a record against its collection: an object whose `$type` is the collection, at most
/// [`MAX_RECORD_BYTES`] encoded.
pub fn check_record(field: &str, collection: &str, record: &Ipld) -> Result<()> {
    let Ipld::Map(map) = record else {
        return Err(Error::invalid_argument(field, "a record is an object"));
    };
    match map.get("$type") {
        Some(Ipld::String(t)) if t == collection => {}
        _ => {
            return Err(Error::invalid_argument(
                format!("{field}.$type"),
                format!("must be the collection, {collection:?}"),
            ));
        }
    }
    if data::encode(record).len() > MAX_RECORD_BYTES {
        return Err(Error::invalid_argument(
            field,
            format!("larger than {MAX_RECORD_BYTES} bytes as DAG-CBOR"),
        ));
    }
    Ok(())
}

/// Parses a collection and record key.
pub fn check_path(collection: &str, rkey: &str) -> Result<()> {
    if !syntax::is_nsid(collection) {
        return Err(Error::invalid_argument("collection", "not an NSID"));
    }
    if !syntax::is_record_key(rkey) {
        return Err(Error::invalid_argument("rkey", "not a record key"));
    }
    Ok(())
}

/// A signed commit block for `data` at `rev`.
pub fn sign_commit(did: &str, data_root: Cid, rev: &str, key: &SigningKey) -> (Cid, Vec<u8>) {
    let mut commit = BTreeMap::from([
        ("did".to_owned(), Ipld::String(did.to_owned())),
        ("version".to_owned(), Ipld::Integer(3)),
        ("data".to_owned(), Ipld::Link(data_root)),
        ("rev".to_owned(), Ipld::String(rev.to_owned())),
        ("prev".to_owned(), Ipld::Null),
    ]);
    let signature = key.sign(&data::encode(&Ipld::Map(commit.clone())));
    commit.insert("sig".to_owned(), Ipld::Bytes(signature.to_vec()));
    data::block(&Ipld::Map(commit))
}

/// The `data` root of a stored commit.
pub async fn commit_data<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    did: &str,
    commit: &Cid,
) -> Result<Cid> {
    let bytes = queries::block(executor, did, &commit.to_string())
        .await?
        .ok_or_else(|| Error::DataLoss(format!("commit {commit} is missing")))?;
    data_of_commit(&bytes)
}

/// Creates a repository's first commit (an empty tree) inside the account's transaction.
pub async fn create_empty(tx: &mut PgConnection, did: &str, key: &SigningKey) -> Result<Head> {
    struct NoNodes;
    impl NodeSource for NoNodes {
        fn node(&self, cid: Cid) -> BoxFuture<'_, Result<Node>> {
            Box::pin(async move { Err(Error::DataLoss(format!("block {cid} is missing"))) })
        }
    }
    let mut mst = Mst::new(&NoNodes);
    let root = mst.empty_root();
    let rev = syntax::next_tid(None);
    let (cid, bytes) = sign_commit(did, root, &rev, key);
    let mut blocks = mst.new_blocks(root);
    blocks.push((cid, bytes));
    queries::insert_blocks(&mut *tx, did, &rev, &blocks).await?;
    queries::insert_repo(&mut *tx, did, &cid.to_string(), &rev).await?;
    let event = pb::CommitEvent {
        repo: did.to_owned(),
        commit: cid.to_string(),
        rev: rev.clone(),
        since: String::new(),
        ops: Vec::new(),
        blocks: car_slice(&cid, &blocks).into(),
        prev_data: String::new(),
    };
    sequencer::sequence(&mut *tx, did, Event::Commit(event)).await?;
    Ok(Head { cid, rev })
}

/// A CAR file rooted at `root` holding `blocks` (each once).
fn car_slice(root: &Cid, blocks: &[(Cid, Vec<u8>)]) -> Vec<u8> {
    let mut seen = std::collections::HashSet::new();
    let mut out = car::header(&[*root]);
    for (cid, bytes) in blocks {
        if seen.insert(*cid) {
            out.extend(car::block(cid, bytes));
        }
    }
    out
}

/// Applies `ops` in one commit. `swap_commit`: the head the caller expects.
pub async fn apply(
    pool: &PgPool,
    did: &str,
    key: &SigningKey,
    ops: Vec<Op>,
    swap_commit: Option<Cid>,
) -> Result<(Head, Vec<Applied>)> {
    let mut tx = pool.begin().await?;
    let (head, old_rev) = queries::lock_repo(&mut tx, did)
        .await?
        .ok_or_else(|| Error::not_found("repo", did))?;
    let head = data::parse_cid(&head).map_err(|e| Error::DataLoss(e.0))?;
    if let Some(expected) = swap_commit
        && expected != head
    {
        return Err(Error::failed_precondition(
            "INVALID_SWAP",
            did,
            format!("the repository's head is {head}, not {expected}"),
        ));
    }
    let mut root = commit_data(&mut *tx, did, &head).await?;
    let prev_data = root;
    let source = StoredNodes {
        connection: tokio::sync::Mutex::new(&mut *tx),
        did,
    };
    let mut mst = Mst::new(&source);
    let mut record_blocks = Vec::new();
    let mut blob_links: Vec<(String, Vec<String>)> = Vec::new();
    let mut applied = Vec::with_capacity(ops.len());
    for op in ops {
        let (collection, rkey) = match &op {
            Op::Create {
                collection, rkey, ..
            }
            | Op::Put {
                collection, rkey, ..
            }
            | Op::Delete {
                collection, rkey, ..
            } => (collection.clone(), rkey.clone()),
        };
        let path = format!("{collection}/{rkey}");
        let existing = mst.get(root, path.as_bytes()).await?;
        let swap = match &op {
            Op::Put { swap, .. } | Op::Delete { swap, .. } => *swap,
            Op::Create { .. } => None,
        };
        if let Some(expected) = swap
            && expected != existing
        {
            return Err(Error::failed_precondition(
                "INVALID_SWAP",
                format!("at://{did}/{path}"),
                format!(
                    "the record is {}, not {}",
                    existing.map_or("absent".into(), |c| c.to_string()),
                    expected.map_or("absent".into(), |c| c.to_string())
                ),
            ));
        }
        if matches!(op, Op::Create { .. }) && existing.is_some() {
            return Err(Error::already_exists(
                "record",
                format!("at://{did}/{path}"),
            ));
        }
        let cid = match op {
            Op::Create { record, .. } | Op::Put { record, .. } => {
                // Referenced blobs must have been uploaded; they are locked against collection
                // until this commit is in.
                let refs: Vec<String> = data::blob_refs(&record)
                    .iter()
                    .map(Cid::to_string)
                    .collect();
                if !refs.is_empty() {
                    let found = {
                        let mut connection = source.connection.lock().await;
                        queries::lock_blobs(&mut connection, did, &refs).await?
                    };
                    if let Some(missing) = refs.iter().find(|r| !found.contains(r)) {
                        return Err(Error::invalid_argument(
                            "record",
                            format!("blob {missing} was not uploaded to this repository"),
                        ));
                    }
                }
                blob_links.push((path.clone(), refs));
                let (cid, bytes) = data::block(&record);
                record_blocks.push((cid, bytes));
                Some(cid)
            }
            Op::Delete { .. } => {
                blob_links.push((path.clone(), Vec::new()));
                None
            }
        };
        applied.push(Applied {
            collection,
            rkey,
            cid,
            prev: existing,
        });
        root = match cid {
            Some(cid) => mst.put(root, path.as_bytes(), cid).await?,
            None => {
                if existing.is_none() {
                    return Err(Error::not_found("record", format!("at://{did}/{path}")));
                }
                mst.delete(root, path.as_bytes()).await?
            }
        };
    }
    let rev = syntax::next_tid(Some(&old_rev));
    let (commit, commit_bytes) = sign_commit(did, root, &rev, key);
    // What a firehose consumer needs besides the new blocks: the nodes covering every changed
    // key in the new tree (to verify the change and invert it).
    let mut proof = Vec::new();
    for write in &applied {
        let path = format!("{}/{}", write.collection, write.rkey);
        for cid in mst.covering_proof(root, path.as_bytes()).await? {
            proof.push((cid, mst.node_block(cid).await?));
        }
    }
    let mut blocks = mst.new_blocks(root);
    // The tree's reads borrowed the transaction; the writes below need it back.
    drop(mst);
    blocks.extend(record_blocks);
    blocks.push((commit, commit_bytes));
    queries::insert_blocks(&mut *tx, did, &rev, &blocks).await?;
    let mut slice = blocks.clone();
    slice.extend(proof);
    let ops = applied
        .iter()
        .map(|write| pb::RepoOp {
            action: match (write.cid, write.prev) {
                (Some(_), None) => "create",
                (Some(_), Some(_)) => "update",
                (None, _) => "delete",
            }
            .to_owned(),
            path: format!("{}/{}", write.collection, write.rkey),
            cid: write.cid.map(|c| c.to_string()).unwrap_or_default(),
            prev: write.prev.map(|c| c.to_string()).unwrap_or_default(),
        })
        .collect();
    for write in &applied {
        match write.cid {
            Some(cid) => {
                queries::upsert_record(
                    &mut *tx,
                    did,
                    &write.collection,
                    &write.rkey,
                    &cid.to_string(),
                    &rev,
                )
                .await?
            }
            None => queries::delete_record(&mut *tx, did, &write.collection, &write.rkey).await?,
        }
    }
    for (path, refs) in &blob_links {
        queries::set_record_blobs(&mut tx, did, path, refs).await?;
    }
    queries::update_repo(&mut *tx, did, &commit.to_string(), &rev).await?;
    let event = pb::CommitEvent {
        repo: did.to_owned(),
        commit: commit.to_string(),
        rev: rev.clone(),
        since: old_rev,
        ops,
        blocks: car_slice(&commit, &slice).into(),
        prev_data: prev_data.to_string(),
    };
    sequencer::sequence(&mut tx, did, Event::Commit(event)).await?;
    tx.commit().await?;
    Ok((Head { cid: commit, rev }, applied))
}

/// How many blocks an export reads per query.
const EXPORT_BATCH: usize = 512;

/// Streams a repository as a CAR file: the header, the commit, then the tree and its records
/// depth first, read from the database a batch at a time. `emit` gets each piece; it returns
/// false when the reader has gone.
pub async fn export<F, Fut>(pool: &PgPool, did: &str, head: Cid, mut emit: F) -> Result<()>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if !emit(car::header(&[head])).await {
        return Ok(());
    }
    let mut pending = vec![head];
    let mut first = true;
    // Records may repeat under several keys; each block goes out once.
    let mut records_sent = std::collections::HashSet::new();
    while !pending.is_empty() {
        let take = pending.len().min(EXPORT_BATCH);
        let batch: Vec<Cid> = pending.split_off(pending.len() - take);
        let texts: Vec<String> = batch.iter().map(Cid::to_string).collect();
        let found = queries::blocks(pool, did, &texts).await?;
        let mut out = Vec::new();
        for cid in &batch {
            let bytes = found
                .get(&cid.to_string())
                .ok_or_else(|| Error::DataLoss(format!("block {cid} is missing")))?;
            out.extend(car::block(cid, bytes));
            if first {
                first = false;
                pending.push(data_of_commit(bytes)?);
                continue;
            }
            let value = data::decode(bytes).map_err(|e| Error::DataLoss(e.0))?;
            if !is_node(&value) {
                continue;
            }
            let node = Node::from_ipld(&value).map_err(|e| Error::DataLoss(e.0))?;
            pending.extend(node.left);
            for entry in &node.entries {
                pending.extend(entry.right);
                if records_sent.insert(entry.value) {
                    pending.push(entry.value);
                }
            }
        }
        if !emit(out).await {
            return Ok(());
        }
    }
    Ok(())
}

/// The `data` root (the MST) a commit block points to.
pub fn data_of_commit(bytes: &[u8]) -> Result<Cid> {
    match data::decode(bytes).map_err(|e| Error::DataLoss(e.0))? {
        Ipld::Map(map) => match map.get("data") {
            Some(Ipld::Link(cid)) => Ok(*cid),
            _ => Err(Error::DataLoss("the commit has no data".into())),
        },
        _ => Err(Error::DataLoss("the commit is not a map".into())),
    }
}

/// Whether a value is shaped as an MST node (exactly the keys `e` and `l`), not a record that
/// happens to decode as one.
fn is_node(value: &Ipld) -> bool {
    matches!(value, Ipld::Map(map) if map.len() == 2 && map.contains_key("e") && map.contains_key("l"))
}
