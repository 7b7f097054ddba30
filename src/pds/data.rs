//! The AT Protocol data model: records as JSON (with `$link`, `$bytes` and blobs) and as
//! DAG-CBOR blocks addressed by CIDv1 (dag-cbor codec, SHA-256), as the data-model spec defines
//! them (atproto.com/specs/data-model). Conversion refuses what the model forbids: floats, `$`
//! objects of the wrong shape, an empty or non-string `$type`, malformed blobs.

use std::collections::BTreeMap;

use base64::Engine;
use cid::Cid;
use ipld_core::ipld::Ipld;
use serde_json::{Map, Number, Value};

/// The dag-cbor multicodec.
pub const DAG_CBOR: u64 = 0x71;
/// The raw multicodec (blobs).
pub const RAW: u64 = 0x55;
/// The sha2-256 multihash code.
const SHA2_256: u64 = 0x12;
/// The largest integer JSON carries exactly (2^53 - 1); the data model allows 64-bit integers,
/// but JSON clients cannot hold more.
const MAX_SAFE_INTEGER: i128 = (1 << 53) - 1;
/// How deep records may nest.
const MAX_DEPTH: usize = 32;

/// Why a value is not in the data model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DataError(pub String);

fn fail<T>(why: impl Into<String>) -> Result<T, DataError> {
    Err(DataError(why.into()))
}

/// The CIDv1 of `bytes` under `codec`, hashed with SHA-256.
pub fn cid_for(codec: u64, bytes: &[u8]) -> Cid {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hash = cid::multihash::Multihash::<64>::wrap(SHA2_256, digest.as_ref())
        .expect("a 32-byte digest fits");
    Cid::new_v1(codec, hash)
}

/// The CIDv1 of a blob (raw codec) from its SHA-256.
pub fn raw_cid(sha256: &[u8; 32]) -> Cid {
    let hash =
        cid::multihash::Multihash::<64>::wrap(SHA2_256, sha256).expect("a 32-byte digest fits");
    Cid::new_v1(RAW, hash)
}

/// Encodes a value as DAG-CBOR (map keys in the canonical length-first order).
pub fn encode(value: &Ipld) -> Vec<u8> {
    serde_ipld_dagcbor::to_vec(value).expect("IPLD values encode")
}

/// Encodes a value and returns it with its CID.
pub fn block(value: &Ipld) -> (Cid, Vec<u8>) {
    let bytes = encode(value);
    (cid_for(DAG_CBOR, &bytes), bytes)
}

/// Decodes a DAG-CBOR block.
pub fn decode(bytes: &[u8]) -> Result<Ipld, DataError> {
    serde_ipld_dagcbor::from_slice(bytes).map_err(|e| DataError(format!("not DAG-CBOR: {e}")))
}

/// Parses a CID in its string form, accepting only CIDv1 (records link with v1).
pub fn parse_cid(text: &str) -> Result<Cid, DataError> {
    let cid = Cid::try_from(text).map_err(|_| DataError(format!("{text:?} is not a CID")))?;
    if cid.version() != cid::Version::V1 {
        return fail(format!("{text:?} is not a CIDv1"));
    }
    Ok(cid)
}

/// A record from AT Protocol JSON: an object, checked and converted to the data model.
pub fn record_from_json(value: &Value) -> Result<Ipld, DataError> {
    if !value.is_object() {
        return fail("a record must be a JSON object");
    }
    from_json(value, 0)
}

fn from_json(value: &Value, depth: usize) -> Result<Ipld, DataError> {
    if depth > MAX_DEPTH {
        return fail(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    Ok(match value {
        Value::Null => Ipld::Null,
        Value::Bool(b) => Ipld::Bool(*b),
        Value::Number(n) => Ipld::Integer(integer(n)?),
        Value::String(s) => Ipld::String(s.clone()),
        Value::Array(items) => Ipld::List(
            items
                .iter()
                .map(|v| from_json(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => object_from_json(map, depth)?,
    })
}

fn integer(n: &Number) -> Result<i128, DataError> {
    let value = if let Some(i) = n.as_i64() {
        i128::from(i)
    } else if let Some(u) = n.as_u64() {
        i128::from(u)
    } else {
        let f = n.as_f64().unwrap_or(f64::NAN);
        // JSON has one number type: 123.0 is the integer 123; 123.5 is a float, not allowed.
        if f.fract() != 0.0 || !f.is_finite() {
            return fail(format!("{n} is a float; the data model has integers only"));
        }
        f as i128
    };
    // Not `value.abs()`: a float below -2^127 saturates to i128::MIN, whose absolute value
    // overflows (and wraps to itself in release builds, passing the check).
    if !(-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&value) {
        return fail(format!("{n} is beyond the integers JSON holds exactly"));
    }
    Ok(value)
}

fn object_from_json(map: &Map<String, Value>, depth: usize) -> Result<Ipld, DataError> {
    if let Some(link) = map.get("$link") {
        let (Value::String(text), 1) = (link, map.len()) else {
            return fail("a $link object has exactly one field, a CID string");
        };
        return Ok(Ipld::Link(parse_cid(text)?));
    }
    if let Some(bytes) = map.get("$bytes") {
        let (Value::String(text), 1) = (bytes, map.len()) else {
            return fail("a $bytes object has exactly one field, a base64 string");
        };
        let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|_| DataError("$bytes is not base64".into()))?;
        return Ok(Ipld::Bytes(decoded));
    }
    match map.get("$type") {
        None => {}
        Some(Value::String(t)) if t == "blob" => check_blob(map)?,
        Some(Value::String(t)) if !t.is_empty() => {}
        Some(_) => return fail("$type must be a non-empty string"),
    }
    let mut out = BTreeMap::new();
    for (key, value) in map {
        out.insert(key.clone(), from_json(value, depth + 1)?);
    }
    Ok(Ipld::Map(out))
}

fn check_blob(map: &Map<String, Value>) -> Result<(), DataError> {
    let link_ok = map
        .get("ref")
        .and_then(Value::as_object)
        .and_then(|r| r.get("$link"))
        .is_some_and(Value::is_string);
    let mime_ok = map.get("mimeType").is_some_and(Value::is_string);
    let size_ok = map
        .get("size")
        .and_then(Value::as_number)
        .is_some_and(|n| n.as_i64().is_some_and(|s| s >= 0));
    if !(link_ok && mime_ok && size_ok) {
        return fail("a blob has a ref ($link), a mimeType string and an integer size");
    }
    Ok(())
}

/// The blobs a value references: every `{"$type": "blob", "ref": <link>}` object in it.
pub fn blob_refs(value: &Ipld) -> Vec<Cid> {
    let mut out = Vec::new();
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            Ipld::Map(map) => {
                if let (Some(Ipld::String(t)), Some(Ipld::Link(cid))) =
                    (map.get("$type"), map.get("ref"))
                    && t == "blob"
                {
                    out.push(*cid);
                }
                pending.extend(map.values());
            }
            Ipld::List(items) => pending.extend(items),
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A value as AT Protocol JSON (`$link` for CIDs, `$bytes` for bytes).
pub fn to_json(value: &Ipld) -> Value {
    match value {
        Ipld::Null => Value::Null,
        Ipld::Bool(b) => Value::Bool(*b),
        Ipld::Integer(i) => i64::try_from(*i)
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(i.to_string())),
        Ipld::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Ipld::String(s) => Value::String(s.clone()),
        Ipld::Bytes(b) => serde_json::json!({
            "$bytes": base64::engine::general_purpose::STANDARD_NO_PAD.encode(b)
        }),
        Ipld::List(items) => Value::Array(items.iter().map(to_json).collect()),
        Ipld::Map(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
        Ipld::Link(cid) => serde_json::json!({ "$link": cid.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_bytes_round_trip_through_json() {
        let json = serde_json::json!({
            "$type": "com.example.thing",
            "link": {"$link": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"},
            "bytes": {"$bytes": "AAEC"},
            "n": -7,
        });
        let value = record_from_json(&json).unwrap();
        assert_eq!(to_json(&value), json);
        let (cid, bytes) = block(&value);
        assert_eq!(decode(&bytes).unwrap(), value);
        assert_eq!(cid, cid_for(DAG_CBOR, &bytes));
        assert!(cid.to_string().starts_with("bafyrei"));
    }

    #[test]
    fn deep_nesting_and_huge_integers_are_refused() {
        let mut deep = serde_json::json!(1);
        for _ in 0..40 {
            deep = serde_json::json!({ "a": deep });
        }
        assert!(record_from_json(&deep).is_err());
        assert!(record_from_json(&serde_json::json!({"n": 9007199254740993u64})).is_err());
    }

    #[test]
    fn huge_negative_floats_are_refused_not_saturated() {
        // -1e39 saturates to i128::MIN when cast; it was accepted (and failed to encode) or
        // overflowed. Found by the dag_cbor fuzz target.
        for text in [r#"{"n": -1e39}"#, r#"{"n": -1e300}"#, r#"{"n": 1e39}"#] {
            let json: Value = serde_json::from_str(text).unwrap();
            assert!(record_from_json(&json).is_err(), "{text}");
        }
        let json: Value = serde_json::from_str(r#"{"n": -9007199254740991.0}"#).unwrap();
        assert_eq!(
            record_from_json(&json).unwrap(),
            Ipld::Map(BTreeMap::from([(
                "n".to_owned(),
                Ipld::Integer(-MAX_SAFE_INTEGER)
            )]))
        );
    }
}
