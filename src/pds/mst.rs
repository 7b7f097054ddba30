//! The repository's Merkle Search Tree (atproto.com/specs/repository): keys
//! `<collection>/<record key>` mapped to record CIDs, in nodes stored as DAG-CBOR blocks.
//!
//! A key's height is the number of leading zero bits of its SHA-256, halved (fanout 4). The tree
//! is canonical for its key set: the root's layer is the highest height (0 when empty); a node at
//! layer L holds the keys of height L in its range as entries, and each gap between them (and
//! before the first) points to the node at layer L - 1 of the keys in that gap, or to nothing if
//! the gap is empty. Such a child may have no entries of its own, only a left pointer, when all
//! its keys sit lower still. Entries store keys prefix-compressed against the previous entry.
//!
//! Changes rewrite only the nodes on the paths they touch: insertion splits the subtree in the
//! gap a new key falls into, deletion merges the subtrees either side of the removed key, and the
//! root grows or shrinks layers as the highest key requires.

use std::collections::{BTreeMap, HashMap};

use cid::Cid;
use futures::future::BoxFuture;
use ipld_core::ipld::Ipld;

use super::data::{self, DataError};

/// The height of a key in the tree.
pub fn height(key: &[u8]) -> u32 {
    let digest = ring::digest::digest(&ring::digest::SHA256, key);
    let mut zeros = 0;
    for byte in digest.as_ref() {
        if *byte == 0 {
            zeros += 8;
            continue;
        }
        zeros += byte.leading_zeros();
        break;
    }
    zeros / 2
}

/// The length of the common prefix of two keys, in bytes.
pub fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The root of the canonical tree holding `leaves` (sorted by key, keys unique), computed bottom
/// up without storing anything: what an import checks a received tree against.
pub fn root_of(leaves: &[(Vec<u8>, Cid)]) -> Cid {
    let items: Vec<(&[u8], Cid, u32)> = leaves
        .iter()
        .map(|(key, value)| (key.as_slice(), *value, height(key)))
        .collect();
    let layer = items.iter().map(|i| i.2).max().unwrap_or(0);
    build_at(&items, layer).unwrap_or_else(|| data::block(&Node::default().to_ipld()).0)
}

fn build_at(items: &[(&[u8], Cid, u32)], layer: u32) -> Option<Cid> {
    if items.is_empty() {
        return None;
    }
    let below = |gap: &[(&[u8], Cid, u32)]| {
        if layer == 0 {
            None
        } else {
            build_at(gap, layer - 1)
        }
    };
    let here: Vec<usize> = (0..items.len()).filter(|&i| items[i].2 == layer).collect();
    let mut node = Node {
        left: below(&items[..here.first().copied().unwrap_or(items.len())]),
        entries: Vec::with_capacity(here.len()),
    };
    for (n, &at) in here.iter().enumerate() {
        let end = here.get(n + 1).copied().unwrap_or(items.len());
        node.entries.push(Entry {
            key: items[at].0.to_vec(),
            value: items[at].1,
            right: below(&items[at + 1..end]),
        });
    }
    Some(data::block(&node.to_ipld()).0)
}

/// One entry of a node: a key, its record's CID, and the subtree after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub value: Cid,
    pub right: Option<Cid>,
}

/// A decoded node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub left: Option<Cid>,
    pub entries: Vec<Entry>,
}

impl Node {
    pub fn to_ipld(&self) -> Ipld {
        let link = |cid: &Option<Cid>| cid.map_or(Ipld::Null, Ipld::Link);
        let mut previous: &[u8] = &[];
        let entries = self
            .entries
            .iter()
            .map(|entry| {
                let prefix = common_prefix_len(previous, &entry.key);
                previous = &entry.key;
                Ipld::Map(BTreeMap::from([
                    ("k".to_owned(), Ipld::Bytes(entry.key[prefix..].to_vec())),
                    ("p".to_owned(), Ipld::Integer(prefix as i128)),
                    ("t".to_owned(), link(&entry.right)),
                    ("v".to_owned(), Ipld::Link(entry.value)),
                ]))
            })
            .collect();
        Ipld::Map(BTreeMap::from([
            ("e".to_owned(), Ipld::List(entries)),
            ("l".to_owned(), link(&self.left)),
        ]))
    }

    pub fn from_ipld(value: &Ipld) -> std::result::Result<Node, DataError> {
        let bad = |why: &str| DataError(format!("not an MST node: {why}"));
        let Ipld::Map(map) = value else {
            return Err(bad("not a map"));
        };
        let link = |v: Option<&Ipld>| match v {
            None | Some(Ipld::Null) => Ok(None),
            Some(Ipld::Link(cid)) => Ok(Some(*cid)),
            Some(_) => Err(bad("a pointer is not a link")),
        };
        let left = link(map.get("l"))?;
        let Some(Ipld::List(items)) = map.get("e") else {
            return Err(bad("no entry list"));
        };
        let mut entries: Vec<Entry> = Vec::with_capacity(items.len());
        for item in items {
            let Ipld::Map(e) = item else {
                return Err(bad("an entry is not a map"));
            };
            let (Some(Ipld::Integer(prefix)), Some(Ipld::Bytes(suffix)), Some(Ipld::Link(value))) =
                (e.get("p"), e.get("k"), e.get("v"))
            else {
                return Err(bad("an entry lacks p, k or v"));
            };
            let previous = entries.last().map_or(&[][..], |p| &p.key[..]);
            let prefix = usize::try_from(*prefix).map_err(|_| bad("negative prefix"))?;
            if prefix > previous.len() {
                return Err(bad("a prefix is longer than the previous key"));
            }
            let key = [&previous[..prefix], suffix].concat();
            if entries.last().is_some_and(|p| p.key >= key) {
                return Err(bad("keys out of order"));
            }
            entries.push(Entry {
                key,
                value: *value,
                right: link(e.get("t"))?,
            });
        }
        Ok(Node { left, entries })
    }

    /// The index of the gap `key` falls in: the number of entries before it.
    fn gap(&self, key: &[u8]) -> usize {
        self.entries.partition_point(|e| e.key.as_slice() < key)
    }

    fn gap_pointer(&self, gap: usize) -> Option<Cid> {
        if gap == 0 {
            self.left
        } else {
            self.entries[gap - 1].right
        }
    }

    fn set_gap_pointer(&mut self, gap: usize, pointer: Option<Cid>) {
        if gap == 0 {
            self.left = pointer;
        } else {
            self.entries[gap - 1].right = pointer;
        }
    }

    fn is_empty(&self) -> bool {
        self.left.is_none() && self.entries.is_empty()
    }
}

/// Where nodes come from: the repository's stored blocks.
pub trait NodeSource: Send + Sync {
    fn node(&self, cid: Cid) -> BoxFuture<'_, Result<Node>>;
}

type Result<T> = std::result::Result<T, crate::error::Error>;

/// Changes a tree: reads nodes from a [`NodeSource`], and keeps the nodes it writes until
/// [`Mst::new_blocks`] hands over those the final root reaches.
pub struct Mst<'a> {
    source: &'a dyn NodeSource,
    cache: HashMap<Cid, Node>,
    written: HashMap<Cid, Vec<u8>>,
}

impl<'a> Mst<'a> {
    pub fn new(source: &'a dyn NodeSource) -> Self {
        Mst {
            source,
            cache: HashMap::new(),
            written: HashMap::new(),
        }
    }

    /// The empty tree's root node, stored like any other.
    pub fn empty_root(&mut self) -> Cid {
        self.store_always(Node::default())
    }

    async fn load(&mut self, cid: Cid) -> Result<Node> {
        if let Some(node) = self.cache.get(&cid) {
            return Ok(node.clone());
        }
        let node = self.source.node(cid).await?;
        self.cache.insert(cid, node.clone());
        Ok(node)
    }

    fn store_always(&mut self, node: Node) -> Cid {
        let (cid, bytes) = data::block(&node.to_ipld());
        self.written.insert(cid, bytes);
        self.cache.insert(cid, node);
        cid
    }

    /// Stores a node; an empty one is no node at all.
    fn store(&mut self, node: Node) -> Option<Cid> {
        (!node.is_empty()).then(|| self.store_always(node))
    }

    /// The layer of the subtree at `cid`.
    async fn layer(&mut self, mut cid: Cid) -> Result<u32> {
        let mut above = 0;
        loop {
            let node = self.load(cid).await?;
            if let Some(first) = node.entries.first() {
                return Ok(height(&first.key) + above);
            }
            match node.left {
                Some(left) => {
                    cid = left;
                    above += 1;
                }
                None => return Ok(0),
            }
        }
    }

    /// The value of `key`.
    pub async fn get(&mut self, root: Cid, key: &[u8]) -> Result<Option<Cid>> {
        let mut at = Some(root);
        while let Some(cid) = at {
            let node = self.load(cid).await?;
            let gap = node.gap(key);
            if let Some(entry) = node.entries.get(gap).filter(|e| e.key == key) {
                return Ok(Some(entry.value));
            }
            at = node.gap_pointer(gap);
        }
        Ok(None)
    }

    /// Sets `key` to `value`; returns the new root.
    pub async fn put(&mut self, root: Cid, key: &[u8], value: Cid) -> Result<Cid> {
        let wanted = height(key);
        let root_node = self.load(root).await?;
        let (mut layer, mut current) = if root_node.is_empty() {
            (wanted, None)
        } else {
            (self.layer(root).await?, Some(root))
        };
        // A key higher than the root raises the tree, one layer at a time.
        while layer < wanted {
            current = current.map(|c| {
                self.store_always(Node {
                    left: Some(c),
                    entries: Vec::new(),
                })
            });
            layer += 1;
        }
        self.insert(current, layer, key.to_vec(), value).await
    }

    fn insert(
        &mut self,
        at: Option<Cid>,
        layer: u32,
        key: Vec<u8>,
        value: Cid,
    ) -> BoxFuture<'_, Result<Cid>> {
        Box::pin(async move {
            let here = height(&key) == layer;
            let Some(cid) = at else {
                let node = if here {
                    Node {
                        left: None,
                        entries: vec![Entry {
                            key,
                            value,
                            right: None,
                        }],
                    }
                } else {
                    let below = self.insert(None, layer - 1, key, value).await?;
                    Node {
                        left: Some(below),
                        entries: Vec::new(),
                    }
                };
                return Ok(self.store_always(node));
            };
            let mut node = self.load(cid).await?;
            let gap = node.gap(&key);
            if let Some(entry) = node.entries.get_mut(gap).filter(|e| e.key == key) {
                entry.value = value;
            } else if here {
                let (before, after) = self.split(node.gap_pointer(gap), &key).await?;
                node.set_gap_pointer(gap, before);
                node.entries.insert(
                    gap,
                    Entry {
                        key,
                        value,
                        right: after,
                    },
                );
            } else {
                let below = self
                    .insert(node.gap_pointer(gap), layer - 1, key, value)
                    .await?;
                node.set_gap_pointer(gap, Some(below));
            }
            Ok(self.store_always(node))
        })
    }

    /// Splits a subtree into the parts before and after `key` (which it does not hold).
    fn split(
        &mut self,
        at: Option<Cid>,
        key: &[u8],
    ) -> BoxFuture<'_, Result<(Option<Cid>, Option<Cid>)>> {
        let key = key.to_vec();
        Box::pin(async move {
            let Some(cid) = at else {
                return Ok((None, None));
            };
            let node = self.load(cid).await?;
            let gap = node.gap(&key);
            let (inner_before, inner_after) = self.split(node.gap_pointer(gap), &key).await?;
            let mut before = Node {
                left: node.left,
                entries: node.entries[..gap].to_vec(),
            };
            before.set_gap_pointer(gap, inner_before);
            let after = Node {
                left: inner_after,
                entries: node.entries[gap..].to_vec(),
            };
            Ok((self.store(before), self.store(after)))
        })
    }

    /// Removes `key`; returns the new root. NOT_FOUND if the tree does not hold it.
    pub async fn delete(&mut self, root: Cid, key: &[u8]) -> Result<Cid> {
        let layer = self.layer(root).await?;
        let mut current = self.remove(root, layer, key.to_vec()).await?;
        // The root sheds layers left without entries.
        while let Some(cid) = current {
            let node = self.load(cid).await?;
            if !node.entries.is_empty() {
                break;
            }
            current = node.left;
        }
        Ok(match current {
            Some(cid) => cid,
            None => self.empty_root(),
        })
    }

    fn remove(&mut self, at: Cid, layer: u32, key: Vec<u8>) -> BoxFuture<'_, Result<Option<Cid>>> {
        Box::pin(async move {
            let mut node = self.load(at).await?;
            let gap = node.gap(&key);
            if node.entries.get(gap).is_some_and(|e| e.key == key) {
                let removed = node.entries.remove(gap);
                let merged = self.merge(node.gap_pointer(gap), removed.right).await?;
                node.set_gap_pointer(gap, merged);
            } else {
                let Some(below) = node.gap_pointer(gap).filter(|_| layer > 0) else {
                    return Err(crate::error::Error::not_found(
                        "record",
                        String::from_utf8_lossy(&key).into_owned(),
                    ));
                };
                let below = self.remove(below, layer - 1, key).await?;
                node.set_gap_pointer(gap, below);
            }
            Ok(self.store(node))
        })
    }

    /// Joins two neighbouring subtrees of one layer (every key of `a` before every key of `b`).
    fn merge(&mut self, a: Option<Cid>, b: Option<Cid>) -> BoxFuture<'_, Result<Option<Cid>>> {
        Box::pin(async move {
            let (a, b) = match (a, b) {
                (None, other) | (other, None) => return Ok(other),
                (Some(a), Some(b)) => (a, b),
            };
            let a = self.load(a).await?;
            let b = self.load(b).await?;
            let last = a.entries.len();
            let middle = self.merge(a.gap_pointer(last), b.left).await?;
            let mut node = Node {
                left: a.left,
                entries: a.entries,
            };
            node.set_gap_pointer(last, middle);
            node.entries.extend(b.entries);
            Ok(self.store(node))
        })
    }

    /// The nodes that prove whether the tree at `root` holds `key`, and let a reader who has only
    /// them invert a change to it (delete it again, or put it back): the search path down to the
    /// bottom layer and, where the key is held, the nearest spines of the subtrees either side of
    /// it (what a merge or split reads).
    pub async fn covering_proof(&mut self, root: Cid, key: &[u8]) -> Result<Vec<Cid>> {
        let mut out = Vec::new();
        let mut at = Some(root);
        while let Some(cid) = at {
            out.push(cid);
            let node = self.load(cid).await?;
            let gap = node.gap(key);
            if let Some(entry) = node.entries.get(gap).filter(|e| e.key == key) {
                let (before, after) = (node.gap_pointer(gap), entry.right);
                self.spine(before, true, &mut out).await?;
                self.spine(after, false, &mut out).await?;
                break;
            }
            at = node.gap_pointer(gap);
        }
        Ok(out)
    }

    /// The leftmost (or rightmost) path down a subtree.
    async fn spine(
        &mut self,
        mut at: Option<Cid>,
        rightmost: bool,
        out: &mut Vec<Cid>,
    ) -> Result<()> {
        while let Some(cid) = at {
            out.push(cid);
            let node = self.load(cid).await?;
            at = if rightmost {
                node.gap_pointer(node.entries.len())
            } else {
                node.left
            };
        }
        Ok(())
    }

    /// A node's block: its canonical encoding, which is what was stored.
    pub async fn node_block(&mut self, cid: Cid) -> Result<Vec<u8>> {
        if let Some(bytes) = self.written.get(&cid) {
            return Ok(bytes.clone());
        }
        let node = self.load(cid).await?;
        Ok(data::encode(&node.to_ipld()))
    }

    /// The blocks written that `root` reaches (nodes replaced along the way are left out).
    pub fn new_blocks(&mut self, root: Cid) -> Vec<(Cid, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![root];
        while let Some(cid) = stack.pop() {
            let Some(bytes) = self.written.remove(&cid) else {
                continue;
            };
            if let Some(node) = self.cache.get(&cid) {
                stack.extend(node.left);
                stack.extend(node.entries.iter().filter_map(|e| e.right));
            }
            out.push((cid, bytes));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    impl NodeSource for Nothing {
        fn node(&self, cid: Cid) -> BoxFuture<'_, Result<Node>> {
            Box::pin(async move {
                Err(crate::error::Error::DataLoss(format!(
                    "block {cid} missing"
                )))
            })
        }
    }

    fn leaf() -> Cid {
        data::cid_for(data::DAG_CBOR, b"leaf")
    }

    /// The tree built by inserting `keys` one by one into the empty tree.
    async fn build(mst: &mut Mst<'_>, keys: &[String]) -> Cid {
        let mut root = mst.empty_root();
        for key in keys {
            root = mst.put(root, key.as_bytes(), leaf()).await.unwrap();
        }
        root
    }

    #[tokio::test]
    async fn the_empty_tree_has_the_known_root() {
        let mut mst = Mst::new(&Nothing);
        assert_eq!(
            mst.empty_root().to_string(),
            "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
        );
    }

    #[tokio::test]
    async fn the_tree_depends_on_its_keys_not_on_the_order_of_changes() {
        let keys: Vec<String> = (0..300)
            .map(|i| format!("com.example.post/{i:05}"))
            .collect();
        let mut mst = Mst::new(&Nothing);
        let forward = build(&mut mst, &keys).await;
        let mut reversed = keys.clone();
        reversed.reverse();
        assert_eq!(build(&mut mst, &reversed).await, forward);
        // Insert extra keys and delete them again: the same root.
        let mut root = forward;
        for i in 0..100 {
            root = mst
                .put(root, format!("com.example.like/{i}").as_bytes(), leaf())
                .await
                .unwrap();
        }
        assert_ne!(root, forward);
        for i in (0..100).rev() {
            root = mst
                .delete(root, format!("com.example.like/{i}").as_bytes())
                .await
                .unwrap();
        }
        assert_eq!(root, forward);
        // Everything is findable; deleting all gives the empty tree.
        for key in &keys {
            assert_eq!(mst.get(root, key.as_bytes()).await.unwrap(), Some(leaf()));
        }
        assert_eq!(mst.get(root, b"com.example.post/x").await.unwrap(), None);
        for key in &keys {
            root = mst.delete(root, key.as_bytes()).await.unwrap();
        }
        assert_eq!(root, mst.empty_root());
        assert!(mst.delete(root, b"a/b").await.is_err());
    }

    #[tokio::test]
    async fn the_bottom_up_root_is_the_incremental_one() {
        let mut mst = Mst::new(&Nothing);
        for count in [0, 1, 2, 7, 50, 400] {
            let keys: Vec<String> = (0..count).map(|i| format!("c.d.e/{i:04}")).collect();
            let incremental = build(&mut mst, &keys).await;
            let mut leaves: Vec<(Vec<u8>, Cid)> = keys
                .iter()
                .map(|k| (k.as_bytes().to_vec(), leaf()))
                .collect();
            leaves.sort();
            assert_eq!(root_of(&leaves), incremental, "{count} keys");
        }
    }

    #[tokio::test]
    async fn nodes_round_trip_through_their_encoding() {
        let mut mst = Mst::new(&Nothing);
        let keys: Vec<String> = (0..50).map(|i| format!("a.b.c/{i}")).collect();
        let root = build(&mut mst, &keys).await;
        for (cid, bytes) in mst.new_blocks(root) {
            let node = Node::from_ipld(&data::decode(&bytes).unwrap()).unwrap();
            assert_eq!(data::block(&node.to_ipld()), (cid, bytes));
        }
    }
}
