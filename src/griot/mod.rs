//! `quintet.griot.v1.GriotService`: signed, content-addressed node packages and installation
//! jobs (`griot` schema). Packages are `.tar.gz` artifacts named by their SHA-256 with manifests
//! signed by `did:key` Ed25519 authors; jobs are queued rows that workers in every server process
//! claim, run and log, and whose logs clients follow live across replicas.

mod convert;
pub mod domain;
mod handlers;
pub mod logs;
pub mod queries;
pub mod sign;
mod trust;
pub mod unpack;
pub mod worker;

pub use handlers::GriotService;
pub use queries::{JOBS_CHANNEL, LOGS_CHANNEL};
