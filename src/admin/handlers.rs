//! gRPC handlers of the admin service: authorize, read, encode.

use std::time::SystemTime;

use sqlx::PgPool;
use tonic::{Request, Response, Status};

use super::queries;
use crate::{
    auth::AdminAuth,
    db::DatabaseMode,
    health::ServiceHealth,
    proto::quintet::admin::v1::{
        self as pb, GetServerInfoRequest, GetServerInfoResponse, admin_service_server,
    },
};

pub struct AdminService {
    pub auth: AdminAuth,
    pub pool: PgPool,
    pub mode: DatabaseMode,
    pub started_at: SystemTime,
    pub health: ServiceHealth,
}

#[tonic::async_trait]
impl admin_service_server::AdminService for AdminService {
    async fn get_server_info(
        &self,
        request: Request<GetServerInfoRequest>,
    ) -> Result<Response<GetServerInfoResponse>, Status> {
        self.auth.require_admin(&request).await?;
        let facts = queries::database_facts(&self.pool).await?;
        let mode = match self.mode {
            DatabaseMode::Embedded => pb::DatabaseMode::Embedded,
            DatabaseMode::External => pb::DatabaseMode::External,
        };
        Ok(Response::new(GetServerInfoResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: Some(self.started_at.into()),
            database: Some(pb::DatabaseInfo {
                mode: mode.into(),
                server_version: facts.server_version,
                schema_version: facts.schema_version,
                migrations_applied: facts.migrations_applied as i32,
                pool_size: self.pool.size(),
                pool_idle: self.pool.num_idle() as u32,
                installation_id: facts.installation_id.to_string(),
            }),
            services: self
                .health
                .statuses()
                .into_iter()
                .map(|(name, serving)| pb::ServiceStatus {
                    name: name.to_owned(),
                    serving,
                })
                .collect(),
        }))
    }
}
