//! The one integration-test binary: the real server, a real PostgreSQL, real gRPC clients.

mod authz;
mod binary;
mod crash_regressions;
mod foundation;
mod griot;
mod harness;
mod market;
mod market_purchases;
mod pds;
mod pds_sync;
mod pds_vectors;
mod protocol_fuzz;
mod reflection;
mod registry;
mod secrets;
mod shared_blocks;
mod store;
