//! Protobuf <-> JSON (tags are `google.protobuf.Struct` on the wire, JSONB in the database) and
//! rows -> messages.

use prost_types::{ListValue, Struct, Value as PbValue, value::Kind};
use serde_json::{Map, Number, Value};

use super::queries::{ContentRow, ManifestRow};
use crate::proto::{quintet::store::v1 as pb, timestamp};

pub fn struct_to_json(tags: Option<Struct>) -> Value {
    Value::Object(
        tags.map(|s| {
            s.fields
                .into_iter()
                .map(|(k, v)| (k, value_to_json(v)))
                .collect()
        })
        .unwrap_or_default(),
    )
}

fn value_to_json(value: PbValue) -> Value {
    match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        // JSON numbers in a Struct are doubles; keep integral ones integral so that containment
        // queries match what clients wrote.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
            Value::Number(Number::from(n as i64))
        }
        Some(Kind::NumberValue(n)) => Number::from_f64(n)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::ListValue(list)) => {
            Value::Array(list.values.into_iter().map(value_to_json).collect())
        }
        Some(Kind::StructValue(s)) => struct_to_json(Some(s)),
    }
}

pub fn json_to_struct(value: &Value) -> Option<Struct> {
    match value {
        Value::Object(map) => Some(object_to_struct(map)),
        _ => None,
    }
}

fn object_to_struct(map: &Map<String, Value>) -> Struct {
    Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(value: &Value) -> PbValue {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(object_to_struct(map)),
    };
    PbValue { kind: Some(kind) }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        let json = serde_json::json!({"team": "ml", "n": 3, "ratio": 0.5, "ok": true, "list": [1, "a"], "nested": {"x": null}});
        assert_eq!(struct_to_json(json_to_struct(&json)), json);
        assert_eq!(struct_to_json(None), serde_json::json!({}));
    }
}
