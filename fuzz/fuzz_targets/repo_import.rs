//! Repository import (src/pds/import.rs, its checks without the database), and the MST writer
//! (src/pds/mst.rs) whose files it must accept.
//!
//! The first byte picks the mode:
//! - 0: the rest is a CAR file, checked as is (most fail at the signature, as forgeries should);
//! - 1: the rest is a CAR file whose root commit the target re-signs with the account's key
//!   (fixing the root CID), so that the tree walk behind the signature check is reached;
//! - 2: the rest drives the writer: puts and deletes of records, then a signed commit of the tree
//!   written as a CAR file.
//!
//! Properties: an accepted file's records have valid paths, come in key order, are what the
//! canonical tree of the commit's root holds, and are each found by the incremental tree reading
//! the file's blocks; what import stores are the file's own blocks. The writer's tree depends only
//! on its keys (the bottom-up root equals the one built by any order of puts and deletes), and
//! import accepts every repository the writer makes, with exactly its records.
#![no_main]

use std::{
    collections::{BTreeMap, HashMap},
    sync::LazyLock,
};

use cid::Cid;
use futures::{executor::block_on, future::BoxFuture};
use ipld_core::ipld::Ipld;
use libfuzzer_sys::fuzz_target;
use quintet::{
    error::{Error, Result},
    pds::{
        car, data,
        import::{self, Checked},
        keys::{PublicKey, SigningKey},
        mst::{self, Mst, Node, NodeSource},
        repo, syntax,
    },
};
use quintet_fuzz::{Input, PDS_DID, pds_signing_key};

static KEY: LazyLock<SigningKey> = LazyLock::new(pds_signing_key);
static PUBLIC: LazyLock<PublicKey> = LazyLock::new(|| KEY.public_key());

const COLLECTIONS: [&str; 3] = ["app.bsky.feed.post", "app.bsky.feed.like", "com.example.x"];
const RKEY_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_~:";

fuzz_target!(|bytes: &[u8]| {
    let mut input = Input::new(bytes);
    match input.byte() % 3 {
        0 => {
            let file = input.rest();
            if let Ok(checked) = import::check(PDS_DID, &PUBLIC, file) {
                accepted(&checked, file);
            }
        }
        1 => {
            if let Some((did, file)) = resign(input.rest())
                && let Ok(checked) = import::check(&did, &PUBLIC, &file)
            {
                accepted(&checked, &file);
            }
        }
        _ => write_and_import(&mut input),
    }
});

/// The file with its root commit signed by the account's key: (the commit's DID, the file).
fn resign(bytes: &[u8]) -> Option<(String, Vec<u8>)> {
    let parsed = car::read(bytes).ok()?;
    let [root] = parsed.roots[..] else {
        return None;
    };
    let (_, commit_bytes) = parsed.blocks.iter().find(|(cid, _)| *cid == root)?;
    let Ok(Ipld::Map(mut commit)) = data::decode(commit_bytes) else {
        return None;
    };
    commit.remove("sig");
    let did = match commit.get("did") {
        Some(Ipld::String(did)) => did.clone(),
        _ => PDS_DID.to_owned(),
    };
    let signature = KEY.sign(&data::encode(&Ipld::Map(commit.clone())));
    commit.insert("sig".to_owned(), Ipld::Bytes(signature.to_vec()));
    let (new_root, new_bytes) = data::block(&Ipld::Map(commit));
    let mut file = car::header(&[new_root]);
    for (cid, block) in &parsed.blocks {
        if *cid == root {
            file.extend(car::block(&new_root, &new_bytes));
        } else {
            file.extend(car::block(cid, block));
        }
    }
    Some((did, file))
}

/// Nodes from a file's blocks, as the repository reads them from its stored blocks.
struct Blocks(HashMap<Cid, Vec<u8>>);

impl NodeSource for Blocks {
    fn node(&self, cid: Cid) -> BoxFuture<'_, Result<Node>> {
        Box::pin(async move {
            let bytes = self
                .0
                .get(&cid)
                .ok_or_else(|| Error::DataLoss(format!("block {cid} is missing")))?;
            Node::from_ipld(&data::decode(bytes).map_err(|e| Error::DataLoss(e.0))?)
                .map_err(|e| Error::DataLoss(e.0))
        })
    }
}

fn accepted(checked: &Checked, file: &[u8]) {
    let parsed = car::read(file).expect("an accepted file reads");
    assert_eq!(parsed.roots, [checked.root]);
    let blocks: HashMap<Cid, Vec<u8>> = parsed.blocks.into_iter().collect();
    assert_eq!(blocks.get(&checked.root), Some(&checked.commit));
    for (cid, block) in &checked.blocks {
        assert_eq!(blocks.get(cid), Some(block), "a stored block is the file's");
    }
    let data_root = repo::data_of_commit(&checked.commit).expect("an accepted commit has data");
    let mut leaves = Vec::with_capacity(checked.records.len());
    for (collection, rkey, cid) in &checked.records {
        assert!(syntax::is_nsid(collection), "{collection:?}");
        assert!(syntax::is_record_key(rkey), "{rkey:?}");
        let cid = data::parse_cid(cid).expect("a record's CID");
        assert!(blocks.contains_key(&cid), "record {cid} is in the file");
        leaves.push((format!("{collection}/{rkey}").into_bytes(), cid));
    }
    assert!(
        leaves.windows(2).all(|w| w[0].0 < w[1].0),
        "records in key order, once each"
    );
    assert_eq!(mst::root_of(&leaves), data_root);
    let source = Blocks(blocks);
    let mut tree = Mst::new(&source);
    for (key, cid) in &leaves {
        let found = block_on(tree.get(data_root, key)).expect("an accepted tree reads");
        assert_eq!(found, Some(*cid), "{:?}", String::from_utf8_lossy(key));
    }
}

/// The writer never reads: every node it needs, it wrote itself.
struct Nothing;

impl NodeSource for Nothing {
    fn node(&self, cid: Cid) -> BoxFuture<'_, Result<Node>> {
        Box::pin(async move { Err(Error::DataLoss(format!("block {cid} was never written"))) })
    }
}

fn write_and_import(input: &mut Input) {
    let mut tree = Mst::new(&Nothing);
    let mut root = tree.empty_root();
    let mut expected: BTreeMap<Vec<u8>, Cid> = BTreeMap::new();
    let mut records: HashMap<Cid, Vec<u8>> = HashMap::new();
    let mut count = 0u64;
    while !input.is_empty() && count < 64 {
        count += 1;
        let op = input.byte();
        let collection = COLLECTIONS[usize::from(op >> 1) % COLLECTIONS.len()];
        let length = usize::from(input.byte() % 16) + 1;
        let rkey: String = input
            .take(length)
            .iter()
            .map(|b| RKEY_ALPHABET[usize::from(*b) % RKEY_ALPHABET.len()] as char)
            .collect();
        if rkey.is_empty() {
            break;
        }
        let key = format!("{collection}/{rkey}").into_bytes();
        if op & 1 == 1 && expected.contains_key(&key) {
            root = block_on(tree.delete(root, &key)).expect("deleting a held key");
            expected.remove(&key);
        } else {
            let record = Ipld::Map(BTreeMap::from([
                ("$type".to_owned(), Ipld::String(collection.to_owned())),
                ("n".to_owned(), Ipld::Integer(i128::from(count))),
            ]));
            let (cid, block) = data::block(&record);
            root = block_on(tree.put(root, &key, cid)).expect("putting a key");
            expected.insert(key, cid);
            records.insert(cid, block);
        }
    }
    let leaves: Vec<(Vec<u8>, Cid)> = expected.iter().map(|(k, v)| (k.clone(), *v)).collect();
    assert_eq!(
        mst::root_of(&leaves),
        root,
        "the written tree is the canonical one for its keys"
    );
    for (key, cid) in &leaves {
        assert_eq!(block_on(tree.get(root, key)).unwrap(), Some(*cid));
    }

    let rev = syntax::encode_tid((1 << 50) + count);
    let (commit, commit_bytes) = repo::sign_commit(PDS_DID, root, &rev, &KEY);
    let mut file = car::header(&[commit]);
    file.extend(car::block(&commit, &commit_bytes));
    for (cid, block) in tree.new_blocks(root) {
        file.extend(car::block(&cid, &block));
    }
    for cid in expected.values() {
        file.extend(car::block(cid, &records[cid]));
    }
    let checked = import::check(PDS_DID, &PUBLIC, &file)
        .unwrap_or_else(|e| panic!("import refuses the writer's repository: {e}"));
    assert_eq!((checked.root, checked.rev.as_str()), (commit, rev.as_str()));
    let imported: Vec<(Vec<u8>, Cid)> = checked
        .records
        .iter()
        .map(|(c, r, cid)| {
            (
                format!("{c}/{r}").into_bytes(),
                data::parse_cid(cid).unwrap(),
            )
        })
        .collect();
    assert_eq!(imported, leaves, "import finds exactly the written records");
    accepted(&checked, &file);
}
