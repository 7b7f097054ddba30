//! The only place generated protobuf code is included (modules mirror the proto packages), and
//! the conversions every service needs between well-known types and domain types.

use prost_types::{ListValue, Struct, Value as PbValue, value::Kind};
use serde_json::{Map, Number, Value};

// Generated code: oneofs mirror the wire format, whatever their variants' sizes.
#[allow(clippy::large_enum_variant)]
pub mod quintet {
    pub mod admin {
        pub mod v1 {
            tonic::include_proto!("quintet.admin.v1");
        }
    }
    pub mod griot {
        pub mod v1 {
            tonic::include_proto!("quintet.griot.v1");
        }
    }
    pub mod market {
        pub mod v1 {
            tonic::include_proto!("quintet.market.v1");
        }
    }
    pub mod pds {
        pub mod v1 {
            tonic::include_proto!("quintet.pds.v1");
        }
    }
    pub mod registry {
        pub mod v1 {
            tonic::include_proto!("quintet.registry.v1");
        }
    }
    pub mod store {
        pub mod v1 {
            tonic::include_proto!("quintet.store.v1");
        }
    }
}

/// The subset of the Sui full node's ledger API the market calls (`proto-sui/`).
#[allow(clippy::large_enum_variant, clippy::doc_overindented_list_items)]
pub mod sui {
    pub mod rpc {
        pub mod v2 {
            tonic::include_proto!("sui.rpc.v2");
        }
    }
}

/// The encoded descriptor set of every quintet proto (with imports and comments), served by
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/quintet_descriptor.bin"));

/// A time as `google.protobuf.Timestamp`.
pub fn timestamp(t: time::OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    }
}

/// A client's `google.protobuf.Timestamp` as a time; INVALID_ARGUMENT on `field` if it is
/// outside what PostgreSQL and `time` can represent.
pub fn offset_date_time(
    field: &str,
    t: prost_types::Timestamp,
) -> crate::error::Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(t.seconds)
        .map(|d| d + std::time::Duration::from_nanos(t.nanos.clamp(0, 999_999_999) as u64))
        .map_err(|_| crate::error::Error::invalid_argument(field, "out of range"))
}

// JSON <-> `google.protobuf.Struct`: tags, schemas and samples are JSONB in the database.

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

/// Whether a string or key of `value` holds U+0000, which PostgreSQL's JSONB cannot store;
/// checked at the edge, so that the client hears which field is wrong.
pub fn json_has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(json_has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v)),
        _ => false,
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

pub fn json_to_value(value: &Value) -> PbValue {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_struct() {
        let json = serde_json::json!({"team": "ml", "n": 3, "ratio": 0.5, "ok": true, "list": [1, "a"], "nested": {"x": null}});
        assert_eq!(struct_to_json(json_to_struct(&json)), json);
        assert_eq!(struct_to_json(None), serde_json::json!({}));
    }
}
