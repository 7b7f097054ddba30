//! CAR v1 files (ipld.io/specs/transport/car/carv1): a varint-prefixed DAG-CBOR header
//! `{version: 1, roots: [cid]}`, then blocks, each a varint length and the CID's bytes followed
//! by the block's bytes. Written piece by piece so exports stream; read whole, checking every
//! block against its CID.

use std::collections::BTreeMap;

use cid::Cid;
use ipld_core::ipld::Ipld;

use super::data::{self, DataError};

fn varint(mut value: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The file's header naming `roots` (a repository's file names its commit; a bag of blocks, as
/// GetBlocks answers, none).
pub fn header(roots: &[Cid]) -> Vec<u8> {
    let header = data::encode(&Ipld::Map(BTreeMap::from([
        (
            "roots".to_owned(),
            Ipld::List(roots.iter().map(|r| Ipld::Link(*r)).collect()),
        ),
        ("version".to_owned(), Ipld::Integer(1)),
    ])));
    let mut out = Vec::with_capacity(header.len() + 2);
    varint(header.len() as u64, &mut out);
    out.extend_from_slice(&header);
    out
}

/// One block's section.
pub fn block(cid: &Cid, bytes: &[u8]) -> Vec<u8> {
    let cid = cid.to_bytes();
    let mut out = Vec::with_capacity(cid.len() + bytes.len() + 4);
    varint((cid.len() + bytes.len()) as u64, &mut out);
    out.extend_from_slice(&cid);
    out.extend_from_slice(bytes);
    out
}

/// A parsed CAR file.
#[derive(Debug)]
pub struct Car {
    pub roots: Vec<Cid>,
    pub blocks: Vec<(Cid, Vec<u8>)>,
}

/// Parses a CAR file; every block must hash to its CID.
pub fn read(mut bytes: &[u8]) -> Result<Car, DataError> {
    let bad = |why: &str| DataError(format!("not a CAR file: {why}"));
    let (length, used) = read_varint(bytes).ok_or_else(|| bad("no header length"))?;
    bytes = &bytes[used..];
    let length = usize::try_from(length).map_err(|_| bad("header too long"))?;
    if length > bytes.len() {
        return Err(bad("the header is cut off"));
    }
    let header = data::decode(&bytes[..length])?;
    bytes = &bytes[length..];
    let Ipld::Map(header) = header else {
        return Err(bad("the header is not a map"));
    };
    if header.get("version") != Some(&Ipld::Integer(1)) {
        return Err(bad("not version 1"));
    }
    let Some(Ipld::List(roots)) = header.get("roots") else {
        return Err(bad("no roots"));
    };
    let roots = roots
        .iter()
        .map(|r| match r {
            Ipld::Link(cid) => Ok(*cid),
            _ => Err(bad("a root is not a link")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut blocks = Vec::new();
    while !bytes.is_empty() {
        let (length, used) = read_varint(bytes).ok_or_else(|| bad("a block has no length"))?;
        bytes = &bytes[used..];
        let length = usize::try_from(length).map_err(|_| bad("a block is too long"))?;
        if length > bytes.len() {
            return Err(bad("a block is cut off"));
        }
        let (section, rest) = bytes.split_at(length);
        bytes = rest;
        let mut reader = std::io::Cursor::new(section);
        let cid = Cid::read_bytes(&mut reader).map_err(|_| bad("a block's CID is malformed"))?;
        let data = &section[reader.position() as usize..];
        if data::cid_for(cid.codec(), data) != cid {
            return Err(DataError(format!("block {cid} does not hash to its CID")));
        }
        blocks.push((cid, data.to_vec()));
    }
    Ok(Car { roots, blocks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_and_tampering_is_caught() {
        let (cid, bytes) = data::block(&Ipld::String("hello".into()));
        let mut file = header(&[cid]);
        file.extend(block(&cid, &bytes));
        let car = read(&file).unwrap();
        assert_eq!(car.roots, vec![cid]);
        assert_eq!(car.blocks, vec![(cid, bytes)]);
        let last = file.len() - 1;
        file[last] ^= 1;
        assert!(read(&file).is_err());
        assert!(read(&file[..file.len() - 3]).is_err());
        assert!(read(b"").is_err());
    }

    #[test]
    fn varints_round_trip() {
        for value in [0, 1, 127, 128, 300, 1 << 40] {
            let mut out = Vec::new();
            varint(value, &mut out);
            assert_eq!(read_varint(&out), Some((value, out.len())));
        }
    }
}
