//! `quintet.pds.v1.PdsService`: an AT Protocol personal data server (`pds` schema): accounts
//! with did:plc identities, sessions, and signed repositories as Merkle search trees of DAG-CBOR
//! blocks. The protocol's formats live in their own modules: identifier syntax, the data model,
//! keys, the MST and CAR files.

pub mod car;
pub mod data;
mod handlers;
pub mod import;
pub mod keys;
pub mod mst;
pub mod plc;
pub mod queries;
pub mod repo;
pub mod sequencer;
pub mod syntax;
pub mod tokens;

pub use handlers::PdsService;
pub use sequencer::SEQ_CHANNEL;
