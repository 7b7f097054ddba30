//! `quintet.registry.v1.RegistryService`: an editor-package registry on the Pulsar schema
//! (`registry` schema): users signed in through a GitHub-compatible identity provider, scoped API
//! tokens, packages and their versions with tarballs in the shared blob storage, renames, stars,
//! downloads, full-text search, owners, a featured list, and a followable event log.

mod convert;
pub mod domain;
mod handlers;
mod identity;
mod queries;

pub use handlers::RegistryService;
pub use identity::Identity;
pub use queries::EVENTS_CHANNEL;
