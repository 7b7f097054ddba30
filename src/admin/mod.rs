//! `quintet.admin.v1.AdminService`: what operators ask a running replica about itself.

mod handlers;
mod queries;

pub use handlers::AdminService;
