//! The only place generated protobuf code is included. Modules mirror the proto packages.

// Generated code: oneofs mirror the wire format, whatever their variants' sizes.
#[allow(clippy::large_enum_variant)]
pub mod quintet {
    pub mod admin {
        pub mod v1 {
            tonic::include_proto!("quintet.admin.v1");
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
