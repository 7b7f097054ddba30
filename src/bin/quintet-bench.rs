//! `quintet-bench`: drives one RPC scenario against a running server with N concurrent clients
//! for T seconds over real tonic channels, and prints throughput and latency percentiles (HDR
//! histograms, microsecond resolution). `baseline-server` runs a bare tonic server with nothing
//! but the health service, to measure the framework's own limit on the same machine.
//!
//! Each service adds its scenarios to [`Scenario`].

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use quintet::proto::quintet::admin::v1::{
    GetServerInfoRequest, admin_service_client::AdminServiceClient,
};
use tonic::{Request, metadata::MetadataValue, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Parser)]
#[command(name = "quintet-bench", about = "Load generator for quintet")]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Drive a scenario against a server and report throughput and latency.
    Run(RunArgs),
    /// Serve only grpc.health.v1 on a bare tonic server (no layers, no database): the
    /// framework's limit, to compare `health` runs against.
    BaselineServer {
        #[arg(long, default_value = "127.0.0.1:50052")]
        listen: SocketAddr,
    },
}

#[derive(Parser)]
struct RunArgs {
    /// What to call.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Concurrent clients (each keeps one call in flight).
    #[arg(long, short = 'c', default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the clients share, round-robin.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Measured seconds.
    #[arg(long, short = 'd', default_value_t = 10)]
    duration: u64,
    /// Unmeasured seconds before, to warm connections and caches.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Admin token, for scenarios that need one.
    #[arg(long, env = "QUINTET_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Scenario {
    /// grpc.health.v1.Health/Check for the whole server.
    Health,
    /// quintet.admin.v1.AdminService/GetServerInfo (one database round trip plus the admin
    /// token check: two queries).
    ServerInfo,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        BenchCommand::BaselineServer { listen } => baseline_server(listen).await,
        BenchCommand::Run(args) => run(args).await,
    }
}

async fn baseline_server(listen: SocketAddr) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("baseline tonic server on {}", listener.local_addr()?);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(
            Channel::from_shared(args.target.clone())?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    let token: Option<MetadataValue<_>> = match (&args.admin_token, args.scenario) {
        (Some(token), _) => Some(format!("Bearer {token}").parse()?),
        (None, Scenario::ServerInfo) => anyhow::bail!("server-info needs --admin-token"),
        (None, _) => None,
    };

    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..args.concurrency {
        let channel = channels[i % channels.len()].clone();
        let (measuring, stop, token) = (measuring.clone(), stop.clone(), token.clone());
        let scenario = args.scenario;
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut errors = 0u64;
            let mut health = HealthClient::new(channel.clone());
            let mut admin = AdminServiceClient::new(channel);
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let ok = match scenario {
                    Scenario::Health => health.check(HealthCheckRequest::default()).await.is_ok(),
                    Scenario::ServerInfo => {
                        let mut request = Request::new(GetServerInfoRequest {});
                        if let Some(token) = &token {
                            request
                                .metadata_mut()
                                .insert("authorization", token.clone());
                        }
                        admin.get_server_info(request).await.is_ok()
                    }
                };
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        histogram.saturating_record(start.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            (histogram, errors)
        }));
    }

    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);

    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for task in tasks {
        let (histogram, task_errors) = task.await?;
        total.add(&histogram)?;
        errors += task_errors;
    }
    let ms = |q: f64| total.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "scenario={} concurrency={} connections={} duration={:.1}s",
        scenario_name(args.scenario),
        args.concurrency,
        channels.len(),
        elapsed.as_secs_f64()
    );
    println!(
        "requests={} errors={} throughput={:.0}/s",
        total.len(),
        errors,
        total.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency_ms p50={:.3} p90={:.3} p99={:.3} max={:.3}",
        ms(0.50),
        ms(0.90),
        ms(0.99),
        total.max() as f64 / 1000.0
    );
    if errors > 0 {
        anyhow::bail!("{errors} requests failed");
    }
    Ok(())
}

fn scenario_name(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::Health => "health",
        Scenario::ServerInfo => "server-info",
    }
}
