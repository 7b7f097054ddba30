//! The AT Protocol data model (src/pds/data.rs) and what decodes blocks into it: DAG-CBOR
//! blocks as records, commits (src/pds/repo.rs) and MST nodes (src/pds/mst.rs), and records as
//! clients send them in JSON.
//!
//! The first byte picks the parser: even, the rest is a DAG-CBOR block; odd, a JSON record.
//! Properties: what decodes re-encodes to bytes that decode to the same value and are a fixed
//! point (so the CID of a re-encoded block is stable); a decoded MST node re-encodes to the same
//! node, and a canonical node block to the same bytes and CID; a JSON record round-trips through
//! its JSON view and its DAG-CBOR block, and holds no integer JSON cannot carry exactly.
#![no_main]

use ipld_core::ipld::Ipld;
use libfuzzer_sys::fuzz_target;
use quintet::pds::{
    data::{self, DAG_CBOR},
    mst::Node,
    repo,
};

/// The data model's integers that JSON holds exactly.
const MAX_SAFE_INTEGER: i128 = (1 << 53) - 1;

fuzz_target!(|bytes: &[u8]| {
    let Some((mode, rest)) = bytes.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        block(rest);
    } else {
        json_record(rest);
    }
});

fn block(bytes: &[u8]) {
    let Ok(value) = data::decode(bytes) else {
        return;
    };
    let encoded = data::encode(&value);
    let again = data::decode(&encoded).expect("a re-encoded block decodes");
    // Compared as bytes: a float NaN is not equal to itself as a value.
    assert_eq!(
        data::encode(&again),
        encoded,
        "re-encoding is not a fixed point"
    );
    let canonical = encoded == bytes;

    // The same block read as the repository reads it.
    let _ = data::to_json(&value);
    let refs = data::blob_refs(&value);
    assert!(
        refs.windows(2).all(|w| w[0] < w[1]),
        "blob refs sorted, once each"
    );
    if let Ok(root) = repo::data_of_commit(bytes) {
        assert!(matches!(&value, Ipld::Map(m) if m.get("data") == Some(&Ipld::Link(root))));
    }
    if let Ok(node) = Node::from_ipld(&value) {
        assert!(
            node.entries.windows(2).all(|w| w[0].key < w[1].key),
            "node keys strictly increase"
        );
        let ipld = node.to_ipld();
        let back = Node::from_ipld(&ipld).expect("an encoded node decodes");
        assert_eq!(back, node, "a node round-trips through its encoding");
        if canonical && ipld == value {
            assert_eq!(
                data::block(&ipld),
                (data::cid_for(DAG_CBOR, bytes), bytes.to_vec()),
                "a canonical node block re-encodes to itself"
            );
        }
    }
}

fn json_record(bytes: &[u8]) {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    let Ok(record) = data::record_from_json(&json) else {
        return;
    };
    assert_integers_safe(&record);
    let view = data::to_json(&record);
    let again = data::record_from_json(&view).expect("a record's own JSON is a record");
    assert_eq!(again, record, "a record round-trips through its JSON view");
    let (cid, block) = data::block(&record);
    assert_eq!(cid, data::cid_for(DAG_CBOR, &block));
    assert_eq!(
        data::decode(&block).expect("a record's block decodes"),
        record,
        "a record round-trips through DAG-CBOR"
    );
    // What createRecord checks next.
    if let Ipld::Map(map) = &record
        && let Some(Ipld::String(collection)) = map.get("$type")
    {
        let _ = repo::check_record("record", collection, &record);
    }
}

fn assert_integers_safe(value: &Ipld) {
    match value {
        Ipld::Integer(i) => assert!(
            (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(i),
            "integer {i} accepted from JSON"
        ),
        Ipld::Float(f) => panic!("float {f} accepted from JSON"),
        Ipld::List(items) => items.iter().for_each(assert_integers_safe),
        Ipld::Map(map) => map.values().for_each(assert_integers_safe),
        _ => {}
    }
}
