//! The AT Protocol identifiers (src/pds/syntax.rs: handles, DIDs, NSIDs, record keys, TIDs,
//! AT-URIs) and the CID parser (src/pds/data.rs's text form; the binary form CAR files carry).
//!
//! The input is split at newlines into up to three parts, as text. Properties: a TID decodes
//! exactly when it is valid and re-encodes to itself; the checks are consistent with their
//! rules' simplest consequences (lengths, ASCII, prefixes); handles ignore case; an AT-URI built
//! from parts is valid exactly when its parts are; a CID read from text or bytes displays and
//! encodes to a form that reads back to the same CID.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quintet::pds::{data, syntax};
use quintet_fuzz::{Input, text};

fuzz_target!(|bytes: &[u8]| {
    let mut input = Input::new(bytes);
    let first = text(input.until(b'\n'));
    let second = text(input.until(b'\n'));
    let third = text(input.rest());
    for part in [&first, &second, &third] {
        identifier(part);
        cid_text(part);
    }
    at_uri(&first, &second, &third);
    cid_bytes(bytes);
    tid_of_bits(bytes);
});

fn identifier(text: &str) {
    let tid = syntax::decode_tid(text);
    assert_eq!(syntax::is_tid(text), tid.is_some(), "{text:?}");
    if let Some(bits) = tid {
        assert!(bits >> 63 == 0, "a TID's top bit is clear");
        assert_eq!(syntax::encode_tid(bits), text);
    }
    if syntax::is_handle(text) {
        assert!(text.is_ascii() && text.len() <= 253 && text.contains('.'));
        assert!(syntax::is_handle(&text.to_ascii_uppercase()), "{text:?}");
        assert!(syntax::is_handle(&text.to_ascii_lowercase()), "{text:?}");
    }
    if syntax::is_did(text) {
        assert!(text.starts_with("did:") && text.len() <= 2048 && text.is_ascii());
        assert!(
            !syntax::is_handle(text),
            "{text:?} is both a DID and a handle"
        );
    }
    if syntax::is_nsid(text) {
        assert!(text.is_ascii() && text.len() <= 317 && text.split('.').count() >= 3);
    }
    if syntax::is_record_key(text) {
        assert!(!text.is_empty() && text.len() <= 512 && text != "." && text != "..");
        assert!(!text.contains('/'));
    }
    if syntax::is_at_uri(text) {
        let rest = text.strip_prefix("at://").expect("at://");
        let authority = rest.split('/').next().unwrap_or_default();
        assert!(syntax::is_did(authority) || syntax::is_handle(authority));
    }
}

fn at_uri(authority: &str, collection: &str, rkey: &str) {
    let parts_ok = syntax::is_did(authority) || syntax::is_handle(authority);
    let repo = format!("at://{authority}");
    if !authority.contains('/') {
        assert_eq!(syntax::is_at_uri(&repo), parts_ok, "{repo:?}");
    }
    if authority.contains('/') || collection.contains('/') || rkey.contains('/') {
        return;
    }
    let full = format!("at://{authority}/{collection}/{rkey}");
    if full.len() <= 8 * 1024 {
        let valid = parts_ok && syntax::is_nsid(collection) && syntax::is_record_key(rkey);
        assert_eq!(syntax::is_at_uri(&full), valid, "{full:?}");
    }
}

fn cid_text(text: &str) {
    if let Ok(cid) = data::parse_cid(text) {
        assert_eq!(cid.version(), cid::Version::V1);
        let shown = cid.to_string();
        assert_eq!(
            data::parse_cid(&shown),
            Ok(cid),
            "{text:?} shows as {shown:?}"
        );
        assert_eq!(
            cid::Cid::try_from(cid.to_bytes().as_slice()).ok(),
            Some(cid)
        );
    }
}

fn cid_bytes(bytes: &[u8]) {
    let mut reader = std::io::Cursor::new(bytes);
    if let Ok(cid) = cid::Cid::read_bytes(&mut reader) {
        // Not necessarily the bytes read: the cid crate accepts over-long varints (and drops
        // the bits of a tenth byte past 64), so several byte strings read as one CID. CAR files
        // are safe from it, as a block is kept only if its bytes hash to the CID read.
        let canonical = cid.to_bytes();
        assert_eq!(
            cid::Cid::read_bytes(canonical.as_slice()).ok(),
            Some(cid),
            "a CID's own bytes read back to it"
        );
        if cid.version() == cid::Version::V1 {
            assert_eq!(data::parse_cid(&cid.to_string()), Ok(cid));
        }
    }
}

fn tid_of_bits(bytes: &[u8]) {
    let mut word = [0u8; 8];
    let n = bytes.len().min(8);
    word[..n].copy_from_slice(&bytes[..n]);
    let bits = u64::from_le_bytes(word) >> 1;
    let tid = syntax::encode_tid(bits);
    assert!(syntax::is_tid(&tid), "{tid:?}");
    assert_eq!(syntax::decode_tid(&tid), Some(bits));
}
