//! quintet: one gRPC server hosting five services over one PostgreSQL database.
//!
//! This crate is the whole application; `main.rs` only parses the command line and calls [`run`].
//! Tests and benchmarks use the same entry points ([`server::start`], [`db::Database`]).

pub mod admin;
pub mod auth;
pub mod blobs;
pub mod config;
pub mod db;
pub mod error;
pub mod griot;
pub mod health;
pub mod hex;
pub mod market;
pub mod master_key;
pub mod notify;
pub mod page_token;
pub mod pds;
pub mod proto;
pub mod rate_limit;
pub mod registry;
pub mod server;
pub mod store;
pub mod telemetry;

use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config::{Cli, Command},
    db::Database,
};

/// Runs the command the user asked for until it is done or a signal arrives.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            let database = Database::open(&config).await?;
            let migrated = db::migrate(&database.pool).await;
            database.close().await?;
            migrated?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Serve => serve(config).await,
        Command::GriotKeygen { out } => {
            println!("{}", griot::sign::keygen(&out)?);
            Ok(())
        }
        Command::GriotSign {
            key,
            manifest,
            artifact,
        } => {
            let text = if manifest.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&manifest)?
            };
            println!(
                "{}",
                griot::sign::sign_manifest(&key, &text, artifact.as_deref())?
            );
            Ok(())
        }
    }
}

async fn serve(config: config::Config) -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let database = Database::open(&config).await?;
    // From here on the embedded PostgreSQL runs: every path out stops it.
    let served = async {
        db::migrate(&database.pool).await?;
        if let Some(addr) = config.metrics_listen {
            telemetry::init_metrics(addr, database.pool.clone())?;
        }
        let mut server = server::start(&config, database.pool.clone(), database.mode).await?;
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            stopped = server.stopped() => return stopped,
        }
        // A second signal means "now": exit at once (the embedded PostgreSQL gets its
        // parent-death signal and shuts down by itself).
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            eprintln!("second signal: exiting immediately");
            std::process::exit(130);
        });
        server.shutdown().await
    }
    .await;
    let closed = database.close().await;
    served?;
    closed?;
    tracing::info!("stopped");
    Ok(())
}
