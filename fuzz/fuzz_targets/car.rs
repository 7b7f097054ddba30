//! CAR v1 files (src/pds/car.rs), as an import or a firehose consumer receives them.
//!
//! Properties: every block of a file that reads hashes to its CID; writing the file back with
//! the module's own writer gives a file that reads to the same roots and blocks; the CIDs
//! survive their text form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quintet::pds::{car, data};

fuzz_target!(|bytes: &[u8]| {
    let Ok(parsed) = car::read(bytes) else {
        return;
    };
    for (cid, block) in &parsed.blocks {
        assert_eq!(
            data::cid_for(cid.codec(), block),
            *cid,
            "a block hashes to its CID"
        );
        assert_eq!(data::parse_cid(&cid.to_string()).ok(), Some(*cid));
    }
    let mut written = car::header(&parsed.roots);
    for (cid, block) in &parsed.blocks {
        written.extend(car::block(cid, block));
    }
    let again = car::read(&written).expect("a written CAR file reads");
    assert_eq!(again.roots, parsed.roots);
    assert_eq!(again.blocks, parsed.blocks);
});
