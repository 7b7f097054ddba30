//! `quintet.store.v1.StoreService`: content-addressed object storage after Lakery (`store`
//! schema). Objects are a manifest plus named contents; each content's bytes stream into one of
//! the named storages (inline in the database, a local directory, an S3-compatible bucket) while
//! being hashed, and the records are committed only once every byte is stored.

mod convert;
mod handlers;
mod queries;

pub use handlers::{
    FILE, INLINE, S3, StoreService, check_content_header, check_manifest_header, tags_of,
};
pub use queries::MANIFESTS_CHANNEL;
