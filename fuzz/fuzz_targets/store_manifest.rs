//! The store's manifests (src/store/): an upload's messages as the wire carries them (protobuf,
//! length-delimited like a stream's), decoded and checked as PutObject checks its manifest header
//! and content headers before any byte is stored.
//!
//! Properties: a decoded message re-encodes to one that decodes the same; refusals are
//! INVALID_ARGUMENT naming a field of the message; an accepted header keeps its limits, and its
//! tags, as stored, read back through the protobuf `Struct` as the same JSON (what GetManifest
//! shows is what PutObject stored).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use quintet::{
    blobs::Sha256,
    error::Error,
    proto::{
        json_to_struct,
        quintet::store::v1::{PutObjectRequest, put_object_request::Part},
        struct_to_json,
    },
    store,
};

const MAX_TAGS_BYTES: usize = 64 * 1024;

fuzz_target!(|bytes: &[u8]| {
    let mut buffer = bytes;
    for index in 0..16 {
        let Ok(message) = PutObjectRequest::decode_length_delimited(&mut buffer) else {
            return;
        };
        // Compared as bytes: a NaN in the tags is not equal to itself.
        let encoded = message.encode_to_vec();
        let again = PutObjectRequest::decode(encoded.as_slice()).expect("re-encoded decodes");
        assert_eq!(again.encode_to_vec(), encoded);
        match message.part {
            Some(Part::Manifest(header)) => manifest_header(header),
            Some(Part::Content(header)) => content_header(index, header),
            Some(Part::Chunk(_)) | None => {}
        }
    }
});

fn refused_naming(error: &Error, prefix: &str) {
    assert!(
        matches!(error, Error::InvalidArgument { field, .. } if field.starts_with(prefix)),
        "{error:?}"
    );
}

fn tags_stored(tags: &serde_json::Value) {
    assert!(tags.is_object());
    assert!(tags.to_string().len() <= MAX_TAGS_BYTES);
    assert_eq!(
        &struct_to_json(json_to_struct(tags)),
        tags,
        "tags read back differ from the tags stored"
    );
}

fn manifest_header(header: quintet::proto::quintet::store::v1::ManifestHeader) {
    let given = header.clone();
    match store::check_manifest_header(header) {
        Ok((class_id, unpacker_name, tags)) => {
            assert_eq!(uuid::Uuid::parse_str(&given.class_id).ok(), Some(class_id));
            assert_eq!(unpacker_name, given.unpacker_name);
            assert!((1..=256).contains(&unpacker_name.len()));
            tags_stored(&tags);
        }
        Err(error) => refused_naming(&error, "manifest."),
    }
}

fn content_header(index: usize, header: quintet::proto::quintet::store::v1::ContentHeader) {
    let field = format!("contents[{index}].");
    match store::check_content_header(index, &header) {
        Ok((serializer_type, expected)) => {
            assert!(matches!(serializer_type, "value" | "stream"));
            assert!((1..=1024).contains(&header.content_name.len()));
            assert!((1..=256).contains(&header.content_type.len()));
            assert_eq!(expected.is_some(), !header.expected_sha256.is_empty());
            if let Some(sha) = expected {
                assert_eq!(Sha256::from_hex(&sha.to_hex()), Some(sha));
                assert!(sha.to_hex().eq_ignore_ascii_case(&header.expected_sha256));
            }
        }
        Err(error) => refused_naming(&error, &field),
    }
    match store::tags_of(&format!("{field}tags"), header.tags) {
        Ok(tags) => tags_stored(&tags),
        Err(error) => refused_naming(&error, &field),
    }
}
