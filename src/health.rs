//! Per-service health as `grpc.health.v1.Health` reports it, plus this replica's own view of it
//! (for the admin service). Services are SERVING while the database answers and the server is not
//! draining; the empty service name stands for the whole server.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

#[derive(Clone)]
pub struct ServiceHealth {
    reporter: HealthReporter,
    statuses: Arc<Mutex<BTreeMap<&'static str, bool>>>,
}

impl ServiceHealth {
    pub fn new(reporter: HealthReporter, services: &[&'static str]) -> Self {
        let statuses = services.iter().map(|s| (*s, false)).collect();
        ServiceHealth {
            reporter,
            statuses: Arc::new(Mutex::new(statuses)),
        }
    }

    /// Marks every service (and the server as a whole) serving or not.
    pub async fn set_all(&self, serving: bool) {
        let names: Vec<&'static str> = {
            let mut statuses = self.statuses.lock().expect("health lock");
            statuses.values_mut().for_each(|s| *s = serving);
            statuses.keys().copied().collect()
        };
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in names.into_iter().chain([""]) {
            self.reporter.set_service_status(name, status).await;
        }
    }

    pub fn statuses(&self) -> Vec<(&'static str, bool)> {
        self.statuses
            .lock()
            .expect("health lock")
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// Checks the database every `interval` and reports NOT_SERVING while it does not answer,
    /// so that a load balancer routes around a replica that cannot reach it.
    pub fn watch_database(&self, pool: PgPool, interval: Duration, shutdown: CancellationToken) {
        let health = self.clone();
        tokio::spawn(async move {
            let mut healthy = true;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(interval) => {}
                }
                let ok = matches!(
                    tokio::time::timeout(interval, sqlx::query("SELECT 1").execute(&pool)).await,
                    Ok(Ok(_))
                );
                if shutdown.is_cancelled() {
                    break;
                }
                if ok != healthy {
                    if ok {
                        tracing::info!("database reachable again; serving");
                    } else {
                        tracing::warn!("database unreachable; reporting NOT_SERVING");
                    }
                    health.set_all(ok).await;
                    healthy = ok;
                }
            }
        });
    }
}
