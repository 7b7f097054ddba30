//! The only place generated protobuf code is included (modules mirror the proto packages), and
//! the conversions every service needs between well-known types and domain types.

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
