//! Logs, request tracing and metrics.
//!
//! [`RpcLayer`] wraps every RPC in a `rpc` span carrying its method, final gRPC status code and
//! latency, logs one line when it ends (streams end when their last message or error is sent, or
//! when the client goes away: CANCELLED), and records Prometheus metrics:
//! `grpc_server_handled_total{grpc_method,grpc_code}` and the
//! `grpc_server_handling_seconds{grpc_method}` histogram. Methods the server does not serve are
//! labelled `unknown`, so that random paths cannot blow up the metrics' cardinality.

use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http_body::{Body, Frame, SizeHint};
use metrics_exporter_prometheus::PrometheusBuilder;
use pin_project_lite::pin_project;
use sqlx::PgPool;
use tonic::Code;
use tower::{Layer, Service};
use tracing::{Instrument, Span, field::Empty};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Installs the global log subscriber. Call once, from `main`.
pub fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("QUINTET_LOG {filter:?} is not a valid filter: {e}"))?;
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Human => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()?,
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
    }
    Ok(())
}

/// Starts the Prometheus endpoint (`GET /metrics` on `addr`) and the database pool gauges.
/// The recorder is process-global: call once, from the binary.
pub fn init_metrics(addr: std::net::SocketAddr, pool: PgPool) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("grpc_server_handling_seconds".into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ],
        )?
        .install()
        .map_err(|e| anyhow::anyhow!("cannot start the metrics listener on {addr}: {e}"))?;
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(5));
        loop {
            interval.tick().await;
            metrics::gauge!("db_pool_connections").set(pool.size() as f64);
            metrics::gauge!("db_pool_idle_connections").set(pool.num_idle() as f64);
            metrics::gauge!("db_pool_max_connections")
                .set(pool.options().get_max_connections() as f64);
        }
    });
    tracing::info!(%addr, "metrics at http://{addr}/metrics");
    Ok(())
}

/// Every `/package.Service/Method` path the server serves, from the descriptor sets.
pub fn method_paths(descriptor_sets: &[&[u8]]) -> HashSet<String> {
    use prost::Message;
    let mut paths = HashSet::new();
    for encoded in descriptor_sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(*encoded) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name().to_owned();
                for method in service.method {
                    paths.insert(format!("/{package}.{service_name}/{}", method.name()));
                }
            }
        }
    }
    paths
}

#[derive(Clone)]
pub struct RpcLayer {
    known: Arc<HashSet<String>>,
}

impl RpcLayer {
    pub fn new(known: HashSet<String>) -> Self {
        RpcLayer {
            known: Arc::new(known),
        }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            known: self.known.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    known: Arc<HashSet<String>>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RpcService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<RpcBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        let method: Arc<str> = if self.known.contains(path) {
            path.into()
        } else {
            "unknown".into()
        };
        let span = tracing::info_span!("rpc", method = %method, code = Empty, latency_ms = Empty);
        let recorder = Recorder {
            method,
            span: span.clone(),
            start: Instant::now(),
        };
        let future = self.inner.call(request).instrument(span);
        Box::pin(async move {
            let response = future.await?;
            // A trailers-only response (most errors) carries its status in the headers.
            let status = response
                .headers()
                .get("grpc-status")
                .map(|v| code_from_header(v.as_bytes()));
            let (parts, body) = response.into_parts();
            let mut body = RpcBody {
                inner: body,
                recorder: Some(recorder),
            };
            if let Some(code) = status
                && let Some(recorder) = body.recorder.take()
            {
                recorder.finish(code);
            }
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

struct Recorder {
    method: Arc<str>,
    span: Span,
    start: Instant,
}

impl Recorder {
    fn finish(self, code: Code) {
        let elapsed = self.start.elapsed();
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        let code_name = code_name(code);
        self.span.record("code", code_name);
        self.span.record("latency_ms", latency_ms);
        // Health probes arrive every few seconds from every mesh sidecar; keep them out of the
        // default log unless they fail.
        let quiet = code == Code::Ok && self.method.starts_with("/grpc.");
        if quiet {
            tracing::debug!(parent: &self.span, code = code_name, latency_ms, "rpc finished");
        } else {
            tracing::info!(parent: &self.span, code = code_name, latency_ms, "rpc finished");
        }
        // Labels share the method's Arc: no allocation per call.
        metrics::counter!("grpc_server_handled_total", "grpc_method" => self.method.clone(), "grpc_code" => code_name).increment(1);
        metrics::histogram!("grpc_server_handling_seconds", "grpc_method" => self.method.clone())
            .record(elapsed.as_secs_f64());
    }
}

pin_project! {
    /// The response body, watched for the `grpc-status` trailer that ends a call.
    pub struct RpcBody<B> {
        #[pin]
        inner: B,
        recorder: Option<Recorder>,
    }

    impl<B> PinnedDrop for RpcBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before its trailers were sent: the client went away.
            if let Some(recorder) = this.project().recorder.take() {
                recorder.finish(Code::Cancelled);
            }
        }
    }
}

impl<B: Body> Body for RpcBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(recorder) = this.recorder.take()
                {
                    let code = trailers
                        .get("grpc-status")
                        .map(|v| code_from_header(v.as_bytes()))
                        .unwrap_or(Code::Unknown);
                    recorder.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(recorder) = this.recorder.take() {
                    recorder.finish(Code::Internal);
                }
            }
            Poll::Ready(None) => {
                if let Some(recorder) = this.recorder.take() {
                    recorder.finish(Code::Ok);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn code_from_header(value: &[u8]) -> Code {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse::<i32>().ok())
        .map(Code::from_i32)
        .unwrap_or(Code::Unknown)
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
