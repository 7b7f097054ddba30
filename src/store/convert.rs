//! Rows -> messages (tags go through `crate::proto`'s JSON <-> `Struct` conversions).

use super::queries::{ContentRow, ManifestRow};
use crate::proto::{json_to_struct, quintet::store::v1 as pb, timestamp};

pub fn manifest(row: &ManifestRow) -> pb::Manifest {
    pb::Manifest {
        id: row.id.to_string(),
        create_time: Some(timestamp(row.created_at)),
        class_id: row.class_id.to_string(),
        unpacker_name: row.unpacker_name.clone(),
        tags: json_to_struct(&row.tags.0),
        seq: row.seq,
    }
}

pub fn content(row: &ContentRow) -> pb::Content {
    pb::Content {
        id: row.id.to_string(),
        create_time: Some(timestamp(row.created_at)),
        manifest_id: row.manifest_id.to_string(),
        content_name: row.content_name.clone(),
        content_type: row.content_type.clone(),
        content_encoding: row.content_encoding.clone(),
        content_size: row.content_size,
        content_hash: row.content_hash.clone(),
        content_hash_algorithm: row.content_hash_algorithm.clone(),
        serializer_name: row.serializer_name.clone(),
        serializer_type: if row.serializer_type == "stream" {
            pb::SerializerType::Stream
        } else {
            pb::SerializerType::Value
        }
        .into(),
        storage_name: row.storage_name.clone(),
        storage_data_json: row.storage_data.0.to_string(),
        tags: json_to_struct(&row.tags.0),
    }
}
